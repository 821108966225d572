//! Exec: a command in a running sandbox, streamed both ways. Output flows
//! through a small bounded channel, so a client that reads slowly slows
//! the command down instead of filling the runner's memory.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use futures_util::{Stream, StreamExt};
use paddock_proto::audit::v1::Outcome;
use paddock_proto::identity::v1::Principal;
use paddock_proto::sandbox::v1::exec_request::Message as In;
use paddock_proto::sandbox::v1::exec_response::Message as Out;
use paddock_proto::sandbox::v1::{ExecExit, ExecRequest, ExecResponse, ExecStart, TerminalSize};
use paddock_shared::error::{Error, Result};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::runner::Runner;
use crate::spec;
use crate::store::Record;

pub type ExecStream = Pin<Box<dyn Stream<Item = Result<ExecResponse, Status>> + Send>>;

/// Output chunks in flight between Docker and the client.
const OUTPUT_BUFFER: usize = 8;

/// Checks an exec start message.
pub fn validate(start: &ExecStart) -> Result<()> {
    spec::validate_argv("command", &start.command, false)?;
    spec::validate_env("env", &start.env)?;
    if !start.workdir.is_empty() && !start.workdir.starts_with('/') {
        return Err(Error::invalid("workdir must be an absolute path"));
    }
    Ok(())
}

