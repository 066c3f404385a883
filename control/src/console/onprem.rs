//! `GET /onprem`: out-of-date on-premises Exchange servers connecting through tenants'
//! connectors (tenant, server, build, class, stage, throttled and blocked minutes per hour, the
//! next stage and its date, the `Received:` line the build was read from, exemption), with each
//! tenant's pause budget (days used and left of 90 this year) and its pause form,
//! `POST /onprem/{tenant}/pause` (fields `reason`, `days`, `csrf`).

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use moat_proto::v1;

use super::layout::{csrf_field, message, page, respond, when, Chrome};
use super::restricted::seg;
use super::table::{render, Grid, Params};
use super::{form, require_change, App};

/// Days a pause lasts when the form does not say (capped by what is left of the budget).
const DEFAULT_PAUSE_DAYS: u32 = 30;

/// The servers' table.
pub(crate) fn grid(servers: &[v1::OnpremServerReport]) -> Grid {
    let mut g = Grid::new(&[
        "Server",
        "Tenant",
        "Build",
        "Class",
        "Stage",
        "Throttle min/h",
        "Block min/h",
        "Next stage",
        "Exempt",
        "Received line (evidence)",
    ]);
    for s in servers {
        let next = if s.next_stage > 0 {
            format!(
                "{} on {} (throttle {}, block {})",
                s.next_stage,
                when(s.next_stage_ms),
                s.next_throttle,
                s.next_block
            )
        } else {
            "-".into()
        };
        let stage = if s.paused {
            format!("{} (paused until {})", s.stage, when(s.paused_until_ms))
        } else {
            s.stage.to_string()
        };
        g.push(
            vec![
                s.server.clone(),
                s.tenant.clone(),
                format!("{} {}", s.product, s.build),
                s.class.clone(),
                stage,
                s.throttle.to_string(),
                s.block.to_string(),
                next,
                if s.exempt {
                    format!("yes: {}", s.exempt_reason)
                } else {
                    "no".into()
                },
                if s.received.is_empty() {
                    "-".into()
                } else {
                    s.received.clone()
                },
            ],
            None,
        );
    }
    g.badges = vec![3];
    g
}

/// One tenant's pause budget and, for those who may change it, the pause form.
pub(crate) fn pause_panel(chrome: &Chrome<'_>, p: &v1::OnpremPauses) -> Markup {
    html! {
        div.panel {
            h2 { (p.tenant) }
            p {
                "Pause budget " (p.year) ": " b { (p.days_used) " days used" } ", " b { (p.days_left) " days left" } " of 90."
                @if p.paused_until_ms > 0 { " Paused until " (when(p.paused_until_ms)) "." }
            }
            @if chrome.can_change() && p.days_left > 0 {
                form method="post" action={"/onprem/" (seg(&p.tenant)) "/pause"} {
                    (csrf_field(chrome.csrf))
                    label for={"days-" (p.tenant)} { "Days (1 to " (p.days_left) ")" }
                    input type="number" id={"days-" (p.tenant)} name="days" min="1" max=(p.days_left)
                        value=(DEFAULT_PAUSE_DAYS.min(p.days_left));
                    label for={"reason-" (p.tenant)} { "Reason (kept in the audit log)" }
                    input type="text" id={"reason-" (p.tenant)} name="reason" required;
                    p { button type="submit" { "Pause enforcement for " (p.tenant) } }
                }
            }
        }
    }
}

/// Most pause panels one page shows; a provider admin reaches any other tenant's with the
/// tenant filter (`?tenant=`).
const PAUSE_PANELS: usize = 20;

/// On-premises connectors read to suggest tenants that can pause (one page of the list, not
/// the estate's connectors).
const CONNECTORS_SAMPLED: u32 = 500;

