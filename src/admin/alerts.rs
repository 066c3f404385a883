//! `moat admin alerts`: alerts raised for tenants' admins, their contacts and the alert transport.

use moat_proto::write_request::Op;
use moat_proto::ReadKind;
use serde_json::{json, Value};

use super::render::{cell, fmt_time, list_cell};
use super::Ctx;
use crate::client::Failure;

#[derive(clap::Subcommand, Debug)]
pub(super) enum AlertsCmd {
    /// List alerts with the state of their deliveries.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Where a tenant's alerts go.
    #[command(subcommand)]
    Contacts(ContactsCmd),
    /// How alert emails leave the cluster.
    #[command(subcommand)]
    Transport(TransportCmd),
}

#[derive(clap::Subcommand, Debug)]
pub(super) enum ContactsCmd {
    /// Show tenants' alert contacts (webhook secrets are not shown).
    Get {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Replace a tenant's alert contacts.
    Set {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// An admin address that gets an email; repeat for more.
        #[arg(long = "email", value_name = "ADDRESS")]
        emails: Vec<String>,
        /// An http:// or https:// URL that gets a signed JSON POST (https: the system's CAs,
        /// or SSL_CERT_FILE on the control nodes).
        #[arg(long, value_name = "URL", requires = "webhook_secret")]
        webhook: Option<String>,
        /// The webhook's HMAC-SHA256 key (X-Moat-Signature).
        #[arg(long, value_name = "SECRET")]
        webhook_secret: Option<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub(super) enum TransportCmd {
    /// Show the SMTP server alert emails go through.
    Get,
    /// Set the SMTP server alert emails go through (an edge, or a smarthost).
    Set {
        /// `host:port`.
        #[arg(long, value_name = "HOST:PORT")]
        smtp: String,
        /// The header From of alert emails.
        #[arg(long, default_value = "Moat alerts <alerts@moat.invalid>")]
        from: String,
    },
}

impl Ctx {
    pub(super) async fn alerts(&self, cmd: AlertsCmd) -> Result<(), Failure> {
        match cmd {
            AlertsCmd::List { tenant } => {
                self.list_pages(
                    ReadKind::Alerts,
                    tenant.as_deref(),
                    ALERT_HEADERS,
                    |reply| {
                        let rows = reply.alerts.iter().map(alert_row).collect();
                        let objects = reply.alerts.iter().map(alert_json).collect();
                        (rows, objects)
                    },
                )
                .await?;
                Ok(())
            }
            AlertsCmd::Contacts(ContactsCmd::Get { tenant }) => {
                self.list_pages(
                    ReadKind::AlertContacts,
                    tenant.as_deref(),
                    &["TENANT", "EMAILS", "WEBHOOK"],
                    |reply| {
                        let rows = reply
                            .alert_contacts
                            .iter()
                            .map(|c| {
                                vec![c.tenant.clone(), list_cell(&c.emails), cell(&c.webhook_url)]
                            })
                            .collect();
                        let objects = reply
                            .alert_contacts
                            .iter()
                            .map(|c| {
                                json!({
                                    "tenant": c.tenant,
                                    "emails": c.emails,
                                    "webhook": c.webhook_url,
                                    "webhook-secret-set": !c.webhook_secret.is_empty(),
                                })
                            })
                            .collect();
                        (rows, objects)
                    },
                )
                .await?;
                Ok(())
            }
            AlertsCmd::Contacts(ContactsCmd::Set {
                tenant,
                emails,
                webhook,
                webhook_secret,
            }) => {
                self.write(Op::SetAlertContacts(moat_proto::AlertContacts {
                    tenant,
                    emails,
                    webhook_url: webhook.unwrap_or_default(),
                    webhook_secret: webhook_secret.unwrap_or_default(),
                }))
                .await
            }
            AlertsCmd::Transport(TransportCmd::Get) => {
                let reply = self.read(ReadKind::AlertContacts, None, None).await?;
                let t = reply.alert_transport.unwrap_or_default();
                self.one(
                    &["SMTP", "FROM"],
                    vec![cell(&t.smtp), cell(&t.from)],
                    json!({"smtp": t.smtp, "from": t.from}),
                );
                Ok(())
            }
            AlertsCmd::Transport(TransportCmd::Set { smtp, from }) => {
                self.write(Op::SetAlertTransport(moat_proto::AlertTransport {
                    smtp,
                    from,
                }))
                .await
            }
        }
    }
}

pub(super) const ALERT_HEADERS: &[&str] = &[
    "TIME",
    "TENANT",
    "SEVERITY",
    "TITLE",
    "DELIVERIES",
    "DETAIL",
];

pub(super) fn alert_row(a: &moat_proto::Alert) -> Vec<String> {
    let deliveries: Vec<String> = a
        .deliveries
        .iter()
        .map(|d| format!("{}:{}({})", d.channel, d.state, d.attempts))
        .collect();
    vec![
        fmt_time(a.at_ms),
        cell(&a.tenant),
        cell(&a.severity),
        cell(&a.title),
        list_cell(&deliveries),
        cell(&a.detail),
    ]
}

pub(super) fn alert_json(a: &moat_proto::Alert) -> Value {
    json!({
        "id": a.id,
        "at-ms": a.at_ms,
        "tenant": a.tenant,
        "severity": a.severity,
        "title": a.title,
        "detail": a.detail,
        "deliveries": a.deliveries.iter().map(|d| json!({
            "channel": d.channel,
            "target": d.target,
            "state": d.state,
            "attempts": d.attempts,
            "last-error": d.last_error,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    #[test]
    fn alerts_list_parses() {
        assert!(parse(&["alerts", "list", "--tenant", "t"]).is_ok());
    }

    #[test]
    fn alerts_render() {
        let a = moat_proto::Alert {
            at_ms: 1_000,
            tenant: "t".into(),
            severity: "warning".into(),
            title: "User blocked".into(),
            detail: "a@t\nover the limit".into(),
            id: 7,
            deliveries: vec![moat_proto::AlertDelivery {
                channel: "email".into(),
                target: "admin@t".into(),
                state: "failed".into(),
                attempts: 8,
                last_error: "SMTP: 550".into(),
            }],
        };
        assert_eq!(
            alert_row(&a),
            vec![
                "1970-01-01T00:00:01Z",
                "t",
                "warning",
                "User blocked",
                "email:failed(8)",
                "a@t over the limit"
            ]
        );
        assert_eq!(alert_json(&a)["at-ms"], 1_000);
        assert_eq!(alert_json(&a)["deliveries"][0]["last-error"], "SMTP: 550");
    }
}
