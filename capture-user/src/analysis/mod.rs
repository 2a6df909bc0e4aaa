//! The collector's analysis: from per-node dumps to one causally ordered story.
//! Pure code: no aya, no root.
//!
//! Pipeline: read dumps ([`trace`]) → match certain messages ([`matching`]) → estimate
//! clocks from them ([`clocks`]) → match the rest by corrected time → rule edges
//! ([`rules`], from a [`spec`]) → happens-before order ([`order`]) → invariants and
//! anomalies ([`anomalies`]) → JSON, merged pcapng and a summary ([`output`]).

pub mod trace;
pub mod matching;
pub mod clocks;
pub mod html;
pub mod spec;
pub mod order;
pub mod rules;
pub mod anomalies;
pub mod output;

/// A reference-clock time as UTC `HH:MM:SS.mmmuuu` (what people read in summaries).
pub fn fmt_time(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let sub = ns.rem_euclid(1_000_000_000);
    let day = secs.rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}.{:06}", day / 3600, day / 60 % 60, day % 60, sub / 1000)
}

use std::collections::BTreeSet;

use anomalies::Anomaly;
use clocks::Clocks;
use matching::Matching;
use order::{EdgeKind, Order};
use rules::Violation;
use spec::Spec;
use trace::{EventId, Trace};

/// Everything the collector worked out.
pub struct Analysis {
    pub trace: Trace,
    pub spec: Spec,
    /// Message type per event (`rules::UNKNOWN` if none).
    pub classes: Vec<u16>,
    pub matching: Matching,
    pub clocks: Clocks,
    pub order: Order,
    pub rule_edges: usize,
    /// (earlier, later) pairs from the spec's rules.
    pub rule_edge_list: Vec<(EventId, EventId)>,
    pub violations: Vec<Violation>,
    pub anomalies: Vec<Anomaly>,
}

#[derive(Default)]
pub struct Inputs {
    pub spec: Option<Spec>,
    /// Nodes expected by the trigger that sent no dump.
    pub missing_nodes: Vec<String>,
}

pub fn analyze(trace: Trace, inputs: Inputs) -> Analysis {
    analyze_inner(trace, inputs, None::<std::io::Sink>).0
}

/// Analyzes and writes the JSON report (as [`Analysis::write_json`] would) to `out`.
/// The events are written while the order is being built, so the output's I/O
/// overlaps the analysis instead of following it.
pub fn analyze_to_json<W: std::io::Write + Send>(trace: Trace, inputs: Inputs, out: W) -> std::io::Result<Analysis> {
    // Small: the events come in pieces larger than this, which pass straight through.
    let (a, written) = analyze_inner(trace, inputs, Some(std::io::BufWriter::with_capacity(64 << 10, out)));
    let mut phase = Phase::new();
    let mut w = written.expect("a writer was given")?;
    a.write_json_tail(&mut w)?;
    std::io::Write::flush(&mut w)?;
    phase.done("rest of the JSON");
    Ok(a)
}

