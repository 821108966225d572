//! Support for the end-to-end tests: builds and finds the real `paddock`
//! binary, runs `paddock dev` as a child process on port 0 with its own data
//! dir and database, and runs CLI commands against it.
#![forbid(unsafe_code)]

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use paddock_testkit::{Backend, TempDir};
use serde_json::Value;

/// How long `paddock dev` may take to come up (PostgreSQL migrations on a
/// busy 2-core machine included).
const START_DEADLINE: Duration = Duration::from_secs(60);

/// How long `paddock dev` may take to shut down gracefully.
const STOP_DEADLINE: Duration = Duration::from_secs(15);

/// Generates a SQLite and a PostgreSQL test from one `fn(Backend)`.
#[macro_export]
macro_rules! e2e_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::Backend::Sqlite)
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::Backend::Postgres)
                }
            )*
        }
    };
}

/// The `paddock` binary of this workspace, built once per test process.
///
/// `cargo test --workspace` builds a package's binaries only for that
/// package's own integration tests, so this crate asks cargo for the binary
/// itself (a no-op when it is up to date) and takes the path cargo reports.
pub fn paddock_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_bin("paddock", "paddock"))
}

/// The `paddock-audit` binary, built like [`paddock_bin`].
pub fn audit_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_bin("paddock-audit", "paddock-audit"))
}

fn build_bin(package: &str, bin: &str) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "--message-format=json",
        "-p",
        package,
        "--bin",
        bin,
        "--manifest-path",
    ])
    .arg(&manifest);
    // Build with the profile this test was built with (target/<profile>/deps/this-test).
    let profile = std::env::current_exe().ok().and_then(|exe| {
        Some(
            exe.parent()?
                .parent()?
                .file_name()?
                .to_string_lossy()
                .into_owned(),
        )
    });
    match profile.as_deref() {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build for a workspace binary");
    assert!(
        out.status.success(),
        "cargo build -p {package} failed: {}",
        out.status
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == bin)
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo build reported no {bin} executable"))
}

/// A free loopback port below the kernel's ephemeral range (32768 and up
/// on Linux), for a server that must come back on the same port after a
/// kill: ports that other tests bind as port 0 never land there, so
/// nothing else grabs it in between.
pub fn stable_port() -> std::net::SocketAddr {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 500) as u16 * 20;
    for _ in 0..10_000 {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % 10_000;
        let port = 20_000 + (base - 20_000 + offset) % 10_000;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free port in 20000-29999");
}

/// What one CLI invocation did.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Asserts exit 0 and parses stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        assert_eq!(self.code, 0, "expected success, got {self:#?}");
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }

    /// Asserts exit 1 with the `-o json` error object `{"code": CODE,
    /// "message": ...}` alone on stderr; returns the message.
    #[track_caller]
    pub fn failure(&self, code: &str) -> String {
        assert_eq!(self.code, 1, "expected exit 1 with {code}, got {self:#?}");
        self.error_message(code)
    }

    /// Asserts exit 2 and the error object on stderr: a command that could
    /// not decide (`paddock can` with a bad token or permission).
    #[track_caller]
    pub fn undecided(&self, code: &str) -> String {
        assert_eq!(self.code, 2, "expected exit 2 with {code}, got {self:#?}");
        self.error_message(code)
    }

    #[track_caller]
    fn error_message(&self, code: &str) -> String {
        let err: Value = serde_json::from_str(self.stderr.trim())
            .unwrap_or_else(|e| panic!("stderr is not one JSON object ({e}): {self:#?}"));
        assert_eq!(err["code"], code, "{self:#?}");
        let keys: Vec<&String> = err
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        // An error from a call names the trace of the run; a usage error
        // made no call.
        match keys.as_slice() {
            [c, m] => assert_eq!((c.as_str(), m.as_str()), ("code", "message"), "{self:#?}"),
            [c, m, t] => {
                assert_eq!(
                    (c.as_str(), m.as_str(), t.as_str()),
                    ("code", "message", "trace_id"),
                    "{self:#?}"
                );
                let trace = err["trace_id"].as_str().unwrap_or_default();
                assert!(
                    trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()),
                    "{self:#?}"
                );
            }
            _ => panic!("unexpected error object: {self:#?}"),
        }
        err["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no message: {self:#?}"))
            .to_owned()
    }

    /// Asserts exit 1 with nothing on stderr: a denied `paddock can`.
    #[track_caller]
    pub fn failure_silent(&self) {
        assert_eq!(self.code, 1, "expected exit 1, got {self:#?}");
        assert_eq!(self.stderr, "", "expected no error line, got {self:#?}");
    }
}

