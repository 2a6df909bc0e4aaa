//! The merged input: every node's packets as compact events, read from pcapng dumps.

use std::collections::HashMap;
use std::hash::Hasher;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use rustc_hash::FxHasher;

use capture_ebpf::Direction;

use crate::dump::{DumpReader, Item};
use crate::packet::Packet;

/// Payload bytes that go into an event's match hash.
pub const MATCH_BYTES: usize = 16;

/// Latest timestamp accepted from a dump (2^62 ns: the year 2116). Later ones are damage,
/// and the analysis's time arithmetic must not overflow on them.
pub const MAX_TIME_NS: u64 = 1 << 62;

pub type EventId = u32;
pub type NodeId = u16;
pub type AddrId = u32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Dir {
    Recv = 0,
    Send = 1,
}

/// One packet seen by one node. Kept small: a trace can hold millions.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// The node's wall clock, ns since the epoch.
    pub t_raw: i64,
    /// Per-CPU sequence number (u64::MAX when the dump has none).
    pub seq: u64,
    /// Where the captured bytes (from the IP header on) start in its node's arena.
    pub data_off: u64,
    pub src: AddrId,
    pub dst: AddrId,
    pub tcp_seq: u32,
    pub tcp_ack: u32,
    /// L4 payload length on the wire.
    pub payload_len: u32,
    /// Packet length from the IP header on.
    pub orig_len: u32,
    pub data_len: u16,
    pub sport: u16,
    pub dport: u16,
    pub ip_id: u16,
    pub node: NodeId,
    pub cpu: u16,
    pub dir: Dir,
    pub proto: ProtoCode,
    pub tcp_flags: u8,
    /// Offset of the L4 payload within the captured bytes.
    pub payload_off: u8,
}

const _: () = assert!(std::mem::size_of::<Event>() <= 64);

/// The IP protocol number (for IPv6, of the last header of its chain).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProtoCode(pub u8);

#[allow(non_upper_case_globals)]
impl ProtoCode {
    pub const Udp: ProtoCode = ProtoCode(17);
    pub const Tcp: ProtoCode = ProtoCode(6);
    pub const Icmp: ProtoCode = ProtoCode(1);
    pub const Icmpv6: ProtoCode = ProtoCode(58);

    /// ICMP or ICMPv6, which the analysis treats alike.
    pub fn is_icmp(self) -> bool {
        matches!(self, ProtoCode::Icmp | ProtoCode::Icmpv6)
    }

    /// Whether the packet has ports (UDP, TCP).
    pub fn has_ports(self) -> bool {
        matches!(self, ProtoCode::Udp | ProtoCode::Tcp)
    }

    /// Its usual name ("UDP", "VRRP"), or "IP 253" for a number without one.
    pub fn name(self) -> &'static str {
        static NAMES: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
            (0..=255u8).map(|n| crate::packet::ip_proto_name(n).map_or_else(|| format!("IP {n}"), str::to_string)).collect()
        });
        &NAMES[self.0 as usize]
    }
}

/// What was read about one node besides its packets.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    pub name: String,
    pub file: PathBuf,
    pub snaplen: Option<u32>,
    /// Records the node's kernel ring dropped, per CPU (when the dump says).
    pub drops_per_cpu: Vec<u64>,
    pub kernel_drops: u64,
    pub evicted: u64,
    /// When the node's recording covers, on its own clock: first and last event (or the
    /// statistics block's start/end when wider).
    pub window: (i64, i64),
    /// When the node heard the trigger, on its own clock (from the dump or manifest).
    pub trigger_heard: Option<i64>,
    /// Why the trigger was sent, as the node heard it.
    pub trigger_reason: Option<String>,
    /// What could not be read, with offsets.
    pub skipped: Vec<String>,
    /// Addresses this node sends from.
    pub addrs: Vec<AddrId>,
    /// Whether direction came from the dump (true) or was inferred from addresses.
    pub direction_recorded: bool,
    /// Where the node's time ran backwards in program order (a clock stepped back), in
    /// order. The reader undid each provisionally: the events after it were moved later
    /// to just after those before it. `steps` refines the size from the traffic.
    pub reversals: Vec<Reversal>,
}

/// Time running backwards in one node's program order: its clock stepped back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reversal {
    /// The first event after it, on the undone clock (just after every event before it).
    pub first_after: i64,
    /// As the dump recorded that event.
    pub recorded: i64,
    /// How much later the events after it were moved, ns.
    pub undone_ns: i64,
}

