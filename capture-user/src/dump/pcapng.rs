//! A small pcapng reader and writer: just the blocks and options wgo uses. It knows
//! pcapng, not wgo: what wgo puts in the blocks is in the modules beside it.
//!
//! Written here rather than taken from pcap-file because pcap-file 2.0 cannot write
//! `epb_packetid`, `epb_queue` or custom options (its option types are private) and
//! ignores `if_tsresol` when reading; its 3.0 is a release candidate.
//! Reading handles both byte orders, any `if_tsresol`, several sections and
//! interfaces, and says at which byte offset a broken file stops making sense.

use std::io::{self, Read, Write};

pub(crate) const BT_SHB: u32 = 0x0A0D_0D0A;
pub(crate) const BT_IDB: u32 = 1;
pub(crate) const BT_SPB: u32 = 3;
pub(crate) const BT_ISB: u32 = 5;
pub(crate) const BT_EPB: u32 = 6;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
pub(crate) const LINKTYPE_ETHERNET: u16 = 1;
pub(crate) const LINKTYPE_RAW: u16 = 101;
pub(crate) const LINKTYPE_LINUX_SLL: u16 = 113;
pub(crate) const LINKTYPE_IPV4: u16 = 228;
pub(crate) const LINKTYPE_IPV6: u16 = 229;

pub(crate) const OPT_COMMENT: u16 = 1;
pub(crate) const OPT_CUSTOM_STRING: u16 = 2988;
pub(crate) const OPT_CUSTOM_BINARY: u16 = 2989;
pub(crate) const SHB_OS: u16 = 3;
pub(crate) const SHB_USERAPPL: u16 = 4;
pub(crate) const IF_NAME: u16 = 2;
pub(crate) const IF_DESCRIPTION: u16 = 3;
pub(crate) const IF_TSRESOL: u16 = 9;
pub(crate) const EPB_FLAGS: u16 = 2;
pub(crate) const EPB_PACKETID: u16 = 5;
pub(crate) const EPB_QUEUE: u16 = 6;
pub(crate) const ISB_STARTTIME: u16 = 2;
pub(crate) const ISB_ENDTIME: u16 = 3;
pub(crate) const ISB_IFRECV: u16 = 4;
pub const ISB_IFDROP: u16 = 5;
pub(crate) const ISB_USRDELIV: u16 = 8;

/// Largest block accepted when reading; anything bigger is a corrupt length.
const MAX_BLOCK: usize = 64 << 20;

// ---------------------------------------------------------------- writing

/// Options of one block, encoded as they go on disk (native byte order).
#[derive(Default)]
pub(crate) struct Options(Vec<u8>);

impl Options {
    pub fn new() -> Options {
        Options(Vec::new())
    }
    pub fn clear(&mut self) {
        self.0.clear();
    }
    pub fn bytes(&mut self, code: u16, value: &[u8]) -> &mut Options {
        self.0.extend_from_slice(&code.to_ne_bytes());
        self.0.extend_from_slice(&(value.len() as u16).to_ne_bytes());
        self.0.extend_from_slice(value);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
        self
    }
    pub fn str(&mut self, code: u16, value: &str) -> &mut Options {
        self.bytes(code, value.as_bytes())
    }
    pub fn u32(&mut self, code: u16, v: u32) -> &mut Options {
        self.bytes(code, &v.to_ne_bytes())
    }
    pub fn u64(&mut self, code: u16, v: u64) -> &mut Options {
        self.bytes(code, &v.to_ne_bytes())
    }
    /// A 64-bit timestamp: high 32-bit word first, as pcapng stores times.
    pub fn time(&mut self, code: u16, v: u64) -> &mut Options {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&((v >> 32) as u32).to_ne_bytes());
        b[4..].copy_from_slice(&(v as u32).to_ne_bytes());
        self.bytes(code, &b)
    }
    /// Custom UTF-8 option (code 2988) with a private enterprise number.
    pub(crate) fn custom_str(&mut self, pen: u32, value: &str) -> &mut Options {
        let mut v = Vec::with_capacity(4 + value.len());
        v.extend_from_slice(&pen.to_ne_bytes());
        v.extend_from_slice(value.as_bytes());
        self.bytes(OPT_CUSTOM_STRING, &v)
    }
    /// Custom binary option (code 2989) with a private enterprise number.
    pub(crate) fn custom(&mut self, pen: u32, value: &[u8]) -> &mut Options {
        let mut v = Vec::with_capacity(4 + value.len());
        v.extend_from_slice(&pen.to_ne_bytes());
        v.extend_from_slice(value);
        self.bytes(OPT_CUSTOM_BINARY, &v)
    }
    fn encoded_len(&self) -> usize {
        if self.0.is_empty() { 0 } else { self.0.len() + 4 }
    }
    fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        if !self.0.is_empty() {
            w.write_all(&self.0)?;
            w.write_all(&[0, 0, 0, 0])?; // opt_endofopt
        }
        Ok(())
    }
}

