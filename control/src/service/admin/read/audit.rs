//! The audit log and alerts: the audit records (in log order, the latest 1000 to a client that
//! does not page), the alerts raised with their deliveries, and each tenant's alert contacts
//! with the cluster's alert transport.

use moat_proto::v1;
use moat_shared::TenantId;

use super::super::paging::{number_bytes, number_key, page, range_after, text_key};
use super::{Query, Rendered};

/// Audit records, keyed by raft index and place within it.
pub(super) fn audit(q: &Query<'_>, reply: &mut v1::ReadReply) -> Rendered {
    let (state, r, bounds) = (q.state, q.r, q.bounds);
    // Keyed by raft index and the record's place among that index's records (one entry
    // may record several system events), so byte order is log order. A request without
    // a limit or token (as every client before paging sent) gets the latest 1000, as
    // before; a paged one walks the whole retained log from its oldest record.
    let records = &state.audit.records;
    let visible = |a: &&crate::state::AuditRecord| {
        r.tenant.is_empty() || a.tenant.as_ref().is_some_and(|t| q.tenant_ok(t))
    };
    let from = number_key(bounds.after)?;
    let start = from.map_or(0, |(index, _)| records.partition_point(|a| a.index < index));
    let after_key = from.map(|(i, n)| number_bytes(i, Some(n)));
    let latest_only = bounds.limit == 0 && from.is_none();
    let skip = if latest_only {
        records.iter().filter(visible).count().saturating_sub(1000)
    } else {
        0
    };
    let items = records
        .range(start..)
        .scan((u64::MAX, 0u32), |(last, n), a| {
            if a.index == *last {
                *n = n.saturating_add(1);
            } else {
                (*last, *n) = (a.index, 0);
            }
            Some((number_bytes(a.index, Some(*n)), a))
        })
        .filter(|(k, a)| visible(a) && after_key.as_ref().is_none_or(|after| k > after))
        .skip(skip)
        .map(|(k, a)| {
            let record = v1::AuditRecord {
                index: a.index,
                at_ms: a.at_ms,
                actor: a.actor.clone(),
                action: a.action.clone(),
                tenant: a.tenant.as_ref().map(|t| t.to_string()).unwrap_or_default(),
            };
            (k, record)
        });
    let next;
    (reply.audit, next) = page(items, bounds);
    Ok(next)
}

/// Alerts with their deliveries, keyed by alert id, which grows with each alert raised.
pub(super) fn alerts(q: &Query<'_>, reply: &mut v1::ReadReply) -> Rendered {
    let (state, bounds) = (q.state, q.bounds);
    let records = &state.alerts.records;
    let from = number_key(bounds.after)?.map(|(id, _)| id);
    let start = from.map_or(0, |id| records.partition_point(|a| a.id <= id));
    let items = records
        .range(start..)
        .filter(|a| q.tenant_ok(&a.tenant))
        .map(|a| {
            (
                number_bytes(a.id, None),
                v1::Alert {
                    at_ms: a.at_ms,
                    tenant: a.tenant.to_string(),
                    severity: a.severity.clone(),
                    title: a.title.clone(),
                    detail: a.detail.clone(),
                    id: a.id,
                    deliveries: a
                        .deliveries
                        .iter()
                        .map(|d| v1::AlertDelivery {
                            channel: d.channel.clone(),
                            target: d.target.clone(),
                            state: match d.state {
                                crate::state::DeliveryState::Pending => "pending",
                                crate::state::DeliveryState::Delivered => "delivered",
                                crate::state::DeliveryState::Failed => "failed",
                            }
                            .into(),
                            attempts: d.attempts,
                            last_error: d.last_error.clone(),
                        })
                        .collect(),
                },
            )
        });
    let next;
    (reply.alerts, next) = page(items, bounds);
    Ok(next)
}

/// Each tenant's alert contacts, keyed by tenant (a webhook secret shows only as set), and
/// the cluster's alert transport.
pub(super) fn alert_contacts(q: &Query<'_>, reply: &mut v1::ReadReply) -> Rendered {
    let (state, bounds) = (q.state, q.bounds);
    let from = text_key(bounds.after, |k| TenantId::new(k).ok())?;
    let items = range_after(&state.alert_routing.contacts, from)
        .filter(|(t, _)| q.tenant_ok(t))
        .map(|(t, c)| {
            (
                t.as_str().as_bytes().to_vec(),
                v1::AlertContacts {
                    tenant: t.to_string(),
                    emails: c.emails.clone(),
                    webhook_url: c.webhook_url.clone(),
                    webhook_secret: if c.webhook_secret.is_empty() {
                        String::new()
                    } else {
                        "(set)".into()
                    },
                },
            )
        });
    let next;
    (reply.alert_contacts, next) = page(items, bounds);
    reply.alert_transport = Some(v1::AlertTransport {
        smtp: state.alert_routing.transport.smtp.clone(),
        from: state.alert_routing.transport.from.clone(),
    });
    Ok(next)
}
