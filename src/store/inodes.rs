//! The inode cache: the content hash of a file version identified by its
//! [`InodeKey`], so a restart re-hashes no unchanged maildir file. One entry
//! per (device, inode): a newer version of the same inode replaces the old.

use foldhash::{HashMap, HashSet, HashSetExt};

use crate::fsutil::InodeKey;
use crate::types::ContentHash;

/// What is remembered about one inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Version {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    hash: ContentHash,
}

/// Maps inode keys to content hashes.
#[derive(Clone, Debug, Default)]
pub(crate) struct InodeCache {
    map: HashMap<(u64, u64), Version>,
}

impl InodeCache {
    /// Number of cached inodes.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The hash of the file version `key`, if known.
    pub(crate) fn get(&self, key: &InodeKey) -> Option<ContentHash> {
        let v = self.map.get(&(key.dev, key.ino))?;
        (v.size == key.size && v.mtime_ns == key.mtime_ns && v.ctime_ns == key.ctime_ns)
            .then_some(v.hash)
    }

    /// Records the hash of file version `key`; returns true when this
    /// changed the cache.
    pub(crate) fn insert(&mut self, key: InodeKey, hash: ContentHash) -> bool {
        let v = Version {
            size: key.size,
            mtime_ns: key.mtime_ns,
            ctime_ns: key.ctime_ns,
            hash,
        };
        self.map.insert((key.dev, key.ino), v) != Some(v)
    }

    /// True when some version of `key`'s inode is cached (whichever).
    pub(crate) fn knows(&self, key: &InodeKey) -> bool {
        self.map.contains_key(&(key.dev, key.ino))
    }

    /// Forgets `key`'s inode if the cached version is `key` with `hash`.
    pub(crate) fn remove_if(&mut self, key: &InodeKey, hash: ContentHash) {
        if self.get(key) == Some(hash) {
            self.map.remove(&(key.dev, key.ino));
        }
    }

    /// Drops the entries holding one of `hashes`.
    pub(crate) fn drop_hashes(&mut self, hashes: &HashSet<ContentHash>) {
        if !hashes.is_empty() {
            self.map.retain(|_, v| !hashes.contains(&v.hash));
        }
    }

    /// Drops entries whose hash is not in `live`; returns the hashes
    /// dropped (each once).
    pub(crate) fn retain(&mut self, live: &HashSet<ContentHash>) -> Vec<ContentHash> {
        let mut gone = HashSet::new();
        self.map.retain(|_, v| {
            let keep = live.contains(&v.hash);
            if !keep {
                gone.insert(v.hash);
            }
            keep
        });
        gone.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ino: u64, ctime_ns: i64) -> InodeKey {
        InodeKey {
            dev: 1,
            ino,
            size: 10,
            mtime_ns: 5,
            ctime_ns,
        }
    }

    #[test]
    fn newer_version_replaces_older() {
        let h1 = ContentHash([1; 32]);
        let mut c = InodeCache::default();
        assert!(c.insert(key(7, 100), h1));
        assert!(!c.insert(key(7, 100), h1));
        assert_eq!(c.get(&key(7, 100)), Some(h1));
        assert_eq!(c.get(&key(7, 101)), None);
        c.insert(key(7, 101), h1);
        assert_eq!(c.get(&key(7, 100)), None);
        assert_eq!(c.get(&key(7, 101)), Some(h1));
        assert_eq!(c.len(), 1);
        assert_eq!(c.retain(&HashSet::new()), vec![h1]);
        assert_eq!(c.len(), 0);
    }
}
