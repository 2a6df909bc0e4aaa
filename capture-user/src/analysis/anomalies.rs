//! What went wrong: losses (network vs recorder, never confused), duplicates,
//! retransmissions, retry storms, unanswered requests, partitions, stalled nodes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rustc_hash::FxHashMap;

use super::matching::{Matching, TimeMap, address_owners, is_group_address};
use super::rules::Violation;
use super::steps::ClockStep;
use super::trace::{AddrId, Dir, EventId, NodeId, ProtoCode, Trace};

/// Time window for partition detection, ns.
pub const PARTITION_WINDOW_NS: i64 = 250_000_000;
/// A partition is claimed on at least this many messages lost across it...
pub const PARTITION_MIN_LOST: usize = 3;
/// ...over at least this many windows (1.5 s): a client that waits out a timeout after
/// each loss on a lossy link falls as silent as a cut-off node, for about as long...
pub const PARTITION_MIN_WINDOWS: i64 = 6;
/// ...unless this many messages were lost across it, over two windows or more: a busy
/// cluster shows a short partition plainly.
pub const PARTITION_BUSY_LOST: usize = 10;
/// Windows with the same islands and nothing delivered across in between are one partition
/// when at most this many windows apart.
const PARTITION_MAX_GAP: i64 = 40;
/// A payload sent this many times by one node within `STORM_WINDOW_NS` is a retry storm.
pub const STORM_COUNT: usize = 5;
pub const STORM_WINDOW_NS: i64 = 1_000_000_000;
/// Identical payloads on one flow this close together are retransmissions.
pub const RETRY_WINDOW_NS: i64 = 5_000_000_000;
/// A receiver must have kept recording this long after a send for its absence to be judged.
pub const JUDGE_MARGIN_NS: i64 = 20_000_000;
/// Longest one-way delay assumed: a send this close before a recorder gap on its
/// receiver may have arrived inside the gap, so its absence is not called network loss.
pub const MAX_DELAY_NS: i64 = 100_000_000;
/// A node is stalled when it sends nothing for this many times its usual longest gap
/// between sends (the 90th percentile)...
pub const STALL_FACTOR: i64 = 5;
/// ...and for at least this long...
pub const STALL_MIN_NS: i64 = 500_000_000;
/// ...while its peers send it at least this many messages.
pub const STALL_MIN_SENT_TO: usize = 3;
/// How far a clock that could not be estimated may be off (NTP on a bad day): a send is
/// judged lost only if it lies this far inside the receiver's recording.
pub const NTP_MARGIN_NS: i64 = 250_000_000;
/// A peer's RST this soon after a TCP send answers it: the data reached a closed socket.
pub const RST_ANSWER_NS: i64 = 1_000_000_000;
/// Sends a node needs before its usual cadence is known.
const STALL_MIN_SENDS: usize = 10;

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
    /// For network losses: where the message died. For kernel drops: the reason.
    pub cause: Option<Cause>,
}

