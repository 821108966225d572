//! The shared authenticate + authorize layer every server runs, and the
//! clients it uses.
//!
//! For each call the layer looks up the RPC's declared access rule (from the
//! proto), resolves the bearer token to a [`Principal`] (identity
//! `Authenticate`, cached ≤ 5 s and invalidated by identity's push stream),
//! then asks authz to `Check` the declared permission. Unknown methods,
//! missing credentials and unreachable dependencies are refused: default
//! deny, fail closed.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use http::HeaderMap;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::{Code, Status};
use tracing::{Instrument, Span};

use crate::proto::audit::v1::{AuditEvent, Outcome};
use crate::proto::authz::v1::authz_service_client::AuthzServiceClient;
use crate::proto::authz::v1::{CheckRequest, CheckResponse, Link};
use crate::proto::identity::v1::identity_service_client::IdentityServiceClient;
use crate::proto::identity::v1::watch_invalidations_response::Target;
use crate::proto::identity::v1::{
    AuthenticateRequest, Principal, PrincipalKind, WatchInvalidationsRequest,
};
use crate::proto::{Access, access_for};
use crate::secret::Secret;
use crate::telemetry;
use crate::token;

/// The upper bound on how long a resolved principal or decision is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(5);

/// The authenticated caller, in the request's extensions.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

/// The bearer token the caller was admitted with, in the request's
/// extensions: long-lived streams authenticate it again while they run
/// ([`crate::streams`]). Never logged.
#[derive(Debug, Clone)]
pub struct CallerToken(pub Secret<String>);

/// The caller of a request the layer admitted.
pub fn caller<T>(req: &tonic::Request<T>) -> Result<&Principal, Status> {
    req.extensions()
        .get::<Caller>()
        .map(|c| &c.0)
        .ok_or_else(|| Status::unauthenticated("request carries no authenticated principal"))
}

/// Resolves a bearer token to a principal.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(&self, token: String) -> BoxFuture<'_, Result<Principal, Status>>;

    /// The changes that make principals stale, as they arrive (none for an
    /// authenticator that is not told about them).
    fn invalidations(&self) -> Option<tokio::sync::broadcast::Receiver<Invalidation>> {
        None
    }
}

/// Answers permission checks.
pub trait Authorizer: Send + Sync + 'static {
    fn check(&self, req: CheckRequest) -> BoxFuture<'_, Result<CheckResponse, Status>>;
}

/// A change that makes cached principals stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    Reset,
    Key(String),
    Principal(String),
    Organization(String),
    /// A project was deleted (its full name); no principal changes.
    Project(String),
}

impl Invalidation {
    pub fn from_target(target: Target) -> Self {
        match target {
            Target::Reset(_) => Invalidation::Reset,
            Target::KeyId(k) => Invalidation::Key(k),
            Target::PrincipalId(p) => Invalidation::Principal(p),
            Target::Organization(o) => Invalidation::Organization(o),
            Target::Project(p) => Invalidation::Project(p),
        }
    }

    /// Whether the change may concern `p`.
    pub fn touches(&self, p: &Principal) -> bool {
        match self {
            Invalidation::Reset => true,
            Invalidation::Key(id) => &p.key_id == id,
            Invalidation::Principal(id) => &p.id == id,
            Invalidation::Organization(org) => &p.organization == org,
            Invalidation::Project(_) => false,
        }
    }

    pub fn into_target(self) -> Target {
        match self {
            Invalidation::Reset => Target::Reset(true),
            Invalidation::Key(k) => Target::KeyId(k),
            Invalidation::Principal(p) => Target::PrincipalId(p),
            Invalidation::Organization(o) => Target::Organization(o),
            Invalidation::Project(p) => Target::Project(p),
        }
    }
}

/// Resolved principals by token hash, for at most [`CACHE_TTL`]; each
/// change it is told about is passed on to [`PrincipalCache::subscribe`]rs.
pub struct PrincipalCache {
    entries: moka::sync::Cache<String, Principal>,
    changes: tokio::sync::broadcast::Sender<Invalidation>,
}

impl Default for PrincipalCache {
    fn default() -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(Self::MAX_ENTRIES)
                .time_to_live(CACHE_TTL)
                .support_invalidation_closures()
                .build(),
            changes: tokio::sync::broadcast::channel(Self::CHANGES_BUFFER).0,
        }
    }
}

