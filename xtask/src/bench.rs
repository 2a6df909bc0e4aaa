//! Benchmarks. Every figure is a ratio against a baseline measured in the same run.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use wgo::testbed::{self, ChildGuard, Testbed, WgoProcess};

use crate::build::root;
use crate::exec::exec;
use crate::setup::clean_command;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Which {
    /// Capture overhead (on vs off vs tcpdump), per-hook cost, drain rate.
    Capture,
}

pub fn run(which: Which) -> anyhow::Result<()> {
    match which {
        Which::Capture => capture(),
    }
}

const ROUNDS: usize = 5;
const SECONDS: f64 = 3.0;

fn capture() -> anyhow::Result<()> {
    crate::build::all()?;
    crate::setup::packages(crate::setup::TEST_PACKAGES)?;
    if unsafe { libc::geteuid() } != 0 {
        bail!("the capture benchmark loads eBPF in network namespaces: run it as root");
    }
    let wgo = root().join("target/release/wgo");
    let peer = root().join("target/release/wgo-peer");
    let bed = Testbed::new(2)?;
    let (client, server) = (bed.node("node1"), bed.node("node2"));
    let _echo = server.spawn(server.command(&peer)?.args(["udp-echo", "--bind", "0.0.0.0:7000"]))?;
    std::thread::sleep(Duration::from_millis(200));
    let to = format!("{}:7000", server.ipv4);
    let rr = || -> anyhow::Result<f64> {
        let out = testbed::run(client.command(&peer)?.args(["udp-rr", "--to", &to, "--duration", &SECONDS.to_string(), "--size", "64"]))?;
        let n: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().context("udp-rr output")?;
        Ok(n / SECONDS)
    };
    rr()?; // warm up caches, ARP, the echo server

    let (mut off, mut on, mut dump) = (Vec::new(), Vec::new(), Vec::new());
    let mut hook = Vec::new();
    let tmp = std::env::temp_dir().join(format!("wgo-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    // Interleaved rounds so drift in machine load hits every variant alike.
    for round in 0..ROUNDS {
        off.push(rr()?);

        let _stats = wgo::capture::enable_bpf_stats()?;
        let rec = WgoProcess::spawn(
            Command::new(&wgo).args(["record", "--node", "bench", "--cgroup"]).arg(&client.cgroup).arg("--out").arg(tmp.join("wgo.pcapng")),
            "recording",
            Duration::from_secs(10),
        )?;
        on.push(rr()?);
        hook.push(hook_cost(&rec.stderr())?);
        let (status, _, err) = rec.stop(Duration::from_secs(60))?;
        if !status.success() {
            bail!("wgo record failed: {err}");
        }

        let tcpdump = ChildGuard::from(
            Command::new("ip")
                .args(["netns", "exec", &client.netns, "tcpdump", "-q", "-i", "eth0", "-s", "128", "-w"])
                .arg(tmp.join("tcpdump.pcap"))
                .stderr(std::process::Stdio::null())
                .spawn()?,
        );
        std::thread::sleep(Duration::from_millis(500)); // tcpdump opens its socket
        dump.push(rr()?);
        drop(tcpdump);
        eprintln!("round {}: off {:.0}/s, wgo {:.0}/s, tcpdump {:.0}/s", round + 1, off[round], on[round], dump[round]);
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let (off_m, on_m, dump_m) = (median(&off), median(&on), median(&dump));
    let wgo_loss = 1.0 - on_m / off_m;
    let tcpdump_loss = 1.0 - dump_m / off_m;
    println!("UDP request/response, 64-byte payload, {ROUNDS} interleaved rounds of {SECONDS} s, medians:");
    println!("  capture off      {off_m:>10.0} transactions/s   1.000x");
    println!("  wgo record on    {on_m:>10.0} transactions/s   {:.3}x", on_m / off_m);
    println!("  tcpdump -w on    {dump_m:>10.0} transactions/s   {:.3}x", dump_m / off_m);
    println!("  wgo loses {:.1}% where tcpdump loses {:.1}%: {:.2} of tcpdump's loss", wgo_loss * 100.0, tcpdump_loss * 100.0, wgo_loss / tcpdump_loss);
    let ingress = median(&hook.iter().map(|h| h.0).collect::<Vec<_>>());
    let egress = median(&hook.iter().map(|h| h.1).collect::<Vec<_>>());
    let per_tx_ns = 1e9 / off_m;
    println!("Per-hook cost (kernel.bpf_stats): ingress {ingress:.0} ns, egress {egress:.0} ns per packet;");
    println!("  both hooks together are {:.3}x of one uncaptured transaction ({per_tx_ns:.0} ns)", (ingress + egress) / per_tx_ns);
    drop(bed);

    exec(
        clean_command("cargo")
            .current_dir(root())
            .env("WGO_BPF_OBJECT", crate::build::bpf_object())
            .args(["bench", "--quiet", "-p", "capture-user", "--bench", "drain"]),
    )
}

/// Average ns per run of the ingress and egress programs, from their kernel stats.
fn hook_cost(recorder_log: &str) -> anyhow::Result<(f64, f64)> {
    let ids = recorder_log.lines().find_map(|l| l.split("(programs ").nth(1)).context("recorder log names no programs")?;
    let mut costs = [0.0; 2];
    for part in ids.trim_end_matches(')').split_whitespace() {
        let (name, id) = part.split_once('=').context("program id")?;
        let json = testbed::run(Command::new("bpftool").args(["prog", "show", "id", id, "--json"]))?;
        let v: serde_json::Value = serde_json::from_slice(&json.stdout)?;
        let (t, n) = (v["run_time_ns"].as_f64().unwrap_or(0.0), v["run_cnt"].as_f64().unwrap_or(0.0));
        let slot = if name.contains("ingress") { 0 } else { 1 };
        costs[slot] = if n > 0.0 { t / n } else { 0.0 };
    }
    Ok((costs[0], costs[1]))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}
