//! The JSON report (its fields are documented in the README), written either after the
//! analysis or while the order places the events ([`analyze_to_json`]), byte for byte
//! the same.

use std::fmt::Write as _;
use std::io::Write;

use serde::Serialize;

use crate::analysis::anomalies::Kind;
use crate::analysis::clocks::Clocks;
use crate::analysis::order::{NO_GROUP, Placed};
use crate::analysis::rules::UNKNOWN;
use crate::analysis::spec::{Spec, Value};
use crate::analysis::trace::{Dir, ProtoCode, Trace};
use crate::analysis::{Analysis, Inputs, push_label};

/// `addr:port` (IPv6 bracketed), or just the address for ICMP.
fn push_endpoint(buf: &mut String, addr: &str, port: u16, proto: ProtoCode, num: &mut itoa::Buffer) {
    if !proto.has_ports() {
        buf.push_str(addr.trim_start_matches('[').trim_end_matches(']'));
    } else {
        buf.push_str(addr);
        buf.push(':');
        buf.push_str(num.format(port));
    }
}

pub(crate) fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_json_str(&mut out, s);
    out
}

/// Appends `s` as a JSON string literal.
fn push_json_str(buf: &mut String, s: &str) {
    buf.push('"');
    // Runs that need no escaping are copied whole; every escaped byte is ASCII, so the
    // cuts fall on character boundaries.
    let mut start = 0;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        buf.push_str(&s[start..i]);
        if escaped.is_empty() {
            let _ = write!(buf, "\\u{:04x}", b);
        } else {
            buf.push_str(escaped);
        }
        start = i + 1;
    }
    buf.push_str(&s[start..]);
    buf.push('"');
}

/// Events formatted into one piece of text before it is written: a whole batch's text
/// would be megabytes held for nothing.
const EVENTS_PER_PIECE: usize = 1024;

/// Formats events as JSON. Node names, addresses and field names are escaped once
/// here, not for every event.
pub struct EventJson<'a> {
    trace: &'a Trace,
    spec: &'a Spec,
    classes: &'a [u16],
    nodes: Vec<String>,
    addrs: Vec<String>,
    fields: Vec<Vec<String>>,
}

