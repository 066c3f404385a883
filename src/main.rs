//! `moat`: one binary for every Moat role. `main` only parses the command line, sets up
//! logging and hands over to the role.

#![forbid(unsafe_code)]

mod admin;
mod bench;
mod cert;
mod client;
mod control;
mod dev;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::sync::Arc;

use anyhow::Context as _;
use moat_edge::control::{Counters, LinkStatus};
use moat_edge::{Edge, EdgeConfig};
use moat_proto::mtls::InternalTls;
use moat_shared::{PolicyHandle, Seed};

/// Moat: an SMTP edge cluster with a control plane.
#[derive(Parser, Debug)]
#[command(name = "moat", version, about)]
struct Cli {
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, global = true, default_value = "info")]
    log: tracing::Level,
    /// Log lines as text for people, or as one JSON object per line for log shippers (with
    /// the SMTP session's span, whose id is also in the message's Received header).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run everything on this machine with embedded defaults: edge, maildir sink,
    /// self-signed certificates and a demo tenant.
    Dev(dev::DevArgs),
    /// Run an SMTP edge node.
    Edge(EdgeArgs),
    /// Run a control-plane node.
    Control(control::ControlArgs),
    /// Administer a cluster: tenants, domains, connectors, users, tokens, membership.
    Admin(admin::AdminArgs),
    /// Benchmark: an SMTP load generator and a discarding next-hop sink.
    Bench(bench::BenchArgs),
    /// The cluster's internal PKI: a CA, and certificates for control nodes, edges and
    /// administrators (mutual TLS on gRPC).
    Cert(cert::CertArgs),
}

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

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_max_level(cli.log)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("moat: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::Admin(args) = cli.command {
        let code = runtime.block_on(admin::run(args));
        return ExitCode::from(u8::try_from(code).unwrap_or(5));
    }
    let result = runtime.block_on(async {
        match cli.command {
            Command::Dev(args) => dev::run(args).await,
            Command::Edge(args) => run_edge(args).await,
            Command::Control(args) => control::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Cert(args) => cert::run(args),
            Command::Admin(_) => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moat: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run_edge(args: EdgeArgs) -> anyhow::Result<()> {
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

/// Latency histogram buckets, in seconds (handshakes, transactions, next hop, raft proposals).
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the process's Prometheus recorder (once; `moat dev` runs an edge and a control
/// node in one process, and both status ports then show the same registry) and returns what
/// renders it for `/metrics`.
pub fn metrics() -> Option<moat_edge::status::Metrics> {
    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
    static HANDLE: std::sync::OnceLock<Option<PrometheusHandle>> = std::sync::OnceLock::new();
    let handle = HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .ok()?
            .install_recorder();
        match recorder {
            Ok(h) => {
                moat_edge::describe_metrics();
                moat_control::describe_metrics();
                Some(h)
            }
            Err(e) => {
                tracing::warn!("no metrics: {e}");
                None
            }
        }
    });
    handle
        .clone()
        .map(|h| -> moat_edge::status::Metrics { Arc::new(move || h.render()) })
}

/// Completes on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
