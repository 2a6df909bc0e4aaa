//! Synthetic clusters with known truth, for ground-truth tests and benchmarks.
//!
//! Nodes have clocks with offsets and drift. A leader hands out TASKs that workers ACK,
//! every node heartbeats every other, the leader broadcasts WHOHAS, and a TCP stream
//! runs with segments split (offload) and merged (coalescing). Faults are injected on
//! purpose and listed in [`Truth`]: drops (retransmitted after a timeout), a network
//! duplicate, a partition into two islands, and a recorder gap.

use std::net::Ipv4Addr;

use wgo::analysis::trace::{Dir, NodeInfo, RawPacket, Trace, TraceBuilder};

pub const SPEC: &str = r#"
name = "sim"

[[message]]
name = "TASK"
transport = "udp"
match = [{ offset = 0, ascii = "TASK" }]
display = "TASK #{task}"
fields = [{ name = "task", offset = 4, width = 4 }]

[[message]]
name = "ACK"
transport = "udp"
match = [{ offset = 0, ascii = "ACK!" }]
display = "ACK #{task}"
fields = [{ name = "task", offset = 4, width = 4 }]

[[message]]
name = "HB"
transport = "udp"
match = [{ offset = 0, ascii = "HB!!" }]
display = "HB {counter}"
fields = [{ name = "counter", offset = 4, width = 4 }]

[[message]]
name = "WHOHAS"
transport = "udp"
match = [{ offset = 0, ascii = "WHO?" }]
display = "WHOHAS block {block}"
fields = [{ name = "block", offset = 4, width = 4 }]

[[rule]]
name = "ack-after-task"
event = { message = "ACK", dir = "send" }
after = { message = "TASK", dir = "recv" }
same_node = true
key = ["task"]

[[invariant]]
name = "every-task-acked"
kind = "answered"
request = "TASK"
response = "ACK"
key = ["task"]
within_ms = 100
"#;

/// One-way network delay, ns: every delivered message arrives this long after its send.
pub const MIN_DELAY_NS: i64 = 50_000;
pub const MAX_DELAY_NS: i64 = 2_000_000;

/// Deterministic xorshift, so scenarios are reproducible without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo).max(1) as u64) as i64
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() % 1_000_000) as f64 / 1e6 < p
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub nodes: usize,
    pub seed: u64,
    /// Length of the scenario, ns.
    pub duration_ns: i64,
    pub task_every_ns: i64,
    pub heartbeat_every_ns: i64,
    pub broadcast_every_ns: i64,
    pub drop_rate: f64,
    pub max_offset_ns: i64,
    pub max_drift: f64,
    /// Partition: nodes [0, split) vs [split, n) between these true times (ns from start).
    pub partition: Option<(usize, i64, i64)>,
    pub duplicate: bool,
    pub recorder_gap: bool,
    pub tcp: bool,
    /// Receives recorded this many at a time 50 ms before they happened: each contradicts
    /// program order and its message (a cycle in the happens-before graph).
    pub misdated_receives: usize,
    /// A stalled node: it sends nothing between these true times (ns from start), while
    /// what others send it still arrives (a stopped process's kernel takes it).
    pub stall: Option<(usize, i64, i64)>,
    /// A lossy link: this share of what node `from` sends node `to` is lost.
    pub lossy: Option<(usize, usize, f64)>,
    /// After the TCP rounds node 1 closes the connection (FIN), and node 0 still sends three
    /// segments, which node 1's kernel answers with a RST.
    pub closed_connection: bool,
    /// Clock steps: (node, true time from start ns, size ns). From that time on the node's
    /// clock reads `size` more (an NTP step, a VM migration).
    pub clock_steps: Vec<(usize, i64, i64)>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            nodes: 5,
            seed: 1,
            duration_ns: 4_000_000_000,
            task_every_ns: 20_000_000,
            heartbeat_every_ns: 100_000_000,
            broadcast_every_ns: 500_000_000,
            drop_rate: 0.02,
            max_offset_ns: 500_000_000,
            max_drift: 200e-6,
            partition: Some((2, 2_000_000_000, 3_000_000_000)),
            duplicate: true,
            recorder_gap: true,
            tcp: true,
            misdated_receives: 0,
            stall: None,
            lossy: None,
            closed_connection: false,
            clock_steps: Vec::new(),
        }
    }
}

