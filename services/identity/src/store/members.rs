//! The `members` table: the people of an organization, by email.

use sqlx::{Any, Executor};

const COLUMNS: &str = "id, org_id, email, role, create_time";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MemberRow {
    pub id: String,
    pub org_id: String,
    pub email: String,
    pub role: String,
    pub create_time: i64,
}

pub async fn insert<'e>(
    db: impl Executor<'e, Database = Any>,
    row: &MemberRow,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO members (id, org_id, email, role, create_time) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&row.id)
    .bind(&row.org_id)
    .bind(&row.email)
    .bind(&row.role)
    .bind(row.create_time)
    .execute(db)
    .await?;
    Ok(())
}

/// One page of an organization's members, by id after `after`; only the
/// one with `email` when given.
pub async fn list<'e>(
    db: impl Executor<'e, Database = Any>,
    org: &str,
    after: &str,
    email: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<MemberRow>> {
    match email {
        None => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM members WHERE org_id = $1 AND id > $2 ORDER BY id LIMIT $3"
            )))
            .bind(org)
            .bind(after)
            .bind(limit)
            .fetch_all(db)
            .await
        }
        Some(email) => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM members WHERE org_id = $1 AND id > $2 AND email = $3 ORDER BY id LIMIT $4"
            )))
            .bind(org)
            .bind(after)
            .bind(email)
            .bind(limit)
            .fetch_all(db)
            .await
        }
    }
}

pub async fn get<'e>(
    db: impl Executor<'e, Database = Any>,
    org: &str,
    id: &str,
) -> sqlx::Result<Option<MemberRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM members WHERE id = $1 AND org_id = $2"
    )))
    .bind(id)
    .bind(org)
    .fetch_optional(db)
    .await
}

/// A member by id alone (ids are unique across organizations).
pub async fn by_id<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
) -> sqlx::Result<Option<MemberRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM members WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(db)
    .await
}

pub async fn role<'e>(
    db: impl Executor<'e, Database = Any>,
    org: &str,
    id: &str,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT role FROM members WHERE id = $1 AND org_id = $2")
        .bind(id)
        .bind(org)
        .fetch_optional(db)
        .await
}

pub async fn email_taken<'e>(
    db: impl Executor<'e, Database = Any>,
    org: &str,
    email: &str,
) -> sqlx::Result<bool> {
    let row: Option<String> =
        sqlx::query_scalar("SELECT id FROM members WHERE org_id = $1 AND email = $2")
            .bind(org)
            .bind(email)
            .fetch_optional(db)
            .await?;
    Ok(row.is_some())
}

/// How many owners the organization has besides `id`.
pub async fn other_owners<'e>(
    db: impl Executor<'e, Database = Any>,
    org: &str,
    id: &str,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM members WHERE org_id = $1 AND role = 'owner' AND id <> $2",
    )
    .bind(org)
    .bind(id)
    .fetch_one(db)
    .await
}

pub async fn set_role<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
    role: &str,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE members SET role = $1 WHERE id = $2")
        .bind(role)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn delete<'e>(db: impl Executor<'e, Database = Any>, id: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM members WHERE id = $1")
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}
