//! The benchmark harness (issue 8) proves it works: `moat bench sink` as the edge's next hop,
//! `moat bench smtp` driving a `moat dev` edge with 40 messages in each mode (and resuming TLS
//! sessions with `--resume`), and the idle,
//! handshake and signal-ingestion benchmarks for a few seconds at most each. Nothing here asserts a
//! timing. (The verdict benchmark, `edge/benches/verdict.rs`, runs once on a small snapshot
//! under `cargo test --benches` in `scripts/test.sh`.)

use std::io::BufRead as _;
use std::process::Stdio;

use serde_json::Value;

use crate::harness::{moat, Dev, Killed, TempDir, ANY_PORTS};

fn bench(args: &[&str]) -> Value {
    let out = moat()
        .arg("bench")
        .arg("smtp")
        .args(args)
        .output()
        .expect("moat bench smtp");
    assert!(
        out.status.success(),
        "moat bench smtp {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

#[test]
fn the_load_generator_drives_an_edge_into_the_sink() {
    let mut sink = Killed(
        moat()
            .args(["bench", "sink", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("sink"),
    );
    let mut addr = String::new();
    std::io::BufReader::new(sink.0.stdout.take().expect("stdout"))
        .read_line(&mut addr)
        .expect("sink address");
    let addr = addr.trim().to_owned();
    let dir = TempDir::new("bench");
    let config =
        format!("[next-hop]\nkind = \"smtp\"\naddress = \"{addr}\"\nstarttls = \"none\"\n");
    let dev = Dev::start_in(&dir.0, Some(&config), ANY_PORTS);
    let mx = dev.edge_listener(0, "mx");
    let smtps = dev.edge_listener(0, "smtps");
    let ca = dev.ca();
    let ca = ca.to_str().expect("ca path");
    let login = format!("{}:{}", dev.demo_user(), dev.demo_password());
    for (server, mode, per_conn, version) in [
        (&mx, "plain", "1", "1.3"),
        (&mx, "starttls", "20", "1.3"),
        (&mx, "starttls", "1", "1.2"),
        (&smtps, "tls", "5", "1.3"),
    ] {
        // The smtps listener is for submission: log in as the demo user, send as them.
        let auth: &[&str] = if mode == "tls" {
            &["--auth", &login, "--from", "demo@example.test"]
        } else {
            &[]
        };
        let r = bench(
            &[
                auth,
                &[
                    "--server",
                    server,
                    "--mode",
                    mode,
                    "--tls-version",
                    version,
                    "--messages-per-connection",
                    per_conn,
                    "--concurrency",
                    "4",
                    // Bounded by count, with a duration far past it: a slow machine still
                    // sends them all.
                    "--count",
                    "40",
                    "--duration",
                    "60",
                    "--ca",
                    ca,
                    "--server-name",
                    "localhost",
                ],
            ]
            .concat(),
        );
        println!("{mode} {version} x{per_conn}: {r}");
        let messages = r["messages"].as_u64().expect("messages");
        assert_eq!(messages, 40, "{r}");
        assert_eq!(r["replies"]["250 2.6.0"].as_u64(), Some(messages), "{r}");
        assert_eq!(r["errors"], serde_json::json!({}), "{r}");
        assert!(
            r["latency"]["transaction"]["p99_ms"].as_f64().is_some(),
            "{r}"
        );
        if mode != "plain" {
            assert!(r["handshakes"].as_u64().unwrap_or(0) > 0, "{r}");
        }
    }
    // Idle sessions: opened, held, the edge's RSS read (edge 1 runs in the dev process).
    let pid = dev.pid().to_string();
    let out = moat()
        .args([
            "bench",
            "idle",
            "--server",
            &mx,
            "--pid",
            &pid,
            "--sessions",
            "20",
        ])
        .output()
        .expect("moat bench idle");
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(r["sessions_open"], 20, "{r}");
    assert!(
        r["rss_with_sessions_kib"].as_u64().is_some_and(|k| k > 0),
        "{r}"
    );
    // The TLS library alone, for a moment.
    let out = moat()
        .args(["bench", "tls-handshake", "--duration", "0.3"])
        .output()
        .expect("moat bench tls-handshake");
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert!(r["handshakes"].as_u64().is_some_and(|h| h > 0), "{r}");
    // Handshakes alone: no message is sent.
    let r = bench(&[
        "--server",
        &mx,
        "--mode",
        "starttls",
        "--messages-per-connection",
        "0",
        "--duration",
        "3",
    ]);
    assert!(r["handshakes"].as_u64().is_some_and(|h| h > 0), "{r}");
    assert_eq!(r["messages"], 0, "{r}");
    // Without --resume every handshake is a full one.
    assert_eq!(r["handshakes_resumed"], 0, "{r}");
    assert_eq!(r["handshakes_full"], r["handshakes"], "{r}");
    // With --resume the client offers the sessions it kept, here to the one edge named twice
    // (the list is used in turn): after the first connection they resume.
    let both = format!("{mx},{mx}");
    let r = bench(&[
        "--server",
        &both,
        "--mode",
        "starttls",
        "--resume",
        "--concurrency",
        "1",
        "--count",
        "10",
        "--duration",
        "30",
    ]);
    assert_eq!(r["messages"], 10, "{r}");
    assert!(
        r["handshakes_resumed"].as_u64().is_some_and(|h| h > 0),
        "{r}"
    );
    assert_eq!(
        r["handshakes_full"].as_u64().unwrap_or(0) + r["handshakes_resumed"].as_u64().unwrap_or(0),
        r["handshakes"].as_u64().unwrap_or(u64::MAX),
        "{r}"
    );
    // A message count bounds a run as well as a duration does.
    let r = bench(&[
        "--server",
        &mx,
        "--mode",
        "plain",
        "--count",
        "25",
        "--duration",
        "30",
    ]);
    assert_eq!(r["messages"], 25, "{r}");
    // Signal ingestion: simulated edges' counters committed, and the totals add up.
    let data = dev.data.to_str().expect("data path");
    let out = moat()
        .args([
            "bench",
            "signals",
            "--data",
            data,
            "--edges",
            "2",
            "--deltas",
            "50",
            "--connectors",
            "3",
            "--duration",
            "3",
        ])
        .output()
        .expect("moat bench signals");
    assert!(
        out.status.success(),
        "moat bench signals: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    println!("signals: {r}");
    assert!(r["deltas_committed"].as_u64().is_some_and(|d| d > 0), "{r}");
    assert!(r["counters_checked"].as_u64().is_some_and(|c| c > 0), "{r}");
    assert_eq!(r["counters_mismatched"], 0, "{r}");
}
