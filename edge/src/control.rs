//! The edge's link to the control plane: it watches policy and reports counters.
//!
//! - [`watch`] keeps one `Policy.Sync` stream open to some control node (any node serves the
//!   policy from its applied state): a full snapshot in parts when the edge holds nothing, then
//!   each change, applied by a [`Follower`] at the cost of the change and published into the
//!   [`PolicyHandle`]; the edge reports each version it enforces with its digest. When the
//!   stream breaks it moves to the next node with backoff and resumes from the version it
//!   holds. A node of the previous release (no `Sync`) is watched with `Policy.Watch`, whole
//!   snapshots. With no node reachable the edge keeps enforcing the snapshot it has (fail
//!   static); [`LinkStatus`] says for how long.
//! - [`report`] sends the [`Counters`] gathered since the last batch about once a second. A
//!   batch keeps its sequence number and content until the leader acknowledges it as
//!   committed, so a leader that dies mid-batch costs a retry, never a count; the control plane
//!   drops a batch it has already applied by (edge id, sequence).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moat_proto::convert::snapshot_from_wire;
use prost::Message as _;

use crate::sync::Follower;
use moat_proto::mtls::InternalTls;
use moat_proto::v1;
use moat_shared::time::now_ms;
use moat_shared::PolicyHandle;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

/// How long connecting to a control node, opening a watch or reporting a batch may take before
/// the next node is tried.
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);

/// How long the leader may take to acknowledge a batch (its batching window plus a commit)
/// before the next node is tried.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest policy snapshot accepted.
const MAX_SNAPSHOT: usize = 512 * 1024 * 1024;

/// What the edge knows about its control-plane link.
#[derive(Debug, Default)]
pub struct LinkStatus {
    connected: AtomicBool,
    /// Unix ms of the last message from (or successful connect to) a control node.
    last_contact_ms: AtomicI64,
    /// Unix ms when the current snapshot was committed by the control plane.
    policy_changed_ms: AtomicI64,
    batches_acked: AtomicU64,
}

impl LinkStatus {
    /// Whether a watch stream is open now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Seconds since the control plane was last heard from (0 while connected), `None` if never.
    pub fn seconds_since_contact(&self) -> Option<f64> {
        let last = self.last_contact_ms.load(Ordering::Relaxed);
        if last == 0 {
            return None;
        }
        if self.connected() {
            return Some(0.0);
        }
        Some((now_ms() - last).max(0) as f64 / 1000.0)
    }

    /// When the enforced snapshot's last change was committed (Unix ms), 0 if none.
    pub fn policy_changed_ms(&self) -> i64 {
        self.policy_changed_ms.load(Ordering::Relaxed)
    }

    /// Signal batches acknowledged so far.
    pub fn batches_acked(&self) -> u64 {
        self.batches_acked.load(Ordering::Relaxed)
    }
}

fn endpoint(addr: &str, tls: Option<&InternalTls>) -> Result<Endpoint, tonic::transport::Error> {
    Ok(moat_proto::mtls::endpoint(addr, tls)?
        .connect_timeout(Duration::from_secs(1))
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(Duration::from_secs(3))
        .keep_alive_while_idle(true))
}

/// Most distinct counters held between two reports.
pub const MAX_COUNTERS: usize = 100_000;

/// Most evidence lines held between two reports (one per on-premises sighting counter).
pub const MAX_EVIDENCE: usize = 1000;

/// Most counters with Message-ID samples held between two reports.
pub const MAX_SAMPLED: usize = 1000;

/// Counter deltas gathered since the last batch, by (scope, key, name).
#[derive(Debug, Default)]
pub struct Counters {
    map: Mutex<HashMap<(String, String, String), u64>>,
    /// The `Received:` line of each on-premises sighting counter, the newest one per counter.
    evidence: Mutex<HashMap<(String, String), String>>,
    /// Message-IDs of the [`moat_shared::signal::NON_ACCEPTED`] counters, the first few per
    /// counter.
    samples: Mutex<HashMap<(String, String), Vec<String>>>,
    /// Set by [`Counters::send_now`]: the next batch is urgent.
    urgent: AtomicBool,
    wake: tokio::sync::Notify,
}

