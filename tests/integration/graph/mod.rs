//! The Office365 (Microsoft Graph) backend against the emulator. This file
//! holds the fixtures every topic shares: [`Cloud`] (the emulator plus a
//! second Graph client and its control routes, also used by `local_edits`
//! and `stop`), [`quick`] retry figures, and the listing and flag-change
//! shorthands. The tests are in the sub-modules, by topic:
//!
//! - `listing`: folder lookup, delta listings equal to the emulator's
//!   state, a second client's changes, cursors and restarts, expired delta
//!   tokens, interrupted rounds.
//! - `download`: message content (CRLF to LF, truncation, resets, errors
//!   in a 200).
//! - `writes`: flag writes (incl. the replied state), deletions, `$batch`.
//! - `throttle`: 429/503 storms, long Retry-After, refused tokens, the
//!   per-mailbox concurrency limit, tokens kept out of the logs.
//! - `engine`: the sync engine over Graph (initial sync, retried downloads,
//!   idle polls).

mod download;
mod engine;
mod listing;
mod throttle;
mod writes;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cloud_mdir_sync::auth::{AccessToken, Audience, StaticTokens};
use cloud_mdir_sync::cloud::graph::wire::parse_utc;
use cloud_mdir_sync::cloud::graph::{self, ThrottleConfig};
use cloud_mdir_sync::cloud::{CloudEntry, FlagChange};
use cloud_mdir_sync::endpoints::Endpoints;
use cloud_mdir_sync::sync::engine::Folder;
use cloud_mdir_sync::types::DeleteAction;
use cloud_mdir_sync::types::Flags;
use fake_cloud::{FakeCloud, Handle, Options};
use serde_json::{Value, json};

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
    pub(crate) fn account(&self) -> graph::Account {
        self.account_with(quick())
    }

    pub(crate) fn account_with(&self, cfg: ThrottleConfig) -> graph::Account {
        let tokens = StaticTokens::new(USER, [(Audience::Graph, AccessToken::new(self.token()))]);
        graph::Account::with_throttle(
            USER,
            Arc::new(tokens),
            Endpoints::emulated(self.h.base_url()),
            cfg,
        )
        .expect("account")
    }

    pub(crate) fn mailbox(&self, account: &graph::Account, path: &str) -> graph::Mailbox {
        graph::Mailbox::new(account.clone(), path, &format!("office365:{USER}/{path}"))
    }

    /// The inbox as the engine's folder (deletions archive).
    pub(crate) fn inbox_folder(&self, account: &graph::Account) -> Folder {
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
