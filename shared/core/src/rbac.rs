//! The permission catalogue, the built-in roles and permission groups, and
//! the decision function. Role and group sets are compiled once into bitsets,
//! so a check costs the same however large the organization is.

use std::sync::LazyLock;

/// Every permission, in a fixed order: the bit index of each.
pub const PERMISSIONS: &[&str] = &[
    "org.read",
    "org.update",
    "org.delete",
    "members.read",
    "members.manage",
    "security.read",
    "security.manage",
    "billing.read",
    "billing.manage",
    "projects.read",
    "projects.create",
    "projects.update",
    "projects.delete",
    "agents.read",
    "agents.manage",
    "agents.execute",
    "sessions.read",
    "sessions.manage",
    "sessions.manage_own",
    "api_keys.read",
    "api_keys.manage",
    "api_keys.manage_own",
    "audit.read",
    "credentials.manage",
    "credentials.use",
    "mcp_servers.manage",
    "tools.call",
];

/// A set of permissions as a bitset over [`PERMISSIONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PermissionSet(u64);

impl PermissionSet {
    pub const EMPTY: Self = Self(0);

    pub fn all() -> Self {
        Self((1u64 << PERMISSIONS.len()) - 1)
    }

    /// Parses permission names; `Err` names the first unknown one.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut set = Self::EMPTY;
        for name in names {
            set.0 |= 1 << permission_index(name).ok_or_else(|| name.to_owned())?;
        }
        Ok(set)
    }

    pub fn contains(self, index: usize) -> bool {
        self.0 & (1 << index) != 0
    }

    pub fn intersect(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    pub fn is_subset_of(self, other: Self) -> bool {
        self.0 & !other.0 == 0
    }

    pub fn names(self) -> Vec<&'static str> {
        PERMISSIONS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.contains(*i))
            .map(|(_, n)| *n)
            .collect()
    }
}

pub fn permission_index(name: &str) -> Option<usize> {
    PERMISSIONS.iter().position(|p| *p == name)
}

/// A built-in role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Owner,
    Admin,
    Developer,
    Agent,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Owner, Role::Admin, Role::Developer, Role::Agent];

    pub fn parse(name: &str) -> Option<Role> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Developer => "developer",
            Role::Agent => "agent",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Role::Owner => {
                "every permission, including deleting the organization, managing members, billing and security settings"
            }
            Role::Admin => {
                "manage projects, agents, sessions and API keys; read billing, members and security"
            }
            Role::Developer => {
                "create and update projects, execute agents, manage their own sessions and API keys"
            }
            Role::Agent => {
                "AI-agent identities: read projects, execute agents, manage the sessions that run as this agent"
            }
        }
    }

    pub fn permissions(self) -> PermissionSet {
        ROLE_SETS[self as usize]
    }
}

/// The role table of the design (ARCHITECTURE §4), one row per role.
static ROLE_SETS: LazyLock<[PermissionSet; 4]> = LazyLock::new(|| {
    let set = |names: &[&str]| {
        PermissionSet::parse(names.iter().copied()).expect("role table names known permissions")
    };
    [
        PermissionSet::all(),
        set(&[
            "org.read",
            "members.read",
            "security.read",
            "billing.read",
            "projects.read",
            "projects.create",
            "projects.update",
            "projects.delete",
            "agents.read",
            "agents.manage",
            "agents.execute",
            "sessions.read",
            "sessions.manage",
            "sessions.manage_own",
            "api_keys.read",
            "api_keys.manage",
            "api_keys.manage_own",
            "audit.read",
            "credentials.manage",
            "credentials.use",
            "mcp_servers.manage",
            "tools.call",
        ]),
        set(&[
            "org.read",
            "members.read",
            "billing.read",
            "projects.read",
            "projects.create",
            "projects.update",
            "agents.read",
            "agents.execute",
            "sessions.read",
            "sessions.manage_own",
            "api_keys.manage_own",
            "credentials.use",
            "tools.call",
        ]),
        set(&[
            "projects.read",
            "agents.execute",
            "sessions.manage_own",
            "credentials.use",
            "tools.call",
        ]),
    ]
});

/// Predefined permission groups for scoping keys: (name, description).
pub const GROUPS: &[(&str, &str)] = &[
    ("read-only", "every *.read permission the role has"),
    (
        "ci-cd",
        "projects.read, agents.execute, sessions.read, sessions.manage_own",
    ),
    (
        "agent-execution",
        "projects.read, agents.execute, sessions.manage_own, tools.call",
    ),
];

pub fn group_permissions(name: &str) -> Option<PermissionSet> {
    let set = |names: &[&str]| PermissionSet::parse(names.iter().copied()).ok();
    match name {
        "read-only" => {
            PermissionSet::parse(PERMISSIONS.iter().copied().filter(|p| p.ends_with(".read"))).ok()
        }
        "ci-cd" => set(&[
            "projects.read",
            "agents.execute",
            "sessions.read",
            "sessions.manage_own",
        ]),
        "agent-execution" => set(&[
            "projects.read",
            "agents.execute",
            "sessions.manage_own",
            "tools.call",
        ]),
        _ => None,
    }
}

