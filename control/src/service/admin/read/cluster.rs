//! What is the cluster's own rather than a tenant's: the cluster view (raft status, members and
//! the edges this node heard from, from what the node thread publishes, without a read index)
//! and the TLS session ticket keys (ids, times and roles only).

use moat_proto::v1;
use tonic::Status;

use super::super::authz::{authorize, Action, Principal};
use super::{Query, Rendered};
use crate::service::Shared;

/// The cluster as this node sees it: raft status, members and the edges it heard from.
pub(crate) fn cluster(shared: &Shared, who: &Principal) -> Result<v1::ClusterStatus, Status> {
    authorize(who, &Action::SeeCluster)?;
    let view = shared.view.borrow().clone();
    let status = view
        .status
        .unwrap_or_else(|| crate::raft::node::Status::unknown(shared.id));
    let mut members: Vec<v1::Member> = status
        .voters
        .iter()
        .map(|id| (id, "voter"))
        .chain(status.learners.iter().map(|id| (id, "learner")))
        .map(|(id, role)| v1::Member {
            id: *id,
            address: view.addresses.get(id).cloned().unwrap_or_default(),
            role: role.into(),
        })
        .collect();
    members.sort_by_key(|m| m.id);
    let edges = shared
        .edges
        .lock()
        .map(|e| {
            e.iter()
                .map(|(id, s)| v1::EdgeStatus {
                    edge_id: id.clone(),
                    applied_version: s.applied,
                    watching: shared.id,
                    last_seen_ms: s.last_seen_ms,
                    digest: s.digest,
                    agreement: s.agreement.as_str().into(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(v1::ClusterStatus {
        node_id: status.id,
        leader_id: status.leader,
        term: status.term,
        commit_index: status.commit,
        applied_index: status.applied,
        policy_version: view.policy_version,
        members,
        edges,
        snapshot_index: status.snapshot_index,
    })
}

/// The TLS session ticket keys in use: the issuing key, then those still accepted, and how
/// often they rotate.
pub(super) fn ticket_keys(q: &Query<'_>, reply: &mut v1::ReadReply) -> Rendered {
    // Ids, times and roles: a secret never leaves the log, the snapshot and the edges.
    if let Some(k) = &q.state.tickets.ticket_keys {
        let row = |key: &moat_shared::TicketKey, role: &str| v1::TicketKeyInfo {
            id: key.name.clone(),
            created_ms: key.created_ms,
            role: role.to_owned(),
        };
        reply.ticket_keys = std::iter::once(row(&k.current, "issuing"))
            .chain(k.previous.iter().map(|p| row(p, "accepting")))
            .collect();
        reply.ticket_rotate_every_ms = k.rotate_every_ms;
    }
    Ok(None)
}
