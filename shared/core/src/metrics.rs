//! Metrics: OpenTelemetry instruments every service records into, read as
//! Prometheus text at `/metrics` on the admin listener ([`crate::admin`])
//! and pushed over OTLP/gRPC when an exporter is configured
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `…_METRICS_ENDPOINT`, unless
//! `OTEL_METRICS_EXPORTER=none`). `OTEL_SDK_DISABLED=true` turns them off.
//!
//! Hot paths pay little: counts are atomics that the SDK reads when it
//! collects (observable instruments); only durations go through histograms.
//! Before [`init`] (a library used on its own, a unit test) the atomics
//! still count and nothing else happens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter, MeterProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};

/// Histogram bounds in seconds, from half a millisecond (a cached check)
/// to ten seconds (a sandbox start).
const SECONDS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// What [`init`] set up.
pub struct Metrics {
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
    exporting: bool,
    rpc_server: Histogram<f64>,
    rpc_client: Histogram<f64>,
    docker: Histogram<f64>,
}

static METRICS: OnceLock<Option<Metrics>> = OnceLock::new();

/// Sets up the meter provider once per process: a Prometheus reader always,
/// an OTLP reader when configured. `service` names the resource (`paddock`
/// when one process serves several). Returns what the OTLP exporter could
/// not do, if anything, for the caller to report.
pub(crate) fn init(service: &str, disabled: bool, otlp_endpoint: Option<&str>) -> Option<String> {
    let mut problem = None;
    METRICS.get_or_init(|| {
        if disabled {
            return None;
        }
        let registry = prometheus::Registry::new();
        let resource = if env("OTEL_SERVICE_NAME").is_some() {
            Resource::builder().build()
        } else {
            Resource::builder()
                .with_service_name(service.to_owned())
                .build()
        };
        let mut builder = SdkMeterProvider::builder().with_resource(resource);
        match opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .scope_info_enabled(false)
            .build()
        {
            Ok(reader) => builder = builder.with_reader(reader),
            Err(e) => problem = Some(format!("Prometheus exporter: {e}")),
        }
        let mut exporting = false;
        match otlp_reader(otlp_endpoint) {
            Ok(Some(reader)) => {
                builder = builder.with_reader(reader);
                exporting = true;
            }
            Ok(None) => {}
            Err(e) => {
                problem = Some(format!(
                    "OTLP metric exporter: {e}; metrics are not exported"
                ))
            }
        }
        let provider = builder.build();
        let meter = provider.meter("paddock");
        observe(&meter);
        let duration = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(SECONDS.to_vec())
                .build()
        };
        Some(Metrics {
            rpc_server: duration("rpc.server.call.duration", "Duration of RPCs served"),
            rpc_client: duration("rpc.client.call.duration", "Duration of RPCs made"),
            docker: duration(
                "paddock.docker.call.duration",
                "Duration of Docker Engine calls",
            ),
            registry,
            exporting,
            provider,
        })
    });
    problem
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The OTLP reader, when an endpoint is configured (or given) and
/// `OTEL_METRICS_EXPORTER` is not `none`.
fn otlp_reader(
    endpoint: Option<&str>,
) -> Result<Option<PeriodicReader<opentelemetry_otlp::MetricExporter>>, String> {
    use opentelemetry_otlp::WithExportConfig;
    let configured = endpoint.is_some()
        || env("OTEL_EXPORTER_OTLP_ENDPOINT")
            .or_else(|| env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"))
            .is_some();
    let off = env("OTEL_METRICS_EXPORTER").is_some_and(|v| v.trim() == "none");
    if !configured || off {
        return Ok(None);
    }
    let protocol = env("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "grpc".to_owned());
    if protocol.trim() != "grpc" {
        return Err(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported: Paddock exports OTLP over gRPC only"
        ));
    }
    let mut builder = opentelemetry_otlp::MetricExporter::builder().with_tonic();
    if let Some(endpoint) = endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    let exporter = builder.build().map_err(|e| e.to_string())?;
    Ok(Some(PeriodicReader::builder(exporter).build()))
}

fn get() -> Option<&'static Metrics> {
    METRICS.get().and_then(Option::as_ref)
}

