//! The executor: one sync cycle gathers the three pictures the planner needs
//! (cloud listings, maildir scans, the last agreement), downloads what is
//! missing into the store, routes, plans, applies the actions, and records
//! the new agreement with one outcome per action. A failed cloud action leaves
//! local state untouched and is planned again next cycle.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::background::{Background, Finished, LIST_GRACE, stopping};

use super::plan::{
    Action, CloudEffect, CloudMsg, LastState, LocalFile, MailboxInfo, MaildirInfo, Mode, Outcome,
    Plan, PlanInput, Route, SYNCED, Warning, cloud_effects, next_state, plan,
};
use super::state::{CursorChange, SyncState};
use crate::cloud::{CloudEntry, CloudError, CloudMailbox, FlagChange};
use crate::config::router::RouteRequest;
use crate::config::{DeleteAction, Router};
use crate::maildir::{Entry, Maildir, MaildirError};
use crate::store::{Store, StoreError};
use crate::types::{Cid, ContentHash, Flags};

/// Errors that stop a cycle (cloud errors do not: they are reported and
/// the affected folder is treated as incomplete).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The content store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A maildir could not be read.
    #[error(transparent)]
    Maildir(#[from] MaildirError),
    /// A blocking task panicked or was cancelled.
    #[error("internal task failed: {0}")]
    Task(String),
}

/// Asks a running cycle to finish early: calls waiting on the cloud (a
/// listing, a download, a request window, a `Retry-After`) give up at once,
/// no new action starts, and what was done is recorded as usual.
#[derive(Clone, Debug, Default)]
pub struct Stop {
    flag: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl Stop {
    /// Ask for the stop (idempotent).
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// True once [`Stop::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Resolves once the stop is asked for.
    pub async fn stopped(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_stopped() {
                return;
            }
            notified.await;
        }
    }

    /// `fut`, unless the stop comes first (then `None`).
    pub(crate) async fn unless<F: std::future::Future>(&self, fut: F) -> Option<F::Output> {
        tokio::select! {
            r = fut => Some(r),
            () = self.stopped() => None,
        }
    }
}

/// A cloud folder as the engine drives it.
pub struct Folder {
    /// The backend.
    pub cloud: Arc<dyn CloudMailbox>,
    /// Stable key for the state file, e.g. `gmail:user@gmail.com/INBOX`.
    pub key: String,
    /// What a local deletion does there.
    pub delete_action: DeleteAction,
}

/// What one cycle did.
#[derive(Debug, Default)]
pub struct CycleReport {
    /// Messages downloaded into the store.
    pub downloads: usize,
    /// Actions planned.
    pub actions: usize,
    /// Actions that failed (retried next cycle).
    pub failed: usize,
    /// Cloud errors met (listing, download or actions).
    pub cloud_errors: Vec<CloudError>,
    /// Guard warnings the planner raised.
    pub warnings: Vec<Warning>,
    /// Messages whose routing failed (left where they are).
    pub routing_failures: usize,
    /// Cloud deletions already sent and not sent again until the folder is
    /// listed again (they are confirmed by that listing).
    pub held: usize,
    /// Per folder: this cycle's actions changed it in the cloud (a listing
    /// of it confirms them and lets the local side follow).
    pub touched: Vec<bool>,
    /// A poll that found nothing changed and stopped after listing.
    pub skipped: bool,
}

impl CycleReport {
    /// True when everything succeeded.
    pub fn is_clean(&self) -> bool {
        self.failed == 0 && self.cloud_errors.is_empty()
    }

    /// Adds a later cycle's report to this one.
    pub fn merge(&mut self, later: CycleReport) {
        self.downloads += later.downloads;
        self.actions += later.actions;
        self.failed += later.failed;
        self.cloud_errors.extend(later.cloud_errors);
        self.warnings.extend(later.warnings);
        self.routing_failures += later.routing_failures;
        self.held = later.held;
        if self.touched.len() < later.touched.len() {
            self.touched.resize(later.touched.len(), false);
        }
        for (t, l) in self.touched.iter_mut().zip(later.touched) {
            *t |= l;
        }
    }
}

/// Drives sync cycles over a fixed set of folders and maildirs.
pub struct Engine {
    store: Arc<Store>,
    router: Router,
    folders: Vec<Folder>,
    listings: Vec<Option<Listing>>,
    /// Per folder, the version of the cloud picture the agreement `last`
    /// was computed from (after the cycle's effects). A listing older than
    /// this is never planned against: the folder is listed again.
    agreed_versions: Vec<u64>,
    /// Source of listing versions.
    versions: u64,
    maildirs: Vec<Maildir>,
    state: SyncState,
    /// The agreement as the database holds it.
    last: LastState,
    cursors: BTreeMap<String, serde_json::Value>,
    mode: Mode,
    stop: Stop,
    sizes: std::sync::Mutex<HashMap<ContentHash, u64>>,
    /// Listings and downloads running per folder, across cycles.
    background: Background,
    /// The last cycle reached a fixed point: nothing to do, nothing failed,
    /// every folder complete, nothing held or pending.
    quiet: bool,
}

