//! The diagnosis: from many anomalies to a few ranked findings, each saying what went
//! wrong, where, when, and on what evidence. Most important and earliest first: the
//! structural faults (partitions, stalled or missing nodes, lossy links), then what they
//! caused or what undermines the evidence (recorder loss, clocks), then symptoms (retry
//! storms, unanswered requests, violations).

use std::collections::{BTreeMap, BTreeSet};

use super::anomalies::{Anomaly, CauseKind, Kind, PARTITION_WINDOW_NS};
use super::clocks::{Clocks, Quality};
use super::matching::{Matching, address_owners, is_group_address};
use super::rules::Violation;
use super::trace::{EventId, NodeId, Trace};

/// A link is lossy when at least this many of its messages were lost...
pub const LOSSY_MIN_LOST: usize = 3;
/// ...at least this share of them...
pub const LOSSY_MIN_RATE: f64 = 0.05;
/// ...at least this many times the other links' rate, pooled, and three standard deviations
/// more losses than that rate gives (a link that is only unlucky is not lossy).
pub const LOSSY_VS_OTHERS: f64 = 3.0;
/// ...spread over at least this long.
pub const LOSSY_MIN_SPAN_NS: i64 = 2 * PARTITION_WINDOW_NS;
/// How long after a partition ends its cut-off nodes may take to come back (reconnects,
/// backoffs): a silence that starts then is the partition's.
pub const REJOIN_NS: i64 = 2_000_000_000;
/// Evidence events kept per finding.
const MAX_EVIDENCE: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
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

#[derive(Clone, Debug)]
pub struct Finding {
    pub kind: FindingKind,
    pub nodes: Vec<NodeId>,
    /// Directed links (from, to).
    pub links: Vec<(NodeId, NodeId)>,
    /// Reference clock ns.
    pub span: Option<(i64, i64)>,
    pub text: String,
    pub evidence: Vec<EventId>,
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
}