/// What the scenario did, by message uid (bytes 8..16 of every payload).
#[derive(Clone, Debug, Default)]
pub struct Truth {
    /// Per node: (offset at the start, drift): raw = true + offset + drift·(true − start).
    pub clocks: Vec<(i64, f64)>,
    /// The clock steps, as configured: (node, true time ns, size ns).
    pub clock_steps: Vec<(usize, i64, i64)>,
    pub start_ns: i64,
    /// (send uid, attempt, receiving node) the network dropped; attempt counts resends of a uid.
    pub network_losses: Vec<(u64, u32, usize)>,
    /// When each of `network_losses` was sent (true time, ns).
    pub network_loss_sent_ns: Vec<i64>,
    /// (node, true from, true to): where a node's recorder lost records, from the last record
    /// it kept before them to the first after them, on the CPU of the lost ones (what a
    /// sequence gap shows).
    pub recorder_blind: Vec<(usize, i64, i64)>,
    /// uid of the message received twice.
    pub duplicates: Vec<u64>,
    /// uids sent more than once (identical payload: retransmissions), with how often.
    pub retransmissions: Vec<(u64, u32)>,
    /// uids sent 5+ times within 1 s.
    pub storms: Vec<u64>,
    pub partition: Option<(Vec<usize>, Vec<usize>, i64, i64)>,
    /// Nodes whose recorder lost records.
    pub recorder_loss_nodes: Vec<usize>,
    /// uids whose receive exists on the network but was lost by the recorder.
    pub unrecorded_receives: Vec<u64>,
    /// (send uid, receive node, TCP) for every delivered message, for order checks.
    pub delivered: Vec<(u64, usize)>,
    /// TASK uid → its ACK uid, for rule checks.
    pub ack_of_task: Vec<(u64, u64)>,
    /// TCP: (uids of sends, uid of receive) where the receive carries their bytes.
    pub tcp_pairs: Vec<(Vec<u64>, u64)>,
    /// TASK sends (uid, attempt) not answered within the invariant's 100 ms.
    pub unanswered: Vec<(u64, u32)>,
    /// The stalled node and its true span.
    pub stall: Option<(usize, i64, i64)>,
    /// uids of TCP segments sent to a connection its peer had closed.
    pub closed_sends: Vec<u64>,
}

struct Pkt {
    node: usize,
    t_true: i64,
    dir: Dir,
    data: Vec<u8>,
    orig_len: u32,
    uid: u64,
}

pub fn addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, (i + 1) as u8)
}

pub fn udp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, ip_id: u16, payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&ip_id.to_be_bytes());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// A TCP segment whose payload is `len` bytes, of which `captured` are included.
#[allow(clippy::too_many_arguments)]
pub fn tcp4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    ip_id: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    len: usize,
    captured: &[u8],
) -> (Vec<u8>, u32) {
    let total = 40 + len;
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0];
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&ip_id.to_be_bytes());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ack.to_be_bytes());
    p.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    p.extend_from_slice(&captured[..captured.len().min(len)]);
    (p, total as u32)
}

fn payload(tag: &[u8; 4], n: u32, uid: u64) -> Vec<u8> {
    let mut p = tag.to_vec();
    p.extend_from_slice(&n.to_be_bytes());
    p.extend_from_slice(&uid.to_be_bytes());
    p.resize(32, b'.');
    p
}

