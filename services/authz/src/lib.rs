//! The authz service: `Check`, `BatchCheck`, `ListPermissions` and
//! `ListRoles` over the built-in roles and permission groups. Decisions are
//! computed from the principal's role, key role and scope against bitsets
//! compiled once, so they cost the same for any organization size.
#![forbid(unsafe_code)]

mod decide;

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use paddock_proto::authz::v1::authz_service_server::{AuthzService, AuthzServiceServer};
use paddock_proto::authz::v1::{
    BatchCheckRequest, BatchCheckResponse, CheckRequest, CheckResponse, ListPermissionsRequest,
    ListPermissionsResponse, ListRolesRequest, ListRolesResponse, PermissionGroup, Role,
};
use paddock_proto::identity::v1::{Principal, PrincipalKind};
use paddock_shared::auth::{
    self, Admission, Authorizer, BearerAuth, CachedAuthenticator, RemoteIdentity,
};
use paddock_shared::rbac;
use paddock_shared::secret::Secret;
use paddock_shared::server::{self, ServerHandle};
use tonic::{Request, Response, Status};

pub use decide::evaluate;

/// Configuration of the authz service.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(
        long = "listen",
        env = "PADDOCK_AUTHZ_LISTEN",
        default_value = "127.0.0.1:7102"
    )]
    pub listen: SocketAddr,
    /// The identity service.
    #[arg(
        long = "identity-endpoint",
        env = "PADDOCK_IDENTITY_ENDPOINT",
        default_value = "http://127.0.0.1:7101"
    )]
    pub identity_endpoint: String,
}

pub type StartError = Box<dyn std::error::Error + Send + Sync>;

/// Starts the authz service; it calls identity with `service_token`.
pub async fn start(
    config: &Config,
    service_token: &Secret<String>,
) -> Result<ServerHandle, StartError> {
    let (listener, _) = server::bind(config.listen).await?;
    start_on(listener, config, service_token).await
}

/// Starts on a listener bound beforehand (so two services that need each
/// other's address can both bind port 0 first); `config.listen` is unused.
pub async fn start_on(
    listener: tokio::net::TcpListener,
    config: &Config,
    service_token: &Secret<String>,
) -> Result<ServerHandle, StartError> {
    let addr = listener.local_addr()?;
    let identity = RemoteIdentity::new(auth::identity_client(
        &config.identity_endpoint,
        BearerAuth::new(service_token)?,
    )?);
    let authn = CachedAuthenticator::new(identity);
    let watch = authn.inner().watch(authn.cache());
    let admission = Admission::new(Arc::new(authn), Arc::new(LocalAuthorizer));
    let name = <AuthzServiceServer<Authz> as tonic::server::NamedService>::NAME;
    let (_health, routes) = server::health_and_reflection(&[name]).await;
    let routes = routes.add_service(
        AuthzServiceServer::new(Authz).max_decoding_message_size(server::MAX_MESSAGE_BYTES),
    );
    tracing::info!(%addr, "authz listening");
    Ok(ServerHandle::spawn(listener, addr, admission, routes).with_background([watch]))
}

/// Answers checks in process, for the authz server's own admission.
pub struct LocalAuthorizer;

impl Authorizer for LocalAuthorizer {
    fn check(&self, req: CheckRequest) -> BoxFuture<'_, Result<CheckResponse, Status>> {
        Box::pin(async move { Ok(evaluate(&req)) })
    }
}

/// The gRPC service.
pub struct Authz;

/// Most items one BatchCheck may carry.
const MAX_BATCH: usize = 1000;

/// The principal a request asks about: the caller, or (for services only)
/// the principal in the request.
fn subject(caller: &Principal, asked: Option<Principal>) -> Result<Principal, Status> {
    match asked {
        None => Ok(caller.clone()),
        Some(p) if caller.kind == PrincipalKind::Service as i32 => Ok(p),
        Some(p) if p.id == caller.id && p.key_id == caller.key_id => Ok(caller.clone()),
        Some(_) => Err(Status::permission_denied(
            "only service principals may check other principals; leave principal unset",
        )),
    }
}

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
        req.principal = Some(subject(&caller, req.principal.take())?);
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
        let principal = subject(&caller, req.principal)?;
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
        let principal = subject(&caller, request.into_inner().principal)?;
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
