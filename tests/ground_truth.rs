//! Ground truth: simulated clusters with known clocks and injected faults, analysed
//! as the collector would, checked against what really happened. No root needed.

use std::collections::{BTreeSet, HashMap};

use wgo::analysis::anomalies::Kind;
use wgo::analysis::spec::Spec;
use wgo::analysis::trace::Dir;
use wgo::analysis::{Analysis, Inputs, analyze};
use wgo::report::json::{analyze_to_json, write_json};
use wgo::report::text::summary;
use wgo_tests::bins::wgo;
use wgo_tests::sim::{self, Config, SPEC, Truth};

/// Event ids by (uid, attempt) for sends and by (uid, node) for receives.
struct Ids {
    sends: HashMap<u64, Vec<u32>>,
    recvs: HashMap<(u64, usize), Vec<u32>>,
    uid: Vec<u64>,
    attempt: Vec<u32>,
}

fn ids(a: &Analysis) -> Ids {
    let t = &a.trace;
    let mut ids = Ids { sends: HashMap::new(), recvs: HashMap::new(), uid: Vec::new(), attempt: vec![0; t.events.len()] };
    for (i, e) in t.events.iter().enumerate() {
        let u = sim::uid_of(t, i);
        ids.uid.push(u);
        match e.dir {
            Dir::Send => ids.sends.entry(u).or_default().push(i as u32),
            Dir::Recv => ids.recvs.entry((u, e.node as usize)).or_default().push(i as u32),
        }
    }
    for v in ids.sends.values_mut() {
        v.sort_by_key(|&i| t.events[i as usize].t_raw);
        for (k, &i) in v.iter().enumerate() {
            ids.attempt[i as usize] = k as u32;
        }
    }
    ids
}

fn compare<T: Ord + Clone + std::fmt::Debug>(what: &str, found: &BTreeSet<T>, expected: &BTreeSet<T>) {
    let hit = found.intersection(expected).count() as f64;
    let precision = if found.is_empty() { 1.0 } else { hit / found.len() as f64 };
    let recall = if expected.is_empty() { 1.0 } else { hit / expected.len() as f64 };
    println!("{what:<16} injected {:>4}  found {:>4}  precision {precision:.3}  recall {recall:.3}", expected.len(), found.len());
    let extra: Vec<_> = found.difference(expected).take(5).collect();
    let missed: Vec<_> = expected.difference(found).take(5).collect();
    assert_eq!(found, expected, "{what}: found but not injected {extra:?}; injected but not found {missed:?}");
}

