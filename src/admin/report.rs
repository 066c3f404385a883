//! `moat admin report`: reports built from what edges observed (TLS usage, legacy TLS clients,
//! on-premises servers).

use moat_proto::ReadKind;
use moat_proto::ReadReply;
use serde_json::{json, Value};

use super::onprem::{onprem_json, onprem_row, ONPREM_HEADERS};
use super::render::{cell, out, print_json, render_table};
use super::{Ctx, Output};
use crate::client::Failure;

#[derive(clap::Subcommand, Debug)]
pub(super) enum ReportCmd {
    /// TLS versions and ciphers in use, and the clients still on TLS 1.0/1.1.
    Tls {
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
}

impl Ctx {
    pub(super) async fn report(&self, cmd: ReportCmd) -> Result<(), Failure> {
        match cmd {
            ReportCmd::Tls { tenant, days } => {
                let mut req = self.read_req(ReadKind::TlsReport, tenant.as_deref(), None);
                req.days = days;
                let reply = self.client.read(req).await?;
                match self.output {
                    Output::Json => print_json(&tls_report_json(&reply)),
                    Output::Table => out(render_tls_report(&reply).trim_end()),
                }
                Ok(())
            }
            ReportCmd::OnpremServers { tenant } => {
                self.list_pages(
                    ReadKind::OnpremServers,
                    tenant.as_deref(),
                    ONPREM_HEADERS,
                    |reply| {
                        let rows = reply.onprem_servers.iter().map(onprem_row).collect();
                        let objects = reply.onprem_servers.iter().map(onprem_json).collect();
                        (rows, objects)
                    },
                )
                .await?;
                Ok(())
            }
        }
    }
}

pub(super) const TLS_USAGE_HEADERS: &[&str] = &[
    "DAY", "TENANT", "LISTENER", "VERSION", "CIPHER", "SESSIONS", "MESSAGES",
];

pub(super) fn tls_usage_row(u: &moat_proto::TlsUsage) -> Vec<String> {
    vec![
        cell(&u.day),
        cell(&u.tenant),
        cell(&u.listener),
        cell(&u.version),
        cell(&u.cipher),
        u.sessions.to_string(),
        u.messages.to_string(),
    ]
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

pub(super) const LEGACY_CLIENT_HEADERS: &[&str] = &[
    "DAY",
    "TENANT",
    "CLIENT-IP",
    "USER",
    "VERSION",
    "SESSIONS",
    "MESSAGES",
];

pub(super) fn legacy_client_row(c: &moat_proto::LegacyClient) -> Vec<String> {
    vec![
        cell(&c.day),
        cell(&c.tenant),
        cell(&c.client_ip),
        cell(&c.user),
        cell(&c.version),
        c.sessions.to_string(),
        c.messages.to_string(),
    ]
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
    if r.tls_usage.is_empty() {
        out.push_str("No TLS sessions recorded.\n");
    } else {
        let rows: Vec<Vec<String>> = r.tls_usage.iter().map(tls_usage_row).collect();
        out.push_str(&render_table(TLS_USAGE_HEADERS, &rows));
    }
    out.push_str("\nClients on TLS 1.0/1.1:\n");
    if r.legacy_clients.is_empty() {
        out.push_str("No legacy TLS clients.\n");
    } else {
        let rows: Vec<Vec<String>> = r.legacy_clients.iter().map(legacy_client_row).collect();
        out.push_str(&render_table(LEGACY_CLIENT_HEADERS, &rows));
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
    }
}
