//! Recording one cgroup into the agent ring: the part `wgo record` and `wgo agent` share.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use capture_ebpf::Direction;

use super::capture::{Capture, CaptureError, CaptureOptions};
use super::ring::{Ring, RingError};
use crate::clock;
use crate::dump::{DumpInfo, RingCounts};
use crate::packet::{Packet, Proto};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Ring(#[from] RingError),
    #[error(transparent)]
    Cgroup(#[from] super::cgroup::CgroupError),
}

#[derive(Clone, Debug)]
pub struct RecordOptions {
    pub cgroup: PathBuf,
    pub node: String,
    pub snaplen: u32,
    pub ring_seconds: f64,
    pub ring_bytes: usize,
    pub kernel_ring_bytes: u32,
}

pub struct Recorder {
    capture: Capture,
    ring: Ring,
    /// One drain's records, sorted by kernel time before they enter the ring: the per-CPU
    /// rings interleave, and dumps read best in time order.
    batch: Vec<(u64, capture_ebpf::RecordHeader, std::ops::Range<usize>)>,
    batch_bytes: Vec<u8>,
    info: DumpInfo,
    reported_drops: u64,
    last_drop_check: Instant,
    /// The recorded cgroup, whose processes' network namespaces are followed for drops.
    cgroup: PathBuf,
    last_netns_check: Instant,
    /// Said that the cgroup's namespaces are more than can be followed.
    netns_over: bool,
}

/// How often the cgroup's processes are looked at for network namespaces to follow: a
/// namespace made, or entered, by the app is followed within this long.
const NETNS_EVERY: Duration = Duration::from_millis(200);

impl Recorder {
    pub fn start(opts: &RecordOptions) -> Result<Recorder, RecordError> {
        super::capture::check_root()?;
        let cgroup = super::cgroup::resolve(&opts.cgroup)?;
        let ring = Ring::new(opts.ring_bytes, (opts.ring_seconds * 1e9) as u64)?;
        let capture = Capture::attach(&cgroup, &CaptureOptions { snaplen: opts.snaplen, kernel_ring_bytes: opts.kernel_ring_bytes })?;
        let info = DumpInfo {
            node: opts.node.clone(),
            cgroup: cgroup.display().to_string(),
            snaplen: opts.snaplen,
            start_wall_ns: clock::wall_ns(),
            drop_reasons: capture.drop_reasons().map(<[_]>::to_vec).unwrap_or_default(),
            ..DumpInfo::default()
        };
        let mut r = Recorder {
            capture,
            ring,
            batch: Vec::new(),
            batch_bytes: Vec::new(),
            info,
            reported_drops: 0,
            last_drop_check: Instant::now(),
            cgroup,
            last_netns_check: Instant::now(),
            netns_over: false,
        };
        r.follow_netns();
        Ok(r)
    }

    /// Follows the network namespaces the cgroup's processes are in now, for the drops no
    /// socket claims (a firewall's INPUT drop, a closed port): the app may start, or make
    /// its namespace, after the recorder, and come and go. An empty cgroup follows none:
    /// not the agent's own, whose drops (the host's loopback, say) are not the app's.
    fn follow_netns(&mut self) {
        self.last_netns_check = Instant::now();
        let wanted = super::cgroup::netns_of(std::path::Path::new("/proc"), &super::cgroup::processes_below(&self.cgroup));
        match self.capture.follow_netns(&wanted) {
            Ok((added, gone)) => {
                for ino in added {
                    tracing::info!("recording the kernel's drops in network namespace net:[{ino}] (a process of the cgroup is in it)");
                }
                for ino in gone {
                    tracing::info!(
                        "no process of the cgroup is in network namespace net:[{ino}] any more: its drops are no longer recorded"
                    );
                }
            }
            Err(e) => tracing::warn!("following the cgroup's network namespaces: {e}"),
        }
        let over = wanted.len() > capture_ebpf::MAX_NETNS as usize;
        if over && !std::mem::replace(&mut self.netns_over, true) {
            tracing::warn!(
                "the cgroup's processes are in {} network namespaces; drops are recorded in {} of them",
                wanted.len(),
                capture_ebpf::MAX_NETNS
            );
        }
    }

    /// Moves whatever the kernel has into the ring, waiting up to `timeout_ms` for it.
    pub(crate) fn poll(&mut self, timeout_ms: i32) -> Result<u64, RecordError> {
        let offset = clock::wall_minus_mono_ns();
        let (batch, bytes) = (&mut self.batch, &mut self.batch_bytes);
        batch.clear();
        bytes.clear();
        let n = self.capture.drain(timeout_ms, |h, data| {
            let at = bytes.len();
            bytes.extend_from_slice(data);
            batch.push((h.ktime_ns, *h, at..bytes.len()));
        })?;
        self.batch.sort_by_key(|(t, h, _)| (*t, h.cpu, h.seq));
        for (t, h, r) in &self.batch {
            self.ring.push(clock::to_wall(*t, offset), h, &self.batch_bytes[r.clone()]);
        }
        if self.last_netns_check.elapsed() >= NETNS_EVERY {
            self.follow_netns();
        }
        if self.last_drop_check.elapsed() >= Duration::from_secs(1) {
            self.last_drop_check = Instant::now();
            self.warn_new_drops();
        }
        Ok(n)
    }

    /// Says on stderr (rate-limited by the caller's cadence) when the kernel ring lost records.
    fn warn_new_drops(&mut self) {
        let Ok(per_cpu) = self.capture.drops_per_cpu() else { return };
        let total: u64 = per_cpu.iter().sum();
        if total > self.reported_drops {
            tracing::warn!(
                "kernel ring dropped {} records so far ({}); the agent drains too slowly for this load: raise --kernel-ring-bytes",
                total,
                fmt_per_cpu(&per_cpu)
            );
            self.reported_drops = total;
        }
    }

    /// Records until `stop` is set or `deadline` passes.
    pub fn run(&mut self, stop: &AtomicBool, deadline: Option<Instant>) -> Result<(), RecordError> {
        while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
            self.poll(20)?;
        }
        Ok(())
    }

    /// Stops recording the agent's own socket on this local port.
    pub(crate) fn exclude_port(&mut self, port: u16) -> Result<(), RecordError> {
        Ok(self.capture.exclude_port(port)?)
    }

    /// Watches the application's cgroup for crashes (see [`Capture::watch_signals`]).
    pub(crate) fn watch_signals(&mut self, app: &std::path::Path) -> Result<(), RecordError> {
        let (id, level) = super::cgroup::id_and_level(app)?;
        Ok(self.capture.watch_signals(id, level)?)
    }

    /// Fatal signals seen in the watched cgroup since the last call.
    pub(crate) fn signal_events(&mut self) -> Vec<capture_ebpf::SignalEvent> {
        self.capture.signal_events()
    }

    /// Metadata added to the dump (e.g. when the trigger was heard).
    pub(crate) fn annotate(&mut self, key: &'static str, value: String) {
        self.info.extra.push((key, value));
    }

    pub fn program_ids(&self) -> Vec<(String, u32)> {
        self.capture.program_ids()
    }

    /// Detaches the programs, drains what is left, and hands back the ring and its metadata.
    pub fn finish(mut self) -> Result<(Ring, DumpInfo), RecordError> {
        self.poll(0)?;
        self.info.drops_per_cpu = self.capture.drops_per_cpu()?;
        self.warn_new_drops();
        drop(self.capture);
        self.info.end_wall_ns = clock::wall_ns();
        self.info.wall_minus_mono_ns = clock::wall_minus_mono_ns();
        let s = self.ring.stats();
        self.info.ring = RingCounts { pushed: s.pushed, evicted_by_age: s.evicted_by_age, evicted_by_size: s.evicted_by_size };
        Ok((self.ring, self.info))
    }
}

