//! Identity's audit trail: every mutation and every refusal reaches the
//! audit service through the outbox, exactly once, without secrets, and
//! survives an audit outage.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use paddock_proto::audit::v1::*;
use paddock_proto::identity::v1::*;
use paddock_testkit::{Backend, Stack, backend_tests};

/// All of the org's events, oldest first, once at least `min` are stored.
async fn events(stack: &Stack, owner: &str, min: usize) -> Vec<AuditEvent> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let resp = stack
                .audit(owner)
                .query_events(QueryEventsRequest {
                    parent: String::new(),
                    filter: None,
                    page_size: 1000,
                    page_token: token,
                    oldest_first: true,
                })
                .await
                .expect("query")
                .into_inner();
            all.extend(resp.events);
            if resp.next_page_token.is_empty() {
                break;
            }
            token = resp.next_page_token;
        }
        if all.len() >= min || Instant::now() > deadline {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn actions(events: &[AuditEvent]) -> Vec<&str> {
    events.iter().map(|e| e.action.as_str()).collect()
}

async fn mutations_and_refusals_are_audited(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    // setup_org: organization.create, 2 × (member.invite, member.join),
    // agent.create, apikey.create, project.create.
    let denied = stack
        .identity(&acme.developer)
        .delete_project(DeleteProjectRequest {
            name: "organizations/acme/projects/web".into(),
        })
        .await;
    assert!(denied.is_err());
    let key = mint_key(&stack, &acme.developer, "acme", "", "", &["ci-cd"])
        .await
        .expect("key");
    stack
        .identity(&acme.developer)
        .revoke_api_key(RevokeApiKeyRequest {
            name: key.api_key.clone().expect("key").name,
        })
        .await
        .expect("revoke");
    let _ = stack
        .identity(&key.secret)
        .who_am_i(WhoAmIRequest {})
        .await
        .expect_err("revoked");

    // Credentials and session tokens: their values and secrets must not
    // reach the trail either.
    let service = stack.service_token.expose().clone();
    let credential_value =
        b"-----BEGIN OPENSSH PRIVATE KEY----- audit-redaction-canary-7f3a".to_vec();
    let credential = stack
        .identity(&acme.owner)
        .create_credential(CreateCredentialRequest {
            parent: String::new(),
            credential_id: "deploy-key".into(),
            credential: Some(Credential {
                kind: CredentialKind::SshKey as i32,
                ..Default::default()
            }),
            value: credential_value.clone(),
        })
        .await
        .expect("credential")
        .into_inner()
        .credential
        .expect("credential");
    let revealed = stack
        .identity(&service)
        .reveal_credential(RevealCredentialRequest {
            name: credential.name.clone(),
            sandbox: "organizations/acme/sandboxes/sb1".into(),
        })
        .await
        .expect("reveal")
        .into_inner();
    assert_eq!(revealed.value, credential_value);
    let session = stack
        .identity(&service)
        .create_session_token(CreateSessionTokenRequest {
            agent: "organizations/acme/agents/bot".into(),
            sandbox: "organizations/acme/sandboxes/sb1".into(),
            ttl: None,
        })
        .await
        .expect("session token")
        .into_inner();
    stack
        .identity(&service)
        .revoke_session_token(RevokeSessionTokenRequest {
            sandbox: "organizations/acme/sandboxes/sb1".into(),
        })
        .await
        .expect("revoke session tokens");
    stack
        .identity(&acme.owner)
        .delete_credential(DeleteCredentialRequest {
            name: credential.name.clone(),
        })
        .await
        .expect("delete credential");

    let all = events(&stack, &acme.owner, 17).await;
    let got = actions(&all);
    for want in [
        "organization.create",
        "member.invite",
        "member.join",
        "agent.create",
        "apikey.create",
        "project.create",
        "authz.deny",
        "apikey.revoke",
        "auth.fail",
        "credential.create",
        "credential.reveal",
        "credential.delete",
        "session_token.create",
        "session_token.revoke",
    ] {
        assert!(got.contains(&want), "{want} missing from {got:?}");
    }
    let reveal = all
        .iter()
        .find(|e| e.action == "credential.reveal")
        .expect("reveal");
    assert_eq!(reveal.resource, credential.name);
    assert_eq!(reveal.organization, "organizations/acme");
    assert_eq!(
        reveal.actor.as_ref().map(|a| a.kind.as_str()),
        Some("PRINCIPAL_KIND_SERVICE")
    );
    assert!(
        reveal
            .details_json
            .contains("organizations/acme/sandboxes/sb1"),
        "{}",
        reveal.details_json
    );
    let minted = all
        .iter()
        .find(|e| e.action == "session_token.create")
        .expect("session_token.create");
    assert!(
        minted
            .details_json
            .contains("organizations/acme/agents/bot")
    );
    assert!(minted.details_json.contains("sandboxes/sb1"));
    let revoked = all
        .iter()
        .find(|e| e.action == "session_token.revoke")
        .expect("session_token.revoke");
    assert_eq!(revoked.resource, "organizations/acme/sandboxes/sb1");
    let deny = all.iter().find(|e| e.action == "authz.deny").expect("deny");
    assert_eq!(deny.resource, "organizations/acme/projects/web");
    assert_eq!(deny.outcome(), Outcome::Denied);
    assert_eq!(deny.error_code, "PERMISSION_DENIED");
    assert!(
        deny.details_json.contains("projects.delete"),
        "{}",
        deny.details_json
    );
    assert_eq!(deny.source_service, "identity");
    assert_eq!(deny.trace_id.len(), 32);
    let fail = all
        .iter()
        .find(|e| e.action == "auth.fail")
        .expect("auth.fail");
    let key_id = key
        .api_key
        .expect("key")
        .name
        .rsplit('/')
        .next()
        .expect("id")
        .to_owned();
    assert_eq!(
        fail.actor.as_ref().map(|a| a.key_id.as_str()),
        Some(key_id.as_str())
    );
    assert_eq!(fail.outcome(), Outcome::Failure);
    let create = all
        .iter()
        .find(|e| e.action == "project.create")
        .expect("create");
    assert_eq!(
        create.actor.as_ref().map(|a| a.display_name.as_str()),
        Some("owner@acme.test")
    );

    // No secret appears anywhere in the trail.
    let text = format!("{all:?}");
    for secret in [
        &acme.owner,
        &acme.admin,
        &acme.developer,
        &acme.agent,
        &key.secret,
        &session.secret,
    ] {
        assert!(
            !text.contains(secret.as_str()),
            "a key secret is in the audit trail"
        );
        assert!(!text.contains(&secret[16..48]));
    }
    // Nor any credential value, whole or in part, raw or hex.
    assert!(
        !text.contains("audit-redaction-canary"),
        "a credential value is in the audit trail"
    );
    assert!(
        !text.contains("BEGIN OPENSSH"),
        "a credential value is in the audit trail"
    );
    assert!(
        !text.contains(&paddock_shared::hex::encode(&credential_value[..24])),
        "a credential value is in the audit trail as hex"
    );
    let code = stack
        .identity(&acme.owner)
        .create_invite(CreateInviteRequest {
            parent: String::new(),
            email: "x@acme.test".into(),
            role: "developer".into(),
            ttl: None,
        })
        .await
        .expect("invite")
        .into_inner()
        .code;
    let all = events(&stack, &acme.owner, all.len() + 1).await;
    assert!(
        !format!("{all:?}").contains(&code[16..48]),
        "an invite code is in the audit trail"
    );

    let verify = stack
        .audit(&acme.owner)
        .verify_chain(VerifyChainRequest::default())
        .await
        .expect("verify")
        .into_inner();
    assert!(verify.intact, "{verify:?}");
    // Another organization sees none of it.
    let globex = stack.create_org("globex", "o@globex.test").await;
    let theirs = events(&stack, &globex.owner_key_secret, 1).await;
    assert!(
        theirs
            .iter()
            .all(|e| e.organization == "organizations/globex")
    );
    stack.shutdown().await;
}

async fn an_audit_outage_delays_and_loses_nothing(backend: Backend) {
    let mut stack = Stack::start(backend).await;
    let org = stack.create_org("acme", "o@acme.test").await;
    let owner = org.owner_key_secret;
    let before = events(&stack, &owner, 1).await.len();
    stack.stop_audit().await;
    for i in 0..20 {
        stack
            .identity(&owner)
            .create_project(CreateProjectRequest {
                parent: String::new(),
                project_id: format!("p{i}"),
                project: None,
            })
            .await
            .expect("mutations succeed while audit is down");
    }
    // Let the forwarder fail a few times.
    tokio::time::sleep(Duration::from_millis(700)).await;
    stack.restart_audit().await;
    let all = events(&stack, &owner, before + 20).await;
    let creates: Vec<_> = all
        .iter()
        .filter(|e| e.action == "project.create")
        .collect();
    assert_eq!(creates.len(), 20, "every event arrives");
    let ids: HashSet<_> = all.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), all.len(), "exactly once");
    let verify = stack
        .audit(&owner)
        .verify_chain(VerifyChainRequest::default())
        .await
        .expect("verify")
        .into_inner();
    assert!(verify.intact, "{verify:?}");
    stack.shutdown().await;
}

