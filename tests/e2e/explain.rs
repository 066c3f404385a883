//! `moat admin explain` (issue 18, part 1) against a real `moat dev`: for every policy reply the
//! edge can give, the reply `explain` predicts is the reply a real SMTP session gets from the
//! edge, and `explain` names the rule that decided it. The matrix: accepted inbound, relay
//! through an OnPremises connector by IP, relay refused (`5.7.64`), a Partner connector's
//! refusal (`5.7.51`), a connector requiring TLS (`4.7.10`), an unknown recipient domain; and,
//! each set up with `moat admin` first, a connector the control plane restricted (`5.7.711`), a
//! restricted AUTH user (`5.1.8`), the legacy TLS speed bump at AUTH and at MAIL (`4.7.66`),
//! the legacy opt-in endpoint (`5.7.67`), sending as another tenant's address (`5.7.60`), and
//! an out-of-date Exchange server in an open, a throttled and a blocked minute (`4.7.230`,
//! `5.7.230`, with `--headers` and `--at`). Random sessions drawn from the matrix's parts agree
//! too, and a tenant admin may explain only for its own tenant.
//!
//! Not here: `530 5.7.0` for a user deleted after it logged in, a race inside one session that
//! `explain` (which judges a session from its start) reports as a failed AUTH instead.
//!
//! One `moat dev` serves every case; its edge has the default listeners (mx open to TLS 1.0
//! under the speed bump) plus `bump`, a submission listener open to TLS 1.0 under the speed
//! bump.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use moat_shared::onprem::{minutes, Minute, DAY_MS};
use serde_json::Value;

use crate::client::{stuff, Client};
use crate::harness::{clients_dir, moat, run, runtime, Dev, TempDir, ANY_PORTS};

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
    explain_with(dev, ip, from, to, &[])
}

/// [`explain`] with further options (`--auth-user`, `--tls-version`, `--headers`, `--at`...).
fn explain_with(dev: &Dev, ip: &str, from: &str, to: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "explain",
        "--client-ip",
        ip,
        "--mail-from",
        from,
        "--rcpt",
        to,
    ];
    args.extend(extra);
    dev.admin(&args)
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

/// Edge 1's listeners: `moat dev`'s four (mx taking TLS 1.0 and 1.1 too, under the speed
/// bump), and `bump`, a submission listener that takes TLS 1.0 and 1.1 under the speed bump.
const LISTENERS: &str = r#"
[[listener]]
kind = "mx"
address = "127.0.0.1:0"
tls-min-version = "1.0"
legacy-tls = "speed-bump"
[[listener]]
kind = "submission"
address = "127.0.0.1:0"
[[listener]]
kind = "smtps"
address = "127.0.0.1:0"
[[listener]]
kind = "submission"
name = "legacy-submission"
address = "127.0.0.1:0"
tls-min-version = "1.0"
legacy-tls = "opt-in"
[[listener]]
kind = "submission"
name = "bump"
address = "127.0.0.1:0"
tls-min-version = "1.0"
legacy-tls = "speed-bump"
"#;

#[test]
fn explain_predicts_the_edges_reply() {
    let dir = TempDir::new("explain");
    let dev = Dev::start_in(&dir.0, Some(LISTENERS), ANY_PORTS);
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

    // Every other policy reply, each set up with `moat admin` first.
    restricted_connector(&dev);
    restricted_user(&dev);
    speed_bump(&dev);
    legacy_opt_in(&dev);
    send_as_denied(&dev);
    onprem_server(&dev, &dir.0);
}

