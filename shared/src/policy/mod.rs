//! Tenants, accepted domains and the policy snapshot.
//!
//! A [`PolicySnapshot`] is immutable once built: a [`PolicyChange`] derives a new snapshot with a
//! higher version ([`PolicySnapshot::apply`]), and a full snapshot is a change that starts from
//! nothing (`reset`). Edges decide every verdict against one snapshot and record its version, so
//! two edges holding the same version take the same decision.
//!
//! Layout: this file holds the snapshot and its queries; `change.rs` the change type and how it is
//! applied.
//!
//! Every map of a snapshot is a [`crate::PersistentMap`]: a frozen hash table shared by the
//! snapshots derived from the one that built it, under a persistent overlay (`rpds`, chosen for
//! structural sharing: cloning is O(1), and each key a change sets or removes copies one path of
//! O(log n) nodes). So a change costs the edge work proportional to the change, not to the
//! estate, and the snapshot that sessions still hold stays valid and unchanged while the next
//! one is published beside it; lookups stay close to a plain hash table's, which the trie alone
//! does not (see [`crate::persistent`]). A snapshot built from nothing writes its tables in
//! place.

mod change;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use change::{OnpremSettings, PolicyChange};

use crate::matching::ConnectorIndex;
use crate::submission::{speed_bump_percent, EntityKind, RestrictedEntity, SpeedBumpStep};
use crate::{Connector, ConnectorId, Domain, PersistentMap, SubmissionUser, TenantId};

/// One tenant: an organisation whose mail Moat receives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Tenant {
    /// The tenant's identifier.
    pub id: TenantId,
    /// Human-readable name shown in tools.
    pub display_name: String,
    /// The domains this tenant receives mail for. A domain belongs to at most one tenant.
    pub accepted_domains: Vec<Domain>,
    /// Transport config: this tenant's users may submit over TLS 1.0/1.1 on a legacy listener.
    #[serde(default)]
    pub allow_legacy_tls_clients: bool,
}

/// A tenant as the snapshot holds it: the tenant, what refers to it (so a change can tell
/// whether it may be deleted), and its Partner connectors that scope sender domains.
#[derive(Clone, Debug)]
struct TenantEntry {
    tenant: Arc<Tenant>,
    /// How many connectors of the tenant the snapshot has.
    connectors: usize,
    /// How many SMTP AUTH users of the tenant the snapshot has.
    users: usize,
    /// Its enabled Partner connectors that scope sender domains, ordered by id: what an
    /// inbound verdict needs besides the tenant.
    scopes: Vec<Arc<Connector>>,
}

/// The restrictions on one tenant's connector or user: at most one per kind.
type Restrictions = Vec<RestrictedEntity>;

/// The complete, immutable policy an edge enforces, with the version it was published under.
#[derive(Clone, Debug, Default)]
pub struct PolicySnapshot {
    version: u64,
    /// Tenants by id.
    tenants: PersistentMap<TenantId, TenantEntry>,
    /// Accepted domain to the tenant that accepts it (the tenant itself, so that the relay
    /// rules' walks up a name cost one lookup per name).
    by_domain: PersistentMap<Domain, Arc<Tenant>>,
    /// Every inbound connector, by id.
    connectors: PersistentMap<ConnectorId, Arc<Connector>>,
    /// The enabled connectors by IP network and certificate name.
    connector_index: ConnectorIndex,
    /// SMTP AUTH users by (lowercase) address.
    users: PersistentMap<String, SubmissionUser>,
    /// Blocked connectors and users: tenant → name → restrictions, looked up without building
    /// a key.
    restricted: PersistentMap<TenantId, PersistentMap<String, Restrictions>>,
    /// How many restrictions of each kind (connector, user) `restricted` holds.
    restricted_counts: [usize; 2],
    /// The legacy-TLS speed bump schedule, by day.
    speed_bump: Arc<Vec<SpeedBumpStep>>,
    /// Out-of-date Exchange servers being throttled or blocked, and the baseline.
    onprem: crate::onprem::Rules,
    /// What the cluster clock is ahead of the wall clock (only ever non-zero under `moat dev`).
    clock_offset_ms: i64,
    /// The TLS session ticket keys (one `Arc`, so a listener's ticketer sees at a pointer
    /// comparison whether they changed).
    ticket_keys: Arc<crate::TicketKeys>,
}

