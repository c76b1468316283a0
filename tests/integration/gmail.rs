//! The Gmail backend against the emulator: full listing, history after a
//! second client's changes, idle polls, restarts from the cursor, expired
//! history, downloads and broken answers, flag changes and deletes, rate
//! limit storms, quota use, the sync engine over a label, and a log scan
//! for tokens.

use futures_util::future::BoxFuture;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloud_mdir_sync::auth::{AccessToken, Audience, AuthError, StaticTokens, TokenSource};
use cloud_mdir_sync::cloud::gmail::{GmailAccount, GmailMailbox, Limits, Options};
use cloud_mdir_sync::cloud::{CloudEntry, CloudMailbox, ErrorKind, FlagChange};
use cloud_mdir_sync::endpoints::Endpoints;
use cloud_mdir_sync::maildir::parse_name;
use cloud_mdir_sync::sync::engine::Folder;
use cloud_mdir_sync::types::DeleteAction;
use cloud_mdir_sync::types::Flags;
use fake_cloud::{FakeCloud, Handle, QuotaMode};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::util::{Home, StoredCursor, build_engine, lf, maildir_files};

const USER: &str = "user@gmail.com";
const MODIFY: &str = "https://www.googleapis.com/auth/gmail.modify";
const FULL: &str = "https://mail.google.com/";
const API: &str = "/www.googleapis.com/gmail/v1/users/me";

/// The emulator plus a plain HTTP client for control calls and for acting
/// as a second Gmail client.
struct Env {
    h: Handle,
    http: reqwest::Client,
}

impl Env {
    async fn start(quota: QuotaMode) -> Env {
        Env::start_with(fake_cloud::Options {
            quota,
            ..fake_cloud::Options::default()
        })
        .await
    }

    async fn start_with(opts: fake_cloud::Options) -> Env {
        let h = FakeCloud::start(opts).await.expect("emulator");
        Env {
            h,
            http: reqwest::Client::new(),
        }
    }

    fn token(&self, scopes: &[&str]) -> String {
        self.h.mint_token(USER, "gmail", scopes).expect("token")
    }

    /// The account our backend uses, with its own token.
    fn account(&self, opts: Options) -> Arc<GmailAccount> {
        let tokens = StaticTokens::new(
            USER,
            [(Audience::Gmail, AccessToken::new(self.token(&[MODIFY])))],
        );
        GmailAccount::new(
            USER,
            Endpoints::emulated(self.h.base_url()),
            Arc::new(tokens),
            opts,
        )
        .expect("account")
    }

    fn mailbox(&self, opts: Options, label: &str) -> GmailMailbox {
        GmailMailbox::new(self.account(opts), label, &format!("gmail:{USER}/{label}"))
    }

    async fn control(&self, method: &str, route: &str, body: Value) -> Value {
        let url = format!("{}/_control/{route}", self.h.base_url());
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let r = self
            .http
            .request(m, url)
            .json(&body)
            .send()
            .await
            .expect("control call");
        assert!(r.status().is_success(), "control {route}: {}", r.status());
        r.json().await.expect("control JSON")
    }

    async fn populate(&self, label: &str, count: usize, seed: u64) -> Vec<String> {
        let v = self
            .control(
                "POST",
                "populate",
                json!({"user": USER, "service": "gmail", "folder": label, "count": count, "seed": seed}),
            )
            .await;
        v["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|i| i.as_str().unwrap_or_default().to_string())
            .collect()
    }

    async fn deliver(&self, raw: &str, labels: &[&str]) -> String {
        let v = self
            .control(
                "POST",
                "deliver",
                json!({"user": USER, "service": "gmail", "raw": raw, "labels": labels}),
            )
            .await;
        v["id"].as_str().expect("id").to_string()
    }

    async fn mailbox_state(&self, raw: bool) -> Value {
        let url = format!(
            "{}/_control/mailbox?user={USER}{}",
            self.h.base_url(),
            if raw { "&raw=1" } else { "" }
        );
        self.http
            .get(url)
            .send()
            .await
            .expect("mailbox")
            .json()
            .await
            .expect("mailbox JSON")
    }

    /// Labels of every message, by id.
    async fn labels(&self) -> BTreeMap<String, BTreeSet<String>> {
        let v = self.mailbox_state(false).await;
        v["gmail"]["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| {
                let labels = m["labelIds"]
                    .as_array()
                    .expect("labels")
                    .iter()
                    .map(|l| l.as_str().unwrap_or_default().to_string())
                    .collect();
                (m["id"].as_str().unwrap_or_default().to_string(), labels)
            })
            .collect()
    }