/// Expands a key scope (groups and permissions) into a set. An empty scope
/// is unrestricted. `Err` names the first entry that is neither.
pub fn scope_permissions(scope: &[String]) -> Result<PermissionSet, String> {
    if scope.is_empty() {
        return Ok(PermissionSet::all());
    }
    let mut set = PermissionSet::EMPTY;
    for entry in scope {
        let part = match group_permissions(entry) {
            Some(g) => g,
            None => PermissionSet::parse([entry.as_str()])?,
        };
        set.0 |= part.0;
    }
    Ok(set)
}

/// What a decision rests on: the owner's current role, the key's role (if
/// any) and the key's scope.
#[derive(Debug, Clone, Copy)]
pub struct Grant {
    pub role: Option<Role>,
    pub key_role: Option<Role>,
    pub scope: PermissionSet,
}

impl Grant {
    /// The grant of a principal's role, key role and scope as identity sends
    /// them. Unknown names grant nothing rather than everything.
    pub fn of(role: &str, key_role: &str, scope: &[String]) -> Grant {
        let mut scope = scope_permissions(scope).unwrap_or(PermissionSet::EMPTY);
        let key_role = if key_role.is_empty() {
            None
        } else {
            Role::parse(key_role).or_else(|| {
                scope = PermissionSet::EMPTY;
                Some(Role::Agent)
            })
        };
        Grant {
            role: Role::parse(role),
            key_role,
            scope,
        }
    }

    /// Effective permissions = role ∩ key role ∩ scope.
    pub fn effective(&self) -> PermissionSet {
        let role = self.role.map_or(PermissionSet::EMPTY, Role::permissions);
        let key = self
            .key_role
            .map_or(PermissionSet::all(), Role::permissions);
        role.intersect(key).intersect(self.scope)
    }

    /// The permissions of role `other` that this grant's role and key role
    /// do not hold: empty when `other` is not above them. The scope is left
    /// out: it narrows which calls a key makes, not whom it acts for. An
    /// unknown role is above everyone (it lacks every permission).
    pub fn lacks_for(&self, other: &str) -> Vec<&'static str> {
        let mine = self
            .role
            .map_or(PermissionSet::EMPTY, Role::permissions)
            .intersect(
                self.key_role
                    .map_or(PermissionSet::all(), Role::permissions),
            );
        match Role::parse(other) {
            Some(theirs) => PermissionSet(theirs.permissions().0 & !mine.0).names(),
            None => PermissionSet::all().names(),
        }
    }
}

/// The link of the chain that decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Role,
    KeyRole,
    Scope,
    Organization,
    Ownership,
    UnknownPermission,
    PrincipalKind,
}

/// The outcome of a check and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Granted by this permission (the one asked for, or a wider one).
    Allow { granted_by: &'static str },
    /// Denied at this link.
    Deny { missing: Link },
}

/// Which permissions satisfy `permission`, widest first: the full `manage`
/// for a `manage_own`, the permission itself, and (on one's own resource)
/// `manage_own` for a `read`.
fn satisfiers(permission: &str, own_resource: bool) -> Vec<usize> {
    let mut out = Vec::with_capacity(2);
    if let Some(base) = permission.strip_suffix("_own") {
        out.extend(permission_index(base));
    }
    out.extend(permission_index(permission));
    if own_resource && let Some(resource) = permission.strip_suffix(".read") {
        out.extend(permission_index(&format!("{resource}.manage_own")));
    }
    out
}

/// Decides `permission` for `grant`. `owner_is_caller` is `Some` when the
/// resource has an owner: a `*_own` permission then needs the caller to be it.
pub fn decide(grant: &Grant, permission: &str, owner_is_caller: Option<bool>) -> Decision {
    if permission_index(permission).is_none() {
        return Decision::Deny {
            missing: Link::UnknownPermission,
        };
    }
    let sats = satisfiers(permission, owner_is_caller == Some(true));
    let effective = grant.effective();
    for &i in &sats {
        let name = PERMISSIONS[i];
        if effective.contains(i) && !(name.ends_with("_own") && owner_is_caller == Some(false)) {
            return Decision::Allow { granted_by: name };
        }
    }
    // Name the first link that lacks every satisfying permission.
    let has_any = |set: PermissionSet| sats.iter().any(|i| set.contains(*i));
    let role = grant.role.map_or(PermissionSet::EMPTY, Role::permissions);
    let key = grant
        .key_role
        .map_or(PermissionSet::all(), Role::permissions);
    let missing = if !has_any(role) {
        Link::Role
    } else if !has_any(key) {
        Link::KeyRole
    } else if !has_any(grant.scope) {
        Link::Scope
    } else if !has_any(effective) {
        // Each link has some satisfier but not the same one.
        Link::Scope
    } else {
        Link::Ownership
    };
    Decision::Deny { missing }
}

#[cfg(test)]
mod tests;
