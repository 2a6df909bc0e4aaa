//! Root integration tests for the armed recorder: agents that press the button themselves
//! when the application crashes or is OOM-killed, and `wgo serve` filing each incident.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use wgo::dump::{DumpReader, Item};
use wgo::transport::manifest::Manifest;
use wgo_tests::bins::{peer, wgo};
use wgo_tests::cluster::*;
use wgo_tests::testbed::{BROADCAST_V4, ChildGuard, WgoProcess, run};

/// A cluster of `n` chatting nodes, `wgo serve` on node1, and armed agents everywhere.
struct Armed {
    c: Cluster,
    incidents: PathBuf,
    serve: Option<WgoProcess>,
    agents: Vec<WgoProcess>,
}

impl Armed {
    fn new(name: &str, n: usize, extra: &[&str]) -> Armed {
        let c = Cluster::new(name, n);
        let incidents = c.dir.join("incidents");
        let side = c.bed.side_cgroup("serve").unwrap();
        let mut cmd = c.bed.node("node1").command_in(wgo(), Some(&side)).unwrap();
        cmd.arg("serve")
            .arg("--secret-file")
            .arg(&c.secret_file)
            .args(["--listen", &c.collector_addr(), "--wait", "20", "--report", "--incidents"])
            .arg(&incidents)
            .env("WGO_LOG", "info");
        let serve = WgoProcess::spawn(&mut cmd, "serving incidents", Duration::from_secs(10)).unwrap();
        let armed = Armed { agents: Vec::new(), c, incidents, serve: Some(serve) };
        let agents = armed.c.bed.nodes.iter().map(|x| armed.agent(&x.name, extra)).collect();
        Armed { agents, ..armed }
    }

    fn agent(&self, node: &str, extra: &[&str]) -> WgoProcess {
        let collector = self.c.collector_addr();
        let broadcast = format!("{BROADCAST_V4}:{TRIGGER_PORT}");
        let mut args = vec!["--auto-trigger", "crash,oom", "--collector", &collector, "--broadcast", &broadcast, "--on-trigger", "none"];
        args.extend_from_slice(extra);
        if !extra.contains(&"--after") {
            args.extend_from_slice(&["--after", "2"]);
        }
        self.c.agent(node, &args)
    }

    /// Runs `wgo-peer ARGS` in the node's recorded cgroup.
    fn app(&self, node: &str, args: &[&str]) -> ChildGuard {
        let n = self.c.bed.node(node);
        n.spawn(n.command(peer()).unwrap().args(args)).unwrap()
    }

    /// The incident directories once `want` have their reports and every agent has handled
    /// `want` incidents: an armed agent records again only once its dump was delivered, and
    /// the serve opens an incident when a dump for it is offered, so no further incident can
    /// appear after that (a check for "only one" then means something without a sleep).
    fn settled(&mut self, want: usize) -> Vec<(PathBuf, Manifest)> {
        wait_for("the incidents' reports", Duration::from_secs(60), || {
            let found = incidents(&self.incidents);
            found.len() >= want && found.iter().all(|(d, _)| d.join("summary.txt").exists())
        });
        for a in &self.agents {
            wait_for("every agent to record again", Duration::from_secs(60), || a.stderr().matches("recording again").count() >= want);
        }
        incidents(&self.incidents)
    }

    /// Waits until every agent has handled `incidents` incidents and records again (armed
    /// agents keep going), then stops them: each exits 0, and none took the copies of a
    /// trigger for replays.
    fn agents_done(&mut self, incidents: usize) {
        for a in self.agents.drain(..) {
            wait_for("the agent to record again", Duration::from_secs(60), || a.stderr().matches("recording again").count() >= incidents);
            let (status, _, err) = a.stop(Duration::from_secs(10)).unwrap();
            assert!(status.success(), "agent failed: {err}");
            assert_eq!(err.matches("recording again").count(), incidents, "{err}");
            assert!(!err.contains("already handled"), "copies of a trigger logged as replays: {err}");
        }
    }

    fn stop_serve(&mut self) -> String {
        let (_, _, err) = self.serve.take().unwrap().stop(Duration::from_secs(10)).unwrap();
        err
    }
}

