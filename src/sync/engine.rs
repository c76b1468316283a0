//! The executor: one sync cycle gathers the three pictures the planner needs
//! (cloud listings, maildir scans, the last agreement), downloads what is
//! missing into the store, routes, plans, applies the actions, and records
//! the new agreement with one outcome per action. A failed cloud action leaves
//! local state untouched and is planned again next cycle.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::background::{Background, Finished, LIST_GRACE, stopping};
use super::index::{CloudIndex, Listing, LocalIndex, MaildirFiles};

use super::plan::{
    Action, CloudEffect, CloudMsg, LastEntry, LastState, LocalFile, MailboxInfo, MaildirInfo, Mode,
    Outcome, Plan, PlanInput, Route, SYNCED, Warning, cloud_effects, next_state, plan, settled,
};
use super::state::{CursorChange, SyncState};
use crate::cloud::{CloudError, CloudMailbox, FlagChange, Listed};
use crate::config::Router;
use crate::config::router::RouteRequest;
use crate::error::{HasKind, Kind};
use crate::maildir::{Entry, Maildir, MaildirError, WatchEvent};
use crate::store::{Store, StoreError};
use crate::types::DeleteAction;
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
/// no new action starts, and what was done is recorded as usual. A
/// cancellation token; the daemon makes it a child of its root.
#[derive(Clone, Debug, Default)]
pub struct Stop(CancellationToken);

impl From<CancellationToken> for Stop {
    fn from(token: CancellationToken) -> Stop {
        Stop(token)
    }
}

impl Stop {
    /// Ask for the stop (idempotent).
    pub fn stop(&self) {
        self.0.cancel();
    }

