//! The shared authenticate + authorize step every server runs, and the
//! clients it uses.
//!
//! For each call admission looks up the RPC's declared access rule (from the
//! proto), resolves the bearer token to a [`Principal`] (identity
//! `Authenticate`, cached ≤ 5 s and invalidated by identity's push stream),
//! then asks authz to `Check` the declared permission. Unknown methods,
//! missing credentials and unreachable dependencies are refused: default
//! deny, fail closed. The tower stack that runs it is [`crate::stack`].
//!
//! - [`principals`]: authenticators, the principal cache, invalidations;
//! - [`remote`]: the identity and authz clients and what runs over them;
//! - [`admission`]: the decision for one call, and handler-side checks;
//! - [`refusal`]: why a call was refused, its wording, and its audit record;
//! - [`layer`]: the admission tower layer;
//! - [`resource`]: the resource a denied request named.

use std::time::Duration;

use tonic::Status;

use crate::proto::identity::v1::Principal;
use crate::secret::Secret;

pub mod admission;
pub mod layer;
pub mod principals;
pub mod refusal;
pub mod remote;
pub mod resource;

#[cfg(test)]
pub(crate) mod fakes;

pub use crate::client::{BearerAuth, Channel, lazy_channel};
pub use crate::outbox::RefusalSink;
pub use admission::{Admission, Authorizer, bearer_token};
pub use layer::{AdmissionLayer, AdmissionService};
pub use principals::{
    Authenticator, CachedAuthenticator, Invalidation, PrincipalCache, ServiceTokenFirst,
    service_principal,
};
pub use refusal::Refusal;
pub use remote::{
    AuthzClient, IdentityClient, KEY_ORGANIZATION, PolicyClient, RemoteAuthz, RemoteIdentity,
    authz_client, dependency_status, identity_client, policy_client, take_key_organization,
    with_key_organization,
};

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
