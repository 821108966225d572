//! The authz service: `Check`, `BatchCheck`, `ListPermissions` and
//! `ListRoles` over the built-in roles and permission groups, and the
//! `PolicyService`: per-agent policies and organization security settings.
//! Decisions are computed from the principal's role, key role and scope
//! against bitsets compiled once, so they cost the same for any
//! organization size. Policies and settings live in authz's own database;
//! every change and every refusal of authz's admission goes to the audit
//! service through the transactional outbox. The organization reaper
//! deletes a deleted organization's policies and settings.
#![forbid(unsafe_code)]
// Outside tests a failure is an answer, never a panic.

mod decide;
mod service;
mod store;
mod subject;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use paddock_proto::authz::v1::authz_service_server::{AuthzService, AuthzServiceServer};
use paddock_proto::authz::v1::policy_service_server::PolicyServiceServer;
use paddock_proto::authz::v1::{
    BatchCheckRequest, BatchCheckResponse, CheckRequest, CheckResponse, ListPermissionsRequest,
    ListPermissionsResponse, ListRolesRequest, ListRolesResponse, PermissionGroup, Role,
};
use paddock_shared::auth::{
    self, Authorizer, BearerAuth, CachedAuthenticator, RemoteIdentity, ServiceTokenFirst,
};
use paddock_shared::bootstrap::Storage;
use paddock_shared::config::{self, CommonConfig, CommonFlags, ConfigError};
use paddock_shared::db::Database;
use paddock_shared::org_reaper;
use paddock_shared::rbac;
use paddock_shared::secret::Secret;
use paddock_shared::server::{self, ServerHandle};
use serde::{Deserialize, Serialize};
use sqlx::migrate::Migrator;
use tonic::{Request, Response, Status};

use crate::service::Policies;

pub use decide::evaluate;

/// Configuration of the authz service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub common: CommonConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            common: CommonConfig::listening_on(SocketAddr::from(([127, 0, 0, 1], 7102))),
        }
    }
}

/// The flags of `paddock-authz`.
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct Flags {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: CommonFlags,
}

/// The variables authz reads besides [`config::COMMON_ENV`]; its own
/// win over `DATABASE_URL`.
pub const ENV: &[(&str, &str)] = &[
    ("DATABASE_URL", "database_url"),
    ("PADDOCK_AUTHZ_LISTEN", "listen"),
    ("PADDOCK_AUTHZ_DATABASE_URL", "database_url"),
];

impl Config {
    /// Defaults, then `file`, then the environment, then `flags`.
    pub fn load(file: Option<&Path>, flags: &Flags) -> Result<Self, ConfigError> {
        config::load(&Self::default(), file, &[config::COMMON_ENV, ENV], flags)
    }
}

/// Authz's schema migrations: every file in `migrations/`, embedded at
/// build time and applied in version order by sqlx's migrator.
pub static MIGRATIONS: &Migrator = &sqlx::migrate!("./migrations");

pub type StartError = Box<dyn std::error::Error + Send + Sync>;

/// Starts the authz service; it calls identity with `service_token`.
pub async fn start(
    config: &Config,
    service_token: &Secret<String>,
) -> Result<ServerHandle, StartError> {
    let (listener, _) = server::bind(config.common.listen).await?;
    start_on(listener, config, service_token).await
}

/// Starts on a listener bound beforehand (so two services that need each
/// other's address can both bind port 0 first); `config.common.listen` is unused.
pub async fn start_on(
    listener: tokio::net::TcpListener,
    config: &Config,
    service_token: &Secret<String>,
) -> Result<ServerHandle, StartError> {
    let addr = listener.local_addr()?;
    let mut storage =
        Storage::open("authz", "authz", &config.common, service_token, MIGRATIONS).await?;
    let db = storage.db.clone();
    let identity_client = auth::identity_client(
        &config.common.identity_endpoint,
        BearerAuth::new(service_token)?,
    )?;
    let identity = RemoteIdentity::new(identity_client.clone());
    let authz = Authz {
        identity: identity_client.clone(),
    };
    let authn = CachedAuthenticator::new(ServiceTokenFirst::new(service_token, identity));
    let watch = authn.inner().inner().watch(authn.cache());
    let admission = storage.admission(Arc::new(authn), Arc::new(LocalAuthorizer));
    let authz_name = <AuthzServiceServer<Authz> as tonic::server::NamedService>::NAME;
    let policy_name = <PolicyServiceServer<Policies> as tonic::server::NamedService>::NAME;
    let (_health, routes) = server::health_and_reflection(&[authz_name, policy_name]).await?;
    let routes = routes
        .add_service(
            AuthzServiceServer::new(authz).max_decoding_message_size(server::MAX_MESSAGE_BYTES),
        )
        .add_service(
            PolicyServiceServer::new(Policies {
                db: db.clone(),
                outbox: storage.outbox.clone(),
                identity: identity_client.clone(),
            })
            .max_decoding_message_size(server::MAX_MESSAGE_BYTES),
        );
    let reaper = org_reaper::spawn_org_reaper(
        identity_client,
        db.clone(),
        "authz",
        purge_organization(db.clone()),
        None,
        org_reaper::DEFAULT_INTERVAL,
    );
    let mut background = vec![watch, reaper];
    background.extend(storage.spawn_forwarder());
    tracing::info!(%addr, "authz listening");
    Ok(ServerHandle::spawn(listener, addr, admission, routes).with_background(background))
}

