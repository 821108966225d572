//! `paddock bench sandbox`: starts identity, authz, audit and a sandbox
//! runner in process on port 0 with a fresh data dir, then measures, one
//! operation at a time, against the same image and the same hardened spec:
//!
//! - `docker.create_start` (baseline): create + start through the Docker
//!   API directly, with the runner's hardened container spec;
//! - `sandbox.create`: CreateSandbox end to end until RUNNING (policy,
//!   quota, session token, workspace, container, record, audit);
//! - `docker.exec` (baseline): exec `true` through the Docker API, attached,
//!   until its exit code is known;
//! - `sandbox.exec`: the same through the Exec stream;
//! - `docker.stop` (baseline) and `sandbox.stop`: a cooperative process
//!   stopped (SIGTERM), until the stop returns.
//!
//! Ratios compare p50 latencies (`ratio_of: p50_us`).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::exec::{CreateExecOptions, StartExecResults};
use clap::Args;
use futures_util::StreamExt;
use paddock_proto::authz::v1::policy_service_client::PolicyServiceClient;
use paddock_proto::authz::v1::{
    AgentPolicy, SecuritySettings, UpdateAgentPolicyRequest, UpdateSecuritySettingsRequest,
};
use paddock_proto::identity::v1::{
    CreateAgentRequest, CreateOrganizationRequest, CreateProjectRequest,
};
use paddock_proto::sandbox::v1::sandbox_service_client::SandboxServiceClient;
use paddock_proto::sandbox::v1::{
    CreateSandboxRequest, ExecRequest, ExecStart, SandboxSpec, StopSandboxRequest, exec_request,
    exec_response,
};
use paddock_sandbox_runner::docker::{ContainerPlan, Engine, IDLE_COMMAND};
use paddock_shared::auth::{BearerAuth, identity_client, lazy_channel};
use paddock_shared::secret::Secret;
use paddock_shared::time::now_micros;
use serde_json::{Value, json};
use tonic::Code;

use super::{Sample, internal, print_report, round3};
use crate::Global;
use crate::dev::{self, StackOptions};
use crate::error::CliError;

#[derive(Debug, Args)]
pub struct SandboxBenchArgs {
    /// Operations measured per row (creates and stops); execs run 5× as many.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(3..=1000))]
    pub iterations: u32,
    /// The image; default a busybox image made from the host's busybox and
    /// loaded through the Docker API (no registry needed).
    #[arg(long)]
    pub image: Option<String>,
    /// The Docker Engine socket.
    #[arg(
        long,
        env = "DOCKER_HOST",
        default_value = "unix:///var/run/docker.sock"
    )]
    pub docker_host: String,
}

const BENCH_IMAGE: &str = "paddock-bench-busybox:1";

pub(super) async fn run(global: &Global, args: SandboxBenchArgs) -> Result<(), CliError> {
    paddock_shared::telemetry::init_quiet(&[]);
    let data_dir = std::env::temp_dir().join(format!(
        "paddock-bench-sandbox-{}-{}",
        std::process::id(),
        now_micros()
    ));
    let result = run_in(&args, &data_dir).await;
    let _ = std::fs::remove_dir_all(&data_dir);
    print_report(global, &result?);
    Ok(())
}

