//! The digest of a policy: one number that two holders of the same policy agree on.
//!
//! A policy is a set of items (tenants, connectors, users, restrictions, enforced servers and
//! three settings), each with a key. The TLS session ticket keys are not part of it: they travel
//! whole with every rotation and in every full snapshot, and an edge of the previous release
//! ignores them, so a digest that covered them would set such an edge apart from the control
//! plane (and make it fetch full snapshots forever) during a rolling upgrade. The digest is the
//! wrapping sum of one 64-bit hash per item,
//! taken over its key and its protobuf encoding, so it is independent of order and each
//! [`PolicyUpdate`](v1::PolicyUpdate) changes it by the items it sets or drops: a [`DigestBook`]
//! follows a stream of updates at the cost of the updates, not of the policy.
//!
//! The control plane applies every update it publishes to its own book and stamps the result on
//! the update; an edge applies what it receives to its book and reports the result with the
//! version it enforces. A lost, reordered or misapplied change shows as a different number.
//! The hash is FNV-1a with a final mix: stable across processes, builds and platforms, and
//! meant to find accidents, not to resist an adversary (the control plane is trusted).

use std::collections::HashMap;

use prost::Message;

use crate::v1;

/// FNV-1a over several byte strings, finished with the splitmix64 mix so that items whose
/// encodings differ in a byte spread over all 64 bits.
fn hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so that ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// What kind of item a key names: part of the key, so a tenant and a user never collide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Item {
    Tenant,
    Connector,
    User,
    Restricted,
    Enforced,
    SpeedBump,
    Onprem,
    ClockOffset,
}

impl Item {
    fn tag(self) -> &'static [u8] {
        match self {
            Item::Tenant => b"tenant",
            Item::Connector => b"connector",
            Item::User => b"user",
            Item::Restricted => b"restricted",
            Item::Enforced => b"enforced",
            Item::SpeedBump => b"speed-bump",
            Item::Onprem => b"onprem",
            Item::ClockOffset => b"clock-offset",
        }
    }
}

/// The key of an item: its kind and its identity, hashed.
fn key(item: Item, parts: &[&str]) -> u64 {
    let mut all: Vec<&[u8]> = vec![item.tag()];
    all.extend(parts.iter().map(|p| p.as_bytes()));
    hash(&all)
}

/// The hash of one item's value under its key.
fn value(key: u64, encoded: &[u8]) -> u64 {
    hash(&[&key.to_le_bytes(), encoded])
}

/// The key of a connector, `tenant/name` (the form `deleted_connectors` carries).
pub fn connector_key(c: &v1::Connector) -> String {
    format!("{}/{}", c.tenant, c.name)
}

/// The key of an enforced server or a restriction: the tenant and the name.
fn restricted_key(r: &v1::RestrictedEntity) -> u64 {
    key(Item::Restricted, &[&r.kind, &r.tenant, &r.name])
}

fn enforced_key(e: &v1::EnforcedServer) -> u64 {
    key(Item::Enforced, &[&e.tenant, &e.server])
}

/// The items of a policy by key, each with its value's hash, and their sum.
#[derive(Clone, Debug, Default)]
pub struct DigestBook {
    items: HashMap<u64, u64>,
    sum: u64,
}

impl DigestBook {
    /// The digest of everything applied so far.
    pub fn digest(&self) -> u64 {
        self.sum
    }

