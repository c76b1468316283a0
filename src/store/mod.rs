//! The content-addressed message store under `message_db_dir` (default
//! `~/mail/.cms/`): one hard link per content hash in `blobs/`, and the
//! state database `state/state.db` holding, among the rest, the id cache
//! (cloud id → hash) and the inode cache (file version → hash).
//!
//! The directory is shared with the Python program, which owns `hashes/`
//! and the `ch-*` files; this module never creates, changes or deletes
//! those. Our own names are `blobs/`, `state/` and `tmp/`.
//!
//! [`Store`] is `Send + Sync` and its methods take `&self`; the heavy ones
//! (hashing, linking, fsync, saving) block, so async callers share an
//! `Arc<Store>` and run them in `spawn_blocking`. The inode cache lives in
//! memory; the id cache lives in the database, with the ids recorded since
//! the last commit in memory, and the whole table in memory only while a
//! large batch of listed ids is being resolved (from start-up to the end of
//! the first cycle, or one cycle taking in a full listing). Every change is
//! queued and written as rows by the next [`Store::commit`], so a save costs
//! what changed, not the cache's size.
//! The map lock is a `std::sync::Mutex` held only for map updates, never
//! across file IO or an `.await`; the database has its own.

pub mod db;
mod hash;
mod ids;
pub(crate) mod import;
mod inodes;
pub(crate) mod statefile;

pub use hash::{ContentHasher, hash_bytes, hash_file, hash_reader};

use foldhash::{HashSet, HashSetExt};
use rustix::fs::{FlockOperation, flock};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::fsutil::{self, FsError, InodeKey};
use crate::lock::lock;
use crate::types::{Cid, ContentHash, StorageKind};
pub use db::Db;
use ids::IdCache;
use inodes::InodeCache;

/// A store operation that failed, with the path it failed on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Creating a directory or writing a state file failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// Another process (another daemon) holds the store's lock.
    #[error("message store {path} is in use by another process")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// Reading a file or directory failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Creating or writing a file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A hard link failed.
    #[error("cannot link {from} to {to}: {source}")]
    Link {
        /// The existing file.
        from: PathBuf,
        /// The new name.
        to: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A rename failed.
    #[error("cannot rename {from} to {to}: {source}")]
    Rename {
        /// The current name.
        from: PathBuf,
        /// The new name.
        to: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Removing a file failed.
    #[error("cannot remove {path}: {source}")]
    Remove {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The blob for a hash is not in the store.
    #[error("blob {path} is missing from the store")]
    MissingBlob {
        /// Where the blob should be.
        path: PathBuf,
    },
    /// The state database failed.
    #[error("state database {path}: {source}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        source: rusqlite::Error,
    },
    /// The state database was written by a newer version of the program.
    #[error(
        "state database {path} has schema version {found}; this program knows up to \
         {supported}: run the newer cloud-mdir-sync that wrote it"
    )]
    DbVersion {
        /// The database file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
        /// The newest this build knows.
        supported: i64,
    },
}

/// A change to the id cache, queued for the next commit.
#[derive(Debug)]
enum IdOp {
    Put(Cid, ContentHash),
    DropHash(ContentHash),
}

/// A change to the inode cache, queued for the next commit.
#[derive(Debug)]
enum InodeOp {
    Put(InodeKey, ContentHash),
    DropHash(ContentHash),
}

/// The in-memory part of the store, behind [`Store`]'s mutex.
#[derive(Debug, Default)]
struct Inner {
    /// Hashes with a file in `blobs/`, while a full cycle asks about every
    /// one ([`Store::take_warm`] drops it); else `blobs/` itself answers
    /// (one `lstat` per question).
    blobs: Option<HashSet<ContentHash>>,
    /// Ids recorded since the last commit (their rows are queued).
    new_ids: IdCache,
    /// The whole id table, while a large batch is resolved
    /// ([`Store::cool_ids`] drops it); else lookups query the database.
    warm_ids: Option<IdCache>,
    /// Inode versions recorded since the last commit (their rows are
    /// queued); they take precedence over the table.
    new_inodes: InodeCache,
    /// The whole inode table, while a full scan looks up every file
    /// ([`Store::cool_inodes`] drops it); else lookups query the database.
    warm_inodes: Option<InodeCache>,
    /// Id cache changes not yet committed, in order.
    id_ops: Vec<IdOp>,
    /// Inode cache changes not yet committed, in order.
    inode_ops: Vec<InodeOp>,
    /// Blobs were linked since the last commit (`blobs/` needs an fsync).
    new_blobs: bool,
    /// Downloads committed but not yet seen by a sync cycle: kept by
    /// [`Store::retain`] whatever its `live` set says.
    pinned: HashSet<ContentHash>,
}

/// The id and inode tables as they were held in memory, taken out of the
/// store by [`Store::take_warm`].
#[derive(Debug, Default)]
pub struct Warm {
    ids: Option<IdCache>,
    inodes: Option<InodeCache>,
    blobs: Option<HashSet<ContentHash>>,
}

impl Warm {
    /// True when any table was in memory.
    pub fn is_some(&self) -> bool {
        self.ids.is_some() || self.inodes.is_some() || self.blobs.is_some()
    }
}

/// The content-addressed message store; see the module documentation.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    blobs_dir: PathBuf,
    tmp_dir: PathBuf,
    inner: Mutex<Inner>,
    db: Mutex<Db>,
    /// Serialises adding blobs with removing them ([`Store::retain`]).
    links: Mutex<()>,
    hashes_performed: AtomicU64,
    tmp_counter: AtomicU64,
    /// Holds the exclusive `flock` on `state/lock` for the store's lifetime.
    _lock: File,
}

