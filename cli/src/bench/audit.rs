//! `paddock bench audit`: starts identity, authz and audit in process on
//! port 0 with a fresh data dir, then measures, with the same events:
//!
//! - `storage.raw_batch_insert` (the baseline): the rows audit would store
//!   (hashed, unchained), as plain batched, durable INSERTs of as many rows
//!   per statement as audit's, one transaction per batch, into a table of
//!   the same shape and indexes as audit's `events` in the same database;
//! - `audit.append`: AppendEvents end to end (chained, durable before the
//!   ack), in batches, one writer per organization;
//! - `audit.query_first_page`: QueryEvents with an actor + last-24 h filter,
//!   first page, once at least `--events` events are stored.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use paddock_proto::audit::v1::audit_service_client::AuditServiceClient;
use paddock_proto::audit::v1::{
    Actor, AppendEventsRequest, AuditEvent, EventFilter, Outcome, QueryEventsRequest,
};
use paddock_proto::identity::v1::CreateOrganizationRequest;
use paddock_shared::auth::{BearerAuth, identity_client, lazy_channel};
use paddock_shared::db::Database;
use paddock_shared::secret::Secret;
use paddock_shared::time::{now_micros, timestamp};
use rand::Rng;
use serde_json::{Value, json};
use sqlx::AssertSqlSafe;
use tonic::Code;

use super::{Sample, internal, print_report, round3};
use crate::Global;
use crate::dev::{self, StackOptions};
use crate::error::CliError;
use crate::names;

