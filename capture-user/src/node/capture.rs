//! Loading, attaching and draining the eBPF capture programs. The only module that uses aya.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use aya::maps::{Array, MapData, RingBuf};
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, RawTracePoint};
use aya::{Ebpf, EbpfLoader};
use capture_ebpf::{
    CaptureConfig, DropConfig, FRAME_SIZE, MAX_RECORD, MAX_RING_BYTES, RECORD_ALIGN, RECORD_HEADER_SIZE, RING_AREA_BYTES, RecordHeader,
    RingState, SignalEvent, WatchConfig, names,
};

/// The eBPF object, embedded at build time by build.rs (empty when built without it).
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/capture.bpf.o"));

/// Keeps ring offsets inside the area and aligned; the same mask as the kernel side's.
const OFFSET_MASK: u64 = (MAX_RING_BYTES as u64 - 1) & !(RECORD_ALIGN as u64 - 1);
/// Consumed space is handed back to the producer at least this often while draining.
const RELEASE_EVERY: u64 = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("this wgo binary was built without its eBPF programs; build it with `cargo xtask build`")]
    NoObject,
    #[error("wgo must run as root to load eBPF programs (effective uid is {0})")]
    NotRoot(u32),
    #[error("the kernel refused wgo's eBPF programs ({0}); wgo needs Linux 5.8+ with BTF, BPF ring buffers and cgroup_skb programs")]
    Load(String),
    #[error("could not attach to cgroup {path}: {reason}")]
    Attach { path: PathBuf, reason: String },
    #[error("kernel ring size {0} bytes must be a power of two from 4096 to {MAX_RING_BYTES}")]
    BadKernelRing(u32),
    #[error("the kernel ring of cpu {cpu} holds a malformed record at position {pos} (length {len})")]
    Corrupt { cpu: usize, pos: u64, len: u64 },
    #[error("{0}")]
    Map(String),
    #[error("polling the kernel rings: {0}")]
    Poll(std::io::Error),
}

#[derive(Clone, Debug)]
pub(crate) struct CaptureOptions {
    pub snaplen: u32,
    /// Size of each CPU's kernel ring, bytes (power of two, 4096 to [`MAX_RING_BYTES`]).
    pub kernel_ring_bytes: u32,
}

/// A BPF array map's values mapped into this process (the map is `BPF_F_MMAPABLE`).
struct Mapped {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value.
unsafe impl Send for Mapped {}

impl Mapped {
    fn new(map: &MapData, len: usize, what: &str) -> Result<Mapped, CaptureError> {
        let page = 4096;
        let len = len.div_ceil(page) * page;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a fresh shared mapping of the map's fd; checked for failure below.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0) };
        if ptr == libc::MAP_FAILED {
            return Err(CaptureError::Map(format!("mapping {what}: {}", std::io::Error::last_os_error())));
        }
        Ok(Mapped { ptr: ptr.cast(), len })
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from mmap in `new`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Programs attached to one cgroup. Dropping it detaches them.
pub struct Capture {
    // Field order matters for drop: mappings, wakeup ring and cgroup fd before the Ebpf
    // that owns the links.
    areas: Mapped,
    states: Mapped,
    wake: RingBuf<MapData>,
    /// Fatal signals in the watched cgroup, once [`Capture::watch_signals`] ran.
    signals: Option<RingBuf<MapData>>,
    _cgroup: std::fs::File,
    ebpf: Ebpf,
    cpus: usize,
    capacity: u64,
    /// Names of the kernel's drop reasons by number, when its drops are recorded.
    drop_reasons: Option<Vec<Option<String>>>,
    /// The network namespaces in the drop program's `NETNS`.
    followed: std::collections::BTreeSet<u32>,
    /// The programs' log of their rare conditions (aya-log), forwarded into `tracing`.
    log: Option<aya_log::EbpfLogger<ToTracing>>,
}

/// Where the eBPF programs' log goes in `tracing` (`WGO_LOG=wgo::ebpf=debug` shows it alone).
pub const EBPF_LOG_TARGET: &str = "wgo::ebpf";
/// aya-log's `Level::Debug`, which the programs' level global compares with.
const AYA_LOG_DEBUG: u8 = 4;

/// aya-log hands records to a `log` logger: this one forwards them into `tracing`, at
/// debug level, whatever level the program gave (they are rare conditions, not errors).
pub struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        tracing::debug!(target: EBPF_LOG_TARGET, "{}", record.args());
    }
    fn flush(&self) {}
}

/// Runs the programs' log reader, which panics on a record it cannot parse (aya-log's
/// `flush` unwraps): a bad log record must not end the recording. False if it panicked.
fn flush_guarded(flush: impl FnOnce()) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(flush)).is_ok()
}

