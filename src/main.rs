//! `moat`: one binary for every Moat role. `main` only parses the command line, sets up
//! logging and hands over to the role.
//!
//! Layout:
//! - [`admin`]: `moat admin`, the kubectl-like client: its grammar, exit codes and one file
//!   per resource.
//! - [`client`]: the control-plane client `admin`, `dev` and `bench` share: discovery
//!   (`endpoints.json`), mutual TLS and tokens, retries, leader redirects, request ids, and
//!   the classification of failures into exit codes.
//! - [`control`]: `moat control`, its configuration (flags and TOML file) and status port.
//! - [`edge`]: `moat edge`, its configuration, seed or control-plane link, status port.
//! - [`dev`]: `moat dev`, the whole system on one machine.
//! - [`bench`](mod@bench): `moat bench`, load generators and a discarding sink.
//! - [`cert`]: `moat cert`, the internal PKI.
//! - [`process`]: logging, the Prometheus recorder and the shutdown signal.

#![forbid(unsafe_code)]

mod admin;
mod bench;
mod cert;
mod client;
mod control;
mod dev;
mod edge;
mod process;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use process::LogFormat;

/// The help heading of the options every `moat` command takes.
const GLOBAL: &str = "Global options";

/// Moat: an SMTP edge cluster with a control plane.
#[derive(Parser, Debug)]
#[command(name = "moat", version, about)]
struct Cli {
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, global = true, help_heading = GLOBAL, default_value = "info")]
    log: tracing::Level,
    /// Log lines as text for people, or as one JSON object per line for log shippers (with
    /// the SMTP session's span, whose id is also in the message's Received header).
    #[arg(long, global = true, help_heading = GLOBAL, value_enum, default_value = "text")]
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
    Edge(edge::EdgeArgs),
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    process::init_logging(cli.log, cli.log_format);
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
            Command::Edge(args) => edge::run(args).await,
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
