//! The encrypted token store: logins survive a restart, nothing is in
//! clear, a lost keyring key means new logins, and without a keyring
//! nothing is written.

use std::sync::Arc;

use cloud_mdir_sync::auth::{AccountSpec, Audience, LoginState, MemoryKeyring, TokenSource};

use crate::util::log_buffer;

use super::{
    Drive, FakeBrowser, Setup, assert_no_secrets_logged, cloud, logged_in, manager, o365,
    token_info,
};

#[tokio::test]
async fn encrypted_store_survives_a_restart() {
    let cloud = cloud(true).await;
    let dir = tempfile::tempdir().unwrap();
    let kr = MemoryKeyring::new();
    let b = FakeBrowser::new(Drive::Follow);
    let specs = vec![o365("s@example.com"), AccountSpec::gmail("s@gmail.com")];
    let mut s = Setup::with(&b);
    s.keyring = Some(Arc::new(kr.clone()));
    let m = manager(&cloud, dir.path(), specs.clone(), s).await;
    assert!(m.is_persistent());
    m.start_logins();
    logged_in(&m, 0).await;
    logged_in(&m, 1).await;
    m.account(0).unwrap().token(Audience::Graph).await.unwrap();
    m.shutdown().await;
    assert_eq!(kr.len(), 1);

    let file = std::fs::read(dir.path().join("state/tokens.enc")).unwrap();
    for rt in cloud.app().lock().auth.refresh.keys() {
        assert!(
            !file.windows(rt.len()).any(|w| w == rt.as_bytes()),
            "refresh token in clear"
        );
    }

    let b2 = FakeBrowser::new(Drive::Nothing);
    let mut s = Setup::with(&b2);
    s.keyring = Some(Arc::new(kr.clone()));
    let m2 = manager(&cloud, dir.path(), specs.clone(), s).await;
    assert!(
        m2.statuses()
            .iter()
            .all(|s| s.state == LoginState::LoggedIn)
    );
    let t = m2.account(0).unwrap().token(Audience::Graph).await.unwrap();
    assert_eq!(token_info(&cloud, &t).0, "s@example.com");
    m2.account(1).unwrap().token(Audience::Gmail).await.unwrap();
    assert!(b2.opened().is_empty(), "no login after the restart");
    m2.shutdown().await;

    // Another keyring (key lost): the file is unreadable, logins needed.
    let mut s = Setup::with(&b2);
    s.keyring = Some(Arc::new(MemoryKeyring::new()));
    let m3 = manager(&cloud, dir.path(), specs.clone(), s).await;
    assert!(
        m3.statuses()
            .iter()
            .all(|s| s.state == LoginState::LoginNeeded)
    );
    m3.shutdown().await;

    // No keyring: nothing is written, nothing survives.
    let dir2 = tempfile::tempdir().unwrap();
    let m4 = manager(&cloud, dir2.path(), specs.clone(), Setup::with(&b)).await;
    assert!(!m4.is_persistent());
    m4.start_logins();
    logged_in(&m4, 0).await;
    logged_in(&m4, 1).await;
    m4.shutdown().await;
    assert!(!dir2.path().join("state").exists());
    let m5 = manager(&cloud, dir2.path(), specs, Setup::with(&b2)).await;
    assert_eq!(m5.statuses()[0].state, LoginState::LoginNeeded);
    m5.shutdown().await;
    let log = String::from_utf8_lossy(&log_buffer().lock().unwrap()).into_owned();
    assert!(log.contains("logins do not survive a restart"));
    assert_no_secrets_logged(&cloud);
}
