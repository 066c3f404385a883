//! `moat bench`: an SMTP load generator and a fast next-hop sink, for measuring an edge (or any
//! SMTP server, Postfix included) on loopback.
//!
//! - `moat bench smtp`: N concurrent clients, each opening connections (plain, STARTTLS or
//!   implicit TLS, TLS 1.2 or 1.3) and sending M messages of a given size per connection, until
//!   a duration or a message count is reached, against one server or several in turn, with
//!   full handshakes or resuming (`--resume`); prints a JSON report: messages/s, handshakes/s
//!   (full and resumed), p50/p99/p999 latency per phase, replies by code.
//! - `moat bench sink`: an SMTP server that answers `250` to everything and discards the
//!   content, so that a benchmark measures the edge and not its next hop.
//! - `moat bench starttls-responder`: the least an SMTP server does around a STARTTLS
//!   handshake, the yardstick for the edge's handshake-only load.
//!
//! The generator lives in the `moat` binary rather than a crate of its own: it reuses the
//! TLS stack the binary already links, and the build budget has no room for another crate.
//!
//! Layout: this file holds the grammar and the dispatch; [`smtp`](mod@smtp) the load generator (and the
//! reply reader and statistics the others share), [`resume`] its TLS session store for
//! `--resume`, [`sink`](mod@sink) the sink, [`control`] the
//! control-plane benchmarks (policy propagation, signal ingestion), [`policy`](mod@policy) the
//! population benchmark of issue 17, [`tls`] the TLS library
//! alone, [`responder`] the minimal STARTTLS responder, [`idle`](mod@idle) the memory cost of idle sessions.

mod control;
mod idle;
mod policy;
mod responder;
mod resume;
mod sink;
mod smtp;
mod tls;

use std::net::SocketAddr;

use control::{propagation, signals};
use idle::idle;
use policy::policy;
use sink::sink;
use smtp::smtp;
use tls::tls_handshakes;

/// Options of `moat bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCmd,
}

