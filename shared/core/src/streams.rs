//! Long-lived response streams (audit tails, sandbox watches, interactive
//! execs): capped per caller and per organization, and ended with
//! UNAUTHENTICATED once the caller's credentials stop being valid.
//!
//! Admission checks a caller once, when the call starts; a stream may run
//! for hours after. So each guarded stream authenticates its caller's token
//! again whenever identity pushes a change that may concern it (a revoked
//! key, a removed member, a deleted organization) and at least every
//! [`CACHE_TTL`], and ends when the answer is UNAUTHENTICATED.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument;

use futures_util::{Stream, StreamExt};
use tokio::sync::{broadcast, oneshot};
use tonic::{Code, Request, Status};

use crate::auth::{Authenticator, CACHE_TTL, Caller, CallerToken, Invalidation};
use crate::proto::identity::v1::Principal;
use crate::secret::Secret;

/// A boxed response stream.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The least time between two checks of one stream: a burst of changes (or
/// identity's stream reconnecting while identity is down) costs each
/// stream one check, not one per change.
const MIN_RECHECK: Duration = Duration::from_millis(200);

/// How many streams of one kind may be open at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Per principal (a member or agent, across all its keys).
    pub per_principal: usize,
    /// Per organization.
    pub per_organization: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_principal: 16,
            per_organization: 64,
        }
    }
}

/// Open streams of one kind, by principal and by organization.
#[derive(Default)]
struct Open {
    by_principal: HashMap<String, usize>,
    by_organization: HashMap<String, usize>,
}

struct Caps {
    /// What the streams are, for the RESOURCE_EXHAUSTED message.
    kind: &'static str,
    limits: Limits,
    open: Mutex<Open>,
}

/// Opens guarded streams of one kind (e.g. "audit tails") within their
/// [`Limits`].
#[derive(Clone)]
pub struct Streams {
    authn: Arc<dyn Authenticator>,
    caps: Arc<Caps>,
}

impl Streams {
    pub fn new(kind: &'static str, authn: Arc<dyn Authenticator>, limits: Limits) -> Self {
        Self {
            authn,
            caps: Arc::new(Caps {
                kind,
                limits,
                open: Mutex::default(),
            }),
        }
    }

    /// Admits one more stream for the caller of `request`: RESOURCE_EXHAUSTED
    /// naming the cap when the caller or its organization has as many open
    /// as allowed. The stream counts until [`Guard::serve`]'s stream is
    /// dropped (or the guard, if it is never served).
    pub fn open<T>(&self, request: &Request<T>) -> Result<Guard, Status> {
        let (principal, token) = credentials(request)?;
        let permit = self.caps.acquire(&principal)?;
        Ok(Guard {
            changes: self.authn.invalidations(),
            authn: self.authn.clone(),
            principal,
            token,
            permit: Some(permit),
        })
    }
}

/// A stream that is not capped but ends once its caller's credentials stop
/// being valid (an interactive exec, whose count other bounds keep).
pub fn guard<T>(authn: Arc<dyn Authenticator>, request: &Request<T>) -> Result<Guard, Status> {
    let (principal, token) = credentials(request)?;
    Ok(Guard {
        changes: authn.invalidations(),
        authn,
        principal,
        token,
        permit: None,
    })
}

fn credentials<T>(request: &Request<T>) -> Result<(Principal, Secret<String>), Status> {
    let missing = || Status::unauthenticated("request carries no authenticated principal");
    let principal = request
        .extensions()
        .get::<Caller>()
        .ok_or_else(missing)?
        .0
        .clone();
    let token = request
        .extensions()
        .get::<CallerToken>()
        .ok_or_else(missing)?
        .0
        .clone();
    Ok((principal, token))
}

impl Caps {
    fn acquire(self: &Arc<Self>, principal: &Principal) -> Result<Permit, Status> {
        let who = if principal.id.is_empty() {
            principal.key_id.clone()
        } else {
            principal.id.clone()
        };
        let org = principal.organization.clone();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (per_principal, per_organization) =
            (self.limits.per_principal, self.limits.per_organization);
        if open.by_principal.get(&who).copied().unwrap_or(0) >= per_principal {
            return Err(Status::resource_exhausted(format!(
                "too many open {}: at most {per_principal} per caller",
                self.kind
            )));
        }
        if !org.is_empty()
            && open.by_organization.get(&org).copied().unwrap_or(0) >= per_organization
        {
            return Err(Status::resource_exhausted(format!(
                "too many open {}: at most {per_organization} per organization",
                self.kind
            )));
        }
        *open.by_principal.entry(who.clone()).or_default() += 1;
        if !org.is_empty() {
            *open.by_organization.entry(org.clone()).or_default() += 1;
        }
        Ok(Permit {
            caps: self.clone(),
            who,
            org,
        })
    }
}

