//! `wgo record`: record a cgroup into the ring until stopped, then write it as a dump.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use wgo::node::recorder::Recorder;

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
    let special = wgo::outfile::is_special(&args.out);
    let tmp = if special { args.out.clone() } else { wgo::outfile::partial_path(&args.out) };
    // Private: a dump holds payload bytes.
    let open = || if special { std::fs::OpenOptions::new().write(true).open(&tmp) } else { wgo::transport::spool::create_private(&tmp) };
    open().with_context(|| format!("cannot write {}", args.out.display()))?;

    let stop = stop_flag()?;
    let result = (|| {
        let mut recorder = Recorder::start(&opts)?;
        let ids: Vec<String> = recorder.program_ids().iter().map(|(n, id)| format!("{n}={id}")).collect();
        wgo::node::notify::ready(&format!("{} as node {} (programs {})", opts.cgroup.display(), opts.node, ids.join(" ")));
        let deadline = args.duration.map(|d| Instant::now() + Duration::from_secs_f64(d));
        recorder.run(&stop, deadline)?;
        let (ring, info) = recorder.finish()?;
        let file = open().with_context(|| format!("writing {}", tmp.display()))?;
        let written = wgo::dump::write_dump(file, &info, ring.iter())?;
        if !special {
            std::fs::rename(&tmp, &args.out).with_context(|| format!("renaming {} to {}", tmp.display(), args.out.display()))?;
        }
        print!("{}", wgo::node::recorder::summarize(&ring, &info));
        println!("wrote {} packets to {}", written.packets, args.out.display());
        tracing::info!("peak memory {} KiB", peak_rss_kib());
        anyhow::Ok(())
    })();
    if result.is_err() && !special {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
