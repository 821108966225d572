//! The IdentityService handlers. The admission layer has already checked
//! the RPC's declared permission in the caller's organization; handlers
//! validate input, keep resources inside the caller's organization
//! (anything else is NOT_FOUND), check ownership and escalation, then work.
//!
//! Long (1,700 lines) because organizations, members, invites, projects and
//! keys are still handled here with inline SQL; agents and lookups have
//! moved out already, and the rest splits by resource over a typed store in
//! issue 10 §5.

mod agents;
mod credentials;
mod invites;
mod key_rotation;
mod lookup;
mod organizations;
mod principals;
mod session_tokens;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use paddock_proto::audit::v1::{AuditEvent, Outcome};
use paddock_proto::identity::v1::identity_service_server::IdentityService;
use paddock_proto::identity::v1::*;
use paddock_shared::auth::{self, Admission, Authenticator, Invalidation, PrincipalCache};
use paddock_shared::db::Database;
use paddock_shared::error::{Error, Result};
use paddock_shared::names::{self, child_name, org_name, parse_child, validate_id, validate_text};
use paddock_shared::outbox;
use paddock_shared::rbac::{self, Grant, PermissionSet, Role};
use paddock_shared::time::{self, now_micros, opt_timestamp, timestamp};
use paddock_shared::token::{self, TokenKind};
use rand::Rng;
use serde_json::json;
use tokio::sync::broadcast;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tonic::{Request, Response, Status};

use crate::authn::split_scope;

/// A success event of this service, with details (never secrets).
fn audited(
    caller: Option<&Principal>,
    action: &str,
    resource: &str,
    details: serde_json::Value,
) -> AuditEvent {
    let mut event = outbox::event("identity", caller, action, resource, Outcome::Success);
    event.details_json = details.to_string();
    event
}

const DEFAULT_KEY_LIFETIME: Duration = Duration::from_secs(90 * 86_400);
const DEFAULT_INVITE_TTL: Duration = Duration::from_secs(7 * 86_400);
const MAX_INVITE_TTL: Duration = Duration::from_secs(30 * 86_400);
const MAX_PAGE: i64 = 1000;
const DEFAULT_PAGE: i64 = 50;
const MAX_SCOPE_ENTRIES: usize = 64;

pub struct Identity {
    pub db: Database,
    pub admission: Admission,
    pub cache: Arc<PrincipalCache>,
    pub authn: Arc<dyn Authenticator>,
    pub invalidations: broadcast::Sender<Invalidation>,
    /// Wakes the audit forwarder after a commit.
    pub audit_wake: Option<Arc<tokio::sync::Notify>>,
    /// Turns true when the server shuts down; ends the watch streams.
    pub closing: tokio::sync::watch::Receiver<bool>,
    /// Seals and opens stored credentials.
    pub credential_key: Arc<crate::credential_key::CredentialKey>,
    /// Agent policies (which credentials an agent may use), as a service.
    pub policy: paddock_shared::auth::PolicyClient,
}

type OrgRow = (String, String, i64, i64, i64);
type MemberRow = (String, String, String, String, i64);
type AgentRow = (String, String, String, String, String, String, i64);
type ProjectRow = (String, String, String, String, String, i64, i64);
type KeyRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    Option<i64>,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

const KEY_COLUMNS: &str = "id, org_id, owner_id, display_name, role, scope, expire_time, created_by, create_time, last_used_time, revoke_time, sandbox";

fn organization((id, display_name, max_secs, allow_never, create): OrgRow) -> Organization {
    Organization {
        name: org_name(&id),
        display_name,
        settings: Some(OrganizationSettings {
            max_key_lifetime: Some(time::proto_duration(Duration::from_secs(
                max_secs.max(0) as u64
            ))),
            allow_non_expiring_keys: allow_never != 0,
        }),
        create_time: Some(timestamp(create)),
    }
}

fn member((id, org, email, role, create): MemberRow) -> Member {
    Member {
        name: child_name(&org, "members", &id),
        email,
        role,
        create_time: Some(timestamp(create)),
    }
}

fn agent((_, org, agent_id, description, role, created_by, create): AgentRow) -> Agent {
    Agent {
        name: child_name(&org, "agents", &agent_id),
        description,
        role,
        created_by,
        create_time: Some(timestamp(create)),
    }
}

fn project(
    (org, id, display_name, description, created_by, create, update): ProjectRow,
) -> Project {
    Project {
        name: child_name(&org, "projects", &id),
        display_name,
        description,
        created_by,
        create_time: Some(timestamp(create)),
        update_time: Some(timestamp(update)),
    }
}

/// A key row with its owner's resource name resolved by the caller.
fn api_key(row: KeyRow, owner: String) -> ApiKey {
    let (
        id,
        org,
        _,
        display_name,
        role,
        scope,
        expire,
        created_by,
        create,
        last_used,
        revoked,
        sandbox,
    ) = row;
    ApiKey {
        name: child_name(&org, "apiKeys", &id),
        display_name,
        owner,
        role,
        scope: split_scope(&scope),
        expire_time: opt_timestamp(expire),
        created_by,
        create_time: Some(timestamp(create)),
        last_used_time: opt_timestamp(last_used),
        revoke_time: opt_timestamp(revoked),
        sandbox: sandbox.unwrap_or_default(),
    }
}

/// A new principal id: `m…` for members, `a…` for agents.
fn new_principal_id(prefix: char) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    std::iter::once(prefix)
        .chain((0..15).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char))
        .collect()
}

/// The caller's organization id (`acme` of `organizations/acme`).
fn caller_org(p: &Principal) -> Result<&str> {
    p.organization
        .strip_prefix("organizations/")
        .filter(|o| !o.is_empty())
        .ok_or_else(|| Error::PermissionDenied("the caller belongs to no organization".into()))
}

/// `parent` must be the caller's organization; empty means it.
fn parent_org<'a>(caller: &'a Principal, parent: &str) -> Result<&'a str> {
    let org = caller_org(caller)?;
    if parent.is_empty() {
        return Ok(org);
    }
    if names::parse_org(parent)? != org {
        return Err(Error::not_found(names::truncate(parent)));
    }
    Ok(org)
}

/// A child resource in the caller's organization; elsewhere is NOT_FOUND.
fn own_child<'a>(caller: &Principal, name: &'a str, collection: &str) -> Result<&'a str> {
    let org = caller_org(caller)?;
    let (o, id) = parse_child(name, collection)?;
    if o != org {
        return Err(Error::not_found(names::truncate(name)));
    }
    Ok(id)
}

