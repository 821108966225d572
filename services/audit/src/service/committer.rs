//! The group committer: the one writer that appends events to the hash
//! chains. AppendEvents requests (and the service's own refusals) queue
//! here and are merged into one transaction each.

use paddock_shared::error::Result;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use crate::store::{Appender, Pending, Store};
use crate::tail::Tails;

/// One AppendEvents request waiting for its commit.
pub(super) struct AppendJob {
    pub(super) events: Vec<Pending>,
    pub(super) done: oneshot::Sender<Result<usize, Status>>,
}

/// Requests merged into one transaction at most.
pub(super) const MAX_GROUP_REQUESTS: usize = 256;
/// Events merged into one transaction at most (beyond one request's).
const MAX_GROUP_EVENTS: usize = 5000;

/// Commits appends one transaction at a time, merging the requests that
/// queued meanwhile into it: one durable commit (fsync) serves them all,
/// and appends in this process never race for a chain head. Ends when the
/// service is dropped.
pub(super) async fn group_commit(store: Store, mut jobs: mpsc::Receiver<AppendJob>, tails: Tails) {
    let mut appender: Option<Appender> = None;
    while let Some(first) = jobs.recv().await {
        let mut total = first.events.len();
        let mut group = vec![first];
        while total < MAX_GROUP_EVENTS && group.len() < MAX_GROUP_REQUESTS {
            match jobs.try_recv() {
                Ok(job) => {
                    total += job.events.len();
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        let (batches, replies): (Vec<_>, Vec<_>) =
            group.into_iter().map(|j| (j.events, j.done)).unzip();
        let follow = |org: &str| tails.follows(org);
        let result = match appender.as_mut() {
            Some(a) => a.append(batches, &follow).await,
            None => match store.appender().await {
                Ok(mut a) => {
                    let result = a.append(batches, &follow).await;
                    appender = Some(a);
                    result
                }
                Err(e) => Err(e),
            },
        };
        if result.is_err() {
            // The connection may be broken: the next group takes another.
            appender = None;
        }
        match result {
            Ok((counts, updates)) => {
                tails.publish(updates.into_iter().collect());
                for (reply, count) in replies.into_iter().zip(counts) {
                    let _ = reply.send(Ok(count));
                }
            }
            Err(e) => {
                let status = Status::from(e);
                for reply in replies {
                    let _ = reply.send(Err(status.clone()));
                }
            }
        }
    }
}
