//! The Perfetto trace (`--perfetto`): Perfetto's protobuf trace format, written by hand-made
//! prost structs for the few fields used (field numbers from Perfetto's
//! `protos/perfetto/trace/*.proto`; the tests decode the output with the official schema).
//!
//! Layout, all on one packet sequence:
//! - one process track per node (named after it, its clock in its labels), with a child
//!   track per CPU holding an instant per send and receive (label as name; raw time, CPU,
//!   sequence number, clock uncertainty, flow, length and decoded fields as arguments),
//!   a flow from each send to each of its receives, and child tracks for lost messages
//!   (instants with their cause) and recorder gaps (slices);
//! - a stall as a slice on its node's process track;
//! - a "partition" track with a slice per island, and a "findings" track with a slice
//!   per finding over its span, with its text and rank.
//!
//! Slices that overlap on one track would not nest, so they go to extra lanes (child
//! tracks of the same name). Times are the corrected, causally consistent times of the
//! order (reference clock); each event keeps its node's own time as `t_raw_ns`.
//!
//! The events are written while the order places them ([`analyze_to_perfetto`]), the
//! rest (which needs the finished analysis) after them.

use std::io::Write;

use crate::analysis::anomalies::Kind;
use crate::analysis::clocks::Clocks;
use crate::analysis::matching::Matching;
use crate::analysis::order::{NO_GROUP, Placed};
use crate::analysis::rules::UNKNOWN;
use crate::analysis::spec::{Spec, Value};
use crate::analysis::trace::{Dir, ProtoCode, Trace};
use crate::analysis::{Analysis, Inputs, push_label};

