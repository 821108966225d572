//! The flags every command takes, and where each setting comes from:
//! a flag, then its environment variable, then the current context of the
//! config file, then the built-in default (the loopback ports of
//! `paddock dev`). `--endpoint` names one host for all four services.

use std::path::PathBuf;

use clap::Args;

use crate::config::{Config, Context};
use crate::error::CliError;
use crate::names;
use crate::output::Format;

const HEADING: &str = "Global options";

/// The global flags as typed (nothing resolved yet).
#[derive(Debug, Clone, Default, Args)]
pub struct GlobalArgs {
    /// API key (pdk_...) or, for `org create`/`org list`, the bootstrap
    /// token [env: PADDOCK_TOKEN; default: the context's token].
    #[arg(long, global = true, help_heading = HEADING, hide_env_values = true)]
    pub token: Option<String>,
    /// The context of the config file to use [env: PADDOCK_CONTEXT;
    /// default: the current context].
    #[arg(long, global = true, value_name = "NAME", help_heading = HEADING)]
    pub context: Option<String>,
    /// Where all four services run: http://HOST (ports 7101-7104, as
    /// `paddock dev` binds them) or http://HOST:PORT (identity on PORT,
    /// authz, sandbox runner and audit on the next three) [env: PADDOCK_ENDPOINT].
    #[arg(long, global = true, value_name = "URL", help_heading = HEADING)]
    pub endpoint: Option<String>,
    /// The identity service [env: PADDOCK_IDENTITY_ENDPOINT; default:
    /// http://127.0.0.1:7101].
    #[arg(long, global = true, value_name = "URL", help_heading = HEADING)]
    pub identity_endpoint: Option<String>,
    /// The authz service [env: PADDOCK_AUTHZ_ENDPOINT; default:
    /// http://127.0.0.1:7102].
    #[arg(long, global = true, value_name = "URL", help_heading = HEADING)]
    pub authz_endpoint: Option<String>,
    /// The sandbox runner [env: PADDOCK_SANDBOX_ENDPOINT; default:
    /// http://127.0.0.1:7103].
    #[arg(long, global = true, value_name = "URL", help_heading = HEADING)]
    pub sandbox_endpoint: Option<String>,
    /// The audit service [env: PADDOCK_AUDIT_ENDPOINT; default:
    /// http://127.0.0.1:7104].
    #[arg(long, global = true, value_name = "URL", help_heading = HEADING)]
    pub audit_endpoint: Option<String>,
    /// Output format: a table for people, JSON for programs (errors too
    /// are JSON on stderr).
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value = "table",
        help_heading = HEADING
    )]
    pub output: Format,
    /// Say more: the trace id of this run (to find its trace), printed
    /// first on stderr.
    #[arg(short = 'v', long, global = true, help_heading = HEADING)]
    pub verbose: bool,
}

/// The settings a command runs with, resolved.
#[derive(Debug, Clone)]
pub struct Global {
    pub token: Option<String>,
    pub identity_endpoint: String,
    pub authz_endpoint: String,
    pub sandbox_endpoint: String,
    pub audit_endpoint: String,
    pub output: Format,
    /// The context used, if any.
    pub context: Option<String>,
    /// The bootstrap token file the context names (`paddock dev`'s).
    pub bootstrap_token_file: Option<PathBuf>,
    /// Where the token came from.
    pub token_source: TokenSource,
}

/// Where the token of a command came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// `--token` on the command line.
    Flag,
    /// `PADDOCK_TOKEN`.
    Env,
    /// The context's token (`paddock login`).
    Context,
    None,
}

/// The four services, in the order `--endpoint HOST:PORT` assigns ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Identity,
    Authz,
    Sandbox,
    Audit,
}

impl Service {
    pub const ALL: [Service; 4] = [
        Service::Identity,
        Service::Authz,
        Service::Sandbox,
        Service::Audit,
    ];

