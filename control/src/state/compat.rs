//! Compatibility of the replicated state's two durable forms: the raft log's command format
//! ([`Proposal`] as JSON) and the snapshot (the [`State`] as JSON).
//!
//! `testdata/` holds what a release before the state split wrote, from the scenario in
//! [`scenario`]: `entries.jsonl` (the exact bytes of each log entry, one a line, applied at
//! index [`FIRST_INDEX`] onwards), `snapshot.json` (the exact snapshot bytes after applying
//! them), `state.pretty.json` (the same state as sorted, pretty JSON, to read and compare) and
//! `outcomes.txt` (each entry's result text, `ok: ...` or `err: ...`). The tests decode the old
//! bytes with today's code and demand the same state and the same texts.
//!
//! `write_fixtures` (ignored) rewrites them; run it only to capture a release's forms, never to
//! make a failing test pass.

use moat_shared::onprem::Schedule;
use moat_shared::signal::{self, Unit};
use moat_shared::{Connector, Domain, EntityKind, SpeedBumpStep, Tenant, TenantId};

use super::*;

/// The index of the first entry (index 1 is the bootstrap snapshot).
const FIRST_INDEX: u64 = 2;
/// Control-node addresses in the snapshot (learned from membership changes, not commands).
const MEMBERS: [(u64, &str); 2] = [(1, "10.0.0.1:7000"), (2, "10.0.0.2:7000")];
/// The fixtures' folder, from the crate root.
const DIR: &str = "src/state/testdata";

fn tid(id: &str) -> TenantId {
    TenantId::new(id).expect("valid tenant id")
}

fn tenant(id: &str, domains: &[&str]) -> Tenant {
    Tenant {
        id: tid(id),
        display_name: format!("Tenant {id}"),
        accepted_domains: domains
            .iter()
            .map(|d| Domain::new(d).expect("valid domain"))
            .collect(),
        allow_legacy_tls_clients: false,
    }
}

fn connector(t: &str, name: &str, kind: moat_shared::ConnectorKind, ip: &str) -> Connector {
    Connector {
        tenant: tid(t),
        name: name.into(),
        kind,
        enabled: true,
        sender_ip_addresses: vec![Connector::parse_ip(ip).expect("valid ip")],
        tls_sender_certificate_name: Some(
            moat_shared::CertName::new(&format!("{name}.{t}.test")).expect("valid name"),
        ),
        sender_domains: vec![],
        require_tls: false,
        restrict_domains_to_ip_addresses: false,
        restrict_domains_to_certificate: false,
    }
}

fn user(t: &str, address: &str) -> User {
    User {
        tenant: tid(t),
        address: address.into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        send_as: vec![],
    }
}

fn batch(edge: &str, seq: u64, counters: &[(&str, &str, &str, u64)]) -> SignalBatch {
    SignalBatch {
        edge: edge.into(),
        seq,
        counters: counters
            .iter()
            .map(|(s, k, n, v)| (s.to_string(), k.to_string(), n.to_string(), *v))
            .collect(),
    }
}