/// `GET /onprem`: the servers (of one tenant with `?tenant=`), then a pause panel for each
/// tenant with a server or an on-premises connector, at most [`PAUSE_PANELS`]. The page costs
/// the servers' report, one page of connectors and the panels' reads, whatever the estate.
pub(crate) async fn page_get(State(app): State<App>, headers: HeaderMap, uri: Uri) -> Response {
    let cx = match app.signed_in(&headers, "/onprem") {
        Ok(cx) => cx,
        Err(r) => return r,
    };
    let params = Params::parse(uri.query());
    let own = cx.own_tenant();
    let tenant = if own.is_empty() {
        params.get("tenant").trim().to_owned()
    } else {
        own.clone()
    };
    let mut truncated = false;
    let servers = match app
        .read(&cx.who, v1::ReadKind::OnpremServers, &tenant, "", 0)
        .await
    {
        Ok(r) => {
            truncated |= super::truncated(&r);
            r.onprem_servers
        }
        Err(s) => return app.status_page(&cx, &s),
    };
    // Tenants with servers, or with an on-premises connector through which servers will
    // connect, can pause. One tenant's page has its own panel whatever it holds.
    let mut tenants: BTreeSet<String> = servers.iter().map(|s| s.tenant.clone()).collect();
    let mut more = false;
    if tenant.is_empty() {
        match app
            .read_page(&cx.who, v1::ReadKind::Connector, "", "", CONNECTORS_SAMPLED)
            .await
        {
            Ok(r) => {
                more |= !r.next_page_token.is_empty();
                tenants.extend(
                    r.connectors
                        .iter()
                        .filter(|c| c.kind == v1::ConnectorKind::OnPremises as i32)
                        .map(|c| c.tenant.clone()),
                );
            }
            Err(s) => return app.status_page(&cx, &s),
        }
    } else {
        tenants.insert(tenant.clone());
    }
    more |= tenants.len() > PAUSE_PANELS;
    let mut budgets = Vec::new();
    for t in tenants.iter().take(PAUSE_PANELS) {
        match app
            .read(&cx.who, v1::ReadKind::OnpremPauses, t, "", 0)
            .await
        {
            Ok(r) => budgets.push(r.onprem_pauses.unwrap_or_default()),
            Err(s) => return app.status_page(&cx, &s),
        }
    }
    let chrome = cx.chrome();
    let body = html! {
        h1 { "On-premises servers" }
        p.lead { "Exchange servers connecting through on-premises connectors, with their build against the baseline. Out-of-date servers are throttled, then blocked, stage by stage; a pause stops that for a tenant (90 days a year at most) while the servers are updated." }
        @if params.get("done") == "paused" { div.notice { "Enforcement paused." } }
        @if own.is_empty() {
            form.toolbar method="get" {
                input type="search" name="tenant" value=(tenant) placeholder="Every tenant" aria-label="Tenant";
                button.secondary type="submit" { "Show" }
                @if !tenant.is_empty() { a href="/onprem" { "Every tenant" } }
            }
        }
        @if truncated { (super::layout::truncated("the servers")) }
        (render(&grid(&servers), &params, "No on-premises server has connected: servers appear here once mail arrives through an on-premises connector with a Received line that names an Exchange build."))
        h2 { "Enforcement pauses" }
        @if budgets.is_empty() {
            div.empty { "No tenant has an on-premises connector or server, so there is nothing to pause." }
        }
        @if more {
            div.notice { "Pauses are shown for " (budgets.len()) " tenants; more tenants have on-premises servers or connectors. Show one tenant with the filter above to pause it." }
        }
        @for b in &budgets { (pause_panel(&chrome, b)) }
    };
    respond(
        StatusCode::OK,
        page("On-premises servers", Some(&chrome), body),
    )
}

/// `POST /onprem/{tenant}/pause`.
pub(crate) async fn pause(
    State(app): State<App>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    let fields = form(&body);
    let cx = match app.posted(&headers, &fields, "/onprem") {
        Ok(cx) => cx,
        Err(r) => return r,
    };
    if let Err(r) = require_change(&cx) {
        return r;
    }
    // Visible to this principal (404 for another tenant's admin), and the budget left.
    let budget = match app
        .read(&cx.who, v1::ReadKind::OnpremPauses, &tenant, "", 0)
        .await
    {
        Ok(r) => r.onprem_pauses.unwrap_or_default(),
        Err(s) => return app.status_page(&cx, &s),
    };
    let reason = fields.get("reason").map(|r| r.trim()).unwrap_or_default();
    if reason.is_empty() {
        return message(
            StatusCode::BAD_REQUEST,
            "A reason is required",
            "Say why enforcement is paused (it is kept in the audit log), then submit again.",
            Some(&cx.chrome()),
        );
    }
    let days = match fields
        .get("days")
        .map(|d| d.trim())
        .filter(|d| !d.is_empty())
    {
        None => DEFAULT_PAUSE_DAYS.min(budget.days_left),
        Some(d) => match d.parse::<u32>() {
            Ok(n) if (1..=90).contains(&n) => n,
            _ => {
                return message(
                    StatusCode::BAD_REQUEST,
                    "Not paused",
                    "Days must be a whole number from 1 to 90.",
                    Some(&cx.chrome()),
                )
            }
        },
    };
    let op = v1::write_request::Op::PauseOnprem(v1::OnpremPause {
        tenant,
        days,
        reason: reason.to_owned(),
    });
    match app.change(&cx, op).await {
        Ok(_) => Redirect::to("/onprem?done=paused").into_response(),
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::admin::authz::Principal;
    use crate::state::Role;

    #[test]
    fn servers_and_budget_render_with_the_pause_form() {
        let s = v1::OnpremServerReport {
            tenant: "contoso.test".into(),
            server: "EX01".into(),
            build: "15.1.2507.6".into(),
            product: "Exchange 2016".into(),
            class: "unsupported".into(),
            stage: 2,
            throttle: 10,
            next_stage: 3,
            next_throttle: 20,
            next_stage_ms: 1_700_000_000_000,
            received: "from EX01 (10.0.0.1) by mail.contoso.test (15.1.2507.6)".into(),
            ..Default::default()
        };
        let html = render(&grid(&[s]), &Params::default(), "").into_string();
        assert!(html.contains("EX01") && html.contains("Exchange 2016 15.1.2507.6"));
        assert!(html.contains("3 on 2023-11-14 22:13 UTC (throttle 20, block 0)"));
        assert!(html.contains("from EX01 (10.0.0.1)"));
        let who = Principal {
            name: "t".into(),
            role: Role::TenantAdmin,
            tenant: moat_shared::TenantId::new("contoso.test").ok(),
        };
        let chrome = Chrome {
            who: &who,
            node: 1,
            leader: 1,
            csrf: "K",
            active: "/onprem",
        };
        let p = v1::OnpremPauses {
            tenant: "contoso.test".into(),
            year: 2026,
            days_used: 70,
            days_left: 20,
            ..Default::default()
        };
        let html = pause_panel(&chrome, &p).into_string();
        assert!(html.contains("70 days used") && html.contains("20 days left"));
        assert!(html.contains(r#"action="/onprem/contoso.test/pause""#));
        assert!(
            html.contains(r#"value="20""#),
            "capped by the budget: {html}"
        );
        assert!(html.contains(r#"name="csrf" value="K""#));
    }
}
