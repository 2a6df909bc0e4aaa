//! The library's modules follow the data flow, and each uses only those before it
//! (the table in `capture-user/src/lib.rs`). This test reads the sources and fails on
//! any use that points the other way, so the layout cannot rot silently.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module of the `wgo` library and what it may use.
const ALLOWED: &[(&str, &[&str])] = &[
    ("packet", &[]),
    ("clock", &[]),
    ("outfile", &[]),
    ("dump", &[]),
    ("transport", &["clock", "outfile"]),
    ("node", &["dump", "transport", "packet", "clock", "outfile"]),
    ("analysis", &["dump", "packet", "outfile"]),
    ("report", &["analysis", "dump", "outfile"]),
];

/// The analysis chain: each module may use only those before it.
const ANALYSIS_CHAIN: &[&str] = &[
    "fmt",
    "trace",
    "spec",
    "matching",
    "steps",
    "clocks",
    "rules",
    "order",
    "anomalies",
    "kernel_drops",
    "losses",
    "retries",
    "stalls",
    "partitions",
    "lossy",
    "detect",
    "diagnosis",
    "words",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every `prefix` followed by a name, as (line number, name).
fn uses<'a>(text: &'a str, prefix: &str) -> Vec<(usize, &'a str)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find(prefix) {
            let after = &rest[i + prefix.len()..];
            let end = after.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(after.len());
            // `crate::{a, b}` lists several.
            if after.starts_with('{') {
                let close = after.find('}').unwrap_or(after.len());
                for name in after[1..close].split(',') {
                    let name = name.trim().split("::").next().unwrap_or("").trim();
                    if !name.is_empty() {
                        out.push((n + 1, name));
                    }
                }
            } else if end > 0 {
                out.push((n + 1, &after[..end]));
            }
            rest = &after[end.min(after.len())..];
        }
    }
    out
}

#[test]
fn library_modules_use_only_those_before_them() {
    let src = wgo_tests::bins::root().join("capture-user/src");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong = Vec::new();
    let mut aya_users = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        let text = std::fs::read_to_string(f).unwrap();
        if text.contains("aya::") {
            aya_users.push(rel.display().to_string());
        }
        let Some(may) = allowed.get(top.as_str()) else {
            // lib.rs, main.rs and cli/ sit on top of everything.
            assert!(
                ["lib", "main", "cli"].contains(&top.as_str()),
                "{} is in no layer: add it to ALLOWED and to lib.rs's table",
                rel.display()
            );
            continue;
        };
        for (line, name) in uses(&text, "crate::") {
            if name != top && !may.contains(&name) {
                wrong.push(format!("{}:{line}: {top} uses {name}", rel.display()));
            }
        }
        if top == "analysis" {
            let me = rel.file_stem().unwrap().to_string_lossy().to_string();
            let Some(pos) = ANALYSIS_CHAIN.iter().position(|m| *m == me) else {
                // mod.rs runs the chain; the unit tests' kit may use all of it.
                assert!(me == "mod" || me == "testkit", "analysis/{me}.rs is not in the chain");
                continue;
            };
            for (line, name) in uses(&text, "super::").into_iter().chain(uses(&text, "crate::analysis::")) {
                if let Some(other) = ANALYSIS_CHAIN.iter().position(|m| *m == name)
                    && other > pos
                {
                    wrong.push(format!("{}:{line}: analysis::{me} uses {name}, which comes after it", rel.display()));
                }
            }
        }
    }
    assert!(files.len() > 20, "read the sources from {}", src.display());
    assert!(wrong.is_empty(), "uses against the data flow:\n{}", wrong.join("\n"));
    assert_eq!(aya_users, vec!["node/capture.rs".to_string()], "only node::capture may use aya");
}
