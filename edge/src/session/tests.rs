//! Protocol tests for the sans-IO machine: a tiny harness plays the driver, resolving requests
//! against the demo policy and an in-memory next hop, so each test reads as a dialogue.

use std::time::{Duration, SystemTime};

use moat_shared::{PolicySnapshot, Seed};
use proptest::prelude::*;

use super::reply::{self, Reply};
use super::{Action, Session, SessionConfig, SessionFacts, TlsFacts};
use crate::verdict;

fn config() -> SessionConfig {
    SessionConfig {
        node: "edge-t".into(),
        hostname: "mx.test".into(),
        starttls: true,
        require_tls: false,
        auth: false,
        max_message_size: 1000,
        max_recipients: 3,
        max_errors: 10,
        max_line: 512,
        command_timeout: Duration::from_secs(60),
        // The dialogues below pipeline freely; `protocol_synchronization` turns it on.
        forbid_unauth_pipelining: false,
    }
}

struct Harness {
    session: Session,
    snapshot: PolicySnapshot,
    /// Content of the message being received.
    body: Vec<u8>,
    /// Messages the next hop accepted.
    delivered: Vec<Vec<u8>>,
    replies: Vec<String>,
    closed: bool,
    upgrades: u32,
    /// What the in-memory next hop answers to MAIL.
    mail_answer: Reply,
}

impl Harness {
    fn new(cfg: SessionConfig) -> Self {
        let facts = SessionFacts {
            id: "s1".into(),
            peer: "192.0.2.7:4000".parse().unwrap(),
            local: "192.0.2.1:25".parse().unwrap(),
            listener: "mx".into(),
            tls: None,
            helo: None,
            auth: None,
        };
        let mut h = Self {
            session: Session::new(cfg, facts),
            snapshot: Seed::parse(Seed::DEMO).unwrap().into_snapshot(1).unwrap(),
            body: Vec::new(),
            delivered: Vec::new(),
            replies: Vec::new(),
            closed: false,
            upgrades: 0,
            mail_answer: reply::SENDER_OK.into(),
        };
        assert_eq!(h.pump(), vec!["220 mx.test ESMTP Moat ready [edge-t]"]);
        h
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_464_000)
    }

    /// Runs the machine until it needs input, playing the driver; returns the replies' lines.
    fn pump(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(a) = self.session.poll(Self::now()) {
            match a {
                Action::Send(r) => {
                    let mut bytes = Vec::new();
                    r.render("edge-t", &mut bytes);
                    let text = String::from_utf8(bytes).unwrap();
                    out.push(text.trim_end().to_owned());
                }
                Action::Open(_) => self.session.resolve(self.mail_answer.clone(), Self::now()),
                Action::AddRecipient(to) => {
                    let client = verdict::Client::new(
                        &self.snapshot,
                        "192.0.2.7".parse().unwrap(),
                        &[],
                        false,
                    );
                    let r = match verdict::relay::recipient(&self.snapshot, &client, None, &to) {
                        Ok(_) => reply::RECIPIENT_OK.into(),
                        Err(denial) => denial.reply(),
                    };
                    self.session.resolve(r, Self::now());
                }
                Action::StartBody => {
                    self.body.clear();
                    self.session.resolve(reply::START_DATA.into(), Self::now());
                }
                Action::Body(b) => self.body.extend_from_slice(&b),
                Action::EndBody => {
                    self.delivered.push(std::mem::take(&mut self.body));
                    self.session
                        .resolve(reply::MESSAGE_ACCEPTED.into(), Self::now());
                }
                Action::Abort => self.body.clear(),
                Action::UpgradeTls => {
                    self.upgrades += 1;
                    self.session.tls_established(TlsFacts {
                        version: "TLSv1.3".into(),
                        cipher: "TLS_AES_128_GCM_SHA256".into(),
                        client_domains: vec![],
                    });
                }
                Action::Close => self.closed = true,
                // The harness's one user: alice / "right"; "legacy" plays the speed bump.
                Action::Authenticate { login, password } => {
                    let r = match (login.as_str(), password.0.as_str()) {
                        ("alice@example.test", "right") => reply::AUTH_OK.into(),
                        ("alice@example.test", "legacy") => reply::LEGACY_TLS_SPEED_BUMP.into(),
                        _ => reply::AUTH_FAILED.into(),
                    };
                    self.session.resolve(r, Self::now());
                }
            }
        }
        self.replies.extend(out.iter().cloned());
        out
    }

    fn send(&mut self, bytes: &[u8]) -> Vec<String> {
        self.session.receive(bytes);
        self.pump()
    }

    /// Sends one command and checks the first line of its reply starts with `expect`.
    fn cmd(&mut self, line: &str, expect: &str) {
        let got = self.send(format!("{line}\r\n").as_bytes());
        let first = got.first().map(String::as_str).unwrap_or("<no reply>");
        assert!(
            first.starts_with(expect),
            "{line:?}: expected {expect:?}, got {got:?}"
        );
    }

    fn ehlo(&mut self) {
        self.cmd(
            "EHLO client.test",
            "250-mx.test Hello client.test [192.0.2.7]",
        );
    }

    fn mail_from(&mut self, from: &str, expect: &str) {
        self.cmd(&format!("MAIL FROM:<{from}>"), expect);
    }

    fn rcpt_to(&mut self, to: &str, expect: &str) {
        self.cmd(&format!("RCPT TO:<{to}>"), expect);
    }
}

