//! Harness for the runner's tests against the real Docker Engine: the
//! identity/authz/audit stack, a runner on port 0 with its own data dir and
//! worker id, and a test image made from Debian's busybox-static and
//! loaded through the Docker API (no registry needed). Everything a test labelled is
//! removed when its runner is dropped.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use paddock_proto::authz::v1::policy_service_client::PolicyServiceClient;
use paddock_proto::sandbox::v1::sandbox_service_client::SandboxServiceClient;
use paddock_proto::sandbox::v1::*;
use paddock_sandbox_runner::docker::Engine;
use paddock_shared::auth::{self, BearerAuth};
use paddock_shared::client::Channel;
use paddock_shared::server::ServerHandle;
use paddock_testkit::{Backend, Stack, bearer};
use tonic::service::interceptor::InterceptedService;

pub use paddock_testkit::fixtures::*;

pub const IMAGE: &str = paddock_testkit::image::IMAGE;

/// The testkit's organization, whose owner approved the test images
/// (`paddock-test-*`; no image is approved by default).
pub async fn setup_org(stack: &Stack, id: &str) -> Org {
    let org = paddock_testkit::fixtures::setup_org(stack, id).await;
    approve_images(stack, &org, &["paddock-test-*"]).await;
    org
}

/// Sets the organization's approved images (as its owner).
pub async fn approve_images(stack: &Stack, org: &Org, images: &[&str]) {
    use paddock_proto::authz::v1::{SecuritySettings, UpdateSecuritySettingsRequest};
    stack
        .policy(&org.owner)
        .update_security_settings(UpdateSecuritySettingsRequest {
            settings: Some(SecuritySettings {
                name: format!("{}/securitySettings", org.name),
                allowed_images: images.iter().map(|i| (*i).to_owned()).collect(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["allowed_images".into()],
            }),
        })
        .await
        .expect("approve the test images");
}
pub const DOCKER: &str = "unix:///var/run/docker.sock";

pub type SandboxClient = SandboxServiceClient<InterceptedService<Channel, BearerAuth>>;
pub type PolicyClient = PolicyServiceClient<InterceptedService<Channel, BearerAuth>>;

/// Builds the test image once per test binary.
pub async fn test_image() {
    tokio::task::spawn_blocking(paddock_testkit::image::busybox_image)
        .await
        .expect("build the test image");
}

/// The stack plus a runner.
pub struct Env {
    // First, so it runs before the stack's data dir is removed.
    _cleanup: Cleanup,
    pub stack: Stack,
    pub runner: Option<ServerHandle>,
    pub runner_endpoint: String,
    pub config: paddock_sandbox_runner::Config,
}

pub fn runner_config(
    stack: &Stack,
    data_dir: PathBuf,
    worker: &str,
) -> paddock_sandbox_runner::Config {
    paddock_sandbox_runner::Config {
        common: paddock_shared::config::CommonConfig {
            data_dir,
            database_url: stack.database_url.clone(),
            identity_endpoint: stack.identity_endpoint.clone(),
            authz_endpoint: stack.authz_endpoint.clone(),
            audit_endpoint: Some(stack.audit_endpoint.clone()),
            ..paddock_shared::config::CommonConfig::listening_on(
                "127.0.0.1:0".parse().expect("addr"),
            )
        },
        docker_host: DOCKER.into(),
        worker_id: Some(worker.into()),
        stop_grace: Duration::from_secs(3),
        usage_interval: Duration::from_secs(1),
        scan_interval: Duration::from_millis(300),
        sandbox_endpoints: vec![("MCP".into(), "http://127.0.0.1:7180".into())],
        max_watches_per_caller: paddock_shared::streams::Limits::default().per_principal,
        max_watches_per_org: paddock_shared::streams::Limits::default().per_organization,
        sandbox_key: None,
    }
}

impl Env {
    pub async fn start(backend: Backend) -> Env {
        test_image().await;
        let stack = Stack::start(backend).await;
        let worker = format!("wt{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let config = runner_config(&stack, stack.dir.path().join("runner"), &worker);
        let runner = paddock_sandbox_runner::start(&config, &stack.service_token)
            .await
            .expect("start runner");
        Env {
            _cleanup: Cleanup(worker.clone(), config.common.data_dir.clone()),
            runner_endpoint: runner.endpoint(),
            runner: Some(runner),
            stack,
            config,
        }
    }

    pub fn sandboxes(&self, token: &str) -> SandboxClient {
        SandboxServiceClient::with_interceptor(
            auth::lazy_channel(&self.runner_endpoint).expect("channel"),
            bearer(token),
        )
        .max_decoding_message_size(8 << 20)
    }

    pub fn policies(&self, token: &str) -> PolicyClient {
        PolicyServiceClient::with_interceptor(
            auth::lazy_channel(&self.stack.authz_endpoint).expect("channel"),
            bearer(token),
        )
    }

    pub fn engine(&self) -> Engine {
        Engine::connect(DOCKER).expect("docker")
    }

    pub fn worker(&self) -> String {
        self.config.worker_id.clone().expect("worker id")
    }

    /// Stops the runner without any cleanup, the way a crash would.
    pub async fn crash_runner(&mut self) {
        if let Some(r) = self.runner.take() {
            r.shutdown().await;
        }
    }

    /// Starts the runner again with the same data dir, database and worker
    /// id (on a new port).
    pub async fn restart_runner(&mut self) {
        let runner = paddock_sandbox_runner::start(&self.config, &self.stack.service_token)
            .await
            .expect("restart runner");
        self.runner_endpoint = runner.endpoint();
        self.runner = Some(runner);
    }

    /// Stops it all; what the worker labelled is removed when the cleanup
    /// guard drops.
    pub async fn shutdown(mut self) {
        self.crash_runner().await;
        self.stack.shutdown().await;
    }
}

/// A test that panics never reaches [`Env::shutdown`]: remove what its
/// worker labelled anyway (synchronously, through the docker CLI).
/// Also unmounts the workspaces and credential tmpfs left under the
/// runner's data dir (a crashed runner leaves its sandboxes' mounts).
pub struct Cleanup(String, PathBuf);

/// A test that panics never reaches [`Env::shutdown`]: remove what its
/// worker labelled anyway.
impl Drop for Cleanup {
    fn drop(&mut self) {
        paddock_testkit::image::remove_worker_resources(&self.0);
        paddock_testkit::image::unmount_under(&self.1);
    }
}

pub fn spec(project: &str) -> SandboxSpec {
    SandboxSpec {
        agent: "bot".into(),
        project: project.into(),
        image: IMAGE.into(),
        ..Default::default()
    }
}

pub async fn create(
    client: &mut SandboxClient,
    spec: SandboxSpec,
) -> Result<Sandbox, tonic::Status> {
    client
        .create_sandbox(CreateSandboxRequest {
            parent: String::new(),
            spec: Some(spec),
        })
        .await
        .map(|r| r.into_inner().sandbox.expect("sandbox"))
}

/// What an exec printed and how it ended.
#[derive(Debug, Default)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: Option<ExecExit>,
}

impl Output {
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    pub fn code(&self) -> i32 {
        self.exit.as_ref().map(|e| e.exit_code).unwrap_or(-1)
    }
}

/// Runs argv in a sandbox, with optional stdin, and collects the output.
pub async fn exec(
    client: &mut SandboxClient,
    sandbox: &str,
    argv: &[&str],
    stdin: Option<&[u8]>,
) -> Result<Output, tonic::Status> {
    let mut messages = vec![ExecRequest {
        message: Some(exec_request::Message::Start(ExecStart {
            sandbox: sandbox.into(),
            command: argv.iter().map(|s| (*s).to_owned()).collect(),
            stdin: stdin.is_some(),
            ..Default::default()
        })),
    }];
    if let Some(data) = stdin {
        messages.push(ExecRequest {
            message: Some(exec_request::Message::Stdin(data.to_vec())),
        });
        messages.push(ExecRequest {
            message: Some(exec_request::Message::CloseStdin(true)),
        });
    }
    // Keep the request stream open until the exit arrives, as a real
    // client would.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    for m in messages {
        tx.send(m).await.expect("queue");
    }
    let mut stream = client
        .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut out = Output::default();
    while let Some(msg) = stream.message().await? {
        match msg.message {
            Some(exec_response::Message::Stdout(b)) => out.stdout.extend(b),
            Some(exec_response::Message::Stderr(b)) => out.stderr.extend(b),
            Some(exec_response::Message::Exit(e)) => out.exit = Some(e),
            None => {}
        }
    }
    drop(tx);
    Ok(out)
}

