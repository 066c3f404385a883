//! Inbound connectors: how a tenant tells Moat which servers send on its behalf.
//!
//! The fields follow Exchange Online's `New-InboundConnector`: a connector is of type Partner
//! (a third party's server sending to the tenant) or OnPremises (the tenant's own servers, which
//! may relay), and it is matched by the client's IP address (`sender-ip-addresses`) or the
//! subject of its TLS client certificate (`tls-sender-certificate-name`).

use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{ConnectorId, Domain, DomainError, TenantId};

/// Partner or OnPremises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectorKind {
    /// A partner organisation's server.
    Partner,
    /// The tenant's own (on-premises) mail servers; the only kind that may relay.
    OnPremises,
}

impl ConnectorKind {
    /// The name used in configuration and tools.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Partner => "partner",
            Self::OnPremises => "on-premises",
        }
    }
}

impl FromStr for ConnectorKind {
    type Err = ConnectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "partner" => Ok(Self::Partner),
            "on-premises" | "onpremises" => Ok(Self::OnPremises),
            _ => Err(ConnectorError::BadKind(s.to_owned())),
        }
    }
}

impl fmt::Display for ConnectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A certificate subject name a connector accepts: `contoso.com` exactly, or `*.contoso.com`,
/// which covers `contoso.com` and every name below it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CertName {
    domain: Domain,
    wildcard: bool,
}

impl CertName {
    /// Parses `name` or `*.name`.
    pub fn new(raw: &str) -> Result<Self, DomainError> {
        let (wildcard, rest) = match raw.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, raw),
        };
        Ok(Self {
            domain: Domain::new(rest)?,
            wildcard,
        })
    }

    /// Whether a certificate domain is covered.
    pub fn covers(&self, name: &str) -> bool {
        let Ok(name) = Domain::new(name) else {
            return false;
        };
        let (n, d) = (name.as_str(), self.domain.as_str());
        n == d
            || (self.wildcard
                && n.len() > d.len()
                && n.ends_with(d)
                && n.as_bytes()[n.len() - d.len() - 1] == b'.')
    }

    /// Whether this is `*.domain`.
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// The domain part, without a wildcard.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }
}

impl TryFrom<String> for CertName {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<CertName> for String {
    fn from(c: CertName) -> Self {
        c.to_string()
    }
}

impl fmt::Display for CertName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(self.domain.as_str())
    }
}

/// One inbound connector of one tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Connector {
    /// The owning tenant.
    pub tenant: TenantId,
    /// Unique within the tenant.
    pub name: String,
    /// Partner or OnPremises.
    pub kind: ConnectorKind,
    /// A disabled connector matches nothing.
    pub enabled: bool,
    /// Client addresses the connector covers.
    pub sender_ip_addresses: Vec<IpNet>,
    /// Client certificate subject the connector covers.
    pub tls_sender_certificate_name: Option<CertName>,
    /// For Partner connectors: the sender domains in scope (`*` for all).
    pub sender_domains: Vec<String>,
    /// Mail through this connector must arrive over TLS.
    pub require_tls: bool,
    /// Partner: senders of `sender_domains` must come from `sender_ip_addresses`.
    pub restrict_domains_to_ip_addresses: bool,
    /// Partner: senders of `sender_domains` must present `tls_sender_certificate_name`.
    pub restrict_domains_to_certificate: bool,
}

/// Why a connector definition is not acceptable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnectorError {
    /// Unknown connector type.
    #[error("`{0}` is not a connector type (partner or on-premises)")]
    BadKind(String),
    /// Bad name.
    #[error("`{0}` is not a valid connector name (1 to 64 printable characters, no `/`)")]
    BadName(String),
    /// Bad address range.
    #[error("`{0}` is not an IP address or CIDR range")]
    BadAddress(String),
    /// Bad certificate name.
    #[error("`{0}` is not a certificate domain (`name` or `*.name`)")]
    BadCertName(String),
    /// Bad sender domain.
    #[error("`{0}` is not a sender domain (a domain or `*`)")]
    BadSenderDomain(String),
    /// The connector could never match anything.
    #[error("connector `{0}` needs sender IP addresses or a TLS certificate name")]
    NoMatch(String),
}

