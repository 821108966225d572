//! Agents: AI-agent identities of an organization. Creating one with a
//! role (never above the caller's own), listing and reading them, changing
//! an agent's description and role (a change reaches every cached
//! principal of the agent at once), and deleting one with its keys and the
//! invites it made.

use paddock_proto::identity::v1::*;
use paddock_shared::auth::Invalidation;
use paddock_shared::error::{Error, Result};
use paddock_shared::names::{self, child_name, validate_id, validate_text};
use paddock_shared::rbac::Role;
use paddock_shared::time::{now_micros, timestamp};
use serde_json::json;

use super::request::{MAX_PAGE, caller_org, mask_paths, own_child, parent_org};
use super::roles::{check_grantable, parse_role};
use super::{Identity, invites, new_principal_id};
use crate::store::agents::{self as store, AgentRow};
use crate::store::api_keys;
use paddock_shared::page::{Page, Query};

fn agent(row: AgentRow) -> Agent {
    Agent {
        name: child_name(&row.org_id, "agents", &row.agent_id),
        description: row.description,
        role: row.role,
        created_by: row.created_by,
        create_time: Some(timestamp(row.create_time)),
    }
}

pub(super) async fn create(
    identity: &Identity,
    caller: &Principal,
    req: CreateAgentRequest,
) -> Result<CreateAgentResponse> {
    let org = parent_org(caller, &req.parent)?.to_owned();
    validate_id("agent", &req.agent_id)?;
    let spec = req.agent.unwrap_or_default();
    validate_text("description", &spec.description, 2000)?;
    let role = if spec.role.is_empty() {
        Role::Agent
    } else {
        parse_role(&spec.role, &Role::ALL)?
    };
    check_grantable(caller, role, &Role::ALL)?;
    let row = AgentRow {
        id: new_principal_id('a'),
        org_id: org,
        agent_id: req.agent_id,
        description: spec.description,
        role: role.as_str().to_owned(),
        created_by: caller.name.clone(),
        create_time: now_micros(),
    };
    let mut tx = identity.db.begin_write().await?;
    let name = child_name(&row.org_id, "agents", &row.agent_id);
    store::insert(&mut *tx, &row)
        .await
        .map_err(|e| Error::exists_or(e, &name))?;
    identity
        .outbox
        .commit(
            tx,
            identity.outbox.success(
                Some(caller),
                "agent.create",
                &name,
                json!({"role": row.role}),
            ),
        )
        .await?;
    Ok(CreateAgentResponse {
        agent: Some(agent(row)),
    })
}

pub(super) async fn list(
    identity: &Identity,
    caller: &Principal,
    req: ListAgentsRequest,
) -> Result<ListAgentsResponse> {
    let org = parent_org(caller, &req.parent)?;
    let query = Query::new("ListAgents", org);
    let page = Page::read(req.page_size, &req.page_token, MAX_PAGE, &query)?;
    let mut rows = store::list(&identity.db.pool, org, page.start_after(), page.limit()).await?;
    let next_page_token = page.finish(&mut rows, &query, |r| r.agent_id.clone());
    Ok(ListAgentsResponse {
        agents: rows.into_iter().map(agent).collect(),
        next_page_token,
    })
}

pub(super) async fn get(
    identity: &Identity,
    caller: &Principal,
    req: GetAgentRequest,
) -> Result<GetAgentResponse> {
    let id = own_child(caller, &req.name, "agents")?;
    let row = store::get(&identity.db.pool, caller_org(caller)?, id)
        .await?
        .ok_or_else(|| Error::not_found(names::truncate(&req.name)))?;
    Ok(GetAgentResponse {
        agent: Some(agent(row)),
    })
}

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
    let mut row = store::get(&identity.db.pool, &org, &agent_id)
        .await?
        .ok_or_else(|| Error::not_found(names::truncate(&update.name)))?;
    let previous_role = row.role.clone();
    let mut role_changed = false;
    for path in &paths {
        if path == "description" {
            validate_text("description", &update.description, 2000)?;
            row.description = update.description.clone();
        } else {
            let role = parse_role(&update.role, &Role::ALL)?;
            check_grantable(caller, role, &Role::ALL)?;
            if let Some(old) = Role::parse(&row.role) {
                check_grantable(caller, old, &[]).map_err(|_| {
                    Error::PermissionDenied(format!(
                        "cannot change the role of an agent whose role ({}) is above your own",
                        old.as_str()
                    ))
                })?;
            }
            role_changed = row.role != role.as_str();
            row.role = role.as_str().to_owned();
        }
    }
    let mut tx = identity.db.begin_write().await?;
    store::update(&mut *tx, &row.id, &row.description, &row.role).await?;
    let mut details = json!({"update_mask": paths});
    if role_changed {
        details["role"] = json!(row.role);
        details["previous_role"] = json!(previous_role);
    }
    identity
        .outbox
        .commit(
            tx,
            identity
                .outbox
                .success(Some(caller), "agent.update", &update.name, details),
        )
        .await?;
    if role_changed {
        identity.publish(Invalidation::Principal(row.id.clone()));
    }
    Ok(UpdateAgentResponse {
        agent: Some(agent(row)),
    })
}

pub(super) async fn delete(
    identity: &Identity,
    caller: &Principal,
    req: DeleteAgentRequest,
) -> Result<DeleteAgentResponse> {
    let name = req.name;
    let agent_id = own_child(caller, &name, "agents")?;
    let org = caller_org(caller)?;
    let id = store::get(&identity.db.pool, org, agent_id)
        .await?
        .ok_or_else(|| Error::not_found(names::truncate(&name)))?
        .id;
    let mut tx = identity.db.begin_write().await?;
    api_keys::delete_owned_by(&mut *tx, &id).await?;
    store::delete(&mut *tx, &id).await?;
    // An agent with members.manage may have invited people.
    let revoked_invites =
        invites::revoke_by_inviter(&mut tx, org, &child_name(org, "agents", agent_id), None)
            .await?;
    let details = json!({"revoked_invites": revoked_invites});
    identity
        .outbox
        .commit(
            tx,
            identity
                .outbox
                .success(Some(caller), "agent.delete", &name, details),
        )
        .await?;
    identity.publish(Invalidation::Principal(id));
    Ok(DeleteAgentResponse {})
}
