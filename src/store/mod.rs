//! The content-addressed message store under `message_db_dir` (default
//! `~/mail/.cms/`): one hard link per content hash in `blobs/`, the id cache
//! (cloud id → hash) and the inode cache (file version → hash) in `state/`.
//!
//! The directory is shared with the Python program, which owns `hashes/`
//! and the `ch-*` files; this module never creates, changes or deletes
//! those. Our own names are `blobs/`, `state/` and `tmp/`.
//!
//! [`Store`] is `Send + Sync` and its methods take `&self`; the heavy ones
//! (hashing, linking, fsync, saving) block, so async callers share an
//! `Arc<Store>` and run them in `spawn_blocking`. The internal lock is a
//! `std::sync::Mutex` held only for map updates, never across file IO or
//! an `.await`.

mod hash;
mod ids;
mod inodes;
pub(crate) mod statefile;

pub use hash::{ContentHasher, hash_bytes, hash_file, hash_reader};

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::fsutil::{self, FsError, InodeKey};
use crate::types::{Cid, ContentHash, StorageKind};
use ids::{IdCache, IdRecord};
use inodes::{InodeCache, InodeRecord};
use statefile::StateFile;

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
    /// Serialising state failed.
    #[error("cannot serialise {path}: {source}")]
    Serialize {
        /// The state file being written.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
}

/// The in-memory part of the store, behind [`Store`]'s mutex.
#[derive(Debug, Default)]
struct Inner {
    /// Hashes with a file in `blobs/`.
    blobs: HashSet<ContentHash>,
    ids: IdCache,
    inodes: InodeCache,
    /// The id cache changed since it was last saved.
    ids_dirty: bool,
    /// The inode cache changed since it was last saved.
    inodes_dirty: bool,
}

/// The state files, behind their own mutex so saves do not interleave.
#[derive(Debug)]
struct StateFiles {
    ids: StateFile,
    inodes: StateFile,
}

/// The content-addressed message store; see the module documentation.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    blobs_dir: PathBuf,
    tmp_dir: PathBuf,
    inner: Mutex<Inner>,
    files: Mutex<StateFiles>,
    hashes_performed: AtomicU64,
    tmp_counter: AtomicU64,
    /// Holds the exclusive `flock` on `state/lock` for the store's lifetime.
    _lock: File,
}

