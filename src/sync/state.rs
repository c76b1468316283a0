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
use crate::cloud::CursorDelta;
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
/// backends' cursors (head, records) by folder key.
pub type Loaded = (LastState, BTreeMap<String, StoredCursor>);

/// A stored cursor: its head and its records (in id order).
pub type StoredCursor = (serde_json::Value, Vec<String>);

/// The database ids of the configured maildirs and folders, in config order.
#[derive(Clone, Debug)]
pub struct SyncState {
    maildir_ids: Vec<i64>,
    folder_ids: Vec<i64>,
}

/// A cursor change to write: folder index, what changed.
pub type CursorChange = (usize, CursorDelta);

impl SyncState {
    /// Opens the agreement for the given maildir and folder keys (in config
    /// order): imports a v0.1 `sync.json` once, registers new keys, drops
    /// the rows of maildirs and folders no longer configured, and loads the
    /// rest. Blocking.
    pub fn open(
        store: &Store,
        maildirs: &[String],
        mailboxes: &[String],
        record_fields: &[Option<&'static str>],
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
                for (i, id) in fd.iter().enumerate() {
                    if let Some(field) = record_fields.get(i).copied().flatten() {
                        split_stored(tx, *id, field)?;
                    }
                }
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
        let entries = self.all_entries(conn)?;
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
            let folder: i64 = r.get(0)?;
            match serde_json::from_str(&text) {
                Ok(v) => {
                    cursors.insert(r.get(1)?, (v, records(conn, folder)?));
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

    /// The whole agreement, re-indexed to the config. Blocking.
    pub fn load_agreement(
        &self,
        store: &Store,
    ) -> Result<BTreeMap<ContentHash, LastEntry>, StoreError> {
        store.with_db(|db| self.all_entries(db.conn()).map_err(|e| db.err(e)))
    }

    /// The agreement entries of `hashes` (those it has), re-indexed to the
    /// config. Blocking.
    pub fn agreement_of<'a>(
        &self,
        store: &Store,
        hashes: impl Iterator<Item = &'a ContentHash>,
    ) -> Result<BTreeMap<ContentHash, LastEntry>, StoreError> {
        store.with_db(|db| {
            let read = || -> rusqlite::Result<_> {
                let conn = db.conn();
                let mut head = conn.prepare_cached(
                    "SELECT flags, maildir, local FROM agreement WHERE hash = ?1",
                )?;
                let mut copies = conn.prepare_cached(
                    "SELECT folder, id, flags FROM agreement_cloud WHERE hash = ?1",
                )?;
                let mut out = BTreeMap::new();
                for h in hashes {
                    let mut rows = head.query([&h.0[..]])?;
                    let Some(r) = rows.next()? else { continue };
                    let Some(maildir) = position(&self.maildir_ids, r.get(1)?) else {
                        continue;
                    };
                    let mut e = LastEntry {
                        flags: Flags(r.get(0)?),
                        maildir,
                        local: Flags(r.get(2)?),
                        cloud: Vec::new(),
                    };
                    let mut rows = copies.query([&h.0[..]])?;
                    while let Some(r) = rows.next()? {
                        if let Some(mailbox) = position(&self.folder_ids, r.get(0)?) {
                            e.cloud.push(CloudBase {
                                mailbox,
                                id: r.get(1)?,
                                flags: Flags(r.get(2)?),
                            });
                        }
                    }
                    e.cloud.sort();
                    out.insert(*h, e);
                }
                Ok(out)
            };
            read().map_err(|e| db.err(e))
        })
    }

    /// Every agreement entry whose maildir is configured.
    fn all_entries(
        &self,
        conn: &rusqlite::Connection,
    ) -> rusqlite::Result<BTreeMap<ContentHash, LastEntry>> {
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
        Ok(entries)
    }

    /// Writes into `tx` the agreement rows given (hash, new entry or
    /// `None` to delete), the per-maildir counts that differ between `old`
    /// and `new`, and the given cursors. Returns the number of rows written.
    pub fn write(
        &self,
        tx: &Transaction<'_>,
        entries: &[(ContentHash, Option<LastEntry>)],
        old_counts: &[usize],
        new_counts: &[usize],
        cursors: &[CursorChange],
    ) -> rusqlite::Result<usize> {
        let mut rows = 0;
        for (hash, e) in entries {
            rows += match e {
                Some(e) => self.put(tx, hash, e)?,
                None => delete_entry(tx, hash)?,
            };
        }
        for (i, id) in self.maildir_ids.iter().enumerate() {
            let n = new_counts.get(i).copied().unwrap_or(0);
            if old_counts.get(i).copied().unwrap_or(0) != n {
                rows += tx
                    .prepare_cached("UPDATE maildirs SET agreed_count = ?1 WHERE id = ?2")?
                    .execute(params![n as i64, id])?;
            }
        }
        for (i, delta) in cursors {
            let Some(&id) = self.folder_ids.get(*i) else {
                continue;
            };
            rows += write_cursor(tx, id, delta)?;
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

/// A cursor split for storage: the object with its records field emptied,
/// and the records by message id (serialised).
fn split(cursor: &serde_json::Value, field: &str) -> (serde_json::Value, BTreeMap<String, String>) {
    let head = match cursor.as_object() {
        Some(obj) => serde_json::Value::Object(
            obj.iter()
                .map(|(k, v)| {
                    let v = if k == field {
                        serde_json::Value::Array(Vec::new())
                    } else {
                        v.clone()
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        None => cursor.clone(),
    };
    (head, records_of(cursor, field))
}

/// The records of `cursor`'s `field`, by message id (serialised).
fn records_of(cursor: &serde_json::Value, field: &str) -> BTreeMap<String, String> {
    let mut records = BTreeMap::new();
    if let Some(items) = cursor.get(field).and_then(serde_json::Value::as_array) {
        for item in items {
            if let Some(id) = item.get(0).and_then(serde_json::Value::as_str) {
                records.insert(id.to_string(), item.to_string());
            }
        }
    }
    records
}

/// Writes what changed in a folder's cursor.
fn write_cursor(tx: &Transaction<'_>, folder: i64, d: &CursorDelta) -> rusqlite::Result<usize> {
    let mut rows = 0;
    if let Some(head) = &d.head {
        rows += tx
            .prepare_cached("UPDATE folders SET cursor = ?1 WHERE id = ?2")?
            .execute(params![head.to_string(), folder])?;
    }
    if d.full {
        rows += tx
            .prepare_cached("DELETE FROM cursor_records WHERE folder = ?1")?
            .execute([folder])?;
    }
    let mut put = tx.prepare_cached(
        "INSERT OR REPLACE INTO cursor_records (folder, id, record) VALUES (?1, ?2, ?3)",
    )?;
    for (id, record) in &d.put {
        rows += put.execute(params![folder, id, record])?;
    }
    let mut gone = tx.prepare_cached("DELETE FROM cursor_records WHERE folder = ?1 AND id = ?2")?;
    for id in &d.gone {
        rows += gone.execute(params![folder, id])?;
    }
    Ok(rows)
}

/// Splits a cursor stored whole (imported from v0.1, or written before its
/// backend declared a records field) into its head and rows.
fn split_stored(tx: &Transaction<'_>, folder: i64, field: &str) -> rusqlite::Result<()> {
    let text: Option<String> = tx
        .prepare_cached("SELECT cursor FROM folders WHERE id = ?1")?
        .query_row([folder], |r| r.get(0))?;
    let Some(cursor) = text.and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()) else {
        return Ok(());
    };
    if cursor
        .get(field)
        .and_then(serde_json::Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        return Ok(());
    }
    let (head, records) = split(&cursor, field);
    let delta = CursorDelta {
        head: Some(head),
        full: true,
        put: records.into_iter().collect(),
        gone: Vec::new(),
    };
    write_cursor(tx, folder, &delta).map(|_| ())
}

/// A folder's stored cursor records, in id order.
fn records(conn: &rusqlite::Connection, folder: i64) -> rusqlite::Result<Vec<String>> {
    let mut stmt =
        conn.prepare_cached("SELECT record FROM cursor_records WHERE folder = ?1 ORDER BY id")?;
    stmt.query_map([folder], |r| r.get(0))?.collect()
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
        tx.execute("DELETE FROM cursor_records WHERE folder = ?1", [id])?;
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

/// The config index of database id `id` among `ids`.
fn position(ids: &[i64], id: i64) -> Option<usize> {
    ids.iter().position(|&x| x == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes the difference between two whole agreements.
    fn write_diff(
        st: &SyncState,
        tx: &Transaction<'_>,
        old: &LastState,
        new: &LastState,
        cursors: &[CursorChange],
    ) -> rusqlite::Result<usize> {
        let mut rows: Vec<(ContentHash, Option<LastEntry>)> = new
            .entries
            .iter()
            .filter(|(h, e)| old.entries.get(h) != Some(e))
            .map(|(h, e)| (*h, Some(e.clone())))
            .collect();
        rows.extend(
            old.entries
                .keys()
                .filter(|h| !new.entries.contains_key(h))
                .map(|h| (*h, None)),
        );
        st.write(tx, &rows, &old.maildir_counts, &new.maildir_counts, cursors)
    }

    fn rows(store: &Store, table: &str) -> i64 {
        store.with_db(|db| {
            db.conn()
                .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                .unwrap()
        })
    }

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

    /// The entries of some hashes, read from the database, are those the
    /// whole agreement holds, re-indexed the same way.
    #[test]
    fn entries_read_by_hash_match_the_whole_agreement() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let md = vec!["/m/a".to_string(), "/m/b".to_string()];
        let fd = vec!["gmail:u/INBOX".to_string(), "office365:u/inbox".to_string()];
        let (st, (empty, _)) = SyncState::open(&store, &md, &fd, &[]).unwrap();
        let mut last = LastState::default();
        for i in 0..10u8 {
            let mut e = entry(usize::from(i % 2), usize::from(i % 2));
            e.cloud.push(CloudBase {
                mailbox: 1,
                id: format!("c{i}"),
                flags: Flags(i % 4),
            });
            e.cloud.sort();
            last.entries.insert(ContentHash([i; 32]), e);
        }
        last.maildir_counts = vec![5, 5];
        store
            .commit(|tx| write_diff(&st, tx, &empty, &last, &[]))
            .unwrap();
        // Another order of the config: both reads re-index alike.
        let (st, _) = SyncState::open(&store, &[md[1].clone(), md[0].clone()], &fd, &[]).unwrap();
        let all = st.load_agreement(&store).unwrap();
        let asked = [
            ContentHash([3; 32]),
            ContentHash([8; 32]),
            ContentHash([77; 32]),
        ];
        let some = st.agreement_of(&store, asked.iter()).unwrap();
        assert_eq!(some.len(), 2, "a hash without an entry is left out");
        for (h, e) in &some {
            assert_eq!(Some(e), all.get(h));
        }
        assert_eq!(all[&ContentHash([3; 32])].maildir, 0, "/m/b is first now");
    }

    #[test]
    fn reindexes_after_config_edit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let md = vec!["/m/a".to_string(), "/m/b".to_string()];
        let fd = vec!["gmail:u/INBOX".to_string(), "office365:u/inbox".to_string()];
        let (st, (empty, _)) = SyncState::open(&store, &md, &fd, &[]).unwrap();
        let mut last = LastState::default();
        last.entries.insert(ContentHash([1; 32]), entry(0, 0));
        last.entries.insert(ContentHash([2; 32]), entry(1, 1));
        last.maildir_counts = vec![1, 1];
        let head = |v| CursorDelta {
            head: Some(v),
            ..CursorDelta::default()
        };
        let cursors = vec![
            (0, head(serde_json::json!("h1"))),
            (1, head(serde_json::json!({"d": 1}))),
        ];
        store
            .commit(|tx| write_diff(&st, tx, &empty, &last, &cursors))
            .unwrap();
        let (_, (again, c)) = SyncState::open(&store, &md, &fd, &[]).unwrap();
        assert_eq!(again, last);
        assert_eq!(c.len(), 2);

        // Maildir b first now, maildir a gone; the Gmail folder removed.
        let md2 = vec!["/m/b".to_string(), "/m/c".to_string()];
        let fd2 = vec!["office365:u/inbox".to_string()];
        let (_, (got, cursors)) = SyncState::open(&store, &md2, &fd2, &[]).unwrap();
        assert_eq!(got.entries.len(), 1);
        let e = &got.entries[&ContentHash([2; 32])];
        assert_eq!(e.maildir, 0);
        assert_eq!(e.cloud[0].mailbox, 0);
        assert_eq!(got.maildir_counts, vec![1, 0]);
        assert_eq!(cursors.len(), 1);
        assert_eq!(
            cursors["office365:u/inbox"],
            (serde_json::json!({"d": 1}), Vec::new())
        );
        // The dropped rows are gone from the database, not just hidden.
        assert_eq!(rows(&store, "agreement_cloud"), 1);
    }

    #[test]
    fn writes_only_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let md = vec!["/m/a".to_string()];
        let fd = vec!["office365:u/inbox".to_string()];
        let (st, (empty, _)) = SyncState::open(&store, &md, &fd, &[]).unwrap();
        let mut last = LastState::default();
        for i in 0..100u8 {
            last.entries.insert(ContentHash([i; 32]), entry(0, 0));
        }
        last.maildir_counts = vec![100];
        let all = store
            .commit(|tx| write_diff(&st, tx, &empty, &last, &[]))
            .unwrap();
        assert_eq!(all, 100 * 2 + 1);
        let mut next = last.clone();
        next.entries.get_mut(&ContentHash([7; 32])).unwrap().flags = Flags::FLAGGED;
        next.entries.remove(&ContentHash([8; 32]));
        next.maildir_counts = vec![99];
        // Entry 7: its row, its cloud row deleted and written again; entry
        // 8: two rows deleted; the count.
        let rows = store
            .commit(|tx| write_diff(&st, tx, &last, &next, &[]))
            .unwrap();
        assert_eq!(rows, 3 + 2 + 1);
        assert_eq!(
            store
                .commit(|tx| write_diff(&st, tx, &next, &next, &[]))
                .unwrap(),
            0
        );
        let (_, (got, _)) = SyncState::open(&store, &md, &fd, &[]).unwrap();
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
        let fields = [Some("messages"), Some("entries")];
        let (_, (last, cursors)) = SyncState::open(&store, &md, &fd, &fields).unwrap();
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
        // The imported cursors were split into rows; opening again reads the
        // same from the database alone.
        assert_eq!(rows(&store, "cursor_records"), 12);
        let (_, (again, cursors2)) = SyncState::open(&store, &md, &fd, &fields).unwrap();
        assert_eq!(again, last);
        assert_eq!(cursors2, cursors);
    }

    #[test]
    fn cursor_records_are_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let md = vec!["/m/a".to_string()];
        let fd = vec!["office365:u/inbox".to_string()];
        let fields = [Some("entries")];
        let (st, (empty, _)) = SyncState::open(&store, &md, &fd, &fields).unwrap();
        let record = |i: usize, flags: u8| {
            serde_json::json!([format!("id{i:04}"), null, flags, 1_700_000_000 + i, false])
                .to_string()
        };
        let mut records: BTreeMap<String, String> = (0..1000)
            .map(|i| (format!("id{i:04}"), record(i, 2)))
            .collect();
        let h1 = serde_json::json!({"v": 1, "delta_link": "d1", "entries": []});
        let full = CursorDelta {
            head: Some(h1.clone()),
            full: true,
            put: records.clone().into_iter().rev().collect(),
            gone: Vec::new(),
        };
        let rows = store
            .commit(|tx| write_diff(&st, tx, &empty, &empty, &[(0, full)]))
            .unwrap();
        assert_eq!(rows, 1 + 1000);
        let (_, (_, loaded)) = SyncState::open(&store, &md, &fd, &fields).unwrap();
        let want = |h: &serde_json::Value, r: &BTreeMap<String, String>| {
            (h.clone(), r.values().cloned().collect::<Vec<_>>())
        };
        assert_eq!(
            loaded["office365:u/inbox"],
            want(&h1, &records),
            "in id order"
        );
        // One message's flags changed, one gone, a new delta link: the
        // head and two rows, not the listing.
        let h2 = serde_json::json!({"v": 1, "delta_link": "d2", "entries": []});
        let delta = CursorDelta {
            head: Some(h2.clone()),
            full: false,
            put: vec![("id0005".into(), record(5, 3))],
            gone: vec!["id0009".into()],
        };
        let rows = store
            .commit(|tx| write_diff(&st, tx, &empty, &empty, &[(0, delta)]))
            .unwrap();
        assert_eq!(rows, 1 + 2);
        records.insert("id0005".into(), record(5, 3));
        records.remove("id0009");
        let (_, (_, loaded)) = SyncState::open(&store, &md, &fd, &fields).unwrap();
        assert_eq!(loaded["office365:u/inbox"], want(&h2, &records));
        // A full delta replaces every record.
        let reset = CursorDelta {
            head: None,
            full: true,
            put: vec![("x".into(), "[\"x\"]".into())],
            gone: Vec::new(),
        };
        store
            .commit(|tx| write_diff(&st, tx, &empty, &empty, &[(0, reset)]))
            .unwrap();
        let (_, (_, loaded)) = SyncState::open(&store, &md, &fd, &fields).unwrap();
        assert_eq!(loaded["office365:u/inbox"].1, vec!["[\"x\"]".to_string()]);
    }
}
