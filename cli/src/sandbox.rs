//! `paddock run` (an agent task in a sandbox, streamed live, exiting with
//! the command's code) and `paddock sandbox` (list, get, stop, delete,
//! exec, cp, watch, usage).
//!
//! Long (about 1,160 lines without tests) because run, exec, cp and the
//! sandbox subcommands share the streaming and terminal code; it splits by
//! command (run, exec/attach, cp, list/get/stop) with the CLI split of issue
//! 10.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use paddock_proto::authz::v1::{NetworkMode, ResourceLimits};
use paddock_proto::sandbox::v1::sandbox_service_client::SandboxServiceClient;
use paddock_proto::sandbox::v1::*;
use paddock_shared::auth::{self, BearerAuth};
use paddock_shared::client::Channel;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt as _;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;

use crate::commands::{Ctx, all_pages, print_deleted};
use crate::error::CliError;
use crate::names;
use crate::output::{self, Table, print_fields, print_json};

pub type SandboxClient = SandboxServiceClient<InterceptedService<Channel, BearerAuth>>;

/// `--network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Network {
    None,
    Open,
}

/// `paddock run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The agent to run as (id or full name); default the calling agent.
    #[arg(long)]
    agent: Option<String>,
    /// The project (id or full name).
    #[arg(long)]
    project: String,
    /// The image to run (one the organization's security settings approve).
    #[arg(long)]
    image: String,
    /// CPUs, e.g. 0.5 or 2 (default: the agent policy's default).
    #[arg(long)]
    cpus: Option<f64>,
    /// Memory, e.g. 512m or 2g.
    #[arg(long, value_parser = crate::policy::parse_size)]
    memory: Option<i64>,
    /// Most processes.
    #[arg(long)]
    pids: Option<i64>,
    /// Wall-clock lifetime, e.g. 30m.
    #[arg(long, value_parser = names::parse_positive_duration)]
    ttl: Option<Duration>,
    /// Network mode (never wider than the agent policy).
    #[arg(long, value_enum)]
    network: Option<Network>,
    /// A stored credential mounted read-only: NAME:PATH (e.g.
    /// deploy-key:~/.ssh/id_ed25519). Repeatable.
    #[arg(long = "credential", value_parser = parse_credential)]
    credentials: Vec<CredentialMount>,
    /// Package caches: npm,pnpm,node-gyp,pip,cargo.
    #[arg(long, value_delimiter = ',')]
    cache: Vec<String>,
    /// K=V, repeatable.
    #[arg(long = "env", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Working directory (default /workspace).
    #[arg(long)]
    workdir: Option<String>,
    /// Start the command as the sandbox's main process, print the sandbox
    /// and return.
    #[arg(long)]
    detach: bool,
    /// Pass stdin to the command.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a TTY in the sandbox.
    #[arg(short = 't', long)]
    tty: bool,
    /// Keep the sandbox (and its workspace) after the command exits.
    #[arg(long)]
    keep: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Sandboxes you may see (running ones unless --all).
    List {
        /// Include stopped and failed sandboxes.
        #[arg(long)]
        all: bool,
        /// Only sandboxes running as this agent.
        #[arg(long)]
        agent: Option<String>,
    },
    /// One sandbox.
    Get {
        /// The sandbox's id or full resource name.
        id: String,
    },
    /// Stop a sandbox (SIGTERM, then SIGKILL after the grace period), or
    /// with --all every running sandbox of the organization, or of one
    /// agent or project: the kill switch (needs sessions.manage).
    Stop {
        /// The sandbox (id or full name); leave out with --all.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Stop every running sandbox (of --agent / --project when given).
        #[arg(long)]
        all: bool,
        /// With --all: only the sandboxes running as this agent.
        #[arg(long, requires = "all")]
        agent: Option<String>,
        /// With --all: only the sandboxes of this project.
        #[arg(long, requires = "all")]
        project: Option<String>,
        /// SIGTERM-to-SIGKILL grace, e.g. 10s (default 3s, at most 30s).
        #[arg(long, value_parser = paddock_shared::time::parse_duration)]
        grace: Option<Duration>,
    },
    /// Print a sandbox's log: the output of its main process, or of the
    /// command `paddock run` ran in it (the last 10 MiB are kept).
    Logs {
        /// The sandbox (id or full name).
        id: String,
        /// Keep printing new output until the sandbox ends.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last SIZE of the log, e.g. 4k.
        #[arg(long, value_parser = crate::policy::parse_size)]
        tail: Option<i64>,
    },
    /// Print a running sandbox's output from now on until it ends, then
    /// exit with its exit code.
    Attach {
        /// The sandbox (id or full name).
        id: String,
    },
    /// Wait until a sandbox ends and print its exit code (as `docker wait`).
    Wait {
        /// The sandbox (id or full name).
        id: String,
    },
    /// Delete a sandbox (stopping it first) and its workspace.
    Delete {
        /// The sandbox's id or full resource name.
        id: String,
    },
    /// Run a command in a running sandbox.
    Exec {
        /// Pass stdin to the command.
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Allocate a TTY.
        #[arg(short = 't', long)]
        tty: bool,
        /// Kill the command after this long.
        #[arg(long, value_parser = names::parse_positive_duration)]
        timeout: Option<Duration>,
        /// The sandbox's id or full resource name.
        id: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Copy into or out of /workspace: `cp ./dir ID:src` or `cp ID:out ./here`.
    Cp {
        /// What to copy: a local path, or ID:PATH in a sandbox.
        src: String,
        /// Where to: ID:PATH in a sandbox, or a local path.
        dst: String,
    },
    /// Follow a sandbox's state until it ends.
    Watch {
        /// The sandbox's id or full resource name.
        id: String,
    },
    /// Resource usage of a sandbox.
    Usage {
        /// The sandbox's id or full resource name.
        id: String,
    },
}

