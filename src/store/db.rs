//! The state database, `state/state.db`: one SQLite file (WAL mode) holding
//! the id cache, the inode cache, the last agreement and the folders'
//! cursors, changed row by row inside transactions. `docs/state.md`
//! documents the tables; `sqlite3 state.db .schema` shows them.
//!
//! Durability: `synchronous=NORMAL`. In WAL mode a commit is in the
//! operating system's hands when it returns, so a killed daemon (kill -9,
//! OOM, panic) loses nothing committed. A power loss may roll back the last
//! commits; that is safe because every commit leaves a consistent older
//! state, the blobs and maildir files it names are fsynced before it, and
//! the three-way merge converges from an older agreement (at worst a few
//! messages are downloaded again). The one exception is the import of a
//! v0.1 state directory, whose JSON files are removed after it: that commit
//! runs with `synchronous=FULL` ([`Db::commit_durably`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::StoreError;
use crate::types::{ContentHash, StorageKind};

/// The database's file name in the state directory.
pub const FILE: &str = "state.db";

/// Schema migrations in order: running `MIGRATIONS[i]` takes
/// `PRAGMA user_version` from `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE meta (
         key   TEXT PRIMARY KEY,
         value TEXT NOT NULL
     );
     CREATE TABLE ids (
         kind       TEXT NOT NULL,
         storage_id TEXT NOT NULL,
         email_id   TEXT,
         hash       BLOB NOT NULL
     );
     CREATE INDEX ids_storage_id ON ids (storage_id);
     CREATE INDEX ids_hash ON ids (hash);
     CREATE TABLE inodes (
         dev      INTEGER NOT NULL,
         ino      INTEGER NOT NULL,
         size     INTEGER NOT NULL,
         mtime_ns INTEGER NOT NULL,
         ctime_ns INTEGER NOT NULL,
         hash     BLOB NOT NULL,
         PRIMARY KEY (dev, ino)
     ) WITHOUT ROWID;
     CREATE INDEX inodes_hash ON inodes (hash);
     CREATE TABLE maildirs (
         id           INTEGER PRIMARY KEY,
         path         TEXT NOT NULL UNIQUE,
         agreed_count INTEGER NOT NULL DEFAULT 0
     );
     CREATE TABLE folders (
         id     INTEGER PRIMARY KEY,
         key    TEXT NOT NULL UNIQUE,
         cursor TEXT
     );
     CREATE TABLE agreement (
         hash    BLOB PRIMARY KEY,
         flags   INTEGER NOT NULL,
         maildir INTEGER NOT NULL,
         local   INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE agreement_cloud (
         hash   BLOB NOT NULL,
         folder INTEGER NOT NULL,
         id     TEXT NOT NULL,
         flags  INTEGER NOT NULL,
         PRIMARY KEY (hash, folder, id)
     ) WITHOUT ROWID;",
    // 2: a folder cursor's per-message records as rows, so a change
    // rewrites its messages' rows, not the whole listing.
    "CREATE TABLE cursor_records (
         folder INTEGER NOT NULL,
         id     TEXT NOT NULL,
         record TEXT NOT NULL,
         PRIMARY KEY (folder, id)
     ) WITHOUT ROWID;",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// An open state database.
#[derive(Debug)]
pub struct Db {
    conn: Connection,
    path: PathBuf,
}

impl Db {
    /// Opens (creating) `state_dir/state.db` and brings its schema up to
    /// date. A file that is not a database, or is damaged, is moved aside
    /// as `state.db.damaged-<unix time>` (logged) and a new one is started:
    /// the message store and maildirs still hold every message. Blocking.
    pub fn open(state_dir: &Path) -> Result<Db, StoreError> {
        let path = state_dir.join(FILE);
        match Db::try_open(&path) {
            Ok(db) => Ok(db),
            Err(StoreError::Db { source, .. }) if is_damage(&source) => {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let aside = state_dir.join(format!("{FILE}.damaged-{secs}"));
                tracing::error!(
                    path = %path.display(), error = %source,
                    "the state database is damaged; moving it to {} and starting a new one \
                     (no message is lost; flags changed on both sides since the last sync \
                     are decided by the cloud)",
                    aside.display()
                );
                std::fs::rename(&path, &aside).map_err(|source| StoreError::Rename {
                    from: path.clone(),
                    to: aside.clone(),
                    source,
                })?;
                for ext in ["-wal", "-shm"] {
                    let side = state_dir.join(format!("{FILE}{ext}"));
                    let _ = std::fs::rename(
                        &side,
                        state_dir.join(format!("{FILE}.damaged-{secs}{ext}")),
                    );
                }
                Db::try_open(&path)
            }
            Err(e) => Err(e),
        }
    }

