//! The per-account throttle both backends use, one mechanism with
//! per-service parameters: a cap on request slots in flight, a sliding
//! window of cost (Graph: requests per 10 minutes; Gmail: quota units per
//! minute) that spends what the window allows and then waits for the oldest
//! spending to leave it, and an account-wide pause when the service says
//! "too many requests". Waiting is always a sleep on a deadline or on a
//! semaphore, never a poll loop.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::cloud::transport::jitter;
use crate::lock::lock;

/// A service's limits for one account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Request slots in flight at once.
    pub max_in_flight: u32,
    /// Cost that may be spent in any `window`; 0 turns pacing off.
    pub window_cost: u32,
    /// The service's window.
    pub window: Duration,
    /// Added to the window when counting: the service counts a request
    /// when it arrives, a little after we let it go.
    pub slack: Duration,
    /// Pause after a rate-limit answer without a `Retry-After`; doubled per
    /// answer in a row, with jitter.
    pub pause_base: Duration,
    /// Longest such pause.
    pub pause_max: Duration,
    /// Longest pause an [`Throttle::acquire`] waits out; a longer one fails
    /// at once with the time left, so one throttled account does not hold
    /// up a whole sync cycle. Waits for room in the window are not limited:
    /// they end at a known time and never draw a rate-limit answer.
    pub max_wait: Duration,
}

/// What the throttle has let through (for logs, tests and benchmarks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// HTTP requests let through (a batch is one).
    pub requests: u64,
    /// Cost charged to the window (Graph: requests, batch parts one by one;
    /// Gmail: quota units).
    pub cost: u64,
    /// Most slots held at once.
    pub peak_in_flight: u32,
    /// Pauses ordered by the service (rate-limit answers, `Retry-After`).
    pub pauses: u64,
    /// Rate-limit answers among them.
    pub rate_limited: u64,
    /// Attempts repeated after a transient failure.
    pub retries: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Spending granted, in time order (times may lie ahead: the caller
    /// granted them waits until then).
    log: VecDeque<(Instant, u32)>,
    /// Cost in `log`.
    in_log: u64,
    /// No new request starts before this instant.
    paused_until: Option<Instant>,
    /// Rate-limit answers in a row, for the pause's growth.
    strikes: u32,
    /// Slots held now.
    in_flight: u32,
    stats: Stats,
}

/// The throttle of one account; every folder (label) of it shares it.
#[derive(Debug)]
pub struct Throttle {
    limits: Limits,
    slots: Arc<Semaphore>,
    state: Arc<Mutex<State>>,
}

/// Slots held for one HTTP request; dropping it gives them back.
#[derive(Debug)]
pub struct Permit {
    _slots: OwnedSemaphorePermit,
    state: Arc<Mutex<State>>,
    slots: u32,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut st = lock(&self.state);
        st.in_flight = st.in_flight.saturating_sub(self.slots);
    }
}