fn incidents(root: &Path) -> Vec<(PathBuf, Manifest)> {
    let mut v: Vec<(PathBuf, Manifest)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.path(), Manifest::load(&e.path()).ok().flatten()?)))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Packets in a dump timed after `t_ns` (the nodes share this machine's clock).
fn packets_after(dump: &Path, t_ns: i64) -> usize {
    let mut r = DumpReader::new(std::io::BufReader::new(std::fs::File::open(dump).unwrap()));
    let mut n = 0;
    while let Some(item) = r.next_item().unwrap() {
        if let Item::Packet(p) = item
            && p.time_ns as i64 > t_ns
        {
            n += 1;
        }
    }
    n
}

/// Checks one complete incident with every node's dump and the reason in the report.
fn check_incident(dir: &Path, m: &Manifest, nodes: &[&str], reason: &[&str]) {
    assert!(m.complete, "{}: {m:?}", dir.display());
    let names: Vec<&str> = m.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, nodes);
    let r = m.reason.as_deref().unwrap_or_default();
    assert!(reason.iter().all(|w| r.contains(w)), "reason {r:?} should say {reason:?}");
    let summary = std::fs::read_to_string(dir.join("summary.txt")).unwrap();
    assert!(summary.starts_with(&format!("Triggered: {r}\n")), "{summary}");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["trigger_reasons"], serde_json::json!([r]));
}

#[test]
fn a_segfault_in_one_app_gives_one_incident_with_every_dump_and_the_aftermath() {
    let mut a = Armed::new("armed-segv", 3, &[]);
    std::thread::sleep(Duration::from_millis(500));
    let crasher = a.app("node3", &["crash", "--after-ms", "300"]);
    let pid = crasher.id();
    let found = a.settled(1);
    assert_eq!(found.len(), 1, "one incident: {found:?}");
    let (dir, m) = &found[0];
    check_incident(dir, m, &["node1", "node2", "node3"], &["node3", &format!("pid {pid}"), "SIGSEGV", "wgo-peer"]);
    // The aftermath: each dump goes on for the 2 s after the trigger.
    let sent = m.trigger_sent_ns.expect("the trigger's send time");
    for n in ["node1", "node2", "node3"] {
        let later = packets_after(&dir.join(format!("{n}.pcapng")), sent + 1_000_000_000);
        assert!(later > 20, "{n}: {later} packets recorded more than 1 s after the crash");
    }
    a.agents_done(1);
    let log = a.stop_serve();
    assert!(log.contains("complete: 3 dump(s)"), "{log}");
}

#[test]
fn armed_agents_keep_recording_two_incidents_in_a_row_each_with_every_dump() {
    let mut a = Armed::new("armed-twice", 3, &["--cooldown", "1"]);
    std::thread::sleep(Duration::from_millis(500));
    let first = a.app("node3", &["crash", "--after-ms", "300"]);
    let found = a.settled(1);
    assert_eq!(found.len(), 1, "{found:?}");
    check_incident(&found[0].0, &found[0].1, &["node1", "node2", "node3"], &["node3", &format!("pid {}", first.id()), "SIGSEGV"]);
    let first_sent = found[0].1.trigger_sent_ns.expect("the first trigger's send time");
    // Nobody restarts the agents: each records again by itself.
    for x in &a.agents {
        wait_for("every agent to record again", Duration::from_secs(30), || x.stderr().contains("recording again"));
    }
    let second = a.app("node2", &["crash", "--after-ms", "300"]);
    let found = a.settled(2);
    assert_eq!(found.len(), 2, "{found:?}");
    let (dir, m) = &found[1];
    check_incident(dir, m, &["node1", "node2", "node3"], &["node2", &format!("pid {}", second.id()), "SIGSEGV"]);
    // The second incident's dumps are a recording of their own, made after the first
    // incident, with the second one's aftermath in them.
    let sent = m.trigger_sent_ns.expect("the second trigger's send time");
    for n in ["node1", "node2", "node3"] {
        let dump = dir.join(format!("{n}.pcapng"));
        assert_eq!(packets_after(&dump, i64::MIN), packets_after(&dump, first_sent), "{n}: nothing from before the first incident");
        let later = packets_after(&dump, sent + 1_000_000_000);
        assert!(later > 20, "{n}: {later} packets recorded more than 1 s after the second crash");
    }
    a.agents_done(2);
    let log = a.stop_serve();
    assert_eq!(log.matches("complete: 3 dump(s)").count(), 2, "{log}");
}

/// Limits the memory of the process `pid`: a cgroup v1 memory group on hybrid hosts,
/// or `memory.max` on the node's cgroup v2 where the memory controller is there.
struct MemoryLimit(Option<PathBuf>);