impl PrincipalCache {
    const MAX_ENTRIES: u64 = 100_000;
    /// Changes kept for a slow subscriber; one that lags further is told
    /// so and treats it as a reset.
    const CHANGES_BUFFER: usize = 1024;

    /// The changes this cache is told about from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Invalidation> {
        self.changes.subscribe()
    }

    fn get(&self, token_hash: &str) -> Option<Principal> {
        let found = self.entries.get(token_hash).filter(|p| !expired(p));
        crate::metrics::cache_lookup(crate::metrics::Cache::Principal, found.is_some());
        found
    }

    fn put(&self, token_hash: String, principal: Principal) {
        self.entries.insert(token_hash, principal);
    }

    /// Drops every cached principal the change touches, then tells the
    /// subscribers (after the drop, so that what they look up again is
    /// fresh).
    pub fn invalidate(&self, change: &Invalidation) {
        match change {
            Invalidation::Reset => self.entries.invalidate_all(),
            _ => {
                let change = change.clone();
                if self
                    .entries
                    .invalidate_entries_if(move |_, p| change.touches(p))
                    .is_err()
                {
                    // Cannot happen (closures are enabled); fail safe.
                    self.entries.invalidate_all();
                }
            }
        }
        // No subscriber is not an error.
        let _ = self.changes.send(change.clone());
    }
}

/// Whether the key behind a cached principal has expired since.
fn expired(p: &Principal) -> bool {
    p.key_expire_time
        .as_ref()
        .is_some_and(|t| crate::time::timestamp_micros(t) <= crate::time::now_micros())
}

/// An authenticator with a principal cache in front.
pub struct CachedAuthenticator<A> {
    inner: A,
    cache: Arc<PrincipalCache>,
}

impl<A: Authenticator> CachedAuthenticator<A> {
    pub fn new(inner: A) -> Self {
        Self {
            inner,
            cache: Arc::default(),
        }
    }

    pub fn inner(&self) -> &A {
        &self.inner
    }

    pub fn cache(&self) -> Arc<PrincipalCache> {
        self.cache.clone()
    }
}

impl<A: Authenticator> Authenticator for CachedAuthenticator<A> {
    fn authenticate(&self, token: String) -> BoxFuture<'_, Result<Principal, Status>> {
        Box::pin(async move {
            let key = token::hash(&token);
            if let Some(p) = self.cache.get(&key) {
                return Ok(p);
            }
            let principal = self.inner.authenticate(token).await?;
            self.cache.put(key, principal.clone());
            Ok(principal)
        })
    }

    fn invalidations(&self) -> Option<tokio::sync::broadcast::Receiver<Invalidation>> {
        Some(self.cache.subscribe())
    }
}

/// The principal the shared service token stands for.
pub fn service_principal() -> Principal {
    Principal {
        id: "service".to_owned(),
        kind: PrincipalKind::Service as i32,
        display_name: "paddock service".to_owned(),
        ..Default::default()
    }
}

/// Recognizes the service token every Paddock service shares, here, without
/// asking identity; every other token goes to `inner`. Without it a
/// service's call to authz made authz ask identity, which at a cold start
/// could be waiting on authz itself.
pub struct ServiceTokenFirst<A> {
    service_hash: String,
    inner: A,
}

impl<A: Authenticator> ServiceTokenFirst<A> {
    pub fn new(service_token: &Secret<String>, inner: A) -> Self {
        Self {
            service_hash: token::hash(service_token.expose()),
            inner,
        }
    }

    pub fn inner(&self) -> &A {
        &self.inner
    }
}

impl<A: Authenticator> Authenticator for ServiceTokenFirst<A> {
    fn authenticate(&self, bearer: String) -> BoxFuture<'_, Result<Principal, Status>> {
        Box::pin(async move {
            match token::parse(&bearer) {
                Ok(parsed) if parsed.kind == token::TokenKind::Service => {
                    if parsed.matches(&self.service_hash) {
                        Ok(service_principal())
                    } else {
                        Err(Status::unauthenticated("invalid service token"))
                    }
                }
                _ => self.inner.authenticate(bearer).await,
            }
        })
    }

    fn invalidations(&self) -> Option<tokio::sync::broadcast::Receiver<Invalidation>> {
        self.inner.invalidations()
    }
}

