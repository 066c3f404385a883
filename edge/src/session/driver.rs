//! The tokio driver: connects a [`Session`] to its socket, the TLS upgrade, the policy and the
//! next hop. It only moves bytes, keeps time and counts: protocol decisions are the machine's
//! ([`super::machine`]), policy decisions the verdict's ([`crate::verdict`]), whose
//! [`Denial`]s the driver counts by [`Denial::counter`] and answers with [`Denial::reply`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use moat_shared::exchange::Sighting;
use moat_shared::signal::{self, AuthCounter, ConnectorCounter, TlsVersion, Unit};
use moat_shared::submission::speed_bump_draw;
use moat_shared::{ConnectorId, PolicyHandle, PolicySnapshot, TenantId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::timeout;

use super::command::Address;
use super::meters::Meters;
use super::reply::{self, Reply};
use super::{Action, Envelope, Secret, Session, SessionFacts, TlsFacts};
use crate::auth::{self, Throttle};
use crate::config::LegacyTls;
use crate::control::Counters;
use crate::headers::HeaderFrom;
use crate::legacy::{self, Hello, LegacyEngine};
use crate::relay::{NextHop, Txn};
use crate::tls::Certificates;
use crate::verdict::{self, Counted, Denial, Sender};

/// A client connection, before or after TLS.
pub enum Io {
    /// Clear text.
    Plain(TcpStream),
    /// TLS (implicit, or after STARTTLS).
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS 1.0/1.1 through OpenSSL.
    Legacy(Box<tokio_openssl::SslStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => {
                let read = Pin::new(&mut **s).poll_read(cx, buf);
                // tokio-rustls only writes when asked to: records rustls queued while reading
                // (the alert that refuses a renegotiation) would wait for the next reply. A
                // read that is pending anyway pushes them out now.
                if read.is_pending() && s.get_ref().1.wants_write() {
                    if let Poll::Ready(Err(e)) = Pin::new(&mut **s).poll_flush(cx) {
                        return Poll::Ready(Err(e));
                    }
                }
                read
            }
            Io::Legacy(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Io::Legacy(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s).poll_flush(cx),
            Io::Legacy(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Io::Legacy(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// What every session of an edge shares.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The listener's metrics.
    pub meters: Arc<Meters>,
    /// Node name for reply tags.
    pub node: String,
    /// The current policy.
    pub policy: PolicyHandle,
    /// Where mail goes.
    pub next_hop: Arc<NextHop>,
    /// Where relayed mail goes, when it is not `next_hop`.
    pub outbound: Option<Arc<NextHop>>,
    /// Server certificates, when TLS is configured.
    pub certs: Option<Certificates>,
    /// The OpenSSL engine for TLS 1.0/1.1 clients, when the listener accepts them.
    pub legacy: Option<LegacyEngine>,
    /// What TLS 1.0/1.1 sessions meet on this listener.
    pub legacy_rule: LegacyTls,
    /// Whether the listener authenticates its clients (submission, smtps).
    pub auth: bool,
    /// SMTP AUTH failures, edge-wide.
    pub throttle: Arc<Throttle>,
    /// Counters reported to the control plane.
    pub counters: Arc<Counters>,
    /// SPF/DKIM/DMARC checks of connector mail, when enabled.
    pub checker: Option<crate::mailauth::Checker>,
    /// This edge's host name (the SPF `host` identity).
    pub hostname: String,
    /// How long to wait for a command.
    pub idle_timeout: Duration,
    /// How long to wait for message content.
    pub data_timeout: Duration,
    /// Becomes `true` when the edge starts draining.
    pub shutdown: watch::Receiver<bool>,
}

/// Size of one socket read.
const READ_CHUNK: usize = 64 * 1024;

/// What the reply buffer starts with: a greeting and an EHLO reply without growing it.
const REPLY_BUFFER: usize = 512;

/// Runs the TLS handshake on a clear-text connection: OpenSSL for a client that offers only
/// TLS 1.0/1.1 when the listener has the legacy engine, rustls otherwise.
pub async fn handshake(tcp: TcpStream, shared: &Shared) -> Result<(Io, TlsFacts), String> {
    let t0 = std::time::Instant::now();
    let r = handshake_inner(tcp, shared).await;
    // `resumed`: the client offered a ticket (or session) the edge could open.
    let resumed = matches!(
        &r,
        Ok((Io::Tls(tls), _))
            if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    );
    shared
        .meters
        .handshake(t0.elapsed().as_secs_f64(), r.is_ok(), resumed);
    r
}

async fn handshake_inner(tcp: TcpStream, shared: &Shared) -> Result<(Io, TlsFacts), String> {
    let limit = shared.idle_timeout;
    if let Some(engine) = &shared.legacy {
        match legacy::peek_hello(&tcp, limit).await? {
            Hello::Legacy => {
                let tls = engine.accept(tcp, limit).await?;
                let facts = legacy::facts(tls.ssl());
                return Ok((Io::Legacy(Box::new(tls)), facts));
            }
            Hello::Fallback => {
                let mut tcp = tcp;
                let _ = timeout(limit, tcp.write_all(&legacy::INAPPROPRIATE_FALLBACK)).await;
                return Err("TLS 1.0/1.1 fallback (TLS_FALLBACK_SCSV) refused".into());
            }
            Hello::Modern | Hello::NotTls => {}
        }
    }
    let Some(certs) = &shared.certs else {
        return Err("no certificate configured".into());
    };
    let loaded = certs.current();
    let acceptor = tokio_rustls::TlsAcceptor::from(loaded.config.clone());
    match timeout(limit, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => {
            let facts = crate::tls::facts(tls.get_ref().1, loaded.verifier.as_deref());
            Ok((Io::Tls(Box::new(tls)), facts))
        }
        Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
        Err(_) => Err("TLS handshake timed out".into()),
    }
}

/// What the driver tracks of a session for policy and the TLS usage report.
#[derive(Debug, Default)]
struct Tracking {
    /// The tenant the session is attributed to: the user's, or on listeners without AUTH the
    /// tenant of the first accepted recipient.
    tenant: Option<TenantId>,
    /// Recipients accepted in the open transaction.
    rcpts: u64,
    /// The open transaction's envelope sender.
    from: Option<Address>,
    /// The open transaction's envelope, until its next-hop transaction is opened.
    envelope: Option<Envelope>,
    /// Whether the open next-hop transaction goes to the outbound next hop.
    outbound: bool,
    /// The connector (`tenant/name`) the open transaction arrived through, from its first
    /// accepted recipient.
    connector: Option<ConnectorId>,
    /// Whether the transaction's connector is an OnPremises one.
    onprem: bool,
    /// Connectors whose session this one was already counted in.
    counted: Vec<ConnectorId>,
    /// Relayed recipients accepted in the open transaction.
    relayed: u64,
    /// Content octets of the open transaction.
    bytes: u64,
    /// The header From of the open transaction's message.
    header_from: HeaderFrom,
    /// A copy of the message for the DKIM check (`None` once it grew past the limit).
    copy: Option<Vec<u8>>,
    /// When the open transaction started (MAIL).
    started: Option<std::time::Instant>,
    /// When its next-hop transaction was opened.
    hop_opened: Option<std::time::Instant>,
}

impl Tracking {
    /// A new transaction (MAIL).
    fn open(&mut self, from: Option<Address>) {
        self.envelope = None;
        self.outbound = false;
        self.rcpts = 0;
        self.relayed = 0;
        self.bytes = 0;
        self.from = from;
        self.connector = None;
        self.onprem = false;
        self.header_from = HeaderFrom::default();
        self.copy = Some(Vec::new());
        self.started = Some(std::time::Instant::now());
        self.hop_opened = None;
    }

    /// Counts an accepted recipient against its connector (the first one fixes the
    /// transaction's connector and counts the session once per connector).
    fn accepted(&mut self, shared: &Shared, snapshot: &PolicySnapshot, a: &verdict::Accepted) {
        self.rcpts += 1;
        if a.relay {
            self.relayed += 1;
        }
        if self.connector.is_none() {
            if let Some(c) = &a.connector {
                self.connector = Some(c.clone());
                self.onprem = verdict::onprem::judged(snapshot, a);
                if !self.counted.contains(c) {
                    self.counted.push(c.clone());
                    count(shared, c, ConnectorCounter::Sessions, 1);
                }
            }
        }
    }

    /// Counts the message the next hop answered with `r`, which came over `tls`.
    fn delivered(
        &mut self,
        shared: &Shared,
        snapshot: &PolicySnapshot,
        r: &Reply,
        tls: TlsVersion,
    ) {
        let Some(c) = &self.connector else { return };
        // One key for the message's several counters.
        let key = c.to_string();
        let add = |counter: ConnectorCounter, v: u64| {
            shared
                .counters
                .add(signal::CONNECTOR, &key, counter.as_str(), v)
        };
        if !r.is_positive() {
            add(
                if r.is_transient() {
                    ConnectorCounter::Nexthop4xx
                } else {
                    ConnectorCounter::Nexthop5xx
                },
                1,
            );
            return;
        }
        add(ConnectorCounter::Messages, 1);
        add(ConnectorCounter::Recipients, self.rcpts);
        add(ConnectorCounter::Bytes, self.bytes);
        add(ConnectorCounter::Relay, self.relayed);
        shared.counters.add(signal::INBOUND, &key, tls.as_str(), 1);
        let from = self.from.as_ref().map(|a| a.domain.to_ascii_lowercase());
        if let Some(from) = &from {
            if !verdict::relay::provisioned(snapshot, c, from) {
                add(ConnectorCounter::Unprovisioned, 1);
                shared.counters.add(signal::NON_ACCEPTED, &key, from, 1);
                if let Some(id) = self.header_from.message_id() {
                    shared.counters.sample(&key, from, &id);
                }
            }
            if self.header_from.domain().is_some_and(|h| h != *from) {
                add(ConnectorCounter::Mismatch, 1);
            }
        }
    }

    /// The on-premises Exchange server that sent the open transaction's message, from its
    /// Received stamp, when the message came through an OnPremises connector.
    fn sighting(&self) -> Option<(TenantId, Sighting, String)> {
        if !self.onprem {
            return None;
        }
        let tenant = self.connector.as_ref()?.tenant.clone();
        let (s, line) = moat_shared::exchange::evidence(&self.header_from.text())?;
        Some((tenant, s, line))
    }

    /// Reports a sighting: the control plane classifies the build and runs the server's life
    /// cycle. A compliant build from a server edges are enforcing is sent at once, so that
    /// enforcement ends on every edge within the second.
    fn sighted(
        &self,
        shared: &Shared,
        snapshot: &PolicySnapshot,
        tenant: &TenantId,
        s: &Sighting,
        line: &str,
    ) {
        let Some(c) = &self.connector else { return };
        let name = signal::onprem_server(&s.server, &s.build.to_string());
        let key = c.to_string();
        shared.counters.add(signal::ONPREM, &key, &name, 1);
        shared.counters.evidence(&key, &name, line);
        if verdict::onprem::ends_enforcement(snapshot, tenant, s) {
            shared.counters.send_now();
        }
    }

    /// Attributes the session to `tenant` (once) and counts it in the TLS usage report.
    fn attribute(&mut self, shared: &Shared, facts: &SessionFacts, tenant: &TenantId, user: &str) {
        if self.tenant.is_none() {
            self.tenant = Some(tenant.clone());
            count_tls(shared, facts, tenant, user, Unit::Sessions);
        }
    }
}

fn count_tls(shared: &Shared, facts: &SessionFacts, tenant: &TenantId, user: &str, unit: Unit) {
    let (version, cipher) = facts
        .tls
        .as_ref()
        .map_or(("none", ""), |t| (&*t.version, &*t.cipher));
    let c = &shared.counters;
    let usage = signal::tls_usage(unit, &facts.listener, version, cipher);
    c.add(signal::TLS, tenant.as_str(), &usage, 1);
    if legacy::is_legacy(version) {
        let ip = facts.peer.ip().to_string();
        let client = signal::legacy_client(unit, &ip, user, version);
        c.add(signal::TLS_LEGACY, tenant.as_str(), &client, 1);
    }
}

/// The session's TLS version as the reports count it.
fn tls_version(facts: &SessionFacts) -> TlsVersion {
    TlsVersion::of(facts.tls.as_ref().map(|t| &*t.version))
}

/// Adds `v` to the connector counter `counter` of `connector` (keyed `tenant/name`).
fn count(shared: &Shared, connector: &ConnectorId, counter: ConnectorCounter, v: u64) {
    shared.counters.add(
        signal::CONNECTOR,
        &connector.to_string(),
        counter.as_str(),
        v,
    );
}

/// What the legacy-TLS rules need of this session: the listener's rule, its TLS version and
/// its speed bump draw.
fn legacy(shared: &Shared, facts: &SessionFacts) -> verdict::tls::Legacy {
    verdict::tls::Legacy {
        rule: shared.legacy_rule,
        legacy: facts
            .tls
            .as_ref()
            .is_some_and(|t| legacy::is_legacy(&t.version)),
        draw: speed_bump_draw(&facts.id),
    }
}

/// Counts a refusal by its reason and gives its reply.
fn deny(shared: &Shared, facts: &SessionFacts, denial: &Denial) -> Reply {
    match denial.counter() {
        Some(Counted::Connector { connector, counter }) => count(shared, connector, counter, 1),
        Some(Counted::Auth(counter)) => {
            shared.counters.add(signal::AUTH, "-", counter.as_str(), 1);
        }
        None => {}
    }
    match denial {
        Denial::SpeedBump { .. } => {
            tracing::info!(session = %facts.id, "legacy TLS session refused by the speed bump");
        }
        Denial::OnpremThrottled { .. } | Denial::OnpremBlocked { .. } => {
            let action = if matches!(denial, Denial::OnpremBlocked { .. }) {
                "blocked"
            } else {
                "throttled"
            };
            metrics::counter!("moat_edge_onprem_refusals_total", "action" => action).increment(1);
        }
        _ => tracing::debug!(session = %facts.id, ?denial, "policy refusal"),
    }
    denial.reply()
}

/// Checks a login and the rules of the listener on who may log in over which TLS version.
async fn authenticate(
    shared: &Shared,
    facts: &SessionFacts,
    track: &mut Tracking,
    login: &str,
    password: Secret,
) -> Reply {
    let login = login.to_lowercase();
    let ip = facts.peer.ip();
    if shared
        .throttle
        .blocked(ip, &login, std::time::Instant::now())
    {
        shared
            .counters
            .add(signal::AUTH, "-", AuthCounter::Throttled.as_str(), 1);
        tracing::info!(session = %facts.id, %login, "AUTH throttled");
        return reply::AUTH_THROTTLED.into();
    }
    let snapshot = shared.policy.load();
    if auth::locked_out(&snapshot, &login, ip, snapshot.now_ms()) {
        shared
            .counters
            .add(signal::AUTH, "-", AuthCounter::LockedOut.as_str(), 1);
        tracing::info!(session = %facts.id, %login, "AUTH locked out cluster-wide");
        return reply::AUTH_THROTTLED.into();
    }
    let user = snapshot.user(&login).cloned();
    let checked = user.clone();
    let ok = tokio::task::spawn_blocking(move || auth::verify(checked.as_ref(), &password.0))
        .await
        .unwrap_or(false);
    let Some(user) = user.filter(|_| ok) else {
        shared
            .throttle
            .failed(ip, &login, std::time::Instant::now());
        shared
            .counters
            .add(signal::AUTH, "-", AuthCounter::Failures.as_str(), 1);
        // Counted across the cluster too, when the login belongs to a tenant.
        if auth::login_tenant(&snapshot, &login).is_some() {
            let client = auth::client_address(ip).to_string();
            shared
                .counters
                .add(signal::AUTH_FAILURE, &login, &client, 1);
        }
        tracing::info!(session = %facts.id, %login, "AUTH failed");
        return reply::AUTH_FAILED.into();
    };
    shared.throttle.succeeded(&login);
    track.attribute(shared, facts, &user.tenant, &user.address);
    let verdict = verdict::tls::at_auth(
        &snapshot,
        &legacy(shared, facts),
        &user.tenant,
        snapshot.now_ms(),
    );
    let r = match verdict {
        Ok(()) => reply::AUTH_OK.into(),
        Err(denial) => deny(shared, facts, &denial),
    };
    tracing::info!(session = %facts.id, %login, reply = %Reply::summary(&r), "AUTH");
    r
}

/// Drives `session` over `io` until it ends. Any transaction still open at the end is
/// aborted: nothing the client was not told `250` about is delivered.
pub async fn run(io: Io, mut session: Session, shared: &Shared) {
    let active = shared.meters.sessions_active();
    active.increment(1.0);
    drive(io, &mut session, shared).await;
    active.decrement(1.0);
    let tls = session.facts().tls.as_ref();
    shared
        .meters
        .session_ended(tls.map_or("none", |t| &*t.version));
}

/// The route label of a next hop.
fn route(outbound: bool) -> &'static str {
    if outbound {
        "outbound"
    } else {
        "inbound"
    }
}

async fn drive(mut io: Io, session: &mut Session, shared: &Shared) {
    let mut out = Vec::with_capacity(REPLY_BUFFER);
    let mut txn: Option<Txn> = None;
    // Reads go into spare capacity: nothing is zeroed, and an idle session's pages are never
    // touched (the profile of a handshake-only load showed 64 KiB memsets per session).
    let mut buf = Vec::with_capacity(READ_CHUNK);
    let mut shutdown = shared.shutdown.clone();
    let mut track = Tracking::default();
    // Bytes already there before the greeting is sent: an early talker (RFC 5321 section 3.1
    // makes the client wait for the greeting), refused when the listener forbids
    // unauthenticated pipelining. A zero timeout polls the read once without waiting.
    if let Ok(Ok(n @ 1..)) = timeout(Duration::ZERO, io.read_buf(&mut buf)).await {
        session.talked_early(&buf[..n]);
        buf.clear();
    }
    loop {
        while let Some(action) = session.poll(SystemTime::now()) {
            match action {
                Action::Send(r) => {
                    shared.meters.reply(&r);
                    tracing::debug!(code = r.code, enhanced = %r.status, "reply");
                    r.render(&shared.node, &mut out);
                }
                Action::Authenticate { login, password } => {
                    let r =
                        authenticate(shared, session.facts(), &mut track, &login, password).await;
                    session.resolve(r, SystemTime::now());
                }
                Action::Open(envelope) => {
                    track.open(envelope.from.clone());
                    // The next hop is chosen, and its transaction opened, at the first accepted
                    // recipient: relay goes to the outbound next hop, the rest inbound.
                    let snapshot = shared.policy.load();
                    let facts = session.facts();
                    let verdict = verdict::mail(
                        &snapshot,
                        &Sender::of(&snapshot, facts),
                        envelope.from.as_ref(),
                        &legacy(shared, facts),
                        snapshot.now_ms(),
                    );
                    let r = match verdict {
                        Err(denial) => deny(shared, facts, &denial),
                        Ok(()) => {
                            track.envelope = Some(envelope);
                            reply::SENDER_OK.into()
                        }
                    };
                    session.resolve(r, SystemTime::now());
                }
                Action::AddRecipient(to) => {
                    let snapshot = shared.policy.load();
                    let facts = session.facts();
                    let sender = Sender::of(&snapshot, facts);
                    let verdict = verdict::recipient(&snapshot, &sender, track.from.as_ref(), &to);
                    let r = match verdict {
                        Err(denial) => deny(shared, facts, &denial),
                        Ok(accepted) => {
                            if let Some(t) = &accepted.tenant {
                                track.attribute(shared, facts, t, "");
                            }
                            let outbound = accepted.relay && shared.outbound.is_some();
                            if txn.is_none() {
                                let hop = match (outbound, &shared.outbound) {
                                    (true, Some(o)) => o,
                                    _ => &shared.next_hop,
                                };
                                if let Some(envelope) = &track.envelope {
                                    match hop.open(envelope).await {
                                        Ok(t) => {
                                            txn = Some(t);
                                            track.outbound = outbound;
                                            track.hop_opened = Some(std::time::Instant::now());
                                        }
                                        Err(r) => {
                                            metrics::counter!(
                                                "moat_edge_next_hop_failures_total",
                                                "route" => route(outbound)
                                            )
                                            .increment(1);
                                            session.resolve(r, SystemTime::now());
                                            continue;
                                        }
                                    }
                                }
                            }
                            let r = match txn.as_mut() {
                                Some(_) if track.outbound != outbound => reply::ROUTE_SPLIT.into(),
                                Some(t) => t.rcpt(&to).await,
                                None => reply::LOCAL_ERROR.into(),
                            };
                            if r.is_positive() {
                                track.accepted(shared, &snapshot, &accepted);
                            }
                            r
                        }
                    };
                    session.resolve(r, SystemTime::now());
                }
                Action::StartBody => {
                    let r = match txn.as_mut() {
                        Some(t) => t.start_body().await,
                        None => reply::LOCAL_ERROR.into(),
                    };
                    session.resolve(r, SystemTime::now());
                }
                Action::Body(content) => {
                    if let Some(t) = txn.as_mut() {
                        track.bytes += content.len() as u64;
                        track.header_from.feed(&content);
                        if let (Some(copy), Some(c)) = (&mut track.copy, &shared.checker) {
                            if copy.len() + content.len() <= c.max_message {
                                copy.extend_from_slice(&content);
                            } else {
                                track.copy = None;
                            }
                        }
                        t.body(&content).await;
                    }
                }
                Action::EndBody => {
                    // Headers are known only now: an out-of-date Exchange server in a throttled
                    // or blocked minute has its next-hop transaction abandoned.
                    let snapshot = shared.policy.load();
                    let sighting = track.sighting();
                    let refusal = match (&sighting, &track.connector) {
                        (Some((t, s, _)), Some(c)) => {
                            verdict::onprem::refusal(&snapshot, c, t, s, snapshot.now_ms()).err()
                        }
                        _ => None,
                    };
                    let r: Reply = match (txn.take(), &refusal) {
                        (Some(t), Some(refused)) => {
                            t.abort().await;
                            deny(shared, session.facts(), refused)
                        }
                        (Some(t), None) => {
                            let r = t.finish().await;
                            let route = route(track.outbound);
                            if let Some(t0) = track.hop_opened.take() {
                                metrics::histogram!("moat_edge_next_hop_duration_seconds", "route" => route)
                                    .record(t0.elapsed().as_secs_f64());
                            }
                            if !r.is_positive() {
                                metrics::counter!("moat_edge_next_hop_failures_total", "route" => route)
                                    .increment(1);
                            }
                            r
                        }
                        (None, refused) => {
                            // No next-hop transaction to abandon; a refusal is still counted.
                            if let Some(refused) = refused {
                                deny(shared, session.facts(), refused);
                            }
                            reply::LOCAL_ERROR.into()
                        }
                    };
                    if let Some(t0) = track.started.take() {
                        shared.meters.transaction(t0.elapsed().as_secs_f64());
                    }
                    tracing::info!(session = %session.facts().id, reply = %r.summary(), "message");
                    if let Some((tenant, s, line)) = &sighting {
                        track.sighted(shared, &snapshot, tenant, s, line);
                    }
                    if refusal.is_none() {
                        track.delivered(shared, &snapshot, &r, tls_version(session.facts()));
                    }
                    if let (true, Some(checker), Some(connector)) =
                        (r.is_positive(), &shared.checker, &track.connector)
                    {
                        let facts = session.facts();
                        let (checker, counters) = (checker.clone(), Arc::clone(&shared.counters));
                        let host = shared.hostname.clone();
                        let delivered = crate::mailauth::Delivered {
                            connector: connector.clone(),
                            ip: facts.peer.ip(),
                            helo: facts.helo.clone().unwrap_or_default(),
                            mail_from: track
                                .from
                                .as_ref()
                                .map(ToString::to_string)
                                .unwrap_or_default(),
                            message: track.copy.take(),
                        };
                        tokio::spawn(async move {
                            checker.check_and_count(&counters, &host, &delivered).await;
                        });
                    }
                    if r.is_positive() {
                        let facts = session.facts();
                        let user = facts.auth.as_deref().unwrap_or("");
                        if let Some(tenant) = &track.tenant {
                            count_tls(shared, facts, tenant, user, Unit::Messages);
                            if !user.is_empty() {
                                let name = signal::auth_client(tls_version(facts), user);
                                shared
                                    .counters
                                    .add(signal::AUTH_TLS, tenant.as_str(), &name, 1);
                            }
                        }
                        if !user.is_empty() {
                            let n = std::mem::take(&mut track.rcpts);
                            shared
                                .counters
                                .add(signal::USER, user, signal::RECIPIENTS, n);
                        }
                    }
                    session.resolve(r, SystemTime::now());
                }
                Action::Abort => {
                    if let Some(t) = txn.take() {
                        t.abort().await;
                    }
                }
                Action::UpgradeTls => {
                    if flush(&mut io, &mut out, shared.idle_timeout).await.is_err() {
                        return;
                    }
                    let Io::Plain(tcp) = io else {
                        return;
                    };
                    match handshake(tcp, shared).await {
                        Ok((tls, facts)) => {
                            io = tls;
                            session.tls_established(facts);
                        }
                        Err(e) => {
                            tracing::info!(session = %session.facts().id, "{e}");
                            return;
                        }
                    }
                }
                Action::Close => {
                    let _ = flush(&mut io, &mut out, shared.idle_timeout).await;
                    let _ = timeout(Duration::from_secs(5), io.shutdown()).await;
                    if let Some(t) = txn.take() {
                        t.abort().await;
                    }
                    return;
                }
            }
        }
        if flush(&mut io, &mut out, shared.idle_timeout).await.is_err() {
            break;
        }
        let wait = if session.in_body() {
            shared.data_timeout
        } else {
            // A command trickling in byte by byte does not reset its own clock.
            let left = session.command_deadline().map(|d| {
                d.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
            });
            left.map_or(shared.idle_timeout, |l| l.min(shared.idle_timeout))
        };
        let idle = session.is_idle();
        tokio::select! {
            read = timeout(wait, io.read_buf(&mut buf)) => match read {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => {
                    session.receive(&buf[..n]);
                    buf.clear();
                }
                Err(_) => session.timeout(),
            },
            _ = shutdown.wait_for(|&s| s), if idle => session.shutdown(),
        }
    }
    if let Some(t) = txn.take() {
        t.abort().await;
    }
}

async fn flush(io: &mut Io, out: &mut Vec<u8>, limit: Duration) -> Result<(), ()> {
    if out.is_empty() {
        return Ok(());
    }
    let r = timeout(limit, async {
        io.write_all(out).await?;
        io.flush().await
    })
    .await;
    out.clear();
    match r {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}
