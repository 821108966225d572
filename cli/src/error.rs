//! How a command fails: every failure prints one `CODE: message` line on
//! stderr, where CODE is the gRPC status code in SCREAMING_SNAKE_CASE (with
//! `-o json`, one `{"code": CODE, "message": ...}` object). Server messages
//! name request fields; commands rename them to the flags the user typed.

use tonic::{Code, Status};

/// A failed command.
#[derive(Debug)]
pub enum CliError {
    /// The command line is wrong (exit 2).
    Usage(String),
    /// A call or a local step failed (exit 1).
    Failed { code: Code, message: String },
    /// Like `Failed`, but exit 2: for commands whose exit 1 is a clean
    /// "no" (`paddock can`: 0 allowed, 1 denied, 2 could not tell).
    Undecided { code: Code, message: String },
    /// Nothing more to print; exit 1 (e.g. `paddock can` when denied).
    Silent,
    /// Nothing to print; exit with a command's own code (`paddock run`).
    Exit(u8),
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> Self {
        CliError::Usage(message.into())
    }

    pub fn new(code: Code, message: impl Into<String>) -> Self {
        CliError::Failed {
            code,
            message: message.into(),
        }
    }

    /// A failed call to the service at `endpoint`.
    pub fn rpc(status: Status, service: &str, endpoint: &str) -> Self {
        let mut message = status.message().to_owned();
        if message.is_empty() {
            message = format!("{service} returned no message");
        }
        // Transport failures come back as UNAVAILABLE/UNKNOWN with a terse
        // cause; say where we were trying to go.
        if matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled
        ) && !message.contains(endpoint)
        {
            message = format!("{message} ({service} at {endpoint})");
        }
        CliError::Failed {
            code: status.code(),
            message,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Undecided { .. } => 2,
            CliError::Failed { .. } | CliError::Silent => 1,
            CliError::Exit(code) => *code,
        }
    }

    /// Renames request fields the server named (`ttl`, `spec.agent`) to the
    /// flags the user typed (`--expires`, `--agent`). Longer names first, so
    /// `securitySettings max.memory_bytes` can win over `max.memory_bytes`.
    pub fn with_flags(self, fields: &[(&str, &str)]) -> Self {
        match self {
            CliError::Failed { code, message } => CliError::Failed {
                code,
                message: rename_fields(&message, fields),
            },
            CliError::Undecided { code, message } => CliError::Undecided {
                code,
                message: rename_fields(&message, fields),
            },
            other => other,
        }
    }

    /// The stderr object for `-o json`, if any.
    pub fn render_json(&self) -> Option<serde_json::Value> {
        let (code, message) = match self {
            CliError::Usage(m) => (Code::InvalidArgument, m.as_str()),
            CliError::Failed { code, message } | CliError::Undecided { code, message } => {
                (*code, message.as_str())
            }
            CliError::Silent | CliError::Exit(_) => return None,
        };
        Some(serde_json::json!({"code": code_name(code), "message": message}))
    }

    /// Whether the error may come from a service (not a usage error).
    pub fn from_a_call(&self) -> bool {
        matches!(self, CliError::Failed { .. } | CliError::Undecided { .. })
    }

    /// The stderr line, if any.
    pub fn render(&self) -> Option<String> {
        match self {
            CliError::Usage(m) => Some(format!("{}: {m}", code_name(Code::InvalidArgument))),
            CliError::Failed { code, message } | CliError::Undecided { code, message } => {
                Some(format!("{}: {message}", code_name(*code)))
            }
            CliError::Silent | CliError::Exit(_) => None,
        }
    }
}

