//! The admission decision for one call (may it proceed, and as whom), and
//! the checks handlers make on specific resources through the same
//! authorizer.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::HeaderMap;
use tonic::{Code, Status};

use super::principals::Authenticator;
use super::refusal::{self, Refusal};
use crate::outbox::RefusalSink;
use crate::proto::audit::v1::Outcome;
use crate::proto::authz::v1::{CheckRequest, CheckResponse, Link};
use crate::proto::identity::v1::{Principal, PrincipalKind};
use crate::proto::{Access, access_for};
use crate::token;

/// Answers permission checks.
pub trait Authorizer: Send + Sync + 'static {
    fn check(&self, req: CheckRequest) -> BoxFuture<'_, Result<CheckResponse, Status>>;
}

/// Decides, for one call, whether it may proceed and as whom.
#[derive(Clone)]
pub struct Admission {
    authn: Arc<dyn Authenticator>,
    authz: Arc<dyn Authorizer>,
    audit: Option<(&'static str, Arc<dyn RefusalSink>)>,
    /// Budgets of the failed authentications charged to organizations'
    /// chains, per source address and key id.
    sources: Arc<crate::audit::SourceBudgets>,
}

fn kind_of(p: &Principal) -> PrincipalKind {
    PrincipalKind::try_from(p.kind).unwrap_or(PrincipalKind::Unspecified)
}

/// Extracts the bearer token; UNAUTHENTICATED says what is wrong with it.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, Status> {
    let value = headers
        .get("authorization")
        .ok_or_else(|| Status::unauthenticated("missing bearer token (authorization metadata)"))?;
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("malformed authorization header: not ASCII"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| {
            Status::unauthenticated("malformed authorization header: expected \"Bearer <token>\"")
        })?
        .trim();
    token::parse(token).map_err(|e| Status::unauthenticated(format!("malformed token: {e}")))?;
    Ok(token)
}

impl Admission {
    pub fn new(authn: Arc<dyn Authenticator>, authz: Arc<dyn Authorizer>) -> Self {
        Self {
            authn,
            authz,
            audit: None,
            sources: Arc::default(),
        }
    }

    /// The authenticator calls are admitted with (long-lived streams
    /// authenticate their caller again through it).
    pub fn authenticator(&self) -> Arc<dyn Authenticator> {
        self.authn.clone()
    }

    /// Records refusals through `sink`, as `source` (the service's name).
    pub fn with_audit(mut self, source: &'static str, sink: Arc<dyn RefusalSink>) -> Self {
        self.audit = Some((source, sink));
        self
    }

    /// Records one refusal, if this admission audits.
    pub(super) async fn audit_refusal(
        &self,
        principal: Option<&Principal>,
        action: &str,
        resource: &str,
        status: &Status,
        details: serde_json::Value,
    ) {
        self.record_refusal(principal, action, resource, status, details, None)
            .await
    }

    /// Records one refusal, if this admission audits; one that `charge`s a
    /// (peer address, key id) goes to the organization's chain only within
    /// that source's budget.
    pub(super) async fn record_refusal(
        &self,
        principal: Option<&Principal>,
        action: &str,
        resource: &str,
        status: &Status,
        details: serde_json::Value,
        charge: Option<(Option<std::net::IpAddr>, &str)>,
    ) {
        let Some((source, sink)) = &self.audit else {
            return;
        };
        let outcome = if status.code() == Code::Unauthenticated {
            Outcome::Failure
        } else {
            Outcome::Denied
        };
        let mut event = crate::outbox::event(source, principal, action, resource, outcome);
        event.error_code = crate::names::code_name(status.code()).to_owned();
        event.details_json = details.to_string();
        // Anyone who knows a key id can make these: a flood of them must
        // not flood the organization's chain. (Those of no organization
        // are the platform chain's, budgeted by the sink.)
        if let Some((peer, key_id)) = charge
            && !event.organization.is_empty()
            && !self.sources.charge(peer, key_id, &mut event)
        {
            return;
        }
        sink.record(event).await;
    }

