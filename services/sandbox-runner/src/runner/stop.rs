//! Stopping a sandbox and ending it once: the final state, the audit event
//! and the cleanup of what it used on this worker; and the purge of a
//! deleted organization.

use std::sync::Arc;
use std::time::Duration;

use paddock_proto::audit::v1::Outcome;
use paddock_proto::authz::v1::NetworkMode;
use paddock_proto::identity::v1::{Principal, RevokeSessionTokenRequest};
use paddock_proto::sandbox::v1::{EndReason, Sandbox, SandboxState};
use paddock_shared::error::Result;
use paddock_shared::time::now_micros;

use super::{Runner, event, lock, network_name};
use crate::spec;
use crate::store::{self, Ending, Record};

impl Runner {
    /// Stops a sandbox and returns it once it has ended.
    pub async fn stop(
        self: &Arc<Self>,
        caller: Option<&Principal>,
        record: Record,
        grace: Duration,
        reason: EndReason,
    ) -> Result<Sandbox> {
        self.stop_because(caller, record, grace, reason, "").await
    }

    /// [`Runner::stop`], saying why in the record's message.
    #[tracing::instrument(name = "sandbox.stop", skip_all, fields(sandbox = %record.id, reason = ?reason))]
    pub async fn stop_because(
        self: &Arc<Self>,
        caller: Option<&Principal>,
        record: Record,
        grace: Duration,
        reason: EndReason,
        message: &str,
    ) -> Result<Sandbox> {
        if !record.is_live() {
            return Ok(record.to_proto());
        }
        let mut rx = self.subscribe(&record.id);
        self.mark_for_stop(caller, &record, grace, reason, message)
            .await?;
        let supervised = lock(&self.tasks).contains_key(&record.id);
        if !record.container_id.is_empty() {
            self.engine()?.stop(&record.container_id, grace).await?;
        }
        if supervised && let Some(rx) = rx.as_mut() {
            // The supervisor sees the exit and finishes the record.
            let ended = tokio::time::timeout(
                grace + Duration::from_secs(30),
                rx.wait_for(|s| {
                    s.state == SandboxState::Stopped as i32
                        || s.state == SandboxState::Failed as i32
                }),
            )
            .await;
            if let Ok(Ok(s)) = ended {
                return Ok(s.clone());
            }
        }
        // Nobody supervises it: finish here.
        let state = match &record.container_id {
            id if id.is_empty() => None,
            id => self.engine()?.state(id).await?,
        };
        let exit_code = self
            .take_foreground_exit(&record.id)
            .or(state.map(|s| s.exit_code));
        self.finish(
            &record.id,
            SandboxState::Stopped,
            reason,
            exit_code,
            message,
        )
        .await?;
        Ok(self.reload(&record.id).await?.to_proto())
    }

    /// Moves a live sandbox to STOPPING for `reason` (the first reason
    /// wins), publishes and audits it. Returns whether this call did.
    pub(super) async fn mark_for_stop(
        &self,
        caller: Option<&Principal>,
        record: &Record,
        grace: Duration,
        reason: EndReason,
        message: &str,
    ) -> Result<bool> {
        if !store::mark_stopping(&self.db.pool, &record.id, reason, message).await? {
            return Ok(false);
        }
        let r = self.reload(&record.id).await?;
        self.publish(&r);
        self.record_event(event(
            caller,
            "sandbox.stop",
            &r.name(),
            Outcome::Success,
            serde_json::json!({
                "grace_seconds": grace.as_secs(),
                "reason": spec::reason_name(reason),
                "message": message,
            }),
        ))
        .await;
        Ok(true)
    }

