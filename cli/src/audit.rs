//! `paddock audit`: query, tail, verify and export the caller's
//! organization's audit trail (needs `audit.read`).
//!
//! One command group with its filter flags, paging and both renderings
//! (table, JSON): past 600 lines by about 20 plus its tests, kept whole
//! because the pieces are read together.

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use paddock_proto::audit::v1::audit_service_client::AuditServiceClient;
use paddock_proto::audit::v1::{
    AuditEvent, AuditSettings, EventFilter, ExportEventsRequest, GetAuditSettingsRequest, Outcome,
    QueryEventsRequest, QueryEventsResponse, QueryPlatformEventsRequest, TailEventsRequest,
    UpdateAuditSettingsRequest, VerifyChainRequest, VerifyPlatformChainRequest,
};
use paddock_shared::auth::{self, BearerAuth};
use paddock_shared::client::Channel;
use paddock_shared::secret::Secret;
use serde_json::{Value, json};
use tonic::service::interceptor::InterceptedService;
use tonic::{Code, Status};

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

/// `--outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutcomeArg {
    Success,
    Failure,
    Denied,
}

/// Filters of query, tail and export.
#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Actor: a principal id or an email / agent name.
    #[arg(long)]
    actor: Option<String>,
    /// Action prefix, e.g. apikey. or apikey.create.
    #[arg(long)]
    action: Option<String>,
    /// Exact resource name (full, or relative like projects/web).
    #[arg(long)]
    resource: Option<String>,
    /// Only events with this outcome.
    #[arg(long, value_enum)]
    outcome: Option<OutcomeArg>,
    /// Events at or after: a duration ago (1h, 30m, 7d) or RFC 3339.
    #[arg(long, value_parser = parse_time)]
    since: Option<prost_types::Timestamp>,
    /// Events before: a duration ago or RFC 3339.
    #[arg(long, value_parser = parse_time)]
    until: Option<prost_types::Timestamp>,
    /// W3C trace id.
    #[arg(long)]
    trace_id: Option<String>,
}

impl FilterArgs {
    fn into_filter(self) -> Result<EventFilter, CliError> {
        let resource = match self.resource {
            Some(r) if !names::is_full(&r) => {
                return Err(CliError::usage(format!(
                    "invalid --resource {r:?}: give the full name, organizations/{{organization}}/..."
                )));
            }
            r => r.unwrap_or_default(),
        };
        Ok(EventFilter {
            actor: self.actor.unwrap_or_default(),
            action_prefix: self.action.unwrap_or_default(),
            resource,
            outcome: match self.outcome {
                None => Outcome::Unspecified,
                Some(OutcomeArg::Success) => Outcome::Success,
                Some(OutcomeArg::Failure) => Outcome::Failure,
                Some(OutcomeArg::Denied) => Outcome::Denied,
            } as i32,
            start_time: self.since,
            end_time: self.until,
            trace_id: self.trace_id.unwrap_or_default(),
        })
    }
}

/// `1h` (that long ago) or RFC 3339 (`2026-01-02T03:04:05Z`,
/// `2026-01-02T03:04:05.5+02:00`).
pub fn parse_time(text: &str) -> Result<prost_types::Timestamp, String> {
    if let Ok(d) = paddock_shared::time::parse_duration(text) {
        let micros = paddock_shared::time::now_micros()
            .saturating_sub(i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        return Ok(paddock_shared::time::timestamp(micros));
    }
    parse_rfc3339(text).ok_or_else(|| {
        format!("invalid time {text:?}: use a duration ago (1h, 30m, 7d) or RFC 3339 (2026-01-02T03:04:05Z)")
    })
}

/// RFC 3339 with a time and a zone (`Z` or `+02:00`), parsed by
/// prost-types. Its parser also takes a bare date, a time without a zone
/// (as UTC) and `+0200`; those are refused here as before, so a time given
/// without its zone is never guessed.
fn parse_rfc3339(text: &str) -> Option<prost_types::Timestamp> {
    let b = text.as_bytes();
    let zone = match b {
        [.., b'Z' | b'z'] => 1,
        [.., b'+' | b'-', _, _, b':', _, _] => 6,
        _ => return None,
    };
    let shaped = b.len() >= 19 + zone
        && b[4] == b'-'
        && matches!(b[10], b'T' | b't' | b' ')
        && b[b.len() - zone - 1].is_ascii_digit();
    if !shaped {
        return None;
    }
    text.parse().ok()
}

/// RFC 3339 with microseconds, as stored.
fn time_micros(ts: Option<&prost_types::Timestamp>) -> String {
    ts.map_or_else(String::new, |t| {
        let secs = output::rfc3339(t);
        let base = secs.trim_end_matches('Z');
        format!("{base}.{:06}Z", t.nanos / 1000)
    })
}

fn outcome_name(outcome: i32) -> &'static str {
    match Outcome::try_from(outcome).unwrap_or(Outcome::Unspecified) {
        Outcome::Success => "success",
        Outcome::Failure => "failure",
        Outcome::Denied => "denied",
        Outcome::Unspecified => "unspecified",
    }
}

