//! The AuditService handlers. The admission layer has already refused
//! non-service callers of `AppendEvents` and callers without `audit.read`
//! in their organization; handlers validate input and keep every read
//! inside the caller's organization (another organization is NOT_FOUND).
//! The group committer, chain verification and input checks have files
//! of their own.

mod committer;
mod input;
mod verify;

use std::pin::Pin;
use tracing::Instrument;

use futures_util::Stream;
use paddock_proto::audit::v1::audit_service_server::AuditService;
use paddock_proto::audit::v1::*;
use paddock_proto::identity::v1::{Principal, PrincipalKind};
use paddock_shared::auth;
use paddock_shared::error::{Error, Result};
use paddock_shared::names;
use paddock_shared::streams::Streams;
use paddock_shared::time::{now_micros, timestamp};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use self::committer::{AppendJob, MAX_GROUP_REQUESTS, group_commit};
use self::input::{decode_cursor, decode_sequence, filter, validate_event};
use crate::store::{Order, PLATFORM_ORG, Pending, Settings, Store};
use crate::tail::Tails;
use paddock_shared::page::{Page, Query};
use paddock_shared::request::parent_org;

const MAX_APPEND: usize = 1000;
const MAX_PAGE: i64 = 1000;
/// Rows per read of the chain walk, tail and export.
const BATCH: i64 = 500;

pub struct Audit {
    store: Store,
    /// The group committer: appends go through it, one at a time.
    appends: mpsc::Sender<AppendJob>,
    /// What the committer appends, for the tails.
    tails: Tails,
    /// Admits tails within their caps and ends them when their caller's
    /// credentials stop being valid.
    tail_streams: Streams,
    /// Turns true when the server shuts down; ends the streams.
    closing: watch::Receiver<bool>,
}

impl Audit {
    pub fn new(
        db: paddock_shared::db::Database,
        closing: watch::Receiver<bool>,
        tail_streams: Streams,
    ) -> Self {
        let tails = Tails::new(db.backend);
        let store = Store { db };
        let (appends, jobs) = mpsc::channel(MAX_GROUP_REQUESTS);
        tokio::spawn(group_commit(store.clone(), jobs, tails.clone()));
        tails.spawn_replica_watch(store.clone(), closing.clone());
        Self {
            store,
            appends,
            tails,
            tail_streams,
            closing,
        }
    }
}

impl Audit {
    /// Where the audit service records the calls it refuses itself: its own
    /// store, through the same group committer as AppendEvents.
    pub fn refusal_sink(&self) -> OwnRefusals {
        OwnRefusals {
            appends: self.appends.clone(),
            platform: paddock_shared::audit::PlatformBudget::default(),
        }
    }
}

/// Records the audit service's own refusals (denials, failed
/// authentication) in its chains.
pub struct OwnRefusals {
    appends: mpsc::Sender<AppendJob>,
    platform: paddock_shared::audit::PlatformBudget,
}

impl paddock_shared::auth::RefusalSink for OwnRefusals {
    fn record(&self, event: AuditEvent) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut event = event;
            if event.organization.is_empty() && !self.platform.charge(&mut event) {
                return;
            }
            let org = match validate_event(0, &mut event) {
                Ok(org) => org,
                Err(e) => {
                    tracing::error!(error = %e, action = %event.action, "cannot record a refusal");
                    return;
                }
            };
            let (done, committed) = oneshot::channel();
            let job = AppendJob {
                events: vec![Pending {
                    org,
                    event,
                    seals: false,
                }],
                done,
            };
            if self.appends.send(job).await.is_err() {
                return;
            }
            if let Ok(Err(e)) = committed.await {
                tracing::error!(code = ?e.code(), "cannot record a refusal");
            }
        })
    }
}

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn caller<T>(request: &Request<T>) -> Result<Principal, Status> {
    auth::caller(request).cloned()
}

/// Sends on `tx` until the client goes away; false once it has.
async fn send<T>(tx: &mpsc::Sender<Result<T, Status>>, item: Result<T, Status>) -> bool {
    tx.send(item).await.is_ok()
}

#[tonic::async_trait]
impl AuditService for Audit {
    async fn append_events(
        &self,
        request: Request<AppendEventsRequest>,
    ) -> Result<Response<AppendEventsResponse>, Status> {
        let caller = caller(&request)?;
        if caller.kind != PrincipalKind::Service as i32 {
            return Err(paddock_shared::auth::refusal::internal_only("AppendEvents"));
        }
        let events = request.into_inner().events;
        if events.is_empty() || events.len() > MAX_APPEND {
            return Err(
                Error::invalid(format!("events must hold 1 to {MAX_APPEND} events")).into(),
            );
        }
        let mut pending = Vec::with_capacity(events.len());
        for (i, mut event) in events.into_iter().enumerate() {
            let org = validate_event(i, &mut event)?;
            // Only a service principal gets here (checked above).
            let seals = crate::store::seals(&event);
            pending.push(Pending { org, event, seals });
        }
        let (done, committed) = oneshot::channel();
        let stopped = || Status::unavailable("the audit service is stopping");
        self.appends
            .send(AppendJob {
                events: pending,
                done,
            })
            .await
            .map_err(|_| stopped())?;
        let appended = committed.await.map_err(|_| stopped())??;
        Ok(Response::new(AppendEventsResponse {
            appended: i32::try_from(appended).unwrap_or(i32::MAX),
        }))
    }

