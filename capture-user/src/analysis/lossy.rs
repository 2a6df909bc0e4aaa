//! Lossy links: directed links whose share of lost messages stands out from what the rest
//! of the cluster loses. A partition's or a stall's losses are theirs, not the link's.

use std::collections::{BTreeMap, BTreeSet};

use super::anomalies::{Anomaly, Cause, CauseKind, Context, Facts, Kind, NodeList};
use super::matching::{address_owners, is_group_address};
use super::partitions::PARTITION_WINDOW_NS;
use super::trace::{EventId, NodeId};

/// A link is lossy when at least this many of its messages were lost...
pub const LOSSY_MIN_LOST: usize = 3;
/// ...at least this many times the cluster's usual rate, and three standard deviations more
/// losses than that rate gives (a link that is only unlucky is not lossy)...
pub const LOSSY_VS_OTHERS: f64 = 3.0;
/// ...spread over at least this long.
pub const LOSSY_MIN_SPAN_NS: i64 = 2 * PARTITION_WINDOW_NS;

/// A directed link's traffic: messages sent, and the losses counted against it.
#[derive(Default)]
struct Link {
    sent: usize,
    lost: Vec<(i64, EventId, Cause)>,
    /// Messages sent from its first loss to its last, where it has losses enough to be
    /// judged: a link is lossy while it loses, and the recording's healthy rest (or a client
    /// that sends less while each loss times out) must not dilute that.
    while_lossy: Option<usize>,
}

impl Link {
    /// Messages sent over the time its rate is judged on.
    fn judged(&self) -> usize {
        self.while_lossy.unwrap_or(self.sent)
    }
}

/// The pooled loss rate of the links `keep` keeps.
fn pooled(links: &BTreeMap<(NodeId, NodeId), Link>, keep: impl Fn(&(NodeId, NodeId)) -> bool) -> Option<f64> {
    let (sent, lost) = links.iter().filter(|(k, _)| keep(k)).fold((0, 0), |(s, l), (_, x)| (s + x.sent, l + x.lost.len()));
    (sent > 0).then(|| lost as f64 / sent as f64)
}

/// The cluster's usual loss rate, robust to one faulty link or node: first the least, over
/// the nodes, of the pooled rate of the links that do not touch it (so that one node's
/// lossy links are not counted against each other); then the pooled rate of the links that
/// this first baseline does not find lossy. (The median of the links' rates would be no
/// baseline: with a few losses per link most links lose none, and it is zero.)
fn baseline(links: &BTreeMap<(NodeId, NodeId), Link>, nodes: usize, lossy: &dyn Fn(&Link, f64) -> bool) -> f64 {
    // A node that every link touches (a server and its clients) leaves nothing to compare
    // with: the network itself is then taken to lose nothing, as a healthy LAN does.
    let first = (0..nodes as NodeId)
        .filter_map(|x| {
            pooled(links, |k| k.0 != x && k.1 != x)
                .or_else(|| (!links.is_empty() && links.keys().all(|k| k.0 == x || k.1 == x)).then_some(0.0))
        })
        .min_by(f64::total_cmp)
        .or_else(|| pooled(links, |_| true))
        .unwrap_or(0.0);
    pooled(links, |k| !lossy(&links[k], first)).unwrap_or(first)
}