fn parse_credential(text: &str) -> Result<CredentialMount, String> {
    let (name, path) = text
        .split_once(':')
        .ok_or_else(|| format!("invalid credential {text:?}: use NAME:PATH"))?;
    if name.is_empty() || path.is_empty() {
        return Err(format!("invalid credential {text:?}: use NAME:PATH"));
    }
    Ok(CredentialMount {
        credential: name.to_owned(),
        path: path.to_owned(),
    })
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("invalid env {text:?}: use K=V"))?;
    Ok((k.to_owned(), v.to_owned()))
}

fn client(ctx: &Ctx) -> Result<SandboxClient, CliError> {
    let endpoint = &ctx.global().sandbox_endpoint;
    names::check_endpoint("--sandbox-endpoint", endpoint)?;
    Ok(SandboxServiceClient::with_interceptor(
        auth::lazy_channel(endpoint).map_err(|s| CliError::usage(s.message()))?,
        ctx.bearer()?,
    )
    .max_decoding_message_size(8 << 20))
}

/// How `paddock run` names the sandbox spec's fields.
const SPEC_FLAGS: &[(&str, &str)] = &[
    ("spec.agent", "--agent"),
    ("spec.project", "--project"),
    ("spec.image", "--image"),
    ("spec.workdir", "--workdir"),
    ("spec.resources.cpus", "--cpus"),
    ("spec.resources.memory_bytes", "--memory"),
    ("spec.resources.pids", "--pids"),
    ("spec.resources.ttl", "--ttl"),
    ("resources.cpus", "--cpus"),
    ("resources.memory_bytes", "--memory"),
    ("resources.pids", "--pids"),
    ("ttl", "--ttl"),
];

fn rpc_err(ctx: &Ctx) -> impl Fn(tonic::Status) -> CliError + '_ {
    move |s| {
        CliError::rpc(s, "sandbox-runner", &ctx.global().sandbox_endpoint).with_flags(SPEC_FLAGS)
    }
}

fn state_name(state: i32) -> &'static str {
    match SandboxState::try_from(state) {
        Ok(SandboxState::Pending) => "pending",
        Ok(SandboxState::Starting) => "starting",
        Ok(SandboxState::Running) => "running",
        Ok(SandboxState::Stopping) => "stopping",
        Ok(SandboxState::Stopped) => "stopped",
        Ok(SandboxState::Failed) => "failed",
        _ => "unknown",
    }
}

fn reason_name(reason: i32) -> &'static str {
    match EndReason::try_from(reason) {
        Ok(EndReason::Exited) => "exited",
        Ok(EndReason::OomKilled) => "oom_killed",
        Ok(EndReason::TtlExpired) => "ttl_expired",
        Ok(EndReason::StoppedByUser) => "stopped_by_user",
        Ok(EndReason::RunnerLost) => "runner_lost",
        Ok(EndReason::StartFailed) => "start_failed",
        Ok(EndReason::OrganizationDeleted) => "organization_deleted",
        Ok(EndReason::AgentDeleted) => "agent_deleted",
        Ok(EndReason::ProjectDeleted) => "project_deleted",
        Ok(EndReason::AccessRevoked) => "access_revoked",
        _ => "",
    }
}

pub fn sandbox_json(s: &Sandbox) -> Value {
    let spec = s.spec.clone().unwrap_or_default();
    let res = spec.resources.unwrap_or_default();
    json!({
        "name": s.name,
        "id": names::short(&s.name),
        "state": state_name(s.state),
        "end_reason": reason_name(s.end_reason),
        "exit_code": s.exit_code,
        "message": s.message,
        "agent": spec.agent,
        "project": spec.project,
        "image": spec.image,
        "command": spec.command,
        "cpus": res.cpus,
        "memory_bytes": res.memory_bytes,
        "pids": res.pids,
        "ttl_seconds": res.ttl.map(|d| d.seconds),
        "network": paddock_policy::network::name(paddock_policy::network::of(spec.network_mode)),
        "created_by": s.created_by,
        "worker": s.worker,
        "create_time": s.create_time.as_ref().map(output::rfc3339),
        "start_time": s.start_time.as_ref().map(output::rfc3339),
        "end_time": s.end_time.as_ref().map(output::rfc3339),
        "expire_time": s.expire_time.as_ref().map(output::rfc3339),
    })
}

