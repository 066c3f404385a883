//! The sled [`Backend`]: the only module that names sled.
//!
//! Durability: every batch is applied atomically and followed by `Db::flush`, which writes
//! sled's dirty buffers and calls `fsync` on its files. Once [`Backend::write`] returns, the
//! batch survives the process being killed (`kill -9`) and an operating-system crash on storage
//! that honours `fsync`. It does not force the device's own write cache to stable media beyond
//! what `fsync` does on that file system, so power-loss safety depends on the disk (use devices
//! with power-loss protection or write-through caches for control-plane volumes).

use std::path::Path;
use std::time::{Duration, Instant};

use super::{Backend, Op, Pairs, StoreError};

/// A sled database holding one node's Raft state.
#[derive(Debug, Clone)]
pub struct Sled {
    db: sled::Db,
}

fn err(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// How long opening waits for the database's lock. sled releases it on a background thread
/// after the last handle is dropped, so a database closed a moment ago can still be locked; one
/// that a running process holds stays locked for that process's lifetime, and opening it fails
/// after this wait.
const LOCK_WAIT: Duration = Duration::from_secs(10);

impl Sled {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let deadline = Instant::now() + LOCK_WAIT;
        let mut pause = Duration::from_millis(10);
        loop {
            match sled::open(dir) {
                Ok(db) => return Ok(Self { db }),
                // sled reports the lock as an `Other` I/O error: its text is all there is.
                Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                    if Instant::now() >= deadline {
                        return Err(StoreError::Backend(format!(
                            "{}: in use: still locked after {LOCK_WAIT:?} (is another control \
                             node running on this data directory?): {e}",
                            dir.display()
                        )));
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Err(e) => return Err(StoreError::Backend(format!("{}: {e}", dir.display()))),
            }
        }
    }
}

impl Backend for Sled {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key).map_err(err)?.map(|v| v.to_vec()))
    }

    fn write(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                Op::Put(k, v) => batch.insert(k, v),
                Op::Delete(k) => batch.remove(k),
                Op::DeleteRange(s, e) => {
                    // Range deletes become removes of the keys present, in the same batch.
                    for kv in self.db.range(s..e) {
                        let (k, _) = kv.map_err(err)?;
                        batch.remove(k);
                    }
                }
            }
        }
        self.db.apply_batch(batch).map_err(err)?;
        self.db.flush().map_err(err)?;
        Ok(())
    }

    fn scan(&self, start: &[u8], end: &[u8]) -> Result<Pairs, StoreError> {
        self.db
            .range(start..end)
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(err))
            .collect()
    }

    fn last_key(&self, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.db.range(start..end).next_back() {
            Some(kv) => Ok(Some(kv.map_err(err)?.0.to_vec())),
            None => Ok(None),
        }
    }
}
