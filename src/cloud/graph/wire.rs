//! Microsoft Graph v1.0 JSON as it crosses the wire: collection pages, mail
//! folders, delta items, extended properties, errors and `$batch` envelopes,
//! plus the UTC timestamp form Graph uses. Field names follow the Graph
//! reference (learn.microsoft.com/graph/api/resources/...), cited per type.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A page of a collection: `{"value":[...], "@odata.nextLink"|"@odata.deltaLink"}`
/// (graph/paging; graph/delta-query-overview: a page carries exactly one of
/// the two links).
#[derive(Debug, Deserialize)]
pub struct Page<T> {
    /// The items of this page.
    #[serde(default = "Vec::new")]
    pub value: Vec<T>,
    /// Absolute URL of the next page, followed as given.
    #[serde(rename = "@odata.nextLink")]
    pub next_link: Option<String>,
    /// Absolute URL that starts the next delta round (last page only).
    #[serde(rename = "@odata.deltaLink")]
    pub delta_link: Option<DeltaLink>,
}

/// The `@odata.deltaLink` of a finished delta round: the absolute URL that
/// lists what changed since (opaque state in its query; followed as given).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeltaLink(pub String);

/// A `mailFolder` (resources/mailfolder), only the fields we use.
#[derive(Debug, Deserialize)]
pub struct MailFolder {
    /// Folder id (folder ids never change, immutable or not).
    pub id: String,
    /// The name users see and configs name.
    #[serde(rename = "displayName", default)]
    pub display_name: String,
}

/// A message as `messages/delta` returns it with our `$select` (resources/message;
/// api/message-delta). Everything but `id` may be absent: removed entries
/// carry only `id` and `@removed`, and updates carry "at least" the changed
/// properties.
#[derive(Debug, Deserialize)]
pub struct DeltaMessage {
    /// Immutable id (we send `Prefer: IdType="ImmutableId"`).
    pub id: String,
    /// Present when the message left the folder (moved or deleted).
    #[serde(rename = "@removed")]
    pub removed: Option<Removed>,
    /// The Message-ID header.
    #[serde(rename = "internetMessageId")]
    pub internet_message_id: Option<String>,
    /// Read state.
    #[serde(rename = "isRead")]
    pub is_read: Option<bool>,
    /// Follow-up flag.
    pub flag: Option<FollowupFlag>,
    /// Receive time, UTC (`2024-05-01T10:20:30Z`).
    #[serde(rename = "receivedDateTime")]
    pub received_date_time: Option<String>,
    /// The expanded MAPI properties that exist on the message; absent when
    /// none of the requested ones do.
    #[serde(rename = "singleValueExtendedProperties")]
    pub single_value_extended_properties: Option<Vec<ExtendedProperty>>,
}

/// The `@removed` annotation of a delta item (`{"reason":"deleted"}`).
#[derive(Debug, Deserialize)]
pub struct Removed {
    /// `deleted` or `changed`.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A `followupFlag` (resources/followupflag).
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct FollowupFlag {
    /// `notFlagged`, `flagged` or `complete`.
    #[serde(rename = "flagStatus", skip_serializing_if = "Option::is_none")]
    pub flag_status: Option<String>,
}

/// A `singleValueLegacyExtendedProperty`: `id` is `"<Type> <tag>"`, e.g.
/// `"Integer 0x1080"`, and `value` is always a string
/// (resources/singlevaluelegacyextendedproperty).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct ExtendedProperty {
    /// Property id, e.g. `Integer 0x1080`.
    pub id: String,
    /// The value as text.
    #[serde(default)]
    pub value: Option<String>,
}

/// The body of a message PATCH (api/message-update): only what we change.
#[derive(Debug, Default, Serialize)]
pub struct MessagePatch {
    /// New read state.
    #[serde(rename = "isRead", skip_serializing_if = "Option::is_none")]
    pub is_read: Option<bool>,
    /// New follow-up flag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flag: Option<FollowupFlag>,
    /// MAPI properties to write.
    #[serde(
        rename = "singleValueExtendedProperties",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub single_value_extended_properties: Vec<ExtendedProperty>,
}

impl MessagePatch {
    /// True when the PATCH would change nothing.
    pub fn is_empty(&self) -> bool {
        self.is_read.is_none()
            && self.flag.is_none()
            && self.single_value_extended_properties.is_empty()
    }
}

/// The body of `POST /me/messages/{id}/move` (api/message-move).
#[derive(Debug, Serialize)]
pub struct MoveRequest<'a> {
    /// A folder id or a well-known name (`archive`, `deleteditems`).
    #[serde(rename = "destinationId")]
    pub destination_id: &'a str,
}

