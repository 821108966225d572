//! The runner's records: sandboxes (with their resolved spec, state and
//! usage) and worker hosts. Times are unix microseconds.

use paddock_proto::identity::v1::Principal;
use paddock_proto::sandbox::v1::{EndReason, Sandbox, SandboxSpec, SandboxState};
use paddock_shared::error::{Error, Result};
use paddock_shared::names::child_name;
use paddock_shared::time::{opt_timestamp, timestamp};
use prost::Message;
use sqlx::{AnyConnection, AnyPool};

/// A sandbox row.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: String,
    pub org: String,
    pub agent: String,
    pub created_by: String,
    pub spec: SandboxSpec,
    pub state: SandboxState,
    pub end_reason: EndReason,
    pub exit_code: Option<i64>,
    pub message: String,
    pub worker: String,
    pub container_id: String,
    pub workspace: String,
    /// The user id the sandbox runs as.
    pub uid: u32,
    pub create_time: i64,
    pub start_time: Option<i64>,
    pub end_time: Option<i64>,
    pub expire_time: i64,
    pub cpu_seconds: f64,
    pub memory_peak: i64,
    pub execs: i64,
}

type Row = sqlx::any::AnyRow;

const COLUMNS: &str = "id, org_id, agent_id, created_by, spec, state, end_reason, exit_code, \
    message, worker_id, container_id, workspace, create_time, start_time, end_time, expire_time, \
    cpu_seconds, memory_peak, execs, uid";

/// Live states: the container exists or is about to.
pub const LIVE: &str = "(1, 2, 3, 4)";

impl Record {
    fn from_row(r: Row) -> Result<Self> {
        use sqlx::Row as _;
        let id: String = r.try_get(0)?;
        let spec_hex: String = r.try_get(4)?;
        let spec_bytes = paddock_shared::hex::decode(&spec_hex)
            .ok_or_else(|| Error::Internal(format!("sandbox {id} has an unreadable spec")))?;
        let spec = SandboxSpec::decode(spec_bytes.as_slice())
            .map_err(|e| Error::Internal(format!("sandbox {id} spec: {e}")))?;
        let state: i64 = r.try_get(5)?;
        let reason: i64 = r.try_get(6)?;
        Ok(Self {
            id,
            org: r.try_get(1)?,
            agent: r.try_get(2)?,
            created_by: r.try_get(3)?,
            spec,
            state: SandboxState::try_from(state as i32).unwrap_or(SandboxState::Unspecified),
            end_reason: EndReason::try_from(reason as i32).unwrap_or(EndReason::Unspecified),
            exit_code: r.try_get(7)?,
            message: r.try_get(8)?,
            worker: r.try_get(9)?,
            container_id: r.try_get(10)?,
            workspace: r.try_get(11)?,
            create_time: r.try_get(12)?,
            start_time: r.try_get(13)?,
            end_time: r.try_get(14)?,
            expire_time: r.try_get(15)?,
            cpu_seconds: r.try_get(16)?,
            memory_peak: r.try_get(17)?,
            execs: r.try_get(18)?,
            uid: u32::try_from(r.try_get::<i64, _>(19)?).unwrap_or(65534),
        })
    }

    pub fn name(&self) -> String {
        child_name(&self.org, "sandboxes", &self.id)
    }

    pub fn agent_name(&self) -> String {
        child_name(&self.org, "agents", &self.agent)
    }

    /// The disk bound the sandbox was admitted with, if any.
    pub fn disk_bytes(&self) -> Option<u64> {
        self.spec
            .resources
            .as_ref()
            .map(|r| r.disk_bytes)
            .filter(|b| *b > 0)
            .map(|b| b as u64)
    }

    pub fn is_live(&self) -> bool {
        matches!(
            self.state,
            SandboxState::Pending
                | SandboxState::Starting
                | SandboxState::Running
                | SandboxState::Stopping
        )
    }

    /// The principal id that makes this sandbox `caller`'s own: the
    /// calling agent's when it runs as that agent, else its creator's.
    pub fn owner_for<'a>(&'a self, caller: &'a Principal) -> &'a str {
        if caller.name == self.agent_name() {
            &caller.id
        } else {
            &self.created_by
        }
    }

