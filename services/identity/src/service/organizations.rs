//! Organizations: creating one (with its first owner and the owner's key),
//! reading and updating its settings, deleting it (leaving a tombstone so
//! its id is never reused), and the platform's views across tenants.

use std::time::Duration;

use paddock_proto::identity::v1::*;
use paddock_shared::auth::Invalidation;
use paddock_shared::error::{Error, Result};
use paddock_shared::names::{self, child_name, org_name, validate_id, validate_text};
use paddock_shared::time::{self, now_micros, timestamp};
use serde_json::json;

use super::keys::{self, DEFAULT_KEY_LIFETIME, NewKey};
use super::members::member;
use super::request::{MAX_PAGE, mask_paths, parent_org};
use super::{Identity, new_principal_id};
use crate::store::members::MemberRow;
use crate::store::organizations::{self as store, OrgRow};
use paddock_shared::page::{Page, Query};

fn organization(row: OrgRow) -> Organization {
    Organization {
        name: org_name(&row.id),
        display_name: row.display_name,
        settings: Some(OrganizationSettings {
            max_key_lifetime: Some(time::proto_duration(Duration::from_secs(
                row.max_key_lifetime_secs.max(0) as u64,
            ))),
            allow_non_expiring_keys: row.allow_non_expiring_keys != 0,
        }),
        create_time: Some(timestamp(row.create_time)),
    }
}

pub(super) async fn create(
    identity: &Identity,
    caller: &Principal,
    req: CreateOrganizationRequest,
) -> Result<CreateOrganizationResponse> {
    validate_id("organization", &req.organization_id)?;
    validate_text("display_name", &req.display_name, 200)?;
    let email = names::normalize_email(&req.owner_email)?;
    let org = req.organization_id;
    let now = now_micros();
    let owner_id = new_principal_id('m');
    let mut tx = identity.db.begin_write().await?;
    // A deleted organization's id stays taken: whatever another service
    // still holds under it must never reach a new tenant.
    if store::is_tombstoned(&mut *tx, &org).await? {
        return Err(Error::FailedPrecondition(format!(
            "organization id {org} was used before and cannot be reused"
        )));
    }
    let max_secs = DEFAULT_KEY_LIFETIME.as_secs() as i64;
    store::insert(&mut *tx, &org, &req.display_name, max_secs, now)
        .await
        .map_err(|e| Error::exists_or(e, &org_name(&org)))?;
    let owner = MemberRow {
        id: owner_id,
        org_id: org.clone(),
        email,
        role: "owner".into(),
        create_time: now,
    };
    crate::store::members::insert(&mut *tx, &owner).await?;
    let expire = Some(now.saturating_add(DEFAULT_KEY_LIFETIME.as_micros() as i64));
    let (key, secret) = keys::insert(
        &mut tx,
        NewKey {
            org: &org,
            owner_id: &owner.id,
            display_name: "owner",
            role: "",
            scope: &[],
            expire,
            created_by: "platform",
            sandbox: None,
        },
    )
    .await?;
    let owner_name = child_name(&org, "members", &owner.id);
    let details = json!({"owner": owner_name, "owner_email": owner.email, "owner_key": key.id});
    identity
        .outbox
        .commit(
            tx,
            identity.outbox.success(
                Some(caller),
                "organization.create",
                &org_name(&org),
                details,
            ),
        )
        .await?;
    Ok(CreateOrganizationResponse {
        organization: Some(organization(OrgRow {
            id: org,
            display_name: req.display_name,
            max_key_lifetime_secs: max_secs,
            allow_non_expiring_keys: 0,
            create_time: now,
        })),
        owner: Some(member(owner)),
        owner_key: Some(keys::api_key(key, owner_name)),
        owner_key_secret: secret,
    })
}

pub(super) async fn get(
    identity: &Identity,
    caller: &Principal,
    req: GetOrganizationRequest,
) -> Result<GetOrganizationResponse> {
    let org = parent_org(caller, &req.name)?;
    let row = store::get(&identity.db.pool, org)
        .await?
        .ok_or_else(|| Error::not_found(org_name(org)))?;
    Ok(GetOrganizationResponse {
        organization: Some(organization(row)),
    })
}

