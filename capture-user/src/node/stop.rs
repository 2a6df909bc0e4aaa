//! The stop policy: what the agent does to the application once its dump is safe.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// What happens to the application once its dump is safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StopPolicy {
    /// Ask its processes to exit (SIGTERM).
    Exit,
    /// Freeze it (cgroup freezer): it stays, stopped, for inspection.
    Freeze,
    /// Kill every process in it (cgroup.kill).
    Kill,
    /// Leave it running.
    None,
}

/// Stops (or not) the application's cgroup.
pub(crate) fn apply_policy(app: &Path, policy: StopPolicy) -> anyhow::Result<()> {
    match policy {
        StopPolicy::None => {}
        StopPolicy::Freeze => {
            std::fs::write(app.join("cgroup.freeze"), "1").with_context(|| format!("freezing {}", app.display()))?;
            // Wait until the kernel reports the whole cgroup frozen.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !std::fs::read_to_string(app.join("cgroup.events")).unwrap_or_default().contains("frozen 1") {
                if Instant::now() > deadline {
                    bail!("{} did not freeze within 5 s", app.display());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            tracing::info!("froze {}", app.display());
        }
        StopPolicy::Kill => {
            std::fs::write(app.join("cgroup.kill"), "1").with_context(|| format!("killing {}", app.display()))?;
            tracing::info!("killed every process in {}", app.display());
        }
        StopPolicy::Exit => {
            for pid in super::cgroup::processes(app)? {
                // SAFETY: kill has no memory effects; a pid that exited meanwhile gives ESRCH.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
            tracing::info!("asked every process in {} to exit", app.display());
        }
    }
    Ok(())
}
