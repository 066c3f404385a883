//! [`PolicyChange`]: what changed between two policy versions, and [`PolicySnapshot::apply`],
//! which derives the next snapshot from it at the cost of the change.
//!
//! A change carries values to set and keys to delete, never operations relative to the old
//! state ("add one domain"), so applying it twice, or to any snapshot between its base and its
//! version, gives the same snapshot. Deletions apply before upserts. Validation is what can be
//! checked at the cost of the change: a domain claimed by two tenants, a connector or user of a
//! tenant the result lacks, a tenant deleted while connectors or users still refer to it, a
//! speed bump schedule that names a day twice. On an error the snapshot applied to is left as it
//! was (the edge keeps enforcing it and asks for a full snapshot).

use std::collections::HashSet;
use std::sync::Arc;

use super::{kind_slot, PolicySnapshot, SnapshotError, Tenant, TenantEntry};
use crate::exchange::Baseline;
use crate::onprem::Enforced;
use crate::submission::{EntityKind, RestrictedEntity, SpeedBumpStep};
use crate::{Connector, ConnectorId, Domain, SubmissionUser, TenantId};

/// What changed between two policy versions, as values to set: applying it to any snapshot at a
/// version between the change's base and its `version` gives the same result (state-based,
/// idempotent).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyChange {
    /// The policy version the result is published under.
    pub version: u64,
    /// Start from an empty policy (a full snapshot, maybe in several parts).
    pub reset: bool,
    /// Tenants to create or replace: the whole tenant, its accepted domains included (domains it
    /// no longer lists stop being accepted). Keyed by id; an id appears at most once.
    pub tenants: Vec<Tenant>,
    /// Tenants to delete; each must have no connectors or users left in the result.
    pub deleted_tenants: Vec<TenantId>,
    /// Connectors to create or replace, keyed by (tenant, name) = [`Connector::id`]; the tenant
    /// must exist in the result; an id appears at most once.
    pub connectors: Vec<Connector>,
    /// Connectors to delete (an unknown id is no error).
    pub deleted_connectors: Vec<ConnectorId>,
    /// SMTP AUTH users to create or replace, keyed by lowercase address; the tenant must exist
    /// in the result.
    pub users: Vec<SubmissionUser>,
    /// SMTP AUTH users to delete, by address (case-insensitive).
    pub deleted_users: Vec<String>,
    /// Restrictions to set, keyed by (kind, tenant, name).
    pub restricted: Vec<RestrictedEntity>,
    /// Restrictions to lift, by (kind, tenant, name).
    pub unrestricted: Vec<(EntityKind, TenantId, String)>,
    /// On-premises servers under enforcement to set, keyed by (tenant, lowercase FQDN).
    pub enforced: Vec<((TenantId, String), Enforced)>,
    /// On-premises servers no longer under enforcement, by (tenant, FQDN).
    pub unenforced: Vec<(TenantId, String)>,
    /// The legacy-TLS speed bump schedule: replaces the schedule when `Some`.
    pub speed_bump: Option<Vec<SpeedBumpStep>>,
    /// The on-premises settings besides the enforced servers: replace the baseline, service
    /// name and scope when `Some`.
    pub onprem: Option<OnpremSettings>,
    /// What the cluster clock is ahead of the wall clock: replaces the offset when `Some`.
    pub clock_offset_ms: Option<i64>,
    /// The TLS session ticket keys: replace the keys when `Some`.
    pub ticket_keys: Option<crate::TicketKeys>,
}

/// The on-premises settings besides the enforced servers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OnpremSettings {
    /// The builds out-of-date servers are judged against.
    pub baseline: Baseline,
    /// The service name in `4.7.230` / `5.7.230` replies (empty: `Moat`).
    pub service: String,
    /// Whether mail through every connector is judged (by default only OnPremises
    /// connectors' mail is).
    pub all_connectors: bool,
}

impl PolicySnapshot {
    /// The snapshot at `change.version`: this one (or an empty one when `change.reset`) with
    /// the change applied, sharing every part the change leaves alone. Costs O(size of change ×
    /// log n); `self` is left as it was, whatever the outcome.
    pub fn apply(&self, change: &PolicyChange) -> Result<PolicySnapshot, SnapshotError> {
        let mut next = if change.reset {
            PolicySnapshot::default()
        } else {
            self.clone()
        };
        next.version = change.version;
        next.apply_mut(change)?;
        Ok(next)
    }

