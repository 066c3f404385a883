//! The reports of issue 19 against `moat dev`: mail through an OnPremises connector without TLS
//! and over TLS 1.2 and 1.3 (Python smtplib from 127.0.0.2), some of it from a sender domain
//! the tenant does not accept, and authenticated submissions; then `moat admin report inbound`,
//! `auth-clients` and `non-accepted-domains` show the counts in JSON, and each report's CSV
//! (`-o csv`) holds the rows of its table output (`-o table`).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{clients_dir, moat, run, Dev, TempDir, ANY_PORTS};

/// Sends one message per `(tls, sender, message id)` from 127.0.0.2 to the MX listener:
/// `tls` is `none`, `1.2` or `1.3` (STARTTLS pinned to that version).
fn send_inbound(dev: &Dev, messages: &[(&str, &str, &str)]) {
    const SCRIPT: &str = r#"
import json, smtplib, ssl, sys
host, port = sys.argv[1].rsplit(":", 1)
for tls, sender, mid in json.loads(sys.argv[2]):
    s = smtplib.SMTP(host, int(port), local_hostname="onprem.e2e.test",
                     source_address=("127.0.0.2", 0), timeout=20)
    s.ehlo()
    if tls != "none":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        v = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[tls]
        ctx.minimum_version = v
        ctx.maximum_version = v
        s.starttls(context=ctx)
        s.ehlo()
        assert s.sock.version() == "TLSv" + tls, s.sock.version()
    msg = ("From: %s\r\nTo: alice@example.test\r\nSubject: report\r\nMessage-ID: %s\r\n\r\nhi\r\n"
           % (sender, mid))
    s.sendmail(sender, ["alice@example.test"], msg)
    s.quit()
"#;
    let list: Vec<[&str; 3]> = messages.iter().map(|(a, b, c)| [*a, *b, *c]).collect();
    let (ok, out, err) = run(Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(dev.edge_listener(0, "mx"))
        .arg(serde_json::to_string(&list).expect("json")));
    assert!(ok, "sending failed:\n{out}\n{err}");
}

/// Authenticated submissions of the demo user over `tls` (`TLSv1_2`, `TLSv1_3`).
fn submit(dev: &Dev, tls: &str, count: usize) {
    let (ok, out, err) = run(Command::new("python3")
        .arg(clients_dir().join("submit.py"))
        .arg("--ca")
        .arg(dev.ca())
        .args(["--server", &dev.edge_listener(0, "submission")])
        .args(["--tls", tls, "--count", &count.to_string()])
        .args(["--user", &dev.demo_user()])
        .args(["--password", &dev.demo_password()])
        .args(["--to", "alice@example.test"]));
    assert!(ok, "submit.py failed:\n{out}\n{err}");
    for line in out.lines() {
        let s: Value = serde_json::from_str(line).expect("json line");
        assert_eq!(s["data"][0].as_u64(), Some(250), "{s}");
    }
}

/// `moat admin ARGS` with `-o FORMAT`: its standard output.
fn admin_text(dev: &Dev, args: &[&str], format: &str) -> String {
    let (ok, out, err) = run(moat()
        .args(["admin", "--data"])
        .arg(&dev.data)
        .args(args)
        .args(["-o", format]));
    assert!(ok, "moat admin {args:?} -o {format} failed:\n{out}\n{err}");
    out
}

/// Reads CSV (RFC 4180, as `Table::csv` writes it) into lines of cells.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut lines = Vec::new();
    let (mut line, mut cell) = (Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') => quoted = true,
            (false, ',') => line.push(std::mem::take(&mut cell)),
            (false, '\r') => {
                assert_eq!(chars.next(), Some('\n'), "CR without LF in {text:?}");
                line.push(std::mem::take(&mut cell));
                lines.push(std::mem::take(&mut line));
            }
            (false, c) => cell.push(c),
        }
    }
    assert!(
        cell.is_empty() && line.is_empty(),
        "no CRLF at the end: {text:?}"
    );
    lines
}

/// A report's CSV and table output hold the same rows: the table's headings are the CSV's
/// upper-cased with `-` for spaces, its empty cells `<none>` (no cell of these reports holds a
/// space); an empty report has a CSV header and no table. Returns the CSV's lines.
fn csv_matches_table(dev: &Dev, args: &[&str]) -> Vec<Vec<String>> {
    let csv = parse_csv(&admin_text(dev, args, "csv"));
    let table: Vec<Vec<String>> = admin_text(dev, args, "table")
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    assert!(!csv.is_empty(), "{args:?}: no CSV header");
    if csv.len() == 1 {
        // An empty report: the table output says so on standard error.
        assert!(table.is_empty(), "{args:?}: {table:?}");
        return csv;
    }
    let mut expected = vec![csv[0]
        .iter()
        .map(|c| c.to_uppercase().replace(' ', "-"))
        .collect::<Vec<_>>()];
    expected.extend(csv[1..].iter().map(|row| {
        row.iter()
            .map(|c| {
                if c.is_empty() {
                    "<none>".into()
                } else {
                    c.clone()
                }
            })
            .collect::<Vec<String>>()
    }));
    assert_eq!(table, expected, "{args:?}: table and CSV differ");
    csv
}

