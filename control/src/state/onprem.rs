//! On-premises Exchange servers seen in tenants' connector mail: their builds against the
//! baseline, their enforcement cycle walking the stage table by days since detection, the
//! tenants' pauses within a yearly budget, the exemptions of single servers (reported, never
//! throttled or blocked), the evidence of each sighting (the `Received:` line, first and last
//! seen, the connector), and the settings (baseline, stages, service name, scope).

use std::collections::BTreeMap;

use moat_shared::onprem::{
    accrued_ms, pause_days_used, Pause, Schedule, Stage, DAY_MS, PAUSE_DAYS_PER_YEAR,
};
use moat_shared::time::{day_of_ms, day_string};
use moat_shared::{ConnectorId, TenantId};
use serde::{Deserialize, Serialize};

use super::error::{Kind, Rejection};
use super::State;

/// The on-premises Exchange part of the state: the servers seen and the settings they are
/// judged by.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Onprem {
    /// On-premises Exchange servers by `tenant|server`.
    #[serde(default, rename = "onprem_servers")]
    pub servers: BTreeMap<String, OnpremServer>,
    /// The baseline builds; the built-in default (October 2025 updates) when `None` (see
    /// [`Onprem::baseline`]).
    #[serde(default, rename = "onprem_baseline")]
    pub custom_baseline: Option<moat_shared::exchange::Baseline>,
    /// The stage table; a built-in table when `None` (see [`Onprem::schedule`]).
    #[serde(default, rename = "onprem_schedule")]
    pub custom_schedule: Option<Schedule>,
    /// The service name in `4.7.230` / `5.7.230` replies; `Moat` when empty.
    #[serde(default, rename = "onprem_service")]
    pub service: String,
    /// Whether mail through every connector is judged (default: OnPremises connectors only).
    #[serde(default, rename = "onprem_all_connectors")]
    pub all_connectors: bool,
    /// Pauses of throttling and blocking, by tenant.
    #[serde(default, rename = "onprem_pauses")]
    pub pauses: BTreeMap<TenantId, Vec<PauseRecord>>,
    /// Whether the cluster adopted the best-sourced built-in stage table
    /// ([`Schedule::default`], stages 6 and 7 block only) through
    /// [`super::Command::AdoptStageDefaults`]; until then the built-in table is the previous
    /// release's ([`Schedule::previous_default`]), so that every node applies the same table at
    /// every log index during a rolling upgrade. Absent from the snapshot while false, so a
    /// state that never adopted it encodes as the release before wrote it.
    #[serde(
        default,
        skip_serializing_if = "is_false",
        rename = "onprem_reference_2026"
    )]
    pub reference_2026: bool,
}

/// For serde: leaves a false flag out of the snapshot.
fn is_false(b: &bool) -> bool {
    !*b
}

/// Which stage table a cluster applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableInForce {
    /// One an operator set.
    Custom,
    /// The built-in best-sourced table, adopted by the cluster.
    Reference,
    /// The built-in table of the release before, until the cluster adopts the reference one.
    PreviousDefault,
}

impl TableInForce {
    /// How `moat admin onprem policy show` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Custom => "custom",
            Self::Reference => "reference",
            Self::PreviousDefault => "previous-default",
        }
    }
}

/// An on-premises Exchange server seen in the Received stamps of a tenant's connector mail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnpremServer {
    /// The tenant.
    pub tenant: TenantId,
    /// The server's FQDN (the `by` host of its stamp).
    pub server: String,
    /// The connector its mail came through.
    pub connector: ConnectorId,
    /// The build it last stamped.
    pub build: moat_shared::exchange::Build,
    /// That build's class against the baseline when it was seen.
    pub class: moat_shared::exchange::Class,
    /// Start of the current enforcement cycle: when the server was first seen out of date
    /// (entry time); `None` while it is compliant (a compliant build ends the cycle, a later
    /// out-of-date build starts a new one).
    pub first_detected_ms: Option<i64>,
    /// When it was last seen.
    pub last_seen_ms: i64,
    /// Messages seen from it.
    pub messages: u64,
    /// Its stage in the current cycle (1-based), 0 outside a cycle.
    #[serde(default)]
    pub stage: u32,
    /// When it entered that stage.
    #[serde(default)]
    pub stage_since_ms: i64,
    /// When throttling started in the current cycle.
    #[serde(default)]
    pub throttle_enabled_ms: Option<i64>,
    /// When blocking started in the current cycle.
    #[serde(default)]
    pub blocking_enabled_ms: Option<i64>,
    /// Whether its tenant's pause is in force (as of the last applied entry).
    #[serde(default)]
    pub paused: bool,
    /// When a compliant build last ended a cycle.
    #[serde(default)]
    pub remediated_ms: Option<i64>,
    /// When it was first seen with evidence (entry time): edges of this release send the
    /// `Received:` line with each sighting, and the first such sighting sets this. `None` for a
    /// server only seen by older edges: a log of the release before replays to the state it
    /// wrote, and its snapshot re-encodes to the same bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seen_ms: Option<i64>,
    /// The `Received:` line its build was last read from, as the edge received it (unfolded,
    /// sanitized, at most [`moat_shared::exchange::MAX_EVIDENCE_BYTES`] bytes); empty when no
    /// edge sent one (an edge of an older release).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub received: String,
    /// The exemption in force: the server is reported, walks its stages, and is never throttled
    /// or blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exempt: Option<Exemption>,
}