/// Waits until the sandbox reaches a terminal state (through WatchSandbox).
pub async fn wait_ended(client: &mut SandboxClient, name: &str) -> Sandbox {
    let mut stream = client
        .watch_sandbox(WatchSandboxRequest { name: name.into() })
        .await
        .expect("watch")
        .into_inner();
    let mut last = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Ok(Ok(Some(msg))) = tokio::time::timeout_at(deadline, stream.message()).await {
        last = msg.sandbox;
    }
    let last = last.expect("a state");
    assert!(
        last.state == SandboxState::Stopped as i32 || last.state == SandboxState::Failed as i32,
        "sandbox did not end: {last:?}"
    );
    last
}

/// Uploads a tar archive into the sandbox at `path`.
pub async fn upload(
    client: &mut SandboxClient,
    sandbox: &str,
    path: &str,
    archive: Vec<u8>,
) -> Result<UploadFilesResponse, tonic::Status> {
    let mut msgs = vec![UploadFilesRequest {
        message: Some(upload_files_request::Message::Start(UploadStart {
            sandbox: sandbox.into(),
            path: path.into(),
            ..Default::default()
        })),
    }];
    for chunk in archive.chunks(16 * 1024) {
        msgs.push(UploadFilesRequest {
            message: Some(upload_files_request::Message::Chunk(chunk.to_vec())),
        });
    }
    client
        .upload_files(tokio_stream::iter(msgs))
        .await
        .map(|r| r.into_inner())
}

/// Opens an exec stream of `start` and keeps its request side, for tests
/// that send stdin or signals while it runs.
pub async fn open_exec(
    client: &mut SandboxClient,
    start: ExecStart,
) -> (
    tokio::sync::mpsc::Sender<ExecRequest>,
    tonic::Streaming<ExecResponse>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(ExecRequest {
        message: Some(exec_request::Message::Start(start)),
    })
    .await
    .expect("start");
    let stream = client
        .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("exec")
        .into_inner();
    (tx, stream)
}
