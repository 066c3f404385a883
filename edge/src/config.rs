//! The edge's configuration: a TOML file whose every key is optional.
//!
//! ```toml
//! node-id = "edge-1"              # appended to replies as [edge-1]; default: host name
//! hostname = "mx.example.net"     # greeting and Received: name; default: node-id
//! drain-timeout = "30s"           # how long transactions may finish on shutdown
//!
//! [tls]                           # one certificate for every TLS-capable listener
//! cert = "/etc/moat/tls/tls.crt"  # PEM chain, reloaded when the file changes
//! key = "/etc/moat/tls/tls.key"
//! client-ca = "/etc/moat/ca.pem"  # optional: request and verify client certificates
//! reload-interval = "5s"
//!
//! [limits]
//! max-message-size = 52428800     # octets (SIZE)
//! max-recipients = 1000
//! max-errors = 20
//! max-line = 2048                 # command line, octets with CRLF
//! max-sessions = 10000            # whole edge
//! max-sessions-per-ip = 100
//! idle-timeout = "5m"             # waiting for a command (RFC 5321 4.5.3.2.7)
//! command-timeout = "5m"          # one command line, from its first byte to its CRLF
//! data-timeout = "3m"             # waiting for the next DATA/BDAT block (4.5.3.2.6)
//! forbid-unauth-pipelining = true # 554 5.5.0 and close when an unauthenticated client sends
//!                                 # before the greeting, or after a command that ends a
//!                                 # pipelined group (EHLO, HELO, DATA, STARTTLS, AUTH, QUIT,
//!                                 # VRFY, EXPN) before its reply, as Postfix's
//!                                 # smtpd_forbid_unauth_pipelining
//!
//! [auth]                          # SMTP AUTH failure throttle, per edge
//! max-failures-per-ip = 10        # then 454 4.7.0 for every AUTH from that address
//! max-failures-per-user = 5       # then 454 4.7.0 for that login, even with the right password
//! failure-window = "15m"          # failures are forgotten this long after the last one
//!
//! [authentication]                # SPF/DKIM/DMARC of connector mail, counted for detection
//! checks = false                  # off by default
//! dns = "127.0.0.1:53"            # a resolver to ask; default: /etc/resolv.conf
//! max-message = 1048576           # octets kept for DKIM; longer messages get SPF only
//!
//! [[listener]]
//! kind = "mx"                     # mx | submission | smtps
//! name = "mx"                     # in logs, Received: and the TLS report; default: the kind
//! address = "0.0.0.0:25"
//! proxy-protocol = false          # expect a PROXY v1/v2 header first
//! tls-min-version = "1.2"         # "1.0" or "1.1" adds the OpenSSL engine for legacy clients
//! legacy-tls = "speed-bump"       # speed-bump | opt-in: what TLS 1.0/1.1 sessions meet
//! # tls = { cert = "...", key = "...", client-ca = "..." }   # this listener only
//! [listener.limits]               # optional; keys left out take [limits]
//! max-message-size = 157286400    # also: max-recipients, max-errors, max-sessions,
//!                                 # max-sessions-per-ip, idle-, command-, data-timeout,
//!                                 # forbid-unauth-pipelining
//!
//! [next-hop]
//! kind = "smtp"                   # smtp | lmtp | maildir
//! address = "mailbox.internal:25" # smtp, lmtp
//! starttls = "opportunistic"      # smtp, lmtp: none | opportunistic | required
//! ca = "/etc/moat/next-hop-ca.pem" # verify the next hop; without it TLS is unauthenticated
//! timeout = "2m"
//! # path = "/var/mail/moat"       # maildir
//!
//! [outbound-next-hop]             # optional: where relayed mail goes (a smarthost); same
//! kind = "smtp"                   # keys as [next-hop]; without it, relay goes to [next-hop]
//! address = "smarthost.internal:25"
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The whole edge configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct EdgeConfig {
    /// Node name appended to every reply; defaults to the host name.
    pub node_id: String,
    /// Name used in the greeting, EHLO and `Received:`; defaults to `node_id`.
    pub hostname: Option<String>,
    /// How long open transactions may run to completion after shutdown starts.
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
    /// `/readyz` turns unready once no control node has been heard from for this long (the
    /// edge goes on enforcing its last snapshot); `0s` never turns unready for that reason.
    #[serde(deserialize_with = "duration")]
    pub ready_stale_after: Duration,
    /// TLS certificate settings.
    pub tls: Option<TlsConfig>,
    /// Session limits and timeouts.
    pub limits: Limits,
    /// SMTP AUTH failure throttle.
    pub auth: AuthLimits,
    /// SPF, DKIM and DMARC checks.
    pub authentication: Authentication,
    /// Listeners.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Where accepted mail goes.
    pub next_hop: Option<NextHopConfig>,
    /// Where relayed mail goes; without it, to `next_hop`.
    pub outbound_next_hop: Option<NextHopConfig>,
    /// Mutual TLS toward the control plane: the cluster's internal CA and this edge's
    /// certificate (common name `moat-edge`).
    pub control_tls: Option<ControlTls>,
}