pub(crate) struct Writer<W: Write> {
    out: W,
    scratch: Options,
}

impl<W: Write> Writer<W> {
    /// Starts a section with the given SHB options.
    pub fn new(mut out: W, shb: &Options) -> io::Result<Writer<W>> {
        let mut fixed = Vec::with_capacity(16);
        fixed.extend_from_slice(&BYTE_ORDER_MAGIC.to_ne_bytes());
        fixed.extend_from_slice(&1u16.to_ne_bytes());
        fixed.extend_from_slice(&0u16.to_ne_bytes());
        fixed.extend_from_slice(&(-1i64).to_ne_bytes());
        write_block(&mut out, BT_SHB, &fixed, &[], shb)?;
        Ok(Writer { out, scratch: Options::new() })
    }

    pub fn interface(&mut self, linktype: u16, snaplen: u32, opts: &Options) -> io::Result<()> {
        let mut fixed = [0u8; 8];
        fixed[..2].copy_from_slice(&linktype.to_ne_bytes());
        fixed[4..].copy_from_slice(&snaplen.to_ne_bytes());
        write_block(&mut self.out, BT_IDB, &fixed, &[], opts)
    }

    /// An Enhanced Packet Block; `fill` adds its options (reusing one buffer).
    pub fn packet(&mut self, interface: u32, time: u64, orig_len: u32, data: &[u8], fill: impl FnOnce(&mut Options)) -> io::Result<()> {
        let mut fixed = [0u8; 20];
        fixed[..4].copy_from_slice(&interface.to_ne_bytes());
        fixed[4..8].copy_from_slice(&((time >> 32) as u32).to_ne_bytes());
        fixed[8..12].copy_from_slice(&(time as u32).to_ne_bytes());
        fixed[12..16].copy_from_slice(&(data.len() as u32).to_ne_bytes());
        fixed[16..20].copy_from_slice(&orig_len.to_ne_bytes());
        self.scratch.clear();
        fill(&mut self.scratch);
        write_block(&mut self.out, BT_EPB, &fixed, data, &self.scratch)
    }

    pub fn statistics(&mut self, interface: u32, time: u64, opts: &Options) -> io::Result<()> {
        let mut fixed = [0u8; 12];
        fixed[..4].copy_from_slice(&interface.to_ne_bytes());
        fixed[4..8].copy_from_slice(&((time >> 32) as u32).to_ne_bytes());
        fixed[8..12].copy_from_slice(&(time as u32).to_ne_bytes());
        write_block(&mut self.out, BT_ISB, &fixed, &[], opts)
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

fn write_block(w: &mut impl Write, kind: u32, fixed: &[u8], data: &[u8], opts: &Options) -> io::Result<()> {
    let data_padded = data.len().next_multiple_of(4);
    let total = 12 + fixed.len() + data_padded + opts.encoded_len();
    w.write_all(&kind.to_ne_bytes())?;
    w.write_all(&(total as u32).to_ne_bytes())?;
    w.write_all(fixed)?;
    w.write_all(data)?;
    w.write_all(&[0u8; 3][..data_padded - data.len()])?;
    opts.write_to(w)?;
    w.write_all(&(total as u32).to_ne_bytes())
}

// ---------------------------------------------------------------- reading

fn opts_from(big_endian: bool, body_end: usize, from: usize, buf: &[u8]) -> OptIter<'_> {
    OptIter { buf: buf.get(from..body_end).unwrap_or(&[]), big_endian }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("at byte {offset}: {what}")]
    Corrupt { offset: u64, what: String },
    #[error("at byte {offset}: file ends inside a block ({what})")]
    Truncated { offset: u64, what: String },
    #[error("at byte {offset}: {source}")]
    Io { offset: u64, source: io::Error },
}

