//! The on-premises Exchange reads: each server's report (its stage, and the next stage and its
//! date as of now), the stage policy in force, and a tenant's pauses with the days left this
//! year.

use moat_proto::v1;
use moat_shared::TenantId;

use super::super::paging::{page, range_after, text_key};
use super::{read_now, Query, Rendered};
use crate::publish::baseline_to_wire;
use crate::state::State;

/// On-premises servers, keyed as the state keys them.
pub(super) fn servers(q: &Query<'_>, reply: &mut v1::ReadReply) -> Rendered {
    let (state, r, bounds) = (q.state, q.r, q.bounds);
    let from = text_key(bounds.after, |k| Some(k.to_owned()))?;
    let items = range_after(&state.onprem.servers, from)
        .filter(|(_, s)| q.tenant_ok(&s.tenant) && (r.name.is_empty() || s.server == r.name))
        .map(|(k, s)| (k.as_bytes().to_vec(), onprem_report(state, s)));
    let next;
    (reply.onprem_servers, next) = page(items, bounds);
    Ok(next)
}

/// One row of the on-premises server report, with the next stage and its date as of now.
fn onprem_report(state: &State, s: &crate::state::OnpremServer) -> v1::OnpremServerReport {
    use moat_shared::onprem::{accrued_ms, DAY_MS};
    let now = read_now(state);
    let schedule = state.onprem.schedule();
    let baseline = state.onprem.baseline();
    let pauses = state.onprem.tenant_pauses(&s.tenant);
    let in_force = pauses.iter().find(|p| p.covers(now)).copied();
    let stage = schedule.get(s.stage).copied();
    let mut row = v1::OnpremServerReport {
        tenant: s.tenant.to_string(),
        server: s.server.clone(),
        build: s.build.to_string(),
        product: s.build.product().name().to_owned(),
        class: baseline.classify(&s.build).as_str().to_owned(),
        connector: s.connector.to_string(),
        first_detected_ms: s.first_detected_ms.unwrap_or(0),
        stage: s.stage,
        throttle: stage.map_or(0, |x| u32::from(x.throttle)),
        block: stage.map_or(0, |x| u32::from(x.block)),
        throttle_enabled_ms: s.throttle_enabled_ms.unwrap_or(0),
        blocking_enabled_ms: s.blocking_enabled_ms.unwrap_or(0),
        recommended: baseline
            .recommended(&s.build)
            .iter()
            .map(ToString::to_string)
            .collect(),
        paused: s.first_detected_ms.is_some() && in_force.is_some(),
        paused_until_ms: in_force.map_or(0, |p| p.end_ms),
        remediated_ms: s.remediated_ms.unwrap_or(0),
        last_seen_ms: s.last_seen_ms,
        messages: s.messages,
        received: s.received.clone(),
        first_seen_ms: s.first_seen_ms.unwrap_or(0),
        exempt: s.exempt.is_some(),
        exempt_reason: s
            .exempt
            .as_ref()
            .map(|e| e.reason.clone())
            .unwrap_or_default(),
        exempt_actor: s
            .exempt
            .as_ref()
            .map(|e| e.actor.clone())
            .unwrap_or_default(),
        exempt_at_ms: s.exempt.as_ref().map_or(0, |e| e.at_ms),
        ..Default::default()
    };
    if let (Some(first), Some(next)) = (s.first_detected_ms, schedule.get(s.stage + 1)) {
        let left = i64::from(next.from_day) * DAY_MS - accrued_ms(first, now, &pauses);
        row.next_stage = s.stage + 1;
        row.next_throttle = u32::from(next.throttle);
        row.next_block = u32::from(next.block);
        row.next_stage_ms = in_force.map_or(now, |p| p.end_ms) + left.max(0);
    }
    row
}

/// The on-premises policy in force, whole: baseline, stages, service, scope and stage table.
pub(super) fn policy(q: &Query<'_>, reply: &mut v1::ReadReply) -> Rendered {
    let state = q.state;
    reply.onprem_policy = Some(v1::OnpremPolicy {
        baseline: baseline_to_wire(state),
        stages: state.onprem.schedule().render(),
        service: if state.onprem.service.is_empty() {
            moat_shared::onprem::DEFAULT_SERVICE.to_owned()
        } else {
            state.onprem.service.clone()
        },
        scope: if state.onprem.all_connectors {
            "all-connectors"
        } else {
            "onpremises"
        }
        .to_owned(),
        table: state.onprem.table_in_force().as_str().to_owned(),
    });
    Ok(None)
}

/// The read's tenant's pauses, whole, with this year's days used and left.
pub(super) fn pauses(q: &Query<'_>, reply: &mut v1::ReadReply) -> Rendered {
    use moat_shared::onprem::{pause_days_used, Pause, PAUSE_DAYS_PER_YEAR};
    let (state, r) = (q.state, q.r);
    let now = read_now(state);
    let year = moat_shared::time::civil_from_days(moat_shared::time::day_of_ms(now)).0;
    let records = TenantId::new(&r.tenant)
        .ok()
        .and_then(|t| state.onprem.pauses.get(&t))
        .cloned()
        .unwrap_or_default();
    let list: Vec<Pause> = records.iter().map(|p| p.pause).collect();
    let used = pause_days_used(&list, year);
    reply.onprem_pauses = Some(v1::OnpremPauses {
        tenant: r.tenant.clone(),
        pauses: records
            .iter()
            .map(|p| v1::OnpremPauseRecord {
                start_ms: p.pause.start_ms,
                end_ms: p.pause.end_ms,
                days: p.pause.days(),
                actor: p.actor.clone(),
                reason: p.reason.clone(),
            })
            .collect(),
        year: i32::try_from(year).unwrap_or_default(),
        days_used: used,
        days_left: PAUSE_DAYS_PER_YEAR.saturating_sub(used),
        paused_until_ms: list.iter().find(|p| p.covers(now)).map_or(0, |p| p.end_ms),
    });
    Ok(None)
}
