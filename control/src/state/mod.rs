//! The replicated state machine.
//!
//! Every control node applies the same committed [`Proposal`]s in the same order to a [`State`]
//! and so holds the same state. [`State::apply`] is deterministic: it reads time only from the
//! proposal (stamped by the leader that proposed it, and never allowed to go backwards) and
//! never touches the network, the disk or the local clock. Validation happens here, at apply,
//! so a proposal that became invalid between proposing and committing (another admin deleted
//! the tenant meanwhile) fails the same way on every node, with a typed [`Rejection`].
//!
//! This module holds the [`State`], made of one part per concern (the parts' fields together
//! are the snapshot's JSON form), and [`State::apply`]: retries applied once by request id, the
//! command dispatched to its concern, the policy version moved when what edges enforce changed,
//! and the change audited. A command that needs only its concern's part runs as a method of
//! that part; one that reaches across parts (deleting a tenant, counting signals, the
//! detectors, the on-premises cycle) is a method of [`State`] in its concern's module. The
//! concerns, one a module:
//! - [`command`]: the log's command format ([`Proposal`], [`Command`]) and its compatibility
//!   rules.
//! - [`error`]: [`Rejection`], why a command was refused.
//! - [`tenants`]: tenants, domains, connectors, users, transport config, seeds
//!   ([`tenants::Directory`]).
//! - [`tokens`]: admin tokens ([`tokens::Tokens`]).
//! - [`limits`]: sending limits and usage, the cluster-wide SMTP AUTH lockout, the speed bump,
//!   unblocking ([`limits::Limits`]).
//! - [`counters`]: edges' signal batches, counters ([`counters::Counters`]), the TLS usage
//!   report ([`counters::TlsReport`]).
//! - [`detection`]: connector traffic windows and the detectors ([`detection::judge`],
//!   [`detection::Detection`]).
//! - [`onprem`]: on-premises Exchange servers, stages and pauses ([`onprem::Onprem`]).
//! - [`reports`]: the inbound, SMTP AUTH clients and non-accepted domains reports
//!   ([`reports::Reports`]).
//! - [`alerts`]: alerts and deliveries ([`alerts::Alerts`]), contacts and transport
//!   ([`alerts::Routing`]).
//! - [`tickets`]: TLS session ticket keys, the current and the previous ([`tickets::Tickets`]).
//! - [`audit`]: the audit log ([`audit::Audit`]).
//! - [`requests`]: request ids of applied admin writes, for retries ([`requests::Requests`]).

use std::collections::BTreeMap;

use moat_shared::onprem::DAY_MS;
use moat_shared::TenantId;
use serde::{Deserialize, Serialize};

pub mod alerts;
pub mod audit;
pub mod command;
pub mod counters;
pub mod detection;
pub mod error;
pub mod limits;
pub mod onprem;
pub mod reports;
pub mod requests;
pub mod tenants;
pub mod tickets;
pub mod tokens;

#[cfg(test)]
mod compat;
#[cfg(test)]
mod testutil;

pub use alerts::{
    Alert, AlertContacts, AlertTransport, Delivery, DeliveryState, MAX_DELIVERY_ATTEMPTS,
};
pub use audit::AuditRecord;
pub use command::{Command, Proposal};
pub use counters::{Counter, SignalBatch, Tally};
pub use detection::{ConnectorStats, DetectionPolicy, WindowCounts};
pub use error::{Kind, Rejection, RejectionCode};
pub use limits::{LimitAction, OutboundPolicy, Usage};
pub use moat_shared::RestrictedEntity as Restricted;
pub use moat_shared::SubmissionUser as User;
pub use onprem::{OnpremServer, PauseRecord};
pub use tokens::{Role, TokenRecord};

