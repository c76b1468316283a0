//! Tests of the message store: blobs, caches, persistence and coexistence
//! with the Python program's files.

use super::*;
use crate::maildir::Maildir;
use crate::types::Flags;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

fn cid(sid: &str) -> Cid {
    Cid {
        kind: StorageKind::Office365,
        storage_id: sid.into(),
        email_id: Some(format!("<{sid}@x>")),
    }
}

#[test]
fn open_creates_private_layout_and_locks() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mail").join(".cms");
    let store = Store::open(&root).unwrap();
    for d in [
        root.clone(),
        root.join("blobs"),
        root.join("state"),
        root.join("tmp"),
    ] {
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o7777,
            0o700,
            "{d:?}"
        );
    }
    assert!(matches!(Store::open(&root), Err(StoreError::Locked { .. })));
    drop(store);
    Store::open(&root).unwrap();
}

#[test]
fn insert_link_adopt_and_retain() {
    insert_link_adopt_and_retain_with(false);
}

/// The same answers with the blob list out of memory (`blobs/` answers).
#[test]
fn insert_link_adopt_and_retain_cool() {
    insert_link_adopt_and_retain_with(true);
}

fn insert_link_adopt_and_retain_with(cool: bool) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("cms")).unwrap();
    if cool {
        assert!(store.take_warm().is_some(), "open reads the blob list");
    }
    let h = store.insert_bytes(b"Subject: x\r\n\r\nhi\r\n").unwrap();
    assert_eq!(h, hash_bytes(b"Subject: x\n\nhi\n"));
    assert!(store.have(&h));
    assert_eq!(
        fs::read(store.blob_path(&h)).unwrap(),
        b"Subject: x\r\n\r\nhi\r\n"
    );
    // Same content again: one blob, temp dropped.
    assert_eq!(store.insert_bytes(b"Subject: x\n\nhi\n").unwrap(), h);
    assert_eq!(store.blob_count(), 1);
    assert!(
        fs::read_dir(dir.path().join("cms/tmp"))
            .unwrap()
            .next()
            .is_none()
    );

    // insert_file on a temp filled by hand.
    let mut t = store.temp_file().unwrap();
    t.write_all(b"other").unwrap();
    let h2 = store.insert_file(t.path()).unwrap();
    assert_eq!(h2, hash_bytes(b"other"));
    assert!(!t.path().exists());
    drop(t);

    // Deliver by link into a maildir.
    let md = Maildir::create(&dir.path().join("md")).unwrap();
    let e = md
        .deliver_link(&store.blob_path(&h), &Maildir::new_base_name(), Flags::READ)
        .unwrap();
    store.record_inode(e.key, h);
    let dest = dir.path().join("md/tmp/x");
    store.link_to(&h2, &dest).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), b"other");

    // The blob goes; the maildir copy can bring it back.
    let live: HashSet<ContentHash> = [h2].into_iter().collect();
    assert_eq!(store.retain(&live).unwrap(), 1);
    assert!(!store.have(&h));
    assert!(!store.blob_path(&h).exists());
    assert!(e.path.exists());
    assert!(matches!(
        store.link_to(&h, &dir.path().join("y")),
        Err(StoreError::MissingBlob { .. })
    ));
    assert!(store.adopt_from(&e.path, &h).unwrap());
    assert!(!store.adopt_from(&e.path, &h).unwrap());
    assert!(store.have(&h));
    assert_eq!(
        fs::read(store.blob_path(&h)).unwrap(),
        b"Subject: x\r\n\r\nhi\r\n"
    );
    assert_eq!(store.blob_count(), 2);

    // An id answers only while its blob is there.
    store.record_id(cid("a"), h);
    let stored = |store: &Store| {
        store.resolve_ids(StorageKind::Office365, [("a", Some("<a@x>"))].into_iter())
    };
    assert_eq!(stored(&store), vec![Some(h)]);
    assert_eq!(store.drop_unreferenced(&[h]).unwrap(), 1);
    assert_eq!(stored(&store), vec![None]);
    assert!(!store.have(&h) && !store.blob_path(&h).exists());
    assert_eq!(store.blob_count(), 1);
    assert_eq!(store.take_warm().is_some(), !cool);
}

