//! The runner against the real Docker Engine: hardening seen from inside a
//! sandbox, limits, stop, crash and reconcile, refusals, exec and files.

mod common;

use std::time::{Duration, Instant};

use common::*;
use paddock_proto::authz::v1::*;
use paddock_proto::identity::v1::*;
use paddock_proto::sandbox::v1::*;
use paddock_shared::time::proto_duration;
use paddock_testkit::{Backend, backend_tests};
use tonic::Code;

async fn set_policy(env: &Env, org: &Org, policy: AgentPolicy, paths: &[&str]) {
    env.policies(&org.owner)
        .update_agent_policy(UpdateAgentPolicyRequest {
            policy: Some(AgentPolicy {
                name: format!("{}/agents/bot/policy", org.name),
                ..policy
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            }),
        })
        .await
        .expect("update policy");
}

async fn hardening_from_inside(backend: Backend) {
    let env = Env::start(backend).await;
    let org = setup_org(&env.stack, &fresh_id("hard")).await;
    // A credential, listed in the agent's policy, mounted read-only.
    env.stack
        .identity(&org.owner)
        .create_credential(CreateCredentialRequest {
            parent: org.name.clone(),
            credential_id: "deploy-key".into(),
            credential: Some(Credential {
                kind: CredentialKind::SshKey as i32,
                ..Default::default()
            }),
            value: b"-----BEGIN TEST KEY-----\n".to_vec(),
        })
        .await
        .expect("credential");
    set_policy(
        &env,
        &org,
        AgentPolicy {
            credentials: vec!["deploy-key".into()],
            ..Default::default()
        },
        &["credentials"],
    )
    .await;
    let mut client = env.sandboxes(&org.owner);
    let mut s = spec("web");
    s.credentials = vec![CredentialMount {
        credential: "deploy-key".into(),
        path: "~/.ssh/id_ed25519".into(),
    }];
    let sandbox = create(&mut client, s).await.expect("create");
    assert_eq!(sandbox.state, SandboxState::Running as i32);

    let script = "grep CapEff /proc/self/status; grep NoNewPrivs /proc/self/status; \
        echo uid=$(id -u); \
        touch /rootfile 2>/dev/null && echo root=writable || echo root=readonly; \
        touch /tmp/x && echo tmp=writable; touch /workspace/x && echo ws=writable; \
        ls /var/run/docker.sock /run/docker.sock 2>/dev/null && echo docker=present || echo docker=absent; \
        echo nics=$(ls /sys/class/net | tr '\\n' ' '); \
        cat ~/.ssh/id_ed25519; \
        (echo x >> ~/.ssh/id_ed25519) 2>/dev/null && echo cred=writable || echo cred=readonly; \
        echo token=${PADDOCK_TOKEN:+set}; echo sandbox=$PADDOCK_SANDBOX; echo mcp=$PADDOCK_MCP_ENDPOINT";
    let out = exec(&mut client, &sandbox.name, &["sh", "-c", script], None)
        .await
        .expect("exec");
    let text = out.out();
    assert!(text.contains("CapEff:\t0000000000000000"), "{text}");
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    assert!(
        !text.contains("uid=0\n") && text.contains("uid=65534"),
        "{text}"
    );
    assert!(text.contains("root=readonly"), "{text}");
    assert!(
        text.contains("tmp=writable") && text.contains("ws=writable"),
        "{text}"
    );
    assert!(text.contains("docker=absent"), "{text}");
    assert!(
        text.contains("nics=lo \n") || text.trim_end().contains("nics=lo"),
        "{text}"
    );
    assert!(!text.contains("eth0"), "{text}");
    assert!(text.contains("-----BEGIN TEST KEY-----"), "{text}");
    assert!(text.contains("cred=readonly"), "{text}");
    assert!(text.contains("token=set"), "{text}");
    assert!(text.contains("mcp=http://127.0.0.1:7180"), "{text}");
    assert!(
        text.contains(&format!("sandbox={}", sandbox.name)),
        "{text}"
    );

    // Nothing in the sandbox's mounts names a host path of the runner's
    // (workspace and credentials come from file systems of their own).
    let mounts = exec(
        &mut client,
        &sandbox.name,
        &["cat", "/proc/self/mountinfo"],
        None,
    )
    .await
    .expect("mountinfo")
    .out();
    let data_dir = env.config.common.data_dir.display().to_string();
    assert!(!mounts.contains(&data_dir), "{mounts}");
    assert!(
        !mounts.contains("credentials") && !mounts.contains("workspaces"),
        "{mounts}"
    );

    // The session token works while the sandbox runs and not after.
    let token_out = exec(
        &mut client,
        &sandbox.name,
        &["sh", "-c", "printf %s \"$PADDOCK_TOKEN\""],
        None,
    )
    .await
    .expect("token");
    let token = token_out.out();
    let who = env
        .stack
        .identity(&token)
        .who_am_i(WhoAmIRequest {})
        .await
        .expect("whoami")
        .into_inner();
    assert!(!who.principal.expect("principal").id.is_empty());
    let stopped = client
        .stop_sandbox(StopSandboxRequest {
            name: sandbox.name.clone(),
            grace_period: None,
        })
        .await
        .expect("stop")
        .into_inner()
        .sandbox
        .expect("sandbox");
    assert_eq!(stopped.end_reason, EndReason::StoppedByUser as i32);
    let after = env.stack.identity(&token).who_am_i(WhoAmIRequest {}).await;
    assert_eq!(
        after.map(|_| ()).expect_err("refused").code(),
        Code::Unauthenticated
    );
    env.shutdown().await;
}

