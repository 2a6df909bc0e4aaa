//! Clock steps: a node's clock jumping (an NTP step, a VM migration) during a recording.
//!
//! A step moves every bound on a node's offset against all its peers at once, by its size.
//! Evidence comes two ways:
//! - time running back in program order, which the reader has already undone
//!   provisionally ([`Reversal`]); the traffic around it gives the exact size;
//! - a level shift in the offsets one node's messages show against a peer. It is the
//!   node's step when its other peers show the same shift at the same point, and not when
//!   they show none. With no other peer to ask, a reversal decides, else the forward step.
//!
//! Found steps are undone in the trace (the events after a step are moved by minus its
//! size), so one offset and drift per node then fit, and each segment's offset is the
//! node's offset plus the steps before it.

use super::trace::{EventId, NodeId, Reversal, Trace};

/// Smallest step looked for: NTP steps from 128 ms; smaller ones are slews or noise, and
/// the clock estimate drops their bounds as contradictions.
pub const MIN_STEP_NS: i64 = 50_000_000;
/// Bounds per peer on each side of a step that estimate its size.
const WINDOW: usize = 8;
/// Events scanned on each side of a step for those bounds.
const SCAN: usize = 4096;

/// One step of one node's clock.
#[derive(Clone, Debug, PartialEq)]
pub struct ClockStep {
    pub node: NodeId,
    /// On the node's undone clock (as the events before it), between the last event
    /// before the step and the first after.
    pub at_raw: i64,
    /// The first event after the step, as the dump recorded it.
    pub first_after_recorded: i64,
    /// How far the clock jumped (new minus old), ns.
    pub size_ns: i64,
    /// Bound on the error of `size_ns`; None when no traffic on both sides told it (the
    /// size is then what program order shows, a lower bound of a backward step).
    pub uncertainty_ns: Option<i64>,
    /// Time ran backwards in the node's program order.
    pub seen_in_order: bool,
    /// Only traffic with this one peer showed it: the peer's clock may have stepped the
    /// other way instead.
    pub or_peer: Option<NodeId>,
}

/// A bound on (node clock − peer clock) from one message with one end at the node:
/// an upper bound when the node received it, a lower one when it sent it.
#[derive(Clone, Copy)]
struct Bound {
    peer: NodeId,
    v: i64,
    upper: bool,
}

/// The size of a step at one point, against one peer: an interval, and a point estimate.
#[derive(Clone, Copy, Debug)]
struct Shift {
    lo: f64,
    hi: f64,
    point: i64,
}

/// A level shift in one node's bounds against one peer.
struct PairShift {
    node: NodeId,
    peer: NodeId,
    /// Node-local indices: the last event before, and the first at, the new level.
    before: usize,
    after: usize,
    size: i64,
}

/// A jump in one peer's bounds, waiting for what follows it to tell a level from an outlier.
#[derive(Clone)]
struct Jump {
    before: usize,
    after: usize,
    prev: Vec<i64>,
    next: Vec<i64>,
}

/// Partner of each event in a certain match (u32::MAX: none).
fn partners(trace: &Trace, messages: &[(EventId, EventId)]) -> Vec<u32> {
    let mut p = vec![u32::MAX; trace.events.len()];
    for &(s, r) in messages {
        if trace.events[s as usize].node != trace.events[r as usize].node {
            p[s as usize] = r;
            p[r as usize] = s;
        }
    }
    p
}

fn bound(trace: &Trace, partner: &[u32], i: usize) -> Option<Bound> {
    let q = *partner.get(i)?;
    if q == u32::MAX {
        return None;
    }
    let (e, f) = (&trace.events[i], &trace.events[q as usize]);
    Some(Bound { peer: f.node, v: e.t_raw - f.t_raw, upper: e.dir == super::trace::Dir::Recv })
}

