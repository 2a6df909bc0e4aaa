//! Real clustered programs from Debian, on the test bed, recorded by wgo while an operator's
//! faults are injected: a partition and a lossy link (nftables) and a stalled process
//! (SIGSTOP). Each scenario knows its truth; [`judge`] compares `wgo report`'s findings with it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::bins::wgo;
use crate::helpers::record_all;
use crate::testbed::{ChildGuard, Testbed, run};

/// The commands the corpus runs, with the Debian package of each (`cargo xtask test` installs them).
pub const PACKAGES: &[(&str, &str)] = &[
    ("dnsmasq", "dnsmasq-base"),
    ("dig", "bind9-dnsutils"),
    ("redis-server", "redis-server"),
    ("redis-cli", "redis-tools"),
    ("etcd", "etcd-server"),
    ("etcdctl", "etcd-client"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    /// dnsmasq on node1 answering dig on node2 and node3 (UDP).
    Dnsmasq,
    /// Redis: a master on node1, replicas on node2 and node3, a writer on node4 (TCP).
    Redis,
    /// A three-member etcd cluster: Raft over TCP.
    Etcd,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    Healthy,
    /// `node` is cut off from every other node.
    Partition {
        node: String,
    },
    /// 30% of what `from` sends to `to` is dropped at `to`.
    Lossy {
        from: String,
        to: String,
    },
    /// `node`'s server process is stopped (SIGSTOP), then continued.
    Stall {
        node: String,
    },
}

/// What happened, on this machine's clock (the nodes share it).
pub struct Truth {
    pub fault: Fault,
    pub span_ns: (i64, i64),
}

pub struct Run {
    pub truth: Truth,
    /// `wgo report`'s JSON findings.
    pub findings: Vec<serde_json::Value>,
    pub summary: String,
}

const WARMUP: Duration = Duration::from_secs(3);
const FAULT: Duration = Duration::from_secs(3);
const AFTER: Duration = Duration::from_secs(2);
/// A lossy link runs longer: a client that waits out a timeout per loss loses few messages a second.
const LOSSY: Duration = Duration::from_secs(6);

fn now_ns() -> i64 {
    wgo::clock::wall_ns() as i64
}

impl System {
    pub fn nodes(self) -> usize {
        match self {
            System::Redis => 4,
            System::Dnsmasq | System::Etcd => 3,
        }
    }

    /// Starts the system; returns its processes, the server one of each node first.
    fn start(self, bed: &Testbed, dir: &Path) -> anyhow::Result<Vec<(String, ChildGuard)>> {
        let ip = |k: usize| bed.nodes[k].ipv4.to_string();
        let mut procs = Vec::new();
        match self {
            System::Dnsmasq => {
                let n = &bed.nodes[0];
                let mut cmd = n.command("dnsmasq")?;
                cmd.args(["-k", "-C", "/dev/null", "--no-resolv", "--no-hosts", "--address=/wgo.test/10.9.9.9", "--bind-interfaces"])
                    .args(["--user=root", "--group=root", "--pid-file=", "--port=53"])
                    .arg(format!("--listen-address={}", ip(0)));
                procs.push((n.name.clone(), n.spawn(&mut cmd)?));
                // Three resolver users per client host, each asking in turn with a 1 s timeout.
                for n in &bed.nodes[1..] {
                    for user in 0..3 {
                        let script = format!(
                            "i=0; while :; do i=$((i+1)); dig @{} +tries=1 +time=1 +short q$i.u{user}.{}.wgo.test >/dev/null; sleep 0.05; done",
                            ip(0),
                            n.name
                        );
                        procs.push((n.name.clone(), n.spawn(n.command("sh")?.args(["-c", &script]))?));
                    }
                }
            }
            System::Redis => {
                for (k, n) in bed.nodes[..3].iter().enumerate() {
                    let data = dir.join(format!("redis-{}", n.name));
                    std::fs::create_dir_all(&data)?;
                    let mut cmd = n.command("redis-server")?;
                    // Replicas sync at once (Redis waits 5 s by default for more to join a diskless sync).
                    cmd.args(["--port", "6379", "--bind", &ip(k), "--protected-mode", "no", "--save", "", "--appendonly", "no"])
                        .args(["--repl-diskless-sync-delay", "0"])
                        .args(["--daemonize", "no", "--logfile", ""])
                        .arg("--dir")
                        .arg(&data);
                    if k > 0 {
                        cmd.args(["--replicaof", &ip(0), "6379"]);
                    }
                    procs.push((n.name.clone(), n.spawn(cmd.stdout(std::process::Stdio::null()))?));
                }
                std::thread::sleep(Duration::from_millis(300));
                let n = &bed.nodes[3];
                let script = format!("i=0; while :; do i=$((i+1)); redis-cli -h {} set k$i v$i >/dev/null; sleep 0.02; done", ip(0));
                procs.push((n.name.clone(), n.spawn(n.command("sh")?.args(["-c", &script]))?));
            }
            System::Etcd => {
                let cluster: Vec<String> = bed.nodes.iter().map(|n| format!("{}=http://{}:2380", n.name, n.ipv4)).collect();
                for n in &bed.nodes {
                    let me = n.ipv4.to_string();
                    let mut cmd = n.command("etcd")?;
                    // In memory: this VM's disk takes up to a second to fsync, and etcd stops
                    // the whole cluster for it (a real stall, but not the one injected).
                    cmd.args(["--name", &n.name, "--data-dir"])
                        .arg(format!("/dev/shm/wgo-etcd-{}-{}", std::process::id(), n.name))
                        .args(["--listen-peer-urls", &format!("http://{me}:2380")])
                        .args(["--initial-advertise-peer-urls", &format!("http://{me}:2380")])
                        .args(["--listen-client-urls", &format!("http://{me}:2379")])
                        .args(["--advertise-client-urls", &format!("http://{me}:2379")])
                        .args(["--initial-cluster", &cluster.join(","), "--initial-cluster-state", "new"])
                        .args(["--initial-cluster-token", "wgo-corpus", "--log-level", "error"])
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null());
                    procs.push((n.name.clone(), n.spawn(&mut cmd)?));
                }
            }
        }
        Ok(procs)
    }

    /// The nodes a fault is injected between: (the node to cut off, the lossy link's
    /// (from, to), the node to stall). For etcd they follow its leader, found at run time.
    fn targets(self, bed: &Testbed) -> anyhow::Result<(String, (String, String), String)> {
        let name = |k: usize| bed.nodes[k].name.clone();
        Ok(match self {
            System::Dnsmasq => (name(2), (name(1), name(0)), name(0)),
            System::Redis => (name(2), (name(0), name(1)), name(0)),
            System::Etcd => {
                let leader = etcd_leader(bed)?;
                let followers: Vec<String> = bed.nodes.iter().map(|n| n.name.clone()).filter(|n| *n != leader).collect();
                (followers[1].clone(), (leader.clone(), followers[0].clone()), followers[1].clone())
            }
        })
    }
}