/// `[control-tls]`: PEM files of the internal PKI.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlTls {
    /// The internal CA that issued the control nodes' certificates.
    pub ca: PathBuf,
    /// This edge's certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            node_id: std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "edge".into()),
            hostname: None,
            drain_timeout: Duration::from_secs(30),
            ready_stale_after: Duration::from_secs(300),
            tls: None,
            limits: Limits::default(),
            auth: AuthLimits::default(),
            authentication: Authentication::default(),
            listeners: Vec::new(),
            next_hop: None,
            outbound_next_hop: None,
            control_tls: None,
        }
    }
}

impl EdgeConfig {
    /// Parses TOML configuration text.
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The host name to announce.
    pub fn hostname(&self) -> &str {
        self.hostname.as_deref().unwrap_or(&self.node_id)
    }
}

/// Certificate settings shared by the TLS-capable listeners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA bundle; when set, clients are asked for a certificate, which must chain to it.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// How often the files are checked for changes.
    #[serde(default = "default_reload", deserialize_with = "duration")]
    pub reload_interval: Duration,
}

fn default_reload() -> Duration {
    Duration::from_secs(5)
}

/// Session limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Limits {
    /// Largest message, octets.
    pub max_message_size: u64,
    /// Most recipients per transaction.
    pub max_recipients: usize,
    /// Protocol errors before `421 4.7.0` and close.
    pub max_errors: u32,
    /// Longest command line, octets including CRLF.
    pub max_line: usize,
    /// Concurrent sessions on the whole edge.
    pub max_sessions: usize,
    /// Concurrent sessions per client IP address.
    pub max_sessions_per_ip: usize,
    /// How long to wait for a command.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// How long one command line may take from its first byte to its end (slow-drip defence).
    #[serde(deserialize_with = "duration")]
    pub command_timeout: Duration,
    /// How long to wait for the next block of message content.
    #[serde(deserialize_with = "duration")]
    pub data_timeout: Duration,
    /// Refuse input an unauthenticated client sends where RFC 5321 and RFC 2920 make it wait
    /// for a reply (before the greeting; after EHLO, HELO, DATA, STARTTLS, AUTH, QUIT, VRFY or
    /// EXPN) with `554 5.5.0` and close, as Postfix's `smtpd_forbid_unauth_pipelining`.
    pub forbid_unauth_pipelining: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 1000,
            max_errors: 20,
            max_line: 2048,
            max_sessions: 10_000,
            max_sessions_per_ip: 100,
            idle_timeout: Duration::from_secs(300),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            forbid_unauth_pipelining: true,
        }
    }
}

/// The SMTP AUTH failure throttle (`[auth]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct AuthLimits {
    /// Failed logins from one client address before its AUTH attempts are refused.
    pub max_failures_per_ip: u32,
    /// Failed logins for one user before its AUTH attempts are refused.
    pub max_failures_per_user: u32,
    /// How long failures are remembered after the last one.
    #[serde(deserialize_with = "duration")]
    pub failure_window: Duration,
}

impl Default for AuthLimits {
    fn default() -> Self {
        Self {
            max_failures_per_ip: 10,
            max_failures_per_user: 5,
            failure_window: Duration::from_secs(15 * 60),
        }
    }
}

/// SPF, DKIM and DMARC checks (`[authentication]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Authentication {
    /// Whether connector mail is checked.
    pub checks: bool,
    /// The DNS server to ask; without it, the system's.
    pub dns: Option<SocketAddr>,
    /// Most octets of a message kept for the DKIM check.
    pub max_message: usize,
}

impl Default for Authentication {
    fn default() -> Self {
        Self {
            checks: false,
            dns: None,
            max_message: 1024 * 1024,
        }
    }
}

