//! Reading a dump back: ours, or a plain pcapng from tcpdump or dumpcap (raw IP,
//! Ethernet or Linux cooked link types), packet by packet, without copying.

use std::io::Read;

use capture_ebpf::Direction;

use super::pcapng::{self, Block, ReadError, Reader};
use super::{flags_direction, keys, wgo_comments};

/// What a section header says about the node (the `wgo:` keys; all absent in plain files).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SectionInfo {
    pub node: Option<String>,
    pub snaplen: Option<u32>,
    /// When the node heard the trigger, on its own clock.
    pub trigger_heard_ns: Option<i64>,
    /// Why the trigger was sent.
    pub trigger_reason: Option<String>,
}

/// What the statistics blocks say about loss and the recording's span.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DumpStats {
    pub drops_per_cpu: Vec<u64>,
    pub kernel_drops: u64,
    /// Records the agent ring evicted (by age or by size).
    pub evicted: u64,
    /// Start and end of the recording, on the node's clock.
    pub window: Option<(i64, i64)>,
}

/// One packet, from its IP header on.
#[derive(Clone, Copy, Debug)]
pub struct ReadPacket<'a> {
    /// The node's wall clock, ns.
    pub time_ns: u64,
    pub seq: Option<u64>,
    pub cpu: u32,
    /// None where the file does not say.
    pub direction: Option<Direction>,
    /// Length on the wire from the IP header on.
    pub orig_len: u32,
    pub ip: &'a [u8],
    /// The kernel dropped it, for this reason (see the module's docs).
    pub drop_reason: Option<&'a str>,
}

/// What [`DumpReader::next_item`] hands out.
#[derive(Debug)]
pub enum Item<'a> {
    Section(SectionInfo),
    Packet(ReadPacket<'a>),
    /// A frame that holds no IP packet (ARP, say).
    NotIp,
    /// Any other block: interfaces, statistics (gathered in [`DumpReader::stats`]), unknown ones.
    Other,
}

pub struct DumpReader<R: Read> {
    blocks: Reader<R>,
    stats: DumpStats,
}

impl<R: Read> DumpReader<R> {
    pub fn new(input: R) -> DumpReader<R> {
        DumpReader { blocks: Reader::new(input), stats: DumpStats::default() }
    }

