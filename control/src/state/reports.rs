//! The reports added with log version 4, from edges' [`signal::INBOUND`],
//! [`signal::AUTH_TLS`] and [`signal::NON_ACCEPTED`] counters: inbound messages per day and
//! connector by TLS version, SMTP AUTH senders per day by TLS version, and MAIL FROM domains
//! outside the tenant's accepted domains per day and connector with sample Message-IDs.
//!
//! Bounded: [`REPORT_DAYS`] days are kept, each report holds at most its per-day number of rows
//! and folds further ones into an `other` row (per tenant, or per connector for the
//! non-accepted domains), and a row keeps [`signal::SAMPLES_PER_COUNTER`] Message-IDs.
//!
//! Rows are keyed per day by text whose byte order is the report's order:
//! - inbound: `tenant/connector` (a connector id's text); the fold row `tenant/`;
//! - auth clients: `tenant/user`; the fold row `tenant/`;
//! - non-accepted domains: `tenant/connector/domain`; the fold row `tenant/connector/`.
//!
//! Edges' batches carry these counters in [`SignalBatch::reports`](super::SignalBatch), not
//! among the plain counters: the leader moves them there only once every voter applies log
//! version 4, so an entry a leader of an earlier release wrote (where they are plain counters)
//! applies the same on every node.

use std::collections::BTreeMap;

use moat_shared::signal::{self, TlsVersion};
use moat_shared::time::day_string;
use moat_shared::{ConnectorId, TenantId};
use serde::{Deserialize, Serialize};

use super::State;

/// Days kept.
pub const REPORT_DAYS: i64 = 90;
/// Most inbound rows of a day (connectors); further connectors fold into their tenant's
/// `other` row.
pub const INBOUND_ROWS_PER_DAY: usize = 10_000;
/// Most SMTP AUTH sender rows of a day; further senders fold into their tenant's `other` row.
pub const AUTH_ROWS_PER_DAY: usize = 10_000;
/// Most non-accepted domain rows of a day; further domains fold into their connector's `other`
/// row.
pub const NON_ACCEPTED_ROWS_PER_DAY: usize = 2_000;
/// Longest user address counted (longer ones are not a user of any tenant).
const MAX_USER: usize = 320;

/// The reports' rows, per day (`YYYY-MM-DD`), then per row key (see the module's doc).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reports {
    /// Inbound messages by connector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inbound: BTreeMap<String, BTreeMap<String, Versions>>,
    /// Messages of SMTP AUTH senders.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub auth_clients: BTreeMap<String, BTreeMap<String, Versions>>,
    /// Messages from non-accepted MAIL FROM domains, by connector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub non_accepted: BTreeMap<String, BTreeMap<String, Sampled>>,
}

/// Messages by the TLS version of their session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    /// Without TLS.
    #[serde(default)]
    pub none: u64,
    /// TLS 1.0.
    #[serde(default)]
    pub tls10: u64,
    /// TLS 1.1.
    #[serde(default)]
    pub tls11: u64,
    /// TLS 1.2.
    #[serde(default)]
    pub tls12: u64,
    /// TLS 1.3.
    #[serde(default)]
    pub tls13: u64,
    /// Any other version.
    #[serde(default)]
    pub other: u64,
}

impl Versions {
    /// Every message of the row.
    pub fn total(&self) -> u64 {
        [
            self.none, self.tls10, self.tls11, self.tls12, self.tls13, self.other,
        ]
        .iter()
        .fold(0u64, |a, b| a.saturating_add(*b))
    }

    fn add(&mut self, v: TlsVersion, delta: u64) {
        let slot = match v {
            TlsVersion::None => &mut self.none,
            TlsVersion::Tls10 => &mut self.tls10,
            TlsVersion::Tls11 => &mut self.tls11,
            TlsVersion::Tls12 => &mut self.tls12,
            TlsVersion::Tls13 => &mut self.tls13,
            TlsVersion::Other => &mut self.other,
        };
        *slot = slot.saturating_add(delta);
    }
}

/// A count with a few sample Message-IDs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sampled {
    /// Messages.
    pub messages: u64,
    /// The first distinct Message-IDs seen, at most [`signal::SAMPLES_PER_COUNTER`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<String>,
}

impl Reports {
    /// Whether no report holds a row (the state then writes no `reports` field, as before).
    pub fn is_empty(&self) -> bool {
        self.inbound.is_empty() && self.auth_clients.is_empty() && self.non_accepted.is_empty()
    }

    /// Drops the days older than [`REPORT_DAYS`] before `today`.
    fn prune(&mut self, today: i64) {
        let oldest = day_string(today - REPORT_DAYS + 1);
        fn cut<V>(m: &mut BTreeMap<String, V>, oldest: &str) {
            if m.keys().next().is_some_and(|k| k.as_str() < oldest) {
                *m = m.split_off(oldest);
            }
        }
        cut(&mut self.inbound, &oldest);
        cut(&mut self.auth_clients, &oldest);
        cut(&mut self.non_accepted, &oldest);
    }
}