/// Lossy links, from the lost messages (send, receiver, cause): only losses on the path
/// count, the network's and the firewalls'. `explained` says whether a partition or a stall
/// explains a loss from `from` to `to` at a time. `receivers` are the matched messages'
/// receiving nodes.
pub fn find(
    ctx: &Context<'_>,
    lost: &[(EventId, NodeId, Cause)],
    explained: &dyn Fn(NodeId, NodeId, i64) -> bool,
    receivers: &[NodeId],
) -> Vec<Anomaly> {
    let t = ctx.trace;
    // Sends per directed link: delivered messages and losses (unicast to an owned address).
    let owners = address_owners(t);
    // Counted in a dense table first: this runs once per delivered message.
    let n = t.nodes.len();
    let group: Vec<bool> = t.addrs.iter().map(|a| is_group_address(*a)).collect();
    let mut sent = vec![0usize; n * n];
    for (&(s, _), &to) in ctx.matching.messages.iter().zip(receivers) {
        let se = &t.events[s as usize];
        if se.node != to && !group[se.dst as usize] {
            sent[se.node as usize * n + to as usize] += 1;
        }
    }
    let mut links: BTreeMap<(NodeId, NodeId), Link> = BTreeMap::new();
    for (k, &c) in sent.iter().enumerate().filter(|x| *x.1 > 0) {
        links.insert(((k / n) as NodeId, (k % n) as NodeId), Link { sent: c, ..Link::default() });
    }
    for &(s, to, cause) in lost {
        let from = t.events[s as usize].node;
        let at = ctx.corr(s);
        let link = links.entry((from, to)).or_default();
        if owners.get(&t.events[s as usize].dst) == Some(&to) {
            link.sent += 1;
        }
        if cause.on_path(t) && !explained(from, to, at) {
            link.lost.push((at, s, cause));
        }
    }
    for l in links.values_mut() {
        l.sent = l.sent.max(l.lost.len());
    }
    let span_of = |l: &Link| {
        let (a, b) = (l.lost.iter().map(|x| x.0).min(), l.lost.iter().map(|x| x.0).max());
        a.zip(b)
    };
    // Sends while each link with losses enough was losing: its losses, and its deliveries
    // sent between its first loss and its last.
    let spans: BTreeMap<(NodeId, NodeId), (i64, i64)> =
        links.iter().filter(|(_, l)| l.lost.len() >= LOSSY_MIN_LOST).filter_map(|(k, l)| span_of(l).map(|s| (*k, s))).collect();
    if !spans.is_empty() {
        let mut delivered: BTreeMap<(NodeId, NodeId), usize> = BTreeMap::new();
        for (&(s, _), &to) in ctx.matching.messages.iter().zip(receivers) {
            let se = &t.events[s as usize];
            let k = (se.node, to);
            if let Some(&(a, b)) = spans.get(&k).filter(|_| se.node != to && !group[se.dst as usize]) {
                let at = ctx.corr(s);
                if a <= at && at <= b {
                    *delivered.entry(k).or_default() += 1;
                }
            }
        }
        for (k, _) in spans {
            let l = links.get_mut(&k).expect("spans are of links");
            l.while_lossy = Some(l.lost.len() + delivered.get(&k).copied().unwrap_or(0));
        }
    }
    // The least rate this recording can tell from none: the rule of three over every
    // message it sent (no loss in N trials bounds the rate below 3 / N at 95%).
    let total: usize = links.values().map(|l| l.sent).sum();
    let resolvable = 3.0 / total.max(1) as f64;
    // High enough a rate to be this fault, whatever the counts.
    let high_vs =
        |l: &Link, usual: f64| l.judged() > 0 && l.lost.len() as f64 / l.judged() as f64 >= LOSSY_VS_OTHERS * usual.max(resolvable);
    let lossy_vs = |l: &Link, usual: f64| {
        // More losses than chance over the whole recording (a window chosen where the losses
        // are would make any few of them stand out), at a high rate while it lost.
        let expected = usual.max(resolvable) * l.sent as f64;
        let stands_out = l.lost.len() as f64 >= expected + 3.0 * expected.sqrt();
        // A link loses over time: a burst of losses within moments is an event, not the link.
        let lasting = span_of(l).is_some_and(|(a, b)| b - a >= LOSSY_MIN_SPAN_NS);
        l.lost.len() >= LOSSY_MIN_LOST && high_vs(l, usual) && stands_out && lasting
    };
    let usual = baseline(&links, t.nodes.len(), &lossy_vs);
    let lossy = |l: &Link| lossy_vs(l, usual);
    let found: BTreeSet<(NodeId, NodeId)> = links.iter().filter(|(_, l)| lossy(l)).map(|(k, _)| *k).collect();
    // A node all of whose links lose (two or more of them plainly, none of them clean) is one
    // fault: its own, not each link's. A link is clean when it lost plainly less than the
    // node's lossy links do together (three standard deviations): one that sent ten
    // messages and lost none by chance at 20% is not.
    let mut whole: Vec<(NodeId, Vec<(NodeId, NodeId)>)> = Vec::new();
    for x in 0..t.nodes.len() as NodeId {
        let mine: Vec<(NodeId, NodeId)> = links.iter().filter(|(k, l)| (k.0 == x || k.1 == x) && l.sent > 0).map(|(k, _)| *k).collect();
        let plain = mine.iter().filter(|k| found.contains(k)).count();
        if plain < 2 || mine.len() < 3 {
            continue;
        }
        let (lost, sent) =
            mine.iter().filter(|k| found.contains(k)).fold((0, 0), |(l, s), k| (l + links[k].lost.len(), s + links[k].judged()));
        let rate = lost as f64 / sent.max(1) as f64;
        let clean = |l: &Link| {
            let expected = rate * l.judged() as f64;
            (l.lost.len() as f64) < expected - 3.0 * (expected * (1.0 - rate)).sqrt()
        };
        if !mine.iter().any(|k| clean(&links[k])) {
            whole.push((x, mine));
        }
    }
    let mut out = Vec::new();
    let mut done: BTreeSet<(NodeId, NodeId)> = BTreeSet::new();
    for (x, mine) in &whole {
        // Two nodes whose links all lose share the link between them: it goes to the first.
        let mine: Vec<(NodeId, NodeId)> = mine.iter().copied().filter(|k| !done.contains(k)).collect();
        let (sent, lost): (usize, Vec<&(i64, EventId, Cause)>) = mine.iter().fold((0, Vec::new()), |(s, mut v), k| {
            (s + links[k].judged(), {
                v.extend(&links[k].lost);
                v
            })
        });
        let mut lost = lost;
        lost.sort_unstable_by_key(|x| x.0);
        let (Some(a), Some(b)) = (lost.first().map(|x| x.0), lost.last().map(|x| x.0)) else { continue };
        let facts = Facts::LossyLink { lost: lost.len(), sent, usual };
        let mut a_ = Anomaly::with_facts(Kind::LossyLink, lost.iter().map(|x| x.1).collect(), facts);
        a_.nodes = NodeList::from_slice(&[*x]);
        a_.span = Some((a, b));
        a_.cause = Some(main_cause(&lost));
        let d = a_.detail_mut();
        d.links = mine.clone();
        d.all_links_of = Some(*x);
        out.push(a_);
        done.extend(mine);
    }
    for k in found.iter().filter(|k| !done.contains(k)) {
        let l = &links[k];
        let Some((a, b)) = span_of(l) else { continue };
        let lost: Vec<&(i64, EventId, Cause)> = l.lost.iter().collect();
        let facts = Facts::LossyLink { lost: l.lost.len(), sent: l.judged(), usual };
        let mut a_ = Anomaly::with_facts(Kind::LossyLink, l.lost.iter().map(|x| x.1).collect(), facts);
        a_.nodes = NodeList::from_slice(&[k.0, k.1]);
        a_.span = Some((a, b));
        a_.cause = Some(main_cause(&lost));
        a_.detail_mut().links = vec![*k];
        out.push(a_);
    }
    out
}

