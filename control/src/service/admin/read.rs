//! The admin reads: a request's kind and tenant, narrowed to what the caller may see, run
//! against the state machine (after a read index confirms leadership, or at once on this
//! replica when stale reads are allowed) and rendered to proto by [`read_reply`]; and the
//! cluster view from what the node thread publishes.

use std::collections::BTreeMap;
use std::ops::Bound;

use moat_proto::convert::{connector_to_wire, restricted_to_wire, step_to_wire, tenant_to_wire};
use moat_proto::v1;
use moat_shared::time::now_ms;
use moat_shared::{ConnectorId, TenantId};
use tokio::sync::oneshot;
use tonic::Status;

use super::authz::{authorize, read_scope, Action, Principal};
use super::paging::{
    number_bytes, number_key, page, range_after, range_from, text_key, Bounds, PAGE_BYTES,
};
use crate::publish::baseline_to_wire;
use crate::raft::{Req, REQUEST_TIMEOUT};
use crate::service::Shared;
use crate::state::State;

/// Carries out one admin read for `who`.
pub(crate) async fn read(
    shared: &Shared,
    who: &Principal,
    mut r: v1::ReadRequest,
) -> Result<v1::ReadReply, Status> {
    r.tenant = read_scope(who, &r.tenant);
    // Authorization comes first, as before kinds were an enum: a tenant admin asking another
    // tenant for an unknown kind hears about the tenant.
    let kind = r.requested_kind();
    authorize(
        who,
        &Action::Read {
            tenant: &r.tenant,
            kind: kind.unwrap_or(v1::ReadKind::Unspecified),
        },
    )?;
    let Some(kind) = kind else {
        let kinds: Vec<String> = v1::ReadKind::all().map(v1::ReadKind::name).collect();
        return Err(Status::invalid_argument(format!(
            "`{}` is not a kind to read ({})",
            r.kind,
            kinds.join(", ")
        )));
    };
    let after = moat_proto::paging::decode_page_token(kind, &r.page_token)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let (tx, rx) = oneshot::channel();
    let stale = r.stale_ok;
    shared.send(Req::Read(
        stale,
        Box::new(move |state| {
            let bounds = Bounds {
                after: after.as_deref(),
                limit: r.limit as usize,
                budget: PAGE_BYTES,
            };
            let _ = tx.send(read_reply(state, &r, kind, bounds));
        }),
    ));
    match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
        Ok(Ok(reply)) => reply,
        _ => Err(Status::unavailable(
            "no leader confirmed this read in time; retry, or pass --stale-ok for this replica's view",
        )),
    }
}

