//! The policy behind `moat admin explain`: of the published policy, the subset the verdicts of
//! one session can touch, as one full [`v1::PolicyUpdate`] the CLI turns into a
//! `PolicySnapshot` and runs the edge's verdict functions on.
//!
//! The subset: the tenants accepting a domain of the session (MAIL FROM, RCPTs, certificate
//! names, or a parent of one), the tenants owning a connector the client matches (by IP network
//! or certificate name; disabled ones too, the snapshot's index skips them as an edge's does),
//! the tenant of the AUTH user; then every connector of those tenants (Partner scopes need
//! them all), that user, the tenants' restrictions and enforced on-premises servers, the speed
//! bump, the on-premises settings and the clock offset. A tenant admin's subset holds only its
//! own tenant's objects.
//!
//! Finding the connectors that match an IP or a certificate name scans the directory's
//! connectors: acceptable for an admin tool run by hand, never on a hot path.

use std::collections::BTreeSet;
use std::net::IpAddr;

use moat_proto::convert::{connector_to_wire, restricted_to_wire, tenant_to_wire, user_to_wire};
use moat_proto::v1;
use moat_shared::TenantId;
use tonic::Status;

use crate::publish::{enforced, onprem_settings, speed_bump};
use crate::state::State;

/// Whether `name` is `domain` or lies under it (label boundaries, case-insensitive).
fn at_or_under(name: &str, domain: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let domain = domain.to_ascii_lowercase();
    name == domain
        || name
            .strip_suffix(&domain)
            .is_some_and(|head| head.ends_with('.'))
}

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
    let in_scope = |t: &TenantId| scope.is_empty() || t.as_str() == scope;
    let login = q.auth_user.trim().to_lowercase();
    let mut tenants: BTreeSet<TenantId> = BTreeSet::new();
    // Tenants accepting a domain the session names, or a parent of one (relay attribution by
    // certificate walks up the names).
    let names: Vec<&str> = q
        .domains
        .iter()
        .chain(q.cert_names.iter())
        .map(String::as_str)
        .collect();
    for (id, t) in &state.directory.tenants {
        if t.accepted_domains
            .iter()
            .any(|d| names.iter().any(|n| at_or_under(n, d.as_str())))
        {
            tenants.insert(id.clone());
        }
    }
    // Tenants owning a connector the client matches (a scan, see the module doc).
    for c in state.directory.connectors.values() {
        let by_ip = c.sender_ip_addresses.iter().any(|n| n.contains(&ip));
        let by_cert = c
            .tls_sender_certificate_name
            .as_ref()
            .is_some_and(|cn| q.cert_names.iter().any(|n| cn.covers(n)));
        if by_ip || by_cert {
            tenants.insert(c.tenant.clone());
        }
    }
    let user = (!login.is_empty())
        .then(|| state.directory.users.get(&login))
        .flatten();
    if let Some(u) = user {
        tenants.insert(u.tenant.clone());
    }
    tenants.retain(|t| in_scope(t));
    let mut u = v1::PolicyUpdate {
        version: state.policy_version,
        changed_at_ms: state.policy_changed_ms,
        reset: true,
        last: true,
        ..Default::default()
    };
    for t in &tenants {
        if let Some(tenant) = state.directory.tenants.get(t) {
            u.tenants.push(tenant_to_wire(tenant));
        }
    }
    u.connectors = state
        .directory
        .connectors
        .values()
        .filter(|c| tenants.contains(&c.tenant))
        .map(connector_to_wire)
        .collect();
    u.users = user
        .filter(|us| tenants.contains(&us.tenant))
        .map(user_to_wire)
        .into_iter()
        .collect();
    u.restricted = state
        .restricted
        .iter()
        .filter(|r| tenants.contains(&r.tenant))
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
    use super::at_or_under;
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

    #[test]
    fn names_match_their_domain_and_below() {
        assert!(at_or_under("contoso.test", "contoso.test"));
        assert!(at_or_under("Mail.Contoso.test.", "contoso.test"));
        assert!(!at_or_under("evilcontoso.test", "contoso.test"));
        assert!(!at_or_under("test", "contoso.test"));
    }
}
