//! The persisted last agreement: the planner's [`LastState`] as rows of the
//! state database (`agreement`, `agreement_cloud`, `maildirs`, `folders`),
//! with maildirs and cloud folders named by stable keys (path,
//! `kind:user/name`) instead of config indexes, so editing the config
//! (reordering, adding, removing) maps the old agreement onto the new
//! indexes and drops what no longer applies. A save writes the rows that
//! changed, never the whole agreement. A v0.1 `sync.json` is imported once.

use std::collections::{BTreeMap, HashMap};

use rusqlite::{Transaction, params};
use serde::Deserialize;

use super::plan::{CloudBase, LastEntry, LastState};
use crate::store::db::hash_from;
use crate::store::statefile::StateFile;
use crate::store::{Store, StoreError, import};
use crate::types::{ContentHash, Flags};

/// v0.1's `sync.json` body.
#[derive(Debug, Default, Deserialize)]
struct V01 {
    /// Key of each maildir index used in `state`.
    maildirs: Vec<String>,
    /// Key of each cloud folder index used in `state`.
    mailboxes: Vec<String>,
    /// The agreement, by the indexes above.
    state: LastState,
    /// Opaque per-folder cursors of the backends (delta links, history ids).
    #[serde(default)]
    cursors: BTreeMap<String, serde_json::Value>,
}

/// What a start-up reads: the agreement re-indexed to the config, and the
/// backends' cursors by folder key.
pub type Loaded = (LastState, BTreeMap<String, serde_json::Value>);

/// The database ids of the configured maildirs and folders, in config order.
#[derive(Clone, Debug)]
pub struct SyncState {
    maildir_ids: Vec<i64>,
    folder_ids: Vec<i64>,
}

impl SyncState {
    /// Opens the agreement for the given maildir and folder keys (in config
    /// order): imports a v0.1 `sync.json` once, registers new keys, drops
    /// the rows of maildirs and folders no longer configured, and loads the
    /// rest. Blocking.
    pub fn open(
        store: &Store,
        maildirs: &[String],
        mailboxes: &[String],
    ) -> Result<(SyncState, Loaded), StoreError> {
        let state_dir = store.dir().join("state");
        store.with_db(|db| {
            let file = StateFile::new(&state_dir, "sync.json", "sync");
            import::once(db, "agreement", &[&file], |tx| {
                import_v01(tx, file.load::<V01>())
            })?;
            let (md_ids, fd_ids) = db.commit(|tx| {
                let md = register(tx, "maildirs", "path", maildirs)?;
                let fd = register(tx, "folders", "key", mailboxes)?;
                forget_unconfigured(tx, &md, &fd)?;
                Ok((md, fd))
            })?;
            let st = SyncState {
                maildir_ids: md_ids,
                folder_ids: fd_ids,
            };
            let loaded = st.load(db.conn()).map_err(|e| db.err(e))?;
            Ok((st, loaded))
        })
    }

