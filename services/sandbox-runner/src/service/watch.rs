//! WatchSandbox: a sandbox's state, then every change, as a stream.

use futures_util::StreamExt;
use paddock_proto::sandbox::v1::{
    Sandbox, SandboxState, WatchSandboxRequest, WatchSandboxResponse,
};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::{BoxStream, Intent, Sandboxes, principal, view_of};
use crate::store;

impl Sandboxes {
    /// WatchSandbox: the caller may read the sandbox; the stream ends at a
    /// terminal state, at shutdown, or when the caller's credentials end.
    pub(super) async fn watch(
        &self,
        request: Request<WatchSandboxRequest>,
    ) -> Result<Response<BoxStream<WatchSandboxResponse>>, Status> {
        let caller = principal(&request)?;
        let guard = self.watches.open(&request)?;
        let record = self
            .authorized(&caller, &request.get_ref().name, Intent::Read)
            .await?;
        let mut closing = self.closing.clone();
        let rx = if record.is_live() {
            self.runner.subscribe(&record.id)
        } else {
            None
        };
        // Subscribed after the read: the current state is the receiver's
        // (it may have ended in between); a live record nobody supervises
        // (its end is being recorded) is read again.
        let first = match (&rx, record.is_live()) {
            (Some(rx), _) => rx.borrow().clone(),
            (None, true) => store::get(&self.runner.db.pool, &record.org, &record.id)
                .await?
                .map(|r| r.to_proto())
                .unwrap_or_else(|| record.to_proto()),
            (None, false) => record.to_proto(),
        };
        let reveal = self.reveals_env(&caller, &record).await?;
        let key = self.runner.env_key.clone();
        let stream = async_stream(first, rx, async move {
            let _ = closing.wait_for(|c| *c).await;
        })
        .map(move |item| {
            item.map(|mut r| {
                r.sandbox = r.sandbox.map(|s| view_of(&key, s, reveal));
                r
            })
        });
        Ok(Response::new(guard.serve(stream)))
    }
}

/// The first state, then every change until a terminal state or shutdown.
fn async_stream(
    first: Sandbox,
    rx: Option<tokio::sync::watch::Receiver<Sandbox>>,
    closing: impl std::future::Future<Output = ()> + Send + 'static,
) -> BoxStream<WatchSandboxResponse> {
    let (tx, out) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let terminal = |s: &Sandbox| {
            s.state == SandboxState::Stopped as i32 || s.state == SandboxState::Failed as i32
        };
        let mut last = first.clone();
        if tx
            .send(Ok(WatchSandboxResponse {
                sandbox: Some(first),
            }))
            .await
            .is_err()
            || terminal(&last)
        {
            return;
        }
        let Some(mut rx) = rx else { return };
        tokio::pin!(closing);
        loop {
            tokio::select! {
                changed = rx.changed() => {
                    let current = rx.borrow_and_update().clone();
                    if changed.is_err() && current == last {
                        return;
                    }
                    if current != last {
                        last = current.clone();
                        if tx.send(Ok(WatchSandboxResponse { sandbox: Some(current) })).await.is_err() {
                            return;
                        }
                    }
                    if terminal(&last) || changed.is_err() {
                        return;
                    }
                }
                _ = &mut closing => return,
            }
        }
    }.in_current_span());
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))
}
