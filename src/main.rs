//! `moat`: one binary for every Moat role. `main` only parses the command line, sets up
//! logging and hands over to the role.

#![forbid(unsafe_code)]

mod dev;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use moat_edge::{Edge, EdgeConfig};
use moat_shared::Seed;

/// Moat: an SMTP edge cluster with a control plane.
#[derive(Parser, Debug)]
#[command(name = "moat", version, about)]
struct Cli {
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, global = true, default_value = "info")]
    log: tracing::Level,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run everything on this machine with embedded defaults: edge, maildir sink,
    /// self-signed certificates and a demo tenant.
    Dev(dev::DevArgs),
    /// Run an SMTP edge node.
    Edge {
        /// Edge configuration (TOML); see the `moat_edge::config` docs for every key.
        #[arg(long)]
        config: PathBuf,
        /// Tenants and accepted domains (TOML seed) to enforce.
        #[arg(long)]
        seed: PathBuf,
    },
    /// Run a control-plane node (not available yet).
    Control,
    /// Administer a cluster (not available yet).
    Admin,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_max_level(cli.log)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("moat: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Dev(args) => dev::run(args).await,
            Command::Edge { config, seed } => run_edge(config, seed).await,
            Command::Control | Command::Admin => Err(anyhow::anyhow!(
                "this build has no control plane yet: run `moat dev` or `moat edge --seed`"
            )),
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

async fn run_edge(config: PathBuf, seed: PathBuf) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(&config)
        .with_context(|| format!("reading {}", config.display()))?;
    let cfg = EdgeConfig::parse(&text).with_context(|| format!("in {}", config.display()))?;
    let seed_text =
        std::fs::read_to_string(&seed).with_context(|| format!("reading {}", seed.display()))?;
    let snapshot = Seed::parse(&seed_text)
        .and_then(|s| s.into_snapshot(1))
        .with_context(|| format!("in {}", seed.display()))?;
    let edge = Edge::bind(cfg, moat_shared::PolicyHandle::new(snapshot)).await?;
    for (kind, addr) in edge.local_addrs() {
        tracing::info!("{} listening on {addr}", kind.as_str());
    }
    edge.run(shutdown_signal()).await;
    Ok(())
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
