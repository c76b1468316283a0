//! The HTTP layer both cloud backends share: the client with its timeouts,
//! the retry policy (a budget per call, backoff with full jitter, the
//! server's `Retry-After` in seconds or as an HTTP date, the account-wide
//! pause on a rate limit, one retry after a refused token), jitter, and
//! percent-encoding of ids in paths and of query values. Each backend keeps
//! its wire types, its request building and its `classify` hook, which turns
//! an answer into a [`Verdict`].

use std::time::{Duration, SystemTime};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{HeaderMap, RETRY_AFTER};

use crate::auth::AuthError;
use crate::cloud::ErrorKind;
use crate::cloud::throttle::Throttle;

/// Longest wait for a TCP/TLS connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest silence while reading an answer (not its total time, so large
/// downloads are not cut short).
pub const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an idle connection is kept for the next request.
pub const POOL_IDLE: Duration = Duration::from_secs(60);

/// The HTTP client of one account, keeping up to `idle_per_host` idle
/// connections (the account's concurrency).
pub fn client(idle_per_host: usize) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(concat!("cloud-mdir-sync/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(idle_per_host.max(1))
        .build()
}

/// What a failure to get an access token means for the call: a login is
/// needed, or the token service is unreachable for now.
pub fn token_kind(e: &AuthError) -> ErrorKind {
    match e {
        AuthError::LoginNeeded { .. } => ErrorKind::Auth,
        AuthError::Unavailable { .. } => ErrorKind::Retry,
    }
}

/// How many times, and how patiently, one call is repeated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts for transient failures before giving up.
    pub max_attempts: u32,
    /// Attempts answered "too many requests" before giving up.
    pub max_rate_limited: u32,
    /// The backoff's first ceiling; doubled per attempt.
    pub backoff_base: Duration,
    /// The backoff's largest ceiling.
    pub backoff_max: Duration,
    /// Longest rate-limit pause a call waits out; a longer one ends the
    /// call with the pause as its `retry_after` (the pause stays in force
    /// for the account).
    pub max_wait: Duration,
}

/// How a backend's `classify` judged an attempt that did not succeed and
/// is worth repeating (anything else is final and never reaches the budget).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Network failure, 5xx, timeout, or a success carrying an error:
    /// back off (at least the `Retry-After`, if any) and repeat.
    Transient(Option<Duration>),
    /// The service's rate limiter said no: the whole account pauses.
    RateLimited(Option<Duration>),
    /// The access token was refused (HTTP 401): repeat once with a fresh
    /// one (the caller has already invalidated the refused token).
    Unauthorized,
}

/// The budget ran out: the call fails with this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GiveUp {
    /// `Retry` or `Auth`.
    pub kind: ErrorKind,
    /// When the daemon may try again.
    pub retry_after: Option<Duration>,
    /// Why, for the error message.
    pub why: String,
}

/// The retry budget of one logical call.
#[derive(Debug)]
pub struct Budget {
    policy: RetryPolicy,
    transient: u32,
    rate_limited: u32,
    auth_retried: bool,
}

impl Budget {
    /// A fresh budget under `policy`.
    pub fn new(policy: &RetryPolicy) -> Budget {
        Budget {
            policy: policy.clone(),
            transient: 0,
            rate_limited: 0,
            auth_retried: false,
        }
    }

