//! Contexts and login through the real binary: `paddock dev` writes a
//! context, `paddock login` saves a key read from stdin, commands then need
//! no variables, and flags and variables still override the context. Each
//! test has its own config dir (XDG_CONFIG_HOME), never the user's.

use std::os::unix::fs::PermissionsExt;

use paddock_e2e::{Backend, Dev, e2e_tests, run};
use serde_json::Value;

/// The dev context `paddock dev` wrote, as `context list` shows it.
fn dev_context(dev: &Dev) -> Value {
    let list = run(dev.command(&["context", "list"]), None).json();
    let items = list["items"].as_array().expect("items").clone();
    assert_eq!(items.len(), 1, "{list:#}");
    items[0].clone()
}

fn login_and_contexts(backend: Backend) {
    let dev = Dev::start(backend);
    // `paddock dev` printed export lines, wrote context dev (current, 0600)
    // and logs no colour codes into a file.
    let log = dev.log();
    assert!(
        log.contains(&format!(
            "export PADDOCK_IDENTITY_ENDPOINT={}",
            dev.identity_endpoint
        )),
        "{log}"
    );
    assert!(!log.contains('\u{1b}'), "ANSI escapes in a log file: {log}");
    let file = dev.config_home().join("paddock").join("config.toml");
    let mode = std::fs::metadata(&file)
        .expect("config file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{file:?}");
    let ctx = dev_context(&dev);
    assert_eq!(ctx["name"], "dev", "{ctx:#}");
    assert_eq!(ctx["current"], true, "{ctx:#}");
    assert_eq!(ctx["identity_endpoint"], dev.identity_endpoint.as_str());
    assert_eq!(ctx["sandbox_endpoint"], dev.sandbox_endpoint.as_str());
    assert_eq!(ctx["token"], false, "{ctx:#}");

    // With only the context: the bootstrap token file it names creates an
    // organization, from any directory.
    let created = run(
        dev.command(&["org", "create", "acme", "--owner", "alice@acme.test"]),
        None,
    )
    .json();
    let owner = created["secret"].as_str().expect("secret").to_owned();
    // Not logged in yet: no token anywhere.
    run(dev.command(&["whoami"]), None).failure("UNAUTHENTICATED");

    // Never from argv.
    let refused = run(dev.command(&["login", "--token", &owner]), Some(&owner));
    assert_eq!(refused.code, 2, "{refused:#?}");
    // A bad key is refused and saves nothing.
    run(dev.command(&["login"]), Some("pdk_not-a-key\n")).failure("UNAUTHENTICATED");
    assert_eq!(dev_context(&dev)["token"], false);
    let login = run(dev.command(&["login"]), Some(&format!("{owner}\n"))).json();
    assert_eq!(login["context"], "dev", "{login:#}");
    assert_eq!(login["principal"]["role"], "owner", "{login:#}");
    let text = std::fs::read_to_string(&file).expect("config");
    assert!(text.contains(&owner), "the key is saved in the file");
    let listed = run(dev.command(&["context", "list"]), None);
    assert!(
        !listed.stdout.contains(&owner),
        "context list printed a key: {listed:#?}"
    );
    let me = run(dev.command(&["whoami"]), None).json();
    assert_eq!(me["organization"], "organizations/acme", "{me:#}");

    // Flags beat variables beat the context.
    let mut env_wins = dev.command(&["whoami"]);
    env_wins.env("PADDOCK_IDENTITY_ENDPOINT", "http://127.0.0.1:1");
    let message = run(env_wins, None).failure("UNAVAILABLE");
    assert!(message.contains("127.0.0.1:1"), "{message}");
    let mut flag_wins = dev.command(&["whoami", "--identity-endpoint", &dev.identity_endpoint]);
    flag_wins.env("PADDOCK_IDENTITY_ENDPOINT", "http://127.0.0.1:1");
    run(flag_wins, None).json();
    let mut bad_token = dev.command(&["whoami"]);
    bad_token.env("PADDOCK_TOKEN", "pdk_not-a-key");
    run(bad_token, None).failure("UNAUTHENTICATED");
    // --endpoint: every service on one host, identity on the port given.
    let message = run(
        dev.command(&["whoami", "--endpoint", "http://127.0.0.1:1"]),
        None,
    )
    .failure("UNAVAILABLE");
    assert!(message.contains("http://127.0.0.1:1"), "{message}");
    let port = dev
        .identity_endpoint
        .rsplit(':')
        .next()
        .expect("port")
        .to_owned();
    let all_in_one = format!("http://127.0.0.1:{port}");
    run(dev.command(&["whoami", "--endpoint", &all_in_one]), None).json();

    // A second context; use, current, delete.
    let login = run(
        dev.command(&[
            "login",
            "staging",
            "--identity-endpoint",
            &dev.identity_endpoint,
        ]),
        Some(&owner),
    )
    .json();
    assert_eq!(login["context"], "staging", "{login:#}");
    let current = run(dev.command(&["context", "current"]), None).json();
    assert_eq!(current["name"], "staging");
    run(dev.command(&["context", "use", "dev"]), None).json();
    let current = run(dev.command(&["context", "current"]), None).json();
    assert_eq!(current["name"], "dev");
    let mut chosen = dev.command(&["context", "current"]);
    chosen.env("PADDOCK_CONTEXT", "staging");
    run(chosen, None).json();
    run(dev.command(&["whoami", "--context", "nope"]), None).failure("NOT_FOUND");
    run(dev.command(&["context", "use", "nope"]), None).failure("NOT_FOUND");
    run(dev.command(&["context", "delete", "staging"]), None).json();
    run(dev.command(&["context", "delete", "staging"]), None).failure("NOT_FOUND");
    run(dev.command(&["context", "delete", "dev"]), None).json();
    run(dev.command(&["context", "current"]), None).failure("NOT_FOUND");
    let text = std::fs::read_to_string(&file).expect("config");
    assert!(
        !text.contains(&owner),
        "a deleted context's key stays in the file"
    );
}

e2e_tests!(login_and_contexts);
