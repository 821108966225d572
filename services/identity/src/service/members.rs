//! Members: the people of an organization. Listing and reading them,
//! changing a member's role (never above the caller's own, and never
//! leaving the organization without an owner), and removing one with
//! their keys and the invites they made. Members join through invites
//! (`invites.rs`) or as an organization's first owner.

use paddock_proto::identity::v1::*;
use paddock_shared::auth::Invalidation;
use paddock_shared::error::{Error, Result};
use paddock_shared::names::{self, child_name};
use paddock_shared::rbac::Role;
use paddock_shared::time::{now_micros, timestamp};
use serde_json::json;

use super::request::{MAX_PAGE, caller_org, mask_paths, own_child, parent_org};
use super::roles::{MEMBER_ROLES, check_grantable, parse_role};
use super::{Identity, invites};
use crate::store::api_keys;
use crate::store::members::{self as store, MemberRow};
use paddock_shared::page::{Page, Query};

pub(super) fn member(row: MemberRow) -> Member {
    Member {
        name: child_name(&row.org_id, "members", &row.id),
        email: row.email,
        role: row.role,
        create_time: Some(timestamp(row.create_time)),
    }
}

/// Owners must keep at least one owner.
async fn ensure_other_owner(identity: &Identity, org: &str, member_id: &str) -> Result<()> {
    if store::other_owners(&identity.db.pool, org, member_id).await? == 0 {
        return Err(Error::FailedPrecondition(
            "the organization must keep at least one owner".into(),
        ));
    }
    Ok(())
}

pub(super) async fn list(
    identity: &Identity,
    caller: &Principal,
    req: ListMembersRequest,
) -> Result<ListMembersResponse> {
    let org = parent_org(caller, &req.parent)?;
    let query = Query::new("ListMembers", org).with(&req.email);
    let page = Page::read(req.page_size, &req.page_token, MAX_PAGE, &query)?;
    let email = if req.email.is_empty() {
        None
    } else {
        Some(names::normalize_email(&req.email)?)
    };
    let mut rows = store::list(
        &identity.db.pool,
        org,
        page.start_after(),
        email.as_deref(),
        page.limit(),
    )
    .await?;
    let next_page_token = page.finish(&mut rows, &query, |r| r.id.clone());
    Ok(ListMembersResponse {
        members: rows.into_iter().map(member).collect(),
        next_page_token,
    })
}

pub(super) async fn get(
    identity: &Identity,
    caller: &Principal,
    req: GetMemberRequest,
) -> Result<GetMemberResponse> {
    let id = own_child(caller, &req.name, "members")?;
    let row = store::get(&identity.db.pool, caller_org(caller)?, id)
        .await?
        .ok_or_else(|| Error::not_found(names::truncate(&req.name)))?;
    Ok(GetMemberResponse {
        member: Some(member(row)),
    })
}

pub(super) async fn update(
    identity: &Identity,
    caller: &Principal,
    req: UpdateMemberRequest,
) -> Result<UpdateMemberResponse> {
    let update = req
        .member
        .ok_or_else(|| Error::invalid("member is required"))?;
    mask_paths(req.update_mask.as_ref(), &["role"])?;
    let org = caller_org(caller)?.to_owned();
    let id = own_child(caller, &update.name, "members")?.to_owned();
    let role = parse_role(&update.role, &MEMBER_ROLES)?;
    check_grantable(caller, role, &MEMBER_ROLES)?;
    let mut current = store::get(&identity.db.pool, &org, &id)
        .await?
        .ok_or_else(|| Error::not_found(names::truncate(&update.name)))?;
    if let Some(old) = Role::parse(&current.role) {
        check_grantable(caller, old, &[]).map_err(|_| {
            Error::PermissionDenied(format!(
                "cannot change the role of a member whose role ({}) is above your own",
                old.as_str()
            ))
        })?;
    }
    if current.role == "owner" && role != Role::Owner {
        ensure_other_owner(identity, &org, &id).await?;
    }
    let mut tx = identity.db.begin_write().await?;
    store::set_role(&mut *tx, &id, role.as_str()).await?;
    let member_name = child_name(&org, "members", &id);
    let revoked_invites =
        invites::revoke_by_inviter(&mut tx, &org, &member_name, Some(role.as_str())).await?;
    let details = json!({"role": role.as_str(), "previous_role": current.role, "revoked_invites": revoked_invites});
    identity
        .outbox
        .commit(
            tx,
            identity
                .outbox
                .success(Some(caller), "member.update", &update.name, details),
        )
        .await?;
    identity.publish(Invalidation::Principal(id));
    current.role = role.as_str().to_owned();
    Ok(UpdateMemberResponse {
        member: Some(member(current)),
    })
}

pub(super) async fn delete(
    identity: &Identity,
    caller: &Principal,
    req: DeleteMemberRequest,
) -> Result<DeleteMemberResponse> {
    let org = caller_org(caller)?.to_owned();
    let name = req.name;
    let id = own_child(caller, &name, "members")?.to_owned();
    let role = store::role(&identity.db.pool, &org, &id)
        .await?
        .ok_or_else(|| Error::not_found(names::truncate(&name)))?;
    if role == "owner" {
        ensure_other_owner(identity, &org, &id).await?;
    }
    let member_name = child_name(&org, "members", &id);
    let mut tx = identity.db.begin_write().await?;
    api_keys::delete_owned_by(&mut *tx, &id).await?;
    // The keys the member minted for agents go with them: a removed
    // admin must not keep acting through an agent key they hold.
    let revoked = api_keys::revoke_created_by(&mut *tx, &org, &member_name, now_micros()).await?;
    let revoked_invites = invites::revoke_by_inviter(&mut tx, &org, &member_name, None).await?;
    store::delete(&mut *tx, &id).await?;
    let key_names: Vec<String> = revoked
        .iter()
        .map(|key| child_name(&org, "apiKeys", key))
        .collect();
    let details =
        json!({"role": role, "revoked_api_keys": key_names, "revoked_invites": revoked_invites});
    identity
        .outbox
        .commit(
            tx,
            identity
                .outbox
                .success(Some(caller), "member.remove", &name, details),
        )
        .await?;
    identity.publish(Invalidation::Principal(id));
    for key in revoked {
        identity.publish(Invalidation::Key(key));
    }
    Ok(DeleteMemberResponse {})
}
