//! Reading a request: the caller's organization, child resource names kept
//! inside it, and update masks (page tokens: `paddock_shared::page`).

use paddock_shared::error::{Error, Result};
use paddock_shared::names;
pub(super) use paddock_shared::request::{caller_org, own_child, parent_org};

/// The longest page a list RPC returns.
pub(super) const MAX_PAGE: i64 = 1000;

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
}
