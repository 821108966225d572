//! Agent policies and organization security settings as values: the
//! built-in defaults, validation, update masks, the check of a policy
//! against its organization's bounds, and the effective policy (the agent's
//! policy clamped by the settings, every zero filled). No I/O here: `store`
//! keeps them, `service` answers the RPCs.
//!
//! Long because the whole policy model (validation, merge, clamping,
//! defaults) is one pure module with no I/O; it moves to a shared policy
//! crate in issue 10 and splits there.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use paddock_proto::authz::v1::{
    AgentPolicy, Effect, HardeningRelaxations, NetworkMode, NetworkRule, ResourceLimits,
    SecuritySettings, ToolRule,
};
use paddock_shared::error::{Error, Result};
use paddock_shared::names;

const MIB: i64 = 1 << 20;
const GIB: i64 = 1 << 30;

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
const MAX_CPUS: f64 = 1024.0;
const MAX_TTL: Duration = Duration::from_secs(365 * 86_400);
const MAX_SANDBOXES: i32 = 100_000;
const MAX_RULES: usize = 256;
const MAX_PORTS: usize = 64;
const MAX_CREDENTIALS: usize = 64;
const MAX_PATTERN: usize = 253;

/// Linux capabilities an organization may let sandboxes keep (names as
/// Docker takes them, without `CAP_`).
pub const CAPABILITIES: &[&str] = &[
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYSLOG",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "WAKE_ALARM",
];

// ------------------------------------------------------------ names

/// `organizations/{o}/agents/{a}/policy`.
pub fn policy_name(org: &str, agent: &str) -> String {
    format!("{}/policy", names::child_name(org, "agents", agent))
}

/// `organizations/{o}/securitySettings`.
pub fn settings_name(org: &str) -> String {
    format!("{}/securitySettings", names::org_name(org))
}

/// (org, agent) of `organizations/{o}/agents/{a}/policy` or of the agent's
/// own name `organizations/{o}/agents/{a}`.
pub fn parse_policy_name(name: &str) -> Result<(&str, &str)> {
    let agent = name.strip_suffix("/policy").unwrap_or(name);
    let (org, id) = names::parse_child(agent, "agents").map_err(|_| {
        Error::invalid(format!(
            "invalid policy name {:?}: expected organizations/{{organization}}/agents/{{agent}}/policy or organizations/{{organization}}/agents/{{agent}}",
            names::truncate(name)
        ))
    })?;
    names::validate_id("agent", id)?;
    Ok((org, id))
}

/// The org of `organizations/{o}/securitySettings` or `organizations/{o}`;
/// `None` for an empty name (the caller's).
pub fn parse_settings_name(name: &str) -> Result<Option<&str>> {
    if name.is_empty() {
        return Ok(None);
    }
    let org = name.strip_suffix("/securitySettings").unwrap_or(name);
    names::parse_org(org).map(Some).map_err(|_| {
        Error::invalid(format!(
            "invalid security settings name {:?}: expected organizations/{{organization}}/securitySettings",
            names::truncate(name)
        ))
    })
}

// ------------------------------------------------------------ amounts

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

// ------------------------------------------------------------ network modes

/// How wide a network mode is: none < allowlist < denylist < open.
fn width(mode: NetworkMode) -> u8 {
    match mode {
        NetworkMode::Unspecified | NetworkMode::None => 0,
        NetworkMode::Allowlist => 1,
        NetworkMode::Denylist => 2,
        NetworkMode::Open => 3,
    }
}

/// `none`, `allowlist`, `denylist`, `open`.
pub fn mode_name(mode: NetworkMode) -> &'static str {
    match mode {
        NetworkMode::Unspecified => "unspecified",
        NetworkMode::None => "none",
        NetworkMode::Allowlist => "allowlist",
        NetworkMode::Denylist => "denylist",
        NetworkMode::Open => "open",
    }
}

fn network_mode(field: &str, value: i32, unspecified: NetworkMode) -> Result<NetworkMode> {
    match NetworkMode::try_from(value) {
        Ok(NetworkMode::Unspecified) => Ok(unspecified),
        Ok(mode) => Ok(mode),
        Err(_) => Err(Error::invalid(format!(
            "{field} {value} is not a network mode: use NETWORK_MODE_NONE, _ALLOWLIST, _DENYLIST or _OPEN"
        ))),
    }
}

// ------------------------------------------------------------ rules

