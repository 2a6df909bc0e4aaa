//! The agent: records a cgroup until a valid trigger arrives, then dumps to its spool,
//! ships to the collector, applies the stop policy to the application, and exits; an armed
//! agent records again and waits for the next incident.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::recorder::{RecordOptions, Recorder};
use super::stop::{StopPolicy, apply_policy};
use super::watch::{AutoTrigger, Watch};
use crate::clock;
use crate::dump::keys;
use crate::transport::ship::{self, ShipError, ShipOptions};
use crate::transport::spool::{self, SpoolEntry};
use crate::transport::wire::{Heard, ProtoError, Secret, Trigger};

pub struct AgentOptions {
    pub record: RecordOptions,
    pub secret: Secret,
    pub trigger_port: u16,
    pub on_trigger: StopPolicy,
    pub app_cgroup: Option<PathBuf>,
    pub spool: PathBuf,
    pub ship_rate: u64,
    pub ship_deadline: Duration,
    /// Triggers whose send time is further than this from our clock are stale.
    pub trigger_window: Duration,
    /// Recording goes on this long after a trigger before the dump: the aftermath.
    pub after: Duration,
    /// Press the button ourselves when the application crashes.
    pub arm: Option<Arming>,
}

/// An armed agent: what it watches for, and where its own trigger goes.
#[derive(Clone, Debug)]
pub struct Arming {
    pub on: Vec<AutoTrigger>,
    /// The collector the trigger names (`wgo serve`).
    pub collector: SocketAddr,
    /// The other agents: (address, whether it is a broadcast address).
    pub to: Vec<(SocketAddr, bool)>,
    /// No trigger of our own within this long after the last one this agent handled.
    pub cooldown: Duration,
}

/// Copies of a trigger this agent sends, and the gap between them.
const TRIGGER_COPIES: u32 = 5;
const TRIGGER_GAP: Duration = Duration::from_millis(100);

/// Counts of ignored trigger datagrams, by reason.
#[derive(Default, Debug)]
struct Ignored {
    malformed: u64,
    unsigned: u64,
    stale: u64,
    replayed: u64,
    /// Further copies of triggers heard in this run: expected, not logged.
    copies: u64,
    logged: Option<Instant>,
}

impl Ignored {
    fn count(&mut self, e: &ProtoError, from: SocketAddr) {
        match e {
            ProtoError::Signature => self.unsigned += 1,
            ProtoError::Stale(_) => self.stale += 1,
            _ => self.malformed += 1,
        }
        self.log(&format!("{e} from {from}"));
    }
    fn log(&mut self, last: &str) {
        // Rate-limited: at most one line per 10 s.
        if self.logged.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            tracing::warn!(
                "ignored trigger datagram: {last} (so far: {} malformed, {} badly signed, {} stale, {} replayed)",
                self.malformed,
                self.unsigned,
                self.stale,
                self.replayed
            );
            self.logged = Some(Instant::now());
        }
    }
}

/// Trigger ids this agent handled: in this run, and before it (from its spool).
struct Handled {
    ids: Mutex<BTreeSet<u64>>,
    /// Those the spool held at the start: hearing one again is a replay.
    replays: BTreeSet<u64>,
}

struct HeardTrigger {
    trigger: Trigger,
    from: SocketAddr,
    heard_ns: i64,
}

