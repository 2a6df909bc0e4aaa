//! wgo, "what's going on?": a distributed flight recorder for networked systems.
//!
//! Data flows one way: kernel record → agent ring ([`ring`]) → dump file ([`dump`])
//! → ship → merge → graph → timeline. Only [`capture`] touches aya and needs root;
//! everything else is plain code that `cargo test` covers without privileges.

pub mod agent;
pub mod analysis;
pub mod capture;
pub mod cgroup;
pub mod clock;
pub mod collector;
pub mod demo;
pub mod dump;
pub mod outfile;
pub mod packet;
pub mod pcapng;
pub mod protocol;
pub mod record;
pub mod ring;
pub mod ship;
pub mod testbed;
