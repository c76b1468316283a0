//! Gmail writes: flag changes and deletes land as the exact label changes,
//! grouped into `batchModify` calls.

use cloud_mdir_sync::cloud::{CloudMailbox, FlagChange};
use cloud_mdir_sync::types::DeleteAction;
use cloud_mdir_sync::types::Flags;
use fake_cloud::QuotaMode;

use super::{Env, FULL, as_map, assert_listing, fast};

#[tokio::test]
async fn set_flags_and_delete_reach_the_emulator_exactly() {
    let env = Env::start(QuotaMode::Off).await;
    let ids = env.populate("INBOX", 40, 71).await;
    let mb = env.mailbox(fast(), "INBOX");
    let listed = as_map(&mb.list().await.expect("list"));
    let before = env.labels().await;

    let change = |i: usize, set: Flags, clear: Flags| FlagChange {
        id: ids[i].clone(),
        set,
        clear,
    };
    let changes = vec![
        change(0, Flags::READ, Flags::NONE),
        change(1, Flags::READ, Flags::NONE),
        change(2, Flags::NONE, Flags::READ),
        change(3, Flags::FLAGGED, Flags::NONE),
        change(4, Flags::NONE, Flags::FLAGGED),
        change(5, Flags::READ | Flags::FLAGGED, Flags::NONE),
        change(6, Flags::REPLIED, Flags::NONE),
        change(7, Flags::READ | Flags::REPLIED, Flags::NONE),
    ];
    env.reset_stats().await;
    let results = mb.set_flags(changes).await;
    assert_eq!(results.len(), 8);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let s = env.stats().await;
    // Groups: -UNREAD {0,1,7}, +UNREAD {2}, +STARRED {3}, -STARRED {4},
    // +STARRED-UNREAD {5}; the replied-only change sends nothing.
    assert_eq!(s.on("gmail POST /users/me/messages/batchModify"), 5);
    assert_eq!(s.http_requests(), 5);

    let after = env.labels().await;
    let diff = |i: usize| -> (Vec<String>, Vec<String>) {
        let b = &before[&ids[i]];
        let a = &after[&ids[i]];
        (
            a.difference(b).cloned().collect(),
            b.difference(a).cloned().collect(),
        )
    };
    let had = |i: usize, l: &str| before[&ids[i]].contains(l);
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        diff(0).1,
        if had(0, "UNREAD") {
            s(&["UNREAD"])
        } else {
            s(&[])
        }
    );
    assert!(!after[&ids[1]].contains("UNREAD"));
    assert!(after[&ids[2]].contains("UNREAD"));
    assert!(after[&ids[3]].contains("STARRED"));
    assert!(!after[&ids[4]].contains("STARRED"));
    assert!(after[&ids[5]].contains("STARRED") && !after[&ids[5]].contains("UNREAD"));
    assert_eq!(diff(6), (s(&[]), s(&[])), "replied is not stored");
    assert!(!after[&ids[7]].contains("UNREAD"));
    for (i, id) in ids.iter().enumerate().skip(8) {
        assert_eq!(before[id], after[id], "untouched message {i}");
    }
    // The listing agrees (through history).
    let relisted = mb.list().await.expect("list");
    assert_listing(&env, "INBOX", &relisted).await;
    assert_ne!(as_map(&relisted), listed);

    // Archive removes INBOX only; delete adds TRASH only.
    env.reset_stats().await;
    let r = mb
        .delete(
            vec![ids[10].clone(), ids[11].clone()],
            DeleteAction::Archive,
        )
        .await;
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    let r = mb
        .delete(vec![ids[12].clone(), ids[13].clone()], DeleteAction::Delete)
        .await;
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    assert_eq!(
        env.stats()
            .await
            .on("gmail POST /users/me/messages/batchModify"),
        2
    );
    let after2 = env.labels().await;
    for i in [10, 11] {
        let mut want = after[&ids[i]].clone();
        want.remove("INBOX");
        assert_eq!(after2[&ids[i]], want, "archived {i}");
    }
    for i in [12, 13] {
        let mut want = after[&ids[i]].clone();
        want.insert("TRASH".into());
        assert_eq!(after2[&ids[i]], want, "trashed {i}");
    }
    let relisted = mb.list().await.expect("list");
    assert_listing(&env, "INBOX", &relisted).await;
    assert_eq!(relisted.len(), 36);

    // A message deleted meanwhile: deleting it again is fine, and a flag
    // change on it does not block the others.
    let full = env.token(&[FULL]);
    let path = format!("/messages/{}", ids[20]);
    assert_eq!(env.second(&full, "DELETE", &path, None).await, 204);
    let r = mb
        .delete(vec![ids[20].clone()], DeleteAction::Archive)
        .await;
    assert!(r[0].is_ok(), "{r:?}");
    let r = mb
        .set_flags(vec![
            change(20, Flags::FLAGGED, Flags::NONE),
            change(21, Flags::FLAGGED, Flags::NONE),
        ])
        .await;
    assert!(r[1].is_ok(), "{r:?}");
    assert!(env.labels().await[&ids[21]].contains("STARRED"));
}
