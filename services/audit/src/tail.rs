//! Tails: what the group committer appends is broadcast in process, and
//! each open tail passes on its own organization's events from there,
//! reading the database only to catch up (when it starts, when it fell
//! behind the broadcast, or when another replica appended). Idle tails cost
//! nothing: no tail polls.
//!
//! Chains are gapless sequences, so a tail that remembers the last sequence
//! it looked at skips what it already passed on and notices what it missed:
//! nothing is skipped or delivered twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument;

use paddock_proto::audit::v1::TailEventsResponse;
use paddock_shared::db::Backend;
use tokio::sync::{broadcast, mpsc, watch};
use tonic::Status;

use crate::store::{ChainUpdate, Filter, Order, Store};

/// Commits the broadcast keeps for a tail that is busy sending; one that
/// falls further behind catches up from the database.
const COMMITS_BUFFER: usize = 256;
/// How often the process looks for events another replica appended to the
/// chains its tails follow: one read per followed chain, however many
/// tails follow it.
const REPLICA_POLL: Duration = Duration::from_secs(1);
/// Rows per catch-up read.
const BATCH: i64 = 500;
/// Events in flight between a tail and its client.
const TAIL_BUFFER: usize = 64;

/// What one commit changed in the followed chains, by organization id.
pub type Commit = HashMap<String, ChainUpdate>;

/// The in-process broadcast of commits, and the organizations with open
/// tails (the committer copies only their events).
#[derive(Clone)]
pub struct Tails {
    commits: broadcast::Sender<Arc<Commit>>,
    followed: Arc<Mutex<HashMap<String, usize>>>,
    backend: Backend,
}

impl Tails {
    pub fn new(backend: Backend) -> Self {
        Self {
            commits: broadcast::channel(COMMITS_BUFFER).0,
            followed: Arc::default(),
            backend,
        }
    }

    /// Whether some tail follows `org`'s chain.
    pub fn follows(&self, org: &str) -> bool {
        self.followed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(org)
    }

    /// Passes a commit on to the tails (nothing to do when none listens).
    pub fn publish(&self, commit: Commit) {
        if !commit.is_empty() {
            let _ = self.commits.send(Arc::new(commit));
        }
    }

    /// Tells the tails of `org` that its chain's head is now `head` (for
    /// appends made outside the committer: settings changes, replicas).
    pub fn publish_head(&self, org: &str, head: i64) {
        let update = ChainUpdate {
            events: Vec::new(),
            head,
        };
        self.publish(HashMap::from([(org.to_owned(), update)]));
    }

    fn follow(&self, org: &str) -> Following {
        *self
            .followed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(org.to_owned())
            .or_default() += 1;
        Following {
            followed: self.followed.clone(),
            org: org.to_owned(),
        }
    }

    /// Starts a tail of `org` after sequence `cursor` (None: from the
    /// chain's current head); events go to the returned receiver until the
    /// client leaves or `closing` turns true.
    pub async fn start(
        &self,
        store: Store,
        org: String,
        filter: Filter,
        cursor: Option<i64>,
        mut closing: watch::Receiver<bool>,
    ) -> Result<mpsc::Receiver<Result<TailEventsResponse, Status>>, Status> {
        // Subscribed before the head is read: a commit after the read is in
        // the broadcast, one before it is in the database.
        let mut commits = self.commits.subscribe();
        let following = self.follow(&org);
        let scanned = match cursor {
            Some(c) => c,
            None => store.head(&org).await?.0,
        };
        let (tx, rx) = mpsc::channel(TAIL_BUFFER);
        let mut tail = Tail {
            store,
            org,
            filter,
            backend: self.backend,
            scanned,
            tx,
        };
        tokio::spawn(
            async move {
                let _following = following;
                if !tail.catch_up().await {
                    return;
                }
                loop {
                    let commit = tokio::select! {
                        _ = closing.wait_for(|c| *c) => return,
                        _ = tail.tx.closed() => return,
                        commit = commits.recv() => commit,
                    };
                    let more = match commit {
                        Ok(commit) => match commit.get(&tail.org) {
                            Some(update) => tail.pass_on(update).await,
                            None => true,
                        },
                        // Commits were dropped for this tail: read them back.
                        Err(broadcast::error::RecvError::Lagged(_)) => tail.catch_up().await,
                        Err(broadcast::error::RecvError::Closed) => false,
                    };
                    if !more {
                        return;
                    }
                }
            }
            .in_current_span(),
        );
        Ok(rx)
    }

