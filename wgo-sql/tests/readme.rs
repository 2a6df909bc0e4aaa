//! The README's `wgo sql` queries, taken from the README itself so that they cannot drift,
//! run against the Parquet tables of a simulated incident and checked against its analysis;
//! and the `wgo-sql` command line: its formats and its errors.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use wgo::analysis::anomalies::Kind;
use wgo::analysis::spec::Spec;
use wgo::analysis::trace::Dir;
use wgo::analysis::{Analysis, Inputs};
use wgo::report::analyze_to;
use wgo::report::parquet::TablesDir;
use wgo_tests::sim::{self, Config, SPEC};

/// The README's queries under its `wgo sql` heading: (first comment line, SQL).
fn readme_queries() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let start = readme.find("### SQL: `wgo sql`").expect("the README has its `wgo sql` section");
    let section = &readme[start..];
    let section = &section[..section[4..].find("\n## ").or(section[4..].find("\n### ")).map_or(section.len(), |i| i + 4)];
    let mut out = Vec::new();
    for block in section.split("```sql\n").skip(1) {
        let sql = block.split("```").next().unwrap().trim().to_string();
        let title = sql.lines().next().unwrap().trim_start_matches("--").trim().to_string();
        out.push((title, sql));
    }
    out
}

struct Incident {
    dir: PathBuf,
    a: Analysis,
}

fn node_name(a: &Analysis, n: usize) -> String {
    a.trace.nodes[n].name.clone()
}

/// A simulated incident with every kind of fault the queries look for, analysed once and
/// written as tables.
fn incident() -> &'static Incident {
    static I: OnceLock<Incident> = OnceLock::new();
    I.get_or_init(|| {
        let cfg = Config {
            seed: 24,
            lossy: Some((0, 2, 0.3)),
            stall: Some((3, 1_000_000_000, 1_600_000_000)),
            // No partition: its losses would compete with the lossy link's.
            partition: None,
            ..Config::default()
        };
        let (trace, _) = sim::generate(&cfg);
        let dir = std::env::temp_dir().join(format!("wgo-sql-readme-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let tables = dir.join("tables");
        let out = TablesDir::create(&tables).unwrap();
        let inputs = Inputs { spec: Some(Spec::parse(SPEC, "sim.toml").unwrap()), missing_nodes: vec![] };
        let (a, events) = analyze_to(trace, inputs, None, None, Some(&out)).unwrap();
        out.finish(&a, events.expect("the tables' events were written")).unwrap();
        Incident { dir: tables, a }
    })
}

/// Runs `sql` through the library, as `wgo sql` does; every column as text.
fn query(dir: &Path, sql: &str) -> Vec<BTreeMap<String, String>> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let ctx = wgo_sql::session(&wgo_sql::Limits { memory: 1 << 30, ..Default::default() }).unwrap();
        wgo_sql::register_dir(&ctx, dir).await.unwrap();
        let df = ctx.sql(sql).await.map_err(|e| wgo_sql::readable(&ctx, e)).unwrap_or_else(|e| panic!("{e}\n{sql}"));
        let batches: Vec<RecordBatch> = df.collect().await.unwrap_or_else(|e| panic!("{e}\n{sql}"));
        let mut rows = Vec::new();
        for b in batches {
            let cols: Vec<_> = b.columns().iter().map(|c| cast(c, &DataType::Utf8).unwrap()).collect();
            for i in 0..b.num_rows() {
                let mut row = BTreeMap::new();
                for (f, c) in b.schema().fields().iter().zip(&cols) {
                    let c = c.as_string::<i32>();
                    row.insert(f.name().clone(), if c.is_null(i) { String::new() } else { c.value(i).to_string() });
                }
                rows.push(row);
            }
        }
        rows
    })
}

fn int(row: &BTreeMap<String, String>, col: &str) -> i64 {
    row[col].parse().unwrap_or_else(|_| panic!("{col} = {:?} is not an integer", row[col]))
}

