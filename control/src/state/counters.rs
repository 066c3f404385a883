//! Signals from edges: each edge's batches applied once (by sequence), the counters they carry
//! with a minute window, and the TLS usage report (per day, tenant, listener and version, and
//! the legacy-TLS clients). Deltas for users, failed logins, connectors and on-premises servers
//! go on to their concerns.

use std::collections::{BTreeMap, BTreeSet};

use moat_shared::signal::{self, Unit};
use moat_shared::time::{day_of_ms, day_string};
use moat_shared::ConnectorId;
use serde::{Deserialize, Serialize};

use super::State;

/// Days of TLS usage kept for the report.
const REPORT_DAYS: i64 = 90;
/// Most legacy-client rows kept; further clients of a day are folded into one `other` row.
const LEGACY_CLIENTS_MAX: usize = 100_000;

/// The counters part of the state: what edges reported, each edge's batches applied once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Highest applied signal sequence per edge.
    pub edge_seqs: BTreeMap<String, u64>,
    /// Counters by `scope|key|name`.
    #[serde(rename = "counters")]
    pub table: BTreeMap<String, Counter>,
}

/// The TLS usage report part of the state: per day, tenant, listener and version, and the
/// legacy-TLS clients, kept 90 days.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsReport {
    /// TLS usage by `day|tenant|listener|version|cipher`.
    #[serde(default, rename = "tls_usage")]
    pub usage: BTreeMap<String, Tally>,
    /// Legacy-TLS clients by `day|tenant|ip|user|version`.
    #[serde(default)]
    pub legacy_clients: BTreeMap<String, Tally>,
}

/// One edge's batch of counter deltas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalBatch {
    /// The edge.
    pub edge: String,
    /// Its sequence number.
    pub seq: u64,
    /// `(scope, key, name, delta)`.
    pub counters: Vec<(String, String, String, u64)>,
    /// Evidence of on-premises sightings in `counters`: `(key, name, line)`, the `Received:`
    /// line the [`signal::ONPREM`] counter `(key, name)` was read from. Empty from edges of
    /// earlier releases, and left out of the log then, so such an entry reads as it did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub onprem_evidence: Vec<(String, String, String)>,
    /// The counters of the reports of log version 4 (scopes in [`signal::REPORT_SCOPES`]),
    /// `(scope, key, name, delta)`: the leader moves them here out of `counters` only once
    /// every voter applies version 4 (see [`super::reports`]). Left out of the log when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reports: Vec<(String, String, String, u64)>,
    /// Message-IDs of the [`signal::NON_ACCEPTED`] counters in `reports`: `(key, name, id)`.
    /// Carried under the same condition as `reports`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<(String, String, String)>,
}

/// A counter: its total and a minute window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// Since the counter first appeared.
    pub total: u64,
    /// Start of the current minute window (Unix ms, entry time).
    pub window_start_ms: i64,
    /// In the current window.
    pub this_minute: u64,
    /// In the window before.
    pub last_minute: u64,
}

/// Sessions and messages of one report row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// TLS sessions.
    pub sessions: u64,
    /// Messages accepted.
    pub messages: u64,
}

