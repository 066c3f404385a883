//! Signing in (`GET/POST /signin`, the field `token`) and out (`POST /signout`).

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};

use super::layout::{self, page, respond};
use super::{form, session, App};

fn signin_page(error: Option<&str>) -> Markup {
    page(
        "Sign in",
        None,
        html! {
            div.signin {
                h1 { "Moat console" }
                p.lead { "Sign in with an admin token." }
                @if let Some(e) = error { div.error { (e) } }
                form method="post" action="/signin" {
                    label for="token" { "Admin token" }
                    input type="password" id="token" name="token" autocomplete="off" required autofocus;
                    p.muted-text {
                        "The operator token (" code { "admin-token" } " in the data directory of "
                        code { "moat dev" } "), or a token from " code { "moat admin token create" }
                        " with the role operator, tenant-admin or reader."
                    }
                    button type="submit" { "Sign in" }
                }
            }
        },
    )
}

/// `GET /signin`: the form (or the overview when already signed in).
pub(crate) async fn show_form(State(app): State<App>, headers: HeaderMap) -> Response {
    if app.signed_in(&headers, "/").is_ok() {
        return Redirect::to("/").into_response();
    }
    respond(StatusCode::OK, signin_page(None))
}

/// `POST /signin`: a known token opens a session and sets its cookie.
pub(crate) async fn submit(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let text = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    let own = session::own_origin(text(header::HOST).unwrap_or_default());
    if let Err(why) = session::check_origin(&own, text(header::ORIGIN), text(header::REFERER)) {
        return layout::message(
            StatusCode::FORBIDDEN,
            "Sign-in refused",
            &why.to_string(),
            None,
        );
    }
    let fields = form(&body);
    let token = fields.get("token").map(String::as_str).unwrap_or_default();
    match app.sign_in(token) {
        Ok((who, sha)) => {
            let (id, _) = app.sessions.open(sha, Instant::now());
            tracing::info!(
                target: "moat::audit",
                method = "console sign-in",
                token = %who.name,
                role = who.role.as_str(),
                "admin call"
            );
            let mut res = Redirect::to("/").into_response();
            if let Ok(v) = session::set_cookie(&id).parse() {
                res.headers_mut().insert(header::SET_COOKIE, v);
            }
            res
        }
        Err(e) => {
            tracing::warn!(target: "moat::audit", method = "console sign-in", reason = %e, "admin call refused");
            respond(
                StatusCode::UNAUTHORIZED,
                signin_page(Some("Unknown or revoked token.")),
            )
        }
    }
}

/// `POST /signout`: ends the session (CSRF-checked like every POST).
pub(crate) async fn signout(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let fields = form(&body);
    let cx = match app.posted(&headers, &fields, "/") {
        Ok(cx) => cx,
        Err(r) => return r,
    };
    app.sessions.close(&cx.sid);
    let mut res = Redirect::to("/signin").into_response();
    if let Ok(v) = session::clear_cookie().parse() {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}
