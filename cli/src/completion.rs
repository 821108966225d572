//! `paddock completion SHELL`: the completion script clap_complete writes
//! for the whole command tree, on stdout.

use clap::{Args, CommandFactory, ValueEnum};

use crate::error::CliError;

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell: bash (source it, or put it in
    /// /etc/bash_completion.d/paddock), zsh (save it as _paddock on
    /// $fpath) or fish (~/.config/fish/completions/paddock.fish).
    #[arg(value_enum)]
    pub shell: Shell,
}

/// The shells completion scripts are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Writes the script for `args.shell` to stdout.
pub fn print(args: &CompletionArgs) -> Result<(), CliError> {
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut crate::Cli::command(), "paddock", &mut out);
    outln!("{}", String::from_utf8_lossy(&out).trim_end());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_name_the_commands() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut crate::Cli::command(), "paddock", &mut out);
            let text = String::from_utf8(out).expect("utf8");
            for word in ["sandbox", "login", "rotate", "context"] {
                assert!(text.contains(word), "{shell:?} lacks {word}");
            }
        }
    }
}
