//! File transfer rules: every path is confined to /workspace. An upload is
//! checked entry by entry before any of it reaches the sandbox: absolute
//! names, `..`, links pointing out of /workspace, and devices are refused.
//! The Docker Engine then extracts it inside the container's own view of
//! the filesystem, never on the host, so a link the sandbox planted cannot
//! redirect a write to a host path.

use std::path::{Component, Path};

use paddock_shared::error::{Error, Result};
use paddock_shared::names::truncate;

pub const WORKSPACE: &str = "/workspace";

/// Largest upload accepted, in bytes.
pub const MAX_UPLOAD_BYTES: u64 = 1 << 30;

/// Normalizes a path given relative to /workspace or absolute within it;
/// returns the absolute container path. `..` is refused outright.
pub fn confine(path: &str) -> Result<String> {
    let trimmed = path.trim();
    let rel = if trimmed.is_empty() {
        ""
    } else if let Some(rest) = trimmed.strip_prefix(WORKSPACE) {
        if !rest.is_empty() && !rest.starts_with('/') {
            return Err(outside(path));
        }
        rest
    } else if trimmed.starts_with('/') {
        return Err(outside(path));
    } else {
        trimmed
    };
    let mut parts = Vec::new();
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(outside(path)),
            p if p.contains('\0') => return Err(outside(path)),
            p => parts.push(p),
        }
    }
    Ok(if parts.is_empty() {
        WORKSPACE.to_owned()
    } else {
        format!("{WORKSPACE}/{}", parts.join("/"))
    })
}

fn outside(path: &str) -> Error {
    Error::invalid(format!(
        "path {:?} is outside /workspace: use a path under /workspace without ..",
        truncate(path)
    ))
}

/// Counts of a checked upload.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub files: i64,
    pub bytes: i64,
}

/// Checks a tar archive that will be extracted at `dest` (an absolute path
/// under /workspace).
pub fn check_archive(archive: impl std::io::Read, dest: &str) -> Result<Checked> {
    rewrite_archive(archive, dest, 65534, std::io::sink())
}

/// Checks every entry of `archive` and writes it again to `out` as the
/// sandbox user would have made it: owned by `uid`, no setuid, setgid or
/// sticky bits, names normalized. Nothing is written for a refused archive
/// that the caller would keep: `out` is a spool the caller discards.
pub fn rewrite_archive(
    archive: impl std::io::Read,
    dest: &str,
    uid: u32,
    out: impl std::io::Write,
) -> Result<Checked> {
    rewrite_renamed(archive, dest, uid, None, out)
}

