//! The collector's analysis: from per-node dumps to one causally ordered story.
//! Pure code: no aya, no root. It may use `dump` (to read dumps) and `packet`.
//!
//! A one-way chain, each module using only those before it: [`fmt`] → [`trace`] (read
//! dumps) → [`spec`] → [`matching`] (certain messages) → [`steps`] (clock steps, undone) → [`clocks`] (estimated from
//! them; then the rest is matched by corrected time) → [`rules`] (edges from the spec)
//! → [`order`] (happens-before) → [`anomalies`] (their kinds, as data) → the detectors, one module
//! each: [`kernel_drops`], [`losses`], [`retries`], [`stalls`], [`partitions`], [`lossy`] →
//! [`detect`] (runs them) → [`diagnosis`] (ranked findings) → [`words`] (every anomaly's and
//! finding's text, made last from their data). This file runs the chain; `report` turns its
//! [`Analysis`] into JSON, pcapng, HTML and text.

pub mod anomalies;
pub mod clocks;
pub mod detect;
pub mod diagnosis;
pub mod fmt;
pub mod kernel_drops;
pub mod losses;
pub mod lossy;
pub mod matching;
pub mod order;
pub mod partitions;
pub mod retries;
pub mod rules;
pub mod spec;
pub mod stalls;
pub mod steps;
#[cfg(test)]
pub(crate) mod testkit;
pub mod trace;
pub mod words;

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
    /// What went wrong, ranked: most important and earliest first.
    pub findings: Vec<diagnosis::Finding>,
    /// What each part of the spec matched.
    pub spec_usage: spec::SpecUsage,
}

#[derive(Default)]
pub struct Inputs {
    pub spec: Option<Spec>,
    /// Nodes expected by the trigger that sent no dump.
    pub missing_nodes: Vec<String>,
}

