//! Partitions: the cluster split into islands whose messages to each other are lost. The
//! islands come from the evidence over the partition's whole span: nodes that deliver to
//! each other during it, directly or through a chain, are one island; a pair with no
//! traffic is unknown, and unknown never splits an island.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use super::anomalies::{Anomaly, Cause, CauseKind, Context, Facts, Kind, Receipts, Span};
use super::stalls::Stall;
use super::trace::{EventId, NodeId};

/// A partition is claimed on at least this many messages lost across it...
pub const PARTITION_MIN_LOST: usize = 3;
/// ...over at least this long: a client that waits out a timeout after each loss on a
/// lossy link falls as silent as a cut-off node, for about as long...
pub const PARTITION_MIN_NS: i64 = 1_500_000_000;
/// ...unless this many messages were lost across it, over this long at least: a busy
/// cluster shows a short partition plainly.
pub const PARTITION_BUSY_LOST: usize = 10;
pub const PARTITION_BUSY_NS: i64 = 250_000_000;
/// Deliveries between a pair's losses in this many places make it a lossy link, not a cut:
/// more than the one or two stragglers that get through while a cut is being made.
const LOSSY_INTERLEAVINGS: usize = 3;
/// Losses in a row on a link are a cut only where the link's own loss rate, outside the
/// partition, would make a run that long somewhere less often than this: at 50% a run of
/// four or five is expected among thirty messages.
const CHANCE: f64 = 1e-3;
/// How long one pair's losses with nothing delivered between them stay one cut: longer
/// than any retry backoff seen in practice, short enough to keep two cuts apart.
pub const PARTITION_MAX_GAP_NS: i64 = 10_000_000_000;
/// How far beyond its first and last loss a partition is known: its edges are where the
/// evidence shows it, give or take a message's cadence. Used where other findings ask
/// whether a partition explains them.
pub const PARTITION_WINDOW_NS: i64 = 250_000_000;

/// One directed link's losses (indices into the losses, in time order) and, per gap before
/// each, whether it delivered then.
#[derive(Default)]
struct LinkLosses {
    ks: Vec<usize>,
    /// The losses' send times, beside `ks`: searched once per delivered message.
    ts: Vec<i64>,
    same: Vec<bool>,
    /// How many messages it delivered, and lost, outside every episode while it lost (from
    /// its first loss to its last): its own rate.
    outside: (usize, usize),
}

/// Whether `k` losses in a row on a link are what its own loss rate makes somewhere by
/// chance: the rate outside every episode (a cut is no rate) while the link lost, among
/// `sent` messages in all.
/// The expected number of runs that long is p^k at the start plus (1 - p) p^k after each
/// delivery.
fn by_chance(k: usize, (delivered, lost): (usize, usize), sent: usize) -> bool {
    if lost == 0 {
        return false;
    }
    let p = lost as f64 / (delivered + lost) as f64;
    let runs = p.powi(k.min(i32::MAX as usize) as i32) * (1.0 + sent.saturating_sub(k) as f64 * (1.0 - p));
    runs >= CHANCE
}

/// The most losses in a row among `mine` (consecutive indices into `l.ks`, time order): a
/// delivery between two of them ends a run. Losses with deliveries between are no run: a
/// link that lost fourteen with two deliveries between lost at most seven in a row.
fn longest_run(l: &LinkLosses, mine: &[usize]) -> usize {
    let (mut best, mut cur) = (0, 0);
    for (i, &g) in mine.iter().enumerate() {
        cur = if i > 0 && l.same[g] { 1 } else { cur + 1 };
        best = best.max(cur);
    }
    best
}

/// How many of the gaps between the losses `mine` (consecutive indices into `l.ks`) saw a
/// delivery.
fn between(l: &LinkLosses, mine: &[usize]) -> usize {
    mine.iter().skip(1).filter(|&&g| l.same[g]).count()
}

/// Whether the link's longest run among its losses `mine` is what its own rate makes by
/// chance. The rate is outside every episode (a cut is no rate), and within this one too
/// where it delivered between its losses then (`between`: no cut, so its stretches that
/// lost most are its rate too, not only the rest; `delivered` then).
fn run_by_chance(l: &LinkLosses, mine: &[usize], between: usize, delivered: usize) -> bool {
    let rate = if between > 0 { (l.outside.0 + delivered, l.outside.1 + mine.len()) } else { l.outside };
    by_chance(longest_run(l, mine), rate, l.outside.0 + l.ks.len())
}

/// A pair's deliveries within an episode: earliest receipt, latest send, how many.
type Delivered = (i64, i64, usize);

