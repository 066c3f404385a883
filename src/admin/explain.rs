//! `moat admin explain`: what an edge would answer a session, and why, step by step.
//!
//! The control plane returns the subset of its current policy that the session's facts can
//! touch (`READ_KIND_EXPLAIN`, see `control/src/service/admin/explain.rs`); this file builds a
//! `PolicySnapshot` from it and runs the edge's own verdict functions (`moat_edge::verdict`) in
//! the order the session driver calls them: connection (connectors by certificate and IP), AUTH
//! (legacy TLS at AUTH), MAIL ([`verdict::mail`]), each RCPT ([`verdict::recipient`]), end of
//! DATA (on-premises Exchange servers, with `--headers`). Each step names the rule that
//! answered, the exact reply (untagged: an edge appends its node name) and the counters it
//! would increment.
//!
//! What it does not model: the SMTP state machine's own refusals (STARTTLS required on a
//! submission listener, AUTH not offered in clear text, size and rate limits, the AUTH failure
//! throttle), passwords (an unknown AUTH user is reported as a failed login), and the next
//! hop's answer (an accepted recipient is shown as the edge's `250 2.1.5`, which a real session
//! relays from the next hop). The speed bump is evaluated for the worst draw: a legacy session
//! is shown refused whenever the schedule's share is above 0 (only that share of sessions is).

use std::net::IpAddr;
use std::path::PathBuf;

use moat_edge::config::LegacyTls;
use moat_edge::session::command::Address;
use moat_edge::session::reply::{self, Reply};
use moat_edge::verdict::{self, Client, Counted, Denial, Sender};
use moat_proto::{ExplainQuery, ReadKind, ReadRequest};
use moat_shared::onprem::Minute;
use moat_shared::{Connector, EntityKind, PolicySnapshot, TenantId};
use serde::Serialize;

use super::render::{cell, fmt_time, out, print_json, render_table};
use super::{Ctx, Output};
use crate::client::Failure;

/// The legacy-TLS rule of the listener the session would reach.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LegacyRule {
    /// A standard listener: the speed bump schedule.
    SpeedBump,
    /// A legacy (opt-in) listener: only tenants with `allow-legacy-tls-clients`.
    OptIn,
}

/// `moat admin explain`'s options: what the session would present.
#[derive(clap::Args, Debug)]
pub(super) struct ExplainArgs {
    /// The client's IP address.
    #[arg(long, value_name = "IP")]
    client_ip: IpAddr,
    /// The envelope sender (`<>` or an empty string for the null sender).
    #[arg(long, value_name = "ADDR")]
    mail_from: String,
    /// A recipient; repeat for several.
    #[arg(long = "rcpt", value_name = "ADDR", required = true)]
    rcpt: Vec<String>,
    /// A client certificate (PEM) the session presents; its DNS names are used as an edge
    /// uses a validated one's (the chain is not checked here).
    #[arg(long, value_name = "FILE")]
    cert: Vec<PathBuf>,
    /// A name of the client certificate, instead of the file; repeat for several.
    #[arg(long = "cert-name", value_name = "NAME")]
    cert_name: Vec<String>,
    /// The listener's name, shown in the report.
    #[arg(long, value_name = "NAME")]
    listener: Option<String>,
    /// The listener's legacy-TLS rule.
    #[arg(long, value_enum, default_value = "speed-bump")]
    legacy_tls: LegacyRule,
    /// The negotiated TLS version (`1.0` .. `1.3`, `TLSv1.2`, or `none`); clear text when
    /// left out (unless a certificate is given, which implies TLS 1.2).
    #[arg(long, value_name = "V")]
    tls_version: Option<String>,
    /// The EHLO name, shown in the report.
    #[arg(long, value_name = "NAME")]
    ehlo: Option<String>,
    /// The SMTP AUTH login: the session is judged as that user's submission.
    #[arg(long, value_name = "USER")]
    auth_user: Option<String>,
    /// A file with the message's header section: the on-premises Exchange server is read from
    /// its `Received:` lines.
    #[arg(long, value_name = "FILE")]
    headers: Option<PathBuf>,
    /// The time to evaluate at (`YYYY-MM-DDTHH:MM[:SS]Z`); default: the cluster's now.
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// The tenant whose policy is read (a tenant admin's own by default; others are refused).
    #[arg(long)]
    tenant: Option<String>,
}

/// The session as the verdicts see it, after the local inputs were read.
#[derive(Debug, Clone, Default)]
pub(super) struct Facts {
    /// The client's address.
    pub ip: Option<IpAddr>,
    /// The certificate's names.
    pub cert_names: Vec<String>,
    /// The TLS version (`TLSv1.2`), `None` for clear text.
    pub tls_version: Option<String>,
    /// The listener's legacy-TLS rule.
    pub legacy_opt_in: bool,
    /// The listener's name.
    pub listener: String,
    /// The EHLO name.
    pub ehlo: String,
    /// The AUTH login.
    pub auth_user: Option<String>,
    /// MAIL FROM (`None` for `<>`).
    pub mail_from: Option<String>,
    /// The recipients.
    pub rcpts: Vec<String>,
    /// The header section, when given.
    pub headers: Option<String>,
}

