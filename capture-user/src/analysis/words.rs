//! Every anomaly's and finding's words, made last from the data the detectors and the
//! diagnosis produced (ripgrep's searcher/printer split: what is found is decided before,
//! and apart from, how it is said). Network losses, which can be millions, get theirs only
//! when asked: see `Analysis::anomaly_text`.

use super::anomalies::{Anomaly, Cause, CauseKind, Facts, Kind};
use super::diagnosis::{Finding, FindingKind};
use super::fmt::{fmt_addr, fmt_endpoint, fmt_ns, fmt_time};
use super::matching::{Matching, MessageKind, TimeMap};
use super::order::EdgeKind;
use super::rules::{Broken, Violation};
use super::spec::Spec;
use super::steps::ClockStep;
use super::trace::{Dir, EventId, NodeId, Trace};

/// What the words are made from besides the anomalies and findings themselves.
pub struct Words<'a> {
    pub trace: &'a Trace,
    pub clocks: &'a (dyn TimeMap + Sync),
    pub spec: &'a Spec,
    pub matching: &'a Matching,
    /// An event's words (its message type and fields, or protocol and ports).
    pub describe: &'a (dyn Fn(EventId) -> String + Sync),
}

impl Words<'_> {
    fn name(&self, n: NodeId) -> &str {
        self.trace.nodes[n as usize].name.as_str()
    }
    fn names(&self, nodes: &[NodeId], sep: &str) -> String {
        nodes.iter().map(|&n| self.name(n)).collect::<Vec<_>>().join(sep)
    }
    fn reason(&self, c: &Cause) -> &str {
        c.reason.and_then(|r| self.trace.drop_reasons.get(r as usize)).map_or("?", String::as_str)
    }
}

/// Fills in the text of every violation, of every anomaly but the network losses, then of
/// every finding (each in turn may quote the one before).
pub fn fill(w: &Words<'_>, anomalies: &mut [Anomaly], violations: &mut [Violation], findings: &mut [Finding]) {
    use rayon::prelude::*;
    violations.par_iter_mut().for_each(|v| v.text = violation(w, v));
    let violations = &*violations;
    // On all cores: a meltdown's resends can be hundreds of thousands, each described.
    anomalies.par_iter_mut().filter(|a| a.kind != Kind::NetworkLoss).for_each(|a| a.text = anomaly(w, a, violations));
    for f in findings {
        f.text = finding(w, f, anomalies, violations);
    }
}

/// Human words for a kernel drop reason: what the operator would call it.
pub fn reason_words(reason: &str) -> &'static str {
    match reason {
        "netfilter_drop" => "firewall",
        "socket_rcvbuff" => "full receive buffer",
        "no_socket" => "no socket on the port",
        "socket_filter" => "socket filter",
        "qdisc_drop" | "full_ring" => "full queue",
        _ => "",
    }
}

/// Where lost messages died, in a few words (a timeline's partition shading says it).
pub fn cause(trace: &Trace, c: Cause) -> String {
    let reason = c.reason.and_then(|r| trace.drop_reasons.get(r as usize)).map(String::as_str);
    let words = reason.map(reason_words).filter(|w| !w.is_empty());
    match (c.kind, words) {
        (CauseKind::Network, _) => "lost in the network".into(),
        (CauseKind::ReceiverKernel, Some(w)) => format!("dropped at the receivers ({w})"),
        (CauseKind::SenderKernel, Some(w)) => format!("dropped at the senders ({w})"),
        (CauseKind::ReceiverKernel, None) => format!("dropped by the receivers' kernels ({})", reason.unwrap_or("?")),
        (CauseKind::SenderKernel, None) => format!("dropped by the senders' kernels ({})", reason.unwrap_or("?")),
    }
}

