//! The client side of every Paddock call. [`lazy_channel`] connects on
//! first use and runs the client stack ([`stack`]), read top to bottom:
//!
//! - propagation: a client span per call (after OpenTelemetry's RPC
//!   conventions) whose context goes out as `traceparent`, so the server's
//!   span is its child;
//! - a deadline on unary calls ([`UNARY_TIMEOUT`]), never on streams, which
//!   live as long as their caller wants;
//! - retry with backoff, of reads only, on UNAVAILABLE only
//!   ([`is_idempotent`]);
//! - the transport.
//!
//! Credentials ([`BearerAuth`]) go on each generated client as its
//! interceptor, above the channel, so one channel serves several callers.

use std::task::{Context, Poll};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures_util::future::BoxFuture;
use tonic::body::Body;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::Endpoint;
use tonic::{Code, Status};
use tower::ServiceBuilder;
use tower::layer::util::{Identity, Stack};
use tracing::{Instrument, Span};

use crate::telemetry;

/// How long a unary call may wait for its answer. Longer than the longest
/// wait a unary RPC makes on purpose (StopSandboxes' grace, at most 30 s).
pub const UNARY_TIMEOUT: Duration = Duration::from_secs(60);

/// Retries of a read that found its server UNAVAILABLE: 50 ms, then 100 ms
/// (with jitter); three attempts in all.
const READ_RETRY: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(50))
    .with_max_delay(Duration::from_secs(1))
    .with_max_times(2)
    .with_jitter();

/// A channel running the client stack.
pub type Channel = Traced<Deadline<Retry<tonic::transport::Channel>>>;

/// A channel that connects on first use, with Paddock's timeouts.
pub fn lazy_channel(endpoint: &str) -> Result<Channel, Status> {
    let invalid = || Status::invalid_argument(format!("invalid endpoint {endpoint:?}"));
    let parsed = Endpoint::from_shared(endpoint.to_owned()).map_err(|_| invalid())?;
    let uri = parsed.uri();
    let address = uri.host().unwrap_or_default().to_owned();
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    let channel = parsed
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy();
    Ok(stack(address, port).service(channel))
}

/// The client stack over a transport to `address:port`, read top to bottom.
pub fn stack(address: String, port: u16) -> ServiceBuilder<ClientLayers> {
    ServiceBuilder::new()
        .layer(TraceLayer { address, port })
        .layer(DeadlineLayer(UNARY_TIMEOUT))
        .layer(RetryLayer)
}

/// The layers of [`stack`], outermost last.
pub type ClientLayers = Stack<RetryLayer, Stack<DeadlineLayer, Stack<TraceLayer, Identity>>>;

/// Adds `authorization: Bearer …` to every outgoing call.
#[derive(Clone)]
pub struct BearerAuth {
    header: Option<AsciiMetadataValue>,
}

impl BearerAuth {
    pub fn new(token: &crate::secret::Secret<String>) -> Result<Self, Status> {
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

/// Propagation: [`Traced`] on every call.
#[derive(Clone, Debug)]
pub struct TraceLayer {
    address: String,
    port: u16,
}

impl<S> tower::Layer<S> for TraceLayer {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Traced::new(inner, self.address.clone(), self.port)
    }
}

/// Wraps each call of `S` in a client span and sends its trace context.
#[derive(Clone, Debug)]
pub struct Traced<S> {
    inner: S,
    address: String,
    port: u16,
}

impl<S> Traced<S> {
    pub fn new(inner: S, address: String, port: u16) -> Self {
        Self {
            inner,
            address,
            port,
        }
    }
}

impl<S, B> tower::Service<http::Request<tonic::body::Body>> for Traced<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let (service, method) = telemetry::rpc_parts(&path);
        let span = tracing::info_span!(
            "rpc.client",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            server.address = %self.address,
            server.port = i64::from(self.port),
        );
        span.in_scope(|| telemetry::inject(req.headers_mut()));
        // The clone is not ready; keep the ready one for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let call = inner.call(req);
        let started = std::time::Instant::now();
        Box::pin(
            async move {
                let response = call.await;
                let code = match &response {
                    Ok(r) => telemetry::record_status(&Span::current(), r.headers()),
                    // Unreachable: no answer at all.
                    Err(_) => {
                        telemetry::record_code(&Span::current(), tonic::Code::Unavailable);
                        tonic::Code::Unavailable
                    }
                };
                let (service, method) = telemetry::rpc_parts(&path);
                crate::metrics::rpc_made(service, method, code, started.elapsed());
                response
            }
            .instrument(span),
        )
    }
}

