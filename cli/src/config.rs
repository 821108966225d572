//! The CLI's config file: named contexts (endpoints, a token, the bootstrap
//! token file of a `paddock dev`) and which one is current, like kubectl's
//! kubeconfig. It lives at `$XDG_CONFIG_HOME/paddock/config.toml`
//! (`~/.config/paddock/config.toml` when unset), mode 0600 in a 0700
//! directory, because it holds tokens.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tonic::Code;

use crate::error::CliError;

/// The whole file.
#[derive(Default, Serialize, Deserialize)]
pub struct Config {
    /// The context commands use when neither `--context` nor
    /// `PADDOCK_CONTEXT` names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// One control plane and how to reach it. No `Debug`: it holds a token.
#[derive(Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Context {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authz_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_endpoint: Option<String>,
    /// An API key (pdk_…), from `paddock login`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Where `paddock dev` wrote the bootstrap token (for `org create` and
    /// `org list`); the token itself is not copied here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_token_file: Option<PathBuf>,
}

/// Where the config file is: `$XDG_CONFIG_HOME/paddock/config.toml`, else
/// `$HOME/.config/paddock/config.toml`. `None` when neither is set.
pub fn path() -> Option<PathBuf> {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    let base =
        absolute("XDG_CONFIG_HOME").or_else(|| absolute("HOME").map(|h| h.join(".config")))?;
    Some(base.join("paddock").join("config.toml"))
}

fn no_path() -> CliError {
    CliError::new(
        Code::FailedPrecondition,
        "no config directory: set XDG_CONFIG_HOME or HOME",
    )
}

impl Config {
    /// Reads the file; a missing file is an empty config.
    pub fn load() -> Result<Config, CliError> {
        match path() {
            Some(p) => Self::load_from(&p),
            None => Ok(Config::default()),
        }
    }

    pub fn load_from(path: &Path) -> Result<Config, CliError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => {
                return Err(CliError::new(
                    Code::FailedPrecondition,
                    format!("cannot read {}: {e}", path.display()),
                ));
            }
        };
        toml::from_str(&text).map_err(|e| {
            CliError::new(
                Code::FailedPrecondition,
                format!(
                    "{} is not a valid config file: {}",
                    path.display(),
                    e.message()
                ),
            )
        })
    }

    /// Writes the file (0600, its directory 0700), replacing it atomically;
    /// returns where.
    pub fn save(&self) -> Result<PathBuf, CliError> {
        let path = path().ok_or_else(no_path)?;
        self.save_to(&path)?;
        Ok(path)
    }

    pub fn save_to(&self, path: &Path) -> Result<(), CliError> {
        let failed = |e: std::io::Error| {
            CliError::new(
                Code::FailedPrecondition,
                format!("cannot write {}: {e}", path.display()),
            )
        };
        if let Some(dir) = path.parent() {
            paddock_shared::db::private_dir(dir).map_err(failed)?;
        }
        let text = toml::to_string(self)
            .map_err(|e| CliError::new(Code::Internal, format!("cannot encode the config: {e}")))?;
        paddock_shared::server::write_secret_file(path, text.trim_end()).map_err(failed)
    }

    /// The context named `name`, or NOT_FOUND naming the known ones.
    pub fn context(&self, name: &str) -> Result<&Context, CliError> {
        self.contexts.get(name).ok_or_else(|| self.unknown(name))
    }

    pub fn unknown(&self, name: &str) -> CliError {
        let known: Vec<&str> = self.contexts.keys().map(String::as_str).collect();
        let hint = if known.is_empty() {
            "there are none yet: `paddock login` or `paddock dev` writes one".to_owned()
        } else {
            format!("known: {}", known.join(", "))
        };
        CliError::new(
            Code::NotFound,
            format!(
                "no context {:?} in {} ({hint})",
                paddock_shared::names::truncate(name),
                path().map_or_else(|| "the config file".to_owned(), |p| p.display().to_string())
            ),
        )
    }
}

/// A context name: what kubectl users expect (letters, digits, `-`, `_`,
/// `.`, `@`), at most 64 characters.
pub fn check_name(name: &str) -> Result<(), CliError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(CliError::usage(format!(
            "invalid context name {:?}: use letters, digits, - _ . @ (at most 64)",
            paddock_shared::names::truncate(name)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_private_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("paddock-cli-config-{}", uuid::Uuid::new_v4()));
        let path = dir.join("paddock").join("config.toml");
        let mut config = Config::default();
        config.contexts.insert(
            "prod".into(),
            Context {
                identity_endpoint: Some("https://id.example".into()),
                token: Some("pdk_x".into()),
                ..Default::default()
            },
        );
        config.current_context = Some("prod".into());
        config.save_to(&path).expect("save");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().expect("dir")), 0o700);
        let back = Config::load_from(&path).expect("load");
        assert_eq!(back.current_context.as_deref(), Some("prod"));
        assert!(back.context("prod").expect("prod") == config.context("prod").expect("prod"));
        assert!(matches!(
            back.context("dev"),
            Err(CliError::Failed {
                code: Code::NotFound,
                ..
            })
        ));
        std::fs::write(&path, "current_context = [").expect("write");
        assert!(Config::load_from(&path).is_err());
        assert!(Config::load_from(&dir.join("missing.toml")).is_ok());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn context_names() {
        for ok in ["dev", "prod-eu", "alice@acme", "a.b_c"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a/b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