/// One admitted stream; its count is given back when dropped.
struct Permit {
    caps: Arc<Caps>,
    who: String,
    org: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.caps.open.lock().unwrap_or_else(|p| p.into_inner());
        let release = |map: &mut HashMap<String, usize>, key: &str| {
            if let Some(n) = map.get_mut(key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(key);
                }
            }
        };
        release(&mut open.by_principal, &self.who);
        if !self.org.is_empty() {
            release(&mut open.by_organization, &self.org);
        }
    }
}

/// The right to serve one stream to one caller, for as long as the caller's
/// credentials hold.
pub struct Guard {
    authn: Arc<dyn Authenticator>,
    /// Subscribed when the stream is admitted, so no change is missed.
    changes: Option<broadcast::Receiver<Invalidation>>,
    principal: Principal,
    token: Secret<String>,
    permit: Option<Permit>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("principal", &self.principal.id)
            .finish_non_exhaustive()
    }
}

/// Aborts the credential check when the stream is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The state of a served stream.
struct Served<T> {
    inner: BoxStream<T>,
    /// Fires with the status to end on once the credentials fail.
    revoked: Option<oneshot::Receiver<Status>>,
    _check: AbortOnDrop,
    _permit: Option<Permit>,
}

enum Next<T> {
    Item(Option<Result<T, Status>>),
    Revoked(Status),
    CheckGone,
}

impl Guard {
    /// `stream`, ended with UNAUTHENTICATED as soon as a check of the
    /// caller's token fails with it.
    pub fn serve<T, S>(self, stream: S) -> BoxStream<T>
    where
        T: Send + 'static,
        S: Stream<Item = Result<T, Status>> + Send + 'static,
    {
        let Guard {
            authn,
            changes,
            principal,
            token,
            permit,
        } = self;
        let (tx, rx) = oneshot::channel();
        let check = tokio::spawn(
            async move {
                let status = until_unauthenticated(authn, changes, principal, token).await;
                let _ = tx.send(status);
            }
            .in_current_span(),
        );
        let state = Served {
            inner: Box::pin(stream),
            revoked: Some(rx),
            _check: AbortOnDrop(check),
            _permit: permit,
        };
        Box::pin(futures_util::stream::unfold(
            Some(state),
            |state| async move {
                let mut state = state?;
                let next = match state.revoked.as_mut() {
                    Some(revoked) => tokio::select! {
                        biased;
                        r = revoked => match r {
                            Ok(status) => Next::Revoked(status),
                            Err(_) => Next::CheckGone,
                        },
                        item = state.inner.next() => Next::Item(item),
                    },
                    None => Next::Item(state.inner.next().await),
                };
                match next {
                    Next::Revoked(status) => Some((Err(status), None)),
                    Next::CheckGone => {
                        state.revoked = None;
                        let item = state.inner.next().await?;
                        Some((item, Some(state)))
                    }
                    Next::Item(item) => item.map(|item| (item, Some(state))),
                }
            },
        ))
    }
}

/// Waits until `token` no longer authenticates; returns the status to end
/// the stream with. Other failures (identity unreachable) keep the stream:
/// the next check decides.
async fn until_unauthenticated(
    authn: Arc<dyn Authenticator>,
    mut changes: Option<broadcast::Receiver<Invalidation>>,
    principal: Principal,
    token: Secret<String>,
) -> Status {
    let start = tokio::time::Instant::now() + CACHE_TTL;
    let mut tick = tokio::time::interval_at(start, CACHE_TTL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            concerned = concerns(&mut changes, &principal) => {
                if !concerned {
                    continue;
                }
            }
        }
        match authn.authenticate(token.expose().clone()).await {
            Err(mut status) if status.code() == Code::Unauthenticated => {
                // Identity's note of the key's organization is for services.
                crate::auth::take_key_organization(&mut status);
                return Status::unauthenticated(format!(
                    "the stream's credentials are no longer valid: {}",
                    status.message()
                ));
            }
            Ok(p) if p.id != principal.id || p.organization != principal.organization => {
                return Status::unauthenticated(
                    "the stream's credentials now name another principal",
                );
            }
            Ok(_) => {}
            Err(status) => {
                tracing::debug!(code = ?status.code(), "stream credential check failed; the stream goes on");
            }
        }
        tokio::time::sleep(MIN_RECHECK).await;
    }
}

