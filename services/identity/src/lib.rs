//! The identity service: organizations, members (with invite codes), agents,
//! projects and API keys, and `Authenticate`: who is calling.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use paddock_shared::secret::Secret;
use paddock_shared::server::ServerHandle;

/// Configuration of the identity service.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long = "listen", env = "PADDOCK_IDENTITY_LISTEN", default_value = "127.0.0.1:7101")]
    pub listen: SocketAddr,
    /// Data directory: SQLite database and the bootstrap token file.
    #[arg(long = "data-dir", env = "PADDOCK_DATA_DIR", default_value = "paddock-data")]
    pub data_dir: PathBuf,
    /// PostgreSQL URL; SQLite under the data dir when unset.
    #[arg(long = "database-url", env = "PADDOCK_IDENTITY_DATABASE_URL")]
    pub database_url: Option<String>,
    /// The authz service.
    #[arg(long = "authz-endpoint", env = "PADDOCK_AUTHZ_ENDPOINT", default_value = "http://127.0.0.1:7102")]
    pub authz_endpoint: String,
    /// How often `last_used_at` of keys is written, in one batch.
    #[arg(long = "last-used-flush", default_value = "10s", value_parser = paddock_shared::time::parse_duration)]
    pub last_used_flush: Duration,
}

pub type StartError = Box<dyn std::error::Error + Send + Sync>;

/// Starts the identity service. It recognizes `service_token` as the service
/// principal and writes the platform bootstrap token to
/// `{data_dir}/bootstrap-token` (mode 0600).
pub async fn start(config: &Config, service_token: &Secret<String>) -> Result<ServerHandle, StartError> {
    let _ = (config, service_token);
    Err("identity is not built yet".into())
}
