//! `moat admin report`: reports built from what edges observed (TLS usage, legacy TLS clients,
//! on-premises servers, inbound messages by connector, SMTP AUTH clients, non-accepted sender
//! domains). Every report's table is the control plane's [`moat_proto::report::Table`], the one
//! the console shows: `-o table` aligns it, `-o csv` writes it as CSV, `-o json` writes the
//! rows as objects.

use moat_proto::report::{self as tables, Table};
use moat_proto::ReadKind;
use moat_proto::{ReadReply, ReadRequest};
use serde_json::{json, Value};

use super::onprem::onprem_json;
use super::render::{cell, out, print_json, render_table};
use super::{Ctx, JsonArray, Output, PAGE_SIZE};
use crate::client::Failure;

/// Most days a report covers (what the control plane keeps).
const MAX_DAYS: u32 = 90;

#[derive(clap::Subcommand, Debug)]
pub(super) enum ReportCmd {
    /// TLS versions and ciphers in use, and the clients still on TLS 1.0/1.1 (`-o csv`: the
    /// usage table; `report legacy-clients` gives the second).
    Tls {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// How many days back, today included.
        #[arg(long, value_name = "N", default_value_t = 7,
            value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
    },
    /// The clients still on TLS 1.0/1.1 (the TLS report's second table).
    LegacyClients {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// How many days back, today included.
        #[arg(long, value_name = "N", default_value_t = 7,
            value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
    },
    /// On-premises Exchange servers seen in connector mail: build, class, stage, next stage,
    /// recommended builds, pause state.
    OnpremServers {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Inbound messages per day and connector: its type, whether it forces TLS, messages
    /// without TLS and over TLS 1.0, 1.1, 1.2, 1.3, and the total.
    Inbound(DaysArgs),
    /// SMTP AUTH senders per day: messages over each TLS version and their share.
    AuthClients(DaysArgs),
    /// MAIL FROM domains that are none of the tenant's accepted domains, per day and inbound
    /// connector, with counts and sample Message-IDs (what 5.7.64 and the `unprovisioned`
    /// detector see).
    NonAcceptedDomains(DaysArgs),
}

/// The tenant and days of a report.
#[derive(clap::Args, Debug)]
pub(super) struct DaysArgs {
    /// Only this tenant's.
    #[arg(long)]
    tenant: Option<String>,
    /// How many days back, today included (1 to 90).
    #[arg(long, value_name = "N", default_value_t = 7,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DAYS)))]
    days: u32,
}

impl Ctx {
    pub(super) async fn report(&self, cmd: ReportCmd) -> Result<(), Failure> {
        match cmd {
            ReportCmd::Tls { tenant, days } => {
                let reply = self.tls_report(tenant.as_deref(), days).await?;
                match self.output {
                    Output::Json => print_json(&tls_report_json(&reply)),
                    Output::Table if self.csv => print_csv(&tables::tls_usage(&reply)),
                    Output::Table => out(render_tls_report(&reply).trim_end()),
                }
                Ok(())
            }
            ReportCmd::LegacyClients { tenant, days } => {
                let reply = self.tls_report(tenant.as_deref(), days).await?;
                let objects: Vec<Value> = reply
                    .legacy_clients
                    .iter()
                    .map(legacy_client_json)
                    .collect();
                self.print_report(&tables::legacy_clients(&reply), objects);
                Ok(())
            }
            ReportCmd::OnpremServers { tenant } => {
                let req = self.read_req(ReadKind::OnpremServers, tenant.as_deref(), None);
                self.paged_report(req, tables::onprem_servers, |r| {
                    r.onprem_servers.iter().map(onprem_json).collect()
                })
                .await
            }
            ReportCmd::Inbound(a) => {
                let req = self.days_req(ReadKind::InboundReport, &a);
                self.paged_report(req, tables::inbound, |r| {
                    r.inbound_report.iter().map(inbound_json).collect()
                })
                .await
            }
            ReportCmd::AuthClients(a) => {
                let req = self.days_req(ReadKind::AuthClientsReport, &a);
                self.paged_report(req, tables::auth_clients, |r| {
                    r.auth_clients.iter().map(auth_client_json).collect()
                })
                .await
            }
            ReportCmd::NonAcceptedDomains(a) => {
                let req = self.days_req(ReadKind::NonAcceptedDomainsReport, &a);
                self.paged_report(req, tables::non_accepted_domains, |r| {
                    r.non_accepted_domains
                        .iter()
                        .map(non_accepted_json)
                        .collect()
                })
                .await
            }
        }
    }

