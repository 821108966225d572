//! `GetPrincipal`: a member's or agent's resource name resolved to the
//! principal it is (kind, id, current role, no key), for services. Authz
//! uses it to answer a check about somebody other than the caller.

use paddock_proto::identity::v1::*;
use paddock_shared::error::{Error, Result};
use paddock_shared::names::{self, org_name, parse_child};

use super::Identity;
use crate::store::{agents, members};

pub(super) async fn get(
    identity: &Identity,
    req: GetPrincipalRequest,
) -> Result<GetPrincipalResponse> {
    let not_found = || Error::not_found(names::truncate(&req.name));
    let principal = if let Ok((org, member_id)) = parse_child(&req.name, "members") {
        let row = members::get(&identity.db.pool, org, member_id)
            .await?
            .ok_or_else(not_found)?;
        Principal {
            id: member_id.to_owned(),
            kind: PrincipalKind::Member as i32,
            name: req.name.clone(),
            organization: org_name(org),
            role: row.role,
            display_name: row.email,
            ..Default::default()
        }
    } else {
        let (org, agent_id) = parse_child(&req.name, "agents").map_err(|_| {
            Error::invalid(
                "name must be organizations/{organization}/members/{member} or .../agents/{agent}",
            )
        })?;
        let row = agents::get(&identity.db.pool, org, agent_id)
            .await?
            .ok_or_else(not_found)?;
        Principal {
            id: row.id,
            kind: PrincipalKind::Agent as i32,
            name: req.name.clone(),
            organization: org_name(org),
            role: row.role,
            display_name: agent_id.to_owned(),
            ..Default::default()
        }
    };
    Ok(GetPrincipalResponse {
        principal: Some(principal),
    })
}