pub(crate) fn check_root() -> Result<(), CaptureError> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid != 0 { Err(CaptureError::NotRoot(uid)) } else { Ok(()) }
}

/// The drop program's settings for `cgroup`: its id and depth, and the
/// offsets of the fields it reads, from the kernel's BTF; and the drop reasons' names.
fn drop_config(cgroup: &Path) -> Result<(DropConfig, Vec<Option<String>>), String> {
    let btf = super::btf::Btf::from_sys_fs().map_err(|e| e.to_string())?;
    let (cgroup_id, level) = super::cgroup::id_and_level(cgroup).map_err(|e| e.to_string())?;
    let at = |name: &str, path: &[&str]| btf.offset(name, path).map_err(|e| e.to_string());
    let cfg = DropConfig {
        cgroup_id,
        level,
        pad0: 0,
        skb_head: at("sk_buff", &["head"])?,
        skb_network_header: at("sk_buff", &["network_header"])?,
        skb_tail: at("sk_buff", &["tail"])?,
        skb_sk: at("sk_buff", &["sk"])?,
        skb_dev: at("sk_buff", &["dev"])?,
        sk_cgroup: at("sock", &["sk_cgrp_data", "cgroup"])?,
        sk_num: at("sock", &["__sk_common", "skc_num"])?,
        cgroup_level: at("cgroup", &["level"])?,
        cgroup_ancestors: at("cgroup", &["ancestors"])?,
        cgroup_kn: at("cgroup", &["kn"])?,
        kn_id: at("kernfs_node", &["id"])?,
        dev_net: at("net_device", &["nd_net", "net"])?,
        net_inum: at("net", &["ns", "inum"])?,
        icmp_quiet: [u32::MAX; 2],
        pad: 0,
    };
    let names: Vec<Option<String>> = btf
        .enum_names("skb_drop_reason", 1024)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|n| n.map(|n| n.strip_prefix("SKB_DROP_REASON_").unwrap_or(&n).to_ascii_lowercase()))
        .collect();
    let number = |name: &str| names.iter().position(|n| n.as_deref() == Some(name)).map_or(u32::MAX, |k| k as u32);
    let cfg = DropConfig { icmp_quiet: [number("not_specified"), number("no_socket")], ..cfg };
    Ok((cfg, names))
}

/// Number of possible CPUs (the ids the kernel may hand out), from sysfs.
pub fn possible_cpus() -> usize {
    aya::util::nr_cpus().unwrap_or(1)
}

impl Capture {
    pub(crate) fn attach(cgroup: &Path, opts: &CaptureOptions) -> Result<Capture, CaptureError> {
        check_root()?;
        if BPF_OBJECT.is_empty() {
            return Err(CaptureError::NoObject);
        }
        let ring_bytes = opts.kernel_ring_bytes;
        if !(4096..=MAX_RING_BYTES).contains(&ring_bytes) || !ring_bytes.is_power_of_two() {
            return Err(CaptureError::BadKernelRing(ring_bytes));
        }
        let cpus = possible_cpus();
        // The programs' own log (aya-log) is off unless debug is on for it: then a log
        // statement costs one load of this global, and it sits off the common path anyway.
        let log_level: u8 = if tracing::enabled!(target: EBPF_LOG_TARGET, tracing::Level::DEBUG) { AYA_LOG_DEBUG } else { 0 };
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::RING_AREAS, cpus as u32)
            .map_max_entries(names::RING_STATE, cpus as u32)
            .override_global("AYA_LOG_LEVEL", &log_level, false)
            .load(BPF_OBJECT)
            .map_err(|e| CaptureError::Load(error_chain(&e)))?;
        let mut config: Array<&mut MapData, CaptureConfig> = array_mut(&mut ebpf, names::CONFIG)?;
        let cfg = CaptureConfig { snaplen: opts.snaplen, wakeup_bytes: ring_bytes / 4, ring_bytes };
        config.set(0, cfg, 0).map_err(|e| CaptureError::Map(format!("CONFIG: {e}")))?;

