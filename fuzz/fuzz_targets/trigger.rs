//! Anything an agent may receive on its trigger port: never panic, and accept only
//! datagrams signed with the secret.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wgo::transport::wire::{Heard, Secret, Trigger};

fuzz_target!(|data: &[u8]| {
    let secret = Secret::new(b"fuzzing secret, 16+ bytes".to_vec()).unwrap();
    if let Ok(t) = Trigger::decode(data, &secret, 0, i64::MAX) {
        // Only our own encoding of the same trigger verifies.
        assert_eq!(t.encode(&secret), data);
    }
    let _ = Heard::decode(data, &secret);
});
