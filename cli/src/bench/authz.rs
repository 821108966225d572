//! `paddock bench authz`: starts identity and authz in process on port 0
//! with a fresh data dir, seeds a large organization (members, agents, API
//! keys), then measures three rows with the same client stack, one shared
//! channel per server and N concurrent callers:
//!
//! - `health`: grpc.health.v1 Check on the authz server (the baseline);
//! - `authz.check`: AuthzService/Check as a developer, for projects.read;
//! - `authorized.read`: IdentityService/GetProject through the full
//!   authenticate + authorize path.
//!
//! It prints the ARCHITECTURE §10 report: a table, or with `-o json` only
//! the JSON on stdout. Progress goes to stderr.
//!
//! Seeding and the three rows live here; the report and the callers' loop
//! are the shared harness in `bench/mod.rs`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use paddock_proto::authz::v1::CheckRequest;
use paddock_proto::authz::v1::authz_service_client::AuthzServiceClient;
use paddock_proto::identity::v1::identity_service_client::IdentityServiceClient;
use paddock_proto::identity::v1::{
    AcceptInviteRequest, Agent, ApiKey, CreateAgentRequest, CreateApiKeyRequest,
    CreateInviteRequest, CreateOrganizationRequest, CreateProjectRequest, GetProjectRequest,
    Project,
};
use paddock_shared::auth::{AuthzClient, BearerAuth, IdentityClient, lazy_channel};
use paddock_shared::client::Channel;
use paddock_shared::secret::Secret;
use serde_json::Value;
use tonic::service::interceptor::InterceptedService;
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::{Op, Sample, measure, print_report, report};
use crate::Global;
use crate::dev::{self, StackOptions};
use crate::error::CliError;
use crate::names;

#[derive(Debug, Args)]
pub struct AuthzBenchArgs {
    /// How long each row is measured.
    #[arg(long, default_value = "10s", value_parser = names::parse_positive_duration)]
    pub duration: Duration,
    /// Concurrent callers per row.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Members to seed (each through CreateInvite + AcceptInvite).
    #[arg(long, default_value_t = 10_000)]
    pub members: usize,
    /// Agents to seed.
    #[arg(long, default_value_t = 1_000)]
    pub agents: usize,
    /// API keys the organization holds after seeding (members' first keys
    /// included).
    #[arg(long, default_value_t = 100_000)]
    pub keys: usize,
    /// Concurrent callers while seeding.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub seed_concurrency: u16,
    /// PostgreSQL for identity; a fresh SQLite database when unset.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Export every span over OTLP/gRPC to a receiver in this process
    /// while measuring (the cost of tracing with an exporter on).
    #[arg(long)]
    pub otlp: bool,
}

fn failed(what: &str, status: &Status) -> CliError {
    CliError::new(status.code(), format!("{what}: {}", status.message()))
}

fn missing(what: &str) -> CliError {
    CliError::new(Code::Internal, format!("identity returned no {what}"))
}

pub(super) async fn run(global: &Global, args: AuthzBenchArgs) -> Result<(), CliError> {
    if args.members == 0 {
        return Err(CliError::usage(
            "--members must be at least 1: the bench measures as a developer member",
        ));
    }
    let receiver = if args.otlp {
        let (receiver, endpoint) = super::otlp::start().await?;
        let telemetry = paddock_shared::telemetry::init_quiet_exporting(
            &["paddock-identity", "paddock-authz"],
            &endpoint,
        );
        if !telemetry.exporting() {
            return Err(CliError::new(
                Code::FailedPrecondition,
                "--otlp: tracing was already set up without an exporter",
            ));
        }
        eprintln!("exporting every span to the OTLP receiver at {endpoint}");
        Some((receiver, telemetry))
    } else {
        paddock_shared::telemetry::init_quiet(&[]);
        None
    };
    let data_dir = std::env::temp_dir().join(format!(
        "paddock-bench-{}-{}",
        std::process::id(),
        paddock_shared::time::now_micros()
    ));
    let result = authz_in(global, &args, data_dir.clone()).await;
    let _ = std::fs::remove_dir_all(&data_dir);
    if let Some((receiver, telemetry)) = receiver {
        telemetry.flush().await;
        eprintln!("the OTLP receiver got {} spans", receiver.spans());
    }
    result
}

