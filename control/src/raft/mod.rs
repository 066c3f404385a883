//! The raft side of a control node: the node without I/O, the thread that owns it, and the
//! sending half of the peer transport.
//!
//! One OS thread (`thread.rs`) owns the [`node::Core`] (raft-rs `RawNode`, sled storage, state
//! machine) and runs the ready loop; everything else talks to it through a channel of
//! requests (`Req`): the gRPC services and one sending task per peer (`transport.rs`). The
//! thread publishes what the services read without asking it (the raft `View`, the policy
//! snapshot, the admin tokens).
//!
//! - [`node`]: [`node::Core`], the raft node without I/O: ready loop, apply, snapshots.
//! - `thread.rs`: the thread that owns the node: run loop, requests, housekeeping (signal
//!   batching, the on-premises tick, the seed), publishing.
//! - `transport.rs`: one task per peer that sends it raft messages over gRPC (the receiving
//!   side is the Raft service in `service/raft.rs`).
//! - `sim.rs` (tests only): several nodes over a simulated network.

use std::collections::BTreeMap;
use std::sync::{mpsc as std_mpsc, Mutex};
use std::time::{Duration, Instant};

use raft::eraftpb::Message;
use tokio::sync::oneshot;

use crate::state::{Outcome, Proposal, SignalBatch, State};
use node::{MemberChange, NodeError};

pub mod node;
#[cfg(test)]
mod sim;
pub(crate) mod thread;
pub(crate) mod transport;

/// How long a write or read waits for the raft round before answering UNAVAILABLE (and how
/// long the node thread keeps a request it has not answered).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request to the node thread was not carried out.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// This node is not the leader; the leader's raft id, 0 if none is known.
    NotLeader(u64),
    /// Raft or the disk refused.
    Failed(String),
    /// Too much work queued: the caller keeps its request and retries later.
    Busy(String),
}

impl From<NodeError> for Refusal {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::NotLeader { leader } => Self::NotLeader(leader),
            e => Self::Failed(e.to_string()),
        }
    }
}

/// Where the node thread answers a request.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, Refusal>>;

/// A read to run against the state machine once it is safe to.
pub(crate) type ReadFn = Box<dyn FnOnce(&State) + Send>;

/// A request to the node thread.
pub(crate) enum Req {
    /// A raft message from a peer: the message, the sender's id and its advertised address.
    Step(Message, u64, String),
    /// Propose a command (stamped with the cluster clock by the thread).
    Propose(Proposal, Reply<Outcome>),
    /// Propose a membership change.
    Member(MemberChange, Reply<Outcome>),
    /// Run a read: at once on this replica's state when the flag is set (stale reads allowed),
    /// else once a read index confirms this node is still the leader.
    Read(bool, ReadFn),
    /// Counter deltas from an edge; the flag asks to commit them without waiting for the window.
    Signal(SignalBatch, bool, Reply<()>),
    /// A peer could not be reached.
    Unreachable(u64),
    /// A snapshot sent to a peer arrived (true) or did not.
    SnapshotDone(u64, bool),
}

/// The way into the node thread, shared by every service and peer task.
pub(crate) struct NodeTx(Mutex<std_mpsc::Sender<Req>>);

impl NodeTx {
    /// Wraps the sending end of the node thread's channel.
    pub(crate) fn new(tx: std_mpsc::Sender<Req>) -> Self {
        Self(Mutex::new(tx))
    }

    /// Hands a request to the node thread (dropped if the thread is gone).
    pub(crate) fn send(&self, r: Req) {
        if let Ok(tx) = self.0.lock() {
            let _ = tx.send(r);
        }
    }
}

/// What the node thread publishes for the services.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct View {
    /// The raft status, once the thread has published one.
    pub(crate) status: Option<node::Status>,
    /// Every node's gRPC address, by raft id.
    pub(crate) addresses: BTreeMap<u64, String>,
    /// Version of the policy snapshot published.
    pub(crate) policy_version: u64,
    /// Since when the node has known no leader.
    pub(crate) leaderless_since: Option<Instant>,
}