/// The ranked findings.
pub fn diagnose(i: &Inputs<'_>) -> Vec<Finding> {
    let t = i.trace;
    let name = |n: NodeId| t.nodes[n as usize].name.as_str();
    let mut out = Vec::new();
    let of = |k: Kind| i.anomalies.iter().filter(move |a| a.kind == k);
    let evidence = |a: &Anomaly| a.events.iter().copied().take(MAX_EVIDENCE).collect::<Vec<_>>();

    for a in of(Kind::Partition) {
        out.push(Finding {
            kind: FindingKind::Partition,
            nodes: a.islands.iter().flatten().copied().collect(),
            links: Vec::new(),
            span: a.span,
            text: a.text.clone(),
            evidence: evidence(a),
        });
    }
    // A node cut off by a partition may fall silent as it comes back (reconnecting, catching
    // up): a stall that starts during a partition it was cut off by, or within REJOIN_NS of
    // its end, is the partition's story, not a finding of its own.
    let cut_off = |n: NodeId, t: i64| {
        of(Kind::Partition).any(|p| {
            let minority = p.islands.iter().min_by_key(|i| i.len()).is_some_and(|i| i.contains(&n));
            p.span.is_some_and(|(a, b)| minority && a - PARTITION_WINDOW_NS <= t && t <= b + REJOIN_NS)
        })
    };
    for a in of(Kind::StalledNode).filter(|a| !a.span.is_some_and(|(from, _)| cut_off(a.nodes[0], from))) {
        out.push(Finding {
            kind: FindingKind::StalledNode,
            nodes: a.nodes.to_vec(),
            links: Vec::new(),
            span: a.span,
            text: a.text.clone(),
            evidence: evidence(a),
        });
    }
    for a in of(Kind::MissingNode) {
        out.push(Finding {
            kind: FindingKind::MissingNode,
            nodes: Vec::new(),
            links: Vec::new(),
            span: None,
            text: a.text.clone(),
            evidence: Vec::new(),
        });
    }
    out.extend(lossy_links(i));
    out.extend(kernel_drops(i));
    for a in of(Kind::RecorderLoss) {
        out.push(Finding {
            kind: FindingKind::RecorderLoss,
            nodes: a.nodes.to_vec(),
            links: Vec::new(),
            span: a.span,
            text: a.text.clone(),
            evidence: evidence(a),
        });
    }
    for a in of(Kind::ClockStep) {
        out.push(Finding {
            kind: FindingKind::ClockStep,
            nodes: a.nodes.to_vec(),
            links: Vec::new(),
            span: a.span,
            text: a.text.clone(),
            evidence: evidence(a),
        });
    }
    for (n, c) in i.clocks.nodes.iter().enumerate() {
        if c.quality == Quality::Insufficient && t.nodes.len() > 1 {
            out.push(Finding {
                kind: FindingKind::Clock,
                nodes: vec![n as NodeId],
                links: Vec::new(),
                span: None,
                text: format!(
                    "{}'s clock could not be estimated from the traffic (too few messages both ways): its times are taken as NTP-aligned, and losses to it are judged with a {} ms margin",
                    name(n as NodeId),
                    super::anomalies::NTP_MARGIN_NS / 1_000_000
                ),
                evidence: Vec::new(),
            });
        }
    }
    // Retry storms, one finding per sending node.
    let mut storms: BTreeMap<NodeId, Vec<&Anomaly>> = BTreeMap::new();
    for a in of(Kind::RetryStorm) {
        storms.entry(a.nodes[0]).or_default().push(a);
    }
    for (n, list) in storms {
        let span = span_of(list.iter().filter_map(|a| a.events.first().map(|&e| (i.corrected)(e))));
        out.push(Finding {
            kind: FindingKind::RetryStorm,
            nodes: vec![n],
            links: Vec::new(),
            span,
            text: format!(
                "retry storm on {}: {} message(s) resent {}+ times within {} ms{}; the first: {}",
                name(n),
                list.len(),
                super::anomalies::STORM_COUNT,
                super::anomalies::STORM_WINDOW_NS / 1_000_000,
                span.map_or(String::new(), |(a, b)| format!(" from {} to {}", super::fmt::fmt_time(a), super::fmt::fmt_time(b))),
                list[0].text.trim_start_matches("retry storm: ")
            ),
            evidence: list.iter().flat_map(|a| a.events.iter().copied()).take(MAX_EVIDENCE).collect(),
        });
    }
    // Unanswered requests and other violations, one finding per invariant or rule.
    let mut by_name: BTreeMap<&str, Vec<&Violation>> = BTreeMap::new();
    for v in i.violations {
        by_name.entry(&v.name).or_default().push(v);
    }
    for (rule, list) in by_name {
        let unanswered = i.answered.contains(rule);
        let span = span_of(list.iter().filter_map(|v| v.events.first().map(|&e| (i.corrected)(e))));
        let mut nodes: Vec<NodeId> = list.iter().filter_map(|v| v.events.first()).map(|&e| t.events[e as usize].node).collect();
        nodes.sort_unstable();
        nodes.dedup();
        out.push(Finding {
            kind: if unanswered { FindingKind::Unanswered } else { FindingKind::Violation },
            nodes,
            links: Vec::new(),
            span,
            text: match unanswered {
                true => format!("{} request(s) unanswered ({rule}); {}", list.len(), examples(&list)),
                false => format!("{rule} violated {} time(s); {}", list.len(), examples(&list)),
            },
            evidence: list.iter().flat_map(|v| v.events.iter().copied()).take(MAX_EVIDENCE).collect(),
        });
    }
    out.sort_by_key(|f| (f.kind.class(), f.span.map_or(i64::MAX, |s| s.0), f.kind));
    out
}

