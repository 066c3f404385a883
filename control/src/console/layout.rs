//! The console's page shell: the head with its stylesheet, the left navigation, the header with
//! the signed-in principal, its role and the node, and the message pages (refusals, not found,
//! the follower's "go to the leader"). Every page is plain server-rendered HTML: no script.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::service::admin::authz::Principal;

/// The stylesheet, inline (the CSP allows inline styles, nothing else inline).
const CSS: &str = r#"
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1f2933;background:#f5f7fa}
a{color:#1d4ed8;text-decoration:none}a:hover{text-decoration:underline}
.shell{display:flex;min-height:100vh}
nav.side{width:220px;flex:none;background:#102a43;color:#d9e2ec;padding:18px 0}
nav.side .brand{font-weight:700;font-size:18px;color:#fff;padding:0 20px 16px;letter-spacing:.02em}
nav.side .brand small{display:block;font-weight:400;font-size:12px;color:#9fb3c8}
nav.side a{display:block;color:#d9e2ec;padding:8px 20px;border-left:3px solid transparent}
nav.side a:hover{background:#243b53;text-decoration:none}
nav.side a.active{background:#243b53;border-left-color:#60a5fa;color:#fff;font-weight:600}
main{flex:1;min-width:0}
header.top{display:flex;justify-content:space-between;align-items:center;background:#fff;border-bottom:1px solid #e4e7eb;padding:10px 28px}
header.top .who{color:#52606d;font-size:14px}
header.top .who b{color:#1f2933}
header.top form{display:inline;margin-left:12px}
.content{padding:24px 28px;max-width:1400px}
h1{font-size:24px;margin:0 0 6px}h2{font-size:18px;margin:28px 0 10px}
p.lead{color:#52606d;margin:0 0 20px}
.cards{display:flex;gap:16px;flex-wrap:wrap;margin-bottom:8px}
.card{background:#fff;border:1px solid #e4e7eb;border-radius:8px;padding:14px 18px;min-width:170px}
.card .k{color:#52606d;font-size:13px}.card .v{font-size:22px;font-weight:600}
.panel{background:#fff;border:1px solid #e4e7eb;border-radius:8px;padding:18px 20px;margin:16px 0}
div.tablewrap{overflow-x:auto;border-radius:8px}
table.data{border-collapse:collapse;width:100%;background:#fff;border:1px solid #e4e7eb;border-radius:8px;overflow:hidden;font-size:14px}
table.data th{background:#f0f4f8;text-align:left;font-weight:600;padding:8px 10px;border-bottom:1px solid #d9e2ec}
table.data th a{color:#243b53}
table.data td{padding:7px 10px;border-bottom:1px solid #eef2f6;vertical-align:top}
table.data td.long{overflow-wrap:anywhere;min-width:14em}
table.data tr:last-child td{border-bottom:0}
table.data td.num{text-align:right;font-variant-numeric:tabular-nums}
.toolbar{display:flex;gap:10px;align-items:center;margin:8px 0 12px}
.toolbar input[type=search]{padding:6px 10px;border:1px solid #cbd2d9;border-radius:6px;min-width:280px;font:inherit}
.toolbar input[type=number]{width:6em;flex:none}
button,.button{background:#1d4ed8;color:#fff;border:0;border-radius:6px;padding:7px 14px;font:inherit;cursor:pointer;display:inline-block}
button.secondary,.button.secondary{background:#e4e7eb;color:#1f2933}
button.danger{background:#b91c1c}
.empty{background:#fff;border:1px dashed #cbd2d9;border-radius:8px;padding:22px;color:#52606d;text-align:center}
.pager{margin:10px 0;color:#52606d;font-size:14px}.pager a{margin:0 6px}
.badge{display:inline-block;border-radius:10px;padding:1px 9px;font-size:12px;font-weight:600}
.ok{background:#dcfce7;color:#166534}.bad{background:#fee2e2;color:#991b1b}.warn{background:#fef3c7;color:#92400e}.muted{background:#e4e7eb;color:#3e4c59}
.notice{background:#ecfdf5;border:1px solid #a7f3d0;color:#065f46;border-radius:8px;padding:10px 14px;margin-bottom:16px}
.notice.warn{background:#fef3c7;border-color:#fde68a;color:#92400e}
.error{background:#fef2f2;border:1px solid #fecaca;color:#991b1b;border-radius:8px;padding:10px 14px;margin-bottom:16px}
label{display:block;font-weight:600;margin:10px 0 4px}
textarea,input[type=text],input[type=password],input[type=number]{width:100%;max-width:640px;padding:8px 10px;border:1px solid #cbd2d9;border-radius:6px;font:inherit}
dl.facts{display:grid;grid-template-columns:180px 1fr;gap:6px 16px;margin:0}dl.facts dt{color:#52606d}dl.facts dd{margin:0}
.signin{max-width:460px;margin:10vh auto;background:#fff;border:1px solid #e4e7eb;border-radius:10px;padding:28px}
.chart{background:#fff;border:1px solid #e4e7eb;border-radius:8px;padding:12px;margin:12px 0}
.muted-text{color:#52606d;font-size:13px}
"#;

/// Who is looking, for the header and the forms on a page.
pub(crate) struct Chrome<'a> {
    /// The signed-in principal.
    pub(crate) who: &'a Principal,
    /// This node's raft id.
    pub(crate) node: u64,
    /// The leader this node knows (0: none).
    pub(crate) leader: u64,
    /// The session's CSRF token, for the forms.
    pub(crate) csrf: &'a str,
    /// The navigation entry to highlight (its path).
    pub(crate) active: &'a str,
}

impl Chrome<'_> {
    /// Whether the principal may change anything (operators and tenant admins).
    pub(crate) fn can_change(&self) -> bool {
        self.who.role != crate::state::Role::Reader
    }
}

/// The navigation: path and label.
const NAV: &[(&str, &str)] = &[
    ("/", "Overview"),
    ("/restricted", "Restricted entities"),
    ("/onprem", "On-premises servers"),
    ("/connectors", "Connectors"),
    ("/reports", "Reports"),
    ("/alerts", "Alerts"),
    ("/audit", "Audit log"),
];

/// The hidden CSRF field every form carries.
pub(crate) fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

/// A whole page: `body` inside the shell (or alone, for the sign-in page).
pub(crate) fn page(title: &str, chrome: Option<&Chrome<'_>>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Moat console" }
                style { (PreEscaped(CSS)) }
            }
            body {
                @if let Some(c) = chrome {
                    div.shell {
                        nav.side {
                            div.brand { "Moat" small { "admin console" } }
                            @for (path, label) in NAV {
                                a href=(path) class=[(c.active == *path).then_some("active")] { (label) }
                            }
                        }
                        main {
                            header.top {
                                div.who {
                                    "Signed in as " b { (c.who.name) } " · " (c.who.role.as_str())
                                    @if let Some(t) = &c.who.tenant { " of " b { (t.as_str()) } }
                                }
                                div.who {
                                    "Node " b { (c.node) }
                                    @if c.leader == c.node { " (leader)" }
                                    @else if c.leader == 0 { " (no leader known)" }
                                    @else { " (leader: node " (c.leader) ")" }
                                    form method="post" action="/signout" {
                                        (csrf_field(c.csrf))
                                        button.secondary type="submit" { "Sign out" }
                                    }
                                }
                            }
                            div.content { (body) }
                        }
                    }
                } @else {
                    (body)
                }
            }
        }
    }
}

/// The notice of a page built from a merged read that stopped before the end of its list
/// ([`super::truncated`]): `what` names what the figures leave out.
pub(crate) fn truncated(what: &str) -> Markup {
    html! {
        div.notice.warn { "Only part of " (what) " was read (the console reads at most 20 pages of a list); what is shown is incomplete. Use `moat admin` for everything." }
    }
}

/// A page as a response with `status`.
pub(crate) fn respond(status: StatusCode, markup: Markup) -> Response {
    (status, Html(markup.into_string())).into_response()
}

/// A page that only says something: a refusal, a missing object, an error.
pub(crate) fn message(
    status: StatusCode,
    title: &str,
    text: &str,
    chrome: Option<&Chrome<'_>>,
) -> Response {
    let body = html! {
        h1 { (title) }
        div.error { (text) }
        p { a href="/" { "Back to the overview" } }
    };
    let body = if chrome.is_some() {
        body
    } else {
        html! { div.signin { (body) } }
    };
    respond(status, page(title, chrome, body))
}

/// The 404 page: the same for an object that does not exist and for one the principal may not
/// see, so that a tenant admin learns nothing about other tenants.
pub(crate) fn not_found(chrome: Option<&Chrome<'_>>) -> Response {
    message(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is nothing here, or nothing you may see.",
        chrome,
    )
}

/// The page a follower shows for a change: which node leads, and where to go.
pub(crate) fn go_to_leader(chrome: &Chrome<'_>, leader: u64, address: Option<&str>) -> Response {
    let body = html! {
        h1 { "Changes are made on the leader" }
        div.error {
            "This control node (node " (chrome.node) ") is a follower, so it cannot make this change. "
            @if leader == 0 {
                "No leader is elected at the moment; try again in a few seconds."
            } @else {
                "Node " (leader) " leads the cluster"
                @if let Some(a) = address { " (gRPC at " code { (a) } ")" }
                ". Open the console of node " (leader) " (the same console port on its host, when it serves one) and make the change there."
            }
        }
        p { "Nothing was changed." }
        p { a href="/" { "Back to the overview" } }
    };
    respond(
        StatusCode::SERVICE_UNAVAILABLE,
        page("Not the leader", Some(chrome), body),
    )
}

/// A timestamp (Unix ms) as `YYYY-MM-DD HH:MM UTC`; `-` for 0.
pub(crate) fn when(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Role;

    #[test]
    fn timestamps_read_as_utc_dates() {
        assert_eq!(when(0), "-");
        assert_eq!(when(86_400_000 + 3_660_000), "1970-01-02 01:01 UTC");
        assert_eq!(when(1_700_000_000_000), "2023-11-14 22:13 UTC");
    }

    #[test]
    fn the_shell_shows_who_and_escapes() {
        let who = Principal {
            name: "<script>".into(),
            role: Role::TenantAdmin,
            tenant: moat_shared::TenantId::new("contoso.test").ok(),
        };
        let c = Chrome {
            who: &who,
            node: 2,
            leader: 1,
            csrf: "tok",
            active: "/restricted",
        };
        let html = page("T", Some(&c), html! { p { "x" } }).into_string();
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<script>"));
        assert!(html.contains("tenant-admin"));
        assert!(html.contains("contoso.test"));
        assert!(html.contains("leader: node 1"));
        assert!(
            html.contains(r#"<a href="/restricted" class="active">"#),
            "{html}"
        );
        assert!(html.contains(r#"name="csrf" value="tok""#));
    }
}
