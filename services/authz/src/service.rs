//! The PolicyService handlers. The admission layer has already checked the
//! RPC's declared permission in the caller's organization (or, for
//! `GetEffectivePolicy`, that the caller is a service); handlers keep every
//! read and write inside the caller's organization (another organization is
//! NOT_FOUND), validate, and commit each change with its audit event.

use std::collections::BTreeSet;

use paddock_proto::authz::v1::policy_service_server::PolicyService;
use paddock_proto::authz::v1::{
    AgentPolicy, GetAgentPolicyRequest, GetAgentPolicyResponse, GetEffectivePolicyRequest,
    GetEffectivePolicyResponse, GetSecuritySettingsRequest, GetSecuritySettingsResponse,
    SecuritySettings, UpdateAgentPolicyRequest, UpdateAgentPolicyResponse,
    UpdateSecuritySettingsRequest, UpdateSecuritySettingsResponse,
};
use paddock_proto::identity::v1::Principal;
use paddock_shared::auth;
use paddock_shared::db::Database;
use paddock_shared::error::{Error, Result};
use paddock_shared::outbox::Outbox;
use paddock_shared::request::{caller_org, own_org};
use paddock_shared::time::now_micros;
use serde_json::json;
use tonic::{Request, Response, Status};

use crate::store::{self, Stamp};
use paddock_policy::{self as policy, json as shape};

/// How often an update re-reads and retries after losing a race.
const ATTEMPTS: usize = 8;

pub struct Policies {
    pub db: Database,
    /// Where changes record their audit events.
    pub outbox: Outbox,
    /// Says whether an agent exists before its policy is written.
    pub identity: paddock_shared::auth::IdentityClient,
}

fn mask(mask: Option<&prost_types::FieldMask>) -> Vec<String> {
    mask.map(|m| m.paths.clone()).unwrap_or_default()
}

fn updated_by(caller: &Principal) -> &str {
    if caller.name.is_empty() {
        &caller.id
    } else {
        &caller.name
    }
}

fn lost_race(name: &str) -> Status {
    Status::aborted(format!(
        "{name} was changed concurrently too many times; retry the update"
    ))
}

impl Policies {
    /// The agent's stored policy (or the default one), named.
    async fn policy_of(&self, org: &str, agent: &str) -> Result<(AgentPolicy, Option<i64>)> {
        let (mut p, revision) = match store::agent_policy(&self.db.pool, org, agent).await? {
            Some(s) => (s.value, Some(s.revision)),
            None => (policy::default_policy(org, agent), None),
        };
        p.name = policy::policy_name(org, agent);
        Ok((p, revision))
    }

    /// The organization's stored settings (or the default ones), named,
    /// not yet filled.
    async fn settings_of(&self, org: &str) -> Result<(SecuritySettings, Option<i64>)> {
        let (mut s, revision) = match store::security_settings(&self.db.pool, org).await? {
            Some(s) => (s.value, Some(s.revision)),
            None => (policy::default_settings(org), None),
        };
        s.name = policy::settings_name(org);
        Ok((s, revision))
    }

    async fn update_policy(
        &self,
        caller: &Principal,
        input: &AgentPolicy,
        paths: &[String],
    ) -> Result<AgentPolicy, Status> {
        let (org, agent) = policy::parse_policy_name(&input.name)?;
        let org = own_org(caller, org, &input.name)?;
        let leaves = policy::mask_leaves(paths, policy::POLICY_LEAVES)?;
        let name = policy::policy_name(org, agent);
        self.require_agent(org, agent).await?;
        for _ in 0..ATTEMPTS {
            let (current, revision) = self.policy_of(org, agent).await?;
            let merged = policy::merge_policy(&current, input, &leaves);
            let mut merged = policy::validate_policy(org, &merged)?;
            let (settings, _) = self.settings_of(org).await?;
            policy::check_within(&merged, &policy::fill_settings(&settings), &leaves)?;
            let stamp = Stamp {
                by: updated_by(caller),
                at: now_micros(),
            };
            let details = json!({
                "update_mask": leaves_or_all(paths, &leaves),
                "changes": shape::diff(&shape::agent_policy(&current), &shape::agent_policy(&merged)),
            });
            let mut tx = self.db.begin_write().await.map_err(Error::from)?;
            if !store::put_agent_policy(&mut tx, org, agent, &merged, revision, &stamp).await? {
                continue;
            }
            let event = self
                .outbox
                .success(Some(caller), "policy.update", &name, details);
            self.outbox.commit(tx, event).await.map_err(Error::from)?;
            merged.name = name;
            merged.update_time = Some(paddock_shared::time::timestamp(stamp.at));
            merged.updated_by = stamp.by.to_owned();
            return Ok(merged);
        }
        Err(lost_race(&name))
    }

    /// A policy is written only for an agent that exists: a typo is
    /// NOT_FOUND, not a policy nobody will ever run under. (A policy left
    /// behind by a deleted agent may still be read.)
    async fn require_agent(&self, org: &str, agent: &str) -> Result<(), Status> {
        let full = paddock_shared::names::child_name(org, "agents", agent);
        let found = self
            .identity
            .clone()
            .lookup_resources(paddock_proto::identity::v1::LookupResourcesRequest {
                names: vec![full.clone()],
                principal_ids: Vec::new(),
            })
            .await
            .map_err(|s| paddock_shared::auth::dependency_status("identity", s))?
            .into_inner()
            .found;
        if found.iter().any(|f| f.name == full) {
            Ok(())
        } else {
            Err(Status::not_found(format!("agent {full} not found")))
        }
    }

