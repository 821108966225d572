//! Sizes and durations as people read them (`8 GiB`, `90d`), exact so that
//! a limit in a message is the limit that applies.

/// Bytes in the largest binary unit that divides them evenly: `8 GiB`,
/// `1536 MiB`, `64 KiB`, `1000 bytes`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    for (size, unit) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{} {unit}", bytes / size);
        }
    }
    if bytes == 1 {
        "1 byte".to_owned()
    } else {
        format!("{bytes} bytes")
    }
}

/// Seconds in the largest unit that divides them evenly, as `--expires`
/// and `--ttl` take them: `90d`, `12h`, `30m`, `45s`.
pub fn human_seconds(secs: u64) -> String {
    match secs {
        s if s > 0 && s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        s if s > 0 && s.is_multiple_of(3600) => format!("{}h", s / 3600),
        s if s > 0 && s.is_multiple_of(60) => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(8 << 30), "8 GiB");
        assert_eq!(human_bytes(1536 << 20), "1536 MiB");
        assert_eq!(human_bytes(64 * 1024), "64 KiB");
        assert_eq!(human_bytes(65_537), "65537 bytes");
        assert_eq!(human_bytes(0), "0 bytes");
        assert_eq!(human_bytes(1), "1 byte");
        assert_eq!(human_bytes(3 << 40), "3 TiB");
    }

    #[test]
    fn durations() {
        assert_eq!(human_seconds(90 * 86_400), "90d");
        assert_eq!(human_seconds(7200), "2h");
        assert_eq!(human_seconds(90), "90s");
        assert_eq!(human_seconds(120), "2m");
        assert_eq!(human_seconds(0), "0s");
    }
}
