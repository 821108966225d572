//! The sandbox lifecycle on one worker host: admission (policy, quota),
//! creation, the supervisor of each running sandbox (exit, OOM, TTL, usage,
//! workspace changes), stop, cleanup, and reconciliation with the Docker
//! Engine after a restart. State lives in the store; every transition is
//! audited through the outbox and published to watchers.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument;

use paddock_proto::audit::v1::{AuditEvent, Outcome};
use paddock_proto::authz::v1::{GetEffectivePolicyRequest, HardeningRelaxations, NetworkMode};
use paddock_proto::identity::v1::{
    CreateSessionTokenRequest, LookupResourcesRequest, Principal, PrincipalKind,
    RevealCredentialRequest, RevokeSessionTokenRequest,
};
use paddock_proto::sandbox::v1::{
    CreateSandboxRequest, EndReason, Sandbox, SandboxSpec, SandboxState,
};
use paddock_shared::auth::{Admission, IdentityClient, PolicyClient, dependency_status};
use paddock_shared::db::{Backend, Database};
use paddock_shared::error::{Error, Result};
use paddock_shared::names::{child_name, parse_child, parse_org, truncate};
use paddock_shared::outbox;
use paddock_shared::time::{now_micros, proto_duration};
use tokio::sync::{Notify, watch};