/// A Graph error body: `{"error":{"code","message",...}}` (graph/errors).
#[derive(Debug, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inner error object.
#[derive(Debug, Default, Deserialize)]
pub struct ErrorDetail {
    /// Machine-readable code, e.g. `ErrorItemNotFound`, `SyncStateNotFound`.
    #[serde(default)]
    pub code: String,
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
}

/// `POST /$batch` body (graph/json-batching): at most 20 requests.
#[derive(Debug, Serialize)]
pub struct BatchRequest {
    /// The parts.
    pub requests: Vec<BatchPart>,
}

/// One request inside a batch; `url` is relative to the version root.
#[derive(Debug, Serialize)]
pub struct BatchPart {
    /// Unique within the batch; responses are matched by it.
    pub id: String,
    /// HTTP method.
    pub method: &'static str,
    /// E.g. `/me/messages/{id}`.
    pub url: String,
    /// Part headers; outer headers such as `Prefer` do not apply to parts.
    pub headers: BTreeMap<String, String>,
    /// JSON body (needs a `Content-Type` header).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

/// `POST /$batch` answer: responses in any order.
#[derive(Debug, Deserialize)]
pub struct BatchResponse {
    /// One per request.
    #[serde(default)]
    pub responses: Vec<BatchPartResponse>,
}

/// One part's answer.
#[derive(Debug, Deserialize)]
pub struct BatchPartResponse {
    /// The request id it answers.
    pub id: String,
    /// Its HTTP status (429 carries its own `Retry-After` header).
    pub status: u16,
    /// Its headers (values are strings in practice; anything else is ignored).
    #[serde(default)]
    pub headers: BTreeMap<String, Value>,
    /// Its body, when it has one.
    #[serde(default)]
    pub body: Option<Value>,
}

impl BatchPartResponse {
    /// A header of the part, name compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_str())
    }

    /// The Graph error of the part, if its body is one.
    pub fn error(&self) -> Option<ErrorDetail> {
        let body = self.body.as_ref()?;
        serde_json::from_value::<ErrorBody>(body.clone())
            .ok()
            .map(|e| e.error)
    }
}

/// Seconds since the epoch of a Graph timestamp: RFC 3339
/// (`YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM)`), or the same without an offset,
/// which Graph means as UTC; `None` when it is not one.
pub fn parse_utc(s: &str) -> Option<i64> {
    let s = s.trim();
    match chrono::DateTime::parse_from_rfc3339(s) {
        Ok(t) => Some(t.timestamp()),
        Err(_) => chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
            .ok()
            .map(|t| t.and_utc().timestamp()),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch (the form of
/// `SystemTime` extended property values we write).
pub fn format_utc(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_round_trip() {
        assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_utc("2024-05-01T10:20:30Z"), Some(1_714_558_830));
        assert_eq!(parse_utc("2024-05-01T10:20:30.123Z"), Some(1_714_558_830));
        assert_eq!(parse_utc("2024-05-01T12:20:30+02:00"), Some(1_714_558_830));
        assert_eq!(parse_utc("2024-02-29T00:00:00"), Some(1_709_164_800));
        assert_eq!(parse_utc("garbage"), None);
        assert_eq!(parse_utc("2024-13-01T00:00:00Z"), None);
        assert_eq!(parse_utc("2024-02-30T00:00:00Z"), None);
        for t in [0, 1_714_558_830, 951_782_400, -86_400, 4_102_444_800] {
            assert_eq!(parse_utc(&format_utc(t)), Some(t), "{t}");
        }
        assert_eq!(format_utc(1_714_558_830), "2024-05-01T10:20:30Z");
    }

    #[test]
    fn delta_items_parse_with_missing_fields() {
        let page: Page<DeltaMessage> = serde_json::from_str(
            r##"{"value":[
                {"@odata.type":"#microsoft.graph.message","id":"A","isRead":true,
                 "flag":{"flagStatus":"flagged"},"receivedDateTime":"2024-05-01T10:20:30Z",
                 "internetMessageId":"<a@b>",
                 "singleValueExtendedProperties":[{"id":"Integer 0x1080","value":"261"}]},
                {"id":"B","@removed":{"reason":"deleted"}}],
              "@odata.deltaLink":"https://x/delta?$deltatoken=1"}"##,
        )
        .unwrap();
        assert_eq!(page.value.len(), 2);
        assert!(page.next_link.is_none());
        assert!(page.value[1].removed.is_some());
        assert_eq!(page.value[0].is_read, Some(true));
    }

    #[test]
    fn patch_serialises_only_what_changes() {
        let p = MessagePatch {
            is_read: Some(true),
            ..MessagePatch::default()
        };
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"isRead":true}"#);
        assert!(MessagePatch::default().is_empty());
    }
}
