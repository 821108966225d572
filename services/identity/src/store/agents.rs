//! The `agents` table: AI-agent identities. `id` is the principal id
//! (`a…`), `agent_id` the name the organization gave it.

use sqlx::{Any, Executor};

const COLUMNS: &str = "id, org_id, agent_id, description, role, created_by, create_time";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AgentRow {
    pub id: String,
    pub org_id: String,
    pub agent_id: String,
    pub description: String,
    pub role: String,
    pub created_by: String,
    pub create_time: i64,
}

pub async fn insert<'e>(db: impl Executor<'e, Database = Any>, row: &AgentRow) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO agents (id, org_id, agent_id, description, role, created_by, create_time) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(&row.id)
        .bind(&row.org_id)
        .bind(&row.agent_id)
        .bind(&row.description)
        .bind(&row.role)
        .bind(&row.created_by)
        .bind(row.create_time)
        .execute(db)
        .await?;
    Ok(())
}

/// One page of an organization's agents, by `agent_id` after `after`.
pub async fn list<'e>(
    db: impl Executor<'e, Database = Any>,
    org: &str,
    after: &str,
    limit: i64,
) -> sqlx::Result<Vec<AgentRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM agents WHERE org_id = $1 AND agent_id > $2 ORDER BY agent_id LIMIT $3"
    )))
    .bind(org)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// An agent by its name in the organization.
pub async fn get<'e>(
    db: impl Executor<'e, Database = Any>,
    org: &str,
    agent_id: &str,
) -> sqlx::Result<Option<AgentRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM agents WHERE org_id = $1 AND agent_id = $2"
    )))
    .bind(org)
    .bind(agent_id)
    .fetch_optional(db)
    .await
}

/// An agent by principal id (unique across organizations).
pub async fn by_id<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
) -> sqlx::Result<Option<AgentRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM agents WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// The role of the agent with principal id `id` in `org`.
pub async fn role_by_id<'e>(
    db: impl Executor<'e, Database = Any>,
    org: &str,
    id: &str,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT role FROM agents WHERE org_id = $1 AND id = $2")
        .bind(org)
        .bind(id)
        .fetch_optional(db)
        .await
}

pub async fn update<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
    description: &str,
    role: &str,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE agents SET description = $1, role = $2 WHERE id = $3")
        .bind(description)
        .bind(role)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn delete<'e>(db: impl Executor<'e, Database = Any>, id: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM agents WHERE id = $1")
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}
