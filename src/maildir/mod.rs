//! Local maildirs: scanning `cur/` and `new/`, the flag codec, delivery
//! through `tmp/`, flag renames, removal and change notification.
//!
//! All functions here do blocking IO; async callers use `spawn_blocking`.

mod flags;
mod watch;

pub use flags::{Subdir, base_name, encode_name, parse_name};
pub use watch::{WatchEvent, WatchGuard, watch};

use std::collections::HashSet;
use std::fs;
#[cfg(test)]
use std::fs::OpenOptions;
use std::io;
#[cfg(test)]
use std::io::{Read, Write};
#[cfg(test)]
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::process::Pid;

use crate::fsutil::{self, FsError, InodeKey};
use crate::types::Flags;

/// A maildir operation that failed, with the path it failed on.
#[derive(Debug, thiserror::Error)]
pub enum MaildirError {
    /// The directory lacks `cur/`, `new/` or `tmp/`.
    #[error("{path} is not a maildir (no {missing}/ directory)")]
    NotAMaildir {
        /// The maildir's root.
        path: PathBuf,
        /// The missing subdirectory.
        missing: &'static str,
    },
    /// Creating the maildir's directories failed.
    #[error(transparent)]
    Create(#[from] FsError),
    /// Listing a directory or reading a file's metadata failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The directory or file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Writing or syncing a file in `tmp/` failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file in `tmp/`.
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
    /// A rename within the maildir failed.
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
    /// Delivery found a file of the same name already there.
    #[error("{path} already exists")]
    Exists {
        /// The name that was taken.
        path: PathBuf,
    },
    /// The file is gone, most likely renamed or deleted by the MUA meanwhile;
    /// rescan the maildir.
    #[error("{path} vanished (renamed or removed concurrently)")]
    Vanished {
        /// The name the file had.
        path: PathBuf,
    },
    /// A base name that cannot be a maildir file name.
    #[error("bad maildir base name {base:?} for {path}")]
    BadBase {
        /// The maildir's root.
        path: PathBuf,
        /// The rejected base name.
        base: String,
    },
    /// Setting up change notification failed.
    #[error("cannot watch {path}: {source}")]
    Watch {
        /// The directory being watched.
        path: PathBuf,
        /// The underlying error.
        source: notify::Error,
    },
    /// The watcher's debounce thread could not be started.
    #[error("cannot start the watcher thread for {path}: {source}")]
    WatchThread {
        /// The first maildir of the watch set.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// One message file found by [`Maildir::scan`] or made by delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Full path of the file.
    pub path: PathBuf,
    /// The directory it is in.
    pub subdir: Subdir,
    /// The file name without the `:2,` info part.
    pub base: String,
    /// The R/S/F/T flags of the name.
    pub flags: Flags,
    /// Other info letters, sorted; kept on renames.
    pub other: String,
    /// The inode key when the file was seen, for the store's inode cache.
    pub key: InodeKey,
}

/// The result of listing a maildir.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    /// Every regular, non-dot file of `cur/` and `new/`.
    pub entries: Vec<Entry>,
    /// True when `cur/` or `new/` changed while they were listed; the
    /// listing may be inconsistent and the caller should scan again.
    pub changed: bool,
}

/// A local maildir: a root with `tmp/`, `cur/` and `new/`.
#[derive(Clone, Debug)]
pub struct Maildir {
    root: PathBuf,
    tmp: PathBuf,
    cur: PathBuf,
    new: PathBuf,
}

/// The entry for a regular file `name` of `sub` with metadata `meta`.
fn entry_of(path: PathBuf, sub: Subdir, name: &str, meta: &fs::Metadata) -> Entry {
    let (base, flags, other) = parse_name(name);
    Entry {
        base: base.to_string(),
        path,
        subdir: sub,
        flags,
        other,
        key: InodeKey::from_metadata(meta),
    }
}

impl Entry {
    /// The entry for file `name` (`cur/<file>` or `new/<file>`) of the
    /// maildir at `root`, as it was seen with inode key `key` (no IO).
    pub fn named(root: &Path, name: &str, key: InodeKey) -> Option<Entry> {
        let (sub, file) = match name.split_once('/')? {
            ("cur", f) => (Subdir::Cur, f),
            ("new", f) => (Subdir::New, f),
            _ => return None,
        };
        let (base, flags, other) = parse_name(file);
        Some(Entry {
            base: base.to_string(),
            path: root.join(name),
            subdir: sub,
            flags,
            other,
            key,
        })
    }
}

impl Maildir {
    /// Opens an existing maildir, checking that its three directories exist.
    pub fn open(root: &Path) -> Result<Maildir, MaildirError> {
        let md = Maildir::at(root);
        for (dir, name) in [(&md.tmp, "tmp"), (&md.cur, "cur"), (&md.new, "new")] {
            if !dir.is_dir() {
                return Err(MaildirError::NotAMaildir {
                    path: root.to_path_buf(),
                    missing: name,
                });
            }
        }
        Ok(md)
    }

