//! The demo: a five-node cluster misbehaves, wgo catches it and explains it.
//!
//! The faults are the demo's own, injected from outside the application: a lossy link,
//! a node that stalls and comes back as an "ex-member" mid-vote, then a partition.
//! wgo is told nothing about them: the explanation comes from the packets and the spec.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::testbed::{ChildGuard, ReadySocket, Testbed, WgoProcess, run};

pub struct DemoOptions<'a> {
    pub wgo: PathBuf,
    pub app: PathBuf,
    pub spec: PathBuf,
    /// Where dumps, manifest, report and timeline go.
    pub out: PathBuf,
    pub stop: &'a AtomicBool,
    pub log: &'a dyn Fn(&str),
    /// The armed variant: nobody presses the button; node3's app crashes and the agents
    /// trigger by themselves, shipping to `wgo serve`.
    pub crash: bool,
}

pub struct DemoOutcome {
    /// Why the trigger went out (the crash variant: the crash).
    pub trigger: Option<String>,
    /// What went wrong, one line per fault, as wgo found it.
    pub headline: String,
    /// `wgo report`'s own summary.
    pub report: String,
    pub timeline: PathBuf,
    pub json: PathBuf,
}

/// The commands the demo runs, with the Debian package of each: `cargo xtask demo`
/// installs these, and a test runs the demo with nothing else on PATH.
pub const COMMANDS: &[(&str, &str)] = &[("ip", "iproute2"), ("nft", "nftables")];

const NODES: usize = 5;
const TRIGGER_PORT: u16 = 7301;
const COLLECT_PORT: u16 = 7300;
/// In the crash variant, node3's app crashes this long after it started: after the faults.
const CRASH_AFTER_S: f64 = 9.2;
/// The node whose app crashes in the crash variant.
const CRASHING: usize = 3;

/// Sleeps, giving up early (with an error) when asked to stop.
fn pause(stop: &AtomicBool, d: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        std::thread::sleep(Duration::from_millis(20).min(end - Instant::now()));
    }
    Ok(())
}

