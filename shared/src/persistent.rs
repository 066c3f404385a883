//! [`PersistentMap`]: the map a policy snapshot is made of, cheap to derive a changed copy of
//! and as fast to read as a hash map.
//!
//! A map is a frozen base (a hash table behind an `Arc`, shared by every snapshot derived from
//! the one that built it) under a persistent overlay of the keys changed since (an `rpds`
//! hash array mapped trie: structural sharing, so cloning is O(1) and setting or removing a key
//! copies one path of O(log d) nodes for d changed keys, leaving the map it was cloned from
//! valid and unchanged for the sessions still holding it). A removed key of the base is a
//! tombstone in the overlay.
//!
//! Why not the trie alone: at a million keys each lookup in it chases about ten pointers
//! (branch, its child array, ... the entry), against two or three in a hash table, and a verdict
//! makes a dozen lookups: the trie alone doubled the verdict's p99. With the overlay empty a
//! lookup costs one branch more than a plain hash table; a small overlay stays in cache.
//!
//! Costs: a change costs O(k log d) for k keys. When the overlay outgrows a quarter of the base
//! (and 1,024 keys), the next change folds it into a new base: O(n) then, O(1) per changed key
//! amortised. A map built from nothing (a full snapshot) writes straight into its base while no
//! other snapshot shares it.

use std::borrow::Borrow;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

/// The hash tables of a snapshot. Their keys come from the control plane (trusted) and the
/// lookups with what a client sent cannot add keys, so a fast hash (foldhash, randomly seeded
/// per process) serves instead of SipHash.
type Table<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The overlay: changed keys, `None` for a key of the base that was removed.
type Overlay<K, V> = rpds::HashTrieMapSync<K, Option<V>, foldhash::fast::RandomState>;

/// The overlay is folded into a new base once it holds more keys than this and more than a
/// quarter of the base (in unit tests, small enough that the snapshot tests fold too).
const FOLD_AT_LEAST: usize = if cfg!(test) { 16 } else { 1024 };

/// A persistent hash map: clone O(1), insert and remove O(log d) without touching the map it
/// was cloned from (see the module documentation).
pub struct PersistentMap<K, V> {
    base: Arc<Table<K, V>>,
    overlay: Overlay<K, V>,
    len: usize,
}

impl<K, V> Clone for PersistentMap<K, V>
where
    K: Eq + Hash,
{
    fn clone(&self) -> Self {
        Self {
            base: Arc::clone(&self.base),
            overlay: self.overlay.clone(),
            len: self.len,
        }
    }
}

impl<K: Eq + Hash, V> Default for PersistentMap<K, V> {
    fn default() -> Self {
        Self {
            base: Arc::default(),
            overlay: Overlay::default(),
            len: 0,
        }
    }
}

impl<K: Eq + Hash + fmt::Debug, V: fmt::Debug> fmt::Debug for PersistentMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K, V> PersistentMap<K, V>
where
    K: Eq + Hash,
{
    /// The value of `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if !self.overlay.is_empty() {
            if let Some(changed) = self.overlay.get(key) {
                return changed.as_ref();
            }
        }
        self.base.get(key)
    }

    /// Whether the map holds `key`.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }

    /// How many keys the map holds.
    pub fn size(&self) -> usize {
        self.len
    }

    /// Whether the map holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        let overlay = &self.overlay;
        let base = self
            .base
            .iter()
            .filter(move |(k, _)| overlay.is_empty() || !overlay.contains_key(*k));
        let changed = overlay
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)));
        base.chain(changed)
    }

    /// Every value, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, v)| v)
    }
}

