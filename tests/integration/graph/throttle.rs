//! Graph throttling, retries and tokens: 429/503 storms converge, a long
//! Retry-After holds the mailbox, a refused token is replaced once, ten
//! folders share one mailbox limit, and no token reaches the logs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloud_mdir_sync::auth::{AccessToken, Audience, AuthError, StaticTokens, TokenSource};
use cloud_mdir_sync::cloud::graph;
use cloud_mdir_sync::cloud::{CloudMailbox, ErrorKind, FlagChange};
use cloud_mdir_sync::endpoints::Endpoints;
use cloud_mdir_sync::types::DeleteAction;
use cloud_mdir_sync::types::Flags;
use fake_cloud::Options;
use futures_util::future::BoxFuture;
use serde_json::json;

use crate::util::Capture;

use super::{Cloud, USER, as_map, change, quick};

#[tokio::test]
async fn throttling_and_server_errors_converge() {
    let c = Cloud::start().await;
    let ids = c.populate("Inbox", 30).await;
    let acct = c.account();
    let mb = c.mailbox(&acct, "Inbox");

    // A 429 storm on delta with fractional Retry-After, then 503s.
    c.fault(json!({"route": "*/delta", "kind": "status", "status": 429, "retry_after": "0.05", "count": 4}))
        .await;
    c.fault(json!({"route": "*/delta", "kind": "status", "status": 503, "count": 2}))
        .await;
    let got = mb.list().await.expect("converges");
    assert_eq!(as_map(&got), c.expected("Inbox").await);
    assert!(acct.throttle_stats().pauses >= 4);

    // 429 inside $batch: honoured, resent, all applied.
    c.fault(
        json!({"route": "/graph.microsoft.com/v1.0/me/messages/*", "method": "PATCH",
        "kind": "status", "status": 429, "retry_after": "0.05", "count": 7}),
    )
    .await;
    // 500 on some parts: retried alone.
    c.fault(
        json!({"route": "/graph.microsoft.com/v1.0/me/messages/*", "method": "PATCH",
        "kind": "status", "status": 500, "count": 2}),
    )
    .await;
    let changes: Vec<FlagChange> = ids[..10]
        .iter()
        .map(|id| change(id, Flags::FLAGGED, Flags::NONE))
        .collect();
    let r = mb.set_flags(changes).await;
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    let l = mb.list().await.expect("list");
    assert_eq!(as_map(&l), c.expected("Inbox").await);
    for id in &ids[..10] {
        assert!(
            l.iter()
                .any(|e| *e.id == **id && e.flags.contains(Flags::FLAGGED))
        );
    }

    // Broken JSON and a 200 carrying an error: retried.
    c.fault(json!({"route": "*/delta", "kind": "bad_json", "count": 1}))
        .await;
    c.fault(json!({"route": "*/delta", "kind": "error200", "status": 503, "count": 1}))
        .await;
    assert_eq!(
        as_map(&mb.list().await.expect("list")),
        c.expected("Inbox").await
    );

    // A 503 that never ends: a Retry error, and the listing is kept.
    c.fault(json!({"route": "*/delta", "kind": "status", "status": 503, "count": 1000}))
        .await;
    let e = mb.list().await.expect_err("gives up");
    assert_eq!(e.kind, ErrorKind::Retry);
    assert!(e.retry_after.is_some());
    c.clear_faults().await;
    assert_eq!(
        as_map(&mb.list().await.expect("list")),
        c.expected("Inbox").await
    );
}

#[tokio::test]
async fn a_long_retry_after_fails_fast_and_holds_the_mailbox() {
    let c = Cloud::start().await;
    let ids = c.populate("Inbox", 5).await;
    let acct = c.account();
    let mb = c.mailbox(&acct, "Inbox");
    mb.list().await.expect("list");
    // A part answered 429 with five minutes to wait: the call does not
    // wait, it reports Retry with the delay.
    c.fault(
        json!({"route": "/graph.microsoft.com/v1.0/me/messages/*", "method": "PATCH",
        "kind": "status", "status": 429, "retry_after": "300", "count": 1}),
    )
    .await;
    let r = mb
        .set_flags(vec![change(&ids[0], Flags::FLAGGED, Flags::NONE)])
        .await;
    let e = r[0].as_ref().expect_err("throttled");
    assert_eq!(e.kind, ErrorKind::Retry);
    assert!(
        e.retry_after.expect("delay") >= Duration::from_secs(250),
        "{e:?}"
    );
    // The pause holds for every folder of the mailbox: nothing is sent.
    c.reset_stats().await;
    let other = c.mailbox(&acct, "Archive");
    for e in [
        mb.list().await.expect_err("paused"),
        other.list().await.expect_err("paused"),
        mb.fetch(&ids[1], &mut Vec::new())
            .await
            .expect_err("paused"),
    ] {
        assert_eq!(e.kind, ErrorKind::Retry);
        assert!(e.retry_after.is_some());
    }
    assert_eq!(c.requests().await, 0);
}

