//! The daemon: after the config validated, creates the state directory and
//! maildirs, opens the store, and runs sync cycles one at a time, woken by
//! the maildir watcher (push local changes, no listing), per-folder timers
//! (a folder's poll, or its retry as its error's kind says: [`schedule`])
//! and logins. A shutdown signal stops it between cycles, state saved: the
//! signal cancels the root of a [`crate::shutdown`] tree (the engine and the
//! credential servers hold child tokens), and the run ends by waiting for
//! the tasks its tracker holds.

mod clock;
mod folders;
mod schedule;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::auth::{AccountSpec, AuthManager, TokenSource};
use crate::config::Loaded;
use crate::credsrv::{self, Broker, BrokerAccount};
use crate::endpoints::Endpoints;
use crate::maildir::{self, Maildir, MaildirError};
use crate::shutdown::{self, CancellationToken, StopSignal, TaskTracker};
use crate::store::{Store, StoreError};
use crate::sync::engine::{CycleReport, Engine, Folder, SyncError};
pub use clock::{Clock, SystemClock};
use schedule::Schedule;

/// Run-time options from the command line.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// One cycle, then return.
    pub once: bool,
    /// Trust local flags on the first cycle.
    pub offline: bool,
}

/// What the daemon takes from its environment (read by `main`, injected
/// here): where the clouds are, where the login page listens, how to open a
/// browser.
#[derive(Clone, Debug)]
pub struct Environment {
    /// Base URLs (`CMS_CLOUD_BASE_URL` points them at the emulator).
    pub endpoints: Endpoints,
    /// The OAuth login page's address (`CMS_OAUTH_LISTEN`, default 127.0.0.1:8080).
    pub oauth_listen: std::net::SocketAddr,
    /// The `BROWSER` value, Python `webbrowser` style.
    pub browser: Option<String>,
    /// Log every Office365 account in with the device code flow.
    pub device_code_all: bool,
    /// `CMS_QUOTA_SCALE` (tests and benchmarks): the emulator's quota
    /// windows are this many times shorter; 1 in production.
    pub quota_scale: u32,
}

