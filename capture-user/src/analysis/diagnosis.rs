//! The diagnosis: from many anomalies to a few ranked findings, each saying what went
//! wrong, where, when, and on what evidence. Most important and earliest first: the
//! structural faults (partitions, stalled or missing nodes, lossy links), then what they
//! caused or what undermines the evidence (recorder loss, clocks), then symptoms (retry
//! storms, unanswered requests, violations).

use std::collections::{BTreeMap, BTreeSet};

use super::anomalies::{Anomaly, Cause, CauseKind, Kind};
use super::clocks::{Clocks, Quality};
use super::matching::Matching;
use super::partitions::PARTITION_WINDOW_NS;
use super::rules::Violation;
use super::trace::{Dir, EventId, NodeId, Trace};
/// How long after a partition ends its cut-off nodes may take to come back (reconnects,
/// backoffs): a silence that starts then is the partition's.
pub const REJOIN_NS: i64 = 2_000_000_000;
/// Evidence events kept per finding.
const MAX_EVIDENCE: usize = 64;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    Partition,
    StalledNode,
    MissingNode,
    LossyLink,
    RecorderLoss,
    Clock,
    ClockStep,
    KernelDrop,
    RetryStorm,
    Unanswered,
    #[default]
    Violation,
}

impl FindingKind {
    /// Lower is more important.
    fn class(self) -> u8 {
        match self {
            FindingKind::Partition
            | FindingKind::StalledNode
            | FindingKind::MissingNode
            | FindingKind::LossyLink
            | FindingKind::KernelDrop => 0,
            FindingKind::RecorderLoss | FindingKind::Clock | FindingKind::ClockStep => 1,
            FindingKind::RetryStorm | FindingKind::Unanswered | FindingKind::Violation => 2,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Finding {
    pub kind: FindingKind,
    pub nodes: Vec<NodeId>,
    /// Directed links (from, to).
    pub links: Vec<(NodeId, NodeId)>,
    /// Reference clock ns.
    pub span: Option<(i64, i64)>,
    /// Made by [`super::words`] at the end of the analysis, from the fields here.
    pub text: String,
    pub evidence: Vec<EventId>,
    /// For partitions: one list of nodes per island.
    pub islands: Vec<Vec<NodeId>>,
    /// For partitions, lossy links and kernel drops: where the lost messages died.
    pub cause: Option<Cause>,
    /// For a lossy node: the node all of whose links lost.
    pub all_links_of: Option<NodeId>,
    /// For stalls: the nodes that waited on the stalled one.
    pub waiters: Vec<NodeId>,
    /// The anomaly it tells (an index into `Analysis::anomalies`), where it tells one.
    pub anomaly: Option<usize>,
    /// For kernel drops: the drop anomalies it groups (up to `MAX_EVIDENCE`), which have no
    /// events of their own to point at: a timeline selects them instead.
    pub drops: Vec<usize>,
    /// How many: kernel drops, messages in a retry storm, violations of a rule.
    pub count: usize,
    /// For kernel drops: the nodes on the other end.
    pub peers: Vec<NodeId>,
    /// For violations: the rule's or invariant's name, and the first of each shape (indices
    /// into `Analysis::violations`, up to three).
    pub rule: String,
    pub examples: Vec<usize>,
}

pub struct Inputs<'a> {
    pub trace: &'a Trace,
    pub matching: &'a Matching,
    pub clocks: &'a Clocks,
    pub anomalies: &'a [Anomaly],
    pub violations: &'a [Violation],
    /// Names of the spec's `answered` invariants (their violations are unanswered requests).
    pub answered: &'a BTreeSet<String>,
    pub corrected: &'a dyn Fn(EventId) -> i64,
    /// Message type per event (`rules::UNKNOWN` if none).
    pub classes: &'a [u16],
}

/// The ranked findings.
pub fn diagnose(i: &Inputs<'_>) -> Vec<Finding> {
    let t = i.trace;
    let mut out = Vec::new();
    let of = |k: Kind| i.anomalies.iter().enumerate().filter(move |(_, a)| a.kind == k);
    let evidence = |a: &Anomaly| a.events.iter().copied().take(MAX_EVIDENCE).collect::<Vec<_>>();

    for (ix, a) in of(Kind::Partition) {
        let mut nodes: Vec<NodeId> = a.islands.iter().flatten().copied().collect();
        nodes.sort_unstable();
        out.push(Finding {
            kind: FindingKind::Partition,
            nodes,
            span: a.span,
            evidence: evidence(a),
            anomaly: Some(ix),
            islands: a.islands.clone(),
            cause: a.cause,
            ..Finding::default()
        });
    }
    // A node cut off by a partition may fall silent as it comes back (reconnecting, catching
    // up): a stall that starts during a partition it was cut off by, or within REJOIN_NS of
    // its end, is the partition's story, not a finding of its own.
    let cut_off = |n: NodeId, t: i64| {
        of(Kind::Partition).any(|(_, p)| {
            let minority = p.islands.iter().min_by_key(|i| i.len()).is_some_and(|i| i.contains(&n));
            p.span.is_some_and(|(a, b)| minority && a - PARTITION_WINDOW_NS <= t && t <= b + REJOIN_NS)
        })
    };
    for (ix, a) in of(Kind::StalledNode).filter(|(_, a)| !a.span.is_some_and(|(from, _)| cut_off(a.nodes[0], from))) {
        out.push(Finding {
            kind: FindingKind::StalledNode,
            nodes: a.nodes.to_vec(),
            span: a.span,
            evidence: evidence(a),
            anomaly: Some(ix),
            waiters: a.detail.as_ref().map_or_else(Vec::new, |d| d.waiters.clone()),
            ..Finding::default()
        });
    }
    for (ix, _) in of(Kind::MissingNode) {
        out.push(Finding {
            kind: FindingKind::MissingNode,
            nodes: Vec::new(),
            span: None,
            evidence: Vec::new(),
            anomaly: Some(ix),
            ..Finding::default()
        });
    }
    for (ix, a) in of(Kind::LossyLink) {
        let d = a.detail.as_deref();
        out.push(Finding {
            kind: FindingKind::LossyLink,
            nodes: a.nodes.to_vec(),
            links: d.map_or_else(Vec::new, |d| d.links.clone()),
            span: a.span,
            evidence: evidence(a),
            anomaly: Some(ix),
            cause: a.cause,
            all_links_of: d.and_then(|d| d.all_links_of),
            ..Finding::default()
        });
    }
    out.extend(kernel_drops(i));
    for (ix, a) in of(Kind::RecorderLoss) {
        out.push(Finding {
            kind: FindingKind::RecorderLoss,
            nodes: a.nodes.to_vec(),
            span: a.span,
            evidence: evidence(a),
            anomaly: Some(ix),
            ..Finding::default()
        });
    }
    for (ix, a) in of(Kind::ClockStep) {
        out.push(Finding {
            kind: FindingKind::ClockStep,
            nodes: a.nodes.to_vec(),
            span: a.span,
            evidence: evidence(a),
            anomaly: Some(ix),
            ..Finding::default()
        });
    }
    for (n, c) in i.clocks.nodes.iter().enumerate() {
        if c.quality == Quality::Insufficient && t.nodes.len() > 1 {
            out.push(Finding {
                kind: FindingKind::Clock,
                nodes: vec![n as NodeId],
                span: None,
                evidence: Vec::new(),
                ..Finding::default()
            });
        }
    }
    // Retry storms, one finding per sending node.
    let mut storms: BTreeMap<NodeId, Vec<&Anomaly>> = BTreeMap::new();
    for (_, a) in of(Kind::RetryStorm) {
        storms.entry(a.nodes[0]).or_default().push(a);
    }
    for (n, list) in storms {
        let span = span_of(list.iter().filter_map(|a| a.events.first().map(|&e| (i.corrected)(e))));
        out.push(Finding {
            kind: FindingKind::RetryStorm,
            nodes: vec![n],
            span,
            count: list.len(),
            evidence: list.iter().flat_map(|a| a.events.iter().copied()).take(MAX_EVIDENCE).collect(),
            ..Finding::default()
        });
    }
    // Unanswered requests and other violations, one finding per invariant or rule.
    let mut by_name: BTreeMap<&str, Vec<(usize, &Violation)>> = BTreeMap::new();
    for (k, v) in i.violations.iter().enumerate() {
        by_name.entry(&v.name).or_default().push((k, v));
    }
    for (rule, list) in by_name {
        let examples = examples(&list, t, i.classes);
        let list: Vec<&Violation> = list.into_iter().map(|(_, v)| v).collect();
        let unanswered = i.answered.contains(rule);
        let span = span_of(list.iter().filter_map(|v| v.events.first().map(|&e| (i.corrected)(e))));
        let mut nodes: Vec<NodeId> = list.iter().filter_map(|v| v.events.first()).map(|&e| t.events[e as usize].node).collect();
        nodes.sort_unstable();
        nodes.dedup();
        out.push(Finding {
            kind: if unanswered { FindingKind::Unanswered } else { FindingKind::Violation },
            nodes,
            span,
            count: list.len(),
            rule: rule.to_string(),
            examples,
            evidence: list.iter().flat_map(|v| v.events.iter().copied()).take(MAX_EVIDENCE).collect(),
            ..Finding::default()
        });
    }
    rank(&mut out, t);
    out
}

/// Most important first: within a class, by how much of the cluster a finding touches and
/// for how long (a partition of the whole cluster for seconds before a kernel's drops at one
/// node for a moment), then the earliest.
fn rank(out: &mut [Finding], t: &Trace) {
    let recording = t.nodes.iter().map(|n| n.window.1 - n.window.0).max().unwrap_or(0).max(1);
    let weight = |f: &Finding| {
        let touched = (f.nodes.len() + f.waiters.len()).max(1) as i128;
        // A moment (one drop) weighs a millisecond; a finding with no span, the whole recording.
        let long = f.span.map_or(recording, |(a, b)| (b - a).max(1_000_000)) as i128;
        touched * long
    };
    out.sort_by_key(|f| (f.kind.class(), std::cmp::Reverse(weight(f)), f.span.map_or(i64::MAX, |s| s.0), f.kind));
}

/// The first violation of each different shape (the message types of its events and which
/// way each went), up to three: "a timeout at start-up" and "a member rejoined" are
/// different stories. Told from the data, never from the words.
fn examples(list: &[(usize, &Violation)], t: &Trace, classes: &[u16]) -> Vec<usize> {
    let mut seen = BTreeSet::new();
    let shape = |v: &Violation| {
        v.events
            .iter()
            .map(|&e| (classes.get(e as usize).copied(), t.events.get(e as usize).map(|e| e.dir == Dir::Send)))
            .collect::<Vec<_>>()
    };
    list.iter().filter(|(_, v)| seen.insert(shape(v))).take(3).map(|&(k, _)| k).collect()
}

fn span_of(times: impl Iterator<Item = i64>) -> Option<(i64, i64)> {
    times.fold(None, |acc, t| Some(acc.map_or((t, t), |(a, b): (i64, i64)| (a.min(t), b.max(t)))))
}

/// The kernels' drops, one finding per node that dropped, which way and why: lost messages
/// whose drop was recorded, and drops no recorded send explains.
fn kernel_drops(i: &Inputs<'_>) -> Vec<Finding> {
    let t = i.trace;
    // (dropping node, going out, reason) → (peers, span, evidence, count, unexplained drops).
    type Group = (BTreeSet<NodeId>, Vec<i64>, Vec<EventId>, usize, Vec<usize>);
    let mut groups: BTreeMap<(NodeId, bool, u16), Group> = BTreeMap::new();
    // A lost message a partition or a lossy link explains is theirs: its drop record is
    // their cause, not a finding of its own.
    let partitions: Vec<&Anomaly> = i.anomalies.iter().filter(|a| a.kind == Kind::Partition).collect();
    let lossy: Vec<&Anomaly> = i.anomalies.iter().filter(|a| a.kind == Kind::LossyLink).collect();
    let theirs = |a: &Anomaly| {
        let ([from, to], Some((at, _))) = (a.nodes.as_slice(), a.span) else { return false };
        let island = |isl: &Vec<Vec<NodeId>>, n: NodeId| isl.iter().position(|x| x.contains(&n));
        let slack = 2 * PARTITION_WINDOW_NS;
        partitions.iter().any(|p| {
            p.span.is_some_and(|(x, y)| x - slack <= at && at <= y + slack) && island(&p.islands, *from) != island(&p.islands, *to)
        }) || lossy
            .iter()
            .any(|l| l.span.is_some_and(|(x, y)| x <= at && at <= y) && l.detail.as_ref().is_some_and(|d| d.links.contains(&(*from, *to))))
    };
    for (ix, a) in i.anomalies.iter().enumerate() {
        let Some(c) = a.cause.filter(|c| c.kind != CauseKind::Network) else { continue };
        if a.detail.as_ref().is_some_and(|d| d.startup) || (a.kind == Kind::NetworkLoss && c.on_path(t) && theirs(a)) {
            continue;
        }
        let out_going = c.kind == CauseKind::SenderKernel;
        let (node, peer) = match (a.kind, a.nodes.as_slice()) {
            (Kind::NetworkLoss, [from, to]) => (if out_going { *from } else { *to }, Some(if out_going { *to } else { *from })),
            (Kind::KernelDrop, [n]) => (*n, None),
            _ => continue,
        };
        let g = groups.entry((node, out_going, c.reason.unwrap_or(u16::MAX))).or_default();
        g.0.extend(peer);
        g.1.extend(a.span.map(|s| s.0));
        if g.2.len() < MAX_EVIDENCE {
            g.2.extend(a.events.iter().copied());
        }
        g.3 += 1;
        if a.kind == Kind::KernelDrop && g.4.len() < MAX_EVIDENCE {
            g.4.push(ix);
        }
    }
    groups
        .into_iter()
        .map(|((node, out_going, reason), (peers, times, evidence, count, drops))| {
            let span = span_of(times.into_iter());
            Finding {
                kind: FindingKind::KernelDrop,
                nodes: vec![node],
                span,
                evidence,
                count,
                drops,
                peers: peers.into_iter().collect(),
                cause: Some(Cause {
                    kind: if out_going { CauseKind::SenderKernel } else { CauseKind::ReceiverKernel },
                    reason: (reason != u16::MAX).then_some(reason),
                }),
                ..Finding::default()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::{Inputs, analyze};
    use super::*;

    #[test]
    fn refusals_while_a_listener_starts_are_no_finding_and_a_partition_ranks_above_a_longer_lasting_drop() {
        let udp_on = |from: u8, to: u8, port: u16, id: u16| {
            crate::packet::tests::udp4(addr(from), addr(to), port, port, id, format!("hello {id}").as_bytes())
        };
        let udp_to = |from: u8, to: u8, port: u16, id: u16| udp_on(from, to, if port == 7000 { 7000 } else { 7100 }, id);
        let mut nodes: Vec<Vec<Ev>> = vec![Vec::new(), Vec::new(), Vec::new()];
        for k in 0..50i64 {
            let t = 100 * MS + k * 100 * MS;
            let id = k as u16;
            // n2's listener comes up at 1 s: until then, n1's hellos are refused.
            nodes[0].push(send(t, udp_to(0, 1, 7000, id)));
            if t < 1000 * MS {
                nodes[1].push(dropped(recv(t + MS / 10, udp_to(0, 1, 7000, id)), "no_socket"));
            } else {
                nodes[1].push(recv(t + MS / 10, udp_to(0, 1, 7000, id)));
                nodes[1].push(send(t + MS, udp_to(1, 0, 7000, 1000 + id)));
                nodes[0].push(recv(t + MS + MS / 10, udp_to(1, 0, 7000, 1000 + id)));
            }
            // n3 ↔ n1 and n3 ↔ n2, cut off from 2 s to 4 s.
            let cut = (2000 * MS..4000 * MS).contains(&t);
            for (a, b, j) in [(2u8, 0u8, 2000), (0, 2, 3000), (2, 1, 4000), (1, 2, 5000)] {
                nodes[a as usize].push(send(t + 2 * MS, udp_to(a, b, 7100, j + id)));
                if !cut {
                    nodes[b as usize].push(recv(t + 2 * MS + MS / 10, udp_to(a, b, 7100, j + id)));
                }
            }
            // Something n3 sends to a port n2 never listens on, all along.
            if k % 5 == 0 {
                nodes[2].push(send(t + 3 * MS, udp_on(2, 1, 7001, 6000 + id)));
                nodes[1].push(dropped(recv(t + 3 * MS + MS / 10, udp_on(2, 1, 7001, 6000 + id)), "no_socket"));
            }
        }
        let a = analyze(trace(nodes), Inputs::default());
        let kinds: Vec<(FindingKind, Vec<NodeId>)> = a.findings.iter().map(|f| (f.kind, f.nodes.clone())).collect();
        // The partition touches all three nodes for 2 s; the refusals to port 7001, one node
        // for 4.5 s, though they began first; the start-up refusals are none.
        assert_eq!(kinds, vec![(FindingKind::Partition, vec![0, 1, 2]), (FindingKind::KernelDrop, vec![1])], "{:#?}", a.findings);
        assert!(a.findings[1].text.starts_with("nothing listened on n2 for 10 messages from n3"), "{}", a.findings[1].text);
    }

    #[test]
    fn a_firewall_partition_is_one_finding_whose_cause_is_the_firewalls() {
        let side = |n: u8| n < 2;
        for how in [Fate::FirewallIn, Fate::FirewallOut] {
            let msgs = mesh(5, (100 * MS, 4000 * MS), 100 * MS, |t, a, b, _| {
                if side(a) != side(b) && (1000 * MS..3000 * MS).contains(&t) { how } else { Fate::Delivered }
            });
            let a = analyze(trace(traffic_fates(5, &msgs)), Inputs::default());
            // The drop records are the partition's cause, not findings of their own.
            let kinds: Vec<FindingKind> = a.findings.iter().map(|f| f.kind).collect();
            assert_eq!(kinds, vec![FindingKind::Partition], "{how:?}: {:#?}", a.findings);
            let f = &a.findings[0];
            assert_eq!(f.islands, vec![vec![0, 1], vec![2, 3, 4]]);
            let reason = f.cause.and_then(|c| c.reason).map(|r| a.trace.drop_reasons[r as usize].as_str());
            assert_eq!(reason, Some("netfilter_drop"));
        }
    }
}
