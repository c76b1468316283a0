//! What the engine keeps between cycles so that an event costs what it
//! changed: every maildir file and every listed cloud message with its
//! content hash, each findable by hash. A cycle plans only the hashes an
//! event touched, reading their files and cloud copies from here instead of
//! scanning and listing the world again.

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use smallvec::SmallVec;

use arcstr::ArcStr;

use super::plan::Route;
use crate::cloud::CloudEntry;
use crate::maildir::Entry;
use crate::types::{ContentHash, Flags};

/// Keys grouped by content hash (nearly always one key: kept inline).
#[derive(Debug)]
pub(super) struct ByHash<K> {
    map: HashMap<ContentHash, SmallVec<[K; 1]>>,
}

impl<K> Default for ByHash<K> {
    fn default() -> Self {
        ByHash {
            map: HashMap::new(),
        }
    }
}

impl<K: PartialEq> ByHash<K> {
    /// Adds `key` under `hash` (once).
    pub(super) fn add(&mut self, hash: ContentHash, key: K) {
        let keys = self.map.entry(hash).or_default();
        if !keys.contains(&key) {
            keys.push(key);
        }
    }

    /// Removes `key` from under `hash`.
    pub(super) fn remove(&mut self, hash: &ContentHash, key: &K) {
        if let Some(keys) = self.map.get_mut(hash) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.map.remove(hash);
            }
        }
    }

    /// The keys under `hash`.
    pub(super) fn get(&self, hash: &ContentHash) -> &[K] {
        self.map.get(hash).map_or(&[], SmallVec::as_slice)
    }

    /// True when some key is under `hash`.
    pub(super) fn contains(&self, hash: &ContentHash) -> bool {
        self.map.contains_key(hash)
    }

    /// Every hash with a key.
    pub(super) fn hashes(&self) -> impl Iterator<Item = &ContentHash> {
        self.map.keys()
    }
}

/// A maildir file as the engine last saw it (its name is its key; the
/// rest of its [`Entry`] follows from the name: [`Entry::named`]). Its
/// inode key is the store's inode cache's business, not kept here.
#[derive(Clone, Copy, Debug)]
pub(super) struct File {
    /// Its content.
    pub hash: ContentHash,
    /// The R/S/F/T flags of its name.
    pub flags: Flags,
}

/// The name the planner knows a file by: `cur/<name>` or `new/<name>`.
pub(super) fn file_name(entry: &Entry) -> String {
    format!(
        "{}/{}",
        entry.subdir.as_str(),
        entry
            .path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    )
}

/// One maildir's files, by name and by hash.
#[derive(Debug, Default)]
pub(super) struct MaildirFiles {
    /// One allocation per name, shared by both maps.
    files: HashMap<ArcStr, File>,
    by_hash: ByHash<ArcStr>,
}

impl MaildirFiles {
    /// The files of a full scan (built on the scanning thread).
    pub(super) fn of_scan(scanned: Vec<(Entry, ContentHash)>) -> MaildirFiles {
        let mut m = MaildirFiles {
            files: HashMap::with_capacity(scanned.len()),
            by_hash: ByHash::default(),
        };
        for (entry, hash) in scanned {
            m.put(entry, hash);
        }
        m
    }

    fn put(&mut self, entry: Entry, hash: ContentHash) -> Option<ContentHash> {
        let name: ArcStr = file_name(&entry).into();
        let old = self.remove(&name).map(|f| f.hash);
        self.by_hash.add(hash, name.clone());
        let file = File {
            hash,
            flags: entry.flags,
        };
        self.files.insert(name, file);
        old
    }

    fn remove(&mut self, name: &str) -> Option<File> {
        let (name, f) = self.files.remove_entry(name)?;
        self.by_hash.remove(&f.hash, &name);
        Some(f)
    }
}

/// Every file of every maildir, by maildir and name, and by hash.
#[derive(Debug, Default)]
pub(super) struct LocalIndex {
    maildirs: Vec<MaildirFiles>,
}

impl LocalIndex {
    /// An empty index over `maildirs` maildirs.
    pub(super) fn new(maildirs: usize) -> LocalIndex {
        LocalIndex {
            maildirs: (0..maildirs).map(|_| MaildirFiles::default()).collect(),
        }
    }

    /// Records `entry` of `maildir` with content `hash`; returns the hash
    /// the same name had before, if any.
    pub(super) fn put(
        &mut self,
        maildir: usize,
        entry: Entry,
        hash: ContentHash,
    ) -> Option<ContentHash> {
        self.maildirs.get_mut(maildir)?.put(entry, hash)
    }

