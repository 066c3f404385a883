//! The directory: tenants, their accepted domains, inbound connectors, SMTP AUTH users and
//! transport config, and the seed that creates tenants at start. A domain belongs to one tenant
//! at most; deleting a tenant deletes everything it owns.
//!
//! Three things ride along that are never replicated, rebuilt when the state is read:
//! - an index of accepted domains to their tenant, so that checking a domain is a lookup and
//!   not a scan of every tenant;
//! - the edges' [`ConnectorIndex`] over the enabled connectors (by network and certificate
//!   name), sharing each connector with the map through an `Arc`, so that `moat admin explain`
//!   finds the connectors a client matches with lookups, as an edge does;
//! - the keys that changed since the policy was last published ([`Touched`]), from which the
//!   publisher builds the change edges receive.
//!
//! Connectors are changed only through this file, which keeps the map and the index in step.
//! A tenant's connectors are one run of the map (ids order as the text `tenant/name`), so
//! deleting a tenant costs its own connectors, not the estate's.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use moat_shared::matching::ConnectorIndex;
use moat_shared::{Connector, ConnectorId, Domain, EntityKind, Tenant, TenantId};
use serde::{Deserialize, Serialize, Serializer};

use super::error::{Kind, Rejection};
use super::{State, User};

/// The directory part of the state: who the cluster serves and how they reach it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(from = "Stored")]
pub struct Directory {
    /// Tenants by id.
    pub tenants: BTreeMap<TenantId, Tenant>,
    /// Connectors by id (`tenant/name` in the JSON form); each shared with `matching`.
    #[serde(serialize_with = "connectors_as_values")]
    connectors: BTreeMap<ConnectorId, Arc<Connector>>,
    /// Users by address.
    pub users: BTreeMap<String, User>,
    /// Accepted domain to the tenant that accepts it (derived from `tenants`).
    #[serde(skip_serializing)]
    domains: BTreeMap<Domain, TenantId>,
    /// The enabled connectors by network and certificate name (derived from `connectors`).
    #[serde(skip_serializing)]
    matching: ConnectorIndex,
    /// Keys changed since the publisher last took them.
    #[serde(skip_serializing)]
    touched: Touched,
}

/// Equal when the replicated parts are: the index follows from them and what was touched
/// is the publisher's business.
impl PartialEq for Directory {
    fn eq(&self, other: &Self) -> bool {
        self.tenants == other.tenants
            && self.connectors == other.connectors
            && self.users == other.users
    }
}

impl Eq for Directory {}

/// The directory as the snapshot stores it: the derived parts are rebuilt on reading.
#[derive(Deserialize)]
struct Stored {
    tenants: BTreeMap<TenantId, Tenant>,
    connectors: BTreeMap<ConnectorId, Connector>,
    users: BTreeMap<String, User>,
}

impl From<Stored> for Directory {
    fn from(s: Stored) -> Self {
        let domains = s
            .tenants
            .values()
            .flat_map(|t| t.accepted_domains.iter().map(|d| (d.clone(), t.id.clone())))
            .collect();
        let connectors: BTreeMap<ConnectorId, Arc<Connector>> = s
            .connectors
            .into_iter()
            .map(|(id, c)| (id, Arc::new(c)))
            .collect();
        let mut matching = ConnectorIndex::default();
        for c in connectors.values() {
            matching.insert(c);
        }
        Directory {
            tenants: s.tenants,
            connectors,
            users: s.users,
            domains,
            matching,
            touched: Touched::default(),
        }
    }
}

/// Writes the connectors as the map of values the snapshot always held (the `Arc` is how
/// they are shared in memory, not part of the format).
fn connectors_as_values<S: Serializer>(
    map: &BTreeMap<ConnectorId, Arc<Connector>>,
    out: S,
) -> Result<S::Ok, S::Error> {
    out.collect_map(map.iter().map(|(id, c)| (id, &**c)))
}

/// Tenants, connectors and users changed (created, replaced or deleted) since the publisher
/// last took the set. Recording a key that did not change costs a redundant upsert, never a
/// wrong policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// Tenant ids.
    pub tenants: BTreeSet<TenantId>,
    /// Connector ids.
    pub connectors: BTreeSet<ConnectorId>,
    /// User addresses.
    pub users: BTreeSet<String>,
    /// Which on-premises servers edges throttle or block may have changed.
    pub onprem: bool,
}

