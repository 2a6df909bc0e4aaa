//! The browser timeline: one self-contained HTML file (template in `templates/`).
//!
//! The data goes in as one gzipped, base64-encoded binary blob: a JSON header followed
//! by little-endian typed arrays (one per event column), so a million events load as
//! typed-array views instead of a million JSON objects. Labels and fields are decoded
//! in the page from the spec's field definitions and each packet's bytes.

use std::io::Write;

use base64::Engine;
use serde_json::json;

use crate::analysis::Analysis;
use crate::analysis::anomalies::{Facts, Kind};
use crate::analysis::order::NO_GROUP;
use crate::analysis::rules::UNKNOWN;
use crate::analysis::trace::Dir;

const TEMPLATE: &str = include_str!("../../../templates/timeline.html");

/// Anomaly kinds, in the bit order the page uses.
pub const KINDS: [Kind; 14] = [
    Kind::NetworkLoss,
    Kind::RecorderLoss,
    Kind::Duplicate,
    Kind::Retransmission,
    Kind::RetryStorm,
    Kind::Unanswered,
    Kind::Partition,
    Kind::StalledNode,
    Kind::ClosedConnection,
    Kind::MissingNode,
    Kind::Contradiction,
    Kind::ClockStep,
    Kind::KernelDrop,
    Kind::LossyLink,
];

struct Blob {
    bytes: Vec<u8>,
    columns: Vec<serde_json::Value>,
}

impl Blob {
    fn column<T: Copy>(&mut self, name: &str, ty: &str, values: &[T], to_le: impl Fn(T) -> Vec<u8>) {
        // Typed arrays need their offset aligned to the element size.
        while !self.bytes.len().is_multiple_of(8) {
            self.bytes.push(0);
        }
        let offset = self.bytes.len();
        self.bytes.reserve(std::mem::size_of_val(values));
        for &v in values {
            self.bytes.extend_from_slice(&to_le(v));
        }
        self.columns.push(json!({"name": name, "type": ty, "offset": offset, "length": values.len()}));
    }
}

