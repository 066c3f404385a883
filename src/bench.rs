//! `moat bench`: an SMTP load generator and a fast next-hop sink, for measuring an edge (or any
//! SMTP server, Postfix included) on loopback.
//!
//! - `moat bench smtp`: N concurrent clients, each opening connections (plain, STARTTLS or
//!   implicit TLS, TLS 1.2 or 1.3) and sending M messages of a given size per connection, until
//!   a duration or a message count is reached; prints a JSON report: messages/s, handshakes/s,
//!   p50/p99/p999 latency per phase, replies by code.
//! - `moat bench sink`: an SMTP server that answers `250` to everything and discards the
//!   content, so that a benchmark measures the edge and not its next hop.
//!
//! The generator lives in the `moat` binary rather than a crate of its own: it reuses the
//! TLS stack the binary already links, and the build budget has no room for another crate.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

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
    },
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
    /// The server, `host:port`.
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
}

/// Runs `moat bench`.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCmd::Sink { listen } => sink(listen).await,
        BenchCmd::TlsHandshake { duration } => {
            let report = tls_handshakes(duration)?;
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

// ---------------------------------------------------------------------------------------------
// Policy propagation.
// ---------------------------------------------------------------------------------------------

/// What a `moat dev` cluster's `endpoints.json` says.
struct Endpoints {
    /// Edges' status URLs.
    edges: Vec<String>,
    /// The control plane, as an operator with the admin certificate.
    admin: crate::client::Target,
    /// The internal PKI's CA and an edge certificate.
    edge_tls: Option<moat_proto::mtls::InternalTls>,
}

impl Endpoints {
    fn load(data: &std::path::Path) -> anyhow::Result<Self> {
        let path = data.join("endpoints.json");
        let endpoints: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?,
        )?;
        let edges = endpoints["edges"]
            .as_array()
            .context("no edges in endpoints.json")?
            .iter()
            .filter_map(|e| e["status"].as_str().map(str::to_owned))
            .collect();
        let internal = &endpoints["internal_tls"];
        let file = |k: &str| internal[k].as_str().map(std::path::PathBuf::from);
        let edge_tls = match (file("ca"), file("edge_cert"), file("edge_key")) {
            (Some(ca), Some(cert), Some(key)) => {
                Some(moat_proto::mtls::InternalTls::load(&ca, &cert, &key)?)
            }
            _ => None,
        };
        Ok(Self {
            edges,
            admin: crate::client::dev_target(data).map_err(anyhow::Error::msg)?,
            edge_tls,
        })
    }
}

async fn propagation(data: &std::path::Path, writes: usize) -> anyhow::Result<serde_json::Value> {
    let Endpoints { edges, admin, .. } = Endpoints::load(data)?;
    let mut samples = Vec::with_capacity(writes);
    for i in 0..writes {
        let op = moat_proto::write_request::Op::PutConnector(moat_proto::Connector {
            tenant: "example.test".into(),
            name: format!("bench-{i}"),
            kind: moat_proto::ConnectorKind::Partner as i32,
            enabled: true,
            sender_ip_addresses: vec![format!("198.51.100.{}/32", i % 250)],
            ..Default::default()
        });
        let index = crate::client::write_op_index(&admin, op)
            .await
            .map_err(anyhow::Error::msg)?;
        let acked = Instant::now();
        let waits = edges.iter().cloned().map(|status| async move {
            while crate::dev::edge_version(&status).await < index {
                if acked.elapsed() > Duration::from_secs(30) {
                    return Err(format!("{status} did not apply version {index} in 30 s"));
                }
            }
            Ok(acked.elapsed())
        });
        let done = futures_join_all(waits).await;
        let slowest = done
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)?
            .into_iter()
            .max()
            .unwrap_or_default();
        samples.push(micros(slowest));
    }
    Ok(serde_json::json!({
        "edges": edges.len(),
        "writes": writes,
        "ack_to_all_edges": percentiles(samples),
    }))
}

