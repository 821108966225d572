//! `paddock`: the Paddock CLI.

fn main() -> std::process::ExitCode {
    paddock::run()
}
