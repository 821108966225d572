//! The RPCs that change what exists in place, through real servers on port
//! 0, on SQLite and PostgreSQL: `UpdateAgent`, `RotateApiKey`,
//! `RotateCredential`, the platform's `ListOrganizations`, and checks about
//! another principal (`Check`/`ListPermissions` with `principal.name`).
//! Each with the attacker's view: a lesser role is refused, another
//! organization's resource is NOT_FOUND exactly like a missing one, and no
//! secret reaches the audit trail.

mod common;

use std::time::{Duration, Instant};

use common::*;
use paddock_proto::audit::v1::{AuditEvent, QueryEventsRequest};
use paddock_proto::authz::v1::{CheckRequest, ListPermissionsRequest};
use paddock_proto::identity::v1::*;
use paddock_testkit::{Backend, Stack, backend_tests};
use tonic::Code;

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

async fn update_agent(
    stack: &Stack,
    token: &str,
    name: &str,
    description: &str,
    role: &str,
    paths: &[&str],
) -> Result<Agent, tonic::Status> {
    stack
        .identity(token)
        .update_agent(UpdateAgentRequest {
            agent: Some(Agent {
                name: name.into(),
                description: description.into(),
                role: role.into(),
                ..Default::default()
            }),
            update_mask: mask(paths),
        })
        .await
        .map(|r| r.into_inner().agent.expect("agent"))
}