/// The whole replicated state. Its JSON form is the raft snapshot.
///
/// The state is made of one part per concern, each defined in its module with the methods that
/// need only that part; [`State`]'s own methods are those that span parts. The parts are
/// flattened into one JSON object whose fields are those of the state before it had parts, in
/// the same order, so a snapshot written before reads and re-encodes byte for byte (tested).
/// That order is why the alerts are two parts ([`alerts::Alerts`] and [`alerts::Routing`]) and
/// the counters two ([`counters::Counters`] and [`counters::TlsReport`]), and why the fields
/// that belong to no one concern, or that flattening would not read back (`members`, keyed by
/// integers), stay at the top between them. Flattening rules out `deny_unknown_fields`; unknown
/// fields are ignored, as always.
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
    /// Tenants, connectors and users.
    #[serde(flatten)]
    pub directory: tenants::Directory,
    /// Admin tokens.
    #[serde(flatten)]
    pub tokens: tokens::Tokens,
    /// Restricted entities: users over a sending limit and connectors a detector restricted
    /// (written by limits and detection, cleared by unblocking and by deletes).
    pub restricted: Vec<Restricted>,
    /// The newest admin changes and system events.
    #[serde(flatten)]
    pub audit: audit::Audit,
    /// Edges' signal sequences and the counters they reported.
    #[serde(flatten)]
    pub counters: counters::Counters,
    /// Recently applied client request ids and the index they were applied at.
    pub requests: requests::Requests,
    /// Control-node addresses learned from membership changes, by raft id. Kept out of any
    /// part: a flattened map with integer keys does not read back from JSON.
    pub members: BTreeMap<u64, String>,
    /// Sending limits, usage and the speed bump.
    #[serde(flatten)]
    pub limits: limits::Limits,
    /// The TLS usage report.
    #[serde(flatten)]
    pub tls_report: counters::TlsReport,
    /// The newest alerts.
    #[serde(flatten)]
    pub alerts: alerts::Alerts,
    /// On-premises Exchange servers and their settings.
    #[serde(flatten)]
    pub onprem: onprem::Onprem,
    /// What the cluster clock is ahead of the wall clock (`moat dev` only).
    #[serde(default)]
    pub clock_offset_ms: i64,
    /// Where alerts go and how alert emails leave.
    #[serde(flatten)]
    pub alert_routing: alerts::Routing,
    /// Detection settings and connectors' traffic.
    #[serde(flatten)]
    pub detection: detection::Detection,
    /// The reports of log version 4; absent from snapshots while empty, so a state without
    /// them encodes as before.
    #[serde(default, skip_serializing_if = "reports::Reports::is_empty")]
    pub reports: reports::Reports,
    /// TLS session ticket keys (absent from the snapshot until the first rotation).
    #[serde(flatten)]
    pub tickets: tickets::Tickets,
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
    pub result: Result<String, Rejection>,
}

impl State {
    /// Applies the committed entry at `index`.
    pub fn apply(&mut self, index: u64, p: &Proposal) -> Outcome {
        self.applied = index;
        self.now_ms = self.now_ms.max(p.at_ms);
        let now = self.now_ms;
        self.requests.expire(now);
        if let Some(id) = &p.request_id {
            if let Some(first) = self.requests.applied_at(id) {
                return Outcome {
                    index: first,
                    result: Ok("already applied".into()),
                };
            }
        }
        let before = self.restricted.len();
        self.restricted.retain(|r| r.in_force(now));
        self.restricted_changed = self.restricted.len() != before;
        let result = self.run(index, p);
        self.settle_onprem(index);
        let onprem_changed = std::mem::take(&mut self.onprem_changed);
        if onprem_changed
            || matches!(
                p.command,
                Command::DeleteTenant { .. } | Command::SetOnpremPolicy { .. }
            )
        {
            self.directory.touch_onprem();
        }
        if std::mem::take(&mut self.restricted_changed)
            || onprem_changed
            || (result.is_ok() && policy_relevant(&p.command))
        {
            self.policy_version = index;
            self.policy_changed_ms = now;
        }
        if let Ok(action) = &result {
            if let Some(id) = &p.request_id {
                self.requests.insert(id.clone(), index, now);
            }
            if !matches!(
                p.command,
                Command::Signals { .. } | Command::AlertDelivery { .. } | Command::Tick
            ) {
                self.audit.change(AuditRecord {
                    index,
                    at_ms: now,
                    actor: p.actor.clone(),
                    action: action.clone(),
                    tenant: command_tenant(&p.command),
                });
            }
        }
        Outcome { index, result }
    }

