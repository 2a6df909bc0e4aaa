//! cgroup_skb ingress/egress hooks.

use aya_ebpf::{
    btf_maps::Array,
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{btf_map, cgroup_skb},
    programs::SkBuffContext,
};
use aya_log_ebpf::debug;
use capture_ebpf::{CaptureConfig, Direction, EventKind, FRAME_SIZE, MAX_CAPTURE, RECORD_HEADER_SIZE, RecordHeader};

use crate::ring::Ring;

/// Let the packet through: these programs only watch.
const PASS: i32 = 1;

const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86DD;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
/// How far the IPv6 extension header walk goes: real chains are one or two headers long.
const MAX_IPV6_EXTENSIONS: usize = 4;
const MAX_IPV6_HEADERS: u32 = 128;

#[btf_map]
pub(crate) static CONFIG: Array<CaptureConfig, 1> = Array::new();

/// Local UDP/TCP ports whose packets are not recorded (non-zero entry): the agent's own
/// trigger and shipping sockets.
#[btf_map]
pub(crate) static EXCLUDED_PORTS: Array<u8, 65536> = Array::new();

#[cgroup_skb]
pub fn wgo_ingress(ctx: SkBuffContext) -> i32 {
    if let Err(Skip::Truncated) = try_record(&ctx, Direction::Ingress) {
        unparsed(&ctx);
    }
    PASS
}

#[cgroup_skb]
pub fn wgo_egress(ctx: SkBuffContext) -> i32 {
    if let Err(Skip::Truncated) = try_record(&ctx, Direction::Egress) {
        unparsed(&ctx);
    }
    PASS
}

/// Logs a packet whose headers end before they say (rare: the stack checked them first).
/// Out of line, so that the common path stays as it was.
#[inline(never)]
fn unparsed(ctx: &SkBuffContext) {
    debug!(ctx, "a packet of {} bytes could not be parsed (its headers end early): not recorded", ctx.len());
}

/// Why a packet was not recorded; only `RingFull` is a loss.
enum Skip {
    NotIp,
    Truncated,
    NoRing,
    RingFull,
    Excluded,
}

#[inline(always)]
fn try_record(ctx: &SkBuffContext, direction: Direction) -> Result<(), Skip> {
    let len = ctx.len();
    let (ip_version, headers, l3, ports) = header_len(ctx, len)?;
    if ports {
        // The local port: source on the way out, destination on the way in.
        let at = l3 as usize + if matches!(direction, Direction::Egress) { 0 } else { 2 };
        let p = bytes_at(ctx, at)?;
        if EXCLUDED_PORTS.get(u16::from_be_bytes(p) as u32).is_some_and(|x| *x != 0) {
            return Err(Skip::Excluded);
        }
    }
    let cfg = CONFIG.get(0).ok_or(Skip::NoRing)?;
    let want = headers.saturating_add(cfg.snaplen).min(len).min(MAX_CAPTURE as u32);

    // SAFETY: bpf_get_smp_processor_id has no preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let ring = Ring::of_cpu(cpu).ok_or(Skip::NoRing)?;
    let seq = ring.next_seq();
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let ktime_ns = unsafe { bpf_ktime_get_ns() };
    let Some(slot) = ring.reserve(cfg.ring_bytes, RECORD_HEADER_SIZE as u32 + want) else {
        // A full ring is counted, never logged (it is the common case under a flood); a
        // record that can never fit is logged.
        if FRAME_SIZE as u32 + RECORD_HEADER_SIZE as u32 + want > cfg.ring_bytes {
            too_large(ctx, want, cfg.ring_bytes);
        }
        return Err(Skip::RingFull);
    };
    let body = slot.body();
    // SAFETY: the slot's body holds RECORD_HEADER_SIZE + want bytes.
    let cap = load_packet(ctx, unsafe { body.add(RECORD_HEADER_SIZE) }, want as usize);
    let header = RecordHeader {
        ktime_ns,
        seq,
        kind: EventKind::Packet as u32,
        cpu,
        direction: direction as u32,
        orig_len: len,
        cap_len: cap as u32,
        ip_version,
        reason: 0,
        pad: 0,
    };
    // SAFETY: the slot's body starts with room for the header.
    unsafe { core::ptr::write_unaligned(body.cast::<RecordHeader>(), header) };
    slot.commit(cfg.wakeup_bytes, cpu);
    Ok(())
}