    fn env(self) -> &'static str {
        match self {
            Service::Identity => "PADDOCK_IDENTITY_ENDPOINT",
            Service::Authz => "PADDOCK_AUTHZ_ENDPOINT",
            Service::Sandbox => "PADDOCK_SANDBOX_ENDPOINT",
            Service::Audit => "PADDOCK_AUDIT_ENDPOINT",
        }
    }

    fn offset(self) -> u16 {
        match self {
            Service::Identity => 0,
            Service::Authz => 1,
            Service::Sandbox => 2,
            Service::Audit => 3,
        }
    }

    fn default_endpoint(self) -> String {
        format!("http://127.0.0.1:{}", 7101 + self.offset())
    }
}

/// Where one service runs when everything runs on `endpoint`
/// (`http://HOST[:PORT]`).
pub fn all_in_one(flag: &str, endpoint: &str, service: Service) -> Result<String, CliError> {
    names::check_endpoint(flag, endpoint)?;
    let endpoint = endpoint.trim_end_matches('/');
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("http", endpoint));
    let bad = || {
        CliError::usage(format!(
            "invalid {flag} {endpoint:?}: expected http://HOST or http://HOST:PORT"
        ))
    };
    if rest.contains('/') {
        return Err(bad());
    }
    // The last colon outside brackets separates the port ([::1]:7101).
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => {
            (host, port.parse::<u16>().map_err(|_| bad())?)
        }
        _ => (rest, 7101),
    };
    let port = port.checked_add(service.offset()).ok_or_else(bad)?;
    Ok(format!("{scheme}://{host}:{port}"))
}

/// Reads one environment variable, empty meaning unset.
fn env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

impl GlobalArgs {
    /// Resolves the settings against the environment and the config file.
    pub fn resolve(self) -> Result<Global, CliError> {
        let config = Config::load()?;
        self.resolve_with(&config, env)
    }

