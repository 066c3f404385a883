//! Restricted entities: `GET /restricted` (connectors and users restricted: entity, tenant,
//! why with the figures that tripped the detector or the limit, since when, until when; one
//! admin page at a time, see [`paged`]), the
//! detail pages `GET /restricted/connector/{tenant}/{name}` and `GET /restricted/user/{address}`
//! with the recommendations and the Unblock panel, and their `POST .../unblock` (a required
//! `reason`), made through the admin service's `unblock` write.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use moat_proto::v1;

use super::layout::{csrf_field, not_found, page, respond, when, Chrome};
use super::table::{paged, Grid, Params, ADMIN_PAGE};
use super::{form, require_change, App, Cx};

/// A path segment, percent-encoded (everything but unreserved characters).
pub(crate) fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where an entity's detail page is.
pub(crate) fn detail_link(e: &v1::RestrictedEntity) -> String {
    match e.kind.as_str() {
        "user" => format!("/restricted/user/{}", seg(&e.name)),
        _ => format!("/restricted/connector/{}/{}", seg(&e.tenant), seg(&e.name)),
    }
}

/// The list's table.
pub(crate) fn grid(entities: &[v1::RestrictedEntity]) -> Grid {
    let mut g = Grid::new(&["Entity", "Kind", "Tenant", "Why", "Since", "Lifts"]);
    for e in entities {
        g.push(
            vec![
                e.name.clone(),
                e.kind.clone(),
                e.tenant.clone(),
                e.reason.clone(),
                when(e.since_ms),
                if e.until_ms > 0 {
                    when(e.until_ms)
                } else {
                    "when unblocked".into()
                },
            ],
            Some(detail_link(e)),
        );
    }
    g
}

/// `GET /restricted`.
pub(crate) async fn list(State(app): State<App>, headers: HeaderMap, uri: Uri) -> Response {
    let cx = match app.signed_in(&headers, "/restricted") {
        Ok(cx) => cx,
        Err(r) => return r,
    };
    let params = Params::parse(uri.query());
    let reply = match app
        .read_page(
            &cx.who,
            v1::ReadKind::Restricted,
            &cx.own_tenant(),
            params.get("after"),
            ADMIN_PAGE,
        )
        .await
    {
        Ok(r) => r,
        Err(s) => return app.status_page(&cx, &s),
    };
    let body = html! {
        h1 { "Restricted entities" }
        p.lead { "Connectors and SMTP AUTH users that Moat stopped accepting mail from, with what tripped the detector or the sending limit. Select one to read the recommendations and unblock it." }
        @if params.get("done") == "unblocked" {
            div.notice { "Unblocked. Every edge accepts mail from it again once it applies the new policy (seconds)." }
        }
        (paged(&grid(&reply.restricted), &params, &reply.next_page_token,
            "Nothing is restricted: connectors that look compromised and users over their sending limits appear here.",
            "moat admin restricted list"))
    };
    respond(
        StatusCode::OK,
        page("Restricted entities", Some(&cx.chrome()), body),
    )
}

/// What an admin should check before unblocking an entity of `kind`.
fn recommendations(kind: &str) -> Markup {
    if kind == "user" {
        html! {
            ul {
                li { "Treat the account as compromised until shown otherwise: reset its password and revoke any app passwords." }
                li { "Review what it sent recently, its forwarding and inbox rules, and the clients that signed in as it." }
                li { "If the volume was legitimate, raise the tenant's sending limits rather than unblocking repeatedly." }
                li { "Unblocking lets the user send through every edge at once; going over the limit again restricts it again." }
            }
        }
    } else {
        html! {
            ul {
                li { "Check the servers behind the connector (its sender IP addresses or TLS certificate) for compromise, open relaying or a misconfigured application." }
                li { "Look at the volume and the sender domains it relayed: the figures above are what tripped the detector." }
                li { "Make sure the connector names only your own servers' addresses or certificate." }
                li { "Unblocking lets mail through this connector on every edge at once; if the behaviour continues it is restricted again." }
            }
        }
    }
}

/// A detail page with its Unblock panel.
fn detail(chrome: &Chrome<'_>, e: &v1::RestrictedEntity) -> Markup {
    let what = if e.kind == "user" {
        "User"
    } else {
        "Connector"
    };
    html! {
        p { a href="/restricted" { "← Restricted entities" } }
        h1 { (what) " " (e.name) }
        div.panel {
            dl.facts {
                dt { "Tenant" } dd { (e.tenant) }
                dt { "Kind" } dd { (e.kind) }
                dt { "Why (figures)" } dd { (e.reason) }
                dt { "Restricted since" } dd { (when(e.since_ms)) }
                dt { "Lifts" } dd { @if e.until_ms > 0 { (when(e.until_ms)) } @else { "only when an admin unblocks it" } }
            }
        }
        h2 { "Recommendations" }
        div.panel { (recommendations(&e.kind)) }
        @if chrome.can_change() {
            h2 { "Unblock" }
            div.panel {
                form method="post" action={(detail_link(e)) "/unblock"} {
                    (csrf_field(chrome.csrf))
                    label for="reason" { "Reason (kept in the audit log)" }
                    textarea id="reason" name="reason" rows="3" required {}
                    p { button.danger type="submit" { "Unblock " (e.name) } }
                }
            }
        } @else {
            p.muted-text { "Your role can read but not unblock." }
        }
    }
}

