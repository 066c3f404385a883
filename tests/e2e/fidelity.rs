//! What outside tools found (issue 18, part 5): replies relayed from a next hop carry one node
//! tag, delivered files carry `Return-Path:`, TLS suites are named by their IANA names, the server
//! chooses the cipher suite, `moat dev` keeps its private keys private, and input sent before the
//! server's reply where the client must wait is refused.

use crate::harness::{runtime, Dev};

/// A Moat relaying to a Moat: the RCPT reply and the final reply carry exactly one node tag
/// (the front edge's), and the next hop's text is relayed once, not nested.
#[test]
fn a_reply_relayed_through_a_moat_next_hop_is_tagged_once() {
    let hop = Dev::start(None);
    let front = Dev::start(Some(&format!(
        "node-id = \"edge-front\"\n[next-hop]\nkind = \"smtp\"\naddress = \"{}\"\nstarttls = \"none\"\n",
        hop.listener("mx")
    )));
    let mx = front.listener("mx");
    let (rcpt, last) = runtime().block_on(async move {
        let (mut c, _) = crate::client::Client::connect(&mx).await.expect("connect");
        c.cmd("EHLO c.test").await.expect("ehlo");
        let r = c.cmd("MAIL FROM:<s@example.test>").await.expect("mail");
        assert!(r.starts_with("250"), "{r}");
        let rcpt = c.cmd("RCPT TO:<alice@example.test>").await.expect("rcpt");
        let r = c.cmd("DATA").await.expect("data");
        assert!(r.starts_with("354"), "{r}");
        c.write(b"Subject: tagged once\r\n\r\nhi\r\n.\r\n")
            .await
            .expect("body");
        (rcpt, c.reply().await.expect("final reply"))
    });
    assert_eq!(rcpt, "250 2.1.5 Recipient OK [edge-front]");
    assert_eq!(rcpt.matches("[edge-").count(), 1, "{rcpt}");
    assert!(last.starts_with("250 2.6.0 "), "{last}");
    assert_eq!(last.matches("[edge-").count(), 1, "{last}");
    assert!(last.ends_with(" [edge-front]"), "{last}");
    assert_eq!(last.matches("Message accepted").count(), 1, "{last}");
    assert_eq!(hop.messages_with_header("Subject: tagged once").len(), 1);
}

/// The maildir next hop writes `Return-Path:` first, as an MTA delivering to a mailbox does: the
/// envelope sender, and `<>` for the null sender (a bounce).
#[test]
fn delivered_files_carry_the_envelope_sender_as_return_path() {
    let dev = Dev::start(None);
    let mx = dev.listener("mx");
    runtime().block_on(async move {
        let (mut c, _) = crate::client::Client::connect(&mx).await.expect("connect");
        c.cmd("EHLO c.test").await.expect("ehlo");
        for (from, id) in [
            ("bob@sender.test", "<rp-sender@e2e>"),
            ("", "<rp-null@e2e>"),
        ] {
            let body = format!("Message-Id: {id}\r\nSubject: rp\r\n\r\nhi\r\n.\r\n");
            let r = c
                .send_stuffed(from, "alice@example.test", body.as_bytes())
                .await
                .expect("send");
            assert!(r.starts_with("250 2.6.0"), "{r}");
        }
    });
    for (id, want) in [
        (
            "<rp-sender@e2e>",
            "Return-Path: <bob@sender.test>\r\nReceived: from ",
        ),
        ("<rp-null@e2e>", "Return-Path: <>\r\nReceived: from "),
    ] {
        let stored = dev.messages_with_header(&format!("Message-Id: {id}"));
        assert_eq!(stored.len(), 1, "{id}");
        let text = String::from_utf8_lossy(&stored[0]);
        assert!(text.starts_with(want), "{text}");
        assert_eq!(text.matches("Return-Path:").count(), 1, "{text}");
    }
}

/// The suite `openssl s_client` negotiated, offering `args` (its `-cipher`/`-ciphersuites`
/// order), over STARTTLS.
fn negotiated(server: &str, ca: &std::path::Path, args: &str) -> String {
    let (_, out, err) = crate::harness::run(std::process::Command::new("sh").arg("-c").arg(
        format!(
            "echo QUIT | timeout 10 openssl s_client -brief -starttls smtp -connect {server} -CAfile {} {args} 2>&1",
            ca.display()
        ),
    ));
    let out = format!("{out}{err}");
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Ciphersuite: "))
        .unwrap_or_else(|| panic!("no suite negotiated with {args}:\n{out}"))
        .trim()
        .to_owned()
}

