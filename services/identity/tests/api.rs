//! Identity and authz through real servers on port 0, each test with its
//! own data dir and database, on SQLite and PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use common::*;
use paddock_proto::authz::v1::*;
use paddock_proto::identity::v1::*;
use paddock_shared::token::{self, TokenKind};
use paddock_testkit::{Backend, Stack, backend_tests};
use tonic::Code;

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

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

async fn create_project(stack: &Stack, token: &str, org: &str, id: &str) -> Code {
    code(
        stack
            .identity(token)
            .create_project(CreateProjectRequest {
                parent: format!("organizations/{org}"),
                project_id: id.into(),
                project: None,
            })
            .await,
    )
}

async fn scopes(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    let ci = mint_key(&stack, &acme.owner, "acme", "", "", &["ci-cd"])
        .await
        .expect("ci-cd key")
        .secret;
    assert_eq!(
        code(
            stack
                .identity(&ci)
                .list_projects(ListProjectsRequest::default())
                .await
        ),
        Code::Ok
    );
    let err = stack
        .identity(&ci)
        .create_project(CreateProjectRequest {
            parent: String::new(),
            project_id: "nope".into(),
            project: None,
        })
        .await
        .expect_err("scope excludes projects.create");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message()
            .contains("missing projects.create on organizations/acme"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("scope"),
        "the reason names the scope: {}",
        err.message()
    );
    let perms = stack
        .authz(&ci)
        .list_permissions(ListPermissionsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .permissions;
    assert_eq!(
        perms,
        vec![
            "projects.read",
            "agents.execute",
            "sessions.read",
            "sessions.manage_own"
        ]
    );

    let read_only = mint_key(&stack, &acme.owner, "acme", "", "", &["read-only"])
        .await
        .expect("read-only key")
        .secret;
    assert_eq!(
        code(
            stack
                .identity(&read_only)
                .list_members(ListMembersRequest::default())
                .await
        ),
        Code::Ok
    );
    assert_eq!(
        create_project(&stack, &read_only, "acme", "ro").await,
        Code::PermissionDenied
    );

    let listed = mint_key(
        &stack,
        &acme.owner,
        "acme",
        "",
        "",
        &["projects.read", "projects.create"],
    )
    .await
    .expect("listed")
    .secret;
    assert_eq!(
        create_project(&stack, &listed, "acme", "listed").await,
        Code::Ok
    );
    let err = stack
        .identity(&listed)
        .delete_project(DeleteProjectRequest {
            name: "organizations/acme/projects/listed".into(),
        })
        .await
        .expect_err("not in scope");
    assert!(
        err.message()
            .contains("missing projects.delete on organizations/acme/projects/listed"),
        "{}",
        err.message()
    );
    stack.shutdown().await;
}

async fn escalation_is_refused(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    let denied = |r: Result<CreateApiKeyResponse, tonic::Status>| r.expect_err("escalation").code();
    assert_eq!(
        denied(mint_key(&stack, &acme.developer, "acme", "", "admin", &[]).await),
        Code::PermissionDenied
    );
    assert_eq!(
        denied(
            mint_key(
                &stack,
                &acme.developer,
                "acme",
                "organizations/acme/agents/bot",
                "",
                &[]
            )
            .await
        ),
        Code::PermissionDenied
    );
    let ro = mint_key(&stack, &acme.owner, "acme", "", "", &["read-only"])
        .await
        .expect("ro")
        .secret;
    assert_eq!(
        denied(mint_key(&stack, &ro, "acme", "", "", &[]).await),
        Code::PermissionDenied
    );
    // An owner acting through an admin-role key cannot grant owner.
    let as_admin = mint_key(&stack, &acme.owner, "acme", "", "admin", &[])
        .await
        .expect("admin-role key")
        .secret;
    assert_eq!(
        denied(mint_key(&stack, &as_admin, "acme", "", "owner", &[]).await),
        Code::PermissionDenied
    );
    let err = stack
        .identity(&acme.admin)
        .create_agent(CreateAgentRequest {
            parent: String::new(),
            agent_id: "boss".into(),
            agent: Some(Agent {
                role: "owner".into(),
                ..Default::default()
            }),
        })
        .await
        .expect_err("agent above admin");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("cannot grant role owner"),
        "{}",
        err.message()
    );
    let invite = stack
        .identity(&acme.admin)
        .create_invite(CreateInviteRequest {
            parent: String::new(),
            email: "x@acme.test".into(),
            role: "owner".into(),
            ttl: None,
        })
        .await;
    assert_eq!(code(invite), Code::PermissionDenied);
    assert_eq!(
        mint_key(&stack, &acme.owner, "acme", "", "superuser", &[])
            .await
            .expect_err("unknown role")
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        mint_key(&stack, &acme.owner, "acme", "", "", &["everything"])
            .await
            .expect_err("unknown scope")
            .code(),
        Code::InvalidArgument
    );
    // Keys minted for an agent never exceed the agent's role.
    let agent_key = mint_key(
        &stack,
        &acme.owner,
        "acme",
        "organizations/acme/agents/bot",
        "admin",
        &[],
    )
    .await
    .expect("agent key")
    .secret;
    assert_eq!(
        create_project(&stack, &agent_key, "acme", "by-agent").await,
        Code::PermissionDenied
    );
    stack.shutdown().await;
}