async fn authz_in(
    global: &Global,
    args: &AuthzBenchArgs,
    data_dir: PathBuf,
) -> Result<(), CliError> {
    let loopback0 = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let stack = dev::start_stack(StackOptions {
        data_dir: data_dir.clone(),
        identity_listen: loopback0,
        authz_listen: loopback0,
        audit_listen: loopback0,
        database_url: args.database_url.clone().filter(|u| !u.trim().is_empty()),
        skip: vec![dev::Service::Audit],
        identity_endpoint: String::new(),
        authz_endpoint: String::new(),
        audit_endpoint: String::new(),
        sandbox_endpoint: String::new(),
    })
    .await?;
    eprintln!(
        "identity on {}, authz on {}, data in {}",
        stack.endpoints.identity,
        stack.endpoints.authz,
        data_dir.display()
    );
    let result = seed_and_measure(
        args,
        &stack.endpoints.identity,
        &stack.endpoints.authz,
        &data_dir,
    )
    .await;
    stack.shutdown().await;
    print_report(global, &result?);
    Ok(())
}

fn client_for(channel: &Channel, token: &Secret<String>) -> Result<IdentityClient, CliError> {
    let auth = BearerAuth::new(token).map_err(|s| CliError::new(Code::Internal, s.message()))?;
    Ok(IdentityServiceClient::with_interceptor(
        channel.clone(),
        auth,
    ))
}

/// What the seeding produced.
struct Seeded {
    parent: String,
    developer_key: Secret<String>,
    project: String,
}

async fn seed_and_measure(
    args: &AuthzBenchArgs,
    identity_endpoint: &str,
    authz_endpoint: &str,
    data_dir: &std::path::Path,
) -> Result<Value, CliError> {
    let identity_channel =
        lazy_channel(identity_endpoint).map_err(|s| failed("identity endpoint", &s))?;
    let authz_channel = lazy_channel(authz_endpoint).map_err(|s| failed("authz endpoint", &s))?;

    let seeded = seed(args, &identity_channel, data_dir).await?;

    let auth = BearerAuth::new(&seeded.developer_key)
        .map_err(|s| CliError::new(Code::Internal, s.message()))?;
    let health = HealthCheck(HealthClient::with_interceptor(
        authz_channel.clone(),
        auth.clone(),
    ));
    let check = AuthzCheck {
        client: AuthzServiceClient::with_interceptor(authz_channel.clone(), auth.clone()),
        resource: seeded.project.clone(),
    };
    let read = AuthorizedRead {
        client: IdentityServiceClient::with_interceptor(identity_channel.clone(), auth),
        project: seeded.project.clone(),
    };
    eprintln!(
        "seeded {}; measuring each row for {:?} with {} callers, interleaved in {:?} slices",
        seeded.parent, args.duration, args.concurrency, SLICE
    );

    // The rows take turns in short slices (rotating who goes first), so
    // drift in a shared, noisy machine lands on every row alike instead of
    // on whichever row happened to run during it.
    let concurrency = usize::from(args.concurrency);
    let rounds = (args.duration.as_secs_f64() / SLICE.as_secs_f64())
        .ceil()
        .max(1.0) as usize;
    let mut acc: [(Vec<u32>, Duration); 3] = Default::default();
    for round in 0..rounds {
        for k in 0..3 {
            let row = (round + k) % 3;
            let (lat, elapsed) = match row {
                0 => measure("health", health.clone(), concurrency, SLICE).await?,
                1 => measure("authz.check", check.clone(), concurrency, SLICE).await?,
                _ => measure("authorized.read", read.clone(), concurrency, SLICE).await?,
            };
            acc[row].0.extend(lat);
            acc[row].1 += elapsed;
        }
    }
    let [health, check, read] = acc.map(|(lat, elapsed)| Sample::from_latencies(lat, elapsed));
    for (name, s) in [
        ("health", &health),
        ("authz.check", &check),
        ("authorized.read", &read),
    ] {
        eprintln!(
            "{name}: {} requests, {:.0}/s, p50 {}µs, p99 {}µs",
            s.count, s.ops_per_s, s.p50_us, s.p99_us
        );
    }
    Ok(report(
        "authz",
        ("health", &health),
        &[("authz.check", &check), ("authorized.read", &read)],
    ))
}

