//! The events table and the chain heads: filtered keyset reads, the
//! chain walk that verification runs, settings, and retention's pruning.
//! Appends (chained under a lock on each organization's head row) are in
//! `append`.

mod append;

use append::append_in;
pub(crate) use append::{Appender, ChainUpdate, Pending, seals};
pub use append::{INSERT_CHUNK, SQLITE_APPEND_PRAGMAS, push_placeholders};

use std::collections::HashSet;

use paddock_proto::audit::v1::{Actor, AuditEvent};
use paddock_shared::audit::{GENESIS_HASH, event_hash};
use paddock_shared::db::{Backend, Database};
use paddock_shared::error::Result;
use paddock_shared::names::org_name;
use paddock_shared::time::{timestamp, timestamp_micros};
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Executor, Row};

const COLUMNS: &str = "id, org_id, sequence, time, actor_id, actor_kind, actor_name, actor_key_id, action, resource, outcome, error_code, source_service, trace_id, details_json, previous_hash, hash";

/// Filters of query, tail and export, validated.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub actor: String,
    pub action_prefix: String,
    pub resource: String,
    pub outcome: i32,
    pub start_time: Option<i64>,
    pub end_time: Option<i64>,
    pub trace_id: String,
}

impl Filter {
    /// Whether `event` matches, as [`Store::read`] decides it in SQL (an
    /// actor is a principal id or a display name; SQLite's LIKE ignores
    /// ASCII case, and stored actions are lowercase).
    pub fn matches(&self, event: &AuditEvent, backend: Backend) -> bool {
        let actor = event.actor.as_ref();
        let time = event.time.as_ref().map_or(0, timestamp_micros);
        let prefix_matches = match backend {
            Backend::Sqlite => event
                .action
                .to_ascii_lowercase()
                .starts_with(&self.action_prefix.to_ascii_lowercase()),
            Backend::Postgres => event.action.starts_with(&self.action_prefix),
        };
        (self.actor.is_empty()
            || actor.is_some_and(|a| a.principal_id == self.actor || a.display_name == self.actor))
            && prefix_matches
            && (self.resource.is_empty() || event.resource == self.resource)
            && (self.outcome == 0 || event.outcome == self.outcome)
            && self.start_time.is_none_or(|start| time >= start)
            && self.end_time.is_none_or(|end| time < end)
            && (self.trace_id.is_empty() || event.trace_id == self.trace_id)
    }
}

/// Which way a read walks the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Oldest,
    Newest,
}

enum Param {
    Text(String),
    Int(i64),
}

/// SQL text with its parameters numbered as they are pushed.
#[derive(Default)]
struct Sql {
    text: String,
    params: Vec<Param>,
}

impl Sql {
    fn param(&mut self, p: Param) -> String {
        self.params.push(p);
        format!("${}", self.params.len())
    }

    fn query(&self) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments> {
        let mut q = sqlx::query(AssertSqlSafe(self.text.as_str()));
        for p in &self.params {
            q = match p {
                Param::Text(s) => q.bind(s.as_str()),
                Param::Int(i) => q.bind(*i),
            };
        }
        q
    }
}

/// `LIKE` pattern matching values that start with `prefix`.
fn like_prefix(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// The key of the platform chain: not a valid organization id, so no
/// organization can ever own it. Its events say `organization: "platform"`.
pub const PLATFORM_ORG: &str = "_platform";

fn event_from_row(row: &AnyRow) -> Result<AuditEvent> {
    let org: String = row.try_get(1)?;
    Ok(AuditEvent {
        id: row.try_get(0)?,
        organization: if org == PLATFORM_ORG {
            paddock_shared::audit::PLATFORM_CHAIN.to_owned()
        } else {
            org_name(&org)
        },
        sequence: row.try_get(2)?,
        time: Some(timestamp(row.try_get(3)?)),
        actor: Some(Actor {
            principal_id: row.try_get(4)?,
            kind: row.try_get(5)?,
            display_name: row.try_get(6)?,
            key_id: row.try_get(7)?,
        }),
        action: row.try_get(8)?,
        resource: row.try_get(9)?,
        outcome: i32::try_from(row.try_get::<i64, _>(10)?).unwrap_or(0),
        error_code: row.try_get(11)?,
        source_service: row.try_get(12)?,
        trace_id: row.try_get(13)?,
        details_json: row.try_get(14)?,
        previous_hash: row.try_get(15)?,
        hash: row.try_get(16)?,
    })
}

/// Where retention left an organization's chain: the last deleted event's
/// sequence and hash, and when (unix microseconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub sequence: i64,
    pub hash: String,
    pub time: i64,
}

