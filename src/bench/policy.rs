//! `moat bench policy`: issue 17's population on a running `moat dev --nodes 3 --edges N`.
//!
//! It writes a seed of `--tenants` tenants (each with `--domains` accepted domains,
//! `--connectors` inbound connectors in the mix of the verdict benchmark, and `--users` SMTP
//! AUTH users), applies it with `moat admin apply` while watching the raft leader, then
//! measures what operators care about at that size:
//!
//! - the load: wall time, leader changes (the raft term before and after, and the leaders
//!   seen by a poller), the time until every edge enforces the loaded version;
//! - `--changes` single-connector changes (a connector disabled, the way a block reaches the
//!   edges as one object): acknowledgement to every edge enforcing it, p50/p99/max;
//! - per change and per edge: bytes received and CPU spent applying (from the edges'
//!   `moat_edge_policy_*` metrics);
//! - an edge's resync from scratch: a `Policy.Sync` from version 0, every part applied by the
//!   edge's own follower in this process, timed;
//! - `--explains` explain reads (the policy subset `moat admin explain` runs the verdicts on):
//!   round trip and reply size, p50/p99/max (a read runs on the node thread, so this is also
//!   how long it holds that thread);
//! - `--deletes` tenant deletions (with their connectors and users): request to every edge
//!   enforcing it;
//! - resident memory of each edge and control node (from /proc).
//!
//! The report is one JSON object on standard output; progress goes to standard error.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use moat_proto::mtls::InternalTls;
use moat_proto::v1;
use serde_json::{json, Value};

use super::control::futures_join_all;
use super::smtp::{micros, percentiles};

/// A parseable argon2id PHC string: the population's users never log in.
const HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// The population's shape.
#[derive(clap::Args, Debug, Clone)]
pub struct PolicyArgs {
    /// The `moat dev` data directory (its `endpoints.json`).
    #[arg(long, default_value = "./moat-data")]
    data: std::path::PathBuf,
    /// Tenants to load (issue 17's population: 100,000).
    #[arg(long, default_value_t = 100_000)]
    tenants: usize,
    /// Accepted domains per tenant.
    #[arg(long, default_value_t = 10)]
    domains: usize,
    /// Inbound connectors per tenant.
    #[arg(long, default_value_t = 10)]
    connectors: usize,
    /// SMTP AUTH users per tenant.
    #[arg(long, default_value_t = 1)]
    users: usize,
    /// Single-connector changes to time after the load.
    #[arg(long, default_value_t = 30)]
    changes: usize,
    /// `moat admin explain` reads to time after the changes, each for a Partner connector's
    /// client sending to its tenant (the policy subset the CLI gets, round trip).
    #[arg(long, default_value_t = 30)]
    explains: usize,
    /// Tenants to delete at the end (the last ones of the population), each timed from the
    /// request to every edge enforcing it.
    #[arg(long, default_value_t = 10)]
    deletes: usize,
    /// Skip the load (the population is there from an earlier run).
    #[arg(long)]
    no_load: bool,
}

/// One process of the cluster.
struct Proc {
    name: String,
    pid: u32,
    status: String,
}

fn procs(data: &std::path::Path) -> anyhow::Result<(Vec<Proc>, Vec<Proc>, InternalTls)> {
    let path = data.join("endpoints.json");
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    let list = |k: &str, id: &str| -> Vec<Proc> {
        v[k].as_array()
            .into_iter()
            .flatten()
            .map(|e| Proc {
                name: e[id].to_string().trim_matches('"').to_owned(),
                pid: e["pid"].as_u64().unwrap_or(0) as u32,
                status: e["status"].as_str().unwrap_or_default().to_owned(),
            })
            .collect()
    };
    let t = &v["internal_tls"];
    let file = |k: &str| std::path::PathBuf::from(t[k].as_str().unwrap_or_default());
    let tls = InternalTls::load(&file("ca"), &file("edge_cert"), &file("edge_key"))?;
    Ok((list("control", "id"), list("edges", "id"), tls))
}

/// `GET path` on a status port; the body, empty when nothing answers.
fn get(addr: &str, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: moat\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return String::new();
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()
}

