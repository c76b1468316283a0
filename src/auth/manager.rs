//! The [`AuthManager`]: owns every account's refresh token and cached
//! access tokens, runs logins (browser PKCE through the loopback server,
//! or device code), persists rotated refresh tokens at once, and hands each
//! cloud client an [`AccountTokens`] implementing [`TokenSource`].
//!
//! An account that needs a login does not block anyone: `token()` answers
//! [`AuthError::LoginNeeded`] at once and the login runs in the background;
//! callers that want to wait use [`AccountTokens::wait_logged_in`] with
//! their own timeout. Other accounts keep working throughout.

use futures_util::future::BoxFuture;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use oauth2::{CsrfToken, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl};
use serde::Serialize;
use tokio::sync::watch;

use super::browser::{Browser, NoBrowser};
use super::clock::{Clock, SystemClock};
use super::crypto::Secret;
use super::keyring::Keyring;
use super::provider::{AccountSpec, Grant, TokenClient};
use super::store::{TokenMap, TokenStore};
use super::{AccessToken, Audience, AuthError, TokenSource};
use crate::endpoints::Endpoints;
use crate::lock::lock;
use crate::shutdown::{CancellationToken, TaskTracker};
use crate::types::CloudKind;

/// Why the manager could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The login server must listen on a loopback address (RFC 8252 §8.3).
    #[error("the OAuth login server must listen on a loopback address, not {addr}")]
    NotLoopback {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr} for OAuth logins: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Everything the manager needs from outside; built by `main` (from
/// `CMS_OAUTH_LISTEN`, `CMS_CLOUD_BASE_URL`, `BROWSER`, the keyring) or by
/// tests.
#[derive(Clone)]
pub struct AuthOptions {
    /// Where the login server listens (`127.0.0.1:8080`; port 0 = any).
    pub listen: SocketAddr,
    /// Service URLs (real or emulated).
    pub endpoints: Endpoints,
    /// The encrypted refresh-token file (`message_db_dir/state/tokens.enc`).
    pub token_file: PathBuf,
    /// Where the token file's key lives; `None` persists nothing.
    pub keyring: Option<Arc<dyn Keyring>>,
    /// Opens the first pending login when no page is connected.
    pub browser: Arc<dyn Browser>,
    /// Time for token expiry and device polling.
    pub clock: Arc<dyn Clock>,
    /// Log every Office365 account in with the device code flow.
    pub device_code_all: bool,
    /// Device codes requested in a row (each lives ~15 min) before the
    /// login is reported failed.
    pub device_attempts: u32,
    /// The HTTP client for token requests (a default one when `None`).
    pub http: Option<reqwest::Client>,
}

impl AuthOptions {
    /// Defaults: no keyring, no browser, the system clock, browser logins.
    pub fn new(listen: SocketAddr, endpoints: Endpoints, token_file: PathBuf) -> AuthOptions {
        AuthOptions {
            listen,
            endpoints,
            token_file,
            keyring: None,
            browser: Arc::new(NoBrowser),
            clock: Arc::new(SystemClock),
            device_code_all: false,
            device_attempts: 3,
            http: None,
        }
    }
}

/// Where an account stands, as the page and the daemon see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginState {
    /// A refresh token is at hand.
    LoggedIn,
    /// No usable refresh token; a login starts on the next token request.
    LoginNeeded,
    /// A browser or device login is under way.
    LoggingIn,
    /// The last login attempt failed; the page's link starts a new one.
    Failed,
}

/// A device code to show the user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceCodeInfo {
    /// Where to enter the code.
    pub verification_uri: String,
    /// The code to enter.
    pub user_code: String,
}

/// One account's status (no secrets).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccountStatus {
    /// Index in the manager (config order).
    pub index: usize,
    /// `office365:user` / `gmail:user`.
    pub label: String,
    /// Where it stands.
    pub state: LoginState,
    /// Why a login is needed or failed.
    pub detail: Option<String>,
    /// The page path that starts or continues its browser login.
    pub login_url: String,
    /// True when a browser login is waiting for the user.
    pub browser_pending: bool,
    /// The device code, while a device login runs.
    pub device: Option<DeviceCodeInfo>,
}