    /// True once [`Stop::stop`] was called (or a parent token cancelled).
    pub fn is_stopped(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves once the stop is asked for.
    pub async fn stopped(&self) {
        self.0.cancelled().await;
    }

    /// `fut`, unless the stop comes first (then `None`).
    pub(crate) async fn unless<F: std::future::Future>(&self, fut: F) -> Option<F::Output> {
        self.0.run_until_cancelled(fut).await
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
    /// Cloud errors met (listing, download or actions), per folder.
    pub cloud_errors: Vec<FolderError>,
    /// Per folder: a listing of it was taken in successfully.
    pub listed: Vec<bool>,
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

/// What a folder was doing when a cloud error met it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Listing it.
    Listing,
    /// Downloading one of its messages.
    Download,
    /// Changing or deleting one of its messages.
    Action,
}

/// A cloud error met by one folder in a cycle.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{error}")]
pub struct FolderError {
    /// The folder (config order).
    pub folder: usize,
    /// What failed.
    pub during: Phase,
    /// The error.
    pub error: CloudError,
}

impl HasKind for FolderError {
    /// The error's kind, except that a message gone or refused is not the
    /// folder's failure: the next listing tells what became of it.
    fn kind(&self) -> Kind {
        match (self.during, self.error.kind()) {
            (Phase::Download | Phase::Action, Kind::NotFound | Kind::Config) => Kind::Transient,
            (_, k) => k,
        }
    }
}

impl CycleReport {
    /// True when everything succeeded.
    pub fn is_clean(&self) -> bool {
        self.failed == 0 && self.cloud_errors.is_empty()
    }

    /// Per folder (of `n`), the kind of failure that decides when it is
    /// tried again; `None` for a folder that met no error.
    pub fn folder_kinds(&self, n: usize) -> Vec<Option<Kind>> {
        let mut kinds: Vec<Option<Kind>> = vec![None; n];
        for e in &self.cloud_errors {
            if let Some(k) = kinds.get_mut(e.folder) {
                let kind = e.kind();
                *k = Some(k.map_or(kind, |was| was.worst(kind)));
            }
        }
        kinds
    }

    /// Adds a later cycle's report to this one.
    pub fn merge(&mut self, later: CycleReport) {
        self.downloads += later.downloads;
        self.actions += later.actions;
        self.failed += later.failed;
        self.cloud_errors.extend(later.cloud_errors);
        if self.listed.len() < later.listed.len() {
            self.listed.resize(later.listed.len(), false);
        }
        for (l, later) in self.listed.iter_mut().zip(later.listed) {
            *l |= later;
        }
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
///
/// Between cycles the engine keeps every listed message and every maildir
/// file with its content hash ([`CloudIndex`], [`LocalIndex`]). A cycle
/// plans only the hashes something touched since the last one: files the
/// watcher named, listing entries that changed, finished downloads, actions
/// to retry. A full rescan (at start, on request, after a watcher overflow)
/// looks at every file again and plans everything.
pub struct Engine {
    store: Arc<Store>,
    router: Router,
    folders: Vec<Folder>,
    cloud: CloudIndex,
    local: LocalIndex,
    /// Per folder, the version of the cloud picture the agreement `last`
    /// was computed from (after the cycle's effects). A listing older than
    /// this is never planned against: the folder is listed again.
    agreed_versions: Vec<u64>,
    /// Source of listing versions.
    versions: u64,
    maildirs: Vec<Maildir>,
    state: SyncState,
    /// The whole agreement, while a cycle planning every hash needs it
    /// (from start-up, or loaded for such a cycle, to that cycle's end);
    /// other cycles read the entries of the hashes they plan from the
    /// database.
    all_agreed: Option<BTreeMap<ContentHash, LastEntry>>,
    /// Files in each maildir after the last cycle's actions (as agreed).
    agreed_counts: Vec<usize>,
    /// Per folder: still on the `--offline` start-up rule (until its
    /// first cycle that lists it completely with no failed action on its
    /// messages).
    offline: Vec<bool>,
    stop: Stop,
    sizes: std::sync::Mutex<HashMap<ContentHash, u64>>,
    /// Listings and downloads running per folder, across cycles.
    background: Background,
    /// The last cycle reached a fixed point: nothing to do, nothing failed,
    /// every folder complete, nothing held or pending.
    quiet: bool,
    /// The next cycle scans every maildir and plans every hash.
    rescan: bool,
    /// Files the watcher named since the last cycle.
    paths: BTreeSet<PathBuf>,
    /// Hashes to plan again next cycle (failed or held actions, a failed
    /// commit, guard warnings).
    pending: HashSet<ContentHash>,
    /// What the last planned cycle saw: each folder complete, each maildir
    /// present. A folder becoming complete, or a maildir coming or going,
    /// has the next cycle plan every hash (decisions that waited on it).
    last_complete: Vec<bool>,
    last_present: Vec<bool>,
}

/// How far a cycle looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    /// Scan every maildir, plan every hash.
    Full,
    /// Plan what changed since the last cycle.
    Changes,
}

/// A change a local action made to a maildir, for the index.
enum LocalChange {
    /// A file now exists with this content.
    Put(usize, Entry, ContentHash),
    /// A file is gone.
    Remove(usize, String),
}

/// A plan and how running it went.
struct PlanRun {
    plan: Plan,
    /// One per action, in plan order.
    outcomes: Vec<Outcome>,
    /// Per action: a cloud action that was sent.
    attempted: Vec<bool>,
    /// Per action: a deletion held until a listing confirms the one sent.
    held: Vec<bool>,
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
        let mut cursors = cursors;
        for f in &folders {
            if let Some((head, records)) = cursors.remove(&f.key) {
                f.cloud.load_cursor(head, records);
            }
        }
        Ok(Engine {
            store,
            router,
            cloud: CloudIndex::new(n_folders),
            local: LocalIndex::new(maildirs.len()),
            agreed_versions: vec![0; n_folders],
            versions: 0,
            folders,
            last_present: vec![true; maildirs.len()],
            maildirs,
            state,
            all_agreed: Some(last.entries),
            agreed_counts: last.maildir_counts,
            offline: vec![offline; n_folders],
            stop: Stop::default(),
            sizes: std::sync::Mutex::new(HashMap::new()),
            background: Background::new(n_folders),
            quiet: false,
            rescan: true,
            paths: BTreeSet::new(),
            pending: HashSet::new(),
            last_complete: vec![false; n_folders],
        })
    }

    /// The handle that makes the running cycle (and every later one) finish
    /// early: cloud calls in progress give up, no new downloads or actions
    /// start, and what was done is recorded as usual.
    pub fn stop_handle(&self) -> Stop {
        self.stop.clone()
    }

    /// Puts the engine under a shutdown tree: `stop` (a child of the
    /// daemon's root token) stops its cycles, and its background listings
    /// and downloads are tracked by `tracker` too. Call before the first
    /// cycle.
    pub fn attach(&mut self, stop: CancellationToken, tracker: TaskTracker) {
        self.stop = Stop::from(stop);
        self.background.track_with(tracker);
    }

    /// Number of cloud folders.
    pub fn folder_count(&self) -> usize {
        self.folders.len()
    }

    /// The last agreement, read from the database unless it is in memory
    /// (for tests and status). Blocking.
    pub fn last_state(&self) -> Result<LastState, SyncError> {
        let entries = match &self.all_agreed {
            Some(all) => all.clone(),
            None => self.state.load_agreement(&self.store)?,
        };
        Ok(LastState {
            entries,
            maildir_counts: self.agreed_counts.clone(),
        })
    }

    /// Files of maildir `i` the engine knows (for tests and status).
    pub fn known_files(&self, i: usize) -> usize {
        self.local.counts().get(i).copied().unwrap_or(0)
    }

    /// Take in what the maildir watcher saw: the files it names are looked
    /// at by the next cycle; a lost event has it scan every maildir.
    pub fn files_changed(&mut self, event: WatchEvent) {
        if event.rescan {
            self.rescan = true;
        }
        self.paths.extend(event.paths);
    }

    /// Have the next cycle scan every maildir and plan every message (the
    /// periodic safety net: the watcher is a hint, not the truth).
    pub fn request_rescan(&mut self) {
        self.rescan = true;
    }

    /// Sync until settled, listing every folder again: see [`Engine::settle`].
    pub async fn cycle(&mut self) -> Result<CycleReport, SyncError> {
        let all = vec![true; self.folders.len()];
        self.settle(&all).await
    }

    /// One full cycle listing the folders in `relist`, then more cycles
    /// without listing, each taking in a batch of finished downloads, until
    /// no listing or download is left in the background (or a stop). The
    /// reports are merged.
    pub async fn settle(&mut self, relist: &[bool]) -> Result<CycleReport, SyncError> {
        let mut report = self.cycle_with(relist).await?;
        let none = vec![false; self.folders.len()];
        while self.background_busy() && !self.stop.is_stopped() {
            let ready = self.background_ready();
            if self.stop.unless(ready).await.is_none() {
                break;
            }
            report.merge(self.timed_cycle(&none, false).await?);
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

    /// Run one full cycle: scan every maildir, list again the folders
    /// marked in `relist` (the others use their previous listing), take in
    /// whatever the background finished and plan every message. Downloads
    /// it starts run on in the background; a listing that takes longer
    /// than a short grace is taken in by a later cycle.
    pub async fn cycle_with(&mut self, relist: &[bool]) -> Result<CycleReport, SyncError> {
        self.rescan = true;
        self.timed_cycle(relist, false).await
    }

    /// A poll: list the folders in `relist`, look at the files the watcher
    /// named ([`Engine::files_changed`]) and plan what changed. When
    /// nothing did, nothing waits in the background and the last cycle
    /// left nothing to do, stop there: no planning, no write. A rescan
    /// asked for (or the first cycle) scans everything.
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

    /// One cycle: take in what changed, plan the hashes it touched (or every
    /// hash), run the plan and record the new agreement.
    async fn one_cycle(
        &mut self,
        relist: &[bool],
        may_skip: bool,
    ) -> Result<CycleReport, SyncError> {
        let mut report = CycleReport::default();
        let scope = if self.rescan {
            Scope::Full
        } else {
            Scope::Changes
        };
        let (dirty, failed, news) = self.gather(scope, relist, &mut report).await?;
        if may_skip
            && scope == Scope::Changes
            && self.quiet
            && !news
            && dirty.is_empty()
            && !self.background.busy()
        {
            report.skipped = true;
            report.touched = vec![false; self.folders.len()];
            return Ok(report);
        }
        self.quiet = false;
        let (complete, present, plan_all) = self.picture(scope, &failed);
        if plan_all && self.all_agreed.is_none() {
            self.load_all_agreed().await?;
        }
        let mut hashes = self.hashes_to_plan(plan_all, dirty);
        // The picture each folder is planned with; checked against the
        // agreement's by list_some, so a stale pair cannot be planned.
        let planned_versions: Vec<Option<u64>> = (0..self.folders.len())
            .map(|i| self.cloud.listing(i).map(|l| l.version))
            .collect();
        // Stopping: nothing is planned, so nothing changes; what was
        // downloaded is committed already.
        let stop = self.stop.clone();
        let routed = stop.unless(self.route(&hashes, scope == Scope::Full, &mut report));
        if routed.await.is_none() {
            return Ok(report);
        }
        if plan_all {
            // What both sides hold as agreed needs no plan (at start-up,
            // nearly everything).
            hashes = self.unsettled(hashes);
        }
        let agreed = self.agreement_of(&hashes).await?;
        let mut input = self.input_for(&hashes, agreed, &complete, &present, plan_all);
        let run = self.run_plan(&input, &complete, &mut report).await?;
        self.plan_again(&run, &hashes);

        let mut new_last = next_state(&input, &run.plan, &run.outcomes);
        new_last.maildir_counts = self.local.counts();
        let old_last = std::mem::take(&mut input.last.entries);
        // The listings now show what the agreement assumes the cloud holds.
        let effects = cloud_effects(&run.plan, &run.outcomes, &run.attempted);
        self.take_effects(&planned_versions, &effects, &mut report);
        self.persist(&hashes, &old_last, new_last, scope).await?;
        self.free_after(plan_all, (input, run.plan, hashes, old_last));
        self.quiet = self.is_quiet(&report, &complete);
        Ok(report)
    }

    /// Takes in finished listings and downloads, and what changed in the
    /// maildirs: every file on a full scan, else the files the watcher
    /// named. Returns the hashes that changed, per folder whether its
    /// listing failed, and whether anything new was taken in (see
    /// [`Engine::list_some`]).
    async fn gather(
        &mut self,
        scope: Scope,
        relist: &[bool],
        report: &mut CycleReport,
    ) -> Result<(HashSet<ContentHash>, Vec<bool>, bool), SyncError> {
        let mut dirty = HashSet::new();
        // A full scan reads the maildirs while the listings arrive.
        let scan = (scope == Scope::Full).then(|| {
            self.paths.clear();
            self.start_scan()
        });
        let (failed, news) = self.list_some(relist, report, &mut dirty).await;
        self.take_downloads(report, &mut dirty)?;
        match scan {
            Some(scan) => {
                self.rescan = false;
                self.finish_scan(scan).await?;
            }
            None => {
                let paths = std::mem::take(&mut self.paths);
                self.look_at(paths, &mut dirty).await?;
            }
        }
        Ok((dirty, failed, news))
    }

    /// What this cycle sees, remembered for the next: each folder complete
    /// (its listing did not fail, is current and fully resolved), each
    /// maildir present; and whether to plan every hash (a full scan, a
    /// maildir that came or went, a folder that became complete).
    fn picture(&mut self, scope: Scope, failed: &[bool]) -> (Vec<bool>, Vec<bool>, bool) {
        let complete: Vec<bool> = (0..self.folders.len())
            .map(|i| !failed[i] && self.fresh(i).is_some_and(|l| l.unresolved.is_empty()))
            .collect();
        let present: Vec<bool> = self
            .maildirs
            .iter()
            .map(|m| m.path().join("cur").is_dir() && m.path().join("new").is_dir())
            .collect();
        let plan_all = scope == Scope::Full
            || present != self.last_present
            || complete
                .iter()
                .zip(&self.last_complete)
                .any(|(now, was)| *now && !*was);
        self.last_present.clone_from(&present);
        self.last_complete.clone_from(&complete);
        (complete, present, plan_all)
    }

    /// Reads the whole agreement from the database into memory.
    async fn load_all_agreed(&mut self) -> Result<(), SyncError> {
        let (state, store) = (self.state.clone(), self.store.clone());
        let all = tokio::task::spawn_blocking(move || state.load_agreement(&store))
            .await
            .map_err(|e| SyncError::Task(e.to_string()))??;
        self.all_agreed = Some(all);
        Ok(())
    }

    /// The hashes to plan, taking the pending ones: with `plan_all` every
    /// hash the indexes and the agreement know, else the `dirty` ones.
    fn hashes_to_plan(
        &mut self,
        plan_all: bool,
        mut dirty: HashSet<ContentHash>,
    ) -> BTreeSet<ContentHash> {
        if plan_all {
            self.pending.clear();
            self.cloud
                .hashes()
                .chain(self.local.hashes())
                .chain(self.all_agreed.iter().flat_map(|a| a.keys()))
                .copied()
                .collect()
        } else {
            dirty.extend(self.pending.drain());
            dirty.into_iter().collect()
        }
    }

    /// The hashes of `hashes` that need a plan: not exactly as the whole
    /// agreement in memory says (see [`Settle`]).
    fn unsettled(&self, hashes: BTreeSet<ContentHash>) -> BTreeSet<ContentHash> {
        let supported: Vec<Flags> = self
            .folders
            .iter()
            .map(|f| f.cloud.supported_flags())
            .collect();
        let none = BTreeMap::new();
        let check = Settle {
            cloud: &self.cloud,
            local: &self.local,
            last: self.all_agreed.as_ref().unwrap_or(&none),
            agreed_versions: &self.agreed_versions,
            custom_router: self.router.is_custom(),
            maildirs: self.maildirs.len(),
            supported: &supported,
        };
        check.unsettled(hashes)
    }

    /// Plans `input`, logs the plan's warnings and runs it, holding the
    /// deletions already sent; counts in `report` what it planned, held and
    /// failed. Folders done with the `--offline` rule leave it.
    async fn run_plan(
        &mut self,
        input: &PlanInput,
        complete: &[bool],
        report: &mut CycleReport,
    ) -> Result<PlanRun, SyncError> {
        let plan = plan(input);
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
                Action::DeleteCloud { mailbox, id, .. } => self
                    .cloud
                    .listing(*mailbox)
                    .is_some_and(|l| l.sent_deletions.contains(id)),
                _ => false,
            })
            .collect();
        report.held = held.iter().filter(|h| **h).count();
        let reasons = local_reasons(&plan, input);
        let (outcomes, attempted) = self.execute(&plan, &held, reasons, report).await?;
        report.failed = outcomes
            .iter()
            .zip(&held)
            .filter(|(o, h)| **o == Outcome::Failed && !**h)
            .count();
        self.leave_offline(complete, &plan, &outcomes, input);
        Ok(PlanRun {
            plan,
            outcomes,
            attempted,
            held,
        })
    }

    /// Has the next cycle plan again what did not happen (failed or held
    /// actions), and after a guard warning every hash of this one.
    fn plan_again(&mut self, run: &PlanRun, hashes: &BTreeSet<ContentHash>) {
        for (i, a) in run.plan.actions.iter().enumerate() {
            if run.outcomes[i] != Outcome::Done || run.held[i] {
                self.pending.insert(a.hash());
            }
        }
        if !run.plan.warnings.is_empty() {
            self.pending.extend(hashes.iter().copied());
        }
    }

    /// Applies the cycle's cloud `effects` to the listings each folder was
    /// planned with (`planned_versions`), which the agreement is then
    /// computed from, and marks in `report` the folders they touched.
    fn take_effects(
        &mut self,
        planned_versions: &[Option<u64>],
        effects: &[CloudEffect],
        report: &mut CycleReport,
    ) {
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
                if let Some(l) = self.cloud.listing_mut(i) {
                    apply_effects(l, &mine, v);
                }
            }
        }
    }