/// Adds `authorization: Bearer …` to every outgoing call (the channel adds
/// the trace context).
#[derive(Clone)]
pub struct BearerAuth {
    header: Option<AsciiMetadataValue>,
}

impl BearerAuth {
    pub fn new(token: &Secret<String>) -> Result<Self, Status> {
        let mut header: AsciiMetadataValue =
            MetadataValue::try_from(format!("Bearer {}", token.expose())).map_err(|_| {
                Status::invalid_argument("token contains characters not allowed in a header")
            })?;
        header.set_sensitive(true);
        Ok(Self {
            header: Some(header),
        })
    }

    /// No credentials (for public RPCs such as accepting an invite).
    pub fn anonymous() -> Self {
        Self { header: None }
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

pub use crate::client::{Channel, lazy_channel};

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

/// Why the layer refused a call.
#[derive(Debug)]
pub enum Refusal {
    /// Refused before anyone was identified (unknown method, dependency down).
    Status(Status),
    /// Authentication failed; `key_id` is the public id of a token that
    /// parsed (never the secret).
    Unauthenticated {
        status: Status,
        key_id: Option<String>,
    },
    /// An identified principal may not call this RPC at all.
    Denied {
        status: Status,
        principal: Box<Principal>,
    },
    /// The declared permission is missing; the message names the resource
    /// the request asked for, which the layer reads only on this path.
    MissingPermission {
        permission: &'static str,
        organization: String,
        summary: String,
        principal: Box<Principal>,
    },
}

/// Where the admission layer records what it refused (failed
/// authentication, denials) as audit events. They change no state, so they
/// go to the outbox on their own, before the refusal is answered.
pub trait RefusalSink: Send + Sync + 'static {
    fn record(&self, event: AuditEvent) -> BoxFuture<'_, ()>;
}

impl From<Status> for Refusal {
    fn from(status: Status) -> Self {
        Refusal::Status(status)
    }
}

/// Decides, for one call, whether it may proceed and as whom.
#[derive(Clone)]
pub struct Admission {
    authn: Arc<dyn Authenticator>,
    authz: Arc<dyn Authorizer>,
    audit: Option<(&'static str, Arc<dyn RefusalSink>)>,
    /// Budgets of the failed authentications charged to organizations'
    /// chains, per source address and key id.
    sources: Arc<crate::audit::SourceBudgets>,
}

fn kind_of(p: &Principal) -> PrincipalKind {
    PrincipalKind::try_from(p.kind).unwrap_or(PrincipalKind::Unspecified)
}

/// Extracts the bearer token; UNAUTHENTICATED says what is wrong with it.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, Status> {
    let value = headers
        .get("authorization")
        .ok_or_else(|| Status::unauthenticated("missing bearer token (authorization metadata)"))?;
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("malformed authorization header: not ASCII"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| {
            Status::unauthenticated("malformed authorization header: expected \"Bearer <token>\"")
        })?
        .trim();
    token::parse(token).map_err(|e| Status::unauthenticated(format!("malformed token: {e}")))?;
    Ok(token)
}

impl Admission {
    pub fn new(authn: Arc<dyn Authenticator>, authz: Arc<dyn Authorizer>) -> Self {
        Self {
            authn,
            authz,
            audit: None,
            sources: Arc::default(),
        }
    }

    /// The authenticator calls are admitted with (long-lived streams
    /// authenticate their caller again through it).
    pub fn authenticator(&self) -> Arc<dyn Authenticator> {
        self.authn.clone()
    }

    /// Records refusals through `sink`, as `source` (the service's name).
    pub fn with_audit(mut self, source: &'static str, sink: Arc<dyn RefusalSink>) -> Self {
        self.audit = Some((source, sink));
        self
    }

    /// Records one refusal, if this admission audits.
    async fn audit_refusal(
        &self,
        principal: Option<&Principal>,
        action: &str,
        resource: &str,
        status: &Status,
        details: serde_json::Value,
    ) {
        self.record_refusal(principal, action, resource, status, details, None)
            .await
    }