    /// What a correct listing of `label` is, from the emulator's state:
    /// id -> (flags, received seconds, Message-ID).
    async fn expected(&self, label: &str) -> BTreeMap<String, (Flags, i64, Option<String>)> {
        let v = self.mailbox_state(false).await;
        let mut out = BTreeMap::new();
        for m in v["gmail"]["messages"].as_array().expect("messages") {
            let labels: BTreeSet<&str> = m["labelIds"]
                .as_array()
                .expect("labels")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let hidden = (labels.contains("TRASH") && label != "TRASH")
                || (labels.contains("SPAM") && label != "SPAM");
            if !labels.contains(label) || hidden {
                continue;
            }
            let mut flags = Flags::NONE;
            if !labels.contains("UNREAD") {
                flags |= Flags::READ;
            }
            if labels.contains("STARRED") {
                flags |= Flags::FLAGGED;
            }
            let ms: i64 = m["internalDate"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("internalDate");
            out.insert(
                m["id"].as_str().unwrap_or_default().to_string(),
                (
                    flags,
                    ms.div_euclid(1000),
                    m["messageId"].as_str().map(str::to_string),
                ),
            );
        }
        out
    }

    async fn stats(&self) -> Stats {
        Stats(self.control("GET", "stats", Value::Null).await)
    }

    async fn reset_stats(&self) {
        self.control("DELETE", "stats", Value::Null).await;
    }

    async fn fault(&self, spec: Value) {
        self.control("POST", "faults", spec).await;
    }

    /// A second client's call to the Gmail API with its own token.
    async fn second(&self, token: &str, method: &str, path: &str, body: Option<Value>) -> u16 {
        let url = format!("{}{API}{path}", self.h.base_url());
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut rb = self.http.request(m, url).bearer_auth(token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        rb.send().await.expect("second client").status().as_u16()
    }
}

/// `/_control/stats`, read as HTTP requests and quota units.
struct Stats(Value);

impl Stats {
    fn routes(&self) -> Vec<(String, u64, BTreeMap<String, u64>)> {
        let Some(routes) = self.0["routes"].as_object() else {
            return Vec::new();
        };
        routes
            .iter()
            .filter(|(k, _)| k.starts_with("gmail "))
            .map(|(k, v)| {
                let statuses = v["statuses"]
                    .as_object()
                    .map(|s| {
                        s.iter()
                            .map(|(c, n)| (c.clone(), n.as_u64().unwrap_or(0)))
                            .collect()
                    })
                    .unwrap_or_default();
                (k.clone(), v["requests"].as_u64().unwrap_or(0), statuses)
            })
            .collect()
    }

    /// HTTP requests to Gmail (a batch counts once).
    fn http_requests(&self) -> u64 {
        self.routes()
            .iter()
            .filter(|(k, _, _)| !k.ends_with("(in batch)"))
            .map(|(_, n, _)| n)
            .sum()
    }

    /// Requests on one route (exact name, e.g. `gmail GET /users/me/profile`).
    fn on(&self, route: &str) -> u64 {
        self.routes()
            .iter()
            .filter(|(k, _, _)| k == route)
            .map(|(_, n, _)| n)
            .sum()
    }

    /// Quota units charged: every API call (batch parts included) that was
    /// admitted, at its method's cost.
    fn units(&self) -> u64 {
        let mut total = 0;
        for (route, _, statuses) in self.routes() {
            let path = route.trim_end_matches(" (in batch)");
            let cost = if path.ends_with("/profile") || path.ends_with("/labels") {
                1
            } else if path.ends_with("/history") {
                2
            } else if path.ends_with("/batchModify") {
                50
            } else if path.contains("/messages") {
                5
            } else {
                0 // the batch envelope itself
            };
            let admitted: u64 = statuses
                .iter()
                .filter(|(s, _)| !matches!(s.as_str(), "0" | "429" | "403"))
                .map(|(_, n)| n)
                .sum();
            total += cost * admitted;
        }
        total
    }

    /// Answers with a rate-limit status.
    fn rate_limited(&self) -> u64 {
        self.routes()
            .iter()
            .flat_map(|(_, _, s)| s.iter())
            .filter(|(s, _)| matches!(s.as_str(), "429" | "403"))
            .map(|(_, n)| n)
            .sum()
    }
}

/// Fast options for tests against an emulator without quotas.
fn fast() -> Options {
    Options {
        limits: Limits {
            window_units: 0,
            window: Duration::from_secs(60),
            max_concurrency: 4,
            backoff_base: Duration::from_millis(5),
            backoff_max: Duration::from_millis(200),
        },
        max_attempts: 3,
        max_rate_limited_attempts: 40,
        ..Options::default()
    }
}

/// A listing as id -> (flags, received seconds, Message-ID).
fn as_map(entries: &[CloudEntry]) -> BTreeMap<String, (Flags, i64, Option<String>)> {
    entries
        .iter()
        .map(|e| {
            (
                e.id.to_string(),
                (
                    e.flags,
                    e.received_time.unwrap_or(-1),
                    e.email_id.as_deref().map(str::to_string),
                ),
            )
        })
        .collect()
}

/// Assert the listing equals the emulator's state of the label: the same
/// ids and flags; the date and Message-ID where the listing has them (new
/// mail is listed without them until its content is fetched).
async fn assert_listing(env: &Env, label: &str, entries: &[CloudEntry]) {
    compare_listing(env, label, entries, false).await;
}

/// [`assert_listing`], and every entry has its date and Message-ID.
async fn assert_listing_complete(env: &Env, label: &str, entries: &[CloudEntry]) {
    compare_listing(env, label, entries, true).await;
}

async fn compare_listing(env: &Env, label: &str, entries: &[CloudEntry], complete: bool) {
    let want = env.expected(label).await;
    let mut got = as_map(entries);
    assert_eq!(got.len(), entries.len(), "duplicate ids in the listing");
    if !complete {
        // What the listing does not know yet is taken as what it should be.
        for (id, v) in got.iter_mut() {
            if let Some(w) = want.get(id) {
                if v.1 == -1 {
                    v.1 = w.1;
                }
                if v.2.is_none() {
                    v.2.clone_from(&w.2);
                }
            }
        }
    }
    if got != want {
        let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
        let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
        let differ: Vec<_> = got
            .iter()
            .filter(|(k, v)| want.get(*k).is_some_and(|w| w != *v))
            .map(|(k, v)| (k, v, &want[k]))
            .collect();
        panic!("listing differs: missing {missing:?}, extra {extra:?}, differ {differ:?}");
    }
}

fn raw_message(n: usize) -> String {
    format!(
        "From: Second <second@example.com>\r\nTo: {USER}\r\nMessage-ID: <second-{n}@example.com>\r\n\
         Subject: delivered {n}\r\n\r\nbody {n}\r\nline two\r\n"
    )
}

#[tokio::test]
async fn full_listing_matches_the_emulator() {
    let env = Env::start(QuotaMode::Off).await;
    env.populate("INBOX", 1200, 11).await;
    env.populate("Lists", 40, 12).await;
    let mb = env.mailbox(fast(), "INBOX");
    env.reset_stats().await;
    let entries = mb.list().await.expect("list");
    assert_eq!(entries.len(), 1200);
    assert_listing(&env, "INBOX", &entries).await;
    let flags: BTreeSet<Flags> = entries.iter().map(|e| e.flags).collect();
    assert!(flags.len() >= 3, "populate mixes flags: {flags:?}");

    // labels 1 + profile 1 + list pages of 500: 3 for the label, and the
    // label's UNREAD and STARRED subsets; no metadata call.
    let s = env.stats().await;
    assert_eq!(s.on("gmail GET /users/me/labels"), 1);
    assert_eq!(s.on("gmail GET /users/me/profile"), 1);
    let pages = s.on("gmail GET /users/me/messages");
    assert!((5..=9).contains(&pages), "{pages} list pages");
    assert_eq!(s.on("gmail GET /users/me/messages/{id} (in batch)"), 0);
    assert_eq!(s.http_requests(), 2 + pages);
    assert_eq!(s.units(), 1 + 1 + 5 * pages);
    assert_eq!(mb.label_name(), "INBOX");

    // A user label by name.
    let lists = env.mailbox(fast(), "Lists");
    let entries = lists.list().await.expect("list Lists");
    assert_eq!(entries.len(), 40);
    let id = lists.resolve_label().await.expect("label id");
    assert!(id.starts_with("Label_"), "{id}");
    assert_listing(&env, &id, &entries).await;
}

#[tokio::test]
async fn a_missing_label_is_not_found_and_named() {
    let env = Env::start(QuotaMode::Off).await;
    let mb = env.mailbox(fast(), "No Such Label");
    let e = mb.list().await.expect_err("missing label");
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.to_string().contains("No Such Label"), "{e}");
}

#[tokio::test]
async fn history_follows_a_second_client() {
    let env = Env::start(QuotaMode::Off).await;
    let ids = env.populate("INBOX", 300, 21).await;
    env.populate("Lists", 5, 22).await;
    let mb = env.mailbox(fast(), "INBOX");
    let first = mb.list().await.expect("list");
    assert_listing(&env, "INBOX", &first).await;

    // Idle: one request, the profile.
    env.reset_stats().await;
    let again = mb.list().await.expect("idle list");
    assert_eq!(as_map(&again), as_map(&first));
    let s = env.stats().await;
    assert_eq!(s.http_requests(), 1, "{:?}", s.routes());
    assert_eq!(s.on("gmail GET /users/me/profile"), 1);

    let other = env.token(&[FULL]);
    let modify = |id: &str, add: &[&str], remove: &[&str]| {
        (
            format!("/messages/{id}/modify"),
            json!({"addLabelIds": add, "removeLabelIds": remove}),
        )
    };
    // Read, unread, star, unstar, archive, trash, spam, permanent delete.
    let changes = [
        modify(&ids[0], &[], &["UNREAD"]),
        modify(&ids[1], &["UNREAD"], &[]),
        modify(&ids[2], &["STARRED"], &[]),
        modify(&ids[3], &[], &["STARRED"]),
        modify(&ids[4], &[], &["INBOX"]),
        modify(&ids[6], &["SPAM"], &[]),
        modify(&ids[7], &["STARRED"], &["UNREAD", "IMPORTANT"]),
    ];
    for (path, body) in changes {
        assert_eq!(env.second(&other, "POST", &path, Some(body)).await, 200);
    }
    let trash = format!("/messages/{}/trash", ids[5]);
    assert_eq!(env.second(&other, "POST", &trash, None).await, 200);
    let gone = format!("/messages/{}", ids[8]);
    assert_eq!(env.second(&other, "DELETE", &gone, None).await, 204);
    // Archive one and bring it back; archive another with no labels left.
    let (p, b) = modify(&ids[9], &[], &["INBOX"]);
    env.second(&other, "POST", &p, Some(b)).await;
    let (p, b) = modify(&ids[9], &["INBOX"], &[]);
    env.second(&other, "POST", &p, Some(b)).await;
    let (p, b) = modify(
        &ids[10],
        &[],
        &[
            "INBOX",
            "UNREAD",
            "STARRED",
            "IMPORTANT",
            "CATEGORY_PERSONAL",
            "CATEGORY_FORUMS",
        ],
    );
    env.second(&other, "POST", &p, Some(b)).await;
    // A message of another label moves into the inbox.
    let lists = env.labels().await;
    let from_lists = lists
        .iter()
        .find(|(_, l)| l.iter().any(|x| x.starts_with("Label_")))
        .map(|(id, _)| id.clone())
        .expect("a Lists message");
    let (p, b) = modify(&from_lists, &["INBOX"], &[]);
    env.second(&other, "POST", &p, Some(b)).await;
    // New mail, read and unread.
    let new1 = env.deliver(&raw_message(1), &["INBOX", "UNREAD"]).await;
    let new2 = env.deliver(&raw_message(2), &["INBOX", "STARRED"]).await;
    // Delivered elsewhere: not ours.
    env.deliver(&raw_message(3), &["Lists"]).await;

    env.reset_stats().await;
    let after = mb.list().await.expect("list after changes");
    assert_listing(&env, "INBOX", &after).await;
    let got = as_map(&after);
    assert!(got[&ids[0]].0.contains(Flags::READ));
    assert!(got.contains_key(&new1) && got.contains_key(&new2));
    assert!(got.contains_key(&from_lists) && got.contains_key(&ids[9]));
    for gone in [&ids[4], &ids[5], &ids[6], &ids[8]] {
        assert!(!got.contains_key(gone), "{gone} left the inbox");
    }
    assert!(!got.contains_key(&ids[10]));
    assert_eq!(got[&ids[7]].0, Flags::READ | Flags::FLAGGED);
    assert_eq!(
        got[&new1].2.as_deref(),
        None,
        "new mail is listed without its Message-ID"
    );
    // profile + one history page; nothing for what is new.
    let s = env.stats().await;
    assert_eq!(s.on("gmail GET /users/me/profile"), 1);
    assert_eq!(s.on("gmail GET /users/me/history"), 1);
    assert_eq!(s.on("gmail GET /users/me/messages"), 0, "no full listing");
    assert_eq!(s.http_requests(), 2, "{:?}", s.routes());
    // Its download brings it.
    let mut out = Vec::new();
    mb.fetch(&new1, &mut out).await.expect("fetch");
    assert_eq!(
        mb.fetched_entry(&new1).and_then(|e| e.email_id).as_deref(),
        Some("<second-1@example.com>")
    );

    // Idle again: one request.
    env.reset_stats().await;
    mb.list().await.expect("idle");
    assert_eq!(env.stats().await.http_requests(), 1);
}

#[tokio::test]
async fn labels_of_one_account_share_the_idle_poll() {
    let env = Env::start(QuotaMode::Off).await;
    env.populate("INBOX", 30, 25).await;
    env.populate("Lists", 20, 26).await;
    let account = env.account(fast());
    let inbox = GmailMailbox::new(account.clone(), "INBOX", "gmail:user@gmail.com/INBOX");
    let lists = GmailMailbox::new(account, "Lists", "gmail:user@gmail.com/Lists");
    let (a, b) = tokio::join!(inbox.list(), lists.list());
    assert_eq!((a.expect("inbox").len(), b.expect("lists").len()), (30, 20));
    env.reset_stats().await;
    let (a, b) = tokio::join!(inbox.list(), lists.list());
    assert!(a.is_ok() && b.is_ok());
    assert_eq!(env.stats().await.http_requests(), 1, "one profile for both");
    // A change is never missed because of the shared answer.
    let id = env.deliver(&raw_message(4), &["Lists"]).await;
    let (a, b) = tokio::join!(inbox.list(), lists.list());
    assert_listing(&env, "INBOX", &a.expect("inbox")).await;
    assert!(b.expect("lists").iter().any(|e| *e.id == *id));
}

#[tokio::test]
async fn many_history_pages_and_changes_outside_the_label() {
    let env = Env::start(QuotaMode::Off).await;
    let ids = env.populate("INBOX", 700, 31).await;
    let other_ids = env.populate("Lists", 50, 32).await;
    let mb = env.mailbox(fast(), "INBOX");
    mb.list().await.expect("list");
    let other = env.token(&[MODIFY]);
    // 700 read toggles (two records each) and 50 changes outside the inbox.
    for chunk in ids.chunks(1000) {
        let body = json!({"ids": chunk, "removeLabelIds": ["UNREAD"], "addLabelIds": ["STARRED"]});
        let status = env
            .second(&other, "POST", "/messages/batchModify", Some(body))
            .await;
        assert_eq!(status, 204);
    }
    let body = json!({"ids": other_ids, "addLabelIds": ["STARRED"]});
    env.second(&other, "POST", "/messages/batchModify", Some(body))
        .await;
    env.reset_stats().await;
    let after = mb.list().await.expect("list");
    assert_listing(&env, "INBOX", &after).await;
    assert!(
        after
            .iter()
            .all(|e| e.flags == Flags::READ | Flags::FLAGGED)
    );
    let s = env.stats().await;
    // 700 messages, up to two records each, 500 records per page.
    assert!(s.on("gmail GET /users/me/history") >= 2, "paged");
    assert_eq!(s.on("gmail GET /users/me/messages/{id} (in batch)"), 0);
}

#[tokio::test]
async fn restart_resumes_from_the_cursor_with_one_request() {
    let env = Env::start(QuotaMode::Off).await;
    env.populate("INBOX", 250, 41).await;
    let mb = env.mailbox(fast(), "INBOX");
    let before = mb.list().await.expect("list");
    let cursor = StoredCursor::of(&mb).expect("cursor");
    assert_eq!(cursor.records.len(), 250);
    drop(mb);

    // A new process: new account, new mailbox, the saved cursor.
    let mb = env.mailbox(fast(), "INBOX");
    cursor.load(&mb);
    env.reset_stats().await;
    let after = mb.list().await.expect("list");
    assert_eq!(as_map(&after), as_map(&before));
    let s = env.stats().await;
    assert_eq!(s.http_requests(), 1, "{:?}", s.routes());

    // A cursor for another label is ignored.
    let lists = env.mailbox(fast(), "Lists");
    cursor.load(&lists);
    assert!(lists.cursor_delta().is_none());
    // So is garbage, and a cursor with an unreadable record (a listing
    // with a hole would read as messages taken out of the label).
    let fresh = env.mailbox(fast(), "INBOX");
    fresh.load_cursor(json!({"v": 99}), Vec::new());
    assert!(fresh.cursor_delta().is_none());
    let holed = env.mailbox(fast(), "INBOX");
    let mut records: Vec<String> = cursor.records.values().cloned().collect();
    records[3] = "{not a record".into();
    holed.load_cursor(cursor.head.clone().expect("head"), records);
    assert!(holed.cursor_delta().is_none());

    // Changes while stopped are picked up through history on restart.
    let id = env.deliver(&raw_message(7), &["INBOX"]).await;
    let mb = env.mailbox(fast(), "INBOX");
    cursor.load(&mb);
    env.reset_stats().await;
    let after = mb.list().await.expect("list");
    assert_listing(&env, "INBOX", &after).await;
    assert!(after.iter().any(|e| *e.id == *id));
    assert_eq!(env.stats().await.http_requests(), 2, "profile and history");
    // The cursor delta holds the new message's record only.
    let d = mb.cursor_delta().expect("delta");
    assert!(!d.full && d.gone.is_empty());
    assert_eq!(
        d.put.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        [id.as_str()]
    );
    assert!(mb.cursor_delta().is_none(), "nothing more");
}

#[tokio::test]
async fn too_old_history_relists_correctly_and_cheaply() {
    let env = Env::start(QuotaMode::Off).await;
    let ids = env.populate("INBOX", 600, 51).await;
    let mb = env.mailbox(fast(), "INBOX");
    mb.list().await.expect("list");
    let other = env.token(&[MODIFY]);
    let body = json!({"ids": &ids[..100], "removeLabelIds": ["UNREAD"]});
    env.second(&other, "POST", "/messages/batchModify", Some(body))
        .await;
    let body = json!({"ids": &ids[100..120], "addLabelIds": ["STARRED", "UNREAD"]});
    env.second(&other, "POST", "/messages/batchModify", Some(body))
        .await;
    let body = json!({"ids": &ids[120..130], "removeLabelIds": ["INBOX"]});
    env.second(&other, "POST", "/messages/batchModify", Some(body))
        .await;
    let new = env.deliver(&raw_message(9), &["INBOX"]).await;
    env.control("POST", "expire-history", json!({"user": USER}))
        .await;

    env.reset_stats().await;
    let after = mb.list().await.expect("relist");
    assert_listing(&env, "INBOX", &after).await;
    assert!(after.iter().any(|e| *e.id == *new));
    let s = env.stats().await;
    // The 404, then a full listing with flags from label+UNREAD/STARRED
    // lists; the new message needs nothing more (its download tells).
    assert_eq!(s.on("gmail GET /users/me/history"), 1);
    assert_eq!(s.on("gmail GET /users/me/messages/{id} (in batch)"), 0);
    assert!(s.units() < 100, "relist of 600 cost {} units", s.units());

    // And history works again from the new id.
    env.reset_stats().await;
    mb.list().await.expect("idle");
    assert_eq!(env.stats().await.http_requests(), 1);
}

#[tokio::test]
async fn a_failed_first_listing_commits_nothing() {
    let env = Env::start(QuotaMode::Off).await;
    env.populate("INBOX", 1000, 55).await;
    let mb = env.mailbox(
        Options {
            max_attempts: 1,
            ..fast()
        },
        "INBOX",
    );
    // A listing page fails (503, no retry): the listing fails.
    env.fault(json!({"route": "/users/me/messages", "kind": "status", "status": 503, "count": 1}))
        .await;
    let e = mb.list().await.expect_err("incomplete listing is an error");
    assert_eq!(e.kind, ErrorKind::Retry);
    assert!(mb.cursor_delta().is_none(), "nothing committed");
    env.control("DELETE", "faults", Value::Null).await;
    let entries = mb.list().await.expect("list");
    assert_listing(&env, "INBOX", &entries).await;
    assert!(mb.cursor_delta().is_some_and(|d| d.full));
}

#[tokio::test]
async fn new_mail_costs_only_its_download() {
    let env = Env::start(QuotaMode::Off).await;
    env.populate("INBOX", 300, 56).await;
    let mb = env.mailbox(fast(), "INBOX");
    let first = mb.list().await.expect("list");
    assert_listing(&env, "INBOX", &first).await;
    let s = env.stats().await;
    assert_eq!(
        s.on("gmail GET /users/me/messages/{id} (in batch)"),
        0,
        "no metadata calls: the download brings the date and Message-ID"
    );
    for e in &first {
        let mut out = Vec::new();
        mb.fetch(&e.id, &mut out).await.expect("fetch");
        let known = mb.fetched_entry(&e.id).expect("known after the fetch");
        assert!(known.received_time.is_some() && known.email_id.is_some());
    }
    // Second client: new mail, found through history.
    let extra = env.deliver(&raw_message(7), &["INBOX", "UNREAD"]).await;
    env.reset_stats().await;
    let after = mb.list().await.expect("list");
    assert_eq!(
        env.stats()
            .await
            .on("gmail GET /users/me/messages/{id} (in batch)"),
        0
    );
    let mut out = Vec::new();
    mb.fetch(&extra, &mut out).await.expect("fetch");
    let again = mb.list().await.expect("list");
    assert_listing_complete(&env, "INBOX", &again).await;
    assert_eq!(after.len(), again.len());
    // And a restart keeps them.
    let cursor = StoredCursor::of(&mb).expect("cursor");
    let mb2 = env.mailbox(fast(), "INBOX");
    cursor.load(&mb2);
    assert_listing_complete(&env, "INBOX", &mb2.list().await.expect("list")).await;
}

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

#[tokio::test]
async fn set_flags_and_delete_reach_the_emulator_exactly() {
    let env = Env::start(QuotaMode::Off).await;
    let ids = env.populate("INBOX", 40, 71).await;
    let mb = env.mailbox(fast(), "INBOX");
    let listed = as_map(&mb.list().await.expect("list"));
    let before = env.labels().await;

    let change = |i: usize, set: Flags, clear: Flags| FlagChange {
        id: ids[i].clone(),
        set,
        clear,
    };
    let changes = vec![
        change(0, Flags::READ, Flags::NONE),
        change(1, Flags::READ, Flags::NONE),
        change(2, Flags::NONE, Flags::READ),
        change(3, Flags::FLAGGED, Flags::NONE),
        change(4, Flags::NONE, Flags::FLAGGED),
        change(5, Flags::READ | Flags::FLAGGED, Flags::NONE),
        change(6, Flags::REPLIED, Flags::NONE),
        change(7, Flags::READ | Flags::REPLIED, Flags::NONE),
    ];
    env.reset_stats().await;
    let results = mb.set_flags(changes).await;
    assert_eq!(results.len(), 8);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let s = env.stats().await;
    // Groups: -UNREAD {0,1,7}, +UNREAD {2}, +STARRED {3}, -STARRED {4},
    // +STARRED-UNREAD {5}; the replied-only change sends nothing.
    assert_eq!(s.on("gmail POST /users/me/messages/batchModify"), 5);
    assert_eq!(s.http_requests(), 5);

    let after = env.labels().await;
    let diff = |i: usize| -> (Vec<String>, Vec<String>) {
        let b = &before[&ids[i]];
        let a = &after[&ids[i]];
        (
            a.difference(b).cloned().collect(),
            b.difference(a).cloned().collect(),
        )
    };
    let had = |i: usize, l: &str| before[&ids[i]].contains(l);
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        diff(0).1,
        if had(0, "UNREAD") {
            s(&["UNREAD"])
        } else {
            s(&[])
        }
    );
    assert!(!after[&ids[1]].contains("UNREAD"));
    assert!(after[&ids[2]].contains("UNREAD"));
    assert!(after[&ids[3]].contains("STARRED"));
    assert!(!after[&ids[4]].contains("STARRED"));
    assert!(after[&ids[5]].contains("STARRED") && !after[&ids[5]].contains("UNREAD"));
    assert_eq!(diff(6), (s(&[]), s(&[])), "replied is not stored");
    assert!(!after[&ids[7]].contains("UNREAD"));
    for (i, id) in ids.iter().enumerate().skip(8) {
        assert_eq!(before[id], after[id], "untouched message {i}");
    }
    // The listing agrees (through history).
    let relisted = mb.list().await.expect("list");
    assert_listing(&env, "INBOX", &relisted).await;
    assert_ne!(as_map(&relisted), listed);

