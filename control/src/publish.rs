//! From the replicated state to what edges enforce, one change at a time.
//!
//! After each applied entry that changes the policy version, the [`Publisher`] turns what the
//! entry touched into a [`v1::PolicyUpdate`]: the tenants, connectors and users the directory
//! recorded as touched, looked up in the state (present: an upsert; gone: a deletion); the
//! restrictions and enforced on-premises servers compared with what was published; the four
//! settings (speed bump, on-premises settings, clock offset, TLS ticket keys) compared likewise. That costs the size of the change, not of the state, except for
//! the restrictions (a short list) and, when on-premises enforcement moved, the servers.
//!
//! Every node publishes at the same entries, so the versions, the updates and their digests
//! are the same on every node: an edge can resume on any node from the version it holds.
//!
//! What is published is kept three ways: a [`View`] of the current policy in wire form, in
//! persistent maps (a clone is O(1), so a full snapshot for one edge is streamed from a clone
//! off the node thread while the thread goes on); a [`DigestBook`] whose sum is stamped on each
//! update; and a bounded [`History`] of recent updates, from which an edge that reconnects gets
//! the changes it missed instead of a full snapshot.

use std::sync::Arc;

use moat_proto::convert::{
    connector_to_wire, restricted_to_wire, step_to_wire, tenant_to_wire, ticket_key_to_wire,
    user_to_wire,
};
use moat_proto::digest::{connector_key, DigestBook};
use moat_proto::v1;
use prost::Message;
use rpds::{HashTrieMapSync, RedBlackTreeMapSync};

use crate::state::State;

/// Largest part of an update or a full snapshot, encoded: well under the 4 MB gRPC limit.
pub const PART_BYTES: usize = 1024 * 1024;

/// Most updates kept for edges that reconnect, unless configured otherwise.
pub const HISTORY_STEPS: usize = 4096;

/// Most bytes of updates kept for edges that reconnect.
pub const HISTORY_BYTES: usize = 64 * 1024 * 1024;

/// The published policy in wire form, by key.
#[derive(Clone, Debug, Default)]
pub struct View {
    tenants: HashTrieMapSync<String, Arc<v1::Tenant>>,
    connectors: HashTrieMapSync<String, Arc<v1::Connector>>,
    users: HashTrieMapSync<String, Arc<v1::SubmissionUser>>,
    /// By (kind, tenant, name).
    restricted: HashTrieMapSync<(String, String, String), Arc<v1::RestrictedEntity>>,
    /// By (tenant, server).
    enforced: HashTrieMapSync<(String, String), Arc<v1::EnforcedServer>>,
    speed_bump: v1::SpeedBump,
    /// Baseline, service and scope; `enforced` stays empty here.
    onprem: v1::OnpremRules,
    clock_offset_ms: i64,
    /// The TLS session ticket keys (secrets included: only edges receive the view).
    ticket_keys: v1::TicketKeys,
}

fn restricted_key(r: &v1::RestrictedEntity) -> (String, String, String) {
    (r.kind.clone(), r.tenant.clone(), r.name.clone())
}

fn enforced_key(e: &v1::EnforcedServer) -> (String, String) {
    (e.tenant.clone(), e.server.clone())
}

impl View {
    /// Applies one part of an update, as an edge does: deletions, then upserts.
    fn apply(&mut self, u: &v1::PolicyUpdate) {
        if u.reset {
            *self = View::default();
        }
        for k in &u.deleted_tenants {
            self.tenants.remove_mut(k);
        }
        for k in &u.deleted_connectors {
            self.connectors.remove_mut(k);
        }
        for k in &u.deleted_users {
            self.users.remove_mut(k);
        }
        for r in &u.unrestricted {
            self.restricted.remove_mut(&restricted_key(r));
        }
        for e in &u.unenforced {
            self.enforced.remove_mut(&enforced_key(e));
        }
        for t in &u.tenants {
            self.tenants.insert_mut(t.id.clone(), Arc::new(t.clone()));
        }
        for c in &u.connectors {
            self.connectors
                .insert_mut(connector_key(c), Arc::new(c.clone()));
        }
        for us in &u.users {
            self.users
                .insert_mut(us.address.clone(), Arc::new(us.clone()));
        }
        for r in &u.restricted {
            self.restricted
                .insert_mut(restricted_key(r), Arc::new(r.clone()));
        }
        for e in &u.enforced {
            self.enforced
                .insert_mut(enforced_key(e), Arc::new(e.clone()));
        }
        if let Some(s) = &u.speed_bump {
            self.speed_bump = s.clone();
        }
        if let Some(o) = &u.onprem {
            self.onprem = o.clone();
        }
        if let Some(k) = u.clock_offset_ms {
            self.clock_offset_ms = k;
        }
        if let Some(t) = &u.ticket_keys {
            self.ticket_keys = t.clone();
        }
    }

