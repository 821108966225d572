//! The network-mode behaviour authz and the runner agreed on (issue 10):
//! default deny wherever a value is missing or unknown.

use paddock_proto::authz::v1::{AgentPolicy, NetworkMode, SecuritySettings};

use super::*;
use crate::{effective, fill_settings};

const UNKNOWN: i32 = 42;

#[test]
fn modes_order_by_width() {
    let order = [
        NetworkMode::None,
        NetworkMode::Allowlist,
        NetworkMode::Denylist,
        NetworkMode::Open,
    ];
    for pair in order.windows(2) {
        assert!(width(pair[0]) < width(pair[1]), "{pair:?}");
    }
    assert_eq!(width(NetworkMode::Unspecified), width(NetworkMode::None));
    assert_eq!(
        narrow(NetworkMode::Open, NetworkMode::Allowlist),
        NetworkMode::Allowlist
    );
    assert_eq!(
        narrow(NetworkMode::None, NetworkMode::Open),
        NetworkMode::None
    );
}

#[test]
fn names_are_the_lowercase_words() {
    assert_eq!(name(NetworkMode::None), "none");
    assert_eq!(name(NetworkMode::Allowlist), "allowlist");
    assert_eq!(name(NetworkMode::Denylist), "denylist");
    assert_eq!(name(NetworkMode::Open), "open");
    assert_eq!(name(NetworkMode::Unspecified), "unspecified");
}

#[test]
fn a_missing_or_unknown_agent_mode_is_none() {
    assert_eq!(of(NetworkMode::Unspecified as i32), NetworkMode::None);
    assert_eq!(of(UNKNOWN), NetworkMode::None);
    assert_eq!(of(NetworkMode::Open as i32), NetworkMode::Open);
    assert!(parse("network_mode", UNKNOWN, NetworkMode::None).is_err());
    assert_eq!(
        parse("network_mode", 0, NetworkMode::None).expect("unspecified"),
        NetworkMode::None
    );
}

#[test]
fn an_unset_org_bound_is_open_and_an_unknown_one_is_none() {
    assert_eq!(org_bound(0), NetworkMode::Open);
    assert_eq!(org_bound(UNKNOWN), NetworkMode::None);
    let filled = |max_network_mode| {
        fill_settings(&SecuritySettings {
            max_network_mode,
            ..Default::default()
        })
        .max_network_mode
    };
    assert_eq!(filled(0), NetworkMode::Open as i32);
    // Before issue 10 authz filled an unknown stored bound as open.
    assert_eq!(filled(UNKNOWN), NetworkMode::None as i32);
    assert_eq!(
        filled(NetworkMode::Allowlist as i32),
        NetworkMode::Allowlist as i32
    );
}

#[test]
fn the_effective_mode_never_exceeds_the_org_bound() {
    let settings = |mode: NetworkMode| {
        fill_settings(&SecuritySettings {
            max_network_mode: mode as i32,
            ..Default::default()
        })
    };
    let policy = |mode: i32| AgentPolicy {
        network_mode: mode,
        ..Default::default()
    };
    let mode = |p: i32, s: NetworkMode| effective(&policy(p), &settings(s)).network_mode;
    assert_eq!(
        mode(NetworkMode::Open as i32, NetworkMode::Allowlist),
        NetworkMode::Allowlist as i32
    );
    assert_eq!(
        mode(NetworkMode::Denylist as i32, NetworkMode::Open),
        NetworkMode::Denylist as i32
    );
    assert_eq!(mode(0, NetworkMode::Open), NetworkMode::None as i32);
    assert_eq!(mode(UNKNOWN, NetworkMode::Open), NetworkMode::None as i32);
}

#[test]
fn a_sandbox_gets_its_request_or_the_policy_never_wider() {
    let open = NetworkMode::Open as i32;
    let none = NetworkMode::None as i32;
    assert_eq!(sandbox_mode(0, open).expect("policy's"), NetworkMode::Open);
    assert_eq!(
        sandbox_mode(none, open).expect("narrower"),
        NetworkMode::None
    );
    assert_eq!(
        sandbox_mode(NetworkMode::Allowlist as i32, NetworkMode::Denylist as i32)
            .expect("narrower"),
        NetworkMode::Allowlist
    );
    // A policy naming no mode, or one this build does not know, is none.
    assert_eq!(sandbox_mode(0, 0).expect("none"), NetworkMode::None);
    assert_eq!(sandbox_mode(0, UNKNOWN).expect("none"), NetworkMode::None);
    let wider = sandbox_mode(open, UNKNOWN).expect_err("wider");
    assert!(wider.to_string().contains("wider than"), "{wider}");
    let wider = sandbox_mode(open, NetworkMode::Allowlist as i32).expect_err("wider");
    assert!(
        wider.to_string().contains("network_mode allowlist"),
        "{wider}"
    );
    assert!(sandbox_mode(UNKNOWN, open).is_err());
}
