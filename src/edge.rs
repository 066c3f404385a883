//! `moat edge`: command-line glue around `moat_edge`: the configuration file, a fixed seed or
//! the watch of a control plane, the status port.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use moat_edge::control::{Counters, LinkStatus};
use moat_edge::{Edge, EdgeConfig};
use moat_proto::mtls::InternalTls;
use moat_shared::{PolicyHandle, Seed};

use crate::process::{metrics, shutdown_signal};

/// Options of `moat edge`.
#[derive(clap::Args, Debug)]
pub struct EdgeArgs {
    /// Edge configuration (TOML); see the `moat_edge::config` docs for every key.
    #[arg(long)]
    config: PathBuf,
    /// Enforce a fixed seed (TOML) instead of following a control plane.
    #[arg(long, conflicts_with = "control", required_unless_present = "control")]
    seed: Option<PathBuf>,
    /// Control nodes to watch, `host:port[,host:port...]`.
    #[arg(long, value_delimiter = ',')]
    control: Vec<String>,
    /// Address of the status port (`/healthz`, `/readyz`).
    #[arg(long)]
    status: Option<std::net::SocketAddr>,
}

/// Runs `moat edge` until SIGTERM/SIGINT.
pub async fn run(args: EdgeArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let cfg = EdgeConfig::parse(&text).with_context(|| format!("in {}", args.config.display()))?;
    let edge_id = cfg.node_id.clone();
    let (policy, link) = match &args.seed {
        Some(seed) => {
            let seed_text = std::fs::read_to_string(seed)
                .with_context(|| format!("reading {}", seed.display()))?;
            let snapshot = Seed::parse(&seed_text)
                .and_then(|s| s.into_snapshot(1))
                .with_context(|| format!("in {}", seed.display()))?;
            (PolicyHandle::new(snapshot), None)
        }
        None => {
            let tls = edge_control_tls(&cfg)?;
            let policy = PolicyHandle::new(Default::default());
            let link = start_control_link(&args.control, tls, &edge_id, &policy);
            (policy, Some(link))
        }
    };
    // Without a control plane the counters go nowhere (and stop growing at their cap).
    let counters = link
        .as_ref()
        .map_or_else(|| Arc::new(Counters::default()), |(_, c)| Arc::clone(c));
    let status = match args.status {
        Some(addr) => Some(
            moat_edge::status::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for the status port"))?,
        ),
        None => None,
    };
    let edge = Edge::bind(cfg, policy.clone(), counters).await?;
    for (kind, addr) in edge.local_addrs() {
        tracing::info!("{} listening on {addr}", kind.as_str());
    }
    if let Some(listener) = status {
        let probe = moat_edge::status::Probe {
            node: edge_id,
            policy,
            link: link.map(|(status, _)| status),
            stale_after: edge.ready_stale_after(),
            next_hop: edge.next_hop_reachability(),
        };
        tokio::spawn(moat_edge::status::serve(listener, probe.routes(metrics())));
    }
    edge.run(shutdown_signal()).await;
    Ok(())
}

/// The edge's `[control-tls]` material, checked to be an edge certificate.
pub fn edge_control_tls(cfg: &EdgeConfig) -> anyhow::Result<Option<InternalTls>> {
    let Some(t) = &cfg.control_tls else {
        return Ok(None);
    };
    let tls = InternalTls::load(&t.ca, &t.cert, &t.key).context("in [control-tls]")?;
    if tls.role() != moat_proto::mtls::Role::Edge {
        anyhow::bail!(
            "in [control-tls]: {} is a {} certificate; an edge needs a moat-edge one",
            t.cert.display(),
            tls.role()
        );
    }
    Ok(Some(tls))
}

/// Starts the policy watch and the counter reports against `control`.
pub fn start_control_link(
    control: &[String],
    tls: Option<InternalTls>,
    edge_id: &str,
    policy: &PolicyHandle,
) -> (Arc<LinkStatus>, Arc<Counters>) {
    let status = Arc::new(LinkStatus::default());
    let counters = Arc::new(Counters::default());
    tokio::spawn(moat_edge::control::watch(
        control.to_vec(),
        tls.clone(),
        edge_id.to_owned(),
        policy.clone(),
        Arc::clone(&status),
    ));
    tokio::spawn(moat_edge::control::report(
        control.to_vec(),
        tls,
        edge_id.to_owned(),
        Arc::clone(&counters),
        policy.clone(),
        Arc::clone(&status),
    ));
    (status, counters)
}
