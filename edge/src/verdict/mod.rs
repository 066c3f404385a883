//! Policy decisions: pure functions of a snapshot and the session's facts.
//!
//! No I/O, no clock, no randomness (the caller passes the time and the speed bump's draw): two
//! edges with the same snapshot version decide alike. A refusal is a [`Denial`], a value that
//! names its reason and what decided it; the SMTP reply ([`Denial::reply`]) and the counter it
//! increments ([`Denial::counter`]) both derive from it. The driver only sends the one and
//! counts the other.
//!
//! One file per family of decisions:
//! - [`connector`]: restricted connectors (`550 5.7.711` at MAIL) and the Partner connector
//!   rules of a recipient's tenant (`550 5.7.51`, `451 4.7.10`).
//! - [`relay`]: tenant attribution of a recipient: inbound mail for an accepted domain, or
//!   relay under the rules in force since November 2023 (`550 5.7.64` otherwise).
//! - [`submission`]: authenticated users: restrictions (`550 5.1.8`), send-as (`550 5.7.60`),
//!   relay attribution of their recipients.
//! - [`tls`]: legacy TLS: the opt-in rule at AUTH (`550 5.7.67`) and the speed bump
//!   (`421 4.7.66`).
//! - [`onprem`]: out-of-date on-premises Exchange servers (`450 4.7.230`, `550 5.7.230`).
//!
//! [`mail`] and [`recipient`] compose them into the decisions the driver asks for.

pub mod connector;
pub mod onprem;
pub mod relay;
pub mod submission;
pub mod tls;

use std::net::IpAddr;

use moat_shared::signal::{AuthCounter, ConnectorCounter};
use moat_shared::{Connector, ConnectorId, PolicySnapshot, TenantId};

use crate::session::command::Address;
use crate::session::reply::{self, Reply};
use crate::session::SessionFacts;

/// Why the edge refuses a step of a session, with what decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The client matches a connector the control plane restricted.
    ConnectorRestricted {
        /// The restricted connector.
        connector: ConnectorId,
    },
    /// The sender's domain is scoped by a Partner connector of the recipient's tenant, and the
    /// client is outside that connector's IP addresses or certificate.
    PartnerRestricted {
        /// The Partner connector.
        connector: ConnectorId,
        /// The MAIL FROM domain it scopes.
        sender_domain: String,
        /// The client's address.
        ip: IpAddr,
        /// The connector's `restrict-domains-to-ip-addresses` (named in the reply).
        restrict_to_ip: bool,
        /// The connector's `restrict-domains-to-certificate` (named in the reply).
        restrict_to_certificate: bool,
    },
    /// A connector that applies to the recipient requires TLS and the session is in clear text.
    ConnectorRequiresTls {
        /// The connector.
        connector: ConnectorId,
    },
    /// A recipient outside every accepted domain, and the relay rules do not allow it.
    RelayDenied {
        /// The first connector the client matched (certificate first, then IP), which the
        /// refusal is counted against; `None` when it matched none.
        matched: Option<ConnectorId>,
    },
    /// A TLS 1.0/1.1 session drawn for refusal by the speed bump.
    SpeedBump {
        /// The share of legacy sessions refused now, in percent.
        percent: u8,
        /// The session's draw, 0 to 99 (refused when below `percent`).
        draw: u8,
    },
    /// A user of a tenant without `allow-legacy-tls-clients` on a legacy (opt-in) listener.
    LegacyTlsRefused {
        /// The user's tenant.
        tenant: TenantId,
    },
    /// The logged-in user no longer exists (deleted since it logged in).
    UserUnknown {
        /// The login.
        login: String,
    },
    /// The logged-in user is restricted (it exceeded its sending limits).
    UserRestricted {
        /// The user's address.
        user: String,
    },
    /// MAIL FROM an address the logged-in user may not send as.
    SendAsDenied {
        /// The user's address.
        user: String,
        /// The envelope sender, `None` for `<>`.
        from: Option<String>,
    },
    /// A message from an out-of-date on-premises Exchange server in a throttled minute.
    OnpremThrottled {
        /// The connector the message arrived through.
        connector: ConnectorId,
        /// The server (the `by` host of its Received stamp).
        server: String,
        /// The build it stamped.
        build: String,
        /// The service name the reply gives.
        service: String,
        /// Throttled minutes per hour at the server's stage.
        minutes: u8,
    },
    /// A message from an out-of-date on-premises Exchange server in a blocked minute.
    OnpremBlocked {
        /// The connector the message arrived through.
        connector: ConnectorId,
        /// The server (the `by` host of its Received stamp).
        server: String,
        /// The build it stamped.
        build: String,
        /// The service name the reply gives.
        service: String,
        /// Blocked minutes per hour at the server's stage.
        minutes: u8,
    },
}

