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

use super::Shared;
use crate::state::{Command, State};

/// The log version the changes here need.
const NEEDED: u32 = 4;

/// The change the state still waits for, if any.
fn pending(state: &State) -> Option<Command> {
    (!state.onprem.reference_2026).then_some(Command::AdoptStageDefaults)
}

/// On the leader, once every voter applies log version [`NEEDED`]: proposes each change the
/// state still waits for ([`super::duty`]).
pub(crate) async fn propose_upgrades(shared: Arc<Shared>) {
    super::duty::run(shared, "upgrade completed", NEEDED, pending).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Proposal;

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