/// Runs `paddock dev` on port 0 with its data dir under `root`, its output
/// appended to `root/dev.log`.
fn spawn_dev(
    root: &Path,
    database_url: Option<&str>,
    extra: &[String],
    env: &[(String, String)],
) -> Child {
    let bin = paddock_bin();
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("dev.log"))
        .expect("open dev.log");
    let mut cmd = Command::new(bin);
    // Relative, like the default `paddock-data`: the services must not
    // depend on an absolute data dir (Docker refuses relative bind mounts).
    cmd.arg("dev")
        .args(["--data-dir", "data"])
        .args([
            "--identity-listen",
            "127.0.0.1:0",
            "--authz-listen",
            "127.0.0.1:0",
            "--audit-listen",
            "127.0.0.1:0",
            "--sandbox-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .env_remove("DATABASE_URL")
        .env_remove("PADDOCK_IDENTITY_DATABASE_URL")
        .env_remove("PADDOCK_AUDIT_DATABASE_URL")
        .env_remove("PADDOCK_TOKEN")
        .env_remove("PADDOCK_CONTEXT")
        .env_remove("PADDOCK_ENDPOINT")
        // Its context goes to this test's own config dir.
        .env("XDG_CONFIG_HOME", root.join("config"))
        .env("HOME", root)
        .env("PADDOCK_LOG", "info")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log handle"))
        .stderr(log);
    if let Some(url) = database_url {
        cmd.env("DATABASE_URL", url);
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()))
}

/// A child process killed (SIGKILL) when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `paddock dev` running as a child process; killed when dropped.
pub struct Dev {
    child: Child,
    pub backend: Backend,
    database_url: Option<String>,
    pub identity_endpoint: String,
    pub authz_endpoint: String,
    pub audit_endpoint: String,
    pub sandbox_endpoint: String,
    /// The admin listener (`/metrics`, `/healthz`).
    pub admin_endpoint: String,
    env: Vec<(String, String)>,
    // Dropped last: the child is gone before its data dir is removed.
    dir: TempDir,
}

impl Dev {
    /// Starts `paddock dev` on port 0 with a fresh data dir and, for
    /// PostgreSQL, a fresh database; returns once it has written
    /// `endpoints.json`.
    pub fn start(backend: Backend) -> Dev {
        Self::start_with(backend, &[])
    }

    /// [`Dev::start`] with more `paddock dev` arguments.
    pub fn start_with(backend: Backend, extra: &[String]) -> Dev {
        Self::start_with_env(backend, extra, &[])
    }