/// What the org reaper runs for a deleted organization: its agent policies
/// and security settings go.
fn purge_organization(db: Database) -> org_reaper::Purge {
    Arc::new(move |org: String| {
        let db = db.clone();
        Box::pin(async move { store::purge_organization(&db, &org).await })
    })
}

/// Answers checks in process, for the authz server's own admission.
pub struct LocalAuthorizer;

impl Authorizer for LocalAuthorizer {
    fn check(&self, req: CheckRequest) -> BoxFuture<'_, Result<CheckResponse, Status>> {
        Box::pin(async move { Ok(evaluate(&req)) })
    }
}

/// The gRPC service.
pub struct Authz {
    /// Resolves a principal named in a request (as a service).
    identity: auth::IdentityClient,
}

/// Most items one BatchCheck may carry.
const MAX_BATCH: usize = 1000;

fn validate(permission: &str, resource: &str) -> Result<(), Status> {
    if rbac::permission_index(permission).is_none() {
        return Err(Status::invalid_argument(format!(
            "unknown permission {:?}",
            paddock_shared::names::truncate(permission)
        )));
    }
    if !resource.is_empty() && paddock_shared::names::organization_of(resource).is_none() {
        return Err(Status::invalid_argument(format!(
            "invalid resource {:?}: expected organizations/{{organization}}/...",
            paddock_shared::names::truncate(resource)
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl AuthzService for Authz {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let caller = auth::caller(&request)?.clone();
        let mut req = request.into_inner();
        validate(&req.permission, &req.resource)?;
        req.principal =
            Some(subject::resolve(&self.identity, &caller, req.principal.take()).await?);
        Ok(Response::new(evaluate(&req)))
    }

    async fn batch_check(
        &self,
        request: Request<BatchCheckRequest>,
    ) -> Result<Response<BatchCheckResponse>, Status> {
        let caller = auth::caller(&request)?.clone();
        let req = request.into_inner();
        if req.items.is_empty() || req.items.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "items must hold 1 to {MAX_BATCH} checks"
            )));
        }
        let principal = subject::resolve(&self.identity, &caller, req.principal).await?;
        let mut results = Vec::with_capacity(req.items.len());
        for item in req.items {
            validate(&item.permission, &item.resource)?;
            results.push(evaluate(&CheckRequest {
                principal: Some(principal.clone()),
                permission: item.permission,
                resource: item.resource,
                resource_owner: item.resource_owner,
            }));
        }
        Ok(Response::new(BatchCheckResponse { results }))
    }

    async fn list_permissions(
        &self,
        request: Request<ListPermissionsRequest>,
    ) -> Result<Response<ListPermissionsResponse>, Status> {
        let caller = auth::caller(&request)?.clone();
        let principal =
            subject::resolve(&self.identity, &caller, request.into_inner().principal).await?;
        let (permissions, reason) = decide::effective(&principal);
        Ok(Response::new(ListPermissionsResponse {
            permissions,
            reason: Some(reason),
        }))
    }

    async fn list_roles(
        &self,
        _request: Request<ListRolesRequest>,
    ) -> Result<Response<ListRolesResponse>, Status> {
        let roles = rbac::Role::ALL
            .into_iter()
            .map(|r| Role {
                name: r.as_str().to_owned(),
                description: r.description().to_owned(),
                permissions: r
                    .permissions()
                    .names()
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            })
            .collect();
        let groups = rbac::GROUPS
            .iter()
            .map(|(name, description)| PermissionGroup {
                name: (*name).to_owned(),
                description: (*description).to_owned(),
                permissions: rbac::group_permissions(name)
                    .unwrap_or_default()
                    .names()
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            })
            .collect();
        let permissions = rbac::PERMISSIONS.iter().map(|p| (*p).to_owned()).collect();
        Ok(Response::new(ListRolesResponse {
            roles,
            groups,
            permissions,
        }))
    }
}

#[cfg(test)]
mod tests {
    use paddock_shared::outbox;

    /// Every migration keeps the version databases already recorded it at.
    #[test]
    fn migrations_keep_their_versions() {
        let versions: Vec<i64> = super::MIGRATIONS.iter().map(|m| m.version).collect();
        assert_eq!(versions, [1, 2, 3, 4]);
    }

    /// The outbox migrations are copies of the shared SQL (sqlx's
    /// `migrate!` reads files only).
    #[test]
    fn the_outbox_migrations_are_the_shared_ones() {
        outbox::check_migrations(super::MIGRATIONS, [2, 3, 4]).expect("outbox copies");
    }
}
