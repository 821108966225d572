//! Downloads: a tar stream of a path under a sandbox's workspace, built on
//! the host from the workspace directory itself.
//!
//! Everything under /workspace is the sandbox's to shape, links included,
//! so nothing here follows a link: each directory on the way is opened
//! with `O_NOFOLLOW` relative to the one before (no path is looked up
//! twice, so a link swapped in between cannot redirect the walk), a link
//! inside the tree is archived as a link, and only what the sandbox user
//! itself could read is read. Docker's archive API, used before, resolves
//! links inside the container's root and reads as root: `ln -s /etc e`
//! then downloading `e/shadow` returned a root-only file of the image.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use paddock_shared::error::{Error, Result};
use paddock_shared::names::truncate;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

/// Deepest directory nesting archived.
const MAX_DEPTH: usize = 128;

pub(crate) fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// What a download names, resolved and held open.
pub struct Target {
    /// The directory holding it.
    parent: OwnedFd,
    /// Its name in `parent` (None: the workspace itself).
    entry: Option<String>,
    /// The name of the archive's top entry (the path's last component, as
    /// `docker cp` names it).
    top: String,
    stat: Stat,
    uid: u32,
}

fn errno(path: &str, e: Errno) -> Error {
    match e {
        Errno::NOENT => Error::not_found(format!("/workspace/{}", truncate(path))),
        Errno::LOOP | Errno::NOTDIR | Errno::MLINK => Error::invalid(format!(
            "path /workspace/{} passes through a symbolic link or a file; \
             downloads never follow links",
            truncate(path)
        )),
        Errno::ACCESS | Errno::PERM => Error::PermissionDenied(format!(
            "/workspace/{} is not readable by the sandbox user",
            truncate(path)
        )),
        other => Error::Internal(format!("reading the workspace: {other}")),
    }
}

/// Whether the sandbox user `uid` could read (and, for a directory, enter)
/// what `stat` describes. The group is taken as the uid's own.
fn readable(stat: &Stat, uid: u32) -> bool {
    if uid == 0 {
        return true;
    }
    let mode = stat.st_mode;
    let (r, x) = if stat.st_uid == uid {
        (0o400, 0o100)
    } else if stat.st_gid == uid {
        (0o040, 0o010)
    } else {
        (0o004, 0o001)
    };
    let is_dir = FileType::from_raw_mode(mode) == FileType::Directory;
    mode & r != 0 && (!is_dir || mode & x != 0)
}

/// Resolves `parts` (the components after /workspace, already confined)
/// under the workspace directory `root`, as sandbox user `uid`.
pub fn open(root: &Path, parts: &[&str], uid: u32) -> Result<Target> {
    let path = parts.join("/");
    let mut dir = rustix::fs::openat(rustix::fs::CWD, root, dir_flags(), Mode::empty()).map_err(
        |e| match e {
            Errno::NOENT => Error::FailedPrecondition(
                "the sandbox's workspace is gone (it is removed when the sandbox ends unless kept)"
                    .into(),
            ),
            other => errno(&path, other),
        },
    )?;
    let Some((last, walk)) = parts.split_last() else {
        let stat = rustix::fs::fstat(&dir).map_err(|e| errno(&path, e))?;
        return Ok(Target {
            parent: dir,
            entry: None,
            top: "workspace".into(),
            stat,
            uid,
        });
    };
    for part in walk {
        let next = rustix::fs::openat(&dir, *part, dir_flags(), Mode::empty())
            .map_err(|e| errno(&path, e))?;
        let stat = rustix::fs::fstat(&next).map_err(|e| errno(&path, e))?;
        if !readable(&stat, uid) {
            return Err(errno(&path, Errno::ACCESS));
        }
        dir = next;
    }
    let stat =
        rustix::fs::statat(&dir, *last, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| errno(&path, e))?;
    Ok(Target {
        parent: dir,
        entry: Some((*last).to_owned()),
        top: (*last).to_owned(),
        stat,
        uid,
    })
}

/// Checks that the directories on the way to `parts` under the workspace
/// `root` that exist are directories, not links the sandbox made (those
/// that do not exist yet will be made by the upload). An upload checks
/// every entry's parents with it before Docker extracts anything.
pub fn no_links_on_the_way(root: &Path, parts: &[&str]) -> Result<()> {
    let path = parts.join("/");
    let mut dir = rustix::fs::openat(rustix::fs::CWD, root, dir_flags(), Mode::empty())
        .map_err(|e| errno(&path, e))?;
    for part in parts {
        match rustix::fs::openat(&dir, *part, dir_flags(), Mode::empty()) {
            Ok(next) => dir = next,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(errno(&path, e)),
        }
    }
    Ok(())
}

