//! The raw tracepoint `skb:kfree_skb`: the kernel dropped a packet, and says why. The
//! recorded cgroup's drops go into the same per-CPU rings as its packets, with the reason.
//! Runs only on drops, never on the packet path.
//!
//! Whose drop it is: the socket's cgroup when a socket holds the packet (a send, or a
//! receive the socket could not take); else the network namespace the packet arrived in
//! (a firewall drop, a port nobody listens on), when it is one of those the agent follows
//! in [`NETNS`]: the namespaces of the cgroup's processes, as they come and go. Structure fields are read at offsets the
//! agent found in the kernel's BTF ([`DropConfig`]), so nothing here depends on one kernel's layout.

use aya_ebpf::{
    btf_maps::{Array, HashMap},
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_buf},
    macros::{btf_map, raw_tracepoint},
    programs::RawTracePointContext,
};
use aya_log_ebpf::debug;
use capture_ebpf::{
    CaptureConfig, Direction, DropConfig, EventKind, MAX_CAPTURE, MAX_HEADERS, MAX_NETNS, RECORD_HEADER_SIZE, RecordHeader,
};

use crate::ring::Ring;
use crate::skb::{CONFIG, EXCLUDED_PORTS};

/// `SKB_NOT_DROPPED_YET` and `SKB_CONSUMED`: frees, not drops.
const FIRST_DROP_REASON: u32 = 2;
/// `network_header` when unset.
const NO_HEADER: u16 = 0xffff;
/// cgroup levels walked at most (a kernel bound: `ancestors[]` has `level + 1` entries).
const MAX_LEVEL: u32 = 64;

#[btf_map]
static DROP_CONFIG: Array<DropConfig, 1> = Array::new();

/// Network namespaces (inode numbers) whose socketless drops are the recording's; the
/// agent keeps it to those of the cgroup's processes.
#[btf_map]
static NETNS: HashMap<u32, u8, { MAX_NETNS as usize }> = HashMap::new();

/// `kfree_skb(struct sk_buff *skb, void *location, enum skb_drop_reason reason, struct sock *rx_sk)`.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn wgo_kfree_skb(ctx: RawTracePointContext) -> i32 {
    // Negative: a kernel read failed (errno), most likely at an offset that does not fit
    // this kernel's structures; 0: nothing to record, or a full ring (counted).
    if let Err(e) = try_drop(&ctx)
        && e < 0
    {
        debug!(&ctx, "reading a dropped packet's kernel structures failed (error {}): a BTF offset may not fit this kernel", e);
    }
    0
}

/// A kernel value at `base + off`.
#[inline(always)]
fn read<T: Copy>(base: u64, off: u32) -> Result<T, i64> {
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly on a bad one.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.map_err(|e| e as i64)
}

#[inline(always)]
fn try_drop(ctx: &RawTracePointContext) -> Result<(), i64> {
    let cfg = DROP_CONFIG.get(0).ok_or(0)?;
    let reason = ctx.arg::<u64>(2) as u32;
    if cfg.cgroup_id == 0 || reason < FIRST_DROP_REASON {
        return Ok(());
    }
    let skb: u64 = ctx.arg(0);
    let rx_sk: u64 = ctx.arg(3);
    let sk = if rx_sk != 0 { rx_sk } else { read::<u64>(skb, cfg.skb_sk)? };

    // The IP header, and enough of it to tell the packet's kind and ports.
    let head: u64 = read(skb, cfg.skb_head)?;
    let nh: u16 = read(skb, cfg.skb_network_header)?;
    let tail: u32 = read(skb, cfg.skb_tail)?;
    if nh == NO_HEADER || tail <= nh as u32 {
        return Ok(());
    }
    let ip = head + nh as u64;
    let linear = tail - nh as u32;
    let mut hdr = [0u8; 44];
    if linear < hdr.len() as u32 {
        return Ok(());
    }
    // SAFETY: as in `read`.
    unsafe { bpf_probe_read_kernel_buf(ip as *const u8, &mut hdr) }.map_err(|e| e as i64)?;
    let (version, l3, proto, orig_len) = match hdr[0] >> 4 {
        4 => (4u32, ((hdr[0] & 0x0f) as usize) * 4, hdr[9], u16::from_be_bytes([hdr[2], hdr[3]]) as u32),
        6 => (6, 40, hdr[6], 40 + u16::from_be_bytes([hdr[4], hdr[5]]) as u32),
        _ => return Ok(()),
    };
    // Every IP protocol, as the skb programs record them (the IPv6 chain is not walked
    // here: a packet behind extension headers is recorded without its ports' check). The
    // bound holds for every protocol, as before: the port reads below rely on it.
    if l3 + 4 > hdr.len() {
        return Ok(());
    }
    // ICMP's unspecified and socketless frees are the stack's own (an echo reply's
    // original after its raw sockets took their clones), not drops anyone would call lost.
    if matches!(proto, 1 | 58) && (reason == cfg.icmp_quiet[0] || reason == cfg.icmp_quiet[1]) {
        return Ok(());
    }
    let ports = matches!(proto, 6 | 17);
    let (sport, dport) = (u16::from_be_bytes([hdr[l3], hdr[l3 + 1]]), u16::from_be_bytes([hdr[l3 + 2], hdr[l3 + 3]]));

    // Whose it is, and which way it went.
    let direction = if sk != 0 {
        if !in_cgroup(cfg, sk)? {
            return Ok(());
        }
        // A socket's own packet is a send when it leaves from the socket's port.
        let local: u16 = read(sk, cfg.sk_num)?;
        if ports && local == sport && rx_sk == 0 { Direction::Egress } else { Direction::Ingress }
    } else {
        let dev: u64 = read(skb, cfg.skb_dev)?;
        if dev == 0 {
            return Ok(());
        }
        let net: u64 = read(dev, cfg.dev_net)?;
        let inum: u32 = read(net, cfg.net_inum)?;
        // SAFETY: a u8 value read once, never held; the agent's updates replace it whole.
        if unsafe { NETNS.get(inum) }.is_none() {
            return Ok(());
        }
        Direction::Ingress
    };
    if ports {
        let local = if matches!(direction, Direction::Egress) { sport } else { dport };
        if EXCLUDED_PORTS.get(local as u32).is_some_and(|x| *x != 0) {
            return Ok(());
        }
    }

    let capture = CONFIG.get(0).ok_or(0)?;
    record(capture, ip, linear, orig_len, version, direction, reason)
}

