//! Token refresh: ahead of expiry with rotation and two resources, a 401
//! refreshes once and then logs in again, a revoked account needs a login
//! while another keeps working, and Gmail keeps its refresh token.

use std::sync::Arc;
use std::time::Duration;

use cloud_mdir_sync::auth::store::decrypt;
use cloud_mdir_sync::auth::{
    AccessToken, AccountSpec, Audience, AuthError, Keyring, LoginState, MemoryKeyring, TokenSource,
};
use fake_cloud::{FakeCloud, Options};

use crate::util::log_buffer;

use super::{
    Drive, FakeBrowser, Setup, assert_no_secrets_logged, cloud, following, is_login_needed,
    live_rts, logged_in, manager, o365, requests, token_info,
};

#[tokio::test]
async fn refresh_ahead_of_expiry_with_rotation_and_two_resources() {
    let cloud = FakeCloud::start(Options {
        auto_approve: true,
        token_lifetime: Duration::from_secs(600),
        ..Options::default()
    })
    .await
    .unwrap();
    log_buffer();
    let dir = tempfile::tempdir().unwrap();
    let b = FakeBrowser::new(Drive::Follow);
    let kr = MemoryKeyring::new();
    let mut s = Setup::with(&b);
    s.keyring = Some(Arc::new(kr.clone()));
    let m = manager(&cloud, dir.path(), vec![o365("r@example.com")], s).await;
    let a = m.account(0).unwrap();
    m.start_logins();
    logged_in(&m, 0).await;
    let o1 = a.token(Audience::Outlook).await.unwrap();
    let g1 = a.token(Audience::Graph).await.unwrap();
    assert_eq!(requests(&cloud, "/token"), 2);
    // Well before the refresh margin (a quarter of 600 s): cached.
    cloud.app().clock.advance_ms(100_000);
    assert_eq!(a.token(Audience::Graph).await.unwrap(), g1);
    assert_eq!(a.token(Audience::Outlook).await.unwrap(), o1);
    assert_eq!(requests(&cloud, "/token"), 2);
    // Inside the margin, still before expiry: both refreshed, each with
    // the newest refresh token (the emulator's are single-use).
    cloud.app().clock.advance_ms(351_000);
    let g2 = a.token(Audience::Graph).await.unwrap();
    let o2 = a.token(Audience::Outlook).await.unwrap();
    assert_ne!(g2, g1);
    assert_ne!(o2, o1);
    assert_eq!(token_info(&cloud, &g2).1, "Graph");
    assert_eq!(token_info(&cloud, &o2).1, "Outlook");
    assert_eq!(requests(&cloud, "/token"), 4);
    // Many callers at once after expiry: one refresh per resource, in
    // turn, each with the newest refresh token.
    cloud.app().clock.advance_ms(451_000);
    let calls = (0..6).map(|k| {
        let a = a.clone();
        let aud = if k % 2 == 0 {
            Audience::Graph
        } else {
            Audience::Outlook
        };
        tokio::spawn(async move { a.token(aud).await })
    });
    let got: Vec<_> = futures_util::future::join_all(calls).await;
    let got: Vec<AccessToken> = got.into_iter().map(|r| r.unwrap().unwrap()).collect();
    assert!(got.iter().step_by(2).all(|t| t == &got[0]));
    assert!(got.iter().skip(1).step_by(2).all(|t| t == &got[1]));
    assert_eq!(requests(&cloud, "/token"), 6);
    // The one refresh token still redeemable is the one saved, encrypted.
    let live = live_rts(&cloud, "r@example.com");
    assert_eq!(live.len(), 1);
    let file = std::fs::read(dir.path().join("state/tokens.enc")).unwrap();
    let key = kr
        .get(&format!(
            "token-store-key:{}",
            dir.path().join("state/tokens.enc").display()
        ))
        .unwrap()
        .unwrap();
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(key)
        .unwrap();
    let saved = decrypt(chacha20poly1305::Key::from_slice(&raw), &file).unwrap();
    assert_eq!(saved.values().next().unwrap().expose(), live[0]);
    m.shutdown().await;
    assert_no_secrets_logged(&cloud);
}

