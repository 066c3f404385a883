//! Client submission policy: SMTP AUTH users, restricted entities and the legacy-TLS
//! "speed bump" schedule.
//!
//! These travel in the [`PolicySnapshot`](crate::PolicySnapshot) like tenants do, so every edge
//! decides on them alike, without asking the control plane per session.

use serde::{Deserialize, Serialize};

use crate::time::{day_of_ms, day_string, parse_day};
use crate::TenantId;

/// A user who may authenticate with SMTP AUTH.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmissionUser {
    /// The user's tenant: submission sessions are attributed to it.
    pub tenant: TenantId,
    /// Login name and default sending address, lowercase.
    pub address: String,
    /// Argon2id PHC string of the password.
    pub password_hash: String,
    /// Further addresses (lowercase) the user may put in `MAIL FROM`.
    pub send_as: Vec<String>,
}

impl SubmissionUser {
    /// Whether the user may use `from` (compared case-insensitively) as the envelope sender.
    pub fn may_send_as(&self, from: &str) -> bool {
        let from = from.to_lowercase();
        self.address == from || self.send_as.contains(&from)
    }
}

/// What kind of entity the control plane restricted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntityKind {
    /// An inbound connector (`tenant/name`).
    Connector,
    /// An SMTP AUTH user (its address).
    User,
}

impl EntityKind {
    /// The kind's name in tools and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connector => "connector",
            Self::User => "user",
        }
    }

    /// Parses a kind name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "connector" => Some(Self::Connector),
            "user" => Some(Self::User),
            _ => None,
        }
    }
}

/// A connector or user blocked from sending.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestrictedEntity {
    /// The tenant.
    pub tenant: TenantId,
    /// Connector or user.
    pub kind: EntityKind,
    /// The connector's name or the user's address.
    pub name: String,
    /// Why, in words.
    pub reason: String,
    /// Since when (Unix ms, leader time).
    pub since_ms: i64,
    /// When the block lifts by itself (Unix ms); `None` until an admin lifts it.
    #[serde(default)]
    pub until_ms: Option<i64>,
}

impl RestrictedEntity {
    /// Whether the block is in force at `now_ms`.
    pub fn in_force(&self, now_ms: i64) -> bool {
        self.until_ms.is_none_or(|u| now_ms < u)
    }
}

/// One step of the legacy-TLS speed bump: from `day` on (UTC), `percent` of the sessions that
/// negotiated TLS 1.0 or 1.1 on a speed-bump listener are refused with `421 4.7.66`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpeedBumpStep {
    /// First day of the step, days since 1970-01-01 (UTC).
    pub day: i64,
    /// Share of legacy sessions refused, 0 to 100.
    pub percent: u8,
}

impl SpeedBumpStep {
    /// Parses `YYYY-MM-DD=PERCENT`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (date, percent) = text
            .split_once('=')
            .ok_or_else(|| format!("`{text}` is not DATE=PERCENT, e.g. 2026-12-01=30"))?;
        let day = parse_day(date).ok_or_else(|| format!("`{date}` is not a date (YYYY-MM-DD)"))?;
        let percent = percent
            .trim()
            .trim_end_matches('%')
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= 100)
            .ok_or_else(|| format!("`{percent}` is not a percentage from 0 to 100"))?;
        Ok(Self { day, percent })
    }

    /// The step as `YYYY-MM-DD=PERCENT`.
    pub fn render(&self) -> String {
        format!("{}={}", day_string(self.day), self.percent)
    }
}

/// Orders a schedule by day and checks that no day appears twice.
pub fn normalise_schedule(mut steps: Vec<SpeedBumpStep>) -> Result<Vec<SpeedBumpStep>, String> {
    steps.sort_by_key(|s| s.day);
    for w in steps.windows(2) {
        if w[0].day == w[1].day {
            return Err(format!("{} appears twice", day_string(w[0].day)));
        }
    }
    Ok(steps)
}

/// The share of legacy sessions refused at `now_ms`: the percent of the latest step that has
/// begun, 0 before the first step.
pub fn speed_bump_percent(steps: &[SpeedBumpStep], now_ms: i64) -> u8 {
    let today = day_of_ms(now_ms);
    steps
        .iter()
        .filter(|s| s.day <= today)
        .max_by_key(|s| s.day)
        .map_or(0, |s| s.percent)
}

/// The session's draw for the speed bump, 0 to 99: a hash of the session id, so the decision
/// for a session is reproducible (logs and tests can recompute it) and the shares over many
/// sessions are uniform. A session is refused when its draw is below the percent in force.
pub fn speed_bump_draw(session_id: &str) -> u8 {
    // FNV-1a, then the SplitMix64 finaliser to spread sequential ids.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in session_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h % 100) as u8
}

/// Whether the speed bump refuses this session at `percent`.
pub fn speed_bump_refuses(session_id: &str, percent: u8) -> bool {
    speed_bump_draw(session_id) < percent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_begun_step_is_in_force() {
        let day = |s: &str| parse_day(s).unwrap();
        let steps = normalise_schedule(vec![
            SpeedBumpStep::parse("2026-12-01=30").unwrap(),
            SpeedBumpStep::parse("2026-11-01=5%").unwrap(),
            SpeedBumpStep::parse("2027-01-01=100").unwrap(),
        ])
        .unwrap();
        let at = |d: &str| day(d) * 86_400_000 + 3_600_000;
        assert_eq!(speed_bump_percent(&steps, at("2026-10-31")), 0);
        assert_eq!(speed_bump_percent(&steps, at("2026-11-01")), 5);
        assert_eq!(speed_bump_percent(&steps, at("2026-12-31")), 30);
        assert_eq!(speed_bump_percent(&steps, at("2030-01-01")), 100);
        assert_eq!(speed_bump_percent(&[], at("2030-01-01")), 0);
        assert!(SpeedBumpStep::parse("2026-11-01=101").is_err());
        assert!(SpeedBumpStep::parse("2026-11-31=1").is_err());
        assert!(normalise_schedule(vec![steps[0], steps[0]]).is_err());
    }

    #[test]
    fn the_draw_is_reproducible_and_uniform() {
        assert_eq!(speed_bump_draw("abc123"), speed_bump_draw("abc123"));
        let n = 100_000;
        let refused = (0..n)
            .filter(|i| speed_bump_refuses(&format!("6912f0a1{i:06x}"), 30))
            .count();
        let share = refused as f64 / f64::from(n);
        assert!((share - 0.30).abs() < 0.01, "{share}");
        assert!((0..1000).all(|i| !speed_bump_refuses(&i.to_string(), 0)));
        assert!((0..1000).all(|i| speed_bump_refuses(&i.to_string(), 100)));
    }

    #[test]
    fn send_as_is_case_insensitive() {
        let u = SubmissionUser {
            tenant: TenantId::new("t").unwrap(),
            address: "a@t.test".into(),
            password_hash: String::new(),
            send_as: vec!["sales@t.test".into()],
        };
        assert!(u.may_send_as("A@T.test"));
        assert!(u.may_send_as("sales@t.test"));
        assert!(!u.may_send_as("b@t.test"));
    }
}
