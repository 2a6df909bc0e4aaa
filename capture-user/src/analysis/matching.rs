//! Matching each receive to the send it came from, across nodes.
//!
//! - UDP, ICMP, TCP segments without data and every other IP protocol (VRRP, OSPF, SCTP,
//!   raw sockets: no ports, the payload starts after the IP header): by key (addresses,
//!   IP protocol, ports, IP id, lengths, first payload bytes, TCP seq/ack/flags). Keys with one send are certain; keys with
//!   several (identical retransmissions) are resolved by corrected time, once the
//!   clocks are known ([`resolve_by_time`]).
//! - TCP data: by sequence range. A receive happens after the first send of its last
//!   byte, which holds however segmentation offload split or receive coalescing merged them.
//! - Broadcast and multicast: one send, at most one receive per node.

use std::collections::{BTreeMap, HashMap};

use super::trace::{AddrId, Dir, Event, EventId, NodeId, ProtoCode, Trace};

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct Key {
    src: AddrId,
    dst: AddrId,
    sport: u16,
    dport: u16,
    ip_id: u16,
    /// The IP protocol number.
    proto: u8,
    tcp_flags: u8,
    hash: u64,
    tcp_seq: u32,
    tcp_ack: u32,
}

impl Key {
    fn of(trace: &Trace, e: &Event) -> Key {
        Key {
            src: e.src,
            dst: e.dst,
            sport: e.sport,
            dport: e.dport,
            ip_id: e.ip_id,
            proto: e.proto.0,
            tcp_flags: e.tcp_flags,
            hash: trace.content_hash(e),
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
    /// Key groups with several identical sends, left for [`resolve_by_time`].
    pub ambiguous: Vec<u32>,
}

/// Maps an address to the one recorded node that owns it (sends from it, or receives on
/// it). An address two nodes use (a virtual IP that moved, NAT) belongs to neither: who
/// should have received a packet sent to it cannot be told.
pub fn address_owners(trace: &Trace) -> Owners {
    let mut m: Vec<Option<Option<NodeId>>> = vec![None; trace.addrs.len()];
    for (i, n) in trace.nodes.iter().enumerate() {
        for &a in &n.addrs {
            let o = &mut m[a as usize];
            *o = Some(if o.is_some() { None } else { Some(i as NodeId) });
        }
    }
    Owners(m.into_iter().map(Option::flatten).collect())
}

/// Which node owns each address (one node only: an address two nodes claim is nobody's),
/// indexed by `AddrId`: the detectors look it up for every event.
pub struct Owners(Vec<Option<NodeId>>);

impl Owners {
    pub fn get(&self, a: &AddrId) -> Option<&NodeId> {
        self.0.get(*a as usize).and_then(Option::as_ref)
    }
}

pub use super::trace::is_group_address;

/// Corrected time of an event and the uncertainty of its node's clock, ns.
pub trait TimeMap {
    fn corrected(&self, node: NodeId, t_raw: i64) -> i64;
    fn uncertainty(&self, node: NodeId) -> i64;
    /// Whether the node's clock was estimated at all (otherwise it is assumed NTP-aligned).
    fn known(&self, _node: NodeId) -> bool {
        true
    }
}

/// One keyed event in the index, with what matching needs of it, so that the passes
/// do not go back to the (large, randomly reached) event array.
#[derive(Clone, Copy, Debug)]
struct Entry {
    id: EventId,
    node: NodeId,
    send: bool,
}

/// (key hash, receive flag and time, event, check bits | group bit | node): see `MatchIndex::new`.
type SortKey = (u64, u64, EventId, u32);

/// Events grouped for matching, built once and used by both passes: keyed events
/// sorted by key (sends first, then by time), and TCP data events by flow.
pub struct MatchIndex {
    keyed: Vec<Entry>,
    /// Start of each key group in `keyed` (plus a final end).
    key_groups: Vec<u32>,
    /// Per key group: its destination is a broadcast or multicast address.
    group_dst: Vec<bool>,
    tcp: Vec<EventId>,
    tcp_groups: Vec<u32>,
}

impl MatchIndex {
    pub fn new(trace: &Trace) -> MatchIndex {
        use rayon::prelude::*;
        use std::hash::{Hash, Hasher};
        let is_tcp_data = |e: &Event| e.proto == ProtoCode::Tcp && e.payload_len > 0;
        // Two independent hashes of the key (or flow): 64 bits to sort by and 15 more to
        // tell keys apart, so that grouping never goes back to the event array. Keys
        // whose 79-bit fingerprints collide (about 1 in 10^10 at 10 M events) would merge.
        let fingerprint = |key: &dyn Fn(&mut dyn Hasher)| {
            let mut h = rustc_hash::FxHasher::default();
            key(&mut h);
            let mut check = std::hash::BuildHasher::build_hasher(&foldhash::quality::FixedState::with_seed(0x5767_6f5f_6368_6b21));
            key(&mut check);
            (h.finish(), check.finish() as u32 & 0xfffe_0000)
        };
        let group_addr: Vec<bool> = trace.addrs.iter().map(|a| is_group_address(*a)).collect();
        // Sort keys: (hash, receive flag and time, id, check | group bit | node). Sends sort
        // before receives within a key; the node and group bit ride along for matching.
        let entry = |i: usize, e: &Event| {
            let (hash, check) = if is_tcp_data(e) {
                fingerprint(&|mut h| (e.src, e.sport, e.dst, e.dport).hash(&mut h))
            } else {
                fingerprint(&|mut h| Key::of(trace, e).hash(&mut h))
            };
            let rank = ((e.dir == Dir::Recv) as u64) << 63 | (e.t_raw as u64 & (u64::MAX >> 1));
            let tag = check | (group_addr[e.dst as usize] as u32) << 16 | e.node as u32;
            (hash, rank, i as EventId, tag)
        };
        let (mut tcp, mut keyed): (Vec<SortKey>, Vec<SortKey>) = trace.events.par_iter().enumerate().partition_map(|(i, e)| {
            if is_tcp_data(e) { rayon::iter::Either::Left(entry(i, e)) } else { rayon::iter::Either::Right(entry(i, e)) }
        });
        keyed.par_sort_unstable();
        tcp.par_sort_unstable();
        let groups = |v: &[SortKey]| {
            let mut g = Vec::new();
            for k in 0..v.len() {
                if k == 0 || v[k].0 != v[k - 1].0 || v[k].3 >> 17 != v[k - 1].3 >> 17 {
                    g.push(k as u32);
                }
            }
            g.push(v.len() as u32);
            g
        };
        let key_groups = groups(&keyed);
        let tcp_groups = groups(&tcp);
        let group_dst = key_groups[..key_groups.len() - 1].iter().map(|&k| keyed[k as usize].3 >> 16 & 1 == 1).collect();
        let keyed = keyed.into_iter().map(|(_, rank, id, tag)| Entry { id, node: tag as u16, send: rank >> 63 == 0 }).collect();
        let tcp: Vec<EventId> = tcp.into_iter().map(|x| x.2).collect();
        MatchIndex { keyed, key_groups, group_dst, tcp, tcp_groups }
    }

    fn key_group(&self, g: usize) -> &[Entry] {
        &self.keyed[self.key_groups[g] as usize..self.key_groups[g + 1] as usize]
    }
}

/// A key group split into its sends and its receives; for broadcast and multicast, a
/// node's own send looped back to it is dropped from the receives (no message between nodes).
fn split_group(group: &[Entry], is_group: bool) -> (&[Entry], Vec<Entry>) {
    let n_sends = group.iter().take_while(|e| e.send).count();
    let (sends, recvs) = group.split_at(n_sends);
    let recvs = if is_group {
        // The sending nodes once, not a scan of every send per receive.
        let mut senders: Vec<NodeId> = sends.iter().map(|s| s.node).collect();
        senders.sort_unstable();
        senders.dedup();
        recvs.iter().copied().filter(|r| senders.binary_search(&r.node).is_err()).collect()
    } else {
        recvs.to_vec()
    };
    (sends, recvs)
}

/// Matches messages that need no clocks: keys with one send, and TCP bytes. Keys with
/// several identical sends are left for [`resolve_by_time`] (their receives stay out of
/// `messages`), so that clock estimation only sees certain pairs.
pub fn match_messages(trace: &Trace, index: &MatchIndex) -> Matching {
    let n = trace.events.len();
    let mut m = Matching::default();
    let mut matched_send = vec![false; n];
    let mut first_on_node: Vec<(NodeId, EventId)> = Vec::new();
    for g in 0..index.group_dst.len() {
        let group = index.key_group(g);
        let is_group = index.group_dst[g];
        let n_sends = group.iter().take_while(|e| e.send).count();
        if n_sends == 0 {
            m.unmatched_recvs.extend(group.iter().map(|e| e.id));
            continue;
        }
        if n_sends > 1 {
            // Identical sends: retransmissions of the same bytes on the same flow.
            for again in &group[1..n_sends] {
                m.retransmissions.push((group[0].id, again.id));
            }
            m.ambiguous.push(g as u32);
            continue;
        }
        let s = group[0];
        // One receive per node; more on the same node are network duplicates.
        first_on_node.clear();
        for r in &group[1..] {
            if is_group && r.node == s.node {
                continue;
            }
            m.messages.push((s.id, r.id));
            m.kinds.push(MessageKind::Keyed);
            matched_send[s.id as usize] = true;
            if let Some(&(_, first)) = first_on_node.iter().find(|(nd, _)| *nd == r.node) {
                m.duplicates.push((first, r.id));
            } else {
                first_on_node.push((r.node, r.id));
            }
        }
    }

    for w in index.tcp_groups.windows(2) {
        let group = &index.tcp[w[0] as usize..w[1] as usize];
        let n_sends = group.iter().take_while(|&&id| trace.events[id as usize].dir == Dir::Send).count();
        let (sends, recvs) = group.split_at(n_sends);
        match_tcp_flow(trace, sends, recvs, &mut m, &mut matched_send);
    }

    for (i, e) in trace.events.iter().enumerate() {
        if e.dir == Dir::Send && !matched_send[i] {
            m.unmatched_sends.push(i as EventId);
        }
    }
    sort_messages(&mut m.messages, &mut m.kinds);
    m.unmatched_recvs.sort_unstable();
    m.duplicates.sort_unstable();
    m.retransmissions.sort_unstable();
    m.retransmissions.dedup();
    m
}

/// Sorts messages (and their kinds alongside) by (send, receive).
fn sort_messages(messages: &mut Vec<(EventId, EventId)>, kinds: &mut Vec<MessageKind>) {
    let mut both: Vec<((EventId, EventId), MessageKind)> = messages.iter().copied().zip(kinds.iter().copied()).collect();
    both.sort_unstable_by_key(|x| x.0);
    *messages = both.iter().map(|x| x.0).collect();
    *kinds = both.iter().map(|x| x.1).collect();
}

/// Matches the receives of keys with several identical sends, by corrected time: each
/// receive goes to the latest send that could precede it, and each send is received at
/// most once (per node for broadcast and multicast); further receives are duplicates.
pub fn resolve_by_time(m: &mut Matching, trace: &Trace, index: &MatchIndex, clocks: &dyn TimeMap) {
    resolve_by_time_counted(m, trace, index, clocks);
}

/// [`resolve_by_time`], returning its work: the steps taken to find each receive's send.
///
/// Near-linear in the receives of a key, not quadratic (16 k identical keep-alives each
/// way took 2.2 s, 64 k 42 s): the sends that could precede a receive are a prefix of the
/// sends sorted by earliest corrected time, found by binary search, and the latest of them
/// whose slot is still free by a union-find that skips the taken ones.
fn resolve_by_time_counted(m: &mut Matching, trace: &Trace, index: &MatchIndex, clocks: &dyn TimeMap) -> u64 {
    let ev = |id: EventId| &trace.events[id as usize];
    let corr = |id: EventId| clocks.corrected(ev(id).node, ev(id).t_raw);
    let mut messages = Vec::new();
    let mut newly_matched = Vec::new();
    let mut work = 0u64;
    for &g in &m.ambiguous {
        let is_group = index.group_dst[g as usize];
        let (sends, recvs) = split_group(index.key_group(g as usize), is_group);
        // Each send with the earliest corrected time it could have left at, in that order
        // (ties in the index's order, by raw time): a receive may follow those up to a bound.
        let mut sends: Vec<(i64, EventId)> = sends.iter().map(|s| (corr(s.id) - clocks.uncertainty(s.node), s.id)).collect();
        sends.sort_by_key(|s| s.0);
        let mut recvs: Vec<(i64, Entry)> = recvs.into_iter().map(|r| (corr(r.id), r)).collect();
        recvs.sort_by_key(|r| r.0);
        // Free sends per slot namespace: one for a unicast key, one per receiving node for
        // broadcast and multicast (a send is received once per node).
        let mut free: HashMap<NodeId, FreeSlots> = HashMap::new();
        let mut taken: HashMap<(EventId, NodeId), EventId> = HashMap::new();
        for (t, r) in recvs {
            let slack = clocks.uncertainty(r.node);
            let eligible = sends.partition_point(|s| s.0 <= t + slack);
            work += 1 + eligible.max(1).ilog2() as u64;
            let space = if is_group { r.node } else { 0 };
            let slots = free.entry(space).or_insert_with(|| FreeSlots::new(sends.len()));
            let s = match slots.latest_free(eligible, &mut work) {
                Some(k) => {
                    slots.take(k);
                    taken.insert((sends[k].1, space), r.id);
                    sends[k].1
                }
                // Every send that could precede it is taken: the latest of them again (a
                // duplicate), or, if none could, the first.
                None => {
                    let s = sends[eligible.saturating_sub(1)].1;
                    if let Some(&first) = taken.get(&(s, space)) {
                        m.duplicates.push((first, r.id));
                    }
                    s
                }
            };
            messages.push((s, r.id));
            newly_matched.push(s);
        }
    }
    m.ambiguous.clear();
    if messages.is_empty() {
        return work;
    }
    m.kinds.extend(std::iter::repeat_n(MessageKind::KeyedByTime, messages.len()));
    m.messages.extend(messages);
    sort_messages(&mut m.messages, &mut m.kinds);
    newly_matched.sort_unstable();
    m.unmatched_sends.retain(|s| newly_matched.binary_search(s).is_err());
    m.duplicates.sort_unstable();
    work
}

/// Which of `n` sends are still free, as a union-find where each taken send points to the
/// one before it: the latest free send at or before any position in near-constant time.
struct FreeSlots {
    /// `next[k]`: k + 1 if send k is free, else a position at or before it to look from
    /// (0: none is free at or before it).
    next: Vec<u32>,
}

impl FreeSlots {
    fn new(n: usize) -> FreeSlots {
        FreeSlots { next: (1..=n as u32).collect() }
    }

    /// The latest free send among the first `upto`, counting steps into `work`.
    fn latest_free(&mut self, upto: usize, work: &mut u64) -> Option<usize> {
        // Positions are 1-based here, 0 meaning "none".
        let mut p = upto as u32;
        while p > 0 && self.next[p as usize - 1] != p {
            *work += 1;
            let up = self.next[p as usize - 1];
            // Path halving: point past the next step too, so later searches are shorter.
            if up > 0 {
                self.next[p as usize - 1] = self.next[up as usize - 1].min(up);
            }
            p = up;
        }
        (p > 0).then(|| p as usize - 1)
    }

    fn take(&mut self, k: usize) {
        self.next[k] = k as u32;
    }
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
        let overlapping: Vec<(i64, (i64, EventId))> =
            cover.range(..b).rev().take_while(|(_, (end, _))| *end > a).map(|(k, v)| (*k, *v)).collect();
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
                m.messages.push((*s, r));
                m.kinds.push(MessageKind::TcpRange);
                matched_send[*s as usize] = true;
            }
            _ => m.unmatched_recvs.push(r),
        }
    }
    // Sends whose bytes arrived inside another receive (coalesced) count as delivered.
    let mut received: Vec<(i64, i64)> = recvs
        .iter()
        .map(|&r| {
            let e = ev(r);
            (rel(e.tcp_seq), rel(e.tcp_seq) + e.payload_len as i64)
        })
        .collect();
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

