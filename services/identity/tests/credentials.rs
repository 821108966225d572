//! Stored credentials and sandbox session tokens through real servers on
//! port 0, on SQLite and PostgreSQL: values sealed at rest and never
//! returned but by `RevealCredential` to services; ciphertexts bound to
//! their row and key; session tokens that act as their agent, expire, and
//! stop working the moment their sandbox's tokens are revoked.

mod common;

use std::time::{Duration, Instant};

use common::*;
use paddock_proto::authz::v1::ListPermissionsRequest;
use paddock_proto::identity::v1::*;
use paddock_shared::secret::Secret;
use paddock_testkit::{Backend, Stack, backend_tests};
use tonic::Code;

/// Polls `f` until it returns true or `within` passes.
async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A value no other text in the test contains.
fn secret_value(label: &str) -> Vec<u8> {
    format!(
        "-----BEGIN OPENSSH PRIVATE KEY----- {label} {} sealed-test-value",
        fresh_id("v")
    )
    .into_bytes()
}

async fn create(
    stack: &Stack,
    token: &str,
    parent: &str,
    id: &str,
    kind: CredentialKind,
    value: &[u8],
) -> Result<Credential, tonic::Status> {
    stack
        .identity(token)
        .create_credential(CreateCredentialRequest {
            parent: parent.into(),
            credential_id: id.into(),
            credential: Some(Credential {
                kind: kind as i32,
                description: format!("{id} for tests"),
                ..Default::default()
            }),
            value: value.to_vec(),
        })
        .await
        .map(|r| r.into_inner().credential.expect("credential"))
}

