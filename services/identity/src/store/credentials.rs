//! The `credentials` table: stored credentials, each value sealed with the
//! credential key (hex in `sealed_value`, with the key's fingerprint).

use sqlx::{Any, Executor};

const COLUMNS: &str =
    "org_id, credential_id, kind, description, size_bytes, created_by, create_time, rotate_time";

/// A credential without its sealed value.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CredentialRow {
    pub org_id: String,
    pub credential_id: String,
    /// The `CredentialKind` name.
    pub kind: String,
    pub description: String,
    pub size_bytes: i64,
    pub created_by: String,
    pub create_time: i64,
    pub rotate_time: Option<i64>,
}

/// A credential with its sealed value.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SealedRow {
    #[sqlx(flatten)]
    pub credential: CredentialRow,
    pub key_fingerprint: String,
    /// Hex of the sealed bytes.
    pub sealed_value: String,
}

/// A sealed value as stored.
pub struct SealedValue<'a> {
    pub key_fingerprint: &'a str,
    pub hex: &'a str,
}

pub async fn insert<'e>(
    db: impl Executor<'e, Database = Any>,
    row: &CredentialRow,
    sealed: SealedValue<'_>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO credentials (org_id, credential_id, kind, description, size_bytes, key_fingerprint, sealed_value, created_by, create_time) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&row.org_id)
    .bind(&row.credential_id)
    .bind(&row.kind)
    .bind(&row.description)
    .bind(row.size_bytes)
    .bind(sealed.key_fingerprint)
    .bind(sealed.hex)
    .bind(&row.created_by)
    .bind(row.create_time)
    .execute(db)
    .await?;
    Ok(())
}

/// One page of an organization's credentials, by id after `after`.
pub async fn list<'e>(
    db: impl Executor<'e, Database = Any>,
    org: &str,
    after: &str,
    limit: i64,
) -> sqlx::Result<Vec<CredentialRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM credentials WHERE org_id = $1 AND credential_id > $2 ORDER BY credential_id LIMIT $3"
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
) -> sqlx::Result<Option<CredentialRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM credentials WHERE org_id = $1 AND credential_id = $2"
    )))
    .bind(org)
    .bind(id)
    .fetch_optional(db)
    .await
}

/// The credential with its sealed value.
pub async fn get_sealed<'e>(
    db: impl Executor<'e, Database = Any>,
    org: &str,
    id: &str,
) -> sqlx::Result<Option<SealedRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS}, key_fingerprint, sealed_value FROM credentials WHERE org_id = $1 AND credential_id = $2"
    )))
    .bind(org)
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Replaces the value; returns the updated row, None when there is none.
pub async fn rotate<'e>(
    db: impl Executor<'e, Database = Any>,
    org: &str,
    id: &str,
    size_bytes: i64,
    sealed: SealedValue<'_>,
    now: i64,
) -> sqlx::Result<Option<CredentialRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE credentials SET size_bytes = $1, key_fingerprint = $2, sealed_value = $3, rotate_time = $4 \
         WHERE org_id = $5 AND credential_id = $6 RETURNING {COLUMNS}"
    )))
    .bind(size_bytes)
    .bind(sealed.key_fingerprint)
    .bind(sealed.hex)
    .bind(now)
    .bind(org)
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Returns whether the credential existed.
pub async fn delete<'e>(
    db: impl Executor<'e, Database = Any>,
    org: &str,
    id: &str,
) -> sqlx::Result<bool> {
    let done = sqlx::query("DELETE FROM credentials WHERE org_id = $1 AND credential_id = $2")
        .bind(org)
        .bind(id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() != 0)
}

/// How many values are sealed with a key other than `fingerprint`.
pub async fn sealed_with_other_keys<'e>(
    db: impl Executor<'e, Database = Any>,
    fingerprint: &str,
) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM credentials WHERE key_fingerprint <> $1")
        .bind(fingerprint)
        .fetch_one(db)
        .await
}
