//! The `wgo` command line: one file per subcommand; flags and helpers they share here.
//! It sits on top of the library and may use all of it.

pub mod agent;
pub mod collect;
pub mod record;
pub mod report;
pub mod secret;
pub mod serve;
pub mod ship;
pub mod sql;
pub mod thaw;
pub mod trigger;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "wgo", version, about = "What's going on? A distributed flight recorder for networked systems")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Record every packet a cgroup's sockets send or receive, then write the ring as pcapng.
    Record(record::RecordArgs),
    /// Merge per-node dumps into one causally ordered story and say what went wrong.
    Report(report::ReportArgs),
    /// Record a cgroup until a signed trigger arrives; then dump, ship, stop the app, exit
    /// (an armed agent records again, for the next incident).
    Agent(agent::AgentArgs),
    /// Press the button: tell every agent to dump, ship and stop; collect their dumps.
    Trigger(trigger::TriggerArgs),
    /// Collect dumps without sending a trigger (after a restart, or for `wgo ship`).
    Collect(collect::CollectArgs),
    /// Run a collector as a service: every incident (from `wgo trigger` or an armed agent)
    /// in a directory of its own, with its manifest and, optionally, its report.
    Serve(serve::ServeArgs),
    /// Ship dumps that stayed in an agent's spool (e.g. from a partitioned node).
    Ship(ship::ShipArgs),
    /// Make a new shared secret: `wgo secret /etc/wgo/secret` (or `wgo secret > FILE`), mode 600.
    Secret(secret::SecretArgs),
    /// Thaw an application that `--on-trigger freeze` left frozen.
    Thaw(thaw::ThawArgs),
    /// SQL over the tables of `wgo report --parquet DIR` (runs the `wgo-sql` binary).
    Sql(sql::SqlArgs),
}

/// The UDP port agents hear triggers on unless told otherwise.
pub const DEFAULT_TRIGGER_PORT: u16 = 7301;

#[derive(clap::Args)]
pub struct CaptureFlags {
    /// L4 payload bytes to keep per packet, after the IP and L4 headers.
    #[arg(long, default_value_t = capture_ebpf::DEFAULT_SNAPLEN,
          value_parser = clap::value_parser!(u32).range(0..=capture_ebpf::MAX_SNAPLEN as i64))]
    pub snaplen: u32,
    /// Keep at most this many seconds of history.
    #[arg(long, default_value_t = 10.0, value_parser = positive_f64)]
    pub ring_seconds: f64,
    /// Keep at most this many bytes of history.
    #[arg(long, default_value_t = 256 << 20, value_parser = clap::value_parser!(u64).range(wgo::node::ring::MIN_RING_BYTES as u64..))]
    pub ring_bytes: u64,
    /// Size of each CPU's kernel ring (power of two, 4096 to 2 MiB).
    #[arg(long, default_value_t = capture_ebpf::MAX_RING_BYTES, value_parser = kernel_ring_bytes)]
    pub kernel_ring_bytes: u32,
}

impl CaptureFlags {
    /// Recording options for a cgroup and node name.
    pub fn record_options(&self, cgroup: std::path::PathBuf, node: String) -> wgo::node::recorder::RecordOptions {
        wgo::node::recorder::RecordOptions {
            cgroup,
            node,
            snaplen: self.snaplen,
            ring_seconds: self.ring_seconds,
            ring_bytes: self.ring_bytes as usize,
            kernel_ring_bytes: self.kernel_ring_bytes,
        }
    }
}

pub fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("'{s}' is not a positive number")),
    }
}

/// A shipping rate: 0 (unlimited), or at least the slowest the collector keeps a transfer at.
pub fn ship_rate(s: &str) -> Result<u64, String> {
    let min = wgo::transport::collector::MIN_SHIP_RATE;
    match s.parse::<u64>() {
        Ok(v) if v == 0 || v >= min => Ok(v),
        Ok(_) => Err(format!("'{s}' bytes/s is below the least a collector keeps a transfer at ({min}; 0: unlimited)")),
        Err(_) => Err(format!("'{s}' is not a number of bytes per second")),
    }
}

pub fn non_negative_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("'{s}' is not a number of seconds (0 or more)")),
    }
}

pub fn kernel_ring_bytes(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(v) if (4096..=capture_ebpf::MAX_RING_BYTES).contains(&v) && v.is_power_of_two() => Ok(v),
        _ => Err(format!("'{s}' is not a power of two from 4096 to {}", capture_ebpf::MAX_RING_BYTES)),
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "node".into())
}

/// Peak resident set size of this process, KiB.
pub fn peak_rss_kib() -> i64 {
    // SAFETY: rusage is plain integers; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss
}

/// Set on SIGINT or SIGTERM.
pub fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing signal handlers")?;
    }
    Ok(stop)
}