/// Strips the Received: header the machine prepends.
fn without_trace(msg: &[u8]) -> &[u8] {
    let mut i = 0;
    // The header is "Received: ..." plus folded continuation lines.
    loop {
        let end = msg[i..].windows(2).position(|w| w == b"\r\n").unwrap() + i + 2;
        i = end;
        if msg.get(i) != Some(&b'\t') {
            return &msg[i..];
        }
    }
}

#[test]
fn ehlo_advertises_the_extensions() {
    let mut h = Harness::new(config());
    let r = h.send(b"EHLO client.test\r\n");
    let lines: Vec<&str> = r[0].lines().collect();
    for ext in [
        "SIZE 1000",
        "8BITMIME",
        "SMTPUTF8",
        "PIPELINING",
        "CHUNKING",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
    ] {
        assert!(
            lines.iter().any(|l| &l[4..] == ext),
            "{ext} missing: {lines:?}"
        );
    }
    assert!(lines.last().unwrap().starts_with("250 "));
}

#[test]
fn a_whole_transaction() {
    let mut h = Harness::new(config());
    h.ehlo();
    h.mail_from("sender@elsewhere.test", "250 2.1.0");
    h.rcpt_to("alice@example.test", "250 2.1.5");
    h.rcpt_to(
        "bob@elsewhere.test",
        "550 5.7.64 TenantAttribution; Relay Access Denied [edge-t]",
    );
    h.cmd("DATA", "354 ");
    h.cmd("Subject: hi\r\n\r\n..leading dot\r\nend\r\n.", "250 2.6.0");
    assert_eq!(h.delivered.len(), 1);
    let msg = &h.delivered[0];
    assert!(msg.starts_with(b"Received: from client.test ([192.0.2.7])\r\n\tby mx.test (Moat edge-t) with ESMTP id s1.1\r\n\tfor <alice@example.test>; Mon, 23 Nov 2026 "));
    assert_eq!(
        without_trace(msg),
        b"Subject: hi\r\n\r\n.leading dot\r\nend\r\n"
    );
    h.cmd("QUIT", "221 2.0.0");
    assert!(h.closed);
}

#[test]
fn sequence_errors() {
    let mut h = Harness::new(config());
    h.mail_from("a@b.test", "503 5.5.1 Send EHLO or HELO first");
    h.ehlo();
    h.rcpt_to("alice@example.test", "503 5.5.1 Need MAIL command first");
    h.cmd("DATA", "503 5.5.1");
    h.mail_from("a@b.test", "250");
    h.mail_from("a@b.test", "503 5.5.1 Sender already specified");
    h.cmd("DATA", "554 5.5.1 No valid recipients");
    h.cmd("RSET", "250 2.0.0");
    h.rcpt_to("alice@example.test", "503 5.5.1");
}

#[test]
fn other_commands() {
    let mut h = Harness::new(config());
    h.cmd("NOOP", "250 2.0.0 OK [edge-t]");
    h.cmd("HELP", "214 2.0.0");
    h.cmd("VRFY alice", "252 2.5.0");
    h.cmd("EXPN list", "502 5.5.1");
    h.cmd("HELO old.client", "250 2.0.0 mx.test Hello old.client");
    h.cmd("XYZZY", "500 5.5.2");
}

