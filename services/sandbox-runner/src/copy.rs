//! `docker cp` semantics for uploads: where an archive holding one file or
//! directory lands, given what the destination is. The destination is
//! looked at on the host, through the workspace's file system, without
//! following any link the sandbox may have planted.
//!
//! | source    | destination        | result                                   |
//! |-----------|--------------------|------------------------------------------|
//! | file      | missing            | the file, named as the destination       |
//! | file      | missing, ends in / | error: the directory must exist          |
//! | file      | a file             | overwritten                              |
//! | file      | a directory        | copied into it, under its own name       |
//! | directory | missing            | made, with the source's contents         |
//! | directory | a file             | error: cannot copy a directory to a file |
//! | directory | a directory        | copied into it (`SRC/.`: its contents)   |

use std::path::Path;

use paddock_proto::sandbox::v1::UploadStart;
use paddock_shared::error::{Error, Result};
use paddock_shared::names::truncate;
use rustix::fs::{AtFlags, FileType, Mode};
use rustix::io::Errno;

use crate::files::WORKSPACE;

/// How the archive's top entry is renamed on the way in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rename {
    /// The top entry's name in the archive.
    pub from: String,
    /// Its new name; `None` drops it (its contents land in place).
    pub to: Option<String>,
}

/// What a destination is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Neither it nor its parent directory exists.
    NoParent,
    Missing,
    Directory,
    /// A file, or a link (never followed).
    Other,
}

/// Resolves a copy: the directory to extract into (an absolute path under
/// /workspace) and how the archive's top entry is renamed.
pub fn resolve(dest: &str, start: &UploadStart, found: Found) -> Result<(String, Rename)> {
    let from = start.source_name.clone();
    if from.is_empty() || from.contains('/') || from == "." || from == ".." {
        return Err(Error::invalid(
            "source_name must be the name of the copied file or directory",
        ));
    }
    let (parent, base) = match dest.rsplit_once('/') {
        Some((parent, base)) if dest != WORKSPACE => (parent.to_owned(), base.to_owned()),
        _ => (String::new(), String::new()),
    };
    let shown = truncate(dest);
    let into_dir = |dir: &str| {
        (
            dir.to_owned(),
            Rename {
                from: from.clone(),
                to: (!start.contents_only).then(|| from.clone()),
            },
        )
    };
    let as_dest = || {
        (
            parent.clone(),
            Rename {
                from: from.clone(),
                to: Some(base.clone()),
            },
        )
    };
    match (start.source_is_directory, found) {
        (_, Found::NoParent) => Err(Error::NotFound(format!(
            "the destination's parent directory does not exist: {shown}"
        ))),
        (false, Found::Missing) if start.path_is_directory => Err(Error::NotFound(format!(
            "destination directory {shown} does not exist"
        ))),
        (_, Found::Directory) => Ok(into_dir(dest)),
        (false, Found::Missing | Found::Other) => Ok(as_dest()),
        (true, Found::Missing) => Ok(as_dest()),
        (true, Found::Other) => Err(Error::FailedPrecondition(format!(
            "cannot copy a directory to a file: {shown} is a file"
        ))),
    }
}

/// Looks at `dest` (an absolute path under /workspace) in the workspace
/// mounted at `root`, following no link on the way or at the end.
pub fn look(root: &Path, dest: &str) -> Result<Found> {
    let rel = dest.strip_prefix(WORKSPACE).unwrap_or("");
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    let Some((last, parents)) = parts.split_last() else {
        return Ok(Found::Directory);
    };
    let flags = crate::download::dir_flags();
    let mut dir = rustix::fs::openat(rustix::fs::CWD, root, flags, Mode::empty())
        .map_err(|e| Error::Internal(format!("opening the workspace: {e}")))?;
    for part in parents {
        match rustix::fs::openat(&dir, *part, flags, Mode::empty()) {
            Ok(next) => dir = next,
            Err(Errno::NOENT) => return Ok(Found::NoParent),
            Err(Errno::LOOP | Errno::NOTDIR | Errno::MLINK) => {
                return Err(Error::invalid(format!(
                    "{} passes through a symbolic link or a file; copies never follow links",
                    truncate(dest)
                )));
            }
            Err(e) => return Err(Error::Internal(format!("looking at {dest}: {e}"))),
        }
    }
    match rustix::fs::statat(&dir, *last, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            Ok(Found::Directory)
        }
        Ok(_) => Ok(Found::Other),
        Err(Errno::NOENT) => Ok(Found::Missing),
        Err(e) => Err(Error::Internal(format!("looking at {dest}: {e}"))),
    }
}

