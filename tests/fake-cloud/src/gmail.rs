//! Gmail API v1: profile, labels (list/get/create/delete), messages (list, get in
//! minimal/metadata/full/raw, insert/import incl. media uploads, modify, trash,
//! untrash, delete, batchModify, batchDelete, attachments), history and watch/stop.
//! Each call is authenticated, charged its quota units and holds a concurrency slot.

use std::sync::Arc;

use base64::Engine;
use serde_json::{Value, json};

use crate::errors::{self, google, google_bad, google_not_found};
use crate::http::{Req, Resp};
use crate::mime;
use crate::quota::{Denied, Slot, Svc, gmail_units};
use crate::state::App;
use crate::store_gmail::{GMessage, GmailMailbox, HistKind, NOT_SETTABLE};
use crate::tokens::{AccessToken, Audience, Provider};

const FULL: &str = "https://mail.google.com/";
const MODIFY: &str = "https://www.googleapis.com/auth/gmail.modify";
const READONLY: &str = "https://www.googleapis.com/auth/gmail.readonly";
const METADATA: &str = "https://www.googleapis.com/auth/gmail.metadata";
const LABELS: &str = "https://www.googleapis.com/auth/gmail.labels";
const INSERT: &str = "https://www.googleapis.com/auth/gmail.insert";

/// Entry point for gmail.googleapis.com / www.googleapis.com.
pub async fn handle(app: &Arc<App>, r: Req) -> Resp {
    let s: Vec<&str> = r.segs.iter().map(String::as_str).collect();
    match s.as_slice() {
        [_, "batch"] | [_, "batch", "gmail", "v1"] => crate::gmail_batch::handle(app, r).await,
        [_, "gmail", "v1", "users", ..] | [_, "upload", "gmail", "v1", "users", ..] => {
            call(app, r).await
        }
        _ => google_not_found(),
    }
}

/// Checks the bearer token of a Gmail request.
pub fn authenticate(app: &Arc<App>, r: &Req) -> Result<AccessToken, Resp> {
    let tok = r
        .bearer()
        .and_then(|b| app.lock().auth.access.get(b).cloned())
        .ok_or_else(errors::google_unauthorized)?;
    if tok.provider != Provider::Google
        || tok.audience != Audience::Google
        || tok.expires_ms <= app.now_ms()
    {
        return Err(errors::google_unauthorized());
    }
    Ok(tok)
}

/// The API method name of a request (for quota units and scope checks).
fn method_name(m: &str, rest: &[&str]) -> &'static str {
    match (m, rest) {
        ("GET", ["profile"]) => "getProfile",
        ("GET", ["labels"]) => "labels.list",
        ("POST", ["labels"]) => "labels.create",
        ("GET", ["labels", _]) => "labels.get",
        ("DELETE", ["labels", _]) => "labels.delete",
        ("PATCH" | "PUT", ["labels", _]) => "labels.patch",
        ("GET", ["messages"]) => "messages.list",
        ("POST", ["messages"]) => "messages.insert",
        ("POST", ["messages", "import"]) => "messages.import",
        ("POST", ["messages", "batchModify"]) => "messages.batchModify",
        ("POST", ["messages", "batchDelete"]) => "messages.batchDelete",
        ("GET", ["messages", _]) => "messages.get",
        ("DELETE", ["messages", _]) => "messages.delete",
        ("POST", ["messages", _, "modify"]) => "messages.modify",
        ("POST", ["messages", _, "trash"]) => "messages.trash",
        ("POST", ["messages", _, "untrash"]) => "messages.untrash",
        ("GET", ["messages", _, "attachments", _]) => "attachments.get",
        ("GET", ["history"]) => "history.list",
        ("POST", ["watch"]) => "watch",
        ("POST", ["stop"]) => "stop",
        _ => "unknown",
    }
}