impl ReadError {
    pub fn offset(&self) -> u64 {
        match self {
            ReadError::Corrupt { offset, .. } | ReadError::Truncated { offset, .. } | ReadError::Io { offset, .. } => *offset,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub linktype: u16,
    pub snaplen: u32,
    pub name: Option<String>,
    pub description: Option<String>,
    /// Multiply raw timestamps by this to get ns (when `ts_div` is 1).
    pub ts_mul: u64,
    /// Or divide by this.
    pub ts_div: u64,
}

impl Interface {
    pub(crate) fn to_ns(&self, raw: u64) -> u64 {
        raw.saturating_mul(self.ts_mul) / self.ts_div
    }
}

/// One option as read: code and raw value bytes (in the section's byte order).
#[derive(Clone, Copy, Debug)]
pub struct Opt<'a> {
    pub code: u16,
    pub value: &'a [u8],
}

/// A parsed block; borrowed data stays valid until the next call to [`Reader::next_block`].
#[derive(Debug)]
pub enum Block<'a> {
    Section { options: OptIter<'a> },
    Interface { id: u32 },
    Packet(PacketBlock<'a>),
    Statistics { interface: u32, time_ns: u64, options: OptIter<'a> },
    Other { kind: u32 },
}

#[derive(Debug)]
pub struct PacketBlock<'a> {
    pub interface: u32,
    /// The interface's link type.
    pub linktype: u16,
    pub time_ns: u64,
    pub orig_len: u32,
    pub data: &'a [u8],
    pub options: OptIter<'a>,
    /// Byte offset of the block in the file.
    pub offset: u64,
}

#[derive(Clone, Copy, Debug)]
pub struct OptIter<'a> {
    buf: &'a [u8],
    big_endian: bool,
}

impl<'a> OptIter<'a> {
    pub(crate) fn u16_at(&self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        if self.big_endian { u16::from_be_bytes(a) } else { u16::from_le_bytes(a) }
    }
    pub(crate) fn read_u32(&self, b: &[u8]) -> Option<u32> {
        let a: [u8; 4] = b.get(..4)?.try_into().ok()?;
        Some(if self.big_endian { u32::from_be_bytes(a) } else { u32::from_le_bytes(a) })
    }
    pub fn read_u64(&self, b: &[u8]) -> Option<u64> {
        let a: [u8; 8] = b.get(..8)?.try_into().ok()?;
        Some(if self.big_endian { u64::from_be_bytes(a) } else { u64::from_le_bytes(a) })
    }
    /// A pcapng 64-bit time (high word first).
    pub(crate) fn read_time(&self, b: &[u8]) -> Option<u64> {
        Some(((self.read_u32(b)? as u64) << 32) | self.read_u32(b.get(4..)?)? as u64)
    }
    pub fn find(&self, code: u16) -> Option<&'a [u8]> {
        self.into_iter().find(|o| o.code == code).map(|o| o.value)
    }
    /// The value of custom option 2989 with enterprise number `pen` (only tests read it back).
    #[cfg(test)]
    pub(crate) fn custom(&self, pen: u32) -> Option<&'a [u8]> {
        self.custom_of(OPT_CUSTOM_BINARY, pen)
    }
    /// The value of custom option 2988 (UTF-8) with enterprise number `pen`.
    pub(crate) fn custom_str(&self, pen: u32) -> Option<&'a str> {
        self.custom_of(OPT_CUSTOM_STRING, pen).and_then(|v| std::str::from_utf8(v).ok())
    }
    fn custom_of(&self, code: u16, pen: u32) -> Option<&'a [u8]> {
        self.into_iter()
            .filter(|o| o.code == code && o.value.len() >= 4)
            .find(|o| self.read_u32(o.value) == Some(pen))
            .map(|o| &o.value[4..])
    }
    /// Every line of the block's comments (those that are UTF-8).
    pub(crate) fn comment_lines(&self) -> impl Iterator<Item = &'a str> + 'a {
        let it = *self;
        it.into_iter().filter(|o| o.code == OPT_COMMENT).filter_map(|o| std::str::from_utf8(o.value).ok()).flat_map(str::lines)
    }
}

impl<'a> IntoIterator for OptIter<'a> {
    type Item = Opt<'a>;
    type IntoIter = OptWalk<'a>;
    fn into_iter(self) -> OptWalk<'a> {
        OptWalk { it: self, pos: 0 }
    }
}

pub struct OptWalk<'a> {
    it: OptIter<'a>,
    pos: usize,
}

impl<'a> Iterator for OptWalk<'a> {
    type Item = Opt<'a>;
    fn next(&mut self) -> Option<Opt<'a>> {
        let b = self.it.buf.get(self.pos..)?;
        if b.len() < 4 {
            return None;
        }
        let code = self.it.u16_at(b);
        let len = self.it.u16_at(&b[2..]) as usize;
        if code == 0 || 4 + len > b.len() {
            return None;
        }
        self.pos += 4 + len.next_multiple_of(4);
        Some(Opt { code, value: &b[4..4 + len] })
    }
}

