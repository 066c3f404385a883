//! Tenant attribution of a recipient: inbound mail for an accepted domain (with the Partner
//! connector rules of the recipient's tenant, see [`super::connector`]), or relay, allowed only
//! under the rules in force since November 2023: the certificate domain or the MAIL FROM domain
//! is an accepted domain of a tenant AND the client matches an OnPremises connector of that
//! tenant, by IP or certificate. The header From never counts. Otherwise `550 5.7.64`, counted
//! as `relay-refused` against the first connector the client matched.

use moat_shared::{Connector, ConnectorId, ConnectorKind, PolicySnapshot, TenantId};

use super::{connector, Accepted, Client, Denial};
use crate::session::command::Address;

/// Whether `domain` is an accepted domain of `tenant` (a lookup in the snapshot's index).
fn accepted_by(snapshot: &PolicySnapshot, tenant: &TenantId, domain: &str) -> bool {
    snapshot
        .tenant_for_domain(domain)
        .is_some_and(|t| t.id == *tenant)
}

/// Whether `name` or a parent of it is an accepted domain of `tenant` (`mail.contoso.com` for
/// `contoso.com`): how a certificate's domain is tested.
fn under_accepted(snapshot: &PolicySnapshot, tenant: &TenantId, name: &str) -> bool {
    let mut rest = name;
    loop {
        if accepted_by(snapshot, tenant, rest) {
            return true;
        }
        match rest.split_once('.') {
            Some((_, parent)) => rest = parent,
            None => return false,
        }
    }
}

/// Decides whether `rcpt` may be received from `client` with envelope sender `from`, and what
/// it is attributed to.
pub fn recipient(
    snapshot: &PolicySnapshot,
    client: &Client<'_>,
    from: Option<&Address>,
    rcpt: &Address,
) -> Result<Accepted, Denial> {
    let from_domain = from.map(|a| a.domain.as_str());
    if let Some((t, scopes)) = snapshot.inbound(&rcpt.domain) {
        // Inbound. A Partner connector of this tenant that scopes the sender's domain applies
        // its restrictions, wherever the client came from.
        let scoped: Vec<&Connector> = match from_domain {
            Some(d) => scopes.filter(|c| c.scopes_sender(d)).collect(),
            None => Vec::new(),
        };
        if let Some(d) = from_domain {
            connector::partner(client, &scoped, d)?;
        }
        let through = client.connector_of(&t.id);
        connector::require_tls(client, through, &scoped)?;
        return Ok(Accepted {
            tenant: Some(t.id.clone()),
            connector: through.map(Connector::id),
            relay: false,
            onprem: through.is_some_and(|c| c.kind == ConnectorKind::OnPremises),
        });
    }
    // Relay: (b) an OnPremises connector of tenant T matched by IP or certificate, and (a) a
    // certificate domain or the MAIL FROM domain is accepted by T. Certificate route first, so
    // a null sender `<>` relays only through it.
    let onprem: Vec<&Connector> = client
        .all()
        .filter(|c| c.kind == ConnectorKind::OnPremises)
        .collect();
    let by_cert_domain = onprem.iter().find(|c| {
        client
            .cert_domains
            .iter()
            .any(|d| under_accepted(snapshot, &c.tenant, d))
    });
    let by_from = || {
        onprem
            .iter()
            .find(|c| from_domain.is_some_and(|d| accepted_by(snapshot, &c.tenant, d)))
    };
    match by_cert_domain.or_else(by_from) {
        Some(c) => Ok(Accepted {
            tenant: Some(c.tenant.clone()),
            connector: Some(c.id()),
            relay: true,
            onprem: true,
        }),
        None => Err(Denial::RelayDenied {
            matched: client.all().next().map(Connector::id),
        }),
    }
}

