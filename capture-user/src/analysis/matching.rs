//! Matching each receive to the send it came from, across nodes.
//!
//! - UDP, ICMP and TCP segments without data: by key (5-tuple, IP id, lengths, first
//!   payload bytes, TCP seq/ack/flags). Keys with one send are certain; keys with
//!   several (identical retransmissions) are resolved by corrected time, so this runs
//!   twice: once before the clocks are known, once after.
//! - TCP data: by sequence range. A receive happens after the first send of its last
//!   byte, which holds however segmentation offload split or receive coalescing merged them.
//! - Broadcast and multicast: one send, at most one receive per node.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use super::trace::{AddrId, Dir, Event, EventId, NodeId, ProtoCode, Trace};

pub const NONE: EventId = EventId::MAX;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct Key {
    src: AddrId,
    dst: AddrId,
    sport: u16,
    dport: u16,
    ip_id: u16,
    proto: u8,
    tcp_flags: u8,
    hash: u64,
    tcp_seq: u32,
    tcp_ack: u32,
}

impl Key {
    fn of(e: &Event) -> Key {
        Key {
            src: e.src,
            dst: e.dst,
            sport: e.sport,
            dport: e.dport,
            ip_id: e.ip_id,
            proto: e.proto as u8,
            tcp_flags: e.tcp_flags,
            hash: e.hash,
            tcp_seq: e.tcp_seq,
            tcp_ack: e.tcp_ack,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageKind {
    /// Matched by key with exactly one candidate send.
    Keyed,
    /// Matched by key among identical sends, by corrected time.
    KeyedByTime,
    /// TCP bytes matched by sequence range.
    TcpRange,
}

#[derive(Clone, Debug, Default)]
pub struct Matching {
    /// For each event: the send it was matched to (receives only), else NONE.
    pub send_of: Vec<EventId>,
    /// (send, receive), sorted.
    pub messages: Vec<(EventId, EventId)>,
    pub kinds: Vec<MessageKind>,
    /// Receives of a packet the same node had already received (network duplicates).
    pub duplicates: Vec<(EventId, EventId)>,
    /// Sends whose bytes (TCP) or exact payload (UDP, same flow) were sent before: (first, again).
    pub retransmissions: Vec<(EventId, EventId)>,
    /// Sends no receive was matched to (candidates for loss; see anomalies).
    pub unmatched_sends: Vec<EventId>,
    /// Receives no recorded send was found for (sender not recorded, or its record lost).
    pub unmatched_recvs: Vec<EventId>,
    /// Keys left for the timed pass.
    pub ambiguous_keys: usize,
}

/// Maps an address to the recorded node that sends from it.
pub fn address_owners(trace: &Trace) -> HashMap<AddrId, NodeId> {
    let mut m = HashMap::new();
    for (i, n) in trace.nodes.iter().enumerate() {
        for a in &n.addrs {
            m.insert(*a, i as NodeId);
        }
    }
    m
}

pub fn is_group_address(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.is_broadcast() || v4.is_multicast() || v4.octets()[3] == 255,
        IpAddr::V6(v6) => v6.is_multicast(),
    }
}

/// Corrected time of an event and the uncertainty of its node's clock, ns.
pub trait TimeMap {
    fn corrected(&self, node: NodeId, t_raw: i64) -> i64;
    fn uncertainty(&self, node: NodeId) -> i64;
}

/// Events grouped for matching, built once and used by both passes: keyed events
/// sorted by key (sends first, then by time), and TCP data events by flow.
pub struct MatchIndex {
    keyed: Vec<EventId>,
    /// Start of each key group in `keyed` (plus a final end).
    key_groups: Vec<u32>,
    tcp: Vec<EventId>,
    tcp_groups: Vec<u32>,
}

impl MatchIndex {
    pub fn new(trace: &Trace) -> MatchIndex {
        let is_tcp_data = |e: &Event| e.proto == ProtoCode::Tcp && e.payload_len > 0;
        let key_hash = |e: &Event| {
            use std::hash::{Hash, Hasher};
            let mut h = rustc_hash::FxHasher::default();
            Key::of(e).hash(&mut h);
            h.finish()
        };
        let flow_hash = |e: &Event| {
            use std::hash::{Hash, Hasher};
            let mut h = rustc_hash::FxHasher::default();
            (e.src, e.sport, e.dst, e.dport).hash(&mut h);
            h.finish()
        };
        let mut keyed: Vec<(u64, u8, i64, EventId)> = Vec::new();
        let mut tcp: Vec<(u64, u8, i64, EventId)> = Vec::new();
        for (i, e) in trace.events.iter().enumerate() {
            // Sends (dir 1) sort before receives within a key: 1 - dir.
            let (d, t, id) = (1 - e.dir as u8, e.t_raw, i as EventId);
            if is_tcp_data(e) {
                tcp.push((flow_hash(e), d, t, id));
            } else {
                keyed.push((key_hash(e), d, t, id));
            }
        }
        keyed.sort_unstable();
        tcp.sort_unstable();
        // Groups end where the full key (or flow) changes. Keys whose 64-bit hashes collide
        // (vanishingly rare) may interleave and split into several groups: that can leave
        // messages unmatched, never match wrong ones.
        let groups = |v: &[(u64, u8, i64, EventId)], same: &dyn Fn(&Event, &Event) -> bool| {
            let mut g = Vec::new();
            for k in 0..v.len() {
                if k == 0 || v[k].0 != v[k - 1].0 || !same(&trace.events[v[k].3 as usize], &trace.events[v[k - 1].3 as usize]) {
                    g.push(k as u32);
                }
            }
            g.push(v.len() as u32);
            g
        };
        let key_groups = groups(&keyed, &|a, b| Key::of(a) == Key::of(b));
        let tcp_groups = groups(&tcp, &|a, b| (a.src, a.sport, a.dst, a.dport) == (b.src, b.sport, b.dst, b.dport));
        let keyed: Vec<EventId> = keyed.into_iter().map(|x| x.3).collect();
        let tcp: Vec<EventId> = tcp.into_iter().map(|x| x.3).collect();
        MatchIndex { keyed, key_groups, tcp, tcp_groups }
    }
}

/// Matches messages. Without `clocks`, keys with several identical sends stay unmatched
/// (their receives go to `unmatched_recvs`) so that clock estimation only sees certain pairs.
pub fn match_messages(trace: &Trace, index: &MatchIndex, clocks: Option<&dyn TimeMap>) -> Matching {
    let n = trace.events.len();
    let mut m = Matching { send_of: vec![NONE; n], ..Matching::default() };
    let mut matched_send = vec![false; n];
    let ev = |id: EventId| &trace.events[id as usize];
    let mut first_on_node: Vec<(NodeId, EventId)> = Vec::new();
    for w in index.key_groups.windows(2) {
        let group = &index.keyed[w[0] as usize..w[1] as usize];
        let n_sends = group.iter().take_while(|&&id| ev(id).dir == Dir::Send).count();
        let (sends, recvs) = group.split_at(n_sends);
        if sends.is_empty() {
            m.unmatched_recvs.extend_from_slice(recvs);
            continue;
        }
        let is_group = is_group_address(trace.addr(ev(sends[0]).dst));
        // A node's own broadcast looped back to it is no message between nodes.
        let own: Vec<NodeId> = sends.iter().map(|&s| ev(s).node).collect();
        let filtered: Vec<EventId>;
        let recvs = if is_group {
            filtered = recvs.iter().copied().filter(|&r| !own.contains(&ev(r).node)).collect();
            &filtered[..]
        } else {
            recvs
        };
        if sends.len() == 1 {
            let s = sends[0];
            // One receive per node; more on the same node are network duplicates.
            first_on_node.clear();
            for &r in recvs {
                let node = ev(r).node;
                m.send_of[r as usize] = s;
                m.messages.push((s, r));
                m.kinds.push(MessageKind::Keyed);
                matched_send[s as usize] = true;
                if let Some(&(_, first)) = first_on_node.iter().find(|(nd, _)| *nd == node) {
                    m.duplicates.push((first, r));
                } else {
                    first_on_node.push((node, r));
                }
            }
            continue;
        }
        // Identical sends: retransmissions of the same bytes on the same flow.
        for &again in &sends[1..] {
            m.retransmissions.push((sends[0], again));
        }
        let Some(clocks) = clocks else {
            m.ambiguous_keys += 1;
            m.unmatched_recvs.extend_from_slice(recvs);
            continue;
        };
        // Each receive goes to the latest send that, in corrected time, could precede it;
        // for unicast each send is received at most once (per node for groups).
        let corr = |id: EventId| clocks.corrected(ev(id).node, ev(id).t_raw);
        let mut recvs = recvs.to_vec();
        recvs.sort_by_key(|r| corr(*r));
        let mut taken: HashMap<(EventId, NodeId), EventId> = HashMap::new();
        for r in recvs {
            let re = ev(r);
            let t = corr(r);
            let slack = clocks.uncertainty(re.node);
            let mut chosen = None;
            for &s in sends.iter().rev() {
                if corr(s) - clocks.uncertainty(ev(s).node) > t + slack {
                    continue;
                }
                let slot = (s, if is_group { re.node } else { 0 });
                if !taken.contains_key(&slot) {
                    chosen = Some(s);
                    taken.insert(slot, r);
                    break;
                }
                chosen.get_or_insert(s);
            }
            let s = chosen.unwrap_or(sends[0]);
            let slot = (s, if is_group { re.node } else { 0 });
            if taken.get(&slot).is_some_and(|first| *first != r) {
                m.duplicates.push((taken[&slot], r));
            }
            m.send_of[r as usize] = s;
            m.messages.push((s, r));
            m.kinds.push(MessageKind::KeyedByTime);
            matched_send[s as usize] = true;
        }
    }

    for w in index.tcp_groups.windows(2) {
        let group = &index.tcp[w[0] as usize..w[1] as usize];
        let n_sends = group.iter().take_while(|&&id| ev(id).dir == Dir::Send).count();
        let (sends, recvs) = group.split_at(n_sends);
        match_tcp_flow(trace, sends, recvs, &mut m, &mut matched_send);
    }

    for (i, e) in trace.events.iter().enumerate() {
        if e.dir == Dir::Send && !matched_send[i] {
            m.unmatched_sends.push(i as EventId);
        }
    }
    let mut order: Vec<u32> = (0..m.messages.len() as u32).collect();
    order.sort_unstable_by_key(|&i| m.messages[i as usize]);
    m.messages = order.iter().map(|&i| m.messages[i as usize]).collect();
    m.kinds = order.iter().map(|&i| m.kinds[i as usize]).collect();
    m.unmatched_recvs.sort_unstable();
    m.duplicates.sort_unstable();
    m.retransmissions.sort_unstable();
    m.retransmissions.dedup();
    m
}

/// Matches one direction of a TCP connection by sequence range.
fn match_tcp_flow(trace: &Trace, sends: &[EventId], recvs: &[EventId], m: &mut Matching, matched_send: &mut [bool]) {
    let ev = |id: EventId| &trace.events[id as usize];
    let mut sends = sends.to_vec();
    sends.sort_by_key(|s| ev(*s).t_raw);
    let Some(&first) = sends.first() else {
        m.unmatched_recvs.extend_from_slice(recvs);
        return;
    };
    let isn = ev(first).tcp_seq;
    let rel = |seq: u32| seq.wrapping_sub(isn) as i32 as i64;
    // First coverage of each byte: disjoint [start, end) -> the send that first carried it.
    let mut cover: BTreeMap<i64, (i64, EventId)> = BTreeMap::new();
    for &s in &sends {
        let e = ev(s);
        let (mut a, b) = (rel(e.tcp_seq), rel(e.tcp_seq) + e.payload_len as i64);
        let mut resent = None;
        // Walk the covered intervals that overlap [a, b) and fill the gaps between them.
        let overlapping: Vec<(i64, (i64, EventId))> = cover.range(..b).rev().take_while(|(_, (end, _))| *end > a).map(|(k, v)| (*k, *v)).collect();
        let mut gaps = Vec::new();
        let mut iv: Vec<_> = overlapping.into_iter().rev().collect();
        iv.retain(|(start, (end, _))| *end > a && *start < b);
        for (start, (end, by)) in iv {
            resent.get_or_insert(by);
            if start > a {
                gaps.push((a, start));
            }
            a = a.max(end);
        }
        if a < b {
            gaps.push((a, b));
        }
        for (x, y) in gaps {
            cover.insert(x, (y, s));
        }
        if let Some(by) = resent {
            m.retransmissions.push((by, s));
        }
    }
    for &r in recvs {
        let e = ev(r);
        let last = rel(e.tcp_seq) + e.payload_len as i64 - 1;
        match cover.range(..=last).next_back() {
            Some((_, (end, s))) if *end > last => {
                m.send_of[r as usize] = *s;
                m.messages.push((*s, r));
                m.kinds.push(MessageKind::TcpRange);
                matched_send[*s as usize] = true;
            }
            _ => m.unmatched_recvs.push(r),
        }
    }
    // Sends whose bytes arrived inside another receive (coalesced) count as delivered.
    let mut received: Vec<(i64, i64)> = recvs.iter().map(|&r| {
        let e = ev(r);
        (rel(e.tcp_seq), rel(e.tcp_seq) + e.payload_len as i64)
    }).collect();
    received.sort_unstable();
    let mut union: BTreeMap<i64, i64> = BTreeMap::new();
    let mut cur: Option<(i64, i64)> = None;
    for (x, y) in received {
        match cur {
            Some((a, b)) if x <= b => cur = Some((a, b.max(y))),
            Some((a, b)) => {
                union.insert(a, b);
                cur = Some((x, y));
            }
            None => cur = Some((x, y)),
        }
    }
    if let Some((a, b)) = cur {
        union.insert(a, b);
    }
    for &s in &sends {
        if matched_send[s as usize] {
            continue;
        }
        let e = ev(s);
        let (a, b) = (rel(e.tcp_seq), rel(e.tcp_seq) + e.payload_len as i64);
        if union.range(..b).next_back().is_some_and(|(_, end)| *end > a) {
            matched_send[s as usize] = true;
        }
    }
}
