//! The identity service: organizations, members (with invite codes), agents,
//! projects, API keys and sandbox session tokens, stored credentials
//! (encrypted at rest), and `Authenticate`: who is calling.
#![forbid(unsafe_code)]
// Outside tests a failure is an answer, never a panic.

mod authn;
pub mod credential_key;
mod service;
mod store;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use paddock_proto::identity::v1::identity_service_server::IdentityServiceServer;
use paddock_shared::auth::{self, BearerAuth, CachedAuthenticator, RemoteAuthz};
use paddock_shared::bootstrap::Storage;
use paddock_shared::config::{self, CommonConfig, CommonFlags, ConfigError};
use paddock_shared::db::Database;
use paddock_shared::secret::Secret;
use paddock_shared::server::{self, ServerHandle};
use paddock_shared::token;
use serde::{Deserialize, Serialize};
use sqlx::migrate::Migrator;

use crate::authn::{LastUsed, LocalAuthenticator};
use crate::credential_key::{CredentialKey, KeySource};
use crate::service::Identity;

/// Identity's schema migrations: every file in `migrations/`, embedded at
/// build time and applied in version order by sqlx's migrator.
pub static MIGRATIONS: &Migrator = &sqlx::migrate!("./migrations");

/// Configuration of the identity service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub common: CommonConfig,
    /// How often `last_used_at` of keys is written, in one batch.
    #[serde(with = "config::duration")]
    pub last_used_flush: Duration,
    /// The key sealing stored credentials: 32 bytes as base64 or hex. Unset:
    /// `{data_dir}/credential-key`, generated on first start (mode 0600).
    /// Replicas sharing a database must share this key.
    #[serde(with = "config::secret", default)]
    pub credential_key: Option<Secret<String>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            common: CommonConfig::listening_on(SocketAddr::from(([127, 0, 0, 1], 7101))),
            last_used_flush: Duration::from_secs(10),
            credential_key: None,
        }
    }
}

/// The flags of `paddock-identity`.
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct Flags {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: CommonFlags,
    /// How often `last_used_at` of keys is written, in one batch [default:
    /// 10s].
    #[arg(long, value_parser = config::duration_flag)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_flush: Option<String>,
    /// The key sealing stored credentials (32 bytes, base64 or hex); prefer
    /// PADDOCK_CREDENTIAL_KEY or the file. Unset: {data-dir}/credential-key.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_key: Option<String>,
}

/// The variables identity reads besides [`config::COMMON_ENV`]; its own
/// win over `DATABASE_URL`.
pub const ENV: &[(&str, &str)] = &[
    ("DATABASE_URL", "database_url"),
    ("PADDOCK_IDENTITY_LISTEN", "listen"),
    ("PADDOCK_IDENTITY_DATABASE_URL", "database_url"),
    ("PADDOCK_CREDENTIAL_KEY", "credential_key"),
];

impl Config {
    /// Defaults, then `file`, then the environment, then `flags`.
    pub fn load(file: Option<&Path>, flags: &Flags) -> Result<Self, ConfigError> {
        config::load(&Self::default(), file, &[config::COMMON_ENV, ENV], flags)
    }
}

pub type StartError = Box<dyn std::error::Error + Send + Sync>;

/// Starts the identity service. It recognizes `service_token` as the service
/// principal and writes the platform bootstrap token to
/// `{data_dir}/bootstrap-token` (mode 0600).
pub async fn start(
    config: &Config,
    service_token: &Secret<String>,
) -> Result<ServerHandle, StartError> {
    let (listener, _) = server::bind(config.common.listen).await?;
    start_on(listener, config, service_token).await
}

