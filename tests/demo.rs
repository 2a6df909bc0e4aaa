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
    assert!(h.contains("no-aborted-ballots violated"), "names the aborted ballot: {h}");
    assert!(h.contains("{node1, node2} | {node3, node4, node5}"), "names the two islands: {h}");
    assert!(h.contains("node5 stalled: it sent nothing from"), "names the stall: {h}");
    assert_eq!(h.matches("stalled").count(), 1, "and no other: {h}");
    the_abort_followed_the_stalled_nodes_return(&dir.join("demo/report.json"));
    // The incident as a Perfetto trace, by the official schema: a track per node, a flow
    // per matched message, the findings' slices, times in order per track.
    let checked = wgo_tests::perfetto::check(&dir.join("demo/incident.pftrace"), &dir.join("demo/report.json"))
        .unwrap_or_else(|e| panic!("the demo's Perfetto trace: {e}"));
    println!("{checked}");
    assert!(checked.contains(" 5 node tracks,") && !checked.contains(" 0 islands,") && !checked.contains(" 0 stalls,"), "{checked}");
    // The timeline's findings list: a click on each zooms to it and selects its evidence; the
    // page stays readable at every zoom, in the causal view and through its URL; and the
    // README's three screenshots (overview, the partition, the causal view) can be made.
    for args in [vec!["findings".into()], vec!["readable".into()], vec!["shots".to_string(), dir.display().to_string()]] {
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

/// Why the ballot was aborted, as wgo inferred it from the packets alone (not from the
/// spec's display strings, which name the reason): a violation's events are the aborting
/// send, then the receives just before it that may explain it. Among those must be a
/// message node5 sent once its stall (wgo's `stalled_node` finding) was over: the abort
/// followed the stalled node's return.
fn the_abort_followed_the_stalled_nodes_return(json: &Path) {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
    let events: std::collections::HashMap<u64, &serde_json::Value> =
        v["events"].as_array().unwrap().iter().map(|e| (e["id"].as_u64().unwrap(), e)).collect();
    let sent_by: std::collections::HashMap<u64, u64> =
        v["messages"].as_array().unwrap().iter().filter_map(|m| Some((m["recv"].as_u64()?, m["send"].as_u64()?))).collect();
    let stall = v["findings"].as_array().unwrap().iter().find(|f| f["kind"] == "stalled_node").expect("a stalled_node finding");
    assert_eq!(stall["nodes"], serde_json::json!(["node5"]), "{stall}");
    let stall_end = stall["span_ns"][1].as_i64().unwrap();
    // A receive on node1 of what node5 sent from the end of its stall on.
    let back = |r: u64| {
        let (recv, send) = (events[&r], sent_by.get(&r).map(|s| events[s]));
        recv["node"] == "node1" && send.is_some_and(|s| s["node"] == "node5" && s["t_ns"].as_i64().unwrap() >= stall_end)
    };
    // The first ballot aborted after the stall ended.
    let ids = |x: &serde_json::Value| x["events"].as_array().unwrap().iter().map(|e| e.as_u64().unwrap()).collect::<Vec<u64>>();
    let first = v["violations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["name"] == "no-aborted-ballots")
        .map(ids)
        .filter(|e| events[&e[0]]["t_ns"].as_i64().unwrap() >= stall_end)
        .min_by_key(|e| events[&e[0]]["t_ns"].as_i64().unwrap())
        .expect("a ballot aborted after node5's stall");
    let abort = events[&first[0]];
    assert!(abort["node"] == "node1" && abort["dir"] == "send", "the abort is node1's send: {abort}");
    for r in &first[1..] {
        assert!(events[r]["dir"] == "recv" && events[r]["t_ns"].as_i64() <= abort["t_ns"].as_i64(), "a receive before it: {}", events[r]);
    }
    assert!(first[1..].iter().any(|&r| back(r)), "the first abort after the stall follows a message from node5 sent after it: {first:?}");
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
