//! Metrics end to end: `paddock dev` serves Prometheus text at `/metrics`
//! on its admin listener. After a project is created, a developer is refused
//! and a sandbox runs, this test parses the text and finds every metric the
//! platform promises: RPC durations per method and status, authz
//! decisions, the auth cache hit ratio, outbox backlog and age, the audit
//! append count, sandboxes by state and Docker call latency.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use paddock_e2e::{Backend, Dev, e2e_tests};

const IMAGE: &str = paddock_testkit::image::IMAGE;

/// One sample: its name, its labels and its value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// GETs `path` from the admin listener: (content type, body).
fn get(endpoint: &str, path: &str) -> (String, String) {
    let addr = endpoint.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {response:?}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    (content_type, body.to_owned())
}

/// Parses the Prometheus text format (0.0.4): `name{k="v",…} value` lines;
/// `#` lines are comments. Panics on a line it cannot read, so a malformed
/// exposition fails the test.
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("value {v:?} in {line:?}: {e}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                (name, labels_of(inner, line))
            }
            None => (series, BTreeMap::new()),
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

/// `k="v",k2="v2"` with `\"`, `\\` and `\n` escapes.
fn labels_of(inner: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = inner;
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("bad label in {line:?}"));
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => panic!("dangling escape in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    labels
}

/// The samples named `name` whose labels include `with`.
fn find<'a>(samples: &'a [Sample], name: &str, with: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && with
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

fn total(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    find(samples, name, with).iter().map(|s| s.value).sum()
}

/// Every promise, checked on one scrape; the first one missing, if any.
fn missing(samples: &[Sample]) -> Option<String> {
    let identity = [
        ("rpc_service", "paddock.identity.v1.IdentityService"),
        ("rpc_method", "CreateProject"),
    ];
    let checks: Vec<(&str, bool)> = vec![
        (
            "a CreateProject served OK",
            total(
                samples,
                "rpc_server_call_duration_seconds_count",
                &[identity[0], identity[1], ("rpc_grpc_status_code", "0")],
            ) >= 1.0,
        ),
        (
            "a QueryEvents refused with PERMISSION_DENIED (7)",
            total(
                samples,
                "rpc_server_call_duration_seconds_count",
                &[
                    ("rpc_service", "paddock.audit.v1.AuditService"),
                    ("rpc_method", "QueryEvents"),
                    ("rpc_grpc_status_code", "7"),
                ],
            ) >= 1.0,
        ),
        (
            "calls made to authz",
            total(
                samples,
                "rpc_client_call_duration_seconds_count",
                &[("rpc_service", "paddock.authz.v1.AuthzService")],
            ) >= 1.0,
        ),
        (
            "allowed decisions",
            total(
                samples,
                "paddock_authz_decisions_total",
                &[("decision", "allow")],
            ) >= 1.0,
        ),
        (
            "denied decisions",
            total(
                samples,
                "paddock_authz_decisions_total",
                &[("decision", "deny")],
            ) >= 1.0,
        ),
        (
            "principal cache hits",
            total(
                samples,
                "paddock_auth_cache_lookups_total",
                &[("cache", "principal"), ("result", "hit")],
            ) >= 1.0,
        ),
        (
            "the principal cache hit ratio",
            !find(
                samples,
                "paddock_auth_cache_hit_ratio",
                &[("cache", "principal")],
            )
            .is_empty(),
        ),
        (
            "identity's outbox backlog",
            !find(
                samples,
                "paddock_outbox_backlog",
                &[("service", "identity")],
            )
            .is_empty(),
        ),
        (
            "the runner's outbox oldest age",
            !find(
                samples,
                "paddock_outbox_oldest_age_seconds",
                &[("service", "sandbox-runner")],
            )
            .is_empty(),
        ),
        (
            "authz's quarantine count",
            !find(
                samples,
                "paddock_outbox_quarantined",
                &[("service", "authz")],
            )
            .is_empty(),
        ),
        (
            "appended audit events",
            total(samples, "paddock_audit_events_appended_total", &[]) >= 1.0,
        ),
        (
            "a running sandbox",
            total(samples, "paddock_sandboxes", &[("state", "running")]) >= 1.0,
        ),
        (
            "Docker container.create latency",
            total(
                samples,
                "paddock_docker_call_duration_seconds_count",
                &[("operation", "container.create")],
            ) >= 1.0,
        ),
    ];
    checks
        .into_iter()
        .find(|(_, ok)| !ok)
        .map(|(what, _)| what.to_owned())
}

