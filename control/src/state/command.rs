//! The raft log's command format: a [`Proposal`] (who, when, the client's request id) carrying
//! a [`Command`]. Each committed entry's data is a proposal as JSON.
//!
//! Compatibility: the log outlives releases (a node replays entries written by the release
//! before it, and a snapshot may be taken long after). So variants and fields are only ever
//! added, a new field with a serde default; nothing is renamed, retyped or removed, and the
//! `op` tag's kebab-case names stay. Applying an old entry must give the result it gave when
//! it was written: validation that tightens belongs at proposal time, not at apply.
//! `state::compat` replays the log a past release wrote and checks the resulting state.
//!
//! A node cannot apply a variant newer than its release. So each release says which log
//! version it applies ([`LOG_VERSION`], sent with every raft batch), each command which one it
//! needs ([`Command::log_version`]), and the leader proposes a command only once every voter
//! has said it applies that version: during a rolling upgrade the new command is refused with
//! a clear error rather than split the replicas.

use moat_shared::onprem::Schedule;
use moat_shared::{Connector, Domain, EntityKind, SpeedBumpStep, Tenant, TenantId, TicketSecret};
use serde::{Deserialize, Serialize};

use super::{
    AlertContacts, AlertTransport, DetectionPolicy, OutboundPolicy, SignalBatch, TokenRecord, User,
};

/// The newest log version this release applies: 1 is every command of the releases before
/// [`Command::ImportSeed`], 2 adds it, 3 adds [`Command::ExemptOnprem`] and
/// [`Command::UnexemptOnprem`] (and the evidence lines of signal batches, which the leader
/// carries only once every voter applies 3, so that replicas keep the same report), 4 adds the
/// report counters and Message-ID samples of signal batches
/// ([`SignalBatch::reports`](super::SignalBatch) and `samples`, likewise carried only once
/// every voter applies 4) and [`Command::AdoptStageDefaults`].
pub const LOG_VERSION: u32 = 4;

/// A command and who asked for it, as it travels through the log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Proposal {
    /// Unix milliseconds, stamped by the leader when it proposed the entry.
    pub at_ms: i64,
    /// Who asked: a token name, `edge:<id>`, or `system`.
    pub actor: String,
    /// The client's request id, for applying a retried request once.
    pub request_id: Option<String>,
    /// What to do.
    pub command: Command,
}

