//! The sled [`Backend`]: the only module that names sled.
//!
//! Durability: every batch is applied atomically and followed by `Db::flush`, which writes
//! sled's dirty buffers and calls `fsync` on its files. Once [`Backend::write`] returns, the
//! batch survives the process being killed (`kill -9`) and an operating-system crash on storage
//! that honours `fsync`. It does not force the device's own write cache to stable media beyond
//! what `fsync` does on that file system, so power-loss safety depends on the disk (use devices
//! with power-loss protection or write-through caches for control-plane volumes).

use std::path::Path;

use super::{Backend, Op, Pairs, StoreError};

/// A sled database holding one node's Raft state.
#[derive(Debug, Clone)]
pub struct Sled {
    db: sled::Db,
}

fn err(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl Sled {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db =
            sled::open(dir).map_err(|e| StoreError::Backend(format!("{}: {e}", dir.display())))?;
        Ok(Self { db })
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
