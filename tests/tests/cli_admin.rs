//! The commands a platform team runs day to day, through the real binary:
//! org list/update, agent update, key and credential rotation, role and
//! permission lists, `can --as` and `can --list`; and how the CLI talks:
//! one JSON shape, errors as JSON objects, flags named as typed, help and
//! completion.

use std::io::Write;

use paddock_e2e::{Backend, Dev, e2e_tests, run};
use serde_json::{Value, json};

fn create_org(dev: &Dev, org: &str, owner: &str) -> String {
    let out = dev
        .paddock(
            Some(&dev.bootstrap_token()),
            &["org", "create", org, "--owner", owner],
        )
        .json();
    out["secret"].as_str().expect("secret").to_owned()
}

fn join(dev: &Dev, owner: &str, email: &str, role: &str) -> String {
    dev.join(owner, email, role)["secret"]
        .as_str()
        .expect("secret")
        .to_owned()
}

fn organizations_agents_and_keys(backend: Backend) {
    let dev = Dev::start(backend);
    let owner = create_org(&dev, "acme", "alice@acme.test");
    create_org(&dev, "globex", "gina@globex.test");
    let admin = join(&dev, &owner, "adam@acme.test", "admin");

    // The platform lists organizations; nobody else does.
    let orgs = dev
        .paddock(Some(&dev.bootstrap_token()), &["org", "list"])
        .json();
    let names: Vec<&str> = orgs["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|o| o["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["organizations/acme", "organizations/globex"],
        "{orgs:#}"
    );
    assert_eq!(orgs["next_page_token"], Value::Null, "{orgs:#}");
    dev.paddock(Some(&owner), &["org", "list", "--token", &owner])
        .failure("PERMISSION_DENIED");

    // org update: only the named fields; the key limit applies at once and
    // the refusal names the flag typed, in days.
    let org = dev
        .paddock(
            Some(&owner),
            &[
                "org",
                "update",
                "--max-key-lifetime",
                "30d",
                "--display-name",
                "Acme",
            ],
        )
        .json();
    assert_eq!(
        org["settings"]["max_key_lifetime_seconds"],
        30 * 86_400,
        "{org:#}"
    );
    assert_eq!(org["display_name"], "Acme", "{org:#}");
    assert_eq!(org["settings"]["allow_non_expiring_keys"], false, "{org:#}");
    let message = dev
        .paddock(Some(&owner), &["key", "create", "ci", "--expires", "60d"])
        .failure("INVALID_ARGUMENT");
    assert!(
        message.contains("--expires 60d") && message.contains("30d") && !message.contains("ttl"),
        "{message}"
    );
    dev.paddock(Some(&admin), &["org", "update", "--display-name", "x"])
        .failure("PERMISSION_DENIED");
    let out = dev.paddock(Some(&owner), &["org", "update"]);
    assert_eq!(out.code, 2, "{out:#?}");

    // agent update.
    dev.paddock(Some(&owner), &["agent", "create", "bot"])
        .json();
    let agent = dev
        .paddock(
            Some(&admin),
            &[
                "agent",
                "update",
                "bot",
                "--description",
                "reviews",
                "--role",
                "developer",
            ],
        )
        .json();
    assert_eq!(
        (agent["description"].as_str(), agent["role"].as_str()),
        (Some("reviews"), Some("developer"))
    );
    let message = dev
        .paddock(Some(&admin), &["agent", "update", "bot", "--role", "owner"])
        .failure("PERMISSION_DENIED");
    assert!(message.contains("you may grant"), "{message}");
    dev.paddock(
        Some(&owner),
        &[
            "agent",
            "update",
            "organizations/globex/agents/bot",
            "--description",
            "x",
        ],
    )
    .failure("NOT_FOUND");

    // key rotate: the same name and scope; the old secret stops working.
    let ci = dev
        .paddock(Some(&owner), &["key", "create", "ci", "--scope", "ci-cd"])
        .json();
    let old_secret = ci["secret"].as_str().expect("secret").to_owned();
    let rotated = dev.paddock(Some(&owner), &["key", "rotate", "ci"]).json();
    let new_secret = rotated["secret"].as_str().expect("secret").to_owned();
    assert_eq!(rotated["api_key"]["display_name"], "ci", "{rotated:#}");
    assert_eq!(rotated["api_key"]["scope"], json!(["ci-cd"]), "{rotated:#}");
    assert_eq!(
        rotated["replaced"]["name"], ci["api_key"]["name"],
        "{rotated:#}"
    );
    assert_eq!(rotated["replaced"]["state"], "revoked", "{rotated:#}");
    dev.paddock(Some(&new_secret), &["whoami"]).json();
    let gone = dev.paddock_until(
        Some(&old_secret),
        &["whoami"],
        std::time::Duration::from_secs(8),
        |o| o.code != 0,
    );
    gone.failure("UNAUTHENTICATED");
    let graced = dev
        .paddock(Some(&owner), &["key", "rotate", "ci", "--grace", "1h"])
        .json();
    assert_eq!(graced["replaced"]["state"], "active", "{graced:#}");
    dev.paddock(Some(&new_secret), &["whoami"]).json();
    let successor = graced["api_key"]["name"].as_str().expect("name");
    let message = dev
        .paddock(
            Some(&owner),
            &["key", "rotate", successor, "--grace", "30d"],
        )
        .failure("INVALID_ARGUMENT");
    assert!(message.contains("--grace"), "{message}");

    // ALREADY_EXISTS names what exists; the role hint lists what fits.
    dev.paddock(Some(&owner), &["project", "create", "web"])
        .json();
    let message = dev
        .paddock(Some(&owner), &["project", "create", "web"])
        .failure("ALREADY_EXISTS");
    assert_eq!(message, "organizations/acme/projects/web already exists");
    let message = dev
        .paddock(
            Some(&owner),
            &["member", "invite", "x@acme.test", "--role", "agent"],
        )
        .failure("INVALID_ARGUMENT");
    assert!(
        message.contains("use owner, admin or developer"),
        "{message}"
    );
}

