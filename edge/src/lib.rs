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
//! - [`tls`]: rustls server settings, certificate reload, client-certificate facts.
//! - [`legacy`]: the ClientHello peek and the OpenSSL engine for TLS 1.0/1.1 clients.
//! - [`auth`]: SMTP AUTH password checks and the failure throttle.
//! - [`mailauth`]: SPF, DKIM and DMARC checks of connector mail, counted for detection.
//! - [`session`]: the sans-IO SMTP machine and its tokio driver.
//! - [`verdict`]: pure policy decisions over a snapshot: connectors, relay, restrictions.
//! - [`headers`]: the header From of a message in transit, for the P1/P2 comparison.
//! - [`relay`]: next hops: SMTP/LMTP proxying and the maildir sink.
//! - [`control`]: the link to the control plane: policy watch and counter reports.
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
pub mod tls;
pub mod verdict;

pub use config::EdgeConfig;
pub use server::{BoundEdge, Edge, EdgeError};