    /// What to do after an attempt judged `v`: `Ok(wait)` before the next
    /// attempt, or give up. A rate limit pauses `throttle` (the next
    /// acquire waits it out, so the wait here is zero); so does a
    /// `Retry-After` on a transient answer, which speaks for the account.
    pub fn after(&mut self, v: Verdict, throttle: &Throttle) -> Result<Duration, GiveUp> {
        match v {
            Verdict::Unauthorized => {
                if self.auth_retried {
                    return Err(GiveUp {
                        kind: ErrorKind::Auth,
                        retry_after: None,
                        why: "a fresh access token was refused too (HTTP 401)".into(),
                    });
                }
                self.auth_retried = true;
                Ok(Duration::ZERO)
            }
            Verdict::RateLimited(ra) => {
                let pause = throttle.rate_limited(ra);
                self.rate_limited += 1;
                if self.rate_limited >= self.policy.max_rate_limited || pause > self.policy.max_wait
                {
                    return Err(GiveUp {
                        kind: ErrorKind::Retry,
                        retry_after: Some(pause),
                        why: format!("rate limited {} times", self.rate_limited),
                    });
                }
                Ok(Duration::ZERO)
            }
            Verdict::Transient(ra) => {
                self.transient += 1;
                let delay = self.backoff().max(ra.unwrap_or_default());
                if self.transient >= self.policy.max_attempts {
                    return Err(GiveUp {
                        kind: ErrorKind::Retry,
                        retry_after: Some(delay),
                        why: format!("gave up after {} attempts", self.transient),
                    });
                }
                if let Some(ra) = ra {
                    throttle.pause(ra);
                }
                throttle.retried();
                Ok(delay)
            }
        }
    }

    /// The backoff before the next transient retry: "full jitter", uniform
    /// between zero and a ceiling that doubles per attempt up to
    /// `backoff_max`, so concurrent callers spread out.
    fn backoff(&self) -> Duration {
        let ceiling = self
            .policy
            .backoff_base
            .saturating_mul(1u32 << self.transient.saturating_sub(1).min(16))
            .min(self.policy.backoff_max);
        ceiling.mul_f64(jitter())
    }
}

/// Everything but RFC 3986's unreserved characters is encoded.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// Path segments also keep `=` (the base64 padding Graph ids carry).
const SEGMENT: &AsciiSet = &UNRESERVED.remove(b'=');

/// A path segment (a message, folder or label id), percent-encoded.
pub fn path_segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// A query value, percent-encoded (spaces as `%20`, as OData expects).
pub fn query_value(s: &str) -> String {
    utf8_percent_encode(s, UNRESERVED).to_string()
}

/// The longest `Retry-After` taken as given (a day); longer is capped.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// A `Retry-After` value: delay-seconds (Graph sends fractions, so they
/// are accepted) or an HTTP date (then the time left until it, from
/// `now`; a date in the past is no wait). Capped at a day.
pub fn parse_retry_after_at(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64())));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or_default()
            .min(MAX_RETRY_AFTER),
    )
}

/// [`parse_retry_after_at`] from now.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    parse_retry_after_at(v, SystemTime::now())
}

/// The `Retry-After` header of a response, if it has a usable one.
pub fn retry_after_header(h: &HeaderMap) -> Option<Duration> {
    parse_retry_after(h.get(RETRY_AFTER)?.to_str().ok()?)
}

/// A uniformly distributed fraction in [0, 1), for jitter.
pub fn jitter() -> f64 {
    fastrand::f64()
}