/// A cached access token.
struct Cached {
    token: AccessToken,
    /// Refresh when the clock passes this.
    refresh_at: SystemTime,
    /// Obtained by the refresh a 401 forced; another 401 means a new login.
    after_401: bool,
}

struct AccountState {
    rt: Option<Secret>,
    cache: HashMap<Audience, Cached>,
    /// Audiences whose last token drew a 401.
    forced: HashSet<Audience>,
    state: LoginState,
    detail: Option<String>,
    device: Option<DeviceCodeInfo>,
}

struct Account {
    spec: AccountSpec,
    key: String,
    /// Serialises refreshes: refresh tokens are single-use.
    refresh: tokio::sync::Mutex<()>,
    st: Mutex<AccountState>,
}

/// A browser login waiting for its redirect.
pub(crate) struct PendingLogin {
    pub account: usize,
    pub state: CsrfToken,
    pub verifier: PkceCodeVerifier,
    pub path: &'static str,
    pub redirect_uri: RedirectUrl,
    pub url: String,
}

#[derive(Default)]
pub(crate) struct Shared {
    /// Oldest first.
    pub pending: Vec<PendingLogin>,
    /// The account whose login a launched browser is working on.
    pub browser_for: Option<usize>,
}

pub(crate) struct Inner {
    accounts: Vec<Account>,
    pub endpoints: Endpoints,
    client: TokenClient,
    clock: Arc<dyn Clock>,
    browser: Arc<dyn Browser>,
    device_all: bool,
    device_attempts: u32,
    store: TokenStore,
    persist_lock: tokio::sync::Mutex<()>,
    pub addr: SocketAddr,
    pub shared: Mutex<Shared>,
    /// Bumped on every visible change (the page's version).
    pub changes: watch::Sender<u64>,
    /// Open `/events` streams.
    pub pages: AtomicUsize,
    /// Cancelled when the manager shuts down (or its last clone goes).
    pub shutdown: CancellationToken,
    /// The login server and running device logins.
    tasks: TaskTracker,
    gmail_device_warned: std::sync::Once,
}

/// The message for a Gmail account asked to use the device flow.
pub const GMAIL_DEVICE_REFUSED: &str = "Google does not allow Gmail scopes in the device code flow; \
     log in through the browser page instead (on a headless machine forward the port: \
     ssh -L 8080:127.0.0.1:8080 HOST, then open http://127.0.0.1:8080/)";

/// Owns all accounts' tokens and the login server. Cheap to clone; when
/// the last clone is dropped the server and device logins stop (token
/// sources handed out keep refreshing).
#[derive(Clone)]
pub struct AuthManager {
    inner: Arc<Inner>,
    _stop: Arc<StopOnDrop>,
}

/// Signals shutdown when the last [`AuthManager`] clone goes away.
struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl std::fmt::Debug for AuthManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthManager")
            .field("addr", &self.inner.addr)
            .field("accounts", &self.inner.accounts.len())
            .finish_non_exhaustive()
    }
}

