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

fn parse_rfc3339(text: &str) -> Option<prost_types::Timestamp> {
    let b = text.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(r)?;
        if s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut rest = &text[19..];
    let mut nanos = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        nanos = frac[..digits].parse::<i64>().ok()? * 10i64.pow(9 - digits as u32);
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let oh: i64 = rest[1..3].parse().ok()?;
            let om: i64 = rest[4..6].parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    let seconds = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s - offset;
    Some(prost_types::Timestamp {
        seconds,
        nanos: nanos as i32,
    })
}

/// (year, month, day) to days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