/// Awaits every future (a small `join_all`, without another dependency).
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Signal ingestion.
// ---------------------------------------------------------------------------------------------

/// The counter names a batch spreads its deltas over: connector counters that feed no
/// suspicious-activity rule, so the benchmark restricts nothing.
const SIGNAL_NAMES: [&str; 3] = ["sessions", "recipients", "bytes"];

async fn signals(
    data: &std::path::Path,
    edges: usize,
    deltas: usize,
    connectors: usize,
    duration: f64,
) -> anyhow::Result<serde_json::Value> {
    use moat_proto::signal_client::SignalClient;
    let Endpoints {
        admin, edge_tls, ..
    } = Endpoints::load(data)?;
    let run = std::process::id();
    let names: Vec<String> = (0..connectors.max(1))
        .map(|i| format!("bench-signals-{run}-{i}"))
        .collect();
    for (i, name) in names.iter().enumerate() {
        let op = moat_proto::write_request::Op::PutConnector(moat_proto::Connector {
            tenant: "example.test".into(),
            name: name.clone(),
            kind: moat_proto::ConnectorKind::Partner as i32,
            enabled: true,
            sender_ip_addresses: vec![format!("198.18.{}.{}/32", i / 250, i % 250)],
            ..Default::default()
        });
        crate::client::write_op_index(&admin, op)
            .await
            .map_err(anyhow::Error::msg)?;
    }
    // The leader is the node that acknowledges a batch.
    let mut leader = None;
    for addr in &admin.endpoints {
        let Ok(endpoint) = moat_proto::mtls::endpoint(addr, edge_tls.as_ref()) else {
            continue;
        };
        let Ok(channel) = endpoint.connect().await else {
            continue;
        };
        let mut client = SignalClient::new(channel.clone());
        let probe = moat_proto::SignalBatch {
            edge_id: format!("bench-probe-{run}"),
            seq: 1,
            ..Default::default()
        };
        if client.report(probe).await.is_ok() {
            leader = Some(channel);
            break;
        }
    }
    let leader = leader.context("no control node acknowledged a signal batch")?;
    let deadline = Instant::now() + Duration::from_secs_f64(duration);
    let started = Instant::now();
    let tasks: Vec<_> = (0..edges)
        .map(|e| {
            let leader = leader.clone();
            let keys: Vec<String> = names.iter().map(|n| format!("example.test/{n}")).collect();
            tokio::spawn(async move {
                let mut client = SignalClient::new(leader)
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(64 << 20);
                let mut acked: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
                let mut latencies = Vec::new();
                let mut seq = 0;
                let mut refused = 0u64;
                let mut x = (e as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                while Instant::now() < deadline {
                    seq += 1;
                    let mut batch = moat_proto::SignalBatch {
                        edge_id: format!("bench-edge-{run}-{e}"),
                        seq,
                        ..Default::default()
                    };
                    let mut sent = Vec::with_capacity(deltas);
                    for _ in 0..deltas {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let key = &keys[(x % keys.len() as u64) as usize];
                        let name = SIGNAL_NAMES[((x >> 32) % 3) as usize];
                        let value = 1 + (x >> 40) % 10;
                        batch.counters.push(moat_proto::CounterDelta {
                            scope: "connector".into(),
                            key: key.clone(),
                            name: name.into(),
                            value,
                        });
                        sent.push((key.clone(), name, value));
                    }
                    // Like an edge: a refused batch is kept and sent again.
                    let t = Instant::now();
                    loop {
                        match client.report(batch.clone()).await {
                            Ok(_) => break,
                            Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                                refused += 1;
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                    latencies.push(micros(t.elapsed()));
                    for (key, name, value) in sent {
                        *acked.entry((key, name)).or_default() += value;
                    }
                }
                Ok::<_, anyhow::Error>((acked, latencies, refused))
            })
        })
        .collect();
    let mut acked: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
    let mut latencies = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let (a, l, r) = t.await??;
        refused += r;
        for (k, v) in a {
            *acked.entry(k).or_default() += v;
        }
        latencies.extend(l);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let batches = latencies.len();
    let committed = crate::client::read_op(
        &admin,
        moat_proto::ReadRequest {
            kind: "counters".into(),
            tenant: "example.test".into(),
            ..Default::default()
        },
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let mut mismatches = 0;
    for ((key, name), want) in &acked {
        let have = committed
            .counters
            .iter()
            .find(|c| c.scope == "connector" && c.key == *key && c.name == *name)
            .map_or(0, |c| c.total);
        if have != *want {
            mismatches += 1;
        }
    }
    Ok(serde_json::json!({
        "edges": edges,
        "deltas_per_batch": deltas,
        "connectors": names.len(),
        "seconds": elapsed,
        "batches_committed": batches,
        "deltas_committed": batches * deltas,
        "deltas_per_second": (batches * deltas) as f64 / elapsed,
        "send_to_commit": percentiles(latencies),
        "refusals_busy": refused,
        "counters_checked": acked.len(),
        "counters_mismatched": mismatches,
    }))
}

// ---------------------------------------------------------------------------------------------
// The TLS library alone.
// ---------------------------------------------------------------------------------------------

fn tls_handshakes(duration: f64) -> anyhow::Result<serde_json::Value> {
    use rustls_pki_types::pem::PemObject as _;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?.self_signed(&key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())?,
            )?,
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone())?;
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let name = rustls_pki_types::ServerName::try_from("localhost")?;
    let (mut handshakes, mut server_time) = (0u64, Duration::ZERO);
    let started = Instant::now();
    let mut buf = Vec::with_capacity(16 * 1024);
    while started.elapsed().as_secs_f64() < duration {
        let mut c = rustls::ClientConnection::new(Arc::clone(&client), name.clone())?;
        let t = Instant::now();
        let mut s = rustls::ServerConnection::new(Arc::clone(&server))?;
        server_time += t.elapsed();
        while c.is_handshaking() || s.is_handshaking() {
            buf.clear();
            while c.wants_write() {
                c.write_tls(&mut buf)?;
            }
            let t = Instant::now();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd)?;
            }
            s.process_new_packets()?;
            buf.clear();
            while s.wants_write() {
                s.write_tls(&mut buf)?;
            }
            server_time += t.elapsed();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd)?;
            }
            c.process_new_packets()?;
        }
        handshakes += 1;
    }
    Ok(serde_json::json!({
        "library": "rustls 0.23 (ring), TLS 1.3, ECDSA P-256, X25519",
        "handshakes": handshakes,
        "seconds": started.elapsed().as_secs_f64(),
        "server_cpu_seconds": server_time.as_secs_f64(),
        "server_handshakes_per_cpu_second": handshakes as f64 / server_time.as_secs_f64().max(1e-9),
    }))
}