/// One event as JSON, `details` as an object (`export` adds the exact
/// `details_json` the hash covers).
pub fn event_json(e: &AuditEvent) -> Value {
    let actor = e.actor.clone().unwrap_or_default();
    let details = serde_json::from_str::<Value>(&e.details_json)
        .unwrap_or_else(|_| Value::String(e.details_json.clone()));
    json!({
        "id": e.id,
        "time": time_micros(e.time.as_ref()),
        "organization": e.organization,
        "actor": {
            "principal_id": actor.principal_id,
            "kind": output::kind_short(&actor.kind),
            "display_name": actor.display_name,
            "key_id": actor.key_id,
        },
        "action": e.action,
        "resource": e.resource,
        "outcome": outcome_name(e.outcome),
        "error_code": e.error_code,
        "source_service": e.source_service,
        "trace_id": e.trace_id,
        "details": details,
        "sequence": e.sequence,
        "previous_hash": e.previous_hash,
        "hash": e.hash,
    })
}

fn actor_cell(e: &AuditEvent) -> String {
    let actor = e.actor.clone().unwrap_or_default();
    if !actor.display_name.is_empty() {
        actor.display_name
    } else if !actor.principal_id.is_empty() {
        actor.principal_id
    } else {
        "-".into()
    }
}

fn event_cells(e: &AuditEvent) -> Vec<String> {
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    let outcome = if e.error_code.is_empty() {
        outcome_name(e.outcome).to_owned()
    } else {
        format!("{} ({})", outcome_name(e.outcome), e.error_code)
    };
    vec![
        output::ts_cell(e.time.as_ref()),
        e.sequence.to_string(),
        actor_cell(e),
        e.action.clone(),
        dash(&e.resource),
        outcome,
    ]
}

const HEADER: [&str; 6] = ["TIME", "SEQ", "ACTOR", "ACTION", "RESOURCE", "OUTCOME"];

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times() {
        let t = parse_rfc3339("1970-01-01T00:00:00Z").expect("epoch");
        assert_eq!((t.seconds, t.nanos), (0, 0));
        let t = parse_rfc3339("2026-01-02T03:04:05.5+02:00").expect("offset");
        assert_eq!(t.seconds, 1_767_323_045 - 7200);
        assert_eq!(t.nanos, 500_000_000);
        assert_eq!(
            output::rfc3339(&parse_rfc3339("2025-03-01T12:00:00Z").expect("t")),
            "2025-03-01T12:00:00Z"
        );
        for bad in [
            "",
            "2026-01-02",
            "2026-13-02T03:04:05Z",
            "2026-01-02T03:04:05",
            "2026-01-02T03:04:05+0200",
            "2026-01-02T03:04:05 Z",
            "2026-01-02Z",
            "2026-01-02T03:04Z",
            "+12026-01-02T03:04:05Z",
            "x",
        ] {
            assert!(parse_rfc3339(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn durations_are_ago() {
        let t = parse_time("1h").expect("1h");
        let now = paddock_shared::time::now_micros() / 1_000_000;
        assert!((now - 3600 - t.seconds).abs() <= 2);
        assert!(parse_time("yesterday").is_err());
    }
}
