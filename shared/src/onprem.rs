//! The life cycle of an out-of-date on-premises Exchange server: stages by days since first
//! detection, pauses and their yearly budget, and where in each hour the throttled and blocked
//! minutes fall.
//!
//! Everything here is a pure function of its arguments, so the control plane (which commits
//! stage changes) and every edge (which places minutes) agree without talking to each other.

use serde::{Deserialize, Serialize};

use crate::exchange::{Baseline, Build, Class};
use crate::{PersistentMap, TenantId};

use crate::time::{civil_from_days, day_of_ms, days_from_civil};

/// One day in milliseconds.
pub const DAY_MS: i64 = 86_400_000;

/// Days a tenant may pause enforcement per calendar year.
pub const PAUSE_DAYS_PER_YEAR: u32 = 90;

/// One stage of the life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Stage {
    /// Days since first detection (less paused days) at which the stage starts.
    pub from_day: u32,
    /// Minutes per hour answered `450 4.7.230`.
    pub throttle: u8,
    /// Minutes per hour answered `550 5.7.230`.
    pub block: u8,
}

impl Stage {
    /// Whether the stage refuses any mail.
    pub fn enforces(&self) -> bool {
        self.throttle > 0 || self.block > 0
    }
}

/// The stages in order; stage numbers start at 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule(pub Vec<Stage>);

impl Default for Schedule {
    /// The best-sourced table ([`REFERENCE`]): report only for 30 days, throttling that rises
    /// every ten days, throttling with blocking from day 60, blocking only (rising) from day 70,
    /// everything blocked from day 90. A cluster applies it only once it adopted it (see
    /// [`Schedule::previous_default`]).
    fn default() -> Self {
        Self(REFERENCE.iter().map(|r| r.stage).collect())
    }
}

impl Schedule {
    /// The built-in table of the release before issue 18: [`REFERENCE`] except that stages 6
    /// and 7 also throttle 30 minutes an hour (no source gives those minutes).
    ///
    /// It exists for rolling upgrades. A cluster that never set a table applies the built-in
    /// one while it replays and applies entries, and the stage alerts it records are replicated
    /// state: if a node of this release applied [`REFERENCE`] where a node of the release
    /// before applied this table, the replicas would diverge and edges watching them would
    /// enforce different minutes. So a cluster keeps applying this table until every voter
    /// runs this release and the leader commits the entry that adopts [`REFERENCE`] (the
    /// control plane's `AdoptStageDefaults`), at the same log index on every node.
    pub fn previous_default() -> Self {
        Self(
            REFERENCE
                .iter()
                .enumerate()
                .map(|(i, r)| Stage {
                    throttle: if i == 5 || i == 6 {
                        30
                    } else {
                        r.stage.throttle
                    },
                    ..r.stage
                })
                .collect(),
        )
    }
}

/// Where the default stage table comes from: Microsoft's announcement of the transport-based
/// enforcement system (the Exchange Team blog, "Throttling and Blocking Email from Persistently
/// Vulnerable Exchange Servers to Exchange Online", 2023) and its stage table as public write-ups
/// reproduce it; `docs/exchange-sources.md` lists the pages.
pub const REFERENCE_SOURCE: &str = "Exchange Team blog, 2023: transport-based enforcement stages";

/// The link to [`REFERENCE_SOURCE`].
pub const REFERENCE_URL: &str = "https://techcommunity.microsoft.com/t5/exchange-team-blog/throttling-and-blocking-email-from-persistently-vulnerable/bc-p/4125100";

/// One stage of the reference table, with which of its cells a public source confirms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReferenceStage {
    /// The stage.
    pub stage: Stage,
    /// Whether a source gives the stage's throttled minutes (a stage that sources describe as
    /// blocking only counts as confirmed at 0).
    pub throttle_confirmed: bool,
    /// Whether a source gives the stage's blocked minutes.
    pub block_confirmed: bool,
}

const fn reference(from_day: u32, throttle: u8, block: u8) -> ReferenceStage {
    ReferenceStage {
        stage: Stage {
            from_day,
            throttle,
            block,
        },
        throttle_confirmed: true,
        block_confirmed: true,
    }
}

/// The reference table, stage 1 first. Stages 6 and 7 throttle 0: the sources describe them as
/// blocking only (the table before issue 18 throttled 30 minutes there, which no source gives).
pub const REFERENCE: [ReferenceStage; 8] = [
    reference(0, 0, 0),
    reference(30, 5, 0),
    reference(40, 10, 0),
    reference(50, 20, 0),
    reference(60, 30, 5),
    reference(70, 0, 10),
    reference(80, 0, 20),
    reference(90, 0, 60),
];

