//! What every service opens first, written once: its database, connected
//! and migrated by its `sqlx::migrate!` migrator; its audit outbox and the
//! forwarder that delivers it (when an audit endpoint is configured); and
//! the admission layer, which records its refusals in that outbox.
//!
//! A function, not a framework: each service's `start_on` calls
//! [`Storage::open`], builds its own handlers, and hands [`Storage`]'s
//! background task to its server.

use std::sync::Arc;

use sqlx::migrate::Migrator;

use crate::auth::{Admission, Authenticator, Authorizer};
use crate::client::BearerAuth;
use crate::config::CommonConfig;
use crate::db::Database;
use crate::outbox::{Forwarder, Outbox};
use crate::secret::Secret;

/// Why a service could not open its storage.
pub type StartError = Box<dyn std::error::Error + Send + Sync>;

/// A service's database and audit outbox.
pub struct Storage {
    pub db: Database,
    pub outbox: Outbox,
    /// Delivers the outbox; none until an audit endpoint is configured (the
    /// events wait).
    forwarder: Option<Forwarder>,
    source: &'static str,
}

impl Storage {
    /// Opens `database` (its PostgreSQL schema or SQLite file) under
    /// `common`, runs `migrator`, and sets up the outbox of service
    /// `source` with a forwarder to `common.audit_endpoint` that calls
    /// with `token`.
    pub async fn open(
        database: &str,
        source: &'static str,
        common: &CommonConfig,
        token: &Secret<String>,
        migrator: &Migrator,
    ) -> Result<Self, StartError> {
        let db = Database::connect(
            database,
            &common.data_dir,
            common.database_url.as_deref(),
            migrator,
        )
        .await?;
        let forwarder = match &common.audit_endpoint {
            Some(endpoint) => Some(Forwarder::new(
                source,
                db.pool.clone(),
                endpoint,
                BearerAuth::new(token)?,
            )?),
            None => None,
        };
        let outbox = Outbox::delivered_by(db.pool.clone(), source, forwarder.as_ref());
        Ok(Self {
            db,
            outbox,
            forwarder,
            source,
        })
    }

    /// The admission layer of this service: `authn` and `authz`, refusals
    /// recorded in this outbox.
    pub fn admission(
        &self,
        authn: Arc<dyn Authenticator>,
        authz: Arc<dyn Authorizer>,
    ) -> Admission {
        Admission::new(authn, authz).with_audit(self.source, Arc::new(self.outbox.refusals()))
    }

    /// The forwarder's task, for the server's background set (none when
    /// nothing delivers).
    pub fn spawn_forwarder(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        self.forwarder.take().map(Forwarder::spawn)
    }
}
