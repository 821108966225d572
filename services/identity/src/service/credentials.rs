//! Stored credentials: SSH keys, git config, API tokens and other files an
//! agent's sandbox mounts read-only. Values are sealed with the credential
//! key before they reach the database and leave identity only through
//! `RevealCredential`, which services call and which is audited like a
//! change. No response, log line, error or audit detail carries a value.

use paddock_proto::identity::v1::*;
use paddock_shared::error::{Error, Result};
use paddock_shared::names::{self, child_name, parse_child, validate_id, validate_text};
use paddock_shared::outbox;
use paddock_shared::time::{now_micros, opt_timestamp, timestamp};
use serde_json::json;

use super::Identity;
use super::request::{MAX_PAGE, caller_org, own_child, parent_org};
use crate::credential_key::{OpenError, Sealed};
use crate::store::credentials::{self as store, CredentialRow, SealedValue};
use paddock_proto::authz::v1::GetEffectivePolicyRequest;
use paddock_proto::identity::v1::PrincipalKind;
use paddock_shared::page::{Page, Query};

/// Largest value a credential may hold.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
const COLLECTION: &str = "credentials";
const MAX_DESCRIPTION: usize = 2000;

fn credential(row: CredentialRow) -> Credential {
    Credential {
        name: child_name(&row.org_id, COLLECTION, &row.credential_id),
        kind: CredentialKind::from_str_name(&row.kind).unwrap_or(CredentialKind::Unspecified)
            as i32,
        description: row.description,
        size_bytes: row.size_bytes,
        created_by: row.created_by,
        create_time: Some(timestamp(row.create_time)),
        rotate_time: opt_timestamp(row.rotate_time),
    }
}

fn kind_name(kind: CredentialKind) -> &'static str {
    match kind {
        CredentialKind::SshKey => "ssh-key",
        CredentialKind::GitConfig => "git-config",
        CredentialKind::ApiToken => "api-token",
        CredentialKind::File | CredentialKind::Unspecified => "file",
    }
}

/// Sizes only: the value itself never goes into a message.
fn check_value(value: &[u8]) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid("value is required (at most 64 KiB)"));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(Error::invalid(format!(
            "value is {}; a credential holds at most 64 KiB",
            paddock_shared::units::human_bytes(value.len() as u64)
        )));
    }
    Ok(())
}

pub(super) async fn create(
    identity: &Identity,
    caller: &Principal,
    req: CreateCredentialRequest,
) -> Result<CreateCredentialResponse> {
    let org = parent_org(caller, &req.parent)?.to_owned();
    validate_id("credential", &req.credential_id)?;
    let spec = req.credential.unwrap_or_default();
    let kind = match CredentialKind::try_from(spec.kind) {
        // Unspecified: the value is just a file.
        Ok(CredentialKind::Unspecified) => CredentialKind::File,
        Ok(kind) => kind,
        Err(_) => {
            return Err(Error::invalid(format!(
                "unknown credential kind {}: use SSH_KEY, GIT_CONFIG, API_TOKEN or FILE",
                spec.kind
            )));
        }
    };
    validate_text("description", &spec.description, MAX_DESCRIPTION)?;
    check_value(&req.value)?;
    let name = child_name(&org, COLLECTION, &req.credential_id);
    let sealed = identity
        .credential_key
        .seal(&org, &req.credential_id, &req.value);
    let size = req.value.len() as i64;
    let row = CredentialRow {
        org_id: org,
        credential_id: req.credential_id,
        kind: kind.as_str_name().to_owned(),
        description: spec.description,
        size_bytes: size,
        created_by: caller.name.clone(),
        create_time: now_micros(),
        rotate_time: None,
    };
    let hex = paddock_shared::hex::encode(&sealed.bytes);
    let mut tx = identity.db.begin_write().await?;
    store::insert(
        &mut *tx,
        &row,
        SealedValue {
            key_fingerprint: &sealed.key_fingerprint,
            hex: &hex,
        },
    )
    .await
    .map_err(|e| Error::exists_or(e, &name))?;
    let details = json!({"kind": kind_name(kind), "size_bytes": size});
    identity
        .outbox
        .commit(
            tx,
            identity
                .outbox
                .success(Some(caller), "credential.create", &name, details),
        )
        .await?;
    Ok(CreateCredentialResponse {
        credential: Some(credential(row)),
    })
}

/// For an agent, the credential ids its policy lists (credentials.use
/// covers only those); `None` for members, who see every credential.
async fn usable_by(identity: &Identity, caller: &Principal) -> Result<Option<Vec<String>>> {
    if caller.kind != PrincipalKind::Agent as i32 {
        return Ok(None);
    }
    let effective = identity
        .policy
        .clone()
        .get_effective_policy(GetEffectivePolicyRequest {
            agent: caller.name.clone(),
        })
        .await
        .map_err(|s| Error::from_status(paddock_shared::auth::dependency_status("authz", s)))?
        .into_inner();
    let listed = effective.policy.map(|p| p.credentials).unwrap_or_default();
    Ok(Some(
        listed
            .iter()
            .map(|c| c.rsplit('/').next().unwrap_or(c).to_owned())
            .collect(),
    ))
}

pub(super) async fn list(
    identity: &Identity,
    caller: &Principal,
    req: ListCredentialsRequest,
) -> Result<ListCredentialsResponse> {
    let usable = usable_by(identity, caller).await?;
    let org = parent_org(caller, &req.parent)?;
    let query = Query::new("ListCredentials", org);
    let page = Page::read(req.page_size, &req.page_token, MAX_PAGE, &query)?;
    let mut rows = store::list(&identity.db.pool, org, page.start_after(), page.limit()).await?;
    let next_page_token = page.finish(&mut rows, &query, |r| r.credential_id.clone());
    Ok(ListCredentialsResponse {
        credentials: rows
            .into_iter()
            .filter(|r| {
                usable
                    .as_ref()
                    .is_none_or(|ids| ids.contains(&r.credential_id))
            })
            .map(credential)
            .collect(),
        next_page_token,
    })
}

