//! The identity service: organizations, members (with invite codes), agents,
//! projects and API keys, and `Authenticate`: who is calling.
#![forbid(unsafe_code)]

mod authn;
mod service;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use paddock_proto::identity::v1::identity_service_server::IdentityServiceServer;
use paddock_shared::auth::{self, Admission, BearerAuth, CachedAuthenticator, RemoteAuthz};
use paddock_shared::db::{Database, Migration};
use paddock_shared::outbox::Forwarder;
use paddock_shared::secret::Secret;
use paddock_shared::server::{self, ServerHandle};
use paddock_shared::token;

use crate::authn::{LastUsed, LocalAuthenticator};
use crate::service::Identity;

/// Identity's schema migrations, in order.
pub const MIGRATIONS: &[Migration] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (2, paddock_shared::outbox::MIGRATION),
];

/// Configuration of the identity service.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(
        long = "listen",
        env = "PADDOCK_IDENTITY_LISTEN",
        default_value = "127.0.0.1:7101"
    )]
    pub listen: SocketAddr,
    /// Data directory: SQLite database and the bootstrap token file.
    #[arg(
        long = "data-dir",
        env = "PADDOCK_DATA_DIR",
        default_value = "paddock-data"
    )]
    pub data_dir: PathBuf,
    /// PostgreSQL URL; SQLite under the data dir when unset.
    #[arg(long = "database-url", env = "PADDOCK_IDENTITY_DATABASE_URL")]
    pub database_url: Option<String>,
    /// The authz service.
    #[arg(
        long = "authz-endpoint",
        env = "PADDOCK_AUTHZ_ENDPOINT",
        default_value = "http://127.0.0.1:7102"
    )]
    pub authz_endpoint: String,
    /// How often `last_used_at` of keys is written, in one batch.
    #[arg(long = "last-used-flush", default_value = "10s", value_parser = paddock_shared::time::parse_duration)]
    pub last_used_flush: Duration,
    /// The audit service the outbox delivers to. Unset: events wait in the
    /// outbox until it is configured.
    #[arg(long = "audit-endpoint", env = "PADDOCK_AUDIT_ENDPOINT")]
    pub audit_endpoint: Option<String>,
}

pub type StartError = Box<dyn std::error::Error + Send + Sync>;

/// Starts the identity service. It recognizes `service_token` as the service
/// principal and writes the platform bootstrap token to
/// `{data_dir}/bootstrap-token` (mode 0600).
pub async fn start(
    config: &Config,
    service_token: &Secret<String>,
) -> Result<ServerHandle, StartError> {
    let (listener, _) = server::bind(config.listen).await?;
    start_on(listener, config, service_token).await
}

/// Starts on a listener bound beforehand (so two services that need each
/// other's address can both bind port 0 first); `config.listen` is unused.
pub async fn start_on(
    listener: tokio::net::TcpListener,
    config: &Config,
    service_token: &Secret<String>,
) -> Result<ServerHandle, StartError> {
    let addr = listener.local_addr()?;
    let db = Database::connect(
        "identity",
        &config.data_dir,
        config.database_url.as_deref(),
        MIGRATIONS,
    )
    .await?;
    authn::ensure_bootstrap_token(&db, &config.data_dir).await?;

    let last_used = Arc::new(LastUsed::default());
    let local = LocalAuthenticator {
        db: db.clone(),
        service_hash: token::hash(service_token.expose()),
        last_used: last_used.clone(),
    };
    let authn = Arc::new(CachedAuthenticator::new(local));
    let authz = RemoteAuthz::new(auth::authz_client(
        &config.authz_endpoint,
        BearerAuth::new(service_token)?,
    )?);
    let forwarder = match &config.audit_endpoint {
        Some(endpoint) => Some(Forwarder::new(
            db.pool.clone(),
            endpoint,
            BearerAuth::new(service_token)?,
        )?),
        None => None,
    };
    let audit_wake = forwarder.as_ref().map(Forwarder::waker);
    let sink = authn::RefusalOutbox {
        db: db.clone(),
        wake: audit_wake.clone(),
    };
    let admission =
        Admission::new(authn.clone(), Arc::new(authz)).with_audit("identity", Arc::new(sink));
    let (invalidations, _) = tokio::sync::broadcast::channel(1024);
    let (closing, closing_rx) = tokio::sync::watch::channel(false);
    let identity = Identity {
        db: db.clone(),
        admission: admission.clone(),
        cache: authn.cache(),
        authn,
        invalidations,
        audit_wake,
        closing: closing_rx,
    };

    let name = <IdentityServiceServer<Identity> as tonic::server::NamedService>::NAME;
    let (_health, routes) = server::health_and_reflection(&[name]).await;
    let routes = routes.add_service(
        IdentityServiceServer::new(identity).max_decoding_message_size(server::MAX_MESSAGE_BYTES),
    );
    let mut background = vec![last_used.spawn_flusher(db, config.last_used_flush)];
    background.extend(forwarder.map(Forwarder::spawn));
    tracing::info!(%addr, "identity listening");
    Ok(ServerHandle::spawn(listener, addr, admission, routes)
        .with_background(background)
        .with_closing(closing))
}
