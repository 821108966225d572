//! The events table and the chain heads: appends chained under a lock on
//! each organization's head row, filtered keyset reads, and the chain walk
//! that verification runs.

use std::collections::{BTreeMap, HashSet};

use paddock_proto::audit::v1::{Actor, AuditEvent};
use paddock_shared::audit::{GENESIS_HASH, event_hash};
use paddock_shared::db::{Backend, Database};
use paddock_shared::error::Result;
use paddock_shared::names::org_name;
use paddock_shared::time::{timestamp, timestamp_micros};
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Executor, Row};

const COLUMNS: &str = "id, org_id, sequence, time, actor_id, actor_kind, actor_name, actor_key_id, action, resource, outcome, error_code, source_service, trace_id, details_json, previous_hash, hash";
const COLUMN_COUNT: usize = 17;
/// Rows per multi-row INSERT (17 parameters each, far below both backends'
/// limits).
const INSERT_CHUNK: usize = 50;
/// Ids per duplicate lookup.
const LOOKUP_CHUNK: usize = 500;

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

fn event_from_row(row: &AnyRow) -> Result<AuditEvent> {
    let org: String = row.try_get(1)?;
    Ok(AuditEvent {
        id: row.try_get(0)?,
        organization: org_name(&org),
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

/// An event ready to store: its organization id and the chained event.
pub struct Pending {
    pub org: String,
    pub event: AuditEvent,
}

#[derive(Clone)]
pub struct Store {
    pub db: Database,
}

impl Store {
    /// Stores the events of several requests (`batches`) not stored yet,
    /// chaining each onto its organization's head, in one transaction;
    /// returns how many of each batch were new (a duplicate id counts for
    /// the first batch that carries it).
    ///
    /// Callers serialize appends in this process; across replicas the
    /// UPDATE of each head row takes its row lock (PostgreSQL) or the
    /// database's write lock (SQLite) before the head is read, so two
    /// appenders never chain onto the same head.
    pub async fn append(&self, batches: Vec<Vec<Pending>>) -> Result<Vec<usize>> {
        let mut counts = vec![0; batches.len()];
        let mut by_org: BTreeMap<String, Vec<(usize, AuditEvent)>> = BTreeMap::new();
        let mut seen = HashSet::new();
        for (batch, events) in batches.into_iter().enumerate() {
            for p in events {
                if seen.insert(p.event.id.clone()) {
                    by_org.entry(p.org).or_default().push((batch, p.event));
                }
            }
        }
        let mut conn = self.db.pool.acquire().await?;
        if self.db.backend == Backend::Sqlite {
            // Durable before the ack: fsync the WAL on this commit.
            conn.execute("PRAGMA synchronous=FULL").await?;
        }
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        // Lock heads in a fixed (sorted) order so appenders cannot deadlock.
        let mut heads = BTreeMap::new();
        for org in by_org.keys() {
            sqlx::query(
                "INSERT INTO chain_heads (org_id, sequence, hash) VALUES ($1, 0, $2) ON CONFLICT (org_id) DO NOTHING",
            )
            .bind(org)
            .bind(GENESIS_HASH)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE chain_heads SET sequence = sequence WHERE org_id = $1")
                .bind(org)
                .execute(&mut *tx)
                .await?;
            let head: (i64, String) =
                sqlx::query_as("SELECT sequence, hash FROM chain_heads WHERE org_id = $1")
                    .bind(org)
                    .fetch_one(&mut *tx)
                    .await?;
            heads.insert(org.clone(), head);
        }

        // Skip ids already stored (after the locks, so a concurrent append
        // of the same id is visible here).
        let ids: Vec<&String> = by_org.values().flatten().map(|(_, e)| &e.id).collect();
        let mut stored = HashSet::new();
        for chunk in ids.chunks(LOOKUP_CHUNK) {
            let mut sql = Sql {
                text: "SELECT id FROM events WHERE id IN (".into(),
                ..Default::default()
            };
            for (i, id) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.text.push_str(", ");
                }
                let p = sql.param(Param::Text((*id).clone()));
                sql.text.push_str(&p);
            }
            sql.text.push(')');
            for row in sql.query().fetch_all(&mut *tx).await? {
                stored.insert(row.try_get::<String, _>(0)?);
            }
        }

        let mut chained = Vec::new();
        for (org, events) in by_org {
            let (mut sequence, mut hash) = heads.remove(&org).unwrap_or((0, GENESIS_HASH.into()));
            let before = sequence;
            for (batch, mut event) in events {
                if stored.contains(&event.id) {
                    continue;
                }
                counts[batch] += 1;
                sequence += 1;
                event.sequence = sequence;
                event.previous_hash = hash;
                event.hash = event_hash(&event);
                hash = event.hash.clone();
                chained.push((org.clone(), event));
            }
            if sequence != before {
                sqlx::query("UPDATE chain_heads SET sequence = $1, hash = $2 WHERE org_id = $3")
                    .bind(sequence)
                    .bind(&hash)
                    .bind(&org)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        for chunk in chained.chunks(INSERT_CHUNK) {
            let mut sql = Sql {
                text: format!("INSERT INTO events ({COLUMNS}) VALUES "),
                ..Default::default()
            };
            for (i, (org, e)) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.text.push_str(", ");
                }
                let actor = e.actor.clone().unwrap_or_default();
                let values = [
                    Param::Text(e.id.clone()),
                    Param::Text(org.clone()),
                    Param::Int(e.sequence),
                    Param::Int(e.time.as_ref().map_or(0, timestamp_micros)),
                    Param::Text(actor.principal_id),
                    Param::Text(actor.kind),
                    Param::Text(actor.display_name),
                    Param::Text(actor.key_id),
                    Param::Text(e.action.clone()),
                    Param::Text(e.resource.clone()),
                    Param::Int(i64::from(e.outcome)),
                    Param::Text(e.error_code.clone()),
                    Param::Text(e.source_service.clone()),
                    Param::Text(e.trace_id.clone()),
                    Param::Text(e.details_json.clone()),
                    Param::Text(e.previous_hash.clone()),
                    Param::Text(e.hash.clone()),
                ];
                debug_assert_eq!(values.len(), COLUMN_COUNT);
                let placeholders: Vec<String> = values.into_iter().map(|v| sql.param(v)).collect();
                sql.text.push('(');
                sql.text.push_str(&placeholders.join(", "));
                sql.text.push(')');
            }
            sql.query().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(counts)
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
            let p = sql.param(Param::Text(filter.actor.clone()));
            sql.text.push_str(&format!(
                " AND sequence IN (SELECT sequence FROM events WHERE org_id = {org_p} AND actor_id = {p}{time_range} \
                 UNION ALL SELECT sequence FROM events WHERE org_id = {org_p} AND actor_name = {p}{time_range})"
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

    /// Where retention left the chain's start: the last deleted sequence
    /// and its hash.
    pub async fn checkpoint(&self, org: &str) -> Result<Option<(i64, String)>> {
        Ok(
            sqlx::query_as("SELECT sequence, hash FROM checkpoints WHERE org_id = $1")
                .bind(org)
                .fetch_optional(&self.db.pool)
                .await?,
        )
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