    /// How many tenants, connectors and users it holds.
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.tenants.size(),
            self.connectors.size(),
            self.users.size(),
        )
    }

    /// The whole policy as the parts of a full snapshot (the first with `reset`, the last with
    /// `last`, `version`, the time and the digest), handed to `each` one by one so that no
    /// more than one part is held at a time.
    pub fn full(&self, stamp: Stamp, mut each: impl FnMut(v1::PolicyUpdate) -> bool) {
        let mut parts = Parts::new(stamp, true, &mut each);
        parts.cur.speed_bump = Some(self.speed_bump.clone());
        parts.cur.onprem = Some(self.onprem.clone());
        parts.cur.clock_offset_ms = Some(self.clock_offset_ms);
        parts.cur.ticket_keys = Some(self.ticket_keys.clone());
        macro_rules! every {
            ($($field:ident),*) => {$(
                for item in self.$field.values() {
                    if !parts.room(item.encoded_len()) {
                        return;
                    }
                    parts.cur.$field.push((**item).clone());
                }
            )*};
        }
        every!(tenants, connectors, users, restricted, enforced);
        parts.finish();
    }

    /// The whole policy as one [`v1::PolicySnapshot`], for edges of the previous release that
    /// still use `Watch`.
    pub fn legacy_snapshot(&self, stamp: Stamp) -> v1::PolicySnapshot {
        let mut onprem = self.onprem.clone();
        onprem.enforced = self.enforced.values().map(|e| (**e).clone()).collect();
        v1::PolicySnapshot {
            version: stamp.version,
            changed_at_ms: stamp.changed_at_ms,
            tenants: self.tenants.values().map(|t| (**t).clone()).collect(),
            connectors: self.connectors.values().map(|c| (**c).clone()).collect(),
            restricted: self.restricted.values().map(|r| (**r).clone()).collect(),
            users: self.users.values().map(|u| (**u).clone()).collect(),
            speed_bump: self.speed_bump.steps.clone(),
            onprem: Some(onprem),
            clock_offset_ms: self.clock_offset_ms,
        }
    }
}

/// Which version a set of parts completes, when, and the digest of the policy at it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamp {
    /// The policy version.
    pub version: u64,
    /// Leader time of its change (Unix ms).
    pub changed_at_ms: i64,
    /// The digest of the whole policy at that version.
    pub digest: u64,
}

/// Splits what is pushed into parts of at most [`PART_BYTES`] (an item larger than that
/// travels alone) and hands each full part on.
struct Parts<'a, F: FnMut(v1::PolicyUpdate) -> bool> {
    stamp: Stamp,
    cur: v1::PolicyUpdate,
    size: usize,
    out: &'a mut F,
    stopped: bool,
}

impl<'a, F: FnMut(v1::PolicyUpdate) -> bool> Parts<'a, F> {
    fn new(stamp: Stamp, reset: bool, out: &'a mut F) -> Self {
        Parts {
            stamp,
            cur: v1::PolicyUpdate {
                version: stamp.version,
                changed_at_ms: stamp.changed_at_ms,
                reset,
                ..Default::default()
            },
            size: 0,
            out,
            stopped: false,
        }
    }

    /// Makes room for an item of `n` bytes; false once the receiver wants no more.
    fn room(&mut self, n: usize) -> bool {
        if self.stopped {
            return false;
        }
        if self.size > 0 && self.size + n > PART_BYTES {
            let next = v1::PolicyUpdate {
                version: self.stamp.version,
                changed_at_ms: self.stamp.changed_at_ms,
                ..Default::default()
            };
            let full = std::mem::replace(&mut self.cur, next);
            self.size = 0;
            if !(self.out)(full) {
                self.stopped = true;
                return false;
            }
        }
        self.size += n + 8;
        true
    }

