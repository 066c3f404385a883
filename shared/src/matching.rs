//! Finding the connectors a session matches, by client IP and by certificate domain, with hash
//! lookups instead of a scan, so that a snapshot with a million connectors costs a session a few
//! dozen lookups.
//!
//! - IP: connectors' networks are grouped by prefix length; a lookup masks the address to each
//!   length present (at most 33 for IPv4, 129 for IPv6) and probes one map per length.
//! - Certificate: `contoso.com` is looked up exactly; `*.contoso.com` is keyed by `contoso.com`
//!   and found by probing the name and each of its parent domains.
//!
//! The maps are persistent ([`crate::PersistentMap`]): adding or removing one connector sets
//! its few keys in an overlay and shares everything else with the index it was derived from, so a policy change costs the edge O(change x log n) and the snapshot sessions
//! still hold keeps its index intact. Each key holds the (few) connectors sharing it, ordered by
//! id: changing one of them copies that small list.

use std::cmp::Ordering;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::{Connector, Domain, PersistentMap};

/// The connectors that share one index key, ordered by [`crate::ConnectorId`], each once.
type Hits = Vec<Arc<Connector>>;

/// An index over the enabled connectors of a snapshot. Lookups return each matching connector
/// once, ordered by id (the order of the control plane's connector list, so that "the first
/// connector matched" means the same on every edge). Disabled connectors are not indexed.
#[derive(Clone, Debug, Default)]
pub struct ConnectorIndex {
    /// (prefix length, masked network → connectors), longest prefix first, no empty map.
    v4: Vec<(u8, PersistentMap<u32, Hits>)>,
    v6: Vec<(u8, PersistentMap<u128, Hits>)>,
    exact: PersistentMap<Domain, Hits>,
    wildcard: PersistentMap<Domain, Hits>,
}

fn mask4(a: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        a & (u32::MAX << (32 - u32::from(len)))
    }
}

fn mask6(a: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        a & (u128::MAX << (128 - u32::from(len)))
    }
}

/// Orders connectors as their ids' text (`tenant/name`, as [`crate::ConnectorId`] orders)
/// without building the ids.
pub fn by_id(a: &Connector, b: &Connector) -> Ordering {
    fn text(c: &Connector) -> impl Iterator<Item = u8> + '_ {
        let t = c.tenant.as_str().bytes().chain(std::iter::once(b'/'));
        t.chain(c.name.bytes())
    }
    if a.tenant == b.tenant {
        a.name.cmp(&b.name)
    } else {
        text(a).cmp(text(b))
    }
}

/// Whether `a` and `b` are the same connector (same tenant and name).
fn same(a: &Connector, b: &Connector) -> bool {
    a.tenant == b.tenant && a.name == b.name
}

/// Adds `c` to a key's connectors, keeping them ordered by id (a connector listed twice under
/// one key, by two networks that mask alike, is kept once).
fn add(hits: &mut Hits, c: &Arc<Connector>) {
    if let Err(at) = hits.binary_search_by(|h| by_id(h, c)) {
        hits.insert(at, Arc::clone(c));
    }
}

/// Inserts `c` under `key` of `map`, in place where the map's nodes are not shared.
fn link<K: Eq + std::hash::Hash + Clone>(
    map: &mut PersistentMap<K, Hits>,
    key: K,
    c: &Arc<Connector>,
) {
    match map.get_mut(&key) {
        Some(hits) => add(hits, c),
        None => map.insert_mut(key, vec![Arc::clone(c)]),
    }
}

/// Removes `c` from under `key` of `map`, and the key once it holds nothing.
fn unlink<K: Eq + std::hash::Hash + Clone>(
    map: &mut PersistentMap<K, Hits>,
    key: &K,
    c: &Connector,
) {
    let empty = match map.get(key) {
        None => return,
        Some(hits) if !hits.iter().any(|h| same(h, c)) => return,
        Some(hits) => hits.len() == 1,
    };
    if empty {
        map.remove_mut(key);
    } else if let Some(hits) = map.get_mut(key) {
        hits.retain(|h| !same(h, c));
    }
}

/// The map for prefix length `len` in a longest-first list, created when missing.
fn by_len<K: Eq + std::hash::Hash>(
    list: &mut Vec<(u8, PersistentMap<K, Hits>)>,
    len: u8,
) -> &mut PersistentMap<K, Hits> {
    let at = match list.iter().position(|(l, _)| *l <= len) {
        Some(at) if list[at].0 == len => at,
        Some(at) => {
            list.insert(at, (len, PersistentMap::default()));
            at
        }
        None => {
            list.push((len, PersistentMap::default()));
            list.len() - 1
        }
    };
    &mut list[at].1
}

/// Drops the maps of a longest-first list that hold nothing.
fn prune<K: Eq + std::hash::Hash>(list: &mut Vec<(u8, PersistentMap<K, Hits>)>) {
    list.retain(|(_, m)| !m.is_empty());
}

