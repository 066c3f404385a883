//! The SMTP session machine fed arbitrary client bytes, split into reads at every 0xFF byte,
//! with a next hop that accepts everything: replies stay well-formed, a closed session stays
//! closed, and whatever is delivered is canonical (CRLF lines, no NUL).
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use moat_edge::session::{reply, Action, Session, SessionConfig, SessionFacts, TlsFacts};

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_464_000)
}

struct Run {
    session: Session,
    body: Vec<u8>,
    delivered: Vec<Vec<u8>>,
    closed: bool,
}

impl Run {
    fn pump(&mut self) {
        while let Some(a) = self.session.poll(now()) {
            assert!(!self.closed, "an action after Close: {a:?}");
            match a {
                Action::Send(r) => {
                    let mut bytes = Vec::new();
                    r.render("edge-f", &mut bytes);
                    assert!(bytes.len() >= 5 && bytes[..3].iter().all(u8::is_ascii_digit));
                    assert!(bytes.ends_with(b"\r\n"));
                }
                Action::Open(_) => self.session.resolve(reply::SENDER_OK.into(), now()),
                Action::AddRecipient(_) => self.session.resolve(reply::RECIPIENT_OK.into(), now()),
                Action::StartBody => {
                    self.body.clear();
                    self.session.resolve(reply::START_DATA.into(), now());
                }
                Action::Body(b) => self.body.extend_from_slice(&b),
                Action::EndBody => {
                    self.delivered.push(std::mem::take(&mut self.body));
                    self.session
                        .resolve(reply::MESSAGE_ACCEPTED.into(), now());
                }
                Action::Abort => self.body.clear(),
                Action::UpgradeTls => self.session.tls_established(TlsFacts {
                    version: "TLSv1.3".into(),
                    cipher: "TLS13_AES_128_GCM_SHA256".into(),
                    client_domains: vec![],
                }),
                Action::Close => self.closed = true,
                Action::Authenticate { .. } => {
                    self.session.resolve(reply::AUTH_FAILED.into(), now())
                }
            }
        }
    }
}

fuzz_target!(|bytes: &[u8]| {
    let Some((&flags, input)) = bytes.split_first() else {
        return;
    };
    let cfg = SessionConfig {
        node: "edge-f".into(),
        hostname: "mx.fuzz".into(),
        starttls: flags & 1 != 0,
        require_tls: flags & 2 != 0,
        auth: flags & 4 != 0,
        max_message_size: 4096,
        max_recipients: 5,
        max_errors: 10,
        max_line: 512,
        command_timeout: Duration::from_secs(60),
        forbid_unauth_pipelining: flags & 8 != 0,
    };
    let facts = SessionFacts {
        id: "f1".into(),
        peer: "192.0.2.7:4000".parse().expect("address"),
        local: "192.0.2.1:25".parse().expect("address"),
        listener: "mx".into(),
        tls: None,
        helo: None,
        auth: None,
    };
    let mut run = Run {
        session: Session::new(cfg, facts),
        body: Vec::new(),
        delivered: Vec::new(),
        closed: false,
    };
    run.pump();
    for read in input.split(|&b| b == 0xff) {
        if run.closed {
            break;
        }
        run.session.receive(read);
        run.pump();
        if flags & 8 != 0 {
            run.session.timeout();
            run.pump();
        }
    }
    for m in &run.delivered {
        let mut prev = 0u8;
        for &b in m {
            assert_ne!(b, 0);
            assert_eq!(b == b'\n', prev == b'\r');
            prev = b;
        }
        assert!(m.len() <= 4096 + 2, "{} octets delivered", m.len());
    }
});