#[test]
fn inbound_auth_clients_and_non_accepted_domains_reports() {
    let dir = TempDir::new("reports");
    let dev = Dev::start_in(&dir.0, None, ANY_PORTS);
    dev.admin_applied(&[
        "connector",
        "create",
        "--tenant",
        "example.test",
        "onprem",
        "--type",
        "on-premises",
        "--sender-ip",
        "127.0.0.2",
    ]);
    // Mail from a non-accepted domain is what the `unprovisioned` detector restricts; not the
    // subject here.
    dev.admin(&[
        "detection",
        "set",
        "--tenant",
        "example.test",
        "--min-messages",
        "100000",
    ]);
    send_inbound(
        &dev,
        &[
            ("none", "app@example.test", "<in-1@example.test>"),
            ("none", "x@elsewhere.test", "<na-1@elsewhere.test>"),
            ("1.2", "app@example.test", "<in-2@example.test>"),
            ("1.2", "app@example.test", "<in-3@example.test>"),
            ("1.2", "app@example.test", "<in-4@example.test>"),
            ("1.3", "x@elsewhere.test", "<na-2@elsewhere.test>"),
        ],
    );
    submit(&dev, "TLSv1_2", 2);
    submit(&dev, "TLSv1_3", 3);

    // Signals are batched: wait for all of them.
    let tenant = ["--tenant", "example.test"];
    let report = |name: &str| dev.admin(&[&["report", name][..], &tenant[..]].concat());
    let t0 = Instant::now();
    let (inbound, auth, non_accepted) = loop {
        let (i, a, n) = (
            report("inbound"),
            report("auth-clients"),
            report("non-accepted-domains"),
        );
        let sum = |v: &Value, f: &dyn Fn(&Value) -> bool| -> u64 {
            v.as_array()
                .into_iter()
                .flatten()
                .filter(|r| f(r))
                .map(|r| r["messages"].as_u64().unwrap_or(0))
                .sum()
        };
        let done = sum(&i, &|r| r["connector"] == "onprem") >= 6
            && sum(&a, &|_| true) >= 5
            && sum(&n, &|_| true) >= 2;
        if done {
            break (i, a, n);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "reports never got there:\n{i}\n{a}\n{n}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };

    let rows = inbound.as_array().expect("rows");
    let onprem: Vec<&Value> = rows.iter().filter(|r| r["connector"] == "onprem").collect();
    assert_eq!(onprem.len(), 1, "{inbound}");
    let r = onprem[0];
    assert_eq!(r["tenant"], "example.test");
    assert_eq!(r["type"], "OnPremises");
    assert_eq!(r["tls-forced"], false);
    assert_eq!(
        [
            &r["no-tls"],
            &r["tls-1.0"],
            &r["tls-1.1"],
            &r["tls-1.2"],
            &r["tls-1.3"],
            &r["messages"]
        ],
        [2, 0, 0, 3, 1, 6],
        "{r}"
    );

    let rows = auth.as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{auth}");
    let a = &rows[0];
    assert_eq!(a["user"], dev.demo_user().as_str());
    assert_eq!(
        [&a["tls-1.2"], &a["tls-1.3"], &a["messages"]],
        [2, 3, 5],
        "{a}"
    );
    assert_eq!(a["percent"]["tls-1.2"], 40.0);
    assert_eq!(a["percent"]["tls-1.3"], 60.0);

    let rows = non_accepted.as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{non_accepted}");
    let n = &rows[0];
    assert_eq!(n["connector"], "onprem");
    assert_eq!(n["domain"], "elsewhere.test");
    assert_eq!(n["messages"], 2);
    let mut samples: Vec<&str> = n["sample-message-ids"]
        .as_array()
        .expect("samples")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    samples.sort_unstable();
    assert_eq!(samples, ["<na-1@elsewhere.test>", "<na-2@elsewhere.test>"]);

    // CSV: the table's rows, and the JSON's figures.
    let csv = csv_matches_table(&dev, &[&["report", "inbound"][..], &tenant[..]].concat());
    let onprem_line = csv
        .iter()
        .find(|l| l.get(2).is_some_and(|c| c == "onprem"))
        .expect("onprem row");
    assert_eq!(
        onprem_line[3..],
        ["OnPremises", "no", "2", "0", "0", "3", "1", "6"]
    );
    let csv = csv_matches_table(
        &dev,
        &[&["report", "auth-clients"][..], &tenant[..]].concat(),
    );
    assert_eq!(
        csv[1][3..],
        ["0", "0", "0", "2", "3", "5", "0.0", "0.0", "0.0", "40.0", "60.0"]
    );
    let csv = csv_matches_table(
        &dev,
        &[&["report", "non-accepted-domains"][..], &tenant[..]].concat(),
    );
    assert_eq!(csv[1][2..5], ["onprem", "elsewhere.test", "2"]);
    // The existing reports write CSV too.
    let csv = parse_csv(&admin_text(
        &dev,
        &[&["report", "tls"][..], &tenant[..]].concat(),
        "csv",
    ));
    assert_eq!(csv[0][..2], ["Day", "Tenant"]);
    assert!(csv.len() > 1, "{csv:?}");
    csv_matches_table(
        &dev,
        &[
            &["report", "legacy-clients"][..],
            &tenant[..],
            &["--days", "90"][..],
        ]
        .concat(),
    );

    // Days: 1 to 90; CSV only for reports.
    let (ok, _, err) = run(moat()
        .args(["admin", "--data"])
        .arg(&dev.data)
        .args(["report", "inbound", "--days", "91"]));
    assert!(!ok && err.contains("91"), "{err}");
    let (ok, _, err) = run(moat()
        .args(["admin", "--data"])
        .arg(&dev.data)
        .args(["tenant", "list", "-o", "csv"]));
    assert!(!ok && err.contains("csv"), "{err}");
}
