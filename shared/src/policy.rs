//! Tenants, accepted domains and the policy snapshot.
//!
//! A [`PolicySnapshot`] is immutable once built: a change produces a new snapshot with a higher
//! version. Edges decide every verdict against one snapshot and record its version, so two edges
//! holding the same version take the same decision.

use serde::{Deserialize, Serialize};

use crate::submission::{speed_bump_percent, EntityKind, RestrictedEntity, SpeedBumpStep};
use crate::{Connector, Domain, FastMap, SubmissionUser, TenantId};

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

/// The complete, immutable policy an edge enforces, with the version it was published under.
#[derive(Clone, Debug, Default)]
pub struct PolicySnapshot {
    version: u64,
    tenants: Vec<Tenant>,
    connectors: Vec<Connector>,
    /// Connectors by IP network and certificate name.
    connector_index: crate::matching::ConnectorIndex,
    /// Each tenant's Partner connectors that scope sender domains, as positions.
    partner_scopes: Vec<Vec<u32>>,
    /// Accepted domain to index into `tenants`.
    by_domain: FastMap<Domain, usize>,
    /// Tenant id to index into `tenants`.
    by_id: FastMap<TenantId, usize>,
    /// SMTP AUTH users by address.
    users: FastMap<String, SubmissionUser>,
    /// Blocked connectors and users.
    /// Tenant → name → restrictions (at most one per kind): looked up without building a key.
    restricted: FastMap<TenantId, FastMap<String, Vec<RestrictedEntity>>>,
    /// The legacy-TLS speed bump schedule, by day.
    speed_bump: Vec<SpeedBumpStep>,
    /// Out-of-date Exchange servers being throttled or blocked, and the baseline.
    onprem: crate::onprem::Rules,
    /// What the cluster clock is ahead of the wall clock (only ever non-zero under `moat dev`).
    clock_offset_ms: i64,
}

impl PolicySnapshot {
    /// Builds a snapshot; fails if one domain is claimed by two tenants or a tenant id repeats.
    pub fn new(version: u64, tenants: Vec<Tenant>) -> Result<Self, SnapshotError> {
        let mut by_domain = FastMap::default();
        let mut ids = FastMap::default();
        for (i, tenant) in tenants.iter().enumerate() {
            if ids.insert(tenant.id.clone(), i).is_some() {
                return Err(SnapshotError::DuplicateTenant(tenant.id.clone()));
            }
            for domain in &tenant.accepted_domains {
                if let Some(prev) = by_domain.insert(domain.clone(), i) {
                    return Err(SnapshotError::DomainClaimedTwice {
                        domain: domain.clone(),
                        first: tenants[prev].id.clone(),
                        second: tenant.id.clone(),
                    });
                }
            }
        }
        Ok(Self {
            version,
            tenants,
            connectors: Vec::new(),
            connector_index: Default::default(),
            partner_scopes: Vec::new(),
            by_domain,
            by_id: ids,
            users: FastMap::default(),
            restricted: FastMap::default(),
            speed_bump: Vec::new(),
            onprem: Default::default(),
            clock_offset_ms: 0,
        })
    }

    /// Adds the on-premises Exchange rules and the cluster clock's offset.
    pub fn with_onprem(mut self, rules: crate::onprem::Rules, clock_offset_ms: i64) -> Self {
        self.onprem = rules;
        self.clock_offset_ms = clock_offset_ms;
        self
    }

    /// The on-premises Exchange rules.
    pub fn onprem(&self) -> &crate::onprem::Rules {
        &self.onprem
    }

    /// Now on the cluster clock: the wall clock plus the offset a `moat dev` cluster may set.
    /// Every time-dependent verdict uses it, so edges agree with the control plane.
    pub fn now_ms(&self) -> i64 {
        crate::time::now_ms().saturating_add(self.clock_offset_ms)
    }

    /// Adds the inbound connectors; fails if one names an unknown tenant or repeats a name
    /// within its tenant.
    pub fn with_connectors(mut self, connectors: Vec<Connector>) -> Result<Self, SnapshotError> {
        let mut seen = std::collections::HashSet::new();
        for c in &connectors {
            if !self.by_id.contains_key(&c.tenant) {
                return Err(SnapshotError::UnknownTenant(c.tenant.clone()));
            }
            if !seen.insert((&c.tenant, &c.name)) {
                return Err(SnapshotError::DuplicateConnector(c.id().to_string()));
            }
        }
        self.connector_index = crate::matching::ConnectorIndex::new(&connectors);
        // By tenant position, so an inbound verdict finds them from the recipient's domain
        // without another lookup.
        self.partner_scopes = vec![Vec::new(); self.tenants.len()];
        for (i, c) in connectors.iter().enumerate() {
            if c.enabled && c.kind == crate::ConnectorKind::Partner && !c.sender_domains.is_empty()
            {
                if let Some(&t) = self.by_id.get(&c.tenant) {
                    self.partner_scopes[t].push(i as u32);
                }
            }
        }
        self.connectors = connectors;
        Ok(self)
    }

