//! Helpers the integration tests share: where the binaries are, root checks, temporary
//! directories, recording nodes, and reading dumps back with tshark and with wgo.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::bins::wgo;
use crate::testbed::{Node, Testbed, WgoProcess};

/// These tests load eBPF and create namespaces: without root they cannot mean anything.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the BPF integration tests must run as root (cargo xtask test does, in CI)");
}

pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wgo-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Starts `wgo record` on a node's cgroup and waits until the programs are attached.
pub fn start_record(node: &Node, out: &Path, extra: &[&str]) -> WgoProcess {
    WgoProcess::spawn(
        Command::new(wgo())
            .args(["record", "--node", &node.name, "--cgroup"])
            .arg(&node.cgroup)
            .arg("--out")
            .arg(out)
            .args(extra)
            .env("WGO_LOG", "info"),
        "recording",
        Duration::from_secs(15),
    )
    .expect("wgo record starts")
}

/// Records every node into DIR/<node>.pcapng while `traffic` runs, then stops them all.
pub fn record_all(bed: &Testbed, dir: &Path, traffic: impl FnOnce()) {
    let recs: Vec<WgoProcess> =
        bed.nodes.iter().map(|n| start_record(n, &dir.join(format!("{}.pcapng", n.name)), &["--ring-seconds", "120"])).collect();
    std::thread::sleep(Duration::from_millis(200));
    traffic();
    for r in recs {
        let (status, _, err) = r.stop(Duration::from_secs(30)).expect("wgo record stops");
        assert!(status.success(), "wgo record failed: {err}");
    }
}

/// One packet as tshark decodes it from our pcapng.
#[derive(Debug, Clone)]
pub struct Tshark {
    pub outbound: bool,
    pub src: String,
    pub dst: String,
    pub proto: String,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub len: usize,
    pub cap_len: usize,
    pub payload: Vec<u8>,
    pub cpu: u32,
    pub seq: u64,
    pub icmp_type: Option<u32>,
    pub tcp_flags: Option<u32>,
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap()).collect()
}

/// Reads a pcapng with tshark, the real peer, and returns every packet.
pub fn tshark(path: &Path) -> Vec<Tshark> {
    let fields = [
        "frame.packet_flags_direction",
        "ip.src",
        "ipv6.src",
        "ip.dst",
        "ipv6.dst",
        "_ws.col.Protocol",
        "udp.srcport",
        "tcp.srcport",
        "udp.dstport",
        "tcp.dstport",
        "frame.len",
        "frame.cap_len",
        "udp.payload",
        "tcp.payload",
        "data.data",
        "frame.interface_queue",
        "frame.packet_id",
        "icmp.type",
        "icmpv6.type",
        "tcp.flags",
    ];
    let mut cmd = Command::new("tshark");
    // VRRP undissected: the tests' raw VRRP packets carry test bytes, read as `data.data`.
    cmd.args(["-n", "--disable-protocol", "vrrp", "-r"]).arg(path).args(["-T", "fields", "-E", "separator=|", "-E", "occurrence=f"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("tshark runs");
    assert!(out.status.success(), "tshark failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split('|').collect();
            let or = |a: &str, b: &str| if a.is_empty() { b.to_string() } else { a.to_string() };
            let num = |s: &str| if s.is_empty() { None } else { Some(s.parse().unwrap()) };
            let hexnum = |s: &str| if s.is_empty() { None } else { Some(u32::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()) };
            let payload = [f[12], f[13], f[14]].into_iter().find(|s| !s.is_empty()).map(hex).unwrap_or_default();
            Tshark {
                outbound: hexnum(f[0]).unwrap_or(0) & 3 == 2,
                src: or(f[1], f[2]),
                dst: or(f[3], f[4]),
                proto: f[5].to_string(),
                sport: num(&or(f[6], f[7])),
                dport: num(&or(f[8], f[9])),
                len: f[10].parse().unwrap(),
                cap_len: f[11].parse().unwrap(),
                payload,
                cpu: f[15].parse().unwrap(),
                seq: f[16].parse().unwrap(),
                icmp_type: num(&or(f[17], f[18])).map(u32::from),
                tcp_flags: hexnum(f[19]),
            }
        })
        .collect()
}

/// The `wgo:key=value` metadata and drop count of a dump, read with wgo's own reader.
pub struct DumpStats {
    pub node: String,
    pub isb_drops: u64,
    pub evicted_by_size: u64,
    pub packets: u64,
}

pub fn dump_stats(path: &Path) -> DumpStats {
    use wgo::dump::pcapng::{Block, ISB_IFDROP, Reader};
    use wgo::dump::{keys, wgo_comments};
    let f = std::fs::File::open(path).unwrap();
    let mut r = Reader::new(std::io::BufReader::new(f));
    let mut s = DumpStats { node: String::new(), isb_drops: 0, evicted_by_size: 0, packets: 0 };
    while let Some(b) = r.next_block().unwrap() {
        match b {
            Block::Section { options } => {
                for (k, v) in wgo_comments(&options) {
                    if k == keys::NODE {
                        s.node = v.to_string();
                    }
                }
            }
            Block::Packet(_) => s.packets += 1,
            Block::Statistics { options, .. } => {
                s.isb_drops = options.read_u64(options.find(ISB_IFDROP).unwrap()).unwrap();
                for (k, v) in wgo_comments(&options) {
                    if k == keys::EVICTED_BY_SIZE {
                        s.evicted_by_size = v.parse().unwrap();
                    }
                }
            }
            _ => {}
        }
    }
    s
}

/// Programs bpftool lists on a cgroup.
pub fn attached_programs(cgroup: &Path) -> String {
    let out = Command::new("bpftool").args(["cgroup", "show"]).arg(cgroup).output().expect("bpftool runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
