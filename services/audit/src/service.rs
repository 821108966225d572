//! The AuditService handlers. The admission layer has already refused
//! non-service callers of `AppendEvents` and callers without `audit.read`
//! in their organization; handlers validate input and keep every read
//! inside the caller's organization (another organization is NOT_FOUND).
//!
//! Long (about 880 lines without tests) because the committer and
//! verification still sit beside the handlers; they get files of their own
//! in issue 10 §5.

use std::pin::Pin;
use tracing::Instrument;

use futures_util::Stream;
use paddock_proto::audit::v1::audit_service_server::AuditService;
use paddock_proto::audit::v1::*;
use paddock_proto::identity::v1::{Principal, PrincipalKind};
use paddock_shared::audit::PLATFORM_CHAIN;

use crate::store::PLATFORM_ORG;
use paddock_shared::audit::{GENESIS_HASH, event_hash};
use paddock_shared::auth;
use paddock_shared::error::{Error, Result};
use paddock_shared::names::{self, validate_text};
use paddock_shared::streams::Streams;
use paddock_shared::time::{now_micros, timestamp, timestamp_micros};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::store::{Appender, Filter, Order, Pending, Settings, Store};
use crate::tail::Tails;

const MAX_APPEND: usize = 1000;
const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 1000;
/// Rows per read of the chain walk, tail and export.
const BATCH: i64 = 500;
const MAX_DETAILS_BYTES: usize = 64 * 1024;
const MAX_FIELD_CHARS: usize = 1024;

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

/// One AppendEvents request waiting for its commit.
struct AppendJob {
    events: Vec<Pending>,
    done: oneshot::Sender<Result<usize, Status>>,
}

/// Requests merged into one transaction at most.
const MAX_GROUP_REQUESTS: usize = 256;
/// Events merged into one transaction at most (beyond one request's).
const MAX_GROUP_EVENTS: usize = 5000;