fn print_sandbox(ctx: &Ctx, s: &Sandbox) {
    if ctx.json() {
        print_json(&sandbox_json(s));
        return;
    }
    let spec = s.spec.clone().unwrap_or_default();
    let res = spec.resources.unwrap_or_default();
    print_fields(&[
        ("name", s.name.clone()),
        ("state", state_name(s.state).to_owned()),
        ("end reason", reason_name(s.end_reason).to_owned()),
        (
            "exit code",
            s.exit_code.map(|c| c.to_string()).unwrap_or_default(),
        ),
        ("agent", names::short(&spec.agent).to_owned()),
        ("project", names::short(&spec.project).to_owned()),
        ("image", spec.image),
        (
            "resources",
            format!(
                "cpus {} memory {} pids {}",
                res.cpus,
                output::human_bytes(res.memory_bytes),
                res.pids
            ),
        ),
        ("created", output::ts_cell(s.create_time.as_ref())),
        ("expires", output::ts_cell(s.expire_time.as_ref())),
        ("message", s.message.clone()),
    ]);
}

pub async fn run(ctx: &mut Ctx, args: RunArgs) -> Result<(), CliError> {
    let mut client = client(ctx)?;
    let agent = match &args.agent {
        Some(a) => ctx.expand(names::AGENTS, a).await?,
        None => String::new(),
    };
    let project = ctx.expand(names::PROJECTS, &args.project).await?;
    let spec = SandboxSpec {
        agent,
        project,
        image: args.image.clone(),
        command: if args.detach {
            args.command.clone()
        } else {
            Vec::new()
        },
        env: args.env.iter().cloned().collect::<HashMap<_, _>>(),
        workdir: args.workdir.clone().unwrap_or_default(),
        resources: Some(ResourceLimits {
            cpus: args.cpus.unwrap_or(0.0),
            memory_bytes: args.memory.unwrap_or(0),
            pids: args.pids.unwrap_or(0),
            disk_bytes: 0,
            ttl: args.ttl.map(paddock_shared::time::proto_duration),
        }),
        network_mode: match args.network {
            None => NetworkMode::Unspecified,
            Some(Network::None) => NetworkMode::None,
            Some(Network::Open) => NetworkMode::Open,
        } as i32,
        credentials: args.credentials.clone(),
        caches: args.cache.clone(),
        keep_workspace: args.keep,
        labels: HashMap::new(),
    };
    let sandbox = client
        .create_sandbox(CreateSandboxRequest {
            parent: String::new(),
            spec: Some(spec),
        })
        .await
        .map_err(rpc_err(ctx))?
        .into_inner()
        .sandbox
        .ok_or_else(|| CliError::new(Code::Internal, "the runner returned no sandbox"))?;
    if args.detach {
        print_sandbox(ctx, &sandbox);
        return Ok(());
    }
    if sandbox.state != SandboxState::Running as i32 {
        return Err(CliError::new(
            Code::FailedPrecondition,
            format!(
                "sandbox {} did not start: {}",
                sandbox.name, sandbox.message
            ),
        ));
    }
    let exec = ExecStart {
        sandbox: sandbox.name.clone(),
        command: args.command.clone(),
        tty: args.tty,
        stdin: args.interactive,
        foreground: true,
        ..Default::default()
    };
    // SIGINT, SIGTERM and SIGHUP alike stop the sandbox gracefully; the
    // exit code is then 128 + the signal, as a shell reports it.
    let signals = Interrupts::install()
        .map_err(|e| CliError::new(Code::Internal, format!("cannot handle signals: {e}")))?;
    let outcome = tokio::select! {
        r = stream_exec(&mut client, exec, args.interactive) => r.map(Ended::Exit),
        sig = signals.next() => {
            eprintln!(
                "paddock: {}: stopping {} (SIGTERM now, SIGKILL after the grace period)",
                sig.name(),
                names::short(&sandbox.name),
            );
            Ok(Ended::Interrupted(sig))
        }
    };
    let stopped = client
        .stop_sandbox(StopSandboxRequest {
            name: sandbox.name.clone(),
            grace_period: None,
        })
        .await;
    let ended = match stopped {
        Ok(r) => r.into_inner().sandbox,
        Err(s) => {
            eprintln!("warning: could not stop {}: {}", sandbox.name, s.message());
            None
        }
    };
    // (A command that could not start is the error itself.)
    if outcome.is_ok()
        && let Some(ended) = &ended
        && let Some(line) = end_line(ended)
    {
        eprintln!("{line}");
    }
    if !args.keep {
        let _ = client
            .delete_sandbox(DeleteSandboxRequest {
                name: sandbox.name.clone(),
            })
            .await;
    } else if !ctx.json() {
        eprintln!(
            "kept {} (copy files out with `paddock sandbox cp {}:PATH .`)",
            names::short(&sandbox.name),
            names::short(&sandbox.name)
        );
    }
    match outcome.map_err(rpc_err(ctx))? {
        Ended::Exit(0) => Ok(()),
        Ended::Exit(code) => Err(CliError::Exit(code.clamp(1, 255) as u8)),
        Ended::Interrupted(sig) => Err(CliError::Exit(128 + sig.number() as u8)),
    }
}