#[tokio::test]
async fn unauthorized_refreshes_once_then_logs_in_again() {
    let cloud = cloud(true).await;
    let dir = tempfile::tempdir().unwrap();
    let (b, m) = following(&cloud, dir.path(), vec![o365("u@example.com")]).await;
    let a = m.account(0).unwrap();
    m.start_logins();
    logged_in(&m, 0).await;
    let t1 = a.token(Audience::Graph).await.unwrap();
    let before = requests(&cloud, "/token");
    a.invalidate(Audience::Graph, &t1);
    let t2 = a.token(Audience::Graph).await.unwrap();
    assert_ne!(t1, t2);
    assert_eq!(requests(&cloud, "/token"), before + 1);
    // A stale token's 401 changes nothing.
    a.invalidate(Audience::Graph, &t1);
    assert_eq!(a.token(Audience::Graph).await.unwrap(), t2);
    // The refreshed token refused too: a new login.
    a.invalidate(Audience::Graph, &t2);
    assert!(is_login_needed(&a.token(Audience::Graph).await));
    logged_in(&m, 0).await;
    let t3 = a.token(Audience::Graph).await.unwrap();
    assert_ne!(t3, t2);
    assert_eq!(b.opened().len(), 2);
    m.shutdown().await;
    assert_no_secrets_logged(&cloud);
}

#[tokio::test]
async fn revoked_account_needs_login_while_another_keeps_working() {
    let cloud = cloud(true).await;
    let dir = tempfile::tempdir().unwrap();
    let (b, m) = following(
        &cloud,
        dir.path(),
        vec![o365("a@example.com"), o365("b@example.com")],
    )
    .await;
    m.start_logins();
    logged_in(&m, 0).await;
    logged_in(&m, 1).await;
    // One browser window carried both logins (redirect chains to the next).
    assert_eq!(b.opened().len(), 1);
    let (a, bb) = (m.account(0).unwrap(), m.account(1).unwrap());
    a.token(Audience::Graph).await.unwrap();
    bb.token(Audience::Graph).await.unwrap();

    b.set(Drive::Nothing);
    let r = reqwest::Client::new()
        .post(format!("{}/_control/revoke", cloud.base_url()))
        .json(&serde_json::json!({"user": "a@example.com"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    // Let the cached tokens expire.
    cloud.app().clock.advance_ms(3_600_000);
    let r = a.token(Audience::Graph).await;
    match &r {
        Err(AuthError::LoginNeeded { user, reason }) => {
            assert_eq!(user, "a@example.com");
            assert!(reason.contains("invalid_grant"), "{reason}");
        }
        other => panic!("expected LoginNeeded, got {other:?}"),
    }
    let s = &m.statuses()[0];
    assert_eq!(s.state, LoginState::LoggingIn);
    assert!(s.browser_pending);
    // The other account is unaffected.
    for _ in 0..2 {
        let t = bb.token(Audience::Graph).await.unwrap();
        assert_eq!(token_info(&cloud, &t).0, "b@example.com");
        cloud.app().clock.advance_ms(3_600_000);
    }
    // The page shows the pending login.
    let st: serde_json::Value = reqwest::get(format!("{}state", m.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["next_login"], "/login/0");
    assert_eq!(st["accounts"][0]["state"], "logging_in");
    assert_eq!(st["accounts"][1]["state"], "logged_in");
    let page = reqwest::get(m.url()).await.unwrap().text().await.unwrap();
    assert!(page.contains("data-state=\"logging_in\""));
    assert!(page.contains("href=\"/login/0\""));
    m.shutdown().await;
    assert_no_secrets_logged(&cloud);
}

#[tokio::test]
async fn gmail_refresh_keeps_the_refresh_token() {
    let cloud = cloud(true).await;
    let dir = tempfile::tempdir().unwrap();
    let (_b, m) = following(&cloud, dir.path(), vec![AccountSpec::gmail("h@gmail.com")]).await;
    m.start_logins();
    logged_in(&m, 0).await;
    let a = m.account(0).unwrap();
    let t1 = a.token(Audience::Gmail).await.unwrap();
    cloud.app().clock.advance_ms(3_500_000);
    let t2 = a.token(Audience::Gmail).await.unwrap();
    cloud.app().clock.advance_ms(3_500_000);
    let t3 = a.token(Audience::Gmail).await.unwrap();
    assert!(t1 != t2 && t2 != t3);
    assert!(matches!(
        a.token(Audience::Graph).await,
        Err(AuthError::Unavailable { .. })
    ));
    m.shutdown().await;
    assert_no_secrets_logged(&cloud);
}
