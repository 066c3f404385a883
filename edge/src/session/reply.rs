//! The one registry of SMTP replies the edge sends.
//!
//! Every reply the session machine or the driver produces starts from a [`Code`] constant here,
//! so the wire contract (3-digit code, RFC 3463 enhanced code, text) can be read in one place.
//! Replies relayed from the next hop keep the next hop's code and text.

use std::borrow::Cow;
use std::sync::Arc;

/// A registry entry: reply code, enhanced status code and default text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    /// The 3-digit reply code (RFC 5321 section 4.2).
    pub code: u16,
    /// The enhanced status code (RFC 3463), without the reply code.
    pub status: &'static str,
    /// The default human-readable text.
    pub text: &'static str,
}

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $code:literal $status:literal $text:literal;)*) => {
        $($(#[$doc])* pub const $name: Code = Code { code: $code, status: $status, text: $text };)*
        /// Every registry entry, for tests and documentation.
        pub const ALL: &[Code] = &[$($name),*];
    };
}

codes! {
    /// The greeting; the driver puts the host name in front of the text.
    GREETING = 220 "" "ESMTP Moat ready";
    /// Generic success (NOOP, RSET).
    OK = 250 "2.0.0" "OK";
    /// MAIL accepted.
    SENDER_OK = 250 "2.1.0" "Sender OK";
    /// RCPT accepted.
    RECIPIENT_OK = 250 "2.1.5" "Recipient OK";
    /// A non-final BDAT chunk was received.
    CHUNK_OK = 250 "2.0.0" "Chunk received";
    /// The message was handed to the next hop, which accepted it.
    MESSAGE_ACCEPTED = 250 "2.6.0" "Message accepted for delivery";
    /// DATA may start.
    START_DATA = 354 "" "Start mail input; end with <CRLF>.<CRLF>";
    /// QUIT.
    BYE = 221 "2.0.0" "Service closing transmission channel";
    /// HELP.
    HELP = 214 "2.0.0" "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY STARTTLS";
    /// VRFY is answered without disclosing anything (RFC 5321 section 3.5.3).
    CANNOT_VRFY = 252 "2.5.0" "Cannot VRFY user, but will accept message and attempt delivery";
    /// STARTTLS accepted; the TLS handshake follows.
    READY_TLS = 220 "2.0.0" "Ready to start TLS";
    /// Unknown command.
    UNRECOGNIZED = 500 "5.5.2" "Syntax error, command unrecognized";
    /// A command line longer than the limit.
    LINE_TOO_LONG = 500 "5.5.2" "Line too long";
    /// A command line ending in a bare LF or containing a bare CR or NUL.
    BAD_LINE_ENDING = 500 "5.5.2" "Command lines must end with <CRLF> and contain no bare <CR> or NUL";
    /// Arguments or parameters that do not parse.
    SYNTAX_PARAMS = 501 "5.5.4" "Syntax error in parameters or arguments";
    /// EHLO/HELO without a usable name.
    SYNTAX_HELO = 501 "5.5.4" "Syntax: EHLO hostname";
    /// BDAT without a valid size.
    SYNTAX_BDAT = 501 "5.5.4" "Syntax: BDAT chunk-size [LAST]";
    /// A MAIL FROM path that does not parse.
    BAD_SENDER_SYNTAX = 501 "5.1.7" "Bad sender address syntax";
    /// A RCPT TO path that does not parse.
    BAD_RECIPIENT_SYNTAX = 501 "5.1.3" "Bad recipient address syntax";
    /// EXPN is never offered.
    EXPN_DISABLED = 502 "5.5.1" "EXPN is not supported";
    /// A known command this listener does not offer (STARTTLS without TLS configured).
    NOT_IMPLEMENTED = 502 "5.5.1" "Command not implemented";
    /// Commands out of order.
    BAD_SEQUENCE = 503 "5.5.1" "Bad sequence of commands";
    /// MAIL before EHLO/HELO.
    HELO_FIRST = 503 "5.5.1" "Send EHLO or HELO first";
    /// A second MAIL inside a transaction.
    NESTED_MAIL = 503 "5.5.1" "Sender already specified";
    /// RCPT, DATA or BDAT before MAIL.
    MAIL_FIRST = 503 "5.5.1" "Need MAIL command first";
    /// STARTTLS on a session that already has TLS.
    TLS_ACTIVE = 503 "5.5.1" "TLS already active";
    /// DATA after BDAT in the same transaction (RFC 3030).
    DATA_AFTER_BDAT = 503 "5.5.1" "DATA is not allowed after BDAT";
    /// DATA or BDAT LAST with no accepted recipient (RFC 2920 section 3.1).
    NO_VALID_RECIPIENTS = 554 "5.5.1" "No valid recipients";
    /// An unknown or unsupported MAIL/RCPT parameter.
    PARAM_UNSUPPORTED = 555 "5.5.4" "MAIL FROM/RCPT TO parameter not recognized or not implemented";
    /// A non-ASCII address without SMTPUTF8 (RFC 6531 section 3.5).
    NEEDS_SMTPUTF8 = 553 "5.6.7" "Non-ASCII addresses require the SMTPUTF8 parameter";
    /// Too many recipients in one transaction.
    TOO_MANY_RECIPIENTS = 452 "4.5.3" "Too many recipients";
    /// Declared or actual message size above the limit.
    MESSAGE_TOO_BIG = 552 "5.3.4" "Message size exceeds fixed maximum message size";
    /// MAIL on a listener that requires TLS, before STARTTLS.
    TLS_REQUIRED = 530 "5.7.0" "Must issue a STARTTLS command first";
    /// DATA containing a bare CR, bare LF or NUL: the session is closed (see the crate docs).
    BAD_DATA_ENDING = 521 "5.5.2" "Message refused: bare <CR>, bare <LF> or NUL in message content; lines must end with <CRLF>";
    /// Recipient domain accepted by no tenant (the relay rules of later issues may allow it).
    RELAY_DENIED = 550 "5.7.64" "TenantAttribution; Relay Access Denied";
    /// Input sent where the client must wait for a reply (before the greeting, or after a
    /// command that ends a pipelined group), by an unauthenticated client: the session is
    /// closed. Postfix's exact reply for its `smtpd_forbid_unauth_pipelining` (Postfix 3.9
    /// and later, on by default; postconf(5)), which logs "improper command pipelining after
    /// CMD".
    PROTOCOL_SYNC = 554 "5.5.0" "Error: SMTP protocol synchronization";
    /// Too many protocol errors in one session.
    TOO_MANY_ERRORS = 421 "4.7.0" "Too many errors, closing connection";
    /// The edge-wide session limit is reached.
    TOO_MANY_SESSIONS = 421 "4.7.0" "Too many concurrent sessions, try again later";
    /// The per-client-IP session limit is reached.
    TOO_MANY_FROM_IP = 421 "4.7.0" "Too many concurrent sessions from your address, try again later";
    /// A timeout while waiting for the client.
    TIMEOUT = 421 "4.4.2" "Timeout exceeded, closing connection";
    /// The edge is draining for shutdown.
    SHUTTING_DOWN = 421 "4.3.2" "Service shutting down, try again later";
    /// The edge has never received a policy snapshot, so it cannot decide anything.
    NO_POLICY = 421 "4.3.2" "No policy from the control plane yet, try again later";
    /// The next hop could not be reached or refused the connection.
    NEXT_HOP_UNAVAILABLE = 451 "4.4.1" "Next hop unavailable, try again later";
    /// The next hop failed during the transaction.
    NEXT_HOP_FAILED = 451 "4.4.2" "Connection to next hop lost, try again later";
    /// The next hop cannot take an SMTPUTF8 message.
    NEXT_HOP_NO_SMTPUTF8 = 553 "5.6.7" "Next hop does not support SMTPUTF8";
    /// A recipient whose mail takes the other route (relay vs inbound) than the transaction's
    /// first: the client sends it again in a new transaction (RFC 5321 section 4.5.3.1.10).
    ROUTE_SPLIT = 452 "4.5.3" "Relay and local recipients go in separate transactions; send this one again";
    /// The client matches an inbound connector the control plane restricted (Exchange Online's
    /// exact text).
    RESTRICTED_CONNECTOR = 550 "5.7.711" "Access denied, bad inbound connector. AS(2204)";
    /// A sender domain scoped by a tenant's Partner connector arrived from outside that
    /// connector's IP addresses or certificate. Exchange Online's observed text; the reply sent
    /// names the connector and its restriction(s) in place of "either ... or"
    /// (`verdict::connector::partner_text`).
    PARTNER_RESTRICTED = 550 "5.7.51" "TenantInboundAttribution; There is a partner connector configured that matched the message's recipient domain. The connector had either the RestrictDomainsToIPAddresses or RestrictDomainsToCertificate set";
    /// The recipient tenant's connector requires TLS and the session is in clear text.
    CONNECTOR_REQUIRES_TLS = 451 "4.7.10" "The recipient's inbound connector requires TLS; use STARTTLS";
    /// AUTH succeeded (RFC 4954).
    AUTH_OK = 235 "2.7.0" "Authentication successful";
    /// Wrong login or password (RFC 4954).
    AUTH_FAILED = 535 "5.7.8" "Authentication credentials invalid";
    /// Too many failed logins from this client address or for this user.
    AUTH_THROTTLED = 454 "4.7.0" "Too many failed authentication attempts, try again later";
    /// MAIL on an AUTH listener before authenticating.
    AUTH_REQUIRED = 530 "5.7.0" "Authentication required";
    /// A second AUTH in one session.
    AUTH_AGAIN = 503 "5.5.1" "Already authenticated";
    /// AUTH with a mechanism other than PLAIN and LOGIN.
    AUTH_MECHANISM = 504 "5.5.4" "Unrecognized authentication type";
    /// The client cancelled AUTH with `*`.
    AUTH_CANCELLED = 501 "5.7.0" "Authentication cancelled";
    /// An AUTH response that is not valid base64 or not a valid PLAIN message.
    AUTH_BAD_RESPONSE = 501 "5.5.2" "Cannot decode the authentication response";
    /// The legacy-TLS speed bump (Exchange Online's exact text): a session on TLS 1.0/1.1 drawn
    /// for refusal; temporary, so the client retries and a later draw may pass.
    LEGACY_TLS_SPEED_BUMP = 421 "4.7.66" "TLS 1.0 and 1.1 are not supported. Please upgrade/update your client to support TLS 1.2. Visit https://aka.ms/smtp_auth_tls.";
    /// A user of a tenant without `allow-legacy-tls-clients` on a legacy (opt-in) listener.
    /// Exchange Online's 3-digit code is not public; Moat answers `550`, permanent, because only
    /// a change of the tenant's setting helps.
    LEGACY_TLS_NOT_ALLOWED = 550 "5.7.67" "TLS 1.0 and 1.1 are not supported by your organization";
    /// A user restricted for exceeding its sending limits (Exchange Online's text as bounces
    /// show it, with its `AS(42004)` tag).
    RESTRICTED_USER = 550 "5.1.8" "Access denied, bad outbound sender AS(42004)";
    /// MAIL FROM an address the authenticated user may not send as (Exchange Online's text).
    SEND_AS_DENIED = 550 "5.7.60" "SMTP; Client does not have permissions to send as this sender";
    /// A message from an out-of-date on-premises Exchange server in one of its throttled minutes
    /// (the text names the service and the minutes: see `onprem_refusal` in the driver).
    ONPREM_THROTTLED = 450 "4.7.230" "Connecting Exchange server version is out-of-date; connection throttled";
    /// A message from an out-of-date on-premises Exchange server in one of its blocked minutes.
    ONPREM_BLOCKED = 550 "5.7.230" "Connecting Exchange server version is out-of-date; connection blocked";
    /// A local failure (for example, the maildir sink could not write).
    LOCAL_ERROR = 451 "4.3.0" "Local error in processing, try again later";
}

/// A reply ready to be sent: one or more lines sharing a code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The 3-digit code.
    pub code: u16,
    /// The enhanced status code, empty when there is none.
    pub status: Cow<'static, str>,
    /// The text lines; with `prepared`, at least one in all.
    pub lines: Vec<Cow<'static, str>>,
    /// Text lines that follow `lines`, prepared once and shared by every session of a listener
    /// (the greeting's text, EHLO's keywords): sending them costs no allocation.
    pub prepared: Option<Arc<[String]>>,
    /// Whether the node name is appended to the last line (not for EHLO's keyword list).
    pub tagged: bool,
}