#[cfg(test)]
mod tests {
    use super::super::testkit::{BROADCAST, Offsets, SameClock, addr, recv, send, tcp, tcp_ev, trace, udp};
    use super::*;
    use std::net::IpAddr;

    fn matched(t: &Trace) -> Matching {
        let index = MatchIndex::new(t);
        let mut m = match_messages(t, &index);
        resolve_by_time(&mut m, t, &index, &SameClock);
        m
    }

    #[test]
    fn a_datagram_matches_its_one_send_and_an_unanswered_send_stays_unmatched() {
        let t = trace(vec![
            vec![send(100, udp(addr(0), addr(1), 1, b"TASK1")), send(200, udp(addr(0), addr(1), 2, b"TASK2"))],
            vec![recv(150, udp(addr(0), addr(1), 1, b"TASK1"))],
        ]);
        let m = match_messages(&t, &MatchIndex::new(&t));
        assert_eq!(m.messages, vec![(0, 2)]);
        assert_eq!(m.kinds, vec![MessageKind::Keyed]);
        assert_eq!(m.unmatched_sends, vec![1]);
        assert!(m.unmatched_recvs.is_empty() && m.duplicates.is_empty() && m.retransmissions.is_empty());
    }

    #[test]
    fn identical_resends_are_retransmissions_and_each_receive_goes_to_the_send_before_it() {
        // The same bytes (same IP id: a resent copy) twice; only the second arrives, after
        // it, on a clock 1 s ahead: corrected time picks the second send.
        let p = || udp(addr(0), addr(1), 9, b"TASK9");
        let t = trace(vec![vec![send(100, p()), send(5_000, p())], vec![recv(1_000_005_100, p())]]);
        let index = MatchIndex::new(&t);
        let mut m = match_messages(&t, &index);
        assert!(m.messages.is_empty(), "identical sends are left to the clocks");
        assert_eq!(m.retransmissions, vec![(0, 1)]);
        resolve_by_time(&mut m, &t, &index, &Offsets(vec![0, 1_000_000_000]));
        assert_eq!(m.messages, vec![(1, 2)]);
        assert_eq!(m.kinds, vec![MessageKind::KeyedByTime]);
        assert_eq!(m.unmatched_sends, vec![0], "the first copy was lost");
    }

