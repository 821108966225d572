//! The sandbox lifecycle on one worker host: admission (policy, quota),
//! creation, the supervisor of each running sandbox (exit, OOM, TTL, usage,
//! workspace changes), stop, cleanup, and reconciliation with the Docker
//! Engine after a restart. State lives in the store; every transition is
//! audited through the outbox and published to watchers.
//!
//! This module holds the [`Runner`] and what every phase shares (the
//! engine, audit, watchers, names); each phase has a file of its own.

mod create;
mod foreground;
mod reconcile;
mod stop;
mod supervise;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paddock_proto::audit::v1::{AuditEvent, Outcome};
use paddock_proto::identity::v1::Principal;
use paddock_proto::sandbox::v1::Sandbox;
use paddock_shared::auth::{IdentityClient, PolicyClient};
use paddock_shared::db::Database;
use paddock_shared::error::{Error, Result};
use paddock_shared::names::truncate;
use paddock_shared::outbox::{self, Outbox};
use tokio::sync::watch;

use crate::docker::Engine;
use crate::store::{self, Record};
use crate::workspace::Layout;

/// Tunables of the runner.
#[derive(Debug, Clone)]
pub struct Tuning {
    pub stop_grace: Duration,
    pub usage_interval: Duration,
    pub scan_interval: Duration,
    /// (NAME, URL) endpoints set in every sandbox as PADDOCK_{NAME}_ENDPOINT.
    pub endpoints: Vec<(String, String)>,
}

/// Everything the runner's RPCs and background tasks share.
pub struct Runner {
    pub db: Database,
    pub worker: String,
    /// This installation's id (see `store::installation_id`).
    pub installation: String,
    /// Seals env values at rest.
    pub env_key: Arc<paddock_shared::seal::SealingKey>,
    pub docker_host: String,
    engine: Mutex<Option<Engine>>,
    pub identity: IdentityClient,
    pub policy: PolicyClient,
    pub layout: Layout,
    pub tuning: Tuning,
    /// Where the runner records its audit events.
    pub outbox: Outbox,
    /// State of every supervised sandbox, for WatchSandbox.
    watchers: Mutex<HashMap<String, watch::Sender<Sandbox>>>,
    /// Supervisor tasks, aborted when the server stops.
    tasks: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    /// Serializes quota checks with the insert they guard on this runner.
    admit: tokio::sync::Mutex<()>,
    /// Uploads in progress: at most one per sandbox, a few per runner.
    uploads: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Exit codes of foreground commands that ended, until their sandbox's
    /// end is recorded with them.
    foreground_exits: Mutex<HashMap<String, i64>>,
    /// Sandboxes whose foreground command has started (one each).
    foregrounds: Mutex<std::collections::HashSet<String>>,
    /// The logs of running sandboxes.
    pub logs: crate::logs::Logs,
}

/// Uploads spooling at once on one runner.
pub const MAX_UPLOADS: usize = 4;

/// An upload's place; released when dropped.
pub struct UploadSlot {
    uploads: Arc<Mutex<std::collections::HashSet<String>>>,
    id: String,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        lock(&self.uploads).remove(&self.id);
    }
}

fn event(
    principal: Option<&Principal>,
    action: &str,
    resource: &str,
    outcome: Outcome,
    details: serde_json::Value,
) -> AuditEvent {
    let mut e = outbox::event("sandbox-runner", principal, action, resource, outcome);
    e.details_json = details.to_string();
    e
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A new sandbox id: "sb" and 14 base-36 characters.
fn new_id() -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let tail: String = (0..14)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("sb{tail}")
}