    /// Forgets file `name` of `maildir`, returning what was known of it.
    pub(super) fn remove(&mut self, maildir: usize, name: &str) -> Option<File> {
        self.maildirs.get_mut(maildir)?.remove(name)
    }

    /// File `name` of `maildir`.
    pub(super) fn get(&self, maildir: usize, name: &str) -> Option<&File> {
        self.maildirs.get(maildir)?.files.get(name)
    }

    /// The files holding `hash`, as (maildir, name, file).
    pub(super) fn files_of<'a>(
        &'a self,
        hash: &'a ContentHash,
    ) -> impl Iterator<Item = (usize, &'a str, &'a File)> + 'a {
        self.maildirs.iter().enumerate().flat_map(move |(m, md)| {
            md.by_hash
                .get(hash)
                .iter()
                .filter_map(move |name| Some((m, name.as_ref(), md.files.get(name)?)))
        })
    }

    /// True when some file holds `hash`.
    pub(super) fn holds(&self, hash: &ContentHash) -> bool {
        self.maildirs.iter().any(|m| m.by_hash.contains(hash))
    }

    /// Makes `files` (a full scan's) what is known of `maildir`; returns
    /// what was known before.
    pub(super) fn replace_maildir(&mut self, maildir: usize, files: MaildirFiles) -> MaildirFiles {
        match self.maildirs.get_mut(maildir) {
            Some(m) => std::mem::replace(m, files),
            None => files,
        }
    }

    /// Files per maildir.
    pub(super) fn counts(&self) -> Vec<usize> {
        self.maildirs.iter().map(|m| m.files.len()).collect()
    }

    /// Every hash some file holds (a hash in two maildirs comes twice).
    pub(super) fn hashes(&self) -> impl Iterator<Item = &ContentHash> {
        self.maildirs.iter().flat_map(|m| m.by_hash.hashes())
    }
}

/// One listed cloud message as the engine knows it (its id is its key in
/// [`Listing::entries`]).
#[derive(Clone, Debug)]
pub(super) struct Listed {
    /// Its flags as listed (with the effects of our actions applied).
    pub flags: Flags,
    /// The Message-ID header, when known.
    pub email_id: Option<ArcStr>,
    /// Received time, seconds since the epoch ([`NO_TIME`] when not
    /// known): 8 bytes instead of an `Option`'s 16, per listed message.
    received: i64,
    /// Its content, once known (id cache or download).
    pub hash: Option<ContentHash>,
    /// Where the config routes it, once asked (asked again when the entry
    /// changes), as [`Listed::route`] decodes it.
    route: u32,
}

/// [`Listed`]'s received time when the listing did not give one.
const NO_TIME: i64 = i64::MIN;

/// [`Listed`]'s route before the config was asked, and after it failed;
/// a maildir index `i` is stored as `i + 2`.
const NOT_ROUTED: u32 = 0;
const ROUTE_FAILED: u32 = 1;

impl Listed {
    /// A new listing entry whose content and route are not known yet.
    fn of(e: CloudEntry) -> Listed {
        Listed {
            flags: e.flags,
            email_id: e.email_id,
            received: e.received_time.unwrap_or(NO_TIME),
            hash: None,
            route: NOT_ROUTED,
        }
    }

    /// Received time, seconds since the epoch, when known.
    pub(super) fn received_time(&self) -> Option<i64> {
        (self.received != NO_TIME).then_some(self.received)
    }

    /// Fills in the received time when the listing had none.
    pub(super) fn learn_received_time(&mut self, t: Option<i64>) {
        if self.received == NO_TIME {
            self.received = t.unwrap_or(NO_TIME);
        }
    }

    /// Where the config routes it, once asked.
    pub(super) fn route(&self) -> Option<Route> {
        match self.route {
            NOT_ROUTED => None,
            ROUTE_FAILED => Some(Route::Failed),
            n => Some(Route::Maildir((n - 2) as usize)),
        }
    }

    /// Records the config's answer (`None`: ask again).
    pub(super) fn set_route(&mut self, route: Option<Route>) {
        self.route = match route {
            None => NOT_ROUTED,
            // A maildir index past u32 (never: maildirs are configured by
            // hand) would read as a failed route and be asked again.
            Some(Route::Maildir(i)) => u32::try_from(i)
                .ok()
                .and_then(|i| i.checked_add(2))
                .unwrap_or(ROUTE_FAILED),
            Some(Route::Failed) => ROUTE_FAILED,
        };
    }

    /// True when `e` lists what this entry says (its id aside).
    fn lists_as(&self, e: &CloudEntry) -> bool {
        self.flags == e.flags
            && self.email_id.as_deref() == e.email_id.as_deref()
            && self.received_time() == e.received_time
    }