/// The restricted entity of this kind and name visible to `cx`, `Ok(None)` if none.
async fn find(
    app: &App,
    cx: &Cx,
    tenant: &str,
    kind: &str,
    name: &str,
) -> Result<Option<v1::RestrictedEntity>, Response> {
    let reply = app
        .read(&cx.who, v1::ReadKind::Restricted, tenant, "", 0)
        .await
        .map_err(|s| app.status_page(cx, &s))?;
    Ok(reply
        .restricted
        .into_iter()
        .find(|e| e.kind == kind && e.name.eq_ignore_ascii_case(name)))
}

async fn show(app: App, headers: HeaderMap, tenant: String, kind: &str, name: String) -> Response {
    let cx = match app.signed_in(&headers, "/restricted") {
        Ok(cx) => cx,
        Err(r) => return r,
    };
    match find(&app, &cx, &tenant, kind, &name).await {
        Ok(Some(e)) => {
            let chrome = cx.chrome();
            respond(
                StatusCode::OK,
                page(&e.name, Some(&chrome), detail(&chrome, &e)),
            )
        }
        Ok(None) => not_found(Some(&cx.chrome())),
        Err(r) => r,
    }
}

async fn unblock(
    app: App,
    headers: HeaderMap,
    body: Bytes,
    tenant: String,
    kind: &str,
    name: String,
) -> Response {
    let fields = form(&body);
    let cx = match app.posted(&headers, &fields, "/restricted") {
        Ok(cx) => cx,
        Err(r) => return r,
    };
    if let Err(r) = require_change(&cx) {
        return r;
    }
    let e = match find(&app, &cx, &tenant, kind, &name).await {
        Ok(Some(e)) => e,
        Ok(None) => return not_found(Some(&cx.chrome())),
        Err(r) => return r,
    };
    let reason = fields.get("reason").map(|r| r.trim()).unwrap_or_default();
    if reason.is_empty() {
        return super::layout::message(
            StatusCode::BAD_REQUEST,
            "A reason is required",
            "Say why it is safe to unblock (it is kept in the audit log), then submit again.",
            Some(&cx.chrome()),
        );
    }
    let op = v1::write_request::Op::Unblock(v1::Unblock {
        tenant: e.tenant.clone(),
        kind: e.kind.clone(),
        name: e.name.clone(),
        reason: reason.to_owned(),
    });
    match app.change(&cx, op).await {
        Ok(_) => Redirect::to("/restricted?done=unblocked").into_response(),
        Err(r) => r,
    }
}

/// `GET /restricted/connector/{tenant}/{name}`.
pub(crate) async fn connector(
    State(app): State<App>,
    headers: HeaderMap,
    Path((tenant, name)): Path<(String, String)>,
) -> Response {
    show(app, headers, tenant, "connector", name).await
}

/// `POST /restricted/connector/{tenant}/{name}/unblock`.
pub(crate) async fn unblock_connector(
    State(app): State<App>,
    headers: HeaderMap,
    Path((tenant, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    unblock(app, headers, body, tenant, "connector", name).await
}

/// `GET /restricted/user/{address}`.
pub(crate) async fn user(
    State(app): State<App>,
    headers: HeaderMap,
    Path(address): Path<String>,
) -> Response {
    let cx = match app.signed_in(&headers, "/restricted") {
        Ok(cx) => cx,
        Err(r) => return r,
    };
    let tenant = cx.own_tenant();
    drop(cx);
    show(app, headers, tenant, "user", address).await
}

/// `POST /restricted/user/{address}/unblock`.
pub(crate) async fn unblock_user(
    State(app): State<App>,
    headers: HeaderMap,
    Path(address): Path<String>,
    body: Bytes,
) -> Response {
    let tenant = match app.signed_in(&headers, "/restricted") {
        Ok(cx) => cx.own_tenant(),
        Err(_) => String::new(),
    };
    unblock(app, headers, body, tenant, "user", address).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::admin::authz::Principal;
    use crate::state::Role;

    fn entity() -> v1::RestrictedEntity {
        v1::RestrictedEntity {
            tenant: "contoso.test".into(),
            kind: "connector".into(),
            name: "on prem".into(),
            reason: "1200 messages in 10 minutes, 95% to non-accepted domains".into(),
            since_ms: 1_700_000_000_000,
            until_ms: 0,
        }
    }

    #[test]
    fn the_list_links_to_details_and_shows_the_figures() {
        let g = grid(&[entity()]);
        assert_eq!(
            g.links[0].as_deref(),
            Some("/restricted/connector/contoso.test/on%20prem")
        );
        let html = super::super::table::render(&g, &Params::default(), "").into_string();
        assert!(html.contains("95% to non-accepted domains"));
        assert!(html.contains("when unblocked"));
    }

    #[test]
    fn the_unblock_panel_has_a_required_reason_and_the_csrf_token_and_readers_get_none() {
        let mut who = Principal {
            name: "ops".into(),
            role: Role::Operator,
            tenant: None,
        };
        let chrome = Chrome {
            who: &who,
            node: 1,
            leader: 1,
            csrf: "CSRF1",
            active: "/restricted",
        };
        let html = detail(&chrome, &entity()).into_string();
        assert!(
            html.contains(r#"action="/restricted/connector/contoso.test/on%20prem/unblock""#),
            "{html}"
        );
        assert!(html.contains(r#"name="reason""#) && html.contains("required"));
        assert!(html.contains(r#"name="csrf" value="CSRF1""#));
        assert!(html.contains("Recommendations"));
        who.role = Role::Reader;
        let chrome = Chrome {
            who: &who,
            node: 1,
            leader: 1,
            csrf: "CSRF1",
            active: "/restricted",
        };
        let html = detail(&chrome, &entity()).into_string();
        assert!(!html.contains("<form"), "{html}");
    }
}