impl Anomaly {
    fn new(kind: Kind, events: Vec<EventId>, text: String) -> Anomaly {
        Anomaly { kind, events: EventList::from_vec(events), text, nodes: NodeList::new(), islands: Vec::new(), span: None, cause: None }
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

/// The UDP and TCP ports each node's recorded traffic uses locally (sent from, received on).
struct LocalPorts {
    /// Per node: 1024 words of UDP port bits, then 1024 of TCP.
    bits: Vec<Box<[u64; 2048]>>,
}

impl LocalPorts {
    fn new(trace: &Trace) -> LocalPorts {
        let mut bits = vec![Box::new([0u64; 2048]); trace.nodes.len()];
        for e in &trace.events {
            let base = match e.proto {
                ProtoCode::Udp => 0,
                ProtoCode::Tcp => 1024,
                _ => continue,
            };
            let p = if e.dir == Dir::Send { e.sport } else { e.dport } as usize;
            bits[e.node as usize][base + p / 64] |= 1 << (p % 64);
        }
        LocalPorts { bits }
    }
    /// Whether `node` used `port` (ICMP and other protocols have none: always).
    fn uses(&self, node: NodeId, proto: ProtoCode, port: u16) -> bool {
        let base = match proto {
            ProtoCode::Udp => 0,
            ProtoCode::Tcp => 1024,
            _ => return true,
        };
        let p = port as usize;
        self.bits[node as usize][base + p / 64] >> (p % 64) & 1 == 1
    }
}

/// A packet's headers on one node, one way: (node, direction, addresses, ports, IP id).
type HeaderKey = (NodeId, Dir, AddrId, AddrId, u16, u16, u16);

/// Kernel drops by node, direction and message key, for finding the drop of a lost message.
/// Looked up for many events, and few match: the headers first, the payload's hash only
/// for those whose headers do.
struct DropIndex {
    by_header: FxHashMap<HeaderKey, Vec<(u64, usize)>>,
}

impl DropIndex {
    fn new(trace: &Trace) -> DropIndex {
        let mut by_header: FxHashMap<_, Vec<(u64, usize)>> = FxHashMap::default();
        for (k, d) in trace.drops.iter().enumerate() {
            let e = &d.event;
            by_header.entry(Self::header(e, e.node, e.dir)).or_default().push((trace.content_hash(e), k));
        }
        DropIndex { by_header }
    }
    fn header(e: &super::trace::Event, node: NodeId, dir: Dir) -> HeaderKey {
        (node, dir, e.src, e.dst, e.sport, e.dport, e.ip_id)
    }
    /// Drops of the packet `e` on `node` going `dir`.
    fn of(&self, trace: &Trace, e: &super::trace::Event, node: NodeId, dir: Dir) -> Vec<usize> {
        let Some(v) = self.by_header.get(&Self::header(e, node, dir)) else { return Vec::new() };
        let hash = trace.content_hash(e);
        v.iter().filter(|x| x.0 == hash).map(|x| x.1).collect()
    }
}

/// A stretch of time on one node where its recorder lost records (reference clock).
#[derive(Clone, Debug)]
pub struct RecorderGap {
    pub node: NodeId,
    pub cpu: u16,
    pub lost: u64,
    pub from: i64,
    pub to: i64,
    pub events: (EventId, EventId),
}

pub struct Context<'a> {
    pub trace: &'a Trace,
    pub matching: &'a Matching,
    pub clocks: &'a dyn TimeMap,
    pub describe: &'a dyn Fn(EventId) -> String,
    pub missing_nodes: &'a [String],
    /// A hash of the event's message type and identity fields, where the spec declares them.
    pub identity: &'a dyn Fn(EventId) -> Option<u64>,
}

pub fn recorder_gaps(trace: &Trace, clocks: &dyn TimeMap) -> Vec<RecorderGap> {
    let mut gaps = Vec::new();
    for (n, r) in trace.node_ranges.iter().enumerate() {
        let mut per_cpu: BTreeMap<u16, Vec<(u64, usize)>> = BTreeMap::new();
        for i in r.clone() {
            let e = &trace.events[i];
            if e.seq != u64::MAX {
                per_cpu.entry(e.cpu).or_default().push((e.seq, i));
            }
        }
        // Drop records share the sequence: theirs are no gap.
        let mut dropped: BTreeMap<u16, Vec<u64>> = BTreeMap::new();
        for d in trace.drops.iter().filter(|d| d.event.node as usize == n && !d.stands_for_send && d.event.seq != u64::MAX) {
            dropped.entry(d.event.cpu).or_default().push(d.event.seq);
        }
        for v in dropped.values_mut() {
            v.sort_unstable();
        }
        for (cpu, mut v) in per_cpu {
            v.sort_unstable();
            let theirs = dropped.get(&cpu).map_or(&[][..], Vec::as_slice);
            for w in v.windows(2) {
                let ((s0, i0), (s1, i1)) = (w[0], w[1]);
                let between = (theirs.partition_point(|&x| x < s1) - theirs.partition_point(|&x| x <= s0)) as u64;
                if s1 > s0 + 1 + between {
                    let (a, b) = (&trace.events[i0], &trace.events[i1]);
                    gaps.push(RecorderGap {
                        node: n as NodeId,
                        cpu,
                        lost: s1 - s0 - 1 - between,
                        from: clocks.corrected(a.node, a.t_raw),
                        to: clocks.corrected(b.node, b.t_raw),
                        events: (i0 as EventId, i1 as EventId),
                    });
                }
            }
        }
    }
    gaps
}

pub fn find(ctx: &Context<'_>) -> Vec<Anomaly> {
    let trace = ctx.trace;
    let m = ctx.matching;
    let corr = |id: EventId| {
        let e = &trace.events[id as usize];
        ctx.clocks.corrected(e.node, e.t_raw)
    };
    let node_name = |n: NodeId| trace.nodes[n as usize].name.as_str();
    let mut out = Vec::new();

    // Recorder loss first: network loss must not be claimed where the recorder was blind.
    let gaps = recorder_gaps(trace, ctx.clocks);
    let mut gaps_by_node: HashMap<NodeId, Vec<&RecorderGap>> = HashMap::new();
    for g in &gaps {
        gaps_by_node.entry(g.node).or_default().push(g);
        let mut a = Anomaly::new(
            Kind::RecorderLoss,
            vec![g.events.0, g.events.1],
            format!("{}'s recorder lost {} records on cpu {} (sequence gap)", node_name(g.node), g.lost, g.cpu),
        );
        a.nodes = NodeList::from_slice(&[g.node]);
        a.span = Some((g.from, g.to));
        out.push(a);
    }
    for (n, info) in trace.nodes.iter().enumerate() {
        // Saturating: sequence numbers come from the dump, which may be damaged.
        let in_gaps: u64 = gaps.iter().filter(|g| g.node == n as NodeId).fold(0, |sum, g| sum.saturating_add(g.lost));
        if info.kernel_drops > in_gaps {
            let mut a = Anomaly::new(
                Kind::RecorderLoss,
                Vec::new(),
                format!(
                    "{}'s kernel ring dropped {} records{}",
                    info.name,
                    info.kernel_drops - in_gaps,
                    if in_gaps > 0 { " besides the sequence gaps" } else { " (after its last record on that CPU)" }
                ),
            );
            a.nodes = NodeList::from_slice(&[n as NodeId]);
            out.push(a);
        }
    }
    let blind = |node: NodeId, t: i64| {
        gaps_by_node.get(&node).is_some_and(|v| v.iter().any(|g| g.from - MAX_DELAY_NS <= t && t <= g.to + ctx.clocks.uncertainty(node)))
    };
    let window = |node: NodeId| {
        let w = trace.nodes[node as usize].window;
        (ctx.clocks.corrected(node, w.0), ctx.clocks.corrected(node, w.1))
    };

    // Which nodes receive traffic for each group (broadcast/multicast) address and port.
    let owners = address_owners(trace);
    let group_addr: Vec<bool> = trace.addrs.iter().map(|a| is_group_address(*a)).collect();
    let mut group_receivers: FxHashMap<(u32, u16), BTreeSet<NodeId>> = FxHashMap::default();
    for e in &trace.events {
        if e.dir == Dir::Recv && group_addr[e.dst as usize] {
            group_receivers.entry((e.dst, e.dport)).or_default().insert(e.node);
        }
    }
    // Receivers of a send: messages are sorted by send, so they are one contiguous run.
    let received_by = |s: EventId| {
        let from = m.messages.partition_point(|&(x, _)| x < s);
        let to = m.messages.partition_point(|&(x, _)| x <= s);
        m.messages[from..to].iter().map(|&(_, r)| trace.events[r as usize].node).collect::<Vec<NodeId>>()
    };

    // Network loss: sends a recording receiver never saw.
    let mut losses: Vec<(EventId, NodeId)> = Vec::new();
    let drops = DropIndex::new(trace);
    let ports = LocalPorts::new(trace);
    // Unmatched sends, and group sends that some but maybe not all of their receivers got.
    let mut candidates: Vec<EventId> = m.unmatched_sends.clone();
    candidates.extend(m.messages.iter().map(|&(s, _)| s).filter(|&s| group_addr[trace.events[s as usize].dst as usize]));
    candidates.sort_unstable();
    candidates.dedup();
    for &s in &candidates {
        let e = &trace.events[s as usize];
        if e.proto == ProtoCode::Tcp && e.payload_len == 0 {
            continue; // pure ACKs are not judged: nothing waits for them
        }
        let t = corr(s);
        let receivers: Vec<NodeId> = if group_addr[e.dst as usize] {
            let got = received_by(s);
            group_receivers
                .get(&(e.dst, e.dport))
                .map_or_else(Vec::new, |set| set.iter().copied().filter(|n| *n != e.node && !got.contains(n)).collect())
        } else {
            owners.get(&e.dst).copied().filter(|n| *n != e.node).into_iter().collect()
        };
        for r in receivers {
            let (w0, w1) = window(r);
            // Where the receiver's clock is unknown, the send must lie well inside its recording,
            // unless a kernel's record of dropping it says it was lost whatever the clocks.
            let margin = if ctx.clocks.known(r) && ctx.clocks.known(e.node) { ctx.clocks.uncertainty(r) } else { NTP_MARGIN_NS };
            // Only to a port the receiver's recorded application uses: on the same address an
            // unrecorded process (a client, a sidecar) gets what the recording cannot see.
            let for_the_app = group_addr[e.dst as usize] || ports.uses(r, e.proto, e.dport);
            let judged = for_the_app && !(t - margin < w0 || t + margin + JUDGE_MARGIN_NS > w1 || blind(r, t));
            if judged || !drops.of(trace, e, r, Dir::Recv).is_empty() || !drops.of(trace, e, e.node, Dir::Send).is_empty() {
                losses.push((s, r));
            }
        }
    }
    // A TCP segment that only arrived as a later retransmission was lost the first time,
    // and so was every copy sent before the one that got through.
    let mut copies: BTreeMap<EventId, Vec<EventId>> = BTreeMap::new();
    for &(first, again) in &m.retransmissions {
        let e = &trace.events[first as usize];
        if e.proto == ProtoCode::Tcp && e.payload_len > 0 {
            copies.entry(first).or_default().push(again);
        }
    }
    for (first, again) in copies {
        let at = m.messages.partition_point(|&(x, _)| x < first);
        let Some(&(x, r)) = m.messages.get(at) else { continue };
        if x != first {
            continue;
        }
        let (got, rn) = (corr(r), trace.events[r as usize].node);
        // The copy that got through is the last one sent before it arrived.
        let sent: Vec<EventId> = std::iter::once(first).chain(again).filter(|&c| corr(c) < got).collect();
        for &c in &sent[..sent.len().saturating_sub(1)] {
            if !blind(rn, corr(c)) {
                losses.push((c, rn));
            }
        }
    }
    losses.sort_unstable();
    losses.dedup();
    // TCP data that met a closed connection is no network loss: the peer had sent its FIN
    // or RST before, or answers it with a RST (its socket is gone).
    // Only worth a pass over every event when a TCP send is in question.
    let tcp_lost = losses.iter().any(|&(s, _)| trace.events[s as usize].proto == ProtoCode::Tcp);
    let closes = if tcp_lost { tcp_closes(trace, &corr) } else { FxHashMap::default() };
    let closed_by = |s: EventId| {
        let e = &trace.events[s as usize];
        if e.proto != ProtoCode::Tcp {
            return None;
        }
        let t = corr(s);
        closes.get(&(e.dst, e.dport, e.src, e.sport)).and_then(|v| {
            v.iter().find(|&&(at, rst)| at <= t || (rst && at <= t + RST_ANSWER_NS)).map(|&(_, rst)| if rst { "RST" } else { "FIN" })
        })
    };
    let mut closed: BTreeMap<Flow, (Vec<EventId>, NodeId, &str)> = BTreeMap::new();
    losses.retain(|&(s, r)| match closed_by(s) {
        Some(how) => {
            let e = &trace.events[s as usize];
            closed.entry((e.src, e.sport, e.dst, e.dport)).or_insert_with(|| (Vec::new(), r, how)).0.push(s);
            false
        }
        None => true,
    });
    for ((src, sport, dst, dport), (sends, r, how)) in closed {
        let e = &trace.events[sends[0] as usize];
        let mut a = Anomaly::new(
            Kind::ClosedConnection,
            sends.clone(),
            format!(
                "{} sent {} TCP segment(s) on {}:{sport} → {}:{dport} after {} had closed the connection ({how}): not a network loss",
                node_name(e.node),
                sends.len(),
                trace.addr(src),
                trace.addr(dst),
                node_name(r)
            ),
        );
        a.nodes = NodeList::from_slice(&[e.node, r]);
        a.span = Some((corr(sends[0]), corr(*sends.last().expect("non-empty"))));
        out.push(a);
    }
    // Where each lost message died: a drop record of it on the sender (going out) or on
    // the receiver (coming in) names the kernel and its reason; without one, the network.
    let mut explained = vec![false; trace.drops.len()];
    let cause_of = |s: EventId, r: NodeId, explained: &mut Vec<bool>| {
        let e = &trace.events[s as usize];
        let sender = drops.of(trace, e, e.node, Dir::Send);
        let receiver = drops.of(trace, e, r, Dir::Recv);
        let (kind, hit) = match (sender.first(), receiver.first()) {
            (Some(&k), _) => (CauseKind::SenderKernel, Some(k)),
            (None, Some(&k)) => (CauseKind::ReceiverKernel, Some(k)),
            (None, None) => (CauseKind::Network, None),
        };
        for &k in sender.iter().chain(&receiver) {
            explained[k] = true;
        }
        Cause { kind, reason: hit.map(|k| trace.drops[k].reason) }
    };
    let mut caused: Vec<(EventId, NodeId, Cause)> = losses.iter().map(|&(s, r)| (s, r, cause_of(s, r, &mut explained))).collect();
    // A datagram the receiver's recorder saw arrive, which its kernel then dropped (a full
    // socket buffer): delivered to the host, lost to the application.
    if !trace.drops.is_empty() {
        for &(s, r) in &m.messages {
            let (se, re) = (&trace.events[s as usize], &trace.events[r as usize]);
            if se.proto == ProtoCode::Tcp {
                continue; // TCP resends what its peer's kernel dropped: not a loss
            }
            let ds = drops.of(trace, re, re.node, Dir::Recv);
            if let Some(&k) = ds.iter().find(|&&k| trace.drops[k].event.t_raw >= re.t_raw) {
                explained[k] = true;
                caused.push((s, re.node, Cause { kind: CauseKind::ReceiverKernel, reason: Some(trace.drops[k].reason) }));
            }
        }
        // Drops of packets the node recorded receiving (TCP's duplicates, say) are the stack's own business.
        let mut received = vec![false; trace.drops.len()];
        for e in trace.events.iter().filter(|e| e.dir == Dir::Recv && e.proto == ProtoCode::Tcp) {
            for k in drops.of(trace, e, e.node, Dir::Recv) {
                received[k] = true;
            }
        }
        // Drops no lost message explains: inbound to a closed port from someone unrecorded, say.
        for (k, d) in trace.drops.iter().enumerate() {
            let e = &d.event;
            let reason = trace.drop_reasons.get(d.reason as usize).map_or("?", String::as_str);
            // The kernel's own traffic (neighbour discovery, say), group sends, and TCP's own
            // decisions (old data, out of window: duplicates it had) are its business.
            if explained[k]
                || matches!(e.proto, ProtoCode::Icmp | ProtoCode::Other)
                || is_group_address(trace.addr(e.dst))
                || (e.proto == ProtoCode::Tcp && reason.starts_with("tcp_"))
                || received[k]
            {
                continue;
            }
            let words = reason_words(reason);
            let what = format!("{} {}:{} → {}:{}", e.proto.name(), trace.addr(e.src), e.sport, trace.addr(e.dst), e.dport);
            let text = if e.dir == Dir::Send {
                format!(
                    "{}'s kernel dropped its own {what} on the way out ({reason}{}{words})",
                    node_name(e.node),
                    if words.is_empty() { "" } else { ": " }
                )
            } else {
                format!(
                    "{}'s kernel dropped {what} on the way in ({reason}{}{words})",
                    node_name(e.node),
                    if words.is_empty() { "" } else { ": " }
                )
            };
            let mut a = Anomaly::new(Kind::KernelDrop, Vec::new(), text);
            a.nodes = NodeList::from_slice(&[e.node]);
            let t = ctx.clocks.corrected(e.node, e.t_raw);
            a.span = Some((t, t));
            a.cause = Some(Cause {
                kind: if e.dir == Dir::Send { CauseKind::SenderKernel } else { CauseKind::ReceiverKernel },
                reason: Some(d.reason),
            });
            out.push(a);
        }
    }
    caused.sort_unstable_by_key(|c| (c.0, c.1));
    caused.dedup_by_key(|c| (c.0, c.1));
    for &(s, r, cause) in &caused {
        let e = &trace.events[s as usize];
        let mut a = Anomaly::new(Kind::NetworkLoss, vec![s], String::new());
        a.nodes = NodeList::from_slice(&[e.node, r]);
        a.span = Some((corr(s), corr(s)));
        a.cause = Some(cause);
        out.push(a);
    }
    // What reached a receiver's host and died there: evidence that the node was there to hear it.
    let reached_host: Vec<(EventId, NodeId)> =
        caused.iter().filter(|c| c.2.kind == CauseKind::ReceiverKernel).map(|c| (c.0, c.1)).collect();
    // Partitions and stalls are the network's and the nodes' stories: a kernel's drops are neither.
    losses.retain(|&(s, r)| caused.binary_search_by_key(&(s, r), |c| (c.0, c.1)).is_ok_and(|k| caused[k].2.kind == CauseKind::Network));

    for &(first, again) in &m.duplicates {
        let mut a = Anomaly::new(Kind::Duplicate, vec![first, again], format!("{} twice (network duplicate)", (ctx.describe)(again)));
        a.nodes = NodeList::from_slice(&[trace.events[again as usize].node]);
        out.push(a);
    }

    // Retransmissions and storms: the same payload again from one node on one flow.
    // Sends grouped by (node, flow, payload) by sorting a hash of that key; a node's
    // events are in time order, so sorting by id next keeps each group in time order.
    // Every captured byte counts: two messages that only start alike are no resend.
    // Where the spec names a message's identity fields, sends that agree on them are one
    // request, whatever else changed (a sequence number, the source port of a new socket).
    let send_key = |i: usize| {
        let e = &trace.events[i];
        match (ctx.identity)(i as EventId) {
            Some(id) => (e.node, e.src, e.dst, 0, e.dport, id),
            None => (e.node, e.src, e.dst, e.sport, e.dport, trace.payload_hash(e)),
        }
    };
    let mut tcp_resent: BTreeMap<EventId, Vec<EventId>> = BTreeMap::new();
    for &(first, again) in &m.retransmissions {
        if trace.events[again as usize].proto == ProtoCode::Tcp {
            tcp_resent.entry(first).or_default().push(again);
        }
    }
    let mut runs: Vec<Vec<EventId>> = tcp_resent
        .into_iter()
        .map(|(f, mut v)| {
            v.insert(0, f);
            v
        })
        .collect();
    // One node at a time (the key holds the node), so the sort needs a node's worth of memory.
    let mut keyed_sends: Vec<(u64, EventId)> = Vec::new();
    for range in &trace.node_ranges {
        keyed_sends.clear();
        keyed_sends.extend(range.clone().filter_map(|i| {
            let e = &trace.events[i];
            (e.dir == Dir::Send && e.payload_len > 0 && e.proto != ProtoCode::Tcp).then(|| {
                use std::hash::{Hash, Hasher};
                let mut h = rustc_hash::FxHasher::default();
                send_key(i).hash(&mut h);
                (h.finish(), i as EventId)
            })
        }));
        keyed_sends.sort_unstable();
        let by_payload = keyed_sends.chunk_by(|a, b| a.0 == b.0 && send_key(a.1 as usize) == send_key(b.1 as usize));
        for sends in by_payload {
            if sends.len() < 2 {
                continue;
            }
            // Split into runs of sends no more than RETRY_WINDOW_NS apart.
            let mut run = vec![sends[0].1];
            for w in sends.windows(2) {
                if trace.events[w[1].1 as usize].t_raw - trace.events[w[0].1 as usize].t_raw <= RETRY_WINDOW_NS {
                    run.push(w[1].1);
                } else {
                    if run.len() > 1 {
                        runs.push(std::mem::take(&mut run));
                    }
                    run = vec![w[1].1];
                }
            }
            if run.len() > 1 {
                runs.push(run);
            }
        }
    }
    drop(keyed_sends);
    runs.sort();
    for run in runs {
        let e = &trace.events[run[0] as usize];
        let mut a = Anomaly::new(
            Kind::Retransmission,
            run.clone(),
            format!("{} was sent {} times (retransmissions)", (ctx.describe)(run[0]), run.len()),
        );
        a.nodes = NodeList::from_slice(&[e.node]);
        a.span = Some((corr(run[0]), corr(*run.last().expect("non-empty"))));
        out.push(a);
        // A storm: STORM_COUNT or more of them within STORM_WINDOW_NS.
        let times: Vec<i64> = run.iter().map(|&id| trace.events[id as usize].t_raw).collect();
        let dense = (0..times.len()).any(|i| times.get(i + STORM_COUNT - 1).is_some_and(|t| t - times[i] <= STORM_WINDOW_NS));
        if dense {
            let mut a = Anomaly::new(
                Kind::RetryStorm,
                run.clone(),
                format!(
                    "retry storm: {} sent {} times, at least {STORM_COUNT} within {} ms",
                    (ctx.describe)(run[0]),
                    run.len(),
                    STORM_WINDOW_NS / 1_000_000
                ),
            );
            a.nodes = NodeList::from_slice(&[e.node]);
            out.push(a);
        }
    }

    let stalls = stalls(trace, &losses, &reached_host, &corr, &window);
    for st in &stalls {
        let name = node_name(st.node);
        let how_long = match st.until_end {
            true => format!("from {} to the end of its recording ({} ms)", super::fmt::fmt_time(st.from), (st.to - st.from) / 1_000_000),
            false => {
                format!("from {} to {} ({} ms)", super::fmt::fmt_time(st.from), super::fmt::fmt_time(st.to), (st.to - st.from) / 1_000_000)
            }
        };
        let peers = match st.lost {
            0 => format!("though it received {} messages from its peers meanwhile", st.sent_to),
            l if l == st.sent_to => format!("though its peers sent it {l} messages, none of which it received"),
            l => format!("though its peers sent it {} messages ({l} never received)", st.sent_to),
        };
        let mut a = Anomaly::new(
            Kind::StalledNode,
            st.last_send.into_iter().collect(),
            format!(
                "{name} stalled: it sent nothing {how_long}, {peers}; it usually sends every {} ms or less",
                (st.cadence / 1_000_000).max(1)
            ),
        );
        a.nodes = NodeList::from_slice(&[st.node]);
        a.span = Some((st.from, st.to));
        out.push(a);
    }
    out.extend(partitions(trace, m, &losses, &corr, &stalls));

    for name in ctx.missing_nodes {
        out.push(Anomaly::new(Kind::MissingNode, Vec::new(), format!("{name} never answered the trigger: no dump from it")));
    }
    out
}

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

/// First and last time, ns.
type Span = (i64, i64);

/// One direction of a flow: source address and port, destination address and port.
type Flow = (AddrId, u16, AddrId, u16);

/// TCP FINs and RSTs per flow, as sent by their sender (source addr, port, dest addr,
/// port): (corrected time, is RST), in time order. Seen from either end: the closing node's
/// send, or its peer's receive.
fn tcp_closes(trace: &Trace, corr: &dyn Fn(EventId) -> i64) -> FxHashMap<Flow, Vec<(i64, bool)>> {
    const FIN: u8 = 0x01;
    const RST: u8 = 0x04;
    let mut m: FxHashMap<Flow, Vec<(i64, bool)>> = FxHashMap::default();
    for (i, e) in trace.events.iter().enumerate() {
        if e.proto == ProtoCode::Tcp && e.tcp_flags & (FIN | RST) != 0 {
            m.entry((e.src, e.sport, e.dst, e.dport)).or_default().push((corr(i as EventId), e.tcp_flags & RST != 0));
        }
    }
    for v in m.values_mut() {
        v.sort_unstable_by_key(|x| x.0);
    }
    m
}

/// A node that fell silent while its peers kept sending to it.
#[derive(Clone, Debug)]
pub struct Stall {
    pub node: NodeId,
    /// Its last send before the silence, and when the silence ends (its next send, or the
    /// end of its recording), reference clock ns.
    pub from: i64,
    pub to: i64,
    pub until_end: bool,
    pub last_send: Option<EventId>,
    /// Messages its peers sent it meanwhile, and how many of those it never received.
    pub sent_to: usize,
    pub lost: usize,
    /// Its usual longest gap between sends (90th percentile), ns.
    pub cadence: i64,
}

/// Nodes that stopped sending, for much longer than their own cadence, while their peers
/// kept sending to them: a stopped process, a GC pause, a crash. A node that only has
/// nothing to say is not stalled: nobody was sending to it, or its cadence allows the gap.
pub fn stalls(
    trace: &Trace,
    losses: &[(EventId, NodeId)],
    reached_host: &[(EventId, NodeId)],
    corr: &dyn Fn(EventId) -> i64,
    window: &dyn Fn(NodeId) -> (i64, i64),
) -> Vec<Stall> {
    let mut out = Vec::new();
    for (x, range) in trace.node_ranges.iter().enumerate() {
        let x = x as NodeId;
        // Sends that say something: pure TCP ACKs go out from a stopped process's kernel too.
        let sends: Vec<(i64, EventId)> = range
            .clone()
            .filter(|&i| {
                let e = &trace.events[i];
                e.dir == Dir::Send && (e.proto != ProtoCode::Tcp || e.payload_len > 0)
            })
            .map(|i| (corr(i as EventId), i as EventId))
            .collect();
        if sends.len() < STALL_MIN_SENDS {
            continue;
        }
        let mut gaps: Vec<i64> = sends.windows(2).map(|w| w[1].0 - w[0].0).collect();
        gaps.sort_unstable();
        let cadence = gaps[(gaps.len() * 9 / 10).min(gaps.len() - 1)].max(1);
        let threshold = cadence.saturating_mul(STALL_FACTOR).max(STALL_MIN_NS);
        let end = window(x).1;
        let mut spans: Vec<(i64, i64, bool, EventId)> =
            sends.windows(2).filter(|w| w[1].0 - w[0].0 > threshold).map(|w| (w[0].0, w[1].0, false, w[0].1)).collect();
        let &(last_t, last_id) = sends.last().expect("sends");
        if end - last_t > threshold {
            spans.push((last_t, end, true, last_id));
        }
        if spans.is_empty() {
            continue;
        }
        // What its peers sent it: messages that say something (not the kernel's TCP ACKs).
        let received: Vec<i64> = range
            .clone()
            .filter(|&i| {
                let e = &trace.events[i];
                e.dir == Dir::Recv && (e.proto != ProtoCode::Tcp || e.payload_len > 0)
            })
            .map(|i| corr(i as EventId))
            .collect();
        let lost_to: Vec<i64> = losses.iter().filter(|(_, r)| *r == x).map(|(s, _)| corr(*s)).collect();
        let dropped_there: Vec<i64> = reached_host.iter().filter(|(_, r)| *r == x).map(|(s, _)| corr(*s)).collect();
        for (from, to, until_end, last_send) in spans {
            // Only what arrived well inside the silence: a cluster-wide lull ends with every
            // node hearing from the others at once, and began with the last answers.
            let inside = |t: &&i64| from + cadence < **t && **t < to - cadence;
            // What reached its host (recorded arriving, or dropped by its own kernel) shows it
            // had something to answer. Messages the network lost show nothing about the node,
            // unless the silence lasts to the end of its recording (it died: nothing got through).
            let got = received.iter().filter(inside).count() + dropped_there.iter().filter(inside).count();
            let lost = lost_to.iter().filter(inside).count();
            if got >= STALL_MIN_SENT_TO || (until_end && got + lost >= STALL_MIN_SENT_TO) {
                out.push(Stall { node: x, from, to, until_end, last_send: Some(last_send), sent_to: got + lost, lost, cadence });
            }
        }
    }
    // A node whose last word was a request to a stalled peer, and that speaks again once
    // that peer does, was waiting for it: the peer's stall, not its own.
    let owners = address_owners(trace);
    let waiting = |x: &Stall| {
        let Some(dst) = x.last_send.map(|s| trace.events[s as usize].dst) else { return false };
        let Some(&peer) = owners.get(&dst) else { return false };
        out.iter().any(|y| y.node == peer && y.node != x.node && y.from <= x.from && x.to <= y.to + STALL_MIN_NS)
    };
    let keep: Vec<bool> = out.iter().map(|x| !waiting(x)).collect();
    out.into_iter().zip(keep).filter_map(|(x, k)| k.then_some(x)).collect()
}

fn partitions(trace: &Trace, m: &Matching, losses: &[(EventId, NodeId)], corr: &dyn Fn(EventId) -> i64, stalls: &[Stall]) -> Vec<Anomaly> {
    let n = trace.nodes.len();
    if n < 2 {
        return Vec::new();
    }
    let win = |t: i64| t.div_euclid(PARTITION_WINDOW_NS);
    // Per window, the pairs of nodes that delivered to each other, with the last delivery's
    // time. Judged by when messages were actually delivered: a TCP segment retransmitted
    // after the heal was not delivered while its first copy was lost.
    // Per window, the pairs of nodes that delivered to each other, with the first and last
    // delivery's time.
    let mut delivered: FxHashMap<i64, BTreeMap<(NodeId, NodeId), Span>> = FxHashMap::default();
    for &(s, r) in &m.messages {
        let (a, b) = (trace.events[s as usize].node, trace.events[r as usize].node);
        if a != b {
            let t = corr(r);
            let span = delivered.entry(win(t)).or_default().entry((a.min(b), a.max(b))).or_insert((t, t));
            *span = (span.0.min(t), span.1.max(t));
        }
    }
    let mut failed: BTreeMap<i64, Vec<(NodeId, NodeId, EventId)>> = BTreeMap::new();
    // A loss to or from a stalled node is the stall's, not a partition's.
    let stalled = |n: NodeId, t: i64| stalls.iter().any(|st| st.node == n && st.from <= t && t <= st.to);
    for &(s, r) in losses {
        let (a, t) = (trace.events[s as usize].node, corr(s));
        if !stalled(r, t) && !stalled(a, t) {
            failed.entry(win(t)).or_default().push((a, r, s));
        }
    }
    // Islands per window with losses: components of the "delivered" graph.
    let mut found: Vec<(i64, Vec<Vec<NodeId>>, Vec<EventId>)> = Vec::new();
    for (w, fails) in &failed {
        let mut parent: Vec<usize> = (0..n).collect();
        fn root(p: &mut [usize], x: usize) -> usize {
            let mut x = x;
            while p[x] != x {
                p[x] = p[p[x]];
                x = p[x];
            }
            x
        }
        let mut active = BTreeSet::new();
        // A pair that delivered early in the window, then lost a message and delivered no
        // more, was cut within it: what got through before does not undo the cut.
        let first_loss = |a: NodeId, b: NodeId| {
            fails.iter().filter(|f| (f.0.min(f.1), f.0.max(f.1)) == (a, b)).map(|f| corr(f.2)).min().unwrap_or(i64::MIN)
        };
        for (&(a, b), _) in delivered.get(w).into_iter().flatten().filter(|(p, span)| span.1 >= first_loss(p.0, p.1)) {
            active.insert(a);
            active.insert(b);
            let (ra, rb) = (root(&mut parent, a as usize), root(&mut parent, b as usize));
            parent[ra] = rb;
        }
        let crossing: Vec<EventId> = fails
            .iter()
            .filter(|(a, b, _)| {
                let (ra, rb) = (root(&mut parent, *a as usize), root(&mut parent, *b as usize));
                ra != rb
            })
            .map(|f| f.2)
            .collect();
        if crossing.is_empty() {
            continue;
        }
        for &(a, b, _) in fails {
            active.insert(a);
            active.insert(b);
        }
        let mut islands: BTreeMap<usize, Vec<NodeId>> = BTreeMap::new();
        for &x in &active {
            islands.entry(root(&mut parent, x as usize)).or_default().push(x);
        }
        if islands.len() < 2 {
            continue;
        }
        let mut isl: Vec<Vec<NodeId>> = islands.into_values().collect();
        isl.sort();
        found.push((*w, isl, crossing));
    }
    // Merge windows with the same islands while nothing is delivered across them in between
    // (quiet windows do not end a partition; a message across does, also one that got
    // through within a window before its losses).
    let crosses = |from: i64, to: i64, isl: &[Vec<NodeId>]| {
        let side = |n: NodeId| isl.iter().position(|i| i.contains(&n));
        (win(from)..=win(to)).any(|k| {
            delivered.get(&k).is_some_and(|pairs| {
                pairs.iter().any(|(&(a, b), &(first, last))| {
                    side(a).is_some() && side(b).is_some() && side(a) != side(b) && first < to && last > from
                })
            })
        })
    };
    let mut out: Vec<Anomaly> = Vec::new();
    // (first window, last window, islands, crossing losses) of the partition being merged.
    type Open = (i64, i64, Vec<Vec<NodeId>>, Vec<EventId>);
    let mut cur: Option<Open> = None;
    let close = |c: Open, out: &mut Vec<Anomaly>| {
        // One lost message in a quiet moment is no partition: a lossy link does that too.
        let windows = c.1 - c.0 + 1;
        if (c.3.len() >= PARTITION_MIN_LOST && windows >= PARTITION_MIN_WINDOWS) || (c.3.len() >= PARTITION_BUSY_LOST && windows >= 2) {
            out.push(partition_anomaly(trace, c));
        }
    };
    let loss_times = |ev: &[EventId]| (ev.iter().map(|&e| corr(e)).min().unwrap_or(0), ev.iter().map(|&e| corr(e)).max().unwrap_or(0));
    for (w, isl, ev) in found {
        match &mut cur {
            Some((_, end, ci, cev))
                if *ci == isl && w - *end <= PARTITION_MAX_GAP && !crosses(loss_times(cev).1, loss_times(&ev).0, ci) =>
            {
                *end = w;
                cev.extend(ev);
            }
            _ => {
                if let Some(c) = cur.take() {
                    close(c, &mut out);
                }
                cur = Some((w, w, isl, ev));
            }
        }
    }
    if let Some(c) = cur {
        close(c, &mut out);
    }
    out
}

fn partition_anomaly(trace: &Trace, (w0, w1, islands, events): (i64, i64, Vec<Vec<NodeId>>, Vec<EventId>)) -> Anomaly {
    let names: Vec<String> = islands
        .iter()
        .map(|isl| format!("{{{}}}", isl.iter().map(|n| trace.nodes[*n as usize].name.as_str()).collect::<Vec<_>>().join(", ")))
        .collect();
    let from = w0 * PARTITION_WINDOW_NS;
    let to = (w1 + 1) * PARTITION_WINDOW_NS;
    let mut a = Anomaly::new(
        Kind::Partition,
        events,
        format!(
            "partition into {} islands {} from {} to {} ({} ms): messages between them were lost",
            islands.len(),
            names.join(" | "),
            super::fmt::fmt_time(from),
            super::fmt::fmt_time(to),
            (to - from) / 1_000_000
        ),
    );
    a.islands = islands;
    a.span = Some((from, to));
    a
}

#[cfg(test)]
mod tests {
    use super::super::matching::{MatchIndex, match_messages, resolve_by_time};
    use super::super::testkit::{Ev, SameClock, addr, after_lost, dropped, recv, send, trace, trace_in, udp};
    use super::*;

