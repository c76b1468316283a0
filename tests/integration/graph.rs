//! The Office365 backend against the emulator, at the library level: folder
//! lookup, delta listings equal to the emulator's state, changes made by a
//! second client, restarts from a cursor, downloads (CRLF, truncation,
//! resets), flag writes incl. the replied state, deletions, throttling and
//! faults, per-mailbox concurrency, the sync engine over Graph, and a log
//! scan for tokens.

use futures_util::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloud_mdir_sync::auth::{AccessToken, Audience, AuthError, StaticTokens, TokenSource};
use cloud_mdir_sync::cloud::graph::wire::parse_utc;
use cloud_mdir_sync::cloud::graph::{GraphAccount, GraphMailbox, ThrottleConfig};
use cloud_mdir_sync::cloud::{CloudEntry, CloudMailbox, ErrorKind, FlagChange};
use cloud_mdir_sync::config;
use cloud_mdir_sync::endpoints::Endpoints;
use cloud_mdir_sync::sync::engine::{Engine, Folder};
use cloud_mdir_sync::types::DeleteAction;
use cloud_mdir_sync::types::Flags;
use fake_cloud::{FakeCloud, Handle, Options};
use serde_json::{Value, json};

use crate::util::{Capture, Home, StoredCursor, build_engine, lf, maildir_files};

const USER: &str = "user@example.com";

/// The emulator plus a plain HTTP client for its control routes and for
/// acting as a second Graph client.
pub(crate) struct Cloud {
    pub(crate) h: Handle,
    http: reqwest::Client,
}

/// Fast retries so fault tests do not sleep for long; limits as documented.
pub(crate) fn quick() -> ThrottleConfig {
    ThrottleConfig {
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        default_retry_after: Duration::from_millis(100),
        ..ThrottleConfig::default()
    }
}

impl Cloud {
    pub(crate) async fn start() -> Cloud {
        Cloud::with(Options::default()).await
    }

    pub(crate) async fn with(opts: Options) -> Cloud {
        Cloud {
            h: FakeCloud::start(opts).await.expect("emulator"),
            http: reqwest::Client::new(),
        }
    }

    pub(crate) fn token(&self) -> String {
        self.h.mint_token(USER, "graph", &[]).expect("token")
    }

    /// An account with its own freshly minted token.
    pub(crate) fn account(&self) -> GraphAccount {
        self.account_with(quick())
    }

    pub(crate) fn account_with(&self, cfg: ThrottleConfig) -> GraphAccount {
        let tokens = StaticTokens::new(USER, [(Audience::Graph, AccessToken::new(self.token()))]);
        GraphAccount::with_throttle(
            USER,
            Arc::new(tokens),
            Endpoints::emulated(self.h.base_url()),
            cfg,
        )
        .expect("account")
    }

    pub(crate) fn mailbox(&self, account: &GraphAccount, path: &str) -> GraphMailbox {
        GraphMailbox::new(account.clone(), path, &format!("office365:{USER}/{path}"))
    }

    /// The inbox as the engine's folder (deletions archive).
    pub(crate) fn inbox_folder(&self, account: &GraphAccount) -> Folder {
        Folder {
            cloud: Arc::new(self.mailbox(account, "Inbox")),
            key: format!("office365:{USER}/Inbox"),
            delete_action: DeleteAction::Archive,
        }
    }

    pub(crate) async fn ctl(
        &self,
        method: reqwest::Method,
        route: &str,
        body: Option<Value>,
    ) -> Value {
        let url = format!("{}/_control/{route}", self.h.base_url());
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("control request");
        assert!(
            resp.status().is_success(),
            "control {route}: {}",
            resp.status()
        );
        resp.json().await.expect("control JSON")
    }

