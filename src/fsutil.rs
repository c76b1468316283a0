//! Filesystem helpers shared by the store and the maildir code: atomic file
//! replacement, private (0700) directories, directory fsync and the inode key
//! that lets a restart skip re-hashing unchanged files.
//!
//! Everything here is blocking IO; async callers use `spawn_blocking`.

use std::fs::{self, DirBuilder, File, Metadata, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Mode of the private directories this program creates.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Mode of the private files this program creates.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// A filesystem operation that failed, with the path it failed on.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// Creating a temporary file next to the target failed.
    #[error("cannot create temporary file {path}: {source}")]
    CreateTemp {
        /// The temporary file's path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Writing file data failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// `fsync` of a file or directory failed.
    #[error("cannot sync {path}: {source}")]
    Sync {
        /// The file or directory being synced.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Renaming a file into place failed.
    #[error("cannot rename {from} to {to}: {source}")]
    Rename {
        /// The source name.
        from: PathBuf,
        /// The destination name.
        to: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Creating a directory failed.
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Reading or changing a directory's permissions failed.
    #[error("cannot set mode of {path}: {source}")]
    Chmod {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The path exists but is not a directory.
    #[error("{path} exists and is not a directory")]
    NotADirectory {
        /// The offending path.
        path: PathBuf,
    },
}

/// Identifies one version of a file without reading it: device, inode, size
/// and change times. Any write, rename or link of the file changes `ctime`,
/// so an unchanged key means unchanged content.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InodeKey {
    /// Device number of the filesystem holding the inode.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// File size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the epoch.
    pub ctime_ns: i64,
}

impl InodeKey {
    /// The key of the file `meta` describes.
    pub fn from_metadata(meta: &Metadata) -> InodeKey {
        InodeKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: mtime_ns(meta),
            ctime_ns: meta.ctime().saturating_mul(1_000_000_000) + meta.ctime_nsec(),
        }
    }
}

/// Modification time of `meta` in nanoseconds since the epoch.
pub fn mtime_ns(meta: &Metadata) -> i64 {
    meta.mtime().saturating_mul(1_000_000_000) + meta.mtime_nsec()
}

/// Replaces `path` with `bytes` atomically: a temporary file in the same
/// directory is written, fsynced and renamed over `path`, then the directory
/// is fsynced. Readers see the old or the new content, never a mix. The new
/// file has mode 0600. Blocking.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    let dir = parent_dir(path);
    let tmp = temp_name(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE_MODE)
        .open(&tmp)
        .map_err(|source| FsError::CreateTemp {
            path: tmp.clone(),
            source,
        })?;
    let result = write_and_rename(&mut file, &tmp, path, bytes);
    drop(file);
    if result.is_err() {
        // Best effort: the temp file is ours and useless now.
        let _ = fs::remove_file(&tmp);
        return result;
    }
    fsync_dir(dir)
}

/// Writes, syncs and renames the temp file into place.
fn write_and_rename(file: &mut File, tmp: &Path, path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    file.write_all(bytes).map_err(|source| FsError::Write {
        path: tmp.to_path_buf(),
        source,
    })?;
    file.sync_all().map_err(|source| FsError::Sync {
        path: tmp.to_path_buf(),
        source,
    })?;
    fs::rename(tmp, path).map_err(|source| FsError::Rename {
        from: tmp.to_path_buf(),
        to: path.to_path_buf(),
        source,
    })
}

/// A unique dot-file name next to `path` for a temporary copy of it.
fn temp_name(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp_name = format!(".{name}.tmp.{}.{n}", std::process::id());
    parent_dir(path).join(tmp_name)
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates `path` and any missing parents; the directory itself gets mode
/// 0700, and an existing directory is chmod'ed to 0700 if it is not already.
/// Parents that must be created get the default mode. Blocking.
pub fn create_private_dir(path: &Path) -> Result<(), FsError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|source| FsError::CreateDir {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    match DirBuilder::new().mode(PRIVATE_DIR_MODE).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(FsError::CreateDir {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    let meta = fs::metadata(path).map_err(|source| FsError::Chmod {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(FsError::NotADirectory {
            path: path.to_path_buf(),
        });
    }
    // The umask may have removed bits at creation, and an existing directory
    // may be too open: either way make it exactly 0700.
    if meta.permissions().mode() & 0o7777 != PRIVATE_DIR_MODE {
        fs::set_permissions(path, fs::Permissions::from_mode(PRIVATE_DIR_MODE)).map_err(
            |source| FsError::Chmod {
                path: path.to_path_buf(),
                source,
            },
        )?;
    }
    Ok(())
}

/// Flushes a directory's entries (new names, renames, unlinks) to disk.
/// Blocking.
pub fn fsync_dir(path: &Path) -> Result<(), FsError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|source| FsError::Sync {
            path: path.to_path_buf(),
            source,
        })
}

/// Removes the file at `path`; one that is already gone is no error.
/// Blocking.
pub fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_content_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, PRIVATE_FILE_MODE);
    }

    #[test]
    fn write_atomic_error_names_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing").join("x");
        let err = write_atomic(&p, b"x").unwrap_err();
        assert!(matches!(err, FsError::CreateTemp { .. }));
        assert!(err.to_string().contains("missing"));
    }

    #[test]
    fn create_private_dir_creates_and_fixes_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a").join("b");
        create_private_dir(&p).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o700
        );
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&p).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o700
        );
        fsync_dir(&p).unwrap();
    }

    #[test]
    fn create_private_dir_rejects_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"").unwrap();
        assert!(matches!(
            create_private_dir(&p),
            Err(FsError::NotADirectory { .. })
        ));
    }

    #[test]
    fn inode_key_is_stable_for_unchanged_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"abc").unwrap();
        let k1 = InodeKey::from_metadata(&fs::metadata(&p).unwrap());
        assert_eq!(k1, InodeKey::from_metadata(&fs::metadata(&p).unwrap()));
        assert_eq!(k1.size, 3);
    }
}