fn median(v: &mut [i64]) -> i64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Finds the steps in every node's clock, from program order and certain matches.
pub fn find(trace: &Trace, messages: &[(EventId, EventId)]) -> Vec<ClockStep> {
    let partner = partners(trace, messages);
    let mut steps: Vec<ClockStep> = Vec::new();
    // Reversals first: program order alone proves them.
    for (n, info) in trace.nodes.iter().enumerate() {
        let range = trace.node_ranges[n].clone();
        let ev = &trace.events[range.clone()];
        for r in &info.reversals {
            let b = ev.partition_point(|e| e.t_raw < r.first_after);
            let est = combine(&shifts_at(trace, &partner, n as NodeId, b, None));
            // The events after were put just after those before: the true gap only adds to a step back.
            let (residual, unc) = est.map_or((0, None), |(s, u)| (s.min(0), Some(u)));
            steps.push(step_at(trace, n as NodeId, b, -r.undone_ns + residual, unc, Some(r), None));
        }
    }
    let shifts = pair_shifts(trace, &partner);
    // A shift is its node's step when its other peers agree, and not when they disagree.
    let mut open = Vec::new();
    let mut held: Vec<(NodeId, NodeId)> = Vec::new();
    for c in &shifts {
        let ev = &trace.events[trace.node_ranges[c.node as usize].clone()];
        if explained(&steps, trace, &partner, c) {
            continue;
        }
        let b = widest_gap(ev, c.before, c.after);
        let others = shifts_at(trace, &partner, c.node, b, Some(c.peer));
        let tol = (c.size.abs() / 10).max(MIN_STEP_NS / 2);
        let agree = others.iter().filter(|s| (s.1.point - c.size).abs() <= tol).count();
        // A peer whose bounds only loosely enclose the shift (one side of them late: a cut's
        // resends, delivered after the heal) neither agrees nor objects, unless they exclude it.
        let objects = |s: &Shift| {
            let consistent = s.lo - tol as f64 <= c.size as f64 && c.size as f64 <= s.hi + tol as f64;
            (s.point - c.size).abs() > tol && (!consistent || s.hi - s.lo <= 2.0 * tol as f64)
        };
        let disagree = others.iter().filter(|s| objects(&s.1)).count();
        if disagree > 0 {
            // Its other peers saw no shift: this node's clock held, against this peer too.
            held.push((c.node, c.peer));
            continue;
        }
        if agree == 0 {
            open.push((c, b));
            continue;
        }
        let (size, unc) = sized(trace, &partner, c, b);
        steps.push(step_at(trace, c.node, b, size, unc, None, None));
    }
    // No other peer told: the pair shows the step from both ends, once as a step forward;
    // it is this node's for sure where the peer's own other peers saw the peer's clock hold.
    for (c, b) in open {
        if explained(&steps, trace, &partner, c) {
            continue;
        }
        let peer_held = held.contains(&(c.peer, c.node));
        if c.size <= 0 && !peer_held {
            continue;
        }
        let (size, unc) = sized(trace, &partner, c, b);
        steps.push(step_at(trace, c.node, b, size, unc, None, (!peer_held).then_some(c.peer)));
    }
    steps.retain(|s| s.seen_in_order || s.size_ns.abs() >= MIN_STEP_NS);
    steps.sort_by_key(|s| (s.node, s.at_raw));
    steps
}

/// A shift's size and uncertainty at `b`, from every peer's bounds there (the shift's own
/// size where none tell it).
fn sized(trace: &Trace, partner: &[u32], c: &PairShift, b: usize) -> (i64, Option<i64>) {
    combine(&shifts_at(trace, partner, c.node, b, None)).map_or((c.size, None), |(s, u)| (s, Some(u)))
}

/// The step of `node` before its event `b`; `reversal`: program order showed it.
fn step_at(
    trace: &Trace,
    node: NodeId,
    b: usize,
    size: i64,
    unc: Option<i64>,
    reversal: Option<&Reversal>,
    or_peer: Option<NodeId>,
) -> ClockStep {
    let ev = &trace.events[trace.node_ranges[node as usize].clone()];
    let after = ev.get(b).map_or(i64::MAX, |e| e.t_raw);
    let before = b.checked_sub(1).map_or(after, |i| ev[i].t_raw);
    // A step forward cannot be larger than the gap it left, or it would reorder events.
    let size = if reversal.is_some() { size } else { size.min(after - before) };
    ClockStep {
        node,
        at_raw: before + (after.min(before.saturating_add(size.max(0))) - before) / 2,
        first_after_recorded: reversal.map_or(after, |r| r.recorded),
        size_ns: size,
        uncertainty_ns: unc,
        seen_in_order: reversal.is_some(),
        or_peer,
    }
}

/// Whether a pair shift is a step already found: its node's own, or the peer's seen from
/// this end (the peer's step lies between the partners of the shift's two ends).
fn explained(steps: &[ClockStep], trace: &Trace, partner: &[u32], c: &PairShift) -> bool {
    // Give or take a window of events: each end finds the point from its own bounds.
    const SLACK: usize = 2 * WINDOW;
    let own = trace.node_ranges[c.node as usize].start;
    steps.iter().any(|s| {
        let range = trace.node_ranges[s.node as usize].clone();
        let b = trace.events[range.clone()].partition_point(|e| e.t_raw <= s.at_raw);
        let (lo, hi) = if s.node == c.node {
            (c.before, c.after)
        } else if s.node == c.peer {
            let on_peer = |i: usize| (partner[own + i] as usize).saturating_sub(range.start);
            let (x, y) = (on_peer(c.before), on_peer(c.after));
            (x.min(y), x.max(y))
        } else {
            return false;
        };
        lo < b + SLACK && b <= hi + SLACK
    })
}

