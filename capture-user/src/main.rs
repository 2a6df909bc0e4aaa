//! The `wgo` command line.

use std::net::{SocketAddr, TcpListener, UdpSocket};
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
    /// Record a cgroup until a signed trigger arrives; then dump, ship, stop the app, exit.
    Agent(AgentArgs),
    /// Press the button: tell every agent to dump, ship and stop; collect their dumps.
    Trigger(TriggerArgs),
    /// Collect dumps without sending a trigger (after a restart, or for `wgo ship`).
    Collect(CollectArgs),
    /// Ship dumps that stayed in an agent's spool (e.g. from a partitioned node).
    Ship(ShipArgs),
}

#[derive(clap::Args)]
struct CaptureFlags {
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
    /// Size of each CPU's kernel ring (power of two, 4096 to 2 MiB).
    #[arg(long, default_value_t = capture_ebpf::MAX_RING_BYTES, value_parser = kernel_ring_bytes)]
    kernel_ring_bytes: u32,
}

#[derive(clap::Args)]
struct AgentArgs {
    /// This node's name (in dumps and file names: letters, digits, - _ .).
    #[arg(long)]
    node: String,
    /// cgroup v2 directory to record.
    #[arg(long)]
    cgroup: PathBuf,
    /// File holding the shared secret (at least 16 bytes, not readable by others).
    #[arg(long)]
    secret_file: PathBuf,
    /// UDP port to hear triggers on.
    #[arg(long, default_value_t = 7301)]
    trigger_port: u16,
    /// What to do to the application once its dump is shipped.
    #[arg(long, value_enum, default_value_t = wgo::agent::StopPolicy::Freeze)]
    on_trigger: wgo::agent::StopPolicy,
    /// The application's cgroup (default: the recorded one).
    #[arg(long)]
    app_cgroup: Option<PathBuf>,
    /// Where dumps are written before shipping.
    #[arg(long, default_value = "/var/lib/wgo/spool")]
    spool_dir: PathBuf,
    /// Shipping rate limit, bytes per second (0: unlimited).
    #[arg(long, default_value_t = 8 << 20)]
    ship_rate: u64,
    /// Give up shipping after this many seconds (the dump stays in the spool).
    #[arg(long, default_value_t = 600.0, value_parser = positive_f64)]
    ship_deadline: f64,
    /// Accept triggers sent up to this many seconds from our clock.
    #[arg(long, default_value_t = 120.0, value_parser = positive_f64)]
    trigger_window: f64,
    #[command(flatten)]
    capture: CaptureFlags,
}

#[derive(clap::Args)]
struct CollectorFlags {
    /// File holding the shared secret.
    #[arg(long)]
    secret_file: PathBuf,
    /// Where agents ship to (TCP) and say they heard the trigger (UDP).
    #[arg(long, default_value = "0.0.0.0:7300")]
    listen: SocketAddr,
    /// Directory for the dumps and manifest.json.
    #[arg(long)]
    out: PathBuf,
    /// Nodes to wait for: a count, or names separated by commas (then missing ones are named).
    #[arg(long)]
    expect: Option<String>,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 300.0, value_parser = positive_f64)]
    wait: f64,
}

#[derive(clap::Args)]
struct TriggerArgs {
    #[command(flatten)]
    collector: CollectorFlags,
    /// Broadcast address and agents' trigger port.
    #[arg(long)]
    broadcast: Option<SocketAddr>,
    /// Also send the trigger to these agents (HOST:PORT), for networks without broadcast.
    #[arg(long)]
    to: Vec<SocketAddr>,
    /// How many times to send it.
    #[arg(long, default_value_t = 5)]
    copies: u32,
}

#[derive(clap::Args)]
struct CollectArgs {
    #[command(flatten)]
    collector: CollectorFlags,
}

#[derive(clap::Args)]
struct ShipArgs {
    /// The agent's spool directory.
    #[arg(long)]
    spool: PathBuf,
    /// Collector to ship to (default: the one each dump's trigger named).
    #[arg(long)]
    to: Option<SocketAddr>,
    /// File holding the shared secret.
    #[arg(long)]
    secret_file: PathBuf,
    /// Rate limit, bytes per second (0: unlimited).
    #[arg(long, default_value_t = 0)]
    ship_rate: u64,
    /// Give up after this many seconds per dump.
    #[arg(long, default_value_t = 60.0, value_parser = positive_f64)]
    deadline: f64,
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
    /// Write the browser timeline (one self-contained HTML file).
    #[arg(long)]
    html: Option<PathBuf>,
    /// Open the timeline in the user's browser (or print its path when there is none).
    #[arg(long, requires = "html")]
    open: bool,
}