    /// Takes in what `e` lists now; the route is asked again.
    fn update(&mut self, e: CloudEntry) {
        self.flags = e.flags;
        self.email_id = e.email_id;
        self.received = e.received_time.unwrap_or(NO_TIME);
        self.route = NOT_ROUTED;
    }
}

/// A folder's messages: what the last list call returned, with the effects
/// of the actions taken since applied.
#[derive(Debug)]
pub(super) struct Listing {
    /// By message id (the key's allocation shared with the by-hash index).
    pub entries: HashMap<ArcStr, Listed>,
    /// Changes whenever the picture changes (a list call, applied effects).
    pub version: u64,
    /// Deletions sent since the last list call: not sent again until a
    /// listing shows whether they took effect.
    pub sent_deletions: HashSet<String>,
    /// Listed ids whose content is not known yet (being downloaded, or to
    /// be downloaded again after a failure).
    pub unresolved: HashSet<String>,
}

/// What taking in a new listing changed.
#[derive(Debug, Default)]
pub(super) struct Relisted {
    /// Hashes whose cloud copies changed (new flags, gone, deletion sent).
    pub dirty: HashSet<ContentHash>,
    /// Listed ids whose content is not known (new ones, and ones still
    /// unresolved): look them up, or download them.
    pub unresolved: Vec<String>,
    /// Ids gone from the listing, with their content if it was known.
    pub gone: Vec<(String, Option<ContentHash>)>,
}

/// Every folder's listing, and the listed copies by hash.
#[derive(Debug)]
pub(super) struct CloudIndex {
    listings: Vec<Option<Listing>>,
    by_hash: ByHash<(usize, ArcStr)>,
}

impl CloudIndex {
    /// No listing yet for `folders` folders.
    pub(super) fn new(folders: usize) -> CloudIndex {
        CloudIndex {
            listings: (0..folders).map(|_| None).collect(),
            by_hash: ByHash::default(),
        }
    }

    /// Folder `i`'s listing, if it was listed.
    pub(super) fn listing(&self, i: usize) -> Option<&Listing> {
        self.listings.get(i).and_then(Option::as_ref)
    }

    /// Folder `i`'s listing, mutably.
    pub(super) fn listing_mut(&mut self, i: usize) -> Option<&mut Listing> {
        self.listings.get_mut(i).and_then(Option::as_mut)
    }

    /// Takes in a new listing of folder `i`: entries that did not change
    /// keep their hash and route; the rest are reported.
    pub(super) fn relist(&mut self, i: usize, entries: Vec<CloudEntry>, version: u64) -> Relisted {
        let mut out = Relisted::default();
        let old = self.listings[i].take();
        // A deletion sent is planned again against the new picture.
        let mut old_entries = match old {
            Some(l) => {
                for id in &l.sent_deletions {
                    if let Some(h) = l.entries.get(id.as_str()).and_then(|x| x.hash) {
                        out.dirty.insert(h);
                    }
                }
                l.entries
            }
            None => HashMap::new(),
        };
        let mut listing = Listing {
            entries: HashMap::with_capacity(entries.len()),
            version,
            sent_deletions: HashSet::new(),
            unresolved: HashSet::new(),
        };
        for e in entries {
            let (key, was) = match old_entries.remove_entry(&*e.id) {
                Some((key, was)) => (key, Some(was)),
                None => (e.id.clone(), None),
            };
            let id = (was.as_ref().is_none_or(|w| w.hash.is_none())).then(|| e.id.to_string());
            let listed = match was {
                Some(was) if was.lists_as(&e) => was,
                Some(mut was) => {
                    if let Some(h) = was.hash {
                        out.dirty.insert(h);
                    }
                    was.update(e);
                    was
                }
                None => Listed::of(e),
            };
            if let Some(id) = id {
                listing.unresolved.insert(id.clone());
                out.unresolved.push(id);
            }
            listing.entries.insert(key, listed);
        }
        for (id, was) in old_entries {
            if let Some(h) = was.hash {
                self.by_hash.remove(&h, &(i, id.clone()));
                out.dirty.insert(h);
            }
            out.gone.push((id.to_string(), was.hash));
        }
        self.listings[i] = Some(listing);
        out
    }

