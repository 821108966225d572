//! The transactional audit outbox every service uses.
//!
//! A service writes its audit events into its own `audit_outbox` table in
//! the same transaction as the state change they describe ([`record`]), or
//! on their own for refusals that change nothing ([`record_now`]). A
//! [`Forwarder`] delivers them to the audit service in batches, deleting
//! only what the audit service acknowledged, with backoff while it is
//! unreachable. The audit service de-duplicates by event id, so a crash
//! between delivery and delete re-sends, never loses.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use prost::Message;
use sqlx::{AnyConnection, AnyPool};
use tokio::sync::Notify;
use tracing::Instrument;

use crate::client::BearerAuth;
use crate::proto::audit::v1::audit_service_client::AuditServiceClient;
use crate::proto::audit::v1::{Actor, AppendEventsRequest, AuditEvent, Outcome};
use crate::proto::identity::v1::{Principal, PrincipalKind};

/// The outbox table. Each service that records events keeps a copy of
/// these migrations as files in its `migrations/` directory (sqlx's
/// `migrate!` reads files only); a test in the service checks the copies.
pub const MIGRATION: &str = "CREATE TABLE audit_outbox (\n    id TEXT PRIMARY KEY,\n    created BIGINT NOT NULL,\n    event TEXT NOT NULL\n);\nCREATE INDEX audit_outbox_created ON audit_outbox (created, id);\n";

/// The quarantine: outbox rows that cannot be decoded are moved here, never
/// deleted, for an operator to look at.
pub const QUARANTINE_MIGRATION: &str = "CREATE TABLE audit_outbox_quarantine (\n    id TEXT PRIMARY KEY,\n    created BIGINT NOT NULL,\n    quarantined BIGINT NOT NULL,\n    event TEXT NOT NULL\n);\n";

/// The trace context of the span that recorded each event, so its
/// delivery can link back to it.
pub const TRACE_MIGRATION: &str = "ALTER TABLE audit_outbox ADD COLUMN traceparent TEXT;\n";

/// Checks that `migrator` (a service's `sqlx::migrate!`) holds the outbox
/// migrations, [`MIGRATION`], [`QUARANTINE_MIGRATION`] and
/// [`TRACE_MIGRATION`], at `versions`, as exact copies: sqlx reads
/// migrations from files only, so each service keeps copies, and a copy
/// that drifted from the shared SQL would make that service's outbox differ.
pub fn check_migrations(
    migrator: &sqlx::migrate::Migrator,
    versions: [i64; 3],
) -> Result<(), String> {
    let shared = [MIGRATION, QUARANTINE_MIGRATION, TRACE_MIGRATION];
    for (version, want) in versions.into_iter().zip(shared) {
        let found = migrator.iter().find(|m| m.version == version);
        match found {
            Some(m) if m.sql.as_str() == want => {}
            Some(m) => {
                return Err(format!(
                    "migration {version} ({}) is not the shared outbox SQL",
                    m.description
                ));
            }
            None => return Err(format!("no migration {version}")),
        }
    }
    Ok(())
}

/// Most events one delivery carries.
const BATCH: i64 = 500;

/// Most links one delivery span carries (OpenTelemetry's default limit).
const MAX_LINKS: usize = 128;

/// A new event: id (UUIDv7), time, the current trace id, the source service.
pub fn event(
    source: &str,
    principal: Option<&Principal>,
    action: &str,
    resource: &str,
    outcome: Outcome,
) -> AuditEvent {
    let organization = principal
        .map(|p| p.organization.clone())
        .filter(|o| !o.is_empty())
        .or_else(|| crate::names::organization_of(resource).map(crate::names::org_name))
        .unwrap_or_default();
    AuditEvent {
        id: uuid::Uuid::now_v7().to_string(),
        time: Some(crate::time::timestamp(crate::time::now_micros())),
        organization,
        actor: principal.map(actor),
        action: action.to_owned(),
        resource: resource.to_owned(),
        outcome: outcome as i32,
        source_service: source.to_owned(),
        trace_id: crate::telemetry::current_trace_id().unwrap_or_default(),
        details_json: "{}".to_owned(),
        ..Default::default()
    }
}

