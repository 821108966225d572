//! The admission tower layer: authenticate and authorize each call through
//! [`Admission`], put the caller in the request's extensions, and hand a
//! refusal on as a value (to [`super::refusal::RefusalAudit`]) instead of
//! answering it.

use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tonic::body::Body;

use super::admission::{Admission, bearer_token};
use super::refusal::Refused;
use super::{Caller, CallerToken};
use crate::secret::Secret;

/// Runs [`Admission`] in front of every RPC.
#[derive(Clone)]
pub struct AdmissionLayer {
    admission: Admission,
}

impl AdmissionLayer {
    pub fn new(admission: Admission) -> Self {
        Self { admission }
    }
}

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = AdmissionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AdmissionService {
            inner,
            admission: self.admission.clone(),
        }
    }
}

/// Answers an admitted call with the inner service; a refused one with
/// the [`Refused`] value, for the refusal-audit step above.
#[derive(Clone)]
pub struct AdmissionService<S> {
    inner: S,
    admission: Admission,
}

impl<S> tower::Service<http::Request<Body>> for AdmissionService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Result<http::Response<Body>, Box<Refused>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        // The clone is not ready; keep the ready one for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let admission = self.admission.clone();
        Box::pin(async move {
            match admission.admit(req.uri().path(), req.headers()).await {
                Ok(principal) => {
                    if let Some(p) = principal {
                        req.extensions_mut().insert(Caller(p));
                        if let Ok(token) = bearer_token(req.headers()) {
                            let token = CallerToken(Secret::new(token.to_owned()));
                            req.extensions_mut().insert(token);
                        }
                    }
                    inner.call(req).await.map(Ok)
                }
                Err(refusal) => Ok(Err(Box::new(Refused {
                    refusal,
                    request: req,
                }))),
            }
        })
    }
}