    fn load(&self, conn: &rusqlite::Connection) -> rusqlite::Result<Loaded> {
        let md: HashMap<i64, usize> = index_of(&self.maildir_ids);
        let fd: HashMap<i64, usize> = index_of(&self.folder_ids);
        let mut entries = BTreeMap::new();
        let mut stmt = conn.prepare("SELECT hash, flags, maildir, local FROM agreement")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let Some(&maildir) = md.get(&r.get::<_, i64>(2)?) else {
                continue;
            };
            entries.insert(
                hash_from(r.get(0)?)?,
                LastEntry {
                    flags: Flags(r.get(1)?),
                    maildir,
                    local: Flags(r.get(3)?),
                    cloud: Vec::new(),
                },
            );
        }
        let mut stmt = conn.prepare("SELECT hash, folder, id, flags FROM agreement_cloud")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let hash = hash_from(r.get(0)?)?;
            let (Some(e), Some(&mailbox)) = (entries.get_mut(&hash), fd.get(&r.get::<_, i64>(1)?))
            else {
                continue;
            };
            e.cloud.push(CloudBase {
                mailbox,
                id: r.get(2)?,
                flags: Flags(r.get(3)?),
            });
        }
        for e in entries.values_mut() {
            e.cloud.sort();
        }
        let mut counts = vec![0; self.maildir_ids.len()];
        let mut stmt = conn.prepare("SELECT id, agreed_count FROM maildirs")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            if let Some(&i) = md.get(&r.get::<_, i64>(0)?) {
                counts[i] = r.get::<_, i64>(1)? as usize;
            }
        }
        let mut cursors = BTreeMap::new();
        let mut stmt =
            conn.prepare("SELECT id, key, cursor FROM folders WHERE cursor IS NOT NULL")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            if !fd.contains_key(&r.get::<_, i64>(0)?) {
                continue;
            }
            let text: String = r.get(2)?;
            match serde_json::from_str(&text) {
                Ok(v) => {
                    cursors.insert(r.get(1)?, v);
                }
                Err(e) => tracing::warn!(
                    folder = %r.get::<_, String>(1)?,
                    "stored cursor is not JSON ({e}); the folder is listed in full"
                ),
            }
        }
        Ok((
            LastState {
                entries,
                maildir_counts: counts,
            },
            cursors,
        ))
    }

    /// Writes into `tx` the rows that differ between `old` (what the
    /// database holds) and `new`, and the given cursors (folder index,
    /// cursor). Returns the number of rows written.
    pub fn write(
        &self,
        tx: &Transaction<'_>,
        old: &LastState,
        new: &LastState,
        cursors: &[(usize, serde_json::Value)],
    ) -> rusqlite::Result<usize> {
        let mut rows = 0;
        for (hash, e) in &new.entries {
            if old.entries.get(hash) != Some(e) {
                rows += self.put(tx, hash, e)?;
            }
        }
        for hash in old.entries.keys() {
            if !new.entries.contains_key(hash) {
                rows += delete_entry(tx, hash)?;
            }
        }
        for (i, id) in self.maildir_ids.iter().enumerate() {
            let n = new.maildir_counts.get(i).copied().unwrap_or(0);
            if old.maildir_counts.get(i).copied().unwrap_or(0) != n {
                rows += tx
                    .prepare_cached("UPDATE maildirs SET agreed_count = ?1 WHERE id = ?2")?
                    .execute(params![n as i64, id])?;
            }
        }
        for (i, cursor) in cursors {
            let Some(id) = self.folder_ids.get(*i) else {
                continue;
            };
            rows += tx
                .prepare_cached("UPDATE folders SET cursor = ?1 WHERE id = ?2")?
                .execute(params![cursor.to_string(), id])?;
        }
        Ok(rows)
    }

    /// Writes one entry (replacing its rows).
    fn put(
        &self,
        tx: &Transaction<'_>,
        hash: &ContentHash,
        e: &LastEntry,
    ) -> rusqlite::Result<usize> {
        let Some(maildir) = self.maildir_ids.get(e.maildir) else {
            return Ok(0);
        };
        let folders: Vec<(i64, &CloudBase)> = e
            .cloud
            .iter()
            .filter_map(|b| self.folder_ids.get(b.mailbox).map(|&f| (f, b)))
            .collect();
        put_rows(tx, hash, e, *maildir, &folders)
    }
}

/// Writes one agreement entry with database ids for its maildir and folders.
fn put_rows(
    tx: &Transaction<'_>,
    hash: &ContentHash,
    e: &LastEntry,
    maildir: i64,
    cloud: &[(i64, &CloudBase)],
) -> rusqlite::Result<usize> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO agreement (hash, flags, maildir, local) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![&hash.0[..], e.flags.0, maildir, e.local.0])?;
    let mut rows = 1;
    rows += tx
        .prepare_cached("DELETE FROM agreement_cloud WHERE hash = ?1")?
        .execute([&hash.0[..]])?;
    for (folder, b) in cloud {
        rows += tx
            .prepare_cached(
                "INSERT OR REPLACE INTO agreement_cloud (hash, folder, id, flags)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![&hash.0[..], folder, b.id, b.flags.0])?;
    }
    Ok(rows)
}

/// Removes one agreement entry.
fn delete_entry(tx: &Transaction<'_>, hash: &ContentHash) -> rusqlite::Result<usize> {
    let a = tx
        .prepare_cached("DELETE FROM agreement WHERE hash = ?1")?
        .execute([&hash.0[..]])?;
    let b = tx
        .prepare_cached("DELETE FROM agreement_cloud WHERE hash = ?1")?
        .execute([&hash.0[..]])?;
    Ok(a + b)
}

