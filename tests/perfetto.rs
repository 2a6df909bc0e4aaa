//! `wgo report --perfetto` on simulated incidents, decoded with Perfetto's official
//! schema (`tests/perfetto/check.py`, the `perfetto` PyPI package): tracks per node,
//! flows equal to the matched messages, the findings' slices, times in order per track.
//! No root needed.

use wgo::analysis::spec::Spec;
use wgo::analysis::{Inputs, analyze};
use wgo::report::json::write_json;
use wgo::report::perfetto::{analyze_to_json_and_perfetto, analyze_to_perfetto, write_perfetto};
use wgo_tests::bins::wgo;
use wgo_tests::sim::{self, Config, SPEC};

/// Writes a scenario's dumps, runs `wgo report --json --perfetto` on them, checks the
/// trace against the JSON with the official schema; returns check.py's counts.
fn report_and_check(name: &str, cfg: &Config) -> String {
    let (trace, _) = sim::generate(cfg);
    let dir = std::env::temp_dir().join(format!("wgo-perfetto-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    sim::write_dumps(&trace, &dir).unwrap();
    std::fs::write(dir.join("sim.toml"), SPEC).unwrap();
    let (json, pftrace) = (dir.join("report.json"), dir.join("incident.pftrace"));
    let out = std::process::Command::new(wgo())
        .arg("report")
        .arg(&dir)
        .arg("--spec")
        .arg(dir.join("sim.toml"))
        .arg("--json")
        .arg(&json)
        .arg("--perfetto")
        .arg(&pftrace)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("perfetto: {}", pftrace.display())));
    let checked = wgo_tests::perfetto::check(&pftrace, &json).unwrap_or_else(|e| panic!("{name}: {e}"));
    println!("{name}: {checked}");
    let _ = std::fs::remove_dir_all(dir);
    checked
}

/// The number check.py printed before `word`.
fn count(checked: &str, word: &str) -> usize {
    let before = checked.split(&format!(" {word}")).next().unwrap_or_else(|| panic!("no {word} in {checked}"));
    before.rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("no count of {word} in {checked}"))
}

#[test]
fn a_partition_with_losses_gaps_and_findings_opens_by_the_official_schema() {
    let checked = report_and_check("partition", &Config::default());
    assert_eq!(count(&checked, "node tracks"), 5);
    assert!(count(&checked, "flows") > 0, "{checked}");
    assert_eq!(count(&checked, "islands"), 2, "the partition's two islands: {checked}");
    assert!(count(&checked, "lost") > 0 && count(&checked, "recorder gaps") > 0, "{checked}");
    assert!(count(&checked, "findings") > 0, "{checked}");
}

#[test]
fn a_stall_and_a_closed_connection_open_by_the_official_schema() {
    let cfg = Config {
        seed: 2,
        partition: None,
        stall: Some((3, 1_500_000_000, 2_700_000_000)),
        lossy: Some((0, 2, 0.3)),
        closed_connection: true,
        ..Config::default()
    };
    let checked = report_and_check("stall", &cfg);
    assert_eq!(count(&checked, "stalls"), 1, "{checked}");
    assert_eq!(count(&checked, "islands"), 0, "{checked}");
}

/// The trace written while the order is built, alone or beside the JSON, is byte for byte
/// the one written after the analysis; the JSON beside it is the JSON alone.
#[test]
fn the_trace_written_while_ordering_equals_the_trace_written_after() {
    let spec = || Some(Spec::parse(SPEC, "sim.toml").unwrap());
    for cfg in [Config::default(), Config { seed: 4, nodes: 3, misdated_receives: 30, partition: None, ..Config::default() }] {
        let inputs = || Inputs { spec: spec(), missing_nodes: vec![] };
        let mut streamed = Vec::new();
        let a = analyze_to_perfetto(sim::generate(&cfg).0, inputs(), &mut streamed).unwrap();
        let (mut after, mut json_after) = (Vec::new(), Vec::new());
        let later = analyze(sim::generate(&cfg).0, inputs());
        write_perfetto(&later, &mut after).unwrap();
        write_json(&later, &mut json_after).unwrap();
        assert_eq!(a.trace.events.len(), later.trace.events.len());
        assert!(streamed == after, "seed {}: streamed {} bytes, after {} bytes", cfg.seed, streamed.len(), after.len());
        let (mut json_both, mut perfetto_both) = (Vec::new(), Vec::new());
        analyze_to_json_and_perfetto(sim::generate(&cfg).0, inputs(), &mut json_both, &mut perfetto_both).unwrap();
        assert!(perfetto_both == after, "seed {}: the trace beside the JSON differs", cfg.seed);
        assert!(json_both == json_after, "seed {}: the JSON beside the trace differs", cfg.seed);
    }
}

/// A trace that fails to be written (a full disk) is an error, not a panic or a hang.
#[test]
fn a_failing_output_is_an_error() {
    struct Full;
    impl std::io::Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::new(std::io::ErrorKind::StorageFull, "disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let cfg = Config { nodes: 3, seed: 6, ..Config::default() };
    let r = analyze_to_perfetto(sim::generate(&cfg).0, Inputs { spec: None, missing_nodes: vec![] }, Full);
    assert_eq!(r.err().map(|e| e.kind()), Some(std::io::ErrorKind::StorageFull));
}
