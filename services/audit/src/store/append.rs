//! Appends: events of several requests chained onto their organizations'
//! heads in one transaction, through one connection the group committer
//! keeps ([`Appender`]); duplicates by id are skipped and actor names
//! recorded. The multi-row INSERT and its placeholders live here too.

use std::collections::{BTreeMap, HashSet};

use paddock_proto::audit::v1::AuditEvent;
use paddock_shared::audit::{GENESIS_HASH, event_hash};
use paddock_shared::db::Backend;
use paddock_shared::error::Result;
use paddock_shared::time::timestamp_micros;
use sqlx::AnyConnection;
use sqlx::{AssertSqlSafe, Executor, Row};

use super::{COLUMNS, Store};

const COLUMN_COUNT: usize = 17;
/// Rows per multi-row INSERT: 17 parameters each, 8,500 in all, below
/// SQLite's limit (32,766) and PostgreSQL's (65,535).
pub const INSERT_CHUNK: usize = 500;
/// Settings of the SQLite connection that appends. A group's index pages
/// stay in memory until its commit instead of spilling (the default cache
/// is 2 MiB), and the WAL is copied back into the database every 80 MiB
/// instead of every 4 MiB, so index pages that many commits rewrite are
/// copied once, and the WAL file is cut back to 64 MiB afterwards. Commits
/// stay durable: `synchronous=FULL` fsyncs the WAL at each one.
pub const SQLITE_APPEND_PRAGMAS: &str = "PRAGMA synchronous=FULL; PRAGMA cache_size=-65536; PRAGMA wal_autocheckpoint=20000; PRAGMA journal_size_limit=67108864";
/// Ids per duplicate lookup.
const LOOKUP_CHUNK: usize = 500;

/// An event ready to store: its organization id and the chained event.
pub struct Pending {
    pub org: String,
    pub event: AuditEvent,
    /// Appending it seals the chain: identity's `organization.delete`,
    /// appended by a service principal (see [`seals`]).
    pub seals: bool,
}

/// Whether `event`, appended by a service principal, seals its
/// organization's chain: identity's record of the organization's deletion.
pub fn seals(event: &AuditEvent) -> bool {
    event.action == "organization.delete"
        && event.source_service == "identity"
        && event.organization != paddock_shared::audit::PLATFORM_CHAIN
}

/// What one commit appended to one chain: the new events, oldest first
/// (only for chains somebody follows, see [`Appender::append`]), and the
/// chain's head after it.
#[derive(Debug, Clone, Default)]
pub struct ChainUpdate {
    pub events: Vec<AuditEvent>,
    pub head: i64,
}

/// The result of one append: how many events of each batch were new, the
/// names recorded, and the updates of the chains `follow` selected.
type Appended = (Vec<usize>, Vec<String>, Vec<(String, ChainUpdate)>);

