//! The audit chain's canonical encoding and hash. The audit service chains
//! with it and verifiers recompute it; changing any stored field of an
//! event changes its hash.

use sha2::{Digest, Sha256};

use crate::proto::audit::v1::{AuditEvent, Outcome};

/// The hash of the chain's start (before sequence 1): 64 zeros.
/// The `organization` of an event that belongs to no organization (a
/// refusal of a token that names no known key): it is chained in the
/// platform chain, which only the platform bootstrap token reads.
pub const PLATFORM_CHAIN: &str = "platform";

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