/// The point in (before, after] with the widest gap before it: where a step forward left
/// its mark (with no mark, the first event at the new level).
fn widest_gap(ev: &[super::trace::Event], before: usize, after: usize) -> usize {
    (before + 1..=after).max_by_key(|&i| (ev[i].t_raw - ev[i - 1].t_raw, std::cmp::Reverse(i))).unwrap_or(after)
}

/// Per peer: how far the node's offset against it moved across index `b` (the first event
/// after), from up to WINDOW bounds on each side, scanning at most SCAN events each way.
fn shifts_at(trace: &Trace, partner: &[u32], node: NodeId, b: usize, except: Option<NodeId>) -> Vec<(NodeId, Shift)> {
    let range = trace.node_ranges[node as usize].clone();
    let n = range.len();
    let side = |idx: &mut dyn Iterator<Item = usize>| {
        // Per peer: (max lower, min upper, lowers, uppers).
        let mut acc: Vec<(NodeId, i64, i64, usize, usize)> = Vec::new();
        for i in idx.take(SCAN) {
            let Some(bd) = bound(trace, partner, range.start + i) else { continue };
            if Some(bd.peer) == except {
                continue;
            }
            let k = match acc.iter().position(|a| a.0 == bd.peer) {
                Some(k) => k,
                None => {
                    acc.push((bd.peer, i64::MIN, i64::MAX, 0, 0));
                    acc.len() - 1
                }
            };
            let a = &mut acc[k];
            if a.3 + a.4 >= WINDOW {
                continue;
            }
            if bd.upper {
                a.2 = a.2.min(bd.v);
                a.4 += 1;
            } else {
                a.1 = a.1.max(bd.v);
                a.3 += 1;
            }
        }
        acc
    };
    let before = side(&mut (0..b).rev());
    let after = side(&mut (b..n));
    let mut out = Vec::new();
    for &(peer, lo_b, up_b, _, _) in &before {
        let Some(&(_, lo_a, up_a, _, _)) = after.iter().find(|a| a.0 == peer) else { continue };
        let f = |x: i64| if x == i64::MIN || x == i64::MAX { None } else { Some(x as f64) };
        // Δ = θ_after − θ_before, with θ_before in (lo_b, up_b) and θ_after in (lo_a, up_a).
        let lo = match (f(lo_a), f(up_b)) {
            (Some(a), Some(b)) => a - b,
            _ => f64::NEG_INFINITY,
        };
        let hi = match (f(up_a), f(lo_b)) {
            (Some(a), Some(b)) => a - b,
            _ => f64::INFINITY,
        };
        let point = match (f(lo_a), f(up_a), f(lo_b), f(up_b)) {
            _ if lo.is_finite() && hi.is_finite() => (lo + hi) / 2.0,
            (_, Some(ua), _, Some(ub)) => ua - ub,
            (Some(la), _, Some(lb), _) => la - lb,
            _ if lo.is_finite() => lo,
            _ if hi.is_finite() => hi,
            _ => continue,
        };
        out.push((peer, Shift { lo, hi, point: point.round() as i64 }));
    }
    out
}

/// One size from several peers' shifts: the middle of their common interval, or when
/// they have none (a wrong match among the bounds), the median of their points.
fn combine(shifts: &[(NodeId, Shift)]) -> Option<(i64, i64)> {
    if shifts.is_empty() {
        return None;
    }
    let lo = shifts.iter().map(|s| s.1.lo).fold(f64::NEG_INFINITY, f64::max);
    let hi = shifts.iter().map(|s| s.1.hi).fold(f64::INFINITY, f64::min);
    if lo.is_finite() && hi.is_finite() && lo <= hi {
        return Some((((lo + hi) / 2.0).round() as i64, ((hi - lo) / 2.0).ceil() as i64));
    }
    let mut points: Vec<i64> = shifts.iter().map(|s| s.1.point).collect();
    let m = median(&mut points);
    let spread = points.iter().map(|p| (p - m).abs()).max().unwrap_or(0);
    Some((m, spread.max(if lo.is_finite() && hi.is_finite() { ((lo - hi) / 2.0).ceil() as i64 } else { 0 })))
}