impl Counters {
    /// Adds `v` to a counter. Past [`MAX_COUNTERS`] distinct counters between two reports (a
    /// control plane unreachable for long), new counters are dropped rather than letting memory
    /// grow without bound; existing ones keep counting.
    pub fn add(&self, scope: &str, key: &str, name: &str, v: u64) {
        if v == 0 {
            return;
        }
        if let Ok(mut m) = self.map.lock() {
            let k = (scope.to_owned(), key.to_owned(), name.to_owned());
            if m.len() >= MAX_COUNTERS && !m.contains_key(&k) {
                return;
            }
            *m.entry(k).or_default() += v;
        }
    }

    /// Keeps `line` as the evidence of the [`moat_shared::signal::ONPREM`] counter `(key, name)`
    /// for the next batch (the newest line per counter; at most [`MAX_EVIDENCE`] counters).
    pub fn evidence(&self, key: &str, name: &str, line: &str) {
        if let Ok(mut m) = self.evidence.lock() {
            let k = (key.to_owned(), name.to_owned());
            if m.len() >= MAX_EVIDENCE && !m.contains_key(&k) {
                return;
            }
            m.insert(k, moat_shared::exchange::bound_evidence(line));
        }
    }

    /// Keeps `message_id` as a sample of the [`moat_shared::signal::NON_ACCEPTED`] counter
    /// `(key, name)` for the next batch: the first
    /// [`SAMPLES_PER_COUNTER`](moat_shared::signal::SAMPLES_PER_COUNTER) distinct ones per
    /// counter, each bounded, at most [`MAX_SAMPLED`] counters.
    pub fn sample(&self, key: &str, name: &str, message_id: &str) {
        let id = moat_shared::signal::bound_message_id(message_id);
        if id.is_empty() {
            return;
        }
        if let Ok(mut m) = self.samples.lock() {
            let k = (key.to_owned(), name.to_owned());
            if m.len() >= MAX_SAMPLED && !m.contains_key(&k) {
                return;
            }
            let list = m.entry(k).or_default();
            if list.len() < moat_shared::signal::SAMPLES_PER_COUNTER && !list.contains(&id) {
                list.push(id);
            }
        }
    }

