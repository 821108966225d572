//! Supervising a running sandbox until it ends: its exit (and an OOM kill),
//! the TTL (with the retried stop of an expired sandbox), usage samples,
//! workspace changes, and the log of its main process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use paddock_proto::audit::v1::Outcome;
use paddock_proto::sandbox::v1::{EndReason, SandboxState};
use paddock_shared::error::Result;
use paddock_shared::time::now_micros;
use tokio::sync::watch;

use super::{Runner, event, lock};
use crate::store::{self, Record};
use crate::workspace::Scanner;

impl Runner {
    /// Watches a running sandbox until it ends.
    pub fn supervise(self: &Arc<Self>, record: Record) {
        let id = record.id.clone();
        lock(&self.watchers)
            .entry(id.clone())
            .or_insert_with(|| watch::channel(record.to_proto()).0);
        let runner = self.clone();
        let task = tokio::spawn(
            async move {
                if let Err(e) = runner.run_supervisor(record).await {
                    tracing::error!(error = %e, "sandbox supervisor failed");
                }
            }
            .in_current_span(),
        );
        lock(&self.tasks).insert(id, task.abort_handle());
    }

    /// Stops the container of a sandbox whose TTL ran out, retrying with
    /// backoff (1 s doubling to 30 s, without end) until the Docker Engine
    /// has done it: an expired sandbox must not keep running because one
    /// call failed. The first failure is in the audit trail; each is logged.
    async fn stop_expired(&self, name: &str, container: &str) {
        use backon::Retryable as _;
        const BACKOFF: backon::ExponentialBuilder = backon::ExponentialBuilder::new()
            .with_min_delay(Duration::from_secs(1))
            .with_max_delay(Duration::from_secs(30))
            .without_max_times();
        let reported = std::sync::atomic::AtomicBool::new(false);
        let stop = || async {
            let result = match self.engine() {
                Ok(engine) => engine.stop(container, self.tuning.stop_grace).await,
                Err(e) => Err(e),
            };
            if let Err(e) = &result
                && !reported.swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                let details = serde_json::json!({"reason": "ttl_expired", "error": e.to_string()});
                self.record_event(event(None, "sandbox.stop", name, Outcome::Failure, details))
                    .await;
            }
            result
        };
        let stopped = stop
            .retry(BACKOFF)
            .sleep(tokio::time::sleep)
            .notify(|e, retry_in| {
                tracing::warn!(sandbox = name, error = %e, ?retry_in, "the TTL stop failed");
            })
            .await;
        if let Err(e) = stopped {
            // Not reached: the backoff has no last attempt.
            tracing::error!(sandbox = name, error = %e, "the TTL stop gave up");
        }
    }

    async fn run_supervisor(self: Arc<Self>, record: Record) -> Result<()> {
        let engine = self.engine()?;
        let id = record.id.clone();
        let container = record.container_id.clone();
        // Walking the workspace is blocking file I/O: off the async threads.
        let root = PathBuf::from(&record.workspace);
        let mut scanner = match tokio::task::spawn_blocking(move || Scanner::new(root)).await {
            Ok(scanner) => Some(scanner),
            Err(e) => {
                // Without it file changes go unrecorded: say so, where the
                // organization looks.
                tracing::error!(sandbox = id, error = %e, "the workspace scanner is lost");
                paddock_shared::metrics::scanner_lost();
                let details = serde_json::json!({"error": "the workspace scanner stopped; file changes are not recorded"});
                self.record_event(event(
                    None,
                    "sandbox.scanner_lost",
                    &record.name(),
                    Outcome::Failure,
                    details,
                ))
                .await;
                None
            }
        };
        let expire_in = Duration::from_micros((record.expire_time - now_micros()).max(0) as u64);
        let ttl = tokio::time::sleep(expire_in);
        tokio::pin!(ttl);
        let mut ttl_fired = false;
        let mut usage = tokio::time::interval(self.tuning.usage_interval);
        let mut scan = tokio::time::interval(self.tuning.scan_interval);
        // The main process's output goes to the sandbox's log.
        let follower = match self.logs.open(&record.org, &id) {
            Ok((log, resumed)) => {
                let engine = engine.clone();
                let container = container.clone();
                Some(tokio::spawn(
                    async move { engine.follow_logs(&container, &log, resumed).await }
                        .in_current_span(),
                ))
            }
            Err(e) => {
                tracing::warn!(sandbox = id, error = %e, "the sandbox's output is not kept");
                None
            }
        };
        let wait = engine.wait(&container);
        tokio::pin!(wait);
        let exit = loop {
            tokio::select! {
                exit = &mut wait => break exit,
                _ = &mut ttl, if !ttl_fired => {
                    ttl_fired = true;
                    if store::mark_stopping(&self.db.pool, &id, EndReason::TtlExpired, "the TTL ran out").await? {
                        let r = self.reload(&id).await?;
                        self.publish(&r);
                        self.record_event(event(None, "sandbox.ttl_expired", &r.name(), Outcome::Success, serde_json::json!({}))).await;
                    }
                    let runner = self.clone();
                    let name = record.name();
                    let container = container.clone();
                    tokio::spawn(
                        async move { runner.stop_expired(&name, &container).await }.in_current_span(),
                    );
                }
                _ = usage.tick() => {
                    if let Some((cpu, mem)) = engine.sample(&container).await {
                        store::record_usage(&self.db.pool, &id, cpu, mem).await?;
                    }
                }
                _ = scan.tick() => self.report_changes(&record, &mut scanner).await,
            }
        };
        self.report_changes(&record, &mut scanner).await;
        if let Some(follower) = follower {
            // The stream ends with the container; the last lines first.
            let _ = tokio::time::timeout(Duration::from_secs(5), follower).await;
        }
        let mut state = engine.state(&container).await?;
        let current = self.reload(&id).await?;
        // Docker learns of an OOM kill from a separate event that can land
        // just after the exit: look again before calling a 137 a plain exit.
        if current.end_reason == EndReason::Unspecified {
            for _ in 0..20 {
                match state {
                    Some(s) if s.exit_code == 137 && !s.oom_killed => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        state = engine.state(&container).await?;
                    }
                    _ => break,
                }
            }
        }
        let (reason, exit_code, message) = match (exit?, state) {
            (_, Some(s)) if s.oom_killed => (
                EndReason::OomKilled,
                Some(s.exit_code),
                "the memory limit was reached".to_owned(),
            ),
            (code, s) => {
                let code = code.or(s.map(|s| s.exit_code));
                let reason = match current.end_reason {
                    EndReason::Unspecified => {
                        if code.is_some() {
                            EndReason::Exited
                        } else {
                            EndReason::RunnerLost
                        }
                    }
                    r => r,
                };
                (reason, code, current.message.clone())
            }
        };
        // A foreground command's exit is the sandbox's.
        let exit_code = self.take_foreground_exit(&id).or(exit_code);
        let message = match (reason, exit_code) {
            (EndReason::Exited, Some(126 | 127)) if message.is_empty() => {
                self.not_started(&record).unwrap_or_default()
            }
            _ => message,
        };
        if reason == EndReason::OomKilled {
            self.record_event(event(None, "sandbox.oom", &record.name(), Outcome::Failure, serde_json::json!({"memory_bytes": record.spec.resources.as_ref().map(|r| r.memory_bytes)}))).await;
        }
        self.finish(&id, SandboxState::Stopped, reason, exit_code, &message)
            .await?;
        lock(&self.tasks).remove(&id);
        Ok(())
    }

    async fn report_changes(&self, record: &Record, scanner: &mut Option<Scanner>) {
        const MAX_EVENTS_PER_SCAN: usize = 100;
        let Some(mut walker) = scanner.take() else {
            return;
        };
        let Ok((walker, scanner_changes)) = tokio::task::spawn_blocking(move || {
            let changes = walker.scan();
            (walker, changes)
        })
        .await
        else {
            return;
        };
        *scanner = Some(walker);
        let total = scanner_changes.len();
        for change in scanner_changes.iter().take(MAX_EVENTS_PER_SCAN) {
            self.record_event(event(
                None,
                "file.modify",
                &record.name(),
                Outcome::Success,
                serde_json::json!({
                    "path": format!("/workspace/{}", change.path),
                    "operation": change.operation,
                    "size": change.size,
                }),
            ))
            .await;
        }
        if total > MAX_EVENTS_PER_SCAN {
            self.record_event(event(
                None,
                "file.modify",
                &record.name(),
                Outcome::Success,
                serde_json::json!({"more_changes": total - MAX_EVENTS_PER_SCAN}),
            ))
            .await;
        }
    }

    /// Why a sandbox's own command could not be started, from what the
    /// init process said in its log (`exec nosuch failed: No such file or
    /// directory`), when it said so.
    fn not_started(&self, record: &Record) -> Option<String> {
        let frames = crate::logs::tail(self.logs.read(&record.org, &record.id).ok()?, 4096);
        let text: Vec<u8> = frames.into_iter().flat_map(|f| f.data).collect();
        let text = String::from_utf8_lossy(&text);
        let line = text.lines().rev().find(|l| l.contains("[FATAL tini"))?;
        let why = line.split_once("] ").map_or(line, |(_, why)| why).trim();
        Some(format!(
            "the command could not be started: {}",
            why.chars().take(512).collect::<String>()
        ))
    }
}
