//! Fakes of admission's dependencies, for unit tests only; the API tests
//! run the real services.

use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use http::HeaderMap;
use tonic::Status;

use super::{Authenticator, Authorizer};
use crate::outbox::RefusalSink;
use crate::proto::audit::v1::AuditEvent;
use crate::proto::authz::v1::{CheckRequest, CheckResponse, Reason};
use crate::proto::identity::v1::{Principal, PrincipalKind};
use crate::telemetry;

/// Every token stands for the same principal.
pub struct FixedIdentity(pub Principal);

impl Authenticator for FixedIdentity {
    fn authenticate(&self, _token: String) -> BoxFuture<'_, Result<Principal, Status>> {
        Box::pin(async move { Ok(self.0.clone()) })
    }
}

/// Allows everything (or denies everything, with `summary`), and records
/// the trace each check was made in.
#[derive(Default)]
pub struct RecordingAuthz {
    pub seen: Mutex<Vec<Option<String>>>,
    pub deny: Option<String>,
}

impl Authorizer for Arc<RecordingAuthz> {
    fn check(&self, _req: CheckRequest) -> BoxFuture<'_, Result<CheckResponse, Status>> {
        self.seen
            .lock()
            .unwrap()
            .push(telemetry::current_trace_id());
        let response = match &self.deny {
            None => CheckResponse {
                allowed: true,
                reason: None,
            },
            Some(summary) => CheckResponse {
                allowed: false,
                reason: Some(Reason {
                    summary: summary.clone(),
                    ..Default::default()
                }),
            },
        };
        Box::pin(async move { Ok(response) })
    }
}

/// Keeps the refusals it is told about.
#[derive(Default)]
pub struct RecordingSink(pub Mutex<Vec<AuditEvent>>);

impl RefusalSink for Arc<RecordingSink> {
    fn record(&self, event: AuditEvent) -> BoxFuture<'_, ()> {
        self.0.lock().unwrap().push(event);
        Box::pin(async {})
    }
}

pub fn member() -> Principal {
    Principal {
        id: "m1".into(),
        kind: PrincipalKind::Member as i32,
        organization: "organizations/acme".into(),
        role: "developer".into(),
        ..Default::default()
    }
}

pub fn headers(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("authorization", format!("Bearer {token}").parse().unwrap());
    h
}
