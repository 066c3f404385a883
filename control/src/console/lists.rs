//! The plain lists: `GET /connectors` (each inbound connector with its settings and its
//! counters' totals as columns), `GET /alerts` (alerts raised for tenants' admins, with how
//! each delivery went) and `GET /audit` (the replicated audit log).
//!
//! Connectors, which grow with the estate, are read one admin page of [`ADMIN_PAGE`] items at
//! a time after `?after=TOKEN` with a link to the next ([`paged`]), so a page costs the same
//! with a million connectors as with ten, and their counters are read for the connectors shown
//! only ([`connector_counters`]). Alerts and audit records are bounded by what the state keeps
//! (the latest 10,000 alerts; the admin API's latest 1,000 audit records) and are shown latest
//! first, paged in memory.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use maud::html;
use moat_proto::v1;

use moat_proto::paging::encode_page_token;
use tonic::Status;

use super::layout::{page, respond, when};
use super::table::{paged, render, Grid, Params, ADMIN_PAGE};
use super::App;
use crate::service::admin::authz::Principal;

/// Counters per read of [`connector_counters`].
const COUNTER_READ: u32 = 256;

/// The counters of `connectors` (one admin page of them), read for `who` in as few admin
/// reads as their keys allow: counters are keyed `connector|TENANT/NAME|COUNTER`, so each read
/// starts at the first connector not yet covered and takes the counters that follow, which
/// usually cover the next connectors too; it never reads more than one connector's worth past
/// the last one shown.
pub(crate) async fn connector_counters(
    app: &App,
    who: &Principal,
    tenant: &str,
    connectors: &[v1::Connector],
) -> Result<Vec<v1::CounterTotal>, Status> {
    let scope = moat_shared::signal::CONNECTOR;
    let mut wanted: Vec<String> = connectors
        .iter()
        .map(|c| format!("{scope}|{}/{}|", c.tenant, c.name))
        .collect();
    wanted.sort();
    wanted.dedup();
    let mut out = Vec::new();
    let mut i = 0;
    let mut cursor = match wanted.first() {
        Some(w) => w.clone(),
        None => return Ok(out),
    };
    loop {
        let token = encode_page_token(v1::ReadKind::Counters, cursor.as_bytes());
        let reply = app
            .read_page(who, v1::ReadKind::Counters, tenant, &token, COUNTER_READ)
            .await?;
        let last = reply
            .counters
            .last()
            .map(|c| format!("{}|{}|{}", c.scope, c.key, c.name));
        out.extend(reply.counters.into_iter().filter(|c| {
            wanted
                .binary_search(&format!("{}|{}|", c.scope, c.key))
                .is_ok()
        }));
        let Some(last) = last.filter(|_| !reply.next_page_token.is_empty()) else {
            return Ok(out);
        };
        // Past the connectors whose counters all came before `last`.
        while wanted
            .get(i)
            .is_some_and(|w| *w < last && !last.starts_with(w.as_str()))
        {
            i += 1;
        }
        match wanted.get(i) {
            None => return Ok(out),
            // More counters of this connector: on from the last one read.
            Some(w) if last.starts_with(w.as_str()) => cursor = last,
            Some(w) => cursor = w.clone(),
        }
    }
}