    /// [`GlobalArgs::resolve`] with the config and environment given.
    pub fn resolve_with(
        self,
        config: &Config,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Global, CliError> {
        let named = self.context.clone().or_else(|| env("PADDOCK_CONTEXT"));
        let (context_name, context) = match named {
            Some(name) => {
                let ctx = config.context(&name)?.clone();
                (Some(name), ctx)
            }
            None => match &config.current_context {
                Some(name) => match config.contexts.get(name) {
                    Some(ctx) => (Some(name.clone()), ctx.clone()),
                    None => (None, Context::default()),
                },
                None => (None, Context::default()),
            },
        };
        let endpoint_env = env("PADDOCK_ENDPOINT");
        let mut resolved = Vec::with_capacity(4);
        for service in Service::ALL {
            let flag = match service {
                Service::Identity => &self.identity_endpoint,
                Service::Authz => &self.authz_endpoint,
                Service::Sandbox => &self.sandbox_endpoint,
                Service::Audit => &self.audit_endpoint,
            };
            let from_context = match service {
                Service::Identity => &context.identity_endpoint,
                Service::Authz => &context.authz_endpoint,
                Service::Sandbox => &context.sandbox_endpoint,
                Service::Audit => &context.audit_endpoint,
            };
            let value = if let Some(v) = flag {
                v.clone()
            } else if let Some(all) = &self.endpoint {
                all_in_one("--endpoint", all, service)?
            } else if let Some(v) = env(service.env()) {
                v
            } else if let Some(all) = &endpoint_env {
                all_in_one("PADDOCK_ENDPOINT", all, service)?
            } else if let Some(v) = from_context {
                v.clone()
            } else {
                service.default_endpoint()
            };
            resolved.push(value);
        }
        let [
            identity_endpoint,
            authz_endpoint,
            sandbox_endpoint,
            audit_endpoint,
        ]: [String; 4] = resolved
            .try_into()
            .map_err(|_| CliError::usage("four endpoints"))?;
        let (token, token_source) = if let Some(t) = self.token {
            (Some(t), TokenSource::Flag)
        } else if let Some(t) = env("PADDOCK_TOKEN") {
            (Some(t), TokenSource::Env)
        } else if let Some(t) = context.token.clone() {
            (Some(t), TokenSource::Context)
        } else {
            (None, TokenSource::None)
        };
        Ok(Global {
            token,
            identity_endpoint,
            authz_endpoint,
            sandbox_endpoint,
            audit_endpoint,
            output: self.output,
            context: context_name,
            bootstrap_token_file: context.bootstrap_token_file,
            token_source,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config() -> Config {
        let mut c = Config::default();
        c.contexts.insert(
            "prod".into(),
            Context {
                identity_endpoint: Some("https://id.prod".into()),
                authz_endpoint: Some("https://authz.prod".into()),
                token: Some("pdk_prod".into()),
                ..Default::default()
            },
        );
        c.contexts.insert(
            "dev".into(),
            Context {
                identity_endpoint: Some("http://127.0.0.1:9001".into()),
                token: Some("pdk_dev".into()),
                ..Default::default()
            },
        );
        c.current_context = Some("prod".into());
        c
    }

    fn resolve(args: GlobalArgs, env: &[(&str, &str)]) -> Result<Global, CliError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        args.resolve_with(&config(), |k| env.get(k).cloned())
    }

    #[test]
    fn flag_beats_env_beats_context_beats_default() {
        let g = resolve(GlobalArgs::default(), &[]).expect("resolve");
        assert_eq!(g.context.as_deref(), Some("prod"));
        assert_eq!(g.identity_endpoint, "https://id.prod");
        assert_eq!(g.authz_endpoint, "https://authz.prod");
        assert_eq!(g.sandbox_endpoint, "http://127.0.0.1:7103");
        assert_eq!(g.token.as_deref(), Some("pdk_prod"));

        let env = [
            ("PADDOCK_IDENTITY_ENDPOINT", "http://env:1"),
            ("PADDOCK_TOKEN", "pdk_env"),
        ];
        let g = resolve(GlobalArgs::default(), &env).expect("resolve");
        assert_eq!(g.identity_endpoint, "http://env:1");
        assert_eq!(g.token.as_deref(), Some("pdk_env"));
        assert_eq!(g.token_source, TokenSource::Env);

        let args = GlobalArgs {
            identity_endpoint: Some("http://flag:1".into()),
            token: Some("pdk_flag".into()),
            ..Default::default()
        };
        let g = resolve(args, &env).expect("resolve");
        assert_eq!(g.identity_endpoint, "http://flag:1");
        assert_eq!(g.token.as_deref(), Some("pdk_flag"));
        assert_eq!(g.token_source, TokenSource::Flag);
    }

    #[test]
    fn contexts_are_chosen_by_flag_or_env() {
        let g = resolve(GlobalArgs::default(), &[("PADDOCK_CONTEXT", "dev")]).expect("env");
        assert_eq!(g.identity_endpoint, "http://127.0.0.1:9001");
        assert_eq!(g.token.as_deref(), Some("pdk_dev"));
        let args = GlobalArgs {
            context: Some("prod".into()),
            ..Default::default()
        };
        let g = resolve(args, &[("PADDOCK_CONTEXT", "dev")]).expect("flag");
        assert_eq!(g.token.as_deref(), Some("pdk_prod"));
        let args = GlobalArgs {
            context: Some("nope".into()),
            ..Default::default()
        };
        assert!(
            resolve(args, &[]).is_err(),
            "an unknown context is an error"
        );
    }

    #[test]
    fn one_endpoint_for_all_services() {
        let args = GlobalArgs {
            endpoint: Some("http://paddock.internal".into()),
            audit_endpoint: Some("http://audit:1".into()),
            ..Default::default()
        };
        let g = resolve(args, &[("PADDOCK_AUTHZ_ENDPOINT", "http://env:2")]).expect("resolve");
        assert_eq!(g.identity_endpoint, "http://paddock.internal:7101");
        assert_eq!(g.authz_endpoint, "http://paddock.internal:7102");
        assert_eq!(g.sandbox_endpoint, "http://paddock.internal:7103");
        assert_eq!(g.audit_endpoint, "http://audit:1");
        let g = resolve(
            GlobalArgs::default(),
            &[("PADDOCK_ENDPOINT", "https://[::1]:9000/")],
        )
        .expect("resolve");
        assert_eq!(g.identity_endpoint, "https://[::1]:9000");
        assert_eq!(g.audit_endpoint, "https://[::1]:9003");
        for bad in [
            "paddock.internal",
            "http://h:x",
            "http://h:65535",
            "http://h/a",
        ] {
            let args = GlobalArgs {
                endpoint: Some(bad.into()),
                ..Default::default()
            };
            assert!(resolve(args, &[]).is_err(), "{bad}");
        }
    }
}
