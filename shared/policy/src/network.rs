//! Network modes: the one reading of them that authz, the runner and the
//! CLI share. Modes order by width (none < allowlist < denylist < open),
//! and every unclear value reads as the narrowest: an agent policy that
//! names no mode, or a value this build does not know, is `none`.

use paddock_proto::authz::v1::NetworkMode;
use paddock_shared::error::{Error, Result};

/// How wide a network mode is: none < allowlist < denylist < open.
pub fn width(mode: NetworkMode) -> u8 {
    match mode {
        NetworkMode::Unspecified | NetworkMode::None => 0,
        NetworkMode::Allowlist => 1,
        NetworkMode::Denylist => 2,
        NetworkMode::Open => 3,
    }
}

/// `none`, `allowlist`, `denylist`, `open` (and `unspecified`).
pub fn name(mode: NetworkMode) -> &'static str {
    match mode {
        NetworkMode::Unspecified => "unspecified",
        NetworkMode::None => "none",
        NetworkMode::Allowlist => "allowlist",
        NetworkMode::Denylist => "denylist",
        NetworkMode::Open => "open",
    }
}

/// A stored or served mode (an agent policy's, a sandbox's, a filled
/// organization bound): unspecified and unknown values are `none`.
pub fn of(value: i32) -> NetworkMode {
    match NetworkMode::try_from(value) {
        Ok(NetworkMode::Unspecified) | Err(_) => NetworkMode::None,
        Ok(mode) => mode,
    }
}

/// A mode as a caller sent it in `field`: unspecified is `unspecified`,
/// an unknown value is INVALID_ARGUMENT.
pub fn parse(field: &str, value: i32, unspecified: NetworkMode) -> Result<NetworkMode> {
    match NetworkMode::try_from(value) {
        Ok(NetworkMode::Unspecified) => Ok(unspecified),
        Ok(mode) => Ok(mode),
        Err(_) => Err(Error::invalid(format!(
            "{field} {value} is not a network mode: use NETWORK_MODE_NONE, _ALLOWLIST, _DENYLIST or _OPEN"
        ))),
    }
}

/// An organization's widest mode as stored: unspecified means no bound was
/// set, so the built-in one, `open`; a value this build does not know is
/// `none`.
pub fn org_bound(value: i32) -> NetworkMode {
    match NetworkMode::try_from(value) {
        Ok(NetworkMode::Unspecified) => NetworkMode::Open,
        Ok(mode) => mode,
        Err(_) => NetworkMode::None,
    }
}

/// `mode`, or `widest` where `mode` is wider.
pub fn narrow(mode: NetworkMode, widest: NetworkMode) -> NetworkMode {
    if width(mode) > width(widest) {
        widest
    } else {
        mode
    }
}

/// The mode a sandbox gets from its request (`asked`) and its agent's
/// effective policy (`policy`): the policy's where the request names none;
/// a request wider than the policy, or naming no known mode, is refused.
pub fn sandbox_mode(asked: i32, policy: i32) -> Result<NetworkMode> {
    let policy = of(policy);
    let asked = NetworkMode::try_from(asked)
        .map_err(|_| Error::invalid(format!("unknown network_mode {asked}")))?;
    match asked {
        NetworkMode::Unspecified => Ok(policy),
        m if width(m) <= width(policy) => Ok(m),
        m => Err(Error::invalid(format!(
            "network mode {} is wider than the agent policy's network_mode {}",
            name(m),
            name(policy)
        ))),
    }
}

#[cfg(test)]
mod tests;