    pub(crate) async fn populate(&self, folder: &str, count: usize) -> Vec<String> {
        let v = self
            .ctl(
                reqwest::Method::POST,
                "populate",
                Some(json!({"user": USER, "service": "o365", "folder": folder, "count": count})),
            )
            .await;
        v["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|i| i.as_str().expect("id").to_string())
            .collect()
    }

    pub(crate) async fn deliver(&self, folder: &str, raw: &str) -> String {
        let v = self
            .ctl(
                reqwest::Method::POST,
                "deliver",
                Some(json!({"user": USER, "folder": folder, "raw": raw})),
            )
            .await;
        v["id"].as_str().expect("id").to_string()
    }

    pub(crate) async fn fault(&self, spec: Value) {
        self.ctl(reqwest::Method::POST, "faults", Some(spec)).await;
    }

    pub(crate) async fn clear_faults(&self) {
        self.ctl(reqwest::Method::DELETE, "faults", None).await;
    }

    pub(crate) async fn stats(&self) -> Value {
        self.ctl(reqwest::Method::GET, "stats", None).await
    }

    pub(crate) async fn reset_stats(&self) {
        self.ctl(reqwest::Method::DELETE, "stats", None).await;
    }

    /// Every message of the mailbox (with `raw` when asked).
    pub(crate) async fn messages(&self, raw: bool) -> Vec<Value> {
        let q = if raw { "&raw=1" } else { "" };
        let v = self
            .ctl(
                reqwest::Method::GET,
                &format!("mailbox?user={USER}{q}"),
                None,
            )
            .await;
        v["o365"]["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    async fn message(&self, id: &str) -> Value {
        self.messages(false)
            .await
            .into_iter()
            .find(|m| m["id"] == id)
            .unwrap_or(Value::Null)
    }

    /// The emulator's view of a folder, as our listing should show it.
    pub(crate) async fn expected(
        &self,
        folder: &str,
    ) -> BTreeMap<String, (Flags, Option<String>, Option<i64>)> {
        self.messages(false)
            .await
            .into_iter()
            .filter(|m| m["folder"] == folder)
            .map(|m| {
                let id = m["id"].as_str().expect("id").to_string();
                let props = &m["singleValueExtendedProperties"];
                let int = |k: &str| props[k].as_str().and_then(|v| v.parse::<i64>().ok());
                // behavior.md §3, written out independently of the backend.
                let replied = matches!(int("Integer 0x1080"), Some(261 | 262))
                    || matches!(int("Integer 0x1081"), Some(102..=104))
                    || int("Integer 0xe17").is_some_and(|v| v & 0x200 != 0);
                let mut f = Flags::NONE;
                f = f.with(Flags::READ, m["isRead"] == true);
                f = f.with(Flags::FLAGGED, m["flag"]["flagStatus"] == "flagged");
                f = f.with(Flags::REPLIED, replied);
                let mid = m["internetMessageId"].as_str().map(str::to_string);
                let received = m["receivedDateTime"].as_str().and_then(parse_utc);
                (id, (f, mid, received))
            })
            .collect()
    }

    /// A request through the real Graph routes as a second client.
    pub(crate) async fn graph(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{}/graph.microsoft.com/v1.0{path}", self.h.base_url());
        let mut req = self
            .http
            .request(method, url)
            .bearer_auth(self.token())
            .header("Prefer", "IdType=\"ImmutableId\"");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("graph request");
        let status = resp.status().as_u16();
        let v = resp.json().await.unwrap_or(Value::Null);
        (status, v)
    }

    /// Total requests served since the last reset, control routes excluded.
    async fn requests(&self) -> u64 {
        self.stats().await["requests"].as_u64().unwrap_or(0)
    }

    pub(crate) async fn route_count(&self, route: &str) -> u64 {
        self.stats().await["routes"][route]["requests"]
            .as_u64()
            .unwrap_or(0)
    }
}

fn as_map(list: &[CloudEntry]) -> BTreeMap<String, (Flags, Option<String>, Option<i64>)> {
    list.iter()
        .map(|e| {
            (
                e.id.to_string(),
                (
                    e.flags,
                    e.email_id.as_deref().map(str::to_string),
                    e.received_time,
                ),
            )
        })
        .collect()
}

fn change(id: &str, set: Flags, clear: Flags) -> FlagChange {
    FlagChange {
        id: id.to_string(),
        set,
        clear,
    }
}

#[tokio::test]
async fn nested_folders_are_found_and_bad_paths_named() {
    let c = Cloud::start().await;
    c.populate("Inbox/Lists/Rust", 3).await;
    c.populate("Inbox/Bob's", 2).await;
    let acct = c.account();

    let rust = c.mailbox(&acct, "Inbox/Lists/Rust");
    assert_eq!(rust.list().await.expect("list").len(), 3);
    let bob = c.mailbox(&acct, "Inbox/Bob's");
    assert_eq!(bob.list().await.expect("quote escaped").len(), 2);

    // The Python program's configs say "inbox": the well-known name finds
    // the Inbox in any language, and other levels match ignoring case.
    let lower = c.mailbox(&acct, "inbox/lists/rust");
    assert_eq!(lower.list().await.expect("case-insensitive path").len(), 3);

    let missing = c.mailbox(&acct, "Inbox/Nope/Rust");
    let e = missing.list().await.expect_err("missing");
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.contains("\"Inbox/Nope\""), "{e}");

    // Eleven folders of one name under one parent (the service refuses to
    // create them; put them in directly): the lookup pages through all of
    // them (10 per page) and reports the ambiguity.
    {
        let mut st = c.h.app().lock();
        let mb = st.graph_mailbox(USER);
        let inbox = mb.resolve_folder("inbox").expect("inbox");
        for i in 0..11 {
            let id = format!("AAMkAdup{i}");
            mb.folders.insert(
                id.clone(),
                fake_cloud::store_graph::Folder {
                    id,
                    display_name: "Twin".into(),
                    parent_id: inbox.clone(),
                    well_known: None,
                    hidden: false,
                },
            );
        }
    }
    let e = c
        .mailbox(&acct, "Inbox/Twin")
        .list()
        .await
        .expect_err("ambiguous");
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(
        e.message.contains("ambiguous") && e.message.contains("11"),
        "{e}"
    );
    assert_eq!(c.stats().await["throttled"], 0);
}

#[tokio::test]
async fn listing_matches_the_emulator_exactly() {
    let c = Cloud::start().await;
    c.populate("Inbox", 1500).await;
    c.populate("Archive", 20).await;
    let acct = c.account();
    let inbox = c.mailbox(&acct, "Inbox");
    let got = inbox.list().await.expect("list");
    let want = c.expected("Inbox").await;
    assert_eq!(want.len(), 1500);
    assert_eq!(as_map(&got), want);
    // The populated mail has every replied source and flag represented.
    let count = |f: Flags| want.values().filter(|(x, _, _)| x.contains(f)).count();
    assert!(count(Flags::REPLIED) > 0 && count(Flags::READ) > 0 && count(Flags::FLAGGED) > 0);
    // One folder lookup (by its well-known name) and two delta pages of up
    // to 1000.
    assert_eq!(
        c.route_count("graph GET /me/mailFolders").await
            + c.route_count("graph GET /me/mailFolders/{id}").await,
        1
    );
    assert_eq!(
        c.route_count("graph GET /me/mailFolders/{id}/messages/delta")
            .await,
        2
    );
    assert_eq!(c.stats().await["throttled"], 0);
}

#[tokio::test]
async fn second_client_changes_show_in_the_next_listing() {
    let c = Cloud::start().await;
    let ids = c.populate("Inbox", 40).await;
    let acct = c.account();
    let inbox = c.mailbox(&acct, "Inbox");
    inbox.list().await.expect("first list");

    use reqwest::Method;
    let msg = |i: usize| format!("/me/messages/{}", ids[i]);
    let patch = |i: usize, body: Value| (Method::PATCH, msg(i), body);
    for (m, path, body) in [
        patch(0, json!({"isRead": true})),
        patch(1, json!({"isRead": false})),
        patch(2, json!({"flag": {"flagStatus": "flagged"}})),
        patch(3, json!({"flag": {"flagStatus": "complete"}})),
        patch(
            4,
            json!({"singleValueExtendedProperties": [{"id": "Integer 0x1081", "value": "104"}]}),
        ),
        patch(
            5,
            json!({"singleValueExtendedProperties": [{"id": "Integer 0x1080", "value": "261"}]}),
        ),
        (
            Method::POST,
            format!("{}/move", msg(6)),
            json!({"destinationId": "archive"}),
        ),
    ] {
        let (status, _) = c.graph(m, &path, Some(body)).await;
        assert!((200..300).contains(&status), "{path}: {status}");
    }
    let (status, _) = c.graph(Method::DELETE, &msg(7), None).await;
    assert_eq!(status, 204);
    let new = c
        .deliver(
            "Inbox",
            "Message-ID: <new@example.com>\r\nSubject: new\r\n\r\nhello\r\n",
        )
        .await;

    let got = inbox.list().await.expect("second list");
    let want = c.expected("Inbox").await;
    assert_eq!(as_map(&got), want);
    assert!(want.contains_key(&new));
    assert!(!want.contains_key(&ids[6]) && !want.contains_key(&ids[7]));
    assert_eq!(want.len(), 39);

    // Nothing changed: an idle poll is one request.
    c.reset_stats().await;
    let again = inbox.list().await.expect("idle list");
    assert_eq!(again, got);
    assert_eq!(c.requests().await, 1);
}

#[tokio::test]
async fn list_changes_hands_out_what_the_delta_round_changed() {
    use cloud_mdir_sync::cloud::Listed;
    use reqwest::Method;
    let c = Cloud::start().await;
    let ids = c.populate("Inbox", 20).await;
    let acct = c.account();
    let mb = c.mailbox(&acct, "Inbox");
    let Listed::Full(first) = mb.list_changes().await.expect("first") else {
        panic!("the first round lists everything");
    };
    assert_eq!(as_map(&first), c.expected("Inbox").await);
    assert!(mb.list_changes().await.expect("idle").is_unchanged());

    let msg = |i: usize| format!("/me/messages/{}", ids[i]);
    let (status, _) = c
        .graph(Method::PATCH, &msg(2), Some(json!({"isRead": true})))
        .await;
    assert_eq!(status, 200);
    let (status, _) = c.graph(Method::DELETE, &msg(5), None).await;
    assert_eq!(status, 204);
    let new = c
        .deliver(
            "Inbox",
            "Message-ID: <lc@example.com>\r\nSubject: x\r\n\r\nhi\r\n",
        )
        .await;
    let Listed::Changes { upsert, gone } = mb.list_changes().await.expect("changes") else {
        panic!("an incremental round hands out its changes");
    };
    let mut up: Vec<&str> = upsert.iter().map(|e| &*e.id).collect();
    up.sort();
    let mut want = vec![ids[2].as_str(), new.as_str()];
    want.sort();
    assert_eq!(up, want);
    assert_eq!(gone, vec![ids[5].clone()]);
    // The changes applied to the first listing give the folder as it is.
    let mut listing = as_map(&first);
    listing.extend(as_map(&upsert));
    for id in &gone {
        listing.remove(id);
    }
    assert_eq!(listing, c.expected("Inbox").await);
    // `list` still answers with the whole folder.
    assert_eq!(as_map(&mb.list().await.expect("list")), listing);
}

#[tokio::test]
async fn restart_from_a_cursor_is_one_request() {
    let c = Cloud::start().await;
    let ids = c.populate("Inbox/Sub", 30).await;
    let first = {
        let acct = c.account();
        let mb = c.mailbox(&acct, "Inbox/Sub");
        let got = mb.list().await.expect("list");
        (got, StoredCursor::of(&mb).expect("cursor"))
    };
    let saved = first.1.clone();
    assert_eq!(saved.records.len(), 30);

    // Changed while we were stopped.
    c.graph(
        reqwest::Method::PATCH,
        &format!("/me/messages/{}", ids[0]),
        Some(json!({"flag": {"flagStatus": "flagged"}})),
    )
    .await;
    c.reset_stats().await;
    let acct = c.account();
    let mb = c.mailbox(&acct, "Inbox/Sub");
    saved.load(&mb);
    let got = mb.list().await.expect("list after restart");
    assert_eq!(c.requests().await, 1, "{}", c.stats().await);
    assert_eq!(as_map(&got), c.expected("Inbox/Sub").await);
    assert_ne!(got, first.0);

    // A cursor for another folder is ignored (full listing, correct result).
    let other = c.mailbox(&acct, "Inbox");
    saved.load(&other);
    assert_eq!(
        as_map(&other.list().await.expect("list")),
        c.expected("Inbox").await
    );
    // Garbage is ignored too.
    let fresh = c.mailbox(&acct, "Inbox/Sub");
    fresh.load_cursor(json!({"v": 99}), Vec::new());
    assert_eq!(fresh.list().await.expect("list").len(), 30);

    // The change after the restart costs its own record; idle polls hand
    // out nothing (no state write); a restart from the stored cursor is
    // still one request.
    let mut stored = saved.clone();
    let d = mb.cursor_delta().expect("delta");
    assert!(!d.full && d.gone.is_empty());
    assert_eq!(d.put.len(), 1);
    assert_eq!(d.put[0].0, ids[0]);
    stored.apply(d);
    mb.list().await.expect("idle");
    mb.list().await.expect("idle");
    assert!(mb.cursor_delta().is_none());
    let again = c.mailbox(&acct, "Inbox/Sub");
    stored.load(&again);
    c.reset_stats().await;
    assert_eq!(
        as_map(&again.list().await.expect("list")),
        c.expected("Inbox/Sub").await
    );
    assert_eq!(c.requests().await, 1);
    c.graph(
        reqwest::Method::PATCH,
        &format!("/me/messages/{}", ids[1]),
        Some(json!({"isRead": true})),
    )
    .await;
    mb.list().await.expect("list");
    assert!(stored.save(&mb));
    let last = c.mailbox(&acct, "Inbox/Sub");
    stored.load(&last);
    assert_eq!(
        as_map(&last.list().await.expect("list")),
        c.expected("Inbox/Sub").await
    );
    // A cursor with an unreadable record is dropped: full listing.
    let holed = c.mailbox(&acct, "Inbox/Sub");
    let mut records: Vec<String> = stored.records.values().cloned().collect();
    records[0] = "[1,".into();
    holed.load_cursor(stored.head.clone().expect("head"), records);
    assert!(holed.cursor_delta().is_none());
}

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

#[tokio::test]
async fn flag_writes_land_as_behavior_says() {
    let c = Cloud::start().await;
    let body = |n: usize| format!("Message-ID: <f{n}@example.com>\r\nSubject: {n}\r\n\r\nx\r\n");
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(c.deliver("Inbox", &body(n)).await);
    }
    let acct = c.account();
    let mb = c.mailbox(&acct, "Inbox");
    mb.list().await.expect("list");
    let r = mb
        .set_flags(vec![
            change(&ids[0], Flags::READ, Flags::NONE),
            change(&ids[1], Flags::FLAGGED, Flags::NONE),
            change(&ids[2], Flags::REPLIED | Flags::READ, Flags::NONE),
            change(&ids[3], Flags::REPLIED, Flags::NONE),
            change(&ids[4], Flags::DELETED, Flags::NONE),
        ])
        .await;
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    let m0 = c.message(&ids[0]).await;
    assert_eq!(
        (m0["isRead"].clone(), m0["flag"]["flagStatus"].clone()),
        (json!(true), json!("notFlagged"))
    );
    let m1 = c.message(&ids[1]).await;
    assert_eq!(
        (m1["isRead"].clone(), m1["flag"]["flagStatus"].clone()),
        (json!(false), json!("flagged"))
    );
    for id in [&ids[2], &ids[3]] {
        let p = &c.message(id).await["singleValueExtendedProperties"];
        assert_eq!(p["Integer 0x1081"], "103");
        assert_eq!(p["Integer 0x1080"], "261");
        let when = p["SystemTime 0x1082"].as_str().expect("verb time");
        assert!(parse_utc(when).is_some(), "{when}");
    }
    assert_eq!(
        as_map(&mb.list().await.expect("list")),
        c.expected("Inbox").await
    );
    let flags = |l: &[CloudEntry], id: &str| l.iter().find(|e| &*e.id == id).map(|e| e.flags);
    let l = mb.list().await.expect("list");
    assert_eq!(flags(&l, &ids[2]), Some(Flags::REPLIED | Flags::READ));
    assert_eq!(flags(&l, &ids[3]), Some(Flags::REPLIED));