/// Describes an event for people: `TASK #5 received by node2`.
pub fn describe(trace: &Trace, spec: &Spec, classes: &[u16], id: EventId) -> String {
    let e = &trace.events[id as usize];
    let what = match classes.get(id as usize) {
        Some(&c) if c != super::rules::UNKNOWN => spec.label(c as usize, trace.payload(e)),
        _ if !e.proto.has_ports() => format!("{} {} -> {}", e.proto.name(), fmt_addr(trace.addr(e.src)), fmt_addr(trace.addr(e.dst))),
        _ => format!("{} {} -> {}", e.proto.name(), fmt_endpoint(trace.addr(e.src), e.sport), fmt_endpoint(trace.addr(e.dst), e.dport)),
    };
    let verb = if e.dir == Dir::Send { "sent by" } else { "received by" };
    format!("{what} {verb} {}", trace.nodes[e.node as usize].name)
}

fn dir_word(d: Option<Dir>) -> &'static str {
    match d {
        Some(Dir::Send) => "sent",
        Some(Dir::Recv) => "received",
        None => "seen",
    }
}

/// One violation's text: the event that broke the rule or invariant, and how.
pub fn violation(w: &Words<'_>, v: &Violation) -> String {
    let (t, spec, d) = (w.trace, w.spec, w.describe);
    let Some(&first) = v.events.first() else { return v.name.clone() };
    match &v.what {
        Broken::NoEarlier { rule } => {
            let rule = &spec.rules[*rule];
            let after = &spec.messages[rule.after.message].name;
            let where_ = if rule.same_node { format!(" on {}", w.name(t.events[first as usize].node)) } else { String::new() };
            format!(
                "{}: no {after} {}{where_} precedes it in the recording (rule {} requires one)",
                d(first),
                dir_word(rule.after.dir),
                rule.name
            )
        }
        Broken::Unanswered { response, within_ns } => {
            format!("{} got no {} within {} ms", d(first), spec.messages[*response].name, within_ns / 1_000_000)
        }
        Broken::Never { silences } if v.events.len() > 1 => {
            let e = &t.events[first as usize];
            let list: Vec<String> = v.events[1..]
                .iter()
                .zip(silences.iter().chain(std::iter::repeat(&None)))
                .map(|(&p, silence)| {
                    let silence = silence.map(|gap| format!(", the first from it in {}", fmt_ns(gap))).unwrap_or_default();
                    format!(
                        "{} (from {}, {} before{silence})",
                        d(p),
                        super::rules::sender_name(t, p as usize).unwrap_or_else(|| "an unrecorded node".into()),
                        fmt_ns(e.t_raw - t.events[p as usize].t_raw)
                    )
                })
                .collect();
            format!("{}, right after {}", d(first), list.join("; "))
        }
        Broken::Decrease { message, field, from, to } if v.events.len() > 1 => {
            let id = v.events[1];
            format!(
                "{} went from {from} to {to} on {}: {} after {}",
                spec.messages[*message].fields[*field].name,
                w.name(t.events[id as usize].node),
                d(id),
                d(first)
            )
        }
        _ => d(first),
    }
}