        let cgroup_file =
            std::fs::File::open(cgroup).map_err(|e| CaptureError::Attach { path: cgroup.to_path_buf(), reason: e.to_string() })?;
        for (name, kind) in [(names::INGRESS, CgroupSkbAttachType::Ingress), (names::EGRESS, CgroupSkbAttachType::Egress)] {
            let prog: &mut CgroupSkb = ebpf
                .program_mut(name)
                .ok_or_else(|| CaptureError::Load(format!("program {name} missing from the object")))?
                .try_into()
                .map_err(|e| CaptureError::Load(format!("{name}: {e}")))?;
            prog.load().map_err(|e| CaptureError::Load(format!("{name}: {}", error_chain(&e))))?;
            // On 5.7+ aya attaches through a bpf_link, which always coexists with other
            // programs on the cgroup and takes no attach flags (anything but Single is EINVAL).
            prog.attach(&cgroup_file, kind, CgroupAttachMode::Single)
                .map_err(|e| CaptureError::Attach { path: cgroup.to_path_buf(), reason: error_chain(&e) })?;
        }
        let drop_reasons = match Capture::record_drops(&mut ebpf, cgroup) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!("the kernel's drops of this cgroup's packets are not recorded: {e}");
                None
            }
        };
        let log = match aya_log::EbpfLogger::init_with_logger(&mut ebpf, ToTracing) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::debug!("the eBPF programs' log is not read: {e}");
                None
            }
        };
        // Taken out of the Ebpf only now: loading the programs needs them in it. From here
        // the programs and the mappings keep them alive.
        let mut take = |name: &str| -> Result<MapData, CaptureError> {
            match ebpf.take_map(name) {
                Some(aya::maps::Map::Array(d) | aya::maps::Map::RingBuf(d)) => Ok(d),
                Some(_) => Err(CaptureError::Map(format!("map {name} has an unexpected type"))),
                None => Err(CaptureError::Map(format!("map {name} missing from the object"))),
            }
        };
        let areas = Mapped::new(&take(names::RING_AREAS)?, cpus * RING_AREA_BYTES, "the kernel rings")?;
        let states = Mapped::new(&take(names::RING_STATE)?, cpus * size_of::<RingState>(), "the ring positions")?;
        let wake = RingBuf::try_from(aya::maps::Map::RingBuf(take(names::WAKE)?)).map_err(|e| CaptureError::Map(format!("WAKE: {e}")))?;

        Ok(Capture {
            areas,
            states,
            wake,
            signals: None,
            _cgroup: cgroup_file,
            ebpf,
            cpus,
            capacity: ring_bytes as u64,
            drop_reasons,
            followed: Default::default(),
            log,
        })
    }

    /// Attaches the drop program (`skb:kfree_skb`) for the cgroup's packets, with the
    /// kernel's structure offsets and drop reason names read from its BTF. Before the ring
    /// maps leave the Ebpf: loading the program needs them in it.
    fn record_drops(ebpf: &mut Ebpf, cgroup: &Path) -> Result<Vec<Option<String>>, CaptureError> {
        let (cfg, reasons) = drop_config(cgroup).map_err(CaptureError::Map)?;
        let mut config: Array<&mut MapData, DropConfig> = array_mut(ebpf, names::DROP_CONFIG)?;
        config.set(0, cfg, 0).map_err(|e| CaptureError::Map(format!("DROP_CONFIG: {e}")))?;
        let prog: &mut RawTracePoint = ebpf
            .program_mut(names::KFREE_SKB)
            .ok_or_else(|| CaptureError::Load(format!("program {} missing from the object", names::KFREE_SKB)))?
            .try_into()
            .map_err(|e| CaptureError::Load(format!("{}: {e}", names::KFREE_SKB)))?;
        prog.load().map_err(|e| CaptureError::Load(format!("{}: {}", names::KFREE_SKB, error_chain(&e))))?;
        prog.attach(names::TP_KFREE_SKB).map_err(|e| {
            CaptureError::Load(format!("attaching {} to the {} tracepoint: {}", names::KFREE_SKB, names::TP_KFREE_SKB, error_chain(&e)))
        })?;
        Ok(reasons)
    }

    /// Names of the kernel's drop reasons by number (lower case, without `SKB_DROP_REASON_`);
    /// None when drops are not recorded.
    pub(crate) fn drop_reasons(&self) -> Option<&[Option<String>]> {
        self.drop_reasons.as_deref()
    }

    /// Waits up to `timeout_ms` for a ring to ask for a wakeup, then hands every
    /// available record to `sink`. Returns how many records it drained.
    pub fn drain(&mut self, timeout_ms: i32, mut sink: impl FnMut(&RecordHeader, &[u8])) -> Result<u64, CaptureError> {
        let mut fd = libc::pollfd { fd: self.wake.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut fd, 1, timeout_ms) } < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(CaptureError::Poll(err));
            }
        }
        while self.wake.next().is_some() {}
        if let Some(log) = &mut self.log
            && !flush_guarded(|| log.flush())
        {
            tracing::warn!(
                "the eBPF programs' log held a record aya-log could not read; their log is read no more (the recording goes on)"
            );
            self.log = None;
        }
        // Every ring, not just the one that asked: the others drain on this timer.
        let mut count = 0;
        for cpu in 0..self.cpus {
            count += self.drain_cpu(cpu, &mut sink)?;
        }
        Ok(count)
    }

    /// Hands one CPU's complete records to `sink` and gives their space back.
    fn drain_cpu(&mut self, cpu: usize, sink: &mut impl FnMut(&RecordHeader, &[u8])) -> Result<u64, CaptureError> {
        // SAFETY: both mappings cover `cpus` entries, and cpu < cpus.
        let (state, area) =
            unsafe { (self.states.ptr.add(cpu * size_of::<RingState>()).cast::<RingState>(), self.areas.ptr.add(cpu * RING_AREA_BYTES)) };
        // SAFETY: head and tail are aligned u64s in the shared mapping; the kernel advances
        // head atomically, and only this process writes tail.
        let (head_cell, tail_cell) = unsafe { (AtomicU64::from_ptr(&raw mut (*state).head), AtomicU64::from_ptr(&raw mut (*state).tail)) };
        let head = head_cell.load(Ordering::Acquire);
        let tail = tail_cell.load(Ordering::Relaxed);
        let mut release = |t: u64| tail_cell.store(t, Ordering::Release);
        // SAFETY: area is this CPU's mapped, page-aligned ring area of RING_AREA_BYTES.
        let (tail, count) = unsafe { read_ring(area, self.capacity, head, tail, sink, &mut release) }
            .map_err(|(pos, len)| CaptureError::Corrupt { cpu, pos, len })?;
        release(tail);
        Ok(count)
    }

    /// Stops recording packets whose local UDP/TCP port is `port` (the agent's own sockets).
    /// Makes the drop program follow the network namespaces `wanted` (inode numbers) for
    /// drops no socket claims, and no others; returns those added and those removed. Past
    /// [`capture_ebpf::MAX_NETNS`], the rest are left out (and logged by the caller).
    pub(crate) fn follow_netns(&mut self, wanted: &std::collections::BTreeSet<u32>) -> Result<(Vec<u32>, Vec<u32>), CaptureError> {
        if self.drop_reasons.is_none() {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut map: aya::maps::HashMap<&mut MapData, u32, u8> = self
            .ebpf
            .map_mut(names::NETNS)
            .ok_or_else(|| CaptureError::Map(format!("map {} missing", names::NETNS)))?
            .try_into()
            .map_err(|e| CaptureError::Map(format!("{}: {e}", names::NETNS)))?;
        let gone: Vec<u32> = self.followed.difference(wanted).copied().collect();
        for ino in &gone {
            map.remove(ino).map_err(|e| CaptureError::Map(format!("NETNS[{ino}]: {e}")))?;
            self.followed.remove(ino);
        }
        let mut added = Vec::new();
        for &ino in wanted.difference(&self.followed.clone()) {
            if self.followed.len() >= capture_ebpf::MAX_NETNS as usize {
                break;
            }
            map.insert(ino, 1, 0).map_err(|e| CaptureError::Map(format!("NETNS[{ino}]: {e}")))?;
            self.followed.insert(ino);
            added.push(ino);
        }
        Ok((added, gone))
    }

    pub(crate) fn exclude_port(&mut self, port: u16) -> Result<(), CaptureError> {
        let mut map: Array<&mut MapData, u8> = array_mut(&mut self.ebpf, names::EXCLUDED_PORTS)?;
        map.set(port as u32, 1, 0).map_err(|e| CaptureError::Map(format!("EXCLUDED_PORTS[{port}]: {e}")))
    }

    /// Starts watching the cgroup `id` at depth `level` (and its descendants) for processes
    /// about to die of a crash or a sent SIGKILL; [`Capture::signal_events`] hands them over.
    pub(crate) fn watch_signals(&mut self, id: u64, level: u32) -> Result<(), CaptureError> {
        let mut config: Array<&mut MapData, WatchConfig> = array_mut(&mut self.ebpf, names::WATCH_CONFIG)?;
        config.set(0, WatchConfig { cgroup_id: id, level, pad: 0 }, 0).map_err(|e| CaptureError::Map(format!("WATCH_CONFIG: {e}")))?;
        // The generating side first: a SIGKILL delivered is only reported if its sending was seen.
        for (name, tp) in [(names::SIGNAL_GENERATE, names::TP_SIGNAL_GENERATE), (names::SIGNAL_DELIVER, names::TP_SIGNAL_DELIVER)] {
            let prog: &mut RawTracePoint = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| CaptureError::Load(format!("program {name} missing from the object")))?
                .try_into()
                .map_err(|e| CaptureError::Load(format!("{name}: {e}")))?;
            prog.load().map_err(|e| CaptureError::Load(format!("{name}: {}", error_chain(&e))))?;
            prog.attach(tp).map_err(|e| CaptureError::Load(format!("attaching {name} to the {tp} tracepoint: {}", error_chain(&e))))?;
        }
        let map = self.ebpf.take_map(names::SIGNALS).ok_or_else(|| CaptureError::Map("map SIGNALS missing".into()))?;
        self.signals = Some(RingBuf::try_from(map).map_err(|e| CaptureError::Map(format!("SIGNALS: {e}")))?);
        Ok(())
    }

    /// Fatal signals seen since the last call (none unless watching).
    pub(crate) fn signal_events(&mut self) -> Vec<SignalEvent> {
        let mut out = Vec::new();
        if let Some(ring) = &mut self.signals {
            while let Some(item) = ring.next() {
                out.extend(SignalEvent::from_bytes(&item));
            }
        }
        out
    }

    /// Records each CPU's kernel ring could not take.
    pub fn drops_per_cpu(&self) -> Result<Vec<u64>, CaptureError> {
        Ok((0..self.cpus)
            .map(|cpu| {
                // SAFETY: the states mapping covers `cpus` entries; drops is an aligned u64
                // the kernel updates atomically.
                unsafe { AtomicU64::from_ptr(&raw mut (*self.states.ptr.add(cpu * size_of::<RingState>()).cast::<RingState>()).drops) }
                    .load(Ordering::Relaxed)
            })
            .collect())
    }

    /// Program ids, for run-time statistics and for checking detachment.
    pub fn program_ids(&self) -> Vec<(String, u32)> {
        [names::INGRESS, names::EGRESS]
            .iter()
            .filter_map(|name| {
                let prog = self.ebpf.program(name)?;
                let info = prog.info().ok()?;
                Some((name.to_string(), info.id()))
            })
            .collect()
    }
}

