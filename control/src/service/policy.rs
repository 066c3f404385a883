//! The Policy service: how edges learn the policy.
//!
//! - `Sync` (incremental): the edge says which version it holds; the node answers with the
//!   steps after it from its history, or with a full snapshot in parts when the edge holds
//!   nothing, asks to resync, or is older than the history; then with each step as it is
//!   committed. The edge's side of the stream reports each version it applies with its digest,
//!   which is compared with this node's digest of that version ([`Agreement`]).
//! - `Watch` (the previous release's edges): the whole snapshot, then the whole snapshot again
//!   at each change, built from the published view off the node thread.
//!
//! A node that has known no leader for longer than `unready_after` refuses new streams and
//! ends open ones, so edges move to a node that still follows the cluster.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use moat_proto::mtls::Role as CertRole;
use moat_proto::v1;
use moat_shared::time::now_ms;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{Agreement, EdgeSeen, Services, Shared};
use crate::publish::Published;

/// The stream of snapshots one `Watch` receives.
type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::PolicySnapshot, Status>> + Send>>;

/// The stream of updates one `Sync` receives.
type SyncStream = Pin<Box<dyn Stream<Item = Result<v1::PolicyUpdate, Status>> + Send>>;

/// How long an edge may take to say who it is after opening `Sync`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Refuses a new stream, or ends an open one, on a node cut off from the quorum.
fn leaderless(shared: &Shared) -> Option<Status> {
    shared
        .leaderless_for()
        .filter(|d| *d > shared.unready_after)
        .map(|d| {
            Status::unavailable(format!(
                "this control node has known no leader for {:.0} s; watch another",
                d.as_secs_f64()
            ))
        })
}

/// Records what an edge reported: the version it enforces and, for `Sync`, its digest,
/// compared with this node's digest of that version.
fn record(shared: &Shared, w: &v1::WatchRequest, digests: bool) {
    let agreement = if !digests || w.applied_version == 0 {
        Agreement::Unknown
    } else {
        match shared.policy.borrow().digest_at(w.applied_version) {
            Some(d) if d == w.digest => Agreement::Match,
            Some(_) => Agreement::Mismatch,
            None => Agreement::Unknown,
        }
    };
    if let Ok(mut edges) = shared.edges.lock() {
        edges.insert(
            w.edge_id.clone(),
            EdgeSeen {
                applied: w.applied_version,
                last_seen_ms: now_ms(),
                digest: w.digest,
                agreement,
            },
        );
        set_mismatch_gauge(&edges);
    }
    if agreement == Agreement::Mismatch {
        tracing::warn!(
            edge = %w.edge_id,
            version = w.applied_version,
            "the edge's policy digest differs from this node's"
        );
    }
}

/// Compares again what `edge` last reported with this node's digests: a node that was behind
/// the edge (it came from a node further on) learns the digest of the edge's version only once
/// it catches up, and the edge, having nothing new to apply, reports nothing more.
fn refresh_agreement(shared: &Shared, edge: &str) {
    let Ok(mut edges) = shared.edges.lock() else {
        return;
    };
    let Some(seen) = edges.get_mut(edge) else {
        return;
    };
    if seen.agreement != Agreement::Unknown || seen.digest == 0 || seen.applied == 0 {
        return;
    }
    seen.agreement = match shared.policy.borrow().digest_at(seen.applied) {
        Some(d) if d == seen.digest => Agreement::Match,
        Some(_) => Agreement::Mismatch,
        None => return,
    };
    set_mismatch_gauge(&edges);
}

/// Sets `moat_control_edges_policy_mismatch` from the edges this node knows.
fn set_mismatch_gauge(edges: &BTreeMap<String, EdgeSeen>) {
    let disagreeing = edges
        .values()
        .filter(|e| e.agreement == Agreement::Mismatch)
        .count();
    metrics::gauge!("moat_control_edges_policy_mismatch").set(disagreeing as f64);
}

