//! `paddock org`: create and list organizations (the platform bootstrap
//! token), and show, update and delete the caller's own.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use paddock_proto::identity::v1::{
    CreateOrganizationRequest, DeleteOrganizationRequest, GetOrganizationRequest,
    ListOrganizationsRequest, Organization, OrganizationSettings, UpdateOrganizationRequest,
};
use serde_json::json;
use tonic::Code;

use crate::commands::{Ctx, all_pages, missing, print_deleted, update_mask};
use crate::error::CliError;
use crate::global::TokenSource;
use crate::output::{self, Table, print_fields, print_json, print_list};

/// The bootstrap token file when neither a flag nor the context names one.
const DEFAULT_BOOTSTRAP_TOKEN_FILE: &str = "paddock-data/bootstrap-token";

/// How `org update` names the organization's fields.
const ORG_FLAGS: &[(&str, &str)] = &[
    ("display_name", "--display-name"),
    ("settings.max_key_lifetime", "--max-key-lifetime"),
    (
        "settings.allow_non_expiring_keys",
        "--allow-non-expiring-keys",
    ),
];

#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Create an organization and its first owner (needs the bootstrap token).
    Create {
        /// Organization id, e.g. acme.
        name: String,
        /// Email of the first owner.
        #[arg(long)]
        owner: String,
        /// A name for people, e.g. "Acme Corp".
        #[arg(long)]
        display_name: Option<String>,
        /// Read the bootstrap token from this file when neither --token nor
        /// PADDOCK_TOKEN is set [default: the context's, else
        /// paddock-data/bootstrap-token].
        #[arg(long)]
        bootstrap_token_file: Option<PathBuf>,
    },
    /// List every organization (needs the bootstrap token).
    List {
        /// Read the bootstrap token from this file when neither --token nor
        /// PADDOCK_TOKEN is set [default: the context's, else
        /// paddock-data/bootstrap-token].
        #[arg(long)]
        bootstrap_token_file: Option<PathBuf>,
    },
    /// Show the caller's organization.
    Get,
    /// Change the caller's organization: only the fields the flags name
    /// (owners: org.update).
    Update {
        /// A name for people.
        #[arg(long)]
        display_name: Option<String>,
        /// Longest lifetime a new key may have, e.g. 30d (at most 10 years).
        #[arg(long, value_name = "DURATION", value_parser = crate::names::parse_positive_duration)]
        max_key_lifetime: Option<Duration>,
        /// Whether keys that never expire may be minted.
        #[arg(long, value_name = "BOOL")]
        allow_non_expiring_keys: Option<bool>,
    },
    /// Delete the caller's organization with everything in it.
    Delete {
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
}

/// Platform commands use the bootstrap token: `--token`/`PADDOCK_TOKEN`
/// when set, else the file (never a context's member key).
fn use_bootstrap_token(ctx: &mut Ctx, file: Option<PathBuf>) -> Result<(), CliError> {
    let global = ctx.global();
    if matches!(global.token_source, TokenSource::Flag | TokenSource::Env) {
        return Ok(());
    }
    let path = file
        .or_else(|| global.bootstrap_token_file.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BOOTSTRAP_TOKEN_FILE));
    let text = std::fs::read_to_string(&path).map_err(|e| {
        CliError::new(
            Code::Unauthenticated,
            format!(
                "no bootstrap token: pass --token or --bootstrap-token-file (cannot read {}: {e})",
                path.display()
            ),
        )
    })?;
    ctx.set_token(text.trim().to_owned());
    Ok(())
}

pub async fn run(ctx: &mut Ctx, cmd: OrgCommand) -> Result<(), CliError> {
    match cmd {
        OrgCommand::Create {
            name,
            owner,
            display_name,
            bootstrap_token_file,
        } => {
            use_bootstrap_token(ctx, bootstrap_token_file)?;
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
                outln!("save it in a context with: paddock login   (paste the secret)");
            }
            Ok(())
        }
        OrgCommand::List {
            bootstrap_token_file,
        } => {
            use_bootstrap_token(ctx, bootstrap_token_file)?;
            let client = ctx.identity()?;
            let orgs = all_pages(|page_token| {
                let mut client = client.clone();
                let req = ListOrganizationsRequest {
                    page_size: 0,
                    page_token,
                };
                async move {
                    let r = client.list_organizations(req).await?.into_inner();
                    Ok((r.organizations, r.next_page_token))
                }
            })
            .await
            .map_err(ctx.id_err())?;
            if ctx.json() {
                print_list(orgs.iter().map(output::organization_json));
            } else {
                let mut t = Table::new(&["NAME", "DISPLAY NAME", "MAX KEY LIFETIME", "CREATED"]);
                for o in &orgs {
                    let settings = o.settings.unwrap_or_default();
                    t.row(vec![
                        crate::names::short(&o.name).to_owned(),
                        o.display_name.clone(),
                        settings
                            .max_key_lifetime
                            .map_or_else(|| "-".to_owned(), |d| output::human_seconds(d.seconds)),
                        output::ts_cell(o.create_time.as_ref()),
                    ]);
                }
                t.print();
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
            show(
                ctx,
                &resp.organization.ok_or_else(|| missing("organization"))?,
            );
            Ok(())
        }
        OrgCommand::Update {
            display_name,
            max_key_lifetime,
            allow_non_expiring_keys,
        } => {
            let mask = update_mask(&[
                ("display_name", "--display-name", display_name.is_some()),
                (
                    "settings.max_key_lifetime",
                    "--max-key-lifetime",
                    max_key_lifetime.is_some(),
                ),
                (
                    "settings.allow_non_expiring_keys",
                    "--allow-non-expiring-keys",
                    allow_non_expiring_keys.is_some(),
                ),
            ])?;
            let name = ctx.parent().await?;
            let mut client = ctx.identity()?;
            let resp = client
                .update_organization(UpdateOrganizationRequest {
                    organization: Some(Organization {
                        name,
                        display_name: display_name.unwrap_or_default(),
                        settings: Some(OrganizationSettings {
                            max_key_lifetime: max_key_lifetime
                                .map(paddock_shared::time::proto_duration),
                            allow_non_expiring_keys: allow_non_expiring_keys.unwrap_or_default(),
                        }),
                        ..Default::default()
                    }),
                    update_mask: Some(mask),
                })
                .await
                .map_err(|s| ctx.id_err()(s).with_flags(ORG_FLAGS))?
                .into_inner();
            show(
                ctx,
                &resp.organization.ok_or_else(|| missing("organization"))?,
            );
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

fn show(ctx: &Ctx, org: &Organization) {
    if ctx.json() {
        print_json(&output::organization_json(org));
    } else {
        print_fields(&output::organization_fields(org));
    }
}