/// A connector the client matched, and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(super) struct Matched {
    /// `tenant/name`.
    pub connector: String,
    /// `partner` or `on-premises`.
    pub kind: String,
    /// `certificate` or `ip`.
    pub matched_by: String,
    /// The network or certificate name that matched, and what it covered.
    pub why: String,
    /// The restriction in force on it, if any.
    pub restricted: Option<Restriction>,
}

/// A restriction in force, with the reason text the control plane recorded (it carries the
/// figures that tripped it).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(super) struct Restriction {
    /// `connector` or `user`.
    pub kind: String,
    /// The connector's or user's name.
    pub name: String,
    /// Why it was restricted.
    pub reason: String,
    /// Since when (RFC 3339).
    pub since: String,
    /// Until when, `None` when until unblocked.
    pub until: Option<String>,
}

/// One step of the session and what the edge answers.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(super) struct Step {
    /// `connect`, `AUTH`, `MAIL`, `RCPT`, `DATA`.
    pub step: String,
    /// The step's argument (the address, the login, the server).
    pub argument: String,
    /// `accepted` or `refused`.
    pub outcome: String,
    /// The reply code.
    pub code: u16,
    /// The enhanced status code.
    pub enhanced: String,
    /// The reply line as an edge sends it, without its node tag.
    pub reply: String,
    /// The rule that answered, with what decided it.
    pub rule: String,
    /// The counters the step increments (`scope key name`).
    pub counters: Vec<String>,
    /// The tenant the step is attributed to.
    pub tenant: Option<String>,
    /// The connector the mail came through.
    pub connector: Option<String>,
    /// Whether a recipient is relayed (outside every accepted domain).
    pub relay: bool,
}

/// The on-premises Exchange server read from the headers.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(super) struct Onprem {
    /// The server (the `by` host of its stamp).
    pub server: String,
    /// The build it stamped.
    pub build: String,
    /// The build's class against the baseline.
    pub class: String,
    /// The `Received:` line it came from.
    pub received: String,
    /// Whether the message's connector is judged (OnPremises, or every connector by setting).
    pub judged: bool,
    /// The server's enforcement stage, 0 when not enforced.
    pub stage: u32,
    /// Throttled and blocked minutes per hour at that stage.
    pub throttle: u8,
    /// Blocked minutes per hour at that stage.
    pub block: u8,
    /// What the evaluated minute is: `open`, `throttled` or `blocked`.
    pub minute: String,
}

/// The whole explanation.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(super) struct Explanation {
    /// The policy version evaluated.
    pub policy_version: u64,
    /// The time evaluated at (RFC 3339) and in Unix ms.
    pub at: String,
    /// Unix ms of `at`.
    pub at_ms: i64,
    /// The tenant the policy was limited to (a tenant admin's), empty for all.
    pub scope: String,
    /// The client.
    pub client_ip: String,
    /// Its certificate's names.
    pub cert_names: Vec<String>,
    /// The TLS version, `none` for clear text.
    pub tls_version: String,
    /// The listener and its legacy-TLS rule.
    pub listener: String,
    /// The EHLO name.
    pub ehlo: String,
    /// The connectors the client matched.
    pub connectors: Vec<Matched>,
    /// Restrictions in force on the matched connectors and the AUTH user.
    pub restrictions: Vec<Restriction>,
    /// The steps, in session order, up to the first that ends the transaction.
    pub steps: Vec<Step>,
    /// The on-premises server read from the headers.
    pub onprem: Option<Onprem>,
    /// The first refusal's reply, or the last step's when none refused.
    pub reply: String,
}

/// `scope key name` of a counter.
fn counted(c: Counted<'_>) -> String {
    match c {
        Counted::Connector { connector, counter } => {
            format!("connector {connector} {}", counter.as_str())
        }
        Counted::Auth(a) => format!("auth - {}", a.as_str()),
    }
}

