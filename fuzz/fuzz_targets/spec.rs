//! Any text as a protocol spec: an error naming the problem, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wgo::analysis::spec::Spec;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = Spec::parse(&text, "fuzz.toml") {
        assert!(e.to_string().starts_with("fuzz.toml"), "errors name the file: {e}");
    }
});
