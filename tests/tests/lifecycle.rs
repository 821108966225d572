//! The sandbox lifecycle a user sees through `paddock run` and `paddock
//! sandbox`: why a sandbox ended, its exit code in the record, its log,
//! signals to `paddock run`, start failures, a writable /tmp, the kill
//! switch (deleted agents and projects, demoted members, `stop --all`),
//! input refused instead of accepted silently, and `cp` as `docker cp`.
//! Real binaries, a real Docker Engine.

use std::time::Duration;

use paddock_e2e::{Backend, Dev, Output, e2e_tests};
use serde_json::Value;

const IMAGE: &str = paddock_testkit::image::IMAGE;

/// Organization `acme` with agent `bot` and project `web`; the owner key.
fn setup(dev: &Dev) -> String {
    let owner = dev.acme_with_bot();
    dev.paddock(Some(&owner), &["project", "create", "web"])
        .json();
    owner
}

fn secret(accepted: &Value) -> String {
    accepted["secret"].as_str().expect("secret").to_owned()
}

fn run(dev: &Dev, token: &str, extra: &[&str], command: &[&str]) -> Output {
    let mut args = vec![
        "run",
        "--agent",
        "bot",
        "--project",
        "web",
        "--image",
        IMAGE,
    ];
    args.extend_from_slice(extra);
    args.push("--");
    args.extend_from_slice(command);
    dev.paddock(Some(token), &args)
}

fn detached(dev: &Dev, token: &str, extra: &[&str], command: &[&str]) -> String {
    let mut all = vec!["--detach"];
    all.extend_from_slice(extra);
    let sb = run(dev, token, &all, command).json();
    sb["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{sb:#}"))
        .to_owned()
}

fn get(dev: &Dev, token: &str, id: &str) -> Value {
    dev.paddock(Some(token), &["sandbox", "get", id]).json()
}

/// Waits until sandbox `id` has ended and returns it.
fn ended(dev: &Dev, token: &str, id: &str) -> Value {
    let out = dev.paddock_until(
        Some(token),
        &["sandbox", "get", id],
        Duration::from_secs(60),
        |o| o.code == 0 && matches!(o.json()["state"].as_str(), Some("stopped" | "failed")),
    );
    let s = out.json();
    assert!(
        matches!(s["state"].as_str(), Some("stopped" | "failed")),
        "never ended: {s:#}"
    );
    s
}

fn items(v: &Value) -> Vec<Value> {
    v.as_array()
        .or_else(|| v["items"].as_array())
        .cloned()
        .unwrap_or_else(|| panic!("not a list: {v:#}"))
}

