//! `paddock member`: invite people, redeem an invite, list the
//! organization's members, change their roles and remove them; and the
//! email-to-member lookup other commands use.

use std::time::Duration;

use clap::Subcommand;
use paddock_proto::identity::v1::{
    AcceptInviteRequest, CreateInviteRequest, DeleteMemberRequest, ListMembersRequest, Member,
    UpdateMemberRequest,
};
use serde_json::json;
use tonic::Code;

use crate::commands::{Ctx, all_pages, field_mask, missing, print_deleted};
use crate::error::CliError;
use crate::names::{self, MEMBERS};
use crate::output::{self, Table, print_json, print_list};

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

pub async fn run(ctx: &mut Ctx, cmd: MemberCommand) -> Result<(), CliError> {
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
