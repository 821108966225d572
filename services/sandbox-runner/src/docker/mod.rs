//! The Docker Engine, through bollard: the few engine operations the
//! runner needs (containers, networks, volumes, images, logs). The hardened
//! container spec lives in `plan`. Everything Paddock creates carries the
//! `paddock.*` labels, so reconciliation and cleanup can find it.

mod plan;

pub use plan::{ContainerPlan, IDLE_COMMAND, container_body, tmp_bytes};

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, NetworkCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, ListContainersOptions, ListNetworksOptions,
    ListVolumesOptions, RemoveContainerOptions, RemoveVolumeOptions, StatsOptions,
    StopContainerOptions, WaitContainerOptions,
};
use futures_util::StreamExt;
use paddock_shared::error::Error;

pub const LABEL_MANAGED: &str = "paddock.managed";
pub const LABEL_ORG: &str = "paddock.org";
pub const LABEL_SANDBOX: &str = "paddock.sandbox";
pub const LABEL_WORKER: &str = "paddock.worker";
pub const LABEL_CACHE: &str = "paddock.cache";
pub const LABEL_INSTALLATION: &str = "paddock.installation";

/// The state of a container as the runner needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerState {
    pub running: bool,
    pub exit_code: i64,
    pub oom_killed: bool,
}

/// A labelled container found on the engine.
#[derive(Debug, Clone)]
pub struct Labelled {
    pub id: String,
    pub sandbox: String,
}

/// A handle on the local Docker Engine.
#[derive(Clone, Debug)]
pub struct Engine {
    docker: Docker,
    /// Image users already resolved, by image id and USER.
    users: std::sync::Arc<std::sync::Mutex<HashMap<String, Result<crate::users::UserIds, String>>>>,
    /// The socket or address it talks to, for error messages.
    pub host: String,
}

fn unreachable(host: &str, err: impl std::fmt::Display) -> Error {
    Error::FailedPrecondition(format!(
        "the Docker Engine at {host} is not reachable: {err}"
    ))
}

