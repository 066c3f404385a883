//! Connector rules: a restricted connector is refused `550 5.7.711` at MAIL; a Partner connector
//! of the recipient's tenant that scopes the sender's domain refuses it from outside its IP
//! addresses or certificate (`550 5.7.51`, Exchange Online's observed text naming the connector
//! and its restriction); a connector requiring TLS refuses clear text
//! (`451 4.7.10`).

use moat_shared::{Connector, ConnectorKind, EntityKind, PolicySnapshot};

use super::{Client, Denial};

/// MAIL: refuses a client that matches a restricted connector (the first one, certificate
/// matches first).
pub fn restricted(
    snapshot: &PolicySnapshot,
    client: &Client<'_>,
    now_ms: i64,
) -> Result<(), Denial> {
    match client.all().find(|c| {
        snapshot
            .restriction(EntityKind::Connector, &c.tenant, &c.name, now_ms)
            .is_some()
    }) {
        Some(c) => Err(Denial::ConnectorRestricted { connector: c.id() }),
        None => Ok(()),
    }
}

/// RCPT of inbound mail: the Partner connectors of the recipient's tenant in `scoped` (those
/// that scope the sender's domain `from_domain`) apply their restrictions, wherever the client
/// came from.
pub fn partner(
    client: &Client<'_>,
    scoped: &[&Connector],
    from_domain: &str,
) -> Result<(), Denial> {
    for c in scoped {
        let by_ip = client.by_ip.iter().any(|m| std::ptr::eq(*m, *c));
        let by_cert = client.by_cert.iter().any(|m| std::ptr::eq(*m, *c));
        if (c.restrict_domains_to_ip_addresses && !by_ip)
            || (c.restrict_domains_to_certificate && !by_cert)
        {
            return Err(Denial::PartnerRestricted {
                connector: c.id(),
                sender_domain: from_domain.to_owned(),
                ip: client.ip,
                restrict_to_ip: c.restrict_domains_to_ip_addresses,
                restrict_to_certificate: c.restrict_domains_to_certificate,
            });
        }
    }
    Ok(())
}

/// The text of the `550 5.7.51` refusal: Exchange Online's observed wording ("There is a
/// partner connector configured that matched the message's recipient domain. The connector had
/// either the RestrictDomainsToIPAddresses or RestrictDomainsToCertificate set"), naming the
/// connector and the restriction(s) it actually has instead of "either ... or" (see
/// `docs/exchange-sources.md`). Characters outside printable ASCII in the name are sent as `?`.
pub fn partner_text(name: &str, restrict_to_ip: bool, restrict_to_certificate: bool) -> String {
    let name: String = name
        .chars()
        .map(|ch| {
            if ch == ' ' || ch.is_ascii_graphic() {
                ch
            } else {
                '?'
            }
        })
        .collect();
    let settings = match (restrict_to_ip, restrict_to_certificate) {
        (true, true) => "RestrictDomainsToIPAddresses and RestrictDomainsToCertificate",
        (false, true) => "RestrictDomainsToCertificate",
        // A denial is only made with one of them set; IP addresses is the form to fall back on.
        _ => "RestrictDomainsToIPAddresses",
    };
    format!(
        "TenantInboundAttribution; There is a partner connector configured that matched the \
         message's recipient domain. The connector \"{name}\" had the {settings} set"
    )
}

