//! The happens-before graph and the global order.
//!
//! Edges: program order on each node, matched messages (send → receive) and rule
//! edges from the protocol spec. The order is Kahn's algorithm with corrected time as
//! priority. A cycle means some edges contradict each other: the shortest cycle
//! through a cross-node edge is reported by naming its message and rule edges, the
//! weakest of them is dropped, and ordering goes on. Whether two neighbours in the
//! order are causally related is read off vector clocks computed along the way, so
//! nothing is quadratic and no transitive closure is built.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use petgraph::Direction::{Incoming, Outgoing};
use petgraph::graph::{DiGraph, EdgeIndex, NodeIndex};
use petgraph::visit::EdgeRef;

use super::matching::TimeMap;
use super::trace::{EventId, Trace};

pub const NO_GROUP: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdgeKind {
    Program,
    /// Index into the matching's messages.
    Message(u32),
    /// Index into the spec's rules.
    Rule(u32),
}

#[derive(Clone, Debug)]
pub struct CycleReport {
    /// The cross-node edges of the shortest contradicting cycle found: (from, to, kind).
    pub edges: Vec<(EventId, EventId, EdgeKind)>,
    /// The edge dropped to break it.
    pub dropped: (EventId, EventId, EdgeKind),
}

pub struct Order {
    /// Event ids in global order.
    pub order: Vec<EventId>,
    /// Corrected time made causally consistent: never earlier than a predecessor's.
    pub t_ns: Vec<i64>,
    /// For each event: its concurrency group (events whose order is not determined), or NO_GROUP.
    pub group: Vec<u32>,
    pub cycles: Vec<CycleReport>,
}

/// Program order on each node, implicit in the event layout: events of a node are
/// contiguous and in time order, so an event's program predecessor is the one before it.
struct ProgramOrder<'a> {
    trace: &'a Trace,
}

impl ProgramOrder<'_> {
    fn range(&self, i: usize) -> std::ops::Range<usize> {
        self.trace.node_ranges[self.trace.events[i].node as usize].clone()
    }
    fn pred(&self, i: usize) -> Option<usize> {
        (i > self.range(i).start).then(|| i - 1)
    }
    fn succ(&self, i: usize) -> Option<usize> {
        (i + 1 < self.range(i).end).then_some(i + 1)
    }
    /// Position of the event on its node.
    fn pos(&self, i: usize) -> u32 {
        (i - self.range(i).start) as u32
    }
}

/// A cross edge's kind in four bytes: the graph holds one per message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CrossEdge(u32);

impl CrossEdge {
    const RULE: u32 = 1 << 31;
    /// None for program order, which the graph never holds.
    fn pack(k: EdgeKind) -> Option<CrossEdge> {
        match k {
            EdgeKind::Message(i) if i < Self::RULE => Some(CrossEdge(i)),
            EdgeKind::Rule(r) if r < Self::RULE => Some(CrossEdge(r | Self::RULE)),
            _ => None,
        }
    }
    fn kind(self) -> EdgeKind {
        if self.0 & Self::RULE != 0 { EdgeKind::Rule(self.0 & !Self::RULE) } else { EdgeKind::Message(self.0) }
    }
}

type Graph = DiGraph<(), CrossEdge, u32>;

/// In-degree of an event already ordered.
const DONE: u32 = u32::MAX;

/// An event whose place in the order is final: its id, time and concurrency group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    pub id: EventId,
    pub t_ns: i64,
    pub group: u32,
}

/// Events are handed to `on_placed` in runs of at least this many (the last run may be shorter).
const PLACED_BATCH: usize = 1 << 12;