    pub fn to_proto(&self) -> Sandbox {
        Sandbox {
            name: self.name(),
            spec: Some(self.spec.clone()),
            state: self.state as i32,
            end_reason: self.end_reason as i32,
            exit_code: self.exit_code.map(|c| c as i32),
            message: self.message.clone(),
            created_by: self.created_by.clone(),
            worker: self.worker.clone(),
            create_time: Some(timestamp(self.create_time)),
            start_time: opt_timestamp(self.start_time),
            end_time: opt_timestamp(self.end_time),
            expire_time: Some(timestamp(self.expire_time)),
        }
    }
}

pub async fn insert(conn: &mut AnyConnection, r: &Record) -> Result<()> {
    sqlx::query(
        "INSERT INTO sandboxes (id, org_id, agent_id, created_by, spec, state, worker_id, \
         workspace, create_time, expire_time, uid) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&r.id)
    .bind(&r.org)
    .bind(&r.agent)
    .bind(&r.created_by)
    .bind(paddock_shared::hex::encode(&r.spec.encode_to_vec()))
    .bind(r.state as i32 as i64)
    .bind(&r.worker)
    .bind(&r.workspace)
    .bind(r.create_time)
    .bind(r.expire_time)
    .bind(i64::from(r.uid))
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get(pool: &AnyPool, org: &str, id: &str) -> Result<Option<Record>> {
    let row: Option<Row> = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM sandboxes WHERE org_id = $1 AND id = $2"
    )))
    .bind(org)
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.map(Record::from_row).transpose()
}

pub async fn get_by_id(pool: &AnyPool, id: &str) -> Result<Option<Record>> {
    let row: Option<Row> = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM sandboxes WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.map(Record::from_row).transpose()
}

/// What a list returns.
pub struct ListFilter<'a> {
    pub org: &'a str,
    pub agent: Option<&'a str>,
    /// Only sandboxes created by this principal id, or running as this
    /// agent id.
    pub own: Option<(&'a str, &'a str)>,
    pub show_ended: bool,
    /// Keyset cursor: (create_time, id) of the last row of the previous page.
    pub after: Option<(i64, String)>,
    pub limit: i64,
}

/// Newest first.
pub async fn list(pool: &AnyPool, f: &ListFilter<'_>) -> Result<Vec<Record>> {
    let mut sql = format!("SELECT {COLUMNS} FROM sandboxes WHERE org_id = $1");
    let mut n = 1;
    let mut next = || {
        n += 1;
        n
    };
    let agent_p = f.agent.map(|_| next());
    let own_p = f.own.map(|_| (next(), next()));
    let after_p = f.after.as_ref().map(|_| (next(), next()));
    if let Some(p) = agent_p {
        sql.push_str(&format!(" AND agent_id = ${p}"));
    }
    if let Some((p, a)) = own_p {
        sql.push_str(&format!(" AND (created_by = ${p} OR agent_id = ${a})"));
    }
    if !f.show_ended {
        sql.push_str(&format!(" AND state IN {LIVE}"));
    }
    if let Some((t, i)) = after_p {
        sql.push_str(&format!(
            " AND (create_time < ${t} OR (create_time = ${t} AND id < ${i}))"
        ));
    }
    sql.push_str(&format!(
        " ORDER BY create_time DESC, id DESC LIMIT {}",
        f.limit
    ));
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(f.org);
    if let Some(a) = f.agent {
        q = q.bind(a);
    }
    if let Some((p, a)) = f.own {
        q = q.bind(p).bind(a);
    }
    if let Some((t, i)) = &f.after {
        q = q.bind(*t).bind(i.clone());
    }
    q.fetch_all(pool)
        .await?
        .into_iter()
        .map(Record::from_row)
        .collect()
}

/// Live sandboxes of this worker.
pub async fn live_on_worker(pool: &AnyPool, worker: &str) -> Result<Vec<Record>> {
    let rows: Vec<Row> = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM sandboxes WHERE worker_id = $1 AND state IN {LIVE}"
    )))
    .bind(worker)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(Record::from_row).collect()
}

/// Every sandbox of `org` on this worker, live or ended.
pub async fn of_org_on_worker(pool: &AnyPool, org: &str, worker: &str) -> Result<Vec<Record>> {
    let rows: Vec<Row> = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM sandboxes WHERE org_id = $1 AND worker_id = $2"
    )))
    .bind(org)
    .bind(worker)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(Record::from_row).collect()
}

/// Live sandboxes of the organization and of one of its agents.
pub async fn count_live(conn: &mut AnyConnection, org: &str, agent: &str) -> Result<(i64, i64)> {
    let (in_org, of_agent): (i64, Option<i64>) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*), SUM(CASE WHEN agent_id = $2 THEN 1 ELSE 0 END) FROM sandboxes \
         WHERE org_id = $1 AND state IN {LIVE}"
    )))
    .bind(org)
    .bind(agent)
    .fetch_one(conn)
    .await?;
    Ok((in_org, of_agent.unwrap_or(0)))
}