pub fn analyze(trace: Trace, inputs: Inputs) -> Analysis {
    analyze_streaming(trace, inputs, None::<fn(Streamed<'_>) -> ()>).0
}

/// What a stream of placed events sees: the inputs of every event's text, the clocks,
/// and the events in their final order, in batches, as the order places them.
pub struct Streamed<'a> {
    pub trace: &'a Trace,
    pub spec: &'a Spec,
    pub classes: &'a [u16],
    pub clocks: &'a Clocks,
    pub matching: &'a Matching,
    pub batches: std::sync::mpsc::Receiver<Vec<order::Placed>>,
}

/// Analyzes, handing the events to `stream` (run on a thread of its own) while the order
/// places them, so that writing them out overlaps the analysis instead of following it.
pub fn analyze_streaming<R: Send>(
    trace: Trace,
    inputs: Inputs,
    stream: Option<impl FnOnce(Streamed<'_>) -> R + Send>,
) -> (Analysis, Option<R>) {
    analyze_inner(trace, inputs, stream)
}

fn analyze_inner<R: Send>(
    mut trace: Trace,
    inputs: Inputs,
    stream: Option<impl FnOnce(Streamed<'_>) -> R + Send>,
) -> (Analysis, Option<R>) {
    let mut phase = Phase::new();
    let spec = inputs.spec.unwrap_or_default();
    let classes = rules::classify(&trace, &spec);
    phase.done("classify");
    // Clocks from certain matches only: a wrong time-resolved match would poison the bounds.
    let index = matching::MatchIndex::new(&trace);
    phase.done("match index");
    let mut matching = matching::match_messages(&trace, &index);
    phase.done("match (certain)");
    let steps = steps::find(&trace, &matching.messages);
    steps::apply(&mut trace, &steps);
    phase.done("clock steps");
    let mut clocks = clocks::estimate(&trace, &matching.messages);
    clocks.steps = steps;
    phase.done("clocks");
    matching::resolve_by_time(&mut matching, &trace, &index, &clocks);
    drop(index);
    phase.done("match (by time)");
    let (rule_edges, mut violations) = rules::rule_edges(&trace, &spec, &classes, &clocks);
    phase.done("rules");
    let n_rule = rule_edges.len();
    let spec_usage = spec.usage(&classes, rule_edges.iter().map(|e| e.2 as usize));
    let rule_edge_list: Vec<(EventId, EventId)> = rule_edges.iter().map(|&(a, b, _)| (a, b)).collect();
    let rule_edges = rule_edges.into_iter().map(|(a, b, r)| (a, b, EdgeKind::Rule(r)));
    // The order and most anomalies do not depend on each other: built side by side,
    // while the JSON's events are written as the order places them.
    let ((order, mut anomalies), streamed) = std::thread::scope(|scope| {
        let (trace, clocks, matching) = (&trace, &clocks, &matching);
        let (spec_ref, classes_ref) = (&spec, &classes[..]);
        let (placed_tx, batches) = std::sync::mpsc::sync_channel::<Vec<order::Placed>>(4);
        let writer = stream.map(|f| {
            std::thread::Builder::new()
                .name("wgo-stream".into())
                .spawn_scoped(scope, move || f(Streamed { trace, spec: spec_ref, classes: classes_ref, clocks, matching, batches }))
                .expect("spawning the event stream")
        });
        let placed_tx = writer.is_some().then_some(placed_tx);
        let order_pass = move || {
            let t = std::time::Instant::now();
            // Straight into the graph: a list of them first would be 16 bytes a message.
            let cross = matching.messages.iter().enumerate().map(|(i, &(s, r))| (s, r, EdgeKind::Message(i as u32))).chain(rule_edges);
            let order = order::order(trace, clocks, cross, &mut |batch| {
                if let Some(tx) = &placed_tx {
                    // A failed stream is reported when it is joined; the order goes on.
                    let _ = tx.send(batch.to_vec());
                }
            });
            tracing::debug!("  order alone: {:.3} s", t.elapsed().as_secs_f64());
            order
        };
        let anomaly_pass = || {
            let t = std::time::Instant::now();
            let identity = |id: EventId| {
                let class = classes[id as usize];
                let m = spec.messages.get(class as usize).filter(|m| class != rules::UNKNOWN && !m.identity.is_empty())?;
                use std::hash::{Hash, Hasher};
                let mut h = rustc_hash::FxHasher::default();
                class.hash(&mut h);
                let payload = trace.payload(&trace.events[id as usize]);
                for &f in &m.identity {
                    spec.field(class as usize, f, payload).hash(&mut h);
                }
                Some(h.finish())
            };
            let found =
                detect::find(&anomalies::Context { trace, matching, clocks, missing_nodes: &inputs.missing_nodes, identity: &identity });
            tracing::debug!("  anomalies alone: {:.3} s", t.elapsed().as_secs_f64());
            found
        };
        let found = rayon::join(order_pass, anomaly_pass);
        (found, writer.map(|h| h.join().expect("the event stream panicked")))
    });
    phase.done("order and anomalies");
    let inv = rules::check_invariants(&trace, &spec, &classes, &order.t_ns, &clocks);
    phase.done("invariants");
    let unanswered: BTreeSet<String> =
        spec.invariants.iter().filter(|i| matches!(i, spec::InvariantDef::Answered { .. })).map(|i| i.name().to_string()).collect();
    anomalies::add_from_order(&mut anomalies, &inv, violations.len(), &unanswered, &order.cycles);
    anomalies::add_clock_steps(&mut anomalies, &trace, &clocks, &clocks.steps);
    violations.extend(inv);
    phase.done("anomalies from the order");
    let corrected = |id: EventId| {
        let e = &trace.events[id as usize];
        matching::TimeMap::corrected(&clocks, e.node, e.t_raw)
    };
    let mut findings = diagnosis::diagnose(&diagnosis::Inputs {
        trace: &trace,
        matching: &matching,
        clocks: &clocks,
        anomalies: &anomalies,
        violations: &violations,
        answered: &unanswered,
        corrected: &corrected,
        classes: &classes,
    });
    phase.done("diagnosis");
    let describe = |id: EventId| words::describe(&trace, &spec, &classes, id);
    let w = words::Words { trace: &trace, clocks: &clocks, spec: &spec, matching: &matching, describe: &describe };
    words::fill(&w, &mut anomalies, &mut violations, &mut findings);
    phase.done("words");
    (
        Analysis {
            trace,
            spec,
            classes,
            matching,
            clocks,
            order,
            rule_edges: n_rule,
            rule_edge_list,
            violations,
            anomalies,
            findings,
            spec_usage,
        },
        streamed,
    )
}

/// An event's display label: from the spec, else protocol and ports.
pub fn push_label(trace: &Trace, spec: &Spec, classes: &[u16], id: usize, out: &mut String, num: &mut itoa::Buffer) {
    let e = &trace.events[id];
    match classes[id] {
        rules::UNKNOWN => match e.proto {
            // No ports: ICMP, VRRP, OSPF, a raw socket's protocol.
            p if !p.has_ports() => out.push_str(p.name()),
            p => {
                out.push_str(p.name());
                out.push(' ');
                out.push_str(num.format(e.sport));
                out.push('→');
                out.push_str(num.format(e.dport));
            }
        },
        c => spec.write_label(c as usize, trace.payload(e), out),
    }
}

impl Analysis {
    /// The event's display label: from the spec, else protocol and ports.
    pub fn label(&self, id: usize) -> String {
        let mut out = String::new();
        push_label(&self.trace, &self.spec, &self.classes, id, &mut out, &mut itoa::Buffer::new());
        out
    }

    /// An anomaly's text (network losses get theirs only when asked).
    pub fn anomaly_text<'a>(&self, a: &'a Anomaly) -> std::borrow::Cow<'a, str> {
        if a.kind == anomalies::Kind::NetworkLoss && a.text.is_empty() {
            let describe = |id: EventId| words::describe(&self.trace, &self.spec, &self.classes, id);
            let w =
                words::Words { trace: &self.trace, clocks: &self.clocks, spec: &self.spec, matching: &self.matching, describe: &describe };
            std::borrow::Cow::Owned(words::anomaly(&w, a, &self.violations))
        } else {
            std::borrow::Cow::Borrowed(&a.text)
        }
    }

    /// Anomaly kinds per event.
    pub fn event_anomalies(&self) -> std::collections::BTreeMap<u32, Vec<anomalies::Kind>> {
        let mut m: std::collections::BTreeMap<u32, Vec<anomalies::Kind>> = std::collections::BTreeMap::new();
        for a in &self.anomalies {
            for &e in &a.events {
                let v = m.entry(e).or_default();
                if !v.contains(&a.kind) {
                    v.push(a.kind);
                }
            }
        }
        m
    }

    /// Message type name of an event, or its protocol.
    pub fn kind_name(&self, id: usize) -> String {
        match self.classes[id] {
            rules::UNKNOWN => self.trace.events[id].proto.name().to_string(),
            c => self.spec.messages[c as usize].name.clone(),
        }
    }
}

/// Logs how long each phase took (at debug level: `WGO_LOG=debug`).
pub struct Phase(std::time::Instant);

impl Phase {
    pub fn new() -> Phase {
        Phase(std::time::Instant::now())
    }
    pub fn done(&mut self, what: &str) {
        if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug!(
                "{what}: {:.3} s, resident {} MiB, phase peak {} MiB",
                self.0.elapsed().as_secs_f64(),
                resident_mib(),
                phase_peak_mib()
            );
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