/// Time running back at least this far in program order is a clock step, not the
/// interleaving of per-CPU rings (which is sorted within a drain and milliseconds at most).
pub const MIN_REVERSAL_NS: i64 = 50_000_000;
/// ...and only when it stays back for this many events: one misdated record is not a step.
const REVERSAL_PERSISTS: usize = 3;

#[derive(Default)]
pub struct Trace {
    pub nodes: Vec<NodeInfo>,
    /// Events grouped by node (see `node_events`), each node's sorted by raw time.
    pub events: Vec<Event>,
    pub node_ranges: Vec<Range<usize>>,
    /// Captured bytes, one arena per node (so that traces read apart join without copying).
    arenas: Vec<Vec<u8>>,
    pub addrs: Vec<IpAddr>,
    addr_ids: rustc_hash::FxHashMap<IpAddr, AddrId>,
    /// Non-IP or unparseable packets passed over, per node.
    pub unparsed: Vec<u64>,
    /// Packets of the recorded nodes that their kernels dropped, by node and time. A send
    /// dropped before the recorder saw it leave (a firewall's OUTPUT chain) is also in
    /// `events`, as the send it was; the others are here only.
    pub drops: Vec<KernelDrop>,
    /// Drop reason names (the kernel's, lower case), indexed by `KernelDrop::reason`.
    pub drop_reasons: Vec<String>,
}

/// A packet a node's kernel dropped, and why.
#[derive(Clone, Copy, Debug)]
pub struct KernelDrop {
    /// Its headers and bytes as an event would have them (node, time, direction, addresses).
    pub event: Event,
    /// Index into `Trace::drop_reasons`.
    pub reason: u16,
    /// Also in `events` as the send it was (no send of it was recorded).
    pub stands_for_send: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// Not a `source`: the message says it once, not again as its cause.
    #[error("{file}: {error}")]
    Open { file: PathBuf, error: std::io::Error },
    #[error("{file}: {what}")]
    Unusable { file: PathBuf, what: String },
    #[error("two dumps are from node {name}: {first} and {second}")]
    DuplicateNode { name: String, first: PathBuf, second: PathBuf },
    #[error("no dumps given")]
    Empty,
}

/// A broadcast or multicast address (an IPv4 address ending in .255 counts as broadcast).
pub fn is_group_address(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.is_broadcast() || v4.is_multicast() || v4.octets()[3] == 255,
        IpAddr::V6(v6) => v6.is_multicast(),
    }
}

impl Trace {
    /// Why the trigger was sent, as the dumps say: one reason, or several where nodes
    /// answered different triggers.
    pub fn trigger_reasons(&self) -> Vec<&str> {
        let mut r: Vec<&str> = self.nodes.iter().filter_map(|n| n.trigger_reason.as_deref()).filter(|r| !r.is_empty()).collect();
        r.sort_unstable();
        r.dedup();
        r
    }

    pub fn node_events(&self, node: NodeId) -> &[Event] {
        &self.events[self.node_ranges[node as usize].clone()]
    }

    pub fn data(&self, e: &Event) -> &[u8] {
        &self.arenas[e.node as usize][e.data_off as usize..e.data_off as usize + e.data_len as usize]
    }

    pub fn payload(&self, e: &Event) -> &[u8] {
        self.data(e).get(e.payload_off as usize..).unwrap_or(&[])
    }

    /// Hash of the part of a packet that the network does not change and that tells
    /// messages of one flow apart: the payload length and first payload bytes (for
    /// ICMP, which has no ports, also its id and sequence). Computed when needed rather
    /// than stored: eight bytes per event add up over millions of them.
    pub fn content_hash(&self, e: &Event) -> u64 {
        self.hash_payload(e, MATCH_BYTES)
    }

    /// Hash of the payload length and every captured payload byte: what tells a resend of
    /// the same message (on one node, so captured alike) from another message that only
    /// starts the same way.
    pub fn payload_hash(&self, e: &Event) -> u64 {
        self.hash_payload(e, usize::MAX)
    }

    fn hash_payload(&self, e: &Event, bytes: usize) -> u64 {
        let mut h = FxHasher::default();
        h.write_u32(e.payload_len);
        let payload = self.payload(e);
        h.write(&payload[..payload.len().min(bytes)]);
        if e.proto.is_icmp() {
            let off = e.payload_off as usize;
            h.write(self.data(e).get(off.saturating_sub(8)..off).unwrap_or(&[]));
        }
        h.finish()
    }

