//! `paddock audit`: query, tail, verify and export the caller's
//! organization's audit trail (needs `audit.read`), and its settings.
//!
//! The commands, paging and the tail's reconnects live here; the filter
//! flags (and the times they take) in `filter`, how an event prints (table
//! and JSON) in `event`.

mod event;
mod filter;

use std::time::Duration;

use clap::Subcommand;
use paddock_proto::audit::v1::audit_service_client::AuditServiceClient;
use paddock_proto::audit::v1::{
    AuditSettings, EventFilter, ExportEventsRequest, GetAuditSettingsRequest, QueryEventsRequest,
    QueryEventsResponse, QueryPlatformEventsRequest, TailEventsRequest, UpdateAuditSettingsRequest,
    VerifyChainRequest, VerifyPlatformChainRequest,
};
use paddock_shared::auth::{self, BearerAuth};
use paddock_shared::client::Channel;
use paddock_shared::secret::Secret;
use serde_json::{Value, json};
use tonic::service::interceptor::InterceptedService;
use tonic::{Code, Status};

use self::event::{HEADER, event_cells, event_json};
use self::filter::FilterArgs;
use crate::Global;
use crate::error::CliError;
use crate::names;
use crate::output::{self, Format, Table, print_json};

type AuditClient = AuditServiceClient<InterceptedService<Channel, BearerAuth>>;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Events of your organization, newest first.
    Query {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many events.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        limit: u32,
        /// Oldest first.
        #[arg(long)]
        oldest_first: bool,
        /// The platform chain (refusals that belong to no organization);
        /// needs the bootstrap token.
        #[arg(long)]
        platform: bool,
        /// With --platform: the sealed chain of this deleted organization.
        #[arg(long = "org", requires = "platform")]
        org: Option<String>,
        /// Go on where an earlier query stopped (its next_page_token).
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Follow new events as they are stored, one per line.
    Tail {
        #[command(flatten)]
        filter: FilterArgs,
        /// Resume after this cursor (printed with -o json).
        #[arg(long)]
        after: Option<String>,
    },
    /// Verify your organization's hash chain (exit 0 intact, 1 broken).
    Verify {
        /// First sequence to verify (default the chain's start).
        #[arg(long, default_value_t = 0)]
        from: i64,
        /// Last sequence to verify (default the chain's end).
        #[arg(long, default_value_t = 0)]
        to: i64,
        /// The platform chain; needs the bootstrap token.
        #[arg(long)]
        platform: bool,
        /// With --platform: the sealed chain of this deleted organization.
        #[arg(long = "org", requires = "platform")]
        org: Option<String>,
    },
    /// Every matching event, oldest first, as NDJSON on stdout.
    Export {
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Your organization's audit settings (retention).
    #[command(subcommand)]
    Settings(SettingsCommand),
}

#[derive(Debug, Subcommand)]
pub enum SettingsCommand {
    /// Show the settings (needs audit.read).
    Get,
    /// Change the settings (needs security.manage); the change is itself
    /// an audit event.
    Set {
        /// Delete events older than this many days (0: keep forever).
        #[arg(long, value_parser = clap::value_parser!(i32).range(0..=36_500))]
        retention_days: i32,
    },
}

/// `--org acme` or `--org organizations/acme`, as a resource name.
fn organization_name(org: &str) -> String {
    if org.starts_with("organizations/") {
        org.to_owned()
    } else {
        format!("organizations/{org}")
    }
}

fn client(global: &Global) -> Result<AuditClient, CliError> {
    names::check_endpoint("--audit-endpoint", &global.audit_endpoint)?;
    let token = match global.token.as_deref().map(str::trim) {
        Some(t) if !t.is_empty() => Secret::new(t.to_owned()),
        _ => {
            return Err(CliError::new(
                Code::Unauthenticated,
                "no token: set PADDOCK_TOKEN or pass --token",
            ));
        }
    };
    let bearer =
        BearerAuth::new(&token).map_err(|s| CliError::new(Code::Unauthenticated, s.message()))?;
    let channel =
        auth::lazy_channel(&global.audit_endpoint).map_err(|s| CliError::usage(s.message()))?;
    Ok(AuditServiceClient::with_interceptor(channel, bearer))
}

fn rpc_err(global: &Global) -> impl Fn(Status) -> CliError + '_ {
    move |s| CliError::rpc(s, "audit", &global.audit_endpoint)
}

