//! The node thread: the one OS thread that owns the [`Core`] and everything it decides.
//!
//! It waits for [`Req`]s until the next tick, handles them in bursts, ticks the node, runs the
//! housekeeping a leader owes (turning held signal batches into one entry, the on-premises
//! tick, the seed), drives one ready round, hands messages to the peer transport, answers the
//! proposals and reads that finished, and publishes what the services read without asking it:
//! the policy snapshot, the [`View`] and the admin tokens.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use moat_proto::mtls::InternalTls;
use moat_shared::time::now_ms;
use moat_shared::{EntityKind, Tenant};
use raft::eraftpb::{Message, MessageType};
use tokio::sync::watch;

use super::node::{Core, MemberChange};
use super::transport::Peers;
use super::{ReadFn, Refusal, Reply, Req, View, REQUEST_TIMEOUT};
use crate::publish::Published;
use crate::state::{Command, Outcome, Proposal, SignalBatch, State, TokenRecord};
use crate::storage::sled::Sled;

/// How often the leader turns the signal batches it holds into one log entry.
const SIGNAL_WINDOW: Duration = Duration::from_millis(500);
/// Counter deltas the leader holds or has in flight before it refuses more (see
/// `docs/benchmarks.md`: beyond about this much per window a 2-core cluster fell behind and lost
/// its leader to the size of the entries).
const MAX_SIGNAL_BACKLOG: usize = 200_000;

/// The admin tokens as the node thread publishes them, by the SHA-256 of the token.
pub(crate) type Tokens = Arc<RwLock<HashMap<String, TokenRecord>>>;

/// What the node thread needs besides its [`Core`].
pub(crate) struct Setup {
    /// The `host:port` peers reach this node at (sent with every raft batch).
    pub(crate) advertise: String,
    /// Every known node's address, this one included.
    pub(crate) addresses: BTreeMap<u64, String>,
    /// Tenants to create once the cluster has a leader.
    pub(crate) seed: Vec<Tenant>,
    /// Raft tick period.
    pub(crate) tick: Duration,
    /// Client side of mutual TLS toward peers.
    pub(crate) tls: Option<InternalTls>,
}

/// What a started node thread gives the services: its request channel and what it publishes.
pub(crate) struct Started {
    /// Requests to the thread.
    pub(crate) tx: std_mpsc::Sender<Req>,
    /// The published policy: the newest version and the recent steps.
    pub(crate) policy: watch::Receiver<Arc<Published>>,
    /// Raft status and addresses.
    pub(crate) view: watch::Receiver<View>,
    /// The admin tokens.
    pub(crate) tokens: Tokens,
}

/// Starts the node thread (named `raft-ID`) over `core`. Must be called inside a tokio runtime:
/// the peer tasks run on it.
pub(crate) fn spawn(core: Core<Sled>, setup: Setup) -> std::io::Result<Started> {
    let (tx, rx) = std_mpsc::channel();
    let (policy_tx, policy_rx) = watch::channel(Arc::new(core.published().clone()));
    let (view_tx, view_rx) = watch::channel(View::default());
    let tokens: Tokens = Arc::new(RwLock::new(HashMap::new()));
    let id = core.id();
    let thread = NodeThread {
        peers: Peers::new(
            id,
            setup.advertise,
            setup.tls,
            tokio::runtime::Handle::current(),
            tx.clone(),
        ),
        core,
        rx,
        addresses: setup.addresses,
        pending: HashMap::new(),
        reads: HashMap::new(),
        signals: Vec::new(),
        signal_waiters: HashMap::new(),
        last_signal_flush: Instant::now(),
        last_tick: None,
        seed: setup.seed,
        last_seed_attempt: None,
        policy_tx,
        view_tx,
        tokens: Arc::clone(&tokens),
        published_tokens: None,
        published_applied: u64::MAX,
        recorded: (u64::MAX, Instant::now()),
        tick: setup.tick,
    };
    std::thread::Builder::new()
        .name(format!("raft-{id}"))
        .spawn(move || thread.run())?;
    Ok(Started {
        tx,
        policy: policy_rx,
        view: view_rx,
        tokens,
    })
}