/// The counter a [`Denial`] increments, by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted<'a> {
    /// A counter of a connector (`signal::CONNECTOR` scope).
    Connector {
        /// The connector.
        connector: &'a ConnectorId,
        /// Which of its counters.
        counter: ConnectorCounter,
    },
    /// An edge-wide SMTP AUTH counter (`signal::AUTH` scope, key `-`).
    Auth(AuthCounter),
}

impl Denial {
    /// The SMTP reply that refuses the step, from the reply registry.
    pub fn reply(&self) -> Reply {
        match self {
            Self::ConnectorRestricted { .. } => reply::RESTRICTED_CONNECTOR.into(),
            Self::PartnerRestricted {
                connector,
                restrict_to_ip,
                restrict_to_certificate,
                ..
            } => Reply::with_text(
                reply::PARTNER_RESTRICTED,
                connector::partner_text(&connector.name, *restrict_to_ip, *restrict_to_certificate),
            ),
            Self::ConnectorRequiresTls { .. } => reply::CONNECTOR_REQUIRES_TLS.into(),
            Self::RelayDenied { .. } => reply::RELAY_DENIED.into(),
            Self::SpeedBump { .. } => reply::LEGACY_TLS_SPEED_BUMP.into(),
            Self::LegacyTlsRefused { .. } => reply::LEGACY_TLS_NOT_ALLOWED.into(),
            Self::UserUnknown { .. } => reply::AUTH_REQUIRED.into(),
            Self::UserRestricted { .. } => reply::RESTRICTED_USER.into(),
            Self::SendAsDenied { .. } => reply::SEND_AS_DENIED.into(),
            Self::OnpremThrottled {
                service, minutes, ..
            } => Reply::with_text(
                reply::ONPREM_THROTTLED,
                format!(
                    "Connecting Exchange server version is out-of-date; connection to {service} throttled for {minutes} mins/hr."
                ),
            ),
            Self::OnpremBlocked {
                service, minutes, ..
            } => Reply::with_text(
                reply::ONPREM_BLOCKED,
                format!(
                    "Connecting Exchange server version is out-of-date; connection to {service} blocked for {minutes} mins/hr."
                ),
            ),
        }
    }

    /// The counter the refusal increments, if any. Only a relay refusal counts as
    /// `relay-refused` (the relay detector's input).
    pub fn counter(&self) -> Option<Counted<'_>> {
        match self {
            Self::RelayDenied { matched } => matched.as_ref().map(|c| Counted::Connector {
                connector: c,
                counter: ConnectorCounter::RelayRefused,
            }),
            Self::SpeedBump { .. } => Some(Counted::Auth(AuthCounter::SpeedBump)),
            Self::LegacyTlsRefused { .. } => Some(Counted::Auth(AuthCounter::LegacyRefused)),
            Self::OnpremThrottled { connector, .. } => Some(Counted::Connector {
                connector,
                counter: ConnectorCounter::OnpremThrottled,
            }),
            Self::OnpremBlocked { connector, .. } => Some(Counted::Connector {
                connector,
                counter: ConnectorCounter::OnpremBlocked,
            }),
            Self::ConnectorRestricted { .. }
            | Self::PartnerRestricted { .. }
            | Self::ConnectorRequiresTls { .. }
            | Self::UserUnknown { .. }
            | Self::UserRestricted { .. }
            | Self::SendAsDenied { .. } => None,
        }
    }
}

