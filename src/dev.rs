//! `moat dev`: the whole system on one machine, from embedded defaults.
//!
//! On first start it creates `DIR/tls/` (a local CA and a server certificate for `localhost`,
//! `127.0.0.1` and `::1`), then runs an edge with mx, submission and smtps listeners on
//! 127.0.0.1 that enforces the demo tenant `example.test` and delivers into the maildir sink at
//! `DIR/mail/`. Everything a tool or test needs to find is written to `DIR/endpoints.json`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use moat_edge::config::{ListenerConfig, ListenerKind, NextHopConfig, TlsConfig};
use moat_edge::{Edge, EdgeConfig, EdgeError};
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
    /// Edge settings (TOML) that override the defaults: limits, next hop, listeners.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// The shape of `DIR/endpoints.json`; documented in the README.
#[derive(Serialize)]
struct Endpoints {
    edges: Vec<EdgeEndpoints>,
    control: Vec<serde_json::Value>,
    admin: Option<serde_json::Value>,
    tls: TlsEndpoints,
    maildir: Option<PathBuf>,
    demo: Demo,
}

#[derive(Serialize)]
struct EdgeEndpoints {
    id: String,
    pid: u32,
    listeners: serde_json::Map<String, serde_json::Value>,
    metrics: Option<String>,
}

#[derive(Serialize)]
struct TlsEndpoints {
    ca: PathBuf,
}

#[derive(Serialize)]
struct Demo {
    tenant: String,
}

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
        cfg.tls = Some(TlsConfig {
            cert,
            key,
            client_ca: None,
            reload_interval: std::time::Duration::from_secs(5),
        });
    }
    if cfg.listeners.is_empty() {
        let at = |kind, port| ListenerConfig {
            kind,
            address: ([127, 0, 0, 1], port).into(),
            proxy_protocol: false,
            tls: None,
            limits: Default::default(),
        };
        cfg.listeners = vec![
            at(ListenerKind::Mx, args.mx_port),
            at(ListenerKind::Submission, args.submission_port),
            at(ListenerKind::Smtps, args.smtps_port),
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

    let snapshot = Seed::parse(Seed::DEMO)?.into_snapshot(1)?;
    let node = cfg.node_id.clone();
    let edge = Edge::bind(cfg, PolicyHandle::new(snapshot))
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

    let mut listeners = serde_json::Map::new();
    for (kind, addr) in edge.local_addrs() {
        listeners.insert(kind.as_str().into(), addr.to_string().into());
    }
    let endpoints = Endpoints {
        edges: vec![EdgeEndpoints {
            id: node,
            pid: std::process::id(),
            listeners: listeners.clone(),
            metrics: None,
        }],
        control: Vec::new(),
        admin: None,
        tls: TlsEndpoints { ca: ca.clone() },
        maildir: maildir.clone(),
        demo: Demo {
            tenant: "example.test".into(),
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
        println!("  {kind:<11} {}", addr.as_str().unwrap_or_default());
    }
    println!("  CA          {}", ca.display());
    if let Some(m) = &maildir {
        println!("  maildir     {}", m.display());
    }
    println!("  endpoints   {}", path.display());
    println!("  demo tenant example.test");
    println!("Send a test message:");
    println!("  swaks --to alice@example.test --server {mx} --tls");
    println!("Stop with Ctrl-C.");

    edge.run(crate::shutdown_signal()).await;
    let _ = std::fs::remove_file(&path);
    Ok(())
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
