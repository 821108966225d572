//! The policy model: agent policies and organization security settings as
//! values. The built-in bounds and defaults, validation, update masks, the
//! check of a policy against its organization's bounds, the effective
//! policy (the agent's policy clamped by the settings, every zero filled),
//! network modes and the JSON shape of it all. No I/O: authz stores and
//! serves these values, the runner resolves sandboxes against them, the CLI
//! shows them.
#![forbid(unsafe_code)]
// Outside tests a failure is an answer, never a panic.

mod effective;
pub mod json;
mod limits;
mod mask;
pub mod network;
mod rules;
mod validate;

use paddock_shared::error::{Error, Result};
use paddock_shared::names;

pub use effective::{check_within, default_policy, default_settings, effective, fill_settings};
pub use limits::{
    Amount, BOUND_CPUS, BOUND_DISK_BYTES, BOUND_MAX_SANDBOXES, BOUND_MAX_SANDBOXES_PER_AGENT,
    BOUND_MEMORY_BYTES, BOUND_PIDS, BOUND_TTL, DEFAULT_CPUS, DEFAULT_DISK_BYTES,
    DEFAULT_MEMORY_BYTES, DEFAULT_PIDS, DEFAULT_TTL, builtin_bounds, builtin_defaults,
    validate_limits,
};
pub use mask::{POLICY_LEAVES, SETTINGS_LEAVES, mask_leaves, merge_policy, merge_settings};
pub use validate::{CAPABILITIES, validate_policy, validate_settings};

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

#[cfg(test)]
mod tests;
