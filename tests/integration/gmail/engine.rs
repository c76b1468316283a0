//! The sync engine over a Gmail label: initial sync, idle cycles, a local
//! replied flag kept locally, a local read flag sent, restarts.

use std::sync::Arc;

use cloud_mdir_sync::cloud::gmail;
use cloud_mdir_sync::maildir::parse_name;
use cloud_mdir_sync::sync::engine::Folder;
use cloud_mdir_sync::types::DeleteAction;
use cloud_mdir_sync::types::Flags;
use fake_cloud::QuotaMode;

use crate::util::{Home, build_engine, maildir_files};

use super::{Env, USER, fast};

const CFG: &str = r#"
inbox = MailDir("~/mail/inbox")
gmail = GMail("INBOX", GMail_Account(user="user@gmail.com"))
"#;

#[tokio::test]
async fn engine_syncs_a_label_and_keeps_replied_locally() {
    let env = Env::start(QuotaMode::Off).await;
    env.populate("INBOX", 500, 111).await;
    let home = Home::new();
    let loaded = home.config(CFG);
    let account = env.account(fast());
    let key = format!("gmail:{USER}/INBOX");
    let engine = |account: Arc<gmail::Account>| {
        let loaded = &loaded;
        let key = key.clone();
        async move {
            let folder = Folder {
                cloud: Arc::new(gmail::Mailbox::new(account, "INBOX", &key)),
                key,
                delete_action: DeleteAction::Archive,
            };
            build_engine(loaded, vec![folder], false).await
        }
    };
    let inbox = home.path().join("mail/inbox");

    let mut e = engine(account.clone()).await;
    let r = e.cycle().await.expect("cycle");
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.downloads, 500);
    let local = maildir_files(&inbox);
    assert_eq!(local.len(), 500);
    let want = env.expected("INBOX").await;
    let mut want_flags: Vec<Flags> = want.values().map(|v| v.0).collect();
    let mut got_flags: Vec<Flags> = local.iter().map(|(_, f)| *f).collect();
    want_flags.sort();
    got_flags.sort();
    assert_eq!(got_flags, want_flags, "local flags are the cloud's");
    assert!(
        local
            .iter()
            .all(|(p, _)| !std::fs::read(p).expect("read").contains(&b'\r'))
    );

    // Second cycle: nothing to download, nothing to do, one request.
    env.reset_stats().await;
    let r = e.cycle().await.expect("cycle");
    assert_eq!((r.downloads, r.actions), (0, 0), "{r:?}");
    assert_eq!(env.stats().await.http_requests(), 1);

    // Replied set locally: kept locally, never sent.
    let labels_before = env.labels().await;
    let (path, flags) = local[0].clone();
    let name = path
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let (base, _, other) = parse_name(&name);
    let (sub, new_name) =
        cloud_mdir_sync::maildir::encode_name(base, flags | Flags::REPLIED, &other);
    let replied = inbox.join(sub.as_str()).join(new_name);
    std::fs::rename(&path, &replied).expect("rename");
    env.reset_stats().await;
    let r = e.cycle().await.expect("cycle");
    assert!(r.is_clean(), "{r:?}");
    let s = env.stats().await;
    assert_eq!(s.on("gmail POST /users/me/messages/batchModify"), 0);
    assert_eq!(
        env.labels().await,
        labels_before,
        "nothing changed in the cloud"
    );
    assert!(replied.exists(), "replied flag kept locally");

    // A local read flag goes to the cloud; the replied flag stays.
    let unread = maildir_files(&inbox)
        .into_iter()
        .find(|(_, f)| !f.contains(Flags::READ) && !f.contains(Flags::REPLIED))
        .expect("an unread message");
    let name = unread
        .0
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let (base, _, other) = parse_name(&name);
    let (sub, new_name) =
        cloud_mdir_sync::maildir::encode_name(base, unread.1 | Flags::READ, &other);
    std::fs::rename(&unread.0, inbox.join(sub.as_str()).join(new_name)).expect("rename");
    let r = e.cycle().await.expect("cycle");
    assert!(r.is_clean(), "{r:?}");
    let after = env.labels().await;
    let changed: Vec<_> = after
        .iter()
        .filter(|(id, l)| labels_before.get(*id) != Some(l))
        .collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert!(!changed[0].1.contains("UNREAD"));

    // A restart resumes from the persisted cursor: no download, one request
    // (profile) plus a history page for our own change.
    drop(e);
    let mut e = engine(env.account(fast())).await;
    env.reset_stats().await;
    let r = e.cycle().await.expect("cycle");
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.downloads, 0);
    assert!(env.stats().await.http_requests() <= 2);
    let r = e.cycle().await.expect("cycle");
    assert_eq!(r.actions, 0, "converged: {r:?}");
    assert!(replied.exists(), "replied flag survives the restart");
}
