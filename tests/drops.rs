//! Kernel drop evidence (root): where a lost packet died. Two bridged nodes, each recorded
//! with `wgo record`; node1 sends datagrams to ports on node2 arranged so that each port's
//! datagrams die one way, and the report must give each its cause, with the true counts.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use wgo_tests::bins::{peer, wgo};
use wgo_tests::helpers::*;
use wgo_tests::testbed::{Testbed, run};

const SENT: usize = 40;

/// The report's JSON, and its summary.
fn report(dir: &Path) -> (serde_json::Value, String) {
    let json = dir.join("report.json");
    let out = run(Command::new(wgo()).arg("report").arg("--json").arg(&json).arg(dir.join("node1.pcapng")).arg(dir.join("node2.pcapng")))
        .unwrap();
    (serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Lost messages by (destination port, cause, reason).
fn losses(v: &serde_json::Value) -> BTreeMap<(u16, String, String), usize> {
    let dst: BTreeMap<u64, String> =
        v["events"].as_array().unwrap().iter().map(|e| (e["id"].as_u64().unwrap(), e["dst"].as_str().unwrap().to_string())).collect();
    let mut out = BTreeMap::new();
    for a in v["anomalies"].as_array().unwrap().iter().filter(|a| a["kind"] == "network_loss") {
        let port: u16 = dst[&a["events"][0].as_u64().unwrap()].rsplit(':').next().unwrap().parse().unwrap();
        let cause = a["cause"].as_str().unwrap().to_string();
        let reason = a["reason"].as_str().unwrap_or("").to_string();
        *out.entry((port, cause, reason)).or_default() += 1;
    }
    out
}

/// UDP packets of a dump that tshark shows with wgo's drop comment.
fn dropped_in(dump: &Path) -> usize {
    let out = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(dump)
        .args(["-Y", "udp && frame.comment contains \"dropped by the kernel\""])
        .output()
        .unwrap();
    assert!(out.status.success(), "tshark: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn each_lost_datagram_gets_the_cause_the_kernel_gave() {
    require_root();
    let dir = tempdir("drops");
    let bed = Testbed::new(2).unwrap();
    let (n1, n2) = (bed.node("node1"), bed.node("node2"));
    let sink = |port: u16, extra: &[&str]| {
        let mut cmd = n2.command(peer()).unwrap();
        cmd.args(["udp-sink", "--bind", &format!("0.0.0.0:{port}")]).args(extra).stdout(std::process::Stdio::piped());
        n2.spawn(&mut cmd).unwrap()
    };
    // 7201: node2's firewall drops it; 7202: node1's firewall drops it on the way out;
    // 7203: a socket with the smallest buffer that reads nothing for 3 s; 7204: nobody
    // listens; 7205: delivered.
    let _s1 = sink(7201, &["--idle-ms", "100000"]);
    let _s2 = sink(7202, &["--idle-ms", "100000"]);
    let tiny = sink(7203, &["--rcvbuf", "1", "--wait-ms", "3000", "--idle-ms", "500"]);
    let _s5 = sink(7205, &["--idle-ms", "100000"]);
    n2.nft("table inet wgo_test {\n chain input {\n  type filter hook input priority 0; policy accept;\n  udp dport 7201 drop\n }\n}\n")
        .unwrap();
    n1.nft("table inet wgo_test {\n chain output {\n  type filter hook output priority 0; policy accept;\n  udp dport 7202 drop\n }\n}\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let to = |port: u16| format!("{}:{port}", n2.ipv4);
    let count = SENT.to_string();
    record_all(&bed, &dir, || {
        for port in [7201, 7202, 7204, 7205] {
            run(n1.command(peer()).unwrap().args(["udp-send", "--to", &to(port), "--count", &count, "--tag", &format!("P{port}")]))
                .unwrap();
        }
        run(n1.command(peer()).unwrap().args(["udp-send", "--to", &to(7203), "--count", "200", "--size", "400", "--interval-ms", "0"]))
            .unwrap();
        std::thread::sleep(Duration::from_secs(3));
    });
    let got: usize = {
        let out = tiny.wait_timeout(Duration::from_secs(10)).unwrap();
        String::from_utf8_lossy(&out.stdout).lines().last().unwrap().trim().parse().unwrap()
    };
    let full = 200 - got;
    println!("the tiny socket read {got} of 200 datagrams");
    assert!(full > 50, "the tiny buffer overflowed: {got} read");

    let (v, text) = report(&dir);
    println!("{text}");
    let found = losses(&v);
    let expected: BTreeMap<(u16, String, String), usize> = [
        ((7201, "receiver_kernel", "netfilter_drop"), SENT),
        ((7202, "sender_kernel", "netfilter_drop"), SENT),
        ((7203, "receiver_kernel", "socket_rcvbuff"), full),
        ((7204, "receiver_kernel", "no_socket"), SENT),
    ]
    .into_iter()
    .map(|((p, c, r), n)| ((p, c.to_string(), r.to_string()), n))
    .collect();
    assert_eq!(found, expected, "losses by port, cause and reason");
    // The sends node1's firewall stopped are in the trace, as sends.
    let out_sends =
        v["events"].as_array().unwrap().iter().filter(|e| e["dir"] == "send" && e["dst"].as_str().unwrap().ends_with(":7202")).count();
    assert_eq!(out_sends, SENT);
    // While node1 sent only to the firewalled ports, nothing it sent reached node2: a lost
    // message is lost whatever dropped it, so that is a partition, and the firewalls of both
    // ends (40 each) are where its messages died. The drops that no cut explains keep their
    // own findings.
    for words in [
        "partition into 2 islands {node1} | {node2}",
        "dropped by the receivers' firewalls (40)",
        "dropped by the senders' own firewalls (40)",
        "node2's receive buffer was full",
        "nothing listened on node2",
    ] {
        assert!(text.contains(words), "the findings say {words:?}:\n{text}");
    }
    assert!(!text.contains("lossy link"), "no link is blamed:\n{text}");
    // tshark reads the dumps, drops included.
    assert_eq!(dropped_in(&dir.join("node1.pcapng")), SENT);
    assert_eq!(dropped_in(&dir.join("node2.pcapng")), SENT + full + SENT);
}

#[test]
fn a_lossy_bridge_is_the_networks_doing() {
    require_root();
    let dir = tempdir("drops-bridge");
    let bed = Testbed::new(2).unwrap();
    let (n1, n2) = (bed.node("node1"), bed.node("node2"));
    let mut cmd = n2.command(peer()).unwrap();
    let _sink = n2.spawn(cmd.args(["udp-sink", "--bind", "0.0.0.0:7206", "--idle-ms", "100000"])).unwrap();
    // Requests both ways on another port, which the switch leaves alone: they tell the clocks.
    let _echo = n2.spawn(n2.command(peer()).unwrap().args(["udp-echo", "--bind", "0.0.0.0:7207"])).unwrap();
    bed.lossy_link("node1", "node2", 3, Some(7206), true).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let requests = || {
        run(n1.command(peer()).unwrap().args(["udp-request", "--to", &format!("{}:7207", n2.ipv4), "--count", "10"])).unwrap();
    };
    record_all(&bed, &dir, || {
        requests();
        run(n1.command(peer()).unwrap().args(["udp-send", "--to", &format!("{}:7206", n2.ipv4), "--count", "200", "--interval-ms", "5"]))
            .unwrap();
        requests();
        std::thread::sleep(Duration::from_millis(300));
    });
    let truth = bed.lossy_link_drops().unwrap() as usize;
    println!("the bridge dropped {truth} of 200");
    assert!(truth > 20);
    let (v, text) = report(&dir);
    let found = losses(&v);
    assert_eq!(found, [((7206, "network".to_string(), String::new()), truth)].into_iter().collect(), "{text}");
    assert!(v["anomalies"].as_array().unwrap().iter().all(|a| a["kind"] != "kernel_drop"), "no kernel dropped anything");
}

#[test]
fn drops_get_their_cause_when_the_app_starts_after_the_recorder() {
    require_root();
    let dir = tempdir("drops-late");
    let bed = Testbed::new(2).unwrap();
    let (n1, n2) = (bed.node("node1"), bed.node("node2"));
    // Both cgroups empty when recording starts (systemd starts the agent first; a
    // container's namespace is made after it).
    let recs: Vec<_> = bed
        .nodes
        .iter()
        .map(|n| (n.name.clone(), start_record(n, &dir.join(format!("{}.pcapng", n.name)), &["--ring-seconds", "120"])))
        .collect();
    // Then the app joins node2's cgroup, in node2's namespace; the recorder follows it there.
    let mut cmd = n2.command(peer()).unwrap();
    let _sink = n2.spawn(cmd.args(["udp-sink", "--bind", "0.0.0.0:7201", "--idle-ms", "100000"])).unwrap();
    // Requests both ways on another port: they tell the clocks.
    let _echo = n2.spawn(n2.command(peer()).unwrap().args(["udp-echo", "--bind", "0.0.0.0:7207"])).unwrap();
    let requests = || {
        run(n1.command(peer()).unwrap().args(["udp-request", "--to", &format!("{}:7207", n2.ipv4), "--count", "10"])).unwrap();
    };
    n2.nft("table inet wgo_test {\n chain input {\n  type filter hook input priority 0; policy accept;\n  udp dport 7201 drop\n }\n}\n")
        .unwrap();
    let rec2 = &recs.iter().find(|(n, _)| n == "node2").unwrap().1;
    let t = std::time::Instant::now();
    while !rec2.stderr().contains("recording the kernel's drops in network namespace") {
        assert!(t.elapsed() < Duration::from_secs(10), "node2's recorder never followed its app's namespace:\n{}", rec2.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    // The host's own loopback drops (a closed port on 127.0.0.1) are no node's.
    let host = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for k in 0..SENT {
        host.send_to(format!("HOST{k}").as_bytes(), "127.0.0.1:7299").unwrap();
    }
    let to = |port: u16| format!("{}:{port}", n2.ipv4);
    requests();
    for port in [7201, 7204] {
        run(n1.command(peer()).unwrap().args(["udp-send", "--to", &to(port), "--count", &SENT.to_string(), "--tag", &format!("P{port}")]))
            .unwrap();
    }
    requests();
    std::thread::sleep(Duration::from_millis(300));
    for (_, r) in recs {
        let (status, _, err) = r.stop(Duration::from_secs(30)).expect("wgo record stops");
        assert!(status.success(), "wgo record failed: {err}");
    }
    let (v, text) = report(&dir);
    let expected: BTreeMap<(u16, String, String), usize> =
        [((7201, "receiver_kernel", "netfilter_drop"), SENT), ((7204, "receiver_kernel", "no_socket"), SENT)]
            .into_iter()
            .map(|((p, c, r), n)| ((p, c.to_string(), r.to_string()), n))
            .collect();
    assert_eq!(losses(&v), expected, "losses by port, cause and reason:\n{text}");
    for node in ["node1", "node2"] {
        let loopback = tshark(&dir.join(format!("{node}.pcapng"))).iter().filter(|p| p.dst == "127.0.0.1").count();
        assert_eq!(loopback, 0, "{node}'s dump holds the host's loopback drops");
    }
}