    /// Creates the maildir's `tmp/`, `cur/` and `new/` (mode 0700) as
    /// needed and opens it. Only call this for a validated configuration.
    pub fn create(root: &Path) -> Result<Maildir, MaildirError> {
        let md = Maildir::at(root);
        for dir in [&md.tmp, &md.cur, &md.new] {
            fsutil::create_private_dir(dir)?;
        }
        Ok(md)
    }

    /// The paths of a maildir rooted at `root`, without checking anything.
    fn at(root: &Path) -> Maildir {
        Maildir {
            root: root.to_path_buf(),
            tmp: root.join("tmp"),
            cur: root.join("cur"),
            new: root.join("new"),
        }
    }

    /// The maildir's root directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The full path of one of the message directories.
    pub fn subdir_path(&self, sub: Subdir) -> &Path {
        match sub {
            Subdir::Cur => &self.cur,
            Subdir::New => &self.new,
        }
    }

    /// Lists `cur/` then `new/`: regular files only (symlinks, directories
    /// and dot files are skipped, and symlinks are not followed), with their
    /// flags and inode keys. Reports whether either directory changed while
    /// it was being listed, comparing directory mtimes before and after.
    pub fn scan(&self) -> Result<Scan, MaildirError> {
        let before = self.dir_mtimes()?;
        let mut scan = Scan::default();
        for sub in [Subdir::Cur, Subdir::New] {
            self.scan_dir(sub, &mut scan)?;
        }
        let after = self.dir_mtimes()?;
        scan.changed |= before != after;
        Ok(scan)
    }

    /// The modification times of `cur/` and `new/`.
    fn dir_mtimes(&self) -> Result<[i64; 2], MaildirError> {
        let mtime = |dir: &Path| {
            fs::metadata(dir)
                .map(|m| fsutil::mtime_ns(&m))
                .map_err(|source| MaildirError::Read {
                    path: dir.to_path_buf(),
                    source,
                })
        };
        Ok([mtime(&self.cur)?, mtime(&self.new)?])
    }

    /// Adds the files of one subdirectory to `scan`.
    fn scan_dir(&self, sub: Subdir, scan: &mut Scan) -> Result<(), MaildirError> {
        let dir = self.subdir_path(sub);
        let read_err = |source| MaildirError::Read {
            path: dir.to_path_buf(),
            source,
        };
        for dirent in fs::read_dir(dir).map_err(read_err)? {
            let dirent = dirent.map_err(read_err)?;
            let file_name = dirent.file_name();
            let Some(name) = file_name.to_str() else {
                tracing::warn!(dir = %dir.display(), name = ?file_name, "skipping non-UTF-8 file name");
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let path = dirent.path();
            // DirEntry::metadata does not follow symlinks.
            let meta = match dirent.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    scan.changed = true;
                    continue;
                }
                Err(source) => return Err(MaildirError::Read { path, source }),
            };
            if !meta.file_type().is_file() {
                continue;
            }
            scan.entries.push(entry_of(path, sub, name, &meta));
        }
        Ok(())
    }

    /// The files of `cur/` and `new/` (dot files left out) whose base name
    /// (the name without its `:2,` info) is one of `bases`: where messages
    /// went after renames the caller has not heard of yet. Reads the
    /// directories' names only (no `stat`), again if they changed while
    /// being read.
    pub fn names_with_bases<S: std::hash::BuildHasher>(
        &self,
        bases: &HashSet<&str, S>,
    ) -> Result<Vec<PathBuf>, MaildirError> {
        let mut found = Vec::new();
        for _ in 0..3 {
            found.clear();
            let before = self.dir_mtimes()?;
            for dir in [&self.cur, &self.new] {
                let read_err = |source| MaildirError::Read {
                    path: dir.to_path_buf(),
                    source,
                };
                for dirent in fs::read_dir(dir).map_err(read_err)? {
                    let name = dirent.map_err(read_err)?.file_name();
                    let Some(name) = name.to_str() else { continue };
                    if !name.starts_with('.') && bases.contains(base_name(name)) {
                        found.push(dir.join(name));
                    }
                }
            }
            if self.dir_mtimes()? == before {
                break;
            }
        }
        Ok(found)
    }

