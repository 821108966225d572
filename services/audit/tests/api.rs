//! The audit service through real servers on port 0, each test with its
//! own data dir and database, on SQLite and PostgreSQL. Identity's own
//! events wait in its outbox here (`Stack::start_quiet_audit`), so every
//! chain holds only what a test appends and sequences are predictable.

use std::collections::HashSet;
use std::time::Duration;

use paddock_proto::audit::v1::audit_service_client::AuditServiceClient;
use paddock_proto::audit::v1::*;
use paddock_proto::identity::v1::{AcceptInviteRequest, CreateInviteRequest};
use paddock_testkit::{AuditClient, Backend, Stack, backend_tests};
use sqlx::Executor;
use tonic::Code;

fn code<T>(r: Result<T, tonic::Status>) -> Code {
    r.map(|_| Code::Ok).unwrap_or_else(|s| s.code())
}

fn event(org: &str, action: &str) -> AuditEvent {
    AuditEvent {
        id: uuid::Uuid::now_v7().to_string(),
        time: Some(prost_types::Timestamp {
            seconds: 1_800_000_000,
            nanos: 0,
        }),
        organization: format!("organizations/{org}"),
        actor: Some(Actor {
            principal_id: "m1".into(),
            kind: "PRINCIPAL_KIND_MEMBER".into(),
            display_name: "alice@acme.test".into(),
            key_id: "k1".into(),
        }),
        action: action.into(),
        resource: format!("organizations/{org}/projects/web"),
        outcome: Outcome::Success as i32,
        source_service: "identity".into(),
        trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        details_json: r#"{"n":1}"#.into(),
        ..Default::default()
    }
}

async fn append(stack: &Stack, events: Vec<AuditEvent>) -> i32 {
    stack
        .audit_as_service()
        .append_events(AppendEventsRequest { events })
        .await
        .expect("append")
        .into_inner()
        .appended
}

/// Appends `n` events (`test.event`) to `org`; returns them as sent.
async fn append_n(stack: &Stack, org: &str, n: usize) -> Vec<AuditEvent> {
    let events: Vec<AuditEvent> = (0..n).map(|_| event(org, "test.event")).collect();
    assert_eq!(append(stack, events.clone()).await, n as i32);
    events
}

/// Creates an organization; returns its owner's key.
async fn org(stack: &Stack, id: &str) -> String {
    stack
        .create_org(id, &format!("owner@{id}.test"))
        .await
        .owner_key_secret
}

async fn developer(stack: &Stack, owner: &str, org: &str) -> String {
    member(stack, owner, org, "developer").await
}

/// Invites and accepts a member with `role`; returns their key.
async fn member(stack: &Stack, owner: &str, org: &str, role: &str) -> String {
    let code = stack
        .identity(owner)
        .create_invite(CreateInviteRequest {
            parent: format!("organizations/{org}"),
            email: format!("{role}@{org}.test"),
            role: role.into(),
            ttl: None,
        })
        .await
        .expect("invite")
        .into_inner()
        .code;
    stack
        .anonymous_identity()
        .accept_invite(AcceptInviteRequest {
            code,
            key_display_name: String::new(),
        })
        .await
        .expect("accept")
        .into_inner()
        .api_key_secret
}

async fn query(client: &mut AuditClient, filter: EventFilter) -> Vec<AuditEvent> {
    client
        .query_events(QueryEventsRequest {
            filter: Some(filter),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("query")
        .into_inner()
        .events
}

async fn verify(client: &mut AuditClient, from: i64, to: i64) -> VerifyChainResponse {
    client
        .verify_chain(VerifyChainRequest {
            parent: String::new(),
            from_sequence: from,
            to_sequence: to,
        })
        .await
        .expect("verify")
        .into_inner()
}

async fn append_is_idempotent(backend: Backend) {
    let stack = Stack::start_quiet_audit(backend).await;
    let owner = org(&stack, "acme").await;
    let first = event("acme", "apikey.create");
    assert_eq!(append(&stack, vec![first.clone()]).await, 1);
    // The same id again, alone, in a batch with a new one, and twice in
    // one batch: stored once.
    assert_eq!(append(&stack, vec![first.clone()]).await, 0);
    let second = event("acme", "apikey.revoke");
    assert_eq!(
        append(&stack, vec![first.clone(), second.clone(), second.clone()]).await,
        1
    );
    // Other spellings of the same UUID are the same event.
    let mut upper = first.clone();
    upper.id = upper.id.to_uppercase();
    assert_eq!(append(&stack, vec![upper]).await, 0);
    let mut simple = first.clone();
    simple.id = simple.id.replace('-', "");
    assert_eq!(append(&stack, vec![simple]).await, 0);

    let mut client = stack.audit(&owner);
    let events = query(&mut client, EventFilter::default()).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].id, second.id, "newest first");
    assert_eq!(events[0].sequence, 2);
    assert_eq!(events[1].id, first.id);
    assert_eq!(events[1].sequence, 1);
    assert_eq!(events[1].previous_hash, paddock_shared::audit::GENESIS_HASH);
    assert_eq!(events[0].previous_hash, events[1].hash);
    assert_eq!(
        paddock_shared::audit::event_hash(&events[0]),
        events[0].hash
    );
    assert_eq!(events[1].action, "apikey.create");
    assert_eq!(events[1].details_json, r#"{"n":1}"#);
    assert_eq!(events[1].time, first.time);

    // Concurrent requests carrying the same new events (merged into one
    // commit or not): each event is stored, and counted, once.
    let batch: Vec<AuditEvent> = (0..20).map(|_| event("acme", "test.event")).collect();
    let mut senders = Vec::new();
    for _ in 0..8 {
        let mut svc = stack.audit_as_service();
        let events = batch.clone();
        senders.push(tokio::spawn(async move {
            svc.append_events(AppendEventsRequest { events })
                .await
                .expect("concurrent append")
                .into_inner()
                .appended
        }));
    }
    let mut total = 0;
    for s in senders {
        total += s.await.expect("sender");
    }
    assert_eq!(total, 20);
    let v = verify(&mut client, 0, 0).await;
    assert!(v.intact, "{v:?}");
    assert_eq!(v.verified, 22);
    stack.shutdown().await;
}

async fn orgs_are_isolated(backend: Backend) {
    let stack = Stack::start_quiet_audit(backend).await;
    let acme = org(&stack, "acme").await;
    let globex = org(&stack, "globex").await;
    let dev = developer(&stack, &acme, "acme").await;
    append_n(&stack, "acme", 3).await;
    append_n(&stack, "globex", 2).await;

    let acme_events = query(&mut stack.audit(&acme), EventFilter::default()).await;
    assert_eq!(acme_events.len(), 3);
    assert!(
        acme_events
            .iter()
            .all(|e| e.organization == "organizations/acme")
    );
    let globex_events = query(&mut stack.audit(&globex), EventFilter::default()).await;
    assert_eq!(globex_events.len(), 2);
    assert!(
        globex_events
            .iter()
            .all(|e| e.organization == "organizations/globex")
    );
    // Each chain starts at 1.
    assert_eq!(globex_events[1].sequence, 1);

    // A developer has no audit.read.
    let err = stack
        .audit(&dev)
        .query_events(QueryEventsRequest::default())
        .await
        .expect_err("developer");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("audit.read"), "{}", err.message());

    // Another organization does not exist for the caller.
    let other = "organizations/globex".to_owned();
    let mut c = stack.audit(&acme);
    assert_eq!(
        code(
            c.query_events(QueryEventsRequest {
                parent: other.clone(),
                ..Default::default()
            })
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            c.verify_chain(VerifyChainRequest {
                parent: other.clone(),
                ..Default::default()
            })
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            c.export_events(ExportEventsRequest {
                parent: other.clone(),
                filter: None
            })
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            c.tail_events(TailEventsRequest {
                parent: other,
                ..Default::default()
            })
            .await
        ),
        Code::NotFound
    );
    // Only services append.
    let err = c
        .append_events(AppendEventsRequest {
            events: vec![event("acme", "test.event")],
        })
        .await
        .expect_err("owner appends");
    assert_eq!(err.code(), Code::PermissionDenied);
    stack.shutdown().await;
}

