//! Applying changes: a snapshot derived change by change answers every query as one built from
//! scratch with the same contents, the snapshot it was derived from is left as it was, and each
//! rule a change can break is refused.

use std::collections::BTreeMap;

use super::*;
use crate::exchange::Build;
use crate::{CertName, ConnectorKind};

/// SplitMix64: a seeded generator, enough to draw test cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const TENANTS: usize = 8;
const DOMAINS: usize = 24;
const CONNECTOR_NAMES: usize = 5;
const USERS: usize = 12;
const SERVERS: usize = 4;

fn tid(i: usize) -> TenantId {
    TenantId::new(&format!("t{i}")).unwrap()
}

fn domain(i: usize) -> Domain {
    Domain::new(&format!("d{i}.test")).unwrap()
}

fn address(i: usize) -> String {
    format!("u{i}@x.test")
}

/// An IP network from a small pool, so connectors overlap.
fn net(r: &mut Rng) -> ipnet::IpNet {
    let a = r.below(4);
    let b = r.below(4);
    let text = match r.below(5) {
        0 => format!("10.0.{a}.0/24"),
        1 => format!("10.0.{a}.{b}"),
        2 => format!("10.{a}.0.0/16"),
        3 => format!("2001:db8:{a}::/48"),
        _ => "0.0.0.0/0".to_owned(),
    };
    Connector::parse_ip(&text).unwrap()
}

/// The IPs every step probes.
fn probe_ips() -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    for a in 0..4 {
        for b in 0..4 {
            out.push(format!("10.0.{a}.{b}").parse().unwrap());
            out.push(format!("::ffff:10.{a}.0.{b}").parse().unwrap());
        }
        out.push(format!("2001:db8:{a}::1").parse().unwrap());
        out.push(format!("10.{a}.9.9").parse().unwrap());
    }
    out.push("192.0.2.1".parse().unwrap());
    out
}

/// The certificate names every step probes.
fn probe_certs() -> Vec<Vec<String>> {
    let mut out = vec![vec![]];
    for k in 0..3 {
        out.push(vec![format!("m.h{k}.example")]);
        out.push(vec![format!("X.h{k}.example")]);
        out.push(vec![
            format!("h{k}.example"),
            format!("m.h{}.example", k + 1),
        ]);
    }
    out
}

/// Everything the policy holds, as plain maps: what the snapshot under test should answer.
#[derive(Clone, Default)]
struct Model {
    tenants: BTreeMap<TenantId, Tenant>,
    connectors: BTreeMap<ConnectorId, Connector>,
    users: BTreeMap<String, SubmissionUser>,
    restricted: BTreeMap<(EntityKind, TenantId, String), RestrictedEntity>,
    enforced: BTreeMap<(TenantId, String), Enforced>,
    speed_bump: Vec<SpeedBumpStep>,
    onprem: OnpremSettings,
    clock_offset_ms: i64,
}

impl Model {
    /// The model as a full snapshot: a reset change, in an order of its own (reversed) so that
    /// nothing depends on the order of a change's lists.
    fn full(&self, version: u64) -> PolicyChange {
        PolicyChange {
            version,
            reset: true,
            tenants: self.tenants.values().rev().cloned().collect(),
            connectors: self.connectors.values().rev().cloned().collect(),
            users: self.users.values().rev().cloned().collect(),
            restricted: self.restricted.values().rev().cloned().collect(),
            enforced: self.enforced.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            speed_bump: Some(self.speed_bump.iter().rev().copied().collect()),
            onprem: Some(self.onprem.clone()),
            clock_offset_ms: Some(self.clock_offset_ms),
            ..Default::default()
        }
    }

