use super::*;

fn with_tracing<T>(f: impl FnOnce() -> T) -> T {
    tracing::subscriber::with_default(test_subscriber(), f)
}

const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn a_server_span_continues_the_callers_trace_and_passes_it_on() {
    with_tracing(|| {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", INCOMING.parse().unwrap());
        let span = tracing::info_span!("rpc");
        continue_trace(&span, &headers, Some("paddock-identity"));
        let _entered = span.enter();
        assert_eq!(
            current_trace_id().as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        // A call made inside (even from a child span) carries the trace on,
        // with a span id of its own.
        let child = tracing::info_span!("child");
        let _child = child.enter();
        let mut headers = http::HeaderMap::new();
        inject(&mut headers);
        let sent = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .expect("traceparent");
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{sent}"
        );
        assert!(!sent.contains("00f067aa0ba902b7"), "{sent}");
    });
}

#[test]
fn without_a_caller_trace_a_request_starts_one() {
    with_tracing(|| {
        let bad = [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ];
        let mut seen = Vec::new();
        for value in bad {
            let mut headers = http::HeaderMap::new();
            headers.insert("traceparent", value.parse().unwrap());
            let span = tracing::info_span!("rpc");
            continue_trace(&span, &headers, Some("paddock-authz"));
            let id = span.in_scope(current_trace_id).expect("a new trace");
            assert_eq!(id.len(), 32);
            assert_ne!(id, "0".repeat(32));
            seen.push(id);
        }
        assert_ne!(seen[0], seen[1], "each request its own trace");
    });
    // Outside any span there is no trace.
    assert_eq!(current_trace_id(), None);
    assert_eq!(trace_id_or_dash(), "-");
}

#[test]
fn paths_name_their_service_and_method() {
    assert_eq!(
        service_of("/paddock.identity.v1.IdentityService/CreateProject"),
        Some("paddock-identity")
    );
    assert_eq!(
        service_of("/paddock.sandbox.v1.SandboxService/Exec"),
        Some("paddock-sandbox-runner")
    );
    assert_eq!(service_of("/grpc.health.v1.Health/Check"), None);
    assert_eq!(service_of("nonsense"), None);
    assert_eq!(
        rpc_parts("/paddock.authz.v1.AuthzService/Check"),
        ("paddock.authz.v1.AuthzService", "Check")
    );
}
