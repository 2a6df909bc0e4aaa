//! Small hand-built traces for the analysis modules' unit tests. Node k (from 0) is
//! named `n{k+1}` and sends from 10.0.0.{k+1}; events are given per node with their
//! raw time, and get per-CPU sequence numbers on CPU 0 in time order.

use super::anomalies::{Anomaly, Context, Kind};
use super::detect::find;
use super::matching::{MatchIndex, TimeMap, match_messages, resolve_by_time};
use super::trace::{Dir, EventId, NodeId, NodeInfo, RawPacket, Trace, TraceBuilder};

/// Packets of any IP protocol, for tests of the layers after analysis too.
pub use crate::packet::tests::ip4;

/// A node's address.
pub fn addr(node: u8) -> [u8; 4] {
    [10, 0, 0, node + 1]
}

/// The broadcast address of the nodes' subnet.
pub const BROADCAST: [u8; 4] = [10, 0, 0, 255];

/// A UDP datagram from `src` to `dst` (addresses), ports 7000 → 7000.
pub fn udp(src: [u8; 4], dst: [u8; 4], ip_id: u16, payload: &[u8]) -> Vec<u8> {
    crate::packet::tests::udp4(src, dst, 7000, 7000, ip_id, payload)
}

/// A TCP segment 40000 → 8000 carrying `len` bytes from `seq`, of which the first 16
/// are captured (as a snaplen would), with PSH|ACK.
pub fn tcp(src: [u8; 4], dst: [u8; 4], seq: u32, len: u32) -> (Vec<u8>, u32) {
    tcp_segment(src, dst, (40000, 8000), seq, len, 0x18)
}

/// A TCP segment with the given ports and flags (0x01 FIN, 0x04 RST, 0x10 ACK, 0x18 PSH|ACK).
pub fn tcp_segment(src: [u8; 4], dst: [u8; 4], (sport, dport): (u16, u16), seq: u32, len: u32, flags: u8) -> (Vec<u8>, u32) {
    let total = 40 + len;
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0];
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&1u32.to_be_bytes());
    p.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    p.extend((0..len.min(16)).map(|i| (seq.wrapping_add(i) % 251) as u8));
    (p, total)
}

/// One event: raw time on its node's clock, direction, packet bytes and wire length.
pub struct Ev {
    pub t: i64,
    pub dir: Dir,
    pub ip: Vec<u8>,
    pub len: u32,
    /// Records the recorder lost just before this one (a gap in the sequence numbers).
    pub lost_before: u64,
    /// The node's kernel dropped it, for this reason.
    pub drop: Option<&'static str>,
}

/// The same event as a kernel drop record.
pub fn dropped(e: Ev, reason: &'static str) -> Ev {
    Ev { drop: Some(reason), ..e }
}

/// The same event, with `n` records lost just before it.
pub fn after_lost(e: Ev, n: u64) -> Ev {
    Ev { lost_before: n, ..e }
}

pub fn send(t: i64, ip: Vec<u8>) -> Ev {
    let len = ip.len() as u32;
    Ev { t, dir: Dir::Send, ip, len, lost_before: 0, drop: None }
}

pub fn recv(t: i64, ip: Vec<u8>) -> Ev {
    let len = ip.len() as u32;
    Ev { t, dir: Dir::Recv, ip, len, lost_before: 0, drop: None }
}

/// A TCP event (its wire length is longer than what was captured).
pub fn tcp_ev(t: i64, dir: Dir, (ip, len): (Vec<u8>, u32)) -> Ev {
    Ev { t, dir, ip, len, lost_before: 0, drop: None }
}

/// Builds a trace, one node per list; each node's recording covers `window`.
pub fn trace_in(nodes: Vec<Vec<Ev>>, window: (i64, i64)) -> Trace {
    let nodes = nodes
        .into_iter()
        .map(|mut events| {
            events.sort_by_key(|e| e.t);
            events
        })
        .collect();
    trace_as_recorded(nodes, window)
}

/// The same, each node's events in the order given (program order), whatever their times.
pub fn trace_as_recorded(nodes: Vec<Vec<Ev>>, window: (i64, i64)) -> Trace {
    let mut b = TraceBuilder::default();
    for (k, events) in nodes.into_iter().enumerate() {
        b.begin_node(NodeInfo { name: format!("n{}", k + 1), window, ..NodeInfo::default() }).unwrap();
        let mut seq = 0;
        for e in &events {
            seq += e.lost_before;
            assert!(b.packet(&RawPacket {
                t_raw: e.t,
                seq: Some(seq),
                cpu: 0,
                dir: Some(e.dir),
                orig_len: e.len,
                data: &e.ip,
                drop: e.drop
            }));
            seq += 1;
        }
        b.end_node();
    }
    b.finish()
}