#[derive(Debug, Args)]
pub struct AuditBenchArgs {
    /// Events stored before the query row is measured.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: usize,
    /// Events each of the throughput rows writes.
    #[arg(long, default_value_t = 200_000)]
    pub measured_events: usize,
    /// Events per batch (one INSERT transaction / one AppendEvents call).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub batch: u16,
    /// Concurrent writers (one organization each).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub writers: u16,
    /// How long the query row is measured.
    #[arg(long, default_value = "10s", value_parser = names::parse_positive_duration)]
    pub duration: Duration,
    /// PostgreSQL for the services; a fresh SQLite database when unset.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

/// Distinct actors in the generated events.
const ACTORS: usize = 1000;
/// Generated event times spread over this many days before now.
const SPREAD_DAYS: i64 = 7;

pub(super) async fn run(global: &Global, args: AuditBenchArgs) -> Result<(), CliError> {
    paddock_shared::telemetry::init_quiet(&[]);
    let data_dir = std::env::temp_dir().join(format!(
        "paddock-bench-audit-{}-{}",
        std::process::id(),
        now_micros()
    ));
    let result = run_in(&args, &data_dir).await;
    let _ = std::fs::remove_dir_all(&data_dir);
    print_report(global, &result?);
    Ok(())
}

/// A batch of events for `org`, as an emitting service would send them.
fn batch(org: &str, size: usize) -> Vec<AuditEvent> {
    let mut rng = rand::rng();
    let now = now_micros();
    (0..size)
        .map(|_| {
            let actor = rng.random_range(0..ACTORS);
            let age = rng.random_range(0..SPREAD_DAYS * 86_400_000_000);
            AuditEvent {
                id: uuid::Uuid::now_v7().to_string(),
                time: Some(timestamp(now - age)),
                organization: org.to_owned(),
                actor: Some(Actor {
                    principal_id: format!("m{actor:015}"),
                    kind: "PRINCIPAL_KIND_MEMBER".into(),
                    display_name: format!("user{actor}@bench.example"),
                    key_id: format!("k{actor:011}"),
                }),
                action: "project.update".into(),
                resource: format!("{org}/projects/p{}", actor % 50),
                outcome: Outcome::Success as i32,
                source_service: "identity".into(),
                trace_id: format!("{:032x}", rng.random::<u128>()),
                details_json: r#"{"update_mask":["display_name"]}"#.into(),
                ..Default::default()
            }
        })
        .collect()
}

async fn run_in(args: &AuditBenchArgs, data_dir: &Path) -> Result<Value, CliError> {
    let loopback0 = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let database_url = args.database_url.clone().filter(|u| !u.trim().is_empty());
    let stack = dev::start_stack(StackOptions {
        data_dir: data_dir.to_owned(),
        identity_listen: loopback0,
        authz_listen: loopback0,
        audit_listen: loopback0,
        database_url: database_url.clone(),
        skip: Vec::new(),
        identity_endpoint: String::new(),
        authz_endpoint: String::new(),
        audit_endpoint: String::new(),
        sandbox_endpoint: String::new(),
    })
    .await?;
    let result = measure_all(args, data_dir, database_url.as_deref(), &stack).await;
    stack.shutdown().await;
    result
}

async fn measure_all(
    args: &AuditBenchArgs,
    data_dir: &Path,
    database_url: Option<&str>,
    stack: &dev::Stack,
) -> Result<Value, CliError> {
    let service = paddock_shared::server::load_or_create_token(
        &data_dir.join("service-token"),
        paddock_shared::token::TokenKind::Service,
    )
    .map_err(|e| internal("service token", e))?;
    let bootstrap = std::fs::read_to_string(data_dir.join("bootstrap-token"))
        .map_err(|e| internal("bootstrap token", e))?;
    let org_id = format!("bench-{}", now_micros() % 1_000_000);
    let created = identity_client(
        &stack.endpoints.identity,
        BearerAuth::new(&Secret::new(bootstrap.trim().to_owned()))
            .map_err(|s| internal("token", s.message()))?,
    )
    .map_err(|s| internal("identity", s.message()))?
    .create_organization(CreateOrganizationRequest {
        organization_id: org_id.clone(),
        display_name: "bench".into(),
        owner_email: "owner@bench.example".into(),
    })
    .await
    .map_err(|s| internal("create organization", s.message()))?
    .into_inner();
    let owner = Secret::new(created.owner_key_secret);
    let channel =
        lazy_channel(&stack.endpoints.audit).map_err(|s| internal("audit", s.message()))?;
    let as_service = AuditServiceClient::with_interceptor(
        channel.clone(),
        BearerAuth::new(&service).map_err(|s| internal("token", s.message()))?,
    );
    let as_owner = AuditServiceClient::with_interceptor(
        channel,
        BearerAuth::new(&owner).map_err(|s| internal("token", s.message()))?,
    );
    let writers = usize::from(args.writers);
    let batch_size = usize::from(args.batch);
    // Writer 0 writes the organization the owner queries.
    let orgs: Vec<String> = (0..writers)
        .map(|w| {
            if w == 0 {
                format!("organizations/{org_id}")
            } else {
                format!("organizations/{org_id}-w{w}")
            }
        })
        .collect();
    let per_writer = args.measured_events.div_ceil(writers);

    // Baseline: the same rows straight into the same database.
    let db = Database::connect("audit", data_dir, database_url, paddock_audit::MIGRATIONS)
        .await
        .map_err(|e| internal("open the audit database", e))?;
    let raw = raw_inserts(&db, &orgs, per_writer, batch_size).await?;
    eprintln!("storage.raw_batch_insert: {:.0} events/s", raw.ops_per_s);

    let append = appends(&as_service, &orgs, per_writer, batch_size).await?;
    eprintln!("audit.append: {:.0} events/s", append.ops_per_s);

    // Fill up to --events stored events (not measured).
    let stored = per_writer * writers;
    if args.events > stored {
        let rest = (args.events - stored).div_ceil(writers);
        eprintln!("storing {} more events for the query row", rest * writers);
        appends(&as_service, &orgs, rest, batch_size).await?;
    }

    let query = first_pages(&as_owner, &orgs[0], args.duration).await?;
    eprintln!(
        "audit.query_first_page: p50 {}µs, p99 {}µs",
        query.p50_us, query.p99_us
    );
    db.pool.close().await;
    Ok(report(&raw, &append, &query))
}

/// The §10 report: append compares throughput, the query its p50.
fn report(raw: &Sample, append: &Sample, query: &Sample) -> Value {
    let ratio = |a: f64, b: f64| if b > 0.0 { round3(a / b) } else { 0.0 };
    json!({
        "area": "audit",
        "rows": [
            {"name": "storage.raw_batch_insert", "baseline": null, "ops_per_s": raw.ops_per_s.round() as u64,
             "p50_us": raw.p50_us, "p99_us": raw.p99_us, "ratio_to_baseline": 1.0},
            {"name": "audit.append", "baseline": "storage.raw_batch_insert", "ratio_of": "ops_per_s",
             "ops_per_s": append.ops_per_s.round() as u64, "p50_us": append.p50_us, "p99_us": append.p99_us,
             "ratio_to_baseline": ratio(append.ops_per_s, raw.ops_per_s),
             "added_p50_us": i64::from(append.p50_us) - i64::from(raw.p50_us),
             "added_p99_us": i64::from(append.p99_us) - i64::from(raw.p99_us)},
            {"name": "audit.query_first_page", "baseline": "storage.raw_batch_insert", "ratio_of": "p50_us",
             "ops_per_s": query.ops_per_s.round() as u64, "p50_us": query.p50_us, "p99_us": query.p99_us,
             "ratio_to_baseline": ratio(f64::from(query.p50_us), f64::from(raw.p50_us)),
             "added_p50_us": i64::from(query.p50_us) - i64::from(raw.p50_us),
             "added_p99_us": i64::from(query.p99_us) - i64::from(raw.p99_us)},
        ]
    })
}

/// Per-batch latencies, with throughput counted in events.
fn events_sample(latencies: Vec<u32>, elapsed: Duration, events: usize) -> Sample {
    let mut sample = Sample::from_latencies(latencies, elapsed);
    sample.ops_per_s = events as f64 / elapsed.as_secs_f64().max(1e-9);
    sample
}

/// Creates `bench_raw_events` with the shape and indexes audit's `events`
/// table has now in this database (read from the database itself, so the
/// baseline follows audit's schema).
async fn create_baseline_table(db: &Database) -> Result<(), CliError> {
    let statements: Vec<String> = match db.backend {
        paddock_shared::db::Backend::Postgres => {
            vec!["CREATE TABLE bench_raw_events (LIKE events INCLUDING ALL)".into()]
        }
        paddock_shared::db::Backend::Sqlite => {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT type, sql FROM sqlite_master WHERE tbl_name = 'events' AND sql IS NOT NULL ORDER BY type DESC",
            )
            .fetch_all(&db.pool)
            .await
            .map_err(|e| internal("read audit's schema", e))?;
            rows.into_iter()
                .map(|(kind, sql)| {
                    if kind == "table" {
                        sql.replacen("CREATE TABLE events", "CREATE TABLE bench_raw_events", 1)
                    } else {
                        sql.replacen("CREATE INDEX events_", "CREATE INDEX bench_raw_events_", 1)
                            .replacen(" ON events ", " ON bench_raw_events ", 1)
                    }
                })
                .collect()
        }
    };
    if !statements
        .first()
        .is_some_and(|s| s.contains("bench_raw_events"))
    {
        return Err(internal("read audit's schema", "no events table"));
    }
    for sql in statements {
        sqlx::query(AssertSqlSafe(sql))
            .execute(&db.pool)
            .await
            .map_err(|e| internal("create the baseline table", e))?;
    }
    Ok(())
}