/// One anomaly's text.
pub fn anomaly(w: &Words<'_>, a: &Anomaly, violations: &[Violation]) -> String {
    let t = w.trace;
    let d = w.describe;
    let span = a.span.unwrap_or_default();
    match (a.kind, a.facts()) {
        (Kind::NetworkLoss, _) => loss(w, a),
        (Kind::Duplicate, _) => format!("{} twice (network duplicate)", d(a.events[1])),
        (Kind::Retransmission, _) => format!("{} was sent {} times (retransmissions)", d(a.events[0]), a.events.len()),
        (Kind::RetryStorm, _) => format!(
            "retry storm: {} sent {} times, at least {} within {} ms",
            d(a.events[0]),
            a.events.len(),
            super::retries::STORM_COUNT,
            super::retries::STORM_WINDOW_NS / 1_000_000
        ),
        (_, Facts::RecorderGap { lost, cpu }) => {
            format!("{}'s recorder lost {lost} records on cpu {cpu} (sequence gap)", w.name(a.nodes[0]))
        }
        (_, Facts::RingDrops { count, besides_gaps }) => format!(
            "{}'s kernel ring dropped {count} records{}",
            w.name(a.nodes[0]),
            if *besides_gaps { " besides the sequence gaps" } else { " (after its last record on that CPU)" }
        ),
        (_, Facts::Closed { how }) => {
            let e = &t.events[a.events[0] as usize];
            format!(
                "{} sent {} TCP segment(s) on {} → {} after {} had closed the connection ({how}): not a network loss",
                w.name(e.node),
                a.events.len(),
                fmt_endpoint(t.addr(e.src), e.sport),
                fmt_endpoint(t.addr(e.dst), e.dport),
                w.name(a.nodes[1])
            )
        }
        (_, Facts::KernelDrop { drop }) => {
            let drop = &t.drops[*drop];
            let e = &drop.event;
            let reason = t.drop_reasons.get(drop.reason as usize).map_or("?", String::as_str);
            let words = reason_words(reason);
            let what = format!("{} {} → {}", e.proto.name(), fmt_endpoint(t.addr(e.src), e.sport), fmt_endpoint(t.addr(e.dst), e.dport));
            let sep = if words.is_empty() { "" } else { ": " };
            match e.dir {
                Dir::Send => format!("{}'s kernel dropped its own {what} on the way out ({reason}{sep}{words})", w.name(e.node)),
                Dir::Recv => format!("{}'s kernel dropped {what} on the way in ({reason}{sep}{words})", w.name(e.node)),
            }
        }
        (_, Facts::Stall { until_end, sent_to, lost, cadence, port }) => {
            let (from, to) = span;
            let how_long = match until_end {
                true => format!("from {} to the end of its recording ({} ms)", fmt_time(from), (to - from) / 1_000_000),
                false => format!("from {} to {} ({} ms)", fmt_time(from), fmt_time(to), (to - from) / 1_000_000),
            };
            // Where only one endpoint fell silent, the node's other processes kept talking.
            let (what, there) = match port {
                None => ("it".to_string(), ""),
                Some((proto, p)) => (format!("its {} port {p}", proto.name()), " there"),
            };
            let peers = match *lost {
                0 => format!("though it received {sent_to} messages from its peers{there} meanwhile"),
                l if l == *sent_to => format!("though its peers sent it {l} messages, none of which it received"),
                l => format!("though its peers sent it {sent_to} messages ({l} never received)"),
            };
            let waiters = match a.detail.as_ref().map_or(&[][..], |d| d.waiters.as_slice()) {
                [] => String::new(),
                ws => format!("; {} waited on it", w.names(ws, " and ")),
            };
            format!(
                "{} stalled: {what} sent nothing {how_long}, {peers}; it usually sends every {} ms or less{waiters}",
                w.name(a.nodes[0]),
                (cadence / 1_000_000).max(1)
            )
        }
        (_, Facts::LossyLink { lost, sent, usual }) => {
            let (from, to) = span;
            let pct = 100.0 * *lost as f64 / (*sent).max(1) as f64;
            let cause = match a.cause.map_or(CauseKind::Network, |c| c.kind) {
                CauseKind::Network => "",
                CauseKind::ReceiverKernel => ", dropped by the receiver's firewall",
                CauseKind::SenderKernel => ", dropped by the sender's own firewall",
            };
            let links = a.detail.as_ref().map_or(&[][..], |d| d.links.as_slice());
            match a.detail.as_ref().and_then(|d| d.all_links_of) {
                Some(x) => format!(
                    "all of {}'s links are lossy: {lost} of {sent} messages lost ({pct:.0}%) on its {} links from {} to {}{cause}; the rest of the cluster lost {:.1}%",
                    w.name(x),
                    links.len(),
                    fmt_time(from),
                    fmt_time(to),
                    usual * 100.0
                ),
                None => format!(
                    "lossy link {} → {}: {lost} of {sent} messages lost ({pct:.0}%) from {} to {}{cause}; the other links lost {:.1}%",
                    w.name(a.nodes[0]),
                    w.name(a.nodes[1]),
                    fmt_time(from),
                    fmt_time(to),
                    usual * 100.0
                ),
            }
        }
        (_, Facts::Partition { places }) => {
            let (first, last) = span;
            let names: Vec<String> = a.islands.iter().map(|i| format!("{{{}}}", w.names(i, ", "))).collect();
            let place = |k: CauseKind| match k {
                CauseKind::Network => "lost in the network",
                CauseKind::ReceiverKernel => "dropped by the receivers' firewalls",
                CauseKind::SenderKernel => "dropped by the senders' own firewalls",
            };
            // Counts only where they died in more than one place.
            let how = match places[..] {
                [(k, _)] => place(k).to_string(),
                _ => places.iter().map(|&(k, n)| format!("{} ({n})", place(k))).collect::<Vec<_>>().join(", "),
            };
            format!(
                "partition into {} islands {} from {} to {} ({} ms): messages between them were {how}",
                a.islands.len(),
                names.join(" | "),
                fmt_time(first),
                fmt_time(last),
                (last - first) / 1_000_000
            )
        }
        (_, Facts::MissingNode { name }) => format!("{name} never answered the trigger: no dump from it"),
        (_, Facts::ClockStep(s)) => clock_step(w, s),
        (_, Facts::Unanswered { violation }) => violations.get(*violation).map_or_else(String::new, |v| v.text.clone()),
        (_, Facts::Contradiction { edges, more, dropped }) => {
            let mut parts: Vec<String> = edges.iter().map(|&e| edge(w, e)).collect();
            if *more > 0 {
                parts.push(format!("{more} more edges of the cycle"));
            }
            format!("contradiction: {} cannot all hold; ignored {}", parts.join(", and "), edge(w, *dropped))
        }
        (k, Facts::None) => k.name().to_string(),
    }
}

