//! One throttle per Office365 mailbox, shared by every folder of the account:
//! at most four requests in flight (Outlook's per app+mailbox concurrency
//! limit), a client-side count of the 10,000-requests-per-10-minutes window,
//! a mailbox-wide pause when the service sends `Retry-After`, and jittered
//! exponential backoff for transient failures. Waiting is always a sleep on a
//! deadline or on a semaphore, never a poll loop.

use crate::cloud::transport::jitter;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::lock::lock;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Outlook's documented limits and our retry policy for one mailbox.
#[derive(Clone, Debug)]
pub struct ThrottleConfig {
    /// Requests in flight at once (Graph: 4 per app and mailbox).
    pub max_in_flight: u32,
    /// Requests allowed per `window` (Graph: 10,000 per 10 minutes).
    pub window_budget: u32,
    /// Length of the request-count window.
    pub window: Duration,
    /// Attempts per call for transient failures (5xx, resets, timeouts,
    /// HTTP 200 carrying an error) before giving up with `ErrorKind::Retry`.
    pub max_attempts: u32,
    /// Attempts per call answered 429 before giving up with `ErrorKind::Retry`.
    pub max_throttled: u32,
    /// First backoff delay; doubled per attempt, with jitter.
    pub backoff_base: Duration,
    /// Longest backoff delay.
    pub backoff_max: Duration,
    /// Pause used when a 429 carries no usable `Retry-After`.
    pub default_retry_after: Duration,
    /// Longest server-ordered pause a call waits out. A longer one fails
    /// the call at once with `ErrorKind::Retry` and `retry_after` (the pause
    /// stays in force for the mailbox), so one throttled account does not
    /// hold up a whole sync cycle. Waits for room in our own request window
    /// are not limited: they end at a known time and never draw a 429.
    pub max_wait: Duration,
}

impl ThrottleConfig {
    /// The limits of an emulator run with `--quota xK` (`CMS_QUOTA_SCALE`):
    /// the request window and its budget divided by `k`, so the sustained
    /// rate is the real one and a full window is waited out `k` times faster.
    pub fn scaled(self, k: u32) -> ThrottleConfig {
        let k = k.max(1);
        ThrottleConfig {
            window_budget: (self.window_budget / k).max(1),
            window: self.window / k,
            ..self
        }
    }
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            max_in_flight: 4,
            window_budget: 10_000,
            window: Duration::from_secs(600),
            max_attempts: 5,
            max_throttled: 10,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            default_retry_after: Duration::from_secs(10),
            max_wait: Duration::from_secs(60),
        }
    }
}

/// Counters for tests and status output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThrottleStats {
    /// Highest number of request slots held at once.
    pub peak_in_flight: u32,
    /// Requests (batch parts counted one by one) sent so far.
    pub requests: u64,
    /// Pauses ordered by a `Retry-After`.
    pub pauses: u64,
}

#[derive(Debug, Default)]
struct State {
    /// No new request starts before this instant (a `Retry-After`).
    paused_until: Option<Instant>,
    /// Completion times of requests still inside the window.
    done: VecDeque<Instant>,
    /// Requests admitted and not yet finished (they count against the window).
    pending: u32,
    /// Slots held now.
    in_flight: u32,
    stats: ThrottleStats,
}

/// The per-mailbox throttle; clone the `Arc` to share it between folders.
#[derive(Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    slots: Arc<Semaphore>,
    state: Arc<std::sync::Mutex<State>>,
}

/// Slots held for one HTTP request; dropping it gives them back and records
/// the request in the window.
#[derive(Debug)]
pub struct Permit {
    _slots: OwnedSemaphorePermit,
    state: Arc<std::sync::Mutex<State>>,
    slots: u32,
    requests: u32,
}

impl Drop for Permit {
    fn drop(&mut self) {
        // The completion time is recorded, not the start: the server admitted
        // the request somewhere in between, so counting from the later time
        // never lets our window run ahead of the server's.
        let now = Instant::now();
        let mut st = lock(&self.state);
        st.pending = st.pending.saturating_sub(self.requests);
        st.in_flight = st.in_flight.saturating_sub(self.slots);
        for _ in 0..self.requests {
            st.done.push_back(now);
        }
    }
}

impl Throttle {
    /// A throttle with `config`.
    pub fn new(config: ThrottleConfig) -> Throttle {
        let n = config.max_in_flight.max(1);
        Throttle {
            slots: Arc::new(Semaphore::new(n as usize)),
            state: Arc::new(std::sync::Mutex::new(State::default())),
            config,
        }
    }

    /// The policy in force.
    pub fn config(&self) -> &ThrottleConfig {
        &self.config
    }

    /// Counters so far.
    pub fn stats(&self) -> ThrottleStats {
        lock(&self.state).stats
    }

