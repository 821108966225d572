//! The audit chain's canonical encoding and hash. The audit service chains
//! with it and verifiers recompute it; changing any stored field of an
//! event changes its hash.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use sha2::{Digest, Sha256};

use crate::proto::audit::v1::{AuditEvent, Outcome};

/// The hash of the chain's start (before sequence 1): 64 zeros.
/// The `organization` of an event that belongs to no organization (a
/// refusal of a token that names no known key): it is chained in the
/// platform chain, which only the platform bootstrap token reads.
pub const PLATFORM_CHAIN: &str = "platform";

/// Platform-chain refusals one service records per minute at most.
pub const PLATFORM_EVENTS_PER_MINUTE: u32 = 120;

/// Caps the refusals a service records in the platform chain: anyone can
/// send bad tokens, and a flood of them must not flood the audit trail.
/// `governor`'s GCRA gives a burst of `per_minute`, then one more every
/// `60 s / per_minute`. What is held back is counted; the count rides on
/// the next event let through (`"suppressed_before": N` in its details).
#[derive(Debug)]
pub struct PlatformBudget<C: Clock = DefaultClock> {
    limiter: RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
    /// Held back since the last recorded event.
    held: AtomicU64,
}

/// One source's current minute (see [`SourceBudgets`] for why this one is
/// a fixed window of its own, not a `governor` limiter).
#[derive(Debug, Clone, Copy)]
struct Window {
    start: std::time::Instant,
    /// Recorded in this window.
    recorded: u32,
    /// Held back since the last recorded event.
    held: u64,
}

impl Window {
    fn new() -> Self {
        Self {
            start: std::time::Instant::now(),
            recorded: 0,
            held: 0,
        }
    }

    fn expired(&self) -> bool {
        self.start.elapsed() >= std::time::Duration::from_secs(60)
    }

    /// `Some(held back before it)` to record the next event, `None` to
    /// hold it back.
    fn admit(&mut self, per_minute: u32) -> Option<u64> {
        if self.expired() {
            self.start = std::time::Instant::now();
            self.recorded = 0;
        }
        if self.recorded >= per_minute {
            self.held += 1;
            return None;
        }
        self.recorded += 1;
        Some(std::mem::take(&mut self.held))
    }
}

/// Notes on an event how many like it were held back before it.
fn note_suppressed(event: &mut AuditEvent, held: u64) {
    if held > 0
        && let Ok(serde_json::Value::Object(mut details)) =
            serde_json::from_str::<serde_json::Value>(&event.details_json)
    {
        details.insert("suppressed_before".into(), held.into());
        event.details_json = serde_json::Value::Object(details).to_string();
    }
}

impl Default for PlatformBudget {
    fn default() -> Self {
        Self::new(PLATFORM_EVENTS_PER_MINUTE)
    }
}

impl PlatformBudget {
    /// A budget of `per_minute` events (at least one).
    pub fn new(per_minute: u32) -> Self {
        Self::with_clock(per_minute, DefaultClock::default())
    }
}