async fn limits_are_enforced(backend: Backend) {
    let env = Env::start(backend).await;
    let org = setup_org(&env.stack, &fresh_id("lim")).await;
    let mut client = env.sandboxes(&org.owner);

    // 100 MB under a 32 MB limit: OOM-killed, reported as such.
    let mut s = spec("web");
    s.command = vec![
        "dd".into(),
        "if=/dev/zero".into(),
        "of=/dev/null".into(),
        "bs=100M".into(),
        "count=1".into(),
    ];
    s.resources = Some(ResourceLimits {
        memory_bytes: 32 << 20,
        ..Default::default()
    });
    let oom = create(&mut client, s).await.expect("create oom");
    let ended = wait_ended(&mut client, &oom.name).await;
    assert_eq!(ended.end_reason, EndReason::OomKilled as i32, "{ended:?}");

    // A fork loop hits the pids limit; the runner is unaffected.
    let mut s = spec("web");
    s.resources = Some(ResourceLimits {
        pids: 32,
        cpus: 0.5,
        ..Default::default()
    });
    let sb = create(&mut client, s).await.expect("create");
    let out = exec(
        &mut client,
        &sb.name,
        &[
            "sh",
            "-c",
            "(for i in $(seq 1 100); do sleep 30 & done) 2>&1 | grep -m1 fork; \
            n=0; for p in /proc/*; do case ${p#/proc/} in *[!0-9]*) ;; *) n=$((n+1));; esac; done; \
            echo procs=$n",
        ],
        None,
    )
    .await
    .expect("fork loop");
    let text = format!("{}{}", out.out(), out.err());
    assert!(
        text.to_lowercase().contains("fork") || text.contains("Resource temporarily unavailable"),
        "{text}"
    );
    let procs: i64 = out
        .out()
        .lines()
        .find_map(|l| l.strip_prefix("procs=")?.trim().parse().ok())
        .unwrap_or(i64::MAX);
    assert!(procs <= 32, "{procs} processes under a pids limit of 32");
    client
        .get_sandbox(GetSandboxRequest {
            name: sb.name.clone(),
        })
        .await
        .expect("runner still answers");

    // The CPU quota is configured and observed (the loop gets throttled),
    // in a sandbox of its own (the one above has no pids left).
    let mut s = spec("web");
    s.resources = Some(ResourceLimits {
        cpus: 0.5,
        ..Default::default()
    });
    let cpu = create(&mut client, s).await.expect("create");
    let out = exec(
        &mut client,
        &cpu.name,
        &[
            "sh",
            "-c",
            "timeout 2 sh -c 'while :; do :; done'; \
            cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu.max 2>/dev/null; \
            grep nr_throttled /sys/fs/cgroup/cpu/cpu.stat /sys/fs/cgroup/cpu.stat 2>/dev/null",
        ],
        None,
    )
    .await
    .expect("cpu");
    let text = out.out();
    assert!(text.contains("50000"), "quota not set: {text}");
    let throttled: i64 = text
        .lines()
        .filter_map(|l| l.split_whitespace().next_back()?.parse().ok())
        .next_back()
        .unwrap_or(0);
    assert!(
        throttled > 0,
        "a busy loop at 0.5 CPU was never throttled: {text}"
    );
    env.shutdown().await;
}

async fn stop_is_graceful_then_forced(backend: Backend) {
    let env = Env::start(backend).await;
    let org = setup_org(&env.stack, &fresh_id("stop")).await;
    let mut client = env.sandboxes(&org.owner);

    let cooperative = create(&mut client, spec("web")).await.expect("create");
    let t = Instant::now();
    let stopped = client
        .stop_sandbox(StopSandboxRequest {
            name: cooperative.name.clone(),
            grace_period: None,
        })
        .await
        .expect("stop")
        .into_inner()
        .sandbox
        .expect("sandbox");
    let cooperative_took = t.elapsed();
    assert_eq!(stopped.state, SandboxState::Stopped as i32);
    assert!(
        cooperative_took < Duration::from_millis(1500),
        "cooperative stop took {cooperative_took:?}"
    );

    let mut s = spec("web");
    s.command = vec![
        "sh".into(),
        "-c".into(),
        "trap '' TERM; touch /tmp/trapped; while :; do sleep 1; done".into(),
    ];
    let stubborn = create(&mut client, s).await.expect("create");
    // RUNNING means started, not that the shell has set its trap yet: a
    // busy machine could deliver SIGTERM first.
    let deadline = Instant::now() + Duration::from_secs(30);
    while exec(
        &mut client,
        &stubborn.name,
        &["test", "-f", "/tmp/trapped"],
        None,
    )
    .await
    .expect("exec")
    .code()
        != 0
    {
        assert!(Instant::now() < deadline, "the trap was never set");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = Instant::now();
    let stopped = client
        .stop_sandbox(StopSandboxRequest {
            name: stubborn.name.clone(),
            grace_period: None,
        })
        .await
        .expect("stop")
        .into_inner()
        .sandbox
        .expect("sandbox");
    let took = t.elapsed();
    assert_eq!(stopped.state, SandboxState::Stopped as i32);
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(10),
        "forced stop took {took:?}"
    );
    assert!(
        env.engine()
            .labelled_containers(&env.worker())
            .await
            .expect("list")
            .is_empty()
    );
    env.shutdown().await;
}

