//! The sync engine end to end against the in-memory cloud: initial sync,
//! nothing downloaded twice, both directions of flag changes, deletions,
//! restarts with changes made while stopped, failed cloud calls, the
//! mass-deletion guard, and the daemon's `--once`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cloud_mdir_sync::cloud::memory::MemoryMailbox;
use cloud_mdir_sync::config::Loaded;
use cloud_mdir_sync::daemon;
use cloud_mdir_sync::maildir::{Maildir, parse_name};
use cloud_mdir_sync::store::Store;
use cloud_mdir_sync::sync::engine::{Engine, Folder};
use cloud_mdir_sync::types::DeleteAction;
use cloud_mdir_sync::types::Flags;

use crate::util::{Home, build_engine, maildir_files};

const GRAPH_FLAGS: Flags = Flags(Flags::REPLIED.0 | Flags::READ.0 | Flags::FLAGGED.0);

/// A config with two maildirs and one cloud folder; list mail goes to the
/// second maildir.
const CFG: &str = r#"
inbox = MailDir("~/mail/inbox")
lists = MailDir("~/mail/lists")
box = Office365("inbox", Office365_Account(user="user@example.com"))
def direct_message(msg):
    if msg.get_header("List-Id"):
        return lists
    return inbox
cfg.direct_message = direct_message
"#;

struct World {
    home: Home,
    loaded: Loaded,
    cloud: MemoryMailbox,
    delete_action: DeleteAction,
}

impl World {
    fn new() -> World {
        let home = Home::new();
        let loaded = home.config(CFG);
        World {
            home,
            loaded,
            cloud: MemoryMailbox::new("office365:user@example.com/inbox", GRAPH_FLAGS),
            delete_action: DeleteAction::Archive,
        }
    }

    fn folders(&self) -> Vec<Folder> {
        vec![Folder {
            cloud: Arc::new(self.cloud.clone()),
            key: "office365:user@example.com/inbox".into(),
            delete_action: self.delete_action,
        }]
    }

    /// A fresh engine, as after a daemon restart.
    async fn engine(&self, offline: bool) -> Engine {
        self.engine_with(Vec::new(), offline).await
    }

    /// A fresh engine over the world's folder and `more`.
    async fn engine_with(&self, more: Vec<Folder>, offline: bool) -> Engine {
        let mut folders = self.folders();
        folders.extend(more);
        build_engine(&self.loaded, folders, offline).await
    }

    fn maildir(&self, name: &str) -> PathBuf {
        self.home.path().join("mail").join(name)
    }

    /// (file name, flags) of every message in a maildir, sorted.
    fn files(&self, name: &str) -> Vec<(PathBuf, Flags)> {
        maildir_files(&self.maildir(name))
    }
}

fn msg(n: usize, list: bool) -> Vec<u8> {
    let list = if list {
        "List-Id: Example list <example.lists.example.org>\r\n"
    } else {
        ""
    };
    format!("Message-ID: <m{n}@example.com>\r\nSubject: message {n}\r\n{list}\r\nbody {n}\r\n")
        .into_bytes()
}

/// Rename a maildir file so its name carries `flags`.
fn set_local(path: &Path, flags: Flags) -> PathBuf {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let (base, _, other) = parse_name(&name);
    let (sub, new_name) = cloud_mdir_sync::maildir::encode_name(base, flags, &other);
    let dest = path
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join(sub.as_str())
        .join(new_name);
    std::fs::rename(path, &dest).unwrap();
    dest
}

