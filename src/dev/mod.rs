//! `moat dev`: the whole system on one machine, from embedded defaults.
//!
//! On first start it creates `DIR/tls/` (a local CA and a server certificate for `localhost`,
//! `127.0.0.1` and `::1`) and an operator token (`DIR/admin-token`). It then runs a control
//! plane seeded with the demo tenant `example.test` and edges that watch it, with mx,
//! submission and smtps listeners on 127.0.0.1, delivering into the maildir sink at
//! `DIR/mail/`. Control node 1 and edge 1 run inside this process; `--nodes N` and `--edges M`
//! add the others as child processes (`moat control`, `moat edge`), each with its own data
//! directory. Every control node serves the admin console over HTTPS (node 1 on
//! `--console-port`, 7480 by default; the dev CA in `DIR/tls/internal/ca.pem` signs its
//! certificate; sign in with the operator token). Everything a tool or test needs to find is
//! written to `DIR/endpoints.json`.
//!
//! Layout: this file holds the options and the start-up sequence; [`endpoints`] the shape of
//! `endpoints.json`, [`edge_config`](mod@edge_config) edge 1's settings with their dev defaults, [`children`] the child processes and their ports, [`secrets`] the token,
//! passwords and certificates made on first start.

mod children;
mod edge_config;
mod endpoints;
mod secrets;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use moat_control::config::ControlConfig;
use moat_control::server::Control;
use moat_edge::{Edge, EdgeError};
use moat_proto::mtls::InternalTls;
use moat_shared::{PolicyHandle, Seed};

pub(crate) use children::edge_version;
use children::{free_port, Children};
use edge_config::edge_config;
use endpoints::{
    AdminEndpoints, AdminTls, ConsoleEndpoints, ControlEndpoints, Demo, EdgeEndpoints, Endpoints,
    InternalTlsFiles, TlsEndpoints,
};
use secrets::{ensure_certificates, ensure_secret, ensure_token};

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
    /// HTTPS port of control node 1's admin console [default: 7480, or any free port when
    /// 7480 is taken]; 0: any free port. The other nodes' consoles use free ports.
    #[arg(long)]
    console_port: Option<u16>,
}

/// The console port of node 1 unless `--console-port` says otherwise.
const CONSOLE_PORT: u16 = 7480;

/// The demo SMTP AUTH user `moat dev` creates.
const DEMO_USER: &str = "demo@example.test";

/// Runs `moat dev` until SIGINT/SIGTERM.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    // The data directory holds the operator token and the CA's key: owner only when created.
    crate::cert::create_private_dir(&args.data)?;
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

    let (cfg, maildir) = edge_config(&args, &data, &ca, cert, key)?;

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
    let console_port = match args.console_port {
        Some(0) => free_port()?,
        Some(p) => p,
        None if std::net::TcpListener::bind(("127.0.0.1", CONSOLE_PORT)).is_ok() => CONSOLE_PORT,
        None => free_port()?,
    };
    let mut control_eps = Vec::new();
    for (&id, addr) in &peers {
        let console = if id == 1 {
            format!("127.0.0.1:{console_port}")
        } else {
            format!("127.0.0.1:{}", free_port()?)
        };
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
                ticket_rotate_every: std::time::Duration::from_millis(
                    moat_shared::tickets::DEFAULT_TICKET_ROTATION_MS as u64,
                ),
                tls: Some(control_tls.clone()),
                console_listen: Some(console.parse()?),
            };
            let control = Control::start(cfg).await.map_err(|e| {
                anyhow::anyhow!(
                    "{e}; choose other ports with --control-port and --console-port (0: any free port)"
                )
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
                .arg("--console-listen")
                .arg(&console)
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
            console: format!("https://{console}"),
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
        console: ConsoleEndpoints {
            url: format!("https://127.0.0.1:{console_port}"),
            ca: pki.ca.clone(),
        },
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
    println!(
        "  console           https://127.0.0.1:{console_port}  (sign in with the token in {}; CA {})",
        data.join("admin-token").display(),
        pki.ca.display()
    );
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
