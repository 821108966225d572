//! Reading a request: the caller's organization, child resource names kept
//! inside it, page size and token, and update masks.

use paddock_proto::identity::v1::Principal;
use paddock_shared::error::{Error, Result};
use paddock_shared::names::{self, parse_child};

const MAX_PAGE: i64 = 1000;
const DEFAULT_PAGE: i64 = 50;

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

/// A page request: how many rows, after which key.
pub(super) struct Page {
    pub size: i64,
    pub after: String,
}

impl Page {
    /// The rows to fetch: one more than the page, to learn whether another
    /// page exists.
    pub fn limit(&self) -> i64 {
        self.size + 1
    }
}

pub(super) fn page(size: i32, token: &str) -> Result<Page> {
    if size < 0 {
        return Err(Error::invalid("page_size must not be negative"));
    }
    let size = if size == 0 {
        DEFAULT_PAGE
    } else {
        i64::from(size).min(MAX_PAGE)
    };
    let after = if token.is_empty() {
        String::new()
    } else {
        decode_token(token).ok_or_else(|| Error::invalid("invalid page_token"))?
    };
    Ok(Page { size, after })
}

fn encode_token(key: &str) -> String {
    paddock_shared::hex::encode(key.as_bytes())
}

fn decode_token(token: &str) -> Option<String> {
    if token.len() > 256 {
        return None;
    }
    String::from_utf8(paddock_shared::hex::decode(token)?).ok()
}

/// Cuts the extra row fetched to learn whether another page exists.
pub(super) fn next_page<T>(rows: &mut Vec<T>, page: &Page, key: impl Fn(&T) -> String) -> String {
    if rows.len() as i64 > page.size {
        rows.truncate(page.size as usize);
        rows.last()
            .map(|r| encode_token(&key(r)))
            .unwrap_or_default()
    } else {
        String::new()
    }
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
    fn pages_are_bounded_and_tokens_round_trip() {
        assert_eq!(page(0, "").unwrap().size, DEFAULT_PAGE);
        assert_eq!(page(5000, "").unwrap().size, MAX_PAGE);
        assert_eq!(page(7, "").unwrap().limit(), 8);
        assert!(matches!(page(-1, ""), Err(Error::InvalidArgument(_))));
        assert!(matches!(page(1, "zz"), Err(Error::InvalidArgument(_))));
        assert!(matches!(
            page(1, &"0".repeat(258)),
            Err(Error::InvalidArgument(_))
        ));

        let first = page(2, "").unwrap();
        let mut rows = vec!["a", "b", "c"];
        let token = next_page(&mut rows, &first, |r| (*r).to_owned());
        assert_eq!(rows, ["a", "b"]);
        assert_eq!(page(2, &token).unwrap().after, "b");

        let mut last = vec!["c"];
        assert_eq!(next_page(&mut last, &first, |r| (*r).to_owned()), "");
    }

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
