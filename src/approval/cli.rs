//! `passgate approvals list|show|approve|deny`: the approvals API from a terminal, with the
//! approver's own Entra access token read from a file (e.g. written by the Azure CLI). It must
//! never print or log the token; exit 0 on success, 1 when the gateway refused, 2 otherwise.

use crate::outbound;
use bytes::Bytes;
use http_body_util::Full;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Where the gateway is and who is calling.
#[derive(clap::Args, Debug)]
pub struct Connection {
    /// The gateway's base URL, e.g. https://passgate.contoso.com:8443
    #[arg(long, value_name = "URL")]
    pub gateway: String,
    /// File holding your Entra access token for passgate's API (e.g.
    /// `az account get-access-token --resource api://passgate --query accessToken -o tsv > FILE`).
    #[arg(long, value_name = "FILE")]
    pub token_file: PathBuf,
    /// Extra PEM CA bundle to trust for the gateway's certificate (a private CA).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
pub enum ApprovalsCommand {
    /// List approval requests you may decide or asked for yourself (newest first).
    List {
        #[command(flatten)]
        conn: Connection,
        /// pending (default), approved, denied, expired, consumed or all.
        #[arg(long, default_value = "pending")]
        state: String,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one approval request as JSON.
    Show {
        #[command(flatten)]
        conn: Connection,
        id: String,
    },
    /// Approve a pending request (not your own).
    Approve {
        #[command(flatten)]
        conn: Connection,
        id: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Deny a pending request.
    Deny {
        #[command(flatten)]
        conn: Connection,
        id: String,
        #[arg(long)]
        comment: Option<String>,
    },
}

/// A failure of the CLI itself (not a refusal by the gateway).
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("cannot read the token file {path}: {source}")]
    TokenFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the token file {0} is empty")]
    EmptyToken(String),
    #[error("{0}")]
    Client(#[from] outbound::ClientBuildError),
    #[error("invalid gateway URL or id: {0}")]
    Request(#[from] http::Error),
    #[error("the gateway could not be reached: {0}")]
    Fetch(String),
}

async fn call(
    conn: &Connection,
    method: http::Method,
    path: &str,
    body: Option<String>,
) -> Result<(u16, serde_json::Value), CliError> {
    let token =
        std::fs::read_to_string(&conn.token_file).map_err(|source| CliError::TokenFile {
            path: conn.token_file.display().to_string(),
            source,
        })?;
    let token = token.trim();
    if token.is_empty() {
        return Err(CliError::EmptyToken(conn.token_file.display().to_string()));
    }
    let client = outbound::build_client(conn.ca_file.as_deref())?;
    let url = format!("{}{path}", conn.gateway.trim_end_matches('/'));
    let mut req = http::Request::builder()
        .method(method)
        .uri(url)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    if body.is_some() {
        req = req.header(http::header::CONTENT_TYPE, "application/json");
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let resp = outbound::fetch(&client, req, Duration::from_secs(30), 4 * 1024 * 1024)
        .await
        .map_err(|e| CliError::Fetch(crate::error::chain(&e)))?;
    let json = serde_json::from_slice(&resp.body).unwrap_or(serde_json::Value::Null);
    Ok((resp.status.as_u16(), json))
}

/// Runs one command; prints results to stdout and refusals to stderr.
pub async fn run(cmd: ApprovalsCommand) -> ExitCode {
    let prefix = super::api::PREFIX;
    let (conn, method, path, body, table) = match &cmd {
        ApprovalsCommand::List { conn, state, json } => (
            conn,
            http::Method::GET,
            format!("{prefix}?state={}", urlencode(state)),
            None,
            !json,
        ),
        ApprovalsCommand::Show { conn, id } => (
            conn,
            http::Method::GET,
            format!("{prefix}/{}", urlencode(id)),
            None,
            false,
        ),
        ApprovalsCommand::Approve { conn, id, comment }
        | ApprovalsCommand::Deny { conn, id, comment } => {
            let verb = if matches!(cmd, ApprovalsCommand::Approve { .. }) {
                "approve"
            } else {
                "deny"
            };
            let body = serde_json::json!({ "comment": comment }).to_string();
            (
                conn,
                http::Method::POST,
                format!("{prefix}/{}/{verb}", urlencode(id)),
                Some(body),
                false,
            )
        }
    };
    match call(conn, method, &path, body).await {
        Err(e) => {
            eprintln!("passgate approvals: {e}");
            ExitCode::from(2)
        }
        Ok((status, json)) if (200..300).contains(&status) => {
            if table {
                print!("{}", render_table(&json));
            } else {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json).unwrap_or_default()
                );
            }
            ExitCode::SUCCESS
        }
        Ok((status, json)) => {
            let code = json["error"]["code"].as_str().unwrap_or("-");
            let message = json["error"]["message"].as_str().unwrap_or("");
            eprintln!("passgate approvals: {status} {code}: {message}");
            ExitCode::from(1)
        }
    }
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// ID, STATE, POLICY, REQUESTER, DEVICE, CREATED — one line per request.
pub fn render_table(list: &serde_json::Value) -> String {
    let empty = Vec::new();
    let rows: Vec<[String; 6]> = list["value"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|r| {
            let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
            let requester = r["requester"]["upn"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| s(&r["requester"]["oid"]));
            [
                s(&r["id"]),
                s(&r["state"]),
                s(&r["policy"]),
                requester,
                s(&r["managed_device_id"]),
                s(&r["created_at"]),
            ]
            .map(|c| {
                c.chars()
                    .map(|ch| if ch.is_control() { '?' } else { ch })
                    .collect()
            })
        })
        .collect();
    let header = ["ID", "STATE", "POLICY", "REQUESTER", "DEVICE", "CREATED"];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            out.push_str(c);
            if i + 1 < cells.len() {
                out.push_str(&" ".repeat(w - c.chars().count() + 2));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(header.to_vec());
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}
