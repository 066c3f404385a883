//! The client side of SMTP, sans-IO: reading a server's replies and dot-stuffing DATA.
//!
//! Four clients speak SMTP to a server: the edge's relay to its next hop, the control plane's
//! alert email, `moat bench` and the e2e test client. Each keeps its own sockets, timeouts and
//! TLS, feeds the bytes it reads into a [`ReplyReader`] and takes complete [`Reply`]s out; what
//! it sends after `DATA` comes from a [`DotStuffer`] (chunk by chunk) or [`stuff`] (a whole
//! message).
//!
//! The reader reads from the network, so every malformed input is a [`ReplyError`], never a
//! panic, and both the length of a line and the number of lines in one reply are bounded.

use std::fmt;

/// Longest reply line accepted, its line ending included.
pub const MAX_LINE: usize = 4096;

/// Most lines in one reply.
pub const MAX_LINES: usize = 100;

/// One complete (possibly multi-line) reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code, 200 to 599, the same on every line.
    pub code: u16,
    /// Each line as received, code and separator included, without its line ending
    /// (`250-PIPELINING`, `250 8BITMIME`); invalid UTF-8 is replaced. At least one.
    pub lines: Vec<String>,
}

impl Reply {
    /// Each line's text: what follows the code and its separator (`-` or space).
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(|l| l.get(4..).unwrap_or(""))
    }

    /// The enhanced status code (RFC 3463, `2.1.5`) when the first line starts with one
    /// followed by a space: three dot-separated, non-empty runs of digits.
    pub fn enhanced(&self) -> Option<&str> {
        let (word, _) = self.texts().next()?.split_once(' ')?;
        let mut parts = 0;
        for p in word.split('.') {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            parts += 1;
        }
        (parts == 3).then_some(word)
    }

    /// The texts with the enhanced status code taken off every line that starts with it, as a
    /// relay passes a next hop's reply on under its own code and status.
    pub fn texts_without_enhanced(&self) -> Vec<String> {
        let prefix = self.enhanced().map(|s| format!("{s} "));
        self.texts()
            .map(|t| match &prefix {
                Some(p) => t.strip_prefix(p.as_str()).unwrap_or(t).to_owned(),
                None => t.to_owned(),
            })
            .collect()
    }

    /// Whether the code is a success or an intermediate reply (2xx or 3xx).
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// The last line, which a one-line summary of the reply quotes.
    pub fn last_line(&self) -> &str {
        self.lines.last().map_or("", String::as_str)
    }
}

impl fmt::Display for Reply {
    /// The lines as received, joined by `\n`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines.join("\n"))
    }
}

/// Input that is not a well-formed reply. After one, the offending line (or, for a line too
/// long, everything buffered) is dropped and the next call starts a new reply; a client
/// usually closes the connection instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// A line, its ending included, is longer than the reader's bound.
    #[error("reply line longer than {0} bytes")]
    LineTooLong(usize),
    /// A line that does not start with a code from 200 to 599.
    #[error("malformed reply line `{0}`")]
    Malformed(String),
    /// A continuation line carries another code than the lines before it.
    #[error("reply code changed within a multi-line reply")]
    CodeChanged,
    /// More lines than the reader's bound.
    #[error("reply too long")]
    TooManyLines,
}

/// Reassembles replies from the bytes a client reads, however they were split: a line across
/// reads, several replies in one read (pipelining), `CRLF` or a bare `LF` as line ending.
///
/// A line whose fourth byte is `-` continues the reply; any other line ends it.
#[derive(Debug, Clone)]
pub struct ReplyReader {
    buf: Vec<u8>,
    /// Where the unread part of `buf` starts.
    start: usize,
    /// Lines of the reply being read.
    lines: Vec<String>,
    code: u16,
    max_line: usize,
    max_lines: usize,
}

