//! Complete settings (every zero filled), the policy and settings of an
//! agent or organization that stored none, the check of a policy against
//! its organization's bounds, and the effective policy.

use std::collections::BTreeSet;

use paddock_proto::authz::v1::{
    AgentPolicy, HardeningRelaxations, NetworkMode, ResourceLimits, SecuritySettings,
};
use paddock_shared::error::{Error, Result};

use crate::limits::{
    Amount, BOUND_MAX_SANDBOXES, BOUND_MAX_SANDBOXES_PER_AGENT, builtin_bounds, builtin_defaults,
};
use crate::network;
use crate::{policy_name, settings_name};

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
    out.max_network_mode = network::org_bound(out.max_network_mode) as i32;
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
    let mode = network::of(p.network_mode);
    let widest = network::of(s.max_network_mode);
    if touched.contains("network_mode") && network::width(mode) > network::width(widest) {
        return Err(exceeds(
            "network_mode",
            network::name(mode),
            network::name(widest),
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
    let mode = network::narrow(network::of(p.network_mode), network::of(s.max_network_mode));
    AgentPolicy {
        max: Some(max),
        defaults: Some(defaults),
        max_sandboxes,
        network_mode: mode as i32,
        ..p.clone()
    }
}