async fn crash_and_reconcile(backend: Backend) {
    let mut env = Env::start(backend).await;
    let org = setup_org(&env.stack, &fresh_id("crash")).await;
    let mut client = env.sandboxes(&org.owner);
    let survivor = create(&mut client, spec("web")).await.expect("create");
    let vanished = create(&mut client, spec("web")).await.expect("create");
    let mut s = spec("web");
    s.command = vec!["sh".into(), "-c".into(), "sleep 1; exit 7".into()];
    let exits = create(&mut client, s).await.expect("create");

    env.crash_runner().await;
    let engine = env.engine();
    // While the runner is away: one container disappears, one exits, and a
    // labelled container with no record shows up.
    let containers = engine
        .labelled_containers(&env.worker())
        .await
        .expect("list");
    let id_of = |name: &str| {
        let id = name.rsplit('/').next().expect("id");
        containers
            .iter()
            .find(|c| c.sandbox == id)
            .expect("container")
            .id
            .clone()
    };
    engine.remove(&id_of(&vanished.name)).await.expect("remove");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let orphan = engine
        .create_start(&paddock_sandbox_runner::docker::ContainerPlan {
            name: format!("paddock-orphan-{}", env.worker()),
            image: IMAGE.into(),
            labels: std::collections::HashMap::from([
                ("paddock.worker".to_owned(), env.worker()),
                ("paddock.sandbox".to_owned(), "sbnotarecord".to_owned()),
            ]),
            cpus: 0.5,
            memory_bytes: 64 << 20,
            pids: 32,
            network: "none".into(),
            workspace: env.stack.dir.path().to_string_lossy().into_owned(),
            user: "65534:65534".into(),
            uid: 65534,
            workdir: "/".into(),
            ..Default::default()
        })
        .await
        .expect("orphan");

    env.restart_runner().await;
    let mut client = env.sandboxes(&org.owner);
    let get = |name: String| {
        let mut c = client.clone();
        async move {
            c.get_sandbox(GetSandboxRequest { name })
                .await
                .expect("get")
                .into_inner()
                .sandbox
                .expect("sandbox")
        }
    };
    let s = get(survivor.name.clone()).await;
    assert_eq!(s.state, SandboxState::Running as i32, "{s:?}");
    let v = get(vanished.name.clone()).await;
    assert_eq!(
        (v.state, v.end_reason),
        (SandboxState::Failed as i32, EndReason::RunnerLost as i32),
        "{v:?}"
    );
    let e = get(exits.name.clone()).await;
    assert_eq!(
        (e.state, e.exit_code),
        (SandboxState::Stopped as i32, Some(7)),
        "{e:?}"
    );
    assert!(
        engine.state(&orphan).await.expect("inspect").is_none(),
        "the orphan was not removed"
    );

    // Stopping the re-adopted sandbox still works, and nothing is left.
    let stopped = client
        .stop_sandbox(StopSandboxRequest {
            name: survivor.name.clone(),
            grace_period: None,
        })
        .await
        .expect("stop")
        .into_inner()
        .sandbox
        .expect("sandbox");
    assert_eq!(stopped.state, SandboxState::Stopped as i32);
    assert!(
        engine
            .labelled_containers(&env.worker())
            .await
            .expect("list")
            .is_empty()
    );
    assert!(
        engine
            .labelled_networks(&env.worker())
            .await
            .expect("list")
            .is_empty()
    );
    assert!(
        engine
            .cache_volumes(&env.worker(), "")
            .await
            .expect("list")
            .is_empty()
    );
    env.shutdown().await;
}