impl Store {
    /// Opens (creating as needed, mode 0700) the store in `dir`, takes its
    /// lock, clears leftovers from `tmp/`, opens the state database
    /// (importing a v0.1 state directory's `ids.json` and `inodes.json` on
    /// first start) and loads the blob list and both caches. Blobs are never
    /// deleted here. Blocking.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let blobs_dir = dir.join("blobs");
        let state_dir = dir.join("state");
        let tmp_dir = dir.join("tmp");
        for d in [dir, &blobs_dir, &state_dir, &tmp_dir] {
            fsutil::create_private_dir(d)?;
        }
        let lock_file = take_lock(&state_dir.join("lock"))?;
        clear_dir(&tmp_dir)?;

        // The blob list (directory reads) while the caches load (CPU).
        let (blobs, loaded) = std::thread::scope(|s| {
            let blobs = s.spawn(|| list_blobs(&blobs_dir));
            let loaded = Db::open(&state_dir).and_then(|mut db| {
                import::caches(&mut db, &state_dir)?;
                let caches = load_caches(&db)?;
                Ok((db, caches))
            });
            let blobs = blobs
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            (blobs, loaded)
        });
        let blobs = blobs?;
        let (db, (ids, inodes)) = loaded?;
        tracing::debug!(
            dir = %dir.display(), blobs = blobs.len(), ids = ids.len(), inodes = inodes.len(),
            "message store opened"
        );
        Ok(Store {
            dir: dir.to_path_buf(),
            blobs_dir,
            tmp_dir,
            inner: Mutex::new(Inner {
                // The first cycle looks up every file's content.
                blobs: Some(blobs),
                new_ids: IdCache::default(),
                // The first cycle resolves every listed id.
                warm_ids: Some(ids),
                new_inodes: InodeCache::default(),
                // The first cycle scans every maildir.
                warm_inodes: Some(inodes),
                id_ops: Vec::new(),
                inode_ops: Vec::new(),
                new_blobs: false,
                pinned: HashSet::new(),
            }),
            db: Mutex::new(db),
            links: Mutex::new(()),
            hashes_performed: AtomicU64::new(0),
            tmp_counter: AtomicU64::new(0),
            _lock: lock_file,
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the blob for `hash` lives (whether or not it exists).
    pub fn blob_path(&self, hash: &ContentHash) -> PathBuf {
        self.blobs_dir.join(hash.to_hex())
    }

    /// True when the store holds the content for `hash`: from the blob
    /// list while it is in memory, else from `blobs/`. Blocking.
    pub fn have(&self, hash: &ContentHash) -> bool {
        if let Some(blobs) = &lock(&self.inner).blobs {
            return blobs.contains(hash);
        }
        fs::symlink_metadata(self.blob_path(hash)).is_ok()
    }

    /// Number of blobs in the store. Blocking.
    pub fn blob_count(&self) -> usize {
        if let Some(blobs) = &lock(&self.inner).blobs {
            return blobs.len();
        }
        list_blobs(&self.blobs_dir).map_or(0, |b| b.len())
    }

    /// Reads the blob list into memory (once) for a cycle that asks about
    /// every message; a failure leaves the answers to `blobs/`. Blocking.
    pub fn warm_blobs(&self) {
        // No blob is linked or removed while the directory is read.
        let _links = lock(&self.links);
        if lock(&self.inner).blobs.is_some() {
            return;
        }
        match list_blobs(&self.blobs_dir) {
            Ok(blobs) => lock(&self.inner).blobs = Some(blobs),
            Err(e) => tracing::debug!("blob list stays on disk: {e}"),
        }
    }

    /// How many files this store has actually read and hashed (inode cache
    /// misses) since it was opened.
    pub fn hashes_performed(&self) -> u64 {
        self.hashes_performed.load(Ordering::Relaxed)
    }

    /// A new empty temporary file in the store's `tmp/` (same filesystem as
    /// the blobs), to be filled and handed to [`Store::adopt_download`].
    /// Removed on drop if not adopted.
    pub fn temp_file(&self) -> Result<TempBlob, StoreError> {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp_dir.join(format!("{}.{n}", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(fsutil::PRIVATE_FILE_MODE)
            .open(&path)
            .map_err(|source| StoreError::Write {
                path: path.clone(),
                source,
            })?;
        Ok(TempBlob {
            file,
            path,
            hasher: ContentHasher::new(),
        })
    }

    /// Adopts a temporary file filled through its `Write` impl, using the
    /// hash computed while writing (no re-read): fsyncs it and links it to
    /// its hash name. Blocking.
    /// Tests only.
    #[cfg(test)]
    pub fn insert_temp(&self, tmp: TempBlob) -> Result<ContentHash, StoreError> {
        let hash = tmp.finish()?;
        self.adopt_temp(&tmp.path, hash)?;
        Ok(hash)
    }

    /// Makes a finished download durable at once: adopts `tmp` (see
    /// [`Store::insert_temp`]), records `cid -> hash` and commits, so a
    /// crash after this returns never downloads the message again. The blob
    /// is pinned (kept by [`Store::retain`]) until [`Store::release`].
    /// Blocking.
    pub fn adopt_download(&self, tmp: TempBlob, cid: Cid) -> Result<ContentHash, StoreError> {
        let hash = tmp.finish()?;
        // Pinned before the blob exists, so no retain can take it between.
        lock(&self.inner).pinned.insert(hash);
        if let Err(e) = self.adopt_temp(&tmp.path, hash) {
            lock(&self.inner).pinned.remove(&hash);
            return Err(e);
        }
        lock(&self.inner).put_id(cid, hash);
        self.save()?;
        Ok(hash)
    }

    /// Unpins downloads a sync cycle has seen (they are in its `live` set
    /// from now on).
    pub fn release(&self, hashes: &[ContentHash]) {
        let mut inner = lock(&self.inner);
        for h in hashes {
            inner.pinned.remove(h);
        }
    }

    /// Adopts a fully written temporary file (normally from
    /// [`Store::temp_file`]) by hashing it, fsyncing it and linking it to
    /// its hash name; the temporary name is removed in every case, and a
    /// hash already present just drops the temporary. Blocking.
    /// Tests only.
    #[cfg(test)]
    pub fn insert_file(&self, tmp_path: &Path) -> Result<ContentHash, StoreError> {
        let file = File::open(tmp_path).map_err(|source| StoreError::Read {
            path: tmp_path.to_path_buf(),
            source,
        })?;
        file.sync_all().map_err(|source| StoreError::Write {
            path: tmp_path.to_path_buf(),
            source,
        })?;
        let hash = hash_reader(&file).map_err(|source| StoreError::Read {
            path: tmp_path.to_path_buf(),
            source,
        })?;
        self.hashes_performed.fetch_add(1, Ordering::Relaxed);
        self.adopt_temp(tmp_path, hash)?;
        Ok(hash)
    }

    /// Stores `bytes` as a blob (through a temporary file). Blocking.
    /// Tests only.
    #[cfg(test)]
    pub fn insert_bytes(&self, bytes: &[u8]) -> Result<ContentHash, StoreError> {
        let mut tmp = self.temp_file()?;
        tmp.write_all(bytes).map_err(|source| StoreError::Write {
            path: tmp.path.clone(),
            source,
        })?;
        self.insert_temp(tmp)
    }

    /// Links the complete, synced file `tmp_path` to the blob name of
    /// `hash` (unless present), removes `tmp_path` and records the blob.
    fn adopt_temp(&self, tmp_path: &Path, hash: ContentHash) -> Result<(), StoreError> {
        // Not while a retain removes blobs: an "already there" answer must
        // not meet a blob about to go.
        let _links = lock(&self.links);
        let blob = self.blob_path(&hash);
        let linked = match fs::hard_link(tmp_path, &blob) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(source) => Err(StoreError::Link {
                from: tmp_path.to_path_buf(),
                to: blob.clone(),
                source,
            }),
        };
        if let Err(e) = fs::remove_file(tmp_path) {
            tracing::warn!(path = %tmp_path.display(), error = %e, "cannot remove store temp file");
        }
        let linked = linked?;
        // Unlinking the temp name changed the inode's ctime: stat only now.
        let key = if linked {
            fs::metadata(&blob)
                .ok()
                .map(|m| InodeKey::from_metadata(&m))
        } else {
            None
        };
        let mut inner = lock(&self.inner);
        inner.add_blob(hash);
        inner.new_blobs |= linked;
        if let Some(key) = key {
            inner.put_inode(key, hash);
        }
        Ok(())
    }

    /// Hard-links the blob of `hash` to `dest` (a maildir `tmp/` name, on
    /// the same filesystem). Linking changes the inode's ctime, so record
    /// the delivered file's key with [`Store::record_inode`]. Blocking.
    /// Tests only.
    #[cfg(test)]
    pub fn link_to(&self, hash: &ContentHash, dest: &Path) -> Result<(), StoreError> {
        let blob = self.blob_path(hash);
        fs::hard_link(&blob, dest).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound && fs::symlink_metadata(&blob).is_err() {
                lock(&self.inner).forget_blob(hash);
                StoreError::MissingBlob { path: blob.clone() }
            } else {
                StoreError::Link {
                    from: blob.clone(),
                    to: dest.to_path_buf(),
                    source,
                }
            }
        })
    }

    /// Re-creates a missing blob by linking `path` (a maildir file whose
    /// content is known to hash to `hash`, e.g. from the inode cache) to
    /// it. Returns false when the blob was already there. The caller vouches
    /// for the hash; nothing is re-read. Blocking.
    pub fn adopt_from(&self, path: &Path, hash: &ContentHash) -> Result<bool, StoreError> {
        if self.have(hash) {
            return Ok(false);
        }
        let _links = lock(&self.links);
        let blob = self.blob_path(hash);
        let linked = match fs::hard_link(path, &blob) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(source) => {
                return Err(StoreError::Link {
                    from: path.to_path_buf(),
                    to: blob,
                    source,
                });
            }
        };
        let mut inner = lock(&self.inner);
        inner.add_blob(*hash);
        inner.new_blobs |= linked;
        Ok(linked)
    }

