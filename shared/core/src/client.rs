//! The client side of every Paddock call: a channel that connects on first
//! use and wraps each call in a client span (after OpenTelemetry's RPC
//! conventions) whose context goes out as `traceparent`, so the server's
//! span is its child. Credentials are added by [`crate::auth::BearerAuth`]
//! on top.

use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tonic::Status;
use tonic::transport::Endpoint;
use tracing::{Instrument, Span};

use crate::telemetry;

/// A channel whose calls are traced.
pub type Channel = Traced<tonic::transport::Channel>;

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
    Ok(Traced::new(channel, address, port))
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

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Service, ServiceExt};

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