async fn refusals(backend: Backend) {
    let env = Env::start(backend).await;
    let org = setup_org(&env.stack, &fresh_id("ref")).await;
    let other = setup_org(&env.stack, &fresh_id("oth")).await;
    let mut owner = env.sandboxes(&org.owner);

    // Above a policy bound: refused, naming the bound.
    set_policy(
        &env,
        &org,
        AgentPolicy {
            max: Some(ResourceLimits {
                memory_bytes: 256 << 20,
                ..Default::default()
            }),
            max_sandboxes: 1,
            ..Default::default()
        },
        &["max.memory_bytes", "max_sandboxes"],
    )
    .await;
    let mut big = spec("web");
    big.resources = Some(ResourceLimits {
        memory_bytes: 1 << 30,
        ..Default::default()
    });
    let err = create(&mut owner, big).await.expect_err("above bound");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("max.memory_bytes"),
        "{}",
        err.message()
    );
    let mut wide = spec("web");
    wide.network_mode = NetworkMode::Open as i32;
    assert_eq!(
        create(&mut owner, wide)
            .await
            .expect_err("wider network")
            .code(),
        Code::InvalidArgument
    );

    // The concurrency quota.
    let first = create(&mut owner, spec("web")).await.expect("first");
    let err = create(&mut owner, spec("web"))
        .await
        .expect_err("over quota");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_sandboxes"), "{}", err.message());

    // Another organization's sandbox is NOT_FOUND for every RPC.
    let mut stranger = env.sandboxes(&other.owner);
    let name = first.name.clone();
    assert_eq!(
        stranger
            .get_sandbox(GetSandboxRequest { name: name.clone() })
            .await
            .expect_err("refused")
            .code(),
        Code::NotFound
    );
    assert_eq!(
        stranger
            .stop_sandbox(StopSandboxRequest {
                name: name.clone(),
                grace_period: None
            })
            .await
            .expect_err("refused")
            .code(),
        Code::NotFound
    );
    assert_eq!(
        stranger
            .delete_sandbox(DeleteSandboxRequest { name: name.clone() })
            .await
            .expect_err("refused")
            .code(),
        Code::NotFound
    );
    assert_eq!(
        stranger
            .watch_sandbox(WatchSandboxRequest { name: name.clone() })
            .await
            .map(|_| ())
            .expect_err("refused")
            .code(),
        Code::NotFound
    );
    assert_eq!(
        stranger
            .get_usage(GetUsageRequest { name: name.clone() })
            .await
            .expect_err("refused")
            .code(),
        Code::NotFound
    );
    assert_eq!(
        exec(&mut stranger, &name, &["true"], None)
            .await
            .expect_err("refused")
            .code(),
        Code::NotFound
    );
    assert_eq!(
        stranger
            .download_files(DownloadFilesRequest {
                sandbox: name.clone(),
                path: String::new()
            })
            .await
            .map(|_| ())
            .expect_err("refused")
            .code(),
        Code::NotFound
    );
    let uploaded = upload(&mut stranger, &name, "", tar_of(&[("a", b"x")])).await;
    assert_eq!(uploaded.expect_err("refused").code(), Code::NotFound);
    let listed = stranger
        .list_sandboxes(ListSandboxesRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.sandboxes.is_empty());

    // A developer cannot exec in (or stop) another member's sandbox, and
    // does not see it in a list of their own... but may read it.
    let mut dev = env.sandboxes(&org.developer);
    assert_eq!(
        exec(&mut dev, &name, &["true"], None)
            .await
            .expect_err("refused")
            .code(),
        Code::PermissionDenied
    );
    assert_eq!(
        dev.stop_sandbox(StopSandboxRequest {
            name: name.clone(),
            grace_period: None
        })
        .await
        .expect_err("refused")
        .code(),
        Code::PermissionDenied
    );
    dev.get_sandbox(GetSandboxRequest { name: name.clone() })
        .await
        .expect("sessions.read");
    // Those refusals are in the trail, naming the missing permission.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let events = env
            .stack
            .audit(&org.owner)
            .query_events(paddock_proto::audit::v1::QueryEventsRequest {
                filter: Some(paddock_proto::audit::v1::EventFilter {
                    action_prefix: "authz.deny".into(),
                    resource: name.clone(),
                    ..Default::default()
                }),
                page_size: 100,
                ..Default::default()
            })
            .await
            .expect("query")
            .into_inner()
            .events;
        let from_runner = events
            .iter()
            .filter(|e| {
                e.source_service == "sandbox-runner"
                    && e.details_json.contains("sessions.manage_own")
            })
            .count();
        if from_runner >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "refusals not audited: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Upload path traversal is refused before anything is written.
    let err = upload(&mut owner, &name, "../etc", tar_of(&[("a", b"x")]))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut evil = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_entry_type(tar::EntryType::Regular);
    h.as_old_mut().name[..9].copy_from_slice(b"../escape");
    h.set_cksum();
    evil.append(&h, &b"x"[..]).expect("append");
    let err = upload(&mut owner, &name, "", evil.into_inner().expect("tar"))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let out = exec(
        &mut owner,
        &name,
        &[
            "sh",
            "-c",
            "ls /escape /workspace/../escape 2>&1; echo done",
        ],
        None,
    )
    .await
    .expect("exec");
    assert!(!out.out().contains("\n/escape\n"), "{}", out.out());
    env.shutdown().await;
}

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, body) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_path(name).expect("path");
        h.set_cksum();
        b.append(&h, *body).expect("append");
    }
    b.into_inner().expect("tar")
}

