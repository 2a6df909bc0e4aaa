//! The `wgo` command line.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use wgo::record::{RecordOptions, Recorder};

#[derive(Parser)]
#[command(name = "wgo", version, about = "What's going on? A distributed flight recorder for networked systems")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Record every packet a cgroup's sockets send or receive, then write the ring as pcapng.
    Record(RecordArgs),
    /// Merge per-node dumps into one causally ordered story and say what went wrong.
    Report(ReportArgs),
}

#[derive(clap::Args)]
struct ReportArgs {
    /// Dump files (one node each), or a directory of them (with manifest.json if a trigger made it).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Protocol spec (TOML) naming the application's messages, rules and invariants.
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Write the full report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write all packets, merged in global order with corrected times, as pcapng.
    #[arg(long)]
    pcapng: Option<PathBuf>,
}

#[derive(clap::Args)]
struct RecordArgs {
    /// cgroup v2 directory to record (absolute, or relative to the cgroup2 mount).
    #[arg(long)]
    cgroup: PathBuf,
    /// L4 payload bytes to keep per packet, after the IP and L4 headers.
    #[arg(long, default_value_t = capture_ebpf::DEFAULT_SNAPLEN,
          value_parser = clap::value_parser!(u32).range(0..=capture_ebpf::MAX_SNAPLEN as i64))]
    snaplen: u32,
    /// Keep at most this many seconds of history.
    #[arg(long, default_value_t = 10.0, value_parser = positive_f64)]
    ring_seconds: f64,
    /// Keep at most this many bytes of history.
    #[arg(long, default_value_t = 256 << 20, value_parser = clap::value_parser!(u64).range(wgo::ring::MIN_RING_BYTES as u64..))]
    ring_bytes: u64,
    /// Size of each CPU's kernel ring map (power of two, at least 4096).
    #[arg(long, default_value_t = 4 << 20, value_parser = kernel_ring_bytes)]
    kernel_ring_bytes: u32,
    /// Stop after this many seconds (default: run until SIGINT or SIGTERM).
    #[arg(long, value_parser = positive_f64)]
    duration: Option<f64>,
    /// Node name stored in the dump (default: the host name).
    #[arg(long)]
    node: Option<String>,
    /// Where to write the pcapng dump.
    #[arg(long)]
    out: PathBuf,
}

fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("'{s}' is not a positive number")),
    }
}

fn kernel_ring_bytes(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(v) if v >= 4096 && v.is_power_of_two() => Ok(v),
        _ => Err(format!("'{s}' is not a power of two of at least 4096")),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "node".into())
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("WGO_LOG").unwrap_or_else(|_| "info".into()))
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Record(args) => record(args),
        Command::Report(args) => report(args),
    };
    if let Err(e) = result {
        eprintln!("wgo: error: {e:#}");
        std::process::exit(1);
    }
}

fn record(args: RecordArgs) -> anyhow::Result<()> {
    let opts = RecordOptions {
        cgroup: args.cgroup,
        node: args.node.unwrap_or_else(hostname),
        snaplen: args.snaplen,
        ring_seconds: args.ring_seconds,
        ring_bytes: args.ring_bytes as usize,
        kernel_ring_bytes: args.kernel_ring_bytes,
    };
    // Fail before recording, not after, if the dump cannot be written.
    let tmp = tmp_path(&args.out);
    std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", args.out.display()))?;

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing signal handlers")?;
    }
    let result = (|| {
        let mut recorder = Recorder::start(&opts)?;
        let ids: Vec<String> = recorder.program_ids().iter().map(|(n, id)| format!("{n}={id}")).collect();
        tracing::info!("recording {} as node {} (programs {})", opts.cgroup.display(), opts.node, ids.join(" "));
        let deadline = args.duration.map(|d| Instant::now() + Duration::from_secs_f64(d));
        recorder.run(&stop, deadline)?;
        let (ring, info) = recorder.finish()?;
        let file = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        let written = wgo::dump::write_dump(file, &info, ring.iter())?;
        std::fs::rename(&tmp, &args.out).with_context(|| format!("renaming {} to {}", tmp.display(), args.out.display()))?;
        print!("{}", wgo::record::summarize(&ring, &info));
        println!("wrote {} packets to {}", written.packets, args.out.display());
        tracing::info!("peak memory {} KiB", peak_rss_kib());
        anyhow::Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Peak resident set size of this process, KiB.
fn peak_rss_kib() -> i64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss
}

fn report(args: ReportArgs) -> anyhow::Result<()> {
    use wgo::analysis::{self, trace::Trace};
    let mut files = Vec::new();
    let mut missing = Vec::new();
    for input in &args.inputs {
        if input.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("reading {}", input.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "pcapng"))
                .collect();
            found.sort();
            if found.is_empty() {
                anyhow::bail!("{} holds no .pcapng dumps", input.display());
            }
            files.extend(found);
            let manifest = input.join("manifest.json");
            if manifest.exists() {
                missing.extend(read_missing(&manifest)?);
            }
        } else if input.exists() {
            files.push(input.clone());
        } else {
            anyhow::bail!("{} does not exist", input.display());
        }
    }
    let spec = match &args.spec {
        Some(p) => Some(analysis::spec::Spec::load(p)?),
        None => None,
    };
    let mut phase = analysis::Phase::new();
    let trace = Trace::read_files(&files)?;
    phase.done("read");
    let a = analysis::analyze(trace, analysis::Inputs { spec, missing_nodes: missing });
    if let Some(p) = &args.json {
        write_atomically(p, |f| a.write_json(f))?;
        phase.done("json");
    }
    if let Some(p) = &args.pcapng {
        write_atomically(p, |f| a.write_pcapng(f))?;
    }
    print!("{}", a.summary());
    tracing::info!("peak memory {} KiB", peak_rss_kib());
    for (flag, p) in [("json", &args.json), ("pcapng", &args.pcapng)] {
        if let Some(p) = p {
            println!("{flag}: {}", p.display());
        }
    }
    Ok(())
}

/// Node names a trigger's manifest lists as expected but missing.
fn read_missing(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    Ok(v["missing"].as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default())
}

fn write_atomically(path: &std::path::Path, write: impl FnOnce(std::fs::File) -> std::io::Result<()>) -> anyhow::Result<()> {
    let tmp = tmp_path(path);
    let f = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", path.display()))?;
    if let Err(e) = write(f) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

fn tmp_path(out: &std::path::Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}