/// The archive path of an entry after `rename`; `None` drops the entry
/// (the renamed-away top directory itself). An entry outside the source
/// is refused.
pub fn renamed(rel: &Path, rename: &Rename) -> Result<Option<std::path::PathBuf>> {
    let mut parts = rel.components();
    let top = parts
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned());
    if top.as_deref() != Some(rename.from.as_str()) {
        return Err(Error::invalid(format!(
            "archive entry {:?} is not under the copied {:?}",
            truncate(&rel.to_string_lossy()),
            truncate(&rename.from)
        )));
    }
    let rest = parts.as_path();
    Ok(match &rename.to {
        Some(to) => Some(Path::new(to).join(rest)),
        None if rest.as_os_str().is_empty() => None,
        None => Some(rest.to_path_buf()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(dir: bool, contents_only: bool, trailing: bool) -> UploadStart {
        UploadStart {
            source_name: "src".into(),
            source_is_directory: dir,
            contents_only,
            path_is_directory: trailing,
            copy: true,
            ..Default::default()
        }
    }

    fn to(name: Option<&str>) -> Rename {
        Rename {
            from: "src".into(),
            to: name.map(str::to_owned),
        }
    }

    /// Every row of docker's table.
    #[test]
    fn dockers_table() {
        let d = "/workspace/a/dest";
        // A file.
        assert_eq!(
            resolve(d, &start(false, false, false), Found::Missing).unwrap(),
            ("/workspace/a".into(), to(Some("dest")))
        );
        assert!(matches!(
            resolve(d, &start(false, false, true), Found::Missing),
            Err(Error::NotFound(_))
        ));
        assert_eq!(
            resolve(d, &start(false, false, false), Found::Other).unwrap(),
            ("/workspace/a".into(), to(Some("dest")))
        );
        assert_eq!(
            resolve(d, &start(false, false, false), Found::Directory).unwrap(),
            (d.into(), to(Some("src")))
        );
        // A directory.
        assert_eq!(
            resolve(d, &start(true, false, false), Found::Missing).unwrap(),
            ("/workspace/a".into(), to(Some("dest")))
        );
        assert!(matches!(
            resolve(d, &start(true, false, false), Found::Other),
            Err(Error::FailedPrecondition(_))
        ));
        assert_eq!(
            resolve(d, &start(true, false, false), Found::Directory).unwrap(),
            (d.into(), to(Some("src")))
        );
        assert_eq!(
            resolve(d, &start(true, true, false), Found::Directory).unwrap(),
            (d.into(), to(None))
        );
        // The parent must exist.
        assert!(matches!(
            resolve(d, &start(true, false, false), Found::NoParent),
            Err(Error::NotFound(_))
        ));
        // The workspace itself is a directory.
        assert_eq!(
            resolve(WORKSPACE, &start(true, false, false), Found::Directory).unwrap(),
            (WORKSPACE.into(), to(Some("src")))
        );
    }

    #[test]
    fn entries_are_renamed_and_must_stay_under_the_source() {
        let r = to(Some("dest"));
        assert_eq!(
            renamed(Path::new("src/a.js"), &r).unwrap(),
            Some("dest/a.js".into())
        );
        assert_eq!(renamed(Path::new("src"), &r).unwrap(), Some("dest".into()));
        assert_eq!(renamed(Path::new("src"), &to(None)).unwrap(), None);
        assert_eq!(
            renamed(Path::new("src/x/y"), &to(None)).unwrap(),
            Some("x/y".into())
        );
        assert!(renamed(Path::new("other/a"), &r).is_err());
        assert!(renamed(Path::new("srcx"), &r).is_err());
    }

    #[test]
    fn looking_never_follows_links() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("dir")).unwrap();
        std::fs::write(root.path().join("file"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", root.path().join("link")).unwrap();
        let at = |p: &str| look(root.path(), p);
        assert_eq!(at("/workspace").unwrap(), Found::Directory);
        assert_eq!(at("/workspace/dir").unwrap(), Found::Directory);
        assert_eq!(at("/workspace/file").unwrap(), Found::Other);
        assert_eq!(at("/workspace/link").unwrap(), Found::Other);
        assert_eq!(at("/workspace/nope").unwrap(), Found::Missing);
        assert_eq!(at("/workspace/nope/x").unwrap(), Found::NoParent);
        assert!(at("/workspace/link/passwd").is_err());
    }
}
