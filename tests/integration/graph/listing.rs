//! Graph listings: folder lookup by path, delta listings equal to the
//! emulator's state, a second client's changes, `list_changes`, restarts
//! from a stored cursor, expired delta tokens and interrupted rounds.

use cloud_mdir_sync::cloud::graph::ThrottleConfig;
use cloud_mdir_sync::cloud::{CloudMailbox, ErrorKind};
use cloud_mdir_sync::types::Flags;
use serde_json::{Value, json};

use crate::util::StoredCursor;

use super::{Cloud, USER, as_map, quick};

#[tokio::test]
async fn nested_folders_are_found_and_bad_paths_named() {
    let c = Cloud::start().await;
    c.populate("Inbox/Lists/Rust", 3).await;
    c.populate("Inbox/Bob's", 2).await;
    let acct = c.account();

    let rust = c.mailbox(&acct, "Inbox/Lists/Rust");
    assert_eq!(rust.list().await.expect("list").len(), 3);
    let bob = c.mailbox(&acct, "Inbox/Bob's");
    assert_eq!(bob.list().await.expect("quote escaped").len(), 2);

    // The Python program's configs say "inbox": the well-known name finds
    // the Inbox in any language, and other levels match ignoring case.
    let lower = c.mailbox(&acct, "inbox/lists/rust");
    assert_eq!(lower.list().await.expect("case-insensitive path").len(), 3);

    let missing = c.mailbox(&acct, "Inbox/Nope/Rust");
    let e = missing.list().await.expect_err("missing");
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.contains("\"Inbox/Nope\""), "{e}");

    // Eleven folders of one name under one parent (the service refuses to
    // create them; put them in directly): the lookup pages through all of
    // them (10 per page) and reports the ambiguity.
    {
        let mut st = c.h.app().lock();
        let mb = st.graph_mailbox(USER);
        let inbox = mb.resolve_folder("inbox").expect("inbox");
        for i in 0..11 {
            let id = format!("AAMkAdup{i}");
            mb.folders.insert(
                id.clone(),
                fake_cloud::store_graph::Folder {
                    id,
                    display_name: "Twin".into(),
                    parent_id: inbox.clone(),
                    well_known: None,
                    hidden: false,
                },
            );
        }
    }
    let e = c
        .mailbox(&acct, "Inbox/Twin")
        .list()
        .await
        .expect_err("ambiguous");
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(
        e.message.contains("ambiguous") && e.message.contains("11"),
        "{e}"
    );
    assert_eq!(c.stats().await["throttled"], 0);
}

#[tokio::test]
async fn listing_matches_the_emulator_exactly() {
    let c = Cloud::start().await;
    c.populate("Inbox", 1500).await;
    c.populate("Archive", 20).await;
    let acct = c.account();
    let inbox = c.mailbox(&acct, "Inbox");
    let got = inbox.list().await.expect("list");
    let want = c.expected("Inbox").await;
    assert_eq!(want.len(), 1500);
    assert_eq!(as_map(&got), want);
    // The populated mail has every replied source and flag represented.
    let count = |f: Flags| want.values().filter(|(x, _, _)| x.contains(f)).count();
    assert!(count(Flags::REPLIED) > 0 && count(Flags::READ) > 0 && count(Flags::FLAGGED) > 0);
    // One folder lookup (by its well-known name) and two delta pages of up
    // to 1000.
    assert_eq!(
        c.route_count("graph GET /me/mailFolders").await
            + c.route_count("graph GET /me/mailFolders/{id}").await,
        1
    );
    assert_eq!(
        c.route_count("graph GET /me/mailFolders/{id}/messages/delta")
            .await,
        2
    );
    assert_eq!(c.stats().await["throttled"], 0);
}