#[derive(clap::Subcommand, Debug)]
enum BenchCmd {
    /// Drive an SMTP server with concurrent clients; prints a JSON report.
    Smtp(SmtpArgs),
    /// Policy propagation on a running `moat dev` cluster: admin writes, and for each the time
    /// from the acknowledgement to every edge enforcing it; prints a JSON report.
    Propagation {
        /// The `moat dev` data directory (its `endpoints.json`).
        #[arg(long, default_value = "./moat-data")]
        data: std::path::PathBuf,
        /// How many writes.
        #[arg(long, default_value_t = 50)]
        writes: usize,
    },
    /// Issue 17's population (or a part of it) loaded into a running `moat dev` cluster: load
    /// time and leader changes, a one-connector change's propagation to every edge, bytes and
    /// edge CPU per change, an edge's resync from scratch, resident memory; prints a JSON
    /// report.
    Policy(policy::PolicyArgs),
    /// Signal ingestion on a running `moat dev` cluster: simulated edges send counter batches
    /// to the leader as fast as it acknowledges them; reports counter deltas committed per
    /// second, the time from send to commit (the counters' staleness), and checks the
    /// committed totals against what was acknowledged.
    Signals {
        /// The `moat dev` data directory (its `endpoints.json`).
        #[arg(long, default_value = "./moat-data")]
        data: std::path::PathBuf,
        /// Simulated edges, each with one batch in flight.
        #[arg(long, default_value_t = 30)]
        edges: usize,
        /// Counter deltas per batch.
        #[arg(long, default_value_t = 1000)]
        deltas: usize,
        /// Connectors the deltas are spread over (created in the demo tenant first).
        #[arg(long, default_value_t = 50)]
        connectors: usize,
        /// How long to send.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// Memory per idle TLS session: opens N STARTTLS sessions to an edge, holds them, and
    /// reports the edge's resident memory (from /proc) before and with them open.
    Idle {
        /// The edge's SMTP listener, `host:port`.
        #[arg(long)]
        server: String,
        /// The edge's process id (its RSS is read from /proc/PID/status).
        #[arg(long)]
        pid: u32,
        /// Sessions to open.
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        /// Connections opened at once.
        #[arg(long, default_value_t = 64)]
        parallel: usize,
    },
    /// The TLS library alone: full TLS 1.3 handshakes (rustls, ECDSA P-256, in memory, no
    /// sockets) for a number of seconds; reports the server side's handshakes per second of
    /// its own CPU time, the physical limit of an edge core.
    TlsHandshake {
        /// How long to run.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Let the client's preferred suite win (TLS_AES_256_GCM_SHA384, a SHA-384 transcript)
        /// instead of the edge's order (TLS_AES_128_GCM_SHA256 first).
        #[arg(long)]
        client_order: bool,
    },
    /// A minimal STARTTLS responder on one current-thread runtime (greeting, EHLO, STARTTLS,
    /// the handshake with the edge's rustls settings, EHLO, QUIT): what TCP, the SMTP exchange
    /// and TLS cost without Moat's session machine and policy. Prints the bound address.
    StarttlsResponder(responder::ResponderArgs),
    /// Run a sink that accepts every message and discards it.
    Sink {
        /// Where to listen (port 0: any; the bound address is printed on standard output).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

/// How a client reaches TLS.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// No TLS.
    Plain,
    /// STARTTLS after EHLO.
    Starttls,
    /// TLS from the first byte (port 465 style).
    Tls,
}

#[derive(clap::Args, Debug)]
struct SmtpArgs {
    /// The server, `host:port`; several, separated by commas, are used in turn, one connection
    /// each (edges behind a load balancer: with `--resume`, a ticket from one is offered to
    /// the next).
    #[arg(long)]
    server: String,
    /// Plain, STARTTLS or implicit TLS.
    #[arg(long, value_enum, default_value = "starttls")]
    mode: Mode,
    /// TLS version: 1.2 or 1.3.
    #[arg(long, default_value = "1.3", value_parser = ["1.2", "1.3"])]
    tls_version: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Messages per connection (0 measures handshakes alone, 50 the message path).
    #[arg(long, default_value_t = 1)]
    messages_per_connection: usize,
    /// Message size in bytes (headers included).
    #[arg(long, default_value_t = 2048)]
    size: usize,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many messages (0: no limit).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Envelope sender.
    #[arg(long, default_value = "bench@sender.test")]
    from: String,
    /// Envelope recipient.
    #[arg(long, default_value = "alice@example.test")]
    to: String,
    /// CA certificate (PEM) to verify the server with; without it the certificate is not
    /// verified (a benchmark on loopback, never for real mail).
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// Log in with AUTH PLAIN as `USER:PASSWORD` (submission and smtps listeners).
    #[arg(long, value_name = "USER:PASSWORD")]
    auth: Option<String>,
    /// Name to verify the server certificate against.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Keep TLS sessions (TLS 1.3 tickets, TLS 1.2 tickets or session ids) in one store shared
    /// by every connection and offer them, as an MTA that comes back does; without it every
    /// handshake is a full one. The report counts full and resumed handshakes either way.
    #[arg(long)]
    resume: bool,
}

/// Runs `moat bench`.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCmd::Sink { listen } => sink(listen).await,
        BenchCmd::StarttlsResponder(a) => responder::responder(a).await,
        BenchCmd::TlsHandshake {
            duration,
            client_order,
        } => {
            let report = tls_handshakes(duration, client_order)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        BenchCmd::Idle {
            server,
            pid,
            sessions,
            parallel,
        } => {
            let report = idle(&server, pid, sessions, parallel).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        BenchCmd::Signals {
            data,
            edges,
            deltas,
            connectors,
            duration,
        } => {
            let report = signals(&data, edges, deltas, connectors, duration).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        BenchCmd::Policy(a) => {
            let report = policy(a).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        BenchCmd::Propagation { data, writes } => {
            let report = propagation(&data, writes).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        BenchCmd::Smtp(a) => {
            let report = smtp(a).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}