/// Why an on-premises server is exempt from throttling and blocking, and who said so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exemption {
    /// Who exempted it.
    pub actor: String,
    /// Why (required: an exemption is a decision someone must be able to explain later).
    pub reason: String,
    /// When (entry time).
    pub at_ms: i64,
}

impl OnpremServer {
    /// Whether edges throttle or block it under `schedule`: never while it is exempt.
    pub fn enforced(&self, schedule: &Schedule) -> bool {
        self.first_detected_ms.is_some()
            && !self.paused
            && self.exempt.is_none()
            && schedule.get(self.stage).is_some_and(|s| s.enforces())
    }
}

/// A tenant's pause, with who asked for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseRecord {
    /// When it runs.
    pub pause: Pause,
    /// Who paused.
    pub actor: String,
    /// Why.
    pub reason: String,
}

impl Onprem {
    /// The stage table in force: the one an operator set; else the best-sourced built-in table
    /// once the cluster adopted it; else the previous release's built-in table.
    pub fn schedule(&self) -> Schedule {
        match (&self.custom_schedule, self.reference_2026) {
            (Some(s), _) => s.clone(),
            (None, true) => Schedule::default(),
            (None, false) => Schedule::previous_default(),
        }
    }

    /// Which table [`Onprem::schedule`] gives.
    pub fn table_in_force(&self) -> TableInForce {
        match (&self.custom_schedule, self.reference_2026) {
            (Some(_), _) => TableInForce::Custom,
            (None, true) => TableInForce::Reference,
            (None, false) => TableInForce::PreviousDefault,
        }
    }

    /// The baseline in force (the October 2025 updates unless one was set).
    pub fn baseline(&self) -> moat_shared::exchange::Baseline {
        self.custom_baseline.clone().unwrap_or_default()
    }

    /// A tenant's pauses.
    pub fn tenant_pauses(&self, tenant: &TenantId) -> Vec<Pause> {
        self.pauses
            .get(tenant)
            .map(|v| v.iter().map(|p| p.pause).collect())
            .unwrap_or_default()
    }

    /// Where a server in a cycle should be at `now`: its stage by accrued days and whether its
    /// tenant's pause is in force.
    fn target(&self, srv: &OnpremServer, schedule: &Schedule, now: i64) -> (u32, bool) {
        let Some(first) = srv.first_detected_ms else {
            return (srv.stage, srv.paused);
        };
        let pauses = self.tenant_pauses(&srv.tenant);
        let days = accrued_ms(first, now, &pauses) / DAY_MS;
        let stage = schedule.stage_at(u32::try_from(days).unwrap_or(u32::MAX));
        (stage, pauses.iter().any(|p| p.covers(now)))
    }

    /// Whether applying an entry at `now` would move a server to another stage or start or end
    /// a pause: the leader proposes a [`super::Command::Tick`] when it would.
    pub fn due(&self, now: i64) -> bool {
        let schedule = self.schedule();
        self.servers
            .values()
            .filter(|s| s.first_detected_ms.is_some())
            .any(|s| self.target(s, &schedule, now) != (s.stage, s.paused))
    }
}