fn credentials_rotate(backend: Backend) {
    let dev = Dev::start(backend);
    let owner = create_org(&dev, "acme", "alice@acme.test");
    let dir = dev.config_home();
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("token");
    std::fs::write(&file, vec![b'a'; 3 << 10]).expect("write");
    let created = dev
        .paddock(
            Some(&owner),
            &[
                "credential",
                "create",
                "gh",
                "--file",
                file.to_str().expect("utf8"),
            ],
        )
        .json();
    assert_eq!(created["rotate_time"], Value::Null, "{created:#}");
    let mut cmd = dev.command(&["credential", "rotate", "gh", "--file", "-"]);
    cmd.env("PADDOCK_IDENTITY_ENDPOINT", &dev.identity_endpoint)
        .env("PADDOCK_TOKEN", &owner);
    let secret = "ghp_rotated-value-never-printed";
    let out = run(cmd, Some(secret));
    assert!(!out.stdout.contains(secret) && !out.stderr.contains(secret));
    let rotated = out.json();
    assert_eq!(rotated["size_bytes"], secret.len(), "{rotated:#}");
    assert!(rotated["rotate_time"].is_string(), "{rotated:#}");
    // Tables show sizes for people.
    let table = run(
        {
            let mut c = dev.table_command(&["credential", "list"]);
            c.env("PADDOCK_IDENTITY_ENDPOINT", &dev.identity_endpoint)
                .env("PADDOCK_TOKEN", &owner);
            c
        },
        None,
    );
    assert_eq!(table.code, 0, "{table:#?}");
    assert!(table.stdout.contains("31 bytes"), "{table:#?}");
    dev.paddock(
        Some(&owner),
        &[
            "credential",
            "rotate",
            "nope",
            "--file",
            file.to_str().expect("utf8"),
        ],
    )
    .failure("NOT_FOUND");
    let events = dev
        .paddock_until(
            Some(&owner),
            &["audit", "query", "--action", "credential.rotate"],
            std::time::Duration::from_secs(15),
            |o| o.code == 0 && o.stdout.contains("credential.rotate"),
        )
        .json();
    assert_eq!(
        events["items"][0]["details"]["size_bytes"],
        secret.len(),
        "{events:#}"
    );
    assert!(!events.to_string().contains(secret));
}

