//! Storage: an sqlx `AnyPool` over SQLite (WAL, under the data dir) or
//! PostgreSQL (when a URL is given, one schema per service), each service's
//! migrations run by sqlx's migrator, and write transactions traced as
//! `db.transaction` spans.
//!
//! Queries use `$1` placeholders, which both backends accept; times are
//! unix microseconds in BIGINT columns, so one set of SQL serves both.

use std::ops::{Deref, DerefMut};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::{Migrate as _, MigrateError, Migrator};
use sqlx::{Any, AnyConnection, AnyPool, AssertSqlSafe, Connection as _, Executor};
use tracing::Instrument as _;

/// Which backend a pool talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend `pool` connects to.
    pub fn of(pool: &AnyPool) -> Self {
        match pool.connect_options().database_url.scheme() {
            "sqlite" => Backend::Sqlite,
            _ => Backend::Postgres,
        }
    }

    /// OpenTelemetry's `db.system` name.
    fn system(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgresql",
        }
    }
}

/// A service's database.
#[derive(Clone, Debug)]
pub struct Database {
    pub pool: AnyPool,
    pub backend: Backend,
}

/// The table the pre-sqlx migrator recorded applied versions in.
const LEGACY_TABLE: &str = "schema_migrations";

/// sqlx's migrations table (its default name).
const SQLX_TABLE: &str = "_sqlx_migrations";

impl Database {
    /// A transaction that will write. On SQLite it takes the write lock up
    /// front (`BEGIN IMMEDIATE`): a deferred transaction that reads first
    /// cannot upgrade once another writer has committed (SQLITE_BUSY
    /// snapshot), which `busy_timeout` does not wait out.
    pub async fn begin_write(&self) -> Result<Transaction, sqlx::Error> {
        let begin = match self.backend {
            Backend::Sqlite => Some("BEGIN IMMEDIATE"),
            Backend::Postgres => None,
        };
        Transaction::start(&self.pool, self.backend, begin).await
    }

    /// A transaction with the backend's plain `BEGIN` (deferred on SQLite).
    pub async fn begin(&self) -> Result<Transaction, sqlx::Error> {
        Transaction::start(&self.pool, self.backend, None).await
    }

    /// Connects `service`'s database: PostgreSQL schema `paddock_{service}`
    /// when `url` is set, else `{data_dir}/{service}.db`. Runs `migrator`
    /// (`sqlx::migrate!("./migrations")` of the service).
    pub async fn connect(
        service: &str,
        data_dir: &Path,
        url: Option<&str>,
        migrator: &Migrator,
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
        db.migrate(migrator).await?;
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

    /// Applies the migrations not yet applied, each in its own transaction
    /// (sqlx's migrator; on PostgreSQL its table lives in the service's
    /// schema, which `search_path` selects).
    /// An empty migrator opens the database as it is (a tool reading a
    /// service's database), touching no migration table.
    async fn migrate(&self, migrator: &Migrator) -> Result<(), MigrateError> {
        if migrator.iter().next().is_none() {
            return Ok(());
        }
        let mut conn = self.pool.acquire().await?;
        // The advisory lock (PostgreSQL; a no-op on SQLite) keeps two
        // instances from adopting the old table at once.
        conn.lock().await?;
        let adopted = self.adopt_legacy(&mut conn, migrator).await;
        conn.unlock().await?;
        adopted?;
        migrator.run(&mut *conn).await
    }

    /// Databases made before sqlx's migrator recorded their versions in
    /// `schema_migrations`. On the first start with sqlx's migrator, those
    /// versions are entered in its table, with the checksums of today's
    /// files, so they are not run again. The old table stays, unread.
    async fn adopt_legacy(
        &self,
        conn: &mut AnyConnection,
        migrator: &Migrator,
    ) -> Result<(), MigrateError> {
        if !self.table_exists(conn, LEGACY_TABLE).await?
            || self.table_exists(conn, SQLX_TABLE).await?
        {
            return Ok(());
        }
        let applied: Vec<(i64,)> = sqlx::query_as("SELECT version FROM schema_migrations")
            .fetch_all(&mut *conn)
            .await?;
        let mut tx = conn.begin().await?;
        tx.ensure_migrations_table(SQLX_TABLE).await?;
        for migration in migrator
            .iter()
            .filter(|m| applied.iter().any(|(v,)| *v == m.version))
        {
            // Records it as applied without running its SQL.
            tx.skip(SQLX_TABLE, migration).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Whether `table` exists (on PostgreSQL: in the service's schema).
    async fn table_exists(
        &self,
        conn: &mut AnyConnection,
        table: &str,
    ) -> Result<bool, sqlx::Error> {
        let sql = match self.backend {
            Backend::Sqlite => {
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = $1"
            }
            Backend::Postgres => {
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = $1"
            }
        };
        let (n,): (i64,) = sqlx::query_as(sql).bind(table).fetch_one(conn).await?;
        Ok(n > 0)
    }
}

/// A database transaction traced as a `db.transaction` span (client kind),
/// which ends when the transaction commits, rolls back or is dropped (an
/// uncommitted drop rolls back, as sqlx's does). Derefs to the connection,
/// so queries run on `&mut *tx`.
pub struct Transaction {
    tx: sqlx::Transaction<'static, Any>,
    span: tracing::Span,
}

impl Transaction {
    /// A transaction on `pool` with the backend's plain `BEGIN`, for code
    /// that holds a pool rather than a [`Database`].
    pub async fn begin(pool: &AnyPool) -> Result<Self, sqlx::Error> {
        Self::start(pool, Backend::of(pool), None).await
    }

    async fn start(
        pool: &AnyPool,
        backend: Backend,
        statement: Option<&'static str>,
    ) -> Result<Self, sqlx::Error> {
        let span = tracing::info_span!(
            "db.transaction",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            db.system = backend.system(),
        );
        let begun = match statement {
            Some(statement) => pool.begin_with(statement).instrument(span.clone()).await,
            None => pool.begin().instrument(span.clone()).await,
        };
        match begun {
            Ok(tx) => Ok(Transaction { tx, span }),
            Err(e) => {
                failed(&span);
                Err(e)
            }
        }
    }

    /// Commits; the span ends with an error status if the commit fails.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        let Transaction { tx, span } = self;
        let done = tx.commit().instrument(span.clone()).await;
        if done.is_err() {
            failed(&span);
        }
        done
    }

    /// Rolls back; the span ends with an error status if that fails.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        let Transaction { tx, span } = self;
        let done = tx.rollback().instrument(span.clone()).await;
        if done.is_err() {
            failed(&span);
        }
        done
    }
}

fn failed(span: &tracing::Span) {
    span.record("otel.status_code", "ERROR");
}

impl Deref for Transaction {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        &self.tx
    }
}

impl DerefMut for Transaction {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction").finish_non_exhaustive()
    }
}

