//! Client submission (issue 4): one listener with two TLS engines, SMTP AUTH, the legacy-TLS
//! speed bump and opt-in endpoint, restricted users and the TLS usage report, driven by
//! `openssl s_client`, Python's smtplib and `moat admin` against `moat dev`.

use std::io::Read as _;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

use crate::client::{tls_config, Client};
use crate::harness::{clients_dir, run, runtime, Dev, TempDir, ANY_PORTS};

/// Sets `allow-legacy-tls-clients` of the demo tenant and waits for every edge to enforce it.
fn allow_legacy(dev: &Dev, on: bool) {
    dev.admin_applied(&[
        "transport-config",
        "set",
        "--tenant",
        "example.test",
        "--allow-legacy-tls-clients",
        if on { "true" } else { "false" },
    ]);
}

/// Sessions by `submit.py`: one JSON object per session.
fn submit(dev: &Dev, server: &str, tls: &str, count: usize, extra: &[&str]) -> Vec<Value> {
    let (ok, out, err) = run(Command::new("python3")
        .arg(clients_dir().join("submit.py"))
        .arg("--ca")
        .arg(dev.ca())
        .args([
            "--server",
            server,
            "--tls",
            tls,
            "--count",
            &count.to_string(),
        ])
        .args([
            "--user",
            &dev.demo_user(),
            "--password",
            &dev.demo_password(),
        ])
        .args(extra));
    assert!(ok, "submit.py failed:\n{out}\n{err}");
    let sessions: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(sessions.len(), count, "{out}\n{err}");
    sessions
}

fn code(session: &Value, step: &str) -> u64 {
    session[step][0].as_u64().unwrap_or(0)
}

fn s_client(server: &str, ca: &std::path::Path, version: &[&str]) -> String {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-brief",
            "-starttls",
            "smtp",
            "-connect",
            server,
            "-CAfile",
        ])
        .arg(ca)
        .args(version)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    // What s_client prints, gathered as it comes: `-brief` puts the handshake summary on
    // stderr and the server's replies on stdout.
    let gather = |mut pipe: Box<dyn std::io::Read + Send>| {
        let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = text.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                let mut sink = sink.lock().expect("output");
                sink.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        (text, reader)
    };
    let (stdout, out_reader) = gather(Box::new(child.stdout.take().expect("stdout")));
    let (stderr, err_reader) = gather(Box::new(child.stderr.take().expect("stderr")));
    let all = || stdout.lock().expect("output").clone() + &stderr.lock().expect("output");
    // Waits until the output shows `what` or s_client has exited (a refused handshake).
    let wait_for = |child: &mut std::process::Child, what: &str| {
        let t0 = Instant::now();
        while !all().contains(what)
            && child.try_wait().expect("s_client").is_none()
            && t0.elapsed() < Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        // A NOOP once the handshake is done, and end of input (s_client quits) once it is
        // answered. A line starting with Q or R would be s_client's own quit or renegotiate.
        wait_for(&mut child, "Protocol version:");
        let _ = stdin.write_all(b"NOOP\r\n");
        wait_for(&mut child, "250 2.0.0 OK");
    }
    child.wait().expect("openssl");
    out_reader.join().expect("reader");
    err_reader.join().expect("reader");
    all()
}

