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

/// Whether the cgroup at `app` is set to be frozen (`cgroup.freeze` is 1).
pub fn is_frozen(app: &Path) -> anyhow::Result<bool> {
    let f = app.join("cgroup.freeze");
    match std::fs::read_to_string(&f) {
        Ok(s) => Ok(s.trim() == "1"),
        // The root cgroup has no freezer: it is never frozen.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(anyhow::Error::new(e).context(format!("reading {}", f.display()))),
    }
}

/// Thaws the cgroup at `app` if it is frozen (after `--on-trigger freeze`, its processes
/// stay stopped, and so does anything started in it later) and waits until the kernel
/// reports it running. Returns whether it was frozen.
pub fn thaw(app: &Path) -> anyhow::Result<bool> {
    if !is_frozen(app)? {
        return Ok(false);
    }
    std::fs::write(app.join("cgroup.freeze"), "0").with_context(|| format!("thawing {}", app.display()))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(app.join("cgroup.events")).unwrap_or_default().contains("frozen 1") {
        if Instant::now() > deadline {
            bail!("{} did not thaw within 5 s", app.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_without_a_freezer_is_not_frozen_and_needs_no_thaw() {
        let d = std::env::temp_dir().join(format!("wgo-stop-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        assert!(!is_frozen(&d).unwrap());
        assert!(!thaw(&d).unwrap());
        std::fs::write(d.join("cgroup.freeze"), "0\n").unwrap();
        assert!(!thaw(&d).unwrap(), "not frozen: nothing written");
        assert_eq!(std::fs::read_to_string(d.join("cgroup.freeze")).unwrap(), "0\n");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