#[test]
fn temp_blob_dropped_without_insert_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut t = store.temp_file().unwrap();
    t.write_all(b"partial").unwrap();
    let p = t.path().to_path_buf();
    assert!(p.exists());
    drop(t);
    assert!(!p.exists());
    assert_eq!(store.blob_count(), 0);
}

#[test]
fn ids_persist_and_loose_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let h = hash_bytes(b"m");
    {
        let store = Store::open(dir.path()).unwrap();
        store.record_id(cid("a"), h);
        store.save().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.lookup_id(&cid("a")), Some(h));
    assert_eq!(
        store.lookup_storage_id(StorageKind::Office365, "a"),
        Some(h)
    );
    assert_eq!(store.lookup_storage_id(StorageKind::Gmail, "a"), None);
    assert_eq!(store.id_count(), 1);
}

/// Writes `n` small messages straight into `md`'s `cur/`.
fn fill_maildir(md: &Maildir, n: usize) {
    let cur = md.subdir_path(crate::maildir::Subdir::Cur);
    for i in 0..n {
        fs::write(
            cur.join(format!("{i}.M0P1Q{i}.host:2,S")),
            format!("Subject: {i}\r\n\r\nbody {i}\r\n"),
        )
        .unwrap();
    }
}

/// Hashes every file of a scan through the store.
fn hash_all(store: &Store, md: &Maildir) -> BTreeMap<String, ContentHash> {
    let scan = md.scan().unwrap();
    assert!(!scan.changed);
    scan.entries
        .iter()
        .map(|e| {
            (
                e.base.clone(),
                store.hash_for_file(&e.path, &e.key).unwrap(),
            )
        })
        .collect()
}

#[test]
fn restart_rehashes_nothing() {
    const N: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let md = Maildir::create(&dir.path().join("md")).unwrap();
    fill_maildir(&md, N);
    let first = {
        let store = Store::open(&dir.path().join("cms")).unwrap();
        let hashes = hash_all(&store, &md);
        assert_eq!(store.hashes_performed(), N as u64);
        // A second pass in the same run is served from the cache too.
        assert_eq!(hash_all(&store, &md), hashes);
        assert_eq!(store.hashes_performed(), N as u64);
        store.save().unwrap();
        hashes
    };
    assert_eq!(first.len(), N);
    let store = Store::open(&dir.path().join("cms")).unwrap();
    assert_eq!(store.inode_count(), N);
    assert_eq!(hash_all(&store, &md), first);
    assert_eq!(store.hashes_performed(), 0);

    // Touching one file (new ctime) costs exactly one re-hash.
    let e = md.scan().unwrap().entries.pop().unwrap();
    let renamed = md.set_flags(&e, Flags::READ | Flags::FLAGGED).unwrap();
    assert_eq!(
        store.hash_for_file(&renamed.path, &renamed.key).unwrap(),
        first[&e.base]
    );
    assert_eq!(store.hashes_performed(), 1);
}

/// Records one more id (`id<n>`) and saves the store.
#[test]
fn damaged_database_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cms");
    {
        let store = Store::open(&root).unwrap();
        store.insert_bytes(b"kept blob").unwrap();
        store.record_id(cid("id1"), hash_bytes(b"kept blob"));
        store.save().unwrap();
    }
    let db = root.join("state").join(db::FILE);
    for junk in [&b"not a database at all, just text"[..], &[0u8; 8192][..]] {
        let _ = fs::remove_file(root.join("state/state.db-wal"));
        fs::write(&db, junk).unwrap();
        let store = Store::open(&root).unwrap();
        assert_eq!(store.id_count(), 0);
        assert_eq!(store.blob_count(), 1, "blobs are never deleted");
        store.record_id(cid("id2"), hash_bytes(b"kept blob"));
        store.save().unwrap();
        drop(store);
        assert_eq!(Store::open(&root).unwrap().id_count(), 1);
    }
    let aside = fs::read_dir(root.join("state"))
        .unwrap()
        .filter(|d| {
            d.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("state.db.damaged-")
        })
        .count();
    assert!(aside >= 1, "the damaged file is kept for inspection");
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cms");
    drop(Store::open(&root).unwrap());
    let conn = rusqlite::Connection::open(root.join("state").join(db::FILE)).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = Store::open(&root).unwrap_err();
    assert!(
        matches!(err, StoreError::DbVersion { found: 99, .. }),
        "{err}"
    );
}

