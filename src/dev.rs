//! `moat dev`: the whole system on one machine, from embedded defaults.
//!
//! On first start it creates `DIR/tls/` (a local CA and a server certificate for `localhost`,
//! `127.0.0.1` and `::1`) and an operator token (`DIR/admin-token`). It then runs a control
//! plane seeded with the demo tenant `example.test` and edges that watch it, with mx,
//! submission and smtps listeners on 127.0.0.1, delivering into the maildir sink at
//! `DIR/mail/`. Control node 1 and edge 1 run inside this process; `--nodes N` and `--edges M`
//! add the others as child processes (`moat control`, `moat edge`), each with its own data
//! directory. Everything a tool or test needs to find is written to `DIR/endpoints.json`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use moat_edge::config::{
    LegacyTls, ListenerConfig, ListenerKind, NextHopConfig, TlsConfig, TlsVersion,
};
use moat_edge::{Edge, EdgeConfig, EdgeError};
use std::collections::BTreeMap;

use moat_control::server::{Control, ControlConfig};
use moat_proto::mtls::InternalTls;
use moat_shared::{PolicyHandle, Seed};
use serde::Serialize;

/// Options of `moat dev`.
#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Directory for certificates, mail and `endpoints.json`.
    #[arg(long, default_value = "./moat-data")]
    data: PathBuf,
    /// Port of the mx listener (0: any free port).
    #[arg(long, default_value_t = 2525)]
    mx_port: u16,
    /// Port of the submission listener (0: any free port).
    #[arg(long, default_value_t = 2587)]
    submission_port: u16,
    /// Port of the smtps listener (0: any free port).
    #[arg(long, default_value_t = 2465)]
    smtps_port: u16,
    /// Port of the legacy submission listener: TLS 1.0 to 1.3, for users of tenants with
    /// `allow-legacy-tls-clients` only (0: any free port).
    #[arg(long, default_value_t = 2588)]
    legacy_port: u16,
    /// Edge settings (TOML) that override edge 1's defaults: limits, next hop, listeners.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Control nodes (1, 3 or 5).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=7))]
    nodes: u64,
    /// Edges.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=32))]
    edges: u64,
    /// gRPC port of control node 1; node N uses this plus N-1 (0: any free ports).
    #[arg(long, default_value_t = 7400)]
    control_port: u16,
}

/// The shape of `DIR/endpoints.json`; documented in the README.
#[derive(Serialize)]
struct Endpoints {
    edges: Vec<EdgeEndpoints>,
    control: Vec<ControlEndpoints>,
    admin: AdminEndpoints,
    tls: TlsEndpoints,
    internal_tls: InternalTlsFiles,
    maildir: Option<PathBuf>,
    demo: Demo,
}

#[derive(Serialize)]
struct EdgeEndpoints {
    id: String,
    pid: u32,
    listeners: serde_json::Map<String, serde_json::Value>,
    status: String,
    metrics: Option<String>,
}

#[derive(Serialize)]
struct ControlEndpoints {
    id: u64,
    pid: u32,
    address: String,
    /// `/healthz`, `/readyz`, `/metrics`.
    status: String,
    data: PathBuf,
}

#[derive(Serialize)]
struct AdminEndpoints {
    endpoint: String,
    endpoints: Vec<String>,
    token: String,
    /// The admin certificate `moat admin --data DIR` uses.
    tls: AdminTls,
}

#[derive(Serialize)]
struct AdminTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// The internal PKI's CA and an edge certificate (for `moat bench signals`).
#[derive(Serialize)]
struct InternalTlsFiles {
    ca: PathBuf,
    edge_cert: PathBuf,
    edge_key: PathBuf,
}

#[derive(Serialize)]
struct TlsEndpoints {
    ca: PathBuf,
}

#[derive(Serialize)]
struct Demo {
    tenant: String,
    user: String,
    password: String,
}

/// The demo SMTP AUTH user `moat dev` creates.
const DEMO_USER: &str = "demo@example.test";