/// [`rewrite_archive`] with the archive's top entry renamed on the way
/// (a `docker cp`-style copy, see `copy`).
pub fn rewrite_renamed(
    archive: impl std::io::Read,
    dest: &str,
    uid: u32,
    rename: Option<&crate::copy::Rename>,
    out: impl std::io::Write,
) -> Result<Checked> {
    let mut checked = Checked::default();
    let mut tar = tar::Archive::new(archive);
    let mut builder = tar::Builder::new(out);
    // Directories the archive made or will make: any other parent of an
    // entry is added as the sandbox user's, or Docker would make it root's.
    let mut dirs = std::collections::HashSet::new();
    let entries = tar.entries().map_err(bad_archive)?;
    for entry in entries {
        let mut entry = entry.map_err(bad_archive)?;
        let name = entry.path().map_err(bad_archive)?.into_owned();
        let shown = name.to_string_lossy().into_owned();
        let rel = relative(&name).ok_or_else(|| {
            Error::invalid(format!(
                "archive entry {:?} is absolute or contains ..",
                truncate(&shown)
            ))
        })?;
        let rel = match rename {
            Some(r) => match crate::copy::renamed(&rel, r)? {
                Some(p) => p,
                None => continue,
            },
            None => rel,
        };
        for parent in rel
            .ancestors()
            .skip(1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            if parent.as_os_str().is_empty() || !dirs.insert(parent.to_path_buf()) {
                continue;
            }
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_uid(u64::from(uid));
            h.set_gid(u64::from(uid));
            h.set_mode(0o755);
            h.set_size(0);
            builder
                .append_data(&mut h, parent, std::io::empty())
                .map_err(bad_archive)?;
        }
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let mtime = entry.header().mtime().unwrap_or(0);
        let mut header = tar::Header::new_gnu();
        header.set_uid(u64::from(uid));
        header.set_gid(u64::from(uid));
        header.set_mtime(mtime);
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                checked.files += 1;
                checked.bytes += entry.size() as i64;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(mode);
                header.set_size(entry.size());
                builder
                    .append_data(&mut header, &rel, &mut entry)
                    .map_err(bad_archive)?;
            }
            tar::EntryType::Directory => {
                if rel.as_os_str().is_empty() || !dirs.insert(rel.clone()) {
                    continue;
                }
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(mode | 0o700);
                header.set_size(0);
                builder
                    .append_data(&mut header, &rel, std::io::empty())
                    .map_err(bad_archive)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(bad_archive)?
                    .ok_or_else(|| Error::invalid(format!("link {shown:?} has no target")))?
                    .into_owned();
                let parent = Path::new(dest).join(&rel);
                let parent = parent.parent().unwrap_or(Path::new(WORKSPACE));
                if !link_stays_inside(parent, &target) {
                    return Err(Error::invalid(format!(
                        "archive entry {:?} links to {:?}, outside /workspace",
                        truncate(&shown),
                        truncate(&target.to_string_lossy())
                    )));
                }
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder
                    .append_link(&mut header, &rel, &target)
                    .map_err(bad_archive)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(bad_archive)?
                    .ok_or_else(|| Error::invalid(format!("link {shown:?} has no target")))?
                    .into_owned();
                let target = relative(&target).ok_or_else(|| {
                    Error::invalid(format!(
                        "archive entry {:?} hard-links outside the archive",
                        truncate(&shown)
                    ))
                })?;
                let target = match rename {
                    Some(r) => crate::copy::renamed(&target, r)?.ok_or_else(|| {
                        Error::invalid(format!(
                            "archive entry {:?} hard-links to a directory",
                            truncate(&shown)
                        ))
                    })?,
                    None => target,
                };
                header.set_entry_type(tar::EntryType::Link);
                header.set_mode(mode);
                header.set_size(0);
                builder
                    .append_link(&mut header, &rel, &target)
                    .map_err(bad_archive)?;
            }
            // PAX and GNU long-name records are consumed by the reader.
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            other => {
                return Err(Error::invalid(format!(
                    "archive entry {:?} is a {other:?}; only files, directories and links are allowed",
                    truncate(&shown)
                )));
            }
        }
    }
    builder.finish().map_err(bad_archive)?;
    Ok(checked)
}

fn bad_archive(e: std::io::Error) -> Error {
    Error::invalid(format!("not a readable tar archive: {e}"))
}

/// A relative path with no `..`, root or prefix components.
fn relative(path: &Path) -> Option<std::path::PathBuf> {
    let mut out = std::path::PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Whether a link at `dir` pointing to `target` resolves, lexically, under
/// /workspace.
fn link_stays_inside(dir: &Path, target: &Path) -> bool {
    let start = if target.is_absolute() {
        Path::new("/").to_path_buf()
    } else {
        dir.to_path_buf()
    };
    let mut parts: Vec<std::ffi::OsString> = start
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_os_string()),
            _ => None,
        })
        .collect();
    for c in target.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_os_string()),
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return false;
                }
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    parts.first().map(|p| p == "workspace").unwrap_or(false)
}

/// Checks a rewritten archive, to be extracted at `dest` in the sandbox
/// whose workspace is `root` on the host: no entry's parent directory may
/// be a link the sandbox planted (Docker would follow it, as root, inside
/// the container's file system).
pub fn check_parents(root: &Path, dest: &str, archive: impl std::io::Read) -> Result<()> {
    let base: Vec<String> = dest
        .strip_prefix(WORKSPACE)
        .unwrap_or("")
        .split('/')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    let mut checked = std::collections::HashSet::new();
    let refs: Vec<&str> = base.iter().map(String::as_str).collect();
    crate::download::no_links_on_the_way(root, &refs)?;
    let mut tar = tar::Archive::new(archive);
    for entry in tar.entries().map_err(bad_archive)? {
        let entry = entry.map_err(bad_archive)?;
        let path = entry.path().map_err(bad_archive)?.into_owned();
        let Some(parent) = path.parent() else {
            continue;
        };
        if parent.as_os_str().is_empty() || !checked.insert(parent.to_path_buf()) {
            continue;
        }
        let mut parts = refs.clone();
        let parent_parts: Vec<String> = parent
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        parts.extend(parent_parts.iter().map(String::as_str));
        crate::download::no_links_on_the_way(root, &parts)?;
    }
    Ok(())
}

