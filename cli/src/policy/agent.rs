//! `paddock policy`: show and change an agent's policy (resource bounds
//! and defaults, network, tools, credentials).

use std::time::Duration;

use clap::{Args, Subcommand};
use paddock_policy as builtin;
use paddock_proto::authz::v1::{
    AgentPolicy, Effect, GetAgentPolicyRequest, NetworkMode, NetworkRule, ResourceLimits, ToolRule,
    UpdateAgentPolicyRequest,
};

use super::{
    AMOUNT_FLAGS, MaxArgs, NetworkArg, amount, amounts, client, label, list_cell, missing,
    mode_word, parse_cpus, parse_size, time_json, update_err, updated_cell,
};
use crate::commands::Ctx;
use crate::error::CliError;
use crate::names::{self, AGENTS};
use crate::output::{print_fields, print_json};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Show an agent's policy (the default one when none was set).
    Get {
        /// The agent: its id (bot) or organizations/{o}/agents/{a}.
        agent: String,
    },
    /// Change an agent's policy: only the fields the flags name. Lists
    /// (tools, network rules, credentials) are replaced as a whole.
    Set(Box<PolicySetArgs>),
}

#[derive(Debug, Args)]
pub struct PolicySetArgs {
    /// The agent: its id (bot) or organizations/{o}/agents/{a}.
    agent: String,
    #[command(flatten)]
    max: MaxArgs,
    /// Most concurrent sandboxes of this agent (0: the organization's bound).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(0..))]
    max_sandboxes: Option<i32>,
    /// Network mode.
    #[arg(long, value_enum)]
    network: Option<NetworkArg>,
    /// CPUs a sandbox gets when it asks for none.
    #[arg(long, value_name = "N", value_parser = parse_cpus)]
    default_cpus: Option<f64>,
    /// Memory a sandbox gets when it asks for none.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    default_memory: Option<i64>,
    /// Processes a sandbox gets when it asks for none.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(0..))]
    default_pids: Option<i64>,
    /// Disk a sandbox gets when it asks for none.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    default_disk: Option<i64>,
    /// Lifetime a sandbox gets when it asks for none.
    #[arg(long, value_name = "DURATION", value_parser = paddock_shared::time::parse_duration)]
    default_ttl: Option<Duration>,
    /// Allow MCP tools matching server/tool (glob; repeat). Replaces the tool rules.
    #[arg(long = "allow-tool", value_name = "GLOB")]
    allow_tools: Vec<String>,
    /// Deny MCP tools matching server/tool (glob; repeat; wins over allow).
    #[arg(long = "deny-tool", value_name = "GLOB")]
    deny_tools: Vec<String>,
    /// Remove every tool rule (no tool is allowed).
    #[arg(long, conflicts_with_all = ["allow_tools", "deny_tools"])]
    clear_tools: bool,
    /// Allow a domain (glob, e.g. *.github.com; repeat). Replaces the network rules.
    #[arg(long = "allow-domain", value_name = "GLOB")]
    allow_domains: Vec<String>,
    /// Deny a domain (glob; repeat).
    #[arg(long = "deny-domain", value_name = "GLOB")]
    deny_domains: Vec<String>,
    /// Allow a CIDR (e.g. 10.0.0.0/8; repeat).
    #[arg(long = "allow-cidr", value_name = "CIDR")]
    allow_cidrs: Vec<String>,
    /// Deny a CIDR (repeat).
    #[arg(long = "deny-cidr", value_name = "CIDR")]
    deny_cidrs: Vec<String>,
    /// Remove every network rule.
    #[arg(long, conflicts_with_all = ["allow_domains", "deny_domains", "allow_cidrs", "deny_cidrs"])]
    clear_network_rules: bool,
    /// A credential the agent's sandboxes may mount (repeat). Replaces the list.
    #[arg(long = "credential", value_name = "NAME")]
    credentials: Vec<String>,
    /// Remove every credential.
    #[arg(long, conflicts_with = "credentials")]
    clear_credentials: bool,
}