/// The actor fields of a principal (its key id, never a secret).
pub fn actor(p: &Principal) -> Actor {
    Actor {
        principal_id: p.id.clone(),
        kind: PrincipalKind::try_from(p.kind)
            .unwrap_or(PrincipalKind::Unspecified)
            .as_str_name()
            .to_owned(),
        display_name: p.display_name.clone(),
        key_id: p.key_id.clone(),
    }
}

/// Writes `event` into the outbox inside the caller's transaction.
pub async fn record(conn: &mut AnyConnection, event: &AuditEvent) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_outbox (id, created, event, traceparent) VALUES ($1, $2, $3, $4)",
    )
    .bind(&event.id)
    .bind(crate::time::now_micros())
    .bind(crate::hex::encode(&event.encode_to_vec()))
    .bind(crate::telemetry::current_traceparent())
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes `event` on its own (for refusals and failures, which change no
/// state).
pub async fn record_now(pool: &AnyPool, event: &AuditEvent) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    record(&mut conn, event).await
}

/// A service's handle on its outbox: the one way its handlers record audit
/// events. [`Outbox::commit`] records the event in the change's own
/// transaction, commits both and wakes the forwarder, so no handler can
/// commit a change and forget its event, or record one and forget the
/// wake-up.
#[derive(Clone)]
pub struct Outbox {
    pool: AnyPool,
    source: &'static str,
    wake: Option<Arc<Notify>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// The outbox in `pool` of service `source` (the events' source
    /// service), waking `wake` (the forwarder's, when one runs).
    pub fn new(pool: AnyPool, source: &'static str, wake: Option<Arc<Notify>>) -> Self {
        Self { pool, source, wake }
    }

    /// A success event of this service, with `details` (never secrets).
    pub fn success(
        &self,
        caller: Option<&Principal>,
        action: &str,
        resource: &str,
        details: serde_json::Value,
    ) -> AuditEvent {
        self.event(caller, action, resource, Outcome::Success, details)
    }

    /// An event of this service with any outcome.
    pub fn event(
        &self,
        caller: Option<&Principal>,
        action: &str,
        resource: &str,
        outcome: Outcome,
        details: serde_json::Value,
    ) -> AuditEvent {
        let mut e = event(self.source, caller, action, resource, outcome);
        e.details_json = details.to_string();
        e
    }

    /// Records `event` in `tx`, commits both, and wakes the forwarder.
    /// Nothing is committed if recording fails.
    pub async fn commit(
        &self,
        tx: crate::db::Transaction,
        event: AuditEvent,
    ) -> Result<(), sqlx::Error> {
        self.commit_all(tx, [event]).await
    }

    /// [`Outbox::commit`] of several events (none is a plain commit).
    pub async fn commit_all(
        &self,
        mut tx: crate::db::Transaction,
        events: impl IntoIterator<Item = AuditEvent>,
    ) -> Result<(), sqlx::Error> {
        let mut any = false;
        for event in events {
            record(&mut tx, &event).await?;
            any = true;
        }
        tx.commit().await?;
        if any {
            self.wake();
        }
        Ok(())
    }

    /// Records an event that changes no stored state (an exec, a refusal)
    /// on its own, and wakes the forwarder.
    pub async fn record_now(&self, event: &AuditEvent) -> Result<(), sqlx::Error> {
        record_now(&self.pool, event).await?;
        self.wake();
        Ok(())
    }

    /// Wakes the forwarder (after events were recorded some other way).
    pub fn wake(&self) {
        if let Some(wake) = &self.wake {
            wake.notify_one();
        }
    }

    /// The outbox in `pool` of service `source`, delivered by `forwarder`
    /// (none: events wait until an audit endpoint is configured).
    pub fn delivered_by(
        pool: AnyPool,
        source: &'static str,
        forwarder: Option<&Forwarder>,
    ) -> Self {
        Self::new(pool, source, forwarder.map(Forwarder::waker))
    }

    /// The sink the admission layer records its refusals in: this outbox,
    /// each refusal on its own.
    pub fn refusals(&self) -> RefusalOutbox {
        RefusalOutbox::new(self.pool.clone(), self.wake.clone())
    }
}

