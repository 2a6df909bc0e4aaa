//! Estimating each node's clock against a reference node, from the traffic itself.
//!
//! For nodes A and B let θ(x) = clock_B − clock_A at A-time x, modelled as a + b·(x − x0)
//! (offset and drift). A message A→B sent at A-time s and received at B-time r gives
//! θ < r − s; one B→A sent at B-time s and received at A-time r gives θ > s − r. The
//! feasible (a, b) lie between the lower convex hull of the upper bounds and the upper
//! hull of the lower bounds. For each slope the feasible offsets form an interval; we
//! take the slopes for which it is non-empty and report the range of θ(x0) over them as
//! the uncertainty (as in convex-hull trace synchronisation). Message bounds that
//! contradict the rest (a wrong match) are dropped, the worst first, and counted. Trigger
//! receipts add weak two-sided bounds, used only where they agree with the messages (or
//! where there are none). Pairs are chained to a reference node through the spanning tree
//! with the least total uncertainty.

use petgraph::algo::min_spanning_tree;
use petgraph::data::FromElements;
use petgraph::graph::{NodeIndex, UnGraph};
use petgraph::visit::{Bfs, EdgeRef};

use super::matching::TimeMap;
use super::steps::ClockStep;
use super::trace::{EventId, NodeId, Trace};

/// Largest drift considered, as a fraction (1000 ppm).
pub const MAX_DRIFT: f64 = 1e-3;
/// How far apart in true time the trigger broadcast may reach two nodes, ns.
pub const TRIGGER_SPREAD_NS: f64 = 50e6;
/// Uncertainty at or below which a clock is called accurate, ns.
pub const ACCURATE_NS: i64 = 1_000_000;

/// y = to + slope · (x − from), on integers with an f64 slope near 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine {
    pub from: i64,
    pub to: i64,
    pub slope: f64,
}

