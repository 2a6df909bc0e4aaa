//! Writing a dump: what `wgo record` and the agent save, and what the simulator writes.

use std::io::{BufWriter, Write};

use capture_ebpf::{Direction, MAX_CAPTURE, RecordHeader};

use super::pcapng::{self, Options, Writer};
use super::{WGO_PEN, direction_flags, keys, wgo_comment};

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("writing pcapng: {0}")]
    Io(#[from] std::io::Error),
}

/// One record as the agent ring holds it: wall-clock time, the kernel's header, the bytes.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    pub wall_ns: u64,
    pub header: RecordHeader,
    pub data: &'a [u8],
}

/// What the agent ring did with the records it was given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingCounts {
    /// Records pushed since the start.
    pub pushed: u64,
    /// Records evicted because they were older than the window.
    pub evicted_by_age: u64,
    /// Records evicted to stay within the byte bound.
    pub evicted_by_size: u64,
}

/// What a dump says about where and how it was recorded.
#[derive(Clone, Debug, Default)]
pub struct DumpInfo {
    pub node: String,
    pub cgroup: String,
    pub snaplen: u32,
    /// Records the kernel ring could not take, per CPU.
    pub drops_per_cpu: Vec<u64>,
    pub ring: RingCounts,
    pub start_wall_ns: u64,
    pub end_wall_ns: u64,
    /// Wall clock minus CLOCK_MONOTONIC at dump time, ns.
    pub wall_minus_mono_ns: i64,
    /// Extra `wgo:key=value` lines (e.g. when the node heard a trigger; see [`keys`]).
    pub extra: Vec<(&'static str, String)>,
    /// Names of the kernel's drop reasons by number (from its BTF), for drop records.
    pub drop_reasons: Vec<Option<String>>,
}

impl DumpInfo {
    pub fn kernel_drops(&self) -> u64 {
        self.drops_per_cpu.iter().sum()
    }
}

/// One packet to write, from its IP header on.
#[derive(Clone, Copy, Debug)]
pub struct WritePacket<'a> {
    /// The node's wall clock, ns.
    pub wall_ns: u64,
    pub direction: Option<Direction>,
    /// Per-CPU sequence number.
    pub seq: u64,
    pub cpu: u32,
    /// The raw kernel time (CLOCK_MONOTONIC), where there is one.
    pub ktime_ns: Option<u64>,
    /// Length on the wire.
    pub orig_len: u32,
    pub ip: &'a [u8],
    /// The kernel dropped it, for this reason (lower case, no prefix).
    pub drop_reason: Option<&'a str>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DumpSummary {
    pub packets: u64,
    pub bytes: u64,
}

/// Writes one dump, packet by packet: the section and interface first, the statistics
/// when it is finished.
pub struct DumpWriter<W: Write> {
    w: Writer<BufWriter<W>>,
    summary: DumpSummary,
    drop_reasons: Vec<Option<String>>,
}

impl<W: Write> DumpWriter<W> {
    pub fn new(out: W, info: &DumpInfo) -> Result<DumpWriter<W>, DumpError> {
        let version = env!("CARGO_PKG_VERSION");
        let mut pairs = vec![
            (keys::NODE, info.node.clone()),
            (keys::CGROUP, info.cgroup.clone()),
            (keys::SNAPLEN, info.snaplen.to_string()),
            (keys::WALL_MINUS_MONO_NS, info.wall_minus_mono_ns.to_string()),
            (keys::VERSION, version.to_string()),
        ];
        pairs.extend(info.extra.iter().map(|(k, v)| (*k, v.clone())));
        let mut shb = Options::new();
        shb.str(pcapng::SHB_USERAPPL, &format!("wgo {version}"))
            .str(pcapng::SHB_OS, &os_release())
            .str(pcapng::OPT_COMMENT, &wgo_comment(pairs));
        let mut w = Writer::new(BufWriter::with_capacity(1 << 20, out), &shb)?;
        let mut idb = Options::new();
        idb.str(pcapng::IF_NAME, &info.node)
            .str(pcapng::IF_DESCRIPTION, &format!("wgo capture of cgroup {} on node {}", info.cgroup, info.node))
            .bytes(pcapng::IF_TSRESOL, &[9]);
        w.interface(pcapng::LINKTYPE_RAW, MAX_CAPTURE as u32, &idb)?;
        Ok(DumpWriter { w, summary: DumpSummary::default(), drop_reasons: info.drop_reasons.clone() })
    }

