//! `paddock invite`: list the organization's invites and revoke pending
//! ones (members.manage). Codes are never shown again after `member invite`:
//! no RPC returns them.

use clap::Subcommand;
use paddock_proto::identity::v1::{Invite, InviteState, ListInvitesRequest, RevokeInviteRequest};
use serde_json::{Value, json};

use crate::commands::{Ctx, all_pages, missing};
use crate::error::CliError;
use crate::names::{self, INVITES};
use crate::output::{self, Table, print_json};

#[derive(Debug, Subcommand)]
pub enum InviteCommand {
    /// List pending invites (email, role, inviter, expiry; never the code).
    List {
        /// Include accepted, expired and revoked invites.
        #[arg(long, visible_alias = "show-inactive")]
        all: bool,
    },
    /// Revoke a pending invite by id or full resource name: its code stops
    /// working.
    Revoke {
        /// The invite's id (from `invite list`) or full resource name.
        id: String,
    },
}

fn state_name(state: i32) -> &'static str {
    match InviteState::try_from(state) {
        Ok(InviteState::Pending) => "pending",
        Ok(InviteState::Accepted) => "accepted",
        Ok(InviteState::Expired) => "expired",
        Ok(InviteState::Revoked) => "revoked",
        _ => "unspecified",
    }
}

pub fn invite_json(i: &Invite) -> Value {
    let ts = |t: Option<&prost_types::Timestamp>| t.map(output::rfc3339);
    json!({
        "name": i.name,
        "email": i.email,
        "role": i.role,
        "inviter": i.inviter,
        "state": state_name(i.state),
        "create_time": ts(i.create_time.as_ref()),
        "expire_time": ts(i.expire_time.as_ref()),
        "accept_time": ts(i.accept_time.as_ref()),
        "revoke_time": ts(i.revoke_time.as_ref()),
    })
}

pub async fn run(ctx: &mut Ctx, cmd: InviteCommand) -> Result<(), CliError> {
    match cmd {
        InviteCommand::List { all } => {
            let parent = ctx.parent().await?;
            let client = ctx.identity()?;
            let invites = all_pages(|page_token| {
                let mut client = client.clone();
                let req = ListInvitesRequest {
                    parent: parent.clone(),
                    page_size: 0,
                    page_token,
                    show_inactive: all,
                };
                async move {
                    let r = client.list_invites(req).await?.into_inner();
                    Ok((r.invites, r.next_page_token))
                }
            })
            .await
            .map_err(ctx.id_err())?;
            if ctx.json() {
                output::print_list(invites.iter().map(invite_json));
            } else {
                let mut t = Table::new(&["ID", "EMAIL", "ROLE", "INVITER", "EXPIRES", "STATE"]);
                for i in &invites {
                    t.row(vec![
                        names::short(&i.name).to_owned(),
                        i.email.clone(),
                        i.role.clone(),
                        output::owner_cell(&i.inviter),
                        output::ts_cell(i.expire_time.as_ref()),
                        state_name(i.state).to_owned(),
                    ]);
                }
                t.print();
            }
            Ok(())
        }
        InviteCommand::Revoke { id } => {
            let name = ctx.expand(INVITES, &id).await?;
            let mut client = ctx.identity()?;
            let invite = client
                .revoke_invite(RevokeInviteRequest { name: name.clone() })
                .await
                .map_err(ctx.id_err())?
                .into_inner()
                .invite
                .ok_or_else(|| missing("invite"))?;
            if ctx.json() {
                print_json(&invite_json(&invite));
            } else {
                outln!(
                    "revoked {} ({} as {})",
                    invite.name,
                    invite.email,
                    invite.role
                );
            }
            Ok(())
        }
    }
}