    /// Clocks with offsets and uncertainties per node.
    struct Fuzzy(Vec<(i64, i64)>);

    impl TimeMap for Fuzzy {
        fn corrected(&self, node: NodeId, t_raw: i64) -> i64 {
            t_raw - self.0[node as usize].0
        }
        fn uncertainty(&self, node: NodeId) -> i64 {
            self.0[node as usize].1
        }
    }

    #[test]
    fn identical_datagrams_resolve_in_near_linear_work() {
        // Keep-alives that carry no counter, each way: every one has the same key, the shape
        // whose receives each scanned every send (64 k each way: 42 s).
        let n = 20_000i64;
        let (ab, ba) = (|| udp(addr(0), addr(1), 0, b"PING"), || udp(addr(1), addr(0), 0, b"PONG"));
        let mut a = Vec::new();
        let mut b = Vec::new();
        for i in 0..n {
            a.push(send(i * 1_000, ab()));
            b.push(recv(i * 1_000 + 300, ab()));
            b.push(send(i * 1_000 + 500, ba()));
            a.push(recv(i * 1_000 + 800, ba()));
        }
        let t = trace(vec![a, b]);
        let index = MatchIndex::new(&t);
        let mut m = match_messages(&t, &index);
        assert_eq!(m.ambiguous.len(), 2, "two keys, each with {n} identical sends");
        let work = resolve_by_time_counted(&mut m, &t, &index, &SameClock);
        assert_eq!(m.messages.len(), 2 * n as usize);
        for &(s, r) in &m.messages {
            assert_eq!(t.events[r as usize].t_raw - t.events[s as usize].t_raw, 300, "each receive goes to the send just before it");
        }
        assert!(m.duplicates.is_empty() && m.unmatched_sends.is_empty());
        // A binary search (15 steps at 20 k) and a few union-find steps per receive; the
        // scan it replaces took n / 2 per receive (10 000 here).
        let per_receive = work as f64 / (2 * n) as f64;
        assert!(per_receive < 24.0, "{per_receive:.1} steps per receive");
    }

