//! TLS session ticket keys ([`Tickets`]): the key edges seal tickets with and the one before
//! it, which they still accept.
//!
//! Keys are drawn by the leader (randomness has no place in a replicated state machine) and
//! carried by [`Command::RotateTicketKeys`](super::Command::RotateTicketKeys); applying one
//! makes the new key the current one, the current one the previous one, and drops the key
//! before that. So a ticket resumes across one rotation and is refused after two, and a
//! snapshot holds two keys at most. A key is made at the entry's time, so replicas agree.

use moat_shared::tickets::{TicketKey, TicketKeys, TicketSecret};
use serde::{Deserialize, Serialize};

use super::{Kind, Rejection};

/// The ticket keys as the state holds them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyring {
    /// The key that issues tickets.
    pub current: TicketKey,
    /// The key before it, still accepted.
    #[serde(default)]
    pub previous: Option<TicketKey>,
    /// The rotation period the last rotation was proposed under (ms): tickets' lifetime.
    pub rotate_every_ms: i64,
}

/// The ticket keys part of the state. Absent from a snapshot until the first rotation, so a
/// snapshot of a cluster that never rotated reads and re-encodes as before.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tickets {
    /// The keys; `None` before the first rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_keys: Option<Keyring>,
}

/// A rotation as [`Command::RotateTicketKeys`](super::Command::RotateTicketKeys) carries it.
#[derive(Clone, Debug)]
pub struct Rotation<'a> {
    /// The new key's name, 32 hex digits.
    pub name: &'a str,
    /// The new key's secret.
    pub key: &'a TicketSecret,
    /// The rotation period of the proposing leader (ms).
    pub rotate_every_ms: i64,
    /// For a scheduled rotation: the id of the current key it replaces (`None`: there is
    /// none). A scheduled rotation that finds another current key was overtaken (by a forced
    /// one, or by the same leader's earlier proposal) and is refused, so two proposals never
    /// rotate twice.
    pub replaces: Option<&'a str>,
    /// An operator's rotation: applies whatever the current key.
    pub forced: bool,
}

impl Tickets {
    /// The id of the current key, if any.
    pub fn current_id(&self) -> Option<&str> {
        self.ticket_keys.as_ref().map(|k| k.current.name.as_str())
    }

    /// Whether the leader owes a rotation at `now_ms` under a period of `every_ms`: no key
    /// yet, or the current one is at least that old.
    pub fn due(&self, now_ms: i64, every_ms: i64) -> bool {
        self.ticket_keys
            .as_ref()
            .is_none_or(|k| now_ms.saturating_sub(k.current.created_ms) >= every_ms)
    }

    /// Applies a rotation at `now_ms`.
    pub fn rotate(&mut self, r: &Rotation<'_>, now_ms: i64) -> Result<String, Rejection> {
        let invalid = |reason: &str| Rejection::Invalid {
            subject: Kind::TicketKeys,
            reason: reason.into(),
        };
        if moat_shared::tickets::from_hex::<{ moat_shared::tickets::TICKET_KEY_NAME_LEN }>(r.name)
            .is_none()
        {
            return Err(invalid("a ticket key's name is 32 hex digits"));
        }
        if r.rotate_every_ms <= 0 {
            return Err(invalid("the rotation period must be positive"));
        }
        if !r.forced && self.current_id() != r.replaces {
            return Err(Rejection::conflict(
                Kind::TicketKeys,
                "the ticket keys were rotated meanwhile",
            ));
        }
        if self.ticket_keys.iter().any(|k| {
            k.current.name == r.name || k.previous.as_ref().is_some_and(|p| p.name == r.name)
        }) {
            return Err(Rejection::AlreadyExists {
                kind: Kind::TicketKeys,
                name: r.name.to_owned(),
            });
        }
        let key = TicketKey {
            name: r.name.to_owned(),
            secret: r.key.clone(),
            created_ms: now_ms,
        };
        let previous = self.ticket_keys.take().map(|k| k.current);
        let summary = match &previous {
            Some(p) => format!(
                "ticket key {} issues; {} still accepted until the next rotation",
                r.name, p.name
            ),
            None => format!("ticket key {} issues", r.name),
        };
        self.ticket_keys = Some(Keyring {
            current: key,
            previous,
            rotate_every_ms: r.rotate_every_ms,
        });
        Ok(summary)
    }

