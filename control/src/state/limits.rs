//! Limits on sending: a tenant's sending limits for its SMTP AUTH users and the recipients they
//! used, the legacy-TLS speed bump schedule, and lifting a restriction (of a user over a limit
//! or a connector a detector restricted).

use std::collections::BTreeMap;

use moat_shared::submission::normalise_schedule;
use moat_shared::time::day_of_ms;
use moat_shared::{ConnectorId, EntityKind, SpeedBumpStep, TenantId};
use serde::{Deserialize, Serialize};

use super::detection::WindowCounts;
use super::error::{Kind, Rejection};
use super::tenants::Directory;
use super::{Restricted, State};

/// The sending limits part of the state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// The legacy-TLS speed bump schedule.
    #[serde(default)]
    pub speed_bump: Vec<SpeedBumpStep>,
    /// Sending limits by tenant (tenants without an entry have the default).
    #[serde(default)]
    pub outbound: BTreeMap<TenantId, OutboundPolicy>,
    /// Recipients per SMTP AUTH user in the current hour and day.
    #[serde(default)]
    pub usage: BTreeMap<String, Usage>,
}

/// What happens to an SMTP AUTH user who goes over a sending limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LimitAction {
    /// Blocked until the next UTC day begins (Exchange Online's `BlockUserForToday`).
    #[default]
    BlockForToday,
    /// Blocked until an admin unblocks the user.
    Block,
    /// Not blocked; the tenant's admins are alerted.
    AlertOnly,
}

impl LimitAction {
    /// The name used in tools.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BlockForToday => "block-for-today",
            Self::Block => "block",
            Self::AlertOnly => "alert-only",
        }
    }

    /// Parses an action name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "block-for-today" => Some(Self::BlockForToday),
            "block" => Some(Self::Block),
            "alert-only" => Some(Self::AlertOnly),
            _ => None,
        }
    }
}

/// A tenant's sending limits for its SMTP AUTH users.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct OutboundPolicy {
    /// Recipients per user per clock hour (UTC).
    pub recipients_per_hour: u32,
    /// Recipients per user per UTC day.
    pub recipients_per_day: u32,
    /// What happens when a limit is exceeded.
    pub action: LimitAction,
}

impl Default for OutboundPolicy {
    /// Exchange Online's default outbound spam policy: 500 external recipients an hour, 1,000
    /// recipients a day, block the user for the rest of the day.
    fn default() -> Self {
        Self {
            recipients_per_hour: 500,
            recipients_per_day: 1000,
            action: LimitAction::BlockForToday,
        }
    }
}

/// A user's recipients in the current hour and day.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Start of the hour counted in `hour` (Unix ms).
    pub hour_start_ms: i64,
    /// Recipients this hour.
    pub hour: u64,
    /// The day counted in `day` (days since 1970-01-01).
    pub day_number: i64,
    /// Recipients this day.
    pub day: u64,
    /// The hour an alert-only alert was last raised, so it is raised once per hour.
    pub alerted_hour_ms: Option<i64>,
}

impl Limits {
    /// Replaces the speed bump schedule (sorted; a day given twice is refused).
    pub(super) fn set_speed_bump(&mut self, steps: &[SpeedBumpStep]) -> Result<String, Rejection> {
        let steps = normalise_schedule(steps.to_vec())
            .map_err(|e| Rejection::invalid(Kind::SpeedBump, e))?;
        let text = if steps.is_empty() {
            "off".to_owned()
        } else {
            steps
                .iter()
                .map(SpeedBumpStep::render)
                .collect::<Vec<_>>()
                .join(", ")
        };
        self.speed_bump = steps;
        Ok(format!("speed bump schedule: {text}"))
    }

    /// Sets a tenant's sending limits.
    pub(super) fn set_outbound_policy(
        &mut self,
        directory: &Directory,
        tenant: &TenantId,
        policy: &OutboundPolicy,
    ) -> Result<String, Rejection> {
        directory.require(tenant)?;
        if policy.recipients_per_hour == 0 || policy.recipients_per_day == 0 {
            return Err(Rejection::invalid(
                Kind::SendingLimits,
                "sending limits must be at least 1 recipient",
            ));
        }
        self.outbound.insert(tenant.clone(), *policy);
        Ok(format!(
            "sending limits of {tenant}: {} recipients per hour, {} per day, then {}",
            policy.recipients_per_hour,
            policy.recipients_per_day,
            policy.action.as_str()
        ))
    }