    fn finish(mut self) {
        if self.stopped {
            return;
        }
        self.cur.last = true;
        self.cur.digest = self.stamp.digest;
        let last = std::mem::take(&mut self.cur);
        (self.out)(last);
    }
}

/// One published version: the version before it and its parts.
#[derive(Clone, Debug)]
pub struct Step {
    /// The version it was published on top of.
    pub base: u64,
    /// Its parts, the last with `last` and the digest.
    pub parts: Arc<Vec<v1::PolicyUpdate>>,
    bytes: usize,
}

/// Recent steps by version, bounded by a number of steps and by [`HISTORY_BYTES`].
#[derive(Clone, Debug)]
pub struct History {
    steps: RedBlackTreeMapSync<u64, Step>,
    bytes: usize,
    max_steps: usize,
}

impl Default for History {
    fn default() -> Self {
        History::new(HISTORY_STEPS)
    }
}

impl History {
    fn new(max_steps: usize) -> Self {
        History {
            steps: RedBlackTreeMapSync::new_sync(),
            bytes: 0,
            max_steps: max_steps.max(1),
        }
    }

    fn push(&mut self, version: u64, step: Step) {
        self.bytes += step.bytes;
        self.steps.insert_mut(version, step);
        while self.steps.size() > self.max_steps
            || (self.bytes > HISTORY_BYTES && self.steps.size() > 1)
        {
            let Some((&oldest, s)) = self.steps.first() else {
                break;
            };
            self.bytes -= s.bytes;
            self.steps.remove_mut(&oldest);
        }
    }

    /// The steps that take a policy at `version` to the newest, or `None` when the oldest kept
    /// step starts after `version` (the edge needs a full snapshot). Empty when `version` is
    /// the newest.
    pub fn since(&self, version: u64) -> Option<Vec<Step>> {
        let first = self.steps.first().map(|(_, s)| s.base);
        match first {
            Some(base) if version >= base => Some(
                self.steps
                    .range((
                        std::ops::Bound::Excluded(version),
                        std::ops::Bound::Unbounded,
                    ))
                    .map(|(_, s)| s.clone())
                    .collect(),
            ),
            _ => None,
        }
    }

    /// The digest stamped on `version`, if it is kept.
    pub fn digest_at(&self, version: u64) -> Option<u64> {
        let step = self.steps.get(&version)?;
        step.parts.last().map(|p| p.digest)
    }
}

/// What the node thread publishes to the Policy service after each round.
#[derive(Clone, Debug, Default)]
pub struct Published {
    /// Version, time and digest of the newest policy.
    pub stamp: Stamp,
    /// The newest policy.
    pub view: View,
    /// The recent steps.
    pub history: History,
}

impl Published {
    /// The digest of `version` if this node knows it.
    pub fn digest_at(&self, version: u64) -> Option<u64> {
        if version == self.stamp.version {
            Some(self.stamp.digest)
        } else {
            self.history.digest_at(version)
        }
    }
}

/// Builds and keeps what is published; owned by the node's [`crate::raft::node::Core`].
#[derive(Debug, Default)]
pub struct Publisher {
    current: Published,
    book: DigestBook,
}

impl Publisher {
    /// A publisher that keeps `history` steps for edges that reconnect.
    pub fn new(history: usize) -> Self {
        Publisher {
            current: Published {
                history: History::new(history),
                ..Published::default()
            },
            book: DigestBook::default(),
        }
    }

    /// What is published now (cheap to clone).
    pub fn published(&self) -> &Published {
        &self.current
    }

