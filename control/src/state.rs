//! The replicated state machine.
//!
//! Every control node applies the same committed [`Proposal`]s in the same order to a [`State`]
//! and so holds the same state. [`State::apply`] is deterministic: it reads time only from the
//! proposal (stamped by the leader that proposed it, and never allowed to go backwards) and
//! never touches the network, the disk or the local clock. Validation happens here, at apply,
//! so a proposal that became invalid between proposing and committing (another admin deleted
//! the tenant meanwhile) fails the same way on every node.

use std::collections::{BTreeMap, VecDeque};

use moat_shared::onprem::{
    accrued_ms, pause_days_used, Pause, Schedule, Stage, DAY_MS, PAUSE_DAYS_PER_YEAR,
};
use moat_shared::signal::{self, Unit};
use moat_shared::submission::normalise_schedule;
use moat_shared::time::{day_of_ms, day_string};
use moat_shared::{Connector, Domain, EntityKind, SpeedBumpStep, Tenant, TenantId};

pub use moat_shared::RestrictedEntity as Restricted;
pub use moat_shared::SubmissionUser as User;
use serde::{Deserialize, Serialize};

/// How long a client request id is remembered for deduplication of retries.
const REQUEST_ID_TTL_MS: i64 = 60 * 60 * 1000;
/// How many audit records are kept (older ones are dropped first).
const AUDIT_KEEP: usize = 100_000;
/// How many alerts are kept.
const ALERTS_KEEP: usize = 10_000;
/// Days of TLS usage kept for the report.
const REPORT_DAYS: i64 = 90;
/// Most legacy-client rows kept; further clients of a day are folded into one `other` row.
const LEGACY_CLIENTS_MAX: usize = 100_000;

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
        /// Which.
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
    /// Moves the cluster clock: from this entry on, the leader stamps entries with the wall
    /// clock plus `offset_ms`. Only a `moat dev` node proposes it.
    SetClock {
        /// The new offset from the wall clock.
        offset_ms: i64,
    },
    /// Lets time act: proposed by the leader when a server's stage or a pause is due to change.
    /// Applying any entry does the same; this one exists for when nothing else is committed.
    Tick,
}

/// What an admin token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything.
    Operator,
    /// Read and change one tenant's objects.
    TenantAdmin,
    /// Read everything, change nothing.
    Reader,
}

impl Role {
    /// The name used in tools.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::TenantAdmin => "tenant-admin",
            Self::Reader => "reader",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "operator" => Some(Self::Operator),
            "tenant-admin" => Some(Self::TenantAdmin),
            "reader" => Some(Self::Reader),
            _ => None,
        }
    }
}

/// A stored admin token: its SHA-256 hash, never the token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public identifier (the token's prefix).
    pub id: String,
    /// A label for audit records.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// For tenant admins, the tenant.
    pub tenant: Option<TenantId>,
    /// Hex SHA-256 of the full token.
    pub sha256: String,
    /// When it was created (entry time).
    pub created_ms: i64,
}

/// One edge's batch of counter deltas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalBatch {
    /// The edge.
    pub edge: String,
    /// Its sequence number.
    pub seq: u64,
    /// `(scope, key, name, delta)`.
    pub counters: Vec<(String, String, String, u64)>,
}

/// A counter: its total and a minute window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// Since the counter first appeared.
    pub total: u64,
    /// Start of the current minute window (Unix ms, entry time).
    pub window_start_ms: i64,
    /// In the current window.
    pub this_minute: u64,
    /// In the window before.
    pub last_minute: u64,
}

/// One admin change, for the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The raft index of the change.
    pub index: u64,
    /// Entry time.
    pub at_ms: i64,
    /// Who.
    pub actor: String,
    /// What, in words.
    pub action: String,
    /// The tenant concerned, if one.
    pub tenant: Option<TenantId>,
}

/// What happens to an SMTP AUTH user who goes over a sending limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LimitAction {
    /// Blocked until the next UTC day begins (Exchange Online's `BlockUserForToday`).
    #[default]
    BlockForToday,
    /// Blocked until an admin unblocks the user.
    Block,
    /// Not blocked; the tenant's admins are alerted.
    AlertOnly,
}

impl LimitAction {
    /// The name used in tools.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BlockForToday => "block-for-today",
            Self::Block => "block",
            Self::AlertOnly => "alert-only",
        }
    }

    /// Parses an action name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "block-for-today" => Some(Self::BlockForToday),
            "block" => Some(Self::Block),
            "alert-only" => Some(Self::AlertOnly),
            _ => None,
        }
    }
}

/// A tenant's sending limits for its SMTP AUTH users.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct OutboundPolicy {
    /// Recipients per user per clock hour (UTC).
    pub recipients_per_hour: u32,
    /// Recipients per user per UTC day.
    pub recipients_per_day: u32,
    /// What happens when a limit is exceeded.
    pub action: LimitAction,
}

impl Default for OutboundPolicy {
    /// Exchange Online's default outbound spam policy: 500 external recipients an hour, 1,000
    /// recipients a day, block the user for the rest of the day.
    fn default() -> Self {
        Self {
            recipients_per_hour: 500,
            recipients_per_day: 1000,
            action: LimitAction::BlockForToday,
        }
    }
}

/// A user's recipients in the current hour and day.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Start of the hour counted in `hour` (Unix ms).
    pub hour_start_ms: i64,
    /// Recipients this hour.
    pub hour: u64,
    /// The day counted in `day` (days since 1970-01-01).
    pub day_number: i64,
    /// Recipients this day.
    pub day: u64,
    /// The hour an alert-only alert was last raised, so it is raised once per hour.
    pub alerted_hour_ms: Option<i64>,
}

/// An alert for a tenant's admins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// When (entry time).
    pub at_ms: i64,
    /// The tenant whose admins are told.
    pub tenant: TenantId,
    /// `high`, `medium` or `low`.
    pub severity: String,
    /// Short title, e.g. `User restricted from sending email`.
    pub title: String,
    /// What happened.
    pub detail: String,
    /// Cluster-unique, increasing.
    #[serde(default)]
    pub id: u64,
    /// One per channel and target, made from the tenant's contacts when the alert was raised.
    #[serde(default)]
    pub deliveries: Vec<Delivery>,
}

/// How many times an alert delivery is tried before it is marked failed.
pub const MAX_DELIVERY_ATTEMPTS: u32 = 8;

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryState {
    /// Not delivered yet; the leader tries (again).
    Pending,
    /// Accepted by the receiver.
    Delivered,
    /// Given up after [`MAX_DELIVERY_ATTEMPTS`].
    Failed,
}

/// One delivery of an alert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// `webhook` or `email`.
    pub channel: String,
    /// The URL or the address.
    pub target: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made.
    pub attempts: u32,
    /// The last failure, empty if none.
    pub last_error: String,
    /// When it was last tried (entry time).
    pub at_ms: i64,
}

/// Where a tenant's alerts go.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertContacts {
    /// Admin addresses that get an email.
    pub emails: Vec<String>,
    /// An `http://` URL that gets a signed JSON POST; empty for none.
    pub webhook_url: String,
    /// The HMAC-SHA256 key of the webhook signature.
    pub webhook_secret: String,
}

/// How alert emails leave the cluster: an SMTP server (an edge, or a smarthost).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertTransport {
    /// `host:port`.
    pub smtp: String,
    /// The header From of alert emails (the envelope sender is `<>`).
    pub from: String,
}

/// An on-premises Exchange server seen in the Received stamps of a tenant's connector mail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnpremServer {
    /// The tenant.
    pub tenant: TenantId,
    /// The server's FQDN (the `by` host of its stamp).
    pub server: String,
    /// The connector its mail came through (`tenant/name`).
    pub connector: String,
    /// The build it last stamped.
    pub build: moat_shared::exchange::Build,
    /// That build's class against the baseline when it was seen.
    pub class: moat_shared::exchange::Class,
    /// Start of the current enforcement cycle: when the server was first seen out of date
    /// (entry time); `None` while it is compliant (a compliant build ends the cycle, a later
    /// out-of-date build starts a new one).
    pub first_detected_ms: Option<i64>,
    /// When it was last seen.
    pub last_seen_ms: i64,
    /// Messages seen from it.
    pub messages: u64,
    /// Its stage in the current cycle (1-based), 0 outside a cycle.
    #[serde(default)]
    pub stage: u32,
    /// When it entered that stage.
    #[serde(default)]
    pub stage_since_ms: i64,
    /// When throttling started in the current cycle.
    #[serde(default)]
    pub throttle_enabled_ms: Option<i64>,
    /// When blocking started in the current cycle.
    #[serde(default)]
    pub blocking_enabled_ms: Option<i64>,
    /// Whether its tenant's pause is in force (as of the last applied entry).
    #[serde(default)]
    pub paused: bool,
    /// When a compliant build last ended a cycle.
    #[serde(default)]
    pub remediated_ms: Option<i64>,
}

impl OnpremServer {
    /// Whether edges throttle or block it under `schedule`.
    pub fn enforced(&self, schedule: &Schedule) -> bool {
        self.first_detected_ms.is_some()
            && !self.paused
            && schedule.get(self.stage).is_some_and(|s| s.enforces())
    }
}

/// A tenant's pause, with who asked for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseRecord {
    /// When it runs.
    pub pause: Pause,
    /// Who paused.
    pub actor: String,
    /// Why.
    pub reason: String,
}

/// How the control plane judges a connector (per tenant, or the cluster default).
///
/// The defaults follow the reference's advice that a new connector warms up and that volume is
/// judged against the connector's own history: a day of hourly intervals before the volume
/// detector counts, a spike only at ten times the usual hour, and at least 100 messages in the
/// hour for any detector, so that a quiet connector's handful of odd messages is no incident.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DetectionPolicy {
    /// Length of one window, in milliseconds (default one hour).
    pub interval_ms: i64,
    /// Windows a connector is observed before its volume is judged (default 24).
    pub warmup_intervals: u32,
    /// A window with this many times the baseline's messages is a spike (default 10).
    pub spike_factor: u32,
    /// Fewest messages in a window for any detector to fire (default 100).
    pub min_messages: u64,
    /// Percent of an OnPremises connector's messages from domains the tenant does not own that
    /// is suspicious (default 50).
    pub unprovisioned_percent: u32,
    /// Percent of an OnPremises connector's messages whose header From domain differs from
    /// MAIL FROM's that is suspicious (default 50).
    pub mismatch_percent: u32,
    /// Percent of a connector's checked messages that fail DMARC that is suspicious (default
    /// 50; edges count only with `[authentication] checks = true`).
    #[serde(default = "default_auth_fail_percent")]
    pub auth_fail_percent: u32,
}

