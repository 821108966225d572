//! Storage: an sqlx `AnyPool` over SQLite (WAL, under the data dir) or
//! PostgreSQL (when a URL is given, one schema per service), and a small
//! migrator that applies each service's embedded migrations in order.
//!
//! Queries use `$1` placeholders, which both backends accept; times are
//! unix microseconds in BIGINT columns, so one set of SQL serves both.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, AssertSqlSafe, Executor};

/// Which backend a pool talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A service's database.
#[derive(Clone, Debug)]
pub struct Database {
    pub pool: AnyPool,
    pub backend: Backend,
}

/// One migration: a version and its SQL (several statements allowed).
pub type Migration = (i64, &'static str);

impl Database {
    /// A transaction that will write. On SQLite it takes the write lock up
    /// front (`BEGIN IMMEDIATE`): a deferred transaction that reads first
    /// cannot upgrade once another writer has committed (SQLITE_BUSY
    /// snapshot), which `busy_timeout` does not wait out.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// Connects `service`'s database: PostgreSQL schema `paddock_{service}`
    /// when `url` is set, else `{data_dir}/{service}.db`. Runs migrations.
    pub async fn connect(
        service: &str,
        data_dir: &Path,
        url: Option<&str>,
        migrations: &[Migration],
    ) -> Result<Self, sqlx::Error> {
        install_default_drivers();
        let db = match url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let schema = format!("paddock_{service}");
                // Create the schema on a plain connection first.
                let admin = AnyPoolOptions::new()
                    .max_connections(1)
                    .connect(url)
                    .await?;
                admin
                    .execute(sqlx::raw_sql(AssertSqlSafe(format!(
                        "CREATE SCHEMA IF NOT EXISTS {schema}"
                    ))))
                    .await?;
                admin.close().await;
                let set_path = format!("SET search_path TO {schema}");
                let pool = AnyPoolOptions::new()
                    // The file is local: a ping per checkout only costs a thread hop.
                    .test_before_acquire(false)
                    // A ping before every checkout is a round trip per
                    // query; broken connections surface as errors instead.
                    .test_before_acquire(false)
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(5))
                    .after_connect(move |conn, _| {
                        let set_path = set_path.clone();
                        Box::pin(async move {
                            conn.execute(sqlx::raw_sql(AssertSqlSafe(set_path))).await?;
                            Ok(())
                        })
                    })
                    .connect(url)
                    .await?;
                Database {
                    pool,
                    backend: Backend::Postgres,
                }
            }
            Some(url) if url.starts_with("sqlite:") => Self::sqlite(url).await?,
            Some(other) => {
                return Err(sqlx::Error::Configuration(
                    format!(
                        "unsupported database URL scheme in {:?}",
                        other.split(':').next().unwrap_or("")
                    )
                    .into(),
                ));
            }
            None => {
                private_dir(data_dir)?;
                let path = data_dir.join(format!("{service}.db"));
                let db = Self::sqlite(&format!("sqlite://{}?mode=rwc", path.display())).await?;
                // Only the service's user reads its data (the WAL and shared
                // memory files hold rows too).
                for suffix in ["", "-wal", "-shm"] {
                    let file = data_dir.join(format!("{service}.db{suffix}"));
                    if file.exists() {
                        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
                    }
                }
                db
            }
        };
        db.migrate(migrations).await?;
        Ok(db)
    }

    async fn sqlite(url: &str) -> Result<Self, sqlx::Error> {
        let pool = AnyPoolOptions::new()
            // The file is local: a ping per checkout only costs a thread hop.
            .test_before_acquire(false)
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000; PRAGMA mmap_size=268435456;",
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        Ok(Database {
            pool,
            backend: Backend::Sqlite,
        })
    }

    /// Applies the migrations not yet applied, each in its own transaction.
    async fn migrate(&self, migrations: &[Migration]) -> Result<(), sqlx::Error> {
        self.pool
            .execute("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
            .await?;
        for (version, sql) in migrations {
            let mut tx = self.pool.begin().await?;
            let done: Option<(i64,)> =
                sqlx::query_as("SELECT version FROM schema_migrations WHERE version = $1")
                    .bind(*version)
                    .fetch_optional(&mut *tx)
                    .await?;
            if done.is_some() {
                continue;
            }
            tx.execute(sqlx::raw_sql(*sql)).await?;
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(*version)
                .bind(crate::time::now_micros())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Ok(())
    }
}

/// Creates `dir` (and its parents) if needed and makes it private to its
/// owner (0700): data dirs hold databases, keys and tokens.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Data dirs are 0700 and database files 0600, even where the umask
    /// would make them readable to every user on the host.
    #[tokio::test]
    async fn data_is_private_to_its_owner() {
        let parent = tempfile::tempdir().expect("dir");
        let dir = parent.path().join("data");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let db = Database::connect("probe", &dir, None, &[(1, "CREATE TABLE t (x INTEGER)")])
            .await
            .expect("connect");
        sqlx::query("INSERT INTO t (x) VALUES (1)")
            .execute(&db.pool)
            .await
            .expect("write");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("probe.db")), 0o600);
        db.pool.close().await;
    }
}
