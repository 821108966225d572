//! The `SandboxService` RPCs: resource-level checks (ownership, another
//! organization answered as NOT_FOUND), then the runner does the work.
//! The trait impl is here with the short handlers; file transfers and the
//! watch stream have files of their own.

mod transfer;
mod watch;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use paddock_proto::audit::v1::Outcome;
use paddock_proto::identity::v1::Principal;
use paddock_proto::sandbox::v1::sandbox_service_server::SandboxService;
use paddock_proto::sandbox::v1::*;
use paddock_shared::auth::{Admission, caller};
use paddock_shared::error::{Error, Result};
use paddock_shared::names::{parse_child, parse_org, truncate};
use paddock_shared::outbox;
use paddock_shared::page::{Page, Query};
use paddock_shared::time::duration;
use tonic::{Request, Response, Status, Streaming};

use crate::exec::{self, ExecStream};
use crate::runner::{Runner, organization_id};
use crate::store::{self, Record};

const MAX_PAGE: i64 = 500;
const MAX_GRACE: Duration = Duration::from_secs(30);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The gRPC face of the runner.
pub struct Sandboxes {
    pub runner: Arc<Runner>,
    pub admission: Admission,
    /// True once the server is shutting down: watch streams end.
    pub closing: tokio::sync::watch::Receiver<bool>,
    /// Admits WatchSandbox streams within their caps; they, and execs,
    /// end once their caller's credentials stop being valid.
    pub watches: paddock_shared::streams::Streams,
}

/// What the caller wants to do with a sandbox.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Intent {
    Read,
    Manage,
}

impl Sandboxes {
    /// Loads a sandbox the caller may see (read) or manage. Another
    /// organization's sandbox, or a missing one, is NOT_FOUND.
    async fn authorized(
        &self,
        principal: &Principal,
        name: &str,
        intent: Intent,
    ) -> Result<Record> {
        let (org, id) = parse_child(name, "sandboxes")?;
        let not_found = || Error::not_found(truncate(name));
        if organization_id(principal)? != org {
            return Err(not_found());
        }
        let record = store::get(&self.runner.db.pool, org, id)
            .await?
            .ok_or_else(not_found)?;
        let owner = record.owner_for(principal).to_owned();
        match intent {
            // One's own: sessions.manage_own (which covers reading) or
            // sessions.read, so a read-only key reads too.
            Intent::Read if owner == principal.id => {
                if !self
                    .admission
                    .allows(principal, "sessions.manage_own", &record.name(), &owner)
                    .await
                    .map_err(Error::from_status)?
                {
                    self.admission
                        .require(principal, "sessions.read", &record.name(), &owner)
                        .await
                        .map_err(Error::from_status)?;
                }
            }
            Intent::Read => self
                .admission
                .require(principal, "sessions.read", &record.name(), &owner)
                .await
                .map_err(Error::from_status)?,
            // sessions.manage covers sessions.manage_own for anyone's
            // sandbox; sessions.manage_own alone only for one's own.
            Intent::Manage => self
                .admission
                .require(principal, "sessions.manage_own", &record.name(), &owner)
                .await
                .map_err(Error::from_status)?,
        }
        Ok(record)
    }
}

impl Sandboxes {
    /// Whether `caller` may see the env values of `record`: its creator
    /// and holders of sessions.manage.
    async fn reveals_env(&self, caller: &Principal, record: &Record) -> Result<bool> {
        if record.created_by == caller.id {
            return Ok(true);
        }
        self.admission
            .allows(caller, "sessions.manage", &record.name(), "")
            .await
            .map_err(Error::from_status)
    }

    /// A sandbox as `caller` may see it (env values redacted).
    async fn view(&self, caller: &Principal, record: &Record) -> Result<Sandbox> {
        let reveal = self.reveals_env(caller, record).await?;
        Ok(view_of(&self.runner.env_key, record.to_proto(), reveal))
    }