/// Locks a mutex, ignoring poisoning: every critical section leaves the
/// maps consistent, so a panic elsewhere does not invalidate them.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Store {
    /// Opens (creating as needed, mode 0700) the store in `dir`, takes its
    /// lock, clears leftovers from `tmp/` and loads the blob list and both
    /// caches. Damaged state files are logged and replaced by the previous
    /// generation or by empty state; blobs are never deleted here. Blocking.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let blobs_dir = dir.join("blobs");
        let state_dir = dir.join("state");
        let tmp_dir = dir.join("tmp");
        for d in [dir, &blobs_dir, &state_dir, &tmp_dir] {
            fsutil::create_private_dir(d)?;
        }
        let lock_file = take_lock(&state_dir.join("lock"))?;
        clear_dir(&tmp_dir)?;

        let mut blobs = HashSet::new();
        let read_err = |source| StoreError::Read {
            path: blobs_dir.clone(),
            source,
        };
        for dirent in fs::read_dir(&blobs_dir).map_err(read_err)? {
            let dirent = dirent.map_err(read_err)?;
            if let Some(hash) = dirent.file_name().to_str().and_then(|n| n.parse().ok()) {
                blobs.insert(hash);
            }
        }

        let mut files = StateFiles {
            ids: StateFile::new(&state_dir, "ids.json", "ids"),
            inodes: StateFile::new(&state_dir, "inodes.json", "inodes"),
        };
        let ids = IdCache::from_records(files.ids.load::<Vec<IdRecord>>());
        let inodes = InodeCache::from_records(files.inodes.load::<Vec<InodeRecord>>());
        tracing::debug!(
            dir = %dir.display(), blobs = blobs.len(), ids = ids.len(), inodes = inodes.len(),
            "message store opened"
        );
        Ok(Store {
            dir: dir.to_path_buf(),
            blobs_dir,
            tmp_dir,
            inner: Mutex::new(Inner {
                blobs,
                ids,
                inodes,
                ids_dirty: false,
                inodes_dirty: false,
            }),
            files: Mutex::new(files),
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

    /// True when the store holds the content for `hash`.
    pub fn have(&self, hash: &ContentHash) -> bool {
        lock(&self.inner).blobs.contains(hash)
    }

    /// Number of blobs in the store.
    pub fn blob_count(&self) -> usize {
        lock(&self.inner).blobs.len()
    }

    /// How many files this store has actually read and hashed (inode cache
    /// misses and [`Store::insert_file`]) since it was opened.
    pub fn hashes_performed(&self) -> u64 {
        self.hashes_performed.load(Ordering::Relaxed)
    }

    /// A new empty temporary file in the store's `tmp/` (same filesystem as
    /// the blobs), to be filled and handed to [`Store::insert_temp`] or
    /// [`Store::insert_file`]. Removed on drop if not inserted.
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
    pub fn insert_temp(&self, tmp: TempBlob) -> Result<ContentHash, StoreError> {
        tmp.file.sync_all().map_err(|source| StoreError::Write {
            path: tmp.path.clone(),
            source,
        })?;
        let hash = tmp.hasher.finalize();
        self.adopt_temp(&tmp.path, hash)?;
        Ok(hash)
    }

    /// Adopts a fully written temporary file (normally from
    /// [`Store::temp_file`]) by hashing it, fsyncing it and linking it to
    /// its hash name; the temporary name is removed in every case, and a
    /// hash already present just drops the temporary. Blocking.
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
        inner.blobs.insert(hash);
        if let Some(key) = key {
            inner.inodes_dirty |= inner.inodes.insert(key, hash);
        }
        Ok(())
    }

    /// Hard-links the blob of `hash` to `dest` (a maildir `tmp/` name, on
    /// the same filesystem). Linking changes the inode's ctime, so record
    /// the delivered file's key with [`Store::record_inode`]. Blocking.
    pub fn link_to(&self, hash: &ContentHash, dest: &Path) -> Result<(), StoreError> {
        let blob = self.blob_path(hash);
        fs::hard_link(&blob, dest).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound && fs::symlink_metadata(&blob).is_err() {
                lock(&self.inner).blobs.remove(hash);
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
        lock(&self.inner).blobs.insert(*hash);
        Ok(linked)
    }

    /// The content hash of the file at `path` whose scanned key is `key`:
    /// from the inode cache when `key` is known, else by reading the file
    /// (counted in [`Store::hashes_performed`]) and caching the result if
    /// the file did not change while being read. Blocking.
    pub fn hash_for_file(&self, path: &Path, key: &InodeKey) -> Result<ContentHash, StoreError> {
        if let Some(hash) = lock(&self.inner).inodes.get(key) {
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

    /// The cached hash of the file version `key`, without any IO.
    pub fn cached_hash(&self, key: &InodeKey) -> Option<ContentHash> {
        lock(&self.inner).inodes.get(key)
    }

    /// Records that the file version `key` has content `hash` (after a
    /// delivery or rename changed a known file's ctime).
    pub fn record_inode(&self, key: InodeKey, hash: ContentHash) {
        let mut inner = lock(&self.inner);
        inner.inodes_dirty |= inner.inodes.insert(key, hash);
    }

    /// The hash cached for exactly this cloud id.
    pub fn lookup_id(&self, cid: &Cid) -> Option<ContentHash> {
        lock(&self.inner).ids.get(cid)
    }

    /// The hash cached for `(kind, storage_id)` whatever the Message-ID,
    /// when every cached id with that storage id has the same hash.
    pub fn lookup_storage_id(&self, kind: StorageKind, storage_id: &str) -> Option<ContentHash> {
        lock(&self.inner).ids.get_by_storage_id(kind, storage_id)
    }

    /// Records that cloud id `cid` has content `hash`.
    pub fn record_id(&self, cid: Cid, hash: ContentHash) {
        let mut inner = lock(&self.inner);
        inner.ids_dirty |= inner.ids.insert(cid, hash);
    }

    /// Every content hash the id cache maps some cloud id to: content known
    /// to have come from a cloud folder.
    pub fn known_cloud_hashes(&self) -> std::collections::BTreeSet<ContentHash> {
        lock(&self.inner)
            .ids
            .records()
            .into_iter()
            .map(|r| *r.3)
            .collect()
    }

    /// Number of cached cloud ids.
    pub fn id_count(&self) -> usize {
        lock(&self.inner).ids.len()
    }

    /// Number of cached inode keys.
    pub fn inode_count(&self) -> usize {
        lock(&self.inner).inodes.len()
    }

    /// Keeps only what `live` references: removes other blobs from
    /// `blobs/` and other entries from both caches (nothing outside our own
    /// `blobs/` and state). Returns the number of blobs removed. An empty
    /// `live` empties the store, so pass the complete set. Blocking.
    pub fn retain(&self, live: &HashSet<ContentHash>) -> Result<usize, StoreError> {
        let doomed: Vec<ContentHash> = {
            let mut inner = lock(&self.inner);
            let ids_gone = inner.ids.retain(live);
            let inodes_gone = inner.inodes.retain(live);
            inner.ids_dirty |= ids_gone > 0;
            inner.inodes_dirty |= inodes_gone > 0;
            let doomed: Vec<ContentHash> = inner
                .blobs
                .iter()
                .filter(|h| !live.contains(h))
                .copied()
                .collect();
            for h in &doomed {
                inner.blobs.remove(h);
            }
            doomed
        };
        for h in &doomed {
            let path = self.blob_path(h);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    // Still there: keep it known so `have` stays truthful.
                    lock(&self.inner).blobs.insert(*h);
                    return Err(StoreError::Remove { path, source });
                }
            }
        }
        Ok(doomed.len())
    }

    /// Makes new blobs durable (fsync of `blobs/`), then writes the caches
    /// that changed since the last save, each atomically and keeping the
    /// previous generation. Blocking.
    pub fn save(&self) -> Result<(), StoreError> {
        let mut files = lock(&self.files);
        fsutil::fsync_dir(&self.blobs_dir)?;
        let (ids_body, inodes_body) = {
            let mut inner = lock(&self.inner);
            let ids = if inner.ids_dirty {
                Some(statefile::to_body(files.ids.path(), &inner.ids.records())?)
            } else {
                None
            };
            let inodes = if inner.inodes_dirty {
                Some(statefile::to_body(
                    files.inodes.path(),
                    &inner.inodes.records(),
                )?)
            } else {
                None
            };
            inner.ids_dirty = false;
            inner.inodes_dirty = false;
            (ids, inodes)
        };
        if let Some(body) = ids_body {
            files
                .ids
                .save_body(&body)
                .inspect_err(|_| lock(&self.inner).ids_dirty = true)?;
        }
        if let Some(body) = inodes_body {
            files
                .inodes
                .save_body(&body)
                .inspect_err(|_| lock(&self.inner).inodes_dirty = true)?;
        }
        Ok(())
    }
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
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove temp file")
            }
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
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
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
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove stale temp file")
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