/// Listens for triggers; passes the first valid, unhandled one to the agent.
fn listen(sock: UdpSocket, secret: Secret, window_ns: i64, handled: &Handled, tx: mpsc::Sender<HeardTrigger>, stop: &AtomicBool) {
    let mut ignored = Ignored::default();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
        let now = clock::wall_ns() as i64;
        match Trigger::decode(&buf[..n], &secret, now, window_ns) {
            Ok(t) if handled.replays.contains(&t.id) => {
                // Handled before this agent started (its dump is in the spool): a replay.
                ignored.replayed += 1;
                ignored.log(&format!("trigger {:016x} from {from} was already handled", t.id));
            }
            Ok(t) if handled.ids.lock().expect("lock").contains(&t.id) => {
                // A trigger goes out in several copies (and ours come back to us): the
                // copies of one heard in this run are no replay, and no news.
                ignored.copies += 1;
                tracing::debug!("trigger {:016x} from {from}: a copy of one already heard", t.id);
            }
            Ok(t) if t.collector.is_none() => {
                // Agents ship only to the collector a signed trigger names: one that names
                // none would send our dump wherever the datagram seems to come from.
                ignored.malformed += 1;
                ignored.log(&format!("trigger {:016x} from {from} names no collector", t.id));
            }
            Ok(t) => {
                handled.ids.lock().expect("lock").insert(t.id);
                let _ = tx.send(HeardTrigger { trigger: t, from: SocketAddr::new(from.ip().to_canonical(), from.port()), heard_ns: now });
            }
            Err(e) => ignored.count(&e, from),
        }
    }
}

pub fn run(opts: AgentOptions, stop: &AtomicBool) -> anyhow::Result<()> {
    spool::create_spool_dir(&opts.spool).with_context(|| format!("creating spool {}", opts.spool.display()))?;
    if let Some(app) = &opts.app_cgroup {
        super::cgroup::check_v2(app).with_context(|| format!("--app-cgroup {}", app.display()))?;
        // An earlier incident's freeze would leave the app (and whatever is started in it
        // again) stopped: starting to record again is the way out.
        if super::stop::thaw(app)? {
            tracing::warn!("{} was frozen (an earlier incident's --on-trigger freeze): thawed it", app.display());
        }
    }
    let entries = spool::spool_entries(&opts.spool)?;
    // Triggers whose dumps are in the spool were handled before this start: hearing one
    // again is a replay.
    let replays: BTreeSet<u64> = entries.iter().map(|e| e.trigger_id).collect();
    let handled = Handled { ids: Mutex::new(replays.clone()), replays };
    let mut last_trigger_ns = entries.iter().map(|e| e.heard_ns).max();
    let sock = trigger_socket(opts.trigger_port).with_context(|| format!("binding trigger port {}", opts.trigger_port))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let sender = sock.try_clone()?;
    let node = opts.record.node.clone();
    let mut watch = match (&opts.arm, &opts.app_cgroup) {
        (Some(arm), Some(app)) => Some(Watch::new(app, &node, &arm.on)?),
        (Some(_), None) => anyhow::bail!("an armed agent needs the application's cgroup"),
        _ => None,
    };
    let start_recording = |watch: &Option<Watch>| -> anyhow::Result<Recorder> {
        let mut recorder = Recorder::start(&opts.record)?;
        recorder.exclude_port(opts.trigger_port)?;
        if let (Some(w), Some(app)) = (watch, &opts.app_cgroup)
            && w.wants_signals()
        {
            recorder.watch_signals(app).context("watching the application for crashes")?;
        }
        Ok(recorder)
    };
    let mut recorder = start_recording(&watch)?;
    let (tx, rx) = mpsc::channel();
    let listener_stop = AtomicBool::new(false);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let (secret, window) = (opts.secret.clone(), opts.trigger_window.as_nanos() as i64);
        let (ls, hd) = (&listener_stop, &handled);
        scope.spawn(move || listen(sock, secret, window, hd, tx, ls));
        // Dumps an earlier run left unshipped (it was killed while shipping, or gave up):
        // shipped now, beside the recording, each to the collector its trigger named.
        let leftovers: Vec<SpoolEntry> = entries.into_iter().filter(|e| !e.shipped).collect();
        if !leftovers.is_empty() {
            let o =
                ShipOptions { secret: &opts.secret, rate: opts.ship_rate, deadline: Instant::now() + opts.ship_deadline, stop: Some(stop) };
            let spool = &opts.spool;
            scope.spawn(move || ship_leftovers(leftovers, spool, &o));
        }
        let armed = match &opts.arm {
            Some(a) => format!("; armed: triggers on {:?}, naming collector {}", a.on, a.collector),
            None => String::new(),
        };
        super::notify::ready(&format!(
            "agent {node}, cgroup {}; waiting for a trigger on UDP port {}{armed}",
            opts.record.cgroup.display(),
            opts.trigger_port
        ));
        // An armed agent handles one incident after another; any other handles one, and exits.
        let incidents = || -> anyhow::Result<()> {
            loop {
                let Some(heard) = wait_for_trigger(&opts, &mut recorder, watch.as_mut(), &rx, &sender, &handled, last_trigger_ns, stop)?
                else {
                    return Ok(());
                };
                let heard_ns = heard.heard_ns;
                // Further triggers (and our own repeats) are ignored while this one is handled.
                let result = on_trigger(&opts, recorder, heard, stop);
                if opts.arm.is_none() || stop.load(Ordering::Relaxed) {
                    return result;
                }
                // Nobody may be watching: an armed agent records on whatever happened to
                // this incident's dump (it stays in the spool if shipping failed).
                if let Err(e) = result {
                    tracing::error!("{e:#}");
                }
                last_trigger_ns = Some(heard_ns);
                while let Ok(h) = rx.try_recv() {
                    tracing::warn!("trigger {:016x} came while this incident was handled: ignored", h.trigger.id);
                }
                recorder = start_recording(&watch)?;
                tracing::info!("agent {node}: recording again; armed, waiting for the next trigger");
            }
        };
        // However it ends (an error too), the listener stops, or the scope would wait for it.
        let result = incidents();
        listener_stop.store(true, Ordering::Relaxed);
        result
    })
}