async fn demotion_shrinks_existing_keys(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    let (admin, admin_key) = add_member(
        &stack,
        &acme.owner,
        "acme",
        "second-admin@acme.test",
        "admin",
    )
    .await;
    let check = |token: String| {
        let mut authz = stack.authz(&token);
        async move {
            authz
                .check(CheckRequest {
                    permission: "projects.delete".into(),
                    ..Default::default()
                })
                .await
                .expect("check")
                .into_inner()
                .allowed
        }
    };
    assert!(check(admin_key.clone()).await, "admin may delete projects");
    assert_eq!(
        create_project(&stack, &admin_key, "acme", "keep").await,
        Code::Ok
    );
    stack
        .identity(&acme.owner)
        .update_member(UpdateMemberRequest {
            member: Some(Member {
                name: admin.name,
                role: "developer".into(),
                ..Default::default()
            }),
            update_mask: mask(&["role"]),
        })
        .await
        .expect("demote");
    let delete = stack
        .identity(&admin_key)
        .delete_project(DeleteProjectRequest {
            name: "organizations/acme/projects/keep".into(),
        })
        .await;
    assert_eq!(
        code(delete),
        Code::PermissionDenied,
        "identity sees the demotion at once"
    );
    let key = admin_key.clone();
    assert!(
        eventually(Duration::from_secs(6), || {
            let k = key.clone();
            async move { !check(k).await }
        })
        .await,
        "authz sees the demotion within the TTL"
    );
    stack.shutdown().await;
}

