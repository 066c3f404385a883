//! Durable Raft state.
//!
//! [`RaftStore`] implements [`raft::Storage`] over any [`Backend`]: an ordered key-value store
//! whose batches are atomic and durable when [`Backend::write`] returns. Only [`sled`] names the
//! sled crate; [`memory`] is for tests and single-process simulations.
//!
//! Key layout (all big-endian so byte order is index order):
//!
//! | key | value |
//! | --- | --- |
//! | `e` + index (8 bytes) | a log [`Entry`] |
//! | `hard` | [`HardState`] |
//! | `conf` | [`ConfState`] |
//! | `snap` | the latest [`Snapshot`] (metadata and state-machine data) |
//! | `trunc` | index and term of the last entry removed by compaction or a snapshot |
//! | `applied` | the applied index |
//!
//! Every method that changes state writes one batch, so a crash leaves either the old or the new
//! state, never a mixture (the log never has a hole, a snapshot never comes without its
//! truncation record).
//!
//! A [`RaftStore`] is cheap to clone (the backend and the bounds are shared), so that a
//! state-machine snapshot is written and the log compacted on a thread of its own while the
//! node thread goes on appending: compaction moves the log's start forward in memory before it
//! deletes, and a read that finds entries gone behind it reports them compacted, as raft
//! expects, not missing.

pub mod memory;
pub mod sled;

use std::sync::{Arc, Mutex, RwLock};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

/// One change in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set a key.
    Put(Vec<u8>, Vec<u8>),
    /// Remove a key.
    Delete(Vec<u8>),
    /// Remove every key in `[start, end)`.
    DeleteRange(Vec<u8>, Vec<u8>),
}

/// What a [`Backend`] failed at.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend's own error (I/O, corruption).
    #[error("storage backend: {0}")]
    Backend(String),
    /// A stored value does not decode.
    #[error("stored value under {key:?} is corrupt: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// What did not decode.
        reason: String,
    },
    /// A caller asked for something the log cannot do (a gap, overwriting compacted entries).
    #[error("{0}")]
    Invalid(String),
}

impl From<StoreError> for raft::Error {
    fn from(e: StoreError) -> Self {
        raft::Error::Store(StorageError::Other(Box::new(e)))
    }
}

/// Key-value pairs in key order, as a range scan returns them.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// An ordered key-value store with atomic, durable batches.
pub trait Backend: Send + Sync + 'static {
    /// The value under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Applies `ops` atomically; when this returns `Ok`, they survive a crash of the process.
    fn write(&self, ops: Vec<Op>) -> Result<(), StoreError>;
    /// Every `(key, value)` with `start <= key < end`, in key order.
    fn scan(&self, start: &[u8], end: &[u8]) -> Result<Pairs, StoreError>;
    /// The last key in `[start, end)`, if any.
    fn last_key(&self, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
}

const HARD: &[u8] = b"hard";
const CONF: &[u8] = b"conf";
const SNAP: &[u8] = b"snap";
const TRUNC: &[u8] = b"trunc";
const APPLIED: &[u8] = b"applied";

