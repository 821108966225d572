//! Sandbox logs: the output of a sandbox's main process (followed from
//! Docker) or of its foreground command, kept on the host under
//! `{data_dir}/logs/{org}/{id}/` in two segments of at most
//! [`SEGMENT_BYTES`], so the last 10 MiB or so survive however much a
//! sandbox prints. A log lives as long as its sandbox's record. Followers
//! read what is kept, then new frames from a broadcast channel; frame
//! numbers let them skip what they have already seen.
//!
//! A frame on disk: sequence number (u64), stream (u8), length (u32), all
//! big-endian, then the bytes.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tracing::Instrument;

use paddock_proto::sandbox::v1::{GetSandboxLogsResponse, LogStream, SandboxState};
use paddock_shared::error::{Error, Result};
use tokio::sync::broadcast::{self, error::RecvError};

/// Largest segment; two are kept.
pub const SEGMENT_BYTES: u64 = 5 << 20;
/// Largest frame: longer output is split.
const MAX_FRAME: usize = 64 * 1024;
const HEADER: usize = 13;
/// Frames a slow follower may fall behind by before it rereads the files.
const FOLLOW_BUFFER: usize = 256;

/// One piece of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub seq: u64,
    pub stream: LogStream,
    pub data: Vec<u8>,
}

/// Every sandbox log of this runner; the open ones are those of running
/// sandboxes.
pub struct Logs {
    root: PathBuf,
    open: Mutex<HashMap<String, Arc<SandboxLog>>>,
}

/// The log of one running sandbox, appended to by its writers.
pub struct SandboxLog {
    dir: PathBuf,
    writer: Mutex<Writer>,
    frames: broadcast::Sender<Frame>,
}

struct Writer {
    file: Option<File>,
    size: u64,
    next_seq: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn io(what: &str, e: std::io::Error) -> Error {
    Error::Internal(format!("sandbox log: {what}: {e}"))
}

impl Logs {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.join("logs"),
            open: Mutex::default(),
        }
    }

    fn dir(&self, org: &str, id: &str) -> PathBuf {
        self.root.join(org).join(id)
    }

    /// Opens the log of a sandbox that starts running (or is adopted after
    /// a restart). Returns it and whether it already held output.
    pub fn open(&self, org: &str, id: &str) -> Result<(Arc<SandboxLog>, bool)> {
        if let Some(log) = lock(&self.open).get(id) {
            return Ok((log.clone(), true));
        }
        let dir = self.dir(org, id);
        paddock_shared::db::private_dir(&self.root).map_err(|e| io("log root", e))?;
        paddock_shared::db::private_dir(&self.root.join(org)).map_err(|e| io("log dir", e))?;
        paddock_shared::db::private_dir(&dir).map_err(|e| io("log dir", e))?;
        let kept = read_dir(&dir)?;
        let resumed = !kept.is_empty();
        let next_seq = kept.last().map(|f| f.seq + 1).unwrap_or(0);
        let size = std::fs::metadata(dir.join("1"))
            .map(|m| m.len())
            .unwrap_or(0);
        let log = Arc::new(SandboxLog {
            dir,
            writer: Mutex::new(Writer {
                file: None,
                size,
                next_seq,
            }),
            frames: broadcast::channel(FOLLOW_BUFFER).0,
        });
        lock(&self.open).insert(id.to_owned(), log.clone());
        Ok((log, resumed))
    }

    /// The open log of a running sandbox.
    pub fn live(&self, id: &str) -> Option<Arc<SandboxLog>> {
        lock(&self.open).get(id).cloned()
    }

    /// Closes a sandbox's log once it has ended: followers end when the
    /// last writer lets go.
    pub fn close(&self, id: &str) {
        lock(&self.open).remove(id);
    }

    /// What is kept of a sandbox's log, oldest first.
    pub fn read(&self, org: &str, id: &str) -> Result<Vec<Frame>> {
        match self.live(id) {
            // Hold the writer so that no rotation happens mid-read.
            Some(log) => {
                let _w = lock(&log.writer);
                read_dir(&log.dir)
            }
            None => read_dir(&self.dir(org, id)),
        }
    }

    /// Deletes a sandbox's log (with its record).
    pub fn remove(&self, org: &str, id: &str) {
        self.close(id);
        let dir = self.dir(org, id);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(sandbox = id, error = %e, "cannot remove the sandbox log");
        }
    }

    /// Deletes every log of a deleted organization.
    pub fn remove_org(&self, org: &str) {
        let dir = self.root.join(org);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(org, error = %e, "cannot remove the organization's logs");
        }
    }
}