/// A folder's messages as the engine knows them: what the last list call
/// returned, with the effects of the actions taken since applied.
struct Listing {
    entries: Vec<CloudEntry>,
    /// Changes whenever the picture changes (a list call, applied effects).
    version: u64,
    /// Deletions sent since the last list call: not sent again until a
    /// listing shows whether they took effect.
    sent_deletions: HashSet<String>,
}

impl Listing {
    /// Apply this cycle's effects on the folder; returns the new version.
    fn apply(&mut self, effects: &[&CloudEffect], version: u64) -> u64 {
        for e in effects {
            match e {
                CloudEffect::Flags { id, set, clear, .. } => {
                    for entry in self.entries.iter_mut().filter(|x| &x.id == id) {
                        entry.flags = (entry.flags & !*clear) | *set;
                    }
                }
                CloudEffect::DeletionSent { id, .. } => {
                    self.sent_deletions.insert(id.clone());
                }
            }
        }
        self.version = version;
        version
    }
}

/// A maildir file found by the scan, with its content hash.
struct Scanned {
    maildir: usize,
    name: String,
    entry: Entry,
    hash: ContentHash,
}

impl Engine {
    /// An engine over open maildirs and folders, loading the last agreement
    /// from the store's state database. `offline` makes the first cycle
    /// trust local flags. Blocking (reads the database).
    pub fn new(
        store: Arc<Store>,
        router: Router,
        folders: Vec<Folder>,
        maildirs: Vec<Maildir>,
        offline: bool,
    ) -> Result<Engine, SyncError> {
        let md_keys: Vec<String> = maildirs
            .iter()
            .map(|m| m.path().display().to_string())
            .collect();
        let fd_keys: Vec<String> = folders.iter().map(|f| f.key.clone()).collect();
        let n_folders = folders.len();
        let fields: Vec<Option<&'static str>> = folders
            .iter()
            .map(|f| f.cloud.cursor_records_field())
            .collect();
        let (state, (last, cursors)) = SyncState::open(&store, &md_keys, &fd_keys, &fields)?;
        for f in &folders {
            if let Some(c) = cursors.get(&f.key) {
                f.cloud.load_cursor(c.clone());
            }
        }
        Ok(Engine {
            store,
            router,
            listings: folders.iter().map(|_| None).collect(),
            agreed_versions: vec![0; folders.len()],
            versions: 0,
            folders,
            maildirs,
            state,
            last,
            cursors,
            mode: if offline {
                Mode::OfflineFirstCycle
            } else {
                Mode::Online
            },
            stop: Stop::default(),
            sizes: std::sync::Mutex::new(HashMap::new()),
            background: Background::new(n_folders),
            quiet: false,
        })
    }

    /// The handle that makes the running cycle (and every later one) finish
    /// early: cloud calls in progress give up, no new downloads or actions
    /// start, and what was done is recorded as usual.
    pub fn stop_handle(&self) -> Stop {
        self.stop.clone()
    }

    /// Number of cloud folders.
    pub fn folder_count(&self) -> usize {
        self.folders.len()
    }

    /// The last agreement (for tests and status).
    pub fn last_state(&self) -> &LastState {
        &self.last
    }

    /// Sync until settled, listing every folder again: see [`Engine::settle`].
    pub async fn cycle(&mut self) -> Result<CycleReport, SyncError> {
        let all = vec![true; self.folders.len()];
        self.settle(&all).await
    }

    /// One cycle listing the folders in `relist`, then more cycles without
    /// listing, each taking in a batch of finished downloads, until no
    /// listing or download is left in the background (or a stop). The
    /// reports are merged.
    pub async fn settle(&mut self, relist: &[bool]) -> Result<CycleReport, SyncError> {
        let mut report = self.cycle_with(relist).await?;
        let none = vec![false; self.folders.len()];
        while self.background_busy() && !self.stop.is_stopped() {
            let ready = self.background_ready();
            if self.stop.unless(ready).await.is_none() {
                break;
            }
            report.merge(self.cycle_with(&none).await?);
        }
        Ok(report)
    }

    /// True while listings or downloads run in the background (or wait to
    /// be taken in by a cycle).
    pub fn background_busy(&self) -> bool {
        self.background.busy()
    }

    /// Resolves when a cycle has background results to take in: a finished
    /// listing, or a batch of finished downloads (100, or what finished in
    /// the last second, or the last of them); batches are spaced by a few
    /// times the last cycle's duration. Never resolves when nothing runs in
    /// the background. The future owns what it needs.
    pub fn background_ready(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.background.ready()
    }

    /// Run one cycle, listing again only the folders marked in `relist`
    /// (the others use their previous listing), and taking in whatever the
    /// background finished. Downloads it starts run on in the background;
    /// a listing that takes longer than a short grace is taken in by a
    /// later cycle. A cycle woken by a local change lists nothing: it only
    /// pushes what changed.
    pub async fn cycle_with(&mut self, relist: &[bool]) -> Result<CycleReport, SyncError> {
        self.timed_cycle(relist, false).await
    }

