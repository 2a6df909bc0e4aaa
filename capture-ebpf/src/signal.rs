//! Raw tracepoints on signals: say when a process of the watched cgroup is about to die of
//! a crash (a core-dumping signal with its default action) or of a SIGKILL somebody sent.
//! Raw tracepoints need no tracefs, and read only the tracepoints' stable arguments.

use aya_ebpf::{
    btf_maps::{Array, LruHashMap, RingBuf},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{btf_map, raw_tracepoint},
    programs::RawTracePointContext,
};
use capture_ebpf::{KillSent, SENDER_UNKNOWN, SIGNAL_FROM_KERNEL, SIGNAL_RING_BYTES, SignalEvent, WatchConfig};

const SIGILL: i32 = 4;
const SIGABRT: i32 = 6;
const SIGBUS: i32 = 7;
const SIGFPE: i32 = 8;
const SIGKILL: i32 = 9;
const SIGSEGV: i32 = 11;
const SIG_DFL: u64 = 0;
/// `trace_signal_generate`'s result when the signal was queued.
const TRACE_SIGNAL_DELIVERED: i32 = 0;
/// The `siginfo` pointer the kernel passes for signals it sends itself (`SEND_SIG_PRIV`).
const SEND_SIG_PRIV: u64 = 1;

#[btf_map]
static WATCH_CONFIG: Array<WatchConfig, 1> = Array::new();

/// SIGKILLs generated lately: target task (its `task_struct` address) → who sent it.
#[btf_map]
static KILLS: LruHashMap<u64, KillSent, 4096> = LruHashMap::new();

#[btf_map]
static SIGNALS: RingBuf<SignalEvent, { SIGNAL_RING_BYTES as usize }> = RingBuf::new();

/// `signal_generate(int sig, struct kernel_siginfo *info, struct task_struct *task, int group, int result)`,
/// in the sender's context: remember who sent a SIGKILL to which task.
#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn wgo_signal_generate(ctx: RawTracePointContext) -> i32 {
    let _ = try_generate(&ctx);
    0
}

#[inline(always)]
fn try_generate(ctx: &RawTracePointContext) -> Result<(), i64> {
    let sig: u64 = ctx.arg(0);
    let result: u64 = ctx.arg(4);
    if sig as i32 != SIGKILL || result as i32 != TRACE_SIGNAL_DELIVERED {
        return Ok(());
    }
    let task: u64 = ctx.arg(2);
    let info: u64 = ctx.arg(1);
    let kill = KillSent {
        sender_tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        flags: if info == SEND_SIG_PRIV { SIGNAL_FROM_KERNEL } else { 0 },
        sender_comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    KILLS.insert(task, kill, 0).map_err(|e| e as i64)
}

/// `signal_deliver(int sig, struct kernel_siginfo *info, struct k_sigaction *ka)`, in the
/// context of the thread taking the signal.
#[raw_tracepoint(tracepoint = "signal_deliver")]
pub fn wgo_signal_deliver(ctx: RawTracePointContext) -> i32 {
    let _ = try_deliver(&ctx);
    0
}

#[inline(always)]
fn try_deliver(ctx: &RawTracePointContext) -> Result<(), i64> {
    let cfg = WATCH_CONFIG.get(0).ok_or(0)?;
    // SAFETY: bpf_get_current_ancestor_cgroup_id takes any level (0 for one beyond the task's).
    if cfg.cgroup_id == 0 || unsafe { aya_ebpf::helpers::generated::bpf_get_current_ancestor_cgroup_id(cfg.level as i32) } != cfg.cgroup_id
    {
        return Ok(());
    }
    let sig = ctx.arg::<u64>(0) as i32;
    let (sender, flags, sender_comm) = match sig {
        // A SIGKILL that somebody sent. The other SIGKILL deliveries are the kernel's own
        // way of ending a thread group (an exit_group, a fatal signal's siblings).
        SIGKILL => {
            // SAFETY: bpf_get_current_task has no preconditions.
            let task = unsafe { bpf_get_current_task() };
            // SAFETY: the value is copied out at once, before anything can remove it.
            let kill = *unsafe { KILLS.get(task) }.ok_or(0)?;
            let _ = KILLS.remove(task);
            (kill.sender_tgid, kill.flags, kill.sender_comm)
        }
        SIGSEGV | SIGBUS | SIGILL | SIGFPE | SIGABRT => {
            // Only with the default action (the process dies), not a handler that recovers.
            // `sa_handler` is the first field of `struct k_sigaction` (x86-64, arm64).
            let ka: u64 = ctx.arg(2);
            // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly on a bad one.
            let handler: u64 = unsafe { bpf_probe_read_kernel(ka as *const u64) }.map_err(|e| e as i64)?;
            if handler != SIG_DFL {
                return Ok(());
            }
            (SENDER_UNKNOWN, 0, [0; 16])
        }
        _ => return Ok(()),
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let event = SignalEvent {
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        sig: sig as u32,
        sender_tgid: sender,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        flags,
        pad: 0,
        sender_comm,
    };
    SIGNALS.output(event, 0).map_err(|e| e as i64)
}