/// Whether a cell of a stage table is what a source says or an operator's choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Provenance {
    /// The value of the reference table at the same stage, given by [`REFERENCE_SOURCE`].
    Confirmed,
    /// A value no source gives: set by the operator (or a stage beyond the reference table).
    Unsourced,
}

impl Provenance {
    /// How `moat admin` prints it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Confirmed => "confirmed",
            Self::Unsourced => "operator's choice",
        }
    }
}

/// The provenance of one stage's cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct StageProvenance {
    /// Of `from_day`.
    pub from_day: Provenance,
    /// Of the throttled minutes.
    pub throttle: Provenance,
    /// Of the blocked minutes.
    pub block: Provenance,
}

impl Schedule {
    /// Checks the table: the first stage starts at day 0, stages start on strictly increasing
    /// days, and no stage throttles and blocks more than 60 minutes an hour.
    pub fn validate(&self) -> Result<(), String> {
        let first = self
            .0
            .first()
            .ok_or("a schedule needs at least one stage")?;
        if first.from_day != 0 {
            return Err("the first stage must start at day 0".into());
        }
        if self.0.len() > 32 {
            return Err("a schedule has at most 32 stages".into());
        }
        for (i, pair) in self.0.windows(2).enumerate() {
            if pair[1].from_day <= pair[0].from_day {
                return Err(format!("stage {} must start after stage {}", i + 2, i + 1));
            }
        }
        if let Some((i, _)) = self
            .0
            .iter()
            .enumerate()
            .find(|(_, s)| u16::from(s.throttle) + u16::from(s.block) > 60)
        {
            return Err(format!(
                "stage {} throttles and blocks more than 60 minutes an hour",
                i + 1
            ));
        }
        Ok(())
    }

    /// Which cells of the table a source confirms: a cell is confirmed when the reference table
    /// has the same stage (same number, same first day) with the same value there and a source
    /// gives that value.
    pub fn provenance(&self) -> Vec<StageProvenance> {
        let mark = |ok: bool| {
            if ok {
                Provenance::Confirmed
            } else {
                Provenance::Unsourced
            }
        };
        self.0
            .iter()
            .enumerate()
            .map(|(i, st)| match REFERENCE.get(i) {
                // A stage moved to other days is another stage: none of its cells is sourced.
                Some(r) => {
                    let same = r.stage.from_day == st.from_day;
                    StageProvenance {
                        from_day: mark(same),
                        throttle: mark(
                            same && r.throttle_confirmed && r.stage.throttle == st.throttle,
                        ),
                        block: mark(same && r.block_confirmed && r.stage.block == st.block),
                    }
                }
                None => StageProvenance {
                    from_day: Provenance::Unsourced,
                    throttle: Provenance::Unsourced,
                    block: Provenance::Unsourced,
                },
            })
            .collect()
    }

    /// The stage number (1-based) reached after `days` days.
    pub fn stage_at(&self, days: u32) -> u32 {
        let n = self.0.iter().take_while(|s| s.from_day <= days).count();
        u32::try_from(n.max(1)).unwrap_or(1)
    }

    /// Stage `number` (1-based), if the table has it.
    pub fn get(&self, number: u32) -> Option<&Stage> {
        self.0.get(usize::try_from(number).ok()?.checked_sub(1)?)
    }