/// Asserts that the edge refused with `want` (code and enhanced status) and that `explain`
/// predicted the same reply (its text is the edge's, up to the node tag the edge appends) and
/// named the deciding rule: the refusing step's rule contains `rule`. Returns that step.
fn agree(what: &str, explained: &Value, real: &str, want: &str, rule: &str) -> Value {
    let predicted = explained["reply"].as_str().unwrap_or_default();
    println!("{what}: explain `{predicted}`, the edge `{real}`");
    assert!(real.starts_with(want), "{what}: the edge said {real}");
    assert_eq!(
        code(predicted),
        code(real),
        "{what}: explain {explained}, edge {real}"
    );
    assert!(
        !predicted.is_empty() && real.starts_with(predicted),
        "{what}: {predicted} vs {real}"
    );
    let step = explained["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["outcome"] == "refused"))
        .cloned()
        .unwrap_or_else(|| panic!("{what}: no refused step in {explained}"));
    assert_eq!(
        step["reply"].as_str(),
        Some(predicted),
        "{what}: {explained}"
    );
    let named = step["rule"].as_str().unwrap_or_default();
    assert!(
        named.contains(rule),
        "{what}: rule `{named}`, want `{rule}`"
    );
    step
}

/// Asserts that the edge and `explain` both accepted: the same code, a positive one.
fn both_accept(what: &str, explained: &Value, real: &str) {
    let predicted = explained["reply"].as_str().unwrap_or_default();
    assert!(real.starts_with('2'), "{what}: the edge said {real}");
    assert_eq!(
        code(predicted).0,
        code(real).0,
        "{what}: explain {explained}, edge {real}"
    );
}

/// A submission session by `submit.py` on `server` at TLS version `tls` (`TLSv1`, `TLSv1_3`)
/// as `user`: the first refusal (`CODE TEXT`) among AUTH, MAIL/RCPT and DATA, or the last
/// reply when none refused.
fn submit(dev: &Dev, server: &str, tls: &str, user: (&str, &str), extra: &[&str]) -> String {
    let (ok, out, err) = run(Command::new("python3")
        .arg(clients_dir().join("submit.py"))
        .arg("--ca")
        .arg(dev.ca())
        .args(["--server", server, "--tls", tls])
        .args(["--user", user.0, "--password", user.1])
        .args(extra));
    assert!(ok, "submit.py failed:\n{out}\n{err}");
    let s: Value = serde_json::from_str(out.lines().next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("submit.py: {e}: {out}\n{err}"));
    assert!(s["error"].is_null(), "{s}");
    let mut last = String::new();
    for step in ["auth", "mail", "data"] {
        if let (Some(c), Some(t)) = (s[step][0].as_u64(), s[step][1].as_str()) {
            last = format!("{c} {t}");
            if c >= 400 {
                break;
            }
        }
    }
    last
}

/// A whole message from `source` through the mx listener, its header section `headers`: the
/// refusal that ended the transaction, or the reply to the message.
fn send_message(server: &str, source: &str, from: &str, to: &str, headers: &str) -> String {
    runtime().block_on(async {
        let (mut c, _) = Client::connect_from(server, source).await.expect("connect");
        c.cmd("EHLO explain.test").await.expect("ehlo");
        for cmd in [
            format!("MAIL FROM:<{from}>"),
            format!("RCPT TO:<{to}>"),
            "DATA".into(),
        ] {
            let r = c.cmd(&cmd).await.expect("command");
            if !(r.starts_with("250") || r.starts_with("354")) {
                return r;
            }
        }
        let message =
            format!("{headers}From: {from}\r\nTo: {to}\r\nSubject: explain\r\n\r\nhello\r\n");
        c.write(&stuff(message.as_bytes())).await.expect("body");
        let r = c.reply().await.expect("final reply");
        let _ = c.cmd("QUIT").await;
        r
    })
}

/// An mx session from 127.0.0.1 over STARTTLS pinned to TLS 1.0 (Python's ssl at security
/// level 0), without AUTH: the MAIL refusal, or the RCPT reply.
fn legacy_mx_session(dev: &Dev, server: &str, from: &str, to: &str) -> String {
    const SCRIPT: &str = r#"
import smtplib, ssl, sys, warnings
warnings.filterwarnings("ignore", category=DeprecationWarning)
server, ca, sender, rcpt = sys.argv[1:5]
host, port = server.rsplit(":", 1)
ctx = ssl.create_default_context(cafile=ca)
ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1
ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
s = smtplib.SMTP(host, int(port), local_hostname="explain.test", timeout=30)
s.ehlo()
s.starttls(context=ctx)
s.ehlo()
assert s.sock.version() == "TLSv1", s.sock.version()
code, text = s.mail(sender)
if code == 250:
    code, text = s.rcpt(rcpt)
print(code, text.decode("utf-8", "replace"))
"#;
    let (ok, out, err) = run(Command::new("python3")
        .args(["-c", SCRIPT, server])
        .arg(dev.ca())
        .args([from, to]));
    assert!(ok, "legacy mx session failed:\n{out}\n{err}");
    out.trim().to_owned()
}

/// Polls `f` every 200 ms until it returns `Some`, for at most `secs` seconds.
fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "{what}: timed out"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `550 5.7.711`: an OnPremises connector of tailspin.test sending mail for domains its
/// tenant does not own is restricted by the control plane's detector (the tenant's minimum
/// lowered to 2 messages); explain shows the restriction with the detector's figures.
fn restricted_connector(dev: &Dev) {
    let server = dev.edge_listener(0, "mx");
    dev.admin_applied(&[
        "tenant",
        "create",
        "tailspin.test",
        "--domain",
        "tailspin.test",
    ]);
    dev.admin_applied(&[
        "connector",
        "create",
        "--tenant",
        "tailspin.test",
        "flooder",
        "--type",
        "on-premises",
        "--sender-ip",
        "127.0.0.6",
    ]);
    dev.admin(&[
        "detection",
        "set",
        "--tenant",
        "tailspin.test",
        "--min-messages",
        "2",
    ]);
    let (ip, from, to) = ("127.0.0.6", "x@foreign.test", "u@tailspin.test");
    let real = session(&server, ip, from, to);
    let real = runtime().block_on(real);
    both_accept("before the restriction", &explain(dev, ip, from, to), &real);
    // Messages from a foreign domain until the edge refuses the connector.
    let real = wait_for("the connector restricted", 20, || {
        let r = send_message(&server, ip, from, to, "");
        r.starts_with("550").then_some(r)
    });
    let explained = explain(dev, ip, from, to);
    agree(
        "restricted connector",
        &explained,
        &real,
        "550 5.7.711",
        "connector tailspin.test/flooder is restricted by the control plane",
    );
    assert_eq!(explained["steps"][0]["step"], "MAIL", "{explained}");
    let restriction = &explained["restrictions"][0];
    assert_eq!(
        (restriction["kind"].as_str(), restriction["name"].as_str()),
        (Some("connector"), Some("flooder")),
        "{explained}"
    );
    assert!(
        restriction["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("unprovisioned-domains: "),
        "{explained}"
    );
    assert_eq!(
        explained["connectors"][0]["restricted"]["name"], "flooder",
        "{explained}"
    );
}

/// `550 5.1.8`: a user of tailspin.test over its tenant's hourly recipient limit (1, action
/// block) is restricted; a real AUTH session as that user is refused at MAIL, and explain's
/// `--auth-user` path says the same.
fn restricted_user(dev: &Dev) {
    let server = dev.edge_listener(0, "submission");
    let user = ("sender@tailspin.test", "e2e-explain-password");
    dev.admin_applied(&[
        "user",
        "create",
        "--tenant",
        "tailspin.test",
        user.0,
        "--password",
        user.1,
    ]);
    dev.admin(&[
        "outbound-policy",
        "set",
        "--tenant",
        "tailspin.test",
        "--recipients-per-hour",
        "1",
        "--action",
        "block",
    ]);
    let as_user = [
        "--auth-user",
        user.0,
        "--tls-version",
        "1.3",
        "--listener",
        "submission",
    ];
    let (ip, to) = ("127.0.0.1", "bob@example.test");
    let before = explain_with(dev, ip, user.0, to, &as_user);
    let real = submit(dev, &server, "TLSv1_3", user, &["--to", to]);
    both_accept("the user before its limit", &before, &real);
    assert_eq!(
        (
            before["steps"][0]["step"].as_str(),
            before["steps"][0]["tenant"].as_str()
        ),
        (Some("AUTH"), Some("tailspin.test")),
        "{before}"
    );
    // Over the limit: the control plane restricts the user, then the edge refuses it.
    let real = wait_for("the user restricted", 15, || {
        let r = submit(dev, &server, "TLSv1_3", user, &["--to", to]);
        r.starts_with("550").then_some(r)
    });
    let explained = explain_with(dev, ip, user.0, to, &as_user);
    let step = agree(
        "restricted user",
        &explained,
        &real,
        "550 5.1.8",
        "user sender@tailspin.test is restricted by the control plane",
    );
    assert_eq!(step["step"], "MAIL", "{explained}");
    assert_eq!(explained["steps"][0]["outcome"], "accepted", "{explained}");
    let restriction = &explained["restrictions"][0];
    assert_eq!(
        (restriction["kind"].as_str(), restriction["name"].as_str()),
        (Some("user"), Some(user.0)),
        "{explained}"
    );
}

/// `421 4.7.66`: the speed bump refuses every legacy session from 2020 until 2100; a TLS 1.0
/// AUTH session on the `bump` listener is refused at AUTH, a TLS 1.2 one is not, a TLS 1.0 mx
/// session (no AUTH) is refused at MAIL, and explain agrees on each; after the window, explain
/// lets the legacy session through.
fn speed_bump(dev: &Dev) {
    let server = dev.edge_listener(0, "bump");
    let demo = (dev.demo_user(), dev.demo_password());
    let demo = (demo.0.as_str(), demo.1.as_str());
    dev.admin_applied(&["tls", "speed-bump", "set", "2020-01-01=100", "2100-01-01=0"]);
    let (ip, to) = ("127.0.0.1", "alice@example.test");
    let legacy = [
        "--auth-user",
        demo.0,
        "--tls-version",
        "1.0",
        "--listener",
        "bump",
    ];
    let real = submit(dev, &server, "TLSv1", demo, &["--no-send"]);
    let explained = explain_with(dev, ip, demo.0, to, &legacy);
    let step = agree(
        "speed bump",
        &explained,
        &real,
        "421 4.7.66",
        "legacy TLS speed bump: 100% of TLS 1.0/1.1 sessions are refused",
    );
    assert_eq!(step["step"], "AUTH", "{explained}");
    assert_eq!(step["counters"][0], "auth - speed-bump", "{explained}");
    let modern = [
        "--auth-user",
        demo.0,
        "--tls-version",
        "1.2",
        "--listener",
        "bump",
    ];
    let real = submit(dev, &server, "TLSv1_2", demo, &["--to", to]);
    both_accept(
        "TLS 1.2 on the speed bump listener",
        &explain_with(dev, ip, demo.0, to, &modern),
        &real,
    );
    // Without AUTH (mx), the speed bump answers MAIL.
    let (from, mx) = ("a@foreign.test", dev.edge_listener(0, "mx"));
    let real = legacy_mx_session(dev, &mx, from, to);
    let explained = explain_with(
        dev,
        ip,
        from,
        to,
        &["--tls-version", "1.0", "--listener", "mx"],
    );
    let step = agree(
        "speed bump at MAIL",
        &explained,
        &real,
        "421 4.7.66",
        "legacy TLS speed bump: 100% of TLS 1.0/1.1 sessions are refused",
    );
    assert_eq!(step["step"], "MAIL", "{explained}");
    let mut after = legacy.to_vec();
    after.extend(["--at", "2100-01-02T00:00Z"]);
    let explained = explain_with(dev, ip, demo.0, to, &after);
    assert!(
        explained["reply"]
            .as_str()
            .unwrap_or_default()
            .starts_with("250"),
        "after the window: {explained}"
    );
}

/// `550 5.7.67`: on the opt-in legacy listener, the demo tenant (without
/// allow-legacy-tls-clients) is refused at AUTH, at TLS 1.0 as at TLS 1.3.
fn legacy_opt_in(dev: &Dev) {
    let server = dev.edge_listener(0, "legacy-submission");
    let demo = (dev.demo_user(), dev.demo_password());
    let demo = (demo.0.as_str(), demo.1.as_str());
    let (ip, to) = ("127.0.0.1", "alice@example.test");
    for (tls, version) in [("TLSv1", "1.0"), ("TLSv1_3", "1.3")] {
        let real = submit(dev, &server, tls, demo, &["--no-send"]);
        let explained = explain_with(
            dev,
            ip,
            demo.0,
            to,
            &[
                "--auth-user",
                demo.0,
                "--tls-version",
                version,
                "--legacy-tls",
                "opt-in",
                "--listener",
                "legacy-submission",
            ],
        );
        let step = agree(
            &format!("opt-in listener at TLS {version}"),
            &explained,
            &real,
            "550 5.7.67",
            "legacy (opt-in) listener: tenant example.test does not allow legacy TLS clients",
        );
        assert_eq!(step["step"], "AUTH", "{explained}");
    }
}

/// `550 5.7.60`: the demo user sending as another tenant's address is refused at MAIL.
fn send_as_denied(dev: &Dev) {
    let server = dev.edge_listener(0, "submission");
    let demo = (dev.demo_user(), dev.demo_password());
    let demo = (demo.0.as_str(), demo.1.as_str());
    let (ip, from, to) = ("127.0.0.1", "ceo@tailspin.test", "bob@example.test");
    let real = submit(dev, &server, "TLSv1_3", demo, &["--from", from, "--to", to]);
    let explained = explain_with(
        dev,
        ip,
        from,
        to,
        &["--auth-user", demo.0, "--tls-version", "1.3"],
    );
    let step = agree(
        "send as another tenant's address",
        &explained,
        &real,
        "550 5.7.60",
        &format!("user {} may not send as ceo@tailspin.test", demo.0),
    );
    assert_eq!(step["step"], "MAIL", "{explained}");
}

/// `YYYY-MM-DDTHH:MM:SSZ` of Unix ms.
fn time_text(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (y, m, d) = moat_shared::time::civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// `450 4.7.230` and `550 5.7.230`: an Exchange 2016 server with an unpatched build sends
/// through the OnPremises connector; 62 days later (the cluster clock moved with `moat admin
/// dev clock`) it is throttled and blocked in the minutes its stage places. In an open, a
/// throttled and a blocked minute of one hour, explain with `--headers` and `--at` and the
/// edge give the same reply, and explain names the server, its build, stage and minute.
fn onprem_server(dev: &Dev, dir: &Path) {
    const SERVER: &str = "exch1.corp.example.test";
    const HOUR_MS: i64 = 3_600_000;
    let server = dev.edge_listener(0, "mx");
    let headers = format!(
        "Received: from {SERVER} (10.0.0.5) by\r\n {SERVER} (10.0.0.5) with Microsoft SMTP Server\r\n (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id 15.1.2507.44;\r\n Tue, 24 Nov 2026 10:00:00 +0000\r\n"
    );
    let file = dir.join("headers.txt");
    std::fs::write(&file, &headers).expect("headers file");
    let file = file.display().to_string();
    let (ip, from, to) = ("127.0.0.2", "app@example.test", "alice@example.test");
    let real = send_message(&server, ip, from, to, &headers);
    assert!(real.starts_with("250"), "first sighting: {real}");
    let t0 = wait_for("the server reported", 15, || {
        let rows = dev.admin(&["report", "onprem-servers", "--tenant", "example.test"]);
        rows.as_array()?
            .iter()
            .find(|r| r["server"] == SERVER && r["stage"] == 1)?["first-detected-ms"]
            .as_i64()
    });
    let explained = explain_with(dev, ip, from, to, &["--headers", &file]);
    both_accept("report only", &explained, &real);
    assert_eq!(explained["onprem"]["server"], SERVER, "{explained}");
    // Day 62: the stage throttles and blocks some minutes of each hour.
    let hour = (t0 + 62 * DAY_MS).div_euclid(HOUR_MS) + 1;
    let set_clock = |ms: i64| dev.admin_applied(&["dev", "clock", "set", "--at", &time_text(ms)]);
    set_clock(hour * HOUR_MS - 50_000);
    let explained = explain_with(dev, ip, from, to, &["--headers", &file]);
    let o = &explained["onprem"];
    let stage = o["stage"].as_u64().unwrap_or(0) as u32;
    let throttle = o["throttle"].as_u64().unwrap_or(0) as u8;
    let block = o["block"].as_u64().unwrap_or(0) as u8;
    assert!(
        stage > 1 && throttle > 0 && block > 0,
        "day 62 throttles and blocks: {explained}"
    );
    assert_eq!(
        (
            o["build"].as_str(),
            o["class"].as_str(),
            o["judged"].as_bool()
        ),
        (Some("15.1.2507.44"), Some("unpatched"), Some(true)),
        "{explained}"
    );
    let plan = minutes(SERVER, hour, stage, throttle, block);
    let first = |kind: Minute| plan.iter().position(|m| *m == kind).expect("a minute") as i64;
    let mut picked = [
        (first(Minute::Open), "open"),
        (first(Minute::Throttled), "throttled"),
        (first(Minute::Blocked), "blocked"),
    ];
    picked.sort();
    for (minute, kind) in picked {
        let at = hour * HOUR_MS + minute * 60_000 + 10_000;
        set_clock(at);
        let real = send_message(&server, ip, from, to, &headers);
        let explained = explain_with(
            dev,
            ip,
            from,
            to,
            &["--headers", &file, "--at", &time_text(at)],
        );
        assert_eq!(explained["onprem"]["minute"], kind, "{explained}");
        let what = format!("{kind} minute {minute}");
        let step = match kind {
            "open" => {
                both_accept(&what, &explained, &real);
                continue;
            }
            "throttled" => agree(
                &what,
                &explained,
                &real,
                "450 4.7.230",
                &format!("out-of-date Exchange server {SERVER} (15.1.2507.44) in a throttled minute ({throttle} mins/hr)"),
            ),
            _ => agree(
                &what,
                &explained,
                &real,
                "550 5.7.230",
                &format!("out-of-date Exchange server {SERVER} (15.1.2507.44) in a blocked minute ({block} mins/hr)"),
            ),
        };
        assert_eq!(step["step"], "DATA", "{explained}");
        assert_eq!(
            step["counters"][0],
            format!("connector example.test/onprem onprem-{kind}"),
            "{explained}"
        );
    }
}