/// A metric of a `/metrics` text, summed over the label sets that contain `labels`.
fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The address of connector `n` of the population (connector `k` of tenant `t` is
/// `t * connectors + k`).
fn population_ip(n: usize) -> String {
    format!(
        "{}.{}.{}.{}",
        10 + (n >> 24) % 100,
        (n >> 16) & 255,
        (n >> 8) & 255,
        n & 255
    )
}

/// Waits until every edge enforces `version`; the time since `since` for the slowest, `None`
/// after a minute.
async fn all_edges_at(edges: &[Proc], version: u64, since: Instant) -> Option<Duration> {
    let waits = edges.iter().map(|e| {
        let status = e.status.clone();
        async move {
            while crate::dev::edge_version(&status).await < version {
                if since.elapsed() > Duration::from_secs(60) {
                    return None;
                }
            }
            Some(since.elapsed())
        }
    });
    futures_join_all(waits).await.into_iter().max().flatten()
}

/// The seed: tenant `t`'s domains are `dK.bench-t.example`; its connectors follow the verdict
/// benchmark's mix (mostly Partner by a /32, some by certificate name, some OnPremises ranges).
fn seed(a: &PolicyArgs) -> String {
    let mut s = String::with_capacity(a.tenants * (200 + a.domains * 30 + a.connectors * 160));
    for t in 0..a.tenants {
        let _ = write!(s, "[[tenant]]\nid = \"bench-{t}\"\naccepted-domains = [");
        for d in 0..a.domains {
            let _ = write!(s, "\"d{d}.bench-{t}.example\",");
        }
        s.push_str("]\n");
        for k in 0..a.connectors {
            let ip = population_ip(t * a.connectors + k);
            let _ = match k % 10 {
                0 | 1 => write!(
                    s,
                    "[[tenant.connector]]\nname = \"c{k}\"\ntype = \"on-premises\"\nsender-ip-addresses = [\"{ip}/32\"]\n"
                ),
                2 => write!(
                    s,
                    "[[tenant.connector]]\nname = \"c{k}\"\ntype = \"partner\"\ntls-sender-certificate-name = \"mail{k}.bench-{t}.example\"\nsender-domains = [\"*\"]\n"
                ),
                _ => write!(
                    s,
                    "[[tenant.connector]]\nname = \"c{k}\"\ntype = \"partner\"\nsender-ip-addresses = [\"{ip}/32\"]\nsender-domains = [\"partner{k}.example\"]\n"
                ),
            };
        }
        for u in 0..a.users {
            let _ = write!(
                s,
                "[[tenant.user]]\naddress = \"u{u}@d0.bench-{t}.example\"\npassword-hash = \"{HASH}\"\n"
            );
        }
    }
    s
}

/// The cluster's status as `moat admin` reads it (any node, stale allowed).
fn cluster_status(data: &std::path::Path) -> Option<Value> {
    let exe = std::env::current_exe().ok()?;
    let out = std::process::Command::new(exe)
        .args(["admin", "--data"])
        .arg(data)
        .args(["--stale-ok", "cluster", "status", "-o", "json"])
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// Resyncs like an edge from scratch: `Policy.Sync` from version 0 on `control`, every part
/// applied by the edge's follower; returns (seconds, parts, bytes, version).
async fn resync(control: &str, tls: &InternalTls) -> anyhow::Result<(f64, usize, usize, u64)> {
    use prost::Message as _;
    let t0 = Instant::now();
    let channel = moat_proto::mtls::endpoint(control, Some(tls))?
        .connect()
        .await?;
    let mut client = v1::policy_client::PolicyClient::new(channel);
    let mut follower = moat_edge::sync::Follower::new();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(follower.hello("bench-resync", 0)).await?;
    let mut stream = client
        .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut current = Arc::new(moat_shared::PolicySnapshot::default());
    let (mut parts, mut bytes) = (0, 0);
    while let Some(part) = stream.message().await? {
        parts += 1;
        bytes += part.encoded_len();
        if let Some(done) = follower.receive(&current, &part)? {
            current = Arc::new(done.snapshot);
            break;
        }
    }
    drop(tx);
    Ok((t0.elapsed().as_secs_f64(), parts, bytes, current.version()))
}

/// Runs the benchmark; the report as JSON.
pub(super) async fn policy(a: PolicyArgs) -> anyhow::Result<Value> {
    let (controls, edges, edge_tls) = procs(&a.data)?;
    let admin = crate::client::dev_target(&a.data).map_err(anyhow::Error::msg)?;
    let before = cluster_status(&a.data).context("cluster status")?;
    let mut load = json!(null);
    if !a.no_load {
        eprintln!("writing the seed ({} tenants)…", a.tenants);
        let text = seed(&a);
        let file = a.data.join("bench-population.toml");
        std::fs::write(&file, &text)?;
        eprintln!("seed: {} bytes; applying…", text.len());
        drop(text);
        // Watch the leader while the load runs.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let poller = {
            let stop = Arc::clone(&stop);
            let data = a.data.clone();
            std::thread::spawn(move || {
                let mut leaders: Vec<u64> = Vec::new();
                let mut leaderless_ms = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let t = Instant::now();
                    let leader = cluster_status(&data)
                        .and_then(|s| s["leader-id"].as_u64())
                        .unwrap_or(0);
                    if leader == 0 {
                        leaderless_ms += 500;
                    } else if leaders.last() != Some(&leader) {
                        leaders.push(leader);
                    }
                    std::thread::sleep(Duration::from_millis(500).saturating_sub(t.elapsed()));
                }
                (leaders, leaderless_ms)
            })
        };
        let t0 = Instant::now();
        let out = std::process::Command::new(std::env::current_exe()?)
            .args(["admin", "--data"])
            .arg(&a.data)
            .args(["apply", "-f"])
            .arg(&file)
            .output()?;
        let applied_s = t0.elapsed().as_secs_f64();
        let ok = out.status.success();
        let said = String::from_utf8_lossy(if ok { &out.stdout } else { &out.stderr })
            .lines()
            .last()
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect::<String>();
        eprintln!("apply: {ok} in {applied_s:.1} s: {said}");
        // Every edge enforcing the loaded version.
        let version = cluster_status(&a.data)
            .and_then(|s| s["policy-version"].as_u64())
            .unwrap_or(0);
        let waits = edges.iter().map(|e| {
            let status = e.status.clone();
            async move {
                let t = Instant::now();
                while crate::dev::edge_version(&status).await < version {
                    if t.elapsed() > Duration::from_secs(600) {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Some(t.elapsed().as_secs_f64())
            }
        });
        let converged = futures_join_all(waits).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (leaders, leaderless_ms) = poller.join().unwrap_or_default();
        let after = cluster_status(&a.data).unwrap_or_default();
        load = json!({
            "seed_bytes": std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0),
            "apply_ok": ok,
            "apply_seconds": applied_s,
            "apply_said": said,
            "term_before": before["term"],
            "term_after": after["term"],
            "leaders_seen": leaders,
            "leaderless_ms_seen": leaderless_ms,
            "edges_converged_after_apply_seconds": converged,
        });
    }
    // Single-connector changes.
    let metrics_before: Vec<String> = edges.iter().map(|e| get(&e.status, "/metrics")).collect();
    let mut samples = Vec::with_capacity(a.changes);
    for i in 0..a.changes {
        let t = i % a.tenants.max(1);
        let op = v1::write_request::Op::PutConnector(v1::Connector {
            tenant: format!("bench-{t}"),
            name: "c5".into(),
            kind: v1::ConnectorKind::Partner as i32,
            enabled: i % 2 == 1,
            sender_ip_addresses: vec![format!("198.51.100.{}/32", i % 250)],
            sender_domains: vec!["partner5.example".into()],
            ..Default::default()
        });
        let index = crate::client::write_op_index(&admin, op)
            .await
            .map_err(anyhow::Error::msg)?;
        if let Some(d) = all_edges_at(&edges, index, Instant::now()).await {
            samples.push(micros(d));
        }
    }
    let metrics_after: Vec<String> = edges.iter().map(|e| get(&e.status, "/metrics")).collect();
    let per_edge: Vec<Value> = edges
        .iter()
        .zip(metrics_before.iter().zip(&metrics_after))
        .map(|(e, (m0, m1))| {
            let d = |name: &str, labels: &str| metric(m1, name, labels) - metric(m0, name, labels);
            let parts = d("moat_edge_policy_parts_total", "kind=\"change\"");
            let applies = d("moat_edge_policy_apply_seconds_count", "kind=\"change\"");
            json!({
                "edge": e.name,
                "change_parts": parts,
                "full_parts": d("moat_edge_policy_parts_total", "kind=\"full\""),
                "bytes_per_change": d("moat_edge_policy_bytes_total", "kind=\"change\"") / (a.changes.max(1) as f64),
                "apply_us_per_part": 1e6 * d("moat_edge_policy_apply_seconds_sum", "kind=\"change\"") / applies.max(1.0),
                "rss_mb": rss_mb(e.pid),
            })
        })
        .collect();
    // Explain reads: a client of a Partner connector (by IP, the mix's third kind) sending from
    // the domain it scopes to its tenant.
    let (mut explain_us, mut explain_bytes, mut explain_connectors) = (Vec::new(), Vec::new(), 0);
    let partner = 3.min(a.connectors.saturating_sub(1));
    for i in 0..a.explains {
        use prost::Message as _;
        let t = (i * 7919) % a.tenants.max(1);
        let req = v1::ReadRequest {
            explain: Some(v1::ExplainQuery {
                client_ip: population_ip(t * a.connectors + partner),
                cert_names: Vec::new(),
                domains: vec![
                    format!("partner{partner}.example"),
                    format!("d0.bench-{t}.example"),
                ],
                auth_user: String::new(),
            }),
            ..v1::ReadRequest::of(v1::ReadKind::Explain)
        };
        let t0 = Instant::now();
        let reply = crate::client::read_op(&admin, req)
            .await
            .map_err(anyhow::Error::msg)?;
        explain_us.push(micros(t0.elapsed()));
        explain_bytes.push(reply.encoded_len());
        explain_connectors = explain_connectors.max(
            reply
                .explain_policy
                .as_ref()
                .map_or(0, |p| p.connectors.len()),
        );
    }
    // Tenant deletions, from the end of the population.
    let mut delete_us = Vec::new();
    for i in 0..a.deletes.min(a.tenants) {
        let t0 = Instant::now();
        let op = v1::write_request::Op::DeleteTenant(format!("bench-{}", a.tenants - 1 - i));
        let index = crate::client::write_op_index(&admin, op)
            .await
            .map_err(anyhow::Error::msg)?;
        if let Some(d) = all_edges_at(&edges, index, t0).await {
            delete_us.push(micros(d));
        }
    }
    let control_addr = admin.endpoints.first().cloned().unwrap_or_default();
    let control_addr = control_addr.trim_start_matches("http://").to_owned();
    eprintln!("resync from scratch against {control_addr}…");
    let resynced = match resync(&control_addr, &edge_tls).await {
        Ok((s, parts, bytes, version)) => {
            json!({"seconds": s, "parts": parts, "bytes": bytes, "version": version})
        }
        Err(e) => json!({"error": e.to_string()}),
    };
    Ok(json!({
        "population": {
            "tenants": a.tenants,
            "domains": a.tenants * a.domains,
            "connectors": a.tenants * a.connectors,
            "users": a.tenants * a.users,
        },
        "edges": edges.len(),
        "load": load,
        "change_ack_to_all_edges_us": percentiles(samples),
        "explain_round_trip_us": percentiles(explain_us),
        "explain_reply_bytes": {
            "min": explain_bytes.iter().min(),
            "max": explain_bytes.iter().max(),
        },
        "explain_most_connectors_in_a_reply": explain_connectors,
        "tenant_delete_to_all_edges_us": percentiles(delete_us),
        "per_edge": per_edge,
        "resync_from_scratch": resynced,
        "control_rss_mb": controls.iter().map(|c| json!({"node": c.name, "rss_mb": rss_mb(c.pid), "status": c.status})).collect::<Vec<_>>(),
    }))
}
