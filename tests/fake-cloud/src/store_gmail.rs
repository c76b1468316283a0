//! Gmail mailbox model: system and user labels, messages with label sets and threads,
//! and a bounded history log whose ids rise non-contiguously.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::mime;
use crate::state::Rng;

/// System labels every mailbox has; SENT, DRAFT and CHAT cannot be applied by hand.
pub const SYSTEM_LABELS: &[&str] = &[
    "CHAT",
    "SENT",
    "INBOX",
    "IMPORTANT",
    "TRASH",
    "DRAFT",
    "SPAM",
    "CATEGORY_FORUMS",
    "CATEGORY_UPDATES",
    "CATEGORY_PERSONAL",
    "CATEGORY_PROMOTIONS",
    "CATEGORY_SOCIAL",
    "STARRED",
    "UNREAD",
];

/// Labels a client may not add or remove itself.
pub const NOT_SETTABLE: &[&str] = &["SENT", "DRAFT", "CHAT"];

/// One label.
#[derive(Clone, Debug)]
pub struct Label {
    /// `INBOX` or `Label_N`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// True for system labels.
    pub system: bool,
    /// `labelListVisibility`.
    pub label_list_visibility: Option<String>,
    /// `messageListVisibility`.
    pub message_list_visibility: Option<String>,
}

impl Label {
    /// The JSON of `labels.list` (no counts).
    pub fn to_json(&self) -> Value {
        let mut v = json!({"id": self.id, "name": self.name,
            "type": if self.system { "system" } else { "user" }});
        if let Some(l) = &self.label_list_visibility {
            v["labelListVisibility"] = json!(l);
        }
        if let Some(m) = &self.message_list_visibility {
            v["messageListVisibility"] = json!(m);
        }
        v
    }
}

/// One message.
#[derive(Clone, Debug)]
pub struct GMessage {
    /// 16 hex digits.
    pub id: String,
    /// Thread id (id of the first message of the thread).
    pub thread_id: String,
    /// Label ids.
    pub labels: Vec<String>,
    /// Content with CRLF line ends.
    pub mime: Arc<Vec<u8>>,
    /// `internalDate`, epoch ms.
    pub internal_ms: i64,
    /// Last history id that touched it.
    pub history_id: u64,
}

/// What one history record says.
#[derive(Clone, Debug)]
pub enum HistKind {
    /// messagesAdded.
    Added,
    /// messagesDeleted (permanent deletion).
    Deleted,
    /// labelsAdded.
    LabelsAdded(Vec<String>),
    /// labelsRemoved.
    LabelsRemoved(Vec<String>),
}

/// One history record (one message, one change).
#[derive(Clone, Debug)]
pub struct HistRec {
    /// History id.
    pub id: u64,
    /// Message id.
    pub msg_id: String,
    /// Thread id.
    pub thread_id: String,
    /// The change.
    pub kind: HistKind,
    /// Labels of the message after the change.
    pub labels_after: Vec<String>,
}

/// A user's Gmail mailbox.
pub struct GmailMailbox {
    /// Lower-cased address.
    pub user: String,
    /// Labels in creation order.
    pub labels: Vec<Label>,
    /// Next `Label_N`.
    pub next_label: u32,
    /// Messages by id.
    pub messages: HashMap<String, GMessage>,
    /// Thread ids by Message-ID header.
    pub threads_by_msgid: HashMap<String, String>,
    /// History records, oldest first.
    pub history: VecDeque<HistRec>,
    /// Current history id.
    pub history_id: u64,
    /// Oldest `startHistoryId` still served.
    pub floor: u64,
}

impl GmailMailbox {
    /// A new mailbox with the system labels.
    pub fn new(user: &str, rng: &mut Rng) -> GmailMailbox {
        let labels = SYSTEM_LABELS
            .iter()
            .map(|id| {
                let (ll, ml) = match *id {
                    "INBOX" | "SENT" | "DRAFT" | "SPAM" | "TRASH" | "STARRED" | "IMPORTANT"
                    | "UNREAD" | "CHAT" => (Some("labelShow"), Some("hide")),
                    _ => (None, None),
                };
                Label {
                    id: id.to_string(),
                    name: id.to_string(),
                    system: true,
                    label_list_visibility: ll.map(str::to_string),
                    message_list_visibility: ml.map(str::to_string),
                }
            })
            .collect();
        let start = 1000 + rng.below(90_000);
        GmailMailbox {
            user: user.to_string(),
            labels,
            next_label: 1,
            messages: HashMap::new(),
            threads_by_msgid: HashMap::new(),
            history: VecDeque::new(),
            history_id: start,
            floor: start,
        }
    }

    /// Label by id.
    pub fn label(&self, id: &str) -> Option<&Label> {
        self.labels.iter().find(|l| l.id == id)
    }