    /// Lets go of the store's warm tables and, after a cycle that warmed
    /// them or planned every hash, frees them, the whole agreement and the
    /// cycle's copies of the world (`cycle`) on a blocking thread.
    fn free_after(&mut self, plan_all: bool, cycle: impl Send + 'static) {
        // The id table was in memory for this cycle's large batch, the
        // inode table for its full scan, the agreement for planning every
        // hash.
        let warm = self.store.take_warm();
        if warm.is_some() || plan_all {
            // A full cycle's copies of the world are freed, and the pages
            // handed back instead of keeping the peak for the daemon's
            // life, on a blocking thread: the cycle does not wait for it.
            let freed = (warm, self.all_agreed.take(), cycle);
            tokio::task::spawn_blocking(move || {
                drop(freed);
                trim_heap();
            });
        }
    }

    /// True when the cycle reached a fixed point: nothing to do, nothing
    /// failed, every folder complete, nothing held or pending.
    fn is_quiet(&self, report: &CycleReport, complete: &[bool]) -> bool {
        let all_complete = complete.iter().all(|c| *c);
        report.is_clean()
            && all_complete
            && report.actions == 0
            && report.held == 0
            && report.warnings.is_empty()
            && report.routing_failures == 0
            && report.downloads == 0
            && self.pending.is_empty()
            && !self.background.busy()
    }

    /// Folders on the `--offline` start-up rule leave it after a cycle that
    /// listed them completely and failed no action on a message they hold;
    /// another folder's failures do not hold them back.
    fn leave_offline(
        &mut self,
        complete: &[bool],
        plan: &Plan,
        outcomes: &[Outcome],
        input: &PlanInput,
    ) {
        if !self.offline.iter().any(|o| *o) {
            return;
        }
        let failed: HashSet<ContentHash> = plan
            .actions
            .iter()
            .zip(outcomes)
            .filter(|(_, o)| **o == Outcome::Failed)
            .map(|(a, _)| a.hash())
            .collect();
        let mut held_back = vec![false; self.offline.len()];
        for c in input.cloud.iter().filter(|c| failed.contains(&c.hash)) {
            if let Some(h) = held_back.get_mut(c.mailbox) {
                *h = true;
            }
        }
        for (i, offline) in self.offline.iter_mut().enumerate() {
            if *offline && complete[i] && !held_back[i] {
                *offline = false;
                tracing::debug!(folder = %self.folders[i].key, "offline start-up rule done");
            }
        }
    }

    /// Where `listed` goes: the router's answer; without a custom router
    /// always the first maildir (nothing is asked or recorded).
    fn route_of(&self, listed: &super::index::Listed) -> Route {
        route_of(listed, self.router.is_custom())
    }

    /// Folder `i`'s listing, unless it is older than the agreement.
    fn fresh(&self, i: usize) -> Option<&Listing> {
        fresh_listing(&self.cloud, &self.agreed_versions, i)
    }

