//! `paddock run` and `paddock sandbox` through the real binaries against
//! `paddock dev` and the real Docker Engine, and a kill -9 of the control
//! plane with sandboxes running.

use std::time::Duration;

use paddock_e2e::{Backend, Dev, e2e_tests};

const IMAGE: &str = paddock_testkit::image::IMAGE;

/// An organization with agent `bot` and project `web`; returns the owner key.
fn setup(dev: &Dev) -> String {
    let owner = dev.acme_with_bot();
    dev.paddock(Some(&owner), &["project", "create", "web"])
        .json();
    owner
}

fn run_streams_and_exits_with_the_command_code(backend: Backend) {
    let dev = Dev::start(backend);
    let owner = setup(&dev);
    let out = dev.paddock(
        Some(&owner),
        &[
            "run",
            "--agent",
            "bot",
            "--project",
            "web",
            "--image",
            IMAGE,
            "--memory",
            "64m",
            "--",
            "sh",
            "-c",
            "echo hello; echo oops >&2; exit 3",
        ],
    );
    assert_eq!(out.code, 3, "{out:#?}");
    assert_eq!(out.stdout, "hello\n", "{out:#?}");
    assert_eq!(out.stderr, "oops\n", "{out:#?}");
    // The sandbox was stopped and deleted afterwards.
    let list = dev
        .paddock(Some(&owner), &["sandbox", "list", "--all"])
        .json();
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{list:#}");

    // A refusal names the bound.
    let out = dev.paddock(
        Some(&owner),
        &[
            "run",
            "--agent",
            "bot",
            "--project",
            "web",
            "--image",
            IMAGE,
            "--memory",
            "64g",
            "--",
            "true",
        ],
    );
    assert!(
        out.failure("INVALID_ARGUMENT").contains("max.memory_bytes"),
        "{out:#?}"
    );
}

fn detached_sandbox_exec_cp_stop(backend: Backend) {
    let dev = Dev::start(backend);
    let owner = setup(&dev);
    let sb = dev
        .paddock(
            Some(&owner),
            &[
                "run",
                "--agent",
                "bot",
                "--project",
                "web",
                "--image",
                IMAGE,
                "--detach",
                "--",
                "sh",
                "-c",
                "trap 'exit 0' TERM; while :; do sleep 1; done",
            ],
        )
        .json();
    assert_eq!(sb["state"], "running", "{sb:#}");
    let id = sb["id"].as_str().expect("id").to_owned();

    let list = dev.paddock(Some(&owner), &["sandbox", "list"]).json();
    assert!(
        list["items"]
            .as_array()
            .expect("array")
            .iter()
            .any(|s| s["id"] == id.as_str()),
        "{list:#}"
    );

    let out = dev.paddock(
        Some(&owner),
        &["sandbox", "exec", &id, "--", "sh", "-c", "id -u; exit 4"],
    );
    assert_eq!((out.code, out.stdout.as_str()), (4, "65534\n"), "{out:#?}");

    // cp in, change inside, cp out.
    let local = tempfile_dir();
    std::fs::create_dir_all(local.join("src")).expect("mkdir");
    std::fs::write(local.join("src/a.txt"), "from the host").expect("write");
    dev.paddock(
        Some(&owner),
        &[
            "sandbox",
            "cp",
            local.join("src").to_str().expect("utf8"),
            &format!("{id}:"),
        ],
    )
    .json();
    let out = dev.paddock(
        Some(&owner),
        &[
            "sandbox",
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "cat /workspace/src/a.txt; echo changed > /workspace/src/b.txt",
        ],
    );
    assert_eq!(out.stdout, "from the host", "{out:#?}");
    let back = local.join("back");
    let out = dev.paddock(
        Some(&owner),
        &[
            "sandbox",
            "cp",
            &format!("{id}:src"),
            back.to_str().expect("utf8"),
        ],
    );
    assert_eq!(out.code, 0, "{out:#?}");
    assert_eq!(
        // As `docker cp`: a directory copied to a missing path becomes it.
        std::fs::read_to_string(back.join("b.txt")).expect("b.txt"),
        "changed\n"
    );
    // Traversal is refused.
    let out = dev.paddock(
        Some(&owner),
        &[
            "sandbox",
            "cp",
            local.join("src").to_str().expect("utf8"),
            &format!("{id}:../etc"),
        ],
    );
    assert!(
        out.failure("INVALID_ARGUMENT")
            .contains("outside /workspace"),
        "{out:#?}"
    );

    let stopped = dev.paddock(Some(&owner), &["sandbox", "stop", &id]).json();
    assert_eq!(
        (stopped["state"].as_str(), stopped["end_reason"].as_str()),
        (Some("stopped"), Some("stopped_by_user")),
        "{stopped:#}"
    );
    let usage = dev.paddock(Some(&owner), &["sandbox", "usage", &id]).json();
    assert!(usage["execs"].as_i64().unwrap_or(0) >= 2, "{usage:#}");
    dev.paddock(Some(&owner), &["sandbox", "delete", &id])
        .json();
    let out = dev.paddock(Some(&owner), &["sandbox", "get", &id]);
    out.failure("NOT_FOUND");
    let _ = std::fs::remove_dir_all(&local);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "paddock-e2e-cp-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

/// kill -9 of `paddock dev` (runner included) with sandboxes running; after
/// the restart, state and Docker agree, stopping works, nothing is left.
fn crash_with_sandboxes_running(backend: Backend) {
    let mut dev = Dev::start(backend);
    let owner = setup(&dev);
    let detached = |cmd: &str| {
        dev.paddock(
            Some(&owner),
            &[
                "run",
                "--agent",
                "bot",
                "--project",
                "web",
                "--image",
                IMAGE,
                "--detach",
                "--",
                "sh",
                "-c",
                cmd,
            ],
        )
        .json()["id"]
            .as_str()
            .expect("id")
            .to_owned()
    };
    let running = detached("trap 'exit 0' TERM; while :; do sleep 1; done");
    let exits = detached("sleep 2; exit 5");
    let worker = dev.worker_id().expect("worker id");

    dev.crash();
    std::thread::sleep(Duration::from_secs(3));
    dev.restart();

    let get = |id: &str| dev.paddock(Some(&owner), &["sandbox", "get", id]).json();
    let r = get(&running);
    assert_eq!(r["state"], "running", "{r:#}");
    let e = get(&exits);
    assert_eq!(
        (e["state"].as_str(), e["exit_code"].as_i64()),
        (Some("stopped"), Some(5)),
        "{e:#}"
    );

    let stopped = dev
        .paddock(Some(&owner), &["sandbox", "stop", &running])
        .json();
    assert_eq!(stopped["state"], "stopped", "{stopped:#}");
    let left = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=paddock.worker={worker}"),
        ])
        .output()
        .expect("docker ps");
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "containers left behind"
    );
    let nets = std::process::Command::new("docker")
        .args([
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("label=paddock.worker={worker}"),
        ])
        .output()
        .expect("docker network ls");
    assert!(
        String::from_utf8_lossy(&nets.stdout).trim().is_empty(),
        "networks left behind"
    );
}

