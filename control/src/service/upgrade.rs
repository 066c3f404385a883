//! Changes that wait for a rolling upgrade to finish: the leader proposes them once every
//! voter runs this release (applies log version [`NEEDED`]), never before, so that every node
//! makes the change at the same log index.
//!
//! One such change today: [`Command::AdoptStageDefaults`], which makes the best-sourced
//! built-in on-premises stage table (stages 6 and 7 block only) the one a cluster without a
//! table of its own applies. Until it is committed every node applies the previous release's
//! built-in table, as nodes of that release do, so replicas record the same stage alerts and
//! edges enforce the same minutes whichever node they watch. A fresh cluster adopts it within
//! a second or two of electing a leader.

use std::sync::Arc;
use std::time::Duration;

use moat_shared::time::now_ms;
use tokio::sync::oneshot;

use super::Shared;
use crate::raft::{Req, REQUEST_TIMEOUT};
use crate::state::{Command, Proposal, State};

/// The log version the changes here need.
const NEEDED: u32 = 4;

/// The change the state still waits for, if any.
fn pending(state: &State) -> Option<Command> {
    (!state.onprem.reference_2026).then_some(Command::AdoptStageDefaults)
}

/// On the leader, once every voter applies log version [`NEEDED`]: proposes each change the
/// state still waits for. Checks every second; a proposal that loses a race with another
/// leader's is refused at apply, so the change happens once.
pub(crate) async fn propose_upgrades(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let leader = shared
            .view
            .borrow()
            .status
            .as_ref()
            .is_some_and(|s| s.leader == shared.id);
        if !leader || !super::admin::write::voters_apply(&shared, NEEDED) {
            continue;
        }
        let (tx, rx) = oneshot::channel();
        shared.send(Req::Read(
            true,
            Box::new(move |state: &State| {
                let _ = tx.send(pending(state));
            }),
        ));
        let Ok(Ok(Some(command))) = tokio::time::timeout(REQUEST_TIMEOUT, rx).await else {
            continue;
        };
        let p = Proposal {
            at_ms: now_ms(),
            actor: "system".into(),
            request_id: None,
            command,
        };
        match shared.ask(|r| Req::Propose(p, r)).await {
            Ok(o) => match o.result {
                Ok(summary) => tracing::info!("upgrade completed: {summary}"),
                Err(e) => tracing::debug!("upgrade change not applied: {e}"),
            },
            Err(e) => tracing::debug!("upgrade change not proposed: {}", e.message()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stage_defaults_are_proposed_until_adopted() {
        let mut s = State::default();
        assert!(matches!(pending(&s), Some(Command::AdoptStageDefaults)));
        let p = Proposal {
            at_ms: 1,
            actor: "system".into(),
            request_id: None,
            command: Command::AdoptStageDefaults,
        };
        assert!(s.apply(1, &p).result.is_ok());
        assert!(pending(&s).is_none());
        assert_eq!(Command::AdoptStageDefaults.log_version(), NEEDED);
    }
}
