//! Regression tests for the adversarial review (issue 8), one test per
//! finding, against the real Docker Engine: each is what a hostile agent,
//! a lesser member or another tenant would try first.

mod common;

use std::io::Read as _;
use std::time::Duration;

use common::*;
use paddock_proto::authz::v1::*;
use paddock_proto::identity::v1::*;
use paddock_proto::sandbox::v1::*;
use paddock_testkit::{Backend, backend_tests};
use tonic::Code;

async fn update_policy(env: &Env, org: &Org, agent: &str, policy: AgentPolicy, paths: &[&str]) {
    env.policies(&org.owner)
        .update_agent_policy(UpdateAgentPolicyRequest {
            policy: Some(AgentPolicy {
                name: format!("{}/agents/{agent}/policy", org.name),
                ..policy
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            }),
        })
        .await
        .expect("update policy");
}

/// Bounds agent `bot`'s disk.
async fn bound_disk(env: &Env, org: &Org, bytes: i64) {
    update_policy(
        env,
        org,
        "bot",
        AgentPolicy {
            max: Some(ResourceLimits {
                disk_bytes: bytes,
                ..Default::default()
            }),
            ..Default::default()
        },
        &["max.disk_bytes"],
    )
    .await;
}

/// A second agent, `bot2`, with a secret credential and an open network in
/// its policy; returns its key.
async fn second_agent(env: &Env, org: &Org) -> String {
    env.stack
        .identity(&org.owner)
        .create_agent(CreateAgentRequest {
            parent: org.name.clone(),
            agent_id: "bot2".into(),
            agent: None,
        })
        .await
        .expect("agent bot2");
    env.stack
        .identity(&org.owner)
        .create_credential(CreateCredentialRequest {
            parent: org.name.clone(),
            credential_id: "bot2-secret".into(),
            credential: Some(Credential {
                kind: CredentialKind::ApiToken as i32,
                ..Default::default()
            }),
            value: b"bot2-only-secret".to_vec(),
        })
        .await
        .expect("credential");
    update_policy(
        env,
        org,
        "bot2",
        AgentPolicy {
            credentials: vec!["bot2-secret".into()],
            network_mode: NetworkMode::Open as i32,
            ..Default::default()
        },
        &["credentials", "network_mode"],
    )
    .await;
    mint_key(
        &env.stack,
        &org.owner,
        &org.id,
        &format!("{}/agents/bot2", org.name),
        "",
        &[],
    )
    .await
    .expect("bot2 key")
    .secret
}

fn as_bot2(network: NetworkMode) -> SandboxSpec {
    SandboxSpec {
        agent: "bot2".into(),
        network_mode: network as i32,
        credentials: vec![CredentialMount {
            credential: "bot2-secret".into(),
            path: "~/.secret".into(),
        }],
        ..spec("web")
    }
}

