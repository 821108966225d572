//! The sandbox runner: agent sessions in hardened Docker containers on the
//! worker host it runs on, resolved against the agent's policy, supervised
//! to their end, reconciled with the engine after a restart, and audited.
#![forbid(unsafe_code)]
// Outside tests a failure is an answer, never a panic.

mod copy;
pub mod docker;
pub mod download;
mod egress;
mod envseal;
mod exec;
pub mod files;
mod kill_switch;
mod logs;
mod runner;
mod service;
pub mod spec;
mod store;
mod users;
mod workspace;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use paddock_proto::sandbox::v1::sandbox_service_server::SandboxServiceServer;
use paddock_shared::auth::{
    self, BearerAuth, CachedAuthenticator, RemoteAuthz, RemoteIdentity, ServiceTokenFirst,
};
use paddock_shared::bootstrap::Storage;
use paddock_shared::config::{self, CommonConfig, CommonFlags, ConfigError};
use paddock_shared::secret::Secret;
use paddock_shared::server::{self, ServerHandle};
use paddock_shared::streams::{Limits, Streams};
use serde::{Deserialize, Serialize};
use sqlx::migrate::Migrator;
use tonic_health::ServingStatus;

use crate::runner::{Runner, Tuning};
use crate::service::Sandboxes;

pub use crate::runner::container_name;

/// The runner's schema migrations: every file in `migrations/`, embedded at
/// build time and applied in version order by sqlx's migrator.
pub static MIGRATIONS: &Migrator = &sqlx::migrate!("./migrations");

/// Configuration of the sandbox runner.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub common: CommonConfig,
    /// The Docker Engine socket.
    pub docker_host: String,
    /// This worker's id; default: kept in {data-dir}/worker-id, made once.
    pub worker_id: Option<String>,
    /// SIGTERM-to-SIGKILL grace period of a stop.
    #[serde(with = "config::duration")]
    pub stop_grace: Duration,
    /// How often usage is sampled.
    #[serde(with = "config::duration")]
    pub usage_interval: Duration,
    /// How often workspaces are scanned for changes (file.modify events).
    #[serde(with = "config::duration")]
    pub scan_interval: Duration,
    /// Endpoints sandboxes may use, as NAME=URL: each is set in the sandbox
    /// as PADDOCK_{NAME}_ENDPOINT. A sandbox reaches it only where its
    /// network allows.
    #[serde(with = "endpoints")]
    pub sandbox_endpoints: Vec<(String, String)>,
    /// WatchSandbox streams one caller may have open at once.
    pub max_watches_per_caller: usize,
    /// WatchSandbox streams one organization may have open at once.
    pub max_watches_per_org: usize,
    /// The key sealing sandbox env values at rest: 32 bytes as base64 or
    /// hex. Unset: `{data_dir}/sandbox-key`, generated on first start (mode
    /// 0600). Runners sharing a database must share this key.
    #[serde(with = "config::secret", default)]
    pub sandbox_key: Option<paddock_shared::secret::Secret<String>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            common: CommonConfig::listening_on(SocketAddr::from(([127, 0, 0, 1], 7103))),
            docker_host: "unix:///var/run/docker.sock".to_owned(),
            worker_id: None,
            stop_grace: Duration::from_secs(3),
            usage_interval: Duration::from_secs(5),
            scan_interval: Duration::from_secs(2),
            sandbox_endpoints: Vec::new(),
            max_watches_per_caller: Limits::default().per_principal,
            max_watches_per_org: Limits::default().per_organization,
            sandbox_key: None,
        }
    }
}

