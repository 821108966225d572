//! Invites: single-use, expiring codes (`pdi_…`) that make a new member.
//! Only the code's hash is stored and no RPC returns the code after
//! `CreateInvite`. An invite lives only as long as its inviter could still
//! make it: removing the inviter, or demoting them below the invited role,
//! revokes it, and `AcceptInvite` checks the inviter again.

use paddock_proto::audit::v1::Actor;
use paddock_proto::identity::v1::*;
use paddock_shared::error::{Error, Result};
use paddock_shared::names::{self, child_name, org_name, parse_child, validate_text};
use paddock_shared::rbac::Role;
use paddock_shared::time::{self, now_micros, opt_timestamp, timestamp};
use paddock_shared::token::{self, TokenKind};
use serde_json::json;

use super::{
    DEFAULT_INVITE_TTL, Identity, MAX_INVITE_TTL, MEMBER_ROLES, NewKey, api_key, audited,
    caller_org, check_grantable, member, new_principal_id, next_page, own_child, page, parent_org,
    parse_role,
};

const COLLECTION: &str = "invites";

/// id, org_id, email, role, created_by, create_time, expire_time,
/// accept_time, revoke_time: everything but the code's hash.
type InviteRow = (
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
);
const COLUMNS: &str =
    "id, org_id, email, role, created_by, create_time, expire_time, accept_time, revoke_time";

fn invite(row: InviteRow, now: i64) -> Invite {
    let (id, org, email, role, inviter, create, expire, accepted, revoked) = row;
    let state = if revoked.is_some() {
        InviteState::Revoked
    } else if accepted.is_some() {
        InviteState::Accepted
    } else if expire <= now {
        InviteState::Expired
    } else {
        InviteState::Pending
    };
    Invite {
        name: child_name(&org, COLLECTION, &id),
        email,
        role,
        inviter,
        state: state as i32,
        create_time: Some(timestamp(create)),
        expire_time: Some(timestamp(expire)),
        accept_time: opt_timestamp(accepted),
        revoke_time: opt_timestamp(revoked),
    }
}

/// Whether `inviter`'s role may still grant `invited`: both built-in roles,
/// the invited one within the inviter's.
fn still_grants(inviter: &str, invited: &str) -> bool {
    match (Role::parse(inviter), Role::parse(invited)) {
        (Some(inviter), Some(invited)) => invited.permissions().is_subset_of(inviter.permissions()),
        _ => false,
    }
}

/// The current role of the member or agent named `inviter` in `org`; None
/// when it no longer exists.
async fn inviter_role(
    conn: &mut sqlx::AnyConnection,
    org: &str,
    inviter: &str,
) -> Result<Option<String>> {
    let row: Option<(String,)> = if let Ok((o, id)) = parse_child(inviter, "members") {
        sqlx::query_as("SELECT role FROM members WHERE org_id = $1 AND id = $2")
            .bind(o)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
    } else if let Ok((o, id)) = parse_child(inviter, "agents") {
        sqlx::query_as("SELECT role FROM agents WHERE org_id = $1 AND agent_id = $2")
            .bind(o)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
    } else {
        None
    };
    Ok(row
        .filter(|_| names::organization_of(inviter) == Some(org))
        .map(|(r,)| r))
}

/// Revokes the pending invites made by `inviter` (a member's or agent's
/// resource name) that its new role no longer covers; `None`: it was
/// removed, so all of them. Runs in the caller's transaction, so the
/// removal or demotion and the revocation commit together. Returns the
/// revoked invites' names, for the audit event.
pub(super) async fn revoke_by_inviter(
    tx: &mut sqlx::AnyConnection,
    org: &str,
    inviter: &str,
    new_role: Option<&str>,
) -> Result<Vec<String>> {
    let now = now_micros();
    let pending: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, role FROM invites WHERE org_id = $1 AND created_by = $2 \
         AND accept_time IS NULL AND revoke_time IS NULL AND expire_time > $3",
    )
    .bind(org)
    .bind(inviter)
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    let mut revoked = Vec::new();
    for (id, role) in pending {
        if new_role.is_some_and(|r| still_grants(r, &role)) {
            continue;
        }
        sqlx::query("UPDATE invites SET revoke_time = $1 WHERE id = $2 AND revoke_time IS NULL")
            .bind(now)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        revoked.push(child_name(org, COLLECTION, &id));
    }
    Ok(revoked)
}