/// What decided a refusal, in words.
fn rule(snapshot: &PolicySnapshot, d: &Denial) -> String {
    let settings = |id: &moat_shared::ConnectorId| {
        snapshot
            .connector(id)
            .map(|c| {
                format!(
                    " (sender-domains {}; restrict-domains-to-ip-addresses {}; \
                     restrict-domains-to-certificate {}; require-tls {})",
                    c.sender_domains.join(","),
                    c.restrict_domains_to_ip_addresses,
                    c.restrict_domains_to_certificate,
                    c.require_tls
                )
            })
            .unwrap_or_default()
    };
    match d {
        Denial::ConnectorRestricted { connector } => {
            format!("connector {connector} is restricted by the control plane")
        }
        Denial::PartnerRestricted {
            connector,
            sender_domain,
            ip,
            ..
        } => format!(
            "Partner connector {connector} of the recipient's tenant scopes {sender_domain}, \
             and the client {ip} is outside its IP addresses or certificate{}",
            settings(connector)
        ),
        Denial::ConnectorRequiresTls { connector } => format!(
            "connector {connector} applies to the recipient and requires TLS; the session is in clear text"
        ),
        Denial::RelayDenied { matched } => match matched {
            Some(c) => format!(
                "relay: the recipient is outside every accepted domain, and neither the certificate \
                 nor MAIL FROM is an accepted domain of an OnPremises connector's tenant \
                 (counted against {c})"
            ),
            None => "relay: the recipient is outside every accepted domain and the client matches no connector".into(),
        },
        Denial::SpeedBump { percent, .. } => format!(
            "legacy TLS speed bump: {percent}% of TLS 1.0/1.1 sessions are refused now (worst draw shown)"
        ),
        Denial::LegacyTlsRefused { tenant } => format!(
            "legacy (opt-in) listener: tenant {tenant} does not allow legacy TLS clients"
        ),
        Denial::UserUnknown { login } => format!("user {login} does not exist"),
        Denial::UserRestricted { user } => format!("user {user} is restricted by the control plane"),
        Denial::SendAsDenied { user, from } => format!(
            "user {user} may not send as {}",
            from.as_deref().unwrap_or("<>")
        ),
        Denial::OnpremThrottled {
            server,
            build,
            minutes,
            ..
        } => format!(
            "out-of-date Exchange server {server} ({build}) in a throttled minute ({minutes} mins/hr)"
        ),
        Denial::OnpremBlocked {
            server,
            build,
            minutes,
            ..
        } => format!(
            "out-of-date Exchange server {server} ({build}) in a blocked minute ({minutes} mins/hr)"
        ),
    }
}

/// A step answered by `r`.
fn step(name: &str, argument: &str, r: &Reply, rule: String, counters: Vec<String>) -> Step {
    Step {
        step: name.into(),
        argument: argument.into(),
        outcome: if r.is_positive() {
            "accepted"
        } else {
            "refused"
        }
        .into(),
        code: r.code,
        enhanced: r.status.to_string(),
        reply: r.summary(),
        rule,
        counters,
        tenant: None,
        connector: None,
        relay: false,
    }
}

/// A refused step.
fn refused(snapshot: &PolicySnapshot, name: &str, argument: &str, d: &Denial) -> Step {
    step(
        name,
        argument,
        &d.reply(),
        rule(snapshot, d),
        d.counter().map(counted).into_iter().collect(),
    )
}

/// Parses an address as a session would carry it: `local@domain`, angle brackets allowed.
fn address(text: &str) -> Result<Option<Address>, String> {
    let t = text
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim();
    if t.is_empty() {
        return Ok(None);
    }
    match t.rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => Ok(Some(Address {
            local: local.to_owned(),
            domain: domain.to_ascii_lowercase(),
        })),
        _ => Err(format!("`{text}` is not an address (local@domain)")),
    }
}

/// `1.2`, `TLSv1.2`, `tls1.2` as the edge names versions (`TLSv1.2`); `None` for `none`.
fn tls_version(text: &str) -> Result<Option<String>, String> {
    let t = text.trim().to_ascii_lowercase();
    if t == "none" || t.is_empty() {
        return Ok(None);
    }
    let n = t.trim_start_matches("tlsv").trim_start_matches("tls");
    match n {
        "1.0" | "1.1" | "1.2" | "1.3" => Ok(Some(format!("TLSv{n}"))),
        _ => Err(format!(
            "`{text}` is not a TLS version (1.0 to 1.3, or none)"
        )),
    }
}

/// The restriction in force on `name` of `tenant`, if any.
fn restriction(
    snapshot: &PolicySnapshot,
    kind: EntityKind,
    tenant: &TenantId,
    name: &str,
    now_ms: i64,
) -> Option<Restriction> {
    snapshot
        .restriction(kind, tenant, name, now_ms)
        .map(|r| Restriction {
            kind: kind.as_str().into(),
            name: r.name.clone(),
            reason: r.reason.clone(),
            since: fmt_time(r.since_ms),
            until: r.until_ms.map(fmt_time),
        })
}

/// Why `c` matched: the network containing the IP, or the certificate name covering a name.
fn why(c: &Connector, ip: IpAddr, names: &[String], by_cert: bool) -> String {
    if by_cert {
        let cn = c
            .tls_sender_certificate_name
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let covered = names
            .iter()
            .find(|n| {
                c.tls_sender_certificate_name
                    .as_ref()
                    .is_some_and(|x| x.covers(n))
            })
            .cloned()
            .unwrap_or_default();
        format!("certificate name {cn} covers {covered}")
    } else {
        let net = c
            .sender_ip_addresses
            .iter()
            .find(|n| n.contains(&ip))
            .map(ToString::to_string)
            .unwrap_or_default();
        format!("network {net} contains {ip}")
    }
}