    /// Writes one packet.
    pub fn packet(&mut self, p: &WritePacket<'_>) -> Result<(), DumpError> {
        self.w.packet(0, p.wall_ns, p.orig_len, p.ip, |o| {
            o.u32(pcapng::EPB_FLAGS, p.direction.map_or(0, direction_flags)).u64(pcapng::EPB_PACKETID, p.seq).u32(pcapng::EPB_QUEUE, p.cpu);
            if let Some(k) = p.ktime_ns {
                o.custom(WGO_PEN, &k.to_le_bytes());
            }
            if let Some(r) = p.drop_reason {
                o.custom_str(WGO_PEN, r).str(pcapng::OPT_COMMENT, &format!("dropped by the kernel: {r}"));
            }
        })?;
        self.summary.packets += 1;
        self.summary.bytes += p.ip.len() as u64;
        Ok(())
    }

    /// Writes a record from the agent ring.
    pub fn record(&mut self, rec: &Record<'_>) -> Result<(), DumpError> {
        let h = &rec.header;
        self.packet(&WritePacket {
            wall_ns: rec.wall_ns,
            direction: Direction::from_u32(h.direction),
            seq: h.seq,
            cpu: h.cpu,
            ktime_ns: Some(h.ktime_ns),
            orig_len: h.orig_len,
            ip: rec.data,
            drop_reason: (h.kind == capture_ebpf::EventKind::Drop as u32)
                .then(|| {
                    // A number this kernel's BTF did not name (or no BTF) still says which.
                    self.drop_reasons.get(h.reason as usize).cloned().flatten().unwrap_or_else(|| format!("reason_{}", h.reason))
                })
                .as_deref(),
        })
    }

    /// Writes the statistics block with the loss counters and flushes.
    pub fn finish(mut self, info: &DumpInfo) -> Result<DumpSummary, DumpError> {
        let drops = info.kernel_drops();
        let per_cpu: Vec<String> = info.drops_per_cpu.iter().map(u64::to_string).collect();
        let comment = wgo_comment([
            (keys::DROPS_PER_CPU, per_cpu.join(",")),
            (keys::KERNEL_DROPS, drops.to_string()),
            (keys::EVICTED_BY_AGE, info.ring.evicted_by_age.to_string()),
            (keys::EVICTED_BY_SIZE, info.ring.evicted_by_size.to_string()),
        ]);
        let mut isb = Options::new();
        isb.time(pcapng::ISB_STARTTIME, info.start_wall_ns)
            .time(pcapng::ISB_ENDTIME, info.end_wall_ns)
            .u64(pcapng::ISB_IFRECV, info.ring.pushed + drops)
            .u64(pcapng::ISB_IFDROP, drops)
            .u64(pcapng::ISB_USRDELIV, self.summary.packets)
            .str(pcapng::OPT_COMMENT, &comment);
        self.w.statistics(0, info.end_wall_ns, &isb)?;
        self.w.into_inner().flush()?;
        Ok(self.summary)
    }
}

/// Writes `records` as one dump; returns how many packets went out.
pub fn write_dump<'a, W: Write>(out: W, info: &DumpInfo, records: impl Iterator<Item = Record<'a>>) -> Result<DumpSummary, DumpError> {
    let mut w = DumpWriter::new(out, info)?;
    for rec in records {
        w.record(&rec)?;
    }
    w.finish(info)
}

fn os_release() -> String {
    // SAFETY: utsname is plain bytes; all-zero is a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: u is a valid out-pointer.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "Linux".into();
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    format!("{} {}", field(&u.sysname), field(&u.release))
}
