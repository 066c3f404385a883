//! The Exchange build in a Received header, and build strings themselves.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_shared::exchange::{sighting, Build};

fuzz_target!(|bytes: &[u8]| {
    let text = String::from_utf8_lossy(bytes);
    if let Some(s) = sighting(&text) {
        // A build read from a stamp prints and parses back to itself.
        let printed = s.build.to_string();
        assert_eq!(Build::parse(&printed), Some(s.build), "{printed}");
    }
    let _ = Build::parse(&text);
});