async fn seed(
    args: &AuthzBenchArgs,
    channel: &Channel,
    data_dir: &std::path::Path,
) -> Result<Seeded, CliError> {
    let bootstrap_path = data_dir.join("bootstrap-token");
    let bootstrap = std::fs::read_to_string(&bootstrap_path).map_err(|e| {
        CliError::new(
            Code::FailedPrecondition,
            format!("cannot read {}: {e}", bootstrap_path.display()),
        )
    })?;
    let mut platform = client_for(channel, &Secret::new(bootstrap.trim().to_owned()))?;
    let org_id = format!(
        "bench-{}",
        paddock_shared::time::now_micros() % 1_000_000_000
    );
    let created = platform
        .create_organization(CreateOrganizationRequest {
            organization_id: org_id.clone(),
            display_name: "Bench".to_owned(),
            owner_email: "owner@bench.example".to_owned(),
        })
        .await
        .map_err(|s| failed("create organization", &s))?
        .into_inner();
    let parent = names::org_name(&org_id);
    let owner = client_for(channel, &Secret::new(created.owner_key_secret))?;
    let anonymous =
        IdentityServiceClient::with_interceptor(channel.clone(), BearerAuth::anonymous());
    let workers = usize::from(args.seed_concurrency);

    // Members: every tenth an admin, the rest developers.
    // Invites are created first, then accepted, each concurrently.
    let codes = {
        let (owner, parent) = (owner.clone(), parent.clone());
        parallel("member invites", args.members, workers, move |i| {
            let (mut owner, parent) = (owner.clone(), parent.clone());
            async move {
                let role = if i % 10 == 9 { "admin" } else { "developer" };
                let invite = owner
                    .create_invite(CreateInviteRequest {
                        parent,
                        email: format!("member-{i}@bench.example"),
                        role: role.to_owned(),
                        ttl: None,
                    })
                    .await?
                    .into_inner();
                Ok(invite.code)
            }
        })
        .await?
    };
    let codes = Arc::new(codes);
    let members = {
        let anonymous = anonymous.clone();
        parallel(
            "members (accepting invites)",
            codes.len(),
            workers,
            move |i| {
                let (mut anonymous, codes) = (anonymous.clone(), codes.clone());
                async move {
                    let accepted = anonymous
                        .accept_invite(AcceptInviteRequest {
                            code: codes[i].clone(),
                            key_display_name: String::new(),
                        })
                        .await?
                        .into_inner();
                    let name = accepted.member.map(|m| m.name).unwrap_or_default();
                    Ok((name, Secret::new(accepted.api_key_secret)))
                }
            },
        )
        .await?
    };

    let agents = {
        let (owner, parent) = (owner.clone(), parent.clone());
        parallel("agents", args.agents, workers, move |i| {
            let (mut owner, parent) = (owner.clone(), parent.clone());
            async move {
                let agent = owner
                    .create_agent(CreateAgentRequest {
                        parent,
                        agent_id: format!("agent-{i}"),
                        agent: Some(Agent {
                            description: "bench agent".to_owned(),
                            ..Default::default()
                        }),
                    })
                    .await?
                    .into_inner()
                    .agent
                    .map(|a| a.name)
                    .unwrap_or_default();
                Ok(agent)
            }
        })
        .await?
    };

    // Keys: the owner's and each member's first key exist already; the rest
    // go alternately to agents (minted by the owner) and members (each
    // minting its own: nobody mints a key owned by another member).
    let extra_keys = args.keys.saturating_sub(1 + members.len());
    let member_clients: Arc<Vec<(String, IdentityClient)>> = Arc::new(
        members
            .iter()
            .filter(|(n, _)| !n.is_empty())
            .map(|(n, key)| Ok((n.clone(), client_for(channel, key)?)))
            .collect::<Result<_, CliError>>()?,
    );
    let agent_names: Arc<Vec<String>> =
        Arc::new(agents.into_iter().filter(|n| !n.is_empty()).collect());
    {
        let (owner, parent) = (owner.clone(), parent.clone());
        parallel("API keys", extra_keys, workers, move |i| {
            let (mut minter, holder) =
                match (i % 2, agent_names.is_empty(), member_clients.is_empty()) {
                    (0, false, _) | (_, false, true) => (
                        owner.clone(),
                        agent_names[(i / 2) % agent_names.len()].clone(),
                    ),
                    (_, _, false) => {
                        let (name, client) = &member_clients[(i / 2) % member_clients.len()];
                        (client.clone(), name.clone())
                    }
                    _ => (owner.clone(), String::new()),
                };
            let parent = parent.clone();
            async move {
                minter
                    .create_api_key(CreateApiKeyRequest {
                        parent,
                        api_key: Some(ApiKey {
                            display_name: format!("bench-{i}"),
                            owner: holder,
                            ..Default::default()
                        }),
                        ttl: None,
                        never_expires: false,
                    })
                    .await?;
                Ok(())
            }
        })
        .await?;
    }

    let mut owner = owner;
    let project = owner
        .create_project(CreateProjectRequest {
            parent: parent.clone(),
            project_id: "web".to_owned(),
            project: Some(Project {
                display_name: "Web".to_owned(),
                ..Default::default()
            }),
        })
        .await
        .map_err(|s| failed("create project", &s))?
        .into_inner()
        .project
        .ok_or_else(|| missing("project"))?
        .name;

    // The measured caller: member 0, a developer.
    let developer_key = members
        .into_iter()
        .next()
        .map(|(_, k)| k)
        .ok_or_else(|| missing("member key"))?;
    Ok(Seeded {
        parent,
        developer_key,
        project,
    })
}

