//! The leader's alert deliverer: a task that reads the pending alert deliveries, tries each
//! (signed webhook or email, see [`crate::alerts`]) and commits every attempt's outcome
//! through the node thread like any other write.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use moat_shared::time::now_ms;
use tokio::sync::oneshot;

use super::Shared;
use crate::raft::{Req, REQUEST_TIMEOUT};
use crate::state::{Command, Proposal, State};

/// Work for the alert deliverer: an alert, one of its pending deliveries, the tenant's
/// contacts and the email transport.
type DeliveryWork = (
    crate::state::Alert,
    crate::state::Delivery,
    crate::state::AlertContacts,
    crate::state::AlertTransport,
);

fn pending_deliveries(state: &State) -> Vec<DeliveryWork> {
    state
        .alerts
        .records
        .iter()
        .flat_map(|a| {
            a.deliveries
                .iter()
                .filter(|d| d.state == crate::state::DeliveryState::Pending)
                .map(move |d| {
                    (
                        a.clone(),
                        d.clone(),
                        state
                            .alert_routing
                            .contacts
                            .get(&a.tenant)
                            .cloned()
                            .unwrap_or_default(),
                        state.alert_routing.transport.clone(),
                    )
                })
        })
        .collect()
}

/// On the leader: tries each pending alert delivery (again, with exponential backoff from 1 s
/// to about 4 minutes) and commits each attempt's outcome, so any leader can take over and
/// every failure is visible in `moat admin alerts list`.
pub(crate) async fn deliver_alerts(shared: Arc<Shared>) {
    let mut next_try: HashMap<(u64, String, String), Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let leader = shared
            .view
            .borrow()
            .status
            .as_ref()
            .is_some_and(|s| s.leader == shared.id);
        if !leader {
            next_try.clear();
            continue;
        }
        let (tx, rx) = oneshot::channel();
        shared.send(Req::Read(
            true,
            Box::new(move |state: &State| {
                let _ = tx.send(pending_deliveries(state));
            }),
        ));
        let Ok(Ok(work)) = tokio::time::timeout(REQUEST_TIMEOUT, rx).await else {
            continue;
        };
        for (alert, d, contacts, transport) in work {
            let key = (alert.id, d.channel.clone(), d.target.clone());
            if next_try.get(&key).is_some_and(|t| *t > Instant::now()) {
                continue;
            }
            let result = match d.channel.as_str() {
                "webhook" => {
                    crate::alerts::webhook(
                        &d.target,
                        &contacts.webhook_secret,
                        &alert,
                        now_ms() / 1000,
                    )
                    .await
                }
                _ if transport.smtp.is_empty() => Err(
                    "no alert email transport (moat admin alerts transport set --smtp HOST:PORT)"
                        .to_owned(),
                ),
                _ => {
                    let from = if transport.from.is_empty() {
                        "Moat alerts <alerts@moat.invalid>"
                    } else {
                        transport.from.as_str()
                    };
                    let date = moat_shared::time::rfc5322_date(SystemTime::now());
                    crate::alerts::email(&transport.smtp, from, &d.target, &alert, &date).await
                }
            };
            if let Err(e) = &result {
                tracing::warn!(alert = alert.id, channel = %d.channel, target = %d.target, "alert delivery failed: {e}");
            }
            metrics::counter!(
                "moat_control_alert_deliveries_total",
                "channel" => if d.channel == "webhook" { "webhook" } else { "email" },
                "outcome" => if result.is_ok() { "delivered" } else { "failed" }
            )
            .increment(1);
            next_try.insert(
                key,
                Instant::now() + Duration::from_secs(1 << d.attempts.min(8)),
            );
            let p = Proposal {
                at_ms: now_ms(),
                actor: "system".into(),
                request_id: None,
                command: Command::AlertDelivery {
                    alert: alert.id,
                    channel: d.channel,
                    target: d.target,
                    error: result.err(),
                },
            };
            let _ = shared.ask(|r| Req::Propose(p, r)).await;
        }
    }
}
