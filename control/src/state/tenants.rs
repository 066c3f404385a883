//! The directory: tenants, their accepted domains, inbound connectors, SMTP AUTH users and
//! transport config, and the seed that creates tenants at start. A domain belongs to one tenant
//! at most; deleting a tenant deletes everything it owns.

use std::collections::BTreeMap;

use moat_shared::{Connector, ConnectorId, Domain, EntityKind, Tenant, TenantId};
use serde::{Deserialize, Serialize};

use super::error::{Kind, Rejection};
use super::{State, User};

/// The directory part of the state: who the cluster serves and how they reach it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    /// Tenants by id.
    pub tenants: BTreeMap<TenantId, Tenant>,
    /// Connectors by id (`tenant/name` in the JSON form).
    pub connectors: BTreeMap<ConnectorId, Connector>,
    /// Users by address.
    pub users: BTreeMap<String, User>,
}

impl State {
    /// Deletes a tenant with everything it owns, in every part.
    pub(super) fn delete_tenant(&mut self, tenant: &TenantId) -> Result<String, Rejection> {
        let d = &mut self.directory;
        if d.tenants.remove(tenant).is_none() {
            return Err(Rejection::not_found(Kind::Tenant, tenant));
        }
        d.connectors.retain(|_, c| c.tenant != *tenant);
        d.users.retain(|_, u| u.tenant != *tenant);
        self.tokens
            .records
            .retain(|_, t| t.tenant.as_ref() != Some(tenant));
        self.restricted.retain(|r| r.tenant != *tenant);
        self.limits.outbound.remove(tenant);
        self.onprem.pauses.remove(tenant);
        self.onprem.servers.retain(|_, s| s.tenant != *tenant);
        let users = &self.directory.users;
        self.limits.usage.retain(|a, _| users.contains_key(a));
        Ok(format!("tenant {tenant} deleted"))
    }

    /// Deletes a connector with its restriction and its traffic stats.
    pub(super) fn delete_connector(
        &mut self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<String, Rejection> {
        let key = ConnectorId::new(tenant.clone(), name);
        if self.directory.connectors.remove(&key).is_none() {
            return Err(Rejection::not_found(Kind::Connector, key));
        }
        self.restricted.retain(|r| {
            !(r.kind == EntityKind::Connector && r.tenant == *tenant && r.name == name)
        });
        self.detection.stats.remove(&key);
        Ok(format!("connector {key} deleted"))
    }

    /// Deletes a user with its usage and restriction.
    pub(super) fn delete_user(
        &mut self,
        tenant: &TenantId,
        address: &str,
    ) -> Result<String, Rejection> {
        match self.directory.users.get(address) {
            Some(u) if u.tenant == *tenant => {
                self.directory.users.remove(address);
                self.limits.usage.remove(address);
                self.restricted
                    .retain(|r| !(r.kind == EntityKind::User && r.name == address));
                Ok(format!("user {address} deleted"))
            }
            _ => Err(Rejection::UserNotInTenant {
                address: address.to_owned(),
                tenant: tenant.clone(),
            }),
        }
    }
}

impl Directory {
    /// The tenant, or why not.
    pub(super) fn require(&self, id: &TenantId) -> Result<&Tenant, Rejection> {
        self.tenants
            .get(id)
            .ok_or_else(|| Rejection::not_found(Kind::Tenant, id))
    }

    /// The tenant, or why not.
    pub(super) fn tenant_mut(&mut self, id: &TenantId) -> Result<&mut Tenant, Rejection> {
        self.tenants
            .get_mut(id)
            .ok_or_else(|| Rejection::not_found(Kind::Tenant, id))
    }

    /// The tenant that accepts a domain.
    fn domain_owner(&self, domain: &Domain) -> Option<&TenantId> {
        self.tenants
            .values()
            .find(|t| t.accepted_domains.contains(domain))
            .map(|t| &t.id)
    }

