//! The `projects` table: an organization's projects, by `project_id`.

use sqlx::{Any, Executor};

const COLUMNS: &str =
    "org_id, project_id, display_name, description, created_by, create_time, update_time";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProjectRow {
    pub org_id: String,
    pub project_id: String,
    pub display_name: String,
    pub description: String,
    pub created_by: String,
    pub create_time: i64,
    pub update_time: i64,
}

pub async fn insert<'e>(
    db: impl Executor<'e, Database = Any>,
    row: &ProjectRow,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO projects (org_id, project_id, display_name, description, created_by, create_time, update_time) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(&row.org_id)
        .bind(&row.project_id)
        .bind(&row.display_name)
        .bind(&row.description)
        .bind(&row.created_by)
        .bind(row.create_time)
        .bind(row.update_time)
        .execute(db)
        .await?;
    Ok(())
}

/// One page of an organization's projects, by `project_id` after `after`.
pub async fn list<'e>(
    db: impl Executor<'e, Database = Any>,
    org: &str,
    after: &str,
    limit: i64,
) -> sqlx::Result<Vec<ProjectRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM projects WHERE org_id = $1 AND project_id > $2 ORDER BY project_id LIMIT $3"
    )))
    .bind(org)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}

pub async fn get<'e>(
    db: impl Executor<'e, Database = Any>,
    org: &str,
    id: &str,
) -> sqlx::Result<Option<ProjectRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM projects WHERE org_id = $1 AND project_id = $2"
    )))
    .bind(org)
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Writes the row's display name, description and update time.
pub async fn update<'e>(
    db: impl Executor<'e, Database = Any>,
    row: &ProjectRow,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE projects SET display_name = $1, description = $2, update_time = $3 WHERE org_id = $4 AND project_id = $5")
        .bind(&row.display_name)
        .bind(&row.description)
        .bind(row.update_time)
        .bind(&row.org_id)
        .bind(&row.project_id)
        .execute(db)
        .await?;
    Ok(())
}

/// Returns whether the project existed.
pub async fn delete<'e>(
    db: impl Executor<'e, Database = Any>,
    org: &str,
    id: &str,
) -> sqlx::Result<bool> {
    let done = sqlx::query("DELETE FROM projects WHERE org_id = $1 AND project_id = $2")
        .bind(org)
        .bind(id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() != 0)
}
