//! Logs and traces. `tracing` spans become OpenTelemetry spans through
//! `tracing-opentelemetry`; the W3C trace context travels in gRPC metadata
//! (`traceparent`), read by the server stack and written by every Paddock
//! client, so one trace id follows a request through every hop, every task
//! it spawns and every audit event it causes.
//!
//! Configuration is OpenTelemetry's own environment: an OTLP/gRPC exporter
//! runs only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is
//! set and `OTEL_SDK_DISABLED` is not `true`; `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_TRACES_SAMPLER`/`_ARG` are read by
//! the SDK. Without an exporter spans are not recorded (their ids still
//! flow, for logs and audit); with `OTEL_SDK_DISABLED=true` there is no
//! OpenTelemetry at all, trace ids included. One process may serve several services
//! (`paddock dev`): each span is exported under the `service.name` of the
//! service whose request it belongs to.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Sampler, SdkTracerProvider, Span as SdkSpan, SpanData, SpanProcessor,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

mod json;

/// The attribute that carries a span's service from its start to its
/// export; never exported itself.
const ROUTE: &str = "paddock.route";

/// The service a span belongs to, kept in the OpenTelemetry context of a
/// request's server span, so every span below it inherits it.
#[derive(Debug, Clone, Copy)]
struct ServiceName(&'static str);

/// What `init` set up; `shutdown` flushes the exporter.
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
}

static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();