impl Touched {
    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
            && self.connectors.is_empty()
            && self.users.is_empty()
            && !self.onprem
    }
}

impl State {
    /// Deletes a tenant with everything it owns, in every part.
    pub(super) fn delete_tenant(&mut self, tenant: &TenantId) -> Result<String, Rejection> {
        let d = &mut self.directory;
        let Some(gone) = d.tenants.remove(tenant) else {
            return Err(Rejection::not_found(Kind::Tenant, tenant));
        };
        for domain in &gone.accepted_domains {
            d.domains.remove(domain);
        }
        d.touched.tenants.insert(tenant.clone());
        let owned: Vec<ConnectorId> = d.connectors_of(tenant).map(Connector::id).collect();
        for id in owned {
            d.remove_connector(&id);
            d.touched.connectors.insert(id);
        }
        let touched = &mut d.touched;
        d.users.retain(|address, u| {
            let keep = u.tenant != *tenant;
            if !keep {
                touched.users.insert(address.clone());
            }
            keep
        });
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
        if self.directory.remove_connector(&key).is_none() {
            return Err(Rejection::not_found(Kind::Connector, key));
        }
        self.directory.touched.connectors.insert(key.clone());
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
                self.directory.touched.users.insert(address.to_owned());
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
    /// Every connector, by id (`tenant/name` order).
    pub fn connectors(&self) -> &BTreeMap<ConnectorId, Arc<Connector>> {
        &self.connectors
    }

    /// The connector with this id.
    pub fn connector(&self, id: &ConnectorId) -> Option<&Connector> {
        self.connectors.get(id).map(|c| &**c)
    }

    /// The connectors of `tenant`, in name order: one run of the map, found in O(log n).
    pub fn connectors_of<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> impl Iterator<Item = &'a Connector> {
        self.connectors
            .range(ConnectorId::new(tenant.clone(), "")..)
            .take_while(move |(id, _)| id.tenant == *tenant)
            .map(|(_, c)| &**c)
    }

    /// The enabled connectors by network and certificate name, as an edge indexes them.
    pub fn matching(&self) -> &ConnectorIndex {
        &self.matching
    }

    /// Sets a connector (replacing its namesake), keeping the index in step; the one replaced.
    fn insert_connector(&mut self, c: Connector) -> Option<Arc<Connector>> {
        let c = Arc::new(c);
        let old = self.connectors.insert(c.id(), Arc::clone(&c));
        if let Some(old) = &old {
            self.matching.remove(old);
        }
        self.matching.insert(&c);
        old
    }

    /// Sets a connector without the checks of a command (tests of readers elsewhere).
    #[cfg(test)]
    pub(crate) fn insert_connector_unchecked(&mut self, c: Connector) {
        self.insert_connector(c);
    }

    /// Removes a connector and its index entries; the one removed.
    fn remove_connector(&mut self, id: &ConnectorId) -> Option<Arc<Connector>> {
        let old = self.connectors.remove(id)?;
        self.matching.remove(&old);
        Some(old)
    }

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
    pub(super) fn domain_owner(&self, domain: &Domain) -> Option<&TenantId> {
        self.domains.get(domain)
    }

    /// The tenant that accepts `name` (already in lookup form: lowercase, no trailing dot).
    pub fn tenant_accepting(&self, name: &str) -> Option<&TenantId> {
        self.domains.get(name)
    }

    /// Records that the enforced on-premises servers may have changed.
    pub(super) fn touch_onprem(&mut self) {
        self.touched.onprem = true;
    }

