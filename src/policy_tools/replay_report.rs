//! The report of `passgate policy replay`: counts by change kind, exact apart from inexact, the
//! records that could not be re-decided and why, and a few examples of each change, as text or
//! JSON. It only renders what the replay decided; it must never print a justification, a token
//! or anything from a record beyond ids, names and reason codes, nor a control character raw.

use super::replay::{Change, Inexact, Replayed};
use super::run::Outcome;
use crate::audit::search::sanitize;
use crate::audit::DecisionRecord;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// One changed record, as shown.
#[derive(Debug, Clone)]
pub struct Example {
    pub request_id: String,
    pub time: String,
    pub oid: Option<String>,
    pub upn: Option<String>,
    pub device: Option<String>,
    pub old: Outcome,
    pub new: Option<Outcome>,
    pub inexact: Vec<Inexact>,
}

/// Everything the replay found, counted as records are added in order.
#[derive(Debug, Default)]
pub struct Summary {
    /// Lines read (every kind).
    pub lines: u64,
    /// `kind: decision` records.
    pub decisions: u64,
    /// Exact re-decisions by change (`Unchanged` included).
    pub exact: BTreeMap<Change, u64>,
    /// Re-decisions made on assumptions, by change.
    pub inexact: BTreeMap<Change, u64>,
    /// Why they were inexact (a record may count under several).
    pub inexact_why: BTreeMap<Inexact, u64>,
    /// Records not re-decided, by why.
    pub skipped: BTreeMap<String, u64>,
    examples: BTreeMap<Change, Vec<Example>>,
    inexact_examples: BTreeMap<Change, Vec<Example>>,
    max_examples: usize,
}

fn count(m: &BTreeMap<Change, u64>, c: Change) -> u64 {
    m.get(&c).copied().unwrap_or(0)
}

fn changed(m: &BTreeMap<Change, u64>) -> u64 {
    m.iter()
        .filter(|(c, _)| **c != Change::Unchanged)
        .map(|(_, n)| n)
        .sum()
}

impl Summary {
    pub fn new(max_examples: usize) -> Summary {
        Summary {
            max_examples,
            ..Summary::default()
        }
    }

    /// Counts one decision record's replay.
    pub fn add(&mut self, time: &str, rec: &DecisionRecord, replayed: Replayed) {
        self.decisions += 1;
        let (old, new, change, inexact) = match replayed {
            Replayed::Skipped(why) => {
                *self.skipped.entry(why).or_default() += 1;
                return;
            }
            Replayed::Decided {
                old,
                new,
                change,
                inexact,
            } => (old, new, change, inexact),
        };
        let exact = inexact.is_empty();
        for why in &inexact {
            *self.inexact_why.entry(why.clone()).or_default() += 1;
        }
        let (counts, examples) = if exact {
            (&mut self.exact, &mut self.examples)
        } else {
            (&mut self.inexact, &mut self.inexact_examples)
        };
        *counts.entry(change).or_default() += 1;
        if change == Change::Unchanged {
            return;
        }
        let list = examples.entry(change).or_default();
        if list.len() < self.max_examples {
            list.push(Example {
                request_id: rec.request_id.clone(),
                time: time.to_string(),
                oid: rec.operator.as_ref().map(|o| o.oid.clone()),
                upn: rec.operator.as_ref().and_then(|o| o.upn.clone()),
                device: rec.target.as_ref().map(|t| t.managed_device_id.clone()),
                old,
                new,
                inexact,
            });
        }
    }

    /// Exact re-decisions that flip allow ↔ deny: what fails the exit code.
    pub fn flips(&self) -> u64 {
        count(&self.exact, Change::AllowToDeny) + count(&self.exact, Change::DenyToAllow)
    }

    /// Exact re-decisions that differ in any way.
    pub fn changed(&self) -> u64 {
        changed(&self.exact)
    }

