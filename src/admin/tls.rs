//! `moat admin tls`: legacy TLS (1.0/1.1) controls, the speed-bump schedule; the TLS session
//! ticket keys edges share (shown by id, never by their bytes).

use moat_proto::write_request::Op;
use moat_proto::ReadKind;
use moat_shared::time::day_string;
use serde_json::json;

use super::render::{cell, fmt_time};
use super::Ctx;
use crate::client::Failure;

#[derive(clap::Subcommand, Debug)]
pub(super) enum TlsCmd {
    /// The speed bump: from given dates on, refuse a share of TLS 1.0/1.1 sessions.
    #[command(subcommand)]
    SpeedBump(SpeedBumpCmd),
    /// The session ticket keys edges share, so a client resumes TLS on any edge.
    #[command(subcommand)]
    Tickets(TicketsCmd),
}

#[derive(clap::Subcommand, Debug)]
pub(super) enum TicketsCmd {
    /// List the keys: id, creation time, role (issuing or accepting); never the key itself.
    Show,
    /// Rotate now (operator only): a new key issues, the current one is still accepted, the
    /// one before it is dropped, so its tickets no longer resume.
    Rotate,
}

#[derive(clap::Subcommand, Debug)]
pub(super) enum SpeedBumpCmd {
    /// Show the schedule.
    Get,
    /// Replace the schedule.
    Set {
        /// A step `YYYY-MM-DD=PERCENT` (UTC; e.g. `2026-12-01=30` or `2026-12-01=30%`): from
        /// that day on, that share of legacy sessions is refused; repeat for more.
        #[arg(required = true, value_name = "STEP")]
        steps: Vec<String>,
    },
    /// Remove the schedule (no legacy session is refused for it).
    Clear,
}

impl Ctx {
    pub(super) async fn tickets(&self, cmd: TicketsCmd) -> Result<(), Failure> {
        match cmd {
            TicketsCmd::Rotate => {
                self.write(Op::RotateTicketKeys(moat_proto::RotateTicketKeys {}))
                    .await
            }
            TicketsCmd::Show => {
                let reply = self.read(ReadKind::TicketKeys, None, None).await?;
                let every = reply.ticket_rotate_every_ms;
                let rows = reply
                    .ticket_keys
                    .iter()
                    .map(|k| vec![cell(&k.id), fmt_time(k.created_ms), cell(&k.role)])
                    .collect();
                let objects = reply
                    .ticket_keys
                    .iter()
                    .map(|k| {
                        json!({
                            "id": k.id,
                            "created_ms": k.created_ms,
                            "role": k.role,
                            "rotate_every_ms": every,
                        })
                    })
                    .collect();
                self.list(&["ID", "CREATED", "ROLE"], rows, objects);
                Ok(())
            }
        }
    }

    pub(super) async fn speed_bump(&self, cmd: SpeedBumpCmd) -> Result<(), Failure> {
        let steps = match cmd {
            SpeedBumpCmd::Get => {
                let reply = self.read(ReadKind::SpeedBump, None, None).await?;
                let rows = reply
                    .speed_bump
                    .iter()
                    .map(|s| vec![cell(&s.date), s.percent.to_string()])
                    .collect();
                let objects = reply
                    .speed_bump
                    .iter()
                    .map(|s| json!({"date": s.date, "percent": s.percent}))
                    .collect();
                self.list(&["DATE", "PERCENT"], rows, objects);
                return Ok(());
            }
            SpeedBumpCmd::Set { steps } => speed_bump_steps(&steps)?,
            SpeedBumpCmd::Clear => vec![],
        };
        self.write(Op::SetSpeedBump(moat_proto::SpeedBump { steps }))
            .await
    }
}

/// Parses `YYYY-MM-DD=PERCENT` steps into the wire schedule, ordered by date.
pub(super) fn speed_bump_steps(raw: &[String]) -> Result<Vec<moat_proto::SpeedBumpStep>, Failure> {
    let steps = raw
        .iter()
        .map(|text| {
            moat_shared::SpeedBumpStep::parse(text).map_err(|e| {
                Failure::Usage(format!(
                    "invalid speed-bump step `{text}`: {e} (expected YYYY-MM-DD=PERCENT, \
                     e.g. 2026-12-01=30)"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let steps = moat_shared::submission::normalise_schedule(steps)
        .map_err(|e| Failure::Usage(format!("invalid speed-bump schedule: {e}")))?;
    Ok(steps
        .iter()
        .map(|s| moat_proto::SpeedBumpStep {
            date: day_string(s.day),
            percent: u32::from(s.percent),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::super::{check_local, parse, Resource};
    use super::*;

    #[test]
    fn speed_bump_steps_are_checked_locally() {
        let steps = speed_bump_steps(&["2026-12-01=30%".into(), "2026-11-01=5".into()]).unwrap();
        assert_eq!(
            steps,
            vec![
                moat_proto::SpeedBumpStep {
                    date: "2026-11-01".into(),
                    percent: 5,
                },
                moat_proto::SpeedBumpStep {
                    date: "2026-12-01".into(),
                    percent: 30,
                },
            ]
        );
        for bad in ["2026-11-31=1", "2026-11-01=101", "2026-11-01", "tomorrow=5"] {
            let err = speed_bump_steps(&["2026-10-01=1".into(), bad.into()]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
        let dup = speed_bump_steps(&["2026-11-01=5".into(), "2026-11-01=10".into()]).unwrap_err();
        assert_eq!(dup.exit_code(), 2);
        assert!(dup.to_string().contains("2026-11-01"), "{dup}");
        let cmd = parse(&["tls", "speed-bump", "set", "2026-02-30=5"])
            .unwrap()
            .command;
        assert_eq!(check_local(&cmd).unwrap_err().exit_code(), 2);
        assert!(speed_bump_steps(&[]).unwrap().is_empty());
    }

    #[test]
    fn speed_bump_commands_parse() {
        let a = parse(&["tls", "speed-bump", "set", "2026-11-01=5", "2026-12-01=30%"]).unwrap();
        match a.command {
            Resource::Tls(TlsCmd::SpeedBump(SpeedBumpCmd::Set { steps })) => {
                assert_eq!(steps, vec!["2026-11-01=5", "2026-12-01=30%"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["tls", "speed-bump", "set"]).is_err());
        assert!(parse(&["tls", "speed-bump", "get", "-o", "json"]).is_ok());
        assert!(parse(&["tls", "speed-bump", "clear"]).is_ok());
        assert!(matches!(
            parse(&["tls", "tickets", "rotate"]).unwrap().command,
            Resource::Tls(TlsCmd::Tickets(TicketsCmd::Rotate))
        ));
        assert!(parse(&["tls", "tickets", "show", "-o", "json"]).is_ok());
        assert!(parse(&["tls", "tickets"]).is_err());
    }
}
