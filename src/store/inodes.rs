//! The inode cache: the content hash of a file version identified by its
//! [`InodeKey`], so a restart re-hashes no unchanged maildir file. One entry
//! per (device, inode): a newer version of the same inode replaces the old.

use std::collections::{HashMap, HashSet};

use crate::fsutil::InodeKey;
use crate::types::ContentHash;

/// The persisted form of one entry: `[dev, ino, size, mtime_ns, ctime_ns, hash]`.
pub(crate) type InodeRecord = (u64, u64, u64, i64, i64, ContentHash);

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
    /// Builds the cache from persisted records.
    pub(crate) fn from_records(records: Vec<InodeRecord>) -> InodeCache {
        let mut cache = InodeCache::default();
        for (dev, ino, size, mtime_ns, ctime_ns, hash) in records {
            cache.insert(
                InodeKey {
                    dev,
                    ino,
                    size,
                    mtime_ns,
                    ctime_ns,
                },
                hash,
            );
        }
        cache
    }

    /// The records to persist.
    pub(crate) fn records(&self) -> Vec<InodeRecord> {
        self.map
            .iter()
            .map(|(&(dev, ino), v)| (dev, ino, v.size, v.mtime_ns, v.ctime_ns, v.hash))
            .collect()
    }

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

    /// Drops entries whose hash is not in `live`; returns how many went.
    pub(crate) fn retain(&mut self, live: &HashSet<ContentHash>) -> usize {
        let before = self.map.len();
        self.map.retain(|_, v| live.contains(&v.hash));
        before - self.map.len()
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
        let back = InodeCache::from_records(c.records());
        assert_eq!(back.get(&key(7, 101)), Some(h1));
        assert_eq!(c.retain(&HashSet::new()), 1);
        assert_eq!(c.len(), 0);
    }
}