/// The flags of `paddock-sandbox-runner`.
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct Flags {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: CommonFlags,
    /// The Docker Engine socket [default: unix:///var/run/docker.sock].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker_host: Option<String>,
    /// This worker's id [default: kept in {data-dir}/worker-id, made once].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// SIGTERM-to-SIGKILL grace period of a stop [default: 3s].
    #[arg(long, value_parser = config::duration_flag)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_grace: Option<String>,
    /// How often usage is sampled [default: 5s].
    #[arg(long, value_parser = config::duration_flag)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_interval: Option<String>,
    /// How often workspaces are scanned for changes [default: 2s].
    #[arg(long, value_parser = config::duration_flag)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan_interval: Option<String>,
    /// An endpoint sandboxes may use, as NAME=URL (repeatable): each is set
    /// in the sandbox as PADDOCK_{NAME}_ENDPOINT. A sandbox reaches it only
    /// where its network allows.
    #[arg(long = "sandbox-endpoint", value_parser = endpoint_flag)]
    #[serde(rename = "sandbox_endpoints", skip_serializing_if = "Vec::is_empty")]
    pub sandbox_endpoints: Vec<String>,
    /// WatchSandbox streams one caller may have open at once [default: 16].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_watches_per_caller: Option<usize>,
    /// WatchSandbox streams one organization may have open at once
    /// [default: 64].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_watches_per_org: Option<usize>,
    /// The key sealing sandbox env values at rest (32 bytes, base64 or
    /// hex); prefer PADDOCK_SANDBOX_KEY or the file. Unset:
    /// {data-dir}/sandbox-key.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox_key: Option<String>,
}

/// The variables the runner reads besides [`config::COMMON_ENV`]; its own
/// win over `DATABASE_URL`.
pub const ENV: &[(&str, &str)] = &[
    ("DATABASE_URL", "database_url"),
    ("DOCKER_HOST", "docker_host"),
    ("PADDOCK_SANDBOX_RUNNER_LISTEN", "listen"),
    ("PADDOCK_SANDBOX_RUNNER_DATABASE_URL", "database_url"),
    ("PADDOCK_WORKER_ID", "worker_id"),
    (
        "PADDOCK_SANDBOX_MAX_WATCHES_PER_CALLER",
        "max_watches_per_caller",
    ),
    ("PADDOCK_SANDBOX_MAX_WATCHES_PER_ORG", "max_watches_per_org"),
    ("PADDOCK_SANDBOX_KEY", "sandbox_key"),
];

impl Config {
    /// Defaults, then `file`, then the environment, then `flags`.
    pub fn load(file: Option<&Path>, flags: &Flags) -> Result<Self, ConfigError> {
        config::load(&Self::default(), file, &[config::COMMON_ENV, ENV], flags)
    }
}

/// `--sandbox-endpoint`, checked and kept as written.
fn endpoint_flag(text: &str) -> Result<String, String> {
    parse_endpoint(text).map(|_| text.trim().to_owned())
}

/// `serde` for the sandbox endpoints, written as `NAME=URL`.
mod endpoints {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(list: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(list.iter().map(|(name, url)| format!("{name}={url}")))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|text| super::parse_endpoint(text).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// Parses `--sandbox-endpoint NAME=URL`.
pub fn parse_endpoint(text: &str) -> Result<(String, String), String> {
    let (name, url) = text.split_once('=').ok_or_else(|| {
        format!("invalid endpoint {text:?}: use NAME=URL, e.g. mcp=http://10.0.0.5:7180")
    })?;
    let name = name.trim().to_ascii_uppercase();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!(
            "invalid endpoint name {name:?}: use letters, digits and _"
        ));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "invalid endpoint URL {url:?}: use http:// or https://"
        ));
    }
    Ok((name, url.to_owned()))
}

pub type StartError = Box<dyn std::error::Error + Send + Sync>;

/// Starts the runner; it calls the other services with `service_token`.
pub async fn start(
    config: &Config,
    service_token: &Secret<String>,
) -> Result<ServerHandle, StartError> {
    let (listener, _) = server::bind(config.common.listen).await?;
    start_on(listener, config, service_token).await
}