    const MS: i64 = 1_000_000;

    fn anomalies(t: &Trace) -> Vec<Anomaly> {
        let index = MatchIndex::new(t);
        let mut m = match_messages(t, &index);
        resolve_by_time(&mut m, t, &index, &SameClock);
        let describe = |id: EventId| format!("event {id}");
        find(&Context {
            trace: t,
            matching: &m,
            clocks: &SameClock,
            describe: &describe,
            missing_nodes: &["n9".to_string()],
            identity: &|_| None,
        })
    }

    fn of(found: &[Anomaly], kind: Kind) -> Vec<&Anomaly> {
        found.iter().filter(|a| a.kind == kind).collect()
    }

    /// A cluster's traffic: each (time, from, to, delivered) is a datagram, received
    /// 100 µs later when delivered.
    fn traffic(nodes: usize, msgs: &[(i64, u8, u8, bool)]) -> Vec<Vec<Ev>> {
        let mut out: Vec<Vec<Ev>> = (0..nodes).map(|_| Vec::new()).collect();
        for (i, &(t, from, to, delivered)) in msgs.iter().enumerate() {
            let p = || udp(addr(from), addr(to), i as u16, format!("HB{i}").as_bytes());
            out[from as usize].push(send(t, p()));
            if delivered {
                out[to as usize].push(recv(t + MS / 10, p()));
            }
        }
        out
    }