/// Starts `start` in the sandbox of `record` and streams it.
pub async fn run(
    runner: Arc<Runner>,
    caller: Principal,
    record: Record,
    start: ExecStart,
    mut input: Streaming<ExecRequest>,
) -> Result<ExecStream> {
    let engine = runner.engine()?;
    let docker = engine.docker().clone();
    let mut env: Vec<String> = start.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.sort();
    let workdir = if start.workdir.is_empty() {
        record.spec.workdir.clone()
    } else {
        start.workdir.clone()
    };
    let created = docker
        .create_exec(
            &record.container_id,
            CreateExecOptions {
                attach_stdin: Some(start.stdin),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                tty: Some(start.tty),
                env: Some(env),
                cmd: Some(start.command.clone()),
                working_dir: Some(workdir),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| match e {
            bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            } => Error::FailedPrecondition(format!("sandbox {} is not running", record.name())),
            other => Error::FailedPrecondition(format!("cannot start the command: {other}")),
        })?;
    let exec_id = created.id;
    let started = docker
        .start_exec(
            &exec_id,
            Some(StartExecOptions {
                detach: false,
                tty: start.tty,
                output_capacity: Some(64 * 1024),
            }),
        )
        .await
        .map_err(|e| Error::FailedPrecondition(format!("cannot start the command: {e}")))?;
    let StartExecResults::Attached {
        mut output,
        input: mut stdin,
    } = started
    else {
        return Err(Error::Internal("exec started detached".into()));
    };
    let began = Instant::now();
    let _ = crate::store::count_exec(&runner.db.pool, &record.id).await;

    // Client → command: stdin, close, signals, resizes.
    let host_pid = Arc::new(tokio::sync::OnceCell::<i32>::new());
    let pid_for_input = host_pid.clone();
    let docker_for_input = docker.clone();
    let exec_for_input = exec_id.clone();
    let stdin_wanted = start.stdin;
    let input_task = tokio::spawn(async move {
        let mut open = stdin_wanted;
        while let Some(Ok(msg)) = input.next().await {
            match msg.message {
                Some(In::Stdin(bytes)) if open && stdin.write_all(&bytes).await.is_err() => {
                    open = false;
                }
                Some(In::CloseStdin(true)) if open => {
                    let _ = stdin.shutdown().await;
                    open = false;
                }
                Some(In::Signal(sig)) => {
                    let pid = match pid_for_input.get() {
                        Some(p) => Some(*p),
                        None => {
                            let pid = exec_pid(&docker_for_input, &exec_for_input).await;
                            if let Some(p) = pid {
                                let _ = pid_for_input.set(p);
                            }
                            pid
                        }
                    };
                    tracing::debug!(?pid, sig, "signalling an exec");
                    if let Some(pid) = pid {
                        signal(pid, sig);
                    }
                }
                Some(In::Resize(TerminalSize { rows, columns })) => {
                    let _ = docker_for_input
                        .resize_exec(
                            &exec_for_input,
                            bollard::exec::ResizeExecOptions {
                                height: rows.min(u16::MAX as u32) as u16,
                                width: columns.min(u16::MAX as u32) as u16,
                            },
                        )
                        .await;
                }
                _ => {}
            }
        }
        // The client went away or finished sending: end stdin.
        if open {
            let _ = stdin.shutdown().await;
        }
    });

    let timeout = start
        .timeout
        .as_ref()
        .and_then(paddock_shared::time::duration)
        .filter(|d| !d.is_zero());
    let (tx, rx) = mpsc::channel::<Result<ExecResponse, Status>>(OUTPUT_BUFFER);
    tokio::spawn(async move {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut timed_out = false;
        loop {
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d, output.next()).await {
                    Ok(n) => n,
                    Err(_) => {
                        timed_out = true;
                        if let Some(pid) = exec_pid(&docker, &exec_id).await {
                            let _ = host_pid.set(pid);
                            signal(pid, 9);
                        }
                        break;
                    }
                },
                None => output.next().await,
            };
            let Some(Ok(chunk)) = next else { break };
            let message = match chunk {
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    Out::Stdout(message.to_vec())
                }
                LogOutput::StdErr { message } => Out::Stderr(message.to_vec()),
                LogOutput::StdIn { .. } => continue,
            };
            if tx
                .send(Ok(ExecResponse {
                    message: Some(message),
                }))
                .await
                .is_err()
            {
                // The client left: stop the command rather than run unseen.
                if let Some(pid) = exec_pid(&docker, &exec_id).await {
                    signal(pid, 9);
                }
                break;
            }
        }
        input_task.abort();
        let exit_code = exit_code(&docker, &exec_id).await;
        let duration = began.elapsed();
        let exit = ExecExit {
            exit_code: if timed_out { 137 } else { exit_code },
            timed_out,
            duration: Some(paddock_shared::time::proto_duration(duration)),
        };
        let outcome = if exit.exit_code == 0 {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        let details = serde_json::json!({
            "argv": truncated_argv(&start.command),
            "exit_code": exit.exit_code,
            "timed_out": timed_out,
            "duration_ms": duration.as_millis() as u64,
            "tty": start.tty,
        });
        runner
            .audit(
                Some(&caller),
                "sandbox.exec",
                &record.name(),
                outcome,
                details,
            )
            .await;
        let _ = tx
            .send(Ok(ExecResponse {
                message: Some(Out::Exit(exit)),
            }))
            .await;
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// The argv for the audit trail, bounded in size.
fn truncated_argv(argv: &[String]) -> Vec<String> {
    let mut budget = 4096usize;
    let mut out = Vec::new();
    for arg in argv {
        if budget == 0 {
            out.push("…".to_owned());
            break;
        }
        let take: String = arg.chars().take(budget).collect();
        budget = budget.saturating_sub(take.len());
        out.push(take);
    }
    out
}

/// The host pid of a running exec. Docker may not report it for a moment
/// after the start: ask again, for up to a second.
async fn exec_pid(docker: &bollard::Docker, exec_id: &str) -> Option<i32> {
    for _ in 0..50 {
        match docker.inspect_exec(exec_id).await {
            Ok(info) if info.running == Some(false) => return None,
            Ok(info) => {
                if let Some(pid) = info.pid.filter(|p| *p > 0) {
                    return i32::try_from(pid).ok();
                }
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// The exit code, once Docker has recorded it.
async fn exit_code(docker: &bollard::Docker, exec_id: &str) -> i32 {
    for _ in 0..100 {
        match docker.inspect_exec(exec_id).await {
            Ok(info) if info.running != Some(true) => {
                return info.exit_code.unwrap_or(-1) as i32;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(_) => return -1,
        }
    }
    -1
}

/// Signals the exec's process (a host pid: the runner runs on the host).
fn signal(pid: i32, sig: i32) {
    let (Some(pid), Some(sig)) = (
        rustix::process::Pid::from_raw(pid),
        rustix::process::Signal::from_named_raw(sig),
    ) else {
        return;
    };
    if let Err(e) = rustix::process::kill_process(pid, sig) {
        tracing::warn!(error = %e, "cannot signal the exec process");
    }
}