/// A realistic sequence covering every command, accepted and refused ones.
fn scenario() -> Vec<Proposal> {
    use moat_shared::ConnectorKind::{OnPremises, Partner};
    const DAY: i64 = 86_400_000;
    let t0: i64 = 1_800_000_000_000;
    let mut at = t0;
    let mut out = Vec::new();
    let mut push = |step: i64, actor: &str, request_id: Option<&str>, command: Command| {
        at += step;
        out.push(Proposal {
            at_ms: at,
            actor: actor.into(),
            request_id: request_id.map(Into::into),
            command,
        });
    };
    let op = "operator-token";
    // Tenants and domains.
    push(
        1000,
        op,
        Some("req-1"),
        Command::PutTenant {
            tenant: tenant("a", &["a.test"]),
        },
    );
    push(
        1000,
        op,
        Some("req-1"),
        Command::PutTenant {
            tenant: tenant("a", &["a.test"]),
        },
    );
    push(
        1000,
        op,
        None,
        Command::PutTenant {
            tenant: tenant("b", &["b.test"]),
        },
    );
    push(
        1000,
        op,
        None,
        Command::PutTenant {
            tenant: tenant("b", &["a.test"]),
        },
    );
    push(
        1000,
        op,
        None,
        Command::AddDomain {
            tenant: tid("a"),
            domain: Domain::new("a2.test").unwrap(),
        },
    );
    push(
        1000,
        op,
        None,
        Command::AddDomain {
            tenant: tid("b"),
            domain: Domain::new("a2.test").unwrap(),
        },
    );
    push(
        1000,
        op,
        None,
        Command::AddDomain {
            tenant: tid("zz"),
            domain: Domain::new("zz.test").unwrap(),
        },
    );
    push(
        1000,
        op,
        None,
        Command::RemoveDomain {
            tenant: tid("a"),
            domain: Domain::new("a2.test").unwrap(),
        },
    );
    push(
        1000,
        op,
        None,
        Command::RemoveDomain {
            tenant: tid("a"),
            domain: Domain::new("nope.test").unwrap(),
        },
    );
    push(
        1000,
        op,
        None,
        Command::ApplySeed {
            tenants: vec![
                tenant("c", &["c.test"]),
                tenant("a", &["a.test", "a3.test"]),
            ],
        },
    );
    push(
        1000,
        op,
        None,
        Command::ApplySeed {
            tenants: vec![tenant("c", &["b.test"])],
        },
    );
    // Connectors and users.
    push(
        1000,
        op,
        None,
        Command::PutConnector {
            connector: connector("a", "onprem", OnPremises, "192.0.2.0/24"),
        },
    );
    push(
        1000,
        op,
        None,
        Command::PutConnector {
            connector: connector("a", "partner", Partner, "198.51.100.7"),
        },
    );
    push(
        1000,
        op,
        None,
        Command::PutConnector {
            connector: connector("b", "relay", OnPremises, "203.0.113.0/28"),
        },
    );
    push(
        1000,
        op,
        None,
        Command::PutConnector {
            connector: connector("zz", "x", Partner, "203.0.113.9"),
        },
    );
    push(
        1000,
        op,
        None,
        Command::PutUser {
            user: user("a", "u@a.test"),
        },
    );
    push(
        1000,
        op,
        None,
        Command::PutUser {
            user: user("a", "v@a.test"),
        },
    );
    push(
        1000,
        op,
        None,
        Command::PutUser {
            user: user("b", "u@a.test"),
        },
    );
    push(
        1000,
        op,
        None,
        Command::PutUser {
            user: user("zz", "w@zz.test"),
        },
    );
    push(
        1000,
        op,
        None,
        Command::SetTransportConfig {
            tenant: tid("a"),
            allow_legacy_tls_clients: true,
        },
    );
    push(
        1000,
        op,
        None,
        Command::SetTransportConfig {
            tenant: tid("zz"),
            allow_legacy_tls_clients: true,
        },
    );
    // Tokens.
    let token = |id: &str, role: Role, t: Option<&str>| TokenRecord {
        id: id.into(),
        name: format!("{id}-name"),
        role,
        tenant: t.map(tid),
        sha256: "ab".repeat(32),
        created_ms: 0,
    };
    push(
        1000,
        op,
        None,
        Command::CreateToken {
            token: token("tk1", Role::Operator, None),
        },
    );
    push(
        1000,
        op,
        None,
        Command::CreateToken {
            token: token("tk2", Role::TenantAdmin, Some("a")),
        },
    );
    push(
        1000,
        op,
        None,
        Command::CreateToken {
            token: token("tk3", Role::Reader, None),
        },
    );
    push(
        1000,
        op,
        None,
        Command::CreateToken {
            token: token("tk2", Role::Reader, None),
        },
    );
    push(
        1000,
        op,
        None,
        Command::CreateToken {
            token: token("tk4", Role::TenantAdmin, Some("zz")),
        },
    );
    push(1000, op, None, Command::RevokeToken { id: "tk3".into() });
    push(1000, op, None, Command::RevokeToken { id: "tk3".into() });
    // Policies.
    let step = |s: &str| SpeedBumpStep::parse(s).expect("valid step");
    push(
        1000,
        op,
        None,
        Command::SetSpeedBump {
            steps: vec![step("2027-02-01=100"), step("2027-01-01=30")],
        },
    );
    push(
        1000,
        op,
        None,
        Command::SetSpeedBump {
            steps: vec![step("2027-02-01=100"), step("2027-02-01=30")],
        },
    );
    push(
        1000,
        "tk2-name",
        None,
        Command::SetOutboundPolicy {
            tenant: tid("a"),
            policy: OutboundPolicy {
                recipients_per_hour: 3,
                recipients_per_day: 10,
                action: LimitAction::BlockForToday,
            },
        },
    );
    push(
        1000,
        op,
        None,
        Command::SetOutboundPolicy {
            tenant: tid("b"),
            policy: OutboundPolicy {
                recipients_per_hour: 0,
                recipients_per_day: 10,
                action: LimitAction::Block,
            },
        },
    );
    push(
        1000,
        op,
        None,
        Command::SetOutboundPolicy {
            tenant: tid("zz"),
            policy: OutboundPolicy::default(),
        },
    );
    push(
        1000,
        op,
        None,
        Command::SetDetectionPolicy {
            tenant: None,
            policy: DetectionPolicy::default(),
        },
    );
    push(
        1000,
        op,
        None,
        Command::SetDetectionPolicy {
            tenant: Some(tid("a")),
            policy: DetectionPolicy {
                interval_ms: 60_000,
                warmup_intervals: 1,
                spike_factor: 2,
                min_messages: 5,
                unprovisioned_percent: 50,
                mismatch_percent: 50,
                auth_fail_percent: 50,
            },
        },
    );
    push(
        1000,
        op,
        None,
        Command::SetDetectionPolicy {
            tenant: None,
            policy: DetectionPolicy {
                interval_ms: 10,
                ..DetectionPolicy::default()
            },
        },
    );
    push(
        1000,
        op,
        None,
        Command::SetDetectionPolicy {
            tenant: Some(tid("zz")),
            policy: DetectionPolicy::default(),
        },
    );
    push(
        1000,
        op,
        None,
        Command::SetAlertContacts {
            tenant: tid("a"),
            contacts: AlertContacts {
                emails: vec!["admin@a.test".into()],
                webhook_url: "https://hooks.a.test/moat".into(),
                webhook_secret: "s3cret".into(),
            },
        },
    );
    push(
        1000,
        op,
        None,
        Command::SetAlertContacts {
            tenant: tid("b"),
            contacts: AlertContacts {
                emails: vec![],
                webhook_url: "ftp://x".into(),
                webhook_secret: String::new(),
            },
        },
    );
    push(
        1000,
        op,
        None,
        Command::SetAlertContacts {
            tenant: tid("b"),
            contacts: AlertContacts {
                emails: vec!["nobody".into()],
                webhook_url: String::new(),
                webhook_secret: String::new(),
            },
        },
    );
    push(
        1000,
        op,
        None,
        Command::SetAlertContacts {
            tenant: tid("zz"),
            contacts: AlertContacts::default(),
        },
    );
    push(
        1000,
        op,
        None,
        Command::SetAlertTransport {
            transport: AlertTransport {
                smtp: "edge.moat.test:25".into(),
                from: "alerts@moat.test".into(),
            },
        },
    );
    // Signals: counters, TLS report, a user over its limit, a connector flood, on-prem servers.
    let v10 = signal::tls_usage(
        Unit::Sessions,
        "submission",
        "TLSv1.0",
        "ECDHE-RSA-AES128-SHA",
    );
    let m10 = signal::tls_usage(
        Unit::Messages,
        "submission",
        "TLSv1.0",
        "ECDHE-RSA-AES128-SHA",
    );
    let v13 = signal::tls_usage(Unit::Sessions, "mx", "TLSv1.3", "TLS_AES_128_GCM_SHA256");
    let who = signal::legacy_client(Unit::Sessions, "192.0.2.10", "u@a.test", "TLSv1.0");
    let old = signal::onprem_server("exch16.a.local", "15.1.2507.44");
    let old2 = signal::onprem_server("exch19.a.local", "15.0.1497.48");
    let good = signal::onprem_server("exch19.a.local", "15.2.1748.39");
    push(
        60_000,
        "system",
        None,
        Command::Signals {
            batches: vec![
                batch(
                    "edge-1",
                    1,
                    &[
                        ("tenant", "a", "messages", 5),
                        (signal::TLS, "a", &v10, 2),
                        (signal::TLS, "a", &m10, 3),
                        (signal::TLS, "b", &v13, 7),
                        (signal::TLS_LEGACY, "a", &who, 2),
                        (signal::USER, "u@a.test", signal::RECIPIENTS, 2),
                        (signal::CONNECTOR, "a/onprem", "messages", 2),
                        (signal::CONNECTOR, "a/partner", "messages", 1),
                        (signal::CONNECTOR, "a/missing", "messages", 1),
                    ],
                ),
                batch(
                    "edge-2",
                    1,
                    &[(signal::USER, "v@a.test", signal::RECIPIENTS, 1)],
                ),
            ],
        },
    );
    push(
        1000,
        "system",
        None,
        Command::Signals {
            batches: vec![
                batch("edge-1", 1, &[("tenant", "a", "messages", 100)]),
                batch(
                    "edge-2",
                    2,
                    &[
                        (signal::USER, "u@a.test", signal::RECIPIENTS, 2),
                        (signal::ONPREM, "a/onprem", &old, 4),
                        (signal::ONPREM, "a/onprem", &old2, 1),
                        (signal::ONPREM, "a/missing", &old, 1),
                    ],
                ),
            ],
        },
    );
    push(
        60_000,
        "system",
        None,
        Command::Signals {
            batches: vec![batch(
                "edge-1",
                2,
                &[
                    ("tenant", "a", "messages", 7),
                    (signal::CONNECTOR, "a/onprem", "messages", 40),
                    (signal::CONNECTOR, "a/onprem", "unprovisioned", 30),
                    (signal::CONNECTOR, "a/onprem", "mismatch", 2),
                    (signal::CONNECTOR, "a/onprem", "relay-refused", 1),
                    (signal::CONNECTOR, "a/partner", "auth-checked", 10),
                    (signal::CONNECTOR, "a/partner", "dmarc-fail", 9),
                    (signal::ONPREM, "a/onprem", &good, 2),
                    (signal::ONPREM, "a/onprem", &old2, 1),
                ],
            )],
        },
    );
    // Alert deliveries.
    push(
        1000,
        "system",
        None,
        Command::AlertDelivery {
            alert: 1,
            channel: "webhook".into(),
            target: "https://hooks.a.test/moat".into(),
            error: None,
        },
    );
    push(
        1000,
        "system",
        None,
        Command::AlertDelivery {
            alert: 1,
            channel: "email".into(),
            target: "admin@a.test".into(),
            error: Some("connection refused".into()),
        },
    );
    push(
        1000,
        "system",
        None,
        Command::AlertDelivery {
            alert: 1,
            channel: "webhook".into(),
            target: "https://hooks.a.test/moat".into(),
            error: None,
        },
    );
    push(
        1000,
        "system",
        None,
        Command::AlertDelivery {
            alert: 999,
            channel: "email".into(),
            target: "x@a.test".into(),
            error: None,
        },
    );
    // Unblocking.
    push(
        1000,
        op,
        None,
        Command::Unblock {
            tenant: tid("a"),
            kind: EntityKind::Connector,
            name: "partner".into(),
            reason: "false alarm".into(),
        },
    );
    push(
        1000,
        op,
        None,
        Command::Unblock {
            tenant: tid("a"),
            kind: EntityKind::User,
            name: "v@a.test".into(),
            reason: "why".into(),
        },
    );
    // On-premises Exchange.
    push(
        1000,
        op,
        None,
        Command::SetOnpremPolicy {
            baseline: None,
            stages: Some(Schedule::default()),
            service: Some(" Contoso Mail ".into()),
            all_connectors: Some(true),
        },
    );
    push(
        1000,
        op,
        None,
        Command::SetOnpremPolicy {
            baseline: None,
            stages: None,
            service: Some(String::new()),
            all_connectors: None,
        },
    );
    push(
        1000,
        op,
        None,
        Command::SetOnpremPolicy {
            baseline: None,
            stages: None,
            service: None,
            all_connectors: None,
        },
    );
    push(
        1000,
        op,
        None,
        Command::SetOnpremPolicy {
            baseline: Some(moat_shared::exchange::Baseline(vec![])),
            stages: None,
            service: None,
            all_connectors: None,
        },
    );
    push(
        1000,
        op,
        None,
        Command::SetOnpremPolicy {
            baseline: Some(moat_shared::exchange::Baseline::default()),
            stages: None,
            service: None,
            all_connectors: Some(false),
        },
    );
    push(
        1000,
        op,
        Some("pause-1"),
        Command::PauseOnprem {
            tenant: tid("a"),
            days: 5,
            reason: "patching".into(),
        },
    );
    push(
        1000,
        op,
        None,
        Command::PauseOnprem {
            tenant: tid("a"),
            days: 2,
            reason: String::new(),
        },
    );
    push(
        1000,
        op,
        None,
        Command::PauseOnprem {
            tenant: tid("a"),
            days: 0,
            reason: String::new(),
        },
    );
    push(
        1000,
        op,
        None,
        Command::PauseOnprem {
            tenant: tid("zz"),
            days: 1,
            reason: String::new(),
        },
    );
    // Time: the dev clock moves forward; ticks walk the stages.
    push(
        1000,
        "dev",
        None,
        Command::SetClock {
            offset_ms: 10 * DAY,
        },
    );
    // The next entries are stamped with the offset, as the leader does.
    push(
        1000 + 10 * DAY,
        "dev",
        None,
        Command::SetClock { offset_ms: 0 },
    );
    push(25 * DAY, "system", None, Command::Tick);
    push(10 * DAY, "system", None, Command::Tick);
    push(
        1000,
        op,
        None,
        Command::PauseOnprem {
            tenant: tid("a"),
            days: 88,
            reason: "budget".into(),
        },
    );
    push(
        1000,
        "system",
        None,
        Command::Signals {
            batches: vec![batch(
                "edge-1",
                3,
                &[(signal::USER, "v@a.test", signal::RECIPIENTS, 50)],
            )],
        },
    );
    // Deletions.
    push(
        1000,
        op,
        None,
        Command::DeleteConnector {
            tenant: tid("a"),
            name: "partner".into(),
        },
    );
    push(
        1000,
        op,
        None,
        Command::DeleteConnector {
            tenant: tid("a"),
            name: "partner".into(),
        },
    );
    push(
        1000,
        op,
        None,
        Command::DeleteUser {
            tenant: tid("a"),
            address: "v@a.test".into(),
        },
    );
    push(
        1000,
        op,
        None,
        Command::DeleteUser {
            tenant: tid("b"),
            address: "u@a.test".into(),
        },
    );
    push(1000, op, None, Command::DeleteTenant { tenant: tid("b") });
    push(1000, op, None, Command::DeleteTenant { tenant: tid("b") });
    push(1000, "system", None, Command::Tick);
    out
}

