//! Gmail API v1 wire types (serde), as documented in the API discovery
//! document: profile, labels, message lists, messages, history and the error
//! envelope. Only the fields the backend reads are declared; unknown fields
//! are ignored, absent optional ones default.

use serde::{Deserialize, Serialize};

/// A point in a Gmail mailbox's history (`historyId`): changes after it
/// can be listed. Sent and stored as a decimal string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HistoryId(pub u64);

impl HistoryId {
    /// The id in `s` (surrounding blanks allowed), if it is one.
    pub fn parse(s: &str) -> Option<HistoryId> {
        s.trim().parse().ok().map(HistoryId)
    }
}

impl std::fmt::Display for HistoryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// `GET users/me/profile`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// The mailbox's current history id (a uint64 sent as a string).
    pub history_id: String,
}

/// `GET users/me/labels`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct LabelList {
    /// Every label; the key is absent when there are none.
    #[serde(default)]
    pub labels: Vec<Label>,
}

/// One label in a label list.
#[derive(Clone, Debug, Deserialize)]
pub struct Label {
    /// `INBOX` for system labels, `Label_N` for user labels.
    pub id: String,
    /// Display name (equal to the id for system labels).
    pub name: String,
}

/// `GET users/me/messages`: one page of message references.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageList {
    /// The page; left out when there are no messages.
    #[serde(default)]
    pub messages: Vec<MessageRef>,
    /// Present unless this is the last page.
    pub next_page_token: Option<String>,
}

/// A message id as lists and history records carry it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageRef {
    /// Message id.
    pub id: String,
    /// Label ids after the change, when the server includes them.
    pub label_ids: Option<Vec<String>>,
}

/// `GET users/me/messages/{id}` in the `minimal`, `metadata` or `raw` format.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// Message id.
    pub id: String,
    /// Label ids; absent when the message has none.
    #[serde(default)]
    pub label_ids: Vec<String>,
    /// Acceptance time, epoch milliseconds as a string.
    pub internal_date: Option<String>,
    /// Headers (format `metadata`).
    pub payload: Option<Payload>,
    /// base64url RFC 2822 content (format `raw`).
    pub raw: Option<String>,
}

/// The parsed top-level part of a message (only its headers are read).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Payload {
    /// Header name/value pairs, in message order.
    #[serde(default)]
    pub headers: Vec<Header>,
}

/// One message header.
#[derive(Clone, Debug, Deserialize)]
pub struct Header {
    /// Header name as written in the message.
    pub name: String,
    /// Unfolded value.
    pub value: String,
}

/// `GET users/me/history`: one page of history records.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryList {
    /// Records in increasing id order; left out when there are none.
    #[serde(default)]
    pub history: Vec<History>,
    /// Present unless this is the last page.
    pub next_page_token: Option<String>,
    /// The mailbox's current history id.
    pub history_id: String,
}

/// One history record; only the type-specific arrays are used.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    /// Messages that arrived.
    #[serde(default)]
    pub messages_added: Vec<MessageChange>,
    /// Messages deleted permanently (moving to Trash is `labelsAdded: TRASH`).
    #[serde(default)]
    pub messages_deleted: Vec<MessageChange>,
    /// Labels added to messages.
    #[serde(default)]
    pub labels_added: Vec<LabelChange>,
    /// Labels removed from messages.
    #[serde(default)]
    pub labels_removed: Vec<LabelChange>,
}

/// `messagesAdded` / `messagesDeleted` entry.
#[derive(Clone, Debug, Deserialize)]
pub struct MessageChange {
    /// The message (id, sometimes its labels).
    pub message: MessageRef,
}

/// `labelsAdded` / `labelsRemoved` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelChange {
    /// The message (id, sometimes its labels after the change).
    pub message: MessageRef,
    /// The labels added or removed.
    #[serde(default)]
    pub label_ids: Vec<String>,
}

/// `POST users/me/messages/batchModify` body (the answer is empty).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchModify<'a> {
    /// At most 1,000 message ids.
    pub ids: &'a [String],
    /// Labels to add.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub add_label_ids: &'a [String],
    /// Labels to remove.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub remove_label_ids: &'a [String],
}

/// `POST users/me/messages/{id}/modify` body.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Modify<'a> {
    /// Labels to add.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub add_label_ids: &'a [String],
    /// Labels to remove.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub remove_label_ids: &'a [String],
}

/// Google's error envelope: `{"error":{"code","message","errors":[..],"status"}}`.
#[derive(Clone, Debug, Deserialize)]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ErrorBody,
}

/// The body of an error envelope.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ErrorBody {
    /// HTTP status repeated.
    #[serde(default)]
    pub code: u16,
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
    /// Detailed reasons (`userRateLimitExceeded`, `notFound`, ...).
    #[serde(default)]
    pub errors: Vec<ErrorItem>,
    /// Canonical status (`NOT_FOUND`, `RESOURCE_EXHAUSTED`, ...).
    #[serde(default)]
    pub status: Option<String>,
}

/// One `errors[]` entry.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ErrorItem {
    /// Machine-readable reason.
    #[serde(default)]
    pub reason: String,
    /// Error domain (`global`, `usageLimits`).
    #[serde(default)]
    pub domain: String,
}

impl ErrorBody {
    /// The first `errors[].reason`, or `""`.
    pub fn reason(&self) -> &str {
        self.errors.first().map(|e| e.reason.as_str()).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_list_and_history_parse() {
        let l: MessageList = serde_json::from_str(r#"{"resultSizeEstimate":0}"#).unwrap();
        assert!(l.messages.is_empty() && l.next_page_token.is_none());
        let h: HistoryList = serde_json::from_str(r#"{"historyId":"1710"}"#).unwrap();
        assert!(h.history.is_empty());
        assert_eq!(h.history_id, "1710");
    }

    #[test]
    fn history_record_parses() {
        let h: HistoryList = serde_json::from_str(
            r#"{"history":[{"id":"5","messages":[{"id":"a","threadId":"a"}],
            "labelsRemoved":[{"message":{"id":"a","threadId":"a"},"labelIds":["UNREAD"]}]}],
            "historyId":"9"}"#,
        )
        .unwrap();
        let r = &h.history[0];
        assert_eq!(r.labels_removed[0].message.id, "a");
        assert!(r.labels_removed[0].message.label_ids.is_none());
        assert_eq!(r.labels_removed[0].label_ids, vec!["UNREAD"]);
    }

    #[test]
    fn error_envelope_parses() {
        let e: ErrorEnvelope = serde_json::from_str(
            r#"{"error":{"code":403,"message":"User Rate Limit Exceeded",
            "errors":[{"domain":"usageLimits","reason":"userRateLimitExceeded","message":"x"}]}}"#,
        )
        .unwrap();
        assert_eq!(e.error.reason(), "userRateLimitExceeded");
        assert_eq!(e.error.code, 403);
    }

    #[test]
    fn batch_modify_skips_empty_lists() {
        let ids = vec!["a".to_string()];
        let add = vec!["TRASH".to_string()];
        let v = serde_json::to_value(BatchModify {
            ids: &ids,
            add_label_ids: &add,
            remove_label_ids: &[],
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ids": ["a"], "addLabelIds": ["TRASH"]})
        );
    }
}
