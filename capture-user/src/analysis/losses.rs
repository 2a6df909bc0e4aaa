//! Lost messages: sends a recording receiver never saw (network or a kernel's drop, never
//! confused with the recorder's own gaps), TCP data that only a later copy delivered, and
//! data sent into a closed connection (no loss). Each loss gets its cause.

use std::collections::{BTreeMap, HashMap};

use rustc_hash::{FxHashMap, FxHashSet};

use super::anomalies::{Anomaly, Cause, CauseKind, Context, Facts, Kind, NodeList};
use super::kernel_drops::DropIndex;
use super::matching::{TimeMap, address_owners, is_group_address};
use super::trace::{AddrId, Dir, EventId, NodeId, ProtoCode, Trace};

/// A receiver must have kept recording this long after a send for its absence to be judged.
pub const JUDGE_MARGIN_NS: i64 = 20_000_000;
/// Longest one-way delay assumed: a send this close before a recorder gap on its
/// receiver may have arrived inside the gap, so its absence is not called network loss.
pub const MAX_DELAY_NS: i64 = 100_000_000;
/// How far a clock that could not be estimated may be off (NTP on a bad day): a send is
/// judged lost only if it lies this far inside the receiver's recording.
pub const NTP_MARGIN_NS: i64 = 250_000_000;
/// A peer's RST this soon after a TCP send answers it: the data reached a closed socket.
pub const RST_ANSWER_NS: i64 = 1_000_000_000;

const SYN: u8 = 0x02;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;

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

/// What the loss detector found.
pub struct Losses {
    /// (send, receiver, cause), sorted by send and receiver, one each.
    pub lost: Vec<(EventId, NodeId, Cause)>,
    /// Per kernel drop record: whether a lost message explains it.
    pub explained: Vec<bool>,
}

/// One recorder-loss anomaly per gap, and one per node whose kernel ring dropped more
/// than its gaps show.
pub fn recorder_losses(ctx: &Context<'_>, gaps: &[RecorderGap], out: &mut Vec<Anomaly>) {
    for g in gaps {
        let mut a = Anomaly::with_facts(Kind::RecorderLoss, vec![g.events.0, g.events.1], Facts::RecorderGap { lost: g.lost, cpu: g.cpu });
        a.nodes = NodeList::from_slice(&[g.node]);
        a.span = Some((g.from, g.to));
        out.push(a);
    }
    for (n, info) in ctx.trace.nodes.iter().enumerate() {
        // Saturating: sequence numbers come from the dump, which may be damaged.
        let in_gaps: u64 = gaps.iter().filter(|g| g.node == n as NodeId).fold(0, |sum, g| sum.saturating_add(g.lost));
        if info.kernel_drops > in_gaps {
            let facts = Facts::RingDrops { count: info.kernel_drops - in_gaps, besides_gaps: in_gaps > 0 };
            let mut a = Anomaly::with_facts(Kind::RecorderLoss, Vec::new(), facts);
            a.nodes = NodeList::from_slice(&[n as NodeId]);
            out.push(a);
        }
    }
}

/// The times a node's recording can judge a receive: from its first record (a ring that
/// wrapped overwrote what came before: nothing is known of it) to the end of its recording
/// (what it did not get then, it did not get), reference clock.
fn judged_window(trace: &Trace, clocks: &dyn TimeMap, node: NodeId) -> (i64, i64) {
    let w = trace.nodes[node as usize].window;
    let range = trace.node_ranges[node as usize].clone();
    let first = trace.events[range].iter().map(|e| e.t_raw).min().unwrap_or(w.0);
    (clocks.corrected(node, w.0.max(first)), clocks.corrected(node, w.1))
}