/// RCPT of inbound mail: TLS is required when the connector the client came `through`, or a
/// scoped Partner connector, requires it (a scoped connector of another kind only when the
/// client matches it).
pub fn require_tls(
    client: &Client<'_>,
    through: Option<&Connector>,
    scoped: &[&Connector],
) -> Result<(), Denial> {
    if client.tls {
        return Ok(());
    }
    match through
        .into_iter()
        .chain(scoped.iter().copied())
        .find(|c| c.require_tls && (client.matches(c) || c.kind == ConnectorKind::Partner))
    {
        Some(c) => Err(Denial::ConnectorRequiresTls { connector: c.id() }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::{relay, Denial};
    use super::*;
    use moat_shared::{RestrictedEntity, TenantId};

    fn with_restricted(name: &str) -> PolicySnapshot {
        let snap = snapshot();
        let restricted = RestrictedEntity {
            tenant: TenantId::new("contoso").unwrap(),
            kind: EntityKind::Connector,
            name: name.into(),
            reason: "test".into(),
            since_ms: 0,
            until_ms: Some(1_000),
        };
        snap.apply(&moat_shared::PolicyChange {
            version: 2,
            restricted: vec![restricted],
            ..Default::default()
        })
        .unwrap()
    }

    fn rcpt(ip: &str, tls: bool, from: &str, to: &str) -> Option<Denial> {
        let snap = snapshot();
        let client = Client::new(&snap, ip.parse().unwrap(), &[], tls);
        relay::recipient(&snap, &client, Some(&addr(from)), &addr(to)).err()
    }

    /// One row per reply of the connector rules: (case, inputs -> denial, reply, counter).
    #[test]
    fn connector_rules_table() {
        let snap = with_restricted("onprem");
        let at = |ip: &str, now: i64| {
            let c = Client::new(&snap, ip.parse().unwrap(), &[], false);
            restricted(&snap, &c, now).err()
        };
        check(&[
            (
                "restricted connector, matched by IP",
                at("192.0.2.9", 0),
                Some("550 5.7.711 Access denied, bad inbound connector. AS(2204)"),
                None,
            ),
            ("restriction expired", at("192.0.2.9", 1_000), None, None),
            ("no connector matched", at("203.0.113.1", 0), None, None),
            (
                "partner-scoped domain from outside the partner's IP",
                rcpt("192.0.2.9", true, "a@fabrikam.test", "u@contoso.test"),
                Some("550 5.7.51 TenantInboundAttribution; There is a partner connector configured that matched the message's recipient domain. The connector \"partner\" had the RestrictDomainsToIPAddresses set"),
                None,
            ),
            (
                "partner-scoped domain from the partner's IP in clear text",
                rcpt("198.51.100.7", false, "a@fabrikam.test", "u@contoso.test"),
                Some("451 4.7.10 The recipient's inbound connector requires TLS; use STARTTLS"),
                None,
            ),
            (
                "partner-scoped domain from the partner's IP over TLS",
                rcpt("198.51.100.7", true, "a@fabrikam.test", "u@contoso.test"),
                None,
                None,
            ),
            (
                "another tenant is not bound by contoso's partner connector",
                rcpt("203.0.113.1", false, "a@fabrikam.test", "u@other.test"),
                None,
                None,
            ),
        ]);
        // The denials name what decided them.
        assert_eq!(
            at("192.0.2.9", 0),
            Some(Denial::ConnectorRestricted {
                connector: cid("contoso/onprem")
            })
        );
        assert_eq!(
            rcpt("192.0.2.9", true, "a@fabrikam.test", "u@contoso.test"),
            Some(Denial::PartnerRestricted {
                connector: cid("contoso/partner"),
                sender_domain: "fabrikam.test".into(),
                ip: "192.0.2.9".parse().unwrap(),
                restrict_to_ip: true,
                restrict_to_certificate: false,
            })
        );
        // The 5.7.51 text names the connector's restrictions as they are set.
        assert!(partner_text("p", false, true)
            .ends_with("The connector \"p\" had the RestrictDomainsToCertificate set"));
        assert!(partner_text("p q", true, true).ends_with(
            "The connector \"p q\" had the RestrictDomainsToIPAddresses and RestrictDomainsToCertificate set"
        ));
        assert!(partner_text("pé\r\n", true, false).contains("\"p???\""));
        assert_eq!(
            rcpt("198.51.100.7", false, "a@fabrikam.test", "u@contoso.test"),
            Some(Denial::ConnectorRequiresTls {
                connector: cid("contoso/partner")
            })
        );
    }
}
