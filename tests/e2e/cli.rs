//! The `moat` command line itself: help layout, exit codes without a control plane, the
//! control node's TOML file, and plain (colourless) logs on a pipe.

use std::io::Read as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::cluster::http_status;
use crate::harness::{free_port, moat, Killed, TempDir};

/// `moat ARGS...` with no admin settings from the environment, in `dir`.
fn moat_in(dir: &TempDir, args: &[&str]) -> std::process::Output {
    moat()
        .args(args)
        .current_dir(&dir.0)
        .env_remove("MOAT_ENDPOINT")
        .env_remove("MOAT_TOKEN")
        .env_remove("MOAT_TLS_CA")
        .env_remove("MOAT_TLS_CERT")
        .env_remove("MOAT_TLS_KEY")
        .stdin(Stdio::null())
        .output()
        .expect("run moat")
}

/// The lines of `help` from the line `heading` to the next heading (or the end).
fn section<'a>(help: &'a str, heading: &str) -> Vec<&'a str> {
    help.lines()
        .skip_while(|l| l.trim_end() != heading)
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with(' '))
        .collect()
}

#[test]
fn admin_help_sets_global_options_apart() {
    let dir = TempDir::new("cli-help");
    let out = moat_in(&dir, &["admin", "tenant", "create", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let own = section(&help, "Options:").join("\n");
    let global = section(&help, "Global options:").join("\n");
    assert!(!global.is_empty(), "no Global options heading:\n{help}");
    // The subcommand's own flags stand alone under Options.
    for flag in ["--display-name", "--domain"] {
        assert!(own.contains(flag), "{flag} not under Options:\n{help}");
        assert!(
            !global.contains(flag),
            "{flag} under Global options:\n{help}"
        );
    }
    // Every option any admin command takes is under Global options, not Options.
    for flag in [
        "--endpoint",
        "--token",
        "--output",
        "--stale-ok",
        "--tls-ca",
        "--tls-cert",
        "--tls-key",
        "--data",
        "--log ",
        "--log-format",
    ] {
        assert!(
            global.contains(flag),
            "{flag} not under Global options:\n{help}"
        );
        assert!(!own.contains(flag), "{flag} under Options:\n{help}");
    }
    // The top of `moat admin --help` lists them under the heading too.
    let out = moat_in(&dir, &["admin", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        section(&help, "Global options:")
            .join("\n")
            .contains("--endpoint"),
        "{help}"
    );
}

#[test]
fn admin_without_a_control_plane_exits_unreachable() {
    let dir = TempDir::new("cli-unreachable");
    // Nothing to discover: no flags, no environment, no endpoints.json.
    let out = moat_in(&dir, &["admin", "tenant", "list", "--data", "no-such-dir"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("no control plane found"), "{stderr}");
    assert!(stderr.contains("--endpoint"), "{stderr}");

    // An endpoint nobody listens on: retried for the budget, then unreachable.
    // On a loopback IP of its own: no other test's process can be listening there.
    let endpoint = format!(
        "127.0.{}.{}:{}",
        1 + std::process::id() % 250,
        2 + free_port() % 250,
        free_port()
    );
    let started = Instant::now();
    let out = moat_in(
        &dir,
        &[
            "admin",
            "tenant",
            "list",
            "--endpoint",
            &endpoint,
            "--token",
            "t",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("control plane unavailable"), "{stderr}");
    assert!(stderr.contains(&endpoint), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// `moat control --config FILE` with `status-listen` and `unready-after` set only in the file:
/// the status port answers at that address, and a node that cannot reach a quorum turns
/// unready after the file's delay (1 s, not the default 5 s). Its standard error is a pipe, so
/// its text logs carry no ANSI colour codes.
#[test]
fn control_takes_every_setting_from_its_file_and_logs_plain_text_to_a_pipe() {
    let dir = TempDir::new("cli-control-file");
    // Addresses on a loopback IP of this test's own, so that no port another test's process
    // takes on 127.0.0.1 in the meantime can be mistaken for this node's.
    let ip = format!(
        "127.0.{}.{}",
        1 + std::process::id() % 250,
        2 + free_port() % 250
    );
    let listen = format!("{ip}:{}", free_port());
    let status = format!("{ip}:{}", free_port());
    // Peer 2 never answers: node 1 cannot elect a leader.
    let absent = format!("{ip}:{}", free_port());
    let file = dir.0.join("control.toml");
    std::fs::write(
        &file,
        format!(
            "id = 1\nlisten = \"{listen}\"\ndata = \"{data}\"\nstatus-listen = \"{status}\"\n\
             unready-after = 1\n\n[peers]\n1 = \"{listen}\"\n2 = \"{absent}\"\n",
            data = dir.0.join("data").display(),
        ),
    )
    .expect("write control.toml");
    let mut child = moat()
        .arg("control")
        .arg("--config")
        .arg(&file)
        .env_remove("MOAT_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn moat control");
    let mut stderr = child.stderr.take().expect("stderr");
    let mut child = Killed(child);
    // Drain the pipe as the node writes, so a full pipe never blocks it.
    let logs = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });

    let deadline = Instant::now() + Duration::from_secs(60);
    let leaderless = loop {
        let (code, body) = http_status(&status, "/readyz");
        if code == 503 {
            let v: serde_json::Value = serde_json::from_str(&body).expect("readyz JSON");
            if let Some(reason) = v["reason"].as_str() {
                break reason.to_owned();
            }
        }
        if let Ok(Some(exit)) = child.0.try_wait() {
            let logs = String::from_utf8_lossy(&logs.join().expect("log reader")).into_owned();
            panic!("moat control exited ({exit}):\n{logs}");
        }
        assert!(
            Instant::now() < deadline,
            "the status port at {status} (set in the file) never reported the lost quorum: \
             {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // "no leader known for X s": first seen unready a little after 1 s, long before 5 s.
    let secs: f64 = leaderless
        .strip_prefix("no leader known for ")
        .and_then(|r| r.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected reason {leaderless:?}"));
    assert!((1.0..5.0).contains(&secs), "unready after {secs} s");
    assert_eq!(http_status(&status, "/healthz").0, 200);

    drop(child);
    let logs = String::from_utf8_lossy(&logs.join().expect("log reader")).into_owned();
    assert!(logs.contains(&format!("status port on {status}")), "{logs}");
    assert!(!logs.contains("\x1b["), "ANSI codes on a pipe:\n{logs}");
}
