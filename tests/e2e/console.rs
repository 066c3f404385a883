//! The admin console (issue 19) over real HTTPS: `moat dev` lists its URL in `endpoints.json`;
//! curl, verifying the dev CA, signs in with the operator token, reads pages, makes a change
//! through a form, and is refused a change without the CSRF token or from another origin.
//! `/connectors` pages through the admin API: following "Next page" shows every connector
//! once.

use std::path::PathBuf;
use std::process::Command;

use crate::harness::{moat, run, Dev, TempDir, ANY_PORTS};

/// One HTTPS exchange's status, headers (lower-cased names) and body.
struct Reply {
    status: u16,
    headers: String,
    body: String,
}

/// A browser-like client: curl with the console's CA and a cookie jar.
struct Browser {
    url: String,
    ca: PathBuf,
    jar: PathBuf,
    dir: PathBuf,
}

impl Browser {
    fn request(&self, method: &str, path: &str, form: &[(&str, &str)], extra: &[&str]) -> Reply {
        let head = self.dir.join("headers");
        let body = self.dir.join("body");
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-X", method, "--cacert"])
            .arg(&self.ca)
            .arg("-b")
            .arg(&self.jar)
            .arg("-c")
            .arg(&self.jar)
            .arg("-D")
            .arg(&head)
            .arg("-o")
            .arg(&body)
            .args(["-w", "%{http_code}", "--max-time", "30"]);
        for (k, v) in form {
            cmd.arg("--data-urlencode").arg(format!("{k}={v}"));
        }
        cmd.args(extra).arg(format!("{}{path}", self.url));
        let out = cmd.output().expect("curl");
        assert!(
            out.status.success(),
            "curl {method} {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Reply {
            status: String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("status"),
            headers: std::fs::read_to_string(&head)
                .unwrap_or_default()
                .to_lowercase(),
            body: std::fs::read_to_string(&body).unwrap_or_default(),
        }
    }

    fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[], &[])
    }

    fn post(&self, path: &str, form: &[(&str, &str)], extra: &[&str]) -> Reply {
        self.request("POST", path, form, extra)
    }
}

