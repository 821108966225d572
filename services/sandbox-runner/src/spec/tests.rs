use std::time::Duration;

use paddock_proto::authz::v1::{AgentPolicy, NetworkMode, ResourceLimits};
use paddock_proto::sandbox::v1::{CredentialMount, SandboxSpec};
use paddock_shared::error::Error;
use paddock_shared::time::proto_duration;

use super::*;

fn policy() -> AgentPolicy {
    AgentPolicy {
        max: Some(ResourceLimits {
            cpus: 2.0,
            memory_bytes: 1 << 30,
            pids: 512,
            disk_bytes: 4 << 30,
            ttl: Some(proto_duration(Duration::from_secs(7200))),
        }),
        defaults: Some(ResourceLimits {
            cpus: 1.0,
            memory_bytes: 512 << 20,
            pids: 256,
            disk_bytes: 1 << 30,
            ttl: Some(proto_duration(Duration::from_secs(3600))),
        }),
        network_mode: NetworkMode::None as i32,
        credentials: vec!["deploy-key".into()],
        ..Default::default()
    }
}

fn spec() -> SandboxSpec {
    SandboxSpec {
        image: "busybox:1".into(),
        ..Default::default()
    }
}

fn message(err: Error) -> String {
    err.to_string()
}

#[test]
fn defaults_fill_every_amount() {
    let r = resolve(spec(), &policy()).expect("resolves");
    assert_eq!(r.cpus, 1.0);
    assert_eq!(r.memory_bytes, 512 << 20);
    assert_eq!(r.pids, 256);
    assert_eq!(r.ttl, Duration::from_secs(3600));
    assert_eq!(r.network, NetworkMode::None);
    assert_eq!(r.spec.workdir, "/workspace");
    let res = r.spec.resources.expect("resources");
    assert_eq!(res.memory_bytes, 512 << 20);
    // The disk bound is resolved like every other amount, never dropped.
    assert_eq!(r.disk_bytes, 1 << 30);
    assert_eq!(res.disk_bytes, 1 << 30);
}

