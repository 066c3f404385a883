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
