//! Where authz keeps agent policies and security settings: one row each,
//! the message as hex-encoded protobuf beside its name and update columns.
//! Writes are compare-and-set on `revision`, so two concurrent updates of
//! one policy never lose each other's fields.

use paddock_proto::authz::v1::{AgentPolicy, SecuritySettings};
use paddock_shared::db::Database;
use paddock_shared::error::{Error, Result};
use paddock_shared::hex;
use paddock_shared::time::timestamp;
use prost::Message;
use sqlx::{AnyConnection, AnyPool};

use paddock_policy::network;

/// A stored message and the revision it was read at.
pub struct Stored<T> {
    pub value: T,
    pub revision: i64,
}

/// Who wrote a row, and when.
pub struct Stamp<'a> {
    pub by: &'a str,
    pub at: i64,
}

fn decode<T: Message + Default>(what: &str, text: &str) -> Result<T> {
    hex::decode(text)
        .and_then(|b| T::decode(b.as_slice()).ok())
        .ok_or_else(|| Error::Internal(format!("the stored {what} does not decode")))
}

pub async fn agent_policy(
    pool: &AnyPool,
    org: &str,
    agent: &str,
) -> Result<Option<Stored<AgentPolicy>>> {
    let row: Option<(String, i64, i64, String)> = sqlx::query_as(
        "SELECT policy, revision, update_time, updated_by FROM agent_policies WHERE org_id = $1 AND agent_id = $2",
    )
    .bind(org)
    .bind(agent)
    .fetch_optional(pool)
    .await?;
    row.map(|(blob, revision, at, by)| {
        let mut value: AgentPolicy = decode("agent policy", &blob)?;
        value.update_time = Some(timestamp(at));
        value.updated_by = by;
        Ok(Stored { value, revision })
    })
    .transpose()
}

pub async fn security_settings(
    pool: &AnyPool,
    org: &str,
) -> Result<Option<Stored<SecuritySettings>>> {
    let row: Option<(String, i64, i64, String)> = sqlx::query_as(
        "SELECT settings, revision, update_time, updated_by FROM security_settings WHERE org_id = $1",
    )
    .bind(org)
    .fetch_optional(pool)
    .await?;
    row.map(|(blob, revision, at, by)| {
        let mut value: SecuritySettings = decode("security settings", &blob)?;
        value.update_time = Some(timestamp(at));
        value.updated_by = by;
        Ok(Stored { value, revision })
    })
    .transpose()
}

/// Writes `policy` if the stored revision is still `read_at` (`None`: no
/// row yet). Returns false when another update got there first.
pub async fn put_agent_policy(
    conn: &mut AnyConnection,
    org: &str,
    agent: &str,
    policy: &AgentPolicy,
    read_at: Option<i64>,
    stamp: &Stamp<'_>,
) -> Result<bool> {
    let blob = hex::encode(
        &AgentPolicy {
            name: String::new(),
            update_time: None,
            updated_by: String::new(),
            ..policy.clone()
        }
        .encode_to_vec(),
    );
    let mode = network::name(network::of(policy.network_mode));
    let done = match read_at {
        None => sqlx::query(
            "INSERT INTO agent_policies (org_id, agent_id, policy, network_mode, revision, update_time, updated_by) \
             VALUES ($1, $2, $3, $4, 1, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(org)
        .bind(agent)
        .bind(blob)
        .bind(mode)
        .bind(stamp.at)
        .bind(stamp.by)
        .execute(&mut *conn)
        .await?,
        Some(revision) => sqlx::query(
            "UPDATE agent_policies SET policy = $1, network_mode = $2, revision = $3, update_time = $4, updated_by = $5 \
             WHERE org_id = $6 AND agent_id = $7 AND revision = $8",
        )
        .bind(blob)
        .bind(mode)
        .bind(revision + 1)
        .bind(stamp.at)
        .bind(stamp.by)
        .bind(org)
        .bind(agent)
        .bind(revision)
        .execute(&mut *conn)
        .await?,
    };
    Ok(done.rows_affected() == 1)
}

/// Writes `settings` if the stored revision is still `read_at` (`None`: no
/// row yet). Returns false when another update got there first.
pub async fn put_security_settings(
    conn: &mut AnyConnection,
    org: &str,
    settings: &SecuritySettings,
    read_at: Option<i64>,
    stamp: &Stamp<'_>,
) -> Result<bool> {
    let blob = hex::encode(
        &SecuritySettings {
            name: String::new(),
            update_time: None,
            updated_by: String::new(),
            ..settings.clone()
        }
        .encode_to_vec(),
    );
    let done = match read_at {
        None => sqlx::query(
            "INSERT INTO security_settings (org_id, settings, revision, update_time, updated_by) \
             VALUES ($1, $2, 1, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(org)
        .bind(blob)
        .bind(stamp.at)
        .bind(stamp.by)
        .execute(&mut *conn)
        .await?,
        Some(revision) => sqlx::query(
            "UPDATE security_settings SET settings = $1, revision = $2, update_time = $3, updated_by = $4 \
             WHERE org_id = $5 AND revision = $6",
        )
        .bind(blob)
        .bind(revision + 1)
        .bind(stamp.at)
        .bind(stamp.by)
        .bind(org)
        .bind(revision)
        .execute(&mut *conn)
        .await?,
    };
    Ok(done.rows_affected() == 1)
}

/// Deletes every policy and the security settings of a deleted
/// organization (the org reaper calls it; deleting nothing is fine).
pub async fn purge_organization(db: &Database, org: &str) -> Result<()> {
    let mut tx = db.begin_write().await?;
    for table in ["agent_policies", "security_settings"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE org_id = $1"
        )))
        .bind(org)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
