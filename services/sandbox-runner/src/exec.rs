//! Exec: a command in a running sandbox, streamed both ways. Output flows
//! through a small bounded channel, so a client that reads slowly slows
//! the command down instead of filling the runner's memory.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use futures_util::{Stream, StreamExt};
use paddock_proto::audit::v1::Outcome;
use paddock_proto::identity::v1::Principal;
use paddock_proto::sandbox::v1::exec_request::Message as In;
use paddock_proto::sandbox::v1::exec_response::Message as Out;
use paddock_proto::sandbox::v1::{
    EndReason, ExecExit, ExecRequest, ExecResponse, ExecStart, LogStream, TerminalSize,
};
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
    // A foreground command's output is the sandbox's log too.
    let log = if start.foreground {
        runner.logs.live(&record.id)
    } else {
        None
    };

    // Client → command: stdin, close, signals, resizes. A signal that
    // cannot be delivered to the command's own process ends the exec with
    // FAILED_PRECONDITION (sent through `refusals`).
    let (refusal_tx, mut refusals) = mpsc::channel::<Status>(1);
    let docker_for_input = docker.clone();
    let exec_for_input = exec_id.clone();
    let container_for_input = record.container_id.clone();
    let stdin_wanted = start.stdin;
    let input_task = tokio::spawn(
        async move {
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
                        let sent = signal_exec(
                            &docker_for_input,
                            &exec_for_input,
                            &container_for_input,
                            sig,
                        )
                        .await;
                        tracing::debug!(sig, ok = sent.is_ok(), "signalling an exec");
                        if let Err(e) = sent {
                            let _ = refusal_tx.send(e.into()).await;
                            break;
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
        }
        .in_current_span(),
    );

    let timeout = start
        .timeout
        .as_ref()
        .and_then(paddock_shared::time::duration)
        .filter(|d| !d.is_zero());
    let (tx, rx) = mpsc::channel::<Result<ExecResponse, Status>>(OUTPUT_BUFFER);
    let container = record.container_id.clone();
    tokio::spawn(
        async move {
            let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
            let mut timed_out = false;
            let mut refused = false;
            // Docker reports a command it cannot start (not in the image, not
            // executable) as output: held back and answered as an error.
            let mut first = true;
            let mut not_started: Option<String> = None;
            let mut client_gone = false;
            loop {
                let expired = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                let next = tokio::select! {
                    n = output.next() => n,
                    _ = expired => {
                        timed_out = true;
                        kill_exec(&docker, &exec_id, &container).await;
                        break;
                    }
                    Some(status) = refusals.recv() => {
                        let _ = tx.send(Err(status)).await;
                        kill_exec(&docker, &exec_id, &container).await;
                        refused = true;
                        break;
                    }
                    // The client is gone, or its stream was ended (its key was
                    // revoked): stop the command now, not at its next output.
                    _ = tx.closed() => {
                        client_gone = true;
                        kill_exec(&docker, &exec_id, &container).await;
                        break;
                    }
                };
                let Some(Ok(chunk)) = next else { break };
                if std::mem::take(&mut first)
                    && let Some(why) = start_failure(chunk.as_ref())
                {
                    not_started = Some(why);
                    continue;
                }
                let message = match chunk {
                    LogOutput::StdOut { message } | LogOutput::Console { message } => {
                        if let Some(log) = &log {
                            log.append(LogStream::Stdout, &message);
                        }
                        Out::Stdout(message.to_vec())
                    }
                    LogOutput::StdErr { message } => {
                        if let Some(log) = &log {
                            log.append(LogStream::Stderr, &message);
                        }
                        Out::Stderr(message.to_vec())
                    }
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
                    client_gone = true;
                    kill_exec(&docker, &exec_id, &container).await;
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
            let not_started = not_started.filter(|_| matches!(exit.exit_code, 126 | 127));
            let details = serde_json::json!({
                "argv": truncated_argv(&start.command),
                "exit_code": exit.exit_code,
                "timed_out": timed_out,
                "duration_ms": duration.as_millis() as u64,
                "tty": start.tty,
                "foreground": start.foreground,
                "not_started": not_started,
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
            if start.foreground {
                // A client that went away (`paddock run` interrupted or
                // killed) ended the run: the sandbox goes with it.
                let (reason, message) = match &not_started {
                    _ if client_gone => (
                        EndReason::StoppedByUser,
                        "the client running its foreground command went away".to_owned(),
                    ),
                    Some(why) => (
                        EndReason::Exited,
                        format!("the command could not be started: {why}"),
                    ),
                    None => (EndReason::Exited, String::new()),
                };
                runner
                    .end_foreground(
                        &caller,
                        &record,
                        i64::from(exit.exit_code),
                        reason,
                        &message,
                    )
                    .await;
            }
            if let Some(why) = not_started {
                let _ = tx
                    .send(Err(Status::failed_precondition(format!(
                        "cannot start the command in {}: {why}",
                        record.name()
                    ))))
                    .await;
            } else if !refused {
                let _ = tx
                    .send(Ok(ExecResponse {
                        message: Some(Out::Exit(exit)),
                    }))
                    .await;
            }
        }
        .in_current_span(),
    );
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// Docker's report that a command could not be started (it arrives as
/// the exec's first output), cut to the part that names the command:
/// `"nosuch": executable file not found in $PATH`.
fn start_failure(first: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(first).ok()?;
    let rest = text.strip_prefix("OCI runtime exec failed: ")?;
    let why = rest.rsplit_once("exec: ").map_or(rest, |(_, why)| why);
    let why = why.trim_end().trim_end_matches(": unknown");
    Some(why.chars().take(512).collect())
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

/// Kills the exec's process, if it still runs (a timeout, a client gone).
async fn kill_exec(docker: &bollard::Docker, exec_id: &str, container: &str) {
    if let Err(e) = signal_exec(docker, exec_id, container, 9).await {
        tracing::debug!(error = %e, "the exec was not killed");
    }
}

/// Delivers `sig` to the exec's process, and only to it.
///
/// Docker reports the exec's host pid, and a pid is only a number: once
/// the process has exited the kernel may give it to any host process, and
/// the runner (root) would signal that one. So the pid is never trusted
/// as cached: Docker is asked whether the exec still runs, a pidfd pins
/// the process behind the pid, its cgroup is checked to be the sandbox's
/// container, and the signal goes through the pidfd. If the process has
/// died since the pidfd was opened the send fails (ESRCH); if it was still
/// alive when the signal went out, it was alive when its cgroup was read,
/// so the cgroup read was its own.
async fn signal_exec(
    docker: &bollard::Docker,
    exec_id: &str,
    container: &str,
    sig: i32,
) -> Result<()> {
    let ended = || {
        Error::FailedPrecondition(format!(
            "the command has ended; signal {sig} was not delivered"
        ))
    };
    let signal = rustix::process::Signal::from_named_raw(sig)
        .filter(|_| (1..=64).contains(&sig))
        .ok_or_else(|| Error::invalid(format!("signal {sig} is not a signal number")))?;
    // Docker may not report the pid for a moment after the start.
    let mut tries = 0;
    let pid = loop {
        let info = docker.inspect_exec(exec_id).await.map_err(|_| ended())?;
        if info.running != Some(true) {
            return Err(ended());
        }
        match info
            .pid
            .filter(|p| *p > 0)
            .and_then(|p| i32::try_from(p).ok())
            .and_then(rustix::process::Pid::from_raw)
        {
            Some(pid) => break pid,
            None if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            None => {
                return Err(Error::Unavailable(
                    "Docker reports no pid for the command; signal not delivered".into(),
                ));
            }
        }
    };
    signal_in_container(pid, container, signal).map_err(|_| ended())
}

/// Signals host process `pid` only if it belongs to `container`'s cgroup.
fn signal_in_container(
    pid: rustix::process::Pid,
    container: &str,
    signal: rustix::process::Signal,
) -> Result<()> {
    let outside = || Error::FailedPrecondition("the process is not the sandbox's".into());
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .map_err(|_| outside())?;
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", pid.as_raw_nonzero()))
        .map_err(|_| outside())?;
    // A full container id is 64 hex digits; cgroup paths name it whole
    // (cgroupfs "/docker/<id>", systemd "docker-<id>.scope").
    if container.len() != 64 || !cgroup.contains(container) {
        tracing::warn!(
            pid = pid.as_raw_nonzero(),
            "a pid outside the sandbox's cgroup was not signalled"
        );
        return Err(outside());
    }
    rustix::process::pidfd_send_signal(&pidfd, signal).map_err(|_| outside())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_start_failures_are_recognised() {
        let raw = b"OCI runtime exec failed: exec failed: unable to start container process: exec: \"nosuch\": executable file not found in $PATH: unknown\r\n";
        assert_eq!(
            start_failure(raw).as_deref(),
            Some("\"nosuch\": executable file not found in $PATH")
        );
        assert_eq!(start_failure(b"hello"), None);
        // A command's own output that merely mentions it is output.
        assert_eq!(start_failure(b"x OCI runtime exec failed: "), None);
    }

    /// A host process is never signalled, whatever pid Docker reported.
    #[test]
    fn a_host_process_is_never_signalled() {
        let mut host = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = rustix::process::Pid::from_raw(host.id() as i32).expect("pid");
        let container = "a".repeat(64);
        let sent = signal_in_container(pid, &container, rustix::process::Signal::KILL);
        assert!(
            matches!(sent, Err(Error::FailedPrecondition(_))),
            "{sent:?}"
        );
        assert!(
            host.try_wait().expect("wait").is_none(),
            "the host process was killed"
        );
        // Nor with a short or empty id that any cgroup path would contain.
        for container in ["", "docker", "a"] {
            let sent = signal_in_container(pid, container, rustix::process::Signal::KILL);
            assert!(sent.is_err());
        }
        assert!(
            host.try_wait().expect("wait").is_none(),
            "the host process was killed"
        );
        host.kill().expect("kill");
        let _ = host.wait();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// Whatever container id Docker (or a confused caller) supplies, a
        /// host process outside every container is never signalled.
        #[test]
        fn no_container_id_reaches_a_host_process(container in "[0-9a-f]{0,70}|.{0,80}") {
            let mut host = std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .expect("spawn sleep");
            let pid = rustix::process::Pid::from_raw(host.id() as i32).expect("pid");
            let sent = signal_in_container(pid, &container, rustix::process::Signal::KILL);
            let alive = host.try_wait().expect("wait").is_none();
            let _ = host.kill();
            let _ = host.wait();
            proptest::prop_assert!(sent.is_err());
            proptest::prop_assert!(alive, "the host process was killed");
        }
    }
}