impl Runner {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        db: Database,
        worker: String,
        installation: String,
        env_key: Arc<paddock_shared::seal::SealingKey>,
        docker_host: String,
        identity: IdentityClient,
        policy: PolicyClient,
        data_dir: PathBuf,
        tuning: Tuning,
        outbox: Outbox,
    ) -> Self {
        Self {
            db,
            worker,
            installation,
            env_key,
            docker_host,
            engine: Mutex::new(None),
            identity,
            policy,
            layout: Layout::new(&data_dir),
            tuning,
            outbox,
            watchers: Mutex::default(),
            tasks: Mutex::default(),
            admit: tokio::sync::Mutex::new(()),
            foreground_exits: Mutex::default(),
            foregrounds: Mutex::default(),
            logs: crate::logs::Logs::new(&data_dir),
            uploads: Arc::default(),
        }
    }

    /// A place for one upload into sandbox `id`, or RESOURCE_EXHAUSTED.
    pub fn upload_slot(&self, id: &str) -> Result<UploadSlot> {
        let mut uploads = lock(&self.uploads);
        if uploads.contains(id) {
            return Err(Error::ResourceExhausted(format!(
                "an upload into sandbox {id} is already in progress; one at a time"
            )));
        }
        if uploads.len() >= MAX_UPLOADS {
            return Err(Error::ResourceExhausted(format!(
                "this worker already receives {MAX_UPLOADS} uploads; try again shortly"
            )));
        }
        uploads.insert(id.to_owned());
        Ok(UploadSlot {
            uploads: self.uploads.clone(),
            id: id.to_owned(),
        })
    }

    /// The engine, or FAILED_PRECONDITION naming the socket tried.
    pub fn engine(&self) -> Result<Engine> {
        lock(&self.engine).clone().ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "the Docker Engine at {} is not reachable; sandboxes cannot run on this worker",
                self.docker_host
            ))
        })
    }

    pub fn set_engine(&self, engine: Option<Engine>) {
        *lock(&self.engine) = engine;
    }

    /// Records an event that changes no stored state (an exec, an upload,
    /// a refusal) through the outbox, on its own.
    pub(crate) async fn audit(
        &self,
        principal: Option<&Principal>,
        action: &str,
        resource: &str,
        outcome: Outcome,
        details: serde_json::Value,
    ) {
        self.record_event(event(principal, action, resource, outcome, details))
            .await;
    }

    async fn record_event(&self, e: AuditEvent) {
        if let Err(err) = self.outbox.record_now(&e).await {
            tracing::error!(action = e.action, error = %err, "cannot record an audit event");
        }
    }

    /// Publishes a record to its watchers.
    fn publish(&self, r: &Record) {
        let mut watchers = lock(&self.watchers);
        if let Some(tx) = watchers.get(&r.id) {
            tx.send_replace(r.to_proto());
        }
        if !r.is_live() {
            watchers.remove(&r.id);
        }
    }

    /// A receiver of a sandbox's state, when it is supervised here.
    pub fn subscribe(&self, id: &str) -> Option<watch::Receiver<Sandbox>> {
        lock(&self.watchers).get(id).map(watch::Sender::subscribe)
    }

    /// Aborts every supervisor (the sandboxes keep running; a restarted
    /// runner re-adopts them).
    pub fn abort_supervisors(&self) {
        for (_, task) in lock(&self.tasks).drain() {
            task.abort();
        }
    }

    async fn reload(&self, id: &str) -> Result<Record> {
        store::get_by_id(&self.db.pool, id)
            .await?
            .ok_or_else(|| Error::Internal(format!("sandbox {id} vanished from the store")))
    }
}

/// The organization id of an org principal.
pub fn organization_id(caller: &Principal) -> Result<String> {
    paddock_shared::request::caller_org(caller).map(str::to_owned)
}

pub fn container_name(org: &str, id: &str) -> String {
    format!("paddock-{org}-{id}")
}

pub fn network_name(id: &str) -> String {
    format!("paddock-{id}")
}

/// Nobody runs an agent whose role is above their own: its session token
/// would act with permissions the member lacks. Checked at create against
/// the caller's role and key role, and by the kill switch against the
/// creator's current role, so a demotion stops what it no longer allows.
/// Says why when `member` may not run `agent` (an agent without a
/// principal is above everyone).
pub(crate) fn above_runner(
    member: &Principal,
    agent_name: &str,
    agent: Option<&Principal>,
) -> Option<String> {
    let role = agent.map_or("", |a| a.role.as_str());
    let lacks =
        paddock_shared::rbac::Grant::of(&member.role, &member.key_role, &[]).lacks_for(role);
    if lacks.is_empty() {
        return None;
    }
    Some(format!(
        "agent {}: its role ({}) is above {}'s own (lacking {})",
        truncate(agent_name),
        if role.is_empty() { "unknown" } else { role },
        if member.display_name.is_empty() {
            "the member"
        } else {
            member.display_name.as_str()
        },
        lacks.join(", ")
    ))
}