    async fn update_settings(
        &self,
        caller: &Principal,
        input: &SecuritySettings,
        paths: &[String],
    ) -> Result<SecuritySettings, Status> {
        let org = match policy::parse_settings_name(&input.name)? {
            Some(org) => own_org(caller, org, &input.name)?,
            None => caller_org(caller)?,
        };
        let leaves = policy::mask_leaves(paths, policy::SETTINGS_LEAVES)?;
        let name = policy::settings_name(org);
        for _ in 0..ATTEMPTS {
            let (current, revision) = self.settings_of(org).await?;
            let merged = policy::merge_settings(&current, input, &leaves);
            let mut merged = policy::validate_settings(&merged)?;
            let stamp = Stamp {
                by: updated_by(caller),
                at: now_micros(),
            };
            let details = json!({
                "update_mask": leaves_or_all(paths, &leaves),
                "changes": shape::diff(
                    &shape::security_settings(&policy::fill_settings(&current)),
                    &shape::security_settings(&policy::fill_settings(&merged)),
                ),
            });
            let mut tx = self.db.begin_write().await.map_err(Error::from)?;
            if !store::put_security_settings(&mut tx, org, &merged, revision, &stamp).await? {
                continue;
            }
            let event =
                self.outbox
                    .success(Some(caller), "security_settings.update", &name, details);
            self.outbox.commit(tx, event).await.map_err(Error::from)?;
            merged.name = name;
            merged.update_time = Some(paddock_shared::time::timestamp(stamp.at));
            merged.updated_by = stamp.by.to_owned();
            return Ok(policy::fill_settings(&merged));
        }
        Err(lost_race(&name))
    }
}

/// The mask as sent, or every leaf for a replace.
fn leaves_or_all(paths: &[String], leaves: &BTreeSet<&str>) -> Vec<String> {
    if paths.is_empty() {
        leaves.iter().map(|l| (*l).to_owned()).collect()
    } else {
        paths.to_vec()
    }
}

#[tonic::async_trait]
impl PolicyService for Policies {
    async fn get_agent_policy(
        &self,
        request: Request<GetAgentPolicyRequest>,
    ) -> Result<Response<GetAgentPolicyResponse>, Status> {
        let caller = auth::caller(&request)?;
        let name = &request.get_ref().name;
        let (org, agent) = policy::parse_policy_name(name)?;
        let org = own_org(caller, org, name)?;
        let (policy, _) = self.policy_of(org, agent).await?;
        Ok(Response::new(GetAgentPolicyResponse {
            policy: Some(policy),
        }))
    }

    async fn update_agent_policy(
        &self,
        request: Request<UpdateAgentPolicyRequest>,
    ) -> Result<Response<UpdateAgentPolicyResponse>, Status> {
        let caller = auth::caller(&request)?.clone();
        let req = request.into_inner();
        let input = req
            .policy
            .ok_or_else(|| Status::invalid_argument("policy is required"))?;
        let policy = self
            .update_policy(&caller, &input, &mask(req.update_mask.as_ref()))
            .await?;
        Ok(Response::new(UpdateAgentPolicyResponse {
            policy: Some(policy),
        }))
    }

    async fn get_security_settings(
        &self,
        request: Request<GetSecuritySettingsRequest>,
    ) -> Result<Response<GetSecuritySettingsResponse>, Status> {
        let caller = auth::caller(&request)?;
        let name = &request.get_ref().name;
        let org = match policy::parse_settings_name(name)? {
            Some(org) => own_org(caller, org, name)?,
            None => caller_org(caller)?,
        };
        let (settings, _) = self.settings_of(org).await?;
        Ok(Response::new(GetSecuritySettingsResponse {
            settings: Some(policy::fill_settings(&settings)),
        }))
    }

    async fn update_security_settings(
        &self,
        request: Request<UpdateSecuritySettingsRequest>,
    ) -> Result<Response<UpdateSecuritySettingsResponse>, Status> {
        let caller = auth::caller(&request)?.clone();
        let req = request.into_inner();
        let input = req
            .settings
            .ok_or_else(|| Status::invalid_argument("settings is required"))?;
        let settings = self
            .update_settings(&caller, &input, &mask(req.update_mask.as_ref()))
            .await?;
        Ok(Response::new(UpdateSecuritySettingsResponse {
            settings: Some(settings),
        }))
    }

    async fn get_effective_policy(
        &self,
        request: Request<GetEffectivePolicyRequest>,
    ) -> Result<Response<GetEffectivePolicyResponse>, Status> {
        // Services only (declared internal); they act for any organization.
        let agent_name = &request.get_ref().agent;
        let (org, agent) = policy::parse_policy_name(agent_name)?;
        let (policy, _) = self.policy_of(org, agent).await?;
        let (settings, _) = self.settings_of(org).await?;
        let settings = policy::fill_settings(&settings);
        Ok(Response::new(GetEffectivePolicyResponse {
            policy: Some(policy::effective(&policy, &settings)),
            settings: Some(settings),
        }))
    }
}