/// Lost messages and their causes; closed connections go to `out`.
pub fn find(ctx: &Context<'_>, gaps: &[RecorderGap], drops: &DropIndex, out: &mut Vec<Anomaly>) -> Losses {
    let trace = ctx.trace;
    let m = ctx.matching;
    let corr = |id: EventId| ctx.corr(id);
    let mut gaps_by_node: HashMap<NodeId, Vec<&RecorderGap>> = HashMap::new();
    for g in gaps {
        gaps_by_node.entry(g.node).or_default().push(g);
    }
    let blind = |node: NodeId, t: i64| {
        gaps_by_node.get(&node).is_some_and(|v| v.iter().any(|g| g.from - MAX_DELAY_NS <= t && t <= g.to + ctx.clocks.uncertainty(node)))
    };
    let windows: Vec<(i64, i64)> = (0..trace.nodes.len()).map(|n| judged_window(trace, ctx.clocks, n as NodeId)).collect();

    // Which nodes receive traffic for each group (broadcast/multicast) address and port.
    let owners = address_owners(trace);
    let group_addr: Vec<bool> = trace.addrs.iter().map(|a| is_group_address(*a)).collect();
    let mut group_receivers: FxHashMap<(u32, u16), std::collections::BTreeSet<NodeId>> = FxHashMap::default();
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

    // Sends a recording receiver never saw.
    let mut losses: Vec<(EventId, NodeId)> = Vec::new();
    let ports = LocalPorts::new(trace);
    // Unmatched sends, and group sends that some but maybe not all of their receivers got.
    let mut candidates: Vec<EventId> = m.unmatched_sends.clone();
    candidates.extend(m.messages.iter().map(|&(s, _)| s).filter(|&s| group_addr[trace.events[s as usize].dst as usize]));
    candidates.sort_unstable();
    candidates.dedup();
    for &s in &candidates {
        let e = &trace.events[s as usize];
        // Pure ACKs are not judged: nothing waits for them, and the stack sends them
        // as it likes. A SYN, FIN or RST is: after TCP backs off, connection attempts
        // are most of what a cut-off node sends.
        if e.proto == ProtoCode::Tcp && e.payload_len == 0 && e.tcp_flags & (SYN | FIN | RST) == 0 {
            continue;
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
            let (w0, w1) = windows[r as usize];
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
    losses.extend(tcp_resent_before_arrival(ctx, &blind));
    losses.sort_unstable();
    losses.dedup();
    let met_closed = closed_connections(ctx, &mut losses, out);
    // Where each lost message died: a drop record of it on the sender (going out) or on
    // the receiver (coming in) names the kernel and its reason; without one, the network.
    let mut explained = vec![false; trace.drops.len()];
    // A segment that met a closed connection is its anomaly's: the receiving kernel's
    // refusal of it (no socket any more) is that story, not a finding of its own.
    for &(s, r) in &met_closed {
        let e = &trace.events[s as usize];
        for k in drops.of(trace, e, r, Dir::Recv).into_iter().chain(drops.of(trace, e, e.node, Dir::Send)) {
            explained[k] = true;
        }
    }
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
    let mut lost: Vec<(EventId, NodeId, Cause)> = losses.iter().map(|&(s, r)| (s, r, cause_of(s, r, &mut explained))).collect();
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
                lost.push((s, re.node, Cause { kind: CauseKind::ReceiverKernel, reason: Some(trace.drops[k].reason) }));
            }
        }
    }
    lost.sort_unstable_by_key(|c| (c.0, c.1));
    lost.dedup_by_key(|c| (c.0, c.1));
    Losses { lost, explained }
}