/// An agent's key runs as that agent without --agent; Ctrl-C (SIGINT) stops
/// the sandbox gracefully and exits 130; `sandbox watch` follows it to the
/// end.
fn run_as_the_calling_agent_and_interrupt(backend: Backend) {
    let dev = Dev::start(backend);
    let owner = setup(&dev);
    let agent_key = dev
        .paddock(
            Some(&owner),
            &["key", "create", "bot-key", "--agent", "bot"],
        )
        .json()["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let out = dev.paddock(
        Some(&agent_key),
        &[
            "run",
            "--project",
            "web",
            "--image",
            IMAGE,
            "--",
            "sh",
            "-c",
            "echo as-agent",
        ],
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "as-agent\n"),
        "{out:#?}"
    );

    let mut child = std::process::Command::new(paddock_e2e::paddock_bin())
        .args([
            "run",
            "--project",
            "web",
            "--image",
            IMAGE,
            "--keep",
            "--",
            "sh",
            "-c",
            "echo started; sleep 300",
        ])
        .env("PADDOCK_TOKEN", &agent_key)
        .env("PADDOCK_IDENTITY_ENDPOINT", &dev.identity_endpoint)
        .env("PADDOCK_AUTHZ_ENDPOINT", &dev.authz_endpoint)
        .env("PADDOCK_SANDBOX_ENDPOINT", &dev.sandbox_endpoint)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn paddock run");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).expect("read");
    assert_eq!(line, "started\n");
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(interrupted.success());
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(130), "{status:?}");

    let list = dev
        .paddock(Some(&agent_key), &["sandbox", "list", "--all"])
        .json();
    let sandboxes = list["items"].as_array().expect("array");
    let kept = sandboxes
        .iter()
        .find(|s| s["state"] == "stopped" && s["end_reason"] == "stopped_by_user")
        .unwrap_or_else(|| panic!("no stopped sandbox: {list:#}"));
    assert_eq!(kept["agent"], "organizations/acme/agents/bot", "{kept:#}");
    let id = kept["id"].as_str().expect("id");
    let watched = dev.paddock(Some(&agent_key), &["sandbox", "watch", id]);
    assert_eq!(watched.code, 0, "{watched:#?}");
    assert!(
        watched.stdout.contains("\"state\":\"stopped\""),
        "{watched:#?}"
    );
}

