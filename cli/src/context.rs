//! `paddock login` and `paddock context`: named contexts in the config
//! file, like kubectl's. Login reads the token from stdin or a prompt that
//! does not echo, never from the command line, checks it with `WhoAmI`,
//! and saves it with the endpoints in a context that becomes current.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use paddock_proto::identity::v1::WhoAmIRequest;
use serde_json::json;
use tonic::Code;

use crate::commands::Ctx;
use crate::config::{self, Config, Context};
use crate::error::CliError;
use crate::global::{Global, GlobalArgs, TokenSource};
use crate::output::{self, Format, Table, print_json, print_list};

/// The context `paddock login` writes when none is named or current.
const DEFAULT_CONTEXT: &str = "default";

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The context to save the login in [default: the current context,
    /// else "default"]; it becomes the current context.
    pub name: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// List the contexts (never their tokens); * marks the current one.
    List,
    /// Print the current context's name.
    Current,
    /// Make a context the current one.
    Use {
        /// The context's name.
        name: String,
    },
    /// Delete a context (and the token saved in it).
    Delete {
        /// The context's name.
        name: String,
    },
}

/// The settings for a command that writes context `name` (`login`, `dev`):
/// flags and environment first, then what `name` already holds (not the
/// current context's), then the defaults. `name` need not exist yet.
pub fn resolve_for(raw: &GlobalArgs, name: &str) -> Result<Global, CliError> {
    config::check_name(name)?;
    let mut config = Config::load()?;
    config.contexts.entry(name.to_owned()).or_default();
    let mut raw = raw.clone();
    raw.context = Some(name.to_owned());
    raw.resolve_with(&config, |var| {
        std::env::var(var).ok().filter(|v| !v.trim().is_empty())
    })
}

/// The context `login` writes: the one named, else the current one.
pub fn login_context(raw: &GlobalArgs, args: &LoginArgs) -> Result<String, CliError> {
    if let Some(name) = args.name.clone().or_else(|| raw.context.clone()) {
        return Ok(name);
    }
    Ok(Config::load()?
        .current_context
        .unwrap_or_else(|| DEFAULT_CONTEXT.to_owned()))
}

/// Reads a token: a prompt without echo on a terminal, else the first
/// line of stdin.
fn read_token() -> Result<String, CliError> {
    let stdin = std::io::stdin();
    let mut line = String::new();
    if stdin.is_terminal() {
        eprint!("Paste the API key (input is hidden): ");
        let _ = std::io::stderr().flush();
        let saved = rustix::termios::tcgetattr(&stdin).ok();
        if let Some(t) = &saved {
            let mut quiet = t.clone();
            quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
            let _ =
                rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &quiet);
        }
        let read = stdin.lock().read_line(&mut line);
        if let Some(t) = &saved {
            let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, t);
        }
        eprintln!();
        read?;
    } else {
        stdin.lock().read_line(&mut line)?;
    }
    let token = line.trim().to_owned();
    if token.is_empty() {
        return Err(CliError::usage(
            "no token on stdin: pipe it in (paddock login < key-file) or type it at the prompt",
        ));
    }
    Ok(token)
}

pub async fn login(ctx: &mut Ctx, args: LoginArgs, name: String) -> Result<(), CliError> {
    let _ = args;
    if ctx.global().token_source == TokenSource::Flag {
        return Err(CliError::usage(
            "paddock login never takes the token as --token (it would stay in shell history and the process list): pipe it on stdin or type it at the prompt",
        ));
    }
    let token = read_token()?;
    ctx.set_token(token.clone());
    let mut client = ctx.identity()?;
    let me = client
        .who_am_i(WhoAmIRequest {})
        .await
        .map_err(ctx.id_err())?
        .into_inner()
        .principal
        .ok_or_else(|| CliError::new(Code::Internal, "identity returned no principal"))?;
    let global = ctx.global().clone();
    let mut config = Config::load()?;
    let previous = config.contexts.get(&name).cloned().unwrap_or_default();
    config.contexts.insert(
        name.clone(),
        Context {
            identity_endpoint: Some(global.identity_endpoint.clone()),
            authz_endpoint: Some(global.authz_endpoint.clone()),
            sandbox_endpoint: Some(global.sandbox_endpoint.clone()),
            audit_endpoint: Some(global.audit_endpoint.clone()),
            token: Some(token),
            bootstrap_token_file: previous.bootstrap_token_file,
        },
    );
    config.current_context = Some(name.clone());
    let path = config.save()?;
    let who = if me.display_name.is_empty() {
        me.id.clone()
    } else {
        me.display_name.clone()
    };
    if ctx.json() {
        print_json(&json!({
            "context": name,
            "config_file": path.display().to_string(),
            "principal": output::principal_json(&me),
        }));
    } else {
        let org = if me.organization.is_empty() {
            String::new()
        } else {
            format!(" in {}", me.organization)
        };
        outln!(
            "logged in as {who} ({}{}){org}",
            output::kind_name(me.kind),
            if me.role.is_empty() {
                String::new()
            } else {
                format!(", {}", me.role)
            }
        );
        outln!("context {name} is current ({})", path.display());
    }
    Ok(())
}

