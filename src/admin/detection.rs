//! `moat admin detection`: how the control plane judges connectors (suspicious-activity detection).

use moat_proto::ReadKind;
use std::time::Duration;

use moat_proto::write_request::Op;
use serde_json::{json, Value};

use super::Ctx;
use crate::client::Failure;

#[derive(clap::Subcommand, Debug)]
pub(super) enum DetectionCmd {
    /// Show the default settings and tenants' own.
    Get {
        /// Only this tenant's (and the default).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Change the default settings, or a tenant's with --tenant; settings not given keep their
    /// current value.
    Set {
        /// The tenant; without it, the cluster default (operators only).
        #[arg(long)]
        tenant: Option<String>,
        /// Length of one window (e.g. 1h, 5m, 2s).
        #[arg(long, value_parser = moat_edge::config::parse_duration)]
        interval: Option<Duration>,
        /// Windows a new connector is observed before its volume is judged.
        #[arg(long, value_name = "N")]
        warmup: Option<u32>,
        /// A window with this many times the baseline is a spike.
        #[arg(long, value_name = "N")]
        spike_factor: Option<u32>,
        /// Fewest messages in a window for any detector to fire.
        #[arg(long, value_name = "N")]
        min_messages: Option<u64>,
        /// Percent of messages from domains the tenant does not own that is suspicious.
        #[arg(long, value_name = "PERCENT")]
        unprovisioned_percent: Option<u32>,
        /// Percent of messages whose header From differs from MAIL FROM that is suspicious.
        #[arg(long, value_name = "PERCENT")]
        mismatch_percent: Option<u32>,
        /// Percent of checked messages failing DMARC that is suspicious.
        #[arg(long, value_name = "PERCENT")]
        auth_fail_percent: Option<u32>,
    },
}

impl Ctx {
    pub(super) async fn detection(&self, cmd: DetectionCmd) -> Result<(), Failure> {
        match cmd {
            DetectionCmd::Get { tenant } => {
                let reply = self
                    .read(ReadKind::Detection, tenant.as_deref(), None)
                    .await?;
                let rows = reply.detection.iter().map(detection_row).collect();
                let objects = reply.detection.iter().map(detection_json).collect();
                self.list(DETECTION_HEADERS, rows, objects);
                Ok(())
            }
            DetectionCmd::Set {
                tenant,
                interval,
                warmup,
                spike_factor,
                min_messages,
                unprovisioned_percent,
                mismatch_percent,
                auth_fail_percent,
            } => {
                let reply = self
                    .read(ReadKind::Detection, tenant.as_deref(), None)
                    .await?;
                let want = tenant.clone().unwrap_or_default();
                let current = reply
                    .detection
                    .iter()
                    .find(|d| d.tenant == want)
                    .or_else(|| reply.detection.iter().find(|d| d.tenant.is_empty()))
                    .cloned()
                    .unwrap_or_default();
                let policy = moat_proto::DetectionPolicy {
                    tenant: want,
                    interval_ms: interval.map_or(current.interval_ms, |d| {
                        i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
                    }),
                    warmup_intervals: warmup.unwrap_or(current.warmup_intervals),
                    spike_factor: spike_factor.unwrap_or(current.spike_factor),
                    min_messages: min_messages.unwrap_or(current.min_messages),
                    unprovisioned_percent: unprovisioned_percent
                        .unwrap_or(current.unprovisioned_percent),
                    mismatch_percent: mismatch_percent.unwrap_or(current.mismatch_percent),
                    auth_fail_percent: auth_fail_percent.unwrap_or(current.auth_fail_percent),
                };
                self.write(Op::SetDetectionPolicy(policy)).await
            }
        }
    }
}

pub(super) const DETECTION_HEADERS: &[&str] = &[
    "TENANT",
    "INTERVAL",
    "WARM-UP",
    "SPIKE",
    "MIN-MESSAGES",
    "UNPROVISIONED%",
    "MISMATCH%",
    "DMARC-FAIL%",
];

pub(super) fn detection_row(d: &moat_proto::DetectionPolicy) -> Vec<String> {
    vec![
        if d.tenant.is_empty() {
            "(default)".into()
        } else {
            d.tenant.clone()
        },
        format!("{}s", d.interval_ms as f64 / 1000.0),
        d.warmup_intervals.to_string(),
        format!("x{}", d.spike_factor),
        d.min_messages.to_string(),
        d.unprovisioned_percent.to_string(),
        d.mismatch_percent.to_string(),
        d.auth_fail_percent.to_string(),
    ]
}

pub(super) fn detection_json(d: &moat_proto::DetectionPolicy) -> Value {
    json!({
        "tenant": if d.tenant.is_empty() { Value::Null } else { json!(d.tenant) },
        "interval-ms": d.interval_ms,
        "warmup-intervals": d.warmup_intervals,
        "spike-factor": d.spike_factor,
        "min-messages": d.min_messages,
        "unprovisioned-percent": d.unprovisioned_percent,
        "mismatch-percent": d.mismatch_percent,
        "auth-fail-percent": d.auth_fail_percent,
    })
}
