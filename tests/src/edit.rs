//! Editing a recorded dump the way a real fault would have written it: a clock step from
//! some time on, a trigger heard late. Read and rewritten through `wgo`'s own dump reader
//! and writer, so the edited file is one an agent could have shipped.

use std::path::Path;

use wgo::dump::{DumpInfo, DumpReader, DumpWriter, Item, WritePacket, keys};

/// What to change in one dump.
#[derive(Clone, Copy, Debug, Default)]
pub struct Edit {
    /// From this time on the node's clock (ns), every time reads this much more (ns).
    pub step: Option<(i64, i64)>,
    /// The trigger was heard this much later (ns).
    pub trigger_late_ns: i64,
}

/// One packet as read: (time, direction, sequence number, CPU, wire length, bytes, drop reason).
type Packet = (u64, Option<capture_ebpf::Direction>, u64, u32, u32, Vec<u8>, Option<String>);

/// Rewrites `input` into `output` with the edit; returns how many packets were moved by the step.
pub fn edit_dump(input: &Path, output: &Path, edit: Edit) -> std::io::Result<usize> {
    let mut reader = DumpReader::new(std::io::BufReader::new(std::fs::File::open(input)?));
    let mut info = DumpInfo::default();
    let mut packets: Vec<Packet> = Vec::new();
    let moved = |t: i64| edit.step.map_or(t, |(at, size)| if t >= at { t + size } else { t });
    let mut count = 0;
    while let Some(item) = reader.next_item().map_err(std::io::Error::other)? {
        match item {
            Item::Section(s) => {
                info.node = s.node.unwrap_or_default();
                info.snaplen = s.snaplen.unwrap_or(0);
                if let Some(h) = s.trigger_heard_ns {
                    info.extra.push((keys::TRIGGER_HEARD_NS, (moved(h) + edit.trigger_late_ns).to_string()));
                }
                if let Some(r) = s.trigger_reason {
                    info.extra.push((keys::TRIGGER_REASON, r));
                }
            }
            Item::Packet(p) => {
                let t = moved(p.time_ns as i64);
                count += (t != p.time_ns as i64) as usize;
                packets.push((
                    t as u64,
                    p.direction,
                    p.seq.unwrap_or(0),
                    p.cpu,
                    p.orig_len,
                    p.ip.to_vec(),
                    p.drop_reason.map(str::to_string),
                ));
            }
            Item::NotIp | Item::Other => {}
        }
    }
    let stats = reader.stats().clone();
    let (start, end) = stats.window.unwrap_or((0, 0));
    info.start_wall_ns = start.max(0) as u64;
    info.end_wall_ns = moved(end).max(0) as u64;
    info.drops_per_cpu = stats.drops_per_cpu.clone();
    let mut w = DumpWriter::new(std::fs::File::create(output)?, &info).map_err(std::io::Error::other)?;
    for (t, direction, seq, cpu, orig_len, ip, drop) in &packets {
        let drop_reason = drop.as_deref();
        w.packet(&WritePacket {
            wall_ns: *t,
            direction: *direction,
            seq: *seq,
            cpu: *cpu,
            ktime_ns: None,
            orig_len: *orig_len,
            ip,
            drop_reason,
        })
        .map_err(std::io::Error::other)?;
    }
    w.finish(&info).map_err(std::io::Error::other)?;
    Ok(count)
}

/// The times of a dump's packets, in the order recorded (ns, the node's clock).
pub fn packet_times(input: &Path) -> std::io::Result<Vec<i64>> {
    let mut reader = DumpReader::new(std::io::BufReader::new(std::fs::File::open(input)?));
    let mut times = Vec::new();
    while let Some(item) = reader.next_item().map_err(std::io::Error::other)? {
        if let Item::Packet(p) = item {
            times.push(p.time_ns as i64);
        }
    }
    Ok(times)
}
