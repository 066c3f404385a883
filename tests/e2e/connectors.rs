//! Inbound connectors (issue 5) on a multi-process `moat dev` (control node and edge 1 in the
//! dev process, edge 2 a child process): the relay rules with real TLS client certificates,
//! detection of a flooding connector with its restriction on both edges, unblocking, and
//! connectors that must not be restricted.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use serde_json::Value;

use crate::client::{stuff, tls_config_with_client_cert, Client};
use crate::harness::{moat, run, runtime, Dev, Killed, TempDir, ANY_PORTS};

/// Certificates from the dev CA (which `moat dev` edges take as their client CA).
struct DevCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl DevCa {
    fn load(dev: &Dev) -> Self {
        let dir = dev.ca().parent().expect("tls dir").to_owned();
        let key = KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca-key.pem")).expect("key"))
            .expect("ca key");
        let params = CertificateParams::from_ca_cert_pem(
            &std::fs::read_to_string(dev.ca()).expect("ca pem"),
        )
        .expect("ca params");
        // Re-signed with the same name and key: certificates it issues chain to the dev CA.
        let cert = params.self_signed(&key).expect("ca");
        Self { cert, key }
    }

    fn issue(&self, name: &str, ca: bool) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(if ca { vec![] } else { vec![name.to_owned()] })
            .expect("params");
        p.distinguished_name.push(DnType::CommonName, name);
        if ca {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        }
        (p.signed_by(&key, &self.cert, &self.key).expect("sign"), key)
    }
}

/// A client certificate for `name` issued by an intermediate of the dev CA: (leaf + intermediate
/// chain PEM, leaf-only PEM, key PEM).
fn client_cert(ca: &DevCa, name: &str) -> (String, String, String) {
    let (inter, inter_key) = ca.issue("Moat test intermediate", true);
    let inter = DevCa {
        cert: inter,
        key: inter_key,
    };
    let (leaf, key) = inter.issue(name, false);
    (
        format!("{}{}", leaf.pem(), inter.cert.pem()),
        leaf.pem(),
        key.serialize_pem(),
    )
}

/// Starts `webhook_receiver.py` with a `localhost` certificate from a new CA, written to
/// `DIR/hook-ca.pem` for the control plane to trust. Returns the URL, the requests as they
/// come (head lines, body) and the receiver process.
fn https_webhook(
    dir: &Path,
) -> (
    String,
    std::sync::mpsc::Receiver<(Vec<String>, String)>,
    Killed,
) {
    use std::io::BufRead as _;
    let ca_key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(vec![]).expect("params");
    p.distinguished_name
        .push(DnType::CommonName, "Moat test webhook CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca = DevCa {
        cert: p.self_signed(&ca_key).expect("ca"),
        key: ca_key,
    };
    let (leaf, key) = ca.issue("localhost", false);
    std::fs::write(dir.join("hook-ca.pem"), ca.cert.pem()).expect("write");
    std::fs::write(dir.join("hook.pem"), leaf.pem()).expect("write");
    std::fs::write(dir.join("hook-key.pem"), key.serialize_pem()).expect("write");
    let mut child = std::process::Command::new("python3")
        .arg(crate::harness::clients_dir().join("webhook_receiver.py"))
        .arg("--cert")
        .arg(dir.join("hook.pem"))
        .arg("--key")
        .arg(dir.join("hook-key.pem"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let port = lines
        .next()
        .and_then(Result::ok)
        .expect("the webhook receiver did not start");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line).expect("receiver JSON");
            let head = v["head"].as_array().expect("head").iter();
            let head = head.map(|h| h.as_str().unwrap_or_default().to_owned());
            let body = v["body"].as_str().unwrap_or_default().to_owned();
            let _ = tx.send((head.collect(), body));
        }
    });
    (
        format!("https://localhost:{}/moat-alerts", port.trim()),
        rx,
        Killed(child),
    )
}

