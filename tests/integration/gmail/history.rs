//! Gmail history: a second client's changes, many history pages and
//! changes outside the label, restarts from the stored cursor, expired
//! history relisted cheaply, and new mail that costs only its download.

use cloud_mdir_sync::cloud::CloudMailbox;
use cloud_mdir_sync::types::Flags;
use fake_cloud::QuotaMode;
use serde_json::json;

use crate::util::StoredCursor;

use super::{
    Env, FULL, MODIFY, USER, as_map, assert_listing, assert_listing_complete, fast, raw_message,
};

#[tokio::test]
async fn history_follows_a_second_client() {
    let env = Env::start(QuotaMode::Off).await;
    let ids = env.populate("INBOX", 300, 21).await;
    env.populate("Lists", 5, 22).await;
    let mb = env.mailbox(fast(), "INBOX");
    let first = mb.list().await.expect("list");
    assert_listing(&env, "INBOX", &first).await;

    // Idle: one request, the profile.
    env.reset_stats().await;
    let again = mb.list().await.expect("idle list");
    assert_eq!(as_map(&again), as_map(&first));
    let s = env.stats().await;
    assert_eq!(s.http_requests(), 1, "{:?}", s.routes());
    assert_eq!(s.on("gmail GET /users/me/profile"), 1);

    let other = env.token(&[FULL]);
    let modify = |id: &str, add: &[&str], remove: &[&str]| {
        (
            format!("/messages/{id}/modify"),
            json!({"addLabelIds": add, "removeLabelIds": remove}),
        )
    };
    // Read, unread, star, unstar, archive, trash, spam, permanent delete.
    let changes = [
        modify(&ids[0], &[], &["UNREAD"]),
        modify(&ids[1], &["UNREAD"], &[]),
        modify(&ids[2], &["STARRED"], &[]),
        modify(&ids[3], &[], &["STARRED"]),
        modify(&ids[4], &[], &["INBOX"]),
        modify(&ids[6], &["SPAM"], &[]),
        modify(&ids[7], &["STARRED"], &["UNREAD", "IMPORTANT"]),
    ];
    for (path, body) in changes {
        assert_eq!(env.second(&other, "POST", &path, Some(body)).await, 200);
    }
    let trash = format!("/messages/{}/trash", ids[5]);
    assert_eq!(env.second(&other, "POST", &trash, None).await, 200);
    let gone = format!("/messages/{}", ids[8]);
    assert_eq!(env.second(&other, "DELETE", &gone, None).await, 204);
    // Archive one and bring it back; archive another with no labels left.
    let (p, b) = modify(&ids[9], &[], &["INBOX"]);
    env.second(&other, "POST", &p, Some(b)).await;
    let (p, b) = modify(&ids[9], &["INBOX"], &[]);
    env.second(&other, "POST", &p, Some(b)).await;
    let (p, b) = modify(
        &ids[10],
        &[],
        &[
            "INBOX",
            "UNREAD",
            "STARRED",
            "IMPORTANT",
            "CATEGORY_PERSONAL",
            "CATEGORY_FORUMS",
        ],
    );
    env.second(&other, "POST", &p, Some(b)).await;
    // A message of another label moves into the inbox.
    let lists = env.labels().await;
    let from_lists = lists
        .iter()
        .find(|(_, l)| l.iter().any(|x| x.starts_with("Label_")))
        .map(|(id, _)| id.clone())
        .expect("a Lists message");
    let (p, b) = modify(&from_lists, &["INBOX"], &[]);
    env.second(&other, "POST", &p, Some(b)).await;
    // New mail, read and unread.
    let new1 = env.deliver(&raw_message(1), &["INBOX", "UNREAD"]).await;
    let new2 = env.deliver(&raw_message(2), &["INBOX", "STARRED"]).await;
    // Delivered elsewhere: not ours.
    env.deliver(&raw_message(3), &["Lists"]).await;

    env.reset_stats().await;
    let after = mb.list().await.expect("list after changes");
    assert_listing(&env, "INBOX", &after).await;
    let got = as_map(&after);
    assert!(got[&ids[0]].0.contains(Flags::READ));
    assert!(got.contains_key(&new1) && got.contains_key(&new2));
    assert!(got.contains_key(&from_lists) && got.contains_key(&ids[9]));
    for gone in [&ids[4], &ids[5], &ids[6], &ids[8]] {
        assert!(!got.contains_key(gone), "{gone} left the inbox");
    }
    assert!(!got.contains_key(&ids[10]));
    assert_eq!(got[&ids[7]].0, Flags::READ | Flags::FLAGGED);
    assert_eq!(
        got[&new1].2.as_deref(),
        None,
        "new mail is listed without its Message-ID"
    );
    // profile + one history page; nothing for what is new.
    let s = env.stats().await;
    assert_eq!(s.on("gmail GET /users/me/profile"), 1);
    assert_eq!(s.on("gmail GET /users/me/history"), 1);
    assert_eq!(s.on("gmail GET /users/me/messages"), 0, "no full listing");
    assert_eq!(s.http_requests(), 2, "{:?}", s.routes());
    // Its download brings it.
    let mut out = Vec::new();
    mb.fetch(&new1, &mut out).await.expect("fetch");
    assert_eq!(
        mb.fetched_entry(&new1).and_then(|e| e.email_id).as_deref(),
        Some("<second-1@example.com>")
    );

    // Idle again: one request.
    env.reset_stats().await;
    mb.list().await.expect("idle");
    assert_eq!(env.stats().await.http_requests(), 1);
}