    /// Start listings of the chosen folders (and any never listed or
    /// stale) in the background, wait a short grace for them, and take in
    /// every listing that finished, adding the hashes whose cloud copies
    /// changed to `dirty` and looking up (or downloading) new messages. A
    /// listing started before the agreement it would be planned against is
    /// dropped and started again; a failed one leaves the previous listing
    /// in place. Returns per folder whether its listing failed this cycle,
    /// and whether anything new was taken in (a changed listing, a failed
    /// one, one to redo).
    async fn list_some(
        &mut self,
        relist: &[bool],
        report: &mut CycleReport,
        dirty: &mut HashSet<ContentHash>,
    ) -> (Vec<bool>, bool) {
        if self.start_listings(relist) {
            self.background.await_listings(LIST_GRACE, &self.stop).await;
        }
        let mut news = false;
        let mut failed = vec![false; self.folders.len()];
        report.listed.resize(self.folders.len(), false);
        for (i, failed) in failed.iter_mut().enumerate() {
            let Some((done, retry)) = self.background.take_listing(i) else {
                continue;
            };
            report.listed[i] |= done.result.is_ok();
            match done.result {
                // Started before this folder's last agreement: it may not
                // show what that cycle did. List again.
                Ok(_) if done.version < self.agreed_versions[i] => {
                    tracing::debug!(folder = %self.folders[i].key, "listing predates the last actions; listing again");
                    self.list_again(i);
                    news = true;
                }
                // Unchanged since the listing the engine holds: only the
                // downloads that failed are tried again.
                Ok(l) if l.is_unchanged() && self.cloud.listing(i).is_some() => {
                    let retry: Vec<String> = match self.cloud.listing(i) {
                        Some(l) => retry
                            .into_iter()
                            .filter(|id| l.unresolved.contains(id))
                            .collect(),
                        None => Vec::new(),
                    };
                    self.resolve(i, retry, dirty);
                }
                Ok(listed) => {
                    self.take_listed(i, listed, done.version, retry, dirty);
                    news = true;
                }
                Err(error) => {
                    tracing::warn!(folder = %self.folders[i].key, "listing failed: {error}");
                    news = true;
                    *failed = true;
                    report.cloud_errors.push(FolderError {
                        folder: i,
                        during: Phase::Listing,
                        error,
                    });
                }
            }
        }
        (failed, news)
    }

    /// Starts in the background the listings of the folders in `relist`
    /// and of any whose listing is stale, unless one runs already; true
    /// when it started any.
    fn start_listings(&mut self, relist: &[bool]) -> bool {
        let mut started = false;
        for (i, f) in self.folders.iter().enumerate() {
            let stale = self
                .cloud
                .listing(i)
                .is_some_and(|l| l.version < self.agreed_versions[i]);
            if stale {
                tracing::error!(folder = %f.key, "bug: listing older than the agreement; listing again");
            }
            let never = self.cloud.listing(i).is_none();
            // A folder never listed is listed when asked, like any other:
            // one that cannot be (misnamed, waiting for a login) is the
            // caller's to schedule, not listed again by every cycle.
            let wanted = relist.get(i).copied().unwrap_or(true) || stale;
            if !wanted || self.background.listing(i) {
                continue;
            }
            self.versions += 1;
            // A poll of a folder whose picture is current only needs to
            // know whether it changed.
            let changes_only = !never && !stale;
            let (cloud, stop) = (f.cloud.clone(), self.stop.clone());
            self.background
                .start_listing(i, self.versions, changes_only, cloud, stop);
            started = true;
        }
        started
    }

    /// Starts a full listing of folder `i` in the background.
    fn list_again(&mut self, i: usize) {
        self.versions += 1;
        let (cloud, stop) = (self.folders[i].cloud.clone(), self.stop.clone());
        self.background
            .start_listing(i, self.versions, false, cloud, stop);
    }

    /// Takes in a changed listing of folder `i` started at `version`: the
    /// hashes whose copies changed go to `dirty`, the router forgets the
    /// copies gone, and new copies (and those whose download failed,
    /// `retry`) are looked up or downloaded. Changes with no listing to
    /// apply them to have the folder listed again in full.
    fn take_listed(
        &mut self,
        i: usize,
        listed: Listed,
        version: u64,
        retry: Vec<String>,
        dirty: &mut HashSet<ContentHash>,
    ) {
        let r = match listed {
            Listed::Full(entries) => self.cloud.relist(i, entries, version),
            Listed::Changes { upsert, gone } => {
                match self.cloud.apply_changes(i, upsert, gone, version) {
                    Some(mut r) => {
                        // Failed downloads the changes do not name are
                        // tried again too.
                        if let Some(l) = self.cloud.listing(i) {
                            let named: HashSet<&String> = r.unresolved.iter().collect();
                            let again: Vec<String> = retry
                                .into_iter()
                                .filter(|id| l.unresolved.contains(id) && !named.contains(id))
                                .collect();
                            r.unresolved.extend(again);
                        }
                        r
                    }
                    None => {
                        // Nothing to apply them to: list it all.
                        self.list_again(i);
                        return;
                    }
                }
            }
        };
        dirty.extend(r.dirty);
        let gone: Vec<(usize, String)> = r.gone.into_iter().map(|(id, _)| (i, id)).collect();
        self.router.forget(&gone);
        self.resolve(i, r.unresolved, dirty);
    }