/// Builds the graph and orders it. `cross` holds message and rule edges; the petgraph
/// graph holds those, and program order stays implicit (one edge per event would
/// double the graph's memory for edges that the event layout already says).
///
/// `on_placed` receives the events in order as soon as their place, time and group are
/// final, so that output can be written while the rest is still being ordered.
pub fn order(
    trace: &Trace,
    clocks: &dyn TimeMap,
    cross: impl Iterator<Item = (EventId, EventId, EdgeKind)>,
    on_placed: &mut dyn FnMut(&[Placed]),
) -> Order {
    let n = trace.events.len();
    let program = ProgramOrder { trace };
    let mut g: Graph = DiGraph::with_capacity(n, cross.size_hint().0);
    for _ in 0..n {
        g.add_node(());
    }
    // In-degree left of each event not yet ordered, DONE for those ordered.
    let mut indeg: Vec<u32> = (0..n).map(|i| program.pred(i).is_some() as u32).collect();
    for (a, b, k) in cross {
        if let Some(k) = CrossEdge::pack(k).filter(|_| a != b) {
            g.add_edge(NodeIndex::new(a as usize), NodeIndex::new(b as usize), k);
            indeg[b as usize] += 1;
        }
    }
    let t_corr = |i: usize| {
        let e = &trace.events[i];
        clocks.corrected(e.node, e.t_raw)
    };
    let unc = |id: usize| clocks.uncertainty(trace.events[id].node);
    let mut heap: BinaryHeap<Reverse<(i64, u32)>> = (0..n).filter(|&i| indeg[i] == 0).map(|i| Reverse((t_corr(i), i as u32))).collect();
    let mut removed = vec![false; g.edge_count()];
    let mut out = Order { order: Vec::with_capacity(n), t_ns: vec![0; n], group: vec![NO_GROUP; n], cycles: Vec::new() };

    let nodes = trace.nodes.len();
    // Vector clocks, flat: node k's latest clock at [k*nodes..], and a slab of clocks of
    // events whose cross-edge successors are not ordered yet (slot, successors left).
    let mut node_vc: Vec<u32> = vec![0; nodes * nodes];
    let mut slab: Vec<u32> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut pending: rustc_hash::FxHashMap<u32, (usize, u32)> = rustc_hash::FxHashMap::default();
    let mut vc: Vec<u32> = vec![0; nodes];
    // The current run of pairwise-concurrent events (at most one per node).
    let mut run: Vec<usize> = Vec::new();
    let mut next_group = 0u32;
    // Events before this position of the order were handed to `on_placed`.
    let mut placed = 0usize;
    let mut batch: Vec<Placed> = Vec::with_capacity(PLACED_BATCH);
    let mut hand_over = |out: &Order, upto: usize, placed: &mut usize| {
        batch.clear();
        batch.extend(out.order[*placed..upto].iter().map(|&id| Placed { id, t_ns: out.t_ns[id as usize], group: out.group[id as usize] }));
        *placed = upto;
        on_placed(&batch);
    };

    let mut by_time: Option<Vec<(i64, u32)>> = None;
    let mut cursor = 0usize;
    let mut scratch: Option<Scratch> = None;
    while out.order.len() < n {
        let Some(Reverse((_, id))) = heap.pop() else {
            // Stalled: a cycle among what is left. Report it, drop its weakest edge, go on.
            // The earliest event not yet ordered, by corrected time: events sorted once, at
            // the first stall, and a cursor that only moves forward past ordered ones.
            let by_time = by_time.get_or_insert_with(|| {
                let mut v: Vec<(i64, u32)> = (0..n).filter(|&i| indeg[i] != DONE).map(|i| (t_corr(i), i as u32)).collect();
                v.sort_unstable();
                v
            });
            while by_time.get(cursor).is_some_and(|&(_, i)| indeg[i as usize] == DONE) {
                cursor += 1;
            }
            let start = by_time.get(cursor).map(|&(_, i)| i as usize);
            let scratch = scratch.get_or_insert_with(|| Scratch::new(n));
            let Some(report) = start.and_then(|start| break_cycle(&g, &program, &indeg, &removed, &t_corr, start, scratch)) else {
                // Nothing left to break (cannot happen with a consistent graph): keep every
                // event anyway, in corrected time.
                let mut rest: Vec<usize> = (0..n).filter(|&i| indeg[i] != DONE).collect();
                rest.sort_by_key(|&i| t_corr(i));
                for i in rest {
                    out.t_ns[i] = t_corr(i);
                    out.order.push(i as EventId);
                }
                break;
            };
            let (a, b, _) = report.dropped;
            let e = g
                .edges_connecting(NodeIndex::new(a as usize), NodeIndex::new(b as usize))
                .find(|e| e.weight().kind() == report.dropped.2 && !removed[e.id().index()])
                .map(|e| e.id());
            if let Some(e) = e {
                removed[e.index()] = true;
                indeg[b as usize] -= 1;
                if indeg[b as usize] == 0 {
                    heap.push(Reverse((t_corr(b as usize), b)));
                }
                if let Some(p) = pending.get_mut(&a) {
                    p.1 = p.1.saturating_sub(1);
                    if p.1 == 0 {
                        free.push(p.0);
                        pending.remove(&a);
                    }
                }
            }
            out.cycles.push(report);
            continue;
        };
        let i = id as usize;
        indeg[i] = DONE;
        out.order.push(id);
        let node = trace.events[i].node as usize;
        // Causally consistent time and vector clock from all predecessors.
        let mut t = t_corr(i);
        if let Some(p) = program.pred(i) {
            t = t.max(out.t_ns[p]);
        }
        vc.copy_from_slice(&node_vc[node * nodes..(node + 1) * nodes]);
        for e in g.edges_directed(NodeIndex::new(i), Incoming) {
            if removed[e.id().index()] {
                continue;
            }
            let p = e.source().index();
            t = t.max(out.t_ns[p]);
            if let Some((slot, left)) = pending.get_mut(&(p as u32)) {
                for (x, y) in vc.iter_mut().zip(&slab[*slot * nodes..(*slot + 1) * nodes]) {
                    *x = (*x).max(*y);
                }
                *left = left.saturating_sub(1);
                if *left == 0 {
                    free.push(*slot);
                    pending.remove(&(p as u32));
                }
            }
        }
        let pos_i = program.pos(i);
        vc[node] = pos_i + 1;
        out.t_ns[i] = t;
        // Concurrent with every event of the current run: no path from any of them, and
        // within clock error of each. Otherwise the run ends here and a new one starts.
        let joins = !run.is_empty()
            && run.iter().all(|&a| {
                let na = trace.events[a].node as usize;
                vc[na] <= program.pos(a) && (t_corr(i) - t_corr(a)).abs() <= unc(a) + unc(i)
            });
        if !joins {
            close_run(&mut run, &mut out.group, &mut next_group);
            // Everything before this event is final now: its run is closed.
            if out.order.len() - 1 - placed >= PLACED_BATCH {
                hand_over(&out, out.order.len() - 1, &mut placed);
            }
        }
        run.push(i);
        if let Some(s) = program.succ(i) {
            indeg[s] -= 1;
            if indeg[s] == 0 {
                heap.push(Reverse((t_corr(s), s as u32)));
            }
        }
        let mut cross_out = 0;
        for e in g.edges_directed(NodeIndex::new(i), Outgoing) {
            if removed[e.id().index()] {
                continue;
            }
            let s = e.target().index();
            cross_out += 1;
            indeg[s] -= 1;
            if indeg[s] == 0 {
                heap.push(Reverse((t_corr(s), s as u32)));
            }
        }
        if cross_out > 0 {
            let slot = free.pop().unwrap_or_else(|| {
                slab.resize(slab.len() + nodes, 0);
                slab.len() / nodes - 1
            });
            slab[slot * nodes..(slot + 1) * nodes].copy_from_slice(&vc);
            pending.insert(id, (slot, cross_out));
        }
        node_vc[node * nodes..(node + 1) * nodes].copy_from_slice(&vc);
    }
    close_run(&mut run, &mut out.group, &mut next_group);
    if placed < out.order.len() {
        hand_over(&out, out.order.len(), &mut placed);
    }
    out
}