fn scopes_for(method: &str) -> &'static [&'static str] {
    match method {
        "getProfile" | "messages.list" | "history.list" | "labels.get" | "messages.get"
        | "attachments.get" | "watch" | "stop" => &[FULL, MODIFY, READONLY, METADATA],
        "labels.list" => &[FULL, MODIFY, READONLY, METADATA, LABELS],
        "labels.create" | "labels.delete" | "labels.patch" => &[FULL, MODIFY, LABELS],
        "messages.insert" | "messages.import" => &[FULL, MODIFY, INSERT],
        "messages.delete" | "messages.batchDelete" => &[FULL],
        _ => &[FULL, MODIFY],
    }
}

/// One authenticated, quota-charged Gmail request (also used for batch parts).
pub async fn call(app: &Arc<App>, r: Req) -> Resp {
    let tok = match authenticate(app, &r) {
        Ok(t) => t,
        Err(e) => return e,
    };
    let start = r
        .segs
        .iter()
        .position(|s| s == "users")
        .map(|p| p + 1)
        .unwrap_or(r.segs.len());
    let Some(uid) = r.segs.get(start) else {
        return google_not_found();
    };
    if uid != "me" && !uid.eq_ignore_ascii_case(&tok.user) {
        return google(
            403,
            "forbidden",
            &format!("Delegation denied for {}", tok.user),
        );
    }
    let rest: Vec<&str> = r.segs[start + 1..].iter().map(String::as_str).collect();
    let method = method_name(r.method.as_str(), &rest);
    if method == "unknown" {
        return google_not_found();
    }
    if !scopes_for(method)
        .iter()
        .any(|s| tok.scopes.iter().any(|t| t == s))
    {
        return errors::google_insufficient_scope();
    }
    let slot = match Slot::take(app, Svc::Gmail, &tok.user, gmail_units(method)) {
        Ok(s) => s,
        Err(Denied::Concurrency(ra)) => {
            return google(
                429,
                "rateLimitExceeded",
                "Too many concurrent requests for user.",
            )
            .with_header("Retry-After", &errors::fmt_retry(ra));
        }
        Err(Denied::Window(ra)) => {
            app.stats().record_throttle();
            let when = chrono::Utc::now() + chrono::Duration::milliseconds((ra * 1000.0) as i64);
            return google(
                403,
                "userRateLimitExceeded",
                &format!(
                    "User-rate limit exceeded.  Retry after {}",
                    when.format("%Y-%m-%dT%H:%M:%S%.3fZ")
                ),
            )
            .with_header("Retry-After", &errors::fmt_retry(ra));
        }
    };
    if !app.opts.latency.is_zero() {
        tokio::time::sleep(app.opts.latency).await;
    }
    let resp = exec(app, &r, &tok, method, &rest);
    drop(slot);
    resp
}

