//! A stop asked while the daemon waits on the cloud (its own request window,
//! here: a mailbox with more messages than the window allows) ends the run
//! within 2 s with success, keeps what was downloaded (in the store and the
//! id cache), and the next start downloads only the rest.

use std::time::{Duration, Instant};

use cloud_mdir_sync::cloud::graph::ThrottleConfig;
use cloud_mdir_sync::daemon;

use crate::graph::{Cloud, quick};
use crate::local_edits::{files, world};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_waiting_for_the_request_window_is_prompt_and_keeps_progress() {
    let c = Cloud::start().await;
    c.populate("Inbox", 30).await;
    let (home, _) = world(15);
    let md = home.path().join("mail/inbox");
    // Room for the folder lookup, the listing and ten downloads, then a
    // ten-minute wait for the window.
    let small_window = ThrottleConfig {
        window_budget: 12,
        window: Duration::from_secs(600),
        ..quick()
    };
    let folder = |acct| c.inbox_folder(&acct);
    let mut before = 0;
    for once in [false, true] {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let opts = daemon::Options {
            once,
            ..daemon::Options::default()
        };
        let acct = c.account_with(small_window.clone());
        let task = tokio::spawn(daemon::run(home.load(), opts, vec![folder(acct)], rx));
        // Wait until the window is spent and the daemon is waiting.
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.route_count("graph GET /me/messages/{id}/$value").await < 10 {
            assert!(Instant::now() < deadline, "downloads did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let asked = Instant::now();
        tx.send(true).expect("stop");
        let r = tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("stopped within 2 s")
            .expect("join");
        assert!(r.is_ok(), "once={once}: {r:?}");
        assert!(asked.elapsed() < Duration::from_secs(2));
        // The run ended promptly; its downloads are in the store and the
        // id cache, so the next run continues where it stopped.
        let downloads = c.route_count("graph GET /me/messages/{id}/$value").await;
        assert!(downloads > before && downloads < 30, "{}", c.stats().await);
        before = downloads;
    }
    // A run with room finishes the job and downloads only the last ten.
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let opts = daemon::Options {
        once: true,
        ..daemon::Options::default()
    };
    daemon::run(home.load(), opts, vec![folder(c.account())], rx)
        .await
        .expect("full run");
    let downloads = c.route_count("graph GET /me/messages/{id}/$value").await;
    assert_eq!(
        downloads,
        30,
        "nothing downloaded twice: {}",
        c.stats().await
    );
    assert_eq!(files(&md).len(), 30);
}