/// Whether `from_domain` (the MAIL FROM domain) is an accepted domain of the tenant of
/// `connector`: a message from elsewhere counts as `unprovisioned`.
pub fn provisioned(snapshot: &PolicySnapshot, connector: &ConnectorId, from_domain: &str) -> bool {
    accepted_by(snapshot, &connector.tenant, from_domain)
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    fn decide(
        ip: &str,
        certs: &[&str],
        tls: bool,
        from: Option<&str>,
        to: &str,
    ) -> Result<Accepted, Denial> {
        let snap = snapshot();
        let certs: Vec<String> = certs.iter().map(|s| s.to_string()).collect();
        let client = Client::new(&snap, ip.parse().unwrap(), &certs, tls);
        recipient(&snap, &client, from.map(addr).as_ref(), &addr(to))
    }

    fn relayed_by(v: &Result<Accepted, Denial>) -> Option<String> {
        match v {
            Ok(a) if a.relay => a.connector.as_ref().map(ToString::to_string),
            _ => None,
        }
    }

    const RELAY_DENIED: &str = "550 5.7.64 TenantAttribution; Relay Access Denied";

    /// One row per relay reply: (case, inputs -> denial, reply, counter).
    #[test]
    fn relay_table() {
        let denied = |ip, certs: &[&str], tls, from, to| decide(ip, certs, tls, from, to).err();
        check(&[
            (
                "IP route with an accepted MAIL FROM",
                denied(
                    "192.0.2.9",
                    &[],
                    false,
                    Some("app@contoso.test"),
                    "x@ext.test",
                ),
                None,
                None,
            ),
            (
                "IP route with a foreign MAIL FROM",
                denied("192.0.2.9", &[], false, Some("app@ext.test"), "x@ext.test"),
                Some(RELAY_DENIED),
                Some("connector contoso/onprem relay-refused"),
            ),
            (
                "IP route with the null sender",
                denied("192.0.2.9", &[], false, None, "x@ext.test"),
                Some(RELAY_DENIED),
                Some("connector contoso/onprem relay-refused"),
            ),
            (
                "certificate route, null sender",
                denied(
                    "203.0.113.1",
                    &["mail.contoso.test"],
                    true,
                    None,
                    "x@ext.test",
                ),
                None,
                None,
            ),
            (
                "no connector matched: refused and counted nowhere",
                denied(
                    "203.0.113.1",
                    &[],
                    true,
                    Some("a@contoso.test"),
                    "x@ext.test",
                ),
                Some(RELAY_DENIED),
                None,
            ),
            (
                "another tenant's domain through contoso's connector",
                denied("192.0.2.9", &[], false, Some("a@other.test"), "x@ext.test"),
                Some(RELAY_DENIED),
                Some("connector contoso/onprem relay-refused"),
            ),
            (
                "partner client relaying: counted against the partner connector it matched",
                denied(
                    "198.51.100.7",
                    &[],
                    true,
                    Some("a@fabrikam.test"),
                    "x@ext.test",
                ),
                Some(RELAY_DENIED),
                Some("connector contoso/partner relay-refused"),
            ),
        ]);
    }

    #[test]
    fn relay_needs_an_onpremises_connector_and_an_accepted_domain() {
        let v = decide(
            "192.0.2.9",
            &[],
            false,
            Some("app@contoso.test"),
            "x@ext.test",
        );
        assert_eq!(relayed_by(&v).as_deref(), Some("contoso/onprem"));
        let v = decide(
            "203.0.113.1",
            &["mail.contoso.test"],
            true,
            None,
            "x@ext.test",
        );
        assert_eq!(relayed_by(&v).as_deref(), Some("contoso/cert"));
        let v = decide("192.0.2.9", &[], false, Some("a@other.test"), "x@ext.test");
        assert_eq!(
            v,
            Err(Denial::RelayDenied {
                matched: Some(cid("contoso/onprem"))
            })
        );
    }

    #[test]
    fn inbound_mail_is_attributed() {
        let v = decide(
            "192.0.2.9",
            &[],
            false,
            Some("a@ext.test"),
            "u@contoso.test",
        );
        assert_eq!(
            v,
            Ok(Accepted {
                tenant: Some(TenantId::new("contoso").unwrap()),
                connector: Some(cid("contoso/onprem")),
                relay: false,
                onprem: true,
            })
        );
        let v = decide(
            "203.0.113.1",
            &[],
            false,
            Some("a@fabrikam.test"),
            "u@other.test",
        );
        assert!(
            matches!(
                v,
                Ok(Accepted {
                    connector: None,
                    ..
                })
            ),
            "{v:?}"
        );
    }

    #[test]
    fn provisioned_domains_are_the_connector_tenants() {
        let snap = snapshot();
        let onprem = cid("contoso/onprem");
        assert!(provisioned(&snap, &onprem, "contoso.test"));
        assert!(!provisioned(&snap, &onprem, "other.test"));
        assert!(!provisioned(&snap, &onprem, "ext.test"));
        assert!(!provisioned(&snap, &cid("bogus/x"), "contoso.test"));
    }
}
