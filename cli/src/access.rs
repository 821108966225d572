//! Who is calling and who may do what: `paddock whoami`, `paddock can` (for
//! the caller, or `--as` another member or agent; `--list` like `kubectl
//! auth can-i --list`), `paddock role list` and `paddock permission list`.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use paddock_proto::authz::v1::{CheckRequest, Link, ListPermissionsRequest, ListRolesRequest};
use paddock_proto::identity::v1::Principal;
use serde_json::{Value, json};
use tonic::Code;

use crate::commands::Ctx;
use crate::error::CliError;
use crate::member::resolve_member;
use crate::names::{self, AGENTS, MEMBERS};
use crate::output::{self, Table, print_fields, print_json, print_list};

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// List the built-in roles and their permissions.
    List,
}

#[derive(Debug, Subcommand)]
pub enum PermissionCommand {
    /// List every permission with the roles that grant it and the key
    /// scopes (permission groups) that include it.
    List,
}

#[derive(Debug, Args)]
pub struct CanArgs {
    /// A permission, e.g. projects.delete (`paddock permission list` shows
    /// them all).
    #[arg(required_unless_present = "list")]
    pub permission: Option<String>,
    /// A full resource name, or one relative to your organization
    /// (projects/web); default your organization.
    pub resource: Option<String>,
    /// Ask about another member (email or members/ID) or agent (agents/NAME),
    /// at their current role; needs members.read or agents.read.
    #[arg(long = "as", value_name = "PRINCIPAL")]
    pub as_principal: Option<String>,
    /// List every permission held, instead of checking one.
    #[arg(long, conflicts_with_all = ["permission", "resource"])]
    pub list: bool,
}

/// `paddock whoami`: the principal the token belongs to.
pub async fn whoami(ctx: &mut Ctx) -> Result<(), CliError> {
    let p = ctx.caller().await?;
    if ctx.json() {
        print_json(&output::principal_json(&p));
    } else {
        print_fields(&output::principal_fields(&p));
    }
    Ok(())
}

/// `paddock can`: exits 0 when allowed, 1 when denied, and 2 when it
/// could not tell (an unknown permission, a bad token, a service down), as
/// `test` and `grep` do.
pub async fn can(ctx: &mut Ctx, args: CanArgs) -> Result<(), CliError> {
    let outcome = if args.list {
        list(ctx, args).await
    } else {
        check(ctx, args).await
    };
    match outcome {
        Err(CliError::Failed { code, message }) => Err(CliError::Undecided { code, message }),
        other => other,
    }
}

/// The principal `--as` names, by name only (authz resolves the rest).
async fn subject(ctx: &mut Ctx, input: Option<&str>) -> Result<Option<Principal>, CliError> {
    let Some(input) = input else {
        return Ok(None);
    };
    let name = if names::is_full(input) {
        match names::check_full(MEMBERS, input) {
            Ok(n) => n.to_owned(),
            Err(_) => names::check_full(AGENTS, input)
                .map_err(|_| {
                    CliError::usage(format!(
                        "invalid --as {input:?}: give an email, members/ID, agents/NAME or a full member or agent name"
                    ))
                })?
                .to_owned(),
        }
    } else if let Some(agent) = input.strip_prefix("agents/") {
        ctx.expand(AGENTS, agent).await?
    } else if let Some(member) = input.strip_prefix("members/") {
        ctx.expand(MEMBERS, member).await?
    } else if input.contains('@') {
        resolve_member(ctx, input).await?
    } else {
        return Err(CliError::usage(format!(
            "invalid --as {input:?}: give an email, members/ID, agents/NAME or a full member or agent name"
        )));
    };
    Ok(Some(Principal {
        name,
        ..Default::default()
    }))
}

