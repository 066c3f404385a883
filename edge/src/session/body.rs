//! Incremental scanners for message content: DATA (dot-stuffed, ended by `<CRLF>.<CRLF>`) and
//! BDAT chunks (length-delimited).
//!
//! # The line-ending policy
//!
//! Message content must consist of `<CRLF>`-terminated lines. A bare `<LF>`, a bare `<CR>` or a
//! NUL anywhere in DATA or BDAT content is refused: the scanner reports [`Scan::Invalid`], the
//! session answers `521 5.5.2` and closes (as Postfix does with `smtpd_forbid_bare_newline`).
//! Only `<CRLF>.<CRLF>` ends DATA. Together these make SMTP smuggling impossible: an ending such
//! as `<LF>.<LF>` or `<CR>.<CR>` that some other server might take for the end of the message
//! can never be read here as one message ending and another beginning, and the content we pass on
//! is canonical, so no next hop can read it differently either.

/// What a scan step produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// All input was consumed; more content is expected.
    More,
    /// The end of the content; the value is how many input bytes were consumed, including the
    /// terminating `.<CRLF>`.
    End(usize),
    /// A bare CR, bare LF or NUL was found.
    Invalid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataState {
    LineStart,
    Mid,
    Cr,
    Dot,
    DotCr,
}

/// Scanner for DATA content: removes dot-stuffing and finds the terminating `<CRLF>.<CRLF>`.
#[derive(Debug)]
pub struct DataScanner {
    state: DataState,
}

impl Default for DataScanner {
    fn default() -> Self {
        Self {
            state: DataState::LineStart,
        }
    }
}

impl DataScanner {
    /// Scans `input`, appending the un-stuffed content to `out`. Bytes whose meaning depends on
    /// what follows (a CR, a leading dot) are held in the state, so every input byte is consumed
    /// unless the end is found.
    pub fn scan(&mut self, input: &[u8], out: &mut Vec<u8>) -> Scan {
        use DataState::*;
        let mut run_start = 0;
        for (i, &b) in input.iter().enumerate() {
            match (self.state, b) {
                (_, 0) => return Scan::Invalid,
                (LineStart | Mid, b'\r') => {
                    out.extend_from_slice(&input[run_start..i]);
                    self.state = Cr;
                }
                (LineStart | Mid | Dot, b'\n') => return Scan::Invalid,
                (LineStart, b'.') => {
                    out.extend_from_slice(&input[run_start..i]);
                    self.state = Dot;
                }
                (LineStart | Mid, _) => self.state = Mid,
                (Cr, b'\n') => {
                    out.extend_from_slice(b"\r\n");
                    run_start = i + 1;
                    self.state = LineStart;
                }
                (Cr | DotCr, _) if b != b'\n' => return Scan::Invalid,
                (Dot, b'\r') => self.state = DotCr,
                (Dot, _) => {
                    // A leading dot is removed (RFC 5321 section 4.5.2); the byte after it starts
                    // the visible line.
                    run_start = i;
                    self.state = Mid;
                }
                (DotCr, _) => {
                    self.state = LineStart;
                    return Scan::End(i + 1);
                }
                (Cr, _) => return Scan::Invalid,
            }
            if self.state == Mid && i + 1 == input.len() {
                out.extend_from_slice(&input[run_start..]);
            }
        }
        Scan::More
    }
}

/// Checker for BDAT content, which is not dot-stuffed but must follow the same line policy.
#[derive(Debug, Default)]
pub struct ChunkChecker {
    after_cr: bool,
}

impl ChunkChecker {
    /// Checks the next piece of content; `true` if it is acceptable so far.
    pub fn check(&mut self, input: &[u8]) -> bool {
        for &b in input {
            if b == 0 || (self.after_cr != (b == b'\n')) {
                return false;
            }
            self.after_cr = b == b'\r';
        }
        true
    }

    /// Whether the content so far ends in the middle of a CRLF.
    pub fn pending_cr(&self) -> bool {
        self.after_cr
    }
}

/// The SMTP-smuggling endings the tests feed: each is something some server might take for
/// the end of DATA, and each must be refused here.
#[cfg(test)]
pub(crate) const SMUGGLING_ENDINGS: [&[u8]; 7] = [
    b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\r", b"\r.\r\n", b"\r\n.\n", b"\n.\r",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(pieces: &[&[u8]]) -> (Vec<u8>, Scan) {
        let mut s = DataScanner::default();
        let mut out = Vec::new();
        for (n, p) in pieces.iter().enumerate() {
            match s.scan(p, &mut out) {
                Scan::More => continue,
                Scan::End(used) => {
                    assert!(n == pieces.len() - 1, "ended early");
                    return (out, Scan::End(used));
                }
                Scan::Invalid => return (out, Scan::Invalid),
            }
        }
        (out, Scan::More)
    }

    #[test]
    fn unstuffs_and_ends() {
        let (out, end) = scan_all(&[b"a\r\n..b\r\n.c\r\n.\r\nMAIL"]);
        assert_eq!(out, b"a\r\n.b\r\nc\r\n");
        assert_eq!(end, Scan::End(15));
    }

    #[test]
    fn empty_message() {
        assert_eq!(scan_all(&[b".\r\n"]), (vec![], Scan::End(3)));
    }

    #[test]
    fn byte_by_byte_equals_whole() {
        let msg: &[u8] = b"Subject: x\r\n\r\n..dot\r\nline two\r\n.\r\n";
        let whole = scan_all(&[msg]);
        let pieces: Vec<&[u8]> = msg.chunks(1).collect();
        let mut s = DataScanner::default();
        let mut out = Vec::new();
        let mut end = Scan::More;
        for p in pieces {
            end = s.scan(p, &mut out);
        }
        assert_eq!((out, end), (whole.0, Scan::End(1)));
    }

    #[test]
    fn smuggling_endings_are_invalid() {
        for ending in SMUGGLING_ENDINGS.into_iter().chain([&b"x\0y"[..]]) {
            let mut msg = b"Subject: x\r\n\r\nbody".to_vec();
            msg.extend_from_slice(ending);
            msg.extend_from_slice(b"MAIL FROM:<a@b.test>\r\n\r\n.\r\n");
            assert_eq!(scan_all(&[&msg]).1, Scan::Invalid, "{ending:?}");
        }
    }

    #[test]
    fn chunk_checker_follows_the_same_policy() {
        let mut c = ChunkChecker::default();
        assert!(c.check(b"a\r"));
        assert!(c.pending_cr());
        assert!(c.check(b"\nb\r\n"));
        assert!(!ChunkChecker::default().check(b"a\nb"));
        assert!(!ChunkChecker::default().check(b"a\rb"));
        assert!(!ChunkChecker::default().check(b"a\0"));
    }
}