    /// The enabled connectors whose `sender-ip-addresses` contain `ip`.
    pub fn connectors_by_ip(&self, ip: std::net::IpAddr) -> Vec<&Connector> {
        self.connector_index
            .by_ip(ip)
            .into_iter()
            .map(|i| &self.connectors[i as usize])
            .collect()
    }

    /// A tenant's enabled Partner connectors that scope sender domains, by tenant position.
    fn scopes_at(&self, tenant: usize) -> impl Iterator<Item = &Connector> + '_ {
        self.partner_scopes
            .get(tenant)
            .into_iter()
            .flatten()
            .map(|&i| &self.connectors[i as usize])
    }

    /// The tenant that accepts mail for `domain` and its Partner connectors that scope sender
    /// domains: what an inbound verdict needs, from one lookup.
    pub fn inbound(
        &self,
        domain: &str,
    ) -> Option<(&Tenant, impl Iterator<Item = &Connector> + '_)> {
        let &t = self.by_domain.get(Domain::lookup_key(domain).as_ref())?;
        Some((&self.tenants[t], self.scopes_at(t)))
    }

    /// The enabled connectors whose certificate name covers one of these (validated) names.
    pub fn connectors_by_certificate(&self, domains: &[String]) -> Vec<&Connector> {
        if domains.is_empty() {
            return Vec::new();
        }
        self.connector_index
            .by_certificate(domains)
            .into_iter()
            .map(|i| &self.connectors[i as usize])
            .collect()
    }

    /// Adds the client-submission policy: SMTP AUTH users (each of a known tenant), restricted
    /// entities and the speed bump schedule.
    pub fn with_submission(
        mut self,
        users: Vec<SubmissionUser>,
        restricted: Vec<RestrictedEntity>,
        speed_bump: Vec<SpeedBumpStep>,
    ) -> Result<Self, SnapshotError> {
        for u in users {
            if !self.by_id.contains_key(&u.tenant) {
                return Err(SnapshotError::UnknownTenant(u.tenant));
            }
            self.users.insert(u.address.clone(), u);
        }
        self.restricted.clear();
        for r in restricted {
            let same = self
                .restricted
                .entry(r.tenant.clone())
                .or_default()
                .entry(r.name.clone())
                .or_default();
            same.retain(|o| o.kind != r.kind);
            same.push(r);
        }
        self.speed_bump = crate::submission::normalise_schedule(speed_bump)
            .map_err(SnapshotError::BadSchedule)?;
        Ok(self)
    }

    /// The SMTP AUTH user with this login (case-insensitive).
    pub fn user(&self, address: &str) -> Option<&SubmissionUser> {
        self.users.get(&address.to_lowercase())
    }

    /// The restriction in force at `now_ms` on a tenant's connector or user, if any.
    pub fn restriction(
        &self,
        kind: EntityKind,
        tenant: &TenantId,
        name: &str,
        now_ms: i64,
    ) -> Option<&RestrictedEntity> {
        if self.restricted.is_empty() {
            return None;
        }
        self.restricted
            .get(tenant)?
            .get(name)?
            .iter()
            .find(|r| r.kind == kind && r.in_force(now_ms))
    }

    /// How many entities of a kind are restricted (in force or not).
    pub fn restricted_count(&self, kind: EntityKind) -> usize {
        self.restricted
            .values()
            .flat_map(|names| names.values())
            .flatten()
            .filter(|r| r.kind == kind)
            .count()
    }

    /// The speed bump schedule, by day.
    pub fn speed_bump(&self) -> &[SpeedBumpStep] {
        &self.speed_bump
    }

    /// The share (percent) of legacy-TLS sessions the speed bump refuses at `now_ms`.
    pub fn speed_bump_percent(&self, now_ms: i64) -> u8 {
        speed_bump_percent(&self.speed_bump, now_ms)
    }

    /// Every inbound connector.
    pub fn connectors(&self) -> &[Connector] {
        &self.connectors
    }

    /// The version this snapshot was published under; 0 means "no policy yet".
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Every tenant, in the order they were given.
    pub fn tenants(&self) -> &[Tenant] {
        &self.tenants
    }

    /// The tenant with this id.
    pub fn tenant(&self, id: &TenantId) -> Option<&Tenant> {
        self.by_id.get(id).map(|&i| &self.tenants[i])
    }

    /// The tenant that accepts mail for `domain`, if any. Exact match on the normalised name:
    /// a subdomain of an accepted domain is not accepted unless listed itself.
    pub fn tenant_for_domain(&self, domain: &str) -> Option<&Tenant> {
        self.by_domain
            .get(Domain::lookup_key(domain).as_ref())
            .map(|&i| &self.tenants[i])
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