/// The row ids of `keys` in `table`, adding the missing ones.
fn register(
    tx: &Transaction<'_>,
    table: &str,
    column: &str,
    keys: &[String],
) -> rusqlite::Result<Vec<i64>> {
    let insert = format!("INSERT INTO {table} ({column}) VALUES (?1) ON CONFLICT DO NOTHING");
    let select = format!("SELECT id FROM {table} WHERE {column} = ?1");
    keys.iter()
        .map(|k| {
            tx.prepare_cached(&insert)?.execute([k])?;
            tx.prepare_cached(&select)?.query_row([k], |r| r.get(0))
        })
        .collect()
}

/// Drops the rows of maildirs and folders that are not configured any more
/// (their agreement no longer applies, as in v0.1).
fn forget_unconfigured(tx: &Transaction<'_>, md: &[i64], fd: &[i64]) -> rusqlite::Result<()> {
    let gone = |table: &str, keep: &[i64]| -> rusqlite::Result<Vec<i64>> {
        let mut stmt = tx.prepare(&format!("SELECT id FROM {table}"))?;
        let ids: Vec<i64> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(ids.into_iter().filter(|i| !keep.contains(i)).collect())
    };
    let (old_md, old_fd) = (gone("maildirs", md)?, gone("folders", fd)?);
    for id in &old_md {
        tx.execute("DELETE FROM agreement WHERE maildir = ?1", [id])?;
        tx.execute("DELETE FROM maildirs WHERE id = ?1", [id])?;
    }
    for id in &old_fd {
        tx.execute("DELETE FROM agreement_cloud WHERE folder = ?1", [id])?;
        tx.execute("DELETE FROM folders WHERE id = ?1", [id])?;
    }
    if !old_md.is_empty() {
        tx.execute(
            "DELETE FROM agreement_cloud WHERE hash NOT IN (SELECT hash FROM agreement)",
            [],
        )?;
    }
    if !old_md.is_empty() || !old_fd.is_empty() {
        tracing::info!(
            maildirs = old_md.len(),
            folders = old_fd.len(),
            "forgot the agreement of maildirs and folders no longer configured"
        );
    }
    Ok(())
}

/// Writes a v0.1 agreement with its own keys.
fn import_v01(tx: &Transaction<'_>, v: V01) -> rusqlite::Result<usize> {
    let md = register(tx, "maildirs", "path", &v.maildirs)?;
    let fd = register(tx, "folders", "key", &v.mailboxes)?;
    let mut rows = 0;
    for (hash, e) in &v.state.entries {
        let Some(&maildir) = md.get(e.maildir) else {
            continue;
        };
        let cloud: Vec<(i64, &CloudBase)> = e
            .cloud
            .iter()
            .filter_map(|b| fd.get(b.mailbox).map(|&f| (f, b)))
            .collect();
        rows += put_rows(tx, hash, e, maildir, &cloud)?;
    }
    for (id, n) in md.iter().zip(&v.state.maildir_counts) {
        rows += tx.execute(
            "UPDATE maildirs SET agreed_count = ?1 WHERE id = ?2",
            params![*n as i64, id],
        )?;
    }
    for (key, cursor) in &v.cursors {
        rows += tx.execute(
            "UPDATE folders SET cursor = ?1 WHERE key = ?2",
            params![cursor.to_string(), key],
        )?;
    }
    Ok(rows)
}

