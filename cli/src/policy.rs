//! `paddock policy` (an agent's policy: resource bounds and defaults,
//! network, tools, credentials) and `paddock security` (the organization's
//! security settings, which bound every policy). `set` sends only the
//! fields its flags name, as an update mask; `0` puts an amount back to the
//! organization's bound or the built-in default.
//!
//! Long (about 780 lines without tests) because policy and security settings
//! share the flag-to-update-mask code; it splits into `policy` and
//! `security` when the policy model moves to a shared crate (issue 10).

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use paddock_policy as builtin;
use paddock_proto::authz::v1::policy_service_client::PolicyServiceClient;
use paddock_proto::authz::v1::{
    AgentPolicy, Effect, GetAgentPolicyRequest, GetSecuritySettingsRequest, HardeningRelaxations,
    NetworkMode, NetworkRule, ResourceLimits, SecuritySettings, ToolRule, UpdateAgentPolicyRequest,
    UpdateSecuritySettingsRequest,
};
use paddock_shared::auth::{self, BearerAuth};
use paddock_shared::client::Channel;
use serde_json::Value;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;

use crate::commands::Ctx;
use crate::error::CliError;
use crate::names::{self, AGENTS};
use crate::output::{self, print_fields, print_json};

type PolicyClient = PolicyServiceClient<InterceptedService<Channel, BearerAuth>>;

fn client(ctx: &Ctx) -> Result<PolicyClient, CliError> {
    let endpoint = &ctx.global().authz_endpoint;
    names::check_endpoint("--authz-endpoint", endpoint)?;
    let channel = auth::lazy_channel(endpoint).map_err(|s| CliError::usage(s.message()))?;
    Ok(PolicyServiceClient::with_interceptor(
        channel,
        ctx.bearer()?,
    ))
}

/// `--network` and `--max-network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworkArg {
    None,
    Allowlist,
    Denylist,
    Open,
}

impl NetworkArg {
    fn mode(self) -> NetworkMode {
        match self {
            NetworkArg::None => NetworkMode::None,
            NetworkArg::Allowlist => NetworkMode::Allowlist,
            NetworkArg::Denylist => NetworkMode::Denylist,
            NetworkArg::Open => NetworkMode::Open,
        }
    }
}

/// Amount flags shared by `policy set` (bounds) and `security set`.
#[derive(Debug, Clone, Args)]
pub struct MaxArgs {
    /// Most CPUs a sandbox may ask for (e.g. 0.5, 2).
    #[arg(long, value_name = "N", value_parser = parse_cpus)]
    max_cpus: Option<f64>,
    /// Most memory (e.g. 512m, 2g).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_memory: Option<i64>,
    /// Most processes.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(0..))]
    max_pids: Option<i64>,
    /// Most disk (e.g. 10g).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_disk: Option<i64>,
    /// Longest lifetime (e.g. 30m, 24h).
    #[arg(long, value_name = "DURATION", value_parser = paddock_shared::time::parse_duration)]
    max_ttl: Option<Duration>,
}

impl MaxArgs {
    /// Sets the named amounts in `limits` and their mask paths.
    fn apply(&self, limits: &mut ResourceLimits, paths: &mut Vec<String>) {
        amounts(
            "max",
            limits,
            paths,
            (
                self.max_cpus,
                self.max_memory,
                self.max_pids,
                self.max_disk,
                self.max_ttl,
            ),
        );
    }
}

type Amounts = (
    Option<f64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<Duration>,
);

fn amounts(
    prefix: &str,
    limits: &mut ResourceLimits,
    paths: &mut Vec<String>,
    (cpus, memory, pids, disk, ttl): Amounts,
) {
    let mut set = |field: &str| paths.push(format!("{prefix}.{field}"));
    if let Some(v) = cpus {
        limits.cpus = v;
        set("cpus");
    }
    if let Some(v) = memory {
        limits.memory_bytes = v;
        set("memory_bytes");
    }
    if let Some(v) = pids {
        limits.pids = v;
        set("pids");
    }
    if let Some(v) = disk {
        limits.disk_bytes = v;
        set("disk_bytes");
    }
    if let Some(v) = ttl {
        limits.ttl = Some(paddock_shared::time::proto_duration(v));
        set("ttl");
    }
}

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

