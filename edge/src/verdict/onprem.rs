//! Out-of-date on-premises Exchange servers: which messages are judged, and what the life cycle
//! the control plane runs for a server says of its message now (`450 4.7.230` in a throttled
//! minute, `550 5.7.230` in a blocked one, nothing otherwise).

use moat_shared::exchange::{Class, Sighting};
use moat_shared::onprem::Minute;
use moat_shared::{ConnectorId, PolicySnapshot, TenantId};

use super::{Accepted, Denial};

/// Whether the Exchange server behind a transaction attributed as `accepted` is judged: in
/// OnPremises connectors' mail, or in every connector's when the cluster widened the scope.
pub fn judged(snapshot: &PolicySnapshot, accepted: &Accepted) -> bool {
    accepted.onprem || snapshot.onprem().all_connectors
}

/// The message from the server seen in `s`, through `connector` of `tenant`, at `now_ms`.
pub fn refusal(
    snapshot: &PolicySnapshot,
    connector: &ConnectorId,
    tenant: &TenantId,
    s: &Sighting,
    now_ms: i64,
) -> Result<(), Denial> {
    let rules = snapshot.onprem();
    let Some((minute, e)) = rules.verdict(tenant, &s.server, &s.build, now_ms) else {
        return Ok(());
    };
    let (connector, server, build, service) = (
        connector.clone(),
        s.server.clone(),
        s.build.to_string(),
        rules.service().to_owned(),
    );
    match minute {
        Minute::Open => Ok(()),
        Minute::Throttled => Err(Denial::OnpremThrottled {
            connector,
            server,
            build,
            service,
            minutes: e.throttle,
        }),
        Minute::Blocked => Err(Denial::OnpremBlocked {
            connector,
            server,
            build,
            service,
            minutes: e.block,
        }),
    }
}

/// Whether the sighting `s` ends an enforcement: a compliant build from a server of `tenant`
/// that edges are throttling or blocking (the edge then reports at once, so that enforcement
/// ends on every edge within the second).
pub fn ends_enforcement(snapshot: &PolicySnapshot, tenant: &TenantId, s: &Sighting) -> bool {
    let rules = snapshot.onprem();
    rules.baseline.classify(&s.build) == Class::Compliant
        && rules
            .enforced
            .contains_key(&(tenant.clone(), s.server.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;
    use moat_shared::exchange::Build;
    use moat_shared::onprem::{minutes, Enforced};
    use moat_shared::{OnpremSettings, PolicyChange};

    const SERVER: &str = "exch1.contoso.test";

    fn snap(service: &str) -> PolicySnapshot {
        snapshot()
            .apply(&PolicyChange {
                version: 2,
                onprem: Some(OnpremSettings {
                    service: service.into(),
                    ..Default::default()
                }),
                enforced: vec![(
                    (TenantId::new("contoso").unwrap(), SERVER.into()),
                    Enforced {
                        stage: 1,
                        throttle: 20,
                        block: 10,
                    },
                )],
                ..Default::default()
            })
            .unwrap()
    }

    fn sighting(server: &str, build: &str) -> Sighting {
        Sighting {
            server: server.into(),
            build: Build::parse(build).unwrap(),
        }
    }

    /// The first instant of hour 0 whose minute holds `m` for the server.
    fn at(m: Minute) -> i64 {
        let hour = minutes(SERVER, 0, 1, 20, 10);
        let i = hour.iter().position(|x| *x == m).unwrap();
        i as i64 * 60_000
    }

    /// One row per on-premises reply: (case, inputs -> denial, reply, counter).
    #[test]
    fn onprem_table() {
        let plain = snap("");
        let contoso = TenantId::new("contoso").unwrap();
        let old = sighting(SERVER, "15.0.1497.2");
        let decide =
            |s: &Sighting, now| refusal(&plain, &cid("contoso/onprem"), &contoso, s, now).err();
        check(&[
            (
                "out-of-date server in a throttled minute",
                decide(&old, at(Minute::Throttled)),
                Some("450 4.7.230 Connecting Exchange server version is out-of-date; connection to Moat throttled for 20 mins/hr."),
                Some("connector contoso/onprem onprem-throttled"),
            ),
            (
                "out-of-date server in a blocked minute",
                decide(&old, at(Minute::Blocked)),
                Some("550 5.7.230 Connecting Exchange server version is out-of-date; connection to Moat blocked for 10 mins/hr."),
                Some("connector contoso/onprem onprem-blocked"),
            ),
            ("out-of-date server in an open minute", decide(&old, at(Minute::Open)), None, None),
            (
                "compliant build of an enforced server",
                decide(&sighting(SERVER, "15.2.2562.29"), at(Minute::Blocked)),
                None,
                None,
            ),
            (
                "server not enforced",
                decide(&sighting("exch2.contoso.test", "15.0.1497.2"), at(Minute::Blocked)),
                None,
                None,
            ),
        ]);
        // The configured service name is in the text.
        let named = snap("Contoso Mail");
        let d = refusal(
            &named,
            &cid("contoso/onprem"),
            &contoso,
            &old,
            at(Minute::Blocked),
        )
        .unwrap_err();
        assert_eq!(
            d,
            Denial::OnpremBlocked {
                connector: cid("contoso/onprem"),
                server: SERVER.into(),
                build: "15.0.1497.2".into(),
                service: "Contoso Mail".into(),
                minutes: 10,
            }
        );
        assert_eq!(
            outcome(&d).0,
            "550 5.7.230 Connecting Exchange server version is out-of-date; connection to Contoso Mail blocked for 10 mins/hr."
        );
    }

    #[test]
    fn a_compliant_build_ends_enforcement_and_scope_follows_the_rules() {
        let snap = snap("");
        let contoso = TenantId::new("contoso").unwrap();
        assert!(ends_enforcement(
            &snap,
            &contoso,
            &sighting("EXCH1.contoso.test", "15.2.2562.29")
        ));
        assert!(!ends_enforcement(
            &snap,
            &contoso,
            &sighting(SERVER, "15.0.1497.2")
        ));
        assert!(!ends_enforcement(
            &snap,
            &contoso,
            &sighting("exch2.contoso.test", "15.2.2562.29")
        ));
        let through = |onprem| Accepted {
            onprem,
            ..Default::default()
        };
        assert!(judged(&snap, &through(true)));
        assert!(!judged(&snap, &through(false)));
        let wide = snapshot()
            .apply(&PolicyChange {
                version: 2,
                onprem: Some(OnpremSettings {
                    all_connectors: true,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .unwrap();
        assert!(judged(&wide, &through(false)));
    }
}