    // Clearing: the icon becomes read (256) or new (-1), the verb neutral.
    let r = mb
        .set_flags(vec![
            change(&ids[2], Flags::NONE, Flags::REPLIED),
            change(&ids[3], Flags::NONE, Flags::REPLIED),
            change(&ids[0], Flags::NONE, Flags::READ),
            change(&ids[1], Flags::NONE, Flags::FLAGGED),
        ])
        .await;
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    let p2 = c.message(&ids[2]).await["singleValueExtendedProperties"].clone();
    let p3 = c.message(&ids[3]).await["singleValueExtendedProperties"].clone();
    assert_eq!(p2["Integer 0x1080"], "256");
    assert_eq!(p3["Integer 0x1080"], "-1");
    assert_eq!(p2["Integer 0x1081"], "0");
    let l = mb.list().await.expect("list");
    assert_eq!(as_map(&l), c.expected("Inbox").await);
    for id in &ids[..4] {
        let want = if *id == ids[2] {
            Flags::READ
        } else {
            Flags::NONE
        };
        assert_eq!(flags(&l, id), Some(want), "{id}");
    }

    // Deletions: archive vs deleted items.
    let r = mb.delete(vec![ids[0].clone()], DeleteAction::Archive).await;
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    let r = mb.delete(vec![ids[1].clone()], DeleteAction::Delete).await;
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    assert_eq!(c.message(&ids[0]).await["folder"], "Archive");
    assert_eq!(c.message(&ids[1]).await["folder"], "Deleted Items");
    let l = mb.list().await.expect("list");
    assert_eq!(l.len(), 4);
    // A message that no longer exists: NotFound.
    let r = mb
        .set_flags(vec![change("AAkALgGone", Flags::READ, Flags::NONE)])
        .await;
    assert_eq!(r[0].as_ref().expect_err("gone").kind, ErrorKind::NotFound);
    assert_eq!(c.stats().await["throttled"], 0);
}