/// An organization's audit settings as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// 0 keeps events forever.
    pub retention_days: i64,
    /// None while the settings are the defaults.
    pub update_time: Option<i64>,
    pub updated_by: String,
}

/// Why one pruning step stopped short of its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The next event is within the retention period.
    Retained,
    /// The event at this sequence does not link to the checkpoint or
    /// the event before it, or its hash does not match.
    Broken(i64),
    /// No more events.
    End,
}

/// One pruning step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub deleted: i64,
    /// The checkpoint after the step.
    pub checkpoint: i64,
    /// None if the step deleted `limit` events and may go on.
    pub stop: Option<Stop>,
}

#[derive(Clone)]
pub struct Store {
    pub db: Database,
}

impl Store {
    /// A connection whose commits are durable before they return: on
    /// SQLite the WAL is fsynced at each commit (the pool's default,
    /// `synchronous=NORMAL`, may lose the last commits on power loss).
    async fn durable_connection(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>> {
        let mut conn = self.db.pool.acquire().await?;
        if self.db.backend == Backend::Sqlite {
            conn.execute("PRAGMA synchronous=FULL").await?;
        }
        Ok(conn)
    }

    /// Events of `org` matching `filter`, after `after` (a sequence) in
    /// `order`, up to sequence `until`, at most `limit`.
    pub async fn read(
        &self,
        org: &str,
        filter: &Filter,
        after: Option<i64>,
        until: Option<i64>,
        order: Order,
        limit: i64,
    ) -> Result<Vec<AuditEvent>> {
        let mut sql = Sql::default();
        let org_p = sql.param(Param::Text(org.to_owned()));
        sql.text = format!("SELECT {COLUMNS} FROM events WHERE org_id = {org_p}");
        let mut time_range = String::new();
        if let Some(start) = filter.start_time {
            let p = sql.param(Param::Int(start));
            time_range.push_str(&format!(" AND time >= {p}"));
        }
        if let Some(end) = filter.end_time {
            let p = sql.param(Param::Int(end));
            time_range.push_str(&format!(" AND time < {p}"));
        }
        if filter.actor.is_empty() {
            sql.text.push_str(&time_range);
        } else {
            // One index range per actor column instead of an OR, which
            // planners (SQLite without statistics especially) answer with a
            // scan of the time index: actor + 24 h stays fast at millions
            // of events.
            // The time range applies inside, where the actor indexes cover
            // it; outside it would tempt the planner into the time index.
            // A display name is looked up through the principal ids that
            // carried it (`actor_names`), so both go through the actor id
            // index.
            let p = sql.param(Param::Text(filter.actor.clone()));
            sql.text.push_str(&format!(
                " AND sequence IN (SELECT sequence FROM events WHERE org_id = {org_p} AND actor_id = {p}{time_range} \
                 UNION ALL SELECT sequence FROM events WHERE org_id = {org_p} AND actor_id IN \
                 (SELECT actor_id FROM actor_names WHERE org_id = {org_p} AND actor_name = {p} AND actor_id <> {p}) \
                 AND actor_name = {p}{time_range})"
            ));
        }
        if !filter.action_prefix.is_empty() {
            let p = sql.param(Param::Text(like_prefix(&filter.action_prefix)));
            sql.text
                .push_str(&format!(" AND action LIKE {p} ESCAPE '\\'"));
        }
        if !filter.resource.is_empty() {
            let p = sql.param(Param::Text(filter.resource.clone()));
            sql.text.push_str(&format!(" AND resource = {p}"));
        }
        if filter.outcome != 0 {
            let p = sql.param(Param::Int(i64::from(filter.outcome)));
            sql.text.push_str(&format!(" AND outcome = {p}"));
        }
        if !filter.trace_id.is_empty() {
            let p = sql.param(Param::Text(filter.trace_id.clone()));
            sql.text.push_str(&format!(" AND trace_id = {p}"));
        }
        if let Some(after) = after {
            let p = sql.param(Param::Int(after));
            let op = if order == Order::Oldest { ">" } else { "<" };
            sql.text.push_str(&format!(" AND sequence {op} {p}"));
        }
        if let Some(until) = until {
            let p = sql.param(Param::Int(until));
            sql.text.push_str(&format!(" AND sequence <= {p}"));
        }
        let dir = if order == Order::Oldest {
            "ASC"
        } else {
            "DESC"
        };
        let p = sql.param(Param::Int(limit));
        // With an actor filter the matching set comes from the actor
        // indexes; `+sequence` keeps the planner from walking the whole
        // organization in sequence order instead (which it would when the
        // actor has fewer matches than the page holds).
        let key = if filter.actor.is_empty() {
            "sequence"
        } else {
            "+sequence"
        };
        sql.text
            .push_str(&format!(" ORDER BY {key} {dir} LIMIT {p}"));
        let rows = sql.query().fetch_all(&self.db.pool).await?;
        rows.iter().map(event_from_row).collect()
    }

    /// Whether `org`'s chain is sealed (its organization was deleted).
    pub async fn sealed(&self, org: &str) -> Result<bool> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT event_id FROM sealed_chains WHERE org_id = $1")
                .bind(org)
                .fetch_optional(&self.db.pool)
                .await?;
        Ok(row.is_some())
    }

