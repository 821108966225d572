//! Request input checked before it reaches the store: appended events,
//! filters, page tokens and tail cursors.

use paddock_proto::audit::v1::{Actor, AuditEvent, EventFilter, Outcome};
use paddock_shared::audit::PLATFORM_CHAIN;
use paddock_shared::error::{Error, Result};
use paddock_shared::names::{self, validate_text};
use paddock_shared::time::{now_micros, timestamp, timestamp_micros};

use crate::store::{Filter, PLATFORM_ORG};

const MAX_DETAILS_BYTES: usize = 64 * 1024;
const MAX_FIELD_CHARS: usize = 1024;

/// A dotted lowercase verb: `apikey.create`, `authz.deny`.
fn valid_action(action: &str) -> bool {
    action.len() <= 128
        && action.split('.').count() >= 2
        && action.split('.').all(|part| {
            !part.is_empty()
                && part.starts_with(|c: char| c.is_ascii_lowercase())
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

pub(super) fn validate_event(index: usize, e: &mut AuditEvent) -> Result<String> {
    let bad = |what: &str| Error::invalid(format!("events[{index}]: {what}"));
    let id = uuid::Uuid::try_parse(&e.id).map_err(|_| bad("id must be a UUID (UUIDv7)"))?;
    // Store the canonical spelling, so one id cannot be stored twice.
    e.id = id.hyphenated().to_string();
    let org = if e.organization == PLATFORM_CHAIN {
        // Only refusals that belong to no organization go there.
        if !(e.action.starts_with("auth.") || e.action.starts_with("authz.")) {
            return Err(bad(
                "only auth.* and authz.* events go to the platform chain",
            ));
        }
        PLATFORM_ORG.to_owned()
    } else {
        names::parse_org(&e.organization)
            .map_err(|_| bad("organization must be organizations/{organization}"))?
            .to_owned()
    };
    if !valid_action(&e.action) {
        return Err(bad(
            "action must be a dotted lowercase verb such as apikey.create",
        ));
    }
    if Outcome::try_from(e.outcome).is_err() {
        return Err(bad("unknown outcome"));
    }
    if e.details_json.is_empty() {
        e.details_json = "{}".into();
    }
    if e.details_json.len() > MAX_DETAILS_BYTES {
        return Err(bad("details_json is larger than 64 KiB"));
    }
    match serde_json::from_str::<serde_json::Value>(&e.details_json) {
        Ok(serde_json::Value::Object(_)) => {}
        _ => return Err(bad("details_json must be a JSON object")),
    }
    let actor = e.actor.get_or_insert_with(Actor::default);
    for (what, text) in [
        ("actor.principal_id", &actor.principal_id),
        ("actor.kind", &actor.kind),
        ("actor.display_name", &actor.display_name),
        ("actor.key_id", &actor.key_id),
        ("resource", &e.resource),
        ("error_code", &e.error_code),
        ("source_service", &e.source_service),
        ("trace_id", &e.trace_id),
    ] {
        validate_text(what, text, MAX_FIELD_CHARS).map_err(|err| bad(&err.to_string()))?;
    }
    match &e.time {
        Some(t) if t.seconds < 0 || !(0..1_000_000_000).contains(&t.nanos) => {
            return Err(bad("invalid time"));
        }
        Some(_) => {}
        None => e.time = Some(timestamp(now_micros())),
    }
    // Microsecond precision is what is stored and hashed.
    if let Some(t) = &e.time {
        e.time = Some(timestamp(timestamp_micros(t)));
    }
    e.sequence = 0;
    e.previous_hash.clear();
    e.hash.clear();
    Ok(org)
}

pub(super) fn filter(f: Option<EventFilter>) -> Result<Filter> {
    let f = f.unwrap_or_default();
    for (what, text) in [
        ("filter.actor", &f.actor),
        ("filter.action_prefix", &f.action_prefix),
        ("filter.resource", &f.resource),
        ("filter.trace_id", &f.trace_id),
    ] {
        validate_text(what, text, MAX_FIELD_CHARS)?;
    }
    if Outcome::try_from(f.outcome).is_err() {
        return Err(Error::invalid("filter.outcome: unknown outcome"));
    }
    let start_time = f.start_time.as_ref().map(timestamp_micros);
    let end_time = f.end_time.as_ref().map(timestamp_micros);
    if let (Some(s), Some(e)) = (start_time, end_time)
        && s > e
    {
        return Err(Error::invalid("filter.start_time is after filter.end_time"));
    }
    Ok(Filter {
        actor: f.actor,
        action_prefix: f.action_prefix,
        resource: f.resource,
        outcome: f.outcome,
        start_time,
        end_time,
        trace_id: f.trace_id,
    })
}

/// The sequence a page token's cursor holds.
pub(super) fn decode_sequence(cursor: &str) -> Result<i64> {
    cursor
        .parse::<i64>()
        .ok()
        .filter(|s| *s >= 0)
        .ok_or_else(|| Error::invalid("invalid page_token"))
}

pub(super) fn decode_cursor(cursor: &str) -> Result<i64> {
    let bad = || Error::invalid("invalid after_cursor");
    if cursor.len() != 16 {
        return Err(bad());
    }
    let n = u64::from_str_radix(cursor, 16).map_err(|_| bad())?;
    i64::try_from(n).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_dotted_lowercase_verbs() {
        for ok in [
            "apikey.create",
            "authz.deny",
            "auth.fail",
            "sandbox.exec_v2",
        ] {
            assert!(valid_action(ok), "{ok}");
        }
        for bad in [
            "",
            "create",
            "ApiKey.create",
            "apikey.",
            ".x",
            "a..b",
            "a.b c",
            "a.1b",
        ] {
            assert!(!valid_action(bad), "{bad}");
        }
    }

    #[test]
    fn page_cursors_are_sequences() {
        assert_eq!(decode_sequence("42").ok(), Some(42));
        assert!(decode_sequence("-1").is_err());
        assert!(decode_sequence("x").is_err());
    }

    #[test]
    fn cursors_round_trip() {
        assert_eq!(decode_cursor(&crate::tail::encode_cursor(7)).ok(), Some(7));
        assert!(decode_cursor("7").is_err());
        assert!(decode_cursor("ffffffffffffffff").is_err());
    }
}
