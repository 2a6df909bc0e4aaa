//! `wgo record`: record a cgroup into the ring until stopped, then write it as a dump.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use wgo::node::recorder::Recorder;
use wgo::outfile;

use super::{CaptureFlags, hostname, peak_rss_kib, positive_f64, stop_flag};

#[derive(clap::Args)]
pub struct RecordArgs {
    /// cgroup v2 directory to record (absolute, or relative to the cgroup2 mount).
    #[arg(long)]
    pub cgroup: PathBuf,
    #[command(flatten)]
    pub capture: CaptureFlags,
    /// Stop after this many seconds (default: run until SIGINT or SIGTERM).
    #[arg(long, value_parser = positive_f64)]
    pub duration: Option<f64>,
    /// Node name stored in the dump (default: the host name).
    #[arg(long)]
    pub node: Option<String>,
    /// Where to write the pcapng dump.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: RecordArgs) -> anyhow::Result<()> {
    let opts = args.capture.record_options(args.cgroup, args.node.unwrap_or_else(hostname));
    // Fail before recording, not after, if the dump cannot be written.
    // Private: a dump holds payload bytes.
    let out = if outfile::is_special(&args.out) {
        Output::Special(outfile::open_special(&args.out)?)
    } else {
        Output::Partial(outfile::Partial::create(&args.out, 0o600)?)
    };

    let stop = stop_flag()?;
    let result = (|| {
        let mut recorder = Recorder::start(&opts)?;
        let ids: Vec<String> = recorder.program_ids().iter().map(|(n, id)| format!("{n}={id}")).collect();
        wgo::node::notify::ready(&format!("{} as node {} (programs {})", opts.cgroup.display(), opts.node, ids.join(" ")));
        let deadline = args.duration.map(|d| Instant::now() + Duration::from_secs_f64(d));
        recorder.run(&stop, deadline)?;
        let (ring, info) = recorder.finish()?;
        let written = match out {
            Output::Special(f) => wgo::dump::write_dump(f, &info, ring.iter())?,
            Output::Partial(p) => {
                let written =
                    wgo::dump::write_dump(p.file(), &info, ring.iter()).with_context(|| format!("writing {}", p.path().display()))?;
                p.commit(outfile::Durability::Durable)?;
                written
            }
        };
        print!("{}", wgo::node::recorder::summarize(&ring, &info));
        println!("wrote {} packets to {}", written.packets, args.out.display());
        tracing::info!("peak memory {} KiB", peak_rss_kib());
        anyhow::Ok(())
    })();
    // An uncommitted partial file removes itself.
    result
}

/// Where the dump goes: a special file written in place, or a regular one beside it.
enum Output {
    Special(std::fs::File),
    Partial(outfile::Partial),
}
