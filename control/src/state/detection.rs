//! Detection of suspicious connector traffic: the settings (per tenant or the cluster
//! default), each connector's windows of counts and baseline, and the detectors, as the pure
//! [`judge`] over a connector's stats and settings. A detector that fires restricts the
//! connector and alerts its tenant's admins.

use std::collections::BTreeMap;

use moat_shared::signal::{self, ConnectorCounter};
use moat_shared::{ConnectorId, EntityKind, TenantId};
use serde::{Deserialize, Serialize};

use super::counters::add;
use super::error::{Kind, Rejection};
use super::tenants::Directory;
use super::{Restricted, State};

/// The detection part of the state: the settings and what is known of each connector's
/// traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detection {
    /// Detection settings: the cluster default under `*`, tenants' own under their id.
    #[serde(default, rename = "detection")]
    pub policies: BTreeMap<String, DetectionPolicy>,
    /// Traffic per connector.
    #[serde(default, rename = "connector_stats")]
    pub stats: BTreeMap<ConnectorId, ConnectorStats>,
}

/// How the control plane judges a connector (per tenant, or the cluster default).
///
/// The defaults follow the reference's advice that a new connector warms up and that volume is
/// judged against the connector's own history: a day of hourly intervals before the volume
/// detector counts, a spike only at ten times the usual hour, and at least 100 messages in the
/// hour for any detector, so that a quiet connector's handful of odd messages is no incident.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DetectionPolicy {
    /// Length of one window, in milliseconds (default one hour).
    pub interval_ms: i64,
    /// Windows a connector is observed before its volume is judged (default 24).
    pub warmup_intervals: u32,
    /// A window with this many times the baseline's messages is a spike (default 10).
    pub spike_factor: u32,
    /// Fewest messages in a window for any detector to fire (default 100).
    pub min_messages: u64,
    /// Percent of an OnPremises connector's messages from domains the tenant does not own that
    /// is suspicious (default 50).
    pub unprovisioned_percent: u32,
    /// Percent of an OnPremises connector's messages whose header From domain differs from
    /// MAIL FROM's that is suspicious (default 50).
    pub mismatch_percent: u32,
    /// Percent of a connector's checked messages that fail DMARC that is suspicious (default
    /// 50; edges count only with `[authentication] checks = true`).
    #[serde(default = "default_auth_fail_percent")]
    pub auth_fail_percent: u32,
}

fn default_auth_fail_percent() -> u32 {
    50
}

impl Default for DetectionPolicy {
    fn default() -> Self {
        Self {
            interval_ms: 3_600_000,
            warmup_intervals: 24,
            spike_factor: 10,
            min_messages: 100,
            unprovisioned_percent: 50,
            mismatch_percent: 50,
            auth_fail_percent: 50,
        }
    }
}

/// One window's counts of a connector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowCounts {
    /// Messages accepted.
    pub messages: u64,
    /// Of which with a MAIL FROM domain the tenant does not own.
    pub unprovisioned: u64,
    /// Of which with a header From domain other than MAIL FROM's.
    pub mismatch: u64,
    /// Relay recipients refused.
    pub relay_refused: u64,
    /// Messages checked for SPF/DKIM/DMARC.
    #[serde(default)]
    pub auth_checked: u64,
    /// Of which failing DMARC.
    #[serde(default)]
    pub auth_failed: u64,
}

/// What the control plane knows of a connector's traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorStats {
    /// When its first count arrived (entry time).
    pub first_seen_ms: i64,
    /// Start of the current window.
    pub window_start_ms: i64,
    /// The current window.
    pub current: WindowCounts,
    /// Windows closed so far.
    pub intervals: u32,
    /// Exponentially weighted moving average of messages per window (weight 1/5 for the newest
    /// window), in thousandths of a message: integer arithmetic, identical on every node.
    pub baseline_milli: u64,
    /// After an unblock, the detectors leave the connector alone until then (one window), so
    /// counts still in flight from before the unblock do not restrict it again at once.
    #[serde(default)]
    pub quiet_until_ms: i64,
}

/// What a detector found in a connector's window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The detector that fired: `authentication-failures`, `volume-spike`,
    /// `unprovisioned-domains` or `from-mismatch`.
    pub detector: &'static str,
    /// The window's figures, in words, for the restriction's reason and the alert.
    pub figures: String,
}