/// A network loss's text: where the message died.
fn loss(w: &Words<'_>, a: &Anomaly) -> String {
    let (from, to) = (a.nodes[0], a.nodes[1]);
    let what = (w.describe)(a.events[0]);
    match a.cause {
        Some(c @ Cause { kind: CauseKind::SenderKernel, .. }) => {
            format!("{what} never left {}: its own kernel dropped it ({})", w.name(from), w.reason(&c))
        }
        Some(c @ Cause { kind: CauseKind::ReceiverKernel, .. }) => {
            format!("{what} reached {}, whose kernel dropped it ({})", w.name(to), w.reason(&c))
        }
        _ => format!("{what} never reached {} (network loss on {}→{})", w.name(to), w.name(from), w.name(to)),
    }
}

/// A clock step's text: node, direction and size, when, and how it was told.
fn clock_step(w: &Words<'_>, s: &ClockStep) -> String {
    let size = fmt_ns(s.size_ns.abs());
    let how = match (s.seen_in_order, s.uncertainty_ns) {
        (true, Some(u)) => format!("time ran back in its program order; the size is from its traffic, ± {}", fmt_ns(u)),
        (true, None) => "time ran back in its program order; no traffic on both sides gave the exact size, which is at least this".into(),
        (false, Some(u)) => format!("all its peers' messages moved by it at once; ± {}", fmt_ns(u)),
        (false, None) => "its messages moved by it at once".into(),
    };
    let or = s.or_peer.map_or(String::new(), |p| {
        format!(
            " Only its traffic with {} shows it: {}'s clock may have stepped {} instead.",
            w.name(p),
            w.name(p),
            if s.size_ns > 0 { "back" } else { "forward" }
        )
    });
    format!(
        "{}'s clock stepped {} {size} at {} ({how}); its times after the step are moved back onto its clock before it.{or}",
        w.name(s.node),
        if s.size_ns < 0 { "back" } else { "forward" },
        fmt_time(w.clocks.corrected(s.node, s.at_raw))
    )
}