#[tokio::test]
async fn many_changes_go_in_batches_of_twenty() {
    let c = Cloud::start().await;
    let ids = c.populate("Inbox", 60).await;
    let acct = c.account();
    let mb = c.mailbox(&acct, "Inbox");
    let before = mb.list().await.expect("list");
    c.reset_stats().await;
    let changes: Vec<FlagChange> = ids[..45]
        .iter()
        .map(|id| {
            let read = before
                .iter()
                .any(|e| *e.id == **id && e.flags.contains(Flags::READ));
            if read {
                change(id, Flags::FLAGGED, Flags::READ)
            } else {
                change(id, Flags::READ | Flags::FLAGGED, Flags::NONE)
            }
        })
        .collect();
    let r = mb.set_flags(changes).await;
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    assert_eq!(c.route_count("graph POST /$batch").await, 3);
    assert_eq!(
        c.route_count("graph PATCH /me/messages/{id} (in $batch)")
            .await,
        45
    );
    let after = mb.list().await.expect("list");
    assert_eq!(as_map(&after), c.expected("Inbox").await);
    for id in &ids[..45] {
        let was = before
            .iter()
            .find(|e| *e.id == **id)
            .map(|e| e.flags)
            .unwrap_or_default();
        let now = after
            .iter()
            .find(|e| *e.id == **id)
            .map(|e| e.flags)
            .unwrap_or_default();
        assert_eq!(
            now.contains(Flags::READ),
            !was.contains(Flags::READ),
            "{id}"
        );
        assert!(now.contains(Flags::FLAGGED));
    }
    let s = c.stats().await;
    assert_eq!(s["throttled"], 0, "{s}");
    let peak = s["mailboxes"][format!("graph {USER}")]["peak_attempted"].as_u64();
    assert!(peak.expect("peak") <= 4, "{s}");
}

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
async fn expired_delta_state_relists_without_losing_anything() {
    for mode in ["410", "400"] {
        let c = Cloud::start().await;
        let ids = c.populate("Inbox", 1200).await;
        let acct = c.account();
        let mb = c.mailbox(&acct, "Inbox");
        mb.list().await.expect("list");
        // Changes, then the service forgets every delta token.
        c.graph(
            reqwest::Method::PATCH,
            &format!("/me/messages/{}", ids[0]),
            Some(json!({"flag": {"flagStatus": "flagged"}})),
        )
        .await;
        c.graph(
            reqwest::Method::POST,
            &format!("/me/messages/{}/move", ids[1]),
            Some(json!({"destinationId": "archive"})),
        )
        .await;
        c.ctl(
            reqwest::Method::POST,
            "expire-delta",
            Some(json!({"user": USER, "mode": mode})),
        )
        .await;
        c.reset_stats().await;
        let got = mb.list().await.expect("full relist");
        assert_eq!(as_map(&got), c.expected("Inbox").await, "mode {mode}");
        assert_eq!(got.len(), 1199);
        // The failed incremental request, then two full pages.
        assert_eq!(c.requests().await, 3, "mode {mode}");
        c.reset_stats().await;
        mb.list().await.expect("idle");
        assert_eq!(c.requests().await, 1, "mode {mode}");
    }
}