pub(super) async fn get(
    identity: &Identity,
    caller: &Principal,
    req: GetCredentialRequest,
) -> Result<GetCredentialResponse> {
    let id = own_child(caller, &req.name, COLLECTION)?;
    let row = store::get(&identity.db.pool, caller_org(caller)?, id)
        .await?
        .ok_or_else(|| Error::not_found(names::truncate(&req.name)))?;
    if let Some(ids) = usable_by(identity, caller).await?
        && !ids.contains(&row.credential_id)
    {
        return Err(Error::PermissionDenied(format!(
            "credential {} is not in the agent policy's credentials (credentials.use covers only those)",
            names::truncate(&req.name)
        )));
    }
    Ok(GetCredentialResponse {
        credential: Some(credential(row)),
    })
}

pub(super) async fn delete(
    identity: &Identity,
    caller: &Principal,
    req: DeleteCredentialRequest,
) -> Result<DeleteCredentialResponse> {
    let id = own_child(caller, &req.name, COLLECTION)?;
    let mut tx = identity.db.begin_write().await?;
    if !store::delete(&mut *tx, caller_org(caller)?, id).await? {
        return Err(Error::not_found(names::truncate(&req.name)));
    }
    identity
        .outbox
        .commit(
            tx,
            identity
                .outbox
                .success(Some(caller), "credential.delete", &req.name, json!({})),
        )
        .await?;
    Ok(DeleteCredentialResponse {})
}

/// Replaces a credential's value: sealed under the current key, in one
/// statement, audited with the new size only.
pub(super) async fn rotate(
    identity: &Identity,
    caller: &Principal,
    req: RotateCredentialRequest,
) -> Result<RotateCredentialResponse> {
    let id = own_child(caller, &req.name, COLLECTION)?.to_owned();
    let org = caller_org(caller)?.to_owned();
    check_value(&req.value)?;
    let sealed = identity.credential_key.seal(&org, &id, &req.value);
    let size = req.value.len() as i64;
    let now = now_micros();
    let hex = paddock_shared::hex::encode(&sealed.bytes);
    let mut tx = identity.db.begin_write().await?;
    let stored = SealedValue {
        key_fingerprint: &sealed.key_fingerprint,
        hex: &hex,
    };
    let row = store::rotate(&mut *tx, &org, &id, size, stored, now)
        .await?
        .ok_or_else(|| Error::not_found(names::truncate(&req.name)))?;
    let details = json!({"size_bytes": size});
    identity
        .outbox
        .commit(
            tx,
            identity
                .outbox
                .success(Some(caller), "credential.rotate", &req.name, details),
        )
        .await?;
    Ok(RotateCredentialResponse {
        credential: Some(credential(row)),
    })
}

/// For services only (the admission layer admits nobody else). The caller
/// has checked `credentials.use` and the agent's policy; identity checks
/// that the sandbox is in the credential's organization, records the reveal
/// in the same transaction as the read, and returns the value only once the
/// record is committed.
pub(super) async fn reveal(
    identity: &Identity,
    caller: &Principal,
    req: RevealCredentialRequest,
) -> Result<RevealCredentialResponse> {
    let (org, id) = parse_child(&req.name, COLLECTION)?;
    if req.sandbox.is_empty() {
        return Err(Error::invalid(
            "sandbox is required: the sandbox the value is revealed for (organizations/{organization}/sandboxes/{sandbox})",
        ));
    }
    let (sandbox_org, _) = parse_child(&req.sandbox, "sandboxes")?;
    if sandbox_org != org {
        return Err(Error::invalid(
            "the sandbox and the credential are in different organizations",
        ));
    }
    let event = identity.outbox.success(
        Some(caller),
        "credential.reveal",
        &req.name,
        json!({"sandbox": req.sandbox}),
    );
    let mut tx = identity.db.begin_write().await?;
    // The record is written first: SQLite then takes the write lock up
    // front instead of failing a read-to-write upgrade when reveals race.
    // Any failure below rolls it back with the read.
    outbox::record(&mut tx, &event).await?;
    let row = store::get_sealed(&mut *tx, org, id)
        .await?
        .ok_or_else(|| Error::not_found(names::truncate(&req.name)))?;
    let sealed = Sealed {
        key_fingerprint: row.key_fingerprint,
        bytes: paddock_shared::hex::decode(&row.sealed_value).unwrap_or_default(),
    };
    let value = identity
        .credential_key
        .open(org, id, &sealed)
        .map_err(|e| match e {
            OpenError::WrongKey => {
                tracing::error!(
                    credential = %req.name,
                    sealed_with = %sealed.key_fingerprint,
                    current = identity.credential_key.fingerprint(),
                    "credential sealed with another credential key"
                );
                Error::FailedPrecondition(format!(
                    "{} was sealed with a different credential key than the one identity runs with; \
                     start identity with the original key (--credential-key / PADDOCK_CREDENTIAL_KEY or DATA_DIR/credential-key)",
                    req.name
                ))
            }
            OpenError::Corrupt => Error::Internal(format!(
                "stored credential {} does not open: its ciphertext was altered or moved from another row",
                req.name
            )),
        })?;
    tx.commit().await?;
    identity.outbox.wake();
    Ok(RevealCredentialResponse {
        credential: Some(credential(row.credential)),
        value,
    })
}