#[test]
fn every_readme_query_runs_and_says_what_the_analysis_says() {
    let inc = incident();
    let a = &inc.a;
    let queries = readme_queries();
    let titles: Vec<&str> = queries.iter().map(|(t, _)| t.as_str()).collect();
    println!("{titles:#?}");
    let mut checked = BTreeSet::new();
    for (title, sql) in &queries {
        let rows = query(&inc.dir, sql);
        println!("{title}: {} rows; first: {:?}", rows.len(), rows.first());
        assert!(!rows.is_empty(), "{title}: no rows");
        if title.starts_with("One-way delay per link") {
            // Every matched message counted once, on the links it crossed.
            let total: i64 = rows.iter().map(|r| int(r, "messages")).sum();
            assert_eq!(total as usize, a.matching.messages.len());
            let links: BTreeSet<(String, String)> = rows.iter().map(|r| (r["src_node"].clone(), r["dst_node"].clone())).collect();
            let truth: BTreeSet<(String, String)> = a
                .matching
                .messages
                .iter()
                .map(|m| {
                    (node_name(a, a.trace.events[m.0 as usize].node as usize), node_name(a, a.trace.events[m.1 as usize].node as usize))
                })
                .collect();
            assert_eq!(links, truth);
            for r in &rows {
                assert!(int(r, "min_us") <= int(r, "median_us") && int(r, "median_us") <= int(r, "max_us"), "{r:?}");
            }
        } else if title.starts_with("The loss matrix per 100 ms") {
            let lost: i64 = rows.iter().map(|r| int(r, "lost")).sum();
            let truth = a.anomalies.iter().filter(|x| x.kind == Kind::NetworkLoss).count();
            assert_eq!(lost as usize, truth);
            // The lossy link (node1 → node3, 30%) loses the most.
            let mut per_link: BTreeMap<(String, String), i64> = BTreeMap::new();
            for r in &rows {
                *per_link.entry((r["sender"].clone(), r["receiver"].clone())).or_default() += int(r, "lost");
            }
            let worst = per_link.iter().max_by_key(|(_, n)| **n).unwrap().0;
            assert_eq!(worst, &(node_name(a, 0), node_name(a, 2)), "{per_link:?}");
            assert!(rows.iter().all(|r| int(r, "from_ms") % 100 == 0));
        } else if title.starts_with("Top talkers in the last second") {
            let t = &a.order.t_ns;
            let end = *t.iter().max().unwrap();
            let mut bytes: BTreeMap<String, i64> = BTreeMap::new();
            for (i, e) in a.trace.events.iter().enumerate() {
                if e.dir == Dir::Send && t[i] > end - 1_000_000_000 {
                    *bytes.entry(node_name(a, e.node as usize)).or_default() += i64::from(e.orig_len);
                }
            }
            let mut truth: Vec<(i64, String)> = bytes.into_iter().map(|(n, b)| (-b, n)).collect();
            truth.sort();
            let got: Vec<(i64, String)> = rows.iter().map(|r| (-int(r, "bytes"), r["node"].clone())).collect();
            assert_eq!(got, truth.into_iter().take(5).collect::<Vec<_>>());
        } else if title.starts_with("What each stalled node received") {
            let stall = a.anomalies.iter().find(|x| x.kind == Kind::StalledNode).expect("the stall is found");
            let stalled = node_name(a, stall.nodes[0] as usize);
            let start = stall.span.unwrap().0;
            let truth = a
                .trace
                .events
                .iter()
                .enumerate()
                .filter(|(i, e)| {
                    e.dir == Dir::Recv
                        && node_name(a, e.node as usize) == stalled
                        && (start - 50_000_000..start).contains(&a.order.t_ns[*i])
                })
                .count();
            assert_eq!(rows.len(), truth);
            for r in &rows {
                assert_eq!(r["stalled"], stalled);
                assert!((-50_000..=0).contains(&int(r, "at_us")), "{r:?}");
            }
        } else if title.starts_with("Each violation with its causal past") {
            let ids: BTreeSet<i64> = rows.iter().map(|r| int(r, "violation_id")).collect();
            assert!(ids.iter().all(|&v| (v as usize) < a.violations.len()));
            for r in &rows {
                let (recv, sent) = (int(r, "received_us_before"), r["sent_us_before"].parse::<i64>().ok());
                assert!((0..10_000).contains(&recv), "{r:?}");
                // A receive's send is in its past too (t_ns is causally consistent).
                if let Some(s) = sent {
                    assert!(s >= recv, "{r:?}");
                }
            }
        } else {
            panic!("a README query this test does not check: {title}");
        }
        checked.insert(title.clone());
    }
    assert_eq!(checked.len(), 5, "the README's five queries: {titles:?}");
}

fn wgo_sql(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wgo-sql")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_command_line_writes_three_formats() {
    let inc = incident();
    let dir = inc.dir.to_str().unwrap();
    let sql = "SELECT node, count(*) AS n FROM events GROUP BY node ORDER BY node";
    let nodes = inc.a.trace.nodes.len();
    let (ok, table, err) = wgo_sql(&[dir, sql, "--threads", "2"]);
    assert!(ok, "{err}");
    assert!(table.contains("| node") && table.contains("| node1 "), "{table}");
    assert!(table.trim_end().ends_with(&format!("{nodes} rows")), "{table}");
    let (ok, csv, err) = wgo_sql(&[dir, sql, "--format", "csv"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "node,n");
    assert_eq!(lines.len(), nodes + 1);
    let total: usize = lines[1..].iter().map(|l| l.split(',').nth(1).unwrap().parse::<usize>().unwrap()).sum();
    assert_eq!(total, inc.a.trace.events.len());
    let (ok, json, err) = wgo_sql(&[dir, sql, "--format", "json", "--memory-limit", "256MiB"]);
    assert!(ok, "{err}");
    assert_eq!(json.lines().count(), nodes);
    assert!(json.lines().next().unwrap().starts_with("{\"node\":\"node1\",\"n\":"), "{json}");
}

#[test]
fn errors_name_what_does_not_exist() {
    let dir = incident().dir.to_str().unwrap().to_string();
    let (ok, _, err) = wgo_sql(&[&dir, "SELECT * FROM event"]);
    assert!(!ok);
    assert!(err.contains("no table `event` (did you mean `events`?)") && err.contains("clock_pairs"), "{err}");
    let (ok, _, err) = wgo_sql(&[&dir, "SELECT lable FROM events"]);
    assert!(!ok);
    assert!(err.contains("no column `lable` (did you mean `label`?)") && err.contains("t_ns"), "{err}");
    let (ok, _, err) = wgo_sql(&[&dir, "SELECT 1", "--memory-limit", "4 parsecs"]);
    assert!(!ok);
    assert!(err.contains("unknown unit"), "{err}");
    let (ok, _, err) = wgo_sql(&["/nonexistent-wgo-dir", "SELECT 1"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent-wgo-dir"), "{err}");
}