/// Whether the RPC at `path` is a read, which may be sent twice: by the
/// verb its name starts with (Get, List, Query, Lookup, Verify) or by name
/// (the checks, Authenticate, WhoAmI), and only if it is unary. Everything
/// else writes, or records that it was called (RevealCredential), and is
/// never retried; so is a path this build does not know.
pub fn is_idempotent(path: &str) -> bool {
    const READ_VERBS: &[&str] = &["Get", "List", "Query", "Lookup", "Verify"];
    const READS: &[&str] = &["Check", "BatchCheck", "Authenticate", "WhoAmI"];
    let Some(method) = crate::methods::method(path) else {
        return false;
    };
    if method.is_client_streaming() || method.is_server_streaming() {
        return false;
    }
    let name = method.name();
    READS.contains(&name) || READ_VERBS.iter().any(|verb| name.starts_with(verb))
}

/// The deadline: [`Deadline`] on every call, of this length.
#[derive(Clone, Copy, Debug)]
pub struct DeadlineLayer(pub Duration);

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            timeout: self.0,
        }
    }
}

/// Answers DEADLINE_EXCEEDED for a unary call with no answer in time
/// ([`UNARY_TIMEOUT`] in the stack); streams, and paths this build does not
/// know, run unbounded.
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
    timeout: Duration,
}

impl<S> tower::Service<http::Request<Body>> for Deadline<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let unary = crate::methods::is_unary(req.uri().path()) == Some(true);
        let call = self.inner.call(req);
        if !unary {
            return Box::pin(call);
        }
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, call).await {
                Ok(answer) => answer,
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "no answer within {}",
                    humantime::format_duration(timeout)
                ))
                .into_http()),
            }
        })
    }
}

/// Retry: [`Retry`] on every call.
#[derive(Clone, Copy, Debug, Default)]
pub struct RetryLayer;

impl<S> tower::Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry { inner }
    }
}

/// Sends a read again (three attempts in all, with backoff) while its
/// server is UNAVAILABLE: unreachable, or answering UNAVAILABLE before any
/// message. The request is buffered for that (a unary request is one
/// message); anything that is not a read passes straight through.
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
}

impl<S> tower::Service<http::Request<Body>> for Retry<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if !is_idempotent(req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        // The clone is not ready; keep the ready one for this call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            use http_body_util::BodyExt;
            use tower::ServiceExt;
            let (parts, body) = req.into_parts();
            let message = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(status) => return Ok(status.into_http()),
            };
            let attempt = || {
                let svc = inner.clone();
                let req = http::Request::from_parts(
                    parts.clone(),
                    Body::new(http_body_util::Full::new(message.clone())),
                );
                async move {
                    match svc.oneshot(req).await {
                        Ok(answer) if answer_code(&answer) == Some(Code::Unavailable) => {
                            Err(Ok(answer))
                        }
                        Ok(answer) => Ok(answer),
                        // No answer at all: the server is unreachable.
                        Err(e) => Err(Err(e)),
                    }
                }
            };
            match attempt
                .retry(READ_RETRY)
                .sleep(tokio::time::sleep)
                .notify(|_, retry_in| {
                    tracing::debug!(?retry_in, "server unavailable; the read is sent again");
                })
                .await
            {
                Ok(answer) => Ok(answer),
                Err(last) => last,
            }
        })
    }
}

