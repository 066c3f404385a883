//! `moat-control`: the control plane.
//!
//! Layout:
//! - [`storage`]: durable Raft state (log, hard state, conf state, snapshot) behind the
//!   [`storage::Backend`] trait, with a sled and an in-memory backend, exposed to raft-rs as a
//!   [`raft::Storage`].
//! - [`state`]: the replicated state machine (tenants, domains, connectors, users, tokens,
//!   restricted entities, detection, alerts, audit log, counters), applied deterministically.
//! - [`node`]: [`node::Core`], the raft node without I/O: ready loop, apply, snapshots.
//! - [`alerts`]: delivering alerts (signed webhook, email); the leader drives it.
//! - [`server`]: `moat control`: the node's thread, the raft transport and the gRPC services
//!   (Raft, Policy, Signal, Admin).

#![forbid(unsafe_code)]

pub mod alerts;
pub mod node;
pub mod server;
pub mod state;
pub mod storage;
