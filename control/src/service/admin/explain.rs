//! The policy behind `moat admin explain`: of the published policy, the subset the verdicts of
//! one session read, as one full [`v1::PolicyUpdate`] the CLI turns into a `PolicySnapshot`
//! and runs the edge's verdict functions on.
//!
//! The subset holds what an edge's verdicts look up for these facts, and nothing else:
//! - the enabled connectors the client matches, by IP network or certificate name (the
//!   directory keeps the edges' index, so these are lookups, not a scan);
//! - the tenants accepting a name of the session (MAIL FROM, RCPTs, certificate names) or a
//!   parent of one (a lookup per label), and of those tenants, the Partner connectors that
//!   scope one of the session's domains: the inbound rules for the sender;
//! - the tenants of the matched connectors and of the AUTH user, and that user;
//! - the restrictions of those connectors and that user, the tenants' enforced on-premises
//!   servers, the speed bump, the on-premises settings and the clock offset.
//!
//! So its size follows the session, not the estate: a tenant's other connectors stay out. A
//! tenant admin's subset holds only its own tenant's objects.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use moat_proto::convert::{connector_to_wire, restricted_to_wire, tenant_to_wire, user_to_wire};
use moat_proto::v1;
use moat_shared::{Connector, ConnectorId, EntityKind, TenantId};
use tonic::Status;

use crate::publish::{enforced, onprem_settings, speed_bump};
use crate::state::State;

/// The policy subset for the session `q` describes, limited to `scope` when it is not empty
/// (a tenant admin's reads are scoped to their tenant by the caller).
pub(super) fn policy(
    state: &State,
    q: &v1::ExplainQuery,
    scope: &str,
) -> Result<v1::PolicyUpdate, Status> {
    let ip: IpAddr =
        q.client_ip.trim().parse().map_err(|_| {
            Status::invalid_argument(format!("`{}` is not an IP address", q.client_ip))
        })?;
    let dir = &state.directory;
    let in_scope = |t: &TenantId| scope.is_empty() || t.as_str() == scope;
    let login = q.auth_user.trim().to_lowercase();
    // Tenants accepting a name the session gives, or a parent of one (relay attribution by
    // certificate walks up the names).
    let mut accepting: BTreeSet<&TenantId> = BTreeSet::new();
    for name in q.domains.iter().chain(q.cert_names.iter()) {
        let key = moat_shared::Domain::lookup_key(name.trim());
        let mut rest = key.as_ref();
        loop {
            accepting.extend(dir.tenant_accepting(rest));
            match rest.split_once('.') {
                Some((_, parent)) => rest = parent,
                None => break,
            }
        }
    }
    accepting.retain(|t| in_scope(t));
    // The connectors the client matches, as the edge finds them.
    let mut connectors: BTreeMap<ConnectorId, &Connector> = BTreeMap::new();
    let by_cert = if q.cert_names.is_empty() {
        Vec::new()
    } else {
        dir.matching().by_certificate(&q.cert_names)
    };
    for c in dir.matching().by_ip(ip).into_iter().chain(by_cert) {
        if in_scope(&c.tenant) {
            connectors.insert(c.id(), c);
        }
    }
    // The accepting tenants' Partner connectors that scope a domain of the session.
    for t in &accepting {
        let scoping = dir
            .connectors_of(t)
            .filter(|c| c.scopes_senders() && q.domains.iter().any(|d| c.scopes_sender(d)));
        for c in scoping {
            connectors.insert(c.id(), c);
        }
    }
    let user = (!login.is_empty())
        .then(|| dir.users.get(&login))
        .flatten()
        .filter(|u| in_scope(&u.tenant));
    let mut tenants: BTreeSet<&TenantId> = accepting;
    tenants.extend(connectors.keys().map(|id| &id.tenant));
    tenants.extend(user.map(|u| &u.tenant));
    let mut u = v1::PolicyUpdate {
        version: state.policy_version,
        changed_at_ms: state.policy_changed_ms,
        reset: true,
        last: true,
        ..Default::default()
    };
    u.tenants = tenants
        .iter()
        .filter_map(|t| dir.tenants.get(*t))
        .map(tenant_to_wire)
        .collect();
    u.connectors = connectors.values().map(|c| connector_to_wire(c)).collect();
    u.users = user.map(user_to_wire).into_iter().collect();
    u.restricted = state
        .restricted
        .iter()
        .filter(|r| match r.kind {
            EntityKind::Connector => {
                connectors.contains_key(&ConnectorId::new(r.tenant.clone(), r.name.as_str()))
            }
            EntityKind::User => user.is_some_and(|u| u.address == r.name),
        })
        .map(restricted_to_wire)
        .collect();
    u.enforced = enforced(state)
        .into_iter()
        .filter(|e| tenants.iter().any(|t| t.as_str() == e.tenant))
        .collect();
    u.speed_bump = Some(speed_bump(state));
    u.onprem = Some(onprem_settings(state));
    u.clock_offset_ms = Some(state.clock_offset_ms);
    // Never the TLS ticket keys: no verdict reads them, and an admin read must not carry a
    // secret (`ticket_keys` stays `None`).
    Ok(u)
}