fn exec(app: &Arc<App>, r: &Req, tok: &AccessToken, method: &str, rest: &[&str]) -> Resp {
    let now = app.now_ms();
    let window = app.opts.history_window;
    let mut guard = app.lock();
    let st = &mut *guard;
    st.gmail_mailbox(&tok.user);
    let Some(mb) = st.gmail.get_mut(&tok.user) else {
        return google_not_found();
    };
    let rng = &mut st.rng;
    let metadata_only = tok
        .scopes
        .iter()
        .all(|s| s == METADATA || s == LABELS || s == INSERT || !s.contains("mail"));
    match method {
        "getProfile" => {
            let threads: std::collections::HashSet<&str> =
                mb.messages.values().map(|m| m.thread_id.as_str()).collect();
            Resp::json(
                200,
                &json!({"emailAddress": mb.user, "messagesTotal": mb.messages.len(),
                "threadsTotal": threads.len(), "historyId": mb.history_id.to_string()}),
            )
        }
        "labels.list" => Resp::json(
            200,
            &json!({"labels": mb.labels.iter().map(|l| l.to_json()).collect::<Vec<_>>()}),
        ),
        "labels.get" => {
            let Some(l) = mb.label(rest[1]) else {
                return google_not_found();
            };
            let mut v = l.to_json();
            let msgs: Vec<&GMessage> = mb
                .messages
                .values()
                .filter(|m| m.labels.iter().any(|x| x == &l.id))
                .collect();
            let threads: std::collections::HashSet<&str> =
                msgs.iter().map(|m| m.thread_id.as_str()).collect();
            let unread: Vec<&&GMessage> = msgs
                .iter()
                .filter(|m| m.labels.iter().any(|x| x == "UNREAD"))
                .collect();
            let uthreads: std::collections::HashSet<&str> =
                unread.iter().map(|m| m.thread_id.as_str()).collect();
            v["messagesTotal"] = json!(msgs.len());
            v["messagesUnread"] = json!(unread.len());
            v["threadsTotal"] = json!(threads.len());
            v["threadsUnread"] = json!(uthreads.len());
            Resp::json(200, &v)
        }
        "labels.create" => {
            let body = match r.json() {
                Ok(b) => b,
                Err(_) => return google_bad("Invalid JSON payload received."),
            };
            let Some(name) = body
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.trim().is_empty())
            else {
                return google_bad("Invalid label name");
            };
            if crate::store_gmail::SYSTEM_LABELS
                .iter()
                .any(|s| s.eq_ignore_ascii_case(name))
            {
                return google_bad("Invalid label name");
            }
            let s = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
            match mb.create_label(name, s("labelListVisibility"), s("messageListVisibility")) {
                Some(l) => Resp::json(200, &l.to_json()),
                None => google(409, "duplicate", "Label name exists or conflicts"),
            }
        }
        "labels.delete" => {
            let id = rest[1];
            match mb.label(id) {
                None => google_not_found(),
                Some(l) if l.system => google_bad("Invalid delete request"),
                Some(_) => {
                    let ids: Vec<String> = mb
                        .messages
                        .values()
                        .filter(|m| m.labels.iter().any(|x| x == id))
                        .map(|m| m.id.clone())
                        .collect();
                    for m in ids {
                        mb.modify(rng, window, &m, &[], &[id.to_string()]);
                    }
                    mb.labels.retain(|l| l.id != id);
                    Resp::empty(204)
                }
            }
        }
        "labels.patch" => google_bad("Label updates are not emulated."),
        "messages.list" => list(r, mb, metadata_only),
        "messages.get" => {
            let Some(m) = mb.messages.get(rest[1]) else {
                return google_not_found();
            };
            let format = r.q("format").unwrap_or("full");
            if metadata_only && (format == "full" || format == "raw") {
                return google(
                    403,
                    "forbidden",
                    &format!(
                        "Metadata scope doesn't allow format {}",
                        format.to_ascii_uppercase()
                    ),
                );
            }
            match render(m, format, &r.q_all("metadataHeaders")) {
                Some(v) => Resp::json(200, &v),
                None => google_bad(&format!("Invalid value at 'format' ({format})")),
            }
        }
        "attachments.get" => {
            let Some(m) = mb.messages.get(rest[1]) else {
                return google_not_found();
            };
            let tree = mime::parse(&m.mime);
            let mut found = None;
            walk(&tree, "", &mut |pid, p| {
                if attachment_id(&m.id, pid) == rest[3] {
                    found = Some(p.data.clone());
                }
            });
            match found {
                Some(d) => Resp::json(200, &json!({"size": d.len(), "data": b64url(&d)})),
                None => google_bad("Invalid attachment token"),
            }
        }
        "messages.insert" | "messages.import" => insert(r, mb, rng, window, method, now),
        "messages.modify" => {
            let id = rest[1];
            if !mb.messages.contains_key(id) {
                return google_not_found();
            }
            let body = match r.json() {
                Ok(b) => b,
                Err(_) => return google_bad("Invalid JSON payload received."),
            };
            let (add, remove) = match label_changes(mb, &body, 100) {
                Ok(x) => x,
                Err(e) => return e,
            };
            mb.modify(rng, window, id, &add, &remove);
            Resp::json(200, &short(&mb.messages[id]))
        }
        "messages.trash" | "messages.untrash" => {
            let id = rest[1];
            if !mb.messages.contains_key(id) {
                return google_not_found();
            }
            let t = vec!["TRASH".to_string()];
            if method == "messages.trash" {
                mb.modify(rng, window, id, &t, &[]);
            } else {
                mb.modify(rng, window, id, &[], &t);
            }
            Resp::json(200, &short(&mb.messages[id]))
        }
        "messages.delete" => {
            if !mb.messages.contains_key(rest[1]) {
                return google_not_found();
            }
            mb.delete(rng, window, rest[1]);
            Resp::empty(204)
        }
        "messages.batchModify" | "messages.batchDelete" => {
            let body = match r.json() {
                Ok(b) => b,
                Err(_) => return google_bad("Invalid JSON payload received."),
            };
            let Some(ids) = body.get("ids").and_then(Value::as_array) else {
                return google_bad("ids must be specified");
            };
            if ids.len() > 1000 {
                return google_bad("Too many ids specified. Max is 1000.");
            }
            let mut list = Vec::new();
            for i in ids {
                match i.as_str() {
                    Some(s) if !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit()) => {
                        list.push(s.to_string())
                    }
                    _ => return google_bad("Invalid id value"),
                }
            }
            if method == "messages.batchDelete" {
                for id in list {
                    mb.delete(rng, window, &id);
                }
            } else {
                let (add, remove) = match label_changes(mb, &body, 100) {
                    Ok(x) => x,
                    Err(e) => return e,
                };
                // Ids that do not exist are skipped silently (UNVERIFIED; observed
                // clients batch ids that may have been deleted meanwhile).
                for id in list {
                    mb.modify(rng, window, &id, &add, &remove);
                }
            }
            Resp::empty(204)
        }
        "history.list" => history(r, mb),
        "watch" => {
            let body = r.json().unwrap_or(Value::Null);
            let topic = body.get("topicName").and_then(Value::as_str).unwrap_or("");
            if !topic.starts_with("projects/") || !topic.contains("/topics/") {
                return google_bad(
                    "Invalid topicName does not match projects/SOME-PROJECT/topics/SOME-TOPIC",
                );
            }
            Resp::json(
                200,
                &json!({"historyId": mb.history_id.to_string(), "expiration": (now + 7 * 86_400_000).to_string()}),
            )
        }
        "stop" => Resp::empty(204),
        _ => google_not_found(),
    }
}