fn default_auth_fail_percent() -> u32 {
    50
}

impl Default for DetectionPolicy {
    fn default() -> Self {
        Self {
            interval_ms: 3_600_000,
            warmup_intervals: 24,
            spike_factor: 10,
            min_messages: 100,
            unprovisioned_percent: 50,
            mismatch_percent: 50,
            auth_fail_percent: 50,
        }
    }
}

/// One window's counts of a connector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowCounts {
    /// Messages accepted.
    pub messages: u64,
    /// Of which with a MAIL FROM domain the tenant does not own.
    pub unprovisioned: u64,
    /// Of which with a header From domain other than MAIL FROM's.
    pub mismatch: u64,
    /// Relay recipients refused.
    pub relay_refused: u64,
    /// Messages checked for SPF/DKIM/DMARC.
    #[serde(default)]
    pub auth_checked: u64,
    /// Of which failing DMARC.
    #[serde(default)]
    pub auth_failed: u64,
}

/// What the control plane knows of a connector's traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorStats {
    /// When its first count arrived (entry time).
    pub first_seen_ms: i64,
    /// Start of the current window.
    pub window_start_ms: i64,
    /// The current window.
    pub current: WindowCounts,
    /// Windows closed so far.
    pub intervals: u32,
    /// Exponentially weighted moving average of messages per window (weight 1/5 for the newest
    /// window), in thousandths of a message: integer arithmetic, identical on every node.
    pub baseline_milli: u64,
    /// After an unblock, the detectors leave the connector alone until then (one window), so
    /// counts still in flight from before the unblock do not restrict it again at once.
    #[serde(default)]
    pub quiet_until_ms: i64,
}

/// Sessions and messages of one report row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// TLS sessions.
    pub sessions: u64,
    /// Messages accepted.
    pub messages: u64,
}

/// The whole replicated state. Its JSON form is the raft snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Index of the last applied entry.
    pub applied: u64,
    /// Time of the last applied entry; never goes backwards.
    pub now_ms: i64,
    /// Index of the last entry that changed what edges enforce (the policy version).
    pub policy_version: u64,
    /// Time of that entry.
    pub policy_changed_ms: i64,
    /// Tenants by id.
    pub tenants: BTreeMap<TenantId, Tenant>,
    /// Connectors by `tenant/name`.
    pub connectors: BTreeMap<String, Connector>,
    /// Users by address.
    pub users: BTreeMap<String, User>,
    /// Admin tokens by id.
    pub tokens: BTreeMap<String, TokenRecord>,
    /// Restricted entities.
    pub restricted: Vec<Restricted>,
    /// The newest admin changes.
    pub audit: VecDeque<AuditRecord>,
    /// Highest applied signal sequence per edge.
    pub edge_seqs: BTreeMap<String, u64>,
    /// Counters by `scope|key|name`.
    pub counters: BTreeMap<String, Counter>,
    /// Recently applied client request ids and the index they were applied at.
    pub requests: BTreeMap<String, (u64, i64)>,
    /// Control-node addresses learned from membership changes, by raft id.
    pub members: BTreeMap<u64, String>,
    /// The legacy-TLS speed bump schedule.
    #[serde(default)]
    pub speed_bump: Vec<SpeedBumpStep>,
    /// Sending limits by tenant (tenants without an entry have the default).
    #[serde(default)]
    pub outbound: BTreeMap<TenantId, OutboundPolicy>,
    /// Recipients per SMTP AUTH user in the current hour and day.
    #[serde(default)]
    pub usage: BTreeMap<String, Usage>,
    /// TLS usage by `day|tenant|listener|version|cipher`.
    #[serde(default)]
    pub tls_usage: BTreeMap<String, Tally>,
    /// Legacy-TLS clients by `day|tenant|ip|user|version`.
    #[serde(default)]
    pub legacy_clients: BTreeMap<String, Tally>,
    /// The newest alerts.
    #[serde(default)]
    pub alerts: VecDeque<Alert>,
    /// On-premises Exchange servers by `tenant|server`.
    #[serde(default)]
    pub onprem_servers: BTreeMap<String, OnpremServer>,
    /// The baseline builds; the built-in default (October 2025 updates) when `None`.
    #[serde(default)]
    pub onprem_baseline: Option<moat_shared::exchange::Baseline>,
    /// The stage table; the reference table when `None`.
    #[serde(default)]
    pub onprem_schedule: Option<Schedule>,
    /// The service name in `4.7.230` / `5.7.230` replies; `Moat` when empty.
    #[serde(default)]
    pub onprem_service: String,
    /// Whether mail through every connector is judged (default: OnPremises connectors only).
    #[serde(default)]
    pub onprem_all_connectors: bool,
    /// Pauses of throttling and blocking, by tenant.
    #[serde(default)]
    pub onprem_pauses: BTreeMap<TenantId, Vec<PauseRecord>>,
    /// What the cluster clock is ahead of the wall clock (`moat dev` only).
    #[serde(default)]
    pub clock_offset_ms: i64,
    /// Where each tenant's alerts go.
    #[serde(default)]
    pub alert_contacts: BTreeMap<TenantId, AlertContacts>,
    /// How alert emails are sent.
    #[serde(default)]
    pub alert_transport: AlertTransport,
    /// The id the next alert gets.
    #[serde(default)]
    pub next_alert_id: u64,
    /// Detection settings: the cluster default under `*`, tenants' own under their id.
    #[serde(default)]
    pub detection: BTreeMap<String, DetectionPolicy>,
    /// Traffic per connector (`tenant/name`).
    #[serde(default)]
    pub connector_stats: BTreeMap<String, ConnectorStats>,
    /// Set while applying an entry that changed the restricted entities (never replicated).
    #[serde(skip)]
    pub restricted_changed: bool,
    /// Set while applying an entry that changed which servers edges throttle or block.
    #[serde(skip)]
    pub onprem_changed: bool,
}

/// What applying a proposal produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The entry's index.
    pub index: u64,
    /// A summary for the caller, or why the command was refused.
    pub result: Result<String, String>,
}

impl State {
    /// The stage table in force (the reference table unless one was set).
    pub fn schedule(&self) -> Schedule {
        self.onprem_schedule.clone().unwrap_or_default()
    }

    /// The baseline in force (the October 2025 updates unless one was set).
    pub fn baseline(&self) -> moat_shared::exchange::Baseline {
        self.onprem_baseline.clone().unwrap_or_default()
    }

    /// A tenant's pauses.
    pub fn pauses(&self, tenant: &TenantId) -> Vec<Pause> {
        self.onprem_pauses
            .get(tenant)
            .map(|v| v.iter().map(|p| p.pause).collect())
            .unwrap_or_default()
    }

    /// The key a connector is stored under.
    pub fn connector_key(tenant: &TenantId, name: &str) -> String {
        format!("{tenant}/{name}")
    }

    /// Applies the committed entry at `index`.
    pub fn apply(&mut self, index: u64, p: &Proposal) -> Outcome {
        self.applied = index;
        self.now_ms = self.now_ms.max(p.at_ms);
        let now = self.now_ms;
        self.requests
            .retain(|_, (_, at)| now.saturating_sub(*at) < REQUEST_ID_TTL_MS);
        if let Some(id) = &p.request_id {
            if let Some((first, _)) = self.requests.get(id) {
                return Outcome {
                    index: *first,
                    result: Ok("already applied".into()),
                };
            }
        }
        let before = self.restricted.len();
        self.restricted.retain(|r| r.in_force(now));
        self.restricted_changed = self.restricted.len() != before;
        let result = self.run(index, p);
        self.settle_onprem(index);
        if std::mem::take(&mut self.restricted_changed)
            || std::mem::take(&mut self.onprem_changed)
            || (result.is_ok() && policy_relevant(&p.command))
        {
            self.policy_version = index;
            self.policy_changed_ms = now;
        }
        if let Ok(action) = &result {
            if let Some(id) = &p.request_id {
                self.requests.insert(id.clone(), (index, now));
            }
            if !matches!(
                p.command,
                Command::Signals { .. } | Command::AlertDelivery { .. } | Command::Tick
            ) {
                self.audit.push_back(AuditRecord {
                    index,
                    at_ms: now,
                    actor: p.actor.clone(),
                    action: action.clone(),
                    tenant: command_tenant(&p.command),
                });
                while self.audit.len() > AUDIT_KEEP {
                    self.audit.pop_front();
                }
            }
        }
        Outcome { index, result }
    }

    fn tenant_mut(&mut self, id: &TenantId) -> Result<&mut Tenant, String> {
        self.tenants
            .get_mut(id)
            .ok_or_else(|| format!("tenant `{id}` does not exist"))
    }

    fn domain_owner(&self, domain: &Domain) -> Option<&TenantId> {
        self.tenants
            .values()
            .find(|t| t.accepted_domains.contains(domain))
            .map(|t| &t.id)
    }

