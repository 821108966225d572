//! `paddock run`: an agent task in a new sandbox, its output streamed
//! live, the sandbox stopped (and deleted unless `--keep`) when the command
//! ends or `paddock run` is signalled; exits with the command's code.

use std::collections::HashMap;
use std::time::Duration;

use clap::{Args, ValueEnum};
use paddock_proto::authz::v1::{NetworkMode, ResourceLimits};
use paddock_proto::sandbox::v1::*;
use tonic::Code;

use super::show::{end_line, print_sandbox};
use super::stream::stream_exec;
use super::{client, rpc_err};
use crate::commands::Ctx;
use crate::error::CliError;
use crate::names;

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
