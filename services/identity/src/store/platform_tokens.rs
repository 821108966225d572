//! The `platform_tokens` table: the hash of the one platform bootstrap
//! token.

use sqlx::{Any, AnyConnection, Executor};

pub async fn secret_hash<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT secret_hash FROM platform_tokens WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}

/// Makes `id` the only bootstrap token, in the caller's transaction.
pub async fn replace(
    tx: &mut AnyConnection,
    id: &str,
    secret_hash: &str,
    now: i64,
) -> sqlx::Result<()> {
    (&mut *tx).execute("DELETE FROM platform_tokens").await?;
    sqlx::query("INSERT INTO platform_tokens (id, secret_hash, create_time) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(secret_hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    Ok(())
}
