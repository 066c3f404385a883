//! `moat-shared`: the domain model every Moat component agrees on.
//!
//! This crate has no I/O and no async runtime: it holds the types the edge enforces and the
//! control plane will replicate, and the validated conversions into them.
//!
//! Layout:
//! - [`ids`]: identifiers ([`TenantId`], [`Domain`], [`ConnectorId`]), apart from the snapshot.
//! - [`policy`]: tenants and the immutable, versioned [`PolicySnapshot`], and the
//!   [`PolicyChange`]s that derive one snapshot from another at the cost of the change.
//! - [`connector`]: inbound connectors (Partner, OnPremises).
//! - [`exchange`]: on-premises Exchange builds from `Received:` stamps, the build catalog and
//!   the baseline.
//! - [`onprem`]: the life cycle of out-of-date Exchange servers: stages (the best-sourced
//!   reference table, and the previous release's default kept for rolling upgrades), pauses,
//!   and which minutes of an hour are throttled or blocked.
//! - [`matching`]: the index that finds a session's connectors by IP and certificate.
//! - [`persistent`]: [`PersistentMap`], the map snapshots are made of: a changed copy costs the
//!   change, and reads cost about what a hash table's do.
//! - [`seed`]: the TOML seed format: tenants with their connectors and users (used by
//!   `moat dev`, `moat edge --seed`, `moat control --seed` and `moat admin apply`).
//! - [`submission`]: SMTP AUTH users, restricted entities and the legacy-TLS speed bump.
//! - [`role`]: [`Role`], what an admin token may do.
//! - [`signal`]: the names of the counters edges report.
//! - [`smtp`]: the client side of SMTP, sans-IO: the reply reader and the dot-stuffer that the
//!   edge's relay, the alert email, `moat bench` and the e2e test client share.
//! - [`tickets`]: TLS session ticket keys ([`TicketKeys`]), whose secrets never print.
//! - [`time`]: Unix milliseconds and calendar dates, UTC.
//! - [`handle`]: [`PolicyHandle`], the lock-free handle through which readers see the current
//!   snapshot and writers publish a new one.

#![forbid(unsafe_code)]

pub mod connector;
pub mod exchange;
pub mod handle;
pub mod ids;
pub mod matching;
pub mod onprem;
pub mod persistent;
pub mod policy;
pub mod role;
pub mod seed;
pub mod signal;
pub mod smtp;
pub mod submission;
pub mod tickets;
pub mod time;

pub use connector::{CertName, Connector, ConnectorError, ConnectorKind};
pub use handle::PolicyHandle;
pub use ids::{ConnectorId, ConnectorIdError, Domain, DomainError, TenantId};
pub use persistent::PersistentMap;
pub use policy::{OnpremSettings, PolicyChange, PolicySnapshot, SnapshotError, Tenant};
pub use role::Role;
pub use seed::{Seed, SeedContents, SeedError};
pub use submission::{EntityKind, RestrictedEntity, SpeedBumpStep, SubmissionUser};
pub use tickets::{TicketKey, TicketKeys, TicketSecret};
