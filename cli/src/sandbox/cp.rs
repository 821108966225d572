//! `paddock sandbox cp`: copies into or out of a sandbox's /workspace as
//! `docker cp` does, as a tar streamed through the runner.

use std::path::{Path, PathBuf};

use paddock_proto::sandbox::v1::*;
use serde_json::json;
use tonic::Code;

use super::{SANDBOXES, SandboxClient, rpc_err};
use crate::commands::Ctx;
use crate::error::CliError;
use crate::output::print_json;

/// `ID:path` → (id, path).
fn remote(spec: &str) -> Option<(&str, &str)> {
    let (id, path) = spec.split_once(':')?;
    (!id.is_empty() && !id.contains('/') || id.starts_with("organizations/")).then_some((id, path))
}

/// `sandbox cp`, as `docker cp` does it (see `copy` in the runner for the
/// table): `cp ./src SB:src` makes /workspace/src, a file copied to a file
/// path is that file, and `SRC/.` copies a directory's contents.
pub(super) async fn copy(
    ctx: &mut Ctx,
    client: &mut SandboxClient,
    src: &str,
    dst: &str,
) -> Result<(), CliError> {
    match (remote(src), remote(dst)) {
        (None, Some((id, path))) => {
            let name = ctx.expand(SANDBOXES, id).await?;
            let (local_path, contents_only) = split_contents(src);
            let meta = std::fs::symlink_metadata(local_path)
                .map_err(|e| local(Path::new(local_path), e))?;
            let source_name = source_name(Path::new(local_path))?;
            let archive = tar_local(Path::new(local_path), &source_name)?;
            let mut msgs = vec![UploadFilesRequest {
                message: Some(upload_files_request::Message::Start(UploadStart {
                    sandbox: name,
                    path: path.trim_end_matches('/').to_owned(),
                    copy: true,
                    source_name,
                    contents_only: contents_only && meta.is_dir(),
                    path_is_directory: path.ends_with('/'),
                    source_is_directory: meta.is_dir(),
                })),
            }];
            for chunk in archive.chunks(1 << 20) {
                msgs.push(UploadFilesRequest {
                    message: Some(upload_files_request::Message::Chunk(chunk.to_vec())),
                });
            }
            let r = client
                .upload_files(tokio_stream::iter(msgs))
                .await
                .map_err(rpc_err(ctx))?
                .into_inner();
            if ctx.json() {
                print_json(&json!({"files": r.files, "bytes": r.bytes}));
            } else {
                outln!("copied {} files, {} bytes", r.files, r.bytes);
            }
            Ok(())
        }
        (Some((id, path)), None) => {
            let name = ctx.expand(SANDBOXES, id).await?;
            let (remote_path, contents_only) = split_contents(path);
            let mut stream = client
                .download_files(DownloadFilesRequest {
                    sandbox: name,
                    path: remote_path.to_owned(),
                })
                .await
                .map_err(rpc_err(ctx))?
                .into_inner();
            let mut archive = Vec::new();
            while let Some(m) = stream.message().await.map_err(rpc_err(ctx))? {
                archive.extend(m.chunk);
            }
            let dest = place(&archive, Path::new(dst), dst.ends_with('/'), contents_only)?;
            if !ctx.json() {
                outln!("copied to {}", dest.display());
            }
            Ok(())
        }
        _ => Err(CliError::usage(
            "cp needs exactly one side as ID:PATH, e.g. `cp ./src sb123:src` or `cp sb123:out ./out`",
        )),
    }
}

/// `dir/.` → (`dir`, true): docker's "the contents of".
fn split_contents(path: &str) -> (&str, bool) {
    if path == "." {
        return (".", true);
    }
    match path.strip_suffix("/.") {
        Some("") => ("/", true),
        Some(p) => (p, true),
        None => (path, false),
    }
}

/// The name a local source has in the archive: its last component (the
/// current directory's name for `.`).
fn source_name(path: &Path) -> Result<String, CliError> {
    let absolute = std::path::absolute(path).map_err(|e| local(path, e))?;
    let name = absolute
        .components()
        .next_back()
        .and_then(|c| match c {
            std::path::Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .or_else(|| {
            std::env::current_dir()
                .ok()
                .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        })
        .unwrap_or_else(|| "root".to_owned());
    Ok(name)
}

fn local(path: &Path, e: std::io::Error) -> CliError {
    CliError::new(Code::FailedPrecondition, format!("{}: {e}", path.display()))
}

fn refused(path: &Path, why: &str) -> CliError {
    CliError::new(
        Code::FailedPrecondition,
        format!("{}: {why}", path.display()),
    )
}

/// A tar of a local file or directory whose top entry is `name`.
fn tar_local(path: &Path, name: &str) -> Result<Vec<u8>, CliError> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| local(path, e))?;
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    if meta.is_dir() {
        builder
            .append_dir_all(name, path)
            .map_err(|e| local(path, e))?;
    } else {
        builder
            .append_path_with_name(path, name)
            .map_err(|e| local(path, e))?;
    }
    builder.into_inner().map_err(|e| local(path, e))
}