impl<'a> EventJson<'a> {
    pub fn new(trace: &'a Trace, spec: &'a Spec, classes: &'a [u16]) -> EventJson<'a> {
        EventJson {
            trace,
            spec,
            classes,
            nodes: trace.nodes.iter().map(|n| json_str(&n.name)).collect(),
            addrs: super::addr_texts(trace),
            fields: spec.messages.iter().map(|m| m.fields.iter().map(|f| json_str(&f.name)).collect()).collect(),
        }
    }

    /// The report's opening, up to the start of the events array.
    pub fn write_head<W: Write>(&self, w: &mut W, clocks: &Clocks) -> std::io::Result<()> {
        let t = self.trace;
        let nodes: Vec<serde_json::Value> = t
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let c = &clocks.nodes[i];
                let steps: Vec<serde_json::Value> =
                    clocks.steps.iter().filter(|s| s.node as usize == i).map(|s| step_json(t, clocks, s)).collect();
                let segments: Vec<serde_json::Value> = clocks
                    .segments(i as u16)
                    .iter()
                    .map(|(from, off)| serde_json::json!({"from_raw_ns": from, "offset_ns": off}))
                    .collect();
                serde_json::json!({
                    "clock_steps": steps,
                    "segments": segments,
                    "name": n.name,
                    "offset_ns": c.offset_ns,
                    "uncertainty_ns": c.uncertainty_ns,
                    "quality": c.quality,
                    "drift_ppm": (c.drift * 1e6 * 1000.0).round() / 1000.0,
                    "events": t.node_ranges[i].len(),
                    "file": n.file,
                    "skipped": n.skipped,
                    "kernel_drops": n.kernel_drops,
                })
            })
            .collect();
        let pairs: Vec<serde_json::Value> = clocks
            .pairs
            .iter()
            .map(|p| {
                serde_json::json!({
                    "a": t.nodes[p.a as usize].name,
                    "b": t.nodes[p.b as usize].name,
                    "messages": p.messages,
                    "both_directions": p.both_directions,
                    "offset_ns": p.theta.round() as i64,
                    "drift_ppm": (p.drift * 1e6 * 1000.0).round() / 1000.0,
                    "uncertainty_ns": p.uncertainty.ceil() as i64,
                    "inconsistent": p.inconsistent,
                    "dropped_bounds": p.dropped_strong + p.dropped_weak,
                    "dropped_trigger_bounds": p.dropped_weak,
                })
            })
            .collect();
        write!(w, "{{\"trigger_reasons\":")?;
        serde_json::to_writer(&mut *w, &t.trigger_reasons())?;
        write!(w, ",\"reference\":{},\"nodes\":", json_str(&t.nodes[clocks.reference as usize].name))?;
        serde_json::to_writer(&mut *w, &nodes)?;
        w.write_all(b",\"clock_pairs\":")?;
        serde_json::to_writer(&mut *w, &pairs)?;
        w.write_all(b",\"events\":[")
    }

    /// Appends placed events as JSON to `buf`; `first`: the first in the array (no comma).
    pub fn push_events(&self, buf: &mut String, first: bool, events: impl Iterator<Item = Placed>) {
        let t = self.trace;
        let mut label = String::with_capacity(64);
        let mut num = itoa::Buffer::new();
        for (k, p) in events.enumerate() {
            let i = p.id as usize;
            let e = &t.events[i];
            if k > 0 || !first {
                buf.push(',');
            }
            buf.push_str("{\"id\":");
            buf.push_str(num.format(p.id));
            buf.push_str(",\"node\":");
            buf.push_str(&self.nodes[e.node as usize]);
            buf.push_str(if e.dir == Dir::Send { ",\"dir\":\"send\",\"t_raw_ns\":" } else { ",\"dir\":\"recv\",\"t_raw_ns\":" });
            buf.push_str(num.format(e.t_raw));
            buf.push_str(",\"t_ns\":");
            buf.push_str(num.format(p.t_ns));
            buf.push_str(",\"cpu\":");
            buf.push_str(num.format(e.cpu));
            buf.push_str(",\"seq\":");
            if e.seq == u64::MAX {
                buf.push_str("null")
            } else {
                buf.push_str(num.format(e.seq))
            }
            buf.push_str(",\"proto\":\"");
            buf.push_str(e.proto.name());
            buf.push_str("\",\"ip_proto\":");
            buf.push_str(num.format(e.proto.0));
            buf.push_str(",\"src\":\"");
            push_endpoint(buf, &self.addrs[e.src as usize], e.sport, e.proto, &mut num);
            buf.push_str("\",\"dst\":\"");
            push_endpoint(buf, &self.addrs[e.dst as usize], e.dport, e.proto, &mut num);
            buf.push_str("\",\"len\":");
            buf.push_str(num.format(e.orig_len));
            buf.push_str(",\"label\":");
            label.clear();
            push_label(t, self.spec, self.classes, i, &mut label, &mut num);
            push_json_str(buf, &label);
            buf.push_str(",\"fields\":{");
            if self.classes[i] != UNKNOWN {
                let c = self.classes[i] as usize;
                let payload = t.payload(e);
                let mut first = true;
                for (fi, f) in self.spec.messages[c].fields.iter().enumerate() {
                    let Some(v) = self.spec.field(c, fi, payload) else { continue };
                    if !first {
                        buf.push(',');
                    }
                    first = false;
                    buf.push_str(&self.fields[c][fi]);
                    buf.push(':');
                    match v {
                        Value::Int(n) => match f.labels.get(&n) {
                            Some(l) => push_json_str(buf, l),
                            None => buf.push_str(num.format(n)),
                        },
                        Value::Text(s) => push_json_str(buf, &s),
                    }
                }
            }
            buf.push_str("},\"concurrent\":");
            match p.group {
                NO_GROUP => buf.push_str("null"),
                g => buf.push_str(num.format(g)),
            }
            buf.push('}');
        }
    }

    /// Writes batches of placed events as they arrive (from the order, while it is
    /// being built), one after another; returns the writer when the batches end.
    pub fn write_events_from<W: Write>(&self, mut w: W, batches: std::sync::mpsc::Receiver<Vec<Placed>>) -> std::io::Result<W> {
        let mut buf = String::new();
        let mut first = true;
        for batch in batches {
            for piece in batch.chunks(EVENTS_PER_PIECE) {
                buf.clear();
                self.push_events(&mut buf, first, piece.iter().copied());
                first = false;
                w.write_all(buf.as_bytes())?;
            }
        }
        Ok(w)
    }
}

