//! OAuth against the emulator: PKCE logins driven by a browser stand-in,
//! refresh ahead of expiry with rotation and two resources, 401 handling,
//! revocation, redirect checks, device code, the encrypted token store, and
//! a scan of all debug logs for token strings.

use futures_util::future::BoxFuture;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cloud_mdir_sync::auth::store::decrypt;
use cloud_mdir_sync::auth::{
    AccessToken, AccountSpec, Audience, AuthError, AuthManager, AuthOptions, Browser, Clock,
    Keyring, LoginState, MemoryKeyring, TokenSource,
};
use cloud_mdir_sync::endpoints::Endpoints;
use fake_cloud::{FakeCloud, Handle, Options};

use crate::util::log_buffer;

/// Every access and refresh token the emulator issued.
fn issued_secrets(cloud: &Handle) -> Vec<String> {
    let st = cloud.app().lock();
    st.auth
        .access
        .keys()
        .chain(st.auth.refresh.keys())
        .cloned()
        .collect()
}

/// The log scan: no token the emulator issued appears in any log line.
fn assert_no_secrets_logged(cloud: &Handle) {
    let secrets = issued_secrets(cloud);
    let log = String::from_utf8_lossy(&log_buffer().lock().unwrap()).into_owned();
    if std::env::var_os("CMS_DUMP_AUTH_LOG").is_some() {
        eprintln!("{log}");
    }
    assert!(log.contains("cloud_mdir_sync::auth"), "logs were captured");
    for s in secrets {
        assert!(!log.contains(&s), "a token was logged");
    }
}

async fn cloud(auto_approve: bool) -> Handle {
    log_buffer();
    FakeCloud::start(Options {
        auto_approve,
        ..Options::default()
    })
    .await
    .unwrap()
}

/// Time is the emulator's clock, so moving it ages our cached tokens too.
struct EmuClock {
    app: Arc<fake_cloud::App>,
}

impl Clock for EmuClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.app.now_ms() as u64)
    }
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// The emulator's clock, where every sleep is reported to the test and
/// returns once the test says how far to move the clock.
struct GateClock {
    app: Arc<fake_cloud::App>,
    calls: tokio::sync::mpsc::UnboundedSender<Duration>,
    steps: Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<u64>>>,
}

impl Clock for GateClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.app.now_ms() as u64)
    }
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        let _ = self.calls.send(d);
        let steps = self.steps.clone();
        let app = self.app.clone();
        Box::pin(async move {
            if let Some(secs) = steps.lock().await.recv().await {
                app.clock.advance_ms(secs as i64 * 1000);
            }
        })
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Drive {
    /// Follow redirects only (the emulator auto-approves).
    Follow,
    /// Also submit the emulator's login form with Approve.
    ApproveForm,
    /// Record the URL, do nothing (no browser came up).
    Nothing,
}

/// A browser stand-in: performs the GETs (and the form POST) a browser
/// would, following every redirect.
#[derive(Clone)]
struct FakeBrowser {
    drive: Arc<Mutex<Drive>>,
    opened: Arc<Mutex<Vec<String>>>,
    /// Final (status, url, body) of each browsing session.
    landed: Arc<Mutex<Vec<(u16, String, String)>>>,
}

impl FakeBrowser {
    fn new(drive: Drive) -> FakeBrowser {
        FakeBrowser {
            drive: Arc::new(Mutex::new(drive)),
            opened: Arc::default(),
            landed: Arc::default(),
        }
    }
    fn opened(&self) -> Vec<String> {
        self.opened.lock().unwrap().clone()
    }
    fn set(&self, d: Drive) {
        *self.drive.lock().unwrap() = d;
    }
}

async fn browse(url: String, drive: Drive) -> (u16, String, String) {
    let http = reqwest::Client::new();
    let resp = http.get(&url).send().await.unwrap();
    let (mut status, mut at) = (resp.status().as_u16(), resp.url().to_string());
    let mut body = resp.text().await.unwrap();
    if drive == Drive::ApproveForm && body.contains("name=\"pending\"") {
        let pending = between(&body, "name=\"pending\" value=\"", "\"");
        let action = between(&body, "action=\"", "\"");
        // A person leaves the pre-filled account as it is.
        let user = between(&body, "name=\"user\" value=\"", "\"");
        let base = at.split('/').take(3).collect::<Vec<_>>().join("/");
        let resp = http
            .post(format!("{base}{action}"))
            .form(&[
                ("pending", pending.as_str()),
                ("user", user.as_str()),
                ("action", "approve"),
            ])
            .send()
            .await
            .unwrap();
        status = resp.status().as_u16();
        at = resp.url().to_string();
        body = resp.text().await.unwrap();
    }
    (status, at, body)
}

