//! `paddock policy` (an agent's policy: resource bounds and defaults,
//! network, tools, credentials) and `paddock security` (the organization's
//! security settings, which bound every policy). `set` sends only the
//! fields its flags name, as an update mask; `0` puts an amount back to the
//! organization's bound or the built-in default.
//!
//! What both share lives here: the authz policy client, the amount flags
//! and their update-mask paths, size and CPU parsing, and the table cells.
//! `paddock policy` is in `agent`, `paddock security` in `security`.

mod agent;
mod security;

use std::time::Duration;

use clap::{Args, ValueEnum};
use paddock_policy as builtin;
use paddock_proto::authz::v1::policy_service_client::PolicyServiceClient;
use paddock_proto::authz::v1::{NetworkMode, ResourceLimits};
use paddock_shared::auth::{self, BearerAuth};
use paddock_shared::client::Channel;
use serde_json::Value;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;

pub use self::agent::{PolicyCommand, policy};
pub use self::security::{SecurityCommand, security};
use crate::commands::Ctx;
use crate::error::CliError;
use crate::names;
use crate::output;

type PolicyClient = PolicyServiceClient<InterceptedService<Channel, BearerAuth>>;

fn client(ctx: &Ctx) -> Result<PolicyClient, CliError> {
    let endpoint = &ctx.global().authz_endpoint;
    names::check_endpoint("--authz-endpoint", endpoint)?;
    let channel = auth::lazy_channel(endpoint).map_err(|s| CliError::usage(s.message()))?;
    Ok(PolicyServiceClient::with_interceptor(
        channel,
        ctx.bearer()?,
    ))
}

/// `--network` and `--max-network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworkArg {
    None,
    Allowlist,
    Denylist,
    Open,
}

impl NetworkArg {
    fn mode(self) -> NetworkMode {
        match self {
            NetworkArg::None => NetworkMode::None,
            NetworkArg::Allowlist => NetworkMode::Allowlist,
            NetworkArg::Denylist => NetworkMode::Denylist,
            NetworkArg::Open => NetworkMode::Open,
        }
    }
}

/// Amount flags shared by `policy set` (bounds) and `security set`.
#[derive(Debug, Clone, Args)]
pub struct MaxArgs {
    /// Most CPUs a sandbox may ask for (e.g. 0.5, 2).
    #[arg(long, value_name = "N", value_parser = parse_cpus)]
    max_cpus: Option<f64>,
    /// Most memory (e.g. 512m, 2g).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_memory: Option<i64>,
    /// Most processes.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(0..))]
    max_pids: Option<i64>,
    /// Most disk (e.g. 10g).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_disk: Option<i64>,
    /// Longest lifetime (e.g. 30m, 24h).
    #[arg(long, value_name = "DURATION", value_parser = paddock_shared::time::parse_duration)]
    max_ttl: Option<Duration>,
}

impl MaxArgs {
    /// Sets the named amounts in `limits` and their mask paths.
    fn apply(&self, limits: &mut ResourceLimits, paths: &mut Vec<String>) {
        amounts(
            "max",
            limits,
            paths,
            (
                self.max_cpus,
                self.max_memory,
                self.max_pids,
                self.max_disk,
                self.max_ttl,
            ),
        );
    }
}

type Amounts = (
    Option<f64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<Duration>,
);

fn amounts(
    prefix: &str,
    limits: &mut ResourceLimits,
    paths: &mut Vec<String>,
    (cpus, memory, pids, disk, ttl): Amounts,
) {
    let mut set = |field: &str| paths.push(format!("{prefix}.{field}"));
    if let Some(v) = cpus {
        limits.cpus = v;
        set("cpus");
    }
    if let Some(v) = memory {
        limits.memory_bytes = v;
        set("memory_bytes");
    }
    if let Some(v) = pids {
        limits.pids = v;
        set("pids");
    }
    if let Some(v) = disk {
        limits.disk_bytes = v;
        set("disk_bytes");
    }
    if let Some(v) = ttl {
        limits.ttl = Some(paddock_shared::time::proto_duration(v));
        set("ttl");
    }
}