/// How long `--once` waits for logins before giving up.
const ONCE_LOGIN_WAIT: Duration = Duration::from_secs(600);

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A directory could not be prepared.
    #[error("cannot prepare {path}: {message}")]
    Prepare {
        /// The directory.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A maildir could not be created or watched.
    #[error(transparent)]
    Maildir(#[from] MaildirError),
    /// A sync cycle failed (with `--once`).
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// The login server could not start.
    #[error(transparent)]
    Auth(#[from] crate::auth::StartError),
    /// A cloud backend could not be set up.
    #[error(transparent)]
    Cloud(#[from] crate::cloud::CloudError),
    /// A credential server could not start.
    #[error(transparent)]
    Credsrv(#[from] crate::credsrv::CredsrvError),
    /// `--once` gave up waiting for a login.
    #[error("login not completed for {0}; open the login page and log in")]
    LoginTimeout(String),
    /// The single cycle of `--once` met errors; details were logged.
    #[error("the sync cycle did not complete: {0}")]
    Incomplete(String),
}

/// How long the watcher waits for a burst of maildir changes to settle (a
/// mail client's renames come within milliseconds of each other).
const WATCH_DEBOUNCE: Duration = Duration::from_millis(50);

/// Create the state directory (0700) and the maildirs, open the store.
pub async fn prepare(loaded: &Loaded) -> Result<(Arc<Store>, Vec<Maildir>), DaemonError> {
    finish_prepare(start_prepare(loaded)).await
}

/// [`prepare`] started on a blocking thread, so that opening the store
/// overlaps the login server's start.
type Preparing = tokio::task::JoinHandle<Result<(Arc<Store>, Vec<Maildir>), DaemonError>>;

fn start_prepare(loaded: &Loaded) -> Preparing {
    let cfg = loaded.config.clone();
    tokio::task::spawn_blocking(move || {
        crate::fsutil::create_private_dir(&cfg.message_db_dir).map_err(|e| {
            DaemonError::Prepare {
                path: cfg.message_db_dir.clone(),
                message: e.to_string(),
            }
        })?;
        let maildirs = cfg
            .maildirs
            .iter()
            .map(|m| Maildir::create(&m.path))
            .collect::<Result<Vec<_>, _>>()?;
        let store = Store::open(&cfg.message_db_dir)?;
        // Under the store's lock: no delivery of ours is running.
        for md in &maildirs {
            md.clear_interrupted_deliveries();
        }
        Ok((Arc::new(store), maildirs))
    })
}

async fn finish_prepare(p: Preparing) -> Result<(Arc<Store>, Vec<Maildir>), DaemonError> {
    p.await.map_err(|e| DaemonError::Prepare {
        path: PathBuf::from("<startup>"),
        message: e.to_string(),
    })?
}

/// The whole daemon for a loaded config: the login server and token
/// sources, the cloud backends, the credential servers, then the sync loop
/// ([`run`]) until `shutdown` (the root token, or a watch that turns true).
pub async fn run_config(
    loaded: Loaded,
    opts: Options,
    env: Environment,
    shutdown: impl Into<StopSignal>,
) -> Result<(), DaemonError> {
    shutdown
        .into()
        .drive(|root| run_config_under(loaded, opts, env, root))
        .await
}

async fn run_config_under(
    loaded: Loaded,
    opts: Options,
    env: Environment,
    root: CancellationToken,
) -> Result<(), DaemonError> {
    let cfg = loaded.config.clone();
    let state_dir = cfg.message_db_dir.join("state");
    for dir in [&cfg.message_db_dir, &state_dir] {
        crate::fsutil::create_private_dir(dir).map_err(|e| DaemonError::Prepare {
            path: dir.clone(),
            message: e.to_string(),
        })?;
    }
    if cfg.accounts.is_empty() {
        return run(loaded, opts, Vec::new(), root).await;
    }
    let preparing = start_prepare(&loaded);
    let auth_opts = crate::auth::daemon_options(
        &cfg.message_db_dir,
        env.oauth_listen,
        env.endpoints.clone(),
        env.browser.as_deref(),
        env.device_code_all,
    )
    .await;
    let auth = AuthManager::start(AccountSpec::from_config(&cfg), auth_opts).await?;
    tracing::info!("login page: {}", auth.url());
    auth.start_logins();
    let sources: Vec<Arc<dyn TokenSource>> = (0..cfg.accounts.len())
        .filter_map(|i| auth.source(i))
        .collect();
    let folders = folders::folders_for(&cfg, &env.endpoints, &sources, env.quota_scale)?;

    // Token brokers, on a child token: they stop with the root, and when
    // the sync loop ends by itself (`--once`).
    let tracker = TaskTracker::new();
    let brokers = root.child_token();
    start_brokers(&cfg, &sources, &brokers, &tracker)?;
    let result = async {
        if opts.once && !logged_in_for_once(&cfg, &auth, &root).await? {
            return Ok(());
        }
        Loop {
            loaded,
            opts,
            folders,
            shutdown: root.clone(),
            logins: Some(auth.subscribe()),
            preparing,
            tracker: tracker.clone(),
            clock: Arc::new(SystemClock),
        }
        .run()
        .await
    }
    .await;
    brokers.cancel();
    shutdown::wait_tracked(&tracker, "daemon").await;
    for srv in &cfg.credential_servers {
        let _ = std::fs::remove_file(&srv.path);
    }
    auth.shutdown().await;
    result
}

/// Bind every configured credential socket and serve it on a task of
/// `tracker` until `stop`.
fn start_brokers(
    cfg: &crate::config::Config,
    sources: &[Arc<dyn TokenSource>],
    stop: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<(), DaemonError> {
    for srv in &cfg.credential_servers {
        let accounts = srv
            .accounts
            .iter()
            .filter_map(|&i| {
                let user = cfg.accounts[i].user.clone()?;
                Some((
                    user,
                    BrokerAccount {
                        kind: cfg.accounts[i].kind,
                        tokens: sources[i].clone(),
                    },
                ))
            })
            .collect();
        let listener = credsrv::bind(&srv.path, srv.umask)?;
        tracing::info!("credential server on {}", srv.path.display());
        tracker.spawn(credsrv::serve(
            listener,
            srv.path.clone(),
            Arc::new(Broker::new(accounts, srv.protocols.clone())),
            stop.clone(),
        ));
    }
    Ok(())
}

/// `--once` needs every syncing account logged in first: wait for each
/// (at most [`ONCE_LOGIN_WAIT`]); `false` when a stop came first.
async fn logged_in_for_once(
    cfg: &crate::config::Config,
    auth: &AuthManager,
    root: &CancellationToken,
) -> Result<bool, DaemonError> {
    for m in &cfg.mailboxes {
        let Some(acct) = auth.account(m.account) else {
            continue;
        };
        let who = cfg.accounts[m.account].user.clone().unwrap_or_default();
        tokio::select! {
            _ = acct.wait_logged_in() => {}
            _ = tokio::time::sleep(ONCE_LOGIN_WAIT) => return Err(DaemonError::LoginTimeout(who)),
            () = root.cancelled() => return Ok(false),
        }
    }
    Ok(true)
}

/// Empties the state database's write-ahead log when the run ends, on every
/// path out of it.
struct CheckpointAtExit(Arc<Store>);

impl Drop for CheckpointAtExit {
    fn drop(&mut self) {
        self.0.checkpoint();
    }
}

/// Frees what it holds on a blocking thread when dropped: a run that ends
/// must not wait while the engine's picture of 100,000 messages is freed
/// (the binary exits without waiting for that thread).
struct FreeLater<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> std::ops::Deref for FreeLater<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.0.as_ref().expect("held until dropped")
    }
}

impl<T: Send + 'static> std::ops::DerefMut for FreeLater<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.as_mut().expect("held until dropped")
    }
}

impl<T: Send + 'static> Drop for FreeLater<T> {
    fn drop(&mut self) {
        let Some(held) = self.0.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(move || drop(held))),
            Err(_) => drop(held),
        }
    }
}