/// How a foreground run ended.
enum Ended {
    /// The command's exit code.
    Exit(i32),
    /// A signal to `paddock run` itself.
    Interrupted(Interrupt),
}

/// Why a sandbox ended, for stderr, when it was not simply its command
/// exiting or the user stopping it: `sandbox sb… ended: oom_killed
/// (memory limit 32 MiB)`.
pub fn end_line(s: &Sandbox) -> Option<String> {
    let reason = EndReason::try_from(s.end_reason).unwrap_or(EndReason::Unspecified);
    let detail = match reason {
        EndReason::Unspecified | EndReason::StoppedByUser => return None,
        EndReason::Exited if s.message.is_empty() => return None,
        EndReason::OomKilled => {
            let memory = s
                .spec
                .as_ref()
                .and_then(|spec| spec.resources.as_ref())
                .map(|r| r.memory_bytes)
                .unwrap_or(0);
            format!("memory limit {}", crate::policy::human_bytes(memory))
        }
        EndReason::TtlExpired => {
            let ttl = s
                .spec
                .as_ref()
                .and_then(|spec| spec.resources.as_ref())
                .and_then(|r| r.ttl.as_ref())
                .map(|d| d.seconds)
                .unwrap_or(0);
            format!("ttl {}", output::human_seconds(ttl))
        }
        _ => s.message.clone(),
    };
    let code = s
        .exit_code
        .map(|c| format!(", exit code {c}"))
        .unwrap_or_default();
    Some(format!(
        "sandbox {} ended: {} ({detail}){code}",
        names::short(&s.name),
        reason_name(s.end_reason)
    ))
}

/// The signals that end a foreground run: SIGINT, SIGTERM, SIGHUP.
struct Interrupts {
    int: tokio::sync::Mutex<tokio::signal::unix::Signal>,
    term: tokio::sync::Mutex<tokio::signal::unix::Signal>,
    hup: tokio::sync::Mutex<tokio::signal::unix::Signal>,
}

#[derive(Debug, Clone, Copy)]
enum Interrupt {
    Int,
    Term,
    Hup,
}

impl Interrupt {
    fn number(self) -> i32 {
        match self {
            Interrupt::Hup => 1,
            Interrupt::Int => 2,
            Interrupt::Term => 15,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Interrupt::Hup => "SIGHUP",
            Interrupt::Int => "SIGINT",
            Interrupt::Term => "SIGTERM",
        }
    }
}

impl Interrupts {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            int: tokio::sync::Mutex::new(signal(SignalKind::interrupt())?),
            term: tokio::sync::Mutex::new(signal(SignalKind::terminate())?),
            hup: tokio::sync::Mutex::new(signal(SignalKind::hangup())?),
        })
    }

    async fn next(&self) -> Interrupt {
        let (mut int, mut term, mut hup) = (
            self.int.lock().await,
            self.term.lock().await,
            self.hup.lock().await,
        );
        tokio::select! {
            _ = int.recv() => Interrupt::Int,
            _ = term.recv() => Interrupt::Term,
            _ = hup.recv() => Interrupt::Hup,
        }
    }
}

/// Streams one exec: stdin from ours when asked, stdout and stderr to
/// ours as they come. Returns the exit code.
async fn stream_exec(
    client: &mut SandboxClient,
    start: ExecStart,
    stdin: bool,
) -> Result<i32, tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(ExecRequest {
        message: Some(exec_request::Message::Start(start)),
    })
    .await
    .map_err(|_| tonic::Status::internal("exec request stream closed"))?;
    let feeder = tokio::spawn(async move {
        if stdin {
            let mut input = tokio::io::stdin();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match input.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let msg = ExecRequest {
                            message: Some(exec_request::Message::Stdin(buf[..n].to_vec())),
                        };
                        if tx.send(msg).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx
                .send(ExecRequest {
                    message: Some(exec_request::Message::CloseStdin(true)),
                })
                .await;
        }
        // Hold the request stream open until the command ends.
        tx.closed().await;
    });
    let mut stream = client
        .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut code = -1;
    while let Some(msg) = stream.message().await? {
        match msg.message {
            Some(exec_response::Message::Stdout(b)) => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&b);
                let _ = out.flush();
            }
            Some(exec_response::Message::Stderr(b)) => {
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(&b);
                let _ = err.flush();
            }
            Some(exec_response::Message::Exit(e)) => {
                if e.timed_out {
                    eprintln!("paddock: the command timed out");
                }
                code = e.exit_code;
            }
            None => {}
        }
    }
    feeder.abort();
    Ok(code)
}

