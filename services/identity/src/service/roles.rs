//! Roles and scopes in requests: which role names are allowed where, and
//! the rule that nobody grants (or mints a key with) more than they hold.

use paddock_proto::identity::v1::Principal;
use paddock_shared::error::{Error, Result};
use paddock_shared::names;
use paddock_shared::rbac::{self, Grant, PermissionSet, Role};

const MAX_SCOPE_ENTRIES: usize = 64;

/// The roles a member may hold: `agent` is for AI-agent identities.
pub(super) const MEMBER_ROLES: [Role; 3] = [Role::Owner, Role::Admin, Role::Developer];

/// `owner, admin or developer`.
fn role_list(roles: &[Role]) -> String {
    let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    match names.split_last() {
        None => "none".to_owned(),
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// A role name that must be one of `allowed` (the hint lists only those).
pub(super) fn parse_role(role: &str, allowed: &[Role]) -> Result<Role> {
    Role::parse(role)
        .filter(|r| allowed.contains(r))
        .ok_or_else(|| {
            let extra = if Role::parse(role) == Some(Role::Agent) {
                " (role agent is for AI-agent identities; create an agent instead)"
            } else {
                ""
            };
            Error::invalid(format!(
                "{} role {:?}: use {}{extra}",
                if Role::parse(role).is_some() {
                    "not allowed here:"
                } else {
                    "unknown"
                },
                names::truncate(role),
                role_list(allowed)
            ))
        })
}

pub(super) fn caller_permissions(caller: &Principal) -> PermissionSet {
    Grant::of(&caller.role, &caller.key_role, &caller.scope).effective()
}

/// The names of the permissions in `held` that `mine` lacks.
pub(super) fn lacking(held: PermissionSet, mine: PermissionSet) -> Vec<&'static str> {
    held.names()
        .into_iter()
        .filter(|p| !mine.contains(rbac::permission_index(p).unwrap_or(0)))
        .collect()
}

/// Nobody grants a role above their own (their key's effective set). The
/// refusal lists the roles of `allowed` the caller may grant.
pub(super) fn check_grantable(caller: &Principal, role: Role, allowed: &[Role]) -> Result<()> {
    let mine = caller_permissions(caller);
    let lacks = |r: Role| lacking(r.permissions(), mine);
    let missing = lacks(role);
    if missing.is_empty() {
        return Ok(());
    }
    let grantable: Vec<Role> = allowed
        .iter()
        .copied()
        .filter(|r| lacks(*r).is_empty())
        .collect();
    let hint = if grantable.is_empty() {
        String::new()
    } else {
        format!("; you may grant {}", role_list(&grantable))
    };
    Err(Error::PermissionDenied(format!(
        "cannot grant role {}: it is above your own (you lack {}){hint}",
        role.as_str(),
        missing.join(", ")
    )))
}

pub(super) fn validate_scope(scope: &[String]) -> Result<()> {
    if scope.len() > MAX_SCOPE_ENTRIES {
        return Err(Error::invalid(format!(
            "scope has more than {MAX_SCOPE_ENTRIES} entries"
        )));
    }
    rbac::scope_permissions(scope).map(|_| ()).map_err(|bad| {
        Error::invalid(format!(
            "unknown scope entry {:?}: use read-only, ci-cd, agent-execution or permission names",
            names::truncate(&bad)
        ))
    })
}
