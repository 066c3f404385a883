//! `moat admin onprem`: out-of-date on-premises Exchange servers: the baseline, the stages, pauses,
//! exemptions of single servers, the servers with their evidence, and the rows of the
//! on-premises server report.

use moat_proto::write_request::Op;
use moat_proto::ReadKind;
use serde_json::{json, Value};

use super::render::{cell, fmt_time, out, print_json, render_table};
use super::{Ctx, Output};
use crate::client::Failure;

#[derive(clap::Subcommand, Debug)]
pub(super) enum OnpremCmd {
    /// The baseline: the oldest acceptable build of each line.
    #[command(subcommand)]
    Baseline(BaselineCmd),
    /// The stage table and the service name in replies.
    #[command(subcommand)]
    Policy(OnpremPolicyCmd),
    /// Pause throttling and blocking of a tenant's servers (up to 90 days per calendar year,
    /// in one or more pauses); the servers resume at the stage they reached.
    Pause {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// How many days, from now.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=90))]
        days: u32,
        /// Why (kept in the audit log).
        #[arg(long, value_name = "TEXT", default_value = "")]
        reason: String,
    },
    /// A tenant's pauses and what is left of this year's budget.
    Pauses {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
    /// Exempt one server of a tenant: it stays in the report and walks its stages, but its
    /// mail is never throttled or blocked (for a server whose stamp is wrong, e.g. pickup-folder
    /// mail carrying an old build). Audited; `unexempt` ends it.
    Exempt {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The server's FQDN, as `moat admin onprem servers` shows it.
        server: String,
        /// Why (required; shown in the server list and kept in the audit log).
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// End a server's exemption: it is throttled or blocked again at the stage it reached.
    Unexempt {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The server's FQDN.
        server: String,
    },
    /// The servers seen, with their evidence: the `Received:` line the build came from, when
    /// first and last seen, through which connector, and any exemption with its reason.
    Servers {
        /// Only this tenant's servers (required for tenant admins).
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub(super) enum BaselineCmd {
    /// Show the baseline.
    Show,
    /// Replace the baseline (every known server is judged again at once).
    Set {
        /// Builds such as `15.1.2507.61` (short form) or `15.01.2507.061` (long form).
        #[arg(required = true, value_name = "BUILD")]
        builds: Vec<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub(super) enum OnpremPolicyCmd {
    /// Show the stage table and the service name; each cell says whether a public source
    /// confirms it or it is an operator's choice.
    Show,
    /// Change the stage table or the service name.
    #[command(group(clap::ArgGroup::new("what").required(true).multiple(true)
        .args(["stages", "service_name", "scope"])))]
    Set {
        /// `FROM-DAY:THROTTLE:BLOCK,...` in stage order, e.g. the default
        /// `0:0:0,30:5:0,40:10:0,50:20:0,60:30:5,70:0:10,80:0:20,90:0:60`.
        #[arg(long, value_name = "TABLE")]
        stages: Option<String>,
        /// The service named in `4.7.230` / `5.7.230` replies.
        #[arg(long, value_name = "NAME")]
        service_name: Option<String>,
        /// Whose Received stamps are judged: mail through OnPremises connectors only, or
        /// through every connector.
        #[arg(long, value_parser = ["onpremises", "all-connectors"])]
        scope: Option<String>,
    },
}

impl Ctx {
    pub(super) async fn onprem(&self, cmd: OnpremCmd) -> Result<(), Failure> {
        match cmd {
            OnpremCmd::Baseline(BaselineCmd::Show) => {
                let reply = self.read(ReadKind::OnpremPolicy, None, None).await?;
                let p = reply.onprem_policy.unwrap_or_default();
                let catalog = moat_shared::exchange::catalog(moat_shared::exchange::CATALOG_CSV);
                let rows: Vec<(String, String, String)> = p
                    .baseline
                    .iter()
                    .map(|b| {
                        let entry = moat_shared::exchange::Build::parse(b)
                            .and_then(|build| catalog.iter().find(|e| e.build == build));
                        (
                            b.clone(),
                            entry.map_or("-".into(), |e| e.product.clone()),
                            entry.map_or("-".into(), |e| e.update.clone()),
                        )
                    })
                    .collect();
                self.list(
                    &["BUILD", "PRODUCT", "UPDATE"],
                    rows.iter()
                        .map(|(b, p, u)| vec![b.clone(), p.clone(), u.clone()])
                        .collect(),
                    rows.iter()
                        .map(|(b, p, u)| json!({"build": b, "product": p, "update": u}))
                        .collect(),
                );
                Ok(())
            }
            OnpremCmd::Baseline(BaselineCmd::Set { builds }) => {
                let builds = builds
                    .iter()
                    .map(|b| {
                        moat_shared::exchange::Build::parse(b)
                            .map(|b| b.to_string())
                            .ok_or_else(|| {
                                Failure::Usage(format!(
                                    "`{b}` is not an Exchange build (e.g. 15.1.2507.61)"
                                ))
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                self.write(Op::SetOnpremPolicy(moat_proto::OnpremPolicy {
                    baseline: builds,
                    ..Default::default()
                }))
                .await
            }
            OnpremCmd::Policy(OnpremPolicyCmd::Show) => {
                let reply = self.read(ReadKind::OnpremPolicy, None, None).await?;
                let p = reply.onprem_policy.unwrap_or_default();
                let stages = moat_shared::onprem::Schedule::parse(&p.stages).unwrap_or_default();
                let provenance = stages.provenance();
                let table = Table::of(&p.table);
                match self.output {
                    Output::Json => print_json(&json!({
                        "service": p.service,
                        "scope": p.scope,
                        "table": table.name(),
                        "source": {
                            "name": moat_shared::onprem::REFERENCE_SOURCE,
                            "url": moat_shared::onprem::REFERENCE_URL,
                        },
                        "stages": stages.0.iter().zip(&provenance).enumerate()
                            .map(|(i, (st, pv))| stage_json(i, st, pv, table))
                            .collect::<Vec<_>>(),
                    })),
                    Output::Table => {
                        let rows = stages
                            .0
                            .iter()
                            .zip(&provenance)
                            .enumerate()
                            .map(|(i, (st, pv))| stage_row(i, st, pv, table))
                            .collect::<Vec<_>>();
                        out(&format!("service name: {}", p.service));
                        out(&format!("scope: {}", p.scope));
                        out(&format!("table: {}", table.text()));
                        out(
                            render_table(&["STAGE", "FROM-DAY", "THROTTLE/HR", "BLOCK/HR"], &rows)
                                .trim_end(),
                        );
                        out(&format!(
                            "confirmed: the value a public source gives ({}, {}); {}: a value \
                             no source gives",
                            moat_shared::onprem::REFERENCE_SOURCE,
                            moat_shared::onprem::REFERENCE_URL,
                            table.unsourced()
                        ));
                    }
                }
                Ok(())
            }
            OnpremCmd::Policy(OnpremPolicyCmd::Set {
                stages,
                service_name,
                scope,
            }) => {
                if let Some(st) = &stages {
                    moat_shared::onprem::Schedule::parse(st)
                        .map_err(|e| Failure::Usage(format!("invalid --stages: {e}")))?;
                }
                self.write(Op::SetOnpremPolicy(moat_proto::OnpremPolicy {
                    baseline: Vec::new(),
                    stages: stages.unwrap_or_default(),
                    service: service_name.unwrap_or_default(),
                    scope: scope.unwrap_or_default(),
                    ..Default::default()
                }))
                .await
            }
            OnpremCmd::Pause {
                tenant,
                days,
                reason,
            } => {
                self.write(Op::PauseOnprem(moat_proto::OnpremPause {
                    tenant,
                    days,
                    reason,
                }))
                .await
            }
            OnpremCmd::Exempt {
                tenant,
                server,
                reason,
            } => {
                if reason.trim().is_empty() {
                    return Err(Failure::Usage("an exemption needs a --reason".into()));
                }
                self.write(Op::ExemptOnprem(moat_proto::OnpremExemption {
                    tenant,
                    server,
                    reason,
                }))
                .await
            }
            OnpremCmd::Unexempt { tenant, server } => {
                self.write(Op::UnexemptOnprem(moat_proto::OnpremExemption {
                    tenant,
                    server,
                    reason: String::new(),
                }))
                .await
            }
            OnpremCmd::Servers { tenant } => {
                self.list_pages(
                    ReadKind::OnpremServers,
                    tenant.as_deref(),
                    EVIDENCE_HEADERS,
                    |reply| {
                        let rows = reply.onprem_servers.iter().map(evidence_row).collect();
                        let objects = reply.onprem_servers.iter().map(onprem_json).collect();
                        (rows, objects)
                    },
                )
                .await?;
                Ok(())
            }
            OnpremCmd::Pauses { tenant } => {
                let reply = self
                    .read(ReadKind::OnpremPauses, Some(&tenant), None)
                    .await?;
                let p = reply.onprem_pauses.unwrap_or_default();
                let pauses: Vec<Value> = p
                    .pauses
                    .iter()
                    .map(|x| {
                        json!({
                            "start": fmt_time(x.start_ms),
                            "end": fmt_time(x.end_ms),
                            "days": x.days,
                            "actor": x.actor,
                            "reason": x.reason,
                        })
                    })
                    .collect();
                match self.output {
                    Output::Json => print_json(&json!({
                        "tenant": p.tenant,
                        "year": p.year,
                        "days-used": p.days_used,
                        "days-left": p.days_left,
                        "paused-until": (p.paused_until_ms != 0).then(|| fmt_time(p.paused_until_ms)),
                        "pauses": pauses,
                    })),
                    Output::Table => {
                        out(&format!(
                            "{}: {} of {} pause days used in {}, {} left{}",
                            p.tenant,
                            p.days_used,
                            p.days_used + p.days_left,
                            p.year,
                            p.days_left,
                            if p.paused_until_ms != 0 {
                                format!("; paused until {}", fmt_time(p.paused_until_ms))
                            } else {
                                String::new()
                            }
                        ));
                        let rows: Vec<Vec<String>> = p
                            .pauses
                            .iter()
                            .map(|x| {
                                vec![
                                    fmt_time(x.start_ms),
                                    fmt_time(x.end_ms),
                                    x.days.to_string(),
                                    cell(&x.actor),
                                    cell(&x.reason),
                                ]
                            })
                            .collect();
                        if !rows.is_empty() {
                            out(
                                render_table(&["START", "END", "DAYS", "BY", "REASON"], &rows)
                                    .trim_end(),
                            );
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

/// The columns of `moat admin onprem servers`.
pub(super) const EVIDENCE_HEADERS: &[&str] = &[
    "TENANT",
    "SERVER",
    "BUILD",
    "STATUS",
    "CONNECTOR",
    "FIRST-SEEN",
    "LAST-SEEN",
    "EXEMPT",
    "RECEIVED",
];

/// Which stage table the cluster applies, as `onprem policy show` reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Table {
    /// One an operator set.
    Custom,
    /// The best-sourced built-in table, adopted by the cluster.
    Reference,
    /// The previous release's built-in table (stages 6 and 7 also throttle 30 minutes an
    /// hour), in force until every control node runs this release and the cluster adopts the
    /// best-sourced one.
    PreviousDefault,
}

impl Table {
    /// From the reply's `table` (empty from a node of the release before, which applies its
    /// own built-in table).
    fn of(wire: &str) -> Self {
        match wire {
            "custom" => Self::Custom,
            "reference" => Self::Reference,
            _ => Self::PreviousDefault,
        }
    }

    /// Its name in `-o json`.
    fn name(self) -> &'static str {
        match self {
            Self::Custom => "custom",
            Self::Reference => "reference",
            Self::PreviousDefault => "previous-default",
        }
    }

    /// What the table output says of it.
    fn text(self) -> &'static str {
        match self {
            Self::Custom => "set by an operator",
            Self::Reference => {
                "built-in default, the best-sourced table (stages 6 and 7 block only)"
            }
            Self::PreviousDefault => {
                "built-in default of the previous release (stages 6 and 7 also throttle 30 \
                 minutes an hour), until every control node runs this release and the cluster \
                 adopts the best-sourced table"
            }
        }
    }

    /// How a cell no source gives is marked: the operator's choice, or in the previous
    /// release's table, that release's default.
    fn unsourced(self) -> &'static str {
        match self {
            Self::PreviousDefault => "previous release's default",
            Self::Custom | Self::Reference => moat_shared::onprem::Provenance::Unsourced.label(),
        }
    }

    /// The mark of a cell.
    fn label(self, p: moat_shared::onprem::Provenance) -> &'static str {
        match p {
            moat_shared::onprem::Provenance::Confirmed => p.label(),
            moat_shared::onprem::Provenance::Unsourced => self.unsourced(),
        }
    }
}

/// One row of `onprem policy show`: each cell with whether a source confirms it.
fn stage_row(
    i: usize,
    st: &moat_shared::onprem::Stage,
    pv: &moat_shared::onprem::StageProvenance,
    table: Table,
) -> Vec<String> {
    let marked =
        |v: String, p: moat_shared::onprem::Provenance| format!("{v} ({})", table.label(p));
    vec![
        (i + 1).to_string(),
        marked(st.from_day.to_string(), pv.from_day),
        marked(st.throttle.to_string(), pv.throttle),
        marked(st.block.to_string(), pv.block),
    ]
}

/// One stage of `onprem policy show -o json`: the values, and per cell `confirmed` or how a
/// value no source gives is marked ([`Table::unsourced`]).
fn stage_json(
    i: usize,
    st: &moat_shared::onprem::Stage,
    pv: &moat_shared::onprem::StageProvenance,
    table: Table,
) -> Value {
    json!({
        "stage": i + 1,
        "from-day": st.from_day,
        "throttle-minutes": st.throttle,
        "block-minutes": st.block,
        "provenance": {
            "from-day": table.label(pv.from_day),
            "throttle-minutes": table.label(pv.throttle),
            "block-minutes": table.label(pv.block),
        },
    })
}

/// One row of `moat admin onprem servers`: the server, where its build came from, and its
/// exemption (`by ACTOR: REASON`).
pub(super) fn evidence_row(r: &moat_proto::OnpremServerReport) -> Vec<String> {
    let t = |ms: i64| {
        if ms == 0 {
            "-".to_owned()
        } else {
            fmt_time(ms)
        }
    };
    vec![
        cell(&r.tenant),
        cell(&r.server),
        cell(&r.build),
        onprem_status(r).to_owned(),
        cell(&r.connector),
        t(r.first_seen_ms),
        t(r.last_seen_ms),
        if r.exempt {
            cell(&format!("by {}: {}", r.exempt_actor, r.exempt_reason))
        } else {
            "-".to_owned()
        },
        cell(&r.received),
    ]
}

/// What a report row amounts to (see [`moat_proto::report::onprem_status`]).
pub(super) fn onprem_status(r: &moat_proto::OnpremServerReport) -> &'static str {
    moat_proto::report::onprem_status(r)
}

pub(super) fn onprem_json(r: &moat_proto::OnpremServerReport) -> Value {
    let t = |ms: i64| (ms != 0).then(|| fmt_time(ms));
    json!({
        "tenant": r.tenant,
        "server": r.server,
        "build": r.build,
        "product": r.product,
        "class": r.class,
        "status": onprem_status(r),
        "connector": r.connector,
        "first-detected": t(r.first_detected_ms),
        "first-detected-ms": r.first_detected_ms,
        "stage": r.stage,
        "throttle-minutes": r.throttle,
        "block-minutes": r.block,
        "throttle-enabled": t(r.throttle_enabled_ms),
        "blocking-enabled": t(r.blocking_enabled_ms),
        "next-stage": (r.next_stage != 0).then_some(r.next_stage),
        "next-stage-throttle-minutes": r.next_throttle,
        "next-stage-block-minutes": r.next_block,
        "next-stage-start": t(r.next_stage_ms),
        "recommended": r.recommended,
        "paused": r.paused,
        "paused-until": t(r.paused_until_ms),
        "remediated": t(r.remediated_ms),
        "last-seen": t(r.last_seen_ms),
        "first-seen": t(r.first_seen_ms),
        "messages": r.messages,
        "received": (!r.received.is_empty()).then_some(&r.received),
        "exempt": r.exempt,
        "exempt-reason": r.exempt.then_some(&r.exempt_reason),
        "exempt-by": r.exempt.then_some(&r.exempt_actor),
        "exempt-since": t(r.exempt_at_ms),
    })
}

#[cfg(test)]
mod tests {

    use super::super::parse;

    #[test]
    fn onprem_commands_parse() {
        assert!(parse(&["onprem", "baseline", "show"]).is_ok());
        assert!(parse(&["onprem", "baseline", "set"]).is_err());
        assert!(parse(&["onprem", "baseline", "set", "15.1.2507.61"]).is_ok());
        assert!(parse(&["onprem", "policy", "set"]).is_err());
        assert!(parse(&["onprem", "policy", "set", "--scope", "everything"]).is_err());
        assert!(parse(&["onprem", "policy", "set", "--service-name", "Contoso"]).is_ok());
        assert!(parse(&["onprem", "pause", "--tenant", "t", "--days", "91"]).is_err());
        assert!(parse(&["onprem", "pause", "--tenant", "t", "--days", "0"]).is_err());
        assert!(parse(&["onprem", "pause", "--tenant", "t", "--days", "30"]).is_ok());
        assert!(parse(&["onprem", "pauses", "--tenant", "t"]).is_ok());
        assert!(parse(&["onprem", "exempt", "--tenant", "t", "exch1.corp"]).is_err());
        assert!(parse(&[
            "onprem",
            "exempt",
            "--tenant",
            "t",
            "exch1.corp",
            "--reason",
            "r"
        ])
        .is_ok());
        assert!(parse(&["onprem", "unexempt", "--tenant", "t", "exch1.corp"]).is_ok());
        assert!(parse(&["onprem", "servers"]).is_ok());
        assert!(parse(&["onprem", "servers", "--tenant", "t"]).is_ok());
    }

    /// Until the cluster adopts the best-sourced table, the previous release's built-in one is
    /// in force: its 30 throttled minutes of stages 6 and 7 are not confirmed, and not an
    /// operator's choice either.
    #[test]
    fn policy_show_names_the_previous_default_until_adopted() {
        use super::Table;
        use moat_shared::onprem::Schedule;
        assert_eq!(
            Table::of(""),
            Table::PreviousDefault,
            "a node of the release before"
        );
        for t in [Table::Custom, Table::Reference, Table::PreviousDefault] {
            assert_eq!(Table::of(t.name()), t);
        }
        let old = Schedule::previous_default();
        let pv = old.provenance();
        let t = Table::PreviousDefault;
        assert_eq!(
            super::stage_row(5, &old.0[5], &pv[5], t),
            [
                "6",
                "70 (confirmed)",
                "30 (previous release's default)",
                "10 (confirmed)"
            ]
        );
        let v = super::stage_json(6, &old.0[6], &pv[6], t);
        assert_eq!(v["throttle-minutes"], 30);
        assert_eq!(
            v["provenance"]["throttle-minutes"],
            "previous release's default"
        );
        assert_eq!(v["provenance"]["block-minutes"], "confirmed");
        assert!(t.text().contains("previous release"), "{}", t.text());
        assert!(Table::Reference.text().contains("best-sourced"));
    }

    /// Each cell of the stage table says whether a source confirms it: the default table is
    /// confirmed throughout; the pre-issue-18 throttling of stages 6 and 7 is not.
    #[test]
    fn policy_show_marks_each_cell() {
        use moat_shared::onprem::Schedule;
        let old = Schedule::parse("0:0:0,30:5:0,40:10:0,50:20:0,60:30:5,70:30:10,80:30:20,90:0:60")
            .unwrap();
        let pv = old.provenance();
        assert_eq!(
            super::stage_row(5, &old.0[5], &pv[5], super::Table::Custom),
            [
                "6",
                "70 (confirmed)",
                "30 (operator's choice)",
                "10 (confirmed)"
            ]
        );
        let v = super::stage_json(5, &old.0[5], &pv[5], super::Table::Custom);
        assert_eq!(v["throttle-minutes"], 30);
        assert_eq!(v["provenance"]["throttle-minutes"], "operator's choice");
        assert_eq!(v["provenance"]["block-minutes"], "confirmed");
        let new = Schedule::default();
        let pv = new.provenance();
        for (i, st) in new.0.iter().enumerate() {
            let row = super::stage_row(i, st, &pv[i], super::Table::Reference);
            assert!(
                row[1..].iter().all(|c| c.ends_with("(confirmed)")),
                "{row:?}"
            );
        }
        assert_eq!(
            super::stage_row(6, &new.0[6], &pv[6], super::Table::Reference),
            ["7", "80 (confirmed)", "0 (confirmed)", "20 (confirmed)"]
        );
    }
}
