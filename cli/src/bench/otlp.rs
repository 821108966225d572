//! `paddock bench authz --otlp`: an OTLP/gRPC trace receiver in the bench's
//! own process, so the services export every span while they are measured
//! (the collector's trace service from `opentelemetry-proto`). It counts
//! what arrives and keeps nothing else.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

use crate::error::CliError;

#[derive(Clone, Default)]
pub struct Receiver {
    spans: Arc<AtomicU64>,
}

impl Receiver {
    /// Spans received so far.
    pub fn spans(&self) -> u64 {
        self.spans.load(Ordering::Relaxed)
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.spans.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Serves a receiver on a free loopback port; returns it and its endpoint.
pub(super) async fn start() -> Result<(Receiver, String), CliError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| CliError::new(tonic::Code::Internal, format!("OTLP receiver: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::new(tonic::Code::Internal, format!("OTLP receiver: {e}")))?;
    let receiver = Receiver::default();
    let service = TraceServiceServer::new(receiver.clone()).max_decoding_message_size(64 << 20);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok((receiver, format!("http://{addr}")))
}
