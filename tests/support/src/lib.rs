//! Test support: every test gets its own data dir, its own database (SQLite
//! file or a fresh PostgreSQL database) and its own servers on port 0.
#![forbid(unsafe_code)]

pub mod fixtures;
pub mod image;

use std::path::{Path, PathBuf};
use std::time::Duration;

use paddock_proto::audit::v1::audit_service_client::AuditServiceClient;
use paddock_proto::authz::v1::policy_service_client::PolicyServiceClient;
use paddock_proto::identity::v1::{CreateOrganizationRequest, CreateOrganizationResponse};
use paddock_shared::auth::{self, AuthzClient, BearerAuth, IdentityClient};
use paddock_shared::client::Channel;
use paddock_shared::secret::Secret;
use paddock_shared::server::ServerHandle;
use rand::Rng;
use sqlx::Executor;
use tonic::service::interceptor::InterceptedService;

/// A client of authz's PolicyService.
pub type PolicyClient = PolicyServiceClient<InterceptedService<Channel, BearerAuth>>;

/// A client of the audit service.
pub type AuditClient = AuditServiceClient<InterceptedService<Channel, BearerAuth>>;

/// The environment variable naming the PostgreSQL server for tests: a URL
/// whose user may create databases, e.g.
/// `postgres://paddock:paddock@127.0.0.1:5432/postgres`.
pub const POSTGRES_ENV: &str = "PADDOCK_TEST_DATABASE_URL";

/// Which storage a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates a SQLite and a PostgreSQL test from one `async fn(Backend)`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::Postgres).await
                }
            )*
        }
    };
}