/// Acceptance 1: TLS 1.0 and 1.1 clients (openssl s_client, smtplib) complete the handshake on
/// a legacy-capable listener through OpenSSL; TLS 1.2/1.3 clients on the same port get rustls,
/// as the negotiated suite names show; a TLS 1.2+ listener refuses TLS 1.0.
#[test]
fn one_listener_two_engines() {
    let dev = Dev::start(None);
    let legacy = dev.edge_listener(0, "legacy-submission");
    let ca = dev.ca();
    for (flag, want) in [("-tls1", "TLSv1"), ("-tls1_1", "TLSv1.1")] {
        let out = s_client(&legacy, &ca, &[flag, "-cipher", "DEFAULT:@SECLEVEL=0"]);
        assert!(
            out.contains(&format!("Protocol version: {want}\n"))
                && out.contains("Verification: OK"),
            "{flag}: {out}"
        );
        // CBC with ECDHE only: never 3DES, RC4 or static RSA.
        assert!(out.contains("Ciphersuite: ECDHE-ECDSA-AES"), "{out}");
        assert!(
            out.contains("250 2.0.0 OK"),
            "the session went on after the handshake: {out}"
        );
    }
    let out = s_client(&legacy, &ca, &["-tls1_3"]);
    assert!(out.contains("Protocol version: TLSv1.3"), "{out}");
    assert!(out.contains("250 2.0.0 OK"), "{out}");
    // 3DES is not offered to legacy clients even when they ask for nothing else.
    let out = s_client(
        &legacy,
        &ca,
        &["-tls1", "-cipher", "DES-CBC3-SHA:@SECLEVEL=0"],
    );
    assert!(
        !out.contains("Protocol version: TLSv1\n"),
        "3DES negotiated: {out}"
    );
    // The standard submission listener is TLS 1.2+ only.
    let out = s_client(
        &dev.edge_listener(0, "submission"),
        &ca,
        &["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"],
    );
    assert!(
        out.contains("alert handshake failure") || out.contains("alert protocol version"),
        "{out}"
    );

    // smtplib at every version on the legacy port: the engine shows in the suite's name.
    allow_legacy(&dev, true);
    for (tls, want) in [
        ("TLSv1", "TLSv1"),
        ("TLSv1_1", "TLSv1.1"),
        ("TLSv1_2", "TLSv1.2"),
        ("TLSv1_3", "TLSv1.3"),
    ] {
        let s = &submit(&dev, &legacy, tls, 1, &["--to", "alice@example.test"])[0];
        assert_eq!(s["tls"], want, "{s}");
        assert_eq!(code(s, "data"), 250, "{s}");
    }
    let received: Vec<String> = dev
        .messages()
        .iter()
        .map(|p| String::from_utf8_lossy(&std::fs::read(p).expect("read")).into_owned())
        .collect();
    for want in [
        // Both engines name the suite by its IANA name; the server's preference (AES-128
        // first) wins over the client's (AES-256 first).
        "version=TLSv1.0 cipher=TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
        "version=TLSv1.1 cipher=TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
        "version=TLSv1.2 cipher=TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "version=TLSv1.3 cipher=TLS_AES_128_GCM_SHA256",
    ] {
        assert!(
            received.iter().any(|m| m.contains(want)),
            "no message with {want}: {received:?}"
        );
    }
}

/// Acceptance 2: the speed bump refuses the scheduled share of legacy sessions at AUTH with
/// `421 4.7.66`, within binomial tolerance, and never a TLS 1.2+ session.
#[test]
fn speed_bump_refuses_the_scheduled_share() {
    let config = r#"
[[listener]]
kind = "submission"
address = "127.0.0.1:0"
tls-min-version = "1.0"
legacy-tls = "speed-bump"
"#;
    let dir = TempDir::new("speedbump");
    let dev = Dev::start_in(&dir.0, Some(config), ANY_PORTS);
    let server = dev.edge_listener(0, "submission");
    const N: usize = 200;
    for percent in [0u32, 30, 100] {
        dev.admin_applied(&["tls", "speed-bump", "set", &format!("2020-01-01={percent}")]);
        let sessions = submit(&dev, &server, "TLSv1", N, &["--no-send"]);
        let refused = sessions.iter().filter(|s| code(s, "auth") == 421).count();
        let passed = sessions.iter().filter(|s| code(s, "auth") == 235).count();
        assert_eq!(refused + passed, N, "{sessions:?}");
        for s in sessions.iter().filter(|s| code(s, "auth") == 421) {
            assert!(
                s["auth"][1]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("4.7.66 TLS 1.0 and 1.1 are not supported. Please upgrade/update your client to support TLS 1.2. Visit https://aka.ms/smtp_auth_tls."),
                "{s}"
            );
        }
        // Binomial: mean N*p, standard deviation sqrt(N*p*(1-p)); allow 4 of them.
        let p = f64::from(percent) / 100.0;
        let mean = N as f64 * p;
        let sd = (N as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (refused as f64 - mean).abs() <= 4.0 * sd,
            "{percent}%: {refused} of {N} refused"
        );
        println!("speed bump at {percent}%: {refused} of {N} legacy sessions refused");
        for tls in ["TLSv1_2", "TLSv1_3"] {
            for s in submit(&dev, &server, tls, 10, &["--no-send"]) {
                assert_eq!(code(&s, "auth"), 235, "{tls} refused at {percent}%: {s}");
            }
        }
    }
}