async fn exec_streams_and_files(backend: Backend) {
    let env = Env::start(backend).await;
    let org = setup_org(&env.stack, &fresh_id("io")).await;
    let mut client = env.sandboxes(&org.agent);
    // The agent runs as itself (no agent named) and owns the sandbox.
    let mut s = spec("web");
    s.agent = String::new();
    let sb = create(&mut client, s).await.expect("create as agent");

    // stdin in, stdout and stderr apart, exit code out.
    let out = exec(
        &mut client,
        &sb.name,
        &["sh", "-c", "cat; echo oops >&2; exit 3"],
        Some(b"hello from stdin"),
    )
    .await
    .expect("exec");
    assert_eq!(out.out(), "hello from stdin");
    assert_eq!(out.err(), "oops\n");
    assert_eq!(out.code(), 3);

    // 100 MB of output streams through.
    let out = exec(
        &mut client,
        &sb.name,
        &[
            "sh",
            "-c",
            "dd if=/dev/zero bs=1048576 count=100 2>/dev/null",
        ],
        None,
    )
    .await
    .expect("large");
    assert_eq!(out.stdout.len(), 100 << 20);
    assert_eq!(out.code(), 0);

    // Files in and out of /workspace.
    let put = upload(
        &mut client,
        &sb.name,
        "src",
        tar_of(&[("main.rs", b"fn main() {}"), ("lib/a.txt", b"abc")]),
    )
    .await
    .expect("upload");
    assert_eq!((put.files, put.bytes), (2, 15));
    let out = exec(
        &mut client,
        &sb.name,
        &["cat", "/workspace/src/lib/a.txt"],
        None,
    )
    .await
    .expect("cat");
    assert_eq!(out.out(), "abc");
    let mut stream = client
        .download_files(DownloadFilesRequest {
            sandbox: sb.name.clone(),
            path: "src/main.rs".into(),
        })
        .await
        .expect("download")
        .into_inner();
    let mut archive = Vec::new();
    while let Some(m) = stream.message().await.expect("chunk") {
        archive.extend(m.chunk);
    }
    let mut tar = tar::Archive::new(archive.as_slice());
    let mut found = String::new();
    for entry in tar.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        std::io::Read::read_to_string(&mut entry, &mut found).expect("read");
    }
    assert_eq!(found, "fn main() {}");

    // Usage is reported.
    let usage = client
        .get_usage(GetUsageRequest {
            name: sb.name.clone(),
        })
        .await
        .expect("usage")
        .into_inner()
        .usage
        .expect("usage");
    assert!(usage.execs >= 3, "{usage:?}");

    // The audit trail has the lifecycle, the exec with argv, and the
    // workspace change (path, never contents).
    client
        .stop_sandbox(StopSandboxRequest {
            name: sb.name.clone(),
            grace_period: None,
        })
        .await
        .expect("stop");
    let deadline = Instant::now() + Duration::from_secs(20);
    let wanted = [
        "sandbox.create",
        "sandbox.start",
        "sandbox.exec",
        "file.modify",
        "sandbox.stop",
        "sandbox.end",
    ];
    loop {
        let events = env
            .stack
            .audit(&org.owner)
            .query_events(paddock_proto::audit::v1::QueryEventsRequest {
                filter: Some(paddock_proto::audit::v1::EventFilter {
                    resource: sb.name.clone(),
                    ..Default::default()
                }),
                page_size: 500,
                ..Default::default()
            })
            .await
            .expect("query")
            .into_inner()
            .events;
        let has = |a: &str| events.iter().any(|e| e.action == a);
        if wanted.iter().all(|a| has(a)) {
            let exec = events
                .iter()
                .find(|e| e.action == "sandbox.exec" && e.details_json.contains("oops"))
                .expect("exec event");
            assert!(
                exec.details_json.contains("\"exit_code\":3"),
                "{}",
                exec.details_json
            );
            let file = events
                .iter()
                .find(|e| e.action == "file.modify" && e.details_json.contains("a.txt"))
                .expect("file event");
            assert!(!file.details_json.contains("abc"), "{}", file.details_json);
            assert!(
                events.iter().all(|e| !e.details_json.contains("pdk_")),
                "a token leaked into the audit trail"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "missing events; have {:?}",
            events.iter().map(|e| &e.action).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    env.shutdown().await;
}

async fn ttl_expires(backend: Backend) {
    let env = Env::start(backend).await;
    let org = setup_org(&env.stack, &fresh_id("ttl")).await;
    let mut client = env.sandboxes(&org.owner);
    let mut s = spec("web");
    s.resources = Some(ResourceLimits {
        ttl: Some(proto_duration(Duration::from_secs(1))),
        ..Default::default()
    });
    let sb = create(&mut client, s).await.expect("create");
    let ended = wait_ended(&mut client, &sb.name).await;
    assert_eq!(ended.end_reason, EndReason::TtlExpired as i32, "{ended:?}");
    env.shutdown().await;
}

/// Revoking a key ends the watches and execs opened with it; watches are
/// capped per caller and per organization.
async fn streams_end_with_their_key_and_are_capped(backend: Backend) {
    let mut env = Env::start(backend).await;
    let org = setup_org(&env.stack, &fresh_id("rev")).await;
    let minted = mint_key(&env.stack, &org.owner, &org.id, &org.owner_member, "", &[])
        .await
        .expect("a second owner key");
    let key = minted.secret;
    let mut client = env.sandboxes(&org.owner);
    let sb = create(&mut client, spec("web")).await.expect("create");

    let mut with_key = env.sandboxes(&key);
    let mut watch = with_key
        .watch_sandbox(WatchSandboxRequest {
            name: sb.name.clone(),
        })
        .await
        .expect("watch")
        .into_inner();
    watch.message().await.expect("first state").expect("state");
    // An interactive exec that waits on its stdin: no output, no end.
    let (tx, mut exec) = open_exec(
        &mut with_key,
        ExecStart {
            sandbox: sb.name.clone(),
            command: vec!["sh".into(), "-c".into(), "echo ready; cat".into()],
            stdin: true,
            ..Default::default()
        },
    )
    .await;
    let ready = exec.message().await.expect("output").expect("message");
    assert!(matches!(
        ready.message,
        Some(exec_response::Message::Stdout(_))
    ));

    env.stack
        .identity(&org.owner)
        .revoke_api_key(RevokeApiKeyRequest {
            name: minted.api_key.expect("key").name,
        })
        .await
        .expect("revoke");
    // Identity pushes the revocation; the 5 s re-check is the fallback.
    for (what, end) in [
        (
            "watch",
            tokio::time::timeout(Duration::from_secs(20), watch.message())
                .await
                .map(|r| r.map(|_| ())),
        ),
        (
            "exec",
            tokio::time::timeout(Duration::from_secs(20), exec.message())
                .await
                .map(|r| r.map(|_| ())),
        ),
    ] {
        let end = end
            .unwrap_or_else(|_| panic!("the {what} ends in time"))
            .expect_err("ends with an error");
        assert_eq!(end.code(), Code::Unauthenticated, "{what}: {end:?}");
        assert!(
            end.message().contains("revoked"),
            "{what}: {}",
            end.message()
        );
    }
    // The command does not outlive its stream, though its stdin is open.
    let mut owner = env.sandboxes(&org.owner);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = common::exec(
            &mut owner,
            &sb.name,
            &["sh", "-c", "ps -o comm | grep -c '^cat$'"],
            None,
        )
        .await
        .expect("ps");
        if out.out().trim() == "0" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the revoked exec's command still runs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(tx);

    // Caps: one watch per caller, two per organization.
    env.crash_runner().await;
    env.config.max_watches_per_caller = 1;
    env.config.max_watches_per_org = 2;
    env.restart_runner().await;
    let watch_as = |token: &str| {
        let mut client = env.sandboxes(token);
        let name = sb.name.clone();
        async move {
            client
                .watch_sandbox(WatchSandboxRequest { name })
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let _owner_watch = watch_as(&org.owner).await.expect("owner watch");
    let again = watch_as(&org.owner)
        .await
        .expect_err("a second of one caller");
    assert_eq!(again.code(), Code::ResourceExhausted);
    assert!(
        again.message().contains("1 per caller"),
        "{}",
        again.message()
    );
    let _admin_watch = watch_as(&org.admin).await.expect("admin watch");
    let full = watch_as(&org.developer)
        .await
        .expect_err("the organization's cap");
    assert_eq!(full.code(), Code::ResourceExhausted);
    assert!(
        full.message().contains("2 per organization"),
        "{}",
        full.message()
    );
    env.shutdown().await;
}

backend_tests!(
    streams_end_with_their_key_and_are_capped,
    hardening_from_inside,
    limits_are_enforced,
    stop_is_graceful_then_forced,
    crash_and_reconcile,
    refusals,
    exec_streams_and_files,
    ttl_expires,
    open_network_never_reaches_the_host,
    exec_signals_tty_and_timeout,
    caches_are_per_organization,
    hardening_relaxed_only_by_security_settings,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_docker_the_runner_starts_and_says_why() {
    let stack = paddock_testkit::Stack::start(Backend::Sqlite).await;
    let mut config = runner_config(&stack, stack.dir.path().join("runner"), "wnodocker");
    config.docker_host = format!("unix://{}/no-docker.sock", stack.dir.path().display());
    let runner = paddock_sandbox_runner::start(&config, &stack.service_token)
        .await
        .expect("starts anyway");
    let org = setup_org(&stack, &fresh_id("nod")).await;
    let mut client =
        paddock_proto::sandbox::v1::sandbox_service_client::SandboxServiceClient::with_interceptor(
            paddock_shared::auth::lazy_channel(&runner.endpoint()).expect("channel"),
            paddock_testkit::bearer(&org.owner),
        );
    let err = create(&mut client, spec("web"))
        .await
        .expect_err("no docker");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("no-docker.sock"),
        "{}",
        err.message()
    );
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        paddock_shared::auth::lazy_channel(&runner.endpoint()).expect("channel"),
    );
    // The service's status and the server's overall one (empty name).
    for service in ["paddock.sandbox.v1.SandboxService", ""] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health")
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::NotServing as i32,
            "{service:?}"
        );
    }
    runner.shutdown().await;
    stack.shutdown().await;
}

/// An `open` sandbox reaches beyond its bridge, but never the host (nor
/// metadata or private addresses). The same probe from an unguarded
/// container on Docker's default bridge does reach the host, so the test
/// would notice a missing guard.
async fn open_network_never_reaches_the_host(backend: Backend) {
    let env = Env::start(backend).await;
    let org = setup_org(&env.stack, &fresh_id("net")).await;
    set_policy(
        &env,
        &org,
        AgentPolicy {
            network_mode: NetworkMode::Open as i32,
            ..Default::default()
        },
        &["network_mode"],
    )
    .await;
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("listen");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            use tokio::io::AsyncWriteExt as _;
            let _ = s.write_all(b"host\n").await;
        }
    });
    let probe = format!(
        "gw=$(ip route | awk '/default/ {{print $3}}'); echo gw=$gw; \
         (nc -w 2 $gw {port} </dev/null | grep -q host) && echo host=reached || echo host=blocked;"
    );

    let mut client = env.sandboxes(&org.owner);
    let mut s = spec("web");
    s.network_mode = NetworkMode::Open as i32;
    let sb = create(&mut client, s).await.expect("open sandbox");
    let out = exec(&mut client, &sb.name, &["sh", "-c", &probe], None)
        .await
        .expect("probe");
    let text = out.out();
    assert!(
        text.contains("gw=1"),
        "no default route in an open sandbox: {text}"
    );
    assert!(text.contains("host=blocked"), "{text}");
    // Metadata and private addresses are dropped on the way out (nothing
    // listens on them here, so the rules themselves are checked).
    let id = sb.name.rsplit('/').next().expect("id").to_owned();
    let bridge = format!("pdk{}", &id[2..14]);
    let rules = std::process::Command::new("iptables")
        .args(["-S", "DOCKER-USER"])
        .output()
        .expect("iptables");
    let rules = String::from_utf8_lossy(&rules.stdout).into_owned();
    for cidr in [
        "169.254.0.0/16",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
    ] {
        assert!(
            rules.contains(&format!("-d {cidr} -i {bridge} -j DROP")),
            "{cidr} not dropped:\n{rules}"
        );
    }

    // Control: a plain container on the default bridge reaches the host.
    let control = std::process::Command::new("docker")
        .args([
            "run",
            "--rm",
            "--label",
            &format!("paddock.worker={}", env.worker()),
            IMAGE,
            "sh",
            "-c",
            &probe,
        ])
        .output()
        .expect("docker run");
    let control = String::from_utf8_lossy(&control.stdout).into_owned();
    assert!(
        control.contains("host=reached"),
        "the probe cannot tell: {control}"
    );

    // Stopping removes the network and the guard.
    client
        .stop_sandbox(StopSandboxRequest {
            name: sb.name.clone(),
            grace_period: None,
        })
        .await
        .expect("stop");
    assert!(
        env.engine()
            .labelled_networks(&env.worker())
            .await
            .expect("list")
            .is_empty()
    );
    let id = sb.name.rsplit('/').next().expect("id");
    let rules = std::process::Command::new("iptables")
        .args(["-S", "DOCKER-USER"])
        .output()
        .expect("iptables");
    let bridge = format!("pdk{}", &id[2..14]);
    assert!(
        !String::from_utf8_lossy(&rules.stdout).contains(&bridge),
        "guard rules left behind"
    );
    env.shutdown().await;
}

