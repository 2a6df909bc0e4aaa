//! `wgo trigger`: press the button; send the signed trigger, then collect.

use std::net::SocketAddr;
use std::time::Duration;

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
    let mut routes = Vec::new();
    for dest in args.broadcast.iter().chain(&args.to) {
        let flag = if args.broadcast == Some(*dest) { "--broadcast" } else { "--to" };
        let collector = wgo::transport::collector::address_for(listen, *dest).map_err(|e| {
            // No route to the agents: the address they were given by is what to look at.
            anyhow::Error::new(e).context(format!(
                "no way from here to {flag} {dest}: is {flag} the agents' network (its broadcast address, or an agent's address)? (--listen {listen} is where agents ship to)"
            ))
        })?;
        let t =
            wgo::transport::wire::Trigger { id, sent_ns: sent, collector: Some(collector), port: listen.port(), reason: reason.clone() };
        datagrams.push((*dest, t.encode(&secret), args.broadcast == Some(*dest)));
        routes.push(format!("trigger {id:016x} to {dest}: collect on {collector}"));
    }
    let copies = args.copies.max(1);
    let hint = silence_hint(&args);
    let send: Box<dyn FnOnce() + Send> = Box::new(move || {
        // Said only now that the collector listens: nothing goes out before.
        for r in routes {
            tracing::info!("{r}");
        }
        tracing::info!("trigger {id:016x}: sending {copies} times; collecting on {listen}");
        // Keep sending in the background while collecting goes on.
        std::thread::spawn(move || {
            if let Err(e) = wgo::transport::collector::send_trigger(&datagrams, copies, Duration::from_millis(200)) {
                tracing::warn!("sending the trigger: {e}");
            }
        });
    });
    super::collect::run(args.collector, Some((id, sent, send, hint)), None)
}

/// What to check when no agent says it heard the trigger: where it went.
fn silence_hint(args: &TriggerArgs) -> String {
    let mut flags: Vec<String> = args.broadcast.iter().map(|b| format!("--broadcast {b}")).collect();
    flags.extend(args.to.iter().map(|t| format!("--to {t}")));
    let ports: std::collections::BTreeSet<u16> = args.broadcast.iter().chain(&args.to).map(|a| a.port()).collect();
    let sent_to = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
    format!(
        "check {} (agents listen on port {} unless their --trigger-port says otherwise; this went to port {sent_to}), that the agents run, and that they use this secret file",
        flags.join(" and "),
        super::DEFAULT_TRIGGER_PORT
    )
}
