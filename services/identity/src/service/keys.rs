//! API keys: minting one (for the caller, or for an agent; never above the
//! caller's own permissions, and within the organization's key lifetime),
//! listing them (other owners' keys only with `api_keys.read`), and
//! revoking one. Every key is minted through [`insert`], also for new
//! owners, joining members, rotations and session tokens.

use std::time::Duration;

use paddock_proto::identity::v1::*;
use paddock_shared::auth::Invalidation;
use paddock_shared::error::{Error, Result};
use paddock_shared::names::{self, child_name, org_name, parse_child, validate_text};
use paddock_shared::rbac::{Grant, Role};
use paddock_shared::time::{self, now_micros, opt_timestamp, timestamp};
use paddock_shared::token::{self, TokenKind};
use serde_json::json;

use super::request::{MAX_PAGE, caller_org, own_child, parent_org};
use super::roles::{caller_permissions, lacking, parse_role, validate_scope};
use super::{Identity, organizations};
use crate::authn::split_scope;
use crate::store::agents;
use crate::store::api_keys::{self as store, KeyRow, ListFilter};
use paddock_shared::page::{Page, Query};

/// The lifetime of a new organization's keys, and its first maximum.
pub(super) const DEFAULT_KEY_LIFETIME: Duration = Duration::from_secs(90 * 86_400);

/// A key row with its owner's resource name resolved by the caller.
pub(super) fn api_key(row: KeyRow, owner: String) -> ApiKey {
    ApiKey {
        name: child_name(&row.org_id, "apiKeys", &row.id),
        display_name: row.display_name,
        owner,
        role: row.role,
        scope: split_scope(&row.scope),
        expire_time: opt_timestamp(row.expire_time),
        created_by: row.created_by,
        create_time: Some(timestamp(row.create_time)),
        last_used_time: opt_timestamp(row.last_used_time),
        revoke_time: opt_timestamp(row.revoke_time),
        sandbox: row.sandbox.unwrap_or_default(),
    }
}

/// The fields of a key about to be minted.
pub(super) struct NewKey<'a> {
    pub org: &'a str,
    pub owner_id: &'a str,
    pub display_name: &'a str,
    pub role: &'a str,
    pub scope: &'a [String],
    pub expire: Option<i64>,
    pub created_by: &'a str,
    /// The sandbox of a session token.
    pub sandbox: Option<&'a str>,
}

/// Mints a key and inserts its row (inside `tx`); returns the row and the
/// secret.
pub(super) async fn insert(
    tx: &mut sqlx::AnyConnection,
    key: NewKey<'_>,
) -> Result<(KeyRow, String)> {
    let (id, secret) = token::mint(TokenKind::ApiKey);
    let row = KeyRow {
        id,
        org_id: key.org.to_owned(),
        owner_id: key.owner_id.to_owned(),
        display_name: key.display_name.to_owned(),
        role: key.role.to_owned(),
        scope: key.scope.join(","),
        expire_time: key.expire,
        created_by: key.created_by.to_owned(),
        create_time: now_micros(),
        last_used_time: None,
        revoke_time: None,
        sandbox: key.sandbox.map(str::to_owned),
    };
    store::insert(&mut *tx, &row, &token::hash(&secret)).await?;
    Ok((row, secret))
}

/// The resource name of a key's owner; empty for an agent that is gone.
pub(super) async fn owner_name(identity: &Identity, org: &str, owner_id: &str) -> Result<String> {
    if owner_id.starts_with('a') {
        let row = agents::by_id(&identity.db.pool, owner_id).await?;
        Ok(row
            .map(|a| child_name(org, "agents", &a.agent_id))
            .unwrap_or_default())
    } else {
        Ok(child_name(org, "members", owner_id))
    }
}

