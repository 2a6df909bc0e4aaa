//! `wgo serve`: a collector that runs as a service and files every incident in a
//! directory of its own, optionally with a report.

use std::net::SocketAddr;
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
    /// Stop a report that runs longer than this many seconds (its `summary.txt` says so).
    #[arg(long, default_value_t = 600.0, value_parser = positive_f64, requires = "report")]
    pub report_timeout: f64,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let secret = wgo::transport::secret::load_secret(&args.secret_file)?;
    let listener = super::collect::listen(args.listen).with_context(|| format!("listening on TCP {}", args.listen))?;
    let udp = super::collect::listen_udp(args.listen).with_context(|| format!("listening on UDP {}", args.listen))?;
    let on_closed: Option<wgo::transport::collector::OnClosed> = match args.report {
        true => {
            let exe = std::env::current_exe().context("finding this program, to run its reports")?;
            let spec = args.spec.clone();
            let limit = Duration::from_secs_f64(args.report_timeout);
            Some(Arc::new(move |dir: &Path, _: &wgo::transport::manifest::Manifest| {
                report(report_command(&exe, dir, spec.as_deref()), dir, limit);
            }))
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

/// `wgo report` on an incident: its JSON and timeline into the incident's directory.
fn report_command(exe: &Path, dir: &Path, spec: Option<&Path>) -> std::process::Command {
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("report").arg(dir).arg("--json").arg(dir.join("report.json")).arg("--html").arg(dir.join("timeline.html"));
    if let Some(spec) = spec {
        cmd.arg("--spec").arg(spec);
    }
    cmd
}

/// How a report ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Written,
    Failed(String),
    /// Ran past its time limit, and was stopped.
    Stopped,
}

/// Runs a report in a child process (a bad dump cannot take the service down), at a lower
/// priority than the collector (deliveries come first) and for at most `limit`; its summary
/// goes into `summary.txt`. A report that fails or is stopped says so in `summary.txt`
/// instead, so that the incident's directory tells what became of its report.
fn report(mut cmd: std::process::Command, dir: &Path, limit: Duration) -> Outcome {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    // A group of its own, so that stopping it stops whatever it started too.
    cmd.process_group(0);
    // SAFETY: nice(2) is async-signal-safe, and the closure touches nothing else of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::nice(10);
            Ok(())
        });
    }
    let outcome = match cmd.spawn() {
        Err(e) => Outcome::Failed(format!("could not start `wgo report`: {e}")),
        Ok(mut child) => {
            // Read both pipes meanwhile: a full pipe would block the child.
            let pipe = |r: Option<Box<dyn Read + Send>>| {
                std::thread::spawn(move || {
                    let mut b = Vec::new();
                    if let Some(mut r) = r {
                        let _ = r.read_to_end(&mut b);
                    }
                    b
                })
            };
            let out = pipe(child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
            let err = pipe(child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
            let end = std::time::Instant::now() + limit;
            let status = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Some(status),
                    Ok(None) if std::time::Instant::now() < end => std::thread::sleep(Duration::from_millis(50)),
                    Ok(None) | Err(_) => {
                        // SAFETY: kill(2) on the child's own process group, which it leads.
                        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                        let _ = child.wait();
                        break None;
                    }
                }
            };
            let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
            match status {
                None => Outcome::Stopped,
                Some(s) if s.success() => {
                    match wgo::outfile::write_file(&dir.join("summary.txt"), &out, wgo::outfile::Durability::Atomic) {
                        Ok(()) => Outcome::Written,
                        Err(e) => Outcome::Failed(e.to_string()),
                    }
                }
                Some(s) => Outcome::Failed(format!("`wgo report` {s}: {}", String::from_utf8_lossy(&err).trim())),
            }
        }
    };
    let note = match &outcome {
        Outcome::Written => {
            tracing::info!("report of {} written", dir.display());
            return outcome;
        }
        Outcome::Stopped => {
            // What a stopped report was writing is no report.
            for f in ["report.json", "timeline.html"] {
                let _ = std::fs::remove_file(wgo::outfile::partial_path(&dir.join(f)));
            }
            tracing::error!("report of {} stopped: it ran longer than {limit:?} (--report-timeout)", dir.display());
            format!(
                "No report: `wgo report` ran longer than {} s (--report-timeout) and was stopped.\nRun it by hand: wgo report {}\n",
                limit.as_secs_f64(),
                dir.display()
            )
        }
        Outcome::Failed(why) => {
            tracing::error!("report of {} failed: {why}", dir.display());
            format!("No report: {why}\n")
        }
    };
    if let Err(e) = wgo::outfile::write_file(&dir.join("summary.txt"), note.as_bytes(), wgo::outfile::Durability::Atomic) {
        tracing::error!("{e}");
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wgo-serve-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn sh(script: &str) -> std::process::Command {
        let mut c = std::process::Command::new("sh");
        c.arg("-c").arg(script);
        c
    }

    #[test]
    fn a_report_past_its_time_limit_is_stopped_and_the_incident_says_so() {
        let dir = tempdir("timeout");
        let pidfile = dir.join("pids");
        // A report that never ends, and a child of its own that would outlive it.
        let script = format!("sleep 600 & echo $$ $! > {}; wait", pidfile.display());
        assert_eq!(report(sh(&script), &dir, Duration::from_millis(500)), Outcome::Stopped);
        let summary = std::fs::read_to_string(dir.join("summary.txt")).unwrap();
        assert!(summary.contains("ran longer than 0.5 s (--report-timeout) and was stopped"), "{summary}");
        let pids = std::fs::read_to_string(&pidfile).unwrap();
        for pid in pids.split_whitespace() {
            let pid: i32 = pid.parse().unwrap();
            // SIGKILL takes effect asynchronously, and the orphaned sleep may linger as a
            // zombie until init reaps it: wait (bounded) for it to be gone or a zombie.
            let gone = || {
                // SAFETY: signal 0 only asks whether the process exists.
                let alive = unsafe { libc::kill(pid, 0) } == 0;
                !alive || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
            };
            let until = std::time::Instant::now() + Duration::from_secs(10);
            while !gone() && std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(gone(), "process {pid} of the report still runs");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_report_that_fails_or_succeeds_says_so_in_its_summary() {
        let dir = tempdir("outcomes");
        assert_eq!(report(sh("echo 'What went wrong (0 findings)'"), &dir, Duration::from_secs(60)), Outcome::Written);
        assert_eq!(std::fs::read_to_string(dir.join("summary.txt")).unwrap(), "What went wrong (0 findings)\n");
        let failed = report(sh("echo 'error: bad dump' >&2; exit 2"), &dir, Duration::from_secs(60));
        assert!(matches!(&failed, Outcome::Failed(why) if why.contains("bad dump")), "{failed:?}");
        assert!(
            std::fs::read_to_string(dir.join("summary.txt"))
                .unwrap()
                .starts_with("No report: `wgo report` exit status: 2: error: bad dump")
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
