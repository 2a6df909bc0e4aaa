//! Benchmarks. Every figure is a ratio against a baseline measured in the same run.

mod collect;
mod scale;

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use wgo_tests::testbed::{self, ChildGuard, Testbed, WgoProcess};

use crate::build::root;
use crate::exec::exec;
use crate::setup::clean_command;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Which {
    /// Capture overhead (on vs off vs tcpdump), per-hook cost, drain rate.
    Capture,
    /// Collector speed and memory, 1 M to 10 M events, from reading dumps to JSON.
    Collector,
    /// Clock trouble at scale: 10,000 contradicting receives in 1 M events, a 3 s clock step in 10 M.
    Clocks,
    /// Unthrottled shipping over loopback against a plain TCP copy of the same bytes.
    Shipping,
    /// Timeline page load and frame times in headless Chromium, 10 k to 5 M events.
    Timeline,
    /// 1,000 agents shipping to one collector at once, then again beside 1,000 slowloris connections.
    Collect,
    /// The Perfetto trace (`--perfetto`) against the JSON report: size and time, 1 M and 10 M events.
    Perfetto,
    /// The report's relational stages through DataFusion (`wgo-sql`) at 10 M and 50 M events, 4 GiB cap (docs/scale.md).
    Scale,
    /// The Parquet tables (`--parquet`): time, peak memory and size, with and without them, 1 M and 10 M events.
    Parquet,
}

pub fn run(which: Which) -> anyhow::Result<()> {
    match which {
        Which::Capture => capture(),
        Which::Collector => collector(),
        Which::Clocks => clocks(),
        Which::Shipping => shipping(),
        Which::Timeline => timeline(),
        Which::Collect => collect::run(),
        Which::Perfetto => perfetto(),
        Which::Scale => scale::run(),
        Which::Parquet => parquet(),
    }
}

const ROUNDS: usize = 6;
const SECONDS: f64 = 3.0;
const STREAMS: usize = 4;

