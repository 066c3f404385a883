//! `moat-control`: the control plane.
//!
//! Only the storage layer exists so far; the Raft node, the gRPC services and `moat control`
//! come next (see ARCHITECTURE.md).
//!
//! Layout:
//! - [`storage`]: durable Raft state (log, hard state, conf state, snapshot, applied index)
//!   behind the [`storage::Backend`] trait, with a sled and an in-memory backend, exposed to
//!   raft-rs as a [`raft::Storage`].

#![forbid(unsafe_code)]

pub mod storage;
