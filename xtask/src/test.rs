//! The whole test suite: formatting and lints, unit tests, the root/BPF integration
//! tests (against the release binaries `build::all` made), short fuzz runs.

use crate::exec::exec;
use crate::setup::clean_command;

/// How long each fuzz target runs in the test suite, seconds.
const FUZZ_SECONDS: u32 = 20;

pub fn run(extra: &[String]) -> anyhow::Result<()> {
    crate::build::all()?;
    crate::setup::packages(crate::setup::TEST_PACKAGES)?;
    crate::setup::packages(wgo_tests::corpus::PACKAGES)?;
    crate::setup::browser_test_packages()?;
    // Perfetto's schema for the trace tests (a virtualenv under target/, made once).
    wgo_tests::perfetto::python().map_err(anyhow::Error::msg)?;
    if extra.is_empty() {
        lint()?;
    }
    exec(
        clean_command("cargo")
            .current_dir(crate::build::root())
            .env("WGO_BPF_OBJECT", crate::build::bpf_object())
            .env("WGO_BIN_DIR", crate::build::bin_dir())
            // Not wgo-sql: DataFusion's first build alone takes about 45 CPU-minutes, more
            // than the suite's budget; `cargo xtask test-sql` builds, lints and tests it.
            .args(["test", "--workspace", "--exclude", "wgo-sql", "--features", "wgo-tests/bpf-tests"])
            .args(extra)
            // One at a time: floods and benchmarks-in-tests must not disturb each other.
            .args(["--", "--test-threads=1"]),
    )?;
    if extra.is_empty() {
        fuzz()?;
    }
    Ok(())
}

/// `cargo fmt --check` and clippy with every warning an error, on every target, and on the
/// eBPF programs (nightly, for the BPF target: the workspace's clippy never compiles them).
pub fn lint() -> anyhow::Result<()> {
    let root = crate::build::root();
    eprintln!("xtask: checking formatting and lints");
    exec(clean_command("cargo").current_dir(&root).args(["fmt", "--all", "--check"]))?;
    exec(clean_command("cargo").current_dir(&root).env("WGO_BPF_OBJECT", crate::build::bpf_object()).args([
        "clippy",
        "--quiet",
        "--workspace",
        "--exclude",
        "wgo-sql",
        "--all-targets",
        "--features",
        "wgo-tests/bpf-tests",
        "--",
        "-D",
        "warnings",
    ]))?;
    exec(crate::build::bpf_cargo("clippy").args(["--", "-D", "warnings"]))
}

/// `wgo sql`'s crate (DataFusion): clippy with every warning an error, then its tests
/// (the README's queries against a simulated incident, output formats, errors, the scale
/// stages on 200 k events).
pub fn sql() -> anyhow::Result<()> {
    let root = crate::build::root();
    exec(clean_command("cargo").current_dir(&root).args(["clippy", "--quiet", "-p", "wgo-sql", "--all-targets", "--", "-D", "warnings"]))?;
    exec(clean_command("cargo").current_dir(&root).args(["test", "-p", "wgo-sql"]))
}

/// Runs each fuzz target briefly, from a corpus seeded with valid messages.
pub fn fuzz() -> anyhow::Result<()> {
    crate::setup::cargo_fuzz()?;
    let root = crate::build::root();
    seed_corpus(&root.join("fuzz/corpus"))?;
    // (target, libFuzzer options): whole reports get room for a few hundred packets, and an
    // input that takes over 5 s to report on is a failure too.
    let targets: [(&str, &[&str]); 4] =
        [("trigger", &[]), ("frames", &[]), ("spec", &[]), ("report", &["-max_len=65536", "-timeout=5", "-rss_limit_mb=4096"])];
    for (target, options) in targets {
        eprintln!("xtask: fuzzing {target} for {FUZZ_SECONDS} s");
        exec(
            clean_command("cargo")
                .current_dir(&root)
                .env("WGO_BPF_OBJECT", crate::build::bpf_object())
                .args(["+nightly", "fuzz", "run", "--fuzz-dir", "fuzz", target])
                .arg(format!("fuzz/corpus/{target}"))
                .args(["--", &format!("-max_total_time={FUZZ_SECONDS}"), "-print_final_stats=1"])
                .args(options),
        )?;
    }
    Ok(())
}

fn seed_corpus(dir: &std::path::Path) -> anyhow::Result<()> {
    use wgo::transport::wire::{Frame, Heard, Offer, Secret, Trigger};
    let secret = Secret::new(b"fuzzing secret, 16+ bytes".to_vec()).expect("long enough");
    let trig = dir.join("trigger");
    std::fs::create_dir_all(&trig)?;
    let t = Trigger {
        id: 7,
        sent_ns: 1,
        collector: Some("10.0.0.1:7300".parse()?),
        port: 7300,
        reason: "node3: app (pid 812) killed by SIGSEGV".into(),
    };
    std::fs::write(trig.join("valid"), t.encode(&secret))?;
    std::fs::write(
        trig.join("heard"),
        Heard { trigger_id: 7, heard_ns: 2, sent_ns: 1, node: "node1".into(), reason: "manual".into() }.encode(&secret),
    )?;
    let frames = dir.join("frames");
    std::fs::create_dir_all(&frames)?;
    let mut all = Vec::new();
    for f in [
        Frame::Hello { node: "node1".into(), nonce: [1; 16] },
        Frame::Challenge { nonce: [2; 16], mac: [3; 32] },
        Frame::Offer(Offer { trigger_id: 7, heard_ns: 2, size: 100, sha256: [4; 32], mac: [5; 32] }),
        Frame::Resume { offset: 9 },
        Frame::Refuse { reason: "no".into() },
        Frame::Done { ok: true, mac: [6; 32] },
        Frame::Data(b"dump bytes".to_vec()),
    ] {
        all.extend(f.encode());
    }
    std::fs::write(frames.join("session"), all)?;

    // Specs: the demo's and the simulator's.
    let spec = dir.join("spec");
    std::fs::create_dir_all(&spec)?;
    std::fs::copy(crate::build::root().join("examples/demo.toml"), spec.join("demo.toml"))?;
    std::fs::write(spec.join("sim.toml"), wgo_tests::sim::SPEC)?;

    // Reports: small dumps from the simulator, written by the real dump writer, with
    // every fault it makes (loss, a partition, a duplicate, a recorder gap, TCP).
    let report = dir.join("report");
    std::fs::create_dir_all(&report)?;
    let cfg = wgo_tests::sim::Config {
        nodes: 2,
        duration_ns: 300_000_000,
        task_every_ns: 30_000_000,
        heartbeat_every_ns: 50_000_000,
        broadcast_every_ns: 100_000_000,
        partition: None,
        ..wgo_tests::sim::Config::default()
    };
    let tmp = dir.join(".sim");
    wgo_tests::sim::write_dumps(&wgo_tests::sim::generate(&cfg).0, &tmp)?;
    for e in std::fs::read_dir(&tmp)?.flatten() {
        let bytes = std::fs::read(e.path())?;
        // Within the fuzzer's length limit: a cut dump is still a dump (read up to the cut).
        std::fs::write(report.join(e.file_name()), &bytes[..bytes.len().min(60_000)])?;
    }
    std::fs::remove_dir_all(&tmp)?;
    // And a real one, recorded by `wgo record` (tests/data/README.md).
    std::fs::copy(crate::build::root().join("tests/data/real-node1.pcapng"), report.join("real-node1.pcapng"))?;
    Ok(())
}