impl Finding {
    /// The restriction's reason: the detector and the figures.
    pub fn reason(&self) -> String {
        format!("{}: {}", self.detector, self.figures)
    }
}

/// Runs the detectors on a connector's current window at `now_ms`: whether, and why, it is to
/// be restricted. `onprem` says the connector is an OnPremises one (only those are judged on
/// the domains they send for). Nothing fires while the connector is quiet after an unblock,
/// below the policy's minimum of messages, or (volume) before its warm-up is over.
pub fn judge(
    st: &ConnectorStats,
    policy: &DetectionPolicy,
    onprem: bool,
    now_ms: i64,
) -> Option<Finding> {
    if now_ms < st.quiet_until_ms {
        return None;
    }
    let w = st.current;
    let auth_share = w.auth_failed * 100 / w.auth_checked.max(1);
    if w.messages < policy.min_messages && w.auth_checked < policy.min_messages {
        return None;
    }
    let baseline = st.baseline_milli.max(1000);
    let share = |n: u64| n * 100 / w.messages.max(1);
    let figures = format!(
        "{} messages this window, baseline {}.{:03} per window over {} windows, {}% unprovisioned MAIL FROM domains, {}% header From mismatches, {} relay refusals, {} of {} checked messages failing DMARC",
        w.messages,
        st.baseline_milli / 1000,
        st.baseline_milli % 1000,
        st.intervals,
        share(w.unprovisioned),
        share(w.mismatch),
        w.relay_refused,
        w.auth_failed,
        w.auth_checked
    );
    let enough = w.messages >= policy.min_messages;
    let detector = if w.auth_checked >= policy.min_messages
        && auth_share >= u64::from(policy.auth_fail_percent)
    {
        "authentication-failures"
    } else if !enough {
        return None;
    } else if st.intervals >= policy.warmup_intervals
        && w.messages * 1000 >= u64::from(policy.spike_factor) * baseline
    {
        "volume-spike"
    } else if onprem && share(w.unprovisioned) >= u64::from(policy.unprovisioned_percent) {
        "unprovisioned-domains"
    } else if onprem && share(w.mismatch) >= u64::from(policy.mismatch_percent) {
        "from-mismatch"
    } else {
        return None;
    };
    Some(Finding { detector, figures })
}

impl Detection {
    /// Sets the detection settings of a tenant, or the cluster default.
    pub(super) fn set_policy(
        &mut self,
        directory: &Directory,
        tenant: Option<&TenantId>,
        policy: &DetectionPolicy,
    ) -> Result<String, Rejection> {
        if policy.interval_ms < 1000 || policy.spike_factor < 2 || policy.min_messages == 0 {
            return Err(Rejection::invalid(
                Kind::Detection,
                "detection needs an interval of at least 1 s, a spike factor of at least 2 and a minimum of at least 1 message",
            ));
        }
        let key = match tenant {
            Some(t) => {
                directory.require(t)?;
                t.to_string()
            }
            None => "*".to_owned(),
        };
        self.policies.insert(key.clone(), *policy);
        Ok(format!(
            "detection for {key}: interval {} ms, warm-up {} windows, spike x{}, min {} messages, unprovisioned {}%, mismatch {}%, DMARC failures {}%",
            policy.interval_ms,
            policy.warmup_intervals,
            policy.spike_factor,
            policy.min_messages,
            policy.unprovisioned_percent,
            policy.mismatch_percent,
            policy.auth_fail_percent
        ))
    }

    /// The detection settings that apply to a connector (`tenant/name`).
    pub fn policy_for(&self, connector: &ConnectorId) -> DetectionPolicy {
        self.policies
            .get(connector.tenant.as_str())
            .or_else(|| self.policies.get("*"))
            .copied()
            .unwrap_or_default()
    }