    /// Looks, every [`REPLICA_POLL`], whether the followed chains moved
    /// ahead of what this process published (another replica appended),
    /// and tells their tails. Ends when `closing` turns true.
    pub fn spawn_replica_watch(
        &self,
        store: Store,
        mut closing: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let tails = self.clone();
        tokio::spawn(
            async move {
                let mut seen: HashMap<String, i64> = HashMap::new();
                loop {
                    tokio::select! {
                        _ = closing.wait_for(|c| *c) => return,
                        _ = tokio::time::sleep(REPLICA_POLL) => {}
                    }
                    let orgs: Vec<String> = tails
                        .followed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .keys()
                        .cloned()
                        .collect();
                    seen.retain(|org, _| orgs.contains(org));
                    for org in orgs {
                        let Ok((head, _)) = store.head(&org).await else {
                            continue;
                        };
                        if seen.insert(org.clone(), head) != Some(head) {
                            tails.publish_head(&org, head);
                        }
                    }
                }
            }
            .in_current_span(),
        )
    }
}

/// One tail's mark in [`Tails`]' followed organizations.
struct Following {
    followed: Arc<Mutex<HashMap<String, usize>>>,
    org: String,
}

impl Drop for Following {
    fn drop(&mut self) {
        let mut followed = self.followed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = followed.get_mut(&self.org) {
            *n -= 1;
            if *n == 0 {
                followed.remove(&self.org);
            }
        }
    }
}

struct Tail {
    store: Store,
    org: String,
    filter: Filter,
    backend: Backend,
    /// Every sequence up to this one has been looked at, matching or not.
    scanned: i64,
    tx: mpsc::Sender<Result<TailEventsResponse, Status>>,
}

impl Tail {
    /// Sends one event (unless `check` finds it does not match the
    /// filter); false once the client has left.
    ///
    /// The event that seals the chain (the organization was deleted) ends
    /// the tail: nobody in an organization reads the chain after it.
    async fn send(&mut self, event: paddock_proto::audit::v1::AuditEvent, check: bool) -> bool {
        self.scanned = event.sequence;
        let sealed = crate::store::seals(&event);
        if !check || self.filter.matches(&event, self.backend) {
            let item = TailEventsResponse {
                cursor: encode_cursor(event.sequence),
                event: Some(event),
            };
            if self.tx.send(Ok(item)).await.is_err() {
                return false;
            }
        }
        if sealed {
            let name = paddock_shared::names::org_name(&self.org);
            let _ = self
                .tx
                .send(Err(Status::not_found(format!(
                    "{name} not found: the organization was deleted and its audit chain sealed"
                ))))
                .await;
            return false;
        }
        true
    }

    /// Passes on a commit's events that follow the last one looked at;
    /// reads the rest from the database when the commit does not start
    /// right after it.
    async fn pass_on(&mut self, update: &ChainUpdate) -> bool {
        for event in &update.events {
            if event.sequence <= self.scanned {
                continue;
            }
            if event.sequence != self.scanned + 1 {
                break;
            }
            if !self.send(event.clone(), true).await {
                return false;
            }
        }
        if update.head > self.scanned {
            return self.catch_up().await;
        }
        true
    }

    /// Reads what was appended after the last event looked at, up to the
    /// chain's current head.
    async fn catch_up(&mut self) -> bool {
        let head = match self.store.head(&self.org).await {
            Ok((head, _)) => head,
            Err(e) => {
                let _ = self.tx.send(Err(e.into())).await;
                return false;
            }
        };
        while self.scanned < head {
            let events = match self
                .store
                .read(
                    &self.org,
                    &self.filter,
                    Some(self.scanned),
                    Some(head),
                    Order::Oldest,
                    BATCH,
                )
                .await
            {
                Ok(events) => events,
                Err(e) => {
                    let _ = self.tx.send(Err(e.into())).await;
                    return false;
                }
            };
            let full = events.len() as i64 == BATCH;
            // Read through the filter already.
            for event in events {
                if !self.send(event, false).await {
                    return false;
                }
            }
            if !full {
                self.scanned = head;
            }
        }
        true
    }
}

/// A tail cursor: the sequence of the last event delivered.
pub fn encode_cursor(sequence: i64) -> String {
    format!("{sequence:016x}")
}