/// Records until a trigger is due: one heard, or our own when the application crashed,
/// once its aftermath (`--after`) is recorded too. None: stopped by a signal first.
#[allow(clippy::too_many_arguments)]
fn wait_for_trigger(
    opts: &AgentOptions,
    recorder: &mut Recorder,
    mut watch: Option<&mut Watch>,
    rx: &mpsc::Receiver<HeardTrigger>,
    sender: &UdpSocket,
    handled: &Handled,
    last_trigger_ns: Option<i64>,
    stop: &AtomicBool,
) -> anyhow::Result<Option<HeardTrigger>> {
    let node = &opts.record.node;
    let mut pending: Option<(HeardTrigger, Instant)> = None;
    let mut cooldown_logged = false;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(match pending {
                // The dump is kept (spooled); shipping sees the signal and leaves it there.
                Some((h, _)) => {
                    tracing::info!("agent {node} stopping on a signal during the aftermath: dumping now");
                    Some(h)
                }
                None => {
                    tracing::info!("agent {node} stopping on a signal; no trigger was heard");
                    None
                }
            });
        }
        recorder.poll(20)?;
        while let Ok(h) = rx.try_recv() {
            join(&mut pending, h, opts.after, node);
        }
        if pending.is_none()
            && let (Some(w), Some(arm)) = (watch.as_deref_mut(), &opts.arm)
        {
            let events = recorder.signal_events();
            if let Some(reason) = w.check(&events) {
                let now = clock::wall_ns() as i64;
                let since = last_trigger_ns.map(|t| now.saturating_sub(t));
                if since.is_some_and(|d| d >= 0 && (d as u128) < arm.cooldown.as_nanos()) {
                    if !cooldown_logged {
                        tracing::warn!(
                            "{reason}; no trigger: the last incident was {} ms ago, within the cooldown",
                            since.unwrap_or(0) / 1_000_000
                        );
                        cooldown_logged = true;
                    }
                } else {
                    let t = press(arm, &opts.secret, sender, reason, &handled.ids);
                    join(&mut pending, HeardTrigger { trigger: t, from: sender.local_addr()?, heard_ns: now }, opts.after, node);
                }
            }
        }
        if let Some((_, at)) = &pending
            && Instant::now() >= *at
        {
            return Ok(Some(pending.take().expect("pending").0));
        }
    }
}