    async fn tls_report(&self, tenant: Option<&str>, days: u32) -> Result<ReadReply, Failure> {
        let mut req = self.read_req(ReadKind::TlsReport, tenant, None);
        req.days = days;
        self.client.read(req).await
    }

    fn days_req(&self, kind: ReadKind, a: &DaysArgs) -> ReadRequest {
        let mut req = self.read_req(kind, a.tenant.as_deref(), None);
        req.days = a.days;
        req
    }

    /// Reads a paged report: every page into one table (or, with `--limit`, one page and the
    /// token of the next on standard error), printed as `-o` says.
    async fn paged_report(
        &self,
        mut req: ReadRequest,
        table: fn(&ReadReply) -> Table,
        json: impl Fn(&ReadReply) -> Vec<Value>,
    ) -> Result<(), Failure> {
        req.limit = self.limit.unwrap_or(PAGE_SIZE);
        req.page_token = self.page_token.clone();
        let mut all: Option<Table> = None;
        let mut objects = JsonArray { items: 0 };
        loop {
            let reply = self.client.read(req.clone()).await?;
            if self.output == Output::Json {
                json(&reply).iter().for_each(|o| objects.item(o));
            } else {
                let page = table(&reply);
                match &mut all {
                    Some(t) => t.rows.extend(page.rows),
                    None => all = Some(page),
                }
            }
            let next = reply.next_page_token;
            if next.is_empty() {
                break;
            }
            if self.limit.is_some() {
                eprintln!("more: --page-token {next}");
                break;
            }
            if next == req.page_token {
                return Err(Failure::Other(
                    "the control plane returned the same page token twice".into(),
                ));
            }
            req.page_token = next;
        }
        match (self.output, all) {
            (Output::Json, _) => objects.end(),
            (Output::Table, Some(t)) if self.csv => print_csv(&t),
            (Output::Table, Some(t)) if t.rows.is_empty() => eprintln!("No rows in this report."),
            (Output::Table, Some(t)) => out(render_report(&t).trim_end()),
            (Output::Table, None) => {}
        }
        Ok(())
    }

    /// Prints a whole report as `-o` says: its table aligned, as CSV, or `objects` as JSON.
    fn print_report(&self, t: &Table, objects: Vec<Value>) {
        match self.output {
            Output::Json => print_json(&Value::Array(objects)),
            Output::Table if self.csv => print_csv(t),
            Output::Table if t.rows.is_empty() => eprintln!("No rows in this report."),
            Output::Table => out(render_report(t).trim_end()),
        }
    }
}

/// Writes a table as CSV to stdout (its lines end in CRLF, as RFC 4180 has them).
fn print_csv(t: &Table) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(t.csv().as_bytes());
}

/// A column heading as `moat admin` tables show them: upper case, words joined by `-`.
fn heading(column: &str) -> String {
    column.to_uppercase().replace(' ', "-")
}

/// A report table as aligned columns: kubectl-style headings, empty cells as `<none>`.
pub(super) fn render_report(t: &Table) -> String {
    let headings: Vec<String> = t.columns.iter().map(|c| heading(c)).collect();
    let headings: Vec<&str> = headings.iter().map(String::as_str).collect();
    let rows: Vec<Vec<String>> = t
        .rows
        .iter()
        .map(|r| r.iter().map(|c| cell(c)).collect())
        .collect();
    render_table(&headings, &rows)
}

