//! `paddock dev`: every service in one process on loopback, SQLite under a
//! data dir (or PostgreSQL with `DATABASE_URL`), the bootstrap token in a
//! 0600 file. The bench starts the same stack on port 0.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use paddock_shared::secret::Secret;
use paddock_shared::server::{ServerHandle, write_secret_file};
use tonic::Code;

use crate::Global;
use crate::error::CliError;

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where the databases, the service token and the bootstrap token live.
    #[arg(long, default_value = "paddock-data")]
    pub data_dir: PathBuf,
    /// Services not to run here (identity, authz, audit, sandbox-runner),
    /// comma separated;
    /// the others reach them at --identity-endpoint / --authz-endpoint.
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
    /// Address of the identity service (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7101")]
    pub identity_listen: SocketAddr,
    /// Address of the authz service (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7102")]
    pub authz_listen: SocketAddr,
    /// Address of the audit service (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7104")]
    pub audit_listen: SocketAddr,
    /// Address of the sandbox runner (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7103")]
    pub sandbox_listen: SocketAddr,
    /// The admin HTTP listener: Prometheus `/metrics` and `/healthz` for
    /// every service here (port 0 picks a free port).
    #[arg(long, env = "PADDOCK_ADMIN_LISTEN", default_value = "127.0.0.1:9464")]
    pub admin_listen: SocketAddr,
    /// The Docker Engine the sandbox runner drives.
    #[arg(
        long,
        env = "DOCKER_HOST",
        default_value = "unix:///var/run/docker.sock"
    )]
    pub docker_host: String,
    /// The sandbox runner's worker id (labels every container, network and
    /// volume it makes); default: kept in {data-dir}/worker-id, made once.
    #[arg(long, env = "PADDOCK_WORKER_ID")]
    pub worker_id: Option<String>,
}

/// A service `paddock dev` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Identity,
    Authz,
    Audit,
    SandboxRunner,
}

impl Service {
    pub const ALL: [Service; 4] = [
        Service::Identity,
        Service::Authz,
        Service::Audit,
        Service::SandboxRunner,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Service::Identity => "identity",
            Service::Authz => "authz",
            Service::Audit => "audit",
            Service::SandboxRunner => "sandbox-runner",
        }
    }
}

/// Parses `--skip identity,authz`; unknown names are usage errors.
pub fn parse_skip(names: &[String]) -> Result<Vec<Service>, CliError> {
    let mut out = Vec::new();
    for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let service = Service::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = Service::ALL.iter().map(|s| s.as_str()).collect();
                CliError::usage(format!(
                    "unknown service {name:?} in --skip: expected one of {}",
                    known.join(", ")
                ))
            })?;
        if !out.contains(&service) {
            out.push(service);
        }
    }
    Ok(out)
}

/// What to start.
pub struct StackOptions {
    pub data_dir: PathBuf,
    pub identity_listen: SocketAddr,
    pub authz_listen: SocketAddr,
    pub audit_listen: SocketAddr,
    pub database_url: Option<String>,
    pub skip: Vec<Service>,
    /// Where a skipped identity runs.
    pub identity_endpoint: String,
    /// Where a skipped authz runs.
    pub authz_endpoint: String,
    /// Where a skipped audit runs.
    pub audit_endpoint: String,
    /// Where a skipped sandbox runner runs.
    pub sandbox_endpoint: String,
}

/// The running services and their endpoints: the platform's composition
/// root, shared with the test kit.
pub use paddock_platform::{Platform as Stack, client_endpoint};

/// Starts identity, authz and audit (each unless skipped), pointing each
/// at the others.
pub async fn start_stack(opts: StackOptions) -> Result<Stack, CliError> {
    start_platform(opts, None).await
}