    /// The last sequence and hash of `org`'s chain (0 and the genesis hash
    /// before its first event).
    pub async fn head(&self, org: &str) -> Result<(i64, String)> {
        let head: Option<(i64, String)> =
            sqlx::query_as("SELECT sequence, hash FROM chain_heads WHERE org_id = $1")
                .bind(org)
                .fetch_optional(&self.db.pool)
                .await?;
        Ok(head.unwrap_or_else(|| (0, GENESIS_HASH.to_owned())))
    }

    /// Where retention left the chain's start, if it deleted anything.
    pub async fn checkpoint(&self, org: &str) -> Result<Option<Checkpoint>> {
        let row: Option<(i64, String, i64)> = sqlx::query_as(
            "SELECT sequence, hash, create_time FROM checkpoints WHERE org_id = $1 AND sequence > 0",
        )
        .bind(org)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(row.map(|(sequence, hash, time)| Checkpoint {
            sequence,
            hash,
            time,
        }))
    }

    /// `org`'s audit settings (the defaults when never set).
    pub async fn settings(&self, org: &str) -> Result<Settings> {
        let row: Option<(i64, i64, String)> = sqlx::query_as(
            "SELECT retention_days, update_time, updated_by FROM audit_settings WHERE org_id = $1",
        )
        .bind(org)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(
            row.map_or_else(Settings::default, |(days, time, by)| Settings {
                retention_days: days,
                update_time: Some(time),
                updated_by: by,
            }),
        )
    }

    /// Sets `org`'s retention and chains `change` (the settings change's
    /// own event, its details filled in here with the old and new value)
    /// in the same transaction.
    pub async fn update_settings(
        &self,
        org: &str,
        retention_days: i64,
        updated_by: &str,
        now: i64,
        mut change: AuditEvent,
    ) -> Result<Settings> {
        let mut conn = self.durable_connection().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        // A write first: it takes SQLite's write lock at once, and the row
        // lock on PostgreSQL, before the old value is read.
        sqlx::query(
            "INSERT INTO audit_settings (org_id, retention_days, update_time, updated_by) VALUES ($1, 0, 0, '') ON CONFLICT (org_id) DO NOTHING",
        )
        .bind(org)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE audit_settings SET retention_days = retention_days WHERE org_id = $1")
            .bind(org)
            .execute(&mut *tx)
            .await?;
        let (previous,): (i64,) =
            sqlx::query_as("SELECT retention_days FROM audit_settings WHERE org_id = $1")
                .bind(org)
                .fetch_one(&mut *tx)
                .await?;
        sqlx::query(
            "UPDATE audit_settings SET retention_days = $1, update_time = $2, updated_by = $3 WHERE org_id = $4",
        )
        .bind(retention_days)
        .bind(now)
        .bind(updated_by)
        .bind(org)
        .execute(&mut *tx)
        .await?;
        change.details_json = serde_json::json!({
            "retention_days": retention_days,
            "previous_retention_days": previous,
        })
        .to_string();
        append_in(
            &mut tx,
            self.db.backend,
            vec![vec![Pending {
                org: org.to_owned(),
                event: change,
                seals: false,
            }]],
            &HashSet::new(),
            &|_| false,
        )
        .await?;
        tx.commit().await?;
        paddock_shared::metrics::appended(1);
        Ok(Settings {
            retention_days,
            update_time: Some(now),
            updated_by: updated_by.to_owned(),
        })
    }

