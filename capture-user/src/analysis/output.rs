//! The collector's outputs: JSON, a merged pcapng, and a summary for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;

use super::Analysis;
use super::anomalies::{Anomaly, Kind};
use super::clocks::Clocks;
use super::order::{NO_GROUP, Placed};
use super::rules::UNKNOWN;
use super::spec::Spec;
use super::trace::{Dir, Event, EventId, ProtoCode, Trace};
use crate::dump::WGO_PEN;
use crate::pcapng::{self, Options, Writer};

/// `addr:port` (IPv6 bracketed), or just the address for ICMP.
fn push_endpoint(buf: &mut String, addr: &str, port: u16, proto: ProtoCode, num: &mut itoa::Buffer) {
    if proto == ProtoCode::Icmp || proto == ProtoCode::Other {
        buf.push_str(addr.trim_start_matches('[').trim_end_matches(']'));
    } else {
        buf.push_str(addr);
        buf.push(':');
        buf.push_str(num.format(port));
    }
}

fn json_str(s: &str) -> String {
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
            addrs: trace
                .addrs
                .iter()
                .map(|a| match a {
                    std::net::IpAddr::V4(v4) => v4.to_string(),
                    std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                })
                .collect(),
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
                serde_json::json!({
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
        write!(w, "{{\"reference\":{},\"nodes\":", json_str(&t.nodes[clocks.reference as usize].name))?;
        serde_json::to_writer(&mut *w, &nodes)?;
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
            if e.seq == u64::MAX { buf.push_str("null") } else { buf.push_str(num.format(e.seq)) }
            buf.push_str(",\"proto\":\"");
            buf.push_str(e.proto.name());
            buf.push_str("\",\"src\":\"");
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
                        super::spec::Value::Int(n) => match f.labels.get(&n) {
                            Some(l) => push_json_str(buf, l),
                            None => buf.push_str(num.format(n)),
                        },
                        super::spec::Value::Text(s) => push_json_str(buf, &s),
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

/// An event's display label: from the spec, else protocol and ports.
fn push_label(trace: &Trace, spec: &Spec, classes: &[u16], id: usize, out: &mut String, num: &mut itoa::Buffer) {
    let e = &trace.events[id];
    match classes[id] {
        UNKNOWN => match e.proto {
            ProtoCode::Icmp => out.push_str("ICMP"),
            p => {
                out.push_str(p.name());
                out.push(' ');
                out.push_str(num.format(e.sport));
                out.push('→');
                out.push_str(num.format(e.dport));
            }
        },
        c => spec.write_label(c as usize, trace.payload(e), out),
    }
}

impl Analysis {
    /// The event's display label: from the spec, else protocol and ports.
    pub fn label(&self, id: usize) -> String {
        let mut out = String::new();
        push_label(&self.trace, &self.spec, &self.classes, id, &mut out, &mut itoa::Buffer::new());
        out
    }

    /// An anomaly's text (network losses get theirs only when asked).
    pub fn anomaly_text<'a>(&self, a: &'a Anomaly) -> std::borrow::Cow<'a, str> {
        if a.kind == Kind::NetworkLoss && a.text.is_empty() {
            let describe = |id: EventId| super::rules::describe(&self.trace, &self.spec, &self.classes, id);
            std::borrow::Cow::Owned(super::anomalies::loss_text(&self.trace, &describe, a))
        } else {
            std::borrow::Cow::Borrowed(&a.text)
        }
    }

    /// Anomaly kinds per event.
    pub fn event_anomalies(&self) -> BTreeMap<u32, Vec<Kind>> {
        let mut m: BTreeMap<u32, Vec<Kind>> = BTreeMap::new();
        for a in &self.anomalies {
            for &e in &a.events {
                let v = m.entry(e).or_default();
                if !v.contains(&a.kind) {
                    v.push(a.kind);
                }
            }
        }
        m
    }

    /// Writes the JSON report (documented in the README). [`super::analyze_to_json`]
    /// writes the same bytes while the analysis runs.
    pub fn write_json<W: Write>(&self, out: W) -> std::io::Result<()> {
        let mut w = std::io::BufWriter::with_capacity(64 << 10, out);
        let cx = EventJson::new(&self.trace, &self.spec, &self.classes);
        cx.write_head(&mut w, &self.clocks)?;
        let mut buf = String::new();
        for (k, ids) in self.order.order.chunks(EVENTS_PER_PIECE).enumerate() {
            buf.clear();
            let placed = ids.iter().map(|&id| Placed { id, t_ns: self.order.t_ns[id as usize], group: self.order.group[id as usize] });
            cx.push_events(&mut buf, k == 0, placed);
            w.write_all(buf.as_bytes())?;
        }
        self.write_json_tail(&mut w)?;
        w.flush()
    }

    /// The report after the events array: messages, anomalies, violations.
    pub fn write_json_tail<W: Write>(&self, w: &mut W) -> std::io::Result<()> {
        let t = &self.trace;
        w.write_all(b"],\"messages\":[")?;
        let mut buf = String::with_capacity(64);
        let mut num = itoa::Buffer::new();
        for (k, (s, r)) in self.matching.messages.iter().enumerate() {
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
        #[derive(serde::Serialize)]
        struct AnomalyJson<'a> {
            kind: Kind,
            events: &'a [u32],
            text: &'a str,
            nodes: Vec<&'a str>,
            islands: Vec<Vec<&'a str>>,
            span_ns: Option<(i64, i64)>,
        }
        let name = |n: &u16| t.nodes[*n as usize].name.as_str();
        w.write_all(b"[")?;
        for (k, a) in self.anomalies.iter().enumerate() {
            if k > 0 {
                w.write_all(b",")?;
            }
            let json = AnomalyJson {
                kind: a.kind,
                events: &a.events,
                text: &self.anomaly_text(a),
                nodes: a.nodes.iter().map(name).collect(),
                islands: a.islands.iter().map(|i| i.iter().map(name).collect()).collect(),
                span_ns: a.span,
            };
            serde_json::to_writer(&mut *w, &json)?;
        }
        w.write_all(b"]")?;
        w.write_all(b",\"violations\":")?;
        serde_json::to_writer(&mut *w, &self.violations)?;
        w.write_all(b"}\n")
    }

    /// Writes every node's packets in global order, with corrected times and comments.
    pub fn write_pcapng<W: Write>(&self, out: W) -> std::io::Result<()> {
        let t = &self.trace;
        let mut shb = Options::new();
        shb.str(pcapng::SHB_USERAPPL, concat!("wgo ", env!("CARGO_PKG_VERSION"))).str(
            pcapng::OPT_COMMENT,
            &format!("wgo merged report of {} nodes; times corrected to {}'s clock", t.nodes.len(), t.nodes[self.clocks.reference as usize].name),
        );
        let mut w = Writer::new(std::io::BufWriter::with_capacity(1 << 20, out), &shb)?;
        for (i, n) in t.nodes.iter().enumerate() {
            let c = &self.clocks.nodes[i];
            let mut idb = Options::new();
            idb.str(pcapng::IF_NAME, &n.name)
                .str(
                    pcapng::IF_DESCRIPTION,
                    &format!(
                        "{}: clock offset {} ns ± {} ({:?})",
                        n.name,
                        c.offset_ns,
                        c.uncertainty_ns.map_or("unknown".into(), |u| u.to_string()),
                        c.quality
                    ),
                )
                .bytes(pcapng::IF_TSRESOL, &[9]);
            w.interface(pcapng::LINKTYPE_RAW, 65535, &idb)?;
        }
        let marks = self.event_anomalies();
        for &id in &self.order.order {
            let i = id as usize;
            let e: &Event = &t.events[i];
            let mut comment = self.label(i);
            if let Some(kinds) = marks.get(&id) {
                for k in kinds {
                    comment.push_str(" [");
                    comment.push_str(k.name());
                    comment.push(']');
                }
            }
            let _ = write!(comment, " (raw {} ns)", e.t_raw);
            w.packet(e.node as u32, self.order.t_ns[i].max(0) as u64, e.orig_len, t.data(e), |o| {
                o.u32(pcapng::EPB_FLAGS, if e.dir == Dir::Send { 2 } else { 1 })
                    .u32(pcapng::EPB_QUEUE, e.cpu as u32)
                    .str(pcapng::OPT_COMMENT, &comment)
                    .custom(WGO_PEN, &e.t_raw.to_le_bytes());
                if e.seq != u64::MAX {
                    o.u64(pcapng::EPB_PACKETID, e.seq);
                }
            })?;
        }
        w.into_inner().flush()
    }

    /// A short account for people: clocks, then what went wrong, most important first.
    pub fn summary(&self) -> String {
        let t = &self.trace;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} nodes, {} events, {} messages matched, {} rule edges; clocks relative to {}:",
            t.nodes.len(),
            t.events.len(),
            self.matching.messages.len(),
            self.rule_edges,
            t.nodes[self.clocks.reference as usize].name
        );
        for (i, n) in t.nodes.iter().enumerate() {
            let c = &self.clocks.nodes[i];
            let unc = c.uncertainty_ns.map_or("unknown".to_string(), |u| format!("± {}", fmt_ns(u)));
            let _ = writeln!(s, "  {:<12} offset {:>12} {:<14} {:?}, {} events", n.name, fmt_ns(c.offset_ns), unc, c.quality, t.node_ranges[i].len());
            for sk in &n.skipped {
                let _ = writeln!(s, "    skipped: {sk}");
            }
        }
        let mut by_kind: BTreeMap<Kind, Vec<&super::anomalies::Anomaly>> = BTreeMap::new();
        for a in &self.anomalies {
            by_kind.entry(a.kind).or_default().push(a);
        }
        if by_kind.is_empty() && self.violations.is_empty() {
            let _ = writeln!(s, "nothing went wrong that wgo can see");
        }
        // Losses per link, then everything else.
        if let Some(losses) = by_kind.get(&Kind::NetworkLoss) {
            let mut links: BTreeMap<(String, String), BTreeMap<String, usize>> = BTreeMap::new();
            for a in losses {
                let (from, to) = (t.nodes[a.nodes[0] as usize].name.clone(), t.nodes[a.nodes[1] as usize].name.clone());
                let what = a.events.first().map_or("message".into(), |&e| self.kind_name(e as usize));
                *links.entry((from, to)).or_default().entry(what).or_default() += 1;
            }
            let _ = writeln!(s, "network loss: {} messages never arrived", losses.len());
            for ((from, to), kinds) in links {
                let list: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
                let _ = writeln!(s, "  {from} → {to}: {}", list.join(", "));
            }
        }
        for (kind, list) in &by_kind {
            if *kind == Kind::NetworkLoss {
                continue;
            }
            let _ = writeln!(s, "{}: {}", kind.name().replace('_', " "), list.len());
            for a in list.iter().take(5) {
                let _ = writeln!(s, "  {}", self.anomaly_text(a));
            }
            if list.len() > 5 {
                let _ = writeln!(s, "  … and {} more", list.len() - 5);
            }
        }
        if !self.violations.is_empty() {
            let mut by_name: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for v in &self.violations {
                by_name.entry(&v.name).or_default().push(&v.text);
            }
            for (name, texts) in by_name {
                let _ = writeln!(s, "violated {name}: {}", texts.len());
                for t in texts.iter().take(3) {
                    let _ = writeln!(s, "  {t}");
                }
            }
        }
        s
    }

    /// Message type name of an event, or its protocol.
    pub fn kind_name(&self, id: usize) -> String {
        match self.classes[id] {
            UNKNOWN => self.trace.events[id].proto.name().to_string(),
            c => self.spec.messages[c as usize].name.clone(),
        }
    }
}

pub fn fmt_ns(ns: i64) -> String {
    let a = ns.unsigned_abs();
    let sign = if ns < 0 { "-" } else { "" };
    if a >= 1_000_000_000 {
        format!("{sign}{:.3} s", a as f64 / 1e9)
    } else if a >= 1_000_000 {
        format!("{sign}{:.3} ms", a as f64 / 1e6)
    } else if a >= 1_000 {
        format!("{sign}{:.1} µs", a as f64 / 1e3)
    } else {
        format!("{sign}{a} ns")
    }
}

#[cfg(test)]
mod tests {
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