/// Run until `shutdown` (a token, or a watch that turns true) or one cycle
/// with `once`, syncing the given folders (one per config mailbox, in
/// config order).
pub async fn run(
    loaded: Loaded,
    opts: Options,
    folders: Vec<Folder>,
    shutdown: impl Into<StopSignal>,
) -> Result<(), DaemonError> {
    run_tracked(loaded, opts, folders, shutdown, &TaskTracker::new()).await
}

/// [`run`], its tasks held by `tracker`, which is closed and (for at most
/// [`shutdown::GRACE`]) empty when this returns.
pub async fn run_tracked(
    loaded: Loaded,
    opts: Options,
    folders: Vec<Folder>,
    shutdown: impl Into<StopSignal>,
    tracker: &TaskTracker,
) -> Result<(), DaemonError> {
    run_clocked(
        loaded,
        opts,
        folders,
        shutdown,
        tracker,
        Arc::new(SystemClock),
    )
    .await
}

/// [`run_tracked`] with its time from `clock` (tests run hours of polls
/// and backoff in no time).
pub async fn run_clocked(
    loaded: Loaded,
    opts: Options,
    folders: Vec<Folder>,
    shutdown: impl Into<StopSignal>,
    tracker: &TaskTracker,
    clock: Arc<dyn Clock>,
) -> Result<(), DaemonError> {
    let preparing = start_prepare(&loaded);
    let tracker = tracker.clone();
    shutdown
        .into()
        .drive(|root| async move {
            let result = Loop {
                loaded,
                opts,
                folders,
                shutdown: root,
                logins: None,
                preparing,
                tracker: tracker.clone(),
                clock,
            }
            .run()
            .await;
            shutdown::wait_tracked(&tracker, "daemon").await;
            result
        })
        .await
}

/// One run of the sync loop and what it needs.
struct Loop {
    loaded: Loaded,
    opts: Options,
    folders: Vec<Folder>,
    /// The root token: a stop ends the loop between cycles.
    shutdown: CancellationToken,
    /// Changes when a login completes, so folders waiting for a login sync
    /// at once.
    logins: Option<watch::Receiver<u64>>,
    preparing: Preparing,
    /// Holds the engine's background tasks; the caller waits for them.
    tracker: TaskTracker,
    clock: Arc<dyn Clock>,
}

impl Loop {
    /// Run the loop; the engine runs on a child of the root token,
    /// cancelled when this returns, so its background tasks end too.
    async fn run(self) -> Result<(), DaemonError> {
        let engine_stop = self.shutdown.child_token();
        let result = self.sync_loop(engine_stop.clone()).await;
        engine_stop.cancel();
        result
    }