    /// Applies a change the way its documentation says (deletions, then upserts).
    fn apply(&mut self, c: &PolicyChange) {
        for id in &c.deleted_connectors {
            self.connectors.remove(id);
        }
        for a in &c.deleted_users {
            self.users.remove(&a.to_lowercase());
        }
        for k in &c.unrestricted {
            self.restricted.remove(k);
        }
        for (t, s) in &c.unenforced {
            self.enforced.remove(&(t.clone(), s.to_ascii_lowercase()));
        }
        for t in &c.deleted_tenants {
            self.tenants.remove(t);
        }
        for t in &c.tenants {
            self.tenants.insert(t.id.clone(), t.clone());
        }
        for x in &c.connectors {
            self.connectors.insert(x.id(), x.clone());
        }
        for u in &c.users {
            self.users.insert(u.address.to_lowercase(), u.clone());
        }
        for r in &c.restricted {
            self.restricted
                .insert((r.kind, r.tenant.clone(), r.name.clone()), r.clone());
        }
        for ((t, s), e) in &c.enforced {
            self.enforced
                .insert((t.clone(), s.to_ascii_lowercase()), *e);
        }
        if let Some(s) = &c.speed_bump {
            let mut s = s.clone();
            s.sort_by_key(|x| x.day);
            self.speed_bump = s;
        }
        if let Some(o) = &c.onprem {
            self.onprem = o.clone();
        }
        if let Some(o) = c.clock_offset_ms {
            self.clock_offset_ms = o;
        }
    }

    /// Which tenant holds each domain.
    fn holder(&self, d: &Domain) -> Option<&TenantId> {
        self.tenants
            .values()
            .find(|t| t.accepted_domains.contains(d))
            .map(|t| &t.id)
    }
}