impl AuthManager {
    /// Bind the login server on `opts.listen`, load saved refresh tokens
    /// and start serving. Logins start when a token is first asked for (or
    /// through [`AuthManager::start_logins`]).
    pub async fn start(
        specs: Vec<AccountSpec>,
        opts: AuthOptions,
    ) -> Result<AuthManager, StartError> {
        if !opts.listen.ip().is_loopback() {
            return Err(StartError::NotLoopback { addr: opts.listen });
        }
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: opts.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: opts.listen,
            source,
        })?;
        let key_id = format!("token-store-key:{}", opts.token_file.display());
        let (store, saved) =
            TokenStore::open(&opts.token_file, opts.keyring.clone(), &key_id).await;
        let accounts = specs
            .into_iter()
            .map(|spec| {
                let key = spec.store_key();
                let rt = saved.get(&key).cloned();
                let (state, detail) = if rt.is_some() {
                    (LoginState::LoggedIn, None)
                } else {
                    (
                        LoginState::LoginNeeded,
                        Some("not logged in yet".to_string()),
                    )
                };
                Account {
                    spec,
                    key,
                    refresh: tokio::sync::Mutex::new(()),
                    st: Mutex::new(AccountState {
                        rt,
                        cache: HashMap::new(),
                        forced: HashSet::new(),
                        state,
                        detail,
                        device: None,
                    }),
                }
            })
            .collect();
        let origin = format!("http://{addr}/");
        let http = opts.http.clone().unwrap_or_default();
        let inner = Arc::new(Inner {
            accounts,
            endpoints: opts.endpoints.clone(),
            client: TokenClient::new(http, &origin),
            clock: opts.clock.clone(),
            browser: opts.browser.clone(),
            device_all: opts.device_code_all,
            device_attempts: opts.device_attempts.max(1),
            store,
            persist_lock: tokio::sync::Mutex::new(()),
            addr,
            shared: Mutex::new(Shared::default()),
            changes: watch::channel(0).0,
            pages: AtomicUsize::new(0),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            gmail_device_warned: std::sync::Once::new(),
        });
        inner
            .tasks
            .spawn(super::web::serve(inner.clone(), listener));
        tracing::info!("OAuth login page at http://{addr}/");
        let stop = Arc::new(StopOnDrop(inner.shutdown.clone()));
        Ok(AuthManager { inner, _stop: stop })
    }

    /// The address the login server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The login page, `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.inner.addr)
    }

    /// True when refresh tokens are saved (a keyring is available).
    pub fn is_persistent(&self) -> bool {
        self.inner.store.is_persistent()
    }

    /// Number of accounts.
    pub fn len(&self) -> usize {
        self.inner.accounts.len()
    }

    /// True when there are no accounts.
    pub fn is_empty(&self) -> bool {
        self.inner.accounts.is_empty()
    }

    /// The token source of account `index` (config order).
    pub fn account(&self, index: usize) -> Option<AccountTokens> {
        (index < self.inner.accounts.len()).then(|| AccountTokens {
            inner: self.inner.clone(),
            index,
        })
    }

    /// The token source of account `index` as a trait object.
    pub fn source(&self, index: usize) -> Option<Arc<dyn TokenSource>> {
        self.account(index)
            .map(|a| Arc::new(a) as Arc<dyn TokenSource>)
    }

    /// Every account's status.
    pub fn statuses(&self) -> Vec<AccountStatus> {
        self.inner.statuses()
    }

    /// A receiver that changes whenever a status or pending login changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Start logins for every account without a refresh token (the daemon
    /// calls this once at start so all logins queue up together).
    pub fn start_logins(&self) {
        for i in 0..self.inner.accounts.len() {
            let needs = lock(&self.inner.accounts[i].st).state == LoginState::LoginNeeded;
            if needs {
                self.inner.begin_login(i);
            }
        }
    }

    /// Number of pages connected to `/events`.
    pub fn pages_connected(&self) -> usize {
        self.inner.pages.load(Ordering::SeqCst)
    }

    /// Stop the server and running device logins.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        crate::shutdown::wait_tracked(&self.inner.tasks, "login").await;
    }
}

/// One account's tokens; implements [`TokenSource`].
#[derive(Clone)]
pub struct AccountTokens {
    inner: Arc<Inner>,
    index: usize,
}

impl std::fmt::Debug for AccountTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountTokens")
            .field("account", &self.inner.accounts[self.index].spec.label())
            .finish()
    }
}

impl AccountTokens {
    /// Where the account stands.
    pub fn status(&self) -> AccountStatus {
        self.inner.status(self.index)
    }

    /// Start a login now (also after a failed one).
    pub fn login(&self) {
        self.inner.restart_login(self.index);
    }