#[derive(clap::Args)]
struct RecordArgs {
    /// cgroup v2 directory to record (absolute, or relative to the cgroup2 mount).
    #[arg(long)]
    cgroup: PathBuf,
    #[command(flatten)]
    capture: CaptureFlags,
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
        Ok(v) if (4096..=capture_ebpf::MAX_RING_BYTES).contains(&v) && v.is_power_of_two() => Ok(v),
        _ => Err(format!("'{s}' is not a power of two from 4096 to {}", capture_ebpf::MAX_RING_BYTES)),
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
        Command::Agent(args) => agent(args),
        Command::Trigger(args) => trigger(args),
        Command::Collect(args) => collect(args.collector, None),
        Command::Ship(args) => ship(args),
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
        snaplen: args.capture.snaplen,
        ring_seconds: args.capture.ring_seconds,
        ring_bytes: args.capture.ring_bytes as usize,
        kernel_ring_bytes: args.capture.kernel_ring_bytes,
    };
    // Fail before recording, not after, if the dump cannot be written.
    let special = wgo::outfile::is_special(&args.out);
    let tmp = if special { args.out.clone() } else { wgo::outfile::partial_path(&args.out) };
    let open = || if special { std::fs::OpenOptions::new().write(true).open(&tmp) } else { std::fs::File::create(&tmp) };
    open().with_context(|| format!("cannot write {}", args.out.display()))?;

    let stop = stop_flag()?;
    let result = (|| {
        let mut recorder = Recorder::start(&opts)?;
        let ids: Vec<String> = recorder.program_ids().iter().map(|(n, id)| format!("{n}={id}")).collect();
        tracing::info!("recording {} as node {} (programs {})", opts.cgroup.display(), opts.node, ids.join(" "));
        let deadline = args.duration.map(|d| Instant::now() + Duration::from_secs_f64(d));
        recorder.run(&stop, deadline)?;
        let (ring, info) = recorder.finish()?;
        let file = open().with_context(|| format!("writing {}", tmp.display()))?;
        let written = wgo::dump::write_dump(file, &info, ring.iter())?;
        if !special {
            std::fs::rename(&tmp, &args.out).with_context(|| format!("renaming {} to {}", tmp.display(), args.out.display()))?;
        }
        print!("{}", wgo::record::summarize(&ring, &info));
        println!("wrote {} packets to {}", written.packets, args.out.display());
        tracing::info!("peak memory {} KiB", peak_rss_kib());
        anyhow::Ok(())
    })();
    if result.is_err() && !special {
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

fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing signal handlers")?;
    }
    Ok(stop)
}

fn agent(args: AgentArgs) -> anyhow::Result<()> {
    wgo::protocol::check_name(&args.node).map_err(|_| anyhow::anyhow!("--node {:?}: use letters, digits, '-', '_' and '.' only", args.node))?;
    let secret = wgo::agent::load_secret(&args.secret_file)?;
    let app_cgroup = match args.app_cgroup {
        Some(p) => Some(wgo::cgroup::resolve(&p)?),
        None => Some(wgo::cgroup::resolve(&args.cgroup)?),
    };
    let opts = wgo::agent::AgentOptions {
        record: RecordOptions {
            cgroup: args.cgroup,
            node: args.node,
            snaplen: args.capture.snaplen,
            ring_seconds: args.capture.ring_seconds,
            ring_bytes: args.capture.ring_bytes as usize,
            kernel_ring_bytes: args.capture.kernel_ring_bytes,
        },
        secret,
        trigger_port: args.trigger_port,
        on_trigger: args.on_trigger,
        app_cgroup,
        spool: args.spool_dir,
        ship_rate: args.ship_rate,
        ship_deadline: Duration::from_secs_f64(args.ship_deadline),
        trigger_window: Duration::from_secs_f64(args.trigger_window),
    };
    let stop = stop_flag()?;
    wgo::agent::run(opts, &stop)
}

fn parse_expect(s: Option<&str>) -> anyhow::Result<wgo::collector::Expect> {
    use wgo::collector::Expect;
    Ok(match s {
        None => Expect::Heard,
        Some(s) => match s.parse::<usize>() {
            Ok(n) => Expect::Count(n),
            Err(_) => {
                let names: Vec<String> = s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect();
                for n in &names {
                    wgo::protocol::check_name(n).map_err(|_| anyhow::anyhow!("--expect: {n:?} is not a node name"))?;
                }
                Expect::Names(names)
            }
        },
    })
}

