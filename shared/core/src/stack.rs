//! The tower stack in front of every server's routes, built in one place
//! ([`server`]), and its first layer: the server span of each RPC.

use std::task::{Context, Poll};

use http_body::Body as _;
use std::time::Instant;

use futures_util::future::BoxFuture;
use tonic::body::Body;
use tower::ServiceBuilder;
use tower::layer::util::{Identity, Stack};
use tracing::{Instrument, Span};

use crate::auth::refusal::RefusalAuditLayer;
use crate::auth::{Admission, AdmissionLayer};
use crate::telemetry;

/// The server stack, read top to bottom: every call gets its span (which
/// continues the caller's trace) and its duration and status metric; then
/// it is authenticated and authorized. What admission refuses it hands up
/// as a value, so the refusal-audit layer sits above it: that layer records
/// the refusal and answers it.
pub fn server(admission: Admission) -> ServiceBuilder<ServerLayers> {
    ServiceBuilder::new()
        .layer(TraceLayer)
        .layer(RefusalAuditLayer::new(admission.clone()))
        .layer(AdmissionLayer::new(admission))
}

/// The layers of [`server`], outermost last.
pub type ServerLayers =
    Stack<AdmissionLayer, Stack<RefusalAuditLayer, Stack<TraceLayer, Identity>>>;

/// Wraps each RPC in its server span and records its duration and status.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceLayer;

impl<S> tower::Layer<S> for TraceLayer {
    type Service = TraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceService { inner }
    }
}

#[derive(Clone, Debug)]
pub struct TraceService<S> {
    inner: S,
}

impl<S> tower::Service<http::Request<Body>> for TraceService<S>
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
        let span = server_span(&req);
        let started = Instant::now();
        let path = req.uri().path().to_owned();
        // Called inside the span, so that what runs before the first await
        // of the layers below is in it too.
        let response = span.in_scope(|| self.inner.call(req));
        let end = RpcEnd {
            span: span.clone(),
            path,
            started,
        };
        Box::pin(
            async move {
                match response.await {
                    Ok(response) => Ok(end.follow(response)),
                    Err(e) => {
                        end.finish(tonic::Code::Internal);
                        Err(e)
                    }
                }
            }
            .instrument(span),
        )
    }
}

/// What ends an RPC: its status on its span and its duration metric.
struct RpcEnd {
    span: Span,
    path: String,
    started: Instant,
}

impl RpcEnd {
    fn finish(self, code: tonic::Code) {
        telemetry::record_code(&self.span, code);
        let (service, method) = telemetry::rpc_parts(&self.path);
        crate::metrics::rpc_served(service, method, code, self.started.elapsed());
    }

    /// Ends the RPC now if the response carries its status in the headers
    /// (a trailers-only answer: a refusal or an error before any message);
    /// else when its body ends, with the status of the trailers, so a
    /// stream that fails after its first message is not counted as OK and
    /// its span lasts as long as the stream.
    fn follow(self, response: http::Response<Body>) -> http::Response<Body> {
        if response.headers().contains_key("grpc-status") || response.body().is_end_stream() {
            let code = telemetry::status_code(response.headers());
            self.finish(code);
            return response;
        }
        response.map(|inner| {
            Body::new(TracedBody {
                inner,
                end: Some(self),
            })
        })
    }
}

/// A response body that ends its RPC ([`RpcEnd`]) when it ends: at the
/// trailers, at an error, or when the client goes away first (CANCELLED).
struct TracedBody {
    inner: Body,
    end: Option<RpcEnd>,
}

impl TracedBody {
    fn finish(&mut self, code: tonic::Code) {
        if let Some(end) = self.end.take() {
            end.finish(code);
        }
    }
}

impl http_body::Body for TracedBody {
    type Data = <Body as http_body::Body>::Data;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.finish(telemetry::status_code(trailers));
                }
            }
            Poll::Ready(Some(Err(status))) => this.finish(status.code()),
            // Ended without trailers: nothing said otherwise.
            Poll::Ready(None) => this.finish(tonic::Code::Ok),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TracedBody {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled);
    }
}

