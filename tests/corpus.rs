//! Real clustered programs from Debian, each healthy and with one fault of each kind (a
//! partition by the nodes' own firewalls, a lossy link at the switch, a stopped process)
//! injected the way an operator meets them. The findings must name the fault, and nothing
//! false may be claimed; each test prints its lines and precision/recall table.
//! `matrix` (ignored; `cargo xtask corpus` runs it) runs every scenario of every program
//! and prints the table of BENCHMARKS.md, per half.

use std::path::{Path, PathBuf};
use std::time::Instant;

use wgo_tests::corpus::{
    Fault, Judged, Run, Scenario, StepJudged, System, TABLE_HEAD, Tally, judge, judge_step, line, rejudge, run_scenario, seed, stepped,
};
use wgo_tests::helpers::{require_root, tempdir};

/// What a half's runs gave: as recorded, and again with a clock step added to each.
#[derive(Default)]
struct Tallies {
    recorded: Tally,
    stepped: Tally,
    steps: StepJudged,
}

impl Tallies {
    fn merge(&mut self, o: &Tallies) {
        self.recorded.merge(&o.recorded);
        self.stepped.merge(&o.stepped);
        self.steps.found += o.steps.found;
        self.steps.false_steps += o.steps.false_steps;
        self.steps.missed += o.steps.missed;
    }

    /// The tables' rows: as recorded, with a step, and how the steps were found.
    fn rows(&self, label: &str) -> String {
        let s = &self.steps;
        let recall = if s.found + s.missed > 0 { format!("{:.2}", s.found as f64 / (s.found + s.missed) as f64) } else { "–".into() };
        format!(
            "{}{}| | clock_step (added) | {} | {} | {} | | {recall} |\n",
            self.recorded.rows(label),
            self.stepped.rows(&format!("{label}, one clock stepped")),
            s.found,
            s.false_steps,
            s.missed
        )
    }
}

/// The run's dumps again with one node's clock stepped: reported, judged and printed. The
/// step must be found, and must hide nothing that the recording as made shows.
fn with_step(r: &Run, dir: &Path, bin: &Path, judged: &[Judged], t: &mut Tallies) -> Result<(), String> {
    let (mut sr, step) = stepped(r, dir, bin).map_err(|e| format!("{e:#}"))?;
    // The step's own finding is judged by `judge_step`, from the nodes' steps; the rest as in
    // any run (a healthy run stays quiet).
    sr.findings.retain(|f| f["kind"] != "clock_step");
    let sj = judge(&sr);
    let steps = judge_step(dir, &step).map_err(|e| format!("{e:#}"))?;
    println!(
        "  with {}'s clock stepped {:+} ms at {}: {} ; step {steps:?}",
        step.node,
        step.size_ns / 1_000_000,
        step.at_ns,
        line(&sr, &sj)
    );
    t.stepped.add(&sr, &sj);
    t.steps.found += steps.found;
    t.steps.false_steps += steps.false_steps;
    t.steps.missed += steps.missed;
    let worse: Vec<&str> =
        judged.iter().zip(&sj).filter(|(a, b)| b.found < a.found || b.false_claims > a.false_claims).map(|(a, _)| a.kind).collect();
    // A healthy run says no more with the step than without it.
    let noise = r.truth.fault == Fault::Healthy && sr.findings.len() > r.findings.len();
    if steps.missed > 0 || steps.false_steps > 0 || !worse.is_empty() || noise {
        return Err(format!(
            "{} with {}'s clock stepped {} ns at {} (in {}): step {steps:?}, worse for {worse:?}, {} findings:\n{}",
            line(r, judged),
            step.node,
            step.size_ns,
            step.at_ns,
            dir.join("stepped").display(),
            sr.findings.len(),
            sr.summary
        ));
    }
    Ok(())
}

