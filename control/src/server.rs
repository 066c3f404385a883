//! `moat control`: one control node as a process.
//!
//! One OS thread owns the [`Core`] (raft-rs `RawNode`, sled storage, state machine) and runs the
//! ready loop; everything else talks to it through a channel of [`Req`]s: the gRPC services
//! (Raft transport, Policy, Signal, Admin) and one sending task per peer. The thread publishes
//! what the services need to read without asking it: the current policy snapshot, the raft
//! status and the admin tokens.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use moat_proto::convert::{
    baseline_from_wire, connector_from_wire, connector_to_wire, restricted_to_wire, step_from_wire,
    step_to_wire, tenant_from_wire, tenant_to_wire, user_to_wire,
};
use moat_proto::mtls::{caller_role, InternalTls, Role as CertRole};
use moat_proto::v1;
use moat_shared::time::now_ms;
use moat_shared::{Domain, EntityKind, Seed, Tenant, TenantId};
use raft::eraftpb::{Message, MessageType};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::node::{
    decode_message, encode_message, raft_logger, Core, MemberChange, NodeError, Options,
};
use crate::state::{
    Command, DetectionPolicy, LimitAction, OutboundPolicy, Outcome, Proposal, RejectionCode, Role,
    SignalBatch, State, TokenRecord, User,
};
use crate::storage::sled::Sled;

/// Largest gRPC message accepted (raft snapshots of a large state travel in one message).
const MAX_MESSAGE: usize = 512 * 1024 * 1024;
/// How long a write or read waits for the raft round before answering UNAVAILABLE.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the leader turns the signal batches it holds into one log entry.
const SIGNAL_WINDOW: Duration = Duration::from_millis(500);
/// Counter deltas the leader holds or has in flight before it refuses more (see
/// `docs/benchmarks.md`: beyond about this much per window a 2-core cluster fell behind and lost
/// its leader to the size of the entries).
const MAX_SIGNAL_BACKLOG: usize = 200_000;

/// How a control node is set up.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// Raft id, unique in the cluster, never reused.
    pub id: u64,
    /// Where gRPC listens.
    pub listen: SocketAddr,
    /// The `host:port` other nodes and tools reach this node at (defaults to `listen`).
    pub advertise: Option<String>,
    /// The founding members and their addresses (this node included); empty when joining.
    pub peers: BTreeMap<u64, String>,
    /// Data directory (sled lives in `DATA/raft`).
    pub data: PathBuf,
    /// Tenants to create once the cluster has a leader (idempotent).
    pub seed: Vec<Tenant>,
    /// The bootstrap operator token.
    pub admin_token: Option<String>,
    /// Raft tick period.
    pub tick: Duration,
    /// Raft tuning.
    pub options: Options,
    /// Accept `set-clock` (moving the cluster clock ahead, for tests and demos): only
    /// `moat dev` sets it; a production node refuses the request.
    pub dev_clock: bool,
    /// `/readyz` turns unready once the node has known no leader for this long (a node cut
    /// off from a quorum, or a cluster without one).
    pub unready_after: Duration,
    /// Mutual TLS on gRPC (served and toward peers). Without it the channels are plaintext
    /// and every admin call is refused.
    pub tls: Option<InternalTls>,
}

/// Why the node stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Could not bind the gRPC port.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// Storage or raft failed at start.
    #[error("{0}")]
    Node(#[from] NodeError),
    /// sled failed at start.
    #[error("{0}")]
    Store(#[from] crate::storage::StoreError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The internal TLS material cannot serve.
    #[error("{0}")]
    Tls(String),
}

/// Why a request to the node thread was not carried out.
#[derive(Debug)]
enum Refusal {
    NotLeader(u64),
    Failed(String),
    /// Too much work queued: the caller keeps its request and retries later.
    Busy(String),
}

type Reply<T> = oneshot::Sender<Result<T, Refusal>>;

/// A read to run against the state machine once it is safe to.
type ReadFn = Box<dyn FnOnce(&State) + Send>;

/// A request to the node thread.
enum Req {
    Step(Message, u64, String),
    Propose(Proposal, Reply<Outcome>),
    Member(MemberChange, Reply<Outcome>),
    Read(bool, ReadFn),
    Signal(SignalBatch, bool, Reply<()>),
    Unreachable(u64),
    SnapshotDone(u64, bool),
}

/// What the node thread publishes for the services.
#[derive(Clone, Debug, Default, PartialEq)]
struct View {
    status: Option<crate::node::Status>,
    addresses: BTreeMap<u64, String>,
    policy_version: u64,
    /// Since when the node has known no leader.
    leaderless_since: Option<Instant>,
}

/// One edge as this node sees it.
#[derive(Clone, Debug)]
struct EdgeSeen {
    applied: u64,
    last_seen_ms: i64,
}

struct Shared {
    id: u64,
    tx: Mutex<std_mpsc::Sender<Req>>,
    policy: watch::Receiver<Arc<v1::PolicySnapshot>>,
    view: watch::Receiver<View>,
    tokens: Arc<RwLock<HashMap<String, TokenRecord>>>,
    admin_token_sha: Option<String>,
    edges: Mutex<BTreeMap<String, EdgeSeen>>,
    dev_clock: bool,
    unready_after: Duration,
    /// Whether gRPC is served over mutual TLS (callers then have a verified certificate).
    mtls: bool,
}

impl Shared {
    /// How long this node has known no leader, if it knows none now.
    fn leaderless_for(&self) -> Option<Duration> {
        self.view.borrow().leaderless_since.map(|t| t.elapsed())
    }

    /// Refuses a caller whose certificate does not give one of `roles` (only under mutual
    /// TLS; without it the caller is anonymous and only the admin API refuses it).
    fn require<T>(&self, req: &Request<T>, roles: &[CertRole], what: &str) -> Result<(), Status> {
        if !self.mtls {
            return Ok(());
        }
        match caller_role(req) {
            Some((role, _)) if roles.contains(&role) => Ok(()),
            Some((_, cn)) => Err(Status::permission_denied(format!(
                "certificate `{cn}` may not call {what}"
            ))),
            None => Err(Status::unauthenticated(format!(
                "{what} needs a client certificate from the cluster's CA"
            ))),
        }
    }

    fn send(&self, r: Req) {
        if let Ok(tx) = self.tx.lock() {
            let _ = tx.send(r);
        }
    }

    fn leader_hint(&self, leader: u64) -> Status {
        let view = self.view.borrow();
        let mut s = Status::unavailable(match leader {
            0 => "no leader elected yet; retry".to_owned(),
            l => format!("not the leader; the leader is node {l}"),
        });
        if let Some(addr) = view.addresses.get(&leader) {
            if let Ok(v) = addr.parse() {
                s.metadata_mut().insert("moat-leader", v);
            }
        }
        s
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Req) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx));
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(Refusal::NotLeader(l)))) => Err(self.leader_hint(l)),
            Ok(Ok(Err(Refusal::Failed(why)))) => Err(Status::unavailable(why)),
            Ok(Ok(Err(Refusal::Busy(why)))) => Err(Status::resource_exhausted(why)),
            Ok(Err(_)) | Err(_) => Err(Status::unavailable(
                "the change was not committed in time (leader lost?); retry with the same request id",
            )),
        }
    }
}