/// Binds the collector's sockets (before any trigger goes out) and collects.
fn collect(args: CollectorFlags, trigger: Option<(u64, i64, Box<dyn FnOnce() -> anyhow::Result<()> + Send>)>) -> anyhow::Result<()> {
    let secret = wgo::agent::load_secret(&args.secret_file)?;
    let expect = parse_expect(args.expect.as_deref())?;
    let listener = TcpListener::bind(args.listen).with_context(|| format!("listening on TCP {}", args.listen))?;
    let udp = UdpSocket::bind(args.listen).with_context(|| format!("listening on UDP {}", args.listen))?;
    let (trigger_id, sent) = match trigger {
        Some((id, sent, send)) => {
            send()?;
            (Some(id), Some(sent))
        }
        None => (None, None),
    };
    let opts = wgo::collector::CollectOptions {
        out: args.out.clone(),
        secret,
        expect,
        wait: Duration::from_secs_f64(args.wait),
        trigger_id,
        trigger_sent_ns: sent,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let result = wgo::collector::collect(opts, listener, udp);
    let manifest = wgo::collector::Manifest::load(&args.out).unwrap_or_default();
    for n in &manifest.nodes {
        match (n.bytes, n.arrived_ns) {
            (Some(b), Some(_)) => println!("{:<16} {b:>12} bytes  sha256 {}", n.name, n.sha256.as_deref().unwrap_or("")),
            _ => println!("{:<16} heard the trigger, no dump", n.name),
        }
    }
    println!("manifest: {}", args.out.join("manifest.json").display());
    result?;
    Ok(())
}

fn trigger(args: TriggerArgs) -> anyhow::Result<()> {
    if args.broadcast.is_none() && args.to.is_empty() {
        anyhow::bail!("say where the agents are: --broadcast ADDR:PORT and/or --to HOST:PORT");
    }
    let secret = wgo::agent::load_secret(&args.collector.secret_file)?;
    let id = u64::from_be_bytes(wgo::protocol::random_bytes());
    let sent = wgo::clock::wall_ns() as i64;
    let listen = args.collector.listen;
    let t = wgo::protocol::Trigger {
        id,
        sent_ns: sent,
        collector: (!listen.ip().is_unspecified()).then_some(listen),
        port: listen.port(),
    };
    let bytes = t.encode(&secret);
    let (broadcast, to, copies) = (args.broadcast, args.to.clone(), args.copies.max(1));
    tracing::info!("trigger {id:016x}: sending {copies} times; collecting on {listen}");
    let send: Box<dyn FnOnce() -> anyhow::Result<()> + Send> = Box::new(move || {
        // Keep sending in the background while collecting starts.
        std::thread::spawn(move || {
            if let Err(e) = wgo::collector::send_trigger(&bytes, broadcast, &to, copies, Duration::from_millis(200)) {
                tracing::warn!("sending the trigger: {e}");
            }
        });
        Ok(())
    });
    collect(args.collector, Some((id, sent, send)))
}

fn ship(args: ShipArgs) -> anyhow::Result<()> {
    let secret = wgo::agent::load_secret(&args.secret_file)?;
    let mut entries: Vec<_> = wgo::ship::spool_entries(&args.spool)?.into_iter().filter(|e| !e.shipped).collect();
    if entries.is_empty() {
        println!("nothing to ship in {}", args.spool.display());
        return Ok(());
    }
    let mut failed = Vec::new();
    for e in &mut entries {
        let to = match args.to {
            Some(t) => t,
            None => e.collector.parse().with_context(|| format!("{}: collector {:?} is not an address; give --to", e.node, e.collector))?,
        };
        match wgo::agent::ship_entry(e, &args.spool, to, &secret, args.ship_rate, Duration::from_secs_f64(args.deadline), &mut |_| {}) {
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

fn report(args: ReportArgs) -> anyhow::Result<()> {
    use wgo::analysis::{self, trace::Trace};
    use wgo::outfile::write_atomically;
    // Large per-event arrays come and go between phases: give each its own mapping, so
    // that freeing one returns its memory instead of leaving it in the heap.
    // SAFETY: mallopt only tunes the allocator; called before the big allocations.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) };
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
    let inputs = analysis::Inputs { spec, missing_nodes: missing };
    // With --json, the events are written while the analysis orders them.
    let a = match &args.json {
        Some(p) => {
            let mut done = None;
            write_atomically(p, |f| {
                done = Some(analysis::analyze_to_json(trace, inputs, f)?);
                Ok(())
            })?;
            done.expect("analysis finished")
        }
        None => analysis::analyze(trace, inputs),
    };
    let mut phase = analysis::Phase::new();
    if let Some(p) = &args.pcapng {
        write_atomically(p, |f| a.write_pcapng(f))?;
    }
    if let Some(p) = &args.html {
        let title = args.inputs.iter().map(|i| i.display().to_string()).collect::<Vec<_>>().join(" ");
        write_atomically(p, |f| a.write_html(f, &title))?;
        phase.done("html");
    }
    print!("{}", a.summary());
    phase.done("summary");
    tracing::info!("peak memory {} KiB", analysis::peak_resident_kib().max(peak_rss_kib() as u64));
    for (flag, p) in [("json", &args.json), ("pcapng", &args.pcapng), ("timeline", &args.html)] {
        if let Some(p) = p {
            println!("{flag}: {}", p.display());
        }
    }
    if args.open
        && let Some(p) = &args.html {
        open_in_browser(p);
    }
    Ok(())
}

/// Opens a file in the user's browser: $BROWSER (left running), then xdg-open (which
/// returns once it handed the file over, failing when it found no browser).
fn open_in_browser(path: &std::path::Path) {
    use std::process::{Command, Stdio};
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if let Ok(b) = std::env::var("BROWSER")
        && Command::new(&b).arg(&path).stdout(Stdio::null()).stderr(Stdio::null()).spawn().is_ok() {
        println!("opened {} with {b}", path.display());
        return;
    }
    let ok = Command::new("xdg-open").arg(&path).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if ok {
        println!("opened {} in your browser", path.display());
    } else {
        println!("no browser found; open {} yourself", path.display());
    }
}

/// Node names a trigger's manifest lists as expected but missing.
fn read_missing(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    Ok(v["missing"].as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default())
}