    /// The content hash of the file at `path` whose scanned key is `key`:
    /// from the inode cache when `key` is known, else by reading the file
    /// (counted in [`Store::hashes_performed`]) and caching the result if
    /// the file did not change while being read. Blocking.
    pub fn hash_for_file(&self, path: &Path, key: &InodeKey) -> Result<ContentHash, StoreError> {
        if let Some(hash) = self.cached_hash(key) {
            return Ok(hash);
        }
        let read_err = |source| StoreError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(read_err)?;
        let before = InodeKey::from_metadata(&file.metadata().map_err(read_err)?);
        let hash = hash_reader(&file).map_err(read_err)?;
        self.hashes_performed.fetch_add(1, Ordering::Relaxed);
        let after = InodeKey::from_metadata(&file.metadata().map_err(read_err)?);
        if before == after {
            self.record_inode(after, hash);
        } else {
            tracing::debug!(path = %path.display(), "file changed while hashing; not cached");
        }
        Ok(hash)
    }

    /// The cached hash of the file version `key`, without reading the
    /// file: from the versions recorded since the last commit, else the
    /// table (in memory while warm). Blocking.
    fn cached_hash(&self, key: &InodeKey) -> Option<ContentHash> {
        {
            let inner = lock(&self.inner);
            if let Some(answer) = inner.inode_in_memory(key) {
                return answer;
            }
        }
        // Both locks, database first (the commit order): a commit cannot
        // move a recorded version from memory into the table between the
        // reads.
        let db = lock(&self.db);
        let row = db_inode(&db, key).unwrap_or_else(|e| {
            tracing::debug!("inode cache lookup: {e}");
            None
        });
        let inner = lock(&self.inner);
        inner.inode_in_memory(key).unwrap_or(row)
    }