/// The expiry of a new key under the org's settings.
async fn expiry(
    identity: &Identity,
    org: &str,
    ttl: Option<&prost_types::Duration>,
    never: bool,
) -> Result<Option<i64>> {
    let (max, allow_never) = organizations::key_settings(identity, org).await?;
    if never {
        if ttl.is_some() {
            return Err(Error::invalid("set either ttl or never_expires, not both"));
        }
        if !allow_never {
            return Err(Error::FailedPrecondition(
                "this organization does not allow keys that never expire (settings.allow_non_expiring_keys)".into(),
            ));
        }
        return Ok(None);
    }
    let ttl = match ttl {
        None => max,
        Some(d) => time::duration(d)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| Error::invalid("ttl must be positive"))?,
    };
    if ttl > max {
        return Err(Error::invalid(format!(
            "ttl {} exceeds the organization's maximum key lifetime of {} (settings.max_key_lifetime)",
            paddock_shared::units::human_seconds(ttl.as_secs()),
            paddock_shared::units::human_seconds(max.as_secs())
        )));
    }
    Ok(Some(now_micros().saturating_add(ttl.as_micros() as i64)))
}

/// Whose key a request mints: the caller's own, or a named agent's (never
/// another member's). Returns the owner's id, resource name and role.
async fn new_key_owner(
    identity: &Identity,
    caller: &Principal,
    org: &str,
    owner: &str,
) -> Result<(String, String, String)> {
    if owner.is_empty() || owner == caller.name {
        return Ok((caller.id.clone(), caller.name.clone(), caller.role.clone()));
    }
    if let Ok((o, agent_id)) = parse_child(owner, "agents") {
        let row = agents::get(&identity.db.pool, org, agent_id).await?;
        let row = row
            .filter(|_| o == org)
            .ok_or_else(|| Error::not_found(names::truncate(owner)))?;
        return Ok((row.id, owner.to_owned(), row.role));
    }
    let (o, _) = parse_child(owner, "members")
        .map_err(|_| Error::invalid("owner must be a member or agent resource name"))?;
    if o != org {
        return Err(Error::not_found(names::truncate(owner)));
    }
    // A key acts as its owner in every check and in the audit trail:
    // minting one for another person would let the minter act as them (an
    // admin as the owner), and outlive the minter.
    Err(Error::PermissionDenied(format!(
        "cannot mint a key owned by another member ({}): members mint their own keys; api_keys.manage covers keys for agents only",
        names::truncate(owner)
    )))
}

pub(super) async fn create(
    identity: &Identity,
    caller: &Principal,
    req: CreateApiKeyRequest,
) -> Result<CreateApiKeyResponse> {
    let org = parent_org(caller, &req.parent)?.to_owned();
    let spec = req.api_key.unwrap_or_default();
    let display_name = if spec.display_name.is_empty() {
        "key".to_owned()
    } else {
        spec.display_name
    };
    validate_text("display_name", &display_name, 200)?;
    validate_scope(&spec.scope)?;
    let key_role: Option<Role> = if spec.role.is_empty() {
        None
    } else {
        Some(parse_role(&spec.role, &Role::ALL)?)
    };
    let (owner_id, owner_name, owner_role) =
        new_key_owner(identity, caller, &org, &spec.owner).await?;
    let key_resource = child_name(&org, "apiKeys", "-");
    identity
        .admission
        .require(caller, "api_keys.manage_own", &key_resource, &owner_id)
        .await
        .map_err(Error::from_status)?;
    // Nobody mints a key above their own.
    let mine = caller_permissions(caller);
    if let Some(r) = key_role
        && !r
            .permissions()
            .is_subset_of(Grant::of(&caller.role, &caller.key_role, &[]).effective())
    {
        return Err(Error::PermissionDenied(format!(
            "cannot mint a key with role {}: it is above your own",
            r.as_str()
        )));
    }
    let new = Grant::of(&owner_role, &spec.role, &spec.scope).effective();
    if !new.is_subset_of(mine) {
        return Err(Error::PermissionDenied(format!(
            "cannot mint a key above your own permissions (it would hold {}); narrow it with role or scope",
            lacking(new, mine).join(", ")
        )));
    }
    let expire = expiry(identity, &org, req.ttl.as_ref(), req.never_expires).await?;
    let mut tx = identity.db.begin_write().await?;
    let (row, secret) = insert(
        &mut tx,
        NewKey {
            org: &org,
            owner_id: &owner_id,
            display_name: &display_name,
            role: &spec.role,
            scope: &spec.scope,
            expire,
            created_by: &caller.name,
            sandbox: None,
        },
    )
    .await?;
    let key_name = child_name(&org, "apiKeys", &row.id);
    let details = json!({"owner": owner_name, "role": spec.role, "scope": spec.scope, "expire_time_us": expire});
    identity
        .outbox
        .commit(
            tx,
            identity
                .outbox
                .success(Some(caller), "apikey.create", &key_name, details),
        )
        .await?;
    Ok(CreateApiKeyResponse {
        api_key: Some(api_key(row, owner_name)),
        secret,
    })
}