/// `d` scaled by a random factor in [1 - spread, 1 + spread).
pub fn around(d: Duration, spread: f64) -> Duration {
    d.mul_f64(1.0 - spread + 2.0 * spread * jitter())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::throttle::Limits;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            max_rate_limited: 3,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(8),
            max_wait: Duration::from_secs(60),
        }
    }

    fn throttle() -> Throttle {
        Throttle::new(Limits {
            max_in_flight: 4,
            window_cost: 0,
            window: Duration::from_secs(60),
            slack: Duration::ZERO,
            pause_base: Duration::from_secs(1),
            pause_max: Duration::from_secs(64),
            max_wait: Duration::from_secs(60),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_back_off_with_full_jitter_until_the_budget_ends() {
        let t = throttle();
        for _ in 0..200 {
            let mut b = Budget::new(&policy());
            for attempt in 1..5u32 {
                let d = b.after(Verdict::Transient(None), &t).expect("budget left");
                let ceiling = Duration::from_secs(1 << (attempt - 1)).min(Duration::from_secs(8));
                assert!(d < ceiling, "attempt {attempt}: {d:?}");
            }
            let g = b.after(Verdict::Transient(None), &t).expect_err("spent");
            assert_eq!(g.kind, ErrorKind::Retry);
            assert!(g.why.contains("5 attempts"), "{}", g.why);
            assert!(g.retry_after.is_some());
        }
        assert_eq!(t.stats().retries, 200 * 4);
        assert_eq!(t.stats().pauses, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_is_the_floor_and_pauses_the_account() {
        let t = throttle();
        let mut b = Budget::new(&policy());
        let d = b
            .after(Verdict::Transient(Some(Duration::from_secs(30))), &t)
            .unwrap();
        assert!(d >= Duration::from_secs(30), "{d:?}");
        assert_eq!(t.stats().pauses, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_token_is_retried_once() {
        let t = throttle();
        let mut b = Budget::new(&policy());
        assert_eq!(b.after(Verdict::Unauthorized, &t), Ok(Duration::ZERO));
        let g = b.after(Verdict::Unauthorized, &t).expect_err("second 401");
        assert_eq!(g.kind, ErrorKind::Auth);
        // Other failures still have their own budget.
        assert!(b.after(Verdict::Transient(None), &t).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limits_pause_the_account_and_have_their_own_budget() {
        let t = throttle();
        let mut b = Budget::new(&policy());
        let ra = Some(Duration::from_secs(2));
        assert_eq!(b.after(Verdict::RateLimited(ra), &t), Ok(Duration::ZERO));
        assert_eq!(b.after(Verdict::RateLimited(ra), &t), Ok(Duration::ZERO));
        let g = b.after(Verdict::RateLimited(ra), &t).expect_err("third");
        assert_eq!(g.kind, ErrorKind::Retry);
        assert!(g.retry_after.unwrap() >= Duration::from_secs(2));
        assert_eq!(t.stats().pauses, 3);
        // A pause longer than `max_wait` ends the call at once.
        let mut b = Budget::new(&policy());
        let g = b
            .after(Verdict::RateLimited(Some(Duration::from_secs(600))), &t)
            .expect_err("too long");
        assert!(g.retry_after.unwrap() >= Duration::from_secs(600));
    }

    #[test]
    fn retry_after_in_seconds_and_as_a_date() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        let p = |v| parse_retry_after_at(v, now);
        assert_eq!(p("2.128"), Some(Duration::from_millis(2128)));
        assert_eq!(p(" 10 "), Some(Duration::from_secs(10)));
        assert_eq!(p("-1"), None);
        assert_eq!(p("NaN"), None);
        assert_eq!(p("soon"), None);
        assert_eq!(p("1e9"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            p("Wed, 21 Oct 2015 07:30:00 GMT"),
            Some(Duration::from_secs(120))
        );
        assert_eq!(p("Wed, 21 Oct 2015 07:00:00 GMT"), Some(Duration::ZERO));
        let mut h = HeaderMap::new();
        assert_eq!(retry_after_header(&h), None);
        h.insert(RETRY_AFTER, "2.5".parse().unwrap());
        assert_eq!(retry_after_header(&h), Some(Duration::from_millis(2500)));
    }

    #[test]
    fn ids_and_query_values_are_percent_encoded() {
        assert_eq!(path_segment("AAMk/a+b=="), "AAMk%2Fa%2Bb==");
        assert_eq!(path_segment("c/d"), "c%2Fd");
        assert_eq!(path_segment("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(query_value("Lists & Rust=1"), "Lists%20%26%20Rust%3D1");
        assert_eq!(query_value("é"), "%C3%A9");
        assert_eq!(path_segment("AAkALg-_=="), "AAkALg-_==");
        assert_eq!(path_segment("a/b+c d?"), "a%2Fb%2Bc%20d%3F");
        assert_eq!(
            query_value("displayName eq 'O''Brien'"),
            "displayName%20eq%20%27O%27%27Brien%27"
        );
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
            let d = around(Duration::from_secs(10), 0.2);
            assert!(
                d >= Duration::from_secs(8) && d < Duration::from_secs(12),
                "{d:?}"
            );
        }
    }
}
