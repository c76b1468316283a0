//! PKCE logins through the browser stand-in (redirects only, or the
//! emulator's approve form), and redirects with a wrong `state`, path or
//! Host refused without changing anything.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cloud_mdir_sync::auth::{
    AccountSpec, Audience, AuthManager, AuthOptions, LoginState, TokenSource,
};
use cloud_mdir_sync::endpoints::Endpoints;

use super::{
    Drive, FakeBrowser, Setup, assert_no_secrets_logged, cloud, following, http_no_redirect,
    is_login_needed, logged_in, manager, o365, requests, token_info,
};

#[tokio::test]
async fn pkce_login_follows_redirects() {
    let cloud = cloud(true).await;
    let dir = tempfile::tempdir().unwrap();
    let (b, m) = following(&cloud, dir.path(), vec![o365("a@example.com")]).await;
    let src = m.source(0).unwrap();
    let first = src.token(Audience::Graph).await;
    assert!(is_login_needed(&first), "{first:?}");
    logged_in(&m, 0).await;
    assert_eq!(b.opened(), vec![format!("{}login/0", m.url())]);

    let g = src.token(Audience::Graph).await.unwrap();
    let o = src.token(Audience::Outlook).await.unwrap();
    assert_eq!(
        token_info(&cloud, &g),
        ("a@example.com".into(), "Graph".into())
    );
    assert_eq!(
        token_info(&cloud, &o),
        ("a@example.com".into(), "Outlook".into())
    );
    // The code was redeemed once (for Outlook), Graph came from one refresh.
    assert_eq!(requests(&cloud, "/token"), 2);
    assert_eq!(m.statuses()[0].state, LoginState::LoggedIn);
    tokio::time::timeout(Duration::from_secs(60), async {
        while b.landed.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the browser lands");
    let (status, at, body) = b.landed.lock().unwrap()[0].clone();
    assert_eq!((status, at), (200, m.url()));
    assert!(body.contains("logged in"));
    m.shutdown().await;
    assert_no_secrets_logged(&cloud);
}

#[tokio::test]
async fn pkce_login_through_the_approve_form() {
    let cloud = cloud(false).await;
    let dir = tempfile::tempdir().unwrap();
    let b = FakeBrowser::new(Drive::ApproveForm);
    let spec = o365("form@example.com");
    let m = manager(&cloud, dir.path(), vec![spec], Setup::with(&b)).await;
    m.start_logins();
    logged_in(&m, 0).await;
    let t = m.account(0).unwrap().token(Audience::Graph).await.unwrap();
    assert_eq!(
        token_info(&cloud, &t),
        ("form@example.com".into(), "Graph".into())
    );
    assert_eq!(b.opened().len(), 1);
    m.shutdown().await;
    assert_no_secrets_logged(&cloud);
}

/// The `state` the pending login of account `i` sent.
async fn pending_state(m: &AuthManager, i: usize) -> (String, String) {
    let r = http_no_redirect()
        .get(format!("{}login/{i}", m.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 302);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let u = reqwest::Url::parse(&loc).unwrap();
    let state = u
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .to_string();
    (state, loc)
}

#[tokio::test]
async fn wrong_state_or_path_is_refused_and_changes_nothing() {
    let cloud = cloud(true).await;
    let dir = tempfile::tempdir().unwrap();
    let b = FakeBrowser::new(Drive::Nothing);
    let m = manager(
        &cloud,
        dir.path(),
        vec![o365("a@example.com"), AccountSpec::gmail("g@gmail.com")],
        Setup::with(&b),
    )
    .await;
    m.start_logins();
    let (ms_state, ms_url) = pending_state(&m, 0).await;
    let (g_state, _) = pending_state(&m, 1).await;
    let before = m.statuses();
    let http = http_no_redirect();
    let get = |path: String| {
        let http = http.clone();
        let url = format!("{}{}", m.url().trim_end_matches('/'), path);
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get("/oauth2/msal?state=nope&code=x".into()).await, 400);
    assert_eq!(get("/oauth2/msal?code=x".into()).await, 400);
    assert_eq!(
        get(format!("/oauth2/gmail?state={ms_state}&code=x")).await,
        400
    );
    assert_eq!(
        get(format!("/oauth2/msal?state={g_state}&code=x")).await,
        400
    );
    // A foreign Host (DNS rebinding) is refused outright.
    let r = http
        .get(format!("{}state", m.url()))
        .header("Host", "evil.example:80")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(m.statuses(), before);
    assert_eq!(pending_state(&m, 0).await.1, ms_url);
    assert_eq!(requests(&cloud, "/token"), 0);
    // The genuine redirect still completes, and chains on to the next login.
    let (_, url) = pending_state(&m, 0).await;
    let landed = reqwest::get(url).await.unwrap();
    assert_eq!(landed.status().as_u16(), 200);
    assert_eq!(landed.url().as_str(), m.url());
    logged_in(&m, 0).await;
    logged_in(&m, 1).await;
    // A replayed redirect finds no pending login.
    assert_eq!(
        get(format!("/oauth2/msal?state={ms_state}&code=x")).await,
        400
    );
    m.shutdown().await;

    let mut o = AuthOptions::new(
        "0.0.0.0:0".parse::<SocketAddr>().unwrap(),
        Endpoints::emulated(cloud.base_url()),
        dir.path().join("t"),
    );
    o.browser = Arc::new(b.clone());
    assert!(matches!(
        AuthManager::start(vec![], o).await,
        Err(cloud_mdir_sync::auth::StartError::NotLoopback { .. })
    ));
    assert_no_secrets_logged(&cloud);
}