/// [`start_stack`] and, when given, the sandbox runner.
pub async fn start_platform(
    opts: StackOptions,
    runner: Option<paddock_platform::RunnerConfig>,
) -> Result<Stack, CliError> {
    let runs = |service: Service| !opts.skip.contains(&service);
    let listening = paddock_shared::config::CommonConfig::listening_on;
    let options = paddock_platform::Options {
        identity: runs(Service::Identity).then(|| paddock_platform::IdentityConfig {
            common: listening(opts.identity_listen),
            // As for paddock-identity; unset, the key lives in the data dir.
            credential_key: std::env::var("PADDOCK_CREDENTIAL_KEY")
                .ok()
                .filter(|k| !k.trim().is_empty())
                .map(Secret::new),
            ..paddock_platform::IdentityConfig::default()
        }),
        authz: runs(Service::Authz).then(|| paddock_platform::AuthzConfig {
            common: listening(opts.authz_listen),
        }),
        audit: runs(Service::Audit).then(|| paddock_platform::AuditConfig {
            common: listening(opts.audit_listen),
            ..paddock_platform::AuditConfig::default()
        }),
        runner,
        elsewhere: paddock_platform::Endpoints {
            identity: opts.identity_endpoint,
            authz: opts.authz_endpoint,
            audit: opts.audit_endpoint,
            sandbox: opts.sandbox_endpoint,
        },
        deliver_audit: true,
        data_dir: opts.data_dir,
        database_url: opts.database_url,
    };
    paddock_platform::start(options).await.map_err(|e| {
        let code = match e {
            paddock_platform::StartError::DataDir { .. }
            | paddock_platform::StartError::Token { .. } => Code::FailedPrecondition,
            _ => Code::Unavailable,
        };
        CliError::new(code, e.to_string())
    })
}

/// `DATABASE_URL` for identity (`PADDOCK_IDENTITY_DATABASE_URL` first).
pub fn database_url_from_env() -> Option<String> {
    ["PADDOCK_IDENTITY_DATABASE_URL", "DATABASE_URL"]
        .into_iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.trim().is_empty()))
}

pub async fn run(global: &Global, args: DevArgs) -> Result<(), CliError> {
    let telemetry = paddock_shared::telemetry::init(&[
        "paddock-identity",
        "paddock-authz",
        "paddock-audit",
        "paddock-sandbox-runner",
    ]);
    let skip = parse_skip(&args.skip)?;
    if skip.len() == Service::ALL.len() {
        return Err(CliError::usage("--skip leaves no service to run"));
    }
    let admin = paddock_shared::admin::AdminServer::start(args.admin_listen)
        .await
        .map_err(|e| {
            CliError::new(
                Code::Unavailable,
                format!(
                    "cannot bind the admin listener {}: {e} (set --admin-listen)",
                    args.admin_listen
                ),
            )
        })?;
    let admin_endpoint = client_endpoint(admin.addr);
    let runner =
        (!skip.contains(&Service::SandboxRunner)).then(|| paddock_platform::RunnerConfig {
            common: paddock_shared::config::CommonConfig::listening_on(args.sandbox_listen),
            docker_host: args.docker_host.clone(),
            worker_id: args.worker_id.clone(),
            ..paddock_platform::RunnerConfig::default()
        });
    let mut stack = start_platform(
        StackOptions {
            data_dir: args.data_dir.clone(),
            identity_listen: args.identity_listen,
            authz_listen: args.authz_listen,
            audit_listen: args.audit_listen,
            database_url: database_url_from_env(),
            skip: skip.clone(),
            identity_endpoint: global.identity_endpoint.clone(),
            authz_endpoint: global.authz_endpoint.clone(),
            audit_endpoint: global.audit_endpoint.clone(),
            sandbox_endpoint: global.sandbox_endpoint.clone(),
        },
        runner,
    )
    .await?;
    let audit_endpoint = stack.endpoints.audit.clone();
    let sandbox_endpoint = stack.endpoints.sandbox.clone();
    // The context is written before endpoints.json, which says "serving".
    let dev_context = write_context(
        global,
        [
            &stack.endpoints.identity,
            &stack.endpoints.authz,
            &sandbox_endpoint,
            &audit_endpoint,
        ],
        stack
            .identity
            .is_some()
            .then(|| std::path::absolute(args.data_dir.join("bootstrap-token")).ok())
            .flatten(),
    );
    let endpoints = serde_json::json!({
        "identity": stack.endpoints.identity,
        "authz": stack.endpoints.authz,
        "audit": audit_endpoint,
        "sandbox": sandbox_endpoint,
        "admin": admin_endpoint,
    });
    if let Err(e) = write_secret_file(
        &args.data_dir.join("endpoints.json"),
        &endpoints.to_string(),
    ) {
        stack.shutdown().await;
        return Err(CliError::new(
            Code::Internal,
            format!("cannot write endpoints.json: {e}"),
        ));
    }
    if stack.identity.is_some() {
        outln!("identity listening on {}", stack.endpoints.identity);
    }
    if stack.authz.is_some() {
        outln!("authz listening on {}", stack.endpoints.authz);
    }
    if stack.audit.is_some() {
        outln!("audit listening on {}", stack.endpoints.audit);
    }
    if stack.runner.is_some() {
        outln!(
            "sandbox-runner listening on {sandbox_endpoint} (Docker at {})",
            args.docker_host
        );
    }
    outln!("metrics on {admin_endpoint}/metrics");
    if stack.identity.is_some() {
        outln!(
            "bootstrap token in {}",
            args.data_dir.join("bootstrap-token").display()
        );
    }
    print_exports(
        [
            &stack.endpoints.identity,
            &stack.endpoints.authz,
            &sandbox_endpoint,
            &audit_endpoint,
        ],
        dev_context,
    );

    let outcome = tokio::select! {
        signal = shutdown_signal() => signal,
        res = wait_for(&mut stack.identity) => {
            stack.identity = None;
            Err(CliError::new(Code::Internal, format!("identity stopped: {}", res.err().unwrap_or_else(|| "no error".to_owned()))))
        }
        res = wait_for(&mut stack.authz) => {
            stack.authz = None;
            Err(CliError::new(Code::Internal, format!("authz stopped: {}", res.err().unwrap_or_else(|| "no error".to_owned()))))
        }
        res = wait_for(&mut stack.audit) => {
            stack.audit = None;
            Err(CliError::new(Code::Internal, format!("audit stopped: {}", res.err().unwrap_or_else(|| "no error".to_owned()))))
        }
        res = wait_for(&mut stack.runner) => {
            stack.runner = None;
            Err(CliError::new(Code::Internal, format!("sandbox-runner stopped: {}", res.err().unwrap_or_else(|| "no error".to_owned()))))
        }
    };
    stack.shutdown().await;
    admin.shutdown().await;
    telemetry.shutdown().await;
    outcome
}