/// Puts a downloaded archive (one file or directory at its top) at `dst`
/// as `docker cp` does. It is unpacked into a staging directory next to
/// its destination first (the tar crate refuses entries that would land
/// outside it), then moved into place. Returns where it went.
fn place(
    archive: &[u8],
    dst: &Path,
    dst_is_dir: bool,
    contents_only: bool,
) -> Result<PathBuf, CliError> {
    let mut first = tar::Archive::new(archive);
    let top = first
        .entries()
        .map_err(|e| local(dst, e))?
        .next()
        .ok_or_else(|| refused(dst, "the sandbox sent nothing"))?
        .map_err(|e| local(dst, e))?;
    let source_is_dir = top.header().entry_type().is_dir();
    let top_name = top
        .path()
        .map_err(|e| local(dst, e))?
        .components()
        .next()
        .map(|c| c.as_os_str().to_owned())
        .ok_or_else(|| refused(dst, "the archive has no name"))?;
    let found = std::fs::symlink_metadata(dst);
    let exists_as_dir = found.as_ref().is_ok_and(|m| m.is_dir());
    let exists = found.is_ok();
    let parent = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Where it ends up, and the directory that holds that.
    let (target, holder) = match (source_is_dir, exists, exists_as_dir) {
        (_, true, true) if contents_only && source_is_dir => (dst.to_path_buf(), dst.to_path_buf()),
        (_, true, true) => (dst.join(&top_name), dst.to_path_buf()),
        (false, false, _) if dst_is_dir => {
            return Err(refused(dst, "destination directory does not exist"));
        }
        (false, _, _) => (dst.to_path_buf(), parent),
        (true, false, _) => (dst.to_path_buf(), parent),
        (true, true, false) => {
            return Err(refused(dst, "cannot copy a directory to a file"));
        }
    };
    if !holder.is_dir() {
        return Err(refused(&holder, "no such directory"));
    }
    let staging = tempfile::Builder::new()
        .prefix(".paddock-cp-")
        .tempdir_in(&holder)
        .map_err(|e| local(&holder, e))?;
    tar::Archive::new(archive)
        .unpack(staging.path())
        .map_err(|e| local(dst, e))?;
    let unpacked = staging.path().join(&top_name);
    merge(&unpacked, &target)?;
    Ok(target)
}

/// Moves `src` to `dst`; a directory onto an existing directory is merged
/// (files replaced), as extracting a tar there would.
fn merge(src: &Path, dst: &Path) -> Result<(), CliError> {
    let src_dir = std::fs::symlink_metadata(src)
        .map_err(|e| local(src, e))?
        .is_dir();
    match std::fs::symlink_metadata(dst) {
        Err(_) => std::fs::rename(src, dst).map_err(|e| local(dst, e)),
        Ok(m) if m.is_dir() && src_dir => {
            for entry in std::fs::read_dir(src).map_err(|e| local(src, e))? {
                let entry = entry.map_err(|e| local(src, e))?;
                merge(&entry.path(), &dst.join(entry.file_name()))?;
            }
            Ok(())
        }
        Ok(m) if m.is_dir() => Err(refused(dst, "is a directory; not replaced by a file")),
        Ok(_) if src_dir => Err(refused(dst, "cannot copy a directory to a file")),
        Ok(_) => std::fs::rename(src, dst).map_err(|e| local(dst, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, name, *d).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    b.append_data(&mut h, name, std::io::empty()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    /// Every row of docker's table, downloading.
    #[test]
    fn downloads_land_as_docker_cp_puts_them() {
        let dir = tempfile::tempdir().unwrap();
        let at = |p: &str| dir.path().join(p);
        let file = tar_of(&[("a.txt", Some(b"A"))]);
        let tree = tar_of(&[("dist", None), ("dist/x.js", Some(b"X"))]);
        // File to a missing path: that file.
        place(&file, &at("new.txt"), false, false).unwrap();
        assert_eq!(std::fs::read(at("new.txt")).unwrap(), b"A");
        // File to a missing path ending in /: an error.
        assert!(place(&file, &at("nodir"), true, false).is_err());
        // File onto a file: overwritten.
        std::fs::write(at("old.txt"), b"old").unwrap();
        place(&file, &at("old.txt"), false, false).unwrap();
        assert_eq!(std::fs::read(at("old.txt")).unwrap(), b"A");
        // File into a directory: under its own name.
        std::fs::create_dir(at("d")).unwrap();
        place(&file, &at("d"), false, false).unwrap();
        assert_eq!(std::fs::read(at("d/a.txt")).unwrap(), b"A");
        // Directory to a missing path: made, with the contents.
        place(&tree, &at("out"), false, false).unwrap();
        assert_eq!(std::fs::read(at("out/x.js")).unwrap(), b"X");
        assert!(!at("out/dist").exists());
        // Directory onto a file: an error.
        assert!(place(&tree, &at("old.txt"), false, false).is_err());
        // Directory into a directory: under its own name.
        place(&tree, &at("d"), false, false).unwrap();
        assert_eq!(std::fs::read(at("d/dist/x.js")).unwrap(), b"X");
        // SRC/. into a directory: the contents.
        std::fs::create_dir(at("e")).unwrap();
        place(&tree, &at("e"), false, true).unwrap();
        assert_eq!(std::fs::read(at("e/x.js")).unwrap(), b"X");
        // Nothing left behind.
        let staged = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".paddock-cp-")
            })
            .count();
        assert_eq!(staged, 0);
    }

    #[test]
    fn contents_suffixes() {
        assert_eq!(split_contents("src/."), ("src", true));
        assert_eq!(split_contents("."), (".", true));
        assert_eq!(split_contents("src"), ("src", false));
        assert_eq!(split_contents("src/"), ("src/", false));
    }

    #[test]
    fn remote_specs() {
        assert_eq!(remote("sb1:src"), Some(("sb1", "src")));
        assert_eq!(remote("./local"), None);
        assert_eq!(remote("/abs/path"), None);
    }
}