    /// A running sandbox the caller may manage.
    async fn running(&self, principal: &Principal, name: &str) -> Result<Record> {
        let record = self.authorized(principal, name, Intent::Manage).await?;
        if record.state != SandboxState::Running || record.container_id.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "sandbox {} is not running",
                record.name()
            )));
        }
        Ok(record)
    }
}

fn principal<T>(req: &Request<T>) -> Result<Principal, Status> {
    caller(req).cloned()
}

#[tonic::async_trait]
impl SandboxService for Sandboxes {
    async fn create_sandbox(
        &self,
        request: Request<CreateSandboxRequest>,
    ) -> Result<Response<CreateSandboxResponse>, Status> {
        let caller = principal(&request)?;
        let sandbox = self
            .runner
            .create(&caller, &self.admission, request.into_inner())
            .await?;
        // The creator sees its env, secret-looking values redacted.
        Ok(Response::new(CreateSandboxResponse {
            sandbox: Some(view_of(&self.runner.env_key, sandbox, true)),
        }))
    }

    async fn get_sandbox(
        &self,
        request: Request<GetSandboxRequest>,
    ) -> Result<Response<GetSandboxResponse>, Status> {
        let caller = principal(&request)?;
        let record = self
            .authorized(&caller, &request.get_ref().name, Intent::Read)
            .await?;
        Ok(Response::new(GetSandboxResponse {
            sandbox: Some(self.view(&caller, &record).await?),
        }))
    }

    async fn list_sandboxes(
        &self,
        request: Request<ListSandboxesRequest>,
    ) -> Result<Response<ListSandboxesResponse>, Status> {
        let caller = principal(&request)?;
        let req = request.into_inner();
        let org = organization_id(&caller)?;
        if !req.parent.is_empty() && parse_org(&req.parent)? != org {
            return Err(Error::not_found(truncate(&req.parent)).into());
        }
        let agent = if req.agent.is_empty() {
            None
        } else if req.agent.contains('/') {
            let (a_org, a) = parse_child(&req.agent, "agents")?;
            if a_org != org {
                return Err(Error::not_found(truncate(&req.agent)).into());
            }
            Some(a.to_owned())
        } else {
            Some(req.agent.clone())
        };
        // Without sessions.read the caller sees its own sandboxes only: the
        // ones it created and, for an agent, the ones running as it.
        let own_agent = parse_child(&caller.name, "agents")
            .map(|(_, a)| a.to_owned())
            .unwrap_or_default();
        let sees_all = self
            .admission
            .allows(&caller, "sessions.read", &caller.organization, "")
            .await?;
        if !sees_all {
            // Own sandboxes only: that needs sessions.manage_own.
            self.admission
                .require(&caller, "sessions.manage_own", &caller.organization, "")
                .await?;
        }
        let own = (!sees_all).then_some((caller.id.as_str(), own_agent.as_str()));
        // The token is bound to the organization and every filter,
        // including whose sandboxes the caller sees.
        let query = Query::new("ListSandboxes", &org)
            .with(agent.as_deref().unwrap_or(""))
            .with(own.map(|(id, _)| id).unwrap_or(""))
            .with(own.map(|(_, agent)| agent).unwrap_or(""))
            .with([u8::from(req.show_ended)]);
        let page = Page::read(req.page_size, &req.page_token, MAX_PAGE, &query)?;
        let after = page.after.as_deref().map(decode_cursor).transpose()?;
        let mut rows = store::list(
            &self.runner.db.pool,
            &store::ListFilter {
                org: &org,
                agent: agent.as_deref(),
                own,
                show_ended: req.show_ended,
                after,
                limit: page.limit(),
            },
        )
        .await?;
        let next_page_token =
            page.finish(&mut rows, &query, |r| format!("{}:{}", r.create_time, r.id));
        let manages = self
            .admission
            .allows(&caller, "sessions.manage", &caller.organization, "")
            .await?;
        let sandboxes = rows
            .iter()
            .map(|r| {
                view_of(
                    &self.runner.env_key,
                    r.to_proto(),
                    manages || r.created_by == caller.id,
                )
            })
            .collect();
        Ok(Response::new(ListSandboxesResponse {
            sandboxes,
            next_page_token,
        }))
    }