/// Runs a `paddock context` command (no network).
pub fn run(output: Format, cmd: ContextCommand) -> Result<(), CliError> {
    let json = output == Format::Json;
    let mut config = Config::load()?;
    match cmd {
        ContextCommand::List => {
            let current = config.current_context.clone().unwrap_or_default();
            if json {
                print_list(config.contexts.iter().map(|(name, c)| {
                    json!({
                        "name": name,
                        "current": *name == current,
                        "identity_endpoint": c.identity_endpoint,
                        "authz_endpoint": c.authz_endpoint,
                        "sandbox_endpoint": c.sandbox_endpoint,
                        "audit_endpoint": c.audit_endpoint,
                        "token": c.token.is_some(),
                        "bootstrap_token_file": c.bootstrap_token_file.as_ref().map(|p| p.display().to_string()),
                    })
                }));
            } else {
                let mut t = Table::new(&["CURRENT", "NAME", "IDENTITY", "TOKEN"]);
                for (name, c) in &config.contexts {
                    t.row(vec![
                        if *name == current { "*" } else { "" }.to_owned(),
                        name.clone(),
                        c.identity_endpoint
                            .clone()
                            .unwrap_or_else(|| "-".to_owned()),
                        if c.token.is_some() { "saved" } else { "-" }.to_owned(),
                    ]);
                }
                t.print();
            }
            Ok(())
        }
        ContextCommand::Current => {
            let name = config
                .current_context
                .clone()
                .filter(|n| config.contexts.contains_key(n))
                .ok_or_else(|| {
                    CliError::new(
                        Code::NotFound,
                        "no current context: paddock context use NAME, paddock login or paddock dev sets one",
                    )
                })?;
            if json {
                print_json(&json!({ "name": name }));
            } else {
                outln!("{name}");
            }
            Ok(())
        }
        ContextCommand::Use { name } => {
            config.context(&name)?;
            config.current_context = Some(name.clone());
            config.save()?;
            if json {
                print_json(&json!({ "name": name, "current": true }));
            } else {
                outln!("switched to context {name}");
            }
            Ok(())
        }
        ContextCommand::Delete { name } => {
            if config.contexts.remove(&name).is_none() {
                return Err(config.unknown(&name));
            }
            if config.current_context.as_deref() == Some(name.as_str()) {
                config.current_context = None;
            }
            config.save()?;
            if json {
                print_json(&json!({ "deleted": name }));
            } else {
                outln!("deleted context {name}");
            }
            Ok(())
        }
    }
}

/// What `paddock dev` records: its endpoints and bootstrap token file in
/// context `name`, made current. A token saved there before stays while it
/// belongs to the same data dir (the same database). Returns the file.
pub fn write_dev_context(
    name: &str,
    endpoints: [&str; 4],
    bootstrap_token_file: Option<PathBuf>,
) -> Result<PathBuf, CliError> {
    config::check_name(name)?;
    let mut config = Config::load()?;
    let previous = config.contexts.get(name).cloned().unwrap_or_default();
    let token = previous.token.filter(|_| {
        bootstrap_token_file.is_some() && previous.bootstrap_token_file == bootstrap_token_file
    });
    let [identity, authz, sandbox, audit] = endpoints;
    config.contexts.insert(
        name.to_owned(),
        Context {
            identity_endpoint: Some(identity.to_owned()),
            authz_endpoint: Some(authz.to_owned()),
            sandbox_endpoint: Some(sandbox.to_owned()),
            audit_endpoint: Some(audit.to_owned()),
            token,
            bootstrap_token_file,
        },
    );
    config.current_context = Some(name.to_owned());
    config.save()
}
