//! A sandbox's output streamed to the terminal: an exec (stdin from ours
//! when asked), the log (`logs`, `attach`), and following a sandbox until
//! it ends (`wait`, `attach`).

use std::io::Write as _;

use paddock_proto::sandbox::v1::*;
use tokio::io::AsyncReadExt as _;
use tonic::Code;

use super::{SandboxClient, rpc_err};
use crate::commands::Ctx;
use crate::error::CliError;

/// Streams one exec: stdin from ours when asked, stdout and stderr to
/// ours as they come. Returns the exit code.
pub(super) async fn stream_exec(
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

/// Prints a sandbox's log: its stdout to ours, its stderr to ours.
pub(super) async fn print_logs(
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
pub(super) async fn wait_for_end(
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