// ---------------------------------------------------------------------------------------------
// Idle sessions.
// ---------------------------------------------------------------------------------------------

/// A process's resident set size in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

async fn idle(
    server: &str,
    pid: u32,
    sessions: usize,
    parallel: usize,
) -> anyhow::Result<serde_json::Value> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let tls = tls_config(&SmtpArgs {
        server: server.to_owned(),
        mode: Mode::Starttls,
        tls_version: "1.3".into(),
        concurrency: 1,
        messages_per_connection: 1,
        size: 0,
        duration: 0.0,
        count: 0,
        from: String::new(),
        to: String::new(),
        ca: None,
        auth: None,
        server_name: "localhost".into(),
    })?;
    let before = rss_kib(pid)?;
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let (tls, sem, server) = (Arc::clone(&tls), Arc::clone(&sem), server.to_owned());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.map_err(|e| e.to_string())?;
            let tcp = TcpStream::connect(&server)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let mut s: BufReader<Box<dyn Io>> = BufReader::new(Box::new(tcp));
            reply(&mut s).await?;
            command(&mut s, "EHLO idle.test\r\n").await?;
            command(&mut s, "STARTTLS\r\n").await?;
            let name =
                rustls_pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
            let t = tokio_rustls::TlsConnector::from(tls)
                .connect(name, s.into_inner())
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            let mut s: BufReader<Box<dyn Io>> = BufReader::new(Box::new(t));
            command(&mut s, "EHLO idle.test\r\n").await?;
            Ok::<_, String>(s)
        }));
    }
    let mut open = Vec::with_capacity(sessions);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for t in tasks {
        match t.await? {
            Ok(s) => open.push(s),
            Err(e) => *errors.entry(e).or_default() += 1,
        }
    }
    // Let the edge settle (buffers shrink after the handshake).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with = rss_kib(pid)?;
    let per = (with.saturating_sub(before)) as f64 / open.len().max(1) as f64;
    drop(open);
    Ok(serde_json::json!({
        "sessions_open": sessions as u64 - errors.values().sum::<u64>(),
        "rss_before_kib": before,
        "rss_with_sessions_kib": with,
        "kib_per_session": per,
        "errors": errors,
    }))
}

