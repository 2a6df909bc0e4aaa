//! The per-CPU flight-recorder rings: byte rings in mmappable array maps, one per CPU.
//!
//! Not BPF ring buffers: measured here, `bpf_ringbuf_reserve` + `submit` cost about
//! 200 ns per record (a spinlock taken with interrupts off, and more atomics). A CPU's
//! own ring needs no lock: only that CPU produces into it, and the only concurrency is
//! an ingress softirq interrupting an egress hook on the same CPU, which a
//! compare-and-swap on the head resolves. Userspace reads the rings through mmap.

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd, atomic_xchg};

use aya_ebpf::{
    btf_maps::{Array, RingBuf},
    macros::btf_map,
};
use capture_ebpf::{FRAME_SIZE, MAX_RING_BYTES, RECORD_ALIGN, RingArea, RingState, frame};

/// Upper bound on CPUs; userspace shrinks the maps to the machine's count at load time.
const MAX_CPUS: usize = 1024;
const BPF_F_MMAPABLE: usize = 1 << 10;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
/// Keeps ring offsets inside the area and 8-byte aligned, as the verifier must see.
const OFFSET_MASK: u64 = (MAX_RING_BYTES as u64 - 1) & !(RECORD_ALIGN as u64 - 1);
/// Tries at reserving before a record counts as dropped (each failure means a nested
/// hook took the space first).
const RESERVE_TRIES: usize = 4;

#[btf_map]
static RING_AREAS: Array<RingArea, MAX_CPUS, BPF_F_MMAPABLE> = Array::new();

#[btf_map]
static RING_STATE: Array<RingState, MAX_CPUS, BPF_F_MMAPABLE> = Array::new();

/// Wakeups for the agent, one small record when a ring's fill crosses the threshold.
#[btf_map]
static WAKE: RingBuf<u32, 4096> = RingBuf::new();

/// This CPU's ring.
pub struct Ring {
    state: *mut RingState,
    area: *mut u8,
}

/// Space reserved in a ring for one record; [`Slot::commit`] hands it to userspace.
pub struct Slot {
    record: *mut u8,
    pos: u64,
    len: u64,
    fill_after: u64,
}

impl Ring {
    #[inline(always)]
    pub fn of_cpu(cpu: u32) -> Option<Ring> {
        let state = RING_STATE.get_ptr_mut(cpu)?;
        let area = RING_AREAS.get_ptr_mut(cpu)?.cast::<u8>();
        Some(Ring { state, area })
    }

    /// The next per-CPU sequence number.
    #[inline(always)]
    pub fn next_seq(&self) -> u64 {
        // SeqCst, not Relaxed: LLVM's BPF backend lowers a relaxed add to a non-fetching
        // `lock +=` even when the old value is used, which made every seq 1.
        // SAFETY: `state` is this CPU's value in RING_STATE, valid for the program's run.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*self.state).seq, 1) }
    }

    /// Reserves `body` bytes (plus the frame) in a ring of `capacity` bytes, or counts a drop.
    #[inline(always)]
    pub fn reserve(&self, capacity: u32, body: u32) -> Option<Slot> {
        let len = (FRAME_SIZE as u64 + body as u64 + RECORD_ALIGN as u64 - 1) & !(RECORD_ALIGN as u64 - 1);
        let capacity = capacity as u64;
        // SAFETY: `state` is this CPU's value in RING_STATE; only the fields' addresses are taken.
        let head_ptr = unsafe { &raw mut (*self.state).head };
        // SAFETY: as above.
        let tail_ptr = unsafe { &raw const (*self.state).tail };
        for _ in 0..RESERVE_TRIES {
            // SAFETY: aligned u64 fields of the map value; volatile because userspace (tail) and
            // a nested hook (head) change them behind our back.
            let head = unsafe { core::ptr::read_volatile(head_ptr) };
            // SAFETY: as above.
            let tail = unsafe { core::ptr::read_volatile(tail_ptr) };
            let fill_after = head.wrapping_sub(tail) + len;
            if fill_after > capacity {
                break;
            }
            // SAFETY: `head_ptr` is an aligned u64 in the map value, changed only atomically.
            let (_, won) =
                unsafe { atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(head_ptr, head, head + len) };
            if won {
                let off = head & (capacity - 1) & OFFSET_MASK;
                // SAFETY: `off` is masked below MAX_RING_BYTES, and the area has room for a
                // whole record past that (RING_AREA_BYTES), so the record stays inside it.
                let record = unsafe { self.area.add(off as usize) };
                return Some(Slot { record, pos: head, len, fill_after });
            }
        }
        // SAFETY: `state` is this CPU's value in RING_STATE, valid for the program's run.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*self.state).drops, 1) };
        None
    }
}

impl Slot {
    /// Where the record's body (after the frame) goes.
    #[inline(always)]
    pub fn body(&self) -> *mut u8 {
        // SAFETY: the slot is at least FRAME_SIZE bytes long, inside the ring area.
        unsafe { self.record.add(FRAME_SIZE) }
    }

    /// Publishes the record by writing its frame last; wakes the agent if this record
    /// took the ring's fill across `wakeup_bytes`.
    #[inline(always)]
    pub fn commit(self, wakeup_bytes: u32, cpu: u32) {
        // An atomic exchange orders every store to the body before the frame.
        // SAFETY: the record starts 8-byte aligned (OFFSET_MASK) with its frame, inside the area.
        unsafe { atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(self.record.cast::<u64>(), frame(self.pos, self.len)) };
        let threshold = wakeup_bytes as u64;
        if self.fill_after >= threshold && self.fill_after - self.len < threshold {
            let _ = WAKE.output(cpu, BPF_RB_FORCE_WAKEUP);
        }
    }
}
