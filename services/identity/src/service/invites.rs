//! Invites: single-use, expiring codes (`pdi_…`) that make a new member.
//! Only the code's hash is stored and no RPC returns the code after
//! `CreateInvite`. An invite lives only as long as its inviter could still
//! make it: removing the inviter, or demoting them below the invited role,
//! revokes it, and `AcceptInvite` checks the inviter again.

use std::time::Duration;

use paddock_proto::audit::v1::Actor;
use paddock_proto::identity::v1::*;
use paddock_shared::error::{Error, Result};
use paddock_shared::names::{self, child_name, org_name, parse_child, validate_text};
use paddock_shared::rbac::Role;
use paddock_shared::time::{self, now_micros, opt_timestamp, timestamp};
use paddock_shared::token::{self, TokenKind};
use serde_json::json;

use super::keys::{self, NewKey};
use super::members::member;
use super::request::{MAX_PAGE, caller_org, own_child, parent_org};
use super::roles::{MEMBER_ROLES, check_grantable, parse_role};
use super::{Identity, new_principal_id};
use crate::store::invites::{self as store, InviteRow};
use crate::store::members::MemberRow;
use crate::store::{agents, members, organizations};
use paddock_shared::page::{Page, Query};

const COLLECTION: &str = "invites";
const DEFAULT_TTL: Duration = Duration::from_secs(7 * 86_400);
const MAX_TTL: Duration = Duration::from_secs(30 * 86_400);

fn invite(row: InviteRow, now: i64) -> Invite {
    let state = if row.revoke_time.is_some() {
        InviteState::Revoked
    } else if row.accept_time.is_some() {
        InviteState::Accepted
    } else if row.expire_time <= now {
        InviteState::Expired
    } else {
        InviteState::Pending
    };
    Invite {
        name: child_name(&row.org_id, COLLECTION, &row.id),
        email: row.email,
        role: row.role,
        inviter: row.created_by,
        state: state as i32,
        create_time: Some(timestamp(row.create_time)),
        expire_time: Some(timestamp(row.expire_time)),
        accept_time: opt_timestamp(row.accept_time),
        revoke_time: opt_timestamp(row.revoke_time),
    }
}

/// Whether `inviter`'s role may still grant `invited`: both built-in roles,
/// the invited one within the inviter's.
fn still_grants(inviter: &str, invited: &str) -> bool {
    match (Role::parse(inviter), Role::parse(invited)) {
        (Some(inviter), Some(invited)) => invited.permissions().is_subset_of(inviter.permissions()),
        _ => false,
    }
}

/// The current role of the member or agent named `inviter` in `org`; None
/// when it no longer exists.
async fn inviter_role(
    conn: &mut sqlx::AnyConnection,
    org: &str,
    inviter: &str,
) -> Result<Option<String>> {
    let role = if let Ok((o, id)) = parse_child(inviter, "members") {
        members::role(&mut *conn, o, id).await?
    } else if let Ok((o, id)) = parse_child(inviter, "agents") {
        agents::get(&mut *conn, o, id).await?.map(|a| a.role)
    } else {
        None
    };
    Ok(role.filter(|_| names::organization_of(inviter) == Some(org)))
}

/// Revokes the pending invites made by `inviter` (a member's or agent's
/// resource name) that its new role no longer covers; `None`: it was
/// removed, so all of them. Runs in the caller's transaction, so the
/// removal or demotion and the revocation commit together. Returns the
/// revoked invites' names, for the audit event.
pub(super) async fn revoke_by_inviter(
    tx: &mut sqlx::AnyConnection,
    org: &str,
    inviter: &str,
    new_role: Option<&str>,
) -> Result<Vec<String>> {
    let now = now_micros();
    let pending = store::pending_by(&mut *tx, org, inviter, now).await?;
    let mut revoked = Vec::new();
    for invite in pending {
        if new_role.is_some_and(|r| still_grants(r, &invite.role)) {
            continue;
        }
        store::revoke_unrevoked(&mut *tx, &invite.id, now).await?;
        revoked.push(child_name(org, COLLECTION, &invite.id));
    }
    Ok(revoked)
}

