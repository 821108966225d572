//! The filter flags of `audit query`, `tail` and `export`, and the times
//! `--since` and `--until` take (a duration ago, or RFC 3339).

use clap::{Args, ValueEnum};
use paddock_proto::audit::v1::{EventFilter, Outcome};

use crate::error::CliError;
use crate::names;

/// `--outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutcomeArg {
    Success,
    Failure,
    Denied,
}

/// Filters of query, tail and export.
#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Actor: a principal id or an email / agent name.
    #[arg(long)]
    actor: Option<String>,
    /// Action prefix, e.g. apikey. or apikey.create.
    #[arg(long)]
    action: Option<String>,
    /// Exact resource name (full, or relative like projects/web).
    #[arg(long)]
    resource: Option<String>,
    /// Only events with this outcome.
    #[arg(long, value_enum)]
    outcome: Option<OutcomeArg>,
    /// Events at or after: a duration ago (1h, 30m, 7d) or RFC 3339.
    #[arg(long, value_parser = parse_time)]
    since: Option<prost_types::Timestamp>,
    /// Events before: a duration ago or RFC 3339.
    #[arg(long, value_parser = parse_time)]
    until: Option<prost_types::Timestamp>,
    /// W3C trace id.
    #[arg(long)]
    trace_id: Option<String>,
}

impl FilterArgs {
    pub(super) fn into_filter(self) -> Result<EventFilter, CliError> {
        let resource = match self.resource {
            Some(r) if !names::is_full(&r) => {
                return Err(CliError::usage(format!(
                    "invalid --resource {r:?}: give the full name, organizations/{{organization}}/..."
                )));
            }
            r => r.unwrap_or_default(),
        };
        Ok(EventFilter {
            actor: self.actor.unwrap_or_default(),
            action_prefix: self.action.unwrap_or_default(),
            resource,
            outcome: match self.outcome {
                None => Outcome::Unspecified,
                Some(OutcomeArg::Success) => Outcome::Success,
                Some(OutcomeArg::Failure) => Outcome::Failure,
                Some(OutcomeArg::Denied) => Outcome::Denied,
            } as i32,
            start_time: self.since,
            end_time: self.until,
            trace_id: self.trace_id.unwrap_or_default(),
        })
    }
}

/// `1h` (that long ago) or RFC 3339 (`2026-01-02T03:04:05Z`,
/// `2026-01-02T03:04:05.5+02:00`).
pub fn parse_time(text: &str) -> Result<prost_types::Timestamp, String> {
    if let Ok(d) = paddock_shared::time::parse_duration(text) {
        let micros = paddock_shared::time::now_micros()
            .saturating_sub(i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        return Ok(paddock_shared::time::timestamp(micros));
    }
    parse_rfc3339(text).ok_or_else(|| {
        format!("invalid time {text:?}: use a duration ago (1h, 30m, 7d) or RFC 3339 (2026-01-02T03:04:05Z)")
    })
}

/// RFC 3339 with a time and a zone (`Z` or `+02:00`), parsed by
/// prost-types. Its parser also takes a bare date, a time without a zone
/// (as UTC) and `+0200`; those are refused here as before, so a time given
/// without its zone is never guessed.
fn parse_rfc3339(text: &str) -> Option<prost_types::Timestamp> {
    let b = text.as_bytes();
    let zone = match b {
        [.., b'Z' | b'z'] => 1,
        [.., b'+' | b'-', _, _, b':', _, _] => 6,
        _ => return None,
    };
    let shaped = b.len() >= 19 + zone
        && b[4] == b'-'
        && matches!(b[10], b'T' | b't' | b' ')
        && b[b.len() - zone - 1].is_ascii_digit();
    if !shaped {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output;

    #[test]
    fn rfc3339_times() {
        let t = parse_rfc3339("1970-01-01T00:00:00Z").expect("epoch");
        assert_eq!((t.seconds, t.nanos), (0, 0));
        let t = parse_rfc3339("2026-01-02T03:04:05.5+02:00").expect("offset");
        assert_eq!(t.seconds, 1_767_323_045 - 7200);
        assert_eq!(t.nanos, 500_000_000);
        assert_eq!(
            output::rfc3339(&parse_rfc3339("2025-03-01T12:00:00Z").expect("t")),
            "2025-03-01T12:00:00Z"
        );
        for bad in [
            "",
            "2026-01-02",
            "2026-13-02T03:04:05Z",
            "2026-01-02T03:04:05",
            "2026-01-02T03:04:05+0200",
            "2026-01-02T03:04:05 Z",
            "2026-01-02Z",
            "2026-01-02T03:04Z",
            "+12026-01-02T03:04:05Z",
            "x",
        ] {
            assert!(parse_rfc3339(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn durations_are_ago() {
        let t = parse_time("1h").expect("1h");
        let now = paddock_shared::time::now_micros() / 1_000_000;
        assert!((now - 3600 - t.seconds).abs() <= 2);
        assert!(parse_time("yesterday").is_err());
    }
}