    /// Applies `change` in place (on a clone: an error leaves it half-applied).
    fn apply_mut(&mut self, change: &PolicyChange) -> Result<(), SnapshotError> {
        // Deletions first, those that refer to tenants before the tenants.
        for id in &change.deleted_connectors {
            if let Some(old) = self.connectors.get(id).cloned() {
                self.unlink_connector(&old);
                self.connectors.remove_mut(id);
            }
        }
        for address in &change.deleted_users {
            self.remove_user(&address.to_lowercase());
        }
        for (kind, tenant, name) in &change.unrestricted {
            self.lift(*kind, tenant, name);
        }
        for (tenant, server) in &change.unenforced {
            self.onprem
                .enforced
                .remove_mut(&(tenant.clone(), server.to_ascii_lowercase()));
        }
        for id in &change.deleted_tenants {
            self.delete_tenant(id)?;
        }
        self.upsert_tenants(&change.tenants)?;
        let mut seen = HashSet::new();
        for c in &change.connectors {
            if !seen.insert((&c.tenant, &c.name)) {
                return Err(SnapshotError::DuplicateConnector(c.id().to_string()));
            }
            self.upsert_connector(c)?;
        }
        for u in &change.users {
            self.upsert_user(u)?;
        }
        for r in &change.restricted {
            self.restrict(r);
        }
        for ((tenant, server), e) in &change.enforced {
            self.onprem
                .enforced
                .insert_mut((tenant.clone(), server.to_ascii_lowercase()), *e);
        }
        if let Some(steps) = &change.speed_bump {
            self.speed_bump = Arc::new(
                crate::submission::normalise_schedule(steps.clone())
                    .map_err(SnapshotError::BadSchedule)?,
            );
        }
        if let Some(o) = &change.onprem {
            self.onprem.baseline = o.baseline.clone();
            self.onprem.service = o.service.clone();
            self.onprem.all_connectors = o.all_connectors;
        }
        if let Some(offset) = change.clock_offset_ms {
            self.clock_offset_ms = offset;
        }
        if let Some(keys) = &change.ticket_keys {
            self.ticket_keys = Arc::new(keys.clone());
        }
        Ok(())
    }

    /// Deletes a tenant with its domains; fails while connectors or users refer to it.
    fn delete_tenant(&mut self, id: &TenantId) -> Result<(), SnapshotError> {
        let Some(entry) = self.tenants.get(id) else {
            return Ok(());
        };
        if entry.connectors > 0 || entry.users > 0 {
            return Err(SnapshotError::TenantInUse {
                tenant: id.clone(),
                connectors: entry.connectors,
                users: entry.users,
            });
        }
        let tenant = Arc::clone(&entry.tenant);
        for d in &tenant.accepted_domains {
            if self.by_domain.get(d).is_some_and(|t| t.id == *id) {
                self.by_domain.remove_mut(d);
            }
        }
        self.tenants.remove_mut(id);
        Ok(())
    }

    /// Creates or replaces tenants. Domains move in two passes (first every domain the
    /// upserted tenants no longer list is released, then the new ones are claimed), so one
    /// change may move a domain from one tenant to another in either order. Every domain of an
    /// upserted tenant is set again, to lead to its new version: O(its domains).
    fn upsert_tenants(&mut self, tenants: &[Tenant]) -> Result<(), SnapshotError> {
        let mut ids = HashSet::new();
        for t in tenants {
            if !ids.insert(&t.id) {
                return Err(SnapshotError::DuplicateTenant(t.id.clone()));
            }
        }
        // What each tenant held before, to claim only the domains it did not have.
        let mut kept: Vec<HashSet<&Domain>> = Vec::with_capacity(tenants.len());
        let olds: Vec<Option<Arc<Tenant>>> = tenants
            .iter()
            .map(|t| self.tenants.get(&t.id).map(|e| Arc::clone(&e.tenant)))
            .collect();
        for (t, old) in tenants.iter().zip(&olds) {
            let new: HashSet<&Domain> = t.accepted_domains.iter().collect();
            let mut held = HashSet::new();
            for d in old.iter().flat_map(|o| &o.accepted_domains) {
                if new.contains(d) {
                    held.insert(d);
                } else if self.by_domain.get(d).is_some_and(|h| h.id == t.id) {
                    self.by_domain.remove_mut(d);
                }
            }
            kept.push(held);
        }
        for (t, held) in tenants.iter().zip(&kept) {
            let tenant = Arc::new(t.clone());
            let mut claimed = HashSet::new();
            for d in &t.accepted_domains {
                if !claimed.insert(d) {
                    return Err(SnapshotError::DomainClaimedTwice {
                        domain: d.clone(),
                        first: t.id.clone(),
                        second: t.id.clone(),
                    });
                }
                if !held.contains(d) {
                    if let Some(first) = self.by_domain.get(d) {
                        return Err(SnapshotError::DomainClaimedTwice {
                            domain: d.clone(),
                            first: first.id.clone(),
                            second: t.id.clone(),
                        });
                    }
                }
                // A held domain too: it now leads to the tenant's new version.
                self.by_domain.insert_mut(d.clone(), Arc::clone(&tenant));
            }
            match self.tenants.get_mut(&t.id) {
                Some(entry) => entry.tenant = tenant,
                None => self.tenants.insert_mut(
                    t.id.clone(),
                    TenantEntry {
                        tenant,
                        connectors: 0,
                        users: 0,
                        scopes: Vec::new(),
                    },
                ),
            }
        }
        Ok(())
    }

