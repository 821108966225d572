//! What every client command shares: the connection state (`Ctx`: flags,
//! the identity client, the caller looked up once), paging through List
//! calls, update masks and the common outputs. The commands themselves live
//! in a file per resource (`org`, `member`, `project`, `agent`, ...).

use paddock_proto::identity::v1::{Principal, WhoAmIRequest};
use paddock_shared::auth::{self, AuthzClient, BearerAuth, IdentityClient};
use paddock_shared::secret::Secret;
use serde_json::json;
use tonic::{Code, Status};

use crate::Global;
use crate::error::CliError;
use crate::names;
use crate::output::{self, Format, print_json};

/// One invocation's connection state: the flags, the identity client and
/// the caller, looked up at most once.
pub struct Ctx {
    global: Global,
    identity: Option<IdentityClient>,
    caller: Option<Principal>,
}

impl Ctx {
    pub fn new(global: Global) -> Self {
        Self {
            global,
            identity: None,
            caller: None,
        }
    }

    pub(crate) fn json(&self) -> bool {
        self.global.output == Format::Json
    }

    pub(crate) fn token(&self) -> Result<Secret<String>, CliError> {
        match self.global.token.as_deref().map(str::trim) {
            Some(t) if !t.is_empty() => Ok(Secret::new(t.to_owned())),
            _ => Err(CliError::new(
                Code::Unauthenticated,
                "no token: run `paddock login`, or set PADDOCK_TOKEN",
            )),
        }
    }

    pub(crate) fn global(&self) -> &Global {
        &self.global
    }

    /// Uses `token` from here on (the bootstrap token, a token just read by
    /// `login`); drops the client and caller of the previous one.
    pub(crate) fn set_token(&mut self, token: String) {
        self.global.token = Some(token);
        self.identity = None;
        self.caller = None;
    }

    pub(crate) fn bearer(&self) -> Result<BearerAuth, CliError> {
        BearerAuth::new(&self.token()?)
            .map_err(|s| CliError::new(Code::Unauthenticated, s.message()))
    }

    pub(crate) fn identity(&mut self) -> Result<IdentityClient, CliError> {
        if let Some(c) = &self.identity {
            return Ok(c.clone());
        }
        names::check_endpoint("--identity-endpoint", &self.global.identity_endpoint)?;
        let client = auth::identity_client(&self.global.identity_endpoint, self.bearer()?)
            .map_err(|s| CliError::usage(s.message()))?;
        self.identity = Some(client.clone());
        Ok(client)
    }

    pub(crate) fn anonymous_identity(&self) -> Result<IdentityClient, CliError> {
        names::check_endpoint("--identity-endpoint", &self.global.identity_endpoint)?;
        auth::identity_client(&self.global.identity_endpoint, BearerAuth::anonymous())
            .map_err(|s| CliError::usage(s.message()))
    }

    pub(crate) fn authz(&self) -> Result<AuthzClient, CliError> {
        names::check_endpoint("--authz-endpoint", &self.global.authz_endpoint)?;
        auth::authz_client(&self.global.authz_endpoint, self.bearer()?)
            .map_err(|s| CliError::usage(s.message()))
    }

