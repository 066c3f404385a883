//! `moat admin explain` (issue 18, part 1) against a real `moat dev`: for a matrix of sessions
//! (accepted inbound, relay through an OnPremises connector by IP, relay refused, a Partner
//! connector's refusal, a connector requiring TLS, an unknown recipient domain), the reply
//! `explain` predicts is the reply a real SMTP session gets from the edge, and so it is for
//! random sessions drawn from the same parts; and a tenant admin may explain only for its own
//! tenant.

use crate::client::Client;
use crate::harness::{moat, run, runtime, Dev, TempDir, ANY_PORTS};

/// The code and enhanced status of a reply line (`550 5.7.64 ...` gives `("550", "5.7.64")`).
fn code(reply: &str) -> (String, String) {
    let mut words = reply.split_whitespace();
    let code = words.next().unwrap_or_default().to_owned();
    let status = words.next().unwrap_or_default().to_owned();
    (code, status)
}

/// What a real session from `source` answers MAIL FROM `from` then RCPT TO `to` with: the
/// first refusal, or the RCPT reply.
async fn session(server: &str, source: &str, from: &str, to: &str) -> String {
    let (mut c, _) = Client::connect_from(server, source).await.expect("connect");
    c.cmd("EHLO explain.test").await.expect("ehlo");
    let r = c.cmd(&format!("MAIL FROM:<{from}>")).await.expect("mail");
    if !r.starts_with('2') {
        return r;
    }
    let r = c.cmd(&format!("RCPT TO:<{to}>")).await.expect("rcpt");
    let _ = c.cmd("QUIT").await;
    r
}

/// `moat admin explain -o json` for one sender and recipient from `ip`.
fn explain(dev: &Dev, ip: &str, from: &str, to: &str) -> serde_json::Value {
    dev.admin(&[
        "explain",
        "--client-ip",
        ip,
        "--mail-from",
        from,
        "--rcpt",
        to,
    ])
}

/// Each case: what it is, client IP, MAIL FROM, RCPT TO, and the reply's code and enhanced
/// status both paths must give.
const CASES: &[(&str, &str, &str, &str, &str)] = &[
    (
        "accepted inbound",
        "127.0.0.3",
        "a@foreign.test",
        "alice@example.test",
        "250",
    ),
    (
        "relay through the OnPremises connector by IP",
        "127.0.0.2",
        "app@example.test",
        "x@remote.test",
        "250",
    ),
    (
        "relay refused: foreign MAIL FROM",
        "127.0.0.2",
        "app@foreign.test",
        "x@remote.test",
        "550 5.7.64",
    ),
    (
        "partner-scoped sender from outside the partner's IP",
        "127.0.0.2",
        "s@fabrikam.test",
        "alice@example.test",
        "550 5.7.51",
    ),
    (
        "partner connector requires TLS, session in clear text",
        "127.0.0.9",
        "s@fabrikam.test",
        "alice@example.test",
        "451 4.7.10",
    ),
    (
        "unknown recipient domain from an unmatched IP",
        "127.0.0.3",
        "a@foreign.test",
        "bob@unknown.test",
        "550 5.7.64",
    ),
];

#[test]
fn explain_predicts_the_edges_reply() {
    let dir = TempDir::new("explain");
    let dev = Dev::start_in(&dir.0, None, ANY_PORTS);
    let connector = |args: &[&str]| {
        let mut a = vec!["connector", "create", "--tenant", "example.test"];
        a.extend(args);
        dev.admin_applied(&a);
    };
    connector(&[
        "onprem",
        "--type",
        "on-premises",
        "--sender-ip",
        "127.0.0.2",
    ]);
    connector(&[
        "partner",
        "--type",
        "partner",
        "--sender-ip",
        "127.0.0.9",
        "--sender-domain",
        "fabrikam.test",
        "--restrict-domains-to-ip",
        "--require-tls",
    ]);
    let server = dev.edge_listener(0, "mx");
    for (what, ip, from, to, want) in CASES {
        let real = runtime().block_on(session(&server, ip, from, to));
        let explained = explain(&dev, ip, from, to);
        let predicted = explained["reply"].as_str().unwrap_or_default();
        let (want_code, want_status) = code(&format!("{want} x"));
        let (real_code, real_status) = code(&real);
        let (code_p, status_p) = code(predicted);
        assert_eq!(real_code, want_code, "{what}: the edge said {real}");
        assert_eq!(
            code_p, real_code,
            "{what}: explain {explained}, edge {real}"
        );
        if want.len() > 3 {
            assert_eq!(real_status, want_status, "{what}: the edge said {real}");
            assert_eq!(
                status_p, real_status,
                "{what}: explain {explained}, edge {real}"
            );
            // The refusal's text is the edge's, up to the node tag it appends.
            assert!(real.starts_with(predicted), "{what}: {predicted} vs {real}");
        }
    }
    // Random sessions drawn from the same parts: explain and the edge agree on each.
    let ips = ["127.0.0.2", "127.0.0.3", "127.0.0.5", "127.0.0.9"];
    let froms = [
        "app@example.test",
        "a@foreign.test",
        "s@fabrikam.test",
        "x@Sub.Example.test",
        "y@remote.test",
    ];
    let tos = [
        "alice@example.test",
        "x@remote.test",
        "bob@unknown.test",
        "Postmaster@EXAMPLE.test",
        "z@fabrikam.test",
    ];
    let mut seed: u64 = 18;
    let mut draw = |n: usize| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((seed >> 33) as usize) % n
    };
    for _ in 0..24 {
        let (ip, from, to) = (ips[draw(4)], froms[draw(5)], tos[draw(5)]);
        let real = runtime().block_on(session(&server, ip, from, to));
        let explained = explain(&dev, ip, from, to);
        let predicted = explained["reply"].as_str().unwrap_or_default();
        assert_eq!(
            code(predicted),
            code(&real),
            "{ip} {from} -> {to}: explain {explained}, edge {real}"
        );
    }

    // The relay case names the connector and the network that matched.
    let relay = explain(&dev, "127.0.0.2", "app@foreign.test", "x@remote.test");
    assert_eq!(relay["connectors"][0]["connector"], "example.test/onprem");
    assert_eq!(
        relay["connectors"][0]["why"],
        "network 127.0.0.2/32 contains 127.0.0.2"
    );
    let rcpt = &relay["steps"][1];
    assert_eq!(rcpt["step"], "RCPT");
    assert_eq!(
        rcpt["counters"][0], "connector example.test/onprem relay-refused",
        "{relay}"
    );

    // A tenant admin explains for its own tenant only.
    let created = dev.admin(&[
        "token",
        "create",
        "--role",
        "tenant-admin",
        "--tenant",
        "example.test",
        "--name",
        "explainer",
    ]);
    let token = created["secret"].as_str().expect("secret").to_owned();
    let explain_as = |tenant: &str| {
        run(moat()
            .args(["admin", "--data"])
            .arg(&dev.data)
            .args(["--token", &token, "-o", "json", "explain"])
            .args([
                "--client-ip",
                "127.0.0.2",
                "--mail-from",
                "app@example.test",
            ])
            .args(["--rcpt", "x@remote.test", "--tenant", tenant]))
    };
    let (ok, out, err) = explain_as("other.test");
    assert!(!ok && err.contains("other.test"), "{out}\n{err}");
    let (ok, out, err) = explain_as("example.test");
    assert!(ok, "{err}");
    let own: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(own["scope"], "example.test");
    assert!(
        own["reply"].as_str().unwrap_or_default().starts_with("250"),
        "{own}"
    );
}
