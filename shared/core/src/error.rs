//! The error table: one enum every service returns, mapped once onto
//! `tonic::Status`. Internal causes are logged with the trace id; the client
//! gets a code and a message it can act on, never a database string.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("internal: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Error::NotFound(format!("{what} not found"))
    }

    /// A failed insert of `name`: a unique violation is `name` being taken
    /// (ALREADY_EXISTS naming it); anything else stays a database error.
    pub fn exists_or(err: sqlx::Error, name: &str) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                Error::AlreadyExists(format!("{name} already exists"))
            }
            _ => Error::Database(err),
        }
    }

    /// The gRPC code this error is answered with.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Database(_) | Error::Internal(_) => Code::Internal,
        }
    }

    /// A dependency's answer, carried on with its code and message (the
    /// dependency already made the message safe to show).
    pub fn from_status(status: Status) -> Self {
        let msg = status.message().to_owned();
        match status.code() {
            Code::InvalidArgument | Code::OutOfRange => Error::InvalidArgument(msg),
            Code::NotFound => Error::NotFound(msg),
            Code::AlreadyExists => Error::AlreadyExists(msg),
            Code::PermissionDenied => Error::PermissionDenied(msg),
            Code::Unauthenticated => Error::Unauthenticated(msg),
            Code::FailedPrecondition | Code::Aborted => Error::FailedPrecondition(msg),
            Code::ResourceExhausted => Error::ResourceExhausted(msg),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => Error::Unavailable(msg),
            _ => Error::Internal(format!("{:?}: {msg}", status.code())),
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let (code, msg) = match err {
            Error::InvalidArgument(m) => (Code::InvalidArgument, m),
            Error::NotFound(m) => (Code::NotFound, m),
            Error::AlreadyExists(m) => (Code::AlreadyExists, m),
            Error::PermissionDenied(m) => (Code::PermissionDenied, m),
            Error::Unauthenticated(m) => (Code::Unauthenticated, m),
            Error::FailedPrecondition(m) => (Code::FailedPrecondition, m),
            Error::ResourceExhausted(m) => (Code::ResourceExhausted, m),
            Error::Unavailable(m) => (Code::Unavailable, m),
            Error::Database(e) => return database_status(&e),
            Error::Internal(m) => {
                let trace = crate::telemetry::trace_id_or_dash();
                tracing::error!(trace_id = %trace, cause = %m, "internal error");
                (Code::Internal, format!("internal error (trace id {trace})"))
            }
        };
        Status::new(code, msg)
    }
}

fn database_status(err: &sqlx::Error) -> Status {
    if let sqlx::Error::Database(db) = err
        && db.is_unique_violation()
    {
        return Status::already_exists("a resource with that name already exists");
    }
    let trace = crate::telemetry::trace_id_or_dash();
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            tracing::error!(trace_id = %trace, cause = %err, "database unavailable");
            Status::unavailable(format!("storage unavailable (trace id {trace})"))
        }
        _ => {
            tracing::error!(trace_id = %trace, cause = %err, "database error");
            Status::internal(format!("internal error (trace id {trace})"))
        }
    }
}