#[tokio::test]
async fn second_client_changes_show_in_the_next_listing() {
    let c = Cloud::start().await;
    let ids = c.populate("Inbox", 40).await;
    let acct = c.account();
    let inbox = c.mailbox(&acct, "Inbox");
    inbox.list().await.expect("first list");

    use reqwest::Method;
    let msg = |i: usize| format!("/me/messages/{}", ids[i]);
    let patch = |i: usize, body: Value| (Method::PATCH, msg(i), body);
    for (m, path, body) in [
        patch(0, json!({"isRead": true})),
        patch(1, json!({"isRead": false})),
        patch(2, json!({"flag": {"flagStatus": "flagged"}})),
        patch(3, json!({"flag": {"flagStatus": "complete"}})),
        patch(
            4,
            json!({"singleValueExtendedProperties": [{"id": "Integer 0x1081", "value": "104"}]}),
        ),
        patch(
            5,
            json!({"singleValueExtendedProperties": [{"id": "Integer 0x1080", "value": "261"}]}),
        ),
        (
            Method::POST,
            format!("{}/move", msg(6)),
            json!({"destinationId": "archive"}),
        ),
    ] {
        let (status, _) = c.graph(m, &path, Some(body)).await;
        assert!((200..300).contains(&status), "{path}: {status}");
    }
    let (status, _) = c.graph(Method::DELETE, &msg(7), None).await;
    assert_eq!(status, 204);
    let new = c
        .deliver(
            "Inbox",
            "Message-ID: <new@example.com>\r\nSubject: new\r\n\r\nhello\r\n",
        )
        .await;

    let got = inbox.list().await.expect("second list");
    let want = c.expected("Inbox").await;
    assert_eq!(as_map(&got), want);
    assert!(want.contains_key(&new));
    assert!(!want.contains_key(&ids[6]) && !want.contains_key(&ids[7]));
    assert_eq!(want.len(), 39);

    // Nothing changed: an idle poll is one request.
    c.reset_stats().await;
    let again = inbox.list().await.expect("idle list");
    assert_eq!(again, got);
    assert_eq!(c.requests().await, 1);
}

#[tokio::test]
async fn list_changes_hands_out_what_the_delta_round_changed() {
    use cloud_mdir_sync::cloud::Listed;
    use reqwest::Method;
    let c = Cloud::start().await;
    let ids = c.populate("Inbox", 20).await;
    let acct = c.account();
    let mb = c.mailbox(&acct, "Inbox");
    let Listed::Full(first) = mb.list_changes().await.expect("first") else {
        panic!("the first round lists everything");
    };
    assert_eq!(as_map(&first), c.expected("Inbox").await);
    assert!(mb.list_changes().await.expect("idle").is_unchanged());

    let msg = |i: usize| format!("/me/messages/{}", ids[i]);
    let (status, _) = c
        .graph(Method::PATCH, &msg(2), Some(json!({"isRead": true})))
        .await;
    assert_eq!(status, 200);
    let (status, _) = c.graph(Method::DELETE, &msg(5), None).await;
    assert_eq!(status, 204);
    let new = c
        .deliver(
            "Inbox",
            "Message-ID: <lc@example.com>\r\nSubject: x\r\n\r\nhi\r\n",
        )
        .await;
    let Listed::Changes { upsert, gone } = mb.list_changes().await.expect("changes") else {
        panic!("an incremental round hands out its changes");
    };
    let mut up: Vec<&str> = upsert.iter().map(|e| &*e.id).collect();
    up.sort();
    let mut want = vec![ids[2].as_str(), new.as_str()];
    want.sort();
    assert_eq!(up, want);
    assert_eq!(gone, vec![ids[5].clone()]);
    // The changes applied to the first listing give the folder as it is.
    let mut listing = as_map(&first);
    listing.extend(as_map(&upsert));
    for id in &gone {
        listing.remove(id);
    }
    assert_eq!(listing, c.expected("Inbox").await);
    // `list` still answers with the whole folder.
    assert_eq!(as_map(&mb.list().await.expect("list")), listing);
}