    /// Rebuilds everything from `state` (at start and after installing a snapshot): the history
    /// is dropped, so edges holding an older version get a full snapshot.
    pub fn reset(&mut self, state: &mut State) {
        let _ = state.directory.take_touched();
        let mut update = v1::PolicyUpdate {
            reset: true,
            ..Default::default()
        };
        update.tenants = state
            .directory
            .tenants
            .values()
            .map(tenant_to_wire)
            .collect();
        update.connectors = state
            .directory
            .connectors()
            .values()
            .map(|c| connector_to_wire(c))
            .collect();
        update.users = state.directory.users.values().map(user_to_wire).collect();
        update.restricted = state.restricted.iter().map(restricted_to_wire).collect();
        update.enforced = enforced(state);
        update.speed_bump = Some(speed_bump(state));
        update.onprem = Some(onprem_settings(state));
        update.clock_offset_ms = Some(state.clock_offset_ms);
        update.ticket_keys = Some(ticket_keys(state));
        let mut view = View::default();
        view.apply(&update);
        drop(update);
        // The book is built from the parts an edge would receive, so that both count the same
        // items the same way.
        let mut book = DigestBook::default();
        view.full(Stamp::default(), |part| {
            book.apply(&part);
            true
        });
        self.book = book;
        self.current = Published {
            stamp: Stamp {
                version: state.policy_version,
                changed_at_ms: state.policy_changed_ms,
                digest: self.book.digest(),
            },
            view,
            history: History::new(self.current.history.max_steps),
        };
    }

    /// Publishes the entry just applied, which changed the policy version: what it touched
    /// becomes one step.
    pub fn step(&mut self, state: &mut State) {
        let touched = state.directory.take_touched();
        let view = &self.current.view;
        let mut u = v1::PolicyUpdate::default();
        for id in &touched.tenants {
            match state.directory.tenants.get(id) {
                Some(t) => u.tenants.push(tenant_to_wire(t)),
                None if view.tenants.contains_key(id.as_str()) => {
                    u.deleted_tenants.push(id.to_string())
                }
                None => {}
            }
        }
        for id in &touched.connectors {
            match state.directory.connector(id) {
                Some(c) => u.connectors.push(connector_to_wire(c)),
                None => {
                    let key = id.to_string();
                    if view.connectors.contains_key(&key) {
                        u.deleted_connectors.push(key);
                    }
                }
            }
        }
        for address in &touched.users {
            match state.directory.users.get(address) {
                Some(us) => u.users.push(user_to_wire(us)),
                None if view.users.contains_key(address) => u.deleted_users.push(address.clone()),
                None => {}
            }
        }
        // Restrictions: a short list, compared whole.
        let (set, gone) = compare(
            state.restricted.iter().map(restricted_to_wire).collect(),
            restricted_key,
            &view.restricted,
        );
        u.restricted = set;
        u.unrestricted = gone
            .iter()
            .map(|r| v1::RestrictedEntity {
                tenant: r.tenant.clone(),
                kind: r.kind.clone(),
                name: r.name.clone(),
                ..Default::default()
            })
            .collect();
        // Enforced servers: compared whole, only when enforcement may have moved.
        if touched.onprem {
            let (set, gone) = compare(enforced(state), enforced_key, &view.enforced);
            u.enforced = set;
            u.unenforced = gone
                .iter()
                .map(|e| v1::EnforcedServer {
                    tenant: e.tenant.clone(),
                    server: e.server.clone(),
                    ..Default::default()
                })
                .collect();
        }
        let sb = speed_bump(state);
        if sb != view.speed_bump {
            u.speed_bump = Some(sb);
        }
        let op = onprem_settings(state);
        if op != view.onprem {
            u.onprem = Some(op);
        }
        if state.clock_offset_ms != view.clock_offset_ms {
            u.clock_offset_ms = Some(state.clock_offset_ms);
        }
        let tk = ticket_keys(state);
        if tk != view.ticket_keys {
            u.ticket_keys = Some(tk);
        }
        self.push(state.policy_version, state.policy_changed_ms, u);
    }

    /// Splits `u` into parts, applies them to the view and the book, stamps the digest on the
    /// last and keeps the step.
    fn push(&mut self, version: u64, changed_at_ms: i64, u: v1::PolicyUpdate) {
        let stamp = Stamp {
            version,
            changed_at_ms,
            digest: 0,
        };
        let mut parts = Vec::new();
        split(stamp, u, &mut parts);
        let mut bytes = 0;
        for p in &parts {
            self.book.apply(p);
            self.current.view.apply(p);
            bytes += p.encoded_len();
        }
        let digest = self.book.digest();
        if let Some(last) = parts.last_mut() {
            last.digest = digest;
        }
        let base = self.current.stamp.version;
        self.current.history.push(
            version,
            Step {
                base,
                parts: Arc::new(parts),
                bytes,
            },
        );
        self.current.stamp = Stamp {
            version,
            changed_at_ms,
            digest,
        };
    }
}