#[tokio::test]
async fn many_history_pages_and_changes_outside_the_label() {
    let env = Env::start(QuotaMode::Off).await;
    let ids = env.populate("INBOX", 700, 31).await;
    let other_ids = env.populate("Lists", 50, 32).await;
    let mb = env.mailbox(fast(), "INBOX");
    mb.list().await.expect("list");
    let other = env.token(&[MODIFY]);
    // 700 read toggles (two records each) and 50 changes outside the inbox.
    for chunk in ids.chunks(1000) {
        let body = json!({"ids": chunk, "removeLabelIds": ["UNREAD"], "addLabelIds": ["STARRED"]});
        let status = env
            .second(&other, "POST", "/messages/batchModify", Some(body))
            .await;
        assert_eq!(status, 204);
    }
    let body = json!({"ids": other_ids, "addLabelIds": ["STARRED"]});
    env.second(&other, "POST", "/messages/batchModify", Some(body))
        .await;
    env.reset_stats().await;
    let after = mb.list().await.expect("list");
    assert_listing(&env, "INBOX", &after).await;
    assert!(
        after
            .iter()
            .all(|e| e.flags == Flags::READ | Flags::FLAGGED)
    );
    let s = env.stats().await;
    // 700 messages, up to two records each, 500 records per page.
    assert!(s.on("gmail GET /users/me/history") >= 2, "paged");
    assert_eq!(s.on("gmail GET /users/me/messages/{id} (in batch)"), 0);
}

#[tokio::test]
async fn restart_resumes_from_the_cursor_with_one_request() {
    let env = Env::start(QuotaMode::Off).await;
    env.populate("INBOX", 250, 41).await;
    let mb = env.mailbox(fast(), "INBOX");
    let before = mb.list().await.expect("list");
    let cursor = StoredCursor::of(&mb).expect("cursor");
    assert_eq!(cursor.records.len(), 250);
    drop(mb);

    // A new process: new account, new mailbox, the saved cursor.
    let mb = env.mailbox(fast(), "INBOX");
    cursor.load(&mb);
    env.reset_stats().await;
    let after = mb.list().await.expect("list");
    assert_eq!(as_map(&after), as_map(&before));
    let s = env.stats().await;
    assert_eq!(s.http_requests(), 1, "{:?}", s.routes());

    // A cursor for another label is ignored.
    let lists = env.mailbox(fast(), "Lists");
    cursor.load(&lists);
    assert!(lists.cursor_delta().is_none());
    // So is garbage, and a cursor with an unreadable record (a listing
    // with a hole would read as messages taken out of the label).
    let fresh = env.mailbox(fast(), "INBOX");
    fresh.load_cursor(json!({"v": 99}), Vec::new());
    assert!(fresh.cursor_delta().is_none());
    let holed = env.mailbox(fast(), "INBOX");
    let mut records: Vec<String> = cursor.records.values().cloned().collect();
    records[3] = "{not a record".into();
    holed.load_cursor(cursor.head.clone().expect("head"), records);
    assert!(holed.cursor_delta().is_none());

    // Changes while stopped are picked up through history on restart.
    let id = env.deliver(&raw_message(7), &["INBOX"]).await;
    let mb = env.mailbox(fast(), "INBOX");
    cursor.load(&mb);
    env.reset_stats().await;
    let after = mb.list().await.expect("list");
    assert_listing(&env, "INBOX", &after).await;
    assert!(after.iter().any(|e| *e.id == *id));
    assert_eq!(env.stats().await.http_requests(), 2, "profile and history");
    // The cursor delta holds the new message's record only.
    let d = mb.cursor_delta().expect("delta");
    assert!(!d.full && d.gone.is_empty());
    assert_eq!(
        d.put.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        [id.as_str()]
    );
    assert!(mb.cursor_delta().is_none(), "nothing more");
}

