//! `WatchInvalidations`: the changes that make cached principals stale,
//! pushed to the services that cache them. A watcher first gets a reset,
//! and another whenever it lagged and lost pushes.

use std::pin::Pin;

use futures_util::Stream;
use paddock_proto::identity::v1::WatchInvalidationsResponse;
use paddock_shared::auth::Invalidation;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tonic::Status;

use super::Identity;

pub type WatchStream =
    Pin<Box<dyn Stream<Item = Result<WatchInvalidationsResponse, Status>> + Send>>;

/// The stream of one watcher; it ends when the server shuts down.
pub(super) fn watch(identity: &Identity) -> WatchStream {
    let changes = BroadcastStream::new(identity.invalidations.subscribe()).map(|change| {
        // A lagging watcher lost pushes: tell it to drop everything.
        let change = change.unwrap_or(Invalidation::Reset);
        Ok(WatchInvalidationsResponse {
            target: Some(change.into_target()),
        })
    });
    let first = tokio_stream::once(Ok(WatchInvalidationsResponse {
        target: Some(Invalidation::Reset.into_target()),
    }));
    let mut closing = identity.closing.clone();
    let closed = async move {
        let _ = closing.wait_for(|c| *c).await;
    };
    Box::pin(futures_util::StreamExt::take_until(
        first.chain(changes),
        closed,
    ))
}