/// TCP data whose bytes first arrived only after a later copy of them was sent: that copy
/// (or one after it) delivered them, so this one was lost. Linux merges unacknowledged
/// segments into one retransmission, which the matching credits to the originals' sends:
/// the bytes' first arrival, not the match, tells. A copy sent before the cut's heal and
/// received after it was lost during the cut.
fn tcp_resent_before_arrival(ctx: &Context<'_>, blind: &dyn Fn(NodeId, i64) -> bool) -> Vec<(EventId, NodeId)> {
    let trace = ctx.trace;
    let flow = |id: EventId| {
        let e = &trace.events[id as usize];
        (e.src, e.sport, e.dst, e.dport)
    };
    let resent: FxHashSet<Flow> = ctx
        .matching
        .retransmissions
        .iter()
        .filter(|&&(_, again)| {
            let e = &trace.events[again as usize];
            e.proto == ProtoCode::Tcp && e.payload_len > 0
        })
        .map(|&(_, again)| flow(again))
        .collect();
    if resent.is_empty() {
        return Vec::new();
    }
    // Only the flows that were resent on: their data sends and receives.
    let mut flows: FxHashMap<Flow, (Vec<EventId>, Vec<EventId>)> = FxHashMap::default();
    for (i, e) in trace.events.iter().enumerate() {
        if e.proto == ProtoCode::Tcp && e.payload_len > 0 {
            let f = (e.src, e.sport, e.dst, e.dport);
            if resent.contains(&f) {
                let v = flows.entry(f).or_default();
                if e.dir == Dir::Send { v.0.push(i as EventId) } else { v.1.push(i as EventId) }
            }
        }
    }
    let mut out = Vec::new();
    for (_, (mut sends, mut recvs)) in flows {
        let Some(&r0) = recvs.first() else { continue };
        let receiver = trace.events[r0 as usize].node;
        sends.sort_by_key(|&s| ctx.corr(s));
        recvs.sort_by_key(|&r| ctx.corr(r));
        let isn = trace.events[sends[0] as usize].tcp_seq;
        let range = |id: EventId| {
            let e = &trace.events[id as usize];
            let a = e.tcp_seq.wrapping_sub(isn) as i32 as i64;
            (a, a + e.payload_len as i64)
        };
        // When each byte first arrived: disjoint [start, end) -> time.
        let mut first: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
        for &r in &recvs {
            let (mut a, b) = range(r);
            let t = ctx.corr(r);
            let covered: Vec<(i64, i64)> = first.range(..b).rev().take_while(|(_, (end, _))| *end > a).map(|(k, v)| (*k, v.0)).collect();
            for (start, end) in covered.into_iter().rev() {
                if start > a {
                    first.insert(a, (start, t));
                }
                a = a.max(end);
            }
            if a < b {
                first.insert(a, (b, t));
            }
        }
        // When all of a send's bytes had arrived (None: some never did).
        let arrived = |(a, b): (i64, i64)| {
            let mut at = a;
            let mut latest = i64::MIN;
            for (&start, &(end, t)) in first.range(..b).rev().take_while(|(_, (end, _))| *end > a).collect::<Vec<_>>().into_iter().rev() {
                if start > at {
                    return None;
                }
                at = at.max(end);
                latest = latest.max(t);
            }
            (at >= b).then_some(latest)
        };
        // The sends by start, to find each one's later copies.
        let mut by_start: Vec<(i64, i64, i64, EventId)> = sends.iter().map(|&s| (range(s).0, range(s).1, ctx.corr(s), s)).collect();
        by_start.sort_unstable();
        let longest = by_start.iter().map(|x| x.1 - x.0).max().unwrap_or(0);
        for &(a, b, t, s) in &by_start {
            let Some(done) = arrived((a, b)) else { continue };
            let from = by_start.partition_point(|x| x.0 < a - longest);
            let resent_before = by_start[from..].iter().take_while(|x| x.0 < b).any(|x| x.1 > a && x.2 > t && x.2 < done);
            if resent_before && !blind(receiver, t) {
                out.push((s, receiver));
            }
        }
    }
    out
}

