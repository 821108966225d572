//! The organization reaper: purges a service's data of deleted organizations,
//! from identity's tombstones (`ListDeletedOrganizations`), once each.
//!
//! Tombstones are written in the delete's own transaction, so the feed is
//! durable: a service that was down, or missed the push, purges at its next
//! round. Rounds run at start, every `interval`, whenever `wake` is
//! notified, and whenever identity pushes an organization invalidation (the
//! reaper follows `WatchInvalidations` itself, so the auth layer needs no
//! hook). Each service remembers the organizations it purged in its own
//! `purged_organizations` table; a failed purge is logged and retried next
//! round, so `purge` must be idempotent.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::auth::IdentityClient;
use crate::db::Database;
use crate::error::{Error, Result};
use crate::proto::identity::v1::watch_invalidations_response::Target;
use crate::proto::identity::v1::{ListDeletedOrganizationsRequest, WatchInvalidationsRequest};

/// How often a reaper looks for deleted organizations without a push.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// Removes everything a service holds for one organization (its id, `acme`
/// of `organizations/acme`). Called again after an error, and possibly
/// after a success that was not recorded: it must be idempotent.
pub type Purge = Arc<dyn Fn(String) -> BoxFuture<'static, Result<()>> + Send + Sync>;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS purged_organizations (org_id TEXT PRIMARY KEY, purge_time BIGINT NOT NULL)";

/// Starts the reaper of `service` (the name only labels its logs). The task
/// runs until aborted; put its handle with the server's background tasks.
pub fn spawn_org_reaper(
    identity: IdentityClient,
    db: Database,
    service: &'static str,
    purge: Purge,
    wake: Option<Arc<Notify>>,
    interval: Duration,
) -> JoinHandle<()> {
    let wake = wake.unwrap_or_default();
    tokio::spawn(async move {
        // One task for both loops, so aborting the handle ends both.
        tokio::join!(
            follow_invalidations(identity.clone(), wake.clone()),
            reap(identity, db, service, purge, wake, interval),
        );
    })
}

async fn reap(
    identity: IdentityClient,
    db: Database,
    service: &'static str,
    purge: Purge,
    wake: Arc<Notify>,
    interval: Duration,
) {
    loop {
        if let Err(err) = round(&identity, &db, service, &purge).await {
            tracing::warn!(service, error = %err, "organization reaper round failed; retrying next round");
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = wake.notified() => {}
        }
    }
}

/// One pass: purges every deleted organization not purged yet.
async fn round(
    identity: &IdentityClient,
    db: &Database,
    service: &'static str,
    purge: &Purge,
) -> Result<()> {
    sqlx::query(SCHEMA).execute(&db.pool).await?;
    let deleted = deleted_organizations(identity).await?;
    if deleted.is_empty() {
        return Ok(());
    }
    let purged: HashSet<String> =
        sqlx::query_as::<_, (String,)>("SELECT org_id FROM purged_organizations")
            .fetch_all(&db.pool)
            .await?
            .into_iter()
            .map(|(id,)| id)
            .collect();
    for org in deleted.into_iter().filter(|o| !purged.contains(o)) {
        match purge(org.clone()).await {
            Ok(()) => {
                sqlx::query(
                    "INSERT INTO purged_organizations (org_id, purge_time) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                )
                .bind(&org)
                .bind(crate::time::now_micros())
                .execute(&db.pool)
                .await?;
                tracing::info!(service, organization = %org, "purged a deleted organization");
            }
            Err(err) => {
                tracing::warn!(service, organization = %org, error = %err, "purging a deleted organization failed; retrying next round");
            }
        }
    }
    Ok(())
}

/// Every deleted organization's id, from all pages.
async fn deleted_organizations(identity: &IdentityClient) -> Result<Vec<String>> {
    let mut client = identity.clone();
    let mut ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let resp = client
            .list_deleted_organizations(ListDeletedOrganizationsRequest {
                page_size: 1000,
                page_token,
            })
            .await
            .map_err(Error::from_status)?
            .into_inner();
        ids.extend(
            resp.organizations
                .into_iter()
                .filter_map(|o| crate::names::parse_org(&o.name).ok().map(str::to_owned)),
        );
        if resp.next_page_token.is_empty() {
            return Ok(ids);
        }
        page_token = resp.next_page_token;
    }
}

/// Wakes the reaper when identity pushes an organization change, and after
/// every (re)connect, since pushes may have been missed meanwhile.
async fn follow_invalidations(identity: IdentityClient, wake: Arc<Notify>) {
    let mut client = identity;
    loop {
        if let Ok(resp) = client
            .watch_invalidations(WatchInvalidationsRequest {})
            .await
        {
            let mut stream = resp.into_inner();
            while let Ok(Some(msg)) = stream.message().await {
                if matches!(msg.target, Some(Target::Organization(_) | Target::Reset(_))) {
                    wake.notify_one();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
