//! `moat admin dev`: development aids of a `moat dev` cluster (the cluster clock).

use moat_proto::write_request::Op;
use moat_proto::ReadKind;
use serde_json::json;

use super::render::{fmt_time, out, print_json};
use super::{Ctx, Output};
use crate::client::Failure;

#[derive(clap::Subcommand, Debug)]
pub(super) enum DevCmd {
    /// The cluster clock, which a `moat dev` cluster lets you move ahead to try out
    /// day-based policies (the on-premises server life cycle).
    #[command(subcommand)]
    Clock(ClockCmd),
}

#[derive(clap::Subcommand, Debug)]
pub(super) enum ClockCmd {
    /// Show the cluster clock and its offset from the wall clock.
    Show,
    /// Move the cluster clock forward (never back).
    #[command(group(clap::ArgGroup::new("when").required(true).args(["days", "at"])))]
    Set {
        /// Move it this many days ahead of where it is.
        #[arg(long, value_name = "N")]
        days: Option<u32>,
        /// Move it to this UTC time, `YYYY-MM-DDTHH:MM:SSZ`.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
    },
}

impl Ctx {
    pub(super) async fn dev(&self, cmd: DevCmd) -> Result<(), Failure> {
        let DevCmd::Clock(cmd) = cmd;
        let reply = self.read(ReadKind::Clock, None, None).await?;
        match cmd {
            ClockCmd::Show => {
                match self.output {
                    Output::Json => print_json(&json!({
                        "cluster-time": fmt_time(reply.cluster_now_ms),
                        "cluster-now-ms": reply.cluster_now_ms,
                        "offset-ms": reply.clock_offset_ms,
                    })),
                    Output::Table => out(&format!(
                        "cluster time {} ({:.3} days ahead of the wall clock)",
                        fmt_time(reply.cluster_now_ms),
                        reply.clock_offset_ms as f64 / 86_400_000.0
                    )),
                }
                Ok(())
            }
            ClockCmd::Set { days, at } => {
                let target = match (days, at) {
                    (Some(d), _) => reply.cluster_now_ms + i64::from(d) * 86_400_000,
                    (None, Some(at)) => parse_time(&at).ok_or_else(|| {
                        Failure::Usage(format!("`{at}` is not a time like 2027-01-05T10:17:05Z"))
                    })?,
                    (None, None) => return Err(Failure::Usage("give --days or --at".into())),
                };
                self.write(Op::SetClock(target)).await
            }
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (or without seconds) as Unix milliseconds.
pub(super) fn parse_time(text: &str) -> Option<i64> {
    let text = text.trim().strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let day = moat_shared::time::parse_day(date)?;
    let mut parts = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m) = (parts.next()??, parts.next()??);
    let sec = parts.next().map_or(Some(0), |s| s)?;
    if parts.next().is_some() || h > 23 || m > 59 || sec > 59 || h < 0 || m < 0 || sec < 0 {
        return None;
    }
    Some(((day * 86_400) + h * 3600 + m * 60 + sec) * 1000)
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    #[test]
    fn clock_commands_and_times_parse() {
        assert!(parse(&["dev", "clock", "set"]).is_err());
        assert!(parse(&["dev", "clock", "set", "--days", "3", "--at", "x"]).is_err());
        assert_eq!(
            parse_time("2027-01-05T10:17:05Z"),
            Some(moat_shared::time::days_from_civil(2027, 1, 5) * 86_400_000 + 37_025_000)
        );
        assert_eq!(parse_time("2027-01-05T24:00Z"), None);
        assert_eq!(parse_time("2027-01-05 10:00Z"), None);
    }
}
