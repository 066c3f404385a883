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
/// Scope of inbound connectors: key = `tenant/name`, names `sessions`, `messages`,
/// `recipients`, `bytes`, `relay` (relayed recipients), `relay-refused`, `unprovisioned`
/// (messages whose MAIL FROM domain is not the tenant's), `mismatch` (header From domain differs
/// from MAIL FROM's), `nexthop-4xx`, `nexthop-5xx`.
pub const CONNECTOR: &str = "connector";
/// Scope of on-premises Exchange sightings: key = the connector `tenant/name`, name =
/// `server|build` (see [`onprem_server`]), value = messages.
pub const ONPREM: &str = "onprem";

/// The counter name of an on-premises server seen with a build.
pub fn onprem_server(server: &str, build: &str) -> String {
    format!("{}|{}", clean(server), clean(build))
}

/// Scope of SMTP AUTH outcomes on an edge: key = `-`, name = `failures`, `throttled`,
/// `speed-bump` or `legacy-refused`.
pub const AUTH: &str = "auth";

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
}