#[tokio::test]
async fn initial_sync_routes_and_downloads_once() {
    let w = World::new();
    for n in 0..10 {
        w.cloud.add(
            &msg(n, n % 3 == 0),
            if n % 2 == 0 { Flags::READ } else { Flags::NONE },
        );
    }
    let mut e = w.engine(false).await;
    let r = e.cycle().await.unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.downloads, 10);
    assert_eq!(w.files("inbox").len(), 6);
    assert_eq!(w.files("lists").len(), 4);
    // Stored with LF line ends.
    let (p, _) = &w.files("inbox")[0];
    assert!(!std::fs::read(p).unwrap().contains(&b'\r'));
    let read = w
        .files("inbox")
        .iter()
        .filter(|(_, f)| f.contains(Flags::READ))
        .count()
        + w.files("lists")
            .iter()
            .filter(|(_, f)| f.contains(Flags::READ))
            .count();
    assert_eq!(read, 5);

    // Nothing changed: nothing downloaded, nothing done, no Python called.
    let calls = w.loaded.router.python_calls();
    let r = e.cycle().await.unwrap();
    assert_eq!((r.downloads, r.actions), (0, 0), "{r:?}");
    assert_eq!(w.loaded.router.python_calls(), calls);

    // A restart downloads nothing either.
    drop(e);
    let mut e = w.engine(false).await;
    let r = e.cycle().await.unwrap();
    assert_eq!((r.downloads, r.actions), (0, 0), "{r:?}");
    assert_eq!(w.cloud.counters().downloads, 10);
}

#[tokio::test]
async fn flag_changes_travel_both_ways() {
    let w = World::new();
    let a = w.cloud.add(&msg(1, false), Flags::NONE);
    let b = w.cloud.add(&msg(2, false), Flags::NONE);
    let mut e = w.engine(false).await;
    e.cycle().await.unwrap();
    let files = w.files("inbox");
    assert_eq!(files.len(), 2);

    // Local: mark the first read and flagged.
    let first = files
        .iter()
        .find(|(p, _)| std::fs::read_to_string(p).unwrap().contains("message 1"))
        .unwrap();
    set_local(&first.0, Flags::READ | Flags::FLAGGED);
    // Cloud: mark the second replied.
    w.cloud.set(&b, Flags::REPLIED);
    let r = e.cycle().await.unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(w.cloud.messages()[&a].flags, Flags::READ | Flags::FLAGGED);
    let flags: Vec<Flags> = w.files("inbox").into_iter().map(|(_, f)| f).collect();
    assert!(flags.contains(&(Flags::READ | Flags::FLAGGED)));
    assert!(flags.contains(&Flags::REPLIED));
    let r = e.cycle().await.unwrap();
    assert_eq!(r.actions, 0, "converged: {r:?}");
}

/// A watcher event for `paths` of the inbox.
fn event(w: &World, paths: &[&Path]) -> cloud_mdir_sync::maildir::WatchEvent {
    cloud_mdir_sync::maildir::WatchEvent {
        maildir: w.maildir("inbox"),
        paths: paths.iter().map(|p| p.to_path_buf()).collect(),
        rescan: false,
    }
}

#[tokio::test]
async fn a_poll_handles_the_files_the_watcher_names() {
    let w = World::new();
    let ids: Vec<String> = (0..20)
        .map(|n| w.cloud.add(&msg(n, false), Flags::NONE))
        .collect();
    let mut e = w.engine(false).await;
    e.cycle().await.unwrap();
    let files = w.files("inbox");
    assert_eq!(files.len(), 20);
    let none = vec![false];
    // Idle: nothing named, nothing listed, nothing planned (the first
    // poll confirms the fixed point the downloads reached).
    e.poll(&none).await.unwrap();
    let r = e.poll(&none).await.unwrap();
    assert!(r.skipped, "{r:?}");

    // A rename the watcher reports: its flags reach the cloud.
    let (old, _) = &files[3];
    let new = set_local(old, Flags::READ);
    e.files_changed(event(&w, &[old, &new]));
    let r = e.poll(&none).await.unwrap();
    assert_eq!((r.actions, r.failed), (1, 0), "{r:?}");
    let read: Vec<&String> = ids
        .iter()
        .filter(|id| w.cloud.messages()[*id].flags == Flags::READ)
        .collect();
    assert_eq!(read.len(), 1);

    // A change the watcher was not told about waits for a rescan.
    let (quiet, _) = &w.files("inbox")[5];
    set_local(quiet, Flags::FLAGGED);
    let r = e.poll(&none).await.unwrap();
    assert_eq!(r.actions, 0, "no scan: {r:?}");
    e.request_rescan();
    let r = e.poll(&none).await.unwrap();
    assert_eq!(r.actions, 1, "{r:?}");

    // Renamed twice, and only the first rename reported yet: the message
    // is not taken as deleted (its base name is still there).
    let (first, _) = w.files("inbox")[7].clone();
    let second = set_local(&first, Flags::REPLIED);
    let third = set_local(&second, Flags::REPLIED | Flags::READ);
    e.files_changed(event(&w, &[&first, &second]));
    let r = e.poll(&none).await.unwrap();
    assert_eq!(r.failed, 0, "{r:?}");
    assert_eq!(w.cloud.messages().len(), 20, "nothing deleted in the cloud");
    assert!(third.exists());
    // A file really removed is a deletion.
    std::fs::remove_file(&third).unwrap();
    e.files_changed(event(&w, &[&third]));
    e.poll(&none).await.unwrap();
    assert_eq!(w.cloud.messages().len(), 19);
    assert_eq!(e.known_files(0), 19);
}

