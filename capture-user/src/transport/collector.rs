//! The collector: receives dumps from agents after a trigger, checks them, and writes
//! `DIR/<node>.pcapng` plus `DIR/manifest.json`. Restartable: partial transfers resume.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::manifest::Manifest;
use super::spool::hex;
use super::wire::{self, Frame, Heard, Secret};
use crate::clock;

/// Largest dump accepted from one agent.
pub const MAX_DUMP_BYTES: u64 = 64 << 30;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Wait for these nodes by name.
    Names(Vec<String>),
    /// Wait for this many nodes.
    Count(usize),
    /// Wait for every node that says it heard the trigger.
    Heard,
}

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("missing dumps from: {}", .0.join(", "))]
    Missing(Vec<String>),
}

pub struct CollectOptions {
    pub out: PathBuf,
    pub secret: Secret,
    pub expect: Expect,
    pub wait: Duration,
    /// The trigger this collector waits for; None: adopt the manifest's, or accept any.
    pub trigger_id: Option<u64>,
    pub trigger_sent_ns: Option<i64>,
    pub progress: bool,
}

struct State {
    manifest: Manifest,
    trigger_id: Option<u64>,
    bars: Option<indicatif::MultiProgress>,
    /// Protocol errors seen, for a rate-limited log.
    rejected: u64,
    last_reject_log: Option<Instant>,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CollectError {
    let what = what.into();
    move |source| CollectError::Io { what, source }
}

/// Receives dumps on `listener` (and heard messages on `udp`) until every expected node
/// has delivered or `wait` passes. Returns the manifest; missing nodes are an error.
pub fn collect(opts: CollectOptions, listener: TcpListener, udp: UdpSocket) -> Result<Manifest, CollectError> {
    std::fs::create_dir_all(opts.out.join(".partial")).map_err(io(format!("creating {}", opts.out.display())))?;
    let mut manifest = Manifest::load(&opts.out).unwrap_or_default();
    let prior = manifest.trigger_id.as_deref().and_then(|h| u64::from_str_radix(h, 16).ok());
    let trigger_id = match (opts.trigger_id, prior) {
        (Some(new), Some(old)) if new != old => {
            // A new trigger: start a new manifest (old dumps stay on disk until overwritten).
            manifest = Manifest::default();
            Some(new)
        }
        (Some(id), _) | (None, Some(id)) => Some(id),
        (None, None) => None,
    };
    manifest.trigger_id = trigger_id.map(|id| format!("{id:016x}"));
    if opts.trigger_sent_ns.is_some() {
        manifest.trigger_sent_ns = opts.trigger_sent_ns;
    }
    manifest.expected = Some(match &opts.expect {
        Expect::Names(n) => serde_json::json!(n),
        Expect::Count(c) => serde_json::json!(c),
        Expect::Heard => serde_json::json!("every node that heard the trigger"),
    });
    manifest.complete = false;
    let state = Arc::new(Mutex::new(State {
        manifest,
        trigger_id,
        bars: opts.progress.then(indicatif::MultiProgress::new),
        rejected: 0,
        last_reject_log: None,
    }));
    let secret = Arc::new(opts.secret.clone());
    let out = Arc::new(opts.out.clone());

    // Heard messages.
    udp.set_read_timeout(Some(Duration::from_millis(100))).map_err(io("configuring the heard socket"))?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let heard_thread = {
        let (state, secret, stop) = (state.clone(), secret.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((n, from)) = udp.recv_from(&mut buf) else { continue };
                let mut st = state.lock().expect("lock");
                match Heard::decode(&buf[..n], &secret) {
                    Ok(h) if st.trigger_id.is_none_or(|id| id == h.trigger_id) => {
                        let node = st.manifest.node(&h.node);
                        node.heard_ns = Some(h.heard_ns);
                        node.addr.get_or_insert_with(|| from.ip().to_string());
                    }
                    Ok(_) => {}
                    Err(e) => reject(&mut st, &format!("heard datagram from {from}: {e}")),
                }
            }
        })
    };

    listener.set_nonblocking(true).map_err(io("configuring the listener"))?;
    let deadline = Instant::now() + opts.wait;
    let mut quiet_since = Instant::now();
    let mut last_seen = 0usize;
    loop {
        match listener.accept() {
            Ok((stream, from)) => {
                let (state, secret, out) = (state.clone(), secret.clone(), out.clone());
                std::thread::spawn(move || {
                    if let Err(e) = serve(stream, from, &state, &secret, &out) {
                        reject(&mut state.lock().expect("lock"), &format!("connection from {from}: {e}"));
                    }
                });
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => tracing::warn!("accept: {e}"),
        }
        let (done, seen) = {
            let st = state.lock().expect("lock");
            let arrived = |n: &str| st.manifest.nodes.iter().any(|x| x.name == n && x.arrived_ns.is_some());
            let arrived_count = st.manifest.nodes.iter().filter(|n| n.arrived_ns.is_some()).count();
            let done = match &opts.expect {
                Expect::Names(names) => names.iter().all(|n| arrived(n)),
                Expect::Count(c) => arrived_count >= *c,
                // Everyone who heard has delivered, and nobody new spoke up for 2 s.
                Expect::Heard => {
                    arrived_count > 0
                        && st.manifest.nodes.iter().all(|n| n.arrived_ns.is_some())
                        && quiet_since.elapsed() > Duration::from_secs(2)
                }
            };
            (done, st.manifest.nodes.len())
        };
        if seen != last_seen {
            last_seen = seen;
            quiet_since = Instant::now();
        }
        if done || Instant::now() > deadline {
            break;
        }
        // Short: both a new connection and the last arrival are noticed within it.
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = heard_thread.join();

    let mut st = state.lock().expect("lock");
    let mut missing: Vec<String> = match &opts.expect {
        Expect::Names(names) => {
            names.iter().filter(|n| !st.manifest.nodes.iter().any(|x| &&x.name == n && x.arrived_ns.is_some())).cloned().collect()
        }
        Expect::Count(_) | Expect::Heard => st.manifest.nodes.iter().filter(|n| n.arrived_ns.is_none()).map(|n| n.name.clone()).collect(),
    };
    if let Expect::Count(c) = opts.expect {
        let known = st.manifest.nodes.len();
        if known < c {
            missing.push(format!("{} more node(s) that never answered", c - known));
        }
    }
    st.manifest.missing = missing.clone();
    st.manifest.complete = missing.is_empty();
    st.manifest.save(&opts.out).map_err(io("writing manifest.json"))?;
    if missing.is_empty() { Ok(st.manifest.clone()) } else { Err(CollectError::Missing(missing)) }
}

fn reject(st: &mut State, what: &str) {
    st.rejected += 1;
    // At most one line per second, with the running count.
    if st.last_reject_log.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
        tracing::warn!("ignored {what} ({} rejected so far)", st.rejected);
        st.last_reject_log = Some(Instant::now());
    }
}

