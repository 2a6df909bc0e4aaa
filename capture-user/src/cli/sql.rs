//! `wgo sql DIR 'QUERY'`: runs the `wgo-sql` binary (its own crate, `wgo-sql/`, so that
//! DataFusion stays out of wgo's build), found beside this one or on PATH.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(disable_help_flag = true)]
pub struct SqlArgs {
    /// DIR 'QUERY' [--format table|csv|json] [--memory-limit B] [--spill-dir DIR] [--threads N]
    /// (`wgo sql --help` for all).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// The `wgo-sql` beside the running `wgo`, else the one on PATH.
fn binary() -> Option<PathBuf> {
    let beside = std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join("wgo-sql"))).filter(|p| p.is_file());
    beside
        .or_else(|| std::env::var_os("PATH").and_then(|path| std::env::split_paths(&path).map(|d| d.join("wgo-sql")).find(|p| p.is_file())))
}

pub fn run(args: SqlArgs) -> anyhow::Result<()> {
    let Some(bin) = binary() else {
        anyhow::bail!(
            "`wgo sql` runs the `wgo-sql` binary, which is not beside wgo nor on PATH: build it with \
             `cargo build --release -p wgo-sql` and put target/release/wgo-sql beside wgo"
        );
    };
    // exec only returns on failure.
    let e = std::process::Command::new(&bin).args(&args.args).exec();
    Err(anyhow::anyhow!("running {}: {e}", bin.display()))
}