    /// A tenant's sending limits (the default unless set).
    pub fn policy_for(&self, tenant: &TenantId) -> OutboundPolicy {
        self.outbound.get(tenant).copied().unwrap_or_default()
    }
}

impl State {
    /// Lifts a restriction and forgives the counts that caused it.
    pub(super) fn unblock(
        &mut self,
        tenant: &TenantId,
        kind: EntityKind,
        name: &str,
        reason: &str,
    ) -> Result<String, Rejection> {
        let before = self.restricted.len();
        self.restricted
            .retain(|r| !(r.tenant == *tenant && r.kind == kind && r.name == name));
        if self.restricted.len() == before {
            return Err(Rejection::NotRestricted {
                kind,
                name: name.to_owned(),
                tenant: tenant.clone(),
            });
        }
        self.restricted_changed = true;
        // A fresh start: the counts that tripped the limit are forgiven.
        match kind {
            EntityKind::User => {
                self.limits.usage.remove(name);
            }
            EntityKind::Connector => {
                let key = ConnectorId::new(tenant.clone(), name);
                let interval = self.detection.policy_for(&key).interval_ms;
                let now = self.now_ms;
                if let Some(st) = self.detection.stats.get_mut(&key) {
                    st.current = WindowCounts::default();
                    st.quiet_until_ms = now + interval;
                }
            }
        }
        Ok(format!("{} {name} unblocked: {reason}", kind.as_str()))
    }

    /// Counts recipients of an SMTP AUTH user and restricts the user over a limit.
    pub(super) fn count_user(&mut self, index: u64, address: &str, delta: u64) {
        let Some(user) = self.directory.users.get(address) else {
            return;
        };
        let tenant = user.tenant.clone();
        let now = self.now_ms;
        let hour_start = now - now.rem_euclid(3_600_000);
        let today = day_of_ms(now);
        let policy = self.limits.policy_for(&tenant);
        let u = self.limits.usage.entry(address.to_owned()).or_default();
        if u.hour_start_ms != hour_start {
            u.hour_start_ms = hour_start;
            u.hour = 0;
        }
        if u.day_number != today {
            u.day_number = today;
            u.day = 0;
        }
        u.hour += delta;
        u.day += delta;
        let over = if u.hour > u64::from(policy.recipients_per_hour) {
            format!(
                "{} recipients this hour, over the limit of {} per hour",
                u.hour, policy.recipients_per_hour
            )
        } else if u.day > u64::from(policy.recipients_per_day) {
            format!(
                "{} recipients today, over the limit of {} per day",
                u.day, policy.recipients_per_day
            )
        } else {
            return;
        };
        let blocked = self
            .restricted
            .iter()
            .any(|r| r.kind == EntityKind::User && r.name == address);
        if blocked {
            return;
        }
        let until_ms = match policy.action {
            LimitAction::AlertOnly => {
                if u.alerted_hour_ms == Some(hour_start) {
                    return;
                }
                u.alerted_hour_ms = Some(hour_start);
                None
            }
            LimitAction::BlockForToday => Some((today + 1) * 86_400_000),
            LimitAction::Block => None,
        };
        let (title, action) = if policy.action == LimitAction::AlertOnly {
            ("User exceeded a sending limit", "not blocked (alert only)")
        } else {
            (
                "User restricted from sending email",
                if until_ms.is_some() {
                    "blocked until the next UTC day"
                } else {
                    "blocked until an admin unblocks it"
                },
            )
        };
        if policy.action != LimitAction::AlertOnly {
            self.restricted.push(Restricted {
                tenant: tenant.clone(),
                kind: EntityKind::User,
                name: address.to_owned(),
                reason: over.clone(),
                since_ms: now,
                until_ms,
            });
            self.restricted_changed = true;
        }
        let detail = format!("{address}: {over}; {action}");
        self.system_alert(
            index,
            tenant,
            format!("user {detail}"),
            "high",
            title,
            detail,
        );
    }
}

#[cfg(test)]
mod tests {
    use moat_shared::signal;
    use moat_shared::{EntityKind, SpeedBumpStep, TenantId};

    use crate::state::testutil::*;
    use crate::state::*;

