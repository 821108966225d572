//! Resolving tokens to principals inside identity: API keys, the service
//! token and the platform bootstrap token. Also the coarse `last_used_at`
//! batching and the bootstrap token file. The SQL is in `crate::store`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use paddock_proto::identity::v1::{Principal, PrincipalKind};
use paddock_shared::auth::{self, Authenticator};
use paddock_shared::db::Database;
use paddock_shared::names;
use paddock_shared::secret::Secret;
use paddock_shared::time::{now_micros, opt_timestamp};
use paddock_shared::token::{self, TokenKind};
use tonic::Status;

use crate::store::{api_keys, platform_tokens};

/// Key ids seen since the last flush, with the time they were used.
#[derive(Default)]
pub struct LastUsed {
    pending: Mutex<HashMap<String, i64>>,
}

impl LastUsed {
    fn touch(&self, key_id: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.insert(key_id.to_owned(), now_micros());
    }

    /// Writes the pending times in one transaction.
    pub async fn flush(&self, db: &Database) -> Result<(), sqlx::Error> {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = db.begin_write().await?;
        api_keys::set_last_used(&mut tx, &batch).await?;
        tx.commit().await
    }

    /// Flushes every `every` until the task is aborted.
    pub fn spawn_flusher(
        self: Arc<Self>,
        db: Database,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = self.flush(&db).await {
                    tracing::warn!(error = %e, "could not record key last-use times");
                }
            }
        })
    }
}

/// Authenticates against identity's own tables.
pub struct LocalAuthenticator {
    pub db: Database,
    pub service_hash: String,
    pub last_used: Arc<LastUsed>,
}

fn unauthenticated(msg: &str) -> Status {
    Status::unauthenticated(msg.to_owned())
}

impl LocalAuthenticator {
    async fn api_key(&self, parsed: &token::ParsedToken<'_>) -> Result<Principal, Status> {
        let row = api_keys::for_authentication(&self.db.pool, parsed.id)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "key lookup failed");
                Status::unavailable("identity storage unavailable")
            })?;
        let Some(api_keys::KeyOwnerRow {
            secret_hash: hash,
            org_id: org,
            owner_id,
            role: key_role,
            scope,
            expire_time: expire,
            revoke_time: revoked,
            owner_display_name: display,
            owner_role: role,
        }) = row
        else {
            return Err(unauthenticated("invalid API key"));
        };
        // The refusing service files the failure in the key's organization.
        let refuse = |msg: &str| auth::with_key_organization(unauthenticated(msg), &org);
        if !parsed.matches(&hash) {
            return Err(refuse("invalid API key"));
        }
        if revoked.is_some() {
            return Err(refuse("API key has been revoked"));
        }
        if expire.is_some_and(|t| t <= now_micros()) {
            return Err(refuse("API key has expired"));
        }
        let (Some(display), Some(role)) = (display, role) else {
            return Err(refuse("the key's owner no longer exists"));
        };
        self.last_used.touch(parsed.id);
        let (kind, name) = if owner_id.starts_with('a') {
            (
                PrincipalKind::Agent,
                names::child_name(&org, "agents", &display),
            )
        } else {
            (
                PrincipalKind::Member,
                names::child_name(&org, "members", &owner_id),
            )
        };
        Ok(Principal {
            id: owner_id,
            kind: kind as i32,
            name,
            organization: names::org_name(&org),
            role,
            key_role,
            scope: split_scope(&scope),
            key_id: parsed.id.to_owned(),
            display_name: display,
            key_expire_time: opt_timestamp(expire),
        })
    }

    async fn bootstrap(&self, parsed: &token::ParsedToken<'_>) -> Result<Principal, Status> {
        let hash = platform_tokens::secret_hash(&self.db.pool, parsed.id)
            .await
            .map_err(|_| Status::unavailable("identity storage unavailable"))?;
        match hash {
            Some(hash) if parsed.matches(&hash) => Ok(Principal {
                id: "platform".to_owned(),
                kind: PrincipalKind::Platform as i32,
                key_id: parsed.id.to_owned(),
                display_name: "platform bootstrap".to_owned(),
                ..Default::default()
            }),
            _ => Err(unauthenticated("invalid bootstrap token")),
        }
    }
}

impl Authenticator for LocalAuthenticator {
    fn authenticate(&self, token: String) -> BoxFuture<'_, Result<Principal, Status>> {
        Box::pin(async move {
            let parsed = token::parse(&token)
                .map_err(|e| Status::unauthenticated(format!("malformed token: {e}")))?;
            match parsed.kind {
                TokenKind::ApiKey => self.api_key(&parsed).await,
                TokenKind::Bootstrap => self.bootstrap(&parsed).await,
                TokenKind::Service if parsed.matches(&self.service_hash) => {
                    Ok(paddock_shared::auth::service_principal())
                }
                TokenKind::Service => Err(unauthenticated("invalid service token")),
                TokenKind::Invite => Err(unauthenticated(
                    "an invite code is not an API key; redeem it with AcceptInvite",
                )),
            }
        })
    }
}

pub fn split_scope(scope: &str) -> Vec<String> {
    scope
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Makes sure `{data_dir}/bootstrap-token` holds a token whose hash is
/// stored; mints a new one (replacing any other) when it does not.
pub async fn ensure_bootstrap_token(
    db: &Database,
    data_dir: &Path,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let path = data_dir.join("bootstrap-token");
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(parsed) = token::parse(text.trim())
        && parsed.kind == TokenKind::Bootstrap
    {
        let hash = platform_tokens::secret_hash(&db.pool, parsed.id).await?;
        if hash.is_some_and(|h| parsed.matches(&h)) {
            return Ok(());
        }
    }
    let (id, secret) = token::mint(TokenKind::Bootstrap);
    let secret = Secret::new(secret);
    let mut tx = db.begin_write().await?;
    platform_tokens::replace(&mut tx, &id, &token::hash(secret.expose()), now_micros()).await?;
    tx.commit().await?;
    paddock_shared::server::write_secret_file(&path, secret.expose())?;
    tracing::info!(path = %path.display(), "wrote a new platform bootstrap token");
    Ok(())
}
