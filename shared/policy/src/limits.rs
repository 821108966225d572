//! Resource amounts: the built-in bounds and defaults, the sanity
//! ceilings, one [`Amount`] of `ResourceLimits` compared as an integer, and
//! their validation.

use std::time::Duration;

use paddock_proto::authz::v1::ResourceLimits;
use paddock_shared::error::{Error, Result};

pub(crate) const MIB: i64 = 1 << 20;
pub(crate) const GIB: i64 = 1 << 30;

/// Built-in organization bounds: what applies where an organization stored
/// no bound (or zero).
pub const BOUND_CPUS: f64 = 4.0;
pub const BOUND_MEMORY_BYTES: i64 = 4 * GIB;
pub const BOUND_PIDS: i64 = 1024;
pub const BOUND_DISK_BYTES: i64 = 10 * GIB;
pub const BOUND_TTL: Duration = Duration::from_secs(24 * 3600);
pub const BOUND_MAX_SANDBOXES: i32 = 20;
pub const BOUND_MAX_SANDBOXES_PER_AGENT: i32 = 5;

/// Built-in agent defaults: what a sandbox request naming no amount gets
/// where the agent's policy names none.
pub const DEFAULT_CPUS: f64 = 1.0;
pub const DEFAULT_MEMORY_BYTES: i64 = 512 * MIB;
pub const DEFAULT_PIDS: i64 = 256;
pub const DEFAULT_DISK_BYTES: i64 = 2 * GIB;
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// Sanity ceilings of any amount, so arithmetic never overflows.
pub(crate) const MAX_CPUS: f64 = 1024.0;
pub(crate) const MAX_TTL: Duration = Duration::from_secs(365 * 86_400);
pub(crate) const MAX_SANDBOXES: i32 = 100_000;
pub(crate) const MAX_RULES: usize = 256;
pub(crate) const MAX_PORTS: usize = 64;
pub(crate) const MAX_CREDENTIALS: usize = 64;
pub(crate) const MAX_PATTERN: usize = 253;

/// One amount of [`ResourceLimits`], compared as an integer: CPUs in
/// thousandths, TTL in milliseconds, the others as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Cpus,
    Memory,
    Pids,
    Disk,
    Ttl,
}

impl Amount {
    pub const ALL: [Amount; 5] = [
        Amount::Cpus,
        Amount::Memory,
        Amount::Pids,
        Amount::Disk,
        Amount::Ttl,
    ];

    /// The field's name in `ResourceLimits` (and in update masks).
    pub fn field(self) -> &'static str {
        match self {
            Amount::Cpus => "cpus",
            Amount::Memory => "memory_bytes",
            Amount::Pids => "pids",
            Amount::Disk => "disk_bytes",
            Amount::Ttl => "ttl",
        }
    }

    /// The amount, from limits that passed [`validate_limits`].
    pub fn get(self, l: &ResourceLimits) -> i64 {
        match self {
            Amount::Cpus => (l.cpus * 1000.0).round() as i64,
            Amount::Memory => l.memory_bytes,
            Amount::Pids => l.pids,
            Amount::Disk => l.disk_bytes,
            Amount::Ttl => l
                .ttl
                .as_ref()
                .and_then(paddock_shared::time::duration)
                .map_or(0, |d| d.as_millis().min(i64::MAX as u128) as i64),
        }
    }

    pub fn set(self, l: &mut ResourceLimits, v: i64) {
        match self {
            Amount::Cpus => l.cpus = v as f64 / 1000.0,
            Amount::Memory => l.memory_bytes = v,
            Amount::Pids => l.pids = v,
            Amount::Disk => l.disk_bytes = v,
            Amount::Ttl => {
                l.ttl = (v > 0)
                    .then(|| paddock_shared::time::proto_duration(Duration::from_millis(v as u64)))
            }
        }
    }

    /// Copies this field as sent, so validation sees what the caller sent.
    pub fn copy(self, dst: &mut ResourceLimits, src: &ResourceLimits) {
        match self {
            Amount::Cpus => dst.cpus = src.cpus,
            Amount::Memory => dst.memory_bytes = src.memory_bytes,
            Amount::Pids => dst.pids = src.pids,
            Amount::Disk => dst.disk_bytes = src.disk_bytes,
            Amount::Ttl => dst.ttl = src.ttl,
        }
    }

    /// The amount as messages show it: `0.5`, `4 GiB`, `3600s`.
    pub fn show(self, v: i64) -> String {
        match self {
            Amount::Cpus => {
                let whole = v / 1000;
                let frac = v % 1000;
                if frac == 0 {
                    whole.to_string()
                } else {
                    format!("{whole}.{frac:03}")
                        .trim_end_matches('0')
                        .to_owned()
                }
            }
            Amount::Ttl if v % 1000 == 0 => format!("{}s", v / 1000),
            Amount::Ttl => format!("{}.{:03}s", v / 1000, v % 1000),
            Amount::Memory | Amount::Disk => paddock_shared::units::human_bytes(v.max(0) as u64),
            Amount::Pids => v.to_string(),
        }
    }
}

/// The built-in organization bounds.
pub fn builtin_bounds() -> ResourceLimits {
    ResourceLimits {
        cpus: BOUND_CPUS,
        memory_bytes: BOUND_MEMORY_BYTES,
        pids: BOUND_PIDS,
        disk_bytes: BOUND_DISK_BYTES,
        ttl: Some(paddock_shared::time::proto_duration(BOUND_TTL)),
    }
}

/// The built-in agent defaults.
pub fn builtin_defaults() -> ResourceLimits {
    ResourceLimits {
        cpus: DEFAULT_CPUS,
        memory_bytes: DEFAULT_MEMORY_BYTES,
        pids: DEFAULT_PIDS,
        disk_bytes: DEFAULT_DISK_BYTES,
        ttl: Some(paddock_shared::time::proto_duration(DEFAULT_TTL)),
    }
}

/// Checks amounts: none negative, CPUs finite and at most 1024, TTL a
/// valid duration of at most 365 days. Normalizes CPUs to thousandths and a
/// zero TTL to unset.
pub fn validate_limits(prefix: &str, l: &ResourceLimits) -> Result<ResourceLimits> {
    if !l.cpus.is_finite() || l.cpus < 0.0 {
        return Err(Error::invalid(format!(
            "{prefix}.cpus must be a non-negative number"
        )));
    }
    if l.cpus > MAX_CPUS {
        return Err(Error::invalid(format!(
            "{prefix}.cpus {} is above the most Paddock accepts ({MAX_CPUS})",
            l.cpus
        )));
    }
    for (field, v) in [
        ("memory_bytes", l.memory_bytes),
        ("pids", l.pids),
        ("disk_bytes", l.disk_bytes),
    ] {
        if v < 0 {
            return Err(Error::invalid(format!(
                "{prefix}.{field} must not be negative (got {v})"
            )));
        }
    }
    if let Some(ttl) = &l.ttl {
        let d = paddock_shared::time::duration(ttl).ok_or_else(|| {
            Error::invalid(format!("{prefix}.ttl must be a non-negative duration"))
        })?;
        if d > MAX_TTL {
            return Err(Error::invalid(format!(
                "{prefix}.ttl {}s is above the most Paddock accepts (365 days)",
                d.as_secs()
            )));
        }
    }
    let mut out = ResourceLimits::default();
    for a in Amount::ALL {
        a.set(&mut out, a.get(l));
    }
    Ok(out)
}