    /// Takes in what changed in folder `i` since its listing (entries new
    /// or changed, ids gone), as [`CloudIndex::relist`] would for the whole
    /// new listing. `None` when the folder has no listing to change.
    pub(super) fn apply_changes(
        &mut self,
        i: usize,
        upsert: Vec<CloudEntry>,
        gone: Vec<String>,
        version: u64,
    ) -> Option<Relisted> {
        let l = self.listings.get_mut(i)?.as_mut()?;
        let mut out = Relisted::default();
        for id in std::mem::take(&mut l.sent_deletions) {
            if let Some(h) = l.entries.get(id.as_str()).and_then(|x| x.hash) {
                out.dirty.insert(h);
            }
        }
        l.version = version;
        for e in upsert {
            match l.entries.get_mut(&*e.id) {
                Some(was) if was.lists_as(&e) => {}
                Some(was) => {
                    if let Some(h) = was.hash {
                        out.dirty.insert(h);
                    } else {
                        out.unresolved.push(e.id.to_string());
                    }
                    was.update(e);
                }
                None => {
                    out.unresolved.push(e.id.to_string());
                    l.unresolved.insert(e.id.to_string());
                    l.entries.insert(e.id.clone(), Listed::of(e));
                }
            }
        }
        for id in gone {
            let Some((key, was)) = l.entries.remove_entry(id.as_str()) else {
                continue;
            };
            l.unresolved.remove(&id);
            if let Some(h) = was.hash {
                self.by_hash.remove(&h, &(i, key));
                out.dirty.insert(h);
            }
            out.gone.push((id, was.hash));
        }
        Some(out)
    }

    /// Records that message `id` of folder `i` holds `hash`; false when
    /// the folder no longer lists it.
    pub(super) fn resolve(&mut self, i: usize, id: &str, hash: ContentHash) -> bool {
        let Some(l) = self.listings.get_mut(i).and_then(Option::as_mut) else {
            return false;
        };
        let Some(key) = l.entries.get_key_value(id).map(|(k, _)| k.clone()) else {
            return false;
        };
        let Some(listed) = l.entries.get_mut(id) else {
            return false;
        };
        l.unresolved.remove(id);
        if l.unresolved.is_empty() && l.unresolved.capacity() > 0 {
            // A full listing's worth of ids was unresolved: not kept
            // allocated for the rest of the run.
            l.unresolved = HashSet::new();
        }
        if let Some(old) = listed.hash.replace(hash)
            && old != hash
        {
            self.by_hash.remove(&old, &(i, key.clone()));
        }
        self.by_hash.add(hash, (i, key));
        true
    }

    /// The listed copies of `hash`, as (folder, id, entry).
    pub(super) fn copies_of(
        &self,
        hash: &ContentHash,
    ) -> impl Iterator<Item = (usize, &str, &Listed)> {
        self.by_hash.get(hash).iter().filter_map(|(i, id)| {
            self.listing(*i)
                .and_then(|l| l.entries.get(&**id))
                .map(|x| (*i, &**id, x))
        })
    }

    /// The listed copies of `hash`, mutably (to record routes).
    pub(super) fn copy_mut(&mut self, folder: usize, id: &str) -> Option<&mut Listed> {
        self.listing_mut(folder)?.entries.get_mut(id)
    }

    /// True when some listing holds `hash`.
    pub(super) fn holds(&self, hash: &ContentHash) -> bool {
        self.by_hash.contains(hash)
    }