    #[test]
    fn a_send_the_recording_receiver_never_saw_is_a_network_loss_and_only_then() {
        let t = trace(traffic(
            2,
            &[
                (1000 * MS, 0, 1, true),
                (1500 * MS, 1, 0, true),    // n2 sends from its address: wgo learns it is n2's
                (2000 * MS, 0, 1, false),   // lost while n2 recorded
                (10_500 * MS, 0, 1, false), // after n2's recording ended: nobody can tell
            ],
        ));
        let found = anomalies(&t);
        let losses = of(&found, Kind::NetworkLoss);
        assert_eq!(losses.len(), 1, "{found:?}");
        assert_eq!(losses[0].events.as_slice(), &[2], "n1's send at 2 s (n1's events: send, recv, send, send)");
        assert_eq!(losses[0].nodes.as_slice(), &[0, 1]);
        assert_eq!(of(&found, Kind::MissingNode)[0].text, "n9 never answered the trigger: no dump from it");
    }

    #[test]
    fn a_loss_inside_a_recorder_gap_is_recorder_loss_not_network_loss() {
        let mut nodes = traffic(2, &[(1000 * MS, 0, 1, true), (2000 * MS, 0, 1, false), (3000 * MS, 1, 0, true)]);
        // n2 lost 3 records between its receive at 1 s and its send at 3 s.
        let last = nodes[1].pop().unwrap();
        nodes[1].push(after_lost(last, 3));
        let t = trace(nodes);
        let found = anomalies(&t);
        assert!(of(&found, Kind::NetworkLoss).is_empty(), "{found:?}");
        let rec = of(&found, Kind::RecorderLoss);
        assert_eq!(rec.len(), 1);
        assert!(rec[0].text.contains("n2's recorder lost 3 records on cpu 0"), "{}", rec[0].text);
    }

