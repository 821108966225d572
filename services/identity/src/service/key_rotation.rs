//! `RotateApiKey`: one transaction mints the successor of a key (same
//! owner, name, role, scope and lifetime, capped by the organization's
//! current maximum) and revokes the old key, or lets it expire after a
//! grace period so deployments can switch over. The new secret is only in
//! the response.

use std::time::Duration;

use paddock_proto::identity::v1::*;
use paddock_shared::auth::Invalidation;
use paddock_shared::error::{Error, Result};
use paddock_shared::names::{self, child_name};
use paddock_shared::outbox;
use paddock_shared::rbac::Grant;
use paddock_shared::time::{self, now_micros};
use serde_json::json;

use crate::authn::split_scope;

use super::keys::{self, NewKey, api_key};
use super::request::{caller_org, own_child};
use super::roles::{caller_permissions, lacking};
use super::{Identity, organizations};
use crate::store::agents;
use crate::store::api_keys::{self as store, KeyRow};

/// The longest an old key may keep working beside its successor.
const MAX_GRACE: Duration = Duration::from_secs(7 * 86_400);

pub(super) async fn rotate(
    identity: &Identity,
    caller: &Principal,
    req: RotateApiKeyRequest,
) -> Result<RotateApiKeyResponse> {
    let name = req.name;
    let id = own_child(caller, &name, "apiKeys")?.to_owned();
    let org = caller_org(caller)?.to_owned();
    let grace = match &req.grace_period {
        None => Duration::ZERO,
        Some(d) => time::duration(d)
            .filter(|d| *d <= MAX_GRACE)
            .ok_or_else(|| Error::invalid("grace_period must be between 0s and 7d"))?,
    };
    let old = store::get(&identity.db.pool, &org, &id)
        .await?
        .ok_or_else(|| Error::not_found(names::truncate(&name)))?;
    let owner_id = old.owner_id.clone();
    // Not even its existence leaks to someone who may not see it.
    if !identity
        .admission
        .allows(caller, "api_keys.read", &name, &owner_id)
        .await
        .map_err(Error::from_status)?
    {
        return Err(Error::not_found(names::truncate(&name)));
    }
    identity
        .admission
        .require(caller, "api_keys.manage_own", &name, &owner_id)
        .await
        .map_err(Error::from_status)?;
    if old.sandbox.is_some() {
        return Err(Error::FailedPrecondition(format!(
            "{name} is a sandbox session token; it ends with its sandbox and is not rotated"
        )));
    }
    let now = now_micros();
    if old.revoke_time.is_some() || old.expire_time.is_some_and(|e| e <= now) {
        return Err(Error::FailedPrecondition(format!(
            "{name} is already {}; mint a new key instead",
            if old.revoke_time.is_some() {
                "revoked"
            } else {
                "expired"
            }
        )));
    }
    let owner_role = owner_role(identity, caller, &org, &owner_id).await?;
    // The successor holds what the old key held; the caller must hold it too.
    let mine = caller_permissions(caller);
    let scope = split_scope(&old.scope);
    let held = Grant::of(&owner_role, &old.role, &scope).effective();
    if !held.is_subset_of(mine) {
        return Err(Error::PermissionDenied(format!(
            "cannot rotate {name}: its successor would hold {}, which you do not",
            lacking(held, mine).join(", ")
        )));
    }
    let expire = successor_expiry(identity, &org, &old, now).await?;
    let old_expire = if grace.is_zero() {
        old.expire_time
    } else {
        let until = now.saturating_add(grace.as_micros() as i64);
        Some(old.expire_time.map_or(until, |e| e.min(until)))
    };
    let revoke = grace.is_zero().then_some(now);

    let mut tx = identity.db.begin_write().await?;
    if !store::retire(&mut *tx, &id, revoke, old_expire).await? {
        // Revoked between the read and this write.
        return Err(Error::FailedPrecondition(format!(
            "{name} is already revoked; mint a new key instead"
        )));
    }
    let (new_row, secret) = keys::insert(
        &mut tx,
        NewKey {
            org: &org,
            owner_id: &owner_id,
            display_name: &old.display_name,
            role: &old.role,
            scope: &scope,
            expire,
            created_by: &caller.name,
            sandbox: None,
        },
    )
    .await?;
    let owner = keys::owner_name(identity, &org, &owner_id).await?;
    let new_name = child_name(&org, "apiKeys", &new_row.id);
    let created = identity.outbox.success(
        Some(caller),
        "apikey.create",
        &new_name,
        json!({"owner": owner, "role": old.role, "scope": scope, "expire_time_us": expire, "rotated_from": name}),
    );
    outbox::record(&mut tx, &created).await?;
    let details = json!({
        "owner": owner,
        "replaced_by": new_name,
        "grace_period_s": grace.as_secs(),
        "expire_time_us": old_expire,
    });
    identity
        .outbox
        .commit(
            tx,
            identity
                .outbox
                .success(Some(caller), "apikey.rotate", &name, details),
        )
        .await?;
    identity.publish(Invalidation::Key(id));
    let mut replaced = old;
    replaced.revoke_time = revoke;
    replaced.expire_time = old_expire;
    Ok(RotateApiKeyResponse {
        api_key: Some(api_key(new_row, owner.clone())),
        secret,
        replaced: Some(api_key(replaced, owner)),
    })
}

/// The owner's current role. A key owned by another member is theirs
/// alone: minting its successor would let the caller act as them.
async fn owner_role(
    identity: &Identity,
    caller: &Principal,
    org: &str,
    owner_id: &str,
) -> Result<String> {
    if owner_id == caller.id {
        return Ok(caller.role.clone());
    }
    match agents::role_by_id(&identity.db.pool, org, owner_id).await? {
        Some(role) => Ok(role),
        None => Err(Error::PermissionDenied(format!(
            "cannot rotate a key owned by another member ({}): members rotate their own keys; revoke it instead",
            child_name(org, "members", owner_id)
        ))),
    }
}

/// The old key's lifetime from now, within the organization's current
/// maximum; a key that never expired stays so only where that is allowed.
async fn successor_expiry(
    identity: &Identity,
    org: &str,
    old: &KeyRow,
    now: i64,
) -> Result<Option<i64>> {
    let (max, allow_never) = organizations::key_settings(identity, org).await?;
    let max = max.as_micros().min(i64::MAX as u128) as i64;
    Ok(match old.expire_time {
        None if allow_never => None,
        None => Some(now.saturating_add(max)),
        Some(expire) => {
            let lifetime = expire.saturating_sub(old.create_time).clamp(1, max);
            Some(now.saturating_add(lifetime))
        }
    })
}