impl State {
    /// Changes the on-premises Exchange settings; `None` leaves a setting as it is. A new
    /// baseline judges every known server again.
    pub(super) fn set_onprem_policy(
        &mut self,
        index: u64,
        baseline: Option<&moat_shared::exchange::Baseline>,
        stages: Option<&Schedule>,
        service: Option<&String>,
        all_connectors: Option<bool>,
    ) -> Result<String, Rejection> {
        let mut said = Vec::new();
        if let Some(all) = all_connectors {
            self.onprem.all_connectors = all;
            said.push(format!(
                "scope {}",
                if all { "all-connectors" } else { "onpremises" }
            ));
        }
        if let Some(stages) = stages {
            stages
                .validate()
                .map_err(|e| Rejection::invalid(Kind::Onprem, e))?;
            said.push(format!("stages {}", stages.render()));
            self.onprem.custom_schedule = Some(stages.clone());
        }
        if let Some(service) = service {
            let service = service.trim();
            if service.is_empty() || service.len() > 64 || service.contains(['\r', '\n']) {
                return Err(Rejection::invalid(
                    Kind::Onprem,
                    "the service name is one line of 1 to 64 characters",
                ));
            }
            said.push(format!("service name {service}"));
            self.onprem.service = service.to_owned();
        }
        if let Some(baseline) = baseline {
            if baseline.0.is_empty() {
                return Err(Rejection::invalid(
                    Kind::Onprem,
                    "the baseline needs at least one build",
                ));
            }
            said.push(format!(
                "baseline {}",
                baseline
                    .0
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            self.onprem.custom_baseline = Some(baseline.clone());
            self.reclassify_onprem(index);
        }
        if said.is_empty() {
            return Err(Rejection::invalid(Kind::Onprem, "nothing to change"));
        }
        Ok(format!("on-premises Exchange: {}", said.join("; ")))
    }

    /// Adopts the best-sourced built-in stage table ([`Schedule::default`]) in place of the
    /// previous release's: from this entry on, a cluster without a table of its own applies it.
    /// Servers keep their stage (both tables start their stages on the same days); edges get
    /// new minutes for any enforced server whose stage's minutes changed (stages 6 and 7 stop
    /// throttling), which is what makes this entry a policy change. Refused once adopted.
    pub(super) fn adopt_stage_defaults(&mut self) -> Result<String, Rejection> {
        if self.onprem.reference_2026 {
            return Err(Rejection::conflict(
                Kind::Onprem,
                "the cluster adopted the best-sourced stage table at an earlier entry",
            ));
        }
        let before = self.onprem.schedule();
        self.onprem.reference_2026 = true;
        let after = self.onprem.schedule();
        let minutes = |s: &Schedule, srv: &OnpremServer| {
            srv.enforced(s)
                .then(|| s.get(srv.stage).map(|st| (st.throttle, st.block)))
        };
        if self
            .onprem
            .servers
            .values()
            .any(|srv| minutes(&before, srv) != minutes(&after, srv))
        {
            self.onprem_changed = true;
        }
        Ok(format!(
            "on-premises Exchange: the built-in stage table is now the best-sourced one ({}): \
             stages 6 and 7 block only, without the 30 throttled minutes an hour of the \
             previous release's default{}",
            Schedule::default().render(),
            if self.onprem.custom_schedule.is_some() {
                "; the table set by an operator stays in force"
            } else {
                ""
            }
        ))
    }

    /// Pauses throttling and blocking of a tenant's servers for `days` days from the entry's
    /// time, within the yearly budget.
    pub(super) fn pause_onprem(
        &mut self,
        actor: &str,
        tenant: &TenantId,
        days: u32,
        reason: &str,
    ) -> Result<String, Rejection> {
        self.directory.require(tenant)?;
        let now = self.now_ms;
        if days == 0 || days > PAUSE_DAYS_PER_YEAR {
            return Err(Rejection::invalid(
                Kind::Pause,
                format!("a pause lasts 1 to {PAUSE_DAYS_PER_YEAR} days"),
            ));
        }
        let pauses = self.onprem.pauses.entry(tenant.clone()).or_default();
        let pause = Pause {
            start_ms: now,
            end_ms: now + i64::from(days) * DAY_MS,
        };
        let year = pause.year();
        let list: Vec<Pause> = pauses.iter().map(|p| p.pause).collect();
        let used = pause_days_used(&list, year);
        if used + days > PAUSE_DAYS_PER_YEAR {
            return Err(Rejection::conflict(Kind::Pause, format!(
                "a {days}-day pause exceeds the yearly budget: {used} of {PAUSE_DAYS_PER_YEAR} days of {year} are used, {} left",
                PAUSE_DAYS_PER_YEAR - used
            )));
        }
        if let Some(p) = pauses.iter().find(|p| p.pause.covers(now)) {
            return Err(Rejection::AlreadyPaused {
                tenant: tenant.clone(),
                until: day_string(day_of_ms(p.pause.end_ms)),
            });
        }
        pauses.push(PauseRecord {
            pause,
            actor: actor.to_owned(),
            reason: reason.to_owned(),
        });
        self.onprem_changed = true;
        Ok(format!(
            "throttling and blocking of {tenant}'s on-premises servers paused for {days} day(s) until {} ({} of {PAUSE_DAYS_PER_YEAR} days of {year} left){}",
            day_string(day_of_ms(pause.end_ms)),
            PAUSE_DAYS_PER_YEAR - used - days,
            if reason.is_empty() {
                String::new()
            } else {
                format!(": {reason}")
            }
        ))
    }

    /// Exempts `server` of `tenant` from throttling and blocking (it stays in the report and
    /// walks its stages). The server must have been seen; an exemption in force is replaced
    /// (a new reason), so that the audit log keeps each decision.
    pub(super) fn exempt_onprem(
        &mut self,
        actor: &str,
        tenant: &TenantId,
        server: &str,
        reason: &str,
    ) -> Result<String, Rejection> {
        self.directory.require(tenant)?;
        let reason = reason.trim();
        if reason.is_empty() || reason.len() > 512 || reason.contains(['\r', '\n']) {
            return Err(Rejection::invalid(
                Kind::OnpremServer,
                "an exemption needs a reason: one line of 1 to 512 characters",
            ));
        }
        let server = server.trim().trim_end_matches('.').to_ascii_lowercase();
        let schedule = self.onprem.schedule();
        let now = self.now_ms;
        let srv = self
            .onprem
            .servers
            .get_mut(&format!("{tenant}|{server}"))
            .ok_or_else(|| {
                Rejection::not_found(Kind::OnpremServer, format!("{tenant}/{server}"))
            })?;
        let was_enforced = srv.enforced(&schedule);
        srv.exempt = Some(Exemption {
            actor: actor.to_owned(),
            reason: reason.to_owned(),
            at_ms: now,
        });
        if was_enforced {
            self.onprem_changed = true;
        }
        Ok(format!(
            "on-premises server {server} of {tenant} exempt from throttling and blocking (build {}, {}): {reason}",
            srv.build,
            srv.class.as_str()
        ))
    }

    /// Ends the exemption of `server` of `tenant`: from this entry on it is enforced at the
    /// stage its cycle reached.
    pub(super) fn unexempt_onprem(
        &mut self,
        tenant: &TenantId,
        server: &str,
    ) -> Result<String, Rejection> {
        self.directory.require(tenant)?;
        let server = server.trim().trim_end_matches('.').to_ascii_lowercase();
        let schedule = self.onprem.schedule();
        let name = format!("{tenant}/{server}");
        let srv = self
            .onprem
            .servers
            .get_mut(&format!("{tenant}|{server}"))
            .ok_or_else(|| Rejection::not_found(Kind::OnpremServer, &name))?;
        if srv.exempt.take().is_none() {
            return Err(Rejection::conflict(
                Kind::OnpremServer,
                format!("{name} is not exempt"),
            ));
        }
        let enforced = srv.enforced(&schedule);
        if enforced {
            self.onprem_changed = true;
        }
        Ok(format!(
            "on-premises server {server} of {tenant} no longer exempt{}",
            if enforced {
                format!(": throttled or blocked at stage {}", srv.stage)
            } else {
                String::new()
            }
        ))
    }

    /// Records a sighting of an on-premises Exchange server (`server|build`) through the
    /// connector `key`: classifies the build, starts or ends its enforcement cycle, and alerts
    /// the tenant's admins when a cycle starts.
    pub(super) fn count_onprem(
        &mut self,
        index: u64,
        key: &ConnectorId,
        name: &str,
        delta: u64,
        received: Option<&str>,
    ) {
        use moat_shared::exchange::Build;
        let Some((server, build)) = name.split_once('|') else {
            return;
        };
        let Some(build) = Build::parse(build) else {
            return;
        };
        let Some(tenant) = self.directory.connector(key).map(|c| c.tenant.clone()) else {
            return;
        };
        let class = self.onprem.baseline().classify(&build);
        let now = self.now_ms;
        let entry = self
            .onprem
            .servers
            .entry(format!("{tenant}|{server}"))
            .or_insert_with(|| OnpremServer {
                tenant: tenant.clone(),
                server: server.to_owned(),
                connector: key.clone(),
                build,
                class,
                first_detected_ms: None,
                last_seen_ms: now,
                messages: 0,
                stage: 0,
                stage_since_ms: now,
                throttle_enabled_ms: None,
                blocking_enabled_ms: None,
                paused: false,
                remediated_ms: None,
                first_seen_ms: None,
                received: String::new(),
                exempt: None,
            });
        if let Some(line) = received.filter(|l| !l.is_empty()) {
            // Bounded again: the edge is trusted to send a line, not its size.
            entry.received = moat_shared::exchange::bound_evidence(line);
            entry.first_seen_ms.get_or_insert(now);
        }
        entry.build = build;
        entry.class = class;
        entry.connector = key.clone();
        entry.last_seen_ms = now;
        entry.messages += delta;
        self.observe_onprem(index, &format!("{tenant}|{server}"));
    }

    /// Starts or ends a server's cycle by its class: an out-of-date build outside a cycle starts
    /// one at stage 1 (a regression after remediation starts a new cycle from day 0); a compliant
    /// build ends the cycle at once. Alerts the tenant's admins either way.
    fn observe_onprem(&mut self, index: u64, key: &str) {
        use moat_shared::exchange::Class;
        let now = self.now_ms;
        let schedule = self.onprem.schedule();
        let Some(srv) = self.onprem.servers.get_mut(key) else {
            return;
        };
        let out_of_date = matches!(srv.class, Class::Unsupported | Class::Unpatched);
        let was_enforced = srv.enforced(&schedule);
        let event = if out_of_date && srv.first_detected_ms.is_none() {
            srv.first_detected_ms = Some(now);
            srv.stage = 1;
            srv.stage_since_ms = now;
            srv.throttle_enabled_ms = None;
            srv.blocking_enabled_ms = None;
            Some((
                "medium",
                "Out-of-date Exchange server detected",
                format!(
                    "{} sends with {} build {} ({}) through connector {}; stage 1 (report only) until day {}",
                    srv.server,
                    srv.build.product().name(),
                    srv.build,
                    srv.class.as_str(),
                    srv.connector,
                    schedule.get(2).map_or(0, |s| s.from_day)
                ),
            ))
        } else if srv.class == Class::Compliant && srv.first_detected_ms.is_some() {
            srv.first_detected_ms = None;
            srv.stage = 0;
            srv.stage_since_ms = now;
            srv.remediated_ms = Some(now);
            Some((
                "low",
                "Exchange server remediated",
                format!(
                    "{} now sends with compliant build {}; its mail is no longer throttled or blocked",
                    srv.server, srv.build
                ),
            ))
        } else {
            None
        };
        if srv.enforced(&schedule) != was_enforced {
            self.onprem_changed = true;
        }
        if let Some((severity, title, detail)) = event {
            let tenant = srv.tenant.clone();
            self.onprem_event(index, tenant, severity, title, detail);
        }
    }

    /// Judges every known server again (the baseline changed).
    pub(super) fn reclassify_onprem(&mut self, index: u64) {
        let baseline = self.onprem.baseline();
        let keys: Vec<String> = self.onprem.servers.keys().cloned().collect();
        for key in keys {
            if let Some(srv) = self.onprem.servers.get_mut(&key) {
                srv.class = baseline.classify(&srv.build);
            }
            self.observe_onprem(index, &key);
        }
    }

    /// Moves every server in a cycle to its stage at the entry's time, alerting at each stage
    /// change; marks the snapshot changed when what edges enforce changed.
    pub(super) fn settle_onprem(&mut self, index: u64) {
        let now = self.now_ms;
        if !self.onprem.due(now) {
            return;
        }
        let schedule = self.onprem.schedule();
        let keys: Vec<String> = self.onprem.servers.keys().cloned().collect();
        for key in keys {
            let Some(srv) = self.onprem.servers.get(&key) else {
                continue;
            };
            let (stage, paused) = self.onprem.target(srv, &schedule, now);
            if (stage, paused) == (srv.stage, srv.paused) {
                continue;
            }
            let Some(srv) = self.onprem.servers.get_mut(&key) else {
                continue;
            };
            let was_enforced = srv.enforced(&schedule);
            srv.paused = paused;
            let mut event = None;
            if stage != srv.stage {
                srv.stage = stage;
                srv.stage_since_ms = now;
                let st = schedule.get(stage).copied().unwrap_or(Stage {
                    from_day: 0,
                    throttle: 0,
                    block: 0,
                });
                if st.throttle > 0 {
                    srv.throttle_enabled_ms.get_or_insert(now);
                }
                if st.block > 0 {
                    srv.blocking_enabled_ms.get_or_insert(now);
                }
                let what = match (st.throttle, st.block) {
                    (0, 0) => "report only".to_owned(),
                    (t, 0) => format!("throttled {t} minutes an hour"),
                    (0, 60) | (_, 60) => "all mail blocked".to_owned(),
                    (0, b) => format!("blocked {b} minutes an hour"),
                    (t, b) => format!("blocked {b} and throttled {t} minutes an hour"),
                };
                event = Some((
                    if st.block > 0 { "high" } else { "medium" },
                    format!("Out-of-date Exchange server at stage {stage}"),
                    format!(
                        "{} (build {}) is at stage {stage}: {what}{}",
                        srv.server,
                        srv.build,
                        if paused { " once the pause ends" } else { "" }
                    ),
                ));
            }
            // A new stage of an enforced server changes its minutes too.
            if was_enforced || srv.enforced(&schedule) {
                self.onprem_changed = true;
            }
            if let Some((severity, title, detail)) = event {
                let tenant = srv.tenant.clone();
                self.onprem_event(index, tenant, severity, &title, detail);
            }
        }
    }

    /// Audits and alerts an on-premises server event.
    fn onprem_event(
        &mut self,
        index: u64,
        tenant: TenantId,
        severity: &str,
        title: &str,
        detail: String,
    ) {
        let action = format!("{title}: {detail}");
        self.system_alert(index, tenant, action, severity, title, detail);
    }
}

#[cfg(test)]
mod tests {
    use moat_shared::onprem::{Schedule, DAY_MS};
    use moat_shared::TenantId;

    use crate::state::testutil::*;
    use crate::state::*;

    #[test]
    fn onprem_servers_start_and_end_their_cycle_by_build() {
        let (mut s, _) = simulate(1, |_| 1, |_| 0);
        let t0 = s.now_ms + 1000;
        let mut seq = 0;
        let mut apply = |s: &mut State, at: i64, build: &str| {
            seq += 1;
            s.apply(1000 + seq, &p(at, exchange_seen(seq, build)));
        };
        apply(&mut s, t0, "15.1.2507.44");
        let srv = &s.onprem.servers["a|exch16.corp.local"];
        assert_eq!(srv.class, moat_shared::exchange::Class::Unpatched);
        assert_eq!(srv.first_detected_ms, Some(t0));
        assert_eq!(
            s.alerts.records.back().unwrap().title,
            "Out-of-date Exchange server detected"
        );
        // Seen again later: the cycle keeps its start.
        apply(&mut s, t0 + 100_000_000, "15.1.2507.44");
        assert_eq!(
            s.onprem.servers["a|exch16.corp.local"].first_detected_ms,
            Some(t0)
        );
        // Remediated, then regressed: a new cycle.
        apply(&mut s, t0 + 200_000_000, "15.1.2507.61");
        assert_eq!(
            s.onprem.servers["a|exch16.corp.local"].first_detected_ms,
            None
        );
        apply(&mut s, t0 + 300_000_000, "15.0.1497.48");
        let srv = &s.onprem.servers["a|exch16.corp.local"];
        assert_eq!(srv.first_detected_ms, Some(t0 + 300_000_000));
        assert_eq!(srv.class, moat_shared::exchange::Class::Unsupported);
        let titles: Vec<&str> = s.alerts.records.iter().map(|a| a.title.as_str()).collect();
        assert_eq!(
            titles,
            [
                "Out-of-date Exchange server detected",
                "Exchange server remediated",
                "Out-of-date Exchange server detected"
            ]
        );
    }

    #[test]
    fn servers_walk_the_stages_by_days_since_detection() {
        const DAY: i64 = moat_shared::onprem::DAY_MS;
        let t0 = 1_800_000_000_000;
        let mut s = detected_at(t0);
        let key = "a|exch16.corp.local";
        let mut index = 6000;
        let mut tick = |s: &mut State, day: i64| {
            index += 1;
            let before = s.policy_version;
            s.apply(index, &p(t0 + day * DAY, Command::Tick));
            (s.onprem.servers[key].stage, s.policy_version != before)
        };
        assert!(!s.onprem.due(t0 + 29 * DAY));
        assert!(s.onprem.due(t0 + 30 * DAY));
        assert_eq!(tick(&mut s, 1), (1, false));
        // Stage 2 is the first that refuses mail: the snapshot changes.
        assert_eq!(tick(&mut s, 31), (2, true));
        assert_eq!(
            s.alerts.records.back().unwrap().title,
            "Out-of-date Exchange server at stage 2"
        );
        assert_eq!(tick(&mut s, 45), (3, true));
        let srv = &s.onprem.servers[key];
        assert_eq!(srv.throttle_enabled_ms, Some(t0 + 31 * DAY));
        assert_eq!(srv.blocking_enabled_ms, None);
        let pause = |days, reason: &str| Command::PauseOnprem {
            tenant: TenantId::new("a").unwrap(),
            days,
            reason: reason.into(),
        };
        // Paused at day 45 for 10 days: no enforcement, and the clock of the cycle stops.
        let paused = s.apply(7000, &p(t0 + 45 * DAY, pause(10, "patching")));
        assert!(paused.result.is_ok(), "{paused:?}");
        assert!(s.onprem.servers[key].paused);
        assert!(!s.onprem.servers[key].enforced(&s.onprem.schedule()));
        assert_eq!(s.policy_version, 7000);
        // Day 56: 46 days accrued, still stage 3, enforced again.
        assert_eq!(tick(&mut s, 56), (3, true));
        assert!(!s.onprem.servers[key].paused);
        // 81 more days this year would exceed the 90-day budget.
        let refused = s.apply(7001, &p(t0 + 57 * DAY, pause(81, "more")));
        let why = refused.result.unwrap_err().to_string();
        assert!(
            why.contains("80 left") || why.contains("yearly budget"),
            "{why}"
        );
        assert_eq!(tick(&mut s, 71), (5, true));
        assert!(s.onprem.servers[key].blocking_enabled_ms.is_some());
        assert_eq!(tick(&mut s, 101), (8, true));
        assert_eq!(s.alerts.records.back().unwrap().severity, "high");
    }

    /// Walks a server detected at `t0` to day 71 (stage 6); returns the last alert's detail
    /// and the minutes edges get for it.
    fn at_stage_6(s: &mut State, t0: i64) -> (String, Vec<(u32, u32, u32)>) {
        const DAY: i64 = moat_shared::onprem::DAY_MS;
        s.apply(6001, &p(t0 + 61 * DAY, Command::Tick));
        s.apply(6002, &p(t0 + 71 * DAY, Command::Tick));
        assert_eq!(s.onprem.servers["a|exch16.corp.local"].stage, 6);
        let alert = s.alerts.records.back().unwrap();
        assert_eq!(alert.title, "Out-of-date Exchange server at stage 6");
        let edges = crate::publish::enforced(s)
            .iter()
            .map(|e| (e.stage, e.throttle, e.block))
            .collect();
        (alert.detail.clone(), edges)
    }

    #[test]
    fn before_adoption_a_stage_6_server_is_throttled_as_the_release_before_did() {
        let t0 = 1_800_000_000_000;
        let mut s = detected_at(t0);
        assert_eq!(
            s.onprem.table_in_force(),
            onprem::TableInForce::PreviousDefault
        );
        assert_eq!(s.onprem.schedule(), Schedule::previous_default());
        let (detail, edges) = at_stage_6(&mut s, t0);
        // The text the release before recorded, so that replicas of both releases agree.
        assert_eq!(
            detail,
            "exch16.corp.local (build 15.1.2507.44) is at stage 6: blocked 10 and throttled 30 minutes an hour"
        );
        assert_eq!(edges, [(6, 30, 10)]);
        assert!(s.onprem.servers["a|exch16.corp.local"]
            .throttle_enabled_ms
            .is_some());
    }

    #[test]
    fn after_adoption_a_stage_6_server_is_blocked_only() {
        let t0 = 1_800_000_000_000;
        let mut s = detected_at(t0);
        adopt_stage_defaults(&mut s, 5500, t0 + 1000);
        assert_eq!(s.onprem.table_in_force(), onprem::TableInForce::Reference);
        assert_eq!(s.onprem.schedule(), Schedule::default());
        let audit = s.audit.records.back().unwrap();
        assert_eq!((audit.actor.as_str(), audit.index), ("test", 5500));
        assert!(
            audit.action.contains("best-sourced")
                && audit.action.contains("stages 6 and 7 block only"),
            "{}",
            audit.action
        );
        let (detail, edges) = at_stage_6(&mut s, t0);
        assert_eq!(
            detail,
            "exch16.corp.local (build 15.1.2507.44) is at stage 6: blocked 10 minutes an hour"
        );
        assert_eq!(edges, [(6, 0, 10)]);
        // Adopted once: a second proposal (another leader's) is refused and changes nothing.
        let again = s.apply(6003, &p(t0 + 72 * DAY_MS, Command::AdoptStageDefaults));
        assert_eq!(
            again.result.unwrap_err().code(),
            crate::state::RejectionCode::FailedPrecondition
        );
        assert_eq!(Command::AdoptStageDefaults.log_version(), 4);
    }

    #[test]
    fn adoption_is_a_policy_change_only_when_enforced_minutes_change() {
        let t0 = 1_800_000_000_000;
        // A stage-5 server: both tables give it the same minutes; edges have nothing new.
        let mut s = detected_at(t0);
        s.apply(6001, &p(t0 + 61 * DAY_MS, Command::Tick));
        let before = s.policy_version;
        adopt_stage_defaults(&mut s, 6002, t0 + 61 * DAY_MS);
        assert_eq!(s.policy_version, before);
        // A stage-6 server: its 30 throttled minutes end with this entry, on every edge.
        let mut s = detected_at(t0);
        at_stage_6(&mut s, t0);
        adopt_stage_defaults(&mut s, 6100, t0 + 71 * DAY_MS);
        assert_eq!(s.policy_version, 6100);
        assert_eq!(
            crate::publish::enforced(&s)
                .iter()
                .map(|e| (e.stage, e.throttle, e.block))
                .collect::<Vec<_>>(),
            [(6, 0, 10)]
        );
        // A table set by an operator stays in force.
        let mut s = detected_at(t0);
        let old = Schedule::previous_default();
        let r = s.apply(
            5001,
            &p(
                t0,
                Command::SetOnpremPolicy {
                    baseline: None,
                    stages: Some(old.clone()),
                    service: None,
                    all_connectors: None,
                },
            ),
        );
        assert!(r.result.is_ok(), "{r:?}");
        adopt_stage_defaults(&mut s, 5002, t0 + 1);
        assert_eq!(s.onprem.table_in_force(), onprem::TableInForce::Custom);
        assert_eq!(s.onprem.schedule(), old);
        assert!(s
            .audit
            .records
            .back()
            .unwrap()
            .action
            .contains("set by an operator stays in force"));
    }

    #[test]
    fn the_adoption_flag_is_absent_from_the_snapshot_until_set() {
        let t0 = 1_800_000_000_000;
        let mut s = detected_at(t0);
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("onprem_reference_2026"), "{json}");
        adopt_stage_defaults(&mut s, 5500, t0 + 1000);
        let json = serde_json::to_vec(&s).unwrap();
        assert!(String::from_utf8_lossy(&json).contains("\"onprem_reference_2026\":true"));
        let back: State = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, s);
        assert!(back.onprem.reference_2026);
    }