pub fn run_demo(o: &DemoOptions<'_>) -> anyhow::Result<DemoOutcome> {
    let log = o.log;
    let _ = std::fs::remove_dir_all(&o.out);
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let secret = o.out.join("secret");
    std::fs::write(&secret, wgo::transport::spool::hex(&wgo::transport::wire::random_bytes::<24>()))?;
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;

    log("starting a cluster of 5 nodes: network namespaces and cgroups on a bridge");
    let bed = Testbed::new(NODES)?;
    let n1 = bed.node("node1");
    let collector = format!("{}:{COLLECT_PORT}", n1.ipv4);
    let broadcast = format!("{}:{TRIGGER_PORT}", crate::testbed::BROADCAST_V4);
    let incidents = o.out.join("incidents");
    let serve = match o.crash {
        true => {
            let side = bed.side_cgroup("serve")?;
            let mut cmd = n1.command_in(&o.wgo, Some(&side))?;
            cmd.arg("serve")
                .arg("--secret-file")
                .arg(&secret)
                .args(["--listen", &collector, "--report", "--spec"])
                .arg(&o.spec)
                .arg("--incidents")
                .arg(&incidents)
                .env("WGO_LOG", "info");
            let p = WgoProcess::spawn(&mut cmd, "serving incidents", Duration::from_secs(10))?;
            log(&format!("started wgo serve on node1 ({collector}): it files every incident and reports it"));
            Some(p)
        }
        false => None,
    };
    let agents: Vec<WgoProcess> = bed
        .nodes
        .iter()
        .map(|n| {
            let side = bed.side_cgroup(&format!("agent-{}", n.name))?;
            let mut cmd = n.command_in(&o.wgo, Some(&side))?;
            cmd.args(["agent", "--node", &n.name, "--cgroup"])
                .arg(&n.cgroup)
                .arg("--secret-file")
                .arg(&secret)
                .arg("--spool-dir")
                .arg(o.out.join("spool").join(&n.name))
                .args(["--on-trigger", "freeze", "--ring-seconds", "30", "--trigger-port", &TRIGGER_PORT.to_string()])
                .env("WGO_LOG", "warn");
            if o.crash {
                cmd.args(["--auto-trigger", "crash", "--collector", &collector, "--broadcast", &broadcast]);
            }
            // The agent says READY=1 once it records, as it would to systemd.
            let ready = ReadySocket::bind(o.out.join(format!("notify-{}", n.name)))?;
            ready.point(&mut cmd);
            let mut p = WgoProcess::spawn(&mut cmd, "", Duration::from_secs(10))?;
            ready.wait(&mut p, Duration::from_secs(15)).with_context(|| format!("agent on {}", n.name))?;
            Ok(p)
        })
        .collect::<anyhow::Result<_>>()?;
    log(if o.crash {
        "started a wgo agent per node, armed: a crash in the app makes it send the trigger itself (stop policy: freeze)"
    } else {
        "started a wgo agent per node (stop policy: freeze)"
    });
    let apps: Vec<ChildGuard> = bed
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut cmd = n.command(&o.app)?;
            cmd.args(["--index", &(i + 1).to_string(), "--nodes", &NODES.to_string()]);
            if o.crash && i + 1 == CRASHING {
                cmd.args(["--crash-after", &CRASH_AFTER_S.to_string()]);
            }
            n.spawn(&mut cmd)
        })
        .collect::<anyhow::Result<_>>()?;
    log("running the demo app on every node: TASK/ACK, heartbeats, ballots, WHOHAS/IHAVE");
    pause(o.stop, Duration::from_millis(1500))?;

    let n3 = bed.node("node3");
    log("fault 1: the link node1 → node3 drops 30% of UDP (tasks get retried)");
    n3.nft(&format!(
        "table inet wgo_lossy {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    ip saddr {} udp dport 7000 numgen random mod 10 < 3 drop\n  }}\n}}\n",
        n1.ipv4
    ))?;
    pause(o.stop, Duration::from_millis(2500))?;
    n3.nft("delete table inet wgo_lossy")?;

    log("fault 2: node5 stalls for 1.2 s, falls out of the membership, and comes back mid-vote");
    apps[4].signal(libc::SIGSTOP);
    let stalled = pause(o.stop, Duration::from_millis(1200));
    apps[4].signal(libc::SIGCONT);
    stalled?;
    pause(o.stop, Duration::from_millis(800))?;

    log("fault 3: partition into {node1, node2} and {node3, node4, node5} for 2 s");
    let islands: [&[usize]; 2] = [&[0, 1], &[2, 3, 4]];
    for (i, isl) in islands.iter().enumerate() {
        let others: Vec<String> = islands[1 - i].iter().map(|&k| bed.nodes[k].ipv4.to_string()).collect();
        for &k in isl.iter() {
            bed.nodes[k].nft(&format!(
                "table inet wgo_split {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    ip saddr {{ {} }} drop\n  }}\n}}\n",
                others.join(", ")
            ))?;
        }
    }
    let split = pause(o.stop, Duration::from_millis(2000));
    for n in &bed.nodes {
        n.nft("delete table inet wgo_split")?;
    }
    split?;
    pause(o.stop, Duration::from_millis(700))?;

    let (collected, trigger) = match serve {
        None => (press(o, &bed, &secret, &broadcast)?, None),
        Some(serve) => {
            log(&format!("nobody presses the button: node{CRASHING}'s app crashes at {CRASH_AFTER_S} s"));
            let dir = wait_for_incident(o.stop, &incidents, Duration::from_secs(60))?;
            let (_, _, err) = serve.stop(Duration::from_secs(10))?;
            for l in err.lines().filter(|l| l.contains("incident")) {
                log(&format!("  wgo serve: {}", l.split_once("INFO ").map_or(l, |x| x.1)));
            }
            let m = wgo::transport::manifest::Manifest::load(&dir).context("the incident's manifest")?;
            (dir, m.reason)
        }
    };
    for a in agents {
        let (status, _, err) = a.wait(Duration::from_secs(30))?;
        if !status.success() {
            bail!("an agent failed: {err}");
        }
    }
    let frozen = bed
        .nodes
        .iter()
        .filter(|n| std::fs::read_to_string(n.cgroup.join("cgroup.events")).unwrap_or_default().contains("frozen 1"))
        .count();
    log(&format!("the agents shipped their dumps and froze the application on {frozen} of {NODES} nodes"));

    let (timeline, json) = (o.out.join("timeline.html"), o.out.join("report.json"));
    let rep = run(Command::new(&o.wgo)
        .arg("report")
        .arg(&collected)
        .arg("--spec")
        .arg(&o.spec)
        .arg("--html")
        .arg(&timeline)
        .arg("--json")
        .arg(&json)
        .env("WGO_LOG", "warn"))?;
    let report = String::from_utf8_lossy(&rep.stdout).into_owned();
    let headline = headline(&json)?;
    drop(apps);
    drop(bed);
    log("removed the namespaces, cgroups, links and processes");
    Ok(DemoOutcome { trigger, headline, report, timeline, json })
}

