//! `paddock dev`: every service in one process on loopback, SQLite under a
//! data dir (or PostgreSQL with `DATABASE_URL`), the bootstrap token in a
//! 0600 file. The bench starts the same stack on port 0.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use paddock_shared::secret::Secret;
use paddock_shared::server::{ServerHandle, load_or_create_token, write_secret_file};
use paddock_shared::token::TokenKind;
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
}

/// The running services and the endpoints clients use.
pub struct Stack {
    pub identity: Option<ServerHandle>,
    pub authz: Option<ServerHandle>,
    pub audit: Option<ServerHandle>,
    pub identity_endpoint: String,
    pub authz_endpoint: String,
    /// Empty when audit is skipped.
    pub audit_endpoint: String,
}

impl Stack {
    pub async fn shutdown(self) {
        if let Some(a) = self.audit {
            a.shutdown().await;
        }
        if let Some(a) = self.authz {
            a.shutdown().await;
        }
        if let Some(i) = self.identity {
            i.shutdown().await;
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

fn start_error(service: &str, e: &(dyn std::error::Error + Send + Sync)) -> CliError {
    CliError::new(Code::Unavailable, format!("{service} failed to start: {e}"))
}

/// Starts identity, authz and audit (each unless skipped), pointing each
/// at the others.
pub async fn start_stack(opts: StackOptions) -> Result<Stack, CliError> {
    paddock_shared::db::private_dir(&opts.data_dir).map_err(|e| {
        CliError::new(
            Code::FailedPrecondition,
            format!("cannot create data dir {}: {e}", opts.data_dir.display()),
        )
    })?;
    let token = service_token(&opts.data_dir)?;
    let run_identity = !opts.skip.contains(&Service::Identity);
    let run_authz = !opts.skip.contains(&Service::Authz);

    // authz binds first (port 0 allowed): identity needs its endpoint.
    let authz_listener = if run_authz {
        Some(
            paddock_shared::server::bind(opts.authz_listen)
                .await
                .map_err(|e| {
                    CliError::new(
                        Code::Unavailable,
                        format!("cannot bind {}: {e}", opts.authz_listen),
                    )
                })?,
        )
    } else {
        None
    };
    let authz_endpoint = authz_listener.as_ref().map_or_else(
        || opts.authz_endpoint.clone(),
        |(_, addr)| client_endpoint(*addr),
    );

    // audit binds before identity too: identity's outbox delivers to it.
    let audit_listener = if opts.skip.contains(&Service::Audit) {
        None
    } else {
        Some(
            paddock_shared::server::bind(opts.audit_listen)
                .await
                .map_err(|e| {
                    CliError::new(
                        Code::Unavailable,
                        format!("cannot bind {}: {e}", opts.audit_listen),
                    )
                })?,
        )
    };
    let audit_endpoint = audit_listener.as_ref().map_or_else(
        || opts.audit_endpoint.clone(),
        |(_, addr)| client_endpoint(*addr),
    );

    let identity = if run_identity {
        let config = paddock_identity::Config {
            common: paddock_shared::config::CommonConfig {
                data_dir: opts.data_dir.clone(),
                database_url: opts.database_url.clone(),
                authz_endpoint: authz_endpoint.clone(),
                // Events wait in identity's outbox while no audit is known.
                audit_endpoint: Some(audit_endpoint.clone()).filter(|e| !e.is_empty()),
                ..paddock_shared::config::CommonConfig::listening_on(opts.identity_listen)
            },
            last_used_flush: Duration::from_secs(10),
            // As for paddock-identity; unset, the key lives in the data dir.
            credential_key: std::env::var("PADDOCK_CREDENTIAL_KEY")
                .ok()
                .filter(|k| !k.trim().is_empty())
                .map(Secret::new),
        };
        Some(
            paddock_identity::start(&config, &token)
                .await
                .map_err(|e| start_error("identity", e.as_ref()))?,
        )
    } else {
        None
    };
    let identity_endpoint = identity.as_ref().map_or_else(
        || opts.identity_endpoint.clone(),
        |h| client_endpoint(h.addr),
    );

    let authz = match authz_listener {
        Some((listener, listen)) => {
            let config = paddock_authz::Config {
                common: paddock_shared::config::CommonConfig {
                    identity_endpoint: identity_endpoint.clone(),
                    data_dir: opts.data_dir.clone(),
                    database_url: opts.database_url.clone(),
                    // Events wait in authz's outbox while no audit is known.
                    audit_endpoint: Some(audit_endpoint.clone()).filter(|e| !e.is_empty()),
                    ..paddock_shared::config::CommonConfig::listening_on(listen)
                },
            };
            match paddock_authz::start_on(listener, &config, &token).await {
                Ok(h) => Some(h),
                Err(e) => {
                    if let Some(i) = identity {
                        i.shutdown().await;
                    }
                    return Err(start_error("authz", e.as_ref()));
                }
            }
        }
        None => None,
    };
    let audit = if let Some((listener, listen)) = audit_listener {
        let config = paddock_audit::Config {
            common: paddock_shared::config::CommonConfig {
                data_dir: opts.data_dir.clone(),
                database_url: opts.database_url.clone(),
                identity_endpoint: identity_endpoint.clone(),
                authz_endpoint: authz_endpoint.clone(),
                ..paddock_shared::config::CommonConfig::listening_on(listen)
            },
            retention_interval: Duration::from_secs(3600),
            max_tails_per_caller: paddock_shared::streams::Limits::default().per_principal,
            max_tails_per_org: paddock_shared::streams::Limits::default().per_organization,
        };
        match paddock_audit::start_on(listener, &config, &token).await {
            Ok(h) => Some(h),
            Err(e) => {
                if let Some(a) = authz {
                    a.shutdown().await;
                }
                if let Some(i) = identity {
                    i.shutdown().await;
                }
                return Err(start_error("audit", e.as_ref()));
            }
        }
    } else {
        None
    };
    Ok(Stack {
        audit_endpoint: audit
            .as_ref()
            .map_or_else(String::new, |h| client_endpoint(h.addr)),
        identity,
        authz,
        audit,
        identity_endpoint,
        authz_endpoint,
    })
}

fn service_token(data_dir: &Path) -> Result<Secret<String>, CliError> {
    let path = data_dir.join("service-token");
    load_or_create_token(&path, TokenKind::Service).map_err(|e| {
        CliError::new(
            Code::FailedPrecondition,
            format!("cannot read or create {}: {e}", path.display()),
        )
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
    let mut stack = start_stack(StackOptions {
        data_dir: args.data_dir.clone(),
        identity_listen: args.identity_listen,
        authz_listen: args.authz_listen,
        audit_listen: args.audit_listen,
        database_url: database_url_from_env(),
        skip: skip.clone(),
        identity_endpoint: global.identity_endpoint.clone(),
        authz_endpoint: global.authz_endpoint.clone(),
        audit_endpoint: global.audit_endpoint.clone(),
    })
    .await?;

    let audit_endpoint = if stack.audit.is_some() {
        stack.audit_endpoint.clone()
    } else {
        global.audit_endpoint.clone()
    };
    let mut runner = None;
    if !skip.contains(&Service::SandboxRunner) {
        let config = paddock_sandbox_runner::Config {
            common: paddock_shared::config::CommonConfig {
                data_dir: args.data_dir.clone(),
                database_url: database_url_from_env(),
                identity_endpoint: stack.identity_endpoint.clone(),
                authz_endpoint: stack.authz_endpoint.clone(),
                audit_endpoint: Some(audit_endpoint.clone()).filter(|e| !e.is_empty()),
                ..paddock_shared::config::CommonConfig::listening_on(args.sandbox_listen)
            },
            docker_host: args.docker_host.clone(),
            worker_id: args.worker_id.clone(),
            stop_grace: Duration::from_secs(3),
            usage_interval: Duration::from_secs(5),
            scan_interval: Duration::from_secs(2),
            sandbox_endpoints: Vec::new(),
            max_watches_per_caller: paddock_shared::streams::Limits::default().per_principal,
            max_watches_per_org: paddock_shared::streams::Limits::default().per_organization,
            sandbox_key: None,
        };
        let token = service_token(&args.data_dir)?;
        match paddock_sandbox_runner::start(&config, &token).await {
            Ok(h) => runner = Some(h),
            Err(e) => {
                stack.shutdown().await;
                return Err(start_error("sandbox-runner", e.as_ref()));
            }
        }
    }
    let sandbox_endpoint = runner.as_ref().map_or_else(
        || global.sandbox_endpoint.clone(),
        |h| client_endpoint(h.addr),
    );
    // The context is written before endpoints.json, which says "serving".
    let dev_context = write_context(
        global,
        [
            &stack.identity_endpoint,
            &stack.authz_endpoint,
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
        "identity": stack.identity_endpoint,
        "authz": stack.authz_endpoint,
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
        outln!("identity listening on {}", stack.identity_endpoint);
    }
    if stack.authz.is_some() {
        outln!("authz listening on {}", stack.authz_endpoint);
    }
    if stack.audit.is_some() {
        outln!("audit listening on {}", stack.audit_endpoint);
    }
    if runner.is_some() {
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
            &stack.identity_endpoint,
            &stack.authz_endpoint,
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
        res = wait_for(&mut runner) => {
            runner = None;
            Err(CliError::new(Code::Internal, format!("sandbox-runner stopped: {}", res.err().unwrap_or_else(|| "no error".to_owned()))))
        }
    };
    if let Some(r) = runner {
        r.shutdown().await;
    }
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
}
