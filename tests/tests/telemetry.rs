//! Traces end to end: `paddock dev` exports OTLP/gRPC to a receiver served
//! by this test (the collector's trace service from `opentelemetry-proto`),
//! and the CLI's trace id (`--verbose`) finds the spans of every service a
//! command reached, their parent links and semantic-convention attributes,
//! and the audit events the command caused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use paddock_e2e::{Backend, Dev, e2e_tests};
use serde_json::Value;

const IMAGE: &str = paddock_testkit::image::IMAGE;

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    kind: i32,
    status: i32,
    attributes: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Exported>>>);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut seen = self.0.lock().expect("lock");
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .map(text)
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                seen.push(Exported {
                    service: service.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    name: span.name.clone(),
                    kind: span.kind,
                    status: span.status.as_ref().map_or(0, |s| s.code),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(kv)))
                        .collect(),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Serves the receiver on a port of its own; returns it and its endpoint.
fn start_receiver(runtime: &tokio::runtime::Runtime) -> (Receiver, String) {
    let receiver = Receiver::default();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = TraceServiceServer::new(receiver.clone());
    runtime.spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    (receiver, format!("http://{addr}"))
}

/// The trace id `paddock --verbose` printed first on stderr.
fn trace_of(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("trace id: "))
        .unwrap_or_else(|| panic!("no trace id in {stderr:?}"))
        .trim()
        .to_owned()
}

