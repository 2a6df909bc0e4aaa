//! wgo-demo-app: the demo's small cluster application, in the spirit of the seed write-ups.
//!
//! Every node runs one, on UDP port 7000. Protocol (big-endian, bytes 0..4 are the type):
//! - `TASK` task u32 | from u8: node1 (the leader) hands out tasks round-robin; it retries
//!   a task with the same bytes every 150 ms until ACKed (at most 6 times).
//! - `ACK!` task u32 | from u8: a worker executed the task.
//! - `HB!!` from u8 | counter u32: every node to every other, every 100 ms.
//! - `VOTE` phase u8 (1 PREPARE, 2 PROMISE, 3 COMMIT, 4 ABORT) | ballot u32 | from u8 |
//!   reason u8 (ABORT: 1 member rejoined, 2 timeout): node1 coordinates back-to-back ballots
//!   among the nodes it believes are members (heard within 400 ms); voters promise after
//!   60 ms of "thinking"; a majority commits. A heartbeat from an ex-member arriving
//!   mid-vote aborts the ballot and restarts it: the useless abort the seed describes.
//! - `WHO?` block u32 | from u8 (broadcast) and `IHAV` block u32 | from u8 (unicast reply
//!   from the block's owner, node `block % n + 1`).
//!
//! It knows nothing of wgo: the faults are injected from outside, and wgo finds them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(about = "The demo's cluster application (see wgo's examples/demo.toml for its protocol)")]
struct Args {
    /// This node's number, 1-based; node k has address SUBNET.k.
    #[arg(long)]
    index: u8,
    #[arg(long)]
    nodes: u8,
    /// First three octets of the nodes' addresses.
    #[arg(long, default_value = "10.99.0")]
    subnet: String,
    #[arg(long, default_value_t = 7000)]
    port: u16,
    /// Crash (a real SIGSEGV, a write through a null pointer) this many seconds after starting.
    #[arg(long)]
    crash_after: Option<f64>,
}

const PREPARE: u8 = 1;
const PROMISE: u8 = 2;
const COMMIT: u8 = 3;
const ABORT: u8 = 4;
const REJOINED: u8 = 1;
const TIMEOUT: u8 = 2;