async fn check(ctx: &mut Ctx, args: CanArgs) -> Result<(), CliError> {
    let permission = args.permission.unwrap_or_default();
    let principal = subject(ctx, args.as_principal.as_deref()).await?;
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
            principal,
            permission: permission.clone(),
            resource,
            resource_owner: String::new(),
        })
        .await
        .map_err(|s| ctx.authz_err()(s).with_flags(&[("principal.name", "--as")]))?
        .into_inner();
    let unknown = resp
        .reason
        .as_ref()
        .is_some_and(|r| r.missing() == Link::UnknownPermission);
    if unknown {
        return Err(CliError::new(
            Code::InvalidArgument,
            format!(
                "unknown permission {}; `paddock permission list` shows them all",
                paddock_shared::names::truncate(&permission)
            ),
        ));
    }
    if ctx.json() {
        crate::output::print_json(&output::check_json(&resp));
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

/// `can --list`: the effective permissions, grouped by resource as
/// `kubectl auth can-i --list` groups verbs.
async fn list(ctx: &mut Ctx, args: CanArgs) -> Result<(), CliError> {
    let principal = subject(ctx, args.as_principal.as_deref()).await?;
    let mut client = ctx.authz()?;
    let resp = client
        .list_permissions(ListPermissionsRequest { principal })
        .await
        .map_err(|s| ctx.authz_err()(s).with_flags(&[("principal.name", "--as")]))?
        .into_inner();
    if ctx.json() {
        let mut v = output::list_json(resp.permissions.iter().map(|p| json!(p)));
        v["reason"] = resp
            .reason
            .as_ref()
            .map_or(Value::Null, output::reason_json);
        crate::output::print_json(&v);
        return Ok(());
    }
    let mut by_resource: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for p in &resp.permissions {
        let (resource, verb) = p.split_once('.').unwrap_or((p, ""));
        by_resource.entry(resource).or_default().push(verb);
    }
    let mut t = Table::new(&["RESOURCE", "VERBS"]);
    for (resource, verbs) in by_resource {
        t.row(vec![resource.to_owned(), verbs.join(", ")]);
    }
    t.print();
    Ok(())
}

pub async fn role(ctx: &mut Ctx, cmd: RoleCommand) -> Result<(), CliError> {
    let RoleCommand::List = cmd;
    let mut client = ctx.authz()?;
    let resp = client
        .list_roles(ListRolesRequest {})
        .await
        .map_err(ctx.authz_err())?
        .into_inner();
    if ctx.json() {
        print_list(resp.roles.iter().map(
            |r| json!({"name": r.name, "description": r.description, "permissions": r.permissions}),
        ));
    } else {
        let mut t = Table::new(&["NAME", "PERMISSIONS", "DESCRIPTION"]);
        for r in &resp.roles {
            t.row(vec![
                r.name.clone(),
                r.permissions.len().to_string(),
                r.description.clone(),
            ]);
        }
        t.print();
    }
    Ok(())
}

pub async fn permission(ctx: &mut Ctx, cmd: PermissionCommand) -> Result<(), CliError> {
    let PermissionCommand::List = cmd;
    let mut client = ctx.authz()?;
    let resp = client
        .list_roles(ListRolesRequest {})
        .await
        .map_err(ctx.authz_err())?
        .into_inner();
    let holders = |p: &str, sets: &mut dyn Iterator<Item = (&str, &[String])>| -> Vec<String> {
        sets.filter(|(_, perms)| perms.iter().any(|x| x == p))
            .map(|(name, _)| name.to_owned())
            .collect()
    };
    let rows: Vec<(String, Vec<String>, Vec<String>)> = resp
        .permissions
        .iter()
        .map(|p| {
            let roles = holders(
                p,
                &mut resp
                    .roles
                    .iter()
                    .map(|r| (r.name.as_str(), r.permissions.as_slice())),
            );
            let groups = holders(
                p,
                &mut resp
                    .groups
                    .iter()
                    .map(|g| (g.name.as_str(), g.permissions.as_slice())),
            );
            (p.clone(), roles, groups)
        })
        .collect();
    if ctx.json() {
        print_list(
            rows.iter().map(
                |(name, roles, groups)| json!({"name": name, "roles": roles, "groups": groups}),
            ),
        );
    } else {
        let mut t = Table::new(&["PERMISSION", "ROLES", "SCOPES"]);
        for (name, roles, groups) in rows {
            let cell = |v: Vec<String>| {
                if v.is_empty() {
                    "-".to_owned()
                } else {
                    v.join(",")
                }
            };
            t.row(vec![name, cell(roles), cell(groups)]);
        }
        t.print();
    }
    Ok(())
}