fn metrics_are_served_as_prometheus_text(backend: Backend) {
    let dev = Dev::start(backend);
    let owner = dev.acme_with_bot();
    let created = dev.paddock(Some(&owner), &["project", "create", "web"]);
    assert_eq!(created.code, 0, "{created:#?}");
    // A developer may not read the audit trail: a denial.
    let developer = dev.join(&owner, "dev@acme.test", "developer");
    let developer = developer["secret"].as_str().expect("secret").to_owned();
    let refused = dev.paddock(Some(&developer), &["audit", "query"]);
    assert_ne!(refused.code, 0, "{refused:#?}");
    // Twice: the second lookup of the same token is a cache hit.
    dev.paddock(Some(&owner), &["project", "list"]).json();
    let run = dev.paddock(
        Some(&owner),
        &[
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
    // One that keeps running, for the sandboxes gauge (removed with the
    // runner's worker when the test ends).
    let detached = dev.paddock(
        Some(&owner),
        &[
            "run",
            "--detach",
            "--agent",
            "bot",
            "--project",
            "web",
            "--image",
            IMAGE,
            "--",
            "sleep",
            "300",
        ],
    );
    assert_eq!(detached.code, 0, "{detached:#?}");

    // Gauges are refreshed in the background: wait for every promise.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (content_type, samples) = loop {
        let (content_type, body) = get(&dev.admin_endpoint, "/metrics");
        let samples = parse(&body);
        match missing(&samples) {
            None => break (content_type, samples),
            Some(what) if Instant::now() > deadline => {
                panic!("/metrics never showed {what}:\n{body}")
            }
            Some(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    };
    assert!(
        content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
        "{content_type}"
    );

    // A histogram's buckets are cumulative and end at +Inf = count.
    let labels = [
        ("rpc_service", "paddock.identity.v1.IdentityService"),
        ("rpc_method", "CreateProject"),
        ("rpc_grpc_status_code", "0"),
        ("rpc_system", "grpc"),
    ];
    let mut buckets: Vec<(f64, f64)> =
        find(&samples, "rpc_server_call_duration_seconds_bucket", &labels)
            .iter()
            .map(|s| {
                let le = s.labels.get("le").expect("le");
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect("le")
                };
                (le, s.value)
            })
            .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() > 5, "{buckets:?}");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    let count = total(&samples, "rpc_server_call_duration_seconds_count", &labels);
    assert_eq!(
        buckets.last().map(|b| (b.0, b.1)),
        Some((f64::INFINITY, count))
    );
    assert!(total(&samples, "rpc_server_call_duration_seconds_sum", &labels) > 0.0);
    let ratio = find(
        &samples,
        "paddock_auth_cache_hit_ratio",
        &[("cache", "principal")],
    );
    assert!(
        ratio.iter().all(|s| (0.0..=1.0).contains(&s.value)),
        "{ratio:?}"
    );
    // Nothing is quarantined, and a secret never shows up in a label.
    assert_eq!(total(&samples, "paddock_outbox_quarantined", &[]), 0.0);
    assert!(
        samples.iter().all(|s| s
            .labels
            .values()
            .all(|v| !v.contains(&owner) && !v.contains("pdk_"))),
        "a token in a label"
    );

    // /healthz: up, with each service's outbox.
    let (content_type, body) = get(&dev.admin_endpoint, "/healthz");
    assert_eq!(content_type, "application/json");
    let health: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(health["status"], "ok", "{health:#}");
    let services: Vec<&str> = health["outboxes"]
        .as_array()
        .expect("outboxes")
        .iter()
        .filter_map(|o| o["service"].as_str())
        .collect();
    for service in ["identity", "authz", "sandbox-runner"] {
        assert!(services.contains(&service), "{health:#}");
    }
}

e2e_tests!(metrics_are_served_as_prometheus_text);