pub(super) async fn create(
    identity: &Identity,
    caller: &Principal,
    req: CreateInviteRequest,
) -> Result<CreateInviteResponse> {
    let org = parent_org(caller, &req.parent)?.to_owned();
    let email = names::normalize_email(&req.email)?;
    let role = parse_role(&req.role, &MEMBER_ROLES)?;
    check_grantable(caller, role, &MEMBER_ROLES)?;
    let ttl = match &req.ttl {
        None => DEFAULT_INVITE_TTL,
        Some(d) => time::duration(d)
            .filter(|d| !d.is_zero() && *d <= MAX_INVITE_TTL)
            .ok_or_else(|| Error::invalid("ttl must be between 1s and 30 days"))?,
    };
    let exists: Option<(String,)> =
        sqlx::query_as("SELECT id FROM members WHERE org_id = $1 AND email = $2")
            .bind(&org)
            .bind(&email)
            .fetch_optional(&identity.db.pool)
            .await?;
    if exists.is_some() {
        return Err(Error::AlreadyExists(format!("{email} is already a member")));
    }
    let (id, code) = token::mint(TokenKind::Invite);
    let now = now_micros();
    let expire = now.saturating_add(ttl.as_micros() as i64);
    let mut tx = identity.db.begin_write().await?;
    sqlx::query("INSERT INTO invites (id, org_id, code_hash, email, role, created_by, create_time, expire_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
        .bind(&id)
        .bind(&org)
        .bind(token::hash(&code))
        .bind(&email)
        .bind(role.as_str())
        .bind(&caller.name)
        .bind(now)
        .bind(expire)
        .execute(&mut *tx)
        .await?;
    // The code is the credential: only its id is recorded.
    let details =
        json!({"email": email, "role": role.as_str(), "invite_id": id, "expire_time_us": expire});
    identity
        .commit_audited(
            tx,
            audited(Some(caller), "member.invite", &org_name(&org), details),
        )
        .await?;
    Ok(CreateInviteResponse {
        code,
        expire_time: Some(timestamp(expire)),
        email,
        role: role.as_str().to_owned(),
        name: child_name(&org, COLLECTION, &id),
    })
}

/// The refusal of an invite that was revoked, or whose inviter can no
/// longer make it: the same words either way.
fn revoked() -> Error {
    Error::FailedPrecondition("invite code has been revoked".into())
}

pub(super) async fn accept(
    identity: &Identity,
    req: AcceptInviteRequest,
) -> Result<AcceptInviteResponse> {
    let parsed = token::parse(req.code.trim())
        .map_err(|e| Error::invalid(format!("malformed invite code: {e}")))?;
    if parsed.kind != TokenKind::Invite {
        return Err(Error::invalid("not an invite code (expected pdi_…)"));
    }
    let key_name = if req.key_display_name.is_empty() {
        "default".to_owned()
    } else {
        req.key_display_name
    };
    validate_text("key_display_name", &key_name, 200)?;
    type Row = (
        String,
        String,
        String,
        String,
        String,
        i64,
        Option<i64>,
        Option<i64>,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT org_id, code_hash, email, role, created_by, expire_time, accept_time, revoke_time FROM invites WHERE id = $1",
    )
    .bind(parsed.id)
    .fetch_optional(&identity.db.pool)
    .await?;
    let Some((org, _, email, role, inviter, expire, accepted, revoke_time)) =
        row.filter(|r| parsed.matches(&r.1))
    else {
        return Err(Error::NotFound("invite code not found".into()));
    };
    if revoke_time.is_some() {
        return Err(revoked());
    }
    if accepted.is_some() {
        return Err(Error::FailedPrecondition(
            "invite code has already been used".into(),
        ));
    }
    if expire <= now_micros() {
        return Err(Error::FailedPrecondition("invite code has expired".into()));
    }
    // The transaction writes first (SQLite then waits for the write lock
    // instead of failing a read-to-write upgrade), and only one UPDATE
    // sees accept_time NULL: single use even under races. A revocation
    // committed first leaves nothing to claim.
    let now = now_micros();
    let mut tx = identity.db.begin_write().await?;
    let claimed = sqlx::query(
        "UPDATE invites SET accept_time = $1 WHERE id = $2 AND accept_time IS NULL AND revoke_time IS NULL AND expire_time > $1",
    )
    .bind(now)
    .bind(parsed.id)
    .execute(&mut *tx)
    .await?;
    if claimed.rows_affected() != 1 {
        return Err(Error::FailedPrecondition(
            "invite code has already been used".into(),
        ));
    }
    // Checked again here, so an invite made before revocation on removal
    // existed (or by an inviter demoted since) cannot outlive its inviter.
    let current = inviter_role(&mut tx, &org, &inviter).await?;
    if !current.is_some_and(|r| still_grants(&r, &role)) {
        return Err(revoked());
    }
    let settings: Option<(i64,)> =
        sqlx::query_as("SELECT max_key_lifetime_secs FROM organizations WHERE id = $1")
            .bind(&org)
            .fetch_optional(&mut *tx)
            .await?;
    let (max_secs,) = settings.ok_or_else(|| Error::not_found(org_name(&org)))?;
    let member_id = new_principal_id('m');
    sqlx::query(
        "INSERT INTO members (id, org_id, email, role, create_time) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&member_id)
    .bind(&org)
    .bind(&email)
    .bind(&role)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let expire = Some(now.saturating_add(max_secs.max(0).saturating_mul(1_000_000)));
    let name = child_name(&org, "members", &member_id);
    let (key, secret) = Identity::insert_key(
        &mut tx,
        NewKey {
            org: &org,
            owner_id: &member_id,
            display_name: &key_name,
            role: "",
            scope: &[],
            expire,
            created_by: &name,
            sandbox: None,
        },
    )
    .await?;
    let mut event = audited(
        None,
        "member.join",
        &name,
        json!({"role": role, "invite_id": parsed.id, "api_key": key.0}),
    );
    event.actor = Some(Actor {
        principal_id: member_id.clone(),
        kind: PrincipalKind::Member.as_str_name().to_owned(),
        display_name: email.clone(),
        key_id: String::new(),
    });
    identity.commit_audited(tx, event).await?;
    Ok(AcceptInviteResponse {
        member: Some(member((member_id, org, email, role, now))),
        api_key: Some(api_key(key, name)),
        api_key_secret: secret,
    })
}

pub(super) async fn list(
    identity: &Identity,
    caller: &Principal,
    req: ListInvitesRequest,
) -> Result<ListInvitesResponse> {
    let org = parent_org(caller, &req.parent)?;
    let page = page(req.page_size, &req.page_token)?;
    let now = now_micros();
    let mut rows: Vec<InviteRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM invites WHERE org_id = $1 AND id > $2 \
         AND ($4 = 1 OR (accept_time IS NULL AND revoke_time IS NULL AND expire_time > $5)) \
         ORDER BY id LIMIT $3"
    )))
    .bind(org)
    .bind(&page.after)
    .bind(page.size + 1)
    .bind(i64::from(req.show_inactive))
    .bind(now)
    .fetch_all(&identity.db.pool)
    .await?;
    let next_page_token = next_page(&mut rows, &page, |r| r.0.clone());
    Ok(ListInvitesResponse {
        invites: rows.into_iter().map(|r| invite(r, now)).collect(),
        next_page_token,
    })
}

