//! Host-side files of a sandbox: its workspace (a size-bounded ext4 file
//! system of its own, loop-mounted on the host and bind-mounted at
//! /workspace), its credential files (mounted read-only, from a directory
//! only the runner can read), and the scanner that turns workspace changes
//! into coalesced `file.modify` events. The scanner reads metadata only,
//! never contents, and never follows links the sandbox made.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use paddock_shared::error::{Error, Result};

/// Where the runner keeps per-sandbox host files.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
    /// Serializes making and mounting caches, which sandboxes share.
    caches: std::sync::Arc<tokio::sync::Mutex<()>>,
}

fn io(what: &str, e: std::io::Error) -> Error {
    Error::Internal(format!("{what}: {e}"))
}

impl Layout {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.to_path_buf(),
            caches: Default::default(),
        }
    }

    pub fn workspace(&self, org: &str, id: &str) -> PathBuf {
        self.root.join("workspaces").join(org).join(id)
    }

    fn credentials_dir(&self, id: &str) -> PathBuf {
        self.root.join("credentials").join(id)
    }

    fn disk_image(&self, id: &str) -> PathBuf {
        self.root.join("disks").join(format!("{id}.ext4"))
    }

    /// Creates the workspace: an ext4 file system of `disk_bytes` in a
    /// sparse file, loop-mounted (nosuid, nodev) at the workspace path and
    /// owned by the sandbox user. Its size is the sandbox's disk bound:
    /// a full workspace answers ENOSPC inside, the host disk is untouched.
    /// The file system's root is all the sandbox sees of the host (its
    /// mountinfo names no host path). Without root, mkfs.ext4 or loop
    /// devices the bound cannot be enforced, and the sandbox is refused.
    pub async fn create_workspace(
        &self,
        org: &str,
        id: &str,
        uid: u32,
        disk_bytes: u64,
    ) -> Result<PathBuf> {
        let dir = self.workspace(org, id);
        self.bounded_disk(&self.disk_image(id), &dir, disk_bytes, uid, true)
            .await?;
        hand_to(&dir, uid, 0o700)?;
        Ok(dir)
    }

    /// Makes the workspace's mount point, so a container can be created
    /// with it while its file system is still being made.
    pub fn workspace_mount_point(&self, org: &str, id: &str) -> Result<PathBuf> {
        let dir = self.workspace(org, id);
        std::fs::create_dir_all(&dir).map_err(|e| io("creating the workspace", e))?;
        Ok(dir)
    }

    /// An organization's package cache `name`: like a workspace, a file
    /// system of its own of `disk_bytes` (the organization's disk bound),
    /// made once and shared by the organization's sandboxes on this worker,
    /// so a sandbox cannot fill the host through its caches either. Handed
    /// to `uid` (the sandbox user) each time it is mounted into a sandbox.
    pub async fn cache(
        &self,
        installation: &str,
        org: &str,
        name: &str,
        uid: u32,
        disk_bytes: u64,
    ) -> Result<PathBuf> {
        let _one_at_a_time = self.caches.lock().await;
        let dir = self.caches_dir(org).join(name);
        let image = self
            .root
            .join("disks")
            .join(format!("cache-{installation}-{org}-{name}.ext4"));
        if !is_mount_point(&dir) {
            let fresh = !image.exists();
            self.bounded_disk(&image, &dir, disk_bytes, uid, fresh)
                .await?;
        }
        hand_to(&dir, uid, 0o755)?;
        Ok(dir)
    }

    fn caches_dir(&self, org: &str) -> PathBuf {
        self.root.join("caches").join(org)
    }

    /// Mounts the ext4 file system in `image` at `dir`, making it first
    /// (`fresh`: a sparse file of `disk_bytes`, owned by `uid`).
    async fn bounded_disk(
        &self,
        image: &Path,
        dir: &Path,
        disk_bytes: u64,
        uid: u32,
        fresh: bool,
    ) -> Result<()> {
        let refused = |why: String| {
            Error::FailedPrecondition(format!(
                "this worker cannot enforce the disk bound of {disk_bytes} bytes: {why}"
            ))
        };
        let disks = self.root.join("disks");
        for d in [dir, disks.as_path()] {
            std::fs::create_dir_all(d).map_err(|e| io("creating a bounded disk", e))?;
        }
        std::fs::set_permissions(&disks, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io("securing the disks directory", e))?;
        if fresh {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(image)
                .map_err(|e| io("creating a bounded disk", e))?;
            file.set_len(disk_bytes)
                .map_err(|e| io("sizing a bounded disk", e))?;
            drop(file);
            let owner = format!("root_owner={uid}:{uid},lazy_itable_init=1,lazy_journal_init=1");
            run(
                "mkfs.ext4",
                &["-q", "-F", "-m", "0", "-O", "^has_journal", "-E", &owner],
                image,
                None,
            )
            .await
            .map_err(|e| {
                let _ = std::fs::remove_file(image);
                refused(e)
            })?;
        }
        run("mount", &["-o", "loop,nosuid,nodev"], image, Some(dir))
            .await
            .map_err(|e| {
                if fresh {
                    let _ = std::fs::remove_file(image);
                }
                refused(e)
            })?;
        let _ = std::fs::remove_dir(dir.join("lost+found"));
        Ok(())
    }

    /// Unmounts and deletes an organization's caches.
    pub async fn remove_caches(&self, installation: &str, org: &str) {
        let dir = self.caches_dir(org);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if is_mount_point(&path)
                    && let Err(e) = run("umount", &["-l"], &path, None).await
                {
                    tracing::warn!(org, error = %e, "cannot unmount a cache");
                    return;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                let image = self
                    .root
                    .join("disks")
                    .join(format!("cache-{installation}-{org}-{name}.ext4"));
                if let Err(e) = std::fs::remove_file(&image)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(org, error = %e, "cannot remove a cache disk");
                }
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(org, error = %e, "cannot remove the organization's caches");
        }
    }

    /// Makes sure a kept workspace is mounted (after a host restart its
    /// disk is still there, the mount is not).
    pub async fn ensure_mounted(&self, org: &str, id: &str) -> Result<()> {
        let dir = self.workspace(org, id);
        let image = self.disk_image(id);
        if !image.exists() || is_mount_point(&dir) {
            return Ok(());
        }
        run("mount", &["-o", "loop,nosuid,nodev"], &image, Some(&dir))
            .await
            .map_err(|e| Error::FailedPrecondition(format!("cannot mount the kept workspace: {e}")))
    }

    /// Removes what is left of an organization's workspaces directory.
    pub fn remove_org_workspaces(&self, org: &str) {
        let dir = self.root.join("workspaces").join(org);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(org, error = %e, "cannot remove the organization's workspaces");
        }
    }

    /// Makes the sandbox's credentials directory: a small tmpfs of its own
    /// (0700), so values never touch the disk and the sandbox's mountinfo
    /// shows no host path for its credential files. Where tmpfs cannot be
    /// mounted (the runner is not root) it is a plain 0700 directory.
    pub async fn prepare_credentials(&self, id: &str) -> Result<()> {
        let dir = self.credentials_dir(id);
        std::fs::create_dir_all(&dir).map_err(|e| io("creating the credentials directory", e))?;
        if !is_mount_point(&dir)
            && let Err(e) = mount_tmpfs(&dir).await
        {
            tracing::warn!(sandbox = id, error = %e, "credentials stay on disk: cannot mount a tmpfs");
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io("securing the credentials directory", e))
    }

    /// Writes a credential value into a file only the sandbox user can read,
    /// in a directory only the runner can enter. Returns the host path.
    pub fn write_credential(
        &self,
        id: &str,
        index: usize,
        value: &[u8],
        uid: u32,
    ) -> Result<PathBuf> {
        let dir = self.credentials_dir(id);
        std::fs::create_dir_all(&dir).map_err(|e| io("creating the credentials directory", e))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io("securing the credentials directory", e))?;
        let path = dir.join(format!("{index}"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&path)
            .map_err(|e| io("writing a credential file", e))?;
        file.write_all(value)
            .map_err(|e| io("writing a credential file", e))?;
        hand_to(&path, uid, 0o400)?;
        Ok(path)
    }

    /// Makes the sandbox's /tmp: a tmpfs of `bytes` on the host, mode 1777
    /// whatever the image's /tmp is (Docker's own tmpfs takes the mode of
    /// the image's directory, and 0755 root shuts the sandbox user out).
    /// Its pages are charged to the sandbox's memory like Docker's tmpfs.
    /// `None` where tmpfs cannot be mounted (the runner is not root).
    pub async fn prepare_tmp(&self, id: &str, bytes: i64) -> Option<PathBuf> {
        let dir = self.root.join("tmp").join(id);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!(sandbox = id, error = %e, "cannot make the /tmp mount point");
            return None;
        }
        if is_mount_point(&dir) {
            return Some(dir);
        }
        let options = format!("size={bytes},mode=1777,nosuid,nodev");
        match run(
            "mount",
            &["-t", "tmpfs", "-o", &options, "tmpfs"],
            &dir,
            None,
        )
        .await
        {
            Ok(()) => Some(dir),
            Err(e) => {
                tracing::debug!(sandbox = id, error = %e, "no host tmpfs for /tmp");
                let _ = std::fs::remove_dir(&dir);
                None
            }
        }
    }

    /// Unmounts and removes a sandbox's /tmp.
    pub async fn remove_tmp(&self, id: &str) {
        let dir = self.root.join("tmp").join(id);
        if is_mount_point(&dir)
            && let Err(e) = run("umount", &["-l"], &dir, None).await
        {
            tracing::warn!(sandbox = id, error = %e, "cannot unmount /tmp");
            return;
        }
        if let Err(e) = std::fs::remove_dir(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(sandbox = id, error = %e, "cannot remove the /tmp mount point");
        }
    }

    /// Removes the credential files of a sandbox.
    pub async fn remove_credentials(&self, id: &str) {
        let dir = self.credentials_dir(id);
        if is_mount_point(&dir)
            && let Err(e) = run("umount", &["-l"], &dir, None).await
        {
            tracing::warn!(sandbox = id, error = %e, "cannot unmount the credentials tmpfs");
        }
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(sandbox = id, error = %e, "cannot remove credential files");
        }
    }

    /// Removes a workspace: unmounts it and deletes its disk.
    pub async fn remove_workspace(&self, org: &str, id: &str) {
        let dir = self.workspace(org, id);
        if is_mount_point(&dir) {
            // Lazy: a process still holding a file must not keep the disk.
            if let Err(e) = run("umount", &["-l"], &dir, None).await {
                tracing::warn!(sandbox = id, error = %e, "cannot unmount the workspace");
                return;
            }
        }
        if let Err(e) = std::fs::remove_file(self.disk_image(id))
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(sandbox = id, error = %e, "cannot remove the workspace disk");
        }
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(sandbox = id, error = %e, "cannot remove the workspace");
        }
    }
}