fn foreground_runs_end_as_their_command_did(backend: Backend) {
    let dev = Dev::start(backend);
    let owner = setup(&dev);

    // The exit code goes into the kept record, with the output in its log.
    let out = run(
        &dev,
        &owner,
        &["--keep"],
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
    );
    assert_eq!(out.code, 3, "{out:#?}");
    let list = items(
        &dev.paddock(Some(&owner), &["sandbox", "list", "--all"])
            .json(),
    );
    assert_eq!(list.len(), 1, "{list:#?}");
    let kept = &list[0];
    assert_eq!(
        (
            kept["state"].as_str(),
            kept["end_reason"].as_str(),
            kept["exit_code"].as_i64()
        ),
        (Some("stopped"), Some("exited"), Some(3)),
        "{kept:#}"
    );
    let id = kept["id"].as_str().expect("id").to_owned();
    let logs = dev.paddock(Some(&owner), &["sandbox", "logs", &id]);
    assert_eq!(
        (logs.code, logs.stdout.as_str(), logs.stderr.as_str()),
        (0, "out\n", "err\n"),
        "{logs:#?}"
    );
    let tail = dev.paddock(Some(&owner), &["sandbox", "logs", &id, "--tail", "2"]);
    // The last two bytes, of whichever stream printed last.
    assert_eq!(tail.stdout.len() + tail.stderr.len(), 2, "{tail:#?}");
    assert!(
        ["t\n", "r\n"].contains(&(tail.stdout.clone() + &tail.stderr).as_str()),
        "{tail:#?}"
    );
    // A kept, stopped sandbox's workspace can still be copied out.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(
        &dev,
        &owner,
        &["--keep"],
        &["sh", "-c", "echo result > /workspace/out.txt"],
    );
    assert_eq!(out.code, 0, "{out:#?}");
    let list = items(
        &dev.paddock(Some(&owner), &["sandbox", "list", "--all"])
            .json(),
    );
    let second = list
        .iter()
        .find(|s| s["id"] != id.as_str())
        .expect("second kept");
    let second = second["id"].as_str().expect("id");
    let dest = dir.path().join("out.txt");
    let cp = dev.paddock(
        Some(&owner),
        &[
            "sandbox",
            "cp",
            &format!("{second}:out.txt"),
            dest.to_str().expect("utf8"),
        ],
    );
    assert_eq!(cp.code, 0, "{cp:#?}");
    assert_eq!(std::fs::read_to_string(&dest).expect("copied"), "result\n");

    // An OOM kill is said on stderr, with the limit, and the code kept.
    let out = run(
        &dev,
        &owner,
        &["--memory", "32m"],
        &["sh", "-c", "dd if=/dev/zero of=/dev/null bs=200M count=1"],
    );
    assert_eq!(out.code, 137, "{out:#?}");
    assert!(
        out.stderr.contains("ended: oom_killed (memory limit 32"),
        "{out:#?}"
    );

    // /tmp is the sandbox user's to write, even where the image's /tmp is
    // root's 0755.
    let image = paddock_testkit::image::busybox_image_tmp_0755();
    let out = dev.paddock(
        Some(&owner),
        &[
            "run",
            "--agent",
            "bot",
            "--project",
            "web",
            "--image",
            image,
            "--",
            "sh",
            "-c",
            "touch /tmp/x && stat -c '%a' /tmp && id -u",
        ],
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "1777\n65534\n"),
        "{out:#?}"
    );

    // A command missing from the image: a clear error, no raw Docker text.
    let out = run(&dev, &owner, &[], &["no-such-command"]);
    let msg = out.failure("FAILED_PRECONDITION");
    assert!(msg.contains("no-such-command"), "{out:#?}");
    assert!(!msg.contains("OCI runtime"), "{out:#?}");
    // Detached, the record says which command could not be started.
    let id = detached(&dev, &owner, &[], &["no-such-command"]);
    let s = ended(&dev, &owner, &id);
    assert_eq!(s["exit_code"].as_i64(), Some(127), "{s:#}");
    assert!(
        s["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no-such-command"),
        "{s:#}"
    );
}