pub(super) async fn update(
    identity: &Identity,
    caller: &Principal,
    req: UpdateOrganizationRequest,
) -> Result<UpdateOrganizationResponse> {
    let update = req
        .organization
        .ok_or_else(|| Error::invalid("organization is required"))?;
    let org = parent_org(caller, &update.name)?.to_owned();
    let paths = mask_paths(
        req.update_mask.as_ref(),
        &[
            "display_name",
            "settings.max_key_lifetime",
            "settings.allow_non_expiring_keys",
        ],
    )?;
    let settings = update.settings.unwrap_or_default();
    let mut tx = identity.db.begin_write().await?;
    for path in &paths {
        match path.as_str() {
            "display_name" => {
                validate_text("display_name", &update.display_name, 200)?;
                store::set_display_name(&mut *tx, &org, &update.display_name).await?;
            }
            "settings.max_key_lifetime" => {
                let d = settings
                    .max_key_lifetime
                    .as_ref()
                    .and_then(time::duration)
                    .filter(|d| !d.is_zero() && d.as_secs() <= 10 * 365 * 86_400)
                    .ok_or_else(|| {
                        Error::invalid("settings.max_key_lifetime must be between 1s and 10 years")
                    })?;
                store::set_max_key_lifetime_secs(&mut *tx, &org, d.as_secs().max(1) as i64).await?;
            }
            _ => {
                store::set_allow_non_expiring_keys(
                    &mut *tx,
                    &org,
                    settings.allow_non_expiring_keys,
                )
                .await?;
            }
        }
    }
    let details = json!({"update_mask": paths});
    identity
        .outbox
        .commit(
            tx,
            identity.outbox.success(
                Some(caller),
                "organization.update",
                &org_name(&org),
                details,
            ),
        )
        .await?;
    let current = get(
        identity,
        caller,
        GetOrganizationRequest {
            name: String::new(),
        },
    )
    .await?;
    Ok(UpdateOrganizationResponse {
        organization: current.organization,
    })
}

pub(super) async fn delete(
    identity: &Identity,
    caller: &Principal,
    req: DeleteOrganizationRequest,
) -> Result<DeleteOrganizationResponse> {
    let org = parent_org(caller, &req.name)?.to_owned();
    let mut tx = identity.db.begin_write().await?;
    if !store::delete(&mut tx, &org).await? {
        return Err(Error::not_found(org_name(&org)));
    }
    // The tombstone commits with the delete: the other services purge
    // from it, so no deletion is ever missed.
    store::insert_tombstone(&mut *tx, &org, now_micros()).await?;
    identity
        .outbox
        .commit(
            tx,
            identity.outbox.success(
                Some(caller),
                "organization.delete",
                &org_name(&org),
                json!({}),
            ),
        )
        .await?;
    identity.publish(Invalidation::Organization(org_name(&org)));
    Ok(DeleteOrganizationResponse {})
}

/// `ListOrganizations`: the platform operator's view across tenants (the
/// admission layer admits only the bootstrap token).
pub(super) async fn list(
    identity: &Identity,
    req: ListOrganizationsRequest,
) -> Result<ListOrganizationsResponse> {
    let query = Query::new("ListOrganizations", "");
    let page = Page::read(req.page_size, &req.page_token, MAX_PAGE, &query)?;
    let mut rows = store::list(&identity.db.pool, page.start_after(), page.limit()).await?;
    let next_page_token = page.finish(&mut rows, &query, |r| r.id.clone());
    Ok(ListOrganizationsResponse {
        organizations: rows.into_iter().map(organization).collect(),
        next_page_token,
    })
}

/// Services only (declared internal): tombstones of every organization.
pub(super) async fn list_deleted(
    identity: &Identity,
    req: ListDeletedOrganizationsRequest,
) -> Result<ListDeletedOrganizationsResponse> {
    let query = Query::new("ListDeletedOrganizations", "");
    let page = Page::read(req.page_size, &req.page_token, MAX_PAGE, &query)?;
    let mut rows =
        store::list_tombstones(&identity.db.pool, page.start_after(), page.limit()).await?;
    let next_page_token = page.finish(&mut rows, &query, |r| r.id.clone());
    Ok(ListDeletedOrganizationsResponse {
        organizations: rows
            .into_iter()
            .map(|r| DeletedOrganization {
                name: org_name(&r.id),
                delete_time: Some(timestamp(r.delete_time)),
            })
            .collect(),
        next_page_token,
    })
}

/// The organization's maximum key lifetime, and whether keys may never
/// expire.
pub(super) async fn key_settings(identity: &Identity, org: &str) -> Result<(Duration, bool)> {
    let row = store::key_settings(&identity.db.pool, org)
        .await?
        .ok_or_else(|| Error::not_found(org_name(org)))?;
    Ok((
        Duration::from_secs(row.max_key_lifetime_secs.max(0) as u64),
        row.allow_non_expiring_keys != 0,
    ))
}
