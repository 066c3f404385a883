//! Acceptance 4: the edge is a proxy, not a queue. With its next hop down it answers `451` and
//! nothing is written; once the next hop is back, the client's retry is delivered once.

use std::process::Command;

use crate::harness::{run, Dev, TempDir};

fn swaks(server: &str, message_id: &str) -> (bool, String) {
    let (ok, out, err) = run(Command::new("swaks").args([
        "--to",
        "alice@example.test",
        "--from",
        "sender@example.test",
        "--server",
        server,
        "--tls",
        "--header",
        &format!("Message-Id: {message_id}"),
    ]));
    (ok, format!("{out}{err}"))
}

#[test]
fn next_hop_down_answers_451_and_the_retry_is_delivered_once() {
    // The next hop: a second Moat, delivering into its maildir, on a fixed free port so it can
    // come back on the same address.
    let hop_dir = TempDir::new("hop");
    let port = crate::harness::free_port();
    let hop_args = [
        "--mx-port".to_owned(),
        port.to_string(),
        "--submission-port".into(),
        "0".into(),
        "--smtps-port".into(),
        "0".into(),
        "--legacy-port".into(),
        "0".into(),
        "--control-port".into(),
        "0".into(),
        "--console-port".into(),
        "0".into(),
    ];
    let hop_args: Vec<&str> = hop_args.iter().map(String::as_str).collect();
    let mut hop = Dev::start_in(&hop_dir.0, None, &hop_args);
    let front = Dev::start(Some(&format!(
        "node-id = \"edge-front\"\n[next-hop]\nkind = \"smtp\"\naddress = \"127.0.0.1:{port}\"\nstarttls = \"required\"\nca = \"{}\"\n",
        hop.ca().display()
    )));
    let server = front.listener("mx");

    let (ok, out) = swaks(&server, "<first@e2e>");
    assert!(ok, "{out}");
    assert!(out.contains("<~  250 2.6.0"), "{out}");
    assert_eq!(hop.messages_with_header("Message-Id: <first@e2e>").len(), 1);
    // Two trace headers: the front edge's and the next hop's.
    let first = &hop.messages_with_header("Message-Id: <first@e2e>")[0];
    assert_eq!(
        String::from_utf8_lossy(first)
            .matches("Received: from")
            .count(),
        2
    );

    hop.kill();
    let before = hop.messages();
    let (ok, out) = swaks(&server, "<retried@e2e>");
    assert!(!ok, "swaks should fail with the next hop down: {out}");
    // swaks marks an error reply `<**` in clear text and `<~*` inside TLS.
    assert!(out.contains("<~* 451 4.4.1 Next hop unavailable"), "{out}");
    assert_eq!(
        hop.messages(),
        before,
        "maildir changed while the next hop was down"
    );

    // The next hop comes back on the same address and data directory; the client retries.
    let hop = Dev::start_in(&hop_dir.0, None, &hop_args);
    let (ok, out) = swaks(&server, "<retried@e2e>");
    assert!(ok, "{out}");
    assert_eq!(
        hop.messages_with_header("Message-Id: <retried@e2e>").len(),
        1
    );
    assert_eq!(hop.messages().len(), 2);
}

/// A scripted next hop (tests/e2e/clients/fake_next_hop.py) and a Moat in front of it.
struct Scripted {
    child: std::process::Child,
    spool: std::path::PathBuf,
    front: Dev,
    _dir: TempDir,
}