/// Acceptance 3: the legacy endpoint serves only tenants that opted in, and flipping the flag
/// with `moat admin` changes what both edges of a cluster do, without a restart.
#[test]
fn opt_in_endpoint_follows_the_tenant_flag_on_every_edge() {
    let dir = TempDir::new("optin");
    let mut args = ANY_PORTS.to_vec();
    args.extend(["--edges", "2"]);
    let dev = Dev::start_in(&dir.0, None, &args);
    let endpoints = [
        dev.edge_listener(0, "legacy-submission"),
        dev.edge_listener(1, "legacy-submission"),
    ];
    for e in &endpoints {
        for tls in ["TLSv1", "TLSv1_3"] {
            let s = &submit(&dev, e, tls, 1, &["--to", "alice@example.test"])[0];
            assert_eq!(code(s, "auth"), 550, "{s}");
            assert!(
                s["auth"][1]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("5.7.67 TLS 1.0 and 1.1 are not supported by your organization"),
                "{s}"
            );
        }
    }
    allow_legacy(&dev, true);
    for e in &endpoints {
        let s = &submit(&dev, e, "TLSv1", 1, &["--to", "alice@example.test"])[0];
        assert_eq!(
            (s["tls"].as_str(), code(s, "data")),
            (Some("TLSv1"), 250),
            "{s}"
        );
    }
    allow_legacy(&dev, false);
    for e in &endpoints {
        let s = &submit(&dev, e, "TLSv1", 1, &["--to", "alice@example.test"])[0];
        assert_eq!(code(s, "auth"), 550, "{s}");
    }
    assert_eq!(dev.messages().len(), 2);
}