/// The worker id: configured, or made once and kept in the data dir.
fn worker_id(config: &Config) -> Result<String, StartError> {
    if let Some(id) = &config.worker_id {
        paddock_shared::names::validate_id("worker", id)?;
        return Ok(id.clone());
    }
    let path = config.common.data_dir.join("worker-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
        _ => {
            let id = format!("w{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
            paddock_shared::db::private_dir(&config.common.data_dir)?;
            std::fs::write(&path, &id)?;
            Ok(id)
        }
    }
}

/// Starts on a listener bound beforehand; `config.common.listen` is unused.
pub async fn start_on(
    listener: tokio::net::TcpListener,
    config: &Config,
    service_token: &Secret<String>,
) -> Result<ServerHandle, StartError> {
    let addr = listener.local_addr()?;
    paddock_shared::db::private_dir(&config.common.data_dir)?;
    let worker = worker_id(config)?;
    let mut storage = Storage::open(
        "sandbox_runner",
        "sandbox-runner",
        &config.common,
        service_token,
        MIGRATIONS,
    )
    .await?;
    let db = storage.db.clone();

    let identity_client = auth::identity_client(
        &config.common.identity_endpoint,
        BearerAuth::new(service_token)?,
    )?;
    let remote = RemoteIdentity::new(identity_client.clone());
    let authn = Arc::new(CachedAuthenticator::new(ServiceTokenFirst::new(
        service_token,
        remote,
    )));
    let authz = RemoteAuthz::new(auth::authz_client(
        &config.common.authz_endpoint,
        BearerAuth::new(service_token)?,
    )?);
    let policy = auth::policy_client(
        &config.common.authz_endpoint,
        BearerAuth::new(service_token)?,
    )?;
    let admission = storage.admission(authn.clone(), Arc::new(authz));

    let installation = store::installation_id(&db.pool).await?;
    let (env_key, source) = paddock_shared::seal::SealingKey::load(
        &crate::envseal::PURPOSE,
        config.sandbox_key.as_ref(),
        &config.common.data_dir,
    )?;
    if db.backend == paddock_shared::db::Backend::Postgres
        && !matches!(source, paddock_shared::seal::KeySource::Configured)
    {
        tracing::warn!(
            "the sandbox key is a local file while the database is shared: every runner needs the same key (set --sandbox-key / PADDOCK_SANDBOX_KEY)"
        );
    }
    let runner = Arc::new(Runner::new(
        db.clone(),
        worker.clone(),
        installation,
        Arc::new(env_key),
        config.docker_host.clone(),
        identity_client.clone(),
        policy,
        // Docker bind-mounts workspaces from here and refuses a relative
        // source, such as `paddock dev`'s default `paddock-data`.
        std::path::absolute(&config.common.data_dir)?,
        Tuning {
            stop_grace: config.stop_grace,
            usage_interval: config.usage_interval,
            scan_interval: config.scan_interval,
            endpoints: config.sandbox_endpoints.clone(),
        },
        storage.outbox.clone(),
    ));
    let hostname = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as i64)
        .unwrap_or(1);
    store::register_worker(
        &db.pool,
        &worker,
        &hostname,
        cpus,
        host_memory_bytes(),
        paddock_shared::time::now_micros(),
    )
    .await?;

    let (closing, closing_rx) = tokio::sync::watch::channel(false);
    let name = <SandboxServiceServer<Sandboxes> as tonic::server::NamedService>::NAME;
    let (health, routes) = server::health_and_reflection(&[name]).await?;
    set_health(&health, name, ServingStatus::NotServing).await;
    let watches = Streams::new(
        "sandbox watches",
        authn.clone(),
        Limits {
            per_principal: config.max_watches_per_caller,
            per_organization: config.max_watches_per_org,
        },
    );
    let sandboxes = Sandboxes {
        runner: runner.clone(),
        admission: admission.clone(),
        closing: closing_rx,
        watches,
    };
    let routes = routes.add_service(
        SandboxServiceServer::new(sandboxes).max_decoding_message_size(server::MAX_MESSAGE_BYTES),
    );

    // Connect to Docker now when it is there, so the first request after
    // start finds it; otherwise the watcher keeps trying.
    connect_engine(&runner, &health, name).await;
    // A deleted organization leaves nothing on this worker.
    let purge_runner = runner.clone();
    let reaper = paddock_shared::org_reaper::spawn_org_reaper(
        identity_client.clone(),
        db.clone(),
        "sandbox-runner",
        Arc::new(move |org: String| {
            let runner = purge_runner.clone();
            Box::pin(async move { runner.purge_organization(&org).await })
        }),
        None,
        paddock_shared::org_reaper::DEFAULT_INTERVAL,
    );
    // Sandboxes end when their agent, project or creator's access goes.
    let kill_switch =
        kill_switch::spawn(runner.clone(), admission.clone(), authn.cache().subscribe());
    let mut background = vec![
        kill_switch,
        reaper,
        authn.inner().inner().watch(authn.cache()),
        tokio::spawn(watch_engine(runner.clone(), health, name)),
        tokio::spawn(heartbeat(runner.clone())),
        tokio::spawn(count_sandboxes(runner.clone())),
    ];
    background.extend(storage.spawn_forwarder());
    tracing::info!(%addr, worker, docker = config.docker_host, "sandbox runner listening");
    Ok(ServerHandle::spawn(listener, addr, admission, routes)
        .with_background(background)
        .with_closing(closing))
}