/// The row `key` of a day, or its `fold` row once the day holds `max` rows.
fn row<V: Default>(
    day: &mut BTreeMap<String, V>,
    key: String,
    fold: impl FnOnce() -> String,
    max: usize,
) -> &mut V {
    let key = if day.len() >= max && !day.contains_key(&key) {
        fold()
    } else {
        key
    };
    day.entry(key).or_default()
}

impl State {
    /// Counts one report counter of a batch into today's rows; `samples` are the batch's
    /// Message-IDs `(key, name, id)`. A counter of an unknown connector or tenant, or one whose
    /// name does not parse, is not counted.
    pub(super) fn count_report(
        &mut self,
        scope: &str,
        key: &str,
        name: &str,
        delta: u64,
        samples: &[(String, String, String)],
    ) {
        let today = moat_shared::time::day_of_ms(self.now_ms);
        self.reports.prune(today);
        let day = day_string(today);
        match scope {
            signal::INBOUND => {
                let (Some(c), Some(v)) = (self.known(key), TlsVersion::parse(name)) else {
                    return;
                };
                let rows = self.reports.inbound.entry(day).or_default();
                let fold = || format!("{}/", c.tenant);
                row(rows, c.to_string(), fold, INBOUND_ROWS_PER_DAY).add(v, delta);
            }
            signal::AUTH_TLS => {
                let Some((v, user)) = signal::split_auth_client(name) else {
                    return;
                };
                let known = TenantId::new(key)
                    .is_ok_and(|t| t.as_str() == key && self.directory.tenants.contains_key(&t));
                if !known || user.is_empty() || user.len() > MAX_USER {
                    return;
                }
                let rows = self.reports.auth_clients.entry(day).or_default();
                let fold = || format!("{key}/");
                row(rows, format!("{key}/{user}"), fold, AUTH_ROWS_PER_DAY).add(v, delta);
            }
            signal::NON_ACCEPTED => {
                let Some(c) = self.known(key) else { return };
                let domain = name.to_ascii_lowercase();
                if domain.is_empty() || domain.len() > 255 || domain.contains('/') {
                    return;
                }
                let rows = self.reports.non_accepted.entry(day).or_default();
                let fold = || format!("{c}/");
                let r = row(
                    rows,
                    format!("{c}/{domain}"),
                    fold,
                    NON_ACCEPTED_ROWS_PER_DAY,
                );
                r.messages = r.messages.saturating_add(delta);
                let ids = samples
                    .iter()
                    .filter(|(k, n, _)| k == key && n == name)
                    .map(|(_, _, id)| signal::bound_message_id(id));
                for id in ids {
                    if r.samples.len() >= signal::SAMPLES_PER_COUNTER {
                        break;
                    }
                    if !id.is_empty() && !r.samples.contains(&id) {
                        r.samples.push(id);
                    }
                }
            }
            _ => {}
        }
    }

    /// The connector a report counter's key names, if the directory holds it.
    fn known(&self, key: &str) -> Option<ConnectorId> {
        ConnectorId::parse(key)
            .ok()
            .filter(|c| self.directory.connectors().contains_key(c))
    }
}

#[cfg(test)]
mod tests {
    use moat_shared::signal::{self, TlsVersion};

    use super::*;
    use crate::state::testutil::*;
    use crate::state::*;

    const DAY: i64 = 86_400_000;

    /// A state with tenant `a.test` and its connector `a.test/onprem`.
    fn state() -> State {
        let mut s = State::default();
        let t = TenantId::new("a.test").expect("tenant");
        s.directory.tenants.insert(
            t.clone(),
            moat_shared::Tenant {
                id: t.clone(),
                display_name: "A".into(),
                accepted_domains: vec![moat_shared::Domain::new("a.test").expect("domain")],
                allow_legacy_tls_clients: false,
            },
        );
        let c = moat_shared::Connector::new(
            t.clone(),
            "onprem",
            moat_shared::ConnectorKind::OnPremises,
        );
        s.directory.insert_connector_unchecked(c);
        s
    }

    /// Applies one batch whose counters are all report counters, with `samples`.
    fn report(
        s: &mut State,
        index: u64,
        at: i64,
        counters: &[(&str, &str, &str, u64)],
        samples: &[(&str, &str, &str)],
    ) {
        let mut b = batch("e1", index, &[]);
        b.reports = counters
            .iter()
            .map(|(sc, k, n, v)| (sc.to_string(), k.to_string(), n.to_string(), *v))
            .collect();
        b.samples = samples
            .iter()
            .map(|(k, n, id)| (k.to_string(), n.to_string(), id.to_string()))
            .collect();
        s.apply(index, &p(at, Command::Signals { batches: vec![b] }));
    }