impl Default for ReplyReader {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplyReader {
    /// A reader with the default bounds, [`MAX_LINE`] and [`MAX_LINES`].
    pub fn new() -> Self {
        Self::with_limits(MAX_LINE, MAX_LINES)
    }

    /// A reader accepting lines up to `max_line` bytes (ending included) and replies of up to
    /// `max_lines` lines.
    pub fn with_limits(max_line: usize, max_lines: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            lines: Vec::new(),
            code: 0,
            max_line: max_line.max(1),
            max_lines: max_lines.max(1),
        }
    }

    /// Adds bytes read from the server. Call [`next_reply`](Self::next_reply) after each
    /// read: that is where the line bound is enforced.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete reply, `None` until enough bytes have been fed.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        loop {
            let unread = &self.buf[self.start..];
            let Some(i) = unread.iter().position(|&b| b == b'\n') else {
                if unread.len() >= self.max_line {
                    return Err(self.too_long());
                }
                return Ok(None);
            };
            if i + 1 > self.max_line {
                return Err(self.too_long());
            }
            let line = String::from_utf8_lossy(&unread[..=i]).into_owned();
            self.start += i + 1;
            if let Some(reply) = self.line(line)? {
                return Ok(Some(reply));
            }
        }
    }

    /// The server closed the connection: the reply that a last line without a line ending
    /// completes, if any (as reading up to the end of the stream would take it). `None` means
    /// the connection closed with no whole reply left to read.
    pub fn finish(&mut self) -> Result<Option<Reply>, ReplyError> {
        if let Some(reply) = self.next_reply()? {
            return Ok(Some(reply));
        }
        if self.start == self.buf.len() {
            return Ok(None);
        }
        let line = String::from_utf8_lossy(&self.buf[self.start..]).into_owned();
        self.start = self.buf.len();
        self.line(line)
    }

    /// Whether anything was received past the last complete reply (bytes, or lines of a reply
    /// not yet complete): after a `220` to STARTTLS there must be nothing.
    pub fn has_pending(&self) -> bool {
        self.start < self.buf.len() || !self.lines.is_empty()
    }

    fn too_long(&mut self) -> ReplyError {
        self.reset();
        self.buf.clear();
        self.start = 0;
        ReplyError::LineTooLong(self.max_line)
    }

    fn reset(&mut self) {
        self.lines.clear();
        self.code = 0;
    }

    /// Takes one line (its ending still on); a reply when it is the last.
    fn line(&mut self, line: String) -> Result<Option<Reply>, ReplyError> {
        let text = line.trim_end_matches(['\r', '\n']);
        let code = text
            .get(..3)
            .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|c| (200..600).contains(c));
        let Some(code) = code else {
            self.reset();
            return Err(ReplyError::Malformed(text.to_owned()));
        };
        if self.code != 0 && code != self.code {
            self.reset();
            return Err(ReplyError::CodeChanged);
        }
        self.code = code;
        let last = text.as_bytes().get(3) != Some(&b'-');
        self.lines.push(text.to_owned());
        if last {
            self.code = 0;
            let lines = std::mem::take(&mut self.lines);
            return Ok(Some(Reply { code, lines }));
        }
        if self.lines.len() >= self.max_lines {
            self.reset();
            return Err(ReplyError::TooManyLines);
        }
        Ok(None)
    }
}

