//! Gmail downloads: LF content, and broken answers that are errors (never
//! partial content) or retried.

use cloud_mdir_sync::cloud::{CloudMailbox, ErrorKind};
use fake_cloud::QuotaMode;
use serde_json::{Value, json};

use crate::util::lf;

use super::{Env, fast, raw_message};

#[tokio::test]
async fn fetch_gives_lf_content_and_never_partial_success() {
    let env = Env::start(QuotaMode::Off).await;
    let ids = env.populate("INBOX", 20, 61).await;
    let mb = env.mailbox(fast(), "INBOX");
    let state = env.mailbox_state(true).await;
    for m in state["gmail"]["messages"].as_array().expect("messages") {
        let id = m["id"].as_str().expect("id");
        let mut got: Vec<u8> = Vec::new();
        mb.fetch(id, &mut got).await.expect("fetch");
        let want = lf(m);
        assert_eq!(String::from_utf8_lossy(&got), want, "message {id}");
        assert!(!got.windows(2).any(|w| w == b"\r\n"));
    }

    // A message we deliver with CRLF comes back with LF.
    let id = env.deliver(&raw_message(1), &["INBOX"]).await;
    let mut got = Vec::new();
    mb.fetch(&id, &mut got).await.expect("fetch");
    assert_eq!(got, raw_message(1).replace("\r\n", "\n").into_bytes());

    // Broken answers, more of them than the client retries: an error, and
    // nothing written.
    for kind in ["truncate", "bad_json", "reset"] {
        env.fault(json!({"route": format!("*/messages/{}", ids[0]), "kind": kind, "count": 10}))
            .await;
        let mut got = Vec::new();
        let e = mb.fetch(&ids[0], &mut got).await.expect_err(kind);
        assert_eq!(e.kind, ErrorKind::Retry, "{kind}: {e}");
        assert!(got.is_empty(), "{kind}: partial content written");
        env.control("DELETE", "faults", Value::Null).await;
    }
    // A 200 carrying an error envelope is an error too.
    env.fault(json!({"route": format!("*/messages/{}", ids[1]), "kind": "error200", "status": 500, "count": 10}))
        .await;
    let mut got = Vec::new();
    assert!(mb.fetch(&ids[1], &mut got).await.is_err());
    assert!(got.is_empty());
    env.control("DELETE", "faults", Value::Null).await;

    // One broken answer is retried and the content is exact.
    for kind in ["truncate", "bad_json", "reset"] {
        env.fault(json!({"route": format!("*/messages/{}", ids[2]), "kind": kind, "count": 1}))
            .await;
        let mut got = Vec::new();
        mb.fetch(&ids[2], &mut got).await.expect(kind);
        let mut clean = Vec::new();
        mb.fetch(&ids[2], &mut clean).await.expect("clean");
        assert_eq!(got, clean, "{kind}");
    }

    // Unknown message: NotFound.
    let mut got = Vec::new();
    let e = mb
        .fetch("0000000000000001", &mut got)
        .await
        .expect_err("404");
    assert_eq!(e.kind, ErrorKind::NotFound);
}
