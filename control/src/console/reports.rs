//! Reports: `GET /reports` lists every read kind that is a report (those
//! [`moat_proto::report::table`] turns into a table, and the TLS report), and
//! `GET /reports/{kind}?tenant=&days=` shows one as a chart of its numeric columns per day
//! (when it has a day column) and a table; `&format=csv` downloads the same rows as CSV
//! ([`Table::csv`]), so the console, `moat admin report ... -o csv` and the download agree.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use maud::html;
use moat_proto::report::{self, Table};
use moat_proto::v1;

use super::chart::day_chart;
use super::layout::{not_found, page, respond};
use super::table::{render, Grid, Params};
use super::App;

/// Days a report covers unless asked (as `moat admin report`).
const DEFAULT_DAYS: u32 = 7;
/// The most days a report covers.
const MAX_DAYS: u32 = 90;

/// The read kinds that are reports (those [`moat_proto::report::table`] turns into a table):
/// the traffic reports first, then the lists that also export.
pub(crate) fn report_kinds() -> Vec<v1::ReadKind> {
    let empty = v1::ReadReply::default();
    let first = [
        v1::ReadKind::InboundReport,
        v1::ReadKind::AuthClientsReport,
        v1::ReadKind::NonAcceptedDomainsReport,
        v1::ReadKind::TlsReport,
        v1::ReadKind::OnpremServers,
    ];
    let mut kinds: Vec<v1::ReadKind> = first.to_vec();
    kinds.extend(v1::ReadKind::all().filter(|k| !first.contains(k)));
    kinds.retain(|k| report::table(*k, &empty).is_some());
    kinds
}

/// A kind's title, as its table names it.
fn title(kind: v1::ReadKind) -> String {
    report::table(kind, &v1::ReadReply::default())
        .map(|t| t.title)
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| kind.name())
}

/// `GET /reports`.
pub(crate) async fn index(State(app): State<App>, headers: HeaderMap) -> Response {
    let cx = match app.signed_in(&headers, "/reports") {
        Ok(cx) => cx,
        Err(r) => return r,
    };
    let kinds = report_kinds();
    let body = html! {
        h1 { "Reports" }
        p.lead { "Per-day reports of the mail edges accepted, for the last 7 days by default (up to 90), each downloadable as CSV." }
        div.cards {
            @for k in &kinds {
                div.card {
                    div.v { a href={"/reports/" (k.name())} { (title(*k)) } }
                    div.k { "moat admin read " (k.name()) }
                }
            }
        }
    };
    respond(StatusCode::OK, page("Reports", Some(&cx.chrome()), body))
}

/// `GET /reports/{kind}`.
pub(crate) async fn report(
    State(app): State<App>,
    headers: HeaderMap,
    Path(kind): Path<String>,
    uri: Uri,
) -> Response {
    let cx = match app.signed_in(&headers, "/reports") {
        Ok(cx) => cx,
        Err(r) => return r,
    };
    let Some(kind) = v1::ReadKind::from_name(&kind).filter(|k| report_kinds().contains(k)) else {
        return not_found(Some(&cx.chrome()));
    };
    let params = Params::parse(uri.query());
    let tenant = match params.get("tenant").trim() {
        "" => cx.own_tenant(),
        t => t.to_owned(),
    };
    let days = params
        .get("days")
        .parse::<u32>()
        .unwrap_or(DEFAULT_DAYS)
        .clamp(1, MAX_DAYS);
    let reply = match app.read(&cx.who, kind, &tenant, "", days).await {
        Ok(r) => r,
        Err(s) => return app.status_page(&cx, &s),
    };
    let mut tables = report::tables(kind, &reply).into_iter();
    let Some(table) = tables.next() else {
        return not_found(Some(&cx.chrome()));
    };
    let extra: Vec<Table> = tables.collect();
    let title = if table.title.is_empty() {
        title(kind)
    } else {
        table.title.clone()
    };
    if params.get("format") == "csv" {
        let file = format!(
            "{}-{}-{}d.csv",
            kind.name(),
            if tenant.is_empty() {
                "all"
            } else {
                tenant.as_str()
            }
            .replace(
                |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-',
                "_"
            ),
            days
        );
        let mut res = table.csv().into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/csv; charset=utf-8"),
        );
        if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file}\"")) {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
        return res;
    }
    let csv_link = {
        let mut s = form_urlencoded::Serializer::new(String::new());
        if !tenant.is_empty() {
            s.append_pair("tenant", &tenant);
        }
        s.append_pair("days", &days.to_string());
        s.append_pair("format", "csv");
        format!("/reports/{}?{}", kind.name(), s.finish())
    };
    let chart = day_chart(&table);
    let body = html! {
        p { a href="/reports" { "← Reports" } }
        h1 { (title) }
        @if super::truncated(&reply) { (super::layout::truncated("this report")) }
        form.toolbar method="get" {
            @if cx.own_tenant().is_empty() {
                input type="search" name="tenant" value=(tenant) placeholder="Every tenant" aria-label="Tenant";
            }
            label for="days" { "Days" }
            input type="number" id="days" name="days" min="1" max=(MAX_DAYS) value=(days);
            button.secondary type="submit" { "Show" }
            a.button href=(csv_link) { "Download CSV" }
        }
        @if let Some(c) = chart { (c) }
        (render(&Grid::from(table.clone()), &params, &format!("Nothing to report for {} in the last {days} days: rows appear once edges report traffic.", if tenant.is_empty() { "any tenant" } else { tenant.as_str() })))
        @for t in &extra {
            h2 { (t.title) }
            (render(&Grid::from(t.clone()), &Params::default(), "Nothing to report."))
        }
    };
    respond(StatusCode::OK, page(&title, Some(&cx.chrome()), body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_report_kind_is_listed_traffic_first_and_charts_by_day() {
        let kinds = report_kinds();
        assert_eq!(kinds.first(), Some(&v1::ReadKind::InboundReport));
        assert!(kinds.contains(&v1::ReadKind::TlsReport));
        assert!(!kinds.contains(&v1::ReadKind::Tenant));
        let reply = v1::ReadReply {
            tls_usage: vec![v1::TlsUsage {
                day: "2026-12-01".into(),
                tenant: "a.test".into(),
                listener: "mx".into(),
                version: "TLSv1.3".into(),
                cipher: "TLS_AES_128_GCM_SHA256".into(),
                sessions: 3,
                messages: 5,
            }],
            ..Default::default()
        };
        let tables = report::tables(v1::ReadKind::TlsReport, &reply);
        assert_eq!(tables.len(), 2, "usage and legacy clients");
        assert_eq!(tables[0].rows.len(), 1);
        assert!(day_chart(&tables[0]).is_some());
    }
}