    pub fn addr(&self, id: AddrId) -> IpAddr {
        self.addrs[id as usize]
    }

    pub fn intern(&mut self, a: IpAddr) -> AddrId {
        if let Some(&id) = self.addr_ids.get(&a) {
            return id;
        }
        let id = self.addrs.len() as AddrId;
        self.addrs.push(a);
        self.addr_ids.insert(a, id);
        id
    }

    pub fn node_by_name(&self, name: &str) -> Option<NodeId> {
        self.nodes.iter().position(|n| n.name == name).map(|i| i as NodeId)
    }

    /// Reads dumps, one node per file.
    pub fn read_files(files: &[PathBuf]) -> Result<Trace, TraceError> {
        let files: Vec<(PathBuf, Option<String>)> = files.iter().map(|f| (f.clone(), None)).collect();
        Trace::read_files_as(&files)
    }

    /// Reads dumps, one node per file, each named as the collector verified it where that
    /// is known (its manifest's name for the file): a dump's own `wgo:node=` is only a
    /// claim. Two dumps that still claim one name do not stop the report: the later is
    /// named after its file (or numbered), with a note in its node's `skipped`.
    pub fn read_files_as(files: &[(PathBuf, Option<String>)]) -> Result<Trace, TraceError> {
        if files.is_empty() {
            return Err(TraceError::Empty);
        }
        use rayon::prelude::*;
        // Files are read in parallel, each into a trace of its own, then appended in order.
        let parts: Vec<Result<Trace, TraceError>> = files
            .par_iter()
            .map(|(f, verified)| {
                let mut b = TraceBuilder::default();
                b.read_file(f)?;
                let mut t = b.finish();
                if let (Some(name), Some(node)) = (verified, t.nodes.first_mut())
                    && node.name != *name
                {
                    tracing::warn!("{}: the dump says it is node {}, the collector received it from {name}", f.display(), node.name);
                    node.skipped.push(format!("its claim to be node {}: the collector received it from {name}", node.name));
                    node.name = name.clone();
                }
                Ok(t)
            })
            .collect();
        let mut parts = parts.into_iter().collect::<Result<Vec<Trace>, TraceError>>()?;
        let mut names = std::collections::HashSet::new();
        for part in &mut parts {
            let Some(node) = part.nodes.first_mut() else { continue };
            if !names.insert(node.name.clone()) {
                let stem = node.file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "node".into());
                let free = std::iter::once(stem.clone())
                    .chain((2..).map(|k| format!("{stem}-{k}")))
                    .find(|n| !names.contains(n))
                    .expect("a free name");
                tracing::warn!("two dumps are from node {}: {} is reported as {free}", node.name, node.file.display());
                node.skipped.push(format!("its claim to be node {}, which an earlier dump is: reported as {free}", node.name));
                node.name = free.clone();
                names.insert(free);
            }
        }
        let t0 = std::time::Instant::now();
        let mut b = TraceBuilder::default();
        b.trace.events.reserve_exact(parts.iter().map(|p| p.events.len()).sum());
        for part in parts.drain(..) {
            b.append(part)?;
        }
        tracing::debug!("joining the files took {:.3} s", t0.elapsed().as_secs_f64());
        Ok(b.finish())
    }
}

/// Finds where time runs back in program order (the events as the dump holds them) and
/// moves each later event by the same amount, so they follow those before them.
fn undo_reversals(events: &mut [Event]) -> Vec<Reversal> {
    let mut out = Vec::new();
    let mut shift = 0i64;
    let mut latest = i64::MIN;
    for i in 0..events.len() {
        let t = events[i].t_raw + shift;
        let back = |e: &Event| e.t_raw + shift < latest.saturating_sub(MIN_REVERSAL_NS);
        if latest != i64::MIN && back(&events[i]) && events[i + 1..].iter().take(REVERSAL_PERSISTS - 1).all(back) {
            let undone = latest + 1 - t;
            out.push(Reversal { first_after: latest + 1, recorded: events[i].t_raw, undone_ns: undone });
            shift += undone;
        }
        events[i].t_raw += shift;
        latest = latest.max(events[i].t_raw);
    }
    out
}

/// A packet handed to the builder.
pub struct RawPacket<'a> {
    pub t_raw: i64,
    pub seq: Option<u64>,
    pub cpu: u32,
    /// None: infer from the node's addresses.
    pub dir: Option<Dir>,
    pub orig_len: u32,
    /// From the IP header on.
    pub data: &'a [u8],
    /// The node's kernel dropped it, for this reason.
    pub drop: Option<&'a str>,
}

