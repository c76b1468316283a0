//! The login page: an open page gets the pending login through its events
//! instead of a new browser window, and (ignored by default) the page in a
//! real headless Chromium logs in two accounts.

use std::time::Duration;

use cloud_mdir_sync::auth::{AccountSpec, Audience, TokenSource};

use super::{
    Drive, FakeBrowser, Setup, assert_no_secrets_logged, cloud, is_login_needed, logged_in,
    manager, o365,
};

#[tokio::test]
async fn an_open_page_gets_the_login_instead_of_a_new_window() {
    let cloud = cloud(true).await;
    let dir = tempfile::tempdir().unwrap();
    let b = FakeBrowser::new(Drive::Nothing);
    let m = manager(
        &cloud,
        dir.path(),
        vec![o365("p@example.com")],
        Setup::with(&b),
    )
    .await;
    let mut events = reqwest::get(format!("{}events", m.url())).await.unwrap();
    assert_eq!(
        events.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut seen = String::new();
    let mut next_event = async || -> serde_json::Value {
        loop {
            if let Some(end) = seen.find("\n\n") {
                let ev: String = seen.drain(..end + 2).collect();
                if let Some(data) = ev.lines().find_map(|l| l.strip_prefix("data:")) {
                    return serde_json::from_str(data.trim()).unwrap();
                }
                continue;
            }
            let chunk = events.chunk().await.unwrap().expect("stream open");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    let first = next_event().await;
    assert_eq!(first["next_login"], serde_json::Value::Null);
    assert_eq!(m.pages_connected(), 1);
    assert!(is_login_needed(
        &m.account(0).unwrap().token(Audience::Graph).await
    ));
    let ev = loop {
        let ev = next_event().await;
        if !ev["next_login"].is_null() {
            break ev;
        }
    };
    assert_eq!(ev["next_login"], "/login/0");
    assert!(b.opened().is_empty(), "no window while a page is open");
    m.shutdown().await;
    assert_no_secrets_logged(&cloud);
}

/// The page in a real browser: headless Chromium opens `/` first; then
/// two logins become pending; the page's script follows the events to each
/// login and back, and no other window is asked for. Needs Debian's
/// `chromium`: `cargo test --test integration real_browser -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn real_browser_page_logs_in_two_accounts() {
    let cloud = cloud(true).await;
    let dir = tempfile::tempdir().unwrap();
    let b = FakeBrowser::new(Drive::Nothing);
    let m = manager(
        &cloud,
        dir.path(),
        vec![o365("a@example.com"), AccountSpec::gmail("g@gmail.com")],
        Setup::with(&b),
    )
    .await;
    let profile = tempfile::tempdir().unwrap();
    let mut chromium = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            &format!("--user-data-dir={}", profile.path().display()),
            "--remote-debugging-port=0",
            &m.url(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium runs");
    wait_until_polled(|| m.pages_connected() == 1).await;
    m.start_logins();
    logged_in(&m, 0).await;
    logged_in(&m, 1).await;
    assert!(b.opened().is_empty(), "no window while the page is open");
    // Back on the page, which connects again.
    wait_until_polled(|| m.pages_connected() == 1).await;
    let _ = chromium.kill().await;
    m.shutdown().await;
}

/// Poll `pred` (for states no event announces), up to a minute.
async fn wait_until_polled(pred: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while !pred() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("state reached");
}
