//! Turns a `CheckRequest` into a decision with a structured reason.

use paddock_proto::authz::v1::{CheckRequest, CheckResponse, Link as PbLink, Reason};
use paddock_proto::identity::v1::{Principal, PrincipalKind};
use paddock_shared::names::organization_of;
use paddock_shared::rbac::{self, Decision, Grant, Link, PermissionSet};

fn grant_of(p: &Principal) -> Grant {
    Grant::of(&p.role, &p.key_role, &p.scope)
}

fn describe(p: &Principal) -> String {
    let key_role = if p.key_role.is_empty() {
        "follows owner".to_owned()
    } else {
        p.key_role.clone()
    };
    let scope = if p.scope.is_empty() {
        "unscoped".to_owned()
    } else {
        p.scope.join(",")
    };
    format!(
        "role {}, key role {key_role}, scope {scope}",
        if p.role.is_empty() { "none" } else { &p.role }
    )
}

fn reason(p: &Principal, summary: String, missing: PbLink, granted_by: &str) -> Reason {
    Reason {
        summary,
        missing: missing as i32,
        granted_by_permission: granted_by.to_owned(),
        role: p.role.clone(),
        key_role: p.key_role.clone(),
        scope: p.scope.clone(),
    }
}

/// Decides one check, and counts the decision.
pub fn evaluate(req: &CheckRequest) -> CheckResponse {
    let response = decide(req);
    paddock_shared::metrics::decision(response.allowed);
    response
}

fn decide(req: &CheckRequest) -> CheckResponse {
    let p = req.principal.clone().unwrap_or_default();
    let deny = |missing: Link, summary: String| CheckResponse {
        allowed: false,
        reason: Some(reason(&p, summary, link(missing), "")),
    };
    let kind = PrincipalKind::try_from(p.kind).unwrap_or(PrincipalKind::Unspecified);
    if !matches!(kind, PrincipalKind::Member | PrincipalKind::Agent) {
        return deny(
            Link::PrincipalKind,
            format!(
                "{} principals hold no organization permissions",
                kind.as_str_name()
            ),
        );
    }
    if !req.resource.is_empty() {
        let own_org = p.organization.strip_prefix("organizations/").unwrap_or("");
        if organization_of(&req.resource) != Some(own_org) {
            return deny(
                Link::Organization,
                "the resource is not in the principal's organization".to_owned(),
            );
        }
    }
    let owner = if req.resource_owner.is_empty() {
        None
    } else {
        Some(req.resource_owner == p.id)
    };
    match rbac::decide(&grant_of(&p), &req.permission, owner) {
        Decision::Allow { granted_by } => CheckResponse {
            allowed: true,
            reason: Some(reason(
                &p,
                format!("granted by {granted_by} ({})", describe(&p)),
                PbLink::Unspecified,
                granted_by,
            )),
        },
        Decision::Deny { missing } => {
            let why = match missing {
                Link::Role => format!(
                    "role {} lacks it",
                    if p.role.is_empty() { "none" } else { &p.role }
                ),
                Link::KeyRole => format!("the key's role {} lacks it", p.key_role),
                Link::Scope => format!("the key's scope ({}) excludes it", p.scope.join(",")),
                Link::Ownership => "it applies only to the caller's own resources".to_owned(),
                Link::UnknownPermission => "no such permission".to_owned(),
                Link::Organization | Link::PrincipalKind => String::new(),
            };
            deny(
                missing,
                format!("{} denied: {why} ({})", req.permission, describe(&p)),
            )
        }
    }
}

/// The principal's effective permissions and how they were computed.
pub fn effective(p: &Principal) -> (Vec<String>, Reason) {
    let kind = PrincipalKind::try_from(p.kind).unwrap_or(PrincipalKind::Unspecified);
    let set = if matches!(kind, PrincipalKind::Member | PrincipalKind::Agent) {
        grant_of(p).effective()
    } else {
        PermissionSet::EMPTY
    };
    let names = set.names().into_iter().map(str::to_owned).collect();
    (
        names,
        reason(
            p,
            format!("effective = role ∩ key role ∩ scope ({})", describe(p)),
            PbLink::Unspecified,
            "",
        ),
    )
}

fn link(l: Link) -> PbLink {
    match l {
        Link::Role => PbLink::Role,
        Link::KeyRole => PbLink::KeyRole,
        Link::Scope => PbLink::Scope,
        Link::Organization => PbLink::Organization,
        Link::Ownership => PbLink::Ownership,
        Link::UnknownPermission => PbLink::UnknownPermission,
        Link::PrincipalKind => PbLink::PrincipalKind,
    }
}