/// Builds a trace node by node; also used by tests and benchmarks to make synthetic traces.
#[derive(Default)]
pub struct TraceBuilder {
    trace: Trace,
    /// Events of the node being built whose direction is still unknown.
    pending_dir: Vec<usize>,
    /// Events of the node being built that are kernel drops, with their reason's index.
    pending_drops: Vec<(usize, u16)>,
}

impl TraceBuilder {
    pub fn begin_node(&mut self, info: NodeInfo) -> Result<NodeId, TraceError> {
        if let Some(prev) = self.trace.nodes.iter().find(|n| n.name == info.name) {
            return Err(TraceError::DuplicateNode { name: info.name.clone(), first: prev.file.clone(), second: info.file.clone() });
        }
        let id = self.trace.nodes.len();
        self.trace.nodes.push(info);
        self.trace.node_ranges.push(self.trace.events.len()..self.trace.events.len());
        self.trace.arenas.push(Vec::new());
        self.trace.unparsed.push(0);
        Ok(id as NodeId)
    }

    fn current(&self) -> NodeId {
        (self.trace.nodes.len() - 1) as NodeId
    }

    /// Adds a packet to the node begun last. Returns false if it is not IP.
    pub fn packet(&mut self, p: &RawPacket<'_>) -> bool {
        let node = self.current();
        let Ok(pkt) = Packet::parse(p.data, p.orig_len) else {
            self.trace.unparsed[node as usize] += 1;
            return false;
        };
        let data = &p.data[..p.data.len().min(u16::MAX as usize)];
        let (proto, tcp) = (ProtoCode(pkt.ip_proto), pkt.tcp);
        let src = self.trace.intern(pkt.src);
        let dst = self.trace.intern(pkt.dst);
        let arena = &mut self.trace.arenas[node as usize];
        let data_off = arena.len() as u64;
        arena.extend_from_slice(data);
        let event = Event {
            t_raw: p.t_raw,
            seq: p.seq.unwrap_or(u64::MAX),
            data_off,
            src,
            dst,
            tcp_seq: tcp.map_or(0, |t| t.seq),
            tcp_ack: tcp.map_or(0, |t| t.ack),
            payload_len: pkt.payload_len,
            orig_len: p.orig_len,
            data_len: data.len() as u16,
            sport: pkt.sport,
            dport: pkt.dport,
            ip_id: pkt.ip_id,
            node,
            cpu: p.cpu.min(u16::MAX as u32) as u16,
            dir: p.dir.unwrap_or(Dir::Recv),
            proto,
            tcp_flags: tcp.map_or(0, |t| t.flags),
            payload_off: pkt.payload_offset.min(255) as u8,
        };
        if p.dir.is_none() {
            self.pending_dir.push(self.trace.events.len());
        }
        if let Some(reason) = p.drop {
            let r = match self.trace.drop_reasons.iter().position(|x| x == reason) {
                Some(r) => r,
                None => {
                    self.trace.drop_reasons.push(reason.to_string());
                    self.trace.drop_reasons.len() - 1
                }
            };
            self.pending_drops.push((self.trace.events.len(), r.min(u16::MAX as usize) as u16));
        }
        self.trace.events.push(event);
        self.trace.node_ranges[node as usize].end = self.trace.events.len();
        true
    }

