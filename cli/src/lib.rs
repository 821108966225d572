//! The `paddock` CLI: client commands for every Paddock API, `paddock dev`
//! (every service in one process) and `paddock bench`.
#![forbid(unsafe_code)]

/// `println!` that ends the process quietly when stdout is closed (e.g.
/// `paddock member list | head`) instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))
    };
}

mod audit;
mod bench;
mod bench_audit;
mod bench_sandbox;
mod commands;
mod credential;
mod dev;
mod error;
mod invite;
mod names;
mod output;
mod policy;
mod sandbox;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

pub use error::CliError;
pub use output::Format;

/// The Paddock CLI.
#[derive(Debug, Parser)]
#[command(
    name = "paddock",
    version,
    about = "Paddock: run AI agents without trusting them"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command accepts.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// API key (pdk_...) or, for `org create`, the bootstrap token.
    #[arg(long, global = true, env = "PADDOCK_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The identity service.
    #[arg(
        long,
        global = true,
        env = "PADDOCK_IDENTITY_ENDPOINT",
        default_value = "http://127.0.0.1:7101"
    )]
    pub identity_endpoint: String,
    /// The authz service.
    #[arg(
        long,
        global = true,
        env = "PADDOCK_AUTHZ_ENDPOINT",
        default_value = "http://127.0.0.1:7102"
    )]
    pub authz_endpoint: String,
    /// The sandbox runner.
    #[arg(
        long,
        global = true,
        env = "PADDOCK_SANDBOX_ENDPOINT",
        default_value = "http://127.0.0.1:7103"
    )]
    pub sandbox_endpoint: String,
    /// The audit service.
    #[arg(
        long,
        global = true,
        env = "PADDOCK_AUDIT_ENDPOINT",
        default_value = "http://127.0.0.1:7104"
    )]
    pub audit_endpoint: String,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value = "table"
    )]
    pub output: Format,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every service in one process on loopback (SQLite under --data-dir).
    Dev(dev::DevArgs),
    /// Organizations: create (bootstrap token), get and delete the caller's.
    #[command(subcommand)]
    Org(commands::OrgCommand),
    /// Members: invite, accept an invite, list, change roles, remove.
    #[command(subcommand)]
    Member(commands::MemberCommand),
    /// Invites: list them (never their codes) and revoke pending ones.
    #[command(subcommand)]
    Invite(invite::InviteCommand),
    /// AI-agent identities.
    #[command(subcommand)]
    Agent(commands::AgentCommand),
    /// Projects.
    #[command(subcommand)]
    Project(commands::ProjectCommand),
    /// API keys.
    #[command(subcommand)]
    Key(commands::KeyCommand),
    /// Stored credentials (encrypted at rest; values are never shown).
    #[command(subcommand)]
    Credential(credential::CredentialCommand),
    /// Show who the token belongs to.
    Whoami,
    /// Check whether the caller holds PERMISSION (exit 0 allowed, 1 denied).
    Can(commands::CanArgs),
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
    /// Benchmarks (ARCHITECTURE §10 report format).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Parses the command line, runs the command and returns the exit code:
/// 0 success, 1 failure (or a denied `can`), 2 usage error.
pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_exit(&e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("INTERNAL: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if let Some(line) = err.render() {
                eprintln!("{line}");
            }
            ExitCode::from(err.exit_code())
        }
    }
}

/// `--help` and `--version` print as clap does; every other parse error
/// becomes `INVALID_ARGUMENT: ...` on stderr with exit 2.
fn usage_exit(err: &clap::Error) -> ExitCode {
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
    eprintln!(
        "{}: {}",
        error::code_name(tonic::Code::InvalidArgument),
        text.strip_prefix("error: ").unwrap_or(text)
    );
    ExitCode::from(2)
}

async fn execute(cli: Cli) -> Result<(), CliError> {
    let Cli { global, command } = cli;
    let ctx = || commands::Ctx::new(global.clone());
    match command {
        Command::Dev(args) => dev::run(&global, args).await,
        Command::Bench(cmd) => bench::run(&global, cmd).await,
        Command::Org(c) => commands::org(&mut ctx(), c).await,
        Command::Member(c) => commands::member(&mut ctx(), c).await,
        Command::Invite(c) => invite::run(&mut ctx(), c).await,
        Command::Agent(c) => commands::agent(&mut ctx(), c).await,
        Command::Project(c) => commands::project(&mut ctx(), c).await,
        Command::Key(c) => commands::key(&mut ctx(), c).await,
        Command::Credential(c) => credential::run(&mut ctx(), c).await,
        Command::Whoami => commands::whoami(&mut ctx()).await,
        Command::Can(a) => commands::can(&mut ctx(), a).await,
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
        assert_eq!(cli.global.identity_endpoint, "http://h:1");
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
