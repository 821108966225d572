//! Reconciliation with the Docker Engine after a (re)start: re-adopting,
//! finishing, and removing what no live record owns.

use std::collections::HashMap;
use std::sync::Arc;

use paddock_proto::sandbox::v1::{EndReason, SandboxState};
use paddock_shared::error::Result;
use paddock_shared::time::now_micros;

use super::{Runner, lock};
use crate::docker;
use crate::store;

impl Runner {
    /// Brings the store and the engine into agreement after a (re)start:
    /// re-adopts running containers with a live record, finishes records
    /// whose container exited or vanished, and removes labelled containers
    /// and networks with no live record.
    pub async fn reconcile(self: &Arc<Self>) -> Result<()> {
        let engine = self.engine()?;
        let containers = engine.labelled_containers(&self.worker).await?;
        let live = store::live_on_worker(&self.db.pool, &self.worker).await?;
        let by_sandbox: HashMap<&str, &docker::Labelled> =
            containers.iter().map(|c| (c.sandbox.as_str(), c)).collect();

        for record in &live {
            let container = by_sandbox.get(record.id.as_str());
            let state = match container {
                Some(c) => engine.state(&c.id).await?,
                None => None,
            };
            match (container, state) {
                (Some(c), Some(s)) if s.running && record.state != SandboxState::Pending => {
                    let mut adopted = record.clone();
                    if adopted.container_id.is_empty() {
                        let mut conn = self.db.pool.acquire().await?;
                        store::mark_running(&mut conn, &record.id, &c.id, now_micros()).await?;
                        adopted = self.reload(&record.id).await?;
                    }
                    if !lock(&self.tasks).contains_key(&record.id) {
                        tracing::info!(sandbox = record.id, "re-adopting a running sandbox");
                        self.supervise(adopted);
                    }
                }
                (Some(c), Some(s)) => {
                    let mut r = record.clone();
                    r.container_id = c.id.clone();
                    let reason = if s.oom_killed {
                        EndReason::OomKilled
                    } else if record.end_reason != EndReason::Unspecified {
                        record.end_reason
                    } else if s.running {
                        EndReason::RunnerLost
                    } else {
                        EndReason::Exited
                    };
                    if s.running {
                        engine.stop(&c.id, self.tuning.stop_grace).await?;
                    }
                    self.finish(&r.id, SandboxState::Stopped, reason, Some(s.exit_code), "")
                        .await?;
                }
                _ => {
                    self.finish(
                        &record.id,
                        SandboxState::Failed,
                        EndReason::RunnerLost,
                        None,
                        "the container vanished while the runner was away",
                    )
                    .await?;
                }
            }
        }

        let live_ids: std::collections::HashSet<String> =
            store::live_on_worker(&self.db.pool, &self.worker)
                .await?
                .into_iter()
                .map(|r| r.id)
                .collect();
        for c in &containers {
            if !live_ids.contains(&c.sandbox) {
                tracing::info!(
                    container = c.id,
                    sandbox = c.sandbox,
                    "removing an orphaned container"
                );
                engine.remove(&c.id).await?;
            }
        }
        for (network, sandbox) in engine.labelled_networks(&self.worker).await? {
            if !live_ids.contains(&sandbox) {
                engine.remove_network(&network).await?;
                crate::egress::remove(&crate::egress::bridge_name(&sandbox)).await;
            }
        }
        crate::egress::purge_stale().await;
        Ok(())
    }
}
