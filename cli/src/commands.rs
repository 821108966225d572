//! The connection state every client command shares (`Ctx`: flags, the
//! identity client, the caller looked up once), and the member, project and
//! `whoami` commands. Each resolves short names against the caller's
//! organization, makes its calls and prints a table or JSON.
//!
//! Long because it still holds several resources (projects, members, keys,
//! whoami); each moves to a file of its own with the CLI split of issue 10,
//! as agent, org and invite already have.

use std::time::Duration;

use clap::Subcommand;
use paddock_proto::identity::v1::AcceptInviteRequest;
use paddock_proto::identity::v1::{
    CreateInviteRequest, CreateProjectRequest, DeleteMemberRequest, DeleteProjectRequest,
    GetProjectRequest, ListMembersRequest, ListProjectsRequest, Member, Principal, Project,
    UpdateMemberRequest, UpdateProjectRequest, WhoAmIRequest,
};
use paddock_shared::auth::{self, AuthzClient, BearerAuth, IdentityClient};
use paddock_shared::secret::Secret;
use serde_json::json;
use tonic::{Code, Status};

use crate::Global;
use crate::error::CliError;
use crate::names::{self, MEMBERS, PROJECTS};
use crate::output::{self, Format, Table, print_fields, print_json, print_list};

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

// ---------------------------------------------------------------- member

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Create a single-use invite code for EMAIL.
    Invite {
        /// The email of the person to invite.
        email: String,
        /// owner, admin or developer, never above your own.
        #[arg(long)]
        role: String,
        /// How long the code stays valid (default 7d, at most 30d).
        #[arg(long, value_parser = names::parse_positive_duration)]
        ttl: Option<Duration>,
    },
    /// Redeem an invite code (no token needed); prints your first key.
    Accept {
        /// The pdi_ code, or - to read it from stdin (keeps it out of the
        /// process list and shell history).
        code: String,
        /// Name of the first key.
        #[arg(long)]
        key_name: Option<String>,
    },
    /// List the organization's members.
    List,
    /// Change a member's role.
    SetRole {
        /// The member's email or full resource name.
        email: String,
        /// The new role: owner, admin or developer, never above your own.
        role: String,
    },
    /// Remove a member: deletes their keys and revokes the agent keys and
    /// invites they made.
    Remove {
        /// The member's email or full resource name.
        email: String,
    },
}

