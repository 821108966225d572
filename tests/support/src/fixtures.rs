//! Fixtures for API tests: an organization with one principal of each
//! role, members through invites, keys.

use paddock_proto::identity::v1::*;
use tonic::{Code, Status};

use crate::Stack;

/// An organization with one principal of each role.
pub struct Org {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub owner_member: String,
    pub admin: String,
    pub developer: String,
    pub developer_member: String,
    pub agent: String,
}

impl Org {
    pub fn token(&self, role: &str) -> &str {
        match role {
            "owner" => &self.owner,
            "admin" => &self.admin,
            "developer" => &self.developer,
            _ => &self.agent,
        }
    }
}

pub fn fresh_id(prefix: &str) -> String {
    format!("{prefix}-{}", rand_suffix())
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{n}x{}", std::process::id())
}

pub fn code<T>(r: Result<T, Status>) -> Code {
    r.map(|_| Code::Ok).unwrap_or_else(|s| s.code())
}

/// Invites `email` with `role` (by `owner`) and accepts; returns the member
/// and its first key.
pub async fn add_member(
    stack: &Stack,
    owner: &str,
    org: &str,
    email: &str,
    role: &str,
) -> (Member, String) {
    let code = stack
        .identity(owner)
        .create_invite(CreateInviteRequest {
            parent: format!("organizations/{org}"),
            email: email.into(),
            role: role.into(),
            ttl: None,
        })
        .await
        .expect("invite")
        .into_inner()
        .code;
    let accepted = stack
        .anonymous_identity()
        .accept_invite(AcceptInviteRequest {
            code,
            key_display_name: String::new(),
        })
        .await
        .expect("accept")
        .into_inner();
    (accepted.member.expect("member"), accepted.api_key_secret)
}

pub async fn mint_key(
    stack: &Stack,
    token: &str,
    org: &str,
    owner: &str,
    role: &str,
    scope: &[&str],
) -> Result<CreateApiKeyResponse, Status> {
    stack
        .identity(token)
        .create_api_key(CreateApiKeyRequest {
            parent: format!("organizations/{org}"),
            api_key: Some(ApiKey {
                display_name: "test".into(),
                owner: owner.into(),
                role: role.into(),
                scope: scope.iter().map(|s| (*s).to_owned()).collect(),
                ..Default::default()
            }),
            ttl: None,
            never_expires: false,
        })
        .await
        .map(|r| r.into_inner())
}

pub async fn setup_org(stack: &Stack, id: &str) -> Org {
    let created = stack.create_org(id, &format!("owner@{id}.test")).await;
    let owner = created.owner_key_secret;
    let owner_member = created.owner.expect("owner").name;
    let (_, admin) = add_member(stack, &owner, id, &format!("admin@{id}.test"), "admin").await;
    let (dev, developer) =
        add_member(stack, &owner, id, &format!("dev@{id}.test"), "developer").await;
    stack
        .identity(&owner)
        .create_agent(CreateAgentRequest {
            parent: format!("organizations/{id}"),
            agent_id: "bot".into(),
            agent: None,
        })
        .await
        .expect("agent");
    let agent = mint_key(
        stack,
        &owner,
        id,
        &format!("organizations/{id}/agents/bot"),
        "",
        &[],
    )
    .await
    .expect("agent key")
    .secret;
    stack
        .identity(&owner)
        .create_project(CreateProjectRequest {
            parent: format!("organizations/{id}"),
            project_id: "web".into(),
            project: None,
        })
        .await
        .expect("project");
    Org {
        id: id.into(),
        name: format!("organizations/{id}"),
        owner,
        owner_member,
        admin,
        developer,
        developer_member: dev.name,
        agent,
    }
}