/// The next change: whether it may concern `principal` (a subscriber that
/// lagged behind cannot tell, so it checks). Never returns once the
/// changes are gone; the periodic check goes on.
async fn concerns(
    changes: &mut Option<broadcast::Receiver<Invalidation>>,
    principal: &Principal,
) -> bool {
    let Some(rx) = changes.as_mut() else {
        return std::future::pending().await;
    };
    match rx.recv().await {
        Ok(change) => change.touches(principal),
        Err(broadcast::error::RecvError::Lagged(_)) => true,
        Err(broadcast::error::RecvError::Closed) => {
            *changes = None;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{CachedAuthenticator, PrincipalCache};
    use futures_util::future::BoxFuture;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Accepts its token until told that the key is revoked.
    struct Switch {
        revoked: AtomicBool,
    }

    impl Authenticator for Arc<Switch> {
        fn authenticate(&self, _token: String) -> BoxFuture<'_, Result<Principal, Status>> {
            Box::pin(async move {
                if self.revoked.load(Ordering::SeqCst) {
                    Err(crate::auth::with_key_organization(
                        Status::unauthenticated("API key has been revoked"),
                        "acme",
                    ))
                } else {
                    Ok(member())
                }
            })
        }
    }

    fn member() -> Principal {
        Principal {
            id: "m1".into(),
            key_id: "k1".into(),
            organization: "organizations/acme".into(),
            ..Default::default()
        }
    }

    fn request() -> Request<()> {
        let mut req = Request::new(());
        req.extensions_mut().insert(Caller(member()));
        req.extensions_mut()
            .insert(CallerToken(Secret::new("pdk_secret".into())));
        req
    }

    #[tokio::test]
    async fn a_revocation_ends_the_stream() {
        let switch = Arc::new(Switch {
            revoked: AtomicBool::new(false),
        });
        let authn = CachedAuthenticator::new(switch.clone());
        let cache: Arc<PrincipalCache> = authn.cache();
        let streams = Streams::new("things", Arc::new(authn), Limits::default());
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<u32, Status>>(4);
        let mut stream = streams
            .open(&request())
            .expect("open")
            .serve(tokio_stream::wrappers::ReceiverStream::new(rx));
        tx.send(Ok(1)).await.expect("send");
        assert_eq!(stream.next().await.expect("item").expect("ok"), 1);
        // A change for someone else leaves it open; the key's revocation
        // ends it.
        cache.invalidate(&Invalidation::Key("k2".into()));
        switch.revoked.store(true, Ordering::SeqCst);
        cache.invalidate(&Invalidation::Key("k1".into()));
        let end = stream.next().await.expect("end").expect_err("revoked");
        assert_eq!(end.code(), Code::Unauthenticated);
        assert!(end.message().contains("revoked"), "{}", end.message());
        assert!(
            end.metadata().get(crate::auth::KEY_ORGANIZATION).is_none(),
            "the key's organization is not passed on"
        );
        assert!(stream.next().await.is_none(), "the stream ends");
    }

    #[tokio::test]
    async fn caps_count_open_streams_per_caller_and_organization() {
        let switch = Arc::new(Switch {
            revoked: AtomicBool::new(false),
        });
        let streams = Streams::new(
            "things",
            Arc::new(switch),
            Limits {
                per_principal: 2,
                per_organization: 3,
            },
        );
        let first = streams.open(&request()).expect("first");
        let second = streams.open(&request()).expect("second");
        let third = streams.open(&request()).expect_err("third");
        assert_eq!(third.code(), Code::ResourceExhausted);
        assert!(
            third.message().contains("2 per caller"),
            "{}",
            third.message()
        );
        // Another member of the organization: one more, then the org cap.
        let mut other = request();
        let mut p = member();
        p.id = "m2".into();
        other.extensions_mut().insert(Caller(p));
        let _third = streams.open(&other).expect("another member");
        let full = streams.open(&other).expect_err("org cap");
        assert!(
            full.message().contains("3 per organization"),
            "{}",
            full.message()
        );
        // A served stream gives its place back when it is dropped.
        drop(first);
        let served = second.serve(futures_util::stream::pending::<Result<u32, Status>>());
        let _again = streams.open(&request()).expect("after a drop");
        drop(served);
        streams
            .open(&request())
            .expect("after a served stream ends");
    }
}