async fn reveal(
    stack: &Stack,
    token: &str,
    name: &str,
    sandbox: &str,
) -> Result<RevealCredentialResponse, tonic::Status> {
    stack
        .identity(token)
        .reveal_credential(RevealCredentialRequest {
            name: name.into(),
            sandbox: sandbox.into(),
        })
        .await
        .map(|r| r.into_inner())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn credential_crud_and_roles(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    let globex = setup_org(&stack, "globex").await;
    let service = stack.service_token.expose().clone();
    let value = secret_value("deploy");
    let text_value = String::from_utf8(value.clone()).expect("utf8");

    let created = create(
        &stack,
        &acme.owner,
        &acme.name,
        "deploy-key",
        CredentialKind::SshKey,
        &value,
    )
    .await
    .expect("owner creates");
    assert_eq!(created.name, "organizations/acme/credentials/deploy-key");
    assert_eq!(created.kind(), CredentialKind::SshKey);
    assert_eq!(created.size_bytes, value.len() as i64);
    assert_eq!(created.created_by, acme.owner_member);
    assert!(created.create_time.is_some());
    // Empty parent means the caller's organization; unspecified kind is a file.
    let admin_made = create(
        &stack,
        &acme.admin,
        "",
        "npmrc",
        CredentialKind::Unspecified,
        b"//registry.npmjs.org/:_authToken=abc",
    )
    .await
    .expect("admin creates");
    assert_eq!(admin_made.kind(), CredentialKind::File);

    // Duplicates, bad input, sizes; no message carries the value.
    let dup = create(
        &stack,
        &acme.owner,
        "",
        "deploy-key",
        CredentialKind::SshKey,
        &value,
    )
    .await
    .expect_err("duplicate");
    assert_eq!(dup.code(), Code::AlreadyExists, "{}", dup.message());
    assert!(dup.message().contains("deploy-key"), "{}", dup.message());
    assert!(!dup.message().contains(&text_value));
    let mut big = value.clone();
    big.resize(64 * 1024 + 1, b'x');
    let too_big = create(&stack, &acme.owner, "", "big", CredentialKind::File, &big)
        .await
        .expect_err("over 64 KiB");
    assert_eq!(too_big.code(), Code::InvalidArgument);
    assert!(!too_big.message().contains("BEGIN OPENSSH"));
    big.truncate(64 * 1024);
    let at_limit = create(&stack, &acme.owner, "", "big", CredentialKind::File, &big)
        .await
        .expect("exactly 64 KiB");
    assert_eq!(at_limit.size_bytes, 65_536);
    for (id, v) in [
        ("", &value),
        ("Bad_Id", &value),
        ("x", &value),
        ("a/b", &value),
        ("empty", &Vec::new()),
    ] {
        assert_eq!(
            code(create(&stack, &acme.owner, "", id, CredentialKind::File, v).await),
            Code::InvalidArgument,
            "{id:?}"
        );
    }
    let bad_kind = stack
        .identity(&acme.owner)
        .create_credential(CreateCredentialRequest {
            parent: String::new(),
            credential_id: "odd".into(),
            credential: Some(Credential {
                kind: 99,
                ..Default::default()
            }),
            value: b"v".to_vec(),
        })
        .await;
    assert_eq!(code(bad_kind), Code::InvalidArgument);

    // An agent uses only the credentials its policy lists.
    stack
        .policy(&acme.owner)
        .update_agent_policy(paddock_proto::authz::v1::UpdateAgentPolicyRequest {
            policy: Some(paddock_proto::authz::v1::AgentPolicy {
                name: "organizations/acme/agents/bot/policy".into(),
                credentials: vec!["deploy-key".into()],
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["credentials".into()],
            }),
        })
        .await
        .expect("policy");
    let unlisted = stack
        .identity(acme.token("agent"))
        .get_credential(GetCredentialRequest {
            name: "organizations/acme/credentials/npmrc".into(),
        })
        .await
        .expect_err("not in the agent's policy");
    assert_eq!(unlisted.code(), Code::PermissionDenied);
    assert!(
        unlisted.message().contains("agent policy"),
        "{}",
        unlisted.message()
    );

    // Roles: developer and agent may use (list, get), not manage.
    for role in ["developer", "agent"] {
        let denied = create(
            &stack,
            acme.token(role),
            "",
            &fresh_id("c"),
            CredentialKind::File,
            b"v",
        )
        .await
        .expect_err("cannot create");
        assert_eq!(denied.code(), Code::PermissionDenied, "{role}");
        assert!(
            denied.message().contains("credentials.manage"),
            "{}",
            denied.message()
        );
        let listed = stack
            .identity(acme.token(role))
            .list_credentials(ListCredentialsRequest::default())
            .await
            .expect("list")
            .into_inner();
        let names: Vec<&str> = listed.credentials.iter().map(|c| c.name.as_str()).collect();
        let expected: &[&str] = if role == "agent" {
            &["organizations/acme/credentials/deploy-key"]
        } else {
            &[
                "organizations/acme/credentials/big",
                "organizations/acme/credentials/deploy-key",
                "organizations/acme/credentials/npmrc",
            ]
        };
        assert_eq!(names, expected, "{role}");
        let got = stack
            .identity(acme.token(role))
            .get_credential(GetCredentialRequest {
                name: created.name.clone(),
            })
            .await
            .expect("get")
            .into_inner();
        assert_eq!(got.credential.as_ref(), Some(&created), "{role}");
        let shown = format!("{listed:?}{got:?}");
        assert!(!shown.contains(&text_value), "a value in a response");
        assert!(!shown.contains("BEGIN OPENSSH"), "a value in a response");
        assert_eq!(
            code(
                stack
                    .identity(acme.token(role))
                    .delete_credential(DeleteCredentialRequest {
                        name: created.name.clone(),
                    })
                    .await
            ),
            Code::PermissionDenied,
            "{role}"
        );
    }

    // Pages cover everything once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = stack
            .identity(&acme.developer)
            .list_credentials(ListCredentialsRequest {
                parent: acme.name.clone(),
                page_size: 1,
                page_token: token,
            })
            .await
            .expect("page")
            .into_inner();
        assert!(page.credentials.len() <= 1);
        seen.extend(page.credentials.into_iter().map(|c| c.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 3);

    // Another organization's credential does not exist for globex.
    let other = stack.identity(&globex.owner);
    assert_eq!(
        code(
            other
                .clone()
                .get_credential(GetCredentialRequest {
                    name: created.name.clone(),
                })
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            other
                .clone()
                .list_credentials(ListCredentialsRequest {
                    parent: acme.name.clone(),
                    ..Default::default()
                })
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            other
                .clone()
                .delete_credential(DeleteCredentialRequest {
                    name: created.name.clone(),
                })
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            create(
                &stack,
                &globex.owner,
                &acme.name,
                "x1",
                CredentialKind::File,
                b"v"
            )
            .await
        ),
        Code::NotFound
    );
    let theirs = other
        .clone()
        .list_credentials(ListCredentialsRequest::default())
        .await
        .expect("globex list")
        .into_inner();
    assert!(theirs.credentials.is_empty());
    // The same id in another organization is another credential.
    create(
        &stack,
        &globex.owner,
        "",
        "deploy-key",
        CredentialKind::SshKey,
        b"globex's own",
    )
    .await
    .expect("same id elsewhere");

    // Reveal: services only.
    let sandbox = "organizations/acme/sandboxes/sb1";
    for role in ["owner", "admin", "developer", "agent"] {
        let err = reveal(&stack, acme.token(role), &created.name, sandbox)
            .await
            .expect_err("members and agents cannot reveal");
        assert_eq!(err.code(), Code::PermissionDenied, "{role}");
    }
    let revealed = reveal(&stack, &service, &created.name, sandbox)
        .await
        .expect("service reveals");
    assert_eq!(revealed.value, value);
    assert_eq!(revealed.credential.as_ref(), Some(&created));
    let theirs = reveal(
        &stack,
        &service,
        "organizations/globex/credentials/deploy-key",
        "organizations/globex/sandboxes/sb9",
    )
    .await
    .expect("globex's");
    assert_eq!(theirs.value, b"globex's own");
    for (name, sb, want) in [
        (created.name.as_str(), "", Code::InvalidArgument),
        (
            created.name.as_str(),
            "organizations/globex/sandboxes/sb1",
            Code::InvalidArgument,
        ),
        (
            created.name.as_str(),
            "sandboxes/sb1",
            Code::InvalidArgument,
        ),
        ("deploy-key", sandbox, Code::InvalidArgument),
        (
            "organizations/acme/credentials/nope",
            sandbox,
            Code::NotFound,
        ),
    ] {
        assert_eq!(
            code(reveal(&stack, &service, name, sb).await),
            want,
            "{name} {sb}"
        );
    }

    // Delete.
    stack
        .identity(&acme.admin)
        .delete_credential(DeleteCredentialRequest {
            name: created.name.clone(),
        })
        .await
        .expect("admin deletes");
    assert_eq!(
        code(
            stack
                .identity(&acme.owner)
                .get_credential(GetCredentialRequest {
                    name: created.name.clone(),
                })
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(reveal(&stack, &service, &created.name, sandbox).await),
        Code::NotFound
    );
    assert_eq!(
        code(
            stack
                .identity(&acme.owner)
                .delete_credential(DeleteCredentialRequest {
                    name: created.name.clone(),
                })
                .await
        ),
        Code::NotFound
    );
    // Deleting an organization deletes its credentials.
    stack
        .identity(&globex.owner)
        .delete_organization(DeleteOrganizationRequest {
            name: globex.name.clone(),
        })
        .await
        .expect("delete globex");
    assert_eq!(
        code(
            reveal(
                &stack,
                &service,
                "organizations/globex/credentials/deploy-key",
                "organizations/globex/sandboxes/sb9",
            )
            .await
        ),
        Code::NotFound
    );
    stack.shutdown().await;
}

/// A connection to identity's own database and the prefix its tables need.
async fn identity_db(stack: &Stack) -> (sqlx::AnyPool, &'static str) {
    sqlx::any::install_default_drivers();
    match &stack.database_url {
        None => {
            let path = stack.dir.path().join("identity.db");
            let pool = sqlx::AnyPool::connect(&format!("sqlite://{}", path.display()))
                .await
                .expect("open identity.db");
            (pool, "")
        }
        Some(url) => (
            sqlx::AnyPool::connect(url).await.expect("connect"),
            "paddock_identity.",
        ),
    }
}

/// Every byte identity stored: the SQLite files, or every row as JSON.
async fn stored_bytes(stack: &Stack) -> Vec<u8> {
    let mut stored = Vec::new();
    match &stack.database_url {
        None => {
            for entry in std::fs::read_dir(stack.dir.path()).expect("data dir") {
                let path = entry.expect("entry").path();
                if path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("identity.db"))
                {
                    stored.extend(std::fs::read(&path).expect("db file"));
                }
            }
        }
        Some(url) => {
            let pool = sqlx::AnyPool::connect(url).await.expect("connect");
            let tables: Vec<(String,)> = sqlx::query_as(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'paddock_identity'",
            )
            .fetch_all(&pool)
            .await
            .expect("tables");
            assert!(tables.iter().any(|(t,)| t == "credentials"));
            for (table,) in tables {
                let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT row_to_json(t)::text FROM paddock_identity.{table} t"
                )))
                .fetch_all(&pool)
                .await
                .expect("dump");
                for (row,) in rows {
                    stored.extend(row.into_bytes());
                }
            }
            pool.close().await;
        }
    }
    stored
}