pub async fn run(global: &Global, cmd: AuditCommand) -> Result<(), CliError> {
    let mut c = client(global)?;
    let json_out = global.output == Format::Json;
    match cmd {
        AuditCommand::Query {
            filter,
            limit,
            oldest_first,
            platform,
            org,
            page_token,
        } => {
            let organization = org.as_deref().map(organization_name).unwrap_or_default();
            let filter = filter.into_filter()?;
            let mut events = Vec::new();
            let mut page_token = page_token.unwrap_or_default();
            let limit = limit as usize;
            while events.len() < limit {
                let req = QueryEventsRequest {
                    parent: String::new(),
                    filter: Some(filter.clone()),
                    page_size: (limit - events.len()).min(1000) as i32,
                    page_token,
                    oldest_first,
                };
                let resp = if platform {
                    c.query_platform_events(QueryPlatformEventsRequest {
                        filter: req.filter,
                        page_size: req.page_size,
                        page_token: req.page_token,
                        oldest_first: req.oldest_first,
                        organization: organization.clone(),
                    })
                    .await
                    .map(|r| {
                        let r = r.into_inner();
                        QueryEventsResponse {
                            events: r.events,
                            next_page_token: r.next_page_token,
                        }
                    })
                } else {
                    c.query_events(req).await.map(|r| r.into_inner())
                }
                .map_err(rpc_err(global))?;
                events.extend(resp.events);
                page_token = resp.next_page_token;
                if page_token.is_empty() {
                    break;
                }
            }
            events.truncate(limit);
            if json_out {
                // Stopped at --limit with more to come: where to go on.
                let mut list = output::list_json(events.iter().map(event_json));
                if !page_token.is_empty() {
                    list["next_page_token"] = Value::String(page_token.clone());
                }
                print_json(&list);
            } else {
                let mut table = Table::new(&HEADER);
                for e in &events {
                    table.row(event_cells(e));
                }
                table.print();
            }
            Ok(())
        }
        AuditCommand::Tail { filter, after } => {
            let filter = filter.into_filter()?;
            tail(global, &mut c, filter, after.unwrap_or_default(), json_out).await
        }
        AuditCommand::Verify {
            from,
            to,
            platform,
            org,
        } => {
            let organization = org.as_deref().map(organization_name).unwrap_or_default();
            if from < 0 || to < 0 || (to != 0 && from > to) {
                return Err(CliError::usage(
                    "--from and --to must be sequences with --from <= --to",
                ));
            }
            let req = VerifyChainRequest {
                parent: String::new(),
                from_sequence: from,
                to_sequence: to,
            };
            let v = if platform {
                c.verify_platform_chain(VerifyPlatformChainRequest {
                    from_sequence: req.from_sequence,
                    to_sequence: req.to_sequence,
                    organization,
                })
                .await
                .map(|r| r.into_inner().result.unwrap_or_default())
            } else {
                c.verify_chain(req).await.map(|r| r.into_inner())
            }
            .map_err(rpc_err(global))?;
            let from_checkpoint = if v.checkpoint_sequence > 0 {
                format!(
                    " from the retention checkpoint at sequence {} ({})",
                    v.checkpoint_sequence,
                    output::ts_cell(v.checkpoint_time.as_ref())
                )
            } else {
                String::new()
            };
            if json_out {
                print_json(&json!({
                    "intact": v.intact,
                    "verified": v.verified,
                    "broken_sequence": v.broken_sequence,
                    "broken_event_id": v.broken_event_id,
                    "problem": v.problem,
                    "checkpoint_sequence": v.checkpoint_sequence,
                    "checkpoint_hash": v.checkpoint_hash,
                    "checkpoint_time": v.checkpoint_time.as_ref().map(output::rfc3339),
                }));
            } else if v.intact {
                outln!("chain intact: {} events{from_checkpoint}", v.verified);
            } else {
                let event = if v.broken_event_id.is_empty() {
                    String::new()
                } else {
                    format!(" (event {})", v.broken_event_id)
                };
                outln!(
                    "chain broken at sequence {}{event}: {} ({} events verified before it)",
                    v.broken_sequence,
                    v.problem,
                    v.verified
                );
            }
            if v.intact {
                Ok(())
            } else {
                Err(CliError::Silent)
            }
        }
        AuditCommand::Export { filter } => {
            let filter = filter.into_filter()?;
            let mut stream = c
                .export_events(ExportEventsRequest {
                    parent: String::new(),
                    filter: Some(filter),
                })
                .await
                .map_err(rpc_err(global))?
                .into_inner();
            while let Some(msg) = stream.message().await.map_err(rpc_err(global))? {
                if let Some(e) = msg.event {
                    let mut v = event_json(&e);
                    v["details_json"] = Value::String(e.details_json.clone());
                    outln!("{v}");
                }
            }
            Ok(())
        }
        AuditCommand::Settings(SettingsCommand::Get) => {
            let settings = c
                .get_audit_settings(GetAuditSettingsRequest {
                    name: String::new(),
                })
                .await
                .map_err(rpc_err(global))?
                .into_inner()
                .settings
                .unwrap_or_default();
            print_settings(&settings, json_out);
            Ok(())
        }
        AuditCommand::Settings(SettingsCommand::Set { retention_days }) => {
            let settings = c
                .update_audit_settings(UpdateAuditSettingsRequest {
                    settings: Some(AuditSettings {
                        retention_days,
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["retention_days".into()],
                    }),
                })
                .await
                .map_err(rpc_err(global))?
                .into_inner()
                .settings
                .unwrap_or_default();
            print_settings(&settings, json_out);
            Ok(())
        }
    }
}

