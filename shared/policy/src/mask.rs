//! Update masks: the leaves an update may set, and merging an update's
//! leaves over the stored policy or settings.

use std::collections::BTreeSet;

use paddock_proto::authz::v1::{AgentPolicy, SecuritySettings};
use paddock_shared::error::{Error, Result};
use paddock_shared::names;

use crate::limits::Amount;

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
