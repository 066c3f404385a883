//! PROXY protocol v1 and v2 headers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_edge::proxy::{parse, Parsed};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(Parsed::Done { consumed, .. }) = parse(bytes) {
        assert!(consumed <= bytes.len());
        // The header alone parses the same.
        assert!(matches!(parse(&bytes[..consumed]), Ok(Parsed::Done { .. })));
    }
});
