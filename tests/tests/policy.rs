//! `paddock policy` and `paddock security` through the real binary against
//! `paddock dev`, on SQLite and on PostgreSQL.

use paddock_e2e::{Backend, Dev, e2e_tests};

fn owner_key(dev: &Dev) -> String {
    let out = dev
        .paddock(
            Some(&dev.bootstrap_token()),
            &["org", "create", "acme", "--owner", "alice@acme.test"],
        )
        .json();
    out["secret"].as_str().expect("secret").to_owned()
}

fn policy_and_security_commands(backend: Backend) {
    let dev = Dev::start(backend);
    let owner = owner_key(&dev);
    dev.paddock(Some(&owner), &["agent", "create", "bot"])
        .json();

    let p = dev.paddock(Some(&owner), &["policy", "get", "bot"]).json();
    assert_eq!(p["name"], "organizations/acme/agents/bot/policy", "{p:#}");
    assert_eq!(p["network_mode"], "none", "{p:#}");

    let s = dev
        .paddock(
            Some(&owner),
            &[
                "security",
                "set",
                "--max-memory",
                "2g",
                "--max-network",
                "allowlist",
            ],
        )
        .json();
    assert_eq!(s["max"]["memory_bytes"], 2i64 << 30, "{s:#}");
    assert_eq!(s["max_network_mode"], "allowlist", "{s:#}");

    let out = dev.paddock(
        Some(&owner),
        &["policy", "set", "bot", "--max-memory", "8g"],
    );
    assert_eq!(
        out.failure("INVALID_ARGUMENT").trim(),
        "--max-memory 8 GiB exceeds the organization's bound 2 GiB (`paddock security set --max-memory`)"
    );
    let p = dev
        .paddock(
            Some(&owner),
            &[
                "policy",
                "set",
                "bot",
                "--max-memory",
                "1g",
                "--network",
                "allowlist",
                "--allow-domain",
                "*.github.com",
                "--allow-tool",
                "github/*",
                "--credential",
                "gh",
            ],
        )
        .json();
    assert_eq!(p["max"]["memory_bytes"], 1i64 << 30, "{p:#}");
    assert_eq!(p["network_rules"][0]["domain"], "*.github.com", "{p:#}");
    assert_eq!(p["tool_rules"][0]["pattern"], "github/*", "{p:#}");
    assert_eq!(
        p["credentials"][0], "organizations/acme/credentials/gh",
        "{p:#}"
    );
    assert!(p["update_time"].is_string(), "{p:#}");

    let out = dev.paddock(Some(&owner), &["policy", "set", "bot"]);
    assert_eq!(out.code, 2, "{out:#?}");
    let out = dev.paddock(
        Some(&owner),
        &["policy", "get", "organizations/globex/agents/bot"],
    );
    out.failure("NOT_FOUND");
}

e2e_tests!(policy_and_security_commands);
