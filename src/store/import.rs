//! The one-time import of a v0.1 state directory: its checked JSON files
//! (`ids.json`, `inodes.json`, `sync.json`, each with a `.prev`) are read,
//! written into the state database in one durable transaction that also
//! records the import in `meta`, and only then removed. A crash before the
//! commit leaves the files in place for the next start; a crash after it
//! leaves them to be removed without importing again.

use std::path::Path;

use rusqlite::Transaction;

use super::db::{Db, set_meta};
use super::statefile::StateFile;
use super::{IdOp, InodeOp, StoreError, write_ops};
use crate::fsutil::{self, InodeKey};
use crate::types::{Cid, ContentHash, StorageKind};

/// v0.1's `ids.json` record: `[kind, storage_id, email_id, hash]`.
type IdRecord = (StorageKind, String, Option<String>, ContentHash);

/// v0.1's `inodes.json` record: `[dev, ino, size, mtime_ns, ctime_ns, hash]`.
type InodeRecord = (u64, u64, u64, i64, i64, ContentHash);

/// Imports v0.1's id and inode caches, if present. Blocking.
pub(super) fn caches(db: &mut Db, state_dir: &Path) -> Result<(), StoreError> {
    let ids = StateFile::new(state_dir, "ids.json", "ids");
    let inodes = StateFile::new(state_dir, "inodes.json", "inodes");
    once(db, "caches", &[&ids, &inodes], |tx| {
        let id_ops: Vec<IdOp> = ids
            .load::<Vec<IdRecord>>()
            .into_iter()
            .map(|(kind, storage_id, email_id, hash)| {
                IdOp::Put(
                    Cid {
                        kind,
                        storage_id,
                        email_id,
                    },
                    hash,
                )
            })
            .collect();
        let inode_ops: Vec<InodeOp> = inodes
            .load::<Vec<InodeRecord>>()
            .into_iter()
            .map(|(dev, ino, size, mtime_ns, ctime_ns, hash)| {
                InodeOp::Put(
                    InodeKey {
                        dev,
                        ino,
                        size,
                        mtime_ns,
                        ctime_ns,
                    },
                    hash,
                )
            })
            .collect();
        write_ops(tx, &id_ops, &inode_ops)?;
        Ok(id_ops.len() + inode_ops.len())
    })
}

/// Imports `files` with `write` (returning the rows written) unless the
/// import called `what` was committed before, then removes the files.
/// Nothing happens when none of them exists. Blocking.
pub(crate) fn once(
    db: &mut Db,
    what: &str,
    files: &[&StateFile],
    write: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<usize>,
) -> Result<(), StoreError> {
    let present = files
        .iter()
        .any(|f| f.path().exists() || f.prev_path().exists());
    if !present {
        return Ok(());
    }
    let key = format!("imported v0.1 {what}");
    if db.meta(&key)?.is_none() {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let rows = db.commit_durably(|tx| {
            let rows = write(tx)?;
            set_meta(tx, &key, &secs.to_string())?;
            Ok(rows)
        })?;
        tracing::info!(
            path = %db.path().display(), rows,
            "imported the v0.1 {what} into the state database"
        );
    }
    for f in files {
        for p in [f.path(), f.prev_path()] {
            fsutil::remove_if_present(p).map_err(|source| StoreError::Remove {
                path: p.to_path_buf(),
                source,
            })?;
        }
    }
    Ok(())
}