pub async fn sandbox(ctx: &mut Ctx, cmd: SandboxCommand) -> Result<(), CliError> {
    let mut client = client(ctx)?;
    match cmd {
        SandboxCommand::List { all, agent } => {
            let agent = match agent {
                Some(a) => ctx.expand(names::AGENTS, &a).await?,
                None => String::new(),
            };
            let sandboxes = all_pages(|page_token| {
                let mut client = client.clone();
                let req = ListSandboxesRequest {
                    parent: String::new(),
                    page_size: 500,
                    page_token,
                    agent: agent.clone(),
                    show_ended: all,
                };
                async move {
                    let r = client.list_sandboxes(req).await?.into_inner();
                    Ok((r.sandboxes, r.next_page_token))
                }
            })
            .await
            .map_err(rpc_err(ctx))?;
            if ctx.json() {
                output::print_list(sandboxes.iter().map(sandbox_json));
                return Ok(());
            }
            let mut t = Table::new(&[
                "ID", "STATE", "AGENT", "PROJECT", "IMAGE", "CREATED", "EXIT",
            ]);
            for s in &sandboxes {
                let spec = s.spec.clone().unwrap_or_default();
                t.row(vec![
                    names::short(&s.name).to_owned(),
                    state_name(s.state).to_owned(),
                    names::short(&spec.agent).to_owned(),
                    names::short(&spec.project).to_owned(),
                    spec.image,
                    output::ts_cell(s.create_time.as_ref()),
                    s.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                ]);
            }
            t.print();
            Ok(())
        }
        SandboxCommand::Get { id } => {
            let name = ctx.expand(SANDBOXES, &id).await?;
            let s = client
                .get_sandbox(GetSandboxRequest { name })
                .await
                .map_err(rpc_err(ctx))?
                .into_inner()
                .sandbox
                .unwrap_or_default();
            print_sandbox(ctx, &s);
            Ok(())
        }
        SandboxCommand::Stop {
            id,
            all: true,
            agent,
            project,
            grace,
        } => {
            debug_assert!(id.is_none());
            stop_all(ctx, &mut client, agent, project, grace).await
        }
        SandboxCommand::Stop { id, grace, .. } => {
            let id = id.unwrap_or_default();
            let name = ctx.expand(SANDBOXES, &id).await?;
            if !ctx.json() {
                eprintln!(
                    "stopping {}: SIGTERM, then SIGKILL after {}",
                    names::short(&name),
                    grace
                        .map(|g| format!("{}s", g.as_secs()))
                        .unwrap_or_else(|| "the runner's grace period (3s by default)".to_owned())
                );
            }
            let s = client
                .stop_sandbox(StopSandboxRequest {
                    name,
                    grace_period: grace.map(paddock_shared::time::proto_duration),
                })
                .await
                .map_err(rpc_err(ctx))?
                .into_inner()
                .sandbox
                .unwrap_or_default();
            print_sandbox(ctx, &s);
            Ok(())
        }
        SandboxCommand::Delete { id } => {
            let name = ctx.expand(SANDBOXES, &id).await?;
            client
                .delete_sandbox(DeleteSandboxRequest { name: name.clone() })
                .await
                .map_err(rpc_err(ctx))?;
            print_deleted(ctx, &name);
            Ok(())
        }
        SandboxCommand::Exec {
            interactive,
            tty,
            timeout,
            id,
            command,
        } => {
            let name = ctx.expand(SANDBOXES, &id).await?;
            let start = ExecStart {
                sandbox: name,
                command,
                tty,
                stdin: interactive,
                timeout: timeout.map(paddock_shared::time::proto_duration),
                ..Default::default()
            };
            match stream_exec(&mut client, start, interactive)
                .await
                .map_err(rpc_err(ctx))?
            {
                0 => Ok(()),
                code => Err(CliError::Exit(code.clamp(1, 255) as u8)),
            }
        }
        SandboxCommand::Cp { src, dst } => copy(ctx, &mut client, &src, &dst).await,
        SandboxCommand::Logs { id, follow, tail } => {
            let name = ctx.expand(SANDBOXES, &id).await?;
            print_logs(ctx, &mut client, name, follow, tail.unwrap_or(0)).await
        }
        SandboxCommand::Attach { id } => {
            let name = ctx.expand(SANDBOXES, &id).await?;
            print_logs(ctx, &mut client, name.clone(), true, -1).await?;
            let s = wait_for_end(ctx, &mut client, name).await?;
            if let Some(line) = end_line(&s) {
                eprintln!("{line}");
            }
            match s.exit_code.unwrap_or(0) {
                0 => Ok(()),
                code => Err(CliError::Exit(code.clamp(1, 255) as u8)),
            }
        }
        SandboxCommand::Wait { id } => {
            let name = ctx.expand(SANDBOXES, &id).await?;
            let s = wait_for_end(ctx, &mut client, name).await?;
            if ctx.json() {
                print_json(&json!({
                    "name": s.name,
                    "exit_code": s.exit_code,
                    "end_reason": reason_name(s.end_reason),
                }));
            } else {
                if let Some(line) = end_line(&s) {
                    eprintln!("{line}");
                }
                outln!(
                    "{}",
                    s.exit_code
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "-".into())
                );
            }
            Ok(())
        }
        SandboxCommand::Watch { id } => {
            let name = ctx.expand(SANDBOXES, &id).await?;
            let mut stream = client
                .watch_sandbox(WatchSandboxRequest { name })
                .await
                .map_err(rpc_err(ctx))?
                .into_inner();
            while let Some(msg) = stream.message().await.map_err(rpc_err(ctx))? {
                let s = msg.sandbox.unwrap_or_default();
                if ctx.json() {
                    outln!("{}", sandbox_json(&s));
                } else {
                    outln!(
                        "{} {} {}",
                        names::short(&s.name),
                        state_name(s.state),
                        reason_name(s.end_reason)
                    );
                }
            }
            Ok(())
        }
        SandboxCommand::Usage { id } => {
            let name = ctx.expand(SANDBOXES, &id).await?;
            let u = client
                .get_usage(GetUsageRequest { name })
                .await
                .map_err(rpc_err(ctx))?
                .into_inner()
                .usage
                .unwrap_or_default();
            let wall = u.wall_time.map(|d| d.seconds).unwrap_or(0);
            if ctx.json() {
                print_json(&json!({
                    "cpu_seconds": u.cpu_seconds,
                    "memory_peak_bytes": u.memory_peak_bytes,
                    "wall_seconds": wall,
                    "execs": u.execs,
                }));
            } else {
                print_fields(&[
                    ("cpu seconds", format!("{:.3}", u.cpu_seconds)),
                    ("memory peak", output::human_bytes(u.memory_peak_bytes)),
                    ("wall time", output::human_seconds(wall)),
                    ("execs", u.execs.to_string()),
                ]);
            }
            Ok(())
        }
    }
}