    /// Sends what is counted at once, as an urgent batch the leader commits without waiting
    /// for its batching window (a sighting that ends enforcement).
    pub fn send_now(&self) {
        self.urgent.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    fn take_evidence(&self) -> Vec<v1::OnpremEvidence> {
        let Ok(mut m) = self.evidence.lock() else {
            return Vec::new();
        };
        std::mem::take(&mut *m)
            .into_iter()
            .map(|((key, name), received)| v1::OnpremEvidence {
                key,
                name,
                received,
            })
            .collect()
    }

    fn take_samples(&self) -> Vec<v1::MessageIdSample> {
        let Ok(mut m) = self.samples.lock() else {
            return Vec::new();
        };
        std::mem::take(&mut *m)
            .into_iter()
            .flat_map(|((key, name), ids)| {
                ids.into_iter().map(move |message_id| v1::MessageIdSample {
                    key: key.clone(),
                    name: name.clone(),
                    message_id,
                })
            })
            .collect()
    }

    fn take(&self) -> Vec<v1::CounterDelta> {
        let Ok(mut m) = self.map.lock() else {
            return Vec::new();
        };
        std::mem::take(&mut *m)
            .into_iter()
            .map(|((scope, key, name), value)| v1::CounterDelta {
                scope,
                key,
                name,
                value,
            })
            .collect()
    }
}

/// Keeps the policy handle fed from the control plane, forever.
pub async fn watch(
    endpoints: Vec<String>,
    tls: Option<InternalTls>,
    edge_id: String,
    policy: PolicyHandle,
    status: Arc<LinkStatus>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut follower = Follower::new();
    for addr in endpoints.iter().cycle() {
        let synced = sync_once(
            addr,
            tls.as_ref(),
            &edge_id,
            &policy,
            &status,
            &mut follower,
        )
        .await;
        let ended = match synced {
            Err(Ended::Unimplemented) => {
                // A node of the previous release: whole snapshots, which the follower's book
                // does not follow.
                follower.invalidate();
                watch_once(addr, tls.as_ref(), &edge_id, &policy, &status).await
            }
            Err(Ended::Error(e)) => Err(e),
            Ok(()) => Ok(()),
        };
        match ended {
            Ok(()) => tracing::warn!(control = %addr, "policy stream ended"),
            Err(e) => tracing::warn!(control = %addr, "policy stream: {e}"),
        }
        if status.connected.swap(false, Ordering::Relaxed) {
            backoff = Duration::from_millis(100);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Why a `Sync` stream ended.
enum Ended {
    /// The node does not serve `Sync` (the previous release).
    Unimplemented,
    /// Anything else, in words.
    Error(String),
}

impl From<String> for Ended {
    fn from(e: String) -> Self {
        Ended::Error(e)
    }
}

/// One `Sync` stream with one node, until it breaks.
async fn sync_once(
    addr: &str,
    tls: Option<&InternalTls>,
    edge_id: &str,
    policy: &PolicyHandle,
    status: &LinkStatus,
    follower: &mut Follower,
) -> Result<(), Ended> {
    let channel = tokio::time::timeout(
        OPEN_TIMEOUT,
        endpoint(addr, tls).map_err(|e| e.to_string())?.connect(),
    )
    .await
    .map_err(|_| "cannot connect: timed out".to_owned())?
    .map_err(|e| format!("cannot connect: {e}"))?;
    let mut client = v1::policy_client::PolicyClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    let _ = tx
        .send(follower.hello(edge_id, policy.load().version()))
        .await;
    let opened = tokio::time::timeout(
        OPEN_TIMEOUT,
        client.sync(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .map_err(|_| "no answer to the sync request".to_owned())?;
    let mut stream = match opened {
        Ok(s) => s.into_inner(),
        Err(e) if e.code() == tonic::Code::Unimplemented => return Err(Ended::Unimplemented),
        Err(e) => return Err(Ended::Error(e.message().to_owned())),
    };
    status.connected.store(true, Ordering::Relaxed);
    status.last_contact_ms.store(now_ms(), Ordering::Relaxed);
    tracing::info!(control = %addr, full = follower.needs_full(), "watching policy");
    let started = std::time::Instant::now();
    while let Some(part) = stream.message().await.map_err(|e| e.message().to_owned())? {
        status.last_contact_ms.store(now_ms(), Ordering::Relaxed);
        let kind = if part.reset || follower.needs_full() {
            "full"
        } else {
            "change"
        };
        metrics::counter!("moat_edge_policy_parts_total", "kind" => kind).increment(1);
        metrics::counter!("moat_edge_policy_bytes_total", "kind" => kind)
            .increment(part.encoded_len() as u64);
        let current = policy.load();
        // A part of a full snapshot holds thousands of objects: not on a worker that also
        // runs SMTP sessions. The follower travels to the blocking thread and back.
        let t0 = std::time::Instant::now();
        let owned = std::mem::take(follower);
        let (back, received) = tokio::task::spawn_blocking(move || {
            let mut f = owned;
            let r = f.receive(&current, &part);
            (f, r)
        })
        .await
        .map_err(|e| format!("applying a policy update failed: {e}"))?;
        *follower = back;
        metrics::histogram!("moat_edge_policy_apply_seconds", "kind" => kind)
            .record(t0.elapsed().as_secs_f64());
        let completed = match received {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(why) => {
                metrics::counter!("moat_edge_policy_resyncs_total", "reason" => why.reason())
                    .increment(1);
                tracing::error!(
                    "{why}; keeping the policy enforced now and asking for a full snapshot"
                );
                return Err(Ended::Error(why.to_string()));
            }
        };
        let version = completed.snapshot.version();
        let full = completed.full;
        let previous = policy.load();
        let published = if full {
            policy.replace(completed.snapshot)
        } else {
            policy.publish(completed.snapshot)
        };
        if !published {
            // Older than what the edge enforces: this node is behind; take the policy from it
            // again once it has caught up.
            follower.invalidate();
            return Err(Ended::Error(format!(
                "the node sent version {version}, older than the {} enforced here",
                previous.version()
            )));
        }
        retire(previous);
        status
            .policy_changed_ms
            .store(completed.changed_at_ms, Ordering::Relaxed);
        if full {
            tracing::info!(
                version,
                seconds = started.elapsed().as_secs_f64(),
                "policy applied from a full snapshot"
            );
        } else {
            tracing::debug!(version, "policy change applied");
        }
        let _ = tx.send(follower.ack(edge_id, version)).await;
    }
    Ok(())
}

async fn watch_once(
    addr: &str,
    tls: Option<&InternalTls>,
    edge_id: &str,
    policy: &PolicyHandle,
    status: &LinkStatus,
) -> Result<(), String> {
    // A frozen node completes the TCP handshake and then says nothing: bound the connect and
    // the stream's opening, then move on to the next node.
    let channel = tokio::time::timeout(
        OPEN_TIMEOUT,
        endpoint(addr, tls).map_err(|e| e.to_string())?.connect(),
    )
    .await
    .map_err(|_| "cannot connect: timed out".to_owned())?
    .map_err(|e| format!("cannot connect: {e}"))?;
    let mut client =
        v1::policy_client::PolicyClient::new(channel).max_decoding_message_size(MAX_SNAPSHOT);
    let (tx, rx) = mpsc::channel(16);
    let hello = v1::WatchRequest {
        edge_id: edge_id.to_owned(),
        applied_version: policy.load().version(),
        ..Default::default()
    };
    let _ = tx.send(hello).await;
    let mut stream = tokio::time::timeout(
        OPEN_TIMEOUT,
        client.watch(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .map_err(|_| "no answer to the watch request".to_owned())?
    .map_err(|e| e.message().to_owned())?
    .into_inner();
    status.connected.store(true, Ordering::Relaxed);
    status.last_contact_ms.store(now_ms(), Ordering::Relaxed);
    tracing::info!(control = %addr, "watching policy");
    while let Some(snap) = stream.message().await.map_err(|e| e.message().to_owned())? {
        status.last_contact_ms.store(now_ms(), Ordering::Relaxed);
        let version = snap.version;
        let changed_at_ms = snap.changed_at_ms;
        // A snapshot with a million connectors takes seconds to index: not on a worker that
        // also runs SMTP sessions.
        let built = tokio::task::spawn_blocking(move || snapshot_from_wire(&snap))
            .await
            .map_err(|e| format!("building the snapshot failed: {e}"))?;
        match built {
            Ok(s) => {
                let previous = policy.load();
                if policy.publish(s) {
                    retire(previous);
                    status
                        .policy_changed_ms
                        .store(changed_at_ms, Ordering::Relaxed);
                    tracing::info!(version, "policy applied");
                }
            }
            Err(e) => {
                tracing::error!(
                    version,
                    "policy snapshot refused, keeping the current one: {e}"
                )
            }
        }
        let ack = v1::WatchRequest {
            edge_id: edge_id.to_owned(),
            applied_version: policy.load().version(),
            ..Default::default()
        };
        let _ = tx.send(ack).await;
    }
    Ok(())
}

/// Frees replaced snapshots on a thread of their own once no session holds them any more, so
/// that neither the watch task nor the last session to use one pays for freeing it (half a
/// second for a million connectors).
fn retire(previous: Arc<moat_shared::PolicySnapshot>) {
    type Retired = std::sync::mpsc::Sender<Arc<moat_shared::PolicySnapshot>>;
    static REAPER: std::sync::OnceLock<Mutex<Retired>> = std::sync::OnceLock::new();
    let reaper = REAPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Arc<moat_shared::PolicySnapshot>>();
        let spawned = std::thread::Builder::new()
            .name("snapshot-reaper".into())
            .spawn(move || {
                let mut held = Vec::new();
                loop {
                    match rx.recv_timeout(Duration::from_millis(100)) {
                        Ok(s) => held.push(s),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                    // The handle no longer holds these: a count of one is ours alone.
                    held.retain(|s| Arc::strong_count(s) > 1);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("no snapshot reaper thread ({e}); old snapshots are freed inline");
        }
        Mutex::new(tx)
    });
    if let Ok(tx) = reaper.lock() {
        // If the thread is gone the snapshot comes back in the error and is dropped here.
        let _ = tx.send(previous);
    }
}

/// Sends counter batches to the leader about once a second, forever.
pub async fn report(
    endpoints: Vec<String>,
    tls: Option<InternalTls>,
    edge_id: String,
    counters: Arc<Counters>,
    policy: PolicyHandle,
    status: Arc<LinkStatus>,
) {
    // Sequence numbers must grow across restarts of this (stateless) edge: start from the clock.
    let mut seq = (now_ms().max(0) as u64) * 1000;
    let mut pending: Option<v1::SignalBatch> = None;
    let mut leader: Option<String> = None;
    let mut next = 0usize;
    let mut clients: HashMap<String, v1::signal_client::SignalClient<Channel>> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = counters.wake.notified() => {}
        }
        let urgent = counters.urgent.swap(false, Ordering::Relaxed);
        if let Some(p) = &mut pending {
            p.urgent |= urgent;
        } else {
            let deltas = counters.take();
            if deltas.is_empty() {
                continue;
            }
            seq += 1;
            pending = Some(v1::SignalBatch {
                edge_id: edge_id.clone(),
                seq,
                policy_version: policy.load().version(),
                counters: deltas,
                urgent,
                onprem_evidence: counters.take_evidence(),
                message_id_samples: counters.take_samples(),
            });
        }
        let Some(batch) = pending.clone() else {
            continue;
        };
        // A few quick attempts per tick: the hinted leader first, then the nodes in turn.
        for _ in 0..endpoints.len() + 2 {
            let addr = match leader.take() {
                Some(l) => l,
                None => {
                    next = (next + 1) % endpoints.len().max(1);
                    match endpoints.get(next) {
                        Some(a) => a.clone(),
                        None => break,
                    }
                }
            };
            let client = match clients.get(&addr) {
                Some(c) => c.clone(),
                None => match endpoint(&addr, tls.as_ref()) {
                    Ok(e) => {
                        let c = v1::signal_client::SignalClient::new(e.connect_lazy());
                        clients.insert(addr.clone(), c.clone());
                        c
                    }
                    Err(_) => continue,
                },
            };
            let mut client = client;
            // A retry after a timeout is safe: the batch keeps its sequence number.
            let sent = tokio::time::timeout(REPORT_TIMEOUT, client.report(batch.clone())).await;
            let sent = sent.unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer")));
            match sent {
                Ok(_) => {
                    pending = None;
                    leader = Some(addr);
                    status.batches_acked.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    if std::error::Error::source(&e).is_some() {
                        // A transport failure, not the node's answer: connect again, with
                        // the current (maybe renewed) certificate.
                        clients.remove(&addr);
                    }
                    leader = e
                        .metadata()
                        .get("moat-leader")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    tracing::debug!(control = %addr, "signal batch {}: {}", batch.seq, e.message());
                }
            }
        }
    }
}