impl From<Code> for Reply {
    fn from(c: Code) -> Self {
        Self {
            code: c.code,
            status: Cow::Borrowed(c.status),
            lines: vec![Cow::Borrowed(c.text)],
            prepared: None,
            tagged: true,
        }
    }
}

impl Reply {
    /// A registry reply with its text replaced.
    pub fn with_text(code: Code, text: impl Into<Cow<'static, str>>) -> Self {
        Self {
            lines: vec![text.into()],
            ..Self::from(code)
        }
    }

    /// A reply from parts, for replies relayed from a next hop.
    ///
    /// The reply is relayed once and tagged once: a node tag the next hop put at the end of its
    /// last line (` [edge-2]`, when the next hop is itself a Moat edge) is dropped, so the client
    /// sees one tag, the one of the edge it talks to, instead of `Recipient OK [edge-2] [edge-1]`.
    pub fn relayed(code: u16, status: String, lines: Vec<String>) -> Self {
        let mut lines: Vec<Cow<'static, str>> = lines.into_iter().map(Cow::Owned).collect();
        match lines.last_mut() {
            Some(last) => {
                let kept = without_node_tag(last).len();
                if kept < last.len() {
                    last.to_mut().truncate(kept);
                }
            }
            None => lines.push(Cow::Borrowed("")),
        }
        Self {
            code,
            status: Cow::Owned(status),
            lines,
            prepared: None,
            tagged: true,
        }
    }

