//! Incremental policy (issue 17) on real processes: edges follow changes through `Policy.Sync`,
//! resume from the version they hold when their node dies, get a full snapshot only when they
//! hold nothing or are older than a node's history, and agree with the control plane by digest,
//! on a population larger than the old 4 MB limit under a random sequence of changes.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use moat_proto::mtls::InternalTls;
use moat_proto::v1::policy_client::PolicyClient;
use moat_proto::v1::{PolicyUpdate, WatchRequest};
use serde_json::Value;

use crate::client::Client;
use crate::cluster::{http_status, policy_version, wait_edge_version, Cluster};
use crate::harness::runtime;

/// A parseable argon2id PHC string (the users of the population never log in).
const HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// A counter of a `/metrics` text, summed over the label sets that contain `labels`.
fn counter(metrics: &str, name: &str, labels: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn edge_metrics(c: &Cluster, edge: usize) -> String {
    http_status(&c.edges[edge].status, "/metrics").1
}

/// The control plane's policy version, read from the leader.
fn control_version(c: &Cluster) -> u64 {
    c.status()["policy-version"]
        .as_u64()
        .expect("policy version")
}

/// What each live node says about `edge`: (node id, agreement, applied version).
fn agreement(c: &Cluster, edge: &str) -> Vec<(u64, String, u64)> {
    let mut seen = Vec::new();
    for n in c.nodes.iter().filter(|n| !n.status.is_empty()) {
        let (code, out, _) = c.admin_on(&n.address, &["cluster", "status", "-o", "json"]);
        if code != 0 {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(&out) else {
            continue;
        };
        for e in v["edges"].as_array().into_iter().flatten() {
            if e["edge-id"] == edge {
                seen.push((
                    n.id,
                    e["agreement"].as_str().unwrap_or_default().to_owned(),
                    e["applied-version"].as_u64().unwrap_or(0),
                ));
            }
        }
    }
    seen
}

/// Waits until the node that serves `edge` at `version` says its digest matches.
fn wait_agreement(c: &Cluster, edge: &str, version: u64) -> u64 {
    let t0 = Instant::now();
    loop {
        let seen = agreement(c, edge);
        if let Some((node, _, _)) = seen.iter().find(|(_, a, v)| a == "match" && *v >= version) {
            return *node;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let log =
                std::fs::read_to_string(c.dir.0.join(format!("{edge}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "{edge} never agreed at version {version}: {seen:?}\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn edges_follow_changes_and_resume_from_their_version_when_a_node_dies() {
    let mut c = Cluster::start(3);
    let e = c.start_edge();
    c.wait_for_leader(None, Duration::from_secs(20));
    let v = control_version(&c);
    wait_edge_version(&c.edges[e].status, v.max(1), Duration::from_secs(20));
    let m0 = edge_metrics(&c, e);
    let full0 = counter(&m0, "moat_edge_policy_parts_total", "kind=\"full\"");
    let change0 = counter(&m0, "moat_edge_policy_parts_total", "kind=\"change\"");
    assert!(
        full0 >= 1.0,
        "the edge started without a full snapshot:\n{m0}"
    );
    for i in 0..5 {
        c.admin_ok(&[
            "tenant",
            "create",
            &format!("t{i}.test"),
            "--domain",
            &format!("t{i}.test"),
        ]);
    }
    let v = control_version(&c);
    wait_edge_version(&c.edges[e].status, v, Duration::from_secs(20));
    let m1 = edge_metrics(&c, e);
    assert_eq!(
        counter(&m1, "moat_edge_policy_parts_total", "kind=\"full\""),
        full0,
        "changes came as a full snapshot"
    );
    assert!(counter(&m1, "moat_edge_policy_parts_total", "kind=\"change\"") >= change0 + 5.0);
    // A change is small: five tenants took well under 10 KB each.
    let bytes = counter(&m1, "moat_edge_policy_bytes_total", "kind=\"change\"")
        - counter(&m0, "moat_edge_policy_bytes_total", "kind=\"change\"");
    assert!(bytes < 5.0 * 10_000.0, "{bytes} bytes for five changes");
    // An import with connectors sent to a follower goes to the leader, which checks that every
    // voter applies it (a follower cannot tell: it hears only from the leader).
    let (leader, _) = c.wait_for_leader(None, Duration::from_secs(20));
    let follower = c.nodes.iter().find(|n| n.id != leader).expect("a follower");
    let seed = c.dir.0.join("small.toml");
    std::fs::write(
        &seed,
        "[[tenant]]\nid = \"imp.test\"\naccepted-domains = [\"imp.test\"]\n\
         [[tenant.connector]]\nname = \"hq\"\ntype = \"on-premises\"\n\
         sender-ip-addresses = [\"192.0.2.9/32\"]\n",
    )
    .expect("seed");
    let (code, out, err) = c.admin_on(
        &follower.address.clone(),
        &["apply", "-f", seed.to_str().expect("path")],
    );
    assert_eq!(code, 0, "{out}{err}");
    let v = control_version(&c);
    wait_edge_version(&c.edges[e].status, v, Duration::from_secs(20));
    let watched = wait_agreement(&c, "edge-0", v);
    // The node the edge watches dies; the edge moves on and resumes from its version.
    c.kill_node(watched, "KILL");
    c.wait_for_leader(Some(watched), Duration::from_secs(20));
    for i in 5..8 {
        c.admin_ok(&[
            "tenant",
            "create",
            &format!("t{i}.test"),
            "--domain",
            &format!("t{i}.test"),
        ]);
    }
    let v = control_version(&c);
    wait_edge_version(&c.edges[e].status, v, Duration::from_secs(30));
    let node = wait_agreement(&c, "edge-0", v);
    assert_ne!(node, watched);
    let m2 = edge_metrics(&c, e);
    assert_eq!(
        counter(&m2, "moat_edge_policy_parts_total", "kind=\"full\""),
        full0,
        "the edge took a full snapshot after its node died"
    );
    assert_eq!(counter(&m2, "moat_edge_policy_resyncs_total", ""), 0.0);
}

/// A test-side edge: opens `Sync` on one node with `hello` and collects parts until the end
/// of the version (or `limit` parts).
fn sync_parts(c: &Cluster, node: usize, hello: WatchRequest, limit: usize) -> Vec<PolicyUpdate> {
    let pki = &c.pki;
    let tls = InternalTls::load(
        pki.file("ca.pem").as_ref(),
        pki.file("edge.pem").as_ref(),
        pki.file("edge-key.pem").as_ref(),
    )
    .expect("edge certificate");
    let addr = c.nodes[node].address.clone();
    runtime().block_on(async move {
        let channel = moat_proto::mtls::endpoint(&addr, Some(&tls))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut client = PolicyClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(hello).await.expect("hello");
        let mut stream = client
            .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("sync")
            .into_inner();
        let mut parts = Vec::new();
        while parts.len() < limit {
            let next = tokio::time::timeout(Duration::from_secs(10), stream.message()).await;
            let Ok(Ok(Some(p))) = next else { break };
            let last = p.last;
            parts.push(p);
            if last {
                break;
            }
        }
        drop(tx);
        parts
    })
}

#[test]
fn a_node_sends_changes_to_an_edge_within_its_history_and_a_full_snapshot_beyond() {
    let c = Cluster::start_with(1, &["--policy-history", "4"]);
    c.wait_for_leader(None, Duration::from_secs(20));
    let hello = |version: u64, digest: u64| WatchRequest {
        edge_id: "probe".into(),
        applied_version: version,
        digest,
        resync: false,
    };
    // Nothing held: a full snapshot.
    let full = sync_parts(&c, 0, hello(0, 0), 1000);
    assert!(full[0].reset, "{:?}", full.first());
    let last = full.last().expect("parts");
    assert!(last.last);
    let (v1, d1) = (last.version, last.digest);
    // Two changes: an edge at v1 gets changes, no reset.
    c.admin_ok(&["tenant", "create", "a.test", "--domain", "a.test"]);
    c.admin_ok(&["tenant", "create", "b.test", "--domain", "b.test"]);
    let changes = sync_parts(&c, 0, hello(v1, d1), 1);
    assert!(!changes.is_empty(), "no change sent to an edge at {v1}");
    assert!(
        !changes[0].reset,
        "a full snapshot for an edge within the history"
    );
    assert!(changes[0].version > v1);
    assert!(changes[0].tenants.iter().any(|t| t.id == "a.test"));
    // Six more: the history holds four, so an edge still at v1 gets a full snapshot.
    for i in 0..6 {
        c.admin_ok(&["tenant", "create", &format!("c{i}.test")]);
    }
    let now = control_version(&c);
    let beyond = sync_parts(&c, 0, hello(v1, d1), 1000);
    assert!(beyond[0].reset, "an edge beyond the history got changes");
    let last = beyond.last().expect("parts");
    assert_eq!(last.version, now);
    // An edge that reports a digest of its own is shown as disagreeing, in the status and in
    // the metric.
    let _ = sync_parts(&c, 0, hello(now, last.digest ^ 1), 0);
    let t0 = Instant::now();
    loop {
        let seen = agreement(&c, "probe");
        if seen.iter().any(|(_, a, v)| a == "mismatch" && *v == now) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{seen:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let table = c.admin_ok(&["cluster", "status"]);
    assert!(table.contains("differs"), "{table}");
    let metrics = http_status(&c.nodes[0].status, "/metrics").1;
    assert_eq!(
        counter(&metrics, "moat_control_edges_policy_mismatch", ""),
        1.0
    );
    // The same edge with the right digest agrees again.
    let _ = sync_parts(&c, 0, hello(now, last.digest), 0);
    wait_agreement(&c, "probe", now);
}

/// A small deterministic generator (no test dependency needed).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// The reply to `RCPT TO:<postmaster@domain>` on `mx`.
fn rcpt(mx: &str, domain: &str) -> String {
    runtime().block_on(async {
        let (mut s, greeting) = Client::connect(mx).await.expect("connect");
        assert!(greeting.starts_with("220"), "{greeting}");
        s.cmd("EHLO probe.test").await.expect("ehlo");
        s.cmd("MAIL FROM:<probe@sender.test>").await.expect("mail");
        let r = s
            .cmd(&format!("RCPT TO:<postmaster@{domain}>"))
            .await
            .expect("rcpt");
        let _ = s.cmd("QUIT").await;
        r
    })
}

#[test]
fn a_population_under_random_changes_agrees_on_every_edge() {
    // CI size: 5,000 tenants, 50,000 domains, 20,000 connectors, 5,000 users (the full
    // population is for `moat bench policy`).
    const TENANTS: usize = 5_000;
    let mut c = Cluster::start(3);
    let edges: Vec<usize> = (0..3).map(|_| c.start_edge()).collect();
    c.wait_for_leader(None, Duration::from_secs(20));
    let mut seed = String::new();
    for t in 0..TENANTS {
        let _ = writeln!(seed, "[[tenant]]\nid = \"p{t}\"\naccepted-domains = [");
        for d in 0..10 {
            let _ = writeln!(seed, "  \"d{d}.p{t}.test\",");
        }
        seed.push_str("]\n");
        for k in 0..4 {
            let _ = writeln!(
                seed,
                "[[tenant.connector]]\nname = \"c{k}\"\ntype = \"partner\"\n\
                 sender-ip-addresses = [\"10.{}.{}.{k}/32\"]\nsender-domains = [\"*\"]",
                t / 250,
                t % 250
            );
        }
        let _ = writeln!(
            seed,
            "[[tenant.user]]\naddress = \"u@d0.p{t}.test\"\npassword-hash = \"{HASH}\""
        );
    }
    let file = c.dir.0.join("population.toml");
    std::fs::write(&file, &seed).expect("seed");
    assert!(
        seed.len() > 4 * 1024 * 1024,
        "the seed is only {} bytes",
        seed.len()
    );
    c.admin_ok(&["apply", "-f", file.to_str().expect("path")]);
    // A random sequence of changes: tenants created and deleted, domains added and removed,
    // connectors created, disabled and deleted, users deleted, small imports.
    let mut rng = Rng(2026);
    let mut deleted: Vec<usize> = Vec::new();
    for step in 0..240 {
        let t = rng.below(TENANTS as u64) as usize;
        let tenant = format!("p{t}");
        let args: Vec<String> = match rng.below(7) {
            0 => vec!["tenant".into(), "delete".into(), tenant.clone()],
            1 => vec![
                "domain".into(),
                "add".into(),
                "--tenant".into(),
                tenant.clone(),
                format!("extra{step}.p{t}.test"),
            ],
            2 => vec![
                "domain".into(),
                "remove".into(),
                "--tenant".into(),
                tenant.clone(),
                format!("d{}.p{t}.test", rng.below(10)),
            ],
            3 => vec![
                "connector".into(),
                "create".into(),
                "--tenant".into(),
                tenant.clone(),
                "--type".into(),
                "partner".into(),
                "--sender-ip".into(),
                format!("172.16.{}.{}", rng.below(250), rng.below(250)),
                format!("new{step}"),
            ],
            4 => vec![
                "connector".into(),
                "delete".into(),
                "--tenant".into(),
                tenant.clone(),
                format!("c{}", rng.below(4)),
            ],
            5 => vec![
                "user".into(),
                "delete".into(),
                "--tenant".into(),
                tenant.clone(),
                format!("u@d0.p{t}.test"),
            ],
            _ => vec![
                "tenant".into(),
                "create".into(),
                format!("n{step}.test"),
                "--domain".into(),
                format!("n{step}.test"),
            ],
        };
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        // Refusals (a tenant already deleted, a domain not accepted) are part of the mix.
        let (code, _, _) = c.admin(&refs);
        if code == 0 && args[..2] == ["tenant", "delete"] {
            deleted.push(t);
        }
    }
    // Every edge reaches the control plane's version and agrees with it by digest.
    let v = control_version(&c);
    for &e in &edges {
        wait_edge_version(&c.edges[e].status, v, Duration::from_secs(120));
        wait_agreement(&c, &format!("edge-{e}"), v);
        let m = edge_metrics(&c, e);
        assert_eq!(
            counter(&m, "moat_edge_policy_resyncs_total", ""),
            0.0,
            "{m}"
        );
    }
    // A sample of verdicts on each edge matches the control plane's state.
    let domains: Vec<Value> = c
        .admin_json(&["domain", "list"])
        .as_array()
        .cloned()
        .unwrap_or_default();
    let accepted: std::collections::BTreeSet<String> = domains
        .iter()
        .filter_map(|d| d["domain"].as_str().map(str::to_owned))
        .collect();
    assert!(
        accepted.len() > 40_000,
        "{} domains accepted",
        accepted.len()
    );
    let mut sample: Vec<String> = (0..12)
        .map(|_| {
            let t = rng.below(TENANTS as u64);
            format!("d{}.p{t}.test", rng.below(10))
        })
        .collect();
    sample.extend(deleted.iter().take(4).map(|t| format!("d1.p{t}.test")));
    for &e in &edges {
        // The version may have moved since (counters the probes below cause can restrict or
        // lift); the domains, which only admins change, have not.
        assert!(policy_version(&c.edges[e].status) >= v);
        for d in &sample {
            let r = rcpt(&c.edges[e].mx, d);
            let expect = accepted.contains(d);
            assert_eq!(r.starts_with("250"), expect, "edge {e}, {d}: {r}");
        }
    }
    // The whole control plane killed and started again replays its snapshots and logs to the
    // same state, and the edges agree with it again.
    let tenants = c
        .admin_json(&["tenant", "list"])
        .as_array()
        .map_or(0, Vec::len);
    for id in 1..=3 {
        c.kill_node(id, "KILL");
    }
    for i in 0..3 {
        c.start_node(i);
    }
    c.wait_for_leader(None, Duration::from_secs(30));
    assert_eq!(
        c.admin_json(&["tenant", "list"])
            .as_array()
            .map_or(0, Vec::len),
        tenants
    );
    let domains_again = c
        .admin_json(&["domain", "list"])
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(domains_again, accepted.len());
    let v2 = control_version(&c);
    assert!(v2 >= v);
    for &e in &edges {
        wait_edge_version(&c.edges[e].status, v2, Duration::from_secs(120));
        wait_agreement(&c, &format!("edge-{e}"), v2);
    }
}
