//! The day-by-day reports: TLS usage and legacy TLS clients (whole, over the days asked), and
//! the inbound, SMTP AUTH clients and non-accepted domains reports (paged by day, then row),
//! each over 1 to [`crate::state::reports::REPORT_DAYS`] days up to today.

use std::collections::BTreeMap;

use moat_proto::v1;
use moat_shared::{ConnectorId, TenantId};
use tonic::Status;

use super::super::paging::page;
use super::{read_now, Query, Rendered};
use crate::state::State;

/// TLS usage and legacy TLS clients over the days asked (0: 7), whole.
pub(super) fn tls(q: &Query<'_>, reply: &mut v1::ReadReply) -> Rendered {
    let (state, r) = (q.state, q.r);
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
    Ok(None)
}

/// The inbound report: messages by connector and TLS version, with each connector's type.
pub(super) fn inbound(q: &Query<'_>, reply: &mut v1::ReadReply) -> Rendered {
    let (state, r, bounds) = (q.state, q.r, q.bounds);
    let first = report_first_day(state, r.days)?;
    let items =
        report_rows(&state.reports.inbound, &first, bounds.after).filter_map(|(k, day, row, v)| {
            let (tenant, name) = row.split_once('/')?;
            if !tenant_ok_str(&r.tenant, tenant) {
                return None;
            }
            let connector = TenantId::new(tenant)
                .ok()
                .map(|t| ConnectorId::new(t, name))
                .and_then(|id| state.directory.connector(&id))
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
        });
    let next;
    (reply.inbound_report, next) = page(items, bounds);
    Ok(next)
}

/// The SMTP AUTH clients report: messages by user and TLS version.
pub(super) fn auth_clients(q: &Query<'_>, reply: &mut v1::ReadReply) -> Rendered {
    let (state, r, bounds) = (q.state, q.r, q.bounds);
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
    let next;
    (reply.auth_clients, next) = page(items, bounds);
    Ok(next)
}

/// The non-accepted domains report: messages by connector and domain, with sample message ids.
pub(super) fn non_accepted_domains(q: &Query<'_>, reply: &mut v1::ReadReply) -> Rendered {
    let (state, r, bounds) = (q.state, q.r, q.bounds);
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
    let next;
    (reply.non_accepted_domains, next) = page(items, bounds);
    Ok(next)
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
    use super::super::{read_reply, Bounds, PAGE_BYTES};
    use super::*;
    use moat_shared::time::now_ms;

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
