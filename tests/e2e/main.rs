//! End-to-end tests: the real `moat` binary on loopback, driven by real clients (swaks, Python
//! smtplib, and a small Rust client for load and raw-protocol checks).
//!
//! Every test starts its own `moat dev` with a fresh data directory and port 0 listeners (except
//! the README test, which runs the README's command as written), reads `endpoints.json`, and
//! inspects the maildir sink.

mod auth_throttle;
mod bench;
mod cli;
mod client;
mod cluster;
mod connectors;
mod console;
mod harness;

mod delivery;
mod explain;
mod fidelity;
mod limits;
mod next_hop;
mod observability;
mod onprem;
mod paging;
mod policy;
mod reports;
mod security;
mod submission;
mod tls_proxy;
mod tls_resume;
