//! `moat-edge`: the stateless SMTP edge.
//!
//! An edge accepts SMTP on its listeners, decides every step against the current
//! [`moat_shared::PolicySnapshot`], and relays each transaction to the next hop as it arrives:
//! it keeps no queue, and answers `250` to the end of a message only once the next hop has
//! accepted it.
//!
//! Layout (listener → session → verdict → relay):
//! - [`config`]: the edge's TOML configuration, every field defaulted and documented.
//! - [`server`]: binds the listeners, enforces session limits, drains on shutdown.
//! - [`proxy`]: the PROXY protocol v1/v2 header that carries the client address through a load
//!   balancer.
//! - [`tls`]: rustls server settings, certificate reload, client-certificate facts, the
//!   session [`tls::Ticketer`] that seals tickets with the cluster's keys.
//! - [`legacy`]: the ClientHello peek and the OpenSSL engine for TLS 1.0/1.1 clients.
//! - [`auth`]: SMTP AUTH password checks, the per-edge failure throttle and the cluster-wide
//!   lockout check.
//! - [`mailauth`]: SPF, DKIM and DMARC checks of connector mail, counted for detection.
//! - [`session`]: the sans-IO SMTP machine and its tokio driver (bytes, time and counting);
//!   a listener prepares its sessions' fixed replies once ([`session::Prepared`]) and keeps
//!   their metric handles ([`session::meters`]).
//! - [`verdict`]: every policy decision, pure over a snapshot, a refusal being a typed
//!   [`verdict::Denial`] that gives its reply and its counter: [`verdict::connector`]
//!   (restricted and Partner connectors), [`verdict::relay`] (tenant attribution and relay),
//!   [`verdict::submission`] (restricted users, send-as), [`verdict::tls`] (legacy TLS and the
//!   speed bump), [`verdict::onprem`] (out-of-date Exchange servers).
//! - [`headers`]: the header From of a message in transit, for the P1/P2 comparison, and its
//!   Message-ID, the sample of the non-accepted domains report.
//! - [`relay`]: next hops: SMTP/LMTP proxying and the maildir sink.
//! - [`control`]: the link to the control plane: policy stream and counter reports.
//! - [`sync`]: the policy stream's parts applied to the snapshot, checked by digest.
//! - [`status`]: `/healthz` and `/readyz` on the status port.

#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod control;
pub mod headers;
pub mod legacy;
pub mod mailauth;
pub mod proxy;
pub mod relay;
pub mod server;
pub mod session;
pub mod status;
pub mod sync;
pub mod tls;
pub mod verdict;

pub use config::EdgeConfig;
pub use server::{BoundEdge, Edge, EdgeError};

/// Describes every metric the edge records (help text and unit), for the Prometheus exposition.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "moat_edge_sessions_total",
        "SMTP sessions ended, by listener and the TLS version they ended on"
    );
    describe_gauge!(
        "moat_edge_sessions_active",
        "SMTP sessions open, by listener"
    );
    describe_counter!(
        "moat_edge_replies_total",
        "SMTP replies sent, by reply code and enhanced status code"
    );
    describe_counter!(
        "moat_edge_tls_handshakes_total",
        "TLS handshakes (implicit TLS and STARTTLS), by listener, outcome (ok, failed) and kind (full, or resumed from a session ticket)"
    );
    describe_histogram!(
        "moat_edge_tls_handshake_duration_seconds",
        Unit::Seconds,
        "Time to complete or fail a TLS handshake"
    );
    describe_histogram!(
        "moat_edge_transaction_duration_seconds",
        Unit::Seconds,
        "Time from MAIL to the final reply after the message content"
    );
    describe_histogram!(
        "moat_edge_next_hop_duration_seconds",
        Unit::Seconds,
        "Time from opening the next-hop transaction to its final reply, by route"
    );
    describe_counter!(
        "moat_edge_next_hop_failures_total",
        "Next-hop transactions refused or failed, by route"
    );
    describe_gauge!(
        "moat_edge_next_hop_up",
        "1 when the inbound next hop answered its last probe"
    );
    describe_gauge!(
        "moat_edge_policy_version",
        "Version of the enforced policy snapshot"
    );
    describe_gauge!(
        "moat_edge_policy_age_seconds",
        Unit::Seconds,
        "Time since the control plane was last heard from"
    );
    describe_gauge!(
        "moat_edge_control_connected",
        "1 while a policy stream from a control node is open"
    );
    describe_counter!(
        "moat_edge_policy_parts_total",
        "Policy update parts received, by kind (change, or full for a full snapshot)"
    );
    describe_counter!(
        "moat_edge_policy_bytes_total",
        Unit::Bytes,
        "Encoded bytes of policy update parts received, by kind (change, full)"
    );
    describe_histogram!(
        "moat_edge_policy_apply_seconds",
        Unit::Seconds,
        "Time to apply one policy update part to the snapshot, by kind (change, full)"
    );
    describe_counter!(
        "moat_edge_policy_resyncs_total",
        "Full snapshots asked for after a part did not apply or a digest differed, by reason (invalid, refused, digest)"
    );
    describe_gauge!(
        "moat_edge_restricted_entities",
        "Restricted connectors and users in the enforced snapshot, by kind"
    );
    describe_gauge!(
        "moat_edge_onprem_enforced_servers",
        "On-premises Exchange servers being throttled or blocked"
    );
    describe_counter!(
        "moat_edge_onprem_refusals_total",
        "Messages from out-of-date Exchange servers refused, by action (throttled, blocked)"
    );
}