/// Applies the entries in order from [`FIRST_INDEX`]; returns the state and each result text.
fn replay(entries: &[Proposal]) -> (State, Vec<String>) {
    let mut s = State::default();
    let mut texts = Vec::new();
    for (i, p) in entries.iter().enumerate() {
        let o = s.apply(FIRST_INDEX + i as u64, p);
        texts.push(match o.result {
            Ok(t) => format!("ok: {t}"),
            Err(e) => {
                let text = e.to_string();
                assert_eq!(e.code(), super::error::tests::by_words(&text), "{text}");
                format!("err: {text}")
            }
        });
    }
    for (id, addr) in MEMBERS {
        s.members.insert(id, addr.into());
    }
    (s, texts)
}

fn path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(DIR)
        .join(name)
}

/// The state as sorted, pretty JSON.
fn canonical(s: &State) -> String {
    let v: serde_json::Value = serde_json::to_value(s).expect("state serialises");
    let mut text = serde_json::to_string_pretty(&v).expect("value serialises");
    text.push('\n');
    text
}

#[test]
#[ignore = "rewrites the fixtures; run only to capture a release's forms"]
fn write_fixtures() {
    let entries = scenario();
    let mut log = Vec::new();
    for p in &entries {
        // What `Core::propose` stores as the entry's data.
        log.extend(serde_json::to_vec(p).expect("proposal serialises"));
        log.push(b'\n');
    }
    let (s, texts) = replay(&entries);
    std::fs::create_dir_all(path("")).expect("testdata folder");
    std::fs::write(path("entries.jsonl"), log).expect("write entries");
    // What `Core::take_snapshot` stores.
    std::fs::write(
        path("snapshot.json"),
        serde_json::to_vec(&s).expect("state serialises"),
    )
    .expect("write snapshot");
    std::fs::write(path("state.pretty.json"), canonical(&s)).expect("write dump");
    std::fs::write(path("outcomes.txt"), texts.join("\n") + "\n").expect("write outcomes");
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(path(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn the_log_and_snapshot_of_the_release_before_the_split_still_read() {
    let log = read("entries.jsonl");
    let lines: Vec<&[u8]> = log
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let entries: Vec<Proposal> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_slice(l).unwrap_or_else(|e| panic!("entry {i} does not decode: {e}"))
        })
        .collect();
    let (replayed, texts) = replay(&entries);
    let old: State = serde_json::from_slice(&read("snapshot.json")).expect("old snapshot decodes");
    assert!(
        replayed == old,
        "replaying the old log gives the old snapshot's state"
    );
    let dump = String::from_utf8(read("state.pretty.json")).expect("utf-8");
    assert_eq!(canonical(&replayed), dump);
    let outcomes = String::from_utf8(read("outcomes.txt")).expect("utf-8");
    assert_eq!(
        texts.join("\n") + "\n",
        outcomes,
        "each entry's result text"
    );
    // Today's code writes a snapshot it reads back.
    let again: State =
        serde_json::from_slice(&serde_json::to_vec(&replayed).expect("state serialises"))
            .expect("new snapshot decodes");
    assert!(again == replayed);
    // Today's code writes the same commands as the old release for the same scenario.
    let today = scenario();
    assert_eq!(today.len(), lines.len());
    for (p, old) in today.iter().zip(&lines) {
        let back: Proposal =
            serde_json::from_slice(&serde_json::to_vec(p).expect("encodes")).expect("decodes");
        let old: Proposal = serde_json::from_slice(old).expect("decodes");
        assert_eq!(
            serde_json::to_value(&back).expect("value"),
            serde_json::to_value(&old).expect("value")
        );
    }
}