impl Target {
    /// Writes the tar archive to `out`.
    pub fn write(self, out: impl Write) -> Result<()> {
        let mut tar = tar::Builder::new(out);
        tar.follow_symlinks(false);
        let mut archive = Archive {
            tar: &mut tar,
            uid: self.uid,
        };
        match &self.entry {
            None => {
                let fd = rustix::fs::openat(&self.parent, ".", dir_flags(), Mode::empty())
                    .map_err(|e| errno("", e))?;
                archive.dir(&fd, &self.top, &self.stat, 0)?;
            }
            Some(entry) => archive.entry(&self.parent, entry, &self.top, &self.stat, 0)?,
        }
        tar.finish()
            .map_err(|e| Error::Unavailable(format!("writing the download: {e}")))
    }
}

struct Archive<'a, W: Write> {
    tar: &'a mut tar::Builder<W>,
    uid: u32,
}

fn header(stat: &Stat, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    // Permissions only: no setuid, setgid or sticky bits leave the sandbox.
    h.set_mode(stat.st_mode & 0o777);
    h.set_mtime(stat.st_mtime.max(0) as u64);
    h.set_uid(u64::from(stat.st_uid));
    h.set_gid(u64::from(stat.st_gid));
    h
}

fn write_err(e: std::io::Error) -> Error {
    Error::Unavailable(format!("writing the download: {e}"))
}

impl<W: Write> Archive<'_, W> {
    /// One directory entry of `dir`, by name, already stat'ed (no follow).
    fn entry(
        &mut self,
        dir: &OwnedFd,
        name: &str,
        path: &str,
        stat: &Stat,
        depth: usize,
    ) -> Result<()> {
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::Directory => {
                if !readable(stat, self.uid) || depth >= MAX_DEPTH {
                    return Ok(());
                }
                let fd = match rustix::fs::openat(dir, name, dir_flags(), Mode::empty()) {
                    Ok(fd) => fd,
                    // Gone or swapped for something else meanwhile: skip it.
                    Err(_) => return Ok(()),
                };
                self.dir(&fd, path, stat, depth)
            }
            FileType::RegularFile => self.file(dir, name, path, stat),
            FileType::Symlink => {
                let target = match rustix::fs::readlinkat(dir, name, Vec::new()) {
                    Ok(t) => t.into_string().unwrap_or_default(),
                    Err(_) => return Ok(()),
                };
                let mut h = header(stat, tar::EntryType::Symlink, 0);
                self.tar
                    .append_link(&mut h, path, target)
                    .map_err(write_err)
            }
            // FIFOs, sockets and devices are not files to copy (and opening
            // a FIFO would block).
            _ => Ok(()),
        }
    }

    fn dir(&mut self, fd: &OwnedFd, path: &str, stat: &Stat, depth: usize) -> Result<()> {
        let mut h = header(stat, tar::EntryType::Directory, 0);
        self.tar
            .append_data(&mut h, format!("{path}/"), std::io::empty())
            .map_err(write_err)?;
        let dup = rustix::io::dup(fd).map_err(|e| errno(path, e))?;
        let mut names = Vec::new();
        let listing = rustix::fs::Dir::new(dup).map_err(|e| errno(path, e))?;
        for item in listing {
            let item = item.map_err(|e| errno(path, e))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        names.sort();
        for name in names {
            let Ok(child) = rustix::fs::statat(fd, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) else {
                continue;
            };
            self.entry(fd, &name, &format!("{path}/{name}"), &child, depth + 1)?;
        }
        Ok(())
    }

    fn file(&mut self, dir: &OwnedFd, name: &str, path: &str, stat: &Stat) -> Result<()> {
        if !readable(stat, self.uid) {
            return Ok(());
        }
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let Ok(fd) = rustix::fs::openat(dir, name, flags, Mode::empty()) else {
            return Ok(());
        };
        // What was opened must be what was stat'ed: a regular file.
        let Ok(opened) = rustix::fs::fstat(&fd) else {
            return Ok(());
        };
        if FileType::from_raw_mode(opened.st_mode) != FileType::RegularFile
            || opened.st_ino != stat.st_ino
            || opened.st_dev != stat.st_dev
        {
            return Ok(());
        }
        let size = opened.st_size.max(0) as u64;
        let mut h = header(&opened, tar::EntryType::Regular, size);
        // The file may shrink or grow while it is read: exactly `size`
        // bytes go out either way, so the archive stays well formed.
        let body = std::fs::File::from(fd)
            .take(size)
            .chain(std::io::repeat(0))
            .take(size);
        self.tar.append_data(&mut h, path, body).map_err(write_err)
    }
}