#[tokio::test]
async fn deletions_both_ways() {
    let mut w = World::new();
    w.delete_action = DeleteAction::Delete;
    let a = w.cloud.add(&msg(1, false), Flags::NONE);
    let b = w.cloud.add(&msg(2, false), Flags::NONE);
    let c = w.cloud.add(&msg(3, false), Flags::NONE);
    let mut e = w.engine(false).await;
    e.cycle().await.unwrap();
    let find = |n: usize| {
        w.files("inbox")
            .into_iter()
            .find(|(p, _)| {
                std::fs::read_to_string(p)
                    .unwrap()
                    .contains(&format!("message {n}\n"))
            })
            .map(|(p, _)| p)
    };
    // Local removal of 1, local T flag on 2, cloud removal of 3.
    std::fs::remove_file(find(1).unwrap()).unwrap();
    set_local(&find(2).unwrap(), Flags::DELETED);
    w.cloud.remove(&c);
    let r = e.cycle().await.unwrap();
    assert!(r.is_clean(), "{r:?}");
    let deletes = w.cloud.counters().deletes;
    assert!(
        deletes.contains(&(a.clone(), DeleteAction::Delete)),
        "{deletes:?}"
    );
    assert!(
        deletes.contains(&(b.clone(), DeleteAction::Delete)),
        "{deletes:?}"
    );
    assert!(find(3).is_none(), "removed in the cloud, removed locally");
    e.cycle().await.unwrap();
    assert!(w.files("inbox").is_empty(), "{:?}", w.files("inbox"));
    assert!(w.cloud.messages().is_empty());
}

#[tokio::test]
async fn changes_while_stopped_are_merged() {
    let w = World::new();
    let a = w.cloud.add(&msg(1, false), Flags::NONE);
    let b = w.cloud.add(&msg(2, false), Flags::NONE);
    let mut e = w.engine(false).await;
    e.cycle().await.unwrap();
    drop(e);
    // While stopped: the MUA reads message 1, the cloud flags message 2.
    let files = w.files("inbox");
    let first = files
        .iter()
        .find(|(p, _)| std::fs::read_to_string(p).unwrap().contains("message 1"))
        .unwrap();
    set_local(&first.0, Flags::READ);
    w.cloud.set(&b, Flags::FLAGGED);
    let mut e = w.engine(false).await;
    let r = e.cycle().await.unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.downloads, 0);
    assert_eq!(
        w.cloud.messages()[&a].flags,
        Flags::READ,
        "local change made while stopped kept"
    );
    let mut flags: Vec<Flags> = w.files("inbox").into_iter().map(|(_, f)| f).collect();
    flags.sort();
    assert_eq!(flags, vec![Flags::READ, Flags::FLAGGED]);
}

#[tokio::test]
async fn failed_cloud_call_is_retried_and_local_untouched() {
    let w = World::new();
    let a = w.cloud.add(&msg(1, false), Flags::NONE);
    let mut e = w.engine(false).await;
    e.cycle().await.unwrap();
    let (p, _) = w.files("inbox").remove(0);
    let renamed = set_local(&p, Flags::FLAGGED);
    // A cycle woken by the maildir lists nothing, so the one injected
    // failure hits the flag change.
    w.cloud.fail_next(1);
    let r = e.cycle_with(&[false]).await.unwrap();
    assert_eq!(r.failed, 1, "{r:?}");
    assert!(renamed.exists(), "local file untouched by the failure");
    assert_eq!(w.cloud.messages()[&a].flags, Flags::NONE);
    let r = e.cycle().await.unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(
        w.cloud.messages()[&a].flags,
        Flags::FLAGGED,
        "retried next cycle"
    );
    assert!(renamed.exists());
}

