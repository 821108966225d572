//! `paddock key`: mint, list, rotate and revoke API keys. Secrets are
//! printed once, when a key is minted or rotated.

use std::time::Duration;

use clap::Subcommand;
use paddock_proto::identity::v1::{
    ApiKey, CreateApiKeyRequest, ListApiKeysRequest, RevokeApiKeyRequest, RotateApiKeyRequest,
};
use serde_json::json;
use tonic::Code;

use crate::commands::{Ctx, all_pages, missing};
use crate::error::CliError;
use crate::names::{self, AGENTS, API_KEYS, Expiry};
use crate::output::{self, Table, print_fields, print_json, print_list};

/// How `key create` names the request's fields.
const CREATE_FLAGS: &[(&str, &str)] = &[
    ("ttl", "--expires"),
    ("never_expires", "--expires never"),
    (
        "settings.max_key_lifetime",
        "`paddock org update --max-key-lifetime`",
    ),
    (
        "settings.allow_non_expiring_keys",
        "`paddock org update --allow-non-expiring-keys`",
    ),
];

/// How `key rotate` names the request's fields.
const ROTATE_FLAGS: &[(&str, &str)] = &[("grace_period", "--grace")];

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
    /// Replace a key: a new key with the same owner, name, role, scope and
    /// lifetime; the old one is revoked, or expires after --grace. The new
    /// secret is printed once.
    Rotate {
        /// The key: its name, id or full resource name.
        key: String,
        /// Keep the old key working this long (e.g. 1h, at most 7d) while
        /// its users switch over.
        #[arg(long, value_name = "DURATION", value_parser = paddock_shared::time::parse_duration)]
        grace: Option<Duration>,
    },
    /// Revoke a key by name, id or full resource name.
    Revoke {
        /// The key: its name, id or full resource name.
        key: String,
    },
}

pub async fn run(ctx: &mut Ctx, cmd: KeyCommand) -> Result<(), CliError> {
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
                .map_err(|s| ctx.id_err()(s).with_flags(CREATE_FLAGS))?
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
                print_list(keys.iter().map(output::api_key_json));
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
        KeyCommand::Rotate { key, grace } => {
            let name = resolve_key(ctx, &key).await?;
            let mut client = ctx.identity()?;
            let resp = client
                .rotate_api_key(RotateApiKeyRequest {
                    name,
                    grace_period: grace.map(paddock_shared::time::proto_duration),
                })
                .await
                .map_err(|s| ctx.id_err()(s).with_flags(ROTATE_FLAGS))?
                .into_inner();
            let new = resp.api_key.ok_or_else(|| missing("API key"))?;
            let old = resp.replaced.ok_or_else(|| missing("replaced key"))?;
            if ctx.json() {
                print_json(&json!({
                    "api_key": output::api_key_json(&new),
                    "secret": resp.secret,
                    "replaced": output::api_key_json(&old),
                }));
            } else {
                print_fields(&output::api_key_fields(&new));
                match &old.revoke_time {
                    Some(_) => outln!("replaced {} (revoked)", old.name),
                    None => outln!(
                        "replaced {} (works until {})",
                        old.name,
                        output::ts_cell(old.expire_time.as_ref())
                    ),
                }
                outln!("secret (shown once): {}", resp.secret);
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