/// The metrics as Prometheus text (format 0.0.4), or `None` when
/// OpenTelemetry is off.
pub fn prometheus_text() -> Option<String> {
    use prometheus::Encoder as _;
    let metrics = get()?;
    let mut out = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode(&metrics.registry.gather(), &mut out) {
        tracing::warn!(error = %e, "encoding metrics");
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Pushes what the OTLP reader holds and stops it, off the async runtime.
pub(crate) async fn shutdown() {
    let Some(metrics) = get() else { return };
    if !metrics.exporting {
        return;
    }
    let provider = metrics.provider.clone();
    let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    if let Ok(Err(e)) = done {
        tracing::warn!(error = %e, "flushing metrics at shutdown");
    }
}

/// Records how long a served RPC took, with its gRPC status.
pub fn rpc_served(service: &str, method: &str, code: tonic::Code, took: Duration) {
    if let Some(m) = get() {
        m.rpc_server
            .record(took.as_secs_f64(), &rpc_attributes(service, method, code));
    }
}

/// Records how long an RPC this process made took, with its gRPC status.
pub fn rpc_made(service: &str, method: &str, code: tonic::Code, took: Duration) {
    if let Some(m) = get() {
        m.rpc_client
            .record(took.as_secs_f64(), &rpc_attributes(service, method, code));
    }
}

fn rpc_attributes(service: &str, method: &str, code: tonic::Code) -> [KeyValue; 4] {
    [
        KeyValue::new("rpc.system", "grpc"),
        KeyValue::new("rpc.service", service.to_owned()),
        KeyValue::new("rpc.method", method.to_owned()),
        KeyValue::new("rpc.grpc.status_code", code as i64),
    ]
}

/// Records how long a Docker Engine call took.
pub fn docker_call(operation: &'static str, took: Duration) {
    if let Some(m) = get() {
        m.docker
            .record(took.as_secs_f64(), &[KeyValue::new("operation", operation)]);
    }
}

/// Times every span named `docker.…` (each Docker Engine call is one) into
/// the Docker latency histogram, so the calls need no second wrapper.
pub(crate) struct DockerCallTimer;

struct Started(std::time::Instant);

impl DockerCallTimer {
    /// The spans it times.
    pub(crate) fn wants(metadata: &tracing::Metadata<'_>) -> bool {
        metadata.is_span() && metadata.name().starts_with("docker.")
    }
}

impl<S> tracing_subscriber::Layer<S> for DockerCallTimer
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        _attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if let Some(span) = ctx.span(id) {
            span.extensions_mut()
                .insert(Started(std::time::Instant::now()));
        }
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        if let Some(span) = ctx.span(&id)
            && let Some(Started(at)) = span.extensions().get::<Started>()
        {
            let name = span.name();
            docker_call(name.strip_prefix("docker.").unwrap_or(name), at.elapsed());
        }
    }
}

/// Counts that hot paths bump and the SDK reads when it collects.
#[derive(Default)]
struct Counts {
    principal_hits: AtomicU64,
    principal_misses: AtomicU64,
    decision_hits: AtomicU64,
    decision_misses: AtomicU64,
    allowed: AtomicU64,
    denied: AtomicU64,
    appended: AtomicU64,
    scanners_lost: AtomicU64,
}

static COUNTS: Counts = Counts {
    principal_hits: AtomicU64::new(0),
    principal_misses: AtomicU64::new(0),
    decision_hits: AtomicU64::new(0),
    decision_misses: AtomicU64::new(0),
    allowed: AtomicU64::new(0),
    denied: AtomicU64::new(0),
    appended: AtomicU64::new(0),
    scanners_lost: AtomicU64::new(0),
};

/// Which authentication cache a lookup went to.
#[derive(Debug, Clone, Copy)]
pub enum Cache {
    /// Principals by token hash, in front of identity.
    Principal,
    /// Decisions, in front of authz.
    Decision,
}

