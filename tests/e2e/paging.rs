//! Admin at size: list reads page by key while writes go on (`--limit`, `--page-token`),
//! `-o json` streams every page, and a seed over the old 4 MB transport limit applies in parts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::harness::{moat, run, Dev};

/// `moat admin --data DIR ARGS` (table output unless ARGS say otherwise): (ok, stdout, stderr).
fn admin(dev: &Dev, args: &[&str]) -> (bool, String, String) {
    run(moat().args(["admin", "--data"]).arg(&dev.data).args(args))
}

/// A seed of `n` tenants `p{i}.test`, each with `domains` accepted domains padded to `pad`
/// characters of labels.
fn seed(prefix: &str, n: usize, domains: usize, pad: usize) -> String {
    let label = "x".repeat(pad.min(63));
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!(
            "[[tenant]]\nid = \"{prefix}{i:05}.test\"\naccepted-domains = ["
        ));
        for j in 0..domains {
            let mut d = String::new();
            for _ in 0..pad / 64 {
                d.push_str(&label);
                d.push('.');
            }
            s.push_str(&format!("\"{d}d{j}.{prefix}{i:05}.test\","));
        }
        s.push_str("]\n");
    }
    s
}

fn apply(dev: &Dev, name: &str, text: &str) -> std::time::Duration {
    let path = dev.data.with_extension(name);
    std::fs::write(&path, text).expect("write seed");
    let t0 = Instant::now();
    let (ok, out, err) = admin(dev, &["apply", "-f", path.to_str().expect("path")]);
    assert!(ok, "apply failed:\n{out}\n{err}");
    t0.elapsed()
}

fn tenant_ids(json: &serde_json::Value) -> Vec<String> {
    json.as_array()
        .expect("array")
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_owned())
        .collect()
}

#[test]
fn pages_return_every_tenant_once_while_others_come_and_go() {
    let dev = Dev::start(None);
    apply(&dev, "seed.toml", &seed("keep", 300, 1, 0));

    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        let data = dev.data.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                // Before and after the cursor in key order: "a…" and "zz…".
                for name in [format!("a{n}.test"), format!("zz{n}.test")] {
                    let (ok, out, err) = run(moat()
                        .args(["admin", "--data"])
                        .arg(&data)
                        .args(["tenant", "create", &name, "--domain", &name]));
                    assert!(ok, "create {name}: {out}{err}");
                }
                if n > 0 {
                    let old = format!("a{}.test", n - 1);
                    let (ok, out, err) = run(moat()
                        .args(["admin", "--data"])
                        .arg(&data)
                        .args(["tenant", "delete", &old]));
                    assert!(ok, "delete {old}: {out}{err}");
                }
                n += 1;
            }
            n
        })
    };

    let mut seen: Vec<String> = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut args = vec!["tenant", "list", "--limit", "50", "-o", "json"];
        if let Some(t) = &token {
            args.extend(["--page-token", t.as_str()]);
        }
        let (ok, out, err) = admin(&dev, &args);
        assert!(ok, "list failed:\n{out}\n{err}");
        let page: serde_json::Value = serde_json::from_str(&out).expect("page is JSON");
        let ids = tenant_ids(&page);
        assert!(ids.len() <= 50, "a page of {}", ids.len());
        seen.extend(ids);
        pages += 1;
        token = err
            .lines()
            .find_map(|l| l.strip_prefix("more: --page-token "))
            .map(|t| t.trim().to_owned());
        if token.is_none() {
            break;
        }
        // Let the churn make some changes between pages.
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let changes = churn.join().expect("churn thread");
    assert!(changes > 0, "no tenant came or went while paging");
    assert!(pages >= 6, "{pages} pages for 300+ tenants at 50 a page");

    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "a tenant appeared twice");
    let mut ordered = seen.clone();
    ordered.sort();
    assert_eq!(ordered, seen, "pages come in key order");
    for i in 0..300 {
        let id = format!("keep{i:05}.test");
        assert!(seen.contains(&id), "{id} missing");
    }

    // Without --limit, -o json streams every page into one valid array.
    let all = tenant_ids(&dev.admin(&["tenant", "list"]));
    for i in 0..300 {
        assert!(all.contains(&format!("keep{i:05}.test")));
    }
    let mut dedup = all.clone();
    dedup.dedup();
    assert_eq!(dedup, all);
}

#[test]
fn an_import_over_the_old_transport_limit_applies_in_parts() {
    let dev = Dev::start(None);
    // Long domain names keep the tenant count (and the debug build's time) down.
    let n = 2_200;
    let text = seed("big", n, 10, 192);
    assert!(text.len() > 4 << 20, "seed is only {} bytes", text.len());
    let took = apply(&dev, "big.toml", &text);
    eprintln!(
        "seed of {} bytes ({n} tenants) applied in {took:?}",
        text.len()
    );

    let all = tenant_ids(&dev.admin(&["tenant", "list"]));
    let big = all.iter().filter(|t| t.starts_with("big")).count();
    assert_eq!(big, n, "every imported tenant is listed");
    // Domains: 10 a tenant, listed over several pages of 1000 tenants.
    let domains = dev.admin(&["domain", "list"]);
    let count = domains
        .as_array()
        .expect("array")
        .iter()
        .filter(|d| d["tenant"].as_str().is_some_and(|t| t.starts_with("big")))
        .count();
    assert_eq!(count, n * 10);
}