    // Archive removes INBOX only; delete adds TRASH only.
    env.reset_stats().await;
    let r = mb
        .delete(
            vec![ids[10].clone(), ids[11].clone()],
            DeleteAction::Archive,
        )
        .await;
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    let r = mb
        .delete(vec![ids[12].clone(), ids[13].clone()], DeleteAction::Delete)
        .await;
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    assert_eq!(
        env.stats()
            .await
            .on("gmail POST /users/me/messages/batchModify"),
        2
    );
    let after2 = env.labels().await;
    for i in [10, 11] {
        let mut want = after[&ids[i]].clone();
        want.remove("INBOX");
        assert_eq!(after2[&ids[i]], want, "archived {i}");
    }
    for i in [12, 13] {
        let mut want = after[&ids[i]].clone();
        want.insert("TRASH".into());
        assert_eq!(after2[&ids[i]], want, "trashed {i}");
    }
    let relisted = mb.list().await.expect("list");
    assert_listing(&env, "INBOX", &relisted).await;
    assert_eq!(relisted.len(), 36);

    // A message deleted meanwhile: deleting it again is fine, and a flag
    // change on it does not block the others.
    let full = env.token(&[FULL]);
    let path = format!("/messages/{}", ids[20]);
    assert_eq!(env.second(&full, "DELETE", &path, None).await, 204);
    let r = mb
        .delete(vec![ids[20].clone()], DeleteAction::Archive)
        .await;
    assert!(r[0].is_ok(), "{r:?}");
    let r = mb
        .set_flags(vec![
            change(20, Flags::FLAGGED, Flags::NONE),
            change(21, Flags::FLAGGED, Flags::NONE),
        ])
        .await;
    assert!(r[1].is_ok(), "{r:?}");
    assert!(env.labels().await[&ids[21]].contains("STARRED"));
}

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
    let mb = GmailMailbox::new(account.clone(), "INBOX", "gmail:user@gmail.com/INBOX");
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
    let mb = GmailMailbox::new(account.clone(), "INBOX", "gmail:user@gmail.com/INBOX");
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
    let mb = GmailMailbox::new(account.clone(), "INBOX", "gmail:user@gmail.com/INBOX");
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

