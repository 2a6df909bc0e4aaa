//! Applying a protocol spec: which message each event is, rule edges, invariant checks.

use std::collections::HashMap;

use super::matching::TimeMap;
use super::spec::{EventSel, InvariantDef, Spec, Value};
use super::trace::{Dir, EventId, NodeId, Trace};

pub const UNKNOWN: u16 = u16::MAX;
/// How far back receives count as what set off a "never" event, ns.
pub const NEVER_CAUSE_WINDOW_NS: i64 = 1_000_000;
/// A receive after this long without word from its sender is called out as such.
pub const SILENCE_NS: i64 = 200_000_000;
/// Identical "never" events this close together (one message to several peers) count once.
pub const NEVER_SAME_NS: i64 = 1_000_000;
/// A rule's earlier event may predate the recording: events this soon after a node's
/// recording starts are not called violations for lacking one.
pub const RULE_HORIZON_NS: i64 = 1_000_000_000;

/// The node that sent what event `id` received (by its source address).
fn sender_name(trace: &Trace, id: usize) -> Option<String> {
    let src = trace.events[id].src;
    trace.nodes.iter().find(|n| n.addrs.contains(&src)).map(|n| n.name.clone())
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Violation {
    /// The rule or invariant's name.
    pub name: String,
    pub events: Vec<EventId>,
    pub text: String,
}

/// The message type of every event (UNKNOWN where none matched).
pub fn classify(trace: &Trace, spec: &Spec) -> Vec<u16> {
    trace.events.iter().map(|e| spec.classify(trace, e).map_or(UNKNOWN, |m| m as u16)).collect()
}

fn selected(trace: &Trace, spec: &Spec, classes: &[u16], sel: &EventSel, id: usize) -> bool {
    classes[id] == sel.message as u16
        && sel.dir.is_none_or(|d| d == trace.events[id].dir)
        && sel.filter.iter().all(|(f, v)| spec.field(sel.message, *f, trace.payload(&trace.events[id])).as_ref() == Some(v))
}

fn key_of(trace: &Trace, spec: &Spec, message: usize, fields: impl Iterator<Item = usize>, id: usize) -> Option<Vec<Value>> {
    let payload = trace.payload(&trace.events[id]);
    fields.map(|f| spec.field(message, f, payload)).collect()
}

/// Describes an event for people: `TASK #5 received by node2`.
pub fn describe(trace: &Trace, spec: &Spec, classes: &[u16], id: EventId) -> String {
    let e = &trace.events[id as usize];
    let what = match classes.get(id as usize) {
        Some(&c) if c != UNKNOWN => spec.label(c as usize, trace.payload(e)),
        _ if !e.proto.has_ports() => format!("{} {} -> {}", e.proto.name(), trace.addr(e.src), trace.addr(e.dst)),
        _ => format!("{} {}:{} -> {}:{}", e.proto.name(), trace.addr(e.src), e.sport, trace.addr(e.dst), e.dport),
    };
    let verb = if e.dir == Dir::Send { "sent by" } else { "received by" };
    format!("{what} {verb} {}", trace.nodes[e.node as usize].name)
}

/// A rule's edge: (earlier, later, index of the rule in the spec).
pub type RuleEdge = (EventId, EventId, u32);

/// Edges from the spec's rules, and a violation for each event whose rule found no earlier event.
pub fn rule_edges(trace: &Trace, spec: &Spec, classes: &[u16], clocks: &dyn TimeMap) -> (Vec<RuleEdge>, Vec<Violation>) {
    let mut edges = Vec::new();
    let mut violations = Vec::new();
    for (ri, rule) in spec.rules.iter().enumerate() {
        // Earliest "after" event per (node if same_node, key).
        let mut first: HashMap<(Option<NodeId>, Vec<Value>), (i64, EventId)> = HashMap::new();
        for id in 0..trace.events.len() {
            if !selected(trace, spec, classes, &rule.after, id) {
                continue;
            }
            let e = &trace.events[id];
            let Some(k) = key_of(trace, spec, rule.after.message, rule.key.iter().map(|k| k.1), id) else { continue };
            let t = if rule.same_node { e.t_raw } else { clocks.corrected(e.node, e.t_raw) };
            let slot = first.entry((rule.same_node.then_some(e.node), k)).or_insert((t, id as EventId));
            if t < slot.0 {
                *slot = (t, id as EventId);
            }
        }
        for id in 0..trace.events.len() {
            if !selected(trace, spec, classes, &rule.event, id) {
                continue;
            }
            let e = &trace.events[id];
            let Some(k) = key_of(trace, spec, rule.event.message, rule.key.iter().map(|k| k.0), id) else { continue };
            match first.get(&(rule.same_node.then_some(e.node), k)) {
                Some(&(_, a)) => edges.push((a, id as EventId, ri as u32)),
                None if e.t_raw - trace.nodes[e.node as usize].window.0 < RULE_HORIZON_NS => {}
                None => {
                    let node = &trace.nodes[e.node as usize];
                    let after = &spec.messages[rule.after.message].name;
                    let where_ = if rule.same_node { format!(" on {}", node.name) } else { String::new() };
                    violations.push(Violation {
                        name: rule.name.clone(),
                        events: vec![id as EventId],
                        text: format!(
                            "{}: no {after} {}{where_} precedes it in the recording (rule {} requires one)",
                            describe(trace, spec, classes, id as EventId),
                            dir_word(rule.after.dir),
                            rule.name
                        ),
                    });
                }
            }
        }
    }
    (edges, violations)
}

fn dir_word(d: Option<Dir>) -> &'static str {
    match d {
        Some(Dir::Send) => "sent",
        Some(Dir::Recv) => "received",
        None => "seen",
    }
}

