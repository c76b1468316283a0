//! The engine's background work, one pipeline per cloud folder: listings
//! and downloads run as tasks that outlive the cycle that started them, so
//! a folder waiting for its request window, a long `Retry-After` or a slow
//! listing never holds up another folder's cycle. Each finished download
//! is committed to the store at once (a crash re-downloads only what was in
//! flight); cycles pick up what finished, in batches ([`Background::ready`]).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;

use super::engine::{Stop, SyncError};
use crate::cloud::{CloudError, CloudMailbox, ErrorKind, Listed};
use crate::lock::lock;
use crate::store::Store;
use crate::types::{Cid, ContentHash};

/// Downloads in flight at once per folder (each backend throttles its
/// mailbox further: Graph allows 4 concurrent requests).
const DOWNLOAD_CONCURRENCY: usize = 8;

/// A batch is ready for a cycle at this many finished downloads...
const BATCH_MESSAGES: usize = 100;

/// ...or this long after the first of them finished.
const BATCH_WAIT: Duration = Duration::from_secs(1);

/// A cycle waits this long for the listings it started; one still running
/// then is picked up by a later cycle.
pub(super) const LIST_GRACE: Duration = Duration::from_secs(2);

/// Batches are spaced by at least this many times the last cycle's
/// duration, so cycles (whose cost grows with the mailbox) take a bounded
/// share of the time while a large mailbox downloads.
const SPACING_FACTOR: u32 = 4;

/// A download that finished.
pub(super) enum Finished {
    /// Stored and committed.
    Stored {
        /// Folder index.
        folder: usize,
        /// Message id.
        id: String,
        /// Its content.
        hash: ContentHash,
    },
    /// The cloud call failed; not tried again until the folder is listed.
    Failed {
        /// Folder index.
        folder: usize,
        /// Message id.
        id: String,
        /// Why.
        error: CloudError,
    },
    /// The store failed (full disk, ...): the cycle reports it.
    StoreFailed {
        /// Folder index.
        folder: usize,
        /// Message id.
        id: String,
        /// Why.
        error: SyncError,
    },
}

impl Finished {
    /// The folder it belongs to.
    fn folder(&self) -> usize {
        match self {
            Finished::Stored { folder, .. }
            | Finished::Failed { folder, .. }
            | Finished::StoreFailed { folder, .. } => *folder,
        }
    }
}

/// A listing that finished, with the version it was started at.
pub(super) struct ListDone {
    /// The version assigned when the call started: the listing shows the
    /// cloud as it was at that point or later.
    pub version: u64,
    /// What the call returned: the folder, or with `changes_only` maybe
    /// what changed since the previous listing.
    pub result: Result<Listed, CloudError>,
}

/// Per-folder pipeline state.
#[derive(Default)]
struct Pipe {
    /// Waiting to be downloaded.
    queue: VecDeque<(String, Cid)>,
    /// Ids queued or being downloaded.
    wanted: HashSet<String>,
    /// Ids whose download failed since the folder was last listed.
    failed: HashSet<String>,
    /// Download workers running.
    workers: usize,
    /// A listing call is running.
    listing: bool,
    /// A finished listing not yet collected.
    listed: Option<ListDone>,
}

#[derive(Default)]
struct Shared {
    pipes: Vec<Pipe>,
    /// Downloads finished since the last collection.
    finished: Vec<Finished>,
    /// When the oldest of them finished.
    first_finished: Option<Instant>,
}

/// The background tasks of one engine (aborted when it is dropped), each
/// also held by `tracker` until it ends, so a daemon can wait for them.
pub(super) struct Background {
    shared: Arc<Mutex<Shared>>,
    notify: Arc<Notify>,
    tasks: JoinSet<()>,
    tracker: TaskTracker,
    /// When the last cycle ended and how long it worked (batch spacing).
    last_cycle: Option<(Instant, Duration)>,
    /// Time the running cycle spent waiting for listings.
    waited: Duration,
}

/// Decrements a folder's worker count however the worker ends.
struct WorkerSlot {
    shared: Arc<Mutex<Shared>>,
    folder: usize,
}

