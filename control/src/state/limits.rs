//! Limits on sending and logging in: a tenant's sending limits for its SMTP AUTH users and the
//! recipients they used, the cluster-wide SMTP AUTH failure lockout, the legacy-TLS speed bump
//! schedule, and lifting a restriction (of a user over a limit, a locked-out login or address,
//! or a connector a detector restricted).
//!
//! The AUTH lockout: edges report each failed login as a [`signal::AUTH_FAILURE`] counter (key
//! the login, name the client address). Failures are counted per login and per (tenant,
//! address) with the edges' own rule (a count lives while failures come within
//! [`AUTH_FAILURE_WINDOW_MS`] of each other); at [`CLUSTER_MAX_FAILURES_PER_LOGIN`] for a login
//! or [`CLUSTER_MAX_FAILURES_PER_IP`] for an address, the login (or the address, for that
//! tenant's logins) is locked out for [`AUTH_LOCKOUT_MS`] by a user restriction named
//! [`signal::auth_lockout`], which every edge refuses at AUTH with `454 4.7.0`. The tenant is
//! the user's, or for a login that names no user, the tenant accepting its domain (so a login
//! that exists and one that does not are locked alike); a login of no tenant is not counted.

use std::collections::BTreeMap;

use moat_shared::signal;
use moat_shared::submission::normalise_schedule;
use moat_shared::time::day_of_ms;
use moat_shared::{ConnectorId, Domain, EntityKind, SpeedBumpStep, TenantId};
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
    /// Failed SMTP AUTH logins across the cluster, by login (absent from snapshots while
    /// empty, so those written before read and re-encode the same).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub auth_login_failures: BTreeMap<String, AuthFailures>,
    /// Failed SMTP AUTH logins across the cluster, by `tenant|client address`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub auth_ip_failures: BTreeMap<String, AuthFailures>,
}

/// Failed logins across the cluster at which a login is locked out of SMTP AUTH (the edges'
/// default `max-failures-per-user`: the whole cluster now allows what one edge does).
pub const CLUSTER_MAX_FAILURES_PER_LOGIN: u64 = 5;
/// Failed logins across the cluster from one address, for one tenant's logins, at which the
/// address is locked out of that tenant's logins (the edges' default `max-failures-per-ip`).
pub const CLUSTER_MAX_FAILURES_PER_IP: u64 = 10;
/// How long a failure count lives after its last failure (the edges' default
/// `failure-window`).
pub const AUTH_FAILURE_WINDOW_MS: i64 = 15 * 60_000;
/// How long a cluster-wide lockout lasts (unless an admin lifts it first).
pub const AUTH_LOCKOUT_MS: i64 = 15 * 60_000;
/// Most failure counts kept per kind: past it, expired ones are dropped, and while all are
/// live a new login or address is not counted (its edge's own throttle still applies).
const MAX_AUTH_FAILURE_ENTRIES: usize = 100_000;
/// Most lockouts in force at once: restrictions are published to edges as a short list, and
/// a flood of logins must not make it long.
const MAX_AUTH_LOCKOUTS: usize = 1_000;

/// Failed logins counted across the cluster for one login or address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthFailures {
    /// Failures, each within [`AUTH_FAILURE_WINDOW_MS`] of the one before.
    pub count: u64,
    /// When the last was counted (Unix ms, entry time).
    pub last_ms: i64,
}

/// Adds `delta` failures to `key`'s count at `now_ms` (starting over when the window passed)
/// and returns the count; `None` when the table is full of live counts.
fn bump_failures(
    map: &mut BTreeMap<String, AuthFailures>,
    key: String,
    now_ms: i64,
    delta: u64,
) -> Option<u64> {
    if map.len() >= MAX_AUTH_FAILURE_ENTRIES && !map.contains_key(&key) {
        prune_failures(map, now_ms);
        if map.len() >= MAX_AUTH_FAILURE_ENTRIES {
            return None;
        }
    }
    let f = map.entry(key).or_default();
    if now_ms - f.last_ms >= AUTH_FAILURE_WINDOW_MS {
        f.count = 0;
    }
    f.count += delta;
    f.last_ms = now_ms;
    Some(f.count)
}