pub async fn member(ctx: &mut Ctx, cmd: MemberCommand) -> Result<(), CliError> {
    match cmd {
        MemberCommand::Invite { email, role, ttl } => {
            let parent = ctx.parent().await?;
            let mut client = ctx.identity()?;
            let resp = client
                .create_invite(CreateInviteRequest {
                    parent,
                    email,
                    role,
                    ttl: ttl.map(paddock_shared::time::proto_duration),
                })
                .await
                .map_err(ctx.id_err())?
                .into_inner();
            let expires = output::ts_cell(resp.expire_time.as_ref());
            if ctx.json() {
                print_json(&json!({
                    "name": resp.name,
                    "code": resp.code,
                    "email": resp.email,
                    "role": resp.role,
                    "expire_time": resp.expire_time.as_ref().map(output::rfc3339),
                }));
            } else {
                outln!(
                    "invited {} as {} (code expires {expires}, single use)",
                    resp.email,
                    resp.role
                );
                outln!("code: {}", resp.code);
                outln!("they join with: paddock member accept CODE");
                outln!(
                    "revoke it with: paddock invite revoke {}",
                    names::short(&resp.name)
                );
            }
            Ok(())
        }
        MemberCommand::Accept { code, key_name } => {
            let code = if code == "-" {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                line
            } else {
                code
            };
            let mut client = ctx.anonymous_identity()?;
            let resp = client
                .accept_invite(AcceptInviteRequest {
                    code: code.trim().to_owned(),
                    key_display_name: key_name.unwrap_or_default(),
                })
                .await
                .map_err(ctx.id_err())?
                .into_inner();
            let member = resp.member.ok_or_else(|| missing("member"))?;
            let key = resp.api_key.ok_or_else(|| missing("API key"))?;
            if ctx.json() {
                print_json(&json!({
                    "member": output::member_json(&member),
                    "api_key": output::api_key_json(&key),
                    "secret": resp.api_key_secret,
                }));
            } else {
                outln!(
                    "joined {} as {} ({})",
                    names::org_of(&member.name).unwrap_or("?"),
                    member.email,
                    member.role
                );
                outln!("member {}", member.name);
                outln!(
                    "key {} (expires {})",
                    key.name,
                    key.expire_time
                        .as_ref()
                        .map_or_else(|| "never".to_owned(), output::rfc3339)
                );
                outln!("secret (shown once): {}", resp.api_key_secret);
            }
            Ok(())
        }
        MemberCommand::List => {
            let parent = ctx.parent().await?;
            let members = list_members(ctx, &parent, "").await?;
            if ctx.json() {
                print_list(members.iter().map(output::member_json));
            } else {
                let mut t = Table::new(&["ID", "EMAIL", "ROLE", "CREATED"]);
                for m in &members {
                    t.row(vec![
                        names::short(&m.name).to_owned(),
                        m.email.clone(),
                        m.role.clone(),
                        output::ts_cell(m.create_time.as_ref()),
                    ]);
                }
                t.print();
            }
            Ok(())
        }
        MemberCommand::SetRole { email, role } => {
            let name = resolve_member(ctx, &email).await?;
            let mut client = ctx.identity()?;
            let resp = client
                .update_member(UpdateMemberRequest {
                    member: Some(Member {
                        name,
                        role,
                        ..Default::default()
                    }),
                    update_mask: Some(field_mask(vec!["role"])),
                })
                .await
                .map_err(ctx.id_err())?
                .into_inner();
            let m = resp.member.ok_or_else(|| missing("member"))?;
            if ctx.json() {
                print_json(&output::member_json(&m));
            } else {
                outln!("{} ({}) is now {}", m.email, m.name, m.role);
            }
            Ok(())
        }
        MemberCommand::Remove { email } => {
            let name = resolve_member(ctx, &email).await?;
            let mut client = ctx.identity()?;
            client
                .delete_member(DeleteMemberRequest { name: name.clone() })
                .await
                .map_err(ctx.id_err())?;
            print_deleted(ctx, &name);
            Ok(())
        }
    }
}

async fn list_members(ctx: &mut Ctx, parent: &str, email: &str) -> Result<Vec<Member>, CliError> {
    let client = ctx.identity()?;
    all_pages(|page_token| {
        let mut client = client.clone();
        let req = ListMembersRequest {
            parent: parent.to_owned(),
            page_size: 0,
            page_token,
            email: email.to_owned(),
        };
        async move {
            let r = client.list_members(req).await?.into_inner();
            Ok((r.members, r.next_page_token))
        }
    })
    .await
    .map_err(ctx.id_err())
}