struct Page {
    size: i64,
    after: String,
}

fn page(size: i32, token: &str) -> Result<Page> {
    if size < 0 {
        return Err(Error::invalid("page_size must not be negative"));
    }
    let size = if size == 0 {
        DEFAULT_PAGE
    } else {
        i64::from(size).min(MAX_PAGE)
    };
    let after = if token.is_empty() {
        String::new()
    } else {
        decode_token(token).ok_or_else(|| Error::invalid("invalid page_token"))?
    };
    Ok(Page { size, after })
}

fn encode_token(key: &str) -> String {
    paddock_shared::hex::encode(key.as_bytes())
}

fn decode_token(token: &str) -> Option<String> {
    if token.len() > 256 {
        return None;
    }
    String::from_utf8(paddock_shared::hex::decode(token)?).ok()
}

/// Cuts the extra row fetched to learn whether another page exists.
fn next_page<T>(rows: &mut Vec<T>, page: &Page, key: impl Fn(&T) -> String) -> String {
    if rows.len() as i64 > page.size {
        rows.truncate(page.size as usize);
        rows.last()
            .map(|r| encode_token(&key(r)))
            .unwrap_or_default()
    } else {
        String::new()
    }
}

/// The roles a member may hold: `agent` is for AI-agent identities.
const MEMBER_ROLES: [Role; 3] = [Role::Owner, Role::Admin, Role::Developer];

/// `owner, admin or developer`.
fn role_list(roles: &[Role]) -> String {
    let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    match names.split_last() {
        None => "none".to_owned(),
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// A role name that must be one of `allowed` (the hint lists only those).
fn parse_role(role: &str, allowed: &[Role]) -> Result<Role> {
    Role::parse(role)
        .filter(|r| allowed.contains(r))
        .ok_or_else(|| {
            let extra = if Role::parse(role) == Some(Role::Agent) {
                " (role agent is for AI-agent identities; create an agent instead)"
            } else {
                ""
            };
            Error::invalid(format!(
                "{} role {:?}: use {}{extra}",
                if Role::parse(role).is_some() {
                    "not allowed here:"
                } else {
                    "unknown"
                },
                names::truncate(role),
                role_list(allowed)
            ))
        })
}

fn caller_permissions(caller: &Principal) -> PermissionSet {
    Grant::of(&caller.role, &caller.key_role, &caller.scope).effective()
}

/// Nobody grants a role above their own (their key's effective set). The
/// refusal lists the roles of `allowed` the caller may grant.
fn check_grantable(caller: &Principal, role: Role, allowed: &[Role]) -> Result<()> {
    let mine = caller_permissions(caller);
    let lacks = |r: Role| -> Vec<&'static str> {
        r.permissions()
            .names()
            .into_iter()
            .filter(|p| !mine.contains(rbac::permission_index(p).unwrap_or(0)))
            .collect()
    };
    let missing = lacks(role);
    if missing.is_empty() {
        return Ok(());
    }
    let grantable: Vec<Role> = allowed
        .iter()
        .copied()
        .filter(|r| lacks(*r).is_empty())
        .collect();
    let hint = if grantable.is_empty() {
        String::new()
    } else {
        format!("; you may grant {}", role_list(&grantable))
    };
    Err(Error::PermissionDenied(format!(
        "cannot grant role {}: it is above your own (you lack {}){hint}",
        role.as_str(),
        missing.join(", ")
    )))
}

fn validate_scope(scope: &[String]) -> Result<()> {
    if scope.len() > MAX_SCOPE_ENTRIES {
        return Err(Error::invalid(format!(
            "scope has more than {MAX_SCOPE_ENTRIES} entries"
        )));
    }
    rbac::scope_permissions(scope).map(|_| ()).map_err(|bad| {
        Error::invalid(format!(
            "unknown scope entry {:?}: use read-only, ci-cd, agent-execution or permission names",
            names::truncate(&bad)
        ))
    })
}

fn mask_paths(mask: Option<&prost_types::FieldMask>, allowed: &[&str]) -> Result<Vec<String>> {
    let paths = mask.map(|m| m.paths.clone()).unwrap_or_default();
    for p in &paths {
        if !allowed.contains(&p.as_str()) {
            return Err(Error::invalid(format!(
                "update_mask path {:?} cannot be updated; allowed: {}",
                names::truncate(p),
                allowed.join(", ")
            )));
        }
    }
    Ok(if paths.is_empty() {
        allowed.iter().map(|s| (*s).to_owned()).collect()
    } else {
        paths
    })
}

impl Identity {
    fn publish(&self, change: Invalidation) {
        self.cache.invalidate(&change);
        let _ = self.invalidations.send(change);
    }

    async fn org_settings(&self, org: &str) -> Result<(Duration, bool)> {
        let row: Option<(i64, i64)> = sqlx::query_as("SELECT max_key_lifetime_secs, allow_non_expiring_keys FROM organizations WHERE id = $1")
            .bind(org)
            .fetch_optional(&self.db.pool)
            .await?;
        let (secs, never) = row.ok_or_else(|| Error::not_found(org_name(org)))?;
        Ok((Duration::from_secs(secs.max(0) as u64), never != 0))
    }

    /// The expiry of a new key under the org's settings.
    async fn key_expiry(
        &self,
        org: &str,
        ttl: Option<&prost_types::Duration>,
        never: bool,
    ) -> Result<Option<i64>> {
        let (max, allow_never) = self.org_settings(org).await?;
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

    /// Records the audit event of a change in the change's own transaction,
    /// commits both, and wakes the forwarder.
    async fn commit_audited(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Any>,
        event: AuditEvent,
    ) -> Result<()> {
        outbox::record(&mut tx, &event).await?;
        tx.commit().await?;
        self.wake_audit();
        Ok(())
    }

    /// Wakes the forwarder after a commit that recorded events.
    fn wake_audit(&self) {
        if let Some(wake) = &self.audit_wake {
            wake.notify_one();
        }
    }

    /// Owners must keep at least one owner.
    async fn ensure_other_owner(&self, org: &str, member_id: &str) -> Result<()> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM members WHERE org_id = $1 AND role = 'owner' AND id <> $2",
        )
        .bind(org)
        .bind(member_id)
        .fetch_one(&self.db.pool)
        .await?;
        if n == 0 {
            return Err(Error::FailedPrecondition(
                "the organization must keep at least one owner".into(),
            ));
        }
        Ok(())
    }

    async fn owner_name(&self, org: &str, owner_id: &str) -> Result<String> {
        if owner_id.starts_with('a') {
            let row: Option<(String,)> =
                sqlx::query_as("SELECT agent_id FROM agents WHERE id = $1")
                    .bind(owner_id)
                    .fetch_optional(&self.db.pool)
                    .await?;
            Ok(row
                .map(|(a,)| child_name(org, "agents", &a))
                .unwrap_or_default())
        } else {
            Ok(child_name(org, "members", owner_id))
        }
    }

    /// Inserts a key row (inside `tx`); returns the row and the secret.
    async fn insert_key(tx: &mut sqlx::AnyConnection, key: NewKey<'_>) -> Result<(KeyRow, String)> {
        let NewKey {
            org,
            owner_id,
            display_name,
            role,
            scope,
            expire,
            created_by,
            sandbox,
        } = key;
        let (id, secret) = token::mint(TokenKind::ApiKey);
        let now = now_micros();
        let scope = scope.join(",");
        sqlx::query(
            "INSERT INTO api_keys (id, org_id, owner_id, display_name, secret_hash, role, scope, expire_time, created_by, create_time, sandbox) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&id)
        .bind(org)
        .bind(owner_id)
        .bind(display_name)
        .bind(token::hash(&secret))
        .bind(role)
        .bind(&scope)
        .bind(expire)
        .bind(created_by)
        .bind(now)
        .bind(sandbox)
        .execute(&mut *tx)
        .await?;
        let row = (
            id,
            org.to_owned(),
            owner_id.to_owned(),
            display_name.to_owned(),
            role.to_owned(),
            scope,
            expire,
            created_by.to_owned(),
            now,
            None,
            None,
            sandbox.map(str::to_owned),
        );
        Ok((row, secret))
    }
}

/// The fields of a key about to be minted.
struct NewKey<'a> {
    org: &'a str,
    owner_id: &'a str,
    display_name: &'a str,
    role: &'a str,
    scope: &'a [String],
    expire: Option<i64>,
    created_by: &'a str,
    /// The sandbox of a session token.
    sandbox: Option<&'a str>,
}

