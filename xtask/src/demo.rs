//! The demo: a misbehaving five-node cluster, caught and explained in one command.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, bail};

use crate::build::root;

pub fn run() -> anyhow::Result<()> {
    crate::build::all()?;
    crate::setup::packages(crate::setup::DEMO_PACKAGES)?;
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo creates network namespaces and loads eBPF: run it as root");
    }
    // Ctrl-C stops the demo between steps; everything it made is removed on the way out.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing signal handlers")?;
    }
    let started = std::time::Instant::now();
    let log = |s: &str| eprintln!("demo: {s}");
    let out = wgo::demo::run_demo(&wgo::demo::DemoOptions {
        wgo: root().join("target/release/wgo"),
        app: root().join("target/release/wgo-demo-app"),
        spec: root().join("examples/demo.toml"),
        out: root().join("wgo-out/demo"),
        stop: &stop,
        log: &log,
    })?;
    println!("\nWhat went wrong, as wgo found it from the packets and examples/demo.toml alone:");
    println!("{}", out.headline);
    println!("\nwgo report says:\n{}", out.report);
    println!("timeline: {}", out.timeline.display());
    println!("json:     {}", out.json.display());
    eprintln!("demo: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
