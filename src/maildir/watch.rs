//! Change notification for maildirs: inotify (through `notify`) on `cur/`
//! and `new/`, debounced so a burst of renames wakes the daemon once per
//! maildir.
//!
//! The notify callback only marks a maildir dirty and pokes a bounded wake
//! channel with `try_send`; a small debounce thread (not a tokio worker)
//! waits for the burst to end and hands one [`WatchEvent`] per dirty
//! maildir to the async side with `blocking_send`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use notify::event::ModifyKind;
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::MaildirError;

/// Something changed in a maildir's `cur/` or `new/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// The maildir's root, as passed to [`watch`].
    pub maildir: PathBuf,
}

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
    let dirty: Arc<Vec<AtomicBool>> =
        Arc::new(dirs.iter().map(|_| AtomicBool::new(false)).collect());
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
fn on_event(
    res: notify::Result<Event>,
    roots: &[PathBuf],
    dirty: &[AtomicBool],
    wake: &SyncSender<()>,
) {
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
            for path in &event.paths {
                if let Some(i) = maildir_of(path, roots) {
                    dirty[i].store(true, Ordering::Release);
                    any = true;
                }
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

/// Marks every maildir dirty.
fn mark_all(dirty: &[AtomicBool]) {
    for d in dirty {
        d.store(true, Ordering::Release);
    }
}

/// True for event kinds that can change a maildir's listing or flags.
fn relevant(kind: &EventKind) -> bool {
    !matches!(
        kind,
        EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_))
    )
}

/// The index of the maildir whose `cur/` or `new/` holds (or is) `path`,
/// unless the file is a dot file.
pub(super) fn maildir_of(path: &Path, roots: &[PathBuf]) -> Option<usize> {
    let name = path.file_name()?.to_string_lossy();
    let is_subdir = |p: &Path, root: &Path| p == root.join("cur") || p == root.join("new");
    if let Some(i) = roots.iter().position(|r| is_subdir(path, r)) {
        return Some(i);
    }
    if name.starts_with('.') {
        return None;
    }
    let parent = path.parent()?;
    roots.iter().position(|r| is_subdir(parent, r))
}

/// The debounce thread: after a wake-up, waits until `debounce` passes with
/// no further wake-up (at most [`MAX_DEBOUNCE_PERIODS`] periods), then
/// reports each dirty maildir once. Ends when the watcher or the receiver
/// goes away.
fn debounce_loop(
    wake: &Receiver<()>,
    dirty: &[AtomicBool],
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
        for (flag, root) in dirty.iter().zip(roots) {
            if flag.swap(false, Ordering::AcqRel)
                && out
                    .blocking_send(WatchEvent {
                        maildir: root.clone(),
                    })
                    .is_err()
            {
                return;
            }
        }
    }
}
