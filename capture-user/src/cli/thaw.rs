//! `wgo thaw`: the way out of `--on-trigger freeze`.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ThawArgs {
    /// The frozen application's cgroup v2 directory (absolute, or under the cgroup2 mount).
    #[arg(long)]
    pub cgroup: PathBuf,
}

pub fn run(args: ThawArgs) -> anyhow::Result<()> {
    let app = wgo::node::cgroup::resolve(&args.cgroup)?;
    match wgo::node::stop::thaw(&app)? {
        true => println!("thawed {}", app.display()),
        false => println!("{} was not frozen", app.display()),
    }
    Ok(())
}