    #[test]
    fn inbound_and_auth_rows_count_by_day_and_version() {
        let mut s = state();
        let t0 = 20_415 * DAY;
        let user = signal::auth_client(TlsVersion::Tls13, "u@a.test");
        report(
            &mut s,
            1,
            t0,
            &[
                (signal::INBOUND, "a.test/onprem", "none", 2),
                (signal::INBOUND, "a.test/onprem", "TLSv1.2", 3),
                (signal::INBOUND, "a.test/gone", "TLSv1.2", 3),
                (signal::INBOUND, "a.test/onprem", "TLSv9", 3),
                (signal::AUTH_TLS, "a.test", &user, 4),
                (signal::AUTH_TLS, "b.test", &user, 4),
            ],
            &[],
        );
        report(
            &mut s,
            2,
            t0 + DAY,
            &[(signal::INBOUND, "a.test/onprem", "TLSv1.3", 1)],
            &[],
        );
        let d0 = &s.reports.inbound["2025-11-23"]["a.test/onprem"];
        assert_eq!((d0.none, d0.tls12, d0.total()), (2, 3, 5));
        assert_eq!(
            s.reports.inbound["2025-11-23"].len(),
            1,
            "unknown connector"
        );
        assert_eq!(s.reports.inbound["2025-11-24"]["a.test/onprem"].tls13, 1);
        assert_eq!(
            s.reports.auth_clients["2025-11-23"]["a.test/u@a.test"].tls13,
            4
        );
        assert_eq!(
            s.reports.auth_clients["2025-11-23"].len(),
            1,
            "unknown tenant"
        );
        // Kept 90 days: the first day goes when day 91 is counted.
        report(
            &mut s,
            3,
            t0 + 90 * DAY,
            &[(signal::INBOUND, "a.test/onprem", "none", 1)],
            &[],
        );
        assert!(!s.reports.inbound.contains_key("2025-11-23"));
        assert!(!s.reports.auth_clients.contains_key("2025-11-23"));
        assert_eq!(s.reports.inbound.len(), 2);
    }

    #[test]
    fn rows_past_the_day_bound_fold_into_other_and_samples_stay_few() {
        let mut s = state();
        let t0 = 20_415 * DAY;
        let names: Vec<String> = (0..NON_ACCEPTED_ROWS_PER_DAY + 5)
            .map(|i| format!("d{i:05}.test"))
            .collect();
        let counters: Vec<(&str, &str, &str, u64)> = names
            .iter()
            .map(|n| (signal::NON_ACCEPTED, "a.test/onprem", n.as_str(), 1))
            .collect();
        let long = format!("<{}@x>", "y".repeat(300));
        let samples = [
            ("a.test/onprem", "d00000.test", "<1@x>"),
            ("a.test/onprem", "d00000.test", "<1@x>"),
            ("a.test/onprem", "d00000.test", long.as_str()),
            ("a.test/onprem", "d00000.test", "<3@x>"),
            ("a.test/onprem", "d00000.test", "<4@x>"),
        ];
        report(&mut s, 1, t0, &counters, &samples);
        let day = &s.reports.non_accepted["2025-11-23"];
        assert_eq!(day.len(), NON_ACCEPTED_ROWS_PER_DAY + 1);
        assert_eq!(day["a.test/onprem/"].messages, 5, "the fold row");
        let first = &day["a.test/onprem/d00000.test"];
        assert_eq!(first.samples.len(), 3);
        assert_eq!(first.samples[0], "<1@x>");
        assert_eq!(first.samples[1].len(), signal::MESSAGE_ID_MAX);
        // A row already there keeps counting past the bound.
        report(
            &mut s,
            2,
            t0 + 1,
            &[(signal::NON_ACCEPTED, "a.test/onprem", "d00000.test", 2)],
            &[],
        );
        assert_eq!(
            s.reports.non_accepted["2025-11-23"]["a.test/onprem/d00000.test"].messages,
            3
        );
    }

    #[test]
    fn report_counters_among_plain_counters_stay_plain_counters() {
        // What a leader of the release before wrote: every node counts them as it did.
        let mut s = state();
        s.apply(
            1,
            &p(
                20_415 * DAY,
                signals("e1", 1, &[(signal::INBOUND, "a.test/onprem", "none", 2)]),
            ),
        );
        assert!(s.reports.is_empty());
        assert_eq!(s.counters.table["inbound|a.test/onprem|none"].total, 2);
        // And a state without reports encodes without the field.
        let json = serde_json::to_value(&s).expect("encodes");
        assert!(json.get("reports").is_none());
    }
}