/// The amount flags both commands share, by the fields they set.
const AMOUNT_FLAGS: &[(&str, &str)] = &[
    ("max.cpus", "--max-cpus"),
    ("max.memory_bytes", "--max-memory"),
    ("max.pids", "--max-pids"),
    ("max.disk_bytes", "--max-disk"),
    ("max.ttl", "--max-ttl"),
];

/// A failed update, its fields renamed to the flags of the command.
fn update_err<'a>(
    ctx: &'a Ctx,
    flags: &'a [&'a [(&'a str, &'a str)]],
) -> impl Fn(tonic::Status) -> CliError + 'a {
    move |s| {
        let all: Vec<(&str, &str)> = flags.iter().flat_map(|f| f.iter().copied()).collect();
        ctx.authz_err()(s).with_flags(&all)
    }
}

fn missing(what: &str) -> CliError {
    CliError::new(Code::Internal, format!("authz returned no {what}"))
}

fn time_json(ts: Option<&prost_types::Timestamp>) -> Value {
    ts.map_or(Value::Null, |t| Value::String(output::rfc3339(t)))
}

// ---------------------------------------------------------------- parsing

/// `--max-cpus`: a non-negative number such as 0.5 or 2.
fn parse_cpus(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "invalid CPU count {text:?}: use a non-negative number such as 0.5 or 2"
        )),
    }
}

/// A size such as `512m`, `2g`, `1.5GiB` or `1048576` (bytes). Units are
/// binary (k = 1024), as Docker reads them.
pub fn parse_size(text: &str) -> Result<i64, String> {
    let bad = || format!("invalid size {text:?}: use e.g. 512m, 2g, 10GiB or a number of bytes");
    let t = text.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let shift = match unit.trim() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    let bytes = (value * (1u64 << shift) as f64).round();
    if !bytes.is_finite() || bytes < 0.0 || bytes > i64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as i64)
}

// ---------------------------------------------------------------- tables

/// `4GiB`, `512MiB`, `1536B`: the largest binary unit that divides evenly.
pub fn human_bytes(bytes: i64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes > 0 && bytes % (1i64 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

fn amount(a: builtin::Amount, l: &ResourceLimits) -> Option<String> {
    let v = a.get(l);
    (v > 0).then(|| match a {
        builtin::Amount::Memory | builtin::Amount::Disk => human_bytes(v),
        builtin::Amount::Ttl => output::human_seconds(v / 1000),
        _ => a.show(v),
    })
}

fn label(prefix: &str, a: builtin::Amount) -> &'static str {
    use builtin::Amount::*;
    match (prefix, a) {
        ("max", Cpus) => "max cpus",
        ("max", Memory) => "max memory",
        ("max", Pids) => "max pids",
        ("max", Disk) => "max disk",
        ("max", Ttl) => "max ttl",
        (_, Cpus) => "default cpus",
        (_, Memory) => "default memory",
        (_, Pids) => "default pids",
        (_, Disk) => "default disk",
        (_, Ttl) => "default ttl",
    }
}

fn mode_word(value: i32) -> String {
    builtin::network::name(NetworkMode::try_from(value).unwrap_or(NetworkMode::Unspecified))
        .to_owned()
}

fn list_cell(items: Vec<String>) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(", ")
    }
}

fn updated_cell(ts: Option<&prost_types::Timestamp>, by: &str) -> String {
    match ts {
        None => "never (built-in defaults)".to_owned(),
        Some(t) if by.is_empty() => output::rfc3339(t),
        Some(t) => format!("{} by {by}", output::rfc3339(t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("").is_err());
        assert!(parse_size("-1g").is_err());
        assert!(parse_size("2x").is_err());
        assert!(parse_size("99999999999t").is_err());
        assert_eq!(human_bytes(4 << 30), "4GiB");
        assert_eq!(human_bytes(512 << 20), "512MiB");
        assert_eq!(human_bytes(1000), "1000B");
    }
}