impl State {
    /// Applies the batches of edges, each edge's once by its sequence number, then runs the
    /// detectors on the connectors they counted.
    pub(super) fn signals(&mut self, index: u64, batches: &[SignalBatch]) -> String {
        let mut applied = 0;
        let mut touched = BTreeSet::new();
        let mut sightings = Vec::new();
        let mut auth_failures = false;
        for b in batches {
            let last = self.counters.edge_seqs.entry(b.edge.clone()).or_default();
            if b.seq <= *last {
                continue;
            }
            *last = b.seq;
            applied += 1;
            for (scope, key, name, delta) in &b.counters {
                let connector = match scope.as_str() {
                    signal::CONNECTOR | signal::ONPREM => self.known_connector(key),
                    _ => None,
                };
                if scope == signal::ONPREM {
                    let line = b
                        .onprem_evidence
                        .iter()
                        .find(|(k, n, _)| k == key && n == name)
                        .map(|(_, _, line)| line.as_str());
                    sightings.push((key, name, *delta, connector, line));
                    continue;
                }
                auth_failures |= scope == signal::AUTH_FAILURE;
                if let Some(c) = connector.as_ref().filter(|_| scope == signal::CONNECTOR) {
                    touched.insert(c.clone());
                }
                self.count(index, scope, key, connector.as_ref(), name, *delta);
            }
            for (scope, key, name, delta) in &b.reports {
                self.count_report(scope, key, name, *delta, &b.samples);
            }
        }
        // Sightings lose their order in a batch: a server seen with an old and a
        // compliant build in the same second was being upgraded, so compliant builds
        // are applied last (and the rest in a fixed order, for determinism).
        let baseline = self.onprem.baseline();
        sightings.sort_by_key(|(key, name, _, _, _)| {
            let compliant = name
                .split_once('|')
                .and_then(|(_, b)| moat_shared::exchange::Build::parse(b))
                .is_some_and(|b| baseline.classify(&b) == moat_shared::exchange::Class::Compliant);
            (compliant, (*key).clone(), (*name).clone())
        });
        for (key, name, delta, connector, line) in sightings {
            if let Some(c) = &connector {
                self.count_onprem(index, c, name, delta, line);
            } else {
                self.count(index, signal::ONPREM, key, None, name, delta);
            }
        }
        for key in touched {
            self.judge_connector(index, &key);
        }
        if auth_failures {
            self.prune_auth_failures();
        }
        format!("{applied} signal batch(es)")
    }

    /// The connector a counter's key names, if it is one the directory holds.
    fn known_connector(&self, key: &str) -> Option<ConnectorId> {
        ConnectorId::parse(key)
            .ok()
            .filter(|c| self.directory.connectors().contains_key(c))
    }

    /// Applies one counter delta from an edge; `connector` is the known connector `key` names
    /// (see [`State::known_connector`]).
    fn count(
        &mut self,
        index: u64,
        scope: &str,
        key: &str,
        connector: Option<&ConnectorId>,
        name: &str,
        delta: u64,
    ) {
        let now = self.now_ms;
        let today = day_of_ms(now);
        match (scope, connector) {
            (signal::TLS | signal::TLS_LEGACY, _) => {
                self.tls_report.count(today, scope, key, name, delta)
            }
            (signal::USER, _) if name == signal::RECIPIENTS => self.count_user(index, key, delta),
            (signal::AUTH_FAILURE, _) => self.count_auth_failure(index, key, name, delta),
            (signal::ONPREM, Some(c)) => self.count_onprem(index, c, name, delta, None),
            (signal::CONNECTOR, Some(c)) => self.count_connector(c, name, delta),
            _ => add(self.counters.counter(scope, key, name), now, delta),
        }
    }
}

impl Counters {
    /// The counter `scope|key|name`, created at zero if new; an existing one is found without
    /// allocating (the hot path of signal ingestion).
    pub(super) fn counter(&mut self, scope: &str, key: &str, name: &str) -> &mut Counter {
        thread_local! {
            static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        KEY.with_borrow_mut(|k| {
            k.clear();
            k.push_str(scope);
            k.push('|');
            k.push_str(key);
            k.push('|');
            k.push_str(name);
            if !self.table.contains_key(k.as_str()) {
                self.table.insert(k.clone(), Counter::default());
            }
            self.table.get_mut(k.as_str())
        })
        .expect("inserted above")
    }
}

impl TlsReport {
    /// Counts a delta of a [`signal::TLS`] or [`signal::TLS_LEGACY`] counter into today's row;
    /// a name that does not split is ignored.
    fn count(&mut self, today: i64, scope: &str, key: &str, name: &str, delta: u64) {
        let Some((unit, dims)) = signal::split(name) else {
            return;
        };
        self.prune(today);
        let day = day_string(today);
        let (table, mut row) = if scope == signal::TLS {
            (&mut self.usage, format!("{day}|{key}|{}", dims.join("|")))
        } else {
            (
                &mut self.legacy_clients,
                format!("{day}|{key}|{}", dims.join("|")),
            )
        };
        if scope == signal::TLS_LEGACY
            && table.len() >= LEGACY_CLIENTS_MAX
            && !table.contains_key(&row)
        {
            row = format!("{day}|{key}|other||{}", dims[2]);
        }
        let t = table.entry(row).or_default();
        match unit {
            Unit::Sessions => t.sessions += delta,
            Unit::Messages => t.messages += delta,
        }
    }