/// The state files a v0.1 daemon wrote after syncing 6 Office365 and 6
/// Gmail messages (the demo, scaled down).
fn v01_state(root: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration/data/v0.1-state");
    fs::create_dir_all(root.join("state")).unwrap();
    for f in ["ids.json", "inodes.json", "sync.json"] {
        fs::copy(src.join(f), root.join("state").join(f)).unwrap();
    }
}

#[test]
fn v01_caches_are_imported_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cms");
    v01_state(&root);
    let store = Store::open(&root).unwrap();
    assert_eq!(store.id_count(), 12);
    assert_eq!(
        store.inode_count(),
        12,
        "a blob and its maildir file are one inode"
    );
    let id = Cid {
        kind: StorageKind::Office365,
        storage_id: "AAkALgAZ0KX2Y_ryB7qbXt3ez44Hvwnsww71VUjB6iGwFyRW05zQufoBsWeUNL3aEPUr5Art_b-M4_aiNlhzxCcD_9KSVD".into(),
        email_id: Some("<a389008aad0acc80.1@example.se>".into()),
    };
    assert_eq!(
        store.lookup_id(&id).map(|h| h.to_hex()).as_deref(),
        Some("792366aa0ae02fad159d98717bcf58c3d33119d1873673d4ff8d700be04bdb31")
    );
    for f in ["ids.json", "inodes.json"] {
        assert!(
            !root.join("state").join(f).exists(),
            "{f} removed after the import"
        );
    }
    assert!(
        root.join("state/sync.json").exists(),
        "the agreement is the engine's to import"
    );
    drop(store);
    // The files back (as after a crash between the commit and the
    // removal), with other content: not imported again, just removed.
    fs::write(
        root.join("state/ids.json"),
        statefile::encode("ids", b"[[\"gmail\",\"zz\",null,\"00\"]]"),
    )
    .unwrap();
    let store = Store::open(&root).unwrap();
    assert_eq!(store.id_count(), 12);
    assert!(!root.join("state/ids.json").exists());
}

#[test]
fn damaged_v01_file_falls_back_to_its_previous_generation() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cms");
    v01_state(&root);
    let ids = root.join("state/ids.json");
    let good = fs::read(&ids).unwrap();
    fs::write(root.join("state/ids.json.prev"), &good).unwrap();
    let mut flipped = good.clone();
    let n = flipped.len() - 5;
    flipped[n] ^= 1;
    fs::write(&ids, &flipped).unwrap();
    let store = Store::open(&root).unwrap();
    assert_eq!(store.id_count(), 12);
    assert!(!root.join("state/ids.json.prev").exists());
}

#[test]
fn python_files_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join(".cms");
    fs::create_dir_all(root.join("hashes")).unwrap();
    let py_files = [
        (
            root.join("hashes/0123456789abcdef0123456789abcdef01234567"),
            b"sha1 named".to_vec(),
        ),
        (root.join("hashes/not-a-hash"), b"junk".to_vec()),
        (
            root.join("ch-0000000000000000000000000000000000000000"),
            b"pickle".to_vec(),
        ),
        (root.join("ch-bad"), b"bad pickle".to_vec()),
    ];
    for (p, data) in &py_files {
        fs::write(p, data).unwrap();
    }
    {
        let store = Store::open(&root).unwrap();
        let h = store.insert_bytes(b"ours").unwrap();
        store.record_id(cid("x"), h);
        store.save().unwrap();
        store.retain(&HashSet::new()).unwrap();
        store.save().unwrap();
        assert_eq!(store.blob_count(), 0);
    }
    Store::open(&root).unwrap();
    for (p, data) in &py_files {
        assert_eq!(&fs::read(p).unwrap(), data, "{p:?}");
    }
    let mut top: Vec<String> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(
        top,
        [
            "blobs",
            "ch-0000000000000000000000000000000000000000",
            "ch-bad",
            "hashes",
            "state",
            "tmp"
        ]
    );
    assert_eq!(fs::read_dir(root.join("hashes")).unwrap().count(), 2);
}

