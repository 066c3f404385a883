//! `moat admin outbound-policy`: per-tenant sending limits of SMTP AUTH users.

use moat_proto::write_request::Op;
use moat_proto::ReadKind;
use serde_json::{json, Value};

use super::render::cell;
use super::Ctx;
use crate::client::Failure;

/// The actions `outbound-policy set --action` accepts.
pub(super) const OUTBOUND_ACTIONS: [&str; 3] = ["block-for-today", "block", "alert-only"];

#[derive(clap::Subcommand, Debug)]
pub(super) enum OutboundPolicyCmd {
    /// Show tenants' sending limits.
    Get {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Change a tenant's sending limits; limits not given keep their current value, and 0
    /// restores the default.
    #[command(group(clap::ArgGroup::new("limits").required(true).multiple(true)
        .args(["recipients_per_hour", "recipients_per_day", "action"])))]
    Set {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Recipients a user may send to per hour (0: the default).
        #[arg(long, value_name = "N")]
        recipients_per_hour: Option<u32>,
        /// Recipients a user may send to per UTC day (0: the default).
        #[arg(long, value_name = "N")]
        recipients_per_day: Option<u32>,
        /// What happens to a user over a limit.
        #[arg(long, value_parser = OUTBOUND_ACTIONS)]
        action: Option<String>,
    },
}

impl Ctx {
    pub(super) async fn outbound_policy(&self, cmd: OutboundPolicyCmd) -> Result<(), Failure> {
        match cmd {
            OutboundPolicyCmd::Get { tenant: None } => {
                self.list_pages(ReadKind::OutboundPolicy, None, OUTBOUND_HEADERS, |reply| {
                    let rows = reply.outbound.iter().map(outbound_row).collect();
                    let objects = reply.outbound.iter().map(outbound_json).collect();
                    (rows, objects)
                })
                .await?;
                Ok(())
            }
            OutboundPolicyCmd::Get {
                tenant: Some(tenant),
            } => {
                let reply = self
                    .read(ReadKind::OutboundPolicy, Some(&tenant), None)
                    .await?;
                let p = find_outbound(&reply.outbound, &tenant)?;
                self.one(OUTBOUND_HEADERS, outbound_row(p), outbound_json(p));
                Ok(())
            }
            OutboundPolicyCmd::Set {
                tenant,
                recipients_per_hour,
                recipients_per_day,
                action,
            } => {
                // The wire message replaces all three limits: those not given keep their value.
                let all_given = recipients_per_hour.is_some()
                    && recipients_per_day.is_some()
                    && action.is_some();
                let current = if all_given {
                    None
                } else {
                    let reply = self
                        .read(ReadKind::OutboundPolicy, Some(&tenant), None)
                        .await?;
                    reply.outbound.into_iter().find(|p| p.tenant == tenant)
                };
                let policy = merge_outbound(
                    current,
                    recipients_per_hour,
                    recipients_per_day,
                    action,
                    tenant,
                );
                self.write(Op::SetOutboundPolicy(policy)).await
            }
        }
    }
}

/// A tenant's outbound policy with the limits given on the command line replacing those of
/// `current` (none: the defaults, 0/empty on the wire).
pub(super) fn merge_outbound(
    current: Option<moat_proto::OutboundPolicy>,
    recipients_per_hour: Option<u32>,
    recipients_per_day: Option<u32>,
    action: Option<String>,
    tenant: String,
) -> moat_proto::OutboundPolicy {
    let current = current.unwrap_or_default();
    moat_proto::OutboundPolicy {
        tenant,
        recipients_per_hour: recipients_per_hour.unwrap_or(current.recipients_per_hour),
        recipients_per_day: recipients_per_day.unwrap_or(current.recipients_per_day),
        action: action.unwrap_or(current.action),
    }
}

pub(super) fn find_outbound<'a>(
    policies: &'a [moat_proto::OutboundPolicy],
    tenant: &str,
) -> Result<&'a moat_proto::OutboundPolicy, Failure> {
    policies
        .iter()
        .find(|p| p.tenant == tenant)
        .ok_or_else(|| Failure::Refused(format!("tenant {tenant:?} not found")))
}

pub(super) const OUTBOUND_HEADERS: &[&str] =
    &["TENANT", "RECIPIENTS/HOUR", "RECIPIENTS/DAY", "ACTION"];

pub(super) fn outbound_row(p: &moat_proto::OutboundPolicy) -> Vec<String> {
    vec![
        cell(&p.tenant),
        p.recipients_per_hour.to_string(),
        p.recipients_per_day.to_string(),
        cell(&p.action),
    ]
}

pub(super) fn outbound_json(p: &moat_proto::OutboundPolicy) -> Value {
    json!({
        "tenant": p.tenant,
        "recipients-per-hour": p.recipients_per_hour,
        "recipients-per-day": p.recipients_per_day,
        "action": p.action,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{parse, Resource};
    use super::*;

    #[test]
    fn outbound_policy_renders() {
        let p = merge_outbound(
            Some(moat_proto::OutboundPolicy {
                tenant: "t".into(),
                recipients_per_hour: 500,
                recipients_per_day: 2000,
                action: "block-for-today".into(),
            }),
            None,
            Some(0),
            Some("alert-only".into()),
            "t".into(),
        );
        assert_eq!(p.recipients_per_hour, 500);
        assert_eq!(p.recipients_per_day, 0);
        assert_eq!(p.action, "alert-only");
        assert_eq!(
            merge_outbound(None, Some(5), None, None, "t".into()).action,
            ""
        );
        assert_eq!(
            outbound_json(&p),
            json!({"tenant": "t", "recipients-per-hour": 500, "recipients-per-day": 0,
                "action": "alert-only"})
        );
        assert_eq!(outbound_row(&p), vec!["t", "500", "0", "alert-only"]);
    }

    #[test]
    fn outbound_policy_commands_parse() {
        assert!(parse(&["outbound-policy", "get"]).is_ok());
        assert!(parse(&["outbound-policy", "get", "--tenant", "t"]).is_ok());
        let a = parse(&[
            "outbound-policy",
            "set",
            "--tenant",
            "t",
            "--recipients-per-hour",
            "100",
            "--action",
            "alert-only",
        ])
        .unwrap();
        match a.command {
            Resource::OutboundPolicy(OutboundPolicyCmd::Set {
                tenant,
                recipients_per_hour,
                recipients_per_day,
                action,
            }) => {
                assert_eq!(tenant, "t");
                assert_eq!(recipients_per_hour, Some(100));
                assert_eq!(recipients_per_day, None);
                assert_eq!(action.as_deref(), Some("alert-only"));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&[
            "outbound-policy",
            "set",
            "--tenant",
            "t",
            "--action",
            "drop"
        ])
        .is_err());
        // Nothing to change.
        assert!(parse(&["outbound-policy", "set", "--tenant", "t"]).is_err());
        assert!(parse(&["outbound-policy", "set", "--action", "block"]).is_err());
    }
}
