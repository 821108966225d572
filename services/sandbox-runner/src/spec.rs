//! Resolving a sandbox request against the agent's effective policy: every
//! amount filled in from the defaults, nothing above a bound, the network
//! never wider than the policy. A request above a bound is refused with
//! the bound named.

use std::collections::BTreeMap;
use std::time::Duration;

use paddock_proto::authz::v1::{AgentPolicy, NetworkMode, ResourceLimits};
use paddock_proto::sandbox::v1::{CredentialMount, EndReason, SandboxSpec};
use paddock_shared::error::{Error, Result};
use paddock_shared::names::truncate;

/// Caches a sandbox may mount, with the env var each one sets.
pub const CACHES: &[(&str, &[(&str, &str)])] = &[
    ("npm", &[("npm_config_cache", "/cache/npm")]),
    ("pnpm", &[("npm_config_store_dir", "/cache/pnpm")]),
    ("node-gyp", &[("npm_config_devdir", "/cache/node-gyp")]),
    ("pip", &[("PIP_CACHE_DIR", "/cache/pip")]),
    ("cargo", &[("CARGO_HOME", "/cache/cargo")]),
];

/// Env vars a request may not set: the runner owns them (and every
/// `PADDOCK_*`).
const RESERVED_ENV: &[&str] = &["HOME"];

/// The user sandboxes run as unless the image names a non-root one.
pub const SANDBOX_USER: &str = "65534:65534";
/// The same, as ids.
pub const SANDBOX_IDS: crate::users::UserIds = crate::users::UserIds {
    uid: 65534,
    gid: 65534,
};
pub const SANDBOX_HOME: &str = "/home/sandbox";

/// The smallest workspace file system a sandbox can get.
pub const MIN_DISK_BYTES: i64 = 16 << 20;

const MAX_ARGV: usize = 256;
const MAX_ARG_BYTES: usize = 64 * 1024;
const MAX_ENV: usize = 128;

/// A request resolved against the policy: what the runner creates.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub spec: SandboxSpec,
    pub cpus: f64,
    pub memory_bytes: i64,
    pub pids: i64,
    /// The workspace's size, and the bound of /tmp.
    pub disk_bytes: i64,
    pub ttl: Duration,
    pub network: NetworkMode,
}

fn ttl_of(limits: &ResourceLimits) -> Duration {
    limits
        .ttl
        .as_ref()
        .and_then(paddock_shared::time::duration)
        .unwrap_or_default()
}

/// Resolves `spec` (its agent already filled in) against `policy`, whose
/// `max` and `defaults` are complete.
pub fn resolve(mut spec: SandboxSpec, policy: &AgentPolicy) -> Result<Resolved> {
    validate(&spec)?;
    let max = policy.max.unwrap_or_default();
    let defaults = policy.defaults.unwrap_or_default();
    let asked = spec.resources.unwrap_or_default();

    let cpus = pick_f64("cpus", asked.cpus, defaults.cpus, max.cpus)?;
    let memory_bytes = pick_i64(
        "memory_bytes",
        asked.memory_bytes,
        defaults.memory_bytes,
        max.memory_bytes,
    )?;
    let pids = pick_i64("pids", asked.pids, defaults.pids, max.pids)?;
    let disk_bytes = pick_i64(
        "disk_bytes",
        asked.disk_bytes,
        defaults.disk_bytes,
        max.disk_bytes,
    )?;
    if disk_bytes < MIN_DISK_BYTES {
        return Err(Error::invalid(format!(
            "resources.disk_bytes {} is below the smallest workspace, 16 MiB",
            paddock_shared::units::human_bytes(disk_bytes.max(0) as u64)
        )));
    }
    let ttl = {
        let asked_ttl = ttl_of(&asked);
        let (default_ttl, max_ttl) = (ttl_of(&defaults), ttl_of(&max));
        if asked_ttl > max_ttl && !max_ttl.is_zero() {
            return Err(Error::invalid(format!(
                "ttl {} exceeds the agent policy's bound max.ttl {}",
                paddock_shared::units::human_seconds(asked_ttl.as_secs()),
                paddock_shared::units::human_seconds(max_ttl.as_secs())
            )));
        }
        let ttl = if asked_ttl.is_zero() {
            default_ttl
        } else {
            asked_ttl
        };
        if ttl.is_zero() { max_ttl } else { ttl }
    };
    if ttl.is_zero() {
        return Err(Error::FailedPrecondition(
            "the agent policy has no ttl; set one with `paddock policy set`".into(),
        ));
    }

    let network = paddock_policy::network::sandbox_mode(spec.network_mode, policy.network_mode)?;
    // Allow and deny lists are enforced by the egress proxy, which is not
    // part of this runner yet: refuse rather than run wider or narrower
    // than asked.
    if matches!(network, NetworkMode::Allowlist | NetworkMode::Denylist) {
        return Err(Error::FailedPrecondition(format!(
            "network mode {} needs the egress proxy, which this runner does not have; use none or open",
            mode_name(network)
        )));
    }

    for mount in &spec.credentials {
        let id = mount
            .credential
            .rsplit('/')
            .next()
            .unwrap_or(&mount.credential);
        let listed = policy
            .credentials
            .iter()
            .any(|c| c == &mount.credential || c.rsplit('/').next() == Some(id));
        if !listed {
            return Err(Error::PermissionDenied(format!(
                "credential {} is not in the agent policy's credentials",
                truncate(&mount.credential)
            )));
        }
    }

    spec.resources = Some(ResourceLimits {
        cpus,
        memory_bytes,
        pids,
        disk_bytes,
        ttl: Some(paddock_shared::time::proto_duration(ttl)),
    });
    spec.network_mode = network as i32;
    if spec.workdir.is_empty() {
        spec.workdir = "/workspace".into();
    }
    spec.caches.sort();
    spec.caches.dedup();
    Ok(Resolved {
        spec,
        cpus,
        memory_bytes,
        pids,
        disk_bytes,
        ttl,
        network,
    })
}