#[test]
fn stale_temp_files_are_cleared_on_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    fs::write(dir.path().join("tmp/123.4"), b"half a message").unwrap();
    Store::open(dir.path()).unwrap();
    assert!(
        fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn downloads_stay_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cms");
    let store = Store::open(&root).unwrap();
    let mut tmp = store.temp_file().unwrap();
    tmp.write_all(b"Subject: d\n\nbody\n").unwrap();
    let h = store.adopt_download(tmp, cid("d1")).unwrap();
    // Committed at once: a new process (after a crash) knows it.
    drop(store);
    let store = Store::open(&root).unwrap();
    assert_eq!(store.lookup_id(&cid("d1")), Some(h));
    let mut tmp = store.temp_file().unwrap();
    tmp.write_all(b"Subject: d2\n\nbody\n").unwrap();
    let h2 = store.adopt_download(tmp, cid("d2")).unwrap();
    // Pinned: a retain that does not know it yet keeps it.
    assert_eq!(store.retain(&[h].into_iter().collect()).unwrap(), 0);
    assert!(store.blob_path(&h2).exists());
    assert_eq!(store.lookup_id(&cid("d2")), Some(h2));
    store.release(&[h2]);
    assert_eq!(store.retain(&[h].into_iter().collect()).unwrap(), 1);
    assert!(!store.blob_path(&h2).exists());
}

/// The id cache answers the same whether the table is in memory (a large
/// batch) or read row by row from the database, with ids recorded since
/// the last commit taking precedence in both, and a retain dropping the
/// ids of content nothing references in both.
#[test]
fn ids_answer_the_same_from_memory_and_from_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let blobs: Vec<ContentHash> = (0..WARM_BATCH + 10)
        .map(|i| {
            store
                .insert_bytes(format!("Subject: {i}\n\nbody\n").as_bytes())
                .unwrap()
        })
        .collect();
    for (i, h) in blobs.iter().enumerate() {
        store.record_id(cid(&format!("m{i}")), *h);
    }
    // A second Message-ID for one storage id, with other content: only an
    // exact lookup finds either.
    let other = Cid {
        email_id: Some("<other@x>".into()),
        ..cid("m0")
    };
    store.record_id(other.clone(), blobs[1]);
    store.save().unwrap();
    assert!(
        store.cool_ids(),
        "start-up loads the table for the first cycle"
    );
    assert!(!store.cool_ids());

    let ask: Vec<(String, Option<String>)> = (0..WARM_BATCH + 12)
        .map(|i| {
            let c = cid(&format!("m{i}"));
            (c.storage_id, c.email_id)
        })
        .chain([
            ("m0".to_string(), None),
            ("m0".to_string(), Some("<other@x>".to_string())),
        ])
        .collect();
    let asked = || ask.iter().map(|(s, e)| (s.as_str(), e.as_deref()));
    // Row by row (a small batch each), then as one large batch.
    let one_by_one: Vec<Option<ContentHash>> = asked()
        .flat_map(|item| store.resolve_ids(StorageKind::Office365, std::iter::once(item)))
        .collect();
    assert!(!store.cool_ids(), "small batches stay on the database");
    let batch = store.resolve_ids(StorageKind::Office365, asked());
    assert!(store.cool_ids(), "a large batch loads the table");
    assert_eq!(one_by_one, batch);
    assert_eq!(batch[0], Some(blobs[0]));
    assert_eq!(batch[WARM_BATCH + 10], None, "never recorded");
    assert_eq!(
        batch[WARM_BATCH + 12],
        None,
        "two contents for m0: no loose answer"
    );
    assert_eq!(batch[WARM_BATCH + 13], Some(blobs[1]));
    assert_eq!(store.lookup_storage_id(StorageKind::Office365, "m0"), None);
    assert_eq!(
        store.lookup_storage_id(StorageKind::Office365, "m5"),
        Some(blobs[5])
    );

    // A new mapping recorded but not committed wins over the table's.
    store.record_id(cid("m5"), blobs[6]);
    assert_eq!(store.lookup_id(&cid("m5")), Some(blobs[6]));
    assert_eq!(
        store.resolve_ids(StorageKind::Office365, asked())[5],
        Some(blobs[6])
    );
    assert!(store.cool_ids());
    store.save().unwrap();
    assert_eq!(store.lookup_id(&cid("m5")), Some(blobs[6]), "committed");
    assert_eq!(store.id_count(), WARM_BATCH + 11);

    // Retain, from the database and from memory, drops what is not live.
    let live: HashSet<ContentHash> = blobs[2..].iter().copied().collect();
    let known = store.known_cloud_hashes();
    assert!(known.contains(&blobs[0]) && known.contains(&blobs[1]));
    assert_eq!(store.retain(&live).unwrap(), 2);
    assert!(
        !store.known_cloud_hashes().contains(&blobs[0]),
        "drop queued"
    );
    store.save().unwrap();
    assert_eq!(store.lookup_id(&cid("m0")), None);
    assert_eq!(store.lookup_id(&other), None);
    let _ = store.resolve_ids(StorageKind::Office365, asked());
    let live: HashSet<ContentHash> = blobs[3..].iter().copied().collect();
    assert_eq!(store.retain(&live).unwrap(), 1);
    store.save().unwrap();
    assert_eq!(store.resolve_ids(StorageKind::Office365, asked())[2], None);
    assert!(store.cool_ids());
    assert_eq!(store.lookup_id(&cid("m2")), None);
    assert_eq!(store.lookup_id(&cid("m3")), Some(blobs[3]));
    assert_eq!(store.id_count(), WARM_BATCH + 10 - 3);
}