    /// Find the content of listed messages `ids` of folder `i` through the
    /// id cache (adding their hashes to `dirty`), and download the ones it
    /// does not know in the background; those leave the folder incomplete
    /// until they are in.
    fn resolve(&mut self, i: usize, ids: Vec<String>, dirty: &mut HashSet<ContentHash>) {
        let kind = self.folders[i].cloud.storage_kind();
        let Some(listing) = self.cloud.listing(i) else {
            return;
        };
        let listed: Vec<(String, Option<String>)> = ids
            .into_iter()
            .filter_map(|id| {
                let email_id = listing
                    .entries
                    .get(id.as_str())?
                    .email_id
                    .as_deref()
                    .map(str::to_string);
                Some((id, email_id))
            })
            .collect();
        // A cached id whose content the store lost is downloaded again.
        let hashes = self.store.resolve_ids(
            kind,
            listed.iter().map(|(id, e)| (id.as_str(), e.as_deref())),
        );
        let mut missing = Vec::new();
        for ((id, email_id), hash) in listed.into_iter().zip(hashes) {
            match hash {
                Some(h) => {
                    self.cloud.resolve(i, &id, h);
                    dirty.insert(h);
                }
                None => {
                    if self.background.state_of(i, &id).is_none() && !self.stop.is_stopped() {
                        let cid = Cid {
                            kind,
                            storage_id: id.clone(),
                            email_id,
                        };
                        missing.push((id, cid));
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

    /// Take in the downloads finished since the last cycle: each message's
    /// content is known from now on. A failed one is tried again after the
    /// folder's next listing.
    fn take_downloads(
        &mut self,
        report: &mut CycleReport,
        dirty: &mut HashSet<ContentHash>,
    ) -> Result<(), SyncError> {
        let mut stored = Vec::new();
        let mut store_error = None;
        for f in self.background.take_finished() {
            match f {
                Finished::Stored { folder, id, hash } => {
                    report.downloads += 1;
                    stored.push(hash);
                    dirty.insert(hash);
                    // What the download taught the backend (Gmail's date
                    // and Message-ID) fills in the listing's entry.
                    let learned = self.folders[folder].cloud.fetched_entry(&id);
                    if let (Some(f), Some(listed)) = (learned, self.cloud.copy_mut(folder, &id)) {
                        listed.learn_received_time(f.received_time);
                        if listed.email_id.is_none() {
                            listed.email_id = f.email_id;
                        }
                        listed.set_route(None);
                    }
                    self.cloud.resolve(folder, &id, hash);
                }
                Finished::Failed { folder, id, error } => {
                    tracing::warn!(folder = %self.folders[folder].key, id = %id, "download failed: {error}");
                    report.cloud_errors.push(FolderError {
                        folder,
                        during: Phase::Download,
                        error,
                    });
                }
                Finished::StoreFailed { folder, id, error } => {
                    tracing::error!(folder = %self.folders[folder].key, id = %id, "cannot store a download: {error}");
                    store_error.get_or_insert(error);
                }
            }
        }
        // Referenced by the listings from now on.
        self.store.release(&stored);
        match store_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Starts scanning every maildir on a blocking thread (rescanning one
    /// that changed under us), hashing new files through the inode cache
    /// and re-linking content the store lost; [`Engine::finish_scan`] makes
    /// the result the local index.
    fn start_scan(&self) -> tokio::task::JoinHandle<Result<Scanned, SyncError>> {
        let maildirs = self.maildirs.clone();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || -> Result<_, SyncError> {
            // Every file is looked up: the inode table and the blob list in
            // memory until the cycle ends.
            store.warm_inodes();
            store.warm_blobs();
            let mut out = Vec::new();
            for md in &maildirs {
                let mut files = Vec::new();
                if !md.path().join("cur").is_dir() || !md.path().join("new").is_dir() {
                    out.push(MaildirFiles::default());
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
                    if let Some(hash) = hash_file(&store, &entry) {
                        files.push((entry, hash));
                    }
                }
                out.push(MaildirFiles::of_scan(files));
            }
            Ok(out)
        })
    }

    /// Takes in a full scan started by [`Engine::start_scan`].
    async fn finish_scan(
        &mut self,
        scan: tokio::task::JoinHandle<Result<Scanned, SyncError>>,
    ) -> Result<(), SyncError> {
        let scanned = scan.await.map_err(|e| SyncError::Task(e.to_string()))??;
        for (i, files) in scanned.into_iter().enumerate() {
            self.local.replace_maildir(i, files);
        }
        Ok(())
    }

    /// Look at the files the watcher named (or an action left behind):
    /// what each is now goes into the local index, and the hashes of what
    /// changed into `dirty`. A file whose name and version the index knows
    /// already (our own renames) changes nothing.
    async fn look_at(
        &mut self,
        paths: BTreeSet<PathBuf>,
        dirty: &mut HashSet<ContentHash>,
    ) -> Result<(), SyncError> {
        if paths.is_empty() {
            return Ok(());
        }
        let maildirs = self.maildirs.clone();
        let store = self.store.clone();
        let seen = tokio::task::spawn_blocking(move || look_at_files(&maildirs, &store, paths))
            .await
            .map_err(|e| SyncError::Task(e.to_string()))??;
        for (m, name, now) in seen {
            match now {
                Some((entry, hash)) => {
                    if self.local.get(m, &name).is_some_and(|f| f.hash == hash) {
                        continue;
                    }
                    dirty.insert(hash);
                    if let Some(old) = self.local.put(m, entry, hash) {
                        dirty.insert(old);
                    }
                }
                None => {
                    if let Some(old) = self.local.remove(m, &name) {
                        dirty.insert(old.hash);
                    }
                }
            }
        }
        Ok(())
    }

    /// Size of stored content, remembered per hash (one `stat` per message
    /// per run, not per cycle).
    fn content_size(&self, hash: &ContentHash) -> u64 {
        let mut sizes = crate::lock::lock(&self.sizes);
        if let Some(&n) = sizes.get(hash) {
            return n;
        }
        let n = std::fs::metadata(self.store.blob_path(hash)).map_or(0, |m| m.len());
        if n > 0 {
            sizes.insert(*hash, n);
        }
        n
    }

    /// Ask the config where the listed copies of `hashes` go, for the ones
    /// not routed yet (new, or changed since); `retry_failed` asks again
    /// for the ones whose filter failed.
    async fn route(
        &mut self,
        hashes: &BTreeSet<ContentHash>,
        retry_failed: bool,
        report: &mut CycleReport,
    ) {
        if !self.router.is_custom() {
            // Everything goes to the first maildir (see `route_of`): nothing
            // to ask or record.
            return;
        }
        let mut keys = Vec::new();
        let mut requests = Vec::new();
        for h in hashes {
            for (mailbox, id, listed) in self.cloud.copies_of(h) {
                let ask = match listed.route() {
                    None => true,
                    Some(Route::Failed) => retry_failed,
                    Some(Route::Maildir(_)) => false,
                };
                if !ask {
                    continue;
                }
                keys.push((mailbox, id.to_string()));
                requests.push(RouteRequest {
                    mailbox,
                    content_hash: *h,
                    storage_id: id.to_string(),
                    email_id: listed.email_id.as_deref().map(str::to_string),
                    flags: listed.flags,
                    received_time: listed.received_time(),
                    // The listings carry no size (Graph's and Gmail's count
                    // CRLF); the stored content's is what a filter expects.
                    size: self.content_size(h),
                    content_path: self.store.blob_path(h),
                });
            }
        }
        if requests.is_empty() {
            return;
        }
        let n_maildirs = self.maildirs.len();
        let answers = self.router.route(requests).await;
        for ((mailbox, id), r) in keys.into_iter().zip(answers) {
            let route = match r {
                Ok(i) if i < n_maildirs => Route::Maildir(i),
                _ => {
                    report.routing_failures += 1;
                    Route::Failed
                }
            };
            if let Some(listed) = self.cloud.copy_mut(mailbox, &id) {
                listed.set_route(Some(route));
            }
        }
    }

    /// The agreement entries of `hashes`: from memory while the whole
    /// agreement is there, else from the database.
    async fn agreement_of(
        &self,
        hashes: &BTreeSet<ContentHash>,
    ) -> Result<BTreeMap<ContentHash, LastEntry>, SyncError> {
        if let Some(all) = &self.all_agreed {
            return Ok(hashes
                .iter()
                .filter_map(|h| Some((*h, all.get(h)?.clone())))
                .collect());
        }
        if hashes.is_empty() {
            return Ok(BTreeMap::new());
        }
        let (state, store) = (self.state.clone(), self.store.clone());
        let hashes: Vec<ContentHash> = hashes.iter().copied().collect();
        tokio::task::spawn_blocking(move || state.agreement_of(&store, hashes.iter()))
            .await
            .map_err(|e| SyncError::Task(e.to_string()))?
            .map_err(SyncError::from)
    }

    /// The planner's input for `hashes`: their listed copies (of folders
    /// whose listing is current), files and agreement entries.
    fn input_for(
        &self,
        hashes: &BTreeSet<ContentHash>,
        last: BTreeMap<ContentHash, LastEntry>,
        complete: &[bool],
        present: &[bool],
        all: bool,
    ) -> PlanInput {
        let mut cloud = Vec::new();
        let mut local = Vec::new();
        let mut local_only = false;
        for h in hashes {
            let before = cloud.len();
            for (mailbox, id, listed) in self.cloud.copies_of(h) {
                if self.fresh(mailbox).is_none() {
                    continue;
                }
                cloud.push(CloudMsg {
                    mailbox,
                    id: id.to_string(),
                    hash: *h,
                    flags: listed.flags,
                    route: self.route_of(listed),
                });
            }
            let files = local.len();
            for (maildir, name, f) in self.local.files_of(h) {
                local.push(LocalFile {
                    maildir,
                    name: name.to_string(),
                    hash: *h,
                    flags: f.flags,
                });
            }
            local_only |= cloud.len() == before && local.len() > files && !last.contains_key(h);
        }
        // Only a file nothing else knows asks whether its content came from
        // the cloud.
        let known_cloud_content = if all || local_only {
            let mut known = self.store.known_cloud_hashes();
            if !all {
                known.retain(|h| hashes.contains(h));
            }
            known
        } else {
            BTreeSet::new()
        };
        PlanInput {
            mailboxes: self
                .folders
                .iter()
                .zip(complete)
                .zip(&self.offline)
                .map(|((f, &complete), &offline)| MailboxInfo {
                    supported: f.cloud.supported_flags(),
                    delete_action: f.delete_action,
                    complete,
                    mode: if offline {
                        Mode::OfflineFirstCycle
                    } else {
                        Mode::Online
                    },
                })
                .collect(),
            maildirs: present
                .iter()
                .map(|&present| MaildirInfo { present })
                .collect(),
            cloud,
            local,
            last: LastState {
                entries: last,
                maildir_counts: self.agreed_counts.clone(),
            },
            known_cloud_content,
        }
    }

    /// Apply the plan: cloud actions grouped per folder (except the `held`
    /// ones), local actions on a blocking thread. One outcome per action,
    /// in plan order, and whether each cloud action was sent. The local
    /// index follows what the local actions did.
    async fn execute(
        &mut self,
        plan: &Plan,
        held: &[bool],
        reasons: HashMap<usize, Reason>,
        report: &mut CycleReport,
    ) -> Result<(Vec<Outcome>, Vec<bool>), SyncError> {
        let mut outcomes = vec![Outcome::Failed; plan.actions.len()];
        let mut attempted = vec![false; plan.actions.len()];
        if self.stop.is_stopped() {
            return Ok((outcomes, attempted));
        }
        let batches = cloud_batches(plan, held, &mut attempted);
        self.run_cloud(batches, plan, &mut outcomes, report).await?;
        self.run_local(plan, reasons, &mut outcomes).await?;
        Ok((outcomes, attempted))
    }

    /// Sends the cloud `batches` of `plan`, one task per batch, recording
    /// each action's outcome and reporting the failures.
    async fn run_cloud(
        &self,
        batches: CloudBatches,
        plan: &Plan,
        outcomes: &mut [Outcome],
        report: &mut CycleReport,
    ) -> Result<(), SyncError> {
        let mut set = JoinSet::new();
        for (mailbox, group) in batches.flags {
            let cloud = self.folders[mailbox].cloud.clone();
            let (stop, key) = (self.stop.clone(), self.folders[mailbox].key.clone());
            set.spawn(async move {
                let (idx, changes): (Vec<usize>, Vec<FlagChange>) = group.into_iter().unzip();
                let n = changes.len();
                let r = stop.unless(cloud.set_flags(changes)).await;
                (idx, r.unwrap_or_else(|| vec![Err(stopping(&key)); n]))
            });
        }
        for ((mailbox, delete), group) in batches.deletes {
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
                    Err(error) => {
                        tracing::warn!("cloud action failed, will retry: {error}");
                        if let Some(folder) = plan.actions[ai].mailbox() {
                            report.cloud_errors.push(FolderError {
                                folder,
                                during: Phase::Action,
                                error,
                            });
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs the local actions of `plan` on a blocking thread, recording
    /// their outcomes; the local index follows what they did, and a file an
    /// action could not handle is looked at again next cycle.
    async fn run_local(
        &mut self,
        plan: &Plan,
        reasons: HashMap<usize, Reason>,
        outcomes: &mut [Outcome],
    ) -> Result<(), SyncError> {
        let (files, local) = self.local_work(plan, reasons);
        if local.is_empty() {
            return Ok(());
        }
        let maildirs = self.maildirs.clone();
        let store = self.store.clone();
        let stop = self.stop.clone();
        let (results, changes, recheck) = tokio::task::spawn_blocking(move || {
            apply_local(&store, &maildirs, files, local, &stop)
        })
        .await
        .map_err(|e| SyncError::Task(e.to_string()))??;
        for (ai, o) in results {
            outcomes[ai] = o;
        }
        for c in changes {
            match c {
                LocalChange::Put(m, entry, hash) => {
                    self.local.put(m, entry, hash);
                }
                LocalChange::Remove(m, name) => {
                    self.local.remove(m, &name);
                }
            }
        }
        // A file an action could not handle is looked at again.
        self.paths.extend(recheck);
        Ok(())
    }

    /// The local actions of `plan` with their index and reason, and the
    /// files they work on (those the local index knows).
    fn local_work(&self, plan: &Plan, reasons: HashMap<usize, Reason>) -> (Files, LocalActions) {
        let mut files = HashMap::new();
        let mut local = Vec::new();
        for (i, a) in plan.actions.iter().enumerate() {
            if a.is_cloud() {
                continue;
            }
            let source = match a {
                Action::SetLocalFlags { maildir, name, .. }
                | Action::RemoveLocal { maildir, name, .. } => Some((*maildir, name)),
                Action::MoveLocal {
                    from_maildir, name, ..
                } => Some((*from_maildir, name)),
                _ => None,
            };
            if let Some((m, name)) = source
                && self.local.get(m, name).is_some()
                // The actions work from the name; the inode key is not kept.
                && let Some(entry) =
                    Entry::named(self.maildirs[m].path(), name, crate::fsutil::InodeKey::default())
            {
                files.insert((m, name.clone()), entry);
            }
            let why = reasons.get(&i).cloned().unwrap_or(Reason::debug("planned"));
            local.push((i, a.clone(), why));
        }
        (files, local)
    }

    /// Record, in one transaction, the agreement rows of `hashes` that
    /// changed, the cursors that moved and the store's cache changes; drop
    /// content nothing references any more. When the commit fails the
    /// engine keeps the agreement the database holds and plans `hashes`
    /// again next cycle (an older agreement is safe to plan against).
    async fn persist(
        &mut self,
        hashes: &BTreeSet<ContentHash>,
        old_last: &BTreeMap<ContentHash, LastEntry>,
        mut new_last: LastState,
        scope: Scope,
    ) -> Result<(), SyncError> {
        let mut rows: Vec<Row> = Vec::new();
        for h in hashes {
            let new = new_last.entries.remove(h);
            if old_last.get(h) != new.as_ref() {
                rows.push((*h, new));
            }
        }
        let counts = new_last.maildir_counts;
        let changes: Vec<CursorChange> = self
            .folders
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.cloud.cursor_delta().map(|d| (i, d)))
            .filter(|(_, d)| !d.is_empty())
            .collect();
        let release = self.release_for(scope, hashes, old_last, &rows);
        let store = self.store.clone();
        let state = self.state.clone();
        let old_counts = self.agreed_counts.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let released = match &release {
                Release::Keep(live) => store.retain(live),
                Release::Drop(doomed) => store.drop_unreferenced(doomed),
            };
            let r = released.and_then(|_| {
                store.commit(|tx| state.write(tx, &rows, &old_counts, &counts, &changes))
            });
            (rows, changes, r.map(|_| counts))
        })
        .await;
        let (rows, result) = match joined {
            Ok((rows, changes, result)) => {
                if result.is_err() {
                    for (i, _) in &changes {
                        self.folders[*i].cloud.cursor_unsaved();
                    }
                }
                (rows, result)
            }
            Err(e) => {
                // The deltas handed out were not stored: every cursor is
                // written whole next time.
                for f in &self.folders {
                    f.cloud.cursor_unsaved();
                }
                self.pending.extend(hashes.iter().copied());
                return Err(SyncError::Task(e.to_string()));
            }
        };
        match result {
            Ok(counts) => {
                self.take_rows(rows);
                self.agreed_counts = counts;
                Ok(())
            }
            Err(e) => {
                self.pending.extend(hashes.iter().copied());
                Err(e.into())
            }
        }
    }

    /// What the commit lets go of in the store: after a full cycle
    /// everything but what the indexes and the new agreement hold, else the
    /// planned `hashes` nothing references once `rows` are written.
    fn release_for(
        &self,
        scope: Scope,
        hashes: &BTreeSet<ContentHash>,
        old_last: &BTreeMap<ContentHash, LastEntry>,
        rows: &[Row],
    ) -> Release {
        // Content nothing references any more: everything outside the
        // indexes and the new agreement after a full cycle, else the
        // planned hashes that lost their last reference.
        let written: HashMap<ContentHash, bool> =
            rows.iter().map(|(h, new)| (*h, new.is_some())).collect();
        let referenced = |h: &ContentHash| {
            self.cloud.holds(h)
                || self.local.holds(h)
                || written
                    .get(h)
                    .copied()
                    .unwrap_or_else(|| old_last.contains_key(h))
        };
        match scope {
            Scope::Full => Release::Keep(
                self.cloud
                    .hashes()
                    .chain(self.local.hashes())
                    .chain(self.all_agreed.iter().flat_map(|a| a.keys()))
                    .chain(rows.iter().filter(|r| r.1.is_some()).map(|r| &r.0))
                    .copied()
                    .collect(),
            ),
            Scope::Changes => {
                Release::Drop(hashes.iter().filter(|h| !referenced(h)).copied().collect())
            }
        }
    }

    /// Brings the whole agreement in memory, if it is there, up to the
    /// committed `rows`.
    fn take_rows(&mut self, rows: Vec<Row>) {
        if let Some(all) = &mut self.all_agreed {
            for (h, new) in rows {
                match new {
                    Some(e) => all.insert(h, e),
                    None => all.remove(&h),
                };
            }
        }
    }
}

/// Folder `i`'s listing in `cloud`, unless it is older than the
/// agreement (`agreed_versions`).
fn fresh_listing<'a>(
    cloud: &'a CloudIndex,
    agreed_versions: &[u64],
    i: usize,
) -> Option<&'a Listing> {
    cloud.listing(i).filter(|l| l.version >= agreed_versions[i])
}

/// Where `listed` goes: the router's answer; without a custom router
/// always the first maildir.
fn route_of(listed: &super::index::Listed, custom_router: bool) -> Route {
    match listed.route() {
        Some(r) => r,
        None if !custom_router => Route::Maildir(0),
        None => Route::Failed,
    }
}

/// What a full cycle needs to tell which hashes are settled (see
/// [`settled`]), shared by the threads that check them.
struct Settle<'a> {
    cloud: &'a CloudIndex,
    local: &'a LocalIndex,
    last: &'a BTreeMap<ContentHash, LastEntry>,
    agreed_versions: &'a [u64],
    custom_router: bool,
    maildirs: usize,
    supported: &'a [Flags],
}

impl Settle<'_> {
    /// The hashes of `all` that need a plan, checked on two threads (at
    /// start-up that is every message).
    fn unsettled(&self, all: BTreeSet<ContentHash>) -> BTreeSet<ContentHash> {
        let all: Vec<ContentHash> = all.into_iter().collect();
        let (a, b) = all.split_at(all.len() / 2);
        let keep = |part: &[ContentHash]| -> Vec<ContentHash> {
            part.iter()
                .filter(|h| !self.is_settled(h))
                .copied()
                .collect()
        };
        std::thread::scope(|s| {
            let first = s.spawn(|| keep(a));
            let second = keep(b);
            let first = first
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            first.into_iter().chain(second).collect()
        })
    }

    /// True when `hash` needs no plan: its files and fresh cloud copies
    /// are exactly as agreed, each copy routed and none with a deletion
    /// sent.
    fn is_settled(&self, hash: &ContentHash) -> bool {
        let Some(last) = self.last.get(hash) else {
            return false;
        };
        settled(
            last,
            self.supported,
            self.maildirs,
            self.local.files_of(hash).map(|(m, _, f)| (m, f.flags)),
            self.cloud.copies_of(hash).map(|(i, id, listed)| {
                // A stale listing or a deletion sent is no agreement.
                let open = fresh_listing(self.cloud, self.agreed_versions, i)
                    .is_some_and(|l| l.sent_deletions.is_empty() || !l.sent_deletions.contains(id));
                let route = if open {
                    route_of(listed, self.custom_router)
                } else {
                    Route::Failed
                };
                (i, id, listed.flags, route)
            }),
        )
    }
}

/// A full scan: per maildir, its files with their content.
type Scanned = Vec<MaildirFiles>;

/// Returns glibc's freed heap pages to the system (it keeps them
/// otherwise): the whole heap where the library runs on glibc's malloc
/// (tests), CPython's and SQLite's where the binary runs on jemalloc,
/// which purges its own pages from a background thread.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim and mallinfo2 only walk the allocator's own
        // free lists.
        let heap = unsafe {
            libc::malloc_trim(0);
            libc::mallinfo2()
        };
        tracing::debug!(
            in_use = heap.uordblks + heap.hblkhd,
            free = heap.fordblks,
            "C library heap after a full cycle"
        );
    }
}

/// An agreement row to write: a hash and its new entry (`None` deletes it).
type Row = (ContentHash, Option<LastEntry>);

/// What a commit lets go of in the store.
enum Release {
    /// Everything but these (after a full cycle).
    Keep(HashSet<ContentHash>),
    /// These, unless a download holds them.
    Drop(Vec<ContentHash>),
}

/// The maildir (index) and `cur/name` or `new/name` of a path in one of
/// `maildirs`.
fn place_in(maildirs: &[Maildir], path: &std::path::Path) -> Option<(usize, String)> {
    let dir = path.parent()?;
    let m = maildirs
        .iter()
        .position(|md| dir.parent() == Some(md.path()))?;
    let (sub, file) = (dir.file_name()?, path.file_name()?);
    Some((
        m,
        format!("{}/{}", sub.to_string_lossy(), file.to_string_lossy()),
    ))
}

/// The content of a maildir file through the inode cache (hashing it only
/// when the cache does not know this version), re-linking content the
/// store lost. `None` for a file that vanished or cannot be read: skipped
/// this cycle, never taken as a deletion of anything else.
fn hash_file(store: &Store, entry: &Entry) -> Option<ContentHash> {
    match store.hash_for_file(&entry.path, &entry.key) {
        Ok(h) => {
            if !store.have(&h) {
                let _ = store.adopt_from(&entry.path, &h);
            }
            Some(h)
        }
        Err(e) => {
            tracing::warn!("skipping {}: {e}", entry.path.display());
            None
        }
    }
}

/// A file looked at: its maildir, its `cur/` or `new/` name, and its entry
/// and content now (`None` when it is gone or cannot be read).
type Seen = (usize, String, Option<(Entry, ContentHash)>);

/// Looks at the files `paths` name in `maildirs` (blocking), and again at
/// the files sharing a base name with one found gone.
fn look_at_files(
    maildirs: &[Maildir],
    store: &Store,
    paths: BTreeSet<PathBuf>,
) -> Result<Vec<Seen>, SyncError> {
    let mut out = Vec::new();
    let mut looked: HashSet<PathBuf> = HashSet::new();
    let mut queue: Vec<PathBuf> = paths.into_iter().collect();
    while !queue.is_empty() {
        // Per maildir, the base names of files found gone.
        let mut gone: HashMap<usize, HashSet<String>> = HashMap::new();
        let mut present: HashSet<(usize, String)> = HashSet::new();
        for path in std::mem::take(&mut queue) {
            if !looked.insert(path.clone()) {
                continue;
            }
            let Some((m, name)) = place_in(maildirs, &path) else {
                continue;
            };
            let now = match maildirs[m].look(&path) {
                Ok(Some(entry)) => hash_file(store, &entry).map(|h| (entry, h)),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!("skipping {}: {e}", path.display());
                    continue;
                }
            };
            let file = name.split_once('/').map_or(name.as_str(), |(_, f)| f);
            let base = crate::maildir::base_name(file).to_string();
            if now.is_some() {
                present.insert((m, base));
            } else {
                gone.entry(m).or_default().insert(base);
            }
            out.push((m, name, now));
        }
        // Gone, or renamed again since the event: a message is taken as
        // removed only when no file of its base name is left (the next
        // event may not be in yet). A file of the same base among the named
        // ones settles it; otherwise one name-only read of the maildir does.
        for (m, bases) in gone {
            let wanted: HashSet<&str> = bases
                .iter()
                .filter(|b| !present.contains(&(m, (*b).clone())))
                .map(String::as_str)
                .collect();
            if wanted.is_empty() {
                continue;
            }
            for p in maildirs[m].names_with_bases(&wanted)? {
                if !looked.contains(&p) {
                    queue.push(p);
                }
            }
        }
    }
    Ok(out)
}