    fn run(&mut self, index: u64, p: &Proposal) -> Result<String, String> {
        match &p.command {
            Command::PutTenant { tenant } => {
                for d in &tenant.accepted_domains {
                    if let Some(owner) = self.domain_owner(d) {
                        if *owner != tenant.id {
                            return Err(format!("domain `{d}` is already accepted by `{owner}`"));
                        }
                    }
                }
                let mut tenant = tenant.clone();
                tenant.accepted_domains.sort();
                tenant.accepted_domains.dedup();
                let verb = match self.tenants.insert(tenant.id.clone(), tenant.clone()) {
                    Some(_) => "updated",
                    None => "created",
                };
                Ok(format!("tenant {} {verb}", tenant.id))
            }
            Command::DeleteTenant { tenant } => {
                if self.tenants.remove(tenant).is_none() {
                    return Err(format!("tenant `{tenant}` does not exist"));
                }
                self.connectors.retain(|_, c| c.tenant != *tenant);
                self.users.retain(|_, u| u.tenant != *tenant);
                self.tokens.retain(|_, t| t.tenant.as_ref() != Some(tenant));
                self.restricted.retain(|r| r.tenant != *tenant);
                self.outbound.remove(tenant);
                self.onprem_pauses.remove(tenant);
                self.onprem_servers.retain(|_, s| s.tenant != *tenant);
                let users = &self.users;
                self.usage.retain(|a, _| users.contains_key(a));
                Ok(format!("tenant {tenant} deleted"))
            }
            Command::AddDomain { tenant, domain } => {
                if let Some(owner) = self.domain_owner(domain) {
                    return Err(format!(
                        "domain `{domain}` is already accepted by `{owner}`"
                    ));
                }
                let t = self.tenant_mut(tenant)?;
                t.accepted_domains.push(domain.clone());
                t.accepted_domains.sort();
                Ok(format!("domain {domain} added to {tenant}"))
            }
            Command::RemoveDomain { tenant, domain } => {
                let t = self.tenant_mut(tenant)?;
                let before = t.accepted_domains.len();
                t.accepted_domains.retain(|d| d != domain);
                if t.accepted_domains.len() == before {
                    return Err(format!("domain `{domain}` is not accepted by `{tenant}`"));
                }
                Ok(format!("domain {domain} removed from {tenant}"))
            }
            Command::PutConnector { connector } => {
                connector.validate().map_err(|e| e.to_string())?;
                if !self.tenants.contains_key(&connector.tenant) {
                    return Err(format!("tenant `{}` does not exist", connector.tenant));
                }
                let key = Self::connector_key(&connector.tenant, &connector.name);
                let verb = match self.connectors.insert(key.clone(), connector.clone()) {
                    Some(_) => "updated",
                    None => "created",
                };
                Ok(format!("connector {key} {verb}"))
            }
            Command::DeleteConnector { tenant, name } => {
                let key = Self::connector_key(tenant, name);
                if self.connectors.remove(&key).is_none() {
                    return Err(format!("connector `{key}` does not exist"));
                }
                self.restricted.retain(|r| {
                    !(r.kind == EntityKind::Connector && r.tenant == *tenant && r.name == *name)
                });
                self.connector_stats.remove(&key);
                Ok(format!("connector {key} deleted"))
            }
            Command::PutUser { user } => {
                if !self.tenants.contains_key(&user.tenant) {
                    return Err(format!("tenant `{}` does not exist", user.tenant));
                }
                if let Some(existing) = self.users.get(&user.address) {
                    if existing.tenant != user.tenant {
                        return Err(format!(
                            "user `{}` belongs to tenant `{}`",
                            user.address, existing.tenant
                        ));
                    }
                }
                let verb = match self.users.insert(user.address.clone(), user.clone()) {
                    Some(_) => "updated",
                    None => "created",
                };
                Ok(format!("user {} {verb}", user.address))
            }
            Command::DeleteUser { tenant, address } => match self.users.get(address) {
                Some(u) if u.tenant == *tenant => {
                    self.users.remove(address);
                    self.usage.remove(address);
                    self.restricted
                        .retain(|r| !(r.kind == EntityKind::User && r.name == *address));
                    Ok(format!("user {address} deleted"))
                }
                _ => Err(format!("user `{address}` does not exist in `{tenant}`")),
            },
            Command::SetTransportConfig {
                tenant,
                allow_legacy_tls_clients,
            } => {
                let t = self.tenant_mut(tenant)?;
                t.allow_legacy_tls_clients = *allow_legacy_tls_clients;
                Ok(format!(
                    "transport config of {tenant}: allow-legacy-tls-clients = {allow_legacy_tls_clients}"
                ))
            }
            Command::CreateToken { token } => {
                if let Some(t) = &token.tenant {
                    if !self.tenants.contains_key(t) {
                        return Err(format!("tenant `{t}` does not exist"));
                    }
                }
                if self.tokens.contains_key(&token.id) {
                    return Err(format!("token `{}` exists", token.id));
                }
                let mut token = token.clone();
                token.created_ms = self.now_ms;
                let summary = format!("token {} ({}) created", token.name, token.role.as_str());
                self.tokens.insert(token.id.clone(), token);
                Ok(summary)
            }
            Command::RevokeToken { id } => match self.tokens.remove(id) {
                Some(t) => Ok(format!("token {} revoked", t.name)),
                None => Err(format!("token `{id}` does not exist")),
            },
            Command::ApplySeed { tenants } => {
                for t in tenants {
                    for d in &t.accepted_domains {
                        if let Some(owner) = self.domain_owner(d) {
                            if *owner != t.id {
                                return Err(format!(
                                    "domain `{d}` is already accepted by `{owner}`"
                                ));
                            }
                        }
                    }
                }
                let mut changed = 0;
                for t in tenants {
                    let entry = self.tenants.entry(t.id.clone()).or_insert_with(|| Tenant {
                        id: t.id.clone(),
                        display_name: t.display_name.clone(),
                        accepted_domains: Vec::new(),
                        allow_legacy_tls_clients: t.allow_legacy_tls_clients,
                    });
                    let before = entry.clone();
                    entry.display_name = t.display_name.clone();
                    for d in &t.accepted_domains {
                        if !entry.accepted_domains.contains(d) {
                            entry.accepted_domains.push(d.clone());
                        }
                    }
                    entry.accepted_domains.sort();
                    if *entry != before {
                        changed += 1;
                    }
                }
                Ok(format!(
                    "seed applied: {} tenant(s), {changed} changed",
                    tenants.len()
                ))
            }
            Command::SetSpeedBump { steps } => {
                let steps = normalise_schedule(steps.clone())?;
                let text = if steps.is_empty() {
                    "off".to_owned()
                } else {
                    steps
                        .iter()
                        .map(SpeedBumpStep::render)
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                self.speed_bump = steps;
                Ok(format!("speed bump schedule: {text}"))
            }
            Command::SetOutboundPolicy { tenant, policy } => {
                self.tenant_mut(tenant)?;
                if policy.recipients_per_hour == 0 || policy.recipients_per_day == 0 {
                    return Err("sending limits must be at least 1 recipient".into());
                }
                self.outbound.insert(tenant.clone(), *policy);
                Ok(format!(
                    "sending limits of {tenant}: {} recipients per hour, {} per day, then {}",
                    policy.recipients_per_hour,
                    policy.recipients_per_day,
                    policy.action.as_str()
                ))
            }
            Command::SetAlertContacts { tenant, contacts } => {
                self.tenant_mut(tenant)?;
                // The full check is at proposal (`alerts::WebhookUrl::parse`); apply never
                // refuses what an older version accepted, so replicas replaying an old log
                // agree.
                let url = contacts.webhook_url.to_ascii_lowercase();
                if !url.is_empty() && !url.starts_with("http://") && !url.starts_with("https://") {
                    return Err("the webhook must be an http:// or https:// URL".into());
                }
                if contacts.emails.iter().any(|e| !e.contains('@')) {
                    return Err("alert emails must be addresses".into());
                }
                self.alert_contacts.insert(tenant.clone(), contacts.clone());
                Ok(format!(
                    "alert contacts of {tenant}: {} email(s){}",
                    contacts.emails.len(),
                    if contacts.webhook_url.is_empty() {
                        String::new()
                    } else {
                        format!(", webhook {}", contacts.webhook_url)
                    }
                ))
            }
            Command::SetAlertTransport { transport } => {
                self.alert_transport = transport.clone();
                Ok(format!("alert emails go through {}", transport.smtp))
            }
            Command::AlertDelivery {
                alert,
                channel,
                target,
                error,
            } => {
                let now = self.now_ms;
                let d = self
                    .alerts
                    .iter_mut()
                    .find(|a| a.id == *alert)
                    .and_then(|a| {
                        a.deliveries
                            .iter_mut()
                            .find(|d| d.channel == *channel && d.target == *target)
                    })
                    .ok_or_else(|| {
                        format!("alert {alert} has no {channel} delivery to {target}")
                    })?;
                if d.state != DeliveryState::Pending {
                    return Ok(format!("alert {alert} {channel} already settled"));
                }
                d.attempts += 1;
                d.at_ms = now;
                match error {
                    None => d.state = DeliveryState::Delivered,
                    Some(e) => {
                        d.last_error = e.clone();
                        if d.attempts >= MAX_DELIVERY_ATTEMPTS {
                            d.state = DeliveryState::Failed;
                        }
                    }
                }
                Ok(format!(
                    "alert {alert} {channel} to {target}: {:?} after {} attempt(s)",
                    d.state, d.attempts
                ))
            }
            Command::SetDetectionPolicy { tenant, policy } => {
                if policy.interval_ms < 1000 || policy.spike_factor < 2 || policy.min_messages == 0
                {
                    return Err(
                        "detection needs an interval of at least 1 s, a spike factor of at least 2 and a minimum of at least 1 message"
                            .into(),
                    );
                }
                let key = match tenant {
                    Some(t) => {
                        self.tenant_mut(t)?;
                        t.to_string()
                    }
                    None => "*".to_owned(),
                };
                self.detection.insert(key.clone(), *policy);
                Ok(format!(
                    "detection for {key}: interval {} ms, warm-up {} windows, spike x{}, min {} messages, unprovisioned {}%, mismatch {}%, DMARC failures {}%",
                    policy.interval_ms,
                    policy.warmup_intervals,
                    policy.spike_factor,
                    policy.min_messages,
                    policy.unprovisioned_percent,
                    policy.mismatch_percent,
                    policy.auth_fail_percent
                ))
            }
            Command::Unblock {
                tenant,
                kind,
                name,
                reason,
            } => {
                let before = self.restricted.len();
                self.restricted
                    .retain(|r| !(r.tenant == *tenant && r.kind == *kind && r.name == *name));
                if self.restricted.len() == before {
                    return Err(format!(
                        "{} `{name}` of `{tenant}` is not restricted",
                        kind.as_str()
                    ));
                }
                self.restricted_changed = true;
                // A fresh start: the counts that tripped the limit are forgiven.
                match kind {
                    EntityKind::User => {
                        self.usage.remove(name);
                    }
                    EntityKind::Connector => {
                        let key = Self::connector_key(tenant, name);
                        let interval = self.detection_policy(&key).interval_ms;
                        let now = self.now_ms;
                        if let Some(st) = self.connector_stats.get_mut(&key) {
                            st.current = WindowCounts::default();
                            st.quiet_until_ms = now + interval;
                        }
                    }
                }
                Ok(format!("{} {name} unblocked: {reason}", kind.as_str()))
            }
            Command::SetOnpremPolicy {
                baseline,
                stages,
                service,
                all_connectors,
            } => {
                let mut said = Vec::new();
                if let Some(all) = all_connectors {
                    self.onprem_all_connectors = *all;
                    said.push(format!(
                        "scope {}",
                        if *all { "all-connectors" } else { "onpremises" }
                    ));
                }
                if let Some(stages) = stages {
                    stages.validate()?;
                    said.push(format!("stages {}", stages.render()));
                    self.onprem_schedule = Some(stages.clone());
                }
                if let Some(service) = service {
                    let service = service.trim();
                    if service.is_empty() || service.len() > 64 || service.contains(['\r', '\n']) {
                        return Err("the service name is one line of 1 to 64 characters".into());
                    }
                    said.push(format!("service name {service}"));
                    self.onprem_service = service.to_owned();
                }
                if let Some(baseline) = baseline {
                    if baseline.0.is_empty() {
                        return Err("the baseline needs at least one build".into());
                    }
                    said.push(format!(
                        "baseline {}",
                        baseline
                            .0
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    self.onprem_baseline = Some(baseline.clone());
                    self.reclassify_onprem(index);
                }
                if said.is_empty() {
                    return Err("nothing to change".into());
                }
                Ok(format!("on-premises Exchange: {}", said.join("; ")))
            }
            Command::PauseOnprem {
                tenant,
                days,
                reason,
            } => {
                self.tenant_mut(tenant)?;
                let now = self.now_ms;
                if *days == 0 || *days > PAUSE_DAYS_PER_YEAR {
                    return Err(format!("a pause lasts 1 to {PAUSE_DAYS_PER_YEAR} days"));
                }
                let pauses = self.onprem_pauses.entry(tenant.clone()).or_default();
                let pause = Pause {
                    start_ms: now,
                    end_ms: now + i64::from(*days) * DAY_MS,
                };
                let year = pause.year();
                let list: Vec<Pause> = pauses.iter().map(|p| p.pause).collect();
                let used = pause_days_used(&list, year);
                if used + days > PAUSE_DAYS_PER_YEAR {
                    return Err(format!(
                        "a {days}-day pause exceeds the yearly budget: {used} of {PAUSE_DAYS_PER_YEAR} days of {year} are used, {} left",
                        PAUSE_DAYS_PER_YEAR - used
                    ));
                }
                if let Some(p) = pauses.iter().find(|p| p.pause.covers(now)) {
                    return Err(format!(
                        "{tenant} is already paused until {}",
                        moat_shared::time::day_string(day_of_ms(p.pause.end_ms))
                    ));
                }
                pauses.push(PauseRecord {
                    pause,
                    actor: p.actor.clone(),
                    reason: reason.clone(),
                });
                self.onprem_changed = true;
                Ok(format!(
                    "throttling and blocking of {tenant}'s on-premises servers paused for {days} day(s) until {} ({} of {PAUSE_DAYS_PER_YEAR} days of {year} left){}",
                    moat_shared::time::day_string(day_of_ms(pause.end_ms)),
                    PAUSE_DAYS_PER_YEAR - used - days,
                    if reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {reason}")
                    }
                ))
            }
            Command::SetClock { offset_ms } => {
                let wall = p.at_ms - self.clock_offset_ms;
                let target = wall.saturating_add(*offset_ms);
                if target < self.now_ms {
                    return Err("the cluster clock only moves forward".into());
                }
                self.clock_offset_ms = *offset_ms;
                self.now_ms = target;
                Ok(format!(
                    "cluster clock set {:.2} days ahead of the wall clock",
                    *offset_ms as f64 / DAY_MS as f64
                ))
            }
            Command::Tick => Ok("tick".into()),
            Command::Signals { batches } => {
                let mut applied = 0;
                let mut touched = std::collections::BTreeSet::new();
                let mut sightings = Vec::new();
                for b in batches {
                    let last = self.edge_seqs.entry(b.edge.clone()).or_default();
                    if b.seq <= *last {
                        continue;
                    }
                    *last = b.seq;
                    applied += 1;
                    for (scope, key, name, delta) in &b.counters {
                        if scope == signal::CONNECTOR && self.connectors.contains_key(key) {
                            touched.insert(key.clone());
                        }
                        if scope == signal::ONPREM {
                            sightings.push((key, name, *delta));
                            continue;
                        }
                        self.count(index, scope, key, name, *delta);
                    }
                }
                // Sightings lose their order in a batch: a server seen with an old and a
                // compliant build in the same second was being upgraded, so compliant builds
                // are applied last (and the rest in a fixed order, for determinism).
                let baseline = self.baseline();
                sightings.sort_by_key(|(key, name, _)| {
                    let compliant = name
                        .split_once('|')
                        .and_then(|(_, b)| moat_shared::exchange::Build::parse(b))
                        .is_some_and(|b| {
                            baseline.classify(&b) == moat_shared::exchange::Class::Compliant
                        });
                    (compliant, (*key).clone(), (*name).clone())
                });
                for (key, name, delta) in sightings {
                    self.count(index, signal::ONPREM, key, name, delta);
                }
                for key in touched {
                    self.judge_connector(index, &key);
                }
                Ok(format!("{applied} signal batch(es)"))
            }
        }
    }
}

impl State {
    /// Applies one counter delta from an edge.
    fn count(&mut self, index: u64, scope: &str, key: &str, name: &str, delta: u64) {
        let now = self.now_ms;
        let today = day_of_ms(now);
        match scope {
            signal::TLS | signal::TLS_LEGACY => {
                let Some((unit, dims)) = signal::split(name) else {
                    return;
                };
                self.prune_report(today);
                let day = day_string(today);
                let (table, mut row) = if scope == signal::TLS {
                    (
                        &mut self.tls_usage,
                        format!("{day}|{key}|{}", dims.join("|")),
                    )
                } else {
                    (
                        &mut self.legacy_clients,
                        format!("{day}|{key}|{}", dims.join("|")),
                    )
                };
                if scope == signal::TLS_LEGACY
                    && table.len() >= LEGACY_CLIENTS_MAX
                    && !table.contains_key(&row)
                {
                    row = format!("{day}|{key}|other||{}", dims[2]);
                }
                let t = table.entry(row).or_default();
                match unit {
                    Unit::Sessions => t.sessions += delta,
                    Unit::Messages => t.messages += delta,
                }
            }
            signal::USER if name == signal::RECIPIENTS => self.count_user(index, key, delta),
            signal::ONPREM if self.connectors.contains_key(key) => {
                self.count_onprem(index, key, name, delta)
            }
            signal::CONNECTOR if self.connectors.contains_key(key) => {
                add(self.counter(scope, key, name), now, delta);
                let policy = self.detection_policy(key);
                if !self.connector_stats.contains_key(key) {
                    self.connector_stats
                        .insert(key.to_owned(), Default::default());
                }
                let Some(st) = self.connector_stats.get_mut(key) else {
                    return;
                };
                roll(st, &policy, now);
                match name {
                    "messages" => st.current.messages += delta,
                    "unprovisioned" => st.current.unprovisioned += delta,
                    "mismatch" => st.current.mismatch += delta,
                    "relay-refused" => st.current.relay_refused += delta,
                    "auth-checked" => st.current.auth_checked += delta,
                    "dmarc-fail" => st.current.auth_failed += delta,
                    _ => {}
                }
            }
            _ => add(self.counter(scope, key, name), now, delta),
        }
    }

    /// The counter `scope|key|name`, created at zero if new; an existing one is found without
    /// allocating (the hot path of signal ingestion).
    fn counter(&mut self, scope: &str, key: &str, name: &str) -> &mut Counter {
        thread_local! {
            static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        KEY.with_borrow_mut(|k| {
            k.clear();
            k.push_str(scope);
            k.push('|');
            k.push_str(key);
            k.push('|');
            k.push_str(name);
            if !self.counters.contains_key(k.as_str()) {
                self.counters.insert(k.clone(), Counter::default());
            }
            self.counters.get_mut(k.as_str())
        })
        .expect("inserted above")
    }

    /// Records a sighting of an on-premises Exchange server (`server|build`) through the
    /// connector `key`: classifies the build, starts or ends its enforcement cycle, and alerts
    /// the tenant's admins when a cycle starts.
    fn count_onprem(&mut self, index: u64, key: &str, name: &str, delta: u64) {
        use moat_shared::exchange::Build;
        let Some((server, build)) = name.split_once('|') else {
            return;
        };
        let Some(build) = Build::parse(build) else {
            return;
        };
        let Some(tenant) = self.connectors.get(key).map(|c| c.tenant.clone()) else {
            return;
        };
        let class = self.baseline().classify(&build);
        let now = self.now_ms;
        let entry = self
            .onprem_servers
            .entry(format!("{tenant}|{server}"))
            .or_insert_with(|| OnpremServer {
                tenant: tenant.clone(),
                server: server.to_owned(),
                connector: key.to_owned(),
                build,
                class,
                first_detected_ms: None,
                last_seen_ms: now,
                messages: 0,
                stage: 0,
                stage_since_ms: now,
                throttle_enabled_ms: None,
                blocking_enabled_ms: None,
                paused: false,
                remediated_ms: None,
            });
        entry.build = build;
        entry.class = class;
        entry.connector = key.to_owned();
        entry.last_seen_ms = now;
        entry.messages += delta;
        self.observe_onprem(index, &format!("{tenant}|{server}"));
    }

    /// Starts or ends a server's cycle by its class: an out-of-date build outside a cycle starts
    /// one at stage 1 (a regression after remediation starts a new cycle from day 0); a compliant
    /// build ends the cycle at once. Alerts the tenant's admins either way.
    fn observe_onprem(&mut self, index: u64, key: &str) {
        use moat_shared::exchange::Class;
        let now = self.now_ms;
        let schedule = self.schedule();
        let Some(srv) = self.onprem_servers.get_mut(key) else {
            return;
        };
        let out_of_date = matches!(srv.class, Class::Unsupported | Class::Unpatched);
        let was_enforced = srv.enforced(&schedule);
        let event = if out_of_date && srv.first_detected_ms.is_none() {
            srv.first_detected_ms = Some(now);
            srv.stage = 1;
            srv.stage_since_ms = now;
            srv.throttle_enabled_ms = None;
            srv.blocking_enabled_ms = None;
            Some((
                "medium",
                "Out-of-date Exchange server detected",
                format!(
                    "{} sends with {} build {} ({}) through connector {}; stage 1 (report only) until day {}",
                    srv.server,
                    srv.build.product().name(),
                    srv.build,
                    srv.class.as_str(),
                    srv.connector,
                    schedule.get(2).map_or(0, |s| s.from_day)
                ),
            ))
        } else if srv.class == Class::Compliant && srv.first_detected_ms.is_some() {
            srv.first_detected_ms = None;
            srv.stage = 0;
            srv.stage_since_ms = now;
            srv.remediated_ms = Some(now);
            Some((
                "low",
                "Exchange server remediated",
                format!(
                    "{} now sends with compliant build {}; its mail is no longer throttled or blocked",
                    srv.server, srv.build
                ),
            ))
        } else {
            None
        };
        if srv.enforced(&schedule) != was_enforced {
            self.onprem_changed = true;
        }
        if let Some((severity, title, detail)) = event {
            let tenant = srv.tenant.clone();
            self.onprem_event(index, tenant, severity, title, detail);
        }
    }

    /// Judges every known server again (the baseline changed).
    fn reclassify_onprem(&mut self, index: u64) {
        let baseline = self.baseline();
        let keys: Vec<String> = self.onprem_servers.keys().cloned().collect();
        for key in keys {
            if let Some(srv) = self.onprem_servers.get_mut(&key) {
                srv.class = baseline.classify(&srv.build);
            }
            self.observe_onprem(index, &key);
        }
    }

    /// Where a server in a cycle should be at `now`: its stage by accrued days and whether its
    /// tenant's pause is in force.
    fn onprem_target(&self, srv: &OnpremServer, schedule: &Schedule, now: i64) -> (u32, bool) {
        let Some(first) = srv.first_detected_ms else {
            return (srv.stage, srv.paused);
        };
        let pauses = self.pauses(&srv.tenant);
        let days = accrued_ms(first, now, &pauses) / DAY_MS;
        let stage = schedule.stage_at(u32::try_from(days).unwrap_or(u32::MAX));
        (stage, pauses.iter().any(|p| p.covers(now)))
    }

    /// Whether applying an entry at `now` would move a server to another stage or start or end
    /// a pause: the leader proposes a [`Command::Tick`] when it would.
    pub fn onprem_due(&self, now: i64) -> bool {
        let schedule = self.schedule();
        self.onprem_servers
            .values()
            .filter(|s| s.first_detected_ms.is_some())
            .any(|s| self.onprem_target(s, &schedule, now) != (s.stage, s.paused))
    }

    /// Moves every server in a cycle to its stage at the entry's time, alerting at each stage
    /// change; marks the snapshot changed when what edges enforce changed.
    fn settle_onprem(&mut self, index: u64) {
        let now = self.now_ms;
        if !self.onprem_due(now) {
            return;
        }
        let schedule = self.schedule();
        let keys: Vec<String> = self.onprem_servers.keys().cloned().collect();
        for key in keys {
            let Some(srv) = self.onprem_servers.get(&key) else {
                continue;
            };
            let (stage, paused) = self.onprem_target(srv, &schedule, now);
            if (stage, paused) == (srv.stage, srv.paused) {
                continue;
            }
            let Some(srv) = self.onprem_servers.get_mut(&key) else {
                continue;
            };
            let was_enforced = srv.enforced(&schedule);
            srv.paused = paused;
            let mut event = None;
            if stage != srv.stage {
                srv.stage = stage;
                srv.stage_since_ms = now;
                let st = schedule.get(stage).copied().unwrap_or(Stage {
                    from_day: 0,
                    throttle: 0,
                    block: 0,
                });
                if st.throttle > 0 {
                    srv.throttle_enabled_ms.get_or_insert(now);
                }
                if st.block > 0 {
                    srv.blocking_enabled_ms.get_or_insert(now);
                }
                let what = match (st.throttle, st.block) {
                    (0, 0) => "report only".to_owned(),
                    (t, 0) => format!("throttled {t} minutes an hour"),
                    (0, 60) | (_, 60) => "all mail blocked".to_owned(),
                    (0, b) => format!("blocked {b} minutes an hour"),
                    (t, b) => format!("blocked {b} and throttled {t} minutes an hour"),
                };
                event = Some((
                    if st.block > 0 { "high" } else { "medium" },
                    format!("Out-of-date Exchange server at stage {stage}"),
                    format!(
                        "{} (build {}) is at stage {stage}: {what}{}",
                        srv.server,
                        srv.build,
                        if paused { " once the pause ends" } else { "" }
                    ),
                ));
            }
            // A new stage of an enforced server changes its minutes too.
            if was_enforced || srv.enforced(&schedule) {
                self.onprem_changed = true;
            }
            if let Some((severity, title, detail)) = event {
                let tenant = srv.tenant.clone();
                self.onprem_event(index, tenant, severity, &title, detail);
            }
        }
    }

    /// Audits and alerts an on-premises server event.
    fn onprem_event(
        &mut self,
        index: u64,
        tenant: TenantId,
        severity: &str,
        title: &str,
        detail: String,
    ) {
        let now = self.now_ms;
        self.audit.push_back(AuditRecord {
            index,
            at_ms: now,
            actor: "system".into(),
            action: format!("{title}: {detail}"),
            tenant: Some(tenant.clone()),
        });
        self.alert(Alert {
            at_ms: now,
            tenant,
            severity: severity.into(),
            title: title.into(),
            detail,
            id: 0,
            deliveries: Vec::new(),
        });
    }

    /// The detection settings that apply to a connector (`tenant/name`).
    fn detection_policy(&self, connector: &str) -> DetectionPolicy {
        let tenant = connector.split_once('/').map_or("", |(t, _)| t);
        self.detection
            .get(tenant)
            .or_else(|| self.detection.get("*"))
            .copied()
            .unwrap_or_default()
    }

    /// Runs the detectors on a connector's current window; restricts it when one fires.
    fn judge_connector(&mut self, index: u64, key: &str) {
        let Some(connector) = self.connectors.get(key) else {
            return;
        };
        let (tenant, name, kind) = (
            connector.tenant.clone(),
            connector.name.clone(),
            connector.kind,
        );
        let ips: Vec<String> = connector
            .sender_ip_addresses
            .iter()
            .map(ToString::to_string)
            .collect();
        let cert = connector.tls_sender_certificate_name.clone();
        if self
            .restricted
            .iter()
            .any(|r| r.kind == EntityKind::Connector && r.tenant == tenant && r.name == name)
        {
            return;
        }
        let policy = self.detection_policy(key);
        let Some(st) = self.connector_stats.get(key) else {
            return;
        };
        if self.now_ms < st.quiet_until_ms {
            return;
        }
        let w = st.current;
        let auth_share = w.auth_failed * 100 / w.auth_checked.max(1);
        if w.messages < policy.min_messages && w.auth_checked < policy.min_messages {
            return;
        }
        let baseline = st.baseline_milli.max(1000);
        let onprem = kind == moat_shared::ConnectorKind::OnPremises;
        let share = |n: u64| n * 100 / w.messages.max(1);
        let figures = format!(
            "{} messages this window, baseline {}.{:03} per window over {} windows, {}% unprovisioned MAIL FROM domains, {}% header From mismatches, {} relay refusals, {} of {} checked messages failing DMARC",
            w.messages,
            st.baseline_milli / 1000,
            st.baseline_milli % 1000,
            st.intervals,
            share(w.unprovisioned),
            share(w.mismatch),
            w.relay_refused,
            w.auth_failed,
            w.auth_checked
        );
        let enough = w.messages >= policy.min_messages;
        let detector = if w.auth_checked >= policy.min_messages
            && auth_share >= u64::from(policy.auth_fail_percent)
        {
            "authentication-failures"
        } else if !enough {
            return;
        } else if st.intervals >= policy.warmup_intervals
            && w.messages * 1000 >= u64::from(policy.spike_factor) * baseline
        {
            "volume-spike"
        } else if onprem && share(w.unprovisioned) >= u64::from(policy.unprovisioned_percent) {
            "unprovisioned-domains"
        } else if onprem && share(w.mismatch) >= u64::from(policy.mismatch_percent) {
            "from-mismatch"
        } else {
            return;
        };
        let now = self.now_ms;
        let reason = format!("{detector}: {figures}");
        self.restricted.push(Restricted {
            tenant: tenant.clone(),
            kind: EntityKind::Connector,
            name: name.clone(),
            reason: reason.clone(),
            since_ms: now,
            until_ms: None,
        });
        self.restricted_changed = true;
        self.audit.push_back(AuditRecord {
            index,
            at_ms: now,
            actor: "system".into(),
            action: format!("connector {name} restricted: {reason}"),
            tenant: Some(tenant.clone()),
        });
        let cert = cert
            .map(|c| format!(", certificate {c}"))
            .unwrap_or_default();
        self.alert(Alert {
            at_ms: now,
            tenant,
            severity: "high".into(),
            title: "Suspicious connector activity".into(),
            id: 0,
            deliveries: Vec::new(),
            detail: format!(
                "connector {name} (IPs {}{cert}) restricted by {reason}",
                if ips.is_empty() {
                    "-".to_owned()
                } else {
                    ips.join(" ")
                }
            ),
        });
    }

    /// Drops report rows older than [`REPORT_DAYS`].
    fn prune_report(&mut self, today: i64) {
        let oldest = day_string(today - REPORT_DAYS + 1);
        for table in [&mut self.tls_usage, &mut self.legacy_clients] {
            if table.keys().next().is_some_and(|k| *k < oldest) {
                *table = table.split_off(&oldest);
            }
        }
    }

    /// Counts recipients of an SMTP AUTH user and restricts the user over a limit.
    fn count_user(&mut self, index: u64, address: &str, delta: u64) {
        let Some(user) = self.users.get(address) else {
            return;
        };
        let tenant = user.tenant.clone();
        let now = self.now_ms;
        let hour_start = now - now.rem_euclid(3_600_000);
        let today = day_of_ms(now);
        let u = self.usage.entry(address.to_owned()).or_default();
        if u.hour_start_ms != hour_start {
            u.hour_start_ms = hour_start;
            u.hour = 0;
        }
        if u.day_number != today {
            u.day_number = today;
            u.day = 0;
        }
        u.hour += delta;
        u.day += delta;
        let policy = self.outbound.get(&tenant).copied().unwrap_or_default();
        let over = if u.hour > u64::from(policy.recipients_per_hour) {
            format!(
                "{} recipients this hour, over the limit of {} per hour",
                u.hour, policy.recipients_per_hour
            )
        } else if u.day > u64::from(policy.recipients_per_day) {
            format!(
                "{} recipients today, over the limit of {} per day",
                u.day, policy.recipients_per_day
            )
        } else {
            return;
        };
        let blocked = self
            .restricted
            .iter()
            .any(|r| r.kind == EntityKind::User && r.name == address);
        if blocked {
            return;
        }
        let until_ms = match policy.action {
            LimitAction::AlertOnly => {
                if u.alerted_hour_ms == Some(hour_start) {
                    return;
                }
                u.alerted_hour_ms = Some(hour_start);
                None
            }
            LimitAction::BlockForToday => Some((today + 1) * 86_400_000),
            LimitAction::Block => None,
        };
        let (title, action) = if policy.action == LimitAction::AlertOnly {
            ("User exceeded a sending limit", "not blocked (alert only)")
        } else {
            (
                "User restricted from sending email",
                if until_ms.is_some() {
                    "blocked until the next UTC day"
                } else {
                    "blocked until an admin unblocks it"
                },
            )
        };
        if policy.action != LimitAction::AlertOnly {
            self.restricted.push(Restricted {
                tenant: tenant.clone(),
                kind: EntityKind::User,
                name: address.to_owned(),
                reason: over.clone(),
                since_ms: now,
                until_ms,
            });
            self.restricted_changed = true;
        }
        let detail = format!("{address}: {over}; {action}");
        self.audit.push_back(AuditRecord {
            index,
            at_ms: now,
            actor: "system".into(),
            action: format!("user {detail}"),
            tenant: Some(tenant.clone()),
        });
        self.alert(Alert {
            at_ms: now,
            tenant,
            severity: "high".into(),
            title: title.into(),
            detail,
            id: 0,
            deliveries: Vec::new(),
        });
    }

    fn alert(&mut self, mut a: Alert) {
        self.next_alert_id += 1;
        a.id = self.next_alert_id;
        let pending = |channel: &str, target: &str| Delivery {
            channel: channel.into(),
            target: target.into(),
            state: DeliveryState::Pending,
            attempts: 0,
            last_error: String::new(),
            at_ms: a.at_ms,
        };
        if let Some(c) = self.alert_contacts.get(&a.tenant) {
            if !c.webhook_url.is_empty() {
                a.deliveries.push(pending("webhook", &c.webhook_url));
            }
            for e in &c.emails {
                a.deliveries.push(pending("email", e));
            }
        }
        self.alerts.push_back(a);
        while self.alerts.len() > ALERTS_KEEP {
            self.alerts.pop_front();
        }
    }
}

/// Moves a connector's window forward to the one holding `now`, folding each closed window
/// (and each empty one skipped) into the baseline.
fn roll(st: &mut ConnectorStats, policy: &DetectionPolicy, now: i64) {
    let len = policy.interval_ms.max(1000);
    let start = now - now.rem_euclid(len);
    if st.window_start_ms == 0 {
        st.first_seen_ms = now;
        st.window_start_ms = start;
        return;
    }
    if start <= st.window_start_ms {
        return;
    }
    let closed = (start - st.window_start_ms) / len;
    let mut volume = st.current.messages * 1000;
    // Folding more than a few hundred empty windows changes nothing measurable.
    for _ in 0..closed.min(500) {
        st.baseline_milli = if volume >= st.baseline_milli {
            st.baseline_milli + (volume - st.baseline_milli) / 5
        } else {
            st.baseline_milli - (st.baseline_milli - volume) / 5
        };
        volume = 0;
    }
    st.intervals = st
        .intervals
        .saturating_add(u32::try_from(closed).unwrap_or(u32::MAX));
    st.window_start_ms = start;
    st.current = WindowCounts::default();
}

fn add(c: &mut Counter, now_ms: i64, delta: u64) {
    let minute = now_ms - now_ms.rem_euclid(60_000);
    if c.window_start_ms != minute {
        c.last_minute = if c.window_start_ms == minute - 60_000 {
            c.this_minute
        } else {
            0
        };
        c.this_minute = 0;
        c.window_start_ms = minute;
    }
    c.this_minute += delta;
    c.total += delta;
}

fn policy_relevant(c: &Command) -> bool {
    !matches!(
        c,
        Command::Signals { .. }
            | Command::CreateToken { .. }
            | Command::RevokeToken { .. }
            | Command::SetOutboundPolicy { .. }
            | Command::SetDetectionPolicy { .. }
            | Command::SetAlertContacts { .. }
            | Command::SetAlertTransport { .. }
            | Command::AlertDelivery { .. }
            | Command::PauseOnprem { .. }
            | Command::Tick
    )
}

fn command_tenant(c: &Command) -> Option<TenantId> {
    match c {
        Command::PutTenant { tenant } => Some(tenant.id.clone()),
        Command::DeleteTenant { tenant }
        | Command::AddDomain { tenant, .. }
        | Command::RemoveDomain { tenant, .. }
        | Command::DeleteConnector { tenant, .. }
        | Command::DeleteUser { tenant, .. }
        | Command::SetTransportConfig { tenant, .. }
        | Command::SetOutboundPolicy { tenant, .. }
        | Command::Unblock { tenant, .. } => Some(tenant.clone()),
        Command::PutConnector { connector } => Some(connector.tenant.clone()),
        Command::PutUser { user } => Some(user.tenant.clone()),
        Command::CreateToken { token } => token.tenant.clone(),
        Command::SetDetectionPolicy { tenant, .. } => tenant.clone(),
        Command::SetAlertContacts { tenant, .. } => Some(tenant.clone()),
        Command::PauseOnprem { tenant, .. } => Some(tenant.clone()),
        Command::SetAlertTransport { .. }
        | Command::AlertDelivery { .. }
        | Command::SetOnpremPolicy { .. }
        | Command::SetClock { .. }
        | Command::Tick => None,
        Command::RevokeToken { .. }
        | Command::ApplySeed { .. }
        | Command::SetSpeedBump { .. }
        | Command::Signals { .. } => None,
    }
}

#[cfg(test)]
mod compat;

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str, domains: &[&str]) -> Tenant {
        Tenant {
            id: TenantId::new(id).unwrap(),
            display_name: id.into(),
            accepted_domains: domains.iter().map(|d| Domain::new(d).unwrap()).collect(),
            allow_legacy_tls_clients: false,
        }
    }

    fn p(at_ms: i64, command: Command) -> Proposal {
        Proposal {
            at_ms,
            actor: "test".into(),
            request_id: None,
            command,
        }
    }

    #[test]
    fn a_domain_cannot_move_between_tenants_silently() {
        let mut s = State::default();
        let a = s.apply(
            1,
            &p(
                1,
                Command::PutTenant {
                    tenant: tenant("a", &["x.test"]),
                },
            ),
        );
        assert!(a.result.is_ok());
        let b = s.apply(
            2,
            &p(
                2,
                Command::PutTenant {
                    tenant: tenant("b", &["x.test"]),
                },
            ),
        );
        assert_eq!(
            b.result.unwrap_err(),
            "domain `x.test` is already accepted by `a`"
        );
        assert_eq!(s.policy_version, 1);
        assert_eq!(s.audit.len(), 1);
    }

    #[test]
    fn signals_are_counted_once_per_edge_sequence() {
        let mut s = State::default();
        let batch = |seq| SignalBatch {
            edge: "e1".into(),
            seq,
            counters: vec![("tenant".into(), "a".into(), "messages".into(), 5)],
        };
        s.apply(
            1,
            &p(
                60_000,
                Command::Signals {
                    batches: vec![batch(1)],
                },
            ),
        );
        s.apply(
            2,
            &p(
                60_001,
                Command::Signals {
                    batches: vec![batch(1)],
                },
            ),
        );
        s.apply(
            3,
            &p(
                125_000,
                Command::Signals {
                    batches: vec![batch(2)],
                },
            ),
        );
        let c = &s.counters["tenant|a|messages"];
        assert_eq!(c.total, 10);
        assert_eq!((c.last_minute, c.this_minute), (5, 5));
        assert_eq!(s.policy_version, 0, "signals do not change policy");
    }

    #[test]
    fn time_never_goes_backwards_and_retries_apply_once() {
        let mut s = State::default();
        let mut prop = p(
            100,
            Command::PutTenant {
                tenant: tenant("a", &[]),
            },
        );
        prop.request_id = Some("r1".into());
        s.apply(1, &prop);
        prop.at_ms = 50;
        let again = s.apply(2, &prop);
        assert_eq!(again.index, 1);
        assert_eq!(s.now_ms, 100);
        assert_eq!(s.audit.len(), 1);
    }

    #[test]
    fn state_round_trips_through_its_snapshot_form() {
        let mut s = State::default();
        s.apply(
            1,
            &p(
                1,
                Command::PutTenant {
                    tenant: tenant("a", &["a.test"]),
                },
            ),
        );
        let json = serde_json::to_vec(&s).unwrap();
        let back: State = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, s);
    }

