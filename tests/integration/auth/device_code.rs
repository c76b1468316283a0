//! The device code flow on a clock the test steps: pending, slow down and
//! approval, expiry that restarts and then reports, and its clear refusal
//! for Gmail accounts.

use futures_util::future::BoxFuture;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cloud_mdir_sync::auth::{AccountSpec, Audience, AuthError, Clock, LoginState, TokenSource};

use super::{
    Drive, FakeBrowser, Setup, assert_no_secrets_logged, cloud, is_login_needed, logged_in,
    manager, o365, requests, token_info, wait_until,
};

/// The emulator's clock, where every sleep is reported to the test and
/// returns once the test says how far to move the clock.
struct GateClock {
    app: Arc<fake_cloud::App>,
    calls: tokio::sync::mpsc::UnboundedSender<Duration>,
    steps: Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<u64>>>,
}

impl Clock for GateClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.app.now_ms() as u64)
    }
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        let _ = self.calls.send(d);
        let steps = self.steps.clone();
        let app = self.app.clone();
        Box::pin(async move {
            if let Some(secs) = steps.lock().await.recv().await {
                app.clock.advance_ms(secs as i64 * 1000);
            }
        })
    }
}

#[tokio::test]
async fn device_code_pending_slow_down_approved() {
    let cloud = cloud(false).await;
    let dir = tempfile::tempdir().unwrap();
    let b = FakeBrowser::new(Drive::Nothing);
    let (calls_tx, mut calls) = tokio::sync::mpsc::unbounded_channel();
    let (steps, steps_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let mut s = Setup::with(&b);
    s.clock = Some(Arc::new(GateClock {
        app: cloud.app().clone(),
        calls: calls_tx,
        steps: Arc::new(tokio::sync::Mutex::new(steps_rx)),
    }));
    let mut spec = o365("d@example.com");
    spec.device_code = true;
    spec.smtp = true;
    let m = manager(&cloud, dir.path(), vec![spec], s).await;
    let a = m.account(0).unwrap();
    assert!(is_login_needed(&a.token(Audience::Graph).await));
    // Waiting for the first poll: the code is shown on the page.
    assert_eq!(calls.recv().await, Some(Duration::from_secs(5)));
    let code = a.status().device.expect("device code shown").user_code;
    let page = reqwest::get(m.url()).await.unwrap().text().await.unwrap();
    assert!(page.contains(&code));
    assert!(b.opened().is_empty());
    steps.send(5).unwrap(); // poll 1: authorization_pending
    assert_eq!(calls.recv().await, Some(Duration::from_secs(5)));
    steps.send(1).unwrap(); // poll 2, too early: slow_down
    assert_eq!(calls.recv().await, Some(Duration::from_secs(10)));
    let r = reqwest::Client::new()
        .post(format!("{}/_control/device", cloud.base_url()))
        .json(&serde_json::json!({"user_code": code, "user": "d@example.com"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    steps.send(10).unwrap(); // poll 3: the grant
    logged_in(&m, 0).await;
    assert_eq!(requests(&cloud, "/token"), 3);
    let g = a.token(Audience::Graph).await.unwrap();
    let o = a.token(Audience::Outlook).await.unwrap();
    assert_eq!(token_info(&cloud, &g).1, "Graph");
    assert_eq!(token_info(&cloud, &o).1, "Outlook");
    assert_eq!(a.status().device, None);
    m.shutdown().await;
    assert_no_secrets_logged(&cloud);
}

#[tokio::test]
async fn device_code_expiry_restarts_then_reports() {
    let cloud = cloud(false).await;
    let dir = tempfile::tempdir().unwrap();
    let b = FakeBrowser::new(Drive::Nothing);
    let (calls_tx, mut calls) = tokio::sync::mpsc::unbounded_channel();
    let (steps, steps_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let mut s = Setup::with(&b);
    s.clock = Some(Arc::new(GateClock {
        app: cloud.app().clone(),
        calls: calls_tx,
        steps: Arc::new(tokio::sync::Mutex::new(steps_rx)),
    }));
    s.device_all = true;
    s.device_attempts = 2;
    let m = manager(&cloud, dir.path(), vec![o365("x@example.com")], s).await;
    let a = m.account(0).unwrap();
    m.start_logins();
    let mut codes = VecDeque::new();
    for _ in 0..2 {
        calls.recv().await.unwrap();
        codes.push_back(a.status().device.unwrap().user_code);
        steps.send(901).unwrap(); // past the 900 s lifetime: expired_token
    }
    assert_ne!(codes[0], codes[1], "a new code after expiry");
    wait_until(&m, |m| m.statuses()[0].state == LoginState::Failed).await;
    let st = a.status();
    assert!(st.detail.unwrap().contains("expired"));
    assert_eq!(st.device, None);
    assert_eq!(requests(&cloud, "/devicecode"), 2);
    assert!(is_login_needed(&a.token(Audience::Graph).await));
    // A failed login is not retried behind the user's back.
    assert_eq!(requests(&cloud, "/devicecode"), 2);
    m.shutdown().await;
}

#[tokio::test]
async fn gmail_device_flow_is_refused_clearly() {
    let cloud = cloud(true).await;
    let dir = tempfile::tempdir().unwrap();
    let b = FakeBrowser::new(Drive::Nothing);
    let mut g = AccountSpec::gmail("g@gmail.com");
    g.device_code = true;
    let m = manager(&cloud, dir.path(), vec![g], Setup::with(&b)).await;
    let r = m.account(0).unwrap().token(Audience::Gmail).await;
    match &r {
        Err(AuthError::LoginNeeded { reason, .. }) => {
            assert!(reason.contains("device code"), "{reason}");
            assert!(reason.contains("Gmail"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(m.statuses()[0].state, LoginState::Failed);
    assert_eq!(cloud.app().stats().to_json()["requests"], 0);
    assert!(b.opened().is_empty());
    m.shutdown().await;

    // With device code for all accounts, Gmail ones use the browser.
    let b = FakeBrowser::new(Drive::Follow);
    let mut s = Setup::with(&b);
    s.device_all = true;
    let mut g = AccountSpec::gmail("g@gmail.com");
    g.smtp = true;
    let m = manager(&cloud, dir.path(), vec![g], s).await;
    m.start_logins();
    logged_in(&m, 0).await;
    let a = m.account(0).unwrap();
    let t = a.token(Audience::Gmail).await.unwrap();
    assert_eq!(a.token(Audience::GoogleMail).await.unwrap(), t);
    {
        let st = cloud.app().lock();
        let info = &st.auth.access[t.secret()];
        assert!(info.has_any(&["gmail.modify"]));
        assert!(
            info.scopes
                .iter()
                .any(|s| s.as_str() == "https://mail.google.com/")
        );
    }
    assert_eq!(requests(&cloud, "/device/code"), 0);
    m.shutdown().await;
    assert_no_secrets_logged(&cloud);
}