/// The lowest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Default)]
pub enum TlsVersion {
    /// TLS 1.0 (OpenSSL engine).
    #[serde(rename = "1.0")]
    Tls10,
    /// TLS 1.1 (OpenSSL engine).
    #[serde(rename = "1.1")]
    Tls11,
    /// TLS 1.2 (rustls only; the default).
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
}

/// What a session that negotiated TLS 1.0 or 1.1 meets on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LegacyTls {
    /// A standard endpoint: the cluster's speed bump schedule refuses a share of legacy
    /// sessions with `421 4.7.66` at AUTH (at MAIL on listeners without AUTH).
    #[default]
    SpeedBump,
    /// A legacy endpoint: any TLS version, but only users of tenants with
    /// `allow-legacy-tls-clients`; others get `550 5.7.67` at AUTH.
    OptIn,
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListenerKind {
    /// Port-25 semantics: opportunistic STARTTLS.
    Mx,
    /// Port-587 semantics: STARTTLS required before MAIL.
    Submission,
    /// Port-465 semantics: implicit TLS (RFC 8314).
    Smtps,
}

impl ListenerKind {
    /// The kind's name as used in configuration and `endpoints.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mx => "mx",
            Self::Submission => "submission",
            Self::Smtps => "smtps",
        }
    }
}

/// One listening socket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ListenerConfig {
    /// What the listener speaks.
    pub kind: ListenerKind,
    /// The listener's name in logs and the TLS usage report; defaults to the kind.
    #[serde(default)]
    pub name: Option<String>,
    /// Address to bind.
    pub address: SocketAddr,
    /// Expect a PROXY protocol v1/v2 header before SMTP.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// This listener's own certificate settings; without them, the edge-wide `[tls]`.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The lowest TLS version accepted; below 1.2 adds the OpenSSL engine.
    #[serde(default)]
    pub tls_min_version: TlsVersion,
    /// The legacy-TLS rule of this listener.
    #[serde(default)]
    pub legacy_tls: LegacyTls,
    /// This listener's own limits; every key left out takes the edge-wide `[limits]` value.
    #[serde(default)]
    pub limits: ListenerLimits,
}

impl ListenerConfig {
    /// The listener's name: `name`, or its kind.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(self.kind.as_str())
    }
}

/// Per-listener limit overrides (`[listener.limits]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ListenerLimits {
    /// Overrides `max-message-size`.
    pub max_message_size: Option<u64>,
    /// Overrides `max-recipients`.
    pub max_recipients: Option<usize>,
    /// Overrides `max-errors`.
    pub max_errors: Option<u32>,
    /// Concurrent sessions on this listener (the edge-wide `max-sessions` still applies).
    pub max_sessions: Option<usize>,
    /// Overrides `max-sessions-per-ip` (sessions are counted across all listeners).
    pub max_sessions_per_ip: Option<usize>,
    /// Overrides `idle-timeout`.
    #[serde(default, deserialize_with = "opt_duration")]
    pub idle_timeout: Option<Duration>,
    /// Overrides `command-timeout`.
    #[serde(default, deserialize_with = "opt_duration")]
    pub command_timeout: Option<Duration>,
    /// Overrides `data-timeout`.
    #[serde(default, deserialize_with = "opt_duration")]
    pub data_timeout: Option<Duration>,
    /// Overrides `forbid-unauth-pipelining`.
    pub forbid_unauth_pipelining: Option<bool>,
}

impl ListenerLimits {
    /// The limits in force on the listener: these overrides over the edge-wide `base`.
    pub fn over(&self, base: &Limits) -> Limits {
        Limits {
            max_message_size: self.max_message_size.unwrap_or(base.max_message_size),
            max_recipients: self.max_recipients.unwrap_or(base.max_recipients),
            max_errors: self.max_errors.unwrap_or(base.max_errors),
            max_line: base.max_line,
            max_sessions: self.max_sessions.unwrap_or(base.max_sessions),
            max_sessions_per_ip: self.max_sessions_per_ip.unwrap_or(base.max_sessions_per_ip),
            idle_timeout: self.idle_timeout.unwrap_or(base.idle_timeout),
            command_timeout: self.command_timeout.unwrap_or(base.command_timeout),
            data_timeout: self.data_timeout.unwrap_or(base.data_timeout),
            forbid_unauth_pipelining: self
                .forbid_unauth_pipelining
                .unwrap_or(base.forbid_unauth_pipelining),
        }
    }
}

