//! `wgo report --parquet` on simulated incidents, read with pyarrow (`tests/tables/check.py`)
//! and checked against the JSON of the same run: every table's rows, the events'
//! partitions, ids, times and columns. No root needed.

use std::path::{Path, PathBuf};

use wgo::analysis::spec::Spec;
use wgo::analysis::{Inputs, analyze};
use wgo::report::json::write_json;
use wgo::report::parquet::TablesDir;
use wgo::report::perfetto::write_perfetto;
use wgo_tests::bins::wgo;
use wgo_tests::sim::{self, Config, SPEC};
use wgo_tests::tables::Unavailable;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgo-tables-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a scenario's dumps into `dir` (with the spec beside them).
fn dumps(cfg: &Config, dir: &Path) {
    let (trace, _) = sim::generate(cfg);
    sim::write_dumps(&trace, dir).unwrap();
    std::fs::write(dir.join("sim.toml"), SPEC).unwrap();
}

fn report(dir: &Path, extra: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(wgo()).arg("report").arg(dir).arg("--spec").arg(dir.join("sim.toml")).args(extra).output().unwrap()
}

/// Runs `wgo report --json --parquet` on a scenario and checks the tables against the JSON
/// with pyarrow; check.py's counts, or None when pip cannot reach its index (said why).
fn report_and_check(name: &str, cfg: &Config) -> Option<String> {
    let dir = scratch(name);
    dumps(cfg, &dir);
    let (json, tables) = (dir.join("report.json"), dir.join("tables"));
    let out = report(&dir, &["--json".as_ref(), json.as_os_str(), "--parquet".as_ref(), tables.as_os_str()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("parquet: {}", tables.display())));
    let checked = match wgo_tests::tables::check(&tables, &json) {
        Ok(c) => c,
        Err(Unavailable::Offline(why)) => {
            println!("SKIPPED {name}: pyarrow cannot be installed, pip cannot reach its index: {why}");
            return None;
        }
        Err(Unavailable::Broken(why)) => panic!("{name}: {why}"),
    };
    println!("{name}: {checked}");
    let _ = std::fs::remove_dir_all(dir);
    Some(checked)
}

/// The number check.py printed before `word`.
fn count(checked: &str, word: &str) -> usize {
    let before = checked.split(&format!(" {word}")).next().unwrap_or_else(|| panic!("no {word} in {checked}"));
    before.rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("no count of {word} in {checked}"))
}

#[test]
fn a_partition_reads_back_in_pyarrow_as_the_json_says() {
    let Some(checked) = report_and_check("partition", &Config::default()) else { return };
    assert_eq!(count(&checked, "node partitions"), 5, "{checked}");
    assert!(count(&checked, "messages") > 0 && count(&checked, "anomalies") > 0 && count(&checked, "findings") > 0, "{checked}");
}

#[test]
fn a_stall_a_lossy_link_and_clock_steps_read_back_in_pyarrow_as_the_json_says() {
    let cfg = Config {
        seed: 2,
        partition: None,
        stall: Some((3, 1_500_000_000, 2_700_000_000)),
        lossy: Some((0, 2, 0.3)),
        closed_connection: true,
        clock_steps: vec![(1, 1_000_000_000, 200_000_000)],
        ..Config::default()
    };
    let Some(checked) = report_and_check("stall", &cfg) else { return };
    assert_eq!(count(&checked, "node partitions"), 5, "{checked}");
}

/// Writing the tables beside the JSON and the trace changes neither: both are byte for
/// byte what is written after the analysis.
#[test]
fn the_json_and_trace_beside_the_tables_are_unchanged() {
    let cfg = Config { seed: 4, nodes: 3, misdated_receives: 30, partition: None, ..Config::default() };
    let inputs = || Inputs { spec: Some(Spec::parse(SPEC, "sim.toml").unwrap()), missing_nodes: vec![] };
    let later = analyze(sim::generate(&cfg).0, inputs());
    let (mut json_after, mut perfetto_after) = (Vec::new(), Vec::new());
    write_json(&later, &mut json_after).unwrap();
    write_perfetto(&later, &mut perfetto_after).unwrap();
    let dir = scratch("beside");
    let tables = TablesDir::create(&dir.join("tables")).unwrap();
    let (mut json, mut perfetto) = (Vec::new(), Vec::new());
    let (a, events) =
        wgo::report::analyze_to(sim::generate(&cfg).0, inputs(), Some(&mut json), Some(&mut perfetto), Some(&tables)).unwrap();
    let events = events.expect("the tables were asked for");
    assert_eq!(events.rows, a.trace.events.len());
    tables.finish(&a, events).unwrap();
    assert!(json == json_after, "the JSON beside the tables differs");
    assert!(perfetto == perfetto_after, "the trace beside the tables differs");
    assert!(dir.join("tables/_wgo_tables.json").is_file() && !dir.join("tables.partial").exists());
    let _ = std::fs::remove_dir_all(dir);
}

/// A DIR that is a file, or a directory wgo did not write, is refused before the analysis
/// and left as it was; a second run replaces the first run's tables.
#[test]
fn a_bad_dir_is_refused_and_an_old_one_replaced() {
    let dir = scratch("bad");
    dumps(&Config { nodes: 3, seed: 6, partition: None, ..Config::default() }, &dir);
    let file = dir.join("taken");
    std::fs::write(&file, "mine").unwrap();
    let out = report(&dir, &["--parquet".as_ref(), file.as_os_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("taken") && err.contains("not a directory"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"mine");
    let foreign = dir.join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let out = report(&dir, &["--parquet".as_ref(), foreign.as_os_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("wgo did not write"), "{err}");
    assert_eq!(std::fs::read(foreign.join("notes.txt")).unwrap(), b"mine");
    let tables = dir.join("tables");
    for run in 0..2 {
        let out = report(&dir, &["--parquet".as_ref(), tables.as_os_str()]);
        assert!(out.status.success(), "run {run}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(tables.join("_wgo_tables.json").is_file() && tables.join("events").is_dir(), "run {run}");
        assert!(!wgo::outfile::partial_path(&tables).exists(), "run {run}: the partial directory is left");
    }
    let _ = std::fs::remove_dir_all(dir);
}