fn signals_logs_attach_and_wait(backend: Backend) {
    let dev = Dev::start(backend);
    let owner = setup(&dev);

    // SIGTERM and SIGHUP to `paddock run` stop the sandbox, exit 128+n.
    for (signal, code) in [("-TERM", 143), ("-HUP", 129)] {
        let mut child = std::process::Command::new(paddock_e2e::paddock_bin())
            .args([
                "run",
                "--agent",
                "bot",
                "--project",
                "web",
                "--image",
                IMAGE,
                "--",
            ])
            .args(["sh", "-c", "echo started; sleep 300"])
            .env("PADDOCK_TOKEN", &owner)
            .env("PADDOCK_IDENTITY_ENDPOINT", &dev.identity_endpoint)
            .env("PADDOCK_AUTHZ_ENDPOINT", &dev.authz_endpoint)
            .env("PADDOCK_SANDBOX_ENDPOINT", &dev.sandbox_endpoint)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn paddock run");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).expect("read");
        assert_eq!(line, "started\n");
        let sent = std::process::Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
        let out = child.wait_with_output().expect("wait");
        assert_eq!(out.status.code(), Some(code), "{signal}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("stopping"),
            "{out:?}"
        );
        // Nothing keeps running.
        let live = items(&dev.paddock(Some(&owner), &["sandbox", "list"]).json());
        assert!(live.is_empty(), "{signal}: still running: {live:#?}");
    }

    // A detached sandbox: logs -f follows it to its end, wait gives its
    // code, attach after the end prints nothing new and exits with it.
    let id = detached(
        &dev,
        &owner,
        &[],
        &["sh", "-c", "echo one; sleep 2; echo two >&2; exit 5"],
    );
    let follow = dev.paddock(Some(&owner), &["sandbox", "logs", "-f", &id]);
    assert_eq!(
        (follow.code, follow.stdout.as_str(), follow.stderr.as_str()),
        (0, "one\n", "two\n"),
        "{follow:#?}"
    );
    let wait = dev.paddock(Some(&owner), &["sandbox", "wait", &id]).json();
    assert_eq!(
        (wait["exit_code"].as_i64(), wait["end_reason"].as_str()),
        (Some(5), Some("exited")),
        "{wait:#}"
    );
    let attach = dev.paddock(Some(&owner), &["sandbox", "attach", &id]);
    assert_eq!(
        (attach.code, attach.stdout.as_str()),
        (5, ""),
        "{attach:#?}"
    );
    // Another organization's sandbox log is not found.
    let other = dev
        .paddock(
            Some(&dev.bootstrap_token()),
            &["org", "create", "other", "--owner", "eve@other.test"],
        )
        .json()["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let name = format!("organizations/acme/sandboxes/{id}");
    dev.paddock(Some(&other), &["sandbox", "logs", &name])
        .failure("NOT_FOUND");
}

fn the_kill_switch_and_silent_input(backend: Backend) {
    let dev = Dev::start(backend);
    let owner = setup(&dev);
    let idle = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"];

    // Input that used to be accepted silently.
    dev.paddock(
        Some(&owner),
        &["policy", "set", "nosuchagent", "--max-memory", "1g"],
    )
    .failure("NOT_FOUND");
    let out = dev.paddock(
        Some(&owner),
        &[
            "run",
            "--agent",
            "bot",
            "--project",
            "nope",
            "--image",
            IMAGE,
            "--",
            "true",
        ],
    );
    assert!(out.failure("NOT_FOUND").contains("nope"), "{out:#?}");
    let out = dev.paddock(
        Some(&owner),
        &[
            "run",
            "--agent",
            "nobody",
            "--project",
            "web",
            "--image",
            IMAGE,
            "--",
            "true",
        ],
    );
    assert!(out.failure("NOT_FOUND").contains("nobody"), "{out:#?}");
    let all = items(
        &dev.paddock(Some(&owner), &["sandbox", "list", "--all"])
            .json(),
    );
    assert!(all.is_empty(), "a refused run left a record: {all:#?}");

    // Deleting an agent stops its sandboxes; revoking its last key does not.
    dev.paddock(Some(&owner), &["agent", "create", "temp"])
        .json();
    let agent_key = dev
        .paddock(
            Some(&owner),
            &["key", "create", "temp-key", "--agent", "temp"],
        )
        .json();
    let key_name = agent_key["api_key"]["name"]
        .as_str()
        .expect("key name")
        .to_owned();
    let agent_key = agent_key["secret"].as_str().expect("secret").to_owned();
    let by_agent = {
        let mut args = vec![
            "run",
            "--project",
            "web",
            "--image",
            IMAGE,
            "--detach",
            "--",
        ];
        args.extend_from_slice(&idle);
        let sb = dev.paddock(Some(&agent_key), &args).json();
        sb["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{sb:#}"))
            .to_owned()
    };
    dev.paddock(Some(&owner), &["key", "revoke", &key_name])
        .json();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(get(&dev, &owner, &by_agent)["state"], "running");
    dev.paddock(Some(&owner), &["agent", "delete", "temp"])
        .json();
    let s = ended(&dev, &owner, &by_agent);
    assert_eq!(s["end_reason"], "agent_deleted", "{s:#}");

    // Deleting a project stops its sandboxes.
    dev.paddock(Some(&owner), &["project", "create", "doomed"])
        .json();
    let mut args = vec![
        "run",
        "--agent",
        "bot",
        "--project",
        "doomed",
        "--image",
        IMAGE,
        "--detach",
        "--",
    ];
    args.extend_from_slice(&idle);
    let in_project = dev.paddock(Some(&owner), &args).json()["id"]
        .as_str()
        .expect("id")
        .to_owned();
    dev.paddock(Some(&owner), &["project", "delete", "doomed"])
        .json();
    let s = ended(&dev, &owner, &in_project);
    assert_eq!(s["end_reason"], "project_deleted", "{s:#}");

    // Nobody runs an agent above their own role, and a demotion stops the
    // sandboxes it no longer allows: an admin runs an admin agent, then is
    // made a developer.
    let admin = secret(&dev.join(&owner, "ops@acme.test", "admin"));
    dev.paddock(Some(&admin), &["agent", "create", "ops", "--role", "admin"])
        .json();
    let ops_args = |detach: bool| {
        let mut args = vec![
            "run",
            "--agent",
            "ops",
            "--project",
            "web",
            "--image",
            IMAGE,
        ];
        if detach {
            args.push("--detach");
        }
        args.push("--");
        args.extend_from_slice(&idle);
        args
    };
    let by_admin = dev.paddock(Some(&admin), &ops_args(true)).json()["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let by_admin_bot = detached(&dev, &admin, &[], &idle);
    let low = secret(&dev.join(&owner, "low@acme.test", "developer"));
    let refused = dev.paddock(Some(&low), &ops_args(false));
    let message = refused.failure("PERMISSION_DENIED");
    assert!(
        message.contains("above") && message.contains("admin"),
        "{refused:#?}"
    );
    dev.paddock(
        Some(&owner),
        &["member", "set-role", "ops@acme.test", "developer"],
    )
    .json();
    let s = ended(&dev, &owner, &by_admin);
    assert_eq!(s["end_reason"], "access_revoked", "{s:#}");
    assert!(
        s["message"].as_str().unwrap_or("").contains("above"),
        "{s:#}"
    );
    // The demoted member's run of an agent still within their role goes on.
    assert_eq!(get(&dev, &owner, &by_admin_bot)["state"], "running");

    // A member removed from the organization: their sandboxes stop, the
    // owner's keep running.
    let member = dev.join(&owner, "dev@acme.test", "developer");
    let member_key = secret(&member);
    let member_name = member["member"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("{member:#}"))
        .to_owned();
    let by_member = detached(&dev, &member_key, &[], &idle);
    let by_owner = detached(&dev, &owner, &[], &idle);
    dev.paddock(Some(&owner), &["member", "remove", &member_name])
        .json();
    let s = ended(&dev, &owner, &by_member);
    assert_eq!(s["end_reason"], "access_revoked", "{s:#}");
    assert_eq!(get(&dev, &owner, &by_owner)["state"], "running");

    // The manual switch: sessions.manage only.
    dev.paddock(Some(&low), &["sandbox", "stop", "--all"])
        .failure("PERMISSION_DENIED");
    let stopped = dev
        .paddock(
            Some(&owner),
            &["sandbox", "stop", "--all", "--agent", "bot"],
        )
        .json();
    let stopped = items(&stopped);
    assert!(
        stopped.iter().any(|s| s["id"] == by_owner.as_str()),
        "{stopped:#?}"
    );
    assert!(
        stopped.iter().all(|s| s["state"] == "stopped"),
        "{stopped:#?}"
    );
    let live = items(&dev.paddock(Some(&owner), &["sandbox", "list"]).json());
    assert!(live.is_empty(), "{live:#?}");
}

fn cp_follows_docker_cp(backend: Backend) {
    let dev = Dev::start(backend);
    let owner = setup(&dev);
    let id = detached(
        &dev,
        &owner,
        &[],
        &["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"],
    );
    let host = tempfile::tempdir().expect("tempdir");
    let h = |p: &str| host.path().join(p).to_str().expect("utf8").to_owned();
    std::fs::create_dir_all(host.path().join("src/sub")).expect("mkdir");
    std::fs::write(host.path().join("src/a.js"), "A").expect("write");
    std::fs::write(host.path().join("src/sub/b.js"), "B").expect("write");
    std::fs::write(host.path().join("file.txt"), "F").expect("write");
    let cp = |from: &str, to: &str| dev.paddock(Some(&owner), &["sandbox", "cp", from, to]);
    let sh = |script: &str| {
        let out = dev.paddock(
            Some(&owner),
            &["sandbox", "exec", &id, "--", "sh", "-c", script],
        );
        assert_eq!(out.code, 0, "{script}: {out:#?}");
        out.stdout
    };
    let at = |p: &str| format!("{id}:{p}");

    // A directory to a missing path: that path, with its contents.
    assert_eq!(cp(&h("src"), &at("src")).code, 0);
    assert_eq!(sh("cat /workspace/src/a.js /workspace/src/sub/b.js"), "AB");
    sh("test ! -e /workspace/src/src");
    // A directory into an existing directory: under its own name.
    sh("mkdir /workspace/lib");
    assert_eq!(cp(&h("src"), &at("lib")).code, 0);
    assert_eq!(sh("cat /workspace/lib/src/a.js"), "A");
    // SRC/. into an existing directory: its contents.
    sh("mkdir /workspace/flat");
    assert_eq!(cp(&format!("{}/.", h("src")), &at("flat")).code, 0);
    assert_eq!(sh("cat /workspace/flat/a.js"), "A");
    // A file to a missing path: a file of that name.
    assert_eq!(cp(&h("file.txt"), &at("renamed.txt")).code, 0);
    assert_eq!(
        sh("cat /workspace/renamed.txt; test -f /workspace/renamed.txt && echo file"),
        "Ffile\n"
    );
    // A file onto a file: overwritten.
    sh("echo old > /workspace/over.txt");
    assert_eq!(cp(&h("file.txt"), &at("over.txt")).code, 0);
    assert_eq!(sh("cat /workspace/over.txt"), "F");
    // A file into a directory: under its own name.
    assert_eq!(cp(&h("file.txt"), &at("lib")).code, 0);
    assert_eq!(sh("cat /workspace/lib/file.txt"), "F");
    // A file to a missing directory (trailing /): refused.
    cp(&h("file.txt"), &at("nodir/")).failure("NOT_FOUND");
    // A directory onto a file: refused.
    cp(&h("src"), &at("over.txt")).failure("FAILED_PRECONDITION");
    // A link the sandbox planted is never followed.
    sh("ln -s /etc /workspace/planted");
    let out = cp(&h("file.txt"), &at("planted/passwd"));
    assert_ne!(out.code, 0, "{out:#?}");

    // And back out: a directory to a missing path becomes that path.
    let out = cp(&at("src"), &h("back"));
    assert_eq!(out.code, 0, "{out:#?}");
    assert_eq!(
        std::fs::read_to_string(host.path().join("back/a.js")).expect("a.js"),
        "A"
    );
    assert!(!host.path().join("back/src").exists());
    // Into an existing directory: under its own name.
    let out = cp(&at("src"), &h("back"));
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(host.path().join("back/src/sub/b.js").exists());
    // A file onto a file.
    let out = cp(&at("renamed.txt"), &h("src/a.js"));
    assert_eq!(out.code, 0, "{out:#?}");
    assert_eq!(
        std::fs::read_to_string(host.path().join("src/a.js")).expect("a.js"),
        "F"
    );
}

e2e_tests!(
    foreground_runs_end_as_their_command_did,
    signals_logs_attach_and_wait,
    the_kill_switch_and_silent_input,
    cp_follows_docker_cp,
);