    /// Takes the keys changed since the last call.
    pub fn take_touched(&mut self) -> Touched {
        std::mem::take(&mut self.touched)
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
        for d in &tenant.accepted_domains {
            self.domains.insert(d.clone(), tenant.id.clone());
        }
        self.touched.tenants.insert(tenant.id.clone());
        let verb = match self.tenants.insert(tenant.id.clone(), tenant.clone()) {
            Some(old) => {
                for d in &old.accepted_domains {
                    if !tenant.accepted_domains.contains(d) {
                        self.domains.remove(d);
                    }
                }
                "updated"
            }
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
        self.domains.insert(domain.clone(), tenant.clone());
        self.touched.tenants.insert(tenant.clone());
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
        self.domains.remove(domain);
        self.touched.tenants.insert(tenant.clone());
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
        self.touched.connectors.insert(key.clone());
        let verb = match self.insert_connector(connector.clone()) {
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
        self.touched.users.insert(user.address.clone());
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
        self.touched.tenants.insert(tenant.clone());
        Ok(format!(
            "transport config of {tenant}: allow-legacy-tls-clients = {allow_legacy_tls_clients}"
        ))
    }

    /// Creates or updates the tenants of a seed: names and domains are added, never removed.
    pub(super) fn apply_seed(&mut self, tenants: &[Tenant]) -> Result<String, Rejection> {
        let mut claimed: BTreeMap<&Domain, &TenantId> = BTreeMap::new();
        for t in tenants {
            self.check_domains_free(t)?;
            for d in &t.accepted_domains {
                if let Some(first) = claimed.insert(d, &t.id).filter(|first| **first != t.id) {
                    return Err(Rejection::DomainTaken {
                        domain: d.clone(),
                        owner: first.clone(),
                    });
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
                    self.domains.insert(d.clone(), t.id.clone());
                }
            }
            entry.accepted_domains.sort();
            if *entry != before {
                changed += 1;
                self.touched.tenants.insert(t.id.clone());
            }
        }
        Ok(format!(
            "seed applied: {} tenant(s), {changed} changed",
            tenants.len()
        ))
    }

    /// Applies a seed with connectors and users, whole or not at all: everything is checked
    /// before anything changes (domains free, connectors valid and of a tenant of the seed or
    /// the directory, no address a user of another tenant), then the tenants merge as
    /// [`Self::apply_seed`] merges them and each connector and user replaces its namesake.
    pub(super) fn import_seed(
        &mut self,
        tenants: &[Tenant],
        connectors: &[Connector],
        users: &[User],
    ) -> Result<String, Rejection> {
        for t in tenants {
            self.check_domains_free(t)?;
        }
        let in_seed: BTreeSet<&TenantId> = tenants.iter().map(|t| &t.id).collect();
        let known = |id: &TenantId| in_seed.contains(id) || self.tenants.contains_key(id);
        for c in connectors {
            c.validate()
                .map_err(|e| Rejection::invalid(Kind::Connector, e.to_string()))?;
            if !known(&c.tenant) {
                return Err(Rejection::not_found(Kind::Tenant, &c.tenant));
            }
        }
        let mut owners: BTreeMap<&str, &TenantId> = BTreeMap::new();
        for u in users {
            if !known(&u.tenant) {
                return Err(Rejection::not_found(Kind::Tenant, &u.tenant));
            }
            let owner = self
                .users
                .get(&u.address)
                .map(|e| &e.tenant)
                .or_else(|| owners.get(u.address.as_str()).copied());
            if let Some(owner) = owner.filter(|o| **o != u.tenant) {
                return Err(Rejection::UserOfOtherTenant {
                    address: u.address.clone(),
                    owner: owner.clone(),
                });
            }
            owners.insert(&u.address, &u.tenant);
        }
        let summary = self.apply_seed(tenants)?;
        let mut changed = (0, 0);
        for c in connectors {
            if self.insert_connector(c.clone()).as_deref() != Some(c) {
                changed.0 += 1;
                self.touched.connectors.insert(c.id());
            }
        }
        for u in users {
            if self.users.insert(u.address.clone(), u.clone()).as_ref() != Some(u) {
                changed.1 += 1;
                self.touched.users.insert(u.address.clone());
            }
        }
        Ok(format!(
            "{summary}; {} connector(s), {} changed; {} user(s), {} changed",
            connectors.len(),
            changed.0,
            users.len(),
            changed.1
        ))
    }
}

#[cfg(test)]
mod tests {
    use moat_shared::{Connector, ConnectorKind, Tenant, TenantId};

    use crate::state::testutil::*;
    use crate::state::*;

    fn tid(id: &str) -> TenantId {
        TenantId::new(id).expect("valid tenant id")
    }

    fn connector(t: &str, name: &str, ip: &str) -> Connector {
        Connector {
            tenant: tid(t),
            name: name.into(),
            kind: ConnectorKind::OnPremises,
            enabled: true,
            sender_ip_addresses: vec![Connector::parse_ip(ip).expect("valid ip")],
            tls_sender_certificate_name: None,
            sender_domains: vec![],
            require_tls: false,
            restrict_domains_to_ip_addresses: false,
            restrict_domains_to_certificate: false,
        }
    }

    fn user(t: &str, address: &str, hash: &str) -> User {
        User {
            tenant: tid(t),
            address: address.into(),
            password_hash: hash.into(),
            send_as: vec![],
        }
    }

    fn import(tenants: Vec<Tenant>, connectors: Vec<Connector>, users: Vec<User>) -> Command {
        Command::ImportSeed {
            tenants,
            connectors,
            users,
        }
    }

    #[test]
    fn an_imported_seed_lands_whole_and_reapplies_harmlessly() {
        let mut s = State::default();
        let seed = || {
            import(
                vec![tenant("a", &["a.test"])],
                vec![connector("a", "hq", "192.0.2.0/24")],
                vec![user("a", "u@a.test", "h1")],
            )
        };
        let first = s.apply(1, &p(1, seed()));
        assert!(first.result.is_ok(), "{first:?}");
        assert_eq!(
            s.policy_version, 1,
            "edges must get the connectors and users"
        );
        assert!(s.directory.tenants.contains_key(&tid("a")));
        assert_eq!(s.directory.connectors.len(), 1);
        assert_eq!(s.directory.users["u@a.test"].password_hash, "h1");
        let before = s.directory.clone();
        let again = s.apply(2, &p(2, seed())).result.expect("re-applied");
        assert!(
            again.ends_with("1 connector(s), 0 changed; 1 user(s), 0 changed"),
            "{again}"
        );
        assert_eq!(s.directory, before);
        // A seed replaces the object of the same name in the tenant.
        let mut moved = connector("a", "hq", "198.51.100.0/24");
        moved.enabled = false;
        s.apply(
            3,
            &p(
                3,
                import(
                    vec![tenant("a", &["a.test"])],
                    vec![moved.clone()],
                    vec![user("a", "u@a.test", "h2")],
                ),
            ),
        )
        .result
        .expect("replaced");
        assert_eq!(*s.directory.connectors[&moved.id()], moved);
        assert_eq!(s.directory.users["u@a.test"].password_hash, "h2");
    }

    #[test]
    fn a_user_of_another_tenant_refuses_the_whole_entry() {
        let mut s = State::default();
        s.apply(
            1,
            &p(
                1,
                import(
                    vec![tenant("a", &["a.test"])],
                    vec![],
                    vec![user("a", "u@a.test", "h")],
                ),
            ),
        )
        .result
        .expect("first seed");
        let refused = s.apply(
            2,
            &p(
                2,
                import(
                    vec![tenant("b", &["b.test"])],
                    vec![connector("b", "hq", "192.0.2.1")],
                    vec![user("b", "new@b.test", "h"), user("b", "u@a.test", "h")],
                ),
            ),
        );
        assert!(
            matches!(
                &refused.result,
                Err(Rejection::UserOfOtherTenant { address, owner })
                    if address == "u@a.test" && *owner == tid("a")
            ),
            "{refused:?}"
        );
        assert_eq!(s.policy_version, 1);
        assert!(!s.directory.tenants.contains_key(&tid("b")));
        assert!(s.directory.connectors.is_empty());
        assert!(!s.directory.users.contains_key("new@b.test"));
        assert_eq!(s.directory.users["u@a.test"].tenant, tid("a"));
        // Two tenants of one seed cannot share an address either.
        let refused = s.apply(
            3,
            &p(
                3,
                import(
                    vec![tenant("b", &[]), tenant("c", &[])],
                    vec![],
                    vec![user("b", "x@b.test", "h"), user("c", "x@b.test", "h")],
                ),
            ),
        );
        assert!(matches!(
            refused.result,
            Err(Rejection::UserOfOtherTenant { .. })
        ));
        assert!(!s.directory.tenants.contains_key(&tid("b")));
    }

    #[test]
    fn an_invalid_connector_refuses_the_whole_entry() {
        let mut s = State::default();
        let mut bad = connector("a", "hq", "192.0.2.1");
        bad.sender_ip_addresses.clear();
        let refused = s.apply(
            1,
            &p(1, import(vec![tenant("a", &["a.test"])], vec![bad], vec![])),
        );
        assert!(
            matches!(refused.result, Err(Rejection::Invalid { .. })),
            "{refused:?}"
        );
        assert!(s.directory.tenants.is_empty());
    }

    /// What a scan of the map finds: the enabled connectors that match `ip` or cover one of
    /// `names`, as ids.
    fn scanned(d: &super::Directory, ip: std::net::IpAddr, names: &[String]) -> Vec<String> {
        d.connectors
            .values()
            .filter(|c| c.enabled)
            .filter(|c| {
                c.sender_ip_addresses.iter().any(|n| n.contains(&ip))
                    || c.tls_sender_certificate_name
                        .as_ref()
                        .is_some_and(|cn| names.iter().any(|n| cn.covers(n)))
            })
            .map(|c| c.id().to_string())
            .collect()
    }

    /// What the index finds for the same question.
    fn indexed(d: &super::Directory, ip: std::net::IpAddr, names: &[String]) -> Vec<String> {
        let mut found: Vec<String> = d
            .matching()
            .by_ip(ip)
            .into_iter()
            .chain(d.matching().by_certificate(names))
            .map(|c| c.id().to_string())
            .collect();
        found.sort();
        found.dedup();
        found
    }

    /// The index and the per-tenant runs agree with a scan after every kind of change, and
    /// after the state is written and read back (the index is rebuilt, never stored).
    #[test]
    fn the_connector_index_and_tenant_runs_follow_every_change() {
        // Ids that sort around each other as text: `a-b/`, `a.b/`, `a/`, `ab/`.
        let tenants = ["a", "a-b", "a.b", "ab"];
        let mut s = State::default();
        for (i, t) in tenants.iter().enumerate() {
            let d = format!("{}.test", t.replace('.', "-dot-"));
            s.apply(
                i as u64 + 1,
                &p(
                    1,
                    Command::PutTenant {
                        tenant: tenant(t, &[d.as_str()]),
                    },
                ),
            )
            .result
            .expect("tenant");
        }
        let probes: Vec<std::net::IpAddr> =
            ["192.0.2.1", "192.0.2.77", "198.51.100.5", "2001:db8::1"]
                .iter()
                .map(|a| a.parse().expect("ip"))
                .collect();
        let names = vec!["mail.a.test".to_owned(), "x.partner.test".to_owned()];
        let check = |s: &State, step: usize| {
            let d = &s.directory;
            for ip in &probes {
                assert_eq!(
                    indexed(d, *ip, &names),
                    scanned(d, *ip, &names),
                    "step {step}, {ip}"
                );
            }
            for t in tenants {
                let t = tid(t);
                let run: Vec<String> = d.connectors_of(&t).map(|c| c.id().to_string()).collect();
                let all: Vec<String> = d
                    .connectors
                    .values()
                    .filter(|c| c.tenant == t)
                    .map(|c| c.id().to_string())
                    .collect();
                assert_eq!(run, all, "step {step}, tenant {t}");
            }
        };
        let mut seed = 7u64;
        let mut next = move |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let nets = [
            "192.0.2.1/32",
            "192.0.2.0/24",
            "198.51.100.0/22",
            "2001:db8::/32",
        ];
        let certs = [None, Some("mail.a.test"), Some("*.partner.test")];
        for step in 0..400 {
            let t = tenants[next(4) as usize];
            let name = format!("c{}", next(6));
            let command = match next(10) {
                0 => Command::DeleteConnector {
                    tenant: tid(t),
                    name,
                },
                1 if step % 5 == 0 => Command::DeleteTenant { tenant: tid(t) },
                2 => Command::PutTenant {
                    tenant: tenant(t, &[format!("{}.test", t.replace('.', "-dot-")).as_str()]),
                },
                _ => {
                    let mut c = connector(t, &name, nets[next(4) as usize]);
                    c.enabled = next(4) != 0;
                    c.tls_sender_certificate_name = certs[next(3) as usize]
                        .map(|n| moat_shared::CertName::new(n).expect("cert name"));
                    if next(3) == 0 {
                        import(vec![], vec![c], vec![])
                    } else {
                        Command::PutConnector { connector: c }
                    }
                }
            };
            let _ = s.apply(step + 10, &p(1, command));
            check(&s, step as usize);
        }
        assert!(
            !s.directory.connectors.is_empty(),
            "the walk left connectors to check"
        );
        let back: State =
            serde_json::from_slice(&serde_json::to_vec(&s).expect("encodes")).expect("decodes");
        assert_eq!(back, s);
        check(&back, usize::MAX);
    }
}
