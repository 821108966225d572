//! How an audit event prints: a table row, a tail line, or a JSON object.

use paddock_proto::audit::v1::{AuditEvent, Outcome};
use serde_json::{Value, json};

use crate::output;

/// RFC 3339 with microseconds, as stored.
fn time_micros(ts: Option<&prost_types::Timestamp>) -> String {
    ts.map_or_else(String::new, |t| {
        let secs = output::rfc3339(t);
        let base = secs.trim_end_matches('Z');
        format!("{base}.{:06}Z", t.nanos / 1000)
    })
}

fn outcome_name(outcome: i32) -> &'static str {
    match Outcome::try_from(outcome).unwrap_or(Outcome::Unspecified) {
        Outcome::Success => "success",
        Outcome::Failure => "failure",
        Outcome::Denied => "denied",
        Outcome::Unspecified => "unspecified",
    }
}

/// One event as JSON, `details` as an object (`export` adds the exact
/// `details_json` the hash covers).
pub fn event_json(e: &AuditEvent) -> Value {
    let actor = e.actor.clone().unwrap_or_default();
    let details = serde_json::from_str::<Value>(&e.details_json)
        .unwrap_or_else(|_| Value::String(e.details_json.clone()));
    json!({
        "id": e.id,
        "time": time_micros(e.time.as_ref()),
        "organization": e.organization,
        "actor": {
            "principal_id": actor.principal_id,
            "kind": output::kind_short(&actor.kind),
            "display_name": actor.display_name,
            "key_id": actor.key_id,
        },
        "action": e.action,
        "resource": e.resource,
        "outcome": outcome_name(e.outcome),
        "error_code": e.error_code,
        "source_service": e.source_service,
        "trace_id": e.trace_id,
        "details": details,
        "sequence": e.sequence,
        "previous_hash": e.previous_hash,
        "hash": e.hash,
    })
}

fn actor_cell(e: &AuditEvent) -> String {
    let actor = e.actor.clone().unwrap_or_default();
    if !actor.display_name.is_empty() {
        actor.display_name
    } else if !actor.principal_id.is_empty() {
        actor.principal_id
    } else {
        "-".into()
    }
}

pub(super) fn event_cells(e: &AuditEvent) -> Vec<String> {
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    let outcome = if e.error_code.is_empty() {
        outcome_name(e.outcome).to_owned()
    } else {
        format!("{} ({})", outcome_name(e.outcome), e.error_code)
    };
    vec![
        output::ts_cell(e.time.as_ref()),
        e.sequence.to_string(),
        actor_cell(e),
        e.action.clone(),
        dash(&e.resource),
        outcome,
    ]
}

pub(super) const HEADER: [&str; 6] = ["TIME", "SEQ", "ACTOR", "ACTION", "RESOURCE", "OUTCOME"];