fn effect(field: &str, value: i32) -> Result<Effect> {
    match Effect::try_from(value) {
        Ok(e @ (Effect::Allow | Effect::Deny)) => Ok(e),
        _ => Err(Error::invalid(format!(
            "{field}.effect must be EFFECT_ALLOW or EFFECT_DENY"
        ))),
    }
}

/// A domain glob: DNS labels of `a-z0-9-`, where a label may be `*`
/// (e.g. `*.github.com`); `*` alone matches every domain. Lowercased.
fn domain_glob(field: &str, domain: &str) -> Result<String> {
    let d = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let bad = || {
        Error::invalid(format!(
            "{field} {:?} is not a domain glob: use labels of a-z, 0-9 and '-', with * for a whole label (e.g. *.github.com)",
            names::truncate(domain)
        ))
    };
    if d.is_empty() || d.len() > MAX_PATTERN {
        return Err(bad());
    }
    for label in d.split('.') {
        let ok = label == "*"
            || (!label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        if !ok {
            return Err(bad());
        }
    }
    Ok(d)
}

/// A CIDR such as `10.0.0.0/8` or `2001:db8::/32`, without host bits.
fn cidr(field: &str, text: &str) -> Result<String> {
    let bad = |why: &str| {
        Error::invalid(format!(
            "{field} {:?} is not a CIDR: {why}",
            names::truncate(text)
        ))
    };
    let (ip, prefix) = text
        .trim()
        .split_once('/')
        .ok_or_else(|| bad("expected ADDRESS/PREFIX, e.g. 10.0.0.0/8"))?;
    let ip: IpAddr = ip.parse().map_err(|_| bad("the address does not parse"))?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| bad("the prefix is not a number"))?;
    let net = IpNet::new(ip, prefix).map_err(|_| {
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        bad(&format!("the prefix is above {bits}"))
    })?;
    if net.trunc() != net {
        return Err(bad("host bits are set; give the network address"));
    }
    Ok(net.to_string())
}

fn network_rule(i: usize, r: &NetworkRule) -> Result<NetworkRule> {
    let field = format!("network_rules[{i}]");
    let effect = effect(&field, r.effect)?;
    let (domain, cidr) = match (r.domain.trim().is_empty(), r.cidr.trim().is_empty()) {
        (false, true) => (
            domain_glob(&format!("{field}.domain"), &r.domain)?,
            String::new(),
        ),
        (true, false) => (String::new(), cidr(&format!("{field}.cidr"), &r.cidr)?),
        _ => {
            return Err(Error::invalid(format!(
                "{field} must set exactly one of domain and cidr"
            )));
        }
    };
    if r.ports.len() > MAX_PORTS {
        return Err(Error::invalid(format!(
            "{field}.ports lists more than {MAX_PORTS} ports"
        )));
    }
    let mut ports: Vec<u32> = Vec::with_capacity(r.ports.len());
    for p in &r.ports {
        if !(1..=65_535).contains(p) {
            return Err(Error::invalid(format!(
                "{field}.ports: {p} is not a port (1-65535)"
            )));
        }
        if !ports.contains(p) {
            ports.push(*p);
        }
    }
    Ok(NetworkRule {
        effect: effect as i32,
        domain,
        cidr,
        ports,
    })
}

/// A tool glob over `server/tool`: both sides non-empty, of letters,
/// digits, `_`, `-`, `.` and `*`.
fn tool_rule(i: usize, r: &ToolRule) -> Result<ToolRule> {
    let field = format!("tool_rules[{i}]");
    let effect = effect(&field, r.effect)?;
    let pattern = r.pattern.trim();
    let part_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'*'))
    };
    let ok = pattern.len() <= MAX_PATTERN
        && pattern
            .split_once('/')
            .is_some_and(|(server, tool)| part_ok(server) && part_ok(tool));
    if !ok {
        return Err(Error::invalid(format!(
            "{field}.pattern {:?} is not a tool glob: use server/tool with letters, digits, _ - . and * (e.g. github/*)",
            names::truncate(&r.pattern)
        )));
    }
    Ok(ToolRule {
        effect: effect as i32,
        pattern: pattern.to_owned(),
    })
}