async fn revocation_and_expiry(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    let key = mint_key(&stack, &acme.developer, "acme", "", "", &[])
        .await
        .expect("key");
    let secret = key.secret.clone();
    // Warm both caches.
    assert_eq!(
        code(stack.identity(&secret).who_am_i(WhoAmIRequest {}).await),
        Code::Ok
    );
    assert_eq!(
        code(
            stack
                .authz(&secret)
                .list_permissions(ListPermissionsRequest::default())
                .await
        ),
        Code::Ok
    );
    stack
        .identity(&acme.developer)
        .revoke_api_key(RevokeApiKeyRequest {
            name: key.api_key.expect("key").name,
        })
        .await
        .expect("revoke own key");
    let err = stack
        .identity(&secret)
        .who_am_i(WhoAmIRequest {})
        .await
        .expect_err("revoked");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("revoked"), "{}", err.message());
    let s = secret.clone();
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
    assert!(remote, "authz refuses the revoked key within the TTL");

    // Expiry.
    let short = stack
        .identity(&acme.developer)
        .create_api_key(CreateApiKeyRequest {
            parent: String::new(),
            api_key: Some(ApiKey {
                display_name: "short".into(),
                ..Default::default()
            }),
            ttl: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            never_expires: false,
        })
        .await
        .expect("short key")
        .into_inner()
        .secret;
    assert_eq!(
        code(
            stack
                .authz(&short)
                .list_permissions(ListPermissionsRequest::default())
                .await
        ),
        Code::Ok
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let err = stack
        .identity(&short)
        .who_am_i(WhoAmIRequest {})
        .await
        .expect_err("expired");
    assert!(err.message().contains("expired"), "{}", err.message());
    assert_eq!(
        code(
            stack
                .authz(&short)
                .list_permissions(ListPermissionsRequest::default())
                .await
        ),
        Code::Unauthenticated,
        "a cached principal expires with its key"
    );

    // The organization caps lifetimes and forbids never-expiring keys by default.
    let too_long = CreateApiKeyRequest {
        parent: String::new(),
        api_key: None,
        ttl: Some(prost_types::Duration {
            seconds: 91 * 86_400,
            nanos: 0,
        }),
        never_expires: false,
    };
    assert_eq!(
        code(stack.identity(&acme.owner).create_api_key(too_long).await),
        Code::InvalidArgument
    );
    let never = CreateApiKeyRequest {
        parent: String::new(),
        api_key: None,
        ttl: None,
        never_expires: true,
    };
    assert_eq!(
        code(
            stack
                .identity(&acme.owner)
                .create_api_key(never.clone())
                .await
        ),
        Code::FailedPrecondition
    );
    stack
        .identity(&acme.owner)
        .update_organization(UpdateOrganizationRequest {
            organization: Some(Organization {
                name: acme.name.clone(),
                settings: Some(OrganizationSettings {
                    allow_non_expiring_keys: true,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            update_mask: mask(&["settings.allow_non_expiring_keys"]),
        })
        .await
        .expect("allow never-expiring keys");
    let forever = stack
        .identity(&acme.owner)
        .create_api_key(never)
        .await
        .expect("never-expiring key")
        .into_inner();
    assert!(forever.api_key.expect("key").expire_time.is_none());
    stack.shutdown().await;
}

async fn bad_tokens_are_unauthenticated(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    let whoami = |token: &str| {
        let mut c = stack.identity(token);
        async move { c.who_am_i(WhoAmIRequest {}).await.expect_err("refused") }
    };
    let none = stack
        .anonymous_identity()
        .who_am_i(WhoAmIRequest {})
        .await
        .expect_err("no token");
    assert_eq!(none.code(), Code::Unauthenticated);
    assert!(
        none.message().contains("missing bearer token"),
        "{}",
        none.message()
    );
    let not_base62 = format!("pdk_{}", "!".repeat(50));
    for (token, words) in [
        ("hello", "unknown prefix"),
        (&acme.owner[..acme.owner.len() - 3], "wrong length"),
        (not_base62.as_str(), "base62"),
    ] {
        let err = whoami(token).await;
        assert_eq!(err.code(), Code::Unauthenticated, "{token}");
        assert!(err.message().contains(words), "{token}: {}", err.message());
    }
    let mut flipped = acme.owner.clone().into_bytes();
    flipped[20] = if flipped[20] == b'a' { b'b' } else { b'a' };
    let err = whoami(std::str::from_utf8(&flipped).expect("ascii")).await;
    assert!(err.message().contains("checksum"), "{}", err.message());
    // A well-formed key nobody issued.
    let (_, forged) = token::mint(TokenKind::ApiKey);
    assert!(whoami(&forged).await.message().contains("invalid API key"));
    // Non-ASCII tokens: through the Authenticate RPC (services only) and as
    // raw header bytes.
    let unicode = format!("pdk_{}", "é".repeat(25));
    let resp = stack
        .identity(stack.service_token.expose())
        .authenticate(AuthenticateRequest {
            token: unicode.clone(),
        })
        .await
        .expect_err("unicode");
    assert_eq!(resp.code(), Code::Unauthenticated);
    assert!(resp.message().contains("non-ASCII"), "{}", resp.message());
    let mut raw = stack.anonymous_identity();
    let mut req = tonic::Request::new(WhoAmIRequest {});
    let value = tonic::metadata::MetadataValue::try_from(format!("Bearer {unicode}").as_bytes())
        .expect("obs-text header bytes");
    req.metadata_mut().insert("authorization", value);
    assert_eq!(
        raw.who_am_i(req).await.expect_err("unicode header").code(),
        Code::Unauthenticated
    );
    // An invite code is not a key; service and bootstrap tokens hold no org permissions.
    let (_, invite) = token::mint(TokenKind::Invite);
    assert_eq!(whoami(&invite).await.code(), Code::Unauthenticated);
    let svc = stack
        .identity(stack.service_token.expose())
        .list_projects(ListProjectsRequest::default())
        .await
        .expect_err("service");
    assert_eq!(svc.code(), Code::PermissionDenied);
    let boot = stack
        .identity(stack.bootstrap_token().expose())
        .list_projects(ListProjectsRequest::default())
        .await
        .expect_err("bootstrap");
    assert_eq!(boot.code(), Code::PermissionDenied);
    stack.shutdown().await;
}

async fn invites_are_single_use_and_expire(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    let invite = |email: &str, ttl: Option<i64>| {
        let mut c = stack.identity(&acme.owner);
        let req = CreateInviteRequest {
            parent: String::new(),
            email: email.into(),
            role: "developer".into(),
            ttl: ttl.map(|s| prost_types::Duration {
                seconds: s,
                nanos: 0,
            }),
        };
        async move {
            c.create_invite(req)
                .await
                .expect("invite")
                .into_inner()
                .code
        }
    };
    let accept = |code: String| {
        let mut c = stack.anonymous_identity();
        async move {
            c.accept_invite(AcceptInviteRequest {
                code,
                key_display_name: String::new(),
            })
            .await
        }
    };
    let code1 = invite("new@acme.test", None).await;
    let first = accept(code1.clone()).await.expect("first use").into_inner();
    assert_eq!(
        code(
            stack
                .identity(&first.api_key_secret)
                .who_am_i(WhoAmIRequest {})
                .await
        ),
        Code::Ok
    );
    let again = accept(code1).await.expect_err("second use");
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(again.message().contains("already been used"));
    let short = invite("late@acme.test", Some(1)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let late = accept(short).await.expect_err("expired");
    assert_eq!(late.code(), Code::FailedPrecondition);
    assert!(late.message().contains("expired"));
    assert_eq!(
        accept("nonsense".into()).await.expect_err("garbage").code(),
        Code::InvalidArgument
    );
    assert_eq!(
        accept(token::mint(TokenKind::Invite).1)
            .await
            .expect_err("unknown")
            .code(),
        Code::NotFound
    );
    assert_eq!(
        accept(acme.owner.clone()).await.expect_err("a key").code(),
        Code::InvalidArgument
    );
    let dup = stack
        .identity(&acme.owner)
        .create_invite(CreateInviteRequest {
            parent: String::new(),
            email: "NEW@acme.test".into(),
            role: "developer".into(),
            ttl: None,
        })
        .await;
    assert_eq!(code(dup), Code::AlreadyExists);
    let agent_role = stack
        .identity(&acme.owner)
        .create_invite(CreateInviteRequest {
            parent: String::new(),
            email: "bot@acme.test".into(),
            role: "agent".into(),
            ttl: None,
        })
        .await;
    assert_eq!(code(agent_role), Code::InvalidArgument);
    stack.shutdown().await;
}

async fn concurrent_accepts(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    let mut codes = Vec::new();
    for i in 0..24 {
        let code = stack
            .identity(&acme.owner)
            .create_invite(CreateInviteRequest {
                parent: String::new(),
                email: format!("c{i}@acme.test"),
                role: "developer".into(),
                ttl: None,
            })
            .await
            .expect("invite")
            .into_inner()
            .code;
        codes.push(code);
    }
    // Every distinct code is accepted, all at once.
    let tasks: Vec<_> = codes
        .iter()
        .map(|code| {
            let mut c = stack.anonymous_identity();
            let code = code.clone();
            tokio::spawn(async move {
                c.accept_invite(AcceptInviteRequest {
                    code,
                    key_display_name: String::new(),
                })
                .await
                .map(|_| ())
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("concurrent accept");
    }
    // One code raced by many: exactly one wins.
    let code = stack
        .identity(&acme.owner)
        .create_invite(CreateInviteRequest {
            parent: String::new(),
            email: "race@acme.test".into(),
            role: "developer".into(),
            ttl: None,
        })
        .await
        .expect("invite")
        .into_inner()
        .code;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let mut c = stack.anonymous_identity();
            let code = code.clone();
            tokio::spawn(async move {
                c.accept_invite(AcceptInviteRequest {
                    code,
                    key_display_name: String::new(),
                })
                .await
            })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => wins += 1,
            Err(e) => assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message()),
        }
    }
    assert_eq!(wins, 1);
    stack.shutdown().await;
}

async fn secrets_are_never_stored(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    let invite = stack
        .identity(&acme.owner)
        .create_invite(CreateInviteRequest {
            parent: String::new(),
            email: "pending@acme.test".into(),
            role: "developer".into(),
            ttl: None,
        })
        .await
        .expect("invite")
        .into_inner()
        .code;
    let mut secrets = vec![
        acme.owner.clone(),
        acme.admin.clone(),
        acme.developer.clone(),
        acme.agent.clone(),
        invite,
    ];
    secrets.push(stack.bootstrap_token().expose().clone());
    secrets.push(
        mint_key(&stack, &acme.owner, "acme", "", "", &["ci-cd"])
            .await
            .expect("key")
            .secret,
    );
    // Use a key so last_used is written too.
    assert_eq!(
        code(
            stack
                .identity(&acme.developer)
                .who_am_i(WhoAmIRequest {})
                .await
        ),
        Code::Ok
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
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
            assert!(stored.len() > 4096, "the database files were read");
        }
        Some(url) => {
            sqlx::any::install_default_drivers();
            let pool = sqlx::AnyPool::connect(url).await.expect("connect");
            for table in [
                "organizations",
                "members",
                "agents",
                "projects",
                "api_keys",
                "invites",
                "platform_tokens",
            ] {
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
            assert!(!stored.is_empty());
        }
    }
    let haystack = String::from_utf8_lossy(&stored);
    for secret in &secrets {
        assert!(
            !haystack.contains(secret.as_str()),
            "a secret is stored in plaintext"
        );
        // Nor its secret part alone.
        assert!(
            !haystack.contains(&secret[16..48]),
            "a secret's random part is stored"
        );
    }
    // The hash is what is stored.
    assert!(haystack.contains(&token::hash(&acme.developer)));
    stack.shutdown().await;
}

async fn fails_closed_without_dependencies(backend: Backend) {
    let mut stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    stack.stop_authz().await;
    let err = stack
        .identity(&acme.developer)
        .list_agents(ListAgentsRequest::default())
        .await
        .expect_err("authz down");
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    stack.restart_authz().await;
    let back = eventually(Duration::from_secs(10), || {
        let mut c = stack.identity(&acme.developer);
        async move { c.list_agents(ListAgentsRequest::default()).await.is_ok() }
    })
    .await;
    assert!(back, "works again once authz is back");
    // A key authz has not cached yet, with identity down.
    let fresh = mint_key(&stack, &acme.owner, "acme", "", "", &[])
        .await
        .expect("key")
        .secret;
    stack.stop_identity().await;
    let err = stack
        .authz(&fresh)
        .check(CheckRequest {
            permission: "projects.read".into(),
            ..Default::default()
        })
        .await
        .expect_err("identity down");
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    stack.shutdown().await;
}

async fn bad_input_is_invalid_argument(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    let mut c = stack.identity(&acme.owner);
    let invalid = |r: Code| assert_eq!(r, Code::InvalidArgument);
    invalid(code(
        c.get_project(GetProjectRequest {
            name: "projects/web".into(),
        })
        .await,
    ));
    invalid(code(
        c.get_project(GetProjectRequest {
            name: "organizations/acme/projects/../web".into(),
        })
        .await,
    ));
    invalid(code(
        c.get_project(GetProjectRequest {
            name: String::new(),
        })
        .await,
    ));
    invalid(code(
        c.get_member(GetMemberRequest {
            name: "organizations/acme/projects/web".into(),
        })
        .await,
    ));
    invalid(create_project(&stack, &acme.owner, "acme", "Bad_Id").await);
    invalid(create_project(&stack, &acme.owner, "acme", &"x".repeat(64)).await);
    invalid(code(
        c.create_project(CreateProjectRequest {
            parent: String::new(),
            project_id: "long".into(),
            project: Some(Project {
                display_name: "x".repeat(201),
                ..Default::default()
            }),
        })
        .await,
    ));
    invalid(code(
        c.list_projects(ListProjectsRequest {
            page_size: -1,
            ..Default::default()
        })
        .await,
    ));
    invalid(code(
        c.list_projects(ListProjectsRequest {
            page_token: "zz".into(),
            ..Default::default()
        })
        .await,
    ));
    invalid(code(
        c.update_project(UpdateProjectRequest {
            project: Some(Project {
                name: "organizations/acme/projects/web".into(),
                ..Default::default()
            }),
            update_mask: mask(&["created_by"]),
        })
        .await,
    ));
    invalid(code(
        c.update_member(UpdateMemberRequest {
            member: Some(Member {
                name: acme.developer_member.clone(),
                role: "king".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await,
    ));
    invalid(code(
        stack
            .authz(&acme.owner)
            .check(CheckRequest {
                permission: "projects.fly".into(),
                ..Default::default()
            })
            .await,
    ));
    invalid(code(
        stack
            .authz(&acme.owner)
            .check(CheckRequest {
                permission: "projects.read".into(),
                resource: "acme/web".into(),
                ..Default::default()
            })
            .await,
    ));
    assert_eq!(
        create_project(&stack, &acme.owner, "acme", "web").await,
        Code::AlreadyExists
    );
    // A refused creation leaves nothing behind.
    let boot = stack.bootstrap_token();
    let bad = stack
        .identity(boot.expose())
        .create_organization(CreateOrganizationRequest {
            organization_id: "initech".into(),
            display_name: String::new(),
            owner_email: "not an email".into(),
        })
        .await;
    assert_eq!(code(bad), Code::InvalidArgument);
    let dup_owner = stack
        .identity(boot.expose())
        .create_organization(CreateOrganizationRequest {
            organization_id: "acme".into(),
            display_name: String::new(),
            owner_email: "other@x.test".into(),
        })
        .await;
    assert_eq!(code(dup_owner), Code::AlreadyExists);
    let ok = stack.create_org("initech", "boss@initech.test").await;
    assert!(ok.owner_key_secret.starts_with("pdk_"));
    stack.shutdown().await;
}

async fn pagination_is_complete(backend: Backend) {
    let stack = Stack::start(backend).await;
    let org = stack.create_org("pages", "o@pages.test").await;
    let owner = org.owner_key_secret;
    for i in 0..7 {
        assert_eq!(
            create_project(&stack, &owner, "pages", &format!("p{i}")).await,
            Code::Ok
        );
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let resp = stack
            .identity(&owner)
            .list_projects(ListProjectsRequest {
                parent: String::new(),
                page_size: 3,
                page_token: token,
            })
            .await
            .expect("page")
            .into_inner();
        pages += 1;
        assert!(resp.projects.len() <= 3);
        seen.extend(resp.projects.into_iter().map(|p| p.name));
        if resp.next_page_token.is_empty() {
            break;
        }
        token = resp.next_page_token;
    }
    assert_eq!(pages, 3);
    let expected: Vec<_> = (0..7)
        .map(|i| format!("organizations/pages/projects/p{i}"))
        .collect();
    assert_eq!(seen, expected);

    // A token continues only the listing that issued it: not another
    // organization's projects, and not another collection of the same one.
    let first = stack
        .identity(&owner)
        .list_projects(ListProjectsRequest {
            parent: String::new(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .expect("page")
        .into_inner();
    let other = stack.create_org("pages2", "o@pages2.test").await;
    for i in 0..3 {
        assert_eq!(
            create_project(&stack, &other.owner_key_secret, "pages2", &format!("q{i}")).await,
            Code::Ok
        );
    }
    let replayed = stack
        .identity(&other.owner_key_secret)
        .list_projects(ListProjectsRequest {
            parent: String::new(),
            page_size: 1,
            page_token: first.next_page_token.clone(),
        })
        .await
        .expect_err("another organization's token");
    assert_eq!(replayed.code(), Code::InvalidArgument);
    assert!(replayed.message().contains("page_token"), "{replayed:?}");
    let crossed = stack
        .identity(&owner)
        .list_agents(ListAgentsRequest {
            parent: String::new(),
            page_size: 1,
            page_token: first.next_page_token,
        })
        .await
        .expect_err("another collection's token");
    assert_eq!(crossed.code(), Code::InvalidArgument);
    stack.shutdown().await;
}

async fn key_visibility_and_last_use(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    let list = |token: &str| {
        let mut c = stack.identity(token);
        async move {
            c.list_api_keys(ListApiKeysRequest::default())
                .await
                .expect("list keys")
                .into_inner()
                .api_keys
        }
    };
    let dev_whoami = stack
        .identity(&acme.developer)
        .who_am_i(WhoAmIRequest {})
        .await
        .expect("whoami")
        .into_inner()
        .principal
        .expect("p");
    let mine = list(&acme.developer).await;
    assert!(
        !mine.is_empty() && mine.iter().all(|k| k.owner == dev_whoami.name),
        "a developer sees only their own keys"
    );
    let all = list(&acme.admin).await;
    assert!(
        all.len() > mine.len() && all.iter().any(|k| k.owner.contains("/agents/bot")),
        "an admin sees every key, agents' too"
    );
    // Another member's key does not exist for a developer.
    let admin_key = all
        .iter()
        .find(|k| k.owner != dev_whoami.name)
        .expect("someone else's key");
    let err = stack
        .identity(&acme.developer)
        .revoke_api_key(RevokeApiKeyRequest {
            name: admin_key.name.clone(),
        })
        .await
        .expect_err("not mine");
    assert_eq!(err.code(), Code::NotFound);
    // last_used_at is written in batches.
    let dev_key = format!("organizations/acme/apiKeys/{}", dev_whoami.key_id);
    let used = eventually(Duration::from_secs(5), || {
        let name = dev_key.clone();
        let l = list(&acme.owner);
        async move {
            l.await
                .iter()
                .any(|k| k.name == name && k.last_used_time.is_some())
        }
    })
    .await;
    assert!(used, "last_used_time is recorded");
    // The last owner stays.
    let owner = acme.owner_member.clone();
    let demote = stack
        .identity(&acme.owner)
        .update_member(UpdateMemberRequest {
            member: Some(Member {
                name: owner.clone(),
                role: "admin".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await;
    assert_eq!(code(demote), Code::FailedPrecondition);
    assert_eq!(
        code(
            stack
                .identity(&acme.owner)
                .delete_member(DeleteMemberRequest { name: owner })
                .await
        ),
        Code::FailedPrecondition
    );
    stack.shutdown().await;
}

async fn check_explains_itself(backend: Backend) {
    let stack = Stack::start(backend).await;
    let acme = setup_org(&stack, "acme").await;
    let check = |token: &str, permission: &str| {
        let mut a = stack.authz(token);
        let req = CheckRequest {
            permission: permission.into(),
            ..Default::default()
        };
        async move { a.check(req).await.expect("check").into_inner() }
    };
    let dev = check(&acme.developer, "projects.delete").await;
    assert!(!dev.allowed);
    let reason = dev.reason.expect("reason");
    assert_eq!(reason.missing(), Link::Role);
    assert!(
        reason.summary.contains("role developer"),
        "{}",
        reason.summary
    );
    let ok = check(&acme.developer, "sessions.manage_own").await;
    assert!(ok.allowed);
    assert_eq!(
        ok.reason.expect("reason").granted_by_permission,
        "sessions.manage_own"
    );
    let admin_own = check(&acme.admin, "sessions.manage_own").await;
    assert_eq!(
        admin_own.reason.expect("reason").granted_by_permission,
        "sessions.manage"
    );
    let ci = mint_key(&stack, &acme.owner, "acme", "", "", &["ci-cd"])
        .await
        .expect("key")
        .secret;
    assert_eq!(
        check(&ci, "projects.create")
            .await
            .reason
            .expect("reason")
            .missing(),
        Link::Scope
    );
    let dev_role = mint_key(&stack, &acme.owner, "acme", "", "developer", &[])
        .await
        .expect("key")
        .secret;
    assert_eq!(
        check(&dev_role, "projects.delete")
            .await
            .reason
            .expect("reason")
            .missing(),
        Link::KeyRole
    );
    // Another organization's resource.
    let other = stack
        .authz(&acme.owner)
        .check(CheckRequest {
            permission: "projects.read".into(),
            resource: "organizations/globex/projects/web".into(),
            ..Default::default()
        })
        .await
        .expect("check")
        .into_inner();
    assert!(!other.allowed);
    assert_eq!(other.reason.expect("reason").missing(), Link::Organization);
    // Only services check other principals.
    let me = stack
        .identity(&acme.developer)
        .who_am_i(WhoAmIRequest {})
        .await
        .expect("whoami")
        .into_inner()
        .principal;
    let as_other = stack
        .authz(&acme.admin)
        .check(CheckRequest {
            principal: me.clone(),
            permission: "projects.read".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(as_other), Code::PermissionDenied);
    let by_service = stack
        .authz(stack.service_token.expose())
        .check(CheckRequest {
            principal: me,
            permission: "projects.update".into(),
            ..Default::default()
        })
        .await
        .expect("service check")
        .into_inner();
    assert!(by_service.allowed);
    let batch = stack
        .authz(&acme.developer)
        .batch_check(BatchCheckRequest {
            principal: None,
            items: ["projects.read", "projects.delete", "audit.read"]
                .iter()
                .map(|p| BatchCheckItem {
                    permission: (*p).into(),
                    ..Default::default()
                })
                .collect(),
        })
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(
        batch.results.iter().map(|r| r.allowed).collect::<Vec<_>>(),
        vec![true, false, false]
    );
    let roles = stack
        .authz(&acme.agent)
        .list_roles(ListRolesRequest {})
        .await
        .expect("roles")
        .into_inner();
    assert_eq!(roles.roles.len(), 4);
    assert_eq!(roles.groups.len(), 3);
    stack.shutdown().await;
}

backend_tests!(
    scopes,
    escalation_is_refused,
    demotion_shrinks_existing_keys,
    revocation_and_expiry,
    bad_tokens_are_unauthenticated,
    invites_are_single_use_and_expire,
    concurrent_accepts,
    secrets_are_never_stored,
    fails_closed_without_dependencies,
    bad_input_is_invalid_argument,
    pagination_is_complete,
    key_visibility_and_last_use,
    check_explains_itself,
);
