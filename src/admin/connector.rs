//! `moat admin connector`: inbound connectors (Partner and OnPremises), their table and JSON forms.

use moat_proto::write_request::Op;
use moat_proto::ReadKind;
use moat_proto::{Connector, ConnectorKind};
use serde_json::{json, Value};

use super::render::{cell, list_cell};
use super::Ctx;
use crate::client::Failure;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ConnectorType {
    /// Mail from a partner organization.
    Partner,
    /// Mail from the tenant's own servers.
    OnPremises,
}

#[derive(clap::Subcommand, Debug)]
pub(super) enum ConnectorCmd {
    /// List connectors.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Show one connector.
    Get {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Connector name.
        name: String,
    },
    /// Create or replace a connector.
    Create {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Connector name.
        name: String,
        /// Connector type.
        #[arg(long = "type", value_enum)]
        kind: ConnectorType,
        /// A sender IP address or CIDR range; repeat for more.
        #[arg(long = "sender-ip", value_name = "CIDR")]
        sender_ips: Vec<String>,
        /// Certificate subject domain the sender must present (exact or `*.domain`).
        #[arg(long, value_name = "NAME")]
        tls_cert_name: Option<String>,
        /// A sender domain; repeat for more.
        #[arg(long = "sender-domain", value_name = "D")]
        sender_domains: Vec<String>,
        /// Require TLS.
        #[arg(long)]
        require_tls: bool,
        /// Only accept the sender domains from the sender IP addresses.
        #[arg(long)]
        restrict_domains_to_ip: bool,
        /// Only accept the sender domains with the TLS certificate name.
        #[arg(long)]
        restrict_domains_to_cert: bool,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// Delete a connector.
    Delete {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Connector name.
        name: String,
    },
}

impl Ctx {
    pub(super) async fn connector(&self, cmd: ConnectorCmd) -> Result<(), Failure> {
        match cmd {
            ConnectorCmd::List { tenant } => {
                self.list_pages(
                    ReadKind::Connector,
                    tenant.as_deref(),
                    CONNECTOR_HEADERS,
                    |reply| {
                        let rows = reply.connectors.iter().map(connector_row).collect();
                        let objects = reply.connectors.iter().map(connector_json).collect();
                        (rows, objects)
                    },
                )
                .await?;
                Ok(())
            }
            ConnectorCmd::Get { tenant, name } => {
                let reply = self
                    .read(ReadKind::Connector, Some(&tenant), Some(&name))
                    .await?;
                let c = reply
                    .connectors
                    .iter()
                    .find(|c| c.name == name && (c.tenant == tenant || c.tenant.is_empty()))
                    .ok_or_else(|| {
                        Failure::Refused(format!(
                            "connector {name:?} not found in tenant {tenant:?}"
                        ))
                    })?;
                self.one(CONNECTOR_HEADERS, connector_row(c), connector_json(c));
                Ok(())
            }
            ConnectorCmd::Create {
                tenant,
                name,
                kind,
                sender_ips,
                tls_cert_name,
                sender_domains,
                require_tls,
                restrict_domains_to_ip,
                restrict_domains_to_cert,
                disabled,
            } => {
                let kind = match kind {
                    ConnectorType::Partner => ConnectorKind::Partner,
                    ConnectorType::OnPremises => ConnectorKind::OnPremises,
                };
                let connector = Connector {
                    tenant,
                    name,
                    kind: kind as i32,
                    enabled: !disabled,
                    sender_ip_addresses: sender_ips,
                    tls_sender_certificate_name: tls_cert_name.unwrap_or_default(),
                    sender_domains,
                    require_tls,
                    restrict_domains_to_ip_addresses: restrict_domains_to_ip,
                    restrict_domains_to_certificate: restrict_domains_to_cert,
                };
                self.write(Op::PutConnector(connector)).await
            }
            ConnectorCmd::Delete { tenant, name } => {
                self.write(Op::DeleteConnector(moat_proto::NameRef { tenant, name }))
                    .await
            }
        }
    }
}

pub(super) fn connector_type(kind: i32) -> &'static str {
    match ConnectorKind::try_from(kind) {
        Ok(ConnectorKind::Partner) => "partner",
        Ok(ConnectorKind::OnPremises) => "on-premises",
        _ => "unspecified",
    }
}

pub(super) const CONNECTOR_HEADERS: &[&str] = &[
    "TENANT",
    "NAME",
    "TYPE",
    "ENABLED",
    "SENDER-IPS",
    "TLS-CERT-NAME",
    "SENDER-DOMAINS",
    "REQUIRE-TLS",
    "RESTRICT-DOMAINS-TO",
];

pub(super) fn connector_row(c: &Connector) -> Vec<String> {
    let mut restrict = Vec::new();
    if c.restrict_domains_to_ip_addresses {
        restrict.push("ip".to_string());
    }
    if c.restrict_domains_to_certificate {
        restrict.push("certificate".to_string());
    }
    vec![
        cell(&c.tenant),
        cell(&c.name),
        connector_type(c.kind).to_string(),
        c.enabled.to_string(),
        list_cell(&c.sender_ip_addresses),
        cell(&c.tls_sender_certificate_name),
        list_cell(&c.sender_domains),
        c.require_tls.to_string(),
        list_cell(&restrict),
    ]
}

pub(super) fn connector_json(c: &Connector) -> Value {
    json!({
        "tenant": c.tenant,
        "name": c.name,
        "type": connector_type(c.kind),
        "enabled": c.enabled,
        "sender-ip-addresses": c.sender_ip_addresses,
        "tls-sender-certificate-name": c.tls_sender_certificate_name,
        "sender-domains": c.sender_domains,
        "require-tls": c.require_tls,
        "restrict-domains-to-ip-addresses": c.restrict_domains_to_ip_addresses,
        "restrict-domains-to-certificate": c.restrict_domains_to_certificate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connector_json_uses_kebab_case_keys() {
        let c = Connector {
            tenant: "contoso.com".into(),
            name: "partner-a".into(),
            kind: ConnectorKind::OnPremises as i32,
            enabled: true,
            sender_ip_addresses: vec!["192.0.2.0/24".into()],
            tls_sender_certificate_name: "*.contoso.com".into(),
            sender_domains: vec!["contoso.com".into()],
            require_tls: true,
            restrict_domains_to_ip_addresses: false,
            restrict_domains_to_certificate: true,
        };
        assert_eq!(
            connector_json(&c),
            json!({
                "tenant": "contoso.com",
                "name": "partner-a",
                "type": "on-premises",
                "enabled": true,
                "sender-ip-addresses": ["192.0.2.0/24"],
                "tls-sender-certificate-name": "*.contoso.com",
                "sender-domains": ["contoso.com"],
                "require-tls": true,
                "restrict-domains-to-ip-addresses": false,
                "restrict-domains-to-certificate": true,
            })
        );
        assert_eq!(connector_type(ConnectorKind::Partner as i32), "partner");
        assert_eq!(connector_type(99), "unspecified");
        let row = connector_row(&c);
        assert_eq!(row[2], "on-premises");
        assert_eq!(row[8], "certificate");
    }
}
