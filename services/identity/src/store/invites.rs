//! The `invites` table: invite codes (only the code's hash is stored).

use sqlx::{Any, Executor};

const COLUMNS: &str =
    "id, org_id, email, role, created_by, create_time, expire_time, accept_time, revoke_time";

/// An invite without its code's hash.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InviteRow {
    pub id: String,
    pub org_id: String,
    pub email: String,
    pub role: String,
    /// The inviter's resource name.
    pub created_by: String,
    pub create_time: i64,
    pub expire_time: i64,
    pub accept_time: Option<i64>,
    pub revoke_time: Option<i64>,
}

/// What redeeming a code checks.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CodeRow {
    pub org_id: String,
    pub code_hash: String,
    pub email: String,
    pub role: String,
    pub created_by: String,
    pub expire_time: i64,
    pub accept_time: Option<i64>,
    pub revoke_time: Option<i64>,
}

/// A pending invite's id and the role it grants.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingRow {
    pub id: String,
    pub role: String,
}

pub async fn insert<'e>(
    db: impl Executor<'e, Database = Any>,
    row: &InviteRow,
    code_hash: &str,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO invites (id, org_id, code_hash, email, role, created_by, create_time, expire_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
        .bind(&row.id)
        .bind(&row.org_id)
        .bind(code_hash)
        .bind(&row.email)
        .bind(&row.role)
        .bind(&row.created_by)
        .bind(row.create_time)
        .bind(row.expire_time)
        .execute(db)
        .await?;
    Ok(())
}

/// The pending invites `inviter` made in `org`.
pub async fn pending_by<'e>(
    db: impl Executor<'e, Database = Any>,
    org: &str,
    inviter: &str,
    now: i64,
) -> sqlx::Result<Vec<PendingRow>> {
    sqlx::query_as(
        "SELECT id, role FROM invites WHERE org_id = $1 AND created_by = $2 \
         AND accept_time IS NULL AND revoke_time IS NULL AND expire_time > $3",
    )
    .bind(org)
    .bind(inviter)
    .bind(now)
    .fetch_all(db)
    .await
}

/// Revokes the invite unless it is revoked already (accepted or not).
pub async fn revoke_unrevoked<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE invites SET revoke_time = $1 WHERE id = $2 AND revoke_time IS NULL")
        .bind(now)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// Revokes the invite if it is still pending; returns whether it was.
pub async fn revoke_pending<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
    now: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE invites SET revoke_time = $1 WHERE id = $2 AND accept_time IS NULL AND revoke_time IS NULL",
    )
    .bind(now)
    .bind(id)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The invite a code names, of any organization.
pub async fn by_code_id<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
) -> sqlx::Result<Option<CodeRow>> {
    sqlx::query_as(
        "SELECT org_id, code_hash, email, role, created_by, expire_time, accept_time, revoke_time FROM invites WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Marks the invite accepted if it is still pending and unexpired at
/// `now`; returns whether this call did (only one caller ever does).
pub async fn claim<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
    now: i64,
) -> sqlx::Result<bool> {
    let claimed = sqlx::query(
        "UPDATE invites SET accept_time = $1 WHERE id = $2 AND accept_time IS NULL AND revoke_time IS NULL AND expire_time > $1",
    )
    .bind(now)
    .bind(id)
    .execute(db)
    .await?;
    Ok(claimed.rows_affected() == 1)
}

/// One page of an organization's invites, by id after `after`; pending
/// ones only unless `show_inactive`.
pub async fn list<'e>(
    db: impl Executor<'e, Database = Any>,
    org: &str,
    after: &str,
    limit: i64,
    show_inactive: bool,
    now: i64,
) -> sqlx::Result<Vec<InviteRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM invites WHERE org_id = $1 AND id > $2 \
         AND ($4 = 1 OR (accept_time IS NULL AND revoke_time IS NULL AND expire_time > $5)) \
         ORDER BY id LIMIT $3"
    )))
    .bind(org)
    .bind(after)
    .bind(limit)
    .bind(i64::from(show_inactive))
    .bind(now)
    .fetch_all(db)
    .await
}

pub async fn get<'e>(
    db: impl Executor<'e, Database = Any>,
    org: &str,
    id: &str,
) -> sqlx::Result<Option<InviteRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM invites WHERE id = $1 AND org_id = $2"
    )))
    .bind(id)
    .bind(org)
    .fetch_optional(db)
    .await
}
