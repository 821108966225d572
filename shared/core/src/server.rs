//! The server stack every Paddock service runs, read top to bottom:
//! admission (trace context, authenticate, authorize) in front of the
//! service's routes, gRPC health and reflection (v1 and v1alpha) beside
//! them.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::auth::Admission;

/// Largest request message a Paddock server decodes.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Binds `addr` (port 0 picks a free port) and returns the listener with
/// the address it got.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// The health reporter and the routes every server carries besides its own.
pub async fn health_and_reflection(
    serving: &[&str],
) -> Result<(HealthReporter, Routes), tonic_reflection::server::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in serving {
        reporter
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    // Advertise only what this server serves, not every service in the
    // shared descriptor set.
    let reflection = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for name in serving {
            builder = builder.with_service_name(*name);
        }
        builder
    };
    // v1alpha beside v1, as grpc-go registers both: grpcurl before 1.8.8,
    // grpcui and several GUI clients speak only v1alpha.
    Ok((
        reporter,
        Routes::new(health)
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?),
    ))
}

/// Serves `routes` on `listener` behind the admission layer until
/// `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    admission: Admission,
    routes: Routes,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .layer(crate::stack::server(admission))
        .add_routes(routes)
        // A custom incoming stream does not inherit the builder's nodelay.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}

/// A running server: its address, and how to stop it.
pub struct ServerHandle {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    background: Vec<tokio::task::JoinHandle<()>>,
    closing: tokio::sync::watch::Sender<bool>,
}

impl ServerHandle {
    /// Serves in a background task until [`ServerHandle::shutdown`].
    pub fn spawn(
        listener: TcpListener,
        addr: SocketAddr,
        admission: Admission,
        routes: Routes,
    ) -> Self {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, admission, routes, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            shutdown: Some(tx),
            task,
            background: Vec::new(),
            closing: tokio::sync::watch::channel(false).0,
        }
    }

    /// Ties a closing signal to the server: it turns true when shutdown
    /// starts, so long-lived streams can end and let the server drain.
    pub fn with_closing(mut self, closing: tokio::sync::watch::Sender<bool>) -> Self {
        self.closing = closing;
        self
    }

    /// Ties background tasks (cache watchers, flushers) to the server: they
    /// are aborted when it stops.
    pub fn with_background(
        mut self,
        tasks: impl IntoIterator<Item = tokio::task::JoinHandle<()>>,
    ) -> Self {
        self.background.extend(tasks);
        self
    }

    /// The `http://` endpoint clients use.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets in-flight calls finish, and waits.
    pub async fn shutdown(mut self) {
        let _ = self.closing.send(true);
        for t in &self.background {
            t.abort();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
        for t in self.background.drain(..) {
            t.abort();
        }
    }

    /// Waits until the server stops by itself (an error).
    pub async fn wait(&mut self) -> Result<(), String> {
        match (&mut self.task).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        for t in &self.background {
            t.abort();
        }
    }
}

/// Reads a token file, or mints one of `kind` and writes it with mode 0600.
pub fn load_or_create_token(
    path: &std::path::Path,
    kind: crate::token::TokenKind,
) -> std::io::Result<crate::secret::Secret<String>> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let text = text.trim();
        if crate::token::parse(text).is_ok_and(|t| t.kind == kind) {
            return Ok(crate::secret::Secret::new(text.to_owned()));
        }
    }
    let (_, token) = crate::token::mint(kind);
    write_secret_file(path, &token)?;
    Ok(crate::secret::Secret::new(token))
}

/// Writes a secret to a file only its owner can read (0600).
pub fn write_secret_file(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Resolves on SIGINT or SIGTERM, so `docker stop` and Ctrl-C both drain.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// The whole `main` of a service binary: the library's `Config`, loaded
/// from its defaults, `--config FILE` (TOML), `PADDOCK_*` variables and
/// its `Flags`; the shared service token; the admin listener; then serve
/// until SIGINT/SIGTERM and drain. The calling crate depends on `clap` and
/// `tokio`.
#[macro_export]
macro_rules! service_main {
    ($lib:ident, $bin:literal, $about:literal) => {
        #[derive(clap::Parser)]
        #[command(name = $bin, about = $about)]
        struct Cli {
            /// A TOML file of settings (keys as the flags, with `_`):
            /// below the environment and the flags.
            #[arg(long = "config", value_name = "FILE")]
            config_file: Option<std::path::PathBuf>,
            #[command(flatten)]
            flags: $lib::Flags,
        }

        #[tokio::main]
        async fn main() -> std::process::ExitCode {
            let cli = <Cli as clap::Parser>::parse();
            match run(cli).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    // Said plainly, not as a Debug dump.
                    eprintln!("{}: {e}", $bin);
                    std::process::ExitCode::FAILURE
                }
            }
        }

        async fn run(cli: Cli) -> Result<(), $lib::StartError> {
            let telemetry = $crate::telemetry::init(&[$bin]);
            let config = $lib::Config::load(cli.config_file.as_deref(), &cli.flags)?;
            let token = $crate::server::load_or_create_token(
                &config.common.service_token_path(),
                $crate::token::TokenKind::Service,
            )?;
            let admin = $crate::admin::AdminServer::start(config.common.admin_listen)
                .await
                .map_err(|e| {
                    format!(
                        "cannot bind the admin listener {}: {e} (set --admin-listen)",
                        config.common.admin_listen
                    )
                })?;
            let server = $lib::start(&config, &token).await?;
            $crate::server::shutdown_signal().await;
            server.shutdown().await;
            admin.shutdown().await;
            telemetry.shutdown().await;
            Ok(())
        }
    };
}