/// Commits appends one transaction at a time, merging the requests that
/// queued meanwhile into it: one durable commit (fsync) serves them all,
/// and appends in this process never race for a chain head. Ends when the
/// service is dropped.
async fn group_commit(store: Store, mut jobs: mpsc::Receiver<AppendJob>, tails: Tails) {
    let mut appender: Option<Appender> = None;
    while let Some(first) = jobs.recv().await {
        let mut total = first.events.len();
        let mut group = vec![first];
        while total < MAX_GROUP_EVENTS && group.len() < MAX_GROUP_REQUESTS {
            match jobs.try_recv() {
                Ok(job) => {
                    total += job.events.len();
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        let (batches, replies): (Vec<_>, Vec<_>) =
            group.into_iter().map(|j| (j.events, j.done)).unzip();
        let follow = |org: &str| tails.follows(org);
        let result = match appender.as_mut() {
            Some(a) => a.append(batches, &follow).await,
            None => match store.appender().await {
                Ok(mut a) => {
                    let result = a.append(batches, &follow).await;
                    appender = Some(a);
                    result
                }
                Err(e) => Err(e),
            },
        };
        if result.is_err() {
            // The connection may be broken: the next group takes another.
            appender = None;
        }
        match result {
            Ok((counts, updates)) => {
                tails.publish(updates.into_iter().collect());
                for (reply, count) in replies.into_iter().zip(counts) {
                    let _ = reply.send(Ok(count));
                }
            }
            Err(e) => {
                let status = Status::from(e);
                for reply in replies {
                    let _ = reply.send(Err(status.clone()));
                }
            }
        }
    }
}

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The caller's organization id (`acme` of `organizations/acme`).
fn caller_org(p: &Principal) -> Result<&str> {
    p.organization
        .strip_prefix("organizations/")
        .filter(|o| !o.is_empty())
        .ok_or_else(|| Error::PermissionDenied("the caller belongs to no organization".into()))
}

/// `parent` must be the caller's organization; empty means it.
fn parent_org<'a>(caller: &'a Principal, parent: &str) -> Result<&'a str> {
    let org = caller_org(caller)?;
    if !parent.is_empty() && names::parse_org(parent)? != org {
        return Err(Error::not_found(names::truncate(parent)));
    }
    Ok(org)
}

/// A dotted lowercase verb: `apikey.create`, `authz.deny`.
fn valid_action(action: &str) -> bool {
    action.len() <= 128
        && action.split('.').count() >= 2
        && action.split('.').all(|part| {
            !part.is_empty()
                && part.starts_with(|c: char| c.is_ascii_lowercase())
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

fn validate_event(index: usize, e: &mut AuditEvent) -> Result<String> {
    let bad = |what: &str| Error::invalid(format!("events[{index}]: {what}"));
    let id = uuid::Uuid::try_parse(&e.id).map_err(|_| bad("id must be a UUID (UUIDv7)"))?;
    // Store the canonical spelling, so one id cannot be stored twice.
    e.id = id.hyphenated().to_string();
    let org = if e.organization == PLATFORM_CHAIN {
        // Only refusals that belong to no organization go there.
        if !(e.action.starts_with("auth.") || e.action.starts_with("authz.")) {
            return Err(bad(
                "only auth.* and authz.* events go to the platform chain",
            ));
        }
        PLATFORM_ORG.to_owned()
    } else {
        names::parse_org(&e.organization)
            .map_err(|_| bad("organization must be organizations/{organization}"))?
            .to_owned()
    };
    if !valid_action(&e.action) {
        return Err(bad(
            "action must be a dotted lowercase verb such as apikey.create",
        ));
    }
    if Outcome::try_from(e.outcome).is_err() {
        return Err(bad("unknown outcome"));
    }
    if e.details_json.is_empty() {
        e.details_json = "{}".into();
    }
    if e.details_json.len() > MAX_DETAILS_BYTES {
        return Err(bad("details_json is larger than 64 KiB"));
    }
    match serde_json::from_str::<serde_json::Value>(&e.details_json) {
        Ok(serde_json::Value::Object(_)) => {}
        _ => return Err(bad("details_json must be a JSON object")),
    }
    let actor = e.actor.get_or_insert_with(Actor::default);
    for (what, text) in [
        ("actor.principal_id", &actor.principal_id),
        ("actor.kind", &actor.kind),
        ("actor.display_name", &actor.display_name),
        ("actor.key_id", &actor.key_id),
        ("resource", &e.resource),
        ("error_code", &e.error_code),
        ("source_service", &e.source_service),
        ("trace_id", &e.trace_id),
    ] {
        validate_text(what, text, MAX_FIELD_CHARS).map_err(|err| bad(&err.to_string()))?;
    }
    match &e.time {
        Some(t) if t.seconds < 0 || !(0..1_000_000_000).contains(&t.nanos) => {
            return Err(bad("invalid time"));
        }
        Some(_) => {}
        None => e.time = Some(timestamp(now_micros())),
    }
    // Microsecond precision is what is stored and hashed.
    if let Some(t) = &e.time {
        e.time = Some(timestamp(timestamp_micros(t)));
    }
    e.sequence = 0;
    e.previous_hash.clear();
    e.hash.clear();
    Ok(org)
}

fn filter(f: Option<EventFilter>) -> Result<Filter> {
    let f = f.unwrap_or_default();
    for (what, text) in [
        ("filter.actor", &f.actor),
        ("filter.action_prefix", &f.action_prefix),
        ("filter.resource", &f.resource),
        ("filter.trace_id", &f.trace_id),
    ] {
        validate_text(what, text, MAX_FIELD_CHARS)?;
    }
    if Outcome::try_from(f.outcome).is_err() {
        return Err(Error::invalid("filter.outcome: unknown outcome"));
    }
    let start_time = f.start_time.as_ref().map(timestamp_micros);
    let end_time = f.end_time.as_ref().map(timestamp_micros);
    if let (Some(s), Some(e)) = (start_time, end_time)
        && s > e
    {
        return Err(Error::invalid("filter.start_time is after filter.end_time"));
    }
    Ok(Filter {
        actor: f.actor,
        action_prefix: f.action_prefix,
        resource: f.resource,
        outcome: f.outcome,
        start_time,
        end_time,
        trace_id: f.trace_id,
    })
}

/// A page token: the direction and the last sequence returned.
fn encode_page(order: Order, sequence: i64) -> String {
    let dir = if order == Order::Oldest { 'a' } else { 'd' };
    paddock_shared::hex::encode(format!("{dir}{sequence}").as_bytes())
}

fn decode_page(token: &str, order: Order) -> Result<Option<i64>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Error::invalid("invalid page_token");
    if token.len() > 64 {
        return Err(bad());
    }
    let text = String::from_utf8(paddock_shared::hex::decode(token).ok_or_else(bad)?)
        .map_err(|_| bad())?;
    let want = if order == Order::Oldest { 'a' } else { 'd' };
    let rest = text.strip_prefix(want).ok_or_else(bad)?;
    let sequence: i64 = rest.parse().map_err(|_| bad())?;
    if sequence < 0 {
        return Err(bad());
    }
    Ok(Some(sequence))
}

fn decode_cursor(cursor: &str) -> Result<i64> {
    let bad = || Error::invalid("invalid after_cursor");
    if cursor.len() != 16 {
        return Err(bad());
    }
    let n = u64::from_str_radix(cursor, 16).map_err(|_| bad())?;
    i64::try_from(n).map_err(|_| bad())
}

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
            return Err(Status::permission_denied(
                "AppendEvents is internal: only service principals may call it",
            ));
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
        if req.page_size < 0 {
            return Err(Error::invalid("page_size must not be negative").into());
        }
        let size = if req.page_size == 0 {
            DEFAULT_PAGE
        } else {
            i64::from(req.page_size).min(MAX_PAGE)
        };
        let after = decode_page(&req.page_token, order)?;
        let mut events = self
            .store
            .read(org, &filter, after, None, order, size + 1)
            .await?;
        let next_page_token = if events.len() as i64 > size {
            events.truncate(size as usize);
            events
                .last()
                .map(|e| encode_page(order, e.sequence))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(QueryEventsResponse {
            events,
            next_page_token,
        })
    }

    /// Verifies `org`'s chain, or a range of it.
    async fn verify_in(
        &self,
        org: &str,
        req: VerifyChainRequest,
    ) -> Result<VerifyChainResponse, Status> {
        if req.from_sequence < 0 || req.to_sequence < 0 {
            return Err(
                Error::invalid("from_sequence and to_sequence must not be negative").into(),
            );
        }
        if req.to_sequence != 0 && req.from_sequence > req.to_sequence {
            return Err(Error::invalid("from_sequence is after to_sequence").into());
        }
        Ok(self.verify(org, req.from_sequence, req.to_sequence).await?)
    }

    /// Verifies `org`'s chain from `from` to `to` (0: start / end). A break
    /// found while retention moved the checkpoint may be events that
    /// retention deleted during the walk: that walk is repeated.
    async fn verify(&self, org: &str, from: i64, to: i64) -> Result<VerifyChainResponse> {
        let mut attempts = 0;
        loop {
            let response = self.verify_once(org, from, to).await?;
            attempts += 1;
            if response.intact || attempts == 3 {
                return Ok(response);
            }
            let now = self.store.checkpoint(org).await?.map_or(0, |c| c.sequence);
            if now == response.checkpoint_sequence {
                return Ok(response);
            }
        }
    }

    /// Walks `org`'s chain from `from` to `to` (0: start / end) in batches,
    /// recomputing each hash and checking every link.
    async fn verify_once(&self, org: &str, from: i64, to: i64) -> Result<VerifyChainResponse> {
        let checkpoint = self.store.checkpoint(org).await?;
        let (start, start_hash) = checkpoint
            .as_ref()
            .map_or((0, GENESIS_HASH.to_owned()), |c| {
                (c.sequence, c.hash.clone())
            });
        let (head_sequence, head_hash) = self.store.head(org).await?;
        // The sequence before the first one verified, and the hash the
        // first one must link to.
        let before = from.saturating_sub(1).max(start);
        let mut expected_previous = if before == start {
            Some(start_hash.clone())
        } else {
            // A range that starts mid-chain links to the stored event
            // before it (if that is gone, the walk reports the gap there).
            self.store.hash_at(org, before).await?
        };
        // Up to the head read above: events appended during the walk are
        // for the next verification.
        let last = if to == 0 { head_sequence } else { to };
        let mut response = VerifyChainResponse {
            intact: true,
            ..Default::default()
        };
        if let Some(c) = checkpoint {
            response.checkpoint_sequence = c.sequence;
            response.checkpoint_hash = c.hash;
            response.checkpoint_time = Some(timestamp(c.time));
        }
        let broken = |response: &mut VerifyChainResponse, sequence, id: &str, problem: String| {
            response.intact = false;
            response.broken_sequence = sequence;
            response.broken_event_id = id.to_owned();
            response.problem = problem;
        };
        let mut expected_sequence = before + 1;
        let mut previous_sequence = before;
        loop {
            let events = self
                .store
                .range(org, previous_sequence, last, BATCH)
                .await?;
            let full = events.len() as i64 == BATCH;
            for event in events {
                if event.sequence != expected_sequence {
                    let after_checkpoint = if expected_sequence == start + 1 && start > 0 {
                        format!(" (right after the retention checkpoint at {start})")
                    } else {
                        String::new()
                    };
                    broken(
                        &mut response,
                        event.sequence,
                        &event.id,
                        format!(
                            "sequence gap: events {expected_sequence} to {} are missing{after_checkpoint}",
                            event.sequence - 1
                        ),
                    );
                    return Ok(response);
                }
                if let Some(previous) = &expected_previous
                    && &event.previous_hash != previous
                {
                    broken(
                        &mut response,
                        event.sequence,
                        &event.id,
                        "previous hash mismatch: the event does not link to the one before it"
                            .into(),
                    );
                    return Ok(response);
                }
                if event_hash(&event) != event.hash {
                    broken(
                        &mut response,
                        event.sequence,
                        &event.id,
                        "hash mismatch: a stored field was changed".into(),
                    );
                    return Ok(response);
                }
                response.verified += 1;
                expected_sequence += 1;
                previous_sequence = event.sequence;
                expected_previous = Some(event.hash);
            }
            if !full {
                break;
            }
        }
        // The head must match the last event when the walk reached it.
        let reached = previous_sequence;
        if to == 0 || to >= head_sequence {
            if reached < head_sequence {
                broken(
                    &mut response,
                    reached + 1,
                    "",
                    format!(
                        "sequence gap: events {} to {head_sequence} (the chain's head) are missing",
                        reached + 1
                    ),
                );
            } else if reached > head_sequence {
                broken(
                    &mut response,
                    reached,
                    "",
                    format!("head mismatch: the chain head is at {head_sequence}"),
                );
            } else if expected_previous.as_deref() != Some(head_hash.as_str()) {
                broken(
                    &mut response,
                    reached,
                    "",
                    "head hash mismatch: the last event is not the recorded head".into(),
                );
            }
        }
        if to == 0 && response.intact {
            // Events beyond the head (a head moved back): the last event is
            // read before the head, as appends move both in one commit.
            let last_stored = self.store.last_sequence(org).await?;
            let (head_now, _) = self.store.head(org).await?;
            if last_stored > head_now {
                broken(
                    &mut response,
                    last_stored,
                    "",
                    format!(
                        "head mismatch: events are stored beyond the chain's head at {head_now}"
                    ),
                );
            }
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_dotted_lowercase_verbs() {
        for ok in [
            "apikey.create",
            "authz.deny",
            "auth.fail",
            "sandbox.exec_v2",
        ] {
            assert!(valid_action(ok), "{ok}");
        }
        for bad in [
            "",
            "create",
            "ApiKey.create",
            "apikey.",
            ".x",
            "a..b",
            "a.b c",
            "a.1b",
        ] {
            assert!(!valid_action(bad), "{bad}");
        }
    }

    #[test]
    fn page_tokens_round_trip_and_carry_the_direction() {
        let t = encode_page(Order::Newest, 42);
        assert_eq!(decode_page(&t, Order::Newest).ok(), Some(Some(42)));
        assert!(decode_page(&t, Order::Oldest).is_err());
        assert!(decode_page("zz", Order::Newest).is_err());
        assert_eq!(decode_page("", Order::Newest).ok(), Some(None));
    }

    #[test]
    fn cursors_round_trip() {
        assert_eq!(decode_cursor(&crate::tail::encode_cursor(7)).ok(), Some(7));
        assert!(decode_cursor("7").is_err());
        assert!(decode_cursor("ffffffffffffffff").is_err());
    }
}