fn pick_f64(field: &str, asked: f64, default: f64, max: f64) -> Result<f64> {
    if !asked.is_finite() || asked < 0.0 {
        return Err(Error::invalid(format!(
            "resources.{field} must be positive"
        )));
    }
    if asked > max && max > 0.0 {
        return Err(Error::invalid(format!(
            "resources.{field} {asked} exceeds the agent policy's bound max.{field} {max}"
        )));
    }
    let value = if asked > 0.0 { asked } else { default.min(max) };
    if value <= 0.0 {
        return Err(Error::FailedPrecondition(format!(
            "the agent policy has no {field}; set one with `paddock policy set`"
        )));
    }
    Ok(value)
}

fn pick_i64(field: &str, asked: i64, default: i64, max: i64) -> Result<i64> {
    if asked < 0 {
        return Err(Error::invalid(format!(
            "resources.{field} must be positive"
        )));
    }
    if asked > max && max > 0 {
        let show = |v: i64| {
            if field.ends_with("_bytes") {
                paddock_shared::units::human_bytes(v.max(0) as u64)
            } else {
                v.to_string()
            }
        };
        return Err(Error::invalid(format!(
            "resources.{field} {} exceeds the agent policy's bound max.{field} {}",
            show(asked),
            show(max)
        )));
    }
    let value = if asked > 0 { asked } else { default.min(max) };
    if value <= 0 {
        return Err(Error::FailedPrecondition(format!(
            "the agent policy has no {field}; set one with `paddock policy set`"
        )));
    }
    Ok(value)
}

/// An end reason as people and the CLI say it.
pub fn reason_name(reason: EndReason) -> &'static str {
    match reason {
        EndReason::Unspecified => "",
        EndReason::Exited => "exited",
        EndReason::OomKilled => "oom_killed",
        EndReason::TtlExpired => "ttl_expired",
        EndReason::StoppedByUser => "stopped_by_user",
        EndReason::RunnerLost => "runner_lost",
        EndReason::StartFailed => "start_failed",
        EndReason::OrganizationDeleted => "organization_deleted",
        EndReason::AgentDeleted => "agent_deleted",
        EndReason::ProjectDeleted => "project_deleted",
        EndReason::AccessRevoked => "access_revoked",
    }
}

/// A network mode as people and the CLI say it (the policy crate's words).
pub use paddock_policy::network::name as mode_name;

/// Input rules that do not depend on the policy.
fn validate(spec: &SandboxSpec) -> Result<()> {
    if spec.image.is_empty() {
        return Err(Error::invalid("spec.image is required"));
    }
    if spec.image.len() > 255
        || spec
            .image
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Error::invalid(format!(
            "invalid image reference {:?}",
            truncate(&spec.image)
        )));
    }
    validate_argv("spec.command", &spec.command, true)?;
    validate_env("spec.env", &spec.env)?;
    if !spec.workdir.is_empty() && !spec.workdir.starts_with('/') {
        return Err(Error::invalid("spec.workdir must be an absolute path"));
    }
    for cache in &spec.caches {
        if !CACHES.iter().any(|(name, _)| name == cache) {
            return Err(Error::invalid(format!(
                "unknown cache {:?}: use npm, pnpm, node-gyp, pip or cargo",
                truncate(cache)
            )));
        }
    }
    let mut targets = Vec::new();
    for mount in &spec.credentials {
        if mount.credential.is_empty() {
            return Err(Error::invalid("a credential mount needs a credential name"));
        }
        let target = credential_target(mount)?;
        if targets.contains(&target) {
            return Err(Error::invalid(format!(
                "two credentials are mounted at {target}"
            )));
        }
        targets.push(target);
    }
    if spec.labels.len() > 32
        || spec
            .labels
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 63 || v.len() > 255)
    {
        return Err(Error::invalid(
            "spec.labels: at most 32, keys 1-63 and values up to 255 bytes",
        ));
    }
    Ok(())
}

