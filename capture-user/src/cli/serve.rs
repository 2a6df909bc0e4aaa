//! `wgo serve`: a collector that runs as a service and files every incident in a
//! directory of its own, optionally with a report.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::{positive_f64, stop_flag};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// File holding the shared secret.
    #[arg(long)]
    pub secret_file: PathBuf,
    /// Where agents ship to (TCP) and say they heard a trigger (UDP).
    #[arg(long, default_value = "0.0.0.0:7300")]
    pub listen: SocketAddr,
    /// Directory for the incidents: each in `<UTC time>-<trigger id>/`, with its manifest.
    #[arg(long)]
    pub incidents: PathBuf,
    /// Once an incident is complete, run `wgo report` on it: `summary.txt`, `report.json`
    /// and `timeline.html` in its directory.
    #[arg(long)]
    pub report: bool,
    /// Protocol spec for those reports.
    #[arg(long, requires = "report")]
    pub spec: Option<PathBuf>,
    /// Close an incident that still misses dumps after this many seconds without news.
    #[arg(long, default_value_t = 120.0, value_parser = positive_f64)]
    pub wait: f64,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let secret = wgo::transport::secret::load_secret(&args.secret_file)?;
    let listener = super::collect::listen(args.listen).with_context(|| format!("listening on TCP {}", args.listen))?;
    let udp = UdpSocket::bind(args.listen).with_context(|| format!("listening on UDP {}", args.listen))?;
    let on_closed: Option<wgo::transport::collector::OnClosed> = match args.report {
        true => {
            let exe = std::env::current_exe().context("finding this program, to run its reports")?;
            let spec = args.spec.clone();
            Some(Arc::new(move |dir: &Path, _: &wgo::transport::manifest::Manifest| report(&exe, dir, spec.as_deref())))
        }
        false => None,
    };
    let opts = wgo::transport::collector::ServeOptions {
        incidents: args.incidents.clone(),
        secret,
        wait: Duration::from_secs_f64(args.wait),
        limits: wgo::transport::collector::Limits::default(),
        stop: stop_flag()?,
        on_closed,
    };
    wgo::node::notify::ready_saying(&format!("serving incidents into {} on {}", args.incidents.display(), args.listen));
    wgo::transport::collector::serve(opts, listener, udp)?;
    tracing::info!("stopped");
    Ok(())
}

/// Runs `wgo report` on an incident in a child process (a bad dump cannot take the service
/// down), its summary into `summary.txt`.
fn report(exe: &Path, dir: &Path, spec: Option<&Path>) {
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("report").arg(dir).arg("--json").arg(dir.join("report.json")).arg("--html").arg(dir.join("timeline.html"));
    if let Some(spec) = spec {
        cmd.arg("--spec").arg(spec);
    }
    match cmd.stdin(std::process::Stdio::null()).output() {
        Ok(out) if out.status.success() => {
            if let Err(e) = wgo::outfile::write_file(&dir.join("summary.txt"), &out.stdout, wgo::outfile::Durability::Atomic) {
                tracing::error!("{e}");
            }
            tracing::info!("report of {} written", dir.display());
        }
        Ok(out) => tracing::error!("report of {} failed: {}", dir.display(), String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => tracing::error!("running the report of {}: {e}", dir.display()),
    }
}
