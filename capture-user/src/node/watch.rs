//! The armed recorder's eyes: notice that the application crashed or was OOM-killed, and
//! say so in one line ("node3: app (pid 812) killed by SIGSEGV") that becomes the trigger's reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use capture_ebpf::{SENDER_UNKNOWN, SIGNAL_FROM_KERNEL, SignalEvent};

/// What makes an armed agent press the button itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AutoTrigger {
    /// A process of the application dies of SIGSEGV, SIGABRT, SIGBUS, SIGILL or SIGFPE, or
    /// of a SIGKILL that wgo did not send.
    Crash,
    /// The application cgroup's `memory.events` oom_kill count rises.
    Oom,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum WatchError {
    #[error(
        "--auto-trigger oom needs the memory controller: {0} has no memory.events, and no cgroup v1 memory hierarchy is mounted (enable it in the parent's cgroup.subtree_control)"
    )]
    NoMemoryEvents(PathBuf),
}

/// How often the application's v1 memory cgroups are looked up again (processes come and go).
const RESCAN: Duration = Duration::from_secs(1);

pub(crate) struct Watch {
    crash: bool,
    oom: bool,
    node: String,
    app: PathBuf,
    /// Files whose `oom_kill` count tells an OOM kill (the app's v2 `memory.events`, or the
    /// v1 `memory.oom_control` of its processes' memory cgroups), with the count accounted for.
    counters: BTreeMap<PathBuf, u64>,
    /// The v1 memory hierarchy, where the v2 cgroup has no memory controller (hybrid hosts).
    v1_memory: Option<PathBuf>,
    last_scan: Instant,
    /// A counter rise not yet tied to a victim: when seen, and (before, now).
    unnamed_rise: Option<(Instant, (u64, u64))>,
    own_pid: u32,
}

/// How long a counter rise waits for the victim's SIGKILL to name it (the counter moves
/// when the kill is sent; the victim takes the signal when it next runs).
const NAME_GRACE: Duration = Duration::from_millis(300);

impl Watch {
    pub fn new(app: &Path, node: &str, kinds: &[AutoTrigger]) -> Result<Watch, WatchError> {
        let oom = kinds.contains(&AutoTrigger::Oom);
        let v2 = app.join("memory.events");
        let mut counters = BTreeMap::new();
        let mut v1_memory = None;
        match read_oom_kills(&v2) {
            Some(n) => {
                counters.insert(v2, n);
            }
            None => v1_memory = super::cgroup::v1_mount("memory"),
        }
        if oom && counters.is_empty() && v1_memory.is_none() {
            return Err(WatchError::NoMemoryEvents(app.to_path_buf()));
        }
        let mut w = Watch {
            crash: kinds.contains(&AutoTrigger::Crash),
            oom,
            node: node.to_string(),
            app: app.to_path_buf(),
            counters,
            v1_memory,
            last_scan: Instant::now(),
            unnamed_rise: None,
            own_pid: std::process::id(),
        };
        w.scan_v1();
        Ok(w)
    }

    /// Whether the kernel's signal programs are needed (they also name OOM victims).
    pub(crate) fn wants_signals(&self) -> bool {
        self.crash || self.oom
    }

    /// Adds the v1 memory cgroups of the application's processes, at their current counts.
    fn scan_v1(&mut self) {
        self.last_scan = Instant::now();
        let Some(mount) = &self.v1_memory else { return };
        for pid in super::cgroup::processes(&self.app).unwrap_or_default() {
            if let Some(dir) = v1_memory_cgroup(mount, pid) {
                let file = dir.join("memory.oom_control");
                if !self.counters.contains_key(&file)
                    && let Some(n) = read_oom_kills(&file)
                {
                    self.counters.insert(file, n);
                }
            }
        }
    }

    /// An OOM kill counter that rose since last seen: (before, now).
    fn oom_rise(&mut self) -> Option<(u64, u64)> {
        let mut rise = None;
        for (file, seen) in self.counters.iter_mut() {
            if let Some(now) = read_oom_kills(file)
                && now > *seen
            {
                rise.get_or_insert((*seen, now));
                *seen = now;
            }
        }
        rise
    }

    /// Why to trigger now, if at all, given the fatal signals seen since the last call.
    pub fn check(&mut self, events: &[SignalEvent]) -> Option<String> {
        if self.last_scan.elapsed() >= RESCAN {
            self.scan_v1();
        }
        if self.unnamed_rise.is_none()
            && let Some(r) = self.oom_rise()
        {
            self.unnamed_rise = Some((Instant::now(), r));
        }
        for e in events {
            // Named in the kernel when it sent: the sender (a `kill`) may be gone already.
            let sender_comm = match comm(&e.sender_comm) {
                c if !c.is_empty() => Some(c),
                _ => (e.sender_tgid != SENDER_UNKNOWN).then(|| comm_of(e.sender_tgid)).flatten(),
            };
            let rise = match e.sig == libc::SIGKILL as u32 {
                true => self.unnamed_rise.take().map(|(_, r)| r).or_else(|| self.oom_rise()),
                false => None,
            };
            let kill = Kill { rise, counted: !self.counters.is_empty(), sender_comm };
            if let Some(reason) = reason_for(e, &self.node, self.own_pid, self.crash, self.oom, kill) {
                return Some(reason);
            }
        }
        // A kill the signal programs did not see (a victim outside the watched tree, say).
        if self.oom
            && let Some((at, (before, now))) = self.unnamed_rise
            && at.elapsed() >= NAME_GRACE
        {
            self.unnamed_rise = None;
            return Some(format!("{}: the OOM killer killed a process of the application (oom_kill {before} -> {now})", self.node));
        }
        None
    }
}

