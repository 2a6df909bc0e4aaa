//! `wgo ship`: ship dumps that stayed in an agent's spool.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::positive_f64;

#[derive(clap::Args)]
pub struct ShipArgs {
    /// The agent's spool directory.
    #[arg(long)]
    pub spool: PathBuf,
    /// Collector to ship to (default: the one each dump's trigger named).
    #[arg(long)]
    pub to: Option<SocketAddr>,
    /// File holding the shared secret.
    #[arg(long)]
    pub secret_file: PathBuf,
    /// Rate limit, bytes per second (0: unlimited).
    #[arg(long, default_value_t = 0, value_parser = super::ship_rate)]
    pub ship_rate: u64,
    /// Give up after this many seconds per dump.
    #[arg(long, default_value_t = 60.0, value_parser = positive_f64)]
    pub deadline: f64,
}

pub fn run(args: ShipArgs) -> anyhow::Result<()> {
    let secret = wgo::transport::secret::load_secret(&args.secret_file)?;
    let mut entries: Vec<_> = wgo::transport::spool::spool_entries(&args.spool)?.into_iter().filter(|e| !e.shipped).collect();
    if entries.is_empty() {
        println!("nothing to ship in {}", args.spool.display());
        return Ok(());
    }
    let stop = super::stop_flag()?;
    let mut failed = Vec::new();
    for e in &mut entries {
        let to = match args.to {
            Some(t) => t,
            None => e.collector.parse().with_context(|| format!("{}: collector {:?} is not an address; give --to", e.node, e.collector))?,
        };
        let o = wgo::transport::ship::ShipOptions {
            secret: &secret,
            rate: args.ship_rate,
            deadline: Instant::now() + Duration::from_secs_f64(args.deadline),
            stop: Some(&stop),
        };
        match wgo::node::agent::ship_spooled(e, &args.spool, to, &o) {
            Ok(()) => println!("shipped {} ({} bytes) to {to}", e.dump_path(&args.spool).display(), e.size),
            Err(err) => {
                eprintln!("wgo: {}: {err:#}", e.dump_path(&args.spool).display());
                failed.push(e.node.clone());
            }
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("{} dump(s) not shipped", failed.len());
    }
    Ok(())
}