    /// Resolve once the account has a refresh token.
    pub async fn wait_logged_in(&self) {
        let mut rx = self.inner.changes.subscribe();
        loop {
            if lock(&self.inner.accounts[self.index].st).rt.is_some() {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

impl TokenSource for AccountTokens {
    fn token(&self, audience: Audience) -> BoxFuture<'_, Result<AccessToken, AuthError>> {
        Box::pin(self.inner.token(self.index, audience))
    }

    fn invalidate(&self, audience: Audience, token: &AccessToken) {
        self.inner.invalidate(self.index, audience, token);
    }
}

/// Refresh this long before expiry: a quarter of the lifetime, at most 5 min.
fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 4).min(Duration::from_secs(300))
}

impl Inner {
    fn notify(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    pub fn status(&self, i: usize) -> AccountStatus {
        let a = &self.accounts[i];
        let browser_pending = lock(&self.shared).pending.iter().any(|p| p.account == i);
        let st = lock(&a.st);
        AccountStatus {
            index: i,
            label: a.spec.label(),
            state: st.state.clone(),
            detail: st.detail.clone(),
            login_url: format!("/login/{i}"),
            browser_pending,
            device: st.device.clone(),
        }
    }

    pub fn statuses(&self) -> Vec<AccountStatus> {
        (0..self.accounts.len()).map(|i| self.status(i)).collect()
    }

    /// The page path of the oldest pending browser login.
    pub fn next_login(&self) -> Option<String> {
        lock(&self.shared)
            .pending
            .first()
            .map(|p| format!("/login/{}", p.account))
    }

    fn user(&self, i: usize) -> String {
        self.accounts[i].spec.user_name()
    }

    fn fresh(&self, i: usize, aud: Audience) -> Option<AccessToken> {
        let now = self.clock.now();
        let st = lock(&self.accounts[i].st);
        st.cache
            .get(&aud)
            .filter(|c| now < c.refresh_at)
            .map(|c| c.token.clone())
    }

    fn login_needed_error(&self, i: usize) -> AuthError {
        let st = lock(&self.accounts[i].st);
        let why = st.detail.clone().unwrap_or_else(|| "not logged in".into());
        AuthError::LoginNeeded {
            user: self.user(i),
            reason: format!("{why}; log in at http://{}/", self.addr),
        }
    }

    async fn token(self: &Arc<Self>, i: usize, aud: Audience) -> Result<AccessToken, AuthError> {
        let a = &self.accounts[i];
        if a.spec.scopes(aud).is_none() {
            return Err(AuthError::Unavailable {
                user: self.user(i),
                reason: format!("the account is not configured for {aud:?} tokens"),
            });
        }
        if let Some(t) = self.fresh(i, aud) {
            return Ok(t);
        }
        let _serial = a.refresh.lock().await;
        if let Some(t) = self.fresh(i, aud) {
            return Ok(t);
        }
        let (rt, forced) = {
            let mut st = lock(&a.st);
            let forced = st.forced.remove(&aud);
            (st.rt.clone(), forced)
        };
        let Some(rt) = rt else {
            let needs = lock(&a.st).state == LoginState::LoginNeeded;
            if needs {
                self.begin_login(i);
            }
            return Err(self.login_needed_error(i));
        };
        tracing::debug!(account = %a.spec.label(), ?aud, "refreshing the access token");
        match self
            .client
            .refresh(&a.spec, &self.endpoints, &rt, aud)
            .await
        {
            Ok(resp) => {
                let token = self.install(i, resp, &[aud], Some(&rt), forced);
                self.persist().await;
                Ok(token)
            }
            Err(e) if e.needs_login() => {
                let changed = {
                    let mut st = lock(&a.st);
                    if st.rt.as_ref() == Some(&rt) {
                        st.rt = None;
                        st.cache.clear();
                        st.forced.clear();
                        st.state = LoginState::LoginNeeded;
                        st.detail = Some(format!("refresh token refused: {}", e.reason()));
                        true
                    } else {
                        false
                    }
                };
                if changed {
                    tracing::warn!(account = %a.spec.label(), "login needed: {}", e.reason());
                    self.persist().await;
                    self.notify();
                    self.begin_login(i);
                }
                Err(self.login_needed_error(i))
            }
            Err(e) => {
                if forced {
                    lock(&a.st).forced.insert(aud);
                }
                tracing::info!(account = %a.spec.label(), "token refresh failed: {e}");
                Err(AuthError::Unavailable {
                    user: self.user(i),
                    reason: e.to_string(),
                })
            }
        }
    }

    /// Take a token answer: keep a rotated refresh token (unless a login
    /// replaced `used` meanwhile), cache the access token for `auds`.
    fn install(
        &self,
        i: usize,
        resp: Grant,
        auds: &[Audience],
        used: Option<&Secret>,
        after_401: bool,
    ) -> AccessToken {
        let a = &self.accounts[i];
        let now = self.clock.now();
        let lifetime = resp.expires_in.unwrap_or(Duration::from_secs(3600));
        let token = resp.access;
        let mut st = lock(&a.st);
        if let Some(new_rt) = resp.refresh {
            let replace = match used {
                Some(u) => st.rt.as_ref() == Some(u),
                None => true,
            };
            if replace {
                st.rt = Some(new_rt);
            }
        }
        let requested = auds;
        let auds: Vec<Audience> = if a.spec.kind == CloudKind::Gmail {
            // One Google token carries every scope of the account.
            a.spec.audiences()
        } else {
            auds.to_vec()
        };
        for aud in auds {
            st.cache.insert(
                aud,
                Cached {
                    token: token.clone(),
                    refresh_at: now + lifetime - refresh_margin(lifetime),
                    after_401: after_401 && requested.contains(&aud),
                },
            );
        }
        if st.rt.is_some() && st.state != LoginState::LoggedIn {
            st.state = LoginState::LoggedIn;
            st.detail = None;
            st.device = None;
            drop(st);
            self.notify();
        }
        token
    }

    /// A completed login: the token answer of a code or device grant.
    async fn finish_login(&self, i: usize, resp: Grant) {
        let a = &self.accounts[i];
        if resp.refresh.is_none() {
            let mut st = lock(&a.st);
            st.state = LoginState::Failed;
            st.detail = Some("the login gave no refresh token (offline access not granted)".into());
            drop(st);
            self.notify();
            return;
        }
        {
            let mut st = lock(&a.st);
            st.cache.clear();
            st.forced.clear();
            st.rt = None;
        }
        let auds = a.spec.first_audiences();
        self.install(i, resp, &auds, None, false);
        tracing::info!(account = %a.spec.label(), "logged in");
        self.persist().await;
        self.notify();
    }

    fn fail_login(&self, i: usize, reason: String) {
        let a = &self.accounts[i];
        tracing::warn!(account = %a.spec.label(), "login failed: {reason}");
        let mut st = lock(&a.st);
        st.state = LoginState::Failed;
        st.detail = Some(reason);
        st.device = None;
        drop(st);
        self.notify();
    }

    /// Save every account's refresh token (the newest at the time of the
    /// write, so concurrent saves cannot resurrect an old one).
    async fn persist(&self) {
        let _g = self.persist_lock.lock().await;
        let map: TokenMap = self
            .accounts
            .iter()
            .filter_map(|a| lock(&a.st).rt.clone().map(|rt| (a.key.clone(), rt)))
            .collect();
        if let Err(e) = self.store.save(map).await {
            tracing::warn!("cannot save refresh tokens: {e}");
        }
    }

    fn invalidate(self: &Arc<Self>, i: usize, aud: Audience, token: &AccessToken) {
        let a = &self.accounts[i];
        let mut st = lock(&a.st);
        let Some(c) = st.cache.get(&aud) else {
            return;
        };
        if &c.token != token {
            return;
        }
        if !c.after_401 {
            tracing::debug!(account = %a.spec.label(), ?aud, "token refused; refreshing");
            st.cache.remove(&aud);
            st.forced.insert(aud);
            return;
        }
        // A token fresh from the refresh the last 401 forced was refused
        // too: only a new login can help.
        st.rt = None;
        st.cache.clear();
        st.forced.clear();
        st.state = LoginState::LoginNeeded;
        st.detail = Some("the service refused a freshly refreshed token".into());
        drop(st);
        tracing::warn!(account = %a.spec.label(), "login needed: the service refused a freshly refreshed token");
        self.notify();
        self.begin_login(i);
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            let me = self.clone();
            h.spawn(async move { me.persist().await });
        }
    }