/// What an accepted recipient is attributed to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    /// The tenant: the recipient's for inbound mail, the relaying tenant for relay.
    pub tenant: Option<TenantId>,
    /// The connector the mail arrived through, if one matched.
    pub connector: Option<ConnectorId>,
    /// Whether the recipient is outside every accepted domain (relay).
    pub relay: bool,
    /// Whether that connector is an OnPremises one (its Exchange build is tracked).
    pub onprem: bool,
}

/// The connectors a session's client matches.
#[derive(Debug)]
pub struct Client<'a> {
    /// The client's address.
    pub ip: IpAddr,
    /// By client IP.
    pub by_ip: Vec<&'a Connector>,
    /// By the validated client certificate's names.
    pub by_cert: Vec<&'a Connector>,
    /// The validated client certificate's names.
    pub cert_domains: &'a [String],
    /// Whether the session is inside TLS.
    pub tls: bool,
}

impl<'a> Client<'a> {
    /// Looks the client up in the snapshot's connector index.
    pub fn new(
        snapshot: &'a PolicySnapshot,
        ip: IpAddr,
        cert_domains: &'a [String],
        tls: bool,
    ) -> Self {
        Self {
            ip,
            by_ip: snapshot.connectors_by_ip(ip),
            by_cert: snapshot.connectors_by_certificate(cert_domains),
            cert_domains,
            tls,
        }
    }

    /// The client of a session without AUTH: its address, certificate and TLS state.
    pub fn of(snapshot: &'a PolicySnapshot, facts: &'a SessionFacts) -> Self {
        let certs: &[String] = facts
            .tls
            .as_ref()
            .map_or(&[], |t| t.client_domains.as_slice());
        Self::new(snapshot, facts.peer.ip(), certs, facts.tls.is_some())
    }

    /// Every matched connector: by certificate first, then by IP.
    fn all(&self) -> impl Iterator<Item = &'a Connector> + '_ {
        self.by_cert.iter().chain(self.by_ip.iter()).copied()
    }

    fn matches(&self, c: &Connector) -> bool {
        self.all().any(|m| std::ptr::eq(m, c))
    }

    /// The connector of `tenant` this client came through: certificate first, then IP.
    fn connector_of(&self, tenant: &TenantId) -> Option<&'a Connector> {
        self.all().find(|c| c.tenant == *tenant)
    }
}

