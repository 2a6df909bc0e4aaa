//! Stalled nodes: a node that stops answering while what it usually answers keeps arriving
//! (a stopped process, a long pause, a crash). A node that has nothing to say is not
//! stalled, nor one that waits on a stalled or cut-off peer: that is the peer's story, and
//! the peer's stall names it as a waiter.

use std::collections::BTreeSet;

use super::anomalies::{Anomaly, Cause, Facts, Kind, NodeList};
use super::matching::{Owners, address_owners};
use rustc_hash::FxHashMap;

use super::trace::{Dir, Event, EventId, NodeId, ProtoCode, Trace};

/// A node is stalled when it sends nothing for this many times its usual longest gap
/// between sends (the 90th percentile)...
pub const STALL_FACTOR: i64 = 5;
/// ...and for at least this long...
pub const STALL_MIN_NS: i64 = 500_000_000;
/// ...while its peers send it at least this many messages.
pub const STALL_MIN_SENT_TO: usize = 3;
/// Sends a node needs before its usual cadence is known.
const STALL_MIN_SENDS: usize = 10;

/// A node that fell silent while its peers kept sending to it.
#[derive(Clone, Debug)]
pub struct Stall {
    pub node: NodeId,
    /// The endpoint (protocol and local port) that fell silent, where the node as a whole
    /// did not.
    pub port: Option<(ProtoCode, u16)>,
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
    /// Nodes that waited on it meanwhile.
    pub waiters: Vec<NodeId>,
}

/// Whether a send says something: pure TCP ACKs go out from a stopped process's kernel too.
fn says_something(e: &super::trace::Event) -> bool {
    e.proto != ProtoCode::Tcp || e.payload_len > 0
}

/// A node, or one of its endpoints (protocol and local port): what it sent that says
/// something, and what it received.
#[derive(Default)]
struct Unit {
    port: Option<(ProtoCode, u16)>,
    sends: Vec<EventId>,
    recvs: Vec<EventId>,
}

/// Where a node talks with a peer: protocol, its local port, the peer.
type Conversation = (ProtoCode, u16, NodeId);

fn conversation(owners: &Owners, e: &Event) -> Option<Conversation> {
    match e.dir {
        Dir::Send => owners.get(&e.dst).map(|&p| (e.proto, e.sport, p)),
        Dir::Recv => owners.get(&e.src).map(|&p| (e.proto, e.dport, p)),
    }
}

/// Per conversation of a node (`unit`: the whole node), how long what it receives there
/// usually waits for its next word there (the median, which a stall's own long waits do not
/// move while they are fewer than the rest): microseconds for a request, half a second for
/// a replication stream answered once a second. Unknown below 5 waits.
fn answer_times(trace: &Trace, owners: &Owners, unit: &Unit, corr: &dyn Fn(EventId) -> i64) -> FxHashMap<Conversation, i64> {
    let mut events: Vec<(i64, EventId)> = unit.sends.iter().chain(&unit.recvs).map(|&i| (corr(i), i)).collect();
    events.sort_unstable();
    let mut pending: FxHashMap<Conversation, (Vec<i64>, Vec<i64>)> = FxHashMap::default();
    for (t, i) in events {
        let e = &trace.events[i as usize];
        if !says_something(e) {
            continue;
        }
        let Some(c) = conversation(owners, e) else { continue };
        let (waiting, waits) = pending.entry(c).or_default();
        match e.dir {
            Dir::Recv => waiting.push(t),
            Dir::Send => waits.extend(waiting.drain(..).map(|r| t - r)),
        }
    }
    pending
        .into_iter()
        .filter(|(_, (_, w))| w.len() >= 5)
        .map(|(c, (_, mut w))| {
            w.sort_unstable();
            (c, w[w.len() / 2])
        })
        .collect()
}

