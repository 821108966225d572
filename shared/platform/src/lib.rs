//! The one composition root. `paddock dev`, the benches and the test kit
//! all start Paddock here: each service that runs in this process gets a
//! listener first (port 0 allowed), so every endpoint is known before any
//! service starts; then each starts from its own typed configuration with
//! the common part (data dir, database, peers, audit) filled in the same
//! way, and they stop in the reverse order.
//!
//! A service not run here is reached at the endpoint given for it in
//! [`Options::elsewhere`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use paddock_shared::config::CommonConfig;
use paddock_shared::db;
use paddock_shared::secret::Secret;
use paddock_shared::server::{self, ServerHandle, load_or_create_token};
use paddock_shared::token::TokenKind;

pub use paddock_audit::Config as AuditConfig;
pub use paddock_authz::Config as AuthzConfig;
pub use paddock_identity::Config as IdentityConfig;
pub use paddock_sandbox_runner::Config as RunnerConfig;

/// Why the platform did not start, naming the service.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data dir {dir}: {source}")]
    DataDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read or create the service token {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot bind {service} to {addr}: {source}")]
    Bind {
        service: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{service} failed to start: {source}")]
    Service {
        service: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Where services not run here are reached.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    pub identity: String,
    pub authz: String,
    pub audit: String,
    pub sandbox: String,
}

/// What to run. Each `Some` config is a service to start here: its own
/// settings and its `listen` are kept, its common wiring (data dir,
/// database, peers, audit) is filled in by [`start`].
pub struct Options {
    pub data_dir: PathBuf,
    /// PostgreSQL (one schema per service) or None for SQLite files under
    /// the data dir.
    pub database_url: Option<String>,
    pub identity: Option<IdentityConfig>,
    pub authz: Option<AuthzConfig>,
    pub audit: Option<AuditConfig>,
    pub runner: Option<RunnerConfig>,
    /// Endpoints of the services not run here.
    pub elsewhere: Endpoints,
    /// Whether identity's and authz's outboxes deliver to audit. Off, their
    /// events wait in the outboxes (the audit service's own tests count
    /// only what they append).
    pub deliver_audit: bool,
}

impl Options {
    /// Every service with its defaults, on `data_dir`.
    pub fn all(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            database_url: None,
            identity: Some(IdentityConfig::default()),
            authz: Some(AuthzConfig::default()),
            audit: Some(AuditConfig::default()),
            runner: Some(RunnerConfig::default()),
            elsewhere: Endpoints::default(),
            deliver_audit: true,
        }
    }
}

/// The running services, their endpoints and the configurations they
/// started with (to restart one on the same address).
pub struct Platform {
    pub identity: Option<ServerHandle>,
    pub authz: Option<ServerHandle>,
    pub audit: Option<ServerHandle>,
    pub runner: Option<ServerHandle>,
    /// Every service's endpoint: this process's, or the one given for a
    /// service run elsewhere.
    pub endpoints: Endpoints,
    pub identity_config: Option<IdentityConfig>,
    pub authz_config: Option<AuthzConfig>,
    pub audit_config: Option<AuditConfig>,
    pub runner_config: Option<RunnerConfig>,
    /// The token the services call each other with.
    pub service_token: Secret<String>,
}

impl Platform {
    /// Stops every service here, in the reverse of the start order.
    pub async fn shutdown(self) {
        for handle in [self.runner, self.audit, self.identity, self.authz]
            .into_iter()
            .flatten()
        {
            handle.shutdown().await;
        }
    }
}

/// The `http://` endpoint a client on this host uses for `addr`.
pub fn client_endpoint(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

async fn bind(
    service: &'static str,
    common: Option<&CommonConfig>,
) -> Result<Option<(tokio::net::TcpListener, SocketAddr)>, StartError> {
    let Some(common) = common else {
        return Ok(None);
    };
    server::bind(common.listen)
        .await
        .map(Some)
        .map_err(|source| StartError::Bind {
            service,
            addr: common.listen,
            source,
        })
}

fn endpoint(bound: &Option<(tokio::net::TcpListener, SocketAddr)>, elsewhere: &str) -> String {
    bound
        .as_ref()
        .map_or_else(|| elsewhere.to_owned(), |(_, addr)| client_endpoint(*addr))
}

/// Starts what `options` names. On a failure, what already started is
/// stopped again.
pub async fn start(options: Options) -> Result<Platform, StartError> {
    db::private_dir(&options.data_dir).map_err(|source| StartError::DataDir {
        dir: options.data_dir.clone(),
        source,
    })?;
    let token_path = options.data_dir.join("service-token");
    let token = load_or_create_token(&token_path, TokenKind::Service).map_err(|source| {
        StartError::Token {
            path: token_path.clone(),
            source,
        }
    })?;

    // Every listener first: each service needs the others' addresses.
    let identity_l = bind("identity", options.identity.as_ref().map(|c| &c.common)).await?;
    let authz_l = bind("authz", options.authz.as_ref().map(|c| &c.common)).await?;
    let audit_l = bind("audit", options.audit.as_ref().map(|c| &c.common)).await?;
    let runner_l = bind("sandbox-runner", options.runner.as_ref().map(|c| &c.common)).await?;
    let endpoints = Endpoints {
        identity: endpoint(&identity_l, &options.elsewhere.identity),
        authz: endpoint(&authz_l, &options.elsewhere.authz),
        audit: endpoint(&audit_l, &options.elsewhere.audit),
        sandbox: endpoint(&runner_l, &options.elsewhere.sandbox),
    };
    // An outbox with no audit endpoint keeps its events until one is set.
    let audit_endpoint = Some(endpoints.audit.clone()).filter(|e| !e.is_empty());
    let wire = |common: &mut CommonConfig, addr: SocketAddr, delivers: bool| {
        common.listen = addr;
        common.data_dir = options.data_dir.clone();
        common.database_url = options.database_url.clone();
        common.identity_endpoint = endpoints.identity.clone();
        common.authz_endpoint = endpoints.authz.clone();
        common.audit_endpoint = audit_endpoint.clone().filter(|_| delivers);
    };

    let mut platform = Platform {
        identity: None,
        authz: None,
        audit: None,
        runner: None,
        endpoints: endpoints.clone(),
        identity_config: None,
        authz_config: None,
        audit_config: None,
        runner_config: None,
        service_token: token.clone(),
    };
    let failed = |service: &'static str| {
        move |source: Box<dyn std::error::Error + Send + Sync>| StartError::Service {
            service,
            source,
        }
    };

    // authz needs nobody at start (identity's calls carry the service
    // token, recognized without asking identity), so it goes first.
    if let (Some(mut config), Some((listener, addr))) = (options.authz, authz_l) {
        wire(&mut config.common, addr, options.deliver_audit);
        match paddock_authz::start_on(listener, &config, &token).await {
            Ok(h) => platform.authz = Some(h),
            Err(e) => return Err(stop(platform, failed("authz")(e)).await),
        }
        platform.authz_config = Some(config);
    }
    if let (Some(mut config), Some((listener, addr))) = (options.identity, identity_l) {
        wire(&mut config.common, addr, options.deliver_audit);
        match paddock_identity::start_on(listener, &config, &token).await {
            Ok(h) => platform.identity = Some(h),
            Err(e) => return Err(stop(platform, failed("identity")(e)).await),
        }
        platform.identity_config = Some(config);
    }
    if let (Some(mut config), Some((listener, addr))) = (options.audit, audit_l) {
        // Audit delivers to nobody: it is the trail.
        wire(&mut config.common, addr, false);
        match paddock_audit::start_on(listener, &config, &token).await {
            Ok(h) => platform.audit = Some(h),
            Err(e) => return Err(stop(platform, failed("audit")(e)).await),
        }
        platform.audit_config = Some(config);
    }
    if let (Some(mut config), Some((listener, addr))) = (options.runner, runner_l) {
        wire(&mut config.common, addr, true);
        match paddock_sandbox_runner::start_on(listener, &config, &token).await {
            Ok(h) => platform.runner = Some(h),
            Err(e) => return Err(stop(platform, failed("sandbox-runner")(e)).await),
        }
        platform.runner_config = Some(config);
    }
    Ok(platform)
}

async fn stop(platform: Platform, error: StartError) -> StartError {
    platform.shutdown().await;
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_for_clients() {
        assert_eq!(
            client_endpoint("0.0.0.0:7101".parse().expect("address")),
            "http://127.0.0.1:7101"
        );
        assert_eq!(
            client_endpoint("127.0.0.1:9".parse().expect("address")),
            "http://127.0.0.1:9"
        );
    }

    /// Identity, authz and audit on port 0 find each other, and a bound
    /// port is reported as a start error naming the service.
    #[tokio::test]
    async fn services_find_each_other_and_a_taken_port_is_named() {
        let dir = tempfile::tempdir().expect("dir");
        let loopback: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let on = |mut c: CommonConfig| {
            c.listen = loopback;
            c
        };
        let mut options = Options::all(dir.path().to_owned());
        options.runner = None;
        if let Some(c) = options.identity.as_mut() {
            c.common = on(c.common.clone());
        }
        if let Some(c) = options.authz.as_mut() {
            c.common = on(c.common.clone());
        }
        if let Some(c) = options.audit.as_mut() {
            c.common = on(c.common.clone());
        }
        let platform = start(options).await.expect("start");
        let identity = platform.identity.as_ref().expect("identity").addr;
        assert_eq!(platform.endpoints.identity, client_endpoint(identity));
        let authz_config = platform.authz_config.as_ref().expect("authz config");
        assert_eq!(
            authz_config.common.identity_endpoint,
            platform.endpoints.identity
        );
        assert_eq!(
            authz_config.common.audit_endpoint.as_deref(),
            Some(platform.endpoints.audit.as_str())
        );
        let audit_config = platform.audit_config.as_ref().expect("audit config");
        assert_eq!(audit_config.common.audit_endpoint, None);

        // A second platform on identity's port fails, naming identity, and
        // leaves nothing running.
        let other = tempfile::tempdir().expect("dir");
        let mut clash = Options::all(other.path().to_owned());
        clash.runner = None;
        clash.authz = None;
        clash.audit = None;
        if let Some(c) = clash.identity.as_mut() {
            c.common.listen = identity;
        }
        let err = start(clash).await.err().expect("port taken");
        assert!(err.to_string().contains("cannot bind identity"), "{err}");
        platform.shutdown().await;
    }
}