    /// Wait for `slots` concurrency slots (capped at the limit) and window
    /// room for `requests` requests, honouring any pause in force; a pause
    /// with more than `max_wait` left gives `Err(time left)` at once.
    pub async fn acquire(&self, slots: u32, requests: u32) -> Result<Permit, Duration> {
        let slots = slots.clamp(1, self.config.max_in_flight.max(1));
        let requests = requests.max(1);
        loop {
            self.wait_pause().await?;
            let Ok(permit) = self.slots.clone().acquire_many_owned(slots).await else {
                // The semaphore is never closed; should it be, wait instead
                // of spinning.
                unreachable_semaphore();
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            let wait = {
                let mut st = lock(&self.state);
                let now = Instant::now();
                if let Some(p) = st.paused_until
                    && p > now
                {
                    // Paused while we queued: give the slots back and wait.
                    Some(p - now)
                } else {
                    while st
                        .done
                        .front()
                        .is_some_and(|t| *t + self.config.window <= now)
                    {
                        st.done.pop_front();
                    }
                    let used = st.done.len() as u64 + u64::from(st.pending);
                    let budget = u64::from(self.config.window_budget.max(requests));
                    if used + u64::from(requests) > budget {
                        // Room appears when the oldest finished request leaves
                        // the window; if only pending ones fill it, retry soon.
                        Some(
                            st.done
                                .front()
                                .map(|t| (*t + self.config.window).saturating_duration_since(now))
                                .unwrap_or(Duration::from_millis(50))
                                .max(Duration::from_millis(1)),
                        )
                    } else {
                        st.pending += requests;
                        st.in_flight += slots;
                        st.stats.peak_in_flight = st.stats.peak_in_flight.max(st.in_flight);
                        st.stats.requests += u64::from(requests);
                        None
                    }
                }
            };
            match wait {
                None => {
                    return Ok(Permit {
                        _slots: permit,
                        state: self.state.clone(),
                        slots,
                        requests,
                    });
                }
                Some(d) => {
                    drop(permit);
                    if d > Duration::from_secs(5) {
                        tracing::info!(
                            "mailbox request window full: waiting {:.1}s",
                            d.as_secs_f64()
                        );
                    }
                    tokio::time::sleep(d).await;
                }
            }
        }
    }

    /// Stop every new request of this mailbox for `d` (a `Retry-After`);
    /// a longer pause already in force is kept.
    pub fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut st = lock(&self.state);
        st.stats.pauses += 1;
        if st.paused_until.is_none_or(|p| p < until) {
            st.paused_until = Some(until);
        }
    }

    /// The pause in force has more than `max_wait` left: how much.
    pub fn paused_too_long(&self) -> Option<Duration> {
        let until = lock(&self.state).paused_until?;
        let left = until.saturating_duration_since(Instant::now());
        (left > self.config.max_wait).then_some(left)
    }

    async fn wait_pause(&self) -> Result<(), Duration> {
        loop {
            if let Some(left) = self.paused_too_long() {
                return Err(left);
            }
            let until = lock(&self.state).paused_until;
            match until {
                Some(u) if u > Instant::now() => tokio::time::sleep_until(u).await,
                _ => return Ok(()),
            }
        }
    }

    /// The delay before attempt `attempt` (0-based) of a transient failure:
    /// exponential from `backoff_base`, capped, with "equal jitter" (half
    /// fixed, half random) so concurrent callers spread out.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base = self.config.backoff_base.as_secs_f64();
        let cap = self.config.backoff_max.as_secs_f64();
        let exp = (base * 2f64.powi(attempt.min(30) as i32)).min(cap);
        Duration::from_secs_f64(exp / 2.0 + exp / 2.0 * jitter())
    }
}

#[cold]
fn unreachable_semaphore() {
    tracing::error!("throttle semaphore closed");
}

#[cfg(test)]
mod tests {
    #[test]
    fn quota_scale_divides_window_and_budget() {
        let c = super::ThrottleConfig::default().scaled(10);
        assert_eq!(c.window_budget, 1_000);
        assert_eq!(c.window, std::time::Duration::from_secs(60));
        assert_eq!(c.max_in_flight, 4);
        let same = super::ThrottleConfig::default().scaled(1);
        assert_eq!(same.window_budget, 10_000);
    }

    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let t = Throttle::new(ThrottleConfig {
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(8),
            ..ThrottleConfig::default()
        });
        for attempt in 0..10 {
            let d = t.backoff(attempt).as_secs_f64();
            let exp = (2f64.powi(attempt as i32)).min(8.0);
            assert!(d >= exp / 2.0 && d <= exp, "attempt {attempt}: {d}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_limit_in_flight() {
        let t = Arc::new(Throttle::new(ThrottleConfig::default()));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..20u32 {
            let t = t.clone();
            set.spawn(async move {
                let _p = t.acquire(1 + i % 3, 1 + i % 3).await.expect("not paused");
                tokio::time::sleep(Duration::from_millis(10)).await;
            });
        }
        while set.join_next().await.is_some() {}
        let s = t.stats();
        assert_eq!(s.peak_in_flight, 4);
        assert_eq!(s.requests, (0..20u64).map(|i| 1 + i % 3).sum::<u64>());
    }

    // Time is paused and advances only while every task waits: the
    // service's real durations, checked exactly, in no time.
    #[tokio::test(start_paused = true)]
    async fn pause_holds_back_new_requests() {
        let t = Throttle::new(ThrottleConfig::default());
        // Up to `max_wait` (60 s) is waited out.
        t.pause(Duration::from_secs(45));
        let start = Instant::now();
        drop(t.acquire(1, 1).await.expect("a pause it waits out"));
        // The request cannot start before the pause ends.
        assert!(Instant::now() - start >= Duration::from_secs(45));
        assert_eq!(t.stats().pauses, 1);
        // A pause longer than `max_wait` is not waited out.
        t.pause(Duration::from_secs(3600));
        let left = t.acquire(1, 1).await.expect_err("long pause");
        assert!(left > Duration::from_secs(3000));
    }

    #[tokio::test(start_paused = true)]
    async fn window_budget_is_respected() {
        // Graph's real window (10,000 requests per 10 minutes), full.
        let t = Throttle::new(ThrottleConfig::default());
        let first = Instant::now();
        for _ in 0..10_000 {
            drop(t.acquire(1, 1).await.expect("not paused"));
        }
        assert!(Instant::now() - first < Duration::from_secs(1));
        drop(t.acquire(1, 1).await.expect("not paused"));
        // The next request waits until the first one has left the window.
        assert!(Instant::now() - first >= Duration::from_secs(600));
    }
}
