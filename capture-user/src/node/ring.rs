//! The agent's flight-recorder ring: the last seconds of records, bounded in bytes.
//!
//! Records are packed back to back into fixed-size chunks. The byte bound counts
//! allocated chunk capacity, so memory never exceeds it whatever the flood. Eviction
//! is per record (by age) and per chunk (by bytes), and every evicted record is counted.

use std::collections::VecDeque;

use capture_ebpf::{RECORD_HEADER_SIZE, RecordHeader};

/// Bytes a stored record takes besides its packet bytes: length, wall time, kernel header.
const ENTRY_OVERHEAD: usize = 4 + 8 + RECORD_HEADER_SIZE;
/// Smallest ring accepted: a few chunks of the smallest size.
pub const MIN_RING_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RingError {
    #[error("ring size {0} bytes is too small (minimum {MIN_RING_BYTES})")]
    TooSmall(usize),
    #[error("ring time window must be positive")]
    ZeroWindow,
}

pub use crate::dump::Record;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Records held now.
    pub records: u64,
    /// Records pushed since the start.
    pub pushed: u64,
    /// Records evicted because they were older than the window.
    pub evicted_by_age: u64,
    /// Records evicted to stay within the byte bound.
    pub evicted_by_size: u64,
    /// Bytes of chunk capacity allocated now.
    pub allocated_bytes: usize,
}

struct Chunk {
    buf: Vec<u8>,
    /// Offset of the oldest live record.
    start: usize,
    records: u64,
}

pub struct Ring {
    chunks: VecDeque<Chunk>,
    /// One emptied chunk kept for reuse, so steady state allocates nothing.
    spare: Option<Vec<u8>>,
    chunk_size: usize,
    max_chunks: usize,
    window_ns: u64,
    stats: RingStats,
}

impl Ring {
    /// A ring holding at most `max_bytes` of records, none older than `window_ns`
    /// before the newest one.
    pub fn new(max_bytes: usize, window_ns: u64) -> Result<Ring, RingError> {
        if max_bytes < MIN_RING_BYTES {
            return Err(RingError::TooSmall(max_bytes));
        }
        if window_ns == 0 {
            return Err(RingError::ZeroWindow);
        }
        // 16+ chunks so that evicting one by size loses at most 1/16 of the ring.
        let chunk_size = (max_bytes / 16).clamp(4096, 4 << 20);
        Ok(Ring {
            chunks: VecDeque::new(),
            spare: None,
            chunk_size,
            max_chunks: max_bytes / chunk_size,
            window_ns,
            stats: RingStats::default(),
        })
    }

    pub fn stats(&self) -> RingStats {
        let mut s = self.stats;
        s.allocated_bytes = (self.chunks.len() + usize::from(self.spare.is_some())) * self.chunk_size;
        s
    }

    /// Appends a record. `data` longer than what fits a chunk is cut (never happens with
    /// kernel records, which are at most a few hundred bytes).
    pub fn push(&mut self, wall_ns: u64, header: &RecordHeader, data: &[u8]) {
        let data = &data[..data.len().min(self.chunk_size - ENTRY_OVERHEAD)];
        let need = ENTRY_OVERHEAD + data.len();
        if self.chunks.back().is_none_or(|c| c.buf.len() + need > self.chunk_size) {
            self.grow();
        }
        let chunk = self.chunks.back_mut().expect("grow() left a chunk");
        chunk.buf.extend_from_slice(&(need as u32).to_le_bytes());
        chunk.buf.extend_from_slice(&wall_ns.to_le_bytes());
        let mut h = *header;
        h.cap_len = data.len() as u32;
        chunk.buf.extend_from_slice(&h.to_bytes());
        chunk.buf.extend_from_slice(data);
        chunk.records += 1;
        self.stats.records += 1;
        self.stats.pushed += 1;
        self.evict_older_than(wall_ns.saturating_sub(self.window_ns));
    }

    fn grow(&mut self) {
        if self.chunks.len() + 1 > self.max_chunks
            && let Some(old) = self.chunks.pop_front()
        {
            self.stats.evicted_by_size += old.records;
            self.stats.records -= old.records;
            self.spare = Some(old.buf);
        }
        let mut buf = self.spare.take().unwrap_or_else(|| Vec::with_capacity(self.chunk_size));
        buf.clear();
        self.chunks.push_back(Chunk { buf, start: 0, records: 0 });
    }