    /// Drops report rows older than [`REPORT_DAYS`].
    fn prune(&mut self, today: i64) {
        let oldest = day_string(today - REPORT_DAYS + 1);
        for table in [&mut self.usage, &mut self.legacy_clients] {
            if table.keys().next().is_some_and(|k| *k < oldest) {
                *table = table.split_off(&oldest);
            }
        }
    }
}

/// Adds `delta` to a counter, moving its minute window to the one holding `now_ms`.
pub(super) fn add(c: &mut Counter, now_ms: i64, delta: u64) {
    let minute = now_ms - now_ms.rem_euclid(60_000);
    if c.window_start_ms != minute {
        c.last_minute = if c.window_start_ms == minute - 60_000 {
            c.this_minute
        } else {
            0
        };
        c.this_minute = 0;
        c.window_start_ms = minute;
    }
    c.this_minute += delta;
    c.total += delta;
}

#[cfg(test)]
mod tests {
    use moat_shared::signal::{self, Unit};

    use crate::state::testutil::*;
    use crate::state::*;

    #[test]
    fn signals_are_counted_once_per_edge_sequence() {
        let mut s = State::default();
        let batch = |seq| SignalBatch {
            edge: "e1".into(),
            seq,
            counters: vec![("tenant".into(), "a".into(), "messages".into(), 5)],
            onprem_evidence: Vec::new(),
            reports: Vec::new(),
            samples: Vec::new(),
        };
        s.apply(
            1,
            &p(
                60_000,
                Command::Signals {
                    batches: vec![batch(1)],
                },
            ),
        );
        s.apply(
            2,
            &p(
                60_001,
                Command::Signals {
                    batches: vec![batch(1)],
                },
            ),
        );
        s.apply(
            3,
            &p(
                125_000,
                Command::Signals {
                    batches: vec![batch(2)],
                },
            ),
        );
        let c = &s.counters.table["tenant|a|messages"];
        assert_eq!(c.total, 10);
        assert_eq!((c.last_minute, c.this_minute), (5, 5));
        assert_eq!(s.policy_version, 0, "signals do not change policy");
    }

    #[test]
    fn tls_usage_is_kept_by_day_tenant_and_version() {
        let mut s = State::default();
        let day = 20_415 * 86_400_000;
        let v10 = signal::tls_usage(Unit::Sessions, "submission", "TLSv1.0", "X");
        let m10 = signal::tls_usage(Unit::Messages, "submission", "TLSv1.0", "X");
        let who = signal::legacy_client(Unit::Sessions, "192.0.2.1", "u@a.test", "TLSv1.0");
        s.apply(
            1,
            &p(
                day,
                signals(
                    "e1",
                    1,
                    &[
                        (signal::TLS, "a", &v10, 2),
                        (signal::TLS, "a", &m10, 3),
                        (signal::TLS_LEGACY, "a", &who, 2),
                    ],
                ),
            ),
        );
        let key = "2025-11-23|a|submission|TLSv1.0|X";
        assert_eq!(
            s.tls_report.usage[key],
            Tally {
                sessions: 2,
                messages: 3
            }
        );
        assert_eq!(
            s.tls_report.legacy_clients["2025-11-23|a|192.0.2.1|u@a.test|TLSv1.0"].sessions,
            2
        );
        // 90 days later the first day is gone.
        s.apply(
            2,
            &p(
                day + 90 * 86_400_000,
                signals("e1", 2, &[(signal::TLS, "a", &v10, 1)]),
            ),
        );
        assert!(!s.tls_report.usage.contains_key(key));
        assert_eq!(s.tls_report.usage.len(), 1);
    }
}