    fn signals(edge: &str, seq: u64, counters: &[(&str, &str, &str, u64)]) -> Command {
        Command::Signals {
            batches: vec![SignalBatch {
                edge: edge.into(),
                seq,
                counters: counters
                    .iter()
                    .map(|(s, k, n, v)| (s.to_string(), k.to_string(), n.to_string(), *v))
                    .collect(),
            }],
        }
    }

    fn with_user(limits: OutboundPolicy) -> State {
        let mut s = State::default();
        s.apply(
            1,
            &p(
                1,
                Command::PutTenant {
                    tenant: tenant("a", &["a.test"]),
                },
            ),
        );
        let user = User {
            tenant: TenantId::new("a").unwrap(),
            address: "u@a.test".into(),
            password_hash: String::new(),
            send_as: vec![],
        };
        s.apply(2, &p(2, Command::PutUser { user }));
        let r = s.apply(
            3,
            &p(
                3,
                Command::SetOutboundPolicy {
                    tenant: TenantId::new("a").unwrap(),
                    policy: limits,
                },
            ),
        );
        assert!(r.result.is_ok(), "{r:?}");
        s
    }

    #[test]
    fn a_user_over_its_hourly_limit_is_blocked_for_the_day_and_alerted() {
        let mut s = with_user(OutboundPolicy {
            recipients_per_hour: 3,
            recipients_per_day: 100,
            action: LimitAction::BlockForToday,
        });
        let day = 20_415 * 86_400_000;
        let rcpts = |n| [(signal::USER, "u@a.test", signal::RECIPIENTS, n)];
        s.apply(4, &p(day + 1000, signals("e1", 1, &rcpts(2))));
        s.apply(5, &p(day + 2000, signals("e2", 1, &rcpts(1))));
        assert!(s.restricted.is_empty(), "3 of 3 is not over");
        let v = s.policy_version;
        s.apply(6, &p(day + 3000, signals("e1", 2, &rcpts(1))));
        assert_eq!(s.restricted.len(), 1);
        let r = &s.restricted[0];
        assert_eq!((r.kind, r.name.as_str()), (EntityKind::User, "u@a.test"));
        assert_eq!(r.until_ms, Some(20_416 * 86_400_000));
        assert_eq!(
            s.policy_version, 6,
            "a restriction changes policy (was {v})"
        );
        assert_eq!(s.alerts.len(), 1);
        assert_eq!(s.alerts[0].title, "User restricted from sending email");
        // More traffic does not restrict twice.
        s.apply(7, &p(day + 4000, signals("e1", 3, &rcpts(5))));
        assert_eq!((s.restricted.len(), s.alerts.len()), (1, 1));
        // The next UTC day, the block lifts by itself at the next entry.
        s.apply(8, &p(20_416 * 86_400_000 + 5, signals("e1", 4, &[])));
        assert!(s.restricted.is_empty());
        assert_eq!(s.policy_version, 8);
    }