    async fn sync_loop(self, engine_stop: CancellationToken) -> Result<(), DaemonError> {
        let (store, maildirs) = finish_prepare(self.preparing).await?;
        let _checkpoint = CheckpointAtExit(store.clone());
        let (_keep, logins) = match self.logins {
            Some(rx) => (None, rx),
            None => {
                let (tx, rx) = watch::channel(0);
                (Some(tx), rx)
            }
        };
        let polls: Vec<Duration> = (self.loaded.config.mailboxes.iter())
            .map(|m| m.poll_interval)
            .collect();
        let keys: Vec<String> = self.folders.iter().map(|f| f.key.clone()).collect();
        let watch_dirs: Vec<PathBuf> = maildirs.iter().map(|m| m.path().to_path_buf()).collect();
        let router = self.loaded.router.clone();
        let (folders, offline) = (self.folders, self.opts.offline);
        let mut engine = FreeLater(Some({
            let store = store.clone();
            tokio::task::spawn_blocking(move || {
                Engine::new(store, router, folders, maildirs, offline)
            })
            .await
            .map_err(|e| DaemonError::Prepare {
                path: PathBuf::from("<startup>"),
                message: e.to_string(),
            })??
        }));
        // A shutdown signal during a cycle stops it after the current action
        // (the engine's token is a child of the root); the cycle then records
        // what was done, as always.
        engine.attach(engine_stop, self.tracker.clone());
        if self.opts.once {
            return run_once(&mut engine, &self.shutdown).await;
        }
        let schedule = Schedule::new(keys, &polls, self.clock.now());
        let polling = Polling {
            shutdown: self.shutdown,
            logins,
            clock: self.clock,
            rescan_interval: self.loaded.config.rescan_interval,
        };
        polling.run(&mut engine, schedule, watch_dirs).await
    }
}

/// `--once`: one cycle, then a fixed point: the folders this cycle changed
/// in the cloud are listed again (one delta call each) and followed, so the
/// deletions it sent are confirmed and their files go now, not next run.
async fn run_once(engine: &mut Engine, shutdown: &CancellationToken) -> Result<(), DaemonError> {
    let mut report = engine.cycle().await?;
    log_report(&report);
    if report.touched.iter().any(|t| *t) && !shutdown.is_cancelled() {
        let touched = report.touched.clone();
        let again = engine.settle(&touched).await?;
        log_report(&again);
        report.failed += again.failed;
        report.cloud_errors.extend(again.cloud_errors);
    }
    if shutdown.is_cancelled() {
        tracing::info!("stopped before the cycle completed; what was done is saved");
        return Ok(());
    }
    if !report.is_clean() {
        return Err(DaemonError::Incomplete(summary(&report)));
    }
    Ok(())
}

/// The long-running loop's inputs besides the engine.
struct Polling {
    shutdown: CancellationToken,
    logins: watch::Receiver<u64>,
    clock: Arc<dyn Clock>,
    rescan_interval: Duration,
}

impl Polling {
    /// Cycle until a stop: each folder when its schedule says, local
    /// changes as the watcher names them, everything after a login.
    async fn run(
        mut self,
        engine: &mut Engine,
        mut schedule: Schedule,
        watch_dirs: Vec<PathBuf>,
    ) -> Result<(), DaemonError> {
        // Without a watcher local changes still travel at the next poll.
        let (_guard, mut events) = match maildir::watch(watch_dirs, WATCH_DEBOUNCE) {
            Ok((g, rx)) => (Some(g), rx),
            Err(e) => {
                tracing::error!(
                    "cannot watch the maildirs ({e}); local changes wait for the next poll"
                );
                let (_tx, rx) = tokio::sync::mpsc::channel(1);
                (None, rx)
            }
        };
        let mut relist = vec![true; engine.folder_count()];
        // The first cycle scans every maildir; so does one every
        // `cfg.rescan_interval`, the safety net for anything the watcher
        // missed (an overflow asks for one too). Other cycles handle the
        // files the watcher names.
        let mut last_scan = self.clock.now();
        loop {
            if self.clock.now().duration_since(last_scan) >= self.rescan_interval {
                last_scan = self.clock.now();
                engine.request_rescan();
            }
            let result = engine.poll(&relist).await;
            if self.shutdown.is_cancelled() {
                tracing::info!("stopping; state saved");
                return Ok(());
            }
            let report = match &result {
                Ok(report) => {
                    log_report(report);
                    Some(report)
                }
                Err(e) => {
                    tracing::error!("sync cycle failed: {e}");
                    None
                }
            };
            // Each folder is due again as its own outcome says; jitter
            // spreads retries, but never below what a server asked.
            schedule.after_cycle(&relist, report, self.clock.now(), &mut |d| {
                crate::cloud::transport::around(d, 0.2)
            });
            if !self.wait(engine, &mut schedule, &mut events).await {
                tracing::info!("stopping");
                return Ok(());
            }
            relist = schedule.due(self.clock.now());
            // Everything else the watcher reported meanwhile goes into the
            // same cycle.
            while let Ok(event) = events.try_recv() {
                engine.files_changed(event);
            }
            if self.shutdown.is_cancelled() {
                return Ok(());
            }
        }
    }

