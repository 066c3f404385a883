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
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let hop_args = [
        "--mx-port".to_owned(),
        port.to_string(),
        "--submission-port".into(),
        "0".into(),
        "--smtps-port".into(),
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