    async fn query_events(
        &self,
        request: Request<QueryEventsRequest>,
    ) -> Result<Response<QueryEventsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let org = parent_org(&caller, &req.parent)?;
        self.readable(org).await?;
        self.query_in(org, req).await.map(Response::new)
    }

    async fn query_platform_events(
        &self,
        request: Request<QueryPlatformEventsRequest>,
    ) -> Result<Response<QueryPlatformEventsResponse>, Status> {
        let req = request.into_inner();
        let org = self.platform_readable(&req.organization).await?;
        let page = self
            .query_in(
                &org,
                QueryEventsRequest {
                    parent: String::new(),
                    filter: req.filter,
                    page_size: req.page_size,
                    page_token: req.page_token,
                    oldest_first: req.oldest_first,
                },
            )
            .await?;
        Ok(Response::new(QueryPlatformEventsResponse {
            events: page.events,
            next_page_token: page.next_page_token,
        }))
    }

    async fn verify_platform_chain(
        &self,
        request: Request<VerifyPlatformChainRequest>,
    ) -> Result<Response<VerifyPlatformChainResponse>, Status> {
        let req = request.into_inner();
        let org = self.platform_readable(&req.organization).await?;
        let result = self
            .verify_in(
                &org,
                VerifyChainRequest {
                    parent: String::new(),
                    from_sequence: req.from_sequence,
                    to_sequence: req.to_sequence,
                },
            )
            .await?;
        Ok(Response::new(VerifyPlatformChainResponse {
            result: Some(result),
        }))
    }

    type TailEventsStream = EventStream<TailEventsResponse>;

    async fn tail_events(
        &self,
        request: Request<TailEventsRequest>,
    ) -> Result<Response<Self::TailEventsStream>, Status> {
        let caller = caller(&request)?;
        let guard = self.tail_streams.open(&request)?;
        let req = request.into_inner();
        let org = parent_org(&caller, &req.parent)?.to_owned();
        self.readable(&org).await?;
        let filter = filter(req.filter)?;
        let cursor = if req.after_cursor.is_empty() {
            None
        } else {
            Some(decode_cursor(&req.after_cursor)?)
        };
        let rx = self
            .tails
            .start(
                self.store.clone(),
                org,
                filter,
                cursor,
                self.closing.clone(),
            )
            .await?;
        Ok(Response::new(guard.serve(ReceiverStream::new(rx))))
    }

    async fn verify_chain(
        &self,
        request: Request<VerifyChainRequest>,
    ) -> Result<Response<VerifyChainResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let org = parent_org(&caller, &req.parent)?;
        self.readable(org).await?;
        self.verify_in(org, req).await.map(Response::new)
    }

    type ExportEventsStream = EventStream<ExportEventsResponse>;

    async fn export_events(
        &self,
        request: Request<ExportEventsRequest>,
    ) -> Result<Response<Self::ExportEventsStream>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let org = parent_org(&caller, &req.parent)?.to_owned();
        self.readable(&org).await?;
        let filter = filter(req.filter)?;
        let store = self.store.clone();
        let mut closing = self.closing.clone();
        let (tx, rx) = mpsc::channel(BATCH as usize);
        // A snapshot: the events stored when the export started.
        let head = self.store.head(&org).await?.0;
        tokio::spawn(async move {
            let mut after = 0;
            loop {
                let events = tokio::select! {
                    _ = closing.wait_for(|c| *c) => return,
                    events = store.read(&org, &filter, Some(after), Some(head), Order::Oldest, BATCH) => events,
                };
                let events = match events {
                    Ok(events) => events,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                let full = events.len() as i64 == BATCH;
                for event in events {
                    after = event.sequence;
                    if !send(&tx, Ok(ExportEventsResponse { event: Some(event) })).await {
                        return;
                    }
                }
                if !full {
                    return;
                }
            }
        }.in_current_span());
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_audit_settings(
        &self,
        request: Request<GetAuditSettingsRequest>,
    ) -> Result<Response<GetAuditSettingsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let org = settings_org(&caller, &req.name)?;
        self.readable(org).await?;
        let settings = self.store.settings(org).await?;
        Ok(Response::new(GetAuditSettingsResponse {
            settings: Some(settings_message(org, settings)),
        }))
    }

    async fn update_audit_settings(
        &self,
        request: Request<UpdateAuditSettingsRequest>,
    ) -> Result<Response<UpdateAuditSettingsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let wanted = req
            .settings
            .ok_or_else(|| Error::invalid("settings is required"))?;
        let org = settings_org(&caller, &wanted.name)?;
        self.readable(org).await?;
        for path in req.update_mask.map(|m| m.paths).unwrap_or_default() {
            if path != "retention_days" {
                return Err(Error::invalid(format!(
                    "update_mask: unknown field {:?} (settable: retention_days)",
                    names::truncate(&path)
                ))
                .into());
            }
        }
        if !(0..=MAX_RETENTION_DAYS).contains(&wanted.retention_days) {
            return Err(Error::invalid(format!(
                "retention_days must be 0 (keep forever) to {MAX_RETENTION_DAYS}"
            ))
            .into());
        }
        let name = settings_name(org);
        let mut change = paddock_shared::outbox::event(
            "audit",
            Some(&caller),
            "auditsettings.update",
            &name,
            Outcome::Success,
        );
        change.organization = names::org_name(org);
        validate_event(0, &mut change)?;
        let settings = self
            .store
            .update_settings(
                org,
                i64::from(wanted.retention_days),
                &caller.id,
                now_micros(),
                change,
            )
            .await?;
        // Appended outside the committer: tell the tails.
        if self.tails.follows(org) {
            self.tails.publish_head(org, self.store.head(org).await?.0);
        }
        Ok(Response::new(UpdateAuditSettingsResponse {
            settings: Some(settings_message(org, settings)),
        }))
    }
}