    /// Wait for the next reason to run a cycle; `false` on a stop.
    async fn wait(
        &mut self,
        engine: &mut Engine,
        schedule: &mut Schedule,
        events: &mut tokio::sync::mpsc::Receiver<maildir::WatchEvent>,
    ) -> bool {
        let wake_at = schedule
            .next()
            .unwrap_or_else(|| self.clock.now() + Duration::from_secs(3600));
        // Listings and downloads still running in the background wake the
        // loop when a batch of them is ready to be taken in.
        let busy = engine.background_busy();
        let background = engine.background_ready();
        tokio::select! {
            () = self.shutdown.cancelled() => return false,
            () = background, if busy => {
                // New content to deliver, or a listing to take in.
            }
            Ok(()) = self.logins.changed() => {
                // A login finished (or an account needs one): list again.
                schedule.login_changed(self.clock.now());
            }
            Some(event) = events.recv() => {
                // A local change: push it without listing again (folders
                // due anyway are listed too).
                engine.files_changed(event);
            }
            () = self.clock.sleep_until(wake_at) => {}
        }
        true
    }
}

fn summary(r: &CycleReport) -> String {
    format!(
        "{} downloaded, {} actions ({} failed), {} cloud errors, {} routing failures",
        r.downloads,
        r.actions,
        r.failed,
        r.cloud_errors.len(),
        r.routing_failures
    )
}

fn log_report(r: &CycleReport) {
    if r.downloads > 0 || r.actions > 0 || !r.is_clean() {
        tracing::info!("sync: {}", summary(r));
    } else {
        tracing::debug!("sync: nothing to do");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::memory::MemoryMailbox;
    use crate::config::{PathContext, PyActor};
    use crate::types::{DeleteAction, Flags};

    /// A stop ends the run with success, and by then every task it tracked
    /// (the engine's listings and downloads) has ended.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_run_leaves_no_tracked_task() {
        let home = tempfile::tempdir().unwrap();
        let cfg = home.path().join("cms.cfg");
        std::fs::write(
            &cfg,
            "inbox = MailDir(\"~/mail/inbox\")\n\
             box = Office365(\"Inbox\", Office365_Account(user=\"u@example.com\"))\n\
             box.poll_interval = 1\n",
        )
        .unwrap();
        let paths = PathContext {
            home: home.path().to_path_buf(),
            cwd: home.path().to_path_buf(),
        };
        let loaded = crate::config::load(&PyActor::spawn(), &cfg, &paths).unwrap();
        let cloud = Arc::new(MemoryMailbox::new("Inbox", Flags::READ | Flags::FLAGGED));
        for n in 0..5 {
            cloud.add(
                format!("Subject: {n}\n\nbody {n}\n").as_bytes(),
                Flags::NONE,
            );
        }
        let folder = Folder {
            cloud: cloud.clone(),
            key: "office365:u@example.com/Inbox".into(),
            delete_action: DeleteAction::Archive,
        };
        let root = CancellationToken::new();
        let tracker = TaskTracker::new();
        let run = run_tracked(
            loaded,
            Options::default(),
            vec![folder],
            root.clone(),
            &tracker,
        );
        let stopper = async {
            let cur = home.path().join("mail/inbox/new");
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while std::fs::read_dir(&cur).map_or(0, |d| d.count()) < 5 {
                assert!(std::time::Instant::now() < deadline, "nothing delivered");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // At least one more poll's listing starts in the background.
            tokio::time::sleep(Duration::from_millis(1100)).await;
            root.cancel();
        };
        let (result, ()) = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::join!(run, stopper)
        })
        .await
        .expect("stopped");
        result.unwrap();
        assert!(tracker.is_closed());
        assert!(tracker.is_empty(), "{} tasks left", tracker.len());
    }
}