/// One message; returns the first non-250 reply, or the final reply.
async fn send(c: &mut Client, from: &str, to: &str, header_from: &str) -> String {
    let msg = stuff(
        format!("From: <{header_from}>\r\nTo: <{to}>\r\nSubject: connector test\r\n\r\nbody\r\n")
            .as_bytes(),
    );
    let r = c.send_stuffed(from, to, &msg).await.expect("send");
    if !r.starts_with("250") {
        c.cmd("RSET").await.expect("send");
    }
    r
}

/// [`send`] (MAIL FROM, RCPT TO, header From) whose reply must start with `want`; `what` says
/// which case failed.
async fn send_expecting(
    c: &mut Client,
    (from, to, header_from): (&str, &str, &str),
    want: &str,
    what: &str,
) {
    let r = send(c, from, to, header_from).await;
    assert!(r.starts_with(want), "{what}: {r}");
}

/// A client connected to `server` from `source` that has said `EHLO helo`.
async fn client_from(server: &str, source: &str, helo: &str) -> Client {
    let (mut c, _) = Client::connect_from(server, source).await.expect("connect");
    c.cmd(&format!("EHLO {helo}")).await.expect("ehlo");
    c
}

/// A client connected to `server` that presented `chain` and `key` over STARTTLS (`what` is
/// the expectation when that fails).
async fn client_with_cert(dev: &Dev, server: &str, chain: &str, key: &str, what: &str) -> Client {
    let (c, _) = Client::connect(server).await.expect("connect");
    c.starttls(tls_config_with_client_cert(&dev.ca(), chain, key))
        .await
        .expect(what)
}

/// `moat dev` arguments for two edges (edge 2 a child process), every listener on a free port.
fn two_edges() -> Vec<&'static str> {
    let mut args = ANY_PORTS.to_vec();
    args.extend(["--edges", "2"]);
    args
}

/// Creates connector `name` of type `kind` for tenant example.test with `rules` (its sender
/// flags), and waits for every edge to enforce it.
fn create_connector(dev: &Dev, name: &str, kind: &str, rules: &[&str]) {
    let mut args = vec!["connector", "create", "--tenant", "example.test", name];
    args.extend(["--type", kind]);
    args.extend(rules);
    dev.admin_applied(&args);
}

/// An OnPremises connector `name` of example.test for mail from `ip`.
fn onprem_connector(dev: &Dev, name: &str, ip: &str) {
    create_connector(dev, name, "on-premises", &["--sender-ip", ip]);
}

