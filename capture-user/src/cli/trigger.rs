//! `wgo trigger`: press the button; send the signed trigger, then collect.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

use super::collect::CollectorFlags;

#[derive(clap::Args)]
pub struct TriggerArgs {
    #[command(flatten)]
    pub collector: CollectorFlags,
    /// Broadcast address and agents' trigger port.
    #[arg(long)]
    pub broadcast: Option<SocketAddr>,
    /// Also send the trigger to these agents (HOST:PORT), for networks without broadcast.
    #[arg(long)]
    pub to: Vec<SocketAddr>,
    /// How many times to send it.
    #[arg(long, default_value_t = 5)]
    pub copies: u32,
    /// Name a collector that is already running (`wgo serve`, HOST:PORT) instead of
    /// collecting here: the trigger goes out, and this command returns.
    #[arg(long = "collector", conflicts_with_all = ["out", "expect"])]
    pub collector_addr: Option<SocketAddr>,
    /// Why: shown in the manifest and the report (default: who pressed the button, where).
    #[arg(long)]
    pub reason: Option<String>,
}

pub fn run(args: TriggerArgs) -> anyhow::Result<()> {
    if args.broadcast.is_none() && args.to.is_empty() {
        anyhow::bail!("say where the agents are: --broadcast ADDR:PORT and/or --to HOST:PORT");
    }
    let secret = wgo::transport::secret::load_secret(&args.collector.secret_file)?;
    let id = u64::from_be_bytes(wgo::transport::wire::random_bytes());
    let sent = wgo::clock::wall_ns() as i64;
    let reason = args.reason.clone().unwrap_or_else(|| {
        let user = ["SUDO_USER", "USER", "LOGNAME"].iter().find_map(|v| std::env::var(v).ok()).unwrap_or_else(|| {
            // SAFETY: geteuid has no preconditions.
            format!("uid {}", unsafe { libc::geteuid() })
        });
        format!("wgo trigger by {user} on {}", super::hostname())
    });
    let listen = args.collector.listen;
    if let Some(collector) = args.collector_addr {
        // Another collector takes the dumps: send and return.
        let t = wgo::transport::wire::Trigger { id, sent_ns: sent, collector: Some(collector), port: collector.port(), reason };
        let datagrams: Vec<_> =
            args.broadcast.iter().chain(&args.to).map(|d| (*d, t.encode(&secret), args.broadcast == Some(*d))).collect();
        tracing::info!("trigger {id:016x}: sending {} times; {collector} collects", args.copies.max(1));
        wgo::transport::collector::send_trigger(&datagrams, args.copies.max(1), Duration::from_millis(200))?;
        println!("trigger {id:016x} sent; {collector} collects the dumps");
        return Ok(());
    }
    // Every copy names the collector (signed): agents ship nowhere else. Listening on an
    // unspecified address, the copy for each destination names the address that reaches it.
    let mut datagrams = Vec::new();
    for dest in args.broadcast.iter().chain(&args.to) {
        let collector = wgo::transport::collector::address_for(listen, *dest)
            .with_context(|| format!("finding the address agents at {dest} reach this collector on; give --listen ADDR:PORT"))?;
        let t =
            wgo::transport::wire::Trigger { id, sent_ns: sent, collector: Some(collector), port: listen.port(), reason: reason.clone() };
        datagrams.push((*dest, t.encode(&secret), args.broadcast == Some(*dest)));
        tracing::info!("trigger {id:016x} to {dest}: collect on {collector}");
    }
    let copies = args.copies.max(1);
    tracing::info!("trigger {id:016x}: sending {copies} times; collecting on {listen}");
    let send: Box<dyn FnOnce() + Send> = Box::new(move || {
        // Keep sending in the background while collecting goes on.
        std::thread::spawn(move || {
            if let Err(e) = wgo::transport::collector::send_trigger(&datagrams, copies, Duration::from_millis(200)) {
                tracing::warn!("sending the trigger: {e}");
            }
        });
    });
    super::collect::run(args.collector, Some((id, sent, send)), None)
}
