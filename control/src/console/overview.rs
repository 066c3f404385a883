//! `GET /`: the overview: cluster health (this node, the leader, term, commit), the members,
//! the edges with the policy version each enforces and whether it matches this node's, and
//! counts of restricted entities and recent alerts. Tenant admins do not see the cluster (as
//! with `moat admin cluster status`): they get their tenant's counts.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::{html, Markup};
use moat_proto::v1;

use super::layout::{page as shell, respond, when, Chrome};
use super::table::{render, Grid, Params};
use super::App;
use crate::service::admin::read;
use crate::state::Role;

/// An alert counts as recent for this long.
const RECENT_MS: i64 = 7 * 86_400_000;

/// What the overview shows.
pub(crate) struct Overview {
    /// The cluster, for operators and readers.
    pub(crate) cluster: Option<v1::ClusterStatus>,
    /// Restricted connectors and users visible to the principal.
    pub(crate) restricted: usize,
    /// Alerts of the last 7 days visible to the principal.
    pub(crate) recent_alerts: usize,
    /// Now on the cluster clock.
    pub(crate) now_ms: i64,
    /// Whether the counts stop short: a merged read stopped with more left
    /// ([`super::truncated`]).
    pub(crate) truncated: bool,
}

/// `GET /`.
pub(crate) async fn page(State(app): State<App>, headers: HeaderMap) -> Response {
    let cx = match app.signed_in(&headers, "/") {
        Ok(cx) => cx,
        Err(r) => return r,
    };
    let tenant = cx.own_tenant();
    let cluster = if cx.who.role == Role::TenantAdmin {
        None
    } else {
        read::cluster(&app.shared, &cx.who).ok()
    };
    let restricted = app
        .read(&cx.who, v1::ReadKind::Restricted, &tenant, "", 0)
        .await;
    let alerts = app
        .read(&cx.who, v1::ReadKind::Alerts, &tenant, "", 0)
        .await;
    let (restricted, alerts) = match (restricted, alerts) {
        (Ok(r), Ok(a)) => (r, a),
        (Err(s), _) | (_, Err(s)) => return app.status_page(&cx, &s),
    };
    let now_ms = alerts.cluster_now_ms;
    let o = Overview {
        cluster,
        restricted: restricted.restricted.len(),
        recent_alerts: alerts
            .alerts
            .iter()
            .filter(|a| a.at_ms >= now_ms - RECENT_MS)
            .count(),
        now_ms,
        truncated: super::truncated(&restricted) || super::truncated(&alerts),
    };
    let chrome = cx.chrome();
    respond(
        StatusCode::OK,
        shell("Overview", Some(&chrome), body(&chrome, &o)),
    )
}

/// The overview's body.
pub(crate) fn body(chrome: &Chrome<'_>, o: &Overview) -> Markup {
    let healthy = o
        .cluster
        .as_ref()
        .map(|c| c.leader_id != 0 && c.edges.iter().all(|e| e.agreement != "mismatch"));
    let grids = o.cluster.as_ref().map(|c| {
        let mut members = Grid::new(&["Node", "Address", "Role", "Leader"]);
        for m in &c.members {
            let leader = if m.id == c.leader_id { "yes" } else { "no" };
            members.push(
                vec![
                    m.id.to_string(),
                    m.address.clone(),
                    m.role.clone(),
                    leader.into(),
                ],
                None,
            );
        }
        members.badges = vec![2, 3];
        let mut edges = Grid::new(&[
            "Edge",
            "Policy version",
            "Agreement",
            "Watching node",
            "Last seen",
        ]);
        for e in &c.edges {
            edges.push(
                vec![
                    e.edge_id.clone(),
                    e.applied_version.to_string(),
                    e.agreement.clone(),
                    e.watching.to_string(),
                    when(e.last_seen_ms),
                ],
                None,
            );
        }
        edges.badges = vec![2];
        (members, edges)
    });
    html! {
        h1 { "Overview" }
        @if o.truncated { (super::layout::truncated("the restricted entities and alerts")) }
        p.lead {
            @match healthy {
                Some(true) => { span.badge.ok { "Healthy" } " The cluster has a leader and every edge enforces the published policy." }
                Some(false) => { span.badge.bad { "Attention" } " The cluster has no leader, or an edge enforces a policy that differs from this node's." }
                None => { "Your tenant at a glance." }
            }
        }
        div.cards {
            @if let Some(c) = &o.cluster {
                div.card { div.k { "Leader" } div.v { @if c.leader_id == 0 { "none" } @else { "node " (c.leader_id) } } }
                div.card { div.k { "Policy version" } div.v { (c.policy_version) } }
                div.card { div.k { "Term · commit" } div.v { (c.term) " · " (c.commit_index) } }
                div.card { div.k { "Edges" } div.v { (c.edges.len()) } }
            }
            div.card { div.k { "Restricted entities" } div.v { a href="/restricted" { (o.restricted) } } }
            div.card { div.k { "Alerts, last 7 days" } div.v { a href="/alerts" { (o.recent_alerts) } } }
        }
        p.muted-text { "Cluster clock: " (when(o.now_ms)) }
        @if let (Some(c), Some((members, edges))) = (&o.cluster, &grids) {
            h2 { "Members" }
            (render(members, &Params::default(), "No member is known yet: the node has not joined a cluster."))
            h2 { "Edges" }
            p.muted-text { "As node " (chrome.node) " sees them: the edges that watch it or sent it counters. Policy version here: " (c.policy_version) "." }
            (render(edges, &Params::default(), "No edge has been heard from by this node: edges appear here once they watch its policy or send it counters."))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::admin::authz::Principal;

    #[test]
    fn shows_members_edges_and_agreement() {
        let who = Principal {
            name: "operator".into(),
            role: Role::Operator,
            tenant: None,
        };
        let chrome = Chrome {
            who: &who,
            node: 1,
            leader: 1,
            csrf: "c",
            active: "/",
        };
        let o = Overview {
            cluster: Some(v1::ClusterStatus {
                node_id: 1,
                leader_id: 1,
                policy_version: 42,
                members: vec![v1::Member {
                    id: 1,
                    address: "127.0.0.1:7400".into(),
                    role: "voter".into(),
                }],
                edges: vec![v1::EdgeStatus {
                    edge_id: "edge-1".into(),
                    applied_version: 41,
                    watching: 1,
                    last_seen_ms: 1_700_000_000_000,
                    digest: 1,
                    agreement: "mismatch".into(),
                }],
                ..Default::default()
            }),
            restricted: 3,
            recent_alerts: 2,
            now_ms: 0,
            truncated: true,
        };
        let html = body(&chrome, &o).into_string();
        assert!(html.contains("edge-1"));
        assert!(
            html.contains(r#"<span class="badge bad">mismatch</span>"#),
            "{html}"
        );
        assert!(html.contains("Attention"));
        assert!(
            html.contains("Only part of the restricted entities"),
            "{html}"
        );
        assert!(html.contains("127.0.0.1:7400"));
        assert!(!html.contains('{'), "no JSON on the page");
    }
}
