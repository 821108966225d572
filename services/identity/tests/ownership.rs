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

async fn invite(stack: &Stack, token: &str, email: &str, role: &str) -> CreateInviteResponse {
    stack
        .identity(token)
        .create_invite(CreateInviteRequest {
            parent: String::new(),
            email: email.into(),
            role: role.into(),
            ttl: None,
        })
        .await
        .expect("invite")
        .into_inner()
}

async fn accept(stack: &Stack, code: &str) -> Result<AcceptInviteResponse, tonic::Status> {
    stack
        .anonymous_identity()
        .accept_invite(AcceptInviteRequest {
            code: code.into(),
            key_display_name: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

fn assert_revoked(result: Result<AcceptInviteResponse, tonic::Status>) {
    let err = result.expect_err("a dead invite was accepted");
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains("revoked"), "{}", err.message());
}

async fn list_invites(stack: &Stack, token: &str, show_inactive: bool) -> Vec<Invite> {
    stack
        .identity(token)
        .list_invites(ListInvitesRequest {
            show_inactive,
            ..Default::default()
        })
        .await
        .expect("list invites")
        .into_inner()
        .invites
}

async fn invites_die_with_their_inviter(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    let (second, second_token) =
        add_member(&stack, &acme.owner, "acme", "second@acme.test", "owner").await;
    let as_owner = invite(&stack, &second_token, "o@acme.test", "owner").await;
    stack
        .identity(&acme.owner)
        .delete_member(DeleteMemberRequest {
            name: second.name.clone(),
        })
        .await
        .expect("remove the inviter");
    assert_revoked(accept(&stack, &as_owner.code).await);
    let removed = events_with(&stack, &acme.owner, "member.remove").await;
    let details: serde_json::Value =
        serde_json::from_str(&removed[0].details_json).expect("details");
    assert_eq!(
        details["revoked_invites"],
        serde_json::json!([as_owner.name]),
        "{details}"
    );

    // Demoted below the invited role: that invite dies, lower ones live.
    let (third, third_token) =
        add_member(&stack, &acme.owner, "acme", "third@acme.test", "owner").await;
    let as_admin = invite(&stack, &third_token, "a@acme.test", "admin").await;
    let as_dev = invite(&stack, &third_token, "d@acme.test", "developer").await;
    stack
        .identity(&acme.owner)
        .update_member(UpdateMemberRequest {
            member: Some(Member {
                name: third.name.clone(),
                role: "developer".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .expect("demote the inviter");
    assert_revoked(accept(&stack, &as_admin.code).await);
    let joined = accept(&stack, &as_dev.code)
        .await
        .expect("an invite within the inviter's new role stays valid");
    assert_eq!(joined.member.expect("member").role, "developer");
    stack.shutdown().await;
}

async fn invites_are_listed_without_codes_and_revocable(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    let globex = setup_org(&stack, "globex").await;
    let owner = whoami(&stack, &acme.owner).await;
    let pending = invite(&stack, &acme.owner, "p@acme.test", "developer").await;
    let revoked = invite(&stack, &acme.owner, "r@acme.test", "admin").await;

    // setup_org's invites were accepted: only the two pending ones show.
    let listed = list_invites(&stack, &acme.owner, false).await;
    let names: Vec<&str> = listed.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names.len(), 2, "{listed:?}");
    assert!(names.contains(&pending.name.as_str()) && names.contains(&revoked.name.as_str()));
    let p = listed
        .iter()
        .find(|i| i.name == pending.name)
        .expect("pending invite");
    assert_eq!(p.email, "p@acme.test");
    assert_eq!(p.role, "developer");
    assert_eq!(p.inviter, owner.name);
    assert_eq!(p.state(), InviteState::Pending);
    assert_eq!(p.expire_time, pending.expire_time);
    // The id is the code's public part; the secret part appears nowhere.
    let secret_part = &pending.code[16..48];
    let shown = format!("{listed:?}");
    assert!(
        !shown.contains(secret_part) && !shown.contains(&pending.code),
        "an invite code leaked: {shown}"
    );

    let globex_err = stack
        .identity(&globex.owner)
        .revoke_invite(RevokeInviteRequest {
            name: revoked.name.clone(),
        })
        .await
        .expect_err("another organization's invite");
    assert_eq!(globex_err.code(), Code::NotFound);
    let done = stack
        .identity(&acme.owner)
        .revoke_invite(RevokeInviteRequest {
            name: revoked.name.clone(),
        })
        .await
        .expect("revoke")
        .into_inner()
        .invite
        .expect("invite");
    assert_eq!(done.state(), InviteState::Revoked);
    assert!(done.revoke_time.is_some());
    assert_revoked(accept(&stack, &revoked.code).await);
    // Gone from the pending list, still there with --all.
    let listed = list_invites(&stack, &acme.owner, false).await;
    assert_eq!(
        listed.iter().map(|i| &i.name).collect::<Vec<_>>(),
        vec![&pending.name]
    );
    let all = list_invites(&stack, &acme.owner, true).await;
    assert!(
        all.iter()
            .any(|i| i.name == revoked.name && i.state() == InviteState::Revoked)
    );
    assert!(all.iter().any(|i| i.state() == InviteState::Accepted));
    // An accepted invite cannot be revoked; its member is removed instead.
    accept(&stack, &pending.code).await.expect("accept");
    let err = stack
        .identity(&acme.owner)
        .revoke_invite(RevokeInviteRequest {
            name: pending.name.clone(),
        })
        .await
        .expect_err("accepted");
    assert_eq!(err.code(), Code::FailedPrecondition);
    // A developer cannot see invites at all.
    assert_eq!(
        code(
            stack
                .identity(&acme.developer)
                .list_invites(ListInvitesRequest::default())
                .await
        ),
        Code::PermissionDenied
    );
    stack.shutdown().await;
}

backend_tests!(
    nobody_mints_a_key_for_another_member,
    removing_a_member_revokes_the_keys_they_minted,
    invites_die_with_their_inviter,
    invites_are_listed_without_codes_and_revocable,
);
