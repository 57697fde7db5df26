//! The `tallyd` binary: parse the command line and hand over to [`tallyd::daemon::run`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    tallyd::daemon::run(tallyd::config::Cli::parse())
}