/// The slot of a kind in [`PolicySnapshot::restricted_counts`].
fn kind_slot(kind: EntityKind) -> usize {
    match kind {
        EntityKind::Connector => 0,
        EntityKind::User => 1,
    }
}

impl PolicySnapshot {
    /// A snapshot of just these tenants (a convenience over [`PolicySnapshot::from_change`]);
    /// fails if one domain is claimed by two tenants or a tenant id repeats.
    pub fn new(version: u64, tenants: Vec<Tenant>) -> Result<Self, SnapshotError> {
        Self::from_change(&PolicyChange {
            version,
            reset: true,
            tenants,
            ..Default::default()
        })
    }

    /// The snapshot a change describes on its own, starting from an empty policy (what a full
    /// snapshot from the control plane becomes).
    pub fn from_change(change: &PolicyChange) -> Result<Self, SnapshotError> {
        Self::default().apply(change)
    }

    /// The on-premises Exchange rules.
    pub fn onprem(&self) -> &crate::onprem::Rules {
        &self.onprem
    }

    /// What the cluster clock is ahead of the wall clock, in milliseconds.
    pub fn clock_offset_ms(&self) -> i64 {
        self.clock_offset_ms
    }

    /// The TLS session ticket keys edges seal and open tickets with.
    pub fn ticket_keys(&self) -> &Arc<crate::TicketKeys> {
        &self.ticket_keys
    }

    /// Now on the cluster clock: the wall clock plus the offset a `moat dev` cluster may set.
    /// Every time-dependent verdict uses it, so edges agree with the control plane.
    pub fn now_ms(&self) -> i64 {
        crate::time::now_ms().saturating_add(self.clock_offset_ms)
    }

    /// The enabled connectors whose `sender-ip-addresses` contain `ip`, ordered by id.
    pub fn connectors_by_ip(&self, ip: std::net::IpAddr) -> Vec<&Connector> {
        self.connector_index.by_ip(ip)
    }

    /// The tenant that accepts mail for `domain` and its Partner connectors that scope sender
    /// domains (ordered by id): what an inbound verdict needs.
    pub fn inbound(
        &self,
        domain: &str,
    ) -> Option<(&Tenant, impl Iterator<Item = &Connector> + '_)> {
        let tenant = self.by_domain.get(Domain::lookup_key(domain).as_ref())?;
        let entry = self.tenants.get(&tenant.id)?;
        Some((&*entry.tenant, entry.scopes.iter().map(|c| &**c)))
    }

    /// The enabled connectors whose certificate name covers one of these (validated) names,
    /// ordered by id.
    pub fn connectors_by_certificate(&self, domains: &[String]) -> Vec<&Connector> {
        if domains.is_empty() {
            return Vec::new();
        }
        self.connector_index.by_certificate(domains)
    }

    /// The SMTP AUTH user with this login (case-insensitive).
    pub fn user(&self, address: &str) -> Option<&SubmissionUser> {
        self.users.get(&address.to_lowercase())
    }