#[test]
fn pipelined_commands_are_answered_in_order() {
    let mut h = Harness::new(config());
    h.ehlo();
    let r = h.send(
        b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\nRCPT TO:<y@nope.test>\r\nDATA\r\n",
    );
    let codes: Vec<&str> = r.iter().map(|l| &l[..3]).collect();
    assert_eq!(codes, ["250", "250", "550", "354"]);
}

#[test]
fn starttls_discards_pipelined_commands() {
    let mut h = Harness::new(config());
    h.ehlo();
    let r = h.send(b"STARTTLS\r\nNOOP\r\n");
    assert_eq!(r, vec!["220 2.0.0 Ready to start TLS [edge-t]"]);
    assert_eq!(h.upgrades, 1);
    // The session starts over inside TLS and no NOOP answer is pending.
    assert!(h.send(b"").is_empty());
    h.mail_from("a@b.test", "503 5.5.1 Send EHLO or HELO first");
    let r = h.send(b"EHLO again.test\r\n");
    assert!(!r[0].contains("STARTTLS"), "STARTTLS offered twice: {r:?}");
    h.cmd("STARTTLS", "503 5.5.1 TLS already active");
    h.mail_from("a@b.test", "250");
    h.rcpt_to("alice@example.test", "250");
    h.cmd("DATA", "354");
    h.cmd("x\r\n.", "250");
    assert!(h.delivered[0].starts_with(b"Received: from again.test"));
    assert!(String::from_utf8_lossy(&h.delivered[0]).contains("with ESMTPS id"));
    assert!(String::from_utf8_lossy(&h.delivered[0])
        .contains("(version=TLSv1.3 cipher=TLS_AES_128_GCM_SHA256)"));
}

#[test]
fn submission_requires_tls() {
    let mut h = Harness::new(SessionConfig {
        require_tls: true,
        ..config()
    });
    h.ehlo();
    h.mail_from(
        "a@example.test",
        "530 5.7.0 Must issue a STARTTLS command first",
    );
    h.cmd("STARTTLS", "220");
    h.ehlo();
    h.mail_from("a@example.test", "250");
}

#[test]
fn no_starttls_without_certificates() {
    let mut h = Harness::new(SessionConfig {
        starttls: false,
        ..config()
    });
    let r = h.send(b"EHLO c\r\n");
    assert!(!r[0].contains("STARTTLS"));
    h.cmd("STARTTLS", "502 5.5.1");
}

#[test]
fn bdat_chunks_are_joined_unstuffed() {
    let mut h = Harness::new(config());
    h.ehlo();
    h.mail_from("a@b.test", "250");
    h.rcpt_to("alice@example.test", "250");
    h.cmd("BDAT 9\r\nSubject: ", "250 2.0.0 9 octets received");
    h.cmd("BDAT 11 LAST\r\nx\r\n\r\n.dot\r\n", "250 2.6.0");
    assert_eq!(
        without_trace(&h.delivered[0]),
        b"Subject: x\r\n\r\n.dot\r\n"
    );
    h.cmd("DATA", "503 5.5.1 Need MAIL");
}

#[test]
fn bdat_out_of_sequence_still_consumes_its_chunk() {
    let mut h = Harness::new(config());
    h.ehlo();
    // The 9 octets look like a command; they must be swallowed, not executed.
    h.cmd("BDAT 6\r\nQUIT\r\n", "503 5.5.1 Need MAIL command first");
    assert!(!h.closed);
    h.mail_from("a@b.test", "250");
    h.cmd("BDAT 6 LAST\r\nQUIT\r\n", "554 5.5.1 No valid recipients");
    h.cmd("DATA", "503 5.5.1");
    h.cmd("NOOP", "250");
}

#[test]
fn data_after_bdat_is_refused() {
    let mut h = Harness::new(config());
    h.ehlo();
    h.mail_from("a@b.test", "250");
    h.rcpt_to("alice@example.test", "250");
    h.cmd("BDAT 4\r\nab\r\n", "250");
    h.cmd("DATA", "503 5.5.1 DATA is not allowed after BDAT");
}

