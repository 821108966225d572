//! The README's CLI walkthrough through the real `paddock` binary: `paddock
//! dev` as a child process, then client commands with `-o json`, each
//! scenario on SQLite and on PostgreSQL.

use std::time::Duration;

use paddock_e2e::{Backend, Dev, e2e_tests};
use serde_json::Value;

/// A revoked key must stop working within the cache TTL (5 s); a little
/// slack for a busy machine.
const REVOCATION_BOUND: Duration = Duration::from_secs(7);

/// Creates organization `org` with the bootstrap token; returns the owner's
/// key secret.
fn create_org(dev: &Dev, org: &str, owner: &str) -> String {
    let out = dev
        .paddock(
            Some(&dev.bootstrap_token()),
            &["org", "create", org, "--owner", owner],
        )
        .json();
    assert_eq!(
        out["organization"]["name"],
        format!("organizations/{org}"),
        "{out:#}"
    );
    assert_eq!(out["owner"]["email"], owner, "{out:#}");
    assert_eq!(out["owner"]["role"], "owner", "{out:#}");
    secret(&out)
}

#[track_caller]
fn secret(out: &Value) -> String {
    let secret = out["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("no secret in {out:#}"));
    assert!(secret.starts_with("pdk_"), "{out:#}");
    secret.to_owned()
}

/// Invites `email` as `role` and accepts the invite without a token; returns
/// the new member's key secret.
fn join(dev: &Dev, owner: &str, email: &str, role: &str) -> String {
    let invite = dev
        .paddock(Some(owner), &["member", "invite", email, "--role", role])
        .json();
    let code = invite["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no code in {invite:#}"));
    assert!(code.starts_with("pdi_"), "{invite:#}");
    let accepted = dev.paddock(None, &["member", "accept", code]).json();
    assert_eq!(accepted["member"]["email"], email, "{accepted:#}");
    assert_eq!(accepted["member"]["role"], role, "{accepted:#}");
    secret(&accepted)
}

fn org_create_and_whoami(backend: Backend) {
    let dev = Dev::start(backend);
    let owner = create_org(&dev, "acme", "alice@acme.test");

    let me = dev.paddock(Some(&owner), &["whoami"]).json();
    assert_eq!(me["kind"], "member", "{me:#}");
    assert_eq!(me["role"], "owner", "{me:#}");
    assert_eq!(me["organization"], "organizations/acme", "{me:#}");

    let org = dev.paddock(Some(&owner), &["org", "get"]).json();
    assert_eq!(org["name"], "organizations/acme", "{org:#}");

    // The bootstrap token creates organizations and nothing else inside them.
    let out = dev.paddock(Some(&dev.bootstrap_token()), &["project", "list"]);
    assert_ne!(out.code, 0, "bootstrap token listed projects: {out:#?}");
    // An owner's key is not the bootstrap token.
    let out = dev.paddock(
        Some(&owner),
        &["org", "create", "other", "--owner", "eve@other.test"],
    );
    assert_ne!(out.code, 0, "an owner created an organization: {out:#?}");
}

fn invite_and_accept(backend: Backend) {
    let dev = Dev::start(backend);
    let owner = create_org(&dev, "acme", "alice@acme.test");

    let invite = dev
        .paddock(
            Some(&owner),
            &["member", "invite", "bob@acme.test", "--role", "developer"],
        )
        .json();
    let code = invite["code"].as_str().expect("invite code");
    assert!(code.starts_with("pdi_"), "{invite:#}");
    let accepted = dev.paddock(None, &["member", "accept", code]).json();
    assert_eq!(accepted["member"]["role"], "developer", "{accepted:#}");
    let bob = secret(&accepted);

    // Single use.
    let again = dev.paddock(None, &["member", "accept", code]);
    assert_eq!(again.code, 1, "an invite code worked twice: {again:#?}");

    let me = dev.paddock(Some(&bob), &["whoami"]).json();
    assert_eq!(me["role"], "developer", "{me:#}");
    assert_eq!(me["organization"], "organizations/acme", "{me:#}");

    let members = dev.paddock(Some(&owner), &["member", "list"]).json();
    let emails: Vec<&str> = members["items"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["email"].as_str())
        .collect();
    assert!(
        emails.contains(&"alice@acme.test") && emails.contains(&"bob@acme.test"),
        "{members:#}"
    );
}

fn invite_list_and_revoke(backend: Backend) {
    let dev = Dev::start(backend);
    let owner = create_org(&dev, "acme", "alice@acme.test");
    let invite = dev
        .paddock(
            Some(&owner),
            &["member", "invite", "carol@acme.test", "--role", "admin"],
        )
        .json();
    let code = invite["code"].as_str().expect("invite code");
    let name = invite["name"].as_str().expect("invite name");
    let id = name.rsplit('/').next().expect("invite id");

    let listed = dev.paddock(Some(&owner), &["invite", "list"]);
    assert!(
        !listed.stdout.contains(&code[16..]),
        "invite list printed the code: {listed:#?}"
    );
    let listed = listed.json();
    let invites = listed["items"].as_array().expect("invites");
    assert_eq!(invites.len(), 1, "{listed:#}");
    assert_eq!(invites[0]["name"], name, "{listed:#}");
    assert_eq!(invites[0]["email"], "carol@acme.test", "{listed:#}");
    assert_eq!(invites[0]["state"], "pending", "{listed:#}");

    let revoked = dev.paddock(Some(&owner), &["invite", "revoke", id]).json();
    assert_eq!(revoked["state"], "revoked", "{revoked:#}");
    let refused = dev.paddock(None, &["member", "accept", code]);
    assert_eq!(
        refused.code, 1,
        "a revoked invite was accepted: {refused:#?}"
    );
    assert!(refused.stderr.contains("revoked"), "{refused:#?}");
    let listed = dev.paddock(Some(&owner), &["invite", "list"]).json();
    assert_eq!(
        listed,
        serde_json::json!({"items": [], "next_page_token": null}),
        "{listed:#}"
    );
}

fn project_lifecycle(backend: Backend) {
    let dev = Dev::start(backend);
    let owner = create_org(&dev, "acme", "alice@acme.test");
    let token = Some(owner.as_str());
    let full = "organizations/acme/projects/web";

    let created = dev
        .paddock(
            token,
            &["project", "create", "web", "--display-name", "Web"],
        )
        .json();
    assert_eq!(created["name"], full, "{created:#}");
    assert_eq!(created["display_name"], "Web", "{created:#}");

    let list = dev.paddock(token, &["project", "list"]).json();
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("projects")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, [full], "{list:#}");

    let by_short = dev.paddock(token, &["project", "get", "web"]).json();
    let by_full = dev.paddock(token, &["project", "get", full]).json();
    assert_eq!(by_short["name"], full, "{by_short:#}");
    assert_eq!(by_short, by_full);

    let updated = dev
        .paddock(
            token,
            &[
                "project",
                "update",
                "web",
                "--description",
                "the storefront",
            ],
        )
        .json();
    assert_eq!(updated["description"], "the storefront", "{updated:#}");
    assert_eq!(
        updated["display_name"], "Web",
        "update touched a field outside the mask: {updated:#}"
    );
    let got = dev.paddock(token, &["project", "get", "web"]).json();
    assert_eq!(got["description"], "the storefront", "{got:#}");

    let deleted = dev.paddock(token, &["project", "delete", full]).json();
    assert_eq!(deleted["deleted"], full, "{deleted:#}");
    dev.paddock(token, &["project", "get", "web"])
        .failure("NOT_FOUND");
    let list = dev.paddock(token, &["project", "list"]).json();
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{list:#}");
}

fn scoped_keys_and_roles(backend: Backend) {
    let dev = Dev::start(backend);
    let owner = create_org(&dev, "acme", "alice@acme.test");
    dev.paddock(Some(&owner), &["project", "create", "web"])
        .json();

    // A ci-cd key of an owner may read projects but not create them.
    let key = dev
        .paddock(Some(&owner), &["key", "create", "ci", "--scope", "ci-cd"])
        .json();
    let ci = secret(&key);
    let denied = dev.paddock(Some(&ci), &["can", "projects.create"]);
    assert_eq!(denied.code, 1, "{denied:#?}");
    let verdict: Value =
        serde_json::from_str(&denied.stdout).unwrap_or_else(|e| panic!("{e}: {denied:#?}"));
    assert_eq!(verdict["allowed"], false, "{verdict:#}");
    let allowed = dev.paddock(Some(&ci), &["can", "projects.read"]).json();
    assert_eq!(allowed["allowed"], true, "{allowed:#}");
    dev.paddock(Some(&ci), &["project", "create", "api"])
        .failure("PERMISSION_DENIED");

    // A developer may create projects but not delete them.
    let bob = join(&dev, &owner, "bob@acme.test", "developer");
    dev.paddock(Some(&bob), &["project", "create", "docs"])
        .json();
    let refused = dev.paddock(Some(&bob), &["project", "delete", "web"]);
    let message = refused.failure("PERMISSION_DENIED");
    assert!(
        message.contains("projects.delete"),
        "the missing permission is not named: {refused:#?}"
    );
    dev.paddock(Some(&owner), &["project", "get", "web"]).json();
    dev.paddock(Some(&bob), &["can", "projects.delete"])
        .failure_silent();
    // 0 allowed, 1 denied, 2 could not tell: an unknown permission is not
    // a denial.
    let unknown = dev.paddock(Some(&bob), &["can", "projects.frobnicate"]);
    assert!(
        unknown
            .undecided("INVALID_ARGUMENT")
            .contains("projects.frobnicate"),
        "{unknown:#?}"
    );
}

fn revoked_and_bad_tokens(backend: Backend) {
    let dev = Dev::start(backend);
    let owner = create_org(&dev, "acme", "alice@acme.test");
    let ci = secret(
        &dev.paddock(Some(&owner), &["key", "create", "ci", "--scope", "ci-cd"])
            .json(),
    );
    dev.paddock(Some(&ci), &["whoami"]).json();
    dev.paddock(Some(&ci), &["can", "projects.read"]).json();

    let revoked = dev.paddock(Some(&owner), &["key", "revoke", "ci"]).json();
    assert_eq!(revoked["state"], "revoked", "{revoked:#}");
    for args in [
        &["whoami"][..],
        &["can", "projects.read"],
        &["project", "list"],
    ] {
        let out = dev.paddock_until(Some(&ci), args, REVOCATION_BOUND, |o| {
            o.stderr.starts_with("UNAUTHENTICATED: ")
        });
        // `paddock can` exits 2 when it cannot tell (1 is its "denied").
        if args[0] == "can" {
            out.undecided("UNAUTHENTICATED");
        } else {
            out.failure("UNAUTHENTICATED");
        }
    }
    // The owner's own key is untouched.
    dev.paddock(Some(&owner), &["whoami"]).json();

    // The owner's key with its last character changed (never to itself).
    let last = if owner.ends_with('x') { 'y' } else { 'x' };
    let forged = format!("{}{last}", &owner[..owner.len() - 1]);
    for garbage in ["garbage", "pdk_garbage", forged.as_str(), "pdk_ünïcödé"] {
        dev.paddock(Some(garbage), &["whoami"])
            .failure("UNAUTHENTICATED");
        dev.paddock(Some(garbage), &["can", "projects.read"])
            .undecided("UNAUTHENTICATED");
    }
}

fn other_organizations_are_not_found(backend: Backend) {
    let dev = Dev::start(backend);
    let acme = create_org(&dev, "acme", "alice@acme.test");
    let globex = create_org(&dev, "globex", "hank@globex.test");
    dev.paddock(Some(&globex), &["project", "create", "secret"])
        .json();

    let theirs = "organizations/globex/projects/secret";
    let missing = "organizations/acme/projects/nope";
    dev.paddock(Some(&acme), &["project", "get", theirs])
        .failure("NOT_FOUND");
    dev.paddock(Some(&acme), &["project", "get", missing])
        .failure("NOT_FOUND");
    dev.paddock(Some(&acme), &["project", "delete", theirs])
        .failure("NOT_FOUND");
    dev.paddock(
        Some(&acme),
        &["project", "update", theirs, "--description", "mine"],
    )
    .failure("NOT_FOUND");
    // Still there, unchanged, for its owner.
    let project = dev
        .paddock(Some(&globex), &["project", "get", "secret"])
        .json();
    assert_eq!(project["description"], "", "{project:#}");
    // And invisible in the other organization's list.
    let list = dev.paddock(Some(&acme), &["project", "list"]).json();
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{list:#}");
}

fn restart_keeps_state(backend: Backend) {
    let mut dev = Dev::start(backend);
    let bootstrap = dev.bootstrap_token();
    let owner = create_org(&dev, "acme", "alice@acme.test");
    dev.paddock(Some(&owner), &["project", "create", "web"])
        .json();

    let status = dev.stop();
    assert!(
        status.success(),
        "paddock dev did not exit cleanly on SIGTERM: {status}\n{}",
        dev.log()
    );
    dev.restart();

    assert_eq!(
        dev.bootstrap_token(),
        bootstrap,
        "the bootstrap token changed across a restart"
    );
    let me = dev.paddock(Some(&owner), &["whoami"]).json();
    assert_eq!(me["organization"], "organizations/acme", "{me:#}");
    let project = dev.paddock(Some(&owner), &["project", "get", "web"]).json();
    assert_eq!(
        project["name"], "organizations/acme/projects/web",
        "{project:#}"
    );
    dev.paddock(
        Some(&bootstrap),
        &["org", "create", "acme", "--owner", "x@acme.test"],
    )
    .failure("ALREADY_EXISTS");
}

fn credential_commands(backend: Backend) {
    let dev = Dev::start(backend);
    let owner = create_org(&dev, "acme", "alice@acme.test");
    let bob = join(&dev, &owner, "bob@acme.test", "developer");
    // `paddock dev` made a private credential key on first start.
    {
        use std::os::unix::fs::PermissionsExt;
        let key = std::fs::metadata(dev.data_dir().join("credential-key")).expect("key file");
        assert_eq!(key.permissions().mode() & 0o777, 0o600);
    }
    let value = "-----BEGIN OPENSSH PRIVATE KEY----- cli-e2e-canary";
    let file = dev.data_dir().join("deploy-key.txt");
    std::fs::write(&file, value).expect("write value file");
    let file = file.to_string_lossy().into_owned();

    let out = dev.paddock(
        Some(&owner),
        &[
            "credential",
            "create",
            "deploy-key",
            "--file",
            &file,
            "--kind",
            "ssh-key",
            "--description",
            "CI deploy key",
        ],
    );
    assert!(!out.stdout.contains("cli-e2e-canary"), "{out:#?}");
    let created = out.json();
    assert_eq!(
        created["name"], "organizations/acme/credentials/deploy-key",
        "{created:#}"
    );
    assert_eq!(created["kind"], "ssh-key", "{created:#}");
    assert_eq!(created["size_bytes"], value.len(), "{created:#}");
    let again = dev.paddock(
        Some(&owner),
        &["credential", "create", "deploy-key", "--file", &file],
    );
    assert!(!again.failure("ALREADY_EXISTS").contains("cli-e2e-canary"));
    // A developer may use credentials, not manage them.
    dev.paddock(
        Some(&bob),
        &["credential", "create", "mine", "--file", &file],
    )
    .failure("PERMISSION_DENIED");
    let listed = dev.paddock(Some(&bob), &["credential", "list"]);
    assert!(!listed.stdout.contains("cli-e2e-canary"), "{listed:#?}");
    let listed = listed.json();
    assert_eq!(
        listed["items"][0]["name"], "organizations/acme/credentials/deploy-key",
        "{listed:#}"
    );
    let got = dev
        .paddock(Some(&bob), &["credential", "get", "deploy-key"])
        .json();
    assert_eq!(got["description"], "CI deploy key", "{got:#}");
    dev.paddock(
        Some(&owner),
        &[
            "credential",
            "create",
            "empty",
            "--file",
            "/nonexistent/file",
        ],
    )
    .failure("INVALID_ARGUMENT");
    let deleted = dev
        .paddock(Some(&owner), &["credential", "delete", "deploy-key"])
        .json();
    assert_eq!(
        deleted["deleted"], "organizations/acme/credentials/deploy-key",
        "{deleted:#}"
    );
    dev.paddock(Some(&owner), &["credential", "get", "deploy-key"])
        .failure("NOT_FOUND");
}

/// Appends events to `org` as a service would (the service token of the
/// dev stack); returns their ids.
fn append_events(dev: &Dev, org: &str, actions: &[&str]) -> Vec<String> {
    use paddock_proto::audit::v1::audit_service_client::AuditServiceClient;
    use paddock_proto::audit::v1::{Actor, AppendEventsRequest, AuditEvent, Outcome};
    let token = std::fs::read_to_string(dev.data_dir().join("service-token"))
        .expect("service token")
        .trim()
        .to_owned();
    let events: Vec<AuditEvent> = actions
        .iter()
        .map(|action| AuditEvent {
            id: uuid::Uuid::now_v7().to_string(),
            organization: format!("organizations/{org}"),
            actor: Some(Actor {
                principal_id: "m1".into(),
                kind: "PRINCIPAL_KIND_MEMBER".into(),
                display_name: format!("alice@{org}.test"),
                key_id: "k1".into(),
            }),
            action: (*action).into(),
            resource: format!("organizations/{org}/projects/web"),
            outcome: Outcome::Success as i32,
            source_service: "identity".into(),
            details_json: "{}".into(),
            ..Default::default()
        })
        .collect();
    let ids = events.iter().map(|e| e.id.clone()).collect();
    let endpoint = dev.audit_endpoint.clone();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async move {
            let channel = paddock_shared::auth::lazy_channel(&endpoint).expect("channel");
            AuditServiceClient::with_interceptor(channel, paddock_testkit::bearer(&token))
                .append_events(AppendEventsRequest { events })
                .await
                .expect("append events");
        });
    ids
}

/// Identity commits its events to its outbox with each change; a crash
/// before they reach audit loses none of them: they arrive, once each,
/// after the restart.
fn crash_before_delivery_loses_no_events(backend: Backend) {
    // Audit is not running, so nothing can be delivered before the crash.
    let unused = paddock_e2e::stable_port();
    let mut dev = Dev::start_with(
        backend,
        &[
            "--skip".into(),
            "audit".into(),
            "--audit-endpoint".into(),
            format!("http://{unused}"),
        ],
    );
    let owner = create_org(&dev, "acme", "alice@acme.test");
    for i in 0..5 {
        dev.paddock(Some(&owner), &["project", "create", &format!("p{i}")])
            .json();
    }
    dev.crash();
    dev.restart();
    let out = dev.paddock_until(
        Some(&owner),
        &["audit", "query", "--action", "project.create"],
        Duration::from_secs(20),
        |o| o.code == 0 && o.json()["items"].as_array().is_some_and(|a| a.len() >= 5),
    );
    let events = out.json();
    let ids: std::collections::HashSet<&str> = events["items"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 5, "each event exactly once: {events:#}");
    let all = dev
        .paddock(
            Some(&owner),
            &["audit", "query", "--action", "organization.create"],
        )
        .json();
    assert_eq!(all["items"].as_array().map(Vec::len), Some(1), "{all:#}");
    let verify = dev.paddock(Some(&owner), &["audit", "verify"]);
    assert_eq!(verify.code, 0, "{verify:#?}");
}

/// With the audit service (its own process) killed, changes still succeed;
/// once it is back, every event arrives exactly once.
fn audit_outage_loses_no_events(backend: Backend) {
    let port = paddock_e2e::stable_port();
    let dev = Dev::start_with(
        backend,
        &[
            "--skip".into(),
            "audit".into(),
            "--audit-endpoint".into(),
            format!("http://{port}"),
        ],
    );
    let audit = dev.spawn_audit(port);
    let owner = create_org(&dev, "acme", "alice@acme.test");
    let count = |want: usize| {
        dev.paddock_until(
            Some(&owner),
            &["audit", "query", "--action", "project.create"],
            Duration::from_secs(20),
            |o| {
                o.code == 0
                    && o.json()["items"]
                        .as_array()
                        .is_some_and(|a| a.len() >= want)
            },
        )
    };
    dev.paddock(Some(&owner), &["project", "create", "p0"])
        .json();
    assert_eq!(count(1).json()["items"].as_array().map(Vec::len), Some(1));

    drop(audit); // SIGKILL
    for i in 1..5 {
        dev.paddock(Some(&owner), &["project", "create", &format!("p{i}")])
            .json();
    }
    let down = dev.paddock(Some(&owner), &["audit", "query"]);
    assert_ne!(down.code, 0, "audit answered while killed: {down:#?}");

    let _audit = dev.spawn_audit(port);
    let events = count(5).json();
    let ids: std::collections::HashSet<&str> = events["items"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 5, "each event exactly once: {events:#}");
    let verify = dev.paddock(Some(&owner), &["audit", "verify"]);
    assert_eq!(verify.code, 0, "{verify:#?}");
}

fn audit_commands(backend: Backend) {
    let dev = Dev::start(backend);
    let owner = create_org(&dev, "acme", "alice@acme.test");
    let dev_key = join(&dev, &owner, "bob@acme.test", "developer");
    let ids = append_events(
        &dev,
        "acme",
        &["apikey.create", "member.invite", "apikey.revoke"],
    );

    // Identity records its own events in the same trail; the test's events
    // are the ones by actor m1.
    let all = dev
        .paddock(Some(&owner), &["audit", "query", "--actor", "m1"])
        .json();
    let got: Vec<&str> = all["items"]
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        got,
        vec![&ids[2], &ids[1], &ids[0]],
        "newest first: {all:#}"
    );
    assert_eq!(
        all["items"][0]["sequence"].as_i64(),
        all["items"][1]["sequence"].as_i64().map(|s| s + 1),
        "{all:#}"
    );
    assert_eq!(all["items"][0]["outcome"], "success", "{all:#}");
    assert_eq!(all["items"][0]["actor"]["kind"], "member", "{all:#}");
    assert!(all["items"][0]["details"].is_object(), "{all:#}");
    assert_eq!(all["next_page_token"], Value::Null, "{all:#}");

    let keys = dev
        .paddock(
            Some(&owner),
            &[
                "audit", "query", "--actor", "m1", "--action", "apikey.", "--limit", "1",
            ],
        )
        .json();
    assert_eq!(keys["items"].as_array().map(Vec::len), Some(1), "{keys:#}");
    assert_eq!(keys["items"][0]["id"], ids[2].as_str(), "{keys:#}");
    // Cut short by --limit: the token goes on where it stopped.
    let token = keys["next_page_token"].as_str().expect("next_page_token");
    let rest = dev
        .paddock(
            Some(&owner),
            &[
                "audit",
                "query",
                "--actor",
                "m1",
                "--action",
                "apikey.",
                "--page-token",
                token,
            ],
        )
        .json();
    assert_eq!(rest["items"][0]["id"], ids[0].as_str(), "{rest:#}");
    assert_eq!(rest["next_page_token"], Value::Null, "{rest:#}");
    let since = dev
        .paddock(
            Some(&owner),
            &[
                "audit",
                "query",
                "--actor",
                "m1",
                "--since",
                "1h",
                "--outcome",
                "denied",
            ],
        )
        .json();
    assert_eq!(
        since["items"].as_array().map(Vec::len),
        Some(0),
        "{since:#}"
    );

    let verified = dev.paddock(Some(&owner), &["audit", "verify"]).json();
    assert_eq!(verified["intact"], true, "{verified:#}");
    assert!(
        verified["verified"].as_i64().is_some_and(|n| n >= 3),
        "{verified:#}"
    );

    let export = dev.paddock(Some(&owner), &["audit", "export", "--actor", "m1"]);
    assert_eq!(export.code, 0, "{export:#?}");
    let lines: Vec<Value> = export
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON line"))
        .collect();
    assert_eq!(lines.len(), 3, "{export:#?}");
    assert_eq!(lines[0]["id"], ids[0].as_str());
    // An export keeps the exact details_json the hash covers, beside details.
    assert_eq!(lines[0]["details_json"], "{}", "{export:#?}");
    assert_eq!(lines[0]["details"], serde_json::json!({}), "{export:#?}");

    dev.paddock(Some(&dev_key), &["audit", "query"])
        .failure("PERMISSION_DENIED");

    // Retention settings: keep forever by default; the owner changes them,
    // and the change is an event of the trail; a developer may not.
    let got = dev
        .paddock(Some(&owner), &["audit", "settings", "get"])
        .json();
    assert_eq!(got["retention_days"], 0, "{got:#}");
    assert_eq!(got["name"], "organizations/acme/auditSettings", "{got:#}");
    let set = dev
        .paddock(
            Some(&owner),
            &["audit", "settings", "set", "--retention-days", "30"],
        )
        .json();
    assert_eq!(set["retention_days"], 30, "{set:#}");
    let got = dev
        .paddock(Some(&owner), &["audit", "settings", "get"])
        .json();
    assert_eq!(got["retention_days"], 30, "{got:#}");
    let changes = dev
        .paddock(
            Some(&owner),
            &["audit", "query", "--action", "auditsettings.update"],
        )
        .json();
    assert_eq!(
        changes["items"].as_array().map(Vec::len),
        Some(1),
        "{changes:#}"
    );
    dev.paddock(
        Some(&dev_key),
        &["audit", "settings", "set", "--retention-days", "1"],
    )
    .failure("PERMISSION_DENIED");

    // Tamper with the stored trail (SQLite: the file is right there):
    // verify exits 1 naming the broken link.
    if backend == Backend::Sqlite {
        let db = dev.data_dir().join("audit.db");
        let sql = format!(
            "UPDATE events SET action = 'project.read' WHERE id = '{}'",
            ids[1]
        );
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async move {
                use sqlx::Executor;
                sqlx::any::install_default_drivers();
                let pool = sqlx::AnyPool::connect(&format!("sqlite://{}", db.display()))
                    .await
                    .expect("open audit.db");
                pool.execute(sqlx::AssertSqlSafe(sql))
                    .await
                    .expect("tamper");
                pool.close().await;
            });
        let out = dev.paddock(Some(&owner), &["audit", "verify"]);
        assert_eq!(out.code, 1, "{out:#?}");
        let v: Value = serde_json::from_str(&out.stdout).expect("json");
        assert_eq!(v["intact"], false, "{v:#}");
        assert_eq!(v["broken_sequence"], all["items"][1]["sequence"], "{v:#}");
        assert_eq!(v["broken_event_id"], ids[1].as_str(), "{v:#}");
    }
    let bad = dev.paddock(Some(&owner), &["audit", "query", "--since", "yesterday"]);
    assert_eq!(bad.code, 2, "{bad:#?}");
}