    /// Ends the node begun last: infers missing directions, sorts, records addresses and window.
    pub fn end_node(&mut self) {
        let node = self.current() as usize;
        let range = self.trace.node_ranges[node].clone();
        if !self.pending_dir.is_empty() {
            // Without direction flags (plain tcpdump), the node's own address is the one
            // that appears in the most packets; packets from it are sends.
            let mut count: HashMap<AddrId, u64> = HashMap::new();
            for e in &self.trace.events[range.clone()] {
                *count.entry(e.src).or_default() += 1;
                *count.entry(e.dst).or_default() += 1;
            }
            let max = count.values().copied().max().unwrap_or(0);
            let local: Vec<AddrId> = count.iter().filter(|(_, n)| **n == max).map(|(a, _)| *a).collect();
            for &i in &self.pending_dir {
                let e = &mut self.trace.events[i];
                e.dir = if local.contains(&e.src) { Dir::Send } else { Dir::Recv };
            }
            self.pending_dir.clear();
        } else {
            self.trace.nodes[node].direction_recorded = true;
        }
        let events = &mut self.trace.events[range.clone()];
        let reversals = undo_reversals(events);
        let range = self.take_drops(node, range);
        let events = &mut self.trace.events[range.clone()];
        if !reversals.is_empty() {
            let info = &mut self.trace.nodes[node];
            // Times of the node's own read on the stepped clock: the end of its window and
            // when it heard the trigger come last, after the steps.
            let undo = |t: i64| -> i64 { t + reversals.iter().filter(|r| t >= r.recorded).map(|r| r.undone_ns).sum::<i64>() };
            info.trigger_heard = info.trigger_heard.map(undo);
            info.window.1 = undo(info.window.1);
            info.reversals = reversals;
        }
        events.sort_by_key(|e| (e.t_raw, e.cpu, e.seq));
        // Its addresses: those it sends from, and the unicast ones it receives on (a node
        // that only listens owns an address too, so a loss to it can be seen).
        let all_addrs = &self.trace.addrs;
        let own = |a: AddrId| {
            let ip = all_addrs[a as usize];
            !(ip.is_loopback() || ip.is_unspecified() || is_group_address(ip))
        };
        let mut addrs: Vec<AddrId> = events.iter().map(|e| if e.dir == Dir::Send { e.src } else { e.dst }).filter(|&a| own(a)).collect();
        addrs.sort_unstable();
        addrs.dedup();
        let info = &mut self.trace.nodes[node];
        info.addrs = addrs;
        if let (Some(first), Some(last)) = (events.first(), events.last()) {
            let (lo, hi) = info.window;
            info.window = if lo == 0 && hi == 0 { (first.t_raw, last.t_raw) } else { (lo.min(first.t_raw), hi.max(last.t_raw)) };
        }
    }

    /// Moves the node's kernel drops out of its events into `drops`, but for sends whose
    /// sending was not recorded: those stay as the sends they were. Returns the node's range.
    fn take_drops(&mut self, node: usize, range: Range<usize>) -> Range<usize> {
        if self.pending_drops.is_empty() {
            return range;
        }
        let pending = std::mem::take(&mut self.pending_drops);
        let is_drop: HashMap<usize, u16> = pending.into_iter().collect();
        let key = |e: &Event| (e.src, e.dst, e.sport, e.dport, e.ip_id, e.proto, e.orig_len);
        // Sends the recorder saw leave: a drop after them (a full queue, say) is theirs.
        let sent: std::collections::HashSet<_> = range
            .clone()
            .filter(|i| !is_drop.contains_key(i))
            .map(|i| &self.trace.events[i])
            .filter(|e| e.dir == Dir::Send)
            .map(key)
            .collect();
        let mut keep = range.start;
        for i in range.clone() {
            let e = self.trace.events[i];
            if let Some(&reason) = is_drop.get(&i) {
                let stands_for_send = e.dir == Dir::Send && !sent.contains(&key(&e));
                self.trace.drops.push(KernelDrop { event: e, reason, stands_for_send });
                if !stands_for_send {
                    continue;
                }
            }
            self.trace.events[keep] = e;
            keep += 1;
        }
        self.trace.events.truncate(keep);
        self.trace.node_ranges[node].end = keep;
        range.start..keep
    }

    /// Reads one dump as one node. A damaged file keeps what was read before the damage.
    pub fn read_file(&mut self, file: &Path) -> Result<NodeId, TraceError> {
        // A FIFO or a device is refused: it would hang the report, or never end.
        let f = crate::outfile::open_regular(file).map_err(|error| TraceError::Open { file: file.to_path_buf(), error })?;
        self.read_dump(std::io::BufReader::with_capacity(1 << 20, f), file)
    }

