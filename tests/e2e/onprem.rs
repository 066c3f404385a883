//! Out-of-date on-premises Exchange servers (issue 6) on a two-edge `moat dev`: the life cycle
//! walked with the dev-only cluster clock, minute by minute on both edges; pauses and their
//! yearly budget; remediation by a compliant build; a raised baseline.
//!
//! Mail comes from 127.0.0.2, the address of the tenant's OnPremises connector, and carries the
//! Received stamp an Exchange server writes.

use std::time::{Duration, Instant};

use moat_shared::onprem::{minutes, Minute, DAY_MS};
use serde_json::Value;

use crate::client::{stuff, Client};
use crate::harness::{runtime, Dev, TempDir, ANY_PORTS};

const HOUR_MS: i64 = 3_600_000;
const MINUTE_MS: i64 = 60_000;
const SERVER: &str = "exch1.corp.example.test";
const OLD: &str = "15.1.2507.44";
const PATCHED: &str = "15.1.2507.61";

/// A two-edge `moat dev` with an OnPremises connector for 127.0.0.2.
fn start(tag: &str) -> (TempDir, Dev) {
    let dir = TempDir::new(tag);
    let mut args = ANY_PORTS.to_vec();
    args.extend(["--edges", "2"]);
    let dev = Dev::start_in(&dir.0, None, &args);
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
    // The tests send a hundred messages in an hour of the cluster clock after a month of
    // silence: a volume spike the connector detector would rightly restrict. Not the subject
    // here.
    dev.admin(&[
        "detection",
        "set",
        "--tenant",
        "example.test",
        "--min-messages",
        "100000",
    ]);
    wait_reference_table(&dev);
    (dir, dev)
}

