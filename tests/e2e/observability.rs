//! Operating Moat (issue 7): a real Prometheus (Debian's package) scrapes a multi-process
//! `moat dev --nodes 3 --edges 2` cluster, and `promtool check metrics` lints every `/metrics`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::http_status;
use crate::harness::{run, Dev, Killed, TempDir, ANY_PORTS};

/// A PromQL query and what its value must satisfy.
type Expectation = (&'static str, fn(f64) -> bool);

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The single value of an instant query, if it has one.
fn query(prometheus: &str, q: &str) -> Option<f64> {
    let (code, body) = http_status(prometheus, &format!("/api/v1/query?query={}", encode(q)));
    if code != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// The `/metrics` text of a status port.
fn metrics_of(addr: &str) -> String {
    let (code, body) = http_status(addr, "/metrics");
    assert_eq!(code, 200, "GET {addr}/metrics");
    body
}

#[test]
fn prometheus_scrapes_a_dev_cluster() {
    for tool in ["prometheus", "promtool", "swaks"] {
        assert!(
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .status()
                .is_ok_and(|s| s.success()),
            "{tool} is missing: scripts/test.sh installs it"
        );
    }
    let dir = TempDir::new("prometheus");
    let mut args = ANY_PORTS.to_vec();
    args.extend(["--nodes", "3", "--edges", "2"]);
    let dev = Dev::start_in(&dir.0, None, &args);
    let statuses = |kind: &str| -> Vec<String> {
        dev.endpoints[kind]
            .as_array()
            .expect(kind)
            .iter()
            .map(|e| e["status"].as_str().expect("status").to_owned())
            .collect()
    };
    let (control, edges) = (statuses("control"), statuses("edges"));
    assert_eq!((control.len(), edges.len()), (3, 2));

    let started = Instant::now();
    // Mail through both edges, over STARTTLS, with swaks.
    for edge in 0..2 {
        let mx = dev.edge_listener(edge, "mx");
        let (host, port) = mx.rsplit_once(':').expect("host:port");
        let (ok, out, err) = run(Command::new("swaks")
            .args(["--server", host, "--port", port, "--tls"])
            .args(["--from", "a@sender.test", "--to", "alice@example.test"])
            .args(["--header", "Subject: scraped"]));
        assert!(ok, "swaks to edge {edge}: {out}{err}");
    }

    println!("mail sent {:?} after start", started.elapsed());
    // Every /metrics endpoint passes promtool's lint.
    for addr in control.iter().chain(&edges) {
        let text = metrics_of(addr);
        assert!(text.contains("# HELP moat_"), "{addr}: {text}");
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("promtool");
        assert!(
            out.status.success(),
            "promtool check metrics {addr}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    println!("promtool done {:?} after start", started.elapsed());
    // A real Prometheus scrapes them every second.
    let port = crate::harness::free_port();
    let prometheus = format!("127.0.0.1:{port}");
    let targets = |list: &[String]| {
        list.iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let config = dir.0.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: moat-control\n    static_configs:\n      - targets: [{}]\n  - job_name: moat-edge\n    static_configs:\n      - targets: [{}]\n",
            targets(&control),
            targets(&edges)
        ),
    )
    .expect("config");
    let log = std::fs::File::create(dir.0.join("prometheus.log")).expect("log");
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prometheus}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus"),
    );
    let expectations: [Expectation; 9] = [
        ("count(up{job=~\"moat-.*\"} == 1)", |v| v == 5.0),
        ("sum(moat_edge_sessions_total{job=\"moat-edge\"})", |v| {
            v >= 2.0
        }),
        (
            "sum(moat_edge_replies_total{job=\"moat-edge\",code=\"250\",enhanced=\"2.6.0\"})",
            |v| v >= 2.0,
        ),
        (
            "sum(moat_edge_tls_handshakes_total{job=\"moat-edge\",outcome=\"ok\"})",
            |v| v >= 2.0,
        ),
        ("count(moat_control_raft_term{job=\"moat-control\"})", |v| {
            v == 3.0
        }),
        ("max(moat_control_raft_leader_id{job=\"moat-control\"})", |v| {
            v >= 1.0
        }),
        (
            "min(moat_edge_policy_version{job=\"moat-edge\"}) > 0 and min(moat_control_raft_applied_index{job=\"moat-control\"}) > 0",
            |v| v > 0.0,
        ),
        // One leader, agreed on by every node (an election on a loaded machine may take a
        // scrape or two to settle).
        (
            "count(count_values(\"leader\", moat_control_raft_leader_id{job=\"moat-control\"}))",
            |v| v == 1.0,
        ),
        ("sum(moat_control_raft_is_leader{job=\"moat-control\"})", |v| {
            v == 1.0
        }),
    ];
    let t0 = Instant::now();
    for (q, ok) in expectations {
        loop {
            let v = query(&prometheus, q);
            if v.is_some_and(ok) {
                println!("{q} = {} at {:?}", v.unwrap_or_default(), t0.elapsed());
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "Prometheus never saw `{q}` (last: {v:?}); see {}",
                dir.0.join("prometheus.log").display()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// `--log-format json`: one JSON object per line, and every line of an SMTP session carries the
/// session's span, whose id is the one in the Received header of the message it delivered.
#[test]
fn json_logs_carry_the_session_id_of_the_received_header() {
    let dir = TempDir::new("json-logs");
    let mut args = ANY_PORTS.to_vec();
    args.extend(["--log-format", "json", "--log", "debug"]);
    let dev = Dev::start_in(&dir.0, None, &args);
    let mx = dev.edge_listener(0, "mx");
    let (host, port) = mx.rsplit_once(':').expect("host:port");
    let (ok, out, err) = run(Command::new("swaks")
        .args(["--server", host, "--port", port])
        .args(["--from", "a@sender.test", "--to", "alice@example.test"]));
    assert!(ok, "swaks: {out}{err}");
    let messages = dev.messages();
    assert_eq!(messages.len(), 1);
    let text = std::fs::read_to_string(&messages[0]).expect("message");
    // `... with ESMTP id <session>.<transaction>`
    let id = text
        .split_whitespace()
        .skip_while(|w| *w != "id")
        .nth(1)
        .and_then(|w| w.split('.').next())
        .expect("Received id")
        .to_owned();
    let log = std::fs::read_to_string(dir.0.join("data.log")).expect("log");
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let session: Vec<&Value> = lines
        .iter()
        .filter(|l| l["span"]["name"] == "session" && l["span"]["id"] == id.as_str())
        .collect();
    let replies = session
        .iter()
        .filter(|l| l["fields"]["message"] == "reply")
        .count();
    assert!(
        replies >= 6,
        "greeting, EHLO, MAIL, RCPT, DATA, end of data, QUIT: {replies} reply lines for {id}"
    );
    assert!(
        session.iter().any(|l| l["fields"]["message"] == "message"
            && l["fields"]["reply"]
                .as_str()
                .is_some_and(|r| r.starts_with("250"))),
        "no message line in session {id}"
    );
}