    /// A poll: list the folders in `relist` and, when none of them changed,
    /// nothing waits in the background and the last cycle left nothing to
    /// do, stop there: no maildir scan, no planning, no write. The caller
    /// vouches that no maildir changed since the last cycle (no watcher
    /// event); otherwise it calls [`Engine::cycle_with`].
    pub async fn poll(&mut self, relist: &[bool]) -> Result<CycleReport, SyncError> {
        self.timed_cycle(relist, true).await
    }

    async fn timed_cycle(
        &mut self,
        relist: &[bool],
        may_skip: bool,
    ) -> Result<CycleReport, SyncError> {
        let started = std::time::Instant::now();
        let r = self.one_cycle(relist, may_skip).await;
        match &r {
            // A skipped poll leaves the spacing of batches alone.
            Ok(report) if report.skipped => {}
            _ => self.background.cycle_done(started.elapsed()),
        }
        r
    }

    async fn one_cycle(
        &mut self,
        relist: &[bool],
        may_skip: bool,
    ) -> Result<CycleReport, SyncError> {
        let mut report = CycleReport::default();
        let (mut complete, news) = self.list_some(relist, &mut report).await;
        if may_skip && self.quiet && !news && !self.background.busy() {
            report.skipped = true;
            report.touched = vec![false; self.folders.len()];
            return Ok(report);
        }
        self.quiet = false;
        // The picture each folder is planned with; checked against the
        // agreement's by list_some, so a stale pair cannot be planned.
        let planned_versions: Vec<Option<u64>> = self
            .listings
            .iter()
            .map(|l| l.as_ref().map(|l| l.version))
            .collect();
        let cloud = self.resolve_hashes(&mut report, &mut complete)?;
        let scanned = self.scan_all().await?;
        // Stopping: nothing is planned, so nothing changes; what was
        // downloaded is committed already.
        let Some(routes) = self.stop.unless(self.route(&cloud, &mut report)).await else {
            return Ok(report);
        };

        let input = PlanInput {
            mode: self.mode,
            mailboxes: self
                .folders
                .iter()
                .zip(&complete)
                .map(|(f, &complete)| MailboxInfo {
                    supported: f.cloud.supported_flags(),
                    delete_action: f.delete_action,
                    complete,
                })
                .collect(),
            maildirs: self
                .maildirs
                .iter()
                .map(|m| MaildirInfo {
                    present: m.path().join("cur").is_dir() && m.path().join("new").is_dir(),
                })
                .collect(),
            cloud: cloud
                .iter()
                .zip(routes)
                .map(|((mailbox, entry, hash), route)| CloudMsg {
                    mailbox: *mailbox,
                    id: entry.id.clone(),
                    hash: *hash,
                    flags: entry.flags,
                    route,
                })
                .collect(),
            local: scanned
                .iter()
                .map(|s| LocalFile {
                    maildir: s.maildir,
                    name: s.name.clone(),
                    hash: s.hash,
                    flags: s.entry.flags,
                })
                .collect(),
            last: self.last.clone(),
            known_cloud_content: self.store.known_cloud_hashes(),
        };
        let plan = plan(&input);
        for w in &plan.warnings {
            tracing::error!("{}", describe_warning(w, &self.maildirs));
        }
        report.warnings = plan.warnings.clone();
        report.actions = plan.actions.len();

        // A deletion already sent waits for the next listing to confirm it.
        let held: Vec<bool> = plan
            .actions
            .iter()
            .map(|a| match a {
                Action::DeleteCloud { mailbox, id, .. } => self.listings[*mailbox]
                    .as_ref()
                    .is_some_and(|l| l.sent_deletions.contains(id)),
                _ => false,
            })
            .collect();
        report.held = held.iter().filter(|h| **h).count();
        let reasons = local_reasons(&plan, &input);
        let (outcomes, attempted) = self
            .execute(&plan, &held, reasons, scanned, &mut report)
            .await?;
        report.failed = outcomes
            .iter()
            .zip(&held)
            .filter(|(o, h)| **o == Outcome::Failed && !**h)
            .count();

        let new_last = next_state(&input, &plan, &outcomes);
        // The listings now show what the agreement assumes the cloud holds.
        let effects = cloud_effects(&plan, &outcomes, &attempted);
        report.touched = vec![false; self.folders.len()];
        for (i, planned) in planned_versions.iter().enumerate() {
            let Some(planned) = *planned else { continue };
            let mine: Vec<&CloudEffect> = effects.iter().filter(|e| e.mailbox() == i).collect();
            self.agreed_versions[i] = planned;
            report.touched[i] = !mine.is_empty();
            if !mine.is_empty() {
                self.versions += 1;
                let v = self.versions;
                self.agreed_versions[i] = v;
                if let Some(l) = self.listings[i].as_mut() {
                    l.apply(&mine, v);
                }
            }
        }
        let live: HashSet<ContentHash> = input
            .cloud
            .iter()
            .map(|c| c.hash)
            .chain(input.local.iter().map(|l| l.hash))
            .chain(new_last.entries.keys().copied())
            .collect();
        self.persist(new_last, live).await?;
        let all_complete = complete.iter().all(|c| *c);
        if report.is_clean() && all_complete {
            self.mode = Mode::Online;
        }
        self.quiet = report.is_clean()
            && all_complete
            && report.actions == 0
            && report.held == 0
            && report.warnings.is_empty()
            && report.routing_failures == 0
            && report.downloads == 0
            && !self.background.busy();
        Ok(report)
    }