    /// Loads the whole inode table into memory (once) for a full scan; a
    /// failure leaves lookups on the database. Blocking.
    pub fn warm_inodes(&self) {
        let db = lock(&self.db);
        if lock(&self.inner).warm_inodes.is_some() {
            return;
        }
        match load_inodes(&db) {
            Ok(inodes) => lock(&self.inner).warm_inodes = Some(inodes),
            Err(e) => tracing::debug!("inode cache stays in the database: {e}"),
        }
    }

    /// Drops the in-memory copy of the inode table, if any; true when
    /// there was one.
    pub fn cool_inodes(&self) -> bool {
        let warm = lock(&self.inner).warm_inodes.take();
        warm.is_some()
    }

    /// Records that the file version `key` has content `hash` (after a
    /// delivery or rename changed a known file's ctime).
    pub fn record_inode(&self, key: InodeKey, hash: ContentHash) {
        lock(&self.inner).put_inode(key, hash);
    }

    /// The hash cached for exactly this cloud id.
    pub fn lookup_id(&self, cid: &Cid) -> Option<ContentHash> {
        let item = [(cid.storage_id.as_str(), cid.email_id.as_deref())];
        self.lookup(cid.kind, &item, Lookup::Exact)[0]
    }

    /// The hash cached for `(kind, storage_id)` whatever the Message-ID,
    /// when every cached id with that storage id has the same hash.
    pub fn lookup_storage_id(&self, kind: StorageKind, storage_id: &str) -> Option<ContentHash> {
        self.lookup(kind, &[(storage_id, None)], Lookup::Loose)[0]
    }

