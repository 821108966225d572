//! `UpdateAgent`: an agent's description and role. Its role moves only
//! within what the caller may grant, and a change reaches every cached
//! principal of the agent at once.

use paddock_proto::identity::v1::*;
use paddock_shared::auth::Invalidation;
use paddock_shared::error::{Error, Result};
use paddock_shared::names::{self, validate_text};
use paddock_shared::rbac::Role;
use serde_json::json;

use super::{
    AgentRow, Identity, agent, audited, caller_org, check_grantable, mask_paths, own_child,
    parse_role,
};

pub(super) async fn update(
    identity: &Identity,
    caller: &Principal,
    req: UpdateAgentRequest,
) -> Result<UpdateAgentResponse> {
    let update = req
        .agent
        .ok_or_else(|| Error::invalid("agent is required"))?;
    let paths = mask_paths(req.update_mask.as_ref(), &["description", "role"])?;
    let org = caller_org(caller)?.to_owned();
    let agent_id = own_child(caller, &update.name, "agents")?.to_owned();
    let row: Option<AgentRow> = sqlx::query_as(
        "SELECT id, org_id, agent_id, description, role, created_by, create_time FROM agents WHERE org_id = $1 AND agent_id = $2",
    )
    .bind(&org)
    .bind(&agent_id)
    .fetch_optional(&identity.db.pool)
    .await?;
    let mut row = row.ok_or_else(|| Error::not_found(names::truncate(&update.name)))?;
    let previous_role = row.4.clone();
    let mut role_changed = false;
    for path in &paths {
        if path == "description" {
            validate_text("description", &update.description, 2000)?;
            row.3 = update.description.clone();
        } else {
            let role = parse_role(&update.role, &Role::ALL)?;
            check_grantable(caller, role, &Role::ALL)?;
            if let Some(old) = Role::parse(&row.4) {
                check_grantable(caller, old, &[]).map_err(|_| {
                    Error::PermissionDenied(format!(
                        "cannot change the role of an agent whose role ({}) is above your own",
                        old.as_str()
                    ))
                })?;
            }
            role_changed = row.4 != role.as_str();
            row.4 = role.as_str().to_owned();
        }
    }
    let mut tx = identity.db.begin_write().await?;
    sqlx::query("UPDATE agents SET description = $1, role = $2 WHERE id = $3")
        .bind(&row.3)
        .bind(&row.4)
        .bind(&row.0)
        .execute(&mut *tx)
        .await?;
    let mut details = json!({"update_mask": paths});
    if role_changed {
        details["role"] = json!(row.4);
        details["previous_role"] = json!(previous_role);
    }
    identity
        .commit_audited(
            tx,
            audited(Some(caller), "agent.update", &update.name, details),
        )
        .await?;
    if role_changed {
        identity.publish(Invalidation::Principal(row.0.clone()));
    }
    Ok(UpdateAgentResponse {
        agent: Some(agent(row)),
    })
}
