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
                let trace = crate::telemetry::current_trace_id();
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
    let trace = crate::telemetry::current_trace_id();
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