/// The array map `name` of the loaded object, typed.
fn array_mut<'a, T: aya::Pod>(ebpf: &'a mut Ebpf, name: &str) -> Result<Array<&'a mut MapData, T>, CaptureError> {
    ebpf.map_mut(name)
        .ok_or_else(|| CaptureError::Map(format!("map {name} missing")))?
        .try_into()
        .map_err(|e| CaptureError::Map(format!("{name}: {e}")))
}

/// Reads one CPU's ring as the agent does: the complete records from `tail` up to `head`
/// or to the first record still being written, handed to `sink` in order. Returns the new
/// tail and the number of records; calls `release` with the tail now and then while
/// reading, so the producer gets space back early. A malformed frame gives its position
/// and length. Pure (no maps), so that tests and the drain benchmark use it as it is
/// (the benchmark through [`bench`]).
///
/// # Safety
/// `area` must point to `RING_AREA_BYTES` readable, 8-byte-aligned bytes laid out as
/// `capture-ebpf/src/ring.rs` writes them, for a ring of `capacity` bytes (a power of two
/// up to `MAX_RING_BYTES`), and nothing may write the records between `tail` and `head`
/// except to complete their frames.
pub(crate) unsafe fn read_ring(
    area: *const u8,
    capacity: u64,
    head: u64,
    mut tail: u64,
    sink: &mut impl FnMut(&RecordHeader, &[u8]),
    release: &mut impl FnMut(u64),
) -> Result<(u64, u64), (u64, u64)> {
    let mut released = tail;
    let mut count = 0;
    while tail < head {
        let off = (tail & (capacity - 1) & OFFSET_MASK) as usize;
        // SAFETY: off + MAX_RECORD <= RING_AREA_BYTES (asserted in capture-ebpf), and the
        // frame is an aligned u64 that the kernel writes atomically.
        let frame = unsafe { AtomicU64::from_ptr(area.add(off).cast::<u64>().cast_mut()) }.load(Ordering::Acquire);
        let len = frame >> 32;
        if frame != capture_ebpf::frame(tail, len) {
            break; // reserved, not complete yet (a hook is still writing it)
        }
        if len < (FRAME_SIZE + RECORD_HEADER_SIZE) as u64
            || len > MAX_RECORD.next_multiple_of(RECORD_ALIGN) as u64
            || len % RECORD_ALIGN as u64 != 0
        {
            return Err((tail, len));
        }
        // SAFETY: [off, off + len) lies inside the area (bound checked above), and a
        // complete record is not written again until the tail passes it.
        let record = unsafe { std::slice::from_raw_parts(area.add(off), len as usize) };
        if let Some(h) = RecordHeader::from_bytes(&record[FRAME_SIZE..]) {
            let start = FRAME_SIZE + RECORD_HEADER_SIZE;
            let end = (start + h.cap_len as usize).min(record.len());
            sink(&h, &record[start..end]);
            count += 1;
        }
        tail += len;
        if tail - released >= RELEASE_EVERY {
            release(tail);
            released = tail;
        }
    }
    Ok((tail, count))
}