/// Compares items computed from the state with what was published, by key: the items that
/// are new or differ, and the published ones no longer there.
fn compare<K, V>(
    now: Vec<V>,
    key: impl Fn(&V) -> K,
    published: &HashTrieMapSync<K, Arc<V>>,
) -> (Vec<V>, Vec<Arc<V>>)
where
    K: Eq + std::hash::Hash,
    V: PartialEq,
{
    let now: std::collections::HashMap<K, V> = now.into_iter().map(|v| (key(&v), v)).collect();
    let gone = published
        .iter()
        .filter(|(k, _)| !now.contains_key(*k))
        .map(|(_, v)| Arc::clone(v))
        .collect();
    let set = now
        .into_iter()
        .filter(|(k, v)| published.get(k).map(|have| &**have) != Some(v))
        .map(|(_, v)| v)
        .collect();
    (set, gone)
}

/// Splits one update into parts of at most [`PART_BYTES`]; the last has `last` set.
fn split(stamp: Stamp, u: v1::PolicyUpdate, out: &mut Vec<v1::PolicyUpdate>) {
    let mut push = |p: v1::PolicyUpdate| {
        out.push(p);
        true
    };
    let mut parts = Parts::new(stamp, u.reset, &mut push);
    parts.cur.speed_bump = u.speed_bump;
    parts.cur.onprem = u.onprem;
    parts.cur.clock_offset_ms = u.clock_offset_ms;
    parts.cur.ticket_keys = u.ticket_keys;
    macro_rules! carry {
        ($($field:ident),*) => {$(
            for item in u.$field {
                parts.room(item.encoded_len());
                parts.cur.$field.push(item);
            }
        )*};
    }
    // In the order the parts must apply: an edge refuses a part that deletes a tenant whose
    // connectors or users are still there, or that adds a connector of a tenant it lacks.
    carry!(
        deleted_connectors,
        deleted_users,
        deleted_tenants,
        unrestricted,
        unenforced,
        tenants,
        connectors,
        users,
        restricted,
        enforced
    );
    parts.finish();
}

/// The servers edges throttle or block now, with their stage's minutes.
pub(crate) fn enforced(state: &State) -> Vec<v1::EnforcedServer> {
    let schedule = state.onprem.schedule();
    state
        .onprem
        .servers
        .values()
        .filter(|s| s.enforced(&schedule))
        .filter_map(|s| {
            let st = schedule.get(s.stage)?;
            Some(v1::EnforcedServer {
                tenant: s.tenant.to_string(),
                server: s.server.clone(),
                stage: s.stage,
                throttle: u32::from(st.throttle),
                block: u32::from(st.block),
            })
        })
        .collect()
}

/// The TLS session ticket keys, as the wire carries them to edges.
pub(crate) fn ticket_keys(state: &State) -> v1::TicketKeys {
    let keys = state.tickets.for_edges();
    v1::TicketKeys {
        issuing: keys.issuing.as_ref().and_then(ticket_key_to_wire),
        accepting: keys
            .accepting
            .iter()
            .filter_map(ticket_key_to_wire)
            .collect(),
        lifetime_ms: keys.lifetime_ms,
    }
}

/// The legacy-TLS speed bump schedule, as the wire carries it.
pub(crate) fn speed_bump(state: &State) -> v1::SpeedBump {
    v1::SpeedBump {
        steps: state.limits.speed_bump.iter().map(step_to_wire).collect(),
    }
}

/// Baseline, service and scope of the on-premises rules (the enforced servers travel apart).
pub(crate) fn onprem_settings(state: &State) -> v1::OnpremRules {
    v1::OnpremRules {
        baseline: baseline_to_wire(state),
        enforced: Vec::new(),
        service: state.onprem.service.clone(),
        all_connectors: state.onprem.all_connectors,
    }
}

