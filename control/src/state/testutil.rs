//! Builders shared by the state machine's tests.

use moat_shared::signal;
use moat_shared::{Connector, Domain, Tenant, TenantId};

use super::{Command, OutboundPolicy, Proposal, SignalBatch, State, User};

pub(super) fn tenant(id: &str, domains: &[&str]) -> Tenant {
    Tenant {
        id: TenantId::new(id).unwrap(),
        display_name: id.into(),
        accepted_domains: domains.iter().map(|d| Domain::new(d).unwrap()).collect(),
        allow_legacy_tls_clients: false,
    }
}

pub(super) fn p(at_ms: i64, command: Command) -> Proposal {
    Proposal {
        at_ms,
        actor: "test".into(),
        request_id: None,
        command,
    }
}

/// One edge's batch of counters `(scope, key, name, delta)`.
pub(super) fn batch(edge: &str, seq: u64, counters: &[(&str, &str, &str, u64)]) -> SignalBatch {
    SignalBatch {
        edge: edge.into(),
        seq,
        counters: counters
            .iter()
            .map(|(s, k, n, v)| (s.to_string(), k.to_string(), n.to_string(), *v))
            .collect(),
        onprem_evidence: Vec::new(),
        reports: Vec::new(),
        samples: Vec::new(),
    }
}

/// A `Signals` command of one batch.
pub(super) fn signals(edge: &str, seq: u64, counters: &[(&str, &str, &str, u64)]) -> Command {
    Command::Signals {
        batches: vec![batch(edge, seq, counters)],
    }
}

/// A state with tenant `a` (domain `a.test`), put at index and time 1.
fn with_tenant() -> State {
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
    s
}

pub(super) fn with_user(limits: OutboundPolicy) -> State {
    let mut s = with_tenant();
    let user = User {
        tenant: TenantId::new("a").unwrap(),
        address: "u@a.test".into(),
        password_hash: String::new(),
        send_as: vec![],
    };
    s.apply(2, &p(2, Command::PutUser { user }));
    let r = s.apply(
        3,
        &p(
            3,
            Command::SetOutboundPolicy {
                tenant: TenantId::new("a").unwrap(),
                policy: limits,
            },
        ),
    );
    assert!(r.result.is_ok(), "{r:?}");
    s
}

/// A tenant with one OnPremises connector, fed `per_minute(minute)` messages a minute (of
/// which `bad(minute)` from unprovisioned domains) for `minutes`, one entry a minute.
pub(super) fn simulate(
    minutes: i64,
    per_minute: impl Fn(i64) -> u64,
    bad: impl Fn(i64) -> u64,
) -> (State, Option<i64>) {
    let mut s = with_tenant();
    let connector = Connector {
        tenant: TenantId::new("a").unwrap(),
        name: "onprem".into(),
        kind: moat_shared::ConnectorKind::OnPremises,
        enabled: true,
        sender_ip_addresses: vec![Connector::parse_ip("192.0.2.0/24").unwrap()],
        tls_sender_certificate_name: None,
        sender_domains: vec![],
        require_tls: false,
        restrict_domains_to_ip_addresses: false,
        restrict_domains_to_certificate: false,
    };
    s.apply(2, &p(2, Command::PutConnector { connector }));
    let day0 = 20_000 * 86_400_000;
    let mut restricted_at = None;
    for m in 0..minutes {
        let (n, b) = (per_minute(m), bad(m));
        s.apply(
            3 + m as u64,
            &p(
                day0 + m * 60_000,
                signals(
                    "e1",
                    m as u64 + 1,
                    &[
                        (signal::CONNECTOR, "a/onprem", "messages", n),
                        (signal::CONNECTOR, "a/onprem", "unprovisioned", b),
                    ],
                ),
            ),
        );
        if restricted_at.is_none() && !s.restricted.is_empty() {
            restricted_at = Some(m);
        }
    }
    (s, restricted_at)
}

/// Edge `e9` saw server `exch16.corp.local` of build `build` on connector `a/onprem`.
pub(super) fn exchange_seen(seq: u64, build: &str) -> Command {
    let name = signal::onprem_server("exch16.corp.local", build);
    signals("e9", seq, &[(signal::ONPREM, "a/onprem", &name, 1)])
}

/// A tenant with an out-of-date server first seen at `t0`.
pub(super) fn detected_at(t0: i64) -> State {
    let (mut s, _) = simulate(1, |_| 1, |_| 0);
    s.apply(5000, &p(t0, exchange_seen(1, "15.1.2507.44")));
    s
}

/// Adopts the best-sourced built-in stage table at `index` and time `at_ms`, as the leader
/// does once every voter runs this release; tests of that table's behaviour start with it.
pub(super) fn adopt_stage_defaults(s: &mut State, index: u64, at_ms: i64) {
    let r = s.apply(index, &p(at_ms, Command::AdoptStageDefaults));
    assert!(r.result.is_ok(), "{r:?}");
    assert!(s.onprem.reference_2026);
}
