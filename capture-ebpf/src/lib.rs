//! The record layout shared by wgo's eBPF programs and its userspace agent.
//!
//! Everything on the wire between kernel and userspace is `#[repr(C)]` with plain
//! integer fields: no `bool`, `Option` or enums, so both sides agree on every byte.
//! The `size_of` asserts below fail the build on either side if the layout drifts.
//! It uses nothing but `core` (and, with `user`, aya's `Pod`); both sides use it.
#![no_std]

/// Largest number of packet bytes (IP header + L4 header + payload) one record carries.
pub const MAX_CAPTURE: usize = 512;
/// Largest snaplen (L4 payload bytes) the agent accepts; headers come on top of it.
pub const MAX_SNAPLEN: u32 = 256;
/// Snaplen used when the user gives none.
pub const DEFAULT_SNAPLEN: u32 = 64;
/// Largest IPv4 (60) or IPv6 (40) header plus the largest TCP header (60).
pub const MAX_HEADERS: u32 = 120;

/// What a record describes. Numbers are stable: they are stored in dumps.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Packet = 1,
    /// A packet of the recorded cgroup that the kernel dropped (`skb:kfree_skb`), with its reason.
    Drop = 2,
}

/// Which way a packet went, seen from the recorded node's sockets.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Ingress = 1,
    Egress = 2,
}

impl Direction {
    pub const fn from_u32(v: u32) -> Option<Direction> {
        match v {
            1 => Some(Direction::Ingress),
            2 => Some(Direction::Egress),
            _ => None,
        }
    }
}

/// Fixed part of every record; `cap_len` packet bytes follow it in the ring map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, ns.
    pub ktime_ns: u64,
    /// Per-CPU sequence number, starting at 0, one per packet seen (recorded or dropped).
    pub seq: u64,
    /// [`EventKind`] as u32.
    pub kind: u32,
    /// CPU that ran the hook.
    pub cpu: u32,
    /// [`Direction`] as u32.
    pub direction: u32,
    /// Length of the packet from its IP header on (`skb->len`).
    pub orig_len: u32,
    /// Bytes of packet that follow this header.
    pub cap_len: u32,
    /// 4 or 6.
    pub ip_version: u32,
    /// For drops: the kernel's `enum skb_drop_reason` value (its names come from the
    /// kernel's BTF: the numbers differ between kernels). 0 for packets.
    pub reason: u32,
    pub pad: u32,
}

/// What the programs copy into the ring map: header plus the packet bytes.
/// Only the first `header.cap_len` bytes of `data` are sent to userspace.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PacketRecord {
    pub header: RecordHeader,
    pub data: [u8; MAX_CAPTURE],
}

/// Read-only settings the agent writes into the program before loading it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureConfig {
    /// L4 payload bytes to copy after the headers.
    pub snaplen: u32,
    /// Wake the agent when a ring's fill crosses this many bytes; below it the programs
    /// never wake the agent, which drains on a timer.
    pub wakeup_bytes: u32,
    /// Capacity of each CPU's ring, bytes: a power of two, at most [`MAX_RING_BYTES`].
    pub ring_bytes: u32,
}

/// Largest per-CPU ring. Each CPU's ring lives in one value of an mmappable array map,
/// whose size is fixed when the program is built.
pub const MAX_RING_BYTES: u32 = 2 << 20;
/// A CPU's ring area: the ring plus room for its last record to run past the end, so
/// that a record is never split.
pub const RING_AREA_BYTES: usize = MAX_RING_BYTES as usize + 4096;
/// Every record in a ring starts with a frame, written last, when the record is complete:
/// a u64 holding the record's length in bytes (frame included, a multiple of
/// [`RECORD_ALIGN`]) in its high half, and the low 32 bits of the record's ring position
/// divided by 8 in its low half. The position tells a fresh frame from stale bytes of an
/// earlier lap around the ring, so the reader never has to clear what it read.
pub const FRAME_SIZE: usize = 8;

/// The frame of a complete record at ring position `pos` (see [`FRAME_SIZE`]).
#[inline(always)]
pub const fn frame(pos: u64, len: u64) -> u64 {
    len << 32 | (pos >> 3) as u32 as u64
}
pub const RECORD_ALIGN: usize = 8;
/// Largest framed record.
pub const MAX_RECORD: usize = FRAME_SIZE + RECORD_HEADER_SIZE + MAX_CAPTURE;

/// One CPU's ring bytes.
#[repr(C)]
pub struct RingArea {
    pub bytes: [u8; RING_AREA_BYTES],
}