// ---------------------------------------------------------------------------------------------
// The sink.
// ---------------------------------------------------------------------------------------------

async fn sink(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!("{}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = sink_session(tcp).await;
        });
    }
}

async fn sink_session(tcp: TcpStream) -> std::io::Result<()> {
    let _ = tcp.set_nodelay(true);
    let (r, mut w) = tcp.into_split();
    let mut r = BufReader::with_capacity(64 * 1024, r);
    w.write_all(b"220 sink ESMTP\r\n").await?;
    let mut line = Vec::with_capacity(1024);
    let mut out = Vec::with_capacity(1024);
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let upper = line
            .iter()
            .take(4)
            .map(u8::to_ascii_uppercase)
            .collect::<Vec<_>>();
        match &upper[..] {
            b"EHLO" => out.extend_from_slice(b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n"),
            b"DATA" => {
                // Replies to the commands pipelined before DATA go first.
                out.extend_from_slice(b"354 go ahead\r\n");
                w.write_all(&out).await?;
                out.clear();
                loop {
                    line.clear();
                    if r.read_until(b'\n', &mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" || line == b".\n" {
                        break;
                    }
                }
                out.extend_from_slice(b"250 2.0.0 discarded\r\n");
            }
            b"QUIT" => {
                w.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            _ => out.extend_from_slice(b"250 2.0.0 ok\r\n"),
        }
        // Pipelined commands are answered together.
        if r.buffer().is_empty() {
            w.write_all(&out).await?;
            out.clear();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The load generator.
// ---------------------------------------------------------------------------------------------

/// A stream the client can run SMTP over, before or after TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What one client saw.
#[derive(Default)]
struct Tally {
    connect: Vec<u32>,
    handshake: Vec<u32>,
    transaction: Vec<u32>,
    replies: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    messages: u64,
    handshakes: u64,
    connections: u64,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.connect.extend(o.connect);
        self.handshake.extend(o.handshake);
        self.transaction.extend(o.transaction);
        for (k, v) in o.replies {
            *self.replies.entry(k).or_default() += v;
        }
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.messages += o.messages;
        self.handshakes += o.handshakes;
        self.connections += o.connections;
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// p50/p99/p999 and max of a phase, in milliseconds.
fn percentiles(mut v: Vec<u32>) -> serde_json::Value {
    if v.is_empty() {
        return serde_json::Value::Null;
    }
    v.sort_unstable();
    let at = |p: f64| {
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        f64::from(v[i.min(v.len() - 1)]) / 1000.0
    };
    serde_json::json!({
        "samples": v.len(),
        "p50_ms": at(0.5),
        "p99_ms": at(0.99),
        "p999_ms": at(0.999),
        "max_ms": at(1.0),
    })
}

fn tls_config(a: &SmtpArgs) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let version: &'static rustls::SupportedProtocolVersion = if a.tls_version == "1.2" {
        &rustls::version::TLS12
    } else {
        &rustls::version::TLS13
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[version])?;
    let config = match &a.ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            use rustls_pki_types::pem::PemObject as _;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                roots.add(cert?)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            // `--ca` not given: any certificate, signatures still checked (the edge's own
            // opportunistic verifier).
            .with_custom_certificate_verifier(Arc::new(
                moat_edge::relay::remote::Unauthenticated::new(),
            ))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Reads one (possibly multi-line) reply; returns its code and text.
async fn reply<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> Result<(u16, String), String> {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
        text.push_str(&line);
        let b = line.as_bytes();
        if b.len() < 4 || b[3] != b'-' {
            let code = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("not a reply: {line:?}"))?;
            return Ok((code, text));
        }
    }
}

async fn command<S: Io>(s: &mut BufReader<S>, line: &str) -> Result<(u16, String), String> {
    s.get_mut()
        .write_all(line.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    reply(s).await
}

/// The reply's code and enhanced code, e.g. `250 2.6.0`.
fn code_key(code: u16, text: &str) -> String {
    let enhanced = text
        .get(4..)
        .and_then(|t| t.split_whitespace().next())
        .filter(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('.'))
        .unwrap_or("");
    format!("{code} {enhanced}").trim().to_owned()
}

/// The message each client sends: headers and a body padded to `size` bytes.
fn message(size: usize) -> Vec<u8> {
    let mut m =
        b"From: bench@sender.test\r\nTo: alice@example.test\r\nSubject: bench\r\n\r\n".to_vec();
    let line = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmn\r\n";
    while m.len() + line.len() <= size {
        m.extend_from_slice(line);
    }
    m.extend_from_slice(b".\r\n");
    m
}

struct Shared {
    args: SmtpArgs,
    tls: Option<Arc<rustls::ClientConfig>>,
    message: Vec<u8>,
    stop: AtomicBool,
    /// Messages started (a `--count` run starts exactly that many).
    started: AtomicU64,
    deadline: Instant,
}

impl Shared {
    fn done(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
            || Instant::now() >= self.deadline
            || (self.args.count > 0 && self.started.load(Ordering::Relaxed) >= self.args.count)
    }

    /// Claims the next message of a `--count` run; false once all are claimed.
    fn claim(&self) -> bool {
        self.args.count == 0 || self.started.fetch_add(1, Ordering::Relaxed) < self.args.count
    }
}

async fn smtp(args: SmtpArgs) -> anyhow::Result<serde_json::Value> {
    let tls = match args.mode {
        Mode::Plain => None,
        _ => Some(tls_config(&args)?),
    };
    let started = Instant::now();
    let shared = Arc::new(Shared {
        message: message(args.size),
        tls,
        stop: AtomicBool::new(false),
        started: AtomicU64::new(0),
        deadline: started + Duration::from_secs_f64(args.duration.max(0.1)),
        args,
    });
    let mut tasks = Vec::new();
    for _ in 0..shared.args.concurrency.max(1) {
        let shared = Arc::clone(&shared);
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while !shared.done() {
                if let Err(e) = connection(&shared, &mut tally).await {
                    *tally.errors.entry(e).or_default() += 1;
                    // Do not spin on a server that refuses connections.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for t in tasks {
        total.merge(t.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let a = &shared.args;
    Ok(serde_json::json!({
        "server": a.server,
        "mode": format!("{:?}", a.mode).to_lowercase(),
        "tls_version": if a.mode == Mode::Plain { None } else { Some(&a.tls_version) },
        "concurrency": a.concurrency,
        "messages_per_connection": a.messages_per_connection,
        "size": a.size,
        "seconds": elapsed,
        "connections": total.connections,
        "messages": total.messages,
        "messages_per_second": total.messages as f64 / elapsed,
        "handshakes": total.handshakes,
        "handshakes_per_second": total.handshakes as f64 / elapsed,
        "latency": {
            "connect": percentiles(total.connect),
            "handshake": percentiles(total.handshake),
            "transaction": percentiles(total.transaction),
        },
        "replies": total.replies,
        "errors": total.errors,
    }))
}

/// One connection: greeting, EHLO, TLS as configured, then messages until the per-connection
/// count or the end of the run.
async fn connection(shared: &Shared, tally: &mut Tally) -> Result<(), String> {
    let a = &shared.args;
    let t0 = Instant::now();
    let tcp = TcpStream::connect(&a.server)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    tally.connections += 1;
    let name = rustls_pki_types::ServerName::try_from(a.server_name.clone())
        .map_err(|e| format!("server name: {e}"))?;
    let mut s: BufReader<Box<dyn Io>> = match (a.mode, &shared.tls) {
        (Mode::Tls, Some(tls)) => {
            let h = Instant::now();
            let t = tokio_rustls::TlsConnector::from(Arc::clone(tls))
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            tally.handshake.push(micros(h.elapsed()));
            tally.handshakes += 1;
            BufReader::new(Box::new(t))
        }
        _ => BufReader::new(Box::new(tcp)),
    };
    let (code, text) = reply(&mut s).await?;
    if code != 220 {
        *tally.replies.entry(code_key(code, &text)).or_default() += 1;
        return Ok(());
    }
    command(&mut s, "EHLO bench.test\r\n").await?;
    tally.connect.push(micros(t0.elapsed()));
    if let (Mode::Starttls, Some(tls)) = (a.mode, &shared.tls) {
        let (code, text) = command(&mut s, "STARTTLS\r\n").await?;
        if code != 220 {
            *tally.replies.entry(code_key(code, &text)).or_default() += 1;
            return Ok(());
        }
        let h = Instant::now();
        let t = tokio_rustls::TlsConnector::from(Arc::clone(tls))
            .connect(name, s.into_inner())
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        tally.handshake.push(micros(h.elapsed()));
        tally.handshakes += 1;
        s = BufReader::new(Box::new(t));
        command(&mut s, "EHLO bench.test\r\n").await?;
    }
    if let Some(creds) = &a.auth {
        use base64::Engine as _;
        let (user, password) = creds.split_once(':').unwrap_or((creds.as_str(), ""));
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        let (code, text) = command(&mut s, &format!("AUTH PLAIN {token}\r\n")).await?;
        if code != 235 {
            *tally.replies.entry(code_key(code, &text)).or_default() += 1;
            return Ok(());
        }
    }
    let envelope = format!("MAIL FROM:<{}>\r\nRCPT TO:<{}>\r\nDATA\r\n", a.from, a.to);
    if a.messages_per_connection == 0 {
        // Handshakes alone: count the session as done once TLS and EHLO are through.
        let _ = command(&mut s, "QUIT\r\n").await;
        shared.started.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    for _ in 0..a.messages_per_connection {
        if shared.done() || !shared.claim() {
            break;
        }
        let t = Instant::now();
        // MAIL, RCPT and DATA pipelined (RFC 2920), then the content.
        s.get_mut()
            .write_all(envelope.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut refused = None;
        for _ in 0..3 {
            let (code, text) = reply(&mut s).await?;
            if refused.is_none() && code >= 400 {
                refused = Some(code_key(code, &text));
            }
        }
        if let Some(k) = refused {
            *tally.replies.entry(k).or_default() += 1;
            command(&mut s, "RSET\r\n").await?;
            continue;
        }
        s.get_mut()
            .write_all(&shared.message)
            .await
            .map_err(|e| e.to_string())?;
        let (code, text) = reply(&mut s).await?;
        tally.transaction.push(micros(t.elapsed()));
        *tally.replies.entry(code_key(code, &text)).or_default() += 1;
        if code == 250 {
            tally.messages += 1;
        }
    }
    let _ = command(&mut s, "QUIT\r\n").await;
    Ok(())
}