/// The amount flags both commands share, by the fields they set.
const AMOUNT_FLAGS: &[(&str, &str)] = &[
    ("max.cpus", "--max-cpus"),
    ("max.memory_bytes", "--max-memory"),
    ("max.pids", "--max-pids"),
    ("max.disk_bytes", "--max-disk"),
    ("max.ttl", "--max-ttl"),
];

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

/// How `security set` names the settings' fields.
const SECURITY_FLAGS: &[(&str, &str)] = &[
    ("max_sandboxes_per_agent", "--max-sandboxes-per-agent"),
    ("max_sandboxes", "--max-sandboxes"),
    ("max_network_mode", "--max-network"),
];

/// A failed update, its fields renamed to the flags of the command.
fn update_err<'a>(
    ctx: &'a Ctx,
    flags: &'a [&'a [(&'a str, &'a str)]],
) -> impl Fn(tonic::Status) -> CliError + 'a {
    move |s| {
        let all: Vec<(&str, &str)> = flags.iter().flat_map(|f| f.iter().copied()).collect();
        ctx.authz_err()(s).with_flags(&all)
    }
}

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

#[derive(Debug, Subcommand)]
pub enum SecurityCommand {
    /// Show the organization's security settings.
    Get,
    /// Change the organization's security settings (owners only): only the
    /// fields the flags name.
    Set(Box<SecuritySetArgs>),
}

#[derive(Debug, Args)]
pub struct SecuritySetArgs {
    #[command(flatten)]
    max: MaxArgs,
    /// Most concurrent sandboxes in the organization (0: built-in 20).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(0..))]
    max_sandboxes: Option<i32>,
    /// Most concurrent sandboxes of one agent (0: built-in 5).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(0..))]
    max_sandboxes_per_agent: Option<i32>,
    /// The widest network mode an agent policy may have.
    #[arg(long, value_enum)]
    max_network: Option<NetworkArg>,
    /// A Linux capability sandboxes may keep (e.g. NET_BIND_SERVICE; repeat). Replaces the list.
    #[arg(long = "allow-capability", value_name = "CAP")]
    capabilities: Vec<String>,
    /// Drop every capability again.
    #[arg(long, conflicts_with = "capabilities")]
    clear_capabilities: bool,
    /// Allow gaining privileges (setuid binaries).
    #[arg(long, value_name = "BOOL")]
    allow_new_privileges: Option<bool>,
    /// Run sandboxes without Docker's default seccomp profile.
    #[arg(long, value_name = "BOOL")]
    unconfined_seccomp: Option<bool>,
    /// Give sandboxes a writable root filesystem.
    #[arg(long, value_name = "BOOL")]
    writable_root_filesystem: Option<bool>,
    /// Let sandboxes run as root (uid 0).
    #[arg(long, value_name = "BOOL")]
    allow_root_user: Option<bool>,
    /// An image sandboxes may run: a reference or a glob (node:22, node:*,
    /// ghcr.io/acme/*; * for any); repeat. Replaces the list. None is
    /// approved until an owner approves some.
    #[arg(long = "allow-image", value_name = "IMAGE")]
    images: Vec<String>,
    /// Approve no image again.
    #[arg(long, conflicts_with = "images")]
    clear_images: bool,
}

