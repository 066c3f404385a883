//! The console: a control node's admin pages for a browser, on their own HTTPS listener
//! (`--console-listen`; off when unset).
//!
//! Design:
//! - **Transport.** HTTPS only, with the node's own server certificate: the same internal TLS
//!   material gRPC serves (in `moat dev`, the dev CA's control certificate, valid for
//!   `localhost` and `127.0.0.1`), without asking browsers for a client certificate; a renewal
//!   is picked up by the next connection. Each TCP connection's handshake runs on a task of its
//!   own (10 s at most) and feeds axum's server (hyper-util underneath) through [`TlsListener`];
//!   HTTP/1.1 only.
//! - **Sign-in** with an admin token: the bootstrap operator token (`moat-data/admin-token` in
//!   dev) or one made by `moat admin token create` (operator, tenant-admin of one tenant, or
//!   reader). The token resolves to the same [`Principal`] the gRPC admin service makes of it
//!   (the operator token's SHA-256, else the replicated token table), and every page calls the
//!   admin service's own read and write functions in-process with that principal, so the
//!   console sees and may change exactly what `moat admin` with that token would: operators
//!   everything, tenant admins their tenant only (another tenant's objects answer 404, so their
//!   existence does not leak), readers everything but they get no change forms and their POSTs
//!   are refused with 403. Users' passwords do not sign in: SMTP AUTH credentials are not admin
//!   credentials.
//! - **Sessions** ([`session`]): a random 256-bit id in an in-memory table of this node,
//!   8 hours at most and 30 minutes idle, in the cookie `moat_session` (`HttpOnly; Secure;
//!   SameSite=Strict; Path=/`); sign-out deletes it. Sessions are per node (a restart, or
//!   another node's console, asks to sign in again). The token is never stored nor logged: the
//!   session keeps its SHA-256 and resolves it on every request, so a revoked token's sessions
//!   end at their next request.
//! - **CSRF**: every POST carries the session's CSRF token in a hidden `csrf` field (compared
//!   in constant time) and, when the browser sends `Origin` (or else `Referer`), must come from
//!   the console's own origin; otherwise 403 with a page saying why. Every response carries
//!   `Content-Security-Policy: default-src 'self'; style-src 'self' 'unsafe-inline'`,
//!   `X-Frame-Options: DENY`, `X-Content-Type-Options: nosniff`, `Referrer-Policy: same-origin`
//!   and `Cache-Control: no-store`.
//! - **Changes** go through the admin service's write with the principal, so the replicated
//!   audit log records them as it records `moat admin` calls (the actor is the token's name);
//!   a `moat::audit` log line names the console as the way in. A follower cannot propose: the
//!   console then shows which node leads (and where), not an error dump.
//!
//! Routes: `GET/POST /signin` (field `token`), `POST /signout`, `GET /` (overview),
//! `GET /restricted`, `GET /restricted/connector/{tenant}/{name}` and
//! `POST .../unblock` (fields `reason`, `csrf`), `GET /restricted/user/{address}` and
//! `POST .../unblock`, `GET /onprem` and `POST /onprem/{tenant}/pause` (fields `reason`,
//! `days`, `csrf`), `GET /connectors`, `GET /alerts`, `GET /audit`, `GET /reports` and
//! `GET /reports/{kind}?tenant=&days=` (`&format=csv`: a download). `/restricted`,
//! `/connectors`, `/alerts` and `/audit` show one admin page of 50 (`?after=` the admin API's
//! page token; a "Next page" link carries the next).
//!
//! Layout: this file (state, router, listener, the checks every handler makes, reads and
//! writes), [`session`] (sessions, cookie, CSRF and origin checks), [`layout`] (page shell,
//! stylesheet, message pages), [`table`] (sortable, filterable, paged tables; lists that grow
//! with the cluster page through the admin API, `?after=TOKEN`), [`chart`] (SVG
//! bar charts), and the pages: [`signin`], [`overview`], [`restricted`], [`onprem`], [`lists`]
//! (connectors, alerts, audit), [`reports`].

// The handlers' checks return the page to answer with as their error, once per request:
// boxing it would buy nothing.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use moat_proto::mtls::InternalTls;
use moat_proto::v1;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tonic::{Code, Status};

use crate::service::admin::authz::{principal_of, sha256_hex, Denied, Principal};
use crate::service::admin::{read, write};
use crate::service::Shared;
use crate::state::Role;
use layout::Chrome;
use session::{Forbidden, Session, Sessions};

