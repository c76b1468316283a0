//! Outlook's limits for one Office365 mailbox, as parameters of the shared
//! [`Throttle`](crate::cloud::throttle::Throttle) and retry policy: four
//! requests in flight per app and mailbox, 10,000 requests per 10 minutes,
//! the mailbox paused when Graph sends `Retry-After`.

use std::time::Duration;

use crate::cloud::throttle::Limits;
use crate::cloud::transport::RetryPolicy;

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
    /// First backoff ceiling; doubled per attempt, with full jitter.
    pub backoff_base: Duration,
    /// Largest backoff ceiling.
    pub backoff_max: Duration,
    /// Pause used when a 429 carries no usable `Retry-After` (Graph always
    /// sends one); doubled for each 429 in a row.
    pub default_retry_after: Duration,
    /// Longest server-ordered pause a call waits out. A longer one fails
    /// the call at once with `ErrorKind::Retry` and `retry_after` (the pause
    /// stays in force for the mailbox), so one throttled account does not
    /// hold up a whole sync cycle.
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

    /// The shared throttle's parameters. A request is booked just before it
    /// is sent and Graph counts it on arrival; a six-hundredth of the window
    /// (1 s of 10 minutes) covers the difference.
    pub fn limits(&self) -> Limits {
        Limits {
            max_in_flight: self.max_in_flight,
            window_cost: self.window_budget,
            window: self.window,
            slack: self.window / 600,
            pause_base: self.default_retry_after,
            pause_max: self.max_wait,
            max_wait: self.max_wait,
        }
    }

    /// The retry policy of one call.
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            max_rate_limited: self.max_throttled,
            backoff_base: self.backoff_base,
            backoff_max: self.backoff_max,
            max_wait: self.max_wait,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_scale_divides_window_and_budget() {
        let c = ThrottleConfig::default().scaled(10);
        assert_eq!(c.window_budget, 1_000);
        assert_eq!(c.window, Duration::from_secs(60));
        assert_eq!(c.max_in_flight, 4);
        assert_eq!(c.limits().slack, Duration::from_millis(100));
        let same = ThrottleConfig::default().scaled(1);
        assert_eq!(same.window_budget, 10_000);
        assert_eq!(same.limits().window_cost, 10_000);
        assert_eq!(same.policy().max_rate_limited, 10);
    }
}