/// Finding 1: an agent runs only as itself, with its key or with its
/// sandbox's session token; a member needs agents.execute on the agent;
/// another organization's agent is NOT_FOUND.
async fn an_agent_runs_only_as_itself(backend: Backend) {
    let env = Env::start(backend).await;
    let org = setup_org(&env.stack, &fresh_id("imp")).await;
    let other = setup_org(&env.stack, &fresh_id("impo")).await;
    let bot2_key = second_agent(&env, &org).await;

    // bot (key) → bot2: refused, and no sandbox is left behind.
    let mut as_bot = env.sandboxes(&org.agent);
    let err = create(&mut as_bot, as_bot2(NetworkMode::Open))
        .await
        .expect_err("bot ran as bot2");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("only run sandboxes as itself"),
        "{err:?}"
    );
    let listed = env
        .sandboxes(&org.owner)
        .list_sandboxes(ListSandboxesRequest {
            show_ended: true,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(listed.sandboxes.is_empty(), "{listed:?}");

    // bot → itself: fine, with its own (none) network.
    let own = create(&mut as_bot, spec("web")).await.expect("bot as bot");
    assert_eq!(own.state, SandboxState::Running as i32);

    // bot's session token (from inside its sandbox) → bot2: refused.
    let token = exec(
        &mut as_bot,
        &own.name,
        &["sh", "-c", "printf %s \"$PADDOCK_TOKEN\""],
        None,
    )
    .await
    .expect("token")
    .out();
    assert!(token.starts_with("pdk_"), "{token}");
    let mut from_inside = env.sandboxes(&token);
    let err = create(&mut from_inside, as_bot2(NetworkMode::Open))
        .await
        .expect_err("session token ran as bot2");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // Spelled as a full name, too.
    let mut full = as_bot2(NetworkMode::None);
    full.agent = format!("{}/agents/bot2", org.name);
    full.credentials.clear();
    let err = create(&mut from_inside, full)
        .await
        .expect_err("session token ran as bot2 (full name)");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // bot2 itself may, and gets its policy's network and credential.
    let mut as_bot2_client = env.sandboxes(&bot2_key);
    let sb2 = create(&mut as_bot2_client, as_bot2(NetworkMode::Open))
        .await
        .expect("bot2 as bot2");
    let secret = exec(
        &mut as_bot2_client,
        &sb2.name,
        &["sh", "-c", "cat ~/.secret"],
        None,
    )
    .await
    .expect("cat");
    assert_eq!(secret.out(), "bot2-only-secret");
    let spec2 = sb2.spec.clone().expect("spec");
    assert_eq!(spec2.agent, format!("{}/agents/bot2", org.name));
    assert_eq!(spec2.network_mode, NetworkMode::Open as i32);

    // A developer may run as an agent (agents.execute on that agent), and
    // the policy applied is that agent's, never wider: bot's policy has no
    // credentials, so bot2's credential is refused for bot.
    let mut dev = env.sandboxes(&org.developer);
    let mut wider = as_bot2(NetworkMode::None);
    wider.agent = "bot".into();
    let err = create(&mut dev, wider)
        .await
        .expect_err("bot's policy lists no credential");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("not in the agent policy"), "{err:?}");
    let ran = create(&mut dev, as_bot2(NetworkMode::None))
        .await
        .expect("developer runs bot2");
    assert_eq!(
        ran.spec.as_ref().map(|s| s.agent.clone()),
        Some(format!("{}/agents/bot2", org.name))
    );

    // A key scoped without agents.execute may not run any agent.
    let read_only = mint_key(
        &env.stack,
        &org.developer,
        &org.id,
        &org.developer_member,
        "",
        &["read-only"],
    )
    .await
    .expect("read-only key")
    .secret;
    let err = create(&mut env.sandboxes(&read_only), spec("web"))
        .await
        .expect_err("read-only key ran an agent");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("agents.execute"), "{err:?}");

    // Another organization's agent is NOT_FOUND, for its owner and agent.
    for token in [&other.owner, &other.agent] {
        let mut s = spec("web");
        s.agent = format!("{}/agents/bot2", org.name);
        let err = create(&mut env.sandboxes(token), s)
            .await
            .expect_err("cross-org agent");
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }
    env.shutdown().await;
}

/// Finding 2: a signal for an exec whose process has ended is refused
/// (FAILED_PRECONDITION) and goes nowhere, instead of to a cached host pid
/// that the kernel may have handed to another process.
///
/// The exec's shell exits at once while a background child holds its
/// output, so the stream outlives the process (Docker drains output for
/// up to 2 s): a signal sent in that window must be refused. If the window
/// closes before the signal gets there, the attempt is made again.
async fn a_signal_after_the_exec_ended_is_refused(backend: Backend) {
    let env = Env::start(backend).await;
    let org = setup_org(&env.stack, &fresh_id("sigx")).await;
    let mut client = env.sandboxes(&org.owner);
    let sb = create(&mut client, spec("web")).await.expect("create");
    let mut refused = None;
    for _attempt in 0..5 {
        let (tx, mut stream) = open_exec(
            &mut client,
            ExecStart {
                sandbox: sb.name.clone(),
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo pid=$$; sleep 20 & exit 0".into(),
                ],
                ..Default::default()
            },
        )
        .await;
        let mut out = String::new();
        while !out.contains('\n') {
            match stream.message().await.expect("message") {
                Some(ExecResponse {
                    message: Some(exec_response::Message::Stdout(b)),
                }) => out.push_str(&String::from_utf8_lossy(&b)),
                Some(_) => {}
                None => panic!("the stream ended early: {out}"),
            }
        }
        // The shell exits right after its echo; its output stays open.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if tx
            .send(ExecRequest {
                message: Some(exec_request::Message::Signal(9)),
            })
            .await
            .is_err()
        {
            continue; // The stream had ended already.
        }
        let end = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                match stream.message().await {
                    Ok(Some(ExecResponse {
                        message: Some(exec_response::Message::Exit(e)),
                    })) => return Ok(e),
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("the stream ended with neither exit nor error"),
                    Err(status) => return Err(status),
                }
            }
        })
        .await
        .expect("the stream did not end");
        if let Err(status) = end {
            refused = Some(status);
            break;
        }
    }
    let err = refused.expect("a signal sent after the command ended was never refused");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("has ended"), "{err:?}");
    // The sandbox is untouched.
    let out = exec(&mut client, &sb.name, &["echo", "still-here"], None)
        .await
        .expect("exec after");
    assert!(out.out().contains("still-here"));
    env.shutdown().await;
}