/// What is known about a SIGKILL besides the event.
struct Kill {
    /// An OOM kill counter of the application that rose: (before, now).
    rise: Option<(u64, u64)>,
    /// Whether there were counters to look at.
    counted: bool,
    sender_comm: Option<String>,
}

/// The reason one fatal signal gives, if it is one the agent was asked to act on.
fn reason_for(e: &SignalEvent, node: &str, own_pid: u32, crash: bool, oom: bool, kill: Kill) -> Option<String> {
    let who = format!("{} (pid {})", comm(&e.comm), e.tgid);
    if e.sig != libc::SIGKILL as u32 {
        return crash.then(|| format!("{node}: {who} killed by {}", signal_name(e.sig)));
    }
    if e.sender_tgid == own_pid {
        return None;
    }
    let from_kernel = e.flags & SIGNAL_FROM_KERNEL != 0;
    if let Some((before, now)) = kill.rise {
        return oom.then(|| format!("{node}: {who} killed by the OOM killer (oom_kill {before} -> {now})"));
    }
    if from_kernel && !kill.counted {
        // No counter to ask; the OOM killer is what sends the kernel's own SIGKILLs.
        return (oom || crash).then(|| format!("{node}: {who} killed by the kernel (SIGKILL; the OOM killer, most likely)"));
    }
    let by = match (from_kernel, e.sender_tgid, kill.sender_comm) {
        (true, _, _) => " from the kernel".to_string(),
        (false, SENDER_UNKNOWN, _) => String::new(),
        (false, pid, Some(c)) => format!(" sent by {c} (pid {pid})"),
        (false, pid, None) => format!(" sent by pid {pid}"),
    };
    crash.then(|| format!("{node}: {who} killed by SIGKILL{by}"))
}

/// A process's v1 memory cgroup directory, from `/proc/PID/cgroup`.
fn v1_memory_cgroup(mount: &Path, pid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = text.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        controllers.split(',').any(|c| c == "memory").then_some(path)
    })?;
    Some(mount.join(rel.trim_start_matches('/')))
}

fn comm(b: &[u8; 16]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn comm_of(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim().to_string())
}

pub(crate) fn signal_name(sig: u32) -> String {
    match sig as i32 {
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGBUS => "SIGBUS".into(),
        libc::SIGILL => "SIGILL".into(),
        libc::SIGFPE => "SIGFPE".into(),
        libc::SIGKILL => "SIGKILL".into(),
        n => format!("signal {n}"),
    }
}

/// The `oom_kill` count of a `memory.events` (v2) or `memory.oom_control` (v1) file, if it can be read.
fn read_oom_kills(path: &Path) -> Option<u64> {
    parse_oom_kills(&std::fs::read_to_string(path).ok()?)
}

fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(sig: i32, sender: u32, flags: u32) -> SignalEvent {
        let mut comm = [0u8; 16];
        comm[..7].copy_from_slice(b"demoapp");
        SignalEvent { ktime_ns: 1, tgid: 812, tid: 813, sig: sig as u32, sender_tgid: sender, comm, flags, pad: 0, sender_comm: [0; 16] }
    }

    fn kill(rise: Option<(u64, u64)>, counted: bool, sender_comm: Option<&str>) -> Kill {
        Kill { rise, counted, sender_comm: sender_comm.map(String::from) }
    }

    #[test]
    fn reasons_name_the_node_process_and_signal() {
        let r = |e: &SignalEvent, crash, oom, k| reason_for(e, "node3", 100, crash, oom, k);
        let segv = event(libc::SIGSEGV, SENDER_UNKNOWN, 0);
        assert_eq!(r(&segv, true, false, kill(None, true, None)).unwrap(), "node3: demoapp (pid 812) killed by SIGSEGV");
        assert_eq!(r(&segv, false, true, kill(None, true, None)), None, "oom alone ignores crashes");
        assert_eq!(
            r(&event(libc::SIGKILL, 55, 0), true, false, kill(None, true, Some("bash"))).unwrap(),
            "node3: demoapp (pid 812) killed by SIGKILL sent by bash (pid 55)"
        );
        assert_eq!(r(&event(libc::SIGKILL, 100, 0), true, true, kill(None, true, None)), None, "wgo's own kill is no crash");
        let oom = r(&event(libc::SIGKILL, 9, SIGNAL_FROM_KERNEL), true, true, kill(Some((0, 1)), true, None)).unwrap();
        assert_eq!(oom, "node3: demoapp (pid 812) killed by the OOM killer (oom_kill 0 -> 1)");
        assert_eq!(r(&event(libc::SIGKILL, 9, SIGNAL_FROM_KERNEL), false, false, kill(Some((0, 1)), true, None)), None);
        assert_eq!(r(&event(libc::SIGKILL, 9, 0), false, true, kill(None, true, None)), None, "a plain kill is not an OOM");
        assert_eq!(
            r(&event(libc::SIGKILL, 9, SIGNAL_FROM_KERNEL), true, false, kill(None, true, None)).unwrap(),
            "node3: demoapp (pid 812) killed by SIGKILL from the kernel"
        );
        let uncounted = r(&event(libc::SIGKILL, 9, SIGNAL_FROM_KERNEL), false, true, kill(None, false, None)).unwrap();
        assert!(uncounted.contains("OOM killer, most likely"), "{uncounted}");
    }

    #[test]
    fn oom_kill_count_is_read_from_memory_events_and_oom_control() {
        let v2 = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(v2), Some(2));
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n";
        assert_eq!(parse_oom_kills(v1), Some(4));
        assert_eq!(parse_oom_kills("oom 1\n"), None);
    }
}
