//! `moat admin cluster`: control-plane membership and the contacted node's view of the cluster.

use std::fmt::Write as _;

use moat_proto::write_request::Op;
use moat_proto::ClusterStatus;
use moat_shared::time::now_ms;
use serde_json::{json, Value};

use super::render::{cell, fmt_ago, out, print_json, render_table};
use super::{Ctx, Output};
use crate::client::Failure;

#[derive(clap::Subcommand, Debug)]
pub(super) enum ClusterCmd {
    /// Show the contacted node's view of the cluster.
    Status,
    /// Add a control node (as a learner first, when the control plane does so).
    AddNode {
        /// Its raft id.
        id: u64,
        /// The address it serves gRPC on.
        address: String,
    },
    /// Remove a control node.
    RemoveNode {
        /// Its raft id.
        id: u64,
    },
}

impl Ctx {
    pub(super) async fn cluster(&self, cmd: ClusterCmd) -> Result<(), Failure> {
        match cmd {
            ClusterCmd::Status => {
                let status = self.client.cluster().await?;
                match self.output {
                    Output::Json => print_json(&cluster_json(&status)),
                    Output::Table => out(render_cluster(&status, now_ms()).trim_end()),
                }
                Ok(())
            }
            ClusterCmd::AddNode { id, address } => {
                self.write(Op::AddNode(moat_proto::NodeRef { id, address }))
                    .await
            }
            ClusterCmd::RemoveNode { id } => self.write(Op::RemoveNode(id)).await,
        }
    }
}

pub(super) fn cluster_json(s: &ClusterStatus) -> Value {
    json!({
        "node-id": s.node_id,
        "leader-id": s.leader_id,
        "term": s.term,
        "commit-index": s.commit_index,
        "applied-index": s.applied_index,
        "policy-version": s.policy_version,
        "snapshot-index": s.snapshot_index,
        "members": s.members.iter().map(|m| json!({
            "id": m.id,
            "address": m.address,
            "role": m.role,
        })).collect::<Vec<_>>(),
        "edges": s.edges.iter().map(|e| json!({
            "edge-id": e.edge_id,
            "applied-version": e.applied_version,
            "watching": e.watching,
            "last-seen-ms": e.last_seen_ms,
            "digest": format!("{:016x}", e.digest),
            "agreement": agreement(e),
        })).collect::<Vec<_>>(),
    })
}

/// Whether the edge enforces what the control plane published at its version; an edge or a
/// node of the previous release says nothing, which reads as `unknown`.
fn agreement(e: &moat_proto::EdgeStatus) -> &str {
    if e.agreement.is_empty() {
        "unknown"
    } else {
        &e.agreement
    }
}

pub(super) fn render_cluster(s: &ClusterStatus, now_ms: i64) -> String {
    let leader = if s.leader_id == 0 {
        "none (no leader elected)".to_string()
    } else {
        match s.members.iter().find(|m| m.id == s.leader_id) {
            Some(m) if !m.address.is_empty() => format!("{} ({})", s.leader_id, m.address),
            _ => s.leader_id.to_string(),
        }
    };
    let mut out = String::new();
    let fields = [
        ("Node ID", s.node_id.to_string()),
        ("Leader", leader),
        ("Term", s.term.to_string()),
        ("Commit index", s.commit_index.to_string()),
        ("Applied index", s.applied_index.to_string()),
        ("Policy version", s.policy_version.to_string()),
        ("Snapshot index", s.snapshot_index.to_string()),
    ];
    for (k, v) in fields {
        let _ = writeln!(out, "{:<16}{v}", format!("{k}:"));
    }
    out.push_str("\nMEMBERS\n");
    if s.members.is_empty() {
        out.push_str("<none>\n");
    } else {
        let rows: Vec<Vec<String>> = s
            .members
            .iter()
            .map(|m| vec![m.id.to_string(), cell(&m.address), cell(&m.role)])
            .collect();
        out.push_str(&render_table(&["ID", "ADDRESS", "ROLE"], &rows));
    }
    out.push_str("\nEDGES\n");
    if s.edges.is_empty() {
        out.push_str("<none>\n");
    } else {
        let rows: Vec<Vec<String>> = s
            .edges
            .iter()
            .map(|e| {
                vec![
                    cell(&e.edge_id),
                    e.applied_version.to_string(),
                    agreement(e).to_owned(),
                    e.watching.to_string(),
                    fmt_ago(now_ms, e.last_seen_ms),
                ]
            })
            .collect();
        out.push_str(&render_table(
            &["EDGE", "APPLIED-VERSION", "POLICY", "WATCHING", "LAST-SEEN"],
            &rows,
        ));
        let disagreeing = s.edges.iter().filter(|e| e.agreement == "mismatch").count();
        if disagreeing > 0 {
            let _ = writeln!(
                out,
                "\n{disagreeing} edge(s) enforce a policy whose digest differs from this node's \
                 for the same version; they resync by themselves"
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_status_renders_members_and_edges() {
        let s = ClusterStatus {
            node_id: 1,
            leader_id: 2,
            term: 3,
            commit_index: 10,
            applied_index: 9,
            policy_version: 8,
            members: vec![
                moat_proto::Member {
                    id: 1,
                    address: "127.0.0.1:7001".into(),
                    role: "voter".into(),
                },
                moat_proto::Member {
                    id: 2,
                    address: "127.0.0.1:7002".into(),
                    role: "voter".into(),
                },
            ],
            edges: vec![moat_proto::EdgeStatus {
                edge_id: "edge-1".into(),
                applied_version: 8,
                watching: 1,
                last_seen_ms: 7_000,
                digest: 0xab,
                agreement: "match".into(),
            }],
            snapshot_index: 4,
        };
        let text = render_cluster(&s, 10_000);
        assert!(text.contains("Leader:         2 (127.0.0.1:7002)\n"));
        assert!(text.contains("ID  ADDRESS         ROLE\n1   127.0.0.1:7001  voter\n"));
        assert!(text.contains("EDGE    APPLIED-VERSION  POLICY  WATCHING  LAST-SEEN\n"));
        assert!(text.contains("edge-1  8                match   1         3s ago\n"));
        assert!(!text.contains("differs"));
        let v = cluster_json(&s);
        assert_eq!(v["leader-id"], 2);
        assert_eq!(v["edges"][0]["edge-id"], "edge-1");
        assert_eq!(v["edges"][0]["digest"], "00000000000000ab");
        assert_eq!(v["edges"][0]["agreement"], "match");
    }
}
