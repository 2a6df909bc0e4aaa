//! Drain rate: kernel-format records decoded, sorted per drain batch and pushed into the
//! agent ring (what the recorder does), against copying the same bytes into a Vec.

use std::hint::black_box;
use std::time::Instant;

use capture_ebpf::{RECORD_HEADER_SIZE, RecordHeader};
use wgo::ring::Ring;

const RECORDS: usize = 1_000_000;
const RUNS: usize = 7;

fn main() {
    // Kernel-format records as they sit in a ring map: header + 92 packet bytes
    // (IPv4 + UDP + 64-byte snaplen), in a 128-byte size class.
    let mut raw = Vec::with_capacity(RECORDS * (RECORD_HEADER_SIZE + 128));
    for i in 0..RECORDS as u64 {
        let h = RecordHeader { ktime_ns: 1_000 + i * 100, seq: i, kind: 1, cpu: 0, direction: 2, orig_len: 92, cap_len: 92, ip_version: 4 };
        raw.extend_from_slice(&h.to_bytes());
        raw.extend_from_slice(&[0x45; 128]);
    }
    let stride = RECORD_HEADER_SIZE + 128;

    let mut drain_ns = Vec::new();
    let mut copy_ns = Vec::new();
    for _ in 0..RUNS {
        let mut ring = Ring::new(256 << 20, u64::MAX).expect("ring");
        // As the recorder drains: decode into a batch, sort it by kernel time, push it.
        let mut batch: Vec<(u64, RecordHeader, std::ops::Range<usize>)> = Vec::new();
        let mut bytes: Vec<u8> = Vec::new();
        let t = Instant::now();
        for chunk in raw.chunks(stride * 4096) {
            batch.clear();
            bytes.clear();
            for item in chunk.chunks_exact(stride) {
                let h = RecordHeader::from_bytes(item).expect("header");
                let end = RECORD_HEADER_SIZE + h.cap_len as usize;
                let at = bytes.len();
                bytes.extend_from_slice(&item[RECORD_HEADER_SIZE..end]);
                batch.push((h.ktime_ns, h, at..bytes.len()));
            }
            batch.sort_by_key(|(t, h, _)| (*t, h.cpu, h.seq));
            for (t, h, r) in &batch {
                ring.push(*t, h, &bytes[r.clone()]);
            }
        }
        drain_ns.push(t.elapsed().as_nanos() as f64);
        black_box(&ring);

        let mut copy: Vec<u8> = Vec::with_capacity(raw.len());
        let t = Instant::now();
        for item in raw.chunks_exact(stride) {
            copy.extend_from_slice(black_box(&item[..RECORD_HEADER_SIZE + 92]));
        }
        copy_ns.push(t.elapsed().as_nanos() as f64);
        black_box(&copy);
    }
    drain_ns.sort_by(f64::total_cmp);
    copy_ns.sort_by(f64::total_cmp);
    let (d, c) = (drain_ns[RUNS / 2], copy_ns[RUNS / 2]);
    println!("Drain into the agent ring, {RECORDS} records x {RUNS} runs, medians:");
    println!("  plain copy (baseline)  {:>6.1} M records/s   1.000x", RECORDS as f64 / c * 1e3);
    println!("  decode + sort + push   {:>6.1} M records/s   {:.3}x", RECORDS as f64 / d * 1e3, c / d);
}