/// One agent's connection: authenticate both ways, resume, receive, verify, publish.
fn serve(mut s: TcpStream, from: SocketAddr, state: &Mutex<State>, secret: &Secret, out: &Path) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let Frame::Hello { node, nonce } = wire::read_frame(&mut s)? else { return Err(bad("expected hello")) };
    let cnonce: [u8; 16] = wire::random_bytes();
    s.write_all(&Frame::Challenge { nonce: cnonce, mac: wire::collector_mac(secret, &nonce, &cnonce) }.encode())?;
    let Frame::Offer(offer) = wire::read_frame(&mut s)? else { return Err(bad("expected offer")) };
    if !wire::check_agent_mac(secret, &nonce, &cnonce, &node, &offer) {
        return Err(bad(&format!("{node} failed authentication (wrong secret?)")));
    }
    let refuse = |s: &mut TcpStream, reason: String| -> std::io::Result<()> {
        s.write_all(&Frame::Refuse { reason: reason.clone() }.encode())?;
        Err(bad(&reason))
    };
    {
        let st = state.lock().expect("lock");
        if let Some(id) = st.trigger_id
            && id != offer.trigger_id
        {
            drop(st);
            return refuse(&mut s, format!("this collector waits for trigger {id:016x}, not {:016x}", offer.trigger_id));
        }
    }
    if offer.size > MAX_DUMP_BYTES {
        return refuse(&mut s, format!("dump of {} bytes is larger than the {} allowed", offer.size, MAX_DUMP_BYTES));
    }
    let part = out.join(".partial").join(format!("{node}-{:016x}-{}.part", offer.trigger_id, &hex(&offer.sha256)[..16]));
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0).min(offer.size);
    // Private: a dump holds payload bytes.
    let mut f =
        std::os::unix::fs::OpenOptionsExt::mode(std::fs::OpenOptions::new().create(true).read(true).append(true), 0o600).open(&part)?;
    f.set_len(have)?;
    // Hash as the bytes arrive (a resumed prefix first), so nothing is read twice.
    let mut hash = <sha2::Sha256 as sha2::Digest>::new();
    {
        let mut prefix = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&part)?);
        std::io::copy(&mut prefix, &mut HashSink(&mut hash))?;
    }
    s.write_all(&Frame::Resume { offset: have }.encode())?;

    let bar = state.lock().expect("lock").bars.as_ref().map(|m| {
        let b = m.add(indicatif::ProgressBar::new(offer.size));
        b.set_style(
            indicatif::ProgressStyle::with_template("{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        b.set_prefix(node.clone());
        b.set_position(have);
        b
    });
    let mut got = have;
    let mut buf = vec![0u8; 1 << 20];
    while got < offer.size {
        let want = buf.len().min((offer.size - got) as usize);
        let n = s.read(&mut buf[..want])?;
        if n == 0 {
            f.sync_data()?;
            return Err(bad(&format!("{node} disconnected at {got} of {} bytes (it will resume)", offer.size)));
        }
        f.write_all(&buf[..n])?;
        sha2::Digest::update(&mut hash, &buf[..n]);
        got += n as u64;
        if let Some(b) = &bar {
            b.set_position(got);
        }
    }
    f.sync_all()?;
    drop(f);
    let digest: [u8; 32] = sha2::Digest::finalize(hash).into();
    let ok = digest == offer.sha256;
    if ok {
        let dest = out.join(format!("{node}.pcapng"));
        std::fs::rename(&part, &dest)?;
        let mut st = state.lock().expect("lock");
        st.trigger_id.get_or_insert(offer.trigger_id);
        if st.manifest.trigger_id.is_none() {
            st.manifest.trigger_id = Some(format!("{:016x}", offer.trigger_id));
        }
        let n = st.manifest.node(&node);
        n.addr = Some(from.ip().to_string());
        n.bytes = Some(offer.size);
        n.sha256 = Some(hex(&offer.sha256));
        n.heard_ns = Some(offer.heard_ns);
        n.arrived_ns = Some(clock::wall_ns() as i64);
        n.file = Some(format!("{node}.pcapng"));
        let _ = st.manifest.save(out);
        if let Some(b) = &bar {
            b.finish();
        }
        tracing::info!("{node}: {} bytes arrived, digest ok", offer.size);
    } else {
        let _ = std::fs::remove_file(&part);
        tracing::warn!("{node}: digest mismatch, asking for it again");
    }
    s.write_all(&Frame::Done { ok, mac: wire::done_mac(secret, &nonce, ok) }.encode())?;
    Ok(())
}

struct HashSink<'a>(&'a mut sha2::Sha256);