/// Initializes logging and tracing once per process, for the services it
/// serves (`paddock-identity`, …; none for a tool). `PADDOCK_LOG` (or
/// `RUST_LOG`) sets the filter, default `info`; `PADDOCK_LOG_FORMAT=json`
/// writes one JSON object per line with `trace_id` and `span_id`. Colours
/// only on a terminal, never with `NO_COLOR`. An exporter that cannot be
/// built is reported and left out: telemetry never stops a service.
pub fn init(services: &[&'static str]) -> &'static Telemetry {
    init_with(services, false)
}

/// As [`init`], logging nothing unless `PADDOCK_LOG` says otherwise: for
/// tests and benches, which still want traces.
pub fn init_quiet(services: &[&'static str]) -> &'static Telemetry {
    init_with(services, true)
}

/// As [`init_quiet`], exporting to `endpoint` (OTLP/gRPC) whatever the
/// environment says: for a bench that measures the cost of exporting.
pub fn init_quiet_exporting(services: &[&'static str], endpoint: &str) -> &'static Telemetry {
    TELEMETRY.get_or_init(|| {
        let (provider, exporting, problem) = match Router::new(services, Some(endpoint)) {
            Ok(router) => (
                SdkTracerProvider::builder()
                    .with_span_processor(router)
                    .build(),
                true,
                None,
            ),
            Err(e) => (
                SdkTracerProvider::builder()
                    .with_sampler(Sampler::AlwaysOff)
                    .build(),
                false,
                Some(format!("OTLP exporter: {e}")),
            ),
        };
        finish_init(services, provider, exporting, problem, true)
    })
}

fn finish_init(
    services: &[&'static str],
    provider: SdkTracerProvider,
    exporting: bool,
    problem: Option<String>,
    quiet: bool,
) -> Telemetry {
    // OTEL_SDK_DISABLED: no OpenTelemetry at all, trace ids included.
    let tracer = (!sdk_disabled() || exporting).then(|| provider.tracer("paddock"));
    install_subscriber(tracer, quiet);
    if let Some(problem) = problem {
        tracing::warn!("{problem}; traces are not exported");
    }
    // One meter provider per process: several services in one process
    // share it, told apart by their RPC and service attributes.
    let name = match services {
        [one] => one,
        _ => "paddock",
    };
    if let Some(problem) = crate::metrics::init(name, sdk_disabled(), None) {
        tracing::warn!("{problem}");
    }
    Telemetry {
        provider,
        exporting,
    }
}

fn init_with(services: &[&'static str], quiet: bool) -> &'static Telemetry {
    TELEMETRY.get_or_init(|| {
        let (provider, exporting, problem) = provider(services);
        finish_init(services, provider, exporting, problem, quiet)
    })
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.exporting
    }

    /// Exports what is buffered and stops the exporter, off the async
    /// runtime (the exporter needs it to make progress).
    pub async fn shutdown(&'static self) {
        crate::metrics::shutdown().await;
        if !self.exporting {
            return;
        }
        let provider = self.provider.clone();
        let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "flushing traces at shutdown");
        }
    }

    /// Exports what is buffered now, without stopping.
    pub async fn flush(&'static self) {
        if !self.exporting {
            return;
        }
        let provider = self.provider.clone();
        let _ = tokio::task::spawn_blocking(move || provider.force_flush()).await;
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn sdk_disabled() -> bool {
    env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// The tracer provider: with an exporter per service when OTLP is
/// configured, else one that records nothing and only hands out ids.
fn provider(services: &[&'static str]) -> (SdkTracerProvider, bool, Option<String>) {
    let silent = || {
        SdkTracerProvider::builder()
            .with_sampler(Sampler::AlwaysOff)
            .build()
    };
    let disabled = sdk_disabled();
    let configured = env("OTEL_EXPORTER_OTLP_ENDPOINT")
        .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        .is_some();
    if disabled || !configured {
        return (silent(), false, None);
    }
    let protocol = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "grpc".to_owned());
    if protocol.trim() != "grpc" {
        return (
            silent(),
            false,
            Some(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported: Paddock exports OTLP over gRPC only"
            )),
        );
    }
    match Router::new(services, None) {
        Ok(router) => (
            SdkTracerProvider::builder()
                .with_span_processor(router)
                .build(),
            true,
            None,
        ),
        Err(e) => (silent(), false, Some(format!("OTLP exporter: {e}"))),
    }
}

fn install_subscriber(tracer: Option<opentelemetry_sdk::trace::SdkTracer>, quiet: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::Layer;
    let filter = env("PADDOCK_LOG")
        .or_else(|| env("RUST_LOG"))
        .unwrap_or_else(|| if quiet { "off" } else { "info" }.to_owned());
    let filter = tracing_subscriber::EnvFilter::new(filter);
    // Spans are traced at info whatever the log filter says, so trace ids
    // reach audit events even when nothing is logged.
    // Context activation would attach the OpenTelemetry context on every
    // poll; Paddock reads it from the span instead.
    let otel = tracer.map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_threads(false)
            .with_location(false)
            .with_level(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    let timer = crate::metrics::DockerCallTimer.with_filter(tracing_subscriber::filter::filter_fn(
        crate::metrics::DockerCallTimer::wants,
    ));
    let registry = tracing_subscriber::registry().with(otel).with(timer);
    let json = env("PADDOCK_LOG_FORMAT").is_some_and(|f| f.trim().eq_ignore_ascii_case("json"));
    let _ = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(json::JsonWithTrace)
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init()
    } else {
        let colour = std::io::stderr().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(colour)
                    .with_writer(std::io::stderr)
                    .with_target(false)
                    .with_filter(filter),
            )
            .try_init()
    };
    tracing::dispatcher::get_default(|d| {
        let _ = json::DISPATCH.set(d.downgrade());
    });
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
}

/// Hands each ended span to the exporter of its service, so every service
/// of a process is exported under its own `service.name`.
#[derive(Debug)]
struct Router {
    /// Spans outside any service's request (a tool, a background task).
    fallback: &'static str,
    routes: HashMap<&'static str, BatchSpanProcessor>,
}

impl Router {
    fn new(
        services: &[&'static str],
        endpoint: Option<&str>,
    ) -> Result<Self, opentelemetry_otlp::ExporterBuildError> {
        use opentelemetry_otlp::WithExportConfig;
        let fallback = services.first().copied().unwrap_or("paddock");
        let own_name = services.len() <= 1;
        let mut routes = HashMap::new();
        for service in services.iter().copied().chain([fallback]) {
            if routes.contains_key(service) {
                continue;
            }
            let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if let Some(endpoint) = endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            let exporter = builder.build()?;
            let mut processor = BatchSpanProcessor::builder(exporter).build();
            // A lone service answers to OTEL_SERVICE_NAME; several in one
            // process keep their own names.
            let resource = if own_name && env("OTEL_SERVICE_NAME").is_some() {
                Resource::builder().build()
            } else {
                Resource::builder().with_service_name(service).build()
            };
            processor.set_resource(&resource);
            routes.insert(service, processor);
        }
        Ok(Self { fallback, routes })
    }

    fn route(&self, name: &str) -> Option<&BatchSpanProcessor> {
        self.routes
            .get(name)
            .or_else(|| self.routes.get(self.fallback))
    }
}

impl SpanProcessor for Router {
    fn on_start(&self, span: &mut SdkSpan, cx: &Context) {
        use opentelemetry::trace::Span as _;
        let service = cx.get::<ServiceName>().map_or(self.fallback, |s| s.0);
        span.set_attribute(KeyValue::new(ROUTE, service));
    }

    fn on_end(&self, mut span: SpanData) {
        let mut service = String::new();
        span.attributes.retain(|kv| {
            if kv.key.as_str() == ROUTE {
                service = kv.value.as_str().into_owned();
                false
            } else {
                true
            }
        });
        if let Some(p) = self.route(&service) {
            p.on_end(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        for p in self.routes.values() {
            p.force_flush()?;
        }
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let mut result = Ok(());
        for p in self.routes.values() {
            if let Err(e) = p.shutdown_with_timeout(timeout) {
                result = Err(e);
            }
        }
        result
    }

    // Each route keeps the resource of its own service.
    fn set_resource(&mut self, _resource: &Resource) {}
}

/// The service a gRPC path belongs to (`/paddock.identity.v1.…` →
/// `paddock-identity`), for spans' `service.name`.
pub fn service_of(path: &str) -> Option<&'static str> {
    let package = path.trim_start_matches('/').split('.').nth(1)?;
    Some(match package {
        "identity" => "paddock-identity",
        "authz" => "paddock-authz",
        "audit" => "paddock-audit",
        "sandbox" => "paddock-sandbox-runner",
        _ => return None,
    })
}

/// `(rpc.service, rpc.method)` of a gRPC path.
pub fn rpc_parts(path: &str) -> (&str, &str) {
    path.trim_start_matches('/')
        .rsplit_once('/')
        .unwrap_or((path, ""))
}

/// Makes `span` (a server span) continue the trace in `headers`, if any,
/// and marks it, with what runs below it, as `service`'s.
pub fn continue_trace(
    span: &tracing::Span,
    headers: &http::HeaderMap,
    service: Option<&'static str>,
) {
    let mut parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if let Some(service) = service {
        parent = parent.with_value(ServiceName(service));
    }
    let _ = span.set_parent(parent);
}

/// The trace of a command-line tool, for the calls it makes outside any
/// span.
static PROCESS_TRACE: OnceLock<SpanContext> = OnceLock::new();

/// Starts the one trace of a tool's run (the `paddock` CLI): every call it
/// makes outside a span carries it, sampled, so services that export record
/// it. Returns its trace id, for the user to find the trace.
pub fn start_process_trace() -> String {
    use opentelemetry::trace::{TraceFlags, TraceState};
    use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
    let ids = RandomIdGenerator::default();
    let sc = PROCESS_TRACE.get_or_init(|| {
        SpanContext::new(
            ids.new_trace_id(),
            ids.new_span_id(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        )
    });
    sc.trace_id().to_string()
}

/// The trace id of this tool's run, once started.
pub fn process_trace_id() -> Option<String> {
    PROCESS_TRACE.get().map(|sc| sc.trace_id().to_string())
}

/// Writes the current trace context (the current span's, else the tool's
/// run) into outgoing HTTP/2 headers.
pub fn inject(headers: &mut http::HeaderMap) {
    let mut cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid()
        && let Some(sc) = PROCESS_TRACE.get()
    {
        cx = Context::new().with_remote_span_context(sc.clone());
    }
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// Records the gRPC status of a response on `span` (an RPC span) and
/// returns it: see [`status_code`].
pub fn record_status(span: &tracing::Span, headers: &http::HeaderMap) -> tonic::Code {
    let code = status_code(headers);
    record_code(span, code);
    code
}

/// The gRPC status of a response: from `grpc-status` in the headers (a
/// refusal or a trailers-only error), else OK.
pub fn status_code(headers: &http::HeaderMap) -> tonic::Code {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from)
}

/// Records `code` on `span` (an RPC span).
pub fn record_code(span: &tracing::Span, code: tonic::Code) {
    span.record("rpc.grpc.status_code", code as i64);
    if code != tonic::Code::Ok {
        span.record("otel.status_code", "ERROR");
    }
}

/// The span context of the current span (invalid outside any).
pub fn current_span_context() -> SpanContext {
    tracing::Span::current()
        .context()
        .span()
        .span_context()
        .clone()
}

/// The current trace id (32 hex digits), if there is a trace.
pub fn current_trace_id() -> Option<String> {
    let sc = current_span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The current span's context as a W3C `traceparent` value, if there is a
/// trace.
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut headers = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut headers);
    headers.remove("traceparent")
}

/// The span context a `traceparent` value names, if it is well formed.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let headers = HashMap::from([("traceparent".to_owned(), value.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&headers);
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// Links `span` to another span (one that caused its work).
pub fn link(span: &tracing::Span, to: SpanContext) {
    span.add_link(to);
}

/// The current trace id, or `-` outside a trace (for messages).
pub fn trace_id_or_dash() -> String {
    current_trace_id().unwrap_or_else(|| "-".to_owned())
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::try_from(value),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// A subscriber like the installed one, exporting nothing, for a test's
/// thread.
#[cfg(test)]
pub(crate) fn test_subscriber() -> impl tracing::Subscriber + Send + Sync {
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOff)
        .build();
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
}

#[cfg(test)]
mod tests;