    /// Counts a delta of a known connector into its window at `now`.
    fn count(&mut self, now: i64, key: &ConnectorId, name: &str, delta: u64) {
        let policy = self.policy_for(key);
        if !self.stats.contains_key(key) {
            self.stats.insert(key.clone(), Default::default());
        }
        let Some(st) = self.stats.get_mut(key) else {
            return;
        };
        roll(st, &policy, now);
        // A name this node does not know (an edge of an older or newer release may send one)
        // is kept in the counters table above and rolls the window like any other, but feeds
        // no detector: the same as before counter names were typed.
        let Some(counter) = ConnectorCounter::parse(name) else {
            return;
        };
        let w = &mut st.current;
        match counter {
            ConnectorCounter::Messages => w.messages += delta,
            ConnectorCounter::Unprovisioned => w.unprovisioned += delta,
            ConnectorCounter::Mismatch => w.mismatch += delta,
            ConnectorCounter::RelayRefused => w.relay_refused += delta,
            ConnectorCounter::AuthChecked => w.auth_checked += delta,
            ConnectorCounter::DmarcFail => w.auth_failed += delta,
            // Reported for `moat admin counters`, not read by any detector.
            ConnectorCounter::Sessions
            | ConnectorCounter::Recipients
            | ConnectorCounter::Bytes
            | ConnectorCounter::Relay
            | ConnectorCounter::Nexthop4xx
            | ConnectorCounter::Nexthop5xx
            | ConnectorCounter::OnpremThrottled
            | ConnectorCounter::OnpremBlocked
            | ConnectorCounter::SpfFail
            | ConnectorCounter::DkimFail => {}
        }
    }
}

impl State {
    /// Counts a delta of a known connector into its counter (keyed by its text) and its
    /// window.
    pub(super) fn count_connector(&mut self, key: &ConnectorId, name: &str, delta: u64) {
        let now = self.now_ms;
        let counter = self
            .counters
            .counter(signal::CONNECTOR, &key.to_string(), name);
        add(counter, now, delta);
        self.detection.count(now, key, name, delta);
    }

    /// Runs the detectors on a connector's current window; restricts it when one fires.
    pub(super) fn judge_connector(&mut self, index: u64, key: &ConnectorId) {
        let Some(connector) = self.directory.connector(key) else {
            return;
        };
        let (tenant, name, kind) = (
            connector.tenant.clone(),
            connector.name.clone(),
            connector.kind,
        );
        let ips: Vec<String> = connector
            .sender_ip_addresses
            .iter()
            .map(ToString::to_string)
            .collect();
        let cert = connector.tls_sender_certificate_name.clone();
        if self
            .restricted
            .iter()
            .any(|r| r.kind == EntityKind::Connector && r.tenant == tenant && r.name == name)
        {
            return;
        }
        let policy = self.detection.policy_for(key);
        let Some(st) = self.detection.stats.get(key) else {
            return;
        };
        let Some(finding) = judge(
            st,
            &policy,
            kind == moat_shared::ConnectorKind::OnPremises,
            self.now_ms,
        ) else {
            return;
        };
        let now = self.now_ms;
        let reason = finding.reason();
        self.restricted.push(Restricted {
            tenant: tenant.clone(),
            kind: EntityKind::Connector,
            name: name.clone(),
            reason: reason.clone(),
            since_ms: now,
            until_ms: None,
        });
        self.restricted_changed = true;
        let cert = cert
            .map(|c| format!(", certificate {c}"))
            .unwrap_or_default();
        let ips = if ips.is_empty() {
            "-".to_owned()
        } else {
            ips.join(" ")
        };
        self.system_alert(
            index,
            tenant,
            format!("connector {name} restricted: {reason}"),
            "high",
            "Suspicious connector activity",
            format!("connector {name} (IPs {ips}{cert}) restricted by {reason}"),
        );
    }
}

/// Moves a connector's window forward to the one holding `now`, folding each closed window
/// (and each empty one skipped) into the baseline.
fn roll(st: &mut ConnectorStats, policy: &DetectionPolicy, now: i64) {
    let len = policy.interval_ms.max(1000);
    let start = now - now.rem_euclid(len);
    if st.window_start_ms == 0 {
        st.first_seen_ms = now;
        st.window_start_ms = start;
        return;
    }
    if start <= st.window_start_ms {
        return;
    }
    let closed = (start - st.window_start_ms) / len;
    let mut volume = st.current.messages * 1000;
    // Folding more than a few hundred empty windows changes nothing measurable.
    for _ in 0..closed.min(500) {
        st.baseline_milli = if volume >= st.baseline_milli {
            st.baseline_milli + (volume - st.baseline_milli) / 5
        } else {
            st.baseline_milli - (st.baseline_milli - volume) / 5
        };
        volume = 0;
    }
    st.intervals = st
        .intervals
        .saturating_add(u32::try_from(closed).unwrap_or(u32::MAX));
    st.window_start_ms = start;
    st.current = WindowCounts::default();
}

