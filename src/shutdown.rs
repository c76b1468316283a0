//! The daemon's shutdown tree: one root [`CancellationToken`] (the binary
//! cancels it on SIGTERM or SIGINT), child tokens for its parts (the sync
//! engine, the credential servers), and a [`TaskTracker`] holding every
//! long-lived task, closed and awaited (for at most [`GRACE`]) when the run
//! ends.
//!
//! Callers that signal with a `watch<bool>` (the tests, embedding code) hand
//! that in instead: [`StopSignal`] turns it into the root token without a
//! task of its own.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
pub use tokio_util::sync::CancellationToken;
pub use tokio_util::task::TaskTracker;

/// How long a run that ends waits for its tracked tasks (a stop makes them
/// give up at once; a task still running after this is left behind, as it
/// was aborted before).
pub const GRACE: Duration = Duration::from_secs(5);

/// What stops a run: a cancellation token, or a `watch<bool>` that turns
/// true. A watch whose sender is dropped without sending true never stops
/// the run (as in `--once` before; callers may drop it at once).
pub struct StopSignal {
    token: CancellationToken,
    watch: Option<watch::Receiver<bool>>,
}

impl From<CancellationToken> for StopSignal {
    fn from(token: CancellationToken) -> StopSignal {
        StopSignal { token, watch: None }
    }
}

impl From<watch::Receiver<bool>> for StopSignal {
    fn from(rx: watch::Receiver<bool>) -> StopSignal {
        StopSignal {
            token: CancellationToken::new(),
            watch: Some(rx),
        }
    }
}

impl StopSignal {
    /// Runs `body` with the root token. With a watch, the token is cancelled
    /// when the watch turns true; that wait is polled here, beside `body`,
    /// not in a task of its own.
    pub async fn drive<F, B>(self, body: B) -> F::Output
    where
        F: Future,
        B: FnOnce(CancellationToken) -> F,
    {
        let fut = body(self.token.clone());
        let Some(mut rx) = self.watch else {
            return fut.await;
        };
        tokio::pin!(fut);
        tokio::select! {
            out = &mut fut => return out,
            // Err: the sender is gone without asking for a stop.
            seen = rx.wait_for(|stop| *stop) => if seen.is_ok() {
                self.token.cancel();
            },
        }
        fut.await
    }
}

/// Closes `tracker` and waits for its tasks, at most [`GRACE`]; false when
/// some were still running then (logged, with `what` naming them).
pub async fn wait_tracked(tracker: &TaskTracker, what: &str) -> bool {
    tracker.close();
    if tokio::time::timeout(GRACE, tracker.wait()).await.is_ok() {
        return true;
    }
    tracing::warn!(
        "{} {what} task(s) still running {GRACE:?} after the stop; leaving them",
        tracker.len()
    );
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watch_turning_true_cancels_the_token() {
        let (tx, rx) = watch::channel(false);
        let run = StopSignal::from(rx).drive(|token| async move {
            token.cancelled().await;
            7
        });
        let stopper = async {
            tokio::task::yield_now().await;
            tx.send(false).unwrap();
            tokio::task::yield_now().await;
            tx.send(true).unwrap();
        };
        let (out, ()) = tokio::join!(run, stopper);
        assert_eq!(out, 7);
    }

    #[tokio::test]
    async fn a_dropped_watch_sender_does_not_stop() {
        let (tx, rx) = watch::channel(false);
        drop(tx);
        let cancelled = StopSignal::from(rx)
            .drive(|token| async move {
                tokio::task::yield_now().await;
                token.is_cancelled()
            })
            .await;
        assert!(!cancelled);
    }

    #[tokio::test]
    async fn a_body_that_ends_first_is_not_cancelled() {
        let (_tx, rx) = watch::channel(false);
        let token = StopSignal::from(rx)
            .drive(|token| async move { token })
            .await;
        assert!(!token.is_cancelled());
        let root = CancellationToken::new();
        let child = StopSignal::from(root.clone())
            .drive(|token| async move { token.child_token() })
            .await;
        root.cancel();
        assert!(child.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_tracked_tasks_is_bounded() {
        let tracker = TaskTracker::new();
        let token = CancellationToken::new();
        let t = token.clone();
        tracker.spawn(async move { t.cancelled().await });
        token.cancel();
        assert!(wait_tracked(&tracker, "test").await);
        let stuck = TaskTracker::new();
        stuck.spawn(std::future::pending::<()>());
        assert!(!wait_tracked(&stuck, "test").await);
    }
}