/// Where the admission layer records what it refused (failed
/// authentication, denials) as audit events. They change no state, so they
/// go to the outbox on their own, before the refusal is answered.
pub trait RefusalSink: Send + Sync + 'static {
    fn record(&self, event: AuditEvent) -> futures_util::future::BoxFuture<'_, ()>;
}

/// Records the admission layer's refusals (failed authentication, denials)
/// in a service's outbox, each on its own. A refusal that names no
/// organization (a token naming no stored key) goes to the platform chain,
/// within the platform budget.
pub struct RefusalOutbox {
    pool: AnyPool,
    wake: Option<Arc<Notify>>,
    platform: crate::audit::PlatformBudget,
}

impl RefusalOutbox {
    /// Records into `pool`'s outbox and wakes the forwarder (if any).
    pub fn new(pool: AnyPool, wake: Option<Arc<Notify>>) -> Self {
        Self {
            pool,
            wake,
            platform: crate::audit::PlatformBudget::default(),
        }
    }
}

impl RefusalSink for RefusalOutbox {
    fn record(&self, event: AuditEvent) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut event = event;
            // No organization to charge it to: the platform chain.
            if event.organization.is_empty() && !self.platform.charge(&mut event) {
                return;
            }
            match record_now(&self.pool, &event).await {
                Ok(()) => {
                    if let Some(wake) = &self.wake {
                        wake.notify_one();
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, action = %event.action, "could not record a refusal in the audit outbox")
                }
            }
        })
    }
}

/// Delivers the outbox to the audit service.
pub struct Forwarder {
    pool: AnyPool,
    client: AuditServiceClient<
        tonic::service::interceptor::InterceptedService<crate::client::Channel, BearerAuth>,
    >,
    wake: Arc<Notify>,
    quarantined: Arc<std::sync::atomic::AtomicU64>,
    gauge: Arc<crate::metrics::OutboxGauge>,
}

impl Forwarder {
    /// A forwarder of `service`'s outbox (the name its metrics carry).
    pub fn new(
        service: &'static str,
        pool: AnyPool,
        audit_endpoint: &str,
        auth: BearerAuth,
    ) -> Result<Self, tonic::Status> {
        let channel = crate::client::lazy_channel(audit_endpoint)?;
        Ok(Self {
            pool,
            client: AuditServiceClient::with_interceptor(channel, auth),
            wake: Arc::default(),
            quarantined: Arc::default(),
            gauge: crate::metrics::OutboxGauge::register(service),
        })
    }

    /// Counts what waits and what is quarantined, for the metrics and the
    /// admin health. A count that fails leaves the last one.
    async fn measure(&self) {
        let waiting: Result<(i64, Option<i64>), _> =
            sqlx::query_as("SELECT COUNT(*), MIN(created) FROM audit_outbox")
                .fetch_one(&self.pool)
                .await;
        let quarantined: Result<(i64,), _> =
            sqlx::query_as("SELECT COUNT(*) FROM audit_outbox_quarantine")
                .fetch_one(&self.pool)
                .await;
        if let Ok((backlog, oldest)) = waiting {
            let quarantined = quarantined.map_or(self.gauge.quarantined(), |(n,)| n);
            self.gauge.set(backlog, oldest, quarantined);
        }
    }

    /// How many undecodable rows this forwarder has moved to the
    /// quarantine since it started.
    pub fn quarantined(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.quarantined.clone()
    }