/// Where most of the losses died.
fn main_cause(lost: &[&(i64, EventId, Cause)]) -> Cause {
    let mut by: BTreeMap<(CauseKind, Option<u16>), usize> = BTreeMap::new();
    for l in lost {
        *by.entry((l.2.kind, l.2.reason)).or_default() += 1;
    }
    by.into_iter().max_by_key(|&(k, c)| (c, std::cmp::Reverse(k))).map_or(Cause::NETWORK, |((kind, reason), _)| Cause { kind, reason })
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    /// Five nodes, each sending each other one datagram every 50 ms for 4 s; `lossy` says
    /// which links lose every fifth message (20%), and how.
    fn cluster(lossy: impl Fn(u8, u8) -> Option<Fate>) -> Vec<Anomaly> {
        let msgs = mesh(5, (100 * MS, 4100 * MS), 50 * MS, |_, a, b, k| match lossy(a, b) {
            Some(how) if k % 5 == 2 => how,
            _ => Fate::Delivered,
        });
        anomalies(&trace(traffic_fates(5, &msgs)))
    }

    #[test]
    fn one_lossy_link_is_named_alone() {
        let found = cluster(|a, b| ((a, b) == (0, 2)).then_some(Fate::Lost));
        let lossy = of(&found, Kind::LossyLink);
        assert_eq!(lossy.len(), 1, "{lossy:?}");
        assert_eq!(lossy[0].nodes.as_slice(), &[0, 2]);
        let d = lossy[0].detail.as_deref().unwrap();
        assert_eq!((d.links.as_slice(), d.all_links_of), (&[(0, 2)][..], None));
        assert!(lossy[0].text.starts_with("lossy link n1 → n3: 16 of 76 messages lost (21%)"), "{}", lossy[0].text);
    }

    #[test]
    fn a_low_rate_is_lossy_where_the_rest_of_the_recording_loses_nothing_and_chance_is_none() {
        // 20 s of a mesh: n1 → n3 loses one message in 30 (3%, under the old 5% floor) while
        // the other links, 2,000 messages, lose nothing: far more than chance at the least
        // rate the rest could hide (3 / messages).
        let msgs = mesh(
            3,
            (100 * MS, 20100 * MS),
            50 * MS,
            |_, a, b, k| {
                if (a, b) == (0, 2) && k % 30 == 7 { Fate::Lost } else { Fate::Delivered }
            },
        );
        let found = anomalies(&trace(traffic_fates(3, &msgs)));
        let lossy = of(&found, Kind::LossyLink);
        assert_eq!(lossy.len(), 1, "{found:?}");
        assert_eq!(lossy[0].nodes.as_slice(), &[0, 2]);
        // One loss in 400 on one link, and one on another: no rate the traffic can tell.
        let msgs = mesh(3, (100 * MS, 20100 * MS), 50 * MS, |_, a, b, k| {
            if ((a, b) == (0, 2) || (a, b) == (1, 0)) && k == 200 { Fate::Lost } else { Fate::Delivered }
        });
        let found = anomalies(&trace(traffic_fates(3, &msgs)));
        assert!(of(&found, Kind::LossyLink).is_empty(), "{found:?}");
    }

    #[test]
    fn a_link_is_judged_by_its_rate_while_it_lost_not_over_the_whole_recording() {
        // 10 s of a mesh; n1 → n3 loses half its messages for 1.5 s only (2 s to 3.5 s):
        // 7.5% over the recording, 50% while it lost.
        let msgs = mesh(3, (100 * MS, 10100 * MS), 50 * MS, |at, a, b, k| {
            if (a, b) == (0, 2) && (2000 * MS..3500 * MS).contains(&at) && k % 2 == 0 { Fate::Lost } else { Fate::Delivered }
        });
        let found = anomalies(&trace(traffic_fates(3, &msgs)));
        let lossy = of(&found, Kind::LossyLink);
        assert_eq!(lossy.len(), 1, "{found:?}");
        assert_eq!(lossy[0].nodes.as_slice(), &[0, 2]);
        assert!(lossy[0].text.starts_with("lossy link n1 → n3: 15 of 29 messages lost (52%)"), "{}", lossy[0].text);
        assert!(of(&found, Kind::Partition).is_empty(), "{found:?}");
    }

    #[test]
    fn all_of_one_nodes_links_lossy_is_said_so_whatever_the_others() {
        // Every link of n4, both ways: the baseline must not pool them against each other.
        let found = cluster(|a, b| (a == 3 || b == 3).then_some(Fate::Lost));
        let lossy = of(&found, Kind::LossyLink);
        assert_eq!(lossy.len(), 1, "{lossy:?}");
        let d = lossy[0].detail.as_deref().unwrap();
        assert_eq!(d.all_links_of, Some(3));
        assert_eq!(d.links.len(), 8, "{:?}", d.links);
        assert_eq!(lossy[0].nodes.as_slice(), &[3]);
        assert!(
            lossy[0].text.starts_with("all of n4's links are lossy: 128 of 608 messages lost (21%) on its 8 links"),
            "{}",
            lossy[0].text
        );
        assert!(of(&found, Kind::Partition).is_empty(), "{found:?}");
    }

    #[test]
    fn a_quiet_link_that_lost_nothing_by_chance_does_not_split_a_lossy_node() {
        // Every link of n4 loses a fifth, but n4 → n5 sends only 8 messages and, by chance,
        // loses none of them: n4's links are all lossy all the same.
        let msgs: Vec<(i64, u8, u8, Fate)> = mesh(5, (100 * MS, 4100 * MS), 50 * MS, |_, a, b, k| match (a, b) {
            (3, _) | (_, 3) if k % 5 == 2 => Fate::Lost,
            _ => Fate::Delivered,
        })
        .into_iter()
        .filter(|&(t, a, b, _)| (a, b) != (3, 4) || (t / MS) % 500 < 50)
        .map(|(t, a, b, f)| if (a, b) == (3, 4) { (t, a, b, Fate::Delivered) } else { (t, a, b, f) })
        .collect();
        let found = anomalies(&trace(traffic_fates(5, &msgs)));
        let lossy = of(&found, Kind::LossyLink);
        assert_eq!(lossy.len(), 1, "{lossy:?}");
        let d = lossy[0].detail.as_deref().unwrap();
        assert_eq!(d.all_links_of, Some(3), "{}", lossy[0].text);
        assert_eq!(d.links.len(), 8, "{:?}", d.links);
    }

    #[test]
    fn a_clean_link_of_a_node_keeps_its_other_lossy_links_its_own() {
        // n4's links lose a fifth, except n4 → n5, busy and clean: no node-wide finding.
        let found = cluster(|a, b| ((a == 3 || b == 3) && (a, b) != (3, 4)).then_some(Fate::Lost));
        let lossy = of(&found, Kind::LossyLink);
        assert_eq!(lossy.len(), 7, "{lossy:?}");
        assert!(lossy.iter().all(|f| f.detail.as_deref().unwrap().all_links_of.is_none()), "{lossy:?}");
    }

    #[test]
    fn a_firewall_rule_dropping_a_fifth_at_random_is_a_lossy_link() {
        let found = cluster(|a, b| ((a, b) == (0, 2)).then_some(Fate::FirewallIn));
        let lossy = of(&found, Kind::LossyLink);
        assert_eq!(lossy.len(), 1, "{found:?}");
        assert_eq!(lossy[0].nodes.as_slice(), &[0, 2]);
        assert_eq!(lossy[0].cause.map(|c| c.kind), Some(CauseKind::ReceiverKernel));
        assert!(lossy[0].text.contains("dropped by the receiver's firewall"), "{}", lossy[0].text);
    }

    #[test]
    fn a_hub_all_of_whose_links_lose_is_lossy_though_nothing_else_compares() {
        // n1 serves n2 and n3, which never talk to each other; every link of n1 loses a fifth.
        let msgs = mesh(3, (100 * MS, 4100 * MS), 50 * MS, |_, a, b, k| match (a, b) {
            (1, 2) | (2, 1) => Fate::Delivered,
            _ if k % 5 == 2 => Fate::Lost,
            _ => Fate::Delivered,
        })
        .into_iter()
        .filter(|&(_, a, b, _)| !matches!((a, b), (1, 2) | (2, 1)))
        .collect::<Vec<_>>();
        let found = anomalies(&trace(traffic_fates(3, &msgs)));
        let lossy = of(&found, Kind::LossyLink);
        assert_eq!(lossy.len(), 1, "{found:?}");
        assert_eq!(lossy[0].detail.as_deref().unwrap().all_links_of, Some(0), "{:?}", lossy[0]);
    }

    #[test]
    fn the_baseline_is_the_healthy_rest() {
        let link =
            |sent: usize, lost: usize| Link { sent, lost: (0..lost).map(|k| (k as i64, 0, Cause::NETWORK)).collect(), while_lossy: None };
        // Three nodes; n3's four links lose 20%, n1 ↔ n2 2%: the rest is n1 ↔ n2.
        let links: BTreeMap<(NodeId, NodeId), Link> = [
            ((0, 1), link(100, 2)),
            ((1, 0), link(100, 2)),
            ((0, 2), link(100, 20)),
            ((2, 0), link(100, 20)),
            ((1, 2), link(100, 20)),
            ((2, 1), link(100, 20)),
        ]
        .into_iter()
        .collect();
        // First the least of the pools that leave one node out (n3: 2%), then the pool of
        // the links that does not find lossy (three times its rate or more).
        let lossy = |l: &Link, usual: f64| l.lost.len() as f64 >= 3.0 * usual * l.sent as f64;
        assert_eq!(baseline(&links, 3, &lossy), 0.02);
        // A pool of all the links would be 14%, and find none of n3's links lossy.
        assert_eq!(pooled(&links, |_| true), Some(0.14));
    }
}