pub(super) async fn create(
    identity: &Identity,
    caller: &Principal,
    req: CreateInviteRequest,
) -> Result<CreateInviteResponse> {
    let org = parent_org(caller, &req.parent)?.to_owned();
    let email = names::normalize_email(&req.email)?;
    let role = parse_role(&req.role, &MEMBER_ROLES)?;
    check_grantable(caller, role, &MEMBER_ROLES)?;
    let ttl = match &req.ttl {
        None => DEFAULT_TTL,
        Some(d) => time::duration(d)
            .filter(|d| !d.is_zero() && *d <= MAX_TTL)
            .ok_or_else(|| Error::invalid("ttl must be between 1s and 30 days"))?,
    };
    if members::email_taken(&identity.db.pool, &org, &email).await? {
        return Err(Error::AlreadyExists(format!("{email} is already a member")));
    }
    let (id, code) = token::mint(TokenKind::Invite);
    let now = now_micros();
    let row = InviteRow {
        id,
        org_id: org,
        email,
        role: role.as_str().to_owned(),
        created_by: caller.name.clone(),
        create_time: now,
        expire_time: now.saturating_add(ttl.as_micros() as i64),
        accept_time: None,
        revoke_time: None,
    };
    let mut tx = identity.db.begin_write().await?;
    store::insert(&mut *tx, &row, &token::hash(&code)).await?;
    // The code is the credential: only its id is recorded.
    let details = json!({"email": row.email, "role": row.role, "invite_id": row.id, "expire_time_us": row.expire_time});
    identity
        .outbox
        .commit(
            tx,
            identity.outbox.success(
                Some(caller),
                "member.invite",
                &org_name(&row.org_id),
                details,
            ),
        )
        .await?;
    Ok(CreateInviteResponse {
        code,
        expire_time: Some(timestamp(row.expire_time)),
        name: child_name(&row.org_id, COLLECTION, &row.id),
        email: row.email,
        role: row.role,
    })
}

/// The refusal of an invite that was revoked, or whose inviter can no
/// longer make it: the same words either way.
fn revoked() -> Error {
    Error::FailedPrecondition("invite code has been revoked".into())
}