/// Whether `dir` is the root of a mounted file system.
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (
        std::fs::symlink_metadata(dir),
        dir.parent().map(std::fs::symlink_metadata),
    ) {
        (Ok(d), Some(Ok(p))) => d.dev() != p.dev(),
        _ => false,
    }
}

async fn mount_tmpfs(dir: &Path) -> std::result::Result<(), String> {
    run(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=4m,mode=0700,nosuid,nodev,noexec",
            "tmpfs",
        ],
        dir,
        None,
    )
    .await
}

/// Runs `program args... path [target]`; the error is its stderr.
async fn run(
    program: &str,
    args: &[&str],
    path: &Path,
    target: Option<&Path>,
) -> std::result::Result<(), String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).arg(path);
    if let Some(t) = target {
        cmd.arg(t);
    }
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Gives a path to the sandbox user. When the runner is not root it cannot
/// chown; the directory is then opened to everyone instead (its parent data
/// directory is still the runner's own).
fn hand_to(path: &Path, uid: u32, mode: u32) -> Result<()> {
    match std::os::unix::fs::chown(path, Some(uid), Some(uid)) {
        Ok(()) => std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| io("setting permissions", e)),
        Err(_) => {
            let open = if mode & 0o100 != 0 { 0o777 } else { 0o444 };
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(open))
                .map_err(|e| io("setting permissions", e))
        }
    }
}

