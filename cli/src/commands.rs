//! The client commands: organizations, members, agents, projects, API keys,
//! `whoami` and `can`. Each resolves short names against the caller's
//! organization (one `WhoAmI` per invocation, cached), makes its calls and
//! prints a table or JSON.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use paddock_proto::authz::v1::CheckRequest;
use paddock_proto::identity::v1::AcceptInviteRequest;
use paddock_proto::identity::v1::{
    Agent, ApiKey, CreateAgentRequest, CreateApiKeyRequest, CreateInviteRequest,
    CreateOrganizationRequest, CreateProjectRequest, DeleteAgentRequest, DeleteMemberRequest,
    DeleteOrganizationRequest, DeleteProjectRequest, GetAgentRequest, GetOrganizationRequest,
    GetProjectRequest, ListAgentsRequest, ListApiKeysRequest, ListMembersRequest,
    ListProjectsRequest, Member, Principal, Project, RevokeApiKeyRequest, UpdateMemberRequest,
    UpdateProjectRequest, WhoAmIRequest,
};
use paddock_shared::auth::{self, AuthzClient, BearerAuth, IdentityClient};
use paddock_shared::secret::Secret;
use serde_json::json;
use tonic::{Code, Status};

use crate::Global;
use crate::error::CliError;
use crate::names::{self, AGENTS, API_KEYS, Expiry, MEMBERS, PROJECTS};
use crate::output::{self, Format, Table, print_fields, print_json};

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

    fn token(&self) -> Result<Secret<String>, CliError> {
        match self.global.token.as_deref().map(str::trim) {
            Some(t) if !t.is_empty() => Ok(Secret::new(t.to_owned())),
            _ => Err(CliError::new(
                Code::Unauthenticated,
                "no token: set PADDOCK_TOKEN or pass --token",
            )),
        }
    }

    pub(crate) fn global(&self) -> &Global {
        &self.global
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

    fn anonymous_identity(&self) -> Result<IdentityClient, CliError> {
        names::check_endpoint("--identity-endpoint", &self.global.identity_endpoint)?;
        auth::identity_client(&self.global.identity_endpoint, BearerAuth::anonymous())
            .map_err(|s| CliError::usage(s.message()))
    }

    fn authz(&self) -> Result<AuthzClient, CliError> {
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
    async fn caller(&mut self) -> Result<Principal, CliError> {
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
    async fn org(&mut self) -> Result<String, CliError> {
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

fn field_mask(paths: Vec<&str>) -> prost_types::FieldMask {
    prost_types::FieldMask {
        paths: paths.into_iter().map(str::to_owned).collect(),
    }
}

// ---------------------------------------------------------------- org

#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Create an organization and its first owner (needs the bootstrap token).
    Create {
        /// Organization id, e.g. acme.
        name: String,
        /// Email of the first owner.
        #[arg(long)]
        owner: String,
        #[arg(long)]
        display_name: Option<String>,
        /// Read the bootstrap token from this file when --token is not given.
        #[arg(long, default_value = "paddock-data/bootstrap-token")]
        bootstrap_token_file: PathBuf,
    },
    /// Show the caller's organization.
    Get,
    /// Delete the caller's organization with everything in it.
    Delete {
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
}

pub async fn org(ctx: &mut Ctx, cmd: OrgCommand) -> Result<(), CliError> {
    match cmd {
        OrgCommand::Create {
            name,
            owner,
            display_name,
            bootstrap_token_file,
        } => {
            if ctx
                .global
                .token
                .as_deref()
                .is_none_or(|t| t.trim().is_empty())
            {
                let text = std::fs::read_to_string(&bootstrap_token_file).map_err(|e| {
                    CliError::new(
                        Code::Unauthenticated,
                        format!("no bootstrap token: pass --token or --bootstrap-token-file (cannot read {}: {e})", bootstrap_token_file.display()),
                    )
                })?;
                ctx.global.token = Some(text.trim().to_owned());
            }
            let organization_id = name
                .strip_prefix("organizations/")
                .unwrap_or(&name)
                .to_owned();
            let mut client = ctx.identity()?;
            let resp = client
                .create_organization(CreateOrganizationRequest {
                    organization_id,
                    display_name: display_name.unwrap_or_default(),
                    owner_email: owner,
                })
                .await
                .map_err(ctx.id_err())?
                .into_inner();
            let org = resp.organization.ok_or_else(|| missing("organization"))?;
            let owner = resp.owner.ok_or_else(|| missing("owner"))?;
            let key = resp.owner_key.ok_or_else(|| missing("owner key"))?;
            if ctx.json() {
                print_json(&json!({
                    "organization": output::organization_json(&org),
                    "owner": output::member_json(&owner),
                    "api_key": output::api_key_json(&key),
                    "secret": resp.owner_key_secret,
                }));
            } else {
                outln!(
                    "created {} with owner {} ({})",
                    org.name,
                    owner.email,
                    owner.name
                );
                outln!(
                    "owner key {} (expires {})",
                    key.name,
                    key.expire_time
                        .as_ref()
                        .map_or_else(|| "never".to_owned(), output::rfc3339)
                );
                outln!("secret (shown once): {}", resp.owner_key_secret);
            }
            Ok(())
        }
        OrgCommand::Get => {
            let name = ctx.parent().await?;
            let mut client = ctx.identity()?;
            let resp = client
                .get_organization(GetOrganizationRequest { name })
                .await
                .map_err(ctx.id_err())?
                .into_inner();
            let org = resp.organization.ok_or_else(|| missing("organization"))?;
            if ctx.json() {
                print_json(&output::organization_json(&org));
            } else {
                print_fields(&output::organization_fields(&org));
            }
            Ok(())
        }
        OrgCommand::Delete { yes } => {
            let name = ctx.parent().await?;
            if !yes {
                return Err(CliError::usage(format!(
                    "refusing to delete {name} and everything in it without --yes"
                )));
            }
            let mut client = ctx.identity()?;
            client
                .delete_organization(DeleteOrganizationRequest { name: name.clone() })
                .await
                .map_err(ctx.id_err())?;
            print_deleted(ctx, &name);
            Ok(())
        }
    }
}

// ---------------------------------------------------------------- member

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Create a single-use invite code for EMAIL.
    Invite {
        email: String,
        /// owner, admin or developer.
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
                print_json(
                    &json!({ "members": members.iter().map(output::member_json).collect::<Vec<_>>() }),
                );
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
async fn resolve_member(ctx: &mut Ctx, input: &str) -> Result<String, CliError> {
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

// ---------------------------------------------------------------- agent

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Create an AI-agent identity.
    Create {
        /// Agent id, e.g. code-reviewer.
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// The agent's role (default agent).
        #[arg(long)]
        role: Option<String>,
    },
    /// List agents.
    List,
    /// Show one agent.
    Get { name: String },
    /// Delete an agent and revoke its keys.
    Delete { name: String },
}

pub async fn agent(ctx: &mut Ctx, cmd: AgentCommand) -> Result<(), CliError> {
    match cmd {
        AgentCommand::Create {
            name,
            description,
            role,
        } => {
            let (parent, agent_id) = split_for_create(ctx, AGENTS, &name).await?;
            let mut client = ctx.identity()?;
            let resp = client
                .create_agent(CreateAgentRequest {
                    parent,
                    agent_id,
                    agent: Some(Agent {
                        description: description.unwrap_or_default(),
                        role: role.unwrap_or_default(),
                        ..Default::default()
                    }),
                })
                .await
                .map_err(ctx.id_err())?
                .into_inner();
            show_agent(ctx, &resp.agent.ok_or_else(|| missing("agent"))?);
            Ok(())
        }
        AgentCommand::List => {
            let parent = ctx.parent().await?;
            let client = ctx.identity()?;
            let agents = all_pages(|page_token| {
                let mut client = client.clone();
                let req = ListAgentsRequest {
                    parent: parent.clone(),
                    page_size: 0,
                    page_token,
                };
                async move {
                    let r = client.list_agents(req).await?.into_inner();
                    Ok((r.agents, r.next_page_token))
                }
            })
            .await
            .map_err(ctx.id_err())?;
            if ctx.json() {
                print_json(
                    &json!({ "agents": agents.iter().map(output::agent_json).collect::<Vec<_>>() }),
                );
            } else {
                let mut t = Table::new(&["NAME", "ROLE", "DESCRIPTION", "CREATED"]);
                for a in &agents {
                    t.row(vec![
                        names::short(&a.name).to_owned(),
                        a.role.clone(),
                        a.description.clone(),
                        output::ts_cell(a.create_time.as_ref()),
                    ]);
                }
                t.print();
            }
            Ok(())
        }
        AgentCommand::Get { name } => {
            let name = ctx.expand(AGENTS, &name).await?;
            let mut client = ctx.identity()?;
            let resp = client
                .get_agent(GetAgentRequest { name })
                .await
                .map_err(ctx.id_err())?
                .into_inner();
            show_agent(ctx, &resp.agent.ok_or_else(|| missing("agent"))?);
            Ok(())
        }
        AgentCommand::Delete { name } => {
            let name = ctx.expand(AGENTS, &name).await?;
            let mut client = ctx.identity()?;
            client
                .delete_agent(DeleteAgentRequest { name: name.clone() })
                .await
                .map_err(ctx.id_err())?;
            print_deleted(ctx, &name);
            Ok(())
        }
    }
}

fn show_agent(ctx: &Ctx, a: &Agent) {
    if ctx.json() {
        print_json(&output::agent_json(a));
    } else {
        print_fields(&output::agent_fields(a));
    }
}

/// For create: (parent, id) from a short id or a full name.
async fn split_for_create(
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
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// List projects.
    List,
    /// Show one project.
    Get { name: String },
    /// Change a project's display name or description.
    Update {
        name: String,
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete a project.
    Delete { name: String },
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
                print_json(
                    &json!({ "projects": projects.iter().map(output::project_json).collect::<Vec<_>>() }),
                );
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
            let mut paths = Vec::new();
            if display_name.is_some() {
                paths.push("display_name");
            }
            if description.is_some() {
                paths.push("description");
            }
            if paths.is_empty() {
                return Err(CliError::usage(
                    "nothing to update: pass --display-name and/or --description",
                ));
            }
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
                    update_mask: Some(field_mask(paths)),
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

// ---------------------------------------------------------------- key

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Mint an API key; its secret is printed once.
    Create {
        /// A name for the key, e.g. ci.
        name: String,
        /// Cap the key's role below its owner's (owner, admin, developer, agent).
        #[arg(long)]
        role: Option<String>,
        /// read-only, ci-cd, agent-execution, or permissions, comma separated.
        #[arg(long)]
        scope: Option<String>,
        /// Lifetime: 30d, 12h, 2s, or never (where the organization allows it).
        #[arg(long, value_parser = names::parse_expires)]
        expires: Option<Expiry>,
        /// Mint the key for this agent instead of yourself.
        #[arg(long)]
        agent: Option<String>,
    },
    /// List the keys you may see.
    List {
        /// Include revoked and expired keys.
        #[arg(long, visible_alias = "show-inactive")]
        all: bool,
    },
    /// Revoke a key by name, id or full resource name.
    Revoke { key: String },
}

pub async fn key(ctx: &mut Ctx, cmd: KeyCommand) -> Result<(), CliError> {
    match cmd {
        KeyCommand::Create {
            name,
            role,
            scope,
            expires,
            agent,
        } => {
            let owner = match agent {
                Some(a) => ctx.expand(AGENTS, &a).await?,
                None => String::new(),
            };
            let parent = match names::org_of(&owner) {
                Some(org) => names::org_name(org),
                None => ctx.parent().await?,
            };
            let (ttl, never_expires) = match expires {
                None => (None, false),
                Some(Expiry::Never) => (None, true),
                Some(Expiry::After(d)) => (Some(paddock_shared::time::proto_duration(d)), false),
            };
            let mut client = ctx.identity()?;
            let resp = client
                .create_api_key(CreateApiKeyRequest {
                    parent,
                    api_key: Some(ApiKey {
                        display_name: name,
                        owner,
                        role: role.unwrap_or_default(),
                        scope: scope.as_deref().map(names::parse_scope).unwrap_or_default(),
                        ..Default::default()
                    }),
                    ttl,
                    never_expires,
                })
                .await
                .map_err(ctx.id_err())?
                .into_inner();
            let key = resp.api_key.ok_or_else(|| missing("API key"))?;
            if ctx.json() {
                print_json(
                    &json!({ "api_key": output::api_key_json(&key), "secret": resp.secret }),
                );
            } else {
                print_fields(&output::api_key_fields(&key));
                outln!("secret (shown once): {}", resp.secret);
            }
            Ok(())
        }
        KeyCommand::List { all } => {
            let keys = list_keys(ctx, all).await?;
            if ctx.json() {
                print_json(
                    &json!({ "api_keys": keys.iter().map(output::api_key_json).collect::<Vec<_>>() }),
                );
            } else {
                let now = output::now_seconds();
                let mut t = Table::new(&[
                    "ID",
                    "NAME",
                    "OWNER",
                    "ROLE",
                    "SCOPE",
                    "EXPIRES",
                    "LAST USED",
                    "STATE",
                ]);
                for k in &keys {
                    t.row(vec![
                        names::short(&k.name).to_owned(),
                        k.display_name.clone(),
                        output::owner_cell(&k.owner),
                        if k.role.is_empty() {
                            "-".to_owned()
                        } else {
                            k.role.clone()
                        },
                        output::scope_cell(&k.scope),
                        k.expire_time
                            .as_ref()
                            .map_or_else(|| "never".to_owned(), output::rfc3339),
                        output::ts_cell(k.last_used_time.as_ref()),
                        output::key_state(k, now).to_owned(),
                    ]);
                }
                t.print();
            }
            Ok(())
        }
        KeyCommand::Revoke { key } => {
            let name = resolve_key(ctx, &key).await?;
            let mut client = ctx.identity()?;
            let resp = client
                .revoke_api_key(RevokeApiKeyRequest { name: name.clone() })
                .await
                .map_err(ctx.id_err())?
                .into_inner();
            if ctx.json() {
                print_json(
                    &resp
                        .api_key
                        .as_ref()
                        .map_or_else(|| json!({ "name": name }), output::api_key_json),
                );
            } else {
                let label = resp
                    .api_key
                    .as_ref()
                    .map(|k| k.display_name.as_str())
                    .filter(|n| !n.is_empty());
                match label {
                    Some(l) => outln!("revoked {name} ({l})"),
                    None => outln!("revoked {name}"),
                }
            }
            Ok(())
        }
    }
}

async fn list_keys(ctx: &mut Ctx, show_inactive: bool) -> Result<Vec<ApiKey>, CliError> {
    let parent = ctx.parent().await?;
    let client = ctx.identity()?;
    all_pages(|page_token| {
        let mut client = client.clone();
        let req = ListApiKeysRequest {
            parent: parent.clone(),
            page_size: 0,
            page_token,
            show_inactive,
        };
        async move {
            let r = client.list_api_keys(req).await?.into_inner();
            Ok((r.api_keys, r.next_page_token))
        }
    })
    .await
    .map_err(ctx.id_err())
}

/// A key's resource name from its id, its display name, or a full name.
async fn resolve_key(ctx: &mut Ctx, input: &str) -> Result<String, CliError> {
    if names::is_full(input) {
        return names::check_full(API_KEYS, input).map(str::to_owned);
    }
    let keys = list_keys(ctx, true).await?;
    if let Some(k) = keys.iter().find(|k| names::short(&k.name) == input) {
        return Ok(k.name.clone());
    }
    let now = output::now_seconds();
    let named: Vec<&ApiKey> = keys.iter().filter(|k| k.display_name == input).collect();
    let active: Vec<&ApiKey> = named
        .iter()
        .copied()
        .filter(|k| output::key_state(k, now) == "active")
        .collect();
    match (active.as_slice(), named.as_slice()) {
        ([one], _) => Ok(one.name.clone()),
        ([], []) => ctx.expand(API_KEYS, input).await,
        ([], [one]) => Err(CliError::new(
            Code::FailedPrecondition,
            format!(
                "key {input:?} ({}) is already {}",
                names::short(&one.name),
                output::key_state(one, now)
            ),
        )),
        ([], _) => Err(CliError::new(
            Code::FailedPrecondition,
            format!("every key named {input:?} is already revoked or expired"),
        )),
        (many, _) => Err(CliError::new(
            Code::FailedPrecondition,
            format!(
                "{} active keys are named {input:?} ({}); revoke one by id",
                many.len(),
                many.iter()
                    .map(|k| names::short(&k.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

// ---------------------------------------------------------------- whoami, can

pub async fn whoami(ctx: &mut Ctx) -> Result<(), CliError> {
    let p = ctx.caller().await?;
    if ctx.json() {
        print_json(&output::principal_json(&p));
    } else {
        print_fields(&output::principal_fields(&p));
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct CanArgs {
    /// A permission, e.g. projects.delete.
    pub permission: String,
    /// A full resource name, or one relative to your organization
    /// (projects/web); default your organization.
    pub resource: Option<String>,
}

/// `paddock can`: exits 0 when allowed, 1 when denied, and 2 when it
/// could not tell (an unknown permission, a bad token, a service down), as
/// `test` and `grep` do.
pub async fn can(ctx: &mut Ctx, args: CanArgs) -> Result<(), CliError> {
    match check(ctx, args).await {
        Err(CliError::Failed { code, message }) => Err(CliError::Undecided { code, message }),
        other => other,
    }
}

async fn check(ctx: &mut Ctx, args: CanArgs) -> Result<(), CliError> {
    let permission = args.permission.clone();
    let input = args.resource.unwrap_or_default();
    let resource = if input.is_empty() || names::is_full(&input) {
        names::expand_resource("", &input)?
    } else {
        names::expand_resource("x", &input)?;
        let org = ctx.org().await?;
        names::expand_resource(&org, &input)?
    };
    let mut client = ctx.authz()?;
    let resp = client
        .check(CheckRequest {
            principal: None,
            permission: args.permission,
            resource,
            resource_owner: String::new(),
        })
        .await
        .map_err(ctx.authz_err())?
        .into_inner();
    let unknown = resp
        .reason
        .as_ref()
        .is_some_and(|r| r.missing() == paddock_proto::authz::v1::Link::UnknownPermission);
    if unknown {
        return Err(CliError::new(
            Code::InvalidArgument,
            format!(
                "unknown permission {}; `paddock can --help` and the README list them",
                paddock_shared::names::truncate(&permission)
            ),
        ));
    }
    if ctx.json() {
        print_json(&output::check_json(&resp));
    } else {
        let summary = resp
            .reason
            .as_ref()
            .map(|r| r.summary.as_str())
            .unwrap_or_default();
        outln!(
            "{}: {summary}",
            if resp.allowed { "allowed" } else { "denied" }
        );
    }
    if resp.allowed {
        Ok(())
    } else {
        Err(CliError::Silent)
    }
}