    /// n1 and n2 keep talking, as do n3 and n4, while everything between the pairs is lost.
    fn split(at: i64) -> Vec<(i64, u8, u8, bool)> {
        vec![
            (at, 0, 1, true),
            (at + MS, 1, 0, true),
            (at + 2 * MS, 2, 3, true),
            (at + 3 * MS, 3, 2, true),
            (at + 4 * MS, 0, 2, false),
            (at + 5 * MS, 3, 1, false),
        ]
    }

    #[test]
    fn partitions_are_merged_across_a_quiet_window_and_kept_apart_after_a_long_one() {
        let w = PARTITION_WINDOW_NS;
        let mut msgs = Vec::new();
        // Healthy first: everyone reaches everyone.
        for (k, (a, b)) in [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)].into_iter().enumerate() {
            msgs.push((w / 2 + k as i64 * MS, a, b, true));
        }
        // Split in windows 4 and 6 to 9, nothing in window 5; healthy again in window 12;
        // split again in windows 20 to 25.
        for k in [4, 6, 7, 8, 9] {
            msgs.extend(split(k * w + 10 * MS));
        }
        for (k, (a, b)) in [(0, 2), (1, 3)].into_iter().enumerate() {
            msgs.push((12 * w + k as i64 * MS, a, b, true));
        }
        for k in 20..26 {
            msgs.extend(split(k * w + 10 * MS));
        }
        let t = trace(traffic(4, &msgs));
        let found = anomalies(&t);
        let parts = of(&found, Kind::Partition);
        assert_eq!(parts.len(), 2, "{parts:?}");
        assert_eq!(parts[0].islands, vec![vec![0, 1], vec![2, 3]]);
        assert_eq!(parts[0].span, Some((4 * w, 10 * w)), "windows 4 to 9, the quiet one included");
        assert_eq!(parts[0].events.len(), 10, "the crossing losses of every window");
        assert!(
            parts[0].text.starts_with("partition into 2 islands {n1, n2} | {n3, n4} from 00:00:01.000000 to 00:00:02.500000"),
            "{}",
            parts[0].text
        );
        assert_eq!(parts[1].span, Some((20 * w, 26 * w)));
        assert_eq!(of(&found, Kind::NetworkLoss).len(), 22, "each lost message is also a loss");
    }

