//! The audit service: `AppendEvents` from Paddock services into one hash
//! chain per organization, and `QueryEvents`, `TailEvents`, `VerifyChain`
//! and `ExportEvents` for callers holding `audit.read`, inside their own
//! organization only; `GetAuditSettings` / `UpdateAuditSettings` and the
//! retention job that enforces them.
#![forbid(unsafe_code)]
// Outside tests a failure is an answer, never a panic.

mod retention;
mod service;
mod store;
mod tail;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use paddock_proto::audit::v1::audit_service_server::AuditServiceServer;
use paddock_shared::auth::{
    self, Admission, BearerAuth, CachedAuthenticator, RemoteAuthz, RemoteIdentity,
    ServiceTokenFirst,
};
use paddock_shared::config::{self, CommonConfig, CommonFlags, ConfigError};
use paddock_shared::db::Database;
use paddock_shared::secret::Secret;
use paddock_shared::server::{self, ServerHandle};
use paddock_shared::streams::{Limits, Streams};
use serde::{Deserialize, Serialize};
use sqlx::migrate::Migrator;

use crate::service::Audit;

/// Audit's schema migrations: every file in `migrations/`, embedded at
/// build time and applied in version order by sqlx's migrator.
pub static MIGRATIONS: &Migrator = &sqlx::migrate!("./migrations");

pub use retention::RetentionRun;
/// Events per multi-row INSERT statement of an append.
pub use store::INSERT_CHUNK as INSERT_ROWS;
pub use store::{SQLITE_APPEND_PRAGMAS, push_placeholders};

/// Configuration of the audit service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub common: CommonConfig,
    /// How often the retention job deletes events older than each
    /// organization's retention period (it also runs at start).
    #[serde(with = "config::duration")]
    pub retention_interval: Duration,
    /// Audit tails (TailEvents streams) one caller may have open at once.
    pub max_tails_per_caller: usize,
    /// Audit tails one organization may have open at once.
    pub max_tails_per_org: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            common: CommonConfig::listening_on(SocketAddr::from(([127, 0, 0, 1], 7104))),
            retention_interval: Duration::from_secs(3600),
            max_tails_per_caller: Limits::default().per_principal,
            max_tails_per_org: Limits::default().per_organization,
        }
    }
}

/// The flags of `paddock-audit`.
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct Flags {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: CommonFlags,
    /// How often the retention job runs [default: 1h].
    #[arg(long, value_parser = config::duration_flag)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_interval: Option<String>,
    /// Audit tails one caller may have open at once [default: 16].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tails_per_caller: Option<usize>,
    /// Audit tails one organization may have open at once [default: 64].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tails_per_org: Option<usize>,
}

/// The variables audit reads besides [`config::COMMON_ENV`]; its own win
/// over `DATABASE_URL`.
pub const ENV: &[(&str, &str)] = &[
    ("DATABASE_URL", "database_url"),
    ("PADDOCK_AUDIT_LISTEN", "listen"),
    ("PADDOCK_AUDIT_DATABASE_URL", "database_url"),
    ("PADDOCK_AUDIT_RETENTION_INTERVAL", "retention_interval"),
    ("PADDOCK_AUDIT_MAX_TAILS_PER_CALLER", "max_tails_per_caller"),
    ("PADDOCK_AUDIT_MAX_TAILS_PER_ORG", "max_tails_per_org"),
];

impl Config {
    /// Defaults, then `file`, then the environment, then `flags`.
    pub fn load(file: Option<&Path>, flags: &Flags) -> Result<Self, ConfigError> {
        config::load(&Self::default(), file, &[config::COMMON_ENV, ENV], flags)
    }
}

pub type StartError = Box<dyn std::error::Error + Send + Sync>;

/// Starts the audit service; it calls identity and authz with
/// `service_token`.
pub async fn start(
    config: &Config,
    service_token: &Secret<String>,
) -> Result<ServerHandle, StartError> {
    let (listener, _) = server::bind(config.common.listen).await?;
    start_on(listener, config, service_token).await
}

/// Starts on a listener bound beforehand; `config.common.listen` is unused.
pub async fn start_on(
    listener: tokio::net::TcpListener,
    config: &Config,
    service_token: &Secret<String>,
) -> Result<ServerHandle, StartError> {
    let addr = listener.local_addr()?;
    let db = Database::connect(
        "audit",
        &config.common.data_dir,
        config.common.database_url.as_deref(),
        MIGRATIONS,
    )
    .await?;
    let identity = RemoteIdentity::new(auth::identity_client(
        &config.common.identity_endpoint,
        BearerAuth::new(service_token)?,
    )?);
    let authn = Arc::new(CachedAuthenticator::new(ServiceTokenFirst::new(
        service_token,
        identity,
    )));
    let watch = authn.inner().inner().watch(authn.cache());
    let authz = RemoteAuthz::new(auth::authz_client(
        &config.common.authz_endpoint,
        BearerAuth::new(service_token)?,
    )?);
    let (closing, closing_rx) = tokio::sync::watch::channel(false);
    let retention = retention::spawn(
        store::Store { db: db.clone() },
        config.retention_interval.max(Duration::from_millis(10)),
    );
    let tails = Streams::new(
        "audit tails",
        authn.clone(),
        Limits {
            per_principal: config.max_tails_per_caller,
            per_organization: config.max_tails_per_org,
        },
    );
    let audit = Audit::new(db, closing_rx, tails);
    let admission =
        Admission::new(authn, Arc::new(authz)).with_audit("audit", Arc::new(audit.refusal_sink()));

    let name = <AuditServiceServer<Audit> as tonic::server::NamedService>::NAME;
    let (_health, routes) = server::health_and_reflection(&[name]).await?;
    let routes = routes.add_service(
        AuditServiceServer::new(audit).max_decoding_message_size(server::MAX_MESSAGE_BYTES),
    );
    tracing::info!(%addr, "audit listening");
    Ok(ServerHandle::spawn(listener, addr, admission, routes)
        .with_background([watch, retention])
        .with_closing(closing))
}

/// One retention pass over `db` (the audit database) as of `now` (unix
/// microseconds), at most `batch` deletions per transaction: what the
/// background job runs every `retention_interval`, for tests and tools.
pub async fn enforce_retention(
    db: &Database,
    now: i64,
    batch: i64,
) -> Result<Vec<RetentionRun>, paddock_shared::error::Error> {
    retention::enforce(&store::Store { db: db.clone() }, now, batch).await
}

#[cfg(test)]
mod tests {
    /// Every migration keeps the version databases already recorded it at.
    #[test]
    fn migrations_keep_their_versions() {
        let versions: Vec<i64> = super::MIGRATIONS.iter().map(|m| m.version).collect();
        assert_eq!(versions, [1, 2, 3, 4, 5]);
    }
}