/// Who sends a transaction: a client judged by its connectors (listeners without AUTH), or a
/// logged-in user.
#[derive(Debug)]
pub enum Sender<'a> {
    /// A client on a listener without AUTH.
    Client(Client<'a>),
    /// The SMTP AUTH login (lowercase).
    User(&'a str),
}

impl<'a> Sender<'a> {
    /// The sender of a session: its user once authenticated, its client otherwise.
    pub fn of(snapshot: &'a PolicySnapshot, facts: &'a SessionFacts) -> Self {
        match &facts.auth {
            Some(login) => Self::User(login),
            None => Self::Client(Client::of(snapshot, facts)),
        }
    }
}

/// MAIL: a client is refused when it matches a restricted connector, then by the speed bump;
/// a user when it is gone or restricted, or may not send as `from`.
pub fn mail(
    snapshot: &PolicySnapshot,
    sender: &Sender<'_>,
    from: Option<&Address>,
    legacy: &tls::Legacy,
    now_ms: i64,
) -> Result<(), Denial> {
    match sender {
        Sender::Client(client) => {
            connector::restricted(snapshot, client, now_ms)?;
            tls::speed_bump(snapshot, legacy, now_ms)
        }
        Sender::User(login) => submission::mail(snapshot, login, from, now_ms),
    }
}

/// RCPT: what `rcpt` is attributed to, or why it is refused. A user may send anywhere
/// (submission is relay); a client is held to the connector and relay rules.
pub fn recipient(
    snapshot: &PolicySnapshot,
    sender: &Sender<'_>,
    from: Option<&Address>,
    rcpt: &Address,
) -> Result<Accepted, Denial> {
    match sender {
        Sender::Client(client) => relay::recipient(snapshot, client, from, rcpt),
        Sender::User(_) => Ok(submission::recipient(snapshot, rcpt)),
    }
}

#[cfg(test)]
pub(crate) mod testkit {
    //! Fixtures shared by the verdict tables.

    use super::*;
    use moat_shared::{CertName, ConnectorKind, Domain, Tenant};

    /// A connector id from its text.
    pub fn cid(text: &str) -> ConnectorId {
        ConnectorId::parse(text).unwrap()
    }

    pub fn tenant(id: &str, domains: &[&str]) -> Tenant {
        Tenant {
            id: TenantId::new(id).unwrap(),
            display_name: id.into(),
            accepted_domains: domains.iter().map(|d| Domain::new(d).unwrap()).collect(),
            allow_legacy_tls_clients: false,
        }
    }

    pub fn connector(tenant: &str, name: &str, kind: ConnectorKind) -> Connector {
        Connector::new(TenantId::new(tenant).unwrap(), name, kind)
    }

    /// contoso: an OnPremises connector by IP (192.0.2.0/24), one by certificate
    /// (`*.contoso.test`), and a Partner connector scoping `fabrikam.test` to 198.51.100.7 over
    /// TLS; tenant `other` has no connector.
    pub fn snapshot() -> PolicySnapshot {
        let mut onprem = connector("contoso", "onprem", ConnectorKind::OnPremises);
        onprem.sender_ip_addresses = vec![Connector::parse_ip("192.0.2.0/24").unwrap()];
        let mut cert = connector("contoso", "cert", ConnectorKind::OnPremises);
        cert.tls_sender_certificate_name = Some(CertName::new("*.contoso.test").unwrap());
        let mut partner = connector("contoso", "partner", ConnectorKind::Partner);
        partner.sender_ip_addresses = vec![Connector::parse_ip("198.51.100.7").unwrap()];
        partner.sender_domains = vec!["fabrikam.test".into()];
        partner.restrict_domains_to_ip_addresses = true;
        partner.require_tls = true;
        PolicySnapshot::from_change(&moat_shared::PolicyChange {
            version: 1,
            reset: true,
            tenants: vec![
                tenant("contoso", &["contoso.test"]),
                tenant("other", &["other.test"]),
            ],
            connectors: vec![onprem, cert, partner],
            ..Default::default()
        })
        .unwrap()
    }

    pub fn addr(a: &str) -> Address {
        let (local, domain) = a.split_once('@').unwrap();
        Address {
            local: local.into(),
            domain: domain.into(),
        }
    }

    /// The denial's reply as sent (untagged) and its counter as `scope key name`.
    pub fn outcome(d: &Denial) -> (String, Option<String>) {
        let mut out = Vec::new();
        d.reply().render("", &mut out);
        let reply = String::from_utf8(out).unwrap().trim_end().to_owned();
        let counter = d.counter().map(|c| match c {
            Counted::Connector { connector, counter } => {
                format!("connector {connector} {}", counter.as_str())
            }
            Counted::Auth(a) => format!("auth - {}", a.as_str()),
        });
        (reply, counter)
    }

    /// One table row: the case, the denial its inputs gave, the expected reply line (untagged)
    /// and counter (`scope key name`); `None` for none.
    pub type Row<'a> = (&'a str, Option<Denial>, Option<&'a str>, Option<&'a str>);

    /// Asserts a table of rows.
    pub fn check(rows: &[Row<'_>]) {
        for (case, denial, reply, counter) in rows {
            match (denial, reply) {
                (None, None) => {}
                (Some(d), Some(reply)) => {
                    let (got, got_counter) = outcome(d);
                    assert_eq!(got, *reply, "{case}: {d:?}");
                    assert_eq!(got_counter.as_deref(), *counter, "{case}: {d:?}");
                }
                (d, r) => panic!("{case}: got {d:?}, expected {r:?}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;
    use crate::config::LegacyTls;

    /// The composed decisions dispatch by sender: a client meets the connector and relay
    /// rules, a user the submission rules.
    #[test]
    fn mail_and_recipient_dispatch_by_sender() {
        let snap = snapshot();
        let legacy = tls::Legacy {
            rule: LegacyTls::SpeedBump,
            legacy: false,
            draw: 0,
        };
        let client = Client::new(&snap, "203.0.113.1".parse().unwrap(), &[], false);
        let sender = Sender::Client(client);
        assert_eq!(mail(&snap, &sender, None, &legacy, 0), Ok(()));
        assert_eq!(
            recipient(&snap, &sender, None, &addr("x@ext.test")),
            Err(Denial::RelayDenied { matched: None })
        );
        let user = Sender::User("nobody@contoso.test");
        assert_eq!(
            mail(&snap, &user, None, &legacy, 0),
            Err(Denial::UserUnknown {
                login: "nobody@contoso.test".into()
            })
        );
        let a = recipient(&snap, &user, None, &addr("x@ext.test")).unwrap();
        assert!(a.relay && a.connector.is_none());
    }

    /// Every variant's reply is a registry entry (code and enhanced code), and only relay
    /// refusals count `relay-refused`.
    #[test]
    fn every_denial_replies_from_the_registry() {
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let c = || cid("contoso/onprem");
        let rows: Vec<(Denial, reply::Code)> = vec![
            (
                Denial::ConnectorRestricted { connector: c() },
                reply::RESTRICTED_CONNECTOR,
            ),
            (
                Denial::PartnerRestricted {
                    connector: cid("contoso/partner"),
                    sender_domain: "fabrikam.test".into(),
                    ip,
                    restrict_to_ip: true,
                    restrict_to_certificate: false,
                },
                reply::PARTNER_RESTRICTED,
            ),
            (
                Denial::ConnectorRequiresTls { connector: c() },
                reply::CONNECTOR_REQUIRES_TLS,
            ),
            (
                Denial::RelayDenied { matched: Some(c()) },
                reply::RELAY_DENIED,
            ),
            (
                Denial::SpeedBump {
                    percent: 50,
                    draw: 3,
                },
                reply::LEGACY_TLS_SPEED_BUMP,
            ),
            (
                Denial::LegacyTlsRefused {
                    tenant: TenantId::new("contoso").unwrap(),
                },
                reply::LEGACY_TLS_NOT_ALLOWED,
            ),
            (
                Denial::UserUnknown { login: "a".into() },
                reply::AUTH_REQUIRED,
            ),
            (
                Denial::UserRestricted { user: "a".into() },
                reply::RESTRICTED_USER,
            ),
            (
                Denial::SendAsDenied {
                    user: "a".into(),
                    from: None,
                },
                reply::SEND_AS_DENIED,
            ),
            (
                Denial::OnpremThrottled {
                    connector: c(),
                    server: "exch1".into(),
                    build: "15.1.2507.6".into(),
                    service: "Moat".into(),
                    minutes: 10,
                },
                reply::ONPREM_THROTTLED,
            ),
            (
                Denial::OnpremBlocked {
                    connector: c(),
                    server: "exch1".into(),
                    build: "15.1.2507.6".into(),
                    service: "Moat".into(),
                    minutes: 10,
                },
                reply::ONPREM_BLOCKED,
            ),
        ];
        for (d, code) in &rows {
            let r = d.reply();
            assert_eq!((r.code, &*r.status), (code.code, code.status), "{d:?}");
            let relay_refused = matches!(
                d.counter(),
                Some(Counted::Connector {
                    counter: ConnectorCounter::RelayRefused,
                    ..
                })
            );
            assert_eq!(
                relay_refused,
                matches!(d, Denial::RelayDenied { .. }),
                "{d:?}"
            );
        }
        // The Partner refusal and the relay refusal share a code class, not a counter.
        let partner = &rows[1].0;
        assert_eq!(partner.reply().code, reply::RELAY_DENIED.code);
        assert_eq!(partner.counter(), None);
    }
}
