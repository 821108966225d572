//! Reading who a request is for: the caller's organization, a `parent`
//! that must be it, and child resources that must lie inside it. Another
//! organization's resource is answered exactly like a missing one
//! (NOT_FOUND naming what was asked for), never PERMISSION_DENIED.

use crate::error::{Error, Result};
use crate::names::{self, parse_child};
use crate::proto::identity::v1::Principal;

/// The caller's organization id (`acme` of `organizations/acme`).
pub fn caller_org(p: &Principal) -> Result<&str> {
    p.organization
        .strip_prefix("organizations/")
        .filter(|o| !o.is_empty())
        .ok_or_else(|| Error::PermissionDenied("the caller belongs to no organization".into()))
}

/// `parent` must be the caller's organization; empty means it.
pub fn parent_org<'a>(caller: &'a Principal, parent: &str) -> Result<&'a str> {
    let org = caller_org(caller)?;
    if !parent.is_empty() && names::parse_org(parent)? != org {
        return Err(Error::not_found(names::truncate(parent)));
    }
    Ok(org)
}

/// `org` (named in the request as `name`) must be the caller's.
pub fn own_org<'a>(caller: &Principal, org: &'a str, name: &str) -> Result<&'a str> {
    if caller_org(caller)? != org {
        return Err(Error::not_found(names::truncate(name)));
    }
    Ok(org)
}

/// The id of `name`, a child in `collection` of the caller's organization
/// (`organizations/acme/agents/bot` → `bot`).
pub fn own_child<'a>(caller: &Principal, name: &'a str, collection: &str) -> Result<&'a str> {
    let org = caller_org(caller)?;
    let (o, id) = parse_child(name, collection)?;
    if o != org {
        return Err(Error::not_found(names::truncate(name)));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member_of(org: &str) -> Principal {
        Principal {
            id: "m1".into(),
            organization: if org.is_empty() {
                String::new()
            } else {
                format!("organizations/{org}")
            },
            ..Default::default()
        }
    }

    #[test]
    fn another_organization_is_not_found_and_none_is_denied() {
        let acme = member_of("acme");
        assert_eq!(caller_org(&acme).ok(), Some("acme"));
        assert_eq!(parent_org(&acme, "").ok(), Some("acme"));
        assert_eq!(parent_org(&acme, "organizations/acme").ok(), Some("acme"));
        assert!(matches!(
            parent_org(&acme, "organizations/globex"),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            parent_org(&acme, "not a name"),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(
            own_child(&acme, "organizations/acme/agents/bot", "agents").ok(),
            Some("bot")
        );
        assert!(matches!(
            own_child(&acme, "organizations/globex/agents/bot", "agents"),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            own_org(&acme, "globex", "x"),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            caller_org(&member_of("")),
            Err(Error::PermissionDenied(_))
        ));
    }
}