    /// Records one refusal, if this admission audits; one that `charge`s a
    /// (peer address, key id) goes to the organization's chain only within
    /// that source's budget.
    async fn record_refusal(
        &self,
        principal: Option<&Principal>,
        action: &str,
        resource: &str,
        status: &Status,
        details: serde_json::Value,
        charge: Option<(Option<std::net::IpAddr>, &str)>,
    ) {
        let Some((source, sink)) = &self.audit else {
            return;
        };
        let outcome = if status.code() == Code::Unauthenticated {
            Outcome::Failure
        } else {
            Outcome::Denied
        };
        let mut event = crate::outbox::event(source, principal, action, resource, outcome);
        event.error_code = crate::names::code_name(status.code()).to_owned();
        event.details_json = details.to_string();
        // Anyone who knows a key id can make these: a flood of them must
        // not flood the organization's chain. (Those of no organization
        // are the platform chain's, budgeted by the sink.)
        if let Some((peer, key_id)) = charge
            && !event.organization.is_empty()
            && !self.sources.charge(peer, key_id, &mut event)
        {
            return;
        }
        sink.record(event).await;
    }

    /// Admits a call to `path`, returning the caller (none for public RPCs).
    pub async fn admit(
        &self,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Option<Principal>, Refusal> {
        let access = match access_for(path) {
            Some(a) => a,
            None if path.starts_with("/grpc.health.v1.Health/")
                || path.starts_with("/grpc.reflection.v1.ServerReflection/")
                || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/") =>
            {
                return Ok(None);
            }
            None => {
                return Err(Refusal::Status(Status::unimplemented(format!(
                    "unknown method {}",
                    crate::names::truncate(path)
                ))));
            }
        };
        if access == Access::Public {
            return Ok(None);
        }
        let token = bearer_token(headers).map_err(|status| Refusal::Unauthenticated {
            status,
            key_id: None,
        })?;
        let principal = self
            .authn
            .authenticate(token.to_owned())
            .await
            .map_err(|status| {
                if status.code() == Code::Unauthenticated {
                    let key_id = token::parse(token).ok().map(|t| t.id.to_owned());
                    Refusal::Unauthenticated { status, key_id }
                } else {
                    Refusal::Status(status)
                }
            })?;
        let kind = kind_of(&principal);
        match access {
            Access::Public | Access::Authenticated => {}
            Access::Internal => {
                if kind != PrincipalKind::Service {
                    return Err(Refusal::Denied {
                        status: Status::permission_denied(format!(
                            "{path} is internal: only service principals may call it"
                        )),
                        principal: Box::new(principal),
                    });
                }
            }
            Access::Platform => {
                if kind != PrincipalKind::Platform {
                    return Err(Refusal::Denied {
                        status: Status::permission_denied(format!(
                            "{path} needs the platform bootstrap token"
                        )),
                        principal: Box::new(principal),
                    });
                }
            }
            Access::Permission(permission) => {
                if !matches!(kind, PrincipalKind::Member | PrincipalKind::Agent) {
                    let status = Status::permission_denied(format!(
                        "missing {permission}: {} principals hold no organization permissions",
                        kind.as_str_name()
                    ));
                    return Err(Refusal::Denied {
                        status,
                        principal: Box::new(principal),
                    });
                }
                let resource = principal.organization.clone();
                let decision = self
                    .authz
                    .check(CheckRequest {
                        principal: Some(principal.clone()),
                        permission: permission.to_owned(),
                        resource: resource.clone(),
                        resource_owner: String::new(),
                    })
                    .await?;
                if !decision.allowed {
                    let reason = decision.reason.unwrap_or_default();
                    tracing::info!(principal = %principal.id, key = %principal.key_id, permission, "permission denied");
                    if reason.missing() == Link::Organization {
                        return Err(Status::not_found("resource not found").into());
                    }
                    return Err(Refusal::MissingPermission {
                        permission,
                        organization: resource,
                        summary: reason.summary,
                        principal: Box::new(principal),
                    });
                }
            }
        }
        Ok(Some(principal))
    }

    /// Checks a permission on a specific resource inside a handler (for
    /// ownership and cross-resource checks). Another organization's
    /// resource is NOT_FOUND; a deny names the missing permission and is
    /// recorded as an `authz.deny` refusal.
    pub async fn require(
        &self,
        principal: &Principal,
        permission: &str,
        resource: &str,
        owner: &str,
    ) -> Result<(), Status> {
        let result = self.check(principal, permission, resource, owner).await;
        if let Err(status) = &result
            && status.code() == Code::PermissionDenied
        {
            self.audit_refusal(
                Some(principal),
                "authz.deny",
                resource,
                status,
                serde_json::json!({
                    "permission": permission,
                    "reason": status.message(),
                }),
            )
            .await;
        }
        result
    }

    /// [`Admission::require`] without the audit record: for questions whose
    /// "no" is not a refusal.
    async fn check(
        &self,
        principal: &Principal,
        permission: &str,
        resource: &str,
        owner: &str,
    ) -> Result<(), Status> {
        let decision = self
            .authz
            .check(CheckRequest {
                principal: Some(principal.clone()),
                permission: permission.to_owned(),
                resource: resource.to_owned(),
                resource_owner: owner.to_owned(),
            })
            .await?;
        if decision.allowed {
            return Ok(());
        }
        let reason = decision.reason.unwrap_or_default();
        if reason.missing() == Link::Organization {
            return Err(Status::not_found(format!(
                "{} not found",
                crate::names::truncate(resource)
            )));
        }
        Err(Status::permission_denied(format!(
            "missing {permission} on {resource}: {}",
            reason.summary
        )))
    }

    /// Whether the principal holds `permission` (no error for a deny).
    pub async fn allows(
        &self,
        principal: &Principal,
        permission: &str,
        resource: &str,
        owner: &str,
    ) -> Result<bool, Status> {
        match self.check(principal, permission, resource, owner).await {
            Ok(()) => Ok(true),
            Err(s) if matches!(s.code(), Code::PermissionDenied | Code::NotFound) => Ok(false),
            Err(s) => Err(s),
        }
    }
}

/// The tower layer that runs [`Admission`] in front of every RPC and sets
/// the request's trace context.
#[derive(Clone)]
pub struct AdmissionLayer {
    admission: Admission,
}

impl AdmissionLayer {
    pub fn new(admission: Admission) -> Self {
        Self { admission }
    }
}

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = AdmissionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AdmissionService {
            inner,
            admission: self.admission.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AdmissionService<S> {
    inner: S,
    admission: Admission,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for AdmissionService<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        // The clone is not ready; keep the ready one for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let admission = self.admission.clone();
        let span = server_span(&req);
        let started = Instant::now();
        let path = req.uri().path().to_owned();
        let fut = async move {
            // The refusal owns what it needs, so `req` is free again below;
            // the path is copied only for the audit details of a refusal.
            let admitted = admission.admit(req.uri().path(), req.headers()).await;
            match admitted {
                Ok(principal) => {
                    if let Some(p) = principal {
                        req.extensions_mut().insert(Caller(p));
                        if let Ok(token) = bearer_token(req.headers()) {
                            let token = CallerToken(Secret::new(token.to_owned()));
                            req.extensions_mut().insert(token);
                        }
                    }
                    inner.call(req).await
                }
                Err(Refusal::Status(status)) => {
                    tracing::debug!(code = ?status.code(), message = status.message(), "refused");
                    Ok(status.into_http())
                }
                Err(Refusal::Unauthenticated { mut status, key_id }) => {
                    // Identity names the organization of a stored key; the
                    // caller must not learn it.
                    let org = take_key_organization(&mut status);
                    let resource = match (&org, &key_id) {
                        (Some(org), Some(key)) => crate::names::child_name(org, "apiKeys", key),
                        _ => String::new(),
                    };
                    let principal = key_id.map(|key_id| Principal {
                        key_id,
                        ..Default::default()
                    });
                    let details =
                        serde_json::json!({"method": req.uri().path(), "reason": status.message()});
                    let peer = req
                        .extensions()
                        .get::<tonic::transport::server::TcpConnectInfo>()
                        .and_then(|c| c.remote_addr())
                        .map(|a| a.ip());
                    let key_id = principal.as_ref().map_or("", |p| p.key_id.as_str());
                    admission
                        .record_refusal(
                            principal.as_ref(),
                            "auth.fail",
                            &resource,
                            &status,
                            details,
                            Some((peer, key_id)),
                        )
                        .await;
                    Ok(status.into_http())
                }
                Err(Refusal::Denied { status, principal }) => {
                    let details =
                        serde_json::json!({"method": req.uri().path(), "reason": status.message()});
                    admission
                        .audit_refusal(
                            Some(&principal),
                            "authz.deny",
                            &principal.organization,
                            &status,
                            details,
                        )
                        .await;
                    Ok(status.into_http())
                }
                Err(Refusal::MissingPermission {
                    permission,
                    organization,
                    summary,
                    principal,
                }) => {
                    let (parts, body) = req.into_parts();
                    let resource = requested_resource(body).await.unwrap_or(organization);
                    let status = Status::permission_denied(format!(
                        "missing {permission} on {resource}: {summary}"
                    ));
                    let details = serde_json::json!({"method": parts.uri.path(), "permission": permission, "reason": summary});
                    admission
                        .audit_refusal(Some(&principal), "authz.deny", &resource, &status, details)
                        .await;
                    Ok(status.into_http())
                }
            }
        };
        Box::pin(
            async move {
                let response = fut.await;
                let code = match &response {
                    Ok(r) => telemetry::record_status(&Span::current(), r.headers()),
                    Err(_) => tonic::Code::Internal,
                };
                let (service, method) = telemetry::rpc_parts(&path);
                crate::metrics::rpc_served(service, method, code, started.elapsed());
                response
            }
            .instrument(span),
        )
    }
}

/// The server span of one RPC, after the RPC semantic conventions,
/// continuing the caller's trace.
fn server_span(req: &http::Request<tonic::body::Body>) -> Span {
    let path = req.uri().path();
    let (service, method) = telemetry::rpc_parts(path);
    let local = req
        .extensions()
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|c| c.local_addr());
    let span = tracing::info_span!(
        "rpc",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
        server.address = tracing::field::Empty,
        server.port = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    if let Some(addr) = local {
        span.record("server.address", tracing::field::display(addr.ip()));
        span.record("server.port", i64::from(addr.port()));
    }
    telemetry::continue_trace(&span, req.headers(), telemetry::service_of(path));
    if let Some(trace) = span.in_scope(telemetry::current_trace_id) {
        span.record("trace_id", trace);
    }
    span
}

/// The resource a denied request named: the `organizations/…` string in
/// field 1 of the message (`name` or `parent`), or in field 1 of the message
/// in field 1 (the resource of an Update request). Read only to word a
/// denial; never used to decide.
async fn requested_resource(body: tonic::body::Body) -> Option<String> {
    use http_body_util::BodyExt;
    let bytes = http_body_util::Limited::new(body, 64 * 1024)
        .collect()
        .await
        .ok()?
        .to_bytes();
    // A gRPC frame: compression flag, 4-byte length, message.
    let (&flag, rest) = bytes.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    if flag != 0 {
        return None;
    }
    resource_name(rest.get(4..4 + len)?, 2)
}

fn resource_name(msg: &[u8], depth: u8) -> Option<String> {
    let field = field_one(msg)?;
    match std::str::from_utf8(field) {
        Ok(s) if s.starts_with("organizations/") => Some(crate::names::truncate(s)),
        _ if depth > 1 => resource_name(field, depth - 1),
        _ => None,
    }
}

/// The bytes of length-delimited field 1 of a protobuf message.
fn field_one(mut msg: &[u8]) -> Option<&[u8]> {
    while !msg.is_empty() {
        let (tag, rest) = varint(msg)?;
        msg = match tag & 7 {
            0 => varint(rest)?.1,
            1 => rest.get(8..)?,
            2 => {
                let (len, rest) = varint(rest)?;
                let len = usize::try_from(len).ok()?;
                if tag >> 3 == 1 {
                    return rest.get(..len);
                }
                rest.get(len..)?
            }
            5 => rest.get(4..)?,
            _ => return None,
        };
    }
    None
}

fn varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::identity::v1::{DeleteProjectRequest, Project, UpdateProjectRequest};
    use prost::Message;
    use std::sync::Mutex;

