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

/// Replies counted through a kept handle: these ones without a registry entry (EHLO, sent
/// twice in most sessions, and AUTH challenges), then the registry's. Others (relayed from the
/// next hop) go through the macro.
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
    /// `moat_edge_replies_total` by index in [`UNLISTED`], then in [`reply::ALL`].
    replies: [OnceLock<Counter>; UNLISTED.len() + reply::ALL.len()],
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
        let listed = UNLISTED
            .into_iter()
            .chain(reply::ALL.iter().map(|c| (c.code, c.status)))
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

    /// Remembers every series registered, as `kind name{label=value,...}`.
    #[derive(Default)]
    struct Registrations(std::sync::Mutex<Vec<String>>);

    impl Registrations {
        fn note(&self, kind: &str, key: &metrics::Key) {
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let line = format!("{kind} {}{{{}}}", key.name(), labels.join(","));
            self.0.lock().expect("lock").push(line);
        }

        fn taken(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().expect("lock"))
        }
    }

    impl metrics::Recorder for Registrations {
        fn describe_counter(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_gauge(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> Counter {
            self.note("counter", key);
            Counter::noop()
        }
        fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> Gauge {
            self.note("gauge", key);
            Gauge::noop()
        }
        fn register_histogram(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> Histogram {
            self.note("histogram", key);
            Histogram::noop()
        }
    }

    #[test]
    fn kept_handles_are_the_series_the_macros_registered_once_each() {
        let recorder = Registrations::default();
        let replies: Vec<Reply> = vec![
            reply::OK.into(),
            reply::CHUNK_OK.into(), // OK's labels: the same series, registered once
            reply::READY_TLS.into(),
            Reply::ehlo(vec!["h Hello".into(), "HELP".into()]),
            Reply::challenge(""),
            Reply::relayed(299, "2.9.9".into(), vec!["odd".into()]),
        ];
        // What the driver recorded before, one series per call.
        metrics::with_local_recorder(&recorder, || {
            let listener = "mx".to_owned();
            metrics::gauge!("moat_edge_sessions_active", "listener" => listener.clone())
                .increment(1.0);
            for tls in ["none", "TLSv1.3", "SSLv3"] {
                metrics::counter!(
                    "moat_edge_sessions_total",
                    "listener" => listener.clone(),
                    "tls_version" => tls.to_owned()
                )
                .increment(1);
            }
            metrics::histogram!(
                "moat_edge_tls_handshake_duration_seconds",
                "listener" => listener.clone()
            )
            .record(0.001);
            metrics::counter!(
                "moat_edge_tls_handshakes_total",
                "listener" => listener.clone(),
                "outcome" => "ok",
                "kind" => "resumed"
            )
            .increment(1);
            metrics::histogram!(
                "moat_edge_transaction_duration_seconds",
                "listener" => listener.clone()
            )
            .record(0.5);
            for r in &replies {
                metrics::counter!(
                    "moat_edge_replies_total",
                    "code" => r.code_label(),
                    "enhanced" => r.status.clone()
                )
                .increment(1);
            }
        });
        let mut before = recorder.taken();
        before.dedup(); // OK and CHUNK_OK: one series
        metrics::with_local_recorder(&recorder, || {
            let m = Meters::new("mx");
            // Twice over: the second round registers nothing new, except what has no slot.
            for round in 0..2 {
                m.sessions_active().increment(1.0);
                for tls in ["none", "TLSv1.3", "SSLv3"] {
                    m.session_ended(tls);
                }
                m.handshake(0.001, true, true);
                m.transaction(0.5);
                for r in &replies {
                    m.reply(r);
                }
                if round == 0 {
                    assert_eq!(recorder.taken(), before);
                }
            }
        });
        assert_eq!(
            recorder.taken(),
            [
                "counter moat_edge_sessions_total{listener=mx,tls_version=SSLv3}",
                "counter moat_edge_replies_total{code=299,enhanced=2.9.9}",
            ]
        );
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
