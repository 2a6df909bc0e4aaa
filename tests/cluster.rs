//! Root integration tests for "dump, ship and die": agents on a bridged netns cluster,
//! a signed trigger, shipping (with a cut link and a killed collector), stop policies.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use wgo::transport::wire::{Secret, Trigger};
use wgo_tests::bins::wgo;
use wgo_tests::cluster::*;
use wgo_tests::helpers::*;
use wgo_tests::testbed::{WgoProcess, run};

#[test]
fn trigger_collects_every_dump_freezes_apps_and_ignores_forgeries() {
    let c = Cluster::new("trigger", 4);
    let agents: Vec<WgoProcess> = c.bed.nodes.iter().map(|n| c.agent(&n.name, &["--on-trigger", "freeze"])).collect();
    std::thread::sleep(Duration::from_secs(1)); // some traffic to record

    // Forgeries and garbage change nothing.
    let good = Secret::new(SECRET.to_vec()).unwrap();
    let wrong = Secret::new(b"not the right secret at all".to_vec()).unwrap();
    let collector: SocketAddr = format!("{}:{COLLECT_PORT}", c.bed.node("node1").ipv4).parse().unwrap();
    let mk = |id: u64, sent: i64, s: &Secret| {
        Trigger { id, sent_ns: sent, collector: Some(collector), port: COLLECT_PORT, reason: String::new() }.encode(s)
    };
    let mut junk: Vec<Vec<u8>> =
        vec![mk(1, now_ns(), &wrong), mk(2, now_ns() - 3_600_000_000_000, &good), b"garbage".to_vec(), vec![0u8; 72], vec![]];
    let mut rng = wgo_tests::sim::Rng::new(99);
    for _ in 0..300 {
        let len = (rng.next_u64() % 200) as usize;
        junk.push((0..len).map(|_| rng.next_u64() as u8).collect());
    }
    let mut tweaked = mk(3, now_ns(), &good);
    tweaked[9] ^= 0x40;
    junk.push(tweaked);
    c.send_raw(junk);
    // Each agent took the forgeries in (it says so, and its trigger socket's queue is empty):
    // only then does "nothing happened" mean that it acted on none of them.
    for (n, a) in c.bed.nodes.iter().zip(&agents) {
        wait_for(&format!("{} to log what it ignored", n.name), Duration::from_secs(10), || {
            a.stderr().contains("ignored trigger datagram")
        });
        wait_for(&format!("{} to read every datagram", n.name), Duration::from_secs(10), || trigger_queue(n) == Some(0));
        assert!(!frozen(&n.cgroup), "{}: frozen by a forged trigger", n.name);
        assert!(!a.stderr().contains("dumping"), "{}: acted on a forgery", n.name);
    }

    // The real trigger.
    let out = c.dir.join("collected");
    let trig = c.collector("trigger", &out, &c.names(), "60");
    let (status, stdout, stderr) = trig.wait(Duration::from_secs(90)).unwrap();
    assert!(status.success(), "wgo trigger failed: {stdout}\n{stderr}");
    let logs: Vec<String> = agents
        .into_iter()
        .map(|a| {
            let (status, _, err) = a.wait(Duration::from_secs(30)).unwrap();
            assert!(status.success(), "agent failed: {err}");
            // The trigger's own copies are not replays.
            assert!(!err.contains("already handled"), "copies of the trigger logged as replays: {err}");
            err
        })
        .collect();
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["complete"], true);
    assert_eq!(manifest["missing"].as_array().unwrap().len(), 0);
    let trigger_id = u64::from_str_radix(manifest["trigger_id"].as_str().unwrap(), 16).unwrap();
    // Whatever the timing, every dump an agent ever made was the real trigger's.
    for log in &logs {
        let dumped: Vec<&str> = log.lines().filter(|l| l.contains("then dumping")).collect();
        assert!(dumped.len() == 1 && dumped[0].contains(&format!("{trigger_id:016x}")), "one dump, the real trigger's: {log}");
        assert!(!log.contains("joining trigger"), "no other trigger joined it: {log}");
    }
    for n in &c.bed.nodes {
        let got = out.join(format!("{}.pcapng", n.name));
        let spooled = c.spool(&n.name).join(format!("{}-{trigger_id:016x}.pcapng", n.name));
        let entry = manifest["nodes"].as_array().unwrap().iter().find(|x| x["name"] == n.name.as_str()).unwrap();
        assert_eq!(sha(&got), sha(&spooled), "{}: collected copy equals the spool copy", n.name);
        assert_eq!(entry["sha256"].as_str().unwrap(), sha(&got));
        assert!(entry["heard_ns"].as_i64().unwrap() > 0);
        assert!(frozen(&n.cgroup), "{}: app frozen after its dump shipped", n.name);
    }
    // The dumps tell a story: every node, messages matched.
    let rep = run(Command::new(wgo()).arg("report").arg(&out)).unwrap();
    let text = String::from_utf8_lossy(&rep.stdout);
    assert!(text.starts_with("Triggered: wgo trigger by ") && text.contains("\n4 nodes"), "{text}");

    // The way out of a freeze: `wgo thaw`, or the agent's next start.
    let node3 = &c.bed.node("node3").cgroup;
    let thaw = run(Command::new(wgo()).arg("thaw").arg("--cgroup").arg(node3)).unwrap();
    assert!(thaw.status.success(), "{}", String::from_utf8_lossy(&thaw.stderr));
    assert!(String::from_utf8_lossy(&thaw.stdout).contains("thawed"), "{thaw:?}");
    assert!(!frozen(node3), "wgo thaw thawed node3");
    let thaw = run(Command::new(wgo()).arg("thaw").arg("--cgroup").arg(node3)).unwrap();
    assert!(thaw.status.success() && String::from_utf8_lossy(&thaw.stdout).contains("was not frozen"), "{thaw:?}");

    // A replay of the real trigger to a restarted agent is ignored; the restart thaws the app.
    assert!(frozen(&c.bed.node("node2").cgroup));
    let again = c.agent("node2", &["--on-trigger", "freeze"]);
    assert!(!frozen(&c.bed.node("node2").cgroup), "the agent's start thawed node2");
    assert!(again.stderr().contains("was frozen") && again.stderr().contains("thawed it"), "{}", again.stderr());
    c.send_raw(vec![mk(trigger_id, now_ns(), &good)]);
    wait_for("the replay to be ignored", Duration::from_secs(10), || again.stderr().contains("already handled"));
    assert!(again.stderr().contains("1 replayed"), "{}", again.stderr());
    assert!(!frozen(&c.bed.node("node2").cgroup));
    let (status, _, err) = again.stop(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{err}");
}