/// Whether and how to use STARTTLS towards the next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NextHopTls {
    /// Never.
    None,
    /// When offered.
    #[default]
    Opportunistic,
    /// Always; a next hop that does not offer it is a failure.
    Required,
}

/// Where accepted mail goes.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields, rename_all = "kebab-case")]
pub enum NextHopConfig {
    /// An SMTP server.
    Smtp(RemoteHop),
    /// An LMTP server (per-recipient replies after DATA).
    Lmtp(RemoteHop),
    /// The embedded maildir sink.
    Maildir {
        /// Root directory; one maildir per recipient below it.
        path: PathBuf,
    },
}

/// An SMTP or LMTP next hop.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RemoteHop {
    /// `host:port`.
    pub address: String,
    /// STARTTLS use.
    #[serde(default)]
    pub starttls: NextHopTls,
    /// CA bundle to verify the next hop's certificate; without it TLS is encrypted but not
    /// authenticated (like Postfix's `may` level).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Timeout for each next-hop command; the final reply after the body gets five times this.
    #[serde(default = "default_hop_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
}

fn default_hop_timeout() -> Duration {
    Duration::from_secs(120)
}

/// Parses `"250ms"`, `"30s"`, `"5m"`, `"1h"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` needs a unit: ms, s, m or h"))?;
    let (num, unit) = text.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!(
            "`{text}`: unknown unit `{unit}` (use ms, s, m or h)"
        )),
    }
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_all_defaults() {
        let c = EdgeConfig::parse("").unwrap();
        assert_eq!(c.limits.max_errors, 20);
        assert!(c.listeners.is_empty());
    }

    #[test]
    fn full_config_parses() {
        let c = EdgeConfig::parse(
            r#"
node-id = "edge-7"
[limits]
idle-timeout = "2s"
max-sessions-per-ip = 3
[[listener]]
kind = "submission"
address = "127.0.0.1:2587"
proxy-protocol = true
[next-hop]
kind = "lmtp"
address = "127.0.0.1:24"
starttls = "none"
"#,
        )
        .unwrap();
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(2));
        assert_eq!(c.listeners[0].kind, ListenerKind::Submission);
        assert!(matches!(c.next_hop, Some(NextHopConfig::Lmtp(_))));
    }

    #[test]
    fn listener_overrides_take_the_rest_from_the_edge() {
        let c = EdgeConfig::parse(
            r#"
[limits]
max-recipients = 50
idle-timeout = "1m"
[[listener]]
kind = "submission"
address = "127.0.0.1:2587"
limits = { max-message-size = 1000, data-timeout = "10s" }
"#,
        )
        .unwrap();
        let l = c.listeners[0].limits.over(&c.limits);
        assert_eq!(l.max_message_size, 1000);
        assert_eq!(l.data_timeout, Duration::from_secs(10));
        assert_eq!(l.max_recipients, 50);
        assert_eq!(l.idle_timeout, Duration::from_secs(60));
    }

    #[test]
    fn unauthenticated_pipelining_is_forbidden_unless_a_listener_allows_it() {
        let c = EdgeConfig::parse(
            r#"
[[listener]]
kind = "mx"
address = "127.0.0.1:25"
[[listener]]
kind = "mx"
name = "lenient"
address = "127.0.0.1:2526"
limits = { forbid-unauth-pipelining = false }
"#,
        )
        .unwrap();
        assert!(c.limits.forbid_unauth_pipelining);
        assert!(
            c.listeners[0]
                .limits
                .over(&c.limits)
                .forbid_unauth_pipelining
        );
        assert!(
            !c.listeners[1]
                .limits
                .over(&c.limits)
                .forbid_unauth_pipelining
        );
        let off = EdgeConfig::parse("[limits]\nforbid-unauth-pipelining = false\n").unwrap();
        assert!(!off.limits.forbid_unauth_pipelining);
    }

    #[test]
    fn mistakes_are_named() {
        let e = EdgeConfig::parse("[limits]\nidle-timeout = \"5 minutes\"\n").unwrap_err();
        assert!(e.to_string().contains("unknown unit"), "{e}");
        let e = EdgeConfig::parse("[limits]\nmax-sesions = 3\n").unwrap_err();
        assert!(e.to_string().contains("max-sesions"), "{e}");
    }
}
