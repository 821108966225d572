//! Who a bearer token stands for: the [`Authenticator`] trait, the
//! principal cache with its invalidations, and the wrappers that put the
//! cache and the shared service token in front of identity.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tonic::Status;

use super::CACHE_TTL;
use crate::proto::identity::v1::watch_invalidations_response::Target;
use crate::proto::identity::v1::{Principal, PrincipalKind};
use crate::secret::Secret;
use crate::token;

/// Resolves a bearer token to a principal.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(&self, token: String) -> BoxFuture<'_, Result<Principal, Status>>;

    /// The changes that make principals stale, as they arrive (none for an
    /// authenticator that is not told about them).
    fn invalidations(&self) -> Option<tokio::sync::broadcast::Receiver<Invalidation>> {
        None
    }
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