/// Builds a trace whose nodes recorded from 0 to 10 s.
pub fn trace(nodes: Vec<Vec<Ev>>) -> Trace {
    trace_in(nodes, (0, 10_000_000_000))
}

/// Clocks that are all the same, known exactly.
pub struct SameClock;

impl TimeMap for SameClock {
    fn corrected(&self, _: NodeId, t_raw: i64) -> i64 {
        t_raw
    }
    fn uncertainty(&self, _: NodeId) -> i64 {
        0
    }
}

/// Node `node`'s clock reads `offset` ahead of the reference (node 0).
pub struct Offsets(pub Vec<i64>);

impl TimeMap for Offsets {
    fn corrected(&self, node: NodeId, t_raw: i64) -> i64 {
        t_raw - self.0[node as usize]
    }
    fn uncertainty(&self, _: NodeId) -> i64 {
        0
    }
}

/// Runs every detector on a trace whose clocks are all the same (missing node: n9).
pub fn anomalies(t: &Trace) -> Vec<Anomaly> {
    let index = MatchIndex::new(t);
    let mut m = match_messages(t, &index);
    resolve_by_time(&mut m, t, &index, &SameClock);
    let mut found = find(&Context { trace: t, matching: &m, clocks: &SameClock, missing_nodes: &["n9".to_string()], identity: &|_| None });
    let describe = |id: EventId| format!("event {id}");
    let spec = super::spec::Spec::default();
    let w = super::words::Words { trace: t, clocks: &SameClock, spec: &spec, matching: &m, describe: &describe };
    super::words::fill(&w, &mut found, &mut [], &mut []);
    found
}

pub use super::words::describe;

/// A violation's words, its events described by the spec (as the report says them).
pub fn violation_text(t: &Trace, spec: &super::spec::Spec, classes: &[u16], v: &super::rules::Violation) -> String {
    let m = super::matching::Matching::default();
    let describe = |id: EventId| super::words::describe(t, spec, classes, id);
    let w = super::words::Words { trace: t, clocks: &SameClock, spec, matching: &m, describe: &describe };
    super::words::violation(&w, v)
}

/// The anomalies of one kind.
pub fn of(found: &[Anomaly], kind: Kind) -> Vec<&Anomaly> {
    found.iter().filter(|a| a.kind == kind).collect()
}

pub const MS: i64 = 1_000_000;

/// A cluster's traffic: each (time, from, to, delivered) is a datagram, received
/// 100 µs later when delivered.
pub fn traffic(nodes: usize, msgs: &[(i64, u8, u8, bool)]) -> Vec<Vec<Ev>> {
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

/// Clocks that could not be estimated (assumed NTP-aligned).
pub struct Unknown;
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

/// What became of a datagram in [`traffic_fates`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Delivered,
    /// Lost in the network: no record of it on the receiver.
    Lost,
    /// Dropped by the receiver's firewall: a drop record of it coming in.
    FirewallIn,
    /// Dropped by the sender's own firewall: a drop record of it going out, and no send.
    FirewallOut,
}

/// A cluster's traffic as in [`traffic`], with each datagram's fate.
pub fn traffic_fates(nodes: usize, msgs: &[(i64, u8, u8, Fate)]) -> Vec<Vec<Ev>> {
    let mut out: Vec<Vec<Ev>> = (0..nodes).map(|_| Vec::new()).collect();
    for (i, &(t, from, to, fate)) in msgs.iter().enumerate() {
        let p = || udp(addr(from), addr(to), i as u16, format!("HB{i}").as_bytes());
        match fate {
            Fate::FirewallOut => out[from as usize].push(dropped(send(t, p()), "netfilter_drop")),
            _ => out[from as usize].push(send(t, p())),
        }
        match fate {
            Fate::Delivered => out[to as usize].push(recv(t + MS / 10, p())),
            Fate::FirewallIn => out[to as usize].push(dropped(recv(t + MS / 10, p()), "netfilter_drop")),
            Fate::Lost | Fate::FirewallOut => {}
        }
    }
    out
}

/// Every ordered pair of `nodes` nodes exchanging a datagram every `every` ns over
/// `from..to`, with the fate `fate` gives (time, from, to, k-th message of that pair).
pub fn mesh(nodes: u8, (from, to): (i64, i64), every: i64, fate: impl Fn(i64, u8, u8, i64) -> Fate) -> Vec<(i64, u8, u8, Fate)> {
    let mut msgs = Vec::new();
    let mut k = 0;
    let mut t = from;
    while t < to {
        let mut j = 0;
        for a in 0..nodes {
            for b in 0..nodes {
                if a != b {
                    let at = t + j * 10_000;
                    msgs.push((at, a, b, fate(at, a, b, k)));
                    j += 1;
                }
            }
        }
        k += 1;
        t += every;
    }
    msgs
}