impl Scripted {
    fn start(kind: &str, args: &[&str]) -> Self {
        let dir = TempDir::new("scripted");
        let port_file = dir.0.join("port");
        let spool = dir.0.join("spool");
        let child = Command::new("python3")
            .arg(crate::harness::clients_dir().join("fake_next_hop.py"))
            .arg("--port-file")
            .arg(&port_file)
            .arg("--spool")
            .arg(&spool)
            .args(args)
            .spawn()
            .expect("python3");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(&port_file) {
                break p;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "fake next hop did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let front = Dev::start(Some(&format!(
            "[next-hop]\nkind = \"{kind}\"\naddress = \"127.0.0.1:{port}\"\nstarttls = \"none\"\n"
        )));
        Self {
            child,
            spool,
            front,
            _dir: dir,
        }
    }

    fn stored(&self) -> Vec<Vec<u8>> {
        let mut files: Vec<_> = std::fs::read_dir(&self.spool)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p: &std::path::PathBuf| p.extension().is_some_and(|e| e == "eml"));
        files.sort();
        files
            .iter()
            .map(|p| std::fs::read(p).expect("read"))
            .collect()
    }

    /// Sends one message to `rcpts` with the Rust client; returns each RCPT reply and the
    /// final reply.
    fn send(&self, rcpts: &[&str], body: &[u8]) -> (Vec<String>, String) {
        let mx = self.front.listener("mx");
        let body = crate::client::stuff(body);
        crate::harness::runtime().block_on(async move {
            let (mut c, _) = crate::client::Client::connect(&mx).await.expect("connect");
            c.cmd("EHLO c.test").await.expect("ehlo");
            let r = c.cmd("MAIL FROM:<s@example.test>").await.expect("mail");
            assert!(r.starts_with("250"), "{r}");
            let mut replies = Vec::new();
            for to in rcpts {
                replies.push(c.cmd(&format!("RCPT TO:<{to}>")).await.expect("rcpt"));
            }
            let r = c.cmd("DATA").await.expect("data");
            assert!(r.starts_with("354"), "{r}");
            c.write(&body).await.expect("body");
            let last = c.reply().await.expect("final reply");
            (replies, last)
        })
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// LMTP: per-recipient replies after DATA. All accepted: `250`, one copy per recipient. A
/// transient failure for one recipient makes the whole message `4xx`, so the client retries
/// and nobody loses the message.
#[test]
fn lmtp_next_hop_per_recipient_outcomes() {
    let hop = Scripted::start(
        "lmtp",
        &[
            "--lmtp",
            "--lmtp-reply",
            "full@example.test=452 4.2.2 mailbox full",
        ],
    );
    let (rcpt, last) = hop.send(
        &["a@example.test", "b@example.test"],
        b"Subject: lmtp\r\n\r\nhi\r\n",
    );
    assert!(rcpt.iter().all(|r| r.starts_with("250")), "{rcpt:?}");
    assert!(last.starts_with("250 2.6.0"), "{last}");
    assert_eq!(hop.stored().len(), 2);

    let (_, last) = hop.send(
        &["a@example.test", "full@example.test"],
        b"Subject: lmtp2\r\n\r\nhi\r\n",
    );
    assert_eq!(last, "452 4.2.2 mailbox full [edge-1]");
}

/// The next hop's refusals are relayed with their own codes: a refused recipient, a refused
/// message.
#[test]
fn next_hop_refusals_are_relayed() {
    let hop = Scripted::start(
        "smtp",
        &[
            "--reject-rcpt",
            "gone@example.test=550 5.1.1 no such user",
            "--data-reply",
            "554 5.7.1 content refused",
        ],
    );
    let (rcpt, last) = hop.send(
        &["gone@example.test", "a@example.test"],
        b"Subject: x\r\n\r\nhi\r\n",
    );
    assert_eq!(rcpt[0], "550 5.1.1 no such user [edge-1]");
    assert!(rcpt[1].starts_with("250"));
    assert_eq!(last, "554 5.7.1 content refused [edge-1]");
    assert!(hop.stored().is_empty());
}

/// A next hop that dies in the middle of the body: the client gets `451 4.4.2`, never `250`.
#[test]
fn next_hop_dying_mid_body_answers_451() {
    let hop = Scripted::start("smtp", &["--drop-after-bytes", "100000"]);
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    for _ in 0..20_000 {
        body.extend_from_slice(b"0123456789012345678901234567890123456789\r\n");
    }
    let (_, last) = hop.send(&["a@example.test"], &body);
    assert_eq!(
        last,
        "451 4.4.2 Connection to next hop lost, try again later [edge-1]"
    );
    assert!(hop.stored().is_empty());
}

/// Opportunistic STARTTLS to the next hop without a CA bundle: encrypted, not authenticated (as
/// Postfix's `may`). The next hop's trace header shows the session was TLS.
#[test]
fn opportunistic_tls_to_the_next_hop() {
    let hop = Dev::start(None);
    let front = Dev::start(Some(&format!(
        "node-id = \"edge-front\"\n[next-hop]\nkind = \"smtp\"\naddress = \"{}\"\n",
        hop.listener("mx")
    )));
    let (ok, out) = swaks(&front.listener("mx"), "<opportunistic@e2e>");
    assert!(ok, "{out}");
    let stored = hop.messages_with_header("Message-Id: <opportunistic@e2e>");
    assert_eq!(stored.len(), 1);
    let text = String::from_utf8_lossy(crate::harness::strip_return_path(&stored[0]));
    // The hop's own Received header comes first (after its Return-Path): it received from the front edge over TLS.
    let first = text.split("\r\nReceived: ").next().unwrap_or_default();
    assert!(
        first.contains("with ESMTPS") && first.contains("version=TLSv1.3"),
        "{first}"
    );
}