#[tokio::test]
async fn an_interrupted_round_resumes_where_it_stopped() {
    let c = Cloud::start().await;
    c.populate("Inbox", 2500).await;
    let acct = c.account_with(ThrottleConfig {
        max_attempts: 1,
        ..quick()
    });
    let mb = c.mailbox(&acct, "Inbox");
    // The second page fails (one attempt allowed): the call fails.
    c.fault(json!({"route": "*/delta", "kind": "status", "status": 503, "count": 1}))
        .await;
    assert!(mb.list().await.is_err());
    // Only next links use the `mailFolders('id')` form.
    c.fault(json!({"route": "*mailFolders('*", "kind": "status", "status": 503, "count": 1}))
        .await;
    // First page fine, second page fails: resume keeps page one.
    let e = mb.list().await;
    assert!(e.is_err());
    c.reset_stats().await;
    let got = mb.list().await.expect("resumed");
    assert_eq!(as_map(&got), c.expected("Inbox").await);
    assert_eq!(c.requests().await, 2, "pages two and three only");
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
    let acct = GraphAccount::with_throttle(
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
    let acct = GraphAccount::with_throttle(
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
    let boxes: Vec<Arc<GraphMailbox>> = (0..10)
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

/// A config with one maildir and the emulated inbox.
fn engine_world() -> (Home, config::Loaded) {
    let home = Home::new();
    let loaded = home.config(&format!(
        "inbox = MailDir(\"~/mail/inbox\")\nbox = Office365(\"Inbox\", Office365_Account(user=\"{USER}\"))\n"
    ));
    (home, loaded)
}

/// A fresh engine over the emulated inbox.
async fn engine(c: &Cloud, loaded: &config::Loaded) -> Engine {
    build_engine(loaded, vec![c.inbox_folder(&c.account())], false).await
}

/// The files of the maildir `engine_world` configured.
fn inbox_files(home: &Home) -> Vec<(std::path::PathBuf, Flags)> {
    maildir_files(&home.path().join("mail/inbox"))
}

/// Cuts every download of `ids` short, on every attempt (a cut before any
/// byte arrived is retried inside `fetch`; these fail every time).
async fn cut_every_download_of(c: &Cloud, ids: &[String]) {
    for id in ids {
        c.fault(
            json!({"route": format!("*/messages/{id}/$value"), "kind": "truncate", "count": 100}),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_downloads_are_retried_when_the_next_round_brings_other_changes() {
    let c = Cloud::start().await;
    let ids = c.populate("Inbox", 20).await;
    let (home, loaded) = engine_world();
    cut_every_download_of(&c, &ids[..2]).await;
    let mut e = engine(&c, &loaded).await;
    let r = e.cycle().await.expect("cycle");
    assert_eq!(r.cloud_errors.len(), 2, "{r:?}");
    assert_eq!(inbox_files(&home).len(), 18);
    c.clear_faults().await;
    // The next delta round names only the new message, not the two that
    // failed: they must be tried again all the same.
    c.deliver(
        "Inbox",
        "Message-ID: <retry-new@example.com>\r\nSubject: new\r\n\r\nhi\r\n",
    )
    .await;
    let r = e.cycle().await.expect("cycle");
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(inbox_files(&home).len(), 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_syncs_an_inbox_over_graph() {
    let c = Cloud::start().await;
    let ids = c.populate("Inbox", 1000).await;
    let (home, loaded) = engine_world();
    // Three downloads are cut short on every attempt: they must not appear.
    cut_every_download_of(&c, &ids[..3]).await;
    let mut e = engine(&c, &loaded).await;
    let r = e.cycle().await.expect("cycle");
    assert_eq!(r.cloud_errors.len(), 3, "{r:?}");
    assert_eq!(r.downloads, 997);
    assert_eq!(inbox_files(&home).len(), 997);
    let want = c.expected("Inbox").await;
    c.clear_faults().await;
    let r = e.cycle().await.expect("cycle");
    assert!(r.is_clean(), "{r:?}");
    let files = inbox_files(&home);
    assert_eq!(files.len(), 1000);
    // Every maildir file is exactly one stored message with LF line ends:
    // none of the truncated downloads reached the maildir.
    let stored = c.messages(true).await;
    let mut contents: Vec<String> = files
        .iter()
        .map(|(p, _)| std::fs::read_to_string(p).expect("read"))
        .collect();
    contents.sort();
    let mut expected: Vec<String> = stored
        .iter()
        .filter(|m| m["folder"] == "Inbox")
        .map(lf)
        .collect();
    expected.sort();
    assert_eq!(contents, expected);
    // Flags as the cloud has them.
    let mut got: Vec<Flags> = files.iter().map(|(_, f)| *f).collect();
    let mut wantf: Vec<Flags> = want.values().map(|(f, _, _)| *f).collect();
    got.sort();
    wantf.sort();
    assert_eq!(got, wantf);

    // A second cycle downloads nothing and asks one request.
    c.reset_stats().await;
    let r = e.cycle().await.expect("cycle");
    assert_eq!((r.downloads, r.actions), (0, 0), "{r:?}");
    assert_eq!(c.requests().await, 1);

    // A restart resumes from the saved cursor: one request, no downloads.
    drop(e);
    c.reset_stats().await;
    let mut e = engine(&c, &loaded).await;
    let r = e.cycle().await.expect("cycle");
    assert_eq!((r.downloads, r.actions), (0, 0), "{r:?}");
    assert_eq!(c.requests().await, 1);
    assert_eq!(c.stats().await["throttled"], 0);
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
    let acct = GraphAccount::with_throttle(
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
    let acct2 = GraphAccount::with_throttle(
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

/// The state database's files: (name, size, modification time).
fn db_files(home: &Home) -> Vec<(String, u64, std::time::SystemTime)> {
    let dir = home.path().join("mail/.cms/state");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .expect("state dir")
        .filter_map(Result::ok)
        .filter(|d| d.file_name().to_string_lossy().starts_with("state.db"))
        .map(|d| {
            let m = d.metadata().expect("stat");
            (
                d.file_name().to_string_lossy().into_owned(),
                m.len(),
                m.modified().expect("mtime"),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn an_idle_poll_lists_once_and_does_nothing_else() {
    let c = Cloud::start().await;
    c.populate("Inbox", 200).await;
    let (home, loaded) = engine_world();
    let mut e = engine(&c, &loaded).await;
    assert!(e.cycle().await.expect("cycle").is_clean());
    // The cycle after the initial sync confirms it (it had actions).
    let r = e.poll(&[true]).await.expect("poll");
    assert!(!r.skipped, "{r:?}");
    let before = db_files(&home);
    c.reset_stats().await;
    for _ in 0..5 {
        let r = e.poll(&[true]).await.expect("poll");
        assert!(r.skipped, "{r:?}");
        assert_eq!(r.actions, 0);
    }
    let s = c.stats().await;
    assert_eq!(s["requests"], 5, "one delta request per poll: {s}");
    assert_eq!(db_files(&home), before, "an idle poll writes nothing");

    // A cloud change is not skipped, and is followed.
    let id = c
        .deliver(
            "Inbox",
            "Subject: new\r\nMessage-ID: <idle-new@x>\r\n\r\nhi\r\n",
        )
        .await;
    let r = e.poll(&[true]).await.expect("poll");
    assert!(!r.skipped);
    let r2 = e.settle(&[false]).await.expect("settle");
    assert_eq!(r.downloads + r2.downloads, 1, "{r:?} {r2:?}");
    assert_eq!(inbox_files(&home).len(), 201);
    assert!(!id.is_empty());
    // A local change seen by the watcher goes through cycle_with, which
    // always scans: here a file removed by the user.
    let (gone, _) = inbox_files(&home).remove(0);
    std::fs::remove_file(&gone).expect("rm");
    let r = e.cycle_with(&[false]).await.expect("cycle");
    assert_eq!(r.actions, 1, "the removal is pushed: {r:?}");
}