/// What the scanner knows of one file: size and modification time.
type Entry = (u64, i128);

/// How a path changed between two scans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Path under /workspace, e.g. "src/main.rs".
    pub path: String,
    pub operation: &'static str,
    pub size: u64,
}

/// Most entries one scan walks; a workspace above this is scanned partly.
const MAX_ENTRIES: usize = 50_000;

/// Watches one workspace by comparing snapshots: a path changed several
/// times between two scans yields one change (debounced and coalesced).
#[derive(Debug)]
pub struct Scanner {
    root: PathBuf,
    known: HashMap<String, Entry>,
}

impl Scanner {
    /// Starts from the workspace as it is now.
    pub fn new(root: PathBuf) -> Self {
        let known = snapshot(&root);
        Self { root, known }
    }

    /// The changes since the last scan, sorted by path.
    pub fn scan(&mut self) -> Vec<Change> {
        let now = snapshot(&self.root);
        let mut changes = Vec::new();
        for (path, (size, mtime)) in &now {
            match self.known.get(path) {
                None => changes.push(Change {
                    path: path.clone(),
                    operation: "create",
                    size: *size,
                }),
                Some((s, m)) if s != size || m != mtime => changes.push(Change {
                    path: path.clone(),
                    operation: "modify",
                    size: *size,
                }),
                Some(_) => {}
            }
        }
        for path in self.known.keys() {
            if !now.contains_key(path) {
                changes.push(Change {
                    path: path.clone(),
                    operation: "delete",
                    size: 0,
                });
            }
        }
        self.known = now;
        changes.sort_by(|a, b| a.path.cmp(&b.path));
        changes
    }
}