    /// Fakes for unit tests only; the API tests run the real services.
    struct FixedIdentity(Principal);

    impl Authenticator for FixedIdentity {
        fn authenticate(&self, _token: String) -> BoxFuture<'_, Result<Principal, Status>> {
            Box::pin(async move { Ok(self.0.clone()) })
        }
    }

    #[derive(Default)]
    struct RecordingAuthz {
        seen: Mutex<Vec<Option<String>>>,
    }

    impl Authorizer for Arc<RecordingAuthz> {
        fn check(&self, _req: CheckRequest) -> BoxFuture<'_, Result<CheckResponse, Status>> {
            self.seen
                .lock()
                .unwrap()
                .push(telemetry::current_trace_id());
            Box::pin(async {
                Ok(CheckResponse {
                    allowed: true,
                    reason: None,
                })
            })
        }
    }

    fn member() -> Principal {
        Principal {
            id: "m1".into(),
            kind: PrincipalKind::Member as i32,
            organization: "organizations/acme".into(),
            role: "developer".into(),
            ..Default::default()
        }
    }

    fn headers(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {token}").parse().unwrap());
        h
    }

    #[tokio::test]
    async fn unknown_methods_are_refused_and_health_is_open() {
        let authz = Arc::new(RecordingAuthz::default());
        let admission = Admission::new(Arc::new(FixedIdentity(member())), Arc::new(authz.clone()));
        let (_, token) = token::mint(token::TokenKind::ApiKey);
        match admission
            .admit(
                "/paddock.identity.v1.IdentityService/Nope",
                &headers(&token),
            )
            .await
        {
            Err(Refusal::Status(s)) => assert_eq!(s.code(), Code::Unimplemented),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            admission
                .admit("/grpc.health.v1.Health/Check", &HeaderMap::new())
                .await,
            Ok(None)
        ));
        match admission
            .admit(
                "/paddock.identity.v1.IdentityService/WhoAmI",
                &HeaderMap::new(),
            )
            .await
        {
            Err(Refusal::Unauthenticated {
                status,
                key_id: None,
            }) => assert_eq!(status.code(), Code::Unauthenticated),
            other => panic!("unexpected {other:?}"),
        }
        match admission
            .admit(
                "/paddock.identity.v1.IdentityService/Authenticate",
                &headers(&token),
            )
            .await
        {
            Err(Refusal::Denied { status, principal }) => assert_eq!(
                (status.code(), principal.id.as_str()),
                (Code::PermissionDenied, "m1")
            ),
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            authz.seen.lock().unwrap().is_empty(),
            "no check for refused or internal calls"
        );
    }

    #[tokio::test]
    async fn the_trace_context_follows_the_request() {
        use tower::{Layer, Service, ServiceExt};
        let _default = tracing::subscriber::set_default(telemetry::test_subscriber());
        const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
        let authz = Arc::new(RecordingAuthz::default());
        let admission = Admission::new(Arc::new(FixedIdentity(member())), Arc::new(authz.clone()));
        let inner = tower::service_fn(|req: http::Request<tonic::body::Body>| async move {
            let caller = req
                .extensions()
                .get::<Caller>()
                .expect("caller")
                .0
                .id
                .clone();
            assert_eq!(caller, "m1");
            assert_eq!(telemetry::current_trace_id().as_deref(), Some(TRACE));
            // What a client call made by the handler would send on.
            let mut outgoing = http::HeaderMap::new();
            telemetry::inject(&mut outgoing);
            let sent = outgoing
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .expect("sent")
                .to_owned();
            assert!(sent.starts_with(&format!("00-{TRACE}-")), "{sent}");
            Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
        });
        let mut svc = AdmissionLayer::new(admission).layer(inner);
        let (_, token) = token::mint(token::TokenKind::ApiKey);
        let req = http::Request::builder()
            .uri("/paddock.identity.v1.IdentityService/ListProjects")
            .header("authorization", format!("Bearer {token}"))
            .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
            .body(tonic::body::Body::empty())
            .unwrap();
        svc.ready().await.unwrap().call(req).await.unwrap();
        let seen = authz.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            seen[0].as_deref(),
            Some(TRACE),
            "the authz call carries the caller's trace"
        );
    }

    #[test]
    fn resource_names_are_read_from_field_one() {
        let delete = DeleteProjectRequest {
            name: "organizations/acme/projects/web".into(),
        }
        .encode_to_vec();
        assert_eq!(
            resource_name(&delete, 2).as_deref(),
            Some("organizations/acme/projects/web")
        );
        let update = UpdateProjectRequest {
            project: Some(Project {
                name: "organizations/acme/projects/web".into(),
                display_name: "x".into(),
                ..Default::default()
            }),
            update_mask: None,
        }
        .encode_to_vec();
        assert_eq!(
            resource_name(&update, 2).as_deref(),
            Some("organizations/acme/projects/web")
        );
        assert_eq!(
            resource_name(&[0x0a, 0x05, b'h', b'e', b'l', b'l', b'o'], 2),
            None
        );
        assert_eq!(resource_name(&[0x0a, 0xff], 2), None);
        assert_eq!(resource_name(&[], 2), None);
    }
}
