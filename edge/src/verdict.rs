//! Policy decisions: pure functions of a snapshot and the session's facts.
//!
//! No I/O, no clock (the caller passes the time): two edges with the same snapshot version
//! decide alike.
//!
//! - [`Client`]: the connectors a session's client matches, by IP and by validated certificate.
//! - [`mail`]: a restricted connector is refused `550 5.7.711` at MAIL.
//! - [`recipient`]: inbound mail for an accepted domain (with the Partner connector rules of
//!   the recipient's tenant), or relay, allowed only under the rules in force since November
//!   2023: the certificate domain or the MAIL FROM domain is an accepted domain of a tenant
//!   AND the client matches an OnPremises connector of that tenant, by IP or certificate. The
//!   header From never counts. Otherwise `550 5.7.64`.

use std::net::IpAddr;

use moat_shared::{Connector, ConnectorKind, EntityKind, PolicySnapshot, TenantId};

use crate::session::command::Address;
use crate::session::reply::{self, Reply};

/// The decision on one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptVerdict {
    /// Accepted.
    Accept(Accepted),
    /// Refused with this reply.
    Deny(Reply),
}

/// What an accepted recipient is attributed to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    /// The tenant: the recipient's for inbound mail, the relaying tenant for relay.
    pub tenant: Option<TenantId>,
    /// The connector the mail arrived through (`tenant/name`), if one matched.
    pub connector: Option<String>,
    /// Whether the recipient is outside every accepted domain (relay).
    pub relay: bool,
    /// Whether that connector is an OnPremises one (its Exchange build is tracked).
    pub onprem: bool,
}

/// The connectors a session's client matches.
#[derive(Debug, Default)]
pub struct Client<'a> {
    /// By client IP.
    pub by_ip: Vec<&'a Connector>,
    /// By the validated client certificate's names.
    pub by_cert: Vec<&'a Connector>,
    /// The validated client certificate's names.
    pub cert_domains: &'a [String],
    /// Whether the session is inside TLS.
    pub tls: bool,
}

impl<'a> Client<'a> {
    /// Looks the client up in the snapshot's connector index.
    pub fn new(
        snapshot: &'a PolicySnapshot,
        ip: IpAddr,
        cert_domains: &'a [String],
        tls: bool,
    ) -> Self {
        Self {
            by_ip: snapshot.connectors_by_ip(ip),
            by_cert: snapshot.connectors_by_certificate(cert_domains),
            cert_domains,
            tls,
        }
    }

    fn all(&self) -> impl Iterator<Item = &'a Connector> + '_ {
        self.by_cert.iter().chain(self.by_ip.iter()).copied()
    }

    fn matches(&self, c: &Connector) -> bool {
        self.all().any(|m| std::ptr::eq(m, c))
    }

    /// The connector of `tenant` this client came through: certificate first, then IP.
    fn connector_of(&self, tenant: &TenantId) -> Option<&'a Connector> {
        self.all().find(|c| c.tenant == *tenant)
    }
}

/// The key a connector is known by in counters and restrictions: `tenant/name`.
pub fn connector_key(c: &Connector) -> String {
    format!("{}/{}", c.tenant, c.name)
}

/// MAIL: refuses a client that matches a restricted connector.
pub fn mail(snapshot: &PolicySnapshot, client: &Client<'_>, now_ms: i64) -> Option<Reply> {
    client
        .all()
        .any(|c| {
            snapshot
                .restriction(EntityKind::Connector, &c.tenant, &c.name, now_ms)
                .is_some()
        })
        .then(|| reply::RESTRICTED_CONNECTOR.into())
}

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