#[test]
fn kill_policy_kills_the_apps() {
    let c = Cluster::new("kill", 2);
    // A secret others can read is refused before anything starts.
    let open = c.dir.join("open-secret");
    std::fs::write(&open, SECRET).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let o = Command::new(wgo())
        .args(["agent", "--node", "x", "--cgroup"])
        .arg(&c.bed.nodes[0].cgroup)
        .arg("--secret-file")
        .arg(&open)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("readable by others"), "{}", String::from_utf8_lossy(&o.stderr));

    let agents: Vec<WgoProcess> = c.bed.nodes.iter().map(|n| c.agent(&n.name, &["--on-trigger", "kill"])).collect();
    std::thread::sleep(Duration::from_millis(500));
    let out = c.dir.join("collected");
    let (status, _, err) = c.collector("trigger", &out, "2", "60").wait(Duration::from_secs(90)).unwrap();
    assert!(status.success(), "{err}");
    for a in agents {
        assert!(a.wait(Duration::from_secs(30)).unwrap().0.success());
    }
    for n in &c.bed.nodes {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !wgo::node::cgroup::processes(&n.cgroup).unwrap().is_empty() {
            assert!(Instant::now() < deadline, "{}: app still running", n.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn cut_off_node_keeps_its_dump_and_ships_it_later() {
    let c = Cluster::new("cutoff", 4);
    let mut agents: Vec<WgoProcess> = c.bed.nodes.iter().take(3).map(|n| c.agent(&n.name, &[])).collect();
    // node4 ships slowly and gives up soon, so its link can be cut mid-shipment.
    let slow = c.agent("node4", &["--ship-rate", "4096", "--ship-deadline", "4"]);
    std::thread::sleep(Duration::from_secs(1));
    let out = c.dir.join("collected");
    let trig = c.collector("trigger", &out, &c.names(), "10");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !slow.stderr().contains("saved in") {
        assert!(Instant::now() < deadline, "node4 never dumped: {}", slow.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    c.bed.set_link("node4", false).unwrap();
    let (status, stdout, stderr) = trig.wait(Duration::from_secs(60)).unwrap();
    assert!(!status.success(), "wgo trigger must fail with node4 missing");
    assert!(stderr.contains("missing dumps from: node4"), "names the missing node: {stderr}\n{stdout}");
    let (status, _, err) = slow.wait(Duration::from_secs(60)).unwrap();
    assert!(!status.success() && err.contains("wgo ship"), "node4's agent says how to ship later: {err}");
    for a in agents.drain(..) {
        assert!(a.wait(Duration::from_secs(30)).unwrap().0.success());
    }
    let entries = wgo::transport::spool::spool_entries(&c.spool("node4")).unwrap();
    assert_eq!(entries.len(), 1);
    assert!(!entries[0].shipped);

    // Link back, a collector listening again, and `wgo ship` delivers it.
    c.bed.set_link("node4", true).unwrap();
    let collect = c.collector("collect", &out, "node4", "60");
    std::thread::sleep(Duration::from_millis(300));
    let n4 = c.bed.node("node4");
    let side = c.bed.side_cgroup("agent-node4").unwrap();
    run(n4
        .command_in(wgo(), Some(&side))
        .unwrap()
        .args(["ship", "--spool"])
        .arg(c.spool("node4"))
        .arg("--secret-file")
        .arg(&c.secret_file))
    .unwrap();
    let (status, _, err) = collect.wait(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "{err}");
    assert_eq!(sha(&out.join("node4.pcapng")), entries[0].sha256);
    assert!(wgo::transport::spool::spool_entries(&c.spool("node4")).unwrap()[0].shipped);
}

#[test]
fn killed_collector_restarts_and_transfers_resume() {
    let c = Cluster::new("resume", 3);
    let agents: Vec<WgoProcess> =
        c.bed.nodes.iter().map(|n| c.agent(&n.name, &["--ship-rate", "16384", "--ship-deadline", "120", "--on-trigger", "none"])).collect();
    std::thread::sleep(Duration::from_secs(2));
    let out = c.dir.join("collected");
    let trig = c.collector("trigger", &out, &c.names(), "120");
    // Kill it hard once bytes are flowing.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(out.join(".partial"))
        .map(|d| d.flatten().all(|e| e.metadata().map(|m| m.len()).unwrap_or(0) < 4096))
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "no transfer started");
        std::thread::sleep(Duration::from_millis(20));
    }
    trig.signal(libc::SIGKILL);
    let _ = trig.wait(Duration::from_secs(10));
    // Garbage connections to the restarted collector must not stop it.
    let collect = c.collector("collect", &out, &c.names(), "120");
    let target: SocketAddr = format!("{}:{COLLECT_PORT}", c.bed.node("node1").ipv4).parse().unwrap();
    c.bed
        .node("node2")
        .in_netns(move || {
            use std::io::Write;
            for k in 0..20u8 {
                if let Ok(mut s) = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
                    let _ = s.write_all(&[0xff, 0xff, 0xff, 0xff, k, 1, 2, 3]);
                }
            }
        })
        .unwrap();
    let (status, stdout, err) = collect.wait(Duration::from_secs(120)).unwrap();
    assert!(status.success(), "{stdout}\n{err}");
    for a in agents {
        let (s, _, e) = a.wait(Duration::from_secs(30)).unwrap();
        assert!(s.success(), "{e}");
    }
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let id = manifest["trigger_id"].as_str().unwrap().to_string();
    for n in &c.bed.nodes {
        let spooled = c.spool(&n.name).join(format!("{}-{id}.pcapng", n.name));
        assert_eq!(sha(&out.join(format!("{}.pcapng", n.name))), sha(&spooled), "{} complete after the restart", n.name);
    }
}

#[test]
fn an_agent_inside_the_recorded_cgroup_keeps_its_own_traffic_out() {
    let c = Cluster::new("own-traffic", 2);
    // node1's agent runs inside the cgroup it records (policy none: it must not stop itself).
    let n1 = c.bed.node("node1");
    let mut cmd = n1.command(wgo()).unwrap();
    cmd.args(["agent", "--node", "node1", "--cgroup"])
        .arg(&n1.cgroup)
        .arg("--secret-file")
        .arg(&c.secret_file)
        .arg("--spool-dir")
        .arg(c.spool("node1"))
        .args(["--on-trigger", "none", "--ring-seconds", "60", "--trigger-port", &TRIGGER_PORT.to_string()])
        .env("WGO_LOG", "info");
    let inside = WgoProcess::spawn(&mut cmd, "waiting for a trigger", Duration::from_secs(15)).unwrap();
    let outside = c.agent("node2", &["--on-trigger", "none"]);
    c.send_raw((0..20u8).map(|k| vec![k; 40]).collect());
    std::thread::sleep(Duration::from_millis(500));
    let out = c.dir.join("collected");
    let (status, _, err) = c.collector("trigger", &out, "2", "60").wait(Duration::from_secs(90)).unwrap();
    assert!(status.success(), "{err}");
    for a in [inside, outside] {
        assert!(a.wait(Duration::from_secs(30)).unwrap().0.success());
    }
    let pkts = tshark(&out.join("node1.pcapng"));
    assert!(pkts.iter().any(|p| p.dport == Some(7000)), "the app's traffic is recorded");
    for p in &pkts {
        for port in [TRIGGER_PORT, COLLECT_PORT] {
            assert!(p.sport != Some(port) && p.dport != Some(port), "the agent's own traffic was recorded: {p:?}");
        }
    }
}

#[test]
fn agents_ship_only_where_the_trigger_says_and_stop_the_app_only_after_delivery_or_the_deadline() {
    let c = Cluster::new("named", 2);
    let agent = c.agent("node2", &["--on-trigger", "freeze", "--ship-deadline", "4"]);
    std::thread::sleep(Duration::from_millis(300));
    // A trigger that names no collector is ignored: the dump would go wherever it seemed to come from.
    signed_trigger(&c, 11, None);
    wait_for("the trigger without a collector to be ignored", Duration::from_secs(10), || agent.stderr().contains("names no collector"));
    assert!(!agent.stderr().contains("dumping"), "{}", agent.stderr());

    // An impostor at the named address: a collector with another secret. It cannot prove
    // it holds ours, so there is no delivery, and the app keeps running while the agent
    // retries, until the deadline.
    let n1 = c.bed.node("node1");
    let other = c.dir.join("other-secret");
    std::fs::write(&other, "a different secret, 16+ bytes").unwrap();
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let side = c.bed.side_cgroup("impostor").unwrap();
    let mut cmd = n1.command_in(wgo(), Some(&side)).unwrap();
    cmd.args(["collect", "--secret-file"])
        .arg(&other)
        .args(["--listen", &format!("{}:7400", n1.ipv4), "--wait", "30", "--out"])
        .arg(c.dir.join("impostor"));
    let _impostor = WgoProcess::spawn(&mut cmd, "", Duration::from_secs(5)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    signed_trigger(&c, 12, Some(format!("{}:7400", n1.ipv4).parse().unwrap()));
    wait_for("the dump in the spool", Duration::from_secs(10), || agent.stderr().contains("saved in"));
    // A shipment was tried and failed, and the agent goes on retrying: the app still runs.
    wait_for("a failed handshake", Duration::from_secs(10), || agent.stderr().contains("failed authentication"));
    let node2 = c.bed.node("node2");
    assert!(!frozen(&node2.cgroup), "frozen before any delivery or the deadline ({:?} in): {}", started.elapsed(), agent.stderr());
    let (status, _, err) = agent.wait(Duration::from_secs(30)).unwrap();
    assert!(!status.success() && err.contains("gave up shipping") && err.contains("wgo ship"), "{err}");
    assert!(started.elapsed() >= Duration::from_secs(3), "kept trying until the deadline");
    assert!(frozen(&node2.cgroup), "the stop policy applies once the deadline passed");
    let entries = wgo::transport::spool::spool_entries(&c.spool("node2")).unwrap();
    assert_eq!(entries.len(), 1);
    assert!(!entries[0].shipped, "a failed handshake is no delivery");
}

#[test]
fn sigterm_while_shipping_stops_at_once_and_leaves_the_spool_consistent() {
    let c = Cluster::new("sigterm", 2);
    let agent = c.agent("node2", &["--on-trigger", "freeze"]);
    std::thread::sleep(Duration::from_millis(300));
    // Nothing listens at the named collector: the agent retries (for 600 s by default).
    signed_trigger(&c, 21, Some(format!("{}:7400", c.bed.node("node1").ipv4).parse().unwrap()));
    wait_for("the dump in the spool", Duration::from_secs(10), || agent.stderr().contains("retrying"));
    agent.signal(libc::SIGTERM);
    // A deadline, not a timing judge: left alone, the agent would go on retrying for 600 s.
    let (status, _, err) = agent.wait(Duration::from_secs(30)).unwrap();
    assert!(!status.success() && err.contains("stopped by a signal") && err.contains("wgo ship"), "{err}");
    assert!(!frozen(&c.bed.node("node2").cgroup), "a stopped agent leaves the app alone");
    let spool = c.spool("node2");
    let entries = wgo::transport::spool::spool_entries(&spool).unwrap();
    assert_eq!(entries.len(), 1);
    assert!(!entries[0].shipped);
    assert_eq!(sha(&entries[0].dump_path(&spool)), entries[0].sha256, "the spooled dump is whole");
    let names: Vec<String> = std::fs::read_dir(&spool).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.contains("partial") && !n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn a_full_spool_still_ships_the_dump_from_memory_and_dumps_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let c = Cluster::new("fullspool", 2);
    // node2's spool is a 16 KiB file system: its dump does not fit.
    let tiny = c.spool("node2");
    std::fs::create_dir_all(&tiny).unwrap();
    run(Command::new("mount").args(["-t", "tmpfs", "-o", "size=16k", "tmpfs"]).arg(&tiny)).unwrap();
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(tiny.clone());
    let agents: Vec<WgoProcess> = c.bed.nodes.iter().map(|n| c.agent(&n.name, &["--on-trigger", "freeze"])).collect();
    std::thread::sleep(Duration::from_secs(1));
    let out = c.dir.join("collected");
    let (status, stdout, stderr) = c.collector("trigger", &out, &c.names(), "60").wait(Duration::from_secs(90)).unwrap();
    assert!(status.success(), "both dumps arrive: {stdout}\n{stderr}");
    let mut agents = agents.into_iter();
    let (ok1, _, _) = agents.next().unwrap().wait(Duration::from_secs(30)).unwrap();
    assert!(ok1.success());
    let (status, _, err) = agents.next().unwrap().wait(Duration::from_secs(30)).unwrap();
    assert!(!status.success(), "the agent says its spool failed");
    assert!(err.contains(&format!("could not spool the dump in {}", tiny.display())) && err.contains("delivered from memory"), "{err}");
    assert!(frozen(&c.bed.node("node2").cgroup), "delivered, so the app is stopped");
    let left: Vec<String> = std::fs::read_dir(&tiny).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(left.iter().all(|n| !n.contains("partial")), "nothing half-written stays behind: {left:?}");
    // Dumps hold payload bytes: only root may read them, in the spool and at the collector.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let spool1 = c.spool("node1");
    assert_eq!(mode(&spool1), 0o700);
    for e in std::fs::read_dir(&spool1).unwrap().flatten() {
        assert_eq!(mode(&e.path()), 0o600, "{}", e.path().display());
    }
    for n in ["node1", "node2"] {
        assert_eq!(mode(&out.join(format!("{n}.pcapng"))), 0o600);
    }
}

#[test]
fn agents_hear_triggers_sent_over_ipv6() {
    let c = Cluster::new("ipv6", 2);
    let agents: Vec<WgoProcess> = c.bed.nodes.iter().map(|n| c.agent(&n.name, &["--on-trigger", "none"])).collect();
    std::thread::sleep(Duration::from_millis(500));
    let out = c.dir.join("collected");
    let listen = format!("[{}]:{COLLECT_PORT}", c.bed.node("node1").ipv6);
    let mut cmd = c.collector_command("trigger", &out, &listen, &c.names(), "60");
    for n in &c.bed.nodes {
        cmd.args(["--to", &format!("[{}]:{TRIGGER_PORT}", n.ipv6)]);
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for a in agents {
        let (status, _, err) = a.wait(Duration::from_secs(30)).unwrap();
        assert!(status.success(), "{err}");
    }
    for n in &c.bed.nodes {
        assert!(out.join(format!("{}.pcapng", n.name)).exists());
    }
}

#[test]
fn two_agents_with_one_name_are_refused_naming_both_addresses() {
    let c = Cluster::new("dupname", 2);
    // node2's agent calls itself node1 too.
    let first = c.agent("node1", &["--on-trigger", "none"]);
    let n2 = c.bed.node("node2");
    let side = c.bed.side_cgroup("agent-impostor").unwrap();
    let mut cmd = n2.command_in(wgo(), Some(&side)).unwrap();
    cmd.args(["agent", "--node", "node1", "--cgroup"])
        .arg(&n2.cgroup)
        .arg("--secret-file")
        .arg(&c.secret_file)
        .arg("--spool-dir")
        .arg(c.dir.join("spool-impostor"))
        .args(["--ring-seconds", "60", "--trigger-port", &TRIGGER_PORT.to_string(), "--on-trigger", "none", "--ship-deadline", "5"])
        .env("WGO_LOG", "info");
    let second = WgoProcess::spawn(&mut cmd, "waiting for a trigger", Duration::from_secs(15)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out = c.dir.join("collected");
    // Waiting for two nodes keeps the collector up until both agents were heard out: only
    // one dump for node1 can arrive, so it gives up after its wait.
    let trig = c.collector("trigger", &out, "2", "8");
    let results = [first.wait(Duration::from_secs(30)).unwrap(), second.wait(Duration::from_secs(30)).unwrap()];
    let (status, _, stderr) = trig.wait(Duration::from_secs(60)).unwrap();
    assert!(!status.success() && stderr.contains("missing dumps from: 1 more node(s)"), "{stderr}");
    let refused: Vec<&String> = results.iter().filter(|r| !r.0.success()).map(|r| &r.2).collect();
    assert_eq!(refused.len(), 1, "exactly one of the two is refused");
    let (a1, a2) = (c.bed.node("node1").ipv4.to_string(), n2.ipv4.to_string());
    assert!(
        refused[0].contains("two agents use the node name node1") && refused[0].contains(&a1) && refused[0].contains(&a2),
        "{}",
        refused[0]
    );
    assert!(stderr.contains("two agents use the node name node1"), "the collector says so too: {stderr}");
    // The dump kept is whole: it is the one of the agent that was not refused.
    let kept_spool = if results[0].0.success() { c.spool("node1") } else { c.dir.join("spool-impostor") };
    let entries = wgo::transport::spool::spool_entries(&kept_spool).unwrap();
    assert_eq!(sha(&out.join("node1.pcapng")), entries[0].sha256);
}

/// A pids cgroup allowing `max` tasks, where one is available: cgroup v1's pids hierarchy
/// (hybrid layout) or v2's, with the controller enabled. Removed on drop.
struct TaskLimit(PathBuf);

impl TaskLimit {
    fn new(name: &str, max: u32) -> Option<TaskLimit> {
        let v1 = Path::new("/sys/fs/cgroup/pids");
        let parent = if v1.join("pids.max").exists() || v1.join("cgroup.procs").exists() {
            v1.to_path_buf()
        } else {
            let v2 = wgo::node::cgroup::cgroup2_mount().ok()?;
            let controllers = std::fs::read_to_string(v2.join("cgroup.controllers")).ok()?;
            if !controllers.split_whitespace().any(|c| c == "pids") {
                return None;
            }
            std::fs::write(v2.join("cgroup.subtree_control"), "+pids").ok()?;
            v2
        };
        let dir = parent.join(format!("wgo-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        std::fs::write(dir.join("pids.max"), max.to_string()).ok()?;
        Some(TaskLimit(dir))
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for TaskLimit {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_collector_under_a_task_limit_survives_a_connection_flood_and_still_collects() {
    let c = Cluster::new("pids", 2);
    let Some(limit) = TaskLimit::new("collector", 24) else {
        println!("SKIPPED: no pids cgroup controller is available on this machine (neither cgroup v1's nor v2's)");
        return;
    };
    let agents: Vec<WgoProcess> = c.bed.nodes.iter().map(|n| c.agent(&n.name, &["--on-trigger", "none"])).collect();
    std::thread::sleep(Duration::from_millis(500));
    // A collector allowed 24 tasks: one thread per connection would run out at once.
    let n1 = c.bed.node("node1");
    let out = c.dir.join("collected");
    let mut cmd = c.collector_command("collect", &out, &format!("{}:{COLLECT_PORT}", n1.ipv4), &c.names(), "60");
    cmd.args(["--trigger-id", "31"]);
    let collector = WgoProcess::spawn(&mut cmd, "", Duration::from_secs(5)).unwrap();
    limit.add(collector.id());
    std::thread::sleep(Duration::from_millis(300));
    // 400 plain connections from node2 that never say anything, held while the agents ship.
    let to: SocketAddr = format!("{}:{COLLECT_PORT}", n1.ipv4).parse().unwrap();
    let flood = c
        .bed
        .node("node2")
        .in_netns(move || {
            (0..400).filter_map(|_| std::net::TcpStream::connect_timeout(&to, Duration::from_secs(1)).ok()).collect::<Vec<_>>()
        })
        .unwrap();
    assert!(flood.len() > 300, "{} connections made", flood.len());
    signed_trigger(&c, 0x31, Some(to));
    let (status, stdout, stderr) = collector.wait(Duration::from_secs(90)).unwrap();
    assert!(status.success(), "every dump arrives: {stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for a in agents {
        assert!(a.wait(Duration::from_secs(30)).unwrap().0.success());
    }
    drop(flood);
}

/// `wgo trigger --listen 0.0.0.0:P --to [v6]:port`: the trigger names the collector's IPv6
/// address to that agent, so the collector must listen on IPv6 too (it listened on IPv4
/// only, and the agent retried "connection refused" until its deadline).
#[test]
fn an_agent_reached_over_ipv6_ships_to_the_collector_over_ipv6() {
    let c = Cluster::new("ipv6", 2);
    let agent = c.agent("node2", &[]);
    let out = c.dir.join("collected");
    let (collector_v6, agent_v6) = (c.bed.node("node1").ipv6, c.bed.node("node2").ipv6);
    let mut cmd = c.collector_command("trigger", &out, &format!("0.0.0.0:{COLLECT_PORT}"), "node2", "60");
    cmd.args(["--to", &format!("[{agent_v6}]:{TRIGGER_PORT}")]);
    let trig = WgoProcess::spawn(&mut cmd, "sending", Duration::from_secs(10)).unwrap();
    let (status, stdout, stderr) = trig.wait(Duration::from_secs(90)).unwrap();
    assert!(status.success(), "wgo trigger failed: {stdout}\n{stderr}");
    assert!(stderr.contains(&format!("collect on [{collector_v6}]:{COLLECT_PORT}")), "the trigger names the IPv6 address: {stderr}");
    let (status, _, err) = agent.wait(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "agent failed: {err}");
    let m = wgo::transport::manifest::Manifest::load(&out).unwrap().unwrap();
    assert!(m.complete, "{m:?}");
    let n = m.nodes.iter().find(|n| n.name == "node2").unwrap();
    assert_eq!(n.addr.as_deref(), Some(agent_v6.to_string().as_str()), "shipped over IPv6");
    assert_eq!(n.sha256.as_deref(), Some(sha(&out.join("node2.pcapng")).as_str()));
}

#[test]
fn a_trigger_nobody_hears_says_so_and_a_wrong_address_or_a_taken_port_names_the_flag_to_fix() {
    let c = Cluster::new("unheard", 2);
    let agents: Vec<WgoProcess> = c.bed.nodes.iter().map(|n| c.agent(&n.name, &["--on-trigger", "none"])).collect();

    // The agents' port is wrong: nobody hears, and it says so well before --wait is over.
    let out = c.dir.join("unheard");
    let mut cmd = c.collector_command("trigger", &out, &c.collector_addr(), &c.names(), "8");
    let wrong = format!("{}:7399", wgo_tests::testbed::BROADCAST_V4);
    cmd.args(["--broadcast", &wrong]);
    let res = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success(), "{err}");
    assert!(err.contains("0 of 2 agents heard trigger") && err.contains(&format!("check --broadcast {wrong}")), "{err}");
    assert!(err.contains("agents listen on port 7301"), "{err}");
    // Progress lines, stderr being no terminal.
    assert!(err.contains("0 of 2 agents heard it, 0 delivered; waiting for node1, node2"), "{err}");
    assert!(err.contains("no agent heard the trigger: check --broadcast"), "the error says why: {err}");
    for a in &agents {
        assert!(!a.stderr().contains("dumping"), "{}", a.stderr());
    }

    // No route to the agents' network: the flag to fix is --broadcast, not --listen.
    let mut cmd = c.collector_command("trigger", &c.dir.join("unrouted"), "0.0.0.0:7300", &c.names(), "8");
    cmd.args(["--broadcast", "203.0.113.255:7301"]);
    let res = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success());
    assert!(err.contains("no way from here to --broadcast 203.0.113.255:7301"), "{err}");

    // The port is taken by `wgo serve`: use it with --collector; nothing was sent.
    let side = c.bed.side_cgroup("serve").unwrap();
    let mut serve = c.bed.node("node1").command_in(wgo(), Some(&side)).unwrap();
    serve.arg("serve").arg("--secret-file").arg(&c.secret_file).args(["--listen", &c.collector_addr(), "--incidents"]);
    serve.arg(c.dir.join("incidents")).env("WGO_LOG", "info");
    let serve = WgoProcess::spawn(&mut serve, "serving incidents", Duration::from_secs(10)).unwrap();
    let mut cmd = c.collector_command("trigger", &c.dir.join("taken"), &c.collector_addr(), &c.names(), "8");
    cmd.args(["--broadcast", &format!("{}:{TRIGGER_PORT}", wgo_tests::testbed::BROADCAST_V4)]);
    let res = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success());
    assert!(err.contains(&format!("give `--collector {}`", c.collector_addr())), "{err}");
    assert!(!err.contains("sending"), "nothing is sent, or said to be, before the port is bound: {err}");
    // (No check that the agents heard nothing: after a fixed wait it could pass without
    // testing anything. The trigger's own log says whether it sent.)
    for a in agents {
        let (status, _, err) = a.stop(Duration::from_secs(10)).unwrap();
        assert!(status.success(), "{err}");
    }
    serve.stop(Duration::from_secs(10)).unwrap();
}

/// The README's "cluster on one box", its blocks run as written: `my-app N` is the chatter
/// app as node N; CG, SPOOL and SECRET point into this test's directories.
#[test]
fn the_readme_s_cluster_on_one_box_runs_as_written() {
    use std::os::unix::fs::PermissionsExt;
    require_root();
    let readme = std::fs::read_to_string(wgo_tests::bins::root().join("README.md")).unwrap();
    let section = readme.split("### Your cluster on one box").nth(1).expect("the README's recipe").split("\n## ").next().unwrap();
    let blocks: Vec<&str> = section.split("```sh\n").skip(1).map(|b| b.split("```").next().unwrap()).collect();
    assert_eq!(blocks.len(), 3, "setup, trigger, take-down: {section}");
    let dir = tempdir("one-box");
    let cg = wgo::node::cgroup::cgroup2_mount().unwrap().join(format!("wgo-box-{}", std::process::id()));
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let app = bin.join("my-app");
    std::fs::write(
        &app,
        format!(
            "#!/bin/sh\npeers=\"\"\nfor j in 1 2 3; do [ $j = $1 ] || peers=\"$peers${{peers:+,}}10.77.0.$j:7000\"; done\nexec {} chatter --bind 0.0.0.0:7000 --peers \"$peers\" --interval-ms 10\n",
            wgo_tests::bins::peer().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}:{}", bin.display(), wgo().parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let secret = dir.join("etc-wgo").join("secret");
    let sh = |block: &str| {
        let mut cmd = Command::new("sh");
        cmd.arg("-ec").arg(block).current_dir(&dir).env("PATH", &path).env("CG", &cg).env("SPOOL", &dir).env("SECRET", &secret);
        cmd.env("WGO_LOG", "info");
        cmd
    };

    // Whatever happens, the processes go and the take-down runs.
    struct TakeDown<'a>(&'a Path, Command);
    impl Drop for TakeDown<'_> {
        fn drop(&mut self) {
            for i in 1..=3 {
                for g in [format!("node{i}"), format!("agent{i}")] {
                    let g = self.0.join(g);
                    let _ = std::fs::write(g.join("cgroup.kill"), "1");
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while std::fs::read_to_string(g.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty()) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
            let _ = self.1.status();
        }
    }
    let _down = TakeDown(&cg, sh(blocks[2]));

    let log = dir.join("setup.log");
    let status = sh(blocks[0])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(dir.join("setup.out")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    let setup_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{}", setup_log());
    // Step 2 made the secret private, its directory too.
    assert_eq!(std::fs::metadata(secret.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
    wait_for("three agents recording", Duration::from_secs(30), || setup_log().matches("waiting for a trigger").count() == 3);
    std::thread::sleep(Duration::from_secs(1)); // some traffic to record

    // `ip netns exec` hides the cgroup2 mount: the error says so and names the way.
    let under = Command::new("ip")
        .args(["netns", "exec", "box1"])
        .arg(wgo())
        .args(["record", "--duration", "1", "--out"])
        .arg(dir.join("x.pcapng"))
        .arg("--cgroup")
        .arg(cg.join("node1"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&under.stderr);
    assert!(!under.status.success() && err.contains("no cgroup2 filesystem") && err.contains("nsenter --net"), "{err}");

    let out = sh(blocks[1]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}\n{}", setup_log());
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("incident/manifest.json")).unwrap()).unwrap();
    assert_eq!(m["complete"], true, "{m}");
    assert!(stdout.contains("\n3 nodes, "), "{stdout}");
    let matched: usize = stdout.split(" messages matched").next().and_then(|l| l.rsplit(' ').next()).and_then(|n| n.parse().ok()).unwrap();
    assert!(matched > 50, "{stdout}");
    for i in 1..=3 {
        assert!(dir.join(format!("spool-node{i}")).is_dir(), "one spool per agent");
    }
}

/// The bytes waiting in the node's trigger socket(s) (UDP port TRIGGER_PORT, v4 and v6),
/// from /proc/net/udp{,6} as seen inside the node; None if no such socket.
fn trigger_queue(node: &wgo_tests::testbed::Node) -> Option<u64> {
    node.in_netns(|| {
        let port = format!(":{TRIGGER_PORT:04X}");
        let mut total = None;
        for table in ["udp", "udp6"] {
            // thread-self: /proc/self/net would show the main thread's namespace.
            let text = std::fs::read_to_string(format!("/proc/thread-self/net/{table}")).unwrap_or_default();
            for l in text.lines().skip(1) {
                let f: Vec<&str> = l.split_whitespace().collect();
                if f.len() > 4 && f[1].ends_with(&port) {
                    let rx = f[4].split_once(':').and_then(|(_, rx)| u64::from_str_radix(rx, 16).ok())?;
                    total = Some(total.unwrap_or(0) + rx);
                }
            }
        }
        total
    })
    .unwrap()
}