fn label_changes(
    mb: &GmailMailbox,
    body: &Value,
    max: usize,
) -> Result<(Vec<String>, Vec<String>), Resp> {
    let get = |k: &str| -> Result<Vec<String>, Resp> {
        let v: Vec<String> = body
            .get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if v.len() > max {
            return Err(google_bad(&format!(
                "Too many label ids in {k} (max {max})."
            )));
        }
        for l in &v {
            if mb.label(l).is_none() || NOT_SETTABLE.contains(&l.as_str()) {
                return Err(google_bad(&format!("Invalid label: {l}")));
            }
        }
        Ok(v)
    };
    Ok((get("addLabelIds")?, get("removeLabelIds")?))
}

/// Padded base64url (what Python's `urlsafe_b64decode` requires).
pub fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE.encode(b)
}

fn short(m: &GMessage) -> Value {
    let mut v = json!({"id": m.id, "threadId": m.thread_id});
    if !m.labels.is_empty() {
        v["labelIds"] = json!(m.labels);
    }
    v
}

fn attachment_id(msg: &str, part: &str) -> String {
    format!(
        "ANGjdJ{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{msg}.{part}"))
    )
}

fn walk(p: &mime::Part, pid: &str, f: &mut dyn FnMut(&str, &mime::Part)) {
    f(pid, p);
    for (i, c) in p.parts.iter().enumerate() {
        let id = if pid.is_empty() {
            i.to_string()
        } else {
            format!("{pid}.{i}")
        };
        walk(c, &id, f);
    }
}

