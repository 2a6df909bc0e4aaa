//! `cargo xtask demo`: build, install what the demo runs, then run `wgo-demo`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, bail};

use crate::build::root;

pub fn run(crash: bool) -> anyhow::Result<()> {
    crate::build::all()?;
    run_built(&root().join(if crash { "wgo-out/demo-crash" } else { "wgo-out/demo" }), crash)?;
    Ok(())
}

/// Runs the (already built) demo with its output in `out`; returns the timeline page.
pub fn run_built(out: &Path, crash: bool) -> anyhow::Result<PathBuf> {
    crate::setup::packages(wgo_tests::demo::COMMANDS)?;
    // Ctrl-C reaches the demo too, which cleans up and exits: wait for it instead of dying first.
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&interrupted)).context("installing signal handlers")?;
    }
    let release = root().join("target/release");
    let status = Command::new(release.join("wgo-demo"))
        .arg("--wgo")
        .arg(release.join("wgo"))
        .arg("--app")
        .arg(release.join("wgo-demo-app"))
        .arg("--spec")
        .arg(root().join("examples/demo.toml"))
        .arg("--out")
        .arg(out)
        .args(crash.then_some("--crash"))
        .status()
        .context("starting wgo-demo")?;
    if !status.success() {
        bail!("the demo failed ({status})");
    }
    Ok(out.join("timeline.html"))
}