#[test]
fn size_limits() {
    let mut h = Harness::new(config());
    h.ehlo();
    h.cmd("MAIL FROM:<a@b.test> SIZE=1001", "552 5.3.4");
    h.cmd("MAIL FROM:<a@b.test> SIZE=10", "250");
    h.rcpt_to("alice@example.test", "250");
    h.cmd("DATA", "354");
    let big = format!("{}\r\n", "x".repeat(1100));
    assert!(h.send(big.as_bytes()).is_empty());
    h.cmd(".", "552 5.3.4");
    assert!(h.delivered.is_empty());
    // The session goes on.
    h.mail_from("a@b.test", "250");
    h.rcpt_to("alice@example.test", "250");
    let chunk = "y".repeat(1001);
    h.cmd(&format!("BDAT 1001 LAST\r\n{chunk}"), "552 5.3.4");
    assert!(h.delivered.is_empty());
}

#[test]
fn recipient_limit() {
    let mut h = Harness::new(config());
    h.ehlo();
    h.mail_from("a@b.test", "250");
    for n in 0..3 {
        h.rcpt_to(&format!("u{n}@example.test"), "250");
    }
    h.rcpt_to("u4@example.test", "452 4.5.3 Too many recipients");
}

#[test]
fn utf8_needs_smtputf8() {
    let mut h = Harness::new(config());
    h.ehlo();
    h.mail_from("a@b.test", "250");
    h.rcpt_to("josé@example.test", "553 5.6.7");
    h.cmd("RSET", "250");
    h.cmd("MAIL FROM:<zoë@b.test> SMTPUTF8", "250");
    h.rcpt_to("josé@example.test", "250");
    h.cmd("DATA", "354");
    h.cmd("x\r\n.", "250");
    assert!(String::from_utf8_lossy(&h.delivered[0]).contains("with UTF8SMTP id"));
}

#[test]
fn bad_lines() {
    let mut h = Harness::new(config());
    assert_eq!(
        h.send(b"NOOP\n"),
        vec![
            "500 5.5.2 Command lines must end with <CRLF> and contain no bare <CR> or NUL [edge-t]"
        ]
    );
    h.cmd("NO\rOP", "500 5.5.2");
    h.cmd("NO\0OP", "500 5.5.2");
    let long = "NOOP ".to_owned() + &"x".repeat(600);
    h.cmd(&long, "500 5.5.2 Line too long");
    // A line past the limit without a newline yet is refused once, then skipped to its end.
    assert_eq!(
        h.send("x".repeat(600).as_bytes()),
        vec!["500 5.5.2 Line too long [edge-t]"]
    );
    assert!(h.send(b"yyyy\r\n").is_empty());
    h.cmd("NOOP", "250");
}

#[test]
fn too_many_errors_closes() {
    let mut h = Harness::new(SessionConfig {
        max_errors: 5,
        ..config()
    });
    for _ in 0..4 {
        h.cmd("BOGUS", "500");
    }
    h.cmd("BOGUS", "421 4.7.0 Too many errors");
    assert!(h.closed);
    assert!(h.send(b"NOOP\r\n").is_empty());
}

#[test]
fn smuggling_endings_never_make_two_messages() {
    for ending in super::body::SMUGGLING_ENDINGS {
        let mut h = Harness::new(config());
        h.ehlo();
        h.mail_from("a@b.test", "250");
        h.rcpt_to("alice@example.test", "250");
        h.cmd("DATA", "354");
        let mut data = b"Subject: outer\r\n\r\nbody".to_vec();
        data.extend_from_slice(ending);
        data.extend_from_slice(
            b"MAIL FROM:<evil@b.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nSubject: inner\r\n\r\n.\r\n",
        );
        let r = h.send(&data);
        assert_eq!(r.len(), 1, "{ending:?}: {r:?}");
        assert!(r[0].starts_with("521 5.5.2"), "{ending:?}: {r:?}");
        assert!(h.closed);
        assert!(h.delivered.is_empty(), "{ending:?}");
    }
}

#[test]
fn byte_by_byte_is_the_same_as_all_at_once() {
    let script: &[u8] = b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nSubject: x\r\n\r\n..a\r\n.\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nBDAT 6 LAST\r\nab\r\n\r\nQUIT\r\n";
    let mut whole = Harness::new(config());
    let all = whole.send(script);
    let mut bytes = Harness::new(config());
    let mut each = Vec::new();
    for b in script {
        each.extend(bytes.send(std::slice::from_ref(b)));
    }
    assert_eq!(all, each);
    assert_eq!(whole.delivered, bytes.delivered);
    assert_eq!(whole.delivered.len(), 2);
    assert!(whole.closed && bytes.closed);
}