/// Apply a cycle's effects to a folder's listing; it gets `version`.
fn apply_effects(l: &mut Listing, effects: &[&CloudEffect], version: u64) {
    for e in effects {
        match e {
            CloudEffect::Flags { id, set, clear, .. } => {
                if let Some(listed) = l.entries.get_mut(id.as_str()) {
                    listed.flags = (listed.flags & !*clear) | *set;
                    // The filter sees the flags: ask it again.
                    listed.set_route(None);
                }
            }
            CloudEffect::DeletionSent { id, .. } => {
                l.sent_deletions.insert(id.clone());
            }
        }
    }
    l.version = version;
}

/// A plan's cloud actions to send, each with its action index: flag
/// changes per folder, deletions per folder and whether they delete (rather
/// than archive).
#[derive(Default)]
struct CloudBatches {
    flags: BTreeMap<usize, Vec<(usize, FlagChange)>>,
    deletes: BTreeMap<(usize, bool), Vec<(usize, String)>>,
}

/// Groups the cloud actions of `plan` not `held` into batches, marking them
/// in `attempted`.
fn cloud_batches(plan: &Plan, held: &[bool], attempted: &mut [bool]) -> CloudBatches {
    let mut batches = CloudBatches::default();
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
            } => batches.flags.entry(*mailbox).or_default().push((
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
            } => batches
                .deletes
                .entry((*mailbox, *action == DeleteAction::Delete))
                .or_default()
                .push((ai, id.clone())),
            _ => {}
        }
    }
    batches
}