    /// The keys as edges use them.
    pub fn for_edges(&self) -> TicketKeys {
        match &self.ticket_keys {
            Some(k) => TicketKeys {
                issuing: Some(k.current.clone()),
                accepting: k.previous.iter().cloned().collect(),
                lifetime_ms: k.rotate_every_ms,
            },
            None => TicketKeys::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::state::testutil::*;
    use crate::state::*;
    use moat_shared::TicketSecret;

    fn rotate(n: u8, replaces: Option<&str>, forced: bool) -> Command {
        Command::RotateTicketKeys {
            name: format!("{n:032x}"),
            key: TicketSecret::new([n; 32]),
            rotate_every_ms: 1000,
            replaces: replaces.map(str::to_owned),
            forced,
        }
    }

    #[test]
    fn a_rotation_keeps_the_current_key_and_drops_the_one_before() {
        let mut s = State::default();
        assert!(s.tickets.due(0, 1000));
        assert!(s.apply(1, &p(10, rotate(1, None, false))).result.is_ok());
        assert_eq!(s.policy_version, 1, "edges get the keys");
        let k = s.tickets.for_edges();
        assert_eq!(k.issuing.as_ref().map(|k| k.created_ms), Some(10));
        assert!(k.accepting.is_empty());
        assert_eq!(k.lifetime_ms, 1000);
        assert!(!s.tickets.due(500, 1000));
        assert!(s.tickets.due(1010, 1000));
        let first = format!("{:032x}", 1);
        assert!(s
            .apply(2, &p(20, rotate(2, Some(&first), false)))
            .result
            .is_ok());
        assert!(s.apply(3, &p(30, rotate(3, None, true))).result.is_ok());
        let k = s.tickets.for_edges();
        let ids: Vec<_> = k.all().map(|k| k.name.clone()).collect();
        assert_eq!(ids, [format!("{:032x}", 3), format!("{:032x}", 2)]);
        // The audit log names keys, never their bytes.
        let last = &s.audit.records.back().expect("audited").action;
        assert!(last.contains(&format!("{:032x}", 3)), "{last}");
        assert!(!last.contains(&"03".repeat(32)), "{last}");
    }

    #[test]
    fn a_scheduled_rotation_overtaken_by_another_is_refused() {
        let mut s = State::default();
        s.apply(1, &p(10, rotate(1, None, false)));
        // A second scheduled proposal made before the first applied.
        let again = s.apply(2, &p(11, rotate(2, None, false)));
        assert_eq!(
            again.result.unwrap_err().to_string(),
            "the ticket keys were rotated meanwhile"
        );
        assert_eq!(s.policy_version, 1);
        let dup = s.apply(3, &p(12, rotate(1, None, true)));
        assert!(dup.result.is_err(), "a key name is never reused");
        let bad = s.apply(
            4,
            &p(
                13,
                Command::RotateTicketKeys {
                    name: "xyz".into(),
                    key: TicketSecret::new([0; 32]),
                    rotate_every_ms: 1000,
                    replaces: None,
                    forced: true,
                },
            ),
        );
        assert!(bad.result.is_err());
    }

    #[test]
    fn replaying_the_log_gives_the_same_keys_and_snapshot() {
        let log = [
            p(10, rotate(1, None, false)),
            p(20, rotate(2, Some(&format!("{:032x}", 1)), false)),
            p(25, rotate(9, None, false)),
            p(30, rotate(3, None, true)),
        ];
        let run = || {
            let mut s = State::default();
            for (i, e) in log.iter().enumerate() {
                s.apply(i as u64 + 1, e);
            }
            s
        };
        let (a, b) = (run(), run());
        assert_eq!(a, b);
        let json = serde_json::to_vec(&a).expect("encodes");
        let back: State = serde_json::from_slice(&json).expect("decodes");
        assert_eq!(back, a);
        assert_eq!(back.tickets.for_edges(), a.tickets.for_edges());
        // The log entry itself round-trips (the key travels as hex in the log).
        let entry = serde_json::to_string(&log[0]).expect("encodes");
        let again: Proposal = serde_json::from_str(&entry).expect("decodes");
        let mut c = State::default();
        c.apply(1, &again);
        let mut d = State::default();
        d.apply(1, &log[0]);
        assert_eq!(c, d);
        // A state without keys writes nothing for them.
        let empty = serde_json::to_string(&State::default()).expect("encodes");
        assert!(!empty.contains("ticket_keys"), "{empty}");
    }
}
