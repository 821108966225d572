//! The admin listener: plain HTTP beside a process's gRPC ports, loopback
//! unless configured otherwise. `GET /metrics` is the Prometheus text of
//! [`crate::metrics`]; `GET /healthz` says the process is up and how its
//! audit outboxes stand (backlog, oldest age, quarantined rows).

use std::net::SocketAddr;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

/// The admin listener, serving until dropped or shut down.
pub struct AdminServer {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free one) and serves.
    pub async fn start(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let router = axum::Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "admin listener stopped");
            }
        });
        tracing::info!(%addr, "admin listener (/metrics, /healthz)");
        Ok(Self {
            addr,
            shutdown: Some(tx),
            task,
        })
    }

    /// The `http://` base URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting and waits for the listener to close.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn metrics() -> impl IntoResponse {
    let text = crate::metrics::prometheus_text().unwrap_or_else(|| {
        "# OpenTelemetry is disabled (OTEL_SDK_DISABLED=true): no metrics\n".to_owned()
    });
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

async fn healthz() -> impl IntoResponse {
    let outboxes: Vec<serde_json::Value> = crate::metrics::outboxes()
        .iter()
        .map(|g| {
            serde_json::json!({
                "service": g.service(),
                "backlog": g.backlog(),
                "oldest_age_seconds": g.oldest_age(),
                "quarantined": g.quarantined(),
            })
        })
        .collect();
    // Quarantined rows need an operator, but the service still serves.
    let status = if outboxes
        .iter()
        .any(|o| o["quarantined"].as_i64().unwrap_or(0) > 0)
    {
        "degraded"
    } else {
        "ok"
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({"status": status, "outboxes": outboxes}).to_string(),
    )
}