/// A change to the state.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "op")]
pub enum Command {
    /// Create or replace a tenant (its connectors and users stay).
    PutTenant {
        /// The tenant.
        tenant: Tenant,
    },
    /// Delete a tenant with its connectors, users, tokens and restrictions.
    DeleteTenant {
        /// The tenant to delete.
        tenant: TenantId,
    },
    /// Add an accepted domain.
    AddDomain {
        /// To which tenant.
        tenant: TenantId,
        /// The domain.
        domain: Domain,
    },
    /// Remove an accepted domain.
    RemoveDomain {
        /// From which tenant.
        tenant: TenantId,
        /// The domain.
        domain: Domain,
    },
    /// Create or replace an inbound connector.
    PutConnector {
        /// The connector.
        connector: Connector,
    },
    /// Delete an inbound connector.
    DeleteConnector {
        /// Its tenant.
        tenant: TenantId,
        /// Its name.
        name: String,
    },
    /// Create or replace a user (the password already hashed).
    PutUser {
        /// The user.
        user: User,
    },
    /// Delete a user.
    DeleteUser {
        /// Its tenant.
        tenant: TenantId,
        /// Its address.
        address: String,
    },
    /// Set a tenant's transport config.
    SetTransportConfig {
        /// Which tenant.
        tenant: TenantId,
        /// `allow-legacy-tls-clients`.
        allow_legacy_tls_clients: bool,
    },
    /// Record an admin token (only its hash).
    CreateToken {
        /// The token record.
        token: TokenRecord,
    },
    /// Revoke a token.
    RevokeToken {
        /// Its id.
        id: String,
    },
    /// Create or update the tenants of a seed; idempotent.
    ApplySeed {
        /// The seed's tenants.
        tenants: Vec<Tenant>,
    },
    /// Applies a seed that also holds connectors and users, as one entry: its tenants as
    /// [`Command::ApplySeed`] does, then each connector and user replaces the one of the same
    /// name (address) in its tenant. Refused whole if any part would be. A seed of tenants
    /// alone is still proposed as `ApplySeed`, so a log that never imported objects reads the
    /// same to an older release; this variant is new rather than fields added to `ApplySeed`, so
    /// an older release refuses it instead of applying the tenants alone.
    ImportSeed {
        /// The seed's tenants.
        tenants: Vec<Tenant>,
        /// The connectors of those tenants.
        #[serde(default)]
        connectors: Vec<Connector>,
        /// The users of those tenants (password hashes, never passwords).
        #[serde(default)]
        users: Vec<User>,
    },
    /// Replace the legacy-TLS speed bump schedule.
    SetSpeedBump {
        /// The steps.
        steps: Vec<SpeedBumpStep>,
    },
    /// Set a tenant's sending limits.
    SetOutboundPolicy {
        /// Which tenant.
        tenant: TenantId,
        /// The limits.
        policy: OutboundPolicy,
    },
    /// Set the detection settings of a tenant, or the cluster default (`tenant: None`).
    SetDetectionPolicy {
        /// Which tenant; `None` for the default.
        tenant: Option<TenantId>,
        /// The settings.
        policy: DetectionPolicy,
    },
    /// Set where a tenant's alerts go.
    SetAlertContacts {
        /// Which tenant.
        tenant: TenantId,
        /// The contacts.
        contacts: AlertContacts,
    },
    /// Set how alert emails are sent.
    SetAlertTransport {
        /// The transport.
        transport: AlertTransport,
    },
    /// The leader's report of one delivery attempt.
    AlertDelivery {
        /// The alert.
        alert: u64,
        /// Its channel.
        channel: String,
        /// Its target.
        target: String,
        /// `None` when delivered, else why not.
        error: Option<String>,
    },
    /// Lift a restriction.
    Unblock {
        /// The tenant.
        tenant: TenantId,
        /// Connector or user.
        kind: EntityKind,
        /// The connector's name or the user's address.
        name: String,
        /// Why, for the audit log.
        reason: String,
    },
    /// Counter deltas from edges, gathered by the leader into one entry.
    Signals {
        /// One batch per edge at most.
        batches: Vec<SignalBatch>,
    },
    /// Changes the on-premises Exchange settings; `None` leaves a setting as it is.
    SetOnpremPolicy {
        /// The baseline builds.
        baseline: Option<moat_shared::exchange::Baseline>,
        /// The stage table.
        stages: Option<Schedule>,
        /// The service name in replies.
        service: Option<String>,
        /// Whether mail through every connector is judged, not only OnPremises connectors'.
        #[serde(default)]
        all_connectors: Option<bool>,
    },
    /// Pauses throttling and blocking of a tenant's servers for `days` days from the entry's
    /// time, within the yearly budget.
    PauseOnprem {
        /// Which tenant.
        tenant: TenantId,
        /// How long.
        days: u32,
        /// Why (for the audit log).
        reason: String,
    },
    /// Exempts one on-premises server of a tenant from throttling and blocking (it is still
    /// reported); an exemption in force gets the new reason.
    ExemptOnprem {
        /// Which tenant.
        tenant: TenantId,
        /// The server's FQDN, as the report names it.
        server: String,
        /// Why (required; kept with the exemption and in the audit log).
        reason: String,
    },
    /// Ends the exemption of one on-premises server of a tenant.
    UnexemptOnprem {
        /// Which tenant.
        tenant: TenantId,
        /// The server's FQDN.
        server: String,
    },
    /// Moves the cluster clock: from this entry on, the leader stamps entries with the wall
    /// clock plus `offset_ms`. Only a `moat dev` node proposes it.
    SetClock {
        /// The new offset from the wall clock.
        offset_ms: i64,
    },
    /// Makes a new TLS session ticket key the one that issues tickets; the current key is
    /// still accepted, the one before it dropped. Drawn and proposed by the leader, when no key
    /// exists or the current one is older than the rotation period, or on an operator's
    /// `moat admin tls tickets rotate`. The key is made at the entry's time.
    RotateTicketKeys {
        /// The new key's name (16 random bytes as 32 hex digits), as tickets carry it.
        name: String,
        /// The new key (32 random bytes; hex in the log, never printed).
        key: TicketSecret,
        /// The proposing leader's rotation period (ms): tickets' lifetime.
        rotate_every_ms: i64,
        /// For a scheduled rotation, the current key it replaces (`None`: none exists); a
        /// scheduled rotation that finds another current key is refused.
        #[serde(default)]
        replaces: Option<String>,
        /// An operator's rotation, applied whatever the current key.
        #[serde(default)]
        forced: bool,
    },
    /// Makes the best-sourced built-in on-premises stage table (stages 6 and 7 block only) the
    /// one a cluster without a table of its own applies, in place of the previous release's
    /// (which also throttled 30 minutes an hour there). Proposed once by the leader when every
    /// voter runs a release that applies it, so every node switches tables at the same index.
    AdoptStageDefaults,
    /// Lets time act: proposed by the leader when a server's stage or a pause is due to change.
    /// Applying any entry does the same; this one exists for when nothing else is committed.
    Tick,
}

impl Command {
    /// The log version a node needs to apply this command.
    pub fn log_version(&self) -> u32 {
        match self {
            Command::ImportSeed { .. } => 2,
            Command::ExemptOnprem { .. } | Command::UnexemptOnprem { .. } => 3,
            Command::Signals { batches }
                if batches
                    .iter()
                    .any(|b| !b.reports.is_empty() || !b.samples.is_empty()) =>
            {
                4
            }
            Command::RotateTicketKeys { .. } | Command::AdoptStageDefaults => 4,
            _ => 1,
        }
    }
}
