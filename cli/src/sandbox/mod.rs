//! `paddock sandbox`: its subcommands and their dispatch, the sandbox
//! runner's client, and the subcommands that are one call each (list, get,
//! stop and the kill switch, delete, wait, watch, usage). `paddock run` is
//! in `run`, the streamed output (exec, logs, attach) in `stream`, `cp` in
//! `cp`, and how a sandbox prints in `show`.

mod cp;
mod run;
mod show;
mod stream;

use std::time::Duration;

use clap::Subcommand;
use paddock_proto::sandbox::v1::sandbox_service_client::SandboxServiceClient;
use paddock_proto::sandbox::v1::*;
use paddock_shared::auth::{self, BearerAuth};
use paddock_shared::client::Channel;
use serde_json::json;
use tonic::service::interceptor::InterceptedService;

pub use self::run::{RunArgs, run};
use self::show::{end_line, print_sandbox, reason_name, sandbox_json, state_name};
use self::stream::{print_logs, stream_exec, wait_for_end};
use crate::commands::{Ctx, all_pages, print_deleted};
use crate::error::CliError;
use crate::names;
use crate::output::{self, Table, print_fields, print_json};

pub type SandboxClient = SandboxServiceClient<InterceptedService<Channel, BearerAuth>>;

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
        SandboxCommand::Cp { src, dst } => cp::copy(ctx, &mut client, &src, &dst).await,
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