fn inbound_json(r: &moat_proto::InboundReportRow) -> Value {
    json!({
        "day": r.day,
        "tenant": r.tenant,
        "connector": r.connector,
        "type": r.connector_type,
        "tls-forced": r.tls_forced,
        "no-tls": r.no_tls,
        "tls-1.0": r.tls10,
        "tls-1.1": r.tls11,
        "tls-1.2": r.tls12,
        "tls-1.3": r.tls13,
        "messages": r.messages,
    })
}

fn auth_client_json(r: &moat_proto::AuthClientRow) -> Value {
    let share = |n: u64| {
        tables::percent(n, r.messages)
            .parse::<f64>()
            .unwrap_or_default()
    };
    json!({
        "day": r.day,
        "tenant": r.tenant,
        "user": r.user,
        "no-tls": r.no_tls,
        "tls-1.0": r.tls10,
        "tls-1.1": r.tls11,
        "tls-1.2": r.tls12,
        "tls-1.3": r.tls13,
        "messages": r.messages,
        "percent": {
            "no-tls": share(r.no_tls),
            "tls-1.0": share(r.tls10),
            "tls-1.1": share(r.tls11),
            "tls-1.2": share(r.tls12),
            "tls-1.3": share(r.tls13),
        },
    })
}

fn non_accepted_json(r: &moat_proto::NonAcceptedDomainRow) -> Value {
    json!({
        "day": r.day,
        "tenant": r.tenant,
        "connector": r.connector,
        "domain": r.domain,
        "messages": r.messages,
        "sample-message-ids": r.sample_message_ids,
    })
}

pub(super) fn tls_usage_json(u: &moat_proto::TlsUsage) -> Value {
    json!({
        "day": u.day,
        "tenant": u.tenant,
        "listener": u.listener,
        "version": u.version,
        "cipher": u.cipher,
        "sessions": u.sessions,
        "messages": u.messages,
    })
}

pub(super) fn legacy_client_json(c: &moat_proto::LegacyClient) -> Value {
    json!({
        "day": c.day,
        "tenant": c.tenant,
        "client-ip": c.client_ip,
        "user": c.user,
        "version": c.version,
        "sessions": c.sessions,
        "messages": c.messages,
    })
}

pub(super) fn tls_report_json(r: &ReadReply) -> Value {
    json!({
        "usage": r.tls_usage.iter().map(tls_usage_json).collect::<Vec<_>>(),
        "legacy-clients": r.legacy_clients.iter().map(legacy_client_json).collect::<Vec<_>>(),
    })
}