    /// Call after committing events, to deliver them without waiting.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Delivers one batch; returns how many events were delivered.
    pub async fn deliver_once(&self) -> Result<usize, String> {
        let rows: Vec<(String, i64, String, Option<String>)> = sqlx::query_as(
            "SELECT id, created, event, traceparent FROM audit_outbox ORDER BY created, id LIMIT $1",
        )
        .bind(BATCH)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| format!("reading the outbox: {e}"))?;
        if rows.is_empty() {
            return Ok(0);
        }
        // A delivery is its own trace, linked to the ones that recorded
        // its events.
        let span = tracing::info_span!(
            parent: None,
            "outbox.deliver",
            otel.kind = "producer",
            paddock.outbox.events = rows.len() as i64,
        );
        for (_, _, _, traceparent) in rows.iter().take(MAX_LINKS) {
            if let Some(cx) = traceparent
                .as_deref()
                .and_then(crate::telemetry::parse_traceparent)
            {
                crate::telemetry::link(&span, cx);
            }
        }
        self.deliver_rows(&rows).instrument(span).await
    }

    async fn deliver_rows(
        &self,
        rows: &[(String, i64, String, Option<String>)],
    ) -> Result<usize, String> {
        let mut events = Vec::with_capacity(rows.len());
        let mut undecodable = Vec::new();
        for (id, created, hex, _) in rows {
            match crate::hex::decode(hex).and_then(|b| AuditEvent::decode(b.as_slice()).ok()) {
                Some(e) => events.push(e),
                None => undecodable.push((id, *created, hex)),
            }
        }
        if !events.is_empty() {
            self.client
                .clone()
                .append_events(AppendEventsRequest { events })
                .await
                .map_err(|s| format!("audit service: {:?}: {}", s.code(), s.message()))?;
        }
        // Only acknowledged rows are removed; undecodable ones move to the
        // quarantine in the same transaction.
        let mut tx = crate::db::Transaction::begin(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        for (id, created, hex) in &undecodable {
            sqlx::query(
                "INSERT INTO audit_outbox_quarantine (id, created, quarantined, event) VALUES ($1, $2, $3, $4)",
            )
            .bind(*id)
            .bind(*created)
            .bind(crate::time::now_micros())
            .bind(*hex)
            .execute(&mut *tx)
            .await
            .map_err(|e| format!("quarantining an outbox row: {e}"))?;
        }
        for (id, _, _, _) in rows {
            sqlx::query("DELETE FROM audit_outbox WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(|e| e.to_string())?;
        }
        tx.commit().await.map_err(|e| e.to_string())?;
        if !undecodable.is_empty() {
            let total = self.quarantined.fetch_add(
                undecodable.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            ) + undecodable.len() as u64;
            tracing::error!(
                count = undecodable.len(),
                total,
                "undecodable outbox rows moved to audit_outbox_quarantine"
            );
        }
        Ok(rows.len())
    }

    /// Delivers until aborted: right after a wake-up, at least every second,
    /// backing off (up to 5 s) while the audit service is unreachable.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                // Retries until delivered: events wait in the outbox
                // however long the audit service is away. Each attempt
                // that leaves the outbox not full counts what waits.
                let attempt = || async {
                    let delivered = self.deliver_once().await;
                    if !matches!(delivered, Ok(n) if n as i64 == BATCH) {
                        self.measure().await;
                    }
                    delivered
                };
                let delivered = attempt
                    .retry(DELIVERY_BACKOFF)
                    .sleep(tokio::time::sleep)
                    .notify(|e, retry_in| {
                        tracing::warn!(error = %e, ?retry_in, "audit delivery failed; events stay in the outbox");
                    })
                    .await;
                if matches!(delivered, Ok(n) if n as i64 == BATCH) {
                    continue;
                }
                let wake = self.wake.clone();
                let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
            }
        })
    }
}

