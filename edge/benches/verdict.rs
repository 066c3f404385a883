//! Verdict cost on a large snapshot, and what that snapshot costs an edge to take in.
//!
//! `cargo bench -p moat-edge --bench verdict` builds a snapshot of 100,000 tenants with
//! 1,000,000 accepted domains and 1,000,000 connectors (the shapes below), then:
//!
//! - criterion groups for the mean cost of one session's verdicts (connector lookup by IP and
//!   certificate, MAIL, RCPT) in five situations;
//! - a per-call distribution (p50/p99/p99.9/max over 200,000 calls per situation, each timed on
//!   its own, clients and tenants drawn at random so caches do not flatter the result);
//! - the snapshot's wire size, the heap it occupies (live bytes, by a counting allocator), and
//!   the time of each step of a swap: decode, build the indexes, publish, drop the previous
//!   snapshot;
//! - the time to derive the next snapshot from a one-connector change (a block and a connector
//!   upsert, as `PolicySnapshot::apply` does on an edge that watches changes), and the heap
//!   that new snapshot adds beside the one it shares structure with.
//!
//! The figures are printed as one JSON object on a line starting with `verdict-bench:`.
//! Under `cargo test --benches` (CI) it runs once on a snapshot a hundred times smaller, to
//! prove it works; nothing asserts a timing.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::Criterion;
use moat_edge::session::command::Address;
use moat_edge::verdict::{self, Client};
use moat_proto::convert::{connector_to_wire, restricted_to_wire, tenant_to_wire};
use moat_proto::v1;
use moat_shared::{
    CertName, Connector, ConnectorKind, Domain, EntityKind, PolicyChange, PolicyHandle,
    PolicySnapshot, RestrictedEntity, Tenant, TenantId,
};
use prost::Message;

/// Counts live heap bytes, so the snapshot's footprint is what it holds, not what the allocator
/// kept from the decoding.
#[global_allocator]
static HEAP: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// Domains and connectors per tenant.
const PER_TENANT: usize = 10;

/// The snapshot's shape for `tenants` tenants. Tenant `t`:
/// - accepted domains `d0.t{t}.example` … `d9.t{t}.example`;
/// - connectors 0–3: OnPremises, one IPv4 /32 each (10.0.0.0/8);
/// - connector 4: OnPremises, a /24 (11.0.0.0/8 and up);
/// - connector 5: OnPremises, an IPv6 /64;
/// - connector 6: OnPremises, certificate `*.t{t}.example`;
/// - connector 7: OnPremises, certificate `mail.d0.t{t}.example`;
/// - connectors 8–9: Partner, one /32 each (100.64.0.0/10), scoping `p{k}.partner{t}.example`
///   restricted to its IP, TLS required.
///
/// One connector in a hundred is restricted.
fn wire(tenants: usize) -> v1::PolicySnapshot {
    let mut snap = v1::PolicySnapshot {
        version: 2,
        changed_at_ms: 1,
        ..Default::default()
    };
    for t in 0..tenants {
        let id = TenantId::new(&format!("t{t}")).expect("tenant id");
        snap.tenants.push(tenant_to_wire(&Tenant {
            id: id.clone(),
            display_name: format!("Tenant {t}"),
            accepted_domains: (0..PER_TENANT)
                .map(|d| Domain::new(&format!("d{d}.t{t}.example")).expect("domain"))
                .collect(),
            allow_legacy_tls_clients: t % 7 == 0,
        }));
        for k in 0..PER_TENANT {
            let mut c = Connector::new(id.clone(), format!("c{k}"), ConnectorKind::OnPremises);
            match k {
                0..=3 => c.sender_ip_addresses = vec![net(&onprem_ip(t, k).to_string())],
                4 => c.sender_ip_addresses = vec![net(&format!("{}/24", slash24(t)))],
                5 => {
                    c.sender_ip_addresses = vec![net(&format!(
                        "2001:db8:{:x}:{:x}::/64",
                        t >> 16,
                        t & 0xffff
                    ))]
                }
                6 => c.tls_sender_certificate_name = Some(cert(&format!("*.t{t}.example"))),
                7 => c.tls_sender_certificate_name = Some(cert(&format!("mail.d0.t{t}.example"))),
                _ => {
                    c.kind = ConnectorKind::Partner;
                    c.sender_ip_addresses = vec![net(&partner_ip(t, k).to_string())];
                    c.sender_domains = vec![format!("p{k}.partner{t}.example")];
                    c.restrict_domains_to_ip_addresses = true;
                    c.require_tls = true;
                }
            }
            snap.connectors.push(connector_to_wire(&c));
            if (t * PER_TENANT + k) % 100 == 99 {
                snap.restricted.push(restricted_to_wire(&RestrictedEntity {
                    tenant: id.clone(),
                    kind: EntityKind::Connector,
                    name: c.name.clone(),
                    reason: "benchmark".into(),
                    since_ms: 0,
                    until_ms: None,
                }));
            }
        }
    }
    snap
}