    pub fn text(&self, candidate: &str) -> String {
        let mut out = String::new();
        let exact_n: u64 = self.exact.values().sum();
        let inexact_n: u64 = self.inexact.values().sum();
        let skipped_n: u64 = self.skipped.values().sum();
        out.push_str(&format!(
            "passgate policy replay under {}: {} lines read, {} decision records\n",
            sanitize(candidate),
            self.lines,
            self.decisions
        ));
        out.push_str(&format!(
            "exact:   {exact_n} re-decided: {} unchanged, {} changed ({})\n",
            count(&self.exact, Change::Unchanged),
            self.changed(),
            kinds(&self.exact)
        ));
        out.push_str(&format!(
            "inexact: {inexact_n} re-decided on assumptions (not counted as changes): {} unchanged, {} changed ({})\n",
            count(&self.inexact, Change::Unchanged),
            changed(&self.inexact),
            kinds(&self.inexact)
        ));
        for (why, n) in &self.inexact_why {
            out.push_str(&format!("         {n} {}\n", why.as_str()));
        }
        out.push_str(&format!("not re-decidable: {skipped_n}\n"));
        for (why, n) in &self.skipped {
            out.push_str(&format!("         {n} {}\n", sanitize(why)));
        }
        for (title, examples) in [("", &self.examples), ("inexact ", &self.inexact_examples)] {
            for change in Change::KINDS {
                let Some(list) = examples.get(&change) else {
                    continue;
                };
                let total = if title.is_empty() {
                    count(&self.exact, change)
                } else {
                    count(&self.inexact, change)
                };
                out.push_str(&format!(
                    "\n{title}{} ({total}, {} shown):\n",
                    change.label(),
                    list.len()
                ));
                for e in list {
                    out.push_str(&format!("  {}\n", example_line(e)));
                }
            }
        }
        out.push_str(&format!(
            "\n{} changed, {} allow↔deny flips; {inexact_n} inexact, {skipped_n} not re-decidable\n",
            self.changed(),
            self.flips()
        ));
        out
    }

    pub fn json(&self, candidate: &str) -> Value {
        let by_kind = |m: &BTreeMap<Change, u64>| {
            let mut o = serde_json::Map::new();
            for c in std::iter::once(Change::Unchanged).chain(Change::KINDS) {
                if c == Change::Undetermined && m.get(&c).is_none() {
                    continue;
                }
                o.insert(c.as_str().into(), json!(count(m, c)));
            }
            Value::Object(o)
        };
        let examples = |m: &BTreeMap<Change, Vec<Example>>| {
            let mut o = serde_json::Map::new();
            for (c, list) in m {
                o.insert(
                    c.as_str().into(),
                    Value::Array(list.iter().map(example_json).collect()),
                );
            }
            Value::Object(o)
        };
        json!({
            "candidate": candidate,
            "lines": self.lines,
            "decisions": self.decisions,
            "changed": self.changed(),
            "flips": self.flips(),
            "exact": by_kind(&self.exact),
            "inexact": by_kind(&self.inexact),
            "inexact_why": self
                .inexact_why
                .iter()
                .map(|(w, n)| (w.code().to_string(), json!(n)))
                .collect::<serde_json::Map<_, _>>(),
            "not_redecidable": self
                .skipped
                .iter()
                .map(|(w, n)| (w.clone(), json!(n)))
                .collect::<serde_json::Map<_, _>>(),
            "examples": examples(&self.examples),
            "inexact_examples": examples(&self.inexact_examples),
        })
    }
}

fn kinds(m: &BTreeMap<Change, u64>) -> String {
    let mut parts: Vec<String> = [
        Change::AllowToDeny,
        Change::DenyToAllow,
        Change::OtherPolicy,
        Change::OtherReason,
    ]
    .iter()
    .map(|c| format!("{} {}", count(m, *c), c.label()))
    .collect();
    if count(m, Change::Undetermined) > 0 {
        parts.push(format!(
            "{} {}",
            count(m, Change::Undetermined),
            Change::Undetermined.label()
        ));
    }
    parts.join(", ")
}

fn outcome_text(o: Option<&Outcome>) -> String {
    match o {
        Some(o) => sanitize(&o.to_string()),
        None => "undetermined (no device facts recorded)".into(),
    }
}

fn outcome_json(o: Option<&Outcome>) -> Value {
    match o {
        Some(o) => json!({
            "decision": o.decision.as_str(),
            "reason": o.reason,
            "policy": o.policy,
        }),
        None => Value::Null,
    }
}

fn example_line(e: &Example) -> String {
    let who = match (&e.upn, &e.oid) {
        (Some(u), Some(o)) => format!("{} ({})", sanitize(u), sanitize(o)),
        (None, Some(o)) => sanitize(o),
        _ => "-".into(),
    };
    let mut line = format!(
        "{}  {}  {who}  device {}: {} → {}",
        sanitize(&e.request_id),
        sanitize(&e.time),
        e.device
            .as_deref()
            .map(sanitize)
            .unwrap_or_else(|| "-".into()),
        outcome_text(Some(&e.old)),
        outcome_text(e.new.as_ref()),
    );
    if !e.inexact.is_empty() {
        let why: Vec<&str> = e.inexact.iter().map(Inexact::code).collect();
        line.push_str(&format!("  [inexact: {}]", why.join(", ")));
    }
    line
}

fn example_json(e: &Example) -> Value {
    json!({
        "request_id": e.request_id,
        "time": e.time,
        "operator": { "oid": e.oid, "upn": e.upn },
        "device": e.device,
        "old": outcome_json(Some(&e.old)),
        "new": outcome_json(e.new.as_ref()),
        "inexact": e.inexact.iter().map(Inexact::code).collect::<Vec<_>>(),
    })
}