/// Waits for the next published policy; `false` when the stream `tx` feeds should end (the
/// node turned unready, which the edge is told, the edge went away, or the node is stopping).
async fn next_change<T>(
    policy: &mut watch::Receiver<Arc<Published>>,
    shared: &Shared,
    tx: &mpsc::Sender<Result<T, Status>>,
) -> bool {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            changed = policy.changed() => return changed.is_ok(),
            _ = tick.tick() => {
                if let Some(gone) = leaderless(shared) {
                    let _ = tx.send(Err(gone)).await;
                    return false;
                }
                if tx.is_closed() {
                    return false;
                }
            }
        }
    }
}

/// Counts what was sent to edges, by kind (`change` or `full`).
fn count_sent(kind: &'static str, part: &v1::PolicyUpdate) {
    metrics::counter!("moat_control_policy_parts_sent_total", "kind" => kind).increment(1);
    metrics::counter!("moat_control_policy_bytes_sent_total", "kind" => kind)
        .increment(part.encoded_len() as u64);
}

#[tonic::async_trait]
impl v1::policy_server::Policy for Services {
    type WatchStream = WatchStream;
    type SyncStream = SyncStream;

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
                record(&shared, &w, false);
            }
        });
        if let Some(gone) = leaderless(&self.shared) {
            return Err(gone);
        }
        let (tx, rx) = mpsc::channel(4);
        let mut policy = self.shared.policy.clone();
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            loop {
                let published = Arc::clone(&policy.borrow_and_update());
                if published.stamp.version > 0 {
                    // The whole policy, O(estate): built off the async workers.
                    let built = tokio::task::spawn_blocking(move || {
                        published.view.legacy_snapshot(published.stamp)
                    })
                    .await;
                    let Ok(snap) = built else { return };
                    if tx.send(Ok(snap)).await.is_err() {
                        return;
                    }
                }
                if !next_change(&mut policy, &shared, &tx).await {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn sync(
        &self,
        req: Request<tonic::Streaming<v1::WatchRequest>>,
    ) -> Result<Response<SyncStream>, Status> {
        self.shared
            .require(&req, &[CertRole::Edge], "the policy service")?;
        if let Some(gone) = leaderless(&self.shared) {
            return Err(gone);
        }
        let mut inbound = req.into_inner();
        let hello = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello from the edge"))??
            .ok_or_else(|| Status::invalid_argument("the edge closed before its hello"))?;
        record(&self.shared, &hello, true);
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            while let Ok(Some(w)) = inbound.message().await {
                record(&shared, &w, true);
            }
        });
        let (tx, rx) = mpsc::channel(8);
        let mut policy = self.shared.policy.clone();
        let shared = Arc::clone(&self.shared);
        let edge = hello.edge_id.clone();
        // The version the edge holds; `None`: it needs a full snapshot.
        let mut holds =
            (!hello.resync && hello.applied_version > 0).then_some(hello.applied_version);
        tokio::spawn(async move {
            loop {
                let published = Arc::clone(&policy.borrow_and_update());
                let newest = published.stamp.version;
                refresh_agreement(&shared, &edge);
                let steps = match holds {
                    _ if newest == 0 => Some(Vec::new()),
                    // The edge is ahead of this node (it came from a node further on): wait
                    // until this one catches up.
                    Some(v) if v >= newest => Some(Vec::new()),
                    Some(v) => published.history.since(v),
                    None => None,
                };
                match steps {
                    Some(steps) => {
                        for step in steps {
                            for part in step.parts.iter() {
                                count_sent("change", part);
                                if tx.send(Ok(part.clone())).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    None => {
                        tracing::info!(%edge, from = ?holds, to = newest, "full policy snapshot");
                        metrics::counter!("moat_control_policy_full_snapshots_total").increment(1);
                        let tx2 = tx.clone();
                        let sent = tokio::task::spawn_blocking(move || {
                            let mut ok = true;
                            published.view.full(published.stamp, |part| {
                                count_sent("full", &part);
                                ok = tx2.blocking_send(Ok(part)).is_ok();
                                ok
                            });
                            ok
                        })
                        .await;
                        if !matches!(sent, Ok(true)) {
                            return;
                        }
                    }
                }
                if newest > 0 && holds.is_none_or(|v| v < newest) {
                    holds = Some(newest);
                }
                if !next_change(&mut policy, &shared, &tx).await {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
