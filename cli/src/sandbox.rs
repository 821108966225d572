//! `paddock run` (an agent task in a sandbox, streamed live, exiting with
//! the command's code) and `paddock sandbox` (list, get, stop, delete,
//! exec, cp, watch, usage).

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use paddock_proto::authz::v1::{NetworkMode, ResourceLimits};
use paddock_proto::sandbox::v1::sandbox_service_client::SandboxServiceClient;
use paddock_proto::sandbox::v1::*;
use paddock_shared::auth::{self, BearerAuth};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt as _;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

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
    /// Stop a sandbox (SIGTERM, then SIGKILL after the grace period).
    Stop {
        /// The sandbox's id or full resource name.
        id: String,
        /// How long the main process has between SIGTERM and SIGKILL.
        #[arg(long, value_parser = paddock_shared::time::parse_duration)]
        grace: Option<Duration>,
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
        "network": paddock_authz::policy::mode_name(NetworkMode::try_from(spec.network_mode).unwrap_or(NetworkMode::None)),
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
        ..Default::default()
    };
    // Ctrl-C stops the sandbox gracefully; the exit code is then 130.
    let outcome = tokio::select! {
        r = stream_exec(&mut client, exec, args.interactive) => r.map(Some),
        _ = tokio::signal::ctrl_c() => Ok(None),
    };
    let stop = client
        .stop_sandbox(StopSandboxRequest {
            name: sandbox.name.clone(),
            grace_period: None,
        })
        .await;
    if let Err(s) = stop {
        eprintln!("warning: could not stop {}: {}", sandbox.name, s.message());
    }
    if !args.keep {
        let _ = client
            .delete_sandbox(DeleteSandboxRequest {
                name: sandbox.name.clone(),
            })
            .await;
    }
    match outcome.map_err(rpc_err(ctx))? {
        Some(0) => Ok(()),
        Some(code) => Err(CliError::Exit(code.clamp(1, 255) as u8)),
        None => Err(CliError::Exit(130)),
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
        SandboxCommand::Stop { id, grace } => {
            let name = ctx.expand(SANDBOXES, &id).await?;
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

/// `ID:path` → (id, path).
fn remote(spec: &str) -> Option<(&str, &str)> {
    let (id, path) = spec.split_once(':')?;
    (!id.is_empty() && !id.contains('/') || id.starts_with("organizations/")).then_some((id, path))
}

async fn copy(
    ctx: &mut Ctx,
    client: &mut SandboxClient,
    src: &str,
    dst: &str,
) -> Result<(), CliError> {
    match (remote(src), remote(dst)) {
        (None, Some((id, path))) => {
            let name = ctx.expand(SANDBOXES, id).await?;
            let archive = tar_local(Path::new(src))?;
            let mut msgs = vec![UploadFilesRequest {
                message: Some(upload_files_request::Message::Start(UploadStart {
                    sandbox: name,
                    path: path.to_owned(),
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
            let mut stream = client
                .download_files(DownloadFilesRequest {
                    sandbox: name,
                    path: path.to_owned(),
                })
                .await
                .map_err(rpc_err(ctx))?
                .into_inner();
            let mut archive = Vec::new();
            while let Some(m) = stream.message().await.map_err(rpc_err(ctx))? {
                archive.extend(m.chunk);
            }
            let dest = PathBuf::from(dst);
            std::fs::create_dir_all(&dest).map_err(|e| local(&dest, e))?;
            // tar's unpack refuses entries that would land outside dest.
            tar::Archive::new(archive.as_slice())
                .unpack(&dest)
                .map_err(|e| local(&dest, e))?;
            if !ctx.json() {
                outln!("copied into {}", dest.display());
            }
            Ok(())
        }
        _ => Err(CliError::usage(
            "cp needs exactly one side as ID:PATH, e.g. `cp ./src sb123:src` or `cp sb123:out ./out`",
        )),
    }
}

fn local(path: &Path, e: std::io::Error) -> CliError {
    CliError::new(Code::FailedPrecondition, format!("{}: {e}", path.display()))
}

/// A tar of a local file or directory, named relative to its parent.
fn tar_local(path: &Path) -> Result<Vec<u8>, CliError> {
    let meta = std::fs::metadata(path).map_err(|e| local(path, e))?;
    let name = path
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    if meta.is_dir() {
        builder
            .append_dir_all(&name, path)
            .map_err(|e| local(path, e))?;
    } else {
        builder
            .append_path_with_name(path, &name)
            .map_err(|e| local(path, e))?;
    }
    builder.into_inner().map_err(|e| local(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_specs() {
        assert_eq!(remote("sb1:src"), Some(("sb1", "src")));
        assert_eq!(remote("./local"), None);
        assert_eq!(remote("/abs/path"), None);
    }
}