/// The silences of one node, or of one of its endpoints (`port`), in its `sends` (time
/// order): longer than its own cadence allows, while its peers sent it what it usually
/// answers (`recvs`: what it received there).
#[allow(clippy::too_many_arguments)]
fn silences(
    trace: &Trace,
    owners: &Owners,
    lost: &[(EventId, NodeId, Cause)],
    refused: &[(EventId, NodeId)],
    corr: &dyn Fn(EventId) -> i64,
    x: NodeId,
    port: Option<(ProtoCode, u16)>,
    sends: &[(i64, EventId)],
    recvs: &[EventId],
    answer: &FxHashMap<Conversation, i64>,
    end: i64,
) -> Vec<Stall> {
    let mut out = Vec::new();
    if sends.len() < STALL_MIN_SENDS {
        return out;
    }
    let mut gaps: Vec<i64> = sends.windows(2).map(|w| w[1].0 - w[0].0).collect();
    gaps.sort_unstable();
    let cadence = gaps[(gaps.len() * 9 / 10).min(gaps.len() - 1)].max(1);
    let threshold = cadence.saturating_mul(STALL_FACTOR).max(STALL_MIN_NS);
    let mut spans: Vec<(i64, i64, bool, EventId)> =
        sends.windows(2).filter(|w| w[1].0 - w[0].0 > threshold).map(|w| (w[0].0, w[1].0, false, w[0].1)).collect();
    let &(last_t, last_id) = sends.last().expect("sends");
    if end - last_t > threshold {
        spans.push((last_t, end, true, last_id));
    }
    if spans.is_empty() {
        return out;
    }
    // The peers it answers: those it sends to.
    let answers: BTreeSet<NodeId> =
        sends.iter().filter_map(|&(_, s)| owners.get(&trace.events[s as usize].dst).copied()).filter(|&p| p != x).collect();
    let from_answered = |e: &Event| owners.get(&e.src).is_none_or(|p| answers.contains(p));
    let at_port = |e: &Event| port.is_none_or(|(proto, p)| e.proto == proto && e.dport == p);
    // What its peers sent it that it usually answers (not the kernel's TCP ACKs), with how
    // long it usually takes to answer there.
    let received: Vec<(i64, Option<i64>)> = recvs
        .iter()
        .filter(|&&i| {
            let e = &trace.events[i as usize];
            says_something(e) && from_answered(e)
        })
        .map(|&i| (corr(i), conversation(owners, &trace.events[i as usize]).and_then(|c| answer.get(&c).copied())))
        .collect();
    let mine = |&&(s, r, _): &&(EventId, NodeId, Cause)| {
        let e = &trace.events[s as usize];
        r == x && from_answered(e) && at_port(e)
    };
    let lost_to: Vec<i64> = lost.iter().filter(mine).filter(|l| l.2.on_path(trace)).map(|l| corr(l.0)).collect();
    // What reached its host and died there, or that its kernel refused (nobody was there to
    // take it: a crash), shows it was there to answer.
    let mut dropped_there: Vec<i64> = lost.iter().filter(mine).filter(|l| !l.2.on_path(trace)).map(|l| corr(l.0)).collect();
    // A refusal says its socket went away only where it had spoken from that port before: a
    // peer that reaches it while it starts is no crash.
    let mut first_from: FxHashMap<(ProtoCode, u16), i64> = FxHashMap::default();
    for &(t, s) in sends {
        let e = &trace.events[s as usize];
        first_from.entry((e.proto, e.sport)).or_insert(t);
    }
    dropped_there.extend(
        refused
            .iter()
            .filter(|&&(s, r)| {
                let e = &trace.events[s as usize];
                r == x && from_answered(e) && at_port(e) && first_from.get(&(e.proto, e.dport)).is_some_and(|&t0| t0 < corr(s))
            })
            .map(|&(s, _)| corr(s)),
    );
    for (from, to, until_end, last_send) in spans {
        // Only what arrived well inside the silence: a cluster-wide lull ends with every
        // node hearing from the others at once, and began with the last answers.
        let inside = |t: &&i64| from + cadence < **t && **t < to - cadence;
        // An input that waits there longer than it usually does for an answer: a replica
        // answers its master's stream once a second, not each write.
        let waits = |&&(t, usual): &&(i64, Option<i64>)| inside(&&t) && usual.is_none_or(|d| d.saturating_mul(STALL_FACTOR) <= to - from);
        let got = received.iter().filter(waits).count() + dropped_there.iter().filter(inside).count();
        let lost = lost_to.iter().filter(inside).count();
        if got >= STALL_MIN_SENT_TO || (until_end && got + lost >= STALL_MIN_SENT_TO) {
            out.push(Stall {
                node: x,
                port,
                from,
                to,
                until_end,
                last_send: Some(last_send),
                sent_to: got + lost,
                lost,
                cadence,
                waiters: Vec::new(),
            });
        }
    }
    out
}

