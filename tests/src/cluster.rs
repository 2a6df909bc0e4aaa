//! A bridged netns cluster for "dump, ship and die" tests: nodes running the chatter app
//! in recorded cgroups, agents beside them, collectors on node1, and signed triggers.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use wgo::transport::wire::{Secret, Trigger};

use crate::bins::{peer, wgo};
use crate::helpers::{require_root, tempdir};
use crate::testbed::{ChildGuard, Testbed, WgoProcess};

pub const SECRET: &[u8] = b"correct horse battery staple, wgo test";
pub const TRIGGER_PORT: u16 = 7301;
pub const COLLECT_PORT: u16 = 7300;

pub struct Cluster {
    pub bed: Testbed,
    pub dir: PathBuf,
    pub secret_file: PathBuf,
    pub apps: Vec<ChildGuard>,
}

impl Cluster {
    /// `n` nodes, each running the request/ACK app in its (recorded) cgroup.
    pub fn new(name: &str, n: usize) -> Cluster {
        require_root();
        let dir = tempdir(name);
        let secret_file = dir.join("secret");
        std::fs::write(&secret_file, SECRET).unwrap();
        std::fs::set_permissions(&secret_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let bed = Testbed::new(n).unwrap();
        let peers: Vec<String> = bed.nodes.iter().map(|x| format!("{}:7000", x.ipv4)).collect();
        let apps = bed
            .nodes
            .iter()
            .map(|node| {
                let others: Vec<&str> = peers.iter().filter(|p| !p.starts_with(&format!("{}:", node.ipv4))).map(String::as_str).collect();
                node.spawn(node.command(peer()).unwrap().args([
                    "chatter",
                    "--bind",
                    "0.0.0.0:7000",
                    "--peers",
                    &others.join(","),
                    "--interval-ms",
                    "10",
                ]))
                .unwrap()
            })
            .collect();
        Cluster { bed, dir, secret_file, apps }
    }

    pub fn spool(&self, node: &str) -> PathBuf {
        self.dir.join(format!("spool-{node}"))
    }

    /// Starts an agent in the node's namespace but in a cgroup of its own (so it is neither
    /// recorded nor frozen with the app).
    pub fn agent(&self, node: &str, extra: &[&str]) -> WgoProcess {
        let n = self.bed.node(node);
        let side = self.bed.side_cgroup(&format!("agent-{node}")).unwrap();
        let mut cmd = n.command_in(wgo(), Some(&side)).unwrap();
        cmd.args(["agent", "--node", node, "--cgroup"])
            .arg(&n.cgroup)
            .arg("--secret-file")
            .arg(&self.secret_file)
            .arg("--spool-dir")
            .arg(self.spool(node))
            .args(["--ring-seconds", "60", "--trigger-port", &TRIGGER_PORT.to_string()])
            .args(extra)
            // Tests that do not look at the aftermath do not wait for it.
            .args(if extra.contains(&"--after") { &[][..] } else { &["--after", "0.2"][..] })
            .env("WGO_LOG", "info");
        WgoProcess::spawn(&mut cmd, "waiting for a trigger", Duration::from_secs(15)).unwrap()
    }

    /// A collector command on node1 (`wgo trigger` or `wgo collect`) listening on `listen`.
    pub fn collector_command(&self, verb: &str, out: &Path, listen: &str, expect: &str, wait: &str) -> Command {
        let side = self.bed.side_cgroup("collector").unwrap();
        let mut cmd = self.bed.node("node1").command_in(wgo(), Some(&side)).unwrap();
        cmd.arg(verb)
            .arg("--secret-file")
            .arg(&self.secret_file)
            .args(["--listen", listen, "--expect", expect, "--wait", wait, "--out"])
            .arg(out)
            .env("WGO_LOG", "info");
        cmd
    }

    /// A collector process on node1 (`wgo trigger` or `wgo collect`).
    pub fn collector(&self, verb: &str, out: &Path, expect: &str, wait: &str) -> WgoProcess {
        let mut cmd = self.collector_command(verb, out, &format!("{}:{COLLECT_PORT}", self.bed.node("node1").ipv4), expect, wait);
        if verb == "trigger" {
            cmd.args(["--broadcast", &format!("{}:{TRIGGER_PORT}", crate::testbed::BROADCAST_V4)]);
        }
        let ready = if verb == "trigger" { "sending" } else { "" };
        WgoProcess::spawn(&mut cmd, ready, Duration::from_secs(10)).unwrap()
    }

    /// Where collectors on node1 listen.
    pub fn collector_addr(&self) -> String {
        format!("{}:{COLLECT_PORT}", self.bed.node("node1").ipv4)
    }

    pub fn names(&self) -> String {
        self.bed.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(",")
    }

    /// Sends datagrams to every agent's trigger port by broadcast, from node1.
    pub fn send_raw(&self, datagrams: Vec<Vec<u8>>) {
        self.bed
            .node("node1")
            .in_netns(move || {
                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                s.set_broadcast(true).unwrap();
                let to = SocketAddr::new(crate::testbed::BROADCAST_V4.into(), TRIGGER_PORT);
                for d in datagrams {
                    s.send_to(&d, to).unwrap();
                }
            })
            .unwrap();
    }
}

pub fn frozen(cgroup: &Path) -> bool {
    std::fs::read_to_string(cgroup.join("cgroup.events")).unwrap().contains("frozen 1")
}

pub fn sha(path: &Path) -> String {
    wgo::transport::spool::hex(&wgo::transport::spool::file_sha256(path).unwrap())
}

pub fn now_ns() -> i64 {
    wgo::clock::wall_ns() as i64
}

/// A signed trigger, sent by broadcast from node1, naming `collector` (None: naming none).
pub fn signed_trigger(c: &Cluster, id: u64, collector: Option<SocketAddr>) {
    let good = Secret::new(SECRET.to_vec()).unwrap();
    let port = collector.map_or(COLLECT_PORT, |a| a.port());
    c.send_raw(vec![Trigger { id, sent_ns: now_ns(), collector, port, reason: String::new() }.encode(&good)]);
}

pub fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
