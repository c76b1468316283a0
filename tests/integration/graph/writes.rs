//! Graph writes: flag changes as behavior.md says (the replied state
//! included), deletions to Archive or Deleted Items, and `$batch` groups.

use cloud_mdir_sync::cloud::graph::wire::parse_utc;
use cloud_mdir_sync::cloud::{CloudEntry, CloudMailbox, ErrorKind, FlagChange};
use cloud_mdir_sync::types::DeleteAction;
use cloud_mdir_sync::types::Flags;
use serde_json::json;

use super::{Cloud, USER, as_map, change};

#[tokio::test]
async fn flag_writes_land_as_behavior_says() {
    let c = Cloud::start().await;
    let body = |n: usize| format!("Message-ID: <f{n}@example.com>\r\nSubject: {n}\r\n\r\nx\r\n");
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(c.deliver("Inbox", &body(n)).await);
    }
    let acct = c.account();
    let mb = c.mailbox(&acct, "Inbox");
    mb.list().await.expect("list");
    let r = mb
        .set_flags(vec![
            change(&ids[0], Flags::READ, Flags::NONE),
            change(&ids[1], Flags::FLAGGED, Flags::NONE),
            change(&ids[2], Flags::REPLIED | Flags::READ, Flags::NONE),
            change(&ids[3], Flags::REPLIED, Flags::NONE),
            change(&ids[4], Flags::DELETED, Flags::NONE),
        ])
        .await;
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    let m0 = c.message(&ids[0]).await;
    assert_eq!(
        (m0["isRead"].clone(), m0["flag"]["flagStatus"].clone()),
        (json!(true), json!("notFlagged"))
    );
    let m1 = c.message(&ids[1]).await;
    assert_eq!(
        (m1["isRead"].clone(), m1["flag"]["flagStatus"].clone()),
        (json!(false), json!("flagged"))
    );
    for id in [&ids[2], &ids[3]] {
        let p = &c.message(id).await["singleValueExtendedProperties"];
        assert_eq!(p["Integer 0x1081"], "103");
        assert_eq!(p["Integer 0x1080"], "261");
        let when = p["SystemTime 0x1082"].as_str().expect("verb time");
        assert!(parse_utc(when).is_some(), "{when}");
    }
    assert_eq!(
        as_map(&mb.list().await.expect("list")),
        c.expected("Inbox").await
    );
    let flags = |l: &[CloudEntry], id: &str| l.iter().find(|e| &*e.id == id).map(|e| e.flags);
    let l = mb.list().await.expect("list");
    assert_eq!(flags(&l, &ids[2]), Some(Flags::REPLIED | Flags::READ));
    assert_eq!(flags(&l, &ids[3]), Some(Flags::REPLIED));

    // Clearing: the icon becomes read (256) or new (-1), the verb neutral.
    let r = mb
        .set_flags(vec![
            change(&ids[2], Flags::NONE, Flags::REPLIED),
            change(&ids[3], Flags::NONE, Flags::REPLIED),
            change(&ids[0], Flags::NONE, Flags::READ),
            change(&ids[1], Flags::NONE, Flags::FLAGGED),
        ])
        .await;
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    let p2 = c.message(&ids[2]).await["singleValueExtendedProperties"].clone();
    let p3 = c.message(&ids[3]).await["singleValueExtendedProperties"].clone();
    assert_eq!(p2["Integer 0x1080"], "256");
    assert_eq!(p3["Integer 0x1080"], "-1");
    assert_eq!(p2["Integer 0x1081"], "0");
    let l = mb.list().await.expect("list");
    assert_eq!(as_map(&l), c.expected("Inbox").await);
    for id in &ids[..4] {
        let want = if *id == ids[2] {
            Flags::READ
        } else {
            Flags::NONE
        };
        assert_eq!(flags(&l, id), Some(want), "{id}");
    }

    // Deletions: archive vs deleted items.
    let r = mb.delete(vec![ids[0].clone()], DeleteAction::Archive).await;
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    let r = mb.delete(vec![ids[1].clone()], DeleteAction::Delete).await;
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    assert_eq!(c.message(&ids[0]).await["folder"], "Archive");
    assert_eq!(c.message(&ids[1]).await["folder"], "Deleted Items");
    let l = mb.list().await.expect("list");
    assert_eq!(l.len(), 4);
    // A message that no longer exists: NotFound.
    let r = mb
        .set_flags(vec![change("AAkALgGone", Flags::READ, Flags::NONE)])
        .await;
    assert_eq!(r[0].as_ref().expect_err("gone").kind, ErrorKind::NotFound);
    assert_eq!(c.stats().await["throttled"], 0);
}

#[tokio::test]
async fn many_changes_go_in_batches_of_twenty() {
    let c = Cloud::start().await;
    let ids = c.populate("Inbox", 60).await;
    let acct = c.account();
    let mb = c.mailbox(&acct, "Inbox");
    let before = mb.list().await.expect("list");
    c.reset_stats().await;
    let changes: Vec<FlagChange> = ids[..45]
        .iter()
        .map(|id| {
            let read = before
                .iter()
                .any(|e| *e.id == **id && e.flags.contains(Flags::READ));
            if read {
                change(id, Flags::FLAGGED, Flags::READ)
            } else {
                change(id, Flags::READ | Flags::FLAGGED, Flags::NONE)
            }
        })
        .collect();
    let r = mb.set_flags(changes).await;
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    assert_eq!(c.route_count("graph POST /$batch").await, 3);
    assert_eq!(
        c.route_count("graph PATCH /me/messages/{id} (in $batch)")
            .await,
        45
    );
    let after = mb.list().await.expect("list");
    assert_eq!(as_map(&after), c.expected("Inbox").await);
    for id in &ids[..45] {
        let was = before
            .iter()
            .find(|e| *e.id == **id)
            .map(|e| e.flags)
            .unwrap_or_default();
        let now = after
            .iter()
            .find(|e| *e.id == **id)
            .map(|e| e.flags)
            .unwrap_or_default();
        assert_eq!(
            now.contains(Flags::READ),
            !was.contains(Flags::READ),
            "{id}"
        );
        assert!(now.contains(Flags::FLAGGED));
    }
    let s = c.stats().await;
    assert_eq!(s["throttled"], 0, "{s}");
    let peak = s["mailboxes"][format!("graph {USER}")]["peak_attempted"].as_u64();
    assert!(peak.expect("peak") <= 4, "{s}");
}