    /// What one file of `cur/` or `new/` is now, as [`Maildir::scan`] would
    /// list it: `None` when it is gone, not a regular file (symlinks are not
    /// followed), a dot file, or not in this maildir's `cur/` or `new/`.
    pub fn look(&self, path: &Path) -> Result<Option<Entry>, MaildirError> {
        let sub = match path.parent() {
            Some(p) if p == self.cur => Subdir::Cur,
            Some(p) if p == self.new => Subdir::New,
            _ => return Ok(None),
        };
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return Ok(None);
        };
        if name.starts_with('.') {
            return Ok(None);
        }
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_file() => {
                Ok(Some(entry_of(path.to_path_buf(), sub, name, &meta)))
            }
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(MaildirError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// A fresh base name, unique across processes and hosts:
    /// `<secs>.M<usecs>P<pid>Q<counter>.<hostname>`.
    pub fn new_base_name() -> String {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        format!(
            "{}.M{}P{}Q{}.{}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            n,
            hostname()
        )
    }

    /// Removes what a delivery of ours that was interrupted (a crash, kill
    /// -9) left in `tmp/`: files named by [`Maildir::new_base_name`] on this
    /// host by a process that is no longer running. Other programs' files
    /// are left alone. Returns how many went. Blocking.
    pub fn clear_interrupted_deliveries(&self) -> usize {
        let host = format!(".{}", hostname());
        let Ok(dir) = fs::read_dir(&self.tmp) else {
            return 0;
        };
        let mut removed = 0;
        for dirent in dir.flatten() {
            let name = dirent.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(pid) = our_delivery_pid(name, &host) else {
                continue;
            };
            if pid == std::process::id() || process_alive(pid) {
                continue;
            }
            match fs::remove_file(dirent.path()) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(path = %dirent.path().display(), error = %e, "cannot remove an interrupted delivery")
                }
            }
        }
        if removed > 0 {
            tracing::info!(maildir = %self.root.display(), removed, "removed interrupted deliveries from tmp/");
        }
        removed
    }

    /// Delivers a hard link to `src` (normally a store blob, on the same
    /// filesystem) as a message with this base name and flags: linked into
    /// `tmp/`, then into `new/` or `cur/`. Returns the delivered entry with
    /// its inode key as it is after delivery.
    pub fn deliver_link(
        &self,
        src: &Path,
        base: &str,
        flags: Flags,
    ) -> Result<Entry, MaildirError> {
        self.deliver(base, flags, |tmp| {
            fs::hard_link(src, tmp).map_err(|source| MaildirError::Link {
                from: src.to_path_buf(),
                to: tmp.to_path_buf(),
                source,
            })
        })
    }

    /// Delivers `bytes` as a new message: written and fsynced in `tmp/`,
    /// then moved into `new/` or `cur/`.
    /// Tests only.
    #[cfg(test)]
    pub fn deliver_bytes(
        &self,
        bytes: &[u8],
        base: &str,
        flags: Flags,
    ) -> Result<Entry, MaildirError> {
        self.deliver_reader(&mut &bytes[..], base, flags)
    }

    /// Delivers what `reader` yields as a new message, like
    /// [`Maildir::deliver_bytes`]; if reading fails nothing reaches `new/`
    /// or `cur/`.
    /// Tests only.
    #[cfg(test)]
    pub fn deliver_reader(
        &self,
        reader: &mut dyn Read,
        base: &str,
        flags: Flags,
    ) -> Result<Entry, MaildirError> {
        self.deliver(base, flags, |tmp| {
            let write_err = |source| MaildirError::Write {
                path: tmp.to_path_buf(),
                source,
            };
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(fsutil::PRIVATE_FILE_MODE)
                .open(tmp)
                .map_err(write_err)?;
            io::copy(reader, &mut file).map_err(write_err)?;
            file.flush().map_err(write_err)?;
            file.sync_all().map_err(write_err)
        })
    }

    /// Common delivery: `fill` makes the complete file at `tmp/<base>`; it
    /// is then linked to its final name (which fails rather than replace an
    /// existing file) and the `tmp/` name removed. On any error the `tmp/`
    /// file is removed, so `cur/` and `new/` only ever get complete files.
    fn deliver(
        &self,
        base: &str,
        flags: Flags,
        fill: impl FnOnce(&Path) -> Result<(), MaildirError>,
    ) -> Result<Entry, MaildirError> {
        if base.is_empty() || base.starts_with('.') || base.contains(['/', ':', '\0']) {
            return Err(MaildirError::BadBase {
                path: self.root.clone(),
                base: base.to_string(),
            });
        }
        let tmp = self.tmp.join(base);
        // A leftover with this name is not ours to remove below.
        if fs::symlink_metadata(&tmp).is_ok() {
            return Err(MaildirError::Exists { path: tmp });
        }
        let (sub, name) = encode_name(base, flags, "");
        let dest = self.subdir_path(sub).join(&name);
        let linked = fill(&tmp).and_then(|()| {
            fs::hard_link(&tmp, &dest).map_err(|source| {
                if source.kind() == io::ErrorKind::AlreadyExists {
                    MaildirError::Exists { path: dest.clone() }
                } else {
                    MaildirError::Link {
                        from: tmp.clone(),
                        to: dest.clone(),
                        source,
                    }
                }
            })
        });
        // Whatever happened, the tmp/ name has served its purpose. A failed
        // `fill` may not have created it, so NotFound is fine.
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %tmp.display(), error = %e, "cannot remove tmp file"),
        }
        linked?;
        let meta = fs::symlink_metadata(&dest).map_err(|source| stat_err(&dest, source))?;
        Ok(Entry {
            path: dest,
            subdir: sub,
            base: base.to_string(),
            flags,
            other: String::new(),
            key: InodeKey::from_metadata(&meta),
        })
    }

    /// Renames `entry` so its name carries `flags`, keeping its other
    /// letters; moves it between `new/` and `cur/` as needed. Returns the
    /// entry as it is now (same entry when nothing had to change).
    pub fn set_flags(&self, entry: &Entry, flags: Flags) -> Result<Entry, MaildirError> {
        let (sub, name) = encode_name(&entry.base, flags, &entry.other);
        let dest = self.subdir_path(sub).join(&name);
        if dest == entry.path {
            return Ok(entry.clone());
        }
        fs::rename(&entry.path, &dest).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                MaildirError::Vanished {
                    path: entry.path.clone(),
                }
            } else {
                MaildirError::Rename {
                    from: entry.path.clone(),
                    to: dest.clone(),
                    source,
                }
            }
        })?;
        let meta = fs::symlink_metadata(&dest).map_err(|source| stat_err(&dest, source))?;
        Ok(Entry {
            path: dest,
            subdir: sub,
            base: entry.base.clone(),
            flags,
            other: entry.other.clone(),
            key: InodeKey::from_metadata(&meta),
        })
    }

    /// Deletes the message file of `entry`.
    pub fn remove(&self, entry: &Entry) -> Result<(), MaildirError> {
        fs::remove_file(&entry.path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                MaildirError::Vanished {
                    path: entry.path.clone(),
                }
            } else {
                MaildirError::Remove {
                    path: entry.path.clone(),
                    source,
                }
            }
        })
    }

    /// Flushes `cur/` and `new/` to disk, making earlier deliveries,
    /// renames and removals durable; call it before recording them as done.
    pub fn sync(&self) -> Result<(), MaildirError> {
        fsutil::fsync_dir(&self.cur)?;
        fsutil::fsync_dir(&self.new)?;
        Ok(())
    }
}