#[tokio::test]
async fn a_refused_token_is_replaced_once() {
    /// Hands out a refused token until it is invalidated, then a good one.
    struct Rotating {
        good: String,
        invalidated: Mutex<u32>,
    }
    impl TokenSource for Rotating {
        fn token(&self, _: Audience) -> BoxFuture<'_, Result<AccessToken, AuthError>> {
            let t = if *self.invalidated.lock().expect("lock") > 0 {
                self.good.clone()
            } else {
                "not-a-valid-token".to_string()
            };
            Box::pin(async move { Ok(AccessToken::new(t)) })
        }
        fn invalidate(&self, _: Audience, _: &AccessToken) {
            *self.invalidated.lock().expect("lock") += 1;
        }
    }
    let c = Cloud::start().await;
    c.populate("Inbox", 3).await;
    let src = Arc::new(Rotating {
        good: c.token(),
        invalidated: Mutex::new(0),
    });
    let acct = graph::Account::with_throttle(
        USER,
        src.clone(),
        Endpoints::emulated(c.h.base_url()),
        quick(),
    )
    .expect("account");
    let mb = c.mailbox(&acct, "Inbox");
    assert_eq!(mb.list().await.expect("after one 401").len(), 3);
    assert_eq!(*src.invalidated.lock().expect("lock"), 1);

    // A token that stays refused: Auth, after one retry.
    let tokens = StaticTokens::new(USER, [(Audience::Graph, AccessToken::new("bogus"))]);
    let acct = graph::Account::with_throttle(
        USER,
        Arc::new(tokens),
        Endpoints::emulated(c.h.base_url()),
        quick(),
    )
    .expect("account");
    let e = c.mailbox(&acct, "Inbox").list().await.expect_err("refused");
    assert_eq!(e.kind, ErrorKind::Auth);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_folders_share_one_mailbox_limit() {
    let c = Cloud::with(Options {
        latency: Duration::from_millis(20),
        ..Options::default()
    })
    .await;
    for f in 0..10 {
        c.populate(&format!("Inbox/F{f}"), 25).await;
    }
    c.reset_stats().await;
    let acct = c.account();
    let boxes: Vec<Arc<graph::Mailbox>> = (0..10)
        .map(|f| Arc::new(c.mailbox(&acct, &format!("Inbox/F{f}"))))
        .collect();
    // As the engine does: list every folder at once...
    let mut set = tokio::task::JoinSet::new();
    for (i, b) in boxes.iter().enumerate() {
        let b = b.clone();
        set.spawn(async move { (i, b.list().await) });
    }
    let mut listings = vec![Vec::new(); 10];
    while let Some(j) = set.join_next().await {
        let (i, r) = j.expect("task");
        listings[i] = r.expect("list");
    }
    // ...then download with 8 at once across folders.
    let sem = Arc::new(tokio::sync::Semaphore::new(8));
    let mut set = tokio::task::JoinSet::new();
    for (i, l) in listings.iter().enumerate() {
        for e in l {
            let (b, sem, id) = (boxes[i].clone(), sem.clone(), e.id.clone());
            set.spawn(async move {
                let _p = sem.acquire_owned().await;
                let mut out = Vec::new();
                b.fetch(&id, &mut out).await.map(|_| out.len())
            });
        }
    }
    let mut n = 0;
    while let Some(j) = set.join_next().await {
        assert!(j.expect("task").expect("fetch") > 0);
        n += 1;
    }
    assert_eq!(n, 250);
    let s = c.stats().await;
    let mbx = &s["mailboxes"][format!("graph {USER}")];
    assert_eq!(s["throttled"], 0, "{s}");
    assert_eq!(mbx["throttled"], 0, "{s}");
    assert!(mbx["peak_concurrency"].as_u64().expect("peak") <= 4, "{s}");
    assert!(mbx["peak_attempted"].as_u64().expect("peak") <= 4, "{s}");
    assert!(acct.throttle_stats().peak_in_flight <= 4);
}

#[tokio::test]
async fn tokens_never_reach_the_logs() {
    let cap = Capture::default();
    let w = cap.clone();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || w.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(sub);

    let c = Cloud::start().await;
    let ids = c.populate("Inbox", 30).await;
    let token = c.token();
    let tokens = StaticTokens::new(USER, [(Audience::Graph, AccessToken::new(token.clone()))]);
    let acct = graph::Account::with_throttle(
        USER,
        Arc::new(tokens),
        Endpoints::emulated(c.h.base_url()),
        quick(),
    )
    .expect("account");
    let mb = c.mailbox(&acct, "Inbox");
    let mut errors = Vec::new();
    c.fault(json!({"route": "*/delta", "kind": "status", "status": 429, "retry_after": "0.01", "count": 2}))
        .await;
    c.fault(json!({"route": "*/$value", "kind": "truncate", "count": 10}))
        .await;
    mb.list().await.expect("list");
    let mut out = Vec::new();
    errors.push(mb.fetch(&ids[0], &mut out).await.map_err(|e| e.to_string()));
    c.clear_faults().await;
    mb.set_flags(vec![change(&ids[1], Flags::FLAGGED, Flags::NONE)])
        .await;
    mb.delete(vec![ids[2].clone()], DeleteAction::Archive).await;
    // The token is revoked server-side: a refused, then missing, token.
    let bad = StaticTokens::new(
        USER,
        [(Audience::Graph, AccessToken::new(format!("{token}x")))],
    );
    let acct2 = graph::Account::with_throttle(
        USER,
        Arc::new(bad),
        Endpoints::emulated(c.h.base_url()),
        quick(),
    )
    .expect("account");
    errors.push(
        c.mailbox(&acct2, "Inbox")
            .list()
            .await
            .map(|_| ())
            .map_err(|e| format!("{e:?}")),
    );

    let text = cap.text();
    assert!(
        text.contains("throttled"),
        "debug output was captured: {text}"
    );
    assert!(!text.contains(&token), "token in logs");
    for e in errors.into_iter().filter_map(Result::err) {
        assert!(!e.contains(&token), "token in error: {e}");
    }
}