/// One lost message between two nodes: (send time, sender, receiver, send, cause).
type Loss = (i64, NodeId, NodeId, EventId, Cause);

fn root(p: &mut [usize], x: usize) -> usize {
    let mut x = x;
    while p[x] != x {
        p[x] = p[p[x]];
        x = p[x];
    }
    x
}

/// The partitions in `lost` (send, receiver, cause): only losses on the path count (the
/// network's and the firewalls'), and none to or from a node stalled then (the stall's).
/// `receivers` are the matched messages' receiving nodes.
pub fn find(ctx: &Context<'_>, lost: &[(EventId, NodeId, Cause)], stalls: &[Stall], receipts: &Receipts) -> Vec<Anomaly> {
    let trace = ctx.trace;
    let n = trace.nodes.len();
    if n < 2 {
        return Vec::new();
    }
    let stalled = |x: NodeId, t: i64| stalls.iter().any(|st| st.node == x && st.from <= t && t <= st.to);
    let mut losses: Vec<Loss> = lost
        .iter()
        .filter(|l| l.2.on_path(trace))
        .map(|&(s, r, c)| (ctx.corr(s), trace.events[s as usize].node, r, s, c))
        .filter(|&(t, a, r, _, _)| a != r && !stalled(a, t) && !stalled(r, t))
        .collect();
    if losses.is_empty() {
        return Vec::new();
    }
    losses.sort_unstable_by_key(|l| (l.0, l.3));
    let pair = |a: NodeId, b: NodeId| (a.min(b), a.max(b));
    // Each directed link's losses in time order, and per gap between two of them (gap k:
    // before its k-th loss) whether it delivered a message both sent and received within the
    // gap, the same way: what the other way delivers says nothing of a one-way cut. A
    // message in flight when the cut began, or TCP bytes sent during the cut that only a
    // merged retransmission delivered after the heal, prove nothing.
    let mut by_pair: FxHashMap<(NodeId, NodeId), LinkLosses> = FxHashMap::default();
    for (k, l) in losses.iter().enumerate() {
        let v = by_pair.entry((l.1, l.2)).or_default();
        v.ks.push(k);
        v.ts.push(l.0);
    }
    // The same per pair, either way (`same` then is delivered either way).
    let mut by_both: FxHashMap<(NodeId, NodeId), LinkLosses> = FxHashMap::default();
    for (k, l) in losses.iter().enumerate() {
        let v = by_both.entry(pair(l.1, l.2)).or_default();
        v.ks.push(k);
        v.ts.push(l.0);
    }
    for v in by_pair.values_mut().chain(by_both.values_mut()) {
        v.same = vec![false; v.ks.len() + 1];
    }
    let messages = &ctx.matching.messages;
    // Which pairs lost anything, in a dense table: this runs once per delivered message.
    let mut lossy_pair = vec![false; n * n];
    for &(x, y) in by_pair.keys() {
        lossy_pair[x as usize * n + y as usize] = true;
    }
    for ((&(s, _), &b), &tr) in messages.iter().zip(&receipts.node).zip(&receipts.at) {
        let a = trace.events[s as usize].node;
        if !lossy_pair[a as usize * n + b as usize] && !lossy_pair[b as usize * n + a as usize] {
            continue;
        }
        let ts = ctx.corr(s);
        for l in [by_pair.get_mut(&(a, b)), by_both.get_mut(&pair(a, b))].into_iter().flatten() {
            let g = l.ts.partition_point(|&t| t < ts);
            if g > 0 && l.ts.get(g).is_some_and(|&t| tr < t) {
                l.same[g] = true;
            }
        }
    }
    // Each link's cuts, and each pair's: runs of losses with nothing delivered between them,
    // that way (a one-way cut) or either way (each side's own firewall, whose drops of the
    // two ways need not overlap in time).
    let mut runs: Vec<Span> = Vec::new();
    for LinkLosses { ks, same: gaps, .. } in by_pair.values().chain(by_both.values()) {
        let mut cur = (losses[ks[0]].0, losses[ks[0]].0);
        for (g, &k) in ks.iter().enumerate().skip(1) {
            let t = losses[k].0;
            if t - cur.1 > PARTITION_MAX_GAP_NS || gaps[g] {
                runs.push(cur);
                cur = (t, t);
            } else {
                cur.1 = t;
            }
        }
        runs.push(cur);
    }
    // Episodes: cuts that overlap in time, of any pairs; only those with enough losses
    // over long enough to be a partition are looked at further.
    runs.sort_unstable();
    let mut episodes: Vec<Span> = Vec::new();
    for r in runs {
        match episodes.last_mut() {
            Some(e) if r.0 <= e.1 => e.1 = e.1.max(r.1),
            _ => episodes.push(r),
        }
    }
    let in_episode = |e: &Span| losses.partition_point(|l| l.0 < e.0)..losses.partition_point(|l| l.0 <= e.1);
    episodes.retain(|e| {
        let n = in_episode(e).len();
        (n >= PARTITION_MIN_LOST && e.1 - e.0 >= PARTITION_MIN_NS) || (n >= PARTITION_BUSY_LOST && e.1 - e.0 >= PARTITION_BUSY_NS)
    });
    if episodes.is_empty() {
        return Vec::new();
    }
    // The directed links that delivered a message both sent and received within each
    // episode, with their earliest receipt and latest send then, and how many.
    let mut delivered: Vec<BTreeMap<(NodeId, NodeId), Delivered>> = vec![BTreeMap::new(); episodes.len()];
    for ((&(s, _), &b), &tr) in messages.iter().zip(&receipts.node).zip(&receipts.at) {
        let a = trace.events[s as usize].node;
        if a == b {
            continue;
        }
        let ts = ctx.corr(s);
        let e = episodes.partition_point(|e| e.0 <= ts);
        if e > 0 && ts <= episodes[e - 1].1 {
            if tr <= episodes[e - 1].1 {
                let d = delivered[e - 1].entry((a, b)).or_insert((tr, ts, 0));
                *d = (d.0.min(tr), d.1.max(ts), d.2 + 1);
            }
        } else if lossy_pair[a as usize * n + b as usize] || lossy_pair[b as usize * n + a as usize] {
            // While the link lost (its first loss to its last): a healthy rest would dilute
            // the rate of a link that loses only for a while.
            for l in [by_pair.get_mut(&(a, b)), by_both.get_mut(&pair(a, b))].into_iter().flatten() {
                if l.ts.first().is_some_and(|&t0| t0 <= ts) && l.ts.last().is_some_and(|&t1| ts <= t1) {
                    l.outside.0 += 1;
                }
            }
        }
    }
    let outside = |t: i64| {
        let e = episodes.partition_point(|e| e.0 <= t);
        e == 0 || t > episodes[e - 1].1
    };
    for l in by_pair.values_mut().chain(by_both.values_mut()) {
        l.outside.1 = l.ks.iter().filter(|&&k| outside(losses[k].0)).count();
    }
    let mut out = Vec::new();
    for (e, span) in episodes.iter().enumerate() {
        let range = in_episode(span);
        // A pair that lost in the episode connects if it delivered between its losses or both
        // before its first and after its last (a link that loses now and then), more than it
        // lost then or between its losses again and again (at 50% a lossy link delivers about
        // as many as it loses), and each way that lost delivered more than a straggler or two
        // that way. Otherwise it was cut: a
        // straggler or two that got through while the cut was being made (firewall rules go
        // in one at a time), what it delivered before its cut began or after it healed while
        // other pairs' cuts went on, or what the other way delivered (a one-way cut), does
        // not undo it.
        let got = |link: &(NodeId, NodeId)| delivered[e].get(link).copied();
        let in_range = |l: &LinkLosses| -> Vec<usize> { (0..l.ks.len()).filter(|&g| range.contains(&l.ks[g])).collect() };
        let connects = |a: NodeId, b: NodeId| {
            let (ab, ba) = (got(&(a, b)), got(&(b, a)));
            if let Some(l) = by_both.get(&(a, b)) {
                let mine = in_range(l);
                if let (Some(&g0), Some(&g1)) = (mine.first(), mine.last()) {
                    let (first_receipt, last_send, count) =
                        [ab, ba].into_iter().flatten().fold((i64::MAX, i64::MIN, 0), |(f, s, c), d| (f.min(d.0), s.max(d.1), c + d.2));
                    let around = first_receipt < losses[l.ks[g0]].0 && last_send > losses[l.ks[g1]].0;
                    let between = between(l, &mine);
                    let lossy = (between > 0 || around) && (count > mine.len() || between >= LOSSY_INTERLEAVINGS);
                    if !lossy && !run_by_chance(l, &mine, between, count) {
                        return false;
                    }
                }
            }
            // Each way that lost delivered more than a straggler or two then, that way.
            [(a, b), (b, a)].iter().all(|link| {
                let Some(l) = by_pair.get(link) else { return true };
                let mine = in_range(l);
                let count = got(link).map_or(0, |d| d.2);
                mine.is_empty() || count >= LOSSY_INTERLEAVINGS || run_by_chance(l, &mine, between(l, &mine), count)
            })
        };
        // The pairs that delivered then, and those that only lost then: their own loss rate
        // may explain it.
        let pairs: std::collections::BTreeSet<(NodeId, NodeId)> =
            delivered[e].keys().map(|&(a, b)| pair(a, b)).chain(losses[range.clone()].iter().map(|l| pair(l.1, l.2))).collect();
        let connected: Vec<(NodeId, NodeId)> = pairs.into_iter().filter(|&(a, b)| connects(a, b)).collect();
        let connected = connected.into_iter();
        if let Some(a) = episode(ctx, &losses[range.clone()], connected) {
            out.push(a);
        }
    }
    out
}