impl Drop for WorkerSlot {
    fn drop(&mut self) {
        let mut s = lock(&self.shared);
        let pipe = &mut s.pipes[self.folder];
        pipe.workers = pipe.workers.saturating_sub(1);
    }
}

impl Background {
    /// Background state for `folders` folders.
    pub(super) fn new(folders: usize) -> Background {
        let shared = Shared {
            pipes: (0..folders).map(|_| Pipe::default()).collect(),
            ..Shared::default()
        };
        Background {
            shared: Arc::new(Mutex::new(shared)),
            notify: Arc::new(Notify::new()),
            tasks: JoinSet::new(),
            tracker: TaskTracker::new(),
            last_cycle: None,
            waited: Duration::ZERO,
        }
    }

    /// Tracks the tasks started from now on with `tracker` (the daemon's).
    pub(super) fn track_with(&mut self, tracker: TaskTracker) {
        self.tracker = tracker;
    }

    /// True while a listing or download runs or waits to be collected.
    pub(super) fn busy(&self) -> bool {
        let s = lock(&self.shared);
        !s.finished.is_empty()
            || s.pipes
                .iter()
                .any(|p| p.listing || p.listed.is_some() || p.workers > 0 || !p.queue.is_empty())
    }

    /// True while folder `i` has a listing running or uncollected.
    pub(super) fn listing(&self, i: usize) -> bool {
        let s = lock(&self.shared);
        s.pipes[i].listing || s.pipes[i].listed.is_some()
    }

    /// Starts a listing of folder `i` at `version` unless one is running;
    /// with `changes_only` an unchanged folder answers `None`.
    pub(super) fn start_listing(
        &mut self,
        i: usize,
        version: u64,
        changes_only: bool,
        cloud: Arc<dyn CloudMailbox>,
        stop: Stop,
    ) {
        {
            let mut s = lock(&self.shared);
            if s.pipes[i].listing {
                return;
            }
            s.pipes[i].listing = true;
        }
        let (shared, notify) = (self.shared.clone(), self.notify.clone());
        // Every poll starts listings: without reaping, an idle daemon's set
        // would grow by one finished task per folder per poll.
        self.reap();
        self.tasks.spawn(self.tracker.track_future(async move {
            let call = async {
                if changes_only {
                    cloud.list_changes().await
                } else {
                    cloud.list().await.map(Listed::Full)
                }
            };
            let result = stop
                .unless(call)
                .await
                .unwrap_or_else(|| Err(stopping(cloud.name())));
            let mut s = lock(&shared);
            s.pipes[i].listing = false;
            s.pipes[i].listed = Some(ListDone { version, result });
            drop(s);
            notify.notify_waiters();
        }));
    }

    /// Waits until no listing is running or `grace` has passed (or a
    /// stop). The time waited does not count as the cycle's own duration.
    pub(super) async fn await_listings(&mut self, grace: Duration, stop: &Stop) {
        let start = tokio::time::Instant::now();
        self.wait_until_listed(start + grace, stop).await;
        self.waited += start.elapsed();
    }

