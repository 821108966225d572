//! The `api_keys` table: API keys and sandbox session tokens (a key with a
//! `sandbox`). Only the secret's hash is stored; `scope` is comma-joined.

use sqlx::{Any, AnyConnection, Executor};

const COLUMNS: &str = "id, org_id, owner_id, display_name, role, scope, expire_time, created_by, create_time, last_used_time, revoke_time, sandbox";

/// A key without its secret hash.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyRow {
    pub id: String,
    pub org_id: String,
    /// A member's (`m…`) or agent's (`a…`) principal id.
    pub owner_id: String,
    pub display_name: String,
    /// The key's own role; empty: the owner's.
    pub role: String,
    /// Comma-joined scope entries.
    pub scope: String,
    pub expire_time: Option<i64>,
    pub created_by: String,
    pub create_time: i64,
    pub last_used_time: Option<i64>,
    pub revoke_time: Option<i64>,
    /// The sandbox of a session token.
    pub sandbox: Option<String>,
}

/// What authenticating a key needs: the key, and its owner's display name
/// and role (both None when the owner no longer exists).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyOwnerRow {
    pub secret_hash: String,
    pub org_id: String,
    pub owner_id: String,
    pub role: String,
    pub scope: String,
    pub expire_time: Option<i64>,
    pub revoke_time: Option<i64>,
    pub owner_display_name: Option<String>,
    pub owner_role: Option<String>,
}

pub async fn insert<'e>(
    db: impl Executor<'e, Database = Any>,
    row: &KeyRow,
    secret_hash: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO api_keys (id, org_id, owner_id, display_name, secret_hash, role, scope, expire_time, created_by, create_time, sandbox) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&row.id)
    .bind(&row.org_id)
    .bind(&row.owner_id)
    .bind(&row.display_name)
    .bind(secret_hash)
    .bind(&row.role)
    .bind(&row.scope)
    .bind(row.expire_time)
    .bind(&row.created_by)
    .bind(row.create_time)
    .bind(row.sandbox.as_deref())
    .execute(db)
    .await?;
    Ok(())
}

/// Which keys a listing shows.
pub struct ListFilter<'a> {
    /// Revoked and expired keys too.
    pub show_inactive: bool,
    /// Every owner's keys; else only `owner_id`'s.
    pub all_owners: bool,
    pub owner_id: &'a str,
    /// Keys expiring at or before this are expired.
    pub now: i64,
}

/// One page of an organization's keys, by id after `after`.
pub async fn list<'e>(
    db: impl Executor<'e, Database = Any>,
    org: &str,
    after: &str,
    limit: i64,
    filter: ListFilter<'_>,
) -> sqlx::Result<Vec<KeyRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM api_keys WHERE org_id = $1 AND id > $2 \
         AND ($4 = 1 OR (revoke_time IS NULL AND (expire_time IS NULL OR expire_time > $5))) \
         AND ($6 = 1 OR owner_id = $7) ORDER BY id LIMIT $3"
    )))
    .bind(org)
    .bind(after)
    .bind(limit)
    .bind(i64::from(filter.show_inactive))
    .bind(filter.now)
    .bind(i64::from(filter.all_owners))
    .bind(filter.owner_id)
    .fetch_all(db)
    .await
}

pub async fn get<'e>(
    db: impl Executor<'e, Database = Any>,
    org: &str,
    id: &str,
) -> sqlx::Result<Option<KeyRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM api_keys WHERE id = $1 AND org_id = $2"
    )))
    .bind(id)
    .bind(org)
    .fetch_optional(db)
    .await
}

/// The key `id` of any organization, with its owner, for authentication.
pub async fn for_authentication<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
) -> sqlx::Result<Option<KeyOwnerRow>> {
    sqlx::query_as(
        "SELECT k.secret_hash, k.org_id, k.owner_id, k.role, k.scope, k.expire_time, k.revoke_time, \
         COALESCE(m.email, a.agent_id) AS owner_display_name, COALESCE(m.role, a.role) AS owner_role \
         FROM api_keys k LEFT JOIN members m ON m.id = k.owner_id LEFT JOIN agents a ON a.id = k.owner_id \
         WHERE k.id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Revokes the key unless it is revoked already.
pub async fn revoke<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE api_keys SET revoke_time = $1 WHERE id = $2 AND revoke_time IS NULL")
        .bind(now)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// Sets a rotated key's revocation and expiry, unless it is revoked
/// already. Returns whether it was not.
pub async fn retire<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
    revoke_time: Option<i64>,
    expire_time: Option<i64>,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE api_keys SET revoke_time = $1, expire_time = $2 WHERE id = $3 AND revoke_time IS NULL",
    )
    .bind(revoke_time)
    .bind(expire_time)
    .bind(id)
    .execute(db)
    .await?;
    Ok(done.rows_affected() != 0)
}

/// Revokes the unrevoked keys that `created_by` minted in `org`; returns
/// their ids.
pub async fn revoke_created_by<'e>(
    db: impl Executor<'e, Database = Any>,
    org: &str,
    created_by: &str,
    now: i64,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "UPDATE api_keys SET revoke_time = $1 WHERE org_id = $2 AND created_by = $3 AND revoke_time IS NULL RETURNING id",
    )
    .bind(now)
    .bind(org)
    .bind(created_by)
    .fetch_all(db)
    .await
}

/// Revokes the unrevoked session tokens of `sandbox`; returns their ids.
pub async fn revoke_sandbox<'e>(
    db: impl Executor<'e, Database = Any>,
    org: &str,
    sandbox: &str,
    now: i64,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "UPDATE api_keys SET revoke_time = $1 WHERE org_id = $2 AND sandbox = $3 AND revoke_time IS NULL RETURNING id",
    )
    .bind(now)
    .bind(org)
    .bind(sandbox)
    .fetch_all(db)
    .await
}

pub async fn delete_owned_by<'e>(
    db: impl Executor<'e, Database = Any>,
    owner_id: &str,
) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM api_keys WHERE owner_id = $1")
        .bind(owner_id)
        .execute(db)
        .await?;
    Ok(())
}

/// Records when keys were last used, in the caller's transaction.
pub async fn set_last_used(
    tx: &mut AnyConnection,
    times: impl IntoIterator<Item = (&String, &i64)>,
) -> sqlx::Result<()> {
    for (id, at) in times {
        sqlx::query("UPDATE api_keys SET last_used_time = $1 WHERE id = $2")
            .bind(*at)
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}