/// Counts a lookup in one of the admission caches.
pub fn cache_lookup(cache: Cache, hit: bool) {
    let counter = match (cache, hit) {
        (Cache::Principal, true) => &COUNTS.principal_hits,
        (Cache::Principal, false) => &COUNTS.principal_misses,
        (Cache::Decision, true) => &COUNTS.decision_hits,
        (Cache::Decision, false) => &COUNTS.decision_misses,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Counts a decision authz made.
pub fn decision(allowed: bool) {
    let counter = if allowed {
        &COUNTS.allowed
    } else {
        &COUNTS.denied
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Counts events the audit service appended to its chains.
pub fn appended(events: u64) {
    COUNTS.appended.fetch_add(events, Ordering::Relaxed);
}

/// Counts a workspace scanner that stopped before its sandbox did.
pub fn scanner_lost() {
    COUNTS.scanners_lost.fetch_add(1, Ordering::Relaxed);
}

/// The state of one service's audit outbox, as its forwarder last saw it.
pub struct OutboxGauge {
    service: &'static str,
    backlog: AtomicI64,
    /// Unix microseconds of the oldest waiting event; 0 when none waits.
    oldest: AtomicI64,
    quarantined: AtomicI64,
}

impl OutboxGauge {
    /// A gauge for `service`'s outbox, read while it lives.
    pub fn register(service: &'static str) -> Arc<Self> {
        let gauge = Arc::new(Self {
            service,
            backlog: AtomicI64::new(0),
            oldest: AtomicI64::new(0),
            quarantined: AtomicI64::new(0),
        });
        let mut all = OUTBOXES.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|g| g.strong_count() > 0);
        all.push(Arc::downgrade(&gauge));
        gauge
    }

    /// What the forwarder counted: rows waiting, the oldest one's time (unix
    /// microseconds) and rows in quarantine.
    pub fn set(&self, backlog: i64, oldest: Option<i64>, quarantined: i64) {
        self.backlog.store(backlog, Ordering::Relaxed);
        self.oldest.store(oldest.unwrap_or(0), Ordering::Relaxed);
        self.quarantined.store(quarantined, Ordering::Relaxed);
    }

    pub fn service(&self) -> &'static str {
        self.service
    }

    pub fn backlog(&self) -> i64 {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Seconds the oldest waiting event has waited (0 when none waits).
    pub fn oldest_age(&self) -> f64 {
        match self.oldest.load(Ordering::Relaxed) {
            0 => 0.0,
            at => (crate::time::now_micros() - at).max(0) as f64 / 1e6,
        }
    }

    pub fn quarantined(&self) -> i64 {
        self.quarantined.load(Ordering::Relaxed)
    }
}

static OUTBOXES: Mutex<Vec<Weak<OutboxGauge>>> = Mutex::new(Vec::new());

/// Every live outbox gauge.
pub fn outboxes() -> Vec<Arc<OutboxGauge>> {
    let all = OUTBOXES.lock().unwrap_or_else(|e| e.into_inner());
    all.iter().filter_map(Weak::upgrade).collect()
}

/// One runner's count: `(state, sandboxes)`.
type ByState = Vec<(String, i64)>;

/// Sandboxes by state, per runner worker, as each runner last counted them.
static SANDBOXES: Mutex<Option<HashMap<String, ByState>>> = Mutex::new(None);

/// What a runner counted: its sandboxes by state.
pub fn set_sandboxes(worker: &str, by_state: Vec<(String, i64)>) {
    let mut all = SANDBOXES.lock().unwrap_or_else(|e| e.into_inner());
    all.get_or_insert_with(HashMap::new)
        .insert(worker.to_owned(), by_state);
}

/// Registers the observable instruments on `meter`.
fn observe(meter: &Meter) {
    let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
    meter
        .u64_observable_counter("paddock.auth.cache.lookups")
        .with_description("Lookups in the admission caches, by cache and result")
        .with_callback(move |o| {
            for (cache, hits, misses) in [
                (
                    "principal",
                    &COUNTS.principal_hits,
                    &COUNTS.principal_misses,
                ),
                ("decision", &COUNTS.decision_hits, &COUNTS.decision_misses),
            ] {
                o.observe(
                    count(hits),
                    &[
                        KeyValue::new("cache", cache),
                        KeyValue::new("result", "hit"),
                    ],
                );
                o.observe(
                    count(misses),
                    &[
                        KeyValue::new("cache", cache),
                        KeyValue::new("result", "miss"),
                    ],
                );
            }
        })
        .build();
    meter
        .f64_observable_gauge("paddock.auth.cache.hit_ratio")
        .with_description("Share of admission cache lookups answered from the cache since start")
        .with_callback(move |o| {
            for (cache, hits, misses) in [
                (
                    "principal",
                    &COUNTS.principal_hits,
                    &COUNTS.principal_misses,
                ),
                ("decision", &COUNTS.decision_hits, &COUNTS.decision_misses),
            ] {
                let (h, m) = (count(hits), count(misses));
                if h + m > 0 {
                    o.observe(h as f64 / (h + m) as f64, &[KeyValue::new("cache", cache)]);
                }
            }
        })
        .build();
    meter
        .u64_observable_counter("paddock.authz.decisions")
        .with_description("Decisions authz made, by decision")
        .with_callback(move |o| {
            o.observe(
                count(&COUNTS.allowed),
                &[KeyValue::new("decision", "allow")],
            );
            o.observe(count(&COUNTS.denied), &[KeyValue::new("decision", "deny")]);
        })
        .build();
    meter
        .u64_observable_counter("paddock.audit.events.appended")
        .with_description("Audit events appended to the hash chains")
        .with_callback(move |o| o.observe(count(&COUNTS.appended), &[]))
        .build();
    meter
        .u64_observable_counter("paddock.sandbox.scanners.lost")
        .with_description("Workspace scanners that stopped before their sandbox did")
        .with_callback(move |o| o.observe(count(&COUNTS.scanners_lost), &[]))
        .build();
    meter
        .i64_observable_gauge("paddock.outbox.backlog")
        .with_description("Audit events waiting in a service's outbox")
        .with_callback(|o| {
            for g in outboxes() {
                o.observe(g.backlog(), &[KeyValue::new("service", g.service)]);
            }
        })
        .build();
    meter
        .f64_observable_gauge("paddock.outbox.oldest_age")
        .with_unit("s")
        .with_description("How long the oldest event in a service's outbox has waited")
        .with_callback(|o| {
            for g in outboxes() {
                o.observe(g.oldest_age(), &[KeyValue::new("service", g.service)]);
            }
        })
        .build();
    meter
        .i64_observable_gauge("paddock.outbox.quarantined")
        .with_description("Outbox rows that could not be decoded, kept in audit_outbox_quarantine")
        .with_callback(|o| {
            for g in outboxes() {
                o.observe(g.quarantined(), &[KeyValue::new("service", g.service)]);
            }
        })
        .build();
    meter
        .i64_observable_gauge("paddock.sandboxes")
        .with_description("Sandboxes by state, per runner worker")
        .with_callback(|o| {
            let all = SANDBOXES.lock().unwrap_or_else(|e| e.into_inner());
            for (worker, states) in all.iter().flatten() {
                for (state, n) in states {
                    o.observe(
                        *n,
                        &[
                            KeyValue::new("worker", worker.clone()),
                            KeyValue::new("state", state.clone()),
                        ],
                    );
                }
            }
        })
        .build();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Before `init` nothing is recorded, and nothing fails.
    #[test]
    fn recording_before_init_is_harmless() {
        rpc_served(
            "paddock.x.v1.X",
            "Y",
            tonic::Code::Ok,
            Duration::from_millis(1),
        );
        docker_call("container.create", Duration::from_millis(1));
        cache_lookup(Cache::Principal, true);
        let gauge = OutboxGauge::register("probe");
        gauge.set(3, Some(crate::time::now_micros() - 2_000_000), 1);
        assert_eq!(gauge.backlog(), 3);
        assert!(gauge.oldest_age() >= 2.0);
        assert!(outboxes().iter().any(|g| g.service() == "probe"));
        drop(gauge);
        assert!(!outboxes().iter().any(|g| g.service() == "probe"));
    }
}