    async fn wait_until_listed(&self, deadline: tokio::time::Instant, stop: &Stop) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !lock(&self.shared).pipes.iter().any(|p| p.listing) || stop.is_stopped() {
                return;
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => return,
                () = stop.stopped() => return,
            }
        }
    }

    /// The finished listing of folder `i`, if any. A successful one also
    /// forgets the folder's failed downloads, returned with it: they may
    /// be tried again.
    pub(super) fn take_listing(&self, i: usize) -> Option<(ListDone, Vec<String>)> {
        let mut s = lock(&self.shared);
        let done = s.pipes[i].listed.take()?;
        let failed = if done.result.is_ok() {
            std::mem::take(&mut s.pipes[i].failed).into_iter().collect()
        } else {
            Vec::new()
        };
        Some((done, failed))
    }

    /// The downloads finished since the last call.
    pub(super) fn take_finished(&self) -> Vec<Finished> {
        let mut s = lock(&self.shared);
        s.first_finished = None;
        std::mem::take(&mut s.finished)
    }

    /// Whether message `id` of folder `i` is being fetched (`Some(true)`),
    /// failed since the last listing (`Some(false)`), or neither.
    pub(super) fn state_of(&self, i: usize, id: &str) -> Option<bool> {
        let s = lock(&self.shared);
        let p = &s.pipes[i];
        if p.wanted.contains(id) {
            Some(true)
        } else if p.failed.contains(id) {
            Some(false)
        } else {
            None
        }
    }

    /// Queues downloads for folder `i` and starts workers for them.
    pub(super) fn download(
        &mut self,
        i: usize,
        missing: Vec<(String, Cid)>,
        cloud: &Arc<dyn CloudMailbox>,
        store: &Arc<Store>,
        stop: &Stop,
    ) {
        let start = {
            let mut s = lock(&self.shared);
            let pipe = &mut s.pipes[i];
            for (id, cid) in missing {
                if pipe.wanted.insert(id.clone()) {
                    pipe.queue.push_back((id, cid));
                }
            }
            let n = DOWNLOAD_CONCURRENCY
                .saturating_sub(pipe.workers)
                .min(pipe.queue.len());
            pipe.workers += n;
            n
        };
        for _ in 0..start {
            let slot = WorkerSlot {
                shared: self.shared.clone(),
                folder: i,
            };
            let (cloud, store, stop) = (cloud.clone(), store.clone(), stop.clone());
            let notify = self.notify.clone();
            let work = worker(slot, cloud, store, stop, notify);
            self.tasks.spawn(self.tracker.track_future(work));
        }
        self.reap();
    }

    /// Drops the finished tasks (their results were handed over through
    /// `shared`), so the set does not grow.
    fn reap(&mut self) {
        while self.tasks.try_join_next().is_some() {}
    }

    /// Tasks started and not yet reaped (for tests).
    #[cfg(test)]
    pub(super) fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// Records when a cycle ended and how long it took, less the time it
    /// waited for listings (spacing bounds the cycles' own work).
    pub(super) fn cycle_done(&mut self, took: Duration) {
        let worked = took.saturating_sub(std::mem::take(&mut self.waited));
        self.last_cycle = Some((Instant::now(), worked));
    }

    /// A future that resolves when a cycle has background results to take
    /// in: a listing finished, [`BATCH_MESSAGES`] downloads finished, or
    /// some finished [`BATCH_WAIT`] ago or with nothing left in flight. It
    /// then waits out the spacing after the last cycle. Never resolves
    /// when there is nothing in the background. Owns what it needs.
    pub(super) fn ready(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (shared, notify) = (self.shared.clone(), self.notify.clone());
        let not_before = self
            .last_cycle
            .map(|(end, took)| end + took * SPACING_FACTOR);
        async move {
            loop {
                let notified = notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let deadline = {
                    let s = lock(&shared);
                    // A folder whose downloads are all done need not wait
                    // for the others' batches.
                    let folder_done = s.finished.iter().any(|f| {
                        let p = &s.pipes[f.folder()];
                        p.workers == 0 && p.queue.is_empty()
                    });
                    if s.pipes.iter().any(|p| p.listed.is_some())
                        || s.finished.len() >= BATCH_MESSAGES
                        || folder_done
                    {
                        None
                    } else {
                        match s.first_finished {
                            Some(t) if t + BATCH_WAIT <= Instant::now() => None,
                            Some(t) => Some(t + BATCH_WAIT),
                            None => Some(Instant::now() + Duration::from_secs(3600)),
                        }
                    }
                };
                match deadline {
                    None => break,
                    Some(d) => {
                        tokio::select! {
                            () = notified => {}
                            () = tokio::time::sleep_until(d.into()) => {}
                        }
                    }
                }
            }
            if let Some(t) = not_before {
                tokio::time::sleep_until(t.into()).await;
            }
        }
    }
}