/// A credential: `{c}` or `organizations/{org}/credentials/{c}`, as the
/// full name.
fn credential(i: usize, org: &str, name: &str) -> Result<String> {
    let field = format!("credentials[{i}]");
    let id = if name.starts_with("organizations/") {
        let (o, id) = names::parse_child(name, "credentials").map_err(|_| {
            Error::invalid(format!(
                "{field} {:?} is not a credential name: use organizations/{{organization}}/credentials/{{credential}} or the credential id",
                names::truncate(name)
            ))
        })?;
        if o != org {
            return Err(Error::invalid(format!(
                "{field} {:?} is another organization's credential",
                names::truncate(name)
            )));
        }
        id
    } else {
        name
    };
    names::validate_id("credential", id).map_err(|e| Error::invalid(format!("{field}: {e}")))?;
    Ok(names::child_name(org, "credentials", id))
}

// ------------------------------------------------------------ masks

/// Leaf fields of an agent policy an update may set.
pub const POLICY_LEAVES: &[&str] = &[
    "max.cpus",
    "max.memory_bytes",
    "max.pids",
    "max.disk_bytes",
    "max.ttl",
    "defaults.cpus",
    "defaults.memory_bytes",
    "defaults.pids",
    "defaults.disk_bytes",
    "defaults.ttl",
    "max_sandboxes",
    "network_mode",
    "network_rules",
    "tool_rules",
    "credentials",
];

/// Leaf fields of security settings an update may set.
pub const SETTINGS_LEAVES: &[&str] = &[
    "max.cpus",
    "max.memory_bytes",
    "max.pids",
    "max.disk_bytes",
    "max.ttl",
    "max_sandboxes",
    "max_sandboxes_per_agent",
    "max_network_mode",
    "hardening.allowed_capabilities",
    "hardening.allow_new_privileges",
    "hardening.unconfined_seccomp",
    "hardening.writable_root_filesystem",
    "hardening.allow_root_user",
    "allowed_images",
];