/// One edge of a contradicting cycle.
fn edge(w: &Words<'_>, (a, b, k): (EventId, EventId, EdgeKind)) -> String {
    let d = w.describe;
    match k {
        EdgeKind::Program => format!("{} before {} (program order)", d(a), d(b)),
        EdgeKind::Message(i) => {
            let kind = w.matching.kinds.get(i as usize).map_or("match", |k| match k {
                MessageKind::Keyed => "match",
                MessageKind::KeyedByTime => "match by time",
                MessageKind::TcpRange => "TCP byte-range match",
            });
            format!("{} before {} ({kind})", d(a), d(b))
        }
        EdgeKind::Rule(r) => format!("{} before {} (rule {})", d(a), d(b), w.spec.rules[r as usize].name),
    }
}

/// One finding's text (its anomaly's, where it tells one: fill those first).
pub fn finding(w: &Words<'_>, f: &Finding, anomalies: &[Anomaly], violations: &[Violation]) -> String {
    if let Some(a) = f.anomaly.and_then(|i| anomalies.get(i)) {
        return if a.kind == Kind::NetworkLoss { loss(w, a) } else { a.text.clone() };
    }
    let span = match f.span {
        Some((a, b)) if a == b => format!(" at {}", fmt_time(a)),
        Some((a, b)) => format!(" from {} to {}", fmt_time(a), fmt_time(b)),
        None => String::new(),
    };
    match f.kind {
        FindingKind::Clock => format!(
            "{}'s clock could not be estimated from the traffic (too few messages both ways): its times are taken as NTP-aligned, and losses to it are judged with a {} ms margin",
            w.name(f.nodes[0]),
            super::losses::NTP_MARGIN_NS / 1_000_000
        ),
        FindingKind::RetryStorm => format!(
            "retry storm on {}: {} message(s) resent {}+ times within {} ms{}; the first: {}",
            w.name(f.nodes[0]),
            f.count,
            super::retries::STORM_COUNT,
            super::retries::STORM_WINDOW_NS / 1_000_000,
            f.span.map_or(String::new(), |(a, b)| format!(" from {} to {}", fmt_time(a), fmt_time(b))),
            f.evidence.first().map_or_else(String::new, |&e| (w.describe)(e))
        ),
        FindingKind::Unanswered | FindingKind::Violation => {
            let picked: Vec<&str> = f.examples.iter().filter_map(|&k| violations.get(k)).map(|v| v.text.as_str()).collect();
            let examples = match picked.len() {
                1 => format!("the first: {}", picked[0]),
                _ => format!("the first of each kind: {}", picked.join("; ")),
            };
            match f.kind {
                FindingKind::Unanswered => format!("{} request(s) unanswered ({}); {examples}", f.count, f.rule),
                _ => format!("{} violated {} time(s); {examples}", f.rule, f.count),
            }
        }
        FindingKind::KernelDrop => {
            let cause = f.cause.unwrap_or(Cause::NETWORK);
            let out_going = cause.kind == CauseKind::SenderKernel;
            let reason = w.reason(&cause);
            let (who, count) = (w.name(f.nodes[0]), f.count);
            let with = match f.peers.as_slice() {
                [] => String::new(),
                p => format!(" {} {}", if out_going { "to" } else { "from" }, w.names(p, ", ")),
            };
            let text = match (out_going, reason) {
                (true, "netfilter_drop") => {
                    format!("{who}'s own firewall dropped {count} of its messages{with} before they left (netfilter_drop)")
                }
                (false, "netfilter_drop") => format!("dropped by {who}'s firewall: {count} messages{with} (netfilter_drop)"),
                (false, "socket_rcvbuff") => {
                    format!(
                        "{who}'s receive buffer was full ({count} drops{with}, socket_rcvbuff): its application did not read fast enough"
                    )
                }
                (false, "no_socket") => format!("nothing listened on {who} for {count} messages{with} (no_socket)"),
                (true, _) => format!("{who}'s kernel dropped {count} of its messages{with} on the way out ({reason})"),
                (false, _) => format!("{who}'s kernel dropped {count} messages{with} on the way in ({reason})"),
            };
            format!("{text}{span}")
        }
        // The rest tell one anomaly each.
        k => format!("{k:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::anomalies::Detail;
    use super::super::testkit::*;
    use super::*;

    fn words_for<'a>(t: &'a Trace, m: &'a Matching, spec: &'a Spec, describe: &'a (dyn Fn(EventId) -> String + Sync)) -> Words<'a> {
        Words { trace: t, clocks: &SameClock, spec, matching: m, describe }
    }

    /// An IPv6/UDP datagram fd00::1:40000 → fd00::2:7000.
    fn udp6(payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[17, 64]);
        for last in [1, 2] {
            p.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, last]);
        }
        p.extend_from_slice(&40000u16.to_be_bytes());
        p.extend_from_slice(&7000u16.to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn a_kernel_drop_of_an_ipv6_packet_brackets_its_addresses_as_the_json_does() {
        let p = udp6(b"x");
        let t = trace(vec![vec![send(0, udp(addr(0), addr(1), 1, b"a"))], vec![dropped(recv(1_000, p), "netfilter_drop")]]);
        let m = Matching::default();
        let spec = Spec::default();
        let describe = |id: EventId| format!("event {id}");
        let w = words_for(&t, &m, &spec, &describe);
        let mut a = Anomaly::with_facts(Kind::KernelDrop, Vec::new(), Facts::KernelDrop { drop: 0 });
        a.nodes.push(1);
        assert_eq!(
            anomaly(&w, &a, &[]),
            "n2's kernel dropped UDP [fd00::1]:40000 → [fd00::2]:7000 on the way in (netfilter_drop: firewall)"
        );
    }

    #[test]
    fn a_partition_counts_its_places_only_where_there_are_several() {
        let t = trace(vec![vec![], vec![], vec![]]);
        let m = Matching::default();
        let spec = Spec::default();
        let describe = |id: EventId| format!("event {id}");
        let w = words_for(&t, &m, &spec, &describe);
        let mut a = Anomaly::with_facts(Kind::Partition, vec![], Facts::Partition { places: vec![(CauseKind::Network, 4)] });
        a.islands = vec![vec![0], vec![1, 2]];
        a.span = Some((1_000_000_000, 1_500_000_000));
        assert_eq!(
            anomaly(&w, &a, &[]),
            "partition into 2 islands {n1} | {n2, n3} from 00:00:01.000000 to 00:00:01.500000 (500 ms): messages between them were lost in the network"
        );
        a.detail = Some(Box::new(Detail {
            facts: Facts::Partition { places: vec![(CauseKind::ReceiverKernel, 3), (CauseKind::Network, 1)] },
            ..Detail::default()
        }));
        assert!(anomaly(&w, &a, &[]).ends_with("dropped by the receivers' firewalls (3), lost in the network (1)"));
    }

    #[test]
    fn a_kernel_drop_finding_says_who_which_way_and_when() {
        let t = trace(vec![vec![], vec![]]);
        let m = Matching::default();
        let spec = Spec::default();
        let describe = |id: EventId| format!("event {id}");
        let w = words_for(&t, &m, &spec, &describe);
        let f = Finding {
            kind: FindingKind::KernelDrop,
            nodes: vec![1],
            peers: vec![0],
            count: 3,
            span: Some((2_000_000_000, 2_000_000_000)),
            cause: Some(Cause { kind: CauseKind::ReceiverKernel, reason: None }),
            ..Finding::default()
        };
        assert_eq!(finding(&w, &f, &[], &[]), "n2's kernel dropped 3 messages from n1 on the way in (?) at 00:00:02.000000");
    }
}
