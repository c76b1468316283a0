//! Per-user pacing of Gmail API calls: a sliding window of quota units (the
//! per-method costs of the quota table) that spends what the window allows
//! and no more, a cap on requests in flight, and a shared pause with
//! exponential backoff and jitter when Google answers with a rate-limit
//! error. Waiting is always a timed sleep, never a spin.

use crate::cloud::transport::jitter;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// Quota units of the API methods this backend calls (cloud-api-facts §3.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `users.getProfile`: 1 unit.
    GetProfile,
    /// `users.labels.list`: 1 unit.
    LabelsList,
    /// `users.history.list`: 2 units.
    HistoryList,
    /// `users.messages.list`: 5 units.
    MessagesList,
    /// `users.messages.get`: 5 units.
    MessagesGet,
    /// `users.messages.modify`: 5 units.
    MessagesModify,
    /// `users.messages.batchModify`: 50 units.
    BatchModify,
}

impl Method {
    /// The method's cost in quota units.
    pub fn units(self) -> u32 {
        match self {
            Method::GetProfile | Method::LabelsList => 1,
            Method::HistoryList => 2,
            Method::MessagesList | Method::MessagesGet | Method::MessagesModify => 5,
            Method::BatchModify => 50,
        }
    }
}

/// Google's documented per-user quota: 15,000 units in any minute
/// (cloud-api-facts §3.7).
pub const USER_QUOTA_UNITS: u32 = 15_000;

/// Pacing knobs. The defaults spend up to 98 % of Google's per-user quota
/// in any minute (as fast as the requests go while the window has room,
/// then as the oldest spending leaves it) and respect the per-user
/// concurrency limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Quota units that may be spent in any `window`; 0 turns unit pacing
    /// off (tests against an emulator without quotas).
    pub window_units: u32,
    /// The quota's window.
    pub window: Duration,
    /// HTTP requests in flight at once (a batch counts as one).
    pub max_concurrency: usize,
    /// First backoff after a rate-limit or transient error.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
}

impl Limits {
    /// The limits of an emulator run with `--quota xK` (`CMS_QUOTA_SCALE`):
    /// its unit window and budget are divided by `k`, so ours are too (the
    /// sustained rate stays the same).
    pub fn scaled(self, k: u32) -> Limits {
        let k = k.max(1);
        Limits {
            window_units: (self.window_units / k).max(1),
            window: self.window / k,
            ..self
        }
    }

    /// How long a spending counts against the window here: the window plus
    /// a thirtieth (2 s a minute), because Google counts a request when it
    /// arrives, a little after we send it.
    fn span(&self) -> Duration {
        self.window + self.window / 30
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            window_units: USER_QUOTA_UNITS / 50 * 49,
            window: Duration::from_secs(60),
            max_concurrency: 4,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(64),
        }
    }
}

/// What the throttle has let through so far (for logs and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// HTTP requests sent (a batch is one).
    pub requests: u64,
    /// Quota units charged (a batch charges each of its calls).
    pub units: u64,
    /// Rate-limit answers received (429, 403 `*RateLimitExceeded`).
    pub rate_limited: u64,
    /// Attempts repeated after a transient failure.
    pub retries: u64,
}

struct Bucket {
    /// Spending granted, in time order (times may lie in the future: a
    /// caller granted them waits until then).
    log: std::collections::VecDeque<(Instant, u32)>,
    /// Units in `log`.
    in_log: u64,
    paused_until: Option<Instant>,
    /// Consecutive rate-limit answers, for the backoff's growth.
    strikes: u32,
}

/// The pacing state of one Gmail user, shared by all its mailboxes.
pub struct Throttle {
    limits: Limits,
    slots: Semaphore,
    bucket: Mutex<Bucket>,
    requests: AtomicU64,
    units: AtomicU64,
    rate_limited: AtomicU64,
    retries: AtomicU64,
}

/// A request slot; the request may be sent while it is held.
pub struct Permit<'a> {
    _slot: Option<SemaphorePermit<'a>>,
}

