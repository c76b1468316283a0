//! Gmail rate limits and quota: storms of 429/403/503 converge, a client
//! outrunning the emulator's limiter still converges, and normal running
//! never hits the real quota.

use std::time::Duration;

use cloud_mdir_sync::cloud::gmail::{self, Limits, Options};
use cloud_mdir_sync::cloud::{CloudMailbox, FlagChange};
use cloud_mdir_sync::types::Flags;
use fake_cloud::QuotaMode;
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::{Env, USER, assert_listing, fast};

#[tokio::test]
async fn rate_limit_storms_and_outages_converge() {
    let env = Env::start(QuotaMode::Off).await;
    let ids = env.populate("INBOX", 400, 81).await;
    // Enough attempts that a run of 503s on one request (about 1 in 10,000
    // per fetch with these storms) does not fail the test.
    let account = env.account(Options {
        max_attempts: 8,
        ..fast()
    });
    let mb = gmail::Mailbox::new(account.clone(), "INBOX", "gmail:user@gmail.com/INBOX");
    // Storms of 429, 403 userRateLimitExceeded/rateLimitExceeded and 503
    // on every Gmail route, batch included.
    env.fault(json!([
        {"route": "/www.googleapis.com/*", "kind": "status", "status": 429, "probability": 0.25, "count": 60},
        {"route": "/www.googleapis.com/*", "kind": "status", "status": 403, "probability": 0.25, "count": 60},
        {"route": "/www.googleapis.com/*", "kind": "status", "status": 403, "probability": 0.2, "count": 30,
         "body": {"error": {"code": 403, "message": "Rate Limit Exceeded",
            "errors": [{"domain": "usageLimits", "reason": "rateLimitExceeded", "message": "Rate Limit Exceeded"}]}}},
        {"route": "/www.googleapis.com/*", "kind": "status", "status": 503, "probability": 0.1, "count": 20},
    ]))
    .await;
    let entries = mb.list().await.expect("list converges");
    assert_listing(&env, "INBOX", &entries).await;
    let mut fetched = 0;
    let results: Vec<_> = futures_util::stream::iter(ids.iter().take(100))
        .map(|id| {
            let mb = &mb;
            async move {
                let mut out = Vec::new();
                mb.fetch(id, &mut out).await.map(|_| out.len())
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for r in results {
        r.expect("fetch converges");
        fetched += 1;
    }
    let r = mb
        .set_flags(
            ids.iter()
                .take(50)
                .map(|id| FlagChange {
                    id: id.clone(),
                    set: Flags::FLAGGED,
                    clear: Flags::NONE,
                })
                .collect(),
        )
        .await;
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    let s = env.stats().await;
    assert!(s.rate_limited() > 0, "the storm happened");
    assert!(account.usage().rate_limited > 0);
    assert!(account.usage().retries > 0, "the 503s were retried");
    env.control("DELETE", "faults", Value::Null).await;
    assert_eq!(fetched, 100);
    let relisted = mb.list().await.expect("list");
    assert_listing(&env, "INBOX", &relisted).await;
}

#[tokio::test]
async fn a_client_that_outruns_the_real_limiter_still_converges() {
    // The emulator's own limiter (windows 60 times shorter, same rate) with
    // pacing switched off on our side and more requests in flight than it
    // admits: 403 userRateLimitExceeded with Retry-After and 429 for
    // concurrency, inside batch answers too. Everything still arrives.
    let env = Env::start(QuotaMode::Scaled(60)).await;
    let ids = env.populate("INBOX", 300, 85).await;
    let account = env.account(Options {
        limits: Limits {
            window_units: 0,
            window: Duration::from_secs(60),
            max_concurrency: 16,
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_secs(3),
        },
        max_attempts: 3,
        max_rate_limited_attempts: 200,
        ..Options::default()
    });
    let mb = gmail::Mailbox::new(account.clone(), "INBOX", "gmail:user@gmail.com/INBOX");
    let entries = mb.list().await.expect("list converges");
    assert_listing(&env, "INBOX", &entries).await;
    let results: Vec<_> = futures_util::stream::iter(ids.iter().take(60))
        .map(|id| {
            let mb = &mb;
            async move {
                let mut out = Vec::new();
                mb.fetch(id, &mut out).await
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let s = env.stats().await;
    assert!(s.rate_limited() > 0, "the limiter was hit");
    assert!(account.usage().rate_limited > 0);
}

#[tokio::test]
async fn the_emulator_quota_is_never_hit_in_normal_running() {
    // Real quotas (15,000 units/min, 10 in flight) and default pacing:
    // an initial sync (listing plus every download) of 1,000 messages.
    let env = Env::start(QuotaMode::Real).await;
    let ids = env.populate("INBOX", 1000, 91).await;
    let account = env.account(Options::default());
    let mb = gmail::Mailbox::new(account.clone(), "INBOX", "gmail:user@gmail.com/INBOX");
    env.reset_stats().await;
    let entries = mb.list().await.expect("list");
    assert_eq!(entries.len(), 1000);
    let results: Vec<_> = futures_util::stream::iter(ids.iter())
        .map(|id| {
            let mb = &mb;
            async move {
                let mut out = Vec::new();
                mb.fetch(id, &mut out).await
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(results.iter().all(Result::is_ok));
    let s = env.stats().await;
    let usage = account.usage();
    eprintln!(
        "initial sync of 1000 messages: {} HTTP requests, {} quota units (client counted {} requests, {} units), peak {}",
        s.http_requests(),
        s.units(),
        usage.requests,
        usage.units,
        s.0["mailboxes"][format!("gmail {USER}")]["peak_concurrency"]
    );
    assert_eq!(s.rate_limited(), 0, "no rate-limit answers");
    assert_eq!(s.0["throttled"].as_u64(), Some(0));
    assert_eq!(usage.rate_limited, 0);
    assert_eq!(usage.units, s.units(), "client and server agree on units");
    assert_eq!(usage.requests, s.http_requests());
    // labels + profile + list pages (label, UNREAD, STARRED) + 1000
    // downloads: 5 units a message and a little.
    let pages = s.on("gmail GET /users/me/messages");
    assert!((3..=6).contains(&pages), "{pages} list pages");
    assert_eq!(s.http_requests(), 1 + 1 + pages + 1000);
    assert_eq!(s.units(), 1 + 1 + 5 * pages + 5000);
}
