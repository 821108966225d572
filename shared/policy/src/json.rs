//! The JSON shape of agent policies and security settings (field names as
//! in the proto and in update masks, TTLs as `"3600s"`, modes and effects
//! as lowercase words), and leaf-by-leaf diffs of them. Audit details and
//! the CLI's `-o json` both use it.

use paddock_proto::authz::v1::{
    AgentPolicy, Effect, NetworkMode, NetworkRule, ResourceLimits, SecuritySettings, ToolRule,
};
use serde_json::{Map, Value, json};

use crate::Amount;
use crate::network;

pub fn limits(l: Option<&ResourceLimits>) -> Value {
    let l = l.cloned().unwrap_or_default();
    let mut out = Map::new();
    for a in Amount::ALL {
        let v = a.get(&l);
        let value = match a {
            Amount::Cpus => json!(l.cpus),
            Amount::Ttl => json!(a.show(v)),
            _ => json!(v),
        };
        out.insert(a.field().to_owned(), value);
    }
    Value::Object(out)
}

fn network_mode(value: i32) -> Value {
    json!(network::name(
        NetworkMode::try_from(value).unwrap_or(NetworkMode::Unspecified)
    ))
}

fn effect(value: i32) -> &'static str {
    match Effect::try_from(value) {
        Ok(Effect::Allow) => "allow",
        Ok(Effect::Deny) => "deny",
        _ => "unspecified",
    }
}

pub fn network_rule(r: &NetworkRule) -> Value {
    let mut out = Map::new();
    out.insert("effect".into(), json!(effect(r.effect)));
    if !r.domain.is_empty() {
        out.insert("domain".into(), json!(r.domain));
    }
    if !r.cidr.is_empty() {
        out.insert("cidr".into(), json!(r.cidr));
    }
    out.insert("ports".into(), json!(r.ports));
    Value::Object(out)
}

pub fn tool_rule(r: &ToolRule) -> Value {
    json!({"effect": effect(r.effect), "pattern": r.pattern})
}

fn time(ts: Option<&prost_types::Timestamp>) -> Value {
    ts.map_or(Value::Null, |t| {
        json!(paddock_shared::time::timestamp_micros(t) / 1_000_000)
    })
}

/// An agent policy. `update_time` is unix seconds.
pub fn agent_policy(p: &AgentPolicy) -> Value {
    json!({
        "name": p.name,
        "max": limits(p.max.as_ref()),
        "defaults": limits(p.defaults.as_ref()),
        "max_sandboxes": p.max_sandboxes,
        "network_mode": network_mode(p.network_mode),
        "network_rules": p.network_rules.iter().map(network_rule).collect::<Vec<_>>(),
        "tool_rules": p.tool_rules.iter().map(tool_rule).collect::<Vec<_>>(),
        "credentials": p.credentials,
        "update_time": time(p.update_time.as_ref()),
        "updated_by": p.updated_by,
    })
}

/// Security settings. `update_time` is unix seconds.
pub fn security_settings(s: &SecuritySettings) -> Value {
    let h = s.hardening.clone().unwrap_or_default();
    json!({
        "name": s.name,
        "max": limits(s.max.as_ref()),
        "max_sandboxes": s.max_sandboxes,
        "max_sandboxes_per_agent": s.max_sandboxes_per_agent,
        "max_network_mode": network_mode(s.max_network_mode),
        "hardening": {
            "allowed_capabilities": h.allowed_capabilities,
            "allow_new_privileges": h.allow_new_privileges,
            "unconfined_seccomp": h.unconfined_seccomp,
            "writable_root_filesystem": h.writable_root_filesystem,
            "allow_root_user": h.allow_root_user,
        },
        "allowed_images": s.allowed_images,
        "update_time": time(s.update_time.as_ref()),
        "updated_by": s.updated_by,
    })
}

/// The leaves (dotted paths; arrays are leaves) whose values differ, as
/// `{"path": {"from": old, "to": new}}`. Output-only fields are skipped.
pub fn diff(old: &Value, new: &Value) -> Value {
    let mut out = Map::new();
    walk("", old, new, &mut out);
    Value::Object(out)
}

fn walk(path: &str, old: &Value, new: &Value, out: &mut Map<String, Value>) {
    if let (Value::Object(a), Value::Object(b)) = (old, new) {
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            if path.is_empty() && matches!(k.as_str(), "name" | "update_time" | "updated_by") {
                continue;
            }
            let child = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            walk(
                &child,
                a.get(k).unwrap_or(&Value::Null),
                b.get(k).unwrap_or(&Value::Null),
                out,
            );
        }
    } else if old != new {
        out.insert(path.to_owned(), json!({"from": old, "to": new}));
    }
}
