//! A sandbox's foreground command (an exec its creator runs in a sandbox
//! created without a command): claimed once, and when it ends the sandbox
//! ends with its exit code.

use std::sync::Arc;
use tracing::Instrument;

use paddock_proto::identity::v1::Principal;
use paddock_proto::sandbox::v1::EndReason;
use paddock_shared::error::{Error, Result};

use super::{Runner, lock};
use crate::store::Record;

impl Runner {
    /// Claims the foreground of a sandbox for an exec: only its creator,
    /// once, and only in a sandbox created without a command of its own.
    pub fn claim_foreground(&self, caller: &Principal, record: &Record) -> Result<()> {
        if record.created_by != caller.id {
            return Err(Error::PermissionDenied(format!(
                "only the creator of {} may run its foreground command",
                record.name()
            )));
        }
        if !record.spec.command.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "{} runs a command of its own; a foreground command needs a sandbox created without one",
                record.name()
            )));
        }
        if !lock(&self.foregrounds).insert(record.id.clone()) {
            return Err(Error::FailedPrecondition(format!(
                "{} already has a foreground command",
                record.name()
            )));
        }
        Ok(())
    }

    /// A foreground command ended: its sandbox ends too, with its exit
    /// code. Marked STOPPING before this returns (so the end reason is this
    /// one, whatever the client asks next); the stop goes on behind.
    pub async fn end_foreground(
        self: &Arc<Self>,
        caller: &Principal,
        record: &Record,
        exit_code: i64,
        reason: EndReason,
        message: &str,
    ) {
        lock(&self.foreground_exits).insert(record.id.clone(), exit_code);
        let grace = self.tuning.stop_grace;
        if let Err(e) = self
            .mark_for_stop(Some(caller), record, grace, reason, message)
            .await
        {
            tracing::warn!(sandbox = record.id, error = %e, "cannot mark the sandbox stopping");
        }
        let runner = self.clone();
        let caller = caller.clone();
        let id = record.id.clone();
        let message = message.to_owned();
        tokio::spawn(async move {
            let ended = async {
                let record = runner.reload(&id).await?;
                runner
                    .stop_because(
                        Some(&caller),
                        record,
                        runner.tuning.stop_grace,
                        reason,
                        &message,
                    )
                    .await
            };
            if let Err(e) = ended.await {
                tracing::warn!(sandbox = id, error = %e, "cannot end the sandbox after its foreground command");
            }
        }.in_current_span());
    }

    /// The exit code of the sandbox's foreground command, when it ended.
    pub(super) fn take_foreground_exit(&self, id: &str) -> Option<i64> {
        lock(&self.foreground_exits).remove(id)
    }
}
