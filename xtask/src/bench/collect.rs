//! `cargo xtask bench collect`: 1,000 simulated agents ship to one `wgo collect` at once
//! over loopback; then again with 1,000 slowloris connections alongside. Every dump must
//! arrive whole; the collector's peak memory and descriptors are sampled from /proc. The
//! baseline is a plain TCP copy of the same number of bytes to disk with fsync.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use wgo_tests::testbed::{self, ChildGuard};

use crate::build::bin_dir;

const AGENTS: usize = 1000;
const DUMP_BYTES: usize = 256 << 10;
const ATTACKERS: usize = 1000;
const ADDR: &str = "127.0.0.1:7390";

/// Peak resident KiB and the most descriptors seen while `pid` runs.
struct Sampled {
    peak_kib: u64,
    peak_fds: usize,
}

fn sample_until_exit(child: &mut std::process::Child) -> anyhow::Result<(std::process::ExitStatus, Sampled)> {
    let proc = format!("/proc/{}", child.id());
    let mut s = Sampled { peak_kib: 0, peak_fds: 0 };
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((status, s));
        }
        if let Ok(status) = std::fs::read_to_string(format!("{proc}/status")) {
            let hwm = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.split_whitespace().next()?.parse().ok());
            s.peak_kib = s.peak_kib.max(hwm.unwrap_or(0));
        }
        if let Ok(fds) = std::fs::read_dir(format!("{proc}/fd")) {
            s.peak_fds = s.peak_fds.max(fds.count());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the collector did not finish within 900 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One round: a collector, the agents, optionally attackers. Returns seconds and samples.
fn round(tmp: &Path, secret: &Path, attack: bool) -> anyhow::Result<(f64, Sampled, String)> {
    let (wgo, peer) = (bin_dir().join("wgo"), bin_dir().join("wgo-peer"));
    let out = tmp.join(if attack { "collected-attacked" } else { "collected" });
    let _ = std::fs::remove_dir_all(&out);
    let mut collector = Command::new(&wgo)
        .args(["collect", "--listen", ADDR, "--trigger-id", "1", "--expect", &AGENTS.to_string(), "--wait", "600", "--secret-file"])
        .arg(secret)
        .arg("--out")
        .arg(&out)
        .env("WGO_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting wgo collect")?;
    std::thread::sleep(Duration::from_millis(300));
    let attackers = attack.then(|| {
        ChildGuard::from(
            Command::new(&peer)
                .args(["slowloris", "--to", ADDR, "--count", &ATTACKERS.to_string(), "--duration", "600"])
                .stdout(Stdio::null())
                .spawn()
                .expect("starting the attackers"),
        )
    });
    if attack {
        // Let them take every unauthenticated slot first.
        std::thread::sleep(Duration::from_secs(2));
    }
    let t = Instant::now();
    let mut agents = Command::new(&peer)
        .args(["agents", "--to", ADDR, "--count", &AGENTS.to_string(), "--size", &DUMP_BYTES.to_string(), "--secret-file"])
        .arg(secret)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the agents")?;
    let (status, sampled) = sample_until_exit(&mut collector)?;
    let secs = t.elapsed().as_secs_f64();
    let agents_ok = agents.wait()?.success();
    drop(attackers);
    let mut err = String::new();
    std::io::Read::read_to_string(&mut collector.stderr.take().expect("piped"), &mut err)?;
    if !status.success() || !agents_ok {
        let mut aerr = String::new();
        std::io::Read::read_to_string(&mut agents.stderr.take().expect("piped"), &mut aerr)?;
        bail!("collect failed ({status}): {err}\nagents: {aerr}");
    }
    // Whole and right: each file is exactly the bytes that agent sent.
    for i in 0..AGENTS {
        let got = std::fs::read(out.join(format!("{}.pcapng", wgo_tests::load::agent_name(i))))?;
        if got != wgo_tests::load::dump_bytes(i, DUMP_BYTES) {
            bail!("{}'s dump arrived different", wgo_tests::load::agent_name(i));
        }
    }
    let rejected = err.lines().rfind(|l| l.contains("ignored")).unwrap_or("").to_string();
    let _ = std::fs::remove_dir_all(&out);
    Ok((secs, sampled, rejected))
}

pub fn run() -> anyhow::Result<()> {
    crate::build::all()?;
    let tmp = std::env::temp_dir().join(format!("wgo-bench-collect-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let secret = tmp.join("secret");
    std::fs::write(&secret, "collect benchmark secret")?;
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let total = (AGENTS * DUMP_BYTES) as f64;
    let mib = total / (1 << 20) as f64;

    // Baseline: the same bytes over one plain TCP connection, to disk with fsync.
    let all = tmp.join("all.bin");
    let mut bytes = Vec::with_capacity(AGENTS * DUMP_BYTES);
    for i in 0..AGENTS {
        bytes.extend(wgo_tests::load::dump_bytes(i, DUMP_BYTES));
    }
    std::fs::write(&all, &bytes)?;
    drop(bytes);
    let peer = bin_dir().join("wgo-peer");
    let mut plain = Vec::new();
    for _ in 0..3 {
        let sink_out = tmp.join("sink.bin");
        let sink = ChildGuard::from(
            Command::new(&peer).args(["tcp-sink", "--bind", "127.0.0.1:7391", "--out"]).arg(&sink_out).stdout(Stdio::null()).spawn()?,
        );
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        testbed::run(Command::new(&peer).args(["tcp-source", "--to", "127.0.0.1:7391", "--file"]).arg(&all))?;
        sink.wait_timeout(Duration::from_secs(120))?;
        plain.push(t.elapsed().as_secs_f64());
        let _ = std::fs::remove_file(&sink_out);
    }
    let _ = std::fs::remove_file(&all);
    let p = super::median(&plain);

    println!("{AGENTS} agents ship {} KiB each ({mib:.0} MiB in all) to one `wgo collect` on loopback, at once.", DUMP_BYTES >> 10);
    println!("Baseline: one plain TCP copy of the same bytes to disk with fsync (median of 3): {p:.2} s, {:.0} MiB/s.", mib / p);
    println!("{:<34} {:>8} {:>9} {:>9} {:>14} {:>10}", "round", "seconds", "MiB/s", "vs plain", "peak RSS MiB", "peak fds");
    for attack in [false, true] {
        let (secs, s, rejected) = round(&tmp, &secret, attack)?;
        let name = if attack { format!("beside {ATTACKERS} slowloris connections") } else { "alone".to_string() };
        println!("{name:<34} {secs:>8.2} {:>9.0} {:>8.3}x {:>14.0} {:>10}", mib / secs, p / secs, s.peak_kib as f64 / 1024.0, s.peak_fds);
        if attack && !rejected.is_empty() {
            println!("  collector's last word on the attack: {}", rejected.trim());
        }
    }
    println!("Every dump arrived, byte for byte (SHA-256 checked by the collector, contents by this benchmark).");
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