/// A random valid change of `m` at `version`.
fn random_change(r: &mut Rng, m: &Model, version: u64) -> PolicyChange {
    let mut c = PolicyChange {
        version,
        ..Default::default()
    };
    // Tenants: delete one (with its connectors and users), or upsert a few, moving domains
    // between them.
    let mut deleted = None;
    if r.chance(15) && !m.tenants.is_empty() {
        let t = m
            .tenants
            .keys()
            .nth(r.below(m.tenants.len()))
            .unwrap()
            .clone();
        c.deleted_connectors
            .extend(m.connectors.keys().filter(|id| id.tenant == t).cloned());
        c.deleted_users.extend(
            m.users
                .values()
                .filter(|u| u.tenant == t)
                .map(|u| u.address.to_uppercase()),
        );
        c.deleted_tenants.push(t.clone());
        deleted = Some(t);
    } else if r.chance(40) {
        let mut ids: Vec<usize> = (0..1 + r.below(3)).map(|_| r.below(TENANTS)).collect();
        ids.sort_unstable();
        ids.dedup();
        let upserted: Vec<TenantId> = ids.iter().map(|&i| tid(i)).collect();
        let mut domains = vec![Vec::new(); ids.len()];
        for d in (0..DOMAINS).map(domain) {
            let free = m.holder(&d).is_none_or(|h| upserted.contains(h));
            if free && r.chance(35) {
                domains[r.below(ids.len())].push(d);
            }
        }
        for (id, ds) in upserted.into_iter().zip(domains) {
            c.tenants.push(Tenant {
                display_name: format!("{id} v{version}"),
                id,
                accepted_domains: ds,
                allow_legacy_tls_clients: r.chance(50),
            });
        }
    }
    let exists = |c: &PolicyChange, t: &TenantId| {
        deleted.as_ref() != Some(t)
            && (m.tenants.contains_key(t) || c.tenants.iter().any(|x| x.id == *t))
    };
    // Connectors.
    for _ in 0..r.below(4) {
        let t = tid(r.below(TENANTS));
        let name = format!("c{}", r.below(CONNECTOR_NAMES));
        let id = ConnectorId::new(t.clone(), name.clone());
        if c.connectors.iter().any(|x| x.id() == id) || c.deleted_connectors.contains(&id) {
            continue;
        }
        if r.chance(25) {
            c.deleted_connectors.push(id);
            continue;
        }
        if !exists(&c, &t) {
            continue;
        }
        let k = r.below(3);
        let cert = match r.below(3) {
            0 => None,
            1 => Some(CertName::new(&format!("*.h{k}.example")).unwrap()),
            _ => Some(CertName::new(&format!("m.h{k}.example")).unwrap()),
        };
        c.connectors.push(Connector {
            tenant: t,
            name,
            kind: if r.chance(50) {
                ConnectorKind::Partner
            } else {
                ConnectorKind::OnPremises
            },
            enabled: r.chance(80),
            sender_ip_addresses: (0..r.below(3)).map(|_| net(r)).collect(),
            tls_sender_certificate_name: cert,
            sender_domains: match r.below(3) {
                0 => vec![],
                1 => vec!["*".into()],
                _ => vec![format!("d{}.test", r.below(DOMAINS))],
            },
            require_tls: r.chance(50),
            restrict_domains_to_ip_addresses: r.chance(50),
            restrict_domains_to_certificate: r.chance(50),
        });
    }
    // Users.
    for _ in 0..r.below(3) {
        let a = address(r.below(USERS));
        if r.chance(30) {
            c.deleted_users.push(a);
            continue;
        }
        let t = tid(r.below(TENANTS));
        if !exists(&c, &t) || c.deleted_users.iter().any(|d| d.eq_ignore_ascii_case(&a)) {
            continue;
        }
        c.users.push(SubmissionUser {
            tenant: t,
            address: a,
            password_hash: format!("h{version}"),
            send_as: vec![],
        });
    }
    // Restrictions (of any tenant: restrictions are not checked against tenants).
    for _ in 0..r.below(3) {
        let kind = if r.chance(50) {
            EntityKind::Connector
        } else {
            EntityKind::User
        };
        let t = tid(r.below(TENANTS));
        let name = if kind == EntityKind::Connector {
            format!("c{}", r.below(CONNECTOR_NAMES))
        } else {
            address(r.below(USERS))
        };
        if r.chance(40) {
            c.unrestricted.push((kind, t, name));
        } else if !c.unrestricted.contains(&(kind, t.clone(), name.clone())) {
            c.restricted.push(RestrictedEntity {
                tenant: t,
                kind,
                name,
                reason: format!("v{version}"),
                since_ms: 0,
                until_ms: r.chance(50).then_some(1_000),
            });
        }
    }
    // Enforced servers, named in any case.
    for _ in 0..r.below(3) {
        let key = (
            tid(r.below(TENANTS)),
            format!("Exch{}.LOCAL", r.below(SERVERS)),
        );
        if r.chance(40) {
            c.unenforced.push(key);
        } else {
            let stage = 1 + r.below(8) as u32;
            c.enforced.push((
                key,
                Enforced {
                    stage,
                    throttle: r.below(30) as u8,
                    block: r.below(30) as u8,
                },
            ));
        }
    }
    if r.chance(10) {
        let mut days: Vec<i64> = (0..r.below(4)).map(|_| r.below(10) as i64).collect();
        days.sort_unstable();
        days.dedup();
        c.speed_bump = Some(
            days.into_iter()
                .rev()
                .map(|day| SpeedBumpStep {
                    day,
                    percent: r.below(101) as u8,
                })
                .collect(),
        );
    }
    if r.chance(10) {
        c.onprem = Some(OnpremSettings {
            baseline: Baseline::default(),
            service: format!("S{version}"),
            all_connectors: r.chance(50),
        });
    }
    if r.chance(10) {
        c.clock_offset_ms = Some(r.below(1000) as i64);
    }
    c
}