#[tokio::test]
async fn mass_deletion_is_not_a_deletion_request() {
    let w = World::new();
    for n in 0..100 {
        w.cloud.add(&msg(n, false), Flags::READ);
    }
    let mut e = w.engine(false).await;
    e.cycle().await.unwrap();
    let files = w.files("inbox");
    assert_eq!(files.len(), 100);
    for (p, _) in files.iter().take(60) {
        std::fs::remove_file(p).unwrap();
    }
    let r = e.cycle().await.unwrap();
    assert!(!r.warnings.is_empty(), "{r:?}");
    assert!(w.cloud.counters().deletes.is_empty());
    assert_eq!(w.files("inbox").len(), 100, "restored from the store");
    // The whole maildir gone: same.
    std::fs::remove_dir_all(w.maildir("inbox")).unwrap();
    let r = e.cycle().await.unwrap();
    assert!(!r.warnings.is_empty(), "{r:?}");
    assert!(w.cloud.counters().deletes.is_empty());
}

#[tokio::test]
async fn offline_first_cycle_trusts_local_flags() {
    let w = World::new();
    let a = w.cloud.add(&msg(1, false), Flags::NONE);
    let mut e = w.engine(false).await;
    e.cycle().await.unwrap();
    drop(e);
    // Lose the sync state, change flags locally and in the cloud.
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(w.home.path().join("mail/.cms/state").join(f));
    }
    let (p, _) = w.files("inbox").remove(0);
    set_local(&p, Flags::READ);
    w.cloud.set(&a, Flags::FLAGGED);
    let mut e = w.engine(true).await;
    e.cycle().await.unwrap();
    assert_eq!(w.cloud.messages()[&a].flags, Flags::READ);
}

#[tokio::test]
async fn offline_rule_ends_per_folder_whatever_another_folder_does() {
    // A second folder that never lists (misnamed, or its account waiting
    // for a login) must not keep the good folder on the --offline rule.
    let w = World::new();
    let bad = MemoryMailbox::new("office365:other@example.com/inbox", GRAPH_FLAGS);
    bad.fail_next(u32::MAX);
    let bad_folder = || {
        vec![Folder {
            cloud: Arc::new(bad.clone()),
            key: "office365:other@example.com/inbox".into(),
            delete_action: DeleteAction::Archive,
        }]
    };
    let a = w.cloud.add(&msg(1, false), Flags::NONE);
    let b = w.cloud.add(&msg(2, false), Flags::NONE);
    let mut e = w.engine_with(bad_folder(), false).await;
    assert!(!e.cycle().await.unwrap().cloud_errors.is_empty());
    drop(e);
    assert_eq!(w.files("inbox").len(), 2);

    // While stopped: a flag set on one file, the other file removed.
    let mut files = w.files("inbox");
    let (p1, _) = files.remove(0);
    let (p2, _) = files.remove(0);
    set_local(&p1, Flags::READ);
    std::fs::remove_file(&p2).unwrap();
    let mut e = w.engine_with(bad_folder(), true).await;
    let r = e.cycle().await.unwrap();
    assert!(!r.cloud_errors.is_empty(), "the bad folder still fails");
    // The offline rule on the good folder's first cycle: local flags win,
    // the missing file is restored.
    let flags: Vec<Flags> = [&a, &b]
        .iter()
        .map(|id| w.cloud.messages()[*id].flags)
        .collect();
    assert!(flags.contains(&Flags::READ), "{flags:?}");
    assert_eq!(w.files("inbox").len(), 2);
    assert!(w.cloud.counters().deletes.is_empty());

    // After it, a local deletion is a deletion, though the bad folder has
    // never had a successful cycle.
    let (p, _) = w.files("inbox").remove(0);
    std::fs::remove_file(&p).unwrap();
    e.request_rescan();
    let r = e.cycle().await.unwrap();
    assert!(!r.cloud_errors.is_empty());
    assert_eq!(w.cloud.counters().deletes.len(), 1, "{r:?}");
    assert_eq!(w.files("inbox").len(), 1);
}