/// Signals, a TTY and a timeout on one exec stream.
async fn exec_signals_tty_and_timeout(backend: Backend) {
    let env = Env::start(backend).await;
    let org = setup_org(&env.stack, &fresh_id("sig")).await;
    let mut client = env.sandboxes(&org.owner);
    let sb = create(&mut client, spec("web")).await.expect("create");

    // SIGTERM reaches the command, which reports it and exits.
    let (tx, mut stream) = open_exec(
        &mut client,
        ExecStart {
            sandbox: sb.name.clone(),
            command: vec![
                "sh".into(),
                "-c".into(),
                "trap 'echo got-term; exit 9' TERM; echo ready; while :; do sleep 1; done".into(),
            ],
            ..Default::default()
        },
    )
    .await;
    let mut out = String::new();
    let mut exit = None;
    // Bounded: a signal that never arrives fails the test, not hangs it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Some(msg) = tokio::time::timeout_at(deadline, stream.message())
        .await
        .expect("the signal did not end the command")
        .expect("message")
    {
        match msg.message {
            Some(exec_response::Message::Stdout(b)) => {
                out.push_str(&String::from_utf8_lossy(&b));
                if out.contains("ready") && !out.contains("sent") {
                    out.push_str("sent");
                    tx.send(ExecRequest {
                        message: Some(exec_request::Message::Signal(15)),
                    })
                    .await
                    .expect("signal");
                }
            }
            Some(exec_response::Message::Exit(e)) => exit = Some(e),
            _ => {}
        }
    }
    assert!(out.contains("got-term"), "{out}");
    assert_eq!(exit.map(|e| e.exit_code), Some(9));

    // A TTY: the command sees a terminal, and output arrives as stdout.
    let (tx, mut stream) = open_exec(
        &mut client,
        ExecStart {
            sandbox: sb.name.clone(),
            command: vec!["sh".into(), "-c".into(), "tty; echo err >&2".into()],
            tty: true,
            ..Default::default()
        },
    )
    .await;
    let mut out = String::new();
    while let Some(msg) = stream.message().await.expect("message") {
        if let Some(exec_response::Message::Stdout(b)) = msg.message {
            out.push_str(&String::from_utf8_lossy(&b));
        }
    }
    drop(tx);
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("err"), "stderr joins stdout on a TTY: {out}");

    // A timeout kills the command and says so.
    let (tx, mut stream) = open_exec(
        &mut client,
        ExecStart {
            sandbox: sb.name.clone(),
            command: vec!["sleep".into(), "60".into()],
            timeout: Some(proto_duration(Duration::from_millis(500))),
            ..Default::default()
        },
    )
    .await;
    let mut exit = None;
    while let Some(msg) = stream.message().await.expect("message") {
        if let Some(exec_response::Message::Exit(e)) = msg.message {
            exit = Some(e);
        }
    }
    drop(tx);
    let exit = exit.expect("exit");
    assert!(exit.timed_out, "{exit:?}");
    assert_eq!(exit.exit_code, 137);
    env.shutdown().await;
}

