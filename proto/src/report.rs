//! Reports as tables: one [`Table`] per report read, built from its [`v1::ReadReply`] by
//! [`table`], so that `moat admin report ... -o table|csv` and the console's HTML page and
//! CSV download show the same rows in the same order.

use crate::v1;

/// A report's rows, each cell already rendered as text (numbers in decimal, days as
/// `YYYY-MM-DD`, shares as percentages with one decimal).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    /// The report's title, as a heading would show it.
    pub title: String,
    /// Column headings, in order.
    pub columns: Vec<String>,
    /// Rows, each with one cell per column.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// A table titled `title` with `columns`, one row per item as `row` renders it.
    fn of<T>(title: &str, columns: &[&str], items: &[T], row: impl Fn(&T) -> Vec<String>) -> Self {
        Self {
            title: title.to_owned(),
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            rows: items.iter().map(row).collect(),
        }
    }

    /// The table as RFC 4180 CSV: a header line, then one line per row, CRLF line ends, a
    /// cell quoted when it holds a comma, a quote, CR or LF (quotes doubled). A cell starting
    /// with `=`, `+`, `-` or `@` is prefixed with `'` so that a spreadsheet does not run it as
    /// a formula.
    pub fn csv(&self) -> String {
        let mut out = String::new();
        push_line(&mut out, &self.columns);
        for row in &self.rows {
            push_line(&mut out, row);
        }
        out
    }
}

fn push_line(out: &mut String, cells: &[String]) {
    for (i, cell) in cells.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let guarded;
        let cell = if cell.starts_with(['=', '+', '-', '@']) && cell.parse::<f64>().is_err() {
            guarded = format!("'{cell}");
            &guarded
        } else {
            cell
        };
        if cell.contains([',', '"', '\r', '\n']) {
            out.push('"');
            out.push_str(&cell.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(cell);
        }
    }
    out.push_str("\r\n");
}

/// The table of a report read's reply, or `None` when `kind` is not a report. The reports are
/// the inbound, SMTP AUTH clients and non-accepted domains reports, the TLS report (its usage
/// table; [`legacy_clients`] is its second), the on-premises servers, the restricted entities,
/// the counters, the alerts and the audit log.
pub fn table(kind: v1::ReadKind, reply: &v1::ReadReply) -> Option<Table> {
    use v1::ReadKind as K;
    Some(match kind {
        K::InboundReport => inbound(reply),
        K::AuthClientsReport => auth_clients(reply),
        K::NonAcceptedDomainsReport => non_accepted_domains(reply),
        K::TlsReport => tls_usage(reply),
        K::OnpremServers => onprem_servers(reply),
        K::Restricted => restricted(reply),
        K::Counters => counters(reply),
        K::Alerts => alerts(reply),
        K::Audit => audit(reply),
        _ => return None,
    })
}