/// The leaves an update mask names: every leaf for an empty mask, a
/// message path (`max`) for all of its leaves. An unknown path is
/// INVALID_ARGUMENT naming it.
pub fn mask_leaves(mask: &[String], leaves: &[&'static str]) -> Result<BTreeSet<&'static str>> {
    if mask.is_empty() {
        return Ok(leaves.iter().copied().collect());
    }
    let mut out = BTreeSet::new();
    for path in mask {
        let prefix = format!("{path}.");
        let matched: Vec<&'static str> = leaves
            .iter()
            .copied()
            .filter(|l| *l == path || l.starts_with(&prefix))
            .collect();
        if matched.is_empty() {
            let mut tops: Vec<&str> = leaves
                .iter()
                .map(|l| l.split('.').next().unwrap_or(l))
                .collect();
            tops.dedup();
            return Err(Error::invalid(format!(
                "update_mask path {:?} cannot be updated; use one of {} (or a field inside max, defaults or hardening, e.g. max.memory_bytes)",
                names::truncate(path),
                tops.join(", ")
            )));
        }
        out.extend(matched);
    }
    Ok(out)
}

fn limits_leaf(prefix: &str, leaf: &str) -> Option<Amount> {
    let field = leaf.strip_prefix(prefix)?.strip_prefix('.')?;
    Amount::ALL.into_iter().find(|a| a.field() == field)
}

/// `current` with the `leaves` of `input` copied over.
pub fn merge_policy(
    current: &AgentPolicy,
    input: &AgentPolicy,
    leaves: &BTreeSet<&str>,
) -> AgentPolicy {
    let mut out = current.clone();
    let input_max = input.max.unwrap_or_default();
    let input_defaults = input.defaults.unwrap_or_default();
    let mut max = out.max.take().unwrap_or_default();
    let mut defaults = out.defaults.take().unwrap_or_default();
    for leaf in leaves {
        if let Some(a) = limits_leaf("max", leaf) {
            a.copy(&mut max, &input_max);
        } else if let Some(a) = limits_leaf("defaults", leaf) {
            a.copy(&mut defaults, &input_defaults);
        } else {
            match *leaf {
                "max_sandboxes" => out.max_sandboxes = input.max_sandboxes,
                "network_mode" => out.network_mode = input.network_mode,
                "network_rules" => out.network_rules = input.network_rules.clone(),
                "tool_rules" => out.tool_rules = input.tool_rules.clone(),
                "credentials" => out.credentials = input.credentials.clone(),
                _ => {}
            }
        }
    }
    out.max = Some(max);
    out.defaults = Some(defaults);
    out
}

/// `current` with the `leaves` of `input` copied over.
pub fn merge_settings(
    current: &SecuritySettings,
    input: &SecuritySettings,
    leaves: &BTreeSet<&str>,
) -> SecuritySettings {
    let mut out = current.clone();
    let input_max = input.max.unwrap_or_default();
    let input_hardening = input.hardening.clone().unwrap_or_default();
    let mut max = out.max.take().unwrap_or_default();
    let mut hardening = out.hardening.take().unwrap_or_default();
    for leaf in leaves {
        if let Some(a) = limits_leaf("max", leaf) {
            a.copy(&mut max, &input_max);
            continue;
        }
        match *leaf {
            "max_sandboxes" => out.max_sandboxes = input.max_sandboxes,
            "max_sandboxes_per_agent" => {
                out.max_sandboxes_per_agent = input.max_sandboxes_per_agent
            }
            "max_network_mode" => out.max_network_mode = input.max_network_mode,
            "hardening.allowed_capabilities" => {
                hardening.allowed_capabilities = input_hardening.allowed_capabilities.clone()
            }
            "hardening.allow_new_privileges" => {
                hardening.allow_new_privileges = input_hardening.allow_new_privileges
            }
            "hardening.unconfined_seccomp" => {
                hardening.unconfined_seccomp = input_hardening.unconfined_seccomp
            }
            "hardening.writable_root_filesystem" => {
                hardening.writable_root_filesystem = input_hardening.writable_root_filesystem
            }
            "hardening.allow_root_user" => {
                hardening.allow_root_user = input_hardening.allow_root_user
            }
            "allowed_images" => out.allowed_images = input.allowed_images.clone(),
            _ => {}
        }
    }
    out.max = Some(max);
    out.hardening = Some(hardening);
    out
}

// ------------------------------------------------------------ validation

/// Checks a whole agent policy of `org` and returns it normalized (modes
/// resolved, globs lowercased where case does not matter, credentials as
/// full names). Defaults above the policy's own bounds are refused; bounds
/// of the organization are [`check_within`]'s job.
pub fn validate_policy(org: &str, p: &AgentPolicy) -> Result<AgentPolicy> {
    let max = validate_limits("max", &p.max.unwrap_or_default())?;
    let defaults = validate_limits("defaults", &p.defaults.unwrap_or_default())?;
    for a in Amount::ALL {
        let (m, d) = (a.get(&max), a.get(&defaults));
        if m != 0 && d > m {
            return Err(Error::invalid(format!(
                "defaults.{f} {} exceeds max.{f} {}",
                a.show(d),
                a.show(m),
                f = a.field()
            )));
        }
    }
    if !(0..=MAX_SANDBOXES).contains(&p.max_sandboxes) {
        return Err(Error::invalid(format!(
            "max_sandboxes must be between 0 (the organization's bound) and {MAX_SANDBOXES} (got {})",
            p.max_sandboxes
        )));
    }
    let mode = network_mode("network_mode", p.network_mode, NetworkMode::None)?;
    for (what, n) in [
        ("network_rules", p.network_rules.len()),
        ("tool_rules", p.tool_rules.len()),
    ] {
        if n > MAX_RULES {
            return Err(Error::invalid(format!(
                "{what} holds {n} rules; at most {MAX_RULES}"
            )));
        }
    }
    let network_rules = p
        .network_rules
        .iter()
        .enumerate()
        .map(|(i, r)| network_rule(i, r))
        .collect::<Result<Vec<_>>>()?;
    let tool_rules = p
        .tool_rules
        .iter()
        .enumerate()
        .map(|(i, r)| tool_rule(i, r))
        .collect::<Result<Vec<_>>>()?;
    if p.credentials.len() > MAX_CREDENTIALS {
        return Err(Error::invalid(format!(
            "credentials lists more than {MAX_CREDENTIALS} credentials"
        )));
    }
    let mut credentials: Vec<String> = Vec::with_capacity(p.credentials.len());
    for (i, c) in p.credentials.iter().enumerate() {
        let c = credential(i, org, c.trim())?;
        if !credentials.contains(&c) {
            credentials.push(c);
        }
    }
    Ok(AgentPolicy {
        name: p.name.clone(),
        max: Some(max),
        defaults: Some(defaults),
        max_sandboxes: p.max_sandboxes,
        network_mode: mode as i32,
        network_rules,
        tool_rules,
        credentials,
        update_time: p.update_time,
        updated_by: p.updated_by.clone(),
    })
}

/// Checks whole security settings and returns them normalized
/// (capabilities upper case without `CAP_`).
pub fn validate_settings(s: &SecuritySettings) -> Result<SecuritySettings> {
    let max = validate_limits("max", &s.max.unwrap_or_default())?;
    for (field, v) in [
        ("max_sandboxes", s.max_sandboxes),
        ("max_sandboxes_per_agent", s.max_sandboxes_per_agent),
    ] {
        if !(0..=MAX_SANDBOXES).contains(&v) {
            return Err(Error::invalid(format!(
                "{field} must be between 0 (the built-in bound) and {MAX_SANDBOXES} (got {v})"
            )));
        }
    }
    let mode = network_mode("max_network_mode", s.max_network_mode, NetworkMode::Open)?;
    let mut hardening = s.hardening.clone().unwrap_or_default();
    let mut caps: Vec<String> = Vec::new();
    for (i, cap) in hardening.allowed_capabilities.iter().enumerate() {
        let upper = cap.trim().to_ascii_uppercase();
        let name = upper.strip_prefix("CAP_").unwrap_or(&upper);
        if !CAPABILITIES.contains(&name) {
            return Err(Error::invalid(format!(
                "hardening.allowed_capabilities[{i}] {:?} is not a Linux capability (e.g. NET_BIND_SERVICE, SYS_PTRACE)",
                names::truncate(cap)
            )));
        }
        if !caps.iter().any(|c| c == name) {
            caps.push(name.to_owned());
        }
    }
    hardening.allowed_capabilities = caps;
    let allowed_images = validate_images(&s.allowed_images)?;
    let out = SecuritySettings {
        allowed_images,
        name: s.name.clone(),
        max: Some(max),
        max_sandboxes: s.max_sandboxes,
        max_sandboxes_per_agent: s.max_sandboxes_per_agent,
        max_network_mode: mode as i32,
        hardening: Some(hardening),
        update_time: s.update_time,
        updated_by: s.updated_by.clone(),
    };
    let filled = fill_settings(&out);
    if filled.max_sandboxes_per_agent > filled.max_sandboxes {
        return Err(Error::invalid(format!(
            "max_sandboxes_per_agent {} exceeds max_sandboxes {}",
            filled.max_sandboxes_per_agent, filled.max_sandboxes
        )));
    }
    Ok(out)
}

/// Most image patterns one organization may approve.
const MAX_IMAGES: usize = 256;

/// Checks approved image patterns: printable, no spaces, bounded;
/// duplicates dropped.
fn validate_images(images: &[String]) -> Result<Vec<String>> {
    if images.len() > MAX_IMAGES {
        return Err(Error::invalid(format!(
            "allowed_images has {} entries; at most {MAX_IMAGES}",
            images.len()
        )));
    }
    let mut out: Vec<String> = Vec::new();
    for (i, image) in images.iter().enumerate() {
        let image = image.trim();
        if image.is_empty() || image.len() > 255 || !image.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::invalid(format!(
                "allowed_images[{i}] {:?} is not an image reference or pattern (e.g. node:22, node:*, ghcr.io/acme/*)",
                names::truncate(image)
            )));
        }
        if !out.iter().any(|o| o == image) {
            out.push(image.to_owned());
        }
    }
    Ok(out)
}

