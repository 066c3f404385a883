//! Reading the header `From:` (RFC 5322, the "P2" sender) out of message content as it streams
//! past, to compare its domain with the envelope's (`MAIL FROM`, the "P1" sender); and its
//! `Message-ID:`, kept as a sample of mail from a sender domain the tenant does not accept.

/// Most header octets examined; a From header further down is not looked for.
const MAX_HEADER: usize = 64 * 1024;

/// Collects the header section of a message fed in chunks.
#[derive(Debug, Default)]
pub struct HeaderFrom {
    buf: Vec<u8>,
    done: bool,
}

impl HeaderFrom {
    /// Feeds content (CRLF lines, as the session machine passes it on).
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.done {
            return;
        }
        let room = MAX_HEADER.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if self.buf.windows(4).any(|w| w == b"\r\n\r\n") || self.buf.len() >= MAX_HEADER {
            self.done = true;
        }
    }

    /// The header section seen so far (at most 64 KiB), as text.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.buf)
    }

    /// The value of the first header field named `field` (any case), unfolded.
    fn field(&self, field: &str) -> Option<String> {
        let text = String::from_utf8_lossy(&self.buf);
        let head = text.split("\r\n\r\n").next()?;
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            match &mut value {
                Some(v) if line.starts_with([' ', '\t']) => v.push_str(line),
                Some(_) => break,
                None => {
                    if let Some((name, rest)) = line.split_once(':') {
                        if name.trim().eq_ignore_ascii_case(field) {
                            value = Some(rest.to_owned());
                        }
                    }
                }
            }
        }
        value
    }

    /// The first `Message-ID:` header's value, trimmed (`None` when absent or empty).
    pub fn message_id(&self) -> Option<String> {
        let v = self.field("message-id")?;
        let v = v.trim();
        (!v.is_empty()).then(|| v.to_owned())
    }

    /// The domain of the first address in the first `From:` header, lowercase.
    pub fn domain(&self) -> Option<String> {
        let value = self.field("from")?;
        // `Name <a@b>` or a bare `a@b`; a comment or display name may hold an `@`, the angle
        // address wins.
        let addr = match (value.rfind('<'), value.rfind('>')) {
            (Some(l), Some(r)) if l < r => &value[l + 1..r],
            _ => value.split(',').next().unwrap_or_default().trim(),
        };
        let domain = addr.rsplit_once('@')?.1.trim().trim_end_matches('>');
        (!domain.is_empty()).then(|| domain.to_ascii_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_id() {
        let mut h = HeaderFrom::default();
        for chunk in "From: a@b.test\r\nMessage-Id:\r\n <x.1@b.test>\r\n\r\nMessage-ID: <no>\r\n"
            .as_bytes()
            .chunks(5)
        {
            h.feed(chunk);
        }
        assert_eq!(h.message_id().as_deref(), Some("<x.1@b.test>"));
        assert_eq!(HeaderFrom::default().message_id(), None);
    }

    fn from(msg: &str) -> Option<String> {
        let mut h = HeaderFrom::default();
        for chunk in msg.as_bytes().chunks(7) {
            h.feed(chunk);
        }
        h.domain()
    }

    #[test]
    fn the_header_from_domain() {
        assert_eq!(
            from("Subject: x\r\nFrom: \"a@fake.test\" <Boss@Contoso.TEST>\r\n\r\nbody"),
            Some("contoso.test".into())
        );
        assert_eq!(
            from("FROM:\r\n  someone@folded.test\r\nTo: x\r\n\r\n"),
            Some("folded.test".into())
        );
        assert_eq!(from("Subject: x\r\n\r\nFrom: body@no.test\r\n"), None);
        assert_eq!(from("From: undisclosed\r\n\r\n"), None);
    }
}