/// Starts identity again on the stack's database and data dir, on port 0,
/// with `key` (None: the key file in the data dir).
async fn identity_with_key(
    stack: &Stack,
    key: Option<&str>,
) -> paddock_shared::server::ServerHandle {
    let mut config = stack.identity_config.clone();
    config.common.listen = "127.0.0.1:0".parse().expect("addr");
    config.credential_key = key.map(|k| Secret::new(k.to_owned()));
    paddock_identity::start(&config, &stack.service_token)
        .await
        .expect("restart identity")
}

async fn values_are_sealed_at_rest(backend: Backend) {
    let mut stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    let service = stack.service_token.expose().clone();
    let sandbox = "organizations/acme/sandboxes/sb1";
    let first = secret_value("first");
    let second = secret_value("second");
    let a = create(
        &stack,
        &acme.owner,
        "",
        "first",
        CredentialKind::SshKey,
        &first,
    )
    .await
    .expect("first");
    let b = create(
        &stack,
        &acme.owner,
        "",
        "second",
        CredentialKind::ApiToken,
        &second,
    )
    .await
    .expect("second");

    // The plaintext is nowhere in the database, in any encoding we write.
    let stored = stored_bytes(&stack).await;
    assert!(stored.len() > 1000, "the database was read");
    for v in [&first, &second] {
        assert!(
            !contains(&stored, v),
            "a credential value is stored in plaintext"
        );
        assert!(!contains(&stored, &v[40..60]), "part of a value is stored");
        let hex = paddock_shared::hex::encode(v);
        assert!(
            !contains(&stored, hex.as_bytes()),
            "a value is stored as hex"
        );
    }

    // A ciphertext copied into another row does not open there.
    let (pool, prefix) = identity_db(&stack).await;
    let (fingerprint, sealed): (String, String) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT key_fingerprint, sealed_value FROM {prefix}credentials WHERE org_id = $1 AND credential_id = $2"
    )))
    .bind("acme")
    .bind("first")
    .fetch_one(&pool)
    .await
    .expect("row");
    assert_eq!(fingerprint.len(), 16);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {prefix}credentials SET sealed_value = $1, key_fingerprint = $2 WHERE org_id = $3 AND credential_id = $4"
    )))
    .bind(&sealed)
    .bind(&fingerprint)
    .bind("acme")
    .bind("second")
    .execute(&pool)
    .await
    .expect("copy the ciphertext");
    let moved = reveal(&stack, &service, &b.name, sandbox)
        .await
        .expect_err("a moved ciphertext must not open");
    assert_eq!(moved.code(), Code::Internal, "{}", moved.message());
    assert!(!moved.message().contains("BEGIN"), "{}", moved.message());
    // The original row still opens.
    assert_eq!(
        reveal(&stack, &service, &a.name, sandbox)
            .await
            .expect("original")
            .value,
        first
    );
    pool.close().await;

    // The generated key file is private to its owner.
    {
        use std::os::unix::fs::PermissionsExt;
        let key_file = stack.dir.path().join("credential-key");
        let mode = std::fs::metadata(&key_file)
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Identity under another key says so, and reveals nothing.
    stack.stop_identity().await;
    let other_key = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
    let wrong = identity_with_key(&stack, Some(other_key)).await;
    let client = |h: &paddock_shared::server::ServerHandle| {
        paddock_shared::auth::identity_client(&h.endpoint(), paddock_testkit::bearer(&service))
            .expect("client")
    };
    let err = client(&wrong)
        .reveal_credential(RevealCredentialRequest {
            name: a.name.clone(),
            sandbox: sandbox.into(),
        })
        .await
        .expect_err("wrong key");
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(
        err.message().contains("different credential key"),
        "{}",
        err.message()
    );
    assert!(!err.message().contains("BEGIN"), "{}", err.message());
    assert!(!err.message().contains(other_key));
    // A malformed key refuses to start rather than sealing with nonsense.
    let mut bad = stack.identity_config.clone();
    bad.common.listen = "127.0.0.1:0".parse().expect("addr");
    bad.credential_key = Some(Secret::new("not-a-key".into()));
    let refused = paddock_identity::start(&bad, &stack.service_token)
        .await
        .err()
        .expect("malformed key refused");
    assert!(
        refused.to_string().contains("PADDOCK_CREDENTIAL_KEY"),
        "{refused}"
    );
    assert!(!refused.to_string().contains("not-a-key"));
    wrong.shutdown().await;

    // Back on the key file: everything opens again.
    let right = identity_with_key(&stack, None).await;
    let got = client(&right)
        .reveal_credential(RevealCredentialRequest {
            name: a.name.clone(),
            sandbox: sandbox.into(),
        })
        .await
        .expect("the file key opens it")
        .into_inner();
    assert_eq!(got.value, first);
    right.shutdown().await;
    stack.shutdown().await;
}