/// Writes the JSON report. [`analyze_to_json`] writes the same bytes while the analysis runs.
pub fn write_json<W: Write>(a: &Analysis, out: W) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::with_capacity(64 << 10, out);
    let cx = EventJson::new(&a.trace, &a.spec, &a.classes);
    cx.write_head(&mut w, &a.clocks)?;
    let mut buf = String::new();
    for (k, ids) in a.order.order.chunks(EVENTS_PER_PIECE).enumerate() {
        buf.clear();
        let placed = ids.iter().map(|&id| Placed { id, t_ns: a.order.t_ns[id as usize], group: a.order.group[id as usize] });
        cx.push_events(&mut buf, k == 0, placed);
        w.write_all(buf.as_bytes())?;
    }
    write_json_tail(a, &mut w)?;
    w.flush()
}

/// One clock step: where (reference time, and the node's clock before the step), how far, how sure.
fn step_json(t: &Trace, clocks: &Clocks, s: &crate::analysis::steps::ClockStep) -> serde_json::Value {
    use crate::analysis::matching::TimeMap;
    serde_json::json!({
        "node": t.nodes[s.node as usize].name,
        "at_ns": clocks.corrected(s.node, s.at_raw),
        "at_raw_ns": s.at_raw,
        "first_after_recorded_ns": s.first_after_recorded,
        "size_ns": s.size_ns,
        "uncertainty_ns": s.uncertainty_ns,
        "seen_in_order": s.seen_in_order,
        "or_peer": s.or_peer.map(|p| t.nodes[p as usize].name.as_str()),
    })
}

/// The report after the events array: messages, anomalies, violations.
pub(crate) fn write_json_tail<W: Write>(a: &Analysis, w: &mut W) -> std::io::Result<()> {
    let t = &a.trace;
    w.write_all(b"],\"messages\":[")?;
    let mut buf = String::with_capacity(64);
    let mut num = itoa::Buffer::new();
    for (k, (s, r)) in a.matching.messages.iter().enumerate() {
        buf.clear();
        if k > 0 {
            buf.push(',');
        }
        buf.push_str("{\"send\":");
        buf.push_str(num.format(*s));
        buf.push_str(",\"recv\":");
        buf.push_str(num.format(*r));
        buf.push('}');
        w.write_all(buf.as_bytes())?;
    }
    w.write_all(b"],\"anomalies\":")?;
    // One anomaly at a time: a report can hold millions of them.
    #[derive(Serialize)]
    struct AnomalyJson<'a> {
        kind: Kind,
        events: &'a [u32],
        text: &'a str,
        nodes: Vec<&'a str>,
        islands: Vec<Vec<&'a str>>,
        span_ns: Option<(i64, i64)>,
        /// For clock steps: node, times, size.
        #[serde(skip_serializing_if = "Option::is_none", flatten)]
        step: Option<serde_json::Value>,
        /// For losses: where it died (`network`, `sender_kernel`, `receiver_kernel`); for
        /// data sent into a closed TCP connection, `closed_connection`.
        #[serde(skip_serializing_if = "Option::is_none")]
        cause: Option<&'static str>,
        /// For kernel drops and losses to them: the kernel's reason.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
        /// For kernel drops: the node whose kernel dropped it.
        #[serde(skip_serializing_if = "Option::is_none")]
        node: Option<&'a str>,
        /// For lossy links: their directed links.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        links: Vec<[&'a str; 2]>,
        /// For a lossy node: the node all of whose links lost.
        #[serde(skip_serializing_if = "Option::is_none")]
        all_links_of: Option<&'a str>,
        /// For stalls: the nodes that waited on the stalled one.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        waiters: Vec<&'a str>,
        /// For kernel drops and losses to them: a refusal while the listener was starting.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        startup: bool,
    }
    let mut steps = a.clocks.steps.iter();
    let name = |n: &u16| t.nodes[*n as usize].name.as_str();
    w.write_all(b"[")?;
    for (k, x) in a.anomalies.iter().enumerate() {
        if k > 0 {
            w.write_all(b",")?;
        }
        let json = AnomalyJson {
            kind: x.kind,
            events: &x.events,
            text: &a.anomaly_text(x),
            nodes: x.nodes.iter().map(name).collect(),
            islands: x.islands.iter().map(|i| i.iter().map(name).collect()).collect(),
            span_ns: x.span,
            step: if x.kind == Kind::ClockStep { steps.next().map(|s| step_json(t, &a.clocks, s)) } else { None },
            cause: match x.kind {
                Kind::NetworkLoss | Kind::Partition | Kind::LossyLink => x.cause.map(|c| c.kind.name()),
                Kind::ClosedConnection => Some("closed_connection"),
                _ => None,
            },
            reason: x.cause.and_then(|c| c.reason).and_then(|r| t.drop_reasons.get(r as usize)).map(String::as_str),
            node: (x.kind == Kind::KernelDrop).then(|| x.nodes.first().map(name)).flatten(),
            links: x.detail.iter().flat_map(|d| d.links.iter().map(|(p, q)| [name(p), name(q)])).collect(),
            all_links_of: x.detail.as_ref().and_then(|d| d.all_links_of.as_ref().map(name)),
            waiters: x.detail.iter().flat_map(|d| d.waiters.iter().map(name)).collect(),
            startup: x.detail.as_ref().is_some_and(|d| d.startup),
        };
        serde_json::to_writer(&mut *w, &json)?;
    }
    w.write_all(b"]")?;
    w.write_all(b",\"violations\":")?;
    serde_json::to_writer(&mut *w, &a.violations)?;
    w.write_all(b",\"findings\":")?;
    serde_json::to_writer(&mut *w, &findings_json(a))?;
    w.write_all(b"}\n")
}