    /// Creates a user label; None when the name exists.
    pub fn create_label(
        &mut self,
        name: &str,
        ll: Option<String>,
        ml: Option<String>,
    ) -> Option<Label> {
        if self
            .labels
            .iter()
            .any(|l| l.name.eq_ignore_ascii_case(name))
        {
            return None;
        }
        let l = Label {
            id: format!("Label_{}", self.next_label),
            name: name.to_string(),
            system: false,
            label_list_visibility: ll.or(Some("labelShow".into())),
            message_list_visibility: ml.or(Some("show".into())),
        };
        self.next_label += 1;
        self.labels.push(l.clone());
        Some(l)
    }

    /// Label id for a name or id (creating a user label when `create`).
    pub fn label_id(&mut self, name_or_id: &str, create: bool) -> Option<String> {
        if let Some(l) = self
            .labels
            .iter()
            .find(|l| l.id == name_or_id || l.name.eq_ignore_ascii_case(name_or_id))
        {
            return Some(l.id.clone());
        }
        if create {
            return self.create_label(name_or_id, None, None).map(|l| l.id);
        }
        None
    }

    fn record(&mut self, rng: &mut Rng, window: usize, msg_id: &str, kind: HistKind) -> u64 {
        self.history_id += rng.range(1, 9);
        let (thread_id, labels_after) = self
            .messages
            .get(msg_id)
            .map(|m| (m.thread_id.clone(), m.labels.clone()))
            .unwrap_or_else(|| (msg_id.to_string(), Vec::new()));
        self.history.push_back(HistRec {
            id: self.history_id,
            msg_id: msg_id.to_string(),
            thread_id,
            kind,
            labels_after,
        });
        while self.history.len() > window.max(1) {
            if let Some(old) = self.history.pop_front() {
                self.floor = self.floor.max(old.id);
            }
        }
        if let Some(m) = self.messages.get_mut(msg_id) {
            m.history_id = self.history_id;
        }
        self.history_id
    }

    /// Makes every history id up to now unusable (a too-old `startHistoryId`).
    pub fn expire_history(&mut self) {
        self.history.clear();
        self.history_id += 1;
        self.floor = self.history_id;
    }

    /// Adds a message (insert/import/delivery); returns its id.
    pub fn insert(
        &mut self,
        rng: &mut Rng,
        window: usize,
        raw: &[u8],
        labels: Vec<String>,
        internal_ms: i64,
    ) -> String {
        let mut id;
        loop {
            id = format!(
                "{:016x}",
                ((internal_ms.max(0) as u64) << 20 | rng.below(1 << 20)) & 0x7fff_ffff_ffff_ffff
            );
            if !self.messages.contains_key(&id) {
                break;
            }
        }
        let crlf = mime::to_crlf(raw);
        let hs = mime::headers(&crlf);
        let mut thread_id = id.clone();
        let refs = [
            mime::header(&hs, "in-reply-to").unwrap_or(""),
            mime::header(&hs, "references").unwrap_or(""),
        ]
        .join(" ");
        for r in refs.split_whitespace() {
            if let Some(t) = self.threads_by_msgid.get(r) {
                thread_id = t.clone();
                break;
            }
        }
        if let Some(mid) = mime::header(&hs, "message-id") {
            self.threads_by_msgid
                .entry(mid.trim().to_string())
                .or_insert_with(|| thread_id.clone());
        }
        let mut uniq: Vec<String> = Vec::new();
        for l in labels {
            if !uniq.contains(&l) {
                uniq.push(l);
            }
        }
        self.messages.insert(
            id.clone(),
            GMessage {
                id: id.clone(),
                thread_id,
                labels: uniq,
                mime: Arc::new(crlf),
                internal_ms,
                history_id: 0,
            },
        );
        self.record(rng, window, &id, HistKind::Added);
        id
    }

    /// Adds and removes labels; history records only for real changes.
    pub fn modify(
        &mut self,
        rng: &mut Rng,
        window: usize,
        id: &str,
        add: &[String],
        remove: &[String],
    ) {
        let Some(m) = self.messages.get_mut(id) else {
            return;
        };
        let mut added = Vec::new();
        let mut removed = Vec::new();
        for l in add {
            if !m.labels.contains(l) && !remove.contains(l) {
                m.labels.push(l.clone());
                added.push(l.clone());
            }
        }
        for l in remove {
            if let Some(pos) = m.labels.iter().position(|x| x == l) {
                m.labels.remove(pos);
                removed.push(l.clone());
            }
        }
        if !added.is_empty() {
            self.record(rng, window, id, HistKind::LabelsAdded(added));
        }
        if !removed.is_empty() {
            self.record(rng, window, id, HistKind::LabelsRemoved(removed));
        }
    }

    /// Deletes a message permanently.
    pub fn delete(&mut self, rng: &mut Rng, window: usize, id: &str) {
        if self.messages.contains_key(id) {
            self.record(rng, window, id, HistKind::Deleted);
            self.messages.remove(id);
        }
    }
}
