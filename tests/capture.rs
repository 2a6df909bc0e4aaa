//! Root integration tests for `wgo record`: real packets in real namespaces, read back
//! with tshark. Run by `cargo xtask test` (feature `bpf-tests`).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use wgo_tests::bins::{peer, wgo};
use wgo_tests::helpers::*;
use wgo_tests::testbed::{Testbed, run};

#[test]
fn records_udp_tcp_icmp_over_ipv4_and_ipv6_in_both_directions() {
    require_root();
    let dir = tempdir("protocols");
    let bed = Testbed::new(2).unwrap();
    let (n1, n2) = (bed.node("node1"), bed.node("node2"));
    let _udp = n2.spawn(n2.command(peer()).unwrap().args(["udp-echo", "--bind", "[::]:7000"])).unwrap();
    let _tcp = n2.spawn(n2.command(peer()).unwrap().args(["tcp-echo", "--bind", "[::]:7001"])).unwrap();
    // node1 serves too, so that it also receives requests and sends replies.
    let _srv = n1.spawn(n1.command(peer()).unwrap().args(["udp-echo", "--bind", "[::]:7100"])).unwrap();
    let outside = bed.side_cgroup("outside").unwrap();

    let out = dir.join("node1.pcapng");
    let rec = start_record(n1, &out, &["--snaplen", "64", "--ring-seconds", "120"]);
    std::thread::sleep(Duration::from_millis(200));
    let v4 = |port: u16| format!("{}:{port}", n2.ipv4);
    let v6 = |port: u16| format!("[{}]:{port}", n2.ipv6);
    for to in [v4(7000), v6(7000)] {
        run(n1.command(peer()).unwrap().args(["udp-request", "--to", &to, "--count", "3", "--size", "100", "--tag", "TASK"])).unwrap();
        // The same traffic from outside the cgroup must not be recorded.
        run(n1.command_in(peer(), Some(&outside)).unwrap().args(["udp-request", "--to", &to, "--count", "3", "--tag", "OUTSIDE"])).unwrap();
    }
    for to in [v4(7001), v6(7001)] {
        run(n1.command(peer()).unwrap().args(["tcp-send", "--to", &to, "--bytes", "3000"])).unwrap();
    }
    run(n1.command("ping").unwrap().args(["-c", "2", "-i", "0.2", &n2.ipv4.to_string()])).unwrap();
    run(n1.command("ping").unwrap().args(["-6", "-c", "2", "-i", "0.2", &n2.ipv6.to_string()])).unwrap();
    for to in [format!("{}:7100", n1.ipv4), format!("[{}]:7100", n1.ipv6)] {
        run(n2.command(peer()).unwrap().args(["udp-request", "--to", &to, "--count", "2", "--size", "40", "--tag", "INBOUND"])).unwrap();
    }
    assert!(attached_programs(&n1.cgroup).contains("wgo_ingress"), "programs attached while recording");
    let (status, stdout, stderr) = rec.stop(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "wgo record failed: {stderr}");
    assert!(stdout.contains("wrote"), "{stdout}");
    assert!(!attached_programs(&n1.cgroup).contains("wgo_"), "programs detached on exit");
    // A dump holds payload bytes: only its owner may read it.
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&out).unwrap().permissions()) & 0o777;
    assert_eq!(mode, 0o600, "dump mode {mode:o}");

    let pkts = tshark(&out);
    let (a1, a2) = (n1.ipv4.to_string(), n2.ipv4.to_string());
    let (b1, b2) = (n1.ipv6.to_string(), n2.ipv6.to_string());
    let starts = |p: &Tshark, s: &str| p.payload.starts_with(s.as_bytes());

    // UDP requests out, echoes in, with exact lengths and the snaplen cut.
    for (src, dst, l3) in [(&a1, &a2, 20), (&b1, &b2, 40)] {
        let reqs: Vec<_> =
            pkts.iter().filter(|p| p.outbound && p.proto == "UDP" && &p.src == src && &p.dst == dst && p.dport == Some(7000)).collect();
        let reps: Vec<_> =
            pkts.iter().filter(|p| !p.outbound && p.proto == "UDP" && &p.src == dst && &p.dst == src && p.sport == Some(7000)).collect();
        assert_eq!(reqs.len(), 3, "UDP requests {src} -> {dst}: {reqs:?}");
        assert_eq!(reps.len(), 3, "UDP replies {dst} -> {src}: {reps:?}");
        for set in [&reqs, &reps] {
            let mut tags: Vec<String> = set.iter().map(|p| String::from_utf8_lossy(&p.payload[..8]).into_owned()).collect();
            tags.sort();
            assert_eq!(tags, ["TASK #0 ", "TASK #1 ", "TASK #2 "], "payloads {src} <-> {dst}");
            for p in set.iter() {
                assert_eq!(p.len, l3 + 8 + 100, "{p:?}");
                assert_eq!(p.cap_len, l3 + 8 + 64, "snaplen 64 keeps 64 payload bytes: {p:?}");
                assert_eq!(p.payload.len(), 64);
            }
        }
    }
    // Node1 as a server: requests in, replies out.
    for (src, dst) in [(&a2, &a1), (&b2, &b1)] {
        let ins =
            pkts.iter().filter(|p| !p.outbound && &p.src == src && &p.dst == dst && p.dport == Some(7100) && starts(p, "INBOUND")).count();
        let outs =
            pkts.iter().filter(|p| p.outbound && &p.src == dst && &p.dst == src && p.sport == Some(7100) && starts(p, "INBOUND")).count();
        assert_eq!((ins, outs), (2, 2), "server side over {src}");
    }
    // TCP: a handshake and the stream's bytes, both ways.
    for (src, dst) in [(&a1, &a2), (&b1, &b2)] {
        let out_tcp: Vec<_> = pkts.iter().filter(|p| p.outbound && p.proto == "TCP" && &p.src == src && &p.dst == dst).collect();
        let in_tcp: Vec<_> = pkts.iter().filter(|p| !p.outbound && p.proto == "TCP" && &p.src == dst && &p.dst == src).collect();
        assert!(out_tcp.iter().any(|p| p.tcp_flags == Some(0x002)), "SYN out over {src}");
        assert!(in_tcp.iter().any(|p| p.tcp_flags == Some(0x012)), "SYN-ACK in over {src}");
        assert!(out_tcp.iter().any(|p| starts(p, "wgo-tcp-")), "data out over {src}");
        assert!(in_tcp.iter().any(|p| starts(p, "wgo-tcp-")), "echoed data in over {src}");
    }
    // ICMP echo request out, reply in, both families.
    for (src, dst, req, rep) in [(&a1, &a2, 8, 0), (&b1, &b2, 128, 129)] {
        let reqs = pkts.iter().filter(|p| p.outbound && &p.src == src && &p.dst == dst && p.icmp_type == Some(req)).count();
        let reps = pkts.iter().filter(|p| !p.outbound && &p.src == dst && &p.dst == src && p.icmp_type == Some(rep)).count();
        assert_eq!((reqs, reps), (2, 2), "ICMP echo over {src}");
    }
    // Traffic from outside the cgroup never appears.
    assert!(!pkts.iter().any(|p| starts(p, "OUTSIDE")), "outside traffic was recorded");
    // Per-CPU sequence numbers are gap-free from 0 when nothing was dropped.
    let stats = dump_stats(&out);
    assert_eq!(stats.isb_drops, 0);
    assert_eq!(stats.node, "node1");
    let mut per_cpu: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for p in &pkts {
        per_cpu.entry(p.cpu).or_default().push(p.seq);
    }
    for (cpu, mut seqs) in per_cpu {
        seqs.sort_unstable();
        assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>(), "cpu {cpu} sequence numbers");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn tiny_kernel_ring_under_a_flood_counts_drops_and_keeps_recording() {
    require_root();
    let dir = tempdir("overflow");
    let bed = Testbed::new(2).unwrap();
    let (n1, n2) = (bed.node("node1"), bed.node("node2"));
    let _echo = n2.spawn(n2.command(peer()).unwrap().args(["udp-echo", "--bind", "0.0.0.0:7000"])).unwrap();
    let out = dir.join("flood.pcapng");
    let rec = start_record(n1, &out, &["--kernel-ring-bytes", "4096", "--ring-seconds", "120"]);
    let to = format!("{}:7000", n2.ipv4);
    run(n1.command(peer()).unwrap().args(["udp-flood", "--to", &to, "--duration", "3", "--size", "200"])).unwrap();
    // Drops are reported on stderr while it runs (every second), not only at the end.
    wgo_tests::cluster::wait_for("drops reported on stderr while running", Duration::from_secs(15), || rec.stderr().contains("dropped"));
    // Still recording after the flood.
    run(n1.command(peer()).unwrap().args(["udp-request", "--to", &to, "--count", "3", "--tag", "AFTER"])).unwrap();
    let (status, stdout, stderr) = rec.stop(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("LOST: kernel ring dropped"), "{stdout}");

    let stats = dump_stats(&out);
    assert!(stats.isb_drops > 0, "the statistics block counts drops");
    let pkts = tshark(&out);
    assert!(pkts.iter().filter(|p| p.payload.starts_with(b"AFTER")).count() >= 3, "recording went on after the flood");
    // Every drop left a gap in its CPU's sequence numbers (or came after its last record).
    let mut per_cpu: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for p in &pkts {
        let e = per_cpu.entry(p.cpu).or_insert((0, 0));
        e.0 = e.0.max(p.seq + 1);
        e.1 += 1;
    }
    let gaps: u64 = per_cpu.values().map(|(top, n)| top - n).sum();
    assert!(gaps > 0 && gaps <= stats.isb_drops, "gaps {gaps}, drops {}", stats.isb_drops);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn peak_memory_stays_within_ring_bytes_under_a_long_flood() {
    require_root();
    let dir = tempdir("memory");
    let bed = Testbed::new(2).unwrap();
    let (n1, n2) = (bed.node("node1"), bed.node("node2"));
    let _echo = n2.spawn(n2.command(peer()).unwrap().args(["udp-echo", "--bind", "0.0.0.0:7000"])).unwrap();
    let ring_mib = 32u64;
    let kernel_ring_mib = 4u64;
    let out = dir.join("memory.pcapng");
    let rec = start_record(n1, &out, &["--ring-bytes", &(ring_mib << 20).to_string(), "--ring-seconds", "600"]);
    let to = format!("{}:7000", n2.ipv4);
    run(n1.command(peer()).unwrap().args(["udp-flood", "--to", &to, "--duration", "8", "--size", "64"])).unwrap();
    let (status, _, stderr) = rec.stop(Duration::from_secs(120)).unwrap();
    assert!(status.success(), "{stderr}");
    let stats = dump_stats(&out);
    assert!(stats.evicted_by_size > 0, "the flood must overfill the ring for this test to mean anything");
    let peak_kib: u64 = stderr
        .lines()
        .find_map(|l| l.split("peak memory ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no peak memory line: {stderr}"));
    // Fixed overhead: the binary and its libraries, plus each CPU's mmapped kernel ring.
    let cpus = wgo::node::capture::possible_cpus() as u64;
    let bound_kib = (ring_mib + kernel_ring_mib * cpus + 32) * 1024;
    println!("peak RSS {peak_kib} KiB with a {ring_mib} MiB ring ({} packets kept); bound {bound_kib} KiB", stats.packets);
    assert!(peak_kib <= bound_kib, "peak RSS {peak_kib} KiB exceeds ring + overhead {bound_kib} KiB");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_invocations_fail_clearly() {
    require_root();
    let dir = tempdir("errors");
    let out = dir.join("x.pcapng");
    let record = |args: &[&str]| {
        let o = Command::new(wgo()).arg("record").args(args).arg("--out").arg(&out).output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (code, err) = record(&["--cgroup", "/sys/fs/cgroup/does-not-exist-wgo", "--duration", "1"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("does not exist"), "{err}");

    let (code, err) = record(&["--cgroup", "/tmp", "--duration", "1"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("not a cgroup"), "{err}");

    let (code, err) = record(&["--cgroup", "/", "--snaplen", "257"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("257") && err.contains("snaplen"), "{err}");

    // A cgroup v1 hierarchy, where the host has one (hybrid layout).
    let v1 = ["/sys/fs/cgroup/freezer", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/systemd"]
        .into_iter()
        .find(|p| std::path::Path::new(p).join("cgroup.procs").exists() && !std::path::Path::new(p).join("cgroup.controllers").exists());
    match v1 {
        Some(p) => {
            let (code, err) = record(&["--cgroup", p, "--duration", "1"]);
            assert_ne!(code, Some(0));
            assert!(err.contains("cgroup v1"), "{err}");
        }
        None => println!("skipping the cgroup v1 check: this host mounts no v1 hierarchy"),
    }

    // Not root: run as nobody.
    let bed = Testbed::new(1).unwrap();
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(wgo())
        .args(["record", "--cgroup"])
        .arg(&bed.nodes[0].cgroup)
        .args(["--duration", "1", "--out", "/tmp/wgo-nobody.pcapng"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0));
    assert!(err.contains("must run as root"), "{err}");
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn report_on_real_captures_finds_one_shared_clock_and_causal_order() {
    require_root();
    let dir = tempdir("report");
    let bed = Testbed::new(3).unwrap();
    let servers: Vec<_> = bed
        .nodes
        .iter()
        .flat_map(|n| {
            [
                n.spawn(n.command(peer()).unwrap().args(["udp-echo", "--bind", "[::]:7000"])).unwrap(),
                n.spawn(n.command(peer()).unwrap().args(["tcp-echo", "--bind", "[::]:7001"])).unwrap(),
            ]
        })
        .collect();
    // A plain tcpdump capture of node1's interface too, converted to pcapng (one node per file).
    let tcpdump_dir = tempdir("report-tcpdump");
    let pcap = tcpdump_dir.join("node1.pcap");
    let tcpdump = wgo_tests::testbed::ChildGuard::from(
        Command::new("ip")
            .args(["netns", "exec", &bed.nodes[0].netns, "tcpdump", "-q", "-U", "-i", "eth0", "-w"])
            .arg(&pcap)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));
    record_all(&bed, &dir, || {
        for a in &bed.nodes {
            for b in bed.nodes.iter().filter(|b| b.name != a.name) {
                run(a.command(peer()).unwrap().args(["udp-request", "--to", &format!("{}:7000", b.ipv4), "--count", "20", "--tag", "REQ"]))
                    .unwrap();
                run(a.command(peer()).unwrap().args(["tcp-send", "--to", &format!("[{}]:7001", b.ipv6), "--bytes", "50000"])).unwrap();
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    tcpdump.signal(libc::SIGINT);
    drop(tcpdump);
    drop(servers);
    let json = dir.join("report.json");
    let out = Command::new(wgo()).arg("report").arg(&dir).arg("--json").arg(&json).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    println!("{}", String::from_utf8_lossy(&out.stdout));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for n in nodes {
        let off = n["offset_ns"].as_i64().unwrap();
        let unc = n["uncertainty_ns"].as_i64().expect("every node's clock is estimated");
        // One machine, one clock: the truth is 0, and it must lie within the uncertainty.
        assert!(off.abs() <= unc, "{}: offset {off} ns outside ± {unc} ns of the true 0", n["name"]);
        assert!(unc < 5_000_000, "{}: uncertainty {unc} ns is not near zero", n["name"]);
        assert_eq!(n["quality"], "accurate");
    }
    let events = v["events"].as_array().unwrap();
    let mut pos = std::collections::HashMap::new();
    for (k, e) in events.iter().enumerate() {
        pos.insert(e["id"].as_u64().unwrap(), (k, e["t_raw_ns"].as_i64().unwrap(), e["t_ns"].as_i64().unwrap()));
    }
    let messages = v["messages"].as_array().unwrap();
    assert!(messages.len() > 200, "{} messages matched", messages.len());
    for m in messages {
        let (s, r) = (pos[&m["send"].as_u64().unwrap()], pos[&m["recv"].as_u64().unwrap()]);
        assert!(r.0 > s.0, "receive ordered before its send: {m}");
        assert!(r.1 >= s.1, "receive before its send on the shared clock: {m}");
        assert!(r.2 >= s.2, "corrected receive time before its send: {m}");
    }
    let _ = std::fs::remove_dir_all(dir);

    // The tcpdump file: Ethernet frames, no direction flags; wgo infers node1's address.
    let ng = tcpdump_dir.join("node1-tcpdump.pcapng");
    run(Command::new("editcap").args(["-F", "pcapng"]).arg(&pcap).arg(&ng)).unwrap();
    let json = tcpdump_dir.join("r.json");
    let out = Command::new(wgo()).arg("report").arg(&ng).arg("--json").arg(&json).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let events = v["events"].as_array().unwrap();
    let ip1 = bed.nodes[0].ipv4.to_string();
    let sends = events.iter().filter(|e| e["dir"] == "send" && e["src"].as_str().unwrap().starts_with(&format!("{ip1}:"))).count();
    let recvs = events.iter().filter(|e| e["dir"] == "recv" && e["dst"].as_str().unwrap().starts_with(&format!("{ip1}:"))).count();
    assert!(sends >= 40 && recvs >= 40, "directions inferred from node1's address: {sends} sends, {recvs} receives");
    assert!(events.iter().all(|e| e["seq"].is_null()), "tcpdump has no sequence numbers");
    let _ = std::fs::remove_dir_all(tcpdump_dir);
}

/// Any IP protocol of the cgroup is recorded, not only UDP, TCP and ICMP: raw sockets of an
/// experimental protocol (253, RFC 3692) and of VRRP (112) carry requests and echoes between
/// two recorded nodes. Each packet is in its node's dump with its IP header and payload (read
/// by tshark), and wgo matches every receive to its send (by IP id, length and payload), of
/// the same protocol, named in the JSON where it has a name.
#[test]
fn records_and_matches_packets_of_any_ip_protocol() {
    require_root();
    let dir = tempdir("ip-proto");
    let bed = Testbed::new(2).unwrap();
    let (n1, n2) = (bed.node("node1"), bed.node("node2"));
    const COUNT: usize = 5;
    const PROTOS: [(u8, &str, &str); 2] = [(253, "IP 253", "RAW"), (112, "VRRP", "VRP")];
    record_all(&bed, &dir, || {
        for (proto, _, tag) in PROTOS {
            let proto = proto.to_string();
            let mut echo =
                n2.spawn(n2.command(peer()).unwrap().args(["raw-echo", "--proto", &proto]).stdout(std::process::Stdio::piped())).unwrap();
            let mut ready = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(echo.child().stdout.as_mut().unwrap()), &mut ready).unwrap();
            assert_eq!(ready.trim(), "ready");
            let to = n2.ipv4.to_string();
            run(n1.command(peer()).unwrap().args([
                "raw-request",
                "--to",
                &to,
                "--proto",
                &proto,
                "--count",
                &COUNT.to_string(),
                "--tag",
                tag,
            ]))
            .unwrap();
        }
    });
    let (a1, a2) = (n1.ipv4.to_string(), n2.ipv4.to_string());
    for (_, name, tag) in PROTOS {
        for (node, local, peer_addr) in [("node1", &a1, &a2), ("node2", &a2, &a1)] {
            let pkts: Vec<Tshark> = tshark(&dir.join(format!("{node}.pcapng")))
                .into_iter()
                .filter(|p| p.payload.starts_with(format!("{tag} #").as_bytes()))
                .collect();
            let out = pkts.iter().filter(|p| p.outbound && &p.src == local && &p.dst == peer_addr).count();
            let inb = pkts.iter().filter(|p| !p.outbound && &p.src == peer_addr && &p.dst == local).count();
            assert!(out >= COUNT && inb >= COUNT, "{node}: {out} sent, {inb} received of {name}: {pkts:?}");
            for p in &pkts {
                assert_eq!(
                    (p.len, p.cap_len, p.payload.len()),
                    (20 + 32, 20 + 32, 32),
                    "{node}: the IP header and the whole payload: {p:?}"
                );
                assert_eq!((p.sport, p.dport), (None, None));
            }
        }
    }
    let json = dir.join("report.json");
    let out = Command::new(wgo()).arg("report").arg(&dir).arg("--json").arg(&json).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let events: std::collections::HashMap<u64, &serde_json::Value> =
        v["events"].as_array().unwrap().iter().map(|e| (e["id"].as_u64().unwrap(), e)).collect();
    let sent_by: std::collections::HashMap<u64, u64> =
        v["messages"].as_array().unwrap().iter().map(|m| (m["recv"].as_u64().unwrap(), m["send"].as_u64().unwrap())).collect();
    for (proto, name, _) in PROTOS {
        let raw = |e: &serde_json::Value| e["proto"] == name && e["ip_proto"] == proto && [&a1, &a2].iter().any(|a| e["src"] == a.as_str());
        let mut matched = [0; 2];
        for e in events.values().filter(|e| raw(e) && e["dir"] == "recv") {
            let s = sent_by.get(&e["id"].as_u64().unwrap()).unwrap_or_else(|| panic!("a receive of {name} left unmatched: {e}"));
            let s = events[s];
            assert!(raw(s) && s["dir"] == "send" && s["src"] == e["src"] && s["dst"] == e["dst"] && s["node"] != e["node"], "{s} → {e}");
            matched[(e["node"] == "node2") as usize] += 1;
        }
        assert!(matched[0] >= COUNT && matched[1] >= COUNT, "{name}: matched receives on node1, node2: {matched:?}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_kernel_programs_rare_conditions_reach_the_log_at_debug_level() {
    require_root();
    let dir = tempdir("ebpf-log");
    let bed = Testbed::new(2).unwrap();
    let (n1, n2) = (bed.node("node1"), bed.node("node2"));
    // node1's recorder logs the kernel programs' conditions (debug); node2's does not (info).
    let record = |n: &wgo_tests::testbed::Node, log: &str| {
        wgo_tests::testbed::WgoProcess::spawn(
            Command::new(wgo())
                .args(["record", "--node", &n.name, "--cgroup"])
                .arg(&n.cgroup)
                .arg("--out")
                .arg(dir.join(format!("{}.pcapng", n.name)))
                .env("WGO_LOG", log),
            "recording",
            Duration::from_secs(15),
        )
        .unwrap()
    };
    let (debug, info) = (record(n1, "info,wgo::ebpf=debug"), record(n2, "info"));
    // "TCP" packets of a few bytes from a raw socket: no TCP header to parse, both ways.
    let mut echo = n2.spawn(n2.command(peer()).unwrap().args(["raw-echo", "--proto", "6"]).stdout(std::process::Stdio::piped())).unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(echo.child().stdout.as_mut().unwrap()), &mut ready).unwrap();
    run(n1.command(peer()).unwrap().args(["raw-request", "--to", &n2.ipv4.to_string(), "--proto", "6", "--size", "4", "--count", "3"]))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (_, _, debug_log) = debug.stop(Duration::from_secs(30)).unwrap();
    let (_, _, info_log) = info.stop(Duration::from_secs(30)).unwrap();
    assert!(debug_log.contains("could not be parsed (its headers end early)"), "{debug_log}");
    assert!(!info_log.contains("could not be parsed"), "at info level the programs log nothing: {info_log}");
    let _ = std::fs::remove_dir_all(dir);
}
