//! What the user types, turned into what the API takes: short names
//! expanded into full resource names, `--expires` and `--scope` values.

use std::time::Duration;

use crate::error::CliError;

pub const MEMBERS: &str = "members";
pub const AGENTS: &str = "agents";
pub const PROJECTS: &str = "projects";
pub const API_KEYS: &str = "apiKeys";
pub const CREDENTIALS: &str = "credentials";
pub const INVITES: &str = "invites";

/// `organizations/{org}`.
pub fn org_name(org: &str) -> String {
    format!("organizations/{org}")
}

/// Whether `input` is already a full resource name.
pub fn is_full(input: &str) -> bool {
    input.starts_with("organizations/")
}

/// Expands `web` into `organizations/{org}/projects/web`; a full name of the
/// right collection passes through unchanged.
pub fn expand(org: &str, collection: &str, input: &str) -> Result<String, CliError> {
    if is_full(input) {
        return check_full(collection, input).map(str::to_owned);
    }
    if input.is_empty() || input.contains('/') {
        return Err(CliError::usage(format!(
            "invalid {} name {input:?}: give a short name or organizations/{{organization}}/{collection}/{{id}}",
            singular(collection)
        )));
    }
    Ok(format!("organizations/{org}/{collection}/{input}"))
}

/// Checks the shape `organizations/{org}/{collection}/{id}`.
pub fn check_full<'a>(collection: &str, input: &'a str) -> Result<&'a str, CliError> {
    match input.split('/').collect::<Vec<_>>().as_slice() {
        ["organizations", org, c, id] if *c == collection && !org.is_empty() && !id.is_empty() => {
            Ok(input)
        }
        _ => Err(CliError::usage(format!(
            "invalid {} name {input:?}: expected organizations/{{organization}}/{collection}/{{id}}",
            singular(collection)
        ))),
    }
}

/// The organization id inside a full resource name.
pub fn org_of(name: &str) -> Option<&str> {
    name.strip_prefix("organizations/")?
        .split('/')
        .next()
        .filter(|s| !s.is_empty())
}

/// The last segment of a resource name: `organizations/a/projects/web` → `web`.
pub fn short(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// A resource for `paddock can`: empty (the caller's organization), a full
/// name, or a name relative to the caller's organization (`projects/web`).
pub fn expand_resource(org: &str, input: &str) -> Result<String, CliError> {
    if input.is_empty() || is_full(input) {
        return Ok(input.to_owned());
    }
    let parts: Vec<&str> = input.split('/').collect();
    if !parts.len().is_multiple_of(2) || parts.iter().any(|p| p.is_empty()) {
        return Err(CliError::usage(format!(
            "invalid resource {input:?}: give organizations/{{organization}}/... or a name like projects/web"
        )));
    }
    Ok(format!("organizations/{org}/{input}"))
}

/// An endpoint flag must be an `http://` or `https://` URL with a host.
pub fn check_endpoint(flag: &str, endpoint: &str) -> Result<(), CliError> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') && !r.starts_with(':') => Ok(()),
        _ => Err(CliError::usage(format!(
            "invalid {flag} {endpoint:?}: expected http://HOST:PORT"
        ))),
    }
}

fn singular(collection: &str) -> &str {
    match collection {
        MEMBERS => "member",
        AGENTS => "agent",
        PROJECTS => "project",
        API_KEYS => "API key",
        CREDENTIALS => "credential",
        INVITES => "invite",
        other => other,
    }
}

/// How long a new key lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Never,
    After(Duration),
}

/// Parses `--expires`: `never`, or a duration such as `30d`, `12h`, `2s`.
pub fn parse_expires(text: &str) -> Result<Expiry, String> {
    if text.eq_ignore_ascii_case("never") {
        return Ok(Expiry::Never);
    }
    let d = paddock_shared::time::parse_duration(text).map_err(|e| format!("{e}, or never"))?;
    if d.is_zero() {
        return Err(format!(
            "invalid duration {text:?}: must be longer than zero"
        ));
    }
    Ok(Expiry::After(d))
}

/// Parses a positive duration flag such as `--ttl` or `--duration`.
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let d = paddock_shared::time::parse_duration(text)?;
    if d.is_zero() {
        return Err(format!(
            "invalid duration {text:?}: must be longer than zero"
        ));
    }
    Ok(d)
}

/// Splits `--scope read-only,projects.read` into entries.
pub fn parse_scope(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_short_names() {
        assert_eq!(
            expand("acme", PROJECTS, "web").ok(),
            Some("organizations/acme/projects/web".to_owned())
        );
        assert_eq!(
            expand("acme", AGENTS, "bot-1").ok(),
            Some("organizations/acme/agents/bot-1".to_owned())
        );
        assert_eq!(
            expand("acme", API_KEYS, "K1").ok(),
            Some("organizations/acme/apiKeys/K1".to_owned())
        );
    }

    #[test]
    fn full_names_pass_through() {
        assert_eq!(
            expand("acme", PROJECTS, "organizations/other/projects/web").ok(),
            Some("organizations/other/projects/web".to_owned())
        );
    }

    #[test]
    fn malformed_names_are_usage_errors() {
        for bad in [
            "",
            "a/b",
            "organizations/acme/agents/x",
            "organizations/acme/projects",
            "organizations//projects/x",
        ] {
            let err = expand("acme", PROJECTS, bad).err();
            assert!(matches!(err, Some(CliError::Usage(_))), "{bad:?}");
        }
    }

    #[test]
    fn resources_for_can() {
        assert_eq!(expand_resource("acme", "").ok(), Some(String::new()));
        assert_eq!(
            expand_resource("acme", "projects/web").ok(),
            Some("organizations/acme/projects/web".to_owned())
        );
        assert_eq!(
            expand_resource("acme", "organizations/x").ok(),
            Some("organizations/x".to_owned())
        );
        assert!(expand_resource("acme", "projects").is_err());
        assert!(expand_resource("acme", "projects//").is_err());
    }

    #[test]
    fn name_parts() {
        assert_eq!(org_of("organizations/acme/projects/web"), Some("acme"));
        assert_eq!(org_of("organizations/acme"), Some("acme"));
        assert_eq!(org_of("projects/web"), None);
        assert_eq!(short("organizations/acme/apiKeys/abc"), "abc");
    }

    #[test]
    fn endpoints() {
        assert!(check_endpoint("--x", "http://127.0.0.1:7101").is_ok());
        assert!(check_endpoint("--x", "https://paddock.example").is_ok());
        for bad in [
            "notaurl",
            "127.0.0.1:7101",
            "http://",
            "http://:80",
            "ftp://x",
        ] {
            assert!(check_endpoint("--x", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn expires() {
        assert_eq!(parse_expires("never"), Ok(Expiry::Never));
        assert_eq!(
            parse_expires("30d"),
            Ok(Expiry::After(Duration::from_secs(30 * 86_400)))
        );
        assert_eq!(
            parse_expires("2s"),
            Ok(Expiry::After(Duration::from_secs(2)))
        );
        assert!(parse_expires("0s").is_err());
        assert!(parse_expires("soon").is_err());
        assert!(parse_expires("").is_err());
    }

    #[test]
    fn scopes() {
        assert_eq!(parse_scope("ci-cd"), vec!["ci-cd"]);
        assert_eq!(
            parse_scope("projects.read, agents.execute,"),
            vec!["projects.read", "agents.execute"]
        );
        assert!(parse_scope("").is_empty());
    }
}