impl Affine {
    pub const IDENTITY: Affine = Affine { from: 0, to: 0, slope: 1.0 };
    pub fn apply(&self, x: i64) -> i64 {
        // Only the small deviation goes through f64: epoch ns do not fit its mantissa.
        let d = x - self.from;
        self.to + d + ((self.slope - 1.0) * d as f64).round() as i64
    }
    /// self first, then g.
    pub fn then(&self, g: &Affine) -> Affine {
        Affine { from: self.from, to: g.apply(self.to), slope: self.slope * g.slope }
    }
    pub fn inverse(&self) -> Affine {
        Affine { from: self.to, to: self.from, slope: 1.0 / self.slope }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    Accurate,
    Approximate,
    Insufficient,
}

#[derive(Clone, Debug)]
pub struct NodeClock {
    /// Node raw time → reference time.
    pub to_ref: Affine,
    /// Node clock minus reference clock, at the middle of the node's window, ns.
    pub offset_ns: i64,
    /// Drift against the reference (fraction).
    pub drift: f64,
    /// Bound on the error of `offset_ns` (None: unknown, the clock was assumed NTP-aligned).
    pub uncertainty_ns: Option<i64>,
    pub quality: Quality,
}

/// One pair's estimate: θ at `x0` (A's clock), drift, uncertainty; and how it was found.
#[derive(Clone, Debug)]
pub struct PairEstimate {
    pub a: NodeId,
    pub b: NodeId,
    pub x0: i64,
    pub theta: f64,
    pub drift: f64,
    pub uncertainty: f64,
    pub both_directions: bool,
    /// The bounds contradict each other (a wrong match, or a clock step).
    pub inconsistent: bool,
    pub messages: usize,
    /// Weak bounds (trigger receipts) left out because they contradict the messages.
    pub dropped_weak: usize,
    /// Message bounds left out because they contradict the others (a wrong match, a clock step).
    pub dropped_strong: usize,
}

pub struct Clocks {
    pub reference: NodeId,
    pub nodes: Vec<NodeClock>,
    pub pairs: Vec<PairEstimate>,
    /// Steps found in the nodes' clocks, by node and time; the trace has them undone, so
    /// `to_ref` maps a node's undone raw time (see [`ClockStep`]).
    pub steps: Vec<ClockStep>,
}

impl Clocks {
    /// A node's offset against the reference in each segment between its steps:
    /// (start on the node's undone clock, None for the first; offset ns).
    pub fn segments(&self, node: NodeId) -> Vec<(Option<i64>, i64)> {
        let mut offset = self.nodes[node as usize].offset_ns;
        let mut out = vec![(None, offset)];
        for s in self.steps.iter().filter(|s| s.node == node) {
            offset += s.size_ns;
            out.push((Some(s.at_raw), offset));
        }
        out
    }
}

impl TimeMap for Clocks {
    fn corrected(&self, node: NodeId, t_raw: i64) -> i64 {
        self.nodes[node as usize].to_ref.apply(t_raw)
    }
    fn uncertainty(&self, node: NodeId) -> i64 {
        self.nodes[node as usize].uncertainty_ns.unwrap_or(0)
    }
    fn known(&self, node: NodeId) -> bool {
        self.nodes[node as usize].uncertainty_ns.is_some()
    }
}

#[derive(Default)]
struct PairPoints {
    /// (x, y): θ(x) < y, from messages.
    upper: Vec<(i64, i64)>,
    /// (x, y): θ(x) > y, from messages.
    lower: Vec<(i64, i64)>,
    /// The same from weak evidence: trigger receipts.
    weak_upper: Vec<(i64, i64)>,
    weak_lower: Vec<(i64, i64)>,
    messages: usize,
    two_way: [bool; 2],
}

/// Message bounds dropped at most, per pair, to make the rest consistent: a few wrong
/// matches are dropped; more than this is not a few, and the pair stays inconsistent.
const MAX_DROPPED: usize = 32;

impl PairPoints {
    /// The pair's estimate: from the messages, made consistent by dropping the fewest
    /// contradicting bounds (one at a time, the worst first); then with the weak bounds
    /// too, where they agree with it. Weak bounds alone serve where there are no messages.
    fn estimate(&mut self, wa: (i64, i64), wb: (i64, i64)) -> Option<PairEstimate> {
        let weak = self.weak_upper.len() + self.weak_lower.len();
        if self.upper.is_empty() && self.lower.is_empty() {
            return (!self.weak_upper.is_empty() && !self.weak_lower.is_empty())
                .then(|| estimate_pair(&mut self.weak_upper, &mut self.weak_lower, wa, wb));
        }
        let mut dropped_strong = 0;
        let strong = if self.upper.is_empty() || self.lower.is_empty() {
            None
        } else {
            let mut e = estimate_pair(&mut self.upper, &mut self.lower, wa, wb);
            while e.inconsistent && dropped_strong < MAX_DROPPED && self.upper.len() + self.lower.len() > 2 {
                // The bound the least-bad line violates most goes.
                let line = |x: i64| e.theta + e.drift * (x - e.x0) as f64;
                let worst_up = self.upper.iter().enumerate().map(|(i, &(x, y))| (line(x) - y as f64, i)).max_by(|a, b| a.0.total_cmp(&b.0));
                let worst_lo = self.lower.iter().enumerate().map(|(i, &(x, y))| (y as f64 - line(x), i)).max_by(|a, b| a.0.total_cmp(&b.0));
                match (worst_up, worst_lo) {
                    (Some(u), Some(l)) if u.0 >= l.0 && self.upper.len() > 1 => self.upper.swap_remove(u.1),
                    (_, Some(l)) if self.lower.len() > 1 => self.lower.swap_remove(l.1),
                    (Some(u), _) if self.upper.len() > 1 => self.upper.swap_remove(u.1),
                    _ => break,
                };
                dropped_strong += 1;
                e = estimate_pair(&mut self.upper, &mut self.lower, wa, wb);
            }
            Some(e)
        };
        let mut best = strong;
        let mut dropped_weak = weak;
        if weak > 0 && best.as_ref().is_none_or(|e| !e.inconsistent) {
            let (mut up, mut lo) = (self.upper.clone(), self.lower.clone());
            up.extend_from_slice(&self.weak_upper);
            lo.extend_from_slice(&self.weak_lower);
            if !up.is_empty() && !lo.is_empty() {
                let with_weak = estimate_pair(&mut up, &mut lo, wa, wb);
                if !with_weak.inconsistent {
                    best = Some(with_weak);
                    dropped_weak = 0;
                }
            }
        }
        let mut e = best?;
        e.dropped_strong = dropped_strong;
        e.dropped_weak = dropped_weak;
        Some(e)
    }
}

pub fn estimate(trace: &Trace, messages: &[(EventId, EventId)]) -> Clocks {
    let n = trace.nodes.len();
    let mut points: Vec<PairPoints> = (0..n * n).map(|_| PairPoints::default()).collect();
    for &(s, r) in messages {
        let (se, re) = (&trace.events[s as usize], &trace.events[r as usize]);
        if se.node == re.node {
            continue;
        }
        let (a, b) = (se.node.min(re.node), se.node.max(re.node));
        let p = &mut points[a as usize * n + b as usize];
        p.messages += 1;
        if se.node == a {
            // a→b: θ(s) < r − s, x on a's clock.
            p.upper.push((se.t_raw, re.t_raw - se.t_raw));
            p.two_way[0] = true;
        } else {
            // b→a: θ(r) > s − r, x on a's clock.
            p.lower.push((re.t_raw, se.t_raw - re.t_raw));
            p.two_way[1] = true;
        }
    }
    for a in 0..n {
        for b in a + 1..n {
            if let (Some(ha), Some(hb)) = (trace.nodes[a].trigger_heard, trace.nodes[b].trigger_heard) {
                let p = &mut points[a * n + b];
                let d = hb - ha;
                p.weak_upper.push((ha, d + TRIGGER_SPREAD_NS as i64));
                p.weak_lower.push((ha, d - TRIGGER_SPREAD_NS as i64));
            }
        }
    }
    use rayon::prelude::*;
    let pairs: Vec<PairEstimate> = points
        .par_iter_mut()
        .enumerate()
        .filter_map(|(k, p)| {
            let (a, b) = (k / n, k % n);
            if a >= b {
                return None;
            }
            let mut est = p.estimate(trace.nodes[a].window, trace.nodes[b].window)?;
            est.a = a as NodeId;
            est.b = b as NodeId;
            est.both_directions = p.two_way[0] && p.two_way[1];
            est.messages = p.messages;
            Some(est)
        })
        .collect();
    chain(trace, pairs)
}

/// Lower convex hull of points sorted by x (what bounds θ from above).
fn lower_hull(pts: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut h: Vec<(f64, f64)> = Vec::new();
    for &p in pts {
        while h.len() >= 2 {
            let (o, a) = (h[h.len() - 2], h[h.len() - 1]);
            if (a.0 - o.0) * (p.1 - o.1) - (a.1 - o.1) * (p.0 - o.0) <= 0.0 {
                h.pop();
            } else {
                break;
            }
        }
        h.push(p);
    }
    h
}

fn upper_hull(pts: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let flipped: Vec<(f64, f64)> = pts.iter().map(|&(x, y)| (x, -y)).collect();
    lower_hull(&flipped).into_iter().map(|(x, y)| (x, -y)).collect()
}

/// `wa` and `wb`: the two nodes' recording windows (each on its own clock); the
/// uncertainty holds anywhere in them.
fn estimate_pair(upper: &mut [(i64, i64)], lower: &mut [(i64, i64)], wa: (i64, i64), wb: (i64, i64)) -> PairEstimate {
    let all_x: Vec<i64> = upper.iter().chain(lower.iter()).map(|p| p.0).collect();
    let (xmin, xmax) = (*all_x.iter().min().expect("non-empty"), *all_x.iter().max().expect("non-empty"));
    let x0 = xmin + (xmax - xmin) / 2;
    let rel = |v: &mut [(i64, i64)]| {
        v.sort_unstable();
        v.iter().map(|&(x, y)| ((x - x0) as f64, y as f64)).collect::<Vec<_>>()
    };
    let up = lower_hull(&rel(upper));
    let lo = upper_hull(&rel(lower));
    let a_hi = |b: f64| up.iter().map(|&(x, y)| y - b * x).fold(f64::INFINITY, f64::min);
    let a_lo = |b: f64| lo.iter().map(|&(x, y)| y - b * x).fold(f64::NEG_INFINITY, f64::max);
    let width = |b: f64| a_hi(b) - a_lo(b);
    // width is concave in b: ternary search for its maximum.
    let (mut l, mut r) = (-MAX_DRIFT, MAX_DRIFT);
    for _ in 0..100 {
        let (m1, m2) = (l + (r - l) / 3.0, r - (r - l) / 3.0);
        if width(m1) < width(m2) { l = m1 } else { r = m2 }
    }
    let b_star = (l + r) / 2.0;
    let w_star = width(b_star);
    if w_star < 0.0 {
        // Contradicting bounds: the least-bad line, with its violation as uncertainty.
        return PairEstimate {
            a: 0,
            b: 0,
            x0,
            theta: (a_hi(b_star) + a_lo(b_star)) / 2.0,
            drift: b_star,
            uncertainty: -w_star / 2.0,
            both_directions: false,
            inconsistent: true,
            messages: 0,
            dropped_weak: 0,
            dropped_strong: 0,
        };
    }
    // The feasible slopes [b1, b2] around b_star, by bisection on the edges of width >= 0.
    let edge = |mut inside: f64, mut outside: f64| {
        if width(outside) >= 0.0 {
            return outside;
        }
        for _ in 0..100 {
            let mid = (inside + outside) / 2.0;
            if width(mid) >= 0.0 { inside = mid } else { outside = mid }
        }
        inside
    };
    let (b1, b2) = (edge(b_star, -MAX_DRIFT), edge(b_star, MAX_DRIFT));
    // θ(x0) ranges over [min a_lo, max a_hi] on [b1, b2]; a_lo is convex, a_hi concave.
    let extreme = |f: &dyn Fn(f64) -> f64, maximize: bool| {
        let (mut l, mut r) = (b1, b2);
        for _ in 0..100 {
            let (m1, m2) = (l + (r - l) / 3.0, r - (r - l) / 3.0);
            let better = if maximize { f(m1) < f(m2) } else { f(m1) > f(m2) };
            if better { l = m1 } else { r = m2 }
        }
        f((l + r) / 2.0)
    };
    let hi = extreme(&a_hi, true);
    let lo_v = extreme(&a_lo, false);
    let theta = (hi + lo_v) / 2.0;
    // The true (offset, drift) lies in the feasible set: its offset at x0 within half the
    // range of θ(x0), its drift within half of [b1, b2] from the middle one. So away from
    // x0 the error grows by that half-width times the distance, up to the farthest point
    // of either node's recording (b's window moved onto a's clock by θ).
    let far = [wa.0, wa.1, wb.0 - theta as i64, wb.1 - theta as i64, xmin, xmax].iter().map(|&t| (t - x0).unsigned_abs()).max().unwrap_or(0)
        as f64;
    PairEstimate {
        a: 0,
        b: 0,
        x0,
        theta,
        drift: (b1 + b2) / 2.0,
        uncertainty: (hi - lo_v) / 2.0 + (b2 - b1) / 2.0 * far,
        both_directions: false,
        inconsistent: false,
        messages: 0,
        dropped_weak: 0,
        dropped_strong: 0,
    }
}

/// Chains pair estimates into one clock per node, via the least-uncertain spanning tree.
fn chain(trace: &Trace, pairs: Vec<PairEstimate>) -> Clocks {
    let n = trace.nodes.len();
    let mut g: UnGraph<(), usize> = UnGraph::with_capacity(n, pairs.len());
    for _ in 0..n {
        g.add_node(());
    }
    // Kruskal on uncertainty: weights must be ordered; scale to integers.
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_by(|&x, &y| pairs[x].uncertainty.total_cmp(&pairs[y].uncertainty));
    let mut rank = vec![0usize; pairs.len()];
    for (r, &i) in order.iter().enumerate() {
        rank[i] = r;
    }
    for (i, p) in pairs.iter().enumerate() {
        g.add_edge(NodeIndex::new(p.a as usize), NodeIndex::new(p.b as usize), rank[i]);
    }
    let tree: UnGraph<(), usize> = UnGraph::from_elements(min_spanning_tree(&g));
    // The reference is the node with the most messages in the tree, ties to the lowest id.
    let mut weight = vec![0usize; n];
    for p in &pairs {
        weight[p.a as usize] += p.messages;
        weight[p.b as usize] += p.messages;
    }
    let reference = (0..n).max_by_key(|&i| (weight[i], std::cmp::Reverse(i))).unwrap_or(0) as NodeId;

    let mut to_ref: Vec<Option<(Affine, f64, bool, bool)>> = vec![None; n];
    to_ref[reference as usize] = Some((Affine::IDENTITY, 0.0, true, true));
    let mut bfs = Bfs::new(&tree, NodeIndex::new(reference as usize));
    while let Some(u) = bfs.next(&tree) {
        let (u_map, u_unc, u_two, u_ok) = to_ref[u.index()].expect("visited in BFS order");
        for e in tree.edges(u) {
            let v = if e.source() == u { e.target() } else { e.source() };
            if to_ref[v.index()].is_some() {
                continue;
            }
            let p = &pairs[order[*e.weight()]];
            // Pair map: b's raw time -> a's raw time.
            let b_to_a = Affine { from: p.x0 + p.theta.round() as i64, to: p.x0, slope: 1.0 / (1.0 + p.drift) };
            let v_to_u = if v.index() == p.b as usize { b_to_a } else { b_to_a.inverse() };
            to_ref[v.index()] = Some((v_to_u.then(&u_map), u_unc + p.uncertainty, u_two && p.both_directions, u_ok && !p.inconsistent));
        }
    }
    let nodes = (0..n)
        .map(|i| {
            let info = &trace.nodes[i];
            let mid = info.window.0 + (info.window.1 - info.window.0) / 2;
            match to_ref[i] {
                Some((map, unc, two_way, consistent)) => {
                    let unc = unc.ceil() as i64;
                    let quality = if i == reference as usize || (two_way && consistent && unc <= ACCURATE_NS) {
                        Quality::Accurate
                    } else {
                        Quality::Approximate
                    };
                    NodeClock {
                        to_ref: map,
                        offset_ns: mid - map.apply(mid),
                        drift: 1.0 / map.slope - 1.0,
                        uncertainty_ns: Some(unc),
                        quality,
                    }
                }
                None => {
                    NodeClock { to_ref: Affine::IDENTITY, offset_ns: 0, drift: 0.0, uncertainty_ns: None, quality: Quality::Insufficient }
                }
            }
        })
        .collect();
    Clocks { reference, nodes, pairs, steps: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affine_composes_and_inverts() {
        let f = Affine { from: 1000, to: 5000, slope: 1.0001 };
        let g = Affine { from: 7000, to: 0, slope: 0.5 };
        let h = f.then(&g);
        assert_eq!(Affine::IDENTITY.apply(1_795_265_550_158_822_443), 1_795_265_550_158_822_443);
        for x in [0, 1000, 123_456, -50_000] {
            assert!((h.apply(x) - g.apply(f.apply(x))).abs() <= 1);
            assert!((f.inverse().apply(f.apply(x)) - x).abs() <= 1);
        }
    }

    #[test]
    fn pair_bounds_contain_the_truth() {
        // θ(x) = 3 ms + 100 ppm · x; delays 50..250 µs both ways.
        let theta = |x: i64| 3_000_000.0 + 1e-4 * x as f64;
        let mut upper = Vec::new();
        let mut lower = Vec::new();
        for i in 0..200i64 {
            let x = i * 50_000_000; // every 50 ms of A-time, over 10 s
            let d = 50_000 + (i * 7919 % 200_000);
            upper.push((x, (theta(x) + d as f64) as i64));
            lower.push((x + 1000, (theta(x + 1000) - d as f64) as i64));
        }
        let window = (0, 200 * 50_000_000);
        let e = estimate_pair(&mut upper, &mut lower, window, (window.0 + 3_000_000, window.1 + 3_000_000));
        assert!(!e.inconsistent);
        let truth = theta(e.x0);
        assert!((e.theta - truth).abs() <= e.uncertainty, "theta {} truth {truth} unc {}", e.theta, e.uncertainty);
        assert!(e.uncertainty < 250_000.0, "{}", e.uncertainty);
        assert!((e.drift - 1e-4).abs() < 2e-5, "{}", e.drift);
    }

    /// n2's clock runs 7 ms ahead of n1's; messages go both ways with 100–300 µs delays.
    fn two_nodes(offset: i64, both_ways: bool) -> (Trace, Vec<(EventId, EventId)>) {
        use super::super::testkit::{addr, recv, send, trace_in, udp};
        let (mut n1, mut n2) = (Vec::new(), Vec::new());
        for i in 0..40i64 {
            let t = 100_000_000 + i * 50_000_000;
            let delay = 100_000 + (i * 37 % 200_000);
            let p = || udp(addr(0), addr(1), i as u16, b"ping");
            n1.push(send(t, p()));
            n2.push(recv(t + delay + offset, p()));
            if both_ways {
                let q = || udp(addr(1), addr(0), i as u16, b"pong");
                n2.push(send(t + 1_000_000 + offset, q()));
                n1.push(recv(t + 1_000_000 + delay, q()));
            }
        }
        // The recordings span the traffic: the uncertainty must hold across all of them.
        let t = trace_in(vec![n1, n2], (0, 2_200_000_000));
        let m = super::super::matching::match_messages(&t, &super::super::matching::MatchIndex::new(&t));
        (t, m.messages)
    }

    #[test]
    fn two_way_traffic_bounds_the_offset_tightly() {
        let (t, messages) = two_nodes(7_000_000, true);
        let c = estimate(&t, &messages);
        let n2 = &c.nodes[(1 - c.reference) as usize];
        let sign = if c.reference == 0 { 1 } else { -1 };
        let unc = n2.uncertainty_ns.expect("known");
        assert!((n2.offset_ns - sign * 7_000_000).abs() <= unc, "offset {} ± {unc}", n2.offset_ns);
        assert!(unc <= 300_000, "bounded by the delays: {unc}");
        assert_eq!(n2.quality, Quality::Accurate);
        assert_eq!(c.pairs.len(), 1);
        assert!(c.pairs[0].both_directions && !c.pairs[0].inconsistent);
    }

    #[test]
    fn one_way_traffic_gives_no_accurate_clock() {
        let (t, messages) = two_nodes(7_000_000, false);
        let c = estimate(&t, &messages);
        let other = &c.nodes[(1 - c.reference) as usize];
        assert_ne!(other.quality, Quality::Accurate, "one direction bounds the offset from one side only: {other:?}");
    }
}
