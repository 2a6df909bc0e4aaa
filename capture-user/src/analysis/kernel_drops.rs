//! The kernels' drop records: finding the drop of a lost message (on its sender going out,
//! on its receiver coming in), and the drops no recorded send explains.

use rustc_hash::FxHashMap;

use super::anomalies::{Anomaly, Cause, CauseKind, Context, Facts, Kind, NodeList};
use super::matching::{TimeMap, is_group_address};
use super::trace::{AddrId, Dir, Event, NodeId, ProtoCode, Trace};

/// A packet's headers on one node, one way: (node, direction, addresses, ports, IP id).
type HeaderKey = (NodeId, Dir, AddrId, AddrId, u16, u16, u16);

/// Kernel drops by node, direction and message key, for finding the drop of a lost message.
/// Looked up for many events, and few match: the headers first, the payload's hash only
/// for those whose headers do.
pub struct DropIndex {
    /// Per header: (payload length, content hash, drop). A TCP drop record that carries its
    /// headers but none of its payload (a firewall's, often) has no hash: its headers, IP id
    /// and length already name the one segment.
    by_header: FxHashMap<HeaderKey, Vec<(u32, Option<u64>, usize)>>,
}

impl DropIndex {
    pub fn new(trace: &Trace) -> DropIndex {
        let mut by_header: FxHashMap<_, Vec<_>> = FxHashMap::default();
        for (k, d) in trace.drops.iter().enumerate() {
            let e = &d.event;
            let headers_only = e.proto == ProtoCode::Tcp && e.payload_len > 0 && trace.payload(e).is_empty();
            let hash = (!headers_only).then(|| trace.content_hash(e));
            by_header.entry(Self::header(e, e.node, e.dir)).or_default().push((e.payload_len, hash, k));
        }
        DropIndex { by_header }
    }
    fn header(e: &Event, node: NodeId, dir: Dir) -> HeaderKey {
        (node, dir, e.src, e.dst, e.sport, e.dport, e.ip_id)
    }
    /// Drops of the packet `e` on `node` going `dir`.
    pub fn of(&self, trace: &Trace, e: &Event, node: NodeId, dir: Dir) -> Vec<usize> {
        let Some(v) = self.by_header.get(&Self::header(e, node, dir)) else { return Vec::new() };
        let hash = trace.content_hash(e);
        v.iter().filter(|x| x.0 == e.payload_len && x.1.is_none_or(|h| h == hash)).map(|x| x.2).collect()
    }
}

/// Whether a refusal (nothing listened: `no_socket`) on `node` to `port` at `t_raw` came
/// while its listener was still starting: the node's recorded traffic had never used the
/// port before and uses it later. The cluster coming up, not a fault; refusals that last
/// (nothing ever listened), or come after the port was in use (a crash), are findings.
pub fn startup_refusal(trace: &Trace, clocks: &dyn TimeMap, node: NodeId, proto: ProtoCode, port: u16, at: i64) -> bool {
    let range = trace.node_ranges[node as usize].clone();
    let uses = |e: &&Event| e.proto == proto && if e.dir == Dir::Recv { e.dport == port } else { e.sport == port };
    trace.events[range].iter().find(uses).is_some_and(|e| clocks.corrected(node, e.t_raw) > at)
}

/// Drops no lost message explains (`explained`), nor any recorded receipt: inbound to a
/// closed port from someone unrecorded, say. The kernel's own traffic (neighbour discovery),
/// group sends, and TCP's own decisions (old data, out of window: duplicates it had) are its
/// business, not the cluster's.
pub fn unexplained(ctx: &Context<'_>, drops: &DropIndex, explained: &[bool], out: &mut Vec<Anomaly>) {
    let trace = ctx.trace;
    // Drops of packets the node recorded receiving (TCP's duplicates, say) are the stack's own business.
    let mut received = vec![false; trace.drops.len()];
    for e in trace.events.iter().filter(|e| e.dir == Dir::Recv && e.proto == ProtoCode::Tcp) {
        for k in drops.of(trace, e, e.node, Dir::Recv) {
            received[k] = true;
        }
    }
    for (k, d) in trace.drops.iter().enumerate() {
        let e = &d.event;
        let reason = trace.drop_reasons.get(d.reason as usize).map_or("?", String::as_str);
        if explained[k]
            || !e.proto.has_ports()
            || is_group_address(trace.addr(e.dst))
            || (e.proto == ProtoCode::Tcp && reason.starts_with("tcp_"))
            || received[k]
        {
            continue;
        }
        let mut a = Anomaly::with_facts(Kind::KernelDrop, Vec::new(), Facts::KernelDrop { drop: k });
        a.nodes = NodeList::from_slice(&[e.node]);
        if reason == "no_socket"
            && e.dir == Dir::Recv
            && startup_refusal(trace, ctx.clocks, e.node, e.proto, e.dport, ctx.clocks.corrected(e.node, e.t_raw))
        {
            a.detail_mut().startup = true;
        }
        let t = ctx.clocks.corrected(e.node, e.t_raw);
        a.span = Some((t, t));
        a.cause = Some(Cause {
            kind: if e.dir == Dir::Send { CauseKind::SenderKernel } else { CauseKind::ReceiverKernel },
            reason: Some(d.reason),
        });
        out.push(a);
    }
}
