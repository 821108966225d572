//! `LookupResources`: which agents, projects and members exist, and the
//! principal behind each member and agent. Services only (the runner's
//! admission and its kill switch ask it); one query per kind of name.

use paddock_proto::identity::v1::*;
use paddock_shared::error::{Error, Result};
use paddock_shared::names::{self, child_name, org_name, parse_child};

use super::Identity;

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
            "agents" => agent_by(identity, "org_id = $1 AND agent_id = $2", org, id).await?,
            "members" => member_by(identity, "org_id = $1 AND id = $2", org, id).await?,
            "projects" => {
                let row: Option<(String,)> = sqlx::query_as(
                    "SELECT project_id FROM projects WHERE org_id = $1 AND project_id = $2",
                )
                .bind(org)
                .bind(id)
                .fetch_optional(&identity.db.pool)
                .await?;
                row.map(|_| FoundResource {
                    name: child_name(org, "projects", id),
                    principal: None,
                })
            }
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
        let hit = match member_by(identity, "id = $1", id, "").await? {
            Some(m) => Some(m),
            None => agent_by(identity, "id = $1", id, "").await?,
        };
        found.extend(hit);
    }
    Ok(LookupResourcesResponse { found })
}

/// One agent as a principal; `filter` binds `$1` and, when it names it, `$2`.
async fn agent_by(
    identity: &Identity,
    filter: &str,
    first: &str,
    second: &str,
) -> Result<Option<FoundResource>> {
    // `filter` is one of this module's constant clauses.
    let sql = format!("SELECT id, org_id, agent_id, role FROM agents WHERE {filter}");
    let mut query =
        sqlx::query_as::<_, (String, String, String, String)>(sqlx::AssertSqlSafe(sql)).bind(first);
    if filter.contains("$2") {
        query = query.bind(second);
    }
    let row = query.fetch_optional(&identity.db.pool).await?;
    Ok(row.map(|(id, org, agent_id, role)| {
        let name = child_name(&org, "agents", &agent_id);
        FoundResource {
            name: name.clone(),
            principal: Some(Principal {
                id,
                kind: PrincipalKind::Agent as i32,
                name,
                organization: org_name(&org),
                role,
                display_name: agent_id,
                ..Default::default()
            }),
        }
    }))
}

/// One member as a principal; `filter` binds `$1` and, when it names it, `$2`.
async fn member_by(
    identity: &Identity,
    filter: &str,
    first: &str,
    second: &str,
) -> Result<Option<FoundResource>> {
    let sql = format!("SELECT id, org_id, email, role FROM members WHERE {filter}");
    let mut query =
        sqlx::query_as::<_, (String, String, String, String)>(sqlx::AssertSqlSafe(sql)).bind(first);
    if filter.contains("$2") {
        query = query.bind(second);
    }
    let row = query.fetch_optional(&identity.db.pool).await?;
    Ok(row.map(|(id, org, email, role)| {
        let name = child_name(&org, "members", &id);
        FoundResource {
            name: name.clone(),
            principal: Some(Principal {
                id,
                kind: PrincipalKind::Member as i32,
                name,
                organization: org_name(&org),
                role,
                display_name: email,
                ..Default::default()
            }),
        }
    }))
}
