//! The sync engine over Graph: the initial sync of an inbox, downloads
//! retried in a later round, and idle polls that list once and write
//! nothing.

use cloud_mdir_sync::config;
use cloud_mdir_sync::sync::engine::Engine;
use cloud_mdir_sync::types::Flags;
use serde_json::json;

use crate::util::{Home, build_engine, lf, maildir_files};

use super::{Cloud, USER};

/// A config with one maildir and the emulated inbox.
fn engine_world() -> (Home, config::Loaded) {
    let home = Home::new();
    let loaded = home.config(&format!(
        "inbox = MailDir(\"~/mail/inbox\")\nbox = Office365(\"Inbox\", Office365_Account(user=\"{USER}\"))\n"
    ));
    (home, loaded)
}

/// A fresh engine over the emulated inbox.
async fn engine(c: &Cloud, loaded: &config::Loaded) -> Engine {
    build_engine(loaded, vec![c.inbox_folder(&c.account())], false).await
}

/// The files of the maildir `engine_world` configured.
fn inbox_files(home: &Home) -> Vec<(std::path::PathBuf, Flags)> {
    maildir_files(&home.path().join("mail/inbox"))
}

/// Cuts every download of `ids` short, on every attempt (a cut before any
/// byte arrived is retried inside `fetch`; these fail every time).
async fn cut_every_download_of(c: &Cloud, ids: &[String]) {
    for id in ids {
        c.fault(
            json!({"route": format!("*/messages/{id}/$value"), "kind": "truncate", "count": 100}),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_downloads_are_retried_when_the_next_round_brings_other_changes() {
    let c = Cloud::start().await;
    let ids = c.populate("Inbox", 20).await;
    let (home, loaded) = engine_world();
    cut_every_download_of(&c, &ids[..2]).await;
    let mut e = engine(&c, &loaded).await;
    let r = e.cycle().await.expect("cycle");
    assert_eq!(r.cloud_errors.len(), 2, "{r:?}");
    assert_eq!(inbox_files(&home).len(), 18);
    c.clear_faults().await;
    // The next delta round names only the new message, not the two that
    // failed: they must be tried again all the same.
    c.deliver(
        "Inbox",
        "Message-ID: <retry-new@example.com>\r\nSubject: new\r\n\r\nhi\r\n",
    )
    .await;
    let r = e.cycle().await.expect("cycle");
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(inbox_files(&home).len(), 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_syncs_an_inbox_over_graph() {
    let c = Cloud::start().await;
    let ids = c.populate("Inbox", 1000).await;
    let (home, loaded) = engine_world();
    // Three downloads are cut short on every attempt: they must not appear.
    cut_every_download_of(&c, &ids[..3]).await;
    let mut e = engine(&c, &loaded).await;
    let r = e.cycle().await.expect("cycle");
    assert_eq!(r.cloud_errors.len(), 3, "{r:?}");
    assert_eq!(r.downloads, 997);
    assert_eq!(inbox_files(&home).len(), 997);
    let want = c.expected("Inbox").await;
    c.clear_faults().await;
    let r = e.cycle().await.expect("cycle");
    assert!(r.is_clean(), "{r:?}");
    let files = inbox_files(&home);
    assert_eq!(files.len(), 1000);
    // Every maildir file is exactly one stored message with LF line ends:
    // none of the truncated downloads reached the maildir.
    let stored = c.messages(true).await;
    let mut contents: Vec<String> = files
        .iter()
        .map(|(p, _)| std::fs::read_to_string(p).expect("read"))
        .collect();
    contents.sort();
    let mut expected: Vec<String> = stored
        .iter()
        .filter(|m| m["folder"] == "Inbox")
        .map(lf)
        .collect();
    expected.sort();
    assert_eq!(contents, expected);
    // Flags as the cloud has them.
    let mut got: Vec<Flags> = files.iter().map(|(_, f)| *f).collect();
    let mut wantf: Vec<Flags> = want.values().map(|(f, _, _)| *f).collect();
    got.sort();
    wantf.sort();
    assert_eq!(got, wantf);

    // A second cycle downloads nothing and asks one request.
    c.reset_stats().await;
    let r = e.cycle().await.expect("cycle");
    assert_eq!((r.downloads, r.actions), (0, 0), "{r:?}");
    assert_eq!(c.requests().await, 1);

    // A restart resumes from the saved cursor: one request, no downloads.
    drop(e);
    c.reset_stats().await;
    let mut e = engine(&c, &loaded).await;
    let r = e.cycle().await.expect("cycle");
    assert_eq!((r.downloads, r.actions), (0, 0), "{r:?}");
    assert_eq!(c.requests().await, 1);
    assert_eq!(c.stats().await["throttled"], 0);
}

/// The state database's files: (name, size, modification time).
fn db_files(home: &Home) -> Vec<(String, u64, std::time::SystemTime)> {
    let dir = home.path().join("mail/.cms/state");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .expect("state dir")
        .filter_map(Result::ok)
        .filter(|d| d.file_name().to_string_lossy().starts_with("state.db"))
        .map(|d| {
            let m = d.metadata().expect("stat");
            (
                d.file_name().to_string_lossy().into_owned(),
                m.len(),
                m.modified().expect("mtime"),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn an_idle_poll_lists_once_and_does_nothing_else() {
    let c = Cloud::start().await;
    c.populate("Inbox", 200).await;
    let (home, loaded) = engine_world();
    let mut e = engine(&c, &loaded).await;
    assert!(e.cycle().await.expect("cycle").is_clean());
    // The cycle after the initial sync confirms it (it had actions).
    let r = e.poll(&[true]).await.expect("poll");
    assert!(!r.skipped, "{r:?}");
    let before = db_files(&home);
    c.reset_stats().await;
    for _ in 0..5 {
        let r = e.poll(&[true]).await.expect("poll");
        assert!(r.skipped, "{r:?}");
        assert_eq!(r.actions, 0);
    }
    let s = c.stats().await;
    assert_eq!(s["requests"], 5, "one delta request per poll: {s}");
    assert_eq!(db_files(&home), before, "an idle poll writes nothing");

    // A cloud change is not skipped, and is followed.
    let id = c
        .deliver(
            "Inbox",
            "Subject: new\r\nMessage-ID: <idle-new@x>\r\n\r\nhi\r\n",
        )
        .await;
    let r = e.poll(&[true]).await.expect("poll");
    assert!(!r.skipped);
    let r2 = e.settle(&[false]).await.expect("settle");
    assert_eq!(r.downloads + r2.downloads, 1, "{r:?} {r2:?}");
    assert_eq!(inbox_files(&home).len(), 201);
    assert!(!id.is_empty());
    // A local change seen by the watcher goes through cycle_with, which
    // always scans: here a file removed by the user.
    let (gone, _) = inbox_files(&home).remove(0);
    std::fs::remove_file(&gone).expect("rm");
    let r = e.cycle_with(&[false]).await.expect("cycle");
    assert_eq!(r.actions, 1, "the removal is pushed: {r:?}");
}