    /// Organizations with a retention period, and that period in days.
    pub async fn retention_periods(&self) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT org_id, retention_days FROM audit_settings WHERE retention_days > 0 ORDER BY org_id",
        )
        .fetch_all(&self.db.pool)
        .await?)
    }

    /// Deletes, in one transaction, up to `limit` of `org`'s oldest events
    /// that are older than `cutoff`, in chain order, and moves the
    /// checkpoint to the last one deleted. It stops before the first event
    /// that is not older, and before the first broken link (so retention
    /// never erases the evidence of tampering; verification names it).
    pub async fn prune(&self, org: &str, cutoff: i64, limit: i64, now: i64) -> Result<Pruned> {
        let mut conn = self.durable_connection().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        // Lock the checkpoint row (a write first, as in appends) so two
        // replicas never prune the same events.
        sqlx::query(
            "INSERT INTO checkpoints (org_id, sequence, hash, create_time) VALUES ($1, 0, $2, 0) ON CONFLICT (org_id) DO NOTHING",
        )
        .bind(org)
        .bind(GENESIS_HASH)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE checkpoints SET sequence = sequence WHERE org_id = $1")
            .bind(org)
            .execute(&mut *tx)
            .await?;
        let (start, start_hash): (i64, String) =
            sqlx::query_as("SELECT sequence, hash FROM checkpoints WHERE org_id = $1")
                .bind(org)
                .fetch_one(&mut *tx)
                .await?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM events WHERE org_id = $1 AND sequence > $2 ORDER BY sequence ASC LIMIT $3"
        )))
        .bind(org)
        .bind(start)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let scanned = rows.len() as i64;
        let mut last = (start, start_hash);
        let mut stop = None;
        for row in &rows {
            let event = event_from_row(row)?;
            if event.time.as_ref().map_or(0, timestamp_micros) >= cutoff {
                stop = Some(Stop::Retained);
                break;
            }
            if event.sequence != last.0 + 1
                || event.previous_hash != last.1
                || event_hash(&event) != event.hash
            {
                stop = Some(Stop::Broken(event.sequence));
                break;
            }
            last = (event.sequence, event.hash);
        }
        let deleted = last.0 - start;
        if deleted > 0 {
            sqlx::query(
                "DELETE FROM events WHERE org_id = $1 AND sequence > $2 AND sequence <= $3",
            )
            .bind(org)
            .bind(start)
            .bind(last.0)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE checkpoints SET sequence = $1, hash = $2, create_time = $3 WHERE org_id = $4",
            )
            .bind(last.0)
            .bind(&last.1)
            .bind(now)
            .bind(org)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Pruned {
            deleted,
            checkpoint: last.0,
            stop: stop.or((scanned < limit).then_some(Stop::End)),
        })
    }

    /// The highest sequence stored for `org` (0 when none is).
    pub async fn last_sequence(&self, org: &str) -> Result<i64> {
        let row: (Option<i64>,) =
            sqlx::query_as("SELECT MAX(sequence) FROM events WHERE org_id = $1")
                .bind(org)
                .fetch_one(&self.db.pool)
                .await?;
        Ok(row.0.unwrap_or(0))
    }

    /// The stored hash of one event, by sequence.
    pub async fn hash_at(&self, org: &str, sequence: i64) -> Result<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT hash FROM events WHERE org_id = $1 AND sequence = $2")
                .bind(org)
                .bind(sequence)
                .fetch_optional(&self.db.pool)
                .await?;
        Ok(row.map(|r| r.0))
    }

    /// Events of `org` with `from <= sequence <= to`, oldest first, after
    /// `after`, at most `limit`; for the chain walk.
    pub async fn range(
        &self,
        org: &str,
        after: i64,
        to: i64,
        limit: i64,
    ) -> Result<Vec<AuditEvent>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM events WHERE org_id = $1 AND sequence > $2 AND sequence <= $3 ORDER BY sequence ASC LIMIT $4"
        )))
        .bind(org)
        .bind(after)
        .bind(to)
        .bind(limit)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(super::like_prefix("apikey."), "apikey.%");
        assert_eq!(super::like_prefix("a_b%c\\"), "a\\_b\\%c\\\\%");
    }
}