#[test]
fn refused_mail_is_relayed_and_the_session_goes_on() {
    let mut h = Harness::new(config());
    h.mail_answer = reply::NEXT_HOP_UNAVAILABLE.into();
    h.ehlo();
    h.mail_from("a@b.test", "451 4.4.1 Next hop unavailable");
    h.rcpt_to("alice@example.test", "503 5.5.1");
    h.mail_answer = reply::SENDER_OK.into();
    h.mail_from("a@b.test", "250");
}

#[test]
fn timeout_and_shutdown() {
    let mut h = Harness::new(config());
    h.ehlo();
    h.mail_from("a@b.test", "250");
    assert!(!h.session.is_idle());
    h.session.timeout();
    assert_eq!(
        h.pump(),
        vec!["421 4.4.2 Timeout exceeded, closing connection [edge-t]"]
    );
    assert!(h.closed);
    let mut h = Harness::new(config());
    assert!(h.session.is_idle());
    h.session.shutdown();
    assert_eq!(
        h.pump(),
        vec!["421 4.3.2 Service shutting down, try again later [edge-t]"]
    );
}

#[test]
fn a_trickling_command_has_a_deadline() {
    let mut h = Harness::new(config());
    assert_eq!(h.session.command_deadline(), None);
    h.send(b"NO");
    let deadline = h.session.command_deadline().unwrap();
    assert_eq!(deadline, Harness::now() + Duration::from_secs(60));
    h.send(b"O");
    assert_eq!(
        h.session.command_deadline(),
        Some(deadline),
        "more bytes must not extend it"
    );
    h.cmd("P", "250");
    assert_eq!(h.session.command_deadline(), None);
}

/// Checks the invariants that must hold whatever the client sends.
fn run_arbitrary(pieces: &[Vec<u8>]) {
    let mut h = Harness::new(config());
    for p in pieces {
        h.send(p);
        // Replies are well-formed SMTP.
        for r in &h.replies {
            assert!(
                r.len() >= 4 && r.as_bytes()[..3].iter().all(u8::is_ascii_digit),
                "{r:?}"
            );
        }
        if h.closed {
            assert!(h.send(b"NOOP\r\n").is_empty());
            break;
        }
    }
    for m in &h.delivered {
        // Whatever was delivered is canonical: CRLF lines only, no NUL.
        let mut prev = 0u8;
        for &b in m.iter() {
            assert!(b != 0);
            assert_eq!(b == b'\n', prev == b'\r' && b == b'\n');
            if prev == b'\r' {
                assert_eq!(b, b'\n');
            }
            prev = b;
        }
    }
}

fn smtpish() -> impl Strategy<Value = Vec<u8>> {
    let words = prop_oneof![
        Just(b"EHLO x\r\n".to_vec()),
        Just(b"MAIL FROM:<a@b.test>\r\n".to_vec()),
        Just(b"RCPT TO:<alice@example.test>\r\n".to_vec()),
        Just(b"DATA\r\n".to_vec()),
        Just(b"BDAT 7\r\n".to_vec()),
        Just(b"BDAT 3 LAST\r\n".to_vec()),
        Just(b"\r\n.\r\n".to_vec()),
        Just(b"\n.\n".to_vec()),
        Just(b"STARTTLS\r\n".to_vec()),
        Just(b"RSET\r\n".to_vec()),
        Just(b".".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..40),
    ];
    proptest::collection::vec(words, 0..30).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20)) {
        run_arbitrary(&pieces);
    }

    #[test]
    fn smtp_like_input_never_panics(pieces in proptest::collection::vec(smtpish(), 0..8)) {
        run_arbitrary(&pieces);
    }
}

