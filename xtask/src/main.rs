//! `cargo xtask`: set up a machine, build eBPF and wgo, run tests, the demo and benchmarks.

mod bench;
mod build;
mod corpus;
mod demo;
mod exec;
mod screenshots;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "wgo's build, test, demo and benchmark tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing (nightly rust-src, bpf-linker), build eBPF and wgo.
    Build,
    /// Build, install test packages, run every test (needs root for the BPF tests).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build, lint and test `wgo sql`'s crate (DataFusion; its first build is long).
    TestSql,
    /// Build and run the demo: real traffic in network namespaces, recorded and summarised.
    Demo {
        /// The armed variant: one demo app crashes with SIGSEGV mid-run; the agents trigger
        /// by themselves and `wgo serve` files and reports the incident.
        #[arg(long)]
        crash: bool,
    },
    /// Run the demo and write the README's timeline screenshots into docs/.
    Screenshots,
    /// Run the whole corpus matrix: every Debian program under every fault, judged; prints
    /// each scenario and the precision/recall table per half (root; about 40 minutes).
    Corpus,
    /// Run each fuzz target briefly (as `test` does at its end).
    Fuzz,
    /// Run a benchmark and print its figures.
    Bench {
        #[arg(value_enum)]
        which: bench::Which,
    },
}

fn main() {
    let result = match Cli::parse().cmd {
        Cmd::Build => build::all(),
        Cmd::Test { args } => test::run(&args),
        Cmd::TestSql => test::sql(),
        Cmd::Demo { crash } => demo::run(crash),
        Cmd::Screenshots => screenshots::run(),
        Cmd::Corpus => corpus::run(),
        Cmd::Fuzz => build::all().and_then(|()| test::fuzz()),
        Cmd::Bench { which } => bench::run(which),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}