    /// [`Dev::start_with`] with more environment variables for `paddock dev`.
    pub fn start_with_env(backend: Backend, extra: &[String], env: &[(&str, &str)]) -> Dev {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let database_url = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime")
                    .block_on(paddock_testkit::fresh_postgres()),
            ),
        };
        let dir = TempDir::new();
        let child = spawn_dev(dir.path(), database_url.as_deref(), extra, &env);
        let mut dev = Dev {
            child,
            backend,
            database_url,
            identity_endpoint: String::new(),
            authz_endpoint: String::new(),
            audit_endpoint: String::new(),
            sandbox_endpoint: String::new(),
            admin_endpoint: String::new(),
            env,
            dir,
        };
        dev.wait_until_serving();
        dev
    }

    /// Stops `paddock dev` with SIGTERM, as a service manager would, and
    /// returns how it exited.
    pub fn stop(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + STOP_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for paddock dev") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "paddock dev did not stop within {STOP_DEADLINE:?} of SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts `paddock dev` again on the same data dir and database (after
    /// [`Dev::stop`]); the endpoints change.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.data_dir().join("endpoints.json"));
        self.child = spawn_dev(
            self.dir.path(),
            self.database_url.as_deref(),
            &[],
            &self.env,
        );
        self.wait_until_serving();
    }

    /// Kills `paddock dev` with SIGKILL: a crash, nothing flushed.
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn wait_until_serving(&mut self) {
        let endpoints = self.wait_for_endpoints(&self.data_dir().join("endpoints.json"));
        self.identity_endpoint = endpoints["identity"]
            .as_str()
            .expect("identity endpoint")
            .to_owned();
        self.authz_endpoint = endpoints["authz"]
            .as_str()
            .expect("authz endpoint")
            .to_owned();
        self.audit_endpoint = endpoints["audit"]
            .as_str()
            .expect("audit endpoint")
            .to_owned();
        self.sandbox_endpoint = endpoints["sandbox"]
            .as_str()
            .expect("sandbox endpoint")
            .to_owned();
        self.admin_endpoint = endpoints["admin"]
            .as_str()
            .expect("admin endpoint")
            .to_owned();
    }

    /// The sandbox runner's worker id (labels on everything it creates).
    pub fn worker_id(&self) -> Option<String> {
        std::fs::read_to_string(self.data_dir().join("worker-id"))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }

    /// Polls for `endpoints.json` (complete JSON) until the deadline or until
    /// the child exits.
    fn wait_for_endpoints(&mut self, path: &Path) -> Value {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(v) = std::fs::read_to_string(path)
                .ok()
                .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            {
                return v;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "paddock dev exited with {status} before writing endpoints.json:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "paddock dev wrote no endpoints.json within {START_DEADLINE:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What `paddock dev` has printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dev.log")).unwrap_or_default()
    }

    /// The PostgreSQL database of this stack, if any.
    pub fn database_url(&self) -> Option<&str> {
        self.database_url.as_deref()
    }

    /// Starts `paddock-audit` as its own process on `listen`, beside this
    /// stack (same data dir, database and service token); killed when the
    /// returned guard is dropped.
    pub fn spawn_audit(&self, listen: std::net::SocketAddr) -> KillOnDrop {
        let data = self.data_dir();
        let mut cmd = Command::new(audit_bin());
        cmd.arg("--listen")
            .arg(listen.to_string())
            .arg("--data-dir")
            .arg(&data)
            .arg("--identity-endpoint")
            .arg(&self.identity_endpoint)
            .arg("--authz-endpoint")
            .arg(&self.authz_endpoint)
            .arg("--service-token-file")
            .arg(data.join("service-token"))
            .env_remove("PADDOCK_AUDIT_DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // Its log, to show if it does not come up.
        let log_path = self.dir.path().join(format!("audit-{}.log", listen.port()));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("audit log file");
        cmd.stderr(log);
        if let Some(url) = &self.database_url {
            cmd.arg("--database-url").arg(url);
        }
        let mut child = KillOnDrop(cmd.spawn().expect("spawn paddock-audit"));
        // Serving once it accepts connections; a loaded machine can take a
        // while to start a process, so the wait is generous.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if std::net::TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok() {
                return child;
            }
            if let Ok(Some(status)) = child.0.try_wait() {
                panic!(
                    "paddock-audit exited ({status}) before listening on {listen}:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "paddock-audit is not listening on {listen} after 90 s:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The platform bootstrap token `paddock dev` wrote.
    pub fn bootstrap_token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("bootstrap-token"))
            .expect("read bootstrap-token")
            .trim()
            .to_owned()
    }

    /// Organization `acme` (owner alice@acme.test) with agent `bot`, the
    /// test image approved and built; returns the owner's key.
    pub fn acme_with_bot(&self) -> String {
        paddock_testkit::image::busybox_image();
        let out = self
            .paddock(
                Some(&self.bootstrap_token()),
                &["org", "create", "acme", "--owner", "alice@acme.test"],
            )
            .json();
        let owner = out["secret"].as_str().expect("secret").to_owned();
        self.paddock(Some(&owner), &["agent", "create", "bot"])
            .json();
        // No image runs until the owner approves it.
        self.paddock(
            Some(&owner),
            &["security", "set", "--allow-image", "paddock-test-*"],
        )
        .json();
        owner
    }

    /// Invites `email` as `role` and accepts the invite without a token;
    /// returns what `member accept` printed (`member`, `secret`).
    pub fn join(&self, owner: &str, email: &str, role: &str) -> Value {
        let invite = self
            .paddock(Some(owner), &["member", "invite", email, "--role", role])
            .json();
        let code = invite["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no code in {invite:#}"));
        let accepted = self.paddock(None, &["member", "accept", code]).json();
        assert!(accepted["secret"].is_string(), "{accepted:#}");
        accepted
    }

    /// Runs `paddock -o json ARGS` against this stack, with `token` as
    /// `PADDOCK_TOKEN` (none when `None`).
    pub fn paddock(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut cmd = self.command(args);
        cmd.env("PADDOCK_IDENTITY_ENDPOINT", &self.identity_endpoint)
            .env("PADDOCK_AUTHZ_ENDPOINT", &self.authz_endpoint)
            .env("PADDOCK_AUDIT_ENDPOINT", &self.audit_endpoint)
            .env("PADDOCK_SANDBOX_ENDPOINT", &self.sandbox_endpoint);
        if let Some(t) = token {
            cmd.env("PADDOCK_TOKEN", t);
        }
        run(cmd, None)
    }

    /// `paddock -o json ARGS` with only the config dir of this stack (no
    /// endpoint or token variables): what a shell with contexts runs.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.table_command(&["-o", "json"]);
        cmd.args(args);
        cmd
    }

    /// [`Dev::command`] without `-o json`: what a person sees.
    pub fn table_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(paddock_bin());
        cmd.args(args)
            .env_remove("PADDOCK_TOKEN")
            .env_remove("PADDOCK_CONTEXT")
            .env_remove("PADDOCK_ENDPOINT")
            .env_remove("PADDOCK_IDENTITY_ENDPOINT")
            .env_remove("PADDOCK_AUTHZ_ENDPOINT")
            .env_remove("PADDOCK_AUDIT_ENDPOINT")
            .env_remove("PADDOCK_SANDBOX_ENDPOINT")
            .env("XDG_CONFIG_HOME", self.config_home())
            .env("HOME", self.dir.path())
            .current_dir(self.dir.path());
        cmd
    }

    /// The `XDG_CONFIG_HOME` of this stack and its commands.
    pub fn config_home(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    /// Runs `args` until `done` holds for its output or the deadline passes;
    /// returns the last output. For effects bounded by a cache TTL.
    pub fn paddock_until(
        &self,
        token: Option<&str>,
        args: &[&str],
        within: Duration,
        done: impl Fn(&Output) -> bool,
    ) -> Output {
        let deadline = Instant::now() + within;
        loop {
            let out = self.paddock(token, args);
            if done(&out) || Instant::now() >= deadline {
                return out;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Runs `cmd` with `stdin` (nothing when `None`) and collects its output.
pub fn run(mut cmd: Command, stdin: Option<&str>) -> Output {
    use std::io::Write;
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run paddock");
    if let Some(text) = stdin
        && let Some(mut pipe) = child.stdin.take()
    {
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait for paddock");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Containers, networks and volumes its runner labelled.
        if let Some(worker) = self.worker_id() {
            paddock_testkit::image::remove_worker_resources(&worker);
        }
        paddock_testkit::image::unmount_under(&self.data_dir());
        if std::thread::panicking() {
            eprintln!(
                "---- paddock dev ({:?}) log ----\n{}",
                self.backend,
                self.log()
            );
        }
    }
}

/// A client tool `scripts/test` installs (grpcurl 1.8.6, the Python venv)
/// under `PADDOCK_TEST_TOOLS`, by default `/var/tmp/paddock-test-tools`.
/// Panics, naming the command that installs it, when it is missing: these
/// tests never skip.
pub fn test_tool(relative: &str) -> PathBuf {
    let root = std::env::var_os("PADDOCK_TEST_TOOLS")
        .filter(|dir| !dir.is_empty())
        .map_or_else(
            || PathBuf::from("/var/tmp/paddock-test-tools"),
            PathBuf::from,
        );
    let path = root.join(relative);
    assert!(
        path.is_file(),
        "{} is missing: run the tests with scripts/test, which installs it",
        path.display()
    );
    path
}

impl Dev {
    /// The directory `paddock dev` runs in; its data dir is `data` under it.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Creates organization `org` with the bootstrap token; returns the
    /// owner's key secret.
    pub fn create_org(&self, org: &str, owner: &str) -> String {
        let out = self
            .paddock(
                Some(&self.bootstrap_token()),
                &["org", "create", org, "--owner", owner],
            )
            .json();
        out["secret"]
            .as_str()
            .filter(|s| s.starts_with("pdk_"))
            .unwrap_or_else(|| panic!("no secret in {out:#}"))
            .to_owned()
    }
}
