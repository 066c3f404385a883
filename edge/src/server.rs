//! Binding the listeners, admitting sessions (global and per-IP limits), and draining.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use moat_shared::PolicyHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::Instrument as _;

use crate::auth::Throttle;
use crate::config::{
    EdgeConfig, LegacyTls, ListenerConfig, ListenerKind, NextHopConfig, TlsVersion,
};
use crate::control::Counters;
use crate::legacy::LegacyEngine;
use crate::proxy;
use crate::relay::NextHop;
use crate::session::driver::{self, Io, Shared};
use crate::session::meters::Meters;
use crate::session::reply::{self, Reply};
use crate::session::{Prepared, Session, SessionConfig, SessionFacts};
use crate::tls::Certificates;

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// A listener's address is taken or not allowed.
    #[error("cannot listen on {address} for the {kind} listener: {source}")]
    Bind {
        /// The listener kind.
        kind: &'static str,
        /// The address.
        address: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Entry point: an edge is bound, then run.
#[derive(Debug)]
pub struct Edge;

impl Edge {
    /// Validates `cfg`, loads TLS and binds every listener, so errors surface before any
    /// session is accepted.
    /// Counters for the control plane (TLS usage, SMTP AUTH users' recipients) go into
    /// `counters`.
    pub async fn bind(
        cfg: EdgeConfig,
        policy: PolicyHandle,
        counters: Arc<Counters>,
    ) -> Result<BoundEdge, EdgeError> {
        if cfg.listeners.is_empty() {
            return Err(EdgeError::Config("no [[listener]] configured".into()));
        }
        let next_hop_cfg = cfg
            .next_hop
            .clone()
            .ok_or_else(|| EdgeError::Config("no [next-hop] configured".into()))?;
        // One ticketer for every rustls listener: tickets resume on any listener and any edge.
        let ticketer = Arc::new(crate::tls::Ticketer::new(policy.clone()));
        let edge_certs = match cfg.tls.clone() {
            Some(t) => Some(Certificates::load_and_watch(
                t,
                Some(Arc::clone(&ticketer)),
            )?),
            None => None,
        };
        let mut certs = Vec::new();
        for l in &cfg.listeners {
            let tls_cfg = l.tls.clone().or_else(|| cfg.tls.clone());
            let own = match l.tls.clone() {
                Some(t) => Some(Certificates::load_and_watch(
                    t,
                    Some(Arc::clone(&ticketer)),
                )?),
                None => edge_certs.clone(),
            };
            let legacy = match (l.tls_min_version, tls_cfg) {
                (TlsVersion::Tls12, _) => None,
                (min, Some(t)) => Some(LegacyEngine::load_and_watch(t, min)?),
                (_, None) => {
                    return Err(EdgeError::Config(format!(
                        "the {} listener on {} sets tls-min-version but has no certificate",
                        l.kind.as_str(),
                        l.address
                    )))
                }
            };
            if l.legacy_tls == LegacyTls::OptIn && l.kind == ListenerKind::Mx {
                return Err(EdgeError::Config(format!(
                    "the mx listener on {}: legacy-tls = \"opt-in\" decides at AUTH, which only \
                     submission and smtps listeners offer",
                    l.address
                )));
            }
            let needs = match l.kind {
                ListenerKind::Smtps => Some("implicit TLS"),
                ListenerKind::Submission => Some("STARTTLS before MAIL"),
                ListenerKind::Mx => None,
            };
            if let (Some(why), None) = (needs, &own) {
                return Err(EdgeError::Config(format!(
                    "the {} listener on {} requires {why} and so needs [tls] or its own tls",
                    l.kind.as_str(),
                    l.address
                )));
            }
            certs.push((own, legacy));
        }
        if let NextHopConfig::Maildir { path } = &next_hop_cfg {
            std::fs::create_dir_all(path)
                .map_err(|e| EdgeError::Config(format!("maildir {}: {e}", path.display())))?;
        }
        let next_hop = NextHop::new(&next_hop_cfg, cfg.hostname()).map_err(EdgeError::Config)?;
        let outbound = match &cfg.outbound_next_hop {
            Some(NextHopConfig::Maildir { .. }) => {
                return Err(EdgeError::Config(
                    "[outbound-next-hop] must be smtp or lmtp: relayed mail leaves the cluster"
                        .into(),
                ))
            }
            Some(c) => Some(
                NextHop::new(c, cfg.hostname())
                    .map_err(|e| EdgeError::Config(format!("[outbound-next-hop]: {e}")))?,
            ),
            None => None,
        };
        let mut listeners = Vec::new();
        for (l, certs) in cfg.listeners.iter().zip(certs) {
            let socket = listen(l.address).map_err(|source| EdgeError::Bind {
                kind: l.kind.as_str(),
                address: l.address,
                source,
            })?;
            listeners.push((l.clone(), certs, socket));
        }
        raise_fd_limit();
        let checker = if cfg.authentication.checks {
            Some(
                crate::mailauth::Checker::new(
                    cfg.authentication.dns,
                    cfg.authentication.max_message,
                )
                .map_err(EdgeError::Config)?,
            )
        } else {
            None
        };
        let reachability = Arc::new(crate::relay::Reachability::default());
        tokio::spawn(Arc::clone(&next_hop).watch(Arc::clone(&reachability), NEXT_HOP_PROBE));
        Ok(BoundEdge {
            reachability,
            checker,
            throttle: Throttle::new(cfg.auth.clone()),
            cfg,
            policy,
            counters,
            next_hop,
            outbound,
            listeners,
        })
    }
}

/// How often the inbound next hop is probed for `/readyz`.
const NEXT_HOP_PROBE: Duration = Duration::from_secs(5);

/// An edge whose listeners are bound.
#[derive(Debug)]
pub struct BoundEdge {
    reachability: Arc<crate::relay::Reachability>,
    cfg: EdgeConfig,
    policy: PolicyHandle,
    counters: Arc<Counters>,
    throttle: Arc<Throttle>,
    checker: Option<crate::mailauth::Checker>,
    next_hop: Arc<NextHop>,
    outbound: Option<Arc<NextHop>>,
    listeners: Vec<(ListenerConfig, ListenerTls, TcpListener)>,
}

/// A listener's TLS engines: rustls, and OpenSSL for TLS 1.0/1.1 when enabled.
type ListenerTls = (Option<Certificates>, Option<LegacyEngine>);

impl BoundEdge {
    /// What the inbound next hop's last probe saw.
    pub fn next_hop_reachability(&self) -> Arc<crate::relay::Reachability> {
        Arc::clone(&self.reachability)
    }

    /// `/readyz`'s limit on control-plane silence (`None`: no limit).
    pub fn ready_stale_after(&self) -> Option<Duration> {
        Some(self.cfg.ready_stale_after).filter(|d| !d.is_zero())
    }

    /// The bound address of every listener (useful when a port was 0).
    pub fn local_addrs(&self) -> Vec<(ListenerKind, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|(l, _, s)| s.local_addr().ok().map(|a| (l.kind, a)))
            .collect()
    }

    /// Every listener's configuration and bound address.
    pub fn listeners(&self) -> Vec<(ListenerConfig, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|(l, _, s)| s.local_addr().ok().map(|a| (l.clone(), a)))
            .collect()
    }

    /// Serves until `shutdown` completes, then drains: idle sessions are told `421 4.3.2`,
    /// open transactions get up to `drain-timeout` to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let max_sessions = permits(self.cfg.limits.max_sessions);
        let admission = Arc::new(Admission {
            sessions: Arc::new(Semaphore::new(max_sessions as usize)),
            per_ip: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(0),
            started: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        });
        let mut accept_loops = Vec::new();
        for (l, (certs, legacy), socket) in self.listeners {
            let limits = l.limits.over(&self.cfg.limits);
            let auth = l.kind != ListenerKind::Mx;
            let shared = Shared {
                meters: Arc::new(Meters::new(l.name())),
                node: self.cfg.node_id.clone(),
                policy: self.policy.clone(),
                next_hop: Arc::clone(&self.next_hop),
                outbound: self.outbound.clone(),
                idle_timeout: limits.idle_timeout,
                data_timeout: limits.data_timeout,
                shutdown: stop_rx.clone(),
                certs,
                legacy,
                legacy_rule: l.legacy_tls,
                auth,
                throttle: Arc::clone(&self.throttle),
                counters: Arc::clone(&self.counters),
                checker: self.checker.clone(),
                hostname: self.cfg.hostname().to_owned(),
            };
            let session = SessionConfig {
                node: self.cfg.node_id.clone(),
                hostname: self.cfg.hostname().to_owned(),
                starttls: shared.certs.is_some() && l.kind != ListenerKind::Smtps,
                require_tls: l.kind == ListenerKind::Submission,
                auth,
                max_message_size: limits.max_message_size,
                max_recipients: limits.max_recipients,
                max_errors: limits.max_errors.max(1),
                max_line: limits.max_line.max(512),
                command_timeout: limits.command_timeout,
                forbid_unauth_pipelining: limits.forbid_unauth_pipelining,
            };
            let listener = Listener {
                sessions: l
                    .limits
                    .max_sessions
                    .map(|n| Arc::new(Semaphore::new(permits(n) as usize))),
                max_per_ip: limits.max_sessions_per_ip,
                bound: socket
                    .local_addr()
                    .ok()
                    .filter(|a| !a.ip().is_unspecified()),
                name: Arc::from(l.name()),
                cfg: l,
                session: Arc::new(Prepared::new(session)),
                shared,
                admission: Arc::clone(&admission),
            };
            let mut stop = stop_rx.clone();
            accept_loops.push(tokio::spawn(async move {
                tokio::select! {
                    () = listener.accept_loop(socket) => {}
                    _ = stop.wait_for(|&s| s) => {}
                }
            }));
        }
        shutdown.await;
        tracing::info!("shutting down: draining sessions");
        let _ = stop_tx.send(true);
        for a in accept_loops {
            let _ = a.await;
        }
        // Every session holds a permit; getting them all back means every session ended.
        let drained = tokio::time::timeout(
            self.cfg.drain_timeout,
            admission.sessions.acquire_many(max_sessions),
        )
        .await;
        if drained.is_err() {
            tracing::warn!("drain timeout: closing the remaining sessions");
        }
    }
}