/// `paddock audit tail` prints a new event as one JSON line, promptly.
fn audit_tail_follows(backend: Backend) {
    use std::io::BufRead;
    let dev = Dev::start(backend);
    let owner = create_org(&dev, "acme", "alice@acme.test");
    append_events(&dev, "acme", &["project.create"]);
    let mut child = dev
        .command(&["audit", "tail", "--action", "apikey."])
        .env("PADDOCK_AUDIT_ENDPOINT", &dev.audit_endpoint)
        .env("PADDOCK_TOKEN", &owner)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn paddock audit tail");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The tail starts at the head when it connects, which the test cannot
    // observe: append (a non-matching and a matching event) until a line
    // arrives.
    let mut appended = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let line = loop {
        appended.extend(append_events(
            &dev,
            "acme",
            &["member.invite", "apikey.create"],
        ));
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
            break line;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no event tailed within 10 s"
        );
    };
    let _ = child.kill();
    let _ = child.wait();
    let event: Value = serde_json::from_str(&line).expect("JSON line");
    let id = event["id"].as_str().expect("id");
    assert!(appended.iter().any(|a| a == id), "{event:#}");
    assert_eq!(event["action"], "apikey.create", "{event:#}");
    assert!(event["cursor"].is_string(), "{event:#}");
}

