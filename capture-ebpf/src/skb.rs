//! cgroup_skb ingress/egress hooks.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    btf_maps::{Array, ArrayOfMaps, PerCpuArray, RingBuf},
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, generated::bpf_ringbuf_query},
    macros::{btf_map, cgroup_skb},
    programs::SkBuffContext,
};
use capture_ebpf::{CaptureConfig, Direction, EventKind, MAX_CAPTURE, RECORD_HEADER_SIZE, RecordHeader};

/// Let the packet through: these programs only watch.
const PASS: i32 = 1;
/// Upper bound on CPUs; userspace shrinks it to the machine's count at load time.
const MAX_CPUS: usize = 1024;

const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86DD;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// One ring per CPU so that CPUs never contend on a ring's lock.
/// Userspace creates the inner rings and puts them in here.
#[btf_map]
static RINGS: ArrayOfMaps<RingBuf<u8, 4096>, MAX_CPUS> = ArrayOfMaps::new();

/// Next sequence number, per CPU.
#[btf_map]
static SEQ: PerCpuArray<u64, 1> = PerCpuArray::new();

/// Records the ring could not take, per CPU.
#[btf_map]
static DROPS: PerCpuArray<u64, 1> = PerCpuArray::new();

#[btf_map]
static CONFIG: Array<CaptureConfig, 1> = Array::new();

/// Local UDP/TCP ports whose packets are not recorded (non-zero entry): the agent's own
/// trigger and shipping sockets.
#[btf_map]
static EXCLUDED_PORTS: Array<u8, 65536> = Array::new();

#[cgroup_skb]
pub fn wgo_ingress(ctx: SkBuffContext) -> i32 {
    let _ = try_record(&ctx, Direction::Ingress);
    PASS
}

#[cgroup_skb]
pub fn wgo_egress(ctx: SkBuffContext) -> i32 {
    let _ = try_record(&ctx, Direction::Egress);
    PASS
}

/// Why a packet was not recorded; only `RingFull` is a loss.
enum Skip {
    NotIp,
    NotRecordedProto,
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
    let want = headers.saturating_add(cfg.snaplen).min(len);

    let cpu = unsafe { bpf_get_smp_processor_id() };
    let seq = next_seq();
    let header = RecordHeader {
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        seq,
        kind: EventKind::Packet as u32,
        cpu,
        direction: direction as u32,
        orig_len: len,
        cap_len: 0,
        ip_version,
    };
    let ring = RINGS.get(cpu).ok_or(Skip::NoRing)?;
    let ring_ptr = core::ptr::from_ref(ring).cast_mut().cast();
    // Wake the agent only when the ring is filling up; otherwise it drains on a timer.
    let flags = if unsafe { bpf_ringbuf_query(ring_ptr, BPF_RB_AVAIL_DATA) } > cfg.wakeup_bytes as u64 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    // Reservations must be constant-sized for the verifier: pick the smallest class that fits.
    let res = if want <= 128 {
        emit::<128>(ctx, ring, header, want, flags)
    } else if want <= 256 {
        emit::<256>(ctx, ring, header, want, flags)
    } else {
        emit::<MAX_CAPTURE>(ctx, ring, header, want, flags)
    };
    if res.is_err() {
        count_drop();
    }
    res
}

/// Reserves a record with room for `N` packet bytes, fills it, and submits it.
#[inline(always)]
fn emit<const N: usize>(
    ctx: &SkBuffContext,
    ring: &RingBuf<u8, 4096>,
    mut header: RecordHeader,
    want: u32,
    flags: u64,
) -> Result<(), Skip> {
    let mut entry = ring.reserve_bytes(RECORD_HEADER_SIZE + N, 0).ok_or(Skip::RingFull)?;
    let buf: &mut [u8] = &mut entry;
    let cap = load_packet(ctx, &mut buf[RECORD_HEADER_SIZE..], want as usize);
    header.cap_len = cap as u32;
    let header_bytes: &[u8; RECORD_HEADER_SIZE] = unsafe { &*core::ptr::from_ref(&header).cast() };
    buf[..RECORD_HEADER_SIZE].copy_from_slice(header_bytes);
    entry.submit(flags);
    Ok(())
}

/// Copies up to `want` bytes of the packet into `dst`; returns how many it copied.
#[inline(always)]
fn load_packet(ctx: &SkBuffContext, dst: &mut [u8], want: usize) -> usize {
    let n = want.min(dst.len());
    // The explicit bounds keep the verifier sure the length is in (0, dst.len()].
    if n == 0 || n > MAX_CAPTURE {
        return 0;
    }
    let ret = unsafe {
        aya_ebpf::helpers::generated::bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            0,
            dst.as_mut_ptr().cast(),
            n as u32,
        )
    };
    if ret == 0 { n } else { 0 }
}

/// IP version, the length of the IP plus L4 headers, where L4 starts, and whether it
/// has ports (UDP/TCP), for packets we record.
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
            // Extension headers are not walked: their packets are recorded with IPv6's 40 bytes
            // counted as the header and the rest as payload.
            let next = bytes_at(ctx, 6)?[0];
            (6, 40, next)
        }
        _ => return Err(Skip::NotIp),
    };
    let l4 = match l4proto {
        IPPROTO_TCP => {
            let off = bytes_at(ctx, l3 as usize + 12)?[0];
            ((off >> 4) as u32) * 4
        }
        IPPROTO_UDP | IPPROTO_ICMP | IPPROTO_ICMPV6 => 8,
        _ => return Err(Skip::NotRecordedProto),
    };
    Ok((version, (l3 + l4).min(len), l3, matches!(l4proto, IPPROTO_TCP | IPPROTO_UDP)))
}

/// Two packet bytes: read directly when they are in the linear area (no helper call),
/// through bpf_skb_load_bytes otherwise. Two, not one: with a one-byte window LLVM
/// folds `p + 1 <= end` into `p < end`, which the verifier cannot use as a bound.
#[inline(always)]
fn bytes_at(ctx: &SkBuffContext, off: usize) -> Result<[u8; 2], Skip> {
    let skb = ctx.skb.skb;
    let (data, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    if data + off + 2 <= end {
        let p = (data + off) as *const u8;
        Ok(unsafe { [*p, *p.add(1)] })
    } else {
        ctx.load(off).map_err(|_| Skip::Truncated)
    }
}

#[inline(always)]
fn next_seq() -> u64 {
    match SEQ.get_ptr_mut(0) {
        // Atomic: an ingress softirq can interrupt an egress hook on the same CPU.
        // SeqCst, not Relaxed: LLVM's BPF backend lowers a relaxed add to a non-fetching
        // `lock +=` even when the old value is used, which made every seq 1.
        Some(p) => unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(p, 1) },
        None => 0,
    }
}

#[inline(always)]
fn count_drop() {
    if let Some(p) = DROPS.get_ptr_mut(0) {
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(p, 1) };
    }
}
