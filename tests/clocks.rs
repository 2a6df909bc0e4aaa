//! Clocks on real dumps (root): a cluster recorded on one machine, so every clock is the
//! same and the offsets are known to be zero; its dumps are then edited as a clock step and
//! a late trigger receipt would have written them. The analysis must find the step, size
//! it, and keep every offset where the unedited dumps put it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use wgo::analysis::trace::Trace;
use wgo::analysis::{Analysis, Inputs, analyze};
use wgo_tests::bins::wgo;
use wgo_tests::cluster::*;
use wgo_tests::edit::{Edit, edit_dump};
use wgo_tests::testbed::{WgoProcess, run};

/// Records three nodes chatting for 3 s and collects their dumps.
fn record(name: &str) -> (Cluster, PathBuf) {
    let c = Cluster::new(name, 3);
    let agents: Vec<WgoProcess> = c.bed.nodes.iter().map(|n| c.agent(&n.name, &[])).collect();
    std::thread::sleep(Duration::from_secs(3));
    let out = c.dir.join("collected");
    let (status, stdout, stderr) = c.collector("trigger", &out, &c.names(), "60").wait(Duration::from_secs(90)).unwrap();
    assert!(status.success(), "wgo trigger failed: {stdout}\n{stderr}");
    for a in agents {
        let (status, _, err) = a.wait(Duration::from_secs(30)).unwrap();
        assert!(status.success(), "agent failed: {err}");
    }
    (c, out)
}

fn dumps(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).unwrap().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "pcapng")).collect();
    v.sort();
    v
}

/// Each node's offset against node1, ns, and its uncertainty.
fn offsets(a: &Analysis) -> Vec<(i64, i64)> {
    let base = a.clocks.nodes[0].offset_ns;
    a.clocks.nodes.iter().map(|c| (c.offset_ns - base, c.uncertainty_ns.unwrap_or(i64::MAX))).collect()
}

/// The middle of a node's recorded traffic, on its clock.
fn middle(a: &Analysis, node: &str) -> i64 {
    let n = a.trace.node_by_name(node).unwrap();
    let ev = a.trace.node_events(n);
    ev[ev.len() / 2].t_raw
}

fn check(original: &Analysis, edited_dir: &Path, stepped: &str, size: i64) {
    let a = analyze(Trace::read_files(&dumps(edited_dir)).unwrap(), Inputs::default());
    let node = a.trace.node_by_name(stepped).unwrap();
    for s in &a.clocks.steps {
        println!("  {}: step {} ns ± {:?}, in order {}", a.trace.nodes[s.node as usize].name, s.size_ns, s.uncertainty_ns, s.seen_in_order);
    }
    assert_eq!(a.clocks.steps.len(), 1, "one step: {:?}", a.clocks.steps);
    let s = &a.clocks.steps[0];
    assert_eq!(s.node, node);
    let err = (s.size_ns - size).abs();
    assert!(
        err <= 1_000_000 && err <= s.uncertainty_ns.expect("traffic both sides"),
        "step {size} found as {} ± {:?}",
        s.size_ns,
        s.uncertainty_ns
    );
    for (i, ((was, _), (now, unc))) in offsets(original).into_iter().zip(offsets(&a)).enumerate() {
        println!("  {}: offset {now} ± {unc} (unedited {was})", a.trace.nodes[i].name);
        assert!((now - was).abs() <= 1_000_000, "{}: offset moved by {} ns", a.trace.nodes[i].name, now - was);
        assert!(now.abs() <= unc.max(1_000), "{}: one machine's clocks are one clock: {now} ± {unc}", a.trace.nodes[i].name);
    }
    let corrected = |id: u32| {
        let e = &a.trace.events[id as usize];
        a.clocks.nodes[e.node as usize].to_ref.apply(e.t_raw)
    };
    let unc = |id: u32| a.clocks.nodes[a.trace.events[id as usize].node as usize].uncertainty_ns.unwrap_or(0);
    let early = a.matching.messages.iter().filter(|&&(s, r)| corrected(r) < corrected(s) - unc(s) - unc(r)).count();
    assert_eq!(early, 0, "receives before their sends");
    assert!(a.order.cycles.is_empty(), "{} contradictions", a.order.cycles.len());
    let weak: usize = a.clocks.pairs.iter().map(|p| p.dropped_weak).sum();
    assert!(weak > 0, "the late trigger receipt is dropped as weak evidence");

    // The CLI says it too, and the timeline's lane header.
    let html = edited_dir.join("timeline.html");
    let rep = run(Command::new(wgo())
        .arg("report")
        .arg("--json")
        .arg(edited_dir.join("report.json"))
        .arg("--html")
        .arg(&html)
        .args(dumps(edited_dir)))
    .unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for mode in ["steps", "findings"] {
        let o = Command::new("node")
            .arg(root.join("tests/browser/timeline.mjs"))
            .arg(mode)
            .arg(&html)
            .arg(stepped)
            .output()
            .expect("node runs (cargo xtask test installs the browser test's packages)");
        assert!(
            o.status.success(),
            "browser check {mode} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        println!("{}", String::from_utf8_lossy(&o.stdout).trim());
    }
    let text = String::from_utf8_lossy(&rep.stdout);
    assert!(text.contains(&format!("{stepped}'s clock stepped")), "{text}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(edited_dir.join("report.json")).unwrap()).unwrap();
    let x = v["anomalies"].as_array().unwrap().iter().find(|x| x["kind"] == "clock_step").expect("clock_step in the JSON");
    assert_eq!(x["node"], stepped);
    assert_eq!(x["size_ns"].as_i64(), Some(s.size_ns));
}

#[test]
fn a_clock_step_and_a_late_trigger_receipt_edited_into_real_dumps_are_undone() {
    let (c, out) = record("clocksteps");
    let original = analyze(Trace::read_files(&dumps(&out)).unwrap(), Inputs::default());
    assert!(original.clocks.steps.is_empty(), "no step in the unedited dumps: {:?}", original.clocks.steps);
    for (k, (stepped, size, late)) in [("node2", -3_000_000_000i64, "node3"), ("node3", 2_000_000_000, "node1")].into_iter().enumerate() {
        println!("{stepped} steps {size} ns, {late} hears the trigger 400 ms late");
        let dir = c.dir.join(format!("edited-{k}"));
        std::fs::create_dir_all(&dir).unwrap();
        let at = middle(&original, stepped);
        for f in dumps(&out) {
            let node = f.file_stem().unwrap().to_str().unwrap();
            let edit = Edit { step: (node == stepped).then_some((at, size)), trigger_late_ns: if node == late { 400_000_000 } else { 0 } };
            let moved = edit_dump(&f, &dir.join(f.file_name().unwrap()), edit).unwrap();
            assert!(node != stepped || moved > 100, "{node}: {moved} packets after the step");
        }
        check(&original, &dir, stepped, size);
    }
}
