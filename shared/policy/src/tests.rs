//! Unit tests of validation, masks, bounds and the effective policy.

use std::collections::BTreeSet;

use paddock_proto::authz::v1::{
    AgentPolicy, Effect, HardeningRelaxations, NetworkMode, NetworkRule, ResourceLimits,
    SecuritySettings, ToolRule,
};

use super::*;
use crate::limits::GIB;

fn gib(n: i64) -> i64 {
    n * GIB
}

fn leaves(paths: &[&str], all: &[&'static str]) -> BTreeSet<&'static str> {
    let paths: Vec<String> = paths.iter().map(|p| (*p).to_owned()).collect();
    mask_leaves(&paths, all).expect("mask")
}

fn message(r: Result<impl std::fmt::Debug>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(Error::InvalidArgument(m)) => m,
        Err(other) => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

fn ttl(secs: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: secs,
        nanos: 0,
    })
}

#[test]
fn names_parse_in_both_forms() {
    assert_eq!(
        parse_policy_name("organizations/acme/agents/bot/policy").unwrap(),
        ("acme", "bot")
    );
    assert_eq!(
        parse_policy_name("organizations/acme/agents/bot").unwrap(),
        ("acme", "bot")
    );
    assert!(parse_policy_name("organizations/acme/projects/bot/policy").is_err());
    assert!(parse_policy_name("bot").is_err());
    assert!(parse_policy_name("organizations/acme/agents/Bot").is_err());
    assert_eq!(
        parse_settings_name("organizations/acme/securitySettings").unwrap(),
        Some("acme")
    );
    assert_eq!(
        parse_settings_name("organizations/acme").unwrap(),
        Some("acme")
    );
    assert_eq!(parse_settings_name("").unwrap(), None);
    assert!(parse_settings_name("organizations/acme/other").is_err());
}

#[test]
fn amounts_are_validated_and_named() {
    let bad = |l: ResourceLimits| message(validate_limits("max", &l));
    assert!(
        bad(ResourceLimits {
            memory_bytes: -1,
            ..Default::default()
        })
        .contains("max.memory_bytes must not be negative")
    );
    assert!(
        bad(ResourceLimits {
            cpus: f64::NAN,
            ..Default::default()
        })
        .contains("max.cpus")
    );
    assert!(
        bad(ResourceLimits {
            cpus: -0.5,
            ..Default::default()
        })
        .contains("max.cpus")
    );
    assert!(
        bad(ResourceLimits {
            ttl: ttl(-5),
            ..Default::default()
        })
        .contains("max.ttl")
    );
    assert!(
        bad(ResourceLimits {
            ttl: ttl(400 * 86_400),
            ..Default::default()
        })
        .contains("max.ttl")
    );
    let ok = validate_limits(
        "max",
        &ResourceLimits {
            cpus: 0.5,
            ttl: ttl(0),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(ok.cpus, 0.5);
    assert_eq!(ok.ttl, None, "a zero TTL means unset");
    assert_eq!(Amount::Cpus.show(500), "0.5");
    assert_eq!(Amount::Cpus.show(4000), "4");
    assert_eq!(Amount::Ttl.show(3_600_000), "3600s");
}

#[test]
fn masks_name_leaves_and_refuse_unknown_paths() {
    let all = leaves(&[], POLICY_LEAVES);
    assert_eq!(all.len(), POLICY_LEAVES.len(), "empty mask replaces all");
    let max = leaves(&["max"], POLICY_LEAVES);
    assert_eq!(max.len(), 5);
    assert!(max.iter().all(|l| l.starts_with("max.")));
    assert!(
        !max.contains("max_sandboxes"),
        "max is not a prefix of max_sandboxes"
    );
    let one = leaves(&["defaults.memory_bytes"], POLICY_LEAVES);
    assert_eq!(
        one.into_iter().collect::<Vec<_>>(),
        vec!["defaults.memory_bytes"]
    );
    let err = message(mask_leaves(&["max.gpus".to_owned()], POLICY_LEAVES));
    assert!(err.contains("\"max.gpus\""), "{err}");
    let err = message(mask_leaves(&["name".to_owned()], POLICY_LEAVES));
    assert!(err.contains("\"name\""), "{err}");
    assert!(mask_leaves(&["hardening".to_owned()], SETTINGS_LEAVES).is_ok());
    assert!(mask_leaves(&["hardening".to_owned()], POLICY_LEAVES).is_err());
}

#[test]
fn a_mask_merges_only_what_it_names() {
    let current = AgentPolicy {
        max: Some(ResourceLimits {
            memory_bytes: gib(2),
            pids: 100,
            ..Default::default()
        }),
        network_mode: NetworkMode::Allowlist as i32,
        credentials: vec!["organizations/acme/credentials/gh".into()],
        ..Default::default()
    };
    let input = AgentPolicy {
        max: Some(ResourceLimits {
            memory_bytes: gib(1),
            pids: 5,
            ..Default::default()
        }),
        network_mode: NetworkMode::Open as i32,
        ..Default::default()
    };
    let merged = merge_policy(
        &current,
        &input,
        &leaves(&["max.memory_bytes"], POLICY_LEAVES),
    );
    let max = merged.max.unwrap();
    assert_eq!((max.memory_bytes, max.pids), (gib(1), 100));
    assert_eq!(merged.network_mode, NetworkMode::Allowlist as i32);
    assert_eq!(merged.credentials.len(), 1);
    let replaced = merge_policy(&current, &input, &leaves(&[], POLICY_LEAVES));
    assert_eq!(replaced.max.unwrap().pids, 5);
    assert!(replaced.credentials.is_empty());
}

#[test]
fn policies_are_validated_with_the_field_named() {
    let base = || AgentPolicy {
        max: Some(ResourceLimits::default()),
        defaults: Some(ResourceLimits::default()),
        ..Default::default()
    };
    let check = |p: AgentPolicy| message(validate_policy("acme", &p));

    let mut p = base();
    p.max = Some(ResourceLimits {
        memory_bytes: gib(1),
        ..Default::default()
    });
    p.defaults = Some(ResourceLimits {
        memory_bytes: gib(2),
        ..Default::default()
    });
    assert_eq!(
        check(p),
        "defaults.memory_bytes 2 GiB exceeds max.memory_bytes 1 GiB"
    );

    let mut p = base();
    p.max_sandboxes = -1;
    assert!(check(p).contains("max_sandboxes"));

    let mut p = base();
    p.network_mode = 42;
    assert!(check(p).contains("network_mode 42"));

    let mut p = base();
    p.tool_rules = vec![ToolRule {
        effect: Effect::Allow as i32,
        pattern: "no-slash".into(),
    }];
    assert!(check(p).contains("tool_rules[0].pattern"));

    let mut p = base();
    p.tool_rules = vec![ToolRule {
        effect: Effect::Unspecified as i32,
        pattern: "github/*".into(),
    }];
    assert!(check(p).contains("tool_rules[0].effect"));

    for (domain, cidr, field) in [
        ("exa mple.com", "", "network_rules[0].domain"),
        ("git*hub.com", "", "network_rules[0].domain"),
        ("", "10.0.0.1/8", "network_rules[0].cidr"),
        ("", "10.0.0.0/33", "network_rules[0].cidr"),
        ("", "10.0.0.0", "network_rules[0].cidr"),
        ("", "2001:db8::1/32", "network_rules[0].cidr"),
        ("a.com", "10.0.0.0/8", "network_rules[0]"),
        ("", "", "network_rules[0]"),
    ] {
        let mut p = base();
        p.network_rules = vec![NetworkRule {
            effect: Effect::Allow as i32,
            domain: domain.into(),
            cidr: cidr.into(),
            ports: vec![],
        }];
        let m = check(p);
        assert!(m.starts_with(field), "{domain:?} {cidr:?}: {m}");
    }

    let mut p = base();
    p.network_rules = vec![NetworkRule {
        effect: Effect::Deny as i32,
        cidr: "10.0.0.0/8".into(),
        ports: vec![0],
        ..Default::default()
    }];
    assert!(check(p).contains("network_rules[0].ports"));

    let mut p = base();
    p.credentials = vec!["organizations/globex/credentials/gh".into()];
    assert!(check(p).contains("credentials[0]"));
    let mut p = base();
    p.credentials = vec!["Bad Name".into()];
    assert!(check(p).contains("credentials[0]"));
}

#[test]
fn valid_policies_come_back_normalized() {
    let p = AgentPolicy {
        network_mode: NetworkMode::Unspecified as i32,
        network_rules: vec![
            NetworkRule {
                effect: Effect::Allow as i32,
                domain: "*.GitHub.com.".into(),
                ports: vec![443, 443],
                ..Default::default()
            },
            NetworkRule {
                effect: Effect::Deny as i32,
                cidr: "2001:db8::/32".into(),
                ..Default::default()
            },
            NetworkRule {
                effect: Effect::Allow as i32,
                cidr: "0.0.0.0/0".into(),
                ..Default::default()
            },
        ],
        tool_rules: vec![ToolRule {
            effect: Effect::Allow as i32,
            pattern: "github/create_*".into(),
        }],
        credentials: vec![
            "gh".into(),
            "organizations/acme/credentials/gh".into(),
            "npm".into(),
        ],
        ..Default::default()
    };
    let v = validate_policy("acme", &p).expect("valid");
    assert_eq!(
        v.network_mode,
        NetworkMode::None as i32,
        "unspecified is none"
    );
    assert_eq!(v.network_rules[0].domain, "*.github.com");
    assert_eq!(v.network_rules[0].ports, vec![443]);
    assert_eq!(
        v.credentials,
        vec![
            "organizations/acme/credentials/gh".to_owned(),
            "organizations/acme/credentials/npm".to_owned()
        ]
    );
}

#[test]
fn settings_are_validated_and_filled() {
    let s = SecuritySettings {
        max_sandboxes: 3,
        hardening: Some(HardeningRelaxations {
            allowed_capabilities: vec!["cap_net_bind_service".into(), "NET_BIND_SERVICE".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let v = validate_settings(&s).expect("valid");
    assert_eq!(
        v.hardening.clone().unwrap().allowed_capabilities,
        vec!["NET_BIND_SERVICE".to_owned()]
    );
    let filled = fill_settings(&v);
    assert_eq!(
        filled.max_sandboxes_per_agent, 3,
        "the built-in 5 is capped at 3"
    );
    assert_eq!(filled.max.unwrap(), builtin_bounds());
    assert_eq!(filled.max_network_mode, NetworkMode::Open as i32);

    let bad = |s: SecuritySettings| message(validate_settings(&s));
    assert!(
        bad(SecuritySettings {
            hardening: Some(HardeningRelaxations {
                allowed_capabilities: vec!["ALL".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .contains("hardening.allowed_capabilities[0]")
    );
    assert_eq!(
        bad(SecuritySettings {
            max_sandboxes: 10,
            max_sandboxes_per_agent: 30,
            ..Default::default()
        }),
        "max_sandboxes_per_agent 30 exceeds max_sandboxes 10"
    );
    assert!(
        bad(SecuritySettings {
            max_sandboxes: -2,
            ..Default::default()
        })
        .contains("max_sandboxes")
    );
    assert!(
        bad(SecuritySettings {
            max_network_mode: 9,
            ..Default::default()
        })
        .contains("max_network_mode")
    );
}

fn settings(memory: i64, per_agent: i32, mode: NetworkMode) -> SecuritySettings {
    fill_settings(&SecuritySettings {
        max: Some(ResourceLimits {
            memory_bytes: memory,
            ..Default::default()
        }),
        max_sandboxes_per_agent: per_agent,
        max_network_mode: mode as i32,
        ..Default::default()
    })
}

#[test]
fn a_policy_above_the_bounds_is_refused_naming_the_setting() {
    let s = settings(gib(4), 5, NetworkMode::Allowlist);
    let p = AgentPolicy {
        max: Some(ResourceLimits {
            memory_bytes: gib(8),
            ..Default::default()
        }),
        ..Default::default()
    };
    let all = leaves(&[], POLICY_LEAVES);
    assert_eq!(
        message(check_within(&p, &s, &all)),
        "max.memory_bytes 8 GiB exceeds the organization's bound 4 GiB (securitySettings max.memory_bytes)"
    );
    // Untouched fields are not re-checked: the effective policy clamps them.
    assert!(check_within(&p, &s, &leaves(&["network_mode"], POLICY_LEAVES)).is_ok());

    let p = AgentPolicy {
        defaults: Some(ResourceLimits {
            memory_bytes: gib(5),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert!(message(check_within(&p, &s, &all)).starts_with("defaults.memory_bytes"));

    let p = AgentPolicy {
        max_sandboxes: 6,
        ..Default::default()
    };
    assert_eq!(
        message(check_within(&p, &s, &all)),
        "max_sandboxes 6 exceeds the organization's bound 5 (securitySettings max_sandboxes_per_agent)"
    );

    let p = AgentPolicy {
        network_mode: NetworkMode::Open as i32,
        ..Default::default()
    };
    assert_eq!(
        message(check_within(&p, &s, &all)),
        "network_mode open exceeds the organization's bound allowlist (securitySettings max_network_mode)"
    );
    let p = AgentPolicy {
        network_mode: NetworkMode::Allowlist as i32,
        ..Default::default()
    };
    assert!(check_within(&p, &s, &all).is_ok());
}

#[test]
fn the_effective_policy_is_clamped_and_complete() {
    let s = settings(gib(2), 3, NetworkMode::Allowlist);
    // Nothing stored: the org's bounds and the built-in defaults.
    let e = effective(&default_policy("acme", "bot"), &s);
    let max = e.max.unwrap();
    let defaults = e.defaults.unwrap();
    for a in Amount::ALL {
        assert!(a.get(&max) > 0, "max.{} is filled", a.field());
        assert!(a.get(&defaults) > 0, "defaults.{} is filled", a.field());
        assert!(a.get(&defaults) <= a.get(&max));
    }
    assert_eq!(max.memory_bytes, gib(2));
    assert_eq!(max.cpus, BOUND_CPUS);
    assert_eq!(defaults.memory_bytes, DEFAULT_MEMORY_BYTES);
    assert_eq!(e.max_sandboxes, 3);
    assert_eq!(e.network_mode, NetworkMode::None as i32);

    // A policy wider than settings tightened since: clamped.
    let p = AgentPolicy {
        max: Some(ResourceLimits {
            memory_bytes: gib(8),
            pids: 64,
            ..Default::default()
        }),
        defaults: Some(ResourceLimits {
            memory_bytes: gib(3),
            pids: 128,
            ..Default::default()
        }),
        max_sandboxes: 10,
        network_mode: NetworkMode::Open as i32,
        ..Default::default()
    };
    let e = effective(&p, &s);
    let max = e.max.unwrap();
    let defaults = e.defaults.unwrap();
    assert_eq!(max.memory_bytes, gib(2));
    assert_eq!(max.pids, 64, "the policy's own tighter bound stays");
    assert_eq!(defaults.memory_bytes, gib(2), "defaults never above max");
    assert_eq!(defaults.pids, 64);
    assert_eq!(e.max_sandboxes, 3);
    assert_eq!(e.network_mode, NetworkMode::Allowlist as i32);

    // The per-agent bound never exceeds the organization's total.
    let mut tight = s.clone();
    tight.max_sandboxes = 2;
    assert_eq!(effective(&p, &tight).max_sandboxes, 2);
}

#[test]
fn defaults_are_sane() {
    let s = default_settings("acme");
    assert_eq!(s.name, "organizations/acme/securitySettings");
    assert_eq!(s.max_sandboxes, 20);
    assert_eq!(s.max_sandboxes_per_agent, 5);
    let p = default_policy("acme", "bot");
    assert_eq!(p.name, "organizations/acme/agents/bot/policy");
    assert!(validate_policy("acme", &p).is_ok());
    assert!(check_within(&p, &s, &leaves(&[], POLICY_LEAVES)).is_ok());
    assert!(validate_settings(&s).is_ok());
}