/// The org's events, oldest first, once one with `action` is stored.
async fn events_until(stack: &Stack, owner: &str, action: &str) -> Vec<AuditEvent> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let events = stack
            .audit(owner)
            .query_events(QueryEventsRequest {
                parent: String::new(),
                filter: None,
                page_size: 1000,
                page_token: String::new(),
                oldest_first: true,
            })
            .await
            .expect("query")
            .into_inner()
            .events;
        if events.iter().any(|e| e.action == action) || Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn agents_are_updated(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    let globex = setup_org(&stack, "globex").await;
    let bot = "organizations/acme/agents/bot";

    let a = update_agent(
        &stack,
        &acme.admin,
        bot,
        "reviews PRs",
        "",
        &["description"],
    )
    .await
    .expect("admin updates the description");
    assert_eq!(a.description, "reviews PRs");
    assert_eq!(a.role, "agent", "the role is untouched");
    let a = update_agent(&stack, &acme.admin, bot, "", "developer", &["role"])
        .await
        .expect("admin raises the agent to developer");
    assert_eq!(
        (a.role.as_str(), a.description.as_str()),
        ("developer", "reviews PRs")
    );
    // The agent's existing key follows its new role at once.
    let me = stack
        .identity(&acme.agent)
        .who_am_i(WhoAmIRequest {})
        .await
        .expect("whoami")
        .into_inner()
        .principal
        .expect("principal");
    assert_eq!(me.role, "developer");

    // Nobody raises an agent above their own role; the hint names what
    // the caller may grant.
    let err = update_agent(&stack, &acme.admin, bot, "", "owner", &["role"])
        .await
        .expect_err("admin cannot make an owner");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("you may grant"), "{}", err.message());
    assert!(!err.message().contains("owner or"), "{}", err.message());
    let err = update_agent(&stack, &acme.owner, bot, "", "root", &["role"])
        .await
        .expect_err("unknown role");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("owner, admin, developer or agent"),
        "{}",
        err.message()
    );
    let err = update_agent(&stack, &acme.admin, bot, "", "", &["owner_id"])
        .await
        .expect_err("not an updatable field");
    assert_eq!(err.code(), Code::InvalidArgument);

    // Lesser roles are refused; another organization's agent is exactly as
    // absent as one that does not exist.
    for token in [&acme.developer, &acme.agent] {
        let c = code(update_agent(&stack, token, bot, "x", "", &["description"]).await);
        assert_eq!(c, Code::PermissionDenied);
    }
    let elsewhere = update_agent(
        &stack,
        &acme.owner,
        "organizations/globex/agents/bot",
        "x",
        "",
        &["description"],
    )
    .await
    .expect_err("other org");
    let missing = update_agent(
        &stack,
        &acme.owner,
        "organizations/acme/agents/nobody",
        "x",
        "",
        &["description"],
    )
    .await
    .expect_err("missing");
    assert_eq!(elsewhere.code(), Code::NotFound);
    assert_eq!(missing.code(), Code::NotFound);
    let untouched = stack
        .identity(&globex.owner)
        .get_agent(GetAgentRequest {
            name: "organizations/globex/agents/bot".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .agent
        .expect("agent");
    assert_eq!(untouched.description, "");

    let events = events_until(&stack, &acme.owner, "agent.update").await;
    let raised = events
        .iter()
        .find(|e| e.action == "agent.update" && e.details_json.contains("previous_role"))
        .expect("the role change is audited");
    assert_eq!(raised.resource, bot);
    assert!(
        raised.details_json.contains("\"developer\""),
        "{}",
        raised.details_json
    );
    stack.shutdown().await;
}

async fn rotate(
    stack: &Stack,
    token: &str,
    name: &str,
    grace: Option<u64>,
) -> Result<RotateApiKeyResponse, tonic::Status> {
    stack
        .identity(token)
        .rotate_api_key(RotateApiKeyRequest {
            name: name.into(),
            grace_period: grace.map(|s| prost_types::Duration {
                seconds: s as i64,
                nanos: 0,
            }),
        })
        .await
        .map(|r| r.into_inner())
}

async fn whoami_code(stack: &Stack, token: &str) -> Code {
    code(stack.identity(token).who_am_i(WhoAmIRequest {}).await)
}

/// Polls until `token` stops authenticating (the cache TTL bounds it).
async fn stops_working(stack: &Stack, token: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        if whoami_code(stack, token).await == Code::Unauthenticated {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn keys_are_rotated(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    let globex = setup_org(&stack, "globex").await;

    // A developer's own scoped key: same name, role, scope; the old one
    // revoked at once.
    let ci = mint_key(&stack, &acme.developer, "acme", "", "", &["ci-cd"])
        .await
        .expect("ci key");
    let ci_key = ci.api_key.expect("key");
    let rotated = rotate(&stack, &acme.developer, &ci_key.name, None)
        .await
        .expect("developer rotates their own key");
    let new = rotated.api_key.expect("new key");
    assert_ne!(new.name, ci_key.name);
    assert!(rotated.secret.starts_with("pdk_"));
    assert_ne!(rotated.secret, ci.secret);
    assert_eq!(new.owner, ci_key.owner);
    assert_eq!(new.display_name, ci_key.display_name);
    assert_eq!(new.scope, vec!["ci-cd".to_owned()]);
    assert!(new.expire_time.is_some());
    let replaced = rotated.replaced.expect("old key");
    assert_eq!(replaced.name, ci_key.name);
    assert!(replaced.revoke_time.is_some());
    let mut secrets = vec![rotated.secret.clone()];
    assert_eq!(whoami_code(&stack, &rotated.secret).await, Code::Ok);
    assert!(
        stops_working(&stack, &ci.secret).await,
        "the old key still works"
    );
    // A revoked key has no successor.
    let err = rotate(&stack, &acme.developer, &ci_key.name, None)
        .await
        .expect_err("already revoked");
    assert_eq!(err.code(), Code::FailedPrecondition);

    // With a grace period the old key keeps working until it expires.
    let agent_key = mint_key(
        &stack,
        &acme.admin,
        "acme",
        "organizations/acme/agents/bot",
        "",
        &[],
    )
    .await
    .expect("agent key");
    let old_name = agent_key.api_key.expect("key").name;
    let rotated = rotate(&stack, &acme.admin, &old_name, Some(3600))
        .await
        .expect("admin rotates an agent's key");
    secrets.push(rotated.secret.clone());
    let replaced = rotated.replaced.expect("old");
    assert!(replaced.revoke_time.is_none());
    let until = replaced.expire_time.expect("expiry").seconds;
    let now = paddock_shared::time::now_micros() / 1_000_000;
    assert!(
        until <= now + 3600 && until > now + 3000,
        "{until} vs {now}"
    );
    assert_eq!(whoami_code(&stack, &agent_key.secret).await, Code::Ok);
    let successor = rotated.api_key.expect("new");
    assert_eq!(successor.owner, "organizations/acme/agents/bot");
    let err = rotate(&stack, &acme.admin, &successor.name, Some(8 * 86_400)).await;
    assert_eq!(code(err), Code::InvalidArgument, "grace beyond 7 days");

    // Attackers: another member's key (even for an admin who sees it), a
    // key the caller may not see, another organization's key, a missing one.
    let owner_keys = stack
        .identity(&acme.owner)
        .list_api_keys(ListApiKeysRequest {
            parent: "organizations/acme".into(),
            page_size: 0,
            page_token: String::new(),
            show_inactive: false,
        })
        .await
        .expect("list")
        .into_inner()
        .api_keys;
    let owners_key = owner_keys
        .iter()
        .find(|k| k.owner == acme.owner_member)
        .expect("owner's key")
        .name
        .clone();
    let err = rotate(&stack, &acme.admin, &owners_key, None)
        .await
        .expect_err("admin rotates the owner's key");
    assert_eq!(err.code(), Code::PermissionDenied);
    let hidden = rotate(&stack, &acme.developer, &owners_key, None)
        .await
        .expect_err("developer cannot see it");
    let globex_key = stack
        .identity(&globex.owner)
        .list_api_keys(ListApiKeysRequest {
            parent: "organizations/globex".into(),
            page_size: 0,
            page_token: String::new(),
            show_inactive: false,
        })
        .await
        .expect("list")
        .into_inner()
        .api_keys
        .remove(0)
        .name;
    let elsewhere = rotate(&stack, &acme.owner, &globex_key, None)
        .await
        .expect_err("other org");
    let missing = rotate(&stack, &acme.owner, "organizations/acme/apiKeys/nope", None)
        .await
        .expect_err("missing");
    for err in [&hidden, &elsewhere, &missing] {
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }
    assert_eq!(whoami_code(&stack, &acme.owner).await, Code::Ok);
    let agent_rotates = rotate(&stack, &acme.agent, &owners_key, None).await;
    assert_eq!(code(agent_rotates), Code::PermissionDenied);

    // Audited on both keys, never with a secret.
    let events = events_until(&stack, &acme.owner, "apikey.rotate").await;
    let rotations: Vec<&AuditEvent> = events
        .iter()
        .filter(|e| e.action == "apikey.rotate")
        .collect();
    assert_eq!(rotations.len(), 2, "{events:#?}");
    assert_eq!(rotations[0].resource, ci_key.name);
    assert!(rotations[0].details_json.contains(&new.name));
    for e in &events {
        for secret in &secrets {
            // The part after the public id is what makes it a secret.
            assert!(!e.details_json.contains(&secret[16..]), "a secret in {e:?}");
        }
    }
    stack.shutdown().await;
}

async fn credentials_are_rotated(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    let globex = setup_org(&stack, "globex").await;
    let service = stack.service_token.expose().clone();
    let first = format!("first-{}", fresh_id("secret"));
    let second = format!("second-{}-longer", fresh_id("secret"));
    for (org, token) in [(&acme, &acme.owner), (&globex, &globex.owner)] {
        stack
            .identity(token)
            .create_credential(CreateCredentialRequest {
                parent: org.name.clone(),
                credential_id: "deploy".into(),
                credential: None,
                value: first.clone().into_bytes(),
            })
            .await
            .expect("create");
    }
    let name = "organizations/acme/credentials/deploy";
    let rotate = |token: &str, name: &str, value: &str| {
        let mut client = stack.identity(token);
        let req = RotateCredentialRequest {
            name: name.into(),
            value: value.as_bytes().to_vec(),
        };
        async move { client.rotate_credential(req).await.map(|r| r.into_inner()) }
    };
    let c = rotate(&acme.admin, name, &second)
        .await
        .expect("admin rotates")
        .credential
        .expect("credential");
    assert_eq!(c.size_bytes, second.len() as i64);
    assert!(c.rotate_time.is_some());
    let revealed = stack
        .identity(&service)
        .reveal_credential(RevealCredentialRequest {
            name: name.into(),
            sandbox: "organizations/acme/sandboxes/sb1".into(),
        })
        .await
        .expect("reveal")
        .into_inner();
    assert_eq!(revealed.value, second.as_bytes());

    for token in [&acme.developer, &acme.agent] {
        assert_eq!(code(rotate(token, name, "x").await), Code::PermissionDenied);
    }
    let elsewhere = rotate(&acme.owner, "organizations/globex/credentials/deploy", "x")
        .await
        .expect_err("other org");
    let missing = rotate(&acme.owner, "organizations/acme/credentials/nope", "x")
        .await
        .expect_err("missing");
    assert_eq!(elsewhere.code(), Code::NotFound);
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(
        elsewhere
            .message()
            .replace("globex", "acme")
            .replace("deploy", "nope"),
        missing.message(),
        "another organization's credential reads exactly like a missing one"
    );
    let too_big = rotate(&acme.owner, name, &"x".repeat(64 * 1024 + 1))
        .await
        .expect_err("too big");
    assert_eq!(too_big.code(), Code::InvalidArgument);
    assert!(
        too_big.message().contains("64 KiB"),
        "{}",
        too_big.message()
    );
    assert_eq!(
        code(rotate(&acme.owner, name, "").await),
        Code::InvalidArgument
    );
    let globex_value = stack
        .identity(&service)
        .reveal_credential(RevealCredentialRequest {
            name: "organizations/globex/credentials/deploy".into(),
            sandbox: "organizations/globex/sandboxes/sb1".into(),
        })
        .await
        .expect("reveal")
        .into_inner()
        .value;
    assert_eq!(globex_value, first.as_bytes());

    let events = events_until(&stack, &acme.owner, "credential.rotate").await;
    let rotation = events
        .iter()
        .find(|e| e.action == "credential.rotate")
        .expect("audited");
    assert_eq!(rotation.resource, name);
    for e in &events {
        assert!(
            !e.details_json.contains(&second) && !e.details_json.contains(&first),
            "a credential value in {e:?}"
        );
    }
    stack.shutdown().await;
}

async fn the_platform_lists_organizations(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    setup_org(&stack, "globex").await;
    let platform = stack.bootstrap_token().expose().clone();
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = stack
            .identity(&platform)
            .list_organizations(ListOrganizationsRequest {
                page_size: 1,
                page_token: token,
            })
            .await
            .expect("list")
            .into_inner();
        assert!(page.organizations.len() <= 1);
        names.extend(page.organizations.into_iter().map(|o| o.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(names, vec!["organizations/acme", "organizations/globex"]);
    for token in [&acme.owner, &acme.admin, &acme.agent] {
        let c = code(
            stack
                .identity(token)
                .list_organizations(ListOrganizationsRequest::default())
                .await,
        );
        assert_eq!(c, Code::PermissionDenied);
    }
    // GetPrincipal is for services only.
    let c = code(
        stack
            .identity(&acme.owner)
            .get_principal(GetPrincipalRequest {
                name: acme.owner_member.clone(),
            })
            .await,
    );
    assert_eq!(c, Code::PermissionDenied);
    stack.shutdown().await;
}

fn named(name: &str) -> Option<Principal> {
    Some(Principal {
        name: name.into(),
        ..Default::default()
    })
}

async fn check_as(
    stack: &Stack,
    token: &str,
    name: &str,
    permission: &str,
) -> Result<bool, tonic::Status> {
    stack
        .authz(token)
        .check(CheckRequest {
            principal: named(name),
            permission: permission.into(),
            resource: String::new(),
            resource_owner: String::new(),
        })
        .await
        .map(|r| r.into_inner().allowed)
}

async fn checks_about_another_principal(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    let globex = setup_org(&stack, "globex").await;
    let dev = acme.developer_member.clone();
    let bot = "organizations/acme/agents/bot";

    // An admin asks about the developer and the agent: their roles decide.
    assert!(
        check_as(&stack, &acme.admin, &dev, "projects.create")
            .await
            .expect("check")
    );
    assert!(
        !check_as(&stack, &acme.admin, &dev, "projects.delete")
            .await
            .expect("check")
    );
    assert!(
        check_as(&stack, &acme.admin, bot, "agents.execute")
            .await
            .expect("check")
    );
    assert!(
        !check_as(&stack, &acme.admin, bot, "projects.create")
            .await
            .expect("check")
    );
    let listed = stack
        .authz(&acme.admin)
        .list_permissions(ListPermissionsRequest {
            principal: named(&dev),
        })
        .await
        .expect("list")
        .into_inner()
        .permissions;
    assert!(listed.contains(&"projects.create".to_owned()));
    assert!(!listed.contains(&"projects.delete".to_owned()));

    // A lesser role, and a key scoped below members.read, are refused.
    let c = check_as(&stack, &acme.agent, &dev, "projects.read").await;
    assert_eq!(code(c), Code::PermissionDenied);
    let scoped = mint_key(&stack, &acme.admin, "acme", "", "", &["ci-cd"])
        .await
        .expect("scoped key")
        .secret;
    let c = check_as(&stack, &scoped, &dev, "projects.read").await;
    assert_eq!(code(c), Code::PermissionDenied);
    // Another organization's principal is NOT_FOUND, exactly like a missing one.
    let elsewhere = check_as(&stack, &acme.owner, &globex.owner_member, "projects.read")
        .await
        .expect_err("other org");
    let missing = check_as(
        &stack,
        &acme.owner,
        "organizations/acme/members/mnobody",
        "projects.read",
    )
    .await
    .expect_err("missing");
    assert_eq!(elsewhere.code(), Code::NotFound);
    assert_eq!(missing.code(), Code::NotFound);
    let c = check_as(&stack, &acme.agent, &globex.owner_member, "projects.read").await;
    assert_eq!(code(c), Code::NotFound, "other org before any permission");
    // Forged fields are still refused: only the name may be passed.
    let forged = stack
        .authz(&acme.developer)
        .check(CheckRequest {
            principal: Some(Principal {
                name: dev.clone(),
                role: "owner".into(),
                ..Default::default()
            }),
            permission: "org.delete".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(forged), Code::PermissionDenied);
    stack.shutdown().await;
}

backend_tests!(
    agents_are_updated,
    keys_are_rotated,
    credentials_are_rotated,
    the_platform_lists_organizations,
    checks_about_another_principal,
);