impl std::io::Write for HashSink<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        sha2::Digest::update(self.0, b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The collector address to name in a trigger for agents at `dest`: `listen` itself, or,
/// when it is unspecified (0.0.0.0 or ::), the local address this host reaches `dest` from.
pub fn address_for(listen: SocketAddr, dest: SocketAddr) -> std::io::Result<SocketAddr> {
    if !listen.ip().is_unspecified() {
        return Ok(listen);
    }
    let probe = UdpSocket::bind(if dest.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
    probe.set_broadcast(true)?;
    // A UDP connect sends nothing: it only picks the route, and with it the local address.
    probe.connect(dest)?;
    Ok(SocketAddr::new(probe.local_addr()?.ip(), listen.port()))
}

/// Sends each (destination, datagram, is broadcast) `copies` times.
pub fn send_trigger(datagrams: &[(SocketAddr, Vec<u8>, bool)], copies: u32, gap: Duration) -> std::io::Result<()> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.set_broadcast(true)?;
    let sock6 = if datagrams.iter().any(|(a, _, _)| a.is_ipv6()) { Some(UdpSocket::bind("[::]:0")?) } else { None };
    for k in 0..copies {
        for (a, bytes, broadcast) in datagrams {
            let s = if a.is_ipv6() { sock6.as_ref().expect("bound") } else { &sock };
            if let Err(e) = s.send_to(bytes, a) {
                tracing::warn!("{} to {a}: {e}", if *broadcast { "broadcast" } else { "trigger" });
            }
        }
        if k + 1 < copies {
            std::thread::sleep(gap);
        }
    }
    Ok(())
}