fn entry_key(index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(b'e');
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn entry_index(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(1..9)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

fn encode(m: &impl protobuf::Message) -> Result<Vec<u8>, StoreError> {
    m.write_to_bytes()
        .map_err(|e| StoreError::Backend(format!("encode: {e}")))
}

fn decode<M: protobuf::Message>(key: &[u8], bytes: &[u8]) -> Result<M, StoreError> {
    M::parse_from_bytes(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

fn pair(index: u64, term: u64) -> Vec<u8> {
    let mut v = index.to_be_bytes().to_vec();
    v.extend_from_slice(&term.to_be_bytes());
    v
}

/// What is kept in memory: the log's bounds, so index queries need no disk read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bounds {
    /// Index and term of the last entry no longer in the log (0, 0 for a fresh log).
    trunc_index: u64,
    trunc_term: u64,
    /// Index of the last entry; `trunc_index` when the log is empty.
    last: u64,
}

/// Raft's durable state over a [`Backend`].
pub struct RaftStore<B: Backend> {
    backend: Arc<B>,
    bounds: Arc<RwLock<Bounds>>,
    /// Held while the log's start moves (compaction, snapshot install), so the two never
    /// interleave.
    start: Arc<Mutex<()>>,
}

impl<B: Backend> Clone for RaftStore<B> {
    fn clone(&self) -> Self {
        Self {
            backend: Arc::clone(&self.backend),
            bounds: Arc::clone(&self.bounds),
            start: Arc::clone(&self.start),
        }
    }
}

impl<B: Backend> std::fmt::Debug for RaftStore<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftStore")
            .field("bounds", &self.bounds())
            .finish()
    }
}

impl<B: Backend> RaftStore<B> {
    /// Opens the state kept in `backend` (empty for a new node).
    pub fn open(backend: B) -> Result<Self, StoreError> {
        let (trunc_index, trunc_term) = match backend.get(TRUNC)? {
            Some(v) if v.len() == 16 => (
                u64::from_be_bytes(v[..8].try_into().unwrap_or_default()),
                u64::from_be_bytes(v[8..].try_into().unwrap_or_default()),
            ),
            Some(_) => {
                return Err(StoreError::Corrupt {
                    key: "trunc".into(),
                    reason: "not 16 bytes".into(),
                })
            }
            None => (0, 0),
        };
        let last = backend
            .last_key(&entry_key(0), &entry_key(u64::MAX))?
            .and_then(|k| entry_index(&k))
            .unwrap_or(trunc_index)
            .max(trunc_index);
        Ok(Self {
            backend: Arc::new(backend),
            bounds: Arc::new(RwLock::new(Bounds {
                trunc_index,
                trunc_term,
                last,
            })),
            start: Arc::new(Mutex::new(())),
        })
    }

    fn bounds(&self) -> Bounds {
        *self.bounds.read().unwrap_or_else(|p| p.into_inner())
    }

    fn set_bounds(&self, b: Bounds) {
        *self.bounds.write().unwrap_or_else(|p| p.into_inner()) = b;
    }

    /// Changes the bounds under the lock (a compaction on another thread and the node
    /// thread's appends each change their own part).
    fn update_bounds(&self, f: impl FnOnce(&mut Bounds)) {
        f(&mut self.bounds.write().unwrap_or_else(|p| p.into_inner()));
    }

    /// Appends entries from a `Ready`, replacing any conflicting suffix of the log.
    pub fn append(&self, entries: &[Entry]) -> Result<(), StoreError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let mut b = self.bounds();
        if first.index <= b.trunc_index {
            return Err(StoreError::Invalid(format!(
                "append at {} overwrites compacted entries (compacted to {})",
                first.index, b.trunc_index
            )));
        }
        if first.index > b.last + 1 {
            return Err(StoreError::Invalid(format!(
                "append at {} leaves a gap after {}",
                first.index, b.last
            )));
        }
        let mut ops = vec![Op::DeleteRange(entry_key(first.index), entry_key(u64::MAX))];
        for e in entries {
            ops.push(Op::Put(entry_key(e.index), encode(e)?));
        }
        self.backend.write(ops)?;
        b.last = entries.last().map_or(b.last, |e| e.index);
        self.update_bounds(|now| now.last = b.last);
        Ok(())
    }

    /// Persists the hard state (term, vote, commit).
    pub fn set_hard_state(&self, hs: &HardState) -> Result<(), StoreError> {
        self.backend
            .write(vec![Op::Put(HARD.to_vec(), encode(hs)?)])
    }

    /// Persists a new commit index (the rest of the hard state unchanged).
    pub fn set_commit(&self, commit: u64) -> Result<(), StoreError> {
        let mut hs = self.hard_state()?;
        hs.commit = commit;
        self.set_hard_state(&hs)
    }

    /// Persists the configuration state.
    pub fn set_conf_state(&self, cs: &ConfState) -> Result<(), StoreError> {
        self.backend
            .write(vec![Op::Put(CONF.to_vec(), encode(cs)?)])
    }

    /// Persists the index up to which committed entries were applied to the state machine.
    pub fn set_applied(&self, index: u64) -> Result<(), StoreError> {
        self.backend.write(vec![Op::Put(
            APPLIED.to_vec(),
            index.to_be_bytes().to_vec(),
        )])
    }

    /// The applied index persisted last (0 if never).
    pub fn applied(&self) -> Result<u64, StoreError> {
        Ok(self
            .backend
            .get(APPLIED)?
            .and_then(|v| v.try_into().ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// Installs a snapshot received from the leader: the log is replaced by it.
    pub fn apply_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let _start = self.start.lock().unwrap_or_else(|p| p.into_inner());
        let meta = snapshot.get_metadata();
        let b = self.bounds();
        if meta.index < b.trunc_index {
            return Err(StoreError::Invalid(format!(
                "snapshot at {} is older than the log's start {}",
                meta.index, b.trunc_index
            )));
        }
        let mut hs = self.hard_state()?;
        hs.term = hs.term.max(meta.term);
        hs.commit = meta.index;
        self.backend.write(vec![
            Op::DeleteRange(entry_key(0), entry_key(u64::MAX)),
            Op::Put(SNAP.to_vec(), encode(snapshot)?),
            Op::Put(TRUNC.to_vec(), pair(meta.index, meta.term)),
            Op::Put(CONF.to_vec(), encode(meta.get_conf_state())?),
            Op::Put(HARD.to_vec(), encode(&hs)?),
            Op::Put(APPLIED.to_vec(), meta.index.to_be_bytes().to_vec()),
        ])?;
        self.set_bounds(Bounds {
            trunc_index: meta.index,
            trunc_term: meta.term,
            last: meta.index,
        });
        Ok(())
    }

    /// Records a snapshot of the state machine at `index` (which must be applied) and removes
    /// the log entries it covers.
    pub fn compact_with_snapshot(
        &self,
        index: u64,
        conf_state: &ConfState,
        data: Vec<u8>,
    ) -> Result<(), StoreError> {
        let _start = self.start.lock().unwrap_or_else(|p| p.into_inner());
        let b = self.bounds();
        if index <= b.trunc_index {
            return Ok(());
        }
        if index > b.last {
            return Err(StoreError::Invalid(format!(
                "snapshot at {index} is past the last entry {}",
                b.last
            )));
        }
        let term =
            raft::Storage::term(self, index).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut snapshot = Snapshot::default();
        snapshot.set_data(data.into());
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(conf_state.clone());
        let encoded = encode(&snapshot)?;
        // The start moves first: from now on readers are told these entries are compacted,
        // before they are gone.
        self.update_bounds(|now| {
            now.trunc_index = index;
            now.trunc_term = term;
        });
        self.backend.write(vec![
            Op::DeleteRange(entry_key(0), entry_key(index + 1)),
            Op::Put(SNAP.to_vec(), encoded),
            Op::Put(TRUNC.to_vec(), pair(index, term)),
        ])?;
        Ok(())
    }

    fn hard_state(&self) -> Result<HardState, StoreError> {
        match self.backend.get(HARD)? {
            Some(v) => decode(HARD, &v),
            None => Ok(HardState::default()),
        }
    }

    fn conf_state(&self) -> Result<ConfState, StoreError> {
        match self.backend.get(CONF)? {
            Some(v) => decode(CONF, &v),
            None => Ok(ConfState::default()),
        }
    }
}

impl<B: Backend> raft::Storage for RaftStore<B> {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state()?, self.conf_state()?))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let b = self.bounds();
        if low <= b.trunc_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > b.last + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut out = Vec::with_capacity((high - low) as usize);
        for (k, v) in self.backend.scan(&entry_key(low), &entry_key(high))? {
            out.push(decode::<Entry>(&k, &v)?);
        }
        if out.len() as u64 != high - low {
            if low <= self.bounds().trunc_index {
                // Compacted while we read.
                return Err(raft::Error::Store(StorageError::Compacted));
            }
            return Err(StoreError::Corrupt {
                key: format!("e[{low}..{high})"),
                reason: format!("{} entries found", out.len()),
            }
            .into());
        }
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let b = self.bounds();
        if idx == b.trunc_index {
            return Ok(b.trunc_term);
        }
        if idx < b.trunc_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > b.last {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let key = entry_key(idx);
        match self.backend.get(&key)? {
            Some(v) => Ok(decode::<Entry>(&key, &v)?.term),
            None => {
                let b = self.bounds();
                if idx == b.trunc_index {
                    Ok(b.trunc_term)
                } else if idx < b.trunc_index {
                    Err(raft::Error::Store(StorageError::Compacted))
                } else {
                    Err(raft::Error::Store(StorageError::Unavailable))
                }
            }
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.bounds().trunc_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.bounds().last)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let snap: Snapshot = match self.backend.get(SNAP)? {
            Some(v) => decode(SNAP, &v)?,
            None => Snapshot::default(),
        };
        let cs = snap.get_metadata().get_conf_state();
        let names_to = cs.voters.contains(&to) || cs.learners.contains(&to);
        if snap.get_metadata().index < request_index || (to != 0 && !names_to) {
            // The node must first take a newer snapshot of its state machine.
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(snap)
    }
}

#[cfg(test)]
mod tests;