/// Runs `moat dev` until SIGINT/SIGTERM.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating {}", args.data.display()))?;
    let data = args
        .data
        .canonicalize()
        .with_context(|| format!("resolving {}", args.data.display()))?;
    let tls_dir = data.join("tls");
    let (ca, cert, key) = ensure_certificates(&tls_dir)?;
    let (edge_cert, edge_key) = (cert.clone(), key.clone());
    // The internal PKI: mutual TLS between control nodes, edges and the admin tool.
    let pki = crate::cert::dev_pki(&tls_dir.join("internal"))?;
    let load = |(cert, key): &(PathBuf, PathBuf)| InternalTls::load(&pki.ca, cert, key);
    let (control_tls, edge_tls, admin_tls) =
        (load(&pki.control)?, load(&pki.edge)?, load(&pki.admin)?);

    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            EdgeConfig::parse(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => EdgeConfig::default(),
    };
    if args
        .config
        .as_ref()
        .is_none_or(|_| cfg.node_id == EdgeConfig::default().node_id)
    {
        cfg.node_id = "edge-1".into();
    }
    if cfg.tls.is_none() {
        // Client certificates issued by the dev CA match connectors by certificate name; a
        // client without one is served all the same.
        cfg.tls = Some(TlsConfig {
            cert,
            key,
            client_ca: Some(ca.clone()),
            reload_interval: std::time::Duration::from_secs(5),
        });
    }
    if cfg.listeners.is_empty() {
        let at = |kind, port| ListenerConfig {
            kind,
            name: None,
            address: ([127, 0, 0, 1], port).into(),
            proxy_protocol: false,
            tls: None,
            tls_min_version: TlsVersion::Tls12,
            legacy_tls: LegacyTls::SpeedBump,
            limits: Default::default(),
        };
        cfg.listeners = vec![
            at(ListenerKind::Mx, args.mx_port),
            at(ListenerKind::Submission, args.submission_port),
            at(ListenerKind::Smtps, args.smtps_port),
            ListenerConfig {
                name: Some("legacy-submission".into()),
                tls_min_version: TlsVersion::Tls10,
                legacy_tls: LegacyTls::OptIn,
                ..at(ListenerKind::Submission, args.legacy_port)
            },
        ];
    }
    let maildir = data.join("mail");
    if cfg.next_hop.is_none() {
        cfg.next_hop = Some(NextHopConfig::Maildir {
            path: maildir.clone(),
        });
    }
    let maildir = match &cfg.next_hop {
        Some(NextHopConfig::Maildir { path }) => Some(path.clone()),
        _ => None,
    };

    // The control plane: node 1 here, the others as children.
    let token = ensure_token(&data.join("admin-token"))?;
    let seed_path = data.join("seed.toml");
    if !seed_path.exists() {
        std::fs::write(&seed_path, Seed::DEMO)?;
    }
    let mut ports = Vec::new();
    for i in 0..args.nodes {
        ports.push(match args.control_port {
            0 => free_port()?,
            p => p
                .checked_add(i as u16)
                .context("--control-port is too high for this many nodes")?,
        });
    }
    let peers: BTreeMap<u64, String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u64 + 1, format!("127.0.0.1:{p}")))
        .collect();
    let mut children = Children::default();
    let exe = std::env::current_exe().context("locating the moat binary")?;
    let log_dir = data.join("logs");
    std::fs::create_dir_all(&log_dir)?;
    let mut control_eps = Vec::new();
    for (&id, addr) in &peers {
        let node_data = data.join(format!("control-{id}"));
        let mut status = format!("127.0.0.1:{}", free_port()?);
        let pid = if id == 1 {
            let cfg = ControlConfig {
                id,
                listen: addr.parse()?,
                advertise: None,
                peers: peers.clone(),
                data: node_data.clone(),
                seed: Seed::parse(Seed::DEMO)?.into_tenants()?,
                admin_token: Some(token.clone()),
                tick: std::time::Duration::from_millis(100),
                options: Default::default(),
                dev_clock: true,
                unready_after: std::time::Duration::from_secs(5),
                tls: Some(control_tls.clone()),
            };
            let control = Control::start(cfg).await.map_err(|e| {
                anyhow::anyhow!("{e}; choose another port with --control-port (0: any free port)")
            })?;
            let listener = moat_edge::status::bind(([127, 0, 0, 1], 0).into()).await?;
            status = listener.local_addr()?.to_string();
            tokio::spawn(moat_edge::status::serve(
                listener,
                crate::control::status_routes(&control),
            ));
            tokio::spawn(async move {
                if let Err(e) = control.run(std::future::pending()).await {
                    tracing::error!("control node 1: {e}");
                }
            });
            std::process::id()
        } else {
            let mut cmd = std::process::Command::new(&exe);
            cmd.arg("control")
                .arg("--id")
                .arg(id.to_string())
                .arg("--listen")
                .arg(addr)
                .arg("--data")
                .arg(&node_data)
                .arg("--seed")
                .arg(&seed_path)
                .arg("--admin-token-file")
                .arg(data.join("admin-token"))
                .arg("--dev-clock")
                .arg("--status-listen")
                .arg(&status)
                .arg("--tls-ca")
                .arg(&pki.ca)
                .arg("--tls-cert")
                .arg(&pki.control.0)
                .arg("--tls-key")
                .arg(&pki.control.1);
            for (pid, paddr) in &peers {
                cmd.arg("--peer").arg(format!("{pid}={paddr}"));
            }
            children.spawn(cmd, &log_dir.join(format!("control-{id}.log")))?
        };
        control_eps.push(ControlEndpoints {
            id,
            status,
            pid,
            address: addr.clone(),
            data: node_data,
        });
    }
    let control_addrs: Vec<String> = peers.values().cloned().collect();

    // The demo user, with a password made on first start.
    let password = ensure_secret(&data.join("demo-password"), "", 12)?;
    // The first write waits for the cluster's first election; a loaded machine starting
    // several nodes may take longer than one admin call's retry budget.
    let target = crate::client::Target {
        endpoints: control_addrs
            .iter()
            .map(|a| format!("https://{a}"))
            .collect(),
        token: token.clone(),
        tls: Some(admin_tls),
    };
    let started = std::time::Instant::now();
    loop {
        let r = crate::client::put_user(&target, "example.test", DEMO_USER, &password).await;
        match r {
            Ok(()) => break,
            Err(e) if started.elapsed() > std::time::Duration::from_secs(90) => {
                anyhow::bail!("creating the demo user: {e}")
            }
            Err(e) => tracing::info!("control plane not writable yet ({e}); retrying"),
        }
    }

    // Edge 1, here.
    let policy = PolicyHandle::new(Default::default());
    let (link, counters) =
        crate::edge::start_control_link(&control_addrs, Some(edge_tls), &cfg.node_id, &policy);
    let node = cfg.node_id.clone();
    let status_listener = moat_edge::status::bind(([127, 0, 0, 1], 0).into()).await?;
    let status_addr = status_listener.local_addr()?.to_string();
    let edge = Edge::bind(cfg, policy.clone(), counters)
        .await
        .map_err(|e| match e {
            EdgeError::Bind {
                kind,
                address,
                source,
            } => anyhow::anyhow!(
                "cannot listen on {address} for {kind}: {source}; choose another port with --{kind}-port"
            ),
            e => e.into(),
        })?;
    let probe = moat_edge::status::Probe {
        node: node.clone(),
        policy: policy.clone(),
        link: Some(link),
        stale_after: edge.ready_stale_after(),
        next_hop: edge.next_hop_reachability(),
    };
    tokio::spawn(moat_edge::status::serve(
        status_listener,
        probe.routes(crate::process::metrics()),
    ));
    let mut listeners = serde_json::Map::new();
    for (l, addr) in edge.listeners() {
        listeners.insert(l.name().into(), addr.to_string().into());
    }
    // Alerts: emails go in through edge 1's mx listener, to the demo tenant's admin mailbox.
    if let Some(mx) = listeners.get("mx").and_then(|v| v.as_str()) {
        use moat_proto::write_request::Op;
        for op in [
            Op::SetAlertTransport(moat_proto::AlertTransport {
                smtp: mx.to_owned(),
                from: "Moat alerts <alerts@moat.invalid>".into(),
            }),
            Op::SetAlertContacts(moat_proto::AlertContacts {
                tenant: "example.test".into(),
                emails: vec!["admin@example.test".into()],
                webhook_url: String::new(),
                webhook_secret: String::new(),
            }),
        ] {
            crate::client::write_op(&target, op)
                .await
                .map_err(|e| anyhow::anyhow!("setting up alerts: {e}"))?;
        }
    }
    let mut edges = vec![EdgeEndpoints {
        id: node,
        pid: std::process::id(),
        listeners: listeners.clone(),
        status: status_addr.clone(),
        metrics: Some(format!("http://{status_addr}/metrics")),
    }];

    // Further edges, as children.
    for i in 2..=args.edges {
        // A port that was free a moment ago can be taken before the child binds it: a child that
        // exits at once is started again on other ports.
        for attempt in 1..=5 {
            let id = format!("edge-{i}");
            let ports = [
                free_port()?,
                free_port()?,
                free_port()?,
                free_port()?,
                free_port()?,
            ];
            let toml = format!(
                r#"node-id = "{id}"
[tls]
cert = {cert:?}
key = {key:?}
client-ca = {client_ca:?}
[[listener]]
kind = "mx"
address = "127.0.0.1:{mx}"
[[listener]]
kind = "submission"
address = "127.0.0.1:{sub}"
[[listener]]
kind = "smtps"
address = "127.0.0.1:{smtps}"
[[listener]]
kind = "submission"
name = "legacy-submission"
address = "127.0.0.1:{legacy}"
tls-min-version = "1.0"
legacy-tls = "opt-in"
[next-hop]
kind = "maildir"
path = {maildir:?}
[control-tls]
ca = {internal_ca:?}
cert = {internal_cert:?}
key = {internal_key:?}
"#,
                cert = edge_cert.display().to_string(),
                key = edge_key.display().to_string(),
                client_ca = ca.display().to_string(),
                mx = ports[0],
                sub = ports[1],
                smtps = ports[2],
                legacy = ports[4],
                maildir = data.join("mail").display().to_string(),
                internal_ca = pki.ca.display().to_string(),
                internal_cert = pki.edge.0.display().to_string(),
                internal_key = pki.edge.1.display().to_string(),
            );
            let path = data.join(format!("{id}.toml"));
            std::fs::write(&path, toml)?;
            let status = format!("127.0.0.1:{}", ports[3]);
            let mut cmd = std::process::Command::new(&exe);
            cmd.arg("edge")
                .arg("--config")
                .arg(&path)
                .arg("--control")
                .arg(control_addrs.join(","))
                .arg("--status")
                .arg(&status);
            let pid = children.spawn(cmd, &log_dir.join(format!("{id}.log")))?;
            if !children.comes_up(pid, &status).await {
                if attempt == 5 {
                    anyhow::bail!("edge {id} exits at start; see {}", log_dir.display());
                }
                continue;
            }
            let mut l = serde_json::Map::new();
            for (kind, port) in ["mx", "submission", "smtps", "", "legacy-submission"]
                .iter()
                .zip(ports)
                .filter(|(k, _)| !k.is_empty())
            {
                l.insert((*kind).into(), format!("127.0.0.1:{port}").into());
            }
            edges.push(EdgeEndpoints {
                id,
                pid,
                listeners: l,
                metrics: Some(format!("http://{status}/metrics")),
                status,
            });
            break;
        }
    }

    // Ready when every edge enforces a snapshot with the demo tenant and user.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while policy.load().user(DEMO_USER).is_none() {
        if std::time::Instant::now() > deadline {
            anyhow::bail!("edge 1 did not get the demo user from the control plane within 60 s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let version = policy.load().version();
    for e in &edges {
        while edge_version(&e.status).await < version {
            if std::time::Instant::now() > deadline {
                children.stop();
                anyhow::bail!(
                    "edge {} did not get a policy from the control plane within 60 s; see {}",
                    e.id,
                    log_dir.display()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    let endpoints = Endpoints {
        edges,
        control: control_eps,
        admin: AdminEndpoints {
            endpoint: format!("https://{}", control_addrs[0]),
            endpoints: target.endpoints.clone(),
            token,
            tls: AdminTls {
                ca: pki.ca.clone(),
                cert: pki.admin.0.clone(),
                key: pki.admin.1.clone(),
            },
        },
        internal_tls: InternalTlsFiles {
            ca: pki.ca.clone(),
            edge_cert: pki.edge.0.clone(),
            edge_key: pki.edge.1.clone(),
        },
        tls: TlsEndpoints { ca: ca.clone() },
        maildir: maildir.clone(),
        demo: Demo {
            tenant: "example.test".into(),
            user: DEMO_USER.into(),
            password: password.clone(),
        },
    };
    let path = data.join("endpoints.json");
    let tmp = data.join("endpoints.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&endpoints)?)?;
    std::fs::rename(&tmp, &path)?;

    let mx = listeners
        .get("mx")
        .and_then(|v| v.as_str())
        .unwrap_or("127.0.0.1:2525")
        .to_owned();
    println!("Moat dev is running.");
    for (kind, addr) in &listeners {
        println!("  {kind:<17} {}", addr.as_str().unwrap_or_default());
    }
    println!("  CA                {}", ca.display());
    if let Some(m) = &maildir {
        println!("  maildir           {}", m.display());
    }
    println!("  control           {}", control_addrs.join(", "));
    println!("  endpoints         {}", path.display());
    println!("  demo tenant       example.test");
    println!("  demo user         {DEMO_USER}  password {password}");
    println!(
        "Administer it (token in {}):",
        data.join("admin-token").display()
    );
    println!("  moat admin --data {} tenant list", data.display());
    println!("Send a test message:");
    println!("  swaks --to alice@example.test --server {mx} --tls");
    println!("Stop with Ctrl-C.");

    edge.run(crate::process::shutdown_signal()).await;
    children.stop();
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Child processes, stopped with SIGTERM (and reaped) when `moat dev` stops.
#[derive(Default)]
struct Children(Vec<std::process::Child>);

impl Children {
    fn spawn(&mut self, mut cmd: std::process::Command, log: &Path) -> anyhow::Result<u32> {
        let log = std::fs::File::create(log)?;
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting a child process")?;
        let pid = child.id();
        self.0.push(child);
        Ok(pid)
    }

    /// Waits until the child `pid` answers on `status` (true) or exits (false, and it is
    /// forgotten).
    async fn comes_up(&mut self, pid: u32, status: &str) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if tokio::net::TcpStream::connect(status).await.is_ok() {
                return true;
            }
            if let Some(i) = self.0.iter().position(|c| c.id() == pid) {
                if matches!(self.0[i].try_wait(), Ok(Some(_))) {
                    let _ = self.0.remove(i).wait();
                    return false;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }

    fn stop(&mut self) {
        for c in &self.0 {
            let _ = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("kill -TERM {}", c.id()))
                .status();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
        self.0.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The policy version an edge enforces, from its `/readyz` (0 when it has none or is down).
pub(crate) async fn edge_version(status: &str) -> u64 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut s) = tokio::net::TcpStream::connect(status).await else {
        return 0;
    };
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .is_err()
    {
        return 0;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["policy"]["version"].as_u64())
        .unwrap_or(0)
}

/// A loopback port for a child process to bind a moment later. It is taken below the kernel's
/// ephemeral range: a port from `bind(0)` comes from that range, the same one outgoing
/// connections (the nodes' own raft and watch connections) take their source ports from, and
/// one of them can hold it by the time the child binds. No port is handed out twice.
fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let base = low.saturating_sub(10_000).max(1024);
    let span = low.saturating_sub(base).max(1);
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let port = (base + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    // Nothing free below the range: any port the kernel gives.
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The operator token of this data directory, created on first start.
fn ensure_token(path: &Path) -> anyhow::Result<String> {
    ensure_secret(path, "moat_dev_", 24)
}

/// A random secret of `bytes` random bytes (in hex) kept in `path`, created on first start.
fn ensure_secret(path: &Path, prefix: &str, bytes: usize) -> anyhow::Result<String> {
    if let Ok(t) = std::fs::read_to_string(path) {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_owned());
        }
    }
    let secret = format!("{prefix}{}", crate::client::random_hex(bytes));
    std::fs::write(path, &secret)?;
    Ok(secret)
}

/// Returns (CA, certificate, key) paths, creating them on first start.
fn ensure_certificates(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let ca_path = dir.join("ca.pem");
    let cert_path = dir.join("server.pem");
    let key_path = dir.join("server-key.pem");
    if ca_path.exists() && cert_path.exists() && key_path.exists() {
        return Ok((ca_path, cert_path, key_path));
    }
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Moat dev CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &ca_cert, &ca_key)?;

    std::fs::write(&ca_path, ca_cert.pem())?;
    std::fs::write(dir.join("ca-key.pem"), ca_key.serialize_pem())?;
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    Ok((ca_path, cert_path, key_path))
}