/// Records the endpoints in a context of the config file (made current);
/// returns its name and the file. A config file that cannot be written is
/// a warning, not a failure.
fn write_context(
    global: &Global,
    endpoints: [&str; 4],
    bootstrap: Option<PathBuf>,
) -> Option<(String, PathBuf)> {
    let name = global.context.as_deref().unwrap_or("dev");
    match crate::context::write_dev_context(name, endpoints, bootstrap) {
        Ok(path) => Some((name.to_owned(), path)),
        Err(e) => {
            eprintln!(
                "warning: no context written: {}",
                e.render().unwrap_or_default()
            );
            None
        }
    }
}

/// Prints the `export` lines another shell needs to reach this stack.
fn print_exports(endpoints: [&str; 4], context: Option<(String, PathBuf)>) {
    let [identity, authz, sandbox, audit] = endpoints;
    outln!("# to reach this stack from another shell:");
    outln!("export PADDOCK_IDENTITY_ENDPOINT={identity}");
    outln!("export PADDOCK_AUTHZ_ENDPOINT={authz}");
    outln!("export PADDOCK_SANDBOX_ENDPOINT={sandbox}");
    outln!("export PADDOCK_AUDIT_ENDPOINT={audit}");
    if let Some((name, path)) = context {
        outln!(
            "# or use context {name}, now current ({}); `paddock login` saves a key in it",
            path.display()
        );
    }
}

/// Waits until a running server stops by itself; forever if none runs.
async fn wait_for(handle: &mut Option<ServerHandle>) -> Result<(), String> {
    match handle {
        Some(h) => h.wait().await,
        None => std::future::pending().await,
    }
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() -> Result<(), CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| CliError::new(Code::Internal, format!("cannot watch SIGTERM: {e}")))?;
    tokio::select! {
        res = tokio::signal::ctrl_c() => res.map_err(|e| CliError::new(Code::Internal, format!("cannot watch SIGINT: {e}"))),
        _ = term.recv() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_accepts_known_services() {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(parse_skip(&s(&[])).ok(), Some(vec![]));
        assert_eq!(parse_skip(&s(&["authz"])).ok(), Some(vec![Service::Authz]));
        assert_eq!(
            parse_skip(&s(&["identity", "authz", "identity"])).ok(),
            Some(vec![Service::Identity, Service::Authz])
        );
        assert_eq!(parse_skip(&s(&["audit"])).ok(), Some(vec![Service::Audit]));
        assert!(matches!(parse_skip(&s(&["nope"])), Err(CliError::Usage(_))));
    }
}