const RAW_COLUMNS: &str = "id, org_id, sequence, time, actor_id, actor_kind, actor_name, actor_key_id, action, resource, outcome, error_code, source_service, trace_id, details_json, previous_hash, hash";

async fn raw_inserts(
    db: &Database,
    orgs: &[String],
    per_writer: usize,
    batch_size: usize,
) -> Result<Sample, CliError> {
    create_baseline_table(db).await?;
    let started = Instant::now();
    // One writer at a time, as the database allows and as audit's group
    // commit does; SQLite's busy-waiting would otherwise dominate.
    let write_lock = Arc::new(tokio::sync::Mutex::new(()));
    let mut tasks = Vec::new();
    for org in orgs {
        let (pool, org, backend) = (db.pool.clone(), org.clone(), db.backend);
        let write_lock = write_lock.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            if backend == paddock_shared::db::Backend::Sqlite {
                // The connection settings audit's appends run with:
                // durable before the commit returns (synchronous=FULL),
                // the same page cache and WAL checkpoint size.
                sqlx::Executor::execute(&mut *conn, paddock_audit::SQLITE_APPEND_PRAGMAS).await?;
            }
            let mut latencies = Vec::new();
            let mut sequence = 0i64;
            let mut written = 0;
            while written < per_writer {
                let n = batch_size.min(per_writer - written);
                let events = batch(&org, n);
                let t0 = Instant::now();
                let _writing = write_lock.lock().await;
                let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
                for chunk in events.chunks(paddock_audit::INSERT_ROWS) {
                    // Placeholders as audit writes them (`?` on SQLite).
                    let mut sql = format!("INSERT INTO bench_raw_events ({RAW_COLUMNS}) VALUES ");
                    for i in 0..chunk.len() {
                        sql.push_str(if i == 0 { "(" } else { ", (" });
                        paddock_audit::push_placeholders(&mut sql, backend, i * 17 + 1, 17);
                        sql.push(')');
                    }
                    let mut q = sqlx::query(AssertSqlSafe(sql));
                    for e in chunk {
                        sequence += 1;
                        let actor = e.actor.clone().unwrap_or_default();
                        let hash = paddock_shared::audit::event_hash(e);
                        q = q
                            .bind(e.id.clone())
                            .bind(e.organization.clone())
                            .bind(sequence)
                            .bind(
                                e.time
                                    .as_ref()
                                    .map_or(0, paddock_shared::time::timestamp_micros),
                            )
                            .bind(actor.principal_id)
                            .bind(actor.kind)
                            .bind(actor.display_name)
                            .bind(actor.key_id)
                            .bind(e.action.clone())
                            .bind(e.resource.clone())
                            .bind(i64::from(e.outcome))
                            .bind(e.error_code.clone())
                            .bind(e.source_service.clone())
                            .bind(e.trace_id.clone())
                            .bind(e.details_json.clone())
                            .bind(paddock_shared::audit::GENESIS_HASH)
                            .bind(hash);
                    }
                    q.execute(&mut *tx).await?;
                }
                tx.commit().await?;
                latencies.push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
                written += n;
            }
            Ok::<_, sqlx::Error>(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(
            t.await
                .map_err(|e| internal("baseline writer", e))?
                .map_err(|e| internal("baseline insert", e))?,
        );
    }
    Ok(events_sample(
        all,
        started.elapsed(),
        per_writer * orgs.len(),
    ))
}

type AuditClient = AuditServiceClient<
    tonic::service::interceptor::InterceptedService<paddock_shared::client::Channel, BearerAuth>,
>;

async fn appends(
    client: &AuditClient,
    orgs: &[String],
    per_writer: usize,
    batch_size: usize,
) -> Result<Sample, CliError> {
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for org in orgs {
        let (mut client, org, done) = (client.clone(), org.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut written = 0;
            while written < per_writer {
                let n = batch_size.min(per_writer - written);
                let events = batch(&org, n);
                let t0 = Instant::now();
                let resp = client
                    .append_events(AppendEventsRequest { events })
                    .await?
                    .into_inner();
                latencies.push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
                if usize::try_from(resp.appended).unwrap_or(0) != n {
                    return Err(tonic::Status::internal(format!(
                        "appended {} of {n}",
                        resp.appended
                    )));
                }
                written += n;
                let total = done.fetch_add(n, Ordering::Relaxed) + n;
                if total % 100_000 < n {
                    eprintln!("appended {total} events");
                }
            }
            Ok::<_, tonic::Status>(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(
            t.await
                .map_err(|e| internal("append writer", e))?
                .map_err(|s| CliError::new(s.code(), format!("AppendEvents: {}", s.message())))?,
        );
    }
    Ok(events_sample(
        all,
        started.elapsed(),
        per_writer * orgs.len(),
    ))
}

async fn first_pages(
    client: &AuditClient,
    org: &str,
    duration: Duration,
) -> Result<Sample, CliError> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut latencies = Vec::new();
    let mut client = client.clone();
    let mut rng = rand::rng();
    let mut empty = 0usize;
    while Instant::now() < deadline {
        let actor = rng.random_range(0..ACTORS);
        let request = QueryEventsRequest {
            parent: org.to_owned(),
            filter: Some(EventFilter {
                actor: format!("m{actor:015}"),
                start_time: Some(timestamp(now_micros() - 86_400_000_000)),
                ..Default::default()
            }),
            page_size: 50,
            page_token: String::new(),
            oldest_first: false,
        };
        let t0 = Instant::now();
        let page = client
            .query_events(request)
            .await
            .map_err(|s| CliError::new(s.code(), format!("QueryEvents: {}", s.message())))?
            .into_inner();
        latencies.push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
        if page.events.is_empty() {
            empty += 1;
        }
    }
    if empty * 2 > latencies.len() {
        return Err(CliError::new(
            Code::Internal,
            "most first pages were empty: the query row would measure nothing",
        ));
    }
    Ok(Sample::from_latencies(latencies, started.elapsed()))
}
