//! `wgo collect`: receive dumps (and, from `wgo trigger`, send the trigger first).

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::positive_f64;

#[derive(clap::Args)]
pub struct CollectorFlags {
    /// File holding the shared secret.
    #[arg(long)]
    pub secret_file: PathBuf,
    /// Where agents ship to (TCP) and say they heard the trigger (UDP).
    #[arg(long, default_value = "0.0.0.0:7300")]
    pub listen: SocketAddr,
    /// Directory for the dumps and manifest.json.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Nodes to wait for: a count, or names separated by commas (then missing ones are named).
    #[arg(long)]
    pub expect: Option<String>,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 300.0, value_parser = positive_f64)]
    pub wait: f64,
}

#[derive(clap::Args)]
pub struct CollectArgs {
    #[command(flatten)]
    pub collector: CollectorFlags,
    /// The trigger to collect for (hex), when the directory's manifest does not name it.
    #[arg(long, value_parser = parse_trigger_id)]
    pub trigger_id: Option<u64>,
}

fn parse_trigger_id(s: &str) -> Result<u64, String> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|_| format!("'{s}' is not a trigger id (16 hex digits)"))
}

fn parse_expect(s: Option<&str>) -> anyhow::Result<wgo::transport::collector::Expect> {
    use wgo::transport::collector::Expect;
    Ok(match s {
        None => Expect::Heard,
        Some(s) => match s.parse::<usize>() {
            Ok(n) => Expect::Count(n),
            Err(_) => {
                let names: Vec<String> = s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect();
                for n in &names {
                    wgo::transport::wire::check_name(n).map_err(|_| anyhow::anyhow!("--expect: {n:?} is not a node name"))?;
                }
                Expect::Names(names)
            }
        },
    })
}

/// A TCP listener with room for many agents connecting at once (the usual backlog of 128
/// would turn a burst of them into connect timeouts and retries).
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// A trigger to send once the collector listens: its id, its send time, the sending, and
/// what to check if no agent hears it.
pub type PendingTrigger = (u64, i64, Box<dyn FnOnce() + Send>, String);

/// Binding the collector's port: one taken (by `wgo serve`, most likely) gets a hint.
fn bind_error(e: std::io::Error, proto: &str, addr: SocketAddr, triggering: bool) -> anyhow::Error {
    let taken = e.kind() == std::io::ErrorKind::AddrInUse;
    let e = anyhow::Error::new(e).context(format!("listening on {proto} {addr}"));
    match (taken, triggering) {
        (true, true) => e.context(format!(
            "port {} is taken, perhaps by `wgo serve`: to have it collect, give `--collector {addr}` (instead of --listen and --out); or --listen on another port",
            addr.port()
        )),
        (true, false) => e.context(format!("port {} is taken, perhaps by `wgo serve` or another collector: --listen on another port", addr.port())),
        (false, _) => e,
    }
}