/// Database id → config index.
fn index_of(ids: &[i64]) -> HashMap<i64, usize> {
    ids.iter().enumerate().map(|(i, &id)| (id, i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(maildir: usize, mailbox: usize) -> LastEntry {
        LastEntry {
            flags: Flags::READ,
            maildir,
            local: Flags::READ,
            cloud: vec![CloudBase {
                mailbox,
                id: "x".into(),
                flags: Flags::READ,
            }],
        }
    }

    #[test]
    fn reindexes_after_config_edit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let md = vec!["/m/a".to_string(), "/m/b".to_string()];
        let fd = vec!["gmail:u/INBOX".to_string(), "office365:u/inbox".to_string()];
        let (st, (empty, _)) = SyncState::open(&store, &md, &fd).unwrap();
        let mut last = LastState::default();
        last.entries.insert(ContentHash([1; 32]), entry(0, 0));
        last.entries.insert(ContentHash([2; 32]), entry(1, 1));
        last.maildir_counts = vec![1, 1];
        let cursors = vec![
            (0, serde_json::json!("h1")),
            (1, serde_json::json!({"d": 1})),
        ];
        store
            .commit(|tx| st.write(tx, &empty, &last, &cursors))
            .unwrap();
        let (_, (again, c)) = SyncState::open(&store, &md, &fd).unwrap();
        assert_eq!(again, last);
        assert_eq!(c.len(), 2);

        // Maildir b first now, maildir a gone; the Gmail folder removed.
        let md2 = vec!["/m/b".to_string(), "/m/c".to_string()];
        let fd2 = vec!["office365:u/inbox".to_string()];
        let (_, (got, cursors)) = SyncState::open(&store, &md2, &fd2).unwrap();
        assert_eq!(got.entries.len(), 1);
        let e = &got.entries[&ContentHash([2; 32])];
        assert_eq!(e.maildir, 0);
        assert_eq!(e.cloud[0].mailbox, 0);
        assert_eq!(got.maildir_counts, vec![1, 0]);
        assert_eq!(cursors.len(), 1);
        assert_eq!(cursors["office365:u/inbox"], serde_json::json!({"d": 1}));
        // The dropped rows are gone from the database, not just hidden.
        let n: i64 = store.with_db(|db| {
            db.conn()
                .query_row("SELECT count(*) FROM agreement_cloud", [], |r| r.get(0))
                .unwrap()
        });
        assert_eq!(n, 1);
    }

    #[test]
    fn writes_only_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let md = vec!["/m/a".to_string()];
        let fd = vec!["office365:u/inbox".to_string()];
        let (st, (empty, _)) = SyncState::open(&store, &md, &fd).unwrap();
        let mut last = LastState::default();
        for i in 0..100u8 {
            last.entries.insert(ContentHash([i; 32]), entry(0, 0));
        }
        last.maildir_counts = vec![100];
        let all = store.commit(|tx| st.write(tx, &empty, &last, &[])).unwrap();
        assert_eq!(all, 100 * 2 + 1);
        let mut next = last.clone();
        next.entries.get_mut(&ContentHash([7; 32])).unwrap().flags = Flags::FLAGGED;
        next.entries.remove(&ContentHash([8; 32]));
        next.maildir_counts = vec![99];
        // Entry 7: its row, its cloud row deleted and written again; entry
        // 8: two rows deleted; the count.
        let rows = store.commit(|tx| st.write(tx, &last, &next, &[])).unwrap();
        assert_eq!(rows, 3 + 2 + 1);
        assert_eq!(
            store.commit(|tx| st.write(tx, &next, &next, &[])).unwrap(),
            0
        );
        let (_, (got, _)) = SyncState::open(&store, &md, &fd).unwrap();
        assert_eq!(got, next);
    }

    #[test]
    fn imports_a_recorded_v01_agreement() {
        let dir = tempfile::tempdir().unwrap();
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/integration/data/v0.1-state");
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        for f in ["ids.json", "inodes.json", "sync.json"] {
            std::fs::copy(src.join(f), dir.path().join("state").join(f)).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let root = "/work/v01/demo/home/mail";
        // The config lists the maildirs in another order now.
        let md: Vec<String> = ["lists/other", "work", "personal", "lists/kernel"]
            .iter()
            .map(|m| format!("{root}/{m}"))
            .collect();
        let fd = vec![
            "gmail:demo@gmail.example/INBOX".to_string(),
            "office365:demo@contoso.example/inbox".to_string(),
        ];
        let (_, (last, cursors)) = SyncState::open(&store, &md, &fd).unwrap();
        assert!(!dir.path().join("state/sync.json").exists());
        assert_eq!(last.entries.len(), 12);
        assert_eq!(last.maildir_counts, vec![3, 2, 1, 6]);
        assert_eq!(cursors.len(), 2);
        let per_folder = |m| {
            last.entries
                .values()
                .filter(|e| e.cloud.iter().any(|c| c.mailbox == m))
                .count()
        };
        assert_eq!((per_folder(0), per_folder(1)), (6, 6));
        // Every imported entry names content the id cache knows.
        let known = store.known_cloud_hashes();
        assert!(last.entries.keys().all(|h| known.contains(h)));
        // Opening again reads the same from the database alone.
        let (_, (again, _)) = SyncState::open(&store, &md, &fd).unwrap();
        assert_eq!(again, last);
    }
}