    /// Every hash some listing holds.
    pub(super) fn hashes(&self) -> impl Iterator<Item = &ContentHash> {
        self.by_hash.hashes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Flags;

    fn h(n: u8) -> ContentHash {
        ContentHash([n; 32])
    }

    fn e(id: &str, flags: Flags) -> CloudEntry {
        CloudEntry {
            id: id.into(),
            email_id: None,
            flags,
            received_time: None,
            size: None,
        }
    }

    #[test]
    fn a_listed_message_is_small_and_keeps_its_route_and_time() {
        // Kept for every listed message between cycles.
        assert!(std::mem::size_of::<Listed>() <= 56);
        let mut l = Listed::of(e("a", Flags::NONE));
        assert_eq!((l.route(), l.received_time()), (None, None));
        for r in [
            Some(Route::Maildir(0)),
            Some(Route::Maildir(7)),
            Some(Route::Failed),
            None,
        ] {
            l.set_route(r);
            assert_eq!(l.route(), r);
        }
        l.learn_received_time(Some(-5));
        l.learn_received_time(Some(9));
        assert_eq!(l.received_time(), Some(-5), "a known time stays");
    }

    #[test]
    fn relisting_reports_what_changed_and_keeps_the_rest() {
        let mut c = CloudIndex::new(1);
        let r = c.relist(0, vec![e("a", Flags::NONE), e("b", Flags::NONE)], 1);
        assert_eq!(r.unresolved.len(), 2);
        assert!(c.resolve(0, "a", h(1)));
        assert!(c.resolve(0, "b", h(2)));
        c.copy_mut(0, "a")
            .unwrap()
            .set_route(Some(Route::Maildir(0)));
        let r = c.relist(
            0,
            vec![
                e("a", Flags::NONE),
                e("b", Flags::READ),
                e("c", Flags::NONE),
            ],
            2,
        );
        assert_eq!(r.unresolved, vec!["c".to_string()]);
        assert_eq!(r.dirty, HashSet::from_iter([h(2)]));
        assert!(r.gone.is_empty());
        let a = c.listing(0).unwrap().entries.get("a").unwrap();
        assert_eq!((a.hash, a.route()), (Some(h(1)), Some(Route::Maildir(0))));
        assert_eq!(c.listing(0).unwrap().entries["b"].route(), None);
        let r = c.relist(0, vec![e("b", Flags::READ)], 3);
        assert_eq!(r.dirty, HashSet::from_iter([h(1)]));
        assert_eq!(r.gone.len(), 2, "a (known) and c (never resolved)");
        assert!(!c.holds(&h(1)));
        assert_eq!(c.copies_of(&h(2)).count(), 1);
    }

    #[test]
    fn changes_apply_like_a_relisting() {
        let mut c = CloudIndex::new(2);
        assert!(c.apply_changes(0, Vec::new(), Vec::new(), 1).is_none());
        c.relist(0, vec![e("a", Flags::NONE), e("b", Flags::NONE)], 1);
        assert!(c.resolve(0, "a", h(1)));
        assert!(c.resolve(0, "b", h(2)));
        c.copy_mut(0, "a")
            .unwrap()
            .set_route(Some(Route::Maildir(0)));
        c.copy_mut(0, "b")
            .unwrap()
            .set_route(Some(Route::Maildir(0)));
        let r = c
            .apply_changes(
                0,
                vec![
                    e("a", Flags::NONE),
                    e("b", Flags::READ),
                    e("c", Flags::NONE),
                ],
                vec!["zz".into()],
                2,
            )
            .unwrap();
        assert_eq!(r.unresolved, vec!["c".to_string()]);
        assert_eq!(r.dirty, HashSet::from_iter([h(2)]));
        assert!(r.gone.is_empty(), "an unknown id going is nothing");
        let l = c.listing(0).unwrap();
        assert_eq!(l.version, 2);
        assert_eq!(
            l.entries["a"].route(),
            Some(Route::Maildir(0)),
            "unchanged keeps its route"
        );
        assert_eq!(l.entries["b"].route(), None, "changed is routed again");
        assert_eq!(l.entries["b"].flags, Flags::READ);
        assert!(l.unresolved.contains("c"));
        let r = c
            .apply_changes(0, Vec::new(), vec!["a".into(), "c".into()], 3)
            .unwrap();
        assert_eq!(r.dirty, HashSet::from_iter([h(1)]));
        assert_eq!(r.gone.len(), 2);
        assert!(!c.holds(&h(1)));
        assert!(!c.listing(0).unwrap().unresolved.contains("c"));
        assert_eq!(c.copies_of(&h(2)).count(), 1);
    }

    #[test]
    fn local_index_counts_and_groups_by_hash() {
        use crate::fsutil::InodeKey;
        use crate::maildir::Subdir;
        let entry = |name: &str| Entry {
            path: format!("/m/cur/{name}").into(),
            subdir: Subdir::Cur,
            base: name.into(),
            flags: Flags::NONE,
            other: String::new(),
            key: InodeKey::default(),
        };
        let mut l = LocalIndex::new(2);
        assert_eq!(l.put(0, entry("x"), h(1)), None);
        assert_eq!(l.put(1, entry("y"), h(1)), None);
        assert_eq!(l.put(1, entry("y"), h(2)), Some(h(1)));
        assert_eq!(l.counts(), [1, 1]);
        assert_eq!(l.files_of(&h(1)).count(), 1);
        let old = l.replace_maildir(0, MaildirFiles::of_scan(vec![(entry("z"), h(3))]));
        assert!(old.by_hash.contains(&h(1)));
        assert!(!l.holds(&h(1)));
        assert!(l.get(0, "cur/z").is_some());
        assert_eq!(
            l.files_of(&h(3))
                .map(|(m, n, _)| (m, n))
                .collect::<Vec<_>>(),
            [(0, "cur/z")]
        );
        assert_eq!(l.remove(1, "cur/y").map(|f| f.hash), Some(h(2)));
        assert_eq!(l.counts(), [1, 0]);
    }
}
