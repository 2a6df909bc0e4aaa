//! Real clustered programs from Debian, on the test bed, recorded by wgo while faults are
//! injected as an operator meets them: cuts at the switch and by the nodes' own firewalls,
//! one-way cuts and split shapes, lossy links, stalled and frozen processes, crashes. Each
//! scenario knows its truth (what was injected, on this machine's clock); [`judge`] compares
//! `wgo report`'s JSON findings with it by their structure (kind, nodes, links, islands, span).
//!
//! The programs are split once into a tuning half and a held-out half ([`System::held_out`]):
//! detectors' rules may be chosen looking at the first, and are measured on the second.
//! Times are random; the seed is printed and `WGO_CORPUS_SEED` sets it.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::bins::wgo;
use crate::helpers::record_all;
use crate::testbed::{ChildGuard, Hook, SwitchRule, Testbed, run};

/// The commands the corpus runs, with the Debian package of each (`cargo xtask test` installs them).
pub const PACKAGES: &[(&str, &str)] = &[
    ("dnsmasq", "dnsmasq-base"),
    ("dig", "bind9-dnsutils"),
    ("redis-server", "redis-server"),
    ("redis-cli", "redis-tools"),
    ("etcd", "etcd-server"),
    ("etcdctl", "etcd-client"),
    ("bash", "bash"),
    ("nats-server", "nats-server"),
    ("serf", "serf"),
    ("bird", "bird2"),
    ("birdc", "bird2"),
    ("knotd", "knot"),
    ("knotc", "knot"),
    ("kdig", "knot-dnsutils"),
    ("chronyd", "chrony"),
    ("haproxy", "haproxy"),
    ("curl", "curl"),
    ("keepalived", "keepalived"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    /// dnsmasq on node1 answering dig on node2 and node3 (UDP).
    Dnsmasq,
    /// Redis: a master on node1, replicas on node2 and node3, a writer on node4 (TCP).
    Redis,
    /// A three-member etcd cluster: Raft over TCP.
    Etcd,
    /// Redis Sentinel: a master and two replicas, a sentinel beside each (they gossip through
    /// the master and ping each other), a writer on node4 that asks the sentinels for the master.
    Sentinel,
    /// A NATS cluster of three servers (full mesh of routes); on each node a publisher and a
    /// subscriber to everyone's subject (messaging, TCP).
    Nats,
    /// Five serf agents (HashiCorp memberlist: SWIM gossip over UDP, state sync over TCP).
    Serf,
    /// Three BIRD routers in a full mesh of eBGP sessions (keepalives every second, 3 s hold).
    Bird,
    /// Knot DNS: a primary on node1 whose zone changes every half second; NOTIFY to two
    /// secondaries, which transfer the changes (IXFR over TCP) and refresh by SOA queries.
    Knot,
    /// chrony: node1 serves time (local stratum 8) polled four times a second by node2 and
    /// node3, which are also symmetric peers of each other (NTP over UDP; nobody's clock is set).
    Chrony,
    /// HAProxy: three instances whose stick tables (requests per client address) are synced
    /// by the peers protocol over TCP; on each node curl asks the next node's instance.
    Haproxy,
    /// keepalived: three VRRP routers of one virtual router (priorities 150, 100, 50), whose
    /// master multicasts an advertisement to 224.0.0.18 every 100 ms (VRRPv3: v2 counts in
    /// whole seconds), IP protocol 112, no ports.
    Keepalived,
}

impl System {
    pub const ALL: &[System] = &[
        System::Dnsmasq,
        System::Redis,
        System::Etcd,
        System::Sentinel,
        System::Nats,
        System::Serf,
        System::Bird,
        System::Knot,
        System::Chrony,
        System::Haproxy,
        System::Keepalived,
    ];

    /// The held-out half: never looked at while choosing a detector's rules or numbers.
    /// Fixed here and in BENCHMARKS.md; a program added later joins it.
    pub fn held_out(self) -> bool {
        match self {
            System::Dnsmasq | System::Redis | System::Etcd | System::Sentinel => false,
            System::Nats | System::Serf | System::Bird | System::Knot | System::Chrony | System::Haproxy | System::Keepalived => true,
        }
    }

    pub fn nodes(self) -> usize {
        match self {
            System::Redis | System::Sentinel => 4,
            System::Serf => 5,
            System::Dnsmasq
            | System::Etcd
            | System::Nats
            | System::Bird
            | System::Knot
            | System::Chrony
            | System::Haproxy
            | System::Keepalived => 3,
        }
    }

    /// Whether nodes `a` and `b` (indices) exchange messages when healthy: a loss on every
    /// link of a node is a loss on these.
    fn talks(self, a: usize, b: usize) -> bool {
        match self {
            // Clients to the server (node1) only; the writer talks to the master only.
            // Knot: the primary with each secondary.
            System::Dnsmasq | System::Redis | System::Knot => a != b && (a == 0 || b == 0),
            // Only the master (node1, the highest priority) advertises; backups are silent.
            System::Keepalived => a == 0 && b != 0,
            System::Etcd | System::Sentinel | System::Nats | System::Serf | System::Bird | System::Chrony | System::Haproxy => a != b,
        }
    }

    /// The server processes of node `k`, the main one first (the one a stall or crash hits).
    fn servers(self, bed: &Testbed, dir: &Path, k: usize) -> anyhow::Result<Vec<Command>> {
        let ip = |k: usize| bed.nodes[k].ipv4.to_string();
        let n = &bed.nodes[k];
        let mut out = Vec::new();
        match self {
            System::Dnsmasq if k == 0 => {
                let mut cmd = n.command("dnsmasq")?;
                cmd.args(["-k", "-C", "/dev/null", "--no-resolv", "--no-hosts", "--address=/wgo.test/10.9.9.9", "--bind-interfaces"])
                    .args(["--user=root", "--group=root", "--pid-file=", "--port=53"])
                    .arg(format!("--listen-address={}", ip(0)));
                out.push(cmd);
            }
            System::Redis | System::Sentinel if k < 3 => {
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
                cmd.stdout(Stdio::null());
                out.push(cmd);
                if self == System::Sentinel {
                    // Sentinel rewrites its configuration: a file of its own per node.
                    let conf = dir.join(format!("sentinel-{}.conf", n.name));
                    std::fs::write(
                        &conf,
                        format!(
                            "port 26379\nbind {}\nprotected-mode no\ndaemonize no\nlogfile \"\"\ndir {}\n\
                             sentinel monitor wgo {} 6379 2\nsentinel down-after-milliseconds wgo 1000\n\
                             sentinel failover-timeout wgo 5000\n",
                            ip(k),
                            data.display(),
                            ip(0)
                        ),
                    )?;
                    let mut cmd = n.command("redis-server")?;
                    cmd.arg(&conf).arg("--sentinel").stdout(Stdio::null());
                    out.push(cmd);
                }
            }
            System::Etcd => {
                let cluster: Vec<String> = bed.nodes.iter().map(|n| format!("{}=http://{}:2380", n.name, n.ipv4)).collect();
                let me = ip(k);
                let mut cmd = n.command("etcd")?;
                // In memory: this VM's disk takes up to a second to fsync, and etcd stops
                // the whole cluster for it (a real stall, but not the one injected).
                cmd.args(["--name", &n.name, "--data-dir"])
                    .arg(etcd_dir(&n.name))
                    .args(["--listen-peer-urls", &format!("http://{me}:2380")])
                    .args(["--initial-advertise-peer-urls", &format!("http://{me}:2380")])
                    .args(["--listen-client-urls", &format!("http://{me}:2379")])
                    .args(["--advertise-client-urls", &format!("http://{me}:2379")])
                    .args(["--initial-cluster", &cluster.join(","), "--initial-cluster-state", "new"])
                    .args(["--initial-cluster-token", "wgo-corpus", "--log-level", "error"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                out.push(cmd);
            }
            System::Nats => {
                let routes: Vec<String> = (0..bed.nodes.len()).filter(|&j| j != k).map(|j| format!("nats://{}:6222", ip(j))).collect();
                let mut cmd = n.command("nats-server")?;
                cmd.args(["-a", &ip(k), "-p", "4222", "-n", &n.name, "--cluster_name", "wgo"])
                    .args(["--cluster", &format!("nats://{}:6222", ip(k)), "--routes", &routes.join(",")])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                out.push(cmd);
            }
            System::Serf => {
                let mut cmd = n.command("serf")?;
                cmd.args(["agent", &format!("-node={}", n.name), &format!("-bind={}:7946", ip(k)), "-rpc-addr=127.0.0.1:7373"])
                    .args(["-log-level=err", "-profile=lan"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                if k > 0 {
                    cmd.args([format!("-retry-join={}", ip(0)), "-retry-interval=1s".into()]);
                }
                out.push(cmd);
            }
            System::Bird => {
                let conf = dir.join(format!("bird-{}.conf", n.name));
                let mut text = format!(
                    "log stderr {{ error, fatal }};\nrouter id {me};\nprotocol device {{\n}}\n\
                     protocol static {{\n  ipv4;\n  route 10.200.{k}.0/24 blackhole;\n}}\n",
                    me = ip(k)
                );
                for j in (0..bed.nodes.len()).filter(|&j| j != k) {
                    text += &format!(
                        "protocol bgp peer{j} {{\n  local {} as {};\n  neighbor {} as {};\n  hold time 3;\n  keepalive time 1;\n\
                         connect retry time 1;\n  ipv4 {{\n    import all;\n    export where source = RTS_STATIC;\n  }};\n}}\n",
                        ip(k),
                        65001 + k,
                        ip(j),
                        65001 + j
                    );
                }
                std::fs::write(&conf, text)?;
                let mut cmd = n.command("bird")?;
                cmd.arg("-f").arg("-c").arg(&conf).arg("-s").arg(dir.join(format!("bird-{}.ctl", n.name)));
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
                out.push(cmd);
            }
            System::Knot => {
                let run_dir = dir.join(format!("knot-{}", n.name));
                std::fs::create_dir_all(run_dir.join("db"))?;
                let peers: Vec<String> = (0..bed.nodes.len()).filter(|&j| j != k).map(&ip).collect();
                let mut text = format!(
                    "server:\n    rundir: {rd}\n    listen: {me}@53\n\
                     log:\n  - target: stderr\n    any: error\n\
                     database:\n    storage: {rd}/db\n\
                     remote:\n",
                    rd = run_dir.display(),
                    me = ip(k)
                );
                for j in 0..bed.nodes.len() {
                    text += &format!("  - id: n{j}\n    address: {}@53\n", ip(j));
                }
                text += &format!("acl:\n  - id: peers\n    address: [{}]\n    action: [transfer, notify]\n", peers.join(", "));
                text += "zone:\n  - domain: wgo.test.\n    acl: peers\n    zonefile-sync: -1\n";
                if k == 0 {
                    let zone = run_dir.join("wgo.test.zone");
                    std::fs::write(
                        &zone,
                        format!("$ORIGIN wgo.test.\n$TTL 60\n@ SOA ns1 hostmaster 1 2 1 60 1\n@ NS ns1\nns1 A {}\n", ip(0)),
                    )?;
                    let notify: Vec<String> = (1..bed.nodes.len()).map(|j| format!("n{j}")).collect();
                    text += &format!("    file: {}\n    serial-policy: increment\n    notify: [{}]\n", zone.display(), notify.join(", "));
                } else {
                    text += &format!("    file: {}/wgo.test.zone\n    master: n0\n", run_dir.display());
                }
                let conf = run_dir.join("knot.conf");
                std::fs::write(&conf, text)?;
                let mut cmd = n.command("knotd")?;
                cmd.arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null());
                out.push(cmd);
            }
            System::Chrony => {
                // -x: never set the clock (the nodes share this machine's); no command sockets.
                let mut text = format!(
                    "pidfile {}\ncmdport 0\nbindcmdaddress /\nbindaddress {}\nallow 10.99.0.0/24\n",
                    dir.join(format!("chrony-{}.pid", n.name)).display(),
                    ip(k)
                );
                if k == 0 {
                    text += "local stratum 8\n";
                } else {
                    text += &format!("server {} iburst minpoll -2 maxpoll -2\n", ip(0));
                    for j in (1..bed.nodes.len()).filter(|&j| j != k) {
                        text += &format!("peer {} minpoll -2 maxpoll -2\n", ip(j));
                    }
                }
                let conf = dir.join(format!("chrony-{}.conf", n.name));
                std::fs::write(&conf, text)?;
                let mut cmd = n.command("chronyd")?;
                cmd.args(["-x", "-d", "-u", "root", "-f"]).arg(&conf).stdout(Stdio::null()).stderr(Stdio::null());
                out.push(cmd);
            }
            System::Haproxy => {
                let mut text = "global\n  log stderr local0 err\ndefaults\n  mode http\n  timeout client 5s\n  timeout server 5s\n  timeout connect 1s\npeers wgo\n".to_string();
                for m in &bed.nodes {
                    text += &format!("  peer {} {}:10000\n", m.name, m.ipv4);
                }
                text += &format!(
                    "frontend web\n  bind {}:80\n  stick-table type ip size 1k expire 1m peers wgo store http_req_cnt\n\
                     http-request track-sc0 src\n  http-request return status 200 content-type text/plain string ok\n",
                    ip(k)
                );
                let conf = dir.join(format!("haproxy-{}.cfg", n.name));
                std::fs::write(&conf, text)?;
                let mut cmd = n.command("haproxy")?;
                cmd.args(["-db", "-L", &n.name, "-f"]).arg(&conf).stdout(Stdio::null()).stderr(Stdio::null());
                out.push(cmd);
            }
            System::Keepalived => {
                let text = format!(
                    "global_defs {{\n  router_id {name}\n  vrrp_version 3\n}}\n\
                     vrrp_instance wgo {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  priority {prio}\n\
                     advert_int 0.1\n  virtual_ipaddress {{\n    {vip}/24\n  }}\n}}\n",
                    name = n.name,
                    prio = 150 - 50 * k,
                    vip = KEEPALIVED_VIP,
                );
                let conf = dir.join(format!("keepalived-{}.conf", n.name));
                std::fs::write(&conf, text)?;
                let pid = |what: &str| dir.join(format!("keepalived-{}-{what}.pid", n.name));
                let mut cmd = n.command("keepalived")?;
                // In the foreground, VRRP only, pid files of its own (the nodes share /run).
                cmd.args(["-n", "-P", "-G", "-f"]).arg(&conf).arg("-p").arg(pid("main")).arg("-r").arg(pid("vrrp"));
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
                out.push(cmd);
            }
            _ => {}
        }
        Ok(out)
    }

    /// The clients: (node index, shell script).
    fn clients(self, bed: &Testbed, dir: &Path) -> Vec<(usize, String)> {
        let ip = |k: usize| bed.nodes[k].ipv4.to_string();
        match self {
            // Three resolver users per client host, each asking in turn with a 1 s timeout.
            System::Dnsmasq => (1..bed.nodes.len())
                .flat_map(|k| {
                    (0..3).map(move |user| (k, user))
                })
                .map(|(k, user)| {
                    (
                        k,
                        format!(
                            "i=0; while :; do i=$((i+1)); dig @{} +tries=1 +time=1 +short q$i.u{user}.{}.wgo.test >/dev/null; sleep 0.05; done",
                            ip(0),
                            bed.nodes[k].name
                        ),
                    )
                })
                .collect(),
            System::Redis => {
                vec![(3, format!("i=0; while :; do i=$((i+1)); redis-cli -h {} set k$i v$i >/dev/null; sleep 0.02; done", ip(0)))]
            }
            System::Sentinel => {
                // Every tenth write asks a sentinel (each in turn) where the master is.
                vec![(
                    3,
                    format!(
                        "i=0; m={m}; while :; do i=$((i+1)); if [ $((i%10)) -eq 0 ]; then \
                         s=$(redis-cli -h 10.99.0.$((i/10%3+1)) -p 26379 sentinel get-master-addr-by-name wgo | head -1); \
                         [ -n \"$s\" ] && m=$s; fi; redis-cli -h $m set k$i v$i >/dev/null; sleep 0.02; done",
                        m = ip(0)
                    ),
                )]
            }
            System::Nats => (0..bed.nodes.len())
                .flat_map(|k| {
                    let me = ip(k);
                    let name = bed.nodes[k].name.clone();
                    [
                        (
                            k,
                            format!(
                                "exec 3<>/dev/tcp/{me}/4222; printf 'CONNECT {{\"verbose\":false}}\\r\\n' >&3; \
                                 i=0; while :; do i=$((i+1)); printf 'PUB t.{name} %d\\r\\n%s\\r\\n' ${{#i}} $i >&3; sleep 0.05; done"
                            ),
                        ),
                        (k, format!("exec 3<>/dev/tcp/{me}/4222; printf 'CONNECT {{\"verbose\":false}}\\r\\nSUB t.> 1\\r\\n' >&3; cat <&3")),
                    ]
                })
                .collect(),
            System::Knot => {
                let sock = |k: usize| format!("{}/knot-{}/knot.sock", dir.display(), bed.nodes[k].name);
                vec![(
                    0,
                    format!(
                        "i=0; while :; do i=$((i+1)); knotc -s {s} zone-begin wgo.test. >/dev/null && \
                         knotc -s {s} zone-set wgo.test. r$i 60 A 10.9.9.9 >/dev/null && knotc -s {s} zone-commit wgo.test. >/dev/null; \
                         sleep 0.5; done",
                        s = sock(0)
                    ),
                )]
            }
            System::Haproxy => (0..bed.nodes.len())
                .map(|k| {
                    let next = ip((k + 1) % bed.nodes.len());
                    (k, format!("while :; do curl -s -m 1 -o /dev/null http://{next}/; sleep 0.05; done"))
                })
                .collect(),
            System::Etcd | System::Serf | System::Bird | System::Chrony | System::Keepalived => Vec::new(),
        }
    }

    /// Waits until node1's servers serve, before the others start: a Knot secondary that
    /// finds no primary at its start retries the transfer only after tens of seconds.
    fn first_ready(self, bed: &Testbed) -> anyhow::Result<()> {
        match self {
            System::Knot => wait_for(bed, "the primary to serve the zone", |bed| {
                let n = &bed.nodes[0];
                let out = n.command_in("kdig", None)?.args([&format!("@{}", n.ipv4), "+short", "+time=1", "wgo.test.", "SOA"]).output()?;
                Ok(!out.stdout.is_empty())
            }),
            _ => Ok(()),
        }
    }

    /// Waits until the system serves (or fails with what it said).
    fn ready(self, bed: &Testbed, dir: &Path) -> anyhow::Result<()> {
        match self {
            System::Etcd => etcd_leader(bed).map(drop),
            System::Serf => wait_for(bed, "every serf agent a member", |bed| {
                let out = run(bed.nodes[0].command_in("serf", None)?.args(["members", "-rpc-addr=127.0.0.1:7373", "-status=alive"]))?;
                Ok(String::from_utf8_lossy(&out.stdout).lines().count() == bed.nodes.len())
            }),
            System::Bird => wait_for(bed, "every BGP session established", |bed| {
                let mut up = 0;
                for n in &bed.nodes {
                    let sock = dir.join(format!("bird-{}.ctl", n.name));
                    let out = n.command_in("birdc", None)?.arg("-s").arg(&sock).args(["show", "protocols"]).output()?;
                    up += String::from_utf8_lossy(&out.stdout).matches("Established").count();
                }
                Ok(up == bed.nodes.len() * (bed.nodes.len() - 1))
            }),
            System::Knot => wait_for(bed, "the secondaries to load the zone", |bed| {
                let mut loaded = 0;
                for n in &bed.nodes[1..] {
                    let out =
                        n.command_in("kdig", None)?.args([&format!("@{}", n.ipv4), "+short", "+time=1", "wgo.test.", "SOA"]).output()?;
                    loaded += usize::from(!out.stdout.is_empty());
                }
                Ok(loaded == bed.nodes.len() - 1)
            }),
            System::Keepalived => wait_for(bed, "node1 to hold the virtual address", |bed| {
                let out = run(bed.nodes[0].command_in("ip", None)?.args(["-4", "addr", "show", "dev", "eth0"]))?;
                Ok(String::from_utf8_lossy(&out.stdout).contains(&format!("{KEEPALIVED_VIP}/")))
            }),
            System::Dnsmasq | System::Redis | System::Sentinel | System::Nats | System::Chrony | System::Haproxy => Ok(()),
        }
    }

    /// The nodes faults are injected at, as indices: the node to cut off, a link (from,
    /// to) to make lossy, the node to stall or crash, and the node whose every link is
    /// made lossy. For etcd they follow its leader, found at run time.
    fn targets(self, bed: &Testbed) -> anyhow::Result<Targets> {
        Ok(match self {
            System::Dnsmasq => Targets { cut: 2, link: (1, 0), stall: 0, hub: 0 },
            System::Redis | System::Sentinel => Targets { cut: 2, link: (0, 1), stall: 0, hub: 0 },
            System::Nats | System::Bird => Targets { cut: 2, link: (0, 1), stall: 0, hub: 0 },
            System::Serf => Targets { cut: 4, link: (0, 1), stall: 2, hub: 0 },
            System::Knot | System::Chrony | System::Haproxy | System::Keepalived => Targets { cut: 2, link: (0, 1), stall: 0, hub: 0 },
            System::Etcd => {
                let leader = etcd_leader(bed)?;
                let l = bed.nodes.iter().position(|n| n.name == leader).context("the leader is a node")?;
                let followers: Vec<usize> = (0..bed.nodes.len()).filter(|k| *k != l).collect();
                Targets { cut: followers[1], link: (l, followers[0]), stall: followers[1], hub: l }
            }
        })
    }

    fn cleanup(self) {
        if self == System::Etcd {
            for e in std::fs::read_dir("/dev/shm").into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().starts_with(&format!("wgo-etcd-{}-", std::process::id())) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

/// The address keepalived's master holds (outside every node's own).
const KEEPALIVED_VIP: &str = "10.99.0.200";

/// Polls `ok` until it holds, for up to 20 s.
fn wait_for(bed: &Testbed, what: &str, ok: impl Fn(&Testbed) -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let last = ok(bed);
        if matches!(last, Ok(true)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("waited 20 s for {what}: {last:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Targets {
    cut: usize,
    link: (usize, usize),
    stall: usize,
    hub: usize,
}

fn etcd_dir(node: &str) -> String {
    format!("/dev/shm/wgo-etcd-{}-{node}", std::process::id())
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

/// A fault as an operator meets it; each is its own scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Healthy,
    /// One node cut off at the switch, both directions (1 | rest).
    CutAtSwitch,
    /// One node cut off by every node's own firewall, on its INPUT hook.
    FirewallInput,
    /// The same on the OUTPUT hook: the senders drop (and their sends fail).
    FirewallOutput,
    /// What one node sends is dropped at the switch; what it receives is not.
    OneWay,
    /// Two halves at the switch (2 | 3 of five, 2 | 2 of four); four nodes or more.
    Halves,
    /// Two nodes each alone and the rest together at the switch (1 | 1 | 3 of five).
    TwoAlone,
    /// This percentage of one direction of one link dropped at the switch.
    LossLink(u8),
    /// This percentage of everything one node sends or receives dropped at the switch.
    LossNode(u8),
    /// The node's server process stopped (SIGSTOP) for this many ms.
    Stop(u32),
    /// The node's whole cgroup frozen (cgroup.freeze) for this many ms.
    Freeze(u32),
    /// The server process killed (SIGKILL), then started again.
    Crash,
}

impl Scenario {
    /// The whole matrix (`cargo xtask corpus`). No clock step: the nodes share this
    /// machine's clock, and stepping it would step every other process here too.
    pub const ALL: &[Scenario] = &[
        Scenario::Healthy,
        Scenario::CutAtSwitch,
        Scenario::FirewallInput,
        Scenario::FirewallOutput,
        Scenario::OneWay,
        Scenario::Halves,
        Scenario::TwoAlone,
        Scenario::LossLink(5),
        Scenario::LossLink(20),
        Scenario::LossLink(50),
        Scenario::LossNode(5),
        Scenario::LossNode(20),
        Scenario::LossNode(50),
        Scenario::Stop(500),
        Scenario::Stop(3000),
        Scenario::Freeze(500),
        Scenario::Freeze(3000),
        Scenario::Crash,
    ];

    /// What CI runs of each program: one scenario of each fault kind (of the losses, the
    /// one most messages show: a detector that misses 5% is measured by the matrix).
    pub const CI: &[Scenario] = &[Scenario::Healthy, Scenario::FirewallInput, Scenario::LossLink(50), Scenario::Stop(3000)];

    pub fn name(self) -> String {
        match self {
            Scenario::Healthy => "healthy".into(),
            Scenario::CutAtSwitch => "cut-at-switch".into(),
            Scenario::FirewallInput => "firewall-input".into(),
            Scenario::FirewallOutput => "firewall-output".into(),
            Scenario::OneWay => "one-way-cut".into(),
            Scenario::Halves => "halves".into(),
            Scenario::TwoAlone => "two-alone".into(),
            // No "%": Knot reads it in paths (the run's directory is named after its scenario).
            Scenario::LossLink(p) => format!("loss{p}-link"),
            Scenario::LossNode(p) => format!("loss{p}-node"),
            Scenario::Stop(ms) => format!("sigstop-{ms}ms"),
            Scenario::Freeze(ms) => format!("freeze-{ms}ms"),
            Scenario::Crash => "crash".into(),
        }
    }

    /// Whether it can be made with `nodes` nodes.
    pub fn applies(self, nodes: usize) -> bool {
        match self {
            Scenario::Halves | Scenario::TwoAlone => nodes >= 4,
            _ => true,
        }
    }
}

/// What was injected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    Healthy,
    /// The nodes split into these islands (each island's names sorted).
    Partition {
        islands: Vec<Vec<String>>,
    },
    /// These directed links lost messages; `used` are those of them the program sends on
    /// (a finding must name them all); `node`: every link of this node.
    Lossy {
        links: Vec<(String, String)>,
        used: Vec<(String, String)>,
        node: Option<String>,
    },
    /// This node stopped answering (stopped, frozen, or crashed and restarted).
    Stall {
        node: String,
    },
}

/// What happened, on this machine's clock (the nodes share it).
#[derive(Clone, Debug)]
pub struct Truth {
    pub fault: Fault,
    pub span_ns: (i64, i64),
}

pub struct Run {
    pub system: System,
    pub scenario: Scenario,
    pub seed: u64,
    pub truth: Truth,
    /// `wgo report`'s JSON findings.
    pub findings: Vec<serde_json::Value>,
    pub summary: String,
}

fn now_ns() -> i64 {
    wgo::clock::wall_ns() as i64
}

/// The corpus's seed: `WGO_CORPUS_SEED`, or one from the clock (printed by the callers).
pub fn seed() -> u64 {
    match std::env::var("WGO_CORPUS_SEED") {
        Ok(s) => s.trim().parse().unwrap_or_else(|_| panic!("WGO_CORPUS_SEED={s:?} is not a number")),
        Err(_) => wgo::clock::wall_ns() % 1_000_000,
    }
}

/// splitmix64: enough randomness for fault times, and the same from the same seed.
struct Rng(u64);

impl Rng {
    /// One stream per (seed, system, scenario), so a scenario repeats when run alone.
    fn new(seed: u64, system: System, scenario: Scenario) -> Rng {
        let mut r = Rng(seed);
        for b in format!("{system:?}/{}", scenario.name()).bytes() {
            r.0 = r.0.wrapping_mul(31).wrapping_add(u64::from(b));
        }
        r
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// A duration between `lo` and `hi` ms.
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }
}

struct Proc {
    node: usize,
    /// The node's main server process (stalls and crashes hit it).
    main: bool,
    guard: ChildGuard,
}

fn start(system: System, bed: &Testbed, dir: &Path) -> anyhow::Result<Vec<Proc>> {
    let mut procs = Vec::new();
    for k in 0..bed.nodes.len() {
        for (i, mut cmd) in system.servers(bed, dir, k)?.into_iter().enumerate() {
            procs.push(Proc { node: k, main: i == 0, guard: bed.nodes[k].spawn(&mut cmd)? });
        }
        if k == 0 {
            system.first_ready(bed)?;
        }
    }
    system.ready(bed, dir)?;
    std::thread::sleep(Duration::from_millis(300));
    for (k, script) in system.clients(bed, dir) {
        let n = &bed.nodes[k];
        let mut cmd = n.command("bash")?;
        cmd.args(["-c", &script]).stdout(Stdio::null()).stderr(Stdio::null());
        procs.push(Proc { node: k, main: false, guard: n.spawn(&mut cmd)? });
    }
    Ok(procs)
}

/// Cuts `islands` (node indices) from each other at the switch; `one_way`: only what the
/// first island sends.
fn switch_cut(bed: &Testbed, islands: &[Vec<usize>], one_way: bool) -> anyhow::Result<()> {
    let ips = |ks: &[usize]| ks.iter().map(|&k| bed.nodes[k].ipv4).collect::<Vec<Ipv4Addr>>();
    let mut rules = Vec::new();
    for (i, island) in islands.iter().enumerate() {
        if one_way && i > 0 {
            break;
        }
        let others: Vec<usize> = islands.iter().enumerate().filter(|(j, _)| *j != i).flat_map(|(_, o)| o.clone()).collect();
        rules.push(SwitchRule { from: ips(island), to: ips(&others), percent: None });
    }
    bed.switch_drop("wgo_cut", Some(&rules))
}

/// `pid` and its descendants, parents first (from /proc's `children` lists).
fn process_tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut k = 0;
    while k < out.len() {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", out[k])).into_iter().flatten().flatten();
        for task in tasks {
            let kids = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            out.extend(kids.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
        k += 1;
    }
    out
}

fn signal_all(pids: &[u32], sig: i32) {
    for &p in pids {
        // SAFETY: kill has no memory effects; these are the test's own processes.
        unsafe { libc::kill(p as i32, sig) };
    }
}

/// Injects `scenario` on the running system and undoes it; returns the truth.
fn inject(system: System, scenario: Scenario, bed: &Testbed, dir: &Path, procs: &mut [Proc], rng: &mut Rng) -> anyhow::Result<Truth> {
    let n = bed.nodes.len();
    let t = system.targets(bed)?;
    let name = |k: usize| bed.nodes[k].name.clone();
    let names = |ks: &[usize]| {
        let mut v: Vec<String> = ks.iter().map(|&k| name(k)).collect();
        v.sort();
        v
    };
    let rest = |out: &[usize]| (0..n).filter(|k| !out.contains(k)).collect::<Vec<usize>>();
    let held = rng.ms(2500, 4000);
    let one_vs_rest = vec![vec![t.cut], rest(&[t.cut])];
    let partition = |islands: &[Vec<usize>]| Fault::Partition { islands: islands.iter().map(|i| names(i)).collect() };
    let main = |procs: &[Proc], k: usize| procs.iter().position(|p| p.node == k && p.main).context("the node's server process");
    let start = now_ns();
    let fault = match scenario {
        Scenario::Healthy => {
            std::thread::sleep(held);
            Fault::Healthy
        }
        Scenario::CutAtSwitch | Scenario::OneWay | Scenario::Halves | Scenario::TwoAlone => {
            let islands = match scenario {
                Scenario::Halves => {
                    let mut first = vec![t.cut];
                    first.extend(rest(&[t.cut]).into_iter().take(n / 2 - 1));
                    let second = rest(&first);
                    vec![first, second]
                }
                Scenario::TwoAlone => {
                    let other = rest(&[t.cut])[0];
                    vec![vec![t.cut], vec![other], rest(&[t.cut, other])]
                }
                _ => one_vs_rest.clone(),
            };
            switch_cut(bed, &islands, scenario == Scenario::OneWay)?;
            std::thread::sleep(held);
            bed.switch_drop("wgo_cut", None)?;
            partition(&islands)
        }
        Scenario::FirewallInput | Scenario::FirewallOutput => {
            let hook = if scenario == Scenario::FirewallInput { Hook::Input } else { Hook::Output };
            let other_side = |k: usize| -> Vec<Ipv4Addr> {
                let side: Vec<usize> = if k == t.cut { rest(&[t.cut]) } else { vec![t.cut] };
                side.iter().map(|&j| bed.nodes[j].ipv4).collect()
            };
            for k in 0..n {
                bed.nodes[k].firewall(hook, Some(&other_side(k)))?;
            }
            std::thread::sleep(held);
            for node in &bed.nodes {
                node.firewall(hook, None)?;
            }
            partition(&one_vs_rest)
        }
        Scenario::LossLink(p) | Scenario::LossNode(p) => {
            // A lossy link runs longer: a client that waits out a timeout per loss loses few messages a second.
            let held = rng.ms(5000, 7000);
            let ip = |k: usize| bed.nodes[k].ipv4;
            let (rules, links, node) = match scenario {
                Scenario::LossLink(_) => {
                    (vec![SwitchRule { from: vec![ip(t.link.0)], to: vec![ip(t.link.1)], percent: Some(p) }], vec![t.link], None)
                }
                _ => {
                    let others = rest(&[t.hub]);
                    let rules = vec![
                        SwitchRule { from: vec![ip(t.hub)], to: others.iter().map(|&k| ip(k)).collect(), percent: Some(p) },
                        SwitchRule { from: others.iter().map(|&k| ip(k)).collect(), to: vec![ip(t.hub)], percent: Some(p) },
                    ];
                    let links = others.iter().flat_map(|&k| [(t.hub, k), (k, t.hub)]).collect();
                    (rules, links, Some(name(t.hub)))
                }
            };
            let used: Vec<(usize, usize)> = links.iter().copied().filter(|&(a, b)| system.talks(a, b)).collect();
            bed.switch_drop("wgo_lossy", Some(&rules))?;
            std::thread::sleep(held);
            bed.switch_drop("wgo_lossy", None)?;
            let named = |l: &[(usize, usize)]| l.iter().map(|&(a, b)| (name(a), name(b))).collect();
            Fault::Lossy { links: named(&links), used: named(&used), node }
        }
        Scenario::Stop(ms) => {
            let i = main(procs, t.stall)?;
            // The server and its children: keepalived's VRRP runs in a child of the process started.
            let pids = process_tree(procs[i].guard.child().id());
            signal_all(&pids, libc::SIGSTOP);
            std::thread::sleep(Duration::from_millis(ms.into()));
            signal_all(&pids, libc::SIGCONT);
            Fault::Stall { node: name(t.stall) }
        }
        Scenario::Freeze(ms) => {
            let node = &bed.nodes[t.stall];
            node.freeze(true)?;
            std::thread::sleep(Duration::from_millis(ms.into()));
            node.freeze(false)?;
            Fault::Stall { node: name(t.stall) }
        }
        Scenario::Crash => {
            let i = main(procs, t.stall)?;
            // The whole tree, as a stop: keepalived's VRRP child must not outlive it.
            signal_all(&process_tree(procs[i].guard.child().id()), libc::SIGKILL);
            let _ = procs[i].guard.child().wait();
            std::thread::sleep(rng.ms(1500, 3000));
            let mut cmd = system.servers(bed, dir, t.stall)?.into_iter().next().context("a server to restart")?;
            procs[i].guard = bed.nodes[t.stall].spawn(&mut cmd)?;
            Fault::Stall { node: name(t.stall) }
        }
    };
    Ok(Truth { fault, span_ns: (start, now_ns()) })
}

/// Runs `system` with `scenario` while every node is recorded, then reports.
pub fn run_scenario(system: System, scenario: Scenario, seed: u64, dir: &Path) -> anyhow::Result<Run> {
    if !scenario.applies(system.nodes()) {
        bail!("{} needs more than {} nodes", scenario.name(), system.nodes());
    }
    let mut rng = Rng::new(seed, system, scenario);
    let bed = Testbed::new(system.nodes())?;
    let dumps = dir.join("dumps");
    std::fs::create_dir_all(&dumps)?;
    let mut result: anyhow::Result<Truth> = Err(anyhow::anyhow!("not run"));
    // The programs outlive the recording: their shutdown is no part of the story.
    let mut running = Vec::new();
    record_all(&bed, &dumps, || {
        result = (|| {
            let mut procs = start(system, &bed, dir)?;
            std::thread::sleep(rng.ms(2500, 4000));
            let truth = inject(system, scenario, &bed, dir, &mut procs, &mut rng);
            std::thread::sleep(rng.ms(1500, 2500));
            running = procs;
            truth
        })();
    });
    drop(running);
    drop(bed);
    system.cleanup();
    let truth = result?;
    std::fs::write(dir.join("truth.json"), truth_json(system, scenario, seed, &truth).to_string())?;
    report(system, scenario, seed, truth, dir, &wgo())
}

/// Reports on a run's dumps (in `dir/dumps`) with the `wgo` at `bin`, and checks that every
/// node recorded traffic.
fn report(system: System, scenario: Scenario, seed: u64, truth: Truth, dir: &Path, bin: &Path) -> anyhow::Result<Run> {
    let dumps = dir.join("dumps");
    let json = dir.join("report.json");
    let out = run(Command::new(bin).arg("report").arg(&dumps).arg("--json").arg(&json).env("WGO_LOG", "warn"))?;
    if !out.status.success() {
        bail!("wgo report failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)?;
    // A program that did not start would be a healthy run that proves nothing.
    for n in v["nodes"].as_array().into_iter().flatten() {
        let events = n["events"].as_u64().unwrap_or(0);
        if events < 20 {
            bail!("{} recorded only {events} events: did {system:?} run there? (the dumps are in {})", n["name"], dumps.display());
        }
    }
    let findings = v["findings"].as_array().cloned().unwrap_or_default();
    Ok(Run { system, scenario, seed, truth, findings, summary: String::from_utf8_lossy(&out.stdout).into_owned() })
}

fn truth_json(system: System, scenario: Scenario, seed: u64, t: &Truth) -> serde_json::Value {
    let fault = match &t.fault {
        Fault::Healthy => serde_json::json!({"kind": "healthy"}),
        Fault::Partition { islands } => serde_json::json!({"kind": "partition", "islands": islands}),
        Fault::Lossy { links, used, node } => serde_json::json!({"kind": "lossy", "links": links, "used": used, "node": node}),
        Fault::Stall { node } => serde_json::json!({"kind": "stall", "node": node}),
    };
    serde_json::json!({"system": format!("{system:?}"), "scenario": scenario.name(), "seed": seed, "fault": fault, "span_ns": [t.span_ns.0, t.span_ns.1]})
}

/// Judges a kept run again (`dir` as [`run_scenario`] left it: the dumps and `truth.json`)
/// with the `wgo` at `bin`: the same recordings, another analysis.
pub fn rejudge(dir: &Path, bin: &Path) -> anyhow::Result<Run> {
    let path = dir.join("truth.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?)?;
    let bad = || anyhow::anyhow!("{}: not a truth this corpus wrote", path.display());
    let system = *System::ALL.iter().find(|s| v["system"] == format!("{s:?}")).ok_or_else(bad)?;
    let scenario = *Scenario::ALL.iter().find(|s| v["scenario"] == s.name()).ok_or_else(bad)?;
    let pairs = |x: &serde_json::Value| -> Vec<(String, String)> {
        x.as_array().into_iter().flatten().map(strings).filter(|p| p.len() == 2).map(|p| (p[0].clone(), p[1].clone())).collect()
    };
    let f = &v["fault"];
    let fault = match f["kind"].as_str() {
        Some("healthy") => Fault::Healthy,
        Some("partition") => Fault::Partition { islands: f["islands"].as_array().into_iter().flatten().map(strings).collect() },
        Some("lossy") => Fault::Lossy { links: pairs(&f["links"]), used: pairs(&f["used"]), node: f["node"].as_str().map(String::from) },
        Some("stall") => Fault::Stall { node: f["node"].as_str().ok_or_else(bad)?.to_string() },
        _ => return Err(bad()),
    };
    let span_ns = (v["span_ns"][0].as_i64().ok_or_else(bad)?, v["span_ns"][1].as_i64().ok_or_else(bad)?);
    report(system, scenario, v["seed"].as_u64().ok_or_else(bad)?, Truth { fault, span_ns }, dir, bin)
}

/// A clock step added to a run after it was recorded: the nodes share this machine's clock,
/// so none can step while the program runs. From `at_ns` on (`node`'s clock) every time
/// reads `size_ns` more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub node: String,
    pub at_ns: i64,
    pub size_ns: i64,
}

/// The run's dumps again with one node's clock stepped, chosen from the seed (the node; a
/// time between a fifth and four fifths of its packets; 0.2 to 3 s forward or back), in
/// `dir/stepped`, reported on by the `wgo` at `bin`: the same fault must be found as in
/// the recording as made, and the step named ([`judge_step`]).
pub fn stepped(r: &Run, dir: &Path, bin: &Path) -> anyhow::Result<(Run, Step)> {
    let mut rng = Rng::new(r.seed ^ 0x57e9, r.system, r.scenario);
    let node = format!("node{}", 1 + rng.next() % r.system.nodes() as u64);
    let (from, to) = (dir.join("dumps"), dir.join("stepped/dumps"));
    std::fs::create_dir_all(&to)?;
    let times = crate::edit::packet_times(&from.join(format!("{node}.pcapng")))?;
    if times.len() < 10 {
        bail!("{node} recorded only {} packets: nothing to step", times.len());
    }
    let at_ns = times[times.len() / 5 + (rng.next() as usize) % (times.len() * 3 / 5)];
    let size_ns = rng.ms(200, 3000).as_nanos() as i64 * if rng.next().is_multiple_of(2) { 1 } else { -1 };
    for e in std::fs::read_dir(&from)? {
        let path = e?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(String::from) else { continue };
        if name == format!("{node}.pcapng") {
            crate::edit::edit_dump(&path, &to.join(&name), crate::edit::Edit { step: Some((at_ns, size_ns)), trigger_late_ns: 0 })?;
        } else if name.ends_with(".pcapng") {
            std::fs::copy(&path, to.join(&name))?;
        }
    }
    let run = report(r.system, r.scenario, r.seed, r.truth.clone(), &dir.join("stepped"), bin)?;
    Ok((run, Step { node, at_ns, size_ns }))
}

/// How a stepped run's report saw its step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepJudged {
    /// 1 when a step of the stepped node was found, sized within 2 ms or 2%.
    pub found: usize,
    /// Steps found anywhere else, or sized wrong.
    pub false_steps: usize,
    /// 1 when the step was not found.
    pub missed: usize,
}

/// The clock steps a report (`dir/report.json`) found, on every node.
fn steps_found(dir: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let path = dir.join("report.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?)?;
    Ok(v["nodes"].as_array().into_iter().flatten().flat_map(|n| n["clock_steps"].as_array().cloned().unwrap_or_default()).collect())
}

/// Judges the steps of a run: none in the recording as made (the nodes share one clock),
/// the added one in its stepped copy (`dir/stepped/report.json`).
pub fn judge_step(dir: &Path, step: &Step) -> anyhow::Result<StepJudged> {
    let unstepped = steps_found(dir)?.len();
    let steps = steps_found(&dir.join("stepped"))?;
    let mut j = step_verdict(&steps.iter().collect::<Vec<_>>(), step);
    j.false_steps += unstepped;
    Ok(j)
}

fn step_verdict(steps: &[&serde_json::Value], step: &Step) -> StepJudged {
    let right = |s: &&&serde_json::Value| {
        let size = s["size_ns"].as_i64().unwrap_or(0);
        s["node"] == step.node.as_str() && (size - step.size_ns).abs() <= (step.size_ns.abs() / 50).max(2_000_000)
    };
    let good = steps.iter().filter(right).count().min(1);
    StepJudged { found: good, false_steps: steps.len() - good, missed: 1 - good }
}

/// The structural finding kinds a fault is judged on.
pub const KINDS: &[&str] = &["partition", "lossy_link", "stalled_node"];

/// One finding kind's judgement of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Judged {
    pub kind: &'static str,
    /// 1 when a finding of this kind names the injected fault.
    pub found: usize,
    /// Findings of this kind that name no injected fault.
    pub false_claims: usize,
    /// 1 when the fault was of this kind and no finding named it.
    pub missed: usize,
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|n| n.as_str()).map(String::from).collect()
}

/// A finding's span, when it has one.
fn span(f: &serde_json::Value) -> Option<(i64, i64)> {
    Some((f["span_ns"][0].as_i64()?, f["span_ns"][1].as_i64()?))
}

/// Whether a partition finding names the injected islands. With `islands` in the JSON: each
/// of its islands lies within one injected island (a pair the traffic never joined may stay
/// apart: unknown is no evidence either way), and every injected island has a node in it.
/// Without: its nodes touch every injected island.
fn names_islands(f: &serde_json::Value, truth: &[Vec<String>]) -> bool {
    let side = |n: &str| truth.iter().position(|i| i.iter().any(|m| m == n));
    let touched = |nodes: &[String]| (0..truth.len()).all(|s| nodes.iter().any(|n| side(n) == Some(s)));
    match f["islands"].as_array().filter(|i| !i.is_empty()) {
        Some(islands) => {
            let islands: Vec<Vec<String>> = islands.iter().map(strings).collect();
            let within = islands.iter().all(|i| i.iter().map(|n| side(n)).collect::<std::collections::BTreeSet<_>>().len() == 1);
            within && touched(&islands.concat())
        }
        None => touched(&strings(&f["nodes"])),
    }
}

/// Per finding kind, whether the run's findings name the injected fault and how many claim
/// something else. A partition or stall is named by a finding whose span overlaps the
/// fault's (a detector may see a part of it: the judge asks whether it was found, not how
/// much of it) with the right islands or node; a lossy link by findings whose links are
/// all injected ones and, together, cover every injected link.
pub fn judge(r: &Run) -> Vec<Judged> {
    let (t0, t1) = r.truth.span_ns;
    let overlaps = |f: &serde_json::Value| span(f).is_some_and(|(a, b)| a <= t1 && b >= t0);
    KINDS
        .iter()
        .map(|&kind| {
            let found: Vec<&serde_json::Value> = r.findings.iter().filter(|f| f["kind"] == kind).collect();
            let (good, named, expected) = match (&r.truth.fault, kind) {
                (Fault::Partition { islands }, "partition") => {
                    let good = found.iter().filter(|f| overlaps(f) && names_islands(f, islands)).count();
                    (good, good > 0, true)
                }
                (Fault::Lossy { links, used, node }, "lossy_link") => {
                    let injected = |l: &[String]| links.iter().any(|(a, b)| l.len() == 2 && *a == l[0] && *b == l[1]);
                    let good: Vec<&&serde_json::Value> = found
                        .iter()
                        .filter(|f| {
                            let ls: Vec<Vec<String>> = f["links"].as_array().into_iter().flatten().map(strings).collect();
                            !ls.is_empty() && ls.iter().all(|l| injected(l))
                        })
                        .collect();
                    // "All of n1's links" names every one of them.
                    let whole = node.as_ref().is_some_and(|n| good.iter().any(|f| f["all_links_of"].as_str() == Some(n)));
                    let named = |a: &str, b: &str| {
                        good.iter().any(|f| f["links"].as_array().into_iter().flatten().map(strings).any(|l| l == [a, b]))
                    };
                    (good.len(), whole || used.iter().all(|(a, b)| named(a, b)), true)
                }
                (Fault::Stall { node }, "stalled_node") => {
                    let good = found.iter().filter(|f| overlaps(f) && strings(&f["nodes"]) == [node.clone()]).count();
                    (good, good > 0, true)
                }
                _ => (0, false, false),
            };
            Judged { kind, found: usize::from(named), false_claims: found.len() - good, missed: usize::from(expected && !named) }
        })
        .collect()
}

/// One run as a line: the system, scenario, seed, truth and verdicts.
pub fn line(r: &Run, judged: &[Judged]) -> String {
    let verdict: Vec<String> = judged
        .iter()
        .filter(|j| j.found + j.false_claims + j.missed > 0)
        .map(|j| match (j.found, j.missed) {
            (1, _) => format!("{} found, {} false", j.kind, j.false_claims),
            (_, 1) => format!("{} MISSED, {} false", j.kind, j.false_claims),
            _ => format!("{} {} false", j.kind, j.false_claims),
        })
        .collect();
    let healthy = match r.truth.fault {
        Fault::Healthy => format!(", {} findings", r.findings.len()),
        _ => String::new(),
    };
    format!(
        "{:?} {} (seed {}): {:?}{healthy}: {}",
        r.system,
        r.scenario.name(),
        r.seed,
        r.truth.fault,
        if verdict.is_empty() { "ok".into() } else { verdict.join("; ") }
    )
}

/// Sums of many runs of one half: per kind (found, false, missed), and the findings of
/// every kind in healthy runs.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub kinds: Vec<Judged>,
    pub healthy_runs: usize,
    pub healthy_findings: usize,
}

impl Tally {
    pub fn add(&mut self, r: &Run, judged: &[Judged]) {
        if self.kinds.is_empty() {
            self.kinds = KINDS.iter().map(|&kind| Judged { kind, ..Judged::default() }).collect();
        }
        for (t, j) in self.kinds.iter_mut().zip(judged) {
            t.found += j.found;
            t.false_claims += j.false_claims;
            t.missed += j.missed;
        }
        if r.truth.fault == Fault::Healthy {
            self.healthy_runs += 1;
            self.healthy_findings += r.findings.len();
        }
    }

    /// Adds another tally's sums.
    pub fn merge(&mut self, other: &Tally) {
        if self.kinds.is_empty() {
            self.kinds = KINDS.iter().map(|&kind| Judged { kind, ..Judged::default() }).collect();
        }
        for (a, b) in self.kinds.iter_mut().zip(&other.kinds) {
            a.found += b.found;
            a.false_claims += b.false_claims;
            a.missed += b.missed;
        }
        self.healthy_runs += other.healthy_runs;
        self.healthy_findings += other.healthy_findings;
    }

    /// Markdown rows: `| label | kind | found | false | missed | precision | recall |`, and
    /// the healthy runs' findings.
    pub fn rows(&self, label: &str) -> String {
        let ratio = |a: usize, b: usize| if a + b > 0 { format!("{:.2}", a as f64 / (a + b) as f64) } else { "–".into() };
        let zero: Vec<Judged> = KINDS.iter().map(|&kind| Judged { kind, ..Judged::default() }).collect();
        let kinds = if self.kinds.is_empty() { &zero } else { &self.kinds };
        let mut out = String::new();
        for (i, j) in kinds.iter().enumerate() {
            out += &format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                if i == 0 { label } else { "" },
                j.kind,
                j.found,
                j.false_claims,
                j.missed,
                ratio(j.found, j.false_claims),
                ratio(j.found, j.missed)
            );
        }
        out += &format!("| | findings in {} healthy runs | {} | | | | |\n", self.healthy_runs, self.healthy_findings);
        out
    }
}

/// The table's head.
pub const TABLE_HEAD: &str = "| programs | kind | found | false | missed | precision | recall |\n|---|---|---|---|---|---|---|\n";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const S: i64 = 1_000_000_000;

    fn run(fault: Fault, findings: Vec<serde_json::Value>) -> Run {
        Run {
            system: System::Etcd,
            scenario: Scenario::Healthy,
            seed: 0,
            truth: Truth { fault, span_ns: (10 * S, 13 * S) },
            findings,
            summary: String::new(),
        }
    }

    fn of<'a>(j: &'a [Judged], kind: &str) -> &'a Judged {
        j.iter().find(|j| j.kind == kind).expect("judged")
    }

    fn islands(v: &[&[&str]]) -> Vec<Vec<String>> {
        v.iter().map(|i| i.iter().map(|n| n.to_string()).collect()).collect()
    }

    #[test]
    fn a_partition_seen_for_part_of_the_cut_is_found() {
        // Issue 26: found for 1.5 s of a 3 s cut, it was judged missed.
        let truth = Fault::Partition { islands: islands(&[&["node3"], &["node1", "node2"]]) };
        let f = json!({"kind": "partition", "nodes": ["node1", "node2", "node3"], "islands": [["node1", "node2"], ["node3"]],
            "links": [], "span_ns": [11 * S + S / 2, 13 * S]});
        let j = judge(&run(truth.clone(), vec![f]));
        assert_eq!(*of(&j, "partition"), Judged { kind: "partition", found: 1, false_claims: 0, missed: 0 });
        // After the heal: no overlap, a false claim and a miss.
        let late = json!({"kind": "partition", "nodes": ["node1", "node2", "node3"], "islands": [["node1", "node2"], ["node3"]],
            "links": [], "span_ns": [14 * S, 15 * S]});
        let j = judge(&run(truth, vec![late]));
        assert_eq!(*of(&j, "partition"), Judged { kind: "partition", found: 0, false_claims: 1, missed: 1 });
    }

    #[test]
    fn a_partition_is_judged_by_its_islands() {
        let truth = Fault::Partition { islands: islands(&[&["node1"], &["node2"], &["node3", "node4", "node5"]]) };
        let p =
            |isl: serde_json::Value| json!({"kind": "partition", "nodes": [], "islands": isl, "links": [], "span_ns": [10 * S, 12 * S]});
        // Islands the traffic never joined may stay apart.
        let split = p(json!([["node1"], ["node2"], ["node3", "node4"], ["node5"]]));
        assert_eq!(of(&judge(&run(truth.clone(), vec![split])), "partition").found, 1);
        // Mixing two injected islands is wrong.
        let mixed = p(json!([["node1", "node2"], ["node3", "node4", "node5"]]));
        assert_eq!(of(&judge(&run(truth.clone(), vec![mixed])), "partition").false_claims, 1);
        // Leaving an injected island out is wrong.
        let partial = p(json!([["node1"], ["node3", "node4", "node5"]]));
        assert_eq!(of(&judge(&run(truth.clone(), vec![partial])), "partition").missed, 1);
        // Without islands in the JSON, the nodes must touch every island.
        let flat = json!({"kind": "partition", "nodes": ["node1", "node2", "node5"], "links": [], "span_ns": [10 * S, 12 * S]});
        assert_eq!(of(&judge(&run(truth, vec![flat])), "partition").found, 1);
    }

    #[test]
    fn a_lossy_node_is_found_when_all_its_links_are_named() {
        let links = vec![("node1".to_string(), "node2".to_string()), ("node2".to_string(), "node1".to_string())];
        let l = |a: &str, b: &str| json!({"kind": "lossy_link", "nodes": [a, b], "links": [[a, b]], "span_ns": [10 * S, 12 * S]});
        let truth = Fault::Lossy { links: links.clone(), used: links, node: Some("node1".into()) };
        let half = judge(&run(truth.clone(), vec![l("node1", "node2")]));
        assert_eq!(*of(&half, "lossy_link"), Judged { kind: "lossy_link", found: 0, false_claims: 0, missed: 1 }, "named in part");
        let both = judge(&run(truth.clone(), vec![l("node1", "node2"), l("node2", "node1")]));
        assert_eq!(of(&both, "lossy_link").found, 1);
        let wrong = judge(&run(truth.clone(), vec![l("node1", "node2"), l("node2", "node1"), l("node3", "node1")]));
        assert_eq!(*of(&wrong, "lossy_link"), Judged { kind: "lossy_link", found: 1, false_claims: 1, missed: 0 });
        let whole = json!({"kind": "lossy_link", "nodes": ["node1"], "links": [["node1", "node2"]], "all_links_of": "node1", "span_ns": [10 * S, 12 * S]});
        assert_eq!(of(&judge(&run(truth, vec![whole])), "lossy_link").found, 1, "all of node1's links");
    }

    #[test]
    fn a_stall_names_its_node_and_nothing_else_counts_in_a_healthy_run() {
        let s = |n: &str| json!({"kind": "stalled_node", "nodes": [n], "links": [], "span_ns": [11 * S, 12 * S]});
        let j = judge(&run(Fault::Stall { node: "node2".into() }, vec![s("node2"), s("node3")]));
        assert_eq!(
            *of(&j, "stalled_node"),
            Judged { kind: "stalled_node", found: 1, false_claims: 1, missed: 0 },
            "the waiter is no stall"
        );
        let r = run(Fault::Healthy, vec![s("node1")]);
        let j = judge(&r);
        assert_eq!(*of(&j, "stalled_node"), Judged { kind: "stalled_node", found: 0, false_claims: 1, missed: 0 });
        let mut t = Tally::default();
        t.add(&r, &j);
        assert_eq!((t.healthy_runs, t.healthy_findings), (1, 1));
    }

    #[test]
    fn a_step_is_found_on_its_node_at_its_size() {
        let step = Step { node: "node2".into(), at_ns: 5 * S, size_ns: -1_500_000_000 };
        let s = |node: &str, size: i64| json!({"node": node, "size_ns": size});
        let (near, far, other) = (s("node2", -1_501_000_000), s("node2", -1_200_000_000), s("node3", -1_500_000_000));
        assert_eq!(step_verdict(&[&near], &step), StepJudged { found: 1, false_steps: 0, missed: 0 });
        assert_eq!(step_verdict(&[&far], &step), StepJudged { found: 0, false_steps: 1, missed: 1 }, "sized wrong");
        assert_eq!(step_verdict(&[&other, &near], &step), StepJudged { found: 1, false_steps: 1, missed: 0 }, "the peer is no step");
        assert_eq!(step_verdict(&[], &step), StepJudged { found: 0, false_steps: 0, missed: 1 });
    }

    #[test]
    fn the_same_seed_gives_the_same_times() {
        let a: Vec<Duration> = (0..4).scan(Rng::new(7, System::Knot, Scenario::Crash), |r, _| Some(r.ms(100, 200))).collect();
        let b: Vec<Duration> = (0..4).scan(Rng::new(7, System::Knot, Scenario::Crash), |r, _| Some(r.ms(100, 200))).collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|d| (100..=200).contains(&d.as_millis())));
        let c: Vec<Duration> = (0..4).scan(Rng::new(7, System::Knot, Scenario::Healthy), |r, _| Some(r.ms(100, 200))).collect();
        assert_ne!(a, c, "each scenario its own stream");
    }
}