/// Checks the spec's invariants on the ordered events (`t_ns`: causally consistent time).
pub fn check_invariants(trace: &Trace, spec: &Spec, classes: &[u16], t_ns: &[i64], clocks: &dyn TimeMap) -> Vec<Violation> {
    let mut out = Vec::new();
    for inv in &spec.invariants {
        match inv {
            InvariantDef::Answered { name, request, response, key, within_ns } => {
                // Responses received, per (node, key), sorted by time.
                let mut responses: HashMap<(NodeId, Vec<Value>), Vec<i64>> = HashMap::new();
                for id in 0..trace.events.len() {
                    let e = &trace.events[id];
                    if classes[id] != *response as u16 || e.dir != Dir::Recv {
                        continue;
                    }
                    if let Some(k) = key_of(trace, spec, *response, key.iter().map(|k| k.1), id) {
                        responses.entry((e.node, k)).or_default().push(t_ns[id]);
                    }
                }
                for v in responses.values_mut() {
                    v.sort_unstable();
                }
                for id in 0..trace.events.len() {
                    let e = &trace.events[id];
                    if classes[id] != *request as u16 || e.dir != Dir::Send {
                        continue;
                    }
                    let node = &trace.nodes[e.node as usize];
                    // Undecidable when the recording ends before the deadline.
                    let end = clocks.corrected(e.node, node.window.1);
                    if t_ns[id] + within_ns > end {
                        continue;
                    }
                    let Some(k) = key_of(trace, spec, *request, key.iter().map(|k| k.0), id) else { continue };
                    let answered = responses.get(&(e.node, k)).is_some_and(|ts| {
                        let i = ts.partition_point(|&t| t < t_ns[id]);
                        ts.get(i).is_some_and(|&t| t <= t_ns[id] + within_ns)
                    });
                    if !answered {
                        out.push(Violation {
                            name: name.clone(),
                            events: vec![id as EventId],
                            text: format!(
                                "{} got no {} within {} ms",
                                describe(trace, spec, classes, id as EventId),
                                spec.messages[*response].name,
                                within_ns / 1_000_000
                            ),
                        });
                    }
                }
            }
            InvariantDef::Never { name, sel } => {
                for r in &trace.node_ranges {
                    let mut last: Option<usize> = None;
                    for id in r.clone() {
                        if !selected(trace, spec, classes, sel, id) {
                            continue;
                        }
                        // The same message sent to several peers at once is one event here.
                        let e = &trace.events[id];
                        if last.is_some_and(|l| {
                            trace.content_hash(&trace.events[l]) == trace.content_hash(e) && e.t_raw - trace.events[l].t_raw < NEVER_SAME_NS
                        }) {
                            continue;
                        }
                        last = Some(id);
                        // What the node had just received explains it, more often than not.
                        let causes: Vec<usize> = (r.start..id)
                            .rev()
                            .take(64)
                            .filter(|&p| trace.events[p].dir == Dir::Recv && e.t_raw - trace.events[p].t_raw <= NEVER_CAUSE_WINDOW_NS)
                            .take(5)
                            .collect();
                        let text = if causes.is_empty() {
                            describe(trace, spec, classes, id as EventId)
                        } else {
                            let list: Vec<String> = causes
                                .iter()
                                .map(|&p| {
                                    // A sender heard from again after a silence is often the story.
                                    let src = trace.events[p].src;
                                    let silence = (r.start..p)
                                        .rev()
                                        .find(|&q| trace.events[q].dir == Dir::Recv && trace.events[q].src == src)
                                        .map(|q| trace.events[p].t_raw - trace.events[q].t_raw)
                                        .filter(|&gap| gap >= SILENCE_NS)
                                        .map(|gap| format!(", the first from it in {}", super::fmt::fmt_ns(gap)))
                                        .unwrap_or_default();
                                    format!(
                                        "{} (from {}, {} before{silence})",
                                        describe(trace, spec, classes, p as EventId),
                                        sender_name(trace, p).unwrap_or_else(|| "an unrecorded node".into()),
                                        super::fmt::fmt_ns(e.t_raw - trace.events[p].t_raw)
                                    )
                                })
                                .collect();
                            format!("{}, right after {}", describe(trace, spec, classes, id as EventId), list.join("; "))
                        };
                        let mut events = vec![id as EventId];
                        events.extend(causes.iter().map(|&p| p as EventId));
                        out.push(Violation { name: name.clone(), events, text });
                    }
                }
            }
            InvariantDef::Monotonic { name, message, field, dir } => {
                for r in &trace.node_ranges {
                    let mut last: Option<(Value, usize)> = None;
                    for id in r.clone() {
                        if classes[id] != *message as u16 || dir.is_some_and(|d| d != trace.events[id].dir) {
                            continue;
                        }
                        let Some(v) = spec.field(*message, *field, trace.payload(&trace.events[id])) else { continue };
                        if let Some((prev, pid)) = &last
                            && v < *prev
                        {
                            out.push(Violation {
                                name: name.clone(),
                                events: vec![*pid as EventId, id as EventId],
                                text: format!(
                                    "{} went from {prev} to {v} on {}: {} after {}",
                                    spec.messages[*message].fields[*field].name,
                                    trace.nodes[trace.events[id].node as usize].name,
                                    describe(trace, spec, classes, id as EventId),
                                    describe(trace, spec, classes, *pid as EventId)
                                ),
                            });
                        }
                        last = Some((v, id));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{SameClock, addr, recv, send, trace_in, udp};
    use super::*;

    const SPEC: &str = r#"
[[message]]
name = "TASK"
match = [{ offset = 0, ascii = "TASK" }]
display = "TASK #{task}"
fields = [{ name = "task", offset = 4, width = 1 }]

[[message]]
name = "ACK"
match = [{ offset = 0, ascii = "ACK!" }]
display = "ACK #{task}"
fields = [{ name = "task", offset = 4, width = 1 }]

[[message]]
name = "VOTE"
match = [{ offset = 0, ascii = "VOTE" }]
display = "VOTE {ballot}"
fields = [{ name = "ballot", offset = 4, width = 1 }]

[[rule]]
name = "ack-after-task"
event = { message = "ACK", dir = "send" }
after = { message = "TASK", dir = "recv" }
same_node = true
key = ["task"]

[[invariant]]
name = "every-task-acked"
kind = "answered"
request = "TASK"
response = "ACK"
key = ["task"]
within_ms = 100

[[invariant]]
name = "ballots-never-decrease"
kind = "monotonic"
message = "VOTE"
field = "ballot"
dir = "send"
"#;

    const S: i64 = 1_000_000_000;

    /// n1 asks n2 for tasks 1 and 2; n2 acks task 1 (after receiving it), and, 2 s in,
    /// acks task 3 that it never received. n1 votes 5, then 4.
    fn cluster() -> (Trace, Spec, Vec<u16>) {
        let (n1, n2) = (addr(0), addr(1));
        let t = trace_in(
            vec![
                vec![
                    send(S, udp(n1, n2, 1, b"TASK\x01")),
                    send(S + 1000, udp(n1, n2, 2, b"TASK\x02")),
                    recv(S + 3000, udp(n2, n1, 3, b"ACK!\x01")),
                    send(S + 4000, udp(n1, n2, 4, b"VOTE\x05")),
                    send(S + 5000, udp(n1, n2, 5, b"VOTE\x04")),
                ],
                vec![
                    recv(S + 100, udp(n1, n2, 1, b"TASK\x01")),
                    recv(S + 1100, udp(n1, n2, 2, b"TASK\x02")),
                    send(S + 2000, udp(n2, n1, 3, b"ACK!\x01")),
                    send(3 * S, udp(n2, n1, 6, b"ACK!\x03")),
                ],
            ],
            (0, 4 * S),
        );
        let spec = Spec::parse(SPEC, "test.toml").unwrap();
        let classes = classify(&t, &spec);
        (t, spec, classes)
    }

    #[test]
    fn events_get_their_message_type_and_description() {
        let (t, spec, classes) = cluster();
        let names: Vec<&str> = classes.iter().map(|&c| if c == UNKNOWN { "?" } else { spec.messages[c as usize].name.as_str() }).collect();
        assert_eq!(names, vec!["TASK", "TASK", "ACK", "VOTE", "VOTE", "TASK", "TASK", "ACK", "ACK"]);
        assert_eq!(describe(&t, &spec, &classes, 0), "TASK #1 sent by n1");
        assert_eq!(describe(&t, &spec, &classes, 7), "ACK #1 sent by n2");
        assert_eq!(sender_name(&t, 2).as_deref(), Some("n2"));
    }

    #[test]
    fn a_rule_gives_an_edge_per_keyed_pair_and_a_violation_where_nothing_precedes() {
        let (t, spec, classes) = cluster();
        let (edges, violations) = rule_edges(&t, &spec, &classes, &SameClock);
        // n2 received TASK #1 (event 5) before it sent ACK #1 (event 7).
        assert_eq!(edges, vec![(5, 7, 0)]);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].name, "ack-after-task");
        assert_eq!(violations[0].events, vec![8]);
        assert!(violations[0].text.contains("ACK #3 sent by n2: no TASK received on n2 precedes it"), "{}", violations[0].text);
    }

    #[test]
    fn invariants_name_unanswered_requests_and_a_decrease() {
        let (t, spec, classes) = cluster();
        let t_ns: Vec<i64> = t.events.iter().map(|e| e.t_raw).collect();
        let v = check_invariants(&t, &spec, &classes, &t_ns, &SameClock);
        let by_name = |n: &str| v.iter().filter(|x| x.name == n).collect::<Vec<_>>();
        let unanswered = by_name("every-task-acked");
        assert_eq!(unanswered.len(), 1, "{v:?}");
        assert_eq!(unanswered[0].events, vec![1], "TASK #2 got no ACK");
        let decrease = by_name("ballots-never-decrease");
        assert_eq!(decrease.len(), 1, "{v:?}");
        assert!(decrease[0].events.contains(&4), "{:?}", decrease[0]);
    }
}