    /// For each listed `(storage id, Message-ID)` of `kind`, the content the
    /// store holds for it: the id cache's hash for exactly that id, else for
    /// its storage id alone ([`Store::lookup_storage_id`]), and only while
    /// the blob is there. A batch of [`WARM_BATCH`] or more loads the whole
    /// id table into memory until [`Store::cool_ids`].
    pub fn resolve_ids<'a>(
        &self,
        kind: StorageKind,
        ids: impl Iterator<Item = (&'a str, Option<&'a str>)>,
    ) -> Vec<Option<ContentHash>> {
        let items: Vec<(&str, Option<&str>)> = ids.collect();
        if items.len() >= WARM_BATCH {
            self.warm_blobs();
            self.warm_ids();
        }
        self.lookup(kind, &items, Lookup::Stored)
    }

    /// Loads the whole id table into memory (once) for a large batch of
    /// lookups; a failure leaves lookups on the database.
    fn warm_ids(&self) {
        // The database lock held throughout: no commit moves recorded ids
        // into the table between the load and its installation.
        let db = lock(&self.db);
        if lock(&self.inner).warm_ids.is_some() {
            return;
        }
        match load_ids(&db) {
            Ok(ids) => lock(&self.inner).warm_ids = Some(ids),
            Err(e) => tracing::debug!("id cache stays in the database: {e}"),
        }
    }

    /// Drops the in-memory copy of the id table, if any; true when there
    /// was one (the caller may hand the freed pages back).
    pub fn cool_ids(&self) -> bool {
        let warm = lock(&self.inner).warm_ids.take();
        warm.is_some()
    }

    /// Takes the in-memory copies of the id and inode tables and of the
    /// blob list out of the store (lookups go to the database and to
    /// `blobs/` from now on), for the caller to free where it costs no one
    /// a wait.
    pub fn take_warm(&self) -> Warm {
        let mut inner = lock(&self.inner);
        let warm = Warm {
            ids: inner.warm_ids.take(),
            inodes: inner.warm_inodes.take(),
            blobs: inner.blobs.take(),
        };
        drop(inner);
        if let Some(w) = &warm.ids {
            tracing::debug!(ids = w.len(), "id table no longer in memory");
        }
        if let Some(w) = &warm.inodes {
            tracing::debug!(inodes = w.len(), "inode table no longer in memory");
        }
        warm
    }

    fn lookup(
        &self,
        kind: StorageKind,
        items: &[(&str, Option<&str>)],
        how: Lookup,
    ) -> Vec<Option<ContentHash>> {
        let mut found = self.lookup_ids(kind, items, how);
        if how == Lookup::Stored {
            for f in &mut found {
                *f = f.filter(|h| self.have(h));
            }
        }
        found
    }

    /// What the id cache says of `items` (for [`Lookup::Stored`], before
    /// the blob check).
    fn lookup_ids(
        &self,
        kind: StorageKind,
        items: &[(&str, Option<&str>)],
        how: Lookup,
    ) -> Vec<Option<ContentHash>> {
        {
            let inner = lock(&self.inner);
            if let Some(warm) = &inner.warm_ids {
                return items
                    .iter()
                    .map(|&(sid, email)| inner.decide(warm.of(kind, sid), kind, sid, email, how))
                    .collect();
            }
        }
        // Both locks, database first (the commit order): a commit cannot
        // move recorded ids from memory into the table between the reads.
        let db = lock(&self.db);
        let rows: Vec<Vec<(Option<String>, ContentHash)>> = items
            .iter()
            .map(|(sid, _)| {
                db_ids_of(&db, kind, sid).unwrap_or_else(|e| {
                    tracing::debug!("id cache lookup: {e}");
                    Vec::new()
                })
            })
            .collect();
        let inner = lock(&self.inner);
        items
            .iter()
            .zip(&rows)
            .map(|(&(sid, email), r)| {
                let stored = r.iter().map(|(e, h)| (e.as_deref(), *h));
                inner.decide(stored, kind, sid, email, how)
            })
            .collect()
    }

    /// Records that cloud id `cid` has content `hash`.
    pub fn record_id(&self, cid: Cid, hash: ContentHash) {
        lock(&self.inner).put_id(cid, hash);
    }

    /// Every content hash the id cache maps some cloud id to: content known
    /// to have come from a cloud folder.
    pub fn known_cloud_hashes(&self) -> std::collections::BTreeSet<ContentHash> {
        let db = lock(&self.db);
        let inner = lock(&self.inner);
        let mut known: std::collections::BTreeSet<ContentHash> = match &inner.warm_ids {
            Some(w) => w.hashes().collect(),
            None => db_id_hashes(&db)
                .unwrap_or_else(|e| {
                    tracing::debug!("id cache hashes: {e}");
                    HashSet::new()
                })
                .into_iter()
                .collect(),
        };
        known.extend(inner.new_ids.hashes());
        for op in &inner.id_ops {
            if let IdOp::DropHash(h) = op {
                known.remove(h);
            }
        }
        known
    }

    /// Number of cached cloud ids: the table's rows plus the ids recorded
    /// since the last commit.
    pub fn id_count(&self) -> usize {
        let db = lock(&self.db);
        let rows: i64 = db
            .conn()
            .query_row("SELECT count(*) FROM ids", [], |r| r.get(0))
            .unwrap_or(0);
        rows as usize + lock(&self.inner).new_ids.len()
    }

    /// Number of cached inode keys: the table's rows plus the versions
    /// recorded since the last commit.
    pub fn inode_count(&self) -> usize {
        let db = lock(&self.db);
        let rows: i64 = db
            .conn()
            .query_row("SELECT count(*) FROM inodes", [], |r| r.get(0))
            .unwrap_or(0);
        rows as usize + lock(&self.inner).new_inodes.len()
    }

    /// Keeps only what `live` references (and pinned downloads): removes
    /// other blobs from `blobs/` and other entries from both caches
    /// (nothing outside our own `blobs/` and state). Returns the number of
    /// blobs removed. An empty `live` empties the store, so pass the
    /// complete set. Blocking.
    pub fn retain(&self, live: &HashSet<ContentHash>) -> Result<usize, StoreError> {
        let _links = lock(&self.links);
        // The database before the maps, as a commit takes them.
        let db = lock(&self.db);
        let doomed: Vec<ContentHash> = {
            let mut inner = lock(&self.inner);
            let with_pinned;
            let live = if inner.pinned.is_empty() {
                live
            } else {
                with_pinned = live.union(&inner.pinned).copied().collect();
                &with_pinned
            };
            let mut id_hashes: HashSet<ContentHash> = match &inner.warm_ids {
                Some(w) => w.hashes().collect(),
                None => db_id_hashes(&db).map_err(|e| db.err(e))?,
            };
            id_hashes.extend(inner.new_ids.hashes());
            for h in id_hashes.into_iter().filter(|h| !live.contains(h)) {
                inner.id_ops.push(IdOp::DropHash(h));
            }
            inner.new_ids.retain(live);
            if let Some(w) = &mut inner.warm_ids {
                w.retain(live);
            }
            let mut inode_hashes: HashSet<ContentHash> = match &mut inner.warm_inodes {
                Some(w) => w.retain(live).into_iter().collect(),
                None => db_inode_hashes(&db)
                    .map_err(|e| db.err(e))?
                    .into_iter()
                    .filter(|h| !live.contains(h))
                    .collect(),
            };
            inode_hashes.extend(inner.new_inodes.retain(live));
            for h in inode_hashes {
                inner.inode_ops.push(InodeOp::DropHash(h));
            }
            let on_disk;
            let blobs = match &inner.blobs {
                Some(b) => b,
                None => {
                    on_disk = list_blobs(&self.blobs_dir)?;
                    &on_disk
                }
            };
            let doomed: Vec<ContentHash> = blobs
                .iter()
                .filter(|h| !live.contains(h))
                .copied()
                .collect();
            for h in &doomed {
                inner.forget_blob(h);
            }
            doomed
        };
        drop(db);
        self.remove_blobs(&doomed)
    }

    /// Removes the files of blobs already taken out of the known set (the
    /// caller holds `links`). Returns how many went.
    fn remove_blobs(&self, doomed: &[ContentHash]) -> Result<usize, StoreError> {
        for h in doomed {
            let path = self.blob_path(h);
            if let Err(source) = fsutil::remove_if_present(&path) {
                // Still there: keep it known so `have` stays truthful.
                lock(&self.inner).add_blob(*h);
                return Err(StoreError::Remove { path, source });
            }
        }
        Ok(doomed.len())
    }

    /// Removes the content of `hashes` (content a sync cycle found nothing
    /// references any more), except pinned downloads: their blobs go, and
    /// the cached ids and inodes naming them are dropped from the database
    /// at the next commit. Cost in proportion to `hashes`, unlike
    /// [`Store::retain`]; an id still cached in memory for a removed blob
    /// is harmless, as a lookup is only trusted while the blob is there.
    /// Returns the number of blobs removed. Blocking.
    pub fn drop_unreferenced(&self, hashes: &[ContentHash]) -> Result<usize, StoreError> {
        let _links = lock(&self.links);
        let doomed: Vec<ContentHash> = {
            let present: Vec<ContentHash> =
                hashes.iter().filter(|h| self.have(h)).copied().collect();
            let mut inner = lock(&self.inner);
            let doomed: Vec<ContentHash> = present
                .into_iter()
                .filter(|h| !inner.pinned.contains(h))
                .collect();
            for h in &doomed {
                inner.forget_blob(h);
                inner.id_ops.push(IdOp::DropHash(*h));
                inner.inode_ops.push(InodeOp::DropHash(*h));
            }
            doomed
        };
        self.remove_blobs(&doomed)
    }

    /// Makes new blobs durable (fsync of `blobs/`), then writes the cache
    /// changes queued since the last commit as rows, in one transaction.
    /// Writes nothing when nothing changed. Blocking.
    pub fn save(&self) -> Result<(), StoreError> {
        self.commit(|_| Ok(()))
    }

    /// Like [`Store::save`], with `extra` (the caller's own rows, e.g. the
    /// agreement) in the same transaction: all of it lands or none. When
    /// the transaction fails the queued changes stay queued. Blocking.
    pub fn commit<T>(
        &self,
        extra: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let mut db = lock(&self.db);
        let (id_ops, inode_ops, new_blobs) = {
            let mut inner = lock(&self.inner);
            let new_blobs = std::mem::take(&mut inner.new_blobs);
            (
                std::mem::take(&mut inner.id_ops),
                std::mem::take(&mut inner.inode_ops),
                new_blobs,
            )
        };
        let requeue = |id_ops, inode_ops| {
            let mut inner = lock(&self.inner);
            let mut later_ids = std::mem::replace(&mut inner.id_ops, id_ops);
            inner.id_ops.append(&mut later_ids);
            let mut later_inodes = std::mem::replace(&mut inner.inode_ops, inode_ops);
            inner.inode_ops.append(&mut later_inodes);
            inner.new_blobs |= new_blobs;
        };
        // Rows may name blobs only once the blobs survive a crash.
        if new_blobs && let Err(e) = fsutil::fsync_dir(&self.blobs_dir) {
            requeue(id_ops, inode_ops);
            return Err(e.into());
        }
        match db.commit(|tx| {
            write_ops(tx, &id_ops, &inode_ops)?;
            extra(tx)
        }) {
            Ok(v) => {
                let mut inner = lock(&self.inner);
                inner.committed_ids(&id_ops);
                inner.committed_inodes(&inode_ops);
                Ok(v)
            }
            Err(e) => {
                requeue(id_ops, inode_ops);
                Err(e)
            }
        }
    }

    /// Runs `f` with the state database (for the agreement's own reads and
    /// imports). Blocking.
    pub fn with_db<T>(&self, f: impl FnOnce(&mut Db) -> T) -> T {
        f(&mut lock(&self.db))
    }

    /// Moves what the write-ahead log holds into the database and empties
    /// the log, so the next start does not begin with the previous run's
    /// writes still to copy. Blocking; a failure only costs that copy later.
    pub fn checkpoint(&self) {
        let r = lock(&self.db)
            .conn()
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
        if let Err(e) = r {
            tracing::debug!("state database checkpoint: {e}");
        }
    }
}

