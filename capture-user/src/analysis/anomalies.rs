//! What went wrong, as data: the anomaly kinds, their causes and detail, and what every
//! detector is given. The detectors follow in the chain, one module each
//! ([`super::kernel_drops`], [`super::losses`], [`super::retries`], [`super::stalls`],
//! [`super::partitions`], [`super::lossy`]); [`super::detect`] runs them.

use std::collections::BTreeSet;

use super::matching::{Matching, TimeMap};
use super::rules::Violation;
use super::steps::ClockStep;
use super::trace::{EventId, NodeId, Trace};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    NetworkLoss,
    RecorderLoss,
    Duplicate,
    Retransmission,
    RetryStorm,
    Unanswered,
    Partition,
    StalledNode,
    ClosedConnection,
    MissingNode,
    Contradiction,
    ClockStep,
    KernelDrop,
    LossyLink,
}

/// Where a lost message died.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CauseKind {
    /// Neither kernel dropped it, and the receiver was recording: the network lost it.
    Network,
    /// The sender's own kernel dropped it (its firewall, a full queue).
    SenderKernel,
    /// The receiver's kernel dropped it (its firewall, a full socket buffer, no socket).
    ReceiverKernel,
}

impl CauseKind {
    pub fn name(self) -> &'static str {
        match self {
            CauseKind::Network => "network",
            CauseKind::SenderKernel => "sender_kernel",
            CauseKind::ReceiverKernel => "receiver_kernel",
        }
    }
}

/// A loss's cause, with the kernel's drop reason (an index into `Trace::drop_reasons`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cause {
    pub kind: CauseKind,
    pub reason: Option<u16>,
}

impl Cause {
    pub const NETWORK: Cause = Cause { kind: CauseKind::Network, reason: None };

    /// Whether the message died on its path between the applications, by the network's or a
    /// firewall's doing: evidence of a cut or a lossy link, whichever dropped it. A full
    /// buffer or a closed port is the receiving host's own business.
    pub fn on_path(&self, trace: &Trace) -> bool {
        match self.kind {
            CauseKind::Network => true,
            _ => self.reason.and_then(|r| trace.drop_reasons.get(r as usize)).is_some_and(|r| r == "netfilter_drop"),
        }
    }
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::NetworkLoss => "network_loss",
            Kind::RecorderLoss => "recorder_loss",
            Kind::Duplicate => "duplicate",
            Kind::Retransmission => "retransmission",
            Kind::RetryStorm => "retry_storm",
            Kind::Unanswered => "unanswered",
            Kind::Partition => "partition",
            Kind::StalledNode => "stalled_node",
            Kind::ClosedConnection => "closed_connection",
            Kind::MissingNode => "missing_node",
            Kind::Contradiction => "contradiction",
            Kind::ClockStep => "clock_step",
            Kind::KernelDrop => "kernel_drop",
            Kind::LossyLink => "lossy_link",
        }
    }
}

/// An anomaly's events: most have one or two, kept inline.
pub type EventList = smallvec::SmallVec<[EventId; 2]>;
/// An anomaly's nodes: most name one or two, kept inline.
pub type NodeList = smallvec::SmallVec<[NodeId; 4]>;

/// One thing that went wrong. Small: a meltdown can hold millions of losses.
#[derive(Clone, Debug)]
pub struct Anomaly {
    pub kind: Kind,
    pub events: EventList,
    /// What happened, for people. Empty for network losses, whose text is made when
    /// asked for: see `Analysis::anomaly_text`.
    pub text: String,
    /// Nodes involved (for losses: sender then receiver).
    pub nodes: NodeList,
    /// For partitions: one list of nodes per island.
    pub islands: Vec<Vec<NodeId>>,
    /// Time span, reference clock ns.
    pub span: Option<(i64, i64)>,
    /// For network losses: where the message died. For kernel drops: the reason. For
    /// partitions and lossy links: where most of their lost messages died.
    pub cause: Option<Cause>,
    /// What few anomalies need besides (boxed: most have none).
    pub detail: Option<Box<Detail>>,
}

