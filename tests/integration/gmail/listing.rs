//! Gmail full listings: the emulator's state for a system and a user
//! label, a missing label named, one idle poll shared by an account's
//! labels, and a failed first listing that commits nothing.

use std::collections::BTreeSet;

use cloud_mdir_sync::cloud::gmail::{self, Options};
use cloud_mdir_sync::cloud::{CloudMailbox, ErrorKind};
use cloud_mdir_sync::types::Flags;
use fake_cloud::QuotaMode;
use serde_json::{Value, json};

use super::{Env, assert_listing, fast, raw_message};

#[tokio::test]
async fn full_listing_matches_the_emulator() {
    let env = Env::start(QuotaMode::Off).await;
    env.populate("INBOX", 1200, 11).await;
    env.populate("Lists", 40, 12).await;
    let mb = env.mailbox(fast(), "INBOX");
    env.reset_stats().await;
    let entries = mb.list().await.expect("list");
    assert_eq!(entries.len(), 1200);
    assert_listing(&env, "INBOX", &entries).await;
    let flags: BTreeSet<Flags> = entries.iter().map(|e| e.flags).collect();
    assert!(flags.len() >= 3, "populate mixes flags: {flags:?}");

    // labels 1 + profile 1 + list pages of 500: 3 for the label, and the
    // label's UNREAD and STARRED subsets; no metadata call.
    let s = env.stats().await;
    assert_eq!(s.on("gmail GET /users/me/labels"), 1);
    assert_eq!(s.on("gmail GET /users/me/profile"), 1);
    let pages = s.on("gmail GET /users/me/messages");
    assert!((5..=9).contains(&pages), "{pages} list pages");
    assert_eq!(s.on("gmail GET /users/me/messages/{id} (in batch)"), 0);
    assert_eq!(s.http_requests(), 2 + pages);
    assert_eq!(s.units(), 1 + 1 + 5 * pages);
    assert_eq!(mb.label_name(), "INBOX");

    // A user label by name.
    let lists = env.mailbox(fast(), "Lists");
    let entries = lists.list().await.expect("list Lists");
    assert_eq!(entries.len(), 40);
    let id = lists.resolve_label().await.expect("label id");
    assert!(id.starts_with("Label_"), "{id}");
    assert_listing(&env, &id, &entries).await;
}

#[tokio::test]
async fn a_missing_label_is_not_found_and_named() {
    let env = Env::start(QuotaMode::Off).await;
    let mb = env.mailbox(fast(), "No Such Label");
    let e = mb.list().await.expect_err("missing label");
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.to_string().contains("No Such Label"), "{e}");
}

#[tokio::test]
async fn labels_of_one_account_share_the_idle_poll() {
    let env = Env::start(QuotaMode::Off).await;
    env.populate("INBOX", 30, 25).await;
    env.populate("Lists", 20, 26).await;
    let account = env.account(fast());
    let inbox = gmail::Mailbox::new(account.clone(), "INBOX", "gmail:user@gmail.com/INBOX");
    let lists = gmail::Mailbox::new(account, "Lists", "gmail:user@gmail.com/Lists");
    let (a, b) = tokio::join!(inbox.list(), lists.list());
    assert_eq!((a.expect("inbox").len(), b.expect("lists").len()), (30, 20));
    env.reset_stats().await;
    let (a, b) = tokio::join!(inbox.list(), lists.list());
    assert!(a.is_ok() && b.is_ok());
    assert_eq!(env.stats().await.http_requests(), 1, "one profile for both");
    // A change is never missed because of the shared answer.
    let id = env.deliver(&raw_message(4), &["Lists"]).await;
    let (a, b) = tokio::join!(inbox.list(), lists.list());
    assert_listing(&env, "INBOX", &a.expect("inbox")).await;
    assert!(b.expect("lists").iter().any(|e| *e.id == *id));
}

#[tokio::test]
async fn a_failed_first_listing_commits_nothing() {
    let env = Env::start(QuotaMode::Off).await;
    env.populate("INBOX", 1000, 55).await;
    let mb = env.mailbox(
        Options {
            max_attempts: 1,
            ..fast()
        },
        "INBOX",
    );
    // A listing page fails (503, no retry): the listing fails.
    env.fault(json!({"route": "/users/me/messages", "kind": "status", "status": 503, "count": 1}))
        .await;
    let e = mb.list().await.expect_err("incomplete listing is an error");
    assert_eq!(e.kind, ErrorKind::Retry);
    assert!(mb.cursor_delta().is_none(), "nothing committed");
    env.control("DELETE", "faults", Value::Null).await;
    let entries = mb.list().await.expect("list");
    assert_listing(&env, "INBOX", &entries).await;
    assert!(mb.cursor_delta().is_some_and(|d| d.full));
}
