//! Graph downloads: LF content, and truncated, reset or error answers
//! refused or retried.

use cloud_mdir_sync::cloud::{CloudMailbox, ErrorKind};
use serde_json::json;

use crate::util::lf;

use super::Cloud;

#[tokio::test]
async fn fetch_gives_lf_content_and_refuses_broken_downloads() {
    let c = Cloud::start().await;
    let ids = c.populate("Inbox", 5).await;
    // Big enough to arrive in several chunks, so CRLFs straddle chunk ends.
    let body: String = (0..20_000).map(|i| format!("line {i}\r\n")).collect();
    let raw = format!("Message-ID: <big@example.com>\r\nSubject: big\r\n\r\n{body}");
    let big = c.deliver("Inbox", &raw).await;
    let acct = c.account();
    let mb = c.mailbox(&acct, "Inbox");

    let stored = c.messages(true).await;
    let want_of = |id: &str| {
        let m = stored.iter().find(|m| m["id"] == id).expect("stored");
        lf(m)
    };
    for id in ids.iter().chain([&big]) {
        let mut out = Vec::new();
        mb.fetch(id, &mut out).await.expect("fetch");
        assert!(!out.contains(&b'\r'));
        assert_eq!(String::from_utf8_lossy(&out), want_of(id));
    }

    let fetch = |id: String| {
        let mb = &mb;
        async move {
            let mut out = Vec::new();
            let r = mb.fetch(&id, &mut out).await;
            (r, out)
        }
    };
    // Truncated (full Content-Length, half the body) every time: an error.
    c.fault(json!({"route": "*/$value", "kind": "truncate", "count": 50}))
        .await;
    let (r, _) = fetch(big.clone()).await;
    assert_eq!(r.expect_err("truncated").kind, ErrorKind::Retry);
    c.clear_faults().await;
    // Reset every time: an error.
    c.fault(json!({"route": "*/$value", "kind": "reset", "count": 50}))
        .await;
    let (r, _) = fetch(big.clone()).await;
    assert_eq!(r.expect_err("reset").kind, ErrorKind::Retry);
    c.clear_faults().await;
    // A reset before any byte, once: retried, complete.
    c.fault(json!({"route": "*/$value", "kind": "reset", "count": 1}))
        .await;
    let (r, out) = fetch(big.clone()).await;
    r.expect("retried after a reset");
    assert_eq!(String::from_utf8_lossy(&out), want_of(&big));
    // HTTP 200 with a JSON error instead of MIME: retried.
    c.fault(json!({"route": "*/$value", "kind": "error200", "status": 503, "count": 1}))
        .await;
    let (r, out) = fetch(ids[0].clone()).await;
    r.expect("retried after a 200 error");
    assert_eq!(out, want_of(&ids[0]).into_bytes());
    // Unknown id: NotFound.
    let (r, _) = fetch("AAkALgNoSuchMessage".into()).await;
    assert_eq!(r.expect_err("missing").kind, ErrorKind::NotFound);
}