fn capture() -> anyhow::Result<()> {
    crate::build::all()?;
    crate::setup::packages(crate::setup::TEST_PACKAGES)?;
    // SAFETY: geteuid has no preconditions.
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
    // Parallel streams saturate both CPUs, so per-packet cost shows up as lost throughput
    // instead of hiding in round-trip latency.
    let rr = || -> anyhow::Result<f64> {
        let clients = (0..STREAMS)
            .map(|_| {
                client
                    .command(&peer)?
                    .args(["udp-rr", "--to", &to, "--duration", &SECONDS.to_string(), "--size", "64"])
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .context("spawning udp-rr")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut total = 0.0;
        for c in clients {
            let out = c.wait_with_output()?;
            total += String::from_utf8_lossy(&out.stdout).trim().parse::<f64>().context("udp-rr output")?;
        }
        Ok(total / SECONDS)
    };
    rr()?; // warm up caches, ARP, the echo server

    let mut off = Vec::new();
    let (mut on, mut dump) = (Vec::new(), Vec::new());
    let mut hook = Vec::new();
    let tmp = std::env::temp_dir().join(format!("wgo-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    // Each variant runs right after its own capture-off baseline; the figure is the
    // median of those paired ratios, so drift in the machine's load cancels out.
    for round in 0..ROUNDS {
        let base_on = measure(&rr)?;
        let rec = WgoProcess::spawn(
            Command::new(&wgo).args(["record", "--node", "bench", "--cgroup"]).arg(&client.cgroup).arg("--out").arg(tmp.join("wgo.pcapng")),
            "recording",
            Duration::from_secs(10),
        )?;
        let with_wgo = measure(&rr)?;
        {
            // Per-hook cost in its own short phase: the stats themselves cost time.
            let _stats = wgo::node::capture::enable_bpf_stats()?;
            let before = hook_stats(&rec.stderr())?;
            rr_short(client, &peer, &to)?;
            let after = hook_stats(&rec.stderr())?;
            hook.push((
                (after[0].0 - before[0].0) / (after[0].1 - before[0].1).max(1.0),
                (after[1].0 - before[1].0) / (after[1].1 - before[1].1).max(1.0),
            ));
        }
        let (status, _, err) = rec.stop(Duration::from_secs(60))?;
        if !status.success() {
            bail!("wgo record failed: {err}");
        }

        let base_dump = measure(&rr)?;
        let tcpdump = ChildGuard::from(
            Command::new("ip")
                .args(["netns", "exec", &client.netns, "tcpdump", "-q", "-i", "eth0", "-s", "128", "-w"])
                .arg(tmp.join("tcpdump.pcap"))
                .stderr(std::process::Stdio::null())
                .spawn()?,
        );
        std::thread::sleep(Duration::from_millis(500)); // tcpdump opens its socket
        let with_dump = measure(&rr)?;
        drop(tcpdump);
        eprintln!(
            "round {}: off {:.0}/s, wgo {:.0}/s | off {:.0}/s, tcpdump {:.0}/s",
            round + 1,
            base_on.tps,
            with_wgo.tps,
            base_dump.tps,
            with_dump.tps
        );
        off.push(base_on);
        off.push(base_dump);
        on.push((with_wgo, base_on));
        dump.push((with_dump, base_dump));
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let tps = |v: &[(Sample, Sample)]| median(&v.iter().map(|(x, b)| x.tps / b.tps).collect::<Vec<_>>());
    let cpu = |v: &[(Sample, Sample)]| median(&v.iter().map(|(x, b)| b.cpu_ns_per_tx / x.cpu_ns_per_tx).collect::<Vec<_>>());
    let off_tps = median(&off.iter().map(|s| s.tps).collect::<Vec<_>>());
    let off_cpu = median(&off.iter().map(|s| s.cpu_ns_per_tx).collect::<Vec<_>>());
    let (wgo_tps, dump_tps, wgo_cpu, dump_cpu) = (tps(&on), tps(&dump), cpu(&on), cpu(&dump));
    println!("UDP request/response, 64-byte payload, {STREAMS} parallel streams saturating the CPUs,");
    println!("{ROUNDS} rounds of {SECONDS} s; each variant is a ratio to the capture-off run just before it (median):");
    println!("                     transactions/s     CPU per transaction (inverse, higher is better)");
    println!("  capture off         1.000x ({off_tps:.0}/s)   1.000x ({off_cpu:.0} ns)");
    println!("  wgo record on       {wgo_tps:.3}x            {wgo_cpu:.3}x");
    println!("  tcpdump -w on       {dump_tps:.3}x            {dump_cpu:.3}x");
    println!(
        "  wgo's loss is {:.2} of tcpdump's by throughput, {:.2} by CPU",
        (1.0 - wgo_tps) / (1.0 - dump_tps),
        (1.0 - wgo_cpu) / (1.0 - dump_cpu)
    );
    let ingress = median(&hook.iter().map(|h| h.0).collect::<Vec<_>>());
    let egress = median(&hook.iter().map(|h| h.1).collect::<Vec<_>>());
    println!("Per-hook cost (kernel.bpf_stats, measured apart): ingress {ingress:.0} ns, egress {egress:.0} ns per packet;");
    println!(
        "  a transaction runs each once: {:.0} ns on top of {off_cpu:.0} ns of CPU, {:.3}x at worst\n  (a bound: the stats' own two clock reads per run are counted in)",
        ingress + egress,
        off_cpu / (off_cpu + ingress + egress)
    );
    drop(bed);

    exec(clean_command("cargo").current_dir(root()).env("WGO_BPF_OBJECT", crate::build::bpf_object()).args([
        "bench",
        "--quiet",
        "-p",
        "capture-user",
        "--bench",
        "drain",
        "--features",
        "bench",
    ]))
}

#[derive(Clone, Copy)]
struct Sample {
    tps: f64,
    /// Busy CPU time of the whole machine per transaction (user+system+irq+softirq, no steal).
    cpu_ns_per_tx: f64,
}

fn busy_cpu_ns() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().context("empty /proc/stat")?;
    let f: Vec<f64> = cpu.split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0.0)).collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = f[0] + f[1] + f[2] + f[5] + f[6];
    // SAFETY: sysconf has no preconditions.
    let tick_ns = 1e9 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(busy * tick_ns)
}

fn measure(rr: &dyn Fn() -> anyhow::Result<f64>) -> anyhow::Result<Sample> {
    let c0 = busy_cpu_ns()?;
    let tps = rr()?;
    let busy = busy_cpu_ns()? - c0;
    Ok(Sample { tps, cpu_ns_per_tx: busy / (tps * SECONDS) })
}

fn rr_short(client: &wgo_tests::testbed::Node, peer: &std::path::Path, to: &str) -> anyhow::Result<()> {
    testbed::run(client.command(peer)?.args(["udp-rr", "--to", to, "--duration", "1", "--size", "64"]))?;
    Ok(())
}

/// (run_time_ns, run_cnt) of the ingress and egress programs named in the recorder's log.
fn hook_stats(recorder_log: &str) -> anyhow::Result<[(f64, f64); 2]> {
    let ids = recorder_log.lines().find_map(|l| l.split("(programs ").nth(1)).context("recorder log names no programs")?;
    let mut stats = [(0.0, 0.0); 2];
    for part in ids.trim_end_matches(')').split_whitespace() {
        let (name, id) = part.split_once('=').context("program id")?;
        let json = testbed::run(Command::new("bpftool").args(["prog", "show", "id", id, "--json"]))?;
        let v: serde_json::Value = serde_json::from_slice(&json.stdout)?;
        let slot = if name.contains("ingress") { 0 } else { 1 };
        stats[slot] = (v["run_time_ns"].as_f64().unwrap_or(0.0), v["run_cnt"].as_f64().unwrap_or(0.0));
    }
    Ok(stats)
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn collector() -> anyhow::Result<()> {
    crate::build::all()?;
    let wgo = root().join("target/release/wgo");
    let peer = root().join("target/release/wgo-peer");
    let tmp = std::env::temp_dir().join(format!("wgo-bench-collector-{}", std::process::id()));
    println!("wgo report DIR --spec sim.toml --json out.json on simulated 5-node dumps, median of 3 runs (peak memory: the highest);");
    println!("baseline: cat of the same files (warm cache). Dumps and earlier outputs are synced to disk before each run.");
    println!(
        "{:>10}  {:>8}  {:>12}  {:>10}  {:>10}  {:>12}  {:>14}",
        "events", "seconds", "events/s", "vs cat", "B/event", "time/1M-run", "ev/s json→null"
    );
    let mut first: Option<(f64, f64)> = None;
    for target in [1_000_000u64, 3_000_000, 10_000_000] {
        let _ = std::fs::remove_dir_all(&tmp);
        let out = testbed::run(Command::new(&peer).args(["synth", "--events", &target.to_string(), "--out"]).arg(&tmp))?;
        let events: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().context("synth output")?;
        let files: Vec<std::path::PathBuf> =
            std::fs::read_dir(&tmp)?.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "pcapng")).collect();
        let cat = || -> anyhow::Result<f64> {
            let t = std::time::Instant::now();
            testbed::run(Command::new("cat").args(&files).stdout(std::process::Stdio::null()))?;
            Ok(t.elapsed().as_secs_f64())
        };
        // Flush the generated dumps first: their writeback is not the report's work.
        testbed::run(&mut Command::new("sync"))?;
        cat()?; // warm the page cache
        let cat_s = cat()?;
        // Median of three runs: this VM's timings vary by tens of percent between runs.
        let report = |json: &std::path::Path| -> anyhow::Result<(f64, f64)> {
            let mut times = Vec::new();
            let mut peak_kib: f64 = 0.0;
            for _ in 0..3 {
                let _ = std::fs::remove_file(tmp.join("out.json"));
                testbed::run(&mut Command::new("sync"))?;
                let t = std::time::Instant::now();
                let rep = testbed::run(
                    Command::new(&wgo)
                        .arg("report")
                        .arg(&tmp)
                        .arg("--spec")
                        .arg(tmp.join("sim.toml"))
                        .arg("--json")
                        .arg(json)
                        .env("WGO_LOG", "info"),
                )?;
                times.push(t.elapsed().as_secs_f64());
                let err = String::from_utf8_lossy(&rep.stderr);
                let kib: f64 = err
                    .lines()
                    .find_map(|l| l.split("peak memory ").nth(1))
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|s| s.parse().ok())
                    .context("wgo report logged no peak memory")?;
                peak_kib = peak_kib.max(kib);
            }
            Ok((median(&times), peak_kib))
        };
        let (secs, peak_kib) = report(&tmp.join("out.json"))?;
        let (null_secs, _) = report(std::path::Path::new("/dev/null"))?;
        let per_event = peak_kib * 1024.0 / events;
        let growth = match first {
            None => {
                first = Some((events, secs));
                1.0
            }
            Some((e1, s1)) => (secs / s1) / (events / e1),
        };
        println!(
            "{events:>10.0}  {secs:>8.2}  {:>12.0}  {:>9.1}x  {per_event:>10.0}  {growth:>11.2}x  {:>14.0}",
            events / secs,
            secs / cat_s,
            events / null_secs
        );
    }
    println!(
        "(vs cat: report time over the time to read the same bytes; time/1M-run: time per event relative to the 1 M run, 1.00x is linear;"
    );
    println!(" ev/s json→null: the same report with its JSON written to /dev/null, i.e. without the file's disk writes)");
    let _ = std::fs::remove_dir_all(&tmp);
    contradictions(&wgo, &peer)?;
    clock_step(&wgo, &peer)
}