impl<C: Clock> PlatformBudget<C> {
    /// A budget on `clock` (tests pass a clock they advance).
    pub fn with_clock(per_minute: u32, clock: C) -> Self {
        let quota = Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN));
        Self {
            limiter: RateLimiter::direct_with_clock(quota, clock),
            held: AtomicU64::new(0),
        }
    }

    /// Whether to record the next platform event: `Some(held back before
    /// it)`, or `None` to hold it back.
    pub fn admit(&self) -> Option<u64> {
        // A hold racing a recorded event's swap is counted on the next one.
        match self.limiter.check() {
            Ok(()) => Some(self.held.swap(0, Ordering::Relaxed)),
            Err(_) => {
                self.held.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Prepares `event` for the platform chain, or returns false to drop it.
    pub fn charge(&self, event: &mut AuditEvent) -> bool {
        let Some(held) = self.admit() else {
            return false;
        };
        event.organization = PLATFORM_CHAIN.to_owned();
        note_suppressed(event, held);
        true
    }
}

/// Failed authentications one source may add to an organization's chain per
/// minute, per key id it names.
pub const SOURCE_EVENTS_PER_MINUTE: u32 = PLATFORM_EVENTS_PER_MINUTE;

/// The platform chain's budget for the failed authentications charged to an
/// organization's chain (a token naming one of its keys with a wrong
/// secret): anyone who knows a key id can send those, so each (source
/// address, key id) gets [`SOURCE_EVENTS_PER_MINUTE`], and what is held back
/// is counted on the next event let through, as in [`PlatformBudget`].
///
/// Each source keeps a fixed one-minute window rather than a `governor`
/// limiter: GCRA refills continuously (one event every half second at
/// 120/min), so a flood lasting over half a second would put more than 120
/// of it in the organization's chain, and the audit service's tests (and
/// the README) hold a burst to at most 120.
#[derive(Debug)]
pub struct SourceBudgets {
    per_minute: u32,
    windows: std::sync::Mutex<std::collections::HashMap<String, Window>>,
}

impl Default for SourceBudgets {
    fn default() -> Self {
        Self::new(SOURCE_EVENTS_PER_MINUTE)
    }
}

impl SourceBudgets {
    /// Sources tracked at most; beyond that (after dropping the idle ones)
    /// new sources share one budget, so memory stays bounded.
    const MAX_SOURCES: usize = 10_000;
    const OVERFLOW: &str = "";

    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            windows: std::sync::Mutex::default(),
        }
    }

    /// Whether to record `event`, a refusal from `source` (the peer's
    /// address, if known) naming `key_id`; notes the count held back
    /// before it.
    pub fn charge(
        &self,
        source: Option<std::net::IpAddr>,
        key_id: &str,
        event: &mut AuditEvent,
    ) -> bool {
        let key = format!(
            "{}\u{1f}{key_id}",
            source.map(|s| s.to_string()).unwrap_or_default()
        );
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if !windows.contains_key(&key) && windows.len() >= Self::MAX_SOURCES {
            // Idle sources with nothing held back have nothing to report.
            windows.retain(|_, w| !(w.expired() && w.held == 0));
        }
        let key = if windows.contains_key(&key) || windows.len() < Self::MAX_SOURCES {
            key
        } else {
            Self::OVERFLOW.to_owned()
        };
        let Some(held) = windows
            .entry(key)
            .or_insert_with(Window::new)
            .admit(self.per_minute)
        else {
            return false;
        };
        note_suppressed(event, held);
        true
    }
}

pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// SHA-256 (hex) of the canonical encoding of every field of `event` but
/// `hash`: each field, in a fixed order, as an 8-byte big-endian length
/// followed by its UTF-8 bytes. Times are unix microseconds, enums their
/// names, numbers decimal.
pub fn event_hash(event: &AuditEvent) -> String {
    let actor = event.actor.clone().unwrap_or_default();
    let time = event
        .time
        .as_ref()
        .map_or(0, crate::time::timestamp_micros)
        .to_string();
    let outcome = Outcome::try_from(event.outcome)
        .unwrap_or(Outcome::Unspecified)
        .as_str_name();
    let sequence = event.sequence.to_string();
    let fields: [&str; 16] = [
        &event.id,
        &time,
        &event.organization,
        &actor.principal_id,
        &actor.kind,
        &actor.display_name,
        &actor.key_id,
        &event.action,
        &event.resource,
        outcome,
        &event.error_code,
        &event.source_service,
        &event.trace_id,
        &event.details_json,
        &sequence,
        &event.previous_hash,
    ];
    let mut hasher = Sha256::new();
    hasher.update(b"paddock.audit.v1\n");
    for field in fields {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    crate::hex::encode(&hasher.finalize())
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn the_platform_budget_holds_back_and_counts() {
        let clock = governor::clock::FakeRelativeClock::default();
        let budget = PlatformBudget::with_clock(2, clock.clone());
        assert_eq!(budget.admit(), Some(0));
        assert_eq!(budget.admit(), Some(0));
        assert_eq!(budget.admit(), None);
        assert_eq!(budget.admit(), None);
        // A minute on, events go through with the count of those held.
        clock.advance(std::time::Duration::from_secs(61));
        let mut event = AuditEvent {
            details_json: "{}".into(),
            ..Default::default()
        };
        assert!(budget.charge(&mut event));
        assert_eq!(event.organization, PLATFORM_CHAIN);
        assert_eq!(event.details_json, r#"{"suppressed_before":2}"#);
        let mut next = AuditEvent {
            details_json: "{}".into(),
            ..Default::default()
        };
        assert!(budget.charge(&mut next));
        assert_eq!(next.details_json, "{}", "counted once");
        assert_eq!(budget.admit(), None);
    }

    #[test]
    fn the_platform_budget_refills_one_event_at_a_time() {
        let clock = governor::clock::FakeRelativeClock::default();
        let budget = PlatformBudget::with_clock(120, clock.clone());
        for _ in 0..120 {
            assert!(budget.admit().is_some());
        }
        assert_eq!(budget.admit(), None);
        // 120 a minute: one more every half second, with the count.
        clock.advance(std::time::Duration::from_millis(500));
        assert_eq!(budget.admit(), Some(1));
        assert_eq!(budget.admit(), None);
    }
}

#[cfg(test)]
mod source_budget_tests {
    use super::*;

    fn refusal() -> AuditEvent {
        AuditEvent {
            organization: "organizations/acme".into(),
            details_json: "{}".into(),
            ..Default::default()
        }
    }

    #[test]
    fn each_source_and_key_has_its_own_budget_and_count() {
        let budgets = SourceBudgets::new(2);
        let a: std::net::IpAddr = "192.0.2.1".parse().expect("ip");
        let b: std::net::IpAddr = "192.0.2.2".parse().expect("ip");
        for _ in 0..2 {
            assert!(budgets.charge(Some(a), "k1", &mut refusal()));
        }
        for _ in 0..3 {
            assert!(!budgets.charge(Some(a), "k1", &mut refusal()));
        }
        // Another address, or another key id from the same one, is not held.
        assert!(budgets.charge(Some(b), "k1", &mut refusal()));
        assert!(budgets.charge(Some(a), "k2", &mut refusal()));
        // The next minute lets one through, with the count held before it,
        // and the event stays in its organization's chain.
        let key = format!("{a}\u{1f}k1");
        budgets
            .windows
            .lock()
            .expect("lock")
            .get_mut(&key)
            .expect("window")
            .start -= std::time::Duration::from_secs(61);
        let mut next = refusal();
        assert!(budgets.charge(Some(a), "k1", &mut next));
        assert_eq!(next.details_json, r#"{"suppressed_before":3}"#);
        assert_eq!(next.organization, "organizations/acme");
        let mut after = refusal();
        assert!(budgets.charge(Some(a), "k1", &mut after));
        assert_eq!(after.details_json, "{}", "counted once");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::audit::v1::Actor;

    fn event() -> AuditEvent {
        AuditEvent {
            id: "0190f7a0-0000-7000-8000-000000000001".into(),
            time: Some(crate::time::timestamp(1_700_000_000_000_000)),
            organization: "organizations/acme".into(),
            actor: Some(Actor {
                principal_id: "m1".into(),
                kind: "PRINCIPAL_KIND_MEMBER".into(),
                display_name: "a@acme.test".into(),
                key_id: "k1".into(),
            }),
            action: "apikey.create".into(),
            resource: "organizations/acme/apiKeys/k2".into(),
            outcome: Outcome::Success as i32,
            source_service: "identity".into(),
            details_json: "{}".into(),
            sequence: 1,
            previous_hash: GENESIS_HASH.into(),
            ..Default::default()
        }
    }

    #[test]
    fn every_field_is_covered() {
        let base = event_hash(&event());
        assert_eq!(base.len(), 64);
        let changes: Vec<fn(&mut AuditEvent)> = vec![
            |e| e.id.push('x'),
            |e| e.time = Some(crate::time::timestamp(1)),
            |e| e.organization.push('x'),
            |e| e.actor.as_mut().unwrap().principal_id.push('x'),
            |e| e.actor.as_mut().unwrap().kind.push('x'),
            |e| e.actor.as_mut().unwrap().display_name.push('x'),
            |e| e.actor.as_mut().unwrap().key_id.push('x'),
            |e| e.action.push('x'),
            |e| e.resource.push('x'),
            |e| e.outcome = Outcome::Denied as i32,
            |e| e.error_code.push('x'),
            |e| e.source_service.push('x'),
            |e| e.trace_id.push('x'),
            |e| e.details_json = "{\"a\":1}".into(),
            |e| e.sequence = 2,
            |e| e.previous_hash = "1".repeat(64),
        ];
        for (i, change) in changes.into_iter().enumerate() {
            let mut e = event();
            change(&mut e);
            assert_ne!(event_hash(&e), base, "field change {i} is not covered");
        }
        // The stored hash itself is not an input.
        let mut e = event();
        e.hash = "anything".into();
        assert_eq!(event_hash(&e), base);
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        let mut a = event();
        a.action = "ab".into();
        a.resource = "c".into();
        let mut b = event();
        b.action = "a".into();
        b.resource = "bc".into();
        assert_ne!(event_hash(&a), event_hash(&b));
    }
}
