//! `wgo agent`: record a cgroup until a signed trigger arrives; then dump, ship, stop the app.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use wgo::node::watch::AutoTrigger;

use super::{CaptureFlags, non_negative_f64, positive_f64, stop_flag};

#[derive(clap::Args)]
pub struct AgentArgs {
    /// This node's name (in dumps and file names: letters, digits, - _ .).
    #[arg(long)]
    pub node: String,
    /// cgroup v2 directory to record.
    #[arg(long)]
    pub cgroup: PathBuf,
    /// File holding the shared secret (at least 16 bytes, not readable by others).
    #[arg(long)]
    pub secret_file: PathBuf,
    /// UDP port to hear triggers on.
    #[arg(long, default_value_t = super::DEFAULT_TRIGGER_PORT)]
    pub trigger_port: u16,
    /// What to do to the application once its dump is shipped [default: freeze; for an
    /// armed agent (--auto-trigger), none: it keeps recording for the next incident].
    #[arg(long, value_enum)]
    pub on_trigger: Option<wgo::node::stop::StopPolicy>,
    /// The application's cgroup (default: the recorded one).
    #[arg(long)]
    pub app_cgroup: Option<PathBuf>,
    /// Where dumps are written before shipping.
    #[arg(long, default_value = "/var/lib/wgo/spool")]
    pub spool_dir: PathBuf,
    /// Shipping rate limit, bytes per second (0: unlimited).
    #[arg(long, default_value_t = 8 << 20, value_parser = super::ship_rate)]
    pub ship_rate: u64,
    /// Give up shipping after this many seconds (the dump stays in the spool).
    #[arg(long, default_value_t = 600.0, value_parser = positive_f64)]
    pub ship_deadline: f64,
    /// Accept triggers sent up to this many seconds from our clock.
    #[arg(long, default_value_t = 120.0, value_parser = positive_f64)]
    pub trigger_window: f64,
    /// Keep recording this many seconds after a trigger before dumping, so that the
    /// recovery (or the lack of it) is in the dump.
    #[arg(long, default_value_t = 2.0, value_parser = non_negative_f64)]
    pub after: f64,
    /// Arm the agent: send the trigger itself when the application crashes (a fatal
    /// SIGSEGV, SIGABRT, SIGBUS, SIGILL, SIGFPE, or a SIGKILL not sent by wgo) or is OOM-killed.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub auto_trigger: Vec<AutoTrigger>,
    /// The collector an armed agent's trigger names (`wgo serve`), HOST:PORT.
    #[arg(long)]
    pub collector: Option<SocketAddr>,
    /// Broadcast address and trigger port of the other agents, for an armed agent's trigger.
    #[arg(long)]
    pub broadcast: Option<SocketAddr>,
    /// Other agents (HOST:PORT) an armed agent's trigger goes to, for networks without broadcast.
    #[arg(long)]
    pub to: Vec<SocketAddr>,
    /// An armed agent sends no trigger within this many seconds of the last one it handled
    /// (a crash loop gives one incident, not one per restart).
    #[arg(long, default_value_t = 60.0, value_parser = non_negative_f64)]
    pub cooldown: f64,
    #[command(flatten)]
    pub capture: CaptureFlags,
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    wgo::transport::wire::check_name(&args.node)
        .map_err(|_| anyhow::anyhow!("--node {:?}: use letters, digits, '-', '_' and '.' only", args.node))?;
    let secret = wgo::transport::secret::load_secret(&args.secret_file)?;
    let app_cgroup = match args.app_cgroup {
        Some(p) => Some(wgo::node::cgroup::resolve(&p)?),
        None => Some(wgo::node::cgroup::resolve(&args.cgroup)?),
    };
    let arm = match (args.auto_trigger.is_empty(), args.collector) {
        (true, None) => None,
        (true, Some(_)) => anyhow::bail!("--collector is for an armed agent: give --auto-trigger crash,oom too"),
        (false, None) => anyhow::bail!("--auto-trigger needs --collector HOST:PORT: the collector (`wgo serve`) its trigger names"),
        (false, Some(collector)) => {
            let mut to: Vec<(SocketAddr, bool)> = args.to.iter().map(|a| (*a, false)).collect();
            to.extend(args.broadcast.map(|b| (b, true)));
            if to.is_empty() {
                tracing::warn!("armed without --broadcast or --to: a crash here triggers this node alone");
            }
            Some(wgo::node::agent::Arming { on: args.auto_trigger, collector, to, cooldown: Duration::from_secs_f64(args.cooldown) })
        }
    };
    // An armed agent runs unattended and goes on recording after each incident: by
    // default it leaves the application to serve (and to crash again, on the record).
    let on_trigger = args.on_trigger.unwrap_or(match arm {
        Some(_) => wgo::node::stop::StopPolicy::None,
        None => wgo::node::stop::StopPolicy::Freeze,
    });
    if arm.is_some() && on_trigger == wgo::node::stop::StopPolicy::Freeze {
        tracing::warn!("armed with --on-trigger freeze: after an incident the app stays frozen (and records nothing) until `wgo thaw`");
    }
    let opts = wgo::node::agent::AgentOptions {
        record: args.capture.record_options(args.cgroup, args.node),
        secret,
        trigger_port: args.trigger_port,
        on_trigger,
        app_cgroup,
        spool: args.spool_dir,
        ship_rate: args.ship_rate,
        ship_deadline: Duration::from_secs_f64(args.ship_deadline),
        trigger_window: Duration::from_secs_f64(args.trigger_window),
        after: Duration::from_secs_f64(args.after),
        arm,
    };
    let stop = stop_flag()?;
    wgo::node::agent::run(opts, &stop)
}