/// Connects, and reconciles once connected. Returns whether Docker is up.
async fn connect_engine(
    runner: &Arc<Runner>,
    health: &tonic_health::server::HealthReporter,
    name: &str,
) -> bool {
    let engine = match docker::Engine::connect(&runner.docker_host) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "Docker Engine not reachable");
            return false;
        }
    };
    if let Err(e) = engine.ping().await {
        tracing::warn!(error = %e, "Docker Engine not reachable");
        return false;
    }
    runner.set_engine(Some(engine));
    if let Err(e) = runner.reconcile().await {
        tracing::error!(error = %e, "reconciliation with Docker failed");
    }
    set_health(health, name, ServingStatus::Serving).await;
    true
}

/// Sets the runner's health: its service's and the server's overall (the
/// empty service name), which is what load balancers and `grpcurl ...
/// Health/Check` ask. Without Docker the runner serves nothing useful.
async fn set_health(
    health: &tonic_health::server::HealthReporter,
    name: &str,
    status: ServingStatus,
) {
    health.set_service_status(name, status).await;
    health.set_service_status("", status).await;
}

/// Keeps the health status in step with the engine; aborts the sandbox
/// supervisors when the server stops (the sandboxes keep running and are
/// re-adopted at the next start).
async fn watch_engine(
    runner: Arc<Runner>,
    health: tonic_health::server::HealthReporter,
    name: &'static str,
) {
    struct AbortOnDrop(Arc<Runner>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort_supervisors();
        }
    }
    let _guard = AbortOnDrop(runner.clone());
    loop {
        let up = match runner.engine() {
            Ok(engine) => engine.ping().await.is_ok(),
            Err(_) => false,
        };
        if up {
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        }
        if runner.engine().is_ok() {
            runner.set_engine(None);
            set_health(&health, name, ServingStatus::NotServing).await;
        }
        if !connect_engine(&runner, &health, name).await {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

/// Total memory of the host, from /proc/meminfo (0 when unknown).
fn host_memory_bytes() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

async fn heartbeat(runner: Arc<Runner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        if let Err(e) = store::heartbeat(
            &runner.db.pool,
            &runner.worker,
            paddock_shared::time::now_micros(),
        )
        .await
        {
            tracing::warn!(error = %e, "worker heartbeat failed");
        }
    }
}

/// Counts this worker's sandboxes by state for the metrics, every few
/// seconds (a gauge read at collection time cannot wait on the database).
async fn count_sandboxes(runner: Arc<Runner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        match store::count_by_state(&runner.db.pool, &runner.worker).await {
            Ok(counts) => paddock_shared::metrics::set_sandboxes(
                &runner.worker,
                counts
                    .into_iter()
                    .map(|(state, n)| {
                        let name = state.as_str_name();
                        let name = name.strip_prefix("SANDBOX_STATE_").unwrap_or(name);
                        (name.to_ascii_lowercase(), n)
                    })
                    .collect(),
            ),
            Err(e) => tracing::debug!(error = %e, "counting sandboxes by state"),
        }
    }
}

#[cfg(test)]
mod tests {
    use paddock_shared::outbox;

    /// Every migration keeps the version databases already recorded it at.
    #[test]
    fn migrations_keep_their_versions() {
        let versions: Vec<i64> = super::MIGRATIONS.iter().map(|m| m.version).collect();
        assert_eq!(versions, [1, 2, 3, 4, 5]);
    }

    /// The outbox migrations are copies of the shared SQL (sqlx's
    /// `migrate!` reads files only).
    #[test]
    fn the_outbox_migrations_are_the_shared_ones() {
        outbox::check_migrations(super::MIGRATIONS, [2, 4, 5]).expect("outbox copies");
    }
}