fn random_suffix() -> String {
    const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..12)
        .map(|_| A[rng.random_range(0..A.len())] as char)
        .collect()
}

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("paddock-test-{}", random_suffix()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Creates a fresh PostgreSQL database and returns its URL.
pub async fn fresh_postgres() -> String {
    let admin_url = std::env::var(POSTGRES_ENV)
        .unwrap_or_else(|_| panic!("{POSTGRES_ENV} is not set: the PostgreSQL tests need a server (scripts/test starts one)"));
    sqlx::any::install_default_drivers();
    let name = format!("paddock_test_{}", random_suffix());
    let admin = sqlx::AnyPool::connect(&admin_url)
        .await
        .expect("connect to the test PostgreSQL server");
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .expect("create test database");
    admin.close().await;
    let (base, query) = admin_url
        .split_once('?')
        .map_or((admin_url.as_str(), None), |(b, q)| (b, Some(q)));
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// Drops a database made by [`fresh_postgres`].
pub async fn drop_postgres(url: &str) {
    let Ok(admin_url) = std::env::var(POSTGRES_ENV) else {
        return;
    };
    let Some(name) = url.split('?').next().and_then(|u| u.rsplit('/').next()) else {
        return;
    };
    if !name.starts_with("paddock_test_") {
        return;
    }
    if let Ok(admin) = sqlx::AnyPool::connect(&admin_url).await {
        let _ = admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .await;
        admin.close().await;
    }
}

/// The database URL for a backend: None (SQLite under the data dir) or a
/// fresh PostgreSQL database.
pub async fn database_url(backend: Backend) -> Option<String> {
    match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(fresh_postgres().await),
    }
}

/// Identity, authz and audit, each on its own port 0, with their own data
/// dir and database (audit in its own schema or file).
pub struct Stack {
    pub dir: TempDir,
    pub database_url: Option<String>,
    pub identity: Option<ServerHandle>,
    pub authz: Option<ServerHandle>,
    pub audit: Option<ServerHandle>,
    pub identity_endpoint: String,
    pub authz_endpoint: String,
    pub audit_endpoint: String,
    pub service_token: Secret<String>,
    pub identity_config: paddock_identity::Config,
    pub authz_config: paddock_authz::Config,
    pub audit_config: paddock_audit::Config,
}

impl Stack {
    pub async fn start(backend: Backend) -> Stack {
        Self::start_with(backend, Duration::from_millis(200)).await
    }

    /// Starts with the given `last_used_at` flush interval.
    pub async fn start_with(backend: Backend, last_used_flush: Duration) -> Stack {
        Self::start_inner(backend, last_used_flush, true).await
    }

    /// Starts with identity's and authz's audit outboxes not delivering
    /// (their events wait in the outbox), so the audit trail holds only what the test appends:
    /// for the audit service's own tests, which count sequences.
    pub async fn start_quiet_audit(backend: Backend) -> Stack {
        Self::start_inner(backend, Duration::from_millis(200), false).await
    }

    async fn start_inner(
        backend: Backend,
        last_used_flush: Duration,
        identity_audits: bool,
    ) -> Stack {
        paddock_shared::telemetry::init_quiet(&[]);
        let dir = TempDir::new();
        let database_url = database_url(backend).await;
        // The composition root `paddock dev` uses, every service on port 0.
        let loopback: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let listening = paddock_shared::config::CommonConfig::listening_on;
        let platform = paddock_platform::start(paddock_platform::Options {
            data_dir: dir.path().to_owned(),
            database_url: database_url.clone(),
            identity: Some(paddock_platform::IdentityConfig {
                common: listening(loopback),
                last_used_flush,
                // Generated under the test's own data dir.
                credential_key: None,
            }),
            authz: Some(paddock_platform::AuthzConfig {
                common: listening(loopback),
            }),
            audit: Some(paddock_platform::AuditConfig {
                common: listening(loopback),
                ..paddock_platform::AuditConfig::default()
            }),
            runner: None,
            elsewhere: paddock_platform::Endpoints::default(),
            deliver_audit: identity_audits,
        })
        .await
        .expect("start identity, authz and audit");
        let paddock_platform::Platform {
            identity,
            authz,
            audit,
            endpoints,
            identity_config,
            authz_config,
            audit_config,
            service_token,
            ..
        } = platform;
        Stack {
            identity_endpoint: endpoints.identity,
            authz_endpoint: endpoints.authz,
            audit_endpoint: endpoints.audit,
            dir,
            database_url,
            identity,
            authz,
            audit,
            service_token,
            identity_config: identity_config.expect("identity config"),
            authz_config: authz_config.expect("authz config"),
            audit_config: audit_config.expect("audit config"),
        }
    }

    pub fn bootstrap_token(&self) -> Secret<String> {
        Secret::new(
            std::fs::read_to_string(self.dir.path().join("bootstrap-token"))
                .expect("bootstrap token")
                .trim()
                .to_owned(),
        )
    }

    pub fn identity(&self, token: &str) -> IdentityClient {
        auth::identity_client(&self.identity_endpoint, bearer(token)).expect("identity client")
    }

    pub fn authz(&self, token: &str) -> AuthzClient {
        auth::authz_client(&self.authz_endpoint, bearer(token)).expect("authz client")
    }

    /// A client of authz's PolicyService.
    pub fn policy(&self, token: &str) -> PolicyClient {
        PolicyServiceClient::with_interceptor(
            auth::lazy_channel(&self.authz_endpoint).expect("authz channel"),
            bearer(token),
        )
    }

    pub fn audit(&self, token: &str) -> AuditClient {
        AuditServiceClient::with_interceptor(
            auth::lazy_channel(&self.audit_endpoint).expect("audit channel"),
            bearer(token),
        )
    }

    /// A client of the audit service with the service token (for
    /// AppendEvents).
    pub fn audit_as_service(&self) -> AuditClient {
        self.audit(self.service_token.expose())
    }

    /// Stops the audit server (restart it on the same address with
    /// [`Stack::restart_audit`]).
    pub async fn stop_audit(&mut self) {
        if let Some(a) = self.audit.take() {
            a.shutdown().await;
        }
    }

    pub async fn restart_audit(&mut self) {
        let mut config = self.audit_config.clone();
        config.common.listen = self
            .audit_endpoint
            .trim_start_matches("http://")
            .parse()
            .expect("audit addr");
        self.audit = Some(
            paddock_audit::start(&config, &self.service_token)
                .await
                .expect("restart audit"),
        );
    }

    pub fn anonymous_identity(&self) -> IdentityClient {
        auth::identity_client(&self.identity_endpoint, BearerAuth::anonymous())
            .expect("identity client")
    }

    /// Creates an organization with its owner; returns the response (with
    /// the owner's key secret).
    pub async fn create_org(&self, id: &str, owner: &str) -> CreateOrganizationResponse {
        self.identity(self.bootstrap_token().expose())
            .create_organization(CreateOrganizationRequest {
                organization_id: id.to_owned(),
                display_name: id.to_uppercase(),
                owner_email: owner.to_owned(),
            })
            .await
            .expect("create organization")
            .into_inner()
    }

    /// Stops the authz server (restart it on the same address with
    /// [`Stack::restart_authz`]).
    pub async fn stop_authz(&mut self) {
        if let Some(a) = self.authz.take() {
            a.shutdown().await;
        }
    }

    pub async fn restart_authz(&mut self) {
        let mut config = self.authz_config.clone();
        config.common.listen = self
            .authz_endpoint
            .trim_start_matches("http://")
            .parse()
            .expect("authz addr");
        self.authz = Some(
            paddock_authz::start(&config, &self.service_token)
                .await
                .expect("restart authz"),
        );
    }

    pub async fn stop_identity(&mut self) {
        if let Some(i) = self.identity.take() {
            i.shutdown().await;
        }
    }

    pub async fn shutdown(mut self) {
        self.stop_audit().await;
        self.stop_identity().await;
        self.stop_authz().await;
        if let Some(url) = &self.database_url {
            drop_postgres(url).await;
        }
    }
}

/// A bearer credential; a token that cannot be a header value is sent as no
/// credential at all.
pub fn bearer(token: &str) -> BearerAuth {
    BearerAuth::new(&Secret::new(token.to_owned())).unwrap_or_else(|_| BearerAuth::anonymous())
}