impl Throttle {
    /// A throttle with `limits`.
    pub fn new(limits: Limits) -> Throttle {
        Throttle {
            slots: Arc::new(Semaphore::new(limits.max_in_flight.max(1) as usize)),
            state: Arc::default(),
            limits,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        lock(&self.state).stats
    }

    /// Wait for `slots` slots (capped at the limit) and window room for
    /// `cost`, honouring any pause in force; a pause with more than
    /// `max_wait` left gives `Err(time left)` at once.
    pub async fn acquire(&self, slots: u32, cost: u32) -> Result<Permit, Duration> {
        let slots = slots.clamp(1, self.limits.max_in_flight.max(1));
        let mut reserved = false;
        loop {
            self.wait_pause().await?;
            let Ok(permit) = self.slots.clone().acquire_many_owned(slots).await else {
                // The semaphore is never closed; should it be, wait instead
                // of spinning.
                tracing::error!("throttle semaphore closed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            // The spending is booked once the slots are held, so the request
            // goes out right when its booked time comes.
            if !reserved {
                reserved = true;
                let wait = self.reserve(cost, Instant::now());
                if wait > Duration::from_secs(5) {
                    tracing::info!("request window full: waiting {:.1}s", wait.as_secs_f64());
                }
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
            let mut st = lock(&self.state);
            if st.paused_until.is_some_and(|p| p > Instant::now()) {
                // Paused while we waited: give the slots back and wait.
                continue;
            }
            st.in_flight += slots;
            st.stats.peak_in_flight = st.stats.peak_in_flight.max(st.in_flight);
            st.stats.requests += 1;
            st.stats.cost += u64::from(cost);
            return Ok(Permit {
                _slots: permit,
                state: self.state.clone(),
                slots,
            });
        }
    }

    /// Book `cost` at `now`; how long the caller must wait before spending
    /// it: the first moment, no earlier than any booking before it (callers
    /// are served in turn), when the spending in the window ending then
    /// leaves room for it. A cost above the whole budget goes alone.
    fn reserve(&self, cost: u32, now: Instant) -> Duration {
        if self.limits.window_cost == 0 {
            return Duration::ZERO;
        }
        let span = self.limits.window + self.limits.slack;
        let budget = u64::from(self.limits.window_cost);
        let mut st = lock(&self.state);
        while let Some(&(t, c)) = st.log.front() {
            if t + span > now {
                break;
            }
            st.log.pop_front();
            st.in_log -= u64::from(c);
        }
        let mut at = st.log.back().map_or(now, |&(t, _)| t.max(now));
        let (mut i, mut sum) = (0, st.in_log);
        loop {
            while let Some(&(t, c)) = st.log.get(i) {
                if t + span > at {
                    break;
                }
                sum -= u64::from(c);
                i += 1;
            }
            if sum + u64::from(cost) <= budget || i == st.log.len() {
                break;
            }
            at = st.log[i].0 + span;
        }
        st.log.push_back((at, cost));
        st.in_log += u64::from(cost);
        at.saturating_duration_since(now)
    }

    /// Stop every new request of the account for `d` (a `Retry-After`); a
    /// longer pause already in force is kept.
    pub fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut st = lock(&self.state);
        st.stats.pauses += 1;
        if st.paused_until.is_none_or(|p| p < until) {
            st.paused_until = Some(until);
        }
    }

    /// The service said "too many requests": pause the account for its
    /// `Retry-After` (plus a little jitter, so callers do not return in
    /// lockstep) or, without one, for a pause that doubles with each such
    /// answer in a row. Returns the pause.
    pub fn rate_limited(&self, retry_after: Option<Duration>) -> Duration {
        let strikes = {
            let mut st = lock(&self.state);
            st.stats.rate_limited += 1;
            st.strikes = st.strikes.saturating_add(1);
            st.strikes
        };
        let grown = self
            .limits
            .pause_base
            .saturating_mul(1u32 << strikes.saturating_sub(1).min(16))
            .min(self.limits.pause_max);
        let pause = match retry_after {
            Some(r) => r + grown.mul_f64(0.25 * jitter()).min(Duration::from_secs(1)),
            None => grown.mul_f64(0.5 + 0.5 * jitter()),
        };
        self.pause(pause);
        pause
    }

    /// A request went through: the rate-limit pause starts small again.
    pub fn succeeded(&self) {
        lock(&self.state).strikes = 0;
    }

    /// An attempt is being repeated after a transient failure.
    pub fn retried(&self) {
        lock(&self.state).stats.retries += 1;
    }

    /// The pause in force, if it has more than `max_wait` left.
    fn paused_too_long(&self) -> Option<Duration> {
        let until = lock(&self.state).paused_until?;
        let left = until.saturating_duration_since(Instant::now());
        (left > self.limits.max_wait).then_some(left)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_in_flight: 4,
            window_cost: 10_000,
            window: Duration::from_secs(600),
            slack: Duration::ZERO,
            pause_base: Duration::from_secs(1),
            pause_max: Duration::from_secs(64),
            max_wait: Duration::from_secs(60),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_limit_in_flight() {
        let t = Arc::new(Throttle::new(limits()));
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
        assert_eq!(s.requests, 20);
        assert_eq!(s.cost, (0..20u64).map(|i| 1 + i % 3).sum::<u64>());
    }

    // Time is paused and advances only while every task waits: the
    // services' real durations, checked exactly, in no time.
    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_back_new_requests_and_a_long_one_fails_fast() {
        let t = Throttle::new(limits());
        t.pause(Duration::from_secs(45));
        let start = Instant::now();
        drop(t.acquire(1, 1).await.expect("a pause it waits out"));
        assert!(Instant::now() - start >= Duration::from_secs(45));
        assert_eq!(t.stats().pauses, 1);
        t.pause(Duration::from_secs(3600));
        let left = t.acquire(1, 1).await.expect_err("long pause");
        assert!(left > Duration::from_secs(3000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_window_waits_for_its_oldest_request() {
        // Graph's real window (10,000 requests per 10 minutes), full.
        let t = Throttle::new(limits());
        let first = Instant::now();
        for _ in 0..10_000 {
            drop(t.acquire(1, 1).await.expect("not paused"));
        }
        assert!(Instant::now() - first < Duration::from_secs(1));
        drop(t.acquire(1, 1).await.expect("not paused"));
        assert!(Instant::now() - first >= Duration::from_secs(600));
    }

    #[test]
    fn the_window_spends_what_it_allows_then_waits_for_the_oldest() {
        let t = Throttle::new(Limits {
            window_cost: 50,
            window: Duration::from_secs(30),
            slack: Duration::from_secs(1),
            ..limits()
        });
        let span = Duration::from_secs(31);
        let now = Instant::now();
        let waits: Vec<Duration> = (0..25).map(|_| t.reserve(5, now)).collect();
        assert!(waits[..10].iter().all(|w| w.is_zero()), "{waits:?}");
        assert!(waits[10..20].iter().all(|w| *w == span), "{waits:?}");
        assert!(waits[20..].iter().all(|w| *w == span * 2), "{waits:?}");
        // In no window of `span` is more than the budget granted.
        let later = now + span * 3;
        assert!(t.reserve(50, later).is_zero());
        assert_eq!(t.reserve(5, later), span);
        // A cost above the budget still goes, alone.
        let much_later = later + span * 5;
        assert!(t.reserve(80, much_later).is_zero());
        assert_eq!(t.reserve(1, much_later), span);
        // No pacing at all with a zero budget.
        let free = Throttle::new(Limits {
            window_cost: 0,
            ..limits()
        });
        assert!((0..100).all(|_| free.reserve(1000, now).is_zero()));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_pauses_grow_and_honour_retry_after() {
        let t = Throttle::new(limits());
        let first = t.rate_limited(None);
        let second = t.rate_limited(None);
        assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
        assert!(second >= Duration::from_secs(1) && second <= Duration::from_secs(2));
        t.succeeded();
        let again = t.rate_limited(Some(Duration::from_secs(3)));
        assert!(again >= Duration::from_secs(3) && again <= Duration::from_secs(4));
        assert!(t.rate_limited(Some(Duration::from_secs(3600))) >= Duration::from_secs(3600));
        for _ in 0..20 {
            assert!(t.rate_limited(None) <= Duration::from_secs(64));
        }
        assert_eq!(t.stats().pauses, 24);
        assert_eq!(t.stats().rate_limited, 24);
        t.pause(Duration::from_secs(1));
        assert_eq!(
            t.stats().rate_limited,
            24,
            "a plain pause is no rate-limit answer"
        );
    }
}
