//! Why admission refused a call, the words a refusal is given (built here
//! once), and the refusal-audit step: the layer that records what
//! admission refused and answers it.

use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tonic::Status;
use tonic::body::Body;

use super::admission::Admission;
use crate::proto::identity::v1::{Principal, PrincipalKind};

/// Why the layer refused a call.
#[derive(Debug)]
pub enum Refusal {
    /// Refused before anyone was identified (unknown method, dependency down).
    Status(Status),
    /// Authentication failed; `key_id` is the public id of a token that
    /// parsed (never the secret).
    Unauthenticated {
        status: Status,
        key_id: Option<String>,
    },
    /// An identified principal may not call this RPC at all.
    Denied {
        status: Status,
        principal: Box<Principal>,
    },
    /// The declared permission is missing; the message names the resource
    /// the request asked for, which the layer reads only on this path.
    MissingPermission {
        permission: &'static str,
        organization: String,
        summary: String,
        principal: Box<Principal>,
    },
}

impl From<Status> for Refusal {
    fn from(status: Status) -> Self {
        Refusal::Status(status)
    }
}

/// The denial of a permission the caller lacks on `resource`; `summary` is
/// authz's account of why.
pub fn missing_permission(permission: &str, resource: &str, summary: &str) -> Status {
    Status::permission_denied(format!("missing {permission} on {resource}: {summary}"))
}

/// The denial of an organization permission to a principal of a kind that
/// holds none (service, platform).
pub fn no_organization_permissions(permission: &str, kind: PrincipalKind) -> Status {
    Status::permission_denied(format!(
        "missing {permission}: {} principals hold no organization permissions",
        kind.as_str_name()
    ))
}

/// The denial of an internal RPC (`what`: its path or name) to anyone but
/// a service principal.
pub fn internal_only(what: &str) -> Status {
    Status::permission_denied(format!(
        "{what} is internal: only service principals may call it"
    ))
}

/// The denial of a platform RPC to anyone but the platform bootstrap
/// principal.
pub fn platform_only(what: &str) -> Status {
    Status::permission_denied(format!("{what} needs the platform bootstrap token"))
}

/// What the admission layer hands on when it refuses a call: the refusal,
/// with the request it refused (whose body names the resource a missing
/// permission is worded with).
#[derive(Debug)]
pub struct Refused {
    pub refusal: Refusal,
    pub request: http::Request<Body>,
}

/// Records one refusal as an audit event (if the admission audits) and
/// answers it.
pub async fn audit_and_answer(admission: &Admission, refused: Refused) -> http::Response<Body> {
    let Refused {
        refusal,
        request: req,
    } = refused;
    match refusal {
        Refusal::Status(status) => {
            tracing::debug!(code = ?status.code(), message = status.message(), "refused");
            status.into_http()
        }
        Refusal::Unauthenticated { mut status, key_id } => {
            // Identity names the organization of a stored key; the caller
            // must not learn it.
            let org = super::remote::take_key_organization(&mut status);
            let resource = match (&org, &key_id) {
                (Some(org), Some(key)) => crate::names::child_name(org, "apiKeys", key),
                _ => String::new(),
            };
            let principal = key_id.map(|key_id| Principal {
                key_id,
                ..Default::default()
            });
            let details =
                serde_json::json!({"method": req.uri().path(), "reason": status.message()});
            let peer = req
                .extensions()
                .get::<tonic::transport::server::TcpConnectInfo>()
                .and_then(|c| c.remote_addr())
                .map(|a| a.ip());
            let key_id = principal.as_ref().map_or("", |p| p.key_id.as_str());
            admission
                .record_refusal(
                    principal.as_ref(),
                    "auth.fail",
                    &resource,
                    &status,
                    details,
                    Some((peer, key_id)),
                )
                .await;
            status.into_http()
        }
        Refusal::Denied { status, principal } => {
            let details =
                serde_json::json!({"method": req.uri().path(), "reason": status.message()});
            admission
                .audit_refusal(
                    Some(&principal),
                    "authz.deny",
                    &principal.organization,
                    &status,
                    details,
                )
                .await;
            status.into_http()
        }
        Refusal::MissingPermission {
            permission,
            organization,
            summary,
            principal,
        } => {
            let (parts, body) = req.into_parts();
            let resource = super::resource::requested_resource(parts.uri.path(), body)
                .await
                .unwrap_or(organization);
            let status = missing_permission(permission, &resource, &summary);
            let details = serde_json::json!({"method": parts.uri.path(), "permission": permission, "reason": summary});
            admission
                .audit_refusal(Some(&principal), "authz.deny", &resource, &status, details)
                .await;
            status.into_http()
        }
    }
}

/// The refusal-audit step as a tower layer: it sits over
/// [`super::AdmissionLayer`], whose refusals it records and answers.
#[derive(Clone)]
pub struct RefusalAuditLayer {
    admission: Admission,
}

impl RefusalAuditLayer {
    pub fn new(admission: Admission) -> Self {
        Self { admission }
    }
}

impl<S> tower::Layer<S> for RefusalAuditLayer {
    type Service = RefusalAudit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RefusalAudit {
            inner,
            admission: self.admission.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RefusalAudit<S> {
    inner: S,
    admission: Admission,
}

impl<S> tower::Service<http::Request<Body>> for RefusalAudit<S>
where
    S: tower::Service<http::Request<Body>, Response = Result<http::Response<Body>, Box<Refused>>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let verdict = self.inner.call(req);
        let admission = self.admission.clone();
        Box::pin(async move {
            match verdict.await? {
                Ok(response) => Ok(response),
                Err(refused) => Ok(audit_and_answer(&admission, *refused).await),
            }
        })
    }
}