    /// Start listings of the chosen folders (and any never listed or
    /// stale) in the background, wait a short grace for them, and take in
    /// every listing that finished. A listing started before the agreement
    /// it would be planned against is dropped and started again; a failed
    /// one leaves the previous listing in place and marks the folder
    /// incomplete. Returns per folder whether it is complete, and whether
    /// anything new was taken in (a changed listing, a failed one, one to
    /// redo).
    async fn list_some(&mut self, relist: &[bool], report: &mut CycleReport) -> (Vec<bool>, bool) {
        let mut started = false;
        let mut news = false;
        for (i, f) in self.folders.iter().enumerate() {
            let stale = self.listings[i]
                .as_ref()
                .is_some_and(|l| l.version < self.agreed_versions[i]);
            if stale {
                tracing::error!(folder = %f.key, "bug: listing older than the agreement; listing again");
            }
            let wanted =
                relist.get(i).copied().unwrap_or(true) || self.listings[i].is_none() || stale;
            if !wanted || self.background.listing(i) {
                continue;
            }
            self.versions += 1;
            // A poll of a folder whose picture is current only needs to
            // know whether it changed.
            let changes_only = self.listings[i].is_some() && !stale;
            let (cloud, stop) = (f.cloud.clone(), self.stop.clone());
            self.background
                .start_listing(i, self.versions, changes_only, cloud, stop);
            started = true;
        }
        if started {
            self.background.await_listings(LIST_GRACE, &self.stop).await;
        }
        let mut complete = vec![true; self.folders.len()];
        for (i, complete) in complete.iter_mut().enumerate() {
            let Some(done) = self.background.take_listing(i) else {
                continue;
            };
            match done.result {
                // Started before this folder's last agreement: it may not
                // show what that cycle did. List again.
                Ok(_) if done.version < self.agreed_versions[i] => {
                    tracing::debug!(folder = %self.folders[i].key, "listing predates the last actions; listing again");
                    self.versions += 1;
                    let (cloud, stop) = (self.folders[i].cloud.clone(), self.stop.clone());
                    self.background
                        .start_listing(i, self.versions, false, cloud, stop);
                    news = true;
                }
                // Unchanged since the listing the engine holds.
                Ok(None) => {}
                Ok(Some(entries)) => {
                    self.listings[i] = Some(Listing {
                        entries,
                        version: done.version,
                        sent_deletions: HashSet::new(),
                    });
                    news = true;
                }
                Err(e) => {
                    tracing::warn!(folder = %self.folders[i].key, "listing failed: {e}");
                    news = true;
                    *complete = false;
                    report.cloud_errors.push(e);
                }
            }
        }
        for (i, l) in self.listings.iter().enumerate() {
            match l {
                None => complete[i] = false,
                // Listing failed and the last one is stale: not planned.
                Some(l) if l.version < self.agreed_versions[i] => {
                    complete[i] = false;
                }
                Some(_) => {}
            }
        }
        (complete, news)
    }