/// The Perfetto trace against the JSON report on the same synthetic dumps, 1 M and 10 M
/// events. End to end: `wgo report` with no output, with `--json` and with `--perfetto`,
/// median of 3 each, interleaved so that the machine's drift hits all three (both
/// outputs are streamed while the order is built, so their cost shows only where the
/// writer is slower than the order). Writing alone: `wgo-peer write-bench` analyzes once
/// and writes each from the finished analysis, as `wgo report` writes files, median of 3.
fn perfetto() -> anyhow::Result<()> {
    crate::build::all()?;
    let (wgo, peer) = (root().join("target/release/wgo"), root().join("target/release/wgo-peer"));
    let tmp = std::env::temp_dir().join(format!("wgo-bench-perfetto-{}", std::process::id()));
    println!("simulated 5-node dumps, --spec sim.toml; medians of 3. report: `wgo report` end to end with no output, --json, --perfetto;");
    println!(
        "write: the output alone, from a finished analysis (wgo-peer write-bench): wall seconds, then the writing thread's CPU seconds."
    );
    println!(
        "{:>10}  {:>9}  {:>9}  {:>9}  {:>8}  {:>8}  {:>8}  {:>8}  {:>9}  {:>8}  {:>8}  {:>8}  {:>9}",
        "events",
        "report s",
        "+json s",
        "+pftrc s",
        "write js",
        "write pf",
        "cpu js",
        "cpu pf",
        "pf/js cpu",
        "json MB",
        "pftrc MB",
        "pf B/ev",
        "pf/js size"
    );
    for target in [1_000_000u64, 10_000_000] {
        let _ = std::fs::remove_dir_all(&tmp);
        let out = testbed::run(Command::new(&peer).args(["synth", "--events", &target.to_string(), "--out"]).arg(&tmp))?;
        let events: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().context("synth output")?;
        let (json, trace) = (tmp.join("out.json"), tmp.join("out.pftrace"));
        let mut times: [Vec<f64>; 3] = Default::default();
        for _ in 0..3 {
            for (k, flag) in [None, Some("--json"), Some("--perfetto")].into_iter().enumerate() {
                let _ = std::fs::remove_file(&json);
                let _ = std::fs::remove_file(&trace);
                testbed::run(&mut Command::new("sync"))?;
                let mut cmd = Command::new(&wgo);
                cmd.arg("report").arg(&tmp).arg("--spec").arg(tmp.join("sim.toml"));
                match flag {
                    Some("--json") => cmd.arg("--json").arg(&json),
                    Some(_) => cmd.arg("--perfetto").arg(&trace),
                    None => &mut cmd,
                };
                let t = std::time::Instant::now();
                testbed::run(&mut cmd)?;
                times[k].push(t.elapsed().as_secs_f64());
            }
        }
        let _ = std::fs::remove_file(&json);
        let _ = std::fs::remove_file(&trace);
        testbed::run(&mut Command::new("sync"))?;
        let w = testbed::run(Command::new(&peer).args(["write-bench", "--rounds", "3", "--dir"]).arg(&tmp))?;
        // Per output: wall seconds, CPU seconds, and its size.
        type Writes = (Vec<f64>, Vec<f64>, f64);
        let (mut js, mut pf): (Writes, Writes) = Default::default();
        for line in String::from_utf8_lossy(&w.stdout).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (secs, cpu, len): (f64, f64, f64) = match f[..] {
                [_, s, c, l] => (s.parse()?, c.parse()?, l.parse()?),
                _ => bail!("write-bench printed {line:?}"),
            };
            let out = if f[0] == "json" { &mut js } else { &mut pf };
            out.0.push(secs);
            out.1.push(cpu);
            out.2 = len;
        }
        let (js_s, pf_s, js_cpu, pf_cpu) = (median(&js.0), median(&pf.0), median(&js.1), median(&pf.1));
        println!(
            "{events:>10.0}  {:>9.2}  {:>9.2}  {:>9.2}  {js_s:>8.2}  {pf_s:>8.2}  {js_cpu:>8.2}  {pf_cpu:>8.2}  {:>8.2}x  {:>8.0}  {:>8.0}  {:>8.0}  {:>9.2}x",
            median(&times[0]),
            median(&times[1]),
            median(&times[2]),
            pf_cpu / js_cpu,
            js.2 / 1e6,
            pf.2 / 1e6,
            pf.2 / events,
            pf.2 / js.2
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// The Parquet tables' cost on the same synthetic dumps, 1 M and 10 M events: `wgo report`
/// with no output, `--parquet`, `--json` and `--json --parquet`, three rounds interleaved so
/// that the machine's drift hits all four; medians of time, the highest peak memory (as
/// the report logs it), and the tables' size.
fn parquet() -> anyhow::Result<()> {
    crate::build::all()?;
    let (wgo, peer) = (root().join("target/release/wgo"), root().join("target/release/wgo-peer"));
    let tmp = std::env::temp_dir().join(format!("wgo-bench-parquet-{}", std::process::id()));
    println!("simulated 5-node dumps, --spec sim.toml; `wgo report` end to end, 3 rounds of the four interleaved;");
    println!("seconds: median; peak: the highest of the report's logged peak memory, MiB; tables: the --parquet directory's size.");
    println!(
        "{:>10}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}  {:>9}",
        "events",
        "none s",
        "+pq s",
        "json s",
        "+js+pq s",
        "none MiB",
        "+pq MiB",
        "json MiB",
        "js+pq MiB",
        "pq/none",
        "tables MB",
        "tbl B/ev"
    );
    let size = |dir: &std::path::Path| -> u64 {
        fn walk(p: &std::path::Path) -> u64 {
            std::fs::read_dir(p).map_or(0, |d| {
                d.flatten()
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => walk(&e.path()),
                        Ok(m) => m.len(),
                        Err(_) => 0,
                    })
                    .sum()
            })
        }
        walk(dir)
    };
    for target in [1_000_000u64, 10_000_000] {
        let _ = std::fs::remove_dir_all(&tmp);
        let out = testbed::run(Command::new(&peer).args(["synth", "--events", &target.to_string(), "--out"]).arg(&tmp))?;
        let events: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().context("synth output")?;
        let (json, tables) = (tmp.join("out.json"), tmp.join("tables"));
        let mut times: [Vec<f64>; 4] = Default::default();
        let mut peaks = [0f64; 4];
        let mut tables_bytes = 0;
        testbed::run(&mut Command::new("sync"))?;
        for _ in 0..3 {
            for (k, (with_json, with_tables)) in [(false, false), (false, true), (true, false), (true, true)].into_iter().enumerate() {
                let _ = std::fs::remove_file(&json);
                let _ = std::fs::remove_dir_all(&tables);
                testbed::run(&mut Command::new("sync"))?;
                let mut cmd = Command::new(&wgo);
                cmd.arg("report").arg(&tmp).arg("--spec").arg(tmp.join("sim.toml")).env("WGO_LOG", "info");
                if with_json {
                    cmd.arg("--json").arg(&json);
                }
                if with_tables {
                    cmd.arg("--parquet").arg(&tables);
                }
                let t = std::time::Instant::now();
                let rep = testbed::run(&mut cmd)?;
                times[k].push(t.elapsed().as_secs_f64());
                let err = String::from_utf8_lossy(&rep.stderr);
                let kib: f64 = err
                    .lines()
                    .find_map(|l| l.split("peak memory ").nth(1))
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|s| s.parse().ok())
                    .context("wgo report logged no peak memory")?;
                peaks[k] = peaks[k].max(kib / 1024.0);
                if with_tables {
                    tables_bytes = size(&tables);
                }
            }
        }
        let t: Vec<f64> = times.iter().map(|v| median(v)).collect();
        println!(
            "{events:>10.0}  {:>8.2}  {:>8.2}  {:>8.2}  {:>8.2}  {:>8.0}  {:>8.0}  {:>8.0}  {:>8.0}  {:>7.2}x  {:>8.0}  {:>9.1}",
            t[0],
            t[1],
            t[2],
            t[3],
            peaks[0],
            peaks[1],
            peaks[2],
            peaks[3],
            t[1] / t[0],
            tables_bytes as f64 / 1e6,
            tables_bytes as f64 / events
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

fn clocks() -> anyhow::Result<()> {
    crate::build::all()?;
    let (wgo, peer) = (root().join("target/release/wgo"), root().join("target/release/wgo-peer"));
    contradictions(&wgo, &peer)?;
    clock_step(&wgo, &peer)
}

/// Median seconds of three `wgo report DIR --spec --json` runs, and the report's text.
fn report_median(wgo: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<(f64, String)> {
    let mut times = Vec::new();
    let mut text = String::new();
    for _ in 0..3 {
        testbed::run(&mut Command::new("sync"))?;
        let t = std::time::Instant::now();
        let rep = testbed::run(
            Command::new(wgo).arg("report").arg(dir).arg("--spec").arg(dir.join("sim.toml")).arg("--json").arg(dir.join("out.json")),
        )?;
        times.push(t.elapsed().as_secs_f64());
        text = String::from_utf8_lossy(&rep.stdout).into_owned();
    }
    Ok((median(&times), text))
}

/// The same 10 M-event report with node2's clock stepped back 3 s 30% in, against the one
/// without, median of 3 each; the step must be found.
fn clock_step(wgo: &std::path::Path, peer: &std::path::Path) -> anyhow::Result<()> {
    let tmp = std::env::temp_dir().join(format!("wgo-bench-step-{}", std::process::id()));
    let mut rows = Vec::new();
    for step in [None, Some(-3_000_000_000i64)] {
        let dir = tmp.join(step.map_or("none".into(), |s| s.to_string()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut synth = Command::new(peer);
        synth.args(["synth", "--events", "10000000", "--out"]).arg(&dir);
        if let Some(s) = step {
            synth.arg(format!("--step-ns={s}"));
        }
        testbed::run(&mut synth)?;
        let (secs, text) = report_median(wgo, &dir)?;
        let findings = text.split("\nDetails:").next().unwrap_or("");
        let found = findings.lines().filter(|l| l.contains("'s clock stepped")).count();
        if step.is_some() && found != 1 {
            bail!("the step was not found once among the findings ({found} times):\n{text}");
        }
        rows.push((step, secs));
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_dir_all(&tmp);
    println!("\n10 M events, with and without node2's clock stepped back 3 s (median of 3 reports):");
    for (step, s) in &rows {
        println!("  {:>14}: {s:>6.2} s, {:.2}x", step.map_or("no step".into(), |_| "3 s step back".to_string()), s / rows[0].1);
    }
    Ok(())
}

/// The same 1 M-event report with 10,000 receives recorded 50 ms early (each a cycle the
/// order must break and name), against the one without them, median of 3 each.
fn contradictions(wgo: &std::path::Path, peer: &std::path::Path) -> anyhow::Result<()> {
    let tmp = std::env::temp_dir().join(format!("wgo-bench-cycles-{}", std::process::id()));
    let mut secs = Vec::new();
    for misdated in [0, 10_000] {
        let dir = tmp.join(misdated.to_string());
        let _ = std::fs::remove_dir_all(&dir);
        testbed::run(Command::new(peer).args(["synth", "--events", "1000000", "--misdated", &misdated.to_string(), "--out"]).arg(&dir))?;
        let (s, text) = report_median(wgo, &dir)?;
        let cycles = text.lines().find_map(|l| l.strip_prefix("contradiction: ")).unwrap_or("0").to_string();
        secs.push((misdated, s, cycles));
    }
    let _ = std::fs::remove_dir_all(&tmp);
    println!("\n1 M events, with and without 10,000 receives recorded 50 ms early (median of 3 reports):");
    for (misdated, s, cycles) in &secs {
        println!("  {misdated:>6} misdated: {s:>6.2} s, {cycles:>6} contradictions broken, {:.2}x", s / secs[0].1);
    }
    Ok(())
}

fn shipping() -> anyhow::Result<()> {
    const SIZE: usize = 256 << 20;
    const ROUNDS: usize = 5;
    crate::build::all()?;
    let wgo = root().join("target/release/wgo");
    let peer = root().join("target/release/wgo-peer");
    let tmp = std::env::temp_dir().join(format!("wgo-bench-ship-{}", std::process::id()));
    let spool = tmp.join("spool");
    std::fs::create_dir_all(&spool)?;
    let secret = tmp.join("secret");
    std::fs::write(&secret, "shipping benchmark secret")?;
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    // A dump-sized file of incompressible bytes, spooled as an agent would.
    let dump = spool.join(format!("node1-{:016x}.pcapng", 1));
    let bytes = wgo_tests::load::dump_bytes(0, SIZE);
    std::fs::write(&dump, &bytes)?;
    drop(bytes);
    let sum = testbed::run(Command::new("sha256sum").arg(&dump))?;
    let digest = String::from_utf8_lossy(&sum.stdout).split_whitespace().next().context("sha256sum output")?.to_string();
    let entry = |shipped: bool| serde_json::json!({"node": "node1", "trigger_id": 1, "heard_ns": 0, "collector": "127.0.0.1:7399", "size": SIZE, "sha256": digest, "shipped": shipped});
    let (mut plain, mut shipped) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Plain TCP copy to disk with fsync, the same work minus wgo's protocol and hashing.
        let sink_out = tmp.join("sink.bin");
        let sink = ChildGuard::from(
            Command::new(&peer)
                .args(["tcp-sink", "--bind", "127.0.0.1:7398", "--out"])
                .arg(&sink_out)
                .stdout(std::process::Stdio::null())
                .spawn()?,
        );
        std::thread::sleep(Duration::from_millis(200));
        let t = std::time::Instant::now();
        testbed::run(Command::new(&peer).args(["tcp-source", "--to", "127.0.0.1:7398", "--file"]).arg(&dump))?;
        sink.wait_timeout(Duration::from_secs(60))?;
        plain.push(t.elapsed().as_secs_f64());
        let _ = std::fs::remove_file(&sink_out);

        std::fs::write(spool.join("node1-0000000000000001.json"), serde_json::to_vec(&entry(false))?)?;
        let out = tmp.join("collected");
        let _ = std::fs::remove_dir_all(&out);
        let collect = WgoProcess::spawn(
            Command::new(&wgo)
                .args(["collect", "--listen", "127.0.0.1:7399", "--expect", "node1", "--wait", "120", "--secret-file"])
                .arg(&secret)
                .arg("--out")
                .arg(&out),
            "",
            Duration::from_secs(5),
        )?;
        std::thread::sleep(Duration::from_millis(200));
        let t = std::time::Instant::now();
        testbed::run(Command::new(&wgo).args(["ship", "--ship-rate", "0", "--secret-file"]).arg(&secret).arg("--spool").arg(&spool))?;
        let (status, _, err) = collect.wait(Duration::from_secs(120))?;
        if !status.success() {
            bail!("wgo collect failed: {err}");
        }
        shipped.push(t.elapsed().as_secs_f64());
        eprintln!("round {}: plain copy {:.3} s, wgo ship {:.3} s", round + 1, plain[round], shipped[round]);
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let (p, w) = (median(&plain), median(&shipped));
    let mib = SIZE as f64 / (1 << 20) as f64;
    println!("Shipping {mib:.0} MiB over loopback, unthrottled, to disk with fsync, {ROUNDS} rounds, medians:");
    println!("  plain TCP copy (baseline)   {:.3} s  {:>7.0} MiB/s   1.000x", p, mib / p);
    println!("  wgo ship -> wgo collect     {:.3} s  {:>7.0} MiB/s   {:.3}x", w, mib / w, p / w);
    Ok(())
}

fn timeline() -> anyhow::Result<()> {
    crate::build::all()?;
    crate::setup::packages(crate::setup::TEST_PACKAGES)?;
    crate::setup::browser_test_packages()?;
    let wgo = root().join("target/release/wgo");
    let peer = root().join("target/release/wgo-peer");
    let tmp = std::env::temp_dir().join(format!("wgo-bench-timeline-{}", std::process::id()));
    println!("Timeline in headless Chromium (1600x1000): load = navigation to ready (decode + first frame);");
    println!("frames = pan and zoom steps over all events; ratios against the 10 k page of the same run.");
    println!("{:>9}  {:>9}  {:>8}  {:>8}  {:>9}  {:>9}  {:>8}", "events", "file MB", "load ms", "vs 10k", "frame ms", "max ms", "vs 10k");
    let mut base: Option<(f64, f64)> = None;
    for target in [10_000u64, 100_000, 1_000_000, 5_000_000] {
        let _ = std::fs::remove_dir_all(&tmp);
        testbed::run(Command::new(&peer).args(["synth", "--events", &target.to_string(), "--out"]).arg(&tmp))?;
        let html = tmp.join("timeline.html");
        testbed::run(Command::new(&wgo).arg("report").arg(&tmp).arg("--spec").arg(tmp.join("sim.toml")).arg("--html").arg(&html))?;
        let out = testbed::run(Command::new("node").arg(root().join("tests/browser/timeline.mjs")).arg("bench").arg(&html))?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("bench output")?;
        let (load, frame) = (v["loadMs"].as_f64().unwrap_or(0.0), v["frameMedianMs"].as_f64().unwrap_or(0.0));
        let (bl, bf) = *base.get_or_insert((load, frame));
        println!(
            "{:>9}  {:>9.1}  {:>8.0}  {:>7.1}x  {:>9.1}  {:>9.1}  {:>7.1}x",
            v["events"].as_u64().unwrap_or(0),
            v["bytes"].as_f64().unwrap_or(0.0) / 1e6,
            load,
            load / bl,
            frame,
            v["frameMaxMs"].as_f64().unwrap_or(0.0),
            frame / bf.max(0.1)
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