/// The TLS report as text: the usage table, then the clients still on TLS 1.0/1.1.
pub(super) fn render_tls_report(r: &ReadReply) -> String {
    let mut out = String::new();
    let usage = tables::tls_usage(r);
    if usage.rows.is_empty() {
        out.push_str("No TLS sessions recorded.\n");
    } else {
        out.push_str(&render_report(&usage));
    }
    out.push_str("\nClients on TLS 1.0/1.1:\n");
    let legacy = tables::legacy_clients(r);
    if legacy.rows.is_empty() {
        out.push_str("No legacy TLS clients.\n");
    } else {
        out.push_str(&render_report(&legacy));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{parse, Resource};
    use super::*;

    #[test]
    fn tls_report_renders_both_tables_and_kebab_case_json() {
        let mut r = ReadReply {
            tls_usage: vec![moat_proto::TlsUsage {
                day: "2026-11-02".into(),
                tenant: "contoso.com".into(),
                listener: "submission".into(),
                version: "TLSv1.3".into(),
                cipher: "TLS13_AES_128_GCM_SHA256".into(),
                sessions: 12,
                messages: 30,
            }],
            legacy_clients: vec![moat_proto::LegacyClient {
                day: "2026-11-02".into(),
                tenant: "contoso.com".into(),
                client_ip: "192.0.2.7".into(),
                user: String::new(),
                version: "TLSv1".into(),
                sessions: 2,
                messages: 1,
            }],
            ..Default::default()
        };
        assert_eq!(
            tls_usage_json(&r.tls_usage[0]),
            json!({
                "day": "2026-11-02",
                "tenant": "contoso.com",
                "listener": "submission",
                "version": "TLSv1.3",
                "cipher": "TLS13_AES_128_GCM_SHA256",
                "sessions": 12,
                "messages": 30,
            })
        );
        assert_eq!(
            tls_report_json(&r),
            json!({
                "usage": [tls_usage_json(&r.tls_usage[0])],
                "legacy-clients": [{
                    "day": "2026-11-02",
                    "tenant": "contoso.com",
                    "client-ip": "192.0.2.7",
                    "user": "",
                    "version": "TLSv1",
                    "sessions": 2,
                    "messages": 1,
                }],
            })
        );
        let text = render_tls_report(&r);
        assert!(text.starts_with(
            "DAY         TENANT       LISTENER    VERSION  CIPHER                    SESSIONS  MESSAGES\n"
        ), "{text}");
        assert!(
            text.contains(
                "\n\nClients on TLS 1.0/1.1:\n\
             DAY         TENANT       CLIENT-IP  USER    VERSION  SESSIONS  MESSAGES\n\
             2026-11-02  contoso.com  192.0.2.7  <none>  TLSv1    2         1\n"
            ),
            "{text}"
        );
        r.legacy_clients.clear();
        assert!(render_tls_report(&r)
            .ends_with("\n\nClients on TLS 1.0/1.1:\nNo legacy TLS clients.\n"));
    }

    #[test]
    fn report_commands_parse() {
        match parse(&["report", "tls"]).unwrap().command {
            Resource::Report(ReportCmd::Tls { tenant, days }) => {
                assert_eq!(tenant, None);
                assert_eq!(days, 7);
            }
            other => panic!("{other:?}"),
        }
        match parse(&["report", "tls", "--tenant", "t", "--days", "30"])
            .unwrap()
            .command
        {
            Resource::Report(ReportCmd::Tls { tenant, days }) => {
                assert_eq!(tenant.as_deref(), Some("t"));
                assert_eq!(days, 30);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["report", "tls", "--days", "0"]).is_err());
        assert!(parse(&["report", "onprem-servers", "--tenant", "t"]).is_ok());
        for name in ["inbound", "auth-clients", "non-accepted-domains"] {
            match parse(&["report", name]).unwrap().command {
                Resource::Report(
                    ReportCmd::Inbound(a)
                    | ReportCmd::AuthClients(a)
                    | ReportCmd::NonAcceptedDomains(a),
                ) => {
                    assert_eq!((a.tenant, a.days), (None, 7), "{name}");
                }
                other => panic!("{other:?}"),
            }
            assert!(parse(&["report", name, "--tenant", "t", "--days", "90", "-o", "csv"]).is_ok());
            assert!(parse(&["report", name, "--days", "91"]).is_err(), "{name}");
            assert!(parse(&["report", name, "--days", "0"]).is_err(), "{name}");
        }
        assert!(parse(&["report", "legacy-clients", "-o", "csv"]).is_ok());
    }

    #[test]
    fn report_tables_render_with_kubectl_headings_and_none_for_empty() {
        let r = ReadReply {
            inbound_report: vec![moat_proto::InboundReportRow {
                day: "2026-12-01".into(),
                tenant: "example.test".into(),
                connector: "other".into(),
                tls13: 2,
                messages: 2,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            render_report(&tables::inbound(&r)),
            "DAY         TENANT        CONNECTOR  TYPE    TLS-FORCED  NO-TLS  TLS-1.0  TLS-1.1  TLS-1.2  TLS-1.3  MESSAGES\n\
             2026-12-01  example.test  other      <none>  no          0       0        0        0        2        2\n"
        );
    }
}