/// Writes a record into a ring area as the kernel side does (for tests and benchmarks).
/// Returns the record's length in the ring.
#[cfg(any(test, feature = "bench"))]
pub(crate) fn write_test_record(area: &mut [u64], capacity: u64, pos: u64, header: &RecordHeader, data: &[u8]) -> u64 {
    let len = (FRAME_SIZE + RECORD_HEADER_SIZE + data.len()).next_multiple_of(RECORD_ALIGN) as u64;
    let off = (pos & (capacity - 1) & OFFSET_MASK) as usize;
    // SAFETY: plain bytes of an u64 slice.
    let bytes = unsafe { std::slice::from_raw_parts_mut(area.as_mut_ptr().cast::<u8>(), area.len() * 8) };
    bytes[off + FRAME_SIZE..off + FRAME_SIZE + RECORD_HEADER_SIZE].copy_from_slice(&header.to_bytes());
    bytes[off + FRAME_SIZE + RECORD_HEADER_SIZE..][..data.len()].copy_from_slice(data);
    area[off / 8] = capture_ebpf::frame(pos, len);
    len
}

/// The ring's reader and a kernel-format writer for the drain benchmark
/// (`benches/drain.rs`), which is outside the crate: not part of the library's API, only
/// built with the `bench` feature.
#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench {
    use capture_ebpf::RecordHeader;

    /// [`super::read_ring`].
    ///
    /// # Safety
    /// As for [`super::read_ring`].
    pub unsafe fn read_ring(
        area: *const u8,
        capacity: u64,
        head: u64,
        tail: u64,
        sink: &mut impl FnMut(&RecordHeader, &[u8]),
        release: &mut impl FnMut(u64),
    ) -> Result<(u64, u64), (u64, u64)> {
        // SAFETY: the caller upholds read_ring's contract, stated the same here.
        unsafe { super::read_ring(area, capacity, head, tail, sink, release) }
    }

    /// [`super::write_test_record`].
    pub fn write_test_record(area: &mut [u64], capacity: u64, pos: u64, header: &RecordHeader, data: &[u8]) -> u64 {
        super::write_test_record(area, capacity, pos, header, data)
    }
}