    /// The scan `resolve_by_time` replaced, kept as the reference for what it must choose.
    fn scan(m: &mut Matching, trace: &Trace, index: &MatchIndex, clocks: &dyn TimeMap) {
        let ev = |id: EventId| &trace.events[id as usize];
        let corr = |id: EventId| clocks.corrected(ev(id).node, ev(id).t_raw);
        let mut messages = Vec::new();
        for &g in &m.ambiguous {
            let is_group = index.group_dst[g as usize];
            let (sends, mut recvs) = split_group(index.key_group(g as usize), is_group);
            recvs.sort_by_key(|r| corr(r.id));
            let mut taken: HashMap<(EventId, NodeId), EventId> = HashMap::new();
            for r in recvs {
                let t = corr(r.id);
                let slack = clocks.uncertainty(r.node);
                let mut chosen = None;
                for s in sends.iter().rev() {
                    if corr(s.id) - clocks.uncertainty(s.node) > t + slack {
                        continue;
                    }
                    let slot = (s.id, if is_group { r.node } else { 0 });
                    if let std::collections::hash_map::Entry::Vacant(free) = taken.entry(slot) {
                        chosen = Some(s.id);
                        free.insert(r.id);
                        break;
                    }
                    chosen.get_or_insert(s.id);
                }
                let s = chosen.unwrap_or(sends[0].id);
                let slot = (s, if is_group { r.node } else { 0 });
                if let Some(&first) = taken.get(&slot).filter(|first| **first != r.id) {
                    m.duplicates.push((first, r.id));
                }
                messages.push((s, r.id));
            }
        }
        m.ambiguous.clear();
        m.messages.extend(messages);
        m.messages.sort_unstable();
        m.duplicates.sort_unstable();
    }

