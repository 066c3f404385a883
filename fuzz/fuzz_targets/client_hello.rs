//! The first bytes of a TLS connection, peeked to choose the TLS engine.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let whole = moat_edge::legacy::classify(bytes);
    // More bytes never make a decided prefix undecided.
    for end in 0..bytes.len() {
        if let Some(early) = moat_edge::legacy::classify(&bytes[..end]) {
            assert_eq!(Some(early), whole);
            break;
        }
    }
});