#[inline(never)]
fn too_large(ctx: &SkBuffContext, want: u32, ring_bytes: u32) {
    debug!(ctx, "a record of {} packet bytes is too large for the kernel ring of {} bytes: not recorded", want, ring_bytes);
}

/// Copies `want` bytes of the packet to `dst`; returns how many it copied (0 if it failed:
/// the record then carries its header alone).
#[inline(always)]
fn load_packet(ctx: &SkBuffContext, dst: *mut u8, want: usize) -> usize {
    // The explicit bounds keep the verifier sure the length is in (0, MAX_CAPTURE].
    if want == 0 || want > MAX_CAPTURE {
        return 0;
    }
    // SAFETY: `dst` has room for `want` bytes (the caller's slot); the helper checks the packet side.
    let ret = unsafe { aya_ebpf::helpers::generated::bpf_skb_load_bytes(ctx.skb.skb.cast(), 0, dst.cast(), want as u32) };
    if ret == 0 { want } else { 0 }
}

/// IP version, the length of the IP plus L4 headers, where L4 starts, and whether it
/// has ports (UDP/TCP). Every IP protocol is recorded: those without a header parsed
/// here (VRRP, OSPF, SCTP, a raw socket's own) count the IP header alone as headers, so
/// their record is the IP header and the first snaplen bytes after it.
#[inline(always)]
fn header_len(ctx: &SkBuffContext, len: u32) -> Result<(u32, u32, u32, bool), Skip> {
    // __sk_buff.protocol holds a big-endian u16 in a u32.
    let proto = u16::from_be(ctx.skb.protocol() as u16) as u32;
    let (version, l3, l4proto) = match proto {
        ETH_P_IP => {
            let vihl = bytes_at(ctx, 0)?[0];
            let l4proto = bytes_at(ctx, 8)?[1];
            (4, ((vihl & 0x0f) as u32) * 4, l4proto)
        }
        ETH_P_IPV6 => {
            let (l3, next) = ipv6_last_header(ctx, bytes_at(ctx, 6)?[0]);
            (6, l3, next)
        }
        _ => return Err(Skip::NotIp),
    };
    let l4 = match l4proto {
        IPPROTO_TCP => {
            let off = bytes_at(ctx, l3 as usize + 12)?[0];
            ((off >> 4) as u32) * 4
        }
        IPPROTO_UDP | IPPROTO_ICMP | IPPROTO_ICMPV6 => 8,
        _ => 0,
    };
    Ok((version, (l3 + l4).min(len), l3, matches!(l4proto, IPPROTO_TCP | IPPROTO_UDP)))
}

/// Walks IPv6's extension headers (at most [`MAX_IPV6_EXTENSIONS`], within the first
/// [`MAX_IPV6_HEADERS`] bytes): where the last header's payload starts, and its protocol.
/// A longer chain, one cut short, ESP (opaque) or No Next Header ends the walk where it is:
/// the packet is still recorded.
#[inline(always)]
fn ipv6_last_header(ctx: &SkBuffContext, first: u8) -> (u32, u8) {
    let (mut off, mut next) = (40u32, first);
    for _ in 0..MAX_IPV6_EXTENSIONS {
        // Hop-by-hop, routing, fragment, AH, destination options, mobility, HIP, shim6.
        if !matches!(next, 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140) {
            break;
        }
        let Ok(h) = bytes_at(ctx, off as usize) else { break };
        let len = match next {
            44 => 8,
            // AH counts 4-byte units after the first 8; the others 8-byte units after the first 8.
            51 => (h[1] as u32 + 2) * 4,
            _ => (h[1] as u32 + 1) * 8,
        };
        if off + len > MAX_IPV6_HEADERS {
            break;
        }
        next = h[0];
        off += len;
    }
    (off, next)
}

/// Two packet bytes: read directly when they are in the linear area (no helper call),
/// through bpf_skb_load_bytes otherwise. Two, not one: with a one-byte window LLVM
/// folds `p + 1 <= end` into `p < end`, which the verifier cannot use as a bound.
#[inline(always)]
fn bytes_at(ctx: &SkBuffContext, off: usize) -> Result<[u8; 2], Skip> {
    let skb = ctx.skb.skb;
    // SAFETY: `skb` is the context's __sk_buff, valid for the program's run.
    let (data, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    if data + off + 2 <= end {
        let p = (data + off) as *const u8;
        // SAFETY: `data + off + 2 <= end`: both bytes are in the packet's linear area.
        Ok(unsafe { [*p, *p.add(1)] })
    } else {
        ctx.load(off).map_err(|_| Skip::Truncated)
    }
}