    #[test]
    fn a_partition_is_one_claim_across_quiet_windows_and_a_lone_loss_is_none() {
        let w = PARTITION_WINDOW_NS;
        // n1 ↔ n2 talk all along; n3 asks n1 once a second (a client that waits for its
        // timeout): cut off from 2 s to 5 s, its requests are lost one per second.
        let mut msgs = Vec::new();
        for k in 0..32 {
            msgs.push((k * w, 0, 1, true));
            msgs.push((k * w + MS, 1, 0, true));
        }
        for s in 0..8 {
            let t = s * 1000 * MS + 100 * MS;
            let cut = (2000 * MS..5000 * MS).contains(&t);
            msgs.push((t, 2, 0, !cut));
            if !cut {
                msgs.push((t + MS, 0, 2, true));
            }
        }
        let found = anomalies(&trace(traffic(3, &msgs)));
        let parts = of(&found, Kind::Partition);
        assert_eq!(parts.len(), 1, "one claim: {parts:?}");
        assert_eq!(parts[0].islands, vec![vec![0, 1], vec![2]]);
        assert_eq!(parts[0].span, Some((8 * w, 17 * w)));
        // A lossy link: one request lost now and then, answered ones between. No partition.
        let mut msgs: Vec<(i64, u8, u8, bool)> = (0..32).flat_map(|k| [(k * w, 0, 1, true), (k * w + MS, 1, 0, true)]).collect();
        for s in 0..8 {
            let t = s * 1000 * MS + 100 * MS;
            let lost = s % 2 == 1;
            msgs.push((t, 2, 0, !lost));
            if !lost {
                msgs.push((t + MS, 0, 2, true));
            }
        }
        let found = anomalies(&trace(traffic(3, &msgs)));
        assert!(of(&found, Kind::Partition).is_empty(), "{found:?}");
    }

