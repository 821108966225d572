//! Whom a check is about: the caller; for services, any principal they
//! pass; for members and agents, another member or agent of their own
//! organization named by `principal.name` alone, resolved through identity
//! (current role, no key). Asking about somebody else needs `members.read`
//! (for a member) or `agents.read` (for an agent): the answer follows from
//! the role those permissions already show. A principal in another
//! organization is NOT_FOUND, exactly like one that does not exist.

use paddock_proto::authz::v1::CheckRequest;
use paddock_proto::identity::v1::{GetPrincipalRequest, Principal, PrincipalKind};
use paddock_shared::auth::{self, IdentityClient};
use paddock_shared::names;
use tonic::Status;

use crate::decide::evaluate;

/// The principal a request asks about.
pub async fn resolve(
    identity: &IdentityClient,
    caller: &Principal,
    asked: Option<Principal>,
) -> Result<Principal, Status> {
    let Some(asked) = asked else {
        return Ok(caller.clone());
    };
    if caller.kind == PrincipalKind::Service as i32 {
        return Ok(asked);
    }
    if asked.id == caller.id && asked.key_id == caller.key_id && !asked.id.is_empty() {
        return Ok(caller.clone());
    }
    let by_name_only = Principal {
        name: asked.name.clone(),
        ..Default::default()
    };
    if asked.name.is_empty() || asked != by_name_only {
        return Err(Status::permission_denied(
            "only service principals may pass a principal's fields; name a member or agent with principal.name alone, or leave principal unset",
        ));
    }
    if asked.name == caller.name {
        return Ok(caller.clone());
    }
    let name = asked.name;
    let not_found = || Status::not_found(format!("{} not found", names::truncate(&name)));
    let permission = if names::parse_child(&name, "members").is_ok() {
        "members.read"
    } else if names::parse_child(&name, "agents").is_ok() {
        "agents.read"
    } else {
        return Err(Status::invalid_argument(format!(
            "principal.name {:?} must be organizations/{{organization}}/members/{{member}} or .../agents/{{agent}}",
            names::truncate(&name)
        )));
    };
    let own_org = caller.organization.strip_prefix("organizations/");
    if own_org.is_none() || names::organization_of(&name) != own_org {
        return Err(not_found());
    }
    let may = evaluate(&CheckRequest {
        principal: Some(caller.clone()),
        permission: permission.to_owned(),
        resource: name.clone(),
        resource_owner: String::new(),
    });
    if !may.allowed {
        return Err(Status::permission_denied(format!(
            "asking about another principal needs {permission} on {}",
            names::truncate(&name)
        )));
    }
    let found = identity
        .clone()
        .get_principal(GetPrincipalRequest { name: name.clone() })
        .await
        .map_err(|s| auth::dependency_status("identity", s))?
        .into_inner()
        .principal
        .ok_or_else(not_found)?;
    // Identity answered for the name asked; never trust it to be elsewhere.
    if found.organization != caller.organization {
        return Err(not_found());
    }
    Ok(found)
}