fn net(s: &str) -> ipnet::IpNet {
    Connector::parse_ip(s).expect("network")
}

fn cert(s: &str) -> CertName {
    CertName::new(s).expect("certificate name")
}

fn onprem_ip(t: usize, k: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + (t * 4 + k) as u32)
}

fn slash24(t: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0b00_0000 + ((t as u32) << 8))
}

fn partner_ip(t: usize, k: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x6440_0000 + (t * 2 + k - 8) as u32)
}

fn addr(local: &str, domain: String) -> Address {
    Address {
        local: local.into(),
        domain,
    }
}

/// One session's facts, drawn for tenant `t`.
struct Case {
    ip: IpAddr,
    certs: Vec<String>,
    tls: bool,
    from: Address,
    rcpt: Address,
}

/// The situations measured, each a function of a random tenant and a random number.
/// A situation: its name, and the session it makes of a tenant and a random number.
type Situation = (&'static str, fn(usize, u64) -> Case);

const SITUATIONS: [Situation; 5] = [
    ("inbound-from-internet", |t, r| Case {
        ip: IpAddr::V4(Ipv4Addr::from(0xcb00_7100 + (r as u32 & 0xff))),
        certs: vec![],
        tls: true,
        from: addr("a", format!("sender{r}.example.net")),
        rcpt: addr("u", format!("d{}.t{t}.example", r % 10)),
    }),
    ("inbound-through-partner", |t, r| Case {
        ip: IpAddr::V4(partner_ip(t, 8)),
        certs: vec![],
        tls: true,
        from: addr("a", format!("p8.partner{t}.example")),
        rcpt: addr("u", format!("d{}.t{t}.example", r % 10)),
    }),
    ("relay-onprem-by-ip", |t, r| Case {
        ip: IpAddr::V4(onprem_ip(t, (r % 4) as usize)),
        certs: vec![],
        tls: false,
        from: addr("app", format!("d{}.t{t}.example", r % 10)),
        rcpt: addr("x", format!("customer{r}.example.org")),
    }),
    ("relay-onprem-by-certificate", |t, r| Case {
        ip: IpAddr::V4(Ipv4Addr::from(0xc633_6400 + (r as u32 & 0xff))),
        certs: vec![format!("mail.d0.t{t}.example")],
        tls: true,
        from: addr("", String::new()),
        rcpt: addr("x", format!("customer{r}.example.org")),
    }),
    ("relay-denied", |t, r| Case {
        ip: IpAddr::V4(onprem_ip(t, 0)),
        certs: vec![],
        tls: false,
        from: addr("a", format!("forged{r}.example.com")),
        rcpt: addr("x", format!("customer{r}.example.org")),
    }),
];

/// The verdicts of one session: its connectors, MAIL, one RCPT.
fn decide(snap: &PolicySnapshot, case: &Case, now_ms: i64) -> bool {
    let client = Client::new(snap, case.ip, &case.certs, case.tls);
    if verdict::connector::restricted(snap, &client, now_ms).is_err() {
        return false;
    }
    let from = (!case.from.domain.is_empty()).then_some(&case.from);
    verdict::relay::recipient(snap, &client, from, &case.rcpt).is_ok()
}

/// SplitMix64: the random tenants and numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not.
    let full = std::env::args().any(|a| a == "--bench");
    let tenants = if full { 100_000 } else { 1_000 };
    let calls = if full { 200_000 } else { 2_000 };

    // The control plane's side: the wire message.
    let wire_snapshot = wire(tenants);
    let encode_started = Instant::now();
    let bytes = wire_snapshot.encode_to_vec();
    let encode = encode_started.elapsed();
    drop(wire_snapshot);

    // The edge's side, step by step as in `control::watch_once`.
    let started = Instant::now();
    let decoded = v1::PolicySnapshot::decode(bytes.as_slice()).expect("decode");
    let decode = started.elapsed();
    let before = HEAP.allocated();
    let started = Instant::now();
    let snapshot = moat_proto::convert::snapshot_from_wire(&decoded).expect("valid snapshot");
    let build = started.elapsed();
    let footprint = HEAP.allocated().saturating_sub(before);
    drop(decoded);
    assert_eq!(snapshot.connector_count(), tenants * PER_TENANT);

    // One change: a connector is blocked and another one moves to a new address.
    let mut moved = snapshot
        .connectors()
        .find(|c| c.kind == ConnectorKind::OnPremises && !c.sender_ip_addresses.is_empty())
        .expect("a connector")
        .clone();
    moved.sender_ip_addresses = vec![Connector::parse_ip("192.0.2.99").expect("ip")];
    let change = PolicyChange {
        version: snapshot.version() + 1,
        connectors: vec![moved.clone()],
        restricted: vec![RestrictedEntity {
            tenant: moved.tenant.clone(),
            kind: EntityKind::Connector,
            name: moved.name.clone(),
            reason: "bench".into(),
            since_ms: 0,
            until_ms: None,
        }],
        ..Default::default()
    };
    let before = HEAP.allocated();
    let started = Instant::now();
    let changed = snapshot.apply(&change).expect("valid change");
    let apply = started.elapsed();
    let apply_heap = HEAP.allocated().saturating_sub(before);
    assert_eq!(
        changed
            .connectors_by_ip("192.0.2.99".parse().expect("ip"))
            .len(),
        1
    );
    drop(changed);

    let handle = PolicyHandle::new(snapshot);
    let next = moat_proto::convert::snapshot_from_wire(&{
        let mut d = v1::PolicySnapshot::decode(bytes.as_slice()).expect("decode");
        d.version += 1;
        d
    })
    .expect("valid snapshot");
    let previous = handle.load();
    let started = Instant::now();
    assert!(handle.publish(next));
    let publish = started.elapsed();
    // This is now the last reference to the previous snapshot: dropping it frees it.
    assert_eq!(std::sync::Arc::strong_count(&previous), 1);
    let started = Instant::now();
    drop(previous);
    let drop_previous = started.elapsed();
    let snap = handle.load();
    let now_ms = snap.now_ms();

    // Every situation decides as its name says at least once, so the measured paths are the
    // intended ones.
    let mut rng = Rng(7);
    let expect = [true, true, true, true, false];
    for ((name, make), want) in SITUATIONS.iter().zip(expect) {
        let t = (rng.next() % tenants as u64) as usize;
        assert_eq!(decide(&snap, &make(t, 1), now_ms), want, "{name}");
    }

    let mut criterion = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let mut group = criterion.benchmark_group("verdict");
    for (name, make) in SITUATIONS {
        let mut rng = Rng(11);
        let cases: Vec<Case> = (0..4096)
            .map(|_| make((rng.next() % tenants as u64) as usize, rng.next()))
            .collect();
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % cases.len();
                black_box(decide(&snap, black_box(&cases[i]), now_ms))
            })
        });
    }
    group.finish();

    // Per-call distribution: each call timed on its own (the clock's own cost, about 20 ns,
    // is included).
    let mut rows = Vec::new();
    for (name, make) in SITUATIONS {
        let mut rng = Rng(13);
        let cases: Vec<Case> = (0..calls)
            .map(|_| make((rng.next() % tenants as u64) as usize, rng.next()))
            .collect();
        let mut ns: Vec<u64> = cases
            .iter()
            .map(|case| {
                let started = Instant::now();
                black_box(decide(&snap, case, now_ms));
                started.elapsed().as_nanos() as u64
            })
            .collect();
        ns.sort_unstable();
        let at = |q: f64| ns[((ns.len() as f64 * q) as usize).min(ns.len() - 1)];
        rows.push(format!(
            r#"{{"situation":"{name}","calls":{},"p50_ns":{},"p99_ns":{},"p999_ns":{},"max_ns":{}}}"#,
            ns.len(),
            at(0.5),
            at(0.99),
            at(0.999),
            ns[ns.len() - 1]
        ));
    }
    println!(
        r#"verdict-bench: {{"tenants":{tenants},"accepted_domains":{},"connectors":{},"restricted":{},"wire_bytes":{},"snapshot_heap_bytes":{footprint},"encode_ms":{:.1},"decode_ms":{:.1},"build_ms":{:.1},"apply_change_us":{:.1},"apply_change_heap_bytes":{apply_heap},"publish_us":{:.1},"drop_previous_ms":{:.1},"verdicts":[{}]}}"#,
        tenants * PER_TENANT,
        snap.connector_count(),
        snap.restricted_count(EntityKind::Connector),
        bytes.len(),
        ms(encode),
        ms(decode),
        ms(build),
        apply.as_secs_f64() * 1e6,
        publish.as_secs_f64() * 1e6,
        ms(drop_previous),
        rows.join(",")
    );
}