    /// Reads one dump from `input` as one node; `file` names it (and, by its stem, the node
    /// when the dump does not).
    pub fn read_dump(&mut self, input: impl std::io::Read, file: &Path) -> Result<NodeId, TraceError> {
        let mut reader = DumpReader::new(input);
        let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "node".into());
        // The section header (first block) names the node; packets follow.
        let mut info = Some(NodeInfo { name: stem, file: file.to_path_buf(), ..NodeInfo::default() });
        let mut node = None;
        let mut skipped = Vec::new();
        let mut bad_times = 0u64;
        loop {
            let item = match reader.next_item() {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(e) => {
                    if e.offset() == 0 {
                        return Err(TraceError::Unusable { file: file.to_path_buf(), what: e.to_string() });
                    }
                    skipped.push(format!("{}: {e}; the rest of the file was skipped", file.display()));
                    break;
                }
            };
            if node.is_none()
                && matches!(item, Item::Packet(_) | Item::NotIp)
                && let Some(info) = info.take()
            {
                node = Some(self.begin_node(info)?);
            }
            match item {
                Item::Section(s) => {
                    if let Some(info) = info.as_mut() {
                        if let Some(name) = s.node {
                            info.name = name;
                        }
                        info.snaplen = s.snaplen.or(info.snaplen);
                        info.trigger_heard = s.trigger_heard_ns.or(info.trigger_heard);
                        info.trigger_reason = s.trigger_reason.or(info.trigger_reason.take());
                    }
                }
                Item::Other => {}
                Item::NotIp => {
                    let cur = self.current() as usize;
                    self.trace.unparsed[cur] += 1;
                }
                Item::Packet(p) if p.time_ns > MAX_TIME_NS => bad_times += 1,
                Item::Packet(p) => {
                    self.packet(&RawPacket {
                        t_raw: p.time_ns as i64,
                        seq: p.seq,
                        cpu: p.cpu,
                        dir: p.direction.map(|d| if d == Direction::Egress { Dir::Send } else { Dir::Recv }),
                        orig_len: p.orig_len,
                        data: p.ip,
                        drop: p.drop_reason,
                    });
                }
            }
        }
        let node = match (node, info) {
            (Some(n), _) => n,
            (None, Some(info)) => self.begin_node(info)?,
            (None, None) => unreachable!("info is taken only when the node begins"),
        };
        {
            let stats = reader.stats();
            let n = &mut self.trace.nodes[node as usize];
            n.drops_per_cpu = stats.drops_per_cpu.clone();
            n.kernel_drops = stats.kernel_drops;
            n.evicted = stats.evicted;
            if bad_times > 0 {
                skipped
                    .push(format!("{}: {bad_times} packets with impossible timestamps (after the year 2116) were skipped", file.display()));
            }
            n.skipped = skipped;
            if let Some(w) = stats.window.filter(|&(a, b)| 0 <= a && a <= b && b as u64 <= MAX_TIME_NS) {
                n.window = w;
            }
        }
        self.end_node();
        Ok(node)
    }

    /// Adds every node of a trace built separately (its events and bytes are moved over).
    pub fn append(&mut self, part: Trace) -> Result<(), TraceError> {
        for info in &part.nodes {
            if let Some(prev) = self.trace.nodes.iter().find(|n| n.name == info.name) {
                return Err(TraceError::DuplicateNode { name: info.name.clone(), first: prev.file.clone(), second: info.file.clone() });
            }
        }
        let addr_map: Vec<AddrId> = part.addrs.iter().map(|a| self.trace.intern(*a)).collect();
        let node_base = self.trace.nodes.len() as NodeId;
        let event_base = self.trace.events.len();
        self.trace.arenas.extend(part.arenas);
        // Copied in parallel: at tens of millions of events this copy is a large part of reading.
        use rayon::prelude::*;
        self.trace.events.par_extend(part.events.par_iter().map(|e| Event {
            node: e.node + node_base,
            src: addr_map[e.src as usize],
            dst: addr_map[e.dst as usize],
            ..*e
        }));
        drop(part.events);
        let reason_map: Vec<u16> = part
            .drop_reasons
            .iter()
            .map(|r| match self.trace.drop_reasons.iter().position(|x| x == r) {
                Some(k) => k as u16,
                None => {
                    self.trace.drop_reasons.push(r.clone());
                    (self.trace.drop_reasons.len() - 1) as u16
                }
            })
            .collect();
        self.trace.drops.extend(part.drops.iter().map(|d| KernelDrop {
            event: Event {
                node: d.event.node + node_base,
                src: addr_map[d.event.src as usize],
                dst: addr_map[d.event.dst as usize],
                ..d.event
            },
            reason: reason_map[d.reason as usize],
            ..*d
        }));
        for mut info in part.nodes {
            for a in &mut info.addrs {
                *a = addr_map[*a as usize];
            }
            self.trace.nodes.push(info);
        }
        self.trace.node_ranges.extend(part.node_ranges.iter().map(|r| r.start + event_base..r.end + event_base));
        self.trace.unparsed.extend(part.unparsed);
        Ok(())
    }

    pub fn finish(self) -> Trace {
        self.trace
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{addr, recv, send, trace, udp};
    use super::*;

    /// Writes a one-packet dump that calls itself `node`.
    fn dump_claiming(dir: &Path, file: &str, node: &str) -> PathBuf {
        use crate::dump::{DumpInfo, DumpWriter, WritePacket};
        let info = DumpInfo { node: node.into(), snaplen: 64, start_wall_ns: 1_000, end_wall_ns: 9_000, ..DumpInfo::default() };
        let path = dir.join(file);
        let mut w = DumpWriter::new(std::fs::File::create(&path).unwrap(), &info).unwrap();
        let ip = udp(addr(0), addr(1), 1, b"A");
        w.packet(&WritePacket {
            wall_ns: 2_000,
            direction: Some(Direction::Egress),
            seq: 1,
            cpu: 0,
            ktime_ns: None,
            orig_len: ip.len() as u32,
            ip: &ip,
            drop_reason: None,
        })
        .unwrap();
        w.finish(&info).unwrap();
        path
    }

    #[test]
    fn a_dump_claiming_another_nodes_name_is_named_as_verified_and_the_rest_reported() {
        let dir = std::env::temp_dir().join(format!("wgo-trace-claims-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // b's dump says it is a (the collector checked the name b in the handshake).
        let a = dump_claiming(&dir, "a.pcapng", "a");
        let b = dump_claiming(&dir, "b.pcapng", "a");
        let t = Trace::read_files_as(&[(a.clone(), Some("a".into())), (b.clone(), Some("b".into()))]).unwrap();
        assert_eq!(t.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert!(t.nodes[0].skipped.is_empty());
        assert!(t.nodes[1].skipped[0].contains("claim to be node a") && t.nodes[1].skipped[0].contains("received it from b"));
        // Without a manifest: the report goes on, the second named after its file.
        let t = Trace::read_files(&[a, b]).unwrap();
        assert_eq!(t.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert!(t.nodes[1].skipped[0].contains("an earlier dump is"), "{:?}", t.nodes[1].skipped);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_fifo_given_as_a_dump_is_refused_not_waited_on() {
        let dir = std::env::temp_dir().join(format!("wgo-trace-fifo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("node1.pcapng");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let Err(err) = Trace::read_files(std::slice::from_ref(&fifo)) else { panic!("a FIFO read as a dump") };
        let err = err.to_string();
        assert!(err.contains("node1.pcapng") && err.contains("a FIFO"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn events_are_per_node_in_time_order_with_the_addresses_each_node_sends_from() {
        let t = trace(vec![
            vec![send(300, udp(addr(0), addr(1), 2, b"B")), send(100, udp(addr(0), addr(1), 1, b"A"))],
            vec![recv(150, udp(addr(0), addr(1), 1, b"A")), recv(350, udp(addr(0), addr(1), 2, b"B"))],
        ]);
        assert_eq!(t.nodes.len(), 2);
        let n1: Vec<i64> = t.node_events(0).iter().map(|e| e.t_raw).collect();
        assert_eq!(n1, vec![100, 300]);
        assert_eq!(t.node_events(1).len(), 2);
        assert!(t.node_events(1).iter().all(|e| e.node == 1 && e.dir == Dir::Recv));
        assert_eq!(t.nodes[0].addrs.iter().map(|&a| t.addr(a)).collect::<Vec<_>>(), vec![IpAddr::from(addr(0))]);
        assert_eq!(
            t.nodes[1].addrs.iter().map(|&a| t.addr(a)).collect::<Vec<_>>(),
            vec![IpAddr::from(addr(1))],
            "n2 only received, on its own address"
        );
        assert_eq!(t.payload(&t.node_events(0)[0]), b"A");
        assert_eq!(t.node_by_name("n2"), Some(1));
        assert!(t.nodes.iter().all(|n| n.direction_recorded));
    }

    #[test]
    fn without_direction_flags_the_most_frequent_address_is_the_nodes_own() {
        let mut b = TraceBuilder::default();
        b.begin_node(NodeInfo { name: "plain".into(), ..NodeInfo::default() }).unwrap();
        let packets = [udp(addr(0), addr(1), 1, b"x"), udp(addr(2), addr(0), 2, b"y"), udp(addr(0), addr(2), 3, b"z")];
        for (i, p) in packets.iter().enumerate() {
            b.packet(&RawPacket { t_raw: i as i64, seq: None, cpu: 0, dir: None, orig_len: p.len() as u32, data: p, drop: None });
        }
        assert!(!b.packet(&RawPacket { t_raw: 9, seq: None, cpu: 0, dir: None, orig_len: 3, data: b"\x60\x00\x00", drop: None }), "not IP");
        b.end_node();
        let t = b.finish();
        let dirs: Vec<Dir> = t.events.iter().map(|e| e.dir).collect();
        assert_eq!(dirs, vec![Dir::Send, Dir::Recv, Dir::Send]);
        assert!(!t.nodes[0].direction_recorded);
        assert_eq!(t.unparsed, vec![1]);
        assert_eq!(t.events[0].seq, u64::MAX, "no sequence number in the file");
        assert_eq!(t.nodes[0].window, (0, 2), "the window is the first and last event");
    }

    #[test]
    fn traces_join_with_their_addresses_remapped_and_refuse_a_node_twice() {
        let a = trace(vec![vec![send(1, udp(addr(0), addr(1), 1, b"A"))]]);
        let mut b = TraceBuilder::default();
        b.begin_node(NodeInfo { name: "other".into(), ..NodeInfo::default() }).unwrap();
        let p = udp(addr(1), addr(0), 7, b"B");
        b.packet(&RawPacket { t_raw: 2, seq: Some(0), cpu: 0, dir: Some(Dir::Send), orig_len: p.len() as u32, data: &p, drop: None });
        b.end_node();
        let b = b.finish();
        let mut joined = TraceBuilder::default();
        joined.append(b).unwrap();
        joined.append(a).unwrap();
        let t = joined.finish();
        assert_eq!(t.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), vec!["other", "n1"]);
        let e = &t.node_events(1)[0];
        assert_eq!((t.addr(e.src), t.addr(e.dst)), (IpAddr::from(addr(0)), IpAddr::from(addr(1))));
        assert_eq!(t.payload(e), b"A", "each node keeps its own bytes");

        let mut twice = TraceBuilder::default();
        twice.append(trace(vec![vec![]])).unwrap();
        let err = twice.append(trace(vec![vec![]])).unwrap_err();
        assert!(matches!(err, TraceError::DuplicateNode { ref name, .. } if name == "n1"), "{err}");
    }

    /// Found by fuzzing: times near the end of the range overflowed the clock arithmetic.
    #[test]
    fn packets_with_impossible_timestamps_are_skipped_and_named() {
        use crate::dump::{DumpInfo, DumpWriter, WritePacket};
        let ip = udp(addr(0), addr(1), 1, b"x");
        let info = DumpInfo { node: "n1".into(), start_wall_ns: 0, end_wall_ns: u64::MAX, ..DumpInfo::default() };
        let mut bytes = Vec::new();
        let mut w = DumpWriter::new(&mut bytes, &info).unwrap();
        for t in [1_000, u64::MAX - 5, MAX_TIME_NS + 1, 2_000] {
            let p = WritePacket {
                wall_ns: t,
                direction: None,
                seq: 0,
                cpu: 0,
                ktime_ns: None,
                orig_len: ip.len() as u32,
                ip: &ip,
                drop_reason: None,
            };
            w.packet(&p).unwrap();
        }
        w.finish(&info).unwrap();
        let mut b = TraceBuilder::default();
        b.read_dump(&bytes[..], Path::new("n1.pcapng")).unwrap();
        let t = b.finish();
        assert_eq!(t.events.iter().map(|e| e.t_raw).collect::<Vec<_>>(), vec![1_000, 2_000]);
        assert!(t.nodes[0].skipped[0].contains("2 packets with impossible timestamps"), "{:?}", t.nodes[0].skipped);
        assert_eq!(t.nodes[0].window, (1_000, 2_000), "an impossible recording span is not taken either");
    }

    #[test]
    fn content_hash_tells_payloads_and_lengths_apart() {
        let t = trace(vec![vec![
            send(1, udp(addr(0), addr(1), 1, b"same prefix.....AAAA")),
            send(2, udp(addr(0), addr(1), 2, b"same prefix.....BBBB")),
            send(3, udp(addr(0), addr(1), 3, b"same prefix.....BBBBB")),
            send(4, udp(addr(0), addr(1), 4, b"other")),
        ]]);
        let h: Vec<u64> = t.events.iter().map(|e| t.content_hash(e)).collect();
        assert_eq!(h[0], h[1], "only the first {MATCH_BYTES} payload bytes count");
        assert_ne!(h[1], h[2], "the length counts");
        assert_ne!(h[0], h[3]);
    }
}
