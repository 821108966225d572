//! The `paddock` CLI: client commands for every Paddock API, `paddock dev`
//! (every service in one process) and `paddock bench`.
#![forbid(unsafe_code)]
// Outside tests a failure is an answer, never a panic.

/// `println!` that ends the process quietly when stdout is closed (e.g.
/// `paddock member list | head`) instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))
    };
}

mod access;
mod agent;
mod audit;
mod bench;
mod commands;
mod completion;
mod config;
mod context;
mod credential;
mod dev;
mod error;
mod global;
mod invite;
mod keys;
mod member;
mod names;
mod org;
mod output;
mod policy;
mod project;
mod sandbox;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use error::CliError;
pub use global::{Global, GlobalArgs};
pub use output::Format;

/// The Paddock CLI.
#[derive(Debug, Parser)]
#[command(
    name = "paddock",
    version,
    about = "Paddock: run AI agents without trusting them",
    after_help = "Settings come from flags, then PADDOCK_* variables, then the current context \
                  of the config file (paddock login, paddock context), then the defaults of \
                  paddock dev."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every service in one process on loopback (SQLite under --data-dir).
    Dev(dev::DevArgs),
    /// Save a token (read from stdin or a prompt) and the endpoints in a
    /// context of the config file.
    Login(context::LoginArgs),
    /// Named contexts of the config file: list, show the current one,
    /// switch, delete.
    #[command(subcommand)]
    Context(context::ContextCommand),
    /// Organizations: create and list (bootstrap token); get, update and
    /// delete the caller's.
    #[command(subcommand)]
    Org(org::OrgCommand),
    /// Members: invite, accept an invite, list, change roles, remove.
    #[command(subcommand)]
    Member(member::MemberCommand),
    /// Invites: list them (never their codes) and revoke pending ones.
    #[command(subcommand)]
    Invite(invite::InviteCommand),
    /// AI-agent identities.
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// Projects.
    #[command(subcommand)]
    Project(project::ProjectCommand),
    /// API keys: create, list, rotate, revoke.
    #[command(subcommand)]
    Key(keys::KeyCommand),
    /// Stored credentials (encrypted at rest; values are never shown).
    #[command(subcommand)]
    Credential(credential::CredentialCommand),
    /// The built-in roles and what they grant.
    #[command(subcommand)]
    Role(access::RoleCommand),
    /// Every permission, the roles that grant it and the key scopes that
    /// include it.
    #[command(subcommand)]
    Permission(access::PermissionCommand),
    /// Show who the token belongs to.
    Whoami,
    /// Check whether the caller (or, with --as, another member or agent)
    /// holds PERMISSION: exit 0 allowed, 1 denied, 2 could not tell.
    Can(access::CanArgs),
    /// Run a command as an agent in a new sandbox, streaming its output;
    /// exits with the command's code.
    Run(sandbox::RunArgs),
    /// Sandboxes: list, get, stop, delete, exec, cp, watch, usage.
    #[command(subcommand)]
    Sandbox(sandbox::SandboxCommand),
    /// Per-agent policies: resource bounds and defaults, network, tools,
    /// credentials (agents.read / agents.manage).
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// The organization's security settings, which bound every agent
    /// policy (security.read / security.manage).
    #[command(subcommand)]
    Security(policy::SecurityCommand),
    /// The audit trail: query, tail, verify, export (needs audit.read).
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Print a shell completion script: paddock completion bash > /etc/bash_completion.d/paddock
    Completion(completion::CompletionArgs),
    /// Benchmarks (ARCHITECTURE §10 report format).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Parses the command line, runs the command and returns the exit code:
/// 0 success, 1 failure (or a denied `can`), 2 usage error.
pub fn run() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let json = wants_json(&args);
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => return usage_exit(&e, json),
    };
    if let Command::Completion(a) = &cli.command {
        return match completion::print(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => fail(&err, json),
        };
    }
    let json = cli.global.output == Format::Json;
    if let Command::Context(c) = cli.command {
        return match context::run(cli.global.output, c) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => fail(&err, json),
        };
    }
    let global = match &cli.command {
        // Login writes a context that may not exist yet.
        Command::Login(a) => context::login_context(&cli.global, a)
            .and_then(|name| context::resolve_for(&cli.global, &name)),
        // Dev serves; it writes its context rather than reading one.
        Command::Dev(_) => {
            let name = cli
                .global
                .context
                .clone()
                .unwrap_or_else(|| "dev".to_owned());
            let mut raw = cli.global.clone();
            raw.context = None;
            config::check_name(&name).and_then(|()| {
                raw.resolve_with(&config::Config::default(), |var| {
                    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
                })
                .map(|mut g| {
                    g.context = Some(name);
                    g
                })
            })
        }
        _ => cli.global.clone().resolve(),
    };
    let global = match global {
        Ok(g) => g,
        Err(err) => return fail(&err, json),
    };
    // One trace per run, for what the command asks of the services; `dev`
    // and the benches serve and trace for themselves.
    if !matches!(cli.command, Command::Dev(_) | Command::Bench(_)) {
        let trace = paddock_shared::telemetry::start_process_trace();
        if cli.global.verbose {
            eprintln!("trace id: {trace}");
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let err = CliError::new(
                tonic::Code::Internal,
                format!("cannot start the async runtime: {e}"),
            );
            return fail(&err, json);
        }
    };
    match runtime.block_on(execute(global, cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err, json),
    }
}