    /// Runs a command: one method of its concern.
    fn run(&mut self, index: u64, p: &Proposal) -> Result<String, Rejection> {
        match &p.command {
            Command::PutTenant { tenant } => self.directory.put_tenant(tenant),
            Command::DeleteTenant { tenant } => self.delete_tenant(tenant),
            Command::AddDomain { tenant, domain } => self.directory.add_domain(tenant, domain),
            Command::RemoveDomain { tenant, domain } => {
                self.directory.remove_domain(tenant, domain)
            }
            Command::PutConnector { connector } => self.directory.put_connector(connector),
            Command::DeleteConnector { tenant, name } => self.delete_connector(tenant, name),
            Command::PutUser { user } => self.directory.put_user(user),
            Command::DeleteUser { tenant, address } => self.delete_user(tenant, address),
            Command::SetTransportConfig {
                tenant,
                allow_legacy_tls_clients,
            } => self
                .directory
                .set_transport_config(tenant, *allow_legacy_tls_clients),
            Command::CreateToken { token } => {
                self.tokens.create(token, &self.directory, self.now_ms)
            }
            Command::RevokeToken { id } => self.tokens.revoke(id),
            Command::ApplySeed { tenants } => self.directory.apply_seed(tenants),
            Command::ImportSeed {
                tenants,
                connectors,
                users,
            } => self.directory.import_seed(tenants, connectors, users),
            Command::SetSpeedBump { steps } => self.limits.set_speed_bump(steps),
            Command::SetOutboundPolicy { tenant, policy } => {
                self.limits
                    .set_outbound_policy(&self.directory, tenant, policy)
            }
            Command::SetAlertContacts { tenant, contacts } => {
                self.alert_routing
                    .set_contacts(&self.directory, tenant, contacts)
            }
            Command::SetAlertTransport { transport } => {
                Ok(self.alert_routing.set_transport(transport))
            }
            Command::AlertDelivery {
                alert,
                channel,
                target,
                error,
            } => self
                .alerts
                .delivery(self.now_ms, *alert, channel, target, error.as_ref()),
            Command::SetDetectionPolicy { tenant, policy } => {
                self.detection
                    .set_policy(&self.directory, tenant.as_ref(), policy)
            }
            Command::Unblock {
                tenant,
                kind,
                name,
                reason,
            } => self.unblock(tenant, *kind, name, reason),
            Command::SetOnpremPolicy {
                baseline,
                stages,
                service,
                all_connectors,
            } => self.set_onprem_policy(
                index,
                baseline.as_ref(),
                stages.as_ref(),
                service.as_ref(),
                *all_connectors,
            ),
            Command::PauseOnprem {
                tenant,
                days,
                reason,
            } => self.pause_onprem(&p.actor, tenant, *days, reason),
            Command::ExemptOnprem {
                tenant,
                server,
                reason,
            } => self.exempt_onprem(&p.actor, tenant, server, reason),
            Command::UnexemptOnprem { tenant, server } => self.unexempt_onprem(tenant, server),
            Command::SetClock { offset_ms } => self.set_clock(p.at_ms, *offset_ms),
            Command::RotateTicketKeys {
                name,
                key,
                rotate_every_ms,
                replaces,
                forced,
            } => self.tickets.rotate(
                &tickets::Rotation {
                    name,
                    key,
                    rotate_every_ms: *rotate_every_ms,
                    replaces: replaces.as_deref(),
                    forced: *forced,
                },
                self.now_ms,
            ),
            Command::AdoptStageDefaults => self.adopt_stage_defaults(),
            Command::Tick => Ok("tick".into()),
            Command::Signals { batches } => Ok(self.signals(index, batches)),
        }
    }

    /// Moves the cluster clock to `offset_ms` ahead of the wall clock (the entry's time less
    /// the offset it was stamped with); never backwards.
    fn set_clock(&mut self, at_ms: i64, offset_ms: i64) -> Result<String, Rejection> {
        let wall = at_ms - self.clock_offset_ms;
        let target = wall.saturating_add(offset_ms);
        if target < self.now_ms {
            return Err(Rejection::conflict(
                Kind::Clock,
                "the cluster clock only moves forward",
            ));
        }
        self.clock_offset_ms = offset_ms;
        self.now_ms = target;
        Ok(format!(
            "cluster clock set {:.2} days ahead of the wall clock",
            offset_ms as f64 / DAY_MS as f64
        ))
    }

    /// Records a system event (`action`) in the audit log and raises an alert on it, both at
    /// the cluster's time.
    fn system_alert(
        &mut self,
        index: u64,
        tenant: TenantId,
        action: String,
        severity: &str,
        title: &str,
        detail: String,
    ) {
        let now = self.now_ms;
        self.audit.system(index, now, tenant.clone(), action);
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
}

/// Whether a successful command changes what edges enforce (the policy version).
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
            | Command::ExemptOnprem { .. }
            | Command::UnexemptOnprem { .. }
            // A policy change only when it changes an enforced server's minutes, which it
            // marks itself (`onprem_changed`).
            | Command::AdoptStageDefaults
            | Command::Tick
    )
}

/// The tenant a command concerns, for the audit log.
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
        Command::PauseOnprem { tenant, .. }
        | Command::ExemptOnprem { tenant, .. }
        | Command::UnexemptOnprem { tenant, .. } => Some(tenant.clone()),
        Command::SetAlertTransport { .. }
        | Command::AlertDelivery { .. }
        | Command::SetOnpremPolicy { .. }
        | Command::SetClock { .. }
        | Command::RotateTicketKeys { .. }
        | Command::AdoptStageDefaults
        | Command::Tick => None,
        Command::RevokeToken { .. }
        | Command::ApplySeed { .. }
        | Command::ImportSeed { .. }
        | Command::SetSpeedBump { .. }
        | Command::Signals { .. } => None,
    }
}

#[cfg(test)]
mod tests {

    use crate::state::testutil::*;
    use crate::state::*;

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
            b.result.unwrap_err().to_string(),
            "domain `x.test` is already accepted by `a`"
        );
        assert_eq!(s.policy_version, 1);
        assert_eq!(s.audit.records.len(), 1);
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
        assert_eq!(s.audit.records.len(), 1);
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
            back.result.unwrap_err().to_string(),
            "the cluster clock only moves forward"
        );
    }

    #[test]
    fn a_snapshot_of_the_release_before_the_parts_re_encodes_byte_for_byte() {
        // The parts are flattened into the old field order: a node writes the same bytes as
        // the release that wrote this snapshot (`compat` checks the values).
        let old = include_bytes!("testdata/snapshot.json");
        let s: State = serde_json::from_slice(old).expect("decodes");
        let again = serde_json::to_vec(&s).expect("encodes");
        assert!(again == old[..], "re-encoding changed the snapshot's bytes");
    }
}