/// Local files the actions work on, by maildir and name.
type Files = HashMap<(usize, String), Entry>;

/// Local actions to apply: plan index, action, why.
type LocalActions = Vec<(usize, Action, Reason)>;

/// What local actions did: (action index, outcome), the index changes, and
/// files to look at again (an action failed on them).
type Applied = (Vec<(usize, Outcome)>, Vec<LocalChange>, Vec<PathBuf>);

/// Apply local actions in order, on the files they name.
fn apply_local(
    store: &Store,
    maildirs: &[Maildir],
    files: Files,
    actions: LocalActions,
    stop: &Stop,
) -> Result<Applied, SyncError> {
    recreate_maildirs(maildirs, &actions)?;
    let mut run = LocalRun {
        store,
        maildirs,
        files,
        touched: HashSet::new(),
        changes: Vec::new(),
    };
    let mut recheck = Vec::new();
    let mut out = Vec::with_capacity(actions.len());
    for (ai, action, why) in actions {
        if stop.is_stopped() {
            // Not started: recorded as failed, so planned again next run.
            out.push((ai, Outcome::Failed));
            continue;
        }
        why.log(&maildirs[local_maildir(&action)], &action);
        let mut source = None;
        let Some(result) = run.apply(&action, &mut source) else {
            continue;
        };
        match result {
            Ok(()) => out.push((ai, Outcome::Done)),
            Err(e) => {
                tracing::warn!("local action failed, will retry: {e}");
                recheck.extend(source);
                out.push((ai, Outcome::Failed));
            }
        }
    }
    for i in run.touched {
        maildirs[i].sync()?;
    }
    Ok((out, run.changes, recheck))
}