fn check(cfg: &Config) {
    let (trace, truth) = sim::generate(cfg);
    let spec = Spec::parse(SPEC, "sim.toml").unwrap();
    let a = analyze(trace, Inputs { spec: Some(spec), missing_nodes: vec![] });
    let ids = ids(&a);
    let t = &a.trace;
    println!("seed {}: {} nodes, {} events, {} messages", cfg.seed, t.nodes.len(), t.events.len(), a.matching.messages.len());
    println!("{}", summary(&a));

    // Offsets within the reported uncertainty of the truth.
    let reference = a.clocks.reference as usize;
    for (n, c) in a.clocks.nodes.iter().enumerate() {
        let unc = c.uncertainty_ns.unwrap_or_else(|| panic!("node {n} has no clock estimate"));
        let w = t.nodes[n].window;
        let mid = w.0 + (w.1 - w.0) / 2;
        let (off, drift) = truth.clocks[n];
        let t_true = truth.start_ns + ((mid - truth.start_ns - off) as f64 / (1.0 + drift)) as i64;
        let expected = sim::true_offset(&truth, n, reference, t_true);
        println!("  node{}: offset {} (truth {expected}), ± {unc}, {:?}", n + 1, c.offset_ns, c.quality);
        assert!(
            (c.offset_ns - expected).abs() <= unc,
            "node{} offset {} vs truth {expected}: off by {} > uncertainty {unc}",
            n + 1,
            c.offset_ns,
            (c.offset_ns - expected).abs()
        );
    }

    // No receive ordered before its send (UDP/broadcast and TCP split/merge).
    let mut pos = vec![0usize; t.events.len()];
    for (k, &id) in a.order.order.iter().enumerate() {
        pos[id as usize] = k;
    }
    assert_eq!(a.order.order.len(), t.events.len(), "every event is ordered");
    let mut checked = 0;
    for &(u, r) in &truth.delivered {
        let first_send = ids.sends[&u][0];
        for &rid in ids.recvs.get(&(u, r)).map(Vec::as_slice).unwrap_or(&[]) {
            assert!(pos[rid as usize] > pos[first_send as usize], "receive {rid} ordered before its send {first_send}");
            checked += 1;
        }
    }
    for (sends, recv) in &truth.tcp_pairs {
        let rid = ids.recvs[&(*recv, 1)][0];
        for s in sends {
            let sid = ids.sends[s][0];
            assert!(pos[rid as usize] > pos[sid as usize], "TCP receive {rid} ordered before send {sid}");
            checked += 1;
        }
    }
    assert!(checked > 300, "{checked}");
    // Corrected times are causally consistent, and a send is never "concurrent" with its receive.
    for &(s, r) in &a.matching.messages {
        assert!(a.order.t_ns[r as usize] >= a.order.t_ns[s as usize], "receive {r} has an earlier corrected time than send {s}");
        let g = a.order.group[s as usize];
        assert!(g == wgo::analysis::order::NO_GROUP || g != a.order.group[r as usize], "send {s} and receive {r} marked concurrent");
    }
    let concurrent = a.order.group.iter().filter(|&&g| g != wgo::analysis::order::NO_GROUP).count();
    assert!(concurrent > 0, "some unrelated events within clock uncertainty are marked concurrent");
    // Every rule edge holds: each ACK is sent after its node received the TASK.
    let mut rule_checked = 0;
    for &(task, ack) in &truth.ack_of_task {
        let ack_send = ids.sends[&ack][0];
        let worker = t.events[ack_send as usize].node as usize;
        if let Some(r) = ids.recvs.get(&(task, worker)) {
            assert!(pos[r[0] as usize] < pos[ack_send as usize], "ACK {ack_send} ordered before TASK receive {}", r[0]);
            rule_checked += 1;
        }
    }
    assert!(rule_checked > 50 && a.rule_edges >= rule_checked, "{rule_checked} rule pairs, {} rule edges", a.rule_edges);
    assert!(a.order.cycles.is_empty(), "no contradictions in a consistent scenario: {:?}", a.order.cycles);

    // Anomalies found equal the injected ones.
    let of_kind = |k: Kind| a.anomalies.iter().filter(move |x| x.kind == k);
    let found: BTreeSet<(u64, u32, usize)> = of_kind(Kind::NetworkLoss)
        .map(|x| (ids.uid[x.events[0] as usize], ids.attempt[x.events[0] as usize], x.nodes[1] as usize))
        .collect();
    // Which losses can be judged, the simulator says from its own delays and the records it
    // dropped, not the analysis: one that would have arrived while the receiver's recorder
    // lost records must not be called network loss (it may be the recorder's). The analysis
    // does not know the network's delays, and may also leave alone a loss sent up to
    // ASSUMED_MAX_DELAY_NS before such a blind spot; this allowance is the test's own, so an
    // analysis whose blind spots grew wider fails here.
    const ASSUMED_MAX_DELAY_NS: i64 = 100_000_000;
    let all: BTreeSet<(u64, u32, usize)> = truth.network_losses.iter().copied().collect();
    let unjudgeable = truth.losses_into_blind(0);
    let may_be_left = truth.losses_into_blind(ASSUMED_MAX_DELAY_NS);
    let must: BTreeSet<(u64, u32, usize)> = all.difference(&may_be_left).copied().collect();
    let may: BTreeSet<(u64, u32, usize)> = all.difference(&unjudgeable).copied().collect();
    println!(
        "  losses: {} un-judgeable {unjudgeable:?}, {} more that may be left alone",
        unjudgeable.len(),
        may_be_left.len() - unjudgeable.len()
    );
    let (extra, missed): (Vec<_>, Vec<_>) = (found.difference(&may).collect(), must.difference(&found).collect());
    println!("{:<16} injected {:>4}  found {:>4}", "network loss", all.len(), found.len());
    assert!(extra.is_empty() && missed.is_empty(), "network loss: found but not judgeable {extra:?}; judgeable but not found {missed:?}");
    for u in &truth.unrecorded_receives {
        assert!(!found.iter().any(|f| f.0 == *u), "an unrecorded receive ({u}) was called network loss");
    }
    let found: BTreeSet<usize> = of_kind(Kind::RecorderLoss).map(|x| x.nodes[0] as usize).collect();
    compare("recorder loss", &found, &truth.recorder_loss_nodes.iter().copied().collect());
    let found: BTreeSet<u64> = of_kind(Kind::Duplicate).map(|x| ids.uid[x.events[1] as usize]).collect();
    compare("duplicate", &found, &truth.duplicates.iter().copied().collect());
    let found: BTreeSet<(u64, u32)> = of_kind(Kind::Retransmission)
        .filter(|x| t.events[x.events[0] as usize].proto == wgo::analysis::trace::ProtoCode::Udp)
        .map(|x| (ids.uid[x.events[0] as usize], x.events.len() as u32))
        .collect();
    compare("retransmission", &found, &truth.retransmissions.iter().copied().collect());
    let found: BTreeSet<u64> = of_kind(Kind::RetryStorm).map(|x| ids.uid[x.events[0] as usize]).collect();
    compare("retry storm", &found, &truth.storms.iter().copied().collect());
    let found: BTreeSet<(u64, u32)> =
        of_kind(Kind::Unanswered).map(|x| (ids.uid[x.events[0] as usize], ids.attempt[x.events[0] as usize])).collect();
    compare("unanswered", &found, &truth.unanswered.iter().copied().collect());
    let parts: Vec<_> = of_kind(Kind::Partition).collect();
    let expected: BTreeSet<Vec<Vec<usize>>> = truth.partition.iter().map(|(a, b, ..)| vec![a.clone(), b.clone()]).collect();
    let found: BTreeSet<Vec<Vec<usize>>> =
        parts.iter().map(|p| p.islands.iter().map(|i| i.iter().map(|&n| n as usize).collect()).collect()).collect();
    compare("partition", &found, &expected);
    if let (Some(p), Some((_, _, p0, p1))) = (parts.first(), &truth.partition) {
        let (f0, f1) = p.span.unwrap();
        let to_ref = |t: i64| {
            t + sim::true_offset(&truth, reference, reference, t)
                + truth.clocks[reference].0
                + (truth.clocks[reference].1 * (t - truth.start_ns) as f64) as i64
        };
        let (r0, r1) = (to_ref(*p0), to_ref(*p1));
        let slack = 2 * wgo::analysis::partitions::PARTITION_WINDOW_NS;
        assert!((f0 - r0).abs() <= slack && (f1 - r1).abs() <= slack, "partition {f0}..{f1} vs truth {r0}..{r1}");
    }
    let _: &Truth = &truth;
}