/// The partition of one episode's losses, if they split the cluster; `connected` are the
/// pairs that delivered to each other during it.
fn episode(ctx: &Context<'_>, losses: &[Loss], connected: impl Iterator<Item = (NodeId, NodeId)>) -> Option<Anomaly> {
    let n = ctx.trace.nodes.len();
    let mut active = vec![false; n];
    for l in losses {
        active[l.1 as usize] = true;
        active[l.2 as usize] = true;
    }
    let mut parent: Vec<usize> = (0..n).collect();
    for p in connected {
        active[p.0 as usize] = true;
        active[p.1 as usize] = true;
        let (ra, rb) = (root(&mut parent, p.0 as usize), root(&mut parent, p.1 as usize));
        parent[ra] = rb;
    }
    // Islands that lost nothing to each other are not told apart: unknown never splits.
    let mut islands: BTreeMap<usize, Vec<NodeId>> = BTreeMap::new();
    for x in (0..n).filter(|&x| active[x]) {
        islands.entry(root(&mut parent, x)).or_default().push(x as NodeId);
    }
    let mut isl: Vec<Vec<NodeId>> = islands.into_values().collect();
    let lost_across = |a: &[NodeId], b: &[NodeId]| {
        losses.iter().any(|l| (a.contains(&l.1) && b.contains(&l.2)) || (a.contains(&l.2) && b.contains(&l.1)))
    };
    'merge: loop {
        for i in 0..isl.len() {
            for j in i + 1..isl.len() {
                if !lost_across(&isl[i], &isl[j]) {
                    let b = isl.remove(j);
                    isl[i].extend(b);
                    isl[i].sort_unstable();
                    continue 'merge;
                }
            }
        }
        break;
    }
    if isl.len() < 2 {
        return None;
    }
    isl.sort();
    let side = |x: NodeId| isl.iter().position(|i| i.contains(&x));
    let crossing: Vec<&Loss> = losses.iter().filter(|l| side(l.1) != side(l.2)).collect();
    let (first, last) = (crossing.first()?.0, crossing.last()?.0);
    // One lost message in a quiet moment is no partition: a lossy link does that too.
    let long = crossing.len() >= PARTITION_MIN_LOST && last - first >= PARTITION_MIN_NS;
    let busy = crossing.len() >= PARTITION_BUSY_LOST && last - first >= PARTITION_BUSY_NS;
    if !(long || busy) {
        return None;
    }
    // Where most of them died: in the network, or at the firewalls of one side or the other.
    let mut causes: BTreeMap<(CauseKind, Option<u16>), usize> = BTreeMap::new();
    for l in &crossing {
        *causes.entry((l.4.kind, l.4.reason)).or_default() += 1;
    }
    let ((kind, reason), _) = causes.iter().max_by_key(|&(k, c)| (c, std::cmp::Reverse(k))).expect("crossing losses");
    let cause = Cause { kind: *kind, reason: *reason };
    // Every place they died, the most first.
    let mut by_kind: BTreeMap<CauseKind, usize> = BTreeMap::new();
    for (&(k, _), &n) in &causes {
        *by_kind.entry(k).or_default() += n;
    }
    let mut by_kind: Vec<(CauseKind, usize)> = by_kind.into_iter().collect();
    by_kind.sort_by_key(|&(k, n)| (std::cmp::Reverse(n), k));
    let mut a = Anomaly::with_facts(Kind::Partition, crossing.iter().map(|l| l.3).collect(), Facts::Partition { places: by_kind });
    a.islands = isl;
    a.span = Some((first, last));
    a.cause = Some(cause);
    Some(a)
}

