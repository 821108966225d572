//! Typed, layered service configuration: the service's defaults, then a
//! TOML file (`--config`), then `PADDOCK_*` environment variables, then
//! flags; each layer overrides the one before. `figment` merges the layers
//! and `serde` types the result, so a wrong value or an unknown key in the
//! file is an error at start naming the key and where it came from.
//!
//! [`CommonConfig`] is what every service has: where it listens, its data
//! dir and database, its peers, its audit sink and its admin listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Value};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// What every service is configured with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommonConfig {
    /// The gRPC listener (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Databases (SQLite), keys and token files.
    pub data_dir: PathBuf,
    /// PostgreSQL URL (a schema per service); SQLite under the data dir
    /// when unset.
    pub database_url: Option<String>,
    /// The identity service.
    pub identity_endpoint: String,
    /// The authz service.
    pub authz_endpoint: String,
    /// The audit service the outbox delivers to; unset, events wait in
    /// the outbox.
    pub audit_endpoint: Option<String>,
    /// The admin HTTP listener (`/metrics`, `/healthz`).
    pub admin_listen: SocketAddr,
    /// The service token shared by the services (mode 0600); default
    /// `{data_dir}/service-token`.
    pub service_token_file: Option<PathBuf>,
}

impl CommonConfig {
    /// The defaults, with the service's own gRPC address.
    pub fn listening_on(listen: SocketAddr) -> Self {
        Self {
            listen,
            data_dir: PathBuf::from("paddock-data"),
            database_url: None,
            identity_endpoint: "http://127.0.0.1:7101".to_owned(),
            authz_endpoint: "http://127.0.0.1:7102".to_owned(),
            audit_endpoint: None,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            service_token_file: None,
        }
    }

    /// Where the shared service token lives.
    pub fn service_token_path(&self) -> PathBuf {
        self.service_token_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("service-token"))
    }
}

/// The flags of [`CommonConfig`]; each overrides the file and the
/// environment when given.
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct CommonFlags {
    /// gRPC address to listen on (port 0 picks a free port).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Data directory: SQLite databases, keys and token files [default:
    /// paddock-data].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL URL (a schema per service); SQLite under the data dir
    /// when unset.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// The identity service [default: http://127.0.0.1:7101].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_endpoint: Option<String>,
    /// The authz service [default: http://127.0.0.1:7102].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authz_endpoint: Option<String>,
    /// The audit service the outbox delivers to; unset, events wait in
    /// the outbox.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_endpoint: Option<String>,
    /// The admin HTTP listener, `/metrics` and `/healthz` [default:
    /// 127.0.0.1:9464].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<SocketAddr>,
    /// File holding the service token shared by the services (mode 0600)
    /// [default: {data-dir}/service-token].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_token_file: Option<PathBuf>,
}

/// The environment variables every service reads, and their keys.
pub const COMMON_ENV: &[(&str, &str)] = &[
    ("PADDOCK_DATA_DIR", "data_dir"),
    ("PADDOCK_IDENTITY_ENDPOINT", "identity_endpoint"),
    ("PADDOCK_AUTHZ_ENDPOINT", "authz_endpoint"),
    ("PADDOCK_AUDIT_ENDPOINT", "audit_endpoint"),
    ("PADDOCK_ADMIN_LISTEN", "admin_listen"),
    ("PADDOCK_SERVICE_TOKEN_FILE", "service_token_file"),
];

/// A configuration that cannot be loaded.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

/// Loads `T`: `defaults`, then `file` (TOML), then the variables of `env`
/// (`(variable, key)`; a variable that is unset or empty is skipped), then
/// `flags` (a value whose unset options serialize to nothing).
pub fn load<T>(
    defaults: &T,
    file: Option<&Path>,
    env: &[&[(&str, &str)]],
    flags: &impl Serialize,
) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned,
{
    load_with(defaults, file, env, |var| std::env::var(var).ok(), flags)
}