#[tokio::test]
async fn restart_from_a_cursor_is_one_request() {
    let c = Cloud::start().await;
    let ids = c.populate("Inbox/Sub", 30).await;
    let first = {
        let acct = c.account();
        let mb = c.mailbox(&acct, "Inbox/Sub");
        let got = mb.list().await.expect("list");
        (got, StoredCursor::of(&mb).expect("cursor"))
    };
    let saved = first.1.clone();
    assert_eq!(saved.records.len(), 30);

    // Changed while we were stopped.
    c.graph(
        reqwest::Method::PATCH,
        &format!("/me/messages/{}", ids[0]),
        Some(json!({"flag": {"flagStatus": "flagged"}})),
    )
    .await;
    c.reset_stats().await;
    let acct = c.account();
    let mb = c.mailbox(&acct, "Inbox/Sub");
    saved.load(&mb);
    let got = mb.list().await.expect("list after restart");
    assert_eq!(c.requests().await, 1, "{}", c.stats().await);
    assert_eq!(as_map(&got), c.expected("Inbox/Sub").await);
    assert_ne!(got, first.0);

    // A cursor for another folder is ignored (full listing, correct result).
    let other = c.mailbox(&acct, "Inbox");
    saved.load(&other);
    assert_eq!(
        as_map(&other.list().await.expect("list")),
        c.expected("Inbox").await
    );
    // Garbage is ignored too.
    let fresh = c.mailbox(&acct, "Inbox/Sub");
    fresh.load_cursor(json!({"v": 99}), Vec::new());
    assert_eq!(fresh.list().await.expect("list").len(), 30);

    // The change after the restart costs its own record; idle polls hand
    // out nothing (no state write); a restart from the stored cursor is
    // still one request.
    let mut stored = saved.clone();
    let d = mb.cursor_delta().expect("delta");
    assert!(!d.full && d.gone.is_empty());
    assert_eq!(d.put.len(), 1);
    assert_eq!(d.put[0].0, ids[0]);
    stored.apply(d);
    mb.list().await.expect("idle");
    mb.list().await.expect("idle");
    assert!(mb.cursor_delta().is_none());
    let again = c.mailbox(&acct, "Inbox/Sub");
    stored.load(&again);
    c.reset_stats().await;
    assert_eq!(
        as_map(&again.list().await.expect("list")),
        c.expected("Inbox/Sub").await
    );
    assert_eq!(c.requests().await, 1);
    c.graph(
        reqwest::Method::PATCH,
        &format!("/me/messages/{}", ids[1]),
        Some(json!({"isRead": true})),
    )
    .await;
    mb.list().await.expect("list");
    assert!(stored.save(&mb));
    let last = c.mailbox(&acct, "Inbox/Sub");
    stored.load(&last);
    assert_eq!(
        as_map(&last.list().await.expect("list")),
        c.expected("Inbox/Sub").await
    );
    // A cursor with an unreadable record is dropped: full listing.
    let holed = c.mailbox(&acct, "Inbox/Sub");
    let mut records: Vec<String> = stored.records.values().cloned().collect();
    records[0] = "[1,".into();
    holed.load_cursor(stored.head.clone().expect("head"), records);
    assert!(holed.cursor_delta().is_none());
}

#[tokio::test]
async fn expired_delta_state_relists_without_losing_anything() {
    for mode in ["410", "400"] {
        let c = Cloud::start().await;
        let ids = c.populate("Inbox", 1200).await;
        let acct = c.account();
        let mb = c.mailbox(&acct, "Inbox");
        mb.list().await.expect("list");
        // Changes, then the service forgets every delta token.
        c.graph(
            reqwest::Method::PATCH,
            &format!("/me/messages/{}", ids[0]),
            Some(json!({"flag": {"flagStatus": "flagged"}})),
        )
        .await;
        c.graph(
            reqwest::Method::POST,
            &format!("/me/messages/{}/move", ids[1]),
            Some(json!({"destinationId": "archive"})),
        )
        .await;
        c.ctl(
            reqwest::Method::POST,
            "expire-delta",
            Some(json!({"user": USER, "mode": mode})),
        )
        .await;
        c.reset_stats().await;
        let got = mb.list().await.expect("full relist");
        assert_eq!(as_map(&got), c.expected("Inbox").await, "mode {mode}");
        assert_eq!(got.len(), 1199);
        // The failed incremental request, then two full pages.
        assert_eq!(c.requests().await, 3, "mode {mode}");
        c.reset_stats().await;
        mb.list().await.expect("idle");
        assert_eq!(c.requests().await, 1, "mode {mode}");
    }
}

#[tokio::test]
async fn an_interrupted_round_resumes_where_it_stopped() {
    let c = Cloud::start().await;
    c.populate("Inbox", 2500).await;
    let acct = c.account_with(ThrottleConfig {
        max_attempts: 1,
        ..quick()
    });
    let mb = c.mailbox(&acct, "Inbox");
    // The second page fails (one attempt allowed): the call fails.
    c.fault(json!({"route": "*/delta", "kind": "status", "status": 503, "count": 1}))
        .await;
    assert!(mb.list().await.is_err());
    // Only next links use the `mailFolders('id')` form.
    c.fault(json!({"route": "*mailFolders('*", "kind": "status", "status": 503, "count": 1}))
        .await;
    // First page fine, second page fails: resume keeps page one.
    let e = mb.list().await;
    assert!(e.is_err());
    c.reset_stats().await;
    let got = mb.list().await.expect("resumed");
    assert_eq!(as_map(&got), c.expected("Inbox").await);
    assert_eq!(c.requests().await, 2, "pages two and three only");
}