/// Runs `scenarios` of `system`; returns the tallies and the failures (a missed fault, a false
/// claim, any finding in a healthy run), keeping those runs' dumps for a look.
/// `tolerated`: finding kinds whose false claims and misses are printed but are no failure
/// (a known open problem, named in BENCHMARKS.md).
/// `keep`: a directory where every run's dumps and truth stay (for `rejudge`).
/// A clock step that is missed or hides a fault is printed, not failed: see `ci`.
/// `again`: a run that fails is run once more with the next seed, and only a second failure
/// counts (both are printed and tallied): see `ci`.
fn scenarios(
    system: System,
    scenarios: &[Scenario],
    seed: u64,
    tolerated: &[&str],
    keep: Option<&Path>,
    again: bool,
) -> (Tallies, Vec<String>) {
    let mut t = Tallies::default();
    let mut failures = Vec::new();
    for &sc in scenarios.iter().filter(|s| s.applies(system.nodes())) {
        for attempt in 0..=u64::from(again) {
            let seed = seed + attempt;
            let last = attempt == u64::from(again);
            let failure = scenario(system, sc, seed, tolerated, keep, &mut t);
            match failure {
                None => break,
                Some(f) if last => failures.push(f),
                Some(f) => println!("  failed, run again with seed {}: {f}", seed + 1),
            }
        }
    }
    (t, failures)
}