/// One way to spoil a valid event.
type Change = fn(&mut AuditEvent);

async fn bad_input_is_invalid_argument(backend: Backend) {
    let stack = Stack::start_quiet_audit(backend).await;
    let owner = org(&stack, "acme").await;
    let mut svc = stack.audit_as_service();
    let cases: Vec<(&str, Change)> = vec![
        ("id", |e| e.id = "not-a-uuid".into()),
        ("organization", |e| e.organization = "acme".into()),
        ("action", |e| e.action = "Create".into()),
        ("action", |e| e.action = "apikey".into()),
        ("details_json", |e| e.details_json = "[1]".into()),
        ("details_json", |e| e.details_json = "{".into()),
        ("outcome", |e| e.outcome = 42),
        ("resource", |e| e.resource = "a\nb".into()),
        ("details_json", |e| {
            e.details_json = format!(r#"{{"a":"{}"}}"#, "x".repeat(70_000))
        }),
    ];
    for (what, change) in cases {
        let mut e = event("acme", "test.event");
        change(&mut e);
        let err = svc
            .append_events(AppendEventsRequest { events: vec![e] })
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().contains(what), "{what}: {}", err.message());
    }
    assert_eq!(
        code(
            svc.append_events(AppendEventsRequest { events: vec![] })
                .await
        ),
        Code::InvalidArgument
    );
    let many = (0..1001).map(|_| event("acme", "test.event")).collect();
    assert_eq!(
        code(
            svc.append_events(AppendEventsRequest { events: many })
                .await
        ),
        Code::InvalidArgument
    );
    // Nothing of a rejected batch is stored.
    let mut c = stack.audit(&owner);
    assert!(query(&mut c, EventFilter::default()).await.is_empty());

    for token in ["zz", "00", "64ff", &"ab".repeat(40)] {
        assert_eq!(
            code(
                c.query_events(QueryEventsRequest {
                    page_token: token.into(),
                    ..Default::default()
                })
                .await
            ),
            Code::InvalidArgument,
            "{token}"
        );
    }
    assert_eq!(
        code(
            c.query_events(QueryEventsRequest {
                page_size: -1,
                ..Default::default()
            })
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.query_events(QueryEventsRequest {
                parent: "not/a/name".into(),
                ..Default::default()
            })
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.tail_events(TailEventsRequest {
                after_cursor: "nope".into(),
                ..Default::default()
            })
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.verify_chain(VerifyChainRequest {
                from_sequence: 5,
                to_sequence: 2,
                ..Default::default()
            })
            .await
        ),
        Code::InvalidArgument
    );
    stack.shutdown().await;
}

async fn filters_select_events(backend: Backend) {
    let stack = Stack::start_quiet_audit(backend).await;
    let owner = org(&stack, "acme").await;
    let mut a = event("acme", "member.invite");
    a.actor.as_mut().expect("actor").principal_id = "m2".into();
    a.actor.as_mut().expect("actor").display_name = "bob@acme.test".into();
    let mut b = event("acme", "apikey.create");
    b.outcome = Outcome::Denied as i32;
    b.error_code = "PERMISSION_DENIED".into();
    b.time = Some(prost_types::Timestamp {
        seconds: 1_800_000_100,
        nanos: 0,
    });
    let mut c = event("acme", "apikey.revoke");
    c.resource = "organizations/acme/apiKeys/k9".into();
    c.trace_id = "1".repeat(32);
    append(&stack, vec![a.clone(), b.clone(), c.clone()]).await;
    let mut client = stack.audit(&owner);
    let ids = |events: Vec<AuditEvent>| events.into_iter().map(|e| e.id).collect::<Vec<_>>();
    let f = |f: fn(&mut EventFilter)| {
        let mut filter = EventFilter::default();
        f(&mut filter);
        filter
    };
    assert_eq!(
        ids(query(&mut client, f(|f| f.actor = "m2".into())).await),
        vec![a.id.clone()]
    );
    assert_eq!(
        ids(query(&mut client, f(|f| f.actor = "bob@acme.test".into())).await),
        vec![a.id.clone()]
    );
    // Actor and time together (the audit.query_first_page shape).
    assert_eq!(
        ids(query(
            &mut client,
            f(|f| {
                f.actor = "m1".into();
                f.start_time = Some(prost_types::Timestamp {
                    seconds: 1_800_000_050,
                    nanos: 0,
                });
                f.end_time = Some(prost_types::Timestamp {
                    seconds: 1_800_000_200,
                    nanos: 0,
                });
            })
        )
        .await),
        vec![b.id.clone()]
    );
    assert!(
        query(
            &mut client,
            f(|f| {
                f.actor = "bob@acme.test".into();
                f.start_time = Some(prost_types::Timestamp {
                    seconds: 1_800_000_050,
                    nanos: 0,
                });
            })
        )
        .await
        .is_empty()
    );
    assert_eq!(
        ids(query(&mut client, f(|f| f.action_prefix = "apikey.".into())).await),
        vec![c.id.clone(), b.id.clone()]
    );
    assert_eq!(
        ids(query(&mut client, f(|f| f.action_prefix = "apikey.create".into())).await),
        vec![b.id.clone()]
    );
    // LIKE wildcards in the prefix are literal.
    assert!(
        query(&mut client, f(|f| f.action_prefix = "member_".into()))
            .await
            .is_empty()
    );
    assert!(
        query(&mut client, f(|f| f.action_prefix = "%".into()))
            .await
            .is_empty()
    );
    assert_eq!(
        ids(query(
            &mut client,
            f(|f| f.resource = "organizations/acme/apiKeys/k9".into())
        )
        .await),
        vec![c.id.clone()]
    );
    assert_eq!(
        ids(query(&mut client, f(|f| f.outcome = Outcome::Denied as i32)).await),
        vec![b.id.clone()]
    );
    assert_eq!(
        ids(query(&mut client, f(|f| f.trace_id = "1".repeat(32))).await),
        vec![c.id.clone()]
    );
    assert_eq!(
        ids(query(
            &mut client,
            f(|f| f.start_time = Some(prost_types::Timestamp {
                seconds: 1_800_000_050,
                nanos: 0
            }))
        )
        .await),
        vec![b.id.clone()]
    );
    assert_eq!(
        ids(query(
            &mut client,
            f(|f| f.end_time = Some(prost_types::Timestamp {
                seconds: 1_800_000_050,
                nanos: 0
            }))
        )
        .await),
        vec![c.id.clone(), a.id.clone()]
    );
    // Export: oldest first, filtered.
    let mut stream = client
        .export_events(ExportEventsRequest {
            parent: String::new(),
            filter: Some(f(|f| f.action_prefix = "apikey.".into())),
        })
        .await
        .expect("export")
        .into_inner();
    let mut exported = Vec::new();
    while let Some(msg) = stream.message().await.expect("export message") {
        exported.push(msg.event.expect("event").id);
    }
    assert_eq!(exported, vec![b.id.clone(), c.id.clone()]);

    // A display name carried by several principals, a principal renamed,
    // and a principal id that is someone's display name.
    let with_actor = |id: &str, name: &str| {
        let mut e = event("acme", "test.event");
        let actor = e.actor.as_mut().expect("actor");
        actor.principal_id = id.into();
        actor.display_name = name.into();
        e
    };
    let d = with_actor("m3", "bob@acme.test");
    let renamed = with_actor("m2", "robert@acme.test");
    let g = with_actor("bob@acme.test", "carol@acme.test");
    append(&stack, vec![d.clone(), renamed.clone(), g.clone()]).await;
    assert_eq!(
        ids(query(&mut client, f(|f| f.actor = "bob@acme.test".into())).await),
        vec![g.id.clone(), d.id.clone(), a.id.clone()]
    );
    assert_eq!(
        ids(query(&mut client, f(|f| f.actor = "m2".into())).await),
        vec![renamed.id.clone(), a.id.clone()]
    );
    assert_eq!(
        ids(query(&mut client, f(|f| f.actor = "robert@acme.test".into())).await),
        vec![renamed.id.clone()]
    );
    assert_eq!(
        ids(query(&mut client, f(|f| f.actor = "carol@acme.test".into())).await),
        vec![g.id.clone()]
    );
    stack.shutdown().await;
}