/// Creates `dir` (and its parents) if needed and makes it private to its
/// owner (0700): data dirs hold databases, keys and tokens.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// A migrator over `(version, SQL)` pairs, for tests of shared code that
/// has no migrations directory of its own.
#[cfg(test)]
pub(crate) fn test_migrator(sqls: &[(i64, &'static str)]) -> Migrator {
    use sqlx::SqlSafeStr as _;
    use sqlx::migrate::{Migration, MigrationType};
    Migrator::with_migrations(
        sqls.iter()
            .map(|(version, sql)| {
                Migration::new(
                    *version,
                    format!("m{version}").into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::{Context, SubscriberExt as _};

    use super::*;
    use crate::db::test_migrator as migrator;

    /// Data dirs are 0700 and database files 0600, even where the umask
    /// would make them readable to every user on the host.
    #[tokio::test]
    async fn data_is_private_to_its_owner() {
        let parent = tempfile::tempdir().expect("dir");
        let dir = parent.path().join("data");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let db = Database::connect(
            "probe",
            &dir,
            None,
            &migrator(&[(1, "CREATE TABLE t (x INTEGER)")]),
        )
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

    const FIRST: &str = "CREATE TABLE t (x INTEGER NOT NULL);\nCREATE INDEX t_x ON t (x);\n";
    const SECOND: &str = "ALTER TABLE t ADD COLUMN y TEXT;\n";

    /// Makes the schema the pre-sqlx migrator made: `FIRST` applied and
    /// recorded in `schema_migrations`, with a row written since.
    async fn old_database(db: &Database) {
        db.pool
            .execute("CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
            .await
            .expect("old table");
        db.pool.execute(FIRST).await.expect("first migration");
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES (1, 7)")
            .execute(&db.pool)
            .await
            .expect("record");
        sqlx::query("INSERT INTO t (x) VALUES (42)")
            .execute(&db.pool)
            .await
            .expect("row");
    }

    /// Opens a database made by the previous migrator with sqlx's: version
    /// 1 is adopted (not run again, which would fail on the existing
    /// table), version 2 runs, the data stays, and it opens again after.
    async fn an_old_database_opens(url: Option<&str>) {
        let dir = tempfile::tempdir().expect("dir");
        let service = format!("legacy{}", uuid::Uuid::new_v4().simple());
        // An empty migrator opens the database and touches no table.
        let old = Database::connect(&service, dir.path(), url, &migrator(&[]))
            .await
            .expect("connect");
        old_database(&old).await;
        old.pool.close().await;

        let migrations = migrator(&[(1, FIRST), (2, SECOND)]);
        for _ in 0..2 {
            let db = Database::connect(&service, dir.path(), url, &migrations)
                .await
                .expect("open the old database");
            let rows: Vec<(i64, Option<String>)> = sqlx::query_as("SELECT x, y FROM t")
                .fetch_all(&db.pool)
                .await
                .expect("rows");
            assert_eq!(rows, [(42, None)]);
            let applied: Vec<(i64,)> = sqlx::query_as(
                "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
            )
            .fetch_all(&db.pool)
            .await
            .expect("applied");
            assert_eq!(applied, [(1,), (2,)]);
            db.pool.close().await;
        }
    }

    #[tokio::test]
    async fn an_old_sqlite_database_opens() {
        an_old_database_opens(None).await;
    }

    /// Runs where the PostgreSQL tests run (`PADDOCK_TEST_DATABASE_URL`).
    #[tokio::test]
    async fn an_old_postgres_database_opens() {
        let Ok(server) = std::env::var("PADDOCK_TEST_DATABASE_URL") else {
            return;
        };
        // A database of its own, as the services' PostgreSQL tests have.
        install_default_drivers();
        let name = format!("paddock_legacy_{}", uuid::Uuid::new_v4().simple());
        let admin = AnyPool::connect(&server).await.expect("admin");
        admin
            .execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("create database");
        let (base, _) = server.rsplit_once('/').expect("a URL with a database");
        an_old_database_opens(Some(&format!("{base}/{name}"))).await;
        admin
            .execute(AssertSqlSafe(format!("DROP DATABASE {name}")))
            .await
            .expect("drop database");
        admin.close().await;
    }

    /// A changed migration file is refused, not silently skipped.
    #[tokio::test]
    async fn an_edited_migration_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let db = Database::connect("edit", dir.path(), None, &migrator(&[(1, FIRST)]))
            .await
            .expect("connect");
        db.pool.close().await;
        let edited = "CREATE TABLE t (x BIGINT NOT NULL);\n";
        let refused = Database::connect("edit", dir.path(), None, &migrator(&[(1, edited)])).await;
        assert!(
            matches!(
                refused,
                Err(sqlx::Error::Migrate(ref e)) if matches!(**e, MigrateError::VersionMismatch(1))
            ),
            "{refused:?}"
        );
    }

    /// The spans opened under it: name, `db.system`, `otel.status_code`.
    #[derive(Clone, Default)]
    struct Spans(Arc<Mutex<Vec<(String, String, String)>>>);

    #[derive(Default)]
    struct Fields(String, String);

    impl tracing::field::Visit for Fields {
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            match field.name() {
                "db.system" => self.0 = value.to_owned(),
                "otel.status_code" => self.1 = value.to_owned(),
                _ => {}
            }
        }
        fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
    }

    impl<S> tracing_subscriber::Layer<S> for Spans
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: Context<'_, S>,
        ) {
            let mut fields = Fields::default();
            attrs.record(&mut fields);
            let mut spans = self.0.lock().expect("spans");
            spans.push((attrs.metadata().name().to_owned(), fields.0, fields.1));
        }

        fn on_record(
            &self,
            id: &tracing::span::Id,
            values: &tracing::span::Record<'_>,
            ctx: Context<'_, S>,
        ) {
            let mut fields = Fields::default();
            values.record(&mut fields);
            let name = ctx.span(id).map(|s| s.name()).unwrap_or_default();
            let mut spans = self.0.lock().expect("spans");
            if let Some(span) = spans.iter_mut().rev().find(|s| s.0 == name) {
                span.2 = fields.1;
            }
        }
    }

    /// Every transaction is a `db.transaction` client span naming the
    /// database system; a failed commit marks it as an error.
    #[tokio::test]
    async fn transactions_are_spans() {
        let spans = Spans::default();
        let _guard =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
        let dir = tempfile::tempdir().expect("dir");
        // A deferred foreign key is checked at commit, so the commit fails.
        let db = Database::connect(
            "spans",
            dir.path(),
            None,
            &migrator(&[(
                1,
                "CREATE TABLE p (id INTEGER PRIMARY KEY);\n\
                 CREATE TABLE c (p INTEGER REFERENCES p (id) DEFERRABLE INITIALLY DEFERRED);\n",
            )]),
        )
        .await
        .expect("connect");
        spans.0.lock().expect("spans").clear();

        let mut tx = db.begin_write().await.expect("begin");
        sqlx::query("INSERT INTO p (id) VALUES (1)")
            .execute(&mut *tx)
            .await
            .expect("insert");
        tx.commit().await.expect("commit");
        let mut tx = db.begin().await.expect("begin");
        sqlx::query("INSERT INTO c (p) VALUES (2)")
            .execute(&mut *tx)
            .await
            .expect("insert");
        assert!(
            tx.commit().await.is_err(),
            "the deferred key fails the commit"
        );
        let tx = Transaction::begin(&db.pool).await.expect("begin");
        tx.rollback().await.expect("rollback");

        let seen: Vec<_> = spans
            .0
            .lock()
            .expect("spans")
            .iter()
            .filter(|s| s.0 == "db.transaction")
            .cloned()
            .collect();
        let span = |status: &str| {
            (
                "db.transaction".to_owned(),
                "sqlite".to_owned(),
                status.to_owned(),
            )
        };
        assert_eq!(seen, [span(""), span("ERROR"), span("")]);
        db.pool.close().await;
    }
}