/// Takes a trigger heard (or sent) while recording. The first starts the aftermath; during
/// it, one sent earlier than ours (another node pressed the button at the same moment) is
/// joined instead, so that racing triggers end as one incident.
fn join(pending: &mut Option<(HeardTrigger, Instant)>, h: HeardTrigger, after: Duration, node: &str) {
    let reason = if h.trigger.reason.is_empty() { String::new() } else { format!(" ({})", h.trigger.reason) };
    match pending {
        None => {
            tracing::info!(
                "trigger {:016x}{reason} from {}: recording {:.1} s more, then dumping",
                h.trigger.id,
                if h.from.ip().is_unspecified() { "this node".to_string() } else { h.from.to_string() },
                after.as_secs_f64()
            );
            *pending = Some((h, Instant::now() + after));
        }
        Some((cur, _)) if (h.trigger.sent_ns, h.trigger.id) < (cur.trigger.sent_ns, cur.trigger.id) => {
            tracing::info!("{node}: joining trigger {:016x}{reason}, sent before {:016x}", h.trigger.id, cur.trigger.id);
            *cur = h;
        }
        Some(_) => {}
    }
}

/// Sends our own trigger to the other agents (from the trigger socket, whose port is
/// not recorded), in the background.
fn press(
    arm: &Arming,
    secret: &crate::transport::wire::Secret,
    sock: &UdpSocket,
    reason: String,
    handled: &Mutex<BTreeSet<u64>>,
) -> Trigger {
    let t = Trigger {
        id: u64::from_be_bytes(crate::transport::wire::random_bytes()),
        sent_ns: clock::wall_ns() as i64,
        collector: Some(arm.collector),
        port: arm.collector.port(),
        reason,
    };
    // Our own copies, heard back, are no news.
    handled.lock().expect("lock").insert(t.id);
    tracing::warn!("{}: sending trigger {:016x} to {} destination(s), naming collector {}", t.reason, t.id, arm.to.len(), arm.collector);
    let bytes = t.encode(secret);
    let datagrams: Vec<(SocketAddr, Vec<u8>, bool)> = arm.to.iter().map(|&(d, broadcast)| (d, bytes.clone(), broadcast)).collect();
    match sock.try_clone() {
        Ok(sock) => {
            std::thread::spawn(move || {
                let _ = sock.set_broadcast(true);
                let v6 = sock.local_addr().is_ok_and(|a| a.is_ipv6());
                crate::transport::collector::send_copies(&datagrams, TRIGGER_COPIES, TRIGGER_GAP, |dest, bytes| {
                    // A dual-stack socket reaches IPv4 through mapped addresses.
                    let d = match dest {
                        SocketAddr::V4(a) if v6 => SocketAddr::new(a.ip().to_ipv6_mapped().into(), a.port()),
                        d => d,
                    };
                    sock.send_to(bytes, d).map(|_| ())
                });
            });
        }
        Err(e) => tracing::error!("cannot send the trigger: {e}"),
    }
    t
}

/// One socket for triggers over IPv4 and IPv6 (dual stack); IPv4 alone where the host has no IPv6.
fn trigger_socket(port: u16) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let v6 = || -> std::io::Result<UdpSocket> {
        let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_only_v6(false)?;
        s.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into())?;
        Ok(s.into())
    };
    match v6() {
        Ok(s) => Ok(s),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)) => {
            tracing::info!("no IPv6 here ({e}): hearing triggers on IPv4 only");
            UdpSocket::bind(("0.0.0.0", port))
        }
        Err(e) => Err(e),
    }
}