impl<K, V> PersistentMap<K, V>
where
    K: Eq + Hash + Clone,
    V: Clone,
{
    /// The base, when this map alone holds it and nothing overlays it: then a change is made
    /// in place.
    fn own_base(&mut self) -> Option<&mut Table<K, V>> {
        if self.overlay.is_empty() {
            Arc::get_mut(&mut self.base)
        } else {
            None
        }
    }

    /// Sets `key` to `value`.
    pub fn insert_mut(&mut self, key: K, value: V) {
        let had = self.contains_key(&key);
        if let Some(base) = self.own_base() {
            base.insert(key, value);
        } else {
            self.overlay.insert_mut(key, Some(value));
            self.fold_if_large();
        }
        if !had {
            self.len += 1;
        }
    }

    /// Removes `key`; whether it was there.
    pub fn remove_mut<Q>(&mut self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if !self.contains_key(key) {
            return false;
        }
        self.len -= 1;
        if let Some(base) = self.own_base() {
            base.remove(key);
        } else if self.base.contains_key(key) {
            self.overlay.insert_mut(key.to_owned(), None);
            self.fold_if_large();
        } else {
            self.overlay.remove_mut(key);
        }
        true
    }

    /// The value of `key`, to change in place (a value of the base is first copied into the
    /// overlay, unless the map owns its base).
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if self.own_base().is_some() {
            return Arc::get_mut(&mut self.base)?.get_mut(key);
        }
        if !self.overlay.contains_key(key) {
            let value = self.base.get(key)?.clone();
            self.overlay.insert_mut(key.to_owned(), Some(value));
        }
        self.overlay.get_mut(key)?.as_mut()
    }

    /// Folds a large overlay into a new base (the old base stays with the maps sharing it).
    fn fold_if_large(&mut self) {
        let d = self.overlay.size();
        if d <= FOLD_AT_LEAST || d <= self.base.len() / 4 {
            return;
        }
        let mut base: Table<K, V> = Table::default();
        base.reserve(self.len);
        for (k, v) in self.iter() {
            base.insert(k.clone(), v.clone());
        }
        self.base = Arc::new(base);
        self.overlay = Overlay::default();
    }
}

impl<K, V> FromIterator<(K, V)> for PersistentMap<K, V>
where
    K: Eq + Hash + Clone,
    V: Clone,
{
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut map = Self::default();
        for (k, v) in iter {
            map.insert_mut(k, v);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Random sets and removals on a chain of derived maps agree with a `BTreeMap`, through
    /// in-place building, overlays, tombstones and folds, and no derived map changes the one it
    /// came from.
    #[test]
    fn agrees_with_a_btree_map_and_leaves_the_old_map_alone() {
        let mut x: u64 = 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut model: BTreeMap<u32, u64> = BTreeMap::new();
        let mut map: PersistentMap<u32, u64> = PersistentMap::default();
        for i in 0..3000u32 {
            map.insert_mut(i, u64::from(i));
            model.insert(i, u64::from(i));
        }
        for round in 0..60 {
            let old = map.clone();
            let old_model = model.clone();
            for _ in 0..200 {
                let k = (next() % 4000) as u32;
                match next() % 3 {
                    0 => {
                        assert_eq!(map.remove_mut(&k), model.remove(&k).is_some());
                    }
                    1 => {
                        if let Some(v) = map.get_mut(&k) {
                            *v += 1;
                        }
                        if let Some(v) = model.get_mut(&k) {
                            *v += 1;
                        }
                    }
                    _ => {
                        map.insert_mut(k, round);
                        model.insert(k, round);
                    }
                }
            }
            let dump = |m: &PersistentMap<u32, u64>| {
                let mut v: Vec<(u32, u64)> = m.iter().map(|(k, v)| (*k, *v)).collect();
                v.sort_unstable();
                v
            };
            assert_eq!(dump(&map), model.clone().into_iter().collect::<Vec<_>>());
            assert_eq!(map.size(), model.len());
            for k in 0..4000 {
                assert_eq!(map.get(&k), model.get(&k));
                assert_eq!(old.get(&k), old_model.get(&k));
            }
            assert_eq!(dump(&old), old_model.into_iter().collect::<Vec<_>>());
        }
    }
}
