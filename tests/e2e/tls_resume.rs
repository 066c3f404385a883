//! TLS resumption across the fleet (issue 20): a session ticket edge 1 issued resumes on edge 2,
//! over STARTTLS, with TLS 1.3 and TLS 1.2, using OpenSSL's `s_client` (a client nobody here
//! wrote); after two `moat admin tls tickets rotate` the old ticket gets a full handshake, as
//! does a ticket from another cluster; the edges count resumed handshakes.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::http_status;
use crate::harness::{Dev, TempDir, ANY_PORTS};

/// `openssl s_client -starttls smtp` to `addr` at `version` (`-tls1_3`, `-tls1_2`), with `extra`
/// arguments (`-sess_out F`, `-sess_in F`). It says EHLO, waits so that a TLS 1.3 ticket (sent
/// after the handshake) is read and saved, then QUIT; returns what it printed.
fn s_client(dev: &Dev, addr: &str, version: &str, extra: &[&str]) -> String {
    let ca = dev.ca();
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-starttls", "smtp", version])
        .args(["-crlf", "-nocommands", "-CAfile"])
        .arg(&ca)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client (Debian: openssl)");
    let mut stdin = child.stdin.take().expect("stdin");
    let _ = stdin.write_all(b"EHLO resume.test\n");
    let _ = stdin.flush();
    std::thread::sleep(Duration::from_millis(700));
    let _ = stdin.write_all(b"QUIT\n");
    let _ = stdin.flush();
    std::thread::sleep(Duration::from_millis(300));
    drop(stdin);
    let t0 = Instant::now();
    while child.try_wait().ok().flatten().is_none() {
        if t0.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.wait();
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut out);
    }
    out
}

/// Whether `s_client`'s output says the session was resumed (`Reused, TLSv1.3, ...`) or was a
/// full handshake (`New, ...`); panics when it says neither.
fn resumed(out: &str) -> bool {
    let reused = out.lines().any(|l| l.starts_with("Reused,"));
    let new = out.lines().any(|l| l.starts_with("New,"));
    assert!(reused != new, "s_client said neither or both:\n{out}");
    reused
}

/// Saves a session from `addr` in `file` and checks it was a full handshake.
fn save_session(dev: &Dev, addr: &str, version: &str, file: &Path) {
    let _ = std::fs::remove_file(file);
    let out = s_client(dev, addr, version, &["-sess_out", &file.to_string_lossy()]);
    assert!(
        !resumed(&out),
        "a first connection is a full handshake:\n{out}"
    );
    let saved = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    assert!(saved > 0, "no session saved from {addr}:\n{out}");
}

/// Offers the session in `file` to `addr`: whether it resumed.
fn offer(dev: &Dev, addr: &str, version: &str, file: &Path) -> bool {
    let out = s_client(dev, addr, version, &["-sess_in", &file.to_string_lossy()]);
    assert!(out.contains("250"), "no SMTP dialogue:\n{out}");
    resumed(&out)
}

/// The sum of `moat_edge_tls_handshakes_total{kind="resumed",outcome="ok"}` on a status port.
fn resumed_count(status: &str) -> f64 {
    let (code, body) = http_status(status, "/metrics");
    assert_eq!(code, 200, "GET {status}/metrics");
    body.lines()
        .filter(|l| {
            l.starts_with("moat_edge_tls_handshakes_total{")
                && l.contains("kind=\"resumed\"")
                && l.contains("outcome=\"ok\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_ticket_from_one_edge_resumes_on_the_other_until_two_rotations() {
    let dir = TempDir::new("tls-resume");
    let mut args = ANY_PORTS.to_vec();
    args.extend(["--edges", "2"]);
    let dev = Dev::start_in(&dir.0, None, &args);
    // The leader makes a key by itself; a forced rotation makes sure both edges hold keys at a
    // known version.
    dev.admin_applied(&["tls", "tickets", "rotate"]);
    let shown = dev.admin(&["tls", "tickets", "show"]);
    let keys = shown.as_array().expect("a list");
    assert!(!keys.is_empty(), "{shown}");
    assert_eq!(keys[0]["role"], "issuing", "{shown}");
    let text = shown.to_string();
    assert!(
        !text.contains("secret"),
        "show never carries key bytes: {text}"
    );

    let (edge1, edge2) = (dev.edge_listener(0, "mx"), dev.edge_listener(1, "mx"));
    let status2 = dev.endpoints["edges"][1]["status"]
        .as_str()
        .expect("status")
        .to_owned();
    let before = resumed_count(&status2);
    let f13 = dir.0.join("tls13.session");
    let f12 = dir.0.join("tls12.session");
    save_session(&dev, &edge1, "-tls1_3", &f13);
    save_session(&dev, &edge1, "-tls1_2", &f12);
    assert!(
        offer(&dev, &edge2, "-tls1_3", &f13),
        "TLS 1.3 ticket of edge 1 on edge 2"
    );
    assert!(
        offer(&dev, &edge2, "-tls1_2", &f12),
        "TLS 1.2 ticket of edge 1 on edge 2"
    );
    let after = resumed_count(&status2);
    assert!(
        after >= before + 2.0,
        "edge 2 counts resumed handshakes: {before} then {after}"
    );

    // One rotation: the ticket's key is still accepted. Two: it is gone.
    dev.admin_applied(&["tls", "tickets", "rotate"]);
    assert!(
        offer(&dev, &edge2, "-tls1_3", &f13),
        "accepted after one rotation"
    );
    dev.admin_applied(&["tls", "tickets", "rotate"]);
    assert!(
        !offer(&dev, &edge2, "-tls1_3", &f13),
        "refused after two rotations"
    );
    assert!(
        !offer(&dev, &edge1, "-tls1_2", &f12),
        "refused after two rotations"
    );
    let shown = dev.admin(&["tls", "tickets", "show"]);
    let roles: Vec<&str> = shown
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|k| k["role"].as_str())
        .collect();
    assert_eq!(roles, ["issuing", "accepting"], "{shown}");

    // A ticket another cluster issued gets a full handshake.
    let other_dir = TempDir::new("tls-resume-other");
    let other = Dev::start_in(&other_dir.0, None, ANY_PORTS);
    other.admin_applied(&["tls", "tickets", "rotate"]);
    let foreign = dir.0.join("foreign.session");
    save_session(&other, &other.edge_listener(0, "mx"), "-tls1_3", &foreign);
    assert!(
        offer(&other, &other.edge_listener(0, "mx"), "-tls1_3", &foreign),
        "the other cluster resumes its own ticket"
    );
    assert!(
        !offer(&dev, &edge1, "-tls1_3", &foreign),
        "another cluster's ticket"
    );
}