impl Throttle {
    /// A throttle with the given limits.
    pub fn new(limits: Limits) -> Throttle {
        Throttle {
            slots: Semaphore::new(limits.max_concurrency.max(1)),
            bucket: Mutex::new(Bucket {
                log: std::collections::VecDeque::new(),
                in_log: 0,
                paused_until: None,
                strikes: 0,
            }),
            limits,
            requests: AtomicU64::new(0),
            units: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bucket> {
        crate::lock::lock(&self.bucket)
    }

    /// Reserve `units` at `now`; returns how long the caller must wait
    /// before spending them: the first moment, no earlier than any grant
    /// before it (callers are served in turn), when the spending in the
    /// window ending then leaves room for them.
    fn reserve(&self, units: u32, now: Instant) -> Duration {
        if self.limits.window_units == 0 {
            return Duration::ZERO;
        }
        let span = self.limits.span();
        let budget = u64::from(self.limits.window_units);
        let mut b = self.lock();
        while let Some(&(t, u)) = b.log.front() {
            if t + span > now {
                break;
            }
            b.log.pop_front();
            b.in_log -= u64::from(u);
        }
        let mut at = b.log.back().map_or(now, |&(t, _)| t.max(now));
        let (mut i, mut sum) = (0, b.in_log);
        loop {
            while let Some(&(t, u)) = b.log.get(i) {
                if t + span > at {
                    break;
                }
                sum -= u64::from(u);
                i += 1;
            }
            // A call dearer than the whole budget goes alone.
            if sum + u64::from(units) <= budget || i == b.log.len() {
                break;
            }
            at = b.log[i].0 + span;
        }
        b.log.push_back((at, units));
        b.in_log += u64::from(units);
        at.saturating_duration_since(now)
    }

    /// Wait until `units` may be spent and a request slot is free.
    pub async fn acquire(&self, units: u32) -> Permit<'_> {
        let wait = self.reserve(units, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        // A rate-limit pause may have begun (or grown) while we waited.
        loop {
            let until = self.lock().paused_until;
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => break,
            }
        }
        // `None` only if the semaphore were closed, which never happens.
        let slot = self.slots.acquire().await.ok();
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.units.fetch_add(u64::from(units), Ordering::Relaxed);
        Permit { _slot: slot }
    }

    /// Google said "too many requests": pause every caller of this user for
    /// `retry_after` (or an exponential backoff with jitter, capped at
    /// `backoff_max`). Returns how long the caller
    /// should wait before retrying.
    pub fn rate_limited(&self, retry_after: Option<Duration>) -> Duration {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
        let mut b = self.lock();
        b.strikes = b.strikes.saturating_add(1);
        let backoff = self.backoff(b.strikes);
        // The server's Retry-After wins (plus a little jitter so callers
        // do not return in lockstep); without one, exponential backoff.
        let pause = match retry_after {
            Some(r) => r + backoff.mul_f64(0.25 * jitter()),
            None => backoff,
        };
        let until = Instant::now() + pause;
        if b.paused_until.is_none_or(|t| t < until) {
            b.paused_until = Some(until);
        }
        pause
    }

    /// A request went through: rate-limit backoff starts small again.
    pub fn succeeded(&self) {
        let mut b = self.lock();
        if b.strikes > 0 {
            b.strikes = 0;
        }
    }

    /// The wait before attempt `attempt` (1 = first retry) of a request that
    /// failed transiently (network, 5xx): exponential with full jitter.
    pub fn retry_delay(&self, attempt: u32) -> Duration {
        self.retries.fetch_add(1, Ordering::Relaxed);
        self.backoff(attempt)
    }

    fn backoff(&self, n: u32) -> Duration {
        let exp = self
            .limits
            .backoff_base
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(self.limits.backoff_max);
        // Half fixed, half random: spreads clients apart, never zero.
        exp.mul_f64(0.5 + 0.5 * jitter())
    }

    /// Counters so far.
    pub fn usage(&self) -> Usage {
        Usage {
            requests: self.requests.load(Ordering::Relaxed),
            units: self.units.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_scale_divides_window_and_budget() {
        let d = Limits::default();
        let l = d.clone().scaled(10);
        assert_eq!(l.window, Duration::from_secs(6));
        assert_eq!(l.window_units, d.window_units / 10);
    }

    #[test]
    fn units_follow_the_quota_table() {
        assert_eq!(Method::GetProfile.units(), 1);
        assert_eq!(Method::HistoryList.units(), 2);
        assert_eq!(Method::MessagesGet.units(), 5);
        assert_eq!(Method::BatchModify.units(), 50);
    }

    #[test]
    fn defaults_stay_under_the_per_user_limit() {
        let l = Limits::default();
        assert!(l.window_units < USER_QUOTA_UNITS);
        assert!(u64::from(l.window_units) * 100 >= u64::from(USER_QUOTA_UNITS) * 95);
        assert_eq!(l.window, Duration::from_secs(60));
        assert!(l.max_concurrency < 10);
    }

    #[test]
    fn window_spends_what_it_allows_then_waits_for_the_oldest() {
        let t = Throttle::new(Limits {
            window_units: 50,
            window: Duration::from_secs(30),
            ..Limits::default()
        });
        let span = Duration::from_secs(31);
        let now = Instant::now();
        // The whole budget at once, then each call waits for the spending
        // a window before it to leave.
        let waits: Vec<Duration> = (0..25).map(|_| t.reserve(5, now)).collect();
        assert!(waits[..10].iter().all(|w| w.is_zero()), "{waits:?}");
        assert!(waits[10..20].iter().all(|w| *w == span), "{waits:?}");
        assert!(waits[20..].iter().all(|w| *w == span * 2), "{waits:?}");
        // In no window of `span` are more than 50 units granted.
        let later = now + span * 3;
        assert!(t.reserve(50, later).is_zero());
        assert_eq!(t.reserve(5, later), span);
        // A call dearer than the budget still goes, alone.
        let much_later = later + span * 5;
        assert!(t.reserve(80, much_later).is_zero());
        assert_eq!(t.reserve(1, much_later), span);
    }

    #[test]
    fn rate_limit_backoff_grows_and_honours_retry_after() {
        let t = Throttle::new(Limits::default());
        let first = t.rate_limited(None);
        let second = t.rate_limited(None);
        assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
        assert!(second >= Duration::from_secs(1) && second <= Duration::from_secs(2));
        t.succeeded();
        let again = t.rate_limited(Some(Duration::from_secs(3)));
        assert!(again >= Duration::from_secs(3), "{again:?}");
        assert!(t.rate_limited(Some(Duration::from_secs(3600))) >= Duration::from_secs(3600));
        for _ in 0..20 {
            assert!(t.rate_limited(None) <= Duration::from_secs(64));
        }
        assert_eq!(t.usage().rate_limited, 24);
    }
}