/// The server span of one RPC, after the RPC semantic conventions,
/// continuing the caller's trace.
fn server_span(req: &http::Request<Body>) -> Span {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::auth::Caller;
    use crate::auth::fakes::{FixedIdentity, RecordingAuthz, RecordingSink, member};
    use crate::token;

    #[tokio::test]
    async fn the_trace_context_follows_the_request() {
        use tower::{Service, ServiceExt};
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
        let mut svc = server(admission).service(inner);
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

    #[tokio::test]
    async fn a_missing_permission_is_worded_with_the_resource_and_audited() {
        use prost::Message;
        use tower::{Service, ServiceExt};
        let authz = Arc::new(RecordingAuthz {
            deny: Some("projects.delete denied: role developer lacks it".into()),
            ..Default::default()
        });
        let sink = Arc::new(RecordingSink::default());
        let admission = Admission::new(Arc::new(FixedIdentity(member())), Arc::new(authz))
            .with_audit("paddock-identity", Arc::new(sink.clone()));
        let inner = tower::service_fn(|_req: http::Request<Body>| async move {
            panic!("a refused call never reaches the service");
            #[allow(unreachable_code)]
            Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
        });
        let mut svc = server(admission).service(inner);
        let message = crate::proto::identity::v1::DeleteProjectRequest {
            name: "organizations/acme/projects/web".into(),
        }
        .encode_to_vec();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(&message);
        let (_, token) = crate::token::mint(crate::token::TokenKind::ApiKey);
        let req = http::Request::builder()
            .uri("/paddock.identity.v1.IdentityService/DeleteProject")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::new(http_body_util::Full::from(frame)))
            .unwrap();
        let response = svc.ready().await.unwrap().call(req).await.unwrap();
        let status = tonic::Status::from_header_map(response.headers()).expect("a status");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            status.message(),
            "missing projects.delete on organizations/acme/projects/web: projects.delete denied: role developer lacks it"
        );
        let events = sink.0.lock().unwrap().clone();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].action, "authz.deny");
        assert_eq!(events[0].resource, "organizations/acme/projects/web");
        assert_eq!(events[0].error_code, "PERMISSION_DENIED");
    }

    /// Records every `rpc.grpc.status_code` a span is given.
    #[derive(Clone, Default)]
    struct Codes(Arc<std::sync::Mutex<Vec<i64>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Codes {
        fn on_record(
            &self,
            _span: &tracing::span::Id,
            values: &tracing::span::Record<'_>,
            _ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            values.record(&mut self.clone());
        }
    }

    impl tracing::field::Visit for Codes {
        fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
            if field.name() == "rpc.grpc.status_code" {
                self.0.lock().unwrap().push(value);
            }
        }

        fn record_debug(&mut self, _field: &tracing::field::Field, _value: &dyn std::fmt::Debug) {}
    }

    /// A stream that fails after its first message: the span takes the
    /// status of the trailers, not the OK its headers implied, and only
    /// once the body has ended.
    #[tokio::test]
    async fn a_stream_failing_after_its_first_message_is_not_ok() {
        use http_body_util::BodyExt;
        use tower::{Service, ServiceExt};
        use tracing_subscriber::layer::SubscriberExt;
        let codes = Codes::default();
        let _default =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(codes.clone()));
        let authz = Arc::new(RecordingAuthz::default());
        let admission = Admission::new(Arc::new(FixedIdentity(member())), Arc::new(authz));
        let inner = tower::service_fn(|_req: http::Request<Body>| async move {
            type Data = <Body as http_body::Body>::Data;
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("13"));
            let frames = vec![
                Ok::<_, tonic::Status>(http_body::Frame::data(Data::from_static(b"\0\0\0\0\0"))),
                Ok(http_body::Frame::trailers(trailers)),
            ];
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
            Ok::<_, std::convert::Infallible>(http::Response::new(Body::new(body)))
        });
        let mut svc = server(admission).service(inner);
        let (_, token) = token::mint(token::TokenKind::ApiKey);
        let req = http::Request::builder()
            .uri("/paddock.audit.v1.AuditService/TailEvents")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let response = svc.ready().await.unwrap().call(req).await.unwrap();
        assert!(
            codes.0.lock().unwrap().is_empty(),
            "no status before the stream ends"
        );
        let collected = response.into_body().collect().await.expect("body");
        assert!(collected.trailers().is_some());
        assert_eq!(*codes.0.lock().unwrap(), [13]);
    }
}
