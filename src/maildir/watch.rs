//! Change notification for maildirs: inotify (through `notify`) on `cur/`
//! and `new/`, debounced so a burst of renames wakes the daemon once per
//! maildir.
//!
//! The notify callback only records the paths an event names (or that a
//! maildir needs a rescan) and pokes a bounded wake channel with
//! `try_send`; a small debounce thread (not a tokio worker) waits for the
//! burst to end and hands one [`WatchEvent`] per changed maildir, naming its
//! changed files, to the async side with `blocking_send`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::event::ModifyKind;
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::MaildirError;
use crate::lock::lock;

/// Something changed in a maildir's `cur/` or `new/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// The maildir's root, as passed to [`watch`].
    pub maildir: PathBuf,
    /// Files of `cur/` and `new/` created, renamed (both names) or removed
    /// during the burst, in path order. The watcher is a hint: each named
    /// file must be looked at to see what it is now.
    pub paths: Vec<PathBuf>,
    /// Events were lost (queue overflow, a watcher error, more files than
    /// are kept, an event on `cur/` or `new/` itself): the maildir must be
    /// scanned whole; `paths` is then empty.
    pub rescan: bool,
}

/// Most files named per maildir and burst; a larger burst asks for a rescan.
const MAX_PATHS: usize = 10_000;

/// What one maildir's burst so far has named.
#[derive(Default)]
struct Changes {
    paths: BTreeSet<PathBuf>,
    rescan: bool,
}

impl Changes {
    fn any(&self) -> bool {
        self.rescan || !self.paths.is_empty()
    }

    fn add(&mut self, path: &Path) {
        if self.rescan {
            return;
        }
        self.paths.insert(path.to_path_buf());
        if self.paths.len() > MAX_PATHS {
            self.set_rescan();
        }
    }

    fn set_rescan(&mut self) {
        self.rescan = true;
        self.paths.clear();
    }
}

type Pending = Mutex<Vec<Changes>>;

/// Keeps the watch alive; dropping it stops the notifications, after which
/// the receiver sees the channel close.
pub struct WatchGuard {
    _watcher: RecommendedWatcher,
}

impl std::fmt::Debug for WatchGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WatchGuard")
    }
}

/// A burst of events longer than this many debounce periods is reported
/// anyway, so steady activity cannot starve the daemon of wake-ups.
const MAX_DEBOUNCE_PERIODS: u32 = 10;

/// Watches `cur/` and `new/` of each maildir root in `dirs` (not
/// recursively) and sends one [`WatchEvent`] per changed maildir once no
/// further event arrived for `debounce`. Events on dot files and mere
/// accesses or metadata changes are ignored. Needs no tokio runtime.
pub fn watch(
    dirs: Vec<PathBuf>,
    debounce: Duration,
) -> Result<(WatchGuard, mpsc::Receiver<WatchEvent>), MaildirError> {
    let dirty: Arc<Pending> = Arc::new(Mutex::new(
        dirs.iter().map(|_| Changes::default()).collect(),
    ));
    let (wake_tx, wake_rx) = sync_channel::<()>(1);
    let (out_tx, out_rx) = mpsc::channel(dirs.len().max(1) * 2);

    let roots = dirs.clone();
    let thread_dirty = Arc::clone(&dirty);
    std::thread::Builder::new()
        .name("maildir-watch".into())
        .spawn(move || debounce_loop(&wake_rx, &thread_dirty, &roots, &out_tx, debounce))
        .map_err(|source| MaildirError::WatchThread {
            path: dirs.first().cloned().unwrap_or_default(),
            source,
        })?;

    let roots = dirs.clone();
    let handler = move |res: notify::Result<Event>| on_event(res, &roots, &dirty, &wake_tx);
    let first = dirs.first().cloned().unwrap_or_default();
    let mut watcher =
        notify::recommended_watcher(handler).map_err(|source| MaildirError::Watch {
            path: first,
            source,
        })?;
    for root in &dirs {
        for sub in ["cur", "new"] {
            let path = root.join(sub);
            watcher
                .watch(&path, RecursiveMode::NonRecursive)
                .map_err(|source| MaildirError::Watch {
                    path: path.clone(),
                    source,
                })?;
        }
    }
    Ok((WatchGuard { _watcher: watcher }, out_rx))
}