    /// Removes a connector's traces besides its entry: its index keys, its place among its
    /// tenant's scopes, its count.
    fn unlink_connector(&mut self, old: &Connector) {
        self.connector_index.remove(old);
        if let Some(entry) = self.tenants.get_mut(&old.tenant) {
            entry.connectors = entry.connectors.saturating_sub(1);
            if old.scopes_senders() {
                entry
                    .scopes
                    .retain(|c| c.tenant != old.tenant || c.name != old.name);
            }
        }
    }

    /// Creates or replaces a connector of a tenant the snapshot has.
    fn upsert_connector(&mut self, c: &Connector) -> Result<(), SnapshotError> {
        if !self.tenants.contains_key(&c.tenant) {
            return Err(SnapshotError::UnknownTenant(c.tenant.clone()));
        }
        let id = c.id();
        if let Some(old) = self.connectors.get(&id).cloned() {
            self.unlink_connector(&old);
        }
        let c = Arc::new(c.clone());
        self.connector_index.insert(&c);
        if let Some(entry) = self.tenants.get_mut(&c.tenant) {
            entry.connectors += 1;
            if c.scopes_senders() {
                let at = entry
                    .scopes
                    .binary_search_by(|s| crate::matching::by_id(s, &c))
                    .unwrap_or_else(|at| at);
                entry.scopes.insert(at, Arc::clone(&c));
            }
        }
        self.connectors.insert_mut(id, c);
        Ok(())
    }

    /// Removes a user (by lowercase address) and its count.
    fn remove_user(&mut self, address: &str) {
        let Some(tenant) = self.users.get(address).map(|u| u.tenant.clone()) else {
            return;
        };
        self.users.remove_mut(address);
        if let Some(entry) = self.tenants.get_mut(&tenant) {
            entry.users = entry.users.saturating_sub(1);
        }
    }

    /// Creates or replaces a user of a tenant the snapshot has.
    fn upsert_user(&mut self, u: &SubmissionUser) -> Result<(), SnapshotError> {
        if !self.tenants.contains_key(&u.tenant) {
            return Err(SnapshotError::UnknownTenant(u.tenant.clone()));
        }
        let address = u.address.to_lowercase();
        self.remove_user(&address);
        if let Some(entry) = self.tenants.get_mut(&u.tenant) {
            entry.users += 1;
        }
        self.users.insert_mut(address, u.clone());
        Ok(())
    }

    /// Sets a restriction, replacing the one of the same kind on the same name.
    fn restrict(&mut self, r: &RestrictedEntity) {
        let mut names = self.restricted.get(&r.tenant).cloned().unwrap_or_default();
        let mut same = names.get(&r.name).cloned().unwrap_or_default();
        let before = same.len();
        same.retain(|o| o.kind != r.kind);
        if same.len() == before {
            self.restricted_counts[kind_slot(r.kind)] += 1;
        }
        same.push(r.clone());
        names.insert_mut(r.name.clone(), same);
        self.restricted.insert_mut(r.tenant.clone(), names);
    }

    /// Lifts a restriction, if there is one.
    fn lift(&mut self, kind: EntityKind, tenant: &TenantId, name: &str) {
        let Some(mut names) = self.restricted.get(tenant).cloned() else {
            return;
        };
        let Some(mut same) = names.get(name).cloned() else {
            return;
        };
        let before = same.len();
        same.retain(|o| o.kind != kind);
        if same.len() == before {
            return;
        }
        self.restricted_counts[kind_slot(kind)] -= 1;
        if same.is_empty() {
            names.remove_mut(name);
        } else {
            names.insert_mut(name.to_owned(), same);
        }
        if names.is_empty() {
            self.restricted.remove_mut(tenant);
        } else {
            self.restricted.insert_mut(tenant.clone(), names);
        }
    }
}

#[cfg(test)]
mod tests;