impl MemoryLimit {
    fn new(node_cgroup: &Path, pid: u32, bytes: u64) -> MemoryLimit {
        if let Some(v1) = wgo::node::cgroup::v1_mount("memory") {
            let dir = v1.join(format!("wgo-test-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("memory.limit_in_bytes"), bytes.to_string()).unwrap();
            let _ = std::fs::write(dir.join("memory.swappiness"), "0");
            std::fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
            MemoryLimit(Some(dir))
        } else {
            let parent = node_cgroup.parent().unwrap();
            std::fs::write(parent.join("cgroup.subtree_control"), "+memory").unwrap();
            std::fs::write(node_cgroup.join("memory.max"), bytes.to_string()).unwrap();
            std::fs::write(node_cgroup.join("memory.swap.max"), "0").unwrap();
            MemoryLimit(None)
        }
    }
}

impl Drop for MemoryLimit {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[test]
fn an_oom_kill_gives_one_incident_naming_the_victim() {
    let mut a = Armed::new("armed-oom", 3, &[]);
    let hog = a.app("node2", &["hog", "--after-ms", "1500", "--mb", "1024"]);
    let _limit = MemoryLimit::new(&a.c.bed.node("node2").cgroup, hog.id(), 48 << 20);
    let found = a.settled(1);
    assert_eq!(found.len(), 1, "one incident: {found:?}");
    let (dir, m) = &found[0];
    check_incident(dir, m, &["node1", "node2", "node3"], &["node2", &format!("pid {}", hog.id()), "OOM killer"]);
    a.agents_done(1);
    drop(hog);
}

#[test]
fn ten_crashes_within_a_second_on_every_node_give_one_incident_and_a_crash_loop_waits_for_the_cooldown() {
    let mut a = Armed::new("armed-storm", 3, &[]);
    std::thread::sleep(Duration::from_millis(500));
    // Crashes on all three nodes at nearly the same moment: each agent may press the button.
    let crashers: Vec<ChildGuard> = (0..10)
        .map(|k| {
            let node = format!("node{}", k % 3 + 1);
            let at = (300 + k * 90).to_string();
            a.app(&node, &["crash", "--after-ms", &at])
        })
        .collect();
    let found = a.settled(1);
    assert_eq!(found.len(), 1, "one incident, not {}: {:?}", found.len(), found.iter().map(|f| &f.0).collect::<Vec<_>>());
    let (dir, m) = &found[0];
    check_incident(dir, m, &["node1", "node2", "node3"], &["SIGSEGV"]);
    a.agents_done(1);
    drop(crashers);

    // The crash loop: the app (and its agent) come back and crash again at once. The
    // agent remembers the incident it just handled, and stays quiet for its cooldown.
    let again = a.agent("node1", &["--cooldown", "60"]);
    let _crash = a.app("node1", &["crash", "--after-ms", "200"]);
    wait_for("the agent to see the crash", Duration::from_secs(10), || again.stderr().contains("within the cooldown"));
    assert!(!again.stderr().contains("sending trigger"), "{}", again.stderr());
    let (status, _, err) = again.stop(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{err}");
    assert_eq!(incidents(&a.incidents).len(), 1, "no second incident");
}

#[test]
fn a_manual_trigger_still_works_beside_armed_agents_and_serve() {
    let mut a = Armed::new("armed-manual", 3, &["--after", "0.5"]);
    std::thread::sleep(Duration::from_millis(500));
    let side = a.c.bed.side_cgroup("trigger").unwrap();
    let out = run(a
        .c
        .bed
        .node("node1")
        .command_in(wgo(), Some(&side))
        .unwrap()
        .arg("trigger")
        .arg("--secret-file")
        .arg(&a.c.secret_file)
        .args(["--collector", &a.c.collector_addr(), "--broadcast", &format!("{BROADCAST_V4}:{TRIGGER_PORT}")])
        .args(["--reason", "operator: the cluster is slow"]))
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let found = a.settled(1);
    assert_eq!(found.len(), 1, "{found:?}");
    let (dir, m) = &found[0];
    check_incident(dir, m, &["node1", "node2", "node3"], &["operator: the cluster is slow"]);
    a.agents_done(1);
    // And a report of the incident directory reads the same.
    let rep = run(Command::new(wgo()).arg("report").arg(dir)).unwrap();
    assert!(String::from_utf8_lossy(&rep.stdout).starts_with("Triggered: operator: the cluster is slow\n"));
}

#[test]
fn a_sigkill_from_an_operator_is_a_crash_naming_who_sent_it() {
    let mut a = Armed::new("armed-kill", 2, &["--after", "0.5"]);
    let victim = a.app("node2", &["hog", "--after-ms", "60000", "--mb", "1"]);
    std::thread::sleep(Duration::from_millis(800));
    let killer = run(Command::new("kill").args(["-KILL", &victim.id().to_string()])).unwrap();
    assert!(killer.status.success());
    let found = a.settled(1);
    assert_eq!(found.len(), 1, "{found:?}");
    let (dir, m) = &found[0];
    check_incident(dir, m, &["node1", "node2"], &["node2", &format!("pid {}", victim.id()), "killed by SIGKILL sent by kill (pid "]);
    a.agents_done(1);
}