/// A `Write` that sends chunks of the archive down a channel, from a
/// blocking thread to the response stream.
pub struct ChunkWriter {
    buf: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<std::result::Result<Vec<u8>, tonic::Status>>,
}

const CHUNK: usize = 64 * 1024;

impl ChunkWriter {
    pub fn new(tx: tokio::sync::mpsc::Sender<std::result::Result<Vec<u8>, tonic::Status>>) -> Self {
        Self {
            buf: Vec::with_capacity(CHUNK),
            tx,
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client left"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

impl Drop for ChunkWriter {
    fn drop(&mut self) {
        let _ = self.send();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(archive: &[u8]) -> Vec<String> {
        let mut tar = tar::Archive::new(archive);
        tar.entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                format!(
                    "{}{}",
                    e.path().expect("path").display(),
                    if e.header().entry_type().is_symlink() {
                        "@"
                    } else {
                        ""
                    }
                )
            })
            .collect()
    }

    fn download(root: &Path, parts: &[&str]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        open(root, parts, 0)?.write(&mut out)?;
        Ok(out)
    }

    #[test]
    fn links_are_archived_never_followed() {
        let ws = tempfile::tempdir().expect("dir");
        let outside = tempfile::tempdir().expect("dir");
        std::fs::write(outside.path().join("secret"), "host secret").expect("write");
        std::fs::create_dir(ws.path().join("dist")).expect("mkdir");
        std::fs::write(ws.path().join("dist/a.js"), "a").expect("write");
        std::os::unix::fs::symlink(outside.path(), ws.path().join("e")).expect("link");
        std::os::unix::fs::symlink(outside.path().join("secret"), ws.path().join("dist/s"))
            .expect("link");

        // Through the link: refused, never the file behind it.
        let err = download(ws.path(), &["e", "secret"]).expect_err("followed a link");
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        // The link itself: archived as a link.
        assert_eq!(names(&download(ws.path(), &["e"]).expect("link")), ["e@"]);
        // A tree holding a link: the link stays a link.
        let tree = download(ws.path(), &["dist"]).expect("dist");
        assert_eq!(names(&tree), ["dist/", "dist/a.js", "dist/s@"]);
        assert!(!String::from_utf8_lossy(&tree).contains("host secret"));
        // The whole workspace.
        let all = download(ws.path(), &[]).expect("all");
        assert!(!String::from_utf8_lossy(&all).contains("host secret"));
        assert!(names(&all).contains(&"workspace/dist/a.js".to_owned()));
        // Missing.
        assert!(matches!(
            download(ws.path(), &["nope"]),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn only_what_the_sandbox_user_may_read() {
        use std::os::unix::fs::PermissionsExt as _;
        let ws = tempfile::tempdir().expect("dir");
        std::fs::write(ws.path().join("mine"), "ok").expect("write");
        std::fs::write(ws.path().join("root-only"), "no").expect("write");
        std::fs::set_permissions(
            ws.path().join("root-only"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod");
        std::fs::set_permissions(
            ws.path().join("mine"),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        // The files are owned by whoever runs the test; as another uid only
        // the world-readable one is read.
        let mut out = Vec::new();
        open(ws.path(), &[], 4242)
            .expect("open")
            .write(&mut out)
            .expect("write");
        let listed = names(&out);
        assert!(listed.contains(&"workspace/mine".to_owned()), "{listed:?}");
        assert!(
            !listed.contains(&"workspace/root-only".to_owned()),
            "{listed:?}"
        );
    }

    #[test]
    fn fifos_do_not_block() {
        let ws = tempfile::tempdir().expect("dir");
        let status = std::process::Command::new("mkfifo")
            .arg(ws.path().join("pipe"))
            .status()
            .expect("mkfifo");
        assert!(status.success());
        assert_eq!(
            names(&download(ws.path(), &[]).expect("all")),
            ["workspace/"]
        );
    }
}
