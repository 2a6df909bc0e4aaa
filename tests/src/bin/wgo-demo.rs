//! The demo: a misbehaving five-node cluster, caught and explained in one command.
//! `cargo xtask demo` builds everything and runs this; so does the hermetic demo test.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, bail};
use clap::Parser;
use wgo_tests::demo::{DemoOptions, run_demo};

#[derive(Parser)]
#[command(about = "Run wgo's demo: five nodes in network namespaces misbehave; wgo explains what went wrong")]
struct Args {
    /// The wgo binary.
    #[arg(long)]
    wgo: PathBuf,
    /// The demo's cluster app (wgo-demo-app).
    #[arg(long)]
    app: PathBuf,
    /// The app's protocol spec.
    #[arg(long)]
    spec: PathBuf,
    /// Where dumps, manifest, report and timeline go (emptied first).
    #[arg(long)]
    out: PathBuf,
    /// The armed variant: one app crashes with SIGSEGV mid-run, nobody presses anything.
    #[arg(long)]
    crash: bool,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("demo: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
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
    let out =
        run_demo(&DemoOptions { wgo: args.wgo, app: args.app, spec: args.spec, out: args.out, stop: &stop, log: &log, crash: args.crash })?;
    if let Some(t) = &out.trigger {
        println!("\nThe trigger, sent by an agent on its own: {t}");
    }
    println!("\nwgo report, from the packets and examples/demo.toml alone:\n{}", out.report);
    println!("timeline: {}", out.timeline.display());
    println!("json:     {}", out.json.display());
    println!("perfetto: {} (open it in ui.perfetto.dev)", out.perfetto.display());
    eprintln!("demo: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
