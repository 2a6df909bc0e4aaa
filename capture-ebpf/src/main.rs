//! wgo's kernel side: record every packet a cgroup's sockets send or receive.
//!
//! Kept small and boring on purpose: parse just enough of the IP and L4 headers to
//! know how many bytes to copy, copy them with a timestamp and a per-CPU sequence
//! number into this CPU's ring, and always let the packet through. One file per hook
//! family (`skb.rs` for packets, `drop.rs` for the kernel's drops, `signal.rs` for crashes), the rings in `ring.rs`; it uses only aya-ebpf and the shared layout.
#![no_std]
#![no_main]
// Atomic fetch-add: the BPF target has no AtomicU64 RMW methods.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod drop;
mod ring;
mod signal;
mod skb;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
