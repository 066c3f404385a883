//! The leader's periodic duties: once a second, on the leader and only when every voter applies
//! the log version the duty's commands need, ask the state whether a command is due and propose
//! it as `system`. A proposal that loses a race with another leader's is refused at apply, so
//! a duty's change happens once. The duties: ticket key rotation ([`super::tickets`]) and the
//! changes that wait for a rolling upgrade to finish ([`super::upgrade`]).

use std::sync::Arc;
use std::time::Duration;

use moat_shared::time::now_ms;
use tokio::sync::oneshot;

use super::Shared;
use crate::raft::{Req, REQUEST_TIMEOUT};
use crate::state::{Command, Proposal, State};

/// Runs the duty `what` until the task is aborted: every second, when this node leads and every
/// voter applies log version `needed`, `due` is asked (on the node thread, against the state)
/// for the command to propose, if any.
pub(crate) async fn run<F>(shared: Arc<Shared>, what: &'static str, needed: u32, due: F)
where
    F: Fn(&State) -> Option<Command> + Clone + Send + 'static,
{
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
        if !leader || !super::admin::write::voters_apply(&shared, needed) {
            continue;
        }
        let (tx, rx) = oneshot::channel();
        let due = due.clone();
        shared.send(Req::Read(
            true,
            Box::new(move |state: &State| {
                let _ = tx.send(due(state));
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
                Ok(summary) => tracing::info!("{what}: {summary}"),
                Err(e) => tracing::debug!("{what} not applied: {e}"),
            },
            Err(e) => tracing::debug!("{what} not proposed: {}", e.message()),
        }
    }
}
