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

/// The read kinds that are reports: the TLS report, then every kind
/// [`moat_proto::report::table`] knows.
pub(crate) fn report_kinds() -> Vec<v1::ReadKind> {
    let empty = v1::ReadReply::default();
    let mut kinds = vec![v1::ReadKind::TlsReport];
    kinds.extend(
        v1::ReadKind::all()
            .filter(|k| *k != v1::ReadKind::TlsReport && report::table(*k, &empty).is_some()),
    );
    kinds
}

/// A kind's title, before its table names one.
fn title(kind: v1::ReadKind) -> String {
    let empty = v1::ReadReply::default();
    report::table(kind, &empty)
        .map(|t| t.title)
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| match kind {
            v1::ReadKind::TlsReport => "Inbound TLS".to_owned(),
            k => k.name(),
        })
}

/// The TLS report as tables, when [`report::table`] does not give it: the protocol and cipher
/// use per day, and the clients still on TLS 1.0/1.1.
pub(crate) fn tls_tables(reply: &v1::ReadReply) -> (Table, Table) {
    let usage = Table {
        title: "Inbound TLS".into(),
        columns: [
            "Day", "Tenant", "Listener", "Version", "Cipher", "Sessions", "Messages",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect(),
        rows: reply
            .tls_usage
            .iter()
            .map(|u| {
                vec![
                    u.day.clone(),
                    u.tenant.clone(),
                    u.listener.clone(),
                    u.version.clone(),
                    u.cipher.clone(),
                    u.sessions.to_string(),
                    u.messages.to_string(),
                ]
            })
            .collect(),
    };
    let legacy = Table {
        title: "Clients on TLS 1.0 and 1.1".into(),
        columns: [
            "Day",
            "Tenant",
            "Client IP",
            "User",
            "Version",
            "Sessions",
            "Messages",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect(),
        rows: reply
            .legacy_clients
            .iter()
            .map(|l| {
                vec![
                    l.day.clone(),
                    l.tenant.clone(),
                    l.client_ip.clone(),
                    if l.user.is_empty() {
                        "-".into()
                    } else {
                        l.user.clone()
                    },
                    l.version.clone(),
                    l.sessions.to_string(),
                    l.messages.to_string(),
                ]
            })
            .collect(),
    };
    (usage, legacy)
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
        @if kinds.len() <= 1 {
            div.empty { "Only the TLS report is available on this node: the inbound, SMTP AUTH client and non-accepted domain reports appear here once the node serves them." }
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
    let (table, extra) = match report::table(kind, &reply) {
        Some(t) => (t, None),
        None => {
            let (usage, legacy) = tls_tables(&reply);
            (usage, Some(legacy))
        }
    };
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
        @if let Some(l) = &extra {
            h2 { (l.title) }
            (render(&Grid::from(l.clone()), &Params::default(), "No client used TLS 1.0 or 1.1."))
        }
    };
    respond(StatusCode::OK, page(&title, Some(&cx.chrome()), body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_report_is_always_listed_and_renders_its_rows() {
        assert_eq!(report_kinds().first(), Some(&v1::ReadKind::TlsReport));
        let reply = v1::ReadReply {
            tls_usage: vec![v1::TlsUsage {
                day: "2026-12-01".into(),
                tenant: "a.test".into(),
                listener: "mx".into(),
                version: "TLSv1.3".into(),
                cipher: "TLS13_AES_128_GCM_SHA256".into(),
                sessions: 3,
                messages: 5,
            }],
            ..Default::default()
        };
        let (usage, legacy) = tls_tables(&reply);
        assert_eq!(usage.rows.len(), 1);
        assert!(legacy.rows.is_empty());
        assert_eq!(
            usage.csv(),
            "Day,Tenant,Listener,Version,Cipher,Sessions,Messages\r\n2026-12-01,a.test,mx,TLSv1.3,TLS13_AES_128_GCM_SHA256,3,5\r\n"
        );
        assert!(day_chart(&usage).is_some());
    }
}