fn duration(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

async fn session_token(
    stack: &Stack,
    token: &str,
    agent: &str,
    sandbox: &str,
    ttl: Option<prost_types::Duration>,
) -> Result<CreateSessionTokenResponse, tonic::Status> {
    stack
        .identity(token)
        .create_session_token(CreateSessionTokenRequest {
            agent: agent.into(),
            sandbox: sandbox.into(),
            ttl,
        })
        .await
        .map(|r| r.into_inner())
}

async fn revoke_sandbox(stack: &Stack, token: &str, sandbox: &str) -> Result<i32, tonic::Status> {
    stack
        .identity(token)
        .revoke_session_token(RevokeSessionTokenRequest {
            sandbox: sandbox.into(),
        })
        .await
        .map(|r| r.into_inner().revoked)
}

async fn session_tokens(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    setup_org(&stack, "globex").await;
    let service = stack.service_token.expose().clone();
    let agent = "organizations/acme/agents/bot";
    let sb1 = "organizations/acme/sandboxes/sb1";
    let sb2 = "organizations/acme/sandboxes/sb2";

    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let first = session_token(&stack, &service, agent, sb1, None)
        .await
        .expect("mint");
    let key = first.api_key.clone().expect("key");
    assert!(first.secret.starts_with("pdk_"));
    assert_eq!(key.owner, agent);
    assert_eq!(key.sandbox, sb1);
    assert_eq!(key.role, "agent");
    assert_eq!(key.scope, ["agent-execution"]);
    assert_eq!(key.display_name, "session sandbox/sb1");
    let expires = key.expire_time.as_ref().expect("always expires").seconds;
    assert!(
        (before + 3600 - 5..=before + 3600 + 60).contains(&expires),
        "default ttl is one hour: {expires} vs {before}"
    );

    // It authenticates as the agent, with the agent-execution scope.
    let me = stack
        .identity(&first.secret)
        .who_am_i(WhoAmIRequest {})
        .await
        .expect("whoami")
        .into_inner()
        .principal
        .expect("principal");
    assert_eq!(me.kind(), PrincipalKind::Agent);
    assert_eq!(me.name, agent);
    assert_eq!(me.organization, "organizations/acme");
    assert_eq!(me.scope, ["agent-execution"]);
    assert!(me.key_expire_time.is_some());
    let mut perms = stack
        .authz(&first.secret)
        .list_permissions(ListPermissionsRequest::default())
        .await
        .expect("permissions")
        .into_inner()
        .permissions;
    perms.sort();
    assert_eq!(
        perms,
        [
            "agents.execute",
            "projects.read",
            "sessions.manage_own",
            "tools.call"
        ]
    );
    // It can do what an executing agent does, and nothing else.
    assert_eq!(
        code(
            stack
                .identity(&first.secret)
                .get_project(GetProjectRequest {
                    name: "organizations/acme/projects/web".into(),
                })
                .await
        ),
        Code::Ok
    );
    assert_eq!(
        code(
            stack
                .identity(&first.secret)
                .list_credentials(ListCredentialsRequest::default())
                .await
        ),
        Code::PermissionDenied,
        "credentials.use is outside agent-execution"
    );

    // Only services mint and revoke; bad input is refused.
    for role in ["owner", "admin", "developer", "agent"] {
        assert_eq!(
            code(session_token(&stack, acme.token(role), agent, sb1, None).await),
            Code::PermissionDenied,
            "{role}"
        );
        assert_eq!(
            code(revoke_sandbox(&stack, acme.token(role), sb1).await),
            Code::PermissionDenied,
            "{role}"
        );
    }
    for (a, s, ttl, want) in [
        (
            "organizations/acme/agents/nobody",
            sb1,
            None,
            Code::NotFound,
        ),
        (
            "organizations/globex/agents/nobody",
            "organizations/globex/sandboxes/x1",
            None,
            Code::NotFound,
        ),
        (
            agent,
            "organizations/globex/sandboxes/sb1",
            None,
            Code::InvalidArgument,
        ),
        ("bot", sb1, None, Code::InvalidArgument),
        (agent, "", None, Code::InvalidArgument),
        (agent, sb1, duration(0), Code::InvalidArgument),
        (agent, sb1, duration(24 * 3600 + 1), Code::InvalidArgument),
        (agent, sb1, duration(-5), Code::InvalidArgument),
    ] {
        assert_eq!(
            code(session_token(&stack, &service, a, s, ttl).await),
            want,
            "{a} {s}"
        );
    }
    // A day is allowed; the agent of another organization is its own.
    let day = session_token(&stack, &service, agent, sb2, duration(24 * 3600))
        .await
        .expect("24 h");
    let theirs = session_token(
        &stack,
        &service,
        "organizations/globex/agents/bot",
        "organizations/globex/sandboxes/sb1",
        None,
    )
    .await
    .expect("globex's agent");
    assert_eq!(
        theirs.api_key.as_ref().map(|k| k.owner.as_str()),
        Some("organizations/globex/agents/bot")
    );

    // Listed with their sandbox; other keys have none.
    let keys = stack
        .identity(&acme.owner)
        .list_api_keys(ListApiKeysRequest::default())
        .await
        .expect("list")
        .into_inner()
        .api_keys;
    let listed = keys
        .iter()
        .find(|k| k.name == key.name)
        .expect("session key listed");
    assert_eq!(listed.sandbox, sb1);
    assert!(keys.iter().any(|k| k.sandbox.is_empty()));
    assert!(!keys.iter().any(|k| k.sandbox.contains("globex")));

    // Revoking the sandbox's tokens stops them at once, only them.
    let second = session_token(&stack, &service, agent, sb1, None)
        .await
        .expect("second for sb1");
    assert_eq!(
        code(
            stack
                .identity(&second.secret)
                .who_am_i(WhoAmIRequest {})
                .await
        ),
        Code::Ok,
        "warm the cache"
    );
    assert_eq!(
        revoke_sandbox(&stack, &service, sb1).await.expect("revoke"),
        2
    );
    for secret in [&first.secret, &second.secret] {
        let err = stack
            .identity(secret)
            .who_am_i(WhoAmIRequest {})
            .await
            .expect_err("revoked");
        assert_eq!(err.code(), Code::Unauthenticated);
        assert!(err.message().contains("revoked"), "{}", err.message());
    }
    let s = first.secret.clone();
    let remote = eventually(Duration::from_secs(6), || {
        let mut authz = stack.authz(&s);
        async move {
            authz
                .list_permissions(ListPermissionsRequest::default())
                .await
                .is_err_and(|e| e.code() == Code::Unauthenticated)
        }
    })
    .await;
    assert!(remote, "authz refuses the revoked token within the TTL");
    for secret in [&day.secret, &theirs.secret] {
        assert_eq!(
            code(stack.identity(secret).who_am_i(WhoAmIRequest {}).await),
            Code::Ok,
            "another sandbox's token still works"
        );
    }
    assert_eq!(
        revoke_sandbox(&stack, &service, sb1).await.expect("again"),
        0
    );
    assert_eq!(
        code(revoke_sandbox(&stack, &service, "sandboxes/sb1").await),
        Code::InvalidArgument
    );
    // RevokeApiKey works on a session token too and names its sandbox.
    let revoked = stack
        .identity(&acme.owner)
        .revoke_api_key(RevokeApiKeyRequest {
            name: day.api_key.expect("key").name,
        })
        .await
        .expect("revoke key")
        .into_inner()
        .api_key
        .expect("key");
    assert_eq!(revoked.sandbox, sb2);
    assert!(revoked.revoke_time.is_some());

    // Expiry.
    let short = session_token(&stack, &service, agent, sb2, duration(1))
        .await
        .expect("short");
    assert_eq!(
        code(
            stack
                .identity(&short.secret)
                .who_am_i(WhoAmIRequest {})
                .await
        ),
        Code::Ok
    );
    let s = short.secret.clone();
    let expired = eventually(Duration::from_secs(5), || {
        let mut c = stack.identity(&s);
        async move {
            c.who_am_i(WhoAmIRequest {}).await.is_err_and(|e| {
                e.code() == Code::Unauthenticated && e.message().contains("expired")
            })
        }
    })
    .await;
    assert!(expired, "the session token expires");
    stack.shutdown().await;
}

backend_tests!(
    credential_crud_and_roles,
    values_are_sealed_at_rest,
    session_tokens
);