/// Renders the timeline page.
pub fn write_html<W: Write>(an: &Analysis, mut out: W, title: &str) -> std::io::Result<()> {
    let t = &an.trace;
    // Display order: causally consistent corrected time, ties in global order.
    let mut rank = vec![0u32; t.events.len()];
    for (k, &id) in an.order.order.iter().enumerate() {
        rank[id as usize] = k as u32;
    }
    let mut disp: Vec<u32> = an.order.order.clone();
    disp.sort_by_key(|&id| (an.order.t_ns[id as usize], rank[id as usize]));
    let mut pos = vec![0u32; t.events.len()];
    for (k, &id) in disp.iter().enumerate() {
        pos[id as usize] = k as u32;
    }
    let t0 = disp.first().map_or(0, |&id| an.order.t_ns[id as usize]);
    let ev = |k: usize| &t.events[disp[k] as usize];

    let mut kind_bits = vec![0u16; t.events.len()];
    let bit = |k: Kind| 1u16 << KINDS.iter().position(|x| *x == k).expect("listed");
    for a in &an.anomalies {
        for &e in &a.events {
            kind_bits[e as usize] |= bit(a.kind);
        }
    }
    let mut violated = vec![0u8; t.events.len()];
    for v in &an.violations {
        for &e in &v.events {
            violated[e as usize] = 1;
        }
    }

    let n = disp.len();
    let mut blob = Blob { bytes: Vec::new(), columns: Vec::new() };
    let f64le = |v: f64| v.to_le_bytes().to_vec();
    let t_rel: Vec<f64> = (0..n).map(|k| (an.order.t_ns[disp[k] as usize] - t0) as f64).collect();
    blob.column("t", "f64", &t_rel, f64le);
    let raw_rel: Vec<f64> = (0..n).map(|k| (ev(k).t_raw - t0) as f64).collect();
    blob.column("raw", "f64", &raw_rel, f64le);
    blob.column("id", "u32", &disp, |v| v.to_le_bytes().to_vec());
    blob.column("node", "u16", &(0..n).map(|k| ev(k).node).collect::<Vec<_>>(), |v| v.to_le_bytes().to_vec());
    blob.column("dir", "u8", &(0..n).map(|k| (ev(k).dir == Dir::Send) as u8).collect::<Vec<_>>(), |v| vec![v]);
    blob.column("proto", "u8", &(0..n).map(|k| ev(k).proto.0).collect::<Vec<_>>(), |v| vec![v]);
    blob.column("cpu", "u16", &(0..n).map(|k| ev(k).cpu).collect::<Vec<_>>(), |v| v.to_le_bytes().to_vec());
    blob.column("seq", "f64", &(0..n).map(|k| if ev(k).seq == u64::MAX { -1.0 } else { ev(k).seq as f64 }).collect::<Vec<_>>(), f64le);
    blob.column("len", "u32", &(0..n).map(|k| ev(k).orig_len).collect::<Vec<_>>(), |v| v.to_le_bytes().to_vec());
    blob.column("src", "u32", &(0..n).map(|k| ev(k).src).collect::<Vec<_>>(), |v| v.to_le_bytes().to_vec());
    blob.column("dst", "u32", &(0..n).map(|k| ev(k).dst).collect::<Vec<_>>(), |v| v.to_le_bytes().to_vec());
    blob.column("sport", "u16", &(0..n).map(|k| ev(k).sport).collect::<Vec<_>>(), |v| v.to_le_bytes().to_vec());
    blob.column("dport", "u16", &(0..n).map(|k| ev(k).dport).collect::<Vec<_>>(), |v| v.to_le_bytes().to_vec());
    blob.column("type", "u16", &(0..n).map(|k| an.classes[disp[k] as usize]).collect::<Vec<_>>(), |v| v.to_le_bytes().to_vec());
    blob.column(
        "group",
        "i32",
        &(0..n)
            .map(|k| match an.order.group[disp[k] as usize] {
                NO_GROUP => -1,
                g => g as i32,
            })
            .collect::<Vec<_>>(),
        |v| v.to_le_bytes().to_vec(),
    );
    blob.column("marks", "u16", &(0..n).map(|k| kind_bits[disp[k] as usize]).collect::<Vec<_>>(), |v| v.to_le_bytes().to_vec());
    blob.column("violated", "u8", &(0..n).map(|k| violated[disp[k] as usize]).collect::<Vec<_>>(), |v| vec![v]);
    // Captured bytes: one blob, with offsets.
    let mut packet = Vec::new();
    let mut poff = Vec::with_capacity(n + 1);
    let mut payoff = Vec::with_capacity(n);
    for k in 0..n {
        poff.push(packet.len() as u32);
        packet.extend_from_slice(t.data(ev(k)));
        payoff.push(ev(k).payload_off);
    }
    poff.push(packet.len() as u32);
    blob.column("poff", "u32", &poff, |v| v.to_le_bytes().to_vec());
    blob.column("payoff", "u8", &payoff, |v| vec![v]);
    blob.column("bytes", "u8", &packet, |v| vec![v]);
    let msg_send: Vec<u32> = an.matching.messages.iter().map(|&(s, _)| pos[s as usize]).collect();
    let msg_recv: Vec<u32> = an.matching.messages.iter().map(|&(_, r)| pos[r as usize]).collect();
    blob.column("msgSend", "u32", &msg_send, |v| v.to_le_bytes().to_vec());
    blob.column("msgRecv", "u32", &msg_recv, |v| v.to_le_bytes().to_vec());
    blob.column("ruleFrom", "u32", &an.rule_edge_list.iter().map(|&(a, _)| pos[a as usize]).collect::<Vec<_>>(), |v| {
        v.to_le_bytes().to_vec()
    });
    blob.column("ruleTo", "u32", &an.rule_edge_list.iter().map(|&(_, b)| pos[b as usize]).collect::<Vec<_>>(), |v| {
        v.to_le_bytes().to_vec()
    });

    let anomalies: Vec<serde_json::Value> = an
        .anomalies
        .iter()
        .map(|a| {
            json!({
                "kind": a.kind.name(),
                "text": an.anomaly_text(a),
                "events": a.events.iter().map(|&e| pos[e as usize]).collect::<Vec<_>>(),
                "nodes": a.nodes.as_slice(),
                "islands": a.islands,
                "span": a.span.map(|(x, y)| [(x - t0) as f64, (y - t0) as f64]),
                "cause": a.cause.map(|c| crate::analysis::words::cause(&an.trace, c)),
                "links": a.detail.as_ref().map_or(&[][..], |d| d.links.as_slice()),
                "allLinksOf": a.detail.as_ref().and_then(|d| d.all_links_of),
                "waiters": a.detail.as_ref().map_or(&[][..], |d| d.waiters.as_slice()),
                "untilEnd": matches!(a.facts(), Facts::Stall { until_end: true, .. }),
            })
        })
        .collect();
    let gaps: Vec<serde_json::Value> = crate::analysis::losses::recorder_gaps(t, &an.clocks)
        .iter()
        .map(|g| json!({"node": g.node, "cpu": g.cpu, "lost": g.lost, "from": (g.from - t0) as f64, "to": (g.to - t0) as f64}))
        .collect();
    let messages_by_type: Vec<serde_json::Value> = an
        .spec
        .messages
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "display": m.display,
                "fields": m.fields.iter().map(|f| json!({
                    "name": f.name, "offset": f.offset, "width": f.width,
                    "little": f.endian == crate::analysis::spec::Endian::Little, "ascii": f.ascii, "until": f.until,
                    "labels": f.labels.iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let header = json!({
        "title": title,
        "t0": t0,
        "reference": t.nodes[an.clocks.reference as usize].name,
        "nodes": t.nodes.iter().enumerate().map(|(i, nd)| {
            let c = &an.clocks.nodes[i];
            let steps: Vec<serde_json::Value> = an.clocks.steps.iter().filter(|s| s.node as usize == i).map(|s| json!({
                "at": (crate::analysis::matching::TimeMap::corrected(&an.clocks, s.node, s.at_raw) - t0) as f64,
                "size_ns": s.size_ns,
                "uncertainty_ns": s.uncertainty_ns,
            })).collect();
            json!({"name": nd.name, "offset_ns": c.offset_ns, "uncertainty_ns": c.uncertainty_ns, "quality": c.quality, "events": t.node_ranges[i].len(), "steps": steps})
        }).collect::<Vec<_>>(),
        "addrs": super::addr_texts(t),
        // Each IP protocol number's name ("VRRP", "IP 253"), by number.
        "protos": (0..=255u8).map(|n| crate::analysis::trace::ProtoCode(n).name()).collect::<Vec<_>>(),
        "types": messages_by_type,
        "kinds": KINDS.iter().map(|k| k.name()).collect::<Vec<_>>(),
        "anomalies": anomalies,
        "findings": an.findings.iter().map(|f| json!({
            "kind": f.kind,
            "text": f.text,
            "span": f.span.map(|(x, y)| [(x - t0) as f64, (y - t0) as f64]),
            "nodes": f.nodes,
            "links": f.links,
            "evidence": f.evidence.iter().map(|&e| pos[e as usize]).collect::<Vec<_>>(),
            "anomaly": f.anomaly,
            "drops": f.drops,
        })).collect::<Vec<_>>(),
        "violations": an.violations.iter().map(|v| json!({"name": v.name, "text": v.text, "events": v.events.iter().map(|&e| pos[e as usize]).collect::<Vec<_>>()})).collect::<Vec<_>>(),
        "gaps": gaps,
        "unknownType": UNKNOWN,
        "columns": blob.columns,
        "events": n,
        "messages": an.matching.messages.len(),
        "summary": super::text::summary(an),
    });
    // Layout: u32 header length, header JSON, pad to 8, columns (offsets relative to there).
    let header_bytes = serde_json::to_vec(&header).expect("serializable");
    let mut payload = Vec::with_capacity(8 + header_bytes.len() + blob.bytes.len());
    payload.extend_from_slice(&(header_bytes.len() as u32).to_le_bytes());
    payload.extend_from_slice(&header_bytes);
    while payload.len() % 8 != 0 {
        payload.push(b' ');
    }
    payload.extend_from_slice(&blob.bytes);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    gz.write_all(&payload)?;
    let compressed = gz.finish()?;
    let data = base64::engine::general_purpose::STANDARD.encode(&compressed);

    let mut env = minijinja::Environment::new();
    env.add_template("timeline.html", TEMPLATE).map_err(std::io::Error::other)?;
    let page = env
        .get_template("timeline.html")
        .and_then(|tpl| tpl.render(minijinja::context! { title => title, data => data, events => n, nodes => t.nodes.len() }))
        .map_err(std::io::Error::other)?;
    out.write_all(page.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every anomaly kind has its bit in the timeline's kind mask: a kind missing from
    /// `KINDS` made the report panic. The match is exhaustive, so a new kind must be named
    /// here, and then in `KINDS`.
    #[test]
    fn every_anomaly_kind_is_listed() {
        let all = [
            Kind::NetworkLoss,
            Kind::RecorderLoss,
            Kind::Duplicate,
            Kind::Retransmission,
            Kind::RetryStorm,
            Kind::Unanswered,
            Kind::Partition,
            Kind::StalledNode,
            Kind::ClosedConnection,
            Kind::MissingNode,
            Kind::Contradiction,
            Kind::ClockStep,
            Kind::KernelDrop,
            Kind::LossyLink,
        ];
        for k in all {
            match k {
                Kind::NetworkLoss
                | Kind::RecorderLoss
                | Kind::Duplicate
                | Kind::Retransmission
                | Kind::RetryStorm
                | Kind::Unanswered
                | Kind::Partition
                | Kind::StalledNode
                | Kind::ClosedConnection
                | Kind::MissingNode
                | Kind::Contradiction
                | Kind::ClockStep
                | Kind::KernelDrop
                | Kind::LossyLink => assert!(KINDS.contains(&k), "{k:?} is not in KINDS"),
            }
        }
        assert!(KINDS.len() <= 16, "the kind mask is 16 bits");
    }
}