/// [`load`], reading variables through `lookup` (tests pass their own).
pub fn load_with<T>(
    defaults: &T,
    file: Option<&Path>,
    env: &[&[(&str, &str)]],
    lookup: impl Fn(&str) -> Option<String>,
    flags: &impl Serialize,
) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned,
{
    let known = keys_of(defaults)?;
    let mut figment = Figment::from(Serialized::defaults(defaults));
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        let table: toml::Table = text
            .parse()
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        if let Some(unknown) = table.keys().find(|k| !known.contains(k)) {
            return Err(ConfigError(format!(
                "{}: unknown key {unknown:?} (known: {})",
                path.display(),
                known.join(", ")
            )));
        }
        figment = figment.merge(Toml::string(&text));
    }
    let from_env = environment(defaults, env, &lookup)?;
    figment = figment.merge(Serialized::defaults(from_env.clone()));
    figment = figment.merge(Serialized::defaults(flags));
    figment.extract().map_err(|e| {
        ConfigError(culprit(
            defaults, &figment, &known, env, &from_env, &lookup, e,
        ))
    })
}

/// Names the key behind a failed extraction: `serde(flatten)` loses the
/// path, so each key's merged value is tried alone over the defaults, and
/// the first that fails is named, with the variable that set it if one did.
fn culprit<T>(
    defaults: &T,
    merged: &Figment,
    known: &[String],
    env: &[&[(&str, &str)]],
    from_env: &Dict,
    lookup: &impl Fn(&str) -> Option<String>,
    error: figment::Error,
) -> String
where
    T: Serialize + DeserializeOwned,
{
    for key in known {
        let Ok(value) = merged.find_value(key) else {
            continue;
        };
        let mut one = Dict::new();
        one.insert(key.clone(), value);
        let alone = Figment::from(Serialized::defaults(defaults)).merge(Serialized::defaults(one));
        if let Err(e) = alone.extract::<T>() {
            let source = env
                .iter()
                .flat_map(|table| table.iter())
                .find(|(var, k)| {
                    *k == key.as_str() && from_env.contains_key(*k) && lookup(var).is_some()
                })
                .map(|(var, _)| format!(" (from {var})"))
                .unwrap_or_default();
            return format!("{key}{source}: {}", e.kind);
        }
    }
    error.to_string()
}

/// The top-level keys `value` serializes to.
fn keys_of(value: &impl Serialize) -> Result<Vec<String>, ConfigError> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(map)) => Ok(map.keys().cloned().collect()),
        Ok(_) => Err(ConfigError("a configuration must be a table".to_owned())),
        Err(e) => Err(ConfigError(e.to_string())),
    }
}

/// The environment's values, typed like the defaults: a key whose default
/// is a number or a boolean is parsed as one, every other value stays text
/// (so `PADDOCK_WORKER_ID=123` is the string "123").
fn environment(
    defaults: &impl Serialize,
    env: &[&[(&str, &str)]],
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<Dict, ConfigError> {
    let typed = serde_json::to_value(defaults).map_err(|e| ConfigError(e.to_string()))?;
    let mut dict = Dict::new();
    for (var, key) in env.iter().flat_map(|table| table.iter()) {
        let Some(text) = lookup(var).filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        let bad = |what: &str| ConfigError(format!("{var}={text:?} is not {what}"));
        let value = match typed.get(*key) {
            Some(serde_json::Value::Number(_)) => {
                Value::from(text.trim().parse::<u64>().map_err(|_| bad("a number"))?)
            }
            Some(serde_json::Value::Bool(_)) => Value::from(
                text.trim()
                    .parse::<bool>()
                    .map_err(|_| bad("true or false"))?,
            ),
            _ => Value::from(text),
        };
        dict.insert((*key).to_owned(), value);
    }
    Ok(dict)
}

/// A duration flag, checked as it is parsed and kept as written (the
/// configuration reads it like the file's).
pub fn duration_flag(text: &str) -> Result<String, String> {
    crate::time::parse_duration(text).map(|_| text.trim().to_owned())
}

/// `serde` for durations written as `30s`, `5m` or `1h30m`.
pub mod duration {
    use super::*;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        let text = if d.subsec_nanos() == 0 {
            crate::units::human_seconds(d.as_secs())
        } else {
            format!("{}ms", d.as_millis())
        };
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        crate::time::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// `serde` for an optional secret: read as text, never written back.
pub mod secret {
    use super::*;
    use crate::secret::Secret;

    pub fn serialize<S: serde::Serializer>(
        value: &Option<Secret<String>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            // Loading round-trips flags through serde; a secret given as a
            // flag or a variable must survive that, and nothing else
            // serializes a configuration.
            Some(secret) => s.serialize_some(secret.expose()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Secret<String>>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(Secret::new))
    }
}

#[cfg(test)]
mod tests;