impl PolicySetArgs {
    /// The policy fields the flags name, and the mask naming them.
    fn request(&self, name: String) -> Result<UpdateAgentPolicyRequest, CliError> {
        let mut p = AgentPolicy {
            name,
            ..Default::default()
        };
        let mut paths = Vec::new();
        let mut max = ResourceLimits::default();
        self.max.apply(&mut max, &mut paths);
        let mut defaults = ResourceLimits::default();
        amounts(
            "defaults",
            &mut defaults,
            &mut paths,
            (
                self.default_cpus,
                self.default_memory,
                self.default_pids,
                self.default_disk,
                self.default_ttl,
            ),
        );
        p.max = Some(max);
        p.defaults = Some(defaults);
        if let Some(n) = self.max_sandboxes {
            p.max_sandboxes = n;
            paths.push("max_sandboxes".into());
        }
        if let Some(mode) = self.network {
            p.network_mode = mode.mode() as i32;
            paths.push("network_mode".into());
        }
        if self.clear_tools || !self.allow_tools.is_empty() || !self.deny_tools.is_empty() {
            let rule = |effect: Effect| {
                move |pattern: &String| ToolRule {
                    effect: effect as i32,
                    pattern: pattern.clone(),
                }
            };
            p.tool_rules = (self.deny_tools.iter().map(rule(Effect::Deny)))
                .chain(self.allow_tools.iter().map(rule(Effect::Allow)))
                .collect();
            paths.push("tool_rules".into());
        }
        let network_rules = [
            (&self.deny_domains, Effect::Deny, false),
            (&self.deny_cidrs, Effect::Deny, true),
            (&self.allow_domains, Effect::Allow, false),
            (&self.allow_cidrs, Effect::Allow, true),
        ];
        if self.clear_network_rules || network_rules.iter().any(|(v, _, _)| !v.is_empty()) {
            for (values, effect, is_cidr) in network_rules {
                for v in values {
                    let (domain, cidr) = if is_cidr {
                        (String::new(), v.clone())
                    } else {
                        (v.clone(), String::new())
                    };
                    p.network_rules.push(NetworkRule {
                        effect: effect as i32,
                        domain,
                        cidr,
                        ports: Vec::new(),
                    });
                }
            }
            paths.push("network_rules".into());
        }
        if self.clear_credentials || !self.credentials.is_empty() {
            p.credentials = self.credentials.clone();
            paths.push("credentials".into());
        }
        if paths.is_empty() {
            return Err(CliError::usage(
                "nothing to set: pass at least one flag, e.g. --max-memory 2g or --network allowlist --allow-domain '*.github.com' (see paddock policy set --help)",
            ));
        }
        Ok(UpdateAgentPolicyRequest {
            policy: Some(p),
            update_mask: Some(prost_types::FieldMask { paths }),
        })
    }
}

/// How `policy set` names the policy's fields; the bounds it meets are
/// `security set` flags.
const POLICY_FLAGS: &[(&str, &str)] = &[
    ("defaults.cpus", "--default-cpus"),
    ("defaults.memory_bytes", "--default-memory"),
    ("defaults.pids", "--default-pids"),
    ("defaults.disk_bytes", "--default-disk"),
    ("defaults.ttl", "--default-ttl"),
    ("max_sandboxes", "--max-sandboxes"),
    ("network_mode", "--network"),
    (
        "securitySettings max.cpus",
        "`paddock security set --max-cpus`",
    ),
    (
        "securitySettings max.memory_bytes",
        "`paddock security set --max-memory`",
    ),
    (
        "securitySettings max.pids",
        "`paddock security set --max-pids`",
    ),
    (
        "securitySettings max.disk_bytes",
        "`paddock security set --max-disk`",
    ),
    (
        "securitySettings max.ttl",
        "`paddock security set --max-ttl`",
    ),
    (
        "securitySettings max_sandboxes_per_agent",
        "`paddock security set --max-sandboxes-per-agent`",
    ),
    (
        "securitySettings max_network_mode",
        "`paddock security set --max-network`",
    ),
];

pub async fn policy(ctx: &mut Ctx, cmd: PolicyCommand) -> Result<(), CliError> {
    match cmd {
        PolicyCommand::Get { agent } => {
            let name = format!("{}/policy", ctx.expand(AGENTS, &agent).await?);
            let policy = client(ctx)?
                .get_agent_policy(GetAgentPolicyRequest { name })
                .await
                .map_err(ctx.authz_err())?
                .into_inner()
                .policy
                .ok_or_else(|| missing("policy"))?;
            show_policy(ctx, &policy);
        }
        PolicyCommand::Set(args) => {
            // Flags first: a usage error costs no round trip.
            args.request(String::new())?;
            let name = format!("{}/policy", ctx.expand(AGENTS, &args.agent).await?);
            let policy = client(ctx)?
                .update_agent_policy(args.request(name)?)
                .await
                .map_err(update_err(ctx, &[POLICY_FLAGS, AMOUNT_FLAGS]))?
                .into_inner()
                .policy
                .ok_or_else(|| missing("policy"))?;
            show_policy(ctx, &policy);
            if matches!(
                NetworkMode::try_from(policy.network_mode),
                Ok(NetworkMode::Allowlist | NetworkMode::Denylist)
            ) {
                eprintln!(
                    "warning: {} network mode is not enforced yet: this release has no egress \
                     proxy, so a run that uses it is refused; run with --network none (or \
                     set --network none or open) meanwhile",
                    match NetworkMode::try_from(policy.network_mode) {
                        Ok(NetworkMode::Denylist) => "the denylist",
                        _ => "the allowlist",
                    }
                );
            }
        }
    }
    Ok(())
}

fn show_policy(ctx: &Ctx, p: &AgentPolicy) {
    if ctx.json() {
        let mut v = paddock_policy::json::agent_policy(p);
        v["update_time"] = time_json(p.update_time.as_ref());
        print_json(&v);
    } else {
        print_fields(&policy_fields(p));
    }
}

