//! `cargo xtask bench scale`: the report's relational stages through DataFusion (the
//! `wgo-sql-scale` binary) at 10 M and 50 M synthetic raw events under a 4 GiB memory cap,
//! beside the in-memory report at 10 M; the table of `docs/scale.md`.

use std::process::Command;

use anyhow::{Context, bail};
use wgo_tests::testbed;

use crate::build::root;
use crate::exec::exec;
use crate::setup::clean_command;

const CAP: &str = "4GiB";
const SIZES: [u64; 2] = [10_000_000, 50_000_000];
const STAGES: [&str; 3] = ["match", "losses", "bounds"];

fn json(out: &std::process::Output, what: &str) -> anyhow::Result<serde_json::Value> {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().with_context(|| format!("{what} printed nothing"))?;
    serde_json::from_str(line).with_context(|| format!("{what} printed {line:?}"))
}

pub fn run() -> anyhow::Result<()> {
    crate::build::all()?;
    exec(clean_command("cargo").current_dir(root()).args(["build", "--quiet", "--release", "-p", "wgo-sql"]))?;
    let bin = root().join("target/release");
    let (scale, wgo, peer) = (bin.join("wgo-sql-scale"), bin.join("wgo"), bin.join("wgo-peer"));
    let tmp = std::env::temp_dir().join(format!("wgo-bench-scale-{}", std::process::id()));
    let spill = tmp.join("spill");
    std::fs::create_dir_all(&spill)?;
    let mut rows = Vec::new();
    for events in SIZES {
        let dir = tmp.join(events.to_string());
        let _ = std::fs::remove_dir_all(&dir);
        let out = testbed::run(Command::new(&scale).args(["synth", "--events", &events.to_string(), "--out"]).arg(&dir))?;
        let truth = json(&out, "synth")?;
        let size = dir_bytes(&dir.join("raw"))?;
        eprintln!(
            "{events} events: {:.0} MiB of Parquet, written in {} s; truth {truth}",
            size as f64 / (1 << 20) as f64,
            truth["seconds"]
        );
        for stage in STAGES {
            testbed::run(&mut Command::new("sync"))?;
            let out = testbed::run(
                Command::new(&scale).args(["stage", stage, "--memory-limit", CAP, "--dir"]).arg(&dir).arg("--spill-dir").arg(&spill),
            )?;
            let v = json(&out, stage)?;
            // Each stage against the truth of the synthetic incident.
            let result = &v["result"];
            match stage {
                "match" => {
                    let n = result[0]["count"].as_u64().unwrap_or(0);
                    if n != truth["matched"].as_u64().unwrap_or(u64::MAX) {
                        bail!("matching found {n} messages, the truth is {}", truth["matched"]);
                    }
                }
                "losses" => {
                    let sum: u64 = result.as_array().map_or(0, |r| r.iter().map(|x| x["lost"].as_u64().unwrap_or(0)).sum());
                    let t = truth["network_lost"].as_u64().unwrap_or(0) + truth["recorder_lost"].as_u64().unwrap_or(0);
                    if sum != t {
                        bail!("the anti-join found {sum} losses, the truth is {t}");
                    }
                }
                _ => {
                    if v["rows"].as_u64() != Some(20) {
                        bail!("bounds for {} pairs, not 20", v["rows"]);
                    }
                }
            }
            eprintln!("  {stage}: {}", v.to_string().chars().take(300).collect::<String>());
            rows.push((
                events,
                stage,
                v["seconds"].as_f64().unwrap_or(0.0),
                v["peak_rss_kib"].as_f64().unwrap_or(0.0),
                v["spilled_bytes"].as_f64().unwrap_or(0.0),
            ));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    // The in-memory report at 10 M events (its own synthetic dumps, `wgo-peer synth`).
    let dumps = tmp.join("dumps");
    testbed::run(Command::new(&peer).args(["synth", "--events", "10000000", "--out"]).arg(&dumps))?;
    testbed::run(&mut Command::new("sync"))?;
    let t = std::time::Instant::now();
    let rep = testbed::run(
        Command::new(&wgo)
            .arg("report")
            .arg(&dumps)
            .arg("--spec")
            .arg(dumps.join("sim.toml"))
            .arg("--json")
            .arg("/dev/null")
            .env("WGO_LOG", "debug"),
    )?;
    let report_s = t.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&rep.stderr);
    let peak_kib: f64 = err
        .lines()
        .find_map(|l| l.split("peak memory ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .context("wgo report logged no peak memory")?;
    let phase = |name: &str| -> f64 {
        err.lines().filter_map(|l| l.split(&format!("{name}: ")).nth(1)).filter_map(|s| s.split(" s,").next()?.parse::<f64>().ok()).sum()
    };
    let matching = phase("match index") + phase("match (certain)") + phase("match (by time)");
    let clocks = phase("clocks");
    let _ = std::fs::remove_dir_all(&tmp);

    println!("The report's relational stages through DataFusion 55 on synthetic raw events (5 nodes, 10 s, 1% network loss,");
    println!("3 recorder gaps per node), each stage in its own process under a {CAP} memory pool, spilling to disk; one run each:");
    println!("{:>10}  {:<8}  {:>9}  {:>14}  {:>11}", "events", "stage", "seconds", "peak RSS MiB", "spilled MiB");
    for (events, stage, s, kib, spilled) in &rows {
        println!("{events:>10}  {stage:<8}  {s:>9.2}  {:>14.0}  {:>11.0}", kib / 1024.0, spilled / (1 << 20) as f64);
    }
    println!(
        "in-memory `wgo report --json /dev/null` at 10 M events (wgo-peer synth): {report_s:.2} s end to end, peak {:.0} MiB; \
         its matching {matching:.2} s, its clocks {clocks:.2} s",
        peak_kib / 1024.0
    );
    Ok(())
}

fn dir_bytes(dir: &std::path::Path) -> anyhow::Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        n += if m.is_dir() { dir_bytes(&e.path())? } else { m.len() };
    }
    Ok(n)
}