/// Perfetto's messages, only the fields written. Perfetto's protos are proto2: an
/// optional field is written when set, repeated scalars unpacked.
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Trace {
        #[prost(message, repeated, tag = "1")]
        pub packet: Vec<TracePacket>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TracePacket {
        #[prost(uint64, optional, tag = "8")]
        pub timestamp: Option<u64>,
        #[prost(uint32, optional, tag = "10")]
        pub trusted_packet_sequence_id: Option<u32>,
        #[prost(message, optional, tag = "11")]
        pub track_event: Option<TrackEvent>,
        #[prost(message, optional, tag = "12")]
        pub interned_data: Option<InternedData>,
        #[prost(uint32, optional, tag = "13")]
        pub sequence_flags: Option<u32>,
        #[prost(message, optional, tag = "60")]
        pub track_descriptor: Option<TrackDescriptor>,
        #[prost(bool, optional, tag = "87")]
        pub first_packet_on_sequence: Option<bool>,
    }

    /// `TracePacket.SequenceFlags`.
    pub const SEQ_INCREMENTAL_STATE_CLEARED: u32 = 1;
    pub const SEQ_NEEDS_INCREMENTAL_STATE: u32 = 2;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TrackDescriptor {
        #[prost(uint64, optional, tag = "1")]
        pub uuid: Option<u64>,
        #[prost(string, optional, tag = "2")]
        pub name: Option<String>,
        #[prost(message, optional, tag = "3")]
        pub process: Option<ProcessDescriptor>,
        #[prost(uint64, optional, tag = "5")]
        pub parent_uuid: Option<u64>,
        #[prost(int32, optional, tag = "12")]
        pub sibling_order_rank: Option<i32>,
        #[prost(string, optional, tag = "14")]
        pub description: Option<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ProcessDescriptor {
        #[prost(int32, optional, tag = "1")]
        pub pid: Option<i32>,
        #[prost(string, optional, tag = "6")]
        pub process_name: Option<String>,
        #[prost(string, repeated, tag = "8")]
        pub process_labels: Vec<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TrackEvent {
        #[prost(message, repeated, tag = "4")]
        pub debug_annotations: Vec<DebugAnnotation>,
        /// `TrackEvent.Type`.
        #[prost(int32, optional, tag = "9")]
        pub r#type: Option<i32>,
        #[prost(uint64, optional, tag = "10")]
        pub name_iid: Option<u64>,
        #[prost(uint64, optional, tag = "11")]
        pub track_uuid: Option<u64>,
        #[prost(string, optional, tag = "23")]
        pub name: Option<String>,
        #[prost(fixed64, repeated, packed = "false", tag = "47")]
        pub flow_ids: Vec<u64>,
        #[prost(fixed64, repeated, packed = "false", tag = "48")]
        pub terminating_flow_ids: Vec<u64>,
    }

    /// `TrackEvent.Type`.
    pub const TYPE_SLICE_BEGIN: i32 = 1;
    pub const TYPE_SLICE_END: i32 = 2;
    pub const TYPE_INSTANT: i32 = 3;

    /// One argument. Name: `name_iid` (interned) or `name`; value: one of the rest.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DebugAnnotation {
        #[prost(uint64, optional, tag = "1")]
        pub name_iid: Option<u64>,
        #[prost(bool, optional, tag = "2")]
        pub bool_value: Option<bool>,
        #[prost(uint64, optional, tag = "3")]
        pub uint_value: Option<u64>,
        #[prost(int64, optional, tag = "4")]
        pub int_value: Option<i64>,
        #[prost(string, optional, tag = "6")]
        pub string_value: Option<String>,
        #[prost(string, optional, tag = "10")]
        pub name: Option<String>,
        #[prost(message, repeated, tag = "11")]
        pub dict_entries: Vec<DebugAnnotation>,
        #[prost(uint64, optional, tag = "17")]
        pub string_value_iid: Option<u64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InternedData {
        #[prost(message, repeated, tag = "2")]
        pub event_names: Vec<EventName>,
        #[prost(message, repeated, tag = "3")]
        pub debug_annotation_names: Vec<DebugAnnotationName>,
        #[prost(message, repeated, tag = "29")]
        pub debug_annotation_string_values: Vec<InternedString>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InternedString {
        #[prost(uint64, optional, tag = "1")]
        pub iid: Option<u64>,
        #[prost(bytes = "vec", optional, tag = "2")]
        pub str: Option<Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EventName {
        #[prost(uint64, optional, tag = "1")]
        pub iid: Option<u64>,
        #[prost(string, optional, tag = "2")]
        pub name: Option<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DebugAnnotationName {
        #[prost(uint64, optional, tag = "1")]
        pub iid: Option<u64>,
        #[prost(string, optional, tag = "2")]
        pub name: Option<String>,
    }
}

use proto::{DebugAnnotation, TracePacket, TrackDescriptor, TrackEvent};

/// Protobuf's wire format, for the events' hand-encoded packets.
mod wire {
    /// A varint (prost's own is generic over its buffer and not inlined: it was the
    /// writer's hottest function).
    #[inline]
    pub fn put(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    /// A varint's length in bytes.
    #[inline]
    pub fn len(v: u64) -> usize {
        prost::encoding::encoded_len_varint(v)
    }
    /// Wire types.
    const VARINT: u32 = 0;
    const FIXED64: u32 = 1;
    const LEN: u32 = 2;
    #[inline]
    fn key(out: &mut Vec<u8>, tag: u32, wire_type: u32) {
        put(out, (tag << 3 | wire_type) as u64);
    }
    #[inline]
    pub fn varint(out: &mut Vec<u8>, tag: u32, v: u64) {
        key(out, tag, VARINT);
        put(out, v);
    }
    /// A length-delimited field's key and length (its bytes follow).
    #[inline]
    pub fn len_prefix(out: &mut Vec<u8>, tag: u32, len: usize) {
        key(out, tag, LEN);
        put(out, len as u64);
    }
    #[inline]
    pub fn bytes(out: &mut Vec<u8>, tag: u32, b: &[u8]) {
        len_prefix(out, tag, b.len());
        out.extend_from_slice(b);
    }
    /// A `TrackEvent.debug_annotations` entry (field 4) with an interned name and a
    /// varint value in `field` (3 unsigned, 4 signed as two's complement, 17 an interned
    /// string's iid).
    #[inline]
    pub fn varint_arg(out: &mut Vec<u8>, name_iid: u64, field: u32, v: u64) {
        let n = 1 + len(name_iid) + len((field << 3) as u64) + len(v);
        len_prefix(out, 4, n);
        varint(out, 1, name_iid);
        varint(out, field, v);
    }
    #[inline]
    pub fn fixed64(out: &mut Vec<u8>, tag: u32, v: u64) {
        key(out, tag, FIXED64);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// The one packet sequence everything is written on.
const SEQUENCE: u32 = 1;
/// Event names interned at most: past that (labels with a field value each), names are
/// written inline, so the interning table stays small.
const MAX_INTERNED_NAMES: usize = 1 << 16;
/// Bytes gathered before a write.
const FLUSH_AT: usize = 256 << 10;

/// Argument names every event uses, interned once in the first packet (iid = index + 1).
const ARGS: &[&str] = &["id", "dir", "t_raw_ns", "cpu", "seq", "clock_uncertainty_ns", "flow", "len", "fields", "concurrent", "node"];
const ARG_ID: u64 = 1;
const ARG_DIR: u64 = 2;
const ARG_T_RAW: u64 = 3;
const ARG_CPU: u64 = 4;
const ARG_SEQ: u64 = 5;
const ARG_UNCERTAINTY: u64 = 6;
const ARG_FLOW: u64 = 7;
const ARG_LEN: u64 = 8;
const ARG_FIELDS: u64 = 9;
const ARG_CONCURRENT: u64 = 10;
const ARG_NODE: u64 = 11;

fn arg_uint(iid: u64, v: u64) -> DebugAnnotation {
    DebugAnnotation { name_iid: Some(iid), uint_value: Some(v), ..Default::default() }
}
fn arg_int(iid: u64, v: i64) -> DebugAnnotation {
    DebugAnnotation { name_iid: Some(iid), int_value: Some(v), ..Default::default() }
}
fn arg_str(iid: u64, v: String) -> DebugAnnotation {
    DebugAnnotation { name_iid: Some(iid), string_value: Some(v), ..Default::default() }
}
/// An argument named inline (the few packets after the events).
fn named(name: &str, mut a: DebugAnnotation) -> DebugAnnotation {
    a.name_iid = None;
    a.name = Some(name.to_string());
    a
}

/// Writes the trace: its tracks, then events as the order places them, then the rest.
pub struct PerfettoWriter<'a> {
    trace: &'a Trace,
    spec: &'a Spec,
    classes: &'a [u16],
    clocks: &'a Clocks,
    /// Each event's messages (index into `Matching::messages`): a send's to each of its
    /// receives, a receive's from its send: `flows[flow_at[i]..flow_at[i + 1]]`.
    flow_at: Vec<u32>,
    flows: Vec<u32>,
    /// Per node: its process track, and its CPUs' tracks (by CPU number).
    pub(crate) node_tracks: Vec<u64>,
    cpu_tracks: Vec<Vec<(u16, u64)>>,
    pub(crate) next_uuid: u64,
    names: rustc_hash::FxHashMap<String, u64>,
    /// Interned argument strings (flows, labelled field values, directions).
    strings: rustc_hash::FxHashMap<String, u64>,
    /// The iids of the strings every event has, looked up by what they are made of (0: not
    /// yet interned): direction (send, recv), node, and flow by protocol and endpoints.
    dir_iids: [u64; 2],
    node_iids: Vec<u64>,
    flow_iids: rustc_hash::FxHashMap<(u8, u32, u16, u32, u16), u64>,
    /// Spec field names' iids, per message type.
    field_iids: Vec<Vec<u64>>,
    addrs: Vec<String>,
    buf: Vec<u8>,
}

/// A lost message: when it was sent, its send, the receiver (`u16::MAX` if none), its
/// cause and the kernel's reason.
type Lost<'a> = (i64, u32, u16, &'static str, Option<&'a str>);

/// A stretch to draw as a slice, with its arguments.
struct Span {
    start: i64,
    end: i64,
    name: String,
    args: Vec<DebugAnnotation>,
}

/// A unit enum's name as the JSON report spells it.
fn serde_name(v: &impl serde::Serialize) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

fn packet(ts: Option<u64>) -> TracePacket {
    TracePacket { timestamp: ts, trusted_packet_sequence_id: Some(SEQUENCE), ..Default::default() }
}

/// A corrected time as Perfetto's unsigned timestamp.
fn ts(t: i64) -> std::io::Result<u64> {
    u64::try_from(t).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("time {t} ns is before 1970: a Perfetto trace has no negative timestamps (is a node's clock far off?)"),
        )
    })
}

impl<'a> PerfettoWriter<'a> {
    pub fn new(trace: &'a Trace, spec: &'a Spec, classes: &'a [u16], clocks: &'a Clocks) -> PerfettoWriter<'a> {
        let mut next_arg_iid = ARGS.len() as u64 + 1;
        let field_iids = spec
            .messages
            .iter()
            .map(|m| {
                m.fields
                    .iter()
                    .map(|_| {
                        next_arg_iid += 1;
                        next_arg_iid - 1
                    })
                    .collect()
            })
            .collect();
        PerfettoWriter {
            trace,
            spec,
            classes,
            clocks,
            flow_at: Vec::new(),
            flows: Vec::new(),
            node_tracks: Vec::new(),
            cpu_tracks: Vec::new(),
            next_uuid: 1,
            names: rustc_hash::FxHashMap::default(),
            strings: rustc_hash::FxHashMap::default(),
            dir_iids: [0; 2],
            node_iids: vec![0; trace.nodes.len()],
            flow_iids: rustc_hash::FxHashMap::default(),
            field_iids,
            addrs: super::addr_texts(trace),
            buf: Vec::with_capacity(FLUSH_AT + (64 << 10)),
        }
    }

    /// Each event's messages, for the flows: a counting sort of both ends of every
    /// message, linear, 4 bytes an event plus 8 a message.
    fn index_flows(&mut self, matching: &Matching) {
        let n = self.trace.events.len();
        let mut flow_at = vec![0u32; n + 1];
        for &(s, r) in &matching.messages {
            flow_at[s as usize + 1] += 1;
            flow_at[r as usize + 1] += 1;
        }
        for i in 0..n {
            flow_at[i + 1] += flow_at[i];
        }
        let mut fill = flow_at.clone();
        let mut flows = vec![0u32; matching.messages.len() * 2];
        for (k, &(s, r)) in matching.messages.iter().enumerate() {
            for e in [s, r] {
                flows[fill[e as usize] as usize] = k as u32;
                fill[e as usize] += 1;
            }
        }
        self.flow_at = flow_at;
        self.flows = flows;
    }

    fn uuid(&mut self) -> u64 {
        self.next_uuid += 1;
        self.next_uuid - 1
    }

    fn push(&mut self, p: &TracePacket) {
        prost::encoding::message::encode(1, p, &mut self.buf);
    }

    fn flush_if_full<W: Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        if self.buf.len() >= FLUSH_AT {
            w.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    fn describe_track(&mut self, d: TrackDescriptor) {
        self.push(&TracePacket { track_descriptor: Some(d), ..packet(None) });
    }

    /// A track under `parent` (or at the top), named, with a fresh uuid.
    fn child_track(&mut self, parent: Option<u64>, name: &str, rank: Option<i32>) -> u64 {
        let uuid = self.uuid();
        self.describe_track(TrackDescriptor {
            uuid: Some(uuid),
            name: Some(name.to_string()),
            parent_uuid: parent,
            sibling_order_rank: rank,
            ..Default::default()
        });
        uuid
    }

    /// The sequence's first packet (clearing its state, interning the argument names),
    /// then a track per node and per CPU a node recorded on.
    pub fn write_head<W: Write>(&mut self, w: &mut W, matching: &Matching) -> std::io::Result<()> {
        self.index_flows(matching);
        let t = self.trace;
        let mut arg_names: Vec<proto::DebugAnnotationName> = ARGS
            .iter()
            .enumerate()
            .map(|(k, n)| proto::DebugAnnotationName { iid: Some(k as u64 + 1), name: Some(n.to_string()) })
            .collect();
        for (m, iids) in self.spec.messages.iter().zip(&self.field_iids) {
            for (f, &iid) in m.fields.iter().zip(iids) {
                arg_names.push(proto::DebugAnnotationName { iid: Some(iid), name: Some(f.name.clone()) });
            }
        }
        self.push(&TracePacket {
            sequence_flags: Some(proto::SEQ_INCREMENTAL_STATE_CLEARED),
            first_packet_on_sequence: Some(true),
            interned_data: Some(proto::InternedData { debug_annotation_names: arg_names, ..Default::default() }),
            ..packet(None)
        });
        for (n, node) in t.nodes.iter().enumerate() {
            let c = &self.clocks.nodes[n];
            let uuid = self.uuid();
            let quality = serde_name(&c.quality);
            let mut labels = vec![match c.uncertainty_ns {
                Some(u) => format!("clock {quality}: offset {} ns ± {u} ns, drift {:.3} ppm", c.offset_ns, c.drift * 1e6),
                None => format!("clock {quality}: offset unknown"),
            }];
            if n == self.clocks.reference as usize {
                labels.push("reference clock".to_string());
            }
            self.describe_track(TrackDescriptor {
                uuid: Some(uuid),
                process: Some(proto::ProcessDescriptor {
                    pid: Some(n as i32 + 1),
                    process_name: Some(node.name.clone()),
                    process_labels: labels,
                }),
                ..Default::default()
            });
            let mut seen = vec![false; u16::MAX as usize + 1];
            for e in t.node_events(n as u16) {
                seen[e.cpu as usize] = true;
            }
            let cpus: Vec<u16> = (0..=u16::MAX).filter(|&c| seen[c as usize]).collect();
            let tracks = cpus.iter().map(|&cpu| (cpu, self.child_track(Some(uuid), &format!("cpu {cpu}"), Some(cpu as i32)))).collect();
            self.node_tracks.push(uuid);
            self.cpu_tracks.push(tracks);
        }
        w.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    fn name_iid(&mut self, name: &str, interned: &mut Option<proto::InternedData>) -> Option<u64> {
        if let Some(&iid) = self.names.get(name) {
            return Some(iid);
        }
        if self.names.len() >= MAX_INTERNED_NAMES {
            return None;
        }
        let iid = self.names.len() as u64 + 1;
        self.names.insert(name.to_string(), iid);
        interned.get_or_insert_with(Default::default).event_names.push(proto::EventName { iid: Some(iid), name: Some(name.to_string()) });
        Some(iid)
    }

    /// The iid of an argument string, interned while the table has room.
    fn string_iid(&mut self, value: &str, interned: &mut Option<proto::InternedData>) -> Option<u64> {
        if let Some(&iid) = self.strings.get(value) {
            return Some(iid);
        }
        if self.strings.len() >= MAX_INTERNED_NAMES {
            return None;
        }
        let iid = self.strings.len() as u64 + 1;
        self.strings.insert(value.to_string(), iid);
        interned
            .get_or_insert_with(Default::default)
            .debug_annotation_string_values
            .push(proto::InternedString { iid: Some(iid), str: Some(value.as_bytes().to_vec()) });
        Some(iid)
    }

    /// A string argument into `out` (a `DebugAnnotation`'s fields), interned if it can be.
    fn string_arg(&mut self, out: &mut Vec<u8>, name_iid: u64, value: &str, interned: &mut Option<proto::InternedData>) {
        wire::varint(out, 1, name_iid);
        match self.string_iid(value, interned) {
            Some(iid) => wire::varint(out, 17, iid),
            None => wire::bytes(out, 6, value.as_bytes()),
        }
    }

    /// An instant per placed event, on its node's CPU track, with its flows. These are
    /// most of the trace, so they are encoded field by field into reused buffers (the
    /// same wire format as the structs in [`proto`], which the tests decode them with).
    pub fn push_events(&mut self, events: &[Placed]) -> std::io::Result<()> {
        let t = self.trace;
        let mut label = String::with_capacity(64);
        let mut flow = String::with_capacity(64);
        let mut num = itoa::Buffer::new();
        let (mut ev, mut ann, mut dict) = (Vec::with_capacity(256), Vec::with_capacity(64), Vec::with_capacity(128));
        for p in events {
            let i = p.id as usize;
            let e = &t.events[i];
            label.clear();
            push_label(t, self.spec, self.classes, i, &mut label, &mut num);
            let mut interned = None;
            let name_iid = self.name_iid(&label, &mut interned);
            ev.clear();
            let arg = |ev: &mut Vec<u8>, ann: &[u8]| wire::bytes(ev, 4, ann);
            let uint = |ev: &mut Vec<u8>, name: u64, v: u64| wire::varint_arg(ev, name, 3, v);
            uint(&mut ev, ARG_ID, p.id as u64);
            let dir = (e.dir != Dir::Send) as usize;
            if self.dir_iids[dir] == 0 {
                self.dir_iids[dir] = self.string_iid(["send", "recv"][dir], &mut interned).unwrap_or(0);
            }
            wire::varint_arg(&mut ev, ARG_DIR, 17, self.dir_iids[dir]);
            // The node again, for SQL: a track's process is a join away in Perfetto's tables.
            let n = e.node as usize;
            if self.node_iids[n] == 0 {
                self.node_iids[n] = self.string_iid(&t.nodes[n].name, &mut interned).unwrap_or(0);
            }
            match self.node_iids[n] {
                0 => {
                    ann.clear();
                    wire::varint(&mut ann, 1, ARG_NODE);
                    wire::bytes(&mut ann, 6, t.nodes[n].name.as_bytes());
                    arg(&mut ev, &ann);
                }
                iid => wire::varint_arg(&mut ev, ARG_NODE, 17, iid),
            }
            wire::varint_arg(&mut ev, ARG_T_RAW, 4, e.t_raw as u64);
            uint(&mut ev, ARG_CPU, e.cpu as u64);
            if e.seq != u64::MAX {
                uint(&mut ev, ARG_SEQ, e.seq);
            }
            match self.clocks.nodes[e.node as usize].uncertainty_ns {
                Some(u) => wire::varint_arg(&mut ev, ARG_UNCERTAINTY, 4, u as u64),
                None => {
                    ann.clear();
                    wire::varint(&mut ann, 1, ARG_UNCERTAINTY);
                    wire::bytes(&mut ann, 6, b"unknown");
                    arg(&mut ev, &ann);
                }
            }
            // The flow's text is made and interned once per protocol and endpoints.
            let key = (e.proto.0, e.src, e.sport, e.dst, e.dport);
            let iid = match self.flow_iids.get(&key) {
                Some(&iid) => iid,
                None => {
                    flow.clear();
                    flow.push_str(e.proto.name());
                    flow.push(' ');
                    self.push_endpoint(&mut flow, e.src, e.sport, e.proto, &mut num);
                    flow.push_str(" → ");
                    self.push_endpoint(&mut flow, e.dst, e.dport, e.proto, &mut num);
                    match self.string_iid(&flow, &mut interned) {
                        Some(iid) => {
                            self.flow_iids.insert(key, iid);
                            iid
                        }
                        None => 0,
                    }
                }
            };
            match iid {
                0 => {
                    ann.clear();
                    wire::varint(&mut ann, 1, ARG_FLOW);
                    wire::bytes(&mut ann, 6, flow.as_bytes());
                    arg(&mut ev, &ann);
                }
                iid => wire::varint_arg(&mut ev, ARG_FLOW, 17, iid),
            }
            uint(&mut ev, ARG_LEN, e.orig_len as u64);
            if self.classes[i] != UNKNOWN {
                let c = self.classes[i] as usize;
                let payload = t.payload(e);
                dict.clear();
                for (fi, f) in self.spec.messages[c].fields.iter().enumerate() {
                    let Some(v) = self.spec.field(c, fi, payload) else { continue };
                    let iid = self.field_iids[c][fi];
                    ann.clear();
                    match v {
                        Value::Int(n) => match f.labels.get(&n) {
                            Some(l) => self.string_arg(&mut ann, iid, l, &mut interned),
                            None => {
                                wire::varint(&mut ann, 1, iid);
                                wire::varint(&mut ann, 3, n);
                            }
                        },
                        Value::Text(s) => {
                            wire::varint(&mut ann, 1, iid);
                            wire::bytes(&mut ann, 6, s.as_bytes());
                        }
                    }
                    wire::bytes(&mut dict, 11, &ann);
                }
                if !dict.is_empty() {
                    ann.clear();
                    wire::varint(&mut ann, 1, ARG_FIELDS);
                    ann.extend_from_slice(&dict);
                    arg(&mut ev, &ann);
                }
            }
            if p.group != NO_GROUP {
                uint(&mut ev, ARG_CONCURRENT, p.group as u64);
            }
            wire::varint(&mut ev, 9, proto::TYPE_INSTANT as u64);
            match name_iid {
                Some(iid) => wire::varint(&mut ev, 10, iid),
                None => wire::bytes(&mut ev, 23, label.as_bytes()),
            }
            let track = self.cpu_tracks[e.node as usize].iter().find(|c| c.0 == e.cpu).expect("every CPU has a track").1;
            wire::varint(&mut ev, 11, track);
            // Flow ids are message indices + 1: a send starts one per receive, each
            // receive ends its own.
            let tag = if e.dir == Dir::Send { 47 } else { 48 };
            for &k in &self.flows[self.flow_at[i] as usize..self.flow_at[i + 1] as usize] {
                wire::fixed64(&mut ev, tag, k as u64 + 1);
            }
            // The packet, its length worked out first so that the event is copied once.
            let t_ns = ts(p.t_ns)?;
            let interned_len = interned.as_ref().map(prost::Message::encoded_len);
            let len = 1
                + wire::len(t_ns)
                + 1
                + wire::len(SEQUENCE as u64)
                + 1
                + wire::len(ev.len() as u64)
                + ev.len()
                + interned_len.map_or(0, |n| 1 + wire::len(n as u64) + n)
                + 1
                + wire::len(proto::SEQ_NEEDS_INCREMENTAL_STATE as u64);
            let buf = &mut self.buf;
            wire::len_prefix(buf, 1, len);
            wire::varint(buf, 8, t_ns);
            wire::varint(buf, 10, SEQUENCE as u64);
            wire::bytes(buf, 11, &ev);
            if let Some(d) = &interned {
                prost::encoding::message::encode(12, d, buf);
            }
            wire::varint(buf, 13, proto::SEQ_NEEDS_INCREMENTAL_STATE as u64);
        }
        Ok(())
    }

    fn push_endpoint(&self, buf: &mut String, addr: u32, port: u16, proto: ProtoCode, num: &mut itoa::Buffer) {
        let a = &self.addrs[addr as usize];
        if !proto.has_ports() {
            buf.push_str(a.trim_start_matches('[').trim_end_matches(']'));
        } else {
            buf.push_str(a);
            buf.push(':');
            buf.push_str(num.format(port));
        }
    }

    /// Writes batches of placed events as they arrive (from the order, while it is being
    /// built); returns the writer when the batches end.
    pub fn write_events_from<W: Write>(&mut self, mut w: W, batches: std::sync::mpsc::Receiver<Vec<Placed>>) -> std::io::Result<W> {
        for batch in batches {
            for piece in batch.chunks(1024) {
                self.push_events(piece)?;
                self.flush_if_full(&mut w)?;
            }
        }
        w.write_all(&self.buf)?;
        self.buf.clear();
        Ok(w)
    }

    fn slice_event(&self, track: u64, ty: i32, name: Option<String>, args: Vec<DebugAnnotation>) -> TrackEvent {
        TrackEvent { debug_annotations: args, r#type: Some(ty), name, track_uuid: Some(track), ..Default::default() }
    }

    /// Spans as slices: on `first` while they do not overlap, else on extra lanes (child
    /// tracks of `first` named `lane_name`), each track's in time order.
    fn push_lanes(&mut self, first: u64, lane_name: &str, mut spans: Vec<Span>) -> std::io::Result<()> {
        spans.sort_by_key(|s| (s.start, s.end));
        let lane_of = lanes(spans.iter().map(|s| (s.start, s.end)));
        let mut tracks = vec![first];
        for (s, lane) in spans.into_iter().zip(lane_of) {
            while tracks.len() <= lane {
                let rank = tracks.len() as i32;
                tracks.push(self.child_track(Some(first), lane_name, Some(rank)));
            }
            let track = tracks[lane];
            let begin = self.slice_event(track, proto::TYPE_SLICE_BEGIN, Some(s.name), s.args);
            self.push(&TracePacket { track_event: Some(begin), ..packet(Some(ts(s.start)?)) });
            let end = self.slice_event(track, proto::TYPE_SLICE_END, None, Vec::new());
            self.push(&TracePacket { track_event: Some(end), ..packet(Some(ts(s.end)?)) });
        }
        Ok(())
    }

    /// What needs the finished analysis: lost messages, recorder gaps, stalls, partitions
    /// and findings.
    pub fn write_tail<W: Write>(&mut self, a: &Analysis, w: &mut W) -> std::io::Result<()> {
        let t = &a.trace;
        let name = |n: u16| t.nodes[n as usize].name.as_str();
        let when = |id: u32| a.order.t_ns[id as usize];
        // The whole recording: the span of a finding that has none.
        let (first, last) = (a.order.t_ns.iter().copied().min().unwrap_or(0), a.order.t_ns.iter().copied().max().unwrap_or(0));

        // Lost messages: an instant per send, on a "lost" track of the sender's.
        let mut lost: Vec<Vec<Lost<'_>>> = vec![Vec::new(); t.nodes.len()];
        for x in &a.anomalies {
            let (cause, reason) = match x.kind {
                Kind::NetworkLoss => (
                    x.cause.map_or("network", |c| c.kind.name()),
                    x.cause.and_then(|c| c.reason).and_then(|r| t.drop_reasons.get(r as usize)).map(String::as_str),
                ),
                Kind::ClosedConnection => ("closed_connection", None),
                _ => continue,
            };
            let to = x.nodes.get(1).copied().unwrap_or(u16::MAX);
            for &s in &x.events {
                lost[t.events[s as usize].node as usize].push((when(s), s, to, cause, reason));
            }
        }
        let mut label = String::new();
        let mut num = itoa::Buffer::new();
        for (n, mut v) in lost.into_iter().enumerate() {
            if v.is_empty() {
                continue;
            }
            v.sort_unstable_by_key(|l| (l.0, l.1));
            let track = self.child_track(Some(self.node_tracks[n]), "lost", Some(-1));
            for (at, s, to, cause, reason) in v {
                label.clear();
                label.push_str("lost: ");
                push_label(t, &a.spec, &a.classes, s as usize, &mut label, &mut num);
                let mut args = vec![
                    named("send", arg_uint(0, s as u64)),
                    named("node", arg_str(0, name(t.events[s as usize].node).to_string())),
                    named("cause", arg_str(0, cause.to_string())),
                    named("t_raw_ns", arg_int(0, t.events[s as usize].t_raw)),
                ];
                if to != u16::MAX {
                    args.push(named("to", arg_str(0, name(to).to_string())));
                }
                if let Some(r) = reason {
                    args.push(named("reason", arg_str(0, r.to_string())));
                }
                let ev = self.slice_event(track, proto::TYPE_INSTANT, Some(label.clone()), args);
                self.push(&TracePacket { track_event: Some(ev), ..packet(Some(ts(at)?)) });
                self.flush_if_full(w)?;
            }
        }

        // Recorder gaps on a "recorder gaps" track of the node's; stalls on its own.
        for n in 0..t.nodes.len() {
            let of_node = |k: Kind| a.anomalies.iter().filter(move |x| x.kind == k && x.nodes.first() == Some(&(n as u16)));
            let spans = |k: Kind, what: &str| -> Vec<Span> {
                of_node(k)
                    .filter_map(|x| {
                        let (start, end) = x.span?;
                        Some(Span {
                            start,
                            end,
                            name: what.to_string(),
                            args: vec![named("text", arg_str(0, a.anomaly_text(x).into_owned()))],
                        })
                    })
                    .collect()
            };
            let gaps = spans(Kind::RecorderLoss, "recorder gap");
            if !gaps.is_empty() {
                let track = self.child_track(Some(self.node_tracks[n]), "recorder gaps", Some(-2));
                self.push_lanes(track, "recorder gaps", gaps)?;
            }
            let stalls = spans(Kind::StalledNode, "stalled");
            self.push_lanes(self.node_tracks[n], "stalled", stalls)?;
            self.flush_if_full(w)?;
        }

        // A partition: a slice per island, over the partition's span.
        let mut islands = Vec::new();
        for x in a.anomalies.iter().filter(|x| x.kind == Kind::Partition) {
            let Some((start, end)) = x.span else { continue };
            for (k, island) in x.islands.iter().enumerate() {
                let nodes: Vec<&str> = island.iter().map(|&n| name(n)).collect();
                islands.push(Span {
                    start,
                    end,
                    name: format!("island {}: {}", k + 1, nodes.join(", ")),
                    args: vec![named("text", arg_str(0, x.text.clone())), named("nodes", arg_str(0, nodes.join(", ")))],
                });
            }
        }
        if !islands.is_empty() {
            let track = self.child_track(None, "partition", Some(-2));
            self.push_lanes(track, "partition", islands)?;
        }

        // Findings, ranked, each over its span (the whole recording if it has none).
        let findings: Vec<Span> = a
            .findings
            .iter()
            .enumerate()
            .map(|(k, f)| {
                let (start, end) = f.span.unwrap_or((first, last));
                let nodes: Vec<&str> = f.nodes.iter().map(|&n| name(n)).collect();
                let mut args = vec![
                    named("rank", arg_uint(0, k as u64 + 1)),
                    named("kind", arg_str(0, serde_name(&f.kind))),
                    named("text", arg_str(0, f.text.clone())),
                    named("nodes", arg_str(0, nodes.join(", "))),
                ];
                if f.span.is_none() {
                    args.push(named("span", arg_str(0, "none: drawn over the whole recording".to_string())));
                }
                Span { start, end, name: format!("#{} {}", k + 1, f.text), args }
            })
            .collect();
        if !findings.is_empty() {
            let track = self.child_track(None, "findings", Some(-3));
            self.push_lanes(track, "findings", findings)?;
        }
        w.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }
}

/// The lane of each span (sorted by start): the first whose last slice ended before it
/// begins, so that no two slices on a lane overlap or touch.
fn lanes(spans: impl Iterator<Item = (i64, i64)>) -> Vec<usize> {
    let mut ends: Vec<i64> = Vec::new();
    spans
        .map(|(start, end)| {
            let lane = ends.iter().position(|&e| e < start).unwrap_or_else(|| {
                ends.push(i64::MIN);
                ends.len() - 1
            });
            ends[lane] = end;
            lane
        })
        .collect()
}

/// Writes the trace after the analysis. [`analyze_to_perfetto`] writes the same bytes
/// while the analysis runs.
pub fn write_perfetto<W: Write>(a: &Analysis, out: W) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::with_capacity(64 << 10, out);
    let mut p = PerfettoWriter::new(&a.trace, &a.spec, &a.classes, &a.clocks);
    p.write_head(&mut w, &a.matching)?;
    for ids in a.order.order.chunks(1024) {
        let placed: Vec<Placed> =
            ids.iter().map(|&id| Placed { id, t_ns: a.order.t_ns[id as usize], group: a.order.group[id as usize] }).collect();
        p.push_events(&placed)?;
        p.flush_if_full(&mut w)?;
    }
    w.write_all(&p.buf)?;
    p.buf.clear();
    p.write_tail(a, &mut w)?;
    w.flush()
}

/// Analyzes and writes the trace to `out`, the events while the order places them.
pub fn analyze_to_perfetto<W: Write + Send>(trace: Trace, inputs: Inputs, mut out: W) -> std::io::Result<Analysis> {
    crate::report::analyze_to(trace, inputs, None, Some(&mut out), None).map(|(a, _)| a)
}

/// Analyzes and writes both the JSON report and the trace, the events of each while the
/// order places them (each on a thread of its own, fed the same batches).
pub fn analyze_to_json_and_perfetto<J: Write + Send, P: Write + Send>(
    trace: Trace,
    inputs: Inputs,
    mut json: J,
    mut perfetto: P,
) -> std::io::Result<Analysis> {
    crate::report::analyze_to(trace, inputs, Some(&mut json), Some(&mut perfetto), None).map(|(a, _)| a)
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::proto;
    use crate::analysis::testkit::{BROADCAST, addr, recv, send, trace_in, udp};
    use crate::analysis::{Inputs, analyze};

    #[test]
    fn overlapping_spans_take_the_first_free_lane() {
        assert_eq!(
            super::lanes([(0, 10), (5, 15), (11, 20), (20, 30), (31, 31), (31, 40), (31, 35)].into_iter()),
            vec![0, 1, 0, 1, 0, 1, 2]
        );
        assert!(super::lanes(std::iter::empty()).is_empty());
    }

    /// Two nodes, a unicast answered and a broadcast heard by both peers, and a loss:
    /// decoded back with the structs, the events carry their names, arguments and flows.
    #[test]
    fn events_decode_with_their_names_arguments_and_flows() {
        let ms = 1_000_000;
        let base = 1_700_000_000_000_000_000;
        let (n1, n2) = (addr(0), addr(1));
        let mut n1_events = vec![send(base + ms, udp(n1, n2, 1, b"ping")), send(base + 3 * ms, udp(n1, BROADCAST, 2, b"hello all"))];
        n1_events.push(send(base + 500 * ms, udp(n1, n2, 3, b"lost one")));
        let mut n2_events = vec![recv(base + 2 * ms, udp(n1, n2, 1, b"ping")), recv(base + 4 * ms, udp(n1, BROADCAST, 2, b"hello all"))];
        n2_events.push(send(base + 900 * ms, udp(n2, n1, 9, b"late")));
        let n3_events = vec![recv(base + 4 * ms, udp(n1, BROADCAST, 2, b"hello all"))];
        let t = trace_in(vec![n1_events, n2_events, n3_events], (base, base + 1000 * ms));
        let a = analyze(t, Inputs::default());
        assert_eq!(a.matching.messages.len(), 3, "the ping and the broadcast's two receives");
        let mut out = Vec::new();
        super::write_perfetto(&a, &mut out).unwrap();
        let trace = proto::Trace::decode(&out[..]).expect("decodes with the structs");
        assert_eq!(trace.packet[0].sequence_flags, Some(proto::SEQ_INCREMENTAL_STATE_CLEARED));
        let names: std::collections::HashMap<u64, String> = trace
            .packet
            .iter()
            .filter_map(|p| p.interned_data.as_ref())
            .flat_map(|d| d.event_names.iter().map(|n| (n.iid.unwrap(), n.name.clone().unwrap())))
            .collect();
        let procs: Vec<&str> =
            trace.packet.iter().filter_map(|p| p.track_descriptor.as_ref()?.process.as_ref()?.process_name.as_deref()).collect();
        assert_eq!(procs, ["n1", "n2", "n3"]);
        let instants: Vec<(&proto::TracePacket, &proto::TrackEvent)> = trace
            .packet
            .iter()
            .filter_map(|p| Some((p, p.track_event.as_ref()?)))
            .filter(|(_, e)| e.r#type == Some(proto::TYPE_INSTANT) && e.name_iid.is_some())
            .collect();
        assert_eq!(instants.len(), a.trace.events.len());
        let mut times: Vec<u64> = instants.iter().map(|(p, _)| p.timestamp.unwrap()).collect();
        let sorted = {
            times.sort_unstable();
            times.clone()
        };
        assert_eq!(times, sorted);
        let flows_out: Vec<usize> = instants.iter().map(|(_, e)| e.flow_ids.len()).collect();
        let flows_in: usize = instants.iter().map(|(_, e)| e.terminating_flow_ids.len()).sum();
        assert_eq!(flows_out.iter().sum::<usize>(), 3);
        assert_eq!(flows_in, 3);
        assert!(flows_out.contains(&2), "the broadcast starts a flow per receiver: {flows_out:?}");
        for (p, e) in &instants {
            let name = &names[&e.name_iid.unwrap()];
            assert!(name.starts_with("UDP 7000→7000"), "{name}");
            let id = e.debug_annotations.iter().find(|d| d.name_iid == Some(super::ARG_ID)).and_then(|d| d.uint_value).unwrap();
            let raw = e.debug_annotations.iter().find(|d| d.name_iid == Some(super::ARG_T_RAW)).and_then(|d| d.int_value).unwrap();
            assert_eq!(raw, a.trace.events[id as usize].t_raw);
            assert_eq!(p.timestamp.unwrap() as i64, a.order.t_ns[id as usize]);
        }
        // The loss: an instant on n1's "lost" track.
        let lost: Vec<&proto::TrackEvent> = trace
            .packet
            .iter()
            .filter_map(|p| p.track_event.as_ref())
            .filter(|e| e.name.as_deref().is_some_and(|n| n.starts_with("lost: ")))
            .collect();
        assert_eq!(lost.len(), 1, "{:?}", a.anomalies);
    }

    #[test]
    fn a_time_before_1970_is_an_error_not_a_wrapped_timestamp() {
        assert_eq!(super::ts(-1).unwrap_err().kind(), std::io::ErrorKind::InvalidData);
        assert_eq!(super::ts(5).unwrap(), 5);
    }
}
