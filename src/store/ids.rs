//! The id cache: which content hash a cloud message id (`Cid`) stands for,
//! so a restart downloads nothing it already has (behavior.md §5).

use foldhash::{HashMap, HashSet, HashSetExt};

use crate::types::{Cid, ContentHash, StorageKind};

/// One cached id, keyed in [`IdCache`] by its storage id.
#[derive(Clone, Debug, PartialEq, Eq)]
struct IdEntry {
    kind: StorageKind,
    email_id: Option<String>,
    hash: ContentHash,
}

/// Maps [`Cid`]s to content hashes, grouped by storage id so that a lookup
/// ignoring the Message-ID is cheap.
#[derive(Clone, Debug, Default)]
pub(crate) struct IdCache {
    by_storage_id: HashMap<String, Vec<IdEntry>>,
    len: usize,
}

impl IdCache {
    /// Number of cached ids.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The hash cached for exactly this `cid`.
    pub(crate) fn get(&self, cid: &Cid) -> Option<ContentHash> {
        self.get_parts(cid.kind, &cid.storage_id, cid.email_id.as_deref())
    }

    /// [`IdCache::get`] for a `Cid` given by its parts.
    pub(crate) fn get_parts(
        &self,
        kind: StorageKind,
        storage_id: &str,
        email_id: Option<&str>,
    ) -> Option<ContentHash> {
        self.by_storage_id
            .get(storage_id)?
            .iter()
            .find(|e| e.kind == kind && e.email_id.as_deref() == email_id)
            .map(|e| e.hash)
    }

    /// Records `cid -> hash`; returns true when this changed the cache.
    pub(crate) fn insert(&mut self, cid: Cid, hash: ContentHash) -> bool {
        let entries = self.by_storage_id.entry(cid.storage_id).or_default();
        if let Some(e) = entries
            .iter_mut()
            .find(|e| e.kind == cid.kind && e.email_id == cid.email_id)
        {
            let changed = e.hash != hash;
            e.hash = hash;
            return changed;
        }
        entries.push(IdEntry {
            kind: cid.kind,
            email_id: cid.email_id,
            hash,
        });
        self.len += 1;
        true
    }

    /// The cached ids of `kind` with storage id `storage_id`, as
    /// (Message-ID, hash).
    pub(crate) fn of<'a>(
        &'a self,
        kind: StorageKind,
        storage_id: &str,
    ) -> impl Iterator<Item = (Option<&'a str>, ContentHash)> + 'a {
        self.by_storage_id
            .get(storage_id)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .filter(move |e| e.kind == kind)
            .map(|e| (e.email_id.as_deref(), e.hash))
    }

    /// Forgets `cid` if it still maps to `hash`.
    pub(crate) fn remove_if(&mut self, cid: &Cid, hash: ContentHash) {
        let Some(entries) = self.by_storage_id.get_mut(&cid.storage_id) else {
            return;
        };
        let before = entries.len();
        entries.retain(|e| !(e.kind == cid.kind && e.email_id == cid.email_id && e.hash == hash));
        self.len -= before - entries.len();
        if entries.is_empty() {
            self.by_storage_id.remove(&cid.storage_id);
        }
    }

    /// Forgets every id mapping to one of `hashes`.
    pub(crate) fn drop_hashes(&mut self, hashes: &HashSet<ContentHash>) {
        if !hashes.is_empty() {
            let mut len = 0;
            self.by_storage_id.retain(|_, entries| {
                entries.retain(|e| !hashes.contains(&e.hash));
                len += entries.len();
                !entries.is_empty()
            });
            self.len = len;
        }
    }

    /// Every hash some id maps to.
    pub(crate) fn hashes(&self) -> impl Iterator<Item = ContentHash> + '_ {
        self.by_storage_id
            .values()
            .flat_map(|entries| entries.iter().map(|e| e.hash))
    }

    /// Drops ids whose hash is not in `live`; returns the hashes dropped
    /// (each once).
    pub(crate) fn retain(&mut self, live: &HashSet<ContentHash>) -> Vec<ContentHash> {
        let mut gone = HashSet::new();
        let mut len = 0;
        self.by_storage_id.retain(|_, entries| {
            entries.retain(|e| {
                let keep = live.contains(&e.hash);
                if !keep {
                    gone.insert(e.hash);
                }
                keep
            });
            len += entries.len();
            !entries.is_empty()
        });
        self.len = len;
        gone.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> ContentHash {
        ContentHash([n; 32])
    }

    fn cid(kind: StorageKind, sid: &str, email: Option<&str>) -> Cid {
        Cid {
            kind,
            storage_id: sid.into(),
            email_id: email.map(Into::into),
        }
    }

    #[test]
    fn exact_and_loose_lookup() {
        let mut c = IdCache::default();
        assert!(c.insert(cid(StorageKind::Gmail, "s1", Some("<a@x>")), h(1)));
        assert!(!c.insert(cid(StorageKind::Gmail, "s1", Some("<a@x>")), h(1)));
        assert_eq!(
            c.get(&cid(StorageKind::Gmail, "s1", Some("<a@x>"))),
            Some(h(1))
        );
        assert_eq!(c.get(&cid(StorageKind::Gmail, "s1", None)), None);
        assert_eq!(
            c.get(&cid(StorageKind::Office365, "s1", Some("<a@x>"))),
            None
        );
        assert_eq!(c.of(StorageKind::Office365, "s1").count(), 0);

        // Same storage id, other Message-IDs: one entry each, by kind.
        c.insert(cid(StorageKind::Gmail, "s1", None), h(1));
        c.insert(cid(StorageKind::Gmail, "s1", Some("<b@x>")), h(2));
        assert_eq!(
            c.of(StorageKind::Gmail, "s1").collect::<Vec<_>>(),
            [(Some("<a@x>"), h(1)), (None, h(1)), (Some("<b@x>"), h(2))]
        );
        // Recording an id again replaces its hash.
        c.insert(cid(StorageKind::Gmail, "s1", Some("<b@x>")), h(1));
        assert_eq!(
            c.get(&cid(StorageKind::Gmail, "s1", Some("<b@x>"))),
            Some(h(1))
        );
        assert_eq!(c.len(), 3);
        c.remove_if(&cid(StorageKind::Gmail, "s1", None), h(2));
        assert_eq!(c.len(), 3, "only when it still maps to that hash");
        c.remove_if(&cid(StorageKind::Gmail, "s1", None), h(1));
        assert_eq!(c.len(), 2);
        c.drop_hashes(&[h(1)].into_iter().collect());
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn retain_reports_what_went() {
        let mut c = IdCache::default();
        c.insert(cid(StorageKind::Gmail, "a", None), h(1));
        c.insert(cid(StorageKind::Office365, "b", Some("<m>")), h(2));
        c.insert(cid(StorageKind::Office365, "c", Some("<n>")), h(3));
        let live: HashSet<_> = [h(1), h(3)].into_iter().collect();
        assert_eq!(c.retain(&live), vec![h(2)]);
        assert_eq!(c.len(), 2);
        assert_eq!(c.hashes().count(), 2);
        let back = c;
        assert_eq!(
            back.get(&cid(StorageKind::Office365, "c", Some("<n>"))),
            Some(h(3))
        );
        assert_eq!(
            back.get(&cid(StorageKind::Office365, "b", Some("<m>"))),
            None
        );
    }
}