/// A member's resource name from an email (or a full name, unchanged).
pub(crate) async fn resolve_member(ctx: &mut Ctx, input: &str) -> Result<String, CliError> {
    if names::is_full(input) {
        return names::check_full(MEMBERS, input).map(str::to_owned);
    }
    let parent = ctx.parent().await?;
    let found = list_members(ctx, &parent, input).await?;
    found
        .into_iter()
        .find(|m| m.email.eq_ignore_ascii_case(input.trim()))
        .map(|m| m.name)
        .ok_or_else(|| {
            CliError::new(
                Code::NotFound,
                format!("no member with email {input:?} in {parent}"),
            )
        })
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

// ---------------------------------------------------------------- project

#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Create a project.
    Create {
        /// Project id, e.g. web.
        name: String,
        /// A name for people, e.g. "Web app".
        #[arg(long)]
        display_name: Option<String>,
        /// What the project is.
        #[arg(long)]
        description: Option<String>,
    },
    /// List projects.
    List,
    /// Show one project.
    Get {
        /// The project's id (web) or full resource name.
        name: String,
    },
    /// Change a project's display name or description.
    Update {
        /// The project's id (web) or full resource name.
        name: String,
        /// A name for people.
        #[arg(long)]
        display_name: Option<String>,
        /// What the project is.
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete a project.
    Delete {
        /// The project's id (web) or full resource name.
        name: String,
    },
}

pub async fn project(ctx: &mut Ctx, cmd: ProjectCommand) -> Result<(), CliError> {
    match cmd {
        ProjectCommand::Create {
            name,
            display_name,
            description,
        } => {
            let (parent, project_id) = split_for_create(ctx, PROJECTS, &name).await?;
            let mut client = ctx.identity()?;
            let resp = client
                .create_project(CreateProjectRequest {
                    parent,
                    project_id,
                    project: Some(Project {
                        display_name: display_name.unwrap_or_default(),
                        description: description.unwrap_or_default(),
                        ..Default::default()
                    }),
                })
                .await
                .map_err(ctx.id_err())?
                .into_inner();
            show_project(ctx, &resp.project.ok_or_else(|| missing("project"))?);
            Ok(())
        }
        ProjectCommand::List => {
            let parent = ctx.parent().await?;
            let client = ctx.identity()?;
            let projects = all_pages(|page_token| {
                let mut client = client.clone();
                let req = ListProjectsRequest {
                    parent: parent.clone(),
                    page_size: 0,
                    page_token,
                };
                async move {
                    let r = client.list_projects(req).await?.into_inner();
                    Ok((r.projects, r.next_page_token))
                }
            })
            .await
            .map_err(ctx.id_err())?;
            if ctx.json() {
                print_list(projects.iter().map(output::project_json));
            } else {
                let mut t = Table::new(&["NAME", "DISPLAY NAME", "DESCRIPTION", "UPDATED"]);
                for p in &projects {
                    t.row(vec![
                        names::short(&p.name).to_owned(),
                        p.display_name.clone(),
                        p.description.clone(),
                        output::ts_cell(p.update_time.as_ref().or(p.create_time.as_ref())),
                    ]);
                }
                t.print();
            }
            Ok(())
        }
        ProjectCommand::Get { name } => {
            let name = ctx.expand(PROJECTS, &name).await?;
            let mut client = ctx.identity()?;
            let resp = client
                .get_project(GetProjectRequest { name })
                .await
                .map_err(ctx.id_err())?
                .into_inner();
            show_project(ctx, &resp.project.ok_or_else(|| missing("project"))?);
            Ok(())
        }
        ProjectCommand::Update {
            name,
            display_name,
            description,
        } => {
            let mask = update_mask(&[
                ("display_name", "--display-name", display_name.is_some()),
                ("description", "--description", description.is_some()),
            ])?;
            let name = ctx.expand(PROJECTS, &name).await?;
            let mut client = ctx.identity()?;
            let resp = client
                .update_project(UpdateProjectRequest {
                    project: Some(Project {
                        name,
                        display_name: display_name.unwrap_or_default(),
                        description: description.unwrap_or_default(),
                        ..Default::default()
                    }),
                    update_mask: Some(mask),
                })
                .await
                .map_err(ctx.id_err())?
                .into_inner();
            show_project(ctx, &resp.project.ok_or_else(|| missing("project"))?);
            Ok(())
        }
        ProjectCommand::Delete { name } => {
            let name = ctx.expand(PROJECTS, &name).await?;
            let mut client = ctx.identity()?;
            client
                .delete_project(DeleteProjectRequest { name: name.clone() })
                .await
                .map_err(ctx.id_err())?;
            print_deleted(ctx, &name);
            Ok(())
        }
    }
}

fn show_project(ctx: &Ctx, p: &Project) {
    if ctx.json() {
        print_json(&output::project_json(p));
    } else {
        print_fields(&output::project_fields(p));
    }
}

// ---------------------------------------------------------------- whoami

pub async fn whoami(ctx: &mut Ctx) -> Result<(), CliError> {
    let p = ctx.caller().await?;
    if ctx.json() {
        print_json(&output::principal_json(&p));
    } else {
        print_fields(&output::principal_fields(&p));
    }
    Ok(())
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
