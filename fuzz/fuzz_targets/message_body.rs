//! DATA and BDAT content scanners: the result must not depend on how the content is split
//! into reads (the first byte picks the read size), and what passes is canonical.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_edge::session::body::{ChunkChecker, DataScanner, Scan};

/// Scans `input` in reads of `size` bytes: (the un-stuffed content, where the end was, or
/// `None` if refused / `Some(None)` if still open).
fn data(input: &[u8], size: usize) -> (Vec<u8>, Option<Option<usize>>) {
    let mut scanner = DataScanner::default();
    let mut out = Vec::new();
    let mut offset = 0;
    for chunk in input.chunks(size.max(1)) {
        match scanner.scan(chunk, &mut out) {
            Scan::More => offset += chunk.len(),
            Scan::End(n) => return (out, Some(Some(offset + n))),
            Scan::Invalid => return (out, None),
        }
    }
    (out, Some(None))
}

fn chunks(input: &[u8], size: usize) -> bool {
    let mut checker = ChunkChecker::default();
    input.chunks(size.max(1)).all(|c| checker.check(c))
}

fuzz_target!(|bytes: &[u8]| {
    let Some((&first, input)) = bytes.split_first() else {
        return;
    };
    let size = usize::from(first % 31) + 1;
    let (whole_out, whole_end) = data(input, input.len());
    let (split_out, split_end) = data(input, size);
    assert_eq!(whole_end, split_end);
    if whole_end.is_some() {
        assert_eq!(whole_out, split_out);
    }
    if let Some(Some(_)) = whole_end {
        // Delivered content is CRLF lines, no NUL, no bare CR or LF.
        let mut prev = 0u8;
        for &b in &whole_out {
            assert_ne!(b, 0);
            assert_eq!(b == b'\n', prev == b'\r');
            prev = b;
        }
        assert!(whole_out.is_empty() || whole_out.ends_with(b"\r\n"));
    }
    assert_eq!(chunks(input, input.len()), chunks(input, size));
});