#[tokio::test]
async fn daemon_once_runs_a_full_cycle() {
    let w = World::new();
    w.cloud.add(&msg(1, true), Flags::NONE);
    w.cloud.add(&msg(2, false), Flags::READ);
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let opts = daemon::Options {
        once: true,
        offline: false,
    };
    let loaded = w.home.load();
    daemon::run(loaded, opts, w.folders(), rx).await.unwrap();
    assert_eq!(w.files("inbox").len(), 1);
    assert_eq!(w.files("lists").len(), 1);
    let db = w.home.path().join("mail/.cms");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&db).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let store = Store::open(&db).unwrap();
    assert_eq!(store.blob_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_pushes_local_changes_and_stops_cleanly() {
    let w = World::new();
    let a = w.cloud.add(&msg(1, false), Flags::NONE);
    let (tx, rx) = tokio::sync::watch::channel(false);
    let loaded = w.home.load();
    let mut task = tokio::spawn(daemon::run(
        loaded,
        daemon::Options::default(),
        w.folders(),
        rx,
    ));
    async fn wait_for(
        what: &str,
        task: &mut tokio::task::JoinHandle<Result<(), daemon::DaemonError>>,
        f: impl Fn() -> bool,
    ) {
        let start = std::time::Instant::now();
        while !f() {
            assert!(
                !task.is_finished(),
                "daemon stopped early: {:?}",
                task.await
            );
            assert!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "timed out: {what}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let inbox = w.maildir("inbox");
    wait_for("initial delivery", &mut task, || {
        Maildir::open(&inbox).is_ok_and(|m| m.scan().is_ok_and(|s| s.entries.len() == 1))
    })
    .await;
    // The MUA flags the message; the watcher wakes the daemon, which pushes it
    // without waiting for the poll.
    let lists_before = w.cloud.counters().lists;
    let (p, _) = w.files("inbox").remove(0);
    set_local(&p, Flags::FLAGGED);
    wait_for("flag pushed", &mut task, || {
        w.cloud.messages()[&a].flags == Flags::FLAGGED
    })
    .await;
    assert_eq!(
        w.cloud.counters().lists,
        lists_before,
        "a local change lists nothing"
    );
    tx.send(true).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(30), task)
        .await
        .expect("daemon stops")
        .unwrap()
        .unwrap();
    assert!(w.home.path().join("mail/.cms/state/state.db").exists());
    // The write-ahead log was emptied at the end: the next start does not
    // begin by copying this run's writes.
    let wal = w.home.path().join("mail/.cms/state/state.db-wal");
    assert_eq!(std::fs::metadata(&wal).map_or(0, |m| m.len()), 0);
}

/// Rewrites a state directory the way v0.1 left it: `ids.json`,
/// `inodes.json` and `sync.json` in v0.1's checked format (header line with
/// length and blake3, then JSON) from what the state database holds, and
/// no database.
fn downgrade_to_v01(state: &Path) {
    use serde_json::{Value, json};
    let conn = rusqlite::Connection::open(state.join("state.db")).unwrap();
    let rows = |sql: &str, f: &dyn Fn(&rusqlite::Row) -> Value| -> Vec<Value> {
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], |r| Ok(f(r)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let hex = |r: &rusqlite::Row, i| {
        let b: Vec<u8> = r.get(i).unwrap();
        Value::from(b.iter().map(|x| format!("{x:02x}")).collect::<String>())
    };
    let int = |r: &rusqlite::Row, i| Value::from(r.get::<_, i64>(i).unwrap());
    let text = |r: &rusqlite::Row, i| Value::from(r.get::<_, Option<String>>(i).unwrap());
    let ids = rows("SELECT kind, storage_id, email_id, hash FROM ids", &|r| {
        json!([text(r, 0), text(r, 1), text(r, 2), hex(r, 3)])
    });
    let inodes = rows(
        "SELECT dev, ino, size, mtime_ns, ctime_ns, hash FROM inodes",
        &|r| {
            json!([
                int(r, 0),
                int(r, 1),
                int(r, 2),
                int(r, 3),
                int(r, 4),
                hex(r, 5)
            ])
        },
    );
    let maildirs = rows(
        "SELECT id, path, agreed_count FROM maildirs ORDER BY id",
        &|r| json!([int(r, 0), text(r, 1), int(r, 2)]),
    );
    let folders = rows("SELECT id, key, cursor FROM folders ORDER BY id", &|r| {
        json!([int(r, 0), text(r, 1), text(r, 2)])
    });
    let pos = |list: &[Value], id: &Value| list.iter().position(|m| &m[0] == id).unwrap();
    let mut entries = serde_json::Map::new();
    for e in rows("SELECT hash, flags, maildir, local FROM agreement", &|r| {
        json!([hex(r, 0), int(r, 1), int(r, 2), int(r, 3)])
    }) {
        let cloud: Vec<Value> = rows(
            &format!(
                "SELECT folder, id, flags FROM agreement_cloud WHERE hex(hash) = upper('{}')",
                e[0].as_str().unwrap()
            ),
            &|r| json!([int(r, 0), text(r, 1), int(r, 2)]),
        )
        .into_iter()
        .map(|c| json!({"mailbox": pos(&folders, &c[0]), "id": c[1], "flags": c[2]}))
        .collect();
        entries.insert(
            e[0].as_str().unwrap().to_string(),
            json!({"flags": e[1], "maildir": pos(&maildirs, &e[2]), "local": e[3], "cloud": cloud}),
        );
    }
    let cursors: serde_json::Map<String, Value> = folders
        .iter()
        .filter_map(|f| {
            let c = f[2].as_str()?;
            Some((f[1].as_str()?.to_string(), serde_json::from_str(c).unwrap()))
        })
        .collect();
    let sync = json!({
        "maildirs": maildirs.iter().map(|m| m[1].clone()).collect::<Vec<_>>(),
        "mailboxes": folders.iter().map(|f| f[1].clone()).collect::<Vec<_>>(),
        "state": {
            "entries": entries,
            "maildir_counts": maildirs.iter().map(|m| m[2].clone()).collect::<Vec<_>>(),
        },
        "cursors": cursors,
    });
    drop(conn);
    for (name, kind, body) in [
        ("ids.json", "ids", Value::from(ids)),
        ("inodes.json", "inodes", Value::from(inodes)),
        ("sync.json", "sync", sync),
    ] {
        let body = serde_json::to_vec(&body).unwrap();
        let mut file = format!(
            "CMS-STATE 1 {kind} {} {}\n",
            body.len(),
            blake3::hash(&body).to_hex()
        )
        .into_bytes();
        file.extend_from_slice(&body);
        std::fs::write(state.join(name), file).unwrap();
    }
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(state.join(f));
    }
}

#[tokio::test]
async fn v01_state_directory_is_imported_without_downloads_or_rehash() {
    let w = World::new();
    for n in 0..30 {
        let flags = if n % 2 == 0 { Flags::READ } else { Flags::NONE };
        w.cloud.add(&msg(n, n % 3 == 0), flags);
    }
    let mut e = w.engine(false).await;
    let r = e.cycle().await.unwrap();
    assert_eq!(r.downloads, 30);
    let agreed = e.last_state().unwrap();
    drop(e);
    let state = w.home.path().join("mail/.cms/state");
    downgrade_to_v01(&state);

    let downloads = w.cloud.counters().downloads;
    let (store, maildirs) = daemon::prepare(&w.loaded).await.expect("prepare");
    let mut e = Engine::new(
        store.clone(),
        w.loaded.router.clone(),
        w.folders(),
        maildirs,
        false,
    )
    .expect("engine");
    assert_eq!(e.last_state().unwrap(), agreed, "the same agreement");
    let r = e.cycle().await.unwrap();
    assert_eq!((r.downloads, r.actions), (0, 0), "{r:?}");
    assert_eq!(w.cloud.counters().downloads, downloads);
    assert_eq!(store.hashes_performed(), 0, "no maildir file hashed again");
    assert_eq!(e.last_state().unwrap(), agreed);
    for f in ["ids.json", "inodes.json", "sync.json"] {
        assert!(!state.join(f).exists(), "{f} removed after the import");
    }
    assert!(state.join("state.db").exists());
}

/// A clock that jumps to each deadline the daemon sleeps for, and stops the
/// run at `end`: half an hour of polling in well under a second.
struct JumpClock {
    base: std::time::Instant,
    at: std::sync::Mutex<std::time::Duration>,
    end: std::time::Duration,
    stop: cloud_mdir_sync::shutdown::CancellationToken,
}

impl daemon::Clock for JumpClock {
    fn now(&self) -> std::time::Instant {
        self.base + *self.at.lock().unwrap()
    }

    fn sleep_until(&self, t: std::time::Instant) -> futures_util::future::BoxFuture<'static, ()> {
        let want = t.saturating_duration_since(self.base);
        if want >= self.end {
            self.stop.cancel();
            return Box::pin(std::future::pending());
        }
        let mut at = self.at.lock().unwrap();
        *at = (*at).max(want);
        Box::pin(tokio::task::yield_now())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_folder_keeps_its_own_time_over_half_an_hour_of_polls() {
    // Three folders: one that syncs (polled every minute), one the cloud
    // does not have (tried every 10 min), one whose calls keep failing
    // (backoff from 10 s doubling to 5 min). Nothing hot-loops, and the
    // syncing folder's polls are not held back by the others.
    let home = Home::new();
    home.write(
        "cms.cfg",
        r#"
inbox = MailDir("~/mail/inbox")
acct = Office365_Account(user="user@example.com")
for path in ("inbox", "missing", "flaky"):
    Office365(path, acct).poll_interval = 60
"#,
    );
    let mailbox =
        |path: &str| MemoryMailbox::new(&format!("office365:user@example.com/{path}"), GRAPH_FLAGS);
    let (good, missing, flaky) = (mailbox("inbox"), mailbox("missing"), mailbox("flaky"));
    good.add(&msg(1, false), Flags::NONE);
    missing.fail_next_with(u32::MAX, cloud_mdir_sync::cloud::ErrorKind::NotFound);
    flaky.fail_next_with(u32::MAX, cloud_mdir_sync::cloud::ErrorKind::Retry);
    let folders = [&good, &missing, &flaky]
        .iter()
        .map(|m| Folder {
            cloud: Arc::new((*m).clone()),
            key: cloud_mdir_sync::cloud::CloudMailbox::name(*m).to_string(),
            delete_action: DeleteAction::Archive,
        })
        .collect();
    let stop = cloud_mdir_sync::shutdown::CancellationToken::new();
    let clock = Arc::new(JumpClock {
        base: std::time::Instant::now(),
        at: Default::default(),
        end: std::time::Duration::from_secs(1800),
        stop: stop.clone(),
    });
    let tracker = cloud_mdir_sync::shutdown::TaskTracker::new();
    let run = daemon::run_clocked(
        home.load(),
        daemon::Options::default(),
        folders,
        stop,
        &tracker,
        clock.clone(),
    );
    tokio::time::timeout(std::time::Duration::from_secs(60), run)
        .await
        .expect("half an hour of virtual time in a minute of real time")
        .unwrap();
    let polls = good.counters().lists;
    let not_found = missing.counters().failed;
    let failing = flaky.counters().failed;
    eprintln!(
        "30 virtual minutes: {polls} polls, {not_found} lookups of the missing folder, {failing} tries of the failing one"
    );
    assert!((28..=32).contains(&polls), "{polls} polls at 60 s");
    assert!(
        (3..=4).contains(&not_found),
        "{not_found} tries every 10 min"
    );
    assert!(
        (7..=12).contains(&failing),
        "{failing} tries backing off to 5 min"
    );
    assert_eq!(maildir_files(&home.path().join("mail/inbox")).len(), 1);
}