/// The first violation of each different shape (its text without numbers), up to three:
/// "a timeout at start-up" and "a member rejoined" are different stories.
fn examples(list: &[&Violation]) -> String {
    let mut seen = BTreeSet::new();
    let picked: Vec<&str> = list
        .iter()
        .filter(|v| seen.insert(v.text.chars().filter(|c| !c.is_ascii_digit() && *c != '.').take(60).collect::<String>()))
        .take(3)
        .map(|v| v.text.as_str())
        .collect();
    match picked.len() {
        1 => format!("the first: {}", picked[0]),
        _ => format!("the first of each kind: {}", picked.join("; ")),
    }
}

fn span_of(times: impl Iterator<Item = i64>) -> Option<(i64, i64)> {
    times.fold(None, |acc, t| Some(acc.map_or((t, t), |(a, b): (i64, i64)| (a.min(t), b.max(t)))))
}

/// Directed links whose loss rate stands out from the others'. Losses a partition or a
/// stall explains are not counted against a link.
fn lossy_links(i: &Inputs<'_>) -> Vec<Finding> {
    let t = i.trace;
    let name = |n: NodeId| t.nodes[n as usize].name.as_str();
    let partitions: Vec<(i64, i64, &Vec<Vec<NodeId>>)> =
        i.anomalies.iter().filter(|a| a.kind == Kind::Partition).filter_map(|a| Some((a.span?.0, a.span?.1, &a.islands))).collect();
    let stalls: Vec<(i64, i64, NodeId)> =
        i.anomalies.iter().filter(|a| a.kind == Kind::StalledNode).filter_map(|a| Some((a.span?.0, a.span?.1, a.nodes[0]))).collect();
    let explained = |from: NodeId, to: NodeId, at: i64| {
        let island = |isl: &Vec<Vec<NodeId>>, n: NodeId| isl.iter().position(|x| x.contains(&n));
        // A partition is known to a window or two: losses across it just outside are its own too.
        partitions.iter().any(|(a, b, isl)| {
            a - 2 * PARTITION_WINDOW_NS <= at && at <= b + 2 * PARTITION_WINDOW_NS && island(isl, from) != island(isl, to)
        }) || stalls.iter().any(|(a, b, n)| *a <= at && at <= *b && (*n == from || *n == to))
    };
    // Sends per directed link: delivered messages and losses (unicast to an owned address).
    let owners = address_owners(t);
    let mut sent: BTreeMap<(NodeId, NodeId), usize> = BTreeMap::new();
    for &(s, r) in &i.matching.messages {
        let (a, b) = (t.events[s as usize].node, t.events[r as usize].node);
        if a != b && !is_group_address(t.addr(t.events[s as usize].dst)) {
            *sent.entry((a, b)).or_default() += 1;
        }
    }
    let mut lost: BTreeMap<(NodeId, NodeId), Vec<(i64, EventId)>> = BTreeMap::new();
    for a in i.anomalies.iter().filter(|a| a.kind == Kind::NetworkLoss) {
        let (Some(&s), [from, to]) = (a.events.first(), a.nodes.as_slice()) else { continue };
        let at = (i.corrected)(s);
        let unicast = owners.get(&t.events[s as usize].dst) == Some(to);
        if unicast {
            *sent.entry((*from, *to)).or_default() += 1;
        }
        // A kernel's drops are its own finding, not the link's.
        let network = a.cause.is_none_or(|c| c.kind == CauseKind::Network);
        if network && !explained(*from, *to, at) {
            lost.entry((*from, *to)).or_default().push((at, s));
        }
    }
    let sent_on = |k: &(NodeId, NodeId)| sent.get(k).copied().unwrap_or(0).max(lost.get(k).map_or(0, Vec::len));
    let links: BTreeSet<(NodeId, NodeId)> = sent.keys().chain(lost.keys()).copied().collect();
    let (all_sent, all_lost): (usize, usize) = (links.iter().map(sent_on).sum(), lost.values().map(Vec::len).sum());
    let mut out = Vec::new();
    for (k, l) in &lost {
        let n = sent_on(k);
        let r = l.len() as f64 / n.max(1) as f64;
        // The other links' loss rate, pooled: what this link would lose if it were like them.
        let others = all_lost.saturating_sub(l.len()) as f64 / all_sent.saturating_sub(n).max(1) as f64;
        let expected = others * n as f64;
        let stands_out = l.len() as f64 >= expected + 3.0 * expected.sqrt();
        let span = span_of(l.iter().map(|x| x.0));
        // A link loses over time: a burst of losses within moments is an event, not the link.
        let lasting = span.is_some_and(|(a, b)| b - a >= LOSSY_MIN_SPAN_NS);
        if l.len() < LOSSY_MIN_LOST || r < LOSSY_MIN_RATE || r < LOSSY_VS_OTHERS * others || !stands_out || !lasting {
            continue;
        }
        out.push(Finding {
            kind: FindingKind::LossyLink,
            nodes: vec![k.0, k.1],
            links: vec![*k],
            span,
            text: format!(
                "lossy link {} → {}: {} of {} messages lost ({:.0}%){}; the other links lost {:.1}%",
                name(k.0),
                name(k.1),
                l.len(),
                n,
                r * 100.0,
                span.map_or(String::new(), |(a, b)| format!(" from {} to {}", super::fmt::fmt_time(a), super::fmt::fmt_time(b))),
                others * 100.0
            ),
            evidence: l.iter().map(|x| x.1).take(MAX_EVIDENCE).collect(),
        });
    }
    out
}

