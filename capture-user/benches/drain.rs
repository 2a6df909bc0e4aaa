//! Drain rate: records read from a kernel-format ring area (`wgo::node::capture::read_ring`, what
//! the agent runs on the mmapped rings), sorted per drain batch and pushed into the agent
//! ring (what the recorder does), against copying the same bytes into a Vec.

use std::hint::black_box;
use std::time::Instant;

use capture_ebpf::{MAX_RING_BYTES, RING_AREA_BYTES, RecordHeader};
use wgo::node::capture::bench::{read_ring, write_test_record};
use wgo::node::ring::Ring;

const RECORDS: u64 = 1_000_000;
const RUNS: usize = 7;
/// IPv4 + UDP headers + a 64-byte snaplen.
const PACKET: usize = 92;

fn main() {
    let capacity = MAX_RING_BYTES as u64;
    let mut area = vec![0u64; RING_AREA_BYTES / 8];
    let packet = [0x45u8; PACKET];
    let mut drain_ns = Vec::new();
    let mut copy_ns = Vec::new();
    for _ in 0..RUNS {
        let mut ring = Ring::new(256 << 20, u64::MAX).expect("ring");
        let mut batch: Vec<(u64, RecordHeader, std::ops::Range<usize>)> = Vec::new();
        let mut bytes: Vec<u8> = Vec::new();
        let mut copy: Vec<u8> = Vec::with_capacity(RECORDS as usize * (40 + PACKET));
        let (mut seq, mut pos, mut tail) = (0u64, 0u64, 0u64);
        let (mut drain, mut copied) = (0u128, 0u128);
        while seq < RECORDS {
            // Fill the ring as the kernel would (not timed)...
            let lap = pos;
            while seq < RECORDS && pos - lap + 256 <= capacity {
                let h = RecordHeader {
                    ktime_ns: 1_000 + seq * 100,
                    seq,
                    kind: 1,
                    cpu: 0,
                    direction: 2,
                    orig_len: 92,
                    cap_len: 92,
                    ip_version: 4,
                    reason: 0,
                    pad: 0,
                };
                pos += write_test_record(&mut area, capacity, pos, &h, &packet);
                seq += 1;
            }
            // ...then drain it as the recorder does: read into a batch, sort by kernel time, push.
            let t = Instant::now();
            batch.clear();
            bytes.clear();
            let mut sink = |h: &RecordHeader, data: &[u8]| {
                let at = bytes.len();
                bytes.extend_from_slice(data);
                batch.push((h.ktime_ns, *h, at..bytes.len()));
            };
            // SAFETY: area is RING_AREA_BYTES of aligned memory written as the kernel writes it.
            let (t2, _) =
                unsafe { read_ring(area.as_ptr().cast(), capacity, pos, tail, &mut sink, &mut |_| {}) }.expect("well-formed ring");
            batch.sort_by_key(|(t, h, _)| (*t, h.cpu, h.seq));
            for (t, h, r) in &batch {
                ring.push(*t, h, &bytes[r.clone()]);
            }
            drain += t.elapsed().as_nanos();
            assert_eq!(t2, pos, "every record drained");
            tail = t2;
            // Baseline: copy the same header and packet bytes.
            // SAFETY: the u64 area viewed as its bytes; u8 has no alignment or validity needs.
            let raw: &[u8] = unsafe { std::slice::from_raw_parts(area.as_ptr().cast(), area.len() * 8) };
            let t = Instant::now();
            for chunk in raw.chunks_exact(144).take(batch.len()) {
                copy.extend_from_slice(black_box(&chunk[8..8 + 40 + PACKET]));
            }
            copied += t.elapsed().as_nanos();
        }
        drain_ns.push(drain as f64);
        copy_ns.push(copied as f64);
        black_box(&ring);
        black_box(&copy);
    }
    drain_ns.sort_by(f64::total_cmp);
    copy_ns.sort_by(f64::total_cmp);
    let (d, c) = (drain_ns[RUNS / 2], copy_ns[RUNS / 2]);
    println!("Drain into the agent ring, {RECORDS} records x {RUNS} runs, medians:");
    println!("  plain copy (baseline)  {:>6.1} M records/s   1.000x", RECORDS as f64 / c * 1e3);
    println!("  read + sort + push     {:>6.1} M records/s   {:.3}x", RECORDS as f64 / d * 1e3, c / d);
}