    #[test]
    fn a_raised_baseline_makes_a_compliant_server_unpatched() {
        let t0 = 1_800_000_000_000;
        let mut s = detected_at(t0);
        // Remediate with the October 2025 update, then raise the baseline above it.
        s.apply(5001, &p(t0 + 1000, exchange_seen(2, "15.1.2507.61")));
        let srv = &s.onprem.servers["a|exch16.corp.local"];
        assert_eq!(
            (srv.first_detected_ms, srv.remediated_ms),
            (None, Some(t0 + 1000))
        );
        let baseline = moat_shared::exchange::Baseline(
            ["15.1.2507.66", "15.2.1748.42"]
                .iter()
                .filter_map(|b| moat_shared::exchange::Build::parse(b))
                .collect(),
        );
        let r = s.apply(
            5002,
            &p(
                t0 + 2000,
                Command::SetOnpremPolicy {
                    baseline: Some(baseline),
                    stages: None,
                    service: None,
                    all_connectors: None,
                },
            ),
        );
        assert!(r.result.is_ok(), "{r:?}");
        let srv = &s.onprem.servers["a|exch16.corp.local"];
        assert_eq!(srv.class, moat_shared::exchange::Class::Unpatched);
        assert_eq!(srv.first_detected_ms, Some(t0 + 2000));
    }