/// One download worker: fetches queued messages of one folder until its
/// queue is empty or a stop is asked for.
async fn worker(
    slot: WorkerSlot,
    cloud: Arc<dyn CloudMailbox>,
    store: Arc<Store>,
    stop: Stop,
    notify: Arc<Notify>,
) {
    let folder = slot.folder;
    loop {
        if stop.is_stopped() {
            break;
        }
        let Some((id, cid)) = lock(&slot.shared).pipes[folder].queue.pop_front() else {
            break;
        };
        let result = stop.unless(fetch(&store, cloud.as_ref(), &id, cid)).await;
        let mut s = lock(&slot.shared);
        s.pipes[folder].wanted.remove(&id);
        let Some(result) = result else {
            // Stopped mid-transfer: nothing was stored.
            break;
        };
        let done = match result {
            Ok(hash) => Finished::Stored { folder, id, hash },
            Err(Fail::Cloud(error)) => {
                s.pipes[folder].failed.insert(id.clone());
                Finished::Failed { folder, id, error }
            }
            Err(Fail::Store(error)) => {
                s.pipes[folder].failed.insert(id.clone());
                Finished::StoreFailed { folder, id, error }
            }
        };
        s.finished.push(done);
        s.first_finished.get_or_insert_with(Instant::now);
        drop(s);
        notify.notify_waiters();
    }
    if stop.is_stopped() {
        // What is still queued is planned again by the next run.
        let mut s = lock(&slot.shared);
        let pipe = &mut s.pipes[folder];
        for (id, _) in pipe.queue.drain(..) {
            pipe.wanted.remove(&id);
        }
    }
    drop(slot);
    notify.notify_waiters();
}

/// Why a download failed.
enum Fail {
    Cloud(CloudError),
    Store(SyncError),
}

/// Streams one message into a store temp file and commits it with its id;
/// nothing reaches the store unless the backend reported a complete
/// transfer.
async fn fetch(
    store: &Arc<Store>,
    cloud: &dyn CloudMailbox,
    id: &str,
    cid: Cid,
) -> Result<ContentHash, Fail> {
    let mut tmp = store.temp_file().map_err(|e| Fail::Store(e.into()))?;
    cloud.fetch(id, &mut tmp).await.map_err(Fail::Cloud)?;
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.adopt_download(tmp, cid))
        .await
        .map_err(|e| Fail::Store(SyncError::Task(e.to_string())))?
        .map_err(|e| Fail::Store(e.into()))
}

/// The error a cloud call interrupted by a stop reports.
pub(super) fn stopping(folder: &str) -> CloudError {
    CloudError::new(folder, ErrorKind::Retry, "stopping")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::memory::MemoryMailbox;
    use crate::types::Flags;

    /// An idle daemon lists every folder every poll: the finished listing
    /// tasks are reaped, not kept for the life of the run.
    #[tokio::test]
    async fn finished_listings_are_reaped() {
        let mut bg = Background::new(1);
        let cloud: Arc<dyn CloudMailbox> = Arc::new(MemoryMailbox::new("m", Flags::READ));
        for v in 0..50 {
            bg.start_listing(0, v, true, cloud.clone(), Stop::default());
            while bg.take_listing(0).is_none() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        assert!(bg.task_count() <= 1, "{} tasks kept", bg.task_count());
    }

    /// Background tasks are held by the tracker until they end, and a
    /// dropped engine's tasks end (aborted) as before.
    #[tokio::test]
    async fn tasks_are_tracked_until_they_end() {
        let tracker = TaskTracker::new();
        let mut bg = Background::new(1);
        bg.track_with(tracker.clone());
        let cloud: Arc<dyn CloudMailbox> = Arc::new(MemoryMailbox::new("m", Flags::READ));
        let stop = Stop::default();
        // A stopped listing ends at once.
        stop.stop();
        bg.start_listing(0, 1, true, cloud.clone(), stop);
        tracker.close();
        tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .expect("the listing ended");
        assert!(bg.take_listing(0).is_some());
        // One that never ends is aborted with the background.
        let tracker = TaskTracker::new();
        bg.track_with(tracker.clone());
        bg.tasks
            .spawn(bg.tracker.track_future(std::future::pending::<()>()));
        assert_eq!(tracker.len(), 1);
        drop(bg);
        tracker.close();
        tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .expect("aborted with the background");
    }
}