    /// How many items the policy holds.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the policy holds no item.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn set(&mut self, key: u64, encoded: &[u8]) {
        let v = value(key, encoded);
        if let Some(old) = self.items.insert(key, v) {
            self.sum = self.sum.wrapping_sub(old);
        }
        self.sum = self.sum.wrapping_add(v);
    }

    fn drop_key(&mut self, key: u64) {
        if let Some(old) = self.items.remove(&key) {
            self.sum = self.sum.wrapping_sub(old);
        }
    }

    /// Applies one update (one part of one): `reset` empties the book first, deletions come
    /// before upserts, as the edge's snapshot applies them.
    pub fn apply(&mut self, u: &v1::PolicyUpdate) {
        if u.reset {
            self.items.clear();
            self.sum = 0;
        }
        for t in &u.deleted_tenants {
            self.drop_key(key(Item::Tenant, &[t]));
        }
        for c in &u.deleted_connectors {
            self.drop_key(key(Item::Connector, &[c]));
        }
        for a in &u.deleted_users {
            self.drop_key(key(Item::User, &[a]));
        }
        for r in &u.unrestricted {
            self.drop_key(restricted_key(r));
        }
        for e in &u.unenforced {
            self.drop_key(enforced_key(e));
        }
        for t in &u.tenants {
            self.set(key(Item::Tenant, &[&t.id]), &t.encode_to_vec());
        }
        for c in &u.connectors {
            self.set(
                key(Item::Connector, &[&connector_key(c)]),
                &c.encode_to_vec(),
            );
        }
        for us in &u.users {
            self.set(key(Item::User, &[&us.address]), &us.encode_to_vec());
        }
        for r in &u.restricted {
            self.set(restricted_key(r), &r.encode_to_vec());
        }
        for e in &u.enforced {
            self.set(enforced_key(e), &e.encode_to_vec());
        }
        if let Some(s) = &u.speed_bump {
            self.set(key(Item::SpeedBump, &[]), &s.encode_to_vec());
        }
        if let Some(o) = &u.onprem {
            self.set(key(Item::Onprem, &[]), &o.encode_to_vec());
        }
        if let Some(k) = u.clock_offset_ms {
            self.set(key(Item::ClockOffset, &[]), &k.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str, domains: &[&str]) -> v1::Tenant {
        v1::Tenant {
            id: id.into(),
            display_name: id.into(),
            accepted_domains: domains.iter().map(|d| (*d).into()).collect(),
            allow_legacy_tls_clients: false,
        }
    }

    fn connector(t: &str, n: &str) -> v1::Connector {
        v1::Connector {
            tenant: t.into(),
            name: n.into(),
            enabled: true,
            sender_ip_addresses: vec!["192.0.2.1".into()],
            ..Default::default()
        }
    }

    #[test]
    fn the_digest_depends_on_the_items_not_on_how_they_arrived() {
        let mut whole = DigestBook::default();
        whole.apply(&v1::PolicyUpdate {
            reset: true,
            tenants: vec![tenant("a", &["a.test"]), tenant("b", &["b.test"])],
            connectors: vec![connector("a", "c1"), connector("b", "c2")],
            ..Default::default()
        });
        let mut steps = DigestBook::default();
        steps.apply(&v1::PolicyUpdate {
            reset: true,
            tenants: vec![tenant("b", &["b.test"]), tenant("x", &[])],
            connectors: vec![connector("b", "c2")],
            ..Default::default()
        });
        assert_ne!(steps.digest(), whole.digest());
        steps.apply(&v1::PolicyUpdate {
            deleted_tenants: vec!["x".into()],
            tenants: vec![tenant("a", &["old.test"])],
            ..Default::default()
        });
        steps.apply(&v1::PolicyUpdate {
            tenants: vec![tenant("a", &["a.test"])],
            connectors: vec![connector("a", "c1")],
            ..Default::default()
        });
        assert_eq!(steps.digest(), whole.digest());
        assert_eq!(steps.len(), 4);
        // Setting an item to the value it has changes nothing; dropping what is not there
        // neither.
        steps.apply(&v1::PolicyUpdate {
            tenants: vec![tenant("a", &["a.test"])],
            deleted_users: vec!["nobody@a.test".into()],
            ..Default::default()
        });
        assert_eq!(steps.digest(), whole.digest());
        // Any change of a value shows.
        let mut c = connector("a", "c1");
        c.enabled = false;
        steps.apply(&v1::PolicyUpdate {
            connectors: vec![c],
            ..Default::default()
        });
        assert_ne!(steps.digest(), whole.digest());
    }

    #[test]
    fn settings_and_kinds_are_items_of_their_own() {
        let mut a = DigestBook::default();
        a.apply(&v1::PolicyUpdate {
            speed_bump: Some(v1::SpeedBump::default()),
            clock_offset_ms: Some(0),
            ..Default::default()
        });
        assert_eq!(a.len(), 2);
        let before = a.digest();
        a.apply(&v1::PolicyUpdate {
            clock_offset_ms: Some(1),
            ..Default::default()
        });
        assert_ne!(a.digest(), before);
        // A user and a tenant with the same text are different items.
        let mut b = DigestBook::default();
        b.apply(&v1::PolicyUpdate {
            tenants: vec![tenant("same", &[])],
            users: vec![v1::SubmissionUser {
                address: "same".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn the_hash_is_stable() {
        // Pinned: edges and control nodes of different builds must agree.
        assert_eq!(hash(&[b"tenant", b"a"]), hash(&[b"tenant", b"a"]));
        assert_ne!(hash(&[b"ab", b"c"]), hash(&[b"a", b"bc"]));
        // Values from an independent implementation of the same function (Python).
        assert_eq!(hash(&[]), 0xf52a_15e9_a9b5_e89b);
        assert_eq!(hash(&[b"tenant", b"contoso"]), 0x6e41_0844_590e_e970);
    }
}
