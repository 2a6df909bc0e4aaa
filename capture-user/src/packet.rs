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
            Proto::Other(n) => match ip_proto_name(*n) {
                Some(name) => f.write_str(name),
                None => write!(f, "IP {n}"),
            },
        }
    }
}

/// The usual name of an IP protocol number (IANA's registry), for those a cluster meets.
pub fn ip_proto_name(n: u8) -> Option<&'static str> {
    Some(match n {
        1 => "ICMP",
        2 => "IGMP",
        4 => "IPIP",
        6 => "TCP",
        17 => "UDP",
        41 => "IPv6",
        47 => "GRE",
        50 => "ESP",
        51 => "AH",
        58 => "ICMPv6",
        88 => "EIGRP",
        89 => "OSPF",
        103 => "PIM",
        112 => "VRRP",
        115 => "L2TP",
        132 => "SCTP",
        136 => "UDPLite",
        _ => return None,
    })
}

/// How far IPv6's extension headers are walked: as far as the kernel side walks them
/// (capture-ebpf/src/skb.rs). Real chains are one or two headers long.
const MAX_IPV6_EXTENSIONS: usize = 4;
const MAX_IPV6_HEADERS: usize = 128;

/// Where the payload of the last of IPv6's headers starts, and its protocol: the
/// extension headers after the fixed 40 bytes are walked (see [`MAX_IPV6_EXTENSIONS`]).
/// A chain that runs past the captured bytes or the cap, ESP or No Next Header ends the
/// walk at the header it reached.
fn ipv6_last_header(b: &[u8], first: u8) -> (usize, u8) {
    let (mut off, mut next) = (40usize, first);
    for _ in 0..MAX_IPV6_EXTENSIONS {
        let Some(h) = b.get(off..off + 2) else { break };
        let len = match next {
            // Hop-by-hop, routing, destination options, mobility, HIP, shim6.
            0 | 43 | 60 | 135 | 139 | 140 => (h[1] as usize + 1) * 8,
            // Fragment.
            44 => 8,
            // Authentication header.
            51 => (h[1] as usize + 2) * 4,
            _ => break,
        };
        if off + len > MAX_IPV6_HEADERS {
            break;
        }
        next = h[0];
        off += len;
    }
    (off, next)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: Proto,
    /// The IP protocol number (for IPv6, of the last header of its chain).
    pub ip_proto: u8,
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
                let (l3len, next) = ipv6_last_header(b, b[6]);
                (IpAddr::V6(src), IpAddr::V6(dst), next, l3len, 0, payload + 40)
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
            ip_proto: l4proto,
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

    /// An IPv6 packet whose extension headers `ext` ((next header, bytes after the first
    /// two)) precede `payload` of protocol `proto`.
    pub fn ip6(ext: &[(u8, usize)], proto: u8, payload: &[u8]) -> Vec<u8> {
        let mut chain = Vec::new();
        let mut nexts: Vec<u8> = ext.iter().map(|e| e.0).collect();
        nexts.push(proto);
        for (k, (_, len)) in ext.iter().enumerate() {
            let hdr_len = if nexts[k] == 51 { (len + 2) / 4 - 2 } else { (len + 2) / 8 - 1 };
            chain.extend_from_slice(&[nexts[k + 1], hdr_len as u8]);
            chain.extend(std::iter::repeat_n(0u8, *len));
        }
        let mut p = vec![0x60, 0, 0, 0, 0, 0, nexts[0], 64];
        p[4..6].copy_from_slice(&((chain.len() + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0xfd; 16]);
        p.extend_from_slice(&[0xfe; 16]);
        p.extend_from_slice(&chain);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn ipv6_extension_headers_are_walked_to_the_last_one() {
        // Hop-by-hop (8 bytes), then a fragment header (8), then VRRP.
        let p = ip6(&[(0, 6), (44, 6)], 112, b"\x31\x01advert");
        let pkt = Packet::parse(&p, p.len() as u32).unwrap();
        assert_eq!((pkt.proto, pkt.ip_proto, pkt.payload_offset), (Proto::Other(112), 112, 56));
        assert_eq!((pkt.payload(&p), pkt.payload_len), (&b"\x31\x01advert"[..], 8));
        // UDP behind a destination options header has its ports read.
        let mut udp = vec![0x04, 0xd2, 0x16, 0x2e, 0, 10, 0, 0];
        udp.extend_from_slice(b"hi");
        let p = ip6(&[(60, 14)], 17, &udp);
        let pkt = Packet::parse(&p, p.len() as u32).unwrap();
        assert_eq!((pkt.proto, pkt.sport, pkt.dport, pkt.payload_len), (Proto::Udp, 1234, 5678, 2));
        assert_eq!(pkt.payload(&p), b"hi");
        // An authentication header counts in 4-byte units.
        let p = ip6(&[(51, 10)], 89, b"ospf");
        let pkt = Packet::parse(&p, p.len() as u32).unwrap();
        assert_eq!((pkt.proto, pkt.payload_offset), (Proto::Other(89), 52));
    }

    #[test]
    fn an_ipv6_chain_past_the_cap_or_the_capture_ends_where_it_is() {
        // Five hop-by-hop headers: the walk stops after four, at the fifth.
        let p = ip6(&[(0, 6), (0, 6), (0, 6), (0, 6), (0, 6)], 112, b"x");
        let pkt = Packet::parse(&p, p.len() as u32).unwrap();
        assert_eq!((pkt.ip_proto, pkt.payload_offset), (0, 72));
        // One header longer than the cap is not walked into.
        let p = ip6(&[(0, 8 * 12 - 2)], 112, b"x");
        assert_eq!(Packet::parse(&p, p.len() as u32).unwrap().ip_proto, 0);
        // Cut inside the chain: what was reached.
        let p = ip6(&[(0, 6), (60, 6)], 17, &[0; 8]);
        let pkt = Packet::parse(&p[..49], p.len() as u32).unwrap();
        assert_eq!((pkt.ip_proto, pkt.payload_offset), (60, 48));
        // ESP is opaque: its payload starts after the fixed header.
        let p = ip6(&[], 50, b"secret");
        assert_eq!(Packet::parse(&p, p.len() as u32).unwrap().proto, Proto::Other(50));
    }

    #[test]
    fn protocols_are_named_where_known_and_numbered_otherwise() {
        let names: Vec<String> = [112, 89, 132, 47, 2, 253].into_iter().map(|n| Proto::Other(n).to_string()).collect();
        assert_eq!(names, ["VRRP", "OSPF", "SCTP", "GRE", "IGMP", "IP 253"]);
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(Packet::parse(&[], 0), Err(PacketError::Short(0)));
        assert_eq!(Packet::parse(&[0x45, 0], 2), Err(PacketError::Short(2)));
        assert_eq!(Packet::parse(&[0x12; 50], 50), Err(PacketError::Version(1)));
    }
}