    #[test]
    fn resolving_by_time_chooses_what_the_scan_it_replaced_chose() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut compared = 0;
        for round in 0..300 {
            // Three nodes; node 0 sends the same datagram, unicast to node 1 or broadcast,
            // some copies lost, some received twice, with receive times (and so ties) drawn
            // from a small range.
            let dst = if round % 3 == 0 { BROADCAST } else { addr(1) };
            let p = || udp(addr(0), dst, 0, b"HB");
            let mut nodes = vec![Vec::new(), Vec::new(), Vec::new()];
            for k in 0..2 + rand(12) as i64 {
                let at = k * 100 + rand(80) as i64;
                nodes[0].push(send(at, p()));
                for (node, evs) in nodes.iter_mut().enumerate().skip(1) {
                    if dst != BROADCAST && node == 2 {
                        continue;
                    }
                    for _ in 0..rand(3) {
                        evs.push(recv(at + rand(250) as i64, p()));
                    }
                }
            }
            if nodes[1].is_empty() {
                nodes[1].push(recv(5_000, p()));
            }
            for n in &mut nodes {
                n.sort_by_key(|e| e.t);
            }
            let t = trace(nodes);
            let clocks = Fuzzy((0..3).map(|_| (rand(60) as i64 - 30, rand(40) as i64)).collect());
            let index = MatchIndex::new(&t);
            let base = match_messages(&t, &index);
            if base.ambiguous.is_empty() {
                continue;
            }
            let (mut fast, mut slow) = (base.clone(), base);
            resolve_by_time(&mut fast, &t, &index, &clocks);
            scan(&mut slow, &t, &index, &clocks);
            assert_eq!(fast.messages, slow.messages, "round {round}");
            assert_eq!(fast.duplicates, slow.duplicates, "round {round}");
            compared += 1;
        }
        assert!(compared > 100, "{compared} rounds had identical sends to resolve");
    }

    #[test]
    fn another_ip_protocol_matches_by_ip_id_length_and_payload_and_never_across_protocols() {
        use crate::packet::tests::ip4;
        let t = trace(vec![
            vec![send(100, ip4(addr(0), addr(1), 253, 1, b"hello")), send(200, ip4(addr(0), addr(1), 253, 2, b"hello"))],
            // The second send's IP id and bytes, but another protocol: not its receive.
            vec![recv(150, ip4(addr(0), addr(1), 253, 1, b"hello")), recv(250, ip4(addr(0), addr(1), 254, 2, b"hello"))],
        ]);
        let m = matched(&t);
        assert_eq!(m.messages, vec![(0, 2)]);
        assert_eq!((m.unmatched_sends.as_slice(), m.unmatched_recvs.as_slice()), (&[1][..], &[3][..]));
    }

    #[test]
    fn ipv6_packets_match_by_the_protocol_of_their_chains_last_header() {
        use crate::packet::tests::ip6;
        // Behind a hop-by-hop header, the same bytes as VRRP and as OSPF: the OSPF receive
        // is not the VRRP send's (their first header, hop-by-hop, is the same).
        let t = trace(vec![
            vec![send(100, ip6(&[(0, 6)], 112, b"advert"))],
            vec![recv(150, ip6(&[(0, 6)], 112, b"advert")), recv(160, ip6(&[(0, 6)], 89, b"advert"))],
        ]);
        assert_eq!((t.events[0].proto, t.events[2].proto), (ProtoCode(112), ProtoCode(89)));
        let m = matched(&t);
        assert_eq!(m.messages, vec![(0, 1)]);
        assert_eq!(m.unmatched_recvs, vec![2]);
    }

    #[test]
    fn a_second_receive_of_one_send_is_a_network_duplicate() {
        let p = || udp(addr(0), addr(1), 3, b"HB");
        let t = trace(vec![vec![send(100, p())], vec![recv(150, p()), recv(160, p())]]);
        let m = matched(&t);
        assert_eq!(m.messages, vec![(0, 1), (0, 2)]);
        assert_eq!(m.duplicates, vec![(1, 2)]);
    }

    #[test]
    fn tcp_bytes_coalesced_on_receive_follow_the_send_of_their_last_byte() {
        // Two 1000-byte segments sent; the receiver's stack merged them into one.
        let t = trace(vec![
            vec![tcp_ev(100, Dir::Send, tcp(addr(0), addr(1), 1000, 1000)), tcp_ev(200, Dir::Send, tcp(addr(0), addr(1), 2000, 1000))],
            vec![tcp_ev(300, Dir::Recv, tcp(addr(0), addr(1), 1000, 2000))],
        ]);
        let m = matched(&t);
        assert_eq!(m.messages, vec![(1, 2)], "received after the send of byte 2999");
        assert_eq!(m.kinds, vec![MessageKind::TcpRange]);
        assert!(m.unmatched_recvs.is_empty());
    }

    #[test]
    fn tcp_bytes_split_on_the_way_all_follow_the_one_send() {
        // One 3000-byte send (segmentation offload) arrives as three segments.
        let t = trace(vec![
            vec![tcp_ev(100, Dir::Send, tcp(addr(0), addr(1), 5000, 3000))],
            vec![
                tcp_ev(300, Dir::Recv, tcp(addr(0), addr(1), 5000, 1000)),
                tcp_ev(310, Dir::Recv, tcp(addr(0), addr(1), 6000, 1000)),
                tcp_ev(320, Dir::Recv, tcp(addr(0), addr(1), 7000, 1000)),
            ],
        ]);
        let m = matched(&t);
        assert_eq!(m.messages, vec![(0, 1), (0, 2), (0, 3)]);
        assert!(m.kinds.iter().all(|k| *k == MessageKind::TcpRange));
        assert!(m.unmatched_sends.is_empty());
    }

    #[test]
    fn tcp_bytes_sent_twice_are_a_retransmission() {
        let t = trace(vec![
            vec![tcp_ev(100, Dir::Send, tcp(addr(0), addr(1), 1000, 500)), tcp_ev(900, Dir::Send, tcp(addr(0), addr(1), 1000, 500))],
            vec![tcp_ev(950, Dir::Recv, tcp(addr(0), addr(1), 1000, 500))],
        ]);
        let m = matched(&t);
        assert_eq!(m.retransmissions, vec![(0, 1)]);
        assert_eq!(m.messages.len(), 1);
    }

    #[test]
    fn a_broadcast_is_one_send_with_one_receive_per_node_and_not_its_own_loopback() {
        let p = || udp(addr(0), BROADCAST, 4, b"WHO?");
        let t = trace(vec![vec![send(100, p()), recv(101, p())], vec![recv(150, p())], vec![recv(160, p())]]);
        let m = matched(&t);
        assert_eq!(m.messages, vec![(0, 2), (0, 3)], "n2 and n3 received it; n1's loopback is no message");
        assert!(m.duplicates.is_empty());
        assert!(is_group_address(IpAddr::from(BROADCAST)) && !is_group_address(IpAddr::from(addr(1))));
        assert!(is_group_address("239.1.2.3".parse().unwrap()) && is_group_address("ff02::1".parse().unwrap()));
    }

    #[test]
    fn addresses_belong_to_the_nodes_that_send_from_them() {
        let t = trace(vec![vec![send(1, udp(addr(0), addr(1), 1, b"a"))], vec![send(2, udp(addr(1), addr(0), 2, b"b"))]]);
        let owners = address_owners(&t);
        let id = |a: [u8; 4]| t.addrs.iter().position(|x| *x == IpAddr::from(a)).unwrap() as AddrId;
        assert_eq!(owners.get(&id(addr(0))), Some(&0));
        assert_eq!(owners.get(&id(addr(1))), Some(&1));
    }
}