/// What a lookup asks of the id cache.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// The hash of exactly this id.
    Exact,
    /// The hash every id with this storage id agrees on.
    Loose,
    /// Exact, else loose, and only while the blob is there.
    Stored,
}

/// Lookups of this many ids or more load the id table into memory.
pub const WARM_BATCH: usize = 512;

impl Inner {
    /// Notes a blob now in `blobs/` (in the list, while it is in memory).
    fn add_blob(&mut self, hash: ContentHash) {
        if let Some(b) = &mut self.blobs {
            b.insert(hash);
        }
    }

    /// Notes a blob gone from `blobs/` (from the list, while in memory).
    fn forget_blob(&mut self, hash: &ContentHash) {
        if let Some(b) = &mut self.blobs {
            b.remove(hash);
        }
    }

    /// Caches `cid -> hash`, queueing the row unless it is known already.
    fn put_id(&mut self, cid: Cid, hash: ContentHash) {
        let known = match self.new_ids.get(&cid) {
            Some(h) => h == hash,
            None => self.warm_ids.as_ref().and_then(|w| w.get(&cid)) == Some(hash),
        };
        if !known {
            self.new_ids.insert(cid.clone(), hash);
            self.id_ops.push(IdOp::Put(cid, hash));
        }
    }

    /// The id rows `ops` are in the table now: the recorded ids among them
    /// leave memory (unless recorded again since), and the in-memory copy
    /// of the table, if any, follows.
    fn committed_ids(&mut self, ops: &[IdOp]) {
        let mut drops = HashSet::new();
        for op in ops {
            match op {
                IdOp::Put(cid, h) => {
                    self.new_ids.remove_if(cid, *h);
                    if let Some(w) = &mut self.warm_ids {
                        w.drop_hashes(&drops);
                        w.insert(cid.clone(), *h);
                    }
                    drops.clear();
                }
                IdOp::DropHash(h) => {
                    drops.insert(*h);
                }
            }
        }
        if let Some(w) = &mut self.warm_ids {
            w.drop_hashes(&drops);
        }
    }