/// The error for a failed stat of `path`: `Vanished` when it is gone.
fn stat_err(path: &Path, source: io::Error) -> MaildirError {
    if source.kind() == io::ErrorKind::NotFound {
        MaildirError::Vanished {
            path: path.to_path_buf(),
        }
    } else {
        MaildirError::Read {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The pid in a `tmp/` name made by [`Maildir::new_base_name`] on the host
/// whose suffix is `host` (`.<hostname>`), if it is one.
fn our_delivery_pid(name: &str, host: &str) -> Option<u32> {
    let rest = name.strip_suffix(host)?;
    let (secs, rest) = rest.split_once(".M")?;
    let (usec, rest) = rest.split_once('P')?;
    let (pid, n) = rest.split_once('Q')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(secs) && digits(usec) && digits(n)).then_some(())?;
    pid.parse().ok()
}

/// True when a process with this pid exists (signal 0: nothing is sent;
/// `EPERM` means it exists but is not ours). Pid 0 and pids beyond the
/// kernel's range are no process.
fn process_alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

/// This host's name (the `uname` node name, which is what `gethostname`
/// returns), made safe for a maildir file name ('/' and ':' replaced), or
/// `localhost` when it is empty.
fn hostname() -> String {
    let uname = rustix::system::uname();
    let name: String = uname
        .nodename()
        .to_string_lossy()
        .chars()
        .map(|c| {
            if c == '/' || c == ':' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if name.is_empty() {
        "localhost".to_string()
    } else {
        name
    }
}

#[cfg(test)]
mod tests;
