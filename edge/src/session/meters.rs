//! The metrics a listener's sessions record, as handles kept per listener.
//!
//! `metrics::counter!` with a label that is not a literal builds its key (a `Vec` of labels, a
//! copy of the listener's name) and looks the series up in the registry at every call. A
//! handshake-only load records several per session, so each handle here is registered at its
//! first use, with the same name and labels the macro would give it, and reused after: the
//! series appear on `/metrics` exactly when they did before.

use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram};

use super::reply::{self, Reply};

/// Replies counted through a kept handle: the registry's, then these ones without a registry
/// entry (EHLO, AUTH challenges). Others (relayed from the next hop) go through the macro.
const UNLISTED: [(u16, &str); 2] = [(250, ""), (334, "")];

/// The TLS versions a session can end on, as `moat_edge_sessions_total` labels them.
const TLS_VERSIONS: [&str; 5] = ["none", "TLSv1.3", "TLSv1.2", "TLSv1.1", "TLSv1.0"];

/// One listener's metric handles.
pub struct Meters {
    listener: String,
    sessions_active: OnceLock<Gauge>,
    /// `moat_edge_sessions_total` by index in [`TLS_VERSIONS`].
    sessions: [OnceLock<Counter>; TLS_VERSIONS.len()],
    handshake_duration: OnceLock<Histogram>,
    /// `moat_edge_tls_handshakes_total` by [ok, failed][full, resumed].
    handshakes: [[OnceLock<Counter>; 2]; 2],
    transaction_duration: OnceLock<Histogram>,
    /// `moat_edge_replies_total` by index in [`reply::ALL`], then in [`UNLISTED`].
    replies: [OnceLock<Counter>; reply::ALL.len() + UNLISTED.len()],
}

impl std::fmt::Debug for Meters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meters")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl Meters {
    /// The handles of the listener named `listener` (its `listener` label), none registered yet.
    pub fn new(listener: &str) -> Self {
        Self {
            listener: listener.to_owned(),
            sessions_active: OnceLock::new(),
            sessions: Default::default(),
            handshake_duration: OnceLock::new(),
            handshakes: Default::default(),
            transaction_duration: OnceLock::new(),
            replies: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// `moat_edge_sessions_active` of this listener.
    pub fn sessions_active(&self) -> &Gauge {
        self.sessions_active.get_or_init(
            || metrics::gauge!("moat_edge_sessions_active", "listener" => self.listener.clone()),
        )
    }

    /// Counts a session that ended on `tls_version` (`none` without TLS).
    pub fn session_ended(&self, tls_version: &str) {
        let label = |version: String| {
            metrics::counter!(
                "moat_edge_sessions_total",
                "listener" => self.listener.clone(),
                "tls_version" => version
            )
        };
        match TLS_VERSIONS.iter().position(|&v| v == tls_version) {
            Some(i) => self.sessions[i]
                .get_or_init(|| label(TLS_VERSIONS[i].to_owned()))
                .increment(1),
            None => label(tls_version.to_owned()).increment(1),
        }
    }

    /// Records a TLS handshake: its duration, whether it succeeded and whether it resumed.
    pub fn handshake(&self, seconds: f64, ok: bool, resumed: bool) {
        self.handshake_duration
            .get_or_init(|| {
                metrics::histogram!(
                    "moat_edge_tls_handshake_duration_seconds",
                    "listener" => self.listener.clone()
                )
            })
            .record(seconds);
        let outcome = if ok { "ok" } else { "failed" };
        let kind = if resumed { "resumed" } else { "full" };
        self.handshakes[usize::from(!ok)][usize::from(resumed)]
            .get_or_init(|| {
                metrics::counter!(
                    "moat_edge_tls_handshakes_total",
                    "listener" => self.listener.clone(),
                    "outcome" => outcome,
                    "kind" => kind
                )
            })
            .increment(1);
    }

    /// Records how long a transaction took, MAIL to the final reply.
    pub fn transaction(&self, seconds: f64) {
        self.transaction_duration
            .get_or_init(|| {
                metrics::histogram!(
                    "moat_edge_transaction_duration_seconds",
                    "listener" => self.listener.clone()
                )
            })
            .record(seconds);
    }

    /// Counts a reply sent, by its code and enhanced status code.
    pub fn reply(&self, r: &Reply) {
        let register = || {
            metrics::counter!(
                "moat_edge_replies_total",
                "code" => r.code_label(),
                "enhanced" => r.status.clone()
            )
        };
        let status = &*r.status;
        let listed = reply::ALL
            .iter()
            .map(|c| (c.code, c.status))
            .chain(UNLISTED)
            .position(|(code, s)| code == r.code && s == status);
        match listed {
            Some(i) => self.replies[i].get_or_init(register).increment(1),
            None => register().increment(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_session_tls_version_has_a_slot() {
        // What `tls::facts` and `legacy::facts` name the versions rustls and OpenSSL negotiate.
        for v in ["TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3", "none"] {
            assert!(TLS_VERSIONS.contains(&v), "{v}");
        }
    }

    #[test]
    fn recording_without_a_recorder_is_harmless() {
        let m = Meters::new("mx");
        m.sessions_active().increment(1.0);
        m.session_ended("TLSv1.3");
        m.session_ended("SSLv3");
        m.handshake(0.001, true, false);
        m.transaction(0.5);
        m.reply(&reply::OK.into());
        m.reply(&Reply::relayed(299, "2.9.9".into(), vec!["odd".into()]));
    }
}