/// The etcd member that leads, from `etcdctl endpoint status`.
fn etcd_leader(bed: &Testbed) -> anyhow::Result<String> {
    let endpoints: Vec<String> = bed.nodes.iter().map(|n| format!("http://{}:2379", n.ipv4)).collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = run(bed.nodes[0].command_in("etcdctl", None)?.env("ETCDCTL_API", "3").args([
            "--endpoints",
            &endpoints.join(","),
            "endpoint",
            "status",
        ]))?;
        // Lines: endpoint, id, version, db size, is leader, ...
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let f: Vec<&str> = line.split(", ").collect();
            if f.len() > 4 && f[4] == "true" {
                let ip = f[0].trim_start_matches("http://").trim_end_matches(":2379");
                if let Some(n) = bed.nodes.iter().find(|n| n.ipv4.to_string() == ip) {
                    return Ok(n.name.clone());
                }
            }
        }
        if Instant::now() > deadline {
            bail!("no etcd leader after 15 s: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn partition(bed: &Testbed, node: &str, on: bool) -> anyhow::Result<()> {
    let cut = bed.node(node);
    for n in &bed.nodes {
        let drop_from: Vec<String> = match n.name == node {
            true => bed.nodes.iter().filter(|x| x.name != node).map(|x| x.ipv4.to_string()).collect(),
            false => vec![cut.ipv4.to_string()],
        };
        match on {
            true => n.nft(&format!(
                "table inet wgo_cut {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  ip saddr {{ {} }} drop\n }}\n}}\n",
                drop_from.join(", ")
            ))?,
            false => n.nft("delete table inet wgo_cut")?,
        }
    }
    Ok(())
}

/// 30% loss at the switch (the network's doing, not either node's firewall).
fn lossy(bed: &Testbed, from: &str, to: &str, on: bool) -> anyhow::Result<()> {
    bed.lossy_link(from, to, 3, None, on)
}

/// Runs `system` with `fault` (as a kind: the nodes are the system's) while every node is
/// recorded, then reports.
pub fn run_scenario(system: System, fault_kind: &str, dir: &Path) -> anyhow::Result<Run> {
    let bed = Testbed::new(system.nodes())?;
    let dumps = dir.join("dumps");
    std::fs::create_dir_all(&dumps)?;
    let mut result: anyhow::Result<Truth> = Err(anyhow::anyhow!("not run"));
    // The programs outlive the recording: their shutdown is no part of the story.
    let mut running = Vec::new();
    record_all(&bed, &dumps, || {
        result = (|| {
            let procs = system.start(&bed, dir)?;
            std::thread::sleep(WARMUP);
            let (cut, (from, to), stalled) = system.targets(&bed)?;
            let start = now_ns();
            let fault = match fault_kind {
                "healthy" => {
                    std::thread::sleep(FAULT);
                    Fault::Healthy
                }
                "partition" => {
                    partition(&bed, &cut, true)?;
                    std::thread::sleep(FAULT);
                    partition(&bed, &cut, false)?;
                    Fault::Partition { node: cut }
                }
                "lossy" => {
                    lossy(&bed, &from, &to, true)?;
                    std::thread::sleep(LOSSY);
                    lossy(&bed, &from, &to, false)?;
                    Fault::Lossy { from, to }
                }
                "stall" => {
                    let (_, p) = procs.iter().find(|(n, _)| *n == stalled).context("the process to stall")?;
                    p.signal(libc::SIGSTOP);
                    std::thread::sleep(FAULT);
                    p.signal(libc::SIGCONT);
                    Fault::Stall { node: stalled }
                }
                other => bail!("no fault {other}"),
            };
            let end = now_ns();
            std::thread::sleep(AFTER);
            running = procs;
            Ok(Truth { fault, span_ns: (start, end) })
        })();
    });
    drop(running);
    for e in std::fs::read_dir("/dev/shm").into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(&format!("wgo-etcd-{}-", std::process::id())) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let truth = result?;
    let json = dir.join("report.json");
    let out = run(Command::new(wgo()).arg("report").arg(&dumps).arg("--json").arg(&json).env("WGO_LOG", "warn"))?;
    if !out.status.success() {
        bail!("wgo report failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)?;
    let findings = v["findings"].as_array().cloned().unwrap_or_default();
    Ok(Run { truth, findings, summary: String::from_utf8_lossy(&out.stdout).into_owned() })
}

/// The structural finding kinds a fault is judged on.
pub const KINDS: &[&str] = &["partition", "lossy_link", "stalled_node"];

/// Per finding kind: (true positives, false positives, false negatives) of one run. A finding
/// is true when it names the injected fault: the cut-off node on its own side of a partition
/// covering most of the fault, the lossy link itself, the stalled node over most of its stop.
pub fn judge(r: &Run) -> Vec<(&'static str, usize, usize, usize)> {
    let (f0, f1) = r.truth.span_ns;
    let covered = |spans: &[(i64, i64)]| {
        let inside: i64 = spans.iter().map(|&(a, b)| (b.min(f1) - a.max(f0)).max(0)).sum();
        inside * 2 >= f1 - f0
    };
    let span = |f: &serde_json::Value| Some((f["span_ns"][0].as_i64()?, f["span_ns"][1].as_i64()?));
    let of = |k: &str| r.findings.iter().filter(|f| f["kind"] == k).collect::<Vec<_>>();
    let names = |f: &serde_json::Value, key: &str| {
        f[key].as_array().into_iter().flatten().filter_map(|n| n.as_str()).map(String::from).collect::<Vec<_>>()
    };
    KINDS
        .iter()
        .map(|&kind| {
            let found = of(kind);
            let (good, expected): (Vec<&&serde_json::Value>, bool) = match (&r.truth.fault, kind) {
                (Fault::Partition { node }, "partition") => {
                    // The cut-off node alone on its side.
                    let alone = |f: &serde_json::Value| f["text"].as_str().is_some_and(|t| t.contains(&format!("{{{node}}}")));
                    let good: Vec<_> = found.iter().filter(|f| alone(f)).collect();
                    let spans: Vec<(i64, i64)> = good.iter().filter_map(|f| span(f)).collect();
                    (if covered(&spans) { good } else { Vec::new() }, true)
                }
                (Fault::Lossy { from, to }, "lossy_link") => {
                    (found.iter().filter(|f| names(f, "nodes") == [from.clone(), to.clone()]).collect(), true)
                }
                (Fault::Stall { node }, "stalled_node") => {
                    let good: Vec<_> = found.iter().filter(|f| names(f, "nodes") == [node.clone()]).collect();
                    let spans: Vec<(i64, i64)> = good.iter().filter_map(|f| span(f)).collect();
                    (if covered(&spans) { good } else { Vec::new() }, true)
                }
                _ => (Vec::new(), false),
            };
            let tp = usize::from(!good.is_empty());
            let fp = found.len() - good.len().min(found.len());
            let fn_ = usize::from(expected && good.is_empty());
            (kind, tp, fp, fn_)
        })
        .collect()
}