/// Caches are per organization: what org A's sandbox leaves in its pip
/// cache, org B's sandbox does not see.
async fn caches_are_per_organization(backend: Backend) {
    let env = Env::start(backend).await;
    let a = setup_org(&env.stack, &fresh_id("ca")).await;
    let b = setup_org(&env.stack, &fresh_id("cb")).await;
    let in_cache = |org: &Org| {
        let mut s = spec("web");
        s.caches = vec!["pip".into()];
        let token = org.owner.clone();
        let env = &env;
        async move {
            let mut client = env.sandboxes(&token);
            let sb = create(&mut client, s).await.expect("create");
            (client, sb)
        }
    };
    let (mut ca, sa) = in_cache(&a).await;
    let out = exec(
        &mut ca,
        &sa.name,
        &[
            "sh",
            "-c",
            "echo $PIP_CACHE_DIR; echo secret-of-a > $PIP_CACHE_DIR/marker && echo wrote",
        ],
        None,
    )
    .await
    .expect("write");
    assert_eq!(out.out(), "/cache/pip\nwrote\n", "{}", out.err());
    let (mut cb, sb) = in_cache(&b).await;
    let out = exec(
        &mut cb,
        &sb.name,
        &["sh", "-c", "cat /cache/pip/marker 2>&1 || echo absent"],
        None,
    )
    .await
    .expect("read");
    assert!(out.out().contains("absent"), "{}", out.out());
    // A second sandbox of org A sees its own cache.
    let (mut ca2, sa2) = in_cache(&a).await;
    let out = exec(&mut ca2, &sa2.name, &["cat", "/cache/pip/marker"], None)
        .await
        .expect("read");
    assert_eq!(out.out(), "secret-of-a\n");
    env.shutdown().await;
}