impl SecuritySetArgs {
    fn request(&self) -> Result<UpdateSecuritySettingsRequest, CliError> {
        let mut s = SecuritySettings::default();
        let mut paths = Vec::new();
        let mut max = ResourceLimits::default();
        self.max.apply(&mut max, &mut paths);
        s.max = Some(max);
        if let Some(n) = self.max_sandboxes {
            s.max_sandboxes = n;
            paths.push("max_sandboxes".into());
        }
        if let Some(n) = self.max_sandboxes_per_agent {
            s.max_sandboxes_per_agent = n;
            paths.push("max_sandboxes_per_agent".into());
        }
        if let Some(mode) = self.max_network {
            s.max_network_mode = mode.mode() as i32;
            paths.push("max_network_mode".into());
        }
        let mut h = HardeningRelaxations::default();
        if self.clear_capabilities || !self.capabilities.is_empty() {
            h.allowed_capabilities = self.capabilities.clone();
            paths.push("hardening.allowed_capabilities".into());
        }
        for (value, slot, path) in [
            (
                self.allow_new_privileges,
                &mut h.allow_new_privileges,
                "allow_new_privileges",
            ),
            (
                self.unconfined_seccomp,
                &mut h.unconfined_seccomp,
                "unconfined_seccomp",
            ),
            (
                self.writable_root_filesystem,
                &mut h.writable_root_filesystem,
                "writable_root_filesystem",
            ),
            (
                self.allow_root_user,
                &mut h.allow_root_user,
                "allow_root_user",
            ),
        ] {
            if let Some(v) = value {
                *slot = v;
                paths.push(format!("hardening.{path}"));
            }
        }
        s.hardening = Some(h);
        if self.clear_images || !self.images.is_empty() {
            s.allowed_images = self.images.clone();
            paths.push("allowed_images".into());
        }
        if paths.is_empty() {
            return Err(CliError::usage(
                "nothing to set: pass at least one flag, e.g. --max-memory 8g or --max-network allowlist (see paddock security set --help)",
            ));
        }
        Ok(UpdateSecuritySettingsRequest {
            settings: Some(s),
            update_mask: Some(prost_types::FieldMask { paths }),
        })
    }
}

pub async fn security(ctx: &mut Ctx, cmd: SecurityCommand) -> Result<(), CliError> {
    // An empty name is the caller's organization: no WhoAmI needed.
    let settings = match cmd {
        SecurityCommand::Get => {
            client(ctx)?
                .get_security_settings(GetSecuritySettingsRequest::default())
                .await
                .map_err(ctx.authz_err())?
                .into_inner()
                .settings
        }
        SecurityCommand::Set(args) => {
            client(ctx)?
                .update_security_settings(args.request()?)
                .await
                .map_err(update_err(ctx, &[SECURITY_FLAGS, AMOUNT_FLAGS]))?
                .into_inner()
                .settings
        }
    }
    .ok_or_else(|| missing("settings"))?;
    if ctx.json() {
        let mut v = paddock_policy::json::security_settings(&settings);
        v["update_time"] = time_json(settings.update_time.as_ref());
        print_json(&v);
    } else {
        print_fields(&settings_fields(&settings));
    }
    Ok(())
}

fn missing(what: &str) -> CliError {
    CliError::new(Code::Internal, format!("authz returned no {what}"))
}

fn time_json(ts: Option<&prost_types::Timestamp>) -> Value {
    ts.map_or(Value::Null, |t| Value::String(output::rfc3339(t)))
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

// ---------------------------------------------------------------- parsing

/// `--max-cpus`: a non-negative number such as 0.5 or 2.
fn parse_cpus(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "invalid CPU count {text:?}: use a non-negative number such as 0.5 or 2"
        )),
    }
}

/// A size such as `512m`, `2g`, `1.5GiB` or `1048576` (bytes). Units are
/// binary (k = 1024), as Docker reads them.
pub fn parse_size(text: &str) -> Result<i64, String> {
    let bad = || format!("invalid size {text:?}: use e.g. 512m, 2g, 10GiB or a number of bytes");
    let t = text.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let shift = match unit.trim() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    let bytes = (value * (1u64 << shift) as f64).round();
    if !bytes.is_finite() || bytes < 0.0 || bytes > i64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as i64)
}

// ---------------------------------------------------------------- tables