    /// Maps a failed identity call.
    pub(crate) fn id_err(&self) -> impl Fn(Status) -> CliError + '_ {
        move |s| CliError::rpc(s, "identity", &self.global.identity_endpoint)
    }

    pub(crate) fn authz_err(&self) -> impl Fn(Status) -> CliError + '_ {
        move |s| CliError::rpc(s, "authz", &self.global.authz_endpoint)
    }

    /// The caller, from `WhoAmI`.
    pub(crate) async fn caller(&mut self) -> Result<Principal, CliError> {
        if let Some(p) = &self.caller {
            return Ok(p.clone());
        }
        let mut client = self.identity()?;
        let resp = client
            .who_am_i(WhoAmIRequest {})
            .await
            .map_err(self.id_err())?
            .into_inner();
        let principal = resp
            .principal
            .ok_or_else(|| CliError::new(Code::Internal, "identity returned no principal"))?;
        self.caller = Some(principal.clone());
        Ok(principal)
    }

    /// The caller's organization id.
    pub(crate) async fn org(&mut self) -> Result<String, CliError> {
        let caller = self.caller().await?;
        names::org_of(&caller.organization)
            .map(str::to_owned)
            .ok_or_else(|| {
                CliError::new(
                    Code::PermissionDenied,
                    format!(
                        "the token is a {} credential, which belongs to no organization and holds no \
                         permissions in one; use a member's or agent's key",
                        output::kind_name(caller.kind)
                    ),
                )
            })
    }

    pub(crate) async fn parent(&mut self) -> Result<String, CliError> {
        Ok(names::org_name(&self.org().await?))
    }

    /// A full resource name: passed through, or expanded with the caller's
    /// organization (which costs one `WhoAmI`).
    pub(crate) async fn expand(
        &mut self,
        collection: &str,
        input: &str,
    ) -> Result<String, CliError> {
        if names::is_full(input) {
            return names::check_full(collection, input).map(str::to_owned);
        }
        // Validate before spending a round trip on the organization.
        names::expand("x", collection, input)?;
        let org = self.org().await?;
        names::expand(&org, collection, input)
    }
}

/// Every page of a List call: `fetch(page_token)` returns one page's items
/// and the next page's token (empty after the last).
pub(crate) async fn all_pages<T, Fut>(
    mut fetch: impl FnMut(String) -> Fut,
) -> Result<Vec<T>, Status>
where
    Fut: std::future::Future<Output = Result<(Vec<T>, String), Status>>,
{
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let (items, next) = fetch(token).await?;
        out.extend(items);
        if next.is_empty() {
            return Ok(out);
        }
        token = next;
    }
}

pub(crate) fn missing(what: &str) -> CliError {
    CliError::new(Code::Internal, format!("identity returned no {what}"))
}

pub(crate) fn print_deleted(ctx: &Ctx, name: &str) {
    if ctx.json() {
        print_json(&json!({ "deleted": name }));
    } else {
        outln!("deleted {name}");
    }
}

pub(crate) fn field_mask(paths: Vec<&str>) -> prost_types::FieldMask {
    prost_types::FieldMask {
        paths: paths.into_iter().map(str::to_owned).collect(),
    }
}

/// The update mask of an `update` command: the paths of the flags given,
/// `(path, flag, given)`; none given is a usage error naming the flags.
pub(crate) fn update_mask(
    fields: &[(&str, &str, bool)],
) -> Result<prost_types::FieldMask, CliError> {
    let paths: Vec<&str> = fields
        .iter()
        .filter(|(_, _, given)| *given)
        .map(|(path, _, _)| *path)
        .collect();
    if paths.is_empty() {
        let flags: Vec<&str> = fields.iter().map(|(_, flag, _)| *flag).collect();
        let listed = match flags.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} and/or {last}", rest.join(", ")),
            _ => flags.join(""),
        };
        return Err(CliError::usage(format!("nothing to update: pass {listed}")));
    }
    Ok(field_mask(paths))
}

/// For create: (parent, id) from a short id or a full name.
pub(crate) async fn split_for_create(
    ctx: &mut Ctx,
    collection: &str,
    input: &str,
) -> Result<(String, String), CliError> {
    let full = ctx.expand(collection, input).await?;
    let org = names::org_of(&full).unwrap_or_default().to_owned();
    Ok((names::org_name(&org), names::short(&full).to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_names_the_flags_it_takes() {
        let mask = update_mask(&[("a", "--a", false), ("b.c", "--c", true)]).expect("mask");
        assert_eq!(mask.paths, ["b.c"]);
        let none = |fields: &[(&str, &str, bool)]| {
            update_mask(fields)
                .expect_err("usage")
                .render()
                .expect("line")
        };
        assert_eq!(
            none(&[
                ("a", "--a", false),
                ("b", "--b", false),
                ("c", "--c", false)
            ]),
            "INVALID_ARGUMENT: nothing to update: pass --a, --b and/or --c"
        );
        assert_eq!(
            none(&[("a", "--a", false)]),
            "INVALID_ARGUMENT: nothing to update: pass --a"
        );
    }
}