/// One CPU's ring positions and counters, shared with userspace through an mmapped
/// array map. Producer and consumer fields sit on separate cache lines.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingState {
    /// Bytes ever reserved on this CPU (the producer's position).
    pub head: u64,
    /// Next per-CPU sequence number: one per packet seen, recorded or dropped.
    pub seq: u64,
    /// Records the ring had no room for.
    pub drops: u64,
    pub producer_pad: [u64; 5],
    /// Bytes ever consumed (written by userspace only). Records between tail and head are
    /// reserved; each is complete once its frame matches its position.
    pub tail: u64,
    pub consumer_pad: [u64; 7],
}

/// A process of the watched cgroup that a fatal signal is about to end: a crash (a
/// core-dumping signal with its default action) or a SIGKILL that something sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalEvent {
    /// `bpf_ktime_get_ns()`.
    pub ktime_ns: u64,
    /// Process (thread group) and thread ids, as the host sees them.
    pub tgid: u32,
    pub tid: u32,
    pub sig: u32,
    /// For SIGKILL: the process that sent it ([`SENDER_UNKNOWN`] otherwise).
    pub sender_tgid: u32,
    /// The dying thread's name, NUL-padded.
    pub comm: [u8; 16],
    /// [`SIGNAL_FROM_KERNEL`] and other bits.
    pub flags: u32,
    pub pad: u32,
    /// For SIGKILL: the sending thread's name, NUL-padded.
    pub sender_comm: [u8; 16],
}

/// What the signal programs remember of a SIGKILL between its sending and its delivery.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KillSent {
    pub sender_tgid: u32,
    pub flags: u32,
    pub sender_comm: [u8; 16],
}

/// The kernel itself sent the SIGKILL (`SEND_SIG_PRIV`: the OOM killer, above all), not a process's kill(2).
pub const SIGNAL_FROM_KERNEL: u32 = 1;

pub const SENDER_UNKNOWN: u32 = u32::MAX;

/// Which cgroup the signal programs watch: the application's, and its descendants.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchConfig {
    /// cgroup v2 id (the directory's inode number); 0 watches nothing.
    pub cgroup_id: u64,
    /// Its depth below the cgroup2 root (the root is 0).
    pub level: u32,
    pub pad: u32,
}

/// What the drop program needs to know: whose drops to record, and where the fields it
/// reads lie in this kernel's structures (byte offsets, from the kernel's BTF).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropConfig {
    /// The recorded cgroup (v2 id), at depth `level`; 0 records no drops.
    pub cgroup_id: u64,
    pub level: u32,
    pub pad0: u32,
    /// `sk_buff`: `head`, `network_header`, `tail`, `sk`, `dev`.
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_tail: u32,
    pub skb_sk: u32,
    pub skb_dev: u32,
    /// `sock`: `sk_cgrp_data.cgroup`, `__sk_common.skc_num` (the local port).
    pub sk_cgroup: u32,
    pub sk_num: u32,
    /// `cgroup`: `level`, `ancestors`, `kn`; `kernfs_node`: `id`.
    pub cgroup_level: u32,
    pub cgroup_ancestors: u32,
    pub cgroup_kn: u32,
    pub kn_id: u32,
    /// `net_device`: `nd_net.net`; `net`: `ns.inum`.
    pub dev_net: u32,
    pub net_inum: u32,
    /// This kernel's numbers for `NOT_SPECIFIED` and `NO_SOCKET`: ICMP "drops" with these
    /// are the stack's own frees (an echo reply's original once raw sockets took their
    /// clones), not losses; u32::MAX where the kernel has no such reason.
    pub icmp_quiet: [u32; 2],
    pub pad: u32,
}

/// Bytes of the ring buffer the signal programs write to.
pub const SIGNAL_RING_BYTES: u32 = 64 << 10;

/// Network namespaces followed at once for drops no socket claims (the distinct namespaces
/// of the recorded cgroup's processes).
pub const MAX_NETNS: u32 = 256;

pub const SIGNAL_EVENT_SIZE: usize = 64;
const _: () = assert!(core::mem::size_of::<KillSent>() == 24);
const _: () = assert!(core::mem::size_of::<SignalEvent>() == SIGNAL_EVENT_SIZE);
const _: () = assert!(core::mem::size_of::<WatchConfig>() == 16);
const _: () = assert!(core::mem::size_of::<DropConfig>() == 80);