/// How long the collector waits for the first agent to say it heard the trigger before it
/// says that none did.
const SILENCE: Duration = Duration::from_secs(5);
/// How often a collector without progress bars (stderr is no terminal) says where it is.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Says, from `out`'s manifest, that no agent heard the trigger (once, after [`SILENCE`],
/// with `hint`), and with `lines`, every [`PROGRESS_EVERY`] who heard and who delivered;
/// until `done`.
fn watch_progress(
    out: &std::path::Path,
    expect: &wgo::transport::collector::Expect,
    trigger_id: Option<u64>,
    hint: Option<&str>,
    lines: bool,
    wait: Duration,
    done: &AtomicBool,
) {
    use wgo::transport::collector::Expect;
    let started = Instant::now();
    let (mut silence_told, mut last_line) = (false, started);
    let id = trigger_id.map_or_else(|| "(any)".to_string(), |id| format!("{id:016x}"));
    let of = match expect {
        Expect::Names(n) => format!(" of {}", n.len()),
        Expect::Count(c) => format!(" of {c}"),
        Expect::Heard => String::new(),
    };
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        let silence_due = hint.is_some() && !silence_told && started.elapsed() >= SILENCE;
        let line_due = lines && last_line.elapsed() >= PROGRESS_EVERY;
        if !(silence_due || line_due) {
            continue;
        }
        // Written whole and renamed into place by the collector: never half a file.
        let Some(m) = std::fs::read(out.join("manifest.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<wgo::transport::manifest::Manifest>(&b).ok())
        else {
            continue;
        };
        let heard = m.nodes.iter().filter(|n| n.heard_ns.is_some() || n.arrived_ns.is_some()).count();
        let arrived: Vec<&str> = m.nodes.iter().filter(|n| n.arrived_ns.is_some()).map(|n| n.name.as_str()).collect();
        if silence_due {
            silence_told = true;
            if heard == 0 {
                tracing::warn!("0{of} agents heard trigger {id} within {} s: {}", SILENCE.as_secs(), hint.unwrap_or_default());
            }
        }
        if line_due {
            last_line = Instant::now();
            let waiting: Vec<&str> = match expect {
                Expect::Names(names) => names.iter().map(String::as_str).filter(|n| !arrived.contains(n)).collect(),
                _ => m.nodes.iter().filter(|n| n.arrived_ns.is_none()).map(|n| n.name.as_str()).collect(),
            };
            let waiting = if waiting.is_empty() { String::new() } else { format!("; waiting for {}", waiting.join(", ")) };
            let left = wait.saturating_sub(started.elapsed()).as_secs();
            tracing::info!("trigger {id}: {heard}{of} agents heard it, {} delivered{waiting} ({left} s left)", arrived.len());
        }
    }
}

/// Binds the collector's sockets (before any trigger goes out) and collects.
pub fn run(args: CollectorFlags, trigger: Option<PendingTrigger>, known_id: Option<u64>) -> anyhow::Result<()> {
    let out = args.out.clone().ok_or_else(|| anyhow::anyhow!("say where the dumps go: --out DIR"))?;
    let secret = wgo::transport::secret::load_secret(&args.secret_file)?;
    let expect = parse_expect(args.expect.as_deref())?;
    let listener = listen(args.listen).map_err(|e| bind_error(e, "TCP", args.listen, trigger.is_some()))?;
    let udp = UdpSocket::bind(args.listen).map_err(|e| bind_error(e, "UDP", args.listen, trigger.is_some()))?;
    let (trigger_id, sent, send, hint) = match trigger {
        Some((id, sent, send, hint)) => (Some(id), Some(sent), Some(send), Some(hint)),
        None => (known_id, None, None, None),
    };
    let opts = wgo::transport::collector::CollectOptions {
        out: out.clone(),
        secret,
        expect,
        wait: Duration::from_secs_f64(args.wait),
        trigger_id,
        trigger_sent_ns: sent,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        limits: wgo::transport::collector::Limits::default(),
    };
    // Words for a wait that would otherwise be silent, from the manifest the collector
    // keeps up to date: who heard, who delivered, and when nobody heard the trigger at all.
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (out, expect, done, hint) = (out.clone(), opts.expect.clone(), done.clone(), hint.clone());
        let (lines, wait) = (!opts.progress, opts.wait);
        std::thread::spawn(move || watch_progress(&out, &expect, trigger_id, hint.as_deref(), lines, wait, &done))
    };
    // The trigger goes out once the collector is ready for it (and its directory checked).
    let result = wgo::transport::collector::collect(opts, listener, udp, move || {
        if let Some(send) = send {
            send();
        }
    });
    // A damaged one is the collector's error, in `result`.
    let manifest = wgo::transport::manifest::Manifest::load(&out).ok().flatten().unwrap_or_default();
    for n in &manifest.nodes {
        match (n.bytes, n.arrived_ns) {
            (Some(b), Some(_)) => println!("{:<16} {b:>12} bytes  sha256 {}", n.name, n.sha256.as_deref().unwrap_or("")),
            _ => println!("{:<16} heard the trigger, no dump", n.name),
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    println!("manifest: {}", out.join("manifest.json").display());
    match (result, hint) {
        (Err(e), Some(hint)) if manifest.nodes.iter().all(|n| n.heard_ns.is_none() && n.arrived_ns.is_none()) => {
            Err(anyhow::Error::new(e).context(format!("no agent heard the trigger: {hint}")))
        }
        (result, _) => {
            result?;
            Ok(())
        }
    }
}
