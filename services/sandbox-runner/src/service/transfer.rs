//! UploadFiles and DownloadFiles: archives into and out of a sandbox's
//! workspace, checked on the way in and read on the host on the way out.

use bollard::query_parameters::UploadToContainerOptions;
use futures_util::StreamExt;
use paddock_proto::audit::v1::Outcome;
use paddock_proto::sandbox::v1::*;
use paddock_shared::error::{Error, Result};
use tonic::{Request, Response, Status, Streaming};

use super::{BoxStream, Intent, Sandboxes, principal};
use crate::store::Record;
use crate::{download, files};

impl Sandboxes {
    /// UploadFiles: a tar archive into a running sandbox the caller manages.
    pub(super) async fn upload(
        &self,
        request: Request<Streaming<UploadFilesRequest>>,
    ) -> Result<Response<UploadFilesResponse>, Status> {
        let caller = principal(&request)?;
        let mut input = request.into_inner();
        let start = match input.next().await {
            Some(Ok(UploadFilesRequest {
                message: Some(upload_files_request::Message::Start(start)),
            })) => start,
            Some(Err(s)) => return Err(s),
            _ => {
                return Err(Error::invalid("the first UploadFiles message must be a start").into());
            }
        };
        let dest = files::confine(&start.path)?;
        let record = self.running(&caller, &start.sandbox).await?;
        // A `docker cp`-style copy: where it lands depends on what the
        // destination is now.
        let (dest, rename) = if start.copy {
            let root = std::path::PathBuf::from(&record.workspace);
            let at = dest.clone();
            let found = tokio::task::spawn_blocking(move || crate::copy::look(&root, &at))
                .await
                .map_err(|e| Error::Internal(e.to_string()))??;
            let (dir, rename) = crate::copy::resolve(&dest, &start, found)?;
            (dir, Some(rename))
        } else {
            (dest, None)
        };
        // One upload at a time per sandbox, a few per runner: each spools
        // up to its bound on the host.
        let _slot = self.runner.upload_slot(&record.id)?;
        let limit = files::MAX_UPLOAD_BYTES.min(record.disk_bytes().unwrap_or(u64::MAX));
        // The archive is checked and rewritten as it arrives, into one
        // private spool; a refused archive leaves nothing behind.
        let checked_spool =
            tempfile::NamedTempFile::new().map_err(|e| Error::Internal(e.to_string()))?;
        let output = checked_spool
            .reopen()
            .map_err(|e| Error::Internal(e.to_string()))?;
        let (chunks, reader) = files::ChunkReader::channel();
        let dest_for_check = dest.clone();
        let uid = record.uid;
        let rewrite = tokio::task::spawn_blocking(move || {
            files::rewrite_renamed(
                reader,
                &dest_for_check,
                uid,
                rename.as_ref(),
                std::io::BufWriter::new(output),
            )
        });
        let mut total: u64 = 0;
        let received: Result<()> = async {
            while let Some(msg) = input.next().await {
                match msg.map_err(Error::from_status)?.message {
                    Some(upload_files_request::Message::Chunk(bytes)) => {
                        total += bytes.len() as u64;
                        if total > limit {
                            return Err(Error::ResourceExhausted(format!(
                                "upload larger than {limit} bytes (the sandbox's disk bound or 1 GiB)"
                            )));
                        }
                        if chunks.send(bytes).await.is_err() {
                            // The checker stopped early: its error says why.
                            break;
                        }
                    }
                    _ => return Err(Error::invalid("only chunks may follow the start")),
                }
            }
            Ok(())
        }
        .await;
        drop(chunks);
        let checked = rewrite.await.map_err(|e| Error::Internal(e.to_string()))?;
        received?;
        let checked = checked?;
        // Nothing of the archive may land through a link the sandbox made.
        let root = std::path::PathBuf::from(&record.workspace);
        let spool_path = checked_spool.path().to_path_buf();
        let dest_for_parents = dest.clone();
        tokio::task::spawn_blocking(move || {
            let archive =
                std::fs::File::open(&spool_path).map_err(|e| Error::Internal(e.to_string()))?;
            files::check_parents(&root, &dest_for_parents, std::io::BufReader::new(archive))
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;

        let engine = self.runner.engine()?;
        // The destination directory must exist; make it as the sandbox user.
        if dest != files::WORKSPACE {
            mkdir_in(&engine, &record, &dest).await?;
        }
        let file = tokio::fs::File::open(checked_spool.path())
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        let body = futures_util::stream::unfold(file, |mut file| async move {
            use tokio::io::AsyncReadExt as _;
            let mut buf = vec![0u8; 256 * 1024];
            match file.read(&mut buf).await {
                Ok(0) | Err(_) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((bytes::Bytes::from(buf), file))
                }
            }
        });
        engine
            .docker()
            .upload_to_container(
                &record.container_id,
                Some(UploadToContainerOptions {
                    path: dest.clone(),
                    no_overwrite_dir_non_dir: Some("true".into()),
                    ..Default::default()
                }),
                bollard::body_stream(body),
            )
            .await
            .map_err(|e| Error::FailedPrecondition(format!("cannot write into {dest}: {e}")))?;
        drop(checked_spool);
        self.runner
            .audit(
                Some(&caller),
                "sandbox.upload",
                &record.name(),
                Outcome::Success,
                serde_json::json!({"path": dest, "files": checked.files, "bytes": checked.bytes}),
            )
            .await;
        Ok(Response::new(UploadFilesResponse {
            files: checked.files,
            bytes: checked.bytes,
        }))
    }

    /// DownloadFiles: a tar archive of a path in the workspace of a sandbox
    /// the caller manages, running or ended with its workspace kept.
    pub(super) async fn download(
        &self,
        request: Request<DownloadFilesRequest>,
    ) -> Result<Response<BoxStream<DownloadFilesResponse>>, Status> {
        let caller = principal(&request)?;
        let req = request.into_inner();
        let path = files::confine(&req.path)?;
        // The workspace of a running sandbox, or of an ended one that kept
        // it, is read on the host without following any link.
        let record = self
            .authorized(&caller, &req.sandbox, Intent::Manage)
            .await?;
        if !record.is_live() {
            self.runner
                .layout
                .ensure_mounted(&record.org, &record.id)
                .await?;
        }
        let root = std::path::PathBuf::from(&record.workspace);
        let uid = record.uid;
        let target = tokio::task::spawn_blocking(move || {
            let parts: Vec<&str> = path
                .strip_prefix(files::WORKSPACE)
                .unwrap_or("")
                .split('/')
                .filter(|p| !p.is_empty())
                .collect();
            download::open(&root, &parts, uid)
        })
        .await
        .map_err(|e| Error::Internal(format!("the download task failed: {e}")))??;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let errors = tx.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = target.write(download::ChunkWriter::new(tx)) {
                let _ = errors.blocking_send(Err(e.into()));
            }
        });
        let out = tokio_stream::wrappers::ReceiverStream::new(rx)
            .map(|chunk| chunk.map(|chunk| DownloadFilesResponse { chunk }));
        Ok(Response::new(Box::pin(out)))
    }
}

/// Creates a directory under /workspace as the sandbox user.
async fn mkdir_in(engine: &crate::docker::Engine, record: &Record, dir: &str) -> Result<()> {
    use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
    let docker = engine.docker();
    let exec = docker
        .create_exec(
            &record.container_id,
            CreateExecOptions {
                cmd: Some(vec![
                    "mkdir".to_owned(),
                    "-p".to_owned(),
                    "--".to_owned(),
                    dir.to_owned(),
                ]),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| Error::FailedPrecondition(format!("cannot create {dir}: {e}")))?;
    if let Ok(StartExecResults::Attached { mut output, .. }) = docker
        .start_exec(&exec.id, Some(StartExecOptions::default()))
        .await
    {
        while output.next().await.is_some() {}
    }
    Ok(())
}