    #[test]
    fn the_same_payload_again_is_a_retransmission_and_five_in_a_second_a_storm() {
        let p = |id: u16| udp(addr(0), addr(1), id, b"TASK7");
        let mut n1: Vec<Ev> = (0..6).map(|i| send(1000 * MS + i * 100 * MS, p(i as u16))).collect();
        n1.push(send(9000 * MS, p(99))); // 5.5 s after the last: a new run, alone
        let n2 = vec![recv(1600 * MS, p(5))];
        let found = anomalies(&trace(vec![n1, n2]));
        let retx = of(&found, Kind::Retransmission);
        assert_eq!(retx.len(), 1, "{found:?}");
        assert_eq!(retx[0].events.as_slice(), &[0, 1, 2, 3, 4, 5]);
        assert_eq!(retx[0].text, "event 0 was sent 6 times (retransmissions)");
        let storms = of(&found, Kind::RetryStorm);
        assert_eq!(storms.len(), 1);
        assert!(storms[0].text.contains("at least 5 within 1000 ms"), "{}", storms[0].text);
    }

    #[test]
    fn messages_that_only_start_alike_are_no_retransmission() {
        // Two heartbeats sharing their first 16 bytes, then a resend of the second.
        let hb = |id: u16, n: u8| udp(addr(0), addr(1), id, &[b"HEARTBEAT-HEADER".as_slice(), &[n; 8]].concat());
        let n1 = vec![send(1000 * MS, hb(1, 1)), send(1100 * MS, hb(2, 2)), send(1200 * MS, hb(3, 2))];
        let n2 = vec![recv(1000 * MS + MS / 10, hb(1, 1)), recv(1200 * MS + MS / 10, hb(3, 2))];
        let found = anomalies(&trace(vec![n1, n2]));
        let retx = of(&found, Kind::Retransmission);
        assert_eq!(retx.len(), 1, "{found:?}");
        assert_eq!(retx[0].events.as_slice(), &[1, 2], "only the resend of the second");
    }

    #[test]
    fn retries_that_change_a_sequence_field_are_one_request_by_its_identity() {
        // TASK #7 sent three times, each with a new sequence number in bytes 8..12.
        let task = |id: u16, seq: u8| udp(addr(0), addr(1), id, &[b"TASK".as_slice(), &[0, 0, 0, 7], &[0, 0, 0, seq]].concat());
        let n1 = vec![send(1000 * MS, task(1, 1)), send(1150 * MS, task(2, 2)), send(1300 * MS, task(3, 3))];
        let n2 = vec![recv(1300 * MS + MS / 10, task(3, 3))];
        let t = trace(vec![n1, n2]);
        let index = MatchIndex::new(&t);
        let mut m = match_messages(&t, &index);
        resolve_by_time(&mut m, &t, &index, &SameClock);
        let describe = |id: EventId| format!("event {id}");
        let run = |identity: &dyn Fn(EventId) -> Option<u64>| {
            find(&Context { trace: &t, matching: &m, clocks: &SameClock, describe: &describe, missing_nodes: &[], identity })
        };
        assert!(of(&run(&|_| None), Kind::Retransmission).is_empty(), "different bytes: no resend without a spec");
        // The spec's identity is the task number (bytes 4..8).
        let by_task = |id: EventId| {
            let p = t.payload(&t.events[id as usize]);
            Some(u64::from(u32::from_be_bytes(p[4..8].try_into().unwrap())))
        };
        let found = run(&by_task);
        let retx = of(&found, Kind::Retransmission);
        assert_eq!(retx.len(), 1, "{found:?}");
        assert_eq!(retx[0].events.as_slice(), &[0, 1, 2]);
    }

    /// Found by fuzzing: damaged sequence numbers made the lost-record count overflow.
    #[test]
    fn huge_sequence_gaps_are_counted_without_overflow() {
        use super::super::trace::{NodeInfo, RawPacket, TraceBuilder};
        let mut b = TraceBuilder::default();
        b.begin_node(NodeInfo { name: "n1".into(), kernel_drops: u64::MAX, ..NodeInfo::default() }).unwrap();
        let p = udp(addr(0), addr(1), 1, b"x");
        // Two CPUs, each with a gap of nearly the whole sequence range.
        for (i, (cpu, seq)) in [(0, 0), (0, u64::MAX - 1), (1, 0), (1, u64::MAX - 1)].into_iter().enumerate() {
            b.packet(&RawPacket {
                t_raw: i as i64 * MS,
                seq: Some(seq),
                cpu,
                dir: Some(Dir::Send),
                orig_len: p.len() as u32,
                data: &p,
                drop: None,
            });
        }
        b.end_node();
        let found = anomalies(&b.finish());
        let rec = of(&found, Kind::RecorderLoss);
        assert_eq!(rec.len(), 2, "two gaps, and no kernel drops beyond them: {rec:?}");
        assert!(rec.iter().all(|a| a.text.contains(&format!("lost {} records", u64::MAX - 2))), "{rec:?}");
    }

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

    /// n1 ↔ n2 every 50 ms; n1 ↔ n3 every 50 ms, except for what `n3_sends` and `to_n3` say.
    fn with_n3(n3_sends: impl Fn(i64) -> bool, to_n3: impl Fn(i64) -> Option<bool>, quiet_n4: bool) -> Vec<(i64, u8, u8, bool)> {
        let mut msgs = Vec::new();
        for k in 0..80 {
            let t = 100 * MS + k * 50 * MS;
            msgs.push((t, 0, 1, true));
            msgs.push((t + MS, 1, 0, true));
            if let Some(delivered) = to_n3(t) {
                msgs.push((t + 2 * MS, 0, 2, delivered));
            }
            if n3_sends(t) {
                msgs.push((t + 3 * MS, 2, 0, true));
            }
            if quiet_n4 {
                msgs.push((t + 4 * MS, 1, 3, true));
                if k % 20 == 0 {
                    msgs.push((t + 5 * MS, 3, 1, true));
                }
            }
        }
        msgs
    }

    #[test]
    fn a_node_silent_while_its_peers_send_to_it_is_stalled_and_a_quiet_one_is_not() {
        let ms = |t: i64| t / MS;
        // n3 stops from 1 s to 2.2 s (SIGSTOP): its kernel still takes what n1 sends it.
        let stopped = trace(traffic(4, &with_n3(|t| !(1000 * MS..2200 * MS).contains(&t), |_| Some(true), true)));
        let found = anomalies(&stopped);
        let stalls = of(&found, Kind::StalledNode);
        assert_eq!(stalls.len(), 1, "{found:?}");
        assert_eq!(stalls[0].nodes.as_slice(), &[2]);
        let (from, to) = stalls[0].span.unwrap();
        assert!((950..1000).contains(&ms(from)) && (2200..2250).contains(&ms(to)), "{from}..{to}");
        assert!(stalls[0].text.starts_with("n3 stalled: it sent nothing from"), "{}", stalls[0].text);
        assert!(stalls[0].text.contains("though it received 23 messages from its peers meanwhile"), "{}", stalls[0].text);
        // n4 speaks once a second though n2 talks to it all the time: that is its cadence, not a stall.
        assert!(stalls.iter().all(|s| s.nodes[0] != 3));
        assert!(of(&found, Kind::Partition).is_empty());
    }

    #[test]
    fn a_crashed_node_is_stalled_to_the_end_and_no_partition() {
        // n3 dies at 2 s: it sends nothing more and everything sent to it is lost, while
        // its (still running) recorder goes on to the end.
        // Its recording ends with the others' (the agent keeps recording after the crash).
        let t = trace(traffic(4, &with_n3(|t| t < 2000 * MS, |t| Some(t < 2000 * MS), false)));
        let found = anomalies(&t);
        let stalls = of(&found, Kind::StalledNode);
        assert_eq!(stalls.len(), 1, "{found:?}");
        assert!(
            stalls[0].text.contains("to the end of its recording") && stalls[0].text.contains("none of which it received"),
            "{}",
            stalls[0].text
        );
        assert!(of(&found, Kind::Partition).is_empty(), "a dead node is no island: {:?}", of(&found, Kind::Partition));
    }