async fn run_in(args: &SandboxBenchArgs, data_dir: &Path) -> Result<Value, CliError> {
    let engine = Engine::connect(&args.docker_host)
        .map_err(|e| CliError::new(Code::FailedPrecondition, e.to_string()))?;
    engine
        .ping()
        .await
        .map_err(|e| CliError::new(Code::FailedPrecondition, e.to_string()))?;
    let image = match &args.image {
        Some(i) => i.clone(),
        None => {
            paddock_test_image::Busybox::new(BENCH_IMAGE)
                .ensure(engine.docker())
                .await
                .map_err(|e| {
                    CliError::new(Code::FailedPrecondition, format!("{e}; or pass --image"))
                })?;
            BENCH_IMAGE.to_owned()
        }
    };

    let loopback0 = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let worker = format!("bench{}", now_micros() % 1_000_000_000);
    let runner = paddock_platform::RunnerConfig {
        common: paddock_shared::config::CommonConfig::listening_on(loopback0),
        docker_host: args.docker_host.clone(),
        worker_id: Some(worker.clone()),
        ..paddock_platform::RunnerConfig::default()
    };
    let mut stack = dev::start_platform(
        StackOptions {
            data_dir: data_dir.to_owned(),
            identity_listen: loopback0,
            authz_listen: loopback0,
            audit_listen: loopback0,
            database_url: None,
            skip: Vec::new(),
            identity_endpoint: String::new(),
            authz_endpoint: String::new(),
            audit_endpoint: String::new(),
            sandbox_endpoint: String::new(),
        },
        Some(runner),
    )
    .await?;
    let result = measure_all(
        args,
        data_dir,
        &image,
        &engine,
        &stack,
        &stack.endpoints.sandbox,
        &worker,
    )
    .await;
    if let Some(runner) = stack.runner.take() {
        runner.shutdown().await;
    }
    // Whatever a failed run left behind.
    for c in engine
        .labelled_containers(&worker)
        .await
        .unwrap_or_default()
    {
        let _ = engine.remove(&c.id).await;
    }
    stack.shutdown().await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn measure_all(
    args: &SandboxBenchArgs,
    data_dir: &Path,
    image: &str,
    engine: &Engine,
    stack: &dev::Stack,
    runner_endpoint: &str,
    worker: &str,
) -> Result<Value, CliError> {
    let bootstrap = std::fs::read_to_string(data_dir.join("bootstrap-token"))
        .map_err(|e| internal("bootstrap token", e))?;
    let org_id = format!("bench-{}", now_micros() % 1_000_000);
    let mut identity = identity_client(
        &stack.endpoints.identity,
        BearerAuth::new(&Secret::new(bootstrap.trim().to_owned()))
            .map_err(|s| internal("token", s.message()))?,
    )
    .map_err(|s| internal("identity", s.message()))?;
    let created = identity
        .create_organization(CreateOrganizationRequest {
            organization_id: org_id.clone(),
            display_name: "bench".into(),
            owner_email: "owner@bench.example".into(),
        })
        .await
        .map_err(|s| internal("create organization", s.message()))?
        .into_inner();
    let owner = Secret::new(created.owner_key_secret);
    let bearer = || BearerAuth::new(&owner).map_err(|s| internal("token", s.message()));
    let mut identity = identity_client(&stack.endpoints.identity, bearer()?)
        .map_err(|s| internal("identity", s.message()))?;
    let parent = format!("organizations/{org_id}");
    identity
        .create_agent(CreateAgentRequest {
            parent: parent.clone(),
            agent_id: "bench".into(),
            agent: None,
        })
        .await
        .map_err(|s| internal("create agent", s.message()))?;
    identity
        .create_project(CreateProjectRequest {
            parent: parent.clone(),
            project_id: "bench".into(),
            project: None,
        })
        .await
        .map_err(|s| internal("create project", s.message()))?;
    // Room for every sandbox the bench keeps running at once.
    let room = i32::try_from(args.iterations)
        .unwrap_or(i32::MAX)
        .saturating_add(5);
    let mut policies = PolicyServiceClient::with_interceptor(
        lazy_channel(&stack.endpoints.authz).map_err(|s| internal("authz", s.message()))?,
        bearer()?,
    );
    policies
        .update_security_settings(UpdateSecuritySettingsRequest {
            settings: Some(SecuritySettings {
                name: format!("{parent}/securitySettings"),
                max_sandboxes: room,
                max_sandboxes_per_agent: room,
                allowed_images: vec![image.to_owned()],
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![
                    "max_sandboxes".into(),
                    "max_sandboxes_per_agent".into(),
                    "allowed_images".into(),
                ],
            }),
        })
        .await
        .map_err(|s| internal("security settings", s.message()))?;
    policies
        .update_agent_policy(UpdateAgentPolicyRequest {
            policy: Some(AgentPolicy {
                name: format!("{parent}/agents/bench/policy"),
                max_sandboxes: room,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["max_sandboxes".into()],
            }),
        })
        .await
        .map_err(|s| internal("agent policy", s.message()))?;
    let mut sandboxes = SandboxServiceClient::with_interceptor(
        lazy_channel(runner_endpoint).map_err(|s| internal("runner", s.message()))?,
        bearer()?,
    );
    let n = args.iterations as usize;
    let workspace = data_dir.join("bench-workspace");
    std::fs::create_dir_all(&workspace).map_err(|e| internal("workspace", e))?;
    let _ = std::os::unix::fs::chown(&workspace, Some(65534), Some(65534));

    // The runner's own hardened spec, straight to Docker.
    let plan = |i: usize| ContainerPlan {
        name: format!("paddock-bench-{worker}-{i}"),
        image: image.to_owned(),
        command: IDLE_COMMAND.iter().map(|s| (*s).to_owned()).collect(),
        env: vec!["HOME=/home/sandbox".into()],
        workdir: "/workspace".into(),
        user: "65534:65534".into(),
        labels: HashMap::from([
            (
                paddock_sandbox_runner::docker::LABEL_WORKER.to_owned(),
                worker.to_owned(),
            ),
            (
                paddock_sandbox_runner::docker::LABEL_SANDBOX.to_owned(),
                format!("bench{i}"),
            ),
        ]),
        cpus: 1.0,
        memory_bytes: 512 << 20,
        pids: 256,
        network: "none".into(),
        workspace: workspace.to_string_lossy().into_owned(),
        uid: 65534,
        ..Default::default()
    };
    let spec = || SandboxSpec {
        agent: "bench".into(),
        project: "bench".into(),
        image: image.to_owned(),
        ..Default::default()
    };
    let fail = |what: &str| {
        let what = what.to_owned();
        move |e: tonic::Status| internal(&what, e.message())
    };

    // Warm up both paths once (image layers, connections).
    let warm = engine
        .create_start(&plan(9999))
        .await
        .map_err(|e| internal("docker create", e))?;
    engine
        .remove(&warm)
        .await
        .map_err(|e| internal("docker rm", e))?;
    let warm = sandboxes
        .create_sandbox(CreateSandboxRequest {
            parent: String::new(),
            spec: Some(spec()),
        })
        .await
        .map_err(fail("create sandbox"))?
        .into_inner()
        .sandbox
        .ok_or_else(|| internal("create sandbox", "no sandbox"))?;
    sandboxes
        .stop_sandbox(StopSandboxRequest {
            name: warm.name,
            grace_period: None,
        })
        .await
        .map_err(fail("stop sandbox"))?;

    // Creates, alternating so drift on a shared machine hits both rows.
    let (mut docker_create, mut sandbox_create) = (Vec::new(), Vec::new());
    let (mut containers, mut names) = (Vec::new(), Vec::new());
    for i in 0..n {
        let t = Instant::now();
        let id = engine
            .create_start(&plan(i))
            .await
            .map_err(|e| internal("docker create", e))?;
        docker_create.push(micros(t));
        containers.push(id);
        let t = Instant::now();
        let sb = sandboxes
            .create_sandbox(CreateSandboxRequest {
                parent: String::new(),
                spec: Some(spec()),
            })
            .await
            .map_err(fail("create sandbox"))?
            .into_inner()
            .sandbox
            .ok_or_else(|| internal("create sandbox", "no sandbox"))?;
        sandbox_create.push(micros(t));
        names.push(sb.name);
    }
    eprintln!("created {n} containers and {n} sandboxes");

    // Execs of `true` on one of each.
    let (mut docker_exec, mut sandbox_exec) = (Vec::new(), Vec::new());
    for _ in 0..n * 5 {
        let t = Instant::now();
        docker_true(engine, &containers[0]).await?;
        docker_exec.push(micros(t));
        let t = Instant::now();
        sandbox_true(&mut sandboxes, &names[0]).await?;
        sandbox_exec.push(micros(t));
    }
    eprintln!("ran {} execs each", n * 5);

    // Cooperative stops.
    let (mut docker_stop, mut sandbox_stop) = (Vec::new(), Vec::new());
    for (id, name) in containers.iter().zip(&names) {
        let t = Instant::now();
        engine
            .stop(id, Duration::from_secs(3))
            .await
            .map_err(|e| internal("docker stop", e))?;
        docker_stop.push(micros(t));
        engine
            .remove(id)
            .await
            .map_err(|e| internal("docker rm", e))?;
        let t = Instant::now();
        sandboxes
            .stop_sandbox(StopSandboxRequest {
                name: name.clone(),
                grace_period: None,
            })
            .await
            .map_err(fail("stop sandbox"))?;
        sandbox_stop.push(micros(t));
    }

    let rows = [
        ("docker.create_start", None, docker_create),
        (
            "sandbox.create",
            Some("docker.create_start"),
            sandbox_create,
        ),
        ("docker.exec", None, docker_exec),
        ("sandbox.exec", Some("docker.exec"), sandbox_exec),
        ("docker.stop", None, docker_stop),
        ("sandbox.stop", Some("docker.stop"), sandbox_stop),
    ];
    Ok(report(rows))
}

fn micros(t: Instant) -> u32 {
    t.elapsed().as_micros().min(u32::MAX as u128) as u32
}

/// The §10 report with latency ratios.
fn report<const N: usize>(rows: [(&str, Option<&str>, Vec<u32>); N]) -> Value {
    let samples: Vec<(&str, Option<&str>, Sample)> = rows
        .into_iter()
        .map(|(name, base, lat)| {
            let total: Duration = lat
                .iter()
                .map(|us| Duration::from_micros(u64::from(*us)))
                .sum();
            (name, base, Sample::from_latencies(lat, total))
        })
        .collect();
    let find = |name: &str| {
        samples
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, _, s)| s)
    };
    let rows: Vec<Value> = samples
        .iter()
        .map(|(name, base, s)| match base.and_then(|b| find(b).map(|bs| (b, bs))) {
            None => json!({
                "name": name, "baseline": null,
                "ops_per_s": s.ops_per_s.round() as u64, "p50_us": s.p50_us, "p99_us": s.p99_us,
                "ratio_to_baseline": 1.0,
            }),
            Some((b, bs)) => json!({
                "name": name, "baseline": b, "ratio_of": "p50_us",
                "ops_per_s": s.ops_per_s.round() as u64, "p50_us": s.p50_us, "p99_us": s.p99_us,
                "ratio_to_baseline": if bs.p50_us > 0 { round3(f64::from(s.p50_us) / f64::from(bs.p50_us)) } else { 0.0 },
                "added_p50_us": i64::from(s.p50_us) - i64::from(bs.p50_us),
                "added_p99_us": i64::from(s.p99_us) - i64::from(bs.p99_us),
            }),
        })
        .collect();
    json!({ "area": "sandbox", "rows": rows })
}