/// Gives a run of two or more concurrent events a group id.
fn close_run(run: &mut Vec<usize>, group: &mut [u32], next: &mut u32) {
    if run.len() >= 2 {
        for &e in run.iter() {
            group[e] = *next;
        }
        *next += 1;
    }
    run.clear();
}

/// Marks reused by every cycle search, so that each costs what it visits, not the trace's
/// size: an event's mark counts only when it equals the current search's stamp.
struct Scratch {
    stamp: u32,
    walk: Vec<u32>,
    /// Where the backward walk met each event (index into its path).
    walk_pos: Vec<u32>,
    bfs: Vec<u32>,
    /// How the forward search reached each event.
    bfs_prev: Vec<(u32, EdgeKind)>,
}

impl Scratch {
    fn new(n: usize) -> Scratch {
        Scratch { stamp: 0, walk: vec![0; n], walk_pos: vec![0; n], bfs: vec![0; n], bfs_prev: vec![(0, EdgeKind::Program); n] }
    }

    /// A fresh stamp; all marks are cleared when the counter wraps.
    fn next(&mut self) -> u32 {
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.walk.fill(0);
            self.bfs.fill(0);
            self.stamp = 1;
        }
        self.stamp
    }
}

/// Events a search for a shorter cycle may visit, per cross edge tried.
const SEARCH_BUDGET: usize = 512;
/// Cross edges of a found cycle tried for a shorter one through them.
const SEARCH_EDGES: usize = 3;