/// Drops the counts whose window has passed.
fn prune_failures(map: &mut BTreeMap<String, AuthFailures>, now_ms: i64) {
    map.retain(|_, f| now_ms - f.last_ms < AUTH_FAILURE_WINDOW_MS);
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
        // Unblocking a user also lifts its AUTH lockout, if any.
        let lockout = (kind == EntityKind::User && signal::auth_lockout_subject(name).is_none())
            .then(|| signal::auth_lockout(name));
        let (mut itself, mut locked) = (false, false);
        self.restricted.retain(|r| {
            if r.tenant != *tenant || r.kind != kind {
                return true;
            }
            if r.name == name {
                itself = true;
                false
            } else if lockout.as_deref() == Some(r.name.as_str()) {
                locked = true;
                false
            } else {
                true
            }
        });
        if !itself && !locked {
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
                let subject = signal::auth_lockout_subject(name);
                if subject.is_none() && itself {
                    self.limits.usage.remove(name);
                }
                let subject = subject.unwrap_or(name);
                if subject.parse::<std::net::IpAddr>().is_ok() {
                    self.limits
                        .auth_ip_failures
                        .remove(&format!("{tenant}|{subject}"));
                } else {
                    self.limits.auth_login_failures.remove(subject);
                }
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

    /// The tenant a login belongs to: its user's, or for a login that names no user, the
    /// tenant that accepts its domain.
    fn login_tenant(&self, login: &str) -> Option<TenantId> {
        if let Some(user) = self.directory.users.get(login) {
            return Some(user.tenant.clone());
        }
        let (_, domain) = login.rsplit_once('@')?;
        let domain = Domain::new(domain).ok()?;
        self.directory.domain_owner(&domain).cloned()
    }

    /// Counts `delta` failed logins of `login` from the client address `ip` and locks out the
    /// login, or the address for the login's tenant, at the cluster-wide threshold.
    pub(super) fn count_auth_failure(&mut self, index: u64, login: &str, ip: &str, delta: u64) {
        let Some(tenant) = self.login_tenant(login) else {
            return;
        };
        let now = self.now_ms;
        let limits = &mut self.limits;
        let by_login = bump_failures(
            &mut limits.auth_login_failures,
            login.to_owned(),
            now,
            delta,
        );
        // An address that does not parse is not counted (an edge sends its text form).
        let by_ip = ip.parse::<std::net::IpAddr>().ok().and_then(|ip| {
            bump_failures(
                &mut limits.auth_ip_failures,
                format!("{tenant}|{ip}"),
                now,
                delta,
            )
            .map(|n| (ip.to_string(), n))
        });
        let window = AUTH_FAILURE_WINDOW_MS / 60_000;
        if let Some(n) = by_login.filter(|n| *n >= CLUSTER_MAX_FAILURES_PER_LOGIN) {
            self.limits.auth_login_failures.remove(login);
            let why = format!(
                "{n} failed logins within {window} minutes of each other across the cluster"
            );
            self.lock_out(index, &tenant, login, why);
        }
        if let Some((ip, n)) = by_ip.filter(|(_, n)| *n >= CLUSTER_MAX_FAILURES_PER_IP) {
            self.limits
                .auth_ip_failures
                .remove(&format!("{tenant}|{ip}"));
            let why = format!(
                "{n} failed logins to {tenant}'s logins from {ip} within {window} minutes of \
                 each other across the cluster"
            );
            self.lock_out(index, &tenant, &ip, why);
        }
    }

    /// Drops failure counts whose window has passed (once per signals entry that counted
    /// some, so that snapshots do not keep them).
    pub(super) fn prune_auth_failures(&mut self) {
        let now = self.now_ms;
        prune_failures(&mut self.limits.auth_login_failures, now);
        prune_failures(&mut self.limits.auth_ip_failures, now);
    }

    /// Locks `subject` (a login or a client address) out of `tenant`'s SMTP AUTH for
    /// [`AUTH_LOCKOUT_MS`], unless it is already, or [`MAX_AUTH_LOCKOUTS`] are in force.
    fn lock_out(&mut self, index: u64, tenant: &TenantId, subject: &str, why: String) {
        let name = signal::auth_lockout(subject);
        let mut lockouts = 0;
        for r in &self.restricted {
            if r.kind != EntityKind::User || signal::auth_lockout_subject(&r.name).is_none() {
                continue;
            }
            if r.tenant == *tenant && r.name == name {
                return;
            }
            lockouts += 1;
        }
        if lockouts >= MAX_AUTH_LOCKOUTS {
            return;
        }
        let now = self.now_ms;
        self.restricted.push(Restricted {
            tenant: tenant.clone(),
            kind: EntityKind::User,
            name,
            reason: format!("{why}; SMTP AUTH locked out"),
            since_ms: now,
            until_ms: Some(now + AUTH_LOCKOUT_MS),
        });
        self.restricted_changed = true;
        // The tenant's admins hear of a user of theirs under attack (not of every address or
        // unknown login, which an attacker chooses).
        if self.directory.users.contains_key(subject) {
            let minutes = AUTH_LOCKOUT_MS / 60_000;
            let detail = format!("{subject}: {why}; locked out of SMTP AUTH for {minutes} minutes");
            self.system_alert(
                index,
                tenant.clone(),
                format!("user {detail}"),
                "medium",
                "User locked out of SMTP AUTH after failed logins",
                detail,
            );
        }
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

    use super::{AUTH_FAILURE_WINDOW_MS, AUTH_LOCKOUT_MS};
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

    /// `(edge, seq, at_ms, login, ip, failures)`: one edge's batch of one failure counter.
    type Failed = (&'static str, u64, i64, &'static str, &'static str, u64);

    fn fail(s: &mut State, index: u64, (edge, seq, at, login, ip, n): Failed) {
        let o = s.apply(
            index,
            &p(
                at,
                signals(edge, seq, &[(signal::AUTH_FAILURE, login, ip, n)]),
            ),
        );
        assert!(o.result.is_ok(), "{o:?}");
    }

    /// The names of the restrictions in force, sorted.
    fn lockouts(s: &State) -> Vec<String> {
        let mut v: Vec<String> = s.restricted.iter().map(|r| r.name.clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn failed_logins_are_counted_across_edges_and_lock_out_at_the_threshold() {
        const M: i64 = 60_000;
        const IP: &str = "192.0.2.9";
        let cases: &[(&str, &[Failed], &[&str], usize)] = &[
            (
                "3 on one edge and 2 on another lock the login",
                &[
                    ("e1", 1, M, "u@a.test", IP, 3),
                    ("e2", 1, 2 * M, "u@a.test", IP, 2),
                ],
                &["auth-lockout:u@a.test"],
                1,
            ),
            (
                "4 across the cluster do not",
                &[
                    ("e1", 1, M, "u@a.test", IP, 2),
                    ("e2", 1, 2 * M, "u@a.test", IP, 2),
                ],
                &[],
                0,
            ),
            (
                "failures further apart than the window start over",
                &[
                    ("e1", 1, M, "u@a.test", IP, 4),
                    ("e2", 1, 17 * M, "u@a.test", IP, 1),
                ],
                &[],
                0,
            ),
            (
                "within the window of the last failure they add up",
                &[
                    ("e1", 1, M, "u@a.test", IP, 2),
                    ("e2", 1, 14 * M, "u@a.test", IP, 2),
                    ("e1", 2, 28 * M, "u@a.test", IP, 1),
                ],
                &["auth-lockout:u@a.test"],
                1,
            ),
            (
                "a login that names no user in an accepted domain is locked alike, unalerted",
                &[
                    ("e1", 1, M, "nobody@a.test", IP, 3),
                    ("e2", 1, M, "nobody@a.test", IP, 2),
                ],
                &["auth-lockout:nobody@a.test"],
                0,
            ),
            (
                "a login of no tenant is not counted",
                &[
                    ("e1", 1, M, "x@elsewhere.test", IP, 9),
                    ("e2", 1, M, "bogus", IP, 9),
                ],
                &[],
                0,
            ),
            (
                "10 failures from one address over several logins lock the address",
                &[
                    ("e1", 1, M, "v1@a.test", IP, 3),
                    ("e2", 1, M, "v2@a.test", IP, 3),
                    ("e1", 2, M, "v3@a.test", IP, 2),
                    ("e2", 2, M, "v4@a.test", IP, 2),
                ],
                &["auth-lockout:192.0.2.9"],
                0,
            ),
            (
                "9 from one address do not; other addresses count apart",
                &[
                    ("e1", 1, M, "v1@a.test", IP, 4),
                    ("e2", 1, M, "v2@a.test", IP, 4),
                    ("e1", 2, M, "v3@a.test", IP, 1),
                    ("e2", 2, M, "v4@a.test", "192.0.2.10", 4),
                ],
                &[],
                0,
            ),
            (
                "an address that does not parse counts for the login only",
                &[("e1", 1, M, "u@a.test", "not-an-ip", 12)],
                &["auth-lockout:u@a.test"],
                1,
            ),
            (
                "an edge's batch applied twice counts once",
                &[
                    ("e1", 1, M, "u@a.test", IP, 3),
                    ("e1", 1, 2 * M, "u@a.test", IP, 3),
                ],
                &[],
                0,
            ),
        ];
        for (what, failed, locked, alerts) in cases {
            let mut s = with_user(OutboundPolicy::default());
            for (i, f) in failed.iter().enumerate() {
                fail(&mut s, 10 + i as u64, *f);
            }
            assert_eq!(lockouts(&s), *locked, "{what}");
            assert_eq!(s.alerts.records.len(), *alerts, "{what}");
            for r in &s.restricted {
                assert_eq!(r.kind, EntityKind::User, "{what}");
                assert_eq!(r.tenant, TenantId::new("a").unwrap(), "{what}");
                assert_eq!(r.until_ms, Some(r.since_ms + AUTH_LOCKOUT_MS), "{what}");
                assert!(
                    r.reason.ends_with("SMTP AUTH locked out"),
                    "{what}: {}",
                    r.reason
                );
            }
        }
    }

    #[test]
    fn a_lockout_is_policy_lasts_its_time_and_leaves_a_fresh_count() {
        let mut s = with_user(OutboundPolicy::default());
        let t = 20_415 * 86_400_000;
        let v = s.policy_version;
        fail(&mut s, 4, ("e1", 1, t, "u@a.test", "192.0.2.1", 3));
        assert_eq!(s.policy_version, v, "counting alone is not policy");
        fail(&mut s, 5, ("e2", 1, t + 500, "u@a.test", "192.0.2.1", 2));
        assert_eq!(s.policy_version, 5, "a lockout is policy");
        assert_eq!(
            s.restricted[0].reason,
            "5 failed logins within 15 minutes of each other across the cluster; \
             SMTP AUTH locked out"
        );
        assert_eq!(
            s.alerts.records[0].title,
            "User locked out of SMTP AUTH after failed logins"
        );
        assert!(!s.limits.auth_login_failures.contains_key("u@a.test"));
        // Failures still in flight when it locked do not lock twice.
        fail(&mut s, 6, ("e1", 2, t + 1000, "u@a.test", "192.0.2.3", 5));
        assert_eq!((s.restricted.len(), s.alerts.records.len()), (1, 1));
        // It lifts by itself after AUTH_LOCKOUT_MS, at the next entry.
        s.apply(7, &p(t + 500 + AUTH_LOCKOUT_MS, Command::Tick));
        assert!(s.restricted.is_empty());
        assert_eq!(s.policy_version, 7);
        // Counts whose window passed are dropped at the next failure counted.
        fail(
            &mut s,
            8,
            (
                "e1",
                3,
                t + 2 * AUTH_FAILURE_WINDOW_MS,
                "w@a.test",
                "192.0.2.2",
                1,
            ),
        );
        assert_eq!(
            s.limits.auth_login_failures.keys().collect::<Vec<_>>(),
            ["w@a.test"]
        );
        assert_eq!(
            s.limits.auth_ip_failures.keys().collect::<Vec<_>>(),
            ["a|192.0.2.2"]
        );
    }

    #[test]
    fn unblocking_the_user_or_the_lockout_lifts_it_and_forgives_the_failures() {
        let tenant = TenantId::new("a").unwrap();
        let unblock = |name: &str| Command::Unblock {
            tenant: tenant.clone(),
            kind: EntityKind::User,
            name: name.into(),
            reason: "password reset".into(),
        };
        for name in ["u@a.test", "auth-lockout:u@a.test"] {
            let mut s = with_user(OutboundPolicy::default());
            fail(&mut s, 4, ("e1", 1, 10, "u@a.test", "192.0.2.1", 5));
            fail(&mut s, 5, ("e1", 2, 20, "v@a.test", "192.0.2.1", 3));
            assert_eq!(lockouts(&s), ["auth-lockout:u@a.test"]);
            let o = s.apply(6, &p(30, unblock(name)));
            assert_eq!(
                o.result.unwrap(),
                format!("user {name} unblocked: password reset")
            );
            assert!(s.restricted.is_empty(), "{name}");
            assert_eq!(s.policy_version, 6, "{name}");
            assert!(
                !s.limits.auth_login_failures.contains_key("u@a.test"),
                "{name}"
            );
            assert_eq!(
                s.limits.auth_ip_failures["a|192.0.2.1"].count, 8,
                "lifting a login's lockout does not forgive the address"
            );
            assert!(
                s.limits.auth_login_failures.contains_key("v@a.test"),
                "others keep theirs"
            );
        }
        // Unblocking the address forgives its count; a user's sending block and its lockout
        // are two restrictions, and unblocking the user lifts both.
        let mut s = with_user(OutboundPolicy {
            recipients_per_hour: 1,
            recipients_per_day: 100,
            action: LimitAction::Block,
        });
        for (i, login) in ["v1@a.test", "v2@a.test"].iter().enumerate() {
            fail(
                &mut s,
                4 + i as u64,
                ("e1", 1 + i as u64, 10, login, "192.0.2.7", 5),
            );
        }
        s.apply(
            6,
            &p(
                20,
                signals(
                    "e2",
                    1,
                    &[(signal::USER, "u@a.test", signal::RECIPIENTS, 2)],
                ),
            ),
        );
        fail(&mut s, 7, ("e1", 3, 30, "u@a.test", "192.0.2.8", 5));
        assert_eq!(
            lockouts(&s),
            [
                "auth-lockout:192.0.2.7",
                "auth-lockout:u@a.test",
                "auth-lockout:v1@a.test",
                "auth-lockout:v2@a.test",
                "u@a.test"
            ]
        );
        assert!(s
            .apply(8, &p(40, unblock("auth-lockout:192.0.2.7")))
            .result
            .is_ok());
        assert!(!s.limits.auth_ip_failures.contains_key("a|192.0.2.7"));
        assert!(s.apply(9, &p(50, unblock("u@a.test"))).result.is_ok());
        assert_eq!(
            lockouts(&s),
            ["auth-lockout:v1@a.test", "auth-lockout:v2@a.test"]
        );
        assert!(s.apply(10, &p(60, unblock("u@a.test"))).result.is_err());
    }

    #[test]
    fn failure_counts_stay_out_of_snapshots_while_empty() {
        let mut s = with_user(OutboundPolicy::default());
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("auth_login_failures"), "{json}");
        fail(&mut s, 4, ("e1", 1, 10, "u@a.test", "192.0.2.1", 1));
        let json = serde_json::to_string(&s).unwrap();
        let back: State = serde_json::from_str(&json).unwrap();
        assert_eq!(back.limits, s.limits);
        assert_eq!(back.limits.auth_ip_failures["a|192.0.2.1"].count, 1);
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