/// Hardening is relaxed only by the organization's security settings.
async fn hardening_relaxed_only_by_security_settings(backend: Backend) {
    let env = Env::start(backend).await;
    let org = setup_org(&env.stack, &fresh_id("relax")).await;
    let mut client = env.sandboxes(&org.owner);
    let probe = "echo uid=$(id -u); touch /rootfile 2>/dev/null && echo root=writable || echo root=readonly";
    let sb = create(&mut client, spec("web")).await.expect("create");
    let out = exec(&mut client, &sb.name, &["sh", "-c", probe], None)
        .await
        .expect("probe");
    assert_eq!(out.out(), "uid=65534\nroot=readonly\n");

    // An admin may not relax it; the owner may.
    let relax = |token: &str| {
        let mut policies = env.policies(token);
        let name = format!("{}/securitySettings", org.name);
        async move {
            policies
                .update_security_settings(UpdateSecuritySettingsRequest {
                    settings: Some(SecuritySettings {
                        name,
                        hardening: Some(HardeningRelaxations {
                            allow_root_user: true,
                            writable_root_filesystem: true,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec![
                            "hardening.allow_root_user".into(),
                            "hardening.writable_root_filesystem".into(),
                        ],
                    }),
                })
                .await
        }
    };
    assert_eq!(
        relax(&org.admin)
            .await
            .map(|_| ())
            .expect_err("refused")
            .code(),
        Code::PermissionDenied
    );
    relax(&org.owner).await.expect("owner relaxes");
    // A writable root must be bounded by the disk bound: where the storage
    // driver cannot (Docker refuses --storage-opt size, as fuse-overlayfs
    // and overlay off xfs do), the sandbox is refused rather than run
    // unbounded.
    let storage_bounds_root = env
        .engine()
        .docker()
        .info()
        .await
        .ok()
        .and_then(|i| i.driver)
        .is_some_and(|d| matches!(d.as_str(), "btrfs" | "zfs" | "devicemapper"));
    match create(&mut client, spec("web")).await {
        Ok(sb) => {
            let out = exec(&mut client, &sb.name, &["sh", "-c", probe], None)
                .await
                .expect("probe");
            assert_eq!(out.out(), "uid=0\nroot=writable\n");
        }
        Err(err) => {
            assert!(!storage_bounds_root, "{err:?}");
            assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
            assert!(err.message().contains("writable root"), "{err:?}");
        }
    }
    env.shutdown().await;
}