#[test]
fn the_received_header_keeps_only_what_a_name_is_made_of() {
    // Found by the adversarial suite: quotes, `;` and `<` in the EHLO name broke the header's
    // syntax, and 8-bit names reached messages without SMTPUTF8.
    for (helo, shown) in [
        ("evil;x.test", "evil?x.test"),
        ("evil\"x.test", "evil?x.test"),
        ("evil<x.test", "evil?x.test"),
        ("b\u{fc}cher.test", "b?cher.test"),
        ("[192.0.2.1]", "[192.0.2.1]"),
    ] {
        let mut h = Harness::new(config());
        h.cmd(&format!("EHLO {helo}"), "250");
        h.mail_from("sender@elsewhere.test", "250 2.1.0");
        h.rcpt_to("alice@example.test", "250 2.1.5");
        h.cmd("DATA", "354 ");
        h.cmd("Subject: hi\r\n\r\nx\r\n.", "250 2.6.0");
        let expected = format!("Received: from {shown} ([192.0.2.7])\r\n");
        assert!(
            h.delivered[0].starts_with(expected.as_bytes()),
            "{helo}: {}",
            String::from_utf8_lossy(&h.delivered[0])
        );
    }
}

#[test]
fn a_closed_session_stays_silent() {
    // Found by the smtp_session fuzz target: a timeout after QUIT produced a second reply.
    let mut h = Harness::new(config());
    h.cmd("QUIT", "221");
    assert!(h.closed);
    h.session.timeout();
    assert!(h.pump().is_empty());
    h.session.shutdown();
    assert!(h.pump().is_empty());
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn submission() -> Harness {
    Harness::new(SessionConfig {
        require_tls: true,
        auth: true,
        ..config()
    })
}

#[test]
fn auth_is_offered_and_accepted_only_inside_tls() {
    let mut h = submission();
    let r = h.send(b"EHLO c\r\n");
    assert!(!r.iter().any(|l| l.contains("AUTH")), "{r:?}");
    h.cmd(
        &format!("AUTH PLAIN {}", b64("\0alice@example.test\0right")),
        "530 5.7.0 Must issue a STARTTLS command first",
    );
    h.cmd("STARTTLS", "220");
    let r = h.send(b"EHLO c\r\n");
    assert!(r[0].contains("\r\n250-AUTH PLAIN LOGIN\r\n"), "{r:?}");
    h.mail_from("alice@example.test", "530 5.7.0 Authentication required");
    h.cmd(
        &format!("AUTH PLAIN {}", b64("\0alice@example.test\0wrong")),
        "535 5.7.8",
    );
    h.cmd(
        &format!("AUTH PLAIN {}", b64("\0alice@example.test\0right")),
        "235 2.7.0",
    );
    h.cmd("AUTH PLAIN", "503 5.5.1 Already authenticated");
    h.mail_from("alice@example.test", "250");
    h.rcpt_to("anyone@example.test", "250");
    h.cmd("DATA", "354");
    h.cmd("x\r\n.", "250");
    assert!(String::from_utf8_lossy(&h.delivered[0]).contains("with ESMTPSA id"));
}

#[test]
fn auth_login_and_plain_without_initial_response() {
    let mut h = submission();
    h.ehlo();
    h.cmd("STARTTLS", "220");
    h.ehlo();
    h.cmd("AUTH LOGIN", "334 VXNlcm5hbWU6");
    h.cmd(&b64("alice@example.test"), "334 UGFzc3dvcmQ6");
    h.cmd(&b64("wrong"), "535 5.7.8");
    h.cmd("AUTH PLAIN", "334");
    h.cmd("*", "501 5.7.0 Authentication cancelled");
    h.cmd("AUTH PLAIN", "334");
    h.cmd("not base64!", "501 5.5.2");
    h.cmd("AUTH CRAM-MD5", "504 5.5.4");
    h.cmd(
        &format!("AUTH LOGIN {}", b64("alice@example.test")),
        "334 UGFzc3dvcmQ6",
    );
    h.cmd(&b64("right"), "235");
}

#[test]
fn a_421_at_auth_closes_the_session() {
    let mut h = submission();
    h.ehlo();
    h.cmd("STARTTLS", "220");
    h.ehlo();
    h.cmd(
        &format!("AUTH PLAIN {}", b64("\0alice@example.test\0legacy")),
        "421 4.7.66 TLS 1.0 and 1.1 are not supported.",
    );
    assert!(h.closed);
}

#[test]
fn mx_listeners_do_not_offer_auth() {
    let mut h = Harness::new(config());
    h.ehlo();
    h.cmd("STARTTLS", "220");
    let r = h.send(b"EHLO c\r\n");
    assert!(!r.iter().any(|l| l.contains("AUTH")), "{r:?}");
    h.cmd("AUTH PLAIN", "502 5.5.1");
}

/// Unauthenticated pipelining where the client must wait (Postfix's
/// `smtpd_forbid_unauth_pipelining`): `554 5.5.0` and close; legal RFC 2920 groups still work.
#[test]
fn protocol_synchronization() {
    let strict = || {
        Harness::new(SessionConfig {
            forbid_unauth_pipelining: true,
            ..config()
        })
    };
    const SYNC: &str = "554 5.5.0 Error: SMTP protocol synchronization [edge-t]";
    // Commands after EHLO in the same write.
    let mut h = strict();
    assert_eq!(
        h.send(b"EHLO c.test\r\nMAIL FROM:<a@client.test>\r\n"),
        vec![SYNC]
    );
    assert!(h.closed);
    // Message content before the 354.
    let mut h = strict();
    h.send(b"EHLO c.test\r\n");
    let r = h.send(
        b"MAIL FROM:<a@client.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nSubject: x\r\n\r\nx\r\n.\r\n",
    );
    assert_eq!(r.len(), 3, "{r:?}");
    assert!(
        r[0].starts_with("250 2.1.0") && r[1].starts_with("250 2.1.5"),
        "{r:?}"
    );
    assert_eq!(r[2], SYNC);
    assert!(h.closed && h.delivered.is_empty());
    // STARTTLS, QUIT, HELO with input after them.
    for (first, then) in [
        (&b"STARTTLS\r\n"[..], &b"EHLO x\r\n"[..]),
        (b"QUIT\r\n", b"NOOP\r\n"),
        (b"HELO c.test\r\n", b"NOOP\r\n"),
    ] {
        let mut h = strict();
        h.send(b"EHLO c.test\r\n");
        assert_eq!(h.send(&[first, then].concat()), vec![SYNC]);
        assert!(h.closed && h.upgrades == 0);
    }
    // Before the greeting.
    let mut h = Harness::new(SessionConfig {
        forbid_unauth_pipelining: true,
        ..config()
    });
    h.replies.clear();
    let mut h2 = {
        let facts = SessionFacts {
            id: "s2".into(),
            peer: "192.0.2.7:4000".parse().unwrap(),
            local: "192.0.2.1:25".parse().unwrap(),
            listener: "mx".into(),
            tls: None,
            helo: None,
            auth: None,
        };
        Session::new(
            SessionConfig {
                forbid_unauth_pipelining: true,
                ..config()
            },
            facts,
        )
    };
    h2.talked_early(b"EHLO early.test\r\n");
    let mut actions = Vec::new();
    while let Some(a) = h2.poll(Harness::now()) {
        actions.push(a);
    }
    assert_eq!(
        actions,
        vec![Action::Send(reply::PROTOCOL_SYNC.into()), Action::Close]
    );
    // Legal groups: MAIL/RCPT/RSET/NOOP pipelined, DATA last; content after the 354; the next
    // transaction pipelined right after the final dot.
    let r = h.send(b"EHLO c.test\r\n");
    assert!(r[0].starts_with("250-"), "{r:?}");
    let r = h.send(
        b"NOOP\r\nMAIL FROM:<a@client.test>\r\nRSET\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<alice@example.test>\r\nNOOP\r\nDATA\r\n",
    );
    assert_eq!(r.len(), 7, "{r:?}");
    assert!(r[6].starts_with("354"), "{r:?}");
    let r = h.send(b"Subject: x\r\n\r\nx\r\n.\r\nMAIL FROM:<b@client.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n");
    assert!(
        r[0].starts_with("250 2.6.0") && r[3].starts_with("354"),
        "{r:?}"
    );
    let r = h.send(b"Subject: y\r\n\r\ny\r\n.\r\nQUIT\r\n");
    assert!(
        r[0].starts_with("250 2.6.0") && r[1].starts_with("221"),
        "{r:?}"
    );
    assert_eq!(h.delivered.len(), 2);
}

/// With the setting off, an early talker and content before the 354 are served in order.
#[test]
fn pipelining_allowed_when_the_listener_says_so() {
    let mut h = Harness::new(config());
    let r = h.send(
        b"EHLO c.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nSubject: x\r\n\r\nx\r\n.\r\nQUIT\r\n",
    );
    assert_eq!(r.len(), 6, "{r:?}");
    assert_eq!(h.delivered.len(), 1);
}
