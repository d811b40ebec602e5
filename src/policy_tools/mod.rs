//! Policy as code: `passgate policy test` runs test cases through the gateway's own decision code
//! (no network), like `opa test` for OPA users. It must never reach Graph, Entra or the audit log,
//! and it decides only with the code the gateway runs.
//!
//! [`cases`] (the case file) · [`run`] (one case through screen, decision, limits, approval).

pub mod cases;
pub mod run;

use cases::{Case, CaseFile};
use std::path::PathBuf;
use std::process::ExitCode;

/// Output formats of `policy test`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TestFormat {
    /// A line per case and a summary.
    #[default]
    Text,
    /// JUnit XML, for CI systems.
    Junit,
}

#[derive(clap::Subcommand, Debug)]
pub enum PolicyCommand {
    /// Run policy test cases against a config: a line per case, `N passed, M failed`; exit 1 on
    /// any failure.
    Test {
        /// The config whose policies are tested.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Case files (YAML, `cases:`); see docs/policy-as-code.md.
        #[arg(required = true, value_name = "CASES.yaml")]
        cases: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t)]
        format: TestFormat,
    },
}

/// One case's result.
struct Ran {
    file: String,
    name: String,
    /// `None`: passed; `Some(why)`: failed (or could not run).
    failure: Option<String>,
}

fn load_cases(path: &PathBuf) -> Result<Vec<Case>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: CaseFile =
        serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(file.cases)
}

pub async fn run(cmd: PolicyCommand) -> ExitCode {
    let PolicyCommand::Test {
        config,
        cases,
        format,
    } = cmd;
    let settings = match crate::config::load_file(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut results = Vec::new();
    for path in &cases {
        let list = match load_cases(path) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("passgate policy test: {e}");
                return ExitCode::from(2);
            }
        };
        for case in list {
            let failure = match run::decide(&settings, &case).await {
                Ok(got) if run::matches(&case, &got) => None,
                Ok(got) => Some(format!(
                    "expected {}{}{}, got {got}",
                    case.expect.decision.as_str(),
                    case.expect
                        .reason
                        .as_deref()
                        .map(|r| format!(" {r}"))
                        .unwrap_or_default(),
                    case.expect
                        .policy
                        .as_deref()
                        .map(|p| format!(" (policy {p})"))
                        .unwrap_or_default(),
                )),
                Err(e) => Some(format!("cannot run: {e}")),
            };
            results.push(Ran {
                file: path.display().to_string(),
                name: case.name.clone(),
                failure,
            });
        }
    }
    let failed = results.iter().filter(|r| r.failure.is_some()).count();
    match format {
        TestFormat::Text => print!("{}", text_report(&results)),
        TestFormat::Junit => print!("{}", junit_report(&results)),
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn text_report(results: &[Ran]) -> String {
    let mut out = String::new();
    for r in results {
        match &r.failure {
            None => out.push_str(&format!("ok    {}\n", r.name)),
            Some(why) => out.push_str(&format!("FAIL  {}: {why}\n", r.name)),
        }
    }
    let failed = results.iter().filter(|r| r.failure.is_some()).count();
    out.push_str(&format!(
        "{} passed, {failed} failed\n",
        results.len() - failed
    ));
    out
}

fn xml(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&apos;".to_string(),
            c if c.is_control() && c != '\n' && c != '\t' => "?".to_string(),
            c => c.to_string(),
        })
        .collect()
}

fn junit_report(results: &[Ran]) -> String {
    let failed = results.iter().filter(|r| r.failure.is_some()).count();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!(
        "<testsuites tests=\"{}\" failures=\"{failed}\">\n  <testsuite name=\"passgate policy test\" tests=\"{}\" failures=\"{failed}\">\n",
        results.len(),
        results.len()
    ));
    for r in results {
        out.push_str(&format!(
            "    <testcase classname=\"{}\" name=\"{}\"",
            xml(&r.file),
            xml(&r.name)
        ));
        match &r.failure {
            None => out.push_str("/>\n"),
            Some(why) => out.push_str(&format!(
                ">\n      <failure message=\"{}\"/>\n    </testcase>\n",
                xml(why)
            )),
        }
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_escapes_and_counts() {
        let r = vec![
            Ran {
                file: "a.yaml".into(),
                name: "ok <one>".into(),
                failure: None,
            },
            Ran {
                file: "a.yaml".into(),
                name: "bad & \"two\"".into(),
                failure: Some("expected allow, got deny x".into()),
            },
        ];
        let x = junit_report(&r);
        assert!(x.contains("tests=\"2\" failures=\"1\""));
        assert!(x.contains("name=\"ok &lt;one&gt;\"/>"));
        assert!(x.contains("name=\"bad &amp; &quot;two&quot;\""));
        assert!(x.contains("<failure message=\"expected allow, got deny x\"/>"));
        assert_eq!(text_report(&r).lines().last(), Some("1 passed, 1 failed"));
    }
}