async fn docker_true(engine: &Engine, container: &str) -> Result<(), CliError> {
    let docker = engine.docker();
    let exec = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(vec!["true".to_owned()]),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| internal("docker exec", e))?;
    if let StartExecResults::Attached { mut output, .. } =
        docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| internal("docker exec", e))?
    {
        while output.next().await.is_some() {}
    }
    loop {
        let info = docker
            .inspect_exec(&exec.id)
            .await
            .map_err(|e| internal("docker exec", e))?;
        if info.running != Some(true) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn sandbox_true(
    client: &mut SandboxServiceClient<
        tonic::service::interceptor::InterceptedService<
            paddock_shared::client::Channel,
            BearerAuth,
        >,
    >,
    name: &str,
) -> Result<(), CliError> {
    let start = ExecRequest {
        message: Some(exec_request::Message::Start(ExecStart {
            sandbox: name.to_owned(),
            command: vec!["true".into()],
            ..Default::default()
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(start).await.map_err(|e| internal("exec", e))?;
    let mut stream = client
        .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| internal("exec", s.message()))?
        .into_inner();
    while let Some(msg) = stream
        .message()
        .await
        .map_err(|s| internal("exec", s.message()))?
    {
        if let Some(exec_response::Message::Exit(e)) = msg.message {
            if e.exit_code != 0 {
                return Err(internal("exec", format!("true exited {}", e.exit_code)));
            }
            break;
        }
    }
    drop(tx);
    Ok(())
}
