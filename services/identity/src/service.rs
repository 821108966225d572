//! The IdentityService handlers, one module per resource over the typed
//! store in `crate::store`. The admission layer has already checked the
//! RPC's declared permission in the caller's organization; handlers
//! validate input, keep resources inside the caller's organization
//! (anything else is NOT_FOUND), check ownership and escalation, then work.
//! Handlers return `Result<T>`; `Status` appears only in the trait impl
//! below, which delegates.

mod agents;
mod credentials;
mod invalidations;
mod invites;
mod key_rotation;
mod keys;
mod lookup;
mod members;
mod organizations;
mod principals;
mod projects;
mod request;
mod roles;
mod session_tokens;

use std::sync::Arc;

use paddock_proto::identity::v1::identity_service_server::IdentityService;
use paddock_proto::identity::v1::*;
use paddock_shared::auth::{self, Admission, Authenticator, Invalidation, PrincipalCache};
use paddock_shared::db::Database;
use paddock_shared::error::Result;
use rand::Rng;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

pub struct Identity {
    pub db: Database,
    pub admission: Admission,
    pub cache: Arc<PrincipalCache>,
    pub authn: Arc<dyn Authenticator>,
    pub invalidations: broadcast::Sender<Invalidation>,
    /// Where handlers record their audit events.
    pub outbox: paddock_shared::outbox::Outbox,
    /// Turns true when the server shuts down; ends the watch streams.
    pub closing: tokio::sync::watch::Receiver<bool>,
    /// Seals and opens stored credentials.
    pub credential_key: Arc<crate::credential_key::CredentialKey>,
    /// Agent policies (which credentials an agent may use), as a service.
    pub policy: paddock_shared::auth::PolicyClient,
}

/// A new principal id: `m…` for members, `a…` for agents.
fn new_principal_id(prefix: char) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    std::iter::once(prefix)
        .chain((0..15).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char))
        .collect()
}

impl Identity {
    /// Drops what the change makes stale here and tells every watcher.
    fn publish(&self, change: Invalidation) {
        self.cache.invalidate(&change);
        let _ = self.invalidations.send(change);
    }
}

/// The authenticated caller (the admission layer put it on the request).
fn caller<T>(req: &Request<T>) -> Result<Principal, Status> {
    auth::caller(req).cloned()
}