    /// Decides a lookup of `(kind, sid, email)` over the ids `stored` (the
    /// table's) and the ids recorded since, which take precedence.
    fn decide<'a>(
        &'a self,
        stored: impl Iterator<Item = (Option<&'a str>, ContentHash)>,
        kind: StorageKind,
        sid: &str,
        email: Option<&str>,
        how: Lookup,
    ) -> Option<ContentHash> {
        let mut all: Vec<(Option<&str>, ContentHash)> = self.new_ids.of(kind, sid).collect();
        let recorded = all.len();
        for (e, h) in stored {
            if !all[..recorded].iter().any(|(r, _)| *r == e) {
                all.push((e, h));
            }
        }
        let exact = || all.iter().find(|(e, _)| *e == email).map(|x| x.1);
        let loose = || {
            let first = all.first()?.1;
            all.iter().all(|x| x.1 == first).then_some(first)
        };
        match how {
            Lookup::Exact => exact(),
            Lookup::Loose => loose(),
            // The caller checks the blob.
            Lookup::Stored => exact().or_else(loose),
        }
    }

    /// Caches `key -> hash`, queueing the row unless it is known already.
    fn put_inode(&mut self, key: InodeKey, hash: ContentHash) {
        let known = match self.inode_in_memory(&key) {
            Some(answer) => answer == Some(hash),
            None => false,
        };
        if !known {
            self.new_inodes.insert(key, hash);
            self.inode_ops.push(InodeOp::Put(key, hash));
        }
    }

    /// What memory can tell of file version `key` (`None`: ask the
    /// table): the version recorded since the last commit for its inode,
    /// else the warm table's answer.
    fn inode_in_memory(&self, key: &InodeKey) -> Option<Option<ContentHash>> {
        if self.new_inodes.knows(key) {
            return Some(self.new_inodes.get(key));
        }
        self.warm_inodes.as_ref().map(|w| w.get(key))
    }

    /// The inode rows `ops` are in the table now: the recorded versions
    /// among them leave memory (unless recorded again since), and the
    /// in-memory copy of the table, if any, follows.
    fn committed_inodes(&mut self, ops: &[InodeOp]) {
        let mut drops = HashSet::new();
        for op in ops {
            match op {
                InodeOp::Put(key, h) => {
                    self.new_inodes.remove_if(key, *h);
                    if let Some(w) = &mut self.warm_inodes {
                        w.drop_hashes(&drops);
                        w.insert(*key, *h);
                    }
                    drops.clear();
                }
                InodeOp::DropHash(h) => {
                    drops.insert(*h);
                }
            }
        }
        if let Some(w) = &mut self.warm_inodes {
            w.drop_hashes(&drops);
        }
    }
}

/// Writes queued cache changes as rows.
fn write_ops(
    tx: &rusqlite::Transaction<'_>,
    id_ops: &[IdOp],
    inode_ops: &[InodeOp],
) -> rusqlite::Result<()> {
    for op in id_ops {
        match op {
            IdOp::Put(cid, hash) => {
                tx.prepare_cached(
                    "DELETE FROM ids WHERE storage_id = ?1 AND kind = ?2 AND email_id IS ?3",
                )?
                .execute(rusqlite::params![
                    cid.storage_id,
                    cid.kind.as_str(),
                    cid.email_id
                ])?;
                tx.prepare_cached(
                    "INSERT INTO ids (kind, storage_id, email_id, hash) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(rusqlite::params![
                    cid.kind.as_str(),
                    cid.storage_id,
                    cid.email_id,
                    &hash.0[..]
                ])?;
            }
            IdOp::DropHash(hash) => drop_hash(tx, "ids", hash)?,
        }
    }
    for op in inode_ops {
        match op {
            InodeOp::Put(k, hash) => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO inodes (dev, ino, size, mtime_ns, ctime_ns, hash)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(rusqlite::params![
                    k.dev as i64,
                    k.ino as i64,
                    k.size as i64,
                    k.mtime_ns,
                    k.ctime_ns,
                    &hash.0[..]
                ])?;
            }
            InodeOp::DropHash(hash) => drop_hash(tx, "inodes", hash)?,
        }
    }
    Ok(())
}

/// Deletes the rows of `table` (`ids` or `inodes`) naming `hash`.
fn drop_hash(
    tx: &rusqlite::Transaction<'_>,
    table: &str,
    hash: &ContentHash,
) -> rusqlite::Result<()> {
    tx.prepare_cached(&format!("DELETE FROM {table} WHERE hash = ?1"))?
        .execute([&hash.0[..]])
        .map(|_| ())
}

/// The hashes of the blobs in `blobs_dir`.
fn list_blobs(blobs_dir: &Path) -> Result<HashSet<ContentHash>, StoreError> {
    let read_err = |source| StoreError::Read {
        path: blobs_dir.to_path_buf(),
        source,
    };
    let mut blobs = HashSet::new();
    for dirent in fs::read_dir(blobs_dir).map_err(read_err)? {
        let dirent = dirent.map_err(read_err)?;
        if let Some(hash) = dirent.file_name().to_str().and_then(|n| n.parse().ok()) {
            blobs.insert(hash);
        }
    }
    Ok(blobs)
}

/// Reads both caches from the database.
fn load_caches(db: &Db) -> Result<(IdCache, InodeCache), StoreError> {
    Ok((load_ids(db)?, load_inodes(db)?))
}