    fn try_open(path: &Path) -> Result<Db, StoreError> {
        let err = |source| StoreError::Db {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        let mut db = Db {
            conn,
            path: path.to_path_buf(),
        };
        db.conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        // WAL: readers (the status command, sqlite3) never block the daemon.
        let mode: String = db
            .conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "the state database is not in WAL mode");
        }
        db.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        // Closing does not checkpoint: a stop must not wait for copying the
        // log into the database and an fsync (the next open reads the log;
        // commits checkpoint as the log grows).
        db.conn
            .set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                true,
            )
            .map_err(err)?;
        db.migrate()?;
        // The state directory is 0700; the files inside are ours alone too.
        for ext in ["", "-wal", "-shm"] {
            let p = PathBuf::from(format!("{}{ext}", path.display()));
            let _ = std::fs::set_permissions(
                &p,
                std::os::unix::fs::PermissionsExt::from_mode(crate::fsutil::PRIVATE_FILE_MODE),
            );
        }
        Ok(db)
    }

    /// Runs the migrations this file lacks, each in its own transaction.
    fn migrate(&mut self) -> Result<(), StoreError> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::DbVersion {
                path: self.path.clone(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            self.commit(|tx| {
                tx.execute_batch(sql)?;
                tx.pragma_update(None, "user_version", i as i64 + 1)
            })?;
            tracing::info!(path = %self.path.display(), version = i + 1, "state database schema updated");
        }
        Ok(())
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection, for reads.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Maps a SQLite error to a store error naming this file.
    pub fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            source,
        }
    }

    /// Runs `f` in one write transaction, committed if `f` succeeds and
    /// rolled back otherwise. Blocking.
    pub fn commit<T>(
        &mut self,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Db {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let out = f(&tx).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(out)
    }

    /// Like [`Db::commit`], with `synchronous=FULL` for this commit: it
    /// survives a power loss once it returns. Blocking.
    pub fn commit_durably<T>(
        &mut self,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        self.conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(|e| self.err(e))?;
        let out = self.commit(f);
        let reset = self.conn.pragma_update(None, "synchronous", "NORMAL");
        let out = out?;
        reset.map_err(|e| self.err(e))?;
        Ok(out)
    }

    /// The value of `key` in the `meta` table.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }
}

/// Sets `key` in the `meta` table inside `tx`.
pub fn set_meta(tx: &Transaction<'_>, key: &str, value: &str) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [key, value],
    )
    .map(|_| ())
}

/// True for errors that mean the file itself is unusable.
fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

/// A content hash read from a `hash` column.
pub fn hash_from(bytes: Vec<u8>) -> rusqlite::Result<ContentHash> {
    let arr: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
        rusqlite::Error::FromSqlConversionFailure(
            b.len(),
            rusqlite::types::Type::Blob,
            format!("a content hash is 32 bytes, found {}", b.len()).into(),
        )
    })?;
    Ok(ContentHash(arr))
}

/// A storage kind read from a `kind` column.
pub fn kind_from(s: &str) -> rusqlite::Result<StorageKind> {
    match s {
        "office365" => Ok(StorageKind::Office365),
        "gmail" => Ok(StorageKind::Gmail),
        "maildir" => Ok(StorageKind::Maildir),
        other => Err(rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("unknown storage kind {other:?}").into(),
        )),
    }
}
