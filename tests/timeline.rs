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