fn payload(msg: &str, p: &mime::Part, pid: &str) -> Value {
    let headers: Vec<Value> = p
        .headers
        .iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect();
    let mut body = json!({"size": p.data.len()});
    if p.parts.is_empty() {
        if !p.filename.is_empty() {
            body["attachmentId"] = json!(attachment_id(msg, pid));
        } else if !p.data.is_empty() {
            body["data"] = json!(b64url(&p.data));
        }
    } else {
        body["size"] = json!(0);
    }
    let mut v = json!({"partId": pid, "mimeType": p.mime_type, "filename": p.filename, "headers": headers, "body": body});
    if !p.parts.is_empty() {
        v["parts"] = Value::Array(
            p.parts
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    payload(
                        msg,
                        c,
                        &if pid.is_empty() {
                            i.to_string()
                        } else {
                            format!("{pid}.{i}")
                        },
                    )
                })
                .collect(),
        );
    }
    v
}

fn snippet(m: &GMessage) -> String {
    let tree = mime::parse(&m.mime);
    let text = mime::first_text(&tree).unwrap_or_default();
    mime::preview(&text, 200)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Renders a message in one of the four formats (None for an unknown format).
pub fn render(m: &GMessage, format: &str, meta_headers: &[&str]) -> Option<Value> {
    let mut v = short(m);
    v["snippet"] = json!(snippet(m));
    v["sizeEstimate"] = json!(m.mime.len());
    v["historyId"] = json!(m.history_id.to_string());
    v["internalDate"] = json!(m.internal_ms.to_string());
    match format {
        "minimal" => {}
        "raw" => v["raw"] = json!(b64url(&m.mime)),
        "metadata" => {
            let tree = mime::parse(&m.mime);
            // metadataHeaders matched case-insensitively (UNVERIFIED).
            let hs: Vec<Value> = tree
                .headers
                .iter()
                .filter(|(k, _)| {
                    meta_headers.is_empty()
                        || meta_headers.iter().any(|h| h.eq_ignore_ascii_case(k))
                })
                .map(|(k, val)| json!({"name": k, "value": val}))
                .collect();
            v["payload"] = json!({"partId": "", "mimeType": tree.mime_type, "filename": "", "headers": hs, "body": {"size": 0}});
        }
        "full" => v["payload"] = payload(&m.id, &mime::parse(&m.mime), ""),
        _ => return None,
    }
    Some(v)
}

fn decode_page_token(t: &str) -> Option<(i64, String)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (a, b) = s.strip_prefix("p:")?.split_once(':')?;
    Some((a.parse().ok()?, b.to_string()))
}

fn list(r: &Req, mb: &GmailMailbox, metadata_only: bool) -> Resp {
    let max = match r.q("maxResults").map(|m| m.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if n >= 1 => n.min(500),
        Some(_) => return google_bad("Invalid maxResults"),
    };
    let labels = r.q_all("labelIds");
    for l in &labels {
        if mb.label(l).is_none() {
            return google_bad(&format!("Invalid label: {l}"));
        }
    }
    let include_st = r.q("includeSpamTrash") == Some("true");
    let q = r.q("q").unwrap_or("").to_string();
    if !q.is_empty() && metadata_only {
        return google(
            403,
            "forbidden",
            "Metadata scope does not support 'q' parameter",
        );
    }
    let mut msgs: Vec<&GMessage> =
        mb.messages
            .values()
            .filter(|m| {
                labels.iter().all(|l| m.labels.iter().any(|x| x == l))
                    && (include_st
                        || !m.labels.iter().any(|x| {
                            (x == "SPAM" || x == "TRASH") && !labels.contains(&x.as_str())
                        }))
                    && matches_q(mb, m, &q)
            })
            .collect();
    msgs.sort_by(|a, b| b.internal_ms.cmp(&a.internal_ms).then(b.id.cmp(&a.id)));
    let total = msgs.len();
    let start = match r.q("pageToken") {
        None => 0,
        Some(t) => match decode_page_token(t) {
            Some((ms, id)) => msgs
                .iter()
                .position(|m| (m.internal_ms, m.id.as_str()) < (ms, id.as_str()))
                .unwrap_or(msgs.len()),
            None => return google_bad("Invalid pageToken"),
        },
    };
    let page: Vec<&GMessage> = msgs.iter().skip(start).take(max).copied().collect();
    let mut out = json!({"resultSizeEstimate": total});
    if !page.is_empty() {
        out["messages"] = Value::Array(
            page.iter()
                .map(|m| json!({"id": m.id, "threadId": m.thread_id}))
                .collect(),
        );
    }
    if start + page.len() < msgs.len()
        && let Some(last) = page.last()
    {
        out["nextPageToken"] = json!(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(format!("p:{}:{}", last.internal_ms, last.id))
        );
    }
    Resp::json(200, &out)
}