pub(crate) fn fmt_per_cpu(per_cpu: &[u64]) -> String {
    per_cpu.iter().enumerate().filter(|(_, n)| **n > 0).map(|(c, n)| format!("cpu{c}={n}")).collect::<Vec<_>>().join(" ")
}

/// A few lines saying what a ring holds: packets by protocol and direction, top conversations.
pub fn summarize(ring: &Ring, info: &DumpInfo) -> String {
    let mut by_kind: BTreeMap<(Proto, &str), (u64, u64)> = BTreeMap::new();
    let mut flows: BTreeMap<String, u64> = BTreeMap::new();
    let mut unparsed = 0u64;
    for rec in ring.iter() {
        let Ok(p) = Packet::parse(rec.data, rec.header.orig_len) else {
            unparsed += 1;
            continue;
        };
        let dir = match Direction::from_u32(rec.header.direction) {
            Some(Direction::Ingress) => "in",
            _ => "out",
        };
        let e = by_kind.entry((p.proto, dir)).or_default();
        e.0 += 1;
        e.1 += rec.header.orig_len as u64;
        let flow = if matches!(p.proto, Proto::Icmp | Proto::Other(_)) {
            format!("{} {} -> {}", p.proto, p.src, p.dst)
        } else {
            format!("{} {}:{} -> {}:{}", p.proto, p.src, p.sport, p.dst, p.dport)
        };
        *flows.entry(flow).or_default() += 1;
    }
    let s = ring.stats();
    let mut out = String::new();
    let _ = writeln!(out, "node {}: {} packets recorded from {}", info.node, s.records, info.cgroup);
    for ((proto, dir), (n, bytes)) in &by_kind {
        let _ = writeln!(out, "  {proto:<5} {dir:<3} {n:>8} packets {bytes:>10} bytes");
    }
    let mut top: Vec<_> = flows.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    if !top.is_empty() {
        let _ = writeln!(out, "  top conversations:");
        for (flow, n) in top.iter().take(5) {
            let _ = writeln!(out, "    {n:>8}  {flow}");
        }
    }
    if unparsed > 0 {
        let _ = writeln!(out, "  {unparsed} records could not be parsed as IP");
    }
    let drops = info.kernel_drops();
    if drops > 0 {
        let _ = writeln!(out, "  LOST: kernel ring dropped {drops} records ({})", fmt_per_cpu(&info.drops_per_cpu));
    }
    if s.evicted_by_age + s.evicted_by_size > 0 {
        let _ = writeln!(
            out,
            "  evicted from the ring: {} older than the window, {} to stay within the byte bound",
            s.evicted_by_age, s.evicted_by_size
        );
    }
    out
}
