//! The demo end to end, as `cargo xtask demo` runs it, with nothing on PATH but the
//! commands the demo declares (a forgotten one fails here): its summary must name each
//! injected fault correctly.

use std::path::Path;
use std::process::Command;

use wgo_tests::bins;
use wgo_tests::helpers::{require_root, tempdir};

/// A directory holding links to just `commands`, found on the current PATH.
fn hermetic_path(dir: &Path, commands: &[(&str, &str)]) -> std::path::PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let path = std::env::var_os("PATH").unwrap_or_default();
    for (cmd, package) in commands {
        let found = std::env::split_paths(&path).map(|d| d.join(cmd)).find(|p| p.is_file());
        let found = found.unwrap_or_else(|| panic!("{cmd} (Debian package {package}) is not on PATH"));
        std::os::unix::fs::symlink(&found, bin.join(cmd)).unwrap();
    }
    bin
}

/// Runs the demo binary with nothing but its declared commands on PATH.
fn run_demo(dir: &Path, extra: &[&str]) -> (String, String) {
    let root = bins::root();
    let path = hermetic_path(dir, wgo_tests::demo::COMMANDS);
    let out = Command::new(bins::path("wgo-demo"))
        .args(extra)
        .arg("--wgo")
        .arg(bins::wgo())
        .arg("--app")
        .arg(bins::path("wgo-demo-app"))
        .arg("--spec")
        .arg(root.join("examples/demo.toml"))
        .arg("--out")
        .arg(dir.join("demo"))
        .env_clear()
        .env("PATH", &path)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    println!("{stderr}\n{stdout}");
    assert!(out.status.success(), "the demo runs with PATH={}: {stderr}", path.display());
    (stdout, stderr)
}

#[test]
fn demo_names_the_lossy_link_the_aborted_ballot_the_stall_and_the_islands() {
    require_root();
    let dir = tempdir("demo");
    let root = bins::root();
    let (stdout, _) = run_demo(&dir, &[]);
    // The findings: the summary before its details.
    let h = stdout.split("Details:").next().unwrap();
    assert!(h.contains("What went wrong ("), "{h}");
    assert!(h.contains("lossy link node1 → node3: "), "names the lossy link: {h}");
    assert_eq!(h.matches("lossy link").count(), 1, "and no other: {h}");
    assert!(
        h.contains("no-aborted-ballots violated") && h.contains("member rejoined") && h.contains("from node5"),
        "names the aborted ballot and why: {h}"
    );
    assert!(h.contains("{node1, node2} | {node3, node4, node5}"), "names the two islands: {h}");
    assert!(h.contains("node5 stalled: it sent nothing from"), "names the stall: {h}");
    assert_eq!(h.matches("stalled").count(), 1, "and no other: {h}");
    // The incident as a Perfetto trace, by the official schema: a track per node, a flow
    // per matched message, the findings' slices, times in order per track.
    let checked = wgo_tests::perfetto::check(&dir.join("demo/incident.pftrace"), &dir.join("demo/report.json"))
        .unwrap_or_else(|e| panic!("the demo's Perfetto trace: {e}"));
    println!("{checked}");
    assert!(checked.contains(" 5 node tracks,") && !checked.contains(" 0 islands,") && !checked.contains(" 0 stalls,"), "{checked}");
    // The README's screenshot: the moment the ex-member's heartbeat aborts a ballot.
    let shot = root.join("docs/timeline.png");
    let o = Command::new("node")
        .arg(root.join("tests/browser/timeline.mjs"))
        .arg("shot")
        .arg(dir.join("demo/timeline.html"))
        .arg(&shot)
        .arg("member rejoined")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    // The timeline's findings list: a click on each zooms to it and selects its evidence; the
    // page stays readable at every zoom, in the causal view and through its URL; and the
    // README's three screenshots (overview, the partition, the causal view) are made here.
    for args in [vec!["findings".into()], vec!["readable".into()], vec!["shots".to_string(), root.join("docs").display().to_string()]] {
        let o = Command::new("node")
            .arg(root.join("tests/browser/timeline.mjs"))
            .arg(&args[0])
            .arg(dir.join("demo/timeline.html"))
            .args(&args[1..])
            .output()
            .unwrap();
        println!("{}", String::from_utf8_lossy(&o.stdout).trim());
        assert!(o.status.success(), "{}: {}{}", args[0], String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_crash_demo_triggers_by_itself_and_names_the_crash_and_the_dead_node() {
    require_root();
    let dir = tempdir("demo-crash");
    let (stdout, stderr) = run_demo(&dir, &["--crash"]);
    assert!(stderr.contains("complete: 5 dump(s)"), "wgo serve filed one complete incident: {stderr}");
    let trigger = stdout.lines().find(|l| l.starts_with("The trigger, sent by an agent on its own:")).expect("the trigger line");
    assert!(trigger.contains("node3: wgo-demo-app (pid ") && trigger.ends_with("killed by SIGSEGV"), "{trigger}");
    let report = stdout.split("alone:\n").nth(1).unwrap();
    assert!(report.starts_with("Triggered: node3: wgo-demo-app"), "{report}");
    let h = report.split("Details:").next().unwrap();
    assert!(h.contains("node3 stalled: it sent nothing from") && h.contains("to the end of its recording"), "the dead node: {h}");
    assert!(h.contains("{node1, node2} | {node3, node4, node5}"), "the real partition: {h}");
    assert_eq!(h.matches("partition into").count(), 1, "and no partition made of the dead node: {h}");
    let _ = std::fs::remove_dir_all(dir);
}
