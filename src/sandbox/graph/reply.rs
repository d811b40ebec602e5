//! Graph response shapes: the OData JSON content type, the error envelope with `innerError`,
//! Intune's JSON-in-a-string messages, and the headers every Graph response carries
//! (graph-notes §4). Messages never include a token.

use http::StatusCode;
use serde_json::{json, Value};

use crate::sandbox::server::{http_date, reply, set_header, Reply};

pub(crate) const ODATA_JSON: &str =
    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";

/// Per-request identifiers echoed in headers and error bodies.
pub(crate) struct Ctx {
    pub(crate) request_id: String,
    pub(crate) client_request_id: String,
    /// `{graph_url}/{version}`, the base of context URLs and next links.
    pub(crate) base: String,
}

impl Ctx {
    pub(crate) fn context(&self, fragment: &str) -> String {
        format!("{}/$metadata#{fragment}", self.base)
    }
}

pub(crate) fn json_reply(status: StatusCode, body: &Value) -> Reply {
    reply(status, Some(ODATA_JSON), body.to_string().into_bytes())
}

/// The Graph error envelope: `{"error":{"code","message","innerError":{date,request-id,client-request-id}}}`.
pub(crate) fn error(ctx: &Ctx, status: StatusCode, code: &str, message: &str) -> Reply {
    let body = json!({"error": {
        "code": code,
        "message": message,
        "innerError": inner_error(ctx),
    }});
    json_reply(status, &body)
}

fn inner_error(ctx: &Ctx) -> Value {
    json!({
        "date": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string(),
        "request-id": ctx.request_id,
        "client-request-id": ctx.client_request_id,
    })
}

/// Where the Intune backend says it failed, as seen in real error messages.
pub(crate) fn intune_url(managed_device_id: &str, action: Option<&str>) -> String {
    let action = action
        .map(|a| format!("/microsoft.management.services.api.{a}"))
        .unwrap_or_default();
    format!(
        "https://fef.msub05.manage.microsoft.com/DeviceFE/StatelessDeviceFEService/deviceManagement/managedDevices('{managed_device_id}'){action}?api-version=2024-05-31"
    )
}

/// An Intune error: the `message` is itself a JSON document, `_version: 3`, with CRLFs.
pub(crate) fn intune_error(
    ctx: &Ctx,
    status: StatusCode,
    code: &str,
    text: &str,
    url: &str,
) -> Reply {
    let inner_message = format!(
        "{text} - Operation ID (for customer support): 00000000-0000-0000-0000-000000000000 - Activity ID: {} - Url: {url}",
        ctx.request_id
    );
    let message = format!(
        "{{\r\n  \"_version\": 3,\r\n  \"Message\": {},\r\n  \"CustomApiErrorPhrase\": \"\",\r\n  \"RetryAfter\": null,\r\n  \"ErrorSourceService\": \"\",\r\n  \"HttpHeaders\": \"{{}}\"\r\n}}",
        Value::String(inner_message)
    );
    error(ctx, status, code, &message)
}

pub(crate) fn directory_not_found(ctx: &Ctx, id: &str) -> Reply {
    error(
        ctx,
        StatusCode::NOT_FOUND,
        "Request_ResourceNotFound",
        &format!(
            "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
        ),
    )
}

pub(crate) fn directory_denied(ctx: &Ctx) -> Reply {
    error(
        ctx,
        StatusCode::FORBIDDEN,
        "Authorization_RequestDenied",
        "Insufficient privileges to complete the operation.",
    )
}

pub(crate) fn bad_segment(ctx: &Ctx, segment: &str) -> Reply {
    error(
        ctx,
        StatusCode::BAD_REQUEST,
        "BadRequest",
        &format!("Resource not found for the segment '{segment}'."),
    )
}

pub(crate) fn unauthenticated(ctx: &Ctx, message: &str) -> Reply {
    let mut r = error(
        ctx,
        StatusCode::UNAUTHORIZED,
        "InvalidAuthenticationToken",
        message,
    );
    set_header(
        &mut r,
        "www-authenticate",
        "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\"",
    );
    r
}

/// A fault-injected status: 429 in the documented throttling shape, other codes generic.
pub(crate) fn fault(ctx: &Ctx, status: u16, retry_after: Option<u64>) -> Reply {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut r = if status == StatusCode::TOO_MANY_REQUESTS {
        let mut inner = inner_error(ctx);
        if let Value::Object(m) = &mut inner {
            m.insert("code".into(), json!("429"));
            m.insert("message".into(), json!("Please retry after"));
            m.insert("status".into(), json!("429"));
        }
        let body = json!({"error": {
            "code": "TooManyRequests",
            "message": "Please retry again later.",
            "innerError": inner,
        }});
        json_reply(status, &body)
    } else {
        let code = match status.as_u16() {
            500 => "InternalError",
            502 => "BadGateway",
            503 => "ServiceUnavailable",
            504 => "GatewayTimeout",
            _ => "UnknownError",
        };
        error(ctx, status, code, "The service is temporarily unavailable.")
    };
    if let Some(secs) = retry_after {
        set_header(&mut r, "retry-after", &secs.to_string());
    }
    r
}

/// Headers every Graph response carries.
pub(crate) fn decorate(r: &mut Reply, ctx: &Ctx) {
    set_header(r, "request-id", &ctx.request_id);
    set_header(r, "client-request-id", &ctx.client_request_id);
    set_header(
        r,
        "x-ms-ags-diagnostic",
        r#"{"ServerInfo":{"DataCenter":"Loopback","Slice":"E","Ring":"5","ScaleUnit":"000","RoleInstance":"SANDBOX"}}"#,
    );
    set_header(r, "strict-transport-security", "max-age=31536000");
    set_header(r, "date", &http_date());
    if r.headers().contains_key("content-type") {
        set_header(r, "odata-version", "4.0");
    }
}