fn matches_q(mb: &GmailMailbox, m: &GMessage, q: &str) -> bool {
    q.split_whitespace().all(|term| {
        let (neg, t) = match term.strip_prefix('-') {
            Some(t) => (true, t),
            None => (false, term),
        };
        let has_label = |name: &str| {
            mb.labels
                .iter()
                .find(|l| l.name.eq_ignore_ascii_case(name) || l.id.eq_ignore_ascii_case(name))
                .is_some_and(|l| m.labels.contains(&l.id))
        };
        let hit = if let Some(v) = t.strip_prefix("in:").or_else(|| t.strip_prefix("label:")) {
            has_label(v)
        } else if let Some(v) = t.strip_prefix("is:") {
            match v {
                "unread" => m.labels.iter().any(|l| l == "UNREAD"),
                "read" => !m.labels.iter().any(|l| l == "UNREAD"),
                "starred" => m.labels.iter().any(|l| l == "STARRED"),
                "important" => m.labels.iter().any(|l| l == "IMPORTANT"),
                _ => false,
            }
        } else if let Some(v) = t.strip_prefix("rfc822msgid:") {
            let hs = mime::headers(&m.mime);
            mime::header(&hs, "message-id")
                .is_some_and(|h| h.trim_matches(['<', '>']) == v.trim_matches(['<', '>']))
        } else {
            String::from_utf8_lossy(&m.mime)
                .to_ascii_lowercase()
                .contains(&t.to_ascii_lowercase())
        };
        hit != neg
    })
}

fn insert(
    r: &Req,
    mb: &mut GmailMailbox,
    rng: &mut crate::state::Rng,
    window: usize,
    method: &str,
    now: i64,
) -> Resp {
    let upload = r.segs.get(1).map(String::as_str) == Some("upload");
    let (raw, meta) = if upload {
        match r.q("uploadType") {
            Some("media") => (r.body.to_vec(), json!({})),
            Some("multipart") => {
                let ct = r.header("content-type").unwrap_or("");
                let wrapped = [
                    format!("Content-Type: {ct}\r\n\r\n").as_bytes(),
                    &r.body[..],
                ]
                .concat();
                let tree = mime::parse(&wrapped);
                if tree.parts.len() != 2 {
                    return google_bad("Multipart upload needs a metadata part and a media part.");
                }
                let meta = serde_json::from_slice(&tree.parts[0].data).unwrap_or(json!({}));
                (tree.parts[1].data.clone(), meta)
            }
            _ => return google_bad("Invalid uploadType: want media or multipart."),
        }
    } else {
        let body = match r.json() {
            Ok(b) => b,
            Err(_) => return google_bad("Invalid JSON payload received."),
        };
        let Some(raw_s) = body.get("raw").and_then(Value::as_str) else {
            return google_bad(
                "'raw' RFC822 payload message string or uploading message via /upload/* URL required",
            );
        };
        let clean = raw_s.trim_end_matches('=');
        match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(clean) {
            Ok(b) => (b, body),
            Err(_) => {
                return google_bad(
                    "Invalid value at 'message.raw' (TYPE_BYTES), Base64 decoding failed.",
                );
            }
        }
    };
    if raw.is_empty() {
        return google_bad("Message is empty.");
    }
    let mut labels = Vec::new();
    for l in meta
        .get("labelIds")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let Some(l) = l.as_str() else { continue };
        if mb.label(l).is_none() {
            return google_bad(&format!("Invalid label: {l}"));
        }
        labels.push(l.to_string());
    }
    let default_src = if method == "messages.import" {
        "dateHeader"
    } else {
        "receivedTime"
    };
    let src = r.q("internalDateSource").unwrap_or(default_src);
    let internal = if src == "dateHeader" {
        let hs = mime::headers(&raw);
        mime::header(&hs, "date")
            .and_then(mime::parse_date)
            .unwrap_or(now)
    } else {
        now
    };
    let id = mb.insert(rng, window, &raw, labels, internal);
    Resp::json(200, &short(&mb.messages[&id]))
}

