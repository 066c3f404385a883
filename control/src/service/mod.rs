//! The gRPC services a control node serves, and what they share.
//!
//! One [`Services`] value implements the four services, each in its own file: [`raft`] (peers'
//! raft messages in), [`policy`] (the policy streams edges watch), [`signal`] (edges' counter
//! batches) and [`admin`] (writes, reads and the cluster view for `moat admin`). They reach the
//! node thread through [`Shared`]: [`Shared::ask`] sends a request and turns a refusal into a
//! gRPC status with a leader hint; what the thread publishes (policy, raft view, tokens) is read
//! without asking it. [`alerts`] is the leader's alert deliverer; [`duty`] runs the
//! leader's periodic proposals: [`tickets`] (TLS ticket key rotation) and [`upgrade`] (changes
//! that wait until every voter runs this release). These tasks use the same plumbing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moat_proto::mtls::{caller_role, Role as CertRole};
use tokio::sync::{oneshot, watch};
use tonic::{Request, Status};

use crate::raft::thread::Tokens;
use crate::raft::{NodeTx, Refusal, Reply, Req, View, REQUEST_TIMEOUT};

pub(crate) mod admin;
pub(crate) mod alerts;
pub(crate) mod duty;
pub(crate) mod policy;
pub(crate) mod raft;
pub(crate) mod signal;
pub(crate) mod tickets;
pub(crate) mod upgrade;

/// One edge as this node sees it.
#[derive(Clone, Debug)]
pub(crate) struct EdgeSeen {
    /// The policy version the edge last said it applied.
    pub(crate) applied: u64,
    /// When the edge was last heard from (watch or signal).
    pub(crate) last_seen_ms: i64,
    /// The digest it reported for that version (0: none, an edge of the previous release).
    pub(crate) digest: u64,
    /// Its digest against this node's for that version.
    pub(crate) agreement: Agreement,
}

/// Whether an edge enforces the policy this node published at the version it reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Agreement {
    /// Same digest.
    Match,
    /// Different digest: the edge enforces something else (it resyncs by itself).
    Mismatch,
    /// No digest to compare: the edge reported none, or this node no longer holds that
    /// version's.
    Unknown,
}

impl Agreement {
    /// The word `moat admin cluster status` shows.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Agreement::Match => "match",
            Agreement::Mismatch => "mismatch",
            Agreement::Unknown => "unknown",
        }
    }
}

/// What every service shares: the way to the node thread and what the thread publishes.
pub(crate) struct Shared {
    /// This node's raft id.
    pub(crate) id: u64,
    /// Requests to the node thread.
    pub(crate) node: NodeTx,
    /// The published policy: the newest version, its view and the recent steps.
    pub(crate) policy: watch::Receiver<Arc<crate::publish::Published>>,
    /// Raft status and addresses.
    pub(crate) view: watch::Receiver<View>,
    /// The admin tokens, by SHA-256.
    pub(crate) tokens: Tokens,
    /// SHA-256 of the bootstrap operator token.
    pub(crate) admin_token_sha: Option<String>,
    /// Edges heard from, by edge id.
    pub(crate) edges: Mutex<BTreeMap<String, EdgeSeen>>,
    /// The log version each peer said it applies in its last raft batch, by raft id.
    pub(crate) peer_log_versions: Mutex<BTreeMap<u64, u32>>,
    /// Whether `set-clock` is accepted (`moat dev` only).
    pub(crate) dev_clock: bool,
    /// How long without a leader before the node turns unready and ends policy watches.
    pub(crate) unready_after: Duration,
    /// Whether gRPC is served over mutual TLS (callers then have a verified certificate).
    pub(crate) mtls: bool,
    /// How often the leader rotates the TLS session ticket keys.
    pub(crate) ticket_rotate_every: Duration,
}

impl Shared {
    /// How long this node has known no leader, if it knows none now.
    pub(crate) fn leaderless_for(&self) -> Option<Duration> {
        self.view.borrow().leaderless_since.map(|t| t.elapsed())
    }

    /// Refuses a caller whose certificate does not give one of `roles` (only under mutual
    /// TLS; without it the caller is anonymous and only the admin API refuses it).
    pub(crate) fn require<T>(
        &self,
        req: &Request<T>,
        roles: &[CertRole],
        what: &'static str,
    ) -> Result<(), Status> {
        let caller = if self.mtls { caller_role(req) } else { None };
        admin::authz::check_certificate(self.mtls, caller, roles, what).map_err(Status::from)
    }

    /// Hands a request to the node thread without waiting for an answer.
    pub(crate) fn send(&self, r: Req) {
        self.node.send(r);
    }

    /// UNAVAILABLE for a node that is not the leader, with the leader's address in
    /// `moat-leader` when known so clients can go there.
    pub(crate) fn leader_hint(&self, leader: u64) -> Status {
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

    /// Sends a request to the node thread and waits (at most [`REQUEST_TIMEOUT`]) for its
    /// answer; a refusal becomes UNAVAILABLE (with a leader hint) or RESOURCE_EXHAUSTED.
    pub(crate) async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Req) -> Result<T, Status> {
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

/// The four gRPC services of a control node, over one [`Shared`].
#[derive(Clone)]
pub(crate) struct Services {
    /// What the services share.
    pub(crate) shared: Arc<Shared>,
}
