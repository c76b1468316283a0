//! OAuth against the emulator. This file holds the fixtures every topic
//! shares: the emulator with the global log capture, the emulator's clock,
//! [`FakeBrowser`] (a browser stand-in that follows redirects and can
//! submit the approve form), building an [`AuthManager`], the emulator's
//! records of issued tokens, and the log scan for token strings. The tests
//! are in the sub-modules, by topic:
//!
//! - `login`: PKCE logins (redirects, the approve form), and the `state`,
//!   path and Host checks of the redirect.
//! - `page`: the login page's events instead of a new window, and the page
//!   in a real browser (ignored; needs Chromium).
//! - `refresh`: refresh ahead of expiry with rotation and two resources,
//!   401 handling, revocation, Gmail refresh.
//! - `device_code`: the device code flow (pending, slow down, expiry) and
//!   its refusal for Gmail.
//! - `store`: the encrypted token store across restarts, keyring lost or
//!   absent.

mod device_code;
mod login;
mod page;
mod refresh;
mod store;

use futures_util::future::BoxFuture;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cloud_mdir_sync::auth::{
    AccessToken, AccountSpec, AuthError, AuthManager, AuthOptions, Browser, Clock, Keyring,
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

/// A manager for `specs` whose browser follows every login to the end.
async fn following(
    cloud: &Handle,
    dir: &Path,
    specs: Vec<AccountSpec>,
) -> (FakeBrowser, AuthManager) {
    let b = FakeBrowser::new(Drive::Follow);
    let m = manager(cloud, dir, specs, Setup::with(&b)).await;
    (b, m)
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