/// Settings with every zero replaced by the built-in value: complete.
pub fn fill_settings(s: &SecuritySettings) -> SecuritySettings {
    let mut out = s.clone();
    let builtin = builtin_bounds();
    let mut max = s.max.unwrap_or_default();
    for a in Amount::ALL {
        if a.get(&max) <= 0 {
            a.set(&mut max, a.get(&builtin));
        }
    }
    out.max = Some(max);
    if out.max_sandboxes <= 0 {
        out.max_sandboxes = BOUND_MAX_SANDBOXES;
    }
    if out.max_sandboxes_per_agent <= 0 {
        out.max_sandboxes_per_agent = BOUND_MAX_SANDBOXES_PER_AGENT.min(out.max_sandboxes);
    }
    if matches!(
        NetworkMode::try_from(out.max_network_mode),
        Ok(NetworkMode::Unspecified) | Err(_)
    ) {
        out.max_network_mode = NetworkMode::Open as i32;
    }
    out.hardening = Some(out.hardening.unwrap_or_default());
    out
}

/// An organization's settings when it stored none.
pub fn default_settings(org: &str) -> SecuritySettings {
    fill_settings(&SecuritySettings {
        name: settings_name(org),
        hardening: Some(HardeningRelaxations::default()),
        ..Default::default()
    })
}