#[cfg(test)]
mod tests {
    use super::super::anomalies::CauseKind;
    use super::super::testkit::*;
    use super::*;

    /// n1 and n2 keep talking, as do n3 and n4, while everything between the pairs is lost.
    fn split(at: i64) -> Vec<(i64, u8, u8, bool)> {
        vec![
            (at, 0, 1, true),
            (at + MS, 1, 0, true),
            (at + 2 * MS, 2, 3, true),
            (at + 3 * MS, 3, 2, true),
            (at + 4 * MS, 0, 2, false),
            (at + 5 * MS, 3, 1, false),
        ]
    }

    #[test]
    fn partitions_are_merged_across_a_quiet_window_and_kept_apart_after_a_long_one() {
        let w = PARTITION_WINDOW_NS;
        let mut msgs = Vec::new();
        // Healthy first: everyone reaches everyone.
        for (k, (a, b)) in [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)].into_iter().enumerate() {
            msgs.push((w / 2 + k as i64 * MS, a, b, true));
        }
        // Split in windows 4 and 6 to 9, nothing in window 5; healthy again in window 12;
        // split again in windows 20 to 25.
        for k in [4, 6, 7, 8, 9] {
            msgs.extend(split(k * w + 10 * MS));
        }
        // (Both ways: what one way delivers says nothing of the other.)
        for (k, (a, b)) in [(0, 2), (2, 0), (1, 3), (3, 1)].into_iter().enumerate() {
            msgs.push((12 * w + k as i64 * MS, a, b, true));
        }
        for k in 20..26 {
            msgs.extend(split(k * w + 10 * MS));
        }
        let t = trace(traffic(4, &msgs));
        let found = anomalies(&t);
        let parts = of(&found, Kind::Partition);
        assert_eq!(parts.len(), 2, "{parts:?}");
        assert_eq!(parts[0].islands, vec![vec![0, 1], vec![2, 3]]);
        // From the first crossing loss (window 4) to the last (window 9), the quiet one included.
        assert_eq!(parts[0].span, Some((4 * w + 14 * MS, 9 * w + 15 * MS)));
        assert_eq!(parts[0].events.len(), 10, "the crossing losses of every window");
        assert!(
            parts[0].text.starts_with("partition into 2 islands {n1, n2} | {n3, n4} from 00:00:01.014000 to 00:00:02.265000"),
            "{}",
            parts[0].text
        );
        assert_eq!(parts[1].span, Some((20 * w + 14 * MS, 25 * w + 15 * MS)));
        assert_eq!(of(&found, Kind::NetworkLoss).len(), 22, "each lost message is also a loss");
    }

    #[test]
    fn a_partition_is_one_claim_across_quiet_windows_and_a_lone_loss_is_none() {
        let w = PARTITION_WINDOW_NS;
        // n1 ↔ n2 talk all along; n3 asks n1 once a second (a client that waits for its
        // timeout): cut off from 2 s to 5 s, its requests are lost one per second.
        let mut msgs = Vec::new();
        for k in 0..32 {
            msgs.push((k * w, 0, 1, true));
            msgs.push((k * w + MS, 1, 0, true));
        }
        for s in 0..8 {
            let t = s * 1000 * MS + 100 * MS;
            let cut = (2000 * MS..5000 * MS).contains(&t);
            msgs.push((t, 2, 0, !cut));
            if !cut {
                msgs.push((t + MS, 0, 2, true));
            }
        }
        let found = anomalies(&trace(traffic(3, &msgs)));
        let parts = of(&found, Kind::Partition);
        assert_eq!(parts.len(), 1, "one claim: {parts:?}");
        assert_eq!(parts[0].islands, vec![vec![0, 1], vec![2]]);
        assert_eq!(parts[0].span, Some((2100 * MS, 4100 * MS)), "its first lost request to its last");
        // A lossy link: one request lost now and then, answered ones between. No partition.
        let mut msgs: Vec<(i64, u8, u8, bool)> = (0..32).flat_map(|k| [(k * w, 0, 1, true), (k * w + MS, 1, 0, true)]).collect();
        for s in 0..8 {
            let t = s * 1000 * MS + 100 * MS;
            let lost = s % 2 == 1;
            msgs.push((t, 2, 0, !lost));
            if !lost {
                msgs.push((t + MS, 0, 2, true));
            }
        }
        let found = anomalies(&trace(traffic(3, &msgs)));
        assert!(of(&found, Kind::Partition).is_empty(), "{found:?}");
    }

    /// {n1, n2} | {n3, n4, n5} from 1 s to 3 s, made as `fate` says across the cut.
    fn two_three(across: Fate) -> Vec<(i64, u8, u8, Fate)> {
        let side = |n: u8| n < 2;
        mesh(5, (100 * MS, 4000 * MS), 100 * MS, |t, a, b, _| {
            if side(a) != side(b) && (1000 * MS..3000 * MS).contains(&t) { across } else { Fate::Delivered }
        })
    }

    #[test]
    fn a_partition_made_by_the_nodes_own_firewalls_is_a_partition_with_the_firewalls_as_its_cause() {
        for (how, kind, words) in [
            (Fate::FirewallIn, CauseKind::ReceiverKernel, "dropped by the receivers' firewalls"),
            (Fate::FirewallOut, CauseKind::SenderKernel, "dropped by the senders' own firewalls"),
        ] {
            let t = trace(traffic_fates(5, &two_three(how)));
            let found = anomalies(&t);
            let parts = of(&found, Kind::Partition);
            assert_eq!(parts.len(), 1, "{how:?}: {found:?}");
            assert_eq!(parts[0].islands, vec![vec![0, 1], vec![2, 3, 4]]);
            let cause = parts[0].cause.unwrap();
            assert_eq!((cause.kind, t.drop_reasons[cause.reason.unwrap() as usize].as_str()), (kind, "netfilter_drop"));
            assert!(parts[0].text.contains("{n1, n2} | {n3, n4, n5}") && parts[0].text.ends_with(words), "{}", parts[0].text);
        }
        // The same cut in the network.
        let found = anomalies(&trace(traffic_fates(5, &two_three(Fate::Lost))));
        let parts = of(&found, Kind::Partition);
        assert_eq!(parts.len(), 1);
        assert!(parts[0].text.ends_with("lost in the network"), "{}", parts[0].text);
    }

    #[test]
    fn islands_come_from_the_whole_span_where_traffic_inside_them_is_sparse() {
        // Leaders n1 and n3; n2 talks only to n1, n4 and n5 only to n3, each once every
        // 600 ms: most 250 ms windows see no traffic inside an island at all. Across the
        // cut (1 s to 4 s) the leaders' heartbeats to the other side are lost.
        let mut msgs = Vec::new();
        for k in 0..50 {
            let t = 100 * MS + k * 100 * MS;
            let cut = (1000 * MS..4000 * MS).contains(&t);
            let fate = if cut { Fate::Lost } else { Fate::Delivered };
            for (a, b) in [(0, 2), (0, 3), (0, 4), (2, 0), (2, 1)] {
                msgs.push((t + a as i64 * MS + b as i64 * 100_000, a, b, fate));
            }
            // Inside the islands, sparse: one follower a turn.
            let (leader, follower) = [(0, 1), (2, 3), (2, 4)][(k % 3) as usize];
            if k % 2 == 0 {
                msgs.push((t + 50 * MS, leader, follower, Fate::Delivered));
                msgs.push((t + 51 * MS, follower, leader, Fate::Delivered));
            }
        }
        let found = anomalies(&trace(traffic_fates(5, &msgs)));
        let parts = of(&found, Kind::Partition);
        assert_eq!(parts.len(), 1, "one claim: {parts:?}");
        assert_eq!(parts[0].islands, vec![vec![0, 1], vec![2, 3, 4]]);
        let (from, to) = parts[0].span.unwrap();
        assert!((1000 * MS..1100 * MS).contains(&from) && (3800 * MS..4000 * MS).contains(&to), "{from}..{to}");
    }

    #[test]
    fn a_pair_with_no_traffic_is_unknown_and_never_splits_an_island() {
        // n1 and n2 are followers of n3 and never talk to each other; the cut isolates them
        // from n3, n4, n5 from 1 s to 4 s. n1 and n2 are one island: nothing says otherwise.
        let side = |n: u8| n < 2;
        let msgs = mesh(5, (100 * MS, 5000 * MS), 100 * MS, |t, a, b, _| {
            if side(a) != side(b) && (1000 * MS..4000 * MS).contains(&t) { Fate::Lost } else { Fate::Delivered }
        });
        let msgs: Vec<_> = msgs.into_iter().filter(|m| !(side(m.1) && side(m.2))).collect();
        let found = anomalies(&trace(traffic_fates(5, &msgs)));
        let parts = of(&found, Kind::Partition);
        assert_eq!(parts.len(), 1, "{parts:?}");
        assert_eq!(parts[0].islands, vec![vec![0, 1], vec![2, 3, 4]]);
    }

    #[test]
    fn a_link_that_loses_now_and_then_inside_an_island_does_not_split_it() {
        // The 2 | 3 cut, and n1 → n2 loses one message in the middle of it.
        let mut msgs = two_three(Fate::Lost);
        let k = msgs.iter().position(|m| (m.1, m.2) == (0, 1) && m.0 >= 2000 * MS).unwrap();
        msgs[k].3 = Fate::Lost;
        let found = anomalies(&trace(traffic_fates(5, &msgs)));
        let parts = of(&found, Kind::Partition);
        assert_eq!(parts.len(), 1, "{parts:?}");
        assert_eq!(parts[0].islands, vec![vec![0, 1], vec![2, 3, 4]]);
    }

    #[test]
    fn a_one_way_cut_is_a_partition_though_the_other_way_delivers() {
        // Everything n3 sends from 1 s to 3 s is lost; what it is sent still arrives.
        let msgs = mesh(4, (100 * MS, 4100 * MS), 50 * MS, |at, a, _, _| {
            if a == 2 && (1000 * MS..3000 * MS).contains(&at) { Fate::Lost } else { Fate::Delivered }
        });
        let found = anomalies(&trace(traffic_fates(4, &msgs)));
        let parts = of(&found, Kind::Partition);
        assert_eq!(parts.len(), 1, "{found:?}");
        assert_eq!(parts[0].islands, vec![vec![0, 1, 3], vec![2]]);
        assert!(of(&found, Kind::LossyLink).is_empty(), "{found:?}");
    }

    #[test]
    fn each_sides_own_firewall_dropping_at_different_times_is_one_partition() {
        // n3 is a client: it asks n1 every 200 ms and n1 answers. n1's OUTPUT rule drops its
        // answers from 1 s; n3's own drops its questions from 1.5 s, to 3.5 s: the two ways'
        // losses do not overlap in time, and nothing gets through either way between them.
        let mut msgs = Vec::new();
        for k in 0..20 {
            let t = 100 * MS + k * 200 * MS;
            let q = if (1500 * MS..3500 * MS).contains(&t) { Fate::FirewallOut } else { Fate::Delivered };
            msgs.push((t, 2, 0, q));
            if q == Fate::Delivered {
                let a = if (1000 * MS..3500 * MS).contains(&t) { Fate::FirewallOut } else { Fate::Delivered };
                msgs.push((t + MS, 0, 2, a));
            }
        }
        msgs.extend(mesh(2, (100 * MS, 4100 * MS), 50 * MS, |_, _, _, _| Fate::Delivered));
        msgs.sort_by_key(|m| m.0);
        let found = anomalies(&trace(traffic_fates(3, &msgs)));
        let parts = of(&found, Kind::Partition);
        assert_eq!(parts.len(), 1, "{found:?}");
        assert_eq!(parts[0].islands, vec![vec![0, 1], vec![2]]);
    }

    #[test]
    fn a_straggler_across_the_cut_does_not_join_the_islands() {
        // The 2 | 3 cut, and one of n5's messages to n1 gets through in the middle of it (the
        // firewall rules went in one at a time, say).
        let mut msgs = two_three(Fate::Lost);
        let k = msgs.iter().position(|m| (m.1, m.2) == (4, 0) && m.0 >= 2000 * MS).unwrap();
        msgs[k].3 = Fate::Delivered;
        let found = anomalies(&trace(traffic_fates(5, &msgs)));
        let parts = of(&found, Kind::Partition);
        assert_eq!(parts.len(), 1, "{parts:?}");
        assert_eq!(parts[0].islands, vec![vec![0, 1], vec![2, 3, 4]]);
    }

    #[test]
    fn a_run_of_losses_that_a_links_own_rate_explains_is_no_partition() {
        // n2 asks n1 every 400 ms and loses about half its questions, five in a row once
        // (1.6 s): at its rate over the rest, a run that long is expected among twenty.
        // n3 asks n1 too, and loses nothing.
        let fates = b"DLDDLLLLLDLDDLDLDLDDLD";
        let mut msgs = Vec::new();
        for (k, f) in fates.iter().enumerate() {
            let t = 100 * MS + k as i64 * 400 * MS;
            let delivered = *f == b'D';
            msgs.push((t, 1, 0, delivered));
            if delivered {
                msgs.push((t + MS, 0, 1, true));
            }
            msgs.push((t + 200 * MS, 2, 0, true));
            msgs.push((t + 201 * MS, 0, 2, true));
        }
        let found = anomalies(&trace(traffic(3, &msgs)));
        assert!(of(&found, Kind::Partition).is_empty(), "{found:?}");
        // The same run on a link that loses nothing else is a cut.
        let msgs: Vec<_> =
            msgs.into_iter().map(|(t, a, b, d)| (t, a, b, d || !(1700 * MS..2100 * MS + 4 * 400 * MS).contains(&t))).collect();
        let found = anomalies(&trace(traffic(3, &msgs)));
        let parts = of(&found, Kind::Partition);
        assert_eq!(parts.len(), 1, "{found:?}");
        assert_eq!(parts[0].islands, vec![vec![0, 2], vec![1]]);
    }

    #[test]
    fn losses_with_deliveries_between_them_are_runs_judged_at_the_rate_they_lost_at() {
        // n2 asks n1 every 100 ms over a link that loses about two in five each way. For
        // 2.5 s it loses most: fourteen of a TCP client's and its server's retransmissions,
        // at most seven in a row, with answers twice between (as recorded on Redis Sentinel
        // with 50% loss on n1's links). Nothing was cut. n3 talks to n1 and loses nothing.
        let calm = b"DDLDLDDDLDDLLDDDLDDLDDDLLDDLDDDLDDLD";
        let mut msgs = Vec::new();
        let ask = |t: i64, f: &u8, g: &u8, msgs: &mut Vec<(i64, u8, u8, bool)>| {
            msgs.push((t, 1, 0, *f == b'D'));
            if *f == b'D' {
                msgs.push((t + 10 * MS, 0, 1, *g == b'D'));
            }
        };
        for (k, f) in calm.iter().enumerate() {
            ask(100 * MS + k as i64 * 100 * MS, f, &calm[(k + 5) % calm.len()], &mut msgs);
        }
        // The worst stretch, from 4 s: (ms, from, to, delivered).
        let worst: [(i64, u8, u8, bool); 21] = [
            (0, 0, 1, false),
            (203, 0, 1, false),
            (407, 0, 1, false),
            (836, 1, 0, true),
            (837, 0, 1, false),
            (869, 1, 0, false),
            (1043, 0, 1, false),
            (1155, 1, 0, false),
            (1251, 0, 1, false),
            (1667, 0, 1, false),
            (1668, 1, 0, false),
            (1891, 1, 0, true),
            (1892, 0, 1, true),
            (1893, 1, 0, true),
            (1894, 0, 1, true),
            (1895, 0, 1, false),
            (2099, 0, 1, false),
            (2307, 0, 1, false),
            (2499, 0, 1, false),
            (2659, 1, 0, true),
            (2660, 0, 1, true),
        ];
        msgs.extend(worst.iter().map(|&(t, a, b, d)| (4000 * MS + t * MS, a, b, d)));
        for (k, f) in calm.iter().enumerate() {
            ask(7000 * MS + k as i64 * 100 * MS, f, &calm[(k + 11) % calm.len()], &mut msgs);
        }
        msgs.extend((0..110).flat_map(|k| [(50 * MS + k * 100 * MS, 2, 0, true), (51 * MS + k * 100 * MS, 0, 2, true)]));
        msgs.sort_by_key(|m| m.0);
        let found = anomalies(&trace(traffic(3, &msgs)));
        assert!(of(&found, Kind::Partition).is_empty(), "{:?}", of(&found, Kind::Partition));
        // The same stretch with nothing delivered in it is a cut.
        let cut: Vec<_> =
            msgs.iter().map(|&(t, a, b, d)| (t, a, b, d && !(a != 2 && b != 2 && (4000 * MS..6700 * MS).contains(&t)))).collect();
        let found = anomalies(&trace(traffic(3, &cut)));
        let parts = of(&found, Kind::Partition);
        assert_eq!(parts.len(), 1, "{found:?}");
        assert_eq!(parts[0].islands, vec![vec![0, 2], vec![1]]);
    }

    #[test]
    fn a_links_own_rate_is_its_rate_while_it_lost_not_diluted_by_a_healthy_rest() {
        // The same lossy stretch between 8 s of healthy questions each side, every 50 ms: over
        // the whole recording the link lost under 2%, while it lost about half.
        let fates = b"DLDDLLLLLDLDDLDLDLDDLD";
        let mut msgs = Vec::new();
        let mut ask = |t: i64, delivered: bool| {
            msgs.push((t, 1, 0, delivered));
            if delivered {
                msgs.push((t + MS, 0, 1, true));
            }
            msgs.push((t + 20 * MS, 2, 0, true));
            msgs.push((t + 21 * MS, 0, 2, true));
        };
        for k in 0..160 {
            ask(100 * MS + k * 50 * MS, true);
        }
        let lossy_from = 8200 * MS;
        for (k, f) in fates.iter().enumerate() {
            ask(lossy_from + k as i64 * 400 * MS, *f == b'D');
        }
        for k in 0..160 {
            ask(lossy_from + 22 * 400 * MS + k * 50 * MS, true);
        }
        let found = anomalies(&trace(traffic(3, &msgs)));
        assert!(of(&found, Kind::Partition).is_empty(), "{found:?}");
        assert_eq!(of(&found, Kind::LossyLink).len(), 1, "{found:?}");
    }
}