/// Dot-stuffs message content on its way out after `DATA`, chunk by chunk: a `.` at the start
/// of a line (after any `LF`, bare or not, and at the very start) is doubled, even when the
/// line started in an earlier chunk. Bytes are otherwise passed through as they are: no line
/// ending is normalised (the edge refuses bare `CR` and `LF` before content reaches a relay).
#[derive(Debug, Clone)]
pub struct DotStuffer {
    line_start: bool,
    /// The last two bytes of the content so far.
    tail: [u8; 2],
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl DotStuffer {
    /// A stuffer at the start of the content.
    pub fn new() -> Self {
        Self {
            line_start: true,
            tail: [0, 0],
        }
    }

    /// Appends `content`, stuffed, to `out`.
    pub fn push(&mut self, content: &[u8], out: &mut Vec<u8>) {
        out.reserve(content.len() + content.len() / 64 + 1);
        for &b in content {
            if self.line_start && b == b'.' {
                out.push(b'.');
            }
            out.push(b);
            self.line_start = b == b'\n';
        }
        self.tail = match content {
            [.., a, b] => [*a, *b],
            [b] => [self.tail[1], *b],
            [] => self.tail,
        };
    }

    /// The end of data: `.CRLF` after content that ended with `CRLF`, else `CRLF.CRLF` (so
    /// empty content and content without a final line ending are terminated too).
    pub fn finish(&self) -> &'static [u8] {
        if self.tail == *b"\r\n" {
            b".\r\n"
        } else {
            b"\r\n.\r\n"
        }
    }
}