/// Where the simulator's recorder gap hides losses (many, at a high drop rate), none of
/// them is called network loss, while losses elsewhere still are.
#[test]
fn losses_into_a_recorder_blind_spot_are_not_called_network_loss() {
    let mut blind_seen = 0;
    for seed in 1..=3 {
        let cfg = Config { seed, drop_rate: 0.3, partition: None, ..Config::default() };
        let (trace, truth) = sim::generate(&cfg);
        let a = analyze(trace, Inputs { spec: Some(Spec::parse(SPEC, "sim.toml").unwrap()), missing_nodes: vec![] });
        let ids = ids(&a);
        let found: BTreeSet<(u64, u32, usize)> = a
            .anomalies
            .iter()
            .filter(|x| x.kind == Kind::NetworkLoss)
            .map(|x| (ids.uid[x.events[0] as usize], ids.attempt[x.events[0] as usize], x.nodes[1] as usize))
            .collect();
        let blind = truth.losses_into_blind(0);
        println!(
            "seed {seed}: {} losses, {} found, {} into the blind spot {blind:?}",
            truth.network_losses.len(),
            found.len(),
            blind.len()
        );
        assert!(
            found.is_disjoint(&blind),
            "seed {seed}: called network loss where the recorder was blind: {:?}",
            found.intersection(&blind)
        );
        assert!(found.len() * 2 > truth.network_losses.len(), "seed {seed}: losses elsewhere are still found");
        blind_seen += blind.len();
    }
    assert!(blind_seen > 0, "some loss fell into a blind spot, or this test tests nothing");
}

#[test]
fn five_nodes_with_every_fault() {
    for seed in 1..=3 {
        check(&Config { seed, ..Config::default() });
    }
}

#[test]
fn a_partition_by_the_receivers_firewalls_is_the_same_partition_with_the_firewalls_as_its_cause() {
    use wgo::analysis::diagnosis::FindingKind;
    for seed in 1..=3 {
        let cfg = Config { seed, firewall_partition: true, ..Config::default() };
        check(&cfg);
        let (trace, _) = sim::generate(&cfg);
        let a = analyze(trace, Inputs { spec: Some(Spec::parse(SPEC, "sim.toml").unwrap()), missing_nodes: vec![] });
        let parts: Vec<_> = a.findings.iter().filter(|f| f.kind == FindingKind::Partition).collect();
        assert_eq!(parts.len(), 1, "seed {seed}: {}", summary(&a));
        let reason = parts[0].cause.and_then(|c| c.reason).map(|r| a.trace.drop_reasons[r as usize].as_str());
        assert_eq!(reason, Some("netfilter_drop"), "seed {seed}: {}", summary(&a));
        // Where most of them died comes first (the simulator's background loss may add a
        // few lost in the network, each place with its count then).
        assert!(parts[0].text.contains("messages between them were dropped by the receivers' firewalls"), "{}", parts[0].text);
        // The drops are the partition's cause, not findings of their own.
        assert!(a.findings.iter().all(|f| f.kind != FindingKind::KernelDrop), "seed {seed}: {}", summary(&a));
    }
}