    #[test]
    fn unblock_needs_a_restriction_and_forgives_the_counts() {
        let mut s = with_user(OutboundPolicy {
            recipients_per_hour: 1,
            recipients_per_day: 100,
            action: LimitAction::Block,
        });
        let unblock = || Command::Unblock {
            tenant: TenantId::new("a").unwrap(),
            kind: EntityKind::User,
            name: "u@a.test".into(),
            reason: "checked".into(),
        };
        assert!(s.apply(4, &p(10, unblock())).result.is_err());
        s.apply(
            5,
            &p(
                20,
                signals(
                    "e1",
                    1,
                    &[(signal::USER, "u@a.test", signal::RECIPIENTS, 2)],
                ),
            ),
        );
        assert_eq!(s.restricted.len(), 1);
        assert_eq!(
            s.restricted[0].until_ms, None,
            "block lasts until unblocked"
        );
        let o = s.apply(6, &p(30, unblock()));
        assert_eq!(o.result.unwrap(), "user u@a.test unblocked: checked");
        assert!(s.restricted.is_empty());
        assert_eq!(s.policy_version, 6);
        assert!(!s.usage.contains_key("u@a.test"));
        assert!(s.audit.iter().any(|a| a.action.contains("unblocked")));
    }

    #[test]
    fn alert_only_alerts_once_an_hour_and_blocks_nothing() {
        let mut s = with_user(OutboundPolicy {
            recipients_per_hour: 1,
            recipients_per_day: 100,
            action: LimitAction::AlertOnly,
        });
        let r = [(signal::USER, "u@a.test", signal::RECIPIENTS, 5)];
        s.apply(4, &p(1_000, signals("e1", 1, &r)));
        s.apply(5, &p(2_000, signals("e1", 2, &r)));
        s.apply(6, &p(3_600_000 + 1, signals("e1", 3, &r)));
        assert!(s.restricted.is_empty());
        assert_eq!(s.alerts.len(), 2);
    }

