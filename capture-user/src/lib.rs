//! wgo, "what's going on?": a distributed flight recorder for networked systems.
//!
//! The modules follow the data flow, and each uses only those before it:
//!
//! | module | holds | may use |
//! |---|---|---|
//! | [`packet`], [`clock`], [`outfile`] | IP headers, the node's clocks, safe output (and input) files | std only |
//! | [`dump`] | the dump format (pcapng): writer and reader, the one owner of its keys and flags | `capture-ebpf` types |
//! | [`transport`] | the signed trigger, wire frames, spool, shipping, the collector and its manifest | `clock`, `outfile` |
//! | [`node`] | the agent's side: kernel attach (aya), agent ring, recorder, cgroups, stop policy, the agent | `dump`, `transport`, `packet`, `clock`, `outfile` |
//! | [`analysis`] | merge, match, clocks, happens-before graph, anomalies (one module per detector), findings: no aya, no root | `dump`, `packet`, `outfile` |
//! | [`report`] | JSON, merged pcapng, Perfetto trace, Parquet tables, HTML timeline, text summary | `analysis`, `dump`, `outfile` |
//!
//! Only `node::capture` touches aya and needs root; everything else is plain code that
//! `cargo test` covers without privileges. The `wgo` binary (`src/main.rs`, one file per
//! subcommand in `src/cli/`) sits on top of them all.

pub mod analysis;
pub mod clock;
pub mod dump;
pub mod node;
pub mod outfile;
pub mod packet;
pub mod report;
pub mod transport;