impl Connector {
    /// A connector with no rules yet: enabled, no sender networks, certificate name or sender
    /// domains, TLS not required, no Partner restrictions. It matches nothing until a network
    /// or a certificate name is set (see [`Connector::validate`]).
    pub fn new(tenant: TenantId, name: impl Into<String>, kind: ConnectorKind) -> Self {
        Self {
            tenant,
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

    /// The connector's id (`tenant/name`).
    pub fn id(&self) -> ConnectorId {
        ConnectorId::new(self.tenant.clone(), self.name.clone())
    }

    /// Checks a connector name: 1 to 64 printable characters without `/`.
    pub fn valid_name(name: &str) -> Result<(), ConnectorError> {
        let ok = !name.is_empty()
            && name.chars().count() <= 64
            && name.chars().all(|c| !c.is_control() && c != '/');
        if ok {
            Ok(())
        } else {
            Err(ConnectorError::BadName(name.to_owned()))
        }
    }

    /// Parses one `sender-ip-addresses` item: an address (a /32 or /128) or a CIDR range.
    pub fn parse_ip(raw: &str) -> Result<IpNet, ConnectorError> {
        let raw = raw.trim();
        raw.parse::<IpNet>()
            .or_else(|_| raw.parse::<std::net::IpAddr>().map(IpNet::from))
            .map(|n| n.trunc())
            .map_err(|_| ConnectorError::BadAddress(raw.to_owned()))
    }

    /// Whether this is an enabled Partner connector that scopes sender domains: one whose
    /// rules apply to its tenant's inbound mail from those domains, wherever it comes from.
    pub fn scopes_senders(&self) -> bool {
        self.enabled && self.kind == ConnectorKind::Partner && !self.sender_domains.is_empty()
    }

    /// Whether `sender-domains` covers a MAIL FROM domain (`*`, the domain, or `*.parent`).
    pub fn scopes_sender(&self, domain: &str) -> bool {
        let domain = domain.to_ascii_lowercase();
        self.sender_domains
            .iter()
            .any(|s| match s.strip_prefix("*.") {
                _ if s == "*" => true,
                Some(parent) => {
                    domain == parent
                        || domain
                            .strip_suffix(parent)
                            .is_some_and(|head| head.ends_with('.'))
                }
                None => *s == domain,
            })
    }

    /// Parses one `sender-domains` item.
    pub fn parse_sender_domain(raw: &str) -> Result<String, ConnectorError> {
        if raw == "*" {
            return Ok("*".into());
        }
        let d = raw.strip_prefix("*.").unwrap_or(raw);
        Domain::new(d)
            .map(|_| raw.to_ascii_lowercase())
            .map_err(|_| ConnectorError::BadSenderDomain(raw.to_owned()))
    }

    /// Checks the invariants the types alone do not carry.
    pub fn validate(&self) -> Result<(), ConnectorError> {
        Self::valid_name(&self.name)?;
        if self.sender_ip_addresses.is_empty() && self.tls_sender_certificate_name.is_none() {
            return Err(ConnectorError::NoMatch(self.name.clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_covers_the_domain_and_below() {
        let c = CertName::new("*.contoso.com").unwrap();
        assert!(c.covers("contoso.com"));
        assert!(c.covers("mail.contoso.com"));
        assert!(c.covers("a.b.Contoso.com"));
        assert!(!c.covers("evilcontoso.com"));
        let exact = CertName::new("mail.contoso.com").unwrap();
        assert!(exact.covers("MAIL.contoso.com"));
        assert!(!exact.covers("x.mail.contoso.com"));
        assert_eq!(c.to_string(), "*.contoso.com");
    }

    #[test]
    fn addresses_and_ranges() {
        assert_eq!(
            Connector::parse_ip("192.0.2.7").unwrap().to_string(),
            "192.0.2.7/32"
        );
        assert_eq!(
            Connector::parse_ip("192.0.2.7/24").unwrap().to_string(),
            "192.0.2.0/24"
        );
        assert_eq!(
            Connector::parse_ip("2001:db8::1/64").unwrap().to_string(),
            "2001:db8::/64"
        );
        assert!(Connector::parse_ip("300.1.1.1").is_err());
        assert!(Connector::parse_ip("10.0.0.0/33").is_err());
    }
}