    /// Evicts every record whose wall time is before `cutoff_ns`, oldest first.
    pub(crate) fn evict_older_than(&mut self, cutoff_ns: u64) {
        while let Some(front) = self.chunks.front_mut() {
            while front.start < front.buf.len() {
                let rec = decode(&front.buf[front.start..]);
                if rec.wall_ns >= cutoff_ns {
                    return;
                }
                front.start += ENTRY_OVERHEAD + rec.data.len();
                front.records -= 1;
                self.stats.records -= 1;
                self.stats.evicted_by_age += 1;
            }
            if self.chunks.len() == 1 {
                let only = self.chunks.front_mut().expect("checked");
                only.buf.clear();
                only.start = 0;
                return;
            }
            let old = self.chunks.pop_front().expect("checked");
            self.spare = Some(old.buf);
        }
    }

    /// Records oldest first.
    pub fn iter(&self) -> impl Iterator<Item = Record<'_>> {
        self.chunks.iter().flat_map(|c| ChunkIter { buf: &c.buf, pos: c.start })
    }
}

struct ChunkIter<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for ChunkIter<'a> {
    type Item = Record<'a>;
    fn next(&mut self) -> Option<Record<'a>> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let rec = decode(&self.buf[self.pos..]);
        self.pos += ENTRY_OVERHEAD + rec.data.len();
        Some(rec)
    }
}

/// Decodes the entry at the start of `b`. Entries are only ever written by `push`.
fn decode(b: &[u8]) -> Record<'_> {
    let len = u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")) as usize;
    let wall_ns = u64::from_le_bytes(b[4..12].try_into().expect("8 bytes"));
    let header = RecordHeader::from_bytes(&b[12..12 + RECORD_HEADER_SIZE]).expect("header length");
    Record { wall_ns, header, data: &b[ENTRY_OVERHEAD..len] }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(seq: u64) -> RecordHeader {
        RecordHeader { ktime_ns: seq, seq, kind: 1, cpu: 0, direction: 1, orig_len: 100, cap_len: 0, ip_version: 4, reason: 0, pad: 0 }
    }

    #[test]
    fn keeps_records_in_order_with_their_bytes() {
        let mut ring = Ring::new(MIN_RING_BYTES, u64::MAX).unwrap();
        for i in 0..100u64 {
            ring.push(1000 + i, &header(i), &[i as u8; 20]);
        }
        let got: Vec<_> = ring.iter().collect();
        assert_eq!(got.len(), 100);
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.header.seq, i as u64);
            assert_eq!(r.wall_ns, 1000 + i as u64);
            assert_eq!(r.data, &[i as u8; 20]);
            assert_eq!(r.header.cap_len, 20);
        }
    }

    #[test]
    fn evicts_by_age_per_record() {
        let mut ring = Ring::new(MIN_RING_BYTES, 10).unwrap();
        for i in 0..50u64 {
            ring.push(i, &header(i), b"x");
        }
        let seqs: Vec<u64> = ring.iter().map(|r| r.header.seq).collect();
        assert_eq!(seqs, (39..50).collect::<Vec<_>>());
        let s = ring.stats();
        assert_eq!(s.evicted_by_age, 39);
        assert_eq!(s.records, 11);
        assert_eq!(s.pushed, 50);
    }

    #[test]
    fn stays_within_bytes_under_a_flood_and_counts_evictions() {
        let max = 256 * 1024;
        let mut ring = Ring::new(max, u64::MAX).unwrap();
        for i in 0..200_000u64 {
            ring.push(i, &header(i), &[0u8; 100]);
            assert!(ring.stats().allocated_bytes <= max);
        }
        let s = ring.stats();
        assert_eq!(s.records + s.evicted_by_size, 200_000);
        assert!(s.evicted_by_size > 0);
        // What is left is the newest, contiguous run.
        let seqs: Vec<u64> = ring.iter().map(|r| r.header.seq).collect();
        assert_eq!(*seqs.last().unwrap(), 199_999);
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
        assert_eq!(seqs.len() as u64, s.records);
    }

    #[test]
    fn rejects_bad_bounds() {
        assert_eq!(Ring::new(1000, 1).err(), Some(RingError::TooSmall(1000)));
        assert_eq!(Ring::new(MIN_RING_BYTES, 0).err(), Some(RingError::ZeroWindow));
    }
}