#[cfg(test)]
mod tests {
    use moat_shared::signal;
    use moat_shared::{EntityKind, TenantId};

    use super::judge;
    use crate::state::testutil::*;
    use crate::state::*;

    /// The connector `simulate` creates.
    fn onprem() -> moat_shared::ConnectorId {
        "a/onprem".parse().expect("a connector id")
    }

    fn window(
        messages: u64,
        unprovisioned: u64,
        mismatch: u64,
        checked: u64,
        failed: u64,
    ) -> WindowCounts {
        WindowCounts {
            messages,
            unprovisioned,
            mismatch,
            relay_refused: 0,
            auth_checked: checked,
            auth_failed: failed,
        }
    }

    #[test]
    fn judge_fires_the_first_detector_that_applies() {
        let policy = DetectionPolicy::default();
        let stats = |current: WindowCounts, intervals: u32, baseline_milli: u64| ConnectorStats {
            first_seen_ms: 0,
            window_start_ms: 0,
            current,
            intervals,
            baseline_milli,
            quiet_until_ms: 0,
        };
        // (case, window [messages, unprovisioned, mismatch, checked, failed], intervals,
        // baseline_milli, onprem, fired detector)
        #[rustfmt::skip]
        let table = [
            ("quiet window",                                           [0, 0, 0, 0, 0],      30, 10_000,  true,  None),
            ("below the minimum",                                      [99, 99, 99, 99, 99], 30, 0,       true,  None),
            ("DMARC failures, even without enough messages",           [10, 0, 0, 100, 50],  0,  0,       false, Some("authentication-failures")),
            ("DMARC failures below the share",                         [100, 0, 0, 100, 49], 0,  100_000, false, None),
            ("ten times the baseline after warm-up",                   [100, 0, 0, 0, 0],    24, 10_000,  false, Some("volume-spike")),
            ("ten times the baseline during warm-up",                  [100, 0, 0, 0, 0],    23, 10_000,  false, None),
            ("an empty baseline counts as one message",                [100, 0, 0, 0, 0],    24, 0,       false, Some("volume-spike")),
            ("unprovisioned domains through an OnPremises connector",  [100, 50, 0, 0, 0],   0,  0,       true,  Some("unprovisioned-domains")),
            ("unprovisioned domains through a partner connector",      [100, 50, 50, 0, 0],  0,  0,       false, None),
            ("header From mismatches through an OnPremises connector", [100, 49, 50, 0, 0],  0,  0,       true,  Some("from-mismatch")),
        ];
        for (case, [m, u, mm, checked, failed], intervals, baseline, onprem, fired) in table {
            let st = stats(window(m, u, mm, checked, failed), intervals, baseline);
            let found = judge(&st, &policy, onprem, 1000);
            assert_eq!(found.as_ref().map(|f| f.detector), fired, "{case}");
        }
        let mut quiet = stats(window(1000, 1000, 0, 0, 0), 0, 0);
        quiet.quiet_until_ms = 1001;
        assert_eq!(
            judge(&quiet, &policy, true, 1000),
            None,
            "quiet after an unblock"
        );
        assert!(judge(&quiet, &policy, true, 1001).is_some());
        let f = judge(
            &stats(window(100, 50, 0, 0, 0), 3, 12_345),
            &policy,
            true,
            0,
        )
        .expect("fires");
        assert_eq!(
            f.reason(),
            "unprovisioned-domains: 100 messages this window, baseline 12.345 per window over 3 windows, 50% unprovisioned MAIL FROM domains, 0% header From mismatches, 0 relay refusals, 0 of 0 checked messages failing DMARC"
        );
    }

    #[test]
    fn an_unknown_connector_counter_is_kept_but_feeds_no_detector() {
        let (mut s, _) = simulate(1, |_| 1, |_| 0);
        let now = s.now_ms;
        let before = s.detection.stats[&onprem()].current;
        let odd = [
            (signal::CONNECTOR, "a/onprem", "relay_refused", 7),
            (signal::CONNECTOR, "a/onprem", "relay-refused", 2),
        ];
        s.apply(50_000, &p(now, signals("e9", 1, &odd)));
        assert_eq!(
            s.counters.table["connector|a/onprem|relay_refused"].total,
            7
        );
        let after = s.detection.stats[&onprem()].current;
        assert_eq!(after.relay_refused, before.relay_refused + 2);
        assert_eq!(after.messages, before.messages);
    }