    #[test]
    fn a_user_over_its_hourly_limit_is_blocked_for_the_day_and_alerted() {
        let mut s = with_user(OutboundPolicy {
            recipients_per_hour: 3,
            recipients_per_day: 100,
            action: LimitAction::BlockForToday,
        });
        let day = 20_415 * 86_400_000;
        let rcpts = |n| [(signal::USER, "u@a.test", signal::RECIPIENTS, n)];
        s.apply(4, &p(day + 1000, signals("e1", 1, &rcpts(2))));
        s.apply(5, &p(day + 2000, signals("e2", 1, &rcpts(1))));
        assert!(s.restricted.is_empty(), "3 of 3 is not over");
        let v = s.policy_version;
        s.apply(6, &p(day + 3000, signals("e1", 2, &rcpts(1))));
        assert_eq!(s.restricted.len(), 1);
        let r = &s.restricted[0];
        assert_eq!((r.kind, r.name.as_str()), (EntityKind::User, "u@a.test"));
        assert_eq!(r.until_ms, Some(20_416 * 86_400_000));
        assert_eq!(
            s.policy_version, 6,
            "a restriction changes policy (was {v})"
        );
        assert_eq!(s.alerts.records.len(), 1);
        assert_eq!(
            s.alerts.records[0].title,
            "User restricted from sending email"
        );
        // More traffic does not restrict twice.
        s.apply(7, &p(day + 4000, signals("e1", 3, &rcpts(5))));
        assert_eq!((s.restricted.len(), s.alerts.records.len()), (1, 1));
        // The next UTC day, the block lifts by itself at the next entry.
        s.apply(8, &p(20_416 * 86_400_000 + 5, signals("e1", 4, &[])));
        assert!(s.restricted.is_empty());
        assert_eq!(s.policy_version, 8);
    }

    #[test]
    fn unblock_needs_a_restriction_and_forgives_the_counts() {
        let mut s = with_user(OutboundPolicy {
            recipients_per_hour: 1,
            recipients_per_day: 100,
            action: LimitAction::Block,
        });
        let unblock = || Command::Unblock {
            tenant: TenantId::new("a").unwrap(),
            kind: EntityKind::User,
            name: "u@a.test".into(),
            reason: "checked".into(),
        };
        assert!(s.apply(4, &p(10, unblock())).result.is_err());
        s.apply(
            5,
            &p(
                20,
                signals(
                    "e1",
                    1,
                    &[(signal::USER, "u@a.test", signal::RECIPIENTS, 2)],
                ),
            ),
        );
        assert_eq!(s.restricted.len(), 1);
        assert_eq!(
            s.restricted[0].until_ms, None,
            "block lasts until unblocked"
        );
        let o = s.apply(6, &p(30, unblock()));
        assert_eq!(o.result.unwrap(), "user u@a.test unblocked: checked");
        assert!(s.restricted.is_empty());
        assert_eq!(s.policy_version, 6);
        assert!(!s.limits.usage.contains_key("u@a.test"));
        assert!(s
            .audit
            .records
            .iter()
            .any(|a| a.action.contains("unblocked")));
    }

    #[test]
    fn alert_only_alerts_once_an_hour_and_blocks_nothing() {
        let mut s = with_user(OutboundPolicy {
            recipients_per_hour: 1,
            recipients_per_day: 100,
            action: LimitAction::AlertOnly,
        });
        let r = [(signal::USER, "u@a.test", signal::RECIPIENTS, 5)];
        s.apply(4, &p(1_000, signals("e1", 1, &r)));
        s.apply(5, &p(2_000, signals("e1", 2, &r)));
        s.apply(6, &p(3_600_000 + 1, signals("e1", 3, &r)));
        assert!(s.restricted.is_empty());
        assert_eq!(s.alerts.records.len(), 2);
    }

    #[test]
    fn the_speed_bump_schedule_is_policy() {
        let mut s = State::default();
        let step = |d: &str| SpeedBumpStep::parse(d).unwrap();
        let o = s.apply(
            1,
            &p(
                1,
                Command::SetSpeedBump {
                    steps: vec![step("2026-12-01=100"), step("2026-11-01=30")],
                },
            ),
        );
        assert_eq!(
            o.result.unwrap(),
            "speed bump schedule: 2026-11-01=30, 2026-12-01=100"
        );
        assert_eq!(s.policy_version, 1);
        let dup = s.apply(
            2,
            &p(
                2,
                Command::SetSpeedBump {
                    steps: vec![step("2026-12-01=100"), step("2026-12-01=30")],
                },
            ),
        );
        assert!(dup.result.is_err());
        assert_eq!(s.limits.speed_bump.len(), 2);
    }
}
