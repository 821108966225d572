//! Creating a sandbox: who may run which agent, the policy and approved
//! images, admission under the quotas (with the record, in one step), then
//! the host files, session token, credentials, caches, network and the
//! container, started once the workspace's file system is ready.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use paddock_proto::audit::v1::Outcome;
use paddock_proto::authz::v1::{GetEffectivePolicyRequest, HardeningRelaxations, NetworkMode};
use paddock_proto::identity::v1::{
    CreateSessionTokenRequest, LookupResourcesRequest, Principal, PrincipalKind,
    RevealCredentialRequest,
};
use paddock_proto::sandbox::v1::{
    CreateSandboxRequest, EndReason, Sandbox, SandboxSpec, SandboxState,
};
use paddock_shared::auth::{Admission, dependency_status};
use paddock_shared::db::Backend;
use paddock_shared::error::{Error, Result};
use paddock_shared::names::{child_name, parse_child, parse_org, truncate};
use paddock_shared::time::{now_micros, proto_duration};
use tokio::sync::watch;

use super::{
    Runner, above_runner, container_name, event, lock, network_name, new_id, organization_id,
};
use crate::docker::{self, ContainerPlan, Engine};
use crate::spec::{self, Resolved};
use crate::store::{self, Record};
use crate::users::UserIds;

impl Runner {
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
            let created = event(
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
            );
            self.outbox.commit(tx, created).await?;
        }

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
}