/// The structure of a partition, a lossy link or a stall, as data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Detail {
    /// Directed links (from, to): a lossy link's, or all of one node's.
    pub links: Vec<(NodeId, NodeId)>,
    /// For lossy links: the node every one of whose links lost (the links are all of its).
    pub all_links_of: Option<NodeId>,
    /// For stalls: the peer the node waited on (a stalled or cut-off node): a consequence,
    /// not a stall of its own.
    pub waited_on: Option<NodeId>,
    /// For stalls: the nodes that waited on this one meanwhile.
    pub waiters: Vec<NodeId>,
    /// For refusals (nothing listened): while the receiver's listener was still starting.
    pub startup: bool,
}

impl Anomaly {
    pub fn new(kind: Kind, events: Vec<EventId>, text: String) -> Anomaly {
        Anomaly {
            kind,
            events: EventList::from_vec(events),
            text,
            nodes: NodeList::new(),
            islands: Vec::new(),
            span: None,
            cause: None,
            detail: None,
        }
    }
    /// The detail, made on first use.
    pub fn detail_mut(&mut self) -> &mut Detail {
        self.detail.get_or_insert_with(Default::default)
    }
}

/// Human words for a kernel drop reason: what the operator would call it.
pub fn reason_words(reason: &str) -> &'static str {
    match reason {
        "netfilter_drop" => "firewall",
        "socket_rcvbuff" => "full receive buffer",
        "no_socket" => "no socket on the port",
        "socket_filter" => "socket filter",
        "qdisc_drop" | "full_ring" => "full queue",
        _ => "",
    }
}

/// The text of a network loss (made on demand: see [`Anomaly::text`]).
pub fn loss_text(trace: &Trace, describe: &dyn Fn(EventId) -> String, a: &Anomaly) -> String {
    let name = |n: NodeId| trace.nodes[n as usize].name.as_str();
    let (from, to) = (a.nodes[0], a.nodes[1]);
    let reason = |c: &Cause| c.reason.and_then(|r| trace.drop_reasons.get(r as usize)).map_or("?", String::as_str);
    match a.cause {
        Some(c @ Cause { kind: CauseKind::SenderKernel, .. }) => {
            format!("{} never left {}: its own kernel dropped it ({})", describe(a.events[0]), name(from), reason(&c))
        }
        Some(c @ Cause { kind: CauseKind::ReceiverKernel, .. }) => {
            format!("{} reached {}, whose kernel dropped it ({})", describe(a.events[0]), name(to), reason(&c))
        }
        _ => format!("{} never reached {} (network loss on {}→{})", describe(a.events[0]), name(to), name(from), name(to)),
    }
}

/// What every detector is given.
pub struct Context<'a> {
    pub trace: &'a Trace,
    pub matching: &'a Matching,
    pub clocks: &'a dyn TimeMap,
    pub describe: &'a dyn Fn(EventId) -> String,
    pub missing_nodes: &'a [String],
    /// A hash of the event's message type and identity fields, where the spec declares them.
    pub identity: &'a dyn Fn(EventId) -> Option<u64>,
}

impl Context<'_> {
    /// An event's time on the reference clock.
    pub fn corr(&self, id: EventId) -> i64 {
        let e = &self.trace.events[id as usize];
        self.clocks.corrected(e.node, e.t_raw)
    }
    pub fn name(&self, n: NodeId) -> &str {
        self.trace.nodes[n as usize].name.as_str()
    }
}

/// First and last time, ns.
pub type Span = (i64, i64);