/// An agent's policy when none was stored: every amount zero (bounds are
/// the organization's, defaults the built-in ones), network `none`, no
/// tool, no credential.
pub fn default_policy(org: &str, agent: &str) -> AgentPolicy {
    AgentPolicy {
        name: policy_name(org, agent),
        max: Some(ResourceLimits::default()),
        defaults: Some(ResourceLimits::default()),
        network_mode: NetworkMode::None as i32,
        ..Default::default()
    }
}

fn exceeds(what: &str, value: &str, bound: &str, setting: &str) -> Error {
    Error::invalid(format!(
        "{what} {value} exceeds the organization's bound {bound} (securitySettings {setting})"
    ))
}

/// Refuses a (validated) policy whose `touched` fields go beyond the
/// organization's (filled) settings, naming the setting. Untouched fields
/// are not re-checked, so tightening the settings never locks an agent's
/// policy; the effective policy clamps them anyway.
pub fn check_within(p: &AgentPolicy, s: &SecuritySettings, touched: &BTreeSet<&str>) -> Result<()> {
    let bound = s.max.unwrap_or_default();
    let max = p.max.unwrap_or_default();
    let defaults = p.defaults.unwrap_or_default();
    for a in Amount::ALL {
        let b = a.get(&bound);
        let setting = format!("max.{}", a.field());
        for (prefix, limits) in [("max", &max), ("defaults", &defaults)] {
            let field = format!("{prefix}.{}", a.field());
            let v = a.get(limits);
            if touched.contains(field.as_str()) && v > b {
                return Err(exceeds(&field, &a.show(v), &a.show(b), &setting));
            }
        }
    }
    if touched.contains("max_sandboxes") && p.max_sandboxes > s.max_sandboxes_per_agent {
        return Err(exceeds(
            "max_sandboxes",
            &p.max_sandboxes.to_string(),
            &s.max_sandboxes_per_agent.to_string(),
            "max_sandboxes_per_agent",
        ));
    }
    let mode = NetworkMode::try_from(p.network_mode).unwrap_or(NetworkMode::None);
    let widest = NetworkMode::try_from(s.max_network_mode).unwrap_or(NetworkMode::None);
    if touched.contains("network_mode") && width(mode) > width(widest) {
        return Err(exceeds(
            "network_mode",
            mode_name(mode),
            mode_name(widest),
            "max_network_mode",
        ));
    }
    Ok(())
}

/// What a sandbox of this agent may have: every bound the smaller of the
/// policy's and the organization's (the organization's where the policy
/// names none), every default the policy's or the built-in one, never
/// above the bound; concurrent sandboxes likewise; a network mode wider
/// than the organization allows narrowed to its widest. `s` must be filled.
pub fn effective(p: &AgentPolicy, s: &SecuritySettings) -> AgentPolicy {
    let bound = s.max.unwrap_or_default();
    let own_max = p.max.unwrap_or_default();
    let own_defaults = p.defaults.unwrap_or_default();
    let builtin = builtin_defaults();
    let mut max = ResourceLimits::default();
    let mut defaults = ResourceLimits::default();
    for a in Amount::ALL {
        let b = a.get(&bound);
        let m = match a.get(&own_max) {
            v if v > 0 => v.min(b),
            _ => b,
        };
        a.set(&mut max, m);
        let d = match a.get(&own_defaults) {
            v if v > 0 => v,
            _ => a.get(&builtin),
        };
        a.set(&mut defaults, d.min(m));
    }
    let per_agent = s.max_sandboxes_per_agent.min(s.max_sandboxes);
    let max_sandboxes = match p.max_sandboxes {
        v if v > 0 => v.min(per_agent),
        _ => per_agent,
    };
    let mode = match NetworkMode::try_from(p.network_mode) {
        Ok(NetworkMode::Unspecified) | Err(_) => NetworkMode::None,
        Ok(m) => m,
    };
    let widest = NetworkMode::try_from(s.max_network_mode).unwrap_or(NetworkMode::None);
    let mode = if width(mode) > width(widest) {
        widest
    } else {
        mode
    };
    AgentPolicy {
        max: Some(max),
        defaults: Some(defaults),
        max_sandboxes,
        network_mode: mode as i32,
        ..p.clone()
    }
}

#[cfg(test)]
mod tests;