/// Presses the button from node1 and collects all five dumps; returns where they are.
fn press(o: &DemoOptions<'_>, bed: &Testbed, secret: &Path, broadcast: &str) -> anyhow::Result<PathBuf> {
    (o.log)("pressing the button: trigger from node1, collecting all five dumps");
    let n1 = bed.node("node1");
    let collected = o.out.join("collected");
    let names: Vec<&str> = bed.nodes.iter().map(|n| n.name.as_str()).collect();
    let side = bed.side_cgroup("collector")?;
    let mut trig = n1.command_in(&o.wgo, Some(&side))?;
    trig.arg("trigger")
        .arg("--secret-file")
        .arg(secret)
        .args(["--broadcast", broadcast])
        .args(["--listen", &format!("{}:{COLLECT_PORT}", n1.ipv4), "--expect", &names.join(","), "--wait", "60", "--out"])
        .arg(&collected)
        .args(["--reason", "the demo pressed the button"])
        .env("WGO_LOG", "warn");
    let out = run(&mut trig).context("wgo trigger")?;
    (o.log)(&String::from_utf8_lossy(&out.stdout).lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n"));
    Ok(collected)
}

/// The first incident `wgo serve` has finished reporting.
fn wait_for_incident(stop: &AtomicBool, root: &Path, timeout: Duration) -> anyhow::Result<PathBuf> {
    let end = Instant::now() + timeout;
    loop {
        let done = std::fs::read_dir(root).into_iter().flatten().flatten().map(|e| e.path()).find(|d| d.join("summary.txt").exists());
        if let Some(d) = done {
            return Ok(d);
        }
        if Instant::now() > end {
            bail!("no incident was reported in {} within {} s", root.display(), timeout.as_secs());
        }
        pause(stop, Duration::from_millis(100))?;
    }
}

/// What went wrong, from the report alone: the lossiest link, the aborted ballots and why,
/// the stalled nodes, the islands.
pub fn headline(json: &Path) -> anyhow::Result<String> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(json)?).context("reading the report")?;
    let label: std::collections::HashMap<u64, String> = v["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (e["id"].as_u64().unwrap_or(0), e["label"].as_str().unwrap_or("").to_string()))
        .collect();
    let all: Vec<&serde_json::Value> = v["anomalies"].as_array().into_iter().flatten().collect();
    let kind = |k: &'static str| all.iter().copied().filter(move |a| a["kind"] == k);
    let mut lines = Vec::new();
    // The link that lost the most while the cluster was not partitioned (a partition loses
    // everything across it, and is reported on its own).
    // A partition's span is known to one detection window: a loss across its islands up
    // to a window before or after it belongs to it too.
    let window = wgo::analysis::anomalies::PARTITION_WINDOW_NS;
    let partitions: Vec<(i64, i64, Vec<Vec<String>>)> = kind("partition")
        .filter_map(|a| {
            let islands = a["islands"]
                .as_array()?
                .iter()
                .map(|i| i.as_array().into_iter().flatten().filter_map(|n| Some(n.as_str()?.to_string())).collect())
                .collect();
            Some((a["span_ns"][0].as_i64()?, a["span_ns"][1].as_i64()?, islands))
        })
        .collect();
    let in_partition = |a: &serde_json::Value| {
        let island = |islands: &[Vec<String>], n: &serde_json::Value| {
            islands.iter().position(|i| n.as_str().is_some_and(|n| i.iter().any(|x| x == n)))
        };
        a["span_ns"][0].as_i64().is_some_and(|t| {
            partitions.iter().any(|(x, y, islands)| {
                x - window <= t && t < y + window && island(islands, &a["nodes"][0]) != island(islands, &a["nodes"][1])
            })
        })
    };
    // Likewise a loss to (or from) a node while it was stalled belongs to the stall.
    let stalls: Vec<(i64, i64, String)> = kind("stalled_node")
        .filter_map(|a| Some((a["span_ns"][0].as_i64()?, a["span_ns"][1].as_i64()?, a["nodes"][0].as_str()?.to_string())))
        .collect();
    let in_stall = |a: &serde_json::Value| {
        a["span_ns"][0].as_i64().is_some_and(|t| {
            stalls.iter().any(|(x, y, n)| *x <= t && t <= *y && (a["nodes"][0] == n.as_str() || a["nodes"][1] == n.as_str()))
        })
    };
    let mut links: std::collections::BTreeMap<(String, String), (usize, usize)> = std::collections::BTreeMap::new();
    for a in kind("network_loss").filter(|a| !in_partition(a) && !in_stall(a)) {
        let nodes = a["nodes"].as_array().cloned().unwrap_or_default();
        if nodes.len() < 2 {
            continue;
        }
        let key = (nodes[0].as_str().unwrap_or("?").to_string(), nodes[1].as_str().unwrap_or("?").to_string());
        let is_task = a["events"][0].as_u64().and_then(|e| label.get(&e)).is_some_and(|l| l.starts_with("TASK"));
        let e = links.entry(key).or_default();
        if is_task { e.0 += 1 } else { e.1 += 1 }
    }
    // Ranked by every message lost: TASKs alone are too few to tell links apart reliably.
    if let Some(((from, to), (tasks, other))) = links.iter().filter(|(_, c)| c.0 > 0).max_by_key(|(_, c)| c.0 + c.1) {
        let retried = kind("retransmission")
            .filter(|a| a["events"][0].as_u64().and_then(|e| label.get(&e)).is_some_and(|l| l.starts_with("TASK")))
            .count();
        lines.push(format!(
            "lossy link {from} → {to}: {tasks} TASKs lost outside the partition and stalls (and {other} other messages); {retried} TASKs had to be retried"
        ));
    }
    // Aborted ballots, with what set them off.
    let aborts: Vec<&str> = v["violations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|x| x["name"] == "no-aborted-ballots")
        .filter_map(|x| x["text"].as_str())
        .collect();
    let rejoin: Vec<&&str> = aborts.iter().filter(|t| t.contains("member rejoined")).collect();
    if let Some(first) = rejoin.first() {
        lines.push(format!(
            "aborted ballot: {first} — an ex-member's heartbeat arrived mid-vote ({} such aborts, {} aborts in all)",
            rejoin.len(),
            aborts.len()
        ));
    }
    for a in kind("stalled_node") {
        lines.push(a["text"].as_str().unwrap_or("").to_string());
    }
    for a in kind("partition") {
        let islands: Vec<String> = a["islands"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| format!("{{{}}}", i.as_array().into_iter().flatten().filter_map(|n| n.as_str()).collect::<Vec<_>>().join(", ")))
            .collect();
        if islands.len() >= 2 {
            lines.push(a["text"].as_str().unwrap_or("").to_string());
        }
    }
    if lines.is_empty() {
        lines.push("nothing went wrong that wgo could see".into());
    }
    Ok(lines.iter().enumerate().map(|(i, l)| format!("  {}. {l}", i + 1)).collect::<Vec<_>>().join("\n"))
}

#[cfg(test)]
mod tests {
    /// Losses across the islands just outside a partition's detected span (it is known to
    /// one window) belong to the partition, not to a lossy link.
    #[test]
    fn headline_counts_losses_at_a_partitions_edges_as_the_partitions() {
        let w = wgo::analysis::anomalies::PARTITION_WINDOW_NS;
        let (start, end) = (10 * w, 17 * w);
        let loss = |id: u64, t: i64, to: &str| serde_json::json!({"kind": "network_loss", "events": [id], "nodes": ["node1", to], "span_ns": [t, t]});
        let mut anomalies = vec![serde_json::json!({
            "kind": "partition", "events": [], "text": "partition", "span_ns": [start, end],
            "islands": [["node1", "node2"], ["node3", "node4"]],
        })];
        let mut events = Vec::new();
        // node1 → node4: five TASKs lost in the window before the detected start.
        for i in 0..5 {
            events.push(serde_json::json!({"id": i, "label": "TASK"}));
            anomalies.push(loss(i, start - w / 2, "node4"));
        }
        // node1 → node3: three TASKs lost long before the partition: the lossy link.
        for i in 5..8 {
            events.push(serde_json::json!({"id": i, "label": "TASK"}));
            anomalies.push(loss(i, start - 8 * w, "node3"));
        }
        let dir = std::env::temp_dir().join(format!("wgo-headline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json = dir.join("report.json");
        std::fs::write(&json, serde_json::json!({"events": events, "anomalies": anomalies, "violations": []}).to_string()).unwrap();
        let headline = super::headline(&json).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(headline.contains("lossy link node1 → node3: 3 TASKs"), "{headline}");
    }
}