impl SandboxLog {
    /// New frames from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Frame> {
        self.frames.subscribe()
    }

    /// Appends output. A log that cannot be written loses the output, not
    /// the sandbox: the failure is logged.
    pub fn append(&self, stream: LogStream, data: &[u8]) {
        if let Err(e) = self.try_append(stream, data) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write the sandbox log");
        }
    }

    fn try_append(&self, stream: LogStream, data: &[u8]) -> Result<()> {
        let mut w = lock(&self.writer);
        for piece in data.chunks(MAX_FRAME) {
            let frame_len = (HEADER + piece.len()) as u64;
            if w.file.is_none() || w.size + frame_len > SEGMENT_BYTES {
                if w.size + frame_len > SEGMENT_BYTES {
                    // The current segment becomes the previous one.
                    w.file = None;
                    match std::fs::rename(self.dir.join("1"), self.dir.join("0")) {
                        Ok(()) => w.size = 0,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => w.size = 0,
                        Err(e) => return Err(io("rotate", e)),
                    }
                }
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join("1"))
                    .map_err(|e| io("open", e))?;
                w.file = Some(file);
            }
            let seq = w.next_seq;
            let mut buf = Vec::with_capacity(HEADER + piece.len());
            buf.extend_from_slice(&seq.to_be_bytes());
            buf.push(stream as i32 as u8);
            buf.extend_from_slice(&(piece.len() as u32).to_be_bytes());
            buf.extend_from_slice(piece);
            if let Some(file) = w.file.as_mut() {
                file.write_all(&buf).map_err(|e| io("write", e))?;
            }
            w.size += frame_len;
            w.next_seq += 1;
            // Nobody following is not an error.
            let _ = self.frames.send(Frame {
                seq,
                stream,
                data: piece.to_vec(),
            });
        }
        Ok(())
    }
}

/// Responses in flight to a log reader.
const STREAM_BUFFER: usize = 16;