/// The kernels' drops, one finding per node that dropped, which way and why: lost messages
/// whose drop was recorded, and drops no recorded send explains.
fn kernel_drops(i: &Inputs<'_>) -> Vec<Finding> {
    let t = i.trace;
    let name = |n: NodeId| t.nodes[n as usize].name.as_str();
    // (dropping node, going out, reason) → (peers, span, evidence, count, unexplained drops).
    type Group = (BTreeSet<NodeId>, Vec<i64>, Vec<EventId>, usize);
    let mut groups: BTreeMap<(NodeId, bool, u16), Group> = BTreeMap::new();
    for a in i.anomalies {
        let Some(c) = a.cause.filter(|c| c.kind != CauseKind::Network) else { continue };
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
    }
    groups
        .into_iter()
        .map(|((node, out_going, reason), (peers, times, evidence, count))| {
            let reason = t.drop_reasons.get(reason as usize).map_or("?", String::as_str);
            let who = name(node);
            let peers: Vec<&str> = peers.iter().map(|&p| name(p)).collect();
            let with =
                if peers.is_empty() { String::new() } else { format!(" {} {}", if out_going { "to" } else { "from" }, peers.join(", ")) };
            let text = match (out_going, reason) {
                (true, "netfilter_drop") => {
                    format!("{who}'s own firewall dropped {count} of its messages{with} before they left (netfilter_drop)")
                }
                (false, "netfilter_drop") => format!("dropped by {who}'s firewall: {count} messages{with} (netfilter_drop)"),
                (false, "socket_rcvbuff") => format!(
                    "{who}'s receive buffer was full ({count} drops{with}, socket_rcvbuff): its application did not read fast enough"
                ),
                (false, "no_socket") => format!("nothing listened on {who} for {count} messages{with} (no_socket)"),
                (true, _) => format!("{who}'s kernel dropped {count} of its messages{with} on the way out ({reason})"),
                (false, _) => format!("{who}'s kernel dropped {count} messages{with} on the way in ({reason})"),
            };
            let span = span_of(times.into_iter());
            let text = match span {
                Some((a, b)) if a == b => format!("{text} at {}", super::fmt::fmt_time(a)),
                Some((a, b)) => format!("{text} from {} to {}", super::fmt::fmt_time(a), super::fmt::fmt_time(b)),
                None => text,
            };
            Finding { kind: FindingKind::KernelDrop, nodes: vec![node], links: Vec::new(), span, text, evidence }
        })
        .collect()
}
