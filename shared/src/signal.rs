//! The counters edges report to the control plane, and how they are named on the wire.
//!
//! A counter is `(scope, key, name)`. Names that carry several dimensions join them with `|`;
//! the functions here are the one place that builds and splits them, used by edges to report
//! and by the control plane to aggregate.

/// Scope of per-tenant TLS usage: key = tenant, name = `sessions|listener|version|cipher` or
/// `messages|...`.
pub const TLS: &str = "tls";
/// Scope of legacy-TLS clients: key = tenant, name = `sessions|ip|user|version` or `messages|...`.
pub const TLS_LEGACY: &str = "tls-legacy";
/// Scope of SMTP AUTH users: key = address, name = [`RECIPIENTS`].
pub const USER: &str = "user";
/// Recipients accepted for an authenticated user.
pub const RECIPIENTS: &str = "recipients";
/// Scope of inbound connectors: key = a [`ConnectorId`](crate::ConnectorId)'s text
/// (`tenant/name`), name = a [`ConnectorCounter`].
pub const CONNECTOR: &str = "connector";

macro_rules! counters {
    ($(#[$enum_doc:meta])* $enum:ident { $($(#[$doc:meta])* $name:ident = $wire:literal,)* }) => {
        $(#[$enum_doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $enum {
            $($(#[$doc])* $name,)*
        }

        impl $enum {
            /// Every counter, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$name),*];

            /// The counter's name on the wire (and in `moat admin counters list`).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$name => $wire,)*
                }
            }

            /// The counter a wire name stands for; `None` for a name no edge sends.
            pub fn parse(name: &str) -> Option<Self> {
                match name {
                    $($wire => Some(Self::$name),)*
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $enum {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

counters! {
    /// The counters an edge reports per inbound connector ([`CONNECTOR`] scope, key
    /// `tenant/name`); the control plane's detectors read some of them.
    ConnectorCounter {
        /// Sessions that had a recipient accepted through the connector (once per session).
        Sessions = "sessions",
        /// Messages the next hop accepted.
        Messages = "messages",
        /// Recipients of those messages.
        Recipients = "recipients",
        /// Content octets of those messages.
        Bytes = "bytes",
        /// Relayed recipients (outside every accepted domain) of those messages.
        Relay = "relay",
        /// Recipients refused `550 5.7.64` by the relay rules, counted against the first
        /// connector the client matched.
        RelayRefused = "relay-refused",
        /// Messages whose MAIL FROM domain is not an accepted domain of the connector's tenant.
        Unprovisioned = "unprovisioned",
        /// Messages whose header From domain differs from the MAIL FROM domain.
        Mismatch = "mismatch",
        /// Messages the next hop refused with a 4xx.
        Nexthop4xx = "nexthop-4xx",
        /// Messages the next hop refused with a 5xx.
        Nexthop5xx = "nexthop-5xx",
        /// Messages refused `450 4.7.230`: an out-of-date on-premises Exchange server in a
        /// throttled minute.
        OnpremThrottled = "onprem-throttled",
        /// Messages refused `550 5.7.230`: an out-of-date on-premises Exchange server in a
        /// blocked minute.
        OnpremBlocked = "onprem-blocked",
        /// Messages whose SPF, DKIM and DMARC were checked.
        AuthChecked = "auth-checked",
        /// Checked messages whose SPF failed (fail or softfail).
        SpfFail = "spf-fail",
        /// Checked messages with a failing DKIM signature.
        DkimFail = "dkim-fail",
        /// Checked messages whose DMARC failed.
        DmarcFail = "dmarc-fail",
    }
}

counters! {
    /// The SMTP AUTH outcomes an edge reports ([`AUTH`] scope, key `-`).
    AuthCounter {
        /// Wrong login or password.
        Failures = "failures",
        /// A login refused by the edge's own failure throttle.
        Throttled = "throttled",
        /// A login refused by a cluster-wide lockout (see [`AUTH_FAILURE`]).
        LockedOut = "locked-out",
        /// A legacy-TLS session refused by the speed bump (at AUTH, or at MAIL without AUTH).
        SpeedBump = "speed-bump",
        /// A user refused on a legacy listener: its tenant does not allow legacy TLS clients.
        LegacyRefused = "legacy-refused",
    }
}
/// Scope of on-premises Exchange sightings: key = the [`ConnectorId`](crate::ConnectorId)'s
/// text (`tenant/name`), name =
/// `server|build` (see [`onprem_server`]), value = messages.
pub const ONPREM: &str = "onprem";

/// The counter name of an on-premises server seen with a build.
pub fn onprem_server(server: &str, build: &str) -> String {
    format!("{}|{}", clean(server), clean(build))
}

/// Scope of SMTP AUTH outcomes on an edge: key = `-`, name = an [`AuthCounter`].
pub const AUTH: &str = "auth";

/// Scope of failed SMTP AUTH logins, counted cluster-wide: key = the login (lower case), name =
/// the client's IP address, value = failures. Edges report only logins that name a user or an
/// address in a tenant's accepted domain (the others belong to no tenant and cannot be locked
/// out). The control plane counts them per login and per (tenant, address) and locks out what
/// goes over its threshold with a user restriction named by [`auth_lockout`].
pub const AUTH_FAILURE: &str = "auth-failure";

/// What starts the name of a cluster-wide AUTH lockout (a user restriction whose name is not a
/// user's address).
pub const AUTH_LOCKOUT_PREFIX: &str = "auth-lockout:";

/// The name of the user restriction that locks `subject` (a login, or a client IP address in
/// its text form) out of SMTP AUTH in a tenant: `auth-lockout:<subject>`.
pub fn auth_lockout(subject: &str) -> String {
    format!("{AUTH_LOCKOUT_PREFIX}{subject}")
}

/// The login or address a restriction name locks out of SMTP AUTH; `None` for a restriction of
/// something else.
pub fn auth_lockout_subject(name: &str) -> Option<&str> {
    name.strip_prefix(AUTH_LOCKOUT_PREFIX)
}

/// Scope of the inbound messages report: key = a [`ConnectorId`](crate::ConnectorId)'s text
/// (`tenant/name`), name = a [`TlsVersion`], value = messages the next hop accepted through
/// that connector.
pub const INBOUND: &str = "inbound";

/// Scope of the SMTP AUTH clients report: key = the user's tenant, name = [`auth_client`]
/// (`version|user`), value = messages the authenticated user sent.
pub const AUTH_TLS: &str = "auth-tls";

/// Scope of the non-accepted domains report: key = a [`ConnectorId`](crate::ConnectorId)'s
/// text, name = a MAIL FROM domain (lower case) that is none of the tenant's accepted domains,
/// value = messages. A batch carries up to [`SAMPLES_PER_COUNTER`] Message-IDs per counter.
pub const NON_ACCEPTED: &str = "non-accepted";

/// The scopes of the reports added with log version 4: the control plane's leader carries
/// them (and the Message-ID samples) into the log only once every voter applies that version,
/// since a node of an earlier release would count them as plain counters.
pub const REPORT_SCOPES: &[&str] = &[INBOUND, AUTH_TLS, NON_ACCEPTED];

/// Most Message-ID samples per [`NON_ACCEPTED`] counter in a batch, and per report row.
pub const SAMPLES_PER_COUNTER: usize = 3;

/// Most bytes of one Message-ID sample.
pub const MESSAGE_ID_MAX: usize = 200;

counters! {
    /// The TLS version of a session, as the reports count it.
    TlsVersion {
        /// No TLS.
        None = "none",
        /// TLS 1.0.
        Tls10 = "TLSv1.0",
        /// TLS 1.1.
        Tls11 = "TLSv1.1",
        /// TLS 1.2.
        Tls12 = "TLSv1.2",
        /// TLS 1.3.
        Tls13 = "TLSv1.3",
        /// A version none of the above names.
        Other = "other",
    }
}

impl TlsVersion {
    /// The bucket of a session's negotiated version (`None` without TLS); the edge's names
    /// are `TLSv1.0` to `TLSv1.3`.
    pub fn of(version: Option<&str>) -> Self {
        match version {
            None => Self::None,
            Some(v) => Self::parse(v)
                .filter(|t| *t != Self::None)
                .unwrap_or(Self::Other),
        }
    }
}

/// The counter name of an authenticated sender's messages over a TLS version.
pub fn auth_client(version: TlsVersion, user: &str) -> String {
    format!("{}|{user}", version.as_str())
}

/// Splits an [`auth_client`] name into its version and user (the user may hold `|`).
pub fn split_auth_client(name: &str) -> Option<(TlsVersion, &str)> {
    let (v, user) = name.split_once('|')?;
    Some((TlsVersion::parse(v)?, user))
}

/// A Message-ID as a sample: trimmed, control characters dropped, at most [`MESSAGE_ID_MAX`]
/// bytes (cut at a character boundary).
pub fn bound_message_id(id: &str) -> String {
    let mut out = String::new();
    for c in id.trim().chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MESSAGE_ID_MAX {
            break;
        }
        out.push(c);
    }
    out
}

/// Whether a counter counts sessions or messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// TLS sessions, counted once when attributed to a tenant.
    Sessions,
    /// Messages accepted.
    Messages,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Self::Sessions => "sessions",
            Self::Messages => "messages",
        }
    }
}

fn clean(s: &str) -> String {
    s.replace('|', "_")
}

/// The counter name of TLS usage by listener, version and cipher.
pub fn tls_usage(unit: Unit, listener: &str, version: &str, cipher: &str) -> String {
    format!(
        "{}|{}|{}|{}",
        unit.as_str(),
        clean(listener),
        clean(version),
        clean(cipher)
    )
}

/// The counter name of a legacy-TLS client (its IP and, once authenticated, its user).
pub fn legacy_client(unit: Unit, ip: &str, user: &str, version: &str) -> String {
    format!(
        "{}|{}|{}|{}",
        unit.as_str(),
        clean(ip),
        clean(user),
        clean(version)
    )
}

/// Splits a [`tls_usage`] or [`legacy_client`] name into its unit and three dimensions.
pub fn split(name: &str) -> Option<(Unit, [&str; 3])> {
    let mut it = name.splitn(4, '|');
    let unit = match it.next()? {
        "sessions" => Unit::Sessions,
        "messages" => Unit::Messages,
        _ => return None,
    };
    Some((unit, [it.next()?, it.next()?, it.next()?]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let n = tls_usage(Unit::Messages, "submission", "TLSv1.0", "a|b");
        assert_eq!(
            split(&n),
            Some((Unit::Messages, ["submission", "TLSv1.0", "a_b"]))
        );
        assert_eq!(split("bogus|a|b|c"), None);
        assert_eq!(split("sessions|a"), None);
    }

    #[test]
    fn counter_names_round_trip_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for c in ConnectorCounter::ALL {
            assert_eq!(ConnectorCounter::parse(c.as_str()), Some(*c));
            assert!(seen.insert(c.as_str()), "{c:?}");
        }
        for c in AuthCounter::ALL {
            assert_eq!(AuthCounter::parse(c.as_str()), Some(*c));
        }
        assert_eq!(ConnectorCounter::RelayRefused.as_str(), "relay-refused");
        assert_eq!(ConnectorCounter::Nexthop4xx.as_str(), "nexthop-4xx");
        assert_eq!(ConnectorCounter::parse("relay_refused"), None);
        assert_eq!(AuthCounter::SpeedBump.as_str(), "speed-bump");
        assert_eq!(AuthCounter::LockedOut.as_str(), "locked-out");
    }

    #[test]
    fn report_names_round_trip_and_samples_are_bounded() {
        assert_eq!(TlsVersion::of(None), TlsVersion::None);
        assert_eq!(TlsVersion::of(Some("TLSv1.3")), TlsVersion::Tls13);
        assert_eq!(TlsVersion::of(Some("none")), TlsVersion::Other);
        assert_eq!(TlsVersion::of(Some("SSLv3")), TlsVersion::Other);
        let n = auth_client(TlsVersion::Tls12, "a|b@x.test");
        assert_eq!(
            split_auth_client(&n),
            Some((TlsVersion::Tls12, "a|b@x.test"))
        );
        assert_eq!(split_auth_client("TLSv9|u"), None);
        assert_eq!(bound_message_id(" <a\r\nb@x> "), "<ab@x>");
        let long = "é".repeat(150);
        let b = bound_message_id(&long);
        assert!(b.len() <= MESSAGE_ID_MAX && b.len() == 200, "{}", b.len());
    }

    #[test]
    fn auth_lockout_names_round_trip() {
        assert_eq!(auth_lockout("u@a.test"), "auth-lockout:u@a.test");
        assert_eq!(
            auth_lockout_subject("auth-lockout:192.0.2.1"),
            Some("192.0.2.1")
        );
        assert_eq!(auth_lockout_subject("u@a.test"), None);
    }
}
