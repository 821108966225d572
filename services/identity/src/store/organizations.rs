//! The `organizations` table and the tombstones of deleted ones
//! (`deleted_organizations`).

use sqlx::{Any, AnyConnection, Executor};

const COLUMNS: &str =
    "id, display_name, max_key_lifetime_secs, allow_non_expiring_keys, create_time";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrgRow {
    pub id: String,
    pub display_name: String,
    pub max_key_lifetime_secs: i64,
    /// 0 or 1.
    pub allow_non_expiring_keys: i64,
    pub create_time: i64,
}

/// The settings that govern a new key's lifetime.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeySettings {
    pub max_key_lifetime_secs: i64,
    /// 0 or 1.
    pub allow_non_expiring_keys: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TombstoneRow {
    pub id: String,
    pub delete_time: i64,
}

/// Whether `id` belonged to an organization that was deleted.
pub async fn is_tombstoned<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
) -> sqlx::Result<bool> {
    let row: Option<i64> =
        sqlx::query_scalar("SELECT delete_time FROM deleted_organizations WHERE id = $1")
            .bind(id)
            .fetch_optional(db)
            .await?;
    Ok(row.is_some())
}

/// Inserts an organization that allows no non-expiring keys.
pub async fn insert<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
    display_name: &str,
    max_key_lifetime_secs: i64,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO organizations (id, display_name, max_key_lifetime_secs, allow_non_expiring_keys, create_time) VALUES ($1, $2, $3, 0, $4)")
        .bind(id)
        .bind(display_name)
        .bind(max_key_lifetime_secs)
        .bind(now)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn get<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
) -> sqlx::Result<Option<OrgRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM organizations WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// One page of every organization, by id after `after`.
pub async fn list<'e>(
    db: impl Executor<'e, Database = Any>,
    after: &str,
    limit: i64,
) -> sqlx::Result<Vec<OrgRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM organizations WHERE id > $1 ORDER BY id LIMIT $2"
    )))
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}

pub async fn key_settings<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
) -> sqlx::Result<Option<KeySettings>> {
    sqlx::query_as(
        "SELECT max_key_lifetime_secs, allow_non_expiring_keys FROM organizations WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

pub async fn max_key_lifetime_secs<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar("SELECT max_key_lifetime_secs FROM organizations WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}

pub async fn set_display_name<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
    display_name: &str,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE organizations SET display_name = $1 WHERE id = $2")
        .bind(display_name)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn set_max_key_lifetime_secs<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
    secs: i64,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE organizations SET max_key_lifetime_secs = $1 WHERE id = $2")
        .bind(secs)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn set_allow_non_expiring_keys<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
    allow: bool,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE organizations SET allow_non_expiring_keys = $1 WHERE id = $2")
        .bind(i64::from(allow))
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// Deletes the organization's rows in every table, children first so the
/// delete does not depend on cascade support. Returns whether the
/// organization existed.
pub async fn delete(tx: &mut AnyConnection, id: &str) -> sqlx::Result<bool> {
    for table in [
        "api_keys",
        "invites",
        "credentials",
        "projects",
        "agents",
        "members",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE org_id = $1"
        )))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    let done = sqlx::query("DELETE FROM organizations WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(done.rows_affected() != 0)
}

pub async fn insert_tombstone<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO deleted_organizations (id, delete_time) VALUES ($1, $2)")
        .bind(id)
        .bind(now)
        .execute(db)
        .await?;
    Ok(())
}

/// One page of tombstones, by id after `after`.
pub async fn list_tombstones<'e>(
    db: impl Executor<'e, Database = Any>,
    after: &str,
    limit: i64,
) -> sqlx::Result<Vec<TombstoneRow>> {
    sqlx::query_as(
        "SELECT id, delete_time FROM deleted_organizations WHERE id > $1 ORDER BY id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}