    #[test]
    fn tls_usage_is_kept_by_day_tenant_and_version() {
        let mut s = State::default();
        let day = 20_415 * 86_400_000;
        let v10 = signal::tls_usage(Unit::Sessions, "submission", "TLSv1.0", "X");
        let m10 = signal::tls_usage(Unit::Messages, "submission", "TLSv1.0", "X");
        let who = signal::legacy_client(Unit::Sessions, "192.0.2.1", "u@a.test", "TLSv1.0");
        s.apply(
            1,
            &p(
                day,
                signals(
                    "e1",
                    1,
                    &[
                        (signal::TLS, "a", &v10, 2),
                        (signal::TLS, "a", &m10, 3),
                        (signal::TLS_LEGACY, "a", &who, 2),
                    ],
                ),
            ),
        );
        let key = "2025-11-23|a|submission|TLSv1.0|X";
        assert_eq!(
            s.tls_usage[key],
            Tally {
                sessions: 2,
                messages: 3
            }
        );
        assert_eq!(
            s.legacy_clients["2025-11-23|a|192.0.2.1|u@a.test|TLSv1.0"].sessions,
            2
        );
        // 90 days later the first day is gone.
        s.apply(
            2,
            &p(
                day + 90 * 86_400_000,
                signals("e1", 2, &[(signal::TLS, "a", &v10, 1)]),
            ),
        );
        assert!(!s.tls_usage.contains_key(key));
        assert_eq!(s.tls_usage.len(), 1);
    }