/// Starts the client script `script` with `--port-file PORT_FILE` and `args`, and waits (10 s at
/// most) for the port it writes there; `what` names it in the failure.
fn start_with_port_file(
    script: &str,
    port_file: &Path,
    args: &[&OsStr],
    what: &str,
) -> (Killed, String) {
    let child = std::process::Command::new("python3")
        .arg(crate::harness::clients_dir().join(script))
        .arg("--port-file")
        .arg(port_file)
        .args(args)
        .spawn()
        .expect("python3");
    let child = Killed(child);
    let t0 = Instant::now();
    loop {
        if let Ok(p) = std::fs::read_to_string(port_file) {
            return (child, p);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{what} did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Acceptance 1: the relay matrix through both edges, with real TLS client certificates.
#[test]
fn relay_matrix() {
    let dir = TempDir::new("relay");
    let dev = Dev::start_in(&dir.0, None, &two_edges());
    let ca = DevCa::load(&dev);
    let (chain, leaf_only, key) = client_cert(&ca, "mail.example.test");
    onprem_connector(&dev, "onprem-ip", "127.0.0.2");
    let cert_rule = ["--tls-cert-name", "*.example.test"];
    create_connector(&dev, "onprem-cert", "on-premises", &cert_rule);
    for edge in [0, 1] {
        let server = dev.edge_listener(edge, "mx");
        let tag = format!("edge{edge}");
        runtime().block_on(async {
            // Certificate route: an accepted certificate domain relays even the null sender.
            let mut c =
                client_with_cert(&dev, &server, &chain, &key, "tls with a client certificate")
                    .await;
            let ndr = format!("ndr-{tag}@remote.test");
            let msg = ("", ndr.as_str(), "mailer-daemon@example.test");
            send_expecting(&mut c, msg, "250", "cert route, null sender").await;

            // The same certificate without its intermediate: no match, so no relay.
            let mut c = client_with_cert(
                &dev,
                &server,
                &leaf_only,
                &key,
                "tls with an incomplete chain",
            )
            .await;
            let msg = ("", "x@remote.test", "a@example.test");
            send_expecting(&mut c, msg, "550 5.7.64", "missing intermediate").await;

            // IP route with an accepted MAIL FROM.
            let mut c = client_from(&server, "127.0.0.2", "onprem.example.test").await;
            let ip = format!("ip-{tag}@remote.test");
            let msg = ("app@example.test", ip.as_str(), "app@example.test");
            send_expecting(&mut c, msg, "250", "IP route, accepted MAIL FROM").await;
            // IP route with a foreign MAIL FROM: the accepted header From does not help.
            let msg = ("app@foreign.test", "x@remote.test", "ceo@example.test");
            let denied = "550 5.7.64 TenantAttribution; Relay Access Denied";
            send_expecting(&mut c, msg, denied, "IP route, foreign MAIL FROM").await;
            // Inbound mail for an accepted domain is not relay.
            let msg = ("app@foreign.test", "alice@example.test", "x@foreign.test");
            send_expecting(&mut c, msg, "250", "inbound").await;

            // An address no connector covers cannot relay, whatever the MAIL FROM.
            let mut c = client_from(&server, "127.0.0.3", "stranger.test").await;
            let msg = ("app@example.test", "x@remote.test", "app@example.test");
            send_expecting(&mut c, msg, "550 5.7.64", "unmatched IP").await;
        });
        let relayed =
            |who: &str| dev.messages_with_header(&format!("To: <{who}-{tag}@remote.test>"));
        assert_eq!(relayed("ndr").len(), 1, "{tag}");
        assert_eq!(relayed("ip").len(), 1, "{tag}");
    }
    assert!(
        dev.messages_with_header("To: <x@remote.test>").is_empty(),
        "a refused relay was delivered"
    );
}

/// A connector counter's total in `moat admin counters list`, 0 when absent.
fn counter_total(counters: &Value, key: &str, name: &str) -> u64 {
    counters
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["key"] == key && c["name"] == name)
        .and_then(|c| c["total"].as_u64())
        .unwrap_or(0)
}

/// `moat admin counters list` once connector `key`'s counter `name` has reached `at_least`
/// (counts reach the leader with each edge's next report), or as it is after 15 s: the
/// caller's assertions then say what is missing.
fn counters_once(dev: &Dev, key: &str, name: &str, at_least: u64) -> Value {
    let t0 = Instant::now();
    loop {
        let counters = dev.admin(&["counters", "list"]);
        if counter_total(&counters, key, name) >= at_least || t0.elapsed() > Duration::from_secs(15)
        {
            return counters;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Issue 16, fix 1: each refusal is counted by its reason. A client matching an OnPremises
/// connector by IP sends MAIL FROM a domain a Partner connector of the recipient's tenant
/// restricts to another IP: it gets `550 5.7.51`, which is not a relay refusal, so the
/// OnPremises connector's `relay-refused` does not move; a real relay refusal from the same
/// client afterwards does count, once.
#[test]
fn a_partner_refusal_is_not_counted_as_a_relay_refusal() {
    let dir = TempDir::new("partner-count");
    let dev = Dev::start_in(&dir.0, None, ANY_PORTS);
    onprem_connector(&dev, "onprem", "127.0.0.2");
    let partner_rules = [
        "--sender-ip",
        "127.0.0.9",
        "--sender-domain",
        "fabrikam.test",
        "--restrict-domains-to-ip",
    ];
    create_connector(&dev, "partner", "partner", &partner_rules);
    let server = dev.edge_listener(0, "mx");
    runtime().block_on(async {
        let mut c = client_from(&server, "127.0.0.2", "onprem.example.test").await;
        for i in 0..3 {
            let from = format!("s{i}@fabrikam.test");
            let msg = (from.as_str(), "alice@example.test", "a@fabrikam.test");
            let why = "partner-scoped domain from the on-premises IP";
            let want = "550 5.7.51 TenantInboundAttribution; There is a partner connector \
                        configured that matched the message's recipient domain. The connector \
                        \"partner\" had the RestrictDomainsToIPAddresses set";
            send_expecting(&mut c, msg, want, why).await;
        }
        // Then one real relay refusal, after the Partner refusals: once it is counted, they
        // would have been too.
        let msg = ("app@foreign.test", "x@remote.test", "app@foreign.test");
        send_expecting(&mut c, msg, "550 5.7.64", "relay").await;
        let _ = c.cmd("QUIT").await;
    });
    let counters = counters_once(&dev, "example.test/onprem", "relay-refused", 1);
    assert_eq!(
        counter_total(&counters, "example.test/onprem", "relay-refused"),
        1,
        "only the relay refusal counts: {counters}"
    );
    assert_eq!(
        counter_total(&counters, "example.test/partner", "relay-refused"),
        0,
        "{counters}"
    );
}

/// Messages from `source` through `server`, `n` of them, MAIL FROM in `from_domain`; returns the
/// replies.
async fn burst(server: &str, source: &str, n: usize, from_domain: &str) -> Vec<String> {
    let mut c = client_from(server, source, "sender.test").await;
    let mut out = Vec::new();
    for i in 0..n {
        let from = format!("s{i}@{from_domain}");
        out.push(send(&mut c, &from, "alice@example.test", &from).await);
    }
    let _ = c.cmd("QUIT").await;
    out
}

/// Acceptances 2, 4 and 5: with a short detection window, a connector flooding from
/// unprovisioned domains at 20 times its baseline is restricted and refused `550 5.7.711` by
/// both edges (the test prints how long after the first offending message); a steady and a
/// ramping connector beside it are not; an admin unblocks it with a reason, both edges accept
/// it again, and the audit log says who and why.
#[test]
fn flooding_connector_is_restricted_everywhere_and_unblocked() {
    let dir = TempDir::new("flood");
    // Alerts go to an https webhook (Python's http.server behind OpenSSL, with a certificate
    // from a CA of the test's own that `moat dev` trusts through SSL_CERT_FILE) and, by email,
    // to the admin mailbox.
    let (hook_url, hook_rx, _hook) = https_webhook(&dir.0);
    let data = dir.0.join("data");
    let mut cmd = moat();
    cmd.arg("dev").arg("--data").arg(&data).args(two_edges());
    cmd.env("SSL_CERT_FILE", dir.0.join("hook-ca.pem"));
    let dev = Dev::spawn(cmd, data);
    dev.admin(&[
        "detection",
        "set",
        "--interval",
        "2s",
        "--warmup",
        "3",
        "--spike-factor",
        "10",
        "--min-messages",
        "20",
    ]);
    for (name, ip) in [
        ("flooder", "127.0.0.2"),
        ("steady", "127.0.0.4"),
        ("ramp", "127.0.0.5"),
    ] {
        onprem_connector(&dev, name, ip);
    }
    // A webhook that could never be delivered is refused when it is set, with the reason.
    for (url, why) in [
        ("ftp://hooks.test/a", "must be an http:// or https:// URL"),
        (
            "https://user:pw@hooks.test/a",
            "credentials in the URL are not supported",
        ),
    ] {
        let (ok, out, err) = run(moat().args(["admin", "--data"]).arg(&dev.data).args([
            "alerts",
            "contacts",
            "set",
            "--tenant",
            "example.test",
            "--webhook",
            url,
            "--webhook-secret",
            "s",
        ]));
        assert!(!ok && err.contains(why), "{url}: {out}{err}");
    }
    dev.admin(&[
        "alerts",
        "contacts",
        "set",
        "--tenant",
        "example.test",
        "--email",
        "admin@example.test",
        "--webhook",
        &hook_url,
        "--webhook-secret",
        "hook-secret-1",
    ]);
    let edges = [dev.edge_listener(0, "mx"), dev.edge_listener(1, "mx")];
    // Baseline: five windows of normal traffic from accepted domains; the steady connector
    // sends 30 a window, the ramp grows by 4 a window, the flooder sends 2.
    runtime().block_on(async {
        for w in 0..5usize {
            let t0 = Instant::now();
            let e = &edges[w % 2];
            let (a, b, c) = tokio::join!(
                burst(e, "127.0.0.2", 2, "example.test"),
                burst(e, "127.0.0.4", 30, "example.test"),
                burst(e, "127.0.0.5", 1 + 4 * w, "example.test"),
            );
            for r in a.iter().chain(&b).chain(&c) {
                assert!(r.starts_with("250"), "baseline window {w}: {r}");
            }
            tokio::time::sleep(Duration::from_secs(2).saturating_sub(t0.elapsed())).await;
        }
    });
    // The flood: 40 messages (20 times the baseline) from domains the tenant does not own,
    // alternating edges, until both edges refuse it.
    let first_offence = Instant::now();
    let mut refused_at: [Option<Duration>; 2] = [None, None];
    let mut sent = 0;
    let mut last_steady = Instant::now();
    runtime().block_on(async {
        while refused_at.iter().any(Option::is_none) {
            assert!(
                first_offence.elapsed() < Duration::from_secs(20),
                "not restricted 20 s into the flood ({sent} messages sent): {refused_at:?}"
            );
            for (i, e) in edges.iter().enumerate() {
                let r = burst(e, "127.0.0.2", 2, "spam-source.test").await;
                sent += 2;
                if refused_at[i].is_none()
                    && r.iter().any(|r| {
                        r.starts_with("550 5.7.711 Access denied, bad inbound connector. AS(2204)")
                    })
                {
                    refused_at[i] = Some(first_offence.elapsed());
                }
            }
            // Steady traffic goes on meanwhile, at its baseline rate (30 a window: 3 every
            // 200 ms), however fast this loop turns.
            if last_steady.elapsed() >= Duration::from_millis(200) {
                last_steady = Instant::now();
                for r in burst(&edges[0], "127.0.0.4", 3, "example.test").await {
                    assert!(r.starts_with("250"), "steady connector refused: {r}");
                }
            }
        }
    });
    println!(
        "first offending message -> first 550 5.7.711: edge 1 {:?}, edge 2 {:?} ({sent} flood messages sent)",
        refused_at[0].unwrap_or_default(),
        refused_at[1].unwrap_or_default()
    );
    let restricted = dev.admin(&["restricted", "list"]);
    let list = restricted.as_array().expect("list");
    assert_eq!(list.len(), 1, "only the flooder: {restricted}");
    let r = &list[0];
    assert_eq!(
        (r["kind"].as_str(), r["name"].as_str()),
        (Some("connector"), Some("flooder"))
    );
    let reason = r["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("unprovisioned-domains: ") || reason.starts_with("volume-spike: "),
        "{reason}"
    );
    let alerts = dev
        .admin(&["alerts", "list", "--tenant", "example.test"])
        .to_string();
    assert!(
        alerts.contains("Suspicious connector activity") && alerts.contains("127.0.0.2"),
        "{alerts}"
    );

    // The webhook got the alert, signed with HMAC-SHA256 over "timestamp.body" (checked here
    // with Python's hmac, not our code); the admin mailbox got the email.
    let (head, body) = hook_rx
        .recv_timeout(Duration::from_secs(15))
        .expect("no webhook call");
    let header = |name: &str| {
        head.iter()
            .find_map(|h| {
                h.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("no {name} in {head:?}"))
    };
    assert!(
        head[0].starts_with("POST /moat-alerts HTTP/1.1"),
        "{head:?}"
    );
    let (ok, expected, err) = run(std::process::Command::new("python3").args([
        "-c",
        "import hmac, hashlib, sys; print('sha256=' + hmac.new(sys.argv[1].encode(), (sys.argv[2] + '.' + sys.argv[3]).encode(), hashlib.sha256).hexdigest())",
        "hook-secret-1",
        &header("x-moat-timestamp"),
        &body,
    ]));
    assert!(ok, "{err}");
    assert_eq!(header("x-moat-signature"), expected.trim(), "bad signature");
    let alert: Value = serde_json::from_str(&body).expect("alert json");
    assert_eq!(alert["title"], "Suspicious connector activity");
    assert_eq!(alert["severity"], "high");
    assert!(alert["detail"]
        .as_str()
        .unwrap_or_default()
        .contains("flooder"));
    let t0 = Instant::now();
    while dev
        .messages()
        .iter()
        .all(|p| !p.to_string_lossy().contains("/example.test/admin/new/"))
    {
        assert!(t0.elapsed() < Duration::from_secs(15), "no alert email");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mail = dev.messages_with_header("Subject: [high] Suspicious connector activity");
    assert_eq!(mail.len(), 1);
    assert!(String::from_utf8_lossy(&mail[0]).contains("connector flooder"));
    let t0 = Instant::now();
    loop {
        let alerts = dev.admin(&["alerts", "list", "--tenant", "example.test"]);
        let states: Vec<String> = alerts[0]["deliveries"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                format!(
                    "{}:{}",
                    d["channel"].as_str().unwrap_or(""),
                    d["state"].as_str().unwrap_or("")
                )
            })
            .collect();
        if states == ["webhook:delivered", "email:delivered"] {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "{states:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Unblock with a reason: both edges accept the connector again.
    let took = dev.admin_applied(&[
        "restricted",
        "unblock",
        "flooder",
        "--kind",
        "connector",
        "--tenant",
        "example.test",
        "--reason",
        "cleaned up the compromised relay host",
    ]);
    println!("unblock reached both edges {took:?} after the admin's write was acknowledged");
    runtime().block_on(async {
        for e in &edges {
            for r in burst(e, "127.0.0.2", 1, "example.test").await {
                assert!(r.starts_with("250"), "after unblock: {r}");
            }
        }
    });
    let audit = dev
        .admin(&["audit", "list", "--tenant", "example.test"])
        .to_string();
    assert!(
        audit.contains("connector flooder unblocked: cleaned up the compromised relay host"),
        "{audit}"
    );
    assert!(audit.contains("connector flooder restricted"), "{audit}");
}

/// Relayed mail goes to the outbound next hop (a smarthost: the scripted SMTP server here),
/// inbound mail to the mailbox next hop (the maildir); one transaction takes one route, a
/// recipient of the other gets `452 4.5.3` and is sent again in its own transaction.
#[test]
fn relay_goes_to_the_smarthost_and_inbound_to_the_mailboxes() {
    let dir = TempDir::new("smarthost");
    let port_file = dir.0.join("port");
    let spool = dir.0.join("spool");
    let spool_args = [OsStr::new("--spool"), spool.as_os_str()];
    let (_hop, port) =
        start_with_port_file("fake_next_hop.py", &port_file, &spool_args, "smarthost");
    let config = format!(
        "[outbound-next-hop]\nkind = \"smtp\"\naddress = \"127.0.0.1:{port}\"\nstarttls = \"none\"\n"
    );
    let dev = Dev::start_in(&dir.0, Some(&config), ANY_PORTS);
    onprem_connector(&dev, "onprem", "127.0.0.2");
    let server = dev.edge_listener(0, "mx");
    runtime().block_on(async {
        let mut c = client_from(&server, "127.0.0.2", "onprem.example.test").await;
        assert!(c
            .cmd("MAIL FROM:<app@example.test>")
            .await
            .expect("mail")
            .starts_with("250"));
        let r = c.cmd("RCPT TO:<x@remote.test>").await.expect("rcpt");
        assert!(r.starts_with("250"), "{r}");
        let r = c.cmd("RCPT TO:<alice@example.test>").await.expect("rcpt");
        assert!(r.starts_with("452 4.5.3"), "{r}");
        assert!(c.cmd("DATA").await.expect("data").starts_with("354"));
        c.write(&stuff(b"Subject: relayed\r\n\r\nout\r\n"))
            .await
            .expect("body");
        let r = c.reply().await.expect("final");
        assert!(r.starts_with("250"), "{r}");
        let msg = ("app@example.test", "alice@example.test", "app@example.test");
        send_expecting(&mut c, msg, "250", "inbound, in its own transaction").await;
    });
    let spooled: Vec<String> = std::fs::read_dir(&spool)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                .map(|e| {
                    String::from_utf8_lossy(&std::fs::read(e.path()).expect("read")).into_owned()
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(spooled.len(), 1, "{spooled:?}");
    assert!(spooled[0].contains("Subject: relayed"));
    assert_eq!(
        dev.messages().len(),
        1,
        "only the inbound message is in the maildir"
    );
}

/// With `[authentication] checks = true` and a local DNS server holding the tenant's SPF and
/// DMARC records, a connector whose mail fails DMARC is restricted by the
/// `authentication-failures` detector; a connector whose mail passes SPF is not.
#[test]
fn failing_dmarc_restricts_a_connector() {
    let dir = TempDir::new("dmarc");
    let port_file = dir.0.join("dns-port");
    let zone = r#"{"example.test": {"TXT": ["v=spf1 ip4:127.0.0.2 -all"]},
                   "_dmarc.example.test": {"TXT": ["v=DMARC1; p=reject"]}}"#;
    let zone_args = [OsStr::new("--zone"), OsStr::new(zone)];
    let (_dns, port) = start_with_port_file("dns_stub.py", &port_file, &zone_args, "DNS stub");
    let config = format!("[authentication]\nchecks = true\ndns = \"127.0.0.1:{port}\"\n");
    let dev = Dev::start_in(&dir.0, Some(&config), ANY_PORTS);
    dev.admin(&[
        "detection",
        "set",
        "--interval",
        "10m",
        "--min-messages",
        "10",
    ]);
    for (name, ip) in [("good", "127.0.0.2"), ("spoof", "127.0.0.6")] {
        onprem_connector(&dev, name, ip);
    }
    let server = dev.edge_listener(0, "mx");
    runtime().block_on(async {
        for r in burst(&server, "127.0.0.2", 12, "example.test").await {
            assert!(r.starts_with("250"), "{r}");
        }
        let t0 = Instant::now();
        loop {
            let r = burst(&server, "127.0.0.6", 3, "example.test").await;
            if r.iter().any(|r| r.starts_with("550 5.7.711")) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(20) {
                let counters = dev.admin(&["counters", "list"]);
                panic!("spoof never restricted: {r:?}\n{counters}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let list = dev.admin(&["restricted", "list"]);
    let list = list.as_array().expect("list");
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["name"], "spoof");
    assert!(
        list[0]["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("authentication-failures: "),
        "{list:?}"
    );
    // The good connector's checks run after its 250s and reach the leader with the edge's next
    // report: wait until all twelve are in, then the total must be exactly twelve.
    let counters = counters_once(&dev, "example.test/good", "auth-checked", 12);
    let get = |key: &str, name: &str| counter_total(&counters, key, name);
    assert!(get("example.test/spoof", "spf-fail") >= 10, "{counters}");
    assert!(get("example.test/spoof", "dmarc-fail") >= 10, "{counters}");
    assert_eq!(get("example.test/good", "auth-checked"), 12, "{counters}");
    assert_eq!(get("example.test/good", "spf-fail"), 0, "{counters}");
}