/// The spans of `trace` once `done` holds for them (a minute at most).
fn spans_of(receiver: &Receiver, trace: &str, done: impl Fn(&[Exported]) -> bool) -> Vec<Exported> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let spans: Vec<Exported> = receiver
            .0
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s.trace_id == trace)
            .cloned()
            .collect();
        if done(&spans) || Instant::now() > deadline {
            return spans;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn server_spans(spans: &[Exported]) -> Vec<&Exported> {
    spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect()
}

fn services(spans: &[Exported]) -> Vec<String> {
    let mut names: Vec<String> = server_spans(spans)
        .iter()
        .map(|s| s.service.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The audit events of `trace`, once `actions` are all there.
fn audited(dev: &Dev, owner: &str, trace: &str, actions: &[&str]) -> Vec<Value> {
    let out = dev.paddock_until(
        Some(owner),
        &["audit", "query", "--trace-id", trace],
        Duration::from_secs(60),
        |o| {
            o.code == 0
                && actions.iter().all(|a| {
                    o.json()["items"]
                        .as_array()
                        .is_some_and(|items| items.iter().any(|e| e["action"] == *a))
                })
        },
    );
    let items = out.json()["items"].as_array().cloned().unwrap_or_default();
    for action in actions {
        assert!(
            items.iter().any(|e| e["action"] == *action),
            "no {action} event with trace id {trace}: {out:#?}"
        );
    }
    items
}

fn one_command_one_trace_across_the_services(backend: Backend) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (receiver, endpoint) = start_receiver(&runtime);
    let dev = Dev::start_with_env(
        backend,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let owner = dev.acme_with_bot();

    // `project create`: identity, which asks authz.
    let created = dev.paddock(Some(&owner), &["--verbose", "project", "create", "web"]);
    assert_eq!(created.code, 0, "{created:#?}");
    let trace = trace_of(&created.stderr);
    let spans = spans_of(&receiver, &trace, |s| {
        services(s).len() >= 2
            && server_spans(s)
                .iter()
                .any(|s| s.name.ends_with("IdentityService/CreateProject"))
    });
    let create = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32 && s.name.ends_with("/CreateProject"))
        .unwrap_or_else(|| panic!("no CreateProject server span in {spans:#?}"));
    assert_eq!(create.service, "paddock-identity", "{create:#?}");
    let a = &create.attributes;
    assert_eq!(
        a.get("rpc.system").map(String::as_str),
        Some("grpc"),
        "{a:?}"
    );
    assert_eq!(
        a.get("rpc.service").map(String::as_str),
        Some("paddock.identity.v1.IdentityService"),
        "{a:?}"
    );
    assert_eq!(
        a.get("rpc.method").map(String::as_str),
        Some("CreateProject")
    );
    assert_eq!(a.get("rpc.grpc.status_code").map(String::as_str), Some("0"));
    assert_eq!(
        a.get("server.address").map(String::as_str),
        Some("127.0.0.1")
    );
    assert!(
        a.get("server.port")
            .is_some_and(|p| p.parse::<u16>().is_ok_and(|p| p > 0)),
        "{a:?}"
    );
    assert!(!a.contains_key("paddock.route"), "{a:?}");
    // Its parent is the CLI's span, which is not exported.
    assert!(!create.parent.is_empty(), "{create:#?}");
    assert!(spans.iter().all(|s| s.span_id != create.parent));
    // authz's Check is a child of a span of identity's request.
    let check = spans
        .iter()
        .find(|s| s.service == "paddock-authz" && s.kind == SpanKind::Server as i32)
        .unwrap_or_else(|| panic!("no authz server span in {spans:#?}"));
    let parent = spans
        .iter()
        .find(|s| s.span_id == check.parent)
        .unwrap_or_else(|| panic!("the parent of {check:#?} is not in {spans:#?}"));
    assert_eq!(parent.service, "paddock-identity", "{parent:#?}");
    let events = audited(&dev, &owner, &trace, &["project.create"]);
    assert!(
        events.iter().all(|e| e["trace_id"] == trace.as_str()),
        "{events:#?}"
    );

    // `run`: the runner, identity and authz, one trace; the exec's audit
    // event (recorded in a task the request spawned) carries it too.
    let run = dev.paddock(
        Some(&owner),
        &[
            "--verbose",
            "run",
            "--agent",
            "bot",
            "--project",
            "web",
            "--image",
            IMAGE,
            "--",
            "true",
        ],
    );
    assert_eq!(run.code, 0, "{run:#?}");
    let trace = trace_of(&run.stderr);
    let phases = [
        "sandbox.start",
        "docker.container.create",
        "docker.container.start",
    ];
    let spans = spans_of(&receiver, &trace, |s| {
        services(s).len() >= 3
            && s.iter().any(|s| s.name.ends_with("/CreateSandbox"))
            && phases.iter().all(|p| s.iter().any(|s| s.name == *p))
    });
    assert_eq!(
        services(&spans),
        [
            "paddock-authz",
            "paddock-identity",
            "paddock-sandbox-runner"
        ],
        "{spans:#?}"
    );
    let create = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32 && s.name.ends_with("/CreateSandbox"))
        .unwrap_or_else(|| panic!("no CreateSandbox server span in {spans:#?}"));
    assert_eq!(create.service, "paddock-sandbox-runner");
    // The CLI's calls are children of its one span (not exported); every
    // other server span is the child of a span of the service that called.
    let cli = create.parent.clone();
    let mut called_by_services = Vec::new();
    for s in server_spans(&spans) {
        if s.parent == cli {
            continue;
        }
        let parent = spans
            .iter()
            .find(|p| p.span_id == s.parent)
            .unwrap_or_else(|| panic!("the parent of {s:#?} is not exported: {spans:#?}"));
        assert_ne!(parent.service, s.service, "{s:#?} {parent:#?}");
        assert_eq!(parent.kind, SpanKind::Client as i32, "{parent:#?}");
        assert_eq!(
            parent.attributes.get("rpc.method"),
            s.attributes.get("rpc.method"),
            "{s:#?} {parent:#?}"
        );
        called_by_services.push(s.service.as_str());
    }
    for service in ["paddock-identity", "paddock-authz"] {
        assert!(
            called_by_services.contains(&service),
            "the runner never called {service}: {spans:#?}"
        );
    }
    // The sandbox's phases and its Docker Engine calls are in the trace.
    for name in phases {
        let span = spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span in {spans:#?}"));
        assert_eq!(span.service, "paddock-sandbox-runner", "{span:#?}");
    }
    let events = audited(&dev, &owner, &trace, &["sandbox.create", "sandbox.exec"]);
    assert!(
        events.iter().all(|e| e["trace_id"] == trace.as_str()),
        "{events:#?}"
    );

    // A refused call: its server span has the code and an error status; the
    // CLI names the trace in its error.
    let missing = dev.paddock(Some(&owner), &["project", "delete", "nope"]);
    let err: Value = serde_json::from_str(missing.stderr.trim()).expect("json error");
    assert_eq!(err["code"], "NOT_FOUND", "{missing:#?}");
    let trace = err["trace_id"].as_str().expect("trace id").to_owned();
    let spans = spans_of(&receiver, &trace, |s| {
        server_spans(s)
            .iter()
            .any(|s| s.name.ends_with("/DeleteProject"))
    });
    let delete = spans
        .iter()
        .find(|s| s.name.ends_with("/DeleteProject"))
        .unwrap_or_else(|| panic!("no DeleteProject span in {spans:#?}"));
    assert_eq!(
        delete
            .attributes
            .get("rpc.grpc.status_code")
            .map(String::as_str),
        Some("5"),
        "{delete:#?}"
    );
    assert_eq!(delete.status, StatusCode::Error as i32, "{delete:#?}");
}

e2e_tests!(one_command_one_trace_across_the_services);