    async fn stop_sandbox(
        &self,
        request: Request<StopSandboxRequest>,
    ) -> Result<Response<StopSandboxResponse>, Status> {
        let caller = principal(&request)?;
        let req = request.into_inner();
        let record = self.authorized(&caller, &req.name, Intent::Manage).await?;
        let grace = match req.grace_period.as_ref() {
            None => self.runner.tuning.stop_grace,
            Some(d) => duration(d)
                .filter(|d| *d <= MAX_GRACE)
                .ok_or_else(|| Error::invalid("grace_period must be between 0 and 30s"))?,
        };
        let reveal = self.reveals_env(&caller, &record).await?;
        let sandbox = self
            .runner
            .stop(Some(&caller), record, grace, EndReason::StoppedByUser)
            .await?;
        Ok(Response::new(StopSandboxResponse {
            sandbox: Some(view_of(&self.runner.env_key, sandbox, reveal)),
        }))
    }

    async fn delete_sandbox(
        &self,
        request: Request<DeleteSandboxRequest>,
    ) -> Result<Response<DeleteSandboxResponse>, Status> {
        let caller = principal(&request)?;
        let record = self
            .authorized(&caller, &request.get_ref().name, Intent::Manage)
            .await?;
        let name = record.name();
        let (org, id) = (record.org.clone(), record.id.clone());
        if record.is_live() {
            self.runner
                .stop(
                    Some(&caller),
                    record,
                    self.runner.tuning.stop_grace,
                    EndReason::StoppedByUser,
                )
                .await?;
        }
        let mut tx = self.runner.db.begin_write().await.map_err(Error::from)?;
        store::delete(&mut tx, &id).await?;
        let event = outbox::event(
            "sandbox-runner",
            Some(&caller),
            "sandbox.delete",
            &name,
            Outcome::Success,
        );
        self.runner
            .outbox
            .commit(tx, event)
            .await
            .map_err(Error::from)?;
        self.runner.layout.remove_workspace(&org, &id).await;
        self.runner.logs.remove(&org, &id);
        Ok(Response::new(DeleteSandboxResponse {}))
    }

    type WatchSandboxStream = BoxStream<WatchSandboxResponse>;

    async fn watch_sandbox(
        &self,
        request: Request<WatchSandboxRequest>,
    ) -> Result<Response<Self::WatchSandboxStream>, Status> {
        self.watch(request).await
    }

    type GetSandboxLogsStream = BoxStream<GetSandboxLogsResponse>;

    async fn get_sandbox_logs(
        &self,
        request: Request<GetSandboxLogsRequest>,
    ) -> Result<Response<Self::GetSandboxLogsStream>, Status> {
        let caller = principal(&request)?;
        let guard = self.watches.open(&request)?;
        let req = request.into_inner();
        // The output may print what GetSandbox hides (env values): reading
        // it is managing, so another's sandbox needs sessions.manage.
        let record = self.authorized(&caller, &req.name, Intent::Manage).await?;
        let rx =
            crate::logs::stream(self.runner.clone(), record, req.follow, req.tail_bytes).await?;
        Ok(Response::new(
            guard.serve(tokio_stream::wrappers::ReceiverStream::new(rx)),
        ))
    }

    async fn stop_sandboxes(
        &self,
        request: Request<StopSandboxesRequest>,
    ) -> Result<Response<StopSandboxesResponse>, Status> {
        let caller = principal(&request)?;
        let req = request.into_inner();
        let grace = match req.grace_period.as_ref() {
            None => self.runner.tuning.stop_grace,
            Some(d) => duration(d)
                .filter(|d| *d <= MAX_GRACE)
                .ok_or_else(|| Error::invalid("grace_period must be between 0 and 30s"))?,
        };
        let stopped = crate::kill_switch::stop_all(&self.runner, &caller, req, grace).await?;
        let mut sandboxes = Vec::with_capacity(stopped.len());
        for s in stopped {
            // sessions.manage: env values are the caller's to see.
            sandboxes.push(view_of(&self.runner.env_key, s, true));
        }
        Ok(Response::new(StopSandboxesResponse { sandboxes }))
    }