/// The notify callback: marks the maildirs an event touches and wakes the
/// debounce thread. Never blocks.
fn on_event(res: notify::Result<Event>, roots: &[PathBuf], dirty: &Pending, wake: &SyncSender<()>) {
    let mut any = false;
    match res {
        Ok(event) if event.need_rescan() || event.paths.is_empty() => {
            // Lost events (queue overflow) or no path: assume everything changed.
            mark_all(dirty);
            any = true;
        }
        Ok(event) => {
            if !relevant(&event.kind) {
                return;
            }
            let mut pending = lock(dirty);
            for path in &event.paths {
                match place_of(path, roots) {
                    Some(Place::File(i)) => pending[i].add(path),
                    // The directory itself (removed, replaced): look again.
                    Some(Place::Subdir(i)) => pending[i].set_rescan(),
                    None => continue,
                }
                any = true;
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "maildir watcher error; rescanning all maildirs");
            mark_all(dirty);
            any = true;
        }
    }
    if any {
        // Full means a wake-up is already pending, which is enough.
        if let Err(TrySendError::Disconnected(())) = wake.try_send(()) {
            tracing::debug!("maildir debounce thread is gone");
        }
    }
}

/// Asks for a rescan of every maildir.
fn mark_all(dirty: &Pending) {
    for c in lock(dirty).iter_mut() {
        c.set_rescan();
    }
}

/// True for event kinds that can change a maildir's listing or flags.
fn relevant(kind: &EventKind) -> bool {
    !matches!(
        kind,
        EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_))
    )
}

/// Where an event's path is, by maildir index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Place {
    /// A (non-dot) file of the maildir's `cur/` or `new/`.
    File(usize),
    /// The maildir's `cur/` or `new/` itself.
    Subdir(usize),
}

/// Where `path` is: a file in, or one of, the `cur/` and `new/` of a root;
/// `None` for dot files and anything else.
pub(super) fn place_of(path: &Path, roots: &[PathBuf]) -> Option<Place> {
    let name = path.file_name()?.to_string_lossy();
    let is_subdir = |p: &Path, root: &Path| p == root.join("cur") || p == root.join("new");
    if let Some(i) = roots.iter().position(|r| is_subdir(path, r)) {
        return Some(Place::Subdir(i));
    }
    if name.starts_with('.') {
        return None;
    }
    let parent = path.parent()?;
    roots
        .iter()
        .position(|r| is_subdir(parent, r))
        .map(Place::File)
}

/// The debounce thread: after a wake-up, waits until `debounce` passes with
/// no further wake-up (at most [`MAX_DEBOUNCE_PERIODS`] periods), then
/// reports each changed maildir once. Ends when the watcher or the receiver
/// goes away.
fn debounce_loop(
    wake: &Receiver<()>,
    dirty: &Pending,
    roots: &[PathBuf],
    out: &mpsc::Sender<WatchEvent>,
    debounce: Duration,
) {
    while wake.recv().is_ok() {
        let deadline = Instant::now() + debounce * MAX_DEBOUNCE_PERIODS;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match wake.recv_timeout(debounce.min(left)) {
                Ok(()) => continue,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        let taken: Vec<Changes> = lock(dirty).iter_mut().map(std::mem::take).collect();
        for (changes, root) in taken.into_iter().zip(roots) {
            if !changes.any() {
                continue;
            }
            let event = WatchEvent {
                maildir: root.clone(),
                paths: changes.paths.into_iter().collect(),
                rescan: changes.rescan,
            };
            if out.blocking_send(event).is_err() {
                return;
            }
        }
    }
}