struct Ballot {
    number: u32,
    started: Instant,
    members: BTreeSet<u8>,
    promised: BTreeSet<u8>,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let octets: Vec<u8> =
        a.subnet.split('.').map(|x| x.parse()).collect::<Result<_, _>>().context("--subnet: three numbers like 10.99.0")?;
    anyhow::ensure!(octets.len() == 3, "--subnet: three numbers like 10.99.0");
    let addr = |k: u8| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(octets[0], octets[1], octets[2], k), a.port));
    let broadcast = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(octets[0], octets[1], octets[2], 255), a.port));
    let sock = UdpSocket::bind(("0.0.0.0", a.port)).with_context(|| format!("binding port {}", a.port))?;
    sock.set_broadcast(true)?;
    sock.set_read_timeout(Some(Duration::from_millis(2)))?;
    let me = a.index;
    let others: Vec<u8> = (1..=a.nodes).filter(|&k| k != me).collect();
    let leader = me == 1;
    let send = |to: SocketAddr, msg: &[u8]| {
        // A peer that is down or cut off is part of the story; keep going.
        let _ = sock.send_to(msg, to);
    };

    let start = Instant::now();
    let mut next_hb = start;
    let mut hb_counter = 0u32;
    let mut next_whohas = start + Duration::from_millis(37 * me as u64);
    let mut block_seed = 0x2545_F491_4F6C_DD1Du64 ^ me as u64;
    let mut promises_due: Vec<(Instant, u32)> = Vec::new();
    // Leader state.
    let mut next_task = start + Duration::from_millis(200);
    let mut task_no = 0u32;
    let mut pending: BTreeMap<u32, (u8, Instant, u32)> = BTreeMap::new(); // task -> (worker, last sent, attempts)
    let mut last_heard: BTreeMap<u8, Instant> = others.iter().map(|&k| (k, start)).collect();
    let mut members: BTreeSet<u8> = others.iter().copied().collect();
    let mut ballot: Option<Ballot> = None;
    let mut ballot_no = 0u32;
    let mut buf = [0u8; 1500];

    let task_msg = |t: u32| [b"TASK".as_slice(), &t.to_be_bytes(), &[1]].concat();
    let vote = |phase: u8, b: u32, reason: u8| [b"VOTE".as_slice(), &[phase], &b.to_be_bytes(), &[me, reason]].concat();

    let crash_at = a.crash_after.map(|s| start + Duration::from_secs_f64(s));
    loop {
        let now = Instant::now();
        if crash_at.is_some_and(|t| now >= t) {
            // SAFETY: none; the demo's crash variant wants this node to die of SIGSEGV.
            unsafe { std::ptr::null_mut::<u8>().write_volatile(1) };
        }
        if now >= next_hb {
            hb_counter += 1;
            let hb = [b"HB!!".as_slice(), &[me], &hb_counter.to_be_bytes()].concat();
            for &k in &others {
                send(addr(k), &hb);
            }
            next_hb = now + Duration::from_millis(100);
        }
        if now >= next_whohas {
            block_seed ^= block_seed << 13;
            block_seed ^= block_seed >> 7;
            block_seed ^= block_seed << 17;
            let block = (block_seed % 1000) as u32;
            send(broadcast, &[b"WHO?".as_slice(), &block.to_be_bytes(), &[me]].concat());
            next_whohas = now + Duration::from_millis(400);
        }
        promises_due.retain(|&(due, b)| {
            if now >= due {
                send(addr(1), &vote(PROMISE, b, 0));
                false
            } else {
                true
            }
        });
        if leader {
            if now >= next_task {
                task_no += 1;
                let worker = 2 + (task_no % (a.nodes as u32 - 1)) as u8;
                send(addr(worker), &task_msg(task_no));
                pending.insert(task_no, (worker, now, 1));
                next_task = now + Duration::from_millis(50);
            }
            pending.retain(|&t, (worker, sent, attempts)| {
                if now.duration_since(*sent) >= Duration::from_millis(150) {
                    if *attempts >= 6 {
                        return false;
                    }
                    send(addr(*worker), &task_msg(t));
                    *sent = now;
                    *attempts += 1;
                }
                true
            });
            // Membership: heard from within 400 ms.
            for (&k, &t) in &last_heard {
                if now.duration_since(t) > Duration::from_millis(400) {
                    members.remove(&k);
                }
            }
            let timed_out = ballot.as_ref().is_some_and(|b| now.duration_since(b.started) > Duration::from_millis(300));
            if timed_out {
                let b = ballot.take().expect("checked");
                for &k in &b.members {
                    send(addr(k), &vote(ABORT, b.number, TIMEOUT));
                }
            }
            if ballot.is_none() {
                ballot_no += 1;
                let b = Ballot { number: ballot_no, started: now, members: members.clone(), promised: BTreeSet::new() };
                for &k in &b.members {
                    send(addr(k), &vote(PREPARE, b.number, 0));
                }
                ballot = Some(b);
            }
        }

        let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
        let m = &buf[..n];
        if m.len() < 5 {
            continue;
        }
        let now = Instant::now();
        let u32_at = |o: usize| m.get(o..o + 4).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        match &m[..4] {
            b"TASK" => send(from, &[b"ACK!".as_slice(), &u32_at(4).to_be_bytes(), &[me]].concat()),
            b"ACK!" if leader => {
                pending.remove(&u32_at(4));
            }
            b"HB!!" if leader => {
                let k = m[4];
                last_heard.insert(k, now);
                if !members.contains(&k) {
                    members.insert(k);
                    // The bug: an ex-member coming back aborts the ballot in progress.
                    if let Some(b) = ballot.take() {
                        for &j in &b.members {
                            send(addr(j), &vote(ABORT, b.number, REJOINED));
                        }
                    }
                }
            }
            b"VOTE" if m.len() >= 11 => {
                let (phase, b, voter) = (m[4], u32_at(5), m[9]);
                if phase == PREPARE && !leader {
                    promises_due.push((now + Duration::from_millis(60), b));
                } else if phase == PROMISE
                    && leader
                    && let Some(cur) = ballot.as_mut().filter(|cur| cur.number == b)
                {
                    cur.promised.insert(voter);
                    // Majority of the members plus the coordinator itself.
                    if (cur.promised.len() + 1) * 2 > cur.members.len() + 1 {
                        let done = ballot.take().expect("current");
                        for &j in &done.members {
                            send(addr(j), &vote(COMMIT, done.number, 0));
                        }
                    }
                }
            }
            b"WHO?" if m.len() >= 9 => {
                let block = u32_at(4);
                if block % a.nodes as u32 + 1 == me as u32 && m[8] != me {
                    send(from, &[b"IHAV".as_slice(), &block.to_be_bytes(), &[me]].concat());
                }
            }
            _ => {}
        }
    }
}