/// TCP data that met a closed connection is no network loss: the peer had sent its FIN
/// or RST before, or answers it with a RST (its socket is gone). Those leave `losses` and
/// become one closed-connection anomaly per flow; returns them, (send, receiver).
fn closed_connections(ctx: &Context<'_>, losses: &mut Vec<(EventId, NodeId)>, out: &mut Vec<Anomaly>) -> Vec<(EventId, NodeId)> {
    let trace = ctx.trace;
    let corr = |id: EventId| ctx.corr(id);
    // Only worth a pass over every event when a TCP send is in question.
    if !losses.iter().any(|&(s, _)| trace.events[s as usize].proto == ProtoCode::Tcp) {
        return Vec::new();
    }
    let closes = tcp_closes(trace, &corr);
    let closed_by = |s: EventId| {
        let e = &trace.events[s as usize];
        if e.proto != ProtoCode::Tcp || e.tcp_flags & (RST | FIN) != 0 {
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
    let mut met = Vec::new();
    for (_, (sends, r, how)) in closed {
        let e = &trace.events[sends[0] as usize];
        met.extend(sends.iter().map(|&s| (s, r)));
        let mut a = Anomaly::with_facts(Kind::ClosedConnection, sends.clone(), Facts::Closed { how });
        a.nodes = NodeList::from_slice(&[e.node, r]);
        a.span = Some((corr(sends[0]), corr(*sends.last().expect("non-empty"))));
        out.push(a);
    }
    met
}

/// One direction of a flow: source address and port, destination address and port.
type Flow = (AddrId, u16, AddrId, u16);

/// TCP FINs and RSTs per flow, as sent by their sender (source addr, port, dest addr,
/// port): (corrected time, is RST), in time order. Seen from either end: the closing node's
/// send, or its peer's receive.
fn tcp_closes(trace: &Trace, corr: &dyn Fn(EventId) -> i64) -> FxHashMap<Flow, Vec<(i64, bool)>> {
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

#[cfg(test)]
mod tests {
    use super::super::anomalies::Context;
    use super::super::detect::find;
    use super::super::matching::{MatchIndex, match_messages, resolve_by_time};
    use super::super::testkit::*;
    use super::super::trace::{Dir, EventId};
    use super::*;

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
    fn data_sent_to_a_closed_connection_is_no_network_loss() {
        use super::super::testkit::{tcp, tcp_ev, tcp_segment};
        let (a, b) = (addr(0), addr(1));
        let data = |seq| tcp(a, b, seq, 100);
        let fin = || tcp_segment(b, a, (8000, 40000), 1, 0, 0x11);
        let rst = || tcp_segment(b, a, (8000, 40000), 1, 0, 0x14);
        // n1 sends after n2's FIN, and n2 answers with a RST.
        let sender = || {
            vec![
                tcp_ev(1000 * MS, Dir::Send, data(1)),
                tcp_ev(1501 * MS, Dir::Recv, fin()),
                tcp_ev(2000 * MS, Dir::Send, data(101)),
                tcp_ev(2001 * MS, Dir::Recv, rst()),
            ]
        };
        let t = trace(vec![sender(), vec![tcp_ev(1001 * MS, Dir::Recv, data(1)), tcp_ev(1500 * MS, Dir::Send, fin())]]);
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
        // The receiver's kernel refusing that segment (its socket gone) is the closed
        // connection's story, not a kernel drop of its own (HAProxy's healthy run).
        let t = trace(vec![
            sender(),
            vec![
                tcp_ev(1001 * MS, Dir::Recv, data(1)),
                tcp_ev(1500 * MS, Dir::Send, fin()),
                dropped(tcp_ev(2000 * MS + 100_000, Dir::Recv, data(101)), "no_socket"),
            ],
        ]);
        let found = anomalies(&t);
        assert_eq!(of(&found, Kind::ClosedConnection).len(), 1, "{found:?}");
        assert!(of(&found, Kind::KernelDrop).is_empty(), "{found:?}");
    }

    #[test]
    fn one_way_traffic_to_a_node_that_never_sends_is_judged_with_an_ntp_margin() {
        // n1 sends 40 datagrams to n2 over 4 s; n2 takes only the first 10 and never sends.
        let msgs: Vec<(i64, u8, u8, bool)> = (0..40).map(|k| (1000 * MS + k * 100 * MS, 0, 1, k < 10)).collect();
        let t = trace_in(traffic(2, &msgs), (0, 4950 * MS));
        let index = MatchIndex::new(&t);
        let mut m = match_messages(&t, &index);
        resolve_by_time(&mut m, &t, &index, &Unknown);
        let found = find(&Context { trace: &t, matching: &m, clocks: &Unknown, missing_nodes: &[], identity: &|_| None });
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

    /// A TCP segment with IP id `id` (each segment has its own, as Linux sends them).
    fn with_id((mut ip, len): (Vec<u8>, u32), id: u16) -> (Vec<u8>, u32) {
        ip[4..6].copy_from_slice(&id.to_be_bytes());
        (ip, len)
    }

    #[test]
    fn a_send_before_the_receivers_first_record_is_not_judged() {
        // n2's ring wrapped: its recording says it began at 0, but its first record left is
        // at 1 s. What n1 sent it before then is not known to be lost.
        let msgs: Vec<(i64, u8, u8, bool)> =
            (0..30).flat_map(|k| [(k * 100 * MS, 0, 1, k >= 10), (k * 100 * MS + MS, 1, 0, k >= 10)]).collect();
        let mut nodes = traffic(2, &msgs);
        // n2's sends before 1 s were overwritten too; n1 still has its receipts of them.
        nodes[1].retain(|e| e.t >= 1000 * MS);
        let t = trace(nodes);
        let found = anomalies(&t);
        let lost: Vec<_> = of(&found, Kind::NetworkLoss).into_iter().filter(|a| a.nodes.as_slice() == [0, 1]).collect();
        assert!(lost.is_empty(), "{lost:?}");
    }

    #[test]
    fn tcp_bytes_that_first_arrive_in_a_merged_retransmission_were_lost_each_time_before() {
        let (a, b) = (addr(0), addr(1));
        let t = trace(vec![
            vec![
                tcp_ev(1000 * MS, Dir::Send, with_id(tcp(a, b, 1, 100), 1)),
                tcp_ev(2000 * MS, Dir::Send, with_id(tcp(a, b, 101, 100), 2)), // lost in the cut
                tcp_ev(2010 * MS, Dir::Send, with_id(tcp(a, b, 201, 100), 3)), // lost in the cut
                tcp_ev(2500 * MS, Dir::Send, with_id(tcp(a, b, 101, 200), 4)), // both again, merged
            ],
            vec![
                tcp_ev(1000 * MS + MS / 10, Dir::Recv, with_id(tcp(a, b, 1, 100), 1)),
                tcp_ev(2500 * MS + MS / 10, Dir::Recv, with_id(tcp(a, b, 101, 200), 4)),
            ],
        ]);
        let lost: Vec<EventId> = of(&anomalies(&t), Kind::NetworkLoss).iter().map(|a| a.events[0]).collect();
        assert_eq!(lost, vec![1, 2], "both originals, though the matching credits the second with the merged copy");
    }

    #[test]
    fn a_syn_is_judged_and_a_headers_only_firewall_drop_is_its_segments_one_loss() {
        let (a, b) = (addr(0), addr(1));
        let data = |seq, id| with_id(tcp(a, b, seq, 100), id);
        // The second segment reaches n2 as a firewall's drop record of its headers only.
        let (ip, len) = data(101, 2);
        let headers = (ip[..40].to_vec(), len);
        let syn = with_id(tcp_segment(a, b, (40001, 8000), 7, 0, 0x02), 3);
        let t = trace(vec![
            vec![tcp_ev(1000 * MS, Dir::Send, data(1, 1)), tcp_ev(2000 * MS, Dir::Send, data(101, 2)), tcp_ev(3000 * MS, Dir::Send, syn)],
            vec![
                tcp_ev(1000 * MS + MS / 10, Dir::Recv, data(1, 1)),
                dropped(tcp_ev(2000 * MS + MS / 10, Dir::Recv, headers), "netfilter_drop"),
            ],
        ]);
        let found = anomalies(&t);
        assert!(of(&found, Kind::KernelDrop).is_empty(), "the drop is the segment's, counted once: {found:?}");
        let mut lost: Vec<(EventId, CauseKind)> =
            of(&found, Kind::NetworkLoss).iter().map(|a| (a.events[0], a.cause.unwrap().kind)).collect();
        lost.sort();
        assert_eq!(lost, vec![(1, CauseKind::ReceiverKernel), (2, CauseKind::Network)], "the dropped segment and the SYN");
    }
}