    /// Start a login for account `i` unless one runs or it is logged in.
    pub fn begin_login(self: &Arc<Self>, i: usize) {
        let a = &self.accounts[i];
        let gmail = a.spec.kind == CloudKind::Gmail;
        let device = a.spec.device_code || (self.device_all && !gmail);
        {
            let mut st = lock(&a.st);
            if st.rt.is_some() || st.state == LoginState::LoggingIn {
                return;
            }
            if gmail && a.spec.device_code {
                st.state = LoginState::Failed;
                st.detail = Some(GMAIL_DEVICE_REFUSED.to_string());
                drop(st);
                tracing::warn!(account = %a.spec.label(), "{GMAIL_DEVICE_REFUSED}");
                self.notify();
                return;
            }
            // The reason the login is needed stays visible while it runs.
            st.state = LoginState::LoggingIn;
        }
        if gmail && self.device_all {
            self.gmail_device_warned.call_once(|| {
                tracing::warn!("device code login does not work for Gmail accounts; they log in through the browser page");
            });
        }
        if device {
            self.start_device_login(i);
        } else {
            self.start_browser_login(i);
        }
    }

    /// Runs the device-code login of account `i` in the background (until
    /// shutdown).
    fn start_device_login(self: &Arc<Self>, i: usize) {
        let me = self.clone();
        let shut = self.shutdown.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = me.device_login(i) => {}
                () = shut.cancelled() => {}
            }
        });
        self.notify();
    }

    /// Queues a browser login of account `i` and opens the browser on it
    /// unless a login page is open or being opened already.
    fn start_browser_login(self: &Arc<Self>, i: usize) {
        let a = &self.accounts[i];
        // 96 random bytes: a 128-character verifier, the most RFC 7636 allows.
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256_len(96);
        let path = a.spec.redirect_path();
        let redirect_uri = RedirectUrl::new(format!("http://{}{path}", self.addr))
            .expect("a socket address and a path make a valid URL");
        let (url, state) = match a
            .spec
            .authorize_url(&self.endpoints, &redirect_uri, challenge)
        {
            Ok(u) => u,
            Err(e) => return self.fail_login(i, e.to_string()),
        };
        let launch = {
            let mut sh = lock(&self.shared);
            sh.pending.push(PendingLogin {
                account: i,
                state,
                verifier,
                path,
                redirect_uri,
                url,
            });
            let launch = self.pages.load(Ordering::SeqCst) == 0 && sh.browser_for.is_none();
            if launch {
                sh.browser_for = Some(i);
            }
            launch
        };
        let page = format!("http://{}/", self.addr);
        if launch {
            let url = format!("http://{}/login/{i}", self.addr);
            match self.browser.open(&url) {
                Ok(()) => {
                    tracing::warn!(account = %a.spec.label(), "login needed: opened a browser; if none appeared, open {page}")
                }
                Err(e) => {
                    lock(&self.shared).browser_for = None;
                    tracing::warn!(account = %a.spec.label(), "login needed: open {page} in a browser (could not start one: {e})");
                }
            }
        } else {
            tracing::warn!(account = %a.spec.label(), "login needed: continue at {page}");
        }
        self.notify();
    }

    /// Forget a failed login's outcome and start again (the page's link).
    pub fn restart_login(self: &Arc<Self>, i: usize) {
        {
            let mut st = lock(&self.accounts[i].st);
            if st.state == LoginState::Failed {
                st.state = LoginState::LoginNeeded;
            }
        }
        self.begin_login(i);
    }

    /// The authorize URL of account `i`'s pending browser login.
    pub fn pending_url(&self, i: usize) -> Option<String> {
        lock(&self.shared)
            .pending
            .iter()
            .find(|p| p.account == i)
            .map(|p| p.url.clone())
    }

    /// Note that a browser is heading to account `i`'s login.
    pub fn browser_heading_to(&self, i: usize) {
        lock(&self.shared).browser_for = Some(i);
    }

    /// Handle a redirect to `path` with `query`: `Ok(next page path)` or
    /// `Err(message)` for a 400 that changed nothing.
    pub async fn complete_redirect(
        self: &Arc<Self>,
        path: &str,
        query: &[(String, String)],
    ) -> Result<String, String> {
        let get = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let Some(state) = get("state") else {
            return Err("the redirect has no state parameter".into());
        };
        let pending = {
            let mut sh = lock(&self.shared);
            let Some(pos) = sh.pending.iter().position(|p| p.state.secret() == state) else {
                return Err("no login is waiting for this state (expired or already used)".into());
            };
            // RFC 8252 §8.10: the response must arrive where the request
            // said it would.
            if sh.pending[pos].path != path {
                return Err("this login was not sent to this redirect path".into());
            }
            let p = sh.pending.remove(pos);
            if sh.browser_for == Some(p.account) {
                sh.browser_for = None;
            }
            p
        };
        let i = pending.account;
        if let Some(err) = get("error") {
            let desc = get("error_description").unwrap_or("");
            let desc = desc.lines().next().unwrap_or("");
            self.fail_login(i, format!("the provider refused: {err}: {desc}"));
        } else if let Some(code) = get("code") {
            let spec = &self.accounts[i].spec;
            let res = self
                .client
                .redeem_code(
                    spec,
                    &self.endpoints,
                    &Secret::new(code),
                    &pending.redirect_uri,
                    pending.verifier,
                )
                .await;
            match res {
                Ok(resp) => self.finish_login(i, resp).await,
                Err(e) => self.fail_login(i, format!("code exchange failed: {}", e.reason())),
            }
        } else {
            self.fail_login(i, "the redirect carried neither code nor error".into());
        }
        let next = {
            let mut sh = lock(&self.shared);
            let next = sh.pending.first().map(|p| p.account);
            if let Some(n) = next {
                sh.browser_for = Some(n);
            }
            next
        };
        Ok(next.map_or_else(|| "/".to_string(), |n| format!("/login/{n}")))
    }

    async fn device_login(self: Arc<Self>, i: usize) {
        let a = &self.accounts[i];
        for attempt in 1..=self.device_attempts {
            let da = match self
                .client
                .device_authorization(&a.spec, &self.endpoints)
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    self.fail_login(i, format!("device code request failed: {}", e.reason()));
                    return;
                }
            };
            let info = DeviceCodeInfo {
                verification_uri: da.verification_uri().to_string(),
                user_code: da.user_code().secret().clone(),
            };
            tracing::warn!(
                account = %a.spec.label(),
                "to log in, open {} and enter the code {}",
                info.verification_uri,
                info.user_code
            );
            lock(&a.st).device = Some(info);
            self.notify();
            let deadline = self.clock.now() + da.expires_in();
            let interval = da.interval().max(Duration::from_secs(1));
            loop {
                // RFC 8628 §3.4: the user needs time to enter the code, so
                // wait an interval before the first poll (oauth2's loop
                // polls at once) and after an answer that was no OAuth one.
                self.clock.sleep(interval).await;
                let left = deadline
                    .duration_since(self.clock.now())
                    .unwrap_or_default();
                match self
                    .client
                    .poll_device(&a.spec, &self.endpoints, &da, &self.clock, left)
                    .await
                {
                    Ok(resp) => {
                        self.finish_login(i, resp).await;
                        return;
                    }
                    Err(e) => match e.code() {
                        Some("expired_token") => break,
                        Some(_) => {
                            self.fail_login(i, format!("device login failed: {}", e.reason()));
                            return;
                        }
                        None => {
                            tracing::debug!(account = %a.spec.label(), "device poll failed, will retry: {e}");
                        }
                    },
                }
                if self.clock.now() >= deadline {
                    break;
                }
            }
            tracing::info!(account = %a.spec.label(), "device code expired (attempt {attempt} of {})", self.device_attempts);
        }
        self.fail_login(
            i,
            "the device code expired before it was entered; start again from the page or restart"
                .into(),
        );
    }
}

/// Options for the daemon: tokens in `message_db_dir/state/tokens.enc`,
/// the system keyring (detected on the blocking pool; without one nothing
/// is persisted), and `browser` as the value of `BROWSER`.
pub async fn daemon_options(
    message_db_dir: &std::path::Path,
    listen: SocketAddr,
    endpoints: Endpoints,
    browser: Option<&str>,
    device_code_all: bool,
) -> AuthOptions {
    let mut o = AuthOptions::new(
        listen,
        endpoints,
        message_db_dir.join("state").join("tokens.enc"),
    );
    o.browser = Arc::new(super::browser::CommandBrowser::from_env_value(browser));
    o.device_code_all = device_code_all;
    o.keyring = match tokio::task::spawn_blocking(super::keyring::SystemKeyring::detect).await {
        Ok(Ok(k)) => {
            tracing::debug!("token-store key kept in the {} keyring", k.name());
            Some(Arc::new(k) as Arc<dyn Keyring>)
        }
        Ok(Err(e)) => {
            tracing::warn!("no usable keyring ({e})");
            None
        }
        Err(e) => {
            tracing::warn!("keyring detection failed: {e}");
            None
        }
    };
    o
}