    /// Every SMTP AUTH user, in no particular order.
    pub fn users(&self) -> impl Iterator<Item = &SubmissionUser> + '_ {
        self.users.values()
    }

    /// How many SMTP AUTH users the snapshot has.
    pub fn user_count(&self) -> usize {
        self.users.size()
    }

    /// The restriction in force at `now_ms` on a tenant's connector or user, if any.
    pub fn restriction(
        &self,
        kind: EntityKind,
        tenant: &TenantId,
        name: &str,
        now_ms: i64,
    ) -> Option<&RestrictedEntity> {
        if self.restricted_counts[kind_slot(kind)] == 0 {
            return None;
        }
        self.restricted
            .get(tenant)?
            .get(name)?
            .iter()
            .find(|r| r.kind == kind && r.in_force(now_ms))
    }

    /// Every restriction (in force or not), in no particular order.
    pub fn restrictions(&self) -> impl Iterator<Item = &RestrictedEntity> + '_ {
        self.restricted
            .values()
            .flat_map(|names| names.values())
            .flatten()
    }

    /// How many entities of a kind are restricted (in force or not).
    pub fn restricted_count(&self, kind: EntityKind) -> usize {
        self.restricted_counts[kind_slot(kind)]
    }

    /// The speed bump schedule, by day.
    pub fn speed_bump(&self) -> &[SpeedBumpStep] {
        &self.speed_bump
    }

    /// The share (percent) of legacy-TLS sessions the speed bump refuses at `now_ms`.
    pub fn speed_bump_percent(&self, now_ms: i64) -> u8 {
        speed_bump_percent(&self.speed_bump, now_ms)
    }

    /// Every inbound connector, in no particular order.
    pub fn connectors(&self) -> impl Iterator<Item = &Connector> + '_ {
        self.connectors.values().map(|c| &**c)
    }

    /// How many inbound connectors the snapshot has.
    pub fn connector_count(&self) -> usize {
        self.connectors.size()
    }

    /// The connector with this id.
    pub fn connector(&self, id: &ConnectorId) -> Option<&Connector> {
        self.connectors.get(id).map(|c| &**c)
    }

    /// The version this snapshot was published under; 0 means "no policy yet".
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Every tenant, in no particular order.
    pub fn tenants(&self) -> impl Iterator<Item = &Tenant> + '_ {
        self.tenants.values().map(|e| &*e.tenant)
    }

    /// How many tenants the snapshot has.
    pub fn tenant_count(&self) -> usize {
        self.tenants.size()
    }

    /// The tenant with this id.
    pub fn tenant(&self, id: &TenantId) -> Option<&Tenant> {
        self.tenants.get(id).map(|e| &*e.tenant)
    }

    /// The tenant that accepts mail for `domain`, if any. Exact match on the normalised name:
    /// a subdomain of an accepted domain is not accepted unless listed itself.
    pub fn tenant_for_domain(&self, domain: &str) -> Option<&Tenant> {
        self.by_domain
            .get(Domain::lookup_key(domain).as_ref())
            .map(|t| &**t)
    }
}

/// Why a set of tenants cannot form a snapshot.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    /// An object names a tenant the snapshot does not have.
    #[error("tenant `{0}` does not exist")]
    UnknownTenant(TenantId),
    /// Two connectors of one tenant share a name.
    #[error("connector `{0}` is defined twice")]
    DuplicateConnector(String),
    /// The speed bump schedule names one day twice.
    #[error("speed bump schedule: {0}")]
    BadSchedule(String),
    /// Two tenants share one id.
    #[error("tenant `{0}` is defined twice")]
    DuplicateTenant(TenantId),
    /// A change deletes a tenant that still has connectors or users.
    #[error("tenant `{tenant}` still has {connectors} connector(s) and {users} user(s)")]
    TenantInUse {
        /// The tenant.
        tenant: TenantId,
        /// Its connectors left.
        connectors: usize,
        /// Its users left.
        users: usize,
    },
    /// Two tenants claim one accepted domain.
    #[error("domain `{domain}` is accepted by both `{first}` and `{second}`")]
    DomainClaimedTwice {
        /// The contested domain.
        domain: Domain,
        /// The tenant that claimed it first.
        first: TenantId,
        /// The tenant that claimed it again.
        second: TenantId,
    },
}

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

    #[test]
    fn domains_are_normalised_and_validated() {
        assert_eq!(
            Domain::new("Example.TEST.").unwrap().as_str(),
            "example.test"
        );
        assert_eq!(
            Domain::new("bücher.example").unwrap().as_str(),
            "bücher.example"
        );
        for bad in [
            "",
            ".",
            "a..b",
            "-a.b",
            "a-.b",
            "a b",
            "a_b.c",
            &"x".repeat(64),
        ] {
            assert!(Domain::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn lookup_is_exact_and_case_insensitive() {
        let snap = PolicySnapshot::new(3, vec![tenant("t1", &["example.test"])]).unwrap();
        assert_eq!(snap.version(), 3);
        assert_eq!(
            snap.tenant_for_domain("EXAMPLE.test").unwrap().id.as_str(),
            "t1"
        );
        assert!(snap.tenant_for_domain("sub.example.test").is_none());
        assert!(snap.tenant_for_domain("not a domain").is_none());
    }

    #[test]
    fn a_domain_belongs_to_one_tenant() {
        let err = PolicySnapshot::new(1, vec![tenant("a", &["x.test"]), tenant("b", &["X.test"])])
            .unwrap_err();
        assert!(matches!(err, SnapshotError::DomainClaimedTwice { .. }));
        let err = PolicySnapshot::new(1, vec![tenant("a", &[]), tenant("a", &[])]).unwrap_err();
        assert!(matches!(err, SnapshotError::DuplicateTenant(_)));
    }
}
