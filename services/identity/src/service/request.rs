//! Reading a request: the caller's organization, child resource names kept
//! inside it, and update masks (page tokens: `paddock_shared::page`).

use paddock_proto::identity::v1::Principal;
use paddock_shared::error::{Error, Result};
use paddock_shared::names::{self, parse_child};

/// The longest page a list RPC returns.
pub(super) const MAX_PAGE: i64 = 1000;

/// The caller's organization id (`acme` of `organizations/acme`).
pub(super) fn caller_org(p: &Principal) -> Result<&str> {
    p.organization
        .strip_prefix("organizations/")
        .filter(|o| !o.is_empty())
        .ok_or_else(|| Error::PermissionDenied("the caller belongs to no organization".into()))
}

/// `parent` must be the caller's organization; empty means it.
pub(super) fn parent_org<'a>(caller: &'a Principal, parent: &str) -> Result<&'a str> {
    let org = caller_org(caller)?;
    if parent.is_empty() {
        return Ok(org);
    }
    if names::parse_org(parent)? != org {
        return Err(Error::not_found(names::truncate(parent)));
    }
    Ok(org)
}

/// A child resource in the caller's organization; elsewhere is NOT_FOUND.
pub(super) fn own_child<'a>(
    caller: &Principal,
    name: &'a str,
    collection: &str,
) -> Result<&'a str> {
    let org = caller_org(caller)?;
    let (o, id) = parse_child(name, collection)?;
    if o != org {
        return Err(Error::not_found(names::truncate(name)));
    }
    Ok(id)
}

/// The update mask's paths, each one of `allowed`; an empty mask is all.
pub(super) fn mask_paths(
    mask: Option<&prost_types::FieldMask>,
    allowed: &[&str],
) -> Result<Vec<String>> {
    let paths = mask.map(|m| m.paths.clone()).unwrap_or_default();
    for p in &paths {
        if !allowed.contains(&p.as_str()) {
            return Err(Error::invalid(format!(
                "update_mask path {:?} cannot be updated; allowed: {}",
                names::truncate(p),
                allowed.join(", ")
            )));
        }
    }
    Ok(if paths.is_empty() {
        allowed.iter().map(|s| (*s).to_owned()).collect()
    } else {
        paths
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_name_allowed_paths_and_default_to_all() {
        let allowed = ["display_name", "description"];
        assert_eq!(mask_paths(None, &allowed).unwrap(), allowed);
        let mask = prost_types::FieldMask {
            paths: vec!["description".into()],
        };
        assert_eq!(mask_paths(Some(&mask), &allowed).unwrap(), ["description"]);
        let bad = prost_types::FieldMask {
            paths: vec!["create_time".into()],
        };
        let Err(Error::InvalidArgument(msg)) = mask_paths(Some(&bad), &allowed) else {
            panic!("an unknown path is refused");
        };
        assert!(msg.contains("allowed: display_name, description"), "{msg}");
    }

    #[test]
    fn children_outside_the_caller_organization_are_not_found() {
        let caller = Principal {
            organization: "organizations/acme".into(),
            ..Default::default()
        };
        assert_eq!(
            own_child(&caller, "organizations/acme/projects/p1", "projects").unwrap(),
            "p1"
        );
        assert!(matches!(
            own_child(&caller, "organizations/other/projects/p1", "projects"),
            Err(Error::NotFound(_))
        ));
        assert_eq!(parent_org(&caller, "").unwrap(), "acme");
        assert!(matches!(
            parent_org(&caller, "organizations/other"),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            caller_org(&Principal::default()),
            Err(Error::PermissionDenied(_))
        ));
    }
}
