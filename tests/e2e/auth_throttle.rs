//! Issue 18 part 4: SMTP AUTH failures are counted across the cluster. Failures spread over
//! two edges, each edge alone below its own per-edge throttle, lock the login out on both
//! within a signal round; the right password is then refused `454 4.7.0` on both until an
//! admin unblocks the user.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{clients_dir, run, Dev, TempDir, ANY_PORTS};

/// `count` AUTH-only sessions (`submit.py --no-send`) with `password`; their AUTH replies.
fn auth(dev: &Dev, server: &str, password: &str, count: usize) -> Vec<(u64, String)> {
    let (ok, out, err) = run(Command::new("python3")
        .arg(clients_dir().join("submit.py"))
        .arg("--ca")
        .arg(dev.ca())
        .args([
            "--server",
            server,
            "--count",
            &count.to_string(),
            "--no-send",
        ])
        .args(["--user", &dev.demo_user(), "--password", password]));
    assert!(ok, "submit.py failed:\n{out}\n{err}");
    let replies: Vec<(u64, String)> = out
        .lines()
        .map(|l| {
            let s: Value = serde_json::from_str(l).expect("json line");
            let code = s["auth"][0].as_u64().unwrap_or(0);
            (code, s["auth"][1].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    assert_eq!(replies.len(), count, "{out}\n{err}");
    replies
}

#[test]
fn failures_spread_over_two_edges_lock_the_login_on_both() {
    let dir = TempDir::new("auth-throttle");
    let mut args = ANY_PORTS.to_vec();
    args.extend(["--edges", "2"]);
    let dev = Dev::start_in(&dir.0, None, &args);
    let edges = [
        dev.edge_listener(0, "submission"),
        dev.edge_listener(1, "submission"),
    ];
    let user = dev.demo_user();
    let password = dev.demo_password();
    for e in &edges {
        assert_eq!(auth(&dev, e, &password, 1)[0].0, 235, "{e}");
    }

    // 3 wrong passwords on edge 1 and 2 on edge 2: each edge below its own limit of 5, the
    // cluster at 5.
    for (edge, n) in [(0, 3), (1, 2)] {
        for (code, text) in auth(&dev, &edges[edge], "wrong", n) {
            assert_eq!(code, 535, "{text}");
            assert!(text.starts_with("5.7.8"), "{text}");
        }
    }

    // Within a signal round or two, the right password is refused on both edges.
    let t0 = Instant::now();
    for e in &edges {
        loop {
            let (code, text) = auth(&dev, e, &password, 1).remove(0);
            if code == 454 {
                // The per-edge throttle's reply (and the edge's tag).
                assert!(
                    text.starts_with(
                        "4.7.0 Too many failed authentication attempts, try again later"
                    ),
                    "{text}"
                );
                break;
            }
            assert_eq!(code, 235, "{text}");
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{e} still lets the login in"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!(
        "locked out on both edges {:?} after the 5th failure",
        t0.elapsed()
    );

    let list = dev.admin(&["restricted", "list"]);
    let lockout = format!("auth-lockout:{user}");
    let row = list
        .as_array()
        .and_then(|l| l.iter().find(|r| r["name"] == lockout.as_str()).cloned())
        .unwrap_or_else(|| panic!("no {lockout} in {list}"));
    assert_eq!(row["kind"], "user", "{row}");
    assert!(row["until"].is_string(), "a lockout ends by itself: {row}");
    assert!(
        row["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("5 failed logins within 15 minutes"),
        "{row}"
    );
    let alerts = dev.admin(&["alerts", "list", "--tenant", "example.test"]);
    assert!(
        alerts
            .to_string()
            .contains("User locked out of SMTP AUTH after failed logins"),
        "{alerts}"
    );

    // Unblocking the user lifts the lockout on both edges.
    dev.admin_applied(&[
        "restricted",
        "unblock",
        &user,
        "--tenant",
        "example.test",
        "--reason",
        "e2e: password checked with the user",
    ]);
    for e in &edges {
        let (code, text) = auth(&dev, e, &password, 1).remove(0);
        assert_eq!(code, 235, "{e}: {text}");
    }
    let list = dev.admin(&["restricted", "list"]);
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
}
