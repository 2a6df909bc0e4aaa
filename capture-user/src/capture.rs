//! Loading, attaching and draining the eBPF capture programs. The only module that uses aya.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use aya::maps::{Array, ArrayOfMaps, Map, MapData, PerCpuArray, RingBuf};
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType};
use aya::{Ebpf, EbpfLoader};
use capture_ebpf::{CaptureConfig, RECORD_HEADER_SIZE, RecordHeader, names};

/// The eBPF object, embedded at build time by build.rs (empty when built without it).
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/capture.bpf.o"));

const BPF_MAP_TYPE_RINGBUF: u32 = 27;

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
    #[error("kernel ring size {0} bytes must be a power of two and at least 4096")]
    BadKernelRing(u32),
    #[error("{0}")]
    Map(String),
    #[error("polling the kernel rings: {0}")]
    Poll(std::io::Error),
}

#[derive(Clone, Debug)]
pub struct CaptureOptions {
    pub snaplen: u32,
    /// Size of each CPU's kernel ring map, bytes (power of two, >= page size).
    pub kernel_ring_bytes: u32,
}

/// Programs attached to one cgroup. Dropping it detaches them.
pub struct Capture {
    // Field order matters for drop: rings and cgroup fd before the Ebpf that owns the links.
    rings: Vec<RingBuf<MapData>>,
    _cgroup: std::fs::File,
    ebpf: Ebpf,
    cpus: usize,
}

pub fn check_root() -> Result<(), CaptureError> {
    let uid = unsafe { libc::geteuid() };
    if uid != 0 { Err(CaptureError::NotRoot(uid)) } else { Ok(()) }
}

/// Number of possible CPUs (the ids the kernel may hand out), from sysfs.
pub fn possible_cpus() -> usize {
    aya::util::nr_cpus().unwrap_or(1)
}

impl Capture {
    pub fn attach(cgroup: &Path, opts: &CaptureOptions) -> Result<Capture, CaptureError> {
        check_root()?;
        if BPF_OBJECT.is_empty() {
            return Err(CaptureError::NoObject);
        }
        let ring_bytes = opts.kernel_ring_bytes;
        if ring_bytes < 4096 || !ring_bytes.is_power_of_two() {
            return Err(CaptureError::BadKernelRing(ring_bytes));
        }
        let cpus = possible_cpus();
        let mut ebpf = EbpfLoader::new()
              .map_max_entries(names::RINGS, cpus as u32)
            .load(BPF_OBJECT)
            .map_err(|e| CaptureError::Load(error_chain(&e)))?;

        let mut outer: ArrayOfMaps<&mut MapData> = ebpf
            .map_mut(names::RINGS)
            .ok_or_else(|| CaptureError::Map("map RINGS missing from the object".into()))?
            .try_into()
            .map_err(|e| CaptureError::Map(format!("RINGS: {e}")))?;
        let mut rings = Vec::with_capacity(cpus);
        for cpu in 0..cpus {
            let obj = aya_obj::Map::new_from_params(BPF_MAP_TYPE_RINGBUF, 0, 0, ring_bytes, 0);
            let data = MapData::create(obj, &format!("wgo_ring{cpu}"), None)
                .map_err(|e| CaptureError::Load(format!("creating ring for cpu {cpu}: {}", error_chain(&e))))?;
            outer.set(cpu as u32, &data, 0).map_err(|e| CaptureError::Map(format!("RINGS[{cpu}]: {e}")))?;
            rings.push(RingBuf::try_from(Map::RingBuf(data)).map_err(|e| CaptureError::Map(e.to_string()))?);
        }

        let mut config: Array<&mut MapData, CaptureConfig> = ebpf
            .map_mut(names::CONFIG)
            .ok_or_else(|| CaptureError::Map("map CONFIG missing".into()))?
            .try_into()
            .map_err(|e| CaptureError::Map(format!("CONFIG: {e}")))?;
        let cfg = CaptureConfig { snaplen: opts.snaplen, wakeup_bytes: ring_bytes / 4 };
        config.set(0, cfg, 0).map_err(|e| CaptureError::Map(format!("CONFIG: {e}")))?;

        let cgroup_file = std::fs::File::open(cgroup)
            .map_err(|e| CaptureError::Attach { path: cgroup.to_path_buf(), reason: e.to_string() })?;
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
        Ok(Capture { rings, _cgroup: cgroup_file, ebpf, cpus })
    }

    /// Waits up to `timeout_ms` for a ring to ask for a wakeup, then hands every
    /// available record to `sink`. Returns how many records it drained.
    pub fn drain(&mut self, timeout_ms: i32, mut sink: impl FnMut(&RecordHeader, &[u8])) -> Result<u64, CaptureError> {
        let mut fds: Vec<libc::pollfd> = self
            .rings
            .iter()
            .map(|r| libc::pollfd { fd: r.as_raw_fd(), events: libc::POLLIN, revents: 0 })
            .collect();
        // SAFETY: fds is a valid array of pollfd for its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(CaptureError::Poll(err));
            }
        }
        // Drain every ring, not just the ones that woke us: the others drain on this timer.
        let mut count = 0;
        for ring in &mut self.rings {
            while let Some(item) = ring.next() {
                if let Some(h) = RecordHeader::from_bytes(&item) {
                    let end = (RECORD_HEADER_SIZE + h.cap_len as usize).min(item.len());
                    sink(&h, &item[RECORD_HEADER_SIZE..end]);
                    count += 1;
                }
            }
        }
        Ok(count)
    }

    /// Stops recording packets whose local UDP/TCP port is `port` (the agent's own sockets).
    pub fn exclude_port(&mut self, port: u16) -> Result<(), CaptureError> {
        let mut map: Array<&mut MapData, u8> = self
            .ebpf
            .map_mut(names::EXCLUDED_PORTS)
            .ok_or_else(|| CaptureError::Map("map EXCLUDED_PORTS missing".into()))?
            .try_into()
            .map_err(|e| CaptureError::Map(format!("EXCLUDED_PORTS: {e}")))?;
        map.set(port as u32, 1, 0).map_err(|e| CaptureError::Map(format!("EXCLUDED_PORTS[{port}]: {e}")))
    }

    /// Records each CPU's kernel ring could not take.
    pub fn drops_per_cpu(&self) -> Result<Vec<u64>, CaptureError> {
        let drops: PerCpuArray<&MapData, u64> = self
            .ebpf
            .map(names::DROPS)
            .ok_or_else(|| CaptureError::Map("map DROPS missing".into()))?
            .try_into()
            .map_err(|e| CaptureError::Map(format!("DROPS: {e}")))?;
        let values = drops.get(&0, 0).map_err(|e| CaptureError::Map(format!("DROPS: {e}")))?;
        let mut out = vec![0; self.cpus];
        for (cpu, v) in values.iter().enumerate().take(self.cpus) {
            out[cpu] = *v;
        }
        Ok(out)
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
