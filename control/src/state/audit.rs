//! The audit log: the newest admin changes and system events, with who made them.

use std::collections::VecDeque;

use moat_shared::TenantId;
use serde::{Deserialize, Serialize};

/// How many audit records are kept (older ones are dropped first, when an admin change is
/// applied).
pub(super) const AUDIT_KEEP: usize = 100_000;

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

/// The audit part of the state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    /// The newest admin changes and system events, oldest first.
    #[serde(rename = "audit")]
    pub records: VecDeque<AuditRecord>,
}

impl Audit {
    /// Records a system event (detection, limits, on-premises servers) at the entry's time
    /// `at_ms`. The log is trimmed to [`AUDIT_KEEP`] only when an admin change is recorded, as
    /// always.
    pub(super) fn system(&mut self, index: u64, at_ms: i64, tenant: TenantId, action: String) {
        self.records.push_back(AuditRecord {
            index,
            at_ms,
            actor: "system".into(),
            action,
            tenant: Some(tenant),
        });
    }

    /// Records an admin change and trims the log to [`AUDIT_KEEP`].
    pub(super) fn change(&mut self, record: AuditRecord) {
        self.records.push_back(record);
        while self.records.len() > AUDIT_KEEP {
            self.records.pop_front();
        }
    }
}