/// Finding 6: the image's USER is resolved to a numeric uid through the
/// image's own passwd, so no spelling of root runs as root.
async fn no_image_user_runs_as_root(backend: Backend) {
    let images = tokio::task::spawn_blocking(paddock_testkit::image::user_images)
        .await
        .expect("user images");
    let env = Env::start(backend).await;
    let org = setup_org(&env.stack, &fresh_id("usr")).await;
    let mut client = env.sandboxes(&org.owner);
    for (user, tag) in images {
        let mut s = spec("web");
        s.image = tag.clone();
        let created = create(&mut client, s).await;
        if user == "ghost" {
            let err = created.expect_err("a USER missing from passwd ran");
            assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
            assert!(err.message().contains("ghost"), "{err:?}");
            continue;
        }
        let sb = created.unwrap_or_else(|e| panic!("USER {user}: {e:?}"));
        let out = exec(
            &mut client,
            &sb.name,
            &["sh", "-c", "echo $(id -u):$(id -g)"],
            None,
        )
        .await
        .expect("id");
        let want = match user.as_str() {
            "1000" | "node" => "1000:1000",
            _ => "65534:65534",
        };
        assert_eq!(out.out().trim(), want, "USER {user}");
        env.sandboxes(&org.owner)
            .delete_sandbox(DeleteSandboxRequest {
                name: sb.name.clone(),
            })
            .await
            .expect("delete");
    }
    // Where the owner allows root, the uid-0 name does run as root.
    env.policies(&org.owner)
        .update_security_settings(UpdateSecuritySettingsRequest {
            settings: Some(SecuritySettings {
                name: format!("{}/securitySettings", org.name),
                hardening: Some(HardeningRelaxations {
                    allow_root_user: true,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["hardening.allow_root_user".into()],
            }),
        })
        .await
        .expect("allow root");
    let toor = &images.iter().find(|(u, _)| u == "toor").expect("toor").1;
    let mut s = spec("web");
    s.image = toor.clone();
    let sb = create(&mut client, s).await.expect("create as toor");
    let out = exec(&mut client, &sb.name, &["id", "-u"], None)
        .await
        .expect("id");
    assert_eq!(out.out().trim(), "0");
    env.shutdown().await;
}

/// Finding 4: two installations on one Docker host, each with an
/// organization `acme` of the same id, never share a cache volume.
async fn caches_are_per_installation(backend: Backend) {
    let first = Env::start(backend).await;
    let second = Env::start(backend).await;
    let id = fresh_id("acme");
    let a = setup_org(&first.stack, &id).await;
    let b = setup_org(&second.stack, &id).await;
    let mut with_cache = spec("web");
    with_cache.caches = vec!["pip".into()];
    let mut ca = first.sandboxes(&a.owner);
    let sa = create(&mut ca, with_cache.clone()).await.expect("create a");
    let out = exec(
        &mut ca,
        &sa.name,
        &["sh", "-c", "echo poison > /cache/pip/evil && echo ok"],
        None,
    )
    .await
    .expect("poison");
    assert_eq!(out.out().trim(), "ok", "{}", out.err());
    let mut cb = second.sandboxes(&b.owner);
    let sb = create(&mut cb, with_cache).await.expect("create b");
    let out = exec(
        &mut cb,
        &sb.name,
        &["sh", "-c", "ls -A /cache/pip; cat /cache/pip/evil 2>&1"],
        None,
    )
    .await
    .expect("read");
    assert!(
        !out.out().contains("poison"),
        "the other installation's cache: {}",
        out.out()
    );
    first.shutdown().await;
    second.shutdown().await;
}

async fn download(
    client: &mut SandboxClient,
    sandbox: &str,
    path: &str,
) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = client
        .download_files(DownloadFilesRequest {
            sandbox: sandbox.into(),
            path: path.into(),
        })
        .await?
        .into_inner();
    let mut archive = Vec::new();
    while let Some(m) = stream.message().await? {
        archive.extend(m.chunk);
    }
    Ok(archive)
}

/// Finding 12: a download never follows a link the sandbox planted.
async fn downloads_never_follow_planted_links(backend: Backend) {
    let env = Env::start(backend).await;
    let org = setup_org(&env.stack, &fresh_id("dl")).await;
    let mut client = env.sandboxes(&org.owner);
    let sb = create(&mut client, spec("web")).await.expect("create");
    let out = exec(
        &mut client,
        &sb.name,
        &["sh", "-c", "ln -s /etc /workspace/e && mkdir /workspace/d && ln -s /etc/passwd /workspace/d/p && echo hi > /workspace/d/f && echo ok"],
        None,
    )
    .await
    .expect("plant");
    assert_eq!(out.out().trim(), "ok", "{}", out.err());
    for path in ["e/passwd", "/workspace/e/passwd", "e/shadow", "d/p/x"] {
        let Err(err) = download(&mut client, &sb.name, path).await else {
            panic!("{path}: followed a planted link");
        };
        assert_eq!(err.code(), Code::InvalidArgument, "{path}: {err:?}");
    }
    // The links themselves come out as links; nothing behind them.
    for path in ["e", "e/", "d"] {
        let archive = download(&mut client, &sb.name, path)
            .await
            .expect("download");
        let text = String::from_utf8_lossy(&archive);
        assert!(
            !text.contains("root:x:0:0"),
            "{path}: the image's passwd leaked"
        );
        let mut tar = tar::Archive::new(archive.as_slice());
        for entry in tar.entries().expect("entries") {
            let entry = entry.expect("entry");
            let name = entry.path().expect("path").display().to_string();
            if name == "e" || name == "d/p" {
                assert!(entry.header().entry_type().is_symlink(), "{name}");
            }
        }
    }
    env.shutdown().await;
}

/// Finding 7: the disk bound is enforced (the workspace is a file system
/// of that size, /tmp is capped by it); finding 14: the sandbox's
/// mountinfo names no host path.
async fn disk_bounds_are_enforced(backend: Backend) {
    let env = Env::start(backend).await;
    let org = setup_org(&env.stack, &fresh_id("disk")).await;
    bound_disk(&env, &org, 100 << 20).await;
    let mut client = env.sandboxes(&org.owner);
    // Above the bound: refused, naming it.
    let mut big = spec("web");
    big.resources = Some(ResourceLimits {
        disk_bytes: 200 << 20,
        ..Default::default()
    });
    let err = create(&mut client, big).await.expect_err("above the bound");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("max.disk_bytes"), "{err:?}");

    // The organization's bound sizes its caches.
    env.policies(&org.owner)
        .update_security_settings(UpdateSecuritySettingsRequest {
            settings: Some(SecuritySettings {
                name: format!("{}/securitySettings", org.name),
                max: Some(ResourceLimits {
                    disk_bytes: 128 << 20,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["max.disk_bytes".into()],
            }),
        })
        .await
        .expect("settings");
    let mut cached = spec("web");
    cached.caches = vec!["pip".into()];
    let sb = create(&mut client, cached).await.expect("create");
    assert_eq!(
        sb.spec
            .as_ref()
            .and_then(|s| s.resources)
            .map(|r| r.disk_bytes),
        Some(100 << 20)
    );
    let out = exec(
        &mut client,
        &sb.name,
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/workspace/big bs=1M count=300 2>/dev/null; echo ws=$?; \
             ls -l /workspace/big | awk '{print \"size=\" $5}'; rm -f /workspace/big; \
             dd if=/dev/zero of=/tmp/big bs=1M count=300 2>/dev/null; echo tmp=$?; rm -f /tmp/big; \
             dd if=/dev/zero of=/cache/pip/big bs=1M count=300 2>/dev/null; echo cache=$?; rm -f /cache/pip/big; \
             echo ok > /workspace/after && cat /workspace/after; \
             cat /proc/self/mountinfo",
        ],
        None,
    )
    .await
    .expect("fill");
    let text = out.out();
    assert!(
        text.contains("ws=1"),
        "a 300 MB write fit a 100 MiB workspace: {text}"
    );
    let size: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("size="))
        .and_then(|s| s.trim().parse().ok())
        .expect("size");
    assert!(size <= 100 << 20, "{size}");
    assert!(text.contains("tmp=1"), "/tmp took 300 MB: {text}");
    assert!(text.contains("cache=1"), "a cache took 300 MB: {text}");
    assert!(text.contains("ok"), "the workspace is usable again: {text}");
    // No host path in the sandbox's view of its mounts.
    let data_dir = env.config.common.data_dir.display().to_string();
    assert!(
        !text.contains(&data_dir),
        "mountinfo shows {data_dir}: {text}"
    );
    assert!(!text.contains("workspaces"), "{text}");
    env.shutdown().await;
}