pub struct Reader<R: Read> {
    input: R,
    buf: Vec<u8>,
    offset: u64,
    big_endian: bool,
    seen_section: bool,
    pub interfaces: Vec<Interface>,
}

impl<R: Read> Reader<R> {
    pub fn new(input: R) -> Reader<R> {
        Reader { input, buf: Vec::with_capacity(4096), offset: 0, big_endian: false, seen_section: false, interfaces: Vec::new() }
    }

    /// Byte offset of the next block.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn u32(&self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        if self.big_endian { u32::from_be_bytes(a) } else { u32::from_le_bytes(a) }
    }

    /// Reads exactly `n` bytes into `buf[at..]`; false on a clean EOF before the first byte.
    fn fill(&mut self, at: usize, n: usize) -> Result<bool, ReadError> {
        self.buf.resize(at + n, 0);
        let mut got = 0;
        while got < n {
            match self.input.read(&mut self.buf[at + got..at + n]) {
                Ok(0) if got == 0 && at == 0 => return Ok(false),
                Ok(0) => {
                    return Err(ReadError::Truncated {
                        offset: self.offset,
                        what: format!("expected {} more bytes, got {}", at + n, at + got),
                    });
                }
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(ReadError::Io { offset: self.offset + (at + got) as u64, source }),
            }
        }
        Ok(true)
    }

    fn corrupt(&self, what: impl Into<String>) -> ReadError {
        ReadError::Corrupt { offset: self.offset, what: what.into() }
    }

    /// The next block, or `None` at the end of the file.
    pub fn next_block(&mut self) -> Result<Option<Block<'_>>, ReadError> {
        if !self.fill(0, 8)? {
            return Ok(None);
        }
        let kind_raw = [self.buf[0], self.buf[1], self.buf[2], self.buf[3]];
        if u32::from_le_bytes(kind_raw) == BT_SHB {
            // The byte-order magic follows the length; read it before trusting the length.
            self.fill(8, 4)?;
            self.big_endian = match u32::from_le_bytes([self.buf[8], self.buf[9], self.buf[10], self.buf[11]]) {
                BYTE_ORDER_MAGIC => false,
                m if m.swap_bytes() == BYTE_ORDER_MAGIC => true,
                m => return Err(self.corrupt(format!("bad byte-order magic {m:#010x} in section header"))),
            };
            self.seen_section = true;
            self.interfaces.clear();
        } else if !self.seen_section {
            return Err(self.corrupt("not a pcapng file (does not start with a section header block)"));
        }
        let kind = self.u32(&self.buf[0..4]);
        let total = self.u32(&self.buf[4..8]) as usize;
        if total < 12 || !total.is_multiple_of(4) || total > MAX_BLOCK {
            return Err(self.corrupt(format!("block of type {kind:#x} has impossible length {total}")));
        }
        let have = self.buf.len();
        self.fill(have, total - have)?;
        if self.u32(&self.buf[total - 4..]) as usize != total {
            return Err(self.corrupt(format!("block of type {kind:#x}: trailing length does not match {total}")));
        }
        let offset = self.offset;
        self.offset += total as u64;
        let big_endian = self.big_endian;
        let body_end = total - 4;
        let block = match kind {
            BT_SHB => Block::Section { options: opts_from(big_endian, body_end, 24, &self.buf) },
            BT_IDB => {
                if total < 20 {
                    return Err(ReadError::Corrupt { offset, what: "interface block too short".into() });
                }
                let linktype = if big_endian {
                    u16::from_be_bytes([self.buf[8], self.buf[9]])
                } else {
                    u16::from_le_bytes([self.buf[8], self.buf[9]])
                };
                let snaplen = self.u32(&self.buf[12..16]);
                let opts = opts_from(big_endian, body_end, 16, &self.buf);
                let text = |code| opts.find(code).map(|v| String::from_utf8_lossy(v).into_owned());
                let (ts_mul, ts_div) = match opts.find(IF_TSRESOL).and_then(|v| v.first().copied()) {
                    None => (1000, 1), // default: microseconds
                    Some(r) if r & 0x80 == 0 => {
                        let digits = (r & 0x7f) as u32;
                        if digits <= 9 {
                            (10u64.pow(9 - digits), 1)
                        } else if digits <= 18 {
                            (1, 10u64.pow(digits - 9))
                        } else {
                            return Err(ReadError::Corrupt { offset, what: format!("if_tsresol 10^-{digits} is out of range") });
                        }
                    }
                    Some(r) => {
                        let bits = (r & 0x7f) as u32;
                        if bits > 63 {
                            return Err(ReadError::Corrupt { offset, what: format!("if_tsresol 2^-{bits} is out of range") });
                        }
                        // ns = raw * 1e9 / 2^bits; keep it in integers.
                        (1_000_000_000, 1u64 << bits)
                    }
                };
                self.interfaces.push(Interface {
                    linktype,
                    snaplen,
                    name: text(IF_NAME),
                    description: text(IF_DESCRIPTION),
                    ts_mul,
                    ts_div,
                });
                Block::Interface { id: self.interfaces.len() as u32 - 1 }
            }
            BT_EPB => {
                if total < 32 {
                    return Err(ReadError::Corrupt { offset, what: "packet block too short".into() });
                }
                let interface = self.u32(&self.buf[8..12]);
                let raw_time = ((self.u32(&self.buf[12..16]) as u64) << 32) | self.u32(&self.buf[16..20]) as u64;
                let caplen = self.u32(&self.buf[20..24]) as usize;
                let orig_len = self.u32(&self.buf[24..28]);
                if 28 + caplen > body_end {
                    return Err(ReadError::Corrupt {
                        offset,
                        what: format!("packet claims {caplen} captured bytes but the block holds {}", body_end - 28),
                    });
                }
                let iface = self.interfaces.get(interface as usize).ok_or_else(|| ReadError::Corrupt {
                    offset,
                    what: format!("packet refers to interface {interface}, which was never described"),
                })?;
                let time_ns = iface.to_ns(raw_time);
                let linktype = iface.linktype;
                let data = &self.buf[28..28 + caplen];
                Block::Packet(PacketBlock {
                    interface,
                    linktype,
                    time_ns,
                    orig_len,
                    data,
                    options: opts_from(big_endian, body_end, 28 + caplen.next_multiple_of(4), &self.buf),
                    offset,
                })
            }
            BT_SPB => {
                if total < 16 {
                    return Err(ReadError::Corrupt { offset, what: format!("simple packet block too short ({total} bytes)") });
                }
                let orig_len = self.u32(&self.buf[8..12]);
                let iface = self
                    .interfaces
                    .first()
                    .ok_or_else(|| ReadError::Corrupt { offset, what: "simple packet before any interface".into() })?;
                let caplen = (orig_len as usize).min(body_end - 12).min(iface.snaplen.max(1) as usize);
                let data = &self.buf[12..12 + caplen];
                let linktype = iface.linktype;
                Block::Packet(PacketBlock {
                    interface: 0,
                    linktype,
                    time_ns: 0,
                    orig_len,
                    data,
                    options: OptIter { buf: &[], big_endian },
                    offset,
                })
            }
            BT_ISB => {
                if total < 24 {
                    return Err(ReadError::Corrupt { offset, what: "statistics block too short".into() });
                }
                let interface = self.u32(&self.buf[8..12]);
                let raw = ((self.u32(&self.buf[12..16]) as u64) << 32) | self.u32(&self.buf[16..20]) as u64;
                let time_ns = self.interfaces.get(interface as usize).map_or(raw, |i| i.to_ns(raw));
                Block::Statistics { interface, time_ns, options: opts_from(big_endian, body_end, 20, &self.buf) }
            }
            other => Block::Other { kind: other },
        };
        Ok(Some(block))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut shb = Options::new();
        shb.str(OPT_COMMENT, "wgo:node=alpha\nwgo:snaplen=64");
        let mut w = Writer::new(Vec::new(), &shb).unwrap();
        let mut idb = Options::new();
        idb.str(IF_NAME, "alpha").bytes(IF_TSRESOL, &[9]);
        w.interface(LINKTYPE_RAW, 512, &idb).unwrap();
        w.packet(0, 1_700_000_000_123_456_789, 100, b"hello", |o| {
            o.u32(EPB_FLAGS, 2).u64(EPB_PACKETID, 7).u32(EPB_QUEUE, 1).custom(super::super::WGO_PEN, &42u64.to_le_bytes());
        })
        .unwrap();
        let mut isb = Options::new();
        isb.u64(ISB_IFDROP, 3).str(OPT_COMMENT, "wgo:kernel_drops=3");
        w.statistics(0, 1_700_000_001_000_000_000, &isb).unwrap();
        w.into_inner()
    }

    #[test]
    fn round_trips_what_it_writes() {
        let bytes = sample();
        let mut r = Reader::new(&bytes[..]);
        match r.next_block().unwrap().unwrap() {
            Block::Section { options } => {
                let lines: Vec<_> = options.comment_lines().collect();
                assert_eq!(lines, vec!["wgo:node=alpha", "wgo:snaplen=64"]);
            }
            b => panic!("{b:?}"),
        }
        assert!(matches!(r.next_block().unwrap().unwrap(), Block::Interface { id: 0 }));
        assert_eq!(r.interfaces[0].name.as_deref(), Some("alpha"));
        match r.next_block().unwrap().unwrap() {
            Block::Packet(p) => {
                assert_eq!(p.time_ns, 1_700_000_000_123_456_789);
                assert_eq!(p.data, b"hello");
                assert_eq!(p.orig_len, 100);
                let o = p.options;
                assert_eq!(o.read_u32(o.find(EPB_FLAGS).unwrap()), Some(2));
                assert_eq!(o.read_u64(o.find(EPB_PACKETID).unwrap()), Some(7));
                assert_eq!(o.read_u32(o.find(EPB_QUEUE).unwrap()), Some(1));
                assert_eq!(o.custom(super::super::WGO_PEN), Some(&42u64.to_le_bytes()[..]));
            }
            b => panic!("{b:?}"),
        }
        match r.next_block().unwrap().unwrap() {
            Block::Statistics { time_ns, options, .. } => {
                assert_eq!(time_ns, 1_700_000_001_000_000_000);
                assert_eq!(options.read_u64(options.find(ISB_IFDROP).unwrap()), Some(3));
            }
            b => panic!("{b:?}"),
        }
        assert!(r.next_block().unwrap().is_none());
    }

    #[test]
    fn truncation_and_corruption_name_the_offset() {
        let bytes = sample();
        let cut = bytes.len() - 10;
        let mut r = Reader::new(&bytes[..cut]);
        let mut err = None;
        loop {
            match r.next_block() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        let err = err.expect("truncated file must fail");
        assert!(matches!(err, ReadError::Truncated { .. }), "{err}");
        assert!(err.offset() > 0 && (err.offset() as usize) < cut);

        let mut bad = sample();
        bad[4] = 13; // SHB length not a multiple of 4
        let e = Reader::new(&bad[..]).next_block().unwrap_err();
        assert_eq!(e.offset(), 0);
        assert!(e.to_string().contains("impossible length"), "{e}");

        let e = Reader::new(&b"GIF89a-not-a-capture"[..]).next_block().unwrap_err();
        assert!(e.to_string().contains("not a pcapng file"), "{e}");
    }

    #[test]
    fn a_simple_packet_block_too_short_for_its_length_field_is_an_error_not_a_panic() {
        let mut w = Writer::new(Vec::new(), &Options::new()).unwrap();
        w.interface(LINKTYPE_RAW, 65535, &Options::new()).unwrap();
        let bytes = w.into_inner();
        for len in [12u32, 16] {
            let mut file = bytes.clone();
            file.extend_from_slice(&BT_SPB.to_le_bytes());
            file.extend_from_slice(&len.to_le_bytes());
            file.extend(std::iter::repeat_n(0u8, len as usize - 12));
            file.extend_from_slice(&len.to_le_bytes());
            let mut r = Reader::new(&file[..]);
            r.next_block().unwrap();
            r.next_block().unwrap();
            match r.next_block() {
                Err(e) => {
                    assert_eq!(len, 12, "a 16-byte block holds its length field: {e}");
                    assert!(e.to_string().contains("simple packet block too short"), "{e}");
                }
                Ok(Some(Block::Packet(p))) => assert!(len == 16 && p.data.is_empty()),
                Ok(other) => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn microsecond_default_resolution() {
        let mut w = Writer::new(Vec::new(), &Options::new()).unwrap();
        w.interface(LINKTYPE_RAW, 65535, &Options::new()).unwrap();
        w.packet(0, 1_000_000, 4, b"abcd", |_| {}).unwrap();
        let bytes = w.into_inner();
        let mut r = Reader::new(&bytes[..]);
        r.next_block().unwrap();
        r.next_block().unwrap();
        match r.next_block().unwrap().unwrap() {
            Block::Packet(p) => assert_eq!(p.time_ns, 1_000_000_000),
            b => panic!("{b:?}"),
        }
    }
}