fn effect_word(value: i32) -> &'static str {
    match Effect::try_from(value) {
        Ok(Effect::Allow) => "allow",
        Ok(Effect::Deny) => "deny",
        _ => "?",
    }
}

pub fn policy_fields(p: &AgentPolicy) -> Vec<(&'static str, String)> {
    let mut fields = vec![("name", p.name.clone())];
    let builtin_defaults = builtin::builtin_defaults();
    for (prefix, limits) in [("max", &p.max), ("default", &p.defaults)] {
        let limits = (*limits).unwrap_or_default();
        for a in builtin::Amount::ALL {
            let cell = match (amount(a, &limits), prefix) {
                (Some(v), _) => v,
                (None, "max") => "organization's bound".to_owned(),
                (None, _) => format!(
                    "built-in ({})",
                    amount(a, &builtin_defaults).unwrap_or_default()
                ),
            };
            fields.push((label(prefix, a), cell));
        }
    }
    fields.push((
        "max sandboxes",
        if p.max_sandboxes > 0 {
            p.max_sandboxes.to_string()
        } else {
            "organization's per-agent bound".to_owned()
        },
    ));
    fields.push(("network", mode_word(p.network_mode)));
    fields.push((
        "network rules",
        list_cell(
            p.network_rules
                .iter()
                .map(|r| {
                    let target = if r.domain.is_empty() {
                        &r.cidr
                    } else {
                        &r.domain
                    };
                    let ports = if r.ports.is_empty() {
                        String::new()
                    } else {
                        format!(
                            ":{}",
                            r.ports
                                .iter()
                                .map(u32::to_string)
                                .collect::<Vec<_>>()
                                .join(",")
                        )
                    };
                    format!("{} {target}{ports}", effect_word(r.effect))
                })
                .collect(),
        ),
    ));
    fields.push((
        "tool rules",
        list_cell(
            p.tool_rules
                .iter()
                .map(|r| format!("{} {}", effect_word(r.effect), r.pattern))
                .collect(),
        ),
    ));
    fields.push((
        "credentials",
        list_cell(
            p.credentials
                .iter()
                .map(|c| names::short(c).to_owned())
                .collect(),
        ),
    ));
    fields.push((
        "updated",
        updated_cell(p.update_time.as_ref(), &p.updated_by),
    ));
    fields
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    fn set_args(args: &[&str]) -> Result<PolicySetArgs, clap::Error> {
        let mut argv = vec!["paddock", "policy", "set", "bot"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Policy(PolicyCommand::Set(a)) => Ok(*a),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn policy_flags_become_a_masked_update() {
        let args = set_args(&[
            "--max-memory",
            "2g",
            "--max-ttl",
            "24h",
            "--network",
            "allowlist",
            "--allow-domain",
            "*.github.com",
            "--deny-cidr",
            "10.0.0.0/8",
            "--allow-tool",
            "github/*",
            "--deny-tool",
            "github/delete_*",
            "--credential",
            "gh",
        ])
        .expect("parses");
        let req = args.request("n".into()).expect("request");
        let paths = req.update_mask.expect("mask").paths;
        assert_eq!(
            paths,
            vec![
                "max.memory_bytes",
                "max.ttl",
                "network_mode",
                "tool_rules",
                "network_rules",
                "credentials"
            ]
        );
        let p = req.policy.expect("policy");
        assert_eq!(p.max.expect("max").memory_bytes, 2 << 30);
        assert_eq!(p.tool_rules.len(), 2);
        assert_eq!(p.tool_rules[0].effect(), Effect::Deny);
        assert_eq!(p.network_rules.len(), 2);
        assert_eq!(p.network_rules[0].cidr, "10.0.0.0/8");

        assert!(
            set_args(&[]).expect("parses").request("n".into()).is_err(),
            "no flag is a usage error"
        );
        let clear = set_args(&["--clear-tools"]).expect("parses");
        let req = clear.request("n".into()).expect("request");
        assert_eq!(req.update_mask.expect("mask").paths, vec!["tool_rules"]);
        assert!(set_args(&["--clear-tools", "--allow-tool", "a/b"]).is_err());
        assert!(set_args(&["--max-memory", "lots"]).is_err());
        assert!(set_args(&["--network", "wide"]).is_err());
        assert!(set_args(&["--max-cpus", "-1"]).is_err());
    }

    #[test]
    fn default_policies_read_as_inherited() {
        let fields = policy_fields(&builtin::default_policy("acme", "bot"));
        let get = |k: &str| {
            fields
                .iter()
                .find(|(l, _)| *l == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(get("max memory"), "organization's bound");
        assert_eq!(get("default memory"), "built-in (512MiB)");
        assert_eq!(get("default ttl"), "built-in (1h)");
        assert_eq!(get("network"), "none");
        assert_eq!(get("updated"), "never (built-in defaults)");
    }
}