    /// The next section or packet; statistics are gathered on the way ([`Self::stats`]).
    /// An error names the byte offset where the file stops making sense.
    pub fn next_item(&mut self) -> Result<Option<Item<'_>>, ReadError> {
        {
            let at = self.blocks.offset();
            let Some(block) = self.blocks.next_block()? else { return Ok(None) };
            match block {
                Block::Section { options } => {
                    let mut info = SectionInfo::default();
                    for (k, v) in wgo_comments(&options) {
                        match k {
                            keys::NODE => info.node = Some(v.to_string()),
                            keys::SNAPLEN => info.snaplen = Some(number(at, k, v)?),
                            keys::TRIGGER_HEARD_NS => info.trigger_heard_ns = Some(number(at, k, v)?),
                            keys::TRIGGER_REASON => info.trigger_reason = Some(v.to_string()),
                            _ => {}
                        }
                    }
                    Ok(Some(Item::Section(info)))
                }
                Block::Packet(p) => {
                    let Some(ip) = ip_payload(p.linktype, p.data) else { return Ok(Some(Item::NotIp)) };
                    let o = p.options;
                    let direction = match o.find(pcapng::EPB_FLAGS).and_then(|v| o.read_u32(v)) {
                        Some(f) => flags_direction(f).or_else(|| sll_direction(p.linktype, p.data)),
                        None => sll_direction(p.linktype, p.data),
                    };
                    let skew = p.data.len() - ip.len();
                    Ok(Some(Item::Packet(ReadPacket {
                        time_ns: p.time_ns,
                        seq: o.find(pcapng::EPB_PACKETID).and_then(|v| o.read_u64(v)),
                        cpu: o.find(pcapng::EPB_QUEUE).and_then(|v| o.read_u32(v)).unwrap_or(0),
                        direction,
                        orig_len: p.orig_len.saturating_sub(skew as u32),
                        ip,
                        drop_reason: o.custom_str(super::WGO_PEN).filter(|r| !r.is_empty()),
                    })))
                }
                Block::Statistics { options, .. } => {
                    let s = &mut self.stats;
                    for (k, v) in wgo_comments(&options) {
                        match k {
                            keys::DROPS_PER_CPU => {
                                s.drops_per_cpu =
                                    v.split(',').filter(|x| !x.is_empty()).map(|x| number(at, k, x)).collect::<Result<_, _>>()?
                            }
                            keys::KERNEL_DROPS => s.kernel_drops = number(at, k, v)?,
                            keys::EVICTED_BY_AGE | keys::EVICTED_BY_SIZE => s.evicted = s.evicted.saturating_add(number::<u64>(at, k, v)?),
                            _ => {}
                        }
                    }
                    if let Some(d) = options.find(pcapng::ISB_IFDROP).and_then(|v| options.read_u64(v)) {
                        s.kernel_drops = s.kernel_drops.max(d);
                    }
                    let start = options.find(pcapng::ISB_STARTTIME).and_then(|v| options.read_time(v));
                    let end = options.find(pcapng::ISB_ENDTIME).and_then(|v| options.read_time(v));
                    if let (Some(a), Some(b)) = (start, end) {
                        s.window = Some((a as i64, b as i64));
                    }
                    Ok(Some(Item::Other))
                }
                Block::Interface { .. } | Block::Other { .. } => Ok(Some(Item::Other)),
            }
        }
    }

    /// Loss counters and span from the statistics blocks read so far.
    pub fn stats(&self) -> &DumpStats {
        &self.stats
    }
}

/// A number in a `wgo:` key of the block at `at`: a count that does not parse is a damaged
/// dump, named as such, never read as zero.
fn number<T: std::str::FromStr>(at: u64, key: &str, v: &str) -> Result<T, ReadError> {
    v.trim().parse().map_err(|_| ReadError::Corrupt { offset: at, what: format!("{}{key}={v:?} is not a number", keys::PREFIX) })
}

const LINKTYPE_LINUX_SLL2: u16 = 276;

/// The IP packet inside a frame of the given link type, or None for non-IP frames.
pub(crate) fn ip_payload(linktype: u16, data: &[u8]) -> Option<&[u8]> {
    let ip = match linktype {
        pcapng::LINKTYPE_RAW | pcapng::LINKTYPE_IPV4 | pcapng::LINKTYPE_IPV6 => data,
        pcapng::LINKTYPE_ETHERNET => {
            let mut off = 12;
            let mut ethertype = u16::from_be_bytes([*data.get(12)?, *data.get(13)?]);
            while ethertype == 0x8100 || ethertype == 0x88a8 {
                off += 4;
                ethertype = u16::from_be_bytes([*data.get(off)?, *data.get(off + 1)?]);
            }
            if ethertype != 0x0800 && ethertype != 0x86dd {
                return None;
            }
            data.get(off + 2..)?
        }
        pcapng::LINKTYPE_LINUX_SLL => {
            let proto = u16::from_be_bytes([*data.get(14)?, *data.get(15)?]);
            if proto != 0x0800 && proto != 0x86dd {
                return None;
            }
            data.get(16..)?
        }
        LINKTYPE_LINUX_SLL2 => {
            let proto = u16::from_be_bytes([*data.first()?, *data.get(1)?]);
            if proto != 0x0800 && proto != 0x86dd {
                return None;
            }
            data.get(20..)?
        }
        _ => return None,
    };
    matches!(ip.first()? >> 4, 4 | 6).then_some(ip)
}