use crate::docker::{self, ContainerPlan, Engine};
use crate::spec::{self, Resolved};
use crate::store::{self, Ending, Record};
use crate::users::UserIds;
use crate::workspace::{Layout, Scanner};

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
    pub audit_wake: Option<Arc<Notify>>,
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
        audit_wake: Option<Arc<Notify>>,
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
            audit_wake,
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

    pub fn wake_audit(&self) {
        if let Some(w) = &self.audit_wake {
            w.notify_one();
        }
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
        if let Err(err) = outbox::record_now(&self.db.pool, &e).await {
            tracing::error!(action = e.action, error = %err, "cannot record an audit event");
        }
        self.wake_audit();
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

    // ---- create ---------------------------------------------------------

    /// Creates a sandbox for `caller` and returns it once RUNNING (or
    /// FAILED when Docker would not start it).
    pub async fn create(
        self: &Arc<Self>,
        caller: &Principal,
        admission: &Admission,
        req: CreateSandboxRequest,
    ) -> Result<Sandbox> {
        let org = if req.parent.is_empty() {
            organization_id(caller)?
        } else {
            parse_org(&req.parent)?.to_owned()
        };
        if org != organization_id(caller)? {
            return Err(Error::not_found(format!(
                "organizations/{}",
                truncate(&org)
            )));
        }
        let mut spec = req.spec.ok_or_else(|| Error::invalid("spec is required"))?;
        let agent = self.agent_of(caller, &org, &spec)?;
        spec.agent = child_name(&org, "agents", &agent);
        // Who may run as this agent: an agent only as itself (its key or
        // its sandbox's session token alike); anyone else needs
        // agents.execute on that agent. The policy, credentials and
        // network then all come from this agent's policy.
        if caller.kind == PrincipalKind::Agent as i32 {
            if caller.name != spec.agent {
                let err = Error::PermissionDenied(format!(
                    "an agent may only run sandboxes as itself: {} cannot run as {}",
                    caller.name,
                    truncate(&spec.agent)
                ));
                self.refused(caller, &org, &spec, &err).await;
                return Err(err);
            }
        } else {
            admission
                .require(caller, "agents.execute", &spec.agent, "")
                .await
                .map_err(Error::from_status)?;
        }
        if spec.project.is_empty() {
            return Err(Error::invalid("spec.project is required"));
        }
        let project = if spec.project.contains('/') {
            let (p_org, p) = parse_child(&spec.project, "projects")?;
            if p_org != org {
                return Err(Error::not_found(truncate(&spec.project)));
            }
            p.to_owned()
        } else {
            paddock_shared::names::validate_id("project", &spec.project)?;
            spec.project.clone()
        };
        spec.project = child_name(&org, "projects", &project);
        self.require_existing(caller, &org, &spec).await?;

        let engine = self.engine()?;
        let effective = self
            .policy
            .clone()
            .get_effective_policy(GetEffectivePolicyRequest {
                agent: spec.agent.clone(),
            })
            .await
            .map_err(|s| Error::from_status(dependency_status("authz", s)))?
            .into_inner();
        let policy = effective.policy.unwrap_or_default();
        let settings = effective.settings.unwrap_or_default();
        let resolved = match spec::resolve(spec.clone(), &policy) {
            Ok(r) => r,
            Err(e) => {
                self.refused(caller, &org, &spec, &e).await;
                return Err(e);
            }
        };

        // Never root unless the organization allows it: an image whose user
        // resolves to uid 0 (root, 0, 00, 0:0, a uid-0 name) runs as the
        // sandbox user, like an image that names no user.
        let relax = settings.hardening.clone().unwrap_or_default();
        // Images are the worker's, shared by every tenant: an organization
        // runs only the ones its owner approved, and an image that is not
        // approved is answered exactly like one that is not there.
        let image = &resolved.spec.image;
        let unavailable = || {
            Error::FailedPrecondition(format!(
                "image {} is not available to organization {org}: it is not on this worker or \
                 not among the organization's approved images (`paddock security set --allow-image`)",
                truncate(image)
            ))
        };
        if !settings
            .allowed_images
            .iter()
            .any(|pattern| paddock_shared::names::glob_matches(pattern, image))
        {
            let err = unavailable();
            self.refused(caller, &org, &spec, &err).await;
            return Err(err);
        }
        let image_user = match engine.image_user(image, &self.worker).await {
            Err(Error::NotFound(_)) => {
                let err = unavailable();
                self.refused(caller, &org, &spec, &err).await;
                return Err(err);
            }
            other => other?,
        };
        let ids = match image_user {
            Some(u) if !u.is_root() => UserIds {
                uid: u.uid,
                gid: if u.gid == 0 && !relax.allow_root_user {
                    u.uid
                } else {
                    u.gid
                },
            },
            _ if relax.allow_root_user => UserIds { uid: 0, gid: 0 },
            _ => spec::SANDBOX_IDS,
        };
        let uid = ids.uid;
        let user = format!("{}:{}", ids.uid, ids.gid);

        // Admission under the quota, and the record, in one step.
        let id = new_id();
        let now = now_micros();
        let record = Record {
            id: id.clone(),
            org: org.clone(),
            agent: agent.clone(),
            created_by: caller.id.clone(),
            // Env values are stored sealed; the container gets them from
            // `resolved` in memory.
            spec: crate::envseal::sealed_spec(&self.env_key, &org, &id, &resolved.spec),
            state: SandboxState::Pending,
            end_reason: EndReason::Unspecified,
            exit_code: None,
            message: String::new(),
            worker: self.worker.clone(),
            container_id: String::new(),
            workspace: self
                .layout
                .workspace(&org, &id)
                .to_string_lossy()
                .into_owned(),
            uid,
            create_time: now,
            start_time: None,
            end_time: None,
            expire_time: now + resolved.ttl.as_micros() as i64,
            cpu_seconds: 0.0,
            memory_peak: 0,
            execs: 0,
        };
        {
            let _admit = self.admit.lock().await;
            // The count and the insert see the same state.
            let mut tx = self.db.begin_write().await?;
            if self.db.backend == Backend::Postgres {
                // Serializes admissions of one organization across runners.
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                    .bind(&org)
                    .execute(&mut *tx)
                    .await?;
            }
            let (in_org, of_agent) = store::count_live(&mut tx, &org, &agent).await?;
            let max_org = i64::from(settings.max_sandboxes);
            let max_agent = i64::from(policy.max_sandboxes);
            let over = if max_org > 0 && in_org >= max_org {
                Some(format!(
                    "the organization already runs {in_org} sandboxes, its bound max_sandboxes is {max_org}"
                ))
            } else if max_agent > 0 && of_agent >= max_agent {
                Some(format!(
                    "agent {agent} already runs {of_agent} sandboxes, its policy's bound max_sandboxes is {max_agent}"
                ))
            } else {
                None
            };
            if let Some(msg) = over {
                drop(tx);
                let err = Error::ResourceExhausted(msg);
                self.refused(caller, &org, &spec, &err).await;
                return Err(err);
            }
            store::insert(&mut tx, &record).await?;
            outbox::record(
                &mut tx,
                &event(
                    Some(caller),
                    "sandbox.create",
                    &record.name(),
                    Outcome::Success,
                    serde_json::json!({
                        "agent": resolved.spec.agent,
                        "project": resolved.spec.project,
                        "image": resolved.spec.image,
                        "cpus": resolved.cpus,
                        "memory_bytes": resolved.memory_bytes,
                        "pids": resolved.pids,
                        "ttl_seconds": resolved.ttl.as_secs(),
                        "network": spec::mode_name(resolved.network),
                        "credentials": resolved.spec.credentials.iter().map(|c| &c.credential).collect::<Vec<_>>(),
                        "caches": resolved.spec.caches,
                    }),
                ),
            )
            .await?;
            tx.commit().await?;
        }
        self.wake_audit();

        let (tx, _) = watch::channel(record.to_proto());
        lock(&self.watchers).insert(id.clone(), tx);

        match self
            .start(
                &engine,
                &record,
                &resolved,
                &user,
                uid,
                relax,
                settings
                    .max
                    .map(|m| m.disk_bytes)
                    .filter(|b| *b > 0)
                    .unwrap_or(resolved.disk_bytes) as u64,
            )
            .await
        {
            Ok(container_id) => {
                let mut conn = self.db.pool.acquire().await?;
                store::mark_running(&mut conn, &id, &container_id, now_micros()).await?;
                drop(conn);
                let running = self.reload(&id).await?;
                self.record_event(event(
                    Some(caller),
                    "sandbox.start",
                    &running.name(),
                    Outcome::Success,
                    serde_json::json!({"worker": self.worker}),
                ))
                .await;
                self.publish(&running);
                self.supervise(running.clone());
                Ok(running.to_proto())
            }
            Err(e) => {
                let message = match &e {
                    Error::Internal(_) | Error::Database(_) => {
                        "the container could not be started".to_owned()
                    }
                    other => other.to_string(),
                };
                tracing::warn!(sandbox = id, error = %e, "sandbox failed to start");
                self.finish(
                    &id,
                    SandboxState::Failed,
                    EndReason::StartFailed,
                    None,
                    &message,
                )
                .await?;
                let failed = self.reload(&id).await?;
                // A sandbox that cannot start is the caller's problem to fix
                // (image, credential): say so rather than return a FAILED one.
                match e {
                    Error::FailedPrecondition(_)
                    | Error::NotFound(_)
                    | Error::InvalidArgument(_)
                    | Error::PermissionDenied(_)
                    | Error::Unavailable(_) => Err(e),
                    _ => Ok(failed.to_proto()),
                }
            }
        }
    }

    /// The agent a sandbox runs as: the request's, or the calling agent.
    fn agent_of(&self, caller: &Principal, org: &str, spec: &SandboxSpec) -> Result<String> {
        if spec.agent.is_empty() {
            if caller.kind == PrincipalKind::Agent as i32 {
                let (_, agent) = parse_child(&caller.name, "agents")?;
                return Ok(agent.to_owned());
            }
            return Err(Error::invalid(
                "spec.agent is required when the caller is not an agent",
            ));
        }
        if spec.agent.contains('/') {
            let (a_org, a) = parse_child(&spec.agent, "agents")?;
            if a_org != org {
                return Err(Error::not_found(truncate(&spec.agent)));
            }
            Ok(a.to_owned())
        } else {
            paddock_shared::names::validate_id("agent", &spec.agent)?;
            Ok(spec.agent.clone())
        }
    }

    /// The agent and the project must exist: a sandbox for one that does
    /// not is NOT_FOUND and leaves no record behind.
    async fn require_existing(
        &self,
        caller: &Principal,
        org: &str,
        spec: &SandboxSpec,
    ) -> Result<()> {
        let found = self
            .identity
            .clone()
            .lookup_resources(LookupResourcesRequest {
                names: vec![spec.agent.clone(), spec.project.clone()],
                principal_ids: Vec::new(),
            })
            .await
            .map_err(|s| Error::from_status(dependency_status("identity", s)))?
            .into_inner()
            .found;
        for (flag, name) in [("agent", &spec.agent), ("project", &spec.project)] {
            if !found.iter().any(|f| &f.name == name) {
                let err = Error::NotFound(format!("{flag} {} not found", truncate(name)));
                self.refused(caller, org, spec, &err).await;
                return Err(err);
            }
        }
        if caller.kind == PrincipalKind::Member as i32 {
            let agent = found
                .iter()
                .find(|f| f.name == spec.agent)
                .and_then(|f| f.principal.as_ref());
            if let Some(why) = above_runner(caller, &spec.agent, agent) {
                let err = Error::PermissionDenied(format!("cannot run {why}"));
                self.refused(caller, org, spec, &err).await;
                return Err(err);
            }
        }
        Ok(())
    }

    // ---- foreground commands --------------------------------------------

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

    fn take_foreground_exit(&self, id: &str) -> Option<i64> {
        lock(&self.foreground_exits).remove(id)
    }

    async fn refused(&self, caller: &Principal, org: &str, spec: &SandboxSpec, err: &Error) {
        let outcome = match err {
            Error::PermissionDenied(_)
            | Error::ResourceExhausted(_)
            | Error::InvalidArgument(_) => Outcome::Denied,
            _ => Outcome::Failure,
        };
        let mut e = event(
            Some(caller),
            "sandbox.create",
            &format!("organizations/{org}/sandboxes"),
            outcome,
            serde_json::json!({
                "agent": spec.agent,
                "image": spec.image,
                "reason": err.to_string(),
            }),
        );
        e.error_code = paddock_shared::names::code_name(err.code()).to_owned();
        self.record_event(e).await;
    }

    /// Prepares host files, token and network, and starts the container.
    ///
    /// The workspace's file system (mkfs and a loop mount: tens of
    /// milliseconds) is made while everything else is prepared and the
    /// container created; the container starts once both are done.
    #[tracing::instrument(name = "sandbox.start", skip_all, fields(sandbox = %record.id))]
    #[allow(clippy::too_many_arguments)]
    async fn start(
        &self,
        engine: &Engine,
        record: &Record,
        resolved: &Resolved,
        user: &str,
        uid: u32,
        relax: HardeningRelaxations,
        cache_bytes: u64,
    ) -> Result<String> {
        let workspace = self.layout.workspace_mount_point(&record.org, &record.id)?;
        let disk =
            self.layout
                .create_workspace(&record.org, &record.id, uid, resolved.disk_bytes as u64);
        let container = self.create_container(
            engine,
            record,
            resolved,
            user,
            uid,
            relax,
            cache_bytes,
            &workspace,
        );
        match tokio::join!(disk, container) {
            (Ok(_), Ok(id)) => {
                engine.start(&id).await?;
                Ok(id)
            }
            (Err(e), Ok(id)) => {
                let _ = engine.remove(&id).await;
                Err(e)
            }
            (_, Err(e)) => Err(e),
        }
    }

    /// Everything but the workspace's file system: token, credentials,
    /// caches, network, and the container, created but not started.
    #[tracing::instrument(name = "sandbox.prepare", skip_all, fields(sandbox = %record.id))]
    #[allow(clippy::too_many_arguments)]
    async fn create_container(
        &self,
        engine: &Engine,
        record: &Record,
        resolved: &Resolved,
        user: &str,
        uid: u32,
        relax: HardeningRelaxations,
        cache_bytes: u64,
        workspace: &std::path::Path,
    ) -> Result<String> {
        let name = record.name();
        let token = self
            .identity
            .clone()
            .create_session_token(CreateSessionTokenRequest {
                agent: record.agent_name(),
                sandbox: name.clone(),
                // The token outlives the sandbox a little (it is revoked at the
                // stop anyway), within identity's 24 h cap.
                ttl: Some(proto_duration(
                    (resolved.ttl + Duration::from_secs(60)).min(Duration::from_secs(86_400)),
                )),
            })
            .await
            .map_err(|s| Error::from_status(dependency_status("identity", s)))?
            .into_inner();

        let mut credentials = Vec::new();
        if !resolved.spec.credentials.is_empty() {
            self.layout.prepare_credentials(&record.id).await?;
        }
        for (i, mount) in resolved.spec.credentials.iter().enumerate() {
            let credential = if mount.credential.contains('/') {
                mount.credential.clone()
            } else {
                child_name(&record.org, "credentials", &mount.credential)
            };
            let revealed = self
                .identity
                .clone()
                .reveal_credential(RevealCredentialRequest {
                    name: credential.clone(),
                    sandbox: name.clone(),
                })
                .await
                .map_err(|s| Error::from_status(dependency_status("identity", s)))?
                .into_inner();
            let path = self
                .layout
                .write_credential(&record.id, i, &revealed.value, uid)?;
            credentials.push((
                path.to_string_lossy().into_owned(),
                spec::credential_target(mount)?,
            ));
        }

        let mut caches = Vec::new();
        for cache in &resolved.spec.caches {
            let dir = self
                .layout
                .cache(&self.installation, &record.org, cache, uid, cache_bytes)
                .await?;
            caches.push((
                dir.to_string_lossy().into_owned(),
                format!("/cache/{cache}"),
            ));
        }

        let labels = HashMap::from([
            (docker::LABEL_MANAGED.to_owned(), "true".to_owned()),
            (docker::LABEL_ORG.to_owned(), record.org.clone()),
            (docker::LABEL_SANDBOX.to_owned(), record.id.clone()),
            (docker::LABEL_WORKER.to_owned(), self.worker.clone()),
        ]);
        let network = if resolved.network == NetworkMode::Open {
            let net = network_name(&record.id);
            let bridge = crate::egress::bridge_name(&record.id);
            engine.create_network(&net, &bridge, labels.clone()).await?;
            if let Err(e) = crate::egress::install(&bridge).await {
                let _ = engine.remove_network(&net).await;
                return Err(e);
            }
            net
        } else {
            "none".to_owned()
        };

        let mut env: Vec<String> = resolved
            .spec
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.sort();
        for (k, v) in spec::cache_env(&resolved.spec.caches) {
            env.push(format!("{k}={v}"));
        }
        env.push(format!("HOME={}", spec::SANDBOX_HOME));
        env.push(format!("PADDOCK_SANDBOX={name}"));
        for (endpoint, url) in &self.tuning.endpoints {
            env.push(format!("PADDOCK_{endpoint}_ENDPOINT={url}"));
        }
        env.push(format!("PADDOCK_TOKEN={}", token.secret));

        let plan = ContainerPlan {
            name: container_name(&record.org, &record.id),
            image: resolved.spec.image.clone(),
            command: resolved.spec.command.clone(),
            env,
            workdir: resolved.spec.workdir.clone(),
            user: user.to_owned(),
            labels,
            cpus: resolved.cpus,
            memory_bytes: resolved.memory_bytes,
            pids: resolved.pids,
            disk_bytes: resolved.disk_bytes,
            network,
            workspace: workspace.to_string_lossy().into_owned(),
            credentials,
            caches,
            relax,
            uid,
            tmp: self
                .layout
                .prepare_tmp(&record.id, docker::tmp_bytes(resolved.disk_bytes))
                .await
                .map(|p| p.to_string_lossy().into_owned()),
        };
        engine.create(&plan).await
    }

    // ---- supervision ----------------------------------------------------

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

    // ---- stop and cleanup -----------------------------------------------

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
    async fn mark_for_stop(
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
        outbox::record(
            &mut tx,
            &event(
                None,
                action,
                &record.name(),
                if state == SandboxState::Failed { Outcome::Failure } else { Outcome::Success },
                serde_json::json!({
                    "reason": EndReason::try_from(reason as i32).map(|r| r.as_str_name()).unwrap_or(""),
                    "exit_code": exit_code,
                    "message": message,
                }),
            ),
        )
        .await?;
        tx.commit().await?;
        self.wake_audit();
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

    // ---- reconciliation -------------------------------------------------

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

/// The organization id of an org principal.
pub fn organization_id(caller: &Principal) -> Result<String> {
    Ok(parse_org(&caller.organization)
        .map_err(|_| Error::PermissionDenied("the caller belongs to no organization".into()))?
        .to_owned())
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
