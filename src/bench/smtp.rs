//! `moat bench smtp`, the load generator: concurrent clients, each connection timed by phase
//! (connect, TLS handshake, transaction), replies counted by code, handshakes counted as full or
//! resumed (rustls' `handshake_kind`); with `--resume` every connection shares one TLS session
//! store, and with several servers the connections go to each in turn. Also the SMTP reply
//! reader and latency statistics the other benchmarks share.

use anyhow::Context as _;
use moat_shared::smtp::{self, Reply, ReplyReader};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{Mode, SmtpArgs};

/// A stream the client can run SMTP over, before or after TLS.
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What one client saw.
#[derive(Default)]
pub(super) struct Tally {
    connect: Vec<u32>,
    handshake: Vec<u32>,
    transaction: Vec<u32>,
    replies: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    messages: u64,
    handshakes: u64,
    /// Handshakes that resumed a session (the rest were full, with or without a retry).
    resumed: u64,
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
        self.resumed += o.resumed;
        self.connections += o.connections;
    }
}

impl Tally {
    /// Counts a completed handshake, full or resumed.
    fn count_handshake(&mut self, c: &rustls::ClientConnection) {
        self.handshakes += 1;
        if c.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            self.resumed += 1;
        }
    }
}

pub(super) fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// p50/p99/p999 and max of a phase, in milliseconds.
pub(super) fn percentiles(mut v: Vec<u32>) -> serde_json::Value {
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

pub(super) fn tls_config(a: &SmtpArgs) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let version: &'static rustls::SupportedProtocolVersion = if a.tls_version == "1.2" {
        &rustls::version::TLS12
    } else {
        &rustls::version::TLS13
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[version])?;
    let mut config = match &a.ca {
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
    // rustls' default keeps sessions in memory and offers them; a benchmark of full
    // handshakes must not, and `--resume` says so explicitly. One store for every connection
    // of the run (the config is shared), keyed by server name: with several servers under one
    // name, a ticket one issued is offered to the next (see `resume.rs` for why not rustls'
    // own cache).
    config.resumption = if a.resume {
        rustls::client::Resumption::store(Arc::new(super::resume::SessionStore::default()))
            .tls12_resumption(rustls::client::Tls12Resumption::SessionIdOrTickets)
    } else {
        rustls::client::Resumption::disabled()
    };
    Ok(Arc::new(config))
}

/// Reads one (possibly multi-line) reply, line by line: what follows it stays in the buffer
/// for the next call (pipelined replies) or is dropped at STARTTLS with the `BufReader`.
pub(super) async fn reply<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> Result<Reply, String> {
    let mut replies = ReplyReader::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut *r)
            .take(smtp::MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return replies
                .finish()
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "connection closed".to_owned());
        }
        replies.feed(&line);
        if let Some(reply) = replies.next_reply().map_err(|e| e.to_string())? {
            return Ok(reply);
        }
    }
}

pub(super) async fn command<S: Io>(s: &mut BufReader<S>, line: &str) -> Result<Reply, String> {
    s.get_mut()
        .write_all(line.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    reply(s).await
}

/// The reply's code and enhanced code, e.g. `250 2.6.0`.
pub(super) fn code_key(r: &Reply) -> String {
    match r.enhanced() {
        Some(e) => format!("{} {e}", r.code),
        None => r.code.to_string(),
    }
}

/// The message each client sends: headers and a body padded to `size` bytes.
pub(super) fn message(size: usize) -> Vec<u8> {
    let mut m =
        b"From: bench@sender.test\r\nTo: alice@example.test\r\nSubject: bench\r\n\r\n".to_vec();
    let line = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmn\r\n";
    while m.len() + line.len() <= size {
        m.extend_from_slice(line);
    }
    smtp::stuff(&m)
}

pub(super) struct Shared {
    args: SmtpArgs,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// `--server`, split at the commas.
    servers: Vec<String>,
    /// Connections opened so far, which picks the next server.
    next_server: AtomicUsize,
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

pub(super) async fn smtp(args: SmtpArgs) -> anyhow::Result<serde_json::Value> {
    let tls = match args.mode {
        Mode::Plain => None,
        _ => Some(tls_config(&args)?),
    };
    let servers: Vec<String> = args
        .server
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    anyhow::ensure!(!servers.is_empty(), "--server names no server");
    let started = Instant::now();
    let shared = Arc::new(Shared {
        servers,
        next_server: AtomicUsize::new(0),
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
        "resume": a.resume,
        "handshakes": total.handshakes,
        "handshakes_per_second": total.handshakes as f64 / elapsed,
        "handshakes_full": total.handshakes - total.resumed,
        "handshakes_resumed": total.resumed,
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
pub(super) async fn connection(shared: &Shared, tally: &mut Tally) -> Result<(), String> {
    let a = &shared.args;
    let n = shared.next_server.fetch_add(1, Ordering::Relaxed);
    let server = &shared.servers[n % shared.servers.len()];
    let t0 = Instant::now();
    let tcp = TcpStream::connect(server)
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
            tally.count_handshake(t.get_ref().1);
            BufReader::new(Box::new(t))
        }
        _ => BufReader::new(Box::new(tcp)),
    };
    let r = reply(&mut s).await?;
    if r.code != 220 {
        *tally.replies.entry(code_key(&r)).or_default() += 1;
        return Ok(());
    }
    command(&mut s, "EHLO bench.test\r\n").await?;
    tally.connect.push(micros(t0.elapsed()));
    if let (Mode::Starttls, Some(tls)) = (a.mode, &shared.tls) {
        let r = command(&mut s, "STARTTLS\r\n").await?;
        if r.code != 220 {
            *tally.replies.entry(code_key(&r)).or_default() += 1;
            return Ok(());
        }
        let h = Instant::now();
        let t = tokio_rustls::TlsConnector::from(Arc::clone(tls))
            .connect(name, s.into_inner())
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        tally.handshake.push(micros(h.elapsed()));
        tally.count_handshake(t.get_ref().1);
        s = BufReader::new(Box::new(t));
        command(&mut s, "EHLO bench.test\r\n").await?;
    }
    if let Some(creds) = &a.auth {
        use base64::Engine as _;
        let (user, password) = creds.split_once(':').unwrap_or((creds.as_str(), ""));
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        let r = command(&mut s, &format!("AUTH PLAIN {token}\r\n")).await?;
        if r.code != 235 {
            *tally.replies.entry(code_key(&r)).or_default() += 1;
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
            let r = reply(&mut s).await?;
            if refused.is_none() && !r.is_positive() {
                refused = Some(code_key(&r));
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
        let r = reply(&mut s).await?;
        tally.transaction.push(micros(t.elapsed()));
        *tally.replies.entry(code_key(&r)).or_default() += 1;
        if r.code == 250 {
            tally.messages += 1;
        }
    }
    let _ = command(&mut s, "QUIT\r\n").await;
    Ok(())
}