fn sha256_hex(s: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A bound control node, ready to run.
pub struct Control {
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    tls: Option<InternalTls>,
}

impl Control {
    /// Opens storage, starts the node thread and binds the gRPC port.
    pub async fn start(cfg: ControlConfig) -> Result<Self, ControlError> {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| ControlError::Bind(cfg.listen, e))?;
        let local = listener
            .local_addr()
            .map_err(|e| ControlError::Bind(cfg.listen, e))?;
        let advertise = cfg.advertise.clone().unwrap_or_else(|| local.to_string());
        let backend = Sled::open(&cfg.data.join("raft"))?;
        let voters: Vec<u64> = cfg.peers.keys().copied().collect();
        let id_base = (SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()) as u64)
            << 8;
        let core = Core::open(
            cfg.id,
            backend,
            &voters,
            &cfg.options,
            id_base,
            &raft_logger(),
        )?;

        let (tx, rx) = std_mpsc::channel();
        let (policy_tx, policy_rx) = watch::channel(Arc::new(v1::PolicySnapshot::default()));
        let (view_tx, view_rx) = watch::channel(View::default());
        let tokens = Arc::new(RwLock::new(HashMap::new()));
        let shared = Arc::new(Shared {
            id: cfg.id,
            tx: Mutex::new(tx.clone()),
            policy: policy_rx,
            view: view_rx,
            tokens: Arc::clone(&tokens),
            admin_token_sha: cfg.admin_token.as_deref().map(sha256_hex),
            edges: Mutex::new(BTreeMap::new()),
            dev_clock: cfg.dev_clock,
            unready_after: cfg.unready_after,
            mtls: cfg.tls.is_some(),
        });
        let mut addresses = cfg.peers.clone();
        addresses.insert(cfg.id, advertise.clone());
        let thread = NodeThread {
            core,
            rx,
            tx,
            rt: tokio::runtime::Handle::current(),
            advertise,
            addresses,
            transports: HashMap::new(),
            pending: HashMap::new(),
            reads: HashMap::new(),
            signals: Vec::new(),
            signal_waiters: HashMap::new(),
            last_signal_flush: Instant::now(),
            last_tick: None,
            seed: cfg.seed.clone(),
            last_seed_attempt: None,
            policy_tx,
            view_tx,
            tokens,
            published_tokens: None,
            published_applied: u64::MAX,
            tick: cfg.tick,
            tls: cfg.tls.clone(),
        };
        std::thread::Builder::new()
            .name(format!("raft-{}", cfg.id))
            .spawn(move || thread.run())
            .map_err(|e| ControlError::Bind(cfg.listen, e))?;
        Ok(Self {
            listener,
            shared,
            tls: cfg.tls,
        })
    }

    /// The address gRPC listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// `/readyz`: ready while the node knows a leader (or lost it less than `unready_after`
    /// ago, so an ordinary election does not flap readiness), with a JSON detail.
    pub fn readiness(&self) -> Arc<dyn Fn() -> (bool, serde_json::Value) + Send + Sync> {
        let shared = Arc::clone(&self.shared);
        Arc::new(move || {
            let view = shared.view.borrow().clone();
            let leaderless = shared.leaderless_for();
            let ready =
                view.status.is_some() && leaderless.is_none_or(|d| d < shared.unready_after);
            let st = view
                .status
                .unwrap_or_else(|| crate::node::Status::unknown(shared.id));
            let mut detail = serde_json::json!({
                "node": shared.id,
                "ready": ready,
                "raft": {
                    "leader": st.leader,
                    "term": st.term,
                    "commit": st.commit,
                    "applied": st.applied,
                    "voters": st.voters,
                },
                "policy_version": view.policy_version,
            });
            if let Some(d) = leaderless {
                detail["reason"] = format!(
                    "no leader known for {:.1} s: this node is not part of a quorum",
                    d.as_secs_f64()
                )
                .into();
            }
            (ready, detail)
        })
    }

    /// Sets the gauges only the services know (edges watching), before `/metrics` renders.
    pub fn record_metrics(&self) -> Arc<dyn Fn() + Send + Sync> {
        let shared = Arc::clone(&self.shared);
        Arc::new(move || {
            let now = now_ms();
            let watching = shared.edges.lock().map_or(0, |e| {
                e.values().filter(|s| now - s.last_seen_ms < 10_000).count()
            });
            metrics::gauge!("moat_control_edges_watching").set(watching as f64);
        })
    }

    /// Serves gRPC until `shutdown` completes.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), ControlError> {
        let svc = Services {
            shared: Arc::clone(&self.shared),
        };
        let deliveries = tokio::spawn(deliver_alerts(Arc::clone(&self.shared)));
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let stop = async {
            let _ = stop_rx.await;
        };
        let router = tonic::transport::Server::builder()
            .add_service(
                v1::raft_server::RaftServer::new(svc.clone())
                    .max_decoding_message_size(MAX_MESSAGE),
            )
            .add_service(v1::policy_server::PolicyServer::new(svc.clone()))
            .add_service(v1::signal_server::SignalServer::new(svc.clone()))
            .add_service(v1::admin_server::AdminServer::new(svc));
        // With TLS, every connection is accepted with the certificate current at that moment,
        // so a renewal needs no restart.
        let server: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>> = match &self.tls
        {
            Some(tls) => {
                let incoming = tls.incoming(self.listener).ok_or_else(|| {
                    ControlError::Tls("--tls-cert is not a moat-control certificate".into())
                })?;
                Box::pin(router.serve_with_incoming_shutdown(incoming, stop))
            }
            None => {
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(self.listener);
                Box::pin(router.serve_with_incoming_shutdown(incoming, stop))
            }
        };
        tokio::pin!(server);
        tokio::select! {
            r = &mut server => r?,
            () = shutdown => {
                // Watch streams never end by themselves: give requests in flight a moment,
                // then stop.
                let _ = stop_tx.send(());
                if let Ok(r) = tokio::time::timeout(Duration::from_secs(2), server).await {
                    r?;
                }
            }
        }
        deliveries.abort();
        Ok(())
    }
}

/// Work for the alert deliverer: an alert, one of its pending deliveries, the tenant's
/// contacts and the email transport.
type DeliveryWork = (
    crate::state::Alert,
    crate::state::Delivery,
    crate::state::AlertContacts,
    crate::state::AlertTransport,
);

fn pending_deliveries(state: &State) -> Vec<DeliveryWork> {
    state
        .alerts
        .iter()
        .flat_map(|a| {
            a.deliveries
                .iter()
                .filter(|d| d.state == crate::state::DeliveryState::Pending)
                .map(move |d| {
                    (
                        a.clone(),
                        d.clone(),
                        state
                            .alert_contacts
                            .get(&a.tenant)
                            .cloned()
                            .unwrap_or_default(),
                        state.alert_transport.clone(),
                    )
                })
        })
        .collect()
}

