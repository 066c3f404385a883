//! Alerts for tenants' admins: the records, where each tenant's alerts go, how alert emails
//! leave the cluster, and the leader's reports of each delivery attempt.

use std::collections::{BTreeMap, VecDeque};

use moat_shared::TenantId;
use serde::{Deserialize, Serialize};

use super::error::{Kind, Rejection};
use super::tenants::Directory;
use super::State;

/// The alerts part of the state: the newest alerts with their deliveries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alerts {
    /// The newest alerts, oldest first.
    #[serde(default, rename = "alerts")]
    pub records: VecDeque<Alert>,
}

/// The part of the state that says where alerts go: each tenant's contacts, the transport of
/// alert emails, and the id the next alert gets. (A part of its own, apart from [`Alerts`],
/// because its fields come later in the snapshot's JSON.)
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routing {
    /// Where each tenant's alerts go.
    #[serde(default, rename = "alert_contacts")]
    pub contacts: BTreeMap<TenantId, AlertContacts>,
    /// How alert emails are sent.
    #[serde(default, rename = "alert_transport")]
    pub transport: AlertTransport,
    /// The id the next alert gets.
    #[serde(default, rename = "next_alert_id")]
    pub next_id: u64,
}

/// How many alerts are kept.
const ALERTS_KEEP: usize = 10_000;

/// An alert for a tenant's admins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// When (entry time).
    pub at_ms: i64,
    /// The tenant whose admins are told.
    pub tenant: TenantId,
    /// `high`, `medium` or `low`.
    pub severity: String,
    /// Short title, e.g. `User restricted from sending email`.
    pub title: String,
    /// What happened.
    pub detail: String,
    /// Cluster-unique, increasing.
    #[serde(default)]
    pub id: u64,
    /// One per channel and target, made from the tenant's contacts when the alert was raised.
    #[serde(default)]
    pub deliveries: Vec<Delivery>,
}

/// How many times an alert delivery is tried before it is marked failed.
pub const MAX_DELIVERY_ATTEMPTS: u32 = 8;

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryState {
    /// Not delivered yet; the leader tries (again).
    Pending,
    /// Accepted by the receiver.
    Delivered,
    /// Given up after [`MAX_DELIVERY_ATTEMPTS`].
    Failed,
}

/// One delivery of an alert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// `webhook` or `email`.
    pub channel: String,
    /// The URL or the address.
    pub target: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made.
    pub attempts: u32,
    /// The last failure, empty if none.
    pub last_error: String,
    /// When it was last tried (entry time).
    pub at_ms: i64,
}

/// Where a tenant's alerts go.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertContacts {
    /// Admin addresses that get an email.
    pub emails: Vec<String>,
    /// An `http://` URL that gets a signed JSON POST; empty for none.
    pub webhook_url: String,
    /// The HMAC-SHA256 key of the webhook signature.
    pub webhook_secret: String,
}

/// How alert emails leave the cluster: an SMTP server (an edge, or a smarthost).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertTransport {
    /// `host:port`.
    pub smtp: String,
    /// The header From of alert emails (the envelope sender is `<>`).
    pub from: String,
}

impl Routing {
    /// Sets where a tenant's alerts go.
    pub(super) fn set_contacts(
        &mut self,
        directory: &Directory,
        tenant: &TenantId,
        contacts: &AlertContacts,
    ) -> Result<String, Rejection> {
        directory.require(tenant)?;
        // The full check is at proposal (`alerts::WebhookUrl::parse`); apply never
        // refuses what an older version accepted, so replicas replaying an old log
        // agree.
        let url = contacts.webhook_url.to_ascii_lowercase();
        if !url.is_empty() && !url.starts_with("http://") && !url.starts_with("https://") {
            return Err(Rejection::invalid(
                Kind::AlertContacts,
                "the webhook must be an http:// or https:// URL",
            ));
        }
        if contacts.emails.iter().any(|e| !e.contains('@')) {
            return Err(Rejection::invalid(
                Kind::AlertContacts,
                "alert emails must be addresses",
            ));
        }
        self.contacts.insert(tenant.clone(), contacts.clone());
        Ok(format!(
            "alert contacts of {tenant}: {} email(s){}",
            contacts.emails.len(),
            if contacts.webhook_url.is_empty() {
                String::new()
            } else {
                format!(", webhook {}", contacts.webhook_url)
            }
        ))
    }

    /// Sets how alert emails are sent.
    pub(super) fn set_transport(&mut self, transport: &AlertTransport) -> String {
        self.transport = transport.clone();
        format!("alert emails go through {}", transport.smtp)
    }
}

impl Alerts {
    /// Records one delivery attempt the leader made at `now` (the entry's time); a settled
    /// delivery stays as it is.
    pub(super) fn delivery(
        &mut self,
        now: i64,
        alert: u64,
        channel: &str,
        target: &str,
        error: Option<&String>,
    ) -> Result<String, Rejection> {
        let d = self
            .records
            .iter_mut()
            .find(|a| a.id == alert)
            .and_then(|a| {
                a.deliveries
                    .iter_mut()
                    .find(|d| d.channel == channel && d.target == target)
            })
            .ok_or_else(|| Rejection::NoDelivery {
                alert,
                channel: channel.to_owned(),
                target: target.to_owned(),
            })?;
        if d.state != DeliveryState::Pending {
            return Ok(format!("alert {alert} {channel} already settled"));
        }
        d.attempts += 1;
        d.at_ms = now;
        match error {
            None => d.state = DeliveryState::Delivered,
            Some(e) => {
                d.last_error = e.clone();
                if d.attempts >= MAX_DELIVERY_ATTEMPTS {
                    d.state = DeliveryState::Failed;
                }
            }
        }
        Ok(format!(
            "alert {alert} {channel} to {target}: {:?} after {} attempt(s)",
            d.state, d.attempts
        ))
    }
}

impl State {
    /// Raises an alert: gives it the next id and one pending delivery per contact of its
    /// tenant, and keeps the newest [`ALERTS_KEEP`].
    pub(super) fn alert(&mut self, mut a: Alert) {
        self.alert_routing.next_id += 1;
        a.id = self.alert_routing.next_id;
        let pending = |channel: &str, target: &str| Delivery {
            channel: channel.into(),
            target: target.into(),
            state: DeliveryState::Pending,
            attempts: 0,
            last_error: String::new(),
            at_ms: a.at_ms,
        };
        if let Some(c) = self.alert_routing.contacts.get(&a.tenant) {
            if !c.webhook_url.is_empty() {
                a.deliveries.push(pending("webhook", &c.webhook_url));
            }
            for e in &c.emails {
                a.deliveries.push(pending("email", e));
            }
        }
        self.alerts.records.push_back(a);
        while self.alerts.records.len() > ALERTS_KEEP {
            self.alerts.records.pop_front();
        }
    }
}