/// Reads the uid a simulated packet carries (UDP payload bytes 8..16, TCP: seq-derived).
pub fn uid_of(trace: &Trace, id: usize) -> u64 {
    let p = trace.payload(&trace.events[id]);
    p.get(8..16).map_or(u64::MAX, |b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
}

pub fn generate(cfg: &Config) -> (Trace, Truth) {
    let mut rng = Rng::new(cfg.seed);
    let n = cfg.nodes;
    let start = 1_700_000_000_000_000_000i64;
    let mut truth = Truth { start_ns: start, clock_steps: cfg.clock_steps.clone(), ..Truth::default() };
    for _ in 0..n {
        let off = rng.range(-cfg.max_offset_ns, cfg.max_offset_ns + 1);
        let drift = (rng.range(-1_000_000, 1_000_001) as f64 / 1e6) * cfg.max_drift;
        truth.clocks.push((off, drift));
    }
    let mut pkts: Vec<Pkt> = Vec::new();
    let mut uid = 0u64;
    let mut ip_id = vec![0u16; n];
    let island = |i: usize| cfg.partition.is_some_and(|(split, _, _)| i >= split);
    let cut =
        |a: usize, b: usize, t: i64| cfg.partition.is_some_and(|(_, p0, p1)| island(a) != island(b) && t >= start + p0 && t < start + p1);
    let delay = |rng: &mut Rng| rng.range(MIN_DELAY_NS, MAX_DELAY_NS);
    if let Some((split, p0, p1)) = cfg.partition {
        truth.partition = Some(((0..split).collect(), (split..n).collect(), start + p0, start + p1));
    }

    let last_drop = start + cfg.duration_ns - 200_000_000;
    // Sends a UDP datagram (again, when `again` names an earlier uid and attempt); returns
    // its uid and where and when it arrived.
    let mut udp = |pkts: &mut Vec<Pkt>,
                   truth: &mut Truth,
                   rng: &mut Rng,
                   from: usize,
                   to: &[usize],
                   dst: Ipv4Addr,
                   t: i64,
                   tag: &[u8; 4],
                   num: u32,
                   again: Option<(u64, u32)>|
     -> (u64, Vec<(usize, i64)>) {
        let (u, attempt) = match again {
            Some(a) => a,
            None => {
                uid += 1;
                (uid, 0)
            }
        };
        ip_id[from] = ip_id[from].wrapping_add(1);
        let data = udp4(addr(from), dst, 7000, 7000, ip_id[from], &payload(tag, num, u));
        let len = data.len() as u32;
        pkts.push(Pkt { node: from, t_true: t, dir: Dir::Send, data: data.clone(), orig_len: len, uid: u });
        let mut arrived = Vec::new();
        for &r in to {
            let lossy = cfg.lossy.is_some_and(|(a, b, rate)| a == from && b == r && t < last_drop && rng.chance(rate));
            if cut(from, r, t) || lossy || (t < last_drop && rng.chance(cfg.drop_rate)) {
                truth.network_losses.push((u, attempt, r));
                truth.network_loss_sent_ns.push(t);
                continue;
            }
            let at = t + delay(rng);
            pkts.push(Pkt { node: r, t_true: at, dir: Dir::Recv, data: data.clone(), orig_len: len, uid: u });
            truth.delivered.push((u, r));
            arrived.push((r, at));
        }
        (u, arrived)
    };

    // TASK/ACK with retransmission after 150 ms until answered or the scenario ends.
    let mut task = 0u32;
    let mut t = start + 10_000_000;
    let mut dup_done = !cfg.duplicate;
    while t < start + cfg.duration_ns - 300_000_000 {
        task += 1;
        let worker = 1 + (task as usize % (n - 1));
        let mut tsend = t;
        let mut task_uid = None;
        let mut attempts = 0u32;
        let mut answered_at = None;
        let first_send = tsend;
        loop {
            let again = task_uid.map(|u| (u, attempts));
            let (u, arr) = udp(&mut pkts, &mut truth, &mut rng, 0, &[worker], addr(worker), tsend, b"TASK", task, again);
            task_uid = Some(u);
            attempts += 1;
            if let Some(&(_, at)) = arr.first() {
                if !dup_done {
                    // The network delivers this datagram twice.
                    let data = pkts.iter().rev().find(|p| p.uid == u).expect("just pushed").data.clone();
                    let len = data.len() as u32;
                    pkts.push(Pkt { node: worker, t_true: at + 300_000, dir: Dir::Recv, data, orig_len: len, uid: u });
                    truth.duplicates.push(u);
                    dup_done = true;
                }
                let ack_t = at + rng.range(100_000, 1_000_000);
                let (a, arr2) = udp(&mut pkts, &mut truth, &mut rng, worker, &[0], addr(0), ack_t, b"ACK!", task, None);
                truth.ack_of_task.push((u, a));
                if let Some(&(_, back)) = arr2.first() {
                    answered_at = Some(back);
                    break;
                }
            }
            tsend += 150_000_000;
            if tsend > start + cfg.duration_ns - 200_000_000 {
                break;
            }
        }
        let u = task_uid.expect("sent at least once");
        if attempts > 1 {
            truth.retransmissions.push((u, attempts));
            let times: Vec<i64> = (0..attempts as i64).map(|k| first_send + k * 150_000_000).collect();
            if (0..times.len()).any(|i| times.get(i + 4).is_some_and(|x| x - times[i] <= 1_000_000_000)) {
                truth.storms.push(u);
            }
        }
        // Every send not answered within 100 ms.
        for k in 0..attempts {
            let sent = first_send + k as i64 * 150_000_000;
            if answered_at.is_none_or(|a| a > sent + 100_000_000 || a < sent) {
                truth.unanswered.push((u, k));
            }
        }
        t = t.max(tsend) + cfg.task_every_ns;
    }

    // Heartbeats, everyone to everyone.
    let mut counter = 0u32;
    let mut t = start + 5_000_000;
    while t < start + cfg.duration_ns {
        for a in 0..n {
            for b in 0..n {
                if a != b {
                    counter += 1;
                    let jitter = rng.range(0, 5_000_000);
                    udp(&mut pkts, &mut truth, &mut rng, a, &[b], addr(b), t + jitter, b"HB!!", counter, None);
                }
            }
        }
        t += cfg.heartbeat_every_ns;
    }

    // Broadcasts from node 0.
    let mut block = 0u32;
    let mut t = start + 7_000_000;
    let others: Vec<usize> = (1..n).collect();
    while t < start + cfg.duration_ns {
        block += 1;
        udp(&mut pkts, &mut truth, &mut rng, 0, &others, Ipv4Addr::new(10, 0, 0, 255), t, b"WHO?", block, None);
        t += cfg.broadcast_every_ns;
    }

    // TCP node 0 → node 1: big sends split on receive, small sends merged on receive.
    if cfg.tcp && n >= 2 && !cut(0, 1, start + 100_000_000) {
        let mut seq = 1_000_000u32;
        let mut t = start + 50_000_000;
        for round in 0..20 {
            if cut(0, 1, t) {
                t += 50_000_000;
                continue;
            }
            let d = delay(&mut rng);
            if round % 2 == 0 {
                uid += 1;
                let su = uid;
                ip_id[0] = ip_id[0].wrapping_add(1);
                let mut cap = vec![b'T'; 16];
                cap[8..16].copy_from_slice(&su.to_be_bytes());
                let (data, len) = tcp4(addr(0), addr(1), 40000, 8000, ip_id[0], seq, 1, 0x18, 3000, &cap);
                pkts.push(Pkt { node: 0, t_true: t, dir: Dir::Send, data, orig_len: len, uid: su });
                for (k, (off, l)) in [(0u32, 1448usize), (1448, 1448), (2896, 104)].into_iter().enumerate() {
                    uid += 1;
                    let mut cap = vec![b'R'; 16];
                    cap[8..16].copy_from_slice(&uid.to_be_bytes());
                    let (data, len) =
                        tcp4(addr(0), addr(1), 40000, 8000, ip_id[0].wrapping_add(k as u16), seq.wrapping_add(off), 1, 0x10, l, &cap);
                    pkts.push(Pkt { node: 1, t_true: t + d + k as i64 * 10_000, dir: Dir::Recv, data, orig_len: len, uid });
                    truth.tcp_pairs.push((vec![su], uid));
                }
                seq = seq.wrapping_add(3000);
            } else {
                let mut sends = Vec::new();
                for k in 0..3u32 {
                    uid += 1;
                    ip_id[0] = ip_id[0].wrapping_add(1);
                    let mut cap = vec![b'S'; 16];
                    cap[8..16].copy_from_slice(&uid.to_be_bytes());
                    let (data, len) = tcp4(addr(0), addr(1), 40000, 8000, ip_id[0], seq.wrapping_add(500 * k), 1, 0x18, 500, &cap);
                    pkts.push(Pkt { node: 0, t_true: t + k as i64 * 20_000, dir: Dir::Send, data, orig_len: len, uid });
                    sends.push(uid);
                }
                uid += 1;
                let mut cap = vec![b'M'; 16];
                cap[8..16].copy_from_slice(&uid.to_be_bytes());
                let (data, len) = tcp4(addr(0), addr(1), 40000, 8000, ip_id[0], seq, 1, 0x10, 1500, &cap);
                pkts.push(Pkt { node: 1, t_true: t + 40_000 + d, dir: Dir::Recv, data, orig_len: len, uid });
                truth.tcp_pairs.push((sends, uid));
                seq = seq.wrapping_add(1500);
            }
            t += 50_000_000;
        }
        if cfg.closed_connection {
            // Node 1 closes: its FIN, then node 0's segments meet a socket that is gone.
            let mut cap = vec![b'F'; 16];
            uid += 1;
            cap[8..16].copy_from_slice(&uid.to_be_bytes());
            let (fin, len) = tcp4(addr(1), addr(0), 8000, 40000, 1, 1, seq, 0x11, 0, &cap);
            pkts.push(Pkt { node: 1, t_true: t, dir: Dir::Send, data: fin.clone(), orig_len: len, uid });
            pkts.push(Pkt { node: 0, t_true: t + 500_000, dir: Dir::Recv, data: fin, orig_len: len, uid });
            for k in 0..3i64 {
                uid += 1;
                ip_id[0] = ip_id[0].wrapping_add(1);
                let mut cap = vec![b'C'; 16];
                cap[8..16].copy_from_slice(&uid.to_be_bytes());
                let at = t + 10_000_000 + k * 5_000_000;
                let (data, len) = tcp4(addr(0), addr(1), 40000, 8000, ip_id[0], seq, 1, 0x18, 200, &cap);
                pkts.push(Pkt { node: 0, t_true: at, dir: Dir::Send, data, orig_len: len, uid });
                truth.closed_sends.push(uid);
                seq = seq.wrapping_add(200);
                // The RST comes from node 1's kernel, with no socket: only node 0 records it.
                uid += 1;
                let (rst, len) = tcp4(addr(1), addr(0), 8000, 40000, 2, 2, seq, 0x14, 0, &[]);
                pkts.push(Pkt { node: 0, t_true: at + 600_000, dir: Dir::Recv, data: rst, orig_len: len, uid });
            }
        }
    }

    // The stalled node sends nothing meanwhile: its sends, and their arrivals, never were.
    if let Some((k, p0, p1)) = cfg.stall {
        let (from, to) = (start + p0, start + p1);
        truth.stall = Some((k, from, to));
        let unsent: Vec<(u64, i64)> = pkts
            .iter()
            .filter(|p| p.node == k && p.dir == Dir::Send && (from..to).contains(&p.t_true))
            .map(|p| (p.uid, p.t_true))
            .collect();
        pkts.retain(|p| {
            let sent_then = |&(u, t): &(u64, i64)| p.uid == u && (t..=t + 2_100_000).contains(&p.t_true);
            !unsent.iter().any(sent_then)
        });
    }

    // Recorder gap: node 2 loses the records of three consecutive receives mid-run.
    let mut lost_records = std::collections::HashSet::new();
    if cfg.recorder_gap && n >= 3 {
        let mut recvs: Vec<usize> = (0..pkts.len())
            .filter(|&i| pkts[i].node == 2 && pkts[i].dir == Dir::Recv && pkts[i].data.get(28..32) == Some(b"HB!!"))
            .collect();
        recvs.sort_by_key(|&i| pkts[i].t_true);
        let mid = recvs.len() / 3;
        for &i in recvs.iter().skip(mid).take(3) {
            lost_records.insert(i);
            truth.unrecorded_receives.push(pkts[i].uid);
        }
        truth.recorder_loss_nodes.push(2);
    }

    // Raw times, CPUs and per-CPU sequence numbers, node by node.
    let mut b = TraceBuilder::default();
    for node in 0..n {
        let (off, drift) = truth.clocks[node];
        let steps: Vec<(i64, i64)> = cfg.clock_steps.iter().filter(|s| s.0 == node).map(|s| (start + s.1, s.2)).collect();
        let raw = |t: i64| t + off + (drift * (t - start) as f64) as i64 + steps.iter().filter(|s| t >= s.0).map(|s| s.1).sum::<i64>();
        let mut mine: Vec<usize> = (0..pkts.len()).filter(|&i| pkts[i].node == node).collect();
        mine.sort_by_key(|&i| pkts[i].t_true);
        let name = format!("node{}", node + 1);
        let first = mine.first().map_or(start, |&i| raw(pkts[i].t_true));
        let last = mine.last().map_or(start, |&i| raw(pkts[i].t_true));
        b.begin_node(NodeInfo { name, window: (first, last), ..NodeInfo::default() }).expect("unique names");
        let mut seqs = [0u64; 2];
        // Per CPU: the true time of the last record kept, and where a run of lost ones began.
        let mut kept_at: [Option<i64>; 2] = [None; 2];
        let mut blind_from: [Option<i64>; 2] = [None; 2];
        // Every k-th receive of each node is misdated, spread over the whole run.
        let receives = mine.iter().filter(|&&i| pkts[i].dir == Dir::Recv).count();
        let every = (receives * n).checked_div(cfg.misdated_receives).map_or(usize::MAX, |k| k.max(1));
        let mut nth_receive = 0usize;
        for i in mine {
            let p = &pkts[i];
            let cpu = (rng.next_u64() % 2) as usize;
            let seq = seqs[cpu];
            seqs[cpu] += 1;
            if lost_records.contains(&i) {
                blind_from[cpu] = blind_from[cpu].or(Some(kept_at[cpu].unwrap_or(start)));
                continue;
            }
            if let Some(from) = blind_from[cpu].take() {
                truth.recorder_blind.push((node, from, p.t_true));
            }
            kept_at[cpu] = Some(p.t_true);
            let mut t = raw(p.t_true);
            if p.dir == Dir::Recv {
                nth_receive += 1;
                if nth_receive.is_multiple_of(every) {
                    t -= 50_000_000;
                }
            }
            b.packet(&RawPacket {
                t_raw: t,
                seq: Some(seq),
                cpu: cpu as u32,
                dir: Some(p.dir),
                orig_len: p.orig_len,
                data: &p.data,
                drop: None,
            });
        }
        // Lost records after the last one kept: blind to the end.
        truth.recorder_blind.extend(blind_from.iter().flatten().map(|&from| (node, from, i64::MAX)));
        b.end_node();
    }
    (b.finish(), truth)
}

impl Truth {
    /// The network losses that would have arrived (MIN_DELAY_NS to MAX_DELAY_NS after their
    /// send) while their receiver's recorder was blind, or up to `margin_ns` before that.
    /// With no margin, these are the losses no analysis can call lost: a missing receive
    /// there may be the recorder's loss.
    pub fn losses_into_blind(&self, margin_ns: i64) -> std::collections::BTreeSet<(u64, u32, usize)> {
        let near = |r: usize, sent: i64| {
            let (a, b) = (sent + MIN_DELAY_NS, sent + MAX_DELAY_NS);
            self.recorder_blind.iter().any(|&(node, from, to)| node == r && a <= to && from - margin_ns <= b)
        };
        self.network_losses.iter().zip(&self.network_loss_sent_ns).filter(|(l, sent)| near(l.2, **sent)).map(|(l, _)| *l).collect()
    }
}

/// Node clock minus reference clock at true time `t`, from the truth.
pub fn true_offset(truth: &Truth, node: usize, reference: usize, t: i64) -> i64 {
    let raw = |n: usize| truth.clocks[n].0 + (truth.clocks[n].1 * (t - truth.start_ns) as f64) as i64;
    raw(node) - raw(reference)
}

/// Writes each node of a trace as a dump, through the same writer as `wgo record`
/// (for benchmarks and tests of reading).
pub fn write_dumps(trace: &Trace, dir: &std::path::Path) -> std::io::Result<()> {
    use capture_ebpf::Direction;
    use wgo::dump::{DumpInfo, DumpWriter, WritePacket};
    std::fs::create_dir_all(dir)?;
    for (n, node) in trace.nodes.iter().enumerate() {
        let f = std::fs::File::create(dir.join(format!("{}.pcapng", node.name)))?;
        // As the node recorded them: a step back its reader undid is put back.
        let recorded = |t: i64| t - node.reversals.iter().filter(|r| t >= r.first_after).map(|r| r.undone_ns).sum::<i64>();
        let info = DumpInfo {
            node: node.name.clone(),
            snaplen: 64,
            start_wall_ns: node.window.0.max(0) as u64,
            end_wall_ns: recorded(node.window.1).max(0) as u64,
            ..DumpInfo::default()
        };
        let mut w = DumpWriter::new(f, &info).map_err(std::io::Error::other)?;
        for e in trace.node_events(n as u16) {
            let dir = if e.dir == Dir::Send { Direction::Egress } else { Direction::Ingress };
            w.packet(&WritePacket {
                wall_ns: recorded(e.t_raw) as u64,
                direction: Some(dir),
                seq: e.seq,
                cpu: e.cpu as u32,
                ktime_ns: None,
                orig_len: e.orig_len,
                ip: trace.data(e),
                drop_reason: None,
            })
            .map_err(std::io::Error::other)?;
        }
        w.finish(&info).map_err(std::io::Error::other)?;
    }
    Ok(())
}
