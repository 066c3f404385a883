//! Request ids of applied admin writes, kept an hour, so that a client retrying a write it did
//! not hear back about gets the first outcome instead of applying it twice.
//!
//! The ids are kept by id and, never replicated, in the order they were applied (the entry's
//! time never goes backwards), so that dropping the expired ones costs what expired. Scanning
//! every id on every entry cost each entry the last hour's writes: provisioning by single
//! writes grew quadratic and held the node thread.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize, Serializer};

/// How long a request id is remembered.
pub const REQUEST_ID_TTL_MS: i64 = 60 * 60 * 1000;

/// Applied request ids: id → (index applied at, time applied). Written and read as that map.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(from = "BTreeMap<String, (u64, i64)>")]
pub struct Requests {
    by_id: BTreeMap<String, (u64, i64)>,
    /// (time applied, id), oldest first (derived from `by_id`).
    by_time: VecDeque<(i64, String)>,
}

impl From<BTreeMap<String, (u64, i64)>> for Requests {
    fn from(by_id: BTreeMap<String, (u64, i64)>) -> Self {
        let mut by_time: Vec<(i64, String)> = by_id
            .iter()
            .map(|(id, (_, at))| (*at, id.clone()))
            .collect();
        by_time.sort();
        Self {
            by_id,
            by_time: by_time.into(),
        }
    }
}

impl Serialize for Requests {
    fn serialize<S: Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        self.by_id.serialize(out)
    }
}

/// Equal when the ids and their entries are: the order follows from them.
impl PartialEq for Requests {
    fn eq(&self, other: &Self) -> bool {
        self.by_id == other.by_id
    }
}

impl Eq for Requests {}

impl Requests {
    /// Forgets the ids applied [`REQUEST_ID_TTL_MS`] or longer before `now_ms`.
    pub fn expire(&mut self, now_ms: i64) {
        while let Some((at, _)) = self.by_time.front() {
            if now_ms.saturating_sub(*at) < REQUEST_ID_TTL_MS {
                break;
            }
            let (at, id) = self.by_time.pop_front().expect("front");
            // Only if the id still holds this application (it is never applied twice while
            // remembered, but a stale queue entry must not drop a newer one).
            if self.by_id.get(&id).is_some_and(|(_, a)| *a == at) {
                self.by_id.remove(&id);
            }
        }
    }

    /// The index a remembered request id was applied at.
    pub fn applied_at(&self, id: &str) -> Option<u64> {
        self.by_id.get(id).map(|(index, _)| *index)
    }

    /// Remembers `id`, applied at `index` at `now_ms` (not earlier than any id before it).
    pub fn insert(&mut self, id: String, index: u64, now_ms: i64) {
        self.by_time.push_back((now_ms, id.clone()));
        self.by_id.insert(id, (index, now_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expiring from the front of the time order keeps exactly what the scan it replaces kept,
    /// across a write and read back.
    #[test]
    fn expiry_keeps_what_a_scan_keeps() {
        let (mut kept, mut scanned) = (Requests::default(), BTreeMap::new());
        let mut now = 0i64;
        let mut seed = 11u64;
        for i in 0..5_000u64 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            now += ((seed >> 33) % 4_000) as i64;
            kept.expire(now);
            scanned.retain(|_, (_, at): &mut (u64, i64)| now - *at < REQUEST_ID_TTL_MS);
            let id = format!("r{}", (seed >> 20) % 3_000);
            if kept.applied_at(&id).is_none() {
                kept.insert(id.clone(), i, now);
                scanned.insert(id, (i, now));
            }
            assert_eq!(kept.by_id, scanned, "entry {i}");
            if i % 1_000 == 999 {
                let json = serde_json::to_string(&kept).expect("encodes");
                assert_eq!(json, serde_json::to_string(&scanned).expect("encodes"));
                kept = serde_json::from_str(&json).expect("decodes");
            }
        }
        assert!(kept.by_id.len() > 100, "the walk kept ids to compare");
    }
}
