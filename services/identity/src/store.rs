//! Identity's SQL, one module per table, over the `AnyPool` (SQLite or
//! PostgreSQL). Rows are typed `FromRow` structs (one column: a scalar);
//! functions return `sqlx::Result` and leave the gRPC meaning of a failure
//! (a taken name, a missing row) to the handlers. A function that runs one
//! statement takes any executor (the pool, or a transaction's connection);
//! one that runs several takes the transaction's connection, so they
//! commit together.
//!
//! Booleans are stored as `BIGINT` 0/1 and bound as `i64`: the two backends
//! agree on integers, not on booleans.

pub mod agents;
pub mod api_keys;
pub mod credentials;
pub mod invites;
pub mod members;
pub mod organizations;
pub mod platform_tokens;
pub mod projects;
