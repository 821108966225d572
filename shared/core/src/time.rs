//! Time as stored (unix microseconds) and as sent (protobuf Timestamp), and
//! the human durations the CLI and configs accept (`30d`, `2s`, `1h30m`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in unix microseconds.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

pub fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

pub fn opt_timestamp(micros: Option<i64>) -> Option<prost_types::Timestamp> {
    micros.map(timestamp)
}

pub fn timestamp_micros(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(ts.nanos) / 1000)
}

/// A protobuf Duration as a std Duration; `None` if negative or malformed.
pub fn duration(d: &prost_types::Duration) -> Option<Duration> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return None;
    }
    Some(Duration::new(d.seconds as u64, d.nanos as u32))
}

pub fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs().min(i64::MAX as u64) as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Parses `90d`, `12h`, `30m`, `45s`, `500ms` and sums like `1h30m`, with
/// `humantime`. It also takes spaces, fractions, weeks, years and long unit
/// names (`1.5 hours`); the flags keep to the short units their help lists,
/// so those are refused here first.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?}: use e.g. 30d, 12h, 30m, 45s, 500ms");
    let text = text.trim();
    let short_units = text
        .split(|c: char| c.is_ascii_digit())
        .all(|unit| matches!(unit, "" | "ms" | "s" | "m" | "h" | "d"));
    if !short_units {
        return Err(bad());
    }
    humantime::parse_duration(text).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("5y").is_err());
        assert_eq!(parse_duration(" 2s "), Ok(Duration::from_secs(2)));
        for bad in ["1h 30m", "1.5h", "2 hours", "3w", "-1s", "+1s", "1hh", "s1"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_duration("5y"),
            Err(r#"invalid duration "5y": use e.g. 30d, 12h, 30m, 45s, 500ms"#.to_owned())
        );
    }

    #[test]
    fn timestamps_round_trip() {
        let now = now_micros();
        assert_eq!(timestamp_micros(&timestamp(now)), now);
    }
}
