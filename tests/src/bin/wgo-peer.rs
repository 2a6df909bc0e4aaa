//! wgo-peer: traffic for wgo's tests, benchmarks and demo: echo servers, clients, floods.
//! Works over IPv4 and IPv6. Every client loop is bounded by a count or a duration.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Traffic generator and echo peer for wgo's tests and demo")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Echo every UDP datagram back to its sender.
    UdpEcho {
        #[arg(long)]
        bind: SocketAddr,
    },
    /// Send COUNT requests of SIZE bytes, one at a time, each waiting for its echo.
    UdpRequest {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: u64,
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// Text the payload starts with (the rest is a counter and filler).
        #[arg(long, default_value = "wgo-udp")]
        tag: String,
    },
    /// Request/response transactions for DURATION seconds; prints the count.
    UdpRr {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        duration: f64,
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// Send COUNT datagrams (`TAG #i`, SIZE bytes) from an unconnected socket, INTERVAL_MS
    /// apart, expecting no replies; prints how many the kernel took.
    UdpSend {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value = "wgo-send")]
        tag: String,
        #[arg(long, default_value_t = 5)]
        interval_ms: u64,
    },
    /// Bind, ask for a receive buffer of RCVBUF bytes, read nothing for WAIT_MS, then read
    /// until IDLE_MS pass with nothing; prints how many datagrams it got. Prints `ready` once bound.
    UdpSink {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long)]
        rcvbuf: Option<usize>,
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
        #[arg(long, default_value_t = 1000)]
        idle_ms: u64,
    },
    /// Send datagrams as fast as possible for DURATION seconds (no replies expected).
    UdpFlood {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        duration: f64,
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// A small request/ACK application: send `REQ #n` to the peers in turn every
    /// INTERVAL, answer every REQ with `ACK #n`. Runs until killed.
    Chatter {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long, value_delimiter = ',')]
        peers: Vec<SocketAddr>,
        #[arg(long, default_value_t = 20)]
        interval_ms: u64,
    },
    /// Crash after AFTER_MS: a write through a null pointer (a real SIGSEGV, past Rust's
    /// own handler, as a C program would die).
    Crash {
        #[arg(long, default_value_t = 0)]
        after_ms: u64,
    },
    /// After AFTER_MS, allocate and touch MB mebibytes, a mebibyte at a time (to meet a memory limit).
    Hog {
        #[arg(long, default_value_t = 0)]
        after_ms: u64,
        #[arg(long, default_value_t = 1024)]
        mb: usize,
    },
    /// Receive one TCP stream into FILE and fsync it (a plain-copy baseline for shipping).
    TcpSink {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Send FILE over one TCP connection (a plain-copy baseline for shipping).
    TcpSource {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        file: std::path::PathBuf,
    },
    /// COUNT simulated agents ship a dump of SIZE bytes each, at once, to a collector.
    Agents {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        secret_file: std::path::PathBuf,
        #[arg(long, default_value_t = 1)]
        trigger_id: u64,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        size: usize,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300.0)]
        deadline: f64,
    },
    /// Hold COUNT connections open, each sending a byte every half second, for DURATION seconds.
    Slowloris {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        duration: f64,
    },
    /// Echo TCP streams.
    TcpEcho {
        #[arg(long)]
        bind: SocketAddr,
    },
    /// Write simulated cluster dumps (about EVENTS events) and their protocol spec, for benchmarks.
    Synth {
        #[arg(long)]
        events: u64,
        #[arg(long)]
        out: std::path::PathBuf,
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Receives recorded 50 ms early, each a contradiction in the order.
        #[arg(long, default_value_t = 0)]
        misdated: usize,
        /// node2's clock steps this far (ns; negative: back) 30% into the recording.
        #[arg(long, allow_hyphen_values = true)]
        step_ns: Option<i64>,
    },
    /// Write two nodes' dumps of COUNT byte-identical datagrams each way (keep-alives
    /// without a counter, one a millisecond), for the matching benchmark.
    SynthIdentical {
        #[arg(long)]
        count: u64,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Echo every IPv4 packet of IP protocol PROTO (a raw socket: no ports) back to its
    /// sender, same protocol. Prints `ready` once the socket is open.
    RawEcho {
        #[arg(long)]
        proto: u8,
    },
    /// Send COUNT IPv4 packets of IP protocol PROTO (`TAG #i`, SIZE bytes after the IP
    /// header) from a raw socket, one at a time, each waiting for its echo (resent every
    /// 200 ms until the echo comes, for at most 10 s).
    RawRequest {
        #[arg(long)]
        to: std::net::Ipv4Addr,
        #[arg(long)]
        proto: u8,
        #[arg(long, default_value_t = 1)]
        count: u64,
        #[arg(long, default_value_t = 32)]
        size: usize,
        #[arg(long, default_value = "wgo-raw")]
        tag: String,
    },
    /// Analyze DIR's dumps once, then write the JSON report and the Perfetto trace from
    /// the finished analysis, ROUNDS times each, alternating, as `wgo report` writes
    /// files; prints `json|perfetto SECONDS CPU_SECONDS BYTES` per write, for benchmarks.
    WriteBench {
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Connect, send BYTES bytes of a known pattern, read them back, close.
    TcpSend {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1000)]
        bytes: usize,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Agents { to, secret_file, trigger_id, count, size, deadline } => {
            let secret = wgo::transport::secret::load_secret(&secret_file)?;
            let failed = wgo_tests::load::ship_all(to, &secret, trigger_id, count, size, Duration::from_secs_f64(deadline));
            if !failed.is_empty() {
                anyhow::bail!("{} of {count} dumps not delivered: {}", failed.len(), failed.join("; "));
            }
            println!("{count} dumps delivered");
        }
        Cmd::Slowloris { to, count, duration } => {
            let stop = std::sync::atomic::AtomicBool::new(false);
            let opened = wgo_tests::load::slowloris(to, count, &stop, Duration::from_secs_f64(duration));
            println!("{opened} connections opened");
        }
        Cmd::UdpEcho { bind } => {
            let sock = UdpSocket::bind(bind).with_context(|| format!("binding {bind}"))?;
            let mut buf = vec![0u8; 65536];
            loop {
                let (n, from) = sock.recv_from(&mut buf)?;
                sock.send_to(&buf[..n], from)?;
            }
        }
        Cmd::UdpRequest { to, count, size, tag } => {
            let sock = client_socket(to)?;
            sock.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut buf = vec![0u8; 65536];
            for i in 0..count {
                let msg = payload(&tag, i, size);
                sock.send(&msg)?;
                let n = sock.recv(&mut buf).with_context(|| format!("no echo for request {i} from {to}"))?;
                anyhow::ensure!(buf[..n] == msg[..], "echo of request {i} differs");
            }
            println!("{count} requests answered");
        }
        Cmd::UdpRr { to, duration, size } => {
            let sock = client_socket(to)?;
            sock.set_read_timeout(Some(Duration::from_secs(1)))?;
            let msg = vec![0x5a; size];
            let mut buf = vec![0u8; 65536];
            let end = Instant::now() + Duration::from_secs_f64(duration);
            let mut done = 0u64;
            while Instant::now() < end {
                sock.send(&msg)?;
                if sock.recv(&mut buf).is_ok() {
                    done += 1;
                }
            }
            println!("{done}");
        }
        Cmd::UdpSend { to, count, size, tag, interval_ms } => {
            let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
            let sock = UdpSocket::bind(bind)?;
            let mut sent = 0u64;
            for i in 0..count {
                if sock.send_to(&payload(&tag, i, size), to).is_ok() {
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(interval_ms));
            }
            println!("{sent}");
        }
        Cmd::UdpSink { bind, rcvbuf, wait_ms, idle_ms } => {
            let sock = UdpSocket::bind(bind).with_context(|| format!("binding {bind}"))?;
            if let Some(bytes) = rcvbuf {
                let v = bytes as libc::c_int;
                // SAFETY: a valid socket and a c_int option value of the right size.
                let r = unsafe {
                    libc::setsockopt(
                        std::os::fd::AsRawFd::as_raw_fd(&sock),
                        libc::SOL_SOCKET,
                        libc::SO_RCVBUF,
                        (&v as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                anyhow::ensure!(r == 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
            }
            println!("ready");
            std::io::stdout().flush()?;
            std::thread::sleep(Duration::from_millis(wait_ms));
            sock.set_read_timeout(Some(Duration::from_millis(idle_ms)))?;
            let mut buf = vec![0u8; 65536];
            let mut got = 0u64;
            while sock.recv(&mut buf).is_ok() {
                got += 1;
            }
            println!("{got}");
        }
        Cmd::UdpFlood { to, duration, size } => {
            let sock = client_socket(to)?;
            let msg = vec![0xa5; size];
            let end = Instant::now() + Duration::from_secs_f64(duration);
            let mut sent = 0u64;
            while Instant::now() < end {
                for _ in 0..256 {
                    // A full socket buffer is expected under a flood; keep going.
                    if sock.send(&msg).is_ok() {
                        sent += 1;
                    }
                }
            }
            println!("{sent}");
        }
        Cmd::Crash { after_ms } => {
            std::thread::sleep(Duration::from_millis(after_ms));
            // SAFETY: none; the point is to die of SIGSEGV.
            unsafe { std::ptr::null_mut::<u8>().write_volatile(1) };
            unreachable!("a write through a null pointer returned");
        }
        Cmd::Hog { after_ms, mb } => {
            std::thread::sleep(Duration::from_millis(after_ms));
            let mut held: Vec<Vec<u8>> = Vec::new();
            for _ in 0..mb {
                held.push(vec![1u8; 1 << 20]);
            }
            println!("held {} MiB", held.len());
        }
        Cmd::Chatter { bind, peers, interval_ms } => {
            let sock = UdpSocket::bind(bind).with_context(|| format!("binding {bind}"))?;
            sock.set_read_timeout(Some(Duration::from_millis(interval_ms.max(1))))?;
            let mut buf = [0u8; 2048];
            let mut n = 0u64;
            let mut next = Instant::now();
            loop {
                if Instant::now() >= next && !peers.is_empty() {
                    let to = peers[(n as usize) % peers.len()];
                    // A peer that is down or cut off is expected in a misbehaving cluster.
                    let _ = sock.send_to(&payload("REQ", n, 32), to);
                    n += 1;
                    next += Duration::from_millis(interval_ms);
                }
                if let Ok((len, from)) = sock.recv_from(&mut buf)
                    && let Some(rest) = buf[..len].strip_prefix(b"REQ #")
                {
                    let num: String = rest.iter().take_while(|c| c.is_ascii_digit()).map(|&c| c as char).collect();
                    let _ = sock.send_to(&payload("ACK", num.parse().unwrap_or(0), 32), from);
                }
            }
        }
        Cmd::TcpSink { bind, out } => {
            let listener = TcpListener::bind(bind).with_context(|| format!("binding {bind}"))?;
            let (mut s, _) = listener.accept()?;
            let mut f = std::fs::File::create(&out)?;
            let n = std::io::copy(&mut s, &mut f)?;
            f.sync_all()?;
            println!("{n}");
        }
        Cmd::TcpSource { to, file } => {
            let mut s = TcpStream::connect(to).with_context(|| format!("connecting to {to}"))?;
            let mut f = std::fs::File::open(&file)?;
            std::io::copy(&mut f, &mut s)?;
        }
        Cmd::TcpEcho { bind } => {
            let listener = TcpListener::bind(bind).with_context(|| format!("binding {bind}"))?;
            for stream in listener.incoming() {
                let mut s = stream?;
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        }
        Cmd::WriteBench { dir, rounds } => {
            use wgo::analysis::{Inputs, analyze, spec::Spec, trace::Trace};
            let mut files: Vec<std::path::PathBuf> =
                std::fs::read_dir(&dir)?.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "pcapng")).collect();
            files.sort();
            let spec = Spec::load(&dir.join("sim.toml"))?;
            let a = analyze(Trace::read_files(&files)?, Inputs { spec: Some(spec), missing_nodes: vec![] });
            for _ in 0..rounds {
                for (what, path) in [("json", dir.join("out.json")), ("perfetto", dir.join("out.pftrace"))] {
                    let _ = std::fs::remove_file(&path);
                    // CPU time too: on a shared machine it varies far less than wall time.
                    let cpu = || {
                        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                        // SAFETY: ts is a valid timespec to write into.
                        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
                        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
                    };
                    let (t, c) = (std::time::Instant::now(), cpu());
                    wgo::outfile::write_atomically(&path, |f| match what {
                        "json" => wgo::report::json::write_json(&a, f),
                        _ => wgo::report::perfetto::write_perfetto(&a, f),
                    })?;
                    let (secs, cpu_secs) = (t.elapsed().as_secs_f64(), cpu() - c);
                    println!("{what} {secs:.3} {cpu_secs:.3} {}", std::fs::metadata(&path)?.len());
                    std::fs::remove_file(&path)?;
                }
            }
        }
        Cmd::Synth { events, out, nodes, misdated, step_ns } => {
            use wgo_tests::sim;
            // Heartbeats dominate: n(n-1) pairs, 2 events each per interval. At least 2 s
            // (room for tasks, retries and a partition), at most 400 k events a second.
            let per_interval = (nodes * (nodes - 1) * 2) as f64;
            let duration_ns = (2e9f64).max(events as f64 / 400_000.0 * 1e9) as i64;
            let heartbeat_every_ns = ((per_interval * duration_ns as f64 / events.max(1) as f64) as i64).max(1_000);
            let cfg = sim::Config {
                nodes,
                duration_ns,
                heartbeat_every_ns,
                drop_rate: 0.01,
                partition: Some((nodes / 2, duration_ns / 2, duration_ns / 2 + 500_000_000)),
                misdated_receives: misdated,
                clock_steps: step_ns.map(|size| (1, duration_ns * 3 / 10, size)).into_iter().collect(),
                ..sim::Config::default()
            };
            let (trace, _) = sim::generate(&cfg);
            sim::write_dumps(&trace, &out).with_context(|| format!("writing dumps to {}", out.display()))?;
            std::fs::write(out.join("sim.toml"), sim::SPEC)?;
            println!("{}", trace.events.len());
        }
        Cmd::SynthIdentical { count, out } => {
            use capture_ebpf::Direction;
            use wgo::dump::{DumpInfo, DumpWriter, WritePacket};
            let (a, b) = (wgo_tests::sim::addr(0), wgo_tests::sim::addr(1));
            let ping = wgo_tests::sim::udp4(a, b, 7000, 7000, 0, b"PING");
            let pong = wgo_tests::sim::udp4(b, a, 7000, 7000, 0, b"PONG");
            std::fs::create_dir_all(&out)?;
            let t0 = 1_800_000_000_000_000_000u64;
            let end = t0 + count * 1_000_000 + 1_000_000;
            // (node, what it sends, what it receives, when in each millisecond it sends)
            for (name, sent, received, at) in [("n1", &ping, &pong, 0u64), ("n2", &pong, &ping, 500_000)] {
                let info = DumpInfo { node: name.into(), snaplen: 64, start_wall_ns: t0, end_wall_ns: end, ..DumpInfo::default() };
                let f = std::io::BufWriter::new(std::fs::File::create(out.join(format!("{name}.pcapng")))?);
                let mut w = DumpWriter::new(f, &info)?;
                let mut seq = 0;
                for i in 0..count {
                    let ms = t0 + i * 1_000_000;
                    // Its own send, and the other's send of this millisecond 300 us after it left.
                    let mut events =
                        [(ms + at, Direction::Egress, sent), (ms + (at + 500_000) % 1_000_000 + 300_000, Direction::Ingress, received)];
                    events.sort_by_key(|e| e.0);
                    for (wall_ns, direction, ip) in events {
                        seq += 1;
                        w.packet(&WritePacket {
                            wall_ns,
                            direction: Some(direction),
                            seq,
                            cpu: 0,
                            ktime_ns: None,
                            orig_len: ip.len() as u32,
                            ip,
                            drop_reason: None,
                        })?;
                    }
                }
                w.finish(&info)?;
            }
            println!("{}", 4 * count);
        }
        Cmd::RawEcho { proto } => {
            let sock = raw_socket(proto)?;
            println!("ready");
            std::io::stdout().flush()?;
            let mut buf = vec![0u8; 65536];
            loop {
                // An IPv4 raw socket reads whole packets, IP header included.
                let (n, from) = sock.recv_from(&mut buf)?;
                let ihl = ((buf[0] & 0x0f) as usize) * 4;
                if n >= ihl {
                    sock.send_to(&buf[ihl..n], from)?;
                }
            }
        }
        Cmd::RawRequest { to, proto, count, size, tag } => {
            let sock = raw_socket(proto)?;
            sock.set_read_timeout(Some(Duration::from_millis(200)))?;
            let mut buf = vec![0u8; 65536];
            let give_up = Instant::now() + Duration::from_secs(10);
            for i in 0..count {
                let msg = payload(&tag, i, size);
                'resend: loop {
                    anyhow::ensure!(Instant::now() < give_up, "no echo for request {i} from {to}");
                    sock.send_to(&msg, SocketAddr::from((to, 0)))?;
                    while let Ok((n, from)) = sock.recv_from(&mut buf) {
                        let ihl = ((buf[0] & 0x0f) as usize) * 4;
                        if from.ip() == to && buf.get(ihl..n) == Some(&msg[..]) {
                            break 'resend;
                        }
                    }
                }
            }
            println!("{count} requests answered");
        }
        Cmd::TcpSend { to, bytes } => {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).with_context(|| format!("connecting to {to}"))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let data: Vec<u8> = (0..bytes).map(|i| b"wgo-tcp-"[i % 8]).collect();
            s.write_all(&data)?;
            let mut back = vec![0u8; bytes];
            s.read_exact(&mut back).context("reading the echo")?;
            anyhow::ensure!(back == data, "TCP echo differs");
            println!("{bytes} bytes echoed");
        }
    }
    Ok(())
}

/// An IPv4 raw socket for IP protocol `proto`, driven through std's UdpSocket: its
/// send_to/recv_from/timeouts are the plain sendto/recvfrom/SO_RCVTIMEO a raw socket takes
/// (the port in the address is ignored; the kernel writes the IP header on sends).
fn raw_socket(proto: u8) -> anyhow::Result<UdpSocket> {
    // SAFETY: socket(2) with plain integer arguments; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, proto as libc::c_int) };
    anyhow::ensure!(fd >= 0, "a raw socket for IP protocol {proto}: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a socket just opened here, owned by nothing else.
    Ok(UdpSocket::from(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }))
}

fn client_socket(to: SocketAddr) -> anyhow::Result<UdpSocket> {
    let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
    let sock = UdpSocket::bind(bind)?;
    sock.connect(to).with_context(|| format!("connecting to {to}"))?;
    Ok(sock)
}

/// `TAG #i ` followed by filler up to `size` bytes.
fn payload(tag: &str, i: u64, size: usize) -> Vec<u8> {
    let mut p = format!("{tag} #{i} ").into_bytes();
    p.resize(size.max(p.len()), b'.');
    p
}
