//! Google's per-user limits as parameters of the shared
//! [`Throttle`](crate::cloud::throttle::Throttle): quota units per method
//! (the quota table), 15,000 units a minute, a few requests in flight, and
//! the backoff when Google answers with a rate-limit error.

use std::time::Duration;

use crate::cloud::throttle::{self, Stats};

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

    /// The shared throttle's parameters. A spending counts against the
    /// window a thirtieth longer (2 s a minute), because Google counts a
    /// request when it arrives, a little after we send it. A rate-limit
    /// pause longer than the longest backoff is not waited out.
    pub fn throttle(&self) -> throttle::Limits {
        throttle::Limits {
            max_in_flight: self.max_concurrency.max(1) as u32,
            window_cost: self.window_units,
            window: self.window,
            slack: self.window / 30,
            pause_base: self.backoff_base,
            pause_max: self.backoff_max,
            max_wait: self.backoff_max,
        }
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

impl From<Stats> for Usage {
    fn from(s: Stats) -> Usage {
        Usage {
            requests: s.requests,
            units: s.cost,
            rate_limited: s.rate_limited,
            retries: s.retries,
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
    fn limits_become_the_shared_throttle_s_parameters() {
        let l = Limits::default().throttle();
        assert_eq!(l.max_in_flight, 4);
        assert_eq!(l.window_cost, USER_QUOTA_UNITS / 50 * 49);
        assert_eq!(l.slack, Duration::from_secs(2));
        assert_eq!(l.max_wait, Duration::from_secs(64));
    }
}