    /// Admits a call to `path`, returning the caller (none for public RPCs).
    pub async fn admit(
        &self,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Option<Principal>, Refusal> {
        let access = match access_for(path) {
            Some(a) => a,
            None if path.starts_with("/grpc.health.v1.Health/")
                || path.starts_with("/grpc.reflection.v1.ServerReflection/")
                || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/") =>
            {
                return Ok(None);
            }
            None => {
                return Err(Refusal::Status(Status::unimplemented(format!(
                    "unknown method {}",
                    crate::names::truncate(path)
                ))));
            }
        };
        if access == Access::Public {
            return Ok(None);
        }
        let token = bearer_token(headers).map_err(|status| Refusal::Unauthenticated {
            status,
            key_id: None,
        })?;
        let principal = self
            .authn
            .authenticate(token.to_owned())
            .await
            .map_err(|status| {
                if status.code() == Code::Unauthenticated {
                    let key_id = token::parse(token).ok().map(|t| t.id.to_owned());
                    Refusal::Unauthenticated { status, key_id }
                } else {
                    Refusal::Status(status)
                }
            })?;
        let kind = kind_of(&principal);
        match access {
            Access::Public | Access::Authenticated => {}
            Access::Internal => {
                if kind != PrincipalKind::Service {
                    return Err(Refusal::Denied {
                        status: refusal::internal_only(path),
                        principal: Box::new(principal),
                    });
                }
            }
            Access::Platform => {
                if kind != PrincipalKind::Platform {
                    return Err(Refusal::Denied {
                        status: refusal::platform_only(path),
                        principal: Box::new(principal),
                    });
                }
            }
            Access::Permission(permission) => {
                if !matches!(kind, PrincipalKind::Member | PrincipalKind::Agent) {
                    return Err(Refusal::Denied {
                        status: refusal::no_organization_permissions(permission, kind),
                        principal: Box::new(principal),
                    });
                }
                let resource = principal.organization.clone();
                let decision = self
                    .authz
                    .check(CheckRequest {
                        principal: Some(principal.clone()),
                        permission: permission.to_owned(),
                        resource: resource.clone(),
                        resource_owner: String::new(),
                    })
                    .await?;
                if !decision.allowed {
                    let reason = decision.reason.unwrap_or_default();
                    tracing::info!(principal = %principal.id, key = %principal.key_id, permission, "permission denied");
                    if reason.missing() == Link::Organization {
                        return Err(Status::not_found("resource not found").into());
                    }
                    return Err(Refusal::MissingPermission {
                        permission,
                        organization: resource,
                        summary: reason.summary,
                        principal: Box::new(principal),
                    });
                }
            }
        }
        Ok(Some(principal))
    }

    /// Checks a permission on a specific resource inside a handler (for
    /// ownership and cross-resource checks). Another organization's
    /// resource is NOT_FOUND; a deny names the missing permission and is
    /// recorded as an `authz.deny` refusal.
    pub async fn require(
        &self,
        principal: &Principal,
        permission: &str,
        resource: &str,
        owner: &str,
    ) -> Result<(), Status> {
        let result = self.check(principal, permission, resource, owner).await;
        if let Err(status) = &result
            && status.code() == Code::PermissionDenied
        {
            self.audit_refusal(
                Some(principal),
                "authz.deny",
                resource,
                status,
                serde_json::json!({
                    "permission": permission,
                    "reason": status.message(),
                }),
            )
            .await;
        }
        result
    }

    /// [`Admission::require`] without the audit record: for questions whose
    /// "no" is not a refusal.
    async fn check(
        &self,
        principal: &Principal,
        permission: &str,
        resource: &str,
        owner: &str,
    ) -> Result<(), Status> {
        let decision = self
            .authz
            .check(CheckRequest {
                principal: Some(principal.clone()),
                permission: permission.to_owned(),
                resource: resource.to_owned(),
                resource_owner: owner.to_owned(),
            })
            .await?;
        if decision.allowed {
            return Ok(());
        }
        let reason = decision.reason.unwrap_or_default();
        if reason.missing() == Link::Organization {
            return Err(Status::not_found(format!(
                "{} not found",
                crate::names::truncate(resource)
            )));
        }
        Err(refusal::missing_permission(
            permission,
            resource,
            &reason.summary,
        ))
    }

    /// Whether the principal holds `permission` (no error for a deny).
    pub async fn allows(
        &self,
        principal: &Principal,
        permission: &str,
        resource: &str,
        owner: &str,
    ) -> Result<bool, Status> {
        match self.check(principal, permission, resource, owner).await {
            Ok(()) => Ok(true),
            Err(s) if matches!(s.code(), Code::PermissionDenied | Code::NotFound) => Ok(false),
            Err(s) => Err(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fakes::{FixedIdentity, RecordingAuthz, headers, member};
    use super::*;
    use http::HeaderMap;

    #[tokio::test]
    async fn unknown_methods_are_refused_and_health_is_open() {
        let authz = Arc::new(RecordingAuthz::default());
        let admission = Admission::new(Arc::new(FixedIdentity(member())), Arc::new(authz.clone()));
        let (_, token) = token::mint(token::TokenKind::ApiKey);
        match admission
            .admit(
                "/paddock.identity.v1.IdentityService/Nope",
                &headers(&token),
            )
            .await
        {
            Err(Refusal::Status(s)) => assert_eq!(s.code(), Code::Unimplemented),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            admission
                .admit("/grpc.health.v1.Health/Check", &HeaderMap::new())
                .await,
            Ok(None)
        ));
        match admission
            .admit(
                "/paddock.identity.v1.IdentityService/WhoAmI",
                &HeaderMap::new(),
            )
            .await
        {
            Err(Refusal::Unauthenticated {
                status,
                key_id: None,
            }) => assert_eq!(status.code(), Code::Unauthenticated),
            other => panic!("unexpected {other:?}"),
        }
        match admission
            .admit(
                "/paddock.identity.v1.IdentityService/Authenticate",
                &headers(&token),
            )
            .await
        {
            Err(Refusal::Denied { status, principal }) => assert_eq!(
                (status.code(), principal.id.as_str()),
                (Code::PermissionDenied, "m1")
            ),
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            authz.seen.lock().unwrap().is_empty(),
            "no check for refused or internal calls"
        );
    }
}
