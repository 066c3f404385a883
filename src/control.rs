//! `moat control`: command-line glue around `moat_control::server`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use moat_control::node::Options;
use moat_control::server::{Control, ControlConfig};
use moat_shared::Seed;
use serde::Deserialize;

/// Options of `moat control`. Every flag can also be set in the `--config` TOML file (same
/// names, kebab-case; `peer` as a table `[peers]` of `id = "host:port"`); flags win.
#[derive(clap::Args, Debug, Default)]
pub struct ControlArgs {
    /// TOML file with the same settings as the flags.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This node's raft id (1 or more, unique in the cluster, never reused).
    #[arg(long)]
    id: Option<u64>,
    /// Address gRPC listens on.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address other nodes and tools reach this node at (default: the listen address).
    #[arg(long)]
    advertise: Option<String>,
    /// A founding member, `ID=HOST:PORT`; repeat for each (this node included). Without any, a
    /// cluster of one.
    #[arg(long = "peer", value_parser = parse_peer)]
    peers: Vec<(u64, String)>,
    /// Start empty and wait to be added with `moat admin cluster add-node`.
    #[arg(long)]
    join: bool,
    /// Data directory.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Seed (TOML) to apply once the cluster has a leader (idempotent).
    #[arg(long)]
    seed: Option<PathBuf>,
    /// File holding the bootstrap operator token (or set MOAT_ADMIN_TOKEN).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Take a raft snapshot and compact the log every N applied entries.
    #[arg(long)]
    snapshot_every: Option<u64>,
    /// Let `moat admin dev clock set` move the cluster clock ahead (tests and demos only; a
    /// node without it refuses). `moat dev` passes it to its nodes.
    #[arg(long, hide = true)]
    dev_clock: bool,
    /// Serve `/healthz`, `/readyz` and `/metrics` on this address.
    #[arg(long, value_name = "ADDR")]
    status_listen: Option<std::net::SocketAddr>,
    /// `/readyz` turns unready after this many seconds without a known leader.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    unready_after: u64,
    /// The cluster's internal CA (PEM): gRPC is then served over mutual TLS, every caller
    /// needs a certificate from it, and peers are called with `--tls-cert`. Without the three
    /// `--tls-*` files gRPC is plaintext and admin calls are refused.
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM; common name `moat-control`, DNS name `moat-control`).
    #[arg(long, value_name = "FILE", requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["tls_ca", "tls_cert"])]
    tls_key: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ControlFile {
    id: Option<u64>,
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    #[serde(default)]
    peers: BTreeMap<String, String>,
    #[serde(default)]
    join: bool,
    data: Option<PathBuf>,
    seed: Option<PathBuf>,
    admin_token_file: Option<PathBuf>,
    snapshot_every: Option<u64>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

fn parse_peer(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not ID=HOST:PORT"))?;
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|_| format!("`{id}` is not a node id"))?;
    if id == 0 {
        return Err("node ids start at 1".into());
    }
    Ok((id, addr.trim().to_owned()))
}

/// Builds the node configuration from flags and the optional file.
pub fn config(args: ControlArgs) -> anyhow::Result<ControlConfig> {
    let file: ControlFile = match &args.config {
        Some(p) => toml::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("in {}", p.display()))?,
        None => ControlFile::default(),
    };
    let id = args
        .id
        .or(file.id)
        .context("--id is required (this node's raft id, 1 or more)")?;
    if id == 0 {
        bail!("--id must be 1 or more");
    }
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| ([127, 0, 0, 1], 7400).into());
    let advertise = args.advertise.or(file.advertise);
    let mut peers: BTreeMap<u64, String> = args.peers.into_iter().collect();
    for (k, v) in file.peers {
        let (pid, addr) = parse_peer(&format!("{k}={v}")).map_err(anyhow::Error::msg)?;
        peers.entry(pid).or_insert(addr);
    }
    let join = args.join || file.join;
    if join && !peers.is_empty() {
        bail!("--join and --peer exclude each other: a joining node learns the cluster from its leader");
    }
    if !join {
        if peers.is_empty() {
            peers.insert(id, advertise.clone().unwrap_or_else(|| listen.to_string()));
        }
        if !peers.contains_key(&id) {
            bail!("the --peer list must include this node ({id})");
        }
    }
    let data = args
        .data
        .or(file.data)
        .unwrap_or_else(|| PathBuf::from(format!("./moat-control-{id}")));
    let seed = match args.seed.or(file.seed) {
        Some(p) => Seed::parse(
            &std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
        )
        .and_then(Seed::into_tenants)
        .with_context(|| format!("in {}", p.display()))?,
        None => Vec::new(),
    };
    let admin_token = match args.admin_token_file.or(file.admin_token_file) {
        Some(p) => Some(
            std::fs::read_to_string(&p)
                .with_context(|| format!("reading {}", p.display()))?
                .trim()
                .to_owned(),
        ),
        None => std::env::var("MOAT_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
    };
    let tls = match (
        args.tls_ca.or(file.tls_ca),
        args.tls_cert.or(file.tls_cert),
        args.tls_key.or(file.tls_key),
    ) {
        (None, None, None) => None,
        (Some(ca), Some(cert), Some(key)) => {
            let tls = moat_proto::mtls::InternalTls::load(&ca, &cert, &key)?;
            if tls.role() != moat_proto::mtls::Role::Control {
                bail!(
                    "{} is a {} certificate; a control node needs a moat-control one",
                    cert.display(),
                    tls.role()
                );
            }
            Some(tls)
        }
        _ => bail!("tls-ca, tls-cert and tls-key go together: set all three or none"),
    };
    let mut options = Options::default();
    if let Some(n) = args.snapshot_every.or(file.snapshot_every) {
        options.snapshot_every = n;
    }
    Ok(ControlConfig {
        id,
        listen,
        advertise,
        peers,
        data,
        seed,
        admin_token,
        tick: Duration::from_millis(100),
        options,
        dev_clock: args.dev_clock,
        unready_after: Duration::from_secs(args.unready_after),
        tls,
    })
}

/// The routes of a control node's status port.
pub fn status_routes(control: &Control) -> moat_edge::status::Routes {
    let record = control.record_metrics();
    moat_edge::status::Routes {
        readiness: control.readiness(),
        metrics: crate::process::metrics().map(|render| -> moat_edge::status::Metrics {
            Arc::new(move || {
                record();
                render()
            })
        }),
    }
}

/// Runs `moat control` until SIGTERM/SIGINT.
pub async fn run(args: ControlArgs) -> anyhow::Result<()> {
    let status_listen = args.status_listen;
    let cfg = config(args)?;
    let id = cfg.id;
    if cfg.dev_clock {
        tracing::warn!(
            node = id,
            "--dev-clock: the cluster clock can be moved by an operator; never use this in production"
        );
    }
    if cfg.tls.is_none() {
        tracing::warn!(
            node = id,
            "no --tls-ca/--tls-cert/--tls-key: gRPC is plaintext and every admin call is refused"
        );
    }
    let control = Control::start(cfg).await?;
    if let Some(addr) = control.local_addr() {
        tracing::info!(node = id, "control node serving gRPC on {addr}");
    }
    if let Some(addr) = status_listen {
        let listener = moat_edge::status::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for the status port"))?;
        tracing::info!(node = id, "status port on {addr}");
        tokio::spawn(moat_edge::status::serve(listener, status_routes(&control)));
    }
    control.run(crate::process::shutdown_signal()).await?;
    Ok(())
}
