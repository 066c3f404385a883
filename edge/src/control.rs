//! The edge's link to the control plane: it watches policy and reports counters.
//!
//! - [`watch`] keeps one `Policy.Watch` stream open to some control node (any node serves
//!   snapshots from its applied state), publishes each snapshot into the [`PolicyHandle`] and
//!   reports the version it applied. When the stream breaks it moves to the next node with
//!   backoff. With no node reachable the edge keeps enforcing the snapshot it has (fail
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

/// Counter deltas gathered since the last batch, by (scope, key, name).
#[derive(Debug, Default)]
pub struct Counters {
    map: Mutex<HashMap<(String, String, String), u64>>,
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

    /// Sends what is counted at once, as an urgent batch the leader commits without waiting
    /// for its batching window (a sighting that ends enforcement).
    pub fn send_now(&self) {
        self.urgent.store(true, Ordering::Relaxed);
        self.wake.notify_one();
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
    for addr in endpoints.iter().cycle() {
        match watch_once(addr, tls.as_ref(), &edge_id, &policy, &status).await {
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