/// The body of [`Store::append`], inside the caller's transaction `conn`.
pub(super) async fn append_in(
    conn: &mut AnyConnection,
    backend: Backend,
    batches: Vec<Vec<Pending>>,
    known_names: &HashSet<String>,
    follow: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Appended> {
    let mut counts = vec![0; batches.len()];
    let mut by_org: BTreeMap<String, Vec<(usize, AuditEvent)>> = BTreeMap::new();
    let mut seen = HashSet::new();
    // Event ids that seal their chain.
    let mut sealing = HashSet::new();
    for (batch, events) in batches.into_iter().enumerate() {
        for p in events {
            if seen.insert(p.event.id.clone()) {
                if p.seals {
                    sealing.insert(p.event.id.clone());
                }
                by_org.entry(p.org).or_default().push((batch, p.event));
            }
        }
    }
    drop(seen);
    // Lock heads in a fixed (sorted) order so appenders cannot deadlock.
    // The upsert takes the row lock (PostgreSQL) or the write lock
    // (SQLite) and returns the head it locked, in one statement.
    let mut heads = Vec::with_capacity(by_org.len());
    for org in by_org.keys() {
        let head: (i64, String) = sqlx::query_as(
            "INSERT INTO chain_heads (org_id, sequence, hash) VALUES ($1, 0, $2) \
             ON CONFLICT (org_id) DO UPDATE SET sequence = chain_heads.sequence \
             RETURNING sequence, hash",
        )
        .bind(org)
        .bind(GENESIS_HASH)
        .fetch_one(&mut *conn)
        .await?;
        heads.push(head);
    }

    // Skip ids already stored (after the locks, so a concurrent append
    // of the same id is visible here).
    let mut stored = HashSet::new();
    let ids: Vec<&str> = by_org
        .values()
        .flatten()
        .map(|(_, e)| e.id.as_str())
        .collect();
    for chunk in ids.chunks(LOOKUP_CHUNK) {
        let mut text = String::with_capacity(40 + chunk.len() * 7);
        text.push_str("SELECT id FROM events WHERE id IN (");
        push_placeholders(&mut text, backend, 1, chunk.len());
        text.push(')');
        let mut q = sqlx::query(AssertSqlSafe(text));
        for id in chunk {
            q = q.bind(*id);
        }
        for row in q.fetch_all(&mut *conn).await? {
            stored.insert(row.try_get::<String, _>(0)?);
        }
    }
    drop(ids);

    let mut chained: Vec<(usize, AuditEvent)> = Vec::new();
    let mut orgs = Vec::with_capacity(by_org.len());
    let mut updates = Vec::new();
    for ((org, events), (mut sequence, mut hash)) in by_org.into_iter().zip(heads) {
        let before = sequence;
        let org_index = orgs.len();
        let followed = follow(&org);
        let mut update = ChainUpdate::default();
        for (batch, mut event) in events {
            if stored.contains(&event.id) {
                continue;
            }
            counts[batch] += 1;
            sequence += 1;
            event.sequence = sequence;
            event.previous_hash = std::mem::take(&mut hash);
            event.hash = event_hash(&event);
            hash.clone_from(&event.hash);
            if followed {
                update.events.push(event.clone());
            }
            if sealing.contains(&event.id) {
                // The first seal counts; the chain goes on (later events
                // of the organization are still chained).
                sqlx::query(
                    "INSERT INTO sealed_chains (org_id, seal_time, event_id) VALUES ($1, $2, $3) \
                     ON CONFLICT (org_id) DO NOTHING",
                )
                .bind(&org)
                .bind(paddock_shared::time::now_micros())
                .bind(&event.id)
                .execute(&mut *conn)
                .await?;
            }
            chained.push((org_index, event));
        }
        if followed && sequence != before {
            update.head = sequence;
            updates.push((org.clone(), update));
        }
        if sequence != before {
            sqlx::query("UPDATE chain_heads SET sequence = $1, hash = $2 WHERE org_id = $3")
                .bind(sequence)
                .bind(&hash)
                .bind(&org)
                .execute(&mut *conn)
                .await?;
        }
        orgs.push(org);
    }
    // Names not known to be recorded yet (`actor_names`).
    let mut names = HashSet::new();
    for (org, e) in &chained {
        if let Some(a) = &e.actor
            && !a.display_name.is_empty()
        {
            let key = actor_name_key(&orgs[*org], &a.display_name, &a.principal_id);
            if !known_names.contains(&key) {
                names.insert(key);
            }
        }
    }
    let names: Vec<String> = names.into_iter().collect();
    for chunk in names.chunks(LOOKUP_CHUNK) {
        let mut text =
            String::from("INSERT INTO actor_names (org_id, actor_name, actor_id) VALUES ");
        for i in 0..chunk.len() {
            text.push_str(if i == 0 { "(" } else { ", (" });
            push_placeholders(&mut text, backend, i * 3 + 1, 3);
            text.push(')');
        }
        text.push_str(" ON CONFLICT DO NOTHING");
        let mut q = sqlx::query(AssertSqlSafe(text));
        for key in chunk {
            let mut parts = key.split('\0');
            for _ in 0..3 {
                q = q.bind(parts.next().unwrap_or_default());
            }
        }
        q.execute(&mut *conn).await?;
    }
    // Many rows per statement, moved (not copied) into the arguments;
    // full chunks share one SQL text, so one prepared statement.
    let mut events = chained.into_iter().peekable();
    while events.peek().is_some() {
        let chunk: Vec<(usize, AuditEvent)> = events.by_ref().take(INSERT_CHUNK).collect();
        let mut q = sqlx::query(AssertSqlSafe(insert_sql(backend, chunk.len())));
        for (org, e) in chunk {
            let actor = e.actor.unwrap_or_default();
            q = q
                .bind(e.id)
                .bind(orgs[org].as_str())
                .bind(e.sequence)
                .bind(e.time.as_ref().map_or(0, timestamp_micros))
                .bind(actor.principal_id)
                .bind(actor.kind)
                .bind(actor.display_name)
                .bind(actor.key_id)
                .bind(e.action)
                .bind(e.resource)
                .bind(i64::from(e.outcome))
                .bind(e.error_code)
                .bind(e.source_service)
                .bind(e.trace_id)
                .bind(e.details_json)
                .bind(e.previous_hash)
                .bind(e.hash);
        }
        q.execute(&mut *conn).await?;
    }
    Ok((counts, names, updates))
}

/// The key of a (organization, display name, principal id) triple in
/// `actor_names` and in an appender's cache of it. Ids, names and
/// organization ids hold no NUL (validated text).
fn actor_name_key(org: &str, name: &str, id: &str) -> String {
    let mut key = String::with_capacity(org.len() + name.len() + id.len() + 2);
    key.push_str(org);
    key.push('\0');
    key.push_str(name);
    key.push('\0');
    key.push_str(id);
    key
}

/// `n` parameters numbered from `first`: `$first, $first+1, ...` on
/// PostgreSQL, and anonymous `?` (bound in order) on SQLite, where sqlx
/// looks each numbered parameter's name up with a linear scan: quadratic
/// in the parameters of a statement, most of an append's CPU at 8,500.
pub fn push_placeholders(text: &mut String, backend: Backend, first: usize, n: usize) {
    use std::fmt::Write;
    for i in 0..n {
        if i > 0 {
            text.push_str(", ");
        }
        match backend {
            Backend::Sqlite => text.push('?'),
            Backend::Postgres => {
                let _ = write!(text, "${}", first + i);
            }
        }
    }
}

/// The INSERT of `rows` events; the text of a full chunk is built once.
fn insert_sql(backend: Backend, rows: usize) -> String {
    fn build(backend: Backend, rows: usize) -> String {
        let mut text = String::with_capacity(200 + rows * COLUMN_COUNT * 7);
        text.push_str("INSERT INTO events (");
        text.push_str(COLUMNS);
        text.push_str(") VALUES ");
        for r in 0..rows {
            text.push_str(if r == 0 { "(" } else { ", (" });
            push_placeholders(&mut text, backend, r * COLUMN_COUNT + 1, COLUMN_COUNT);
            text.push(')');
        }
        text
    }
    static FULL: [std::sync::OnceLock<String>; 2] =
        [std::sync::OnceLock::new(), std::sync::OnceLock::new()];
    if rows == INSERT_CHUNK {
        FULL[backend as usize]
            .get_or_init(|| build(backend, INSERT_CHUNK))
            .clone()
    } else {
        build(backend, rows)
    }
}

/// One connection appending; see [`Store::append`].
pub struct Appender {
    conn: sqlx::pool::PoolConnection<sqlx::Any>,
    backend: Backend,
    /// Keys of `actor_names` rows committed (by any appender), so the
    /// next groups skip them.
    known_names: HashSet<String>,
}

/// Most `actor_names` keys an appender remembers; past it the cache starts
/// over (the rows are upserted, so forgetting only costs a lookup).
const KNOWN_NAMES: usize = 100_000;

impl Appender {
    /// Stores the events of several requests (`batches`) not stored yet,
    /// chaining each onto its organization's head, in one transaction;
    /// returns how many of each batch were new (a duplicate id counts for
    /// the first batch that carries it).
    ///
    /// Callers serialize appends in this process; across replicas the
    /// upsert of each head row takes its row lock (PostgreSQL) or the
    /// database's write lock (SQLite) before the head is read, so two
    /// appenders never chain onto the same head.
    ///
    /// For the chains `follow` selects (those with open tails) it also
    /// returns what the commit appended, for the tails to pass on without
    /// reading it back.
    pub async fn append(
        &mut self,
        batches: Vec<Vec<Pending>>,
        follow: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<(Vec<usize>, Vec<(String, ChainUpdate)>)> {
        let mut tx = sqlx::Connection::begin(&mut *self.conn).await?;
        let (counts, names, updates) =
            append_in(&mut tx, self.backend, batches, &self.known_names, follow).await?;
        tx.commit().await?;
        paddock_shared::metrics::appended(counts.iter().sum::<usize>() as u64);
        if self.known_names.len() + names.len() > KNOWN_NAMES {
            self.known_names.clear();
        }
        self.known_names.extend(names);
        Ok((counts, updates))
    }
}

impl Store {
    /// A connection for a run of appends (the group committer keeps one).
    pub async fn appender(&self) -> Result<Appender> {
        let mut conn = self.db.pool.acquire().await?;
        if self.db.backend == Backend::Sqlite {
            conn.execute(SQLITE_APPEND_PRAGMAS).await?;
        }
        Ok(Appender {
            conn,
            backend: self.db.backend,
            known_names: HashSet::new(),
        })
    }
}