    /// The EHLO reply built whole per session, as before the keyword lines were prepared per
    /// listener ([`Reply::ehlo_prepared`]); the tests compare the two.
    #[cfg(test)]
    pub(crate) fn ehlo(lines: Vec<String>) -> Self {
        Self {
            code: 250,
            status: Cow::Borrowed(""),
            lines: lines.into_iter().map(Cow::Owned).collect(),
            prepared: None,
            tagged: false,
        }
    }

    /// The EHLO reply from its greeting line and the listener's prepared keyword lines.
    pub fn ehlo_prepared(greeting: String, keywords: Arc<[String]>) -> Self {
        Self {
            code: 250,
            status: Cow::Borrowed(""),
            lines: vec![Cow::Owned(greeting)],
            prepared: Some(keywords),
            tagged: false,
        }
    }

    /// A registry reply whose text is prepared (the greeting with its host name): no
    /// allocation per reply.
    pub fn prepared(code: Code, text: Arc<[String]>) -> Self {
        Self {
            code: code.code,
            status: Cow::Borrowed(code.status),
            lines: Vec::new(),
            prepared: Some(text),
            tagged: true,
        }
    }

    /// An AUTH challenge (`334 <base64>`): no enhanced code, no node tag.
    pub fn challenge(text: &'static str) -> Self {
        Self {
            code: 334,
            status: Cow::Borrowed(""),
            lines: vec![Cow::Borrowed(text)],
            prepared: None,
            tagged: false,
        }
    }