pub(super) async fn list(
    identity: &Identity,
    caller: &Principal,
    req: ListApiKeysRequest,
) -> Result<ListApiKeysResponse> {
    let org = parent_org(caller, &req.parent)?.to_owned();
    let all = identity
        .admission
        .allows(caller, "api_keys.read", &org_name(&org), "")
        .await
        .map_err(Error::from_status)?;
    // The owner is part of the query: a token of another member's own-key
    // listing does not continue this one.
    let query = Query::new("ListApiKeys", &org)
        .with([u8::from(req.show_inactive), u8::from(all)])
        .with(if all { "" } else { caller.id.as_str() });
    let page = Page::read(req.page_size, &req.page_token, MAX_PAGE, &query)?;
    let filter = ListFilter {
        show_inactive: req.show_inactive,
        all_owners: all,
        owner_id: &caller.id,
        now: now_micros(),
    };
    let mut rows = store::list(
        &identity.db.pool,
        &org,
        page.start_after(),
        page.limit(),
        filter,
    )
    .await?;
    let next_page_token = page.finish(&mut rows, &query, |r| r.id.clone());
    let mut keys = Vec::with_capacity(rows.len());
    for row in rows {
        let owner = owner_name(identity, &org, &row.owner_id).await?;
        keys.push(api_key(row, owner));
    }
    Ok(ListApiKeysResponse {
        api_keys: keys,
        next_page_token,
    })
}

pub(super) async fn revoke(
    identity: &Identity,
    caller: &Principal,
    req: RevokeApiKeyRequest,
) -> Result<RevokeApiKeyResponse> {
    let name = req.name;
    let id = own_child(caller, &name, "apiKeys")?.to_owned();
    let org = caller_org(caller)?.to_owned();
    let mut row = store::get(&identity.db.pool, &org, &id)
        .await?
        .ok_or_else(|| Error::not_found(names::truncate(&name)))?;
    // Not even its existence leaks to someone who may not see it.
    if !identity
        .admission
        .allows(caller, "api_keys.read", &name, &row.owner_id)
        .await
        .map_err(Error::from_status)?
    {
        return Err(Error::not_found(names::truncate(&name)));
    }
    identity
        .admission
        .require(caller, "api_keys.manage_own", &name, &row.owner_id)
        .await
        .map_err(Error::from_status)?;
    let owner = owner_name(identity, &org, &row.owner_id).await?;
    if row.revoke_time.is_none() {
        let now = now_micros();
        let mut tx = identity.db.begin_write().await?;
        store::revoke(&mut *tx, &id, now).await?;
        identity
            .outbox
            .commit(
                tx,
                identity.outbox.success(
                    Some(caller),
                    "apikey.revoke",
                    &name,
                    json!({"owner": owner}),
                ),
            )
            .await?;
        row.revoke_time = Some(now);
    }
    identity.publish(Invalidation::Key(id));
    Ok(RevokeApiKeyResponse {
        api_key: Some(api_key(row, owner)),
    })
}
