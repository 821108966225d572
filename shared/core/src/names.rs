//! Resource names (`organizations/{org}/projects/{project}`) and the input
//! rules for ids, display names and emails.

use crate::error::{Error, Result};

pub const ORGANIZATIONS: &str = "organizations";

/// Checks a user-chosen id: `[a-z][a-z0-9-]*[a-z0-9]`, 2 to 63 characters.
pub fn validate_id(what: &str, id: &str) -> Result<()> {
    let ok = (2..=63).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && !id.ends_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid {what} id {:?}: use 2-63 characters of a-z, 0-9 and '-', starting with a letter",
            truncate(id)
        )))
    }
}

pub fn org_name(org: &str) -> String {
    format!("{ORGANIZATIONS}/{org}")
}

pub fn child_name(org: &str, collection: &str, id: &str) -> String {
    format!("{ORGANIZATIONS}/{org}/{collection}/{id}")
}

/// `organizations/{org}` → `org`.
pub fn parse_org(name: &str) -> Result<&str> {
    match name.split('/').collect::<Vec<_>>().as_slice() {
        [ORGANIZATIONS, org] if is_segment(org) => Ok(org),
        _ => Err(Error::invalid(format!(
            "invalid organization name {:?}: expected organizations/{{organization}}",
            truncate(name)
        ))),
    }
}

/// `organizations/{org}/{collection}/{id}` → (`org`, `id`).
pub fn parse_child<'a>(name: &'a str, collection: &str) -> Result<(&'a str, &'a str)> {
    match name.split('/').collect::<Vec<_>>().as_slice() {
        [ORGANIZATIONS, org, c, id] if *c == collection && is_segment(org) && is_segment(id) => {
            Ok((org, id))
        }
        _ => Err(Error::invalid(format!(
            "invalid resource name {:?}: expected organizations/{{organization}}/{collection}/{{id}}",
            truncate(name)
        ))),
    }
}

/// The organization a resource name belongs to, if it is one of ours.
pub fn organization_of(name: &str) -> Option<&str> {
    let mut parts = name.split('/');
    match (parts.next(), parts.next()) {
        (Some(ORGANIZATIONS), Some(org)) if is_segment(org) => Some(org),
        _ => None,
    }
}

fn is_segment(s: &str) -> bool {
    (1..=63).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Checks free text: at most `max` characters, no control characters.
pub fn validate_text(what: &str, text: &str, max: usize) -> Result<()> {
    if text.chars().count() > max {
        return Err(Error::invalid(format!(
            "{what} is longer than {max} characters"
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "{what} contains control characters"
        )));
    }
    Ok(())
}

/// Checks an email address: one '@', no spaces, at most 254 characters.
/// Returns it lowercased.
pub fn normalize_email(email: &str) -> Result<String> {
    let email = email.trim();
    let ok = !email.is_empty()
        && email.len() <= 254
        && email.matches('@').count() == 1
        && !email.starts_with('@')
        && !email.ends_with('@')
        && email.chars().all(|c| c.is_ascii_graphic());
    if ok {
        Ok(email.to_ascii_lowercase())
    } else {
        Err(Error::invalid(format!(
            "invalid email {:?}",
            truncate(email)
        )))
    }
}

/// The gRPC name of a code, e.g. `PERMISSION_DENIED`.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// At most 64 characters of untrusted input, for error messages.
pub fn truncate(s: &str) -> String {
    let mut out: String = s.chars().take(64).filter(|c| !c.is_control()).collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(parse_org("organizations/acme").unwrap(), "acme");
        assert!(parse_org("organizations/").is_err());
        assert!(parse_org("organizations/acme/x").is_err());
        assert_eq!(
            parse_child("organizations/acme/projects/web", "projects").unwrap(),
            ("acme", "web")
        );
        assert!(parse_child("organizations/acme/agents/web", "projects").is_err());
        assert!(parse_child("organizations/acme/projects/../x", "projects").is_err());
        assert_eq!(
            organization_of("organizations/acme/projects/web"),
            Some("acme")
        );
        assert!(validate_id("project", "web-1").is_ok());
        assert!(validate_id("project", "Web").is_err());
        assert!(validate_id("project", "w").is_err());
        assert!(validate_id("project", "web-").is_err());
        assert_eq!(
            normalize_email(" Alice@Example.com ").unwrap(),
            "alice@example.com"
        );
        assert!(normalize_email("a b@c").is_err());
        assert!(normalize_email("ab.c").is_err());
    }
}

/// Whether `text` matches `pattern`, where `*` stands for any run of
/// characters (none included) and everything else for itself.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod glob_tests {
    use super::glob_matches;

    #[test]
    fn globs() {
        assert!(glob_matches("node:22", "node:22"));
        assert!(!glob_matches("node:22", "node:22-alpine"));
        assert!(glob_matches("node:*", "node:22-alpine"));
        assert!(!glob_matches("node:*", "evil/node:22"));
        assert!(glob_matches("*", "anything/at:all"));
        assert!(glob_matches("ghcr.io/acme/*", "ghcr.io/acme/tool:1"));
        assert!(!glob_matches("ghcr.io/acme/*", "ghcr.io/acme-evil/tool:1"));
        assert!(glob_matches("a*b*c", "abc"));
        assert!(glob_matches("a*b*c", "a-b-b-c"));
        assert!(!glob_matches("a*b*c", "a-c"));
        assert!(!glob_matches("ab*ba", "aba"));
        assert!(!glob_matches("", "x"));
    }
}