/// Level shifts of at least MIN_STEP_NS in each node's bounds against each peer: a jump
/// from the last value that the median of the next WINDOW bounds confirms against the
/// median of the previous WINDOW.
fn pair_shifts(trace: &Trace, partner: &[u32]) -> Vec<PairShift> {
    use rayon::prelude::*;
    (0..trace.nodes.len())
        .into_par_iter()
        .flat_map_iter(|n| {
            let range = trace.node_ranges[n].clone();
            let peers = trace.nodes.len();
            // Per peer: recent (index, value) and a pending jump with what followed it.
            let mut recent: Vec<std::collections::VecDeque<(usize, i64)>> = vec![Default::default(); peers];
            let mut pending: Vec<Option<Jump>> = vec![None; peers];
            let mut out = Vec::new();
            let settle = |p: usize, jump: Jump, out: &mut Vec<PairShift>| {
                let Jump { before, after, mut prev, mut next } = jump;
                if next.len() < 3 {
                    return;
                }
                let (mb, ma) = (median(&mut prev), median(&mut next));
                let size = ma - mb;
                let spread = |v: &[i64], m: i64| {
                    let mut d: Vec<i64> = v.iter().map(|x| (x - m).abs()).collect();
                    median(&mut d)
                };
                if size.abs() >= MIN_STEP_NS && 4 * (spread(&prev, mb) + spread(&next, ma)) < size.abs() {
                    out.push(PairShift { node: n as NodeId, peer: p as NodeId, before, after, size });
                }
            };
            for i in 0..range.len() {
                let Some(b) = bound(trace, partner, range.start + i) else { continue };
                let p = b.peer as usize;
                if let Some(c) = pending[p].as_mut() {
                    c.next.push(b.v);
                    if c.next.len() >= WINDOW {
                        let c = pending[p].take().expect("just seen");
                        settle(p, c, &mut out);
                    }
                } else if let Some(&(last_i, last_v)) = recent[p].back()
                    && recent[p].len() >= 3
                    && (b.v - last_v).abs() >= MIN_STEP_NS / 2
                {
                    let mut prev: Vec<i64> = recent[p].iter().map(|r| r.1).collect();
                    let m = median(&mut prev);
                    if (b.v - m).abs() >= MIN_STEP_NS / 2 {
                        pending[p] = Some(Jump { before: last_i, after: i, prev, next: vec![b.v] });
                        recent[p].clear();
                    }
                }
                let r = &mut recent[p];
                if r.len() == WINDOW {
                    r.pop_front();
                }
                r.push_back((i, b.v));
            }
            for (p, c) in pending.into_iter().enumerate() {
                if let Some(c) = c {
                    settle(p, c, &mut out);
                }
            }
            out
        })
        .collect()
}

