//! `wgo collect`: receive dumps (and, from `wgo trigger`, send the trigger first).

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

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
/// would turn a burst of them into connect timeouts and retries). An unspecified address
/// (`0.0.0.0`, `::`) listens on IPv4 and IPv6 both: a trigger names whichever address
/// reaches each agent, an IPv6 one included.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Socket, Type};
    dual_stack(addr, Type::STREAM, |s: &Socket| {
        s.set_reuse_address(true)?;
        Ok(())
    })
    .and_then(|s| {
        s.listen(4096)?;
        Ok(s.into())
    })
}

/// The UDP socket agents say they heard the trigger on: dual-stack like [`listen`].
pub fn listen_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    dual_stack(addr, socket2::Type::DGRAM, |_: &socket2::Socket| Ok(())).map(Into::into)
}

/// A socket bound to `addr`, or for an unspecified one to `[::]` with IPv4 too (where
/// the host has no IPv6, to `0.0.0.0`).
fn dual_stack(
    addr: SocketAddr,
    kind: socket2::Type,
    setup: impl Fn(&socket2::Socket) -> std::io::Result<()>,
) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Socket};
    let bind = |a: SocketAddr, both: bool| -> std::io::Result<Socket> {
        let s = Socket::new(Domain::for_address(a), kind, None)?;
        if both {
            s.set_only_v6(false)?;
        }
        setup(&s)?;
        s.bind(&a.into())?;
        Ok(s)
    };
    if !addr.ip().is_unspecified() {
        return bind(addr, false);
    }
    match bind(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, addr.port())), true) {
        Ok(s) => Ok(s),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)) && addr.is_ipv4() => {
            tracing::info!("no IPv6 here ({e}): collecting on IPv4 only");
            bind(addr, false)
        }
        Err(e) => Err(e),
    }
}

/// A trigger to send once the collector listens: its id, its send time, and the sending.
pub type PendingTrigger = (u64, i64, Box<dyn FnOnce() + Send>);

/// Binds the collector's sockets (before any trigger goes out) and collects.
pub fn run(args: CollectorFlags, trigger: Option<PendingTrigger>, known_id: Option<u64>) -> anyhow::Result<()> {
    let out = args.out.clone().ok_or_else(|| anyhow::anyhow!("say where the dumps go: --out DIR"))?;
    let secret = wgo::transport::secret::load_secret(&args.secret_file)?;
    let expect = parse_expect(args.expect.as_deref())?;
    let listener = listen(args.listen).with_context(|| format!("listening on TCP {}", args.listen))?;
    let udp = listen_udp(args.listen).with_context(|| format!("listening on UDP {}", args.listen))?;
    let (trigger_id, sent, send) = match trigger {
        Some((id, sent, send)) => (Some(id), Some(sent), Some(send)),
        None => (known_id, None, None),
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
    println!("manifest: {}", out.join("manifest.json").display());
    result?;
    Ok(())
}
