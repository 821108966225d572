//! Whole agent policies and security settings checked and normalized, and
//! the Linux capabilities an organization may let sandboxes keep.

use paddock_proto::authz::v1::{AgentPolicy, NetworkMode, SecuritySettings};
use paddock_shared::error::{Error, Result};
use paddock_shared::names;

use crate::effective::fill_settings;
use crate::limits::{Amount, MAX_CREDENTIALS, MAX_RULES, MAX_SANDBOXES, validate_limits};
use crate::network;
use crate::rules::{credential, network_rule, tool_rule};

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
    let mode = network::parse("network_mode", p.network_mode, NetworkMode::None)?;
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
    let mode = network::parse("max_network_mode", s.max_network_mode, NetworkMode::Open)?;
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