struct NodeThread {
    core: Core<Sled>,
    rx: std_mpsc::Receiver<Req>,
    /// Sending tasks toward peers.
    peers: Peers,
    addresses: BTreeMap<u64, String>,
    pending: HashMap<u64, (Instant, Reply<Outcome>)>,
    reads: HashMap<u64, (Instant, ReadFn)>,
    signals: Vec<(SignalBatch, Reply<()>)>,
    /// Signal entries proposed and not yet applied: when, how many deltas, who waits.
    signal_waiters: HashMap<u64, (Instant, usize, Vec<Reply<()>>)>,
    last_signal_flush: Instant,
    last_tick: Option<Instant>,
    seed: Vec<Tenant>,
    last_seed_attempt: Option<Instant>,
    policy_tx: watch::Sender<Arc<Published>>,
    view_tx: watch::Sender<View>,
    tokens: Tokens,
    published_tokens: Option<BTreeMap<String, TokenRecord>>,
    published_applied: u64,
    /// The applied index the state gauges were last set at, and when.
    recorded: (u64, Instant),
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
                        let _ = reply.send(Err(e.into()));
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
                    let _ = reply.send(Err(e.into()));
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
            && self.core.state().onprem.due(cluster_now)
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
                state.directory.tenants.get(&t.id).is_some_and(|have| {
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

    /// Hands a raft message to its peer's sending task.
    fn send(&mut self, m: Message) {
        let to = m.to;
        let Some(addr) = self.addresses.get(&to) else {
            tracing::debug!(to, "no address for raft peer; message dropped");
            return;
        };
        let snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
        if !self.peers.send(addr, m) {
            // Raft tolerates loss; tell it so it probes again.
            self.core.report_unreachable(to);
            if snapshot {
                self.core.report_snapshot(to, false);
            }
        }
    }

    fn publish(&mut self, policy_changed: bool) {
        let state = self.core.state();
        if policy_changed || self.policy_tx.borrow().stamp.version != state.policy_version {
            // O(1): the view and the history are persistent maps.
            self.policy_tx
                .send_replace(Arc::new(self.core.published().clone()));
        }
        if self.published_applied != state.applied
            && self.published_tokens.as_ref() != Some(&state.tokens.records)
        {
            let map = state
                .tokens
                .records
                .values()
                .map(|t| (t.sha256.clone(), t.clone()))
                .collect();
            if let Ok(mut w) = self.tokens.write() {
                *w = map;
            }
            self.published_tokens = Some(state.tokens.records.clone());
        }
        // The gauges walk the restrictions, the servers and the alerts: at each policy change,
        // otherwise at most once a second (the loop comes back here at every tick), not at
        // every entry of a busy log.
        if self.recorded.0 != state.applied
            && (policy_changed || self.recorded.1.elapsed() >= Duration::from_secs(1))
        {
            self.recorded = (state.applied, Instant::now());
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

/// Sets the gauges that describe the replicated state.
fn record_state(state: &State) {
    metrics::gauge!("moat_control_policy_version").set(state.policy_version as f64);
    for kind in [EntityKind::Connector, EntityKind::User] {
        let n = state.restricted.iter().filter(|r| r.kind == kind).count();
        metrics::gauge!("moat_control_restricted_entities", "kind" => kind.as_str()).set(n as f64);
    }
    let mut stages = [0usize; 9];
    for s in state.onprem.servers.values() {
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
        .records
        .iter()
        .flat_map(|a| &a.deliveries)
        .filter(|d| d.state == crate::state::DeliveryState::Failed)
        .count();
    metrics::gauge!("moat_control_alerts_undelivered").set(undelivered as f64);
}