#[cfg(test)]
mod tests {
    use crate::state::{Command, Proposal, State};
    use moat_proto::v1;

    #[test]
    fn explain_never_carries_the_ticket_keys() {
        let mut s = State::default();
        let o = s.apply(
            1,
            &Proposal {
                at_ms: 1,
                actor: "system".into(),
                request_id: None,
                command: Command::RotateTicketKeys {
                    name: "ab".repeat(16),
                    key: moat_shared::TicketSecret::new([7; 32]),
                    rotate_every_ms: 1000,
                    replaces: None,
                    forced: false,
                },
            },
        );
        assert!(o.result.is_ok());
        let q = v1::ExplainQuery {
            client_ip: "192.0.2.1".into(),
            ..Default::default()
        };
        let u = super::policy(&s, &q, "").expect("explained");
        assert!(u.ticket_keys.is_none());
    }

    /// Applies `command` as the next entry; panics if it is refused.
    fn apply(s: &mut State, command: Command) {
        let index = s.applied + 1;
        let o = s.apply(
            index,
            &Proposal {
                at_ms: 1,
                actor: "test".into(),
                request_id: None,
                command,
            },
        );
        assert!(o.result.is_ok(), "{o:?}");
    }

    fn connector(
        tenant: &str,
        name: &str,
        kind: moat_shared::ConnectorKind,
        net: &str,
        scopes: &[&str],
    ) -> Command {
        let mut c = moat_shared::Connector::new(
            moat_shared::TenantId::new(tenant).expect("tenant"),
            name,
            kind,
        );
        c.sender_ip_addresses = vec![moat_shared::Connector::parse_ip(net).expect("net")];
        c.sender_domains = scopes.iter().map(|d| (*d).to_owned()).collect();
        Command::PutConnector { connector: c }
    }

    /// The subset holds what the verdicts read for these facts: the connectors the client
    /// matches, the recipient tenant's Partner connectors that scope a domain of the session,
    /// and their tenants; not the tenants' other connectors, nor a disabled match.
    #[test]
    fn the_subset_holds_what_the_session_touches_and_no_more() {
        use moat_shared::ConnectorKind::{OnPremises, Partner};
        let mut s = State::default();
        for (t, d) in [
            ("a.test", "a.test"),
            ("b.test", "b.test"),
            ("c.test", "c.test"),
        ] {
            apply(
                &mut s,
                Command::PutTenant {
                    tenant: moat_shared::Tenant {
                        id: moat_shared::TenantId::new(t).expect("tenant"),
                        display_name: t.into(),
                        accepted_domains: vec![moat_shared::Domain::new(d).expect("domain")],
                        allow_legacy_tls_clients: false,
                    },
                },
            );
        }
        apply(
            &mut s,
            connector("a.test", "hq", OnPremises, "192.0.2.0/24", &[]),
        );
        apply(
            &mut s,
            connector("a.test", "fab", Partner, "198.51.100.1", &["partner.test"]),
        );
        apply(
            &mut s,
            connector(
                "a.test",
                "other",
                Partner,
                "198.51.100.2",
                &["elsewhere.test"],
            ),
        );
        apply(
            &mut s,
            connector("a.test", "branch", OnPremises, "203.0.113.0/24", &[]),
        );
        apply(
            &mut s,
            connector("b.test", "gw", OnPremises, "192.0.2.9", &[]),
        );
        let mut off = connector("c.test", "old", OnPremises, "192.0.2.0/25", &[]);
        if let Command::PutConnector { connector } = &mut off {
            connector.enabled = false;
        }
        apply(&mut s, off);
        let q = v1::ExplainQuery {
            client_ip: "192.0.2.9".into(),
            domains: vec!["Sub.Partner.test".into(), "a.test".into()],
            ..Default::default()
        };
        let names = |u: &v1::PolicyUpdate| -> (Vec<String>, Vec<String>) {
            (
                u.tenants.iter().map(|t| t.id.clone()).collect(),
                u.connectors
                    .iter()
                    .map(|c| format!("{}/{}", c.tenant, c.name))
                    .collect(),
            )
        };
        let all = super::policy(&s, &q, "").expect("explained");
        assert_eq!(
            names(&all),
            (
                vec!["a.test".into(), "b.test".into()],
                vec!["a.test/hq".into(), "b.test/gw".into()],
            ),
            "`fab` scopes partner.test, not sub.partner.test"
        );
        let q = v1::ExplainQuery {
            domains: vec!["partner.test".into(), "a.test".into()],
            ..q
        };
        let all = super::policy(&s, &q, "").expect("explained");
        assert_eq!(
            names(&all).1,
            vec!["a.test/fab", "a.test/hq", "b.test/gw"],
            "the Partner connector scoping the sender's domain rides along"
        );
        let scoped = super::policy(&s, &q, "b.test").expect("explained");
        assert_eq!(
            names(&scoped),
            (vec!["b.test".into()], vec!["b.test/gw".into()]),
            "a tenant admin's subset holds its own tenant only"
        );
    }
}
