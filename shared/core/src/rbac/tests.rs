use super::*;

fn grant(role: Role) -> Grant {
    Grant {
        role: Some(role),
        key_role: None,
        scope: PermissionSet::all(),
    }
}

#[test]
fn role_table_matches_the_design() {
    // (permission, owner, admin, developer, agent) — ARCHITECTURE §4.
    let table: &[(&str, [bool; 4])] = &[
        ("org.read", [true, true, true, false]),
        ("org.update", [true, false, false, false]),
        ("org.delete", [true, false, false, false]),
        ("members.read", [true, true, true, false]),
        ("members.manage", [true, false, false, false]),
        ("security.read", [true, true, false, false]),
        ("security.manage", [true, false, false, false]),
        ("billing.read", [true, true, true, false]),
        ("billing.manage", [true, false, false, false]),
        ("projects.read", [true, true, true, true]),
        ("projects.create", [true, true, true, false]),
        ("projects.update", [true, true, true, false]),
        ("projects.delete", [true, true, false, false]),
        ("agents.read", [true, true, true, false]),
        ("agents.manage", [true, true, false, false]),
        ("agents.execute", [true, true, true, true]),
        ("sessions.read", [true, true, true, false]),
        ("sessions.manage", [true, true, false, false]),
        ("sessions.manage_own", [true, true, true, true]),
        ("api_keys.read", [true, true, false, false]),
        ("api_keys.manage", [true, true, false, false]),
        ("api_keys.manage_own", [true, true, true, false]),
        ("audit.read", [true, true, false, false]),
        ("credentials.manage", [true, true, false, false]),
        ("credentials.use", [true, true, true, true]),
        ("mcp_servers.manage", [true, true, false, false]),
        ("tools.call", [true, true, true, true]),
    ];
    assert_eq!(table.len(), PERMISSIONS.len(), "every permission has a row");
    for (perm, row) in table {
        for (role, expected) in Role::ALL.into_iter().zip(row) {
            let i = permission_index(perm).unwrap();
            assert_eq!(
                role.permissions().contains(i),
                *expected,
                "{perm} for {}",
                role.as_str()
            );
        }
    }
}

#[test]
fn roles_are_nested() {
    assert!(
        Role::Agent
            .permissions()
            .is_subset_of(Role::Developer.permissions())
    );
    assert!(
        Role::Developer
            .permissions()
            .is_subset_of(Role::Admin.permissions())
    );
    assert!(
        Role::Admin
            .permissions()
            .is_subset_of(Role::Owner.permissions())
    );
    assert!(
        !Role::Admin
            .permissions()
            .is_subset_of(Role::Developer.permissions())
    );
}

#[test]
fn effective_is_the_intersection() {
    let g = Grant {
        role: Some(Role::Owner),
        key_role: Some(Role::Developer),
        scope: scope_permissions(&["ci-cd".into()]).unwrap(),
    };
    assert_eq!(
        g.effective().names(),
        vec![
            "projects.read",
            "agents.execute",
            "sessions.read",
            "sessions.manage_own"
        ]
    );
    assert_eq!(
        decide(&g, "projects.create", None),
        Decision::Deny {
            missing: Link::Scope
        }
    );
    assert_eq!(
        decide(&g, "projects.delete", None),
        Decision::Deny {
            missing: Link::KeyRole
        }
    );
    let dev = grant(Role::Developer);
    assert_eq!(
        decide(&dev, "projects.delete", None),
        Decision::Deny {
            missing: Link::Role
        }
    );
}

#[test]
fn read_only_scope_keeps_only_reads_of_the_role() {
    let g = Grant {
        role: Some(Role::Developer),
        key_role: None,
        scope: scope_permissions(&["read-only".into()]).unwrap(),
    };
    let names = g.effective().names();
    assert!(names.iter().all(|p| p.ends_with(".read")));
    assert!(names.contains(&"projects.read"));
    assert!(!names.contains(&"audit.read"));
}

#[test]
fn own_permissions_need_ownership() {
    let dev = grant(Role::Developer);
    assert_eq!(
        decide(&dev, "sessions.manage_own", Some(true)),
        Decision::Allow {
            granted_by: "sessions.manage_own"
        }
    );
    assert_eq!(
        decide(&dev, "sessions.manage_own", Some(false)),
        Decision::Deny {
            missing: Link::Ownership
        }
    );
    // Without an owner the gate only asks whether the principal may manage its own.
    assert_eq!(
        decide(&dev, "sessions.manage_own", None),
        Decision::Allow {
            granted_by: "sessions.manage_own"
        }
    );
    let admin = grant(Role::Admin);
    assert_eq!(
        decide(&admin, "sessions.manage_own", Some(false)),
        Decision::Allow {
            granted_by: "sessions.manage"
        }
    );
    assert_eq!(
        decide(&admin, "sessions.read", Some(true)),
        Decision::Allow {
            granted_by: "sessions.read"
        }
    );
    // manage_own grants read of one's own.
    let agent = grant(Role::Agent);
    assert_eq!(
        decide(&agent, "sessions.read", Some(true)),
        Decision::Allow {
            granted_by: "sessions.manage_own"
        }
    );
    assert_eq!(
        decide(&agent, "sessions.read", Some(false)),
        Decision::Deny {
            missing: Link::Role
        }
    );
}

#[test]
fn unknown_permissions_and_scopes() {
    assert_eq!(
        decide(&grant(Role::Owner), "org.fly", None),
        Decision::Deny {
            missing: Link::UnknownPermission
        }
    );
    assert_eq!(scope_permissions(&["nope".into()]), Err("nope".into()));
    assert_eq!(scope_permissions(&[]).unwrap(), PermissionSet::all());
}

#[test]
fn nobody_acts_for_a_role_above_their_own() {
    assert!(grant(Role::Developer).lacks_for("agent").is_empty());
    assert!(grant(Role::Admin).lacks_for("admin").is_empty());
    assert!(grant(Role::Owner).lacks_for("owner").is_empty());
    let lacks = grant(Role::Developer).lacks_for("admin");
    assert!(lacks.contains(&"agents.manage"), "{lacks:?}");
    assert!(!lacks.contains(&"projects.read"), "{lacks:?}");
    // The key's role bounds it too; its scope does not.
    let key = Grant::of("owner", "developer", &["ci-cd".to_owned()]);
    assert!(key.lacks_for("developer").is_empty());
    assert!(key.lacks_for("agent").is_empty());
    assert!(!key.lacks_for("admin").is_empty());
    // An unknown role is above everyone; no role holds nothing.
    assert!(!grant(Role::Owner).lacks_for("root").is_empty());
    assert!(!Grant::of("", "", &[]).lacks_for("agent").is_empty());
}