/// Evaluates `facts` against `snapshot` at `now_ms`: the edge's verdicts, step by step.
pub(super) fn explain(
    snapshot: &PolicySnapshot,
    facts: &Facts,
    now_ms: i64,
    scope: &str,
) -> Result<Explanation, String> {
    let ip = facts.ip.ok_or("no client IP")?;
    let from = match &facts.mail_from {
        Some(f) => address(f)?,
        None => None,
    };
    let rcpts: Vec<(String, Address)> = facts
        .rcpts
        .iter()
        .map(|r| match address(r) {
            Ok(Some(a)) => Ok((r.clone(), a)),
            Ok(None) => Err(format!("`{r}` is not a recipient")),
            Err(e) => Err(e),
        })
        .collect::<Result<_, _>>()?;
    let tls = facts.tls_version.is_some();
    let legacy = verdict::tls::Legacy {
        rule: if facts.legacy_opt_in {
            LegacyTls::OptIn
        } else {
            LegacyTls::SpeedBump
        },
        legacy: facts
            .tls_version
            .as_deref()
            .is_some_and(moat_edge::legacy::is_legacy),
        // The worst draw: refused whenever the share is above 0.
        draw: 0,
    };
    let client = Client::new(snapshot, ip, &facts.cert_names, tls);
    let mut e = Explanation {
        policy_version: snapshot.version(),
        at: fmt_time(now_ms),
        at_ms: now_ms,
        scope: scope.into(),
        client_ip: ip.to_string(),
        cert_names: facts.cert_names.clone(),
        tls_version: facts.tls_version.clone().unwrap_or_else(|| "none".into()),
        listener: format!(
            "{} ({})",
            if facts.listener.is_empty() {
                "-"
            } else {
                &facts.listener
            },
            if facts.legacy_opt_in {
                "opt-in"
            } else {
                "speed-bump"
            }
        ),
        ehlo: facts.ehlo.clone(),
        connectors: Vec::new(),
        restrictions: Vec::new(),
        steps: Vec::new(),
        onprem: None,
        reply: String::new(),
    };
    // Connection: the connectors the client matches, certificate first, then IP.
    for (list, by_cert) in [(&client.by_cert, true), (&client.by_ip, false)] {
        for c in list.iter() {
            let r = restriction(snapshot, EntityKind::Connector, &c.tenant, &c.name, now_ms);
            if let Some(r) = &r {
                e.restrictions.push(r.clone());
            }
            e.connectors.push(Matched {
                connector: c.id().to_string(),
                kind: c.kind.as_str().into(),
                matched_by: if by_cert { "certificate" } else { "ip" }.into(),
                why: why(c, ip, &facts.cert_names, by_cert),
                restricted: r,
            });
        }
    }
    let sender = match &facts.auth_user {
        Some(login) => {
            let login = login.to_lowercase();
            let Some(user) = snapshot.user(&login) else {
                e.steps.push(step(
                    "AUTH",
                    &login,
                    &reply::AUTH_FAILED.into(),
                    format!("no user {login} (as a wrong password: AUTH fails)"),
                    vec!["auth - failures".into()],
                ));
                return Ok(finish(e));
            };
            if let Some(r) = restriction(
                snapshot,
                EntityKind::User,
                &user.tenant,
                &user.address,
                now_ms,
            ) {
                e.restrictions.push(r);
            }
            let mut s = match verdict::tls::at_auth(snapshot, &legacy, &user.tenant, now_ms) {
                Ok(()) => step(
                    "AUTH",
                    &login,
                    &reply::AUTH_OK.into(),
                    format!("user of tenant {} (password not checked)", user.tenant),
                    Vec::new(),
                ),
                Err(d) => refused(snapshot, "AUTH", &login, &d),
            };
            s.tenant = Some(user.tenant.to_string());
            let stop = s.code >= 400;
            e.steps.push(s);
            if stop {
                return Ok(finish(e));
            }
            Sender::User(snapshot.user(&login).map_or("", |u| u.address.as_str()))
        }
        None => Sender::Client(client),
    };
    // MAIL.
    let from_text = from.as_ref().map_or("<>".into(), |a| format!("<{a}>"));
    let mail = verdict::mail(snapshot, &sender, from.as_ref(), &legacy, now_ms);
    let s = match &mail {
        Ok(()) => step(
            "MAIL",
            &from_text,
            &reply::SENDER_OK.into(),
            match &sender {
                Sender::Client(_) => "no restricted connector matched; speed bump passed".into(),
                Sender::User(u) => format!("user {u} may send as {from_text}"),
            },
            Vec::new(),
        ),
        Err(d) => refused(snapshot, "MAIL", &from_text, d),
    };
    e.steps.push(s);
    if mail.is_err() {
        return Ok(finish(e));
    }
    // Each RCPT; the first accepted one with a connector fixes the transaction's connector.
    let mut first: Option<verdict::Accepted> = None;
    for (text, rcpt) in &rcpts {
        let s = match verdict::recipient(snapshot, &sender, from.as_ref(), rcpt) {
            Ok(a) => {
                let mut counters = Vec::new();
                if first.is_none() {
                    if let Some(c) = &a.connector {
                        counters.push(format!("connector {c} sessions"));
                        first = Some(a.clone());
                    }
                }
                let how = match (&a.tenant, &a.connector, a.relay) {
                    (Some(t), Some(c), true) => {
                        format!("relay for tenant {t} through OnPremises connector {c}")
                    }
                    (Some(t), Some(c), false) => {
                        format!("inbound for tenant {t} through connector {c}")
                    }
                    (Some(t), None, false) => format!("inbound for tenant {t} (no connector)"),
                    (_, _, true) => "relay (authenticated submission)".into(),
                    _ => "accepted".into(),
                };
                let mut s = step(
                    "RCPT",
                    &format!("<{rcpt}>"),
                    &reply::RECIPIENT_OK.into(),
                    format!("{how}; the next hop has the last word"),
                    counters,
                );
                s.tenant = a.tenant.as_ref().map(ToString::to_string);
                s.connector = a.connector.as_ref().map(ToString::to_string);
                s.relay = a.relay;
                s
            }
            Err(d) => refused(snapshot, "RCPT", text, &d),
        };
        e.steps.push(s);
    }
    // End of DATA: the on-premises server of the headers, through the transaction's connector.
    if let (Some(headers), true) = (
        &facts.headers,
        e.steps.iter().any(|s| s.code < 300 && s.step == "RCPT"),
    ) {
        if let Some((sighting, line)) = moat_shared::exchange::evidence(headers) {
            let rules = snapshot.onprem();
            let judged = first
                .as_ref()
                .is_some_and(|a| verdict::onprem::judged(snapshot, a));
            let connector = first.as_ref().and_then(|a| a.connector.clone());
            let tenant = connector.as_ref().map(|c| c.tenant.clone());
            let enforced = tenant.as_ref().and_then(|t| {
                rules
                    .enforced
                    .get(&(t.clone(), sighting.server.to_ascii_lowercase()))
                    .copied()
            });
            let minute = match (tenant.as_ref(), judged) {
                (Some(t), true) => rules
                    .verdict(t, &sighting.server, &sighting.build, now_ms)
                    .map_or(Minute::Open, |(m, _)| m),
                _ => Minute::Open,
            };
            e.onprem = Some(Onprem {
                server: sighting.server.clone(),
                build: sighting.build.to_string(),
                class: rules.baseline.classify(&sighting.build).as_str().into(),
                received: line,
                judged,
                stage: enforced.map_or(0, |x| x.stage),
                throttle: enforced.map_or(0, |x| x.throttle),
                block: enforced.map_or(0, |x| x.block),
                minute: match minute {
                    Minute::Open => "open",
                    Minute::Throttled => "throttled",
                    Minute::Blocked => "blocked",
                }
                .into(),
            });
            let refusal = match (&connector, &tenant, judged) {
                (Some(c), Some(t), true) => {
                    verdict::onprem::refusal(snapshot, c, t, &sighting, now_ms).err()
                }
                _ => None,
            };
            let server = format!("{} {}", sighting.server, sighting.build);
            e.steps.push(match refusal {
                Some(d) => refused(snapshot, "DATA", &server, &d),
                None => step(
                    "DATA",
                    &server,
                    &reply::MESSAGE_ACCEPTED.into(),
                    if judged {
                        "the server is not throttled or blocked this minute; the next hop has the last word".into()
                    } else {
                        "the connector's mail is not judged (not OnPremises)".into()
                    },
                    Vec::new(),
                ),
            });
        }
    }
    Ok(finish(e))
}