/// A whole message, dot-stuffed and terminated, ready to write after `DATA`'s `354`.
pub fn stuff(message: &[u8]) -> Vec<u8> {
    let mut s = DotStuffer::new();
    let mut out = Vec::with_capacity(message.len() + message.len() / 50 + 5);
    s.push(message, &mut out);
    out.extend_from_slice(s.finish());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(chunks: &[&[u8]]) -> Vec<Result<Reply, ReplyError>> {
        let mut r = ReplyReader::new();
        let mut out = Vec::new();
        for c in chunks {
            r.feed(c);
            loop {
                match r.next_reply() {
                    Ok(Some(reply)) => out.push(Ok(reply)),
                    Ok(None) => break,
                    Err(e) => out.push(Err(e)),
                }
            }
        }
        out
    }

    fn one(input: &[u8]) -> Result<Reply, ReplyError> {
        let mut all = read_all(&[input]);
        assert_eq!(all.len(), 1, "{all:?}");
        all.remove(0)
    }

    #[test]
    fn a_multi_line_reply_with_its_enhanced_code() {
        let r = one(b"250-mx.test greets you\r\n250-PIPELINING\r\n250 8BITMIME\r\n").unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(
            r.lines,
            ["250-mx.test greets you", "250-PIPELINING", "250 8BITMIME"]
        );
        assert_eq!(
            r.texts().collect::<Vec<_>>(),
            ["mx.test greets you", "PIPELINING", "8BITMIME"]
        );
        assert_eq!(r.enhanced(), None);
        assert_eq!(r.last_line(), "250 8BITMIME");
        assert_eq!(
            r.to_string(),
            "250-mx.test greets you\n250-PIPELINING\n250 8BITMIME"
        );

        let r = one(b"550-5.7.1 not here\r\n550-see http://x\r\n550 5.7.1 go away\r\n").unwrap();
        assert_eq!(r.enhanced(), Some("5.7.1"));
        assert_eq!(
            r.texts_without_enhanced(),
            ["not here", "see http://x", "go away"]
        );
        assert!(!r.is_positive());
        assert!(one(b"354 go ahead\r\n").unwrap().is_positive());
    }

    #[test]
    fn enhanced_codes_need_three_digit_runs_and_a_space() {
        for (line, want) in [
            ("250 2.0.0 ok", Some("2.0.0")),
            ("250 2.10.100 ok", Some("2.10.100")),
            ("250 2.0.0", None),
            ("250 2.0 ok", None),
            ("250 2..0 ok", None),
            ("250 2.0.x ok", None),
            ("250 2.0.0.0 ok", None),
            ("250 ok", None),
            ("250", None),
        ] {
            let r = one(format!("{line}\r\n").as_bytes()).unwrap();
            assert_eq!(r.enhanced(), want, "{line}");
        }
        assert_eq!(one(b"250\r\n").unwrap().texts_without_enhanced(), [""]);
    }

    #[test]
    fn pipelined_replies_in_one_read_come_out_one_by_one() {
        let all = read_all(&[b"250 2.1.0 ok\r\n250-a\r\n250 2.1.5 ok\r\n354 go\r\n250 x"]);
        let codes: Vec<u16> = all.iter().map(|r| r.as_ref().unwrap().code).collect();
        assert_eq!(codes, [250, 250, 354]);
        let mut r = ReplyReader::new();
        r.feed(b"220 hi\r\n");
        assert!(r.next_reply().unwrap().is_some());
        assert!(!r.has_pending());
        r.feed(b"220 ready\r\nxx");
        assert!(r.next_reply().unwrap().is_some());
        assert!(r.has_pending(), "bytes after the reply");
        let mut r = ReplyReader::new();
        r.feed(b"250-a\r\n");
        assert_eq!(r.next_reply(), Ok(None));
        assert!(r.has_pending(), "half a reply");
    }

    #[test]
    fn bare_lf_and_stray_cr_end_lines() {
        let r = one(b"250-a\n250 b\r\r\n").unwrap();
        assert_eq!(r.lines, ["250-a", "250 b"]);
    }

    #[test]
    fn bad_input_is_an_error_and_the_next_reply_still_reads() {
        for (input, want) in [
            (&b"hello\r\n"[..], ReplyError::Malformed("hello".into())),
            (b"\r\n", ReplyError::Malformed(String::new())),
            (b"25\r\n", ReplyError::Malformed("25".into())),
            (b"199 x\r\n", ReplyError::Malformed("199 x".into())),
            (b"600 x\r\n", ReplyError::Malformed("600 x".into())),
            (b"+25 x\r\n", ReplyError::Malformed("+25 x".into())),
            (b"2a0 x\r\n", ReplyError::Malformed("2a0 x".into())),
            (b"250-a\r\n251 b\r\n", ReplyError::CodeChanged),
        ] {
            let mut all = read_all(&[input, b"221 bye\r\n"]);
            assert_eq!(all.len(), 2, "{all:?}");
            assert_eq!(all.remove(0), Err(want));
            assert_eq!(all.remove(0).unwrap().code, 221);
        }
        // Invalid UTF-8 in the text is replaced, not refused.
        assert_eq!(one(b"250 \xff\r\n").unwrap().lines, ["250 \u{fffd}"]);
    }

    #[test]
    fn lines_and_replies_are_bounded() {
        let mut r = ReplyReader::with_limits(10, 3);
        r.feed(b"250 1234\r\n");
        assert_eq!(r.next_reply().unwrap().unwrap().lines, ["250 1234"]);
        r.feed(b"250 12345\r\n");
        assert_eq!(r.next_reply(), Err(ReplyError::LineTooLong(10)));
        // Without a line ending yet: refused as soon as the bound is reached.
        r.feed(b"250 123456");
        assert_eq!(r.next_reply(), Err(ReplyError::LineTooLong(10)));
        r.feed(b"250-a\r\n250-b\r\n250 c\r\n");
        assert_eq!(r.next_reply().unwrap().unwrap().lines.len(), 3);
        r.feed(b"250-a\r\n250-b\r\n250-c\r\n250 d\r\n");
        assert_eq!(r.next_reply(), Err(ReplyError::TooManyLines));

        let mut r = ReplyReader::new();
        r.feed(&[b'2'; 1 << 20]);
        assert_eq!(r.next_reply(), Err(ReplyError::LineTooLong(MAX_LINE)));
        let mut long = b"250-x\r\n".repeat(MAX_LINES);
        long.extend_from_slice(b"250 end\r\n");
        r.feed(&long);
        assert_eq!(r.next_reply(), Err(ReplyError::TooManyLines));
    }

    #[test]
    fn the_end_of_the_stream_completes_a_last_line() {
        let mut r = ReplyReader::new();
        r.feed(b"221 bye");
        assert_eq!(r.next_reply(), Ok(None));
        assert_eq!(r.finish().unwrap().unwrap().lines, ["221 bye"]);
        assert_eq!(r.finish(), Ok(None));
        let mut r = ReplyReader::new();
        r.feed(b"250-a\r\n250-b");
        assert_eq!(r.finish(), Ok(None), "a reply cut short");
        let mut r = ReplyReader::new();
        r.feed(b"250 a\r\n");
        assert_eq!(r.finish().unwrap().unwrap().code, 250);
    }

    /// Every way of cutting a pipelined stream in three gives the same replies.
    #[test]
    fn replies_split_at_any_byte_boundaries_read_the_same() {
        let stream: &[u8] =
            b"220 mx\r\n250-mx\n250-SIZE 10\r\n250 OK\r\n550 5.1.1 no\r\nbad\r\n354 go\r\n";
        let whole = read_all(&[stream]);
        assert_eq!(whole.len(), 5);
        for i in 0..=stream.len() {
            for j in i..=stream.len() {
                let split = read_all(&[&stream[..i], &stream[i..j], &stream[j..]]);
                assert_eq!(split, whole, "cut at {i} and {j}");
            }
        }
    }

    /// Undoes the stuffing as a server reads DATA: the content up to the terminator.
    fn unstuff(data: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let mut line_start = true;
        let mut i = 0;
        while i < data.len() {
            if line_start && data[i] == b'.' {
                if data[i..].starts_with(b".\r\n") {
                    return (i + 3 == data.len()).then_some(out);
                }
                i += 1;
            }
            out.push(data[i]);
            line_start = data[i] == b'\n';
            i += 1;
        }
        None
    }

    #[test]
    fn dot_stuffing_cases() {
        for (body, want) in [
            (&b""[..], &b"\r\n.\r\n"[..]),
            (b"\r\n", b"\r\n.\r\n"),
            (b".", b"..\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\r\n..x\r\n", b"a\r\n...x\r\n.\r\n"),
            (b"no final line ending", b"no final line ending\r\n.\r\n"),
            (b"ends in CR\r", b"ends in CR\r\r\n.\r\n"),
            // A bare LF also starts a line: `\n.` is stuffed, so no `\n.\r\n` ends early.
            (b"a\n.\r\nb\r\n", b"a\n..\r\nb\r\n.\r\n"),
            (b"a\r.b\r\n", b"a\r.b\r\n.\r\n"),
            (b"x.y\r\n", b"x.y\r\n.\r\n"),
        ] {
            assert_eq!(stuff(body), want, "{:?}", String::from_utf8_lossy(body));
        }
    }

    /// Every body of up to six bytes over `.`, CR, LF and `a`, pushed in two chunks cut at every
    /// point (and with an empty chunk), stuffs as it does whole, and unstuffs back to itself
    /// whenever it ends with CRLF (else with the CRLF the terminator adds).
    #[test]
    fn dot_stuffing_is_the_same_across_chunk_boundaries_and_reversible() {
        let alphabet = [b'.', b'\r', b'\n', b'a'];
        let mut bodies: Vec<Vec<u8>> = vec![Vec::new()];
        let mut last = bodies.clone();
        for _ in 0..6 {
            last = last
                .iter()
                .flat_map(|b| {
                    alphabet.iter().map(move |&c| {
                        let mut b = b.clone();
                        b.push(c);
                        b
                    })
                })
                .collect();
            bodies.extend(last.iter().cloned());
        }
        for body in &bodies {
            let whole = stuff(body);
            for cut in 0..=body.len() {
                let mut s = DotStuffer::new();
                let mut out = Vec::new();
                s.push(&body[..cut], &mut out);
                s.push(&[], &mut out);
                s.push(&body[cut..], &mut out);
                out.extend_from_slice(s.finish());
                assert_eq!(out, whole, "{body:?} cut at {cut}");
            }
            let mut want = body.clone();
            if !body.ends_with(b"\r\n") {
                want.extend_from_slice(b"\r\n");
            }
            assert_eq!(unstuff(&whole), Some(want), "{body:?}");
        }
    }
}