/// Starts on a listener bound beforehand (so two services that need each
/// other's address can both bind port 0 first); `config.common.listen` is unused.
pub async fn start_on(
    listener: tokio::net::TcpListener,
    config: &Config,
    service_token: &Secret<String>,
) -> Result<ServerHandle, StartError> {
    let addr = listener.local_addr()?;
    let mut storage = Storage::open(
        "identity",
        "identity",
        &config.common,
        service_token,
        MIGRATIONS,
    )
    .await?;
    let db = storage.db.clone();
    authn::ensure_bootstrap_token(&db, &config.common.data_dir).await?;
    let credential_key = load_credential_key(config, &db).await?;

    let last_used = Arc::new(LastUsed::default());
    let local = LocalAuthenticator {
        db: db.clone(),
        service_hash: token::hash(service_token.expose()),
        last_used: last_used.clone(),
    };
    let authn = Arc::new(CachedAuthenticator::new(local));
    let authz = RemoteAuthz::new(auth::authz_client(
        &config.common.authz_endpoint,
        BearerAuth::new(service_token)?,
    )?);
    let admission = storage.admission(authn.clone(), Arc::new(authz));
    let (invalidations, _) = tokio::sync::broadcast::channel(1024);
    let (closing, closing_rx) = tokio::sync::watch::channel(false);
    let identity = Identity {
        db: db.clone(),
        admission: admission.clone(),
        cache: authn.cache(),
        authn,
        invalidations,
        outbox: storage.outbox.clone(),
        closing: closing_rx,
        credential_key,
        policy: auth::policy_client(
            &config.common.authz_endpoint,
            BearerAuth::new(service_token)?,
        )?,
    };

    let name = <IdentityServiceServer<Identity> as tonic::server::NamedService>::NAME;
    let (_health, routes) = server::health_and_reflection(&[name]).await?;
    let routes = routes.add_service(
        IdentityServiceServer::new(identity).max_decoding_message_size(server::MAX_MESSAGE_BYTES),
    );
    let mut background = vec![last_used.spawn_flusher(db, config.last_used_flush)];
    background.extend(storage.spawn_forwarder());
    tracing::info!(%addr, "identity listening");
    Ok(ServerHandle::spawn(listener, addr, admission, routes)
        .with_background(background)
        .with_closing(closing))
}

/// Loads the credential key and warns about stored credentials it cannot
/// open (sealed under another key): they fail to reveal until identity runs
/// with the key that sealed them.
async fn load_credential_key(
    config: &Config,
    db: &Database,
) -> Result<Arc<CredentialKey>, StartError> {
    let (key, source) =
        CredentialKey::load(config.credential_key.as_ref(), &config.common.data_dir)?;
    match &source {
        KeySource::Configured => {
            tracing::info!(
                fingerprint = key.fingerprint(),
                "credential key from configuration"
            )
        }
        KeySource::File(path) | KeySource::Generated(path) => {
            if matches!(source, KeySource::Generated(_)) {
                tracing::info!(path = %path.display(), fingerprint = key.fingerprint(), "generated a credential key");
            } else {
                tracing::info!(path = %path.display(), fingerprint = key.fingerprint(), "credential key from file");
            }
            if db.backend == paddock_shared::db::Backend::Postgres {
                tracing::warn!(
                    path = %path.display(),
                    "the credential key is a local file while the database is shared: every identity replica needs the same key (set --credential-key / PADDOCK_CREDENTIAL_KEY)"
                );
            }
        }
    }
    let others = store::credentials::sealed_with_other_keys(&db.pool, key.fingerprint()).await?;
    if others > 0 {
        tracing::warn!(
            count = others,
            fingerprint = key.fingerprint(),
            "stored credentials were sealed with a different credential key and cannot be revealed; start identity with the key that sealed them"
        );
    }
    Ok(Arc::new(key))
}

#[cfg(test)]
mod tests {
    use paddock_shared::outbox;

    /// Every migration keeps the version databases already recorded it at.
    #[test]
    fn migrations_keep_their_versions() {
        let versions: Vec<i64> = super::MIGRATIONS.iter().map(|m| m.version).collect();
        assert_eq!(versions, [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    /// The outbox migrations are copies of the shared SQL (sqlx's
    /// `migrate!` reads files only).
    #[test]
    fn the_outbox_migrations_are_the_shared_ones() {
        outbox::check_migrations(super::MIGRATIONS, [2, 7, 8]).expect("outbox copies");
    }
}