/// The cluster as this node sees it: raft status, members and the edges it heard from.
pub(crate) fn cluster(shared: &Shared, who: &Principal) -> Result<v1::ClusterStatus, Status> {
    authorize(who, &Action::SeeCluster)?;
    let view = shared.view.borrow().clone();
    let status = view
        .status
        .unwrap_or_else(|| crate::raft::node::Status::unknown(shared.id));
    let mut members: Vec<v1::Member> = status
        .voters
        .iter()
        .map(|id| (id, "voter"))
        .chain(status.learners.iter().map(|id| (id, "learner")))
        .map(|(id, role)| v1::Member {
            id: *id,
            address: view.addresses.get(id).cloned().unwrap_or_default(),
            role: role.into(),
        })
        .collect();
    members.sort_by_key(|m| m.id);
    let edges = shared
        .edges
        .lock()
        .map(|e| {
            e.iter()
                .map(|(id, s)| v1::EdgeStatus {
                    edge_id: id.clone(),
                    applied_version: s.applied,
                    watching: shared.id,
                    last_seen_ms: s.last_seen_ms,
                    digest: s.digest,
                    agreement: s.agreement.as_str().into(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(v1::ClusterStatus {
        node_id: status.id,
        leader_id: status.leader,
        term: status.term,
        commit_index: status.commit,
        applied_index: status.applied,
        policy_version: view.policy_version,
        members,
        edges,
        snapshot_index: status.snapshot_index,
    })
}

/// Now on the cluster clock as a reader sees it: the wall clock plus the committed offset, and
/// never before the last applied entry.
fn read_now(state: &State) -> i64 {
    state
        .now_ms
        .max(now_ms().saturating_add(state.clock_offset_ms))
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

/// Renders the objects a read asks for, filtered by its tenant and name: of a list, the page
/// `bounds` allow (see [`super::paging`]), with the token of the next when more remain. The
/// lists paged are those that grow with the estate; the TLS report (two lists, bounded by its
/// days), the speed bump and detection settings and the on-premises settings come whole.
fn read_reply(
    state: &State,
    r: &v1::ReadRequest,
    kind: v1::ReadKind,
    bounds: Bounds<'_>,
) -> Result<v1::ReadReply, Status> {
    let mut next: Option<Vec<u8>> = None;
    let tenant_ok = |t: &TenantId| r.tenant.is_empty() || t.as_str() == r.tenant;
    let mut reply = v1::ReadReply {
        applied_index: state.applied,
        cluster_now_ms: read_now(state),
        clock_offset_ms: state.clock_offset_ms,
        ..Default::default()
    };
    // The one tenant a scoped read asks for, when its text is a tenant id as written: maps
    // keyed by tenant are then read from that tenant's entries only, not scanned whole.
    let scope = TenantId::new(&r.tenant)
        .ok()
        .filter(|t| !r.tenant.is_empty() && t.as_str() == r.tenant);
    use v1::ReadKind as K;
    match kind {
        K::Tenant | K::Domain | K::TransportConfig => {
            let from = text_key(bounds.after, |k| TenantId::new(k).ok())?;
            let start = from
                .map(Bound::Excluded)
                .or(scope.clone().map(Bound::Included));
            let items = range_from(&state.directory.tenants, start)
                .skip_while(|(id, _)| scope.as_ref().is_some_and(|t| id != &t))
                .take_while(|(id, _)| scope.as_ref().is_none_or(|t| id == &t))
                .filter(|(id, _)| tenant_ok(id) && (r.name.is_empty() || id.as_str() == r.name))
                .map(|(id, t)| (id.as_str().as_bytes().to_vec(), tenant_to_wire(t)));
            (reply.tenants, next) = page(items, bounds);
        }
        K::Connector => {
            let from = text_key(bounds.after, |k| ConnectorId::parse(k).ok())?;
            // A tenant's connectors are one run of the map (ids order as `tenant/name`), which
            // starts at the tenant with an empty name.
            let start = from.map(Bound::Excluded).or(scope
                .as_ref()
                .map(|t| Bound::Included(ConnectorId::new(t.clone(), ""))));
            let items = range_from(&state.directory.connectors, start)
                .skip_while(|(id, _)| scope.as_ref().is_some_and(|t| id.tenant != *t))
                .take_while(|(id, _)| scope.as_ref().is_none_or(|t| id.tenant == *t))
                .filter(|(_, c)| tenant_ok(&c.tenant) && (r.name.is_empty() || c.name == r.name))
                .map(|(id, c)| (id.to_string().into_bytes(), connector_to_wire(c)));
            (reply.connectors, next) = page(items, bounds);
        }
        K::User => {
            let from = text_key(bounds.after, |k| Some(k.to_owned()))?;
            let items = range_after(&state.directory.users, from)
                .filter(|(_, u)| tenant_ok(&u.tenant) && (r.name.is_empty() || u.address == r.name))
                .map(|(k, u)| {
                    let user = v1::User {
                        tenant: u.tenant.to_string(),
                        address: u.address.clone(),
                        send_as: u.send_as.clone(),
                    };
                    (k.as_bytes().to_vec(), user)
                });
            (reply.users, next) = page(items, bounds);
        }
        K::Token => {
            let from = text_key(bounds.after, |k| Some(k.to_owned()))?;
            let items = range_after(&state.tokens.records, from).map(|(k, t)| {
                let token = v1::Token {
                    id: t.id.clone(),
                    name: t.name.clone(),
                    role: t.role.as_str().into(),
                    tenant: t.tenant.as_ref().map(|t| t.to_string()).unwrap_or_default(),
                    created_ms: t.created_ms,
                };
                (k.as_bytes().to_vec(), token)
            });
            (reply.tokens, next) = page(items, bounds);
        }
        K::Audit => {
            // Keyed by raft index and the record's place among that index's records (one entry
            // may record several system events), so byte order is log order. A request without
            // a limit or token (as every client before paging sent) gets the latest 1000, as
            // before; a paged one walks the whole retained log from its oldest record.
            let records = &state.audit.records;
            let visible = |a: &&crate::state::AuditRecord| {
                r.tenant.is_empty() || a.tenant.as_ref().is_some_and(tenant_ok)
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
            (reply.audit, next) = page(items, bounds);
        }
        K::Restricted => {
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
                .filter(|e| tenant_ok(&e.tenant) && e.in_force(state.now_ms))
                .map(|e| (key(e), e))
                .filter(|(k, _)| bounds.after.is_none_or(|after| k.as_slice() > after))
                .collect();
            items.sort_by(|a, b| a.0.cmp(&b.0));
            let items = items.into_iter().map(|(k, e)| (k, restricted_to_wire(e)));
            (reply.restricted, next) = page(items, bounds);
        }
        K::SpeedBump => {
            reply.speed_bump = state.limits.speed_bump.iter().map(step_to_wire).collect();
        }
        K::Detection => {
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
        }
        K::OutboundPolicy => {
            let from = text_key(bounds.after, |k| TenantId::new(k).ok())?;
            let items = range_after(&state.directory.tenants, from)
                .filter(|(t, _)| tenant_ok(t))
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
            (reply.outbound, next) = page(items, bounds);
        }
        K::Alerts => {
            // Keyed by alert id, which grows with each alert raised.
            let records = &state.alerts.records;
            let from = number_key(bounds.after)?.map(|(id, _)| id);
            let start = from.map_or(0, |id| records.partition_point(|a| a.id <= id));
            let items = records
                .range(start..)
                .filter(|a| tenant_ok(&a.tenant))
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
            (reply.alerts, next) = page(items, bounds);
        }
        K::OnpremServers => {
            let from = text_key(bounds.after, |k| Some(k.to_owned()))?;
            let items = range_after(&state.onprem.servers, from)
                .filter(|(_, s)| tenant_ok(&s.tenant) && (r.name.is_empty() || s.server == r.name))
                .map(|(k, s)| (k.as_bytes().to_vec(), onprem_report(state, s)));
            (reply.onprem_servers, next) = page(items, bounds);
        }
        K::OnpremPolicy => {
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
        }
        K::OnpremPauses => {
            use moat_shared::onprem::{pause_days_used, Pause, PAUSE_DAYS_PER_YEAR};
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
        }
        K::Clock => {}
        K::TicketKeys => {
            // Ids, times and roles: a secret never leaves the log, the snapshot and the edges.
            if let Some(k) = &state.tickets.ticket_keys {
                let row = |key: &moat_shared::TicketKey, role: &str| v1::TicketKeyInfo {
                    id: key.name.clone(),
                    created_ms: key.created_ms,
                    role: role.to_owned(),
                };
                reply.ticket_keys = std::iter::once(row(&k.current, "issuing"))
                    .chain(k.previous.iter().map(|p| row(p, "accepting")))
                    .collect();
                reply.ticket_rotate_every_ms = k.rotate_every_ms;
            }
        }
        K::Explain => {
            let q = r.explain.clone().unwrap_or_default();
            reply.explain_policy = Some(super::explain::policy(state, &q, &r.tenant)?);
        }
        K::AlertContacts => {
            let from = text_key(bounds.after, |k| TenantId::new(k).ok())?;
            let items = range_after(&state.alert_routing.contacts, from)
                .filter(|(t, _)| tenant_ok(t))
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
            (reply.alert_contacts, next) = page(items, bounds);
            reply.alert_transport = Some(v1::AlertTransport {
                smtp: state.alert_routing.transport.smtp.clone(),
                from: state.alert_routing.transport.from.clone(),
            });
        }
        K::TlsReport => {
            let days = if r.days == 0 { 7 } else { i64::from(r.days) };
            let today = moat_shared::time::day_of_ms(read_now(state));
            let first = moat_shared::time::day_string(today - days + 1);
            fn rows<'a>(
                table: &'a BTreeMap<String, crate::state::Tally>,
                first: &str,
                want: &str,
            ) -> Vec<(String, String, [&'a str; 3], crate::state::Tally)> {
                table
                    .range(first.to_owned()..)
                    .filter_map(|(k, t)| {
                        let parts: Vec<&str> = k.splitn(5, '|').collect();
                        let [day, tenant, a, b, c] = parts[..] else {
                            return None;
                        };
                        (want.is_empty() || want == tenant)
                            .then(|| (day.to_owned(), tenant.to_owned(), [a, b, c], *t))
                    })
                    .collect()
            }
            reply.tls_usage = rows(&state.tls_report.usage, &first, &r.tenant)
                .into_iter()
                .map(
                    |(day, tenant, [listener, version, cipher], t)| v1::TlsUsage {
                        day,
                        tenant,
                        listener: listener.into(),
                        version: version.into(),
                        cipher: cipher.into(),
                        sessions: t.sessions,
                        messages: t.messages,
                    },
                )
                .collect();
            reply.legacy_clients = rows(&state.tls_report.legacy_clients, &first, &r.tenant)
                .into_iter()
                .map(|(day, tenant, [ip, user, version], t)| v1::LegacyClient {
                    day,
                    tenant,
                    client_ip: ip.into(),
                    user: user.into(),
                    version: version.into(),
                    sessions: t.sessions,
                    messages: t.messages,
                })
                .collect();
        }
        K::InboundReport => {
            let first = report_first_day(state, r.days)?;
            let items = report_rows(&state.reports.inbound, &first, bounds.after).filter_map(
                |(k, day, row, v)| {
                    let (tenant, name) = row.split_once('/')?;
                    if !tenant_ok_str(&r.tenant, tenant) {
                        return None;
                    }
                    let connector = TenantId::new(tenant)
                        .ok()
                        .map(|t| ConnectorId::new(t, name))
                        .and_then(|id| state.directory.connectors.get(&id))
                        .filter(|_| !name.is_empty());
                    let row = v1::InboundReportRow {
                        day: day.to_owned(),
                        tenant: tenant.to_owned(),
                        connector: if name.is_empty() { "other" } else { name }.to_owned(),
                        // Exchange's names for the types, as its inbound messages report has them.
                        connector_type: match connector.map(|c| c.kind) {
                            Some(moat_shared::ConnectorKind::OnPremises) => "OnPremises",
                            Some(moat_shared::ConnectorKind::Partner) => "Partner",
                            None => "",
                        }
                        .to_owned(),
                        tls_forced: connector.is_some_and(|c| c.require_tls),
                        no_tls: v.none,
                        tls10: v.tls10,
                        tls11: v.tls11,
                        tls12: v.tls12,
                        tls13: v.tls13,
                        messages: v.total(),
                    };
                    Some((k, row))
                },
            );
            (reply.inbound_report, next) = page(items, bounds);
        }
        K::AuthClientsReport => {
            let first = report_first_day(state, r.days)?;
            let items = report_rows(&state.reports.auth_clients, &first, bounds.after).filter_map(
                |(k, day, row, v)| {
                    let (tenant, user) = row.split_once('/')?;
                    if !tenant_ok_str(&r.tenant, tenant) {
                        return None;
                    }
                    let row = v1::AuthClientRow {
                        day: day.to_owned(),
                        tenant: tenant.to_owned(),
                        user: if user.is_empty() { "other" } else { user }.to_owned(),
                        no_tls: v.none,
                        tls10: v.tls10,
                        tls11: v.tls11,
                        tls12: v.tls12,
                        tls13: v.tls13,
                        messages: v.total(),
                    };
                    Some((k, row))
                },
            );
            (reply.auth_clients, next) = page(items, bounds);
        }
        K::NonAcceptedDomainsReport => {
            let first = report_first_day(state, r.days)?;
            let items = report_rows(&state.reports.non_accepted, &first, bounds.after).filter_map(
                |(k, day, row, v)| {
                    let (tenant, rest) = row.split_once('/')?;
                    let (connector, domain) = rest.rsplit_once('/')?;
                    if !tenant_ok_str(&r.tenant, tenant) {
                        return None;
                    }
                    let row = v1::NonAcceptedDomainRow {
                        day: day.to_owned(),
                        tenant: tenant.to_owned(),
                        connector: connector.to_owned(),
                        domain: if domain.is_empty() { "other" } else { domain }.to_owned(),
                        messages: v.messages,
                        sample_message_ids: v.samples.clone(),
                    };
                    Some((k, row))
                },
            );
            (reply.non_accepted_domains, next) = page(items, bounds);
        }
        K::Counters => {
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
            (reply.counters, next) = page(items, bounds);
        }
        K::Unspecified => {}
    }
    if let Some(key) = next {
        reply.next_page_token = moat_proto::paging::encode_page_token(kind, &key);
    }
    Ok(reply)
}

/// Whether a row of `tenant` is in a read scoped to `want` (empty: every tenant).
fn tenant_ok_str(want: &str, tenant: &str) -> bool {
    want.is_empty() || want == tenant
}

/// The first day (`YYYY-MM-DD`) a report read of `days` days covers, today included: 0 asks
/// for 7, and more than [`crate::state::reports::REPORT_DAYS`] is refused.
fn report_first_day(state: &State, days: u32) -> Result<String, Status> {
    let kept = crate::state::reports::REPORT_DAYS;
    let days = match i64::from(days) {
        0 => 7,
        d if d <= kept => d,
        d => {
            return Err(Status::invalid_argument(format!(
                "--days {d}: a report covers 1 to {kept} days"
            )))
        }
    };
    let today = moat_shared::time::day_of_ms(read_now(state));
    Ok(moat_shared::time::day_string(today - days + 1))
}

/// A report's rows from day `first` on, in key order (day, then row key), after the page key
/// `after`: `(page key, day, row key, row)`. The page key is `day|row key`, whose byte order
/// is that order (days are of one width).
fn report_rows<'a, V>(
    table: &'a BTreeMap<String, BTreeMap<String, V>>,
    first: &str,
    after: Option<&'a [u8]>,
) -> impl Iterator<Item = (Vec<u8>, &'a str, &'a str, &'a V)> + 'a {
    table
        .range(first.to_owned()..)
        .flat_map(|(day, rows)| {
            rows.iter()
                .map(move |(row, v)| (day.as_str(), row.as_str(), v))
        })
        .map(|(day, row, v)| {
            let mut k = Vec::with_capacity(day.len() + 1 + row.len());
            k.extend_from_slice(day.as_bytes());
            k.push(b'|');
            k.extend_from_slice(row.as_bytes());
            (k, day, row, v)
        })
        .filter(move |(k, ..)| after.is_none_or(|a| k.as_slice() > a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_shared::{Domain, Tenant};

    fn put(state: &mut State, id: &str) {
        let id = TenantId::new(id).expect("valid tenant");
        let tenant = Tenant {
            accepted_domains: vec![Domain::new(id.as_str()).expect("valid domain")],
            display_name: id.to_string(),
            id: id.clone(),
            allow_legacy_tls_clients: false,
        };
        state.directory.tenants.insert(id, tenant);
    }

    /// Reads every page of tenants with `limit`, running `between` after each page.
    fn all_pages(
        state: &mut State,
        limit: u32,
        budget: usize,
        mut between: impl FnMut(&mut State, usize),
    ) -> Vec<String> {
        let mut seen = Vec::new();
        let mut token = String::new();
        for n in 0.. {
            let r = v1::ReadRequest {
                limit,
                page_token: token.clone(),
                ..v1::ReadRequest::of(v1::ReadKind::Tenant)
            };
            let after =
                moat_proto::paging::decode_page_token(v1::ReadKind::Tenant, &token).expect("token");
            let bounds = Bounds {
                after: after.as_deref(),
                limit: limit as usize,
                budget,
            };
            let reply = read_reply(state, &r, v1::ReadKind::Tenant, bounds).expect("read");
            assert!(limit == 0 || reply.tenants.len() <= limit as usize);
            seen.extend(reply.tenants.into_iter().map(|t| t.id));
            if reply.next_page_token.is_empty() {
                break;
            }
            token = reply.next_page_token;
            between(state, n);
        }
        seen
    }

    #[test]
    fn pages_cover_every_tenant_once_in_key_order() {
        let mut state = State::default();
        for i in 0..95 {
            put(&mut state, &format!("t{i:03}.test"));
        }
        let seen = all_pages(&mut state, 10, PAGE_BYTES, |_, _| {});
        let want: Vec<String> = state
            .directory
            .tenants
            .keys()
            .map(|t| t.to_string())
            .collect();
        assert_eq!(seen, want);
        assert_eq!(all_pages(&mut state, 0, PAGE_BYTES, |_, _| {}), want);
    }

    #[test]
    fn pages_resume_by_key_while_others_come_and_go() {
        let mut state = State::default();
        for i in 0..100 {
            put(&mut state, &format!("keep{i:03}.test"));
        }
        let seen = all_pages(&mut state, 7, PAGE_BYTES, |s, n| {
            // Tenants before and after the cursor appear and disappear between pages.
            put(s, &format!("a{n}.test"));
            put(s, &format!("zz{n}.test"));
            s.directory
                .tenants
                .remove(&TenantId::new(&format!("a{}.test", n.saturating_sub(1))).expect("id"));
        });
        let kept: Vec<&String> = seen.iter().filter(|t| t.starts_with("keep")).collect();
        assert_eq!(kept.len(), 100, "every tenant that stayed appears once");
        let mut dedup = seen.clone();
        dedup.dedup();
        assert_eq!(dedup, seen, "nothing repeats");
    }

    #[test]
    fn a_reply_without_a_limit_stops_at_the_byte_budget() {
        let mut state = State::default();
        for i in 0..50 {
            put(&mut state, &format!("t{i:03}.test"));
        }
        let one = tenant_to_wire(state.directory.tenants.values().next().expect("one"));
        let budget = 10 * (prost::Message::encoded_len(&one) + 8);
        let seen = all_pages(&mut state, 0, budget, |_, _| {});
        assert_eq!(
            seen.len(),
            50,
            "the client that follows tokens still sees all"
        );
        let bounds = Bounds {
            after: None,
            limit: 0,
            budget,
        };
        let r = v1::ReadRequest::of(v1::ReadKind::Tenant);
        let reply = read_reply(&state, &r, v1::ReadKind::Tenant, bounds).expect("read");
        assert_eq!(reply.tenants.len(), 10);
        assert!(!reply.next_page_token.is_empty());
    }

    #[test]
    fn a_tenant_scoped_read_gets_exactly_that_tenants_objects_page_by_page() {
        let mut state = State::default();
        // `a-b` and `a.b` sort around `a`'s connectors as text (`a-b/`, `a.b/`, `a/`, `ab/`).
        for tenant in ["a", "a-b", "a.b", "ab", "b"] {
            put(&mut state, &format!("{tenant}.test"));
            for n in 0..12 {
                let c = moat_shared::Connector::new(
                    TenantId::new(&format!("{tenant}.test")).expect("id"),
                    format!("c{n:02}"),
                    moat_shared::ConnectorKind::OnPremises,
                );
                state.directory.connectors.insert(c.id(), c);
            }
        }
        for tenant in ["a.test", "a-b.test", "ab.test", "b.test"] {
            let (mut seen, mut token) = (Vec::new(), String::new());
            loop {
                let r = v1::ReadRequest {
                    tenant: tenant.into(),
                    limit: 5,
                    page_token: token.clone(),
                    ..v1::ReadRequest::of(v1::ReadKind::Connector)
                };
                let after = moat_proto::paging::decode_page_token(v1::ReadKind::Connector, &token)
                    .expect("token");
                let bounds = Bounds {
                    after: after.as_deref(),
                    limit: 5,
                    budget: PAGE_BYTES,
                };
                let reply = read_reply(&state, &r, v1::ReadKind::Connector, bounds).expect("read");
                seen.extend(reply.connectors.into_iter().map(|c| (c.tenant, c.name)));
                if reply.next_page_token.is_empty() {
                    break;
                }
                token = reply.next_page_token;
            }
            let want: Vec<(String, String)> = (0..12)
                .map(|n| (tenant.to_owned(), format!("c{n:02}")))
                .collect();
            assert_eq!(seen, want, "{tenant}");
            let r = v1::ReadRequest {
                tenant: tenant.into(),
                ..v1::ReadRequest::of(v1::ReadKind::Tenant)
            };
            let bounds = Bounds {
                after: None,
                limit: 0,
                budget: PAGE_BYTES,
            };
            let reply = read_reply(&state, &r, v1::ReadKind::Tenant, bounds).expect("read");
            let ids: Vec<String> = reply.tenants.into_iter().map(|t| t.id).collect();
            assert_eq!(ids, [tenant], "{tenant}");
        }
    }

    #[test]
    fn a_token_for_another_kind_is_refused() {
        let token = moat_proto::paging::encode_page_token(v1::ReadKind::Tenant, b"a.test");
        let e = moat_proto::paging::decode_page_token(v1::ReadKind::User, &token);
        assert!(e.is_err());
        let state = State::default();
        let bounds = Bounds {
            after: Some(b"not a connector"),
            limit: 0,
            budget: PAGE_BYTES,
        };
        let r = v1::ReadRequest::of(v1::ReadKind::Connector);
        let e = read_reply(&state, &r, v1::ReadKind::Connector, bounds).expect_err("bad key");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn reports_take_1_to_90_days_a_tenant_and_page_by_day_and_row() {
        use crate::state::reports::{Sampled, Versions};
        let mut state = State::default();
        let today = moat_shared::time::day_of_ms(now_ms());
        let day = |back: i64| moat_shared::time::day_string(today - back);
        let v = Versions {
            tls13: 2,
            none: 1,
            ..Default::default()
        };
        for back in [0, 10] {
            let rows = state.reports.inbound.entry(day(back)).or_default();
            rows.insert("a.test/onprem".into(), v);
            rows.insert("a.test/".into(), v);
            rows.insert("b.test/x".into(), v);
        }
        state
            .reports
            .non_accepted
            .entry(day(0))
            .or_default()
            .insert(
                "a.test/onprem/elsewhere.test".into(),
                Sampled {
                    messages: 3,
                    samples: vec!["<1@x>".into()],
                },
            );
        let read = |kind: v1::ReadKind, days: u32, tenant: &str, limit: usize, token: &str| {
            let r = v1::ReadRequest {
                days,
                tenant: tenant.into(),
                ..v1::ReadRequest::of(kind)
            };
            let after = moat_proto::paging::decode_page_token(kind, token).expect("token");
            let bounds = Bounds {
                after: after.as_deref(),
                limit,
                budget: PAGE_BYTES,
            };
            read_reply(&state, &r, kind, bounds)
        };
        let k = v1::ReadKind::InboundReport;
        let week = read(k, 0, "", 0, "").expect("read");
        assert_eq!(week.inbound_report.len(), 3, "7 days by default");
        let r = &week.inbound_report[0];
        assert_eq!(
            (r.connector.as_str(), r.messages, r.no_tls, r.tls13),
            ("other", 3, 1, 2)
        );
        assert_eq!(
            read(k, 30, "", 0, "").expect("read").inbound_report.len(),
            6
        );
        assert_eq!(
            read(k, 90, "b.test", 0, "")
                .expect("read")
                .inbound_report
                .len(),
            2
        );
        for bad in [91, 1000] {
            let e = read(k, bad, "", 0, "").expect_err("too many days");
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
        }
        // Paged: each row once, in day then row order.
        let (mut token, mut seen) = (String::new(), Vec::new());
        loop {
            let page = read(k, 30, "", 2, &token).expect("read");
            assert!(page.inbound_report.len() <= 2);
            seen.extend(
                page.inbound_report
                    .iter()
                    .map(|r| format!("{} {}/{}", r.day, r.tenant, r.connector)),
            );
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let order = |d: String| {
            [
                format!("{d} a.test/other"),
                format!("{d} a.test/onprem"),
                format!("{d} b.test/x"),
            ]
        };
        assert_eq!(seen, [order(day(10)), order(day(0))].concat());
        let n = read(v1::ReadKind::NonAcceptedDomainsReport, 1, "a.test", 0, "").expect("read");
        let row = &n.non_accepted_domains[0];
        assert_eq!(
            (row.connector.as_str(), row.domain.as_str(), row.messages),
            ("onprem", "elsewhere.test", 3)
        );
        assert_eq!(row.sample_message_ids, ["<1@x>"]);
    }
}