/// Finding 11: env values go only to the sandbox's creator and holders of
/// sessions.manage, secret-looking ones to nobody.
async fn env_values_are_not_shown_to_others(backend: Backend) {
    let env = Env::start(backend).await;
    let org = setup_org(&env.stack, &fresh_id("envs")).await;
    let mut owner = env.sandboxes(&org.owner);
    let mut s = spec("web");
    s.env = [("DB_PASSWORD", "hunter2-secret"), ("MODE", "debug-visible")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let sb = create(&mut owner, s).await.expect("create");
    let env_of = |sandbox: &Sandbox| sandbox.spec.clone().expect("spec").env;
    assert_eq!(env_of(&sb)["DB_PASSWORD"], "[redacted]");
    assert_eq!(env_of(&sb)["MODE"], "debug-visible");
    // The value still reaches the command.
    let out = exec(
        &mut owner,
        &sb.name,
        &["sh", "-c", "echo $DB_PASSWORD"],
        None,
    )
    .await
    .expect("exec");
    assert_eq!(out.out().trim(), "hunter2-secret");

    let token = exec(
        &mut owner,
        &sb.name,
        &["sh", "-c", "printf %s \"$PADDOCK_TOKEN\""],
        None,
    )
    .await
    .expect("token")
    .out();
    for (who, key) in [
        ("developer", org.developer.as_str()),
        ("session token", token.as_str()),
    ] {
        let mut client = env.sandboxes(key);
        let got = client
            .get_sandbox(GetSandboxRequest {
                name: sb.name.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("{who}: {e:?}"))
            .into_inner()
            .sandbox
            .expect("sandbox");
        for value in env_of(&got).values() {
            assert_eq!(value, "[redacted]", "{who} saw an env value");
        }
        let listed = client
            .list_sandboxes(ListSandboxesRequest::default())
            .await
            .unwrap_or_else(|e| panic!("{who}: {e:?}"))
            .into_inner();
        let text = format!("{listed:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("debug-visible"),
            "{who}: {text}"
        );
    }
    // The owner (creator, sessions.manage) sees the plain value, never the secret.
    let got = owner
        .get_sandbox(GetSandboxRequest {
            name: sb.name.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .sandbox
        .expect("sandbox");
    assert_eq!(env_of(&got)["MODE"], "debug-visible");
    assert_eq!(env_of(&got)["DB_PASSWORD"], "[redacted]");
    // At rest the values are sealed: the stored spec holds neither.
    let db = runner_db(&env).await;
    let stored: Vec<(String,)> = sqlx::query_as("SELECT spec FROM sandboxes")
        .fetch_all(&db.pool)
        .await
        .expect("specs");
    assert!(!stored.is_empty());
    for (hex,) in stored {
        let bytes = paddock_shared::hex::decode(&hex).expect("hex");
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("hunter2") && !text.contains("debug-visible"),
            "{text}"
        );
    }
    env.shutdown().await;
}

/// The runner's own database, read directly (as someone with access to
/// the database files or server would).
async fn runner_db(env: &Env) -> paddock_shared::db::Database {
    paddock_shared::db::Database::connect(
        "sandbox_runner",
        &env.config.common.data_dir,
        env.config.common.database_url.as_deref(),
        paddock_sandbox_runner::MIGRATIONS,
    )
    .await
    .expect("runner db")
}

/// Finding 16: a read-only key reads sandboxes (sessions.read), and
/// manages none.
async fn read_only_keys_read_sandboxes(backend: Backend) {
    let env = Env::start(backend).await;
    let org = setup_org(&env.stack, &fresh_id("ro")).await;
    let sb = create(&mut env.sandboxes(&org.owner), spec("web"))
        .await
        .expect("create");
    let read_only = mint_key(
        &env.stack,
        &org.developer,
        &org.id,
        &org.developer_member,
        "",
        &["read-only"],
    )
    .await
    .expect("read-only key")
    .secret;
    let mut client = env.sandboxes(&read_only);
    client
        .get_sandbox(GetSandboxRequest {
            name: sb.name.clone(),
        })
        .await
        .expect("a read-only key gets a sandbox");
    let listed = client
        .list_sandboxes(ListSandboxesRequest::default())
        .await
        .expect("a read-only key lists sandboxes")
        .into_inner();
    assert_eq!(listed.sandboxes.len(), 1);
    client
        .get_usage(GetUsageRequest {
            name: sb.name.clone(),
        })
        .await
        .expect("usage");
    let mut watch = client
        .watch_sandbox(WatchSandboxRequest {
            name: sb.name.clone(),
        })
        .await
        .expect("watch")
        .into_inner();
    assert!(watch.message().await.expect("first").is_some());
    let err = client
        .stop_sandbox(StopSandboxRequest {
            name: sb.name.clone(),
            ..Default::default()
        })
        .await
        .expect_err("a read-only key stopped a sandbox");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // A key scoped to something else reads nothing.
    let narrow = mint_key(
        &env.stack,
        &org.developer,
        &org.id,
        &org.developer_member,
        "",
        &["projects.read"],
    )
    .await
    .expect("narrow key")
    .secret;
    let err = env
        .sandboxes(&narrow)
        .list_sandboxes(ListSandboxesRequest::default())
        .await
        .expect_err("a projects.read key listed sandboxes");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    env.shutdown().await;
}

/// Finding 13: an organization runs only the images its owner approved,
/// and a forbidden image is answered exactly like a missing one.
async fn images_are_approved_per_organization(backend: Backend) {
    let env = Env::start(backend).await;
    // No image approved: the default.
    let bare = paddock_testkit::fixtures::setup_org(&env.stack, &fresh_id("img")).await;
    let mut client = env.sandboxes(&bare.owner);
    let answer = |image: &str, err: tonic::Status| {
        assert_eq!(err.code(), Code::FailedPrecondition, "{image}: {err:?}");
        err.message().replace(image, "IMAGE")
    };
    let mut s = spec("web");
    s.image = IMAGE.into();
    let forbidden = answer(
        IMAGE,
        create(&mut client, s).await.expect_err("not approved"),
    );
    let mut s = spec("web");
    s.image = "no-such-image:1".into();
    let missing = answer(
        "no-such-image:1",
        create(&mut client, s.clone()).await.expect_err("missing"),
    );
    assert_eq!(
        forbidden, missing,
        "a forbidden image is told apart from a missing one"
    );

    // Approving a pattern approves what it matches, and only that.
    approve_images(&env.stack, &bare, &["paddock-test-busybox:*"]).await;
    let mut s = spec("web");
    s.image = IMAGE.into();
    create(&mut client, s).await.expect("approved image");
    let users = tokio::task::spawn_blocking(paddock_testkit::image::user_images)
        .await
        .expect("user images");
    let mut s = spec("web");
    s.image = users[0].1.clone();
    let err = create(&mut client, s)
        .await
        .expect_err("an image outside the pattern");
    assert_eq!(answer(&users[0].1, err), missing);
    // Still missing even where everything is approved: same answer.
    approve_images(&env.stack, &bare, &["*"]).await;
    let mut s = spec("web");
    s.image = "no-such-image:1".into();
    let err = create(&mut client, s).await.expect_err("missing");
    assert_eq!(answer("no-such-image:1", err), missing);
    // Only the owner approves images.
    let err = env
        .stack
        .policy(&bare.admin)
        .update_security_settings(UpdateSecuritySettingsRequest {
            settings: Some(SecuritySettings {
                name: format!("{}/securitySettings", bare.name),
                allowed_images: vec!["*".into()],
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["allowed_images".into()],
            }),
        })
        .await
        .expect_err("an admin approved images");
    assert_eq!(err.code(), Code::PermissionDenied);
    env.shutdown().await;
}

/// Finding 3: deleting an organization leaves nothing behind on the
/// worker (sandboxes, containers, networks, workspaces kept or not,
/// credential files, cache volumes, records), and its id is never reused.
async fn a_deleted_organization_leaves_nothing(backend: Backend) {
    let env = Env::start(backend).await;
    let org = setup_org(&env.stack, &fresh_id("gone")).await;
    let other = setup_org(&env.stack, &fresh_id("stays")).await;
    let mut client = env.sandboxes(&org.owner);
    let mut cached = spec("web");
    cached.caches = vec!["pip".into()];
    let running = create(&mut client, cached.clone()).await.expect("running");
    let mut kept = spec("web");
    kept.keep_workspace = true;
    kept.command = vec!["true".into()];
    let kept = create(&mut client, kept).await.expect("kept");
    wait_ended(&mut client, &kept.name).await;
    let survivor = create(&mut env.sandboxes(&other.owner), cached)
        .await
        .expect("other org");
    let engine = env.engine();
    let labelled = |org: String| {
        let docker = engine.docker().clone();
        async move {
            let filters = std::collections::HashMap::from([(
                "label".to_owned(),
                vec![format!("paddock.org={org}")],
            )]);
            let containers = docker
                .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                    all: true,
                    filters: Some(filters.clone()),
                    ..Default::default()
                }))
                .await
                .expect("containers")
                .len();
            let volumes = docker
                .list_volumes(Some(bollard::query_parameters::ListVolumesOptions {
                    filters: Some(filters),
                }))
                .await
                .expect("volumes")
                .volumes
                .unwrap_or_default()
                .len();
            (containers, volumes)
        }
    };
    assert_eq!(labelled(org.id.clone()).await.0, 1);
    let workspaces = env.config.common.data_dir.join("workspaces").join(&org.id);
    let caches = env.config.common.data_dir.join("caches").join(&org.id);
    assert!(workspaces.exists() && caches.join("pip").exists());

    env.stack
        .identity(&org.owner)
        .delete_organization(DeleteOrganizationRequest {
            name: org.name.clone(),
        })
        .await
        .expect("delete the organization");
    // The runner hears of it (push, or the tombstone feed) and purges.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if labelled(org.id.clone()).await == (0, 0) && !workspaces.exists() && !caches.exists() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the organization was not purged"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = running;
    // No record is left, not even for the platform's own reads.
    let worker = env.worker();
    let left: Vec<String> = {
        let db = runner_db(&env).await;
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM sandboxes WHERE org_id = $1 AND worker_id = $2")
                .bind(&org.id)
                .bind(&worker)
                .fetch_all(&db.pool)
                .await
                .expect("query");
        rows.into_iter().map(|r| r.0).collect()
    };
    assert!(left.is_empty(), "records left: {left:?}");
    // The other organization is untouched.
    assert_eq!(labelled(other.id.clone()).await.0, 1);
    assert!(
        env.config
            .common
            .data_dir
            .join("caches")
            .join(&other.id)
            .join("pip")
            .exists()
    );
    let got = env
        .sandboxes(&other.owner)
        .get_sandbox(GetSandboxRequest {
            name: survivor.name.clone(),
        })
        .await
        .expect("the other org's sandbox")
        .into_inner()
        .sandbox
        .expect("sandbox");
    assert_eq!(got.state, SandboxState::Running as i32);
    // And the id is never handed out again.
    let err = env
        .stack
        .anonymous_identity()
        .create_organization(CreateOrganizationRequest::default())
        .await
        .map(|_| ())
        .expect_err("anonymous create");
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut platform = env.stack.identity(env.stack.bootstrap_token().expose());
    let err = platform
        .create_organization(CreateOrganizationRequest {
            organization_id: org.id.clone(),
            owner_email: "evil@evil.test".into(),
            ..Default::default()
        })
        .await
        .expect_err("a deleted id was reused");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    env.shutdown().await;
}