/// Every answer the snapshot gives to the probes, one line each.
fn answers(s: &PolicySnapshot) -> Vec<String> {
    let mut out = vec![format!(
        "counts {} {} {} {} {} {}",
        s.tenant_count(),
        s.connector_count(),
        s.user_count(),
        s.restricted_count(EntityKind::Connector),
        s.restricted_count(EntityKind::User),
        s.onprem().enforced.size(),
    )];
    for i in 0..TENANTS {
        out.push(format!("tenant {i} {:?}", s.tenant(&tid(i))));
    }
    for i in 0..DOMAINS {
        let d = format!("D{i}.test.");
        out.push(format!("domain {d} {:?}", s.tenant_for_domain(&d)));
        out.push(format!(
            "inbound {d} {:?}",
            s.inbound(&d)
                .map(|(t, scopes)| (&t.id, scopes.collect::<Vec<_>>()))
        ));
    }
    for ip in probe_ips() {
        out.push(format!("ip {ip} {:?}", s.connectors_by_ip(ip)));
    }
    for names in probe_certs() {
        out.push(format!(
            "cert {names:?} {:?}",
            s.connectors_by_certificate(&names)
        ));
    }
    for i in 0..USERS {
        out.push(format!("user {i} {:?}", s.user(&address(i).to_uppercase())));
    }
    for t in 0..TENANTS {
        for (kind, names) in [
            (
                EntityKind::Connector,
                (0..CONNECTOR_NAMES)
                    .map(|i| format!("c{i}"))
                    .collect::<Vec<_>>(),
            ),
            (EntityKind::User, (0..USERS).map(address).collect()),
        ] {
            for n in names {
                for now in [0, 5_000] {
                    let r = s.restriction(kind, &tid(t), &n, now);
                    out.push(format!("restriction {kind:?} {t} {n} {now} {r:?}"));
                }
            }
        }
        for k in 0..SERVERS {
            let server = format!("EXCH{k}.local");
            let unsupported = Build::parse("15.0.1497.48").unwrap();
            out.push(format!(
                "onprem {t} {server} {:?} {:?}",
                s.onprem()
                    .enforced
                    .get(&(tid(t), server.to_ascii_lowercase())),
                s.onprem()
                    .verdict(&tid(t), &server, &unsupported, 7_200_000)
            ));
        }
    }
    out.push(format!(
        "settings {:?} {} {} {:?} {}",
        s.onprem().baseline,
        s.onprem().service,
        s.onprem().all_connectors,
        s.speed_bump(),
        s.clock_offset_ms(),
    ));
    let mut all: Vec<String> = s.connectors().map(|c| format!("{c:?}")).collect();
    all.sort();
    out.extend(all);
    let mut all: Vec<String> = s.restrictions().map(|r| format!("{r:?}")).collect();
    all.sort();
    out.extend(all);
    out
}

/// A change that breaks one rule, or `None` when the model offers no way to break it.
fn invalid_change(r: &mut Rng, m: &Model, version: u64) -> Option<(PolicyChange, &'static str)> {
    let base = PolicyChange {
        version,
        ..Default::default()
    };
    let held: Vec<(&Domain, &TenantId)> = m
        .tenants
        .values()
        .flat_map(|t| t.accepted_domains.iter().map(move |d| (d, &t.id)))
        .collect();
    match r.below(5) {
        0 => {
            let (d, holder) = held.get(r.below(held.len().max(1)))?;
            let other = (0..TENANTS).map(tid).find(|t| t != *holder)?;
            let mut t = m.tenants.get(&other).cloned().unwrap_or(Tenant {
                id: other,
                display_name: "x".into(),
                accepted_domains: vec![],
                allow_legacy_tls_clients: false,
            });
            t.accepted_domains.push((*d).clone());
            Some((
                PolicyChange {
                    tenants: vec![t],
                    ..base
                },
                "domain",
            ))
        }
        1 => {
            let missing = (0..TENANTS).map(tid).find(|t| !m.tenants.contains_key(t))?;
            Some((
                PolicyChange {
                    users: vec![SubmissionUser {
                        tenant: missing,
                        address: "z@x.test".into(),
                        password_hash: String::new(),
                        send_as: vec![],
                    }],
                    ..base
                },
                "tenant",
            ))
        }
        2 => {
            let c = m.connectors.values().next()?;
            Some((
                PolicyChange {
                    deleted_tenants: vec![c.tenant.clone()],
                    ..base
                },
                "in use",
            ))
        }
        3 => Some((
            PolicyChange {
                speed_bump: Some(vec![
                    SpeedBumpStep { day: 3, percent: 1 },
                    SpeedBumpStep { day: 3, percent: 2 },
                ]),
                ..base
            },
            "schedule",
        )),
        _ => {
            let c = m.connectors.values().next()?;
            Some((
                PolicyChange {
                    connectors: vec![c.clone(), c.clone()],
                    ..base
                },
                "duplicate",
            ))
        }
    }
}