/// Nodes that stopped sending, for much longer than their own cadence, while their peers
/// kept sending them what they usually answer. `lost` are the lost messages (send,
/// receiver, cause): those that reached the receiver's host and died there (a full buffer)
/// show it was there to answer; the network's and the firewalls' show nothing about the
/// node, unless the silence lasts to the end of its recording (it died: nothing got
/// through). A node whose last word went to a stalled peer, or was lost on its way (a
/// cut-off peer), waits on it: no stall of its own.
pub fn stalls(
    trace: &Trace,
    lost: &[(EventId, NodeId, Cause)],
    refused: &[(EventId, NodeId)],
    corr: &dyn Fn(EventId) -> i64,
    end_of: &dyn Fn(NodeId) -> i64,
) -> Vec<Stall> {
    let owners = address_owners(trace);
    let mut out: Vec<Stall> = Vec::new();
    for (x, range) in trace.node_ranges.iter().enumerate() {
        let x = x as NodeId;
        let end = end_of(x);
        let remote = |e: &Event| owners.get(&e.dst) != Some(&x);
        // The whole node first; then each of its endpoints (protocol and local port) that
        // talks to its peers: a stopped server falls silent on its own ports while other
        // processes of its node (a local client, a sidecar) keep talking.
        let mut units: Vec<Unit> = Vec::new();
        let mut whole = Unit::default();
        let mut by_port: FxHashMap<(ProtoCode, u16), Unit> = FxHashMap::default();
        for i in range.clone() {
            let (e, id) = (&trace.events[i], i as EventId);
            match e.dir {
                Dir::Send if says_something(e) => {
                    whole.sends.push(id);
                    if remote(e) {
                        by_port.entry((e.proto, e.sport)).or_default().sends.push(id);
                    }
                }
                Dir::Recv => {
                    whole.recvs.push(id);
                    by_port.entry((e.proto, e.dport)).or_default().recvs.push(id);
                }
                _ => {}
            }
        }
        // The node's own events' times, computed once: each is read by several units.
        let start = range.start;
        let local: Vec<i64> = range.clone().map(|i| corr(i as EventId)).collect();
        let corr = |i: EventId| match (i as usize).checked_sub(start) {
            Some(k) if k < local.len() => local[k],
            _ => corr(i),
        };
        let corr: &dyn Fn(EventId) -> i64 = &corr;
        let answer = answer_times(trace, &owners, &whole, corr);
        units.push(whole);
        let mut ports: Vec<_> = by_port.into_iter().filter(|(_, u)| u.sends.len() >= STALL_MIN_SENDS).collect();
        // A node with one endpoint says on it what it says as a whole.
        if ports.len() > 1 {
            ports.sort_unstable_by_key(|(k, _)| (k.0.0, k.1));
            units.extend(ports.into_iter().map(|(k, u)| Unit { port: Some(k), ..u }));
        }
        let mut found: Vec<Stall> = Vec::new();
        for u in units {
            let sends: Vec<(i64, EventId)> = u.sends.iter().map(|&i| (corr(i), i)).collect();
            for st in silences(trace, &owners, lost, refused, corr, x, u.port, &sends, &u.recvs, &answer, end) {
                // The node's own silence and its endpoints' are one stall where they overlap.
                if !found.iter().any(|y| y.from < st.to && st.from < y.to) {
                    found.push(st);
                }
            }
        }
        out.extend(found);
    }
    // A node whose last word was to a stalled peer, and that speaks again once that peer
    // does, was waiting for it: the peer's stall, not its own. So is one whose last word was
    // lost on its way: it waits on a peer it cannot reach.
    let waited_on = |x: &Stall, all: &[Stall]| {
        let s = x.last_send?;
        let peer = *owners.get(&trace.events[s as usize].dst)?;
        let stalled = all.iter().any(|y| y.node == peer && y.node != x.node && y.from <= x.from && x.to <= y.to + STALL_MIN_NS);
        let cut_off = lost.binary_search_by_key(&(s, peer), |l| (l.0, l.1)).is_ok_and(|k| lost[k].2.on_path(trace));
        (stalled || cut_off).then_some((peer, stalled))
    };
    let waits: Vec<Option<(NodeId, bool)>> = out.iter().map(|x| waited_on(x, &out)).collect();
    let mut kept: Vec<Stall> = Vec::new();
    let mut waiters: Vec<(NodeId, NodeId, i64)> = Vec::new();
    for (x, w) in out.into_iter().zip(waits) {
        match w {
            Some((peer, true)) => waiters.push((peer, x.node, x.from)),
            Some((_, false)) => {}
            None => kept.push(x),
        }
    }
    for (peer, waiter, at) in waiters {
        if let Some(y) = kept.iter_mut().find(|y| y.node == peer && y.from <= at && at <= y.to)
            && !y.waiters.contains(&waiter)
        {
            y.waiters.push(waiter);
        }
    }
    kept
}

