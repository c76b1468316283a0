//! The daemon loop's time: when it is, and sleeping until a folder is due.
//! Injected, so a test can run hours of polling and backoff in no time and
//! count exactly what each folder did.

use std::time::Instant;

use futures_util::future::BoxFuture;

/// A monotonic clock and its timer.
pub trait Clock: Send + Sync {
    /// Now, on this clock.
    fn now(&self) -> Instant;

    /// Resolve when this clock reaches `at`.
    fn sleep_until(&self, at: Instant) -> BoxFuture<'static, ()>;
}

/// Real time: the system's monotonic clock and tokio's timers.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, at: Instant) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep_until(at.into()))
    }
}