    #[test]
    fn data_sent_to_a_closed_connection_is_no_network_loss() {
        use super::super::testkit::{tcp, tcp_ev, tcp_segment};
        let (a, b) = (addr(0), addr(1));
        let data = |seq| tcp(a, b, seq, 100);
        let fin = || tcp_segment(b, a, (8000, 40000), 1, 0, 0x11);
        let rst = || tcp_segment(b, a, (8000, 40000), 1, 0, 0x14);
        let t = trace(vec![
            vec![
                tcp_ev(1000 * MS, Dir::Send, data(1)),
                tcp_ev(1501 * MS, Dir::Recv, fin()),
                tcp_ev(2000 * MS, Dir::Send, data(101)),
                tcp_ev(2001 * MS, Dir::Recv, rst()),
            ],
            vec![tcp_ev(1001 * MS, Dir::Recv, data(1)), tcp_ev(1500 * MS, Dir::Send, fin())],
        ]);
        let found = anomalies(&t);
        assert!(of(&found, Kind::NetworkLoss).is_empty(), "{found:?}");
        let closed = of(&found, Kind::ClosedConnection);
        assert_eq!(closed.len(), 1, "{found:?}");
        assert!(
            closed[0].text.starts_with("n1 sent 1 TCP segment(s) on 10.0.0.1:40000 → 10.0.0.2:8000 after n2 had closed"),
            "{}",
            closed[0].text
        );
        // Without the close, the same segment is a network loss.
        let t = trace(vec![
            vec![tcp_ev(1000 * MS, Dir::Send, data(1)), tcp_ev(2000 * MS, Dir::Send, data(101))],
            vec![tcp_ev(1001 * MS, Dir::Recv, data(1)), tcp_ev(1500 * MS, Dir::Send, tcp_segment(b, a, (8000, 40000), 1, 0, 0x10))],
        ]);
        assert_eq!(of(&anomalies(&t), Kind::NetworkLoss).len(), 1);
    }

    /// Clocks that could not be estimated (assumed NTP-aligned).
    struct Unknown;
    impl TimeMap for Unknown {
        fn corrected(&self, _: NodeId, t_raw: i64) -> i64 {
            t_raw
        }
        fn uncertainty(&self, _: NodeId) -> i64 {
            0
        }
        fn known(&self, _: NodeId) -> bool {
            false
        }
    }

    #[test]
    fn one_way_traffic_to_a_node_that_never_sends_is_judged_with_an_ntp_margin() {
        // n1 sends 40 datagrams to n2 over 4 s; n2 takes only the first 10 and never sends.
        let msgs: Vec<(i64, u8, u8, bool)> = (0..40).map(|k| (1000 * MS + k * 100 * MS, 0, 1, k < 10)).collect();
        let t = trace_in(traffic(2, &msgs), (0, 4950 * MS));
        let index = MatchIndex::new(&t);
        let mut m = match_messages(&t, &index);
        resolve_by_time(&mut m, &t, &index, &Unknown);
        let describe = |id: EventId| format!("event {id}");
        let found =
            find(&Context { trace: &t, matching: &m, clocks: &Unknown, describe: &describe, missing_nodes: &[], identity: &|_| None });
        let losses = of(&found, Kind::NetworkLoss);
        // Sends 10..=39 at 2.0 to 4.9 s, minus those within 250 ms (+20 ms) of the end at 4.95 s.
        assert_eq!(losses.len(), 27, "{found:?}");
        assert!(losses.iter().all(|l| l.nodes.as_slice() == [0, 1]));
    }

    /// Four datagrams n1 → n2, each dying its own way, and one inbound from nobody recorded.
    #[test]
    fn each_loss_gets_its_cause_from_the_kernels_drop_records() {
        let p = |id: u16, port: u16| crate::packet::tests::udp4(addr(0), addr(1), 40000, port, id, b"payload");
        let s = 1_000_000_000;
        let mut n1 = Vec::new();
        let mut n2 = Vec::new();
        // Keep both clocks' recordings wide and busy: n2 answers every ping.
        for k in 0..20i64 {
            n1.push(send(k * 100 * MS, udp(addr(0), addr(1), 1000 + k as u16, b"ping")));
            n2.push(recv(k * 100 * MS + 100_000, udp(addr(0), addr(1), 1000 + k as u16, b"ping")));
        }
        // n2's firewall: the send arrives as a drop record only.
        n1.push(send(s, p(1, 7201)));
        n2.push(dropped(recv(s + 100_000, p(1, 7201)), "netfilter_drop"));
        // n1's firewall: the send exists only as a drop record.
        n1.push(dropped(send(s + 10 * MS, p(2, 7202)), "netfilter_drop"));
        // n2's full buffer: recorded arriving, then dropped.
        n1.push(send(s + 20 * MS, p(3, 7203)));
        n2.push(recv(s + 20 * MS + 100_000, p(3, 7203)));
        n2.push(dropped(recv(s + 20 * MS + 110_000, p(3, 7203)), "socket_rcvbuff"));
        // The network, to the port n2's app uses.
        n1.push(send(s + 30 * MS, p(4, 7000)));
        // Someone unrecorded, to a closed port.
        n2.push(dropped(recv(s + 40 * MS, crate::packet::tests::udp4([10, 0, 0, 9], addr(1), 5, 9, 5, b"x")), "no_socket"));
        let t = trace(vec![n1, n2]);
        assert_eq!(t.drops.len(), 4);
        assert_eq!(t.drops.iter().filter(|d| d.stands_for_send).count(), 1, "n1's stopped send is a send in the trace");
        let found = anomalies(&t);
        let reason = |a: &Anomaly| a.cause.and_then(|c| c.reason).map(|r| t.drop_reasons[r as usize].as_str());
        let mut losses: Vec<(u16, CauseKind, Option<&str>)> = of(&found, Kind::NetworkLoss)
            .iter()
            .map(|a| (t.events[a.events[0] as usize].dport, a.cause.unwrap().kind, reason(a)))
            .collect();
        losses.sort();
        assert_eq!(
            losses,
            vec![
                (7000, CauseKind::Network, None),
                (7201, CauseKind::ReceiverKernel, Some("netfilter_drop")),
                (7202, CauseKind::SenderKernel, Some("netfilter_drop")),
                (7203, CauseKind::ReceiverKernel, Some("socket_rcvbuff")),
            ]
        );
        let kd = of(&found, Kind::KernelDrop);
        assert_eq!(kd.len(), 1, "{kd:?}");
        assert_eq!((kd[0].nodes.as_slice(), reason(kd[0])), (&[1u16][..], Some("no_socket")));
        assert!(of(&found, Kind::RecorderLoss).is_empty(), "drop records fill no sequence gap: {found:?}");
    }

    /// Replies to a client on a recorded node's address that runs outside the recorded
    /// cgroup: the recording never sees its port, so what it does not get is not judged.
    #[test]
    fn sends_to_a_port_the_receivers_app_never_used_are_not_judged() {
        let mut n1 = Vec::new();
        let mut n2 = Vec::new();
        for k in 0..20i64 {
            let p = || udp(addr(0), addr(1), k as u16, b"ping");
            n1.push(send(k * 100 * MS, p()));
            n2.push(recv(k * 100 * MS + 100_000, p()));
            // n2 answers an unrecorded client on n1's address, port 40000: never recorded there.
            n2.push(send(k * 100 * MS + 200_000, crate::packet::tests::udp4(addr(1), addr(0), 7000, 40000, 500 + k as u16, b"reply")));
        }
        // One ping to n2's port that is lost: judged, n2's app uses port 7000.
        n1.push(send(2500 * MS, udp(addr(0), addr(1), 99, b"ping")));
        let t = trace(vec![n1, n2]);
        let losses = of(&anomalies(&t), Kind::NetworkLoss).len();
        assert_eq!(losses, 1, "only the ping to the app's port is a loss");
    }
}
