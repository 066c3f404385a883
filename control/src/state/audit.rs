//! The audit log: the newest admin changes and system events, with who made them.

use moat_shared::TenantId;
use serde::{Deserialize, Serialize};

use super::State;

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

impl State {
    /// Records a system event (detection, limits, on-premises servers) at the entry's time.
    /// The log is trimmed to [`AUDIT_KEEP`] only when an admin change is recorded, as always.
    pub(super) fn audit_system(&mut self, index: u64, tenant: TenantId, action: String) {
        self.audit.push_back(AuditRecord {
            index,
            at_ms: self.now_ms,
            actor: "system".into(),
            action,
            tenant: Some(tenant),
        });
    }

    /// Records an admin change and trims the log to [`AUDIT_KEEP`].
    pub(super) fn audit_change(&mut self, record: AuditRecord) {
        self.audit.push_back(record);
        while self.audit.len() > AUDIT_KEEP {
            self.audit.pop_front();
        }
    }
}