    #[test]
    fn a_new_connector_ramping_up_is_not_restricted() {
        // Two days, growing from 1 to 200 messages a minute, hour by hour.
        let (s, at) = simulate(48 * 60, |m| 1 + (m as u64 / 60) * 4, |_| 0);
        assert_eq!(at, None, "{:?}", s.restricted);
        assert!(s.detection.stats[&onprem()].intervals >= 47);
    }

    #[test]
    fn a_steady_high_volume_connector_is_not_restricted() {
        let (s, at) = simulate(72 * 60, |_| 500, |_| 0);
        assert_eq!(at, None, "{:?}", s.restricted);
        let b = s.detection.stats[&onprem()].baseline_milli / 1000;
        assert!((29_000..=30_000).contains(&b), "baseline {b}");
    }

    #[test]
    fn a_ten_fold_one_minute_burst_within_daily_volume_is_not_restricted() {
        // 20 a minute for two days, then one minute at 200.
        let (s, at) = simulate(49 * 60, |m| if m == 48 * 60 + 30 { 200 } else { 20 }, |_| 0);
        assert_eq!(at, None, "{:?}", s.restricted);
    }

    #[test]
    fn a_flood_from_unprovisioned_domains_is_restricted_and_alerted() {
        // Two days at 5 a minute, then 100 a minute (20x) from domains the tenant does not own.
        let flood = 48 * 60;
        let (s, at) = simulate(
            flood + 60,
            |m| if m >= flood { 100 } else { 5 },
            |m| if m >= flood { 100 } else { 0 },
        );
        let at = at.expect("restricted");
        assert!(
            at >= flood && at < flood + 5,
            "restricted at minute {}",
            at - flood
        );
        let r = &s.restricted[0];
        assert_eq!((r.kind, r.name.as_str()), (EntityKind::Connector, "onprem"));
        assert!(
            r.reason.starts_with("unprovisioned-domains: "),
            "{}",
            r.reason
        );
        assert_eq!(s.alerts.records.len(), 1);
        assert_eq!(s.alerts.records[0].title, "Suspicious connector activity");
        assert!(
            s.alerts.records[0].detail.contains("192.0.2.0/24"),
            "{}",
            s.alerts.records[0].detail
        );
    }

    #[test]
    fn a_volume_spike_after_warm_up_is_restricted() {
        let spike = 30 * 60;
        let (s, at) = simulate(spike + 60, |m| if m >= spike { 60 } else { 3 }, |_| 0);
        let at = at.expect("restricted");
        assert!(
            s.restricted[0].reason.starts_with("volume-spike"),
            "{:?}",
            s.restricted
        );
        // 10 x 180 an hour is reached after 30 minutes at 60 a minute.
        assert!(at - spike <= 31, "restricted at minute {}", at - spike);
    }

    #[test]
    fn an_unblocked_connector_is_left_alone_for_a_window() {
        let flood = 48 * 60;
        let (mut s, at) = simulate(
            flood + 10,
            |m| if m >= flood { 100 } else { 5 },
            |m| if m >= flood { 100 } else { 0 },
        );
        assert!(at.is_some());
        let now = s.now_ms;
        s.apply(
            100_000,
            &p(
                now + 1000,
                Command::Unblock {
                    tenant: TenantId::new("a").unwrap(),
                    kind: EntityKind::Connector,
                    name: "onprem".into(),
                    reason: "cleaned".into(),
                },
            ),
        );
        // Late counts from before the unblock do not restrict it again within the window.
        let late = [
            (signal::CONNECTOR, "a/onprem", "messages", 500),
            (signal::CONNECTOR, "a/onprem", "unprovisioned", 500),
        ];
        s.apply(100_001, &p(now + 2000, signals("e2", 1, &late)));
        assert!(s.restricted.is_empty());
        // An attack that goes on after the window is caught again.
        s.apply(100_002, &p(now + 3_700_000, signals("e2", 2, &late)));
        assert_eq!(s.restricted.len(), 1);
    }
}
