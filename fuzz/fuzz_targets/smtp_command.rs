//! One SMTP command line, as the session reads it: any bytes parse to a command or a reply code,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    let _ = moat_edge::session::command::parse(line);
});