/// A token that names no known key belongs to no organization: its refusal
/// lands in the platform chain, which only the bootstrap token reads, with
/// the key id it named and never the token.
async fn refusals_outside_any_organization_reach_the_platform_chain(backend: Backend) {
    let stack = Stack::start(backend).await;
    let org = setup_org(&stack, &fresh_id("plat")).await;
    // A well-formed key of no organization, and plain garbage.
    let (ghost_id, ghost) = paddock_shared::token::mint(paddock_shared::token::TokenKind::ApiKey);
    for token in [ghost.as_str(), "pdk_garbage-canary-not-a-key"] {
        let refused = stack.identity(token).who_am_i(WhoAmIRequest {}).await;
        assert_eq!(
            refused.map(|_| ()).expect_err("refused").code(),
            tonic::Code::Unauthenticated
        );
    }
    let bootstrap = stack.bootstrap_token();
    let platform = || stack.audit(bootstrap.expose());
    let deadline = Instant::now() + Duration::from_secs(15);
    let events = loop {
        let events = platform()
            .query_platform_events(QueryPlatformEventsRequest {
                oldest_first: true,
                ..Default::default()
            })
            .await
            .expect("query the platform chain")
            .into_inner()
            .events;
        if events.len() >= 2 || Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        actions(&events),
        vec!["auth.fail", "auth.fail"],
        "{events:#?}"
    );
    assert!(events.iter().all(|e| e.organization == "platform"));
    assert_eq!(
        events[0].actor.as_ref().map(|a| a.key_id.as_str()),
        Some(ghost_id.as_str()),
        "the key id the token named"
    );
    let text = format!("{events:?}");
    assert!(!text.contains(&ghost), "a token reached the audit trail");
    assert!(
        !text.contains("garbage-canary"),
        "a token reached the audit trail"
    );
    let verified = platform()
        .verify_platform_chain(VerifyPlatformChainRequest::default())
        .await
        .expect("verify")
        .into_inner()
        .result
        .expect("result");
    assert!(verified.intact, "{verified:?}");
    // Nobody in an organization reads it, and it is not in theirs.
    let denied = stack
        .audit(&org.owner)
        .query_platform_events(QueryPlatformEventsRequest::default())
        .await;
    assert_eq!(
        denied.map(|_| ()).expect_err("refused").code(),
        tonic::Code::PermissionDenied
    );
    let own = events_of(&stack, &org.owner).await;
    assert!(
        own.iter().all(|e| e.action != "auth.fail"),
        "{:?}",
        actions(&own)
    );
    stack.shutdown().await;
}

async fn events_of(stack: &Stack, owner: &str) -> Vec<AuditEvent> {
    events(stack, owner, 0).await
}

backend_tests!(
    mutations_and_refusals_are_audited,
    an_audit_outage_delays_and_loses_nothing,
    refusals_outside_any_organization_reach_the_platform_chain,
);