fn history(r: &Req, mb: &GmailMailbox) -> Resp {
    let Some(start) = r.q("startHistoryId").and_then(|s| s.parse::<u64>().ok()) else {
        return google_bad("Missing/invalid parameter: startHistoryId");
    };
    if start < mb.floor {
        return google_not_found();
    }
    let label = r.q("labelId");
    if let Some(l) = label
        && mb.label(l).is_none()
    {
        return google_bad(&format!("Invalid label: {l}"));
    }
    let types = r.q_all("historyTypes");
    for t in &types {
        if !matches!(
            *t,
            "messageAdded" | "messageDeleted" | "labelAdded" | "labelRemoved"
        ) {
            return google_bad(&format!("Invalid value for historyTypes: {t}"));
        }
    }
    let max = match r.q("maxResults").map(|m| m.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if n >= 1 => n.min(500),
        Some(_) => return google_bad("Invalid maxResults"),
    };
    let after = match r.q("pageToken") {
        None => start,
        Some(t) => match t.parse::<u64>() {
            Ok(v) if v >= start => v,
            _ => return google_bad("Invalid pageToken"),
        },
    };
    let recs: Vec<_> = mb
        .history
        .iter()
        .filter(|h| h.id > after)
        .filter(|h| {
            let type_ok = types.is_empty()
                || types.contains(&match h.kind {
                    HistKind::Added => "messageAdded",
                    HistKind::Deleted => "messageDeleted",
                    HistKind::LabelsAdded(_) => "labelAdded",
                    HistKind::LabelsRemoved(_) => "labelRemoved",
                });
            let label_ok = label.is_none_or(|l| {
                h.labels_after.iter().any(|x| x == l)
                    || match &h.kind {
                        HistKind::LabelsAdded(v) | HistKind::LabelsRemoved(v) => {
                            v.iter().any(|x| x == l)
                        }
                        _ => false,
                    }
            });
            type_ok && label_ok
        })
        .collect();
    let page: Vec<Value> = recs.iter().take(max).map(|h| {
        let mut msg = json!({"id": h.msg_id, "threadId": h.thread_id});
        if !h.labels_after.is_empty() {
            msg["labelIds"] = json!(h.labels_after);
        }
        let mut rec = json!({"id": h.id.to_string(), "messages": [{"id": h.msg_id, "threadId": h.thread_id}]});
        match &h.kind {
            HistKind::Added => rec["messagesAdded"] = json!([{"message": msg}]),
            HistKind::Deleted => rec["messagesDeleted"] = json!([{"message": msg}]),
            HistKind::LabelsAdded(l) => rec["labelsAdded"] = json!([{"message": msg, "labelIds": l}]),
            HistKind::LabelsRemoved(l) => rec["labelsRemoved"] = json!([{"message": msg, "labelIds": l}]),
        }
        rec
    }).collect();
    let mut out = json!({"historyId": mb.history_id.to_string()});
    if recs.len() > max {
        out["nextPageToken"] = json!(recs[max - 1].id.to_string());
    }
    if !page.is_empty() {
        out["history"] = Value::Array(page);
    }
    Resp::json(200, &out)
}