/// The longest retention period accepted (100 years).
const MAX_RETENTION_DAYS: i32 = 36_500;

fn settings_name(org: &str) -> String {
    format!("{}/auditSettings", names::org_name(org))
}

/// The organization of `name` (`organizations/{o}/auditSettings`,
/// `organizations/{o}`, or empty for the caller's), which must be the
/// caller's.
fn settings_org<'a>(caller: &'a Principal, name: &str) -> Result<&'a str> {
    parent_org(caller, name.strip_suffix("/auditSettings").unwrap_or(name))
}

fn settings_message(org: &str, s: Settings) -> AuditSettings {
    AuditSettings {
        name: settings_name(org),
        retention_days: i32::try_from(s.retention_days).unwrap_or(i32::MAX),
        update_time: s.update_time.map(timestamp),
        updated_by: s.updated_by,
    }
}

impl Audit {
    /// Refuses the chain of a deleted organization to everyone in an
    /// organization (a later one with the same id included), as if it did
    /// not exist; only the platform reads it (QueryPlatformEvents).
    async fn readable(&self, org: &str) -> Result<()> {
        if self.store.sealed(org).await? {
            return Err(Error::not_found(names::org_name(org)));
        }
        Ok(())
    }

    /// The chain the platform reads: its own, or a sealed organization's
    /// (`organization`, as `organizations/{id}` or the id); a live
    /// organization's is its members' alone.
    async fn platform_readable(&self, organization: &str) -> Result<String> {
        if organization.is_empty() {
            return Ok(PLATFORM_ORG.to_owned());
        }
        let name = if organization.starts_with("organizations/") {
            organization.to_owned()
        } else {
            names::org_name(organization)
        };
        let org = names::parse_org(&name)?.to_owned();
        if !self.store.sealed(&org).await? {
            return Err(Error::not_found(format!(
                "sealed audit chain of {} (the platform reads an organization's chain once the organization is deleted)",
                names::truncate(&name)
            )));
        }
        Ok(org)
    }

    /// One page of `org`'s events.
    async fn query_in(
        &self,
        org: &str,
        req: QueryEventsRequest,
    ) -> Result<QueryEventsResponse, Status> {
        let filter = filter(req.filter)?;
        let order = if req.oldest_first {
            Order::Oldest
        } else {
            Order::Newest
        };
        // The token is bound to the organization, the filter and the order.
        let query = Query::new("QueryEvents", org)
            .with([u8::from(req.oldest_first)])
            .with(&filter.actor)
            .with(&filter.action_prefix)
            .with(&filter.resource)
            .with(filter.outcome.to_be_bytes())
            .with(filter.start_time.map(|t| t.to_string()).unwrap_or_default())
            .with(filter.end_time.map(|t| t.to_string()).unwrap_or_default())
            .with(&filter.trace_id);
        let page = Page::read(req.page_size, &req.page_token, MAX_PAGE, &query)?;
        let after = page.after.as_deref().map(decode_sequence).transpose()?;
        let mut events = self
            .store
            .read(org, &filter, after, None, order, page.limit())
            .await?;
        let next_page_token = page.finish(&mut events, &query, |e| e.sequence.to_string());
        Ok(QueryEventsResponse {
            events,
            next_page_token,
        })
    }
}