/// Hands out tokens in order; `invalidate` moves to the next one.
struct Rotating {
    tokens: Mutex<VecDeque<AccessToken>>,
}

impl TokenSource for Rotating {
    fn token(&self, _audience: Audience) -> BoxFuture<'_, Result<AccessToken, AuthError>> {
        let t = self.tokens.lock().ok().and_then(|q| q.front().cloned());
        Box::pin(async move {
            t.ok_or(AuthError::LoginNeeded {
                user: USER.into(),
                reason: "no more tokens".into(),
            })
        })
    }

    fn invalidate(&self, _audience: Audience, token: &AccessToken) {
        if let Ok(mut q) = self.tokens.lock()
            && q.front() == Some(token)
        {
            q.pop_front();
        }
    }
}

#[tokio::test]
async fn refused_tokens_are_refreshed_once_and_never_logged() {
    let env = Env::start(QuotaMode::Off).await;
    let ids = env.populate("INBOX", 60, 101).await;
    let good = env.token(&[MODIFY]);
    let bogus = "ya29.bogus-token-value-never-valid".to_string();
    // The binary's one global log capture: other tests' logs land there
    // too, which only widens the scan.
    crate::util::log_buffer();

    // First token refused: refreshed once, then everything works.
    let tokens = Arc::new(Rotating {
        tokens: Mutex::new([bogus.clone(), good.clone()].map(AccessToken::new).into()),
    });
    let account = GmailAccount::new(
        USER,
        Endpoints::emulated(env.h.base_url()),
        tokens.clone(),
        fast(),
    )
    .expect("account");
    let mb = GmailMailbox::new(account, "INBOX", "gmail:user@gmail.com/INBOX");
    let entries = mb.list().await.expect("list after one refresh");
    assert_eq!(entries.len(), 60);
    let mut out = Vec::new();
    mb.fetch(&ids[0], &mut out).await.expect("fetch");
    let r = mb
        .set_flags(vec![FlagChange {
            id: ids[0].clone(),
            set: Flags::FLAGGED,
            clear: Flags::NONE,
        }])
        .await;
    assert!(r[0].is_ok());
    // Faults and retries log too.
    env.fault(json!({"route": "*/profile", "kind": "status", "status": 503, "count": 1}))
        .await;
    mb.list().await.expect("list");

    // Two refused tokens in a row: an Auth error, no endless loop.
    let tokens = Arc::new(Rotating {
        tokens: Mutex::new(
            [bogus.clone(), format!("{bogus}-2")]
                .map(AccessToken::new)
                .into(),
        ),
    });
    let account = GmailAccount::new(USER, Endpoints::emulated(env.h.base_url()), tokens, fast())
        .expect("account");
    let mb2 = GmailMailbox::new(account, "INBOX", "gmail:user@gmail.com/INBOX");
    let e = mb2.list().await.expect_err("refused twice");
    assert_eq!(e.kind, ErrorKind::Auth, "{e}");
    for t in [&good, &bogus] {
        assert!(!e.to_string().contains(t.as_str()));
    }

    let text = crate::util::logged();
    assert!(text.contains("gmail request"), "debug logs were captured");
    for t in [&good, &bogus] {
        assert!(!text.contains(t.as_str()), "a token appears in the logs");
    }
    assert!(
        !text.contains("ya29."),
        "a token fragment appears in the logs"
    );
}