/// Sets the explanation's reply: the first refusal's, or the last step's.
fn finish(mut e: Explanation) -> Explanation {
    e.reply = e
        .steps
        .iter()
        .find(|s| s.code >= 400)
        .or(e.steps.last())
        .map(|s| s.reply.clone())
        .unwrap_or_default();
    e
}

/// The table form: a header of facts, the matched connectors, restrictions, the steps.
pub(super) fn render(e: &Explanation) -> String {
    let mut s = String::new();
    let scope = if e.scope.is_empty() {
        String::new()
    } else {
        format!(" (tenant {} only)", e.scope)
    };
    s.push_str(&format!(
        "Policy version {} at {}{scope}\nClient {} TLS {} certificate names {} listener {} EHLO {}\n\n",
        e.policy_version,
        e.at,
        e.client_ip,
        e.tls_version,
        cell(&e.cert_names.join(",")),
        e.listener,
        cell(&e.ehlo),
    ));
    if e.connectors.is_empty() {
        s.push_str("Connectors: none matched\n\n");
    } else {
        let rows: Vec<Vec<String>> = e
            .connectors
            .iter()
            .map(|c| {
                vec![
                    c.connector.clone(),
                    c.kind.clone(),
                    c.matched_by.clone(),
                    c.why.clone(),
                    if c.restricted.is_some() { "yes" } else { "no" }.into(),
                ]
            })
            .collect();
        s.push_str(&render_table(
            &["CONNECTOR", "KIND", "BY", "WHY", "RESTRICTED"],
            &rows,
        ));
        s.push('\n');
    }
    if !e.restrictions.is_empty() {
        let rows: Vec<Vec<String>> = e
            .restrictions
            .iter()
            .map(|r| {
                vec![
                    r.kind.clone(),
                    r.name.clone(),
                    r.since.clone(),
                    r.until.clone().unwrap_or_else(|| "unblocked".into()),
                    r.reason.clone(),
                ]
            })
            .collect();
        s.push_str(&render_table(
            &["RESTRICTED", "NAME", "SINCE", "UNTIL", "REASON"],
            &rows,
        ));
        s.push('\n');
    }
    let rows: Vec<Vec<String>> = e
        .steps
        .iter()
        .map(|st| {
            vec![
                st.step.clone(),
                st.argument.clone(),
                st.reply.clone(),
                st.rule.clone(),
                cell(&st.counters.join(", ")),
            ]
        })
        .collect();
    s.push_str(&render_table(
        &["STEP", "ARGUMENT", "REPLY", "RULE", "COUNTERS"],
        &rows,
    ));
    if let Some(o) = &e.onprem {
        s.push_str(&format!(
            "\nOn-premises server {} build {} ({}), stage {} (throttle {} / block {} mins/hr), this minute {}{}\n  {}\n",
            o.server,
            o.build,
            o.class,
            o.stage,
            o.throttle,
            o.block,
            o.minute,
            if o.judged { "" } else { " (not judged)" },
            o.received
        ));
    }
    s
}