/// A handler's answer at the edge: the error table turns an error into
/// its code and message.
fn reply<T>(result: Result<T>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl IdentityService for Identity {
    async fn create_organization(
        &self,
        request: Request<CreateOrganizationRequest>,
    ) -> Result<Response<CreateOrganizationResponse>, Status> {
        reply(organizations::create(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn get_organization(
        &self,
        request: Request<GetOrganizationRequest>,
    ) -> Result<Response<GetOrganizationResponse>, Status> {
        reply(organizations::get(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn update_organization(
        &self,
        request: Request<UpdateOrganizationRequest>,
    ) -> Result<Response<UpdateOrganizationResponse>, Status> {
        reply(organizations::update(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn delete_organization(
        &self,
        request: Request<DeleteOrganizationRequest>,
    ) -> Result<Response<DeleteOrganizationResponse>, Status> {
        reply(organizations::delete(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn list_organizations(
        &self,
        request: Request<ListOrganizationsRequest>,
    ) -> Result<Response<ListOrganizationsResponse>, Status> {
        reply(organizations::list(self, request.into_inner()).await)
    }

    async fn list_deleted_organizations(
        &self,
        request: Request<ListDeletedOrganizationsRequest>,
    ) -> Result<Response<ListDeletedOrganizationsResponse>, Status> {
        reply(organizations::list_deleted(self, request.into_inner()).await)
    }

    async fn create_invite(
        &self,
        request: Request<CreateInviteRequest>,
    ) -> Result<Response<CreateInviteResponse>, Status> {
        reply(invites::create(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn accept_invite(
        &self,
        request: Request<AcceptInviteRequest>,
    ) -> Result<Response<AcceptInviteResponse>, Status> {
        reply(invites::accept(self, request.into_inner()).await)
    }

    async fn list_invites(
        &self,
        request: Request<ListInvitesRequest>,
    ) -> Result<Response<ListInvitesResponse>, Status> {
        reply(invites::list(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn revoke_invite(
        &self,
        request: Request<RevokeInviteRequest>,
    ) -> Result<Response<RevokeInviteResponse>, Status> {
        reply(invites::revoke(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn list_members(
        &self,
        request: Request<ListMembersRequest>,
    ) -> Result<Response<ListMembersResponse>, Status> {
        reply(members::list(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn get_member(
        &self,
        request: Request<GetMemberRequest>,
    ) -> Result<Response<GetMemberResponse>, Status> {
        reply(members::get(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn update_member(
        &self,
        request: Request<UpdateMemberRequest>,
    ) -> Result<Response<UpdateMemberResponse>, Status> {
        reply(members::update(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn delete_member(
        &self,
        request: Request<DeleteMemberRequest>,
    ) -> Result<Response<DeleteMemberResponse>, Status> {
        reply(members::delete(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn create_agent(
        &self,
        request: Request<CreateAgentRequest>,
    ) -> Result<Response<CreateAgentResponse>, Status> {
        reply(agents::create(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn list_agents(
        &self,
        request: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        reply(agents::list(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn get_agent(
        &self,
        request: Request<GetAgentRequest>,
    ) -> Result<Response<GetAgentResponse>, Status> {
        reply(agents::get(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn update_agent(
        &self,
        request: Request<UpdateAgentRequest>,
    ) -> Result<Response<UpdateAgentResponse>, Status> {
        reply(agents::update(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn delete_agent(
        &self,
        request: Request<DeleteAgentRequest>,
    ) -> Result<Response<DeleteAgentResponse>, Status> {
        reply(agents::delete(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn create_project(
        &self,
        request: Request<CreateProjectRequest>,
    ) -> Result<Response<CreateProjectResponse>, Status> {
        reply(projects::create(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn list_projects(
        &self,
        request: Request<ListProjectsRequest>,
    ) -> Result<Response<ListProjectsResponse>, Status> {
        reply(projects::list(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn get_project(
        &self,
        request: Request<GetProjectRequest>,
    ) -> Result<Response<GetProjectResponse>, Status> {
        reply(projects::get(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn update_project(
        &self,
        request: Request<UpdateProjectRequest>,
    ) -> Result<Response<UpdateProjectResponse>, Status> {
        reply(projects::update(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn delete_project(
        &self,
        request: Request<DeleteProjectRequest>,
    ) -> Result<Response<DeleteProjectResponse>, Status> {
        reply(projects::delete(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn create_api_key(
        &self,
        request: Request<CreateApiKeyRequest>,
    ) -> Result<Response<CreateApiKeyResponse>, Status> {
        reply(keys::create(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn list_api_keys(
        &self,
        request: Request<ListApiKeysRequest>,
    ) -> Result<Response<ListApiKeysResponse>, Status> {
        reply(keys::list(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn revoke_api_key(
        &self,
        request: Request<RevokeApiKeyRequest>,
    ) -> Result<Response<RevokeApiKeyResponse>, Status> {
        reply(keys::revoke(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn rotate_api_key(
        &self,
        request: Request<RotateApiKeyRequest>,
    ) -> Result<Response<RotateApiKeyResponse>, Status> {
        reply(key_rotation::rotate(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn create_session_token(
        &self,
        request: Request<CreateSessionTokenRequest>,
    ) -> Result<Response<CreateSessionTokenResponse>, Status> {
        reply(session_tokens::create(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn revoke_session_token(
        &self,
        request: Request<RevokeSessionTokenRequest>,
    ) -> Result<Response<RevokeSessionTokenResponse>, Status> {
        reply(session_tokens::revoke(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn create_credential(
        &self,
        request: Request<CreateCredentialRequest>,
    ) -> Result<Response<CreateCredentialResponse>, Status> {
        reply(credentials::create(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn list_credentials(
        &self,
        request: Request<ListCredentialsRequest>,
    ) -> Result<Response<ListCredentialsResponse>, Status> {
        reply(credentials::list(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn get_credential(
        &self,
        request: Request<GetCredentialRequest>,
    ) -> Result<Response<GetCredentialResponse>, Status> {
        reply(credentials::get(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn delete_credential(
        &self,
        request: Request<DeleteCredentialRequest>,
    ) -> Result<Response<DeleteCredentialResponse>, Status> {
        reply(credentials::delete(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn rotate_credential(
        &self,
        request: Request<RotateCredentialRequest>,
    ) -> Result<Response<RotateCredentialResponse>, Status> {
        reply(credentials::rotate(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn reveal_credential(
        &self,
        request: Request<RevealCredentialRequest>,
    ) -> Result<Response<RevealCredentialResponse>, Status> {
        reply(credentials::reveal(self, &caller(&request)?, request.into_inner()).await)
    }

    async fn get_principal(
        &self,
        request: Request<GetPrincipalRequest>,
    ) -> Result<Response<GetPrincipalResponse>, Status> {
        reply(principals::get(self, request.into_inner()).await)
    }

    async fn lookup_resources(
        &self,
        request: Request<LookupResourcesRequest>,
    ) -> Result<Response<LookupResourcesResponse>, Status> {
        reply(lookup::lookup(self, request.into_inner()).await)
    }

    /// The authenticator's answer goes out as it is: a refusal carries the
    /// key's organization in its metadata, for the service that asked.
    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let principal = self.authn.authenticate(request.into_inner().token).await?;
        Ok(Response::new(AuthenticateResponse {
            principal: Some(principal),
        }))
    }

    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIResponse>, Status> {
        Ok(Response::new(WhoAmIResponse {
            principal: Some(caller(&request)?),
        }))
    }

    type WatchInvalidationsStream = invalidations::WatchStream;

    async fn watch_invalidations(
        &self,
        _request: Request<WatchInvalidationsRequest>,
    ) -> Result<Response<invalidations::WatchStream>, Status> {
        Ok(Response::new(invalidations::watch(self)))
    }
}
