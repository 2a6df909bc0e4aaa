//! Writing a node's ring as a pcapng file that Wireshark opens.
//!
//! Layout: one section, one raw-IP interface (named after the node, ns resolution),
//! one Enhanced Packet Block per record, and a closing Interface Statistics Block
//! with the loss counters. Per packet:
//! - timestamp: the node's wall clock, ns;
//! - `epb_flags`: direction (inbound 01, outbound 10);
//! - `epb_packetid` (5): the per-CPU sequence number;
//! - `epb_queue` (6): the CPU;
//! - custom binary option 2989 with PEN [`WGO_PEN`]: the raw kernel time (CLOCK_MONOTONIC ns, u64 LE).
//!
//! Metadata the collector needs goes into `wgo:key=value` comment lines on the
//! section and statistics blocks, readable in Wireshark's capture file properties.

use std::io::Write;

use capture_ebpf::{Direction, MAX_CAPTURE};

use crate::pcapng::{self, Options, Writer};
use crate::ring::{RecordRef, RingStats};

/// IANA's private enterprise number for documentation (RFC 5612): wgo has none of its own.
pub const WGO_PEN: u32 = 32473;
pub const EPB_FLAG_INBOUND: u32 = 0b01;
pub const EPB_FLAG_OUTBOUND: u32 = 0b10;

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("writing pcapng: {0}")]
    Io(#[from] std::io::Error),
}

/// What a dump says about where and how it was recorded.
#[derive(Clone, Debug, Default)]
pub struct DumpInfo {
    pub node: String,
    pub cgroup: String,
    pub snaplen: u32,
    /// Records the kernel ring could not take, per CPU.
    pub drops_per_cpu: Vec<u64>,
    pub ring: RingStats,
    pub start_wall_ns: u64,
    pub end_wall_ns: u64,
    /// Wall clock minus CLOCK_MONOTONIC at dump time, ns.
    pub wall_minus_mono_ns: i64,
    /// Extra `wgo:key=value` lines (e.g. when the node heard a trigger).
    pub extra: Vec<(String, String)>,
}

impl DumpInfo {
    pub fn kernel_drops(&self) -> u64 {
        self.drops_per_cpu.iter().sum()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DumpSummary {
    pub packets: u64,
    pub bytes: u64,
}

/// Writes `records` as one pcapng section; returns how many packets went out.
pub fn write_dump<'a, W: Write>(
    out: W,
    info: &DumpInfo,
    records: impl Iterator<Item = RecordRef<'a>>,
) -> Result<DumpSummary, DumpError> {
    let mut shb_comment = format!(
        "wgo:node={}\nwgo:cgroup={}\nwgo:snaplen={}\nwgo:wall_minus_mono_ns={}\nwgo:version={}",
        info.node,
        info.cgroup,
        info.snaplen,
        info.wall_minus_mono_ns,
        env!("CARGO_PKG_VERSION")
    );
    for (k, v) in &info.extra {
        shb_comment.push_str(&format!("\nwgo:{k}={v}"));
    }
    let mut shb = Options::new();
    shb.str(pcapng::SHB_USERAPPL, concat!("wgo ", env!("CARGO_PKG_VERSION")))
        .str(pcapng::SHB_OS, &os_release())
        .str(pcapng::OPT_COMMENT, &shb_comment);
    let mut w = Writer::new(std::io::BufWriter::with_capacity(1 << 20, out), &shb)?;
    let mut idb = Options::new();
    idb.str(pcapng::IF_NAME, &info.node)
        .str(pcapng::IF_DESCRIPTION, &format!("wgo capture of cgroup {} on node {}", info.cgroup, info.node))
        .bytes(pcapng::IF_TSRESOL, &[9]);
    w.interface(pcapng::LINKTYPE_RAW, MAX_CAPTURE as u32, &idb)?;

    let mut summary = DumpSummary::default();
    for rec in records {
        let flags = match Direction::from_u32(rec.header.direction) {
            Some(Direction::Ingress) => EPB_FLAG_INBOUND,
            Some(Direction::Egress) => EPB_FLAG_OUTBOUND,
            None => 0,
        };
        w.packet(0, rec.wall_ns, rec.header.orig_len, rec.data, |o| {
            o.u32(pcapng::EPB_FLAGS, flags)
                .u64(pcapng::EPB_PACKETID, rec.header.seq)
                .u32(pcapng::EPB_QUEUE, rec.header.cpu)
                .custom(WGO_PEN, &rec.header.ktime_ns.to_le_bytes());
        })?;
        summary.packets += 1;
        summary.bytes += rec.data.len() as u64;
    }

    let drops = info.kernel_drops();
    let per_cpu: Vec<String> = info.drops_per_cpu.iter().map(u64::to_string).collect();
    let mut isb = Options::new();
    isb.time(pcapng::ISB_STARTTIME, info.start_wall_ns)
        .time(pcapng::ISB_ENDTIME, info.end_wall_ns)
        .u64(pcapng::ISB_IFRECV, info.ring.pushed + drops)
        .u64(pcapng::ISB_IFDROP, drops)
        .u64(pcapng::ISB_USRDELIV, summary.packets)
        .str(
            pcapng::OPT_COMMENT,
            &format!(
                "wgo:drops_per_cpu={}\nwgo:kernel_drops={}\nwgo:evicted_by_age={}\nwgo:evicted_by_size={}",
                per_cpu.join(","),
                drops,
                info.ring.evicted_by_age,
                info.ring.evicted_by_size
            ),
        );
    w.statistics(0, info.end_wall_ns, &isb)?;
    w.into_inner().flush()?;
    Ok(summary)
}

fn os_release() -> String {
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