fn snapshot(root: &Path) -> HashMap<String, Entry> {
    let mut out = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if out.len() >= MAX_ENTRIES {
                return out;
            }
            // file_type() does not follow symlinks.
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if kind.is_dir() {
                stack.push(path);
                continue;
            }
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos() as i128)
                .unwrap_or(0);
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            out.insert(rel.to_string_lossy().into_owned(), (meta.len(), mtime));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_coalesced_per_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("kept"), b"1").expect("write");
        let mut scanner = Scanner::new(dir.path().to_path_buf());
        assert!(scanner.scan().is_empty());

        std::fs::create_dir(dir.path().join("src")).expect("mkdir");
        for i in 0..5 {
            std::fs::write(dir.path().join("src/a.rs"), vec![b'x'; i + 1]).expect("write");
        }
        std::fs::write(dir.path().join("kept"), b"22").expect("write");
        let changes = scanner.scan();
        assert_eq!(
            changes,
            vec![
                Change {
                    path: "kept".into(),
                    operation: "modify",
                    size: 2
                },
                Change {
                    path: "src/a.rs".into(),
                    operation: "create",
                    size: 5
                },
            ]
        );
        std::fs::remove_file(dir.path().join("kept")).expect("rm");
        assert_eq!(
            scanner.scan(),
            vec![Change {
                path: "kept".into(),
                operation: "delete",
                size: 0
            }]
        );
    }

    #[test]
    fn links_are_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("secret"), b"x").expect("write");
        let mut scanner = Scanner::new(dir.path().to_path_buf());
        std::os::unix::fs::symlink(outside.path(), dir.path().join("escape")).expect("symlink");
        let changes = scanner.scan();
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].path, "escape");
    }
}
