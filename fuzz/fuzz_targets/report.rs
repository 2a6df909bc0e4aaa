//! A whole `wgo report` on a mutated dump: read, analyze, and write every output. Never
//! panic, whatever the bytes; damage is reported, not fatal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wgo::analysis::trace::TraceBuilder;
use wgo::analysis::{Inputs, analyze};

fuzz_target!(|data: &[u8]| {
    // The bytes as one captured packet too (any IP protocol, IPv6 chains): never panics,
    // and its payload starts within the capped headers (IPv6's 128 bytes of chain and
    // TCP's 60), which the trace keeps in a byte.
    if let Ok(p) = wgo::packet::Packet::parse(data, data.len() as u32) {
        assert!(p.payload_offset <= 128 + 60, "{p:?}");
    }
    let mut b = TraceBuilder::default();
    if b.read_dump(data, std::path::Path::new("fuzz.pcapng")).is_err() {
        return;
    }
    let a = analyze(b.finish(), Inputs::default());
    wgo::report::json::write_json(&a, std::io::sink()).expect("JSON to a sink");
    wgo::report::pcapng::write_merged(&a, std::io::sink()).expect("pcapng to a sink");
    wgo::report::html::write_html(&a, std::io::sink(), "fuzz").expect("HTML to a sink");
    let _ = wgo::report::text::summary(&a);
});