pub(crate) mod chart;
pub(crate) mod layout;
pub(crate) mod lists;
pub(crate) mod onprem;
pub(crate) mod overview;
pub(crate) mod reports;
pub(crate) mod restricted;
pub(crate) mod session;
pub(crate) mod signin;
pub(crate) mod table;

/// How long a browser may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most pages of one list a merged read ([`Console::read`]) reads, each up to the admin
/// API's byte budget.
const MAX_READ_PAGES: usize = 20;

/// What the console's handlers share.
pub(crate) struct Console {
    /// The node's services' shared state: the node thread, tokens, the view.
    pub(crate) shared: Arc<Shared>,
    /// This node's console sessions.
    pub(crate) sessions: Sessions,
}

/// The handlers' state.
pub(crate) type App = Arc<Console>;

/// A signed-in request: who, its session, and where the node stands.
pub(crate) struct Cx {
    /// The principal the session's token resolves to now.
    pub(crate) who: Principal,
    /// The session (its CSRF token for the forms).
    pub(crate) session: Session,
    /// The session id.
    pub(crate) sid: String,
    /// This node's raft id.
    pub(crate) node: u64,
    /// The leader this node knows (0: none).
    pub(crate) leader: u64,
    /// The navigation entry of the page.
    pub(crate) active: &'static str,
}

impl Cx {
    /// The page shell's view of this request.
    pub(crate) fn chrome(&self) -> Chrome<'_> {
        Chrome {
            who: &self.who,
            node: self.node,
            leader: self.leader,
            csrf: &self.session.csrf,
            active: self.active,
        }
    }

    /// The tenant a tenant admin administers (reads are narrowed to it), empty for others.
    pub(crate) fn own_tenant(&self) -> String {
        match (self.who.role, &self.who.tenant) {
            (Role::TenantAdmin, Some(t)) => t.to_string(),
            _ => String::new(),
        }
    }
}

