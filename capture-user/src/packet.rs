//! Parsing the captured bytes of a raw IPv4/IPv6 packet: just the fields wgo uses.
//! A leaf: it uses only std.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Udp,
    Tcp,
    Icmp,
    Other(u8),
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Proto::Udp => f.write_str("UDP"),
            Proto::Tcp => f.write_str("TCP"),
            Proto::Icmp => f.write_str("ICMP"),
            Proto::Other(n) => write!(f, "IP proto {n}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: Proto,
    /// 0 for ICMP.
    pub sport: u16,
    pub dport: u16,
    /// IPv4 identification; 0 for IPv6.
    pub ip_id: u16,
    /// Length of the whole IP packet from its header (may exceed what was captured).
    pub ip_len: u32,
    /// Offset of the L4 payload in the captured bytes.
    pub payload_offset: usize,
    /// Payload length on the wire, from the IP/UDP lengths (not what was captured).
    pub payload_len: u32,
    pub tcp: Option<TcpInfo>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpInfo {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
}

impl TcpInfo {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("packet too short for its IP header ({0} bytes)")]
    Short(usize),
    #[error("not an IPv4 or IPv6 packet (version {0})")]
    Version(u8),
}

impl Packet {
    pub fn parse(b: &[u8], orig_len: u32) -> Result<Packet, PacketError> {
        let version = b.first().ok_or(PacketError::Short(0))? >> 4;
        let (src, dst, l4proto, l3len, ip_id, ip_len) = match version {
            4 => {
                if b.len() < 20 {
                    return Err(PacketError::Short(b.len()));
                }
                let ihl = ((b[0] & 0x0f) as usize) * 4;
                let total = u16::from_be_bytes([b[2], b[3]]) as u32;
                let src = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
                let dst = Ipv4Addr::new(b[16], b[17], b[18], b[19]);
                (IpAddr::V4(src), IpAddr::V4(dst), b[9], ihl.max(20), u16::from_be_bytes([b[4], b[5]]), total)
            }
            6 => {
                if b.len() < 40 {
                    return Err(PacketError::Short(b.len()));
                }
                let payload = u16::from_be_bytes([b[4], b[5]]) as u32;
                let src = Ipv6Addr::from(<[u8; 16]>::try_from(&b[8..24]).expect("16 bytes"));
                let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&b[24..40]).expect("16 bytes"));
                (IpAddr::V6(src), IpAddr::V6(dst), b[6], 40, 0, payload + 40)
            }
            v => return Err(PacketError::Version(v)),
        };
        let ip_len = if ip_len == 0 { orig_len } else { ip_len };
        let l4 = b.get(l3len..).unwrap_or(&[]);
        let be16 = |o: usize| l4.get(o..o + 2).map_or(0, |s| u16::from_be_bytes([s[0], s[1]]));
        let be32 = |o: usize| l4.get(o..o + 4).map_or(0, |s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]));
        let l4_total = ip_len.saturating_sub(l3len as u32);
        let (proto, sport, dport, l4hdr, tcp) = match l4proto {
            17 => (Proto::Udp, be16(0), be16(2), 8, None),
            6 => {
                let off = l4.get(12).map_or(20, |o| ((o >> 4) as usize) * 4);
                let tcp = TcpInfo { seq: be32(4), ack: be32(8), flags: l4.get(13).copied().unwrap_or(0) };
                (Proto::Tcp, be16(0), be16(2), off, Some(tcp))
            }
            1 | 58 => (Proto::Icmp, 0, 0, 8, None),
            p => (Proto::Other(p), 0, 0, 0, None),
        };
        Ok(Packet {
            src,
            dst,
            proto,
            sport,
            dport,
            ip_id,
            ip_len,
            payload_offset: l3len + l4hdr,
            payload_len: l4_total.saturating_sub(l4hdr as u32),
            tcp,
        })
    }

    /// The captured part of the L4 payload.
    pub fn payload<'a>(&self, captured: &'a [u8]) -> &'a [u8] {
        captured.get(self.payload_offset..).unwrap_or(&[])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An IPv4 packet of IP protocol `proto` carrying `payload` right after its header
    /// (VRRP, OSPF, a raw socket's own protocol: wgo parses nothing past the IP header).
    pub fn ip4(src: [u8; 4], dst: [u8; 4], proto: u8, ip_id: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
        p[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        p[4..6].copy_from_slice(&ip_id.to_be_bytes());
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(payload);
        p
    }

    /// An IPv4/UDP packet, for tests across the crate.
    pub fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, ip_id: u16, payload: &[u8]) -> Vec<u8> {
        let total = 28 + payload.len();
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&ip_id.to_be_bytes());
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn parses_udp4() {
        let p = udp4([10, 0, 0, 1], [10, 0, 0, 2], 1234, 5678, 77, b"hello");
        let pkt = Packet::parse(&p, p.len() as u32).unwrap();
        assert_eq!(pkt.src, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(pkt.dst, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!((pkt.proto, pkt.sport, pkt.dport, pkt.ip_id), (Proto::Udp, 1234, 5678, 77));
        assert_eq!(pkt.payload(&p), b"hello");
        assert_eq!(pkt.payload_len, 5);
    }

    #[test]
    fn payload_len_comes_from_headers_when_truncated() {
        let p = udp4([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, 0, &[7u8; 100]);
        let pkt = Packet::parse(&p[..40], p.len() as u32).unwrap();
        assert_eq!(pkt.payload_len, 100);
        assert_eq!(pkt.payload(&p[..40]), &[7u8; 12]);
    }

    #[test]
    fn any_other_ip_protocol_has_its_payload_right_after_the_ip_header() {
        let p = ip4([10, 0, 0, 1], [224, 0, 0, 18], 112, 9, b"\x21\x01\x64\x01vrrp");
        let pkt = Packet::parse(&p, p.len() as u32).unwrap();
        assert_eq!((pkt.proto, pkt.sport, pkt.dport, pkt.ip_id), (Proto::Other(112), 0, 0, 9));
        assert_eq!((pkt.payload(&p), pkt.payload_len), (&b"\x21\x01\x64\x01vrrp"[..], 8));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(Packet::parse(&[], 0), Err(PacketError::Short(0)));
        assert_eq!(Packet::parse(&[0x45, 0], 2), Err(PacketError::Short(2)));
        assert_eq!(Packet::parse(&[0x12; 50], 50), Err(PacketError::Version(1)));
    }
}