/// The server's preference wins over the client's: a client listing ChaCha20, then AES-256, then
/// AES-128 gets AES-128-GCM (TLS 1.3 and 1.2) or AES-128-CBC (TLS 1.0 on the legacy listener);
/// one offering only ChaCha20 and AES-256, in that order, gets AES-256. The `Received:` header
/// names the TLS 1.3 suite by its IANA name.
#[test]
fn the_server_chooses_the_cheapest_strong_suite_and_names_it_by_iana_name() {
    let dev = Dev::start(None);
    let mx = dev.listener("mx");
    let ca = dev.ca();
    let tls13 = "-tls1_3 -ciphersuites";
    assert_eq!(
        negotiated(
            &mx,
            &ca,
            &format!(
                "{tls13} TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256"
            )
        ),
        "TLS_AES_128_GCM_SHA256"
    );
    assert_eq!(
        negotiated(
            &mx,
            &ca,
            &format!("{tls13} TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384")
        ),
        "TLS_AES_256_GCM_SHA384"
    );
    let tls12 = "-tls1_2 -cipher";
    let both = |kinds: &[&str]| {
        kinds
            .iter()
            .flat_map(|k| [format!("ECDHE-ECDSA-{k}"), format!("ECDHE-RSA-{k}")])
            .collect::<Vec<_>>()
            .join(":")
    };
    let suite = negotiated(
        &mx,
        &ca,
        &format!(
            "{tls12} {}",
            both(&[
                "CHACHA20-POLY1305",
                "AES256-GCM-SHA384",
                "AES128-GCM-SHA256"
            ])
        ),
    );
    assert!(suite.ends_with("-AES128-GCM-SHA256"), "{suite}");
    let suite = negotiated(
        &mx,
        &ca,
        &format!(
            "{tls12} {}",
            both(&["CHACHA20-POLY1305", "AES256-GCM-SHA384"])
        ),
    );
    assert!(suite.ends_with("-AES256-GCM-SHA384"), "{suite}");
    let legacy = dev.edge_listener(0, "legacy-submission");
    let suite = negotiated(
        &legacy,
        &ca,
        &format!(
            "-tls1 -cipher {}:@SECLEVEL=0",
            both(&["AES256-SHA", "AES128-SHA"])
        ),
    );
    assert!(suite.ends_with("-AES128-SHA"), "{suite}");

    // A TLS 1.3 session's Received header: the IANA name, never rustls's `TLS13_` one.
    let mx = dev.listener("mx");
    let ca = dev.ca();
    let r = runtime().block_on(async move {
        let (c, _) = crate::client::Client::connect(&mx).await.expect("connect");
        let mut c = c
            .starttls(crate::client::tls_config(&ca))
            .await
            .expect("starttls");
        c.send_stuffed(
            "s@example.test",
            "alice@example.test",
            b"Message-Id: <iana@e2e>\r\n\r\nhi\r\n.\r\n",
        )
        .await
        .expect("send")
    });
    assert!(r.starts_with("250 2.6.0"), "{r}");
    let stored = dev.messages_with_header("Message-Id: <iana@e2e>");
    assert_eq!(stored.len(), 1);
    let text = String::from_utf8_lossy(&stored[0]);
    assert!(
        text.contains("(version=TLSv1.3 cipher=TLS_AES_128_GCM_SHA256)"),
        "{text}"
    );
    assert!(!text.contains("TLS13_"), "{text}");
}

