//! The Gmail backend against the emulator. This file holds the fixtures
//! every topic shares: [`Env`] (the emulator plus a second Gmail client and
//! its control routes), [`fast`] options, and listing comparisons against
//! the emulator's state; `stats` reads its request and quota counters. The
//! tests are in the sub-modules, by topic:
//!
//! - `listing`: full listings of system and user labels, a missing label,
//!   one idle poll shared by an account's labels, a failed first listing.
//! - `history`: history after a second client's changes, many history
//!   pages, restarts from the cursor, expired history, new mail.
//! - `download`: message content (CRLF to LF) and broken answers.
//! - `writes`: flag changes and deletes as label changes, `batchModify`.
//! - `quota`: rate-limit storms and outages, the emulator's own limiter,
//!   quota use in normal running.
//! - `tokens`: refused tokens refreshed once and kept out of the logs.
//! - `engine`: the sync engine over a label (replied kept locally).

mod download;
mod engine;
mod history;
mod listing;
mod quota;
mod stats;
mod tokens;
mod writes;

use stats::Stats;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use cloud_mdir_sync::auth::{AccessToken, Audience, StaticTokens};
use cloud_mdir_sync::cloud::CloudEntry;
use cloud_mdir_sync::cloud::gmail::{self, Limits, Options};
use cloud_mdir_sync::endpoints::Endpoints;
use cloud_mdir_sync::types::Flags;
use fake_cloud::{FakeCloud, Handle, QuotaMode};
use serde_json::{Value, json};

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
    fn account(&self, opts: Options) -> Arc<gmail::Account> {
        let tokens = StaticTokens::new(
            USER,
            [(Audience::Gmail, AccessToken::new(self.token(&[MODIFY])))],
        );
        gmail::Account::new(
            USER,
            Endpoints::emulated(self.h.base_url()),
            Arc::new(tokens),
            opts,
        )
        .expect("account")
    }

    fn mailbox(&self, opts: Options, label: &str) -> gmail::Mailbox {
        gmail::Mailbox::new(self.account(opts), label, &format!("gmail:{USER}/{label}"))
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
