//! `LookupResources`: which agents, projects and members exist, and the
//! principal behind each member and agent. Services only (the runner's
//! admission and its kill switch ask it); one query per kind of name.

use paddock_proto::identity::v1::*;
use paddock_shared::error::{Error, Result};
use paddock_shared::names::{self, child_name, org_name, parse_child};

use super::Identity;
use crate::store::agents::AgentRow;
use crate::store::members::MemberRow;
use crate::store::{agents, members, projects};

/// Most names (and most principal ids) in one request.
pub const MAX_NAMES: usize = 500;

pub(super) async fn lookup(
    identity: &Identity,
    req: LookupResourcesRequest,
) -> Result<LookupResourcesResponse> {
    if req.names.len() > MAX_NAMES || req.principal_ids.len() > MAX_NAMES {
        return Err(Error::invalid(format!(
            "at most {MAX_NAMES} names and {MAX_NAMES} principal ids per lookup"
        )));
    }
    let pool = &identity.db.pool;
    let mut found = Vec::new();
    for name in &req.names {
        let kind = name.split('/').nth(2).unwrap_or_default();
        let Ok((org, id)) = parse_child(name, kind) else {
            return Err(Error::invalid(format!(
                "{} is not the full name of an agent, project or member",
                names::truncate(name)
            )));
        };
        let hit = match kind {
            "agents" => agents::get(pool, org, id).await?.map(agent),
            "members" => members::get(pool, org, id).await?.map(member),
            "projects" => projects::get(pool, org, id).await?.map(|_| FoundResource {
                name: child_name(org, "projects", id),
                principal: None,
            }),
            _ => {
                return Err(Error::invalid(format!(
                    "{} is not the full name of an agent, project or member",
                    names::truncate(name)
                )));
            }
        };
        found.extend(hit);
    }
    for id in &req.principal_ids {
        // Ids are unique across members and agents.
        let hit = match members::by_id(pool, id).await? {
            Some(m) => Some(member(m)),
            None => agents::by_id(pool, id).await?.map(agent),
        };
        found.extend(hit);
    }
    Ok(LookupResourcesResponse { found })
}

/// One agent as a principal.
fn agent(row: AgentRow) -> FoundResource {
    let name = child_name(&row.org_id, "agents", &row.agent_id);
    FoundResource {
        name: name.clone(),
        principal: Some(Principal {
            id: row.id,
            kind: PrincipalKind::Agent as i32,
            name,
            organization: org_name(&row.org_id),
            role: row.role,
            display_name: row.agent_id,
            ..Default::default()
        }),
    }
}

/// One member as a principal.
fn member(row: MemberRow) -> FoundResource {
    let name = child_name(&row.org_id, "members", &row.id);
    FoundResource {
        name: name.clone(),
        principal: Some(Principal {
            id: row.id,
            kind: PrincipalKind::Member as i32,
            name,
            organization: org_name(&row.org_id),
            role: row.role,
            display_name: row.email,
            ..Default::default()
        }),
    }
}