    #[test]
    fn the_speed_bump_schedule_is_policy() {
        let mut s = State::default();
        let step = |d: &str| SpeedBumpStep::parse(d).unwrap();
        let o = s.apply(
            1,
            &p(
                1,
                Command::SetSpeedBump {
                    steps: vec![step("2026-12-01=100"), step("2026-11-01=30")],
                },
            ),
        );
        assert_eq!(
            o.result.unwrap(),
            "speed bump schedule: 2026-11-01=30, 2026-12-01=100"
        );
        assert_eq!(s.policy_version, 1);
        let dup = s.apply(
            2,
            &p(
                2,
                Command::SetSpeedBump {
                    steps: vec![step("2026-12-01=100"), step("2026-12-01=30")],
                },
            ),
        );
        assert!(dup.result.is_err());
        assert_eq!(s.speed_bump.len(), 2);
    }

    /// A tenant with one OnPremises connector, fed `per_minute(minute)` messages a minute (of
    /// which `bad(minute)` from unprovisioned domains) for `minutes`, one entry a minute.
    fn simulate(
        minutes: i64,
        per_minute: impl Fn(i64) -> u64,
        bad: impl Fn(i64) -> u64,
    ) -> (State, Option<i64>) {
        let mut s = State::default();
        s.apply(
            1,
            &p(
                1,
                Command::PutTenant {
                    tenant: tenant("a", &["a.test"]),
                },
            ),
        );
        let connector = Connector {
            tenant: TenantId::new("a").unwrap(),
            name: "onprem".into(),
            kind: moat_shared::ConnectorKind::OnPremises,
            enabled: true,
            sender_ip_addresses: vec![Connector::parse_ip("192.0.2.0/24").unwrap()],
            tls_sender_certificate_name: None,
            sender_domains: vec![],
            require_tls: false,
            restrict_domains_to_ip_addresses: false,
            restrict_domains_to_certificate: false,
        };
        s.apply(2, &p(2, Command::PutConnector { connector }));
        let day0 = 20_000 * 86_400_000;
        let mut restricted_at = None;
        for m in 0..minutes {
            let (n, b) = (per_minute(m), bad(m));
            s.apply(
                3 + m as u64,
                &p(
                    day0 + m * 60_000,
                    signals(
                        "e1",
                        m as u64 + 1,
                        &[
                            (signal::CONNECTOR, "a/onprem", "messages", n),
                            (signal::CONNECTOR, "a/onprem", "unprovisioned", b),
                        ],
                    ),
                ),
            );
            if restricted_at.is_none() && !s.restricted.is_empty() {
                restricted_at = Some(m);
            }
        }
        (s, restricted_at)
    }

    #[test]
    fn a_new_connector_ramping_up_is_not_restricted() {
        // Two days, growing from 1 to 200 messages a minute, hour by hour.
        let (s, at) = simulate(48 * 60, |m| 1 + (m as u64 / 60) * 4, |_| 0);
        assert_eq!(at, None, "{:?}", s.restricted);
        assert!(s.connector_stats["a/onprem"].intervals >= 47);
    }

    #[test]
    fn a_steady_high_volume_connector_is_not_restricted() {
        let (s, at) = simulate(72 * 60, |_| 500, |_| 0);
        assert_eq!(at, None, "{:?}", s.restricted);
        let b = s.connector_stats["a/onprem"].baseline_milli / 1000;
        assert!((29_000..=30_000).contains(&b), "baseline {b}");
    }

    #[test]
    fn a_ten_fold_one_minute_burst_within_daily_volume_is_not_restricted() {
        // 20 a minute for two days, then one minute at 200.
        let (s, at) = simulate(49 * 60, |m| if m == 48 * 60 + 30 { 200 } else { 20 }, |_| 0);
        assert_eq!(at, None, "{:?}", s.restricted);
    }