    /// 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// 4xx.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// The reply on the wire, with ` [node]` appended to the last line when tagged.
    /// Written straight into `out`, without formatting machinery: every session renders
    /// several replies, and a handshake-only load showed the formatting in its profile.
    pub fn render(&self, node: &str, out: &mut Vec<u8>) {
        let code = self.code_label();
        let last = self.line_count().saturating_sub(1);
        for (i, line) in self.text().enumerate() {
            out.extend_from_slice(code.as_bytes());
            out.push(if i == last { b' ' } else { b'-' });
            if !self.status.is_empty() {
                out.extend_from_slice(self.status.as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(line.as_bytes());
            if i == last && self.tagged && !node.is_empty() {
                out.extend_from_slice(b" [");
                out.extend_from_slice(node.as_bytes());
                out.push(b']');
            }
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The code as text (a metrics label and the start of every line): a static string for the
    /// codes the edge sends, so that neither allocates.
    pub fn code_label(&self) -> Cow<'static, str> {
        let s = match self.code {
            220 => "220",
            221 => "221",
            235 => "235",
            250 => "250",
            251 => "251",
            252 => "252",
            334 => "334",
            354 => "354",
            421 => "421",
            450 => "450",
            451 => "451",
            452 => "452",
            454 => "454",
            500 => "500",
            501 => "501",
            502 => "502",
            503 => "503",
            504 => "504",
            530 => "530",
            535 => "535",
            550 => "550",
            551 => "551",
            552 => "552",
            553 => "553",
            554 => "554",
            555 => "555",
            c => return Cow::Owned(c.to_string()),
        };
        Cow::Borrowed(s)
    }

    /// Every text line: `lines`, then the prepared ones.
    pub fn text(&self) -> impl Iterator<Item = &str> {
        let prepared = self.prepared.as_deref().unwrap_or_default();
        self.lines
            .iter()
            .map(|l| &**l)
            .chain(prepared.iter().map(String::as_str))
    }

    fn line_count(&self) -> usize {
        self.lines.len() + self.prepared.as_deref().map_or(0, <[String]>::len)
    }

    /// The first line's text, for logs and errors.
    pub fn summary(&self) -> String {
        let mut out = Vec::new();
        Self {
            lines: self
                .text()
                .take(1)
                .map(|l| Cow::Owned(l.to_owned()))
                .collect(),
            prepared: None,
            ..self.clone()
        }
        .render("", &mut out);
        String::from_utf8_lossy(&out).trim_end().to_owned()
    }
}

/// `text` without a trailing node tag (` [name]`, as [`Reply::render`] appends one): a bracketed
/// word of node-name characters at the very end, after a space.
pub fn without_node_tag(text: &str) -> &str {
    let Some(open) = text.strip_suffix(']').and_then(|t| t.rfind(" [")) else {
        return text;
    };
    let name = &text[open + 2..text.len() - 1];
    let is_tag = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if is_tag {
        text[..open].trim_end()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relayed_line(code: u16, status: &str, lines: &[&str], node: &str) -> String {
        let mut out = Vec::new();
        Reply::relayed(
            code,
            status.into(),
            lines.iter().map(|l| l.to_string()).collect(),
        )
        .render(node, &mut out);
        String::from_utf8(out).expect("ascii")
    }

    #[test]
    fn a_relayed_reply_carries_one_node_tag() {
        // A Moat next hop tagged with the same name, or another one: one tag, this edge's.
        assert_eq!(
            relayed_line(250, "2.1.5", &["Recipient OK [edge-1]"], "edge-1"),
            "250 2.1.5 Recipient OK [edge-1]\r\n"
        );
        assert_eq!(
            relayed_line(250, "2.1.5", &["Recipient OK [edge-2.example]"], "edge-1"),
            "250 2.1.5 Recipient OK [edge-1]\r\n"
        );
        // A next hop without a tag: its text as it is, tagged once.
        assert_eq!(
            relayed_line(550, "5.1.1", &["no such user"], "edge-1"),
            "550 5.1.1 no such user [edge-1]\r\n"
        );
        // Brackets that are not a tag stay.
        assert_eq!(
            relayed_line(250, "2.0.0", &["Ok [queued as 1 2]"], "e"),
            "250 2.0.0 Ok [queued as 1 2] [e]\r\n"
        );
        assert_eq!(
            relayed_line(250, "2.0.0", &["Hello [192.0.2.1]", "Ok []"], "e"),
            "250-2.0.0 Hello [192.0.2.1]\r\n250 2.0.0 Ok [] [e]\r\n"
        );
        assert_eq!(without_node_tag("[edge-1]"), "[edge-1]");
    }

    #[test]
    fn renders_with_node_tag() {
        let mut out = Vec::new();
        Reply::from(RELAY_DENIED).render("edge-1", &mut out);
        assert_eq!(
            out,
            b"550 5.7.64 TenantAttribution; Relay Access Denied [edge-1]\r\n"
        );
    }

    #[test]
    fn multiline_ehlo_is_untagged() {
        let mut out = Vec::new();
        Reply::ehlo(vec!["host Hello".into(), "PIPELINING".into()]).render("e", &mut out);
        assert_eq!(out, b"250-host Hello\r\n250 PIPELINING\r\n");
    }

    #[test]
    fn registry_codes_are_consistent() {
        for c in ALL {
            assert!((200..600).contains(&c.code), "{c:?}");
            if !c.status.is_empty() {
                let class = c.status.as_bytes()[0];
                assert_eq!(class, b'0' + (c.code / 100) as u8, "{c:?}");
            }
        }
    }

    #[test]
    fn code_labels_are_the_code_in_decimal() {
        for code in 100..1000 {
            let r = Reply {
                code,
                ..Reply::from(OK)
            };
            assert_eq!(r.code_label(), code.to_string());
        }
        let mut out = Vec::new();
        Reply::from(OK).render("", &mut out);
        assert_eq!(
            out,
            format!("250 {} {}\r\n", OK.status, OK.text).into_bytes()
        );
    }
}
