//! Retention: a background job deletes each organization's events older
//! than its `retention_days`, oldest first in chain order, in bounded
//! transactions, each moving the organization's checkpoint (the last
//! deleted sequence and hash) with the deletion, so the chain stays
//! verifiable from the checkpoint on.

use std::time::Duration;

use paddock_shared::error::Result;
use paddock_shared::names::org_name;

use crate::store::{Stop, Store};

/// Events deleted per transaction: bounded, so appends wait little for the
/// write lock (SQLite) and a crash loses no more than one step of work.
pub const BATCH: i64 = 1000;

const DAY_MICROS: i64 = 86_400_000_000;

/// What one retention pass did to one organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRun {
    /// organizations/{organization}
    pub organization: String,
    /// Events deleted in this pass.
    pub deleted: i64,
    /// The checkpoint after the pass (0: nothing ever deleted).
    pub checkpoint_sequence: i64,
    /// Set when the pass stopped at a broken link instead of deleting
    /// across it: the sequence verification names.
    pub broken_sequence: Option<i64>,
}

/// One pass over every organization with a retention period, as of `now`
/// (unix microseconds), deleting at most `batch` events per transaction.
pub async fn enforce(store: &Store, now: i64, batch: i64) -> Result<Vec<RetentionRun>> {
    let batch = batch.max(1);
    let mut runs = Vec::new();
    for (org, days) in store.retention_periods().await? {
        let cutoff = now.saturating_sub(days.saturating_mul(DAY_MICROS));
        let mut run = RetentionRun {
            organization: org_name(&org),
            deleted: 0,
            checkpoint_sequence: 0,
            broken_sequence: None,
        };
        loop {
            let step = store.prune(&org, cutoff, batch, now).await?;
            run.deleted += step.deleted;
            run.checkpoint_sequence = step.checkpoint;
            match step.stop {
                None => {
                    // Let appends waiting for the write lock go first.
                    tokio::task::yield_now().await;
                }
                Some(Stop::Broken(sequence)) => {
                    tracing::error!(
                        organization = %run.organization,
                        sequence,
                        "retention stopped at a broken link of the audit chain; run verify"
                    );
                    run.broken_sequence = Some(sequence);
                    break;
                }
                Some(Stop::Retained | Stop::End) => break,
            }
        }
        if run.deleted > 0 {
            tracing::info!(
                organization = %run.organization,
                deleted = run.deleted,
                checkpoint = run.checkpoint_sequence,
                "retention deleted old audit events"
            );
        }
        runs.push(run);
    }
    Ok(runs)
}

/// Runs [`enforce`] right away and then every `interval` until aborted.
pub fn spawn(store: Store, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let now = paddock_shared::time::now_micros();
            if let Err(e) = enforce(&store, now, BATCH).await {
                tracing::warn!(error = %e, retry_in = ?interval, "audit retention pass failed");
            }
        }
    })
}
