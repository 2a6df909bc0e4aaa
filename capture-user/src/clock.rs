//! Mapping the kernel's CLOCK_MONOTONIC record times onto the node's wall clock.
//! A leaf: it uses only libc.

fn now(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

pub fn wall_ns() -> u64 {
    now(libc::CLOCK_REALTIME) as u64
}

/// Wall clock minus monotonic clock, ns. Sampled around one wall-clock read so the
/// error is half the time between the two monotonic reads. Re-sampled on every drain
/// so NTP slews are followed.
pub fn wall_minus_mono_ns() -> i64 {
    let a = now(libc::CLOCK_MONOTONIC);
    let w = now(libc::CLOCK_REALTIME);
    let b = now(libc::CLOCK_MONOTONIC);
    w - (a + (b - a) / 2)
}

pub fn to_wall(ktime_ns: u64, wall_minus_mono: i64) -> u64 {
    (ktime_ns as i64).saturating_add(wall_minus_mono).max(0) as u64
}
