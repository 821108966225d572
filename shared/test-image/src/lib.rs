//! For tests and benches only: a minimal image made on this host with no
//! registry. Its one layer holds the host's static busybox (Debian's
//! busybox-static) and its applet links; the layer, its config and a
//! manifest naming the tag are packed in memory as a `docker save` archive
//! and loaded with the Docker API's image load (bollard's `import_image`).
#![forbid(unsafe_code)]

use std::path::Path;

use bollard::Docker;
use bollard::query_parameters::ImportImageOptionsBuilder;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};

/// Where Debian's busybox-static installs busybox.
const BUSYBOX: &[&str] = &["/bin/busybox", "/usr/bin/busybox"];

/// The image's /etc/passwd unless a test gives its own.
pub const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home/sandbox:/bin/sh\n";

/// Why an image could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no busybox on this host: install Debian's busybox-static")]
    NoBusybox,
    #[error("building the rootfs: {0}")]
    Rootfs(#[from] std::io::Error),
    #[error("the Docker Engine: {0}")]
    Docker(#[from] bollard::errors::Error),
    #[error("the Docker Engine loaded the archive but has no image {0}")]
    NotLoaded(String),
}

/// One busybox image: its tag and what varies between test images.
#[derive(Debug, Clone, Copy)]
pub struct Busybox<'a> {
    /// The tag, e.g. `paddock-test-busybox:1`.
    pub tag: &'a str,
    /// The mode of /tmp: Docker gives a tmpfs mounted at /tmp the mode of
    /// the image's /tmp, and many real images ship a root-owned 0755 one.
    pub tmp_mode: u32,
    /// The contents of /etc/passwd.
    pub passwd: &'a str,
    /// The config's `USER`, if any.
    pub user: Option<&'a str>,
}

impl<'a> Busybox<'a> {
    /// The plain image: /tmp 1777, root and nobody in /etc/passwd, no USER.
    pub fn new(tag: &'a str) -> Self {
        Self {
            tag,
            tmp_mode: 0o1777,
            passwd: PASSWD,
            user: None,
        }
    }

    /// Loads the image unless the engine already has the tag.
    pub async fn ensure(&self, docker: &Docker) -> Result<(), Error> {
        if docker.inspect_image(self.tag).await.is_ok() {
            return Ok(());
        }
        let archive = Bytes::from(self.archive()?);
        let mut progress = docker.import_image(
            ImportImageOptionsBuilder::new().quiet(true).build(),
            bollard::body_full(archive),
            None,
        );
        while let Some(step) = progress.next().await {
            step?;
        }
        docker
            .inspect_image(self.tag)
            .await
            .map(|_| ())
            .map_err(|_| Error::NotLoaded(self.tag.to_owned()))
    }

    /// [`Busybox::ensure`] through the local engine (`DOCKER_HOST` or the
    /// default socket), from synchronous code: it runs on a thread of its
    /// own, so it may be called from inside an async runtime too.
    pub fn ensure_blocking(&self) -> Result<(), Error> {
        std::thread::scope(|s| {
            s.spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async {
                    let docker = Docker::connect_with_local_defaults()?;
                    self.ensure(&docker).await
                })
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// The image as a `docker save` archive: manifest, config, one layer.
    pub fn archive(&self) -> Result<Vec<u8>, Error> {
        let layer = self.layer()?;
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&layer)));
        let mut config = json!({
            "architecture": architecture(),
            "os": "linux",
            // Fixed, so the same inputs give the same image id.
            "created": "1970-01-01T00:00:00Z",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        });
        if let Some(user) = self.user {
            config["config"]["User"] = json!(user);
        }
        let config = serde_json::to_vec(&config).map_err(std::io::Error::other)?;
        let config_name = format!("{}.json", hex::encode(Sha256::digest(&config)));
        let layer_name = format!("{}/layer.tar", &diff_id["sha256:".len()..]);
        let manifest = serde_json::to_vec(&json!([{
            "Config": config_name,
            "RepoTags": [self.tag],
            "Layers": [layer_name],
        }]))
        .map_err(std::io::Error::other)?;
        let mut archive = tar::Builder::new(Vec::new());
        append_file(&mut archive, &config_name, 0o644, &config)?;
        append_file(&mut archive, &layer_name, 0o644, &layer)?;
        append_file(&mut archive, "manifest.json", 0o644, &manifest)?;
        Ok(archive.into_inner()?)
    }

    /// The root filesystem as a tar: /bin with busybox and a link per
    /// applet, /etc/passwd, and empty /tmp, /workspace and /home.
    fn layer(&self) -> Result<Vec<u8>, Error> {
        let busybox = BUSYBOX
            .iter()
            .find(|p| Path::new(p).exists())
            .ok_or(Error::NoBusybox)?;
        let binary = std::fs::read(busybox)?;
        let list = std::process::Command::new(busybox).arg("--list").output()?;
        let mut layer = tar::Builder::new(Vec::new());
        for dir in ["bin", "etc", "workspace", "home"] {
            append_dir(&mut layer, dir, 0o755)?;
        }
        append_dir(&mut layer, "tmp", self.tmp_mode)?;
        append_file(&mut layer, "bin/busybox", 0o755, &binary)?;
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            let applet = applet.trim();
            if !applet.is_empty() && applet != "busybox" {
                let mut header = header(tar::EntryType::Symlink, 0o777, 0);
                layer.append_link(&mut header, format!("bin/{applet}"), "busybox")?;
            }
        }
        append_file(&mut layer, "etc/passwd", 0o644, self.passwd.as_bytes())?;
        Ok(layer.into_inner()?)
    }
}

/// The image architecture of this host, as Docker names it.
fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        other => other,
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

fn append_dir(tar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) -> std::io::Result<()> {
    let mut header = header(tar::EntryType::Directory, mode, 0);
    tar.append_data(&mut header, format!("{path}/"), std::io::empty())
}

fn append_file(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    mode: u32,
    data: &[u8],
) -> std::io::Result<()> {
    let mut header = header(tar::EntryType::Regular, mode, data.len() as u64);
    tar.append_data(&mut header, path, data)
}

#[cfg(test)]
mod tests;