#[test]
fn a_stalled_node_and_a_lossy_link_are_the_findings_and_nothing_else() {
    for seed in 1..=3 {
        let cfg =
            Config { seed, partition: None, stall: Some((3, 1_500_000_000, 2_700_000_000)), lossy: Some((0, 2, 0.3)), ..Config::default() };
        let (trace, truth) = sim::generate(&cfg);
        let a = analyze(trace, Inputs { spec: Some(Spec::parse(SPEC, "sim.toml").unwrap()), missing_nodes: vec![] });
        println!("{}", summary(&a));
        use wgo::analysis::diagnosis::FindingKind;
        let of = |k: FindingKind| a.findings.iter().filter(move |f| f.kind == k).collect::<Vec<_>>();
        // The stall: node4, over most of its true span (reference clock ≈ true time plus the reference's offset).
        let stalls = of(FindingKind::StalledNode);
        assert_eq!(stalls.len(), 1, "seed {seed}: {stalls:?}");
        assert_eq!(stalls[0].nodes, vec![3]);
        let (k, t0, t1) = truth.stall.unwrap();
        assert_eq!(k, 3);
        let reference = a.clocks.reference as usize;
        let (f0, f1) = stalls[0].span.unwrap();
        let to_true = |t: i64| t - sim::true_offset(&truth, reference, reference, t) - truth.clocks[reference].0;
        let overlap = (to_true(f1).min(t1) - to_true(f0).max(t0)).max(0);
        assert!(overlap * 10 >= (t1 - t0) * 8, "seed {seed}: stall found over {f0}..{f1}, truth {t0}..{t1}");
        // The lossy link, and no other.
        let lossy = of(FindingKind::LossyLink);
        assert_eq!(lossy.iter().map(|f| f.links.clone()).collect::<Vec<_>>(), vec![vec![(0, 2)]], "seed {seed}: {lossy:?}");
        assert!(of(FindingKind::Partition).is_empty(), "seed {seed}: no partition");
    }
}

#[test]
fn data_sent_after_the_peer_closed_is_a_closed_connection_not_a_loss() {
    let cfg = Config { nodes: 3, seed: 5, partition: None, drop_rate: 0.0, closed_connection: true, ..Config::default() };
    let (trace, truth) = sim::generate(&cfg);
    let a = analyze(trace, Inputs { spec: Some(Spec::parse(SPEC, "sim.toml").unwrap()), missing_nodes: vec![] });
    let uid = |id: &u32| sim::uid_of(&a.trace, *id as usize);
    let closed: Vec<u64> = a.anomalies.iter().filter(|x| x.kind == Kind::ClosedConnection).flat_map(|x| x.events.iter().map(uid)).collect();
    assert_eq!(closed, truth.closed_sends, "{}", summary(&a));
    let lost: Vec<u64> = a.anomalies.iter().filter(|x| x.kind == Kind::NetworkLoss).flat_map(|x| x.events.iter().map(uid)).collect();
    assert!(lost.iter().all(|u| !truth.closed_sends.contains(u)), "a closed connection's data is no network loss: {lost:?}");
    assert!(a.findings.iter().all(|f| f.kind != wgo::analysis::diagnosis::FindingKind::LossyLink), "{}", summary(&a));
    // In the JSON every lost send says where it died: here the network, or a closed connection.
    let mut json = Vec::new();
    write_json(&a, &mut json).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    for x in v["anomalies"].as_array().unwrap() {
        match x["kind"].as_str().unwrap() {
            "closed_connection" => assert_eq!(x["cause"], "closed_connection"),
            "network_loss" => assert_eq!(x["cause"], "network", "no kernel dropped anything in the simulator"),
            _ => {}
        }
    }
}

#[test]
fn three_nodes_no_partition_heavier_loss() {
    check(&Config { nodes: 3, seed: 7, drop_rate: 0.08, partition: None, ..Config::default() });
}

#[test]
fn contradicting_rule_is_reported_as_a_cycle_naming_it() {
    // A wrong rule: "a TASK is received only after its ACK was received" contradicts the traffic.
    let bad = format!(
        "{SPEC}\n[[rule]]\nname = \"wrong-way\"\nevent = {{ message = \"TASK\", dir = \"recv\" }}\nafter = {{ message = \"ACK\", dir = \"recv\" }}\nkey = [\"task\"]\n"
    );
    let (trace, _) = sim::generate(&Config { nodes: 3, seed: 11, partition: None, duration_ns: 1_500_000_000, ..Config::default() });
    let n = trace.events.len();
    let a = analyze(trace, Inputs { spec: Some(Spec::parse(&bad, "bad.toml").unwrap()), missing_nodes: vec![] });
    assert_eq!(a.order.order.len(), n, "every event is still ordered");
    assert!(!a.order.cycles.is_empty(), "the contradiction is found");
    let texts: Vec<&str> = a.anomalies.iter().filter(|x| x.kind == Kind::Contradiction).map(|x| x.text.as_str()).collect();
    assert!(!texts.is_empty());
    for t in &texts {
        assert!(t.contains("rule wrong-way"), "names the rule: {t}");
        assert!(t.contains("ignored") && t.contains("(rule wrong-way)"), "drops the rule edge, not a message: {t}");
    }
    println!("{}", texts[0]);
}