#[test]
fn the_disk_bound_is_kept_and_refused_above_it() {
    let mut s = spec();
    s.resources = Some(ResourceLimits {
        disk_bytes: 5 << 30,
        ..Default::default()
    });
    let err = resolve(s.clone(), &policy()).expect_err("above the bound");
    assert!(message(err).contains("max.disk_bytes"));
    s.resources = Some(ResourceLimits {
        disk_bytes: 1 << 20,
        ..Default::default()
    });
    assert!(matches!(
        resolve(s, &policy()),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn a_request_within_bounds_is_kept() {
    let mut s = spec();
    s.resources = Some(ResourceLimits {
        cpus: 0.5,
        memory_bytes: 32 << 20,
        pids: 64,
        disk_bytes: 0,
        ttl: Some(proto_duration(Duration::from_secs(60))),
    });
    let r = resolve(s, &policy()).expect("resolves");
    assert_eq!((r.cpus, r.memory_bytes, r.pids), (0.5, 32 << 20, 64));
    assert_eq!(r.ttl, Duration::from_secs(60));
}

#[test]
fn a_request_above_a_bound_names_the_bound() {
    let mut s = spec();
    s.resources = Some(ResourceLimits {
        memory_bytes: 2 << 30,
        ..Default::default()
    });
    let err = message(resolve(s, &policy()).expect_err("refused"));
    assert!(err.contains("max.memory_bytes 1 GiB"), "{err}");

    let mut s = spec();
    s.resources = Some(ResourceLimits {
        cpus: 4.0,
        ..Default::default()
    });
    let err = message(resolve(s, &policy()).expect_err("refused"));
    assert!(err.contains("max.cpus 2"), "{err}");

    let mut s = spec();
    s.resources = Some(ResourceLimits {
        ttl: Some(proto_duration(Duration::from_secs(86_400))),
        ..Default::default()
    });
    let err = message(resolve(s, &policy()).expect_err("refused"));
    assert!(err.contains("max.ttl 2h"), "{err}");
}

#[test]
fn the_network_never_gets_wider_than_the_policy() {
    let mut s = spec();
    s.network_mode = NetworkMode::Open as i32;
    let err = message(resolve(s, &policy()).expect_err("refused"));
    assert!(err.contains("wider than the agent policy"), "{err}");

    let mut open = policy();
    open.network_mode = NetworkMode::Open as i32;
    let r = resolve(spec(), &open).expect("resolves");
    assert_eq!(r.network, NetworkMode::Open);
    let mut s = spec();
    s.network_mode = NetworkMode::None as i32;
    assert_eq!(
        resolve(s, &open).expect("narrower").network,
        NetworkMode::None
    );
}

#[test]
fn credentials_must_be_listed_in_the_policy() {
    let mut s = spec();
    s.credentials = vec![CredentialMount {
        credential: "other".into(),
        path: "~/.ssh/id_ed25519".into(),
    }];
    assert!(matches!(
        resolve(s, &policy()),
        Err(Error::PermissionDenied(_))
    ));
    let mut s = spec();
    s.credentials = vec![CredentialMount {
        credential: "organizations/acme/credentials/deploy-key".into(),
        path: "~/.ssh/id_ed25519".into(),
    }];
    resolve(s, &policy()).expect("listed");
}

#[test]
fn credential_paths_are_confined() {
    let at = |path: &str| {
        credential_target(&CredentialMount {
            credential: "c".into(),
            path: path.into(),
        })
    };
    assert_eq!(
        at("~/.ssh/id_ed25519").expect("ok"),
        "/home/sandbox/.ssh/id_ed25519"
    );
    assert_eq!(at("/etc/gitconfig").expect("ok"), "/etc/gitconfig");
    for bad in [
        "relative",
        "~/../../etc/x",
        "/proc/self/x",
        "/workspace/key",
        "/",
        "/x/../y",
    ] {
        assert!(at(bad).is_err(), "{bad} accepted");
    }
}

#[test]
fn hostile_input_is_refused() {
    let mut s = spec();
    s.image = String::new();
    assert!(resolve(s, &policy()).is_err());
    let mut s = spec();
    s.env.insert("PADDOCK_TOKEN".into(), "x".into());
    assert!(resolve(s, &policy()).is_err());
    let mut s = spec();
    s.env.insert("BAD-NAME".into(), "x".into());
    assert!(resolve(s, &policy()).is_err());
    let mut s = spec();
    s.command = vec!["a\0b".into()];
    assert!(resolve(s, &policy()).is_err());
    let mut s = spec();
    s.caches = vec!["maven".into()];
    assert!(resolve(s, &policy()).is_err());
    let mut s = spec();
    s.resources = Some(ResourceLimits {
        cpus: f64::NAN,
        ..Default::default()
    });
    assert!(resolve(s, &policy()).is_err());
    let mut s = spec();
    s.resources = Some(ResourceLimits {
        memory_bytes: -1,
        ..Default::default()
    });
    assert!(resolve(s, &policy()).is_err());
}

#[test]
fn caches_set_their_env() {
    let env = cache_env(&["pip".into(), "cargo".into()]);
    assert_eq!(
        env.get("PIP_CACHE_DIR").map(String::as_str),
        Some("/cache/pip")
    );
    assert_eq!(
        env.get("CARGO_HOME").map(String::as_str),
        Some("/cache/cargo")
    );
    assert!(!env.contains_key("npm_config_cache"));
}

#[test]
fn env_values_are_shown_only_where_they_may_be() {
    let mut s = spec();
    s.env = [
        ("DB_PASSWORD", "hunter2"),
        ("GITHUB_TOKEN", "ghp_x"),
        ("api_key", "k"),
        ("DATABASE_URL", "postgres://u:p@db/x"),
        ("PLAIN_URL", "https://example.test/x"),
        ("MODE", "debug"),
        ("ANY", "pdk_abc"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let mut shown = s.clone();
    redact_env(&mut shown, true);
    for k in [
        "DB_PASSWORD",
        "GITHUB_TOKEN",
        "api_key",
        "DATABASE_URL",
        "ANY",
    ] {
        assert_eq!(shown.env[k], REDACTED, "{k}");
    }
    assert_eq!(shown.env["MODE"], "debug");
    assert_eq!(shown.env["PLAIN_URL"], "https://example.test/x");
    let mut hidden = s.clone();
    redact_env(&mut hidden, false);
    assert!(hidden.env.values().all(|v| v == REDACTED));
    assert_eq!(hidden.env.len(), s.env.len(), "the keys stay visible");
}
