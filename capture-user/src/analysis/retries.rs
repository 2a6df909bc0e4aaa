//! The same message again: network duplicates, retransmissions (the same payload from one
//! node on one flow, or the same request by the spec's identity fields) and retry storms.

use std::collections::BTreeMap;

use super::anomalies::{Anomaly, Context, Kind, NodeList};
use super::trace::{Dir, EventId, ProtoCode};

/// A payload sent this many times by one node within `STORM_WINDOW_NS` is a retry storm.
pub const STORM_COUNT: usize = 5;
pub const STORM_WINDOW_NS: i64 = 1_000_000_000;
/// Identical payloads on one flow this close together are retransmissions.
pub const RETRY_WINDOW_NS: i64 = 5_000_000_000;

pub fn find(ctx: &Context<'_>, out: &mut Vec<Anomaly>) {
    let trace = ctx.trace;
    let m = ctx.matching;
    let corr = |id: EventId| ctx.corr(id);
    for &(first, again) in &m.duplicates {
        let mut a = Anomaly::new(Kind::Duplicate, vec![first, again]);
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
        let mut a = Anomaly::new(Kind::Retransmission, run.clone());
        a.nodes = NodeList::from_slice(&[e.node]);
        a.span = Some((corr(run[0]), corr(*run.last().expect("non-empty"))));
        out.push(a);
        // A storm: STORM_COUNT or more of them within STORM_WINDOW_NS.
        let times: Vec<i64> = run.iter().map(|&id| trace.events[id as usize].t_raw).collect();
        let dense = (0..times.len()).any(|i| times.get(i + STORM_COUNT - 1).is_some_and(|t| t - times[i] <= STORM_WINDOW_NS));
        if dense {
            let mut a = Anomaly::new(Kind::RetryStorm, run.clone());
            a.nodes = NodeList::from_slice(&[e.node]);
            out.push(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::detect::find;
    use super::super::matching::{MatchIndex, match_messages, resolve_by_time};
    use super::super::testkit::*;
    use super::super::trace::EventId;
    use super::*;

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
        let run = |identity: &dyn Fn(EventId) -> Option<u64>| {
            find(&Context { trace: &t, matching: &m, clocks: &SameClock, missing_nodes: &[], identity })
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
}
