//! The armed recorder's eyes: notice that the application crashed or was OOM-killed, and
//! say so in one line ("node3: app (pid 812) killed by SIGSEGV") that becomes the trigger's reason.

use std::path::{Path, PathBuf};

use capture_ebpf::{SENDER_UNKNOWN, SignalEvent};

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
pub enum WatchError {
    #[error(
        "--auto-trigger oom needs the memory controller on {0}: it has no memory.events (enable it in the parent's cgroup.subtree_control)"
    )]
    NoMemoryEvents(PathBuf),
}

pub struct Watch {
    crash: bool,
    oom: bool,
    node: String,
    memory_events: PathBuf,
    /// The oom_kill count already accounted for.
    oom_kills: u64,
    own_pid: u32,
}

impl Watch {
    pub fn new(app: &Path, node: &str, kinds: &[AutoTrigger]) -> Result<Watch, WatchError> {
        let memory_events = app.join("memory.events");
        let oom = kinds.contains(&AutoTrigger::Oom);
        let oom_kills = match read_oom_kills(&memory_events) {
            Some(n) => n,
            None if oom => return Err(WatchError::NoMemoryEvents(app.to_path_buf())),
            None => 0,
        };
        Ok(Watch {
            crash: kinds.contains(&AutoTrigger::Crash),
            oom,
            node: node.to_string(),
            memory_events,
            oom_kills,
            own_pid: std::process::id(),
        })
    }

    /// Whether the kernel's signal programs are needed (they also name OOM victims).
    pub fn wants_signals(&self) -> bool {
        self.crash || self.oom
    }

    /// Why to trigger now, if at all, given the fatal signals seen since the last call.
    pub fn check(&mut self, events: &[SignalEvent]) -> Option<String> {
        for e in events {
            let sender_comm = (e.sender_tgid != SENDER_UNKNOWN).then(|| comm_of(e.sender_tgid));
            let now = if e.sig == libc::SIGKILL as u32 { read_oom_kills(&self.memory_events) } else { None };
            if let Some(reason) = reason_for(e, &self.node, self.own_pid, self.crash, self.oom, self.oom_kills, now, sender_comm.flatten())
            {
                self.oom_kills = now.unwrap_or(self.oom_kills).max(self.oom_kills);
                return Some(reason);
            }
        }
        // A kill the signal programs did not see (or a victim outside the watched tree).
        if self.oom
            && let Some(now) = read_oom_kills(&self.memory_events)
            && now > self.oom_kills
        {
            let before = std::mem::replace(&mut self.oom_kills, now);
            return Some(format!(
                "{}: the OOM killer killed a process of the application (memory.events oom_kill {before} -> {now})",
                self.node
            ));
        }
        None
    }
}

/// The reason one fatal signal gives, if it is one the agent was asked to act on.
#[allow(clippy::too_many_arguments)]
fn reason_for(
    e: &SignalEvent,
    node: &str,
    own_pid: u32,
    crash: bool,
    oom: bool,
    oom_before: u64,
    oom_now: Option<u64>,
    sender_comm: Option<String>,
) -> Option<String> {
    let who = format!("{} (pid {})", comm(&e.comm), e.tgid);
    if e.sig == libc::SIGKILL as u32 {
        if e.sender_tgid == own_pid {
            return None;
        }
        if let Some(now) = oom_now.filter(|n| *n > oom_before) {
            return oom.then(|| format!("{node}: {who} killed by the OOM killer (memory.events oom_kill {oom_before} -> {now})"));
        }
        let by = match (e.sender_tgid, sender_comm) {
            (SENDER_UNKNOWN, _) => String::new(),
            (pid, Some(c)) => format!(" sent by {c} (pid {pid})"),
            (pid, None) => format!(" sent by pid {pid}"),
        };
        return crash.then(|| format!("{node}: {who} killed by SIGKILL{by}"));
    }
    crash.then(|| format!("{node}: {who} killed by {}", signal_name(e.sig)))
}

fn comm(b: &[u8; 16]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn comm_of(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim().to_string())
}

pub fn signal_name(sig: u32) -> String {
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

/// The `oom_kill` count of a `memory.events` file, if it can be read.
fn read_oom_kills(path: &Path) -> Option<u64> {
    parse_oom_kills(&std::fs::read_to_string(path).ok()?)
}

fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(sig: i32, sender: u32) -> SignalEvent {
        let mut comm = [0u8; 16];
        comm[..7].copy_from_slice(b"demoapp");
        SignalEvent { ktime_ns: 1, tgid: 812, tid: 813, sig: sig as u32, sender_tgid: sender, comm }
    }

    #[test]
    fn reasons_name_the_node_process_and_signal() {
        let r = |e: &SignalEvent, crash, oom, now, sc: Option<&str>| reason_for(e, "node3", 100, crash, oom, 0, now, sc.map(String::from));
        assert_eq!(
            r(&event(libc::SIGSEGV, SENDER_UNKNOWN), true, false, None, None).unwrap(),
            "node3: demoapp (pid 812) killed by SIGSEGV"
        );
        assert_eq!(r(&event(libc::SIGSEGV, SENDER_UNKNOWN), false, true, None, None), None, "oom alone ignores crashes");
        assert_eq!(
            r(&event(libc::SIGKILL, 55), true, false, Some(0), Some("bash")).unwrap(),
            "node3: demoapp (pid 812) killed by SIGKILL sent by bash (pid 55)"
        );
        assert_eq!(r(&event(libc::SIGKILL, 100), true, true, Some(0), None), None, "wgo's own kill is no crash");
        let oom = r(&event(libc::SIGKILL, 9), true, true, Some(1), None).unwrap();
        assert_eq!(oom, "node3: demoapp (pid 812) killed by the OOM killer (memory.events oom_kill 0 -> 1)");
        assert_eq!(r(&event(libc::SIGKILL, 9), false, false, Some(1), None), None);
        assert_eq!(r(&event(libc::SIGKILL, 9), false, true, Some(0), None), None, "a plain kill is not an OOM");
    }

    #[test]
    fn oom_kill_count_is_read_from_memory_events() {
        let text = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(text), Some(2));
        assert_eq!(parse_oom_kills("oom 1\n"), None);
    }
}