/// Uploads never land through a link the sandbox planted in its workspace
/// (Docker extracts as root and would follow it inside the container).
async fn uploads_never_land_through_planted_links(backend: Backend) {
    let env = Env::start(backend).await;
    let org = setup_org(&env.stack, &fresh_id("upl")).await;
    let mut client = env.sandboxes(&org.owner);
    let sb = create(&mut client, spec("web")).await.expect("create");
    let out = exec(
        &mut client,
        &sb.name,
        &[
            "sh",
            "-c",
            "ln -s /tmp /workspace/t && mkdir /workspace/d && echo ok",
        ],
        None,
    )
    .await
    .expect("plant");
    assert_eq!(out.out().trim(), "ok", "{}", out.err());
    let archive = |name: &str| {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(4);
        h.set_mode(0o644);
        h.set_path(name).expect("path");
        h.set_cksum();
        b.append(&h, &b"evil"[..]).expect("append");
        b.into_inner().expect("tar")
    };
    for (dest, name) in [("/workspace", "t/x"), ("t", "x"), ("/workspace/t", "y")] {
        let err = upload(&mut client, &sb.name, dest, archive(name))
            .await
            .expect_err("an upload landed through a planted link");
        assert_eq!(err.code(), Code::InvalidArgument, "{dest} {name}: {err:?}");
    }
    let out = exec(&mut client, &sb.name, &["ls", "/tmp"], None)
        .await
        .expect("ls");
    assert!(!out.out().contains('x'), "{}", out.out());
    // A plain upload still works, and the parents it implies are the
    // sandbox user's (finding 16): it can write in them.
    upload(&mut client, &sb.name, "d", archive("deep/er/ok.txt"))
        .await
        .expect("upload");
    let out = exec(
        &mut client,
        &sb.name,
        &[
            "sh",
            "-c",
            "touch /workspace/d/deep/er/new && stat -c %u /workspace/d/deep",
        ],
        None,
    )
    .await
    .expect("touch");
    assert_eq!(out.out().trim(), "65534", "{}", out.err());
    env.shutdown().await;
}