/// Sorts a lookup's connectors by id and keeps each once.
fn finish(mut out: Vec<&Connector>) -> Vec<&Connector> {
    if out.len() > 1 {
        out.sort_unstable_by(|a, b| by_id(a, b));
        out.dedup_by(|a, b| same(a, b));
    }
    out
}

impl ConnectorIndex {
    /// Indexes `connectors` from scratch.
    pub fn new(connectors: &[Arc<Connector>]) -> Self {
        let mut idx = Self::default();
        for c in connectors {
            idx.insert(c);
        }
        idx
    }

    /// Indexes `c` (nothing when it is disabled). Index the old version of a connector out with
    /// [`ConnectorIndex::remove`] first.
    pub fn insert(&mut self, c: &Arc<Connector>) {
        if !c.enabled {
            return;
        }
        for net in &c.sender_ip_addresses {
            match net {
                IpNet::V4(n) => {
                    let len = n.prefix_len();
                    link(
                        by_len(&mut self.v4, len),
                        mask4(u32::from(n.addr()), len),
                        c,
                    );
                }
                IpNet::V6(n) => {
                    let len = n.prefix_len();
                    link(
                        by_len(&mut self.v6, len),
                        mask6(u128::from(n.addr()), len),
                        c,
                    );
                }
            }
        }
        if let Some(name) = &c.tls_sender_certificate_name {
            let map = if name.is_wildcard() {
                &mut self.wildcard
            } else {
                &mut self.exact
            };
            link(map, name.domain().clone(), c);
        }
    }

    /// Removes what [`ConnectorIndex::insert`] added for `c` (the version that was indexed).
    pub fn remove(&mut self, c: &Connector) {
        if !c.enabled {
            return;
        }
        for net in &c.sender_ip_addresses {
            match net {
                IpNet::V4(n) => {
                    let len = n.prefix_len();
                    if let Some((_, map)) = self.v4.iter_mut().find(|(l, _)| *l == len) {
                        unlink(map, &mask4(u32::from(n.addr()), len), c);
                    }
                }
                IpNet::V6(n) => {
                    let len = n.prefix_len();
                    if let Some((_, map)) = self.v6.iter_mut().find(|(l, _)| *l == len) {
                        unlink(map, &mask6(u128::from(n.addr()), len), c);
                    }
                }
            }
        }
        prune(&mut self.v4);
        prune(&mut self.v6);
        if let Some(name) = &c.tls_sender_certificate_name {
            let map = if name.is_wildcard() {
                &mut self.wildcard
            } else {
                &mut self.exact
            };
            unlink(map, name.domain(), c);
        }
    }