async fn pagination_is_stable_under_concurrent_appends(backend: Backend) {
    let stack = Stack::start_quiet_audit(backend).await;
    let owner = org(&stack, "acme").await;
    append_n(&stack, "acme", 60).await;
    let writer = {
        let client = stack.audit_as_service();
        tokio::spawn(async move {
            for _ in 0..30 {
                let events = (0..5).map(|_| event("acme", "test.event")).collect();
                client
                    .clone()
                    .append_events(AppendEventsRequest { events })
                    .await
                    .expect("concurrent append");
            }
        })
    };
    for oldest_first in [false, true] {
        let mut client = stack.audit(&owner);
        let mut sequences = Vec::new();
        let mut token = String::new();
        loop {
            let page = client
                .query_events(QueryEventsRequest {
                    page_size: 7,
                    page_token: token,
                    oldest_first,
                    ..Default::default()
                })
                .await
                .expect("page")
                .into_inner();
            sequences.extend(page.events.iter().map(|e| e.sequence));
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let unique: HashSet<i64> = sequences.iter().copied().collect();
        assert_eq!(unique.len(), sequences.len(), "duplicates: {sequences:?}");
        for pair in sequences.windows(2) {
            let step = if oldest_first { 1 } else { -1 };
            assert_eq!(pair[1] - pair[0], step, "gap: {sequences:?}");
        }
        if oldest_first {
            assert_eq!(sequences.first(), Some(&1));
        } else {
            assert_eq!(sequences.last(), Some(&1));
            assert!(sequences.len() >= 60);
        }
    }
    writer.await.expect("writer");
    let v = verify(&mut stack.audit(&owner), 0, 0).await;
    assert!(v.intact, "{v:?}");
    assert_eq!(v.verified, 60 + 150);

    // A token continues only its own query: another filter, the other
    // order or another organization is refused, not silently continued.
    let mut client = stack.audit(&owner);
    let first = client
        .query_events(QueryEventsRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .expect("page")
        .into_inner();
    assert!(!first.next_page_token.is_empty());
    let other_owner = org(&stack, "globex").await;
    let attempts = [
        (
            stack.audit(&owner),
            QueryEventsRequest {
                page_token: first.next_page_token.clone(),
                filter: Some(EventFilter {
                    action_prefix: "test.".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
        (
            stack.audit(&owner),
            QueryEventsRequest {
                page_token: first.next_page_token.clone(),
                oldest_first: true,
                ..Default::default()
            },
        ),
        (
            stack.audit(&other_owner),
            QueryEventsRequest {
                page_token: first.next_page_token.clone(),
                ..Default::default()
            },
        ),
    ];
    for (mut client, request) in attempts {
        let err = client
            .query_events(request.clone())
            .await
            .expect_err("a token of another query");
        assert_eq!(err.code(), Code::InvalidArgument, "{request:?}: {err:?}");
        assert!(err.message().contains("page_token"), "{err:?}");
    }
    stack.shutdown().await;
}

async fn tail_delivers_and_resumes(backend: Backend) {
    let stack = Stack::start_quiet_audit(backend).await;
    let owner = org(&stack, "acme").await;
    append_n(&stack, "acme", 2).await;
    let mut client = stack.audit(&owner);
    let mut stream = client
        .tail_events(TailEventsRequest::default())
        .await
        .expect("tail")
        .into_inner();
    // Events stored before the tail started are not replayed.
    let fresh = append_n(&stack, "acme", 1).await;
    let msg = tokio::time::timeout(Duration::from_secs(1), stream.message())
        .await
        .expect("a new event within 1 s")
        .expect("stream")
        .expect("message");
    assert_eq!(msg.event.as_ref().expect("event").id, fresh[0].id);
    assert_eq!(msg.event.as_ref().expect("event").sequence, 3);
    let cursor = msg.cursor;
    drop(stream);

    // Appended while disconnected: the resumed tail delivers each once.
    let missed = append_n(&stack, "acme", 3).await;
    let mut stream = client
        .tail_events(TailEventsRequest {
            after_cursor: cursor,
            ..Default::default()
        })
        .await
        .expect("resume")
        .into_inner();
    let mut got = Vec::new();
    for _ in 0..3 {
        let msg = tokio::time::timeout(Duration::from_secs(2), stream.message())
            .await
            .expect("resumed event")
            .expect("stream")
            .expect("message");
        got.push(msg.event.expect("event").id);
    }
    let want: Vec<String> = missed.into_iter().map(|e| e.id).collect();
    assert_eq!(got, want);

    // A filtered tail skips events that do not match.
    let mut filtered = client
        .tail_events(TailEventsRequest {
            filter: Some(EventFilter {
                action_prefix: "auth.".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("filtered tail")
        .into_inner();
    let skip = event("acme", "project.delete");
    let wanted = event("acme", "auth.fail");
    append(&stack, vec![skip, wanted.clone()]).await;
    let msg = tokio::time::timeout(Duration::from_secs(2), filtered.message())
        .await
        .expect("filtered event")
        .expect("stream")
        .expect("message");
    assert_eq!(msg.event.expect("event").id, wanted.id);

    // Shutdown ends open tails instead of hanging.
    let mut stack = stack;
    tokio::time::timeout(Duration::from_secs(10), stack.stop_audit())
        .await
        .expect("audit stops with tails open");
    stack.shutdown().await;
}

/// Runs `sql` against the audit tables directly, as an attacker with
/// database access would.
async fn tamper(stack: &Stack, sql: &str) {
    sqlx::any::install_default_drivers();
    let (url, table_prefix) = match &stack.database_url {
        Some(url) => (url.clone(), "paddock_audit."),
        None => (
            format!("sqlite://{}", stack.dir.path().join("audit.db").display()),
            "",
        ),
    };
    let pool = sqlx::AnyPool::connect(&url).await.expect("connect");
    let sql = sql
        .replace("{events}", &format!("{table_prefix}events"))
        .replace("{checkpoints}", &format!("{table_prefix}checkpoints"));
    let done = pool
        .execute(sqlx::AssertSqlSafe(sql))
        .await
        .expect("tamper");
    assert_eq!(done.rows_affected(), 1);
    pool.close().await;
}

async fn verify_names_the_first_broken_link(backend: Backend) {
    let stack = Stack::start_quiet_audit(backend).await;
    let cases = [
        (
            "action",
            "UPDATE {events} SET action = 'project.read' WHERE org_id = '{org}' AND sequence = 4",
            4,
            "hash mismatch",
        ),
        (
            "actor",
            "UPDATE {events} SET actor_id = 'someone-else' WHERE org_id = '{org}' AND sequence = 4",
            4,
            "hash mismatch",
        ),
        (
            "details",
            "UPDATE {events} SET details_json = '{}' WHERE org_id = '{org}' AND sequence = 4",
            4,
            "hash mismatch",
        ),
        (
            "rehashed",
            "UPDATE {events} SET hash = 'ab' WHERE org_id = '{org}' AND sequence = 4",
            4,
            "hash mismatch",
        ),
        (
            "delete",
            "DELETE FROM {events} WHERE org_id = '{org}' AND sequence = 4",
            5,
            "sequence gap",
        ),
    ];
    for (i, (what, sql, broken, problem)) in cases.into_iter().enumerate() {
        let id = format!("org{i}");
        let owner = org(&stack, &id).await;
        let events = append_n(&stack, &id, 8).await;
        let mut client = stack.audit(&owner);
        assert!(verify(&mut client, 0, 0).await.intact, "{what}: before");
        tamper(&stack, &sql.replace("{org}", &id)).await;
        let v = verify(&mut client, 0, 0).await;
        assert!(!v.intact, "{what}: {v:?}");
        assert_eq!(v.broken_sequence, broken, "{what}: {v:?}");
        assert_eq!(
            v.broken_event_id,
            events[broken as usize - 1].id,
            "{what}: {v:?}"
        );
        assert!(v.problem.contains(problem), "{what}: {v:?}");
        assert_eq!(v.verified, 3, "{what}: {v:?}");
        // A range that ends before the break is intact.
        let before = verify(&mut client, 1, 3).await;
        assert!(before.intact, "{what}: {before:?}");
        assert_eq!(before.verified, 3);
    }

    // Deleting the newest event is caught against the chain's head.
    let owner = org(&stack, "tail-cut").await;
    append_n(&stack, "tail-cut", 3).await;
    tamper(
        &stack,
        "DELETE FROM {events} WHERE org_id = 'tail-cut' AND sequence = 3",
    )
    .await;
    let v = verify(&mut stack.audit(&owner), 0, 0).await;
    assert!(!v.intact, "{v:?}");
    assert_eq!(v.broken_sequence, 3, "{v:?}");
    assert!(v.problem.contains("sequence gap"), "{v:?}");

    // A fresh organization's empty chain is intact.
    let owner = org(&stack, "empty").await;
    let v = verify(&mut stack.audit(&owner), 0, 0).await;
    assert!(v.intact && v.verified == 0, "{v:?}");
    stack.shutdown().await;
}

/// Two audit servers on one database, appending concurrently to the same
/// organization: one chain, no fork, no lost event.
async fn replicas_never_fork_a_chain(backend: Backend) {
    let stack = Stack::start_quiet_audit(backend).await;
    let owner = org(&stack, "acme").await;
    let mut config = stack.audit_config.clone();
    config.common.listen = "127.0.0.1:0".parse().expect("addr");
    let replica = paddock_audit::start(&config, &stack.service_token)
        .await
        .expect("second audit server");
    let replica_client =
        paddock_proto::audit::v1::audit_service_client::AuditServiceClient::with_interceptor(
            paddock_shared::auth::lazy_channel(&replica.endpoint()).expect("channel"),
            paddock_testkit::bearer(stack.service_token.expose()),
        );
    let mut writers = Vec::new();
    for client in [stack.audit_as_service(), replica_client] {
        for _ in 0..3 {
            let mut client = client.clone();
            writers.push(tokio::spawn(async move {
                for _ in 0..10 {
                    let events = (0..5).map(|_| event("acme", "test.event")).collect();
                    client
                        .append_events(AppendEventsRequest { events })
                        .await
                        .expect("append");
                }
            }));
        }
    }
    for w in writers {
        w.await.expect("writer");
    }
    let v = verify(&mut stack.audit(&owner), 0, 0).await;
    assert!(v.intact, "{v:?}");
    assert_eq!(v.verified, 2 * 3 * 10 * 5);
    replica.shutdown().await;
    stack.shutdown().await;
}

const DAY_MICROS: i64 = 86_400_000_000;

/// `event` at `days_ago` days before now.
fn aged(org: &str, days_ago: i64) -> AuditEvent {
    let mut e = event(org, "test.event");
    e.time = Some(paddock_shared::time::timestamp(
        paddock_shared::time::now_micros() - days_ago * DAY_MICROS,
    ));
    e
}

/// The audit database, opened beside the running server as a tool would.
async fn audit_db(stack: &Stack) -> paddock_shared::db::Database {
    paddock_shared::db::Database::connect(
        "audit",
        stack.dir.path(),
        stack.database_url.as_deref(),
        paddock_audit::MIGRATIONS,
    )
    .await
    .expect("audit database")
}

async fn set_retention(client: &mut AuditClient, days: i32) -> AuditSettings {
    client
        .update_audit_settings(UpdateAuditSettingsRequest {
            settings: Some(AuditSettings {
                retention_days: days,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["retention_days".into()],
            }),
        })
        .await
        .expect("update audit settings")
        .into_inner()
        .settings
        .expect("settings")
}

async fn get_settings(client: &mut AuditClient) -> AuditSettings {
    client
        .get_audit_settings(GetAuditSettingsRequest::default())
        .await
        .expect("get audit settings")
        .into_inner()
        .settings
        .expect("settings")
}

/// One retention pass now, `batch` deletions per transaction.
async fn enforce(stack: &Stack, batch: i64) -> Vec<paddock_audit::RetentionRun> {
    let db = audit_db(stack).await;
    let runs = paddock_audit::enforce_retention(&db, paddock_shared::time::now_micros(), batch)
        .await
        .expect("retention pass");
    db.pool.close().await;
    runs
}

/// `org` with 10 events 400 days old, 5 from yesterday and a 30-day
/// retention set by its owner (event 16); returns the owner's key and the
/// events oldest first as stored.
async fn org_with_old_events(stack: &Stack, id: &str) -> (String, Vec<AuditEvent>) {
    let owner = org(stack, id).await;
    append(stack, (0..10).map(|_| aged(id, 400)).collect()).await;
    append(stack, (0..5).map(|_| aged(id, 1)).collect()).await;
    let mut client = stack.audit(&owner);
    set_retention(&mut client, 30).await;
    let stored = client
        .query_events(QueryEventsRequest {
            page_size: 1000,
            oldest_first: true,
            ..Default::default()
        })
        .await
        .expect("query")
        .into_inner()
        .events;
    assert_eq!(stored.len(), 16);
    (owner, stored)
}

async fn retention_deletes_old_events_and_keeps_the_chain_verifiable(backend: Backend) {
    let stack = Stack::start_quiet_audit(backend).await;
    // Another organization with old events and no retention set.
    let globex = org(&stack, "globex").await;
    append(&stack, (0..4).map(|_| aged("globex", 400)).collect()).await;

    let owner = org(&stack, "acme").await;
    let mut client = stack.audit(&owner);
    let defaults = get_settings(&mut client).await;
    assert_eq!(defaults.name, "organizations/acme/auditSettings");
    assert_eq!(defaults.retention_days, 0, "keep forever by default");
    assert!(defaults.update_time.is_none(), "{defaults:?}");
    append(&stack, (0..10).map(|_| aged("acme", 400)).collect()).await;
    append(&stack, (0..5).map(|_| aged("acme", 1)).collect()).await;
    // Nothing is deleted while the organization keeps events forever.
    assert!(enforce(&stack, 1000).await.is_empty());

    let set = set_retention(&mut client, 30).await;
    assert_eq!(set.retention_days, 30);
    assert!(set.update_time.is_some());
    let got = get_settings(&mut client).await;
    assert_eq!(got, set);

    // The change is an event in the organization's own chain.
    let changes = query(
        &mut client,
        EventFilter {
            action_prefix: "auditsettings.".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(changes.len(), 1, "{changes:?}");
    let change = &changes[0];
    assert_eq!(change.sequence, 16);
    assert_eq!(change.action, "auditsettings.update");
    assert_eq!(change.resource, "organizations/acme/auditSettings");
    assert_eq!(change.source_service, "audit");
    assert_eq!(
        got.updated_by,
        change.actor.as_ref().expect("actor").principal_id
    );
    let details: serde_json::Value = serde_json::from_str(&change.details_json).expect("details");
    assert_eq!(details["retention_days"], 30);
    assert_eq!(details["previous_retention_days"], 0);

    let before: Vec<AuditEvent> = {
        let mut events = query(&mut client, EventFilter::default()).await;
        events.reverse();
        events
    };
    assert_eq!(before.len(), 16);

    // In batches of 3: every old event goes, every new one stays.
    let runs = enforce(&stack, 3).await;
    assert_eq!(
        runs,
        vec![paddock_audit::RetentionRun {
            organization: "organizations/acme".into(),
            deleted: 10,
            checkpoint_sequence: 10,
            broken_sequence: None,
        }]
    );
    let kept = query(&mut client, EventFilter::default()).await;
    let kept_ids: Vec<&str> = kept.iter().rev().map(|e| e.id.as_str()).collect();
    let want: Vec<&str> = before[10..].iter().map(|e| e.id.as_str()).collect();
    assert_eq!(kept_ids, want);

    // Verified from the checkpoint: the first kept event links to it.
    let v = verify(&mut client, 0, 0).await;
    assert!(v.intact, "{v:?}");
    assert_eq!(v.verified, 6);
    assert_eq!(v.checkpoint_sequence, 10);
    assert_eq!(v.checkpoint_hash, before[9].hash);
    assert!(v.checkpoint_time.is_some());
    assert_eq!(before[10].previous_hash, v.checkpoint_hash);
    // A range starting in the deleted part starts at the checkpoint.
    let v = verify(&mut client, 3, 0).await;
    assert!(v.intact && v.verified == 6, "{v:?}");

    // Another pass finds nothing more; appends go on chaining.
    let runs = enforce(&stack, 3).await;
    assert_eq!(runs[0].deleted, 0, "{runs:?}");
    append_n(&stack, "acme", 2).await;
    let v = verify(&mut client, 0, 0).await;
    assert!(v.intact && v.verified == 8, "{v:?}");

    // The other organization is untouched.
    let mut g = stack.audit(&globex);
    assert_eq!(query(&mut g, EventFilter::default()).await.len(), 4);
    let v = verify(&mut g, 0, 0).await;
    assert!(
        v.intact && v.verified == 4 && v.checkpoint_sequence == 0,
        "{v:?}"
    );
    assert_eq!(get_settings(&mut g).await.retention_days, 0);
    stack.shutdown().await;
}

async fn tampering_after_retention_is_named(backend: Backend) {
    let stack = Stack::start_quiet_audit(backend).await;
    let cases = [
        (
            "first kept event deleted",
            "DELETE FROM {events} WHERE org_id = '{org}' AND sequence = 11",
            12,
            "sequence gap",
            0,
        ),
        (
            "kept event deleted",
            "DELETE FROM {events} WHERE org_id = '{org}' AND sequence = 13",
            14,
            "sequence gap",
            2,
        ),
        (
            "first kept event changed",
            "UPDATE {events} SET action = 'project.read' WHERE org_id = '{org}' AND sequence = 11",
            11,
            "hash mismatch",
            0,
        ),
        (
            "checkpoint moved",
            "UPDATE {checkpoints} SET hash = 'ab' WHERE org_id = '{org}'",
            11,
            "previous hash mismatch",
            0,
        ),
    ];
    for (i, (what, sql, broken, problem, verified)) in cases.into_iter().enumerate() {
        let id = format!("org{i}");
        let (owner, stored) = org_with_old_events(&stack, &id).await;
        let runs = enforce(&stack, 1000).await;
        let run = runs
            .iter()
            .find(|r| r.organization == format!("organizations/{id}"))
            .expect("run");
        assert_eq!((run.deleted, run.checkpoint_sequence), (10, 10), "{what}");
        let mut client = stack.audit(&owner);
        assert!(verify(&mut client, 0, 0).await.intact, "{what}: before");
        tamper(&stack, &sql.replace("{org}", &id)).await;
        let v = verify(&mut client, 0, 0).await;
        assert!(!v.intact, "{what}: {v:?}");
        assert_eq!(v.broken_sequence, broken, "{what}: {v:?}");
        assert_eq!(
            v.broken_event_id,
            stored[broken as usize - 1].id,
            "{what}: {v:?}"
        );
        assert!(v.problem.contains(problem), "{what}: {v:?}");
        assert_eq!(v.verified, verified, "{what}: {v:?}");
    }
    stack.shutdown().await;
}

async fn retention_never_deletes_across_a_broken_link(backend: Backend) {
    let stack = Stack::start_quiet_audit(backend).await;
    let (owner, stored) = org_with_old_events(&stack, "acme").await;
    tamper(
        &stack,
        "UPDATE {events} SET details_json = '{}' WHERE org_id = 'acme' AND sequence = 4",
    )
    .await;
    let runs = enforce(&stack, 2).await;
    assert_eq!(
        runs,
        vec![paddock_audit::RetentionRun {
            organization: "organizations/acme".into(),
            deleted: 3,
            checkpoint_sequence: 3,
            broken_sequence: Some(4),
        }]
    );
    // The evidence stays: verification still names the changed event.
    let v = verify(&mut stack.audit(&owner), 0, 0).await;
    assert!(!v.intact, "{v:?}");
    assert_eq!(v.broken_sequence, 4);
    assert_eq!(v.broken_event_id, stored[3].id);
    assert!(v.problem.contains("hash mismatch"), "{v:?}");
    assert_eq!(v.checkpoint_sequence, 3);
    stack.shutdown().await;
}

async fn retention_runs_in_the_background(backend: Backend) {
    let mut stack = Stack::start_quiet_audit(backend).await;
    let (owner, _) = org_with_old_events(&stack, "acme").await;
    stack.stop_audit().await;
    stack.audit_config.retention_interval = Duration::from_millis(50);
    stack.restart_audit().await;
    let mut client = stack.audit(&owner);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let v = loop {
        let v = verify(&mut client, 0, 0).await;
        if v.checkpoint_sequence == 10 {
            break v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no retention pass within 20 s: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(v.intact && v.verified == 6, "{v:?}");
    stack.shutdown().await;
}

async fn only_security_managers_change_audit_settings(backend: Backend) {
    let stack = Stack::start_quiet_audit(backend).await;
    let owner = org(&stack, "acme").await;
    let globex = org(&stack, "globex").await;
    let admin = member(&stack, &owner, "acme", "admin").await;
    let dev = developer(&stack, &owner, "acme").await;

    // An admin reads (audit.read) but may not change (security.manage).
    let mut a = stack.audit(&admin);
    assert_eq!(get_settings(&mut a).await.retention_days, 0);
    let err = a
        .update_audit_settings(UpdateAuditSettingsRequest {
            settings: Some(AuditSettings {
                retention_days: 1,
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .expect_err("admin updates");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("security.manage"),
        "{}",
        err.message()
    );
    // A developer does neither.
    let mut d = stack.audit(&dev);
    assert_eq!(
        code(
            d.get_audit_settings(GetAuditSettingsRequest::default())
                .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            d.update_audit_settings(UpdateAuditSettingsRequest {
                settings: Some(AuditSettings::default()),
                update_mask: None,
            })
            .await
        ),
        Code::PermissionDenied
    );
    // Refused changes change nothing; the refusals themselves are in the
    // trail, recorded by the audit service (one per refused call).
    let mut o = stack.audit(&owner);
    assert_eq!(get_settings(&mut o).await.retention_days, 0);
    let events = query(&mut o, EventFilter::default()).await;
    assert_eq!(events.len(), 3, "{events:#?}");
    assert!(
        events
            .iter()
            .all(|e| e.action == "authz.deny" && e.source_service == "audit"),
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.details_json.contains("security.manage")),
        "the missing permission is named: {events:#?}"
    );

    // Another organization's settings do not exist for the caller.
    for name in ["organizations/globex/auditSettings", "organizations/globex"] {
        assert_eq!(
            code(
                o.get_audit_settings(GetAuditSettingsRequest { name: name.into() })
                    .await
            ),
            Code::NotFound,
            "{name}"
        );
        assert_eq!(
            code(
                o.update_audit_settings(UpdateAuditSettingsRequest {
                    settings: Some(AuditSettings {
                        name: name.into(),
                        retention_days: 1,
                        ..Default::default()
                    }),
                    update_mask: None,
                })
                .await
            ),
            Code::NotFound,
            "{name}"
        );
    }
    assert_eq!(
        get_settings(&mut stack.audit(&globex)).await.retention_days,
        0
    );

    // Bad values.
    let bad: Vec<UpdateAuditSettingsRequest> = vec![
        UpdateAuditSettingsRequest::default(),
        UpdateAuditSettingsRequest {
            settings: Some(AuditSettings {
                retention_days: -1,
                ..Default::default()
            }),
            update_mask: None,
        },
        UpdateAuditSettingsRequest {
            settings: Some(AuditSettings {
                retention_days: 36_501,
                ..Default::default()
            }),
            update_mask: None,
        },
        UpdateAuditSettingsRequest {
            settings: Some(AuditSettings::default()),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["name".into()],
            }),
        },
    ];
    for req in bad {
        let what = format!("{req:?}");
        assert_eq!(
            code(o.update_audit_settings(req).await),
            Code::InvalidArgument,
            "{what}"
        );
    }
    // The owner may, by full name too.
    let set = o
        .update_audit_settings(UpdateAuditSettingsRequest {
            settings: Some(AuditSettings {
                name: "organizations/acme/auditSettings".into(),
                retention_days: 7,
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .expect("owner updates")
        .into_inner()
        .settings
        .expect("settings");
    assert_eq!(set.retention_days, 7);
    assert_eq!(get_settings(&mut a).await.retention_days, 7);
    // The three refusals and the change, all chained.
    let v = verify(&mut o, 0, 0).await;
    assert!(v.intact && v.verified == 4, "{v:?}");
    stack.shutdown().await;
}

/// A second key of the organization's owner; returns (secret, key name).
async fn second_owner_key(stack: &Stack, owner: &str, org: &str) -> (String, String) {
    let me = stack
        .identity(owner)
        .who_am_i(paddock_proto::identity::v1::WhoAmIRequest {})
        .await
        .expect("whoami")
        .into_inner()
        .principal
        .expect("principal")
        .name;
    let key = paddock_testkit::fixtures::mint_key(stack, owner, org, &me, "", &[])
        .await
        .expect("mint a key");
    (key.secret, key.api_key.expect("key").name)
}

/// The next message of a tail, waiting at most `secs`.
async fn next(
    stream: &mut tonic::Streaming<TailEventsResponse>,
    secs: u64,
) -> Result<Option<TailEventsResponse>, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(secs), stream.message())
        .await
        .expect("the tail answers in time")
}

async fn revoking_a_key_ends_its_tails(backend: Backend) {
    let stack = Stack::start_quiet_audit(backend).await;
    let owner = org(&stack, "acme").await;
    let (key, key_name) = second_owner_key(&stack, &owner, "acme").await;
    let mut revoked_tail = stack
        .audit(&key)
        .tail_events(TailEventsRequest::default())
        .await
        .expect("tail")
        .into_inner();
    let mut other_tail = stack
        .audit(&owner)
        .tail_events(TailEventsRequest::default())
        .await
        .expect("tail")
        .into_inner();
    let first = append_n(&stack, "acme", 1).await;
    let got = next(&mut revoked_tail, 5)
        .await
        .expect("ok")
        .expect("event");
    assert_eq!(got.event.expect("event").id, first[0].id);

    stack
        .identity(&owner)
        .revoke_api_key(paddock_proto::identity::v1::RevokeApiKeyRequest { name: key_name })
        .await
        .expect("revoke");
    // Identity pushes the revocation; the 5 s re-check is the fallback.
    let end = next(&mut revoked_tail, 20)
        .await
        .expect_err("the tail ends with an error");
    assert_eq!(end.code(), Code::Unauthenticated, "{end:?}");
    assert!(end.message().contains("revoked"), "{}", end.message());
    assert!(
        end.metadata().get("paddock-key-organization").is_none(),
        "no service-only metadata"
    );

    // The other key's tail goes on.
    let second = append_n(&stack, "acme", 1).await;
    let got = next(&mut other_tail, 5).await.expect("ok").expect("event");
    assert_eq!(got.event.expect("event").id, first[0].id);
    let got = next(&mut other_tail, 5).await.expect("ok").expect("event");
    assert_eq!(got.event.expect("event").id, second[0].id);
    stack.shutdown().await;
}

async fn tails_are_capped_per_caller_and_organization(backend: Backend) {
    let mut stack = Stack::start_quiet_audit(backend).await;
    stack.stop_audit().await;
    stack.audit_config.max_tails_per_caller = 2;
    stack.audit_config.max_tails_per_org = 3;
    stack.restart_audit().await;
    let owner = org(&stack, "acme").await;
    let admin = member(&stack, &owner, "acme", "admin").await;
    let other = org(&stack, "globex").await;
    let open = |token: String| {
        let mut client = stack.audit(&token);
        async move {
            client
                .tail_events(TailEventsRequest::default())
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let first = open(owner.clone()).await.expect("first");
    let _second = open(owner.clone()).await.expect("second");
    let third = open(owner.clone())
        .await
        .expect_err("a third of one caller");
    assert_eq!(third.code(), Code::ResourceExhausted);
    assert!(
        third.message().contains("2 per caller"),
        "{}",
        third.message()
    );
    let _admins = open(admin.clone()).await.expect("another caller");
    let full = open(admin.clone())
        .await
        .expect_err("the organization's cap");
    assert_eq!(full.code(), Code::ResourceExhausted);
    assert!(
        full.message().contains("3 per organization"),
        "{}",
        full.message()
    );
    // Another organization has its own count.
    let _globex = open(other.clone()).await.expect("another organization");

    // A closed tail gives its place back (once the server sees it go).
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match open(admin.clone()).await {
            Ok(_) => break,
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the place is given back"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("unexpected {s:?}"),
        }
    }
    stack.shutdown().await;
}

async fn tails_never_skip_or_repeat_events(backend: Backend) {
    let stack = Stack::start_quiet_audit(backend).await;
    let owner = org(&stack, "acme").await;
    append_n(&stack, "acme", 3).await;
    let open = |cursor: &str| {
        let mut client = stack.audit(&owner);
        let after_cursor = cursor.to_owned();
        async move {
            client
                .tail_events(TailEventsRequest {
                    after_cursor,
                    ..Default::default()
                })
                .await
                .expect("tail")
                .into_inner()
        }
    };
    // One tail read as events come, one from a cursor, one not read at
    // all while hundreds of commits go by (it falls behind the in-process
    // broadcast and must catch up from the database).
    let mut live = open("").await;
    let mut resumed = open("0000000000000001").await;
    let mut idle = open("").await;
    // Large events fill the idle tail's flow-control window early.
    let total = 600usize;
    let padding = serde_json::json!({ "pad": "x".repeat(16 * 1024) }).to_string();
    let writer = {
        let mut svc = stack.audit_as_service();
        tokio::spawn(async move {
            for i in 0..total {
                // One, two or three events per commit.
                let n = 1 + i % 3;
                let events: Vec<AuditEvent> = (0..n)
                    .map(|_| AuditEvent {
                        details_json: padding.clone(),
                        ..event("acme", "test.event")
                    })
                    .collect();
                svc.append_events(AppendEventsRequest { events })
                    .await
                    .expect("append");
            }
        })
    };
    let appended: i64 = (0..total).map(|i| 1 + (i % 3) as i64).sum();
    let head = 3 + appended;
    async fn collect(
        stream: &mut tonic::Streaming<TailEventsResponse>,
        from: i64,
        head: i64,
    ) -> Vec<i64> {
        let mut seen = Vec::new();
        while seen.last().copied().unwrap_or(from) < head {
            let msg = next(stream, 30).await.expect("ok").expect("event");
            seen.push(msg.event.expect("event").sequence);
        }
        seen
    }
    let live_seen = collect(&mut live, 3, head).await;
    writer.await.expect("writer");
    let resumed_seen = collect(&mut resumed, 1, head).await;
    let idle_seen = collect(&mut idle, 3, head).await;
    assert_eq!(live_seen, (4..=head).collect::<Vec<_>>());
    assert_eq!(resumed_seen, (2..=head).collect::<Vec<_>>());
    assert_eq!(idle_seen, (4..=head).collect::<Vec<_>>());
    // Nothing more arrives after the head.
    let extra = append_n(&stack, "acme", 1).await;
    for stream in [&mut live, &mut resumed, &mut idle] {
        let msg = next(stream, 5).await.expect("ok").expect("event");
        let event = msg.event.expect("event");
        assert_eq!(
            (event.sequence, event.id.as_str()),
            (head + 1, extra[0].id.as_str())
        );
    }
    stack.shutdown().await;
}

/// Calls QueryEvents `n` times from `local` (a loopback address) with
/// tokens naming key `key_id` and random secrets; each is refused.
async fn bad_secrets(stack: &Stack, local: &str, key_id: &str, n: usize) {
    let channel = tonic::transport::Endpoint::from_shared(stack.audit_endpoint.clone())
        .expect("endpoint")
        .local_address(Some(local.parse().expect("ip")))
        .connect_lazy();
    for _ in 0..n {
        let token =
            paddock_shared::token::mint_with_id(paddock_shared::token::TokenKind::ApiKey, key_id);
        let refused =
            AuditServiceClient::with_interceptor(channel.clone(), paddock_testkit::bearer(&token))
                .query_events(QueryEventsRequest::default())
                .await;
        assert_eq!(code(refused), Code::Unauthenticated);
    }
}

async fn auth_failures_are_budgeted_per_source_and_key(backend: Backend) {
    let stack = Stack::start_quiet_audit(backend).await;
    let owner = org(&stack, "acme").await;
    let key_id = paddock_shared::token::parse(&owner)
        .expect("token")
        .id
        .to_owned();
    let budget = paddock_shared::audit::SOURCE_EVENTS_PER_MINUTE as usize;
    let failures = |events: Vec<AuditEvent>| {
        events
            .into_iter()
            .filter(|e| e.action == "auth.fail")
            .collect::<Vec<_>>()
    };
    let mut client = stack.audit(&owner);
    let flood = EventFilter {
        action_prefix: "auth.fail".into(),
        ..Default::default()
    };
    // A burst from one address: at most the budget reaches the chain (all
    // of it, unless the burst outlasted a minute).
    bad_secrets(&stack, "127.0.0.1", &key_id, budget + 30).await;
    let recorded = failures(query(&mut client, flood.clone()).await);
    assert!(
        recorded.len() <= budget && recorded.len() > budget / 2,
        "{} of {} recorded",
        recorded.len(),
        budget + 30
    );
    assert!(
        recorded
            .iter()
            .all(|e| e.actor.as_ref().is_some_and(|a| a.key_id == key_id))
    );
    // Another source naming the same key has a budget of its own.
    bad_secrets(&stack, "127.0.0.2", &key_id, 3).await;
    let after = failures(query(&mut client, flood).await);
    assert_eq!(after.len(), recorded.len() + 3);
    let v = verify(&mut client, 0, 0).await;
    assert!(v.intact, "{v:?}");
    stack.shutdown().await;
}

/// The platform's view of a deleted organization's sealed chain.
async fn sealed_events(stack: &Stack, org: &str) -> Result<Vec<AuditEvent>, tonic::Status> {
    stack
        .audit(stack.bootstrap_token().expose())
        .query_platform_events(QueryPlatformEventsRequest {
            organization: format!("organizations/{org}"),
            oldest_first: true,
            page_size: 1000,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().events)
}

async fn deleting_an_organization_seals_its_chain(backend: Backend) {
    // Identity delivers its events here: its organization.delete seals.
    let stack = Stack::start(backend).await;
    let owner = org(&stack, "acme").await;
    let other = org(&stack, "globex").await;
    let mut tail = stack
        .audit(&owner)
        .tail_events(TailEventsRequest::default())
        .await
        .expect("tail")
        .into_inner();
    // The platform reads no live organization's chain.
    assert_eq!(code(sealed_events(&stack, "acme").await), Code::NotFound);

    stack
        .identity(&owner)
        .delete_organization(paddock_proto::identity::v1::DeleteOrganizationRequest {
            name: "organizations/acme".into(),
        })
        .await
        .expect("delete the organization");
    // Sealed once identity's outbox delivered the deletion.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let sealed = loop {
        match sealed_events(&stack, "acme").await {
            Ok(events) => break events,
            Err(s) if s.code() == Code::NotFound => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the chain is sealed"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("unexpected {s:?}"),
        }
    };
    let delete = sealed.last().expect("events");
    assert_eq!(
        (delete.action.as_str(), delete.source_service.as_str()),
        ("organization.delete", "identity")
    );
    // The open tail ends: its key is gone, and the chain is sealed.
    let ended = loop {
        match next(&mut tail, 20).await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the tail ends with an error"),
            Err(s) => break s,
        }
    };
    assert!(
        matches!(ended.code(), Code::NotFound | Code::Unauthenticated),
        "{ended:?}"
    );

    // What arrives later (a runner's sandbox.end after the purge) is still
    // chained, and the platform verifies the whole chain.
    let late = AuditEvent {
        source_service: "sandbox-runner".into(),
        ..event("acme", "sandbox.end")
    };
    assert_eq!(append(&stack, vec![late.clone()]).await, 1);
    let after = sealed_events(&stack, "acme").await.expect("platform reads");
    assert_eq!(after.last().map(|e| e.id.as_str()), Some(late.id.as_str()));
    let verified = stack
        .audit(stack.bootstrap_token().expose())
        .verify_platform_chain(VerifyPlatformChainRequest {
            organization: "acme".into(),
            ..Default::default()
        })
        .await
        .expect("verify")
        .into_inner()
        .result
        .expect("result");
    assert!(verified.intact, "{verified:?}");
    assert_eq!(verified.verified, after.len() as i64);

    // Only identity's record of a deletion seals: another service's event
    // of that name leaves a chain open.
    let forged = AuditEvent {
        source_service: "sandbox-runner".into(),
        ..event("globex", "organization.delete")
    };
    assert_eq!(append(&stack, vec![forged]).await, 1);
    assert_eq!(code(sealed_events(&stack, "globex").await), Code::NotFound);
    let mut globex = stack.audit(&other);
    assert!(!query(&mut globex, EventFilter::default()).await.is_empty());

    // A later organization with the same id (if identity lets one be made)
    // never reads the sealed chain.
    let again = stack
        .identity(stack.bootstrap_token().expose())
        .create_organization(paddock_proto::identity::v1::CreateOrganizationRequest {
            organization_id: "acme".into(),
            display_name: "Acme again".into(),
            owner_email: "new@acme.test".into(),
        })
        .await;
    match again {
        Ok(created) => {
            let mut c = stack.audit(&created.into_inner().owner_key_secret);
            let refused = [
                code(c.query_events(QueryEventsRequest::default()).await),
                code(c.verify_chain(VerifyChainRequest::default()).await),
                code(c.tail_events(TailEventsRequest::default()).await),
                code(c.export_events(ExportEventsRequest::default()).await),
                code(
                    c.get_audit_settings(GetAuditSettingsRequest::default())
                        .await,
                ),
            ];
            assert_eq!(refused, [Code::NotFound; 5]);
        }
        Err(s) => assert!(
            matches!(s.code(), Code::AlreadyExists | Code::FailedPrecondition),
            "{s:?}"
        ),
    }
    stack.shutdown().await;
}

backend_tests!(
    deleting_an_organization_seals_its_chain,
    auth_failures_are_budgeted_per_source_and_key,
    revoking_a_key_ends_its_tails,
    tails_are_capped_per_caller_and_organization,
    tails_never_skip_or_repeat_events,
    retention_deletes_old_events_and_keeps_the_chain_verifiable,
    tampering_after_retention_is_named,
    retention_never_deletes_across_a_broken_link,
    retention_runs_in_the_background,
    only_security_managers_change_audit_settings,
    replicas_never_fork_a_chain,
    append_is_idempotent,
    orgs_are_isolated,
    bad_input_is_invalid_argument,
    filters_select_events,
    pagination_is_stable_under_concurrent_appends,
    tail_delivers_and_resumes,
    verify_names_the_first_broken_link,
);