/// Finds a short cycle among the events not yet ordered, from `start`, and names its
/// cross-node edges.
///
/// When Kahn's algorithm stalls, every unordered event has a live predecessor that is
/// unordered too, so walking predecessors backwards must close a cycle. A few of its cross
/// edges are then tried for a shorter cycle through them (BFS). Both searches are bounded,
/// so that breaking thousands of contradictions stays near-linear in the trace.
fn break_cycle(
    g: &Graph,
    program: &ProgramOrder<'_>,
    indeg: &[u32],
    removed: &[bool],
    t_corr: &dyn Fn(usize) -> i64,
    start: usize,
    scratch: &mut Scratch,
) -> Option<CycleReport> {
    let live = |e: EdgeIndex| !removed[e.index()];
    let done = |i: usize| indeg[i] == DONE;
    let walk = scratch.next();
    let mut path: Vec<(usize, usize, EdgeKind)> = Vec::new(); // (from, to, kind), walked backwards
    let mut x = start;
    let cycle_from = loop {
        if scratch.walk[x] == walk {
            break scratch.walk_pos[x] as usize;
        }
        scratch.walk[x] = walk;
        scratch.walk_pos[x] = path.len() as u32;
        // Prefer a cross edge: it leads to the contradiction faster than program order.
        let mut best = program.pred(x).filter(|&p| !done(p)).map(|p| (p, EdgeKind::Program));
        for e in g.edges_directed(NodeIndex::new(x), Incoming) {
            let p = e.source().index();
            if done(p) || !live(e.id()) {
                continue;
            }
            best = Some((p, e.weight().kind()));
        }
        let (p, k) = best?;
        path.push((p, x, k));
        x = p;
    };
    let cycle: Vec<(usize, usize, EdgeKind)> = path[cycle_from..].to_vec();
    // Shortest cycle through each of its cross edges.
    let mut best: Option<Vec<(EventId, EventId, EdgeKind)>> = None;
    for &(u, v, kind) in cycle.iter().filter(|c| c.2 != EdgeKind::Program).take(SEARCH_EDGES) {
        let bfs = scratch.next();
        let mut visited = 0usize;
        let mut q = VecDeque::from([v]);
        let mut found = v == u;
        while let Some(y) = q.pop_front() {
            if y == u {
                found = true;
                break;
            }
            if visited > SEARCH_BUDGET {
                break;
            }
            let live_out =
                g.edges_directed(NodeIndex::new(y), Outgoing).filter(|f| live(f.id())).map(|f| (f.target().index(), f.weight().kind()));
            for (z, k) in program.succ(y).map(|z| (z, EdgeKind::Program)).into_iter().chain(live_out) {
                if done(z) || z == v || scratch.bfs[z] == bfs {
                    continue;
                }
                scratch.bfs[z] = bfs;
                scratch.bfs_prev[z] = (y as u32, k);
                visited += 1;
                q.push_back(z);
            }
        }
        if !found {
            continue;
        }
        let mut edges = vec![(u as EventId, v as EventId, kind)];
        let mut y = u;
        while y != v {
            let (p, k) = scratch.bfs_prev[y];
            let p = p as usize;
            if k != EdgeKind::Program {
                edges.push((p as EventId, y as EventId, k));
            }
            y = p;
        }
        if best.as_ref().is_none_or(|b| edges.len() < b.len()) {
            best = Some(edges);
        }
    }
    let edges = best
        .unwrap_or_else(|| cycle.iter().filter(|c| c.2 != EdgeKind::Program).map(|&(a, b, k)| (a as EventId, b as EventId, k)).collect());
    // Drop a rule edge before a message edge; among equals, the one that runs most backwards in time.
    let dropped = *edges.iter().max_by_key(|(a, b, k)| (matches!(k, EdgeKind::Rule(_)), t_corr(*a as usize) - t_corr(*b as usize)))?;
    Some(CycleReport { edges, dropped })
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{Offsets, SameClock, addr, recv, send, trace, udp};
    use super::super::trace::NodeId;
    use super::*;

    fn placed_in_batches(t: &Trace, clocks: &dyn TimeMap, cross: &[(EventId, EventId, EdgeKind)]) -> (Order, Vec<Placed>) {
        let mut batches = Vec::new();
        let order = order(t, clocks, cross.iter().copied(), &mut |b| batches.extend_from_slice(b));
        (order, batches)
    }

    #[test]
    fn a_receive_comes_after_its_send_even_when_its_clock_says_otherwise() {
        // n2's clock is 5 ms behind and the offset is unknown to the order (same clock):
        // its receive reads earlier than the send.
        let t = trace(vec![vec![send(10_000_000, udp(addr(0), addr(1), 1, b"m"))], vec![recv(5_000_100, udp(addr(0), addr(1), 1, b"m"))]]);
        let (o, placed) = placed_in_batches(&t, &SameClock, &[(0, 1, EdgeKind::Message(0))]);
        assert_eq!(o.order, vec![0, 1]);
        assert!(o.t_ns[1] >= o.t_ns[0], "corrected times are made causally consistent: {:?}", o.t_ns);
        assert!(o.cycles.is_empty());
        assert_eq!(placed.iter().map(|p| p.id).collect::<Vec<_>>(), o.order, "every event handed out once, in order");
        assert_eq!(placed[1].t_ns, o.t_ns[1]);
    }

    #[test]
    fn unrelated_events_within_the_clock_uncertainty_are_concurrent() {
        struct Unsure;
        impl TimeMap for Unsure {
            fn corrected(&self, _: NodeId, t: i64) -> i64 {
                t
            }
            fn uncertainty(&self, _: NodeId) -> i64 {
                1_000
            }
        }
        let t = trace(vec![vec![send(100, udp(addr(0), addr(2), 1, b"a"))], vec![send(150, udp(addr(1), addr(2), 2, b"b"))]]);
        let o = order(&t, &Unsure, std::iter::empty(), &mut |_| {});
        assert_ne!(o.group[0], NO_GROUP);
        assert_eq!(o.group[0], o.group[1]);
        let o = order(&t, &SameClock, std::iter::empty(), &mut |_| {});
        assert_eq!(o.group, vec![NO_GROUP, NO_GROUP], "known clocks order them");
    }

    #[test]
    fn a_three_edge_cycle_is_named_edge_by_edge_and_broken_at_one_of_them() {
        // n1 receives m3 before it sends m1, n2 receives m1 before it sends m2, n3 receives
        // m2 before it sends m3: with program order, the three messages make a cycle.
        let m = |i: u16, from: u8, to: u8| udp(addr(from), addr(to), i, b"m");
        let t = trace(vec![
            vec![recv(0, m(3, 2, 0)), send(10, m(1, 0, 1))],
            vec![recv(20, m(1, 0, 1)), send(30, m(2, 1, 2))],
            vec![recv(40, m(2, 1, 2)), send(50, m(3, 2, 0))],
        ]);
        // Events: n1 = 0 (recv m3), 1 (send m1); n2 = 2, 3; n3 = 4, 5.
        let cross = [(1, 2, EdgeKind::Message(0)), (3, 4, EdgeKind::Message(1)), (5, 0, EdgeKind::Message(2))];
        let (o, placed) = placed_in_batches(&t, &Offsets(vec![0, 0, 0]), &cross);
        assert_eq!(o.cycles.len(), 1, "{:?}", o.cycles);
        let c = &o.cycles[0];
        let mut named: Vec<_> = c.edges.clone();
        named.sort_by_key(|e| e.0);
        assert_eq!(named, cross.to_vec(), "the cycle names its three message edges");
        assert!(cross.contains(&c.dropped), "one of them is dropped: {:?}", c.dropped);
        let mut all = o.order.clone();
        all.sort_unstable();
        assert_eq!(all, (0..6).collect::<Vec<_>>(), "every event is still placed once");
        assert_eq!(placed.len(), 6);
        // Every edge but the dropped one holds in the order.
        let pos = |id: EventId| o.order.iter().position(|&x| x == id).unwrap();
        for &(a, b, k) in cross.iter().filter(|e| **e != c.dropped) {
            assert!(pos(a) < pos(b), "{a} before {b} ({k:?})");
        }
        for n in 0..3u32 {
            assert!(pos(2 * n) < pos(2 * n + 1), "program order on node {n}");
        }
    }
}