    /// Parses `FROM:THROTTLE:BLOCK,...` (the form `moat admin` takes and prints).
    pub fn parse(text: &str) -> Result<Self, String> {
        let stages = text
            .split(',')
            .map(|part| {
                let f: Vec<&str> = part.trim().split(':').collect();
                let [d, t, b] = f[..] else {
                    return Err(format!("`{part}` is not FROM-DAY:THROTTLE:BLOCK"));
                };
                let num = |s: &str| {
                    s.trim()
                        .parse()
                        .map_err(|_| format!("bad number in `{part}`"))
                };
                Ok(Stage {
                    from_day: num(d)?,
                    throttle: u8::try_from(num(t)?)
                        .map_err(|_| format!("bad minutes in `{part}`"))?,
                    block: u8::try_from(num(b)?).map_err(|_| format!("bad minutes in `{part}`"))?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let s = Self(stages);
        s.validate()?;
        Ok(s)
    }

    /// The table in the form [`Schedule::parse`] reads.
    pub fn render(&self) -> String {
        self.0
            .iter()
            .map(|s| format!("{}:{}:{}", s.from_day, s.throttle, s.block))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A tenant's pause of throttling and blocking, `[start_ms, end_ms)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    /// When it started.
    pub start_ms: i64,
    /// When it ends.
    pub end_ms: i64,
}

impl Pause {
    /// Whether the pause is in force at `now_ms`.
    pub fn covers(&self, now_ms: i64) -> bool {
        self.start_ms <= now_ms && now_ms < self.end_ms
    }

    /// Its length in whole days (rounded up).
    pub fn days(&self) -> u32 {
        let ms = (self.end_ms - self.start_ms).max(0);
        u32::try_from((ms + DAY_MS - 1) / DAY_MS).unwrap_or(u32::MAX)
    }

    /// The calendar year (UTC) the pause started in: the year its days count against.
    pub fn year(&self) -> i64 {
        civil_from_days(day_of_ms(self.start_ms)).0
    }
}

/// Days of `year`'s budget that `pauses` use (each pause counts in full against the year it
/// started in).
pub fn pause_days_used(pauses: &[Pause], year: i64) -> u32 {
    pauses
        .iter()
        .filter(|p| p.year() == year)
        .map(Pause::days)
        .sum()
}

/// The first instant of the calendar year after the one `ms` falls in.
pub fn next_year_ms(ms: i64) -> i64 {
    let (y, _, _) = civil_from_days(day_of_ms(ms));
    days_from_civil(y + 1, 1, 1) * DAY_MS
}

/// Milliseconds of enforcement a server has accrued at `now_ms` since `first_ms`: the time
/// elapsed less the time its tenant's pauses covered, so that after a pause the server resumes
/// at the stage it had reached.
pub fn accrued_ms(first_ms: i64, now_ms: i64, pauses: &[Pause]) -> i64 {
    let elapsed = (now_ms - first_ms).max(0);
    let paused: i64 = pauses
        .iter()
        .map(|p| (p.end_ms.min(now_ms) - p.start_ms.max(first_ms)).max(0))
        .sum();
    (elapsed - paused).max(0)
}

/// What a minute of the hour holds for a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Minute {
    /// Mail is accepted.
    Open,
    /// Mail is answered `450 4.7.230`.
    Throttled,
    /// Mail is answered `550 5.7.230`.
    Blocked,
}

/// The 60 minutes of `hour` (hours since the Unix epoch) for `server` in stage `stage` with
/// `throttle` and `block` minutes an hour: a shuffle of the hour seeded by (server, hour, stage),
/// whose first `block` minutes are blocked and next `throttle` minutes throttled. The hash is
/// spelled out here (FNV-1a, then SplitMix64), not taken from `std`, so that edges built by
/// different compilers agree.
pub fn minutes(server: &str, hour: i64, stage: u32, throttle: u8, block: u8) -> [Minute; 60] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = server
        .bytes()
        .map(|b| b.to_ascii_lowercase())
        .chain([0])
        .chain(hour.to_le_bytes())
        .chain(stage.to_le_bytes());
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut next = move || {
        h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut order: [u8; 60] = std::array::from_fn(|i| i as u8);
    for i in (1..60).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let mut out = [Minute::Open; 60];
    let block = usize::from(block.min(60));
    let throttle = usize::from(throttle).min(60 - block);
    for (rank, &m) in order.iter().enumerate() {
        out[usize::from(m)] = if rank < block {
            Minute::Blocked
        } else if rank < block + throttle {
            Minute::Throttled
        } else {
            Minute::Open
        };
    }
    out
}

/// What `server` in `stage` meets at `now_ms`.
pub fn minute_at(server: &str, stage: u32, s: &Stage, now_ms: i64) -> Minute {
    let hour = now_ms.div_euclid(3_600_000);
    let minute = now_ms.div_euclid(60_000).rem_euclid(60) as usize;
    minutes(server, hour, stage, s.throttle, s.block)[minute]
}

/// A server whose mail edges throttle or block, as the control plane committed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enforced {
    /// Its stage (1-based).
    pub stage: u32,
    /// The stage's throttled minutes per hour.
    pub throttle: u8,
    /// The stage's blocked minutes per hour.
    pub block: u8,
}

impl Enforced {
    /// What the server meets at `now_ms`.
    pub fn minute_at(&self, server: &str, now_ms: i64) -> Minute {
        let stage = Stage {
            from_day: 0,
            throttle: self.throttle,
            block: self.block,
        };
        minute_at(server, self.stage, &stage, now_ms)
    }
}

/// What edges need of the on-premises Exchange policy: the baseline builds are judged against,
/// the servers being throttled or blocked (by tenant and lowercase FQDN; paused tenants' servers
/// are left out), and the service name in the reply text.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    /// The baseline.
    pub baseline: Baseline,
    /// Enforced servers by (tenant, lowercase FQDN). Persistent, as the snapshot's other maps:
    /// a change of one server's stage costs the edge one path of the map, not a copy of it.
    pub enforced: PersistentMap<(TenantId, String), Enforced>,
    /// The service name in `4.7.230` / `5.7.230` replies (default `Moat`).
    pub service: String,
    /// Whether mail through every connector is judged (by default only OnPremises
    /// connectors' mail is).
    pub all_connectors: bool,
}

impl Rules {
    /// The service name, or `Moat` when none is set.
    pub fn service(&self) -> &str {
        if self.service.is_empty() {
            DEFAULT_SERVICE
        } else {
            &self.service
        }
    }

    /// What a message from `server` stamped with `build`, for `tenant`, meets at `now_ms`: only
    /// out-of-date builds of enforced servers are ever refused, so a compliant build gets
    /// through at once.
    pub fn verdict(
        &self,
        tenant: &TenantId,
        server: &str,
        build: &Build,
        now_ms: i64,
    ) -> Option<(Minute, Enforced)> {
        if !matches!(
            self.baseline.classify(build),
            Class::Unsupported | Class::Unpatched
        ) {
            return None;
        }
        let e = self
            .enforced
            .get(&(tenant.clone(), server.to_ascii_lowercase()))?;
        Some((e.minute_at(server, now_ms), *e))
    }
}

/// The service name in replies when none is configured.
pub const DEFAULT_SERVICE: &str = "Moat";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_table() {
        let s = Schedule::default();
        s.validate().unwrap();
        let at = |d| s.stage_at(d);
        assert_eq!((at(0), at(29), at(30), at(31), at(39)), (1, 1, 2, 2, 2));
        assert_eq!(
            (at(40), at(45), at(61), at(89), at(90), at(900)),
            (3, 3, 5, 7, 8, 8)
        );
        assert_eq!(s.get(8).unwrap().block, 60);
        assert_eq!(s.get(0), None);
        assert_eq!(Schedule::parse(&s.render()).unwrap(), s);
        assert_eq!(
            s.render(),
            "0:0:0,30:5:0,40:10:0,50:20:0,60:30:5,70:0:10,80:0:20,90:0:60"
        );
        // Stages 6 and 7 block only, as the sources describe them.
        assert_eq!(
            (s.get(6).unwrap().throttle, s.get(6).unwrap().block),
            (0, 10)
        );
        assert_eq!(
            (s.get(7).unwrap().throttle, s.get(7).unwrap().block),
            (0, 20)
        );
    }

    #[test]
    fn the_previous_default_throttles_stages_6_and_7() {
        let old = Schedule::previous_default();
        old.validate().unwrap();
        // The table of the release before issue 18, as it wrote it.
        assert_eq!(
            old.render(),
            "0:0:0,30:5:0,40:10:0,50:20:0,60:30:5,70:30:10,80:30:20,90:0:60"
        );
        let new = Schedule::default();
        for (i, (o, n)) in old.0.iter().zip(&new.0).enumerate() {
            if i == 5 || i == 6 {
                assert_eq!((o.throttle, o.block), (30, n.block), "stage {}", i + 1);
            } else {
                assert_eq!(o, n, "stage {}", i + 1);
            }
        }
        // Its 30-minute throttles are no source's: not confirmed.
        let p = old.provenance();
        assert_eq!(p[5].throttle, Provenance::Unsourced);
        assert_eq!(p[6].throttle, Provenance::Unsourced);
        assert_eq!(p[5].block, Provenance::Confirmed);
    }

    #[test]
    fn provenance_marks_what_a_source_gives() {
        let all = |p: &StageProvenance| {
            [p.from_day, p.throttle, p.block]
                .iter()
                .all(|x| *x == Provenance::Confirmed)
        };
        assert!(Schedule::default().provenance().iter().all(all));
        // The table before issue 18: stages 6 and 7 throttled 30 minutes, which no source gives.
        let old = Schedule::parse("0:0:0,30:5:0,40:10:0,50:20:0,60:30:5,70:30:10,80:30:20,90:0:60")
            .unwrap();
        let p = old.provenance();
        for (i, st) in p.iter().enumerate() {
            let want = if i == 5 || i == 6 {
                Provenance::Unsourced
            } else {
                Provenance::Confirmed
            };
            assert_eq!(st.throttle, want, "stage {}", i + 1);
            assert_eq!(
                (st.from_day, st.block),
                (Provenance::Confirmed, Provenance::Confirmed)
            );
        }
        // A shorter, operator-made table: changed cells and moved stages are unsourced.
        let p =
            Schedule::parse("0:0:0,10:5:0,30:5:0,40:10:0,50:20:0,60:30:5,70:0:10,80:0:20,90:0:60")
                .unwrap()
                .provenance();
        assert_eq!(p[0].from_day, Provenance::Confirmed);
        assert_eq!(p[1].from_day, Provenance::Unsourced);
        assert_eq!(p[1].throttle, Provenance::Unsourced);
        assert_eq!(p[2].throttle, Provenance::Unsourced);
        assert!(p[8..].iter().all(|x| x.block == Provenance::Unsourced));
        assert_eq!(Provenance::Unsourced.label(), "operator's choice");
    }

    #[test]
    fn bad_tables_are_refused() {
        for bad in [
            "",
            "1:0:0",
            "0:0:0,30:5:0,30:10:0",
            "0:50:20",
            "0:0",
            "0:x:0",
            "0:300:0",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn minutes_add_up_and_depend_on_server_hour_and_stage() {
        for (t, b) in [(0, 0), (5, 0), (30, 5), (30, 20), (0, 60), (60, 10)] {
            let m = minutes("exch1.corp.local", 480_000, 5, t, b);
            let blocked = m.iter().filter(|x| **x == Minute::Blocked).count();
            let throttled = m.iter().filter(|x| **x == Minute::Throttled).count();
            assert_eq!(blocked, usize::from(b));
            assert_eq!(throttled, usize::from(t).min(60 - usize::from(b)));
        }
        let a = minutes("exch1.corp.local", 480_000, 3, 10, 0);
        assert_eq!(a, minutes("EXCH1.corp.local", 480_000, 3, 10, 0));
        assert_ne!(a, minutes("exch2.corp.local", 480_000, 3, 10, 0));
        assert_ne!(a, minutes("exch1.corp.local", 480_001, 3, 10, 0));
        assert_ne!(a, minutes("exch1.corp.local", 480_000, 4, 10, 0));
    }

    #[test]
    fn minutes_spread_evenly_over_many_hours() {
        // Each minute of the hour is throttled in about 1/12 of hours at 5 minutes an hour.
        let mut hits = [0u32; 60];
        for hour in 0..12_000 {
            for (i, m) in minutes("exch1.corp.local", hour, 2, 5, 0)
                .iter()
                .enumerate()
            {
                if *m == Minute::Throttled {
                    hits[i] += 1;
                }
            }
        }
        assert!(hits.iter().all(|h| (800..1200).contains(h)), "{hits:?}");
    }

    #[test]
    fn pauses_stop_the_clock() {
        let first = 1_000 * DAY_MS;
        let p = Pause {
            start_ms: first + 45 * DAY_MS,
            end_ms: first + 55 * DAY_MS,
        };
        assert_eq!(accrued_ms(first, first + 40 * DAY_MS, &[p]), 40 * DAY_MS);
        assert_eq!(accrued_ms(first, first + 50 * DAY_MS, &[p]), 45 * DAY_MS);
        assert_eq!(accrued_ms(first, first + 56 * DAY_MS, &[p]), 46 * DAY_MS);
        // A pause from before the cycle started only counts from its start.
        let early = Pause {
            start_ms: first - 5 * DAY_MS,
            end_ms: first + 5 * DAY_MS,
        };
        assert_eq!(accrued_ms(first, first + 10 * DAY_MS, &[early]), 5 * DAY_MS);
        assert_eq!(p.days(), 10);
    }

    #[test]
    fn the_budget_is_per_calendar_year() {
        let day = |y, m, d| days_from_civil(y, m, d) * DAY_MS;
        let a = Pause {
            start_ms: day(2026, 3, 1),
            end_ms: day(2026, 3, 1) + 60 * DAY_MS,
        };
        let b = Pause {
            start_ms: day(2026, 12, 20),
            end_ms: day(2026, 12, 20) + 20 * DAY_MS,
        };
        assert_eq!(pause_days_used(&[a, b], 2026), 80);
        assert_eq!(pause_days_used(&[a, b], 2027), 0);
        assert_eq!(next_year_ms(day(2026, 12, 31) + 5), day(2027, 1, 1));
    }
}