impl Ctx {
    /// `moat admin explain`.
    pub(super) async fn explain(&self, a: ExplainArgs) -> Result<(), Failure> {
        let facts = facts(&a)?;
        let at = match &a.at {
            Some(t) => Some(super::dev::parse_time(t).ok_or_else(|| {
                Failure::Usage(format!("`{t}` is not a time (YYYY-MM-DDTHH:MM[:SS]Z)"))
            })?),
            None => None,
        };
        let domains = facts
            .mail_from
            .iter()
            .chain(facts.rcpts.iter())
            .filter_map(|x| address(x).ok().flatten())
            .map(|x| x.domain)
            .collect();
        let req = ReadRequest {
            tenant: a.tenant.clone().unwrap_or_default(),
            stale_ok: self.stale_ok,
            explain: Some(ExplainQuery {
                client_ip: a.client_ip.to_string(),
                cert_names: facts.cert_names.clone(),
                domains,
                auth_user: a.auth_user.clone().unwrap_or_default(),
            }),
            ..ReadRequest::of(ReadKind::Explain)
        };
        let reply = self.client.read(req.clone()).await?;
        let update = reply.explain_policy.ok_or_else(|| {
            Failure::Other("the control plane does not support explain (upgrade it)".into())
        })?;
        let change = moat_proto::convert::change_from_wire(&update)
            .map_err(|e| Failure::Other(format!("the policy read is invalid: {e}")))?;
        let snapshot = PolicySnapshot::from_change(&change)
            .map_err(|e| Failure::Other(format!("the policy read is invalid: {e}")))?;
        let now = at.unwrap_or(reply.cluster_now_ms);
        let e = explain(&snapshot, &facts, now, &req.tenant).map_err(Failure::Usage)?;
        match self.output {
            Output::Json => print_json(&serde_json::to_value(&e).unwrap_or_default()),
            Output::Table => out(render(&e).trim_end()),
        }
        Ok(())
    }
}