/// The connectors' table, one column per connector counter.
pub(crate) fn connectors_grid(connectors: &[v1::Connector], counters: &[v1::CounterTotal]) -> Grid {
    let mut by: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    let mut names = BTreeSet::new();
    for c in counters
        .iter()
        .filter(|c| c.scope == moat_shared::signal::CONNECTOR)
    {
        by.entry(&c.key).or_default().insert(&c.name, c.total);
        names.insert(c.name.as_str());
    }
    let mut columns: Vec<String> = [
        "Connector",
        "Tenant",
        "Type",
        "Enabled",
        "TLS required",
        "Senders",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    columns.extend(names.iter().map(|n| (*n).to_owned()));
    let mut g = Grid {
        columns,
        badges: vec![3, 4],
        ..Default::default()
    };
    for c in connectors {
        let id = format!("{}/{}", c.tenant, c.name);
        let kind = match v1::ConnectorKind::try_from(c.kind) {
            Ok(v1::ConnectorKind::OnPremises) => "on-premises",
            Ok(v1::ConnectorKind::Partner) => "partner",
            _ => "-",
        };
        let mut senders: Vec<String> = c.sender_ip_addresses.clone();
        if !c.tls_sender_certificate_name.is_empty() {
            senders.push(format!("certificate {}", c.tls_sender_certificate_name));
        }
        let yes = |b: bool| if b { "yes" } else { "no" }.to_owned();
        let mut row = vec![
            c.name.clone(),
            c.tenant.clone(),
            kind.into(),
            yes(c.enabled),
            yes(c.require_tls),
            if senders.is_empty() {
                "-".into()
            } else {
                senders.join(", ")
            },
        ];
        let counts = by.get(id.as_str());
        row.extend(names.iter().map(|n| {
            counts
                .and_then(|m| m.get(n))
                .copied()
                .unwrap_or(0)
                .to_string()
        }));
        g.push(row, None);
    }
    g
}

/// `GET /connectors`.
pub(crate) async fn connectors(State(app): State<App>, headers: HeaderMap, uri: Uri) -> Response {
    let cx = match app.signed_in(&headers, "/connectors") {
        Ok(cx) => cx,
        Err(r) => return r,
    };
    let tenant = cx.own_tenant();
    let params = Params::parse(uri.query());
    let list = match app
        .read_page(
            &cx.who,
            v1::ReadKind::Connector,
            &tenant,
            params.get("after"),
            ADMIN_PAGE,
        )
        .await
    {
        Ok(l) => l,
        Err(s) => return app.status_page(&cx, &s),
    };
    let counters = match connector_counters(&app, &cx.who, &tenant, &list.connectors).await {
        Ok(c) => c,
        Err(s) => return app.status_page(&cx, &s),
    };
    let body = html! {
        h1 { "Connectors" }
        p.lead { "Inbound connectors of partners and on-premises servers, by tenant and name, with the counters edges reported for each (totals)." }
        (paged(&connectors_grid(&list.connectors, &counters), &params, &list.next_page_token,
            "No connector yet: create one with `moat admin connector create`, and it appears here with its counters.",
            "moat admin connector list"))
    };
    respond(StatusCode::OK, page("Connectors", Some(&cx.chrome()), body))
}

/// The alerts' table, latest first.
pub(crate) fn alerts_grid(alerts: &[v1::Alert]) -> Grid {
    let mut g = Grid::new(&[
        "Raised",
        "Tenant",
        "Severity",
        "Title",
        "Detail",
        "Deliveries",
    ]);
    g.badges = vec![2];
    for a in alerts.iter().rev() {
        let deliveries: Vec<String> = a
            .deliveries
            .iter()
            .map(|d| {
                let mut s = format!("{} {}: {}", d.channel, d.target, d.state);
                if !d.last_error.is_empty() {
                    s.push_str(&format!(" ({})", d.last_error));
                }
                s
            })
            .collect();
        g.push(
            vec![
                when(a.at_ms),
                a.tenant.clone(),
                a.severity.clone(),
                a.title.clone(),
                a.detail.clone(),
                if deliveries.is_empty() {
                    "-".into()
                } else {
                    deliveries.join("; ")
                },
            ],
            None,
        );
    }
    g
}

/// `GET /alerts`.
pub(crate) async fn alerts(State(app): State<App>, headers: HeaderMap, uri: Uri) -> Response {
    let cx = match app.signed_in(&headers, "/alerts") {
        Ok(cx) => cx,
        Err(r) => return r,
    };
    let reply = match app
        .read(&cx.who, v1::ReadKind::Alerts, &cx.own_tenant(), "", 0)
        .await
    {
        Ok(r) => r,
        Err(s) => return app.status_page(&cx, &s),
    };
    let params = Params::parse(uri.query());
    let body = html! {
        h1 { "Alerts" }
        p.lead { "What Moat told tenants' admins (restrictions, limits, on-premises stages), and whether the email or webhook got through." }
        (render(&alerts_grid(&reply.alerts), &params, "No alert has been raised: restrictions, users over their limits and on-premises enforcement stages raise alerts here."))
    };
    respond(StatusCode::OK, page("Alerts", Some(&cx.chrome()), body))
}

/// The audit log's table, latest first.
pub(crate) fn audit_grid(records: &[v1::AuditRecord]) -> Grid {
    let mut g = Grid::new(&["Index", "When", "Actor", "Tenant", "Action"]);
    for a in records.iter().rev() {
        g.push(
            vec![
                a.index.to_string(),
                when(a.at_ms),
                a.actor.clone(),
                if a.tenant.is_empty() {
                    "-".into()
                } else {
                    a.tenant.clone()
                },
                a.action.clone(),
            ],
            None,
        );
    }
    g
}

/// `GET /audit`.
pub(crate) async fn audit(State(app): State<App>, headers: HeaderMap, uri: Uri) -> Response {
    let cx = match app.signed_in(&headers, "/audit") {
        Ok(cx) => cx,
        Err(r) => return r,
    };
    let reply = match app
        .read(&cx.who, v1::ReadKind::Audit, &cx.own_tenant(), "", 0)
        .await
    {
        Ok(r) => r,
        Err(s) => return app.status_page(&cx, &s),
    };
    let params = Params::parse(uri.query());
    let body = html! {
        h1 { "Audit log" }
        p.lead { "Every change, replicated with the cluster's state: who made it (the token's name, from `moat admin` or this console) and what it was. The latest 1000 records." }
        (render(&audit_grid(&reply.audit), &params, "No change has been recorded yet."))
    };
    respond(StatusCode::OK, page("Audit log", Some(&cx.chrome()), body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connectors_get_their_counters_as_columns() {
        let c = v1::Connector {
            tenant: "a.test".into(),
            name: "partner".into(),
            kind: v1::ConnectorKind::Partner as i32,
            enabled: true,
            sender_ip_addresses: vec!["192.0.2.0/24".into()],
            ..Default::default()
        };
        let counters = vec![v1::CounterTotal {
            scope: moat_shared::signal::CONNECTOR.into(),
            key: "a.test/partner".into(),
            name: "messages".into(),
            total: 17,
            last_minute: 1,
        }];
        let g = connectors_grid(&[c], &counters);
        assert_eq!(g.columns.last().map(String::as_str), Some("messages"));
        assert_eq!(g.rows[0].last().map(String::as_str), Some("17"));
        assert_eq!(g.rows[0][5], "192.0.2.0/24");
    }

    #[test]
    fn audit_and_alerts_list_latest_first() {
        let recs = vec![
            v1::AuditRecord {
                index: 1,
                actor: "operator".into(),
                action: "first".into(),
                ..Default::default()
            },
            v1::AuditRecord {
                index: 2,
                actor: "operator".into(),
                action: "second".into(),
                ..Default::default()
            },
        ];
        assert_eq!(audit_grid(&recs).rows[0][4], "second");
        let alerts = vec![v1::Alert {
            title: "Connector restricted".into(),
            deliveries: vec![v1::AlertDelivery {
                channel: "email".into(),
                target: "admin@a.test".into(),
                state: "delivered".into(),
                ..Default::default()
            }],
            ..Default::default()
        }];
        assert_eq!(
            alerts_grid(&alerts).rows[0][5],
            "email admin@a.test: delivered"
        );
    }
}