/// Acceptance 4: the right password delivers, a wrong one is refused, AUTH before STARTTLS is
/// refused, sending as another tenant's address is refused, and repeated failures lock the
/// user out (even with the right password) until the window passes.
#[test]
fn auth_rules() {
    let dev = Dev::start(None);
    let submission = dev.edge_listener(0, "submission");
    let smtps = dev.edge_listener(0, "smtps");
    dev.admin(&["tenant", "create", "other.test", "--domain", "other.test"]);

    let ok = &submit(
        &dev,
        &submission,
        "TLSv1_3",
        1,
        &["--to", "bob@example.test"],
    )[0];
    assert_eq!((code(ok, "auth"), code(ok, "data")), (235, 250), "{ok}");
    let login = &submit(
        &dev,
        &smtps,
        "TLSv1_2",
        1,
        &["--implicit", "--mech", "LOGIN", "--to", "bob@example.test"],
    )[0];
    assert_eq!(code(login, "data"), 250, "{login}");
    // swaks, AUTH LOGIN over STARTTLS.
    let (ok, out, err) = run(Command::new("swaks")
        .args(["--server", &submission, "--tls", "--auth", "LOGIN"])
        .args([
            "--auth-user",
            &dev.demo_user(),
            "--auth-password",
            &dev.demo_password(),
        ])
        .args(["--from", &dev.demo_user(), "--to", "bob@example.test"])
        .args(["--header", "X-Via: swaks"]));
    assert!(ok, "swaks failed:\n{out}\n{err}");
    assert!(out.contains("<~  235 2.7.0"), "{out}");
    let stored = dev.messages_with_header("To: bob@example.test");
    assert_eq!(stored.len(), 1, "swaks message");
    let stored = dev.messages_with_header("To: <bob@example.test>");
    assert_eq!(stored.len(), 2);
    assert!(String::from_utf8_lossy(&stored[0]).contains("with ESMTPSA id"));

    let as_other = &submit(
        &dev,
        &submission,
        "TLSv1_3",
        1,
        &["--from", "ceo@other.test", "--to", "bob@example.test"],
    )[0];
    assert_eq!(code(as_other, "mail"), 550, "{as_other}");
    assert!(as_other["mail"][1]
        .as_str()
        .unwrap_or_default()
        .starts_with("5.7.60"));

    // AUTH before STARTTLS, with our own client: 530 5.7.0, and AUTH is not even offered.
    runtime().block_on(async {
        let (mut c, _) = Client::connect(&submission).await.expect("connect");
        let ehlo = c.cmd("EHLO c.test").await.expect("ehlo");
        assert!(!ehlo.contains("AUTH"), "{ehlo}");
        let plain = base64::engine::general_purpose::STANDARD.encode(format!(
            "\0{}\0{}",
            dev.demo_user(),
            dev.demo_password()
        ));
        let r = c.cmd(&format!("AUTH PLAIN {plain}")).await.expect("auth");
        assert!(
            r.starts_with("530 5.7.0 Must issue a STARTTLS command first"),
            "{r}"
        );
        let c = c.starttls(tls_config(&dev.ca())).await.expect("tls");
        drop(c);
    });

    // Five wrong passwords (the default per-user limit), then even the right one is throttled.
    let (ok, out, err) = run(Command::new("python3")
        .arg(clients_dir().join("submit.py"))
        .arg("--ca")
        .arg(dev.ca())
        .args(["--server", &submission, "--count", "5", "--no-send"])
        .args(["--user", &dev.demo_user(), "--password", "wrong"]));
    assert!(ok, "{err}");
    for line in out.lines() {
        let s: Value = serde_json::from_str(line).expect("json");
        assert_eq!(code(&s, "auth"), 535, "{s}");
        assert!(s["auth"][1]
            .as_str()
            .unwrap_or_default()
            .starts_with("5.7.8"));
    }
    let locked = &submit(&dev, &submission, "TLSv1_3", 1, &["--no-send"])[0];
    assert_eq!(code(locked, "auth"), 454, "{locked}");
    assert!(locked["auth"][1]
        .as_str()
        .unwrap_or_default()
        .starts_with("4.7.0"));
}