/// A clock step's text: node, direction and size, when, and how it was told.
pub fn clock_step_text(trace: &Trace, clocks: &dyn TimeMap, s: &ClockStep) -> String {
    let name = |n: NodeId| trace.nodes[n as usize].name.as_str();
    let size = super::fmt::fmt_ns(s.size_ns.abs());
    let how = match (s.seen_in_order, s.uncertainty_ns) {
        (true, Some(u)) => format!("time ran back in its program order; the size is from its traffic, ± {}", super::fmt::fmt_ns(u)),
        (true, None) => "time ran back in its program order; no traffic on both sides gave the exact size, which is at least this".into(),
        (false, Some(u)) => format!("all its peers' messages moved by it at once; ± {}", super::fmt::fmt_ns(u)),
        (false, None) => "its messages moved by it at once".into(),
    };
    let or = s.or_peer.map_or(String::new(), |p| {
        format!(
            " Only its traffic with {} shows it: {}'s clock may have stepped {} instead.",
            name(p),
            name(p),
            if s.size_ns > 0 { "back" } else { "forward" }
        )
    });
    format!(
        "{}'s clock stepped {} {size} at {} ({how}); its times after the step are moved back onto its clock before it.{or}",
        name(s.node),
        if s.size_ns < 0 { "back" } else { "forward" },
        super::fmt::fmt_time(clocks.corrected(s.node, s.at_raw))
    )
}

/// One anomaly per clock step, with the events either side of it.
pub fn add_clock_steps(out: &mut Vec<Anomaly>, trace: &Trace, clocks: &dyn TimeMap, steps: &[ClockStep]) {
    for s in steps {
        let range = trace.node_ranges[s.node as usize].clone();
        let b = range.start + trace.events[range.clone()].partition_point(|e| e.t_raw <= s.at_raw);
        let events: Vec<EventId> = [b.checked_sub(1).filter(|&i| i >= range.start), Some(b).filter(|&i| i < range.end)]
            .into_iter()
            .flatten()
            .map(|i| i as EventId)
            .collect();
        let mut a = Anomaly::new(Kind::ClockStep, events, clock_step_text(trace, clocks, s));
        a.nodes = NodeList::from_slice(&[s.node]);
        let at = clocks.corrected(s.node, s.at_raw);
        a.span = Some((at, at));
        out.push(a);
    }
}

/// Adds the anomalies that need the global order: unanswered requests (from violated
/// "answered" invariants, placed before partitions) and contradicting edges (last).
/// Kept apart from [`find`] so that the two can run while the order is built.
pub fn add_from_order(out: &mut Vec<Anomaly>, violations: &[Violation], unanswered: &BTreeSet<String>, contradictions: Vec<String>) {
    let at = out.iter().position(|a| matches!(a.kind, Kind::Partition | Kind::MissingNode)).unwrap_or(out.len());
    let found = violations
        .iter()
        .filter(|v| unanswered.contains(&v.name))
        .map(|v| Anomaly::new(Kind::Unanswered, v.events.clone(), v.text.clone()));
    out.splice(at..at, found);
    out.extend(contradictions.into_iter().map(|text| Anomaly::new(Kind::Contradiction, Vec::new(), text)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_anomalies_go_before_partitions_and_contradictions_last() {
        let mut out = vec![Anomaly::new(Kind::NetworkLoss, vec![1], String::new()), Anomaly::new(Kind::Partition, vec![], "p".into())];
        let v = vec![
            Violation { name: "every-task-acked".into(), events: vec![3], text: "TASK #3 unanswered".into() },
            Violation { name: "other".into(), events: vec![4], text: "x".into() },
        ];
        let unanswered: BTreeSet<String> = ["every-task-acked".to_string()].into();
        add_from_order(&mut out, &v, &unanswered, vec!["contradiction: a, and b".into()]);
        let kinds: Vec<Kind> = out.iter().map(|a| a.kind).collect();
        assert_eq!(kinds, vec![Kind::NetworkLoss, Kind::Unanswered, Kind::Partition, Kind::Contradiction]);
        assert_eq!(out[1].text, "TASK #3 unanswered");
    }
}