fn on_trigger(opts: &AgentOptions, mut recorder: Recorder, heard: HeardTrigger, stop: &AtomicBool) -> anyhow::Result<()> {
    let t = heard.trigger;
    let node = &opts.record.node;
    let collector = t.collector.expect("triggers that name no collector are ignored");
    tracing::info!("trigger {:016x}: dumping, shipping to {collector}", t.id);
    // 1. Snapshot the ring first: nothing the agent sends from here on is recorded.
    recorder.annotate(keys::TRIGGER_ID, format!("{:016x}", t.id));
    recorder.annotate(keys::TRIGGER_HEARD_NS, heard.heard_ns.to_string());
    recorder.annotate(keys::TRIGGER_SENT_NS, t.sent_ns.to_string());
    if !t.reason.is_empty() {
        recorder.annotate(keys::TRIGGER_REASON, t.reason.clone());
    }
    let (ring, info) = recorder.finish()?;
    // Say we heard it, so the collector knows who to wait for.
    if let Ok(s) = UdpSocket::bind(if collector.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }) {
        let msg = Heard { trigger_id: t.id, heard_ns: heard.heard_ns, sent_ns: t.sent_ns, node: node.clone(), reason: t.reason.clone() }
            .encode(&opts.secret);
        for _ in 0..3 {
            let _ = s.send_to(&msg, collector);
        }
    }
    // 2. Put the dump in the spool before anything else can go wrong.
    let mut entry = SpoolEntry {
        node: node.clone(),
        trigger_id: t.id,
        heard_ns: heard.heard_ns,
        collector: collector.to_string(),
        size: 0,
        sha256: String::new(),
        shipped: false,
    };
    let path = entry.dump_path(&opts.spool);
    let spooled = spool_dump(&mut entry, &opts.spool, &info, &ring);
    // A spool that cannot take the dump (a full disk) must not lose it: ship it from memory.
    let in_memory = match &spooled {
        Ok(()) => {
            drop(ring);
            tracing::info!("dump of {} bytes saved in {}", entry.size, path.display());
            None
        }
        Err(e) => {
            tracing::error!("{e:#}; shipping the dump from memory instead");
            let bytes = write_hashed(Vec::new(), &mut entry, &info, &ring)?;
            drop(ring);
            Some(bytes)
        }
    };

    // 3. Ship it.
    let o = ShipOptions { secret: &opts.secret, rate: opts.ship_rate, deadline: Instant::now() + opts.ship_deadline, stop: Some(stop) };
    let shipped = match &in_memory {
        None => ship_spooled(&mut entry, &opts.spool, collector, &o),
        Some(bytes) => ship::ship(&entry, ship::Source::Memory(bytes), collector, &o).map_err(anyhow::Error::from),
    };
    // 4. Only then stop the application: after a delivery, or once shipping gave up. A
    // signal while shipping stops the agent alone, and the dump stays in the spool.
    let stopped = shipped.as_ref().err().and_then(|e| e.downcast_ref::<ShipError>()).is_some_and(|e| matches!(e, ShipError::Stopped(_)));
    if let Some(app) = &opts.app_cgroup
        && !stopped
    {
        apply_policy(app, opts.on_trigger)?;
    }
    match (shipped, spooled) {
        (Ok(()), Ok(())) => Ok(()),
        (Ok(()), Err(e)) => Err(e.context("the dump was delivered from memory, but the spool could not keep a copy")),
        (Err(e), Ok(())) => {
            Err(e.context(format!("the dump stays in {}; send it later with `wgo ship --spool {}`", path.display(), opts.spool.display())))
        }
        (Err(e), Err(s)) => Err(e.context(format!("the dump is lost: {s:#}"))),
    }
}

/// Ships dumps that an earlier run of the agent left in the spool, saying so; what still
/// fails stays there, with how to send it. Returns how many were delivered.
fn ship_leftovers(mut entries: Vec<SpoolEntry>, spool: &Path, o: &ShipOptions<'_>) -> usize {
    let mut delivered = 0;
    for e in &mut entries {
        let path = e.dump_path(spool);
        let Ok(to) = e.collector.parse::<SocketAddr>() else {
            tracing::error!(
                "{} (trigger {:016x}) was never shipped, and names no collector ({:?}): send it with `wgo ship --spool {} --to ADDR`",
                path.display(),
                e.trigger_id,
                e.collector,
                spool.display()
            );
            continue;
        };
        tracing::warn!("{} (trigger {:016x}) was never shipped: shipping it to {to} now", path.display(), e.trigger_id);
        match ship_spooled(e, spool, to, o) {
            Ok(()) => delivered += 1,
            Err(err) => tracing::error!(
                "{}: {err:#}; it stays in the spool: send it later with `wgo ship --spool {}`",
                path.display(),
                spool.display()
            ),
        }
    }
    delivered
}