/// Undoes the steps: each node's events after a step move by minus its size (beyond what
/// the reader already undid of a reversal), and so do its window's end and trigger time.
pub fn apply(trace: &mut Trace, steps: &[ClockStep]) {
    // Latest first, so that each step's point is still where it was found.
    for s in steps.iter().rev() {
        let n = s.node as usize;
        let already = if s.seen_in_order {
            trace.nodes[n].reversals.iter().find(|r| r.recorded == s.first_after_recorded).map_or(0, |r| r.undone_ns)
        } else {
            0
        };
        let shift = -s.size_ns - already;
        if shift == 0 {
            continue;
        }
        let range = trace.node_ranges[n].clone();
        let b = trace.events[range.clone()].partition_point(|e| e.t_raw <= s.at_raw);
        for e in &mut trace.events[range.start + b..range.end] {
            e.t_raw += shift;
        }
        for d in trace.drops.iter_mut().filter(|d| d.event.node == s.node && d.event.t_raw > s.at_raw) {
            d.event.t_raw += shift;
        }
        let info = &mut trace.nodes[n];
        if info.window.1 > s.at_raw {
            info.window.1 += shift;
        }
        if let Some(t) = info.trigger_heard.as_mut()
            && *t > s.at_raw
        {
            *t += shift;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{Ev, addr, recv, send, trace_as_recorded, udp};
    use super::*;

    /// Three nodes (clocks 0, +5 ms, −3 ms) take turns sending each other a datagram every
    /// 20 ms for 4 s, 100–300 µs on the wire; `step` = (node, true time, size) and `quiet`
    /// = (node, from, to) when it sends nothing. Events in program order.
    fn cluster(step: Option<(usize, i64, i64)>, quiet: Option<(usize, i64, i64)>) -> Trace {
        cluster_late(step, quiet, None)
    }

    /// The same, and `late` = (from, to, from, to): what `from` sends `to` in that time
    /// arrives 1.5 s late (a cut's resends, delivered after the heal).
    fn cluster_late(step: Option<(usize, i64, i64)>, quiet: Option<(usize, i64, i64)>, late: Option<(usize, usize, i64, i64)>) -> Trace {
        let offsets = [0i64, 5_000_000, -3_000_000];
        let raw = |n: usize, t: i64| t + offsets[n] + step.filter(|s| s.0 == n && t >= s.1).map_or(0, |s| s.2);
        let mut nodes: Vec<Vec<(i64, Ev)>> = (0..3).map(|_| Vec::new()).collect();
        for i in 0..200i64 {
            let t = 100_000_000 + i * 20_000_000;
            let (from, to) = ((i % 3) as usize, ((i + 1 + i / 3 % 2) % 3) as usize);
            if quiet.is_some_and(|q| q.0 == from && (q.1..q.2).contains(&t)) {
                continue;
            }
            let late_by = late.filter(|l| l.0 == from && l.1 == to && (l.2..l.3).contains(&t)).map_or(0, |_| 1_500_000_000);
            let d = 100_000 + i * 7919 % 200_000 + late_by;
            let p = || udp(addr(from as u8), addr(to as u8), i as u16, b"tick");
            nodes[from].push((t, send(raw(from, t), p())));
            nodes[to].push((t + d, recv(raw(to, t + d), p())));
        }
        let nodes = nodes
            .into_iter()
            .map(|mut v| {
                v.sort_by_key(|e| e.0);
                v.into_iter().map(|e| e.1).collect()
            })
            .collect();
        trace_as_recorded(nodes, (0, 5_000_000_000))
    }

    fn steps_of(t: &Trace) -> Vec<ClockStep> {
        let m = super::super::matching::match_messages(t, &super::super::matching::MatchIndex::new(t));
        find(t, &m.messages)
    }

    #[test]
    fn a_step_back_is_seen_in_program_order_and_sized_by_the_traffic() {
        let t = cluster(Some((1, 2_000_000_000, -1_000_000_000)), None);
        assert_eq!(t.nodes[1].reversals.len(), 1, "the reader saw time run back");
        let s = steps_of(&t);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!((s[0].node, s[0].seen_in_order, s[0].or_peer), (1, true, None));
        assert!((s[0].size_ns + 1_000_000_000).abs() <= s[0].uncertainty_ns.unwrap(), "{s:?}");
        assert!(s[0].uncertainty_ns.unwrap() < 300_000, "bounded by the delays: {s:?}");
    }

    #[test]
    fn a_step_forward_is_the_node_its_peers_agree_on() {
        let mut t = cluster(Some((2, 2_000_000_000, 700_000_000)), None);
        let s = steps_of(&t);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!((s[0].node, s[0].seen_in_order, s[0].or_peer), (2, false, None));
        assert!((s[0].size_ns - 700_000_000).abs() <= s[0].uncertainty_ns.unwrap(), "{s:?}");
        apply(&mut t, &s);
        let after = steps_of(&t);
        assert!(after.is_empty(), "undone: {after:?}");
    }

    #[test]
    fn a_step_is_found_though_one_peer_bounds_it_only_loosely_after() {
        // n3 steps forward as a one-way cut begins: what it sends n1 then arrives only after
        // the heal, so its offset against n1 after the step is bounded on one side only.
        let t = cluster_late(Some((2, 2_000_000_000, 700_000_000)), None, Some((2, 0, 2_000_000_000, 2_700_000_000)));
        let s = steps_of(&t);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!((s[0].node, s[0].or_peer), (2, None));
        assert!((s[0].size_ns - 700_000_000).abs() <= s[0].uncertainty_ns.unwrap().max(2_000_000), "{s:?}");
    }

    #[test]
    fn silence_and_one_late_message_are_no_step() {
        let mut t = cluster(None, Some((0, 1_000_000_000, 2_500_000_000)));
        // One receive on n2 recorded 200 ms late: a single outlier, not a level.
        let r = t.node_ranges[1].start + 20;
        t.events[r].t_raw += 200_000_000;
        assert!(t.nodes.iter().all(|n| n.reversals.is_empty()));
        assert_eq!(steps_of(&t), vec![]);
    }

    #[test]
    fn a_lone_misdated_record_is_no_reversal() {
        let mut nodes: Vec<Vec<Ev>> = vec![Vec::new()];
        for i in 0..20i64 {
            let t = if i == 10 { i * 10_000_000 - 500_000_000 } else { i * 10_000_000 };
            nodes[0].push(send(t, udp(addr(0), addr(1), i as u16, b"x")));
        }
        let t = trace_as_recorded(nodes, (0, 1_000_000_000));
        assert!(t.nodes[0].reversals.is_empty());
    }
}
