//! What is blocked or held back, and the signals behind it: the restricted entities in force,
//! the speed bump's steps, the detectors' settings, each tenant's outbound policy and the
//! counters edges report.

use moat_proto::convert::{restricted_to_wire, step_to_wire};
use moat_proto::v1;
use moat_shared::{ConnectorId, TenantId};

use super::super::paging::{page, range_after, text_key};
use super::{Query, Rendered};

/// Restricted entities in force, keyed by (tenant, kind, name, since).
pub(super) fn restricted(q: &Query<'_>, reply: &mut v1::ReadReply) -> Rendered {
    let (state, bounds) = (q.state, q.bounds);
    // A list in the order blocks were made; paged in the order of its key (tenant,
    // kind, name, since), sorted here.
    let key = |e: &moat_shared::RestrictedEntity| {
        let mut k = Vec::new();
        for part in [e.tenant.as_str(), e.kind.as_str(), e.name.as_str()] {
            k.extend_from_slice(part.as_bytes());
            k.push(0);
        }
        k.extend_from_slice(&e.since_ms.to_be_bytes());
        k
    };
    let mut items: Vec<(Vec<u8>, &moat_shared::RestrictedEntity)> = state
        .restricted
        .iter()
        .filter(|e| q.tenant_ok(&e.tenant) && e.in_force(state.now_ms))
        .map(|e| (key(e), e))
        .filter(|(k, _)| bounds.after.is_none_or(|after| k.as_slice() > after))
        .collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let items = items.into_iter().map(|(k, e)| (k, restricted_to_wire(e)));
    let next;
    (reply.restricted, next) = page(items, bounds);
    Ok(next)
}

/// The speed bump's steps, whole.
pub(super) fn speed_bump(q: &Query<'_>, reply: &mut v1::ReadReply) -> Rendered {
    reply.speed_bump = q.state.limits.speed_bump.iter().map(step_to_wire).collect();
    Ok(None)
}

/// The detectors' settings, whole: the default first (tenant empty), then each tenant's own.
pub(super) fn detection(q: &Query<'_>, reply: &mut v1::ReadReply) -> Rendered {
    let (state, r) = (q.state, q.r);
    let default = state
        .detection
        .policies
        .get("*")
        .copied()
        .unwrap_or_default();
    reply.detection = std::iter::once((String::new(), default))
        .chain(
            state
                .detection
                .policies
                .iter()
                .filter(|(k, _)| k.as_str() != "*")
                .map(|(k, p)| (k.clone(), *p)),
        )
        .filter(|(t, _)| r.tenant.is_empty() || t.is_empty() || *t == r.tenant)
        .map(|(tenant, p)| v1::DetectionPolicy {
            tenant,
            interval_ms: p.interval_ms,
            warmup_intervals: p.warmup_intervals,
            spike_factor: p.spike_factor,
            min_messages: p.min_messages,
            unprovisioned_percent: p.unprovisioned_percent,
            mismatch_percent: p.mismatch_percent,
            auth_fail_percent: p.auth_fail_percent,
        })
        .collect();
    Ok(None)
}

/// Each tenant's outbound policy in force, keyed by tenant.
pub(super) fn outbound(q: &Query<'_>, reply: &mut v1::ReadReply) -> Rendered {
    let (state, bounds) = (q.state, q.bounds);
    let from = text_key(bounds.after, |k| TenantId::new(k).ok())?;
    let items = range_after(&state.directory.tenants, from)
        .filter(|(t, _)| q.tenant_ok(t))
        .map(|(t, _)| {
            let p = state.limits.policy_for(t);
            let policy = v1::OutboundPolicy {
                tenant: t.to_string(),
                recipients_per_hour: p.recipients_per_hour,
                recipients_per_day: p.recipients_per_day,
                action: p.action.as_str().into(),
            };
            (t.as_str().as_bytes().to_vec(), policy)
        });
    let next;
    (reply.outbound, next) = page(items, bounds);
    Ok(next)
}

/// Counter totals, keyed by `scope|key|name`; a tenant sees its own and its connectors'.
pub(super) fn counters(q: &Query<'_>, reply: &mut v1::ReadReply) -> Rendered {
    let (state, r, bounds) = (q.state, q.r, q.bounds);
    let from = text_key(bounds.after, |k| Some(k.to_owned()))?;
    let items = range_after(&state.counters.table, from).filter_map(|(k, c)| {
        let mut parts = k.splitn(3, '|');
        let (scope, key, name) = (parts.next()?, parts.next()?, parts.next()?);
        let owned = r.tenant.is_empty()
            || (scope == "tenant" && key == r.tenant)
            || (scope == moat_shared::signal::CONNECTOR
                && ConnectorId::parse(key).is_ok_and(|c| c.tenant.as_str() == r.tenant));
        owned.then(|| {
            let total = v1::CounterTotal {
                scope: scope.into(),
                key: key.into(),
                name: name.into(),
                total: c.total,
                last_minute: c.last_minute,
            };
            (k.as_bytes().to_vec(), total)
        })
    });
    let next;
    (reply.counters, next) = page(items, bounds);
    Ok(next)
}
