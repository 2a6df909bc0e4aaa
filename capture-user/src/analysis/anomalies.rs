//! What went wrong, as data: the anomaly kinds, their causes and detail, and what every
//! detector is given. The detectors follow in the chain, one module each
//! ([`super::kernel_drops`], [`super::losses`], [`super::retries`], [`super::stalls`],
//! [`super::partitions`], [`super::lossy`]); [`super::detect`] runs them.

use std::collections::BTreeSet;

use super::matching::{Matching, TimeMap};
use super::order::EdgeKind;
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
    /// What happened, for people: made by [`super::words`] at the end of the analysis
    /// (empty until then, and for network losses, whose text is made when asked for: see
    /// `Analysis::anomaly_text`).
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
#[derive(Clone, Debug, Default, PartialEq)]
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
    /// The rest of what the words need, per kind.
    pub facts: Facts,
}

/// What an anomaly's words need besides its kind, nodes, span, cause and links: counts and
/// the like, as the detector found them. The words are made in [`super::words`].
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Facts {
    #[default]
    None,
    /// A recorder's sequence gap: records lost on one CPU.
    RecorderGap {
        lost: u64,
        cpu: u16,
    },
    /// A kernel ring's drops beyond what the gaps show.
    RingDrops {
        count: u64,
        besides_gaps: bool,
    },
    /// Segments sent after the peer closed the connection (`how`: "RST" or "FIN").
    Closed {
        how: &'static str,
    },
    /// A kernel drop no recorded send explains: an index into `Trace::drops`.
    KernelDrop {
        drop: usize,
    },
    /// A stall: whether it lasted to the end of the recording, what its peers sent it
    /// meanwhile and how much of that it never received, its usual cadence (ns), and where.
    Stall {
        until_end: bool,
        sent_to: usize,
        lost: usize,
        cadence: i64,
        /// The endpoint (protocol, local port) that fell silent, where the node did not.
        port: Option<(super::trace::ProtoCode, u16)>,
    },
    /// A lossy link (or all of one node's): lost of sent, and the other links' loss rate.
    LossyLink {
        lost: usize,
        sent: usize,
        usual: f64,
    },
    /// A partition: where its lost messages died, the most first, with counts.
    Partition {
        places: Vec<(CauseKind, usize)>,
    },
    /// A node that sent no dump.
    MissingNode {
        name: String,
    },
    ClockStep(ClockStep),
    /// An unanswered request: an index into `Analysis::violations`.
    Unanswered {
        violation: usize,
    },
    /// A cycle in the order: the edges named (up to a few), how many more it had, and the
    /// one ignored to break it.
    Contradiction {
        edges: Vec<(EventId, EventId, EdgeKind)>,
        more: usize,
        dropped: (EventId, EventId, EdgeKind),
    },
}

impl Anomaly {
    pub fn new(kind: Kind, events: Vec<EventId>) -> Anomaly {
        Anomaly {
            kind,
            events: EventList::from_vec(events),
            text: String::new(),
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
    /// An anomaly with the facts its words need.
    pub fn with_facts(kind: Kind, events: Vec<EventId>, facts: Facts) -> Anomaly {
        let mut a = Anomaly::new(kind, events);
        a.detail_mut().facts = facts;
        a
    }
    /// Its facts (`Facts::None` if it has none).
    pub fn facts(&self) -> &Facts {
        const NONE: &Facts = &Facts::None;
        self.detail.as_deref().map_or(NONE, |d| &d.facts)
    }
}

/// What every detector is given.
pub struct Context<'a> {
    pub trace: &'a Trace,
    pub matching: &'a Matching,
    pub clocks: &'a dyn TimeMap,
    pub missing_nodes: &'a [String],
    /// A hash of the event's message type and identity fields, where the spec declares them.
    pub identity: &'a dyn Fn(EventId) -> Option<u64>,
}

/// Each matched message's receiving node and receipt time (reference clock), in the order
/// of `Matching::messages`, read once: the detectors walk every message, and a receive's
/// event is a cache miss each time.
pub struct Receipts {
    pub node: Vec<NodeId>,
    pub at: Vec<i64>,
}

impl Receipts {
    pub fn new(ctx: &Context<'_>) -> Self {
        let (node, at) = ctx.matching.messages.iter().map(|&(_, r)| (ctx.trace.events[r as usize].node, ctx.corr(r))).unzip();
        Receipts { node, at }
    }
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
        let mut a = Anomaly::with_facts(Kind::ClockStep, events, Facts::ClockStep(s.clone()));
        a.nodes = NodeList::from_slice(&[s.node]);
        let at = clocks.corrected(s.node, s.at_raw);
        a.span = Some((at, at));
        out.push(a);
    }
}

/// Edges of a contradicting cycle named in its text.
pub const CYCLE_EDGES_NAMED: usize = 8;

/// Adds the anomalies that need the global order: unanswered requests (from violated
/// "answered" invariants, placed before partitions; `first` is the index the first of
/// `violations` will have in `Analysis::violations`) and contradicting cycles (last).
/// Kept apart from [`find`] so that the two can run while the order is built.
pub fn add_from_order(
    out: &mut Vec<Anomaly>,
    violations: &[Violation],
    first: usize,
    unanswered: &BTreeSet<String>,
    cycles: &[super::order::CycleReport],
) {
    let at = out.iter().position(|a| matches!(a.kind, Kind::Partition | Kind::MissingNode)).unwrap_or(out.len());
    let found = violations
        .iter()
        .enumerate()
        .filter(|(_, v)| unanswered.contains(&v.name))
        .map(|(k, v)| Anomaly::with_facts(Kind::Unanswered, v.events.clone(), Facts::Unanswered { violation: first + k }));
    out.splice(at..at, found);
    out.extend(cycles.iter().map(|c| {
        // Named up to a few: a long cycle's full list says no more, and costs much more.
        let edges = c.edges.iter().take(CYCLE_EDGES_NAMED).copied().collect();
        let more = c.edges.len().saturating_sub(CYCLE_EDGES_NAMED);
        Anomaly::with_facts(Kind::Contradiction, Vec::new(), Facts::Contradiction { edges, more, dropped: c.dropped })
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_anomalies_go_before_partitions_and_contradictions_last() {
        let mut out = vec![Anomaly::new(Kind::NetworkLoss, vec![1]), Anomaly::new(Kind::Partition, vec![])];
        let v = vec![
            Violation { name: "every-task-acked".into(), events: vec![3], ..Violation::default() },
            Violation { name: "other".into(), events: vec![4], ..Violation::default() },
        ];
        let unanswered: BTreeSet<String> = ["every-task-acked".to_string()].into();
        let cycle = super::super::order::CycleReport { edges: vec![(1, 2, EdgeKind::Program)], dropped: (2, 1, EdgeKind::Program) };
        add_from_order(&mut out, &v, 5, &unanswered, &[cycle]);
        let kinds: Vec<Kind> = out.iter().map(|a| a.kind).collect();
        assert_eq!(kinds, vec![Kind::NetworkLoss, Kind::Unanswered, Kind::Partition, Kind::Contradiction]);
        assert_eq!(out[1].facts(), &Facts::Unanswered { violation: 5 });
    }
}