/// Writes the dump into the spool (a `.partial` file renamed when complete, private to
/// root: it holds payload bytes) with its entry. On failure nothing is left behind.
fn spool_dump(entry: &mut SpoolEntry, spool: &Path, info: &crate::dump::DumpInfo, ring: &super::ring::Ring) -> anyhow::Result<()> {
    let path = entry.dump_path(spool);
    let result = (|| -> anyhow::Result<()> {
        // Durable: the spool is what survives the agent's crash.
        let partial = crate::outfile::Partial::create(&path, 0o600)?;
        write_hashed(partial.file(), entry, info, ring)?;
        partial.commit(crate::outfile::Durability::Durable)?;
        entry.save(spool)?;
        Ok(())
    })();
    if result.is_err() {
        // An uncommitted partial file removes itself; a dump without its entry goes too.
        let _ = std::fs::remove_file(&path);
    }
    result.with_context(|| format!("could not spool the dump in {}", spool.display()))
}

/// Ships a spooled dump and marks it shipped.
pub fn ship_spooled(entry: &mut SpoolEntry, spool: &Path, to: SocketAddr, opts: &ShipOptions<'_>) -> anyhow::Result<()> {
    ship::ship(entry, ship::Source::File(&entry.dump_path(spool)), to, opts)?;
    entry.shipped = true;
    entry.save(spool)?;
    tracing::info!("{}: dump of {} bytes delivered to {to}", entry.node, entry.size);
    Ok(())
}

/// Writes the dump into `out` (the dump writer buffers), sets the entry's size and SHA-256
/// from the bytes as they pass, and hands `out` back.
fn write_hashed<W: Write>(out: W, entry: &mut SpoolEntry, info: &crate::dump::DumpInfo, ring: &super::ring::Ring) -> anyhow::Result<W> {
    let mut hashing = HashingWriter { inner: out, hash: Sha256::new(), len: 0 };
    crate::dump::write_dump(&mut hashing, info, ring.iter())?;
    hashing.flush()?;
    entry.size = hashing.len;
    entry.sha256 = spool::hex(&hashing.hash.finalize());
    Ok(hashing.inner)
}

struct HashingWriter<W: Write> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::collector::{CollectOptions, Expect, Limits, collect};

    #[test]
    fn a_dump_an_earlier_run_left_unshipped_is_shipped() {
        let secret = Secret::new(b"agent test secret, 16 bytes+".to_vec()).unwrap();
        let base = std::env::temp_dir().join(format!("wgo-agent-leftover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (spool, out) = (base.join("spool"), base.join("out"));
        spool::create_spool_dir(&spool).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let udp = UdpSocket::bind(addr).unwrap();
        // What the killed agent left: a dump and its entry, not shipped.
        let bytes: Vec<u8> = (0..20_000).map(|i| (i * 13 % 251) as u8).collect();
        let mut e = SpoolEntry {
            node: "n1".into(),
            trigger_id: 0x77,
            heard_ns: 1,
            collector: addr.to_string(),
            size: bytes.len() as u64,
            sha256: spool::hex(&Sha256::digest(&bytes)),
            shipped: false,
        };
        std::fs::write(e.dump_path(&spool), &bytes).unwrap();
        e.save(&spool).unwrap();
        let opts = CollectOptions {
            out: out.clone(),
            secret: secret.clone(),
            expect: Expect::Count(1),
            wait: Duration::from_secs(20),
            trigger_id: Some(0x77),
            trigger_sent_ns: None,
            progress: false,
            limits: Limits::default(),
        };
        let collector = std::thread::spawn(move || collect(opts, listener, udp, || {}));
        let o = ShipOptions { secret: &secret, rate: 0, deadline: Instant::now() + Duration::from_secs(15), stop: None };
        let left: Vec<SpoolEntry> = spool::spool_entries(&spool).unwrap().into_iter().filter(|e| !e.shipped).collect();
        assert_eq!(ship_leftovers(left, &spool, &o), 1);
        let m = collector.join().unwrap().unwrap();
        assert!(m.complete && m.nodes[0].name == "n1");
        assert_eq!(std::fs::read(out.join("n1.pcapng")).unwrap(), bytes);
        e.shipped = true;
        assert_eq!(spool::spool_entries(&spool).unwrap(), vec![e], "marked shipped: not shipped again by the next run");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
