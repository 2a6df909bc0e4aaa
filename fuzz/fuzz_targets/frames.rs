//! Anything a collector or agent may read from a shipping connection: never panic,
//! and what decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wgo::transport::wire::{Frame, read_frame};

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    while let Ok(f) = read_frame(&mut r) {
        let again = f.encode();
        let back = Frame::decode(&again[4..]).expect("re-decodes");
        assert_eq!(back, f);
    }
});