/// Prints the error (a `CODE: message` line, or a JSON object with `-o
/// json`) and returns its exit code.
fn fail(err: &CliError, json: bool) -> ExitCode {
    // A refusal names the trace of the run, so the user can find it.
    let trace = paddock_shared::telemetry::process_trace_id().filter(|_| err.from_a_call());
    let line = if json {
        err.render_json().map(|mut v| {
            if let Some(t) = &trace {
                v["trace_id"] = t.as_str().into();
            }
            v.to_string()
        })
    } else {
        err.render().map(|line| match &trace {
            Some(t) => format!("{line}\ntrace id: {t}"),
            None => line,
        })
    };
    if let Some(line) = line {
        eprintln!("{line}");
    }
    ExitCode::from(err.exit_code())
}

/// Whether the command line asks for `-o json`, read before parsing so
/// that even a usage error comes out as JSON.
fn wants_json(args: &[OsString]) -> bool {
    let args: Vec<&str> = args.iter().filter_map(|a| a.to_str()).collect();
    let mut json = false;
    for (i, a) in args.iter().enumerate() {
        if *a == "--" {
            break;
        }
        let value = match *a {
            "-o" | "--output" => args.get(i + 1).copied(),
            _ => a
                .strip_prefix("--output=")
                .or_else(|| a.strip_prefix("-o="))
                .or_else(|| a.strip_prefix("-o").filter(|v| !v.is_empty())),
        };
        if let Some(v) = value {
            json = v == "json";
        }
    }
    json
}

/// `--help` and `--version` print as clap does; every other parse error
/// becomes `INVALID_ARGUMENT: ...` on stderr (JSON with `-o json`), with
/// clap's tips (a similar subcommand, `--help`) kept, and exit 2.
fn usage_exit(err: &clap::Error, json: bool) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = err.print();
        return if err.use_stderr() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let text = err.render().to_string();
    let text = text.trim_end();
    fail(
        &CliError::usage(text.strip_prefix("error: ").unwrap_or(text)),
        json,
    )
}

async fn execute(global: Global, command: Command) -> Result<(), CliError> {
    let ctx = || commands::Ctx::new(global.clone());
    match command {
        Command::Dev(args) => dev::run(&global, args).await,
        Command::Bench(cmd) => bench::run(&global, cmd).await,
        Command::Login(args) => {
            let name = global.context.clone().unwrap_or_default();
            context::login(&mut ctx(), args, name).await
        }
        Command::Context(c) => context::run(global.output, c),
        Command::Completion(a) => completion::print(&a),
        Command::Org(c) => org::run(&mut ctx(), c).await,
        Command::Member(c) => member::run(&mut ctx(), c).await,
        Command::Invite(c) => invite::run(&mut ctx(), c).await,
        Command::Agent(c) => agent::run(&mut ctx(), c).await,
        Command::Project(c) => project::run(&mut ctx(), c).await,
        Command::Key(c) => keys::run(&mut ctx(), c).await,
        Command::Credential(c) => credential::run(&mut ctx(), c).await,
        Command::Role(c) => access::role(&mut ctx(), c).await,
        Command::Permission(c) => access::permission(&mut ctx(), c).await,
        Command::Whoami => access::whoami(&mut ctx()).await,
        Command::Can(a) => access::can(&mut ctx(), a).await,
        Command::Audit(c) => audit::run(&global, c).await,
        Command::Run(a) => sandbox::run(&mut ctx(), a).await,
        Command::Sandbox(c) => sandbox::sandbox(&mut ctx(), c).await,
        Command::Policy(c) => policy::policy(&mut ctx(), c).await,
        Command::Security(c) => policy::security(&mut ctx(), c).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = Cli::try_parse_from([
            "paddock",
            "project",
            "get",
            "web",
            "-o",
            "json",
            "--identity-endpoint",
            "http://h:1",
        ]);
        let cli = cli.expect("parses");
        assert_eq!(cli.global.output, Format::Json);
        assert_eq!(cli.global.identity_endpoint.as_deref(), Some("http://h:1"));
    }

    #[test]
    fn every_argument_has_a_help_line() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(format!("{path} {} (the subcommand)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "paddock", &mut missing);
        assert!(missing.is_empty(), "no help line: {missing:#?}");
    }

    #[test]
    fn global_flags_have_their_own_heading() {
        let cmd = Cli::command();
        for arg in cmd.get_arguments().filter(|a| a.is_global_set()) {
            assert_eq!(
                arg.get_help_heading(),
                Some("Global options"),
                "{}",
                arg.get_id()
            );
        }
        let project = cmd.find_subcommand("project").expect("project");
        let create = project.find_subcommand("create").expect("create");
        assert!(
            create
                .get_arguments()
                .filter(|a| !a.is_global_set() && a.get_id() != "help")
                .all(|a| a.get_help_heading().is_none()),
            "a command's own options stay under Options"
        );
    }

    #[test]
    fn unknown_subcommands_get_a_suggestion() {
        let err = Cli::try_parse_from(["paddock", "projct", "list"]).expect_err("typo");
        let text = err.render().to_string();
        assert!(text.contains("'project'"), "{text}");
    }

    #[test]
    fn json_is_detected_before_parsing() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(wants_json(&args(&["paddock", "nope", "-o", "json"])));
        assert!(wants_json(&args(&["paddock", "-ojson", "x"])));
        assert!(wants_json(&args(&["paddock", "--output=json"])));
        assert!(!wants_json(&args(&["paddock", "-o", "table"])));
        assert!(!wants_json(&args(&["paddock", "run", "--", "-o", "json"])));
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        assert!(
            Cli::try_parse_from(["paddock", "key", "create", "ci", "--expires", "5y"]).is_err()
        );
        assert!(Cli::try_parse_from(["paddock", "bench", "authz", "--concurrency", "0"]).is_err());
        assert!(Cli::try_parse_from(["paddock", "dev", "--identity-listen", "nowhere"]).is_err());
    }
}