    /// Connectors whose `sender-ip-addresses` contain `ip` (an IPv4-mapped IPv6 address counts
    /// as IPv4).
    pub fn by_ip(&self, ip: IpAddr) -> Vec<&Connector> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let mut out = Vec::new();
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                for (len, map) in &self.v4 {
                    if let Some(hit) = map.get(&mask4(a, *len)) {
                        out.extend(hit.iter().map(|c| &**c));
                    }
                }
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                for (len, map) in &self.v6 {
                    if let Some(hit) = map.get(&mask6(a, *len)) {
                        out.extend(hit.iter().map(|c| &**c));
                    }
                }
            }
        }
        finish(out)
    }

    /// Connectors whose `tls-sender-certificate-name` covers one of `domains` (the validated
    /// client certificate's names).
    pub fn by_certificate(&self, domains: &[String]) -> Vec<&Connector> {
        let mut out = Vec::new();
        for name in domains {
            let name = Domain::lookup_key(name);
            if let Some(hit) = self.exact.get(name.as_ref()) {
                out.extend(hit.iter().map(|c| &**c));
            }
            // `*.d` covers `d` and every name below it.
            let mut rest = name.as_ref();
            loop {
                if let Some(hit) = self.wildcard.get(rest) {
                    out.extend(hit.iter().map(|c| &**c));
                }
                match rest.split_once('.') {
                    Some((_, parent)) => rest = parent,
                    None => break,
                }
            }
        }
        finish(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CertName, ConnectorKind, TenantId};

    fn connector(name: &str, ips: &[&str], cert: Option<&str>, enabled: bool) -> Arc<Connector> {
        Arc::new(Connector {
            tenant: TenantId::new("t").unwrap(),
            name: name.into(),
            kind: ConnectorKind::OnPremises,
            enabled,
            sender_ip_addresses: ips
                .iter()
                .map(|i| Connector::parse_ip(i).unwrap())
                .collect(),
            tls_sender_certificate_name: cert.map(|c| CertName::new(c).unwrap()),
            sender_domains: vec![],
            require_tls: false,
            restrict_domains_to_ip_addresses: false,
            restrict_domains_to_certificate: false,
        })
    }

    /// The names of the connectors found, in the order found.
    fn names(found: Vec<&Connector>) -> Vec<&str> {
        found.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn ips_match_by_every_prefix_length() {
        let idx = ConnectorIndex::new(&[
            connector("a", &["192.0.2.0/24"], None, true),
            connector("b", &["192.0.2.7", "2001:db8::/32"], None, true),
            connector("c", &["0.0.0.0/0"], None, false),
            connector("d", &["10.0.0.0/8", "192.0.0.0/16"], None, true),
        ]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(names(idx.by_ip(ip("192.0.2.7"))), ["a", "b", "d"]);
        assert_eq!(names(idx.by_ip(ip("192.0.2.8"))), ["a", "d"]);
        assert_eq!(names(idx.by_ip(ip("::ffff:192.0.2.8"))), ["a", "d"]);
        assert_eq!(names(idx.by_ip(ip("2001:db8:1::5"))), ["b"]);
        assert!(idx.by_ip(ip("198.51.100.1")).is_empty());
    }

    #[test]
    fn certificate_names_exact_and_wildcard() {
        let idx = ConnectorIndex::new(&[
            connector("exact", &[], Some("mail.contoso.com"), true),
            connector("wild", &[], Some("*.contoso.com"), true),
            connector("other", &[], Some("*.fabrikam.com"), true),
        ]);
        let found = |n: &[&str]| {
            let n = n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            names(idx.by_certificate(&n))
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(found(&["MAIL.contoso.com"]), ["exact", "wild"]);
        assert_eq!(found(&["contoso.com"]), ["wild"]);
        assert_eq!(found(&["a.b.contoso.com"]), ["wild"]);
        assert!(found(&["xcontoso.com"]).is_empty());
        assert_eq!(
            found(&["x.fabrikam.com", "mail.contoso.com"]),
            ["exact", "other", "wild"]
        );
    }

    /// What a scan of `cs` finds for `ip` and `name`, as names in id order.
    fn scan(cs: &[Arc<Connector>], ip: IpAddr, name: &str) -> (Vec<String>, Vec<String>) {
        let mut by_ip: Vec<&Arc<Connector>> = cs
            .iter()
            .filter(|c| c.enabled && c.sender_ip_addresses.iter().any(|n| n.contains(&ip)))
            .collect();
        by_ip.sort_by(|a, b| by_id(a, b));
        let mut by_cert: Vec<&Arc<Connector>> = cs
            .iter()
            .filter(|c| {
                c.enabled
                    && c.tls_sender_certificate_name
                        .as_ref()
                        .is_some_and(|n| n.covers(name))
            })
            .collect();
        by_cert.sort_by(|a, b| by_id(a, b));
        let names = |v: Vec<&Arc<Connector>>| v.iter().map(|c| c.name.clone()).collect();
        (names(by_ip), names(by_cert))
    }

    fn found(idx: &ConnectorIndex, ip: IpAddr, name: &str) -> (Vec<String>, Vec<String>) {
        let names = |v: Vec<&Connector>| v.iter().map(|c| c.name.clone()).collect();
        (
            names(idx.by_ip(ip)),
            names(idx.by_certificate(&[name.to_owned()])),
        )
    }

    #[test]
    fn the_index_agrees_with_a_scan() {
        let make = |i: u32, shift: u32| {
            let net = format!("10.{}.{}.0/{}", (i + shift) % 7, i % 11, 16 + i % 17);
            let cert = format!(
                "{}h{}.example",
                if i.is_multiple_of(2) { "*." } else { "" },
                i % 13
            );
            connector(
                &format!("{i:03}"),
                &[&net],
                Some(&cert),
                !(i + shift).is_multiple_of(5),
            )
        };
        let mut cs: Vec<Arc<Connector>> = (0..300).map(|i| make(i, 0)).collect();
        let mut idx = ConnectorIndex::new(&cs);
        let probe = |idx: &ConnectorIndex, cs: &[Arc<Connector>]| {
            for j in 0..2000u32 {
                let ip: IpAddr = format!("10.{}.{}.{}", j % 7, (j / 7) % 11, j % 256)
                    .parse()
                    .unwrap();
                let name = format!("m.h{}.example", j % 13);
                assert_eq!(found(idx, ip, &name), scan(cs, ip, &name), "{ip} {name}");
            }
        };
        probe(&idx, &cs);
        // Changed in place: every third connector moves (and may be disabled), every seventh
        // goes; the index derived so agrees with a scan, and the one it came from is intact.
        let before = idx.clone();
        for i in 0..300u32 {
            if i.is_multiple_of(3) {
                idx.remove(&cs[i as usize]);
                cs[i as usize] = make(i, 1);
                idx.insert(&cs[i as usize]);
            }
        }
        for i in (0..300u32).rev() {
            if i.is_multiple_of(7) {
                idx.remove(&cs.remove(i as usize));
            }
        }
        probe(&idx, &cs);
        probe(&before, &(0..300).map(|i| make(i, 0)).collect::<Vec<_>>());
    }
}