/// Reads the local inputs (certificates, headers) and checks the arguments.
fn facts(a: &ExplainArgs) -> Result<Facts, Failure> {
    use rustls_pki_types::pem::PemObject as _;
    let mut cert_names: Vec<String> = a.cert_name.iter().map(|n| n.to_lowercase()).collect();
    for file in &a.cert {
        let der = rustls_pki_types::CertificateDer::from_pem_file(file)
            .map_err(|e| Failure::Usage(format!("reading {}: {e}", file.display())))?;
        let names = moat_edge::tls::certificate_domains(&der);
        if names.is_empty() {
            return Err(Failure::Usage(format!(
                "{} has no DNS name (SAN or CN)",
                file.display()
            )));
        }
        cert_names.extend(names);
    }
    let tls_version = match &a.tls_version {
        Some(v) => tls_version(v).map_err(Failure::Usage)?,
        None if !cert_names.is_empty() => Some("TLSv1.2".into()),
        None => None,
    };
    if tls_version.is_none() && !cert_names.is_empty() {
        return Err(Failure::Usage(
            "a client certificate needs TLS (--tls-version)".into(),
        ));
    }
    let headers = match &a.headers {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| Failure::Usage(format!("reading {}: {e}", f.display())))?,
        ),
        None => None,
    };
    address(&a.mail_from).map_err(Failure::Usage)?;
    for r in &a.rcpt {
        if address(r).map_err(Failure::Usage)?.is_none() {
            return Err(Failure::Usage(format!("`{r}` is not a recipient")));
        }
    }
    Ok(Facts {
        ip: Some(a.client_ip),
        cert_names,
        tls_version,
        legacy_opt_in: a.legacy_tls == LegacyRule::OptIn,
        listener: a.listener.clone().unwrap_or_default(),
        ehlo: a.ehlo.clone().unwrap_or_default(),
        auth_user: a.auth_user.clone(),
        mail_from: Some(a.mail_from.clone()),
        rcpts: a.rcpt.clone(),
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_shared::onprem::{minutes, Enforced};
    use moat_shared::submission::SpeedBumpStep;
    use moat_shared::{
        CertName, ConnectorKind, Domain, OnpremSettings, PolicyChange, RestrictedEntity,
        SubmissionUser, Tenant,
    };

    const SERVER: &str = "exch1.contoso.test";

    fn tid(id: &str) -> TenantId {
        TenantId::new(id).unwrap()
    }

    fn connector(name: &str, kind: ConnectorKind) -> Connector {
        Connector::new(tid("contoso"), name, kind)
    }

    /// contoso: OnPremises by IP (192.0.2.0/24, restricted when `restricted`), OnPremises by
    /// certificate (`*.contoso.test`), a Partner connector scoping fabrikam.test to
    /// 198.51.100.7 over TLS; a user; the speed bump at 100%; `exch1` enforced at stage 1.
    fn snapshot(restricted: bool) -> PolicySnapshot {
        let mut onprem = connector("onprem", ConnectorKind::OnPremises);
        onprem.sender_ip_addresses = vec![Connector::parse_ip("192.0.2.0/24").unwrap()];
        let mut cert = connector("cert", ConnectorKind::OnPremises);
        cert.tls_sender_certificate_name = Some(CertName::new("*.contoso.test").unwrap());
        let mut partner = connector("partner", ConnectorKind::Partner);
        partner.sender_ip_addresses = vec![Connector::parse_ip("198.51.100.7").unwrap()];
        partner.sender_domains = vec!["fabrikam.test".into()];
        partner.restrict_domains_to_ip_addresses = true;
        partner.require_tls = true;
        let restriction = RestrictedEntity {
            tenant: tid("contoso"),
            kind: EntityKind::Connector,
            name: "onprem".into(),
            reason: "messages 900 in 5 min, 30x the baseline of 30".into(),
            since_ms: 0,
            until_ms: None,
        };
        PolicySnapshot::from_change(&PolicyChange {
            version: 7,
            reset: true,
            tenants: vec![Tenant {
                id: tid("contoso"),
                display_name: "Contoso".into(),
                accepted_domains: vec![Domain::new("contoso.test").unwrap()],
                allow_legacy_tls_clients: false,
            }],
            connectors: vec![onprem, cert, partner],
            users: vec![SubmissionUser {
                tenant: tid("contoso"),
                address: "app@contoso.test".into(),
                password_hash: String::new(),
                send_as: vec![],
            }],
            restricted: if restricted {
                vec![restriction]
            } else {
                vec![]
            },
            speed_bump: Some(vec![SpeedBumpStep::parse("1970-01-01=100").unwrap()]),
            onprem: Some(OnpremSettings::default()),
            enforced: vec![(
                (tid("contoso"), SERVER.into()),
                Enforced {
                    stage: 1,
                    throttle: 20,
                    block: 10,
                },
            )],
            ..Default::default()
        })
        .unwrap()
    }

    fn facts(ip: &str, from: &str, rcpts: &[&str]) -> Facts {
        Facts {
            ip: Some(ip.parse().unwrap()),
            mail_from: Some(from.into()),
            rcpts: rcpts.iter().map(|r| r.to_string()).collect(),
            ..Default::default()
        }
    }

    /// The reply each case ends with: the edge's refusals come from its own verdicts.
    #[test]
    fn cases_end_with_the_edges_reply() {
        let open = snapshot(false);
        let restricted = snapshot(true);
        let run = |s: &PolicySnapshot, f: Facts| explain(s, &f, 0, "").unwrap();
        let cases: Vec<(&str, Explanation, &str)> = vec![
            (
                "inbound",
                run(
                    &open,
                    facts("203.0.113.1", "a@ext.test", &["u@contoso.test"]),
                ),
                "250 2.1.5",
            ),
            (
                "relay by IP",
                run(
                    &open,
                    facts("192.0.2.9", "app@contoso.test", &["x@ext.test"]),
                ),
                "250 2.1.5",
            ),
            (
                "relay refused",
                run(&open, facts("192.0.2.9", "app@ext.test", &["x@ext.test"])),
                "550 5.7.64",
            ),
            (
                "partner",
                run(
                    &open,
                    facts("192.0.2.9", "a@fabrikam.test", &["u@contoso.test"]),
                ),
                "550 5.7.51",
            ),
            (
                "TLS required",
                run(
                    &open,
                    facts("198.51.100.7", "a@fabrikam.test", &["u@contoso.test"]),
                ),
                "451 4.7.10",
            ),
            (
                "restricted connector",
                run(
                    &restricted,
                    facts("192.0.2.9", "app@contoso.test", &["x@ext.test"]),
                ),
                "550 5.7.711",
            ),
            (
                "speed bump",
                run(
                    &open,
                    Facts {
                        tls_version: Some("TLSv1.0".into()),
                        ..facts("203.0.113.1", "a@ext.test", &["u@contoso.test"])
                    },
                ),
                "421 4.7.66",
            ),
            (
                "unknown AUTH user",
                run(
                    &open,
                    Facts {
                        auth_user: Some("nobody@contoso.test".into()),
                        ..facts("203.0.113.1", "a@ext.test", &["u@contoso.test"])
                    },
                ),
                "535 5.7.8",
            ),
            (
                "send-as",
                run(
                    &open,
                    Facts {
                        auth_user: Some("App@contoso.test".into()),
                        tls_version: Some("TLSv1.3".into()),
                        ..facts("203.0.113.1", "ceo@contoso.test", &["x@ext.test"])
                    },
                ),
                "550 5.7.60",
            ),
        ];
        for (what, e, want) in &cases {
            assert!(e.reply.starts_with(want), "{what}: {e:#?}");
        }
        let restricted = &cases[5].1;
        assert_eq!(restricted.restrictions.len(), 1);
        assert!(restricted.restrictions[0].reason.contains("900"));
        assert_eq!(restricted.policy_version, 7);
        let refused = &cases[2].1;
        assert_eq!(
            refused.connectors[0].why,
            "network 192.0.2.0/24 contains 192.0.2.9"
        );
        assert_eq!(
            refused.steps[1].counters,
            vec!["connector contoso/onprem relay-refused".to_string()]
        );
    }

    /// A certificate name matches the certificate connector and relays; with headers, the
    /// on-premises server is read and judged at the minute given.
    #[test]
    fn certificate_route_and_onprem_server() {
        let snap = snapshot(false);
        let hour = minutes(SERVER, 0, 1, 20, 10);
        let blocked = hour.iter().position(|m| *m == Minute::Blocked).unwrap() as i64 * 60_000;
        let f = Facts {
            cert_names: vec!["mail.contoso.test".into()],
            tls_version: Some("TLSv1.2".into()),
            headers: Some(format!(
                "Received: from a.contoso.test (10.0.0.1) by {SERVER} (10.0.0.2) with Microsoft SMTP Server (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id 15.0.1497.2; Mon, 23 Nov 2026 10:00:03 +0000\r\nSubject: x\r\n\r\n"
            )),
            ..facts("203.0.113.1", "", &["x@ext.test"])
        };
        let e = explain(&snap, &f, blocked, "").unwrap();
        assert_eq!(e.connectors[0].matched_by, "certificate");
        assert_eq!(
            e.connectors[0].why,
            "certificate name *.contoso.test covers mail.contoso.test"
        );
        let o = e.onprem.as_ref().expect("server read");
        assert_eq!(
            (o.server.as_str(), o.stage, o.minute.as_str()),
            (SERVER, 1, "blocked")
        );
        assert!(e.reply.starts_with("550 5.7.230"), "{e:#?}");
        let data = e.steps.last().unwrap();
        assert_eq!(
            data.counters,
            vec!["connector contoso/cert onprem-blocked".to_string()]
        );
        // The table names each part.
        let table = render(&e);
        for needle in [
            "CONNECTOR",
            "contoso/cert",
            "STEP",
            "550 5.7.230",
            "On-premises server exch1.contoso.test build 15.0.1497.2",
        ] {
            assert!(table.contains(needle), "{needle} in\n{table}");
        }
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["steps"][2]["step"], "DATA");
        assert_eq!(json["onprem"]["minute"], "blocked");
    }

    #[test]
    fn inputs_are_read_as_a_session_carries_them() {
        assert_eq!(address("<>").unwrap(), None);
        assert_eq!(address("").unwrap(), None);
        assert_eq!(
            address("<A@Contoso.Test>").unwrap().unwrap().to_string(),
            "A@contoso.test"
        );
        assert!(address("nobody").is_err());
        assert_eq!(tls_version("1.0").unwrap().as_deref(), Some("TLSv1.0"));
        assert_eq!(tls_version("TLSv1.3").unwrap().as_deref(), Some("TLSv1.3"));
        assert_eq!(tls_version("none").unwrap(), None);
        assert!(tls_version("1.4").is_err());
    }
}
