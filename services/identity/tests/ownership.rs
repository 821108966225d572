//! Who may act for whom: keys are minted only for oneself or (with
//! api_keys.manage) for agents, and what a member minted or invited goes
//! with them when they leave; on SQLite and PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use common::*;
use paddock_proto::audit::v1::*;
use paddock_proto::identity::v1::*;
use paddock_testkit::{Backend, Stack, backend_tests};
use tonic::Code;

/// The org's events with actions starting with `prefix`, once at least one
/// is stored (the outbox delivers asynchronously).
async fn events_with(stack: &Stack, owner: &str, prefix: &str) -> Vec<AuditEvent> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let events = stack
            .audit(owner)
            .query_events(QueryEventsRequest {
                filter: Some(EventFilter {
                    action_prefix: prefix.into(),
                    ..Default::default()
                }),
                page_size: 1000,
                ..Default::default()
            })
            .await
            .expect("query")
            .into_inner()
            .events;
        if !events.is_empty() || Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn whoami(stack: &Stack, token: &str) -> Principal {
    stack
        .identity(token)
        .who_am_i(WhoAmIRequest {})
        .await
        .expect("whoami")
        .into_inner()
        .principal
        .expect("principal")
}

async fn nobody_mints_a_key_for_another_member(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    let globex = setup_org(&stack, "globex").await;

    let err = mint_key(&stack, &acme.admin, "acme", &acme.owner_member, "", &[])
        .await
        .expect_err("admin → owner's key");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("owned by another member") && err.message().contains("agents"),
        "the refusal says why: {}",
        err.message()
    );
    assert_eq!(
        mint_key(&stack, &acme.admin, "acme", &acme.developer_member, "", &[])
            .await
            .expect_err("admin → developer's key")
            .code(),
        Code::PermissionDenied
    );
    // Not even the owner, and not even with a narrower role or scope.
    let err = mint_key(
        &stack,
        &acme.owner,
        "acme",
        &acme.developer_member,
        "",
        &["read-only"],
    )
    .await
    .expect_err("owner → developer's key");
    assert_eq!(err.code(), Code::PermissionDenied);
    // Another organization's member does not exist.
    assert_eq!(
        mint_key(&stack, &acme.owner, "acme", &globex.owner_member, "", &[])
            .await
            .expect_err("cross-org member")
            .code(),
        Code::NotFound
    );
    // Agents remain the one case of minting for somebody else.
    let agent_key = mint_key(
        &stack,
        &acme.admin,
        "acme",
        "organizations/acme/agents/bot",
        "",
        &[],
    )
    .await
    .expect("admin → agent key");
    assert!(
        agent_key
            .api_key
            .expect("key")
            .owner
            .ends_with("/agents/bot")
    );
    // And one's own key, named explicitly.
    let me = whoami(&stack, &acme.admin).await;
    mint_key(&stack, &acme.admin, "acme", &me.name, "", &[])
        .await
        .expect("own key by name");
    stack.shutdown().await;
}

async fn removing_a_member_revokes_the_keys_they_minted(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    let (admin, admin_token) =
        add_member(&stack, &acme.owner, "acme", "leaving@acme.test", "admin").await;
    let minted = mint_key(
        &stack,
        &admin_token,
        "acme",
        "organizations/acme/agents/bot",
        "",
        &[],
    )
    .await
    .expect("agent key minted by the admin");
    let minted_name = minted.api_key.expect("key").name;
    // A key someone else minted for the same agent is not the admin's.
    let kept = mint_key(
        &stack,
        &acme.owner,
        "acme",
        "organizations/acme/agents/bot",
        "",
        &[],
    )
    .await
    .expect("agent key minted by the owner")
    .secret;
    // Warm the cache, so the revocation has to reach it.
    assert_eq!(
        code(
            stack
                .identity(&minted.secret)
                .who_am_i(WhoAmIRequest {})
                .await
        ),
        Code::Ok
    );
    stack
        .identity(&acme.owner)
        .delete_member(DeleteMemberRequest {
            name: admin.name.clone(),
        })
        .await
        .expect("remove the admin");
    for token in [&admin_token, &minted.secret] {
        let err = stack
            .identity(token)
            .who_am_i(WhoAmIRequest {})
            .await
            .expect_err("a removed member's keys stop working");
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    assert_eq!(
        code(stack.identity(&kept).who_am_i(WhoAmIRequest {}).await),
        Code::Ok,
        "keys minted by others stay"
    );
    let removed = events_with(&stack, &acme.owner, "member.remove").await;
    let event = removed
        .iter()
        .find(|e| e.resource == admin.name)
        .expect("member.remove event");
    let details: serde_json::Value =
        serde_json::from_str(&event.details_json).expect("details json");
    assert_eq!(
        details["revoked_api_keys"],
        serde_json::json!([minted_name]),
        "the audit trail names the revoked keys: {details}"
    );
    stack.shutdown().await;
}

backend_tests!(
    nobody_mints_a_key_for_another_member,
    removing_a_member_revokes_the_keys_they_minted,
);
