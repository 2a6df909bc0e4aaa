//! The `wgo` command line: sets up logging and hands each subcommand to its file in `cli/`.

mod cli;

use std::io::IsTerminal;

use clap::Parser;
use cli::{Cli, Command};

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("WGO_LOG").unwrap_or_else(|_| "info".into()))
        .with_target(false)
        .init();
    let result = match Cli::parse().command {
        Command::Record(args) => cli::record::run(args),
        Command::Report(args) => cli::report::run(args),
        Command::Agent(args) => cli::agent::run(args),
        Command::Trigger(args) => cli::trigger::run(args),
        Command::Collect(args) => cli::collect::run(args.collector, None, args.trigger_id),
        Command::Serve(args) => cli::serve::run(args),
        Command::Ship(args) => cli::ship::run(args),
        Command::Secret(args) => cli::secret::run(args),
        Command::Thaw(args) => cli::thaw::run(args),
        Command::Sql(args) => cli::sql::run(args),
    };
    if let Err(e) = result {
        eprintln!("wgo: error: {e:#}");
        std::process::exit(1);
    }
}