#[tokio::test]
async fn too_old_history_relists_correctly_and_cheaply() {
    let env = Env::start(QuotaMode::Off).await;
    let ids = env.populate("INBOX", 600, 51).await;
    let mb = env.mailbox(fast(), "INBOX");
    mb.list().await.expect("list");
    let other = env.token(&[MODIFY]);
    let body = json!({"ids": &ids[..100], "removeLabelIds": ["UNREAD"]});
    env.second(&other, "POST", "/messages/batchModify", Some(body))
        .await;
    let body = json!({"ids": &ids[100..120], "addLabelIds": ["STARRED", "UNREAD"]});
    env.second(&other, "POST", "/messages/batchModify", Some(body))
        .await;
    let body = json!({"ids": &ids[120..130], "removeLabelIds": ["INBOX"]});
    env.second(&other, "POST", "/messages/batchModify", Some(body))
        .await;
    let new = env.deliver(&raw_message(9), &["INBOX"]).await;
    env.control("POST", "expire-history", json!({"user": USER}))
        .await;

    env.reset_stats().await;
    let after = mb.list().await.expect("relist");
    assert_listing(&env, "INBOX", &after).await;
    assert!(after.iter().any(|e| *e.id == *new));
    let s = env.stats().await;
    // The 404, then a full listing with flags from label+UNREAD/STARRED
    // lists; the new message needs nothing more (its download tells).
    assert_eq!(s.on("gmail GET /users/me/history"), 1);
    assert_eq!(s.on("gmail GET /users/me/messages/{id} (in batch)"), 0);
    assert!(s.units() < 100, "relist of 600 cost {} units", s.units());

    // And history works again from the new id.
    env.reset_stats().await;
    mb.list().await.expect("idle");
    assert_eq!(env.stats().await.http_requests(), 1);
}

#[tokio::test]
async fn new_mail_costs_only_its_download() {
    let env = Env::start(QuotaMode::Off).await;
    env.populate("INBOX", 300, 56).await;
    let mb = env.mailbox(fast(), "INBOX");
    let first = mb.list().await.expect("list");
    assert_listing(&env, "INBOX", &first).await;
    let s = env.stats().await;
    assert_eq!(
        s.on("gmail GET /users/me/messages/{id} (in batch)"),
        0,
        "no metadata calls: the download brings the date and Message-ID"
    );
    for e in &first {
        let mut out = Vec::new();
        mb.fetch(&e.id, &mut out).await.expect("fetch");
        let known = mb.fetched_entry(&e.id).expect("known after the fetch");
        assert!(known.received_time.is_some() && known.email_id.is_some());
    }
    // Second client: new mail, found through history.
    let extra = env.deliver(&raw_message(7), &["INBOX", "UNREAD"]).await;
    env.reset_stats().await;
    let after = mb.list().await.expect("list");
    assert_eq!(
        env.stats()
            .await
            .on("gmail GET /users/me/messages/{id} (in batch)"),
        0
    );
    let mut out = Vec::new();
    mb.fetch(&extra, &mut out).await.expect("fetch");
    let again = mb.list().await.expect("list");
    assert_listing_complete(&env, "INBOX", &again).await;
    assert_eq!(after.len(), again.len());
    // And a restart keeps them.
    let cursor = StoredCursor::of(&mb).expect("cursor");
    let mb2 = env.mailbox(fast(), "INBOX");
    cursor.load(&mb2);
    assert_listing_complete(&env, "INBOX", &mb2.list().await.expect("list")).await;
}
