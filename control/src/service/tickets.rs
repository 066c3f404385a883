//! The leader's ticket key rotation: a task that proposes
//! [`Command::RotateTicketKeys`] with a freshly drawn key when the cluster has no TLS session
//! ticket key yet or the current one is older than the rotation period, and the drawing itself,
//! shared with `moat admin tls tickets rotate` (`admin::write`).
//!
//! Randomness cannot be drawn while applying (replicas must agree), so the proposer draws it and
//! the log carries it, as admin writes carry token secrets.

use std::sync::Arc;
use std::time::Duration;

use moat_shared::tickets::{to_hex, TICKET_KEY_NAME_LEN, TICKET_SECRET_LEN};
use moat_shared::time::now_ms;
use moat_shared::TicketSecret;
use tonic::Status;

use super::Shared;
use crate::state::{Command, State};

/// The log version a rotation needs (the leader waits for every voter to apply it).
const NEEDED: u32 = 4;

/// A rotation command with a new key drawn from the system's randomness: `replaces` for a
/// scheduled rotation (the current key's id, `None` when there is none), `forced` for an
/// operator's.
pub(crate) fn draw(
    rotate_every: Duration,
    replaces: Option<String>,
    forced: bool,
) -> Result<Command, Status> {
    use ring::rand::SecureRandom as _;
    let rng = ring::rand::SystemRandom::new();
    let mut name = [0u8; TICKET_KEY_NAME_LEN];
    let mut key = [0u8; TICKET_SECRET_LEN];
    rng.fill(&mut name)
        .and_then(|()| rng.fill(&mut key))
        .map_err(|_| Status::internal("no randomness for a ticket key"))?;
    Ok(Command::RotateTicketKeys {
        name: to_hex(&name),
        key: TicketSecret::new(key),
        rotate_every_ms: i64::try_from(rotate_every.as_millis()).unwrap_or(i64::MAX),
        replaces,
        forced,
    })
}

/// What the rotation task reads of the state: whether a rotation is due now (cluster time) and
/// the id of the current key.
fn due(state: &State, every: Duration) -> Option<Option<String>> {
    let now = now_ms().saturating_add(state.clock_offset_ms);
    let every = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
    state
        .tickets
        .due(now, every)
        .then(|| state.tickets.current_id().map(str::to_owned))
}

/// On the leader, once every voter applies log version 4 ([`super::duty`]): proposes a
/// rotation with a freshly drawn key when none has happened yet or the current key is older
/// than `shared.ticket_rotate_every`. A proposal that loses a race with another rotation is
/// refused at apply ([`crate::state::tickets`]), so two never stack.
pub(crate) async fn rotate_ticket_keys(shared: Arc<Shared>) {
    let every = shared.ticket_rotate_every;
    super::duty::run(shared, "TLS ticket keys rotated", NEEDED, move |state| {
        let replaces = due(state, every)?;
        draw(every, replaces, false)
            .map_err(|e| tracing::error!("ticket key rotation: {}", e.message()))
            .ok()
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Proposal;

    #[test]
    fn drawn_keys_differ_and_print_no_secret() {
        let a = draw(Duration::from_secs(60), None, false).expect("drawn");
        let b = draw(Duration::from_secs(60), None, false).expect("drawn");
        let (
            Command::RotateTicketKeys {
                name: na,
                key: ka,
                rotate_every_ms,
                ..
            },
            Command::RotateTicketKeys {
                name: nb, key: kb, ..
            },
        ) = (&a, &b)
        else {
            panic!("not rotations");
        };
        assert_ne!(na, nb);
        assert_ne!(ka, kb);
        assert_eq!(na.len(), 32);
        assert_eq!(*rotate_every_ms, 60_000);
        let shown = format!("{a:?}");
        assert!(!shown.contains(&to_hex(ka.expose())), "{shown}");
        let mut s = State::default();
        assert_eq!(due(&s, Duration::from_secs(60)), Some(None));
        s.apply(
            1,
            &Proposal {
                at_ms: now_ms(),
                actor: "system".into(),
                request_id: None,
                command: a.clone(),
            },
        );
        assert_eq!(due(&s, Duration::from_secs(60)), None, "a fresh key");
        assert_eq!(due(&s, Duration::ZERO), Some(Some(na.clone())));
    }
}