/// Linux cooked captures say which way a packet went.
fn sll_direction(linktype: u16, data: &[u8]) -> Option<Direction> {
    let packet_type = match linktype {
        pcapng::LINKTYPE_LINUX_SLL => u16::from_be_bytes([*data.first()?, *data.get(1)?]),
        LINKTYPE_LINUX_SLL2 => *data.get(10)? as u16,
        _ => return None,
    };
    match packet_type {
        0..=3 => Some(Direction::Ingress),
        4 => Some(Direction::Egress),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::writer::{DumpInfo, DumpWriter, RingCounts, WritePacket};
    use super::*;

    /// Every option a dump can hold goes in, and comes back out as written.
    #[test]
    fn a_dump_with_every_option_reads_back_as_written() {
        let info = DumpInfo {
            node: "node7".into(),
            cgroup: "/sys/fs/cgroup/app".into(),
            snaplen: 64,
            drops_per_cpu: vec![0, 3, 4],
            ring: RingCounts { pushed: 10, evicted_by_age: 2, evicted_by_size: 1 },
            start_wall_ns: 1_000,
            end_wall_ns: 9_000,
            wall_minus_mono_ns: -5,
            extra: vec![
                (keys::TRIGGER_HEARD_NS, "8500".into()),
                (keys::TRIGGER_ID, "00000000000000ab".into()),
                (keys::TRIGGER_REASON, "node7: app (pid 3) killed by SIGSEGV".into()),
            ],
            drop_reasons: Vec::new(),
        };
        let ip = [0x45u8, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2, 0, 8, 0, 0];
        let mut out = Vec::new();
        let mut w = DumpWriter::new(&mut out, &info).unwrap();
        w.packet(&WritePacket {
            wall_ns: 2_000,
            direction: Some(Direction::Egress),
            seq: 5,
            cpu: 1,
            ktime_ns: Some(77),
            orig_len: 100,
            ip: &ip,
            drop_reason: None,
        })
        .unwrap();
        w.packet(&WritePacket {
            wall_ns: 3_000,
            direction: Some(Direction::Ingress),
            seq: 6,
            cpu: 2,
            ktime_ns: None,
            orig_len: 28,
            ip: &ip,
            drop_reason: Some("netfilter_drop"),
        })
        .unwrap();
        w.packet(&WritePacket {
            wall_ns: 4_000,
            direction: None,
            seq: 7,
            cpu: 0,
            ktime_ns: None,
            orig_len: 28,
            ip: &ip,
            drop_reason: None,
        })
        .unwrap();
        w.packet(&WritePacket {
            wall_ns: 5_000,
            direction: None,
            seq: 8,
            cpu: 0,
            ktime_ns: None,
            orig_len: 4,
            ip: b"\x00ARP",
            drop_reason: None,
        })
        .unwrap();
        let summary = w.finish(&info).unwrap();
        assert_eq!(summary.packets, 4);

        let mut r = DumpReader::new(&out[..]);
        match r.next_item().unwrap().unwrap() {
            Item::Section(s) => assert_eq!(
                s,
                SectionInfo {
                    node: Some("node7".into()),
                    snaplen: Some(64),
                    trigger_heard_ns: Some(8500),
                    trigger_reason: Some("node7: app (pid 3) killed by SIGSEGV".into())
                }
            ),
            other => panic!("{other:?}"),
        }
        let mut got = Vec::new();
        let mut not_ip = 0;
        while let Some(item) = r.next_item().unwrap() {
            match item {
                Item::Packet(p) => {
                    got.push((p.time_ns, p.direction, p.seq, p.cpu, p.orig_len, p.ip.to_vec(), p.drop_reason.map(str::to_string)))
                }
                Item::NotIp => not_ip += 1,
                Item::Other => {}
                Item::Section(s) => panic!("a second section {s:?}"),
            }
        }
        assert_eq!(
            got,
            vec![
                (2_000, Some(Direction::Egress), Some(5), 1, 100, ip.to_vec(), None),
                (3_000, Some(Direction::Ingress), Some(6), 2, 28, ip.to_vec(), Some("netfilter_drop".to_string())),
                (4_000, None, Some(7), 0, 28, ip.to_vec(), None),
            ]
        );
        assert_eq!(not_ip, 1);
        assert_eq!(r.stats(), &DumpStats { drops_per_cpu: vec![0, 3, 4], kernel_drops: 7, evicted: 3, window: Some((1_000, 9_000)) });

        // A damaged count is named, never read as zero.
        for (good, bad) in
            [("kernel_drops=7", "kernel_drops=x"), ("drops_per_cpu=0,3,4", "drops_per_cpu=0,3,?"), ("snaplen=64", "snaplen=6x")]
        {
            let at = out.windows(good.len()).position(|w| w == good.as_bytes()).unwrap_or_else(|| panic!("{good} in the dump"));
            let mut damaged = out.clone();
            damaged[at..at + bad.len()].copy_from_slice(bad.as_bytes());
            let mut r = DumpReader::new(&damaged[..]);
            let err = loop {
                match r.next_item() {
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("{bad} read as a number: {:?}", r.stats()),
                    Err(e) => break e,
                }
            };
            let key = bad.split('=').next().unwrap();
            assert!(matches!(err, ReadError::Corrupt { .. }) && err.to_string().contains(key), "{err}");
        }

        // The raw kernel time and the comments are where the README says, for Wireshark.
        let mut blocks = Reader::new(&out[..]);
        let mut ktimes = Vec::new();
        let mut comments = Vec::new();
        let mut section = Vec::new();
        while let Some(b) = blocks.next_block().unwrap() {
            match b {
                Block::Section { options } => section.extend(wgo_comments(&options).map(|(k, v)| format!("{k}={v}"))),
                Block::Packet(p) => {
                    ktimes.push(p.options.custom(super::super::WGO_PEN).map(|v| v.to_vec()));
                    comments.push(p.options.comment_lines().collect::<Vec<_>>().join("\n"));
                }
                _ => {}
            }
        }
        assert_eq!(comments[1], "dropped by the kernel: netfilter_drop");
        assert_eq!(comments[0], "");
        assert_eq!(ktimes[0], Some(77u64.to_le_bytes().to_vec()));
        assert_eq!(ktimes[1], None);
        assert!(
            section.contains(&"cgroup=/sys/fs/cgroup/app".to_string()) && section.contains(&"wall_minus_mono_ns=-5".to_string()),
            "{section:?}"
        );
    }

    #[test]
    fn link_layers_give_their_ip_packet_and_direction() {
        let ip = [0x45u8, 0, 0, 20];
        let mut eth = vec![0u8; 12];
        eth.extend([0x81, 0x00, 0, 1, 0x08, 0x00]);
        eth.extend(ip);
        assert_eq!(ip_payload(pcapng::LINKTYPE_ETHERNET, &eth), Some(&ip[..]));
        let mut arp = vec![0u8; 12];
        arp.extend([0x08, 0x06, 0x45]);
        assert_eq!(ip_payload(pcapng::LINKTYPE_ETHERNET, &arp), None);
        let mut sll = vec![0, 4];
        sll.extend([0u8; 12]);
        sll.extend([0x08, 0x00]);
        sll.extend(ip);
        assert_eq!(ip_payload(pcapng::LINKTYPE_LINUX_SLL, &sll), Some(&ip[..]));
        assert_eq!(sll_direction(pcapng::LINKTYPE_LINUX_SLL, &sll), Some(Direction::Egress));
        assert_eq!(ip_payload(pcapng::LINKTYPE_RAW, &[0x10, 0]), None, "not IPv4 or IPv6");
        assert_eq!(ip_payload(pcapng::LINKTYPE_ETHERNET, &[0, 1]), None, "too short");
    }
}