/// A POSTed form's fields (the last value of a repeated field wins).
pub(crate) fn form(body: &Bytes) -> BTreeMap<String, String> {
    form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

impl Console {
    /// The principal of a token's SHA-256, as the admin service resolves it: the bootstrap
    /// operator token, else the replicated token table.
    pub(crate) fn principal(&self, token_sha: &str) -> Result<Principal, Denied> {
        if self.shared.admin_token_sha.as_deref() == Some(token_sha) {
            return Ok(Principal {
                name: "operator".into(),
                role: Role::Operator,
                tenant: None,
            });
        }
        let tokens = self
            .shared
            .tokens
            .read()
            .map_err(|_| Denied::UnknownToken)?;
        principal_of(tokens.get(token_sha))
    }

    /// The principal of a token as typed (trimmed, as the admin service trims it).
    pub(crate) fn sign_in(&self, token: &str) -> Result<(Principal, String), Denied> {
        let sha = sha256_hex(token.trim());
        self.principal(&sha).map(|p| (p, sha))
    }

    fn leader(&self) -> u64 {
        self.shared
            .view
            .borrow()
            .status
            .as_ref()
            .map_or(0, |s| s.leader)
    }

    /// The signed-in request, or the redirect to the sign-in page.
    pub(crate) fn signed_in(
        &self,
        headers: &HeaderMap,
        active: &'static str,
    ) -> Result<Cx, Response> {
        let to_signin = || Redirect::to("/signin").into_response();
        let sid = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(session::cookie_session)
            .ok_or_else(to_signin)?
            .to_owned();
        let session = self
            .sessions
            .touch(&sid, Instant::now())
            .ok_or_else(to_signin)?;
        let who = match self.principal(&session.token_sha) {
            Ok(w) => w,
            Err(_) => {
                // Revoked since sign-in.
                self.sessions.close(&sid);
                return Err(to_signin());
            }
        };
        Ok(Cx {
            who,
            session,
            sid,
            node: self.shared.id,
            leader: self.leader(),
            active,
        })
    }

    /// A signed-in POST that passed the origin and CSRF checks, or the 403 page.
    pub(crate) fn posted(
        &self,
        headers: &HeaderMap,
        fields: &BTreeMap<String, String>,
        active: &'static str,
    ) -> Result<Cx, Response> {
        let cx = match self.signed_in(headers, active) {
            Ok(cx) => cx,
            Err(_) => {
                return Err(layout::message(
                    StatusCode::FORBIDDEN,
                    "Signed out",
                    "Your session has ended (signed out, expired, or its token was revoked); sign in again and repeat the change.",
                    None,
                ))
            }
        };
        let text = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
        let own = session::own_origin(text(header::HOST).unwrap_or_default());
        let checked = session::check_origin(&own, text(header::ORIGIN), text(header::REFERER))
            .and_then(|()| {
                session::check_csrf(&cx.session, fields.get("csrf").map(String::as_str))
            });
        if let Err(why) = checked {
            tracing::warn!(target: "moat::audit", token = %cx.who.name, reason = %why, "console change refused");
            return Err(forbidden(&cx, &why));
        }
        Ok(cx)
    }

    /// Reads `kind` for `who` through the admin service, merging its pages, up to
    /// [`MAX_READ_PAGES`]: for reads that are bounded (reports, a day's rows each; the
    /// overview's counts). When more remain after that, the reply keeps its
    /// `next_page_token` ([`truncated`] says so) and the page shows [`layout::truncated`].
    /// Lists that grow with the cluster page through [`Console::read_page`] instead.
    pub(crate) async fn read(
        &self,
        who: &Principal,
        kind: v1::ReadKind,
        tenant: &str,
        name: &str,
        days: u32,
    ) -> Result<v1::ReadReply, Status> {
        use prost::Message as _;
        let mut req = v1::ReadRequest::of(kind);
        req.tenant = tenant.to_owned();
        req.name = name.to_owned();
        req.days = days;
        let mut all = v1::ReadReply::default();
        for _ in 0..MAX_READ_PAGES {
            let page = read::read(&self.shared, who, req.clone()).await?;
            let next = page.next_page_token.clone();
            all.merge(page.encode_to_vec().as_slice())
                .map_err(|e| Status::internal(e.to_string()))?;
            // Merging keeps the last page's token: empty once the list is done.
            all.next_page_token = next.clone();
            if next.is_empty() {
                break;
            }
            req.page_token = next;
        }
        Ok(all)
    }

    /// One page of the list `kind` for `who`: at most `limit` items after the opaque page
    /// token `after` (empty: from the start); the reply's `next_page_token` resumes after it
    /// (empty on the last page). A token that is not one of this list's answers
    /// INVALID_ARGUMENT.
    pub(crate) async fn read_page(
        &self,
        who: &Principal,
        kind: v1::ReadKind,
        tenant: &str,
        after: &str,
        limit: u32,
    ) -> Result<v1::ReadReply, Status> {
        let mut req = v1::ReadRequest::of(kind);
        req.tenant = tenant.to_owned();
        req.page_token = after.to_owned();
        req.limit = limit;
        read::read(&self.shared, who, req).await
    }

    /// Makes a change as `cx`'s principal through the admin service; a refusal becomes the
    /// page that explains it.
    pub(crate) async fn change(
        &self,
        cx: &Cx,
        op: v1::write_request::Op,
    ) -> Result<v1::WriteReply, Response> {
        let w = v1::WriteRequest {
            request_id: session::random_id(),
            op: Some(op),
        };
        let r = write::write(&self.shared, &cx.who, w).await;
        match &r {
            Ok(reply) => tracing::info!(
                target: "moat::audit",
                method = "console",
                token = %cx.who.name,
                role = cx.who.role.as_str(),
                summary = %reply.summary,
                "admin call"
            ),
            Err(e) => tracing::info!(
                target: "moat::audit",
                method = "console",
                token = %cx.who.name,
                role = cx.who.role.as_str(),
                reason = e.message(),
                "console change not made"
            ),
        }
        r.map_err(|s| self.status_page(cx, &s))
    }

    /// The page for a refusal of the admin service.
    pub(crate) fn status_page(&self, cx: &Cx, s: &Status) -> Response {
        let chrome = cx.chrome();
        match s.code() {
            Code::PermissionDenied | Code::NotFound if cx.who.role == Role::TenantAdmin => {
                layout::not_found(Some(&chrome))
            }
            Code::PermissionDenied | Code::Unauthenticated => layout::message(
                StatusCode::FORBIDDEN,
                "Not allowed",
                s.message(),
                Some(&chrome),
            ),
            Code::NotFound => layout::not_found(Some(&chrome)),
            Code::Unavailable if s.message().contains("leader") => {
                let view = self.shared.view.borrow().clone();
                let leader = view.status.as_ref().map_or(0, |st| st.leader);
                let address = s
                    .metadata()
                    .get("moat-leader")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
                    .or_else(|| view.addresses.get(&leader).cloned());
                if leader != cx.node {
                    return layout::go_to_leader(&chrome, leader, address.as_deref());
                }
                layout::message(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Try again",
                    s.message(),
                    Some(&chrome),
                )
            }
            Code::InvalidArgument | Code::FailedPrecondition | Code::AlreadyExists => {
                layout::message(
                    StatusCode::BAD_REQUEST,
                    "Not changed",
                    s.message(),
                    Some(&chrome),
                )
            }
            _ => layout::message(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again",
                s.message(),
                Some(&chrome),
            ),
        }
    }
}

/// Whether a merged read ([`Console::read`]) stopped at [`MAX_READ_PAGES`] with more of its
/// list left unread.
pub(crate) fn truncated(reply: &v1::ReadReply) -> bool {
    !reply.next_page_token.is_empty()
}

/// The 403 page of a refused POST.
pub(crate) fn forbidden(cx: &Cx, why: &Forbidden) -> Response {
    layout::message(
        StatusCode::FORBIDDEN,
        "Change refused",
        &why.to_string(),
        Some(&cx.chrome()),
    )
}

/// Refuses a change by a principal whose role changes nothing.
pub(crate) fn require_change(cx: &Cx) -> Result<(), Response> {
    if cx.who.role == Role::Reader {
        return Err(forbidden(cx, &Forbidden::ReadOnly(cx.who.role.as_str())));
    }
    Ok(())
}

/// The console's routes over `app`, with the security headers on every response.
pub(crate) fn router(app: App) -> Router {
    Router::new()
        .route("/signin", get(signin::show_form).post(signin::submit))
        .route("/signout", post(signin::signout))
        .route("/", get(overview::page))
        .route("/restricted", get(restricted::list))
        .route(
            "/restricted/connector/{tenant}/{name}",
            get(restricted::connector),
        )
        .route(
            "/restricted/connector/{tenant}/{name}/unblock",
            post(restricted::unblock_connector),
        )
        .route("/restricted/user/{address}", get(restricted::user))
        .route(
            "/restricted/user/{address}/unblock",
            post(restricted::unblock_user),
        )
        .route("/onprem", get(onprem::page_get))
        .route("/onprem/{tenant}/pause", post(onprem::pause))
        .route("/connectors", get(lists::connectors))
        .route("/alerts", get(lists::alerts))
        .route("/audit", get(lists::audit))
        .route("/reports", get(reports::index))
        .route("/reports/{kind}", get(reports::report))
        .fallback(|| async { layout::not_found(None) })
        .layer(axum::middleware::map_response(secure))
        .with_state(app)
}

/// The headers every console response carries.
async fn secure(mut res: Response) -> Response {
    let h = res.headers_mut();
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'self'; style-src 'self' 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
    );
    set(h, "x-frame-options", "DENY");
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "same-origin");
    set(h, "cache-control", "no-store");
    set(h, "strict-transport-security", "max-age=31536000");
    res
}

/// TLS connections, handshaken on tasks of their own, as axum's server takes them.
pub(crate) struct TlsListener {
    rx: mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl TlsListener {
    /// Accepts on `listener` with the console side of `tls` (read again for each connection,
    /// so a renewed certificate is served without a restart); `None` unless `tls` is a control
    /// node's material.
    pub(crate) fn new(listener: TcpListener, tls: InternalTls) -> Option<Self> {
        tls.https_server()?;
        let local = listener.local_addr().ok()?;
        let (tx, rx) = mpsc::channel(64);
        let accepting = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("accepting a console connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(config) = tls.https_server() else {
                    return;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let accept = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "console TLS handshake refused: {e}"),
                        Err(_) => tracing::debug!(%peer, "console TLS handshake timed out"),
                    }
                });
            }
        });
        Some(Self {
            rx,
            local,
            accepting,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accepting task ended (no control certificate any more): accept nothing.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Serves the console on `listener` until `shutdown` completes.
pub(crate) async fn serve(
    listener: TlsListener,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let app = Arc::new(Console {
        shared,
        sessions: Sessions::default(),
    });
    let local = listener.local;
    tracing::info!("console on https://{local}");
    if let Err(e) = axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!("console on {local}: {e}");
    }
}