    #[test]
    fn a_flood_from_unprovisioned_domains_is_restricted_and_alerted() {
        // Two days at 5 a minute, then 100 a minute (20x) from domains the tenant does not own.
        let flood = 48 * 60;
        let (s, at) = simulate(
            flood + 60,
            |m| if m >= flood { 100 } else { 5 },
            |m| if m >= flood { 100 } else { 0 },
        );
        let at = at.expect("restricted");
        assert!(
            at >= flood && at < flood + 5,
            "restricted at minute {}",
            at - flood
        );
        let r = &s.restricted[0];
        assert_eq!((r.kind, r.name.as_str()), (EntityKind::Connector, "onprem"));
        assert!(
            r.reason.starts_with("unprovisioned-domains: "),
            "{}",
            r.reason
        );
        assert_eq!(s.alerts.len(), 1);
        assert_eq!(s.alerts[0].title, "Suspicious connector activity");
        assert!(
            s.alerts[0].detail.contains("192.0.2.0/24"),
            "{}",
            s.alerts[0].detail
        );
    }

    #[test]
    fn a_volume_spike_after_warm_up_is_restricted() {
        let spike = 30 * 60;
        let (s, at) = simulate(spike + 60, |m| if m >= spike { 60 } else { 3 }, |_| 0);
        let at = at.expect("restricted");
        assert!(
            s.restricted[0].reason.starts_with("volume-spike"),
            "{:?}",
            s.restricted
        );
        // 10 x 180 an hour is reached after 30 minutes at 60 a minute.
        assert!(at - spike <= 31, "restricted at minute {}", at - spike);
    }

    #[test]
    fn an_unblocked_connector_is_left_alone_for_a_window() {
        let flood = 48 * 60;
        let (mut s, at) = simulate(
            flood + 10,
            |m| if m >= flood { 100 } else { 5 },
            |m| if m >= flood { 100 } else { 0 },
        );
        assert!(at.is_some());
        let now = s.now_ms;
        s.apply(
            100_000,
            &p(
                now + 1000,
                Command::Unblock {
                    tenant: TenantId::new("a").unwrap(),
                    kind: EntityKind::Connector,
                    name: "onprem".into(),
                    reason: "cleaned".into(),
                },
            ),
        );
        // Late counts from before the unblock do not restrict it again within the window.
        let late = [
            (signal::CONNECTOR, "a/onprem", "messages", 500),
            (signal::CONNECTOR, "a/onprem", "unprovisioned", 500),
        ];
        s.apply(100_001, &p(now + 2000, signals("e2", 1, &late)));
        assert!(s.restricted.is_empty());
        // An attack that goes on after the window is caught again.
        s.apply(100_002, &p(now + 3_700_000, signals("e2", 2, &late)));
        assert_eq!(s.restricted.len(), 1);
    }

    #[test]
    fn onprem_servers_start_and_end_their_cycle_by_build() {
        let (mut s, _) = simulate(1, |_| 1, |_| 0);
        let t0 = s.now_ms + 1000;
        let seen = |build: &str| {
            let name = signal::onprem_server("exch16.corp.local", build);
            Command::Signals {
                batches: vec![SignalBatch {
                    edge: "e9".into(),
                    seq: 0,
                    counters: vec![(signal::ONPREM.into(), "a/onprem".into(), name, 1)],
                }],
            }
        };
        let mut seq = 0;
        let mut apply = |s: &mut State, at: i64, build: &str| {
            seq += 1;
            let mut c = seen(build);
            if let Command::Signals { batches } = &mut c {
                batches[0].seq = seq;
            }
            s.apply(1000 + seq, &p(at, c));
        };
        apply(&mut s, t0, "15.1.2507.44");
        let srv = &s.onprem_servers["a|exch16.corp.local"];
        assert_eq!(srv.class, moat_shared::exchange::Class::Unpatched);
        assert_eq!(srv.first_detected_ms, Some(t0));
        assert_eq!(
            s.alerts.back().unwrap().title,
            "Out-of-date Exchange server detected"
        );
        // Seen again later: the cycle keeps its start.
        apply(&mut s, t0 + 100_000_000, "15.1.2507.44");
        assert_eq!(
            s.onprem_servers["a|exch16.corp.local"].first_detected_ms,
            Some(t0)
        );
        // Remediated, then regressed: a new cycle.
        apply(&mut s, t0 + 200_000_000, "15.1.2507.61");
        assert_eq!(
            s.onprem_servers["a|exch16.corp.local"].first_detected_ms,
            None
        );
        apply(&mut s, t0 + 300_000_000, "15.0.1497.48");
        let srv = &s.onprem_servers["a|exch16.corp.local"];
        assert_eq!(srv.first_detected_ms, Some(t0 + 300_000_000));
        assert_eq!(srv.class, moat_shared::exchange::Class::Unsupported);
        let titles: Vec<&str> = s.alerts.iter().map(|a| a.title.as_str()).collect();
        assert_eq!(
            titles,
            [
                "Out-of-date Exchange server detected",
                "Exchange server remediated",
                "Out-of-date Exchange server detected"
            ]
        );
    }

    /// A tenant with an out-of-date server first seen at `t0`.
    fn detected_at(t0: i64) -> State {
        let (mut s, _) = simulate(1, |_| 1, |_| 0);
        let name = signal::onprem_server("exch16.corp.local", "15.1.2507.44");
        let c = Command::Signals {
            batches: vec![SignalBatch {
                edge: "e9".into(),
                seq: 1,
                counters: vec![(signal::ONPREM.into(), "a/onprem".into(), name, 1)],
            }],
        };
        s.apply(5000, &p(t0, c));
        s
    }

    #[test]
    fn servers_walk_the_stages_by_days_since_detection() {
        const DAY: i64 = moat_shared::onprem::DAY_MS;
        let t0 = 1_800_000_000_000;
        let mut s = detected_at(t0);
        let key = "a|exch16.corp.local";
        let mut index = 6000;
        let mut tick = |s: &mut State, day: i64| {
            index += 1;
            let before = s.policy_version;
            s.apply(index, &p(t0 + day * DAY, Command::Tick));
            (s.onprem_servers[key].stage, s.policy_version != before)
        };
        assert!(!s.onprem_due(t0 + 29 * DAY));
        assert!(s.onprem_due(t0 + 30 * DAY));
        assert_eq!(tick(&mut s, 1), (1, false));
        // Stage 2 is the first that refuses mail: the snapshot changes.
        assert_eq!(tick(&mut s, 31), (2, true));
        assert_eq!(
            s.alerts.back().unwrap().title,
            "Out-of-date Exchange server at stage 2"
        );
        assert_eq!(tick(&mut s, 45), (3, true));
        let srv = &s.onprem_servers[key];
        assert_eq!(srv.throttle_enabled_ms, Some(t0 + 31 * DAY));
        assert_eq!(srv.blocking_enabled_ms, None);
        // Paused at day 45 for 10 days: no enforcement, and the clock of the cycle stops.
        let paused = s.apply(
            7000,
            &p(
                t0 + 45 * DAY,
                Command::PauseOnprem {
                    tenant: TenantId::new("a").unwrap(),
                    days: 10,
                    reason: "patching".into(),
                },
            ),
        );
        assert!(paused.result.is_ok(), "{paused:?}");
        assert!(s.onprem_servers[key].paused);
        assert!(!s.onprem_servers[key].enforced(&Schedule::default()));
        assert_eq!(s.policy_version, 7000);
        // Day 56: 46 days accrued, still stage 3, enforced again.
        assert_eq!(tick(&mut s, 56), (3, true));
        assert!(!s.onprem_servers[key].paused);
        // 81 more days this year would exceed the 90-day budget.
        let refused = s.apply(
            7001,
            &p(
                t0 + 57 * DAY,
                Command::PauseOnprem {
                    tenant: TenantId::new("a").unwrap(),
                    days: 81,
                    reason: "more".into(),
                },
            ),
        );
        let why = refused.result.unwrap_err();
        assert!(
            why.contains("80 left") || why.contains("yearly budget"),
            "{why}"
        );
        assert_eq!(tick(&mut s, 71), (5, true));
        assert!(s.onprem_servers[key].blocking_enabled_ms.is_some());
        assert_eq!(tick(&mut s, 101), (8, true));
        assert_eq!(s.alerts.back().unwrap().severity, "high");
    }

    #[test]
    fn a_raised_baseline_makes_a_compliant_server_unpatched() {
        let t0 = 1_800_000_000_000;
        let mut s = detected_at(t0);
        // Remediate with the October 2025 update, then raise the baseline above it.
        let name = signal::onprem_server("exch16.corp.local", "15.1.2507.61");
        s.apply(
            5001,
            &p(
                t0 + 1000,
                Command::Signals {
                    batches: vec![SignalBatch {
                        edge: "e9".into(),
                        seq: 2,
                        counters: vec![(signal::ONPREM.into(), "a/onprem".into(), name, 1)],
                    }],
                },
            ),
        );
        let srv = &s.onprem_servers["a|exch16.corp.local"];
        assert_eq!(
            (srv.first_detected_ms, srv.remediated_ms),
            (None, Some(t0 + 1000))
        );
        let baseline = moat_shared::exchange::Baseline(
            ["15.1.2507.66", "15.2.1748.42"]
                .iter()
                .filter_map(|b| moat_shared::exchange::Build::parse(b))
                .collect(),
        );
        let r = s.apply(
            5002,
            &p(
                t0 + 2000,
                Command::SetOnpremPolicy {
                    baseline: Some(baseline),
                    stages: None,
                    service: None,
                    all_connectors: None,
                },
            ),
        );
        assert!(r.result.is_ok(), "{r:?}");
        let srv = &s.onprem_servers["a|exch16.corp.local"];
        assert_eq!(srv.class, moat_shared::exchange::Class::Unpatched);
        assert_eq!(srv.first_detected_ms, Some(t0 + 2000));
    }

    #[test]
    fn the_cluster_clock_only_moves_forward() {
        let mut s = State::default();
        let day = moat_shared::onprem::DAY_MS;
        let ok = s.apply(
            1,
            &p(
                1000,
                Command::SetClock {
                    offset_ms: 30 * day,
                },
            ),
        );
        assert!(ok.result.is_ok());
        assert_eq!(s.now_ms, 1000 + 30 * day);
        // The next entry is stamped with the new offset; going back is refused.
        let back = s.apply(2, &p(2000 + 30 * day, Command::SetClock { offset_ms: 0 }));
        assert_eq!(
            back.result.unwrap_err(),
            "the cluster clock only moves forward"
        );
    }
}
