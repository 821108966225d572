//! PolicyService through real servers on port 0, on SQLite and PostgreSQL:
//! defaults, updates with and without masks, validation, bounds from the
//! security settings, the effective policy, organization isolation, roles,
//! concurrent updates, and the audit trail of changes and refusals.

use std::time::{Duration, Instant};

use paddock_proto::audit::v1::{AuditEvent, Outcome, QueryEventsRequest, VerifyChainRequest};
use paddock_proto::authz::v1::*;
use paddock_proto::identity::v1::RevokeApiKeyRequest;
use paddock_testkit::fixtures::{Org, code, mint_key, setup_org};
use paddock_testkit::{Backend, Stack, backend_tests};
use tonic::{Code, Status};

const GIB: i64 = 1 << 30;
const MIB: i64 = 1 << 20;
const BOT: &str = "organizations/acme/agents/bot/policy";

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

fn limits(memory: i64) -> Option<ResourceLimits> {
    Some(ResourceLimits {
        memory_bytes: memory,
        ..Default::default()
    })
}

async fn get_policy(stack: &Stack, token: &str, name: &str) -> Result<AgentPolicy, Status> {
    stack
        .policy(token)
        .get_agent_policy(GetAgentPolicyRequest { name: name.into() })
        .await
        .map(|r| r.into_inner().policy.expect("policy"))
}

async fn update_policy(
    stack: &Stack,
    token: &str,
    policy: AgentPolicy,
    paths: &[&str],
) -> Result<AgentPolicy, Status> {
    stack
        .policy(token)
        .update_agent_policy(UpdateAgentPolicyRequest {
            policy: Some(policy),
            update_mask: mask(paths),
        })
        .await
        .map(|r| r.into_inner().policy.expect("policy"))
}

async fn update_settings(
    stack: &Stack,
    token: &str,
    settings: SecuritySettings,
    paths: &[&str],
) -> Result<SecuritySettings, Status> {
    stack
        .policy(token)
        .update_security_settings(UpdateSecuritySettingsRequest {
            settings: Some(settings),
            update_mask: mask(paths),
        })
        .await
        .map(|r| r.into_inner().settings.expect("settings"))
}

async fn effective(stack: &Stack, agent: &str) -> Result<GetEffectivePolicyResponse, Status> {
    stack
        .policy(stack.service_token.expose())
        .get_effective_policy(GetEffectivePolicyRequest {
            agent: agent.into(),
        })
        .await
        .map(|r| r.into_inner())
}