#[test]
fn changes_agree_with_a_snapshot_built_from_scratch() {
    for seed in 0..3u64 {
        let mut r = Rng(seed);
        let mut model = Model::default();
        let mut snap = PolicySnapshot::default();
        for version in 1..=150u64 {
            let before = answers(&snap);
            if r.chance(10) {
                if let Some((bad, what)) = invalid_change(&mut r, &model, version) {
                    assert!(snap.apply(&bad).is_err(), "{what} at {version}: {bad:?}");
                    assert_eq!(
                        answers(&snap),
                        before,
                        "a refused change touched the snapshot"
                    );
                    continue;
                }
            }
            let change = random_change(&mut r, &model, version);
            let next = snap
                .apply(&change)
                .unwrap_or_else(|e| panic!("seed {seed} v{version}: {e}: {change:?}"));
            // Applying it again changes nothing (state-based).
            assert_eq!(answers(&next.apply(&change).unwrap()), answers(&next));
            model.apply(&change);
            let fresh = PolicySnapshot::from_change(&model.full(version)).unwrap();
            assert_eq!(next.version(), version);
            assert_eq!(
                answers(&next),
                answers(&fresh),
                "seed {seed} v{version}: {change:?}"
            );
            assert_eq!(next.connector_count(), model.connectors.len());
            assert_eq!(next.tenant_count(), model.tenants.len());
            // The snapshot it came from is as it was.
            assert_eq!(answers(&snap), before, "seed {seed} v{version}");
            snap = next;
        }
        // A reset drops everything the change does not list.
        let empty = snap
            .apply(&PolicyChange {
                version: 999,
                reset: true,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(answers(&empty), answers(&PolicySnapshot::default()));
    }
}

fn tenant(id: &str, domains: &[&str]) -> Tenant {
    Tenant {
        id: TenantId::new(id).unwrap(),
        display_name: id.into(),
        accepted_domains: domains.iter().map(|d| Domain::new(d).unwrap()).collect(),
        allow_legacy_tls_clients: false,
    }
}

fn connector(tenant: &str, name: &str) -> Connector {
    Connector {
        tenant: TenantId::new(tenant).unwrap(),
        name: name.into(),
        kind: ConnectorKind::Partner,
        enabled: true,
        sender_ip_addresses: vec![Connector::parse_ip("192.0.2.0/24").unwrap()],
        tls_sender_certificate_name: None,
        sender_domains: vec!["*".into()],
        require_tls: false,
        restrict_domains_to_ip_addresses: false,
        restrict_domains_to_certificate: false,
    }
}

fn user(tenant: &str, address: &str) -> SubmissionUser {
    SubmissionUser {
        tenant: TenantId::new(tenant).unwrap(),
        address: address.into(),
        password_hash: String::new(),
        send_as: vec![],
    }
}

#[test]
fn each_rule_a_change_can_break_is_refused() {
    let base = PolicySnapshot::from_change(&PolicyChange {
        version: 1,
        reset: true,
        tenants: vec![tenant("a", &["a.test"]), tenant("b", &["b.test"])],
        connectors: vec![connector("a", "p")],
        users: vec![user("b", "u@b.test")],
        ..Default::default()
    })
    .unwrap();
    let before = answers(&base);
    let change = |f: &dyn Fn(&mut PolicyChange)| {
        let mut c = PolicyChange {
            version: 2,
            ..Default::default()
        };
        f(&mut c);
        base.apply(&c)
    };
    let claimed = |e| matches!(e, Err(SnapshotError::DomainClaimedTwice { .. }));
    assert!(claimed(change(
        &|c| c.tenants = vec![tenant("b", &["a.test", "b.test"])]
    )));
    assert!(claimed(change(
        &|c| c.tenants = vec![tenant("c", &["A.test"])]
    )));
    assert!(claimed(change(&|c| {
        c.tenants = vec![tenant("c", &["c.test"]), tenant("d", &["c.test"])]
    })));
    assert!(claimed(change(
        &|c| c.tenants = vec![tenant("c", &["c.test", "c.test"])]
    )));
    assert_eq!(
        change(&|c| c.tenants = vec![tenant("c", &[]), tenant("c", &[])]).err(),
        Some(SnapshotError::DuplicateTenant(TenantId::new("c").unwrap()))
    );
    assert_eq!(
        change(&|c| c.connectors = vec![connector("zz", "p")]).err(),
        Some(SnapshotError::UnknownTenant(TenantId::new("zz").unwrap()))
    );
    assert_eq!(
        change(&|c| c.users = vec![user("zz", "v@zz.test")]).err(),
        Some(SnapshotError::UnknownTenant(TenantId::new("zz").unwrap()))
    );
    assert!(matches!(
        change(&|c| c.connectors = vec![connector("a", "q"), connector("a", "q")]),
        Err(SnapshotError::DuplicateConnector(_))
    ));
    assert!(matches!(
        change(&|c| {
            c.speed_bump = Some(vec![
                SpeedBumpStep { day: 9, percent: 1 },
                SpeedBumpStep { day: 9, percent: 5 },
            ])
        }),
        Err(SnapshotError::BadSchedule(_))
    ));
    // A tenant with connectors or users left cannot go; a connector of a tenant deleted in
    // the same change is refused too.
    assert_eq!(
        change(&|c| c.deleted_tenants = vec![TenantId::new("a").unwrap()]).err(),
        Some(SnapshotError::TenantInUse {
            tenant: TenantId::new("a").unwrap(),
            connectors: 1,
            users: 0,
        })
    );
    assert!(matches!(
        change(&|c| c.deleted_tenants = vec![TenantId::new("b").unwrap()]),
        Err(SnapshotError::TenantInUse { users: 1, .. })
    ));
    assert!(matches!(
        change(&|c| {
            c.deleted_tenants = vec![TenantId::new("a").unwrap()];
            c.deleted_connectors = vec![ConnectorId::parse("a/p").unwrap()];
            c.connectors = vec![connector("a", "q")];
        }),
        Err(SnapshotError::UnknownTenant(_))
    ));
    assert_eq!(
        answers(&base),
        before,
        "a refused change touched the snapshot"
    );
    // Allowed: a domain moves between tenants in one change (in either order), and a tenant
    // goes with its connectors and users.
    for order in [["a", "b"], ["b", "a"]] {
        let moved = change(&|c| {
            c.tenants = order
                .iter()
                .map(|&t| match t {
                    "a" => tenant("a", &[]),
                    _ => tenant("b", &["a.test", "b.test"]),
                })
                .collect()
        })
        .unwrap();
        assert_eq!(moved.tenant_for_domain("a.test").unwrap().id.as_str(), "b");
        assert!(moved.inbound("a.test").unwrap().1.next().is_none());
    }
    let gone = change(&|c| {
        c.deleted_tenants = vec![TenantId::new("a").unwrap(), TenantId::new("b").unwrap()];
        c.deleted_connectors = vec![ConnectorId::parse("a/p").unwrap()];
        c.deleted_users = vec!["U@b.test".into()];
    })
    .unwrap();
    assert_eq!((gone.tenant_count(), gone.connector_count()), (0, 0));
    assert!(gone.tenant_for_domain("a.test").is_none());
    assert!(gone
        .connectors_by_ip("192.0.2.1".parse().unwrap())
        .is_empty());
}