/// Every table of a report read's reply: the TLS report has two (usage, then the clients still
/// on TLS 1.0/1.1), the others one, a kind that is not a report none.
pub fn tables(kind: v1::ReadKind, reply: &v1::ReadReply) -> Vec<Table> {
    let mut out: Vec<Table> = table(kind, reply).into_iter().collect();
    if kind == v1::ReadKind::TlsReport {
        out.push(legacy_clients(reply));
    }
    out
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

/// `part` of `total` as a percentage with one decimal (`0.0` of nothing).
pub fn percent(part: u64, total: u64) -> String {
    if total == 0 {
        return "0.0".to_owned();
    }
    // Rounded half up in integer arithmetic: tenths of a percent.
    let tenths = (u128::from(part) * 1000 * 2 + u128::from(total)) / (u128::from(total) * 2);
    format!("{}.{}", tenths / 10, tenths % 10)
}

/// A Unix-millisecond time as `YYYY-MM-DDTHH:MM:SSZ`, empty for 0.
fn time(ms: i64) -> String {
    if ms <= 0 {
        return String::new();
    }
    let secs = ms.div_euclid(1000);
    let day = moat_shared::time::day_string(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{day}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// A Unix-millisecond time as its day, empty for 0.
fn day(ms: i64) -> String {
    if ms <= 0 {
        return String::new();
    }
    moat_shared::time::day_string(ms.div_euclid(86_400_000))
}

/// Inbound messages by connector per day (`READ_KIND_INBOUND_REPORT`).
pub fn inbound(reply: &v1::ReadReply) -> Table {
    Table::of(
        "Inbound messages by connector",
        &[
            "Day",
            "Tenant",
            "Connector",
            "Type",
            "TLS forced",
            "No TLS",
            "TLS 1.0",
            "TLS 1.1",
            "TLS 1.2",
            "TLS 1.3",
            "Messages",
        ],
        &reply.inbound_report,
        |r| {
            vec![
                r.day.clone(),
                r.tenant.clone(),
                r.connector.clone(),
                r.connector_type.clone(),
                yes_no(r.tls_forced),
                r.no_tls.to_string(),
                r.tls10.to_string(),
                r.tls11.to_string(),
                r.tls12.to_string(),
                r.tls13.to_string(),
                r.messages.to_string(),
            ]
        },
    )
}

/// SMTP AUTH senders per day, with the share of each TLS version
/// (`READ_KIND_AUTH_CLIENTS_REPORT`).
pub fn auth_clients(reply: &v1::ReadReply) -> Table {
    Table::of(
        "SMTP AUTH clients",
        &[
            "Day",
            "Tenant",
            "User",
            "No TLS",
            "TLS 1.0",
            "TLS 1.1",
            "TLS 1.2",
            "TLS 1.3",
            "Messages",
            "No TLS %",
            "TLS 1.0 %",
            "TLS 1.1 %",
            "TLS 1.2 %",
            "TLS 1.3 %",
        ],
        &reply.auth_clients,
        |r| {
            let counts = [r.no_tls, r.tls10, r.tls11, r.tls12, r.tls13];
            let mut row = vec![r.day.clone(), r.tenant.clone(), r.user.clone()];
            row.extend(counts.iter().map(u64::to_string));
            row.push(r.messages.to_string());
            row.extend(counts.iter().map(|n| percent(*n, r.messages)));
            row
        },
    )
}

/// MAIL FROM domains outside the tenant's accepted domains, per day and inbound connector,
/// with sample Message-IDs joined by `;` (`READ_KIND_NON_ACCEPTED_DOMAINS_REPORT`).
pub fn non_accepted_domains(reply: &v1::ReadReply) -> Table {
    Table::of(
        "Non-accepted sender domains",
        &[
            "Day",
            "Tenant",
            "Connector",
            "Domain",
            "Messages",
            "Sample Message-IDs",
        ],
        &reply.non_accepted_domains,
        |r| {
            vec![
                r.day.clone(),
                r.tenant.clone(),
                r.connector.clone(),
                r.domain.clone(),
                r.messages.to_string(),
                r.sample_message_ids.join(";"),
            ]
        },
    )
}

/// TLS usage per day, tenant, listener, version and cipher (`READ_KIND_TLS_REPORT`).
pub fn tls_usage(reply: &v1::ReadReply) -> Table {
    Table::of(
        "TLS usage",
        &[
            "Day", "Tenant", "Listener", "Version", "Cipher", "Sessions", "Messages",
        ],
        &reply.tls_usage,
        |u| {
            vec![
                u.day.clone(),
                u.tenant.clone(),
                u.listener.clone(),
                u.version.clone(),
                u.cipher.clone(),
                u.sessions.to_string(),
                u.messages.to_string(),
            ]
        },
    )
}

/// The clients still on TLS 1.0/1.1, the TLS report's second table.
pub fn legacy_clients(reply: &v1::ReadReply) -> Table {
    Table::of(
        "Clients on TLS 1.0/1.1",
        &[
            "Day",
            "Tenant",
            "Client IP",
            "User",
            "Version",
            "Sessions",
            "Messages",
        ],
        &reply.legacy_clients,
        |c| {
            vec![
                c.day.clone(),
                c.tenant.clone(),
                c.client_ip.clone(),
                c.user.clone(),
                c.version.clone(),
                c.sessions.to_string(),
                c.messages.to_string(),
            ]
        },
    )
}

/// What an on-premises server's report row amounts to: remediated, compliant, exempt
/// (reported, never enforced), paused, report-only, throttled, blocking (some minutes) or
/// blocked (all of them); `not-judged` outside a cycle otherwise.
pub fn onprem_status(r: &v1::OnpremServerReport) -> &'static str {
    if r.exempt && r.first_detected_ms != 0 {
        return "exempt";
    }
    if r.first_detected_ms == 0 {
        return if r.remediated_ms != 0 {
            "remediated"
        } else if r.class == "compliant" {
            "compliant"
        } else {
            "not-judged"
        };
    }
    if r.paused {
        "paused"
    } else if r.block >= 60 {
        "blocked"
    } else if r.block > 0 {
        "blocking"
    } else if r.throttle > 0 {
        "throttled"
    } else {
        "report-only"
    }
}

/// Out-of-date on-premises Exchange servers (`READ_KIND_ONPREM_SERVERS`): the columns of
/// `moat admin report onprem-servers`.
pub fn onprem_servers(reply: &v1::ReadReply) -> Table {
    Table::of(
        "On-premises Exchange servers",
        &[
            "Tenant",
            "Server",
            "Build",
            "Product",
            "Class",
            "Status",
            "First detected",
            "Stage",
            "Throttle/hr",
            "Block/hr",
            "Next stage",
            "Recommended",
            "Paused until",
            "Connector",
            "Received",
        ],
        &reply.onprem_servers,
        |r| {
            let next = if r.next_stage == 0 {
                String::new()
            } else {
                format!(
                    "{} ({}/{}) {}",
                    r.next_stage,
                    r.next_throttle,
                    r.next_block,
                    day(r.next_stage_ms)
                )
            };
            vec![
                r.tenant.clone(),
                r.server.clone(),
                r.build.clone(),
                r.product.clone(),
                r.class.clone(),
                onprem_status(r).to_owned(),
                day(r.first_detected_ms),
                if r.stage == 0 {
                    String::new()
                } else {
                    r.stage.to_string()
                },
                r.throttle.to_string(),
                r.block.to_string(),
                next,
                r.recommended.join(","),
                day(r.paused_until_ms),
                r.connector.clone(),
                r.received.clone(),
            ]
        },
    )
}

/// Restricted connectors and users (`READ_KIND_RESTRICTED`).
pub fn restricted(reply: &v1::ReadReply) -> Table {
    Table::of(
        "Restricted entities",
        &["Tenant", "Kind", "Name", "Reason", "Since", "Until"],
        &reply.restricted,
        |e| {
            vec![
                e.tenant.clone(),
                e.kind.clone(),
                e.name.clone(),
                e.reason.clone(),
                time(e.since_ms),
                time(e.until_ms),
            ]
        },
    )
}

/// Counter totals (`READ_KIND_COUNTERS`).
pub fn counters(reply: &v1::ReadReply) -> Table {
    Table::of(
        "Counters",
        &["Scope", "Key", "Name", "Total", "Last minute"],
        &reply.counters,
        |c| {
            vec![
                c.scope.clone(),
                c.key.clone(),
                c.name.clone(),
                c.total.to_string(),
                c.last_minute.to_string(),
            ]
        },
    )
}

/// Alerts raised for tenants' admins (`READ_KIND_ALERTS`).
pub fn alerts(reply: &v1::ReadReply) -> Table {
    Table::of(
        "Alerts",
        &["Id", "At", "Tenant", "Severity", "Title", "Detail"],
        &reply.alerts,
        |a| {
            vec![
                a.id.to_string(),
                time(a.at_ms),
                a.tenant.clone(),
                a.severity.clone(),
                a.title.clone(),
                a.detail.clone(),
            ]
        },
    )
}

/// The audit log (`READ_KIND_AUDIT`).
pub fn audit(reply: &v1::ReadReply) -> Table {
    Table::of(
        "Audit log",
        &["Index", "At", "Actor", "Tenant", "Action"],
        &reply.audit,
        |a| {
            vec![
                a.index.to_string(),
                time(a.at_ms),
                a.actor.clone(),
                a.tenant.clone(),
                a.action.clone(),
            ]
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads RFC 4180 CSV back into lines of cells, undoing the formula guard.
    fn parse_csv(text: &str) -> Vec<Vec<String>> {
        let mut lines = Vec::new();
        let (mut line, mut cell) = (Vec::new(), String::new());
        let mut chars = text.chars().peekable();
        let mut quoted = false;
        while let Some(c) = chars.next() {
            match (quoted, c) {
                (true, '"') if chars.peek() == Some(&'"') => {
                    chars.next();
                    cell.push('"');
                }
                (true, '"') => quoted = false,
                (true, c) => cell.push(c),
                (false, '"') => quoted = true,
                (false, ',') => line.push(std::mem::take(&mut cell)),
                (false, '\r') => {
                    assert_eq!(chars.next(), Some('\n'), "CR without LF");
                    line.push(std::mem::take(&mut cell));
                    lines.push(std::mem::take(&mut line));
                }
                (false, c) => cell.push(c),
            }
        }
        assert!(cell.is_empty() && line.is_empty(), "no CRLF at the end");
        for l in &mut lines {
            for c in l.iter_mut() {
                if c.starts_with("'") && c[1..].starts_with(['=', '+', '-', '@']) {
                    c.remove(0);
                }
            }
        }
        lines
    }

    /// A reply with a row of every report, some cells holding what CSV must quote.
    fn reply() -> v1::ReadReply {
        v1::ReadReply {
            inbound_report: vec![
                v1::InboundReportRow {
                    day: "2026-12-01".into(),
                    tenant: "example.test".into(),
                    connector: "on, \"prem\"".into(),
                    connector_type: "OnPremises".into(),
                    tls_forced: true,
                    no_tls: 1,
                    tls10: 2,
                    tls11: 3,
                    tls12: 4,
                    tls13: 5,
                    messages: 15,
                },
                v1::InboundReportRow {
                    day: "2026-12-01".into(),
                    tenant: "example.test".into(),
                    connector: "other".into(),
                    ..Default::default()
                },
            ],
            auth_clients: vec![v1::AuthClientRow {
                day: "2026-12-01".into(),
                tenant: "example.test".into(),
                user: "=cmd@example.test".into(),
                tls12: 1,
                tls13: 2,
                messages: 3,
                ..Default::default()
            }],
            non_accepted_domains: vec![v1::NonAcceptedDomainRow {
                day: "2026-12-01".into(),
                tenant: "example.test".into(),
                connector: "onprem".into(),
                domain: "elsewhere.test".into(),
                messages: 2,
                sample_message_ids: vec!["<a@x>".into(), "<b,\r\n@x>".into()],
            }],
            tls_usage: vec![v1::TlsUsage {
                day: "2026-12-01".into(),
                tenant: "example.test".into(),
                listener: "submission".into(),
                version: "TLSv1.3".into(),
                cipher: "TLS13_AES_128_GCM_SHA256".into(),
                sessions: 1,
                messages: 2,
            }],
            legacy_clients: vec![v1::LegacyClient {
                day: "2026-12-01".into(),
                tenant: "example.test".into(),
                client_ip: "192.0.2.1".into(),
                version: "TLSv1.0".into(),
                sessions: 1,
                ..Default::default()
            }],
            onprem_servers: vec![v1::OnpremServerReport {
                tenant: "example.test".into(),
                server: "exch.corp".into(),
                build: "15.1.2507.6".into(),
                class: "unsupported".into(),
                first_detected_ms: 1_764_547_200_000,
                stage: 1,
                next_stage: 2,
                next_throttle: 10,
                next_block: 0,
                next_stage_ms: 1_767_225_600_000,
                recommended: vec!["15.1.2507.39".into(), "15.2".into()],
                received: "from exch.corp (\"x\") by y; Mon, 1 Dec 2026".into(),
                ..Default::default()
            }],
            restricted: vec![v1::RestrictedEntity {
                tenant: "example.test".into(),
                kind: "connector".into(),
                name: "onprem".into(),
                reason: "spike: 500 messages, 10x".into(),
                since_ms: 1_764_547_200_000,
                until_ms: 0,
            }],
            counters: vec![v1::CounterTotal {
                scope: "connector".into(),
                key: "example.test/onprem".into(),
                name: "messages".into(),
                total: 7,
                last_minute: 1,
            }],
            alerts: vec![v1::Alert {
                id: 1,
                at_ms: 1_764_547_200_000,
                tenant: "example.test".into(),
                severity: "warning".into(),
                title: "Connector restricted".into(),
                detail: "line 1\nline 2".into(),
                deliveries: vec![],
            }],
            audit: vec![v1::AuditRecord {
                index: 3,
                at_ms: 1_764_547_200_000,
                actor: "admin".into(),
                action: "-unblock".into(),
                tenant: String::new(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn every_reports_csv_reads_back_as_its_table() {
        let r = reply();
        let mut seen = 0;
        for kind in v1::ReadKind::all() {
            for t in tables(kind, &r) {
                seen += 1;
                assert!(!t.rows.is_empty(), "{kind:?}");
                for row in &t.rows {
                    assert_eq!(row.len(), t.columns.len(), "{kind:?}: {row:?}");
                }
                let mut expected = vec![t.columns.clone()];
                expected.extend(t.rows.clone());
                assert_eq!(parse_csv(&t.csv()), expected, "{kind:?}");
            }
        }
        // inbound, auth clients, non-accepted, TLS (two), on-prem, restricted, counters,
        // alerts, audit.
        assert_eq!(seen, 10);
        assert!(table(v1::ReadKind::Tenant, &r).is_none());
    }

    #[test]
    fn the_new_reports_render_their_rows() {
        let r = reply();
        let t = inbound(&r);
        assert_eq!(
            t.rows[0],
            [
                "2026-12-01",
                "example.test",
                "on, \"prem\"",
                "OnPremises",
                "yes",
                "1",
                "2",
                "3",
                "4",
                "5",
                "15"
            ]
        );
        assert_eq!(t.rows[1][3..5], ["", "no"]);
        let a = auth_clients(&r);
        assert_eq!(
            a.rows[0][3..],
            ["0", "0", "0", "1", "2", "3", "0.0", "0.0", "0.0", "33.3", "66.7"]
        );
        let n = non_accepted_domains(&r);
        assert_eq!(n.rows[0][5], "<a@x>;<b,\r\n@x>");
        assert_eq!(percent(1, 8), "12.5");
        assert_eq!(percent(2, 3), "66.7");
        assert_eq!(percent(0, 0), "0.0");
        assert_eq!(percent(5, 5), "100.0");
    }

    #[test]
    fn csv_quotes_what_needs_it_and_guards_formulas() {
        let t = Table {
            title: "t".into(),
            columns: vec!["a".into(), "b".into()],
            rows: vec![
                vec!["x,y".into(), "say \"hi\"".into()],
                vec!["=SUM(A1)".into(), "-3".into()],
            ],
        };
        assert_eq!(
            t.csv(),
            "a,b\r\n\"x,y\",\"say \"\"hi\"\"\"\r\n'=SUM(A1),-3\r\n"
        );
    }
}