    /// Ends a sandbox once: records the final state and removes its
    /// container, network, token, credentials and (unless kept) workspace.
    #[tracing::instrument(name = "sandbox.finish", skip_all, fields(sandbox = %id, state = ?state))]
    pub async fn finish(
        &self,
        id: &str,
        state: SandboxState,
        reason: EndReason,
        exit_code: Option<i64>,
        message: &str,
    ) -> Result<()> {
        let record = self.reload(id).await?;
        let mut tx = self.db.begin_write().await?;
        let won = store::mark_ended(
            &mut tx,
            id,
            &Ending {
                state,
                reason,
                exit_code,
                message,
                now: now_micros(),
            },
        )
        .await?;
        if !won {
            return Ok(());
        }
        let action = if state == SandboxState::Failed {
            "sandbox.fail"
        } else {
            "sandbox.end"
        };
        let ended = event(
            None,
            action,
            &record.name(),
            if state == SandboxState::Failed {
                Outcome::Failure
            } else {
                Outcome::Success
            },
            serde_json::json!({
                "reason": EndReason::try_from(reason as i32).map(|r| r.as_str_name()).unwrap_or(""),
                "exit_code": exit_code,
                "message": message,
            }),
        );
        self.outbox.commit(tx, ended).await?;
        self.logs.close(id);
        lock(&self.foregrounds).remove(id);
        lock(&self.foreground_exits).remove(id);
        self.cleanup(&record).await;
        let ended = self.reload(id).await?;
        self.publish(&ended);
        Ok(())
    }

    #[tracing::instrument(name = "sandbox.cleanup", skip_all, fields(sandbox = %record.id))]
    async fn cleanup(&self, record: &Record) {
        if let Ok(engine) = self.engine() {
            if !record.container_id.is_empty()
                && let Err(e) = engine.remove(&record.container_id).await
            {
                tracing::warn!(sandbox = record.id, error = %e, "cannot remove the container");
            }
            if NetworkMode::try_from(record.spec.network_mode) == Ok(NetworkMode::Open) {
                if let Err(e) = engine.remove_network(&network_name(&record.id)).await {
                    tracing::warn!(sandbox = record.id, error = %e, "cannot remove the network");
                }
                crate::egress::remove(&crate::egress::bridge_name(&record.id)).await;
            }
        }
        let revoked = self
            .identity
            .clone()
            .revoke_session_token(RevokeSessionTokenRequest {
                sandbox: record.name(),
            })
            .await;
        if let Err(s) = revoked {
            // The token expires with the TTL anyway; retry at reconcile.
            tracing::warn!(sandbox = record.id, code = ?s.code(), "cannot revoke the session token");
        }
        self.layout.remove_credentials(&record.id).await;
        self.layout.remove_tmp(&record.id).await;
        if !record.spec.keep_workspace {
            self.layout.remove_workspace(&record.org, &record.id).await;
        }
    }

    // ---- organization deletion ------------------------------------------

    /// Leaves nothing of a deleted organization on this worker: its
    /// sandboxes are stopped (their containers, networks, guard rules,
    /// credential files and session tokens go with them), their records and
    /// workspaces (kept ones too) are deleted, and its cache volumes are
    /// removed. Idempotent: a purge cut short is run again.
    pub async fn purge_organization(self: &Arc<Self>, org: &str) -> Result<()> {
        let records = store::of_org_on_worker(&self.db.pool, org, &self.worker).await?;
        for record in &records {
            if record.is_live() {
                self.stop(
                    None,
                    record.clone(),
                    self.tuning.stop_grace,
                    EndReason::OrganizationDeleted,
                )
                .await?;
            }
            self.layout.remove_workspace(&record.org, &record.id).await;
            self.layout.remove_credentials(&record.id).await;
            self.layout.remove_tmp(&record.id).await;
            self.logs.remove(&record.org, &record.id);
            let mut tx = self.db.begin_write().await?;
            store::delete(&mut tx, &record.id).await?;
            tx.commit().await?;
        }
        self.layout.remove_org_workspaces(org);
        self.logs.remove_org(org);
        self.layout.remove_caches(&self.installation, org).await;
        // Cache volumes of releases before caches had a disk bound.
        if let Ok(engine) = self.engine() {
            for volume in engine.cache_volumes(&self.worker, org).await? {
                engine.remove_volume(&volume).await?;
            }
        }
        if !records.is_empty() {
            self.audit(
                None,
                "organization.purge",
                &format!("organizations/{org}"),
                Outcome::Success,
                serde_json::json!({"worker": self.worker, "sandboxes": records.len()}),
            )
            .await;
        }
        tracing::info!(
            org,
            sandboxes = records.len(),
            "purged a deleted organization"
        );
        Ok(())
    }
}