/// The inode cache answers the same whether the table is in memory (a full
/// scan) or read row by row from the database: a version recorded since the
/// last commit wins over the table's row for its inode, a newer version of
/// an inode hides the older, and a retain drops what nothing references.
#[test]
fn inodes_answer_the_same_from_memory_and_from_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let key = |ino: u64, ctime_ns: i64| InodeKey {
        dev: 3,
        ino,
        size: 10,
        mtime_ns: 5,
        ctime_ns,
    };
    let h = |n: u8| ContentHash([n; 32]);
    for i in 0..20u8 {
        store.record_inode(key(i.into(), 100), h(i));
    }
    store.save().unwrap();
    // Versions to ask about: cached ones, newer ones, unknown inodes.
    let asked: Vec<InodeKey> = (0..25u64)
        .map(|i| key(i, 100))
        .chain([key(3, 101), key(4, 99)])
        .collect();
    let answers = |store: &Store| -> Vec<Option<ContentHash>> {
        asked.iter().map(|k| store.cached_hash(k)).collect()
    };
    let warm = answers(&store);
    assert!(store.cool_inodes(), "start-up loads the table for its scan");
    assert!(!store.cool_inodes());
    assert_eq!(answers(&store), warm, "the database answers the same");
    assert_eq!(warm[3], Some(h(3)));
    assert_eq!(warm[22], None, "never recorded");
    assert_eq!(warm[25], None, "another version of a cached inode");

    // A newer version recorded, not committed: it hides the table's row.
    store.record_inode(key(3, 101), h(30));
    let cold = answers(&store);
    assert_eq!((cold[3], cold[25]), (None, Some(h(30))));
    store.warm_inodes();
    assert_eq!(answers(&store), cold);
    store.save().unwrap();
    assert_eq!(answers(&store), cold, "committed, in memory");
    assert!(store.cool_inodes());
    assert_eq!(answers(&store), cold, "committed, from the database");
    assert_eq!(store.inode_count(), 20);

    // Retain drops what is not live, from the database and from memory.
    let live: HashSet<ContentHash> = (2..20u8).map(h).chain([h(30)]).collect();
    store.retain(&live).unwrap();
    store.save().unwrap();
    assert_eq!(store.cached_hash(&key(0, 100)), None);
    assert_eq!(store.cached_hash(&key(2, 100)), Some(h(2)));
    store.warm_inodes();
    let live: HashSet<ContentHash> = (5..20u8).map(h).chain([h(30)]).collect();
    store.retain(&live).unwrap();
    store.save().unwrap();
    assert!(store.cool_inodes());
    assert_eq!(store.cached_hash(&key(2, 100)), None);
    assert_eq!(store.cached_hash(&key(3, 101)), Some(h(30)));
    assert_eq!(store.inode_count(), 16);
}