#[track_caller]
fn invalid(r: Result<impl std::fmt::Debug, Status>) -> String {
    match r {
        Err(s) if s.code() == Code::InvalidArgument => s.message().to_owned(),
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

async fn policies_have_defaults_and_update_by_mask(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;

    // Nothing stored: the default policy, by either name.
    let p = get_policy(&stack, &acme.admin, BOT).await.expect("get");
    assert_eq!(p.name, BOT);
    assert_eq!(p.network_mode(), NetworkMode::None);
    assert_eq!(
        p.max,
        Some(ResourceLimits::default()),
        "bounds follow the org"
    );
    assert_eq!(
        p.defaults,
        Some(ResourceLimits::default()),
        "defaults follow the built-in ones"
    );
    // ... which the effective policy spells out.
    let eff = effective(&stack, "organizations/acme/agents/bot")
        .await
        .expect("effective")
        .policy
        .expect("policy");
    let defaults = eff.defaults.expect("defaults");
    assert_eq!(defaults.memory_bytes, 512 * MIB);
    assert_eq!(defaults.cpus, 1.0);
    assert_eq!(defaults.pids, 256);
    assert_eq!(defaults.disk_bytes, 2 * GIB);
    assert_eq!(defaults.ttl.map(|d| d.seconds), Some(3600));
    assert!(p.tool_rules.is_empty() && p.credentials.is_empty());
    assert_eq!(p.updated_by, "");
    let same = get_policy(&stack, &acme.developer, "organizations/acme/agents/bot")
        .await
        .expect("get by the agent's name");
    assert_eq!(same.name, BOT);

    // Replace (empty mask).
    let replaced = update_policy(
        &stack,
        &acme.admin,
        AgentPolicy {
            name: BOT.into(),
            max: Some(ResourceLimits {
                cpus: 2.0,
                memory_bytes: 2 * GIB,
                ..Default::default()
            }),
            network_mode: NetworkMode::Allowlist as i32,
            network_rules: vec![NetworkRule {
                effect: Effect::Allow as i32,
                domain: "*.github.com".into(),
                cidr: String::new(),
                ports: vec![443],
            }],
            tool_rules: vec![ToolRule {
                effect: Effect::Allow as i32,
                pattern: "github/*".into(),
            }],
            credentials: vec!["gh-token".into()],
            ..Default::default()
        },
        &[],
    )
    .await
    .expect("replace");
    assert_eq!(replaced.network_mode(), NetworkMode::Allowlist);
    assert_eq!(
        replaced.credentials,
        vec!["organizations/acme/credentials/gh-token".to_owned()]
    );
    assert!(
        replaced
            .updated_by
            .starts_with("organizations/acme/members/")
    );
    assert!(replaced.update_time.is_some());
    assert_eq!(
        replaced.defaults,
        Some(ResourceLimits::default()),
        "a replace without defaults leaves them to the built-in ones"
    );

    // A mask changes only what it names.
    let masked = update_policy(
        &stack,
        &acme.owner,
        AgentPolicy {
            name: BOT.into(),
            max: limits(GIB),
            network_mode: NetworkMode::Open as i32,
            ..Default::default()
        },
        &["max.memory_bytes"],
    )
    .await
    .expect("mask");
    let max = masked.max.expect("max");
    assert_eq!((max.memory_bytes, max.cpus), (GIB, 2.0));
    assert_eq!(masked.network_mode(), NetworkMode::Allowlist);
    assert_eq!(masked.tool_rules.len(), 1);
    let stored = get_policy(&stack, &acme.developer, BOT).await.expect("get");
    assert_eq!(stored, masked);

    // Validation names the field.
    let bad = |p: AgentPolicy, paths: &'static [&'static str]| {
        let stack = &stack;
        let token = acme.admin.clone();
        async move { invalid(update_policy(stack, &token, p, paths).await) }
    };
    let named = |f: fn(&mut AgentPolicy)| {
        let mut p = AgentPolicy {
            name: BOT.into(),
            ..Default::default()
        };
        f(&mut p);
        p
    };
    let m = bad(named(|p| p.max = limits(-1)), &["max"]).await;
    assert!(m.contains("max.memory_bytes"), "{m}");
    let m = bad(named(|_| {}), &["max.gpus"]).await;
    assert!(m.contains("max.gpus"), "{m}");
    let m = bad(
        named(|p| {
            p.tool_rules = vec![ToolRule {
                effect: Effect::Allow as i32,
                pattern: "no slash".into(),
            }]
        }),
        &["tool_rules"],
    )
    .await;
    assert!(m.contains("tool_rules[0].pattern"), "{m}");
    let m = bad(
        named(|p| {
            p.network_rules = vec![NetworkRule {
                effect: Effect::Deny as i32,
                cidr: "10.1.2.3/8".into(),
                ..Default::default()
            }]
        }),
        &["network_rules"],
    )
    .await;
    assert!(m.contains("network_rules[0].cidr"), "{m}");
    let m = bad(
        named(|p| {
            p.max = limits(GIB);
            p.defaults = limits(2 * GIB);
        }),
        &["max", "defaults"],
    )
    .await;
    assert_eq!(
        m,
        "defaults.memory_bytes 2 GiB exceeds max.memory_bytes 1 GiB"
    );
    let m = bad(named(|p| p.name = "bot".into()), &[]).await;
    assert!(m.contains("invalid policy name"), "{m}");
    assert_eq!(
        get_policy(&stack, &acme.admin, BOT).await.expect("get"),
        masked,
        "refused updates change nothing"
    );
    stack.shutdown().await;
}

async fn settings_bound_policies_and_the_effective_policy(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;

    // Defaults, by any of the three names.
    for name in [
        "",
        "organizations/acme",
        "organizations/acme/securitySettings",
    ] {
        let s = stack
            .policy(&acme.admin)
            .get_security_settings(GetSecuritySettingsRequest { name: name.into() })
            .await
            .expect("get settings")
            .into_inner()
            .settings
            .expect("settings");
        assert_eq!(s.name, "organizations/acme/securitySettings");
        let max = s.max.expect("max");
        assert_eq!(
            (max.cpus, max.memory_bytes, max.pids, max.disk_bytes),
            (4.0, 4 * GIB, 1024, 10 * GIB)
        );
        assert_eq!(max.ttl.map(|d| d.seconds), Some(86_400));
        assert_eq!((s.max_sandboxes, s.max_sandboxes_per_agent), (20, 5));
        assert_eq!(s.max_network_mode(), NetworkMode::Open);
    }

    let s = update_settings(
        &stack,
        &acme.owner,
        SecuritySettings {
            max: limits(2 * GIB),
            max_network_mode: NetworkMode::Allowlist as i32,
            max_sandboxes_per_agent: 3,
            hardening: Some(HardeningRelaxations {
                allowed_capabilities: vec!["net_bind_service".into()],
                ..Default::default()
            }),
            ..Default::default()
        },
        &[
            "max.memory_bytes",
            "max_network_mode",
            "max_sandboxes_per_agent",
            "hardening",
        ],
    )
    .await
    .expect("update settings");
    assert_eq!(
        s.max.as_ref().map(|m| (m.memory_bytes, m.pids)),
        Some((2 * GIB, 1024))
    );
    assert_eq!(
        s.hardening.as_ref().map(|h| h.allowed_capabilities.clone()),
        Some(vec!["NET_BIND_SERVICE".to_owned()])
    );
    let m = invalid(
        update_settings(
            &stack,
            &acme.owner,
            SecuritySettings {
                hardening: Some(HardeningRelaxations {
                    allowed_capabilities: vec!["SUPERPOWERS".into()],
                    ..Default::default()
                }),
                ..Default::default()
            },
            &["hardening.allowed_capabilities"],
        )
        .await,
    );
    assert!(m.contains("hardening.allowed_capabilities[0]"), "{m}");

    // A policy wider than the settings is refused, naming the setting.
    let wide = AgentPolicy {
        name: BOT.into(),
        max: limits(8 * GIB),
        ..Default::default()
    };
    assert_eq!(
        invalid(update_policy(&stack, &acme.admin, wide, &["max.memory_bytes"]).await),
        "max.memory_bytes 8 GiB exceeds the organization's bound 2 GiB (securitySettings max.memory_bytes)"
    );
    let open = AgentPolicy {
        name: BOT.into(),
        network_mode: NetworkMode::Open as i32,
        ..Default::default()
    };
    assert_eq!(
        invalid(update_policy(&stack, &acme.admin, open, &["network_mode"]).await),
        "network_mode open exceeds the organization's bound allowlist (securitySettings max_network_mode)"
    );
    let many = AgentPolicy {
        name: BOT.into(),
        max_sandboxes: 4,
        ..Default::default()
    };
    assert!(
        invalid(update_policy(&stack, &acme.admin, many, &["max_sandboxes"]).await)
            .contains("securitySettings max_sandboxes_per_agent")
    );
    update_policy(
        &stack,
        &acme.admin,
        AgentPolicy {
            name: BOT.into(),
            max: Some(ResourceLimits {
                memory_bytes: GIB,
                pids: 100,
                ..Default::default()
            }),
            defaults: limits(768 * MIB),
            network_mode: NetworkMode::Allowlist as i32,
            ..Default::default()
        },
        &["max", "defaults.memory_bytes", "network_mode"],
    )
    .await
    .expect("within bounds");

    // The owner tightens the settings below the policy: the policy stays,
    // the effective policy is clamped, and every amount is filled.
    update_settings(
        &stack,
        &acme.owner,
        SecuritySettings {
            max: limits(512 * MIB),
            max_network_mode: NetworkMode::None as i32,
            ..Default::default()
        },
        &["max.memory_bytes", "max_network_mode"],
    )
    .await
    .expect("tighten");
    let stored = get_policy(&stack, &acme.admin, BOT).await.expect("get");
    assert_eq!(stored.max.as_ref().map(|m| m.memory_bytes), Some(GIB));
    let eff = effective(&stack, "organizations/acme/agents/bot")
        .await
        .expect("effective");
    let p = eff.policy.expect("policy");
    let settings = eff.settings.expect("settings");
    let max = p.max.expect("max");
    let defaults = p.defaults.expect("defaults");
    assert_eq!(max.memory_bytes, 512 * MIB);
    assert_eq!(max.pids, 100, "the policy's own tighter bound");
    assert_eq!(max.cpus, 4.0, "the org's bound where the policy has none");
    assert_eq!(defaults.memory_bytes, 512 * MIB, "defaults never above max");
    for l in [&max, &defaults] {
        assert!(l.cpus > 0.0 && l.memory_bytes > 0 && l.pids > 0 && l.disk_bytes > 0);
        assert!(l.ttl.is_some_and(|d| d.seconds > 0));
    }
    assert_eq!(p.max_sandboxes, 3);
    assert_eq!(p.network_mode(), NetworkMode::None);
    assert_eq!(settings.max_sandboxes, 20);
    assert!(settings.hardening.is_some());
    assert_eq!(p.name, BOT);

    // An agent with nothing stored gets the defaults, clamped too.
    let other = effective(&stack, "organizations/acme/agents/other")
        .await
        .expect("effective")
        .policy
        .expect("policy");
    assert_eq!(other.max_sandboxes, 3);
    assert_eq!(other.defaults.map(|d| d.memory_bytes), Some(512 * MIB));
    stack.shutdown().await;
}

async fn other_organizations_are_not_found(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    let globex = setup_org(&stack, "globex").await;
    let theirs = "organizations/globex/agents/bot/policy";
    update_policy(
        &stack,
        &globex.owner,
        AgentPolicy {
            name: theirs.into(),
            max: limits(GIB),
            ..Default::default()
        },
        &["max.memory_bytes"],
    )
    .await
    .expect("their own");
    for token in [&acme.owner, &acme.admin] {
        assert_eq!(
            code(get_policy(&stack, token, theirs).await),
            Code::NotFound
        );
        let wide = AgentPolicy {
            name: theirs.into(),
            max: limits(2 * GIB),
            ..Default::default()
        };
        assert_eq!(
            code(update_policy(&stack, token, wide, &["max.memory_bytes"]).await),
            Code::NotFound
        );
        assert_eq!(
            code(
                stack
                    .policy(token)
                    .get_security_settings(GetSecuritySettingsRequest {
                        name: "organizations/globex".into()
                    })
                    .await
            ),
            Code::NotFound
        );
    }
    assert_eq!(
        code(
            update_settings(
                &stack,
                &acme.owner,
                SecuritySettings {
                    name: "organizations/globex/securitySettings".into(),
                    max_sandboxes: 1,
                    ..Default::default()
                },
                &["max_sandboxes"],
            )
            .await
        ),
        Code::NotFound
    );
    // Nothing leaked into or out of globex.
    let still = get_policy(&stack, &globex.owner, theirs)
        .await
        .expect("get");
    assert_eq!(still.max.map(|m| m.memory_bytes), Some(GIB));
    stack.shutdown().await;
}

async fn roles_decide_who_reads_and_changes(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    let policy = || AgentPolicy {
        name: BOT.into(),
        max: limits(GIB),
        ..Default::default()
    };
    let settings = || SecuritySettings {
        max_sandboxes: 10,
        ..Default::default()
    };
    let denied = |r: Result<_, Status>| match r {
        Err(s) if s.code() == Code::PermissionDenied => s.message().to_owned(),
        Err(s) => panic!("expected PERMISSION_DENIED, got {s:?}"),
        Ok(()) => panic!("expected PERMISSION_DENIED, got OK"),
    };
    let unit = |r: Result<AgentPolicy, Status>| r.map(|_| ());
    let unit_s = |r: Result<SecuritySettings, Status>| r.map(|_| ());

    // Developers read policies but cannot change them.
    get_policy(&stack, &acme.developer, BOT)
        .await
        .expect("read");
    let m = denied(unit(
        update_policy(&stack, &acme.developer, policy(), &[]).await,
    ));
    assert!(m.contains("agents.manage"), "{m}");
    update_policy(&stack, &acme.admin, policy(), &[])
        .await
        .expect("admins manage agents' policies");
    // Agents read neither policies nor security settings.
    assert_eq!(
        code(get_policy(&stack, &acme.agent, BOT).await),
        Code::PermissionDenied
    );
    let m = denied(
        stack
            .policy(&acme.agent)
            .get_security_settings(GetSecuritySettingsRequest::default())
            .await
            .map(|_| ()),
    );
    assert!(m.contains("security.read"), "{m}");
    assert_eq!(
        code(
            stack
                .policy(&acme.developer)
                .get_security_settings(GetSecuritySettingsRequest::default())
                .await
        ),
        Code::PermissionDenied
    );
    stack
        .policy(&acme.admin)
        .get_security_settings(GetSecuritySettingsRequest::default())
        .await
        .expect("admins read security");
    // Only owners manage security.
    for token in [&acme.admin, &acme.developer, &acme.agent] {
        let m = denied(unit_s(
            update_settings(&stack, token, settings(), &[]).await,
        ));
        assert!(m.contains("security.manage"), "{m}");
    }
    update_settings(&stack, &acme.owner, settings(), &[])
        .await
        .expect("owners manage security");
    // The effective policy is for services only.
    for token in [&acme.owner, &acme.admin, &acme.developer, &acme.agent] {
        assert_eq!(
            code(
                stack
                    .policy(token)
                    .get_effective_policy(GetEffectivePolicyRequest {
                        agent: "organizations/acme/agents/bot".into(),
                    })
                    .await
            ),
            Code::PermissionDenied
        );
    }
    effective(&stack, "organizations/acme/agents/bot")
        .await
        .expect("services read it");
    assert_eq!(
        code(effective(&stack, "bot").await),
        Code::InvalidArgument,
        "a bare id names no organization"
    );
    stack.shutdown().await;
}

/// Sets one field of a policy.
type SetField = fn(&mut AgentPolicy);

async fn concurrent_updates_of_different_fields_all_land(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    let mut tasks = Vec::new();
    let fields: [(&str, SetField); 8] = [
        ("max.cpus", |p| p.max.get_or_insert_default().cpus = 3.0),
        ("max.memory_bytes", |p| {
            p.max.get_or_insert_default().memory_bytes = 3 * GIB
        }),
        ("max.pids", |p| p.max.get_or_insert_default().pids = 300),
        ("max.disk_bytes", |p| {
            p.max.get_or_insert_default().disk_bytes = 3 * GIB
        }),
        ("defaults.pids", |p| {
            p.defaults.get_or_insert_default().pids = 30
        }),
        ("max_sandboxes", |p| p.max_sandboxes = 3),
        ("network_mode", |p| {
            p.network_mode = NetworkMode::Denylist as i32
        }),
        ("credentials", |p| p.credentials = vec!["npm".into()]),
    ];
    for (path, set) in fields {
        let client = stack.policy(&acme.admin);
        tasks.push(tokio::spawn(async move {
            let mut p = AgentPolicy {
                name: BOT.into(),
                ..Default::default()
            };
            set(&mut p);
            let mut client = client;
            client
                .update_agent_policy(UpdateAgentPolicyRequest {
                    policy: Some(p),
                    update_mask: mask(&[path]),
                })
                .await
                .map(|_| ())
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("update");
    }
    let p = get_policy(&stack, &acme.admin, BOT).await.expect("get");
    let max = p.max.expect("max");
    assert_eq!(
        (max.cpus, max.memory_bytes, max.pids, max.disk_bytes),
        (3.0, 3 * GIB, 300, 3 * GIB),
        "no update lost another's field"
    );
    assert_eq!(p.defaults.map(|d| d.pids), Some(30));
    assert_eq!(p.max_sandboxes, 3);
    assert_eq!(p.network_mode(), NetworkMode::Denylist);
    assert_eq!(
        p.credentials,
        vec!["organizations/acme/credentials/npm".to_owned()]
    );
    stack.shutdown().await;
}

/// The organization's events from `source`, once `done` holds for them.
async fn events_until(
    stack: &Stack,
    org: &Org,
    source: &str,
    done: impl Fn(&[AuditEvent]) -> bool,
) -> Vec<AuditEvent> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let events: Vec<AuditEvent> = stack
            .audit(&org.owner)
            .query_events(QueryEventsRequest {
                page_size: 1000,
                oldest_first: true,
                ..Default::default()
            })
            .await
            .expect("query")
            .into_inner()
            .events
            .into_iter()
            .filter(|e| e.source_service == source)
            .collect();
        if done(&events) || Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn changes_and_refusals_are_audited(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    update_policy(
        &stack,
        &acme.admin,
        AgentPolicy {
            name: BOT.into(),
            max: limits(GIB),
            ..Default::default()
        },
        &["max.memory_bytes"],
    )
    .await
    .expect("update policy");
    update_settings(
        &stack,
        &acme.owner,
        SecuritySettings {
            max_sandboxes: 7,
            ..Default::default()
        },
        &["max_sandboxes"],
    )
    .await
    .expect("update settings");
    let denied = update_policy(
        &stack,
        &acme.developer,
        AgentPolicy {
            name: BOT.into(),
            ..Default::default()
        },
        &[],
    )
    .await;
    assert_eq!(code(denied), Code::PermissionDenied);
    // A revoked key fails at authz; the failure lands in its organization,
    // and the caller learns nothing about where the key belongs.
    let key = mint_key(&stack, &acme.developer, "acme", "", "", &[])
        .await
        .expect("key");
    let key_name = key.api_key.clone().expect("key").name;
    stack
        .identity(&acme.developer)
        .revoke_api_key(RevokeApiKeyRequest {
            name: key_name.clone(),
        })
        .await
        .expect("revoke");
    let failed = get_policy(&stack, &key.secret, BOT)
        .await
        .expect_err("revoked");
    assert_eq!(failed.code(), Code::Unauthenticated);
    assert!(
        failed
            .metadata()
            .get(paddock_shared::auth::KEY_ORGANIZATION)
            .is_none(),
        "the key's organization is not sent to the caller"
    );

    let wanted = [
        "policy.update",
        "security_settings.update",
        "authz.deny",
        "auth.fail",
    ];
    let events = events_until(&stack, &acme, "authz", |es| {
        wanted.iter().all(|w| es.iter().any(|e| e.action == *w))
    })
    .await;
    let find = |action: &str| {
        events
            .iter()
            .find(|e| e.action == action)
            .unwrap_or_else(|| panic!("no {action} from authz in {events:?}"))
    };
    let update = find("policy.update");
    assert_eq!(update.resource, BOT);
    assert_eq!(update.outcome(), Outcome::Success);
    assert_eq!(update.organization, "organizations/acme");
    let details: serde_json::Value =
        serde_json::from_str(&update.details_json).expect("details json");
    assert_eq!(
        details["changes"]["max.memory_bytes"],
        serde_json::json!({"from": 0, "to": GIB})
    );
    assert_eq!(
        details["update_mask"],
        serde_json::json!(["max.memory_bytes"])
    );
    let settings = find("security_settings.update");
    assert_eq!(settings.resource, "organizations/acme/securitySettings");
    let details: serde_json::Value =
        serde_json::from_str(&settings.details_json).expect("details json");
    assert_eq!(
        details["changes"]["max_sandboxes"],
        serde_json::json!({"from": 20, "to": 7})
    );
    let deny = find("authz.deny");
    assert_eq!(deny.resource, BOT);
    assert_eq!(deny.outcome(), Outcome::Denied);
    assert_eq!(deny.error_code, "PERMISSION_DENIED");
    assert!(
        deny.details_json.contains("agents.manage"),
        "{}",
        deny.details_json
    );
    let fail = find("auth.fail");
    assert_eq!(fail.outcome(), Outcome::Failure);
    assert_eq!(fail.resource, key_name);
    assert_eq!(
        fail.actor.as_ref().map(|a| a.key_id.as_str()),
        key_name.rsplit('/').next()
    );
    let text = format!("{events:?}");
    assert!(!text.contains(&key.secret), "no secret in the trail");
    let verify = stack
        .audit(&acme.owner)
        .verify_chain(VerifyChainRequest::default())
        .await
        .expect("verify")
        .into_inner();
    assert!(verify.intact, "{verify:?}");
    stack.shutdown().await;
}

/// Deleting an organization purges its policies and security settings (the
/// org reaper, woken by identity's push): what authz answers for its agents
/// is the built-in defaults again.
async fn a_deleted_organizations_policies_are_purged(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    update_policy(
        &stack,
        &acme.owner,
        AgentPolicy {
            name: BOT.into(),
            max: limits(GIB),
            ..Default::default()
        },
        &["max.memory_bytes"],
    )
    .await
    .expect("policy");
    update_settings(
        &stack,
        &acme.owner,
        SecuritySettings {
            max_sandboxes: 7,
            ..Default::default()
        },
        &["max_sandboxes"],
    )
    .await
    .expect("settings");
    let stored = |eff: &GetEffectivePolicyResponse| {
        (
            eff.policy
                .as_ref()
                .and_then(|p| p.max.as_ref())
                .map(|m| m.memory_bytes),
            eff.settings.as_ref().map(|s| s.max_sandboxes),
        )
    };
    let before = effective(&stack, "organizations/acme/agents/bot")
        .await
        .expect("effective");
    assert_eq!(stored(&before), (Some(GIB), Some(7)));
    stack
        .identity(&acme.owner)
        .delete_organization(paddock_proto::identity::v1::DeleteOrganizationRequest {
            name: acme.name.clone(),
        })
        .await
        .expect("delete organization");
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let eff = effective(&stack, "organizations/acme/agents/bot")
            .await
            .expect("effective");
        // The effective policy reads the policy and the settings one after
        // the other: wait for the whole purge, not a read that straddles it.
        if stored(&eff) == (Some(4 * GIB), Some(20)) || Instant::now() > deadline {
            break eff;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        stored(&after),
        (Some(4 * GIB), Some(20)),
        "the deleted organization's policy and settings are gone"
    );
    stack.shutdown().await;
}

backend_tests!(
    a_deleted_organizations_policies_are_purged,
    policies_have_defaults_and_update_by_mask,
    settings_bound_policies_and_the_effective_policy,
    other_organizations_are_not_found,
    roles_decide_who_reads_and_changes,
    concurrent_updates_of_different_fields_all_land,
    changes_and_refusals_are_audited,
);