pub const SANDBOXES: &str = "sandboxes";

/// `sandbox stop --all`: the kill switch.
async fn stop_all(
    ctx: &mut Ctx,
    client: &mut SandboxClient,
    agent: Option<String>,
    project: Option<String>,
    grace: Option<Duration>,
) -> Result<(), CliError> {
    let agent = match agent {
        Some(a) => ctx.expand(names::AGENTS, &a).await?,
        None => String::new(),
    };
    let project = match project {
        Some(p) => ctx.expand(names::PROJECTS, &p).await?,
        None => String::new(),
    };
    if !ctx.json() {
        eprintln!("stopping every running sandbox that matches; waiting for them to exit");
    }
    let stopped = client
        .stop_sandboxes(StopSandboxesRequest {
            parent: String::new(),
            agent,
            project,
            grace_period: grace.map(paddock_shared::time::proto_duration),
        })
        .await
        .map_err(rpc_err(ctx))?
        .into_inner()
        .sandboxes;
    if ctx.json() {
        print_json(&json!({"items": stopped.iter().map(sandbox_json).collect::<Vec<_>>()}));
    } else {
        for s in &stopped {
            outln!("stopped {}", s.name);
        }
        outln!("{} sandboxes stopped", stopped.len());
    }
    Ok(())
}

/// Prints a sandbox's log: its stdout to ours, its stderr to ours.
async fn print_logs(
    ctx: &Ctx,
    client: &mut SandboxClient,
    name: String,
    follow: bool,
    tail_bytes: i64,
) -> Result<(), CliError> {
    let mut stream = client
        .get_sandbox_logs(GetSandboxLogsRequest {
            name,
            follow,
            tail_bytes,
        })
        .await
        .map_err(rpc_err(ctx))?
        .into_inner();
    while let Some(m) = stream.message().await.map_err(rpc_err(ctx))? {
        if m.stream == LogStream::Stderr as i32 {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(&m.data);
            let _ = err.flush();
        } else {
            let mut out = std::io::stdout().lock();
            if out.write_all(&m.data).is_err() {
                // stdout closed (`| head`): stop quietly.
                return Ok(());
            }
            let _ = out.flush();
        }
    }
    Ok(())
}

/// Follows a sandbox until it has ended and returns it.
async fn wait_for_end(
    ctx: &Ctx,
    client: &mut SandboxClient,
    name: String,
) -> Result<Sandbox, CliError> {
    let mut stream = client
        .watch_sandbox(WatchSandboxRequest { name })
        .await
        .map_err(rpc_err(ctx))?
        .into_inner();
    let mut last = None;
    while let Some(msg) = stream.message().await.map_err(rpc_err(ctx))? {
        last = msg.sandbox;
    }
    let s = last.unwrap_or_default();
    if s.state != SandboxState::Stopped as i32 && s.state != SandboxState::Failed as i32 {
        return Err(CliError::new(
            Code::Unavailable,
            format!("the watch of {} ended before the sandbox did", s.name),
        ));
    }
    Ok(s)
}

/// `ID:path` → (id, path).
fn remote(spec: &str) -> Option<(&str, &str)> {
    let (id, path) = spec.split_once(':')?;
    (!id.is_empty() && !id.contains('/') || id.starts_with("organizations/")).then_some((id, path))
}

