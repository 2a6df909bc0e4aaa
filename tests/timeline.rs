//! The timeline page of a real multi-node capture, checked in headless Chromium
//! (tests/browser/timeline.mjs).

use std::path::Path;
use std::process::Command;

use wgo_tests::bins::{peer, wgo};
use wgo_tests::helpers::*;
use wgo_tests::testbed::{Testbed, run};

const SPEC: &str = r#"
name = "timeline test"

[[message]]
name = "TASK"
transport = "udp"
match = [{ offset = 0, ascii = "TASK #" }]
display = "TASK #{task}"
fields = [{ name = "task", offset = 6, width = 1, ascii = true }]
"#;

#[test]
fn timeline_of_a_real_capture_works_in_chromium() {
    require_root();
    let dir = tempdir("timeline");
    let bed = Testbed::new(3).unwrap();
    let servers: Vec<_> =
        bed.nodes.iter().map(|n| n.spawn(n.command(peer()).unwrap().args(["udp-echo", "--bind", "0.0.0.0:7000"])).unwrap()).collect();
    record_all(&bed, &dir, || {
        for a in &bed.nodes {
            for b in bed.nodes.iter().filter(|b| b.name != a.name) {
                run(a.command(peer()).unwrap().args(["udp-request", "--to", &format!("{}:7000", b.ipv4), "--count", "8", "--tag", "TASK"]))
                    .unwrap();
            }
        }
    });
    drop(servers);
    let spec = dir.join("spec.toml");
    std::fs::write(&spec, SPEC).unwrap();
    let (html, json) = (dir.join("timeline.html"), dir.join("report.json"));
    let out = Command::new(wgo())
        .arg("report")
        .arg(&dir)
        .arg("--spec")
        .arg(&spec)
        .arg("--html")
        .arg(&html)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let events = v["events"].as_array().unwrap();
    let node0 = v["nodes"][0]["name"].as_str().unwrap();
    let click = events
        .iter()
        .find(|e| e["label"].as_str().unwrap().starts_with("TASK #") && e["fields"]["task"].is_string())
        .expect("a TASK event");
    let expect = serde_json::json!({
        "nodes": v["nodes"].as_array().unwrap().len(),
        "messages": v["messages"].as_array().unwrap().len(),
        "events": events.len(),
        "node0_events": events.iter().filter(|e| e["node"] == node0).count(),
        "type0_events": events.iter().filter(|e| e["label"].as_str().unwrap().starts_with("TASK #")).count(),
        "click": { "id": click["id"], "field": "task", "value": format!("TASK #{}", click["fields"]["task"].as_str().unwrap()) },
    });
    let expect_file = dir.join("expect.json");
    std::fs::write(&expect_file, expect.to_string()).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shot = dir.join("timeline.png");
    let o = Command::new("node")
        .arg(root.join("tests/browser/timeline.mjs"))
        .arg("check")
        .arg(&html)
        .arg(&expect_file)
        .arg(&shot)
        .output()
        .expect("node runs (cargo xtask test installs the browser test's packages)");
    println!("{}", String::from_utf8_lossy(&o.stdout));
    assert!(o.status.success(), "browser check failed: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let o = Command::new("node").arg(root.join("tests/browser/timeline.mjs")).arg("readable").arg(&html).output().unwrap();
    println!("{}", String::from_utf8_lossy(&o.stdout));
    assert!(o.status.success(), "readability check failed: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let _ = std::fs::remove_dir_all(dir);
}

/// Every finding where it happened, on simulated clusters (no root): a stall hatched on its
/// lane (one to the end of the recording marked as such), a lossy link's lost arrows in the
/// overview, a partition shaded with its cause, kernel drops that select what they point
/// at, and the causal view fitted to the whole canvas (tests/browser/timeline.mjs
/// `findings` and `readable`).
#[test]
fn the_timeline_draws_every_finding_where_it_happened() {
    use wgo::analysis::anomalies::{Facts, Kind};
    use wgo::analysis::diagnosis::FindingKind;
    use wgo::analysis::trace::{Dir, KernelDrop, ProtoCode};
    use wgo::analysis::{Inputs, analyze, spec::Spec};
    use wgo_tests::sim::{self, Config};
    let dir = tempdir("timeline-findings");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let scenarios = [
        // A node silent to the end, and a lossy link.
        (
            "crash-and-lossy",
            Config {
                seed: 1,
                partition: None,
                stall: Some((3, 1_500_000_000, 4_000_000_000)),
                lossy: Some((0, 2, 0.3)),
                ..Config::default()
            },
        ),
        // A lossy link over long enough that the overview is a density strip.
        ("lossy", Config { seed: 1, partition: None, lossy: Some((0, 2, 0.3)), duration_ns: 16_000_000_000, ..Config::default() }),
        // A stall in the middle.
        ("stall", Config { seed: 2, partition: None, stall: Some((3, 1_500_000_000, 2_700_000_000)), ..Config::default() }),
        // A partition by the receivers' firewalls.
        ("firewalls", Config { seed: 1, firewall_partition: true, ..Config::default() }),
        // Kernel drops no recorded send explains: findings with no events of their own.
        ("drops", Config { seed: 3, partition: None, ..Config::default() }),
    ];
    for (name, cfg) in scenarios {
        let (mut trace, _) = sim::generate(&cfg);
        if name == "drops" {
            // Five datagrams node2's firewall dropped on their way in, from a port nobody sent from.
            let reason = trace.drop_reasons.iter().position(|r| r == "netfilter_drop").unwrap_or_else(|| {
                trace.drop_reasons.push("netfilter_drop".into());
                trace.drop_reasons.len() - 1
            }) as u16;
            let recvs: Vec<_> =
                trace.events.iter().filter(|e| e.node == 1 && e.dir == Dir::Recv && e.proto == ProtoCode::Udp).copied().collect();
            for k in 1..=5 {
                let mut event = recvs[recvs.len() * k / 6];
                (event.sport, event.dport) = (9, 9);
                trace.drops.push(KernelDrop { event, reason, stands_for_send: false });
            }
        }
        let mut a = analyze(trace, Inputs { spec: Some(Spec::parse(sim::SPEC, "sim.toml").unwrap()), missing_nodes: vec![] });
        if name == "stall" {
            // The simulator has no node that waits on another; the page draws what the data says,
            // so node1 is said to have waited on the stalled node here.
            let st = a.anomalies.iter_mut().find(|x| x.kind == Kind::StalledNode).expect("a stall");
            st.detail_mut().waiters.push(0);
        }
        let kinds: Vec<String> = a.findings.iter().map(|f| format!("{:?}", f.kind)).collect();
        println!("{name}: {}", kinds.join(", "));
        // What each scenario is there to show is among its findings (else the page's checks, which
        // look at what there is, would pass on nothing).
        let has = |k: FindingKind| a.findings.iter().any(|f| f.kind == k);
        match name {
            "crash-and-lossy" => {
                let to_end = a.anomalies.iter().any(|x| matches!(x.facts(), Facts::Stall { until_end: true, .. }));
                assert!(has(FindingKind::StalledNode) && to_end && has(FindingKind::LossyLink), "{name}: {kinds:?}");
            }
            "stall" => assert!(has(FindingKind::StalledNode), "{name}: {kinds:?}"),
            "lossy" => assert!(has(FindingKind::LossyLink), "{name}: {kinds:?}"),
            "firewalls" => assert!(has(FindingKind::Partition), "{name}: {kinds:?}"),
            _ => assert!(
                a.findings.iter().any(|f| f.kind == FindingKind::KernelDrop && f.evidence.is_empty() && !f.drops.is_empty()),
                "{name}: {kinds:?}"
            ),
        }
        let html = dir.join(format!("{name}.html"));
        wgo::report::html::write_html(&a, std::fs::File::create(&html).unwrap(), name).unwrap();
        for mode in ["findings", "readable"] {
            let o = Command::new("node")
                .arg(root.join("tests/browser/timeline.mjs"))
                .arg(mode)
                .arg(&html)
                .output()
                .expect("node runs (cargo xtask test installs the browser test's packages)");
            println!("{}", String::from_utf8_lossy(&o.stdout).trim());
            assert!(o.status.success(), "{name}, {mode}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