/// Replaces each field name where it stands as a whole word (not inside
/// a longer name such as `max_ttl` or `spec.agent_id`).
fn rename_fields(message: &str, fields: &[(&str, &str)]) -> String {
    let mut fields: Vec<&(&str, &str)> = fields.iter().collect();
    fields.sort_by_key(|(field, _)| std::cmp::Reverse(field.len()));
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-';
    let mut out = message.to_owned();
    for (field, flag) in fields {
        let mut result = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(at) = rest.find(field) {
            let before = rest[..at].chars().next_back();
            let after = rest[at + field.len()..].chars().next();
            // A trailing '.' ends a sentence; it does not extend the name.
            let after_ok = match after {
                Some('.') => rest[at + field.len() + 1..]
                    .chars()
                    .next()
                    .is_none_or(|c| !word(c)),
                Some(c) => !word(c),
                None => true,
            };
            result.push_str(&rest[..at]);
            if before.is_none_or(|c| !word(c)) && after_ok {
                result.push_str(flag);
            } else {
                result.push_str(field);
            }
            rest = &rest[at + field.len()..];
        }
        result.push_str(rest);
        out = result;
    }
    out
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::new(Code::Internal, e.to_string())
    }
}

/// The gRPC name of a code (one table, in `paddock_shared::names`).
pub use paddock_shared::names::code_name;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_code_and_message() {
        let err = CliError::rpc(
            Status::permission_denied("missing projects.delete on organizations/acme"),
            "identity",
            "http://127.0.0.1:7101",
        );
        assert_eq!(
            err.render().as_deref(),
            Some("PERMISSION_DENIED: missing projects.delete on organizations/acme")
        );
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn transport_failures_name_the_endpoint() {
        let err = CliError::rpc(
            Status::unavailable("tcp connect error"),
            "identity",
            "http://127.0.0.1:7101",
        );
        assert_eq!(
            err.render().as_deref(),
            Some("UNAVAILABLE: tcp connect error (identity at http://127.0.0.1:7101)")
        );
    }

    #[test]
    fn usage_errors_exit_2() {
        let err = CliError::usage("bad --expires");
        assert_eq!(err.exit_code(), 2);
        assert_eq!(
            err.render().as_deref(),
            Some("INVALID_ARGUMENT: bad --expires")
        );
        assert_eq!(CliError::Silent.render(), None);
        assert_eq!(CliError::Silent.exit_code(), 1);
    }

    #[test]
    fn fields_become_flags() {
        let err = CliError::new(
            Code::InvalidArgument,
            "ttl 1000d exceeds the organization's maximum key lifetime of 90d (settings.max_key_lifetime)",
        )
        .with_flags(&[
            ("ttl", "--expires"),
            ("settings.max_key_lifetime", "`org update --max-key-lifetime`"),
        ]);
        assert_eq!(
            err.render().as_deref(),
            Some(
                "INVALID_ARGUMENT: --expires 1000d exceeds the organization's maximum key lifetime of 90d (`org update --max-key-lifetime`)"
            )
        );
        let msg = rename_fields(
            "max.memory_bytes 8 GiB exceeds the bound (securitySettings max.memory_bytes); max_ttl and spec.agent_id stay, spec.agent.",
            &[
                ("max.memory_bytes", "--max-memory"),
                (
                    "securitySettings max.memory_bytes",
                    "`security set --max-memory`",
                ),
                ("spec.agent", "--agent"),
                ("ttl", "--ttl"),
            ],
        );
        assert_eq!(
            msg,
            "--max-memory 8 GiB exceeds the bound (`security set --max-memory`); max_ttl and spec.agent_id stay, --agent."
        );
    }

    #[test]
    fn json_errors() {
        let err = CliError::new(Code::NotFound, "organizations/acme/projects/x not found");
        assert_eq!(
            err.render_json(),
            Some(
                serde_json::json!({"code": "NOT_FOUND", "message": "organizations/acme/projects/x not found"})
            )
        );
        assert_eq!(CliError::Silent.render_json(), None);
        assert_eq!(
            CliError::usage("bad").render_json().expect("json")["code"],
            "INVALID_ARGUMENT"
        );
    }

    #[test]
    fn every_code_is_screaming_snake() {
        for code in [
            Code::NotFound,
            Code::AlreadyExists,
            Code::FailedPrecondition,
            Code::Unauthenticated,
            Code::DeadlineExceeded,
        ] {
            let name = code_name(code);
            assert!(
                name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
                "{name}"
            );
        }
        assert_eq!(code_name(Code::NotFound), "NOT_FOUND");
    }
}
