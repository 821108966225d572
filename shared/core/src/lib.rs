//! What every Paddock service shares: the RBAC tables, token formats,
//! resource names, storage, the authenticate/authorize layer, telemetry and
//! the server stack. A service calls these; it does not copy them.
#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod auth;
pub mod bootstrap;
pub mod client;
pub mod config;
pub mod db;
pub mod error;
pub mod hex;
pub mod methods;
pub mod metrics;
pub mod names;
pub mod org_reaper;
pub mod outbox;
pub mod page;
pub mod rbac;
pub mod request;
pub mod seal;
pub mod secret;
pub mod server;
pub mod stack;
pub mod streams;
pub mod telemetry;
pub mod time;
pub mod token;
pub mod units;

pub use paddock_proto as proto;