/// Acceptance 5: a user over its hourly limit is refused `550 5.1.8` on both edges, listed as
/// restricted, alerted, and delivers again after an admin unblocks it.
#[test]
fn restricted_user_is_blocked_everywhere_until_unblocked() {
    let dir = TempDir::new("restricted");
    let mut args = ANY_PORTS.to_vec();
    args.extend(["--edges", "2"]);
    let dev = Dev::start_in(&dir.0, None, &args);
    let edges = [
        dev.edge_listener(0, "submission"),
        dev.edge_listener(1, "submission"),
    ];
    dev.admin(&[
        "outbound-policy",
        "set",
        "--tenant",
        "example.test",
        "--recipients-per-hour",
        "3",
        "--action",
        "block",
    ]);
    // Four recipients in the hour: 3 on edge 1, 1 on edge 2. Each is accepted; the control
    // plane sees the fourth and restricts the user.
    for (edge, n) in [(0, 3), (1, 1)] {
        for s in submit(
            &dev,
            &edges[edge],
            "TLSv1_3",
            n,
            &["--to", "bob@example.test"],
        ) {
            assert_eq!(code(&s, "data"), 250, "{s}");
        }
    }
    let user = dev.demo_user();
    let t0 = Instant::now();
    let listed = loop {
        let list = dev.admin(&["restricted", "list"]);
        if let Some(e) = list
            .as_array()
            .and_then(|l| l.iter().find(|e| e["name"] == user.as_str()).cloned())
        {
            break e;
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "never restricted");
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("restricted {:?} after the 4th recipient", t0.elapsed());
    assert_eq!(listed["kind"], "user", "{listed}");
    for e in &edges {
        // The restriction reaches both edges: poll until the MAIL answer changes.
        let t0 = Instant::now();
        loop {
            let s = &submit(&dev, e, "TLSv1_3", 1, &["--to", "bob@example.test"])[0];
            if code(s, "mail") == 550 {
                assert!(
                    s["mail"][1]
                        .as_str()
                        .unwrap_or_default()
                        .starts_with("5.1.8 Access denied, bad outbound sender"),
                    "{s}"
                );
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{e} still accepts: {s}"
            );
        }
    }
    let alerts = dev.admin(&["alerts", "list", "--tenant", "example.test"]);
    assert!(
        alerts
            .to_string()
            .contains("User restricted from sending email"),
        "{alerts}"
    );
    dev.admin_applied(&[
        "restricted",
        "unblock",
        &user,
        "--reason",
        "e2e: checked with the user",
    ]);
    for e in &edges {
        let s = &submit(&dev, e, "TLSv1_3", 1, &["--to", "bob@example.test"])[0];
        assert_eq!(code(s, "data"), 250, "{s}");
    }
    let list = dev.admin(&["restricted", "list"]);
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
}

/// Acceptance 6: the TLS report shows exactly the sessions this test made, by version, and
/// the legacy clients by IP and user.
#[test]
fn tls_report_shows_exactly_the_sessions_made() {
    let dev = Dev::start(None);
    let legacy = dev.edge_listener(0, "legacy-submission");
    let submission = dev.edge_listener(0, "submission");
    allow_legacy(&dev, true);
    let made = [
        (&legacy, "TLSv1", 2, "TLSv1.0"),
        (&legacy, "TLSv1_1", 1, "TLSv1.1"),
        (&submission, "TLSv1_2", 3, "TLSv1.2"),
        (&submission, "TLSv1_3", 4, "TLSv1.3"),
    ];
    for (server, tls, n, _) in made {
        for s in submit(&dev, server, tls, n, &["--to", "alice@example.test"]) {
            assert_eq!(code(&s, "data"), 250, "{s}");
        }
    }
    let t0 = Instant::now();
    let report = loop {
        let r = dev.admin(&["report", "tls", "--tenant", "example.test"]);
        let total: u64 = r["usage"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|row| row["messages"].as_u64().unwrap_or(0))
            .sum();
        if total >= 10 {
            break r;
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "report: {r}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let usage = report["usage"].as_array().expect("usage");
    for (_, _, n, version) in made {
        let rows: Vec<&Value> = usage.iter().filter(|r| r["version"] == version).collect();
        let sessions: u64 = rows
            .iter()
            .map(|r| r["sessions"].as_u64().unwrap_or(0))
            .sum();
        let messages: u64 = rows
            .iter()
            .map(|r| r["messages"].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(
            (sessions, messages),
            (n as u64, n as u64),
            "{version}: {report}"
        );
    }
    assert_eq!(
        usage
            .iter()
            .map(|r| r["sessions"].as_u64().unwrap_or(0))
            .sum::<u64>(),
        10,
        "{report}"
    );
    let legacy_rows = report["legacy-clients"].as_array().expect("legacy clients");
    assert_eq!(legacy_rows.len(), 2, "{report}");
    for (version, n) in [("TLSv1.0", 2), ("TLSv1.1", 1)] {
        let row = legacy_rows
            .iter()
            .find(|r| r["version"] == version)
            .unwrap_or_else(|| panic!("{version}: {report}"));
        assert_eq!(row["client-ip"], "127.0.0.1");
        assert_eq!(row["user"], dev.demo_user().as_str());
        assert_eq!(row["sessions"], n);
    }
    assert!(usage
        .iter()
        .any(|r| r["listener"] == "legacy-submission" && r["version"] == "TLSv1.0"));
}