#[test]
fn json_written_while_ordering_equals_json_written_after() {
    let contradicting = format!(
        "{SPEC}\n[[rule]]\nname = \"wrong-way\"\nevent = {{ message = \"TASK\", dir = \"recv\" }}\nafter = {{ message = \"ACK\", dir = \"recv\" }}\nkey = [\"task\"]\n"
    );
    // Long enough for several batches of placed events (4096 each); one with cycles broken mid-order.
    for (cfg, spec) in [
        (Config { seed: 5, heartbeat_every_ns: 15_000_000, ..Config::default() }, SPEC.to_string()),
        (Config { nodes: 3, seed: 11, partition: None, duration_ns: 1_500_000_000, ..Config::default() }, contradicting),
    ] {
        let spec = || Some(Spec::parse(&spec, "sim.toml").unwrap());
        let mut streamed = Vec::new();
        let a = analyze_to_json(sim::generate(&cfg).0, Inputs { spec: spec(), missing_nodes: vec![] }, &mut streamed).unwrap();
        let mut after = Vec::new();
        write_json(&analyze(sim::generate(&cfg).0, Inputs { spec: spec(), missing_nodes: vec![] }), &mut after).unwrap();
        println!("{} events, {} bytes of JSON, {} cycles", a.trace.events.len(), streamed.len(), a.order.cycles.len());
        assert!(a.trace.events.len() > 9_000 || !a.order.cycles.is_empty(), "several batches of placed events");
        assert!(streamed == after, "the two JSON reports differ");
        let v: serde_json::Value = serde_json::from_slice(&streamed).expect("valid JSON");
        let ids: Vec<u64> = v["events"].as_array().unwrap().iter().map(|e| e["id"].as_u64().unwrap()).collect();
        let order: Vec<u64> = a.order.order.iter().map(|&i| i as u64).collect();
        assert_eq!(ids, order, "events in global order, each once");
        // Every anomaly has its text, network losses too (theirs is made as it is written).
        let anomalies = v["anomalies"].as_array().unwrap();
        assert_eq!(anomalies.len(), a.anomalies.len());
        for x in anomalies {
            let text = x["text"].as_str().unwrap();
            assert!(!text.is_empty(), "an anomaly without text: {x}");
            if x["kind"] == "network_loss" {
                assert!(text.contains("never reached") && text.contains("network loss on node"), "{text}");
            }
        }
        assert!(anomalies.iter().any(|x| x["kind"] == "network_loss") || !a.order.cycles.is_empty());
    }
}

#[test]
fn a_truncated_dump_keeps_what_was_read_and_says_where_it_stopped() {
    let (trace, _) =
        sim::generate(&Config { nodes: 2, seed: 3, partition: None, recorder_gap: false, duplicate: false, ..Config::default() });
    let dir = std::env::temp_dir().join(format!("wgo-truncated-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    sim::write_dumps(&trace, &dir).unwrap();
    let f = dir.join("node2.pcapng");
    let full = std::fs::metadata(&f).unwrap().len();
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..(full as usize) * 2 / 3 + 5]).unwrap();
    let files = vec![dir.join("node1.pcapng"), f.clone()];
    let t = wgo::analysis::trace::Trace::read_files(&files).unwrap();
    let n2 = t.node_by_name("node2").unwrap();
    let kept = t.node_events(n2).len();
    let all = trace.node_events(1).len();
    assert!(kept > all / 2 && kept < all, "kept {kept} of {all}");
    let skipped = &t.nodes[n2 as usize].skipped;
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0].contains("node2.pcapng") && skipped[0].contains("at byte"), "{skipped:?}");
    let a = analyze(t, Inputs::default());
    assert!(summary(&a).contains("skipped:"), "the summary says what was skipped");
    let _ = std::fs::remove_dir_all(dir);
}