fn analyze_inner<W: std::io::Write + Send>(trace: Trace, inputs: Inputs, json: Option<W>) -> (Analysis, Option<std::io::Result<W>>) {
    let mut phase = Phase::new();
    let spec = inputs.spec.unwrap_or_default();
    let classes = rules::classify(&trace, &spec);
    phase.done("classify");
    // Clocks from certain matches only: a wrong time-resolved match would poison the bounds.
    let index = matching::MatchIndex::new(&trace);
    phase.done("match index");
    let mut matching = matching::match_messages(&trace, &index);
    phase.done("match (certain)");
    let clocks = clocks::estimate(&trace, &matching.messages);
    phase.done("clocks");
    matching::resolve_by_time(&mut matching, &trace, &index, &clocks);
    drop(index);
    phase.done("match (by time)");
    let (rule_edges, mut violations) = rules::rule_edges(&trace, &spec, &classes, &clocks);
    phase.done("rules");
    let n_rule = rule_edges.len();
    let rule_edge_list: Vec<(EventId, EventId)> = rule_edges.iter().map(|&(a, b, _)| (a, b)).collect();
    // The order and most anomalies do not depend on each other: built side by side,
    // while the JSON's events are written as the order places them.
    let describe = |id: EventId| rules::describe(&trace, &spec, &classes, id);
    let event_json = output::EventJson::new(&trace, &spec, &classes);
    let ((order, mut anomalies), json) = std::thread::scope(|scope| {
        let (trace, clocks, event_json, matching) = (&trace, &clocks, &event_json, &matching);
        let (placed_tx, placed_rx) = std::sync::mpsc::sync_channel::<Vec<order::Placed>>(4);
        let writer = json.map(|mut w| {
            std::thread::Builder::new()
                .name("wgo-json".into())
                .spawn_scoped(scope, move || {
                    event_json.write_head(&mut w, clocks)?;
                    event_json.write_events_from(w, placed_rx)
                })
                .expect("spawning the JSON writer")
        });
        let placed_tx = writer.is_some().then_some(placed_tx);
        let order_pass = move || {
            let t = std::time::Instant::now();
            // Straight into the graph: a list of them first would be 16 bytes a message.
            let cross = matching.messages.iter().enumerate().map(|(i, &(s, r))| (s, r, EdgeKind::Message(i as u32))).chain(rule_edges);
            let order = order::order(trace, clocks, cross, &mut |batch| {
                if let Some(tx) = &placed_tx {
                    // A failed writer is reported when it is joined; the order goes on.
                    let _ = tx.send(batch.to_vec());
                }
            });
            tracing::debug!("  order alone: {:.3} s", t.elapsed().as_secs_f64());
            order
        };
        let anomaly_pass = || {
            let t = std::time::Instant::now();
            let describe = |id: EventId| rules::describe(trace, &spec, &classes, id);
            let found = anomalies::find(&anomalies::Context { trace, matching, clocks, describe: &describe, missing_nodes: &inputs.missing_nodes });
            tracing::debug!("  anomalies alone: {:.3} s", t.elapsed().as_secs_f64());
            found
        };
        let found = rayon::join(order_pass, anomaly_pass);
        (found, writer.map(|h| h.join().expect("JSON writer thread panicked")))
    });
    drop(event_json);
    phase.done("order and anomalies");
    let inv = rules::check_invariants(&trace, &spec, &classes, &order.t_ns, &clocks);
    phase.done("invariants");
    let unanswered: BTreeSet<String> = spec
        .invariants
        .iter()
        .filter(|i| matches!(i, spec::InvariantDef::Answered { .. }))
        .map(|i| i.name().to_string())
        .collect();
    let contradictions = order
        .cycles
        .iter()
        .map(|c| {
            let parts: Vec<String> = c.edges.iter().map(|&(a, b, k)| edge_text(&spec, &matching, &describe, a, b, k)).collect();
            let (a, b, k) = c.dropped;
            format!(
                "contradiction: {} cannot all hold; ignored {}",
                parts.join(", and "),
                edge_text(&spec, &matching, &describe, a, b, k)
            )
        })
        .collect();
    anomalies::add_from_order(&mut anomalies, &inv, &unanswered, contradictions);
    violations.extend(inv);
    phase.done("anomalies from the order");
    (Analysis { trace, spec, classes, matching, clocks, order, rule_edges: n_rule, rule_edge_list, violations, anomalies }, json)
}

fn edge_text(spec: &Spec, m: &Matching, describe: &dyn Fn(EventId) -> String, a: EventId, b: EventId, k: EdgeKind) -> String {
    match k {
        EdgeKind::Program => format!("{} before {} (program order)", describe(a), describe(b)),
        EdgeKind::Message(i) => {
            let kind = m.kinds.get(i as usize).map_or("match", |k| match k {
                matching::MessageKind::Keyed => "match",
                matching::MessageKind::KeyedByTime => "match by time",
                matching::MessageKind::TcpRange => "TCP byte-range match",
            });
            format!("{} before {} ({kind})", describe(a), describe(b))
        }
        EdgeKind::Rule(r) => format!("{} before {} (rule {})", describe(a), describe(b), spec.rules[r as usize].name),
    }
}
pub mod sim;

/// Logs how long each phase took (at debug level: `WGO_LOG=debug`).
pub struct Phase(std::time::Instant);

impl Phase {
    pub fn new() -> Phase {
        Phase(std::time::Instant::now())
    }
    pub fn done(&mut self, what: &str) {
        if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug!("{what}: {:.3} s, resident {} MiB, phase peak {} MiB", self.0.elapsed().as_secs_f64(), resident_mib(), phase_peak_mib());
        }
        self.0 = std::time::Instant::now();
    }
}

/// Current resident memory (0 where /proc is unavailable).
fn resident_mib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (pages * 4096) >> 20
}

/// The highest resident-memory mark seen before the last reset (phase logging resets it).
static PEAK_BEFORE_RESET_KIB: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn high_water_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

/// Peak resident memory of the process so far, KiB.
pub fn peak_resident_kib() -> u64 {
    high_water_kib().max(PEAK_BEFORE_RESET_KIB.load(std::sync::atomic::Ordering::Relaxed))
}

/// Peak resident memory since the last call; resets the kernel's high-water mark, so
/// the process-wide peak is kept in [`peak_resident_kib`].
fn phase_peak_mib() -> u64 {
    let kib = high_water_kib();
    PEAK_BEFORE_RESET_KIB.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    kib >> 10
}

impl Default for Phase {
    fn default() -> Phase {
        Phase::new()
    }
}