/// The value of the first hidden `csrf` field of a page.
fn csrf(page: &str) -> String {
    let at = page
        .find(r#"name="csrf" value=""#)
        .unwrap_or_else(|| panic!("no csrf field in {page}"));
    let rest = &page[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').expect("end of value")].to_owned()
}

/// The target of a page's "Next page" link, if it has one.
fn next_link(page: &str) -> Option<String> {
    let end = page.find(r#"">Next page</a>"#)?;
    let start = page[..end].rfind(r#"href=""#)? + r#"href=""#.len();
    Some(page[start..end].replace("&amp;", "&"))
}

/// The connector names of a `/connectors` page that start with `prefix` (first cells).
fn names(page: &str, prefix: &str) -> Vec<String> {
    let open = format!("<td>{prefix}");
    page.match_indices(&open)
        .filter_map(|(at, _)| {
            let rest = &page[at + "<td>".len()..];
            rest.find("</td>").map(|e| rest[..e].to_owned())
        })
        .collect()
}

fn file(dev: &Dev, pointer: &str) -> String {
    dev.endpoints
        .pointer(pointer)
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("{pointer} in {}", dev.endpoints))
        .to_owned()
}

#[test]
fn signs_in_reads_pages_changes_with_csrf_and_refuses_without() {
    let dir = TempDir::new("console");
    let dev = Dev::start_in(&dir.0, None, ANY_PORTS);
    // An on-premises connector: its tenant gets a pause form.
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
    let url = file(&dev, "/console/url");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let b = Browser {
        url: url.clone(),
        ca: PathBuf::from(file(&dev, "/console/ca")),
        jar: dir.0.join("cookies"),
        dir: dir.0.clone(),
    };
    let token = file(&dev, "/admin/token");
    let origin = format!("Origin: {url}");

    // Signed out: every page sends the browser to the sign-in form.
    let r = b.get("/restricted");
    assert_eq!(r.status, 303, "{}", r.headers);
    assert!(r.headers.contains("location: /signin"), "{}", r.headers);
    let r = b.get("/signin");
    assert_eq!(r.status, 200);
    assert!(r.body.contains(r#"name="token""#));
    for h in [
        "content-security-policy: default-src 'self'; style-src 'self' 'unsafe-inline'",
        "x-frame-options: deny",
        "cache-control: no-store",
    ] {
        assert!(r.headers.contains(h), "{h} in {}", r.headers);
    }

    // A wrong token is refused, the operator token signs in with a strict cookie.
    let r = b.post("/signin", &[("token", "not-a-token")], &["-H", &origin]);
    assert_eq!(r.status, 401);
    assert!(r.body.contains("Unknown or revoked token"));
    let r = b.post("/signin", &[("token", &token)], &["-H", &origin]);
    assert_eq!(r.status, 303, "{}", r.body);
    let cookie = r
        .headers
        .lines()
        .find(|l| l.starts_with("set-cookie: moat_session="))
        .unwrap_or_else(|| panic!("no session cookie: {}", r.headers));
    for part in ["httponly", "secure", "samesite=strict", "path=/"] {
        assert!(cookie.contains(part), "{cookie}");
    }

    // Pages.
    let r = b.get("/");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("Overview") && r.body.contains("operator"));
    assert!(r.body.contains("Members") && r.body.contains("Edges"));
    let r = b.get("/restricted");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("Restricted entities"));
    assert!(r.body.contains("Nothing is restricted"), "empty state");
    for page in [
        "/onprem",
        "/connectors",
        "/alerts",
        "/audit",
        "/reports",
        "/reports/tls-report",
    ] {
        let r = b.get(page);
        assert_eq!(r.status, 200, "{page}: {}", r.body);
        assert!(!r.body.contains("\"tenant\":"), "no raw JSON on {page}");
    }
    // 120 connectors: three admin pages of 50, linked by "Next page", each connector once.
    let mut seed =
        String::from("[[tenant]]\nid = \"paged.test\"\naccepted-domains = [\"paged.test\"]\n");
    for i in 0..120 {
        seed.push_str(&format!(
            "[[tenant.connector]]\nname = \"pg-c{i:03}\"\ntype = \"partner\"\n\
             sender-ip-addresses = [\"10.9.0.{i}/32\"]\n"
        ));
    }
    let seed_path = dir.0.join("paged.toml");
    std::fs::write(&seed_path, seed).expect("write seed");
    let (ok, out, err) = run(moat().args(["admin", "--data"]).arg(&dev.data).args([
        "apply",
        "-f",
        seed_path.to_str().expect("path"),
    ]));
    assert!(ok, "apply:\n{out}\n{err}");
    let mut seen = Vec::new();
    let mut path = "/connectors?sort=Connector".to_owned();
    let mut pages = 0;
    loop {
        let r = b.get(&path);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        pages += 1;
        assert!(pages <= 4, "more pages than 121 connectors need");
        if pages > 1 {
            assert!(r.body.contains(">First page</a>"), "{}", r.body);
        }
        seen.extend(names(&r.body, "pg-c"));
        match next_link(&r.body) {
            Some(next) => {
                assert!(next.contains("sort=Connector"), "{next}");
                path = format!("/connectors{next}");
            }
            None => break,
        }
    }
    assert_eq!(pages, 3, "121 connectors, 50 a page");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        seen.len(),
        "a connector on two pages: {seen:?}"
    );
    let want: Vec<String> = (0..120).map(|i| format!("pg-c{i:03}")).collect();
    assert_eq!(sorted, want);

    let r = b.get("/reports/tls-report?days=3&format=csv");
    assert_eq!(r.status, 200);
    assert!(
        r.headers.contains("content-disposition: attachment"),
        "{}",
        r.headers
    );
    assert!(r.body.starts_with("Day,"), "{}", r.body);
    assert_eq!(b.get("/restricted/connector/example.test/nope").status, 404);
    let onprem = b.get("/onprem").body;
    assert!(
        onprem.contains(r#"action="/onprem/example.test/pause""#),
        "{onprem}"
    );
    let token_value = csrf(&onprem);
    // A tenant with neither a server nor an on-premises connector has no panel on the
    // overview; the tenant filter shows its own, and only its own.
    dev.admin(&["tenant", "create", "quiet.test", "--domain", "quiet.test"]);
    let quiet = r#"action="/onprem/quiet.test/pause""#;
    assert!(!b.get("/onprem").body.contains(quiet));
    let one = b.get("/onprem?tenant=quiet.test").body;
    assert!(
        one.contains(quiet) && !one.contains(r#"action="/onprem/example.test/pause""#),
        "{one}"
    );

    // A change without the CSRF token, or from another origin, is refused and changes nothing.
    let pause = "/onprem/example.test/pause";
    let r = b.post(pause, &[("reason", "upgrade window")], &["-H", &origin]);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("CSRF"), "{}", r.body);
    let r = b.post(
        pause,
        &[("reason", "upgrade window"), ("csrf", &token_value)],
        &["-H", "Origin: https://evil.example"],
    );
    assert_eq!(r.status, 403);
    assert!(r.body.contains("another origin"), "{}", r.body);
    assert!(b.get("/onprem").body.contains("0 days used"));

    // With both, the change is made and audited under the token's name.
    let r = b.post(
        pause,
        &[
            ("reason", "upgrade window"),
            ("days", "5"),
            ("csrf", &token_value),
        ],
        &["-H", &origin],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let r = b.get("/onprem");
    assert!(r.body.contains("5 days used"), "{}", r.body);
    assert!(r.body.contains("85 days left"));
    let r = b.get("/audit");
    assert!(r.body.to_lowercase().contains("paus"), "{}", r.body);

    // Signing out ends the session.
    let r = b.post("/signout", &[("csrf", &token_value)], &["-H", &origin]);
    assert_eq!(r.status, 303);
    assert_eq!(b.get("/").status, 303);

    // A reader sees the pages but no form, and its POST is refused.
    let secret = |v: serde_json::Value| v["secret"].as_str().expect("secret").to_owned();
    let reader = secret(dev.admin(&["token", "create", "--role", "reader", "--name", "ro"]));
    let r = b.post("/signin", &[("token", &reader)], &["-H", &origin]);
    assert_eq!(r.status, 303);
    let page = b.get("/onprem").body;
    assert!(
        page.contains("reader") && !page.contains("/pause\""),
        "{page}"
    );
    let r = b.post(
        pause,
        &[("reason", "x"), ("csrf", &csrf(&page))],
        &["-H", &origin],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    b.post("/signout", &[("csrf", &csrf(&page))], &["-H", &origin]);

    // A tenant admin of another tenant: example.test does not exist for it.
    dev.admin(&["tenant", "create", "other.test"]);
    let other = secret(dev.admin(&[
        "token",
        "create",
        "--role",
        "tenant-admin",
        "--tenant",
        "other.test",
        "--name",
        "other",
    ]));
    let r = b.post("/signin", &[("token", &other)], &["-H", &origin]);
    assert_eq!(r.status, 303);
    let page = b.get("/onprem").body;
    assert!(!page.contains("example.test"), "{page}");
    let r = b.post(
        pause,
        &[("reason", "x"), ("csrf", &csrf(&page))],
        &["-H", &origin],
    );
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(b.get("/reports/tls-report?tenant=example.test").status, 404);
    drop(dev);
}
