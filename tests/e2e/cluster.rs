//! The control plane as real processes on loopback: `moat control` nodes, `moat edge`s that
//! watch them, and `moat admin` driving them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::harness::{free_port, moat, run, runtime, Dev, Pki, TempDir, ANY_PORTS};

const TOKEN: &str = "moat_test_operator_token";

pub(crate) struct Node {
    pub(crate) id: u64,
    pub(crate) address: String,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub(crate) status: String,
    data: PathBuf,
    child: Option<Child>,
}

pub(crate) struct EdgeProc {
    pub(crate) mx: String,
    pub(crate) status: String,
    child: Child,
}

/// Control nodes and edges as child processes; everything is killed on drop.
pub(crate) struct Cluster {
    pub(crate) dir: TempDir,
    pub(crate) pki: Pki,
    pub(crate) nodes: Vec<Node>,
    pub(crate) edges: Vec<EdgeProc>,
    /// Flags every node is started with besides the usual ones.
    extra: Vec<String>,
}

impl Cluster {
    pub(crate) fn start(nodes: u64) -> Self {
        Self::start_with(nodes, &[])
    }

    /// Starts `nodes` nodes, each with `extra` flags as well.
    pub(crate) fn start_with(nodes: u64, extra: &[&str]) -> Self {
        let dir = TempDir::new("cluster");
        std::fs::write(dir.0.join("token"), TOKEN).expect("token");
        std::fs::write(
            dir.0.join("seed.toml"),
            "[[tenant]]\nid = \"example.test\"\naccepted-domains = [\"example.test\"]\n",
        )
        .expect("seed");
        let nodes = (1..=nodes)
            .map(|id| Node {
                id,
                address: format!("127.0.0.1:{}", free_port()),
                status: format!("127.0.0.1:{}", free_port()),
                data: dir.0.join(format!("control-{id}")),
                child: None,
            })
            .collect();
        let pki = Pki::new(&dir.0.join("pki"));
        let mut c = Self {
            pki,
            dir,
            nodes,
            edges: Vec::new(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        for i in 0..c.nodes.len() {
            c.start_node(i);
        }
        c
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.0.join(format!("{name}.log")))
            .expect("log")
    }

    pub(crate) fn start_node(&mut self, i: usize) {
        let peers: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.address))
            .collect();
        let n = &self.nodes[i];
        let mut cmd = moat();
        cmd.arg("control")
            .arg("--id")
            .arg(n.id.to_string())
            .arg("--listen")
            .arg(&n.address)
            .arg("--data")
            .arg(&n.data)
            .arg("--seed")
            .arg(self.dir.0.join("seed.toml"))
            .arg("--admin-token-file")
            .arg(self.dir.0.join("token"))
            .arg("--snapshot-every")
            .arg("25")
            .arg("--status-listen")
            .arg(&n.status)
            .arg("--unready-after")
            .arg("1")
            .args(self.pki.control_args())
            .args(&self.extra);
        for p in &peers {
            cmd.arg("--peer").arg(p);
        }
        let log = self.log(&format!("control-{}", n.id));
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn control");
        self.nodes[i].child = Some(child);
    }

    /// Starts a node that joins through `cluster add-node`.
    fn start_joiner(&mut self, id: u64) -> String {
        let address = format!("127.0.0.1:{}", free_port());
        let data = self.dir.0.join(format!("control-{id}"));
        let log = self.log(&format!("control-{id}"));
        let child = moat()
            .arg("control")
            .arg("--id")
            .arg(id.to_string())
            .arg("--listen")
            .arg(&address)
            .arg("--data")
            .arg(&data)
            .arg("--join")
            .arg("--admin-token-file")
            .arg(self.dir.0.join("token"))
            .args(self.pki.control_args())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn joiner");
        self.nodes.push(Node {
            id,
            address: address.clone(),
            status: String::new(),
            data,
            child: Some(child),
        });
        address
    }

    fn control_list(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.address.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts an edge watching every node; returns its index.
    pub(crate) fn start_edge(&mut self) -> usize {
        let i = self.edges.len();
        // A port free a moment ago may be taken by a parallel test before the edge binds it:
        // an edge that exits at once is started again on other ports.
        for _ in 0..5 {
            let mx = format!("127.0.0.1:{}", free_port());
            let status = format!("127.0.0.1:{}", free_port());
            let config = self.dir.0.join(format!("edge-{i}.toml"));
            std::fs::write(
                &config,
                format!(
                    "node-id = \"edge-{i}\"\nready-stale-after = \"2s\"\n[[listener]]\nkind = \"mx\"\naddress = \"{mx}\"\n[next-hop]\nkind = \"maildir\"\npath = {:?}\n{}",
                    self.dir.0.join("mail").display().to_string(),
                    self.pki.edge_toml()
                ),
            )
            .expect("edge config");
            let all: Vec<String> = self.nodes.iter().map(|n| n.address.clone()).collect();
            let mut child = moat()
                .arg("edge")
                .arg("--config")
                .arg(&config)
                .arg("--control")
                .arg(all.join(","))
                .arg("--status")
                .arg(&status)
                .stdout(Stdio::null())
                .stderr(self.log(&format!("edge-{i}")))
                .spawn()
                .expect("spawn edge");
            let t0 = Instant::now();
            while std::net::TcpStream::connect(&status).is_err()
                && t0.elapsed() < Duration::from_secs(10)
            {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(Some(_)) = child.try_wait() {
                continue;
            }
            self.edges.push(EdgeProc { mx, status, child });
            return i;
        }
        panic!("edge {i} would not start; see its log");
    }

    /// `moat admin` with this cluster's admin certificate.
    pub(crate) fn admin_cmd(&self) -> std::process::Command {
        let mut cmd = moat();
        cmd.arg("admin");
        self.pki.admin_env(&mut cmd);
        cmd
    }

    pub(crate) fn admin(&self, args: &[&str]) -> (i32, String, String) {
        let out = self
            .admin_cmd()
            .arg("--endpoint")
            .arg(self.control_list())
            .arg("--token")
            .arg(TOKEN)
            .args(args)
            .output()
            .expect("moat admin");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `moat admin --stale-ok` against one node only.
    pub(crate) fn admin_on(&self, address: &str, args: &[&str]) -> (i32, String, String) {
        let out = self
            .admin_cmd()
            .args(["--endpoint", address, "--token", TOKEN, "--stale-ok"])
            .args(args)
            .output()
            .expect("moat admin");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub(crate) fn admin_ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.admin(args);
        assert_eq!(code, 0, "moat admin {args:?}: {out}{err}");
        out
    }

    pub(crate) fn admin_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let out = self.admin_ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    pub(crate) fn status(&self) -> serde_json::Value {
        self.admin_json(&["cluster", "status"])
    }

    pub(crate) fn wait_for_leader(&self, not: Option<u64>, within: Duration) -> (u64, Duration) {
        let t0 = Instant::now();
        while t0.elapsed() < within {
            let (code, out, _) = self.admin(&["cluster", "status", "-o", "json", "--stale-ok"]);
            if code == 0 {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&out) {
                    let leader = v["leader-id"].as_u64().unwrap_or(0);
                    if leader != 0 && Some(leader) != not {
                        return (leader, t0.elapsed());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no leader within {within:?}");
    }

    pub(crate) fn kill_node(&mut self, id: u64, signal: &str) {
        let n = self.nodes.iter_mut().find(|n| n.id == id).expect("node");
        if let Some(mut c) = n.child.take() {
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!("kill -{signal} {}", c.id()))
                .status();
            let _ = c.wait();
        }
    }

    fn messages(&self) -> usize {
        let mut n = 0;
        let mut stack = vec![self.dir.0.join("mail")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.parent().and_then(Path::file_name) == Some("new".as_ref()) {
                    n += 1;
                }
            }
        }
        n
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for e in &mut self.edges {
            let _ = e.child.kill();
            let _ = e.child.wait();
        }
    }
}

/// GET `path` on a status port: (HTTP status code, body); (0, "") when nothing answers.
pub(crate) fn http_status(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: moat\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .is_err()
    {
        return (0, String::new());
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (code, body)
}

/// `/readyz` of an edge, or `None` while it does not answer.
pub(crate) fn readyz(status: &str) -> Option<serde_json::Value> {
    serde_json::from_str(&http_status(status, "/readyz").1).ok()
}

pub(crate) fn policy_version(status: &str) -> u64 {
    readyz(status)
        .and_then(|v| v["policy"]["version"].as_u64())
        .unwrap_or(0)
}

pub(crate) fn wait_edge_version(status: &str, at_least: u64, within: Duration) -> Duration {
    let t0 = Instant::now();
    while policy_version(status) < at_least {
        assert!(
            t0.elapsed() < within,
            "edge {status} stuck below version {at_least}: {:?}",
            readyz(status)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    t0.elapsed()
}

/// Waits until the edge enforces a snapshot holding the seed's tenant. Version 1 is not
/// enough: the leader's first entry may be its ticket keys, committed before the seed.
pub(crate) fn wait_edge_seeded(status: &str, within: Duration) {
    let t0 = Instant::now();
    loop {
        let tenants = readyz(status)
            .and_then(|r| r["policy"]["tenants"].as_u64())
            .unwrap_or(0);
        if tenants >= 1 {
            return;
        }
        assert!(
            t0.elapsed() < within,
            "edge {status} has no seeded tenant: {:?}",
            readyz(status)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One message through `mx`; returns the final reply (or the refusal).
fn send_mail(mx: &str, rcpt: &str) -> String {
    runtime().block_on(async {
        let (mut c, greeting) = match Client::connect(mx).await {
            Ok(x) => x,
            Err(e) => return format!("connect: {e}"),
        };
        if !greeting.starts_with("220") {
            return greeting;
        }
        let r = c.cmd("EHLO client.test").await.expect("ehlo");
        assert!(r.starts_with("250"), "{r}");
        let msg = format!("Subject: cluster test\r\nTo: {rcpt}\r\n\r\nhello\r\n.\r\n");
        c.send_stuffed("sender@client.test", rcpt, msg.as_bytes())
            .await
            .expect("send")
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[test]
fn admin_changes_reach_every_edge() {
    let mut c = Cluster::start(3);
    let e1 = c.start_edge();
    let e2 = c.start_edge();
    c.wait_for_leader(None, Duration::from_secs(20));
    for e in [e1, e2] {
        wait_edge_seeded(&c.edges[e].status, Duration::from_secs(20));
    }
    let mut samples = Vec::new();
    for i in 0..30 {
        let reply = c.admin_json(&[
            "connector",
            "create",
            "--tenant",
            "example.test",
            &format!("partner-{i}"),
            "--type",
            "partner",
            "--sender-ip",
            &format!("192.0.2.{i}/32"),
        ]);
        let index = reply["index"].as_u64().expect("index");
        // From the acknowledged write to both edges enforcing a snapshot that contains it.
        let t0 = Instant::now();
        for e in [e1, e2] {
            wait_edge_version(&c.edges[e].status, index, Duration::from_secs(10));
        }
        samples.push(t0.elapsed());
    }
    for e in [e1, e2] {
        let r = readyz(&c.edges[e].status).expect("readyz");
        assert_eq!(r["policy"]["connectors"], 30, "{r}");
    }
    samples.sort();
    println!(
        "policy propagation, acknowledged write -> applied on 2 edges, {} writes: p50 {:?}, p99 {:?}, max {:?}",
        samples.len(),
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples[samples.len() - 1]
    );
    // Both edges report what they applied; the node they watch lists them.
    let mut seen = std::collections::BTreeSet::new();
    for n in &c.nodes {
        let out = c
            .admin_cmd()
            .args(["--endpoint", &n.address, "--token", TOKEN])
            .args(["cluster", "status", "-o", "json", "--stale-ok"])
            .output()
            .expect("status");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        for e in v["edges"].as_array().into_iter().flatten() {
            seen.insert(e["edge-id"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert!(
        seen.contains("edge-0") && seen.contains("edge-1"),
        "{seen:?}"
    );
    assert!(send_mail(&c.edges[e2].mx, "alice@example.test").starts_with("250"));
    // The cluster clock of a production cluster (no --dev-clock) does not move.
    let out = c
        .admin_cmd()
        .args(["--endpoint", &c.nodes[0].address, "--token", TOKEN])
        .args(["dev", "clock", "set", "--days", "30"])
        .output()
        .expect("admin");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("keeps real time"),
        "{err}"
    );
}

#[test]
fn killing_the_leader_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3);
    let e = c.start_edge();
    let (leader, _) = c.wait_for_leader(None, Duration::from_secs(20));
    wait_edge_seeded(&c.edges[e].status, Duration::from_secs(20));
    let mut acknowledged = Vec::new();
    let mut election = None;
    let mut last_index = 0;
    for i in 0..40 {
        if i == 10 {
            c.kill_node(leader, "KILL");
            let (new, took) = c.wait_for_leader(Some(leader), Duration::from_secs(20));
            assert_ne!(new, leader);
            println!("leader {leader} killed; node {new} leads after {took:?}");
            election = Some(took);
            let r = send_mail(&c.edges[e].mx, "bob@example.test");
            assert!(r.starts_with("250"), "edge stopped serving: {r}");
        }
        let name = format!("t{i}.test");
        let (code, out, err) =
            c.admin(&["tenant", "create", &name, "--domain", &name, "-o", "json"]);
        if code == 0 {
            let reply: serde_json::Value =
                serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
            last_index = reply["index"].as_u64().expect("index");
            acknowledged.push(name);
        } else {
            assert_eq!(code, 4, "write refused for another reason: {out}{err}");
        }
    }
    // 1 s election timeout, randomised up to 2 s, plus detection: a few timeouts at most.
    assert!(election.expect("election") < Duration::from_secs(10));
    assert!(
        acknowledged.len() >= 30,
        "{} writes acknowledged",
        acknowledged.len()
    );
    let tenants = c.admin_json(&["tenant", "list"]);
    let have: Vec<&str> = tenants
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    for t in &acknowledged {
        assert!(have.contains(&t.as_str()), "acknowledged {t} is gone");
    }
    // The edge may watch a follower, which applies a commit a heartbeat after the leader
    // acknowledged it: the last write reaches the edge, then the edge enforces it.
    let took = wait_edge_version(&c.edges[e].status, last_index, Duration::from_secs(10));
    println!("last acknowledged write (index {last_index}) applied on the edge {took:?} after the tenant list");
    let r = send_mail(
        &c.edges[e].mx,
        &format!("carol@{}", acknowledged[acknowledged.len() - 1]),
    );
    assert!(r.starts_with("250"), "{r}");
}

#[test]
fn edges_fail_static_without_a_control_plane() {
    let mut c = Cluster::start(3);
    let e = c.start_edge();
    c.wait_for_leader(None, Duration::from_secs(20));
    let reply = c.admin_json(&["tenant", "create", "kept.test", "--domain", "kept.test"]);
    let index = reply["index"].as_u64().expect("index");
    wait_edge_version(&c.edges[e].status, index, Duration::from_secs(10));
    // The seed (example.test) is applied by the first leader; wait for it too.
    let t0 = Instant::now();
    while readyz(&c.edges[e].status).map(|r| r["policy"]["tenants"].clone())
        != Some(serde_json::json!(2))
    {
        assert!(t0.elapsed() < Duration::from_secs(15), "seed never applied");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Two of three control nodes gone: the last one has no quorum and says so.
    for n in &c.nodes {
        let t0 = Instant::now();
        loop {
            let (code, body) = http_status(&n.status, "/readyz");
            if code == 200 {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "node {} not ready: {code} {body}",
                n.id
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for id in 1..=2 {
        c.kill_node(id, "TERM");
    }
    let t0 = Instant::now();
    loop {
        let (code, body) = http_status(&c.nodes[2].status, "/readyz");
        if code == 503 {
            assert!(body.contains("no leader known"), "{body}");
            println!(
                "control node 3 unready {:?} after losing its quorum",
                t0.elapsed()
            );
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "still ready: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c.kill_node(3, "TERM");
    let before = c.messages();
    for rcpt in ["a@example.test", "b@kept.test"] {
        let r = send_mail(&c.edges[e].mx, rcpt);
        assert!(r.starts_with("250"), "{rcpt}: {r}");
    }
    assert_eq!(c.messages(), before + 2);
    let r = send_mail(&c.edges[e].mx, "x@unknown.test");
    assert!(r.starts_with("550 5.7.64"), "still enforcing: {r}");
    // Past `ready-stale-after` (2 s here) the edge is unready, and still enforcing.
    let t0 = Instant::now();
    let detail = loop {
        let (code, body) = http_status(&c.edges[e].status, "/readyz");
        if code == 503 {
            break serde_json::from_str::<serde_json::Value>(&body).expect("json");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "edge still ready: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(detail["control"]["connected"], false, "{detail}");
    assert!(
        detail["reason"]
            .as_str()
            .unwrap_or("")
            .contains("stale-after"),
        "{detail}"
    );
    let r = send_mail(&c.edges[e].mx, "c@example.test");
    assert!(r.starts_with("250"), "unready, still serving: {r}");

    // A new edge with nothing to enforce refuses mail.
    let fresh = c.start_edge();
    let t0 = Instant::now();
    let greeting = loop {
        let g = runtime().block_on(async {
            match Client::connect(&c.edges[fresh].mx).await {
                Ok((_, g)) => Some(g),
                Err(_) => None,
            }
        });
        if let Some(g) = g {
            break g;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "fresh edge never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(greeting.starts_with("421 4.3.2"), "{greeting}");

    // The cluster comes back from sled; both edges catch up.
    for i in 0..3 {
        c.start_node(i);
    }
    c.wait_for_leader(None, Duration::from_secs(30));
    let tenants = c.admin_json(&["tenant", "list"]);
    assert!(tenants.to_string().contains("kept.test"), "{tenants}");
    let reply = c.admin_json(&["tenant", "create", "after.test", "--domain", "after.test"]);
    let index = reply["index"].as_u64().expect("index");
    for edge in [e, fresh] {
        wait_edge_version(&c.edges[edge].status, index, Duration::from_secs(15));
    }
    let r = send_mail(&c.edges[fresh].mx, "d@after.test");
    assert!(r.starts_with("250"), "{r}");
    // Ready again: every control node, and the edges.
    let t0 = Instant::now();
    for status in c
        .nodes
        .iter()
        .map(|n| n.status.clone())
        .chain(c.edges.iter().map(|e| e.status.clone()))
        .collect::<Vec<_>>()
    {
        while http_status(&status, "/readyz").0 != 200 {
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "{status} not ready again: {}",
                http_status(&status, "/readyz").1
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn nodes_join_and_leave_while_the_cluster_commits() {
    let mut c = Cluster::start(3);
    let (leader, _) = c.wait_for_leader(None, Duration::from_secs(20));
    let address = c.start_joiner(4);
    c.admin_ok(&["cluster", "add-node", "4", &address]);
    let t0 = Instant::now();
    loop {
        let s = c.status();
        let voters: Vec<u64> = s["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter(|m| m["role"] == "voter")
            .filter_map(|m| m["id"].as_u64())
            .collect();
        if voters == [1, 2, 3, 4] {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "{s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    c.admin_ok(&["tenant", "create", "four.test"]);
    // The new node has the data (a stale read served by node 4 itself).
    let t0 = Instant::now();
    loop {
        let out = c
            .admin_cmd()
            .args(["--endpoint", &address, "--token", TOKEN, "--stale-ok"])
            .args(["tenant", "list", "-o", "json"])
            .output()
            .expect("admin");
        if String::from_utf8_lossy(&out.stdout).contains("four.test") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "node 4 never caught up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // It was brought up to date by a snapshot, sent in chunks on a stream of its own.
    let chunked = (0..3).any(|i| {
        let (_, m) = http_status(&c.nodes[i].status, "/metrics");
        m.lines().any(|l| {
            l.starts_with("moat_control_raft_snapshots_sent_total{")
                && l.contains("transfer=\"chunked\"")
                && l.contains("result=\"ok\"")
        })
    });
    assert!(chunked, "no node sent a chunked snapshot");
    let gone = (1..=3).find(|&n| n != leader).expect("a follower");
    c.admin_ok(&["cluster", "remove-node", &gone.to_string()]);
    c.kill_node(gone, "TERM");
    let s = c.status();
    let ids: Vec<u64> = s["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["id"].as_u64())
        .collect();
    assert!(!ids.contains(&gone) && ids.contains(&4), "{s}");
    let table = c.admin_ok(&["cluster", "status"]);
    assert!(table.contains("MEMBERS"), "{table}");
    c.admin_ok(&["tenant", "create", "after-removal.test"]);
}

#[test]
fn a_tenant_admin_token_is_confined_to_its_tenant() {
    let c = Cluster::start(1);
    c.wait_for_leader(None, Duration::from_secs(20));
    c.admin_ok(&["tenant", "create", "a.test", "--domain", "a.test"]);
    c.admin_ok(&["tenant", "create", "b.test", "--domain", "b.test"]);
    c.admin_ok(&[
        "connector",
        "create",
        "--tenant",
        "b.test",
        "b-secret",
        "--type",
        "partner",
        "--sender-ip",
        "198.51.100.7",
    ]);
    let created = c.admin_json(&[
        "token",
        "create",
        "--role",
        "tenant-admin",
        "--tenant",
        "a.test",
        "--name",
        "a-admin",
    ]);
    let a_token = created["secret"].as_str().expect("secret").to_owned();
    let reader = c.admin_json(&["token", "create", "--role", "reader", "--name", "ro"]);
    let reader = reader["secret"].as_str().expect("secret").to_owned();

    let as_token = |token: &str, args: &[&str]| {
        run(c
            .admin_cmd()
            .args(["--endpoint", &c.control_list(), "--token", token])
            .args(args))
    };
    let code = |token: &str, args: &[&str]| {
        c.admin_cmd()
            .args(["--endpoint", &c.control_list(), "--token", token])
            .args(args)
            .output()
            .expect("admin")
            .status
            .code()
    };
    // Its own tenant: allowed.
    let (ok, out, err) = as_token(
        &a_token,
        &[
            "connector",
            "create",
            "--tenant",
            "a.test",
            "a-in",
            "--type",
            "partner",
            "--sender-ip",
            "192.0.2.1",
        ],
    );
    assert!(ok, "{out}{err}");
    // Another tenant: denied, for reads and writes, with exit code 3.
    for args in [
        &["connector", "list", "--tenant", "b.test"][..],
        &["connector", "get", "--tenant", "b.test", "b-secret"],
        &["connector", "delete", "--tenant", "b.test", "b-secret"],
        &["domain", "add", "--tenant", "b.test", "stolen.test"],
        &["user", "list", "--tenant", "b.test"],
        &["tenant", "delete", "b.test"],
        &["token", "list"],
        &["cluster", "status"],
    ] {
        assert_eq!(
            code(&a_token, args),
            Some(3),
            "tenant admin could run {args:?}"
        );
    }
    let (_, err_text, err) = as_token(&a_token, &["connector", "list", "--tenant", "b.test"]);
    assert!(
        (err_text + &err).contains("b.test"),
        "the denial should name the tenant"
    );
    // Unscoped lists show its own tenant only.
    let (ok, out, err) = as_token(&a_token, &["connector", "list", "-o", "json"]);
    assert!(ok, "{err}");
    assert!(out.contains("a-in") && !out.contains("b-secret"), "{out}");
    // A reader reads everything and changes nothing.
    assert_eq!(code(&reader, &["connector", "list"]), Some(0));
    assert_eq!(
        code(&reader, &["tenant", "create", "c.test"]),
        Some(3),
        "a reader wrote"
    );
    assert_eq!(code("wrong-token", &["tenant", "list"]), Some(3));
    // b.test's connector is untouched.
    let b = c.admin_json(&["connector", "list", "--tenant", "b.test"]);
    assert_eq!(b.as_array().map(Vec::len), Some(1), "{b}");
    // Every change is audited with its actor.
    let audit = c.admin_json(&["audit", "list"]).to_string();
    assert!(
        audit.contains("a-admin") && audit.contains("operator"),
        "{audit}"
    );
}

#[test]
fn moat_dev_runs_a_multi_process_cluster() {
    let dir = TempDir::new("dev-cluster");
    let mut args = ANY_PORTS.to_vec();
    args.extend(["--nodes", "3", "--edges", "2"]);
    let mut dev = Dev::start_in(&dir.0, None, &args);
    let ep = dev.endpoints.clone();
    assert_eq!(ep["control"].as_array().map(Vec::len), Some(3), "{ep}");
    assert_eq!(ep["edges"].as_array().map(Vec::len), Some(2), "{ep}");
    let pids: std::collections::BTreeSet<u64> = ep["control"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(ep["edges"].as_array().into_iter().flatten())
        .filter_map(|p| p["pid"].as_u64())
        .collect();
    assert_eq!(
        pids.len(),
        4,
        "dev + 2 control children + 1 edge child: {ep}"
    );
    let mx2 = ep["edges"][1]["listeners"]["mx"].as_str().expect("mx");
    let r = send_mail(mx2, "alice@example.test");
    assert!(r.starts_with("250"), "{r}");
    // moat admin finds the cluster by itself from the data directory.
    let out = moat()
        .args(["admin", "--data"])
        .arg(&dev.data)
        .args(["cluster", "status", "-o", "json"])
        .output()
        .expect("admin");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(s["members"].as_array().map(Vec::len), Some(3), "{s}");
    let status = dev.terminate();
    assert!(status.success(), "{status:?}");
    for pid in pids {
        let alive = Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ");
        assert!(!alive, "process {pid} outlived moat dev");
    }
}