    /// Map every listed message to its content hash through the id cache;
    /// the ones it does not know are downloaded in the background and left
    /// out of this cycle (their folder is incomplete until they are in).
    /// Downloads finished since the last cycle are counted here; a failed
    /// one is tried again after the folder's next listing.
    fn resolve_hashes(
        &mut self,
        report: &mut CycleReport,
        complete: &mut [bool],
    ) -> Result<Vec<(usize, CloudEntry, ContentHash)>, SyncError> {
        let mut stored = Vec::new();
        let mut store_error = None;
        let mut fetched: Vec<HashMap<String, CloudEntry>> =
            self.folders.iter().map(|_| HashMap::new()).collect();
        for f in self.background.take_finished() {
            match f {
                Finished::Stored { folder, id, hash } => {
                    report.downloads += 1;
                    stored.push(hash);
                    if let Some(e) = self.folders[folder].cloud.fetched_entry(&id) {
                        fetched[folder].insert(id, e);
                    }
                }
                Finished::Failed { folder, id, error } => {
                    tracing::warn!(folder = %self.folders[folder].key, id = %id, "download failed: {error}");
                    report.cloud_errors.push(error);
                }
                Finished::StoreFailed { folder, id, error } => {
                    tracing::error!(folder = %self.folders[folder].key, id = %id, "cannot store a download: {error}");
                    store_error.get_or_insert(error);
                }
            }
        }
        // What the downloads taught the backends (Gmail's date and
        // Message-ID) fills in the listings' entries.
        for (listing, fetched) in self.listings.iter_mut().zip(&fetched) {
            let Some(l) = listing.as_mut().filter(|_| !fetched.is_empty()) else {
                continue;
            };
            for entry in &mut l.entries {
                if let Some(f) = fetched.get(&entry.id) {
                    entry.received_time = entry.received_time.or(f.received_time);
                    if entry.email_id.is_none() {
                        entry.email_id.clone_from(&f.email_id);
                    }
                }
            }
        }
        // Listed entries find them through the id cache from now on.
        self.store.release(&stored);
        if let Some(e) = store_error {
            return Err(e);
        }
        let mut known = Vec::new();
        for (i, listing) in self.listings.iter().enumerate() {
            let kind = self.folders[i].cloud.storage_kind();
            let fresh = listing
                .as_ref()
                .filter(|l| l.version >= self.agreed_versions[i]);
            let mut missing = Vec::new();
            for entry in fresh.iter().flat_map(|l| l.entries.iter()) {
                let cid = Cid {
                    kind,
                    storage_id: entry.id.clone(),
                    email_id: entry.email_id.clone(),
                };
                let hash = self
                    .store
                    .lookup_id(&cid)
                    .or_else(|| self.store.lookup_storage_id(kind, &entry.id));
                match hash {
                    Some(h) => known.push((i, entry.clone(), h)),
                    None => {
                        complete[i] = false;
                        if self.background.state_of(i, &entry.id).is_none()
                            && !self.stop.is_stopped()
                        {
                            missing.push((entry.id.clone(), cid));
                        }
                    }
                }
            }
            if !missing.is_empty() {
                let cloud = self.folders[i].cloud.clone();
                self.background
                    .download(i, missing, &cloud, &self.store, &self.stop);
            }
        }
        Ok(known)
    }

