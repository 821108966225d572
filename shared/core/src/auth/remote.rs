//! The identity and authz clients every service holds, and the
//! [`Authenticator`] and [`Authorizer`] that run over them: fail closed,
//! decisions memoized for [`CACHE_TTL`].

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::{Code, Status};

use super::principals::{Authenticator, Invalidation, PrincipalCache};
use super::{Authorizer, CACHE_TTL};
use crate::client::{BearerAuth, Channel, lazy_channel};
use crate::proto::authz::v1::authz_service_client::AuthzServiceClient;
use crate::proto::authz::v1::{CheckRequest, CheckResponse};
use crate::proto::identity::v1::identity_service_client::IdentityServiceClient;
use crate::proto::identity::v1::{AuthenticateRequest, Principal, WatchInvalidationsRequest};

pub type IdentityClient = IdentityServiceClient<InterceptedService<Channel, BearerAuth>>;
pub type AuthzClient = AuthzServiceClient<InterceptedService<Channel, BearerAuth>>;
pub type PolicyClient = crate::proto::authz::v1::policy_service_client::PolicyServiceClient<
    InterceptedService<Channel, BearerAuth>,
>;

pub fn policy_client(endpoint: &str, auth: BearerAuth) -> Result<PolicyClient, Status> {
    Ok(
        crate::proto::authz::v1::policy_service_client::PolicyServiceClient::with_interceptor(
            lazy_channel(endpoint)?,
            auth,
        ),
    )
}

pub fn identity_client(endpoint: &str, auth: BearerAuth) -> Result<IdentityClient, Status> {
    Ok(IdentityServiceClient::with_interceptor(
        lazy_channel(endpoint)?,
        auth,
    ))
}

pub fn authz_client(endpoint: &str, auth: BearerAuth) -> Result<AuthzClient, Status> {
    Ok(AuthzServiceClient::with_interceptor(
        lazy_channel(endpoint)?,
        auth,
    ))
}

/// Fails closed: anything but a verdict from the dependency is UNAVAILABLE.
pub fn dependency_status(service: &str, status: Status) -> Status {
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument | Code::NotFound => {
            status
        }
        _ => {
            tracing::warn!(service, code = ?status.code(), "dependency call failed");
            Status::unavailable(format!(
                "{service} service unavailable; refusing the request"
            ))
        }
    }
}

/// Authenticates through the identity service, as a service principal.
pub struct RemoteIdentity {
    client: IdentityClient,
}

impl RemoteIdentity {
    pub fn new(client: IdentityClient) -> Self {
        Self { client }
    }

    /// Keeps `cache` in step with identity's invalidation stream, for as long
    /// as the process runs; on any break it drops the cache and reconnects.
    pub fn watch(&self, cache: Arc<PrincipalCache>) -> tokio::task::JoinHandle<()> {
        let mut client = self.client.clone();
        tokio::spawn(async move {
            loop {
                match client
                    .watch_invalidations(WatchInvalidationsRequest {})
                    .await
                {
                    Ok(resp) => {
                        let mut stream = resp.into_inner();
                        while let Ok(Some(msg)) = stream.message().await {
                            if let Some(target) = msg.target {
                                cache.invalidate(&Invalidation::from_target(target));
                            }
                        }
                    }
                    Err(status) => {
                        tracing::debug!(code = ?status.code(), "invalidation stream unavailable")
                    }
                }
                // Pushes may have been missed while disconnected.
                cache.invalidate(&Invalidation::Reset);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    }
}

impl Authenticator for RemoteIdentity {
    fn authenticate(&self, token: String) -> BoxFuture<'_, Result<Principal, Status>> {
        let mut client = self.client.clone();
        Box::pin(async move {
            let resp = client
                .authenticate(AuthenticateRequest { token })
                .await
                .map_err(|s| dependency_status("identity", s))?;
            resp.into_inner()
                .principal
                .ok_or_else(|| Status::unavailable("identity returned no principal"))
        })
    }
}

/// Checks through the authz service, as a service principal, memoizing
/// decisions for [`CACHE_TTL`]. A decision is a function of the principal's
/// role, key role and scope, which are part of the memo key.
pub struct RemoteAuthz {
    client: AuthzClient,
    memo: moka::sync::Cache<String, CheckResponse>,
}

impl RemoteAuthz {
    pub fn new(client: AuthzClient) -> Self {
        Self {
            client,
            memo: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(CACHE_TTL)
                .build(),
        }
    }
}

fn memo_key(req: &CheckRequest) -> String {
    let p = req.principal.as_ref();
    let field = |f: fn(&Principal) -> &str| p.map_or("", f).to_owned();
    format!(
        "{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}",
        field(|p| &p.id),
        field(|p| &p.key_id),
        p.map_or(0, |p| p.kind),
        field(|p| &p.organization),
        field(|p| &p.role),
        field(|p| &p.key_role),
        p.map_or_else(String::new, |p| p.scope.join(",")),
        req.permission,
        req.resource,
        req.resource_owner
    )
}

impl Authorizer for RemoteAuthz {
    fn check(&self, req: CheckRequest) -> BoxFuture<'_, Result<CheckResponse, Status>> {
        Box::pin(async move {
            let key = memo_key(&req);
            let memoized = self.memo.get(&key);
            crate::metrics::cache_lookup(crate::metrics::Cache::Decision, memoized.is_some());
            if let Some(resp) = memoized {
                return Ok(resp);
            }
            let resp = self
                .client
                .clone()
                .check(req)
                .await
                .map_err(|s| dependency_status("authz", s))?
                .into_inner();
            self.memo.insert(key, resp.clone());
            Ok(resp)
        })
    }
}

/// Metadata identity puts on an UNAUTHENTICATED answer for a token that
/// names a stored key: the key's organization id. The service whose
/// admission refused the call files its `auth.fail` event in that
/// organization's chain, then strips it: only services ever see it.
pub const KEY_ORGANIZATION: &str = "paddock-key-organization";

/// Marks an authentication failure with the organization of the key the
/// token named (see [`KEY_ORGANIZATION`]).
pub fn with_key_organization(mut status: Status, org: &str) -> Status {
    if let Ok(v) = MetadataValue::try_from(org) {
        status.metadata_mut().insert(KEY_ORGANIZATION, v);
    }
    status
}

/// Removes the key's organization from an authentication failure, and
/// returns it if it is a well-formed organization id.
pub fn take_key_organization(status: &mut Status) -> Option<String> {
    let value = status.metadata_mut().remove(KEY_ORGANIZATION)?;
    let org = value.to_str().ok()?;
    crate::names::parse_org(&crate::names::org_name(org))
        .ok()
        .map(str::to_owned)
}
