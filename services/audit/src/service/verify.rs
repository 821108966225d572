//! VerifyChain and VerifyPlatformChain: walking a chain from its
//! retention checkpoint (or a range of it), recomputing each hash and
//! checking every link and the head.

use paddock_proto::audit::v1::{VerifyChainRequest, VerifyChainResponse};
use paddock_shared::audit::{GENESIS_HASH, event_hash};
use paddock_shared::error::{Error, Result};
use paddock_shared::time::timestamp;
use tonic::Status;

use super::{Audit, BATCH};

impl Audit {
    /// Verifies `org`'s chain, or a range of it.
    pub(super) async fn verify_in(
        &self,
        org: &str,
        req: VerifyChainRequest,
    ) -> Result<VerifyChainResponse, Status> {
        if req.from_sequence < 0 || req.to_sequence < 0 {
            return Err(
                Error::invalid("from_sequence and to_sequence must not be negative").into(),
            );
        }
        if req.to_sequence != 0 && req.from_sequence > req.to_sequence {
            return Err(Error::invalid("from_sequence is after to_sequence").into());
        }
        Ok(self.verify(org, req.from_sequence, req.to_sequence).await?)
    }

    /// Verifies `org`'s chain from `from` to `to` (0: start / end). A break
    /// found while retention moved the checkpoint may be events that
    /// retention deleted during the walk: that walk is repeated.
    async fn verify(&self, org: &str, from: i64, to: i64) -> Result<VerifyChainResponse> {
        let mut attempts = 0;
        loop {
            let response = self.verify_once(org, from, to).await?;
            attempts += 1;
            if response.intact || attempts == 3 {
                return Ok(response);
            }
            let now = self.store.checkpoint(org).await?.map_or(0, |c| c.sequence);
            if now == response.checkpoint_sequence {
                return Ok(response);
            }
        }
    }

    /// Walks `org`'s chain from `from` to `to` (0: start / end) in batches,
    /// recomputing each hash and checking every link.
    async fn verify_once(&self, org: &str, from: i64, to: i64) -> Result<VerifyChainResponse> {
        let checkpoint = self.store.checkpoint(org).await?;
        let (start, start_hash) = checkpoint
            .as_ref()
            .map_or((0, GENESIS_HASH.to_owned()), |c| {
                (c.sequence, c.hash.clone())
            });
        let (head_sequence, head_hash) = self.store.head(org).await?;
        // The sequence before the first one verified, and the hash the
        // first one must link to.
        let before = from.saturating_sub(1).max(start);
        let mut expected_previous = if before == start {
            Some(start_hash.clone())
        } else {
            // A range that starts mid-chain links to the stored event
            // before it (if that is gone, the walk reports the gap there).
            self.store.hash_at(org, before).await?
        };
        // Up to the head read above: events appended during the walk are
        // for the next verification.
        let last = if to == 0 { head_sequence } else { to };
        let mut response = VerifyChainResponse {
            intact: true,
            ..Default::default()
        };
        if let Some(c) = checkpoint {
            response.checkpoint_sequence = c.sequence;
            response.checkpoint_hash = c.hash;
            response.checkpoint_time = Some(timestamp(c.time));
        }
        let broken = |response: &mut VerifyChainResponse, sequence, id: &str, problem: String| {
            response.intact = false;
            response.broken_sequence = sequence;
            response.broken_event_id = id.to_owned();
            response.problem = problem;
        };
        let mut expected_sequence = before + 1;
        let mut previous_sequence = before;
        loop {
            let events = self
                .store
                .range(org, previous_sequence, last, BATCH)
                .await?;
            let full = events.len() as i64 == BATCH;
            for event in events {
                if event.sequence != expected_sequence {
                    let after_checkpoint = if expected_sequence == start + 1 && start > 0 {
                        format!(" (right after the retention checkpoint at {start})")
                    } else {
                        String::new()
                    };
                    broken(
                        &mut response,
                        event.sequence,
                        &event.id,
                        format!(
                            "sequence gap: events {expected_sequence} to {} are missing{after_checkpoint}",
                            event.sequence - 1
                        ),
                    );
                    return Ok(response);
                }
                if let Some(previous) = &expected_previous
                    && &event.previous_hash != previous
                {
                    broken(
                        &mut response,
                        event.sequence,
                        &event.id,
                        "previous hash mismatch: the event does not link to the one before it"
                            .into(),
                    );
                    return Ok(response);
                }
                if event_hash(&event) != event.hash {
                    broken(
                        &mut response,
                        event.sequence,
                        &event.id,
                        "hash mismatch: a stored field was changed".into(),
                    );
                    return Ok(response);
                }
                response.verified += 1;
                expected_sequence += 1;
                previous_sequence = event.sequence;
                expected_previous = Some(event.hash);
            }
            if !full {
                break;
            }
        }
        // The head must match the last event when the walk reached it.
        let reached = previous_sequence;
        if to == 0 || to >= head_sequence {
            if reached < head_sequence {
                broken(
                    &mut response,
                    reached + 1,
                    "",
                    format!(
                        "sequence gap: events {} to {head_sequence} (the chain's head) are missing",
                        reached + 1
                    ),
                );
            } else if reached > head_sequence {
                broken(
                    &mut response,
                    reached,
                    "",
                    format!("head mismatch: the chain head is at {head_sequence}"),
                );
            } else if expected_previous.as_deref() != Some(head_hash.as_str()) {
                broken(
                    &mut response,
                    reached,
                    "",
                    "head hash mismatch: the last event is not the recorded head".into(),
                );
            }
        }
        if to == 0 && response.intact {
            // Events beyond the head (a head moved back): the last event is
            // read before the head, as appends move both in one commit.
            let last_stored = self.store.last_sequence(org).await?;
            let (head_now, _) = self.store.head(org).await?;
            if last_stored > head_now {
                broken(
                    &mut response,
                    last_stored,
                    "",
                    format!(
                        "head mismatch: events are stored beyond the chain's head at {head_now}"
                    ),
                );
            }
        }
        Ok(response)
    }
}