/// Checks an argv (the command of a sandbox or an exec).
pub fn validate_argv(what: &str, argv: &[String], may_be_empty: bool) -> Result<()> {
    if argv.is_empty() && !may_be_empty {
        return Err(Error::invalid(format!("{what} is required")));
    }
    if argv.len() > MAX_ARGV || argv.iter().map(String::len).sum::<usize>() > MAX_ARG_BYTES {
        return Err(Error::invalid(format!(
            "{what} is too long: at most {MAX_ARGV} arguments and {MAX_ARG_BYTES} bytes"
        )));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(Error::invalid(format!("{what} contains a NUL byte")));
    }
    Ok(())
}

/// Checks env vars of a sandbox or an exec.
pub fn validate_env(what: &str, env: &std::collections::HashMap<String, String>) -> Result<()> {
    if env.len() > MAX_ENV {
        return Err(Error::invalid(format!(
            "{what}: at most {MAX_ENV} variables"
        )));
    }
    for (k, v) in env {
        let ok_key = !k.is_empty()
            && k.len() <= 255
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok_key {
            return Err(Error::invalid(format!(
                "{what}: invalid variable name {:?}",
                truncate(k)
            )));
        }
        if RESERVED_ENV.contains(&k.as_str()) || k.starts_with("PADDOCK_") {
            return Err(Error::invalid(format!(
                "{what}: {k} is set by the runner and cannot be given"
            )));
        }
        if v.contains('\0') || v.len() > MAX_ARG_BYTES {
            return Err(Error::invalid(format!(
                "{what}: the value of {k} is too long or contains NUL"
            )));
        }
    }
    Ok(())
}

/// Where a credential appears inside the sandbox: `~/` is the sandbox
/// user's home. Paths are normalized; `..` and system paths are refused.
pub fn credential_target(mount: &CredentialMount) -> Result<String> {
    let path = mount.path.trim();
    let absolute = if let Some(rest) = path.strip_prefix("~/") {
        format!("{SANDBOX_HOME}/{rest}")
    } else if path.starts_with('/') {
        path.to_owned()
    } else {
        return Err(Error::invalid(format!(
            "credential path {:?} must be absolute or start with ~/",
            truncate(path)
        )));
    };
    let mut parts = Vec::new();
    for part in absolute.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(Error::invalid(format!(
                    "credential path {:?} must not contain ..",
                    truncate(path)
                )));
            }
            p => parts.push(p),
        }
    }
    let normalized = format!("/{}", parts.join("/"));
    let forbidden = ["/proc", "/sys", "/dev", "/workspace", "/cache", "/tmp"];
    if parts.len() < 2
        || forbidden
            .iter()
            .any(|f| normalized == *f || normalized.starts_with(&format!("{f}/")))
    {
        return Err(Error::invalid(format!(
            "credential path {:?} is not allowed: use a file path such as ~/.ssh/id_ed25519",
            truncate(path)
        )));
    }
    Ok(normalized)
}

/// The env vars of the caches a sandbox mounts.
pub fn cache_env(caches: &[String]) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for cache in caches {
        if let Some((_, vars)) = CACHES.iter().find(|(name, _)| name == cache) {
            for (k, v) in *vars {
                env.insert((*k).to_owned(), (*v).to_owned());
            }
        }
    }
    env
}

#[cfg(test)]
mod tests;

/// What a redacted env value reads as.
pub const REDACTED: &str = "[redacted]";

/// Whether an env entry looks like a secret: by its name (password, token,
/// key, secret, credential...) or by its value (a Paddock key, a URL with a
/// password in it).
pub fn is_secret_env(key: &str, value: &str) -> bool {
    const NAMES: &[&str] = &[
        "PASSWORD",
        "PASSWD",
        "PWD_",
        "SECRET",
        "TOKEN",
        "KEY",
        "CREDENTIAL",
        "AUTH",
        "PRIVATE",
        "SESSION",
        "COOKIE",
        "SIGNATURE",
        "CERT",
    ];
    let upper = key.to_ascii_uppercase();
    NAMES.iter().any(|n| upper.contains(n))
        || value.starts_with("pdk_")
        || value.starts_with("pds_")
        || value.split_once("://").is_some_and(|(_, rest)| {
            rest.split('/')
                .next()
                .is_some_and(|auth| auth.contains('@'))
        })
}

/// The env of a sandbox as `caller` may see it: values only for the
/// sandbox's creator and holders of sessions.manage (`reveal`), and even
/// then never the values of secret-looking entries.
pub fn redact_env(spec: &mut SandboxSpec, reveal: bool) {
    for (key, value) in spec.env.iter_mut() {
        if !reveal || is_secret_env(key, value) {
            *value = REDACTED.to_owned();
        }
    }
}