    #[test]
    fn an_exempt_server_is_reported_but_never_enforced() {
        const DAY: i64 = moat_shared::onprem::DAY_MS;
        let t0 = 1_800_000_000_000;
        let mut s = detected_at(t0);
        let key = "a|exch16.corp.local";
        let tenant = TenantId::new("a").unwrap();
        s.apply(5001, &p(t0 + 31 * DAY, Command::Tick));
        assert!(s.onprem.servers[key].enforced(&s.onprem.schedule()));
        // No reason, or an unknown server: refused.
        let exempt = |server: &str, reason: &str| Command::ExemptOnprem {
            tenant: tenant.clone(),
            server: server.into(),
            reason: reason.into(),
        };
        let r = s.apply(5002, &p(t0 + 31 * DAY, exempt("exch16.corp.local", " ")));
        assert!(r.result.unwrap_err().to_string().contains("reason"));
        let r = s.apply(5003, &p(t0 + 31 * DAY, exempt("nope.corp.local", "x")));
        assert_eq!(
            r.result.unwrap_err().code(),
            crate::state::RejectionCode::NotFound
        );
        // Exempted: no longer enforced, the snapshot changes, the audit log names the actor.
        let before = s.policy_version;
        let r = s.apply(
            5004,
            &p(
                t0 + 31 * DAY,
                exempt("EXCH16.corp.local.", "pickup folder stamps an old build"),
            ),
        );
        assert!(r.result.is_ok(), "{r:?}");
        assert_ne!(s.policy_version, before);
        let srv = &s.onprem.servers[key];
        assert!(!srv.enforced(&s.onprem.schedule()));
        assert_eq!(srv.exempt.as_ref().unwrap().actor, "test");
        let audit = s.audit.records.back().unwrap();
        assert_eq!(audit.actor, "test");
        assert!(audit.action.contains("exempt"), "{}", audit.action);
        // It still walks its stages, and stays out of enforcement.
        s.apply(5005, &p(t0 + 71 * DAY, Command::Tick));
        assert_eq!(s.onprem.servers[key].stage, 6);
        assert!(!s.onprem.servers[key].enforced(&s.onprem.schedule()));
        // Unexempted: enforced again at the stage it reached.
        let un = Command::UnexemptOnprem {
            tenant: tenant.clone(),
            server: "exch16.corp.local".into(),
        };
        let r = s.apply(5006, &p(t0 + 71 * DAY, un.clone()));
        assert!(r.result.unwrap().contains("stage 6"));
        assert!(s.onprem.servers[key].enforced(&s.onprem.schedule()));
        assert_eq!(s.policy_version, 5006);
        let again = s.apply(5007, &p(t0 + 71 * DAY, un));
        assert!(again.result.unwrap_err().to_string().contains("not exempt"));
        assert_eq!(
            Command::ExemptOnprem {
                tenant,
                server: String::new(),
                reason: String::new()
            }
            .log_version(),
            3
        );
    }