/// Whether the socket's cgroup is the recorded one or below it.
#[inline(always)]
fn in_cgroup(cfg: &DropConfig, sk: u64) -> Result<bool, i64> {
    let cgroup: u64 = read(sk, cfg.sk_cgroup)?;
    if cgroup == 0 || cfg.level > MAX_LEVEL {
        return Ok(false);
    }
    let level: i32 = read(cgroup, cfg.cgroup_level)?;
    if level < cfg.level as i32 {
        return Ok(false);
    }
    let ancestor: u64 = read(cgroup, cfg.cgroup_ancestors + cfg.level * 8)?;
    let kn: u64 = read(ancestor, cfg.cgroup_kn)?;
    let id: u64 = read(kn, cfg.kn_id)?;
    Ok(id == cfg.cgroup_id)
}

/// Copies the dropped packet's bytes (headers and snaplen payload, from its linear part)
/// into this CPU's ring, as a drop record.
#[inline(always)]
fn record(cfg: &CaptureConfig, ip: u64, linear: u32, orig_len: u32, ip_version: u32, direction: Direction, reason: u32) -> Result<(), i64> {
    let want = (MAX_HEADERS + cfg.snaplen).min(linear).min(orig_len).min(MAX_CAPTURE as u32);
    // SAFETY: bpf_get_smp_processor_id has no preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let ring = Ring::of_cpu(cpu).ok_or(0)?;
    let seq = ring.next_seq();
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let ktime_ns = unsafe { bpf_ktime_get_ns() };
    let slot = ring.reserve(cfg.ring_bytes, RECORD_HEADER_SIZE as u32 + want).ok_or(0)?;
    let body = slot.body();
    // The explicit bounds keep the verifier sure the length is in (0, MAX_CAPTURE].
    let len = want as usize;
    let copied = if len > 0 && len <= MAX_CAPTURE {
        // SAFETY: the slot holds RECORD_HEADER_SIZE + want bytes; the source is checked by the helper.
        let dst = unsafe { core::slice::from_raw_parts_mut(body.add(RECORD_HEADER_SIZE), len) };
        // SAFETY: as above.
        if unsafe { bpf_probe_read_kernel_buf(ip as *const u8, dst) }.is_ok() { len } else { 0 }
    } else {
        0
    };
    let header = RecordHeader {
        ktime_ns,
        seq,
        kind: EventKind::Drop as u32,
        cpu,
        direction: direction as u32,
        orig_len,
        cap_len: copied as u32,
        ip_version,
        reason,
        pad: 0,
    };
    // SAFETY: the slot's body starts with room for the header.
    unsafe { core::ptr::write_unaligned(body.cast::<RecordHeader>(), header) };
    slot.commit(cfg.wakeup_bytes, cpu);
    Ok(())
}