/// The forwarder's retry while the audit service is unreachable: 100 ms,
/// doubling up to 5 s, without end.
const DELIVERY_BACKOFF: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(100))
    .with_max_delay(Duration::from_secs(5))
    .without_max_times();

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Database, test_migrator};

    #[test]
    fn a_service_copy_of_the_outbox_sql_is_checked() {
        let good = test_migrator(&[
            (1, "CREATE TABLE x (a INT);\n"),
            (2, MIGRATION),
            (3, QUARANTINE_MIGRATION),
            (4, TRACE_MIGRATION),
        ]);
        assert_eq!(check_migrations(&good, [2, 3, 4]), Ok(()));
        let missing = check_migrations(&good, [2, 3, 9]).expect_err("no 9");
        assert!(missing.contains("no migration 9"), "{missing}");
        let drifted = test_migrator(&[
            (2, MIGRATION),
            (3, "CREATE TABLE audit_outbox_quarantine (id TEXT);\n"),
            (4, TRACE_MIGRATION),
        ]);
        let err = check_migrations(&drifted, [2, 3, 4]).expect_err("drifted");
        assert!(err.contains("migration 3"), "{err}");
    }

    #[tokio::test]
    async fn events_stay_in_the_outbox_while_audit_is_unreachable() {
        let dir = std::env::temp_dir().join(format!("paddock-outbox-{}", uuid::Uuid::new_v4()));
        let db = Database::connect(
            "svc",
            &dir,
            None,
            &test_migrator(&[(1, MIGRATION), (2, TRACE_MIGRATION)]),
        )
        .await
        .expect("db");
        let p = Principal {
            id: "m1".into(),
            kind: PrincipalKind::Member as i32,
            organization: "organizations/acme".into(),
            key_id: "k1".into(),
            ..Default::default()
        };
        let first = event(
            "identity",
            Some(&p),
            "project.create",
            "organizations/acme/projects/web",
            Outcome::Success,
        );
        let mut tx = db.begin_write().await.expect("tx");
        record(&mut tx, &first).await.expect("record");
        tx.commit().await.expect("commit");
        let denied = event(
            "identity",
            None,
            "auth.fail",
            "organizations/acme",
            Outcome::Denied,
        );
        record_now(&db.pool, &denied).await.expect("record now");
        assert_eq!(first.organization, "organizations/acme");
        assert_eq!(
            first.actor.as_ref().map(|a| a.kind.as_str()),
            Some("PRINCIPAL_KIND_MEMBER")
        );
        assert_eq!(
            denied.organization, "organizations/acme",
            "taken from the resource when no principal"
        );
        assert!(uuid::Uuid::parse_str(&first.id).is_ok_and(|u| u.get_version_num() == 7));

        // Nothing listens on this port: delivery fails and keeps the rows.
        let unused = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        let forwarder = Forwarder::new(
            "svc",
            db.pool.clone(),
            &format!("http://{unused}"),
            BearerAuth::anonymous(),
        )
        .expect("forwarder");
        assert!(forwarder.deliver_once().await.is_err());
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM audit_outbox")
            .fetch_one(&db.pool)
            .await
            .expect("count");
        assert_eq!(n, 2);
        let (stored,): (String,) = sqlx::query_as("SELECT event FROM audit_outbox WHERE id = $1")
            .bind(&first.id)
            .fetch_one(&db.pool)
            .await
            .expect("row");
        let decoded = AuditEvent::decode(crate::hex::decode(&stored).expect("hex").as_slice())
            .expect("decode");
        assert_eq!(decoded, first);
        db.pool.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn undecodable_rows_are_quarantined_never_deleted() {
        let dir = std::env::temp_dir().join(format!("paddock-outbox-{}", uuid::Uuid::new_v4()));
        let db = Database::connect(
            "svc",
            &dir,
            None,
            &test_migrator(&[
                (1, MIGRATION),
                (2, QUARANTINE_MIGRATION),
                (3, TRACE_MIGRATION),
            ]),
        )
        .await
        .expect("db");
        for (id, event) in [("bad-hex", "zz"), ("bad-proto", "ffffffff")] {
            sqlx::query("INSERT INTO audit_outbox (id, created, event) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(7_i64)
                .bind(event)
                .execute(&db.pool)
                .await
                .expect("insert");
        }
        let unused = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        let forwarder = Forwarder::new(
            "svc",
            db.pool.clone(),
            &format!("http://{unused}"),
            BearerAuth::anonymous(),
        )
        .expect("forwarder");
        let counter = forwarder.quarantined();
        // Nothing to deliver: the two rows leave the outbox for the
        // quarantine, as they were.
        assert_eq!(forwarder.deliver_once().await, Ok(2));
        let (left,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM audit_outbox")
            .fetch_one(&db.pool)
            .await
            .expect("count");
        assert_eq!(left, 0);
        let kept: Vec<(String, i64, String)> =
            sqlx::query_as("SELECT id, created, event FROM audit_outbox_quarantine ORDER BY id")
                .fetch_all(&db.pool)
                .await
                .expect("quarantine");
        assert_eq!(
            kept,
            [
                ("bad-hex".to_owned(), 7, "zz".to_owned()),
                ("bad-proto".to_owned(), 7, "ffffffff".to_owned())
            ]
        );
        assert_eq!(counter.load(std::sync::atomic::Ordering::Relaxed), 2);
        db.pool.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
