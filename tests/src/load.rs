//! Many simulated agents and a slowloris attacker, for the collector's load benchmark.
//! Every loop is bounded by a count or a deadline.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wgo::transport::ship::{self, ShipOptions, Source};
use wgo::transport::spool::{SpoolEntry, hex};
use wgo::transport::wire::Secret;

/// Agent `i`'s dump: `size` bytes that differ from every other agent's.
pub fn dump_bytes(i: usize, size: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    (0..size.div_ceil(8))
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .take(size)
        .collect()
}

/// Agent `i`'s node name.
pub fn agent_name(i: usize) -> String {
    format!("agent{i:04}")
}

/// Ships `count` dumps of `size` bytes at once, one thread each, as agents would after a
/// trigger; returns the names of those that were not delivered by `deadline`.
pub fn ship_all(to: SocketAddr, secret: &Secret, trigger_id: u64, count: usize, size: usize, deadline: Duration) -> Vec<String> {
    let end = Instant::now() + deadline;
    let failed = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for i in 0..count {
            let failed = &failed;
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn_scoped(s, move || {
                    let bytes = dump_bytes(i, size);
                    let entry = SpoolEntry {
                        node: agent_name(i),
                        trigger_id,
                        heard_ns: 0,
                        collector: to.to_string(),
                        size: size as u64,
                        sha256: hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
                        shipped: false,
                    };
                    let o = ShipOptions { secret, rate: 0, deadline: end, stop: None };
                    if let Err(e) = ship::ship(&entry, Source::Memory(&bytes), to, &o) {
                        failed.lock().expect("lock").push(format!("{}: {e}", entry.node));
                    }
                })
                .expect("spawning an agent thread");
        }
    });
    failed.into_inner().expect("lock")
}

/// Holds `count` connections open, each sending a valid frame length and then its frame a
/// byte at a time, replacing the ones the collector drops, until `stop` is set or `limit`
/// passes. Returns how many connections it opened in all.
pub fn slowloris(to: SocketAddr, count: usize, stop: &AtomicBool, limit: Duration) -> u64 {
    let end = Instant::now() + limit;
    let opened = AtomicU64::new(0);
    let byte = |k: usize| [0u8, 0, 1, 0].get(k).copied().unwrap_or(1);
    let mut conns: Vec<(TcpStream, usize)> = Vec::new();
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        while conns.len() < count {
            match TcpStream::connect_timeout(&to, Duration::from_millis(200)) {
                Ok(c) => {
                    opened.fetch_add(1, Ordering::Relaxed);
                    conns.push((c, 0));
                }
                Err(_) => break,
            }
        }
        conns.retain_mut(|(c, k)| {
            *k += 1;
            c.write_all(&[byte(*k - 1)]).is_ok()
        });
        std::thread::sleep(Duration::from_millis(500));
    }
    opened.into_inner()
}