pub async fn mark_running(
    conn: &mut AnyConnection,
    id: &str,
    container_id: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE sandboxes SET state = $1, container_id = $2, start_time = $3 \
         WHERE id = $4 AND state IN (1, 2)",
    )
    .bind(SandboxState::Running as i32 as i64)
    .bind(container_id)
    .bind(now)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Moves a live sandbox to STOPPING with the reason it will end for.
/// `message` says why, for people. Returns false when it was not live (or
/// already stopping).
pub async fn mark_stopping(
    pool: &AnyPool,
    id: &str,
    reason: EndReason,
    message: &str,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE sandboxes SET state = $1, end_reason = $2, message = $3 \
         WHERE id = $4 AND state IN (1, 2, 3)",
    )
    .bind(SandboxState::Stopping as i32 as i64)
    .bind(reason as i32 as i64)
    .bind(message)
    .bind(id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The final state. Returns false when another path got there first.
pub struct Ending<'a> {
    pub state: SandboxState,
    pub reason: EndReason,
    pub exit_code: Option<i64>,
    pub message: &'a str,
    pub now: i64,
}

pub async fn mark_ended(conn: &mut AnyConnection, id: &str, e: &Ending<'_>) -> Result<bool> {
    let done = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE sandboxes SET state = $1, end_reason = $2, exit_code = $3, message = $4, \
         end_time = $5 WHERE id = $6 AND state IN {LIVE}"
    )))
    .bind(e.state as i32 as i64)
    .bind(e.reason as i32 as i64)
    .bind(e.exit_code)
    .bind(e.message)
    .bind(e.now)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn record_usage(pool: &AnyPool, id: &str, cpu: f64, memory: i64) -> Result<()> {
    sqlx::query(
        "UPDATE sandboxes SET cpu_seconds = CASE WHEN cpu_seconds > $1 THEN cpu_seconds ELSE $1 END, \
         memory_peak = CASE WHEN memory_peak > $2 THEN memory_peak ELSE $2 END WHERE id = $3",
    )
    .bind(cpu)
    .bind(memory)
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn count_exec(pool: &AnyPool, id: &str) -> Result<()> {
    sqlx::query("UPDATE sandboxes SET execs = execs + 1 WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn delete(conn: &mut AnyConnection, id: &str) -> Result<()> {
    sqlx::query("DELETE FROM sandboxes WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Registers (or re-registers) this worker host.
pub async fn register_worker(
    pool: &AnyPool,
    id: &str,
    hostname: &str,
    cpus: i64,
    memory: i64,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO worker_hosts (id, hostname, cpus, memory_bytes, started_at, heartbeat_at) \
         VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (id) DO UPDATE SET hostname = $2, \
         cpus = $3, memory_bytes = $4, started_at = $5, heartbeat_at = $5",
    )
    .bind(id)
    .bind(hostname)
    .bind(cpus)
    .bind(memory)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn heartbeat(pool: &AnyPool, id: &str, now: i64) -> Result<()> {
    sqlx::query("UPDATE worker_hosts SET heartbeat_at = $1 WHERE id = $2")
        .bind(now)
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// This installation's id, made on first use and kept in the database
/// (several runners sharing one PostgreSQL database agree on it).
pub async fn installation_id(pool: &AnyPool) -> Result<String> {
    let fresh = format!("i{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    sqlx::query("INSERT INTO installation (singleton, id) VALUES (1, $1) ON CONFLICT (singleton) DO NOTHING")
        .bind(&fresh)
        .execute(pool)
        .await?;
    let id: String = sqlx::query_scalar("SELECT id FROM installation WHERE singleton = 1")
        .fetch_one(pool)
        .await?;
    Ok(id)
}

/// This worker's sandboxes by state, for the metrics.
pub async fn count_by_state(pool: &AnyPool, worker: &str) -> Result<Vec<(SandboxState, i64)>> {
    let rows: Vec<(i64, i64)> =
        sqlx::query_as("SELECT state, COUNT(*) FROM sandboxes WHERE worker_id = $1 GROUP BY state")
            .bind(worker)
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(state, n)| {
            let state = SandboxState::try_from(state as i32).unwrap_or(SandboxState::Unspecified);
            (state, n)
        })
        .collect())
}