    #[test]
    fn a_sighting_keeps_its_received_line_and_first_seen_time() {
        let (mut s, _) = simulate(1, |_| 1, |_| 0);
        let t0 = s.now_ms + 1000;
        let name = moat_shared::signal::onprem_server("exch16.corp.local", "15.1.2507.44");
        let mut b = batch(
            "e9",
            1,
            &[(moat_shared::signal::ONPREM, "a/onprem", &name, 1)],
        );
        let line = format!(
            "Received: from x by exch16.corp.local with Microsoft SMTP Server id 15.1.2507.44; {}",
            "x".repeat(600)
        );
        b.onprem_evidence = vec![("a/onprem".into(), name.clone(), line)];
        s.apply(1000, &p(t0, Command::Signals { batches: vec![b] }));
        let srv = &s.onprem.servers["a|exch16.corp.local"];
        assert_eq!(srv.first_seen_ms, Some(t0));
        assert!(srv
            .received
            .starts_with("Received: from x by exch16.corp.local"));
        assert_eq!(
            srv.received.len(),
            moat_shared::exchange::MAX_EVIDENCE_BYTES
        );
        // A batch without evidence (an older edge) keeps the line; first seen stays.
        s.apply(1001, &p(t0 + 5000, exchange_seen(2, "15.1.2507.44")));
        let srv = &s.onprem.servers["a|exch16.corp.local"];
        assert_eq!((srv.first_seen_ms, srv.last_seen_ms), (Some(t0), t0 + 5000));
        assert!(!srv.received.is_empty());
        // The snapshot form round-trips.
        let json = serde_json::to_vec(&s).unwrap();
        let back: State = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, s);
    }
}