/// Finding 7 (uploads): an upload is bounded by the sandbox's disk bound,
/// and one sandbox takes one upload at a time.
async fn uploads_are_bounded(backend: Backend) {
    let env = Env::start(backend).await;
    let org = setup_org(&env.stack, &fresh_id("upb")).await;
    bound_disk(&env, &org, 32 << 20).await;
    let mut client = env.sandboxes(&org.owner);
    let sb = create(&mut client, spec("web")).await.expect("create");
    // Over the bound: refused while it streams, nothing spooled beyond it.
    let big = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(33 << 20);
        h.set_mode(0o644);
        h.set_path("big").expect("path");
        h.set_cksum();
        b.append(&h, std::io::repeat(7).take(33 << 20))
            .expect("append");
        b.into_inner().expect("tar")
    };
    let err = upload(&mut client, &sb.name, "/workspace", big)
        .await
        .expect_err("an upload above the disk bound");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    // One at a time: while an upload is open, another is refused. (Which
    // of two uploads takes the place first is a race the test cannot see:
    // it tries again if the open one lost it.)
    let empty = tar::Builder::new(Vec::new()).into_inner().expect("tar");
    let mut refused = None;
    for _attempt in 0..10 {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(UploadFilesRequest {
            message: Some(upload_files_request::Message::Start(UploadStart {
                sandbox: sb.name.clone(),
                path: "/workspace".into(),
                ..Default::default()
            })),
        })
        .await
        .expect("start");
        let mut first_client = env.sandboxes(&org.owner);
        let first = tokio::spawn(async move {
            first_client
                .upload_files(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let second = upload(&mut client, &sb.name, "/workspace", empty.clone()).await;
        drop(tx);
        let _ = first.await.expect("first upload task");
        if let Err(e) = second {
            refused = Some(e);
            break;
        }
    }
    let err = refused.expect("a second upload was never refused");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("one at a time"), "{err:?}");
    upload(&mut client, &sb.name, "/workspace", empty)
        .await
        .expect("the place is free again");
    env.shutdown().await;
}

backend_tests!(
    an_agent_runs_only_as_itself,
    a_signal_after_the_exec_ended_is_refused,
    no_image_user_runs_as_root,
    caches_are_per_installation,
    downloads_never_follow_planted_links,
    disk_bounds_are_enforced,
    env_values_are_not_shown_to_others,
    read_only_keys_read_sandboxes,
    images_are_approved_per_organization,
    a_deleted_organization_leaves_nothing,
    uploads_never_land_through_planted_links,
    uploads_are_bounded,
);