/// Runs `op(0..total)` on `workers` concurrent tasks, printing progress to
/// stderr; results in index order. The first failure stops the run.
async fn parallel<T, F, Fut>(
    label: &str,
    total: usize,
    workers: usize,
    op: F,
) -> Result<Vec<T>, CliError>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, Status>> + Send + 'static,
{
    if total == 0 {
        return Ok(Vec::new());
    }
    let started = Instant::now();
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..workers.min(total) {
        let (op, next, done, stop) = (op.clone(), next.clone(), done.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || stop.load(Ordering::Relaxed) {
                    return Ok(out);
                }
                let value = match op(i).await {
                    Ok(v) => v,
                    Err(s) => {
                        stop.store(true, Ordering::Relaxed);
                        return Err((i, s));
                    }
                };
                out.push((i, value));
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let progress = {
        let (done, label) = (done.clone(), label.to_owned());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            tick.tick().await;
            loop {
                tick.tick().await;
                let n = done.load(Ordering::Relaxed);
                eprintln!(
                    "seeding {label}: {n}/{total} ({:.0}/s)",
                    n as f64 / started.elapsed().as_secs_f64()
                );
            }
        })
    };
    let mut results = Vec::with_capacity(total);
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(part)) => results.extend(part),
            Ok(Err((i, s))) => {
                first_error.get_or_insert_with(|| failed(&format!("seeding {label} #{i}"), &s));
            }
            Err(e) => {
                first_error.get_or_insert_with(|| {
                    CliError::new(Code::Internal, format!("seeding {label}: task failed: {e}"))
                });
            }
        }
    }
    progress.abort();
    if let Some(e) = first_error {
        return Err(e);
    }
    results.sort_unstable_by_key(|(i, _)| *i);
    eprintln!(
        "seeded {total} {label} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(results.into_iter().map(|(_, v)| v).collect())
}

#[derive(Clone)]
struct HealthCheck(HealthClient<InterceptedService<Channel, BearerAuth>>);

impl Op for HealthCheck {
    async fn call(&mut self) -> Result<(), Status> {
        self.0
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|_| ())
    }
}

#[derive(Clone)]
struct AuthzCheck {
    client: AuthzClient,
    resource: String,
}

impl Op for AuthzCheck {
    async fn call(&mut self) -> Result<(), Status> {
        let resp = self
            .client
            .check(CheckRequest {
                principal: None,
                permission: "projects.read".to_owned(),
                resource: self.resource.clone(),
                resource_owner: String::new(),
            })
            .await?
            .into_inner();
        if resp.allowed {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "check denied: {}",
                resp.reason.map(|r| r.summary).unwrap_or_default()
            )))
        }
    }
}

#[derive(Clone)]
struct AuthorizedRead {
    client: IdentityClient,
    project: String,
}

impl Op for AuthorizedRead {
    async fn call(&mut self) -> Result<(), Status> {
        self.client
            .get_project(GetProjectRequest {
                name: self.project.clone(),
            })
            .await
            .map(|_| ())
    }
}

/// One measuring slice per row per round.
const SLICE: Duration = Duration::from_secs(1);