/// One run of `sc`, tallied into `t`; its failure, if it failed.
fn scenario(system: System, sc: Scenario, seed: u64, tolerated: &[&str], keep: Option<&Path>, t: &mut Tallies) -> Option<String> {
    let dir = match keep {
        Some(k) => {
            let d = k.join(format!("{system:?}-{}", sc.name()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).expect("a directory to keep the run in");
            d
        }
        None => tempdir(&format!("corpus-{system:?}-{}-{seed}", sc.name())),
    };
    let r = match run_scenario(system, sc, seed, &dir) {
        Ok(r) => r,
        Err(e) => return Some(format!("{system:?} {} (seed {seed}) did not run: {e:#}", sc.name())),
    };
    let judged = judge(&r);
    t.recorded.add(&r, &judged);
    print_run(&r, &judged);
    let step = with_step(&r, &dir, &wgo_tests::bins::wgo(), &judged, t);
    let counts = |j: &Judged| !tolerated.contains(&j.kind) && (j.false_claims > 0 || j.missed > 0);
    let healthy_noise =
        r.truth.fault == Fault::Healthy && r.findings.iter().any(|f| !f["kind"].as_str().is_some_and(|k| tolerated.contains(&k)));
    let failure =
        (judged.iter().any(counts) || healthy_noise).then(|| format!("{} (in {}):\n{}", line(&r, &judged), dir.display(), r.summary));
    if let Err(e) = step {
        println!("  clock step: {e}");
    }
    if failure.is_none() && keep.is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
    failure
}

fn print_run(r: &wgo_tests::corpus::Run, judged: &[Judged]) {
    println!("{}", line(r, judged));
    for f in &r.findings {
        println!("    {} {}", f["kind"].as_str().unwrap_or("?"), f["text"].as_str().unwrap_or(""));
    }
}

fn ci(system: System, tolerated: &[&str]) {
    require_root();
    let seed = seed();
    println!("corpus seed {seed} (WGO_CORPUS_SEED={seed} repeats it)");
    // The clock-step judgement is printed, not failed, here: CI seeds 746444 (Redis, a
    // replica stepped while cut off, its one peer the master) missed steps the matrix
    // measures (BENCHMARKS.md).
    // A run that fails is run again with the next seed, and fails the test only if that
    // fails too: with four runs of each of eleven programs, a claim the matrix shows in a
    // few percent of runs (a 50% link's chance burst called a partition or a stall: CI
    // seeds 856650, 6290, 419659) failed most CI runs, while a detector that errs on a
    // program as a rule still fails twice.
    let (tally, failures) = scenarios(system, Scenario::CI, seed, tolerated, None, true);
    print!("\n{TABLE_HEAD}{}", tally.rows(&format!("{system:?}")));
    assert!(failures.is_empty(), "seed {seed}:\n{}", failures.join("\n\n"));
}

// dnsmasq's 50% loss on its one client link: dig waits out a second after each loss, so the
// link falls as silent as a cut; CI seeds 727393, 69794 and 856650 and the matrix's seed
// 20261205 called it a partition (BENCHMARKS.md: dnsmasq's partition false claims).
const TOLERATED_DNSMASQ: &[&str] = &["partition"];
// etcd's 50% loss on one link gave a false stall at CI seed 6290.
const TOLERATED_ETCD: &[&str] = &["stalled_node"];

#[test]
fn dnsmasq_and_dig() {
    ci(System::Dnsmasq, TOLERATED_DNSMASQ);
}

#[test]
fn redis_replication() {
    ci(System::Redis, &[]);
}

#[test]
fn etcd_raft() {
    ci(System::Etcd, TOLERATED_ETCD);
}

// What the first measurement (and, where the runs were kept, the detect branch's analysis
// of the same recordings) got wrong in these four scenarios; see BENCHMARKS.md.
const TOLERATED_SENTINEL: &[&str] = &["stalled_node"];
const TOLERATED_NATS: &[&str] = &["partition", "stalled_node"];
const TOLERATED_SERF: &[&str] = &["partition", "lossy_link", "stalled_node"];
// BGP's keep-alives are sparse: at seed 180715 the 50%-lossy link carried four sends in the
// fault's 6 s (three lost copies of one keep-alive within 0.42 s, then node2's hold timer
// reset the session), too few and too brief for a lossy link; the matrix's BIRD lossy_link
// recall was 2 of 6 (BENCHMARKS.md).
const TOLERATED_BIRD: &[&str] = &["partition", "lossy_link"];
const TOLERATED_KNOT: &[&str] = &["partition", "lossy_link", "stalled_node"];
const TOLERATED_CHRONY: &[&str] = &[];
const TOLERATED_HAPROXY: &[&str] = &["lossy_link", "stalled_node"];
// keepalived's first measurement: one-way multicast gives no clock estimate for the backups
// ("clock"), and the master's identical adverts read as one message resent ("retry_storm").
const TOLERATED_KEEPALIVED: &[&str] = &["lossy_link", "stalled_node", "clock", "retry_storm"];

// Redis Sentinel (tuning half) and the held-out half: their tolerated kinds are printed, not
// failed, so that CI still checks that each program runs and is recorded, that the kinds
// found today stay found, and that a healthy run is quiet.

#[test]
fn redis_sentinel() {
    ci(System::Sentinel, TOLERATED_SENTINEL);
}

#[test]
fn nats_cluster() {
    ci(System::Nats, TOLERATED_NATS);
}

#[test]
fn serf_gossip() {
    ci(System::Serf, TOLERATED_SERF);
}

#[test]
fn bird_bgp() {
    ci(System::Bird, TOLERATED_BIRD);
}

#[test]
fn knot_notify_and_transfer() {
    ci(System::Knot, TOLERATED_KNOT);
}

#[test]
fn chrony_ntp() {
    ci(System::Chrony, TOLERATED_CHRONY);
}

#[test]
fn haproxy_peers() {
    ci(System::Haproxy, TOLERATED_HAPROXY);
}

#[test]
fn keepalived_vrrp() {
    ci(System::Keepalived, TOLERATED_KEEPALIVED);
}

/// Every scenario of every program (or of the programs `WGO_CORPUS_ONLY`, comma-separated, names),
/// the table per half. Fails only when a scenario could not be run: it measures.
#[test]
#[ignore = "the whole matrix, about 20 minutes: cargo xtask corpus"]
fn matrix() {
    require_root();
    let seed = seed();
    let only = std::env::var("WGO_CORPUS_ONLY").ok();
    let wanted = |s: &System| only.as_deref().is_none_or(|o| o.split(',').any(|w| w.eq_ignore_ascii_case(&format!("{s:?}"))));
    // WGO_CORPUS_SCENARIOS: only these (names as printed, comma-separated).
    let picked = std::env::var("WGO_CORPUS_SCENARIOS").ok();
    let chosen: Vec<Scenario> =
        Scenario::ALL.iter().copied().filter(|s| picked.as_deref().is_none_or(|p| p.split(',').any(|w| w == s.name()))).collect();
    // WGO_CORPUS_KEEP: keep every run's dumps and truth there, for `rejudge`.
    let keep = std::env::var_os("WGO_CORPUS_KEEP").map(PathBuf::from);
    println!("corpus seed {seed} (WGO_CORPUS_SEED={seed} repeats it)");
    let began = Instant::now();
    let (mut tuning, mut held_out) = (Tallies::default(), Tallies::default());
    let mut per_system = String::new();
    let mut broken = Vec::new();
    for &system in System::ALL.iter().filter(|s| wanted(s)) {
        let (t, failures) = scenarios(system, &chosen, seed, &["partition", "lossy_link", "stalled_node"], keep.as_deref(), false);
        broken.extend(failures.into_iter().filter(|f| f.contains("did not run")));
        per_system += &t.rows(&format!("{system:?}{}", if system.held_out() { " (held out)" } else { "" }));
        if system.held_out() { &mut held_out } else { &mut tuning }.merge(&t);
    }
    println!("\n{TABLE_HEAD}{}{}", tuning.rows("**tuning half**"), held_out.rows("**held-out half**"));
    println!("{TABLE_HEAD}{per_system}");
    println!("matrix took {:.0} s", began.elapsed().as_secs_f64());
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// The runs `matrix` kept in `WGO_CORPUS_KEEP`, reported on again by the `wgo` at
/// `WGO_CORPUS_WGO` (another build: another analysis of the same recordings) and judged;
/// prints the same lines and tables. Needs no root: nothing is recorded.
#[test]
#[ignore = "judges kept runs again: WGO_CORPUS_KEEP=DIR WGO_CORPUS_WGO=BIN"]
fn rejudge_kept() {
    let keep = PathBuf::from(std::env::var_os("WGO_CORPUS_KEEP").expect("WGO_CORPUS_KEEP: the matrix's kept runs"));
    let bin = PathBuf::from(std::env::var_os("WGO_CORPUS_WGO").expect("WGO_CORPUS_WGO: the wgo to report with"));
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&keep).expect("the kept runs").flatten().map(|e| e.path()).collect();
    dirs.sort();
    let (mut tuning, mut held_out) = (Tallies::default(), Tallies::default());
    let mut per_system: Vec<(System, Tallies)> = Vec::new();
    for dir in dirs.iter().filter(|d| d.join("truth.json").exists()) {
        let r = rejudge(dir, &bin).unwrap_or_else(|e| panic!("{}: {e:#}", dir.display()));
        let judged = judge(&r);
        print_run(&r, &judged);
        let mut t = Tallies::default();
        t.recorded.add(&r, &judged);
        if let Err(e) = with_step(&r, dir, &bin, &judged, &mut t) {
            println!("  clock step: {e}");
        }
        if r.system.held_out() { &mut held_out } else { &mut tuning }.merge(&t);
        match per_system.iter_mut().find(|(s, _)| *s == r.system) {
            Some((_, all)) => all.merge(&t),
            None => per_system.push((r.system, t)),
        }
    }
    println!("\n{TABLE_HEAD}{}{}", tuning.rows("**tuning half**"), held_out.rows("**held-out half**"));
    let rows: String = per_system.iter().map(|(s, t)| t.rows(&format!("{s:?}{}", if s.held_out() { " (held out)" } else { "" }))).collect();
    println!("{TABLE_HEAD}{rows}");
}