/// On the leader: tries each pending alert delivery (again, with exponential backoff from 1 s
/// to about 4 minutes) and commits each attempt's outcome, so any leader can take over and
/// every failure is visible in `moat admin alerts list`.
async fn deliver_alerts(shared: Arc<Shared>) {
    let mut next_try: HashMap<(u64, String, String), Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let leader = shared
            .view
            .borrow()
            .status
            .as_ref()
            .is_some_and(|s| s.leader == shared.id);
        if !leader {
            next_try.clear();
            continue;
        }
        let (tx, rx) = oneshot::channel();
        shared.send(Req::Read(
            true,
            Box::new(move |state: &State| {
                let _ = tx.send(pending_deliveries(state));
            }),
        ));
        let Ok(Ok(work)) = tokio::time::timeout(REQUEST_TIMEOUT, rx).await else {
            continue;
        };
        for (alert, d, contacts, transport) in work {
            let key = (alert.id, d.channel.clone(), d.target.clone());
            if next_try.get(&key).is_some_and(|t| *t > Instant::now()) {
                continue;
            }
            let result = match d.channel.as_str() {
                "webhook" => {
                    crate::alerts::webhook(
                        &d.target,
                        &contacts.webhook_secret,
                        &alert,
                        now_ms() / 1000,
                    )
                    .await
                }
                _ if transport.smtp.is_empty() => Err(
                    "no alert email transport (moat admin alerts transport set --smtp HOST:PORT)"
                        .to_owned(),
                ),
                _ => {
                    let from = if transport.from.is_empty() {
                        "Moat alerts <alerts@moat.invalid>"
                    } else {
                        transport.from.as_str()
                    };
                    let date = moat_shared::time::rfc5322_date(SystemTime::now());
                    crate::alerts::email(&transport.smtp, from, &d.target, &alert, &date).await
                }
            };
            if let Err(e) = &result {
                tracing::warn!(alert = alert.id, channel = %d.channel, target = %d.target, "alert delivery failed: {e}");
            }
            metrics::counter!(
                "moat_control_alert_deliveries_total",
                "channel" => if d.channel == "webhook" { "webhook" } else { "email" },
                "outcome" => if result.is_ok() { "delivered" } else { "failed" }
            )
            .increment(1);
            next_try.insert(
                key,
                Instant::now() + Duration::from_secs(1 << d.attempts.min(8)),
            );
            let p = Proposal {
                at_ms: now_ms(),
                actor: "system".into(),
                request_id: None,
                command: Command::AlertDelivery {
                    alert: alert.id,
                    channel: d.channel,
                    target: d.target,
                    error: result.err(),
                },
            };
            let _ = shared.ask(|r| Req::Propose(p, r)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The node thread.
// ---------------------------------------------------------------------------------------------

struct NodeThread {
    core: Core<Sled>,
    rx: std_mpsc::Receiver<Req>,
    tx: std_mpsc::Sender<Req>,
    rt: tokio::runtime::Handle,
    advertise: String,
    /// Client side toward peers.
    tls: Option<InternalTls>,
    addresses: BTreeMap<u64, String>,
    transports: HashMap<u64, (String, mpsc::Sender<Vec<Message>>)>,
    pending: HashMap<u64, (Instant, Reply<Outcome>)>,
    reads: HashMap<u64, (Instant, ReadFn)>,
    signals: Vec<(SignalBatch, Reply<()>)>,
    /// Signal entries proposed and not yet applied: when, how many deltas, who waits.
    signal_waiters: HashMap<u64, (Instant, usize, Vec<Reply<()>>)>,
    last_signal_flush: Instant,
    last_tick: Option<Instant>,
    seed: Vec<Tenant>,
    last_seed_attempt: Option<Instant>,
    policy_tx: watch::Sender<Arc<v1::PolicySnapshot>>,
    view_tx: watch::Sender<View>,
    tokens: Arc<RwLock<HashMap<String, TokenRecord>>>,
    published_tokens: Option<BTreeMap<String, TokenRecord>>,
    published_applied: u64,
    tick: Duration,
}

impl NodeThread {
    fn run(mut self) {
        let mut next_tick = Instant::now() + self.tick;
        self.publish(true);
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(r) => self.handle(r),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
            for _ in 0..4096 {
                match self.rx.try_recv() {
                    Ok(r) => self.handle(r),
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                self.core.tick();
                next_tick += self.tick;
                if next_tick < now {
                    next_tick = now + self.tick;
                }
                self.housekeeping(now);
            }
            let out = match self.core.process() {
                Ok(out) => out,
                Err(e) => {
                    // A node that cannot persist must not go on voting or acknowledging.
                    tracing::error!(error = %e, "raft node failed; exiting");
                    std::process::exit(70);
                }
            };
            for m in out.messages {
                self.send(m);
            }
            for (id, outcome) in out.done {
                if let Some((t0, reply)) = self.pending.remove(&id) {
                    metrics::histogram!("moat_control_raft_proposal_duration_seconds")
                        .record(t0.elapsed().as_secs_f64());
                    let _ = reply.send(Ok(outcome));
                } else if let Some((_, _, replies)) = self.signal_waiters.remove(&id) {
                    for r in replies {
                        let _ = r.send(match &outcome.result {
                            Ok(_) => Ok(()),
                            Err(e) => Err(Refusal::Failed(e.to_string())),
                        });
                    }
                }
            }
            for id in out.readable {
                if let Some((_, f)) = self.reads.remove(&id) {
                    f(self.core.state());
                }
            }
            if out.members_changed {
                for (id, addr) in &self.core.state().members {
                    self.addresses.insert(*id, addr.clone());
                }
            }
            self.publish(out.policy_changed);
        }
    }

    fn handle(&mut self, r: Req) {
        match r {
            Req::Step(m, from, from_addr) => {
                if !from_addr.is_empty() && self.addresses.get(&from) != Some(&from_addr) {
                    self.addresses.insert(from, from_addr);
                }
                if let Err(e) = self.core.step(m) {
                    tracing::debug!(error = %e, "raft message dropped");
                }
            }
            Req::Propose(mut p, reply) => {
                // Every entry is stamped with the cluster clock.
                p.at_ms = self.cluster_now();
                match self.core.propose(&p) {
                    Ok(id) => {
                        self.pending.insert(id, (Instant::now(), reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(refusal(e)));
                    }
                }
            }
            Req::Member(change, reply) => match self.core.propose_member_change(&change) {
                Ok(id) => {
                    if let MemberChange::Add(node, addr) = &change {
                        self.addresses.insert(*node, addr.clone());
                    }
                    self.pending.insert(id, (Instant::now(), reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(refusal(e)));
                }
            },
            Req::Read(stale_ok, f) => {
                if stale_ok {
                    f(self.core.state());
                } else {
                    let id = self.core.read_index();
                    self.reads.insert(id, (Instant::now(), f));
                }
            }
            Req::Signal(batch, urgent, reply) => {
                let backlog = self.signal_backlog();
                if self.core.is_leader()
                    && backlog > 0
                    && backlog + batch.counters.len() > MAX_SIGNAL_BACKLOG
                {
                    // Edges keep a refused batch and fold newer counts into their next one,
                    // so refusing loses nothing and keeps the leader's entries (and its
                    // heartbeats) flowing.
                    let _ = reply.send(Err(Refusal::Busy(format!(
                        "{backlog} counter deltas are waiting to be committed; retry later"
                    ))));
                } else if self.core.is_leader() {
                    self.signals.push((batch, reply));
                    if urgent {
                        self.flush_signals(Instant::now());
                    }
                } else {
                    let _ = reply.send(Err(Refusal::NotLeader(self.core.leader())));
                }
            }
            Req::Unreachable(id) => self.core.report_unreachable(id),
            Req::SnapshotDone(id, ok) => self.core.report_snapshot(id, ok),
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        let expired = |t: &Instant| now.duration_since(*t) > REQUEST_TIMEOUT;
        self.pending.retain(|_, (t, _)| !expired(t));
        self.reads.retain(|_, (t, _)| !expired(t));
        self.signal_waiters.retain(|_, (t, _, _)| !expired(t));
        if !self.core.is_leader() {
            for (_, reply) in self.signals.drain(..) {
                let _ = reply.send(Err(Refusal::NotLeader(self.core.leader())));
            }
            return;
        }
        if now.duration_since(self.last_signal_flush) >= SIGNAL_WINDOW {
            self.flush_signals(now);
        }
        // Time acts on on-premises servers even when nothing else is committed.
        let cluster_now = self.cluster_now();
        if self
            .last_tick
            .is_none_or(|t| now.duration_since(t) > Duration::from_millis(500))
            && self.core.state().onprem_due(cluster_now)
        {
            self.last_tick = Some(now);
            let p = Proposal {
                at_ms: cluster_now,
                actor: "system".into(),
                request_id: None,
                command: Command::Tick,
            };
            let _ = self.core.propose(&p);
        }
        if !self.seed.is_empty() {
            let state = self.core.state();
            let done = self.seed.iter().all(|t| {
                state.tenants.get(&t.id).is_some_and(|have| {
                    t.accepted_domains
                        .iter()
                        .all(|d| have.accepted_domains.contains(d))
                })
            });
            if done {
                self.seed.clear();
            } else if self
                .last_seed_attempt
                .is_none_or(|t| now.duration_since(t) > Duration::from_secs(1))
            {
                self.last_seed_attempt = Some(now);
                let p = Proposal {
                    at_ms: self.cluster_now(),
                    actor: "seed".into(),
                    request_id: None,
                    command: Command::ApplySeed {
                        tenants: self.seed.clone(),
                    },
                };
                let _ = self.core.propose(&p);
            }
        }
    }

    /// Now on the cluster clock: the wall clock plus the committed offset (zero outside
    /// `moat dev`).
    fn cluster_now(&self) -> i64 {
        now_ms().saturating_add(self.core.state().clock_offset_ms)
    }

    /// Counter deltas received and not yet applied: held for the next entry or in flight.
    fn signal_backlog(&self) -> usize {
        let held: usize = self.signals.iter().map(|(b, _)| b.counters.len()).sum();
        let in_flight: usize = self.signal_waiters.values().map(|(_, n, _)| n).sum();
        held + in_flight
    }

    /// Turns the signal batches held into one log entry.
    fn flush_signals(&mut self, now: Instant) {
        if self.signals.is_empty() {
            return;
        }
        self.last_signal_flush = now;
        let (batches, replies): (Vec<_>, Vec<_>) = self.signals.drain(..).unzip();
        let deltas = batches.iter().map(|b| b.counters.len()).sum();
        let p = Proposal {
            at_ms: self.cluster_now(),
            actor: "edges".into(),
            request_id: None,
            command: Command::Signals { batches },
        };
        match self.core.propose(&p) {
            Ok(id) => {
                self.signal_waiters.insert(id, (now, deltas, replies));
            }
            Err(e) => {
                let why = e.to_string();
                for r in replies {
                    let _ = r.send(Err(Refusal::Failed(why.clone())));
                }
            }
        }
    }

    fn send(&mut self, m: Message) {
        let to = m.to;
        let Some(addr) = self.addresses.get(&to).cloned() else {
            tracing::debug!(to, "no address for raft peer; message dropped");
            return;
        };
        let fresh = match self.transports.get(&to) {
            Some((a, tx)) => *a != addr || tx.is_closed(),
            None => true,
        };
        if fresh {
            let (tx, rx) = mpsc::channel(1024);
            self.rt.spawn(peer_task(
                self.core.id(),
                self.advertise.clone(),
                to,
                addr.clone(),
                self.tls.clone(),
                rx,
                self.tx.clone(),
            ));
            self.transports.insert(to, (addr, tx));
        }
        if let Some((_, tx)) = self.transports.get(&to) {
            let snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            if tx.try_send(vec![m]).is_err() {
                // Raft tolerates loss; tell it so it probes again.
                self.core.report_unreachable(to);
                if snapshot {
                    self.core.report_snapshot(to, false);
                }
            }
        }
    }

    fn publish(&mut self, policy_changed: bool) {
        let state = self.core.state();
        if policy_changed || self.policy_tx.borrow().version != state.policy_version {
            let snap = policy_snapshot(state);
            self.policy_tx.send_replace(Arc::new(snap));
        }
        if self.published_applied != state.applied
            && self.published_tokens.as_ref() != Some(&state.tokens)
        {
            let map = state
                .tokens
                .values()
                .map(|t| (t.sha256.clone(), t.clone()))
                .collect();
            if let Ok(mut w) = self.tokens.write() {
                *w = map;
            }
            self.published_tokens = Some(state.tokens.clone());
        }
        if self.published_applied != state.applied {
            record_state(state);
        }
        self.published_applied = state.applied;
        let status = self.core.status();
        metrics::gauge!("moat_control_raft_term").set(status.term as f64);
        metrics::gauge!("moat_control_raft_leader_id").set(status.leader as f64);
        metrics::gauge!("moat_control_raft_is_leader")
            .set(f64::from(u8::from(status.leader == status.id)));
        metrics::gauge!("moat_control_raft_commit_index").set(status.commit as f64);
        metrics::gauge!("moat_control_raft_applied_index").set(status.applied as f64);
        metrics::gauge!("moat_control_raft_voters").set(status.voters.len() as f64);
        let leaderless_since = if status.leader == 0 {
            Some(
                self.view_tx
                    .borrow()
                    .leaderless_since
                    .unwrap_or_else(Instant::now),
            )
        } else {
            None
        };
        let view = View {
            status: Some(status),
            addresses: self.addresses.clone(),
            policy_version: state.policy_version,
            leaderless_since,
        };
        self.view_tx.send_if_modified(|v| {
            if *v != view {
                *v = view;
                true
            } else {
                false
            }
        });
    }
}

/// The baseline builds (the built-in default when none is set), as the wire carries them.
fn baseline_to_wire(state: &State) -> Vec<String> {
    state.baseline().0.iter().map(ToString::to_string).collect()
}

/// Sets the gauges that describe the replicated state.
fn record_state(state: &State) {
    metrics::gauge!("moat_control_policy_version").set(state.policy_version as f64);
    for kind in [EntityKind::Connector, EntityKind::User] {
        let n = state.restricted.iter().filter(|r| r.kind == kind).count();
        metrics::gauge!("moat_control_restricted_entities", "kind" => kind.as_str()).set(n as f64);
    }
    let mut stages = [0usize; 9];
    for s in state.onprem_servers.values() {
        let stage = if s.first_detected_ms.is_some() {
            s.stage.min(8) as usize
        } else {
            0
        };
        stages[stage] += 1;
    }
    for (stage, n) in stages.iter().enumerate() {
        metrics::gauge!("moat_control_onprem_servers", "stage" => stage.to_string()).set(*n as f64);
    }
    let undelivered = state
        .alerts
        .iter()
        .flat_map(|a| &a.deliveries)
        .filter(|d| d.state == crate::state::DeliveryState::Failed)
        .count();
    metrics::gauge!("moat_control_alerts_undelivered").set(undelivered as f64);
}

fn refusal(e: NodeError) -> Refusal {
    match e {
        NodeError::NotLeader { leader } => Refusal::NotLeader(leader),
        e => Refusal::Failed(e.to_string()),
    }
}

fn policy_snapshot(state: &State) -> v1::PolicySnapshot {
    v1::PolicySnapshot {
        version: state.policy_version,
        changed_at_ms: state.policy_changed_ms,
        tenants: state.tenants.values().map(tenant_to_wire).collect(),
        connectors: state.connectors.values().map(connector_to_wire).collect(),
        restricted: state.restricted.iter().map(restricted_to_wire).collect(),
        users: state.users.values().map(user_to_wire).collect(),
        speed_bump: state.speed_bump.iter().map(step_to_wire).collect(),
        onprem: Some(v1::OnpremRules {
            baseline: baseline_to_wire(state),
            enforced: {
                let schedule = state.schedule();
                state
                    .onprem_servers
                    .values()
                    .filter(|s| s.enforced(&schedule))
                    .filter_map(|s| {
                        let st = schedule.get(s.stage)?;
                        Some(v1::EnforcedServer {
                            tenant: s.tenant.to_string(),
                            server: s.server.clone(),
                            stage: s.stage,
                            throttle: u32::from(st.throttle),
                            block: u32::from(st.block),
                        })
                    })
                    .collect()
            },
            service: state.onprem_service.clone(),
            all_connectors: state.onprem_all_connectors,
        }),
        clock_offset_ms: state.clock_offset_ms,
    }
}

async fn peer_task(
    from: u64,
    from_address: String,
    to: u64,
    addr: String,
    tls: Option<InternalTls>,
    mut rx: mpsc::Receiver<Vec<Message>>,
    node: std_mpsc::Sender<Req>,
) {
    // HTTP/2 pings find a connection that died in a partition within seconds; without them a
    // healed peer waits for TCP's retransmission backoff (up to two minutes) to hear again.
    // Made again after a failure, so a reconnection presents the current (maybe renewed)
    // certificate.
    let connect = || match moat_proto::mtls::endpoint(&addr, tls.as_ref()) {
        Ok(e) => Some(
            v1::raft_client::RaftClient::new(
                e.connect_timeout(Duration::from_secs(1))
                    .timeout(Duration::from_secs(10))
                    .http2_keep_alive_interval(Duration::from_secs(1))
                    .keep_alive_timeout(Duration::from_secs(2))
                    .keep_alive_while_idle(true)
                    .connect_lazy(),
            )
            .max_encoding_message_size(MAX_MESSAGE),
        ),
        Err(e) => {
            tracing::warn!(to, %addr, error = %e, "bad peer address");
            None
        }
    };
    let Some(mut client) = connect() else {
        return;
    };
    while let Some(mut batch) = rx.recv().await {
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        let snapshot = batch
            .iter()
            .any(|m| m.get_msg_type() == MessageType::MsgSnapshot);
        let req = v1::RaftBatch {
            from,
            from_address: from_address.clone(),
            messages: batch.iter().map(encode_message).collect(),
        };
        match client.send(req).await {
            Ok(_) => {
                if snapshot {
                    let _ = node.send(Req::SnapshotDone(to, true));
                }
            }
            Err(e) => {
                tracing::debug!(to, error = %e, "raft peer unreachable");
                let _ = node.send(Req::Unreachable(to));
                if snapshot {
                    let _ = node.send(Req::SnapshotDone(to, false));
                }
                // Do not spin on a dead peer; raft will resend.
                tokio::time::sleep(Duration::from_millis(100)).await;
                while rx.try_recv().is_ok() {}
                if let Some(c) = connect() {
                    client = c;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// gRPC services.
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Services {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl v1::raft_server::Raft for Services {
    async fn send(&self, req: Request<v1::RaftBatch>) -> Result<Response<v1::RaftAck>, Status> {
        self.shared
            .require(&req, &[CertRole::Control], "the raft service")?;
        let batch = req.into_inner();
        for b in &batch.messages {
            match decode_message(b) {
                Some(m) => self
                    .shared
                    .send(Req::Step(m, batch.from, batch.from_address.clone())),
                None => return Err(Status::invalid_argument("undecodable raft message")),
            }
        }
        Ok(Response::new(v1::RaftAck {}))
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::PolicySnapshot, Status>> + Send>>;

#[tonic::async_trait]
impl v1::policy_server::Policy for Services {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<tonic::Streaming<v1::WatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        self.shared
            .require(&req, &[CertRole::Edge], "the policy service")?;
        let mut inbound = req.into_inner();
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            while let Ok(Some(w)) = inbound.message().await {
                if let Ok(mut edges) = shared.edges.lock() {
                    edges.insert(
                        w.edge_id,
                        EdgeSeen {
                            applied: w.applied_version,
                            last_seen_ms: now_ms(),
                        },
                    );
                }
            }
        });
        // A node cut off from the quorum serves a policy that no longer changes: it sends edges
        // elsewhere (refusing new watches, ending open ones) once it has known no leader for
        // as long as it takes to turn unready.
        let limit = self.shared.unready_after;
        let leaderless = move |shared: &Shared| shared.leaderless_for().filter(|d| *d > limit);
        let gone = |d: Duration| {
            Status::unavailable(format!(
                "this control node has known no leader for {:.0} s; watch another",
                d.as_secs_f64()
            ))
        };
        if let Some(d) = leaderless(&self.shared) {
            return Err(gone(d));
        }
        let (tx, rx) = mpsc::channel(4);
        let mut policy = self.shared.policy.clone();
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                let snap = Arc::clone(&policy.borrow_and_update());
                if snap.version > 0 && tx.send(Ok((*snap).clone())).await.is_err() {
                    return;
                }
                loop {
                    tokio::select! {
                        changed = policy.changed() => match changed {
                            Ok(()) => break,
                            Err(_) => return,
                        },
                        _ = tick.tick() => {
                            if let Some(d) = leaderless(&shared) {
                                let _ = tx.send(Err(gone(d))).await;
                                return;
                            }
                            if tx.is_closed() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

#[tonic::async_trait]
impl v1::signal_server::Signal for Services {
    async fn report(
        &self,
        req: Request<v1::SignalBatch>,
    ) -> Result<Response<v1::SignalAck>, Status> {
        self.shared
            .require(&req, &[CertRole::Edge], "the signal service")?;
        let b = req.into_inner();
        if b.edge_id.is_empty() || b.seq == 0 {
            return Err(Status::invalid_argument(
                "a batch needs an edge id and a sequence from 1",
            ));
        }
        let seq = b.seq;
        if let Ok(mut edges) = self.shared.edges.lock() {
            let e = edges.entry(b.edge_id.clone()).or_insert(EdgeSeen {
                applied: 0,
                last_seen_ms: 0,
            });
            e.applied = e.applied.max(b.policy_version);
            e.last_seen_ms = now_ms();
        }
        let batch = SignalBatch {
            edge: b.edge_id,
            seq,
            counters: b
                .counters
                .into_iter()
                .map(|c| (c.scope, c.key, c.name, c.value))
                .collect(),
        };
        let urgent = b.urgent;
        metrics::counter!("moat_control_signal_batches_total").increment(1);
        self.shared.ask(|r| Req::Signal(batch, urgent, r)).await?;
        Ok(Response::new(v1::SignalAck { seq }))
    }
}

/// Who is calling the admin API.
#[derive(Clone, Debug)]
struct Principal {
    name: String,
    role: Role,
    tenant: Option<TenantId>,
}

impl Principal {
    fn may_change(&self, tenant: &TenantId) -> Result<(), Status> {
        match (self.role, &self.tenant) {
            (Role::Operator, _) => Ok(()),
            (Role::TenantAdmin, Some(own)) if own == tenant => Ok(()),
            (Role::TenantAdmin, Some(own)) => Err(Status::permission_denied(format!(
                "token `{}` administers tenant `{own}` only; it cannot change tenant `{tenant}`",
                self.name
            ))),
            _ => Err(Status::permission_denied(format!(
                "token `{}` has role {}; it cannot change anything",
                self.name,
                self.role.as_str()
            ))),
        }
    }

    fn operator_only(&self, what: &str) -> Result<(), Status> {
        if self.role == Role::Operator {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "only an operator token may {what}; token `{}` has role {}",
                self.name,
                self.role.as_str()
            )))
        }
    }
}

impl Services {
    /// Who is calling, or why the call is refused; either way one `moat::audit` log line
    /// (never the token itself). Changes are also kept in the replicated audit log.
    fn principal<T>(&self, req: &Request<T>, method: &str) -> Result<Principal, Status> {
        let caller = caller_role(req).map(|(_, cn)| cn).unwrap_or_default();
        let remote = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let who = self.authenticate(req);
        match &who {
            Ok(p) => tracing::info!(
                target: "moat::audit",
                method,
                %remote,
                certificate = %caller,
                token = %p.name,
                role = p.role.as_str(),
                "admin call"
            ),
            Err(e) => tracing::warn!(
                target: "moat::audit",
                method,
                %remote,
                certificate = %caller,
                reason = e.message(),
                "admin call refused"
            ),
        }
        who
    }

    fn authenticate<T>(&self, req: &Request<T>) -> Result<Principal, Status> {
        // A token sent in clear could be read and replayed: refuse it unless it came over
        // mutual TLS with an admin certificate.
        if !self.shared.mtls {
            return Err(Status::permission_denied(
                "this control node serves gRPC without TLS, so it refuses admin calls; start \
                 it with --tls-ca, --tls-cert and --tls-key (moat dev does)",
            ));
        }
        self.shared
            .require(req, &[CertRole::Admin], "the admin service")?;
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("missing `authorization: Bearer <token>`; pass --token")
            })?;
        let sha = sha256_hex(token.trim());
        if self.shared.admin_token_sha.as_deref() == Some(sha.as_str()) {
            return Ok(Principal {
                name: "operator".into(),
                role: Role::Operator,
                tenant: None,
            });
        }
        let tokens = self
            .shared
            .tokens
            .read()
            .map_err(|_| Status::internal("token table poisoned"))?;
        match tokens.get(&sha) {
            Some(t) => Ok(Principal {
                name: t.name.clone(),
                role: t.role,
                tenant: t.tenant.clone(),
            }),
            None => Err(Status::unauthenticated("unknown or revoked token")),
        }
    }
}

fn bad(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

fn tenant_id(s: &str) -> Result<TenantId, Status> {
    TenantId::new(s).map_err(bad)
}

async fn hash_password(password: String) -> Result<String, Status> {
    use argon2::password_hash::{PasswordHasher as _, SaltString};
    if password.len() < 8 {
        return Err(Status::invalid_argument(
            "a password needs at least 8 characters",
        ));
    }
    tokio::task::spawn_blocking(move || {
        let mut salt = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
            .map_err(|_| Status::internal("no randomness"))?;
        let salt = SaltString::encode_b64(&salt).map_err(|e| Status::internal(e.to_string()))?;
        argon2::Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Status::internal(e.to_string()))
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))?
}

fn outcome_status(o: Outcome) -> Result<v1::WriteReply, Status> {
    match o.result {
        Ok(summary) => Ok(v1::WriteReply {
            index: o.index,
            summary,
            secret: String::new(),
        }),
        Err(e) => Err(match e.code() {
            RejectionCode::NotFound => Status::not_found(e.to_string()),
            RejectionCode::AlreadyExists => Status::already_exists(e.to_string()),
            RejectionCode::FailedPrecondition => Status::failed_precondition(e.to_string()),
        }),
    }
}

#[tonic::async_trait]
impl v1::admin_server::Admin for Services {
    async fn write(
        &self,
        req: Request<v1::WriteRequest>,
    ) -> Result<Response<v1::WriteReply>, Status> {
        use v1::write_request::Op;
        let who = self.principal(&req, "write")?;
        let w = req.into_inner();
        let op =
            w.op.ok_or_else(|| Status::invalid_argument("empty write request"))?;
        let mut secret = String::new();
        let command = match op {
            Op::PutTenant(t) => {
                who.operator_only("create or change tenants")?;
                Command::PutTenant {
                    tenant: tenant_from_wire(&t).map_err(bad)?,
                }
            }
            Op::DeleteTenant(t) => {
                who.operator_only("delete tenants")?;
                Command::DeleteTenant {
                    tenant: tenant_id(&t)?,
                }
            }
            Op::AddDomain(d) => {
                let tenant = tenant_id(&d.tenant)?;
                who.may_change(&tenant)?;
                Command::AddDomain {
                    tenant,
                    domain: Domain::new(&d.domain).map_err(bad)?,
                }
            }
            Op::RemoveDomain(d) => {
                let tenant = tenant_id(&d.tenant)?;
                who.may_change(&tenant)?;
                Command::RemoveDomain {
                    tenant,
                    domain: Domain::new(&d.domain).map_err(bad)?,
                }
            }
            Op::PutConnector(c) => {
                let connector = connector_from_wire(&c).map_err(bad)?;
                who.may_change(&connector.tenant)?;
                Command::PutConnector { connector }
            }
            Op::DeleteConnector(n) => {
                let tenant = tenant_id(&n.tenant)?;
                who.may_change(&tenant)?;
                Command::DeleteConnector {
                    tenant,
                    name: n.name,
                }
            }
            Op::PutUser(u) => {
                let tenant = tenant_id(&u.tenant)?;
                who.may_change(&tenant)?;
                let address = u.address.trim().to_lowercase();
                if !address.contains('@') {
                    return Err(bad(format!("`{address}` is not an email address")));
                }
                Command::PutUser {
                    user: User {
                        tenant,
                        address,
                        password_hash: hash_password(u.password).await?,
                        send_as: u.send_as.iter().map(|a| a.trim().to_lowercase()).collect(),
                    },
                }
            }
            Op::DeleteUser(n) => {
                let tenant = tenant_id(&n.tenant)?;
                who.may_change(&tenant)?;
                Command::DeleteUser {
                    tenant,
                    address: n.name.trim().to_lowercase(),
                }
            }
            Op::SetTransportConfig(t) => {
                let tenant = tenant_id(&t.tenant)?;
                who.may_change(&tenant)?;
                Command::SetTransportConfig {
                    tenant,
                    allow_legacy_tls_clients: t.allow_legacy_tls_clients,
                }
            }
            Op::SetSpeedBump(b) => {
                who.operator_only("set the speed bump schedule")?;
                let steps = b
                    .steps
                    .iter()
                    .map(step_from_wire)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(bad)?;
                Command::SetSpeedBump { steps }
            }
            Op::SetOutboundPolicy(o) => {
                let tenant = tenant_id(&o.tenant)?;
                who.may_change(&tenant)?;
                let default = OutboundPolicy::default();
                let action = match o.action.as_str() {
                    "" => default.action,
                    a => LimitAction::parse(a).ok_or_else(|| {
                        bad(format!(
                            "`{a}` is not an action (block-for-today, block, alert-only)"
                        ))
                    })?,
                };
                let or = |v: u32, d: u32| if v == 0 { d } else { v };
                Command::SetOutboundPolicy {
                    tenant,
                    policy: OutboundPolicy {
                        recipients_per_hour: or(o.recipients_per_hour, default.recipients_per_hour),
                        recipients_per_day: or(o.recipients_per_day, default.recipients_per_day),
                        action,
                    },
                }
            }
            Op::SetAlertContacts(c) => {
                let tenant = tenant_id(&c.tenant)?;
                who.may_change(&tenant)?;
                let webhook_url = c.webhook_url.trim();
                if !webhook_url.is_empty() {
                    crate::alerts::WebhookUrl::parse(webhook_url)
                        .map_err(Status::invalid_argument)?;
                }
                Command::SetAlertContacts {
                    tenant,
                    contacts: crate::state::AlertContacts {
                        emails: c.emails.iter().map(|e| e.trim().to_lowercase()).collect(),
                        webhook_url: webhook_url.to_owned(),
                        webhook_secret: c.webhook_secret,
                    },
                }
            }
            Op::SetAlertTransport(t) => {
                who.operator_only("set how alert emails are sent")?;
                Command::SetAlertTransport {
                    transport: crate::state::AlertTransport {
                        smtp: t.smtp.trim().to_owned(),
                        from: t.from.trim().to_owned(),
                    },
                }
            }
            Op::SetDetectionPolicy(d) => {
                let tenant = match d.tenant.as_str() {
                    "" => {
                        who.operator_only("set the default detection settings")?;
                        None
                    }
                    t => {
                        let t = tenant_id(t)?;
                        who.may_change(&t)?;
                        Some(t)
                    }
                };
                let def = DetectionPolicy::default();
                let pick = |v: u32, d: u32| if v == 0 { d } else { v };
                Command::SetDetectionPolicy {
                    tenant,
                    policy: DetectionPolicy {
                        interval_ms: if d.interval_ms == 0 {
                            def.interval_ms
                        } else {
                            d.interval_ms
                        },
                        warmup_intervals: pick(d.warmup_intervals, def.warmup_intervals),
                        spike_factor: pick(d.spike_factor, def.spike_factor),
                        min_messages: if d.min_messages == 0 {
                            def.min_messages
                        } else {
                            d.min_messages
                        },
                        unprovisioned_percent: pick(
                            d.unprovisioned_percent,
                            def.unprovisioned_percent,
                        ),
                        mismatch_percent: pick(d.mismatch_percent, def.mismatch_percent),
                        auth_fail_percent: pick(d.auth_fail_percent, def.auth_fail_percent),
                    },
                }
            }
            Op::Unblock(u) => {
                let tenant = tenant_id(&u.tenant)?;
                who.may_change(&tenant)?;
                let kind = EntityKind::parse(&u.kind).ok_or_else(|| {
                    bad(format!(
                        "`{}` is not an entity kind (user, connector)",
                        u.kind
                    ))
                })?;
                if u.reason.trim().is_empty() {
                    return Err(bad("unblocking needs a reason (--reason)"));
                }
                Command::Unblock {
                    tenant,
                    kind,
                    name: match kind {
                        EntityKind::User => u.name.trim().to_lowercase(),
                        EntityKind::Connector => u.name.trim().to_owned(),
                    },
                    reason: u.reason,
                }
            }
            Op::CreateToken(t) => {
                who.operator_only("create tokens")?;
                let role = Role::parse(&t.role).ok_or_else(|| {
                    bad(format!(
                        "`{}` is not a role (operator, tenant-admin, reader)",
                        t.role
                    ))
                })?;
                let tenant = match (role, t.tenant.as_str()) {
                    (Role::TenantAdmin, "") => {
                        return Err(bad("a tenant-admin token needs --tenant"));
                    }
                    (Role::TenantAdmin, t) => Some(tenant_id(t)?),
                    (_, "") => None,
                    (_, _) => return Err(bad("only tenant-admin tokens name a tenant")),
                };
                let id = random_hex(6);
                secret = format!("moat_{id}_{}", random_hex(24));
                Command::CreateToken {
                    token: TokenRecord {
                        id: id.clone(),
                        name: if t.name.is_empty() { id } else { t.name },
                        role,
                        tenant,
                        sha256: sha256_hex(&secret),
                        created_ms: 0,
                    },
                }
            }
            Op::RevokeToken(id) => {
                who.operator_only("revoke tokens")?;
                Command::RevokeToken { id }
            }
            Op::ApplySeed(s) => {
                who.operator_only("apply a seed")?;
                let tenants = Seed::parse(&s.toml)
                    .and_then(Seed::into_tenants)
                    .map_err(bad)?;
                Command::ApplySeed { tenants }
            }
            Op::SetOnpremPolicy(o) => {
                who.operator_only("change the on-premises Exchange settings")?;
                Command::SetOnpremPolicy {
                    baseline: if o.baseline.is_empty() {
                        None
                    } else {
                        Some(baseline_from_wire(&o.baseline).map_err(bad)?)
                    },
                    stages: match o.stages.trim() {
                        "" => None,
                        t => Some(moat_shared::onprem::Schedule::parse(t).map_err(bad)?),
                    },
                    service: (!o.service.trim().is_empty()).then(|| o.service.trim().to_owned()),
                    all_connectors: match o.scope.as_str() {
                        "" => None,
                        "onpremises" => Some(false),
                        "all-connectors" => Some(true),
                        other => {
                            return Err(bad(format!(
                                "`{other}` is not a scope (onpremises, all-connectors)"
                            )))
                        }
                    },
                }
            }
            Op::PauseOnprem(o) => {
                let tenant = tenant_id(&o.tenant)?;
                who.may_change(&tenant)?;
                Command::PauseOnprem {
                    tenant,
                    days: o.days,
                    reason: o.reason,
                }
            }
            Op::SetClock(at_ms) => {
                who.operator_only("move the cluster clock")?;
                if !self.shared.dev_clock {
                    return Err(Status::failed_precondition(
                        "this cluster keeps real time: only a `moat dev` cluster lets the clock be moved",
                    ));
                }
                Command::SetClock {
                    offset_ms: at_ms.saturating_sub(now_ms()),
                }
            }
            Op::AddNode(n) => {
                who.operator_only("change cluster membership")?;
                if n.id == 0 || n.address.is_empty() {
                    return Err(bad("add-node needs a node id above 0 and its address"));
                }
                let change = MemberChange::Add(n.id, n.address);
                let o = self.shared.ask(|r| Req::Member(change, r)).await?;
                return outcome_status(o).map(Response::new);
            }
            Op::RemoveNode(id) => {
                who.operator_only("change cluster membership")?;
                let o = self
                    .shared
                    .ask(|r| Req::Member(MemberChange::Remove(id), r))
                    .await?;
                return outcome_status(o).map(Response::new);
            }
        };
        let p = Proposal {
            at_ms: now_ms(),
            actor: who.name.clone(),
            request_id: (!w.request_id.is_empty()).then_some(w.request_id),
            command,
        };
        let o = self.shared.ask(|r| Req::Propose(p, r)).await?;
        let mut reply = outcome_status(o)?;
        reply.secret = secret;
        Ok(Response::new(reply))
    }

    async fn read(&self, req: Request<v1::ReadRequest>) -> Result<Response<v1::ReadReply>, Status> {
        let who = self.principal(&req, "read")?;
        let mut r = req.into_inner();
        if who.role == Role::TenantAdmin {
            let own = who
                .tenant
                .as_ref()
                .map(|t| t.to_string())
                .unwrap_or_default();
            if r.tenant.is_empty() {
                r.tenant = own.clone();
            }
            if r.tenant != own {
                return Err(Status::permission_denied(format!(
                    "token `{}` administers tenant `{own}` only; it cannot read tenant `{}`",
                    who.name, r.tenant
                )));
            }
            if r.kind == "token" {
                return Err(Status::permission_denied(
                    "tenant admins cannot list tokens",
                ));
            }
        }
        let known = [
            "tenant",
            "domain",
            "connector",
            "user",
            "transport-config",
            "token",
            "audit",
            "restricted",
            "counters",
            "speed-bump",
            "tls-report",
            "alerts",
            "outbound-policy",
            "detection",
            "alert-contacts",
            "onprem-servers",
            "onprem-policy",
            "onprem-pauses",
            "clock",
        ];
        if !known.contains(&r.kind.as_str()) {
            return Err(bad(format!(
                "`{}` is not a kind to read ({})",
                r.kind,
                known.join(", ")
            )));
        }
        let (tx, rx) = oneshot::channel();
        let stale = r.stale_ok;
        self.shared.send(Req::Read(
            stale,
            Box::new(move |state| {
                let _ = tx.send(read_reply(state, &r));
            }),
        ));
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(reply)) => Ok(Response::new(reply)),
            _ => Err(Status::unavailable(
                "no leader confirmed this read in time; retry, or pass --stale-ok for this replica's view",
            )),
        }
    }

    async fn cluster(
        &self,
        req: Request<v1::ClusterRequest>,
    ) -> Result<Response<v1::ClusterStatus>, Status> {
        let who = self.principal(&req, "cluster")?;
        if who.role == Role::TenantAdmin {
            return Err(Status::permission_denied(
                "tenant admins cannot see the cluster; use an operator or reader token",
            ));
        }
        let view = self.shared.view.borrow().clone();
        let status = view
            .status
            .unwrap_or_else(|| crate::node::Status::unknown(self.shared.id));
        let mut members: Vec<v1::Member> = status
            .voters
            .iter()
            .map(|id| (id, "voter"))
            .chain(status.learners.iter().map(|id| (id, "learner")))
            .map(|(id, role)| v1::Member {
                id: *id,
                address: view.addresses.get(id).cloned().unwrap_or_default(),
                role: role.into(),
            })
            .collect();
        members.sort_by_key(|m| m.id);
        let edges = self
            .shared
            .edges
            .lock()
            .map(|e| {
                e.iter()
                    .map(|(id, s)| v1::EdgeStatus {
                        edge_id: id.clone(),
                        applied_version: s.applied,
                        watching: self.shared.id,
                        last_seen_ms: s.last_seen_ms,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Response::new(v1::ClusterStatus {
            node_id: status.id,
            leader_id: status.leader,
            term: status.term,
            commit_index: status.commit,
            applied_index: status.applied,
            policy_version: view.policy_version,
            members,
            edges,
            snapshot_index: status.snapshot_index,
        }))
    }
}

/// Now on the cluster clock as a reader sees it: the wall clock plus the committed offset, and
/// never before the last applied entry.
fn read_now(state: &State) -> i64 {
    state
        .now_ms
        .max(now_ms().saturating_add(state.clock_offset_ms))
}

/// One row of the on-premises server report, with the next stage and its date as of now.
fn onprem_report(state: &State, s: &crate::state::OnpremServer) -> v1::OnpremServerReport {
    use moat_shared::onprem::{accrued_ms, DAY_MS};
    let now = read_now(state);
    let schedule = state.schedule();
    let baseline = state.baseline();
    let pauses = state.pauses(&s.tenant);
    let in_force = pauses.iter().find(|p| p.covers(now)).copied();
    let stage = schedule.get(s.stage).copied();
    let mut row = v1::OnpremServerReport {
        tenant: s.tenant.to_string(),
        server: s.server.clone(),
        build: s.build.to_string(),
        product: s.build.product().name().to_owned(),
        class: baseline.classify(&s.build).as_str().to_owned(),
        connector: s.connector.clone(),
        first_detected_ms: s.first_detected_ms.unwrap_or(0),
        stage: s.stage,
        throttle: stage.map_or(0, |x| u32::from(x.throttle)),
        block: stage.map_or(0, |x| u32::from(x.block)),
        throttle_enabled_ms: s.throttle_enabled_ms.unwrap_or(0),
        blocking_enabled_ms: s.blocking_enabled_ms.unwrap_or(0),
        recommended: baseline
            .recommended(&s.build)
            .iter()
            .map(ToString::to_string)
            .collect(),
        paused: s.first_detected_ms.is_some() && in_force.is_some(),
        paused_until_ms: in_force.map_or(0, |p| p.end_ms),
        remediated_ms: s.remediated_ms.unwrap_or(0),
        last_seen_ms: s.last_seen_ms,
        messages: s.messages,
        ..Default::default()
    };
    if let (Some(first), Some(next)) = (s.first_detected_ms, schedule.get(s.stage + 1)) {
        let left = i64::from(next.from_day) * DAY_MS - accrued_ms(first, now, &pauses);
        row.next_stage = s.stage + 1;
        row.next_throttle = u32::from(next.throttle);
        row.next_block = u32::from(next.block);
        row.next_stage_ms = in_force.map_or(now, |p| p.end_ms) + left.max(0);
    }
    row
}

fn read_reply(state: &State, r: &v1::ReadRequest) -> v1::ReadReply {
    let tenant_ok = |t: &TenantId| r.tenant.is_empty() || t.as_str() == r.tenant;
    let mut reply = v1::ReadReply {
        applied_index: state.applied,
        cluster_now_ms: read_now(state),
        clock_offset_ms: state.clock_offset_ms,
        ..Default::default()
    };
    match r.kind.as_str() {
        "tenant" | "domain" | "transport-config" => {
            reply.tenants = state
                .tenants
                .values()
                .filter(|t| tenant_ok(&t.id) && (r.name.is_empty() || t.id.as_str() == r.name))
                .map(tenant_to_wire)
                .collect();
        }
        "connector" => {
            reply.connectors = state
                .connectors
                .values()
                .filter(|c| tenant_ok(&c.tenant) && (r.name.is_empty() || c.name == r.name))
                .map(connector_to_wire)
                .collect();
        }
        "user" => {
            reply.users = state
                .users
                .values()
                .filter(|u| tenant_ok(&u.tenant) && (r.name.is_empty() || u.address == r.name))
                .map(|u| v1::User {
                    tenant: u.tenant.to_string(),
                    address: u.address.clone(),
                    send_as: u.send_as.clone(),
                })
                .collect();
        }
        "token" => {
            reply.tokens = state
                .tokens
                .values()
                .map(|t| v1::Token {
                    id: t.id.clone(),
                    name: t.name.clone(),
                    role: t.role.as_str().into(),
                    tenant: t.tenant.as_ref().map(|t| t.to_string()).unwrap_or_default(),
                    created_ms: t.created_ms,
                })
                .collect();
        }
        "audit" => {
            reply.audit = state
                .audit
                .iter()
                .rev()
                .filter(|a| r.tenant.is_empty() || a.tenant.as_ref().is_some_and(tenant_ok))
                .take(1000)
                .map(|a| v1::AuditRecord {
                    index: a.index,
                    at_ms: a.at_ms,
                    actor: a.actor.clone(),
                    action: a.action.clone(),
                    tenant: a.tenant.as_ref().map(|t| t.to_string()).unwrap_or_default(),
                })
                .collect();
            reply.audit.reverse();
        }
        "restricted" => {
            reply.restricted = state
                .restricted
                .iter()
                .filter(|e| tenant_ok(&e.tenant) && e.in_force(state.now_ms))
                .map(restricted_to_wire)
                .collect();
        }
        "speed-bump" => {
            reply.speed_bump = state.speed_bump.iter().map(step_to_wire).collect();
        }
        "detection" => {
            let default = state.detection.get("*").copied().unwrap_or_default();
            reply.detection = std::iter::once((String::new(), default))
                .chain(
                    state
                        .detection
                        .iter()
                        .filter(|(k, _)| k.as_str() != "*")
                        .map(|(k, p)| (k.clone(), *p)),
                )
                .filter(|(t, _)| r.tenant.is_empty() || t.is_empty() || *t == r.tenant)
                .map(|(tenant, p)| v1::DetectionPolicy {
                    tenant,
                    interval_ms: p.interval_ms,
                    warmup_intervals: p.warmup_intervals,
                    spike_factor: p.spike_factor,
                    min_messages: p.min_messages,
                    unprovisioned_percent: p.unprovisioned_percent,
                    mismatch_percent: p.mismatch_percent,
                    auth_fail_percent: p.auth_fail_percent,
                })
                .collect();
        }
        "outbound-policy" => {
            reply.outbound = state
                .tenants
                .keys()
                .filter(|t| tenant_ok(t))
                .map(|t| {
                    let p = state.outbound.get(t).copied().unwrap_or_default();
                    v1::OutboundPolicy {
                        tenant: t.to_string(),
                        recipients_per_hour: p.recipients_per_hour,
                        recipients_per_day: p.recipients_per_day,
                        action: p.action.as_str().into(),
                    }
                })
                .collect();
        }
        "alerts" => {
            reply.alerts = state
                .alerts
                .iter()
                .filter(|a| tenant_ok(&a.tenant))
                .map(|a| v1::Alert {
                    at_ms: a.at_ms,
                    tenant: a.tenant.to_string(),
                    severity: a.severity.clone(),
                    title: a.title.clone(),
                    detail: a.detail.clone(),
                    id: a.id,
                    deliveries: a
                        .deliveries
                        .iter()
                        .map(|d| v1::AlertDelivery {
                            channel: d.channel.clone(),
                            target: d.target.clone(),
                            state: match d.state {
                                crate::state::DeliveryState::Pending => "pending",
                                crate::state::DeliveryState::Delivered => "delivered",
                                crate::state::DeliveryState::Failed => "failed",
                            }
                            .into(),
                            attempts: d.attempts,
                            last_error: d.last_error.clone(),
                        })
                        .collect(),
                })
                .collect();
        }
        "onprem-servers" => {
            reply.onprem_servers = state
                .onprem_servers
                .values()
                .filter(|s| tenant_ok(&s.tenant) && (r.name.is_empty() || s.server == r.name))
                .map(|s| onprem_report(state, s))
                .collect();
        }
        "onprem-policy" => {
            reply.onprem_policy = Some(v1::OnpremPolicy {
                baseline: baseline_to_wire(state),
                stages: state.schedule().render(),
                service: if state.onprem_service.is_empty() {
                    moat_shared::onprem::DEFAULT_SERVICE.to_owned()
                } else {
                    state.onprem_service.clone()
                },
                scope: if state.onprem_all_connectors {
                    "all-connectors"
                } else {
                    "onpremises"
                }
                .to_owned(),
            });
        }
        "onprem-pauses" => {
            use moat_shared::onprem::{pause_days_used, Pause, PAUSE_DAYS_PER_YEAR};
            let now = read_now(state);
            let year = moat_shared::time::civil_from_days(moat_shared::time::day_of_ms(now)).0;
            let records = TenantId::new(&r.tenant)
                .ok()
                .and_then(|t| state.onprem_pauses.get(&t))
                .cloned()
                .unwrap_or_default();
            let list: Vec<Pause> = records.iter().map(|p| p.pause).collect();
            let used = pause_days_used(&list, year);
            reply.onprem_pauses = Some(v1::OnpremPauses {
                tenant: r.tenant.clone(),
                pauses: records
                    .iter()
                    .map(|p| v1::OnpremPauseRecord {
                        start_ms: p.pause.start_ms,
                        end_ms: p.pause.end_ms,
                        days: p.pause.days(),
                        actor: p.actor.clone(),
                        reason: p.reason.clone(),
                    })
                    .collect(),
                year: i32::try_from(year).unwrap_or_default(),
                days_used: used,
                days_left: PAUSE_DAYS_PER_YEAR.saturating_sub(used),
                paused_until_ms: list.iter().find(|p| p.covers(now)).map_or(0, |p| p.end_ms),
            });
        }
        "clock" => {}
        "alert-contacts" => {
            reply.alert_contacts = state
                .alert_contacts
                .iter()
                .filter(|(t, _)| tenant_ok(t))
                .map(|(t, c)| v1::AlertContacts {
                    tenant: t.to_string(),
                    emails: c.emails.clone(),
                    webhook_url: c.webhook_url.clone(),
                    webhook_secret: if c.webhook_secret.is_empty() {
                        String::new()
                    } else {
                        "(set)".into()
                    },
                })
                .collect();
            reply.alert_transport = Some(v1::AlertTransport {
                smtp: state.alert_transport.smtp.clone(),
                from: state.alert_transport.from.clone(),
            });
        }
        "tls-report" => {
            let days = if r.days == 0 { 7 } else { i64::from(r.days) };
            let today = moat_shared::time::day_of_ms(read_now(state));
            let first = moat_shared::time::day_string(today - days + 1);
            fn rows<'a>(
                table: &'a BTreeMap<String, crate::state::Tally>,
                first: &str,
                want: &str,
            ) -> Vec<(String, String, [&'a str; 3], crate::state::Tally)> {
                table
                    .range(first.to_owned()..)
                    .filter_map(|(k, t)| {
                        let parts: Vec<&str> = k.splitn(5, '|').collect();
                        let [day, tenant, a, b, c] = parts[..] else {
                            return None;
                        };
                        (want.is_empty() || want == tenant)
                            .then(|| (day.to_owned(), tenant.to_owned(), [a, b, c], *t))
                    })
                    .collect()
            }
            reply.tls_usage = rows(&state.tls_usage, &first, &r.tenant)
                .into_iter()
                .map(
                    |(day, tenant, [listener, version, cipher], t)| v1::TlsUsage {
                        day,
                        tenant,
                        listener: listener.into(),
                        version: version.into(),
                        cipher: cipher.into(),
                        sessions: t.sessions,
                        messages: t.messages,
                    },
                )
                .collect();
            reply.legacy_clients = rows(&state.legacy_clients, &first, &r.tenant)
                .into_iter()
                .map(|(day, tenant, [ip, user, version], t)| v1::LegacyClient {
                    day,
                    tenant,
                    client_ip: ip.into(),
                    user: user.into(),
                    version: version.into(),
                    sessions: t.sessions,
                    messages: t.messages,
                })
                .collect();
        }
        "counters" => {
            reply.counters = state
                .counters
                .iter()
                .filter_map(|(k, c)| {
                    let mut parts = k.splitn(3, '|');
                    let (scope, key, name) = (parts.next()?, parts.next()?, parts.next()?);
                    let owned = r.tenant.is_empty()
                        || (scope == "tenant" && key == r.tenant)
                        || (scope == "connector"
                            && key
                                .strip_prefix(r.tenant.as_str())
                                .is_some_and(|k| k.starts_with('/')));
                    owned.then(|| v1::CounterTotal {
                        scope: scope.into(),
                        key: key.into(),
                        name: name.into(),
                        total: c.total,
                        last_minute: c.last_minute,
                    })
                })
                .collect();
        }
        _ => {}
    }
    reply
}
