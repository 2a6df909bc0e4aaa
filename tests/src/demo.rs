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
    /// `wgo report`'s summary: its ranked findings, then the details.
    pub report: String,
    pub timeline: PathBuf,
    pub json: PathBuf,
    /// The incident as a Perfetto trace.
    pub perfetto: PathBuf,
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

    log("fault 1: the link node1 → node3 drops 30% of UDP (tasks get retried)");
    bed.lossy_link("node1", "node3", 3, Some(7000), true)?;
    pause(o.stop, Duration::from_millis(2500))?;
    bed.lossy_link("node1", "node3", 3, Some(7000), false)?;

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
            let m = wgo::transport::manifest::Manifest::load(&dir)?.context("the incident's manifest")?;
            (dir, m.reason)
        }
    };
    for (a, n) in agents.into_iter().zip(&bed.nodes) {
        let (status, _, err) = match o.crash {
            // An armed agent records on after an incident: stopped once it froze its app.
            true => {
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while !std::fs::read_to_string(n.cgroup.join("cgroup.events")).unwrap_or_default().contains("frozen 1") {
                    if std::time::Instant::now() > deadline {
                        bail!("the agent on {} did not freeze its app: {}", n.name, a.stderr());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                a.stop(Duration::from_secs(10))?
            }
            false => a.wait(Duration::from_secs(30))?,
        };
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

    let (timeline, json, perfetto) = (o.out.join("timeline.html"), o.out.join("report.json"), o.out.join("incident.pftrace"));
    let rep = run(Command::new(&o.wgo)
        .arg("report")
        .arg(&collected)
        .arg("--spec")
        .arg(&o.spec)
        .arg("--html")
        .arg(&timeline)
        .arg("--json")
        .arg(&json)
        .arg("--perfetto")
        .arg(&perfetto)
        .env("WGO_LOG", "warn"))?;
    let report = String::from_utf8_lossy(&rep.stdout).into_owned();
    drop(apps);
    drop(bed);
    log("removed the namespaces, cgroups, links and processes");
    Ok(DemoOutcome { trigger, report, timeline, json, perfetto })
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
