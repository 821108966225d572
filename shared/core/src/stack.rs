//! The tower stack in front of every server's routes, built in one place
//! ([`server`]), and its first layer: the server span of each RPC.

use std::task::{Context, Poll};
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
        Box::pin(
            async move {
                let response = response.await;
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
}