/// Turns on the kernel's per-program run-time statistics while the fd lives.
pub fn enable_bpf_stats() -> Result<OwnedFd, CaptureError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| CaptureError::Map(format!("enabling BPF stats: {e}")))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_reader_that_panics_is_caught_and_said() {
        let mut read = 0;
        assert!(flush_guarded(|| read += 1));
        assert_eq!(read, 1);
        assert!(!flush_guarded(|| panic!("aya-log: a record it cannot parse")));
    }

    fn header(seq: u64, cap_len: u32) -> RecordHeader {
        RecordHeader {
            ktime_ns: 1000 + seq,
            seq,
            kind: 1,
            cpu: 0,
            direction: 2,
            orig_len: cap_len,
            cap_len,
            ip_version: 4,
            reason: 0,
            pad: 0,
        }
    }

    /// What reading a ring gives: the new tail and count, or a malformed frame's position and length.
    type ReadResult = Result<(u64, u64), (u64, u64)>;

    fn read(area: &[u64], capacity: u64, head: u64, tail: u64) -> (ReadResult, Vec<(u64, Vec<u8>)>) {
        let mut got = Vec::new();
        // SAFETY: the area is RING_AREA_BYTES of aligned memory owned by the test.
        let r = unsafe { read_ring(area.as_ptr().cast(), capacity, head, tail, &mut |h, d| got.push((h.seq, d.to_vec())), &mut |_| {}) };
        (r, got)
    }

    #[test]
    fn ring_reader_takes_complete_records_across_laps_and_stops_at_an_incomplete_one() {
        let capacity = 4096;
        let mut area = vec![0u64; RING_AREA_BYTES / 8];
        let mut pos = 0;
        // Three laps' worth of 100-byte records: stale frames of earlier laps stay behind.
        let mut seq = 0;
        let mut tail = 0;
        for _lap in 0..3 {
            let start = pos;
            while pos - start + 160 <= capacity {
                pos += write_test_record(&mut area, capacity, pos, &header(seq, 100), &[seq as u8; 100]);
                seq += 1;
            }
            let (r, got) = read(&area, capacity, pos, tail);
            assert_eq!(r, Ok((pos, got.len() as u64)));
            assert!(got.iter().all(|(s, d)| d.len() == 100 && d[0] == *s as u8));
            tail = pos;
        }
        // A reserved record whose frame is not written yet: reading stops before it, even
        // though stale bytes of an earlier lap lie where its frame goes.
        let reserved = pos;
        pos += ((FRAME_SIZE + RECORD_HEADER_SIZE + 100) as u64).next_multiple_of(RECORD_ALIGN as u64);
        let after = write_test_record(&mut area, capacity, pos, &header(seq + 1, 100), &[7; 100]);
        let (r, got) = read(&area, capacity, pos + after, reserved);
        assert_eq!(r, Ok((reserved, 0)));
        assert!(got.is_empty());
        // Once its frame is written, both come out in order.
        write_test_record(&mut area, capacity, reserved, &header(seq, 100), &[9; 100]);
        let (r, got) = read(&area, capacity, pos + after, reserved);
        assert_eq!(r, Ok((pos + after, 2)));
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![seq, seq + 1]);
    }

    #[test]
    fn ring_reader_reports_a_malformed_frame_with_its_position() {
        let capacity = 4096;
        let mut area = vec![0u64; RING_AREA_BYTES / 8];
        area[0] = capture_ebpf::frame(0, 4); // shorter than a header
        assert_eq!(read(&area, capacity, 64, 0).0, Err((0, 4)));
    }
}