/// `4GiB`, `512MiB`, `1536B`: the largest binary unit that divides evenly.
pub fn human_bytes(bytes: i64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes > 0 && bytes % (1i64 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

fn amount(a: builtin::Amount, l: &ResourceLimits) -> Option<String> {
    let v = a.get(l);
    (v > 0).then(|| match a {
        builtin::Amount::Memory | builtin::Amount::Disk => human_bytes(v),
        builtin::Amount::Ttl => output::human_seconds(v / 1000),
        _ => a.show(v),
    })
}

fn label(prefix: &str, a: builtin::Amount) -> &'static str {
    use builtin::Amount::*;
    match (prefix, a) {
        ("max", Cpus) => "max cpus",
        ("max", Memory) => "max memory",
        ("max", Pids) => "max pids",
        ("max", Disk) => "max disk",
        ("max", Ttl) => "max ttl",
        (_, Cpus) => "default cpus",
        (_, Memory) => "default memory",
        (_, Pids) => "default pids",
        (_, Disk) => "default disk",
        (_, Ttl) => "default ttl",
    }
}

fn mode_word(value: i32) -> String {
    builtin::network::name(NetworkMode::try_from(value).unwrap_or(NetworkMode::Unspecified))
        .to_owned()
}

fn effect_word(value: i32) -> &'static str {
    match Effect::try_from(value) {
        Ok(Effect::Allow) => "allow",
        Ok(Effect::Deny) => "deny",
        _ => "?",
    }
}

fn list_cell(items: Vec<String>) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(", ")
    }
}

fn updated_cell(ts: Option<&prost_types::Timestamp>, by: &str) -> String {
    match ts {
        None => "never (built-in defaults)".to_owned(),
        Some(t) if by.is_empty() => output::rfc3339(t),
        Some(t) => format!("{} by {by}", output::rfc3339(t)),
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

pub fn settings_fields(s: &SecuritySettings) -> Vec<(&'static str, String)> {
    let mut fields = vec![("name", s.name.clone())];
    let max = s.max.unwrap_or_default();
    for a in builtin::Amount::ALL {
        fields.push((label("max", a), amount(a, &max).unwrap_or_default()));
    }
    fields.push(("max sandboxes", s.max_sandboxes.to_string()));
    fields.push((
        "max sandboxes per agent",
        s.max_sandboxes_per_agent.to_string(),
    ));
    fields.push(("max network", mode_word(s.max_network_mode)));
    let h = s.hardening.clone().unwrap_or_default();
    fields.push((
        "capabilities kept",
        list_cell(h.allowed_capabilities.clone()),
    ));
    let relaxed = |on: bool| if on { "yes" } else { "no" }.to_owned();
    fields.push(("new privileges", relaxed(h.allow_new_privileges)));
    fields.push(("unconfined seccomp", relaxed(h.unconfined_seccomp)));
    fields.push(("writable root fs", relaxed(h.writable_root_filesystem)));
    fields.push(("root user", relaxed(h.allow_root_user)));
    fields.push(("allowed images", list_cell(s.allowed_images.clone())));
    fields.push((
        "updated",
        updated_cell(s.update_time.as_ref(), &s.updated_by),
    ));
    fields
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("").is_err());
        assert!(parse_size("-1g").is_err());
        assert!(parse_size("2x").is_err());
        assert!(parse_size("99999999999t").is_err());
        assert_eq!(human_bytes(4 << 30), "4GiB");
        assert_eq!(human_bytes(512 << 20), "512MiB");
        assert_eq!(human_bytes(1000), "1000B");
    }

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
    fn security_flags_become_a_masked_update() {
        let cli = Cli::try_parse_from([
            "paddock",
            "security",
            "set",
            "--max-memory",
            "8g",
            "--max-network",
            "allowlist",
            "--allow-capability",
            "NET_BIND_SERVICE",
            "--allow-root-user",
            "false",
        ])
        .expect("parses");
        let Command::Security(SecurityCommand::Set(args)) = cli.command else {
            panic!("parsed as something else");
        };
        let req = args.request().expect("request");
        assert_eq!(
            req.update_mask.expect("mask").paths,
            vec![
                "max.memory_bytes",
                "max_network_mode",
                "hardening.allowed_capabilities",
                "hardening.allow_root_user"
            ]
        );
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