/// `GetSandboxLogs`: what is kept (or its tail), then, with `follow`, new
/// output until the sandbox ends or the reader goes away.
pub async fn stream(
    runner: Arc<crate::runner::Runner>,
    record: crate::store::Record,
    follow: bool,
    tail_bytes: i64,
) -> Result<tokio::sync::mpsc::Receiver<std::result::Result<GetSandboxLogsResponse, tonic::Status>>>
{
    if tail_bytes < -1 {
        return Err(Error::invalid("tail_bytes must be -1, 0 or positive"));
    }
    if tail_bytes == -1 && !follow {
        return Err(Error::invalid(
            "tail_bytes -1 (only new output) needs follow",
        ));
    }
    // Subscribed before reading what is kept, so nothing falls in between.
    let live = if follow && record.is_live() {
        runner.logs.live(&record.id)
    } else {
        None
    };
    let mut frames = live.as_ref().map(|l| l.subscribe());
    let mut state = if follow && record.is_live() {
        runner.subscribe(&record.id)
    } else {
        None
    };
    drop(live);
    let read = {
        let runner = runner.clone();
        let (org, id) = (record.org.clone(), record.id.clone());
        move || runner.logs.read(&org, &id)
    };
    let kept = tokio::task::spawn_blocking(read.clone())
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    let mut last = kept.last().map(|f| f.seq);
    let kept = if tail_bytes == -1 {
        Vec::new()
    } else {
        tail(kept, tail_bytes)
    };
    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
    tokio::spawn(
        async move {
            let send = |f: Frame| {
                let tx = tx.clone();
                async move {
                    tx.send(Ok(GetSandboxLogsResponse {
                        stream: f.stream as i32,
                        data: f.data,
                    }))
                    .await
                    .is_ok()
                }
            };
            for f in kept {
                if !send(f).await {
                    return;
                }
            }
            let Some(rx) = frames.as_mut() else { return };
            let ended = async {
                match state.as_mut() {
                    Some(s) => {
                        let _ = s
                            .wait_for(|s| {
                                s.state == SandboxState::Stopped as i32
                                    || s.state == SandboxState::Failed as i32
                            })
                            .await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(ended);
            let mut ending = false;
            loop {
                let next = if ending {
                    // The sandbox has ended: what is left, then the end.
                    match rx.try_recv() {
                        Ok(f) => Ok(f),
                        Err(broadcast::error::TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                        Err(_) => return,
                    }
                } else {
                    tokio::select! {
                        f = rx.recv() => f,
                        _ = &mut ended => {
                            ending = true;
                            continue;
                        }
                        _ = tx.closed() => return,
                    }
                };
                match next {
                    Ok(f) if last.is_some_and(|l| f.seq <= l) => {}
                    Ok(f) => {
                        last = Some(f.seq);
                        if !send(f).await {
                            return;
                        }
                    }
                    // Fell behind: catch up from the files.
                    Err(RecvError::Lagged(_)) => {
                        let Ok(Ok(kept)) = tokio::task::spawn_blocking(read.clone()).await else {
                            return;
                        };
                        for f in kept {
                            if last.is_some_and(|l| f.seq <= l) {
                                continue;
                            }
                            last = Some(f.seq);
                            if !send(f).await {
                                return;
                            }
                        }
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        }
        .in_current_span(),
    );
    Ok(rx)
}

/// The frames of both segments, oldest first. A torn last frame (a crash
/// mid-write) is dropped.
fn read_dir(dir: &Path) -> Result<Vec<Frame>> {
    let mut frames = Vec::new();
    for segment in ["0", "1"] {
        let mut bytes = Vec::new();
        match File::open(dir.join(segment)) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(|e| io("read", e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("open", e)),
        }
        frames.extend(parse(&bytes));
    }
    Ok(frames)
}

fn parse(mut bytes: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    while bytes.len() >= HEADER {
        let seq = u64::from_be_bytes(bytes[..8].try_into().unwrap_or_default());
        let stream = match bytes[8] {
            2 => LogStream::Stderr,
            _ => LogStream::Stdout,
        };
        let len = u32::from_be_bytes(bytes[9..13].try_into().unwrap_or_default()) as usize;
        let Some(data) = bytes.get(HEADER..HEADER + len) else {
            break;
        };
        frames.push(Frame {
            seq,
            stream,
            data: data.to_vec(),
        });
        bytes = &bytes[HEADER + len..];
    }
    frames
}

/// The last `tail` bytes of `frames` (the first kept frame cut to fit);
/// `tail <= 0` keeps everything.
pub fn tail(mut frames: Vec<Frame>, tail: i64) -> Vec<Frame> {
    if tail <= 0 {
        return frames;
    }
    let mut budget = tail as usize;
    let mut start = frames.len();
    while start > 0 && budget > 0 {
        let len = frames[start - 1].data.len();
        start -= 1;
        if len > budget {
            let cut = len - budget;
            frames[start].data.drain(..cut);
            budget = 0;
        } else {
            budget -= len;
        }
    }
    frames.split_off(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(frames: &[Frame]) -> String {
        frames
            .iter()
            .map(|f| String::from_utf8_lossy(&f.data).into_owned())
            .collect()
    }

    #[test]
    fn frames_round_trip_with_their_streams() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::new(dir.path());
        let (log, resumed) = logs.open("o", "sb1").unwrap();
        assert!(!resumed);
        log.append(LogStream::Stdout, b"out ");
        log.append(LogStream::Stderr, b"err");
        let frames = logs.read("o", "sb1").unwrap();
        assert_eq!(text(&frames), "out err");
        assert_eq!(frames[1].stream, LogStream::Stderr);
        assert_eq!((frames[0].seq, frames[1].seq), (0, 1));
        // Reopened after a restart: numbering goes on.
        logs.close("sb1");
        drop(log);
        let (log, resumed) = logs.open("o", "sb1").unwrap();
        assert!(resumed);
        log.append(LogStream::Stdout, b"!");
        assert_eq!(logs.read("o", "sb1").unwrap()[2].seq, 2);
    }

    #[test]
    fn the_log_is_bounded_and_keeps_the_newest_output() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::new(dir.path());
        let (log, _) = logs.open("o", "sb1").unwrap();
        let chunk = vec![b'x'; MAX_FRAME];
        let total = 3 * SEGMENT_BYTES as usize;
        for _ in 0..total / MAX_FRAME {
            log.append(LogStream::Stdout, &chunk);
        }
        log.append(LogStream::Stdout, b"the end");
        let on_disk: u64 = ["0", "1"]
            .iter()
            .map(|s| {
                std::fs::metadata(dir.path().join("logs/o/sb1").join(s))
                    .unwrap()
                    .len()
            })
            .sum();
        assert!(on_disk <= 2 * SEGMENT_BYTES, "{on_disk} bytes kept");
        assert!(on_disk > SEGMENT_BYTES, "{on_disk} bytes kept");
        let frames = logs.read("o", "sb1").unwrap();
        assert!(text(&frames).ends_with("the end"));
        // In order, no gaps.
        assert!(frames.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    }

    #[test]
    fn tail_cuts_from_the_end() {
        let frames = vec![
            Frame {
                seq: 0,
                stream: LogStream::Stdout,
                data: b"hello ".to_vec(),
            },
            Frame {
                seq: 1,
                stream: LogStream::Stdout,
                data: b"world".to_vec(),
            },
        ];
        assert_eq!(text(&tail(frames.clone(), 0)), "hello world");
        assert_eq!(text(&tail(frames.clone(), 7)), "o world");
        assert_eq!(text(&tail(frames.clone(), 5)), "world");
        assert_eq!(text(&tail(frames, 100)), "hello world");
    }

    #[test]
    fn a_torn_frame_is_dropped() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&0u64.to_be_bytes());
        bytes.push(1);
        bytes.extend_from_slice(&3u32.to_be_bytes());
        bytes.extend_from_slice(b"abc");
        bytes.extend_from_slice(&1u64.to_be_bytes());
        bytes.push(1);
        bytes.extend_from_slice(&100u32.to_be_bytes());
        bytes.extend_from_slice(b"short");
        assert_eq!(text(&parse(&bytes)), "abc");
    }
}