/// A blocking `Read` over chunks sent from async code: an upload is
/// checked while it arrives.
pub struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    current: std::io::Cursor<Vec<u8>>,
}

impl ChunkReader {
    /// The sending half and the reader.
    pub fn channel() -> (tokio::sync::mpsc::Sender<Vec<u8>>, ChunkReader) {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        (
            tx,
            ChunkReader {
                rx,
                current: std::io::Cursor::new(Vec::new()),
            },
        )
    }
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = self.current.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = std::io::Cursor::new(chunk),
                None => return Ok(0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_confined_to_the_workspace() {
        assert_eq!(confine("").expect("ok"), "/workspace");
        assert_eq!(confine("src/a").expect("ok"), "/workspace/src/a");
        assert_eq!(confine("/workspace/src/").expect("ok"), "/workspace/src");
        assert_eq!(confine("./x//y").expect("ok"), "/workspace/x/y");
        for bad in [
            "/etc",
            "../x",
            "a/../../b",
            "/workspace/../etc",
            "/workspacefoo",
            "a/..",
        ] {
            assert!(confine(bad).is_err(), "{bad} accepted");
        }
    }

    fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().expect("tar")
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, name: &str, body: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses "..", so write the raw name like a hostile client.
        let bytes = name.as_bytes();
        h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        h.set_cksum();
        b.append(&h, body).expect("append");
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, name: &str, target: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_entry_type(tar::EntryType::Symlink);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        b.append(&h, std::io::empty()).expect("append");
    }

    #[test]
    fn good_archives_pass() {
        let a = archive(|b| {
            file(b, "src/main.rs", b"fn main() {}");
            link(b, "src/alias", "main.rs");
            link(b, "abs", "/workspace/src/main.rs");
        });
        let checked = check_archive(a.as_slice(), "/workspace").expect("ok");
        assert_eq!(
            checked,
            Checked {
                files: 1,
                bytes: 12
            }
        );
    }

    #[test]
    fn traversal_and_escaping_links_are_refused() {
        let cases: Vec<Vec<u8>> = vec![
            archive(|b| file(b, "../evil", b"x")),
            archive(|b| file(b, "a/../../evil", b"x")),
            archive(|b| file(b, "/etc/passwd", b"x")),
            archive(|b| link(b, "escape", "/etc")),
            archive(|b| link(b, "escape", "../../etc/passwd")),
            archive(|b| link(b, "a/b", "../../../x")),
        ];
        for (i, a) in cases.iter().enumerate() {
            assert!(
                check_archive(a.as_slice(), "/workspace").is_err(),
                "case {i} accepted"
            );
        }
        // The same link is fine one level deeper.
        let ok = archive(|b| link(b, "a/b", "../x"));
        check_archive(ok.as_slice(), "/workspace").expect("inside");
        // A link to ".." from the top escapes.
        let a = archive(|b| link(b, "up", ".."));
        assert!(check_archive(a.as_slice(), "/workspace").is_err());
    }

    #[test]
    fn uploads_are_rewritten_as_the_sandbox_user() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o4755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_path("./bin/tool").expect("path");
        h.set_cksum();
        b.append(&h, &b"ok"[..]).expect("append");
        let input = b.into_inner().expect("tar");
        let mut out = Vec::new();
        rewrite_archive(input.as_slice(), "/workspace", 65534, &mut out).expect("rewrite");
        let mut archive = tar::Archive::new(out.as_slice());
        let mut entries = archive.entries().expect("entries");
        // The parent the archive did not name is made the sandbox user's,
        // not left for Docker to make as root.
        let parent = entries.next().expect("parent").expect("entry");
        assert_eq!(parent.path().expect("path").to_string_lossy(), "bin");
        assert!(parent.header().entry_type().is_dir());
        assert_eq!(parent.header().uid().expect("uid"), 65534);
        assert_eq!(parent.header().mode().expect("mode"), 0o755);
        let entry = entries.next().expect("file").expect("entry");
        let header = entry.header();
        assert_eq!(header.uid().expect("uid"), 65534);
        assert_eq!(header.gid().expect("gid"), 65534);
        assert_eq!(
            header.mode().expect("mode"),
            0o755,
            "setuid must be stripped"
        );
        assert_eq!(entry.path().expect("path").to_string_lossy(), "bin/tool");
    }

    #[test]
    fn garbage_is_refused() {
        let mut bad = vec![0xffu8; 1024];
        bad[0] = b'x';
        assert!(check_archive(bad.as_slice(), "/workspace").is_err());
    }
}
