//! The replicated state machine.
//!
//! Every control node applies the same committed [`Proposal`]s in the same order to a [`State`]
//! and so holds the same state. [`State::apply`] is deterministic: it reads time only from the
//! proposal (stamped by the leader that proposed it, and never allowed to go backwards) and
//! never touches the network, the disk or the local clock. Validation happens here, at apply,
//! so a proposal that became invalid between proposing and committing (another admin deleted
//! the tenant meanwhile) fails the same way on every node.

use std::collections::{BTreeMap, VecDeque};

use moat_shared::{Connector, Domain, Tenant, TenantId};
use serde::{Deserialize, Serialize};

/// How long a client request id is remembered for deduplication of retries.
const REQUEST_ID_TTL_MS: i64 = 60 * 60 * 1000;
/// How many audit records are kept (older ones are dropped first).
const AUDIT_KEEP: usize = 100_000;

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
    /// Counter deltas from edges, gathered by the leader into one entry.
    Signals {
        /// One batch per edge at most.
        batches: Vec<SignalBatch>,
    },
}

/// A user who may authenticate with SMTP AUTH.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The tenant.
    pub tenant: TenantId,
    /// Login and default sending address, lowercase.
    pub address: String,
    /// Argon2id PHC string; the password itself never reaches the log.
    pub password_hash: String,
    /// Further addresses the user may send as.
    pub send_as: Vec<String>,
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

/// A connector or user blocked by the control plane.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restricted {
    /// The tenant.
    pub tenant: TenantId,
    /// `connector` or `user`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Why.
    pub reason: String,
    /// Since (entry time).
    pub since_ms: i64,
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
        let result = self.run(index, &p.command);
        if let Ok(action) = &result {
            if let Some(id) = &p.request_id {
                self.requests.insert(id.clone(), (index, now));
            }
            if !matches!(p.command, Command::Signals { .. }) {
                if policy_relevant(&p.command) {
                    self.policy_version = index;
                    self.policy_changed_ms = now;
                }
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

    fn run(&mut self, index: u64, command: &Command) -> Result<String, String> {
        match command {
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
                self.restricted
                    .retain(|r| !(r.kind == "connector" && r.tenant == *tenant && r.name == *name));
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
            Command::Signals { batches } => {
                let mut applied = 0;
                for b in batches {
                    let last = self.edge_seqs.entry(b.edge.clone()).or_default();
                    if b.seq <= *last {
                        continue;
                    }
                    *last = b.seq;
                    applied += 1;
                    for (scope, key, name, delta) in &b.counters {
                        let c = self
                            .counters
                            .entry(format!("{scope}|{key}|{name}"))
                            .or_default();
                        add(c, self.now_ms, *delta);
                    }
                }
                let _ = index;
                Ok(format!("{applied} signal batch(es)"))
            }
        }
    }
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
            | Command::PutUser { .. }
            | Command::DeleteUser { .. }
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
        | Command::SetTransportConfig { tenant, .. } => Some(tenant.clone()),
        Command::PutConnector { connector } => Some(connector.tenant.clone()),
        Command::PutUser { user } => Some(user.tenant.clone()),
        Command::CreateToken { token } => token.tenant.clone(),
        Command::RevokeToken { .. } | Command::ApplySeed { .. } | Command::Signals { .. } => None,
    }
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
}