pub(super) async fn revoke(
    identity: &Identity,
    caller: &Principal,
    req: RevokeInviteRequest,
) -> Result<RevokeInviteResponse> {
    let id = own_child(caller, &req.name, COLLECTION)?;
    let org = caller_org(caller)?;
    let row: Option<InviteRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM invites WHERE id = $1 AND org_id = $2"
    )))
    .bind(id)
    .bind(org)
    .fetch_optional(&identity.db.pool)
    .await?;
    let mut row = row.ok_or_else(|| Error::not_found(names::truncate(&req.name)))?;
    if row.7.is_some() {
        return Err(Error::FailedPrecondition(format!(
            "{} has already been accepted; remove the member instead",
            names::truncate(&req.name)
        )));
    }
    let now = now_micros();
    if row.8.is_none() {
        let mut tx = identity.db.begin_write().await?;
        let done = sqlx::query(
            "UPDATE invites SET revoke_time = $1 WHERE id = $2 AND accept_time IS NULL AND revoke_time IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            // Accepted or revoked in between.
            return Err(Error::FailedPrecondition(format!(
                "{} is no longer pending",
                names::truncate(&req.name)
            )));
        }
        let details = json!({"email": row.2, "role": row.3, "inviter": row.4});
        identity
            .commit_audited(
                tx,
                audited(Some(caller), "member.invite_revoke", &req.name, details),
            )
            .await?;
        row.8 = Some(now);
    }
    Ok(RevokeInviteResponse {
        invite: Some(invite(row, now)),
    })
}