fn print_settings(s: &AuditSettings, json_out: bool) {
    if json_out {
        print_json(&json!({
            "name": s.name,
            "retention_days": s.retention_days,
            "update_time": s.update_time.as_ref().map(output::rfc3339),
            "updated_by": s.updated_by,
        }));
        return;
    }
    let retention = if s.retention_days == 0 {
        "forever".to_owned()
    } else {
        format!("{} days", s.retention_days)
    };
    outln!("name:       {}", s.name);
    outln!("retention:  {retention}");
    if s.update_time.is_some() {
        outln!(
            "updated:    {} by {}",
            output::ts_cell(s.update_time.as_ref()),
            s.updated_by
        );
    }
}

/// Follows the trail; reconnects after the cursor of the last event
/// printed when the connection drops, so nothing is missed or repeated.
async fn tail(
    global: &Global,
    c: &mut AuditClient,
    filter: EventFilter,
    mut cursor: String,
    json_out: bool,
) -> Result<(), CliError> {
    let mut connected_once = false;
    loop {
        let stream = c
            .tail_events(TailEventsRequest {
                parent: String::new(),
                filter: Some(filter.clone()),
                after_cursor: cursor.clone(),
            })
            .await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(s) if connected_once && s.code() == Code::Unavailable => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(s) => return Err(rpc_err(global)(s)),
        };
        connected_once = true;
        loop {
            match stream.message().await {
                Ok(Some(msg)) => {
                    if let Some(e) = msg.event {
                        if json_out {
                            let mut v = event_json(&e);
                            v["cursor"] = Value::String(msg.cursor.clone());
                            outln!("{v}");
                        } else {
                            outln!("{}", event_cells(&e).join("  "));
                        }
                    }
                    cursor = msg.cursor;
                }
                Ok(None) => break,
                Err(s) if matches!(s.code(), Code::Unavailable | Code::Unknown) => break,
                Err(s) => return Err(rpc_err(global)(s)),
            }
        }
        // The server went away (restart, shutdown): resume after the cursor.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