/// `wgo report --json PATH` where PATH is a FIFO (or /dev/null): the JSON goes through it,
/// and the path stays what it was instead of being replaced by a regular file.
#[test]
fn report_writes_json_through_a_fifo_and_leaves_it_in_place() {
    use std::os::unix::fs::FileTypeExt;
    let (trace, _) = sim::generate(&Config { nodes: 3, seed: 5, ..Config::default() });
    let dir = std::env::temp_dir().join(format!("wgo-fifo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    sim::write_dumps(&trace, &dir).unwrap();
    std::fs::write(dir.join("sim.toml"), SPEC).unwrap();
    let fifo = dir.join("out.fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: c is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    let out = std::process::Command::new(wgo())
        .arg("report")
        .arg(&dir)
        .arg("--spec")
        .arg(dir.join("sim.toml"))
        .arg("--json")
        .arg(&fifo)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Checked before joining the reader: had the FIFO been replaced, the reader would wait forever.
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(), "the FIFO is still a FIFO");
    assert!(!dir.join("out.fifo.partial").exists());
    let json: serde_json::Value = serde_json::from_slice(&reader.join().unwrap()).expect("valid JSON through the FIFO");
    assert_eq!(json["events"].as_array().unwrap().len(), trace.events.len());
    let _ = std::fs::remove_dir_all(dir);
}

/// A real dump (tests/data/README.md) reads back packet for packet, with direction, CPU and
/// sequence numbers, and a report on it claims nothing.
#[test]
fn a_real_recorded_dump_reads_back_whole() {
    let file = wgo_tests::bins::root().join("tests/data/real-node1.pcapng");
    let t = wgo::analysis::trace::Trace::read_files(&[file]).unwrap();
    assert_eq!(t.nodes[0].name, "node1");
    assert_eq!(t.events.len(), 56);
    assert!(t.nodes[0].direction_recorded && t.nodes[0].skipped.is_empty());
    let sends = t.events.iter().filter(|e| e.dir == Dir::Send).count();
    assert_eq!(sends, 29, "20 UDP requests, 6 TCP segments, 3 pings");
    assert!(t.events.iter().all(|e| e.seq != u64::MAX));
    let a = analyze(t, Inputs::default());
    assert!(a.anomalies.is_empty(), "{:?}", a.anomalies);
}

/// Offsets against the truth at each node's mid-window: (node, found, truth, uncertainty).
fn offsets(a: &Analysis, truth: &Truth) -> Vec<(usize, i64, i64, i64)> {
    let reference = a.clocks.reference as usize;
    a.clocks
        .nodes
        .iter()
        .enumerate()
        .map(|(n, c)| {
            let w = a.trace.nodes[n].window;
            let mid = w.0 + (w.1 - w.0) / 2;
            let (off, drift) = truth.clocks[n];
            let t_true = truth.start_ns + ((mid - truth.start_ns - off) as f64 / (1.0 + drift)) as i64;
            (n, c.offset_ns, sim::true_offset(truth, n, reference, t_true), c.uncertainty_ns.unwrap_or(i64::MAX))
        })
        .collect()
}

/// Trigger receipts are weak evidence (±50 ms): one heard 500 ms late must yield to the
/// thousands of message bounds, not drag the offsets off by tens of milliseconds.
#[test]
fn a_late_trigger_receipt_yields_to_the_messages() {
    let cfg = Config { seed: 21, partition: None, ..Config::default() };
    let (mut trace, truth) = sim::generate(&cfg);
    let trigger_true = truth.start_ns + cfg.duration_ns + 50_000_000;
    for (n, node) in trace.nodes.iter_mut().enumerate() {
        let (off, drift) = truth.clocks[n];
        let late = if n == 2 { 500_000_000 } else { 2_000_000 };
        node.trigger_heard = Some(trigger_true + off + (drift * (trigger_true - truth.start_ns) as f64) as i64 + late);
    }
    let a = analyze(trace, Inputs::default());
    for (n, found, expected, unc) in offsets(&a, &truth) {
        println!("  node{}: offset {found} (truth {expected}), ± {unc}", n + 1);
        assert!((found - expected).abs() <= unc, "node{}: off by {} > uncertainty {unc}", n + 1, (found - expected).abs());
        assert!((found - expected).abs() <= 1_000_000, "node{}: off by {} ns", n + 1, (found - expected).abs());
    }
    let dropped: usize = a.clocks.pairs.iter().map(|p| p.dropped_weak).sum();
    assert!(dropped > 0, "the contradicting trigger bounds are dropped, and counted");
}

/// A few receives recorded 3 ms before their sends could have happened: to the clocks they
/// are wrong matches. Their bounds are dropped and counted, and the offsets stay right.
#[test]
fn a_few_wrong_matches_are_dropped_and_reported() {
    let cfg = Config { seed: 33, partition: None, recorder_gap: false, ..Config::default() };
    let (mut trace, truth) = sim::generate(&cfg);
    // Receives on node2 with room before them (so their node's order stays as it was).
    let range = trace.node_ranges[1].clone();
    let mut moved = 0;
    for i in range.clone().skip(1) {
        let (prev, e) = (trace.events[i - 1].t_raw, trace.events[i]);
        if moved < 3 && e.dir == Dir::Recv && sim::uid_of(&trace, i) != 0 && e.t_raw - prev > 4_000_000 && i % 7 == 0 {
            trace.events[i].t_raw -= 3_000_000;
            moved += 1;
        }
    }
    assert_eq!(moved, 3);
    let a = analyze(trace, Inputs::default());
    let dropped: usize = a.clocks.pairs.iter().map(|p| p.dropped_strong).sum();
    assert!((3..=6).contains(&dropped), "the three wrong bounds, and few others, are dropped: {dropped}");
    assert!(a.clocks.pairs.iter().all(|p| !p.inconsistent), "consistent once they are dropped");
    for (n, found, expected, unc) in offsets(&a, &truth) {
        assert!((found - expected).abs() <= unc, "node{}: off by {} > uncertainty {unc}", n + 1, (found - expected).abs());
    }
    let text = summary(&a);
    assert!(text.contains("message bound(s) that contradict the other"), "{text}");
    let mut json = Vec::new();
    write_json(&a, &mut json).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let total: u64 = v["clock_pairs"].as_array().unwrap().iter().map(|p| p["dropped_bounds"].as_u64().unwrap()).sum();
    assert_eq!(total, dropped as u64);
}

/// Receives recorded 50 ms before they happened contradict program order and their
/// messages: every contradiction is broken and named, every event still placed once, and
/// the corrected times stay causally consistent.
#[test]
fn many_contradictions_are_each_broken_and_named() {
    let cfg = Config { seed: 8, misdated_receives: 300, ..Config::default() };
    let (trace, _) = sim::generate(&cfg);
    let a = analyze(trace, Inputs::default());
    let n = a.trace.events.len();
    assert!(a.order.cycles.len() >= 100, "{} cycles", a.order.cycles.len());
    let mut placed = a.order.order.clone();
    placed.sort_unstable();
    placed.dedup();
    assert_eq!(placed.len(), n, "every event placed once");
    let contradictions: Vec<&str> = a.anomalies.iter().filter(|x| x.kind == Kind::Contradiction).map(|x| x.text.as_str()).collect();
    assert_eq!(contradictions.len(), a.order.cycles.len());
    assert!(contradictions.iter().all(|t| t.contains("cannot all hold; ignored")), "{:?}", contradictions.first());
    // Kept edges hold in the corrected times: a receive is never before its send.
    let dropped: BTreeSet<(u32, u32)> = a.order.cycles.iter().map(|c| (c.dropped.0, c.dropped.1)).collect();
    for &(s, r) in &a.matching.messages {
        if !dropped.contains(&(s, r)) {
            assert!(a.order.t_ns[r as usize] >= a.order.t_ns[s as usize], "receive {r} before send {s}");
        }
    }
}

/// Clock steps found against the truth: each injected one found once, on its node, with its
/// size within 1 ms and within its stated uncertainty; nothing else claimed; the offsets
/// right in every segment; every receive after its send in corrected time.
fn check_steps(cfg: &Config) -> Analysis {
    let (trace, truth) = sim::generate(cfg);
    let a = analyze(trace, Inputs::default());
    let reference = a.clocks.reference as usize;
    for s in &a.clocks.steps {
        println!("  found: node{} stepped {} ns ± {:?} (in order: {})", s.node + 1, s.size_ns, s.uncertainty_ns, s.seen_in_order);
    }
    assert_eq!(a.clocks.steps.len(), truth.clock_steps.len(), "one step found per step made: {:?}", a.clocks.steps);
    let mut injected = truth.clock_steps.clone();
    injected.sort();
    for (&(node, _, size), found) in injected.iter().zip(&a.clocks.steps) {
        assert_eq!(found.node as usize, node, "the step is on node{}", node + 1);
        let err = (found.size_ns - size).abs();
        assert!(err <= 1_000_000, "node{}: step {} found as {} ns", node + 1, size, found.size_ns);
        assert!(
            err <= found.uncertainty_ns.expect("traffic on both sides"),
            "node{}: off by {err} > its uncertainty {:?}",
            node + 1,
            found.uncertainty_ns
        );
    }
    // The first segment's offsets; each later one is it plus the steps, each found to 1 ms.
    for (n, found, expected, unc) in offsets(&a, &truth) {
        let err = (found - expected).abs();
        assert!(err <= unc && err <= 1_000_000, "node{}: offset off by {err} (uncertainty {unc})", n + 1);
        let segments = a.clocks.segments(n as u16);
        let made: Vec<i64> = injected.iter().filter(|s| s.0 == n).map(|s| s.2).collect();
        assert_eq!(segments.len(), made.len() + 1);
        let mut truth_offset = expected;
        for (seg, step) in segments[1..].iter().zip(&made) {
            truth_offset += step;
            assert!((seg.1 - truth_offset).abs() <= 2_000_000, "node{}: segment offset {} vs truth {truth_offset}", n + 1, seg.1);
        }
    }
    let _ = reference;
    let corrected = |id: u32| {
        let e = &a.trace.events[id as usize];
        a.clocks.nodes[e.node as usize].to_ref.apply(e.t_raw)
    };
    let unc = |id: u32| a.clocks.nodes[a.trace.events[id as usize].node as usize].uncertainty_ns.unwrap_or(0);
    let early: Vec<_> = a.matching.messages.iter().filter(|&&(s, r)| corrected(r) < corrected(s) - unc(s) - unc(r)).collect();
    assert!(early.is_empty(), "{} receives before their sends, e.g. {:?}", early.len(), early.first());
    assert!(a.order.cycles.is_empty(), "no contradictions left: {}", a.order.cycles.len());
    let dropped: usize = a.clocks.pairs.iter().map(|p| p.dropped_strong).sum();
    assert_eq!(dropped, 0, "no message bound contradicts the undone clocks");
    a
}

/// A quiet scenario (no partition, no gap, no loss) to which steps are added.
fn stepping(seed: u64, steps: Vec<(usize, i64, i64)>) -> Config {
    Config { seed, partition: None, recorder_gap: false, drop_rate: 0.0, duplicate: false, clock_steps: steps, ..Config::default() }
}

#[test]
fn a_clock_step_of_three_seconds_either_way_is_found_and_undone() {
    for seed in 1..=6u64 {
        let mut rng = sim::Rng::new(seed * 977);
        let node = rng.range(0, 5) as usize;
        let at = rng.range(800_000_000, 3_200_000_000);
        let size = if seed % 2 == 0 { 3_000_000_000 } else { -3_000_000_000 };
        println!("seed {seed}: node{} steps {size} ns at {at} ns", node + 1);
        let a = check_steps(&stepping(seed, vec![(node, at, size)]));
        let s = &a.clocks.steps[0];
        assert_eq!(s.seen_in_order, size < 0, "a step back shows in program order");
        let clock = a.anomalies.iter().find(|x| x.kind == Kind::ClockStep).expect("a clock_step anomaly");
        assert_eq!(clock.nodes.as_slice(), &[node as u16]);
        let text = summary(&a);
        assert!(text.contains(&format!("node{}'s clock stepped", node + 1)), "{text}");
        assert!(a.findings.iter().any(|f| f.kind == wgo::analysis::diagnosis::FindingKind::ClockStep && f.nodes == [node as u16]));
        let mut json = Vec::new();
        write_json(&a, &mut json).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let x = v["anomalies"].as_array().unwrap().iter().find(|x| x["kind"] == "clock_step").expect("in the JSON");
        assert_eq!(x["node"], format!("node{}", node + 1));
        assert_eq!(x["size_ns"].as_i64(), Some(s.size_ns));
        assert!(x["at_ns"].as_i64().is_some() && x["uncertainty_ns"].as_i64().is_some(), "{x}");
        let nj = &v["nodes"][node];
        assert_eq!(nj["clock_steps"].as_array().unwrap().len(), 1);
        assert_eq!(nj["segments"].as_array().unwrap().len(), 2);
        assert!(v["findings"].as_array().unwrap().iter().any(|f| f["kind"] == "clock_step"));
    }
}

#[test]
fn two_steps_on_two_nodes_are_each_found_and_undone() {
    for seed in [3u64, 4] {
        check_steps(&stepping(seed, vec![(1, 1_200_000_000, -3_000_000_000), (3, 2_600_000_000, 1_500_000_000)]));
    }
}

/// Two nodes alone: only their traffic with each other shows a step, which might be either's.
#[test]
fn a_step_between_two_nodes_alone_is_found_once() {
    let a = check_steps(&Config { nodes: 2, tcp: false, ..stepping(5, vec![(1, 2_000_000_000, -3_000_000_000)]) });
    assert!(a.clocks.steps[0].seen_in_order);
}

#[test]
fn the_summary_counts_packets_per_message_and_warns_about_spec_parts_that_matched_nothing() {
    let cfg = Config { nodes: 3, seed: 7, partition: None, ..Config::default() };
    let a = analyze(sim::generate(&cfg).0, Inputs { spec: Some(Spec::parse(SPEC, "sim.toml").unwrap()), missing_nodes: vec![] });
    let text = summary(&a);
    let line = text.lines().find(|l| l.contains("spec sim: packets per message: TASK ")).unwrap_or_else(|| panic!("{text}"));
    let tasks = a.classes.iter().filter(|&&c| c == 0).count();
    assert!(tasks > 0 && line.contains(&format!("TASK {tasks},")), "{line}");
    assert!(!text.contains("warning: spec"), "a spec that fits warns of nothing: {text}");

    // A typo in a match: the message, the rule and the invariant that use it match nothing.
    let typo = SPEC.replace("ascii = \"ACK!\"", "ascii = \"ACK?\"");
    let a = analyze(sim::generate(&cfg).0, Inputs { spec: Some(Spec::parse(&typo, "sim.toml").unwrap()), missing_nodes: vec![] });
    let text = summary(&a);
    assert!(text.contains("ACK 0"), "{text}");
    assert!(text.contains("warning: spec message ACK matched no packet"), "{text}");
    assert!(text.contains("warning: spec rule ack-after-task (line ") && text.contains("added no edge: ACK matched 0 packet(s)"), "{text}");
    // The invariant's request still matches: it is not vacuous (it reports the unanswered).
    assert!(!text.contains("invariant every-task-acked checked nothing"), "{text}");
    let typo = SPEC.replace("ascii = \"TASK\"", "ascii = \"TSAK\"");
    let a = analyze(sim::generate(&cfg).0, Inputs { spec: Some(Spec::parse(&typo, "sim.toml").unwrap()), missing_nodes: vec![] });
    let text = summary(&a);
    assert!(text.contains("warning: spec invariant every-task-acked checked nothing: TASK matched no packet"), "{text}");
}