fn permits(n: usize) -> u32 {
    n.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize)) as u32
}

/// Edge-wide admission state, shared by every listener.
struct Admission {
    sessions: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    counter: AtomicU64,
    started: u64,
}

/// Holds one per-IP slot; frees it on drop.
struct IpSlot<'a> {
    admission: &'a Admission,
    ip: IpAddr,
}

impl Admission {
    fn enter(&self, ip: IpAddr, max_per_ip: usize) -> Option<IpSlot<'_>> {
        let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max_per_ip {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            admission: self,
            ip,
        })
    }

    fn next_id(&self) -> String {
        use std::fmt::Write as _;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // Sized once: `format!` would start empty and grow for the second number.
        let mut id = String::with_capacity(32);
        let _ = write!(id, "{:x}{:06x}", self.started, n);
        id
    }
}

impl Drop for IpSlot<'_> {
    fn drop(&mut self) {
        let mut map = self
            .admission
            .per_ip
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

struct Listener {
    /// This listener's own session limit, when it has one.
    sessions: Option<Arc<Semaphore>>,
    max_per_ip: usize,
    cfg: ListenerConfig,
    /// The listener's name, shared by its sessions' facts.
    name: Arc<str>,
    /// The bound address when it is one address (not `0.0.0.0` or `::`): every accepted
    /// connection's local address.
    bound: Option<SocketAddr>,
    /// Its sessions' settings and prepared replies.
    session: Arc<Prepared>,
    shared: Shared,
    admission: Arc<Admission>,
}

/// How long a client may take to send its PROXY header.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

impl Listener {
    async fn accept_loop(self, socket: TcpListener) {
        let this = Arc::new(self);
        loop {
            let (tcp, peer) = match socket.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let this = Arc::clone(&this);
            tokio::spawn(async move { this.serve(tcp, peer).await });
        }
    }

    async fn refuse(&self, mut tcp: TcpStream, why: reply::Code) {
        if self.cfg.kind == ListenerKind::Smtps {
            return; // the client expects a TLS handshake, not text: just close
        }
        let mut out = Vec::new();
        Reply::from(why).render(&self.shared.node, &mut out);
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.write_all(&out)).await;
    }

    async fn serve(&self, mut tcp: TcpStream, peer: SocketAddr) {
        let Ok(_permit) = Arc::clone(&self.admission.sessions).try_acquire_owned() else {
            return self.refuse(tcp, reply::TOO_MANY_SESSIONS).await;
        };
        let _listener_permit = match &self.sessions {
            Some(s) => match Arc::clone(s).try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => return self.refuse(tcp, reply::TOO_MANY_SESSIONS).await,
            },
            None => None,
        };
        let _ = tcp.set_nodelay(true);
        // A listener bound to one address accepts on that address: no getsockname per session.
        let local = match self.bound {
            Some(a) => a,
            None => tcp.local_addr().unwrap_or(self.cfg.address),
        };
        let (peer, local, early) = if self.cfg.proxy_protocol {
            match read_proxy_header(&mut tcp).await {
                Ok((
                    proxy::ProxiedAddrs::Tcp {
                        source,
                        destination,
                    },
                    rest,
                )) => (source, destination, rest),
                Ok((proxy::ProxiedAddrs::Unknown, rest)) => (peer, local, rest),
                Err(e) => {
                    tracing::info!(%peer, "PROXY header refused: {e}");
                    return;
                }
            }
        } else {
            (peer, local, Vec::new())
        };
        if self.shared.policy.load().version() == 0 {
            // Fail closed until the first snapshot: never accept mail unchecked.
            return self.refuse(tcp, reply::NO_POLICY).await;
        }
        let Some(_slot) = self.admission.enter(peer.ip(), self.max_per_ip) else {
            return self.refuse(tcp, reply::TOO_MANY_FROM_IP).await;
        };
        let id = self.admission.next_id();
        // Every line logged for the session carries its id, which is also the `id` of the
        // Received header it writes.
        let span =
            tracing::info_span!("session", id = %id, peer = %peer, listener = %self.cfg.name());
        let mut facts = SessionFacts {
            id,
            peer,
            local,
            listener: Arc::clone(&self.name),
            tls: None,
            helo: None,
            auth: None,
        };
        let io = match self.cfg.kind {
            ListenerKind::Smtps => {
                if !early.is_empty() {
                    return; // bytes before the handshake on an implicit-TLS port
                }
                match driver::handshake(tcp, &self.shared).await {
                    Ok((io, tls)) => {
                        facts.tls = Some(tls);
                        io
                    }
                    Err(e) => {
                        tracing::info!(%peer, "{e}");
                        return;
                    }
                }
            }
            _ => Io::Plain(tcp),
        };
        let mut session = Session::prepared(Arc::clone(&self.session), facts);
        session.receive(&early);
        driver::run(io, session, &self.shared)
            .instrument(span)
            .await;
    }
}

/// Reads a PROXY v1/v2 header; returns the addresses and any bytes read past it.
async fn read_proxy_header(tcp: &mut TcpStream) -> Result<(proxy::ProxiedAddrs, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    let deadline = tokio::time::Instant::now() + PROXY_HEADER_TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut chunk))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        match proxy::parse(&buf).map_err(|e| e.to_string())? {
            proxy::Parsed::Done { addrs, consumed } => {
                return Ok((addrs, buf.split_off(consumed)));
            }
            proxy::Parsed::Incomplete if buf.len() > proxy::MAX_HEADER_LEN => {
                return Err("header too long".into());
            }
            proxy::Parsed::Incomplete => {}
        }
    }
}

/// Length of the accept queue: bursts of new connections wait in the kernel, not in SYN
/// retransmits (the kernel caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // A restarted edge must be able to bind while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Raises the open-file limit to its hard maximum: every session needs a socket and possibly a
/// next-hop socket or a file.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
}