fn caller<T>(req: &Request<T>) -> Result<Principal, Status> {
    auth::caller(req).cloned()
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchInvalidationsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl IdentityService for Identity {
    async fn create_organization(
        &self,
        request: Request<CreateOrganizationRequest>,
    ) -> Result<Response<CreateOrganizationResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        validate_id("organization", &req.organization_id)?;
        validate_text("display_name", &req.display_name, 200)?;
        let email = names::normalize_email(&req.owner_email)?;
        let org = req.organization_id;
        let now = now_micros();
        let owner_id = new_principal_id('m');
        let mut tx = self.db.begin_write().await.map_err(Error::from)?;
        // A deleted organization's id stays taken: whatever another service
        // still holds under it must never reach a new tenant.
        let tombstone: Option<(i64,)> =
            sqlx::query_as("SELECT delete_time FROM deleted_organizations WHERE id = $1")
                .bind(&org)
                .fetch_optional(&mut *tx)
                .await
                .map_err(Error::from)?;
        if tombstone.is_some() {
            return Err(Error::FailedPrecondition(format!(
                "organization id {org} was used before and cannot be reused"
            ))
            .into());
        }
        sqlx::query("INSERT INTO organizations (id, display_name, max_key_lifetime_secs, allow_non_expiring_keys, create_time) VALUES ($1, $2, $3, 0, $4)")
            .bind(&org)
            .bind(&req.display_name)
            .bind(DEFAULT_KEY_LIFETIME.as_secs() as i64)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::exists_or(e, &org_name(&org)))?;
        sqlx::query("INSERT INTO members (id, org_id, email, role, create_time) VALUES ($1, $2, $3, 'owner', $4)")
            .bind(&owner_id)
            .bind(&org)
            .bind(&email)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(Error::from)?;
        let expire = Some(now.saturating_add(DEFAULT_KEY_LIFETIME.as_micros() as i64));
        let (row, secret) = Self::insert_key(
            &mut tx,
            NewKey {
                org: &org,
                owner_id: &owner_id,
                display_name: "owner",
                role: "",
                scope: &[],
                expire,
                created_by: "platform",
                sandbox: None,
            },
        )
        .await?;
        let owner_name = child_name(&org, "members", &owner_id);
        let details = json!({"owner": owner_name, "owner_email": email, "owner_key": row.0});
        self.commit_audited(
            tx,
            audited(
                Some(&caller),
                "organization.create",
                &org_name(&org),
                details,
            ),
        )
        .await?;
        Ok(Response::new(CreateOrganizationResponse {
            organization: Some(organization((
                org.clone(),
                req.display_name,
                DEFAULT_KEY_LIFETIME.as_secs() as i64,
                0,
                now,
            ))),
            owner: Some(member((owner_id, org, email, "owner".into(), now))),
            owner_key: Some(api_key(row, owner_name)),
            owner_key_secret: secret,
        }))
    }

    async fn get_organization(
        &self,
        request: Request<GetOrganizationRequest>,
    ) -> Result<Response<GetOrganizationResponse>, Status> {
        let caller = caller(&request)?;
        let org = parent_org(&caller, &request.get_ref().name)?;
        let row: Option<OrgRow> = sqlx::query_as("SELECT id, display_name, max_key_lifetime_secs, allow_non_expiring_keys, create_time FROM organizations WHERE id = $1")
            .bind(org)
            .fetch_optional(&self.db.pool)
            .await
            .map_err(Error::from)?;
        let row = row.ok_or_else(|| Error::not_found(org_name(org)))?;
        Ok(Response::new(GetOrganizationResponse {
            organization: Some(organization(row)),
        }))
    }

    async fn update_organization(
        &self,
        request: Request<UpdateOrganizationRequest>,
    ) -> Result<Response<UpdateOrganizationResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let update = req
            .organization
            .ok_or_else(|| Error::invalid("organization is required"))?;
        let org = parent_org(&caller, &update.name)?.to_owned();
        let paths = mask_paths(
            req.update_mask.as_ref(),
            &[
                "display_name",
                "settings.max_key_lifetime",
                "settings.allow_non_expiring_keys",
            ],
        )?;
        let settings = update.settings.unwrap_or_default();
        let mut tx = self.db.begin_write().await.map_err(Error::from)?;
        for path in &paths {
            match path.as_str() {
                "display_name" => {
                    validate_text("display_name", &update.display_name, 200)?;
                    sqlx::query("UPDATE organizations SET display_name = $1 WHERE id = $2")
                        .bind(&update.display_name)
                        .bind(&org)
                        .execute(&mut *tx)
                        .await
                        .map_err(Error::from)?;
                }
                "settings.max_key_lifetime" => {
                    let d = settings
                        .max_key_lifetime
                        .as_ref()
                        .and_then(time::duration)
                        .filter(|d| !d.is_zero() && d.as_secs() <= 10 * 365 * 86_400)
                        .ok_or_else(|| {
                            Error::invalid(
                                "settings.max_key_lifetime must be between 1s and 10 years",
                            )
                        })?;
                    sqlx::query(
                        "UPDATE organizations SET max_key_lifetime_secs = $1 WHERE id = $2",
                    )
                    .bind(d.as_secs().max(1) as i64)
                    .bind(&org)
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::from)?;
                }
                _ => {
                    sqlx::query(
                        "UPDATE organizations SET allow_non_expiring_keys = $1 WHERE id = $2",
                    )
                    .bind(i64::from(settings.allow_non_expiring_keys))
                    .bind(&org)
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::from)?;
                }
            }
        }
        let details = json!({"update_mask": paths});
        self.commit_audited(
            tx,
            audited(
                Some(&caller),
                "organization.update",
                &org_name(&org),
                details,
            ),
        )
        .await?;
        let resp = self
            .get_organization(
                Request::new(GetOrganizationRequest {
                    name: String::new(),
                })
                .with_caller(caller),
            )
            .await?;
        Ok(Response::new(UpdateOrganizationResponse {
            organization: resp.into_inner().organization,
        }))
    }

    async fn delete_organization(
        &self,
        request: Request<DeleteOrganizationRequest>,
    ) -> Result<Response<DeleteOrganizationResponse>, Status> {
        let caller = caller(&request)?;
        let org = parent_org(&caller, &request.get_ref().name)?.to_owned();
        let mut tx = self.db.begin_write().await.map_err(Error::from)?;
        // Children first, so the delete does not depend on cascade support.
        for table in [
            "api_keys",
            "invites",
            "credentials",
            "projects",
            "agents",
            "members",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE org_id = $1"
            )))
            .bind(&org)
            .execute(&mut *tx)
            .await
            .map_err(Error::from)?;
        }
        let done = sqlx::query("DELETE FROM organizations WHERE id = $1")
            .bind(&org)
            .execute(&mut *tx)
            .await
            .map_err(Error::from)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found(org_name(&org)).into());
        }
        // The tombstone commits with the delete: the other services purge
        // from it, so no deletion is ever missed.
        sqlx::query("INSERT INTO deleted_organizations (id, delete_time) VALUES ($1, $2)")
            .bind(&org)
            .bind(now_micros())
            .execute(&mut *tx)
            .await
            .map_err(Error::from)?;
        self.commit_audited(
            tx,
            audited(
                Some(&caller),
                "organization.delete",
                &org_name(&org),
                json!({}),
            ),
        )
        .await?;
        self.publish(Invalidation::Organization(org_name(&org)));
        Ok(Response::new(DeleteOrganizationResponse {}))
    }

    async fn list_deleted_organizations(
        &self,
        request: Request<ListDeletedOrganizationsRequest>,
    ) -> Result<Response<ListDeletedOrganizationsResponse>, Status> {
        // Services only (declared internal): tombstones of every organization.
        let req = request.into_inner();
        let page = page(req.page_size, &req.page_token)?;
        let mut rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT id, delete_time FROM deleted_organizations WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(&page.after)
        .bind(page.size + 1)
        .fetch_all(&self.db.pool)
        .await
        .map_err(Error::from)?;
        let next_page_token = next_page(&mut rows, &page, |r| r.0.clone());
        Ok(Response::new(ListDeletedOrganizationsResponse {
            organizations: rows
                .into_iter()
                .map(|(id, at)| DeletedOrganization {
                    name: org_name(&id),
                    delete_time: Some(timestamp(at)),
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn create_invite(
        &self,
        request: Request<CreateInviteRequest>,
    ) -> Result<Response<CreateInviteResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(
            invites::create(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn accept_invite(
        &self,
        request: Request<AcceptInviteRequest>,
    ) -> Result<Response<AcceptInviteResponse>, Status> {
        Ok(Response::new(
            invites::accept(self, request.into_inner()).await?,
        ))
    }

    async fn list_invites(
        &self,
        request: Request<ListInvitesRequest>,
    ) -> Result<Response<ListInvitesResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(
            invites::list(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn revoke_invite(
        &self,
        request: Request<RevokeInviteRequest>,
    ) -> Result<Response<RevokeInviteResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(
            invites::revoke(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn list_members(
        &self,
        request: Request<ListMembersRequest>,
    ) -> Result<Response<ListMembersResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let org = parent_org(&caller, &req.parent)?;
        let page = page(req.page_size, &req.page_token)?;
        let mut rows: Vec<MemberRow> = if req.email.is_empty() {
            sqlx::query_as("SELECT id, org_id, email, role, create_time FROM members WHERE org_id = $1 AND id > $2 ORDER BY id LIMIT $3")
                .bind(org)
                .bind(&page.after)
                .bind(page.size + 1)
                .fetch_all(&self.db.pool)
                .await
        } else {
            let email = names::normalize_email(&req.email)?;
            sqlx::query_as("SELECT id, org_id, email, role, create_time FROM members WHERE org_id = $1 AND id > $2 AND email = $3 ORDER BY id LIMIT $4")
                .bind(org)
                .bind(&page.after)
                .bind(email)
                .bind(page.size + 1)
                .fetch_all(&self.db.pool)
                .await
        }
        .map_err(Error::from)?;
        let next_page_token = next_page(&mut rows, &page, |r| r.0.clone());
        Ok(Response::new(ListMembersResponse {
            members: rows.into_iter().map(member).collect(),
            next_page_token,
        }))
    }

    async fn get_member(
        &self,
        request: Request<GetMemberRequest>,
    ) -> Result<Response<GetMemberResponse>, Status> {
        let caller = caller(&request)?;
        let name = &request.get_ref().name;
        let id = own_child(&caller, name, "members")?;
        let row: Option<MemberRow> = sqlx::query_as("SELECT id, org_id, email, role, create_time FROM members WHERE id = $1 AND org_id = $2")
            .bind(id)
            .bind(caller_org(&caller)?)
            .fetch_optional(&self.db.pool)
            .await
            .map_err(Error::from)?;
        let row = row.ok_or_else(|| Error::not_found(names::truncate(name)))?;
        Ok(Response::new(GetMemberResponse {
            member: Some(member(row)),
        }))
    }

    async fn update_member(
        &self,
        request: Request<UpdateMemberRequest>,
    ) -> Result<Response<UpdateMemberResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let update = req
            .member
            .ok_or_else(|| Error::invalid("member is required"))?;
        mask_paths(req.update_mask.as_ref(), &["role"])?;
        let org = caller_org(&caller)?.to_owned();
        let id = own_child(&caller, &update.name, "members")?.to_owned();
        let role = parse_role(&update.role, &MEMBER_ROLES)?;
        check_grantable(&caller, role, &MEMBER_ROLES)?;
        let current: Option<MemberRow> = sqlx::query_as("SELECT id, org_id, email, role, create_time FROM members WHERE id = $1 AND org_id = $2")
            .bind(&id)
            .bind(&org)
            .fetch_optional(&self.db.pool)
            .await
            .map_err(Error::from)?;
        let mut current = current.ok_or_else(|| Error::not_found(names::truncate(&update.name)))?;
        if let Some(old) = Role::parse(&current.3) {
            check_grantable(&caller, old, &[]).map_err(|_| {
                Error::PermissionDenied(format!(
                    "cannot change the role of a member whose role ({}) is above your own",
                    old.as_str()
                ))
            })?;
        }
        if current.3 == "owner" && role != Role::Owner {
            self.ensure_other_owner(&org, &id).await?;
        }
        let mut tx = self.db.begin_write().await.map_err(Error::from)?;
        sqlx::query("UPDATE members SET role = $1 WHERE id = $2")
            .bind(role.as_str())
            .bind(&id)
            .execute(&mut *tx)
            .await
            .map_err(Error::from)?;
        let member_name = child_name(&org, "members", &id);
        let revoked_invites =
            invites::revoke_by_inviter(&mut tx, &org, &member_name, Some(role.as_str())).await?;
        let details = json!({"role": role.as_str(), "previous_role": current.3, "revoked_invites": revoked_invites});
        self.commit_audited(
            tx,
            audited(Some(&caller), "member.update", &update.name, details),
        )
        .await?;
        self.publish(Invalidation::Principal(id));
        current.3 = role.as_str().to_owned();
        Ok(Response::new(UpdateMemberResponse {
            member: Some(member(current)),
        }))
    }

    async fn delete_member(
        &self,
        request: Request<DeleteMemberRequest>,
    ) -> Result<Response<DeleteMemberResponse>, Status> {
        let caller = caller(&request)?;
        let org = caller_org(&caller)?.to_owned();
        let name = request.into_inner().name;
        let id = own_child(&caller, &name, "members")?.to_owned();
        let role: Option<(String,)> =
            sqlx::query_as("SELECT role FROM members WHERE id = $1 AND org_id = $2")
                .bind(&id)
                .bind(&org)
                .fetch_optional(&self.db.pool)
                .await
                .map_err(Error::from)?;
        let (role,) = role.ok_or_else(|| Error::not_found(names::truncate(&name)))?;
        if role == "owner" {
            self.ensure_other_owner(&org, &id).await?;
        }
        let mut tx = self.db.begin_write().await.map_err(Error::from)?;
        sqlx::query("DELETE FROM api_keys WHERE owner_id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await
            .map_err(Error::from)?;
        // The keys the member minted for agents go with them: a removed
        // admin must not keep acting through an agent key they hold.
        let revoked: Vec<(String,)> = sqlx::query_as(
            "UPDATE api_keys SET revoke_time = $1 WHERE org_id = $2 AND created_by = $3 AND revoke_time IS NULL RETURNING id",
        )
        .bind(now_micros())
        .bind(&org)
        .bind(child_name(&org, "members", &id))
        .fetch_all(&mut *tx)
        .await
        .map_err(Error::from)?;
        let revoked: Vec<String> = revoked.into_iter().map(|(key,)| key).collect();
        let revoked_invites =
            invites::revoke_by_inviter(&mut tx, &org, &child_name(&org, "members", &id), None)
                .await?;
        sqlx::query("DELETE FROM members WHERE id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await
            .map_err(Error::from)?;
        let key_names: Vec<String> = revoked
            .iter()
            .map(|key| child_name(&org, "apiKeys", key))
            .collect();
        let details = json!({"role": role, "revoked_api_keys": key_names, "revoked_invites": revoked_invites});
        self.commit_audited(tx, audited(Some(&caller), "member.remove", &name, details))
            .await?;
        self.publish(Invalidation::Principal(id));
        for key in revoked {
            self.publish(Invalidation::Key(key));
        }
        Ok(Response::new(DeleteMemberResponse {}))
    }

    async fn create_agent(
        &self,
        request: Request<CreateAgentRequest>,
    ) -> Result<Response<CreateAgentResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let org = parent_org(&caller, &req.parent)?.to_owned();
        validate_id("agent", &req.agent_id)?;
        let spec = req.agent.unwrap_or_default();
        validate_text("description", &spec.description, 2000)?;
        let role = if spec.role.is_empty() {
            Role::Agent
        } else {
            parse_role(&spec.role, &Role::ALL)?
        };
        check_grantable(&caller, role, &Role::ALL)?;
        let now = now_micros();
        let row: AgentRow = (
            new_principal_id('a'),
            org,
            req.agent_id,
            spec.description,
            role.as_str().to_owned(),
            caller.name.clone(),
            now,
        );
        let mut tx = self.db.begin_write().await.map_err(Error::from)?;
        let name = child_name(&row.1, "agents", &row.2);
        sqlx::query("INSERT INTO agents (id, org_id, agent_id, description, role, created_by, create_time) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(&row.0)
            .bind(&row.1)
            .bind(&row.2)
            .bind(&row.3)
            .bind(&row.4)
            .bind(&row.5)
            .bind(row.6)
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::exists_or(e, &name))?;
        self.commit_audited(
            tx,
            audited(Some(&caller), "agent.create", &name, json!({"role": row.4})),
        )
        .await?;
        Ok(Response::new(CreateAgentResponse {
            agent: Some(agent(row)),
        }))
    }

    async fn list_agents(
        &self,
        request: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let org = parent_org(&caller, &req.parent)?;
        let page = page(req.page_size, &req.page_token)?;
        let mut rows: Vec<AgentRow> = sqlx::query_as(
            "SELECT id, org_id, agent_id, description, role, created_by, create_time FROM agents WHERE org_id = $1 AND agent_id > $2 ORDER BY agent_id LIMIT $3",
        )
        .bind(org)
        .bind(&page.after)
        .bind(page.size + 1)
        .fetch_all(&self.db.pool)
        .await
        .map_err(Error::from)?;
        let next_page_token = next_page(&mut rows, &page, |r| r.2.clone());
        Ok(Response::new(ListAgentsResponse {
            agents: rows.into_iter().map(agent).collect(),
            next_page_token,
        }))
    }

    async fn get_agent(
        &self,
        request: Request<GetAgentRequest>,
    ) -> Result<Response<GetAgentResponse>, Status> {
        let caller = caller(&request)?;
        let name = &request.get_ref().name;
        let id = own_child(&caller, name, "agents")?;
        let row: Option<AgentRow> = sqlx::query_as("SELECT id, org_id, agent_id, description, role, created_by, create_time FROM agents WHERE org_id = $1 AND agent_id = $2")
            .bind(caller_org(&caller)?)
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await
            .map_err(Error::from)?;
        let row = row.ok_or_else(|| Error::not_found(names::truncate(name)))?;
        Ok(Response::new(GetAgentResponse {
            agent: Some(agent(row)),
        }))
    }

    async fn delete_agent(
        &self,
        request: Request<DeleteAgentRequest>,
    ) -> Result<Response<DeleteAgentResponse>, Status> {
        let caller = caller(&request)?;
        let name = request.into_inner().name;
        let agent_id = own_child(&caller, &name, "agents")?;
        let org = caller_org(&caller)?;
        let row: Option<(String,)> =
            sqlx::query_as("SELECT id FROM agents WHERE org_id = $1 AND agent_id = $2")
                .bind(org)
                .bind(agent_id)
                .fetch_optional(&self.db.pool)
                .await
                .map_err(Error::from)?;
        let (id,) = row.ok_or_else(|| Error::not_found(names::truncate(&name)))?;
        let mut tx = self.db.begin_write().await.map_err(Error::from)?;
        sqlx::query("DELETE FROM api_keys WHERE owner_id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await
            .map_err(Error::from)?;
        sqlx::query("DELETE FROM agents WHERE id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await
            .map_err(Error::from)?;
        // An agent with members.manage may have invited people.
        let revoked_invites =
            invites::revoke_by_inviter(&mut tx, org, &child_name(org, "agents", agent_id), None)
                .await?;
        let details = json!({"revoked_invites": revoked_invites});
        self.commit_audited(tx, audited(Some(&caller), "agent.delete", &name, details))
            .await?;
        self.publish(Invalidation::Principal(id));
        Ok(Response::new(DeleteAgentResponse {}))
    }

    async fn create_project(
        &self,
        request: Request<CreateProjectRequest>,
    ) -> Result<Response<CreateProjectResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let org = parent_org(&caller, &req.parent)?.to_owned();
        validate_id("project", &req.project_id)?;
        let spec = req.project.unwrap_or_default();
        validate_text("display_name", &spec.display_name, 200)?;
        validate_text("description", &spec.description, 2000)?;
        let now = now_micros();
        let row: ProjectRow = (
            org,
            req.project_id,
            spec.display_name,
            spec.description,
            caller.name.clone(),
            now,
            now,
        );
        let mut tx = self.db.begin_write().await.map_err(Error::from)?;
        let name = child_name(&row.0, "projects", &row.1);
        sqlx::query("INSERT INTO projects (org_id, project_id, display_name, description, created_by, create_time, update_time) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(&row.0)
            .bind(&row.1)
            .bind(&row.2)
            .bind(&row.3)
            .bind(&row.4)
            .bind(row.5)
            .bind(row.6)
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::exists_or(e, &name))?;
        self.commit_audited(
            tx,
            audited(Some(&caller), "project.create", &name, json!({})),
        )
        .await?;
        Ok(Response::new(CreateProjectResponse {
            project: Some(project(row)),
        }))
    }

    async fn list_projects(
        &self,
        request: Request<ListProjectsRequest>,
    ) -> Result<Response<ListProjectsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let org = parent_org(&caller, &req.parent)?;
        let page = page(req.page_size, &req.page_token)?;
        let mut rows: Vec<ProjectRow> = sqlx::query_as(
            "SELECT org_id, project_id, display_name, description, created_by, create_time, update_time FROM projects WHERE org_id = $1 AND project_id > $2 ORDER BY project_id LIMIT $3",
        )
        .bind(org)
        .bind(&page.after)
        .bind(page.size + 1)
        .fetch_all(&self.db.pool)
        .await
        .map_err(Error::from)?;
        let next_page_token = next_page(&mut rows, &page, |r| r.1.clone());
        Ok(Response::new(ListProjectsResponse {
            projects: rows.into_iter().map(project).collect(),
            next_page_token,
        }))
    }

    async fn get_project(
        &self,
        request: Request<GetProjectRequest>,
    ) -> Result<Response<GetProjectResponse>, Status> {
        let caller = caller(&request)?;
        let name = &request.get_ref().name;
        let id = own_child(&caller, name, "projects")?;
        let row = self
            .project_row(caller_org(&caller)?, id)
            .await?
            .ok_or_else(|| Error::not_found(names::truncate(name)))?;
        Ok(Response::new(GetProjectResponse {
            project: Some(project(row)),
        }))
    }

    async fn update_project(
        &self,
        request: Request<UpdateProjectRequest>,
    ) -> Result<Response<UpdateProjectResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let update = req
            .project
            .ok_or_else(|| Error::invalid("project is required"))?;
        let paths = mask_paths(req.update_mask.as_ref(), &["display_name", "description"])?;
        let org = caller_org(&caller)?;
        let id = own_child(&caller, &update.name, "projects")?;
        validate_text("display_name", &update.display_name, 200)?;
        validate_text("description", &update.description, 2000)?;
        let mut row = self
            .project_row(org, id)
            .await?
            .ok_or_else(|| Error::not_found(names::truncate(&update.name)))?;
        for p in &paths {
            match p.as_str() {
                "display_name" => row.2 = update.display_name.clone(),
                _ => row.3 = update.description.clone(),
            }
        }
        row.6 = now_micros();
        let mut tx = self.db.begin_write().await.map_err(Error::from)?;
        sqlx::query("UPDATE projects SET display_name = $1, description = $2, update_time = $3 WHERE org_id = $4 AND project_id = $5")
            .bind(&row.2)
            .bind(&row.3)
            .bind(row.6)
            .bind(org)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(Error::from)?;
        let details = json!({"update_mask": paths});
        self.commit_audited(
            tx,
            audited(Some(&caller), "project.update", &update.name, details),
        )
        .await?;
        Ok(Response::new(UpdateProjectResponse {
            project: Some(project(row)),
        }))
    }

    async fn delete_project(
        &self,
        request: Request<DeleteProjectRequest>,
    ) -> Result<Response<DeleteProjectResponse>, Status> {
        let caller = caller(&request)?;
        let name = &request.get_ref().name;
        let id = own_child(&caller, name, "projects")?;
        let mut tx = self.db.begin_write().await.map_err(Error::from)?;
        let done = sqlx::query("DELETE FROM projects WHERE org_id = $1 AND project_id = $2")
            .bind(caller_org(&caller)?)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(Error::from)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found(names::truncate(name)).into());
        }
        self.commit_audited(
            tx,
            audited(Some(&caller), "project.delete", name, json!({})),
        )
        .await?;
        // The runner stops the project's sandboxes.
        self.publish(Invalidation::Project(name.clone()));
        Ok(Response::new(DeleteProjectResponse {}))
    }

    async fn create_api_key(
        &self,
        request: Request<CreateApiKeyRequest>,
    ) -> Result<Response<CreateApiKeyResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let org = parent_org(&caller, &req.parent)?.to_owned();
        let spec = req.api_key.unwrap_or_default();
        let display_name = if spec.display_name.is_empty() {
            "key".to_owned()
        } else {
            spec.display_name
        };
        validate_text("display_name", &display_name, 200)?;
        validate_scope(&spec.scope)?;
        let key_role = if spec.role.is_empty() {
            None
        } else {
            Some(parse_role(&spec.role, &Role::ALL)?)
        };
        // Whose key: the caller's own, or a named member's or agent's.
        let (owner_id, owner_name, owner_role) = if spec.owner.is_empty()
            || spec.owner == caller.name
        {
            (caller.id.clone(), caller.name.clone(), caller.role.clone())
        } else if let Ok((o, agent_id)) = parse_child(&spec.owner, "agents") {
            let row: Option<(String, String)> =
                sqlx::query_as("SELECT id, role FROM agents WHERE org_id = $1 AND agent_id = $2")
                    .bind(&org)
                    .bind(agent_id)
                    .fetch_optional(&self.db.pool)
                    .await
                    .map_err(Error::from)?;
            let (id, role) = row
                .filter(|_| o == org)
                .ok_or_else(|| Error::not_found(names::truncate(&spec.owner)))?;
            (id, spec.owner.clone(), role)
        } else {
            let (o, _) = parse_child(&spec.owner, "members")
                .map_err(|_| Error::invalid("owner must be a member or agent resource name"))?;
            if o != org {
                return Err(Error::not_found(names::truncate(&spec.owner)).into());
            }
            // A key acts as its owner in every check and in the audit trail:
            // minting one for another person would let the minter act as
            // them (an admin as the owner), and outlive the minter.
            return Err(Error::PermissionDenied(format!(
                "cannot mint a key owned by another member ({}): members mint their own keys; api_keys.manage covers keys for agents only",
                names::truncate(&spec.owner)
            ))
            .into());
        };
        let key_resource = child_name(&org, "apiKeys", "-");
        self.admission
            .require(&caller, "api_keys.manage_own", &key_resource, &owner_id)
            .await?;
        // Nobody mints a key above their own.
        let mine = caller_permissions(&caller);
        if let Some(r) = key_role
            && !r
                .permissions()
                .is_subset_of(Grant::of(&caller.role, &caller.key_role, &[]).effective())
        {
            return Err(Error::PermissionDenied(format!(
                "cannot mint a key with role {}: it is above your own",
                r.as_str()
            ))
            .into());
        }
        let new = Grant::of(&owner_role, &spec.role, &spec.scope).effective();
        if !new.is_subset_of(mine) {
            let extra: Vec<_> = new
                .names()
                .into_iter()
                .filter(|p| !mine.contains(rbac::permission_index(p).unwrap_or(0)))
                .collect();
            return Err(Error::PermissionDenied(format!(
                "cannot mint a key above your own permissions (it would hold {}); narrow it with role or scope",
                extra.join(", ")
            ))
            .into());
        }
        let expire = self
            .key_expiry(&org, req.ttl.as_ref(), req.never_expires)
            .await?;
        let mut tx = self.db.begin_write().await.map_err(Error::from)?;
        let (row, secret) = Self::insert_key(
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
        let key_name = child_name(&org, "apiKeys", &row.0);
        let details = json!({"owner": owner_name, "role": spec.role, "scope": spec.scope, "expire_time_us": expire});
        self.commit_audited(
            tx,
            audited(Some(&caller), "apikey.create", &key_name, details),
        )
        .await?;
        Ok(Response::new(CreateApiKeyResponse {
            api_key: Some(api_key(row, owner_name)),
            secret,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<ListApiKeysRequest>,
    ) -> Result<Response<ListApiKeysResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let org = parent_org(&caller, &req.parent)?.to_owned();
        let page = page(req.page_size, &req.page_token)?;
        let all = self
            .admission
            .allows(&caller, "api_keys.read", &org_name(&org), "")
            .await?;
        let mut rows: Vec<KeyRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE org_id = $1 AND id > $2 \
             AND ($4 = 1 OR (revoke_time IS NULL AND (expire_time IS NULL OR expire_time > $5))) \
             AND ($6 = 1 OR owner_id = $7) ORDER BY id LIMIT $3"
        )))
        .bind(&org)
        .bind(&page.after)
        .bind(page.size + 1)
        .bind(i64::from(req.show_inactive))
        .bind(now_micros())
        .bind(i64::from(all))
        .bind(&caller.id)
        .fetch_all(&self.db.pool)
        .await
        .map_err(Error::from)?;
        let next_page_token = next_page(&mut rows, &page, |r| r.0.clone());
        let mut keys = Vec::with_capacity(rows.len());
        for row in rows {
            let owner = self.owner_name(&org, &row.2).await?;
            keys.push(api_key(row, owner));
        }
        Ok(Response::new(ListApiKeysResponse {
            api_keys: keys,
            next_page_token,
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<RevokeApiKeyRequest>,
    ) -> Result<Response<RevokeApiKeyResponse>, Status> {
        let caller = caller(&request)?;
        let name = request.into_inner().name;
        let id = own_child(&caller, &name, "apiKeys")?.to_owned();
        let org = caller_org(&caller)?.to_owned();
        let row: Option<KeyRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1 AND org_id = $2"
        )))
        .bind(&id)
        .bind(&org)
        .fetch_optional(&self.db.pool)
        .await
        .map_err(Error::from)?;
        let mut row = row.ok_or_else(|| Error::not_found(names::truncate(&name)))?;
        // Not even its existence leaks to someone who may not see it.
        if !self
            .admission
            .allows(&caller, "api_keys.read", &name, &row.2)
            .await?
        {
            return Err(Error::not_found(names::truncate(&name)).into());
        }
        self.admission
            .require(&caller, "api_keys.manage_own", &name, &row.2)
            .await?;
        let owner = self.owner_name(&org, &row.2).await?;
        if row.10.is_none() {
            let now = now_micros();
            let mut tx = self.db.begin_write().await.map_err(Error::from)?;
            sqlx::query(
                "UPDATE api_keys SET revoke_time = $1 WHERE id = $2 AND revoke_time IS NULL",
            )
            .bind(now)
            .bind(&id)
            .execute(&mut *tx)
            .await
            .map_err(Error::from)?;
            self.commit_audited(
                tx,
                audited(
                    Some(&caller),
                    "apikey.revoke",
                    &name,
                    json!({"owner": owner}),
                ),
            )
            .await?;
            row.10 = Some(now);
        }
        self.publish(Invalidation::Key(id));
        Ok(Response::new(RevokeApiKeyResponse {
            api_key: Some(api_key(row, owner)),
        }))
    }

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let token = request.into_inner().token;
        let principal = self.authn.authenticate(token).await?;
        Ok(Response::new(AuthenticateResponse {
            principal: Some(principal),
        }))
    }

    type WatchInvalidationsStream = WatchStream;

    async fn watch_invalidations(
        &self,
        _request: Request<WatchInvalidationsRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let changes = BroadcastStream::new(self.invalidations.subscribe()).map(|change| {
            // A lagging watcher lost pushes: tell it to drop everything.
            let change = change.unwrap_or(Invalidation::Reset);
            Ok(WatchInvalidationsResponse {
                target: Some(change.into_target()),
            })
        });
        let first = tokio_stream::once(Ok(WatchInvalidationsResponse {
            target: Some(Invalidation::Reset.into_target()),
        }));
        let mut closing = self.closing.clone();
        let closed = async move {
            let _ = closing.wait_for(|c| *c).await;
        };
        Ok(Response::new(Box::pin(
            futures_util::StreamExt::take_until(first.chain(changes), closed),
        )))
    }

    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIResponse>, Status> {
        Ok(Response::new(WhoAmIResponse {
            principal: Some(caller(&request)?),
        }))
    }

    async fn create_credential(
        &self,
        request: Request<CreateCredentialRequest>,
    ) -> Result<Response<CreateCredentialResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(
            credentials::create(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn list_credentials(
        &self,
        request: Request<ListCredentialsRequest>,
    ) -> Result<Response<ListCredentialsResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(
            credentials::list(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn get_credential(
        &self,
        request: Request<GetCredentialRequest>,
    ) -> Result<Response<GetCredentialResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(
            credentials::get(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn delete_credential(
        &self,
        request: Request<DeleteCredentialRequest>,
    ) -> Result<Response<DeleteCredentialResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(
            credentials::delete(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn reveal_credential(
        &self,
        request: Request<RevealCredentialRequest>,
    ) -> Result<Response<RevealCredentialResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(
            credentials::reveal(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn list_organizations(
        &self,
        request: Request<ListOrganizationsRequest>,
    ) -> Result<Response<ListOrganizationsResponse>, Status> {
        Ok(Response::new(
            organizations::list(self, request.into_inner()).await?,
        ))
    }

    async fn update_agent(
        &self,
        request: Request<UpdateAgentRequest>,
    ) -> Result<Response<UpdateAgentResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(
            agents::update(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn rotate_api_key(
        &self,
        request: Request<RotateApiKeyRequest>,
    ) -> Result<Response<RotateApiKeyResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(
            key_rotation::rotate(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn rotate_credential(
        &self,
        request: Request<RotateCredentialRequest>,
    ) -> Result<Response<RotateCredentialResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(
            credentials::rotate(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn get_principal(
        &self,
        request: Request<GetPrincipalRequest>,
    ) -> Result<Response<GetPrincipalResponse>, Status> {
        Ok(Response::new(
            principals::get(self, request.into_inner()).await?,
        ))
    }

    async fn create_session_token(
        &self,
        request: Request<CreateSessionTokenRequest>,
    ) -> Result<Response<CreateSessionTokenResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(
            session_tokens::create(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn revoke_session_token(
        &self,
        request: Request<RevokeSessionTokenRequest>,
    ) -> Result<Response<RevokeSessionTokenResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(
            session_tokens::revoke(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn lookup_resources(
        &self,
        request: Request<LookupResourcesRequest>,
    ) -> Result<Response<LookupResourcesResponse>, Status> {
        Ok(Response::new(
            lookup::lookup(self, request.into_inner()).await?,
        ))
    }
}

impl Identity {
    async fn project_row(&self, org: &str, id: &str) -> Result<Option<ProjectRow>> {
        Ok(sqlx::query_as(
            "SELECT org_id, project_id, display_name, description, created_by, create_time, update_time FROM projects WHERE org_id = $1 AND project_id = $2",
        )
        .bind(org)
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await?)
    }
}

trait WithCaller {
    fn with_caller(self, caller: Principal) -> Self;
}

impl<T> WithCaller for Request<T> {
    fn with_caller(mut self, caller: Principal) -> Self {
        self.extensions_mut().insert(auth::Caller(caller));
        self
    }
}