    /// Refuses domains of `tenant` that another tenant accepts.
    fn check_domains_free(&self, tenant: &Tenant) -> Result<(), Rejection> {
        for d in &tenant.accepted_domains {
            if let Some(owner) = self.domain_owner(d) {
                if *owner != tenant.id {
                    return Err(Rejection::DomainTaken {
                        domain: d.clone(),
                        owner: owner.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Creates or replaces a tenant (its connectors and users stay).
    pub(super) fn put_tenant(&mut self, tenant: &Tenant) -> Result<String, Rejection> {
        self.check_domains_free(tenant)?;
        let mut tenant = tenant.clone();
        tenant.accepted_domains.sort();
        tenant.accepted_domains.dedup();
        let verb = match self.tenants.insert(tenant.id.clone(), tenant.clone()) {
            Some(_) => "updated",
            None => "created",
        };
        Ok(format!("tenant {} {verb}", tenant.id))
    }

    /// Adds an accepted domain no tenant accepts yet.
    pub(super) fn add_domain(
        &mut self,
        tenant: &TenantId,
        domain: &Domain,
    ) -> Result<String, Rejection> {
        if let Some(owner) = self.domain_owner(domain) {
            return Err(Rejection::DomainTaken {
                domain: domain.clone(),
                owner: owner.clone(),
            });
        }
        let t = self.tenant_mut(tenant)?;
        t.accepted_domains.push(domain.clone());
        t.accepted_domains.sort();
        Ok(format!("domain {domain} added to {tenant}"))
    }

    /// Removes an accepted domain.
    pub(super) fn remove_domain(
        &mut self,
        tenant: &TenantId,
        domain: &Domain,
    ) -> Result<String, Rejection> {
        let t = self.tenant_mut(tenant)?;
        let before = t.accepted_domains.len();
        t.accepted_domains.retain(|d| d != domain);
        if t.accepted_domains.len() == before {
            return Err(Rejection::DomainNotAccepted {
                domain: domain.clone(),
                tenant: tenant.clone(),
            });
        }
        Ok(format!("domain {domain} removed from {tenant}"))
    }

    /// Creates or replaces an inbound connector of an existing tenant.
    pub(super) fn put_connector(&mut self, connector: &Connector) -> Result<String, Rejection> {
        connector
            .validate()
            .map_err(|e| Rejection::invalid(Kind::Connector, e.to_string()))?;
        if !self.tenants.contains_key(&connector.tenant) {
            return Err(Rejection::not_found(Kind::Tenant, &connector.tenant));
        }
        let key = connector.id();
        let verb = match self.connectors.insert(key.clone(), connector.clone()) {
            Some(_) => "updated",
            None => "created",
        };
        Ok(format!("connector {key} {verb}"))
    }

    /// Creates or replaces a user; an address belongs to one tenant.
    pub(super) fn put_user(&mut self, user: &User) -> Result<String, Rejection> {
        if !self.tenants.contains_key(&user.tenant) {
            return Err(Rejection::not_found(Kind::Tenant, &user.tenant));
        }
        if let Some(existing) = self.users.get(&user.address) {
            if existing.tenant != user.tenant {
                return Err(Rejection::UserOfOtherTenant {
                    address: user.address.clone(),
                    owner: existing.tenant.clone(),
                });
            }
        }
        let verb = match self.users.insert(user.address.clone(), user.clone()) {
            Some(_) => "updated",
            None => "created",
        };
        Ok(format!("user {} {verb}", user.address))
    }

    /// Sets a tenant's transport config.
    pub(super) fn set_transport_config(
        &mut self,
        tenant: &TenantId,
        allow_legacy_tls_clients: bool,
    ) -> Result<String, Rejection> {
        let t = self.tenant_mut(tenant)?;
        t.allow_legacy_tls_clients = allow_legacy_tls_clients;
        Ok(format!(
            "transport config of {tenant}: allow-legacy-tls-clients = {allow_legacy_tls_clients}"
        ))
    }

    /// Creates or updates the tenants of a seed: names and domains are added, never removed.
    pub(super) fn apply_seed(&mut self, tenants: &[Tenant]) -> Result<String, Rejection> {
        for t in tenants {
            self.check_domains_free(t)?;
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
}