/// The baseline builds (the built-in default when none is set), as the wire carries them.
pub fn baseline_to_wire(state: &State) -> Vec<String> {
    state
        .onprem
        .baseline()
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use moat_shared::{Connector, ConnectorKind, Domain, Tenant, TenantId};

    use super::*;
    use crate::state::{Command, Proposal, Restricted, User};

    /// A small deterministic generator (no test dependency needed).
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    fn tid(n: u64) -> TenantId {
        TenantId::new(&format!("t{n}")).expect("tenant id")
    }

    fn domain(n: u64) -> Domain {
        Domain::new(&format!("d{n}.test")).expect("domain")
    }

    fn connector(t: u64, n: u64, ip: u64, enabled: bool) -> Connector {
        Connector {
            tenant: tid(t),
            name: format!("c{n}"),
            kind: ConnectorKind::Partner,
            enabled,
            sender_ip_addresses: vec![format!("192.0.2.{ip}/32").parse().expect("net")],
            tls_sender_certificate_name: None,
            sender_domains: Vec::new(),
            require_tls: false,
            restrict_domains_to_ip_addresses: false,
            restrict_domains_to_certificate: false,
        }
    }

    fn user(t: u64, n: u64) -> User {
        User {
            tenant: tid(t),
            address: format!("u{n}@d{t}.test"),
            password_hash: format!("hash-{n}"),
            send_as: Vec::new(),
        }
    }

    fn random_command(r: &mut Rng) -> Command {
        let t = r.below(12);
        match r.below(10) {
            0 | 1 => Command::PutTenant {
                tenant: Tenant {
                    id: tid(t),
                    display_name: format!("T{}", r.below(3)),
                    accepted_domains: (0..r.below(3)).map(|_| domain(r.below(40))).collect(),
                    allow_legacy_tls_clients: r.below(2) == 0,
                },
            },
            2 => Command::DeleteTenant { tenant: tid(t) },
            3 => Command::AddDomain {
                tenant: tid(t),
                domain: domain(r.below(40)),
            },
            4 => Command::RemoveDomain {
                tenant: tid(t),
                domain: domain(r.below(40)),
            },
            5 => Command::PutConnector {
                connector: connector(t, r.below(4), r.below(200), r.below(4) > 0),
            },
            6 => Command::DeleteConnector {
                tenant: tid(t),
                name: format!("c{}", r.below(4)),
            },
            7 => Command::PutUser {
                user: user(t, r.below(6)),
            },
            8 => Command::DeleteUser {
                tenant: tid(t),
                address: format!("u{}@d{t}.test", r.below(6)),
            },
            _ => Command::ImportSeed {
                tenants: vec![Tenant {
                    id: tid(t),
                    display_name: "imported".into(),
                    accepted_domains: vec![domain(40 + t)],
                    allow_legacy_tls_clients: false,
                }],
                connectors: vec![connector(t, 9, r.below(200), true)],
                users: vec![user(t, 9)],
            },
        }
    }

    fn fresh(state: &State) -> Publisher {
        let mut p = Publisher::default();
        p.reset(&mut state.clone());
        p
    }

    /// Applies every part of `steps` to `book`.
    fn follow(book: &mut DigestBook, steps: &[Step]) {
        for s in steps {
            for part in s.parts.iter() {
                book.apply(part);
            }
        }
    }

    #[test]
    fn steps_add_up_to_the_state_and_edges_resume_from_any_version() {
        let mut rng = Rng(17);
        let mut state = State::default();
        let mut publisher = Publisher::default();
        publisher.reset(&mut state);
        // What edges that connected at various points hold: (version, book).
        let mut edges: Vec<(u64, DigestBook)> = Vec::new();
        let mut steps_seen = 0;
        for index in 2..600u64 {
            let command = random_command(&mut rng);
            let before = state.policy_version;
            let at_ms = 1_000_000 + index as i64;
            let p = Proposal {
                at_ms,
                actor: "test".into(),
                request_id: None,
                command,
            };
            state.apply(index, &p);
            if index % 97 == 0 {
                // Restrictions come from detection and limits; set one directly.
                state.restricted.push(Restricted {
                    tenant: tid(rng.below(12)),
                    kind: moat_shared::EntityKind::Connector,
                    name: format!("c{}", rng.below(4)),
                    reason: "test".into(),
                    since_ms: at_ms,
                    until_ms: Some(at_ms + 40),
                });
                state.policy_version = index;
            }
            if state.policy_version != before {
                publisher.step(&mut state);
                steps_seen += 1;
            }
            let published = publisher.published().clone();
            assert_eq!(published.stamp.version, state.policy_version);
            if index % 50 == 0 {
                // The steps add up to what a node that starts now would publish.
                let f = fresh(&state);
                assert_eq!(
                    f.published().stamp.digest,
                    published.stamp.digest,
                    "at {index}"
                );
                assert_eq!(f.published().view.counts(), published.view.counts());
                // An edge connecting now takes a full snapshot.
                let mut book = DigestBook::default();
                let mut last = None;
                published.view.full(published.stamp, |part| {
                    book.apply(&part);
                    last = Some(part);
                    true
                });
                let last = last.expect("a full snapshot has a part");
                assert!(last.last);
                assert_eq!(last.digest, book.digest());
                assert_eq!(book.digest(), published.stamp.digest);
                edges.push((published.stamp.version, book));
            }
            // Edges that connected earlier resume from their version with the steps since.
            if index % 61 == 0 {
                for (version, book) in &mut edges {
                    let steps = published
                        .history
                        .since(*version)
                        .expect("kept in the history");
                    follow(book, &steps);
                    *version = published.stamp.version;
                    assert_eq!(book.digest(), published.stamp.digest);
                }
            }
        }
        assert!(steps_seen > 200, "only {steps_seen} steps");
        // A version between two steps resumes too (the steps carry values, not operations).
        let published = publisher.published();
        let versions: Vec<u64> = published.history.steps.keys().copied().collect();
        let mid = versions[versions.len() / 2];
        assert!(published.history.since(mid).is_some());
        assert_eq!(
            published
                .history
                .since(published.stamp.version)
                .map(|s| s.len()),
            Some(0)
        );
    }

    #[test]
    fn ticket_keys_travel_when_they_rotate_and_leave_the_digest_alone() {
        let mut state = State::default();
        let mut publisher = Publisher::default();
        publisher.reset(&mut state);
        let mut edge = DigestBook::default();
        publisher
            .published()
            .view
            .full(publisher.published().stamp, |part| {
                edge.apply(&part);
                true
            });
        let rotate = |n: u8| Proposal {
            at_ms: 1000 * i64::from(n),
            actor: "system".into(),
            request_id: None,
            command: Command::RotateTicketKeys {
                name: format!("{n:032x}"),
                key: moat_shared::TicketSecret::new([n; 32]),
                rotate_every_ms: 5000,
                replaces: None,
                forced: true,
            },
        };
        let before = publisher.published().stamp.digest;
        for (index, n) in [(1, 1u8), (2, 2)] {
            state.apply(index, &rotate(n));
            publisher.step(&mut state);
            let published = publisher.published();
            let steps = published.history.since(index - 1).expect("kept");
            let keys = steps[0].parts[0]
                .ticket_keys
                .clone()
                .expect("the step carries them");
            let mut name = vec![0; 16];
            name[15] = n;
            assert_eq!(keys.issuing.as_ref().map(|k| k.name.clone()), Some(name));
            assert_eq!(
                keys.issuing.as_ref().map(|k| k.secret.clone()),
                Some(vec![n; 32])
            );
            assert_eq!(keys.accepting.len(), usize::from(n) - 1);
            follow(&mut edge, &steps);
            assert_eq!(edge.digest(), published.stamp.digest);
            // An edge of the previous release ignores the keys: its digest must still agree.
            assert_eq!(published.stamp.digest, before);
            assert_eq!(
                fresh(&state).published().stamp.digest,
                published.stamp.digest
            );
        }
        // Another entry that moves the policy carries no keys.
        state.apply(
            3,
            &Proposal {
                at_ms: 3000,
                actor: "test".into(),
                request_id: None,
                command: Command::PutTenant {
                    tenant: Tenant {
                        id: tid(1),
                        display_name: "t".into(),
                        accepted_domains: vec![],
                        allow_legacy_tls_clients: false,
                    },
                },
            },
        );
        publisher.step(&mut state);
        let steps = publisher.published().history.since(2).expect("kept");
        assert!(steps[0].parts.iter().all(|p| p.ticket_keys.is_none()));
        // The digest covers no key, neither its secret nor its id.
        let digest = |secret: u8, name: u8| {
            let mut b = DigestBook::default();
            b.apply(&v1::PolicyUpdate {
                ticket_keys: Some(v1::TicketKeys {
                    issuing: Some(v1::TicketKey {
                        name: vec![name; 16],
                        secret: vec![secret; 32],
                        created_ms: 1,
                    }),
                    accepting: vec![],
                    lifetime_ms: 1,
                }),
                ..Default::default()
            });
            b.digest()
        };
        assert_eq!(digest(1, 9), digest(2, 9));
        assert_eq!(digest(1, 9), digest(1, 8));
        assert_eq!(digest(1, 9), DigestBook::default().digest());
        // A policy update in a log shows no secret.
        let shown = format!("{:?}", steps_with_keys(&publisher));
        assert!(!shown.contains(&format!("{:?}", vec![2u8; 32])), "{shown}");
    }

    fn steps_with_keys(p: &Publisher) -> Vec<v1::PolicyUpdate> {
        let mut out = Vec::new();
        p.published().view.full(p.published().stamp, |part| {
            out.push(part);
            true
        });
        out
    }

    #[test]
    fn large_steps_and_snapshots_come_in_bounded_parts() {
        let mut state = State::default();
        let mut publisher = Publisher::default();
        publisher.reset(&mut state);
        let tenants: Vec<Tenant> = (0..5000)
            .map(|n| Tenant {
                id: tid(n),
                display_name: "x".repeat(300),
                accepted_domains: vec![domain(n)],
                allow_legacy_tls_clients: false,
            })
            .collect();
        let p = Proposal {
            at_ms: 5,
            actor: "test".into(),
            request_id: None,
            command: Command::ImportSeed {
                tenants,
                connectors: Vec::new(),
                users: Vec::new(),
            },
        };
        state.apply(2, &p);
        publisher.step(&mut state);
        let published = publisher.published();
        let steps = published.history.since(0).expect("kept");
        assert_eq!(steps.len(), 1);
        let parts = &steps[0].parts;
        assert!(
            parts.len() > 1,
            "one part of {} bytes",
            parts[0].encoded_len()
        );
        for (i, part) in parts.iter().enumerate() {
            assert!(part.encoded_len() <= PART_BYTES + 1024, "part {i}");
            assert_eq!(part.last, i == parts.len() - 1);
            assert_eq!(part.version, 2);
        }
        let mut n = 0;
        published.view.full(published.stamp, |part| {
            assert!(part.encoded_len() <= PART_BYTES + 1024);
            n += 1;
            true
        });
        assert!(n > 1);
    }

    #[test]
    fn the_history_is_bounded_and_says_when_it_no_longer_covers_a_version() {
        let mut h = History::default();
        for v in 1..=(HISTORY_STEPS as u64 + 10) {
            let part = v1::PolicyUpdate {
                version: v,
                last: true,
                digest: v * 7,
                ..Default::default()
            };
            h.push(
                v,
                Step {
                    base: v - 1,
                    parts: Arc::new(vec![part]),
                    bytes: 10,
                },
            );
        }
        assert_eq!(h.steps.size(), HISTORY_STEPS);
        // The oldest kept step is 11, on top of 10.
        assert!(h.since(9).is_none(), "an edge at 9 needs a full snapshot");
        assert_eq!(h.since(10).map(|s| s.len()), Some(HISTORY_STEPS));
        assert_eq!(h.digest_at(20), Some(140));
        assert_eq!(h.digest_at(5), None);
        // By bytes too: one huge step pushes out all but itself.
        h.push(
            HISTORY_STEPS as u64 + 11,
            Step {
                base: HISTORY_STEPS as u64 + 10,
                parts: Arc::new(Vec::new()),
                bytes: HISTORY_BYTES + 1,
            },
        );
        assert_eq!(h.steps.size(), 1);
    }
}
