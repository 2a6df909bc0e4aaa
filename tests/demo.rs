//! The demo end to end: its summary must name each injected fault correctly.

mod common;

use std::sync::atomic::AtomicBool;

use common::*;

#[test]
fn demo_names_the_lossy_link_the_aborted_ballot_and_the_islands() {
    require_root();
    let dir = tempdir("demo");
    let stop = AtomicBool::new(false);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = wgo::demo::run_demo(&wgo::demo::DemoOptions {
        wgo: WGO.into(),
        app: env!("CARGO_BIN_EXE_wgo-demo-app").into(),
        spec: root.join("examples/demo.toml"),
        out: dir.join("demo"),
        stop: &stop,
        log: &|s| println!("demo: {s}"),
    })
    .expect("the demo runs");
    println!("{}\n{}", out.headline, out.report);
    let h = &out.headline;
    assert!(h.contains("lossy link node1 → node3") && h.contains("TASKs lost"), "names the lossy link: {h}");
    assert!(h.contains("aborted ballot") && h.contains("member rejoined") && h.contains("from node5"), "names the aborted ballot and why: {h}");
    assert!(h.contains("{node1, node2} | {node3, node4, node5}"), "names the two islands: {h}");
    // The README's screenshot: the moment the ex-member's heartbeat aborts a ballot.
    let shot = root.join("docs/timeline.png");
    let o = std::process::Command::new("node")
        .arg(root.join("tests/browser/timeline.mjs"))
        .arg("shot")
        .arg(&out.timeline)
        .arg(&shot)
        .arg("member rejoined")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let _ = std::fs::remove_dir_all(dir);
}
