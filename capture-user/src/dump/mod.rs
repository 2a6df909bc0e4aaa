//! The dump: one node's recording as a pcapng file. This module is the one owner of
//! the format: which blocks, options, flags and `wgo:` keys a dump holds ([`writer`]
//! writes them, [`reader`] reads them back, also from plain tcpdump files), on top of
//! a generic pcapng codec ([`pcapng`]). It uses only the record layout of
//! `capture-ebpf`; everything after it in the data flow (ship, merge, report) uses it.
//!
//! Layout of a dump: one section, one raw-IP interface (named after the node, ns
//! resolution), one Enhanced Packet Block per record, and a closing Interface
//! Statistics Block with the loss counters. Per packet:
//! - timestamp: the node's wall clock, ns;
//! - `epb_flags`: direction (inbound 01, outbound 10);
//! - `epb_packetid` (5): the per-CPU sequence number;
//! - `epb_queue` (6): the CPU;
//! - custom binary option 2989 with PEN [`WGO_PEN`]: the raw kernel time (CLOCK_MONOTONIC ns, u64 LE).
//!
//! A packet the kernel dropped (`skb:kfree_skb`) is a packet block like the others, with
//! its direction, plus: custom UTF-8 option 2988 with PEN [`WGO_PEN`] holding the kernel's
//! drop reason in lower case without its prefix (`netfilter_drop`, `no_socket`,
//! `socket_rcvbuff`), and a comment saying it (`dropped by the kernel: netfilter_drop`).
//! pcapng has no flag for "dropped by the host" (`epb_flags` error bits are link-layer
//! errors), so none is set.
//!
//! Metadata the collector needs goes into `wgo:key=value` comment lines ([`keys`]) on
//! the section and statistics blocks, readable in Wireshark's capture file properties.
//!
//! [`WGO_PEN`] is 32473, the private enterprise number RFC 5612 reserves for documentation
//! and examples: wgo has no registered number. What a user of the files should expect:
//! Wireshark and other pcapng tools show both options as custom options of PEN 32473,
//! unnamed; the number is shared by every example, so an option under it means wgo's only
//! in a dump whose section says `wgo:version=` (wgo's reader takes a 2988 string under it as
//! a drop reason in any pcapng it reads). Every custom option is written and read through
//! this one constant, so a registered number is a one-line change; dumps written before
//! such a change keep 32473.

pub mod pcapng;
pub mod reader;
pub mod writer;

pub use reader::{DumpReader, DumpStats, Item, ReadPacket, SectionInfo};
pub use writer::{DumpInfo, DumpSummary, DumpWriter, Record, RingCounts, WritePacket, write_dump};

use capture_ebpf::Direction;

/// The private enterprise number of wgo's custom pcapng options: 32473, which RFC 5612
/// reserves for documentation and examples (wgo has none of its own; see the module doc).
pub(crate) const WGO_PEN: u32 = 32473;
/// `epb_flags` bits 0–1: the packet's direction.
pub(crate) const EPB_FLAG_INBOUND: u32 = 0b01;
pub(crate) const EPB_FLAG_OUTBOUND: u32 = 0b10;
const EPB_DIRECTION_MASK: u32 = 0b11;

/// The `epb_flags` value for a direction.
pub(crate) fn direction_flags(d: Direction) -> u32 {
    match d {
        Direction::Ingress => EPB_FLAG_INBOUND,
        Direction::Egress => EPB_FLAG_OUTBOUND,
    }
}

/// The direction an `epb_flags` value names, if any.
pub(crate) fn flags_direction(flags: u32) -> Option<Direction> {
    match flags & EPB_DIRECTION_MASK {
        EPB_FLAG_INBOUND => Some(Direction::Ingress),
        EPB_FLAG_OUTBOUND => Some(Direction::Egress),
        _ => None,
    }
}

/// The `wgo:key=value` keys of a dump's comments.
pub mod keys {
    /// Prefix of every wgo comment line.
    pub(crate) const PREFIX: &str = "wgo:";
    // Section header.
    pub const NODE: &str = "node";
    pub(crate) const CGROUP: &str = "cgroup";
    pub(crate) const SNAPLEN: &str = "snaplen";
    pub(crate) const WALL_MINUS_MONO_NS: &str = "wall_minus_mono_ns";
    pub(crate) const VERSION: &str = "version";
    pub(crate) const TRIGGER_ID: &str = "trigger_id";
    pub const TRIGGER_HEARD_NS: &str = "trigger_heard_ns";
    pub(crate) const TRIGGER_SENT_NS: &str = "trigger_sent_ns";
    /// Why the trigger was sent (one line).
    pub const TRIGGER_REASON: &str = "trigger_reason";
    // Interface statistics.
    pub(crate) const DROPS_PER_CPU: &str = "drops_per_cpu";
    pub(crate) const KERNEL_DROPS: &str = "kernel_drops";
    pub(crate) const EVICTED_BY_AGE: &str = "evicted_by_age";
    pub const EVICTED_BY_SIZE: &str = "evicted_by_size";
}

/// Every `wgo:key=value` line of a block's comments.
pub fn wgo_comments<'a>(opts: &pcapng::OptIter<'a>) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
    opts.comment_lines().filter_map(|l| l.strip_prefix(keys::PREFIX)?.split_once('='))
}

/// `key=value` lines with the wgo prefix, as one comment.
fn wgo_comment<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) -> String {
    // One line per key: a value's control characters (a reason from the wire) become spaces.
    let lines: Vec<String> =
        pairs.into_iter().map(|(k, v)| format!("{}{k}={}", keys::PREFIX, v.replace(|c: char| c.is_control(), " "))).collect();
    lines.join("\n")
}