fn between(s: &str, a: &str, b: &str) -> String {
    let i = s.find(a).expect("marker") + a.len();
    let j = s[i..].find(b).expect("end marker") + i;
    s[i..j].to_string()
}

impl Browser for FakeBrowser {
    fn open(&self, url: &str) -> Result<(), String> {
        self.opened.lock().unwrap().push(url.to_string());
        let drive = *self.drive.lock().unwrap();
        if drive == Drive::Nothing {
            return Ok(());
        }
        let landed = self.landed.clone();
        let url = url.to_string();
        tokio::spawn(async move {
            let r = browse(url, drive).await;
            landed.lock().unwrap().push(r);
        });
        Ok(())
    }
}

struct Setup {
    browser: Arc<dyn Browser>,
    keyring: Option<Arc<dyn Keyring>>,
    clock: Option<Arc<dyn Clock>>,
    device_all: bool,
    device_attempts: u32,
}

impl Setup {
    fn with(browser: &FakeBrowser) -> Setup {
        Setup {
            browser: Arc::new(browser.clone()),
            keyring: None,
            clock: None,
            device_all: false,
            device_attempts: 3,
        }
    }
}

async fn manager(cloud: &Handle, dir: &Path, specs: Vec<AccountSpec>, s: Setup) -> AuthManager {
    let mut o = AuthOptions::new(
        "127.0.0.1:0".parse().unwrap(),
        Endpoints::emulated(cloud.base_url()),
        dir.join("state/tokens.enc"),
    );
    o.browser = s.browser;
    o.keyring = s.keyring;
    o.clock = s.clock.unwrap_or_else(|| {
        Arc::new(EmuClock {
            app: cloud.app().clone(),
        })
    });
    o.device_code_all = s.device_all;
    o.device_attempts = s.device_attempts;
    AuthManager::start(specs, o).await.unwrap()
}

fn o365(user: &str) -> AccountSpec {
    AccountSpec::office365(Some(user))
}