    type ExecStream = ExecStream;

    async fn exec(
        &self,
        request: Request<Streaming<ExecRequest>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let caller = principal(&request)?;
        let guard = paddock_shared::streams::guard(self.admission.authenticator(), &request)?;
        let mut input = request.into_inner();
        let start = match input.next().await {
            Some(Ok(ExecRequest {
                message: Some(exec_request::Message::Start(start)),
            })) => start,
            Some(Err(s)) => return Err(s),
            _ => {
                return Err(Error::invalid("the first Exec message must be a start").into());
            }
        };
        exec::validate(&start)?;
        let record = self.running(&caller, &start.sandbox).await?;
        if start.foreground {
            self.runner.claim_foreground(&caller, &record)?;
        }
        let stream = exec::run(self.runner.clone(), caller, record, start, input).await?;
        Ok(Response::new(guard.serve(stream)))
    }

    async fn upload_files(
        &self,
        request: Request<Streaming<UploadFilesRequest>>,
    ) -> Result<Response<UploadFilesResponse>, Status> {
        self.upload(request).await
    }

    type DownloadFilesStream = BoxStream<DownloadFilesResponse>;

    async fn download_files(
        &self,
        request: Request<DownloadFilesRequest>,
    ) -> Result<Response<Self::DownloadFilesStream>, Status> {
        self.download(request).await
    }

    async fn get_usage(
        &self,
        request: Request<GetUsageRequest>,
    ) -> Result<Response<GetUsageResponse>, Status> {
        let caller = principal(&request)?;
        let mut record = self
            .authorized(&caller, &request.get_ref().name, Intent::Read)
            .await?;
        if record.is_live()
            && !record.container_id.is_empty()
            && let Ok(engine) = self.runner.engine()
            && let Some((cpu, mem)) = engine.sample(&record.container_id).await
        {
            store::record_usage(&self.runner.db.pool, &record.id, cpu, mem).await?;
            record.cpu_seconds = record.cpu_seconds.max(cpu);
            record.memory_peak = record.memory_peak.max(mem);
        }
        let end = record
            .end_time
            .unwrap_or_else(paddock_shared::time::now_micros);
        let wall = record
            .start_time
            .map(|s| Duration::from_micros((end - s).max(0) as u64))
            .unwrap_or_default();
        Ok(Response::new(GetUsageResponse {
            usage: Some(Usage {
                cpu_seconds: record.cpu_seconds,
                memory_peak_bytes: record.memory_peak,
                wall_time: Some(paddock_shared::time::proto_duration(wall)),
                execs: record.execs,
            }),
        }))
    }
}

/// A page cursor: the last sandbox's create time and id.
fn decode_cursor(cursor: &str) -> Result<(i64, String)> {
    let bad = || Error::invalid("invalid page_token");
    let (time, id) = cursor.split_once(':').ok_or_else(bad)?;
    paddock_shared::names::validate_id("sandbox", id).map_err(|_| bad())?;
    Ok((time.parse().map_err(|_| bad())?, id.to_owned()))
}

/// `sandbox` as a caller sees it: its env values (stored sealed) opened
/// only when `reveal`, and then secret-looking ones still redacted (see
/// `spec::redact_env`).
fn view_of(key: &paddock_shared::seal::SealingKey, mut sandbox: Sandbox, reveal: bool) -> Sandbox {
    let name = sandbox.name.clone();
    if let Some(spec) = sandbox.spec.as_mut() {
        if reveal && let Ok((org, id)) = parse_child(&name, "sandboxes") {
            crate::envseal::open_env(key, org, id, spec);
        }
        crate::spec::redact_env(spec, reveal);
    }
    sandbox
}