    /// Scan every maildir (rescanning one that changed under us), hash new
    /// files through the inode cache, and re-link content the store lost.
    async fn scan_all(&self) -> Result<Vec<Scanned>, SyncError> {
        let maildirs = self.maildirs.clone();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || -> Result<Vec<Scanned>, SyncError> {
            let mut out = Vec::new();
            for (i, md) in maildirs.iter().enumerate() {
                if !md.path().join("cur").is_dir() || !md.path().join("new").is_dir() {
                    continue;
                }
                let mut scan = md.scan()?;
                for _ in 0..3 {
                    if !scan.changed {
                        break;
                    }
                    scan = md.scan()?;
                }
                for entry in scan.entries {
                    let hash = match store.hash_for_file(&entry.path, &entry.key) {
                        Ok(h) => h,
                        Err(e) => {
                            // Vanished or unreadable: skip it this cycle,
                            // never treat it as a deletion of anything else.
                            tracing::warn!("skipping {}: {e}", entry.path.display());
                            continue;
                        }
                    };
                    if !store.have(&hash) {
                        let _ = store.adopt_from(&entry.path, &hash);
                    }
                    let name = format!(
                        "{}/{}",
                        entry.subdir.as_str(),
                        entry
                            .path
                            .file_name()
                            .map(|n| n.to_string_lossy())
                            .unwrap_or_default()
                    );
                    out.push(Scanned {
                        maildir: i,
                        name,
                        entry,
                        hash,
                    });
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| SyncError::Task(e.to_string()))?
    }

    /// Size of stored content, remembered per hash (one `stat` per message
    /// per run, not per cycle).
    fn content_size(&self, hash: &ContentHash) -> u64 {
        let mut sizes = match self.sizes.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(&n) = sizes.get(hash) {
            return n;
        }
        let n = std::fs::metadata(self.store.blob_path(hash)).map_or(0, |m| m.len());
        if n > 0 {
            sizes.insert(*hash, n);
        }
        n
    }

    /// Route every cloud message through the config.
    async fn route(
        &self,
        cloud: &[(usize, CloudEntry, ContentHash)],
        report: &mut CycleReport,
    ) -> Vec<Route> {
        let requests = cloud
            .iter()
            .map(|(mailbox, entry, hash)| RouteRequest {
                mailbox: *mailbox,
                content_hash: *hash,
                storage_id: entry.id.clone(),
                email_id: entry.email_id.clone(),
                flags: entry.flags,
                received_time: entry.received_time,
                // The listings carry no size (Graph's and Gmail's count
                // CRLF); the stored content's is what a filter expects.
                size: entry.size.unwrap_or_else(|| self.content_size(hash)),
                content_path: self.store.blob_path(hash),
            })
            .collect();
        let n_maildirs = self.maildirs.len();
        self.router
            .route(requests)
            .await
            .into_iter()
            .map(|r| match r {
                Ok(i) if i < n_maildirs => Route::Maildir(i),
                _ => {
                    report.routing_failures += 1;
                    Route::Failed
                }
            })
            .collect()
    }

    /// Apply the plan: cloud actions grouped per folder (except the `held`
    /// ones), local actions on a blocking thread. One outcome per action,
    /// in plan order, and whether each cloud action was sent.
    async fn execute(
        &self,
        plan: &Plan,
        held: &[bool],
        reasons: HashMap<usize, Reason>,
        scanned: Vec<Scanned>,
        report: &mut CycleReport,
    ) -> Result<(Vec<Outcome>, Vec<bool>), SyncError> {
        let mut outcomes = vec![Outcome::Failed; plan.actions.len()];
        let mut attempted = vec![false; plan.actions.len()];
        if self.stop.is_stopped() {
            return Ok((outcomes, attempted));
        }

        // Cloud: group per folder (flag changes) and per (folder, action) (deletes).
        let mut flag_groups: BTreeMap<usize, Vec<(usize, FlagChange)>> = BTreeMap::new();
        let mut delete_groups: BTreeMap<(usize, bool), Vec<(usize, String)>> = BTreeMap::new();
        for (ai, a) in plan.actions.iter().enumerate() {
            if held[ai] {
                continue;
            }
            attempted[ai] = a.is_cloud();
            match a {
                Action::SetCloudFlags {
                    mailbox,
                    id,
                    set,
                    clear,
                    ..
                } => flag_groups.entry(*mailbox).or_default().push((
                    ai,
                    FlagChange {
                        id: id.clone(),
                        set: *set,
                        clear: *clear,
                    },
                )),
                Action::DeleteCloud {
                    mailbox,
                    id,
                    action,
                    ..
                } => delete_groups
                    .entry((*mailbox, *action == DeleteAction::Delete))
                    .or_default()
                    .push((ai, id.clone())),
                _ => {}
            }
        }
        let mut set = JoinSet::new();
        for (mailbox, group) in flag_groups {
            let cloud = self.folders[mailbox].cloud.clone();
            let (stop, key) = (self.stop.clone(), self.folders[mailbox].key.clone());
            set.spawn(async move {
                let (idx, changes): (Vec<usize>, Vec<FlagChange>) = group.into_iter().unzip();
                let n = changes.len();
                let r = stop.unless(cloud.set_flags(changes)).await;
                (idx, r.unwrap_or_else(|| vec![Err(stopping(&key)); n]))
            });
        }
        for ((mailbox, delete), group) in delete_groups {
            let cloud = self.folders[mailbox].cloud.clone();
            let action = if delete {
                DeleteAction::Delete
            } else {
                DeleteAction::Archive
            };
            let (stop, key) = (self.stop.clone(), self.folders[mailbox].key.clone());
            set.spawn(async move {
                let (idx, ids): (Vec<usize>, Vec<String>) = group.into_iter().unzip();
                let n = ids.len();
                let r = stop.unless(cloud.delete(ids, action)).await;
                (idx, r.unwrap_or_else(|| vec![Err(stopping(&key)); n]))
            });
        }
        while let Some(joined) = set.join_next().await {
            let (idx, results) = joined.map_err(|e| SyncError::Task(e.to_string()))?;
            for (ai, r) in idx.into_iter().zip(results) {
                match r {
                    Ok(()) => outcomes[ai] = Outcome::Done,
                    Err(e) => {
                        tracing::warn!("cloud action failed, will retry: {e}");
                        report.cloud_errors.push(e);
                    }
                }
            }
        }

        // Local actions.
        let local: Vec<(usize, Action, Reason)> = plan
            .actions
            .iter()
            .enumerate()
            .filter(|(_, a)| !a.is_cloud())
            .map(|(i, a)| {
                let why = reasons.get(&i).cloned().unwrap_or(Reason::debug("planned"));
                (i, a.clone(), why)
            })
            .collect();
        if !local.is_empty() {
            let maildirs = self.maildirs.clone();
            let store = self.store.clone();
            let stop = self.stop.clone();
            let results = tokio::task::spawn_blocking(move || {
                apply_local(&store, &maildirs, scanned, local, &stop)
            })
            .await
            .map_err(|e| SyncError::Task(e.to_string()))??;
            for (ai, o) in results {
                outcomes[ai] = o;
            }
        }
        Ok((outcomes, attempted))
    }

    /// Record, in one transaction, the rows of the agreement that changed,
    /// the cursors that moved and the store's cache changes; drop content
    /// nothing references any more. When the commit fails the engine keeps
    /// the agreement the database holds, so the next commit writes the
    /// whole difference (an older agreement is safe to plan against).
    async fn persist(
        &mut self,
        new_last: LastState,
        live: HashSet<ContentHash>,
    ) -> Result<(), SyncError> {
        let mut moved = Vec::new();
        for (i, f) in self.folders.iter().enumerate() {
            if let Some(c) = f.cloud.save_cursor()
                && self.cursors.get(&f.key) != Some(&c)
            {
                moved.push((i, c));
            }
        }
        let store = self.store.clone();
        let state = self.state.clone();
        let old = std::mem::take(&mut self.last);
        // What the database holds for each moved cursor, lent to the write.
        let changes: Vec<CursorChange> = moved
            .into_iter()
            .map(|(i, c)| (i, self.cursors.remove(&self.folders[i].key), c))
            .collect();
        let (old, new_last, changes, result) = tokio::task::spawn_blocking(move || {
            let r = store
                .retain(&live)
                .and_then(|_| store.commit(|tx| state.write(tx, &old, &new_last, &changes)));
            (old, new_last, changes, r)
        })
        .await
        .map_err(|e| SyncError::Task(e.to_string()))?;
        let ok = result.is_ok();
        for (i, was, new) in changes {
            let keep = if ok { Some(new) } else { was };
            if let Some(c) = keep {
                self.cursors.insert(self.folders[i].key.clone(), c);
            }
        }
        match result {
            Ok(_) => {
                self.last = new_last;
                Ok(())
            }
            Err(e) => {
                self.last = old;
                Err(e.into())
            }
        }
    }
}

/// Apply local actions in order; returns (action index, outcome).
fn apply_local(
    store: &Store,
    maildirs: &[Maildir],
    scanned: Vec<Scanned>,
    actions: Vec<(usize, Action, Reason)>,
    stop: &Stop,
) -> Result<Vec<(usize, Outcome)>, SyncError> {
    let mut files: HashMap<(usize, String), Entry> = scanned
        .into_iter()
        .map(|s| ((s.maildir, s.name), s.entry))
        .collect();
    let mut touched = HashSet::new();
    // A maildir that disappeared gets its directories back before anything
    // is restored into it (the planner restores, never deletes, for it).
    for (_, a, _) in &actions {
        let dest = match a {
            Action::Deliver { maildir, .. } => *maildir,
            Action::MoveLocal { to_maildir, .. } => *to_maildir,
            _ => continue,
        };
        let md = &maildirs[dest];
        if !md.path().join("cur").is_dir() || !md.path().join("new").is_dir() {
            tracing::warn!("recreating maildir {}", md.path().display());
            Maildir::create(md.path())?;
        }
    }
    let mut out = Vec::with_capacity(actions.len());
    for (ai, action, why) in actions {
        if stop.is_stopped() {
            // Not started: recorded as failed, so planned again next run.
            out.push((ai, Outcome::Failed));
            continue;
        }
        why.log(&maildirs[local_maildir(&action)], &action);
        let result: Result<(), String> = match &action {
            Action::Deliver {
                hash,
                maildir,
                flags,
            } => {
                touched.insert(*maildir);
                maildirs[*maildir]
                    .deliver_link(&store.blob_path(hash), &Maildir::new_base_name(), *flags)
                    .map(|e| store.record_inode(e.key, *hash))
                    .map_err(|e| e.to_string())
            }
            Action::SetLocalFlags {
                hash,
                maildir,
                name,
                flags,
            } => match files.get(&(*maildir, name.clone())) {
                None => Err(format!("{name}: not in the scan")),
                Some(entry) => {
                    touched.insert(*maildir);
                    maildirs[*maildir]
                        .set_flags(entry, *flags)
                        .map(|e| store.record_inode(e.key, *hash))
                        .map_err(|e| e.to_string())
                }
            },
            Action::MoveLocal {
                hash,
                from_maildir,
                name,
                to_maildir,
                flags,
            } => match files.get(&(*from_maildir, name.clone())) {
                None => Err(format!("{name}: not in the scan")),
                Some(entry) => {
                    touched.insert(*from_maildir);
                    touched.insert(*to_maildir);
                    // Link from the file itself: it holds the content even if
                    // the store lost it. The old file goes only once the new
                    // one is in place.
                    match maildirs[*to_maildir].deliver_link(&entry.path, &entry.base, *flags) {
                        Ok(new) => {
                            store.record_inode(new.key, *hash);
                            match maildirs[*from_maildir].remove(entry) {
                                Ok(()) | Err(MaildirError::Vanished { .. }) => Ok(()),
                                Err(e) => Err(e.to_string()),
                            }
                        }
                        Err(e) => Err(e.to_string()),
                    }
                }
            },
            Action::RemoveLocal { maildir, name, .. } => {
                match files.remove(&(*maildir, name.clone())) {
                    None => Err(format!("{name}: not in the scan")),
                    Some(entry) => {
                        touched.insert(*maildir);
                        maildirs[*maildir].remove(&entry).map_err(|e| e.to_string())
                    }
                }
            }
            Action::SetCloudFlags { .. } | Action::DeleteCloud { .. } => continue,
        };
        match result {
            Ok(()) => out.push((ai, Outcome::Done)),
            Err(e) => {
                tracing::warn!("local action failed, will retry: {e}");
                out.push((ai, Outcome::Failed));
            }
        }
    }
    for i in touched {
        maildirs[i].sync()?;
    }
    Ok(out)
}

/// Why a local action is taken, for the log.
#[derive(Clone, Debug)]
struct Reason {
    /// Logged as a warning: the action undoes a change the user made.
    overrules: bool,
    text: String,
}

impl Reason {
    fn debug(text: impl Into<String>) -> Reason {
        Reason {
            overrules: false,
            text: text.into(),
        }
    }

    fn log(&self, md: &Maildir, action: &Action) {
        let what = match action {
            Action::Deliver { flags, .. } => format!("deliver with flags {flags}"),
            Action::SetLocalFlags { name, flags, .. } => format!("rename {name} to flags {flags}"),
            Action::MoveLocal {
                name,
                to_maildir,
                flags,
                ..
            } => format!("move {name} to maildir #{to_maildir} with flags {flags}"),
            Action::RemoveLocal { name, .. } => format!("remove {name}"),
            Action::SetCloudFlags { .. } | Action::DeleteCloud { .. } => return,
        };
        let hash = action.hash();
        let md = md.path().display();
        if self.overrules {
            tracing::warn!("{md}: {what} ({hash}): {}", self.text);
        } else {
            tracing::debug!("{md}: {what} ({hash}): {}", self.text);
        }
    }
}

/// The maildir a local action works in (the source, for a move).
fn local_maildir(action: &Action) -> usize {
    match action {
        Action::Deliver { maildir, .. }
        | Action::SetLocalFlags { maildir, .. }
        | Action::RemoveLocal { maildir, .. } => *maildir,
        Action::MoveLocal { from_maildir, .. } => *from_maildir,
        Action::SetCloudFlags { .. } | Action::DeleteCloud { .. } => 0,
    }
}

/// Why each local action of the plan is taken: what the inputs show about
/// its message. A rename that takes back bits the user changed since the
/// last agreement is marked as overruling the user.
fn local_reasons(plan: &Plan, input: &PlanInput) -> HashMap<usize, Reason> {
    let mut out = HashMap::new();
    if plan.actions.iter().all(Action::is_cloud) {
        return out;
    }
    let listed: HashSet<ContentHash> = input.cloud.iter().map(|c| c.hash).collect();
    let files: HashMap<(usize, &str), Flags> = input
        .local
        .iter()
        .map(|f| ((f.maildir, f.name.as_str()), f.flags))
        .collect();
    for (i, a) in plan.actions.iter().enumerate() {
        let last = input.last.entries.get(&a.hash());
        let reason = match a {
            Action::Deliver { .. } if last.is_some() => {
                Reason::debug("restoring a message missing locally")
            }
            Action::Deliver { .. } => Reason::debug("new cloud message"),
            Action::MoveLocal { .. } => Reason::debug("routed to another maildir"),
            Action::RemoveLocal { .. } if listed.contains(&a.hash()) => {
                Reason::debug("duplicate file")
            }
            Action::RemoveLocal { .. } if last.is_some() => Reason::debug("gone from the cloud"),
            Action::RemoveLocal { .. } => {
                Reason::debug("came from a synced folder and is no longer listed")
            }
            Action::SetLocalFlags {
                maildir,
                name,
                flags,
                ..
            } => {
                let now = files
                    .get(&(*maildir, name.as_str()))
                    .copied()
                    .unwrap_or(Flags::NONE);
                let changed_by_rename = now ^ *flags;
                match last {
                    Some(e) => {
                        let user = (now ^ e.local) & SYNCED;
                        let undone = user & changed_by_rename;
                        if undone.is_empty() {
                            Reason::debug(format!(
                                "the cloud changed {} since the last sync",
                                changed_by_rename
                            ))
                        } else {
                            Reason {
                                overrules: true,
                                text: format!(
                                    "takes back the local change of {undone}: the cloud \
                                     changed it too since the last sync (agreed {}, cloud wins)",
                                    e.flags
                                ),
                            }
                        }
                    }
                    None => Reason::debug("first sight: the cloud's flags win"),
                }
            }
            Action::SetCloudFlags { .. } | Action::DeleteCloud { .. } => continue,
        };
        out.insert(i, reason);
    }
    out
}

fn describe_warning(w: &Warning, maildirs: &[Maildir]) -> String {
    let path = |i: &usize| {
        maildirs
            .get(*i)
            .map(|m| m.path().display().to_string())
            .unwrap_or_default()
    };
    match w {
        Warning::MaildirMissing { maildir, missing } => format!(
            "maildir {} disappeared with {missing} synced messages: restoring them from the \
             store, deleting nothing in the cloud",
            path(maildir)
        ),
        Warning::MassDeletion {
            maildir,
            missing,
            last_count,
        } => format!(
            "maildir {} lost {missing} of {last_count} messages at once: not taken as a \
             deletion request; restoring them, deleting nothing in the cloud",
            path(maildir)
        ),
        Warning::DeletionsHeld { maildir, missing } => format!(
            "another maildir disappeared: the {missing} messages missing from {} are restored, \
             not deleted in the cloud",
            path(maildir)
        ),
    }
}