/// Deleting an organization, end to end: its running sandbox, container,
/// cache volume and workspace are gone from the worker, its keys stop
/// working, its id cannot be taken again, and its sealed audit trail (the
/// purge included) is readable and verifiable by the platform only.
fn deleting_an_organization_leaves_nothing(backend: Backend) {
    let dev = Dev::start(backend);
    let owner = setup(&dev);
    let bootstrap = dev.bootstrap_token();
    let worker = dev.worker_id().expect("worker id");
    let ran = dev
        .paddock(
            Some(&owner),
            &[
                "run",
                "--agent",
                "bot",
                "--project",
                "web",
                "--image",
                IMAGE,
                "--cache",
                "pip",
                "--detach",
                "--",
                "sh",
                "-c",
                "echo poison > /cache/pip/evil; trap 'exit 0' TERM; while :; do sleep 1; done",
            ],
        )
        .json();
    assert_eq!(ran["state"], "running", "{ran:#}");
    let labelled = |what: &str| {
        let out = std::process::Command::new("docker")
            .args([
                what,
                "ls",
                "-q",
                "--filter",
                "label=paddock.org=acme",
                "--filter",
                &format!("label=paddock.worker={worker}"),
            ])
            .args(if what == "container" {
                &["-a"][..]
            } else {
                &[][..]
            })
            .output()
            .expect("docker ls");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert!(!labelled("container").is_empty());
    let caches = dev.data_dir().join("caches").join("acme");
    assert!(caches.join("pip").exists(), "no pip cache");

    let deleted = dev.paddock(Some(&owner), &["org", "delete", "--yes"]);
    assert_eq!(deleted.code, 0, "{deleted:#?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(labelled("container").is_empty() && labelled("volume").is_empty() && !caches.exists()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker kept the organization's containers or caches"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        !dev.data_dir().join("workspaces").join("acme").exists(),
        "the organization's workspaces are still there"
    );
    dev.paddock(Some(&owner), &["whoami"])
        .failure("UNAUTHENTICATED");
    // The id is never handed out again, to anyone.
    dev.paddock(
        Some(&bootstrap),
        &["org", "create", "acme", "--owner", "mallory@evil.test"],
    )
    .failure("FAILED_PRECONDITION");
    // The platform reads the sealed trail, the purge included.
    let trail = dev.paddock_until(
        Some(&bootstrap),
        &[
            "audit",
            "query",
            "--platform",
            "--org",
            "acme",
            "--limit",
            "500",
            "-o",
            "json",
        ],
        Duration::from_secs(30),
        |o| o.code == 0 && o.stdout.contains("ORGANIZATION_DELETED"),
    );
    assert!(
        trail.stdout.contains("organization.delete"),
        "{}",
        trail.stdout
    );
    let verified = dev.paddock(
        Some(&bootstrap),
        &["audit", "verify", "--platform", "--org", "acme"],
    );
    assert_eq!(verified.code, 0, "{verified:#?}");
}

e2e_tests!(
    deleting_an_organization_leaves_nothing,
    run_as_the_calling_agent_and_interrupt,
    run_streams_and_exits_with_the_command_code,
    detached_sandbox_exec_cp_stop,
    crash_with_sandboxes_running,
);