/// The stall anomalies, with the nodes that waited on each.
pub fn to_anomalies(stalls: &[Stall], out: &mut Vec<Anomaly>) {
    for st in stalls {
        let facts = Facts::Stall { until_end: st.until_end, sent_to: st.sent_to, lost: st.lost, cadence: st.cadence, port: st.port };
        let mut a = Anomaly::with_facts(Kind::StalledNode, st.last_send.into_iter().collect(), facts);
        a.nodes = NodeList::from_slice(&[st.node]);
        a.span = Some((st.from, st.to));
        if !st.waiters.is_empty() {
            a.detail_mut().waiters = st.waiters.clone();
        }
        out.push(a);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

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

    /// n1 asks n3's server (UDP port 7000) and it answers, every 50 ms; a client process on
    /// n3 (port 9000) asks n2 and n2 answers, all along. `server_up` says when n3's server
    /// answers.
    fn server_and_local_client(server_up: impl Fn(i64) -> bool) -> Vec<Anomaly> {
        let dgram = |from: u8, to: u8, (sport, dport): (u16, u16), id: u16| {
            crate::packet::tests::udp4(addr(from), addr(to), sport, dport, id, b"Q")
        };
        let mut nodes: Vec<Vec<Ev>> = vec![Vec::new(), Vec::new(), Vec::new()];
        let mut id = 0u16;
        let mut msg = |nodes: &mut Vec<Vec<Ev>>, t: i64, from: u8, to: u8, ports: (u16, u16)| {
            id += 1;
            nodes[from as usize].push(send(t, dgram(from, to, ports, id)));
            nodes[to as usize].push(recv(t + MS / 10, dgram(from, to, ports, id)));
        };
        for k in 0..80 {
            let t = 100 * MS + k * 50 * MS;
            msg(&mut nodes, t, 0, 2, (7000, 7000));
            if server_up(t) {
                msg(&mut nodes, t + MS, 2, 0, (7000, 7000));
            }
            msg(&mut nodes, t + 2 * MS, 2, 1, (9000, 7000));
            msg(&mut nodes, t + 3 * MS, 1, 2, (7000, 9000));
        }
        for n in &mut nodes {
            n.sort_by_key(|e| e.t);
        }
        anomalies(&trace(nodes))
    }

    #[test]
    fn a_stopped_server_is_stalled_though_another_process_of_its_node_keeps_talking() {
        let found = server_and_local_client(|t| !(1000 * MS..1800 * MS).contains(&t));
        let stalls = of(&found, Kind::StalledNode);
        assert_eq!(stalls.len(), 1, "{found:?}");
        assert_eq!(stalls[0].nodes.as_slice(), &[2]);
        assert!(stalls[0].text.starts_with("n3 stalled: its UDP port 7000 sent nothing from"), "{}", stalls[0].text);
        assert!(stalls[0].text.contains("from its peers there meanwhile"), "{}", stalls[0].text);
        // And a server that answers all along is not.
        let found = server_and_local_client(|_| true);
        assert!(of(&found, Kind::StalledNode).is_empty(), "{found:?}");
    }

    /// n1 streams to n2 every 20 ms and n2 acknowledges once a second; n3 asks n2 every
    /// 100 ms and n2 answers at once, but from 2 s to 2.8 s n3 asks nothing (`n3_quiet`) or
    /// n2 answers nothing (`n2_stopped`).
    fn replica(n3_quiet: bool, n2_stopped: bool) -> Vec<Anomaly> {
        let mut msgs = Vec::new();
        let pause = |t: i64| (2000 * MS..2800 * MS).contains(&t);
        for k in 0..200 {
            let t = 100 * MS + k * 20 * MS;
            msgs.push((t, 0, 1, true));
            if k % 50 == 49 && !(n2_stopped && pause(t)) {
                msgs.push((t + MS, 1, 0, true));
            }
            if k % 5 == 0 && !(n3_quiet && pause(t)) {
                msgs.push((t + 2 * MS, 2, 1, true));
                if !(n2_stopped && pause(t)) {
                    msgs.push((t + 3 * MS, 1, 2, true));
                }
            }
        }
        anomalies(&trace(traffic(3, &msgs)))
    }

    #[test]
    fn a_stream_it_answers_once_a_second_does_not_make_a_pause_a_stall() {
        let found = replica(true, false);
        assert!(of(&found, Kind::StalledNode).is_empty(), "{:?}", of(&found, Kind::StalledNode));
        let found = replica(false, true);
        let stalls = of(&found, Kind::StalledNode);
        assert_eq!(stalls.len(), 1, "{found:?}");
        assert_eq!(stalls[0].nodes.as_slice(), &[1]);
    }

    #[test]
    fn a_crashed_tcp_server_whose_kernel_refuses_the_reconnects_is_stalled() {
        use super::super::testkit::{tcp_ev, tcp_segment};
        let (c, srv) = (addr(0), addr(1));
        let (mut client, mut server) = (Vec::new(), Vec::new());
        // Requests and answers every 50 ms on one connection until the crash at 1.5 s.
        for k in 0..28u32 {
            let t = 100 * MS + k as i64 * 50 * MS;
            let q = tcp_segment(c, srv, (40000, 8000), 1 + 10 * k, 10, 0x18);
            let a = tcp_segment(srv, c, (8000, 40000), 1 + 10 * k, 10, 0x18);
            client.push(tcp_ev(t, Dir::Send, q.clone()));
            server.push(tcp_ev(t + MS / 10, Dir::Recv, q));
            server.push(tcp_ev(t + MS, Dir::Send, a.clone()));
            client.push(tcp_ev(t + MS + MS / 10, Dir::Recv, a));
        }
        // The kernel closes the dead server's socket; the client reconnects every 100 ms and
        // each SYN is refused, until it restarts at 3 s and answers a new connection.
        let fin = tcp_segment(srv, c, (8000, 40000), 281, 0, 0x11);
        server.push(tcp_ev(1500 * MS, Dir::Send, fin.clone()));
        client.push(tcp_ev(1500 * MS + MS / 10, Dir::Recv, fin));
        for k in 0..14u16 {
            let t = 1600 * MS + k as i64 * 100 * MS;
            client.push(tcp_ev(t, Dir::Send, tcp_segment(c, srv, (40001 + k, 8000), 7, 0, 0x02)));
            client.push(tcp_ev(t + MS / 5, Dir::Recv, tcp_segment(srv, c, (8000, 40001 + k), 0, 0, 0x14)));
        }
        for k in 0..10u32 {
            let t = 3000 * MS + k as i64 * 50 * MS;
            let q = tcp_segment(c, srv, (40100, 8000), 1 + 10 * k, 10, 0x18);
            let a = tcp_segment(srv, c, (8000, 40100), 1 + 10 * k, 10, 0x18);
            client.push(tcp_ev(t, Dir::Send, q.clone()));
            server.push(tcp_ev(t + MS / 10, Dir::Recv, q));
            server.push(tcp_ev(t + MS, Dir::Send, a.clone()));
            client.push(tcp_ev(t + MS + MS / 10, Dir::Recv, a));
        }
        client.sort_by_key(|e| e.t);
        server.sort_by_key(|e| e.t);
        let found = anomalies(&trace(vec![client, server]));
        let stalls = of(&found, Kind::StalledNode);
        assert_eq!(stalls.len(), 1, "{found:?}");
        assert_eq!(stalls[0].nodes.as_slice(), &[1]);
        assert!(of(&found, Kind::Partition).is_empty(), "{found:?}");
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

    /// n1 ↔ n2 and n1 → n3 all along; n4 asks n3 and n2 and they answer. From 1 s to 2.2 s
    /// n3 does not answer (`n3_fate`), and n4 waits for it, silent.
    fn waiting_on_n3(n3_fate: Fate) -> Vec<Anomaly> {
        let mut msgs = Vec::new();
        for k in 0..80 {
            let t = 100 * MS + k * 50 * MS;
            let out = (1000 * MS..2200 * MS).contains(&t);
            msgs.push((t, 0, 1, Fate::Delivered));
            msgs.push((t + MS, 1, 0, Fate::Delivered));
            msgs.push((t + 2 * MS, 0, 2, if out { n3_fate } else { Fate::Delivered }));
            msgs.push((t + 5 * MS, 1, 3, Fate::Delivered));
            if !out || n3_fate == Fate::Lost {
                let to_n1 = if out { Fate::Lost } else { Fate::Delivered };
                msgs.push((t + 3 * MS, 2, 0, to_n1));
            }
            // n4 asks n3, and its last question before the silence goes unanswered.
            if !out || t == 1000 * MS {
                msgs.push((t + 4 * MS, 3, 2, if out { n3_fate } else { Fate::Delivered }));
            }
            if !out {
                msgs.push((t + 6 * MS, 3, 1, Fate::Delivered));
                msgs.push((t + 7 * MS, 2, 3, Fate::Delivered));
            }
        }
        anomalies(&trace(traffic_fates(4, &msgs)))
    }

    #[test]
    fn a_node_that_waits_on_a_stalled_peer_is_no_stall_and_the_peers_stall_names_it() {
        let found = waiting_on_n3(Fate::Delivered);
        let stalls = of(&found, Kind::StalledNode);
        assert_eq!(stalls.len(), 1, "{stalls:?}");
        assert_eq!(stalls[0].nodes.as_slice(), &[2]);
        assert_eq!(stalls[0].detail.as_ref().map(|d| d.waiters.clone()), Some(vec![3]));
        assert!(stalls[0].text.ends_with("; n4 waited on it"), "{}", stalls[0].text);
    }

    #[test]
    fn a_node_that_waits_on_a_cut_off_peer_is_no_stall() {
        // n3 is cut off (everything to and from it lost); n4's question to it was lost, and
        // n4 waits, though n2 keeps sending it messages.
        let found = waiting_on_n3(Fate::Lost);
        assert!(of(&found, Kind::StalledNode).is_empty(), "{:?}", of(&found, Kind::StalledNode));
    }

    #[test]
    fn a_node_silent_to_peers_it_never_answers_is_not_stalled() {
        // n2 hears n1 every 50 ms and never answers it; it talks to n3, and falls silent
        // from 1 s to 2.5 s while only n1 (whom it never answers) sends to it.
        let mut msgs = Vec::new();
        for k in 0..80 {
            let t = 100 * MS + k * 50 * MS;
            msgs.push((t, 0, 1, true));
            if !(1000 * MS..2500 * MS).contains(&t) {
                msgs.push((t + MS, 1, 2, true));
                msgs.push((t + 2 * MS, 2, 1, true));
            }
        }
        let found = anomalies(&trace(traffic(3, &msgs)));
        assert!(of(&found, Kind::StalledNode).is_empty(), "{:?}", of(&found, Kind::StalledNode));
    }
}
