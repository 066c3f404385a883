//! `moat-control`: the control plane.
//!
//! Layout:
//! - [`storage`]: durable Raft state (log, hard state, conf state, snapshot) behind the
//!   [`storage::Backend`] trait, with a sled and an in-memory backend, exposed to raft-rs as a
//!   [`::raft::Storage`].
//! - [`state`]: the replicated state machine, applied deterministically: [`state::State`] and
//!   its apply in `state/mod.rs`, the log's command format in [`state::command`], typed refusals
//!   in [`state::error`], and one module per concern ([`state::tenants`], [`state::tokens`],
//!   [`state::limits`], [`state::counters`], [`state::detection`], [`state::onprem`],
//!   [`state::alerts`], [`state::audit`]), each defining its part of the state.
//! - [`mod@raft`]: the raft side of a node: [`raft::node::Core`] (the raft node without I/O:
//!   ready loop, apply, snapshots), the thread that owns it (requests, housekeeping, publishing),
//!   the peer transport's sending tasks, and simulated-network tests.
//! - [`publish`]: the replicated state mapped to the policy snapshot edges enforce.
//! - `service/`: the gRPC services over the node thread: Raft (peers' messages in), Policy
//!   (snapshot watch), Signal (edges' counters), Admin (`admin/`: authorization as pure
//!   functions, writes, reads, the policy subset `moat admin explain` evaluates), the
//!   leader's alert deliverer, its TLS ticket key rotation, and its proposer of changes that
//!   wait until every voter runs this release (`upgrade`: the best-sourced on-prem stage table).
//! - [`alerts`]: delivering alerts (signed webhook, email); the leader drives it.
//! - `console/`: the admin console, HTTPS pages for a browser on their own listener
//!   (`--console-listen`), over the same reads, writes and authorization as the Admin service
//!   (sign-in with an admin token, per-node sessions, CSRF checks, sortable tables, SVG charts,
//!   CSV downloads).
//! - [`config`]: [`config::ControlConfig`], how a node is set up.
//! - [`server`]: `moat control` as a process ([`server::Control`]): listener, node thread,
//!   gRPC and console serving, readiness and metrics.

#![forbid(unsafe_code)]

pub mod alerts;
pub mod config;
mod console;
pub mod publish;
pub mod raft;
pub mod server;
mod service;
pub mod state;
pub mod storage;

/// Describes every metric a control node records (help text and unit).
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!("moat_control_raft_term", "Current Raft term");
    describe_gauge!(
        "moat_control_raft_leader_id",
        "Raft id of the known leader, 0 if none"
    );
    describe_gauge!(
        "moat_control_raft_is_leader",
        "1 while this node is the leader"
    );
    describe_gauge!(
        "moat_control_raft_commit_index",
        "Highest committed log index"
    );
    describe_gauge!(
        "moat_control_raft_applied_index",
        "Highest applied log index"
    );
    describe_gauge!("moat_control_raft_voters", "Voting members of the cluster");
    describe_histogram!(
        "moat_control_raft_proposal_duration_seconds",
        Unit::Seconds,
        "Time from a proposal on this node to its application"
    );
    describe_gauge!(
        "moat_control_policy_version",
        "Version of the policy snapshot"
    );
    describe_counter!(
        "moat_control_policy_parts_sent_total",
        "Policy update parts sent to edges, by kind (change, or full for a full snapshot)"
    );
    describe_counter!(
        "moat_control_policy_bytes_sent_total",
        Unit::Bytes,
        "Encoded bytes of policy update parts sent to edges, by kind (change, full)"
    );
    describe_counter!(
        "moat_control_policy_full_snapshots_total",
        "Full policy snapshots sent to edges (an edge that held nothing, asked to resync, or was older than the history)"
    );
    describe_gauge!(
        "moat_control_edges_policy_mismatch",
        "Edges watching this node whose policy digest differs from this node's at the same version"
    );
    describe_counter!(
        "moat_control_raft_snapshots_sent_total",
        "State-machine snapshots sent to followers, by transfer (chunked, whole) and result"
    );
    describe_gauge!(
        "moat_control_restricted_entities",
        "Restricted connectors and users, by kind"
    );
    describe_gauge!(
        "moat_control_onprem_servers",
        "On-premises Exchange servers by stage of their life cycle (0: not in a cycle)"
    );
    describe_counter!(
        "moat_control_alert_deliveries_total",
        "Alert delivery attempts, by channel and outcome"
    );
    describe_gauge!(
        "moat_control_alerts_undelivered",
        "Alert deliveries given up after every attempt"
    );
    describe_gauge!(
        "moat_control_edges_watching",
        "Edges heard from in the last 10 seconds by this node"
    );
    describe_counter!(
        "moat_control_signal_batches_total",
        "Signal batches received from edges"
    );
}