/// A token that names no organization is refused and recorded in the
/// platform chain, which `paddock audit --platform` reads with the
/// bootstrap token.
fn platform_chain_commands(backend: Backend) {
    let dev = Dev::start(backend);
    let out = dev.paddock(Some("pdk_not-a-real-key-at-all"), &["whoami"]);
    out.failure("UNAUTHENTICATED");
    let bootstrap = dev.bootstrap_token();
    let events = dev.paddock_until(
        Some(&bootstrap),
        &["audit", "query", "--platform"],
        std::time::Duration::from_secs(15),
        |o| o.code == 0 && o.stdout.contains("auth.fail"),
    );
    let events = events.json();
    let first = &events["items"].as_array().expect("array")[0];
    assert_eq!(first["action"], "auth.fail", "{events:#}");
    assert_eq!(first["organization"], "platform", "{events:#}");
    assert!(!events.to_string().contains("not-a-real-key"), "{events:#}");
    let verified = dev.paddock(Some(&bootstrap), &["audit", "verify", "--platform"]);
    assert_eq!(verified.code, 0, "{verified:#?}");
    let owner = create_org(&dev, "acme", "alice@acme.test");
    dev.paddock(Some(&owner), &["audit", "query", "--platform"])
        .failure("PERMISSION_DENIED");
    // A live organization's chain is its members' alone; a deleted one's
    // is sealed, and the platform reads and verifies it.
    dev.paddock(
        Some(&bootstrap),
        &["audit", "query", "--platform", "--org", "acme"],
    )
    .failure("NOT_FOUND");
    let deleted = dev.paddock(Some(&owner), &["org", "delete", "--yes"]);
    assert_eq!(deleted.code, 0, "{deleted:#?}");
    let sealed = dev.paddock_until(
        Some(&bootstrap),
        &["audit", "query", "--platform", "--org", "acme"],
        std::time::Duration::from_secs(15),
        |o| o.code == 0 && o.stdout.contains("organization.delete"),
    );
    let sealed = sealed.json();
    assert!(
        sealed["items"]
            .as_array()
            .expect("array")
            .iter()
            .all(|e| e["organization"] == "organizations/acme"),
        "{sealed:#}"
    );
    let verified = dev.paddock(
        Some(&bootstrap),
        &["audit", "verify", "--platform", "--org", "acme"],
    );
    assert_eq!(verified.code, 0, "{verified:#?}");
}

e2e_tests!(
    platform_chain_commands,
    audit_commands,
    audit_outage_loses_no_events,
    crash_before_delivery_loses_no_events,
    audit_tail_follows,
    org_create_and_whoami,
    invite_and_accept,
    invite_list_and_revoke,
    project_lifecycle,
    scoped_keys_and_roles,
    revoked_and_bad_tokens,
    other_organizations_are_not_found,
    restart_keeps_state,
    credential_commands,
);
