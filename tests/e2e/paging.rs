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

/// A provider's estate from a file: a seed with a tenant, an OnPremises connector and a user
/// (an argon2id hash carried over from an old system) lands in one write; the connector and
/// user are listed, the user can AUTH and send on the submission listener, mail from the
/// connector's address relays, applying the file again changes nothing, and a seed that gives
/// the user's address to another tenant is refused whole.
#[test]
fn a_seed_imports_connectors_and_users() {
    use argon2::password_hash::{PasswordHasher as _, SaltString};

    let dev = Dev::start(None);
    let password = "imported-from-the-old-system";
    let salt = SaltString::encode_b64(b"seed-e2e-salt-16").expect("salt");
    let hash = argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("hash")
        .to_string();
    let text = format!(
        r#"
[[tenant]]
id = "fabrikam.test"
display-name = "Fabrikam (imported)"
accepted-domains = ["fabrikam.test"]

[[tenant.connector]]
name = "hq"
type = "on-premises"
sender-ip-addresses = ["127.0.0.2"]

[[tenant.user]]
address = "Alice@Fabrikam.test"
password-hash = "{hash}"
send-as = ["sales@fabrikam.test"]
"#
    );
    let path = dev.data.with_extension("estate.toml");
    std::fs::write(&path, &text).expect("write seed");
    let path = path.to_str().expect("path");
    dev.admin_applied(&["apply", "-f", path]);

    let connectors = dev.admin(&["connector", "list", "--tenant", "fabrikam.test"]);
    let hq = &connectors.as_array().expect("array")[0];
    assert_eq!(hq["name"], "hq", "{connectors}");
    assert_eq!(hq["type"], "on-premises", "{connectors}");
    assert_eq!(hq["enabled"], true, "{connectors}");
    assert_eq!(hq["sender-ip-addresses"][0], "127.0.0.2/32", "{connectors}");
    let users = dev.admin(&["user", "list", "--tenant", "fabrikam.test"]);
    assert_eq!(users.as_array().map(Vec::len), Some(1), "{users}");
    assert_eq!(users[0]["address"], "alice@fabrikam.test", "{users}");
    assert_eq!(users[0]["send-as"][0], "sales@fabrikam.test", "{users}");

    // Again: harmless, nothing changes.
    let again = dev.admin(&["apply", "-f", path]);
    let summary = again["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("1 connector(s), 0 changed; 1 user(s), 0 changed"),
        "{again}"
    );

    // The imported hash authenticates, on the edge's submission listener.
    let (ok, out, err) = run(std::process::Command::new("python3")
        .arg(crate::harness::clients_dir().join("submit.py"))
        .arg("--ca")
        .arg(dev.ca())
        .args(["--server", &dev.edge_listener(0, "submission")])
        .args(["--user", "alice@fabrikam.test", "--password", password])
        .args(["--from", "sales@fabrikam.test", "--to", "bob@example.test"]));
    assert!(ok, "submit.py failed:\n{out}\n{err}");
    let session: serde_json::Value = serde_json::from_str(out.trim()).expect("json line");
    assert_eq!(session["auth"][0], 235, "{session}");
    assert_eq!(session["data"][0], 250, "{session}");

    // The connector's address relays for its tenant.
    let mx = dev.edge_listener(0, "mx");
    let reply = crate::harness::runtime().block_on(async {
        let (mut c, _) = crate::client::Client::connect_from(&mx, "127.0.0.2")
            .await
            .expect("connect");
        c.cmd("EHLO hq.fabrikam.test").await.expect("ehlo");
        let msg = crate::client::stuff(
            b"From: <app@fabrikam.test>\r\nTo: <seeded@remote.test>\r\nSubject: relay\r\n\r\nbody\r\n",
        );
        c.send_stuffed("app@fabrikam.test", "seeded@remote.test", &msg)
            .await
            .expect("send")
    });
    assert!(
        reply.starts_with("250"),
        "relay from the seeded connector: {reply}"
    );
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while dev
        .messages_with_header("To: <seeded@remote.test>")
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the relayed message was not delivered"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // Another tenant cannot take the address; nothing of that seed applies.
    let stolen = format!(
        "[[tenant]]\nid = \"tailspin.test\"\n\
         [[tenant.connector]]\nname = \"hq\"\ntype = \"partner\"\nsender-ip-addresses = [\"192.0.2.1\"]\n\
         [[tenant.user]]\naddress = \"alice@fabrikam.test\"\npassword-hash = \"{hash}\"\n"
    );
    let stolen_path = dev.data.with_extension("stolen.toml");
    std::fs::write(&stolen_path, stolen).expect("write seed");
    let (ok, out, err) = admin(&dev, &["apply", "-f", stolen_path.to_str().expect("path")]);
    assert!(!ok, "a seed taking another tenant's user applied:\n{out}");
    assert!(
        err.contains("user `alice@fabrikam.test` belongs to tenant `fabrikam.test`"),
        "{err}"
    );
    let tenants = tenant_ids(&dev.admin(&["tenant", "list"]));
    assert!(!tenants.iter().any(|t| t == "tailspin.test"), "{tenants:?}");
    let users = dev.admin(&["user", "list"]);
    let alice = users
        .as_array()
        .expect("array")
        .iter()
        .find(|u| u["address"] == "alice@fabrikam.test")
        .expect("alice");
    assert_eq!(alice["tenant"], "fabrikam.test");
}