pub const RECORD_HEADER_SIZE: usize = 48;
const _: () = assert!(core::mem::size_of::<RecordHeader>() == RECORD_HEADER_SIZE);
const _: () = assert!(core::mem::size_of::<PacketRecord>() == RECORD_HEADER_SIZE + MAX_CAPTURE);
const _: () = assert!(core::mem::size_of::<CaptureConfig>() == 12);
const _: () = assert!(core::mem::size_of::<RingState>() == 128);
const _: () = assert!(core::mem::size_of::<RingArea>() == RING_AREA_BYTES);
const _: () = assert!(RING_AREA_BYTES >= MAX_RING_BYTES as usize + MAX_RECORD);
const _: () = assert!(MAX_RING_BYTES.is_power_of_two());
const _: () = assert!((MAX_HEADERS + MAX_SNAPLEN) as usize <= MAX_CAPTURE);
const _: () = assert!(RECORD_HEADER_SIZE.is_multiple_of(RECORD_ALIGN) && FRAME_SIZE.is_multiple_of(RECORD_ALIGN));

/// Names of the maps and programs, shared so a rename breaks the build, not the loader.
pub mod names {
    pub const RING_AREAS: &str = "RING_AREAS";
    pub const RING_STATE: &str = "RING_STATE";
    pub const WAKE: &str = "WAKE";
    pub const CONFIG: &str = "CONFIG";
    pub const EXCLUDED_PORTS: &str = "EXCLUDED_PORTS";
    pub const WATCH_CONFIG: &str = "WATCH_CONFIG";
    pub const KILLS: &str = "KILLS";
    pub const SIGNALS: &str = "SIGNALS";
    pub const DROP_CONFIG: &str = "DROP_CONFIG";
    pub const NETNS: &str = "NETNS";
    pub const KFREE_SKB: &str = "wgo_kfree_skb";
    pub const TP_KFREE_SKB: &str = "kfree_skb";
    /// Raw tracepoints: programs and the kernel tracepoints they attach to.
    pub const SIGNAL_DELIVER: &str = "wgo_signal_deliver";
    pub const SIGNAL_GENERATE: &str = "wgo_signal_generate";
    pub const TP_SIGNAL_DELIVER: &str = "signal_deliver";
    pub const TP_SIGNAL_GENERATE: &str = "signal_generate";
    pub const INGRESS: &str = "wgo_ingress";
    pub const EGRESS: &str = "wgo_egress";
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers and byte arrays, no padding, any bit pattern valid.
    unsafe impl aya::Pod for super::RecordHeader {}
    // SAFETY: as above (the size asserts below check there is no padding).
    unsafe impl aya::Pod for super::CaptureConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RingState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::WatchConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DropConfig {}
}

impl SignalEvent {
    /// Reads an event as the kernel wrote it (native endianness).
    pub fn from_bytes(b: &[u8]) -> Option<SignalEvent> {
        if b.len() < SIGNAL_EVENT_SIZE {
            return None;
        }
        let u32_at = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let mut comm = [0u8; 16];
        comm.copy_from_slice(&b[24..40]);
        let mut sender_comm = [0u8; 16];
        sender_comm.copy_from_slice(&b[48..64]);
        Some(SignalEvent {
            ktime_ns: u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            tgid: u32_at(8),
            tid: u32_at(12),
            sig: u32_at(16),
            sender_tgid: u32_at(20),
            comm,
            flags: u32_at(40),
            pad: 0,
            sender_comm,
        })
    }
}

impl RecordHeader {
    /// Reads a header from the start of a record as the kernel wrote it (native endianness).
    pub fn from_bytes(b: &[u8]) -> Option<RecordHeader> {
        if b.len() < RECORD_HEADER_SIZE {
            return None;
        }
        let u64_at = |o: usize| u64::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3], b[o + 4], b[o + 5], b[o + 6], b[o + 7]]);
        let u32_at = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        Some(RecordHeader {
            ktime_ns: u64_at(0),
            seq: u64_at(8),
            kind: u32_at(16),
            cpu: u32_at(20),
            direction: u32_at(24),
            orig_len: u32_at(28),
            cap_len: u32_at(32),
            ip_version: u32_at(36),
            reason: u32_at(40),
            pad: 0,
        })
    }

    /// The header's bytes as the kernel writes them.
    pub fn to_bytes(&self) -> [u8; RECORD_HEADER_SIZE] {
        let mut b = [0u8; RECORD_HEADER_SIZE];
        b[0..8].copy_from_slice(&self.ktime_ns.to_ne_bytes());
        b[8..16].copy_from_slice(&self.seq.to_ne_bytes());
        b[16..20].copy_from_slice(&self.kind.to_ne_bytes());
        b[20..24].copy_from_slice(&self.cpu.to_ne_bytes());
        b[24..28].copy_from_slice(&self.direction.to_ne_bytes());
        b[28..32].copy_from_slice(&self.orig_len.to_ne_bytes());
        b[32..36].copy_from_slice(&self.cap_len.to_ne_bytes());
        b[36..40].copy_from_slice(&self.ip_version.to_ne_bytes());
        b[40..44].copy_from_slice(&self.reason.to_ne_bytes());
        b
    }
}