pub(super) async fn accept(
    identity: &Identity,
    req: AcceptInviteRequest,
) -> Result<AcceptInviteResponse> {
    let parsed = token::parse(req.code.trim())
        .map_err(|e| Error::invalid(format!("malformed invite code: {e}")))?;
    if parsed.kind != TokenKind::Invite {
        return Err(Error::invalid("not an invite code (expected pdi_…)"));
    }
    let key_name = if req.key_display_name.is_empty() {
        "default".to_owned()
    } else {
        req.key_display_name
    };
    validate_text("key_display_name", &key_name, 200)?;
    let row = store::by_code_id(&identity.db.pool, parsed.id).await?;
    let Some(invite) = row.filter(|r| parsed.matches(&r.code_hash)) else {
        return Err(Error::NotFound("invite code not found".into()));
    };
    if invite.revoke_time.is_some() {
        return Err(revoked());
    }
    if invite.accept_time.is_some() {
        return Err(Error::FailedPrecondition(
            "invite code has already been used".into(),
        ));
    }
    if invite.expire_time <= now_micros() {
        return Err(Error::FailedPrecondition("invite code has expired".into()));
    }
    let org = invite.org_id;
    // The transaction writes first (SQLite then waits for the write lock
    // instead of failing a read-to-write upgrade), and only one UPDATE
    // sees accept_time NULL: single use even under races. A revocation
    // committed first leaves nothing to claim.
    let now = now_micros();
    let mut tx = identity.db.begin_write().await?;
    if !store::claim(&mut *tx, parsed.id, now).await? {
        return Err(Error::FailedPrecondition(
            "invite code has already been used".into(),
        ));
    }
    // Checked again here, so an invite made before revocation on removal
    // existed (or by an inviter demoted since) cannot outlive its inviter.
    let current = inviter_role(&mut tx, &org, &invite.created_by).await?;
    if !current.is_some_and(|r| still_grants(&r, &invite.role)) {
        return Err(revoked());
    }
    let max_secs = organizations::max_key_lifetime_secs(&mut *tx, &org)
        .await?
        .ok_or_else(|| Error::not_found(org_name(&org)))?;
    let new_member = MemberRow {
        id: new_principal_id('m'),
        org_id: org,
        email: invite.email,
        role: invite.role,
        create_time: now,
    };
    members::insert(&mut *tx, &new_member).await?;
    let expire = Some(now.saturating_add(max_secs.max(0).saturating_mul(1_000_000)));
    let name = child_name(&new_member.org_id, "members", &new_member.id);
    let (key, secret) = keys::insert(
        &mut tx,
        NewKey {
            org: &new_member.org_id,
            owner_id: &new_member.id,
            display_name: &key_name,
            role: "",
            scope: &[],
            expire,
            created_by: &name,
            sandbox: None,
        },
    )
    .await?;
    let mut event = identity.outbox.success(
        None,
        "member.join",
        &name,
        json!({"role": new_member.role, "invite_id": parsed.id, "api_key": key.id}),
    );
    event.actor = Some(Actor {
        principal_id: new_member.id.clone(),
        kind: PrincipalKind::Member.as_str_name().to_owned(),
        display_name: new_member.email.clone(),
        key_id: String::new(),
    });
    identity.outbox.commit(tx, event).await?;
    Ok(AcceptInviteResponse {
        member: Some(member(new_member)),
        api_key: Some(keys::api_key(key, name)),
        api_key_secret: secret,
    })
}

pub(super) async fn list(
    identity: &Identity,
    caller: &Principal,
    req: ListInvitesRequest,
) -> Result<ListInvitesResponse> {
    let org = parent_org(caller, &req.parent)?;
    let query = Query::new("ListInvites", org).with([u8::from(req.show_inactive)]);
    let page = Page::read(req.page_size, &req.page_token, MAX_PAGE, &query)?;
    let now = now_micros();
    let mut rows = store::list(
        &identity.db.pool,
        org,
        page.start_after(),
        page.limit(),
        req.show_inactive,
        now,
    )
    .await?;
    let next_page_token = page.finish(&mut rows, &query, |r| r.id.clone());
    Ok(ListInvitesResponse {
        invites: rows.into_iter().map(|r| invite(r, now)).collect(),
        next_page_token,
    })
}

pub(super) async fn revoke(
    identity: &Identity,
    caller: &Principal,
    req: RevokeInviteRequest,
) -> Result<RevokeInviteResponse> {
    let id = own_child(caller, &req.name, COLLECTION)?;
    let org = caller_org(caller)?;
    let mut row = store::get(&identity.db.pool, org, id)
        .await?
        .ok_or_else(|| Error::not_found(names::truncate(&req.name)))?;
    if row.accept_time.is_some() {
        return Err(Error::FailedPrecondition(format!(
            "{} has already been accepted; remove the member instead",
            names::truncate(&req.name)
        )));
    }
    let now = now_micros();
    if row.revoke_time.is_none() {
        let mut tx = identity.db.begin_write().await?;
        if !store::revoke_pending(&mut *tx, id, now).await? {
            // Accepted or revoked in between.
            return Err(Error::FailedPrecondition(format!(
                "{} is no longer pending",
                names::truncate(&req.name)
            )));
        }
        let details = json!({"email": row.email, "role": row.role, "inviter": row.created_by});
        identity
            .outbox
            .commit(
                tx,
                identity
                    .outbox
                    .success(Some(caller), "member.invite_revoke", &req.name, details),
            )
            .await?;
        row.revoke_time = Some(now);
    }
    Ok(RevokeInviteResponse {
        invite: Some(invite(row, now)),
    })
}