/// `sandbox cp`, as `docker cp` does it (see `copy` in the runner for the
/// table): `cp ./src SB:src` makes /workspace/src, a file copied to a file
/// path is that file, and `SRC/.` copies a directory's contents.
async fn copy(
    ctx: &mut Ctx,
    client: &mut SandboxClient,
    src: &str,
    dst: &str,
) -> Result<(), CliError> {
    match (remote(src), remote(dst)) {
        (None, Some((id, path))) => {
            let name = ctx.expand(SANDBOXES, id).await?;
            let (local_path, contents_only) = split_contents(src);
            let meta = std::fs::symlink_metadata(local_path)
                .map_err(|e| local(Path::new(local_path), e))?;
            let source_name = source_name(Path::new(local_path))?;
            let archive = tar_local(Path::new(local_path), &source_name)?;
            let mut msgs = vec![UploadFilesRequest {
                message: Some(upload_files_request::Message::Start(UploadStart {
                    sandbox: name,
                    path: path.trim_end_matches('/').to_owned(),
                    copy: true,
                    source_name,
                    contents_only: contents_only && meta.is_dir(),
                    path_is_directory: path.ends_with('/'),
                    source_is_directory: meta.is_dir(),
                })),
            }];
            for chunk in archive.chunks(1 << 20) {
                msgs.push(UploadFilesRequest {
                    message: Some(upload_files_request::Message::Chunk(chunk.to_vec())),
                });
            }
            let r = client
                .upload_files(tokio_stream::iter(msgs))
                .await
                .map_err(rpc_err(ctx))?
                .into_inner();
            if ctx.json() {
                print_json(&json!({"files": r.files, "bytes": r.bytes}));
            } else {
                outln!("copied {} files, {} bytes", r.files, r.bytes);
            }
            Ok(())
        }
        (Some((id, path)), None) => {
            let name = ctx.expand(SANDBOXES, id).await?;
            let (remote_path, contents_only) = split_contents(path);
            let mut stream = client
                .download_files(DownloadFilesRequest {
                    sandbox: name,
                    path: remote_path.to_owned(),
                })
                .await
                .map_err(rpc_err(ctx))?
                .into_inner();
            let mut archive = Vec::new();
            while let Some(m) = stream.message().await.map_err(rpc_err(ctx))? {
                archive.extend(m.chunk);
            }
            let dest = place(&archive, Path::new(dst), dst.ends_with('/'), contents_only)?;
            if !ctx.json() {
                outln!("copied to {}", dest.display());
            }
            Ok(())
        }
        _ => Err(CliError::usage(
            "cp needs exactly one side as ID:PATH, e.g. `cp ./src sb123:src` or `cp sb123:out ./out`",
        )),
    }
}

/// `dir/.` → (`dir`, true): docker's "the contents of".
fn split_contents(path: &str) -> (&str, bool) {
    if path == "." {
        return (".", true);
    }
    match path.strip_suffix("/.") {
        Some("") => ("/", true),
        Some(p) => (p, true),
        None => (path, false),
    }
}

/// The name a local source has in the archive: its last component (the
/// current directory's name for `.`).
fn source_name(path: &Path) -> Result<String, CliError> {
    let absolute = std::path::absolute(path).map_err(|e| local(path, e))?;
    let name = absolute
        .components()
        .next_back()
        .and_then(|c| match c {
            std::path::Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .or_else(|| {
            std::env::current_dir()
                .ok()
                .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        })
        .unwrap_or_else(|| "root".to_owned());
    Ok(name)
}

fn local(path: &Path, e: std::io::Error) -> CliError {
    CliError::new(Code::FailedPrecondition, format!("{}: {e}", path.display()))
}

fn refused(path: &Path, why: &str) -> CliError {
    CliError::new(
        Code::FailedPrecondition,
        format!("{}: {why}", path.display()),
    )
}

/// A tar of a local file or directory whose top entry is `name`.
fn tar_local(path: &Path, name: &str) -> Result<Vec<u8>, CliError> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| local(path, e))?;
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    if meta.is_dir() {
        builder
            .append_dir_all(name, path)
            .map_err(|e| local(path, e))?;
    } else {
        builder
            .append_path_with_name(path, name)
            .map_err(|e| local(path, e))?;
    }
    builder.into_inner().map_err(|e| local(path, e))
}