/// Requests to an emulator route family (e.g. `/token`), by route-name suffix.
fn requests(cloud: &Handle, suffix: &str) -> u64 {
    let stats = cloud.app().stats().to_json();
    stats["routes"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.ends_with(suffix))
                .map(|(_, v)| v["requests"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

/// The emulator's record of an access token: (user, audience).
fn token_info(cloud: &Handle, t: &AccessToken) -> (String, String) {
    let st = cloud.app().lock();
    let a = st.auth.access.get(t.secret()).expect("an issued token");
    (a.user.clone(), format!("{:?}", a.audience))
}

/// Refresh tokens of `user` that can still be redeemed.
fn live_rts(cloud: &Handle, user: &str) -> Vec<String> {
    let st = cloud.app().lock();
    st.auth
        .refresh
        .iter()
        .filter(|(_, r)| r.user == user && !r.used && !r.revoked)
        .map(|(k, _)| k.clone())
        .collect()
}

async fn logged_in(m: &AuthManager, i: usize) {
    tokio::time::timeout(
        Duration::from_secs(60),
        m.account(i).unwrap().wait_logged_in(),
    )
    .await
    .expect("login completes");
}

async fn wait_until(m: &AuthManager, pred: impl Fn(&AuthManager) -> bool) {
    let mut rx = m.subscribe();
    tokio::time::timeout(Duration::from_secs(60), async {
        while !pred(m) {
            rx.changed().await.unwrap();
        }
    })
    .await
    .expect("state reached");
}

fn http_no_redirect() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn is_login_needed(r: &Result<AccessToken, AuthError>) -> bool {
    matches!(r, Err(AuthError::LoginNeeded { .. }))
}

#[tokio::test]
async fn pkce_login_follows_redirects() {
    let cloud = cloud(true).await;
    let dir = tempfile::tempdir().unwrap();
    let b = FakeBrowser::new(Drive::Follow);
    let m = manager(
        &cloud,
        dir.path(),
        vec![o365("a@example.com")],
        Setup::with(&b),
    )
    .await;
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
    let b = FakeBrowser::new(Drive::Follow);
    let m = manager(
        &cloud,
        dir.path(),
        vec![o365("u@example.com")],
        Setup::with(&b),
    )
    .await;
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
    let b = FakeBrowser::new(Drive::Follow);
    let m = manager(
        &cloud,
        dir.path(),
        vec![o365("a@example.com"), o365("b@example.com")],
        Setup::with(&b),
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

#[tokio::test]
async fn an_open_page_gets_the_login_instead_of_a_new_window() {
    let cloud = cloud(true).await;
    let dir = tempfile::tempdir().unwrap();
    let b = FakeBrowser::new(Drive::Nothing);
    let m = manager(
        &cloud,
        dir.path(),
        vec![o365("p@example.com")],
        Setup::with(&b),
    )
    .await;
    let mut events = reqwest::get(format!("{}events", m.url())).await.unwrap();
    assert_eq!(
        events.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut seen = String::new();
    let mut next_event = async || -> serde_json::Value {
        loop {
            if let Some(end) = seen.find("\n\n") {
                let ev: String = seen.drain(..end + 2).collect();
                if let Some(data) = ev.lines().find_map(|l| l.strip_prefix("data:")) {
                    return serde_json::from_str(data.trim()).unwrap();
                }
                continue;
            }
            let chunk = events.chunk().await.unwrap().expect("stream open");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    let first = next_event().await;
    assert_eq!(first["next_login"], serde_json::Value::Null);
    assert_eq!(m.pages_connected(), 1);
    assert!(is_login_needed(
        &m.account(0).unwrap().token(Audience::Graph).await
    ));
    let ev = loop {
        let ev = next_event().await;
        if !ev["next_login"].is_null() {
            break ev;
        }
    };
    assert_eq!(ev["next_login"], "/login/0");
    assert!(b.opened().is_empty(), "no window while a page is open");
    m.shutdown().await;
    assert_no_secrets_logged(&cloud);
}

#[tokio::test]
async fn device_code_pending_slow_down_approved() {
    let cloud = cloud(false).await;
    let dir = tempfile::tempdir().unwrap();
    let b = FakeBrowser::new(Drive::Nothing);
    let (calls_tx, mut calls) = tokio::sync::mpsc::unbounded_channel();
    let (steps, steps_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let mut s = Setup::with(&b);
    s.clock = Some(Arc::new(GateClock {
        app: cloud.app().clone(),
        calls: calls_tx,
        steps: Arc::new(tokio::sync::Mutex::new(steps_rx)),
    }));
    let mut spec = o365("d@example.com");
    spec.device_code = true;
    spec.smtp = true;
    let m = manager(&cloud, dir.path(), vec![spec], s).await;
    let a = m.account(0).unwrap();
    assert!(is_login_needed(&a.token(Audience::Graph).await));
    // Waiting for the first poll: the code is shown on the page.
    assert_eq!(calls.recv().await, Some(Duration::from_secs(5)));
    let code = a.status().device.expect("device code shown").user_code;
    let page = reqwest::get(m.url()).await.unwrap().text().await.unwrap();
    assert!(page.contains(&code));
    assert!(b.opened().is_empty());
    steps.send(5).unwrap(); // poll 1: authorization_pending
    assert_eq!(calls.recv().await, Some(Duration::from_secs(5)));
    steps.send(1).unwrap(); // poll 2, too early: slow_down
    assert_eq!(calls.recv().await, Some(Duration::from_secs(10)));
    let r = reqwest::Client::new()
        .post(format!("{}/_control/device", cloud.base_url()))
        .json(&serde_json::json!({"user_code": code, "user": "d@example.com"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    steps.send(10).unwrap(); // poll 3: the grant
    logged_in(&m, 0).await;
    assert_eq!(requests(&cloud, "/token"), 3);
    let g = a.token(Audience::Graph).await.unwrap();
    let o = a.token(Audience::Outlook).await.unwrap();
    assert_eq!(token_info(&cloud, &g).1, "Graph");
    assert_eq!(token_info(&cloud, &o).1, "Outlook");
    assert_eq!(a.status().device, None);
    m.shutdown().await;
    assert_no_secrets_logged(&cloud);
}

#[tokio::test]
async fn device_code_expiry_restarts_then_reports() {
    let cloud = cloud(false).await;
    let dir = tempfile::tempdir().unwrap();
    let b = FakeBrowser::new(Drive::Nothing);
    let (calls_tx, mut calls) = tokio::sync::mpsc::unbounded_channel();
    let (steps, steps_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let mut s = Setup::with(&b);
    s.clock = Some(Arc::new(GateClock {
        app: cloud.app().clone(),
        calls: calls_tx,
        steps: Arc::new(tokio::sync::Mutex::new(steps_rx)),
    }));
    s.device_all = true;
    s.device_attempts = 2;
    let m = manager(&cloud, dir.path(), vec![o365("x@example.com")], s).await;
    let a = m.account(0).unwrap();
    m.start_logins();
    let mut codes = VecDeque::new();
    for _ in 0..2 {
        calls.recv().await.unwrap();
        codes.push_back(a.status().device.unwrap().user_code);
        steps.send(901).unwrap(); // past the 900 s lifetime: expired_token
    }
    assert_ne!(codes[0], codes[1], "a new code after expiry");
    wait_until(&m, |m| m.statuses()[0].state == LoginState::Failed).await;
    let st = a.status();
    assert!(st.detail.unwrap().contains("expired"));
    assert_eq!(st.device, None);
    assert_eq!(requests(&cloud, "/devicecode"), 2);
    assert!(is_login_needed(&a.token(Audience::Graph).await));
    // A failed login is not retried behind the user's back.
    assert_eq!(requests(&cloud, "/devicecode"), 2);
    m.shutdown().await;
}

#[tokio::test]
async fn gmail_device_flow_is_refused_clearly() {
    let cloud = cloud(true).await;
    let dir = tempfile::tempdir().unwrap();
    let b = FakeBrowser::new(Drive::Nothing);
    let mut g = AccountSpec::gmail("g@gmail.com");
    g.device_code = true;
    let m = manager(&cloud, dir.path(), vec![g], Setup::with(&b)).await;
    let r = m.account(0).unwrap().token(Audience::Gmail).await;
    match &r {
        Err(AuthError::LoginNeeded { reason, .. }) => {
            assert!(reason.contains("device code"), "{reason}");
            assert!(reason.contains("Gmail"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(m.statuses()[0].state, LoginState::Failed);
    assert_eq!(cloud.app().stats().to_json()["requests"], 0);
    assert!(b.opened().is_empty());
    m.shutdown().await;

    // With device code for all accounts, Gmail ones use the browser.
    let b = FakeBrowser::new(Drive::Follow);
    let mut s = Setup::with(&b);
    s.device_all = true;
    let mut g = AccountSpec::gmail("g@gmail.com");
    g.smtp = true;
    let m = manager(&cloud, dir.path(), vec![g], s).await;
    m.start_logins();
    logged_in(&m, 0).await;
    let a = m.account(0).unwrap();
    let t = a.token(Audience::Gmail).await.unwrap();
    assert_eq!(a.token(Audience::GoogleMail).await.unwrap(), t);
    {
        let st = cloud.app().lock();
        let info = &st.auth.access[t.secret()];
        assert!(info.has_any(&["gmail.modify"]));
        assert!(
            info.scopes
                .iter()
                .any(|s| s.as_str() == "https://mail.google.com/")
        );
    }
    assert_eq!(requests(&cloud, "/device/code"), 0);
    m.shutdown().await;
    assert_no_secrets_logged(&cloud);
}

#[tokio::test]
async fn gmail_refresh_keeps_the_refresh_token() {
    let cloud = cloud(true).await;
    let dir = tempfile::tempdir().unwrap();
    let b = FakeBrowser::new(Drive::Follow);
    let m = manager(
        &cloud,
        dir.path(),
        vec![AccountSpec::gmail("h@gmail.com")],
        Setup::with(&b),
    )
    .await;
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

/// The page in a real browser: headless Chromium opens `/` first; then
/// two logins become pending; the page's script follows the events to each
/// login and back, and no other window is asked for. Needs Debian's
/// `chromium`: `cargo test --test integration real_browser -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn real_browser_page_logs_in_two_accounts() {
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
    let profile = tempfile::tempdir().unwrap();
    let mut chromium = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            &format!("--user-data-dir={}", profile.path().display()),
            "--remote-debugging-port=0",
            &m.url(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium runs");
    wait_until_polled(|| m.pages_connected() == 1).await;
    m.start_logins();
    logged_in(&m, 0).await;
    logged_in(&m, 1).await;
    assert!(b.opened().is_empty(), "no window while the page is open");
    // Back on the page, which connects again.
    wait_until_polled(|| m.pages_connected() == 1).await;
    let _ = chromium.kill().await;
    m.shutdown().await;
}

/// Poll `pred` (for states no event announces), up to a minute.
async fn wait_until_polled(pred: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while !pred() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("state reached");
}