/// Decides whether `rcpt` may be received from `client` with envelope sender `from`.
pub fn recipient(
    snapshot: &PolicySnapshot,
    client: &Client<'_>,
    from: Option<&Address>,
    rcpt: &Address,
) -> RcptVerdict {
    let from_domain = from.map(|a| a.domain.as_str());
    if let Some((t, scopes)) = snapshot.inbound(&rcpt.domain) {
        // Inbound. A Partner connector of this tenant that scopes the sender's domain applies
        // its restrictions, wherever the client came from.
        let scoped: Vec<&Connector> = match from_domain {
            Some(d) => scopes.filter(|c| c.scopes_sender(d)).collect(),
            None => Vec::new(),
        };
        for c in &scoped {
            let by_ip = client.by_ip.iter().any(|m| std::ptr::eq(*m, *c));
            let by_cert = client.by_cert.iter().any(|m| std::ptr::eq(*m, *c));
            if (c.restrict_domains_to_ip_addresses && !by_ip)
                || (c.restrict_domains_to_certificate && !by_cert)
            {
                return RcptVerdict::Deny(reply::PARTNER_RESTRICTED.into());
            }
        }
        let through = client.connector_of(&t.id);
        let needs_tls = through
            .into_iter()
            .chain(scoped.iter().copied())
            .any(|c| c.require_tls && (client.matches(c) || c.kind == ConnectorKind::Partner));
        if needs_tls && !client.tls {
            return RcptVerdict::Deny(reply::CONNECTOR_REQUIRES_TLS.into());
        }
        return RcptVerdict::Accept(Accepted {
            tenant: Some(t.id.clone()),
            connector: through.map(connector_key),
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
        Some(c) => RcptVerdict::Accept(Accepted {
            tenant: Some(c.tenant.clone()),
            connector: Some(connector_key(c)),
            relay: true,
            onprem: true,
        }),
        None => RcptVerdict::Deny(reply::RELAY_DENIED.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_shared::{CertName, Domain, RestrictedEntity, Tenant};

    fn tenant(id: &str, domains: &[&str]) -> Tenant {
        Tenant {
            id: TenantId::new(id).unwrap(),
            display_name: id.into(),
            accepted_domains: domains.iter().map(|d| Domain::new(d).unwrap()).collect(),
            allow_legacy_tls_clients: false,
        }
    }

    fn connector(tenant: &str, name: &str, kind: ConnectorKind) -> Connector {
        Connector {
            tenant: TenantId::new(tenant).unwrap(),
            name: name.into(),
            kind,
            enabled: true,
            sender_ip_addresses: vec![],
            tls_sender_certificate_name: None,
            sender_domains: vec![],
            require_tls: false,
            restrict_domains_to_ip_addresses: false,
            restrict_domains_to_certificate: false,
        }
    }

    fn snapshot() -> PolicySnapshot {
        let mut onprem = connector("contoso", "onprem", ConnectorKind::OnPremises);
        onprem.sender_ip_addresses = vec![Connector::parse_ip("192.0.2.0/24").unwrap()];
        let mut cert = connector("contoso", "cert", ConnectorKind::OnPremises);
        cert.tls_sender_certificate_name = Some(CertName::new("*.contoso.test").unwrap());
        let mut partner = connector("contoso", "partner", ConnectorKind::Partner);
        partner.sender_ip_addresses = vec![Connector::parse_ip("198.51.100.7").unwrap()];
        partner.sender_domains = vec!["fabrikam.test".into()];
        partner.restrict_domains_to_ip_addresses = true;
        partner.require_tls = true;
        PolicySnapshot::new(
            1,
            vec![
                tenant("contoso", &["contoso.test"]),
                tenant("other", &["other.test"]),
            ],
        )
        .unwrap()
        .with_connectors(vec![onprem, cert, partner])
        .unwrap()
    }

    fn addr(a: &str) -> Address {
        let (local, domain) = a.split_once('@').unwrap();
        Address {
            local: local.into(),
            domain: domain.into(),
        }
    }

    fn decide(ip: &str, certs: &[&str], tls: bool, from: Option<&str>, to: &str) -> RcptVerdict {
        let snap = snapshot();
        let certs: Vec<String> = certs.iter().map(|s| s.to_string()).collect();
        let client = Client::new(&snap, ip.parse().unwrap(), &certs, tls);
        recipient(&snap, &client, from.map(addr).as_ref(), &addr(to))
    }

    fn relayed_by(v: &RcptVerdict) -> Option<&str> {
        match v {
            RcptVerdict::Accept(a) if a.relay => a.connector.as_deref(),
            _ => None,
        }
    }

    #[test]
    fn relay_needs_an_onpremises_connector_and_an_accepted_domain() {
        // IP route with an accepted MAIL FROM.
        let v = decide(
            "192.0.2.9",
            &[],
            false,
            Some("app@contoso.test"),
            "x@ext.test",
        );
        assert_eq!(relayed_by(&v), Some("contoso/onprem"));
        // IP route with a foreign MAIL FROM: refused whatever the header From says.
        let v = decide("192.0.2.9", &[], false, Some("app@ext.test"), "x@ext.test");
        assert_eq!(v, RcptVerdict::Deny(reply::RELAY_DENIED.into()));
        // Certificate route: the certificate's domain is under an accepted domain; a null
        // sender relays only this way.
        let v = decide(
            "203.0.113.1",
            &["mail.contoso.test"],
            true,
            None,
            "x@ext.test",
        );
        assert_eq!(relayed_by(&v), Some("contoso/cert"));
        let v = decide("192.0.2.9", &[], false, None, "x@ext.test");
        assert_eq!(v, RcptVerdict::Deny(reply::RELAY_DENIED.into()));
        // No connector matched: refused even with an accepted MAIL FROM.
        let v = decide(
            "203.0.113.1",
            &[],
            true,
            Some("a@contoso.test"),
            "x@ext.test",
        );
        assert_eq!(v, RcptVerdict::Deny(reply::RELAY_DENIED.into()));
        // A connector of one tenant does not relay for another tenant's domain.
        let v = decide("192.0.2.9", &[], false, Some("a@other.test"), "x@ext.test");
        assert_eq!(v, RcptVerdict::Deny(reply::RELAY_DENIED.into()));
    }

    #[test]
    fn inbound_mail_is_attributed_and_partner_rules_apply() {
        let v = decide(
            "192.0.2.9",
            &[],
            false,
            Some("a@ext.test"),
            "u@contoso.test",
        );
        assert_eq!(
            v,
            RcptVerdict::Accept(Accepted {
                tenant: Some(TenantId::new("contoso").unwrap()),
                connector: Some("contoso/onprem".into()),
                relay: false,
                onprem: true,
            })
        );
        // fabrikam.test senders must come from the partner's IP, over TLS.
        let v = decide(
            "203.0.113.1",
            &[],
            true,
            Some("a@fabrikam.test"),
            "u@contoso.test",
        );
        assert_eq!(v, RcptVerdict::Deny(reply::PARTNER_RESTRICTED.into()));
        let v = decide(
            "198.51.100.7",
            &[],
            false,
            Some("a@fabrikam.test"),
            "u@contoso.test",
        );
        assert_eq!(v, RcptVerdict::Deny(reply::CONNECTOR_REQUIRES_TLS.into()));
        let v = decide(
            "198.51.100.7",
            &[],
            true,
            Some("a@fabrikam.test"),
            "u@contoso.test",
        );
        assert!(matches!(v, RcptVerdict::Accept(_)), "{v:?}");
        // Other tenants are not bound by contoso's partner connector.
        let v = decide(
            "203.0.113.1",
            &[],
            false,
            Some("a@fabrikam.test"),
            "u@other.test",
        );
        assert!(matches!(v, RcptVerdict::Accept(_)), "{v:?}");
    }

    #[test]
    fn restricted_connectors_are_refused_at_mail() {
        let snap = snapshot();
        let restricted = RestrictedEntity {
            tenant: TenantId::new("contoso").unwrap(),
            kind: EntityKind::Connector,
            name: "onprem".into(),
            reason: "test".into(),
            since_ms: 0,
            until_ms: None,
        };
        let snap = PolicySnapshot::new(2, snap.tenants().to_vec())
            .unwrap()
            .with_connectors(snap.connectors().to_vec())
            .unwrap()
            .with_submission(vec![], vec![restricted], vec![])
            .unwrap();
        let c = Client::new(&snap, "192.0.2.9".parse().unwrap(), &[], false);
        assert_eq!(mail(&snap, &c, 0), Some(reply::RESTRICTED_CONNECTOR.into()));
        let c = Client::new(&snap, "203.0.113.1".parse().unwrap(), &[], false);
        assert_eq!(mail(&snap, &c, 0), None);
    }
}