/// `moat dev` keeps every private key and secret it writes readable by its owner only (0600),
/// in directories it created 0700; certificates stay readable.
#[test]
fn moat_dev_writes_private_keys_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let dev = Dev::start(None);
    let mode = |rel: &str| {
        std::fs::metadata(dev.data.join(rel))
            .unwrap_or_else(|e| panic!("{rel}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    for key in [
        "tls/ca-key.pem",
        "tls/server-key.pem",
        "tls/internal/ca-key.pem",
        "tls/internal/control-key.pem",
        "tls/internal/edge-key.pem",
        "tls/internal/admin-key.pem",
        "admin-token",
        "demo-password",
    ] {
        assert_eq!(mode(key), 0o600, "{key}");
    }
    for dir in ["tls", "tls/internal"] {
        assert_eq!(mode(dir), 0o700, "{dir}");
    }
    assert_eq!(mode("tls/ca.pem") & 0o400, 0o400);
}

/// What the client sends on a raw connection in one write, and every reply until the server
/// closes (or a second passes quietly).
fn raw_session(addr: &str, greet_first: bool, writes: &[&[u8]]) -> Vec<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let mut read_some = |s: &mut std::net::TcpStream, got: &mut Vec<u8>| -> bool {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                true
            }
        }
    };
    if greet_first {
        while !got.ends_with(b"\r\n") {
            assert!(read_some(&mut s, &mut got), "no greeting");
        }
    }
    for w in writes {
        s.write_all(w).expect("write");
        // Each write waits for the replies it asked for (a legal client), except the last.
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .expect("timeout");
    while read_some(&mut s, &mut got) {}
    String::from_utf8_lossy(&got)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Unauthenticated pipelining where the client must wait is refused as Postfix's
/// `smtpd_forbid_unauth_pipelining` does (`554 5.5.0`, closed, nothing delivered): commands after
/// EHLO, content before the 354, a transaction before the greeting. Legal RFC 2920 groups
/// work, smtplib and swaks work, and a listener with `forbid-unauth-pipelining = false` serves
/// the same input in order.
#[test]
fn unauthenticated_pipelining_where_the_client_must_wait_is_refused() {
    const SYNC: &str = "554 5.5.0 Error: SMTP protocol synchronization [edge-1]";
    let dev = Dev::start(None);
    let mx = dev.listener("mx");
    let r = raw_session(
        &mx,
        true,
        &[b"EHLO c.test\r\nMAIL FROM:<a@client.test>\r\n"],
    );
    assert_eq!(r.last().map(String::as_str), Some(SYNC), "{r:?}");
    assert_eq!(r.len(), 2, "{r:?}");
    let content_before_354: &[u8] = b"MAIL FROM:<a@client.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nMessage-Id: <early354@e2e>\r\n\r\nx\r\n.\r\nQUIT\r\n";
    let r = raw_session(&mx, true, &[b"EHLO c.test\r\n", content_before_354]);
    assert_eq!(r.last().map(String::as_str), Some(SYNC), "{r:?}");
    assert!(!r.iter().any(|l| l.starts_with("354")), "{r:?}");
    // A whole transaction before the greeting: refused before or right after it.
    let early: &[u8] = b"EHLO early.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nMessage-Id: <early@e2e>\r\n\r\nx\r\n.\r\nQUIT\r\n";
    let r = raw_session(&mx, false, &[early]);
    assert_eq!(r.last().map(String::as_str), Some(SYNC), "{r:?}");
    assert!(r.len() <= 2, "{r:?}");
    // Legal pipelining: a MAIL/RCPT/NOOP/DATA group, content after the 354, QUIT after the dot.
    let r = raw_session(
        &mx,
        true,
        &[
            b"EHLO c.test\r\n",
            b"MAIL FROM:<a@client.test>\r\nRCPT TO:<alice@example.test>\r\nNOOP\r\nDATA\r\n",
            b"Message-Id: <legal@e2e>\r\n\r\nx\r\n.\r\nQUIT\r\n",
        ],
    );
    assert!(r.iter().any(|l| l.starts_with("250 2.6.0")), "{r:?}");
    assert!(r.last().is_some_and(|l| l.starts_with("221 ")), "{r:?}");
    // swaks waits for each reply.
    let (ok, out, err) = crate::harness::run(std::process::Command::new("swaks").args([
        "--server",
        &mx,
        "--to",
        "alice@example.test",
        "--from",
        "s@example.test",
        "--header",
        "Message-Id: <swaks@e2e>",
    ]));
    assert!(ok, "{out}{err}");
    // smtplib (its sendmail) too.
    let script = format!(
        "import smtplib\nh, p = '{mx}'.rsplit(':', 1)\ns = smtplib.SMTP(h, int(p))\ns.sendmail('s@example.test', ['alice@example.test'], b'Message-Id: <smtplib@e2e>\\r\\n\\r\\nx\\r\\n')\ns.quit()\n"
    );
    let (ok, out, err) =
        crate::harness::run(std::process::Command::new("python3").args(["-c", &script]));
    assert!(ok, "{out}{err}");
    for id in ["<legal@e2e>", "<swaks@e2e>", "<smtplib@e2e>"] {
        assert_eq!(
            dev.messages_with_header(&format!("Message-Id: {id}")).len(),
            1,
            "{id}"
        );
    }
    for id in ["<early354@e2e>", "<early@e2e>"] {
        assert!(dev
            .messages_with_header(&format!("Message-Id: {id}"))
            .is_empty());
    }

    // The listener setting off: the same input is served in order.
    let lenient = Dev::start(Some(
        "[[listener]]\nkind = \"mx\"\naddress = \"127.0.0.1:0\"\n[listener.limits]\nforbid-unauth-pipelining = false\n",
    ));
    let mx = lenient.listener("mx");
    let r = raw_session(&mx, false, &[early]);
    assert!(r.iter().any(|l| l.starts_with("250 2.6.0")), "{r:?}");
    assert!(r.last().is_some_and(|l| l.starts_with("221 ")), "{r:?}");
    assert_eq!(
        lenient
            .messages_with_header("Message-Id: <early@e2e>")
            .len(),
        1
    );
    // And STARTTLS with a pipelined NOOP: the NOOP is discarded, never answered inside TLS.
    let (ok, out, err) = crate::harness::run(
        std::process::Command::new("python3")
            .arg(crate::harness::clients_dir().join("smuggle.py"))
            .arg("--ca")
            .arg(lenient.ca())
            .args(["--server", &mx])
            .args(["--to", "alice@example.test", "--quiet", "1"]),
    );
    assert!(ok, "smuggle.py failed:\n{out}\n{err}");
    let injection = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["case"] == "starttls-injection")
        .expect("injection case");
    assert_eq!(injection["tls_handshake"], "ok", "{injection}");
    assert_eq!(injection["noop_answered_in_tls"], false, "{injection}");
}
