//! Sandbox session tokens: short-lived API keys that identity mints for one
//! sandbox at the sandbox runner's request. A token acts as the sandbox's
//! agent with the agent's role and the `agent-execution` scope, always
//! expires (at most 24 hours), records its sandbox, and is revoked with
//! every other token of that sandbox when it stops.

use std::time::Duration;

use paddock_proto::identity::v1::*;
use paddock_shared::auth::Invalidation;
use paddock_shared::error::{Error, Result};
use paddock_shared::names::{self, child_name, parse_child};
use paddock_shared::time::{self, now_micros};
use serde_json::json;

use super::Identity;
use super::keys::{self, NewKey, api_key};
use crate::store::{agents, api_keys};

/// A token's lifetime when the request names none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// The longest lifetime a token may have.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// The permission group every session token is scoped to.
pub const SCOPE: &str = "agent-execution";

pub(super) async fn create(
    identity: &Identity,
    caller: &Principal,
    req: CreateSessionTokenRequest,
) -> Result<CreateSessionTokenResponse> {
    let (org, agent_id) = parse_child(&req.agent, "agents")?;
    let (sandbox_org, sandbox_id) = parse_child(&req.sandbox, "sandboxes")?;
    if sandbox_org != org {
        return Err(Error::invalid(
            "the sandbox and the agent are in different organizations",
        ));
    }
    let ttl = match &req.ttl {
        None => DEFAULT_TTL,
        Some(d) => time::duration(d)
            .filter(|d| !d.is_zero() && *d <= MAX_TTL)
            .ok_or_else(|| Error::invalid("ttl must be between 1s and 24h"))?,
    };
    let agent = agents::get(&identity.db.pool, org, agent_id)
        .await?
        .ok_or_else(|| Error::not_found(names::truncate(&req.agent)))?;
    let (owner_id, role) = (agent.id, agent.role);
    let expire = now_micros().saturating_add(ttl.as_micros() as i64);
    let display_name = format!("session sandbox/{sandbox_id}");
    let scope = [SCOPE.to_owned()];
    let mut tx = identity.db.begin_write().await?;
    let (row, secret) = keys::insert(
        &mut tx,
        NewKey {
            org,
            owner_id: &owner_id,
            display_name: &display_name,
            // Pinned to the agent's role now: raising the agent later does
            // not widen a running sandbox's token.
            role: &role,
            scope: &scope,
            expire: Some(expire),
            created_by: &caller.id,
            sandbox: Some(&req.sandbox),
        },
    )
    .await?;
    let key_name = child_name(org, "apiKeys", &row.id);
    let details = json!({
        "agent": req.agent,
        "sandbox": req.sandbox,
        "role": role,
        "scope": scope,
        "expire_time_us": expire,
    });
    identity
        .outbox
        .commit(
            tx,
            identity
                .outbox
                .success(Some(caller), "session_token.create", &key_name, details),
        )
        .await?;
    Ok(CreateSessionTokenResponse {
        api_key: Some(api_key(row, req.agent)),
        secret,
    })
}

pub(super) async fn revoke(
    identity: &Identity,
    caller: &Principal,
    req: RevokeSessionTokenRequest,
) -> Result<RevokeSessionTokenResponse> {
    let (org, _) = parse_child(&req.sandbox, "sandboxes")?;
    let now = now_micros();
    let mut tx = identity.db.begin_write().await?;
    // The UPDATE names the rows it changed, so exactly those are pushed out.
    let keys = api_keys::revoke_sandbox(&mut *tx, org, &req.sandbox, now).await?;
    if keys.is_empty() {
        // Nothing changed (already stopped, or never had a token).
        return Ok(RevokeSessionTokenResponse { revoked: 0 });
    }
    let details = json!({"revoked": keys.len(), "api_keys": keys});
    identity
        .outbox
        .commit(
            tx,
            identity
                .outbox
                .success(Some(caller), "session_token.revoke", &req.sandbox, details),
        )
        .await?;
    let count = i32::try_from(keys.len()).unwrap_or(i32::MAX);
    for id in keys {
        identity.publish(Invalidation::Key(id));
    }
    Ok(RevokeSessionTokenResponse { revoked: count })
}