/// Waits until the cluster adopted the best-sourced built-in stage table (stages 6 and 7
/// block only): its leader proposes that within a second or two of its election, and until
/// then the previous release's table is in force. The tests' stage walks assume the new one.
fn wait_reference_table(dev: &Dev) {
    let t0 = Instant::now();
    loop {
        let show = dev.admin(&["onprem", "policy", "show"]);
        if show["table"] == "reference" {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the cluster never adopted the best-sourced stage table: {show}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One message from `server` stamped with `build` through edge `edge`'s MX listener; the final
/// reply, or the refusal that ended the transaction.
fn send(dev: &Dev, edge: usize, server: &str, build: &str) -> String {
    send_from(dev, edge, "127.0.0.2", server, build)
}

/// [`send`] from another source address.
fn send_from(dev: &Dev, edge: usize, source: &str, server: &str, build: &str) -> String {
    let mx = dev.edge_listener(edge, "mx");
    runtime().block_on(async {
        let (mut c, _) = Client::connect_from(&mx, source)
            .await
            .expect("connect");
        c.cmd(&format!("EHLO {server}")).await.expect("ehlo");
        for cmd in ["MAIL FROM:<app@example.test>", "RCPT TO:<alice@example.test>", "DATA"] {
            let r = c.cmd(cmd).await.expect("command");
            if !(r.starts_with("250") || r.starts_with("354")) {
                return r;
            }
        }
        let message = format!(
            "Received: from {server} (10.0.0.5) by\r\n {server} (10.0.0.5) with Microsoft SMTP Server\r\n (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id {build};\r\n Tue, 24 Nov 2026 10:00:00 +0000\r\nFrom: app@example.test\r\nTo: alice@example.test\r\nSubject: from {server}\r\n\r\nhello\r\n"
        );
        c.write(&stuff(message.as_bytes())).await.expect("body");
        let r = c.reply().await.expect("final reply");
        let _ = c.cmd("QUIT").await;
        r
    })
}

/// The cluster clock (Unix ms).
fn cluster_now(dev: &Dev) -> i64 {
    dev.admin(&["dev", "clock", "show"])["cluster-now-ms"]
        .as_i64()
        .expect("cluster-now-ms")
}

/// Moves the cluster clock to `at_ms` (to the second) and waits for both edges to apply it.
fn set_clock(dev: &Dev, at_ms: i64) {
    let secs = at_ms.div_euclid(1000);
    let (y, m, d) = moat_shared::time::civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let at = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    );
    dev.admin_applied(&["dev", "clock", "set", "--at", &at]);
}

/// The report row of `server`.
fn report(dev: &Dev, server: &str) -> Value {
    let rows = dev.admin(&["report", "onprem-servers", "--tenant", "example.test"]);
    rows.as_array()
        .and_then(|r| r.iter().find(|x| x["server"] == server))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits until `server`'s report row satisfies `ok`.
fn wait_report(dev: &Dev, server: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let row = report(dev, server);
        if ok(&row) {
            return row;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "report row never got there: {row}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What each edge's `/readyz` says about enforced on-premises servers.
fn enforced_on_edges(dev: &Dev) -> Vec<u64> {
    dev.endpoints["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| {
            crate::cluster::readyz(e["status"].as_str().expect("status"))
                .and_then(|v| v["policy"]["onprem_enforced"].as_u64())
                .unwrap_or(u64::MAX)
        })
        .collect()
}

/// The reply every edge must give in a minute of the schedule.
fn expected(minute: Minute, stage: (u8, u8)) -> String {
    match minute {
        Minute::Open => "250 ".into(),
        Minute::Throttled => format!(
            "450 4.7.230 Connecting Exchange server version is out-of-date; connection to Moat throttled for {} mins/hr.",
            stage.0
        ),
        Minute::Blocked => format!(
            "550 5.7.230 Connecting Exchange server version is out-of-date; connection to Moat blocked for {} mins/hr.",
            stage.1
        ),
    }
}

/// Walks the 60 minutes of the hour starting at `hour_start_ms` with the cluster clock (10 s
/// into each minute) and checks that both edges answer exactly as the schedule of `stage` places
/// the minutes; returns how many minutes were throttled and blocked.
fn check_hour(dev: &Dev, hour_start_ms: i64, stage: u32, minutes_per_hour: (u8, u8)) -> (u32, u32) {
    let hour = hour_start_ms / HOUR_MS;
    let plan = minutes(SERVER, hour, stage, minutes_per_hour.0, minutes_per_hour.1);
    let (mut throttled, mut blocked) = (0, 0);
    for (m, minute) in plan.iter().enumerate() {
        set_clock(dev, hour_start_ms + m as i64 * MINUTE_MS + 10_000);
        let want = expected(*minute, minutes_per_hour);
        for edge in 0..2 {
            let r = send(dev, edge, SERVER, OLD);
            assert!(
                r.starts_with(&want),
                "stage {stage}, minute {m}, edge {}: want `{want}`, got `{r}`",
                edge + 1
            );
        }
        match minute {
            Minute::Throttled => throttled += 1,
            Minute::Blocked => blocked += 1,
            Minute::Open => {}
        }
    }
    (throttled, blocked)
}

/// The first whole hour at or after `ms`.
fn next_hour(ms: i64) -> i64 {
    (ms + HOUR_MS - 1).div_euclid(HOUR_MS) * HOUR_MS
}

/// Acceptance 2 and 4: report only on day 1; on day 31 `450 4.7.230` in exactly the scheduled
/// minutes of an hour, on both edges; on day 61 blocking and throttling; on day 91 every minute
/// blocked; then a compliant build from the server ends enforcement on both edges within a
/// second and the report says remediated.
#[test]
fn an_out_of_date_server_walks_the_stages_on_both_edges() {
    let (_dir, dev) = start("onprem-cycle");
    let before = cluster_now(&dev);
    let r = send(&dev, 0, SERVER, OLD);
    assert!(r.starts_with("250"), "{r}");
    let row = wait_report(&dev, SERVER, |r| r["stage"] == 1);
    assert_eq!(row["class"], "unpatched");
    assert_eq!(row["status"], "report-only");
    assert_eq!(row["product"], "Exchange Server 2016");
    assert_eq!(row["recommended"], serde_json::json!(["15.1.2507.61"]));
    assert_eq!(row["next-stage"], 2);
    let t0 = row["first-detected-ms"].as_i64().expect("first detected");
    assert!(t0 >= before, "{t0} < {before}");
    let alerts = dev.admin(&["alerts", "list", "--tenant", "example.test"]);
    assert!(alerts
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["title"] == "Out-of-date Exchange server detected"));

    // Day 1: report only, mail flows through both edges.
    set_clock(&dev, t0 + DAY_MS + HOUR_MS);
    for edge in 0..2 {
        let r = send(&dev, edge, SERVER, OLD);
        assert!(r.starts_with("250"), "day 1, edge {}: {r}", edge + 1);
    }

    // Day 31: stage 2, 5 throttled minutes an hour; every minute of one hour checked.
    let h = next_hour(t0 + 31 * DAY_MS);
    assert_eq!(check_hour(&dev, h, 2, (5, 0)), (5, 0));
    let row = report(&dev, SERVER);
    assert_eq!(
        (row["stage"].as_u64(), row["status"].as_str()),
        (Some(2), Some("throttled"))
    );
    assert!(row["throttle-enabled"].is_string(), "{row}");

    // Day 61: stage 5, 30 throttled and 5 blocked minutes an hour.
    let h = next_hour(t0 + 61 * DAY_MS);
    assert_eq!(check_hour(&dev, h, 5, (30, 5)), (30, 5));
    let row = report(&dev, SERVER);
    assert_eq!(row["status"], "blocking");
    assert!(row["blocking-enabled"].is_string(), "{row}");
    assert_eq!(row["next-stage"], 6);

    // Day 91: stage 8, everything blocked.
    let h = next_hour(t0 + 91 * DAY_MS);
    for m in [0, 17, 59] {
        set_clock(&dev, h + m * MINUTE_MS + 10_000);
        for edge in 0..2 {
            let r = send(&dev, edge, SERVER, OLD);
            assert!(
                r.starts_with(&expected(Minute::Blocked, (0, 60))),
                "day 91 minute {m}: {r}"
            );
        }
    }
    let row = report(&dev, SERVER);
    assert_eq!(
        (row["stage"].as_u64(), row["status"].as_str()),
        (Some(8), Some("blocked"))
    );
    assert_eq!(row["next-stage"], Value::Null);
    let stages: Vec<String> = dev
        .admin(&["alerts", "list", "--tenant", "example.test"])
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["title"].as_str())
        .filter(|t| t.starts_with("Out-of-date Exchange server at stage"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        stages.len(),
        3,
        "one alert per stage change seen: {stages:?}"
    );

    // Remediation: the compliant build passes even now, and enforcement ends on both edges
    // within a second.
    assert_eq!(enforced_on_edges(&dev), [1, 1]);
    let r = send(&dev, 1, SERVER, PATCHED);
    assert!(r.starts_with("250"), "compliant build: {r}");
    let accepted = Instant::now();
    while enforced_on_edges(&dev) != [0, 0] {
        assert!(
            accepted.elapsed() < Duration::from_secs(5),
            "enforcement still on: {:?}",
            enforced_on_edges(&dev)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = accepted.elapsed();
    println!("remediation reached both edges {took:?} after the 250");
    assert!(took < Duration::from_secs(1), "remediation took {took:?}");
    let row = report(&dev, SERVER);
    assert_eq!(row["status"], "remediated", "{row}");
    assert_eq!(row["class"], "compliant");
    assert_eq!(row["stage"], 0);
    assert!(row["remediated"].is_string());
    // In what was a blocked minute, both edges take the server's mail again (an old build
    // after remediation starts a new cycle at stage 1, report only).
    for edge in 0..2 {
        let r = send(&dev, edge, SERVER, OLD);
        assert!(
            r.starts_with("250"),
            "after remediation, edge {}: {r}",
            edge + 1
        );
    }
}

/// Acceptance 3 and 5: a pause at day 45 lets mail through and shows in the report with the
/// remaining budget; a pause beyond the budget is refused; after the pause the server resumes
/// at the stage it reached. A raised baseline makes a compliant server unpatched at once.
/// Widening the scope brings Partner connectors' mail in.
#[test]
fn pauses_and_a_raised_baseline() {
    let (_dir, dev) = start("onprem-pause");
    assert!(send(&dev, 0, SERVER, OLD).starts_with("250"));
    let t0 = wait_report(&dev, SERVER, |r| r["stage"] == 1)["first-detected-ms"]
        .as_i64()
        .expect("first detected");

    // Day 45: stage 3, 10 throttled minutes an hour; find one to test in.
    let h = next_hour(t0 + 45 * DAY_MS);
    let plan = minutes(SERVER, h / HOUR_MS, 3, 10, 0);
    let throttled = plan.iter().position(|m| *m == Minute::Throttled).unwrap() as i64;
    set_clock(&dev, h + throttled * MINUTE_MS + 10_000);
    assert!(send(&dev, 0, SERVER, OLD).starts_with("450 4.7.230"));

    // Pause for 20 days: mail flows on both edges in the same (throttled) minute.
    let index = dev.admin(&[
        "onprem",
        "pause",
        "--tenant",
        "example.test",
        "--days",
        "20",
        "--reason",
        "upgrade window",
    ])["index"]
        .as_u64()
        .expect("index");
    for e in dev.endpoints["edges"].as_array().unwrap() {
        crate::cluster::wait_edge_version(
            e["status"].as_str().unwrap(),
            index,
            Duration::from_secs(10),
        );
    }
    for edge in 0..2 {
        let r = send(&dev, edge, SERVER, OLD);
        assert!(r.starts_with("250"), "paused, edge {}: {r}", edge + 1);
    }
    let row = report(&dev, SERVER);
    assert_eq!(
        (row["status"].as_str(), row["stage"].as_u64()),
        (Some("paused"), Some(3))
    );
    assert!(row["paused-until"].is_string(), "{row}");
    let pauses = dev.admin(&["onprem", "pauses", "--tenant", "example.test"]);
    assert_eq!(pauses["days-used"], 20, "{pauses}");
    assert_eq!(pauses["days-left"], 70);
    assert!(pauses["paused-until"].is_string());

    // A pause beyond the budget, or a second one while one is in force, is refused.
    let pause = |days: &str| {
        crate::harness::run(
            crate::harness::moat()
                .args(["admin", "--data"])
                .arg(&dev.data)
                .args([
                    "onprem",
                    "pause",
                    "--tenant",
                    "example.test",
                    "--days",
                    days,
                ]),
        )
    };
    let (ok, _, err) = pause("71");
    assert!(
        !ok && err.contains("yearly budget") && err.contains("70 left"),
        "{err}"
    );
    let (ok, _, err) = pause("10");
    assert!(!ok && err.contains("already paused"), "{err}");
    set_clock(&dev, h + 21 * DAY_MS);

    // 21 days later the pause is over and the server is where it was: stage 3 (45 + 1 days
    // accrued), not stage 5 (66 days since detection).
    let row = wait_report(&dev, SERVER, |r| r["status"] == "throttled");
    assert_eq!(row["stage"], 3, "{row}");
    let h2 = next_hour(h + 21 * DAY_MS + MINUTE_MS);
    let plan = minutes(SERVER, h2 / HOUR_MS, 3, 10, 0);
    let throttled = plan.iter().position(|m| *m == Minute::Throttled).unwrap() as i64;
    set_clock(&dev, h2 + throttled * MINUTE_MS + 10_000);
    for edge in 0..2 {
        let r = send(&dev, edge, SERVER, OLD);
        assert!(
            r.starts_with(&expected(Minute::Throttled, (10, 0))),
            "after the pause, edge {}: {r}",
            edge + 1
        );
    }

    // A compliant server becomes unpatched when the baseline is raised, without restarts.
    let other = "exch2.corp.example.test";
    assert!(send(&dev, 1, other, PATCHED).starts_with("250"));
    let row = wait_report(&dev, other, |r| r["class"] == "compliant");
    assert_eq!(row["status"], "compliant");
    dev.admin_applied(&[
        "onprem",
        "baseline",
        "set",
        "15.1.2507.66",
        "15.2.1544.40",
        "15.2.1748.43",
        "15.2.2562.35",
    ]);
    let baseline = dev.admin(&["onprem", "baseline", "show"]);
    assert_eq!(baseline.as_array().unwrap().len(), 4, "{baseline}");
    let row = report(&dev, other);
    assert_eq!(row["class"], "unpatched", "{row}");
    assert_eq!(row["status"], "report-only");
    assert_eq!(row["recommended"], serde_json::json!(["15.1.2507.66"]));
    assert!(dev
        .admin(&["alerts", "list", "--tenant", "example.test"])
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["title"] == "Out-of-date Exchange server detected"
            && a["detail"].as_str().is_some_and(|d| d.contains(other))));

    // Partner connectors' mail is judged only once the scope is widened: of two messages from
    // exch3, only the one after the change is counted.
    dev.admin_applied(&[
        "connector",
        "create",
        "--tenant",
        "example.test",
        "partner",
        "--type",
        "partner",
        "--sender-ip",
        "127.0.0.3",
    ]);
    let third = "exch3.partner.example.test";
    assert!(send_from(&dev, 0, "127.0.0.3", third, OLD).starts_with("250"));
    dev.admin_applied(&["onprem", "policy", "set", "--scope", "all-connectors"]);
    assert_eq!(
        dev.admin(&["onprem", "policy", "show"])["scope"],
        "all-connectors"
    );
    assert!(send_from(&dev, 1, "127.0.0.3", third, OLD).starts_with("250"));
    let row = wait_report(&dev, third, |r| !r.is_null());
    assert_eq!(row["connector"], "example.test/partner");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        report(&dev, third)["messages"],
        1,
        "only the second message counts"
    );

    // Issue 18: `policy show` says which cells of the stage table a source confirms. The
    // default is the sourced table (stages 6 and 7 block only); the old 30 throttled minutes
    // of stages 6 and 7, set by the operator, are marked as the operator's choice.
    let show = dev.admin(&["onprem", "policy", "show"]);
    assert_eq!(show["table"], "reference", "{show}");
    let audit = dev.admin(&["audit", "list"]).to_string();
    assert!(
        audit.contains("the built-in stage table is now the best-sourced one"),
        "the adoption is audited: {audit}"
    );
    let stage6 = &show["stages"][5];
    assert_eq!(
        (&stage6["throttle-minutes"], &stage6["block-minutes"]),
        (&serde_json::json!(0), &serde_json::json!(10)),
        "{show}"
    );
    for st in show["stages"].as_array().expect("stages") {
        for cell in ["from-day", "throttle-minutes", "block-minutes"] {
            assert_eq!(st["provenance"][cell], "confirmed", "{st}");
        }
    }
    assert!(show["source"]["url"]
        .as_str()
        .is_some_and(|u| u.starts_with("https://")));
    let old = "0:0:0,30:5:0,40:10:0,50:20:0,60:30:5,70:30:10,80:30:20,90:0:60";
    dev.admin_applied(&["onprem", "policy", "set", "--stages", old]);
    let show = dev.admin(&["onprem", "policy", "show"]);
    assert_eq!(show["table"], "custom", "{show}");
    for (i, st) in show["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .enumerate()
    {
        let want = if i == 5 || i == 6 {
            "operator's choice"
        } else {
            "confirmed"
        };
        assert_eq!(
            st["provenance"]["throttle-minutes"],
            want,
            "stage {}: {st}",
            i + 1
        );
        assert_eq!(st["provenance"]["block-minutes"], "confirmed", "{st}");
    }
}

/// `moat admin onprem servers`' row of `server`.
fn server_row(dev: &Dev, server: &str) -> Value {
    let rows = dev.admin(&["onprem", "servers", "--tenant", "example.test"]);
    rows.as_array()
        .and_then(|r| r.iter().find(|x| x["server"] == server))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Issue 18 part 2: each server's evidence (the Received line its build came from, first and
/// last seen, the connector) in `moat admin onprem servers`; an exempt server is reported but
/// its mail gets through in a blocked hour while another server with the same build is refused
/// `550 5.7.230`; the exemption is audited with its actor, and ending it blocks the server
/// again on both edges.
#[test]
fn evidence_and_an_exempt_server() {
    const OTHER: &str = "exch2.corp.example.test";
    let (_dir, dev) = start("onprem-exempt");
    let t0 = cluster_now(&dev);
    for server in [SERVER, OTHER] {
        let r = send(&dev, 0, server, OLD);
        assert!(r.starts_with("250"), "{r}");
        wait_report(&dev, server, |r| r["stage"] == 1);
    }
    // The evidence: the line as received, unfolded, and where and when it was seen.
    let row = server_row(&dev, SERVER);
    assert_eq!(
        row["received"].as_str().unwrap_or_default(),
        format!("Received: from {SERVER} (10.0.0.5) by {SERVER} (10.0.0.5) with Microsoft SMTP Server (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id {OLD}; Tue, 24 Nov 2026 10:00:00 +0000"),
        "{row}"
    );
    assert_eq!(row["connector"], "example.test/onprem", "{row}");
    assert!(
        row["first-seen"].is_string() && row["last-seen"].is_string(),
        "{row}"
    );
    assert_eq!(row["exempt"], false, "{row}");

    // Exempt one of the two; a reason is required.
    let (ok, _, err) = crate::harness::run(
        crate::harness::moat()
            .args(["admin", "--data"])
            .arg(&dev.data)
            .args(["onprem", "exempt", "--tenant", "example.test", SERVER]),
    );
    assert!(!ok, "an exemption without a reason was accepted: {err}");
    // Not enforced yet (stage 1): nothing for the edges to apply.
    dev.admin(&[
        "onprem",
        "exempt",
        "--tenant",
        "example.test",
        SERVER,
        "--reason",
        "pickup folder mail carries an old build",
    ]);
    let row = server_row(&dev, SERVER);
    assert_eq!(row["exempt"], true, "{row}");
    assert_eq!(
        row["exempt-reason"],
        "pickup folder mail carries an old build"
    );
    let audit = dev
        .admin(&["audit", "list", "--tenant", "example.test"])
        .to_string();
    assert!(
        audit.contains("exempt from throttling and blocking"),
        "{audit}"
    );

    // Day 91: every minute blocked, for the unexempted server only.
    set_clock(&dev, next_hour(t0 + 91 * DAY_MS) + 10_000);
    wait_report(&dev, OTHER, |r| r["stage"] == 8);
    let row = wait_report(&dev, SERVER, |r| r["stage"] == 8);
    assert_eq!(row["status"], "exempt", "{row}");
    let t = Instant::now();
    while enforced_on_edges(&dev) != [1, 1] {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{:?}",
            enforced_on_edges(&dev)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for edge in 0..2 {
        let r = send(&dev, edge, SERVER, OLD);
        assert!(
            r.starts_with("250"),
            "edge {}: exempt server refused: {r}",
            edge + 1
        );
        let r = send(&dev, edge, OTHER, OLD);
        assert!(r.starts_with("550 5.7.230"), "edge {}: {r}", edge + 1);
    }

    // Unexempted: blocked again on both edges.
    dev.admin_applied(&["onprem", "unexempt", "--tenant", "example.test", SERVER]);
    let t = Instant::now();
    while enforced_on_edges(&dev) != [2, 2] {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{:?}",
            enforced_on_edges(&dev)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for edge in 0..2 {
        let r = send(&dev, edge, SERVER, OLD);
        assert!(r.starts_with("550 5.7.230"), "edge {}: {r}", edge + 1);
    }
}