/// The status a response carries in its headers (an answer with no
/// message), if any.
fn answer_code<B>(response: &http::Response<B>) -> Option<Code> {
    Status::from_header_map(response.headers()).map(|s| s.code())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::{Service, ServiceExt};

    /// Answers every call with `code` (or, for `None`, fails as a transport
    /// would), counting the calls.
    fn fake(
        code: Option<Code>,
        calls: Arc<AtomicUsize>,
    ) -> impl tower::Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = std::io::Error,
        Future = impl Send,
    > + Clone
    + Send
    + Sync
    + 'static {
        tower::service_fn(move |req: http::Request<Body>| {
            let calls = calls.clone();
            async move {
                use http_body_util::BodyExt;
                // Every attempt carries the whole request.
                let body = req.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(&body[..], b"message");
                calls.fetch_add(1, Ordering::SeqCst);
                match code {
                    Some(code) => Ok(Status::new(code, "fake").into_http()),
                    None => Err(std::io::Error::other("connection refused")),
                }
            }
        })
    }

    async fn calls_made(path: &str, code: Option<Code>) -> usize {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut svc = RetryLayer.layer(fake(code, calls.clone()));
        let req = http::Request::builder()
            .uri(path)
            .body(Body::new(http_body_util::Full::from("message")))
            .unwrap();
        let _ = svc.ready().await.unwrap().call(req).await;
        calls.load(Ordering::SeqCst)
    }

    use tower::Layer;

    const GET: &str = "/paddock.identity.v1.IdentityService/GetProject";
    const CHECK: &str = "/paddock.authz.v1.AuthzService/Check";
    const DELETE: &str = "/paddock.identity.v1.IdentityService/DeleteProject";
    const APPEND: &str = "/paddock.audit.v1.AuditService/AppendEvents";

    #[test]
    fn reads_are_idempotent_and_writes_and_streams_are_not() {
        for read in [
            GET,
            CHECK,
            "/paddock.identity.v1.IdentityService/ListProjects",
        ] {
            assert!(is_idempotent(read), "{read}");
        }
        for other in [
            DELETE,
            APPEND,
            "/paddock.identity.v1.IdentityService/RevealCredential",
            "/paddock.identity.v1.IdentityService/WatchInvalidations",
            "/paddock.sandbox.v1.SandboxService/GetSandboxLogs",
            "/grpc.health.v1.Health/Check",
        ] {
            assert!(!is_idempotent(other), "{other}");
        }
    }

    #[tokio::test]
    async fn a_read_is_retried_while_unavailable_only() {
        assert_eq!(calls_made(GET, Some(Code::Unavailable)).await, 3);
        assert_eq!(calls_made(CHECK, None).await, 3);
        assert_eq!(calls_made(GET, Some(Code::Ok)).await, 1);
        for code in [
            Code::Internal,
            Code::DeadlineExceeded,
            Code::NotFound,
            Code::PermissionDenied,
            Code::Unknown,
        ] {
            assert_eq!(calls_made(GET, Some(code)).await, 1, "{code:?}");
        }
    }

    #[tokio::test]
    async fn a_write_is_never_retried() {
        for code in [Some(Code::Unavailable), None, Some(Code::Internal)] {
            assert_eq!(calls_made(DELETE, code).await, 1, "{code:?}");
            assert_eq!(calls_made(APPEND, code).await, 1, "{code:?}");
        }
    }

    #[tokio::test]
    async fn a_unary_call_has_a_deadline_and_a_stream_has_none() {
        let never = tower::service_fn(|_req: http::Request<Body>| {
            futures_util::future::pending::<Result<http::Response<Body>, std::io::Error>>()
        });
        let mut svc = DeadlineLayer(Duration::from_millis(50)).layer(never);
        let request = |path: &str| {
            http::Request::builder()
                .uri(path)
                .body(Body::empty())
                .unwrap()
        };
        let answer = svc.ready().await.unwrap().call(request(GET)).await.unwrap();
        assert_eq!(answer_code(&answer), Some(Code::DeadlineExceeded));
        let stream = svc.ready().await.unwrap().call(request(
            "/paddock.identity.v1.IdentityService/WatchInvalidations",
        ));
        let waited = tokio::time::timeout(Duration::from_millis(500), stream).await;
        assert!(waited.is_err(), "a stream is never cut by the deadline");
    }

    #[tokio::test]
    async fn a_call_sends_the_trace_of_its_own_client_span() {
        let _default = tracing::subscriber::set_default(telemetry::test_subscriber());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let inner = tower::service_fn(move |req: http::Request<tonic::body::Body>| {
            let tx = tx.clone();
            async move {
                let sent = req
                    .headers()
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let _ = tx.send(sent);
                Ok::<_, std::convert::Infallible>(http::Response::new(()))
            }
        });
        let mut channel = Traced::new(inner, "127.0.0.1".into(), 7101);
        let caller = tracing::info_span!("handler");
        let caller_cx = {
            let _entered = caller.enter();
            telemetry::current_span_context()
        };
        let request = http::Request::builder()
            .uri("/paddock.authz.v1.AuthzService/Check")
            .body(tonic::body::Body::empty())
            .unwrap();
        let ready = channel.ready().await.unwrap();
        let call = caller.in_scope(|| ready.call(request));
        call.await.unwrap();
        let sent = rx.recv().await.expect("sent");
        let trace = caller_cx.trace_id().to_string();
        assert!(sent.starts_with(&format!("00-{trace}-")), "{sent}");
        // The parent the server sees is the client span, not the caller's.
        assert!(!sent.contains(&caller_cx.span_id().to_string()), "{sent}");
    }
}