fn is_not_found(err: &bollard::errors::Error) -> bool {
    matches!(
        err,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn is_not_modified(err: &bollard::errors::Error) -> bool {
    matches!(
        err,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 304,
            ..
        }
    )
}

impl Engine {
    /// A client for `host` (`unix:///var/run/docker.sock` or a path). It
    /// does not contact the engine; [`Engine::ping`] does.
    pub fn connect(host: &str) -> Result<Self, Error> {
        let path = host.strip_prefix("unix://").unwrap_or(host);
        let docker = Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)
            .map_err(|e| unreachable(host, e))?;
        Ok(Self {
            docker,
            users: Default::default(),
            host: host.to_owned(),
        })
    }

    pub async fn ping(&self) -> Result<(), Error> {
        tokio::time::timeout(Duration::from_secs(5), self.docker.ping())
            .await
            .map_err(|_| unreachable(&self.host, "no answer within 5 s"))?
            .map(|_| ())
            .map_err(|e| unreachable(&self.host, e))
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    fn fail(&self, what: &str, err: bollard::errors::Error) -> Error {
        match err {
            bollard::errors::Error::DockerResponseServerError {
                status_code,
                message,
            } if status_code < 500 => Error::FailedPrecondition(format!("{what}: {message}")),
            bollard::errors::Error::DockerResponseServerError { message, .. } => {
                Error::Internal(format!("{what}: {message}"))
            }
            other => unreachable(&self.host, format!("{what}: {other}")),
        }
    }

    /// The user the image asks to run as, resolved to numeric ids through
    /// the image's own /etc/passwd and /etc/group (read from a container
    /// created, never started, for the purpose; cached per image id).
    /// None when the image names no user.
    #[tracing::instrument(name = "docker.image.inspect", skip_all, fields(otel.kind = "client"))]
    pub async fn image_user(
        &self,
        image: &str,
        worker: &str,
    ) -> Result<Option<crate::users::UserIds>, Error> {
        let info = match self.docker.inspect_image(image).await {
            Ok(info) => info,
            // NOT_FOUND, for the caller to answer as it must (a missing
            // image and a forbidden one look alike to a tenant).
            Err(e) if is_not_found(&e) => {
                return Err(Error::not_found(format!("image {image} on this worker")));
            }
            Err(e) => return Err(self.fail("inspecting the image", e)),
        };
        let user = info.config.and_then(|c| c.user).unwrap_or_default();
        if user.trim().is_empty() {
            return Ok(None);
        }
        let key = format!("{}\0{user}", info.id.unwrap_or_default());
        if let Some(known) = self
            .users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return known.clone().map(Some).map_err(Error::FailedPrecondition);
        }
        let (need_passwd, need_group) = crate::users::needs_files(&user);
        let (passwd, group) = if need_passwd || need_group {
            self.image_files(image, worker, need_group).await?
        } else {
            (None, None)
        };
        let resolved = crate::users::resolve(&user, passwd.as_deref(), group.as_deref())
            .map_err(|e| format!("image {image} cannot run: its USER {user:?}: {e}"));
        self.users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, resolved.clone());
        resolved.map(Some).map_err(Error::FailedPrecondition)
    }

    /// The image's /etc/passwd (and /etc/group), each at most 1 MiB, read
    /// from a container that is created and removed, never started.
    async fn image_files(
        &self,
        image: &str,
        worker: &str,
        with_group: bool,
    ) -> Result<(Option<String>, Option<String>), Error> {
        let labels = HashMap::from([
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
            (LABEL_WORKER.to_owned(), worker.to_owned()),
            (LABEL_SANDBOX.to_owned(), "image-probe".to_owned()),
        ]);
        let created = self
            .docker
            .create_container(
                None::<CreateContainerOptions>,
                ContainerCreateBody {
                    image: Some(image.to_owned()),
                    cmd: Some(vec!["/nonexistent".to_owned()]),
                    entrypoint: Some(vec![]),
                    labels: Some(labels),
                    network_disabled: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| self.fail("reading the image's users", e))?;
        let passwd = self.read_file(&created.id, "/etc/passwd").await;
        let group = if with_group {
            self.read_file(&created.id, "/etc/group").await
        } else {
            Ok(None)
        };
        let _ = self.remove(&created.id).await;
        Ok((passwd?, group?))
    }

    /// One regular file of a container, through the archive API.
    async fn read_file(&self, container: &str, path: &str) -> Result<Option<String>, Error> {
        const MAX: usize = 1 << 20;
        let mut stream = self.docker.download_from_container(
            container,
            Some(bollard::query_parameters::DownloadFromContainerOptions {
                path: path.to_owned(),
            }),
        );
        let mut archive = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    archive.extend_from_slice(&bytes);
                    if archive.len() > MAX + 64 * 1024 {
                        return Err(Error::FailedPrecondition(format!(
                            "the image's {path} is larger than 1 MiB"
                        )));
                    }
                }
                Err(e) if is_not_found(&e) => return Ok(None),
                Err(e) => return Err(self.fail("reading the image's users", e)),
            }
        }
        let mut tar = tar::Archive::new(archive.as_slice());
        let entries = tar
            .entries()
            .map_err(|e| Error::Internal(format!("reading {path} from the image: {e}")))?;
        for entry in entries {
            let mut entry = entry
                .map_err(|e| Error::Internal(format!("reading {path} from the image: {e}")))?;
            if entry.header().entry_type().is_file() {
                let mut text = String::new();
                std::io::Read::read_to_string(
                    &mut std::io::Read::take(&mut entry, MAX as u64),
                    &mut text,
                )
                .map_err(|_| {
                    Error::FailedPrecondition(format!("the image's {path} is not text"))
                })?;
                return Ok(Some(text));
            }
        }
        Ok(None)
    }

    /// Creates and starts a container; returns its id. A container that
    /// was created but did not start is removed.
    pub async fn create_start(&self, plan: &ContainerPlan) -> Result<String, Error> {
        let id = self.create(plan).await?;
        self.start(&id).await?;
        Ok(id)
    }

    /// Creates a container (not started); returns its id.
    #[tracing::instrument(name = "docker.container.create", skip_all, fields(otel.kind = "client"))]
    pub async fn create(&self, plan: &ContainerPlan) -> Result<String, Error> {
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(plan.name.clone()),
                    ..Default::default()
                }),
                container_body(plan),
            )
            .await
            .map_err(|e| match e {
                bollard::errors::Error::DockerResponseServerError { message, .. }
                    if message.contains("storage-opt") =>
                {
                    Error::FailedPrecondition(format!(
                        "this worker's storage driver cannot bound a writable root file system \
                         (Docker: {message}); the organization's writable_root_filesystem \
                         relaxation cannot be honoured here with a disk bound"
                    ))
                }
                other => self.fail("creating the container", other),
            })?;
        Ok(created.id)
    }

    /// Starts a created container; one that does not start is removed.
    #[tracing::instrument(name = "docker.container.start", skip_all, fields(otel.kind = "client"))]
    pub async fn start(&self, id: &str) -> Result<(), Error> {
        if let Err(e) = self.docker.start_container(id, None).await {
            let _ = self.remove(id).await;
            return Err(self.fail("starting the container", e));
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `grace`. A container already stopped or
    /// gone is fine.
    #[tracing::instrument(name = "docker.container.stop", skip_all, fields(otel.kind = "client"))]
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), Error> {
        let options = StopContainerOptions {
            t: Some(grace.as_secs().max(1).min(i32::MAX as u64) as i32),
            signal: None,
        };
        match self.docker.stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) || is_not_modified(&e) => Ok(()),
            Err(e) => Err(self.fail("stopping the container", e)),
        }
    }

    /// Removes a container (and its anonymous volumes), running or not.
    #[tracing::instrument(name = "docker.container.remove", skip_all, fields(otel.kind = "client"))]
    pub async fn remove(&self, id: &str) -> Result<(), Error> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            link: false,
        };
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()), // removal already in progress
            Err(e) => Err(self.fail("removing the container", e)),
        }
    }

    /// Waits until the container exits. Returns `None` when it is gone.
    pub async fn wait(&self, id: &str) -> Result<Option<i64>, Error> {
        let mut stream = self.docker.wait_container(
            id,
            Some(WaitContainerOptions {
                condition: "not-running".into(),
            }),
        );
        match stream.next().await {
            Some(Ok(r)) => Ok(Some(r.status_code)),
            // A non-zero exit arrives as this error.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                Ok(Some(code))
            }
            Some(Err(e)) if is_not_found(&e) => Ok(None),
            Some(Err(e)) => Err(self.fail("waiting for the container", e)),
            None => Ok(None),
        }
    }

    /// Copies the container's output (its main process's stdout and
    /// stderr) into `log` until the container stops. `since_now` skips
    /// what it printed before (a sandbox adopted after a restart, whose
    /// earlier output is kept already).
    pub async fn follow_logs(&self, id: &str, log: &crate::logs::SandboxLog, since_now: bool) {
        use bollard::container::LogOutput;
        use paddock_proto::sandbox::v1::LogStream;
        let since = if since_now {
            i32::try_from(paddock_shared::time::now_micros() / 1_000_000).unwrap_or(0)
        } else {
            0
        };
        let options = bollard::query_parameters::LogsOptionsBuilder::new()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .since(since)
            .build();
        let mut stream = self.docker.logs(id, Some(options));
        while let Some(item) = stream.next().await {
            match item {
                Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                    log.append(LogStream::Stdout, &message)
                }
                Ok(LogOutput::StdErr { message }) => log.append(LogStream::Stderr, &message),
                Ok(LogOutput::StdIn { .. }) => {}
                Err(e) => {
                    tracing::debug!(container = id, error = %e, "the log stream ended");
                    break;
                }
            }
        }
    }

    /// The container's state, or `None` when it is gone.
    #[tracing::instrument(name = "docker.container.inspect", skip_all, fields(otel.kind = "client"))]
    pub async fn state(&self, id: &str) -> Result<Option<ContainerState>, Error> {
        match self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(info) => {
                let state = info.state.unwrap_or_default();
                Ok(Some(ContainerState {
                    running: state.running.unwrap_or(false),
                    exit_code: state.exit_code.unwrap_or(0),
                    oom_killed: state.oom_killed.unwrap_or(false),
                }))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.fail("inspecting the container", e)),
        }
    }

    fn worker_filter(worker: &str) -> HashMap<String, Vec<String>> {
        HashMap::from([("label".to_owned(), vec![format!("{LABEL_WORKER}={worker}")])])
    }

    /// Every container this worker labelled, running or not.
    pub async fn labelled_containers(&self, worker: &str) -> Result<Vec<Labelled>, Error> {
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(Self::worker_filter(worker)),
                ..Default::default()
            }))
            .await
            .map_err(|e| self.fail("listing containers", e))?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let sandbox = c.labels.as_ref()?.get(LABEL_SANDBOX)?.clone();
                Some(Labelled { id: c.id?, sandbox })
            })
            .collect())
    }

    /// Every network this worker labelled: (name, sandbox id).
    pub async fn labelled_networks(&self, worker: &str) -> Result<Vec<(String, String)>, Error> {
        let list = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(Self::worker_filter(worker)),
            }))
            .await
            .map_err(|e| self.fail("listing networks", e))?;
        Ok(list
            .into_iter()
            .filter_map(|n| {
                let sandbox = n.labels.as_ref()?.get(LABEL_SANDBOX)?.clone();
                Some((n.name?, sandbox))
            })
            .collect())
    }

    /// A bridge network of one sandbox, with no traffic between sandboxes.
    #[tracing::instrument(name = "docker.network.create", skip_all, fields(otel.kind = "client"))]
    pub async fn create_network(
        &self,
        name: &str,
        bridge: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), Error> {
        self.docker
            .create_network(NetworkCreateRequest {
                name: name.to_owned(),
                driver: Some("bridge".into()),
                labels: Some(labels),
                options: Some(HashMap::from([
                    (
                        "com.docker.network.bridge.enable_icc".to_owned(),
                        "false".to_owned(),
                    ),
                    (
                        "com.docker.network.bridge.name".to_owned(),
                        bridge.to_owned(),
                    ),
                ])),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|e| self.fail("creating the sandbox network", e))
    }

    #[tracing::instrument(name = "docker.network.remove", skip_all, fields(otel.kind = "client"))]
    pub async fn remove_network(&self, name: &str) -> Result<(), Error> {
        match self.docker.remove_network(name).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.fail("removing the sandbox network", e)),
        }
    }

    /// Every cache volume this worker labelled for `org` (all orgs when
    /// `org` is empty).
    pub async fn cache_volumes(&self, worker: &str, org: &str) -> Result<Vec<String>, Error> {
        let mut labels = vec![format!("{LABEL_WORKER}={worker}")];
        if !org.is_empty() {
            labels.push(format!("{LABEL_ORG}={org}"));
        }
        let list = self
            .docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(HashMap::from([("label".to_owned(), labels)])),
            }))
            .await
            .map_err(|e| self.fail("listing volumes", e))?;
        Ok(list
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect())
    }

    #[tracing::instrument(name = "docker.volume.remove", skip_all, fields(otel.kind = "client"))]
    pub async fn remove_volume(&self, name: &str) -> Result<(), Error> {
        match self
            .docker
            .remove_volume(name, Some(RemoveVolumeOptions { force: true }))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.fail("removing the volume", e)),
        }
    }

    /// One stats sample: (CPU seconds used, memory in use or its peak).
    pub async fn sample(&self, id: &str) -> Option<(f64, i64)> {
        let mut stream = self.docker.stats(
            id,
            Some(StatsOptions {
                stream: false,
                one_shot: true,
            }),
        );
        let stats = stream.next().await?.ok()?;
        let cpu = stats
            .cpu_stats
            .and_then(|c| c.cpu_usage)
            .and_then(|u| u.total_usage)
            .unwrap_or(0) as f64
            / 1e9;
        let memory = stats
            .memory_stats
            .map(|m| m.max_usage.or(m.usage).unwrap_or(0))
            .unwrap_or(0) as i64;
        Some((cpu, memory))
    }
}