// ---------------------------------------------------------------------------
// The sync engine over a Gmail label.

const CFG: &str = r#"
inbox = MailDir("~/mail/inbox")
gmail = GMail("INBOX", GMail_Account(user="user@gmail.com"))
"#;

#[tokio::test]
async fn engine_syncs_a_label_and_keeps_replied_locally() {
    let env = Env::start(QuotaMode::Off).await;
    env.populate("INBOX", 500, 111).await;
    let home = Home::new();
    let loaded = home.config(CFG);
    let account = env.account(fast());
    let key = format!("gmail:{USER}/INBOX");
    let engine = |account: Arc<GmailAccount>| {
        let loaded = &loaded;
        let key = key.clone();
        async move {
            let folder = Folder {
                cloud: Arc::new(GmailMailbox::new(account, "INBOX", &key)),
                key,
                delete_action: DeleteAction::Archive,
            };
            build_engine(loaded, vec![folder], false).await
        }
    };
    let inbox = home.path().join("mail/inbox");

    let mut e = engine(account.clone()).await;
    let r = e.cycle().await.expect("cycle");
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.downloads, 500);
    let local = maildir_files(&inbox);
    assert_eq!(local.len(), 500);
    let want = env.expected("INBOX").await;
    let mut want_flags: Vec<Flags> = want.values().map(|v| v.0).collect();
    let mut got_flags: Vec<Flags> = local.iter().map(|(_, f)| *f).collect();
    want_flags.sort();
    got_flags.sort();
    assert_eq!(got_flags, want_flags, "local flags are the cloud's");
    assert!(
        local
            .iter()
            .all(|(p, _)| !std::fs::read(p).expect("read").contains(&b'\r'))
    );

    // Second cycle: nothing to download, nothing to do, one request.
    env.reset_stats().await;
    let r = e.cycle().await.expect("cycle");
    assert_eq!((r.downloads, r.actions), (0, 0), "{r:?}");
    assert_eq!(env.stats().await.http_requests(), 1);

    // Replied set locally: kept locally, never sent.
    let labels_before = env.labels().await;
    let (path, flags) = local[0].clone();
    let name = path
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let (base, _, other) = parse_name(&name);
    let (sub, new_name) =
        cloud_mdir_sync::maildir::encode_name(base, flags | Flags::REPLIED, &other);
    let replied = inbox.join(sub.as_str()).join(new_name);
    std::fs::rename(&path, &replied).expect("rename");
    env.reset_stats().await;
    let r = e.cycle().await.expect("cycle");
    assert!(r.is_clean(), "{r:?}");
    let s = env.stats().await;
    assert_eq!(s.on("gmail POST /users/me/messages/batchModify"), 0);
    assert_eq!(
        env.labels().await,
        labels_before,
        "nothing changed in the cloud"
    );
    assert!(replied.exists(), "replied flag kept locally");

    // A local read flag goes to the cloud; the replied flag stays.
    let unread = maildir_files(&inbox)
        .into_iter()
        .find(|(_, f)| !f.contains(Flags::READ) && !f.contains(Flags::REPLIED))
        .expect("an unread message");
    let name = unread
        .0
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let (base, _, other) = parse_name(&name);
    let (sub, new_name) =
        cloud_mdir_sync::maildir::encode_name(base, unread.1 | Flags::READ, &other);
    std::fs::rename(&unread.0, inbox.join(sub.as_str()).join(new_name)).expect("rename");
    let r = e.cycle().await.expect("cycle");
    assert!(r.is_clean(), "{r:?}");
    let after = env.labels().await;
    let changed: Vec<_> = after
        .iter()
        .filter(|(id, l)| labels_before.get(*id) != Some(l))
        .collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert!(!changed[0].1.contains("UNREAD"));

    // A restart resumes from the persisted cursor: no download, one request
    // (profile) plus a history page for our own change.
    drop(e);
    let mut e = engine(env.account(fast())).await;
    env.reset_stats().await;
    let r = e.cycle().await.expect("cycle");
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.downloads, 0);
    assert!(env.stats().await.http_requests() <= 2);
    let r = e.cycle().await.expect("cycle");
    assert_eq!(r.actions, 0, "converged: {r:?}");
    assert!(replied.exists(), "replied flag survives the restart");
}