/// A maildir that disappeared gets its directories back before anything is
/// restored into it (the planner restores, never deletes, for it).
fn recreate_maildirs(maildirs: &[Maildir], actions: &LocalActions) -> Result<(), SyncError> {
    for (_, a, _) in actions {
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
    Ok(())
}

/// Local actions under way: what they work with, and what they did so far.
struct LocalRun<'a> {
    store: &'a Store,
    maildirs: &'a [Maildir],
    /// The files not yet worked on.
    files: Files,
    /// Maildirs to sync to disk at the end.
    touched: HashSet<usize>,
    /// What the actions did, for the local index.
    changes: Vec<LocalChange>,
}

impl LocalRun<'_> {
    /// Applies one local action (`None` for a cloud action), setting
    /// `source` to the file it worked on.
    fn apply(
        &mut self,
        action: &Action,
        source: &mut Option<PathBuf>,
    ) -> Option<Result<(), String>> {
        let result = match action {
            Action::Deliver {
                hash,
                maildir,
                flags,
            } => self.deliver(*hash, *maildir, *flags),
            Action::SetLocalFlags {
                hash,
                maildir,
                name,
                flags,
            } => self.take(*maildir, name).and_then(|entry| {
                *source = Some(entry.path.clone());
                self.set_flags(*hash, (*maildir, name), &entry, *flags)
            }),
            Action::MoveLocal {
                hash,
                from_maildir,
                name,
                to_maildir,
                flags,
            } => self.take(*from_maildir, name).and_then(|entry| {
                self.touched.insert(*to_maildir);
                *source = Some(entry.path.clone());
                self.move_file(*hash, (*from_maildir, name), &entry, *to_maildir, *flags)
            }),
            Action::RemoveLocal { maildir, name, .. } => {
                self.take(*maildir, name).and_then(|entry| {
                    *source = Some(entry.path.clone());
                    self.remove_file((*maildir, name), &entry)
                })
            }
            Action::SetCloudFlags { .. } | Action::DeleteCloud { .. } => return None,
        };
        Some(result)
    }

    /// Takes file `name` of maildir `m` out of the files to work on (its
    /// maildir is touched), or says it is not there.
    fn take(&mut self, m: usize, name: &str) -> Result<Entry, String> {
        match self.files.remove(&(m, name.to_string())) {
            None => Err(format!("{name}: not in the scan")),
            Some(entry) => {
                self.touched.insert(m);
                Ok(entry)
            }
        }
    }

    /// Links the content `hash` from the store into `maildir` with `flags`.
    fn deliver(&mut self, hash: ContentHash, maildir: usize, flags: Flags) -> Result<(), String> {
        self.touched.insert(maildir);
        self.maildirs[maildir]
            .deliver_link(
                &self.store.blob_path(&hash),
                &Maildir::new_base_name(),
                flags,
            )
            .map(|e| {
                self.store.record_inode(e.key, hash);
                self.changes.push(LocalChange::Put(maildir, e, hash));
            })
            .map_err(|e| e.to_string())
    }

    /// Renames `entry`, file `name` of maildir `m`, to carry `flags`.
    fn set_flags(
        &mut self,
        hash: ContentHash,
        (m, name): (usize, &str),
        entry: &Entry,
        flags: Flags,
    ) -> Result<(), String> {
        self.maildirs[m]
            .set_flags(entry, flags)
            .map(|e| {
                self.store.record_inode(e.key, hash);
                self.changes.push(LocalChange::Remove(m, name.to_string()));
                self.changes.push(LocalChange::Put(m, e, hash));
            })
            .map_err(|e| e.to_string())
    }

    /// Moves `entry`, file `name` of maildir `from`, into maildir `to` with
    /// `flags`.
    fn move_file(
        &mut self,
        hash: ContentHash,
        (from, name): (usize, &str),
        entry: &Entry,
        to: usize,
        flags: Flags,
    ) -> Result<(), String> {
        // Link from the file itself: it holds the content even if the store
        // lost it. The old file goes only once the new one is in place.
        match self.maildirs[to].deliver_link(&entry.path, &entry.base, flags) {
            Ok(new) => {
                self.store.record_inode(new.key, hash);
                self.changes.push(LocalChange::Put(to, new, hash));
                self.remove_file((from, name), entry)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Removes `entry`, file `name` of maildir `m` (one already gone is as
    /// good).
    fn remove_file(&mut self, (m, name): (usize, &str), entry: &Entry) -> Result<(), String> {
        match self.maildirs[m].remove(entry) {
            Ok(()) | Err(MaildirError::Vanished { .. }) => {
                self.changes.push(LocalChange::Remove(m, name.to_string()));
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }
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
