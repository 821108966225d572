//! How a command fails: every failure prints one `CODE: message` line on
//! stderr, where CODE is the gRPC status code in SCREAMING_SNAKE_CASE.

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