fn who_may_do_what(backend: Backend) {
    let dev = Dev::start(backend);
    let owner = create_org(&dev, "acme", "alice@acme.test");
    let globex = create_org(&dev, "globex", "gina@globex.test");
    let admin = join(&dev, &owner, "adam@acme.test", "admin");
    join(&dev, &owner, "dora@acme.test", "developer");
    dev.paddock(Some(&owner), &["agent", "create", "bot"])
        .json();
    let bot = dev
        .paddock(
            Some(&owner),
            &["key", "create", "bot-key", "--agent", "bot"],
        )
        .json()["secret"]
        .as_str()
        .expect("secret")
        .to_owned();

    let roles = dev.paddock(Some(&admin), &["role", "list"]).json();
    let names: Vec<&str> = roles["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["owner", "admin", "developer", "agent"], "{roles:#}");
    let perms = dev.paddock(Some(&admin), &["permission", "list"]).json();
    let delete = perms["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|p| p["name"] == "projects.delete")
        .expect("projects.delete");
    assert_eq!(delete["roles"], json!(["owner", "admin"]), "{perms:#}");

    // --as: the other principal's current role decides.
    let as_dev = dev
        .paddock(
            Some(&admin),
            &["can", "projects.create", "--as", "dora@acme.test"],
        )
        .json();
    assert_eq!(as_dev["allowed"], true, "{as_dev:#}");
    dev.paddock(
        Some(&admin),
        &["can", "projects.delete", "--as", "dora@acme.test"],
    )
    .failure_silent();
    dev.paddock(
        Some(&admin),
        &["can", "agents.execute", "--as", "agents/bot"],
    )
    .json();
    // A lesser principal may not ask; another organization's is not found.
    dev.paddock(
        Some(&bot),
        &["can", "projects.read", "--as", "dora@acme.test"],
    )
    .undecided("PERMISSION_DENIED");
    let theirs = dev.paddock(Some(&globex), &["whoami"]).json()["name"]
        .as_str()
        .expect("name")
        .to_owned();
    let elsewhere = dev
        .paddock(Some(&admin), &["can", "projects.read", "--as", &theirs])
        .undecided("NOT_FOUND");
    let missing = dev
        .paddock(
            Some(&admin),
            &[
                "can",
                "projects.read",
                "--as",
                "organizations/acme/members/mnobody",
            ],
        )
        .undecided("NOT_FOUND");
    assert_eq!(
        elsewhere.replace(&theirs, "X"),
        missing.replace("organizations/acme/members/mnobody", "X")
    );

    // --list, like kubectl auth can-i --list.
    let mine = dev.paddock(Some(&bot), &["can", "--list"]).json();
    let list: Vec<&str> = mine["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        list.contains(&"agents.execute") && !list.contains(&"projects.create"),
        "{mine:#}"
    );
    let theirs = dev
        .paddock(Some(&admin), &["can", "--list", "--as", "dora@acme.test"])
        .json();
    assert!(
        theirs["items"]
            .as_array()
            .expect("items")
            .contains(&json!("projects.create")),
        "{theirs:#}"
    );
    let out = dev.paddock(Some(&admin), &["can", "--list", "projects.read"]);
    assert_eq!(out.code, 2, "{out:#?}");
}

fn how_the_cli_talks(backend: Backend) {
    let dev = Dev::start(backend);
    // Usage errors are JSON with -o json, and keep clap's suggestion.
    let out = dev.paddock(None, &["projct", "list"]);
    assert_eq!(out.code, 2, "{out:#?}");
    let err: Value = serde_json::from_str(out.stderr.trim()).expect("JSON error");
    assert_eq!(err["code"], "INVALID_ARGUMENT");
    assert!(
        err["message"]
            .as_str()
            .unwrap_or_default()
            .contains("'project'"),
        "{err:#}"
    );
    // Without -o json: one CODE: message line.
    let out = run(dev.table_command(&["whoami"]), None);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.starts_with("UNAUTHENTICATED: "), "{out:#?}");
    // Help: global options under their own heading.
    let help = run(dev.table_command(&["project", "create", "--help"]), None);
    assert_eq!(help.code, 0, "{help:#?}");
    let (own, global) = help.stdout.split_once("Global options:").expect("heading");
    assert!(
        own.contains("--display-name") && !own.contains("--identity-endpoint"),
        "{}",
        help.stdout
    );
    assert!(
        global.contains("--identity-endpoint") && global.contains("--context"),
        "{}",
        help.stdout
    );
    // Completion scripts.
    for shell in ["bash", "zsh", "fish"] {
        let out = run(dev.table_command(&["completion", shell]), None);
        assert_eq!(out.code, 0, "{out:#?}");
        assert!(out.stdout.contains("rotate"), "{shell}");
    }
    let script = run(dev.table_command(&["completion", "bash"]), None).stdout;
    let path = dev.config_home().join("paddock.bash");
    std::fs::create_dir_all(dev.config_home()).expect("dir");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(script.as_bytes()))
        .expect("write script");
    let sourced = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p paddock", path.display()))
        .output()
        .expect("bash");
    assert!(sourced.status.success(), "{sourced:?}");
}

e2e_tests!(
    organizations_agents_and_keys,
    credentials_rotate,
    who_may_do_what,
    how_the_cli_talks,
);