/// Where lost messages died: `kind` (`network`, `sender_kernel`, `receiver_kernel`) and,
/// for a kernel's, its `reason`.
fn cause_json(t: &Trace, c: crate::analysis::anomalies::Cause) -> serde_json::Value {
    serde_json::json!({
        "kind": c.kind.name(),
        "reason": c.reason.and_then(|r| t.drop_reasons.get(r as usize)),
    })
}

/// The ranked findings as JSON values.
pub fn findings_json(a: &Analysis) -> Vec<serde_json::Value> {
    let name = |n: &u16| a.trace.nodes[*n as usize].name.as_str();
    a.findings
        .iter()
        .enumerate()
        .map(|(k, f)| {
            serde_json::json!({
                "rank": k + 1,
                "kind": f.kind,
                "nodes": f.nodes.iter().map(name).collect::<Vec<_>>(),
                "links": f.links.iter().map(|(x, y)| [name(x), name(y)]).collect::<Vec<_>>(),
                "span_ns": f.span,
                "text": f.text,
                "evidence": f.evidence,
                "islands": f.islands.iter().map(|i| i.iter().map(name).collect::<Vec<_>>()).collect::<Vec<_>>(),
                "cause": f.cause.map(|c| cause_json(&a.trace, c)),
                "all_links_of": f.all_links_of.as_ref().map(name),
                "waiters": f.waiters.iter().map(name).collect::<Vec<_>>(),
            })
        })
        .collect()
}

/// Analyzes and writes the JSON report to `out`. The events are written while the order
/// places them, so the output's I/O overlaps the analysis instead of following it.
pub fn analyze_to_json<W: Write + Send>(trace: Trace, inputs: Inputs, mut out: W) -> std::io::Result<Analysis> {
    crate::report::analyze_to(trace, inputs, Some(&mut out), None, None).map(|(a, _)| a)
}

#[cfg(test)]
mod tests {
    #[test]
    fn another_ip_protocol_is_named_and_numbered_without_ports() {
        use crate::analysis::testkit::{addr, ip4, recv, send, trace};
        let vrrp = || ip4(addr(0), [224, 0, 0, 18], 112, 7, b"\x31\x33advert");
        let raw = || ip4(addr(0), addr(1), 253, 8, b"raw");
        let t = trace(vec![vec![send(100, vrrp()), send(200, raw())], vec![recv(150, vrrp()), recv(250, raw())]]);
        let mut out = Vec::new();
        super::write_json(&crate::analysis::analyze(t, Default::default()), &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let events = v["events"].as_array().unwrap();
        let of = |n: u64| events.iter().filter(|e| e["ip_proto"] == n).collect::<Vec<_>>();
        assert_eq!(of(112).len(), 2);
        assert!(of(112).iter().all(|e| e["proto"] == "VRRP" && e["src"] == "10.0.0.1" && e["dst"] == "224.0.0.18"), "{:?}", of(112));
        assert!(of(253).iter().all(|e| e["proto"] == "IP 253" && e["dst"] == "10.0.0.2"), "{:?}", of(253));
        assert_eq!(v["messages"].as_array().unwrap().len(), 2, "both matched: {}", v["messages"]);
    }

    #[test]
    fn json_strings_escape_what_json_requires_and_keep_the_rest() {
        for s in ["", "plain", "TASK #17 → node2", "quote \" and \\ back", "tab\tnew\nline\r", "\u{1}ctl\u{1f}", "é\"ü"] {
            let json = super::json_str(s);
            let back: String = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(back, s);
        }
        assert_eq!(super::json_str("a\"b\u{1}"), r#""a\"b\u0001""#);
    }
}