/// Reads the whole inode table.
fn load_inodes(db: &Db) -> Result<InodeCache, StoreError> {
    let read = || -> rusqlite::Result<InodeCache> {
        let mut inodes = InodeCache::default();
        let mut stmt = db
            .conn()
            .prepare("SELECT dev, ino, size, mtime_ns, ctime_ns, hash FROM inodes")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            inodes.insert(
                InodeKey {
                    dev: r.get::<_, i64>(0)? as u64,
                    ino: r.get::<_, i64>(1)? as u64,
                    size: r.get::<_, i64>(2)? as u64,
                    mtime_ns: r.get(3)?,
                    ctime_ns: r.get(4)?,
                },
                db::hash_from(r.get(5)?)?,
            );
        }
        Ok(inodes)
    };
    read().map_err(|e| db.err(e))
}

/// The table's hash for file version `key`, if its row is that version.
fn db_inode(db: &Db, key: &InodeKey) -> rusqlite::Result<Option<ContentHash>> {
    let mut stmt = db.conn().prepare_cached(
        "SELECT size, mtime_ns, ctime_ns, hash FROM inodes WHERE dev = ?1 AND ino = ?2",
    )?;
    let mut rows = stmt.query(rusqlite::params![key.dev as i64, key.ino as i64])?;
    let Some(r) = rows.next()? else {
        return Ok(None);
    };
    let same = r.get::<_, i64>(0)? as u64 == key.size
        && r.get::<_, i64>(1)? == key.mtime_ns
        && r.get::<_, i64>(2)? == key.ctime_ns;
    Ok(if same {
        Some(db::hash_from(r.get(3)?)?)
    } else {
        None
    })
}

/// Every hash the inode table names.
fn db_inode_hashes(db: &Db) -> rusqlite::Result<HashSet<ContentHash>> {
    let mut stmt = db.conn().prepare("SELECT DISTINCT hash FROM inodes")?;
    let mut rows = stmt.query([])?;
    let mut out = HashSet::new();
    while let Some(r) = rows.next()? {
        out.insert(db::hash_from(r.get(0)?)?);
    }
    Ok(out)
}

/// Reads the whole id table.
fn load_ids(db: &Db) -> Result<IdCache, StoreError> {
    let read = || -> rusqlite::Result<IdCache> {
        let mut ids = IdCache::default();
        let mut stmt = db
            .conn()
            .prepare("SELECT kind, storage_id, email_id, hash FROM ids ORDER BY rowid")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let kind: String = r.get(0)?;
            ids.insert(
                Cid {
                    kind: db::kind_from(&kind)?,
                    storage_id: r.get(1)?,
                    email_id: r.get(2)?,
                },
                db::hash_from(r.get(3)?)?,
            );
        }
        Ok(ids)
    };
    read().map_err(|e| db.err(e))
}

/// The table's ids of `kind` with storage id `sid`, as (Message-ID, hash).
fn db_ids_of(
    db: &Db,
    kind: StorageKind,
    sid: &str,
) -> rusqlite::Result<Vec<(Option<String>, ContentHash)>> {
    let mut stmt = db
        .conn()
        .prepare_cached("SELECT email_id, hash FROM ids WHERE storage_id = ?1 AND kind = ?2")?;
    let rows = stmt.query_map(rusqlite::params![sid, kind.as_str()], |r| {
        Ok((r.get(0)?, db::hash_from(r.get(1)?)?))
    })?;
    rows.collect()
}

/// Every hash the id table maps some id to.
fn db_id_hashes(db: &Db) -> rusqlite::Result<HashSet<ContentHash>> {
    let mut stmt = db.conn().prepare("SELECT DISTINCT hash FROM ids")?;
    let rows = stmt.query_map([], |r| db::hash_from(r.get(0)?))?;
    rows.collect()
}

/// A temporary file inside the store being filled with a message; hashes
/// what is written through it. Removed on drop unless inserted.
#[derive(Debug)]
pub struct TempBlob {
    file: File,
    path: PathBuf,
    hasher: ContentHasher,
}

impl TempBlob {
    /// Fsyncs the file and returns the hash of what was written.
    fn finish(&self) -> Result<ContentHash, StoreError> {
        self.file.sync_all().map_err(|source| StoreError::Write {
            path: self.path.clone(),
            source,
        })?;
        Ok(self.hasher.finalize())
    }

    /// The temporary file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Write for TempBlob {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for TempBlob {
    fn drop(&mut self) {
        // Already gone after a successful insert; otherwise it is garbage.
        if let Err(e) = fsutil::remove_if_present(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove temp file");
        }
    }
}

/// Opens (creating, mode 0600) and exclusively `flock`s the lock file.
fn take_lock(path: &Path) -> Result<File, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(fsutil::PRIVATE_FILE_MODE)
        .open(path)
        .map_err(|source| StoreError::Write {
            path: path.to_path_buf(),
            source,
        })?;
    if let Err(errno) = flock(&file, FlockOperation::NonBlockingLockExclusive) {
        let err = io::Error::from(errno);
        return Err(if err.kind() == io::ErrorKind::WouldBlock {
            StoreError::Locked {
                path: path.to_path_buf(),
            }
        } else {
            StoreError::Write {
                path: path.to_path_buf(),
                source: err,
            }
        });
    }
    Ok(file)
}

/// Removes every file in `dir` (our `tmp/`, under the lock, so nothing in
/// it is in use).
fn clear_dir(dir: &Path) -> Result<(), StoreError> {
    let read_err = |source| StoreError::Read {
        path: dir.to_path_buf(),
        source,
    };
    for dirent in fs::read_dir(dir).map_err(read_err)? {
        let path = dirent.map_err(read_err)?.path();
        if let Err(e) = fsutil::remove_if_present(&path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove stale temp file");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