/// Puts a downloaded archive (one file or directory at its top) at `dst`
/// as `docker cp` does. It is unpacked into a staging directory next to
/// its destination first (the tar crate refuses entries that would land
/// outside it), then moved into place. Returns where it went.
fn place(
    archive: &[u8],
    dst: &Path,
    dst_is_dir: bool,
    contents_only: bool,
) -> Result<PathBuf, CliError> {
    let mut first = tar::Archive::new(archive);
    let top = first
        .entries()
        .map_err(|e| local(dst, e))?
        .next()
        .ok_or_else(|| refused(dst, "the sandbox sent nothing"))?
        .map_err(|e| local(dst, e))?;
    let source_is_dir = top.header().entry_type().is_dir();
    let top_name = top
        .path()
        .map_err(|e| local(dst, e))?
        .components()
        .next()
        .map(|c| c.as_os_str().to_owned())
        .ok_or_else(|| refused(dst, "the archive has no name"))?;
    let found = std::fs::symlink_metadata(dst);
    let exists_as_dir = found.as_ref().is_ok_and(|m| m.is_dir());
    let exists = found.is_ok();
    let parent = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Where it ends up, and the directory that holds that.
    let (target, holder) = match (source_is_dir, exists, exists_as_dir) {
        (_, true, true) if contents_only && source_is_dir => (dst.to_path_buf(), dst.to_path_buf()),
        (_, true, true) => (dst.join(&top_name), dst.to_path_buf()),
        (false, false, _) if dst_is_dir => {
            return Err(refused(dst, "destination directory does not exist"));
        }
        (false, _, _) => (dst.to_path_buf(), parent),
        (true, false, _) => (dst.to_path_buf(), parent),
        (true, true, false) => {
            return Err(refused(dst, "cannot copy a directory to a file"));
        }
    };
    if !holder.is_dir() {
        return Err(refused(&holder, "no such directory"));
    }
    let staging = tempfile::Builder::new()
        .prefix(".paddock-cp-")
        .tempdir_in(&holder)
        .map_err(|e| local(&holder, e))?;
    tar::Archive::new(archive)
        .unpack(staging.path())
        .map_err(|e| local(dst, e))?;
    let unpacked = staging.path().join(&top_name);
    merge(&unpacked, &target)?;
    Ok(target)
}

/// Moves `src` to `dst`; a directory onto an existing directory is merged
/// (files replaced), as extracting a tar there would.
fn merge(src: &Path, dst: &Path) -> Result<(), CliError> {
    let src_dir = std::fs::symlink_metadata(src)
        .map_err(|e| local(src, e))?
        .is_dir();
    match std::fs::symlink_metadata(dst) {
        Err(_) => std::fs::rename(src, dst).map_err(|e| local(dst, e)),
        Ok(m) if m.is_dir() && src_dir => {
            for entry in std::fs::read_dir(src).map_err(|e| local(src, e))? {
                let entry = entry.map_err(|e| local(src, e))?;
                merge(&entry.path(), &dst.join(entry.file_name()))?;
            }
            Ok(())
        }
        Ok(m) if m.is_dir() => Err(refused(dst, "is a directory; not replaced by a file")),
        Ok(_) if src_dir => Err(refused(dst, "cannot copy a directory to a file")),
        Ok(_) => std::fs::rename(src, dst).map_err(|e| local(dst, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, name, *d).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    b.append_data(&mut h, name, std::io::empty()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    /// Every row of docker's table, downloading.
    #[test]
    fn downloads_land_as_docker_cp_puts_them() {
        let dir = tempfile::tempdir().unwrap();
        let at = |p: &str| dir.path().join(p);
        let file = tar_of(&[("a.txt", Some(b"A"))]);
        let tree = tar_of(&[("dist", None), ("dist/x.js", Some(b"X"))]);
        // File to a missing path: that file.
        place(&file, &at("new.txt"), false, false).unwrap();
        assert_eq!(std::fs::read(at("new.txt")).unwrap(), b"A");
        // File to a missing path ending in /: an error.
        assert!(place(&file, &at("nodir"), true, false).is_err());
        // File onto a file: overwritten.
        std::fs::write(at("old.txt"), b"old").unwrap();
        place(&file, &at("old.txt"), false, false).unwrap();
        assert_eq!(std::fs::read(at("old.txt")).unwrap(), b"A");
        // File into a directory: under its own name.
        std::fs::create_dir(at("d")).unwrap();
        place(&file, &at("d"), false, false).unwrap();
        assert_eq!(std::fs::read(at("d/a.txt")).unwrap(), b"A");
        // Directory to a missing path: made, with the contents.
        place(&tree, &at("out"), false, false).unwrap();
        assert_eq!(std::fs::read(at("out/x.js")).unwrap(), b"X");
        assert!(!at("out/dist").exists());
        // Directory onto a file: an error.
        assert!(place(&tree, &at("old.txt"), false, false).is_err());
        // Directory into a directory: under its own name.
        place(&tree, &at("d"), false, false).unwrap();
        assert_eq!(std::fs::read(at("d/dist/x.js")).unwrap(), b"X");
        // SRC/. into a directory: the contents.
        std::fs::create_dir(at("e")).unwrap();
        place(&tree, &at("e"), false, true).unwrap();
        assert_eq!(std::fs::read(at("e/x.js")).unwrap(), b"X");
        // Nothing left behind.
        let staged = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".paddock-cp-")
            })
            .count();
        assert_eq!(staged, 0);
    }

    #[test]
    fn contents_suffixes() {
        assert_eq!(split_contents("src/."), ("src", true));
        assert_eq!(split_contents("."), (".", true));
        assert_eq!(split_contents("src"), ("src", false));
        assert_eq!(split_contents("src/"), ("src/", false));
    }

    #[test]
    fn remote_specs() {
        assert_eq!(remote("sb1:src"), Some(("sb1", "src")));
        assert_eq!(remote("./local"), None);
        assert_eq!(remote("/abs/path"), None);
    }
}
