//! `/_control/` API for tests and the demo: faults, stats, token minting, refresh
//! token revocation, populate, delivery, mailbox dumps, token/history expiry,
//! device approval, client registrations and the clock.

use std::sync::Arc;

use base64::Engine;
use serde_json::{Value, json};

use crate::faults::FaultSpec;
use crate::http::{Req, Resp};
use crate::populate::{self, PopulateSpec};
use crate::state::{App, iso};
use crate::store_graph::ExpiryMode;
use crate::tokens::{Audience, ClientKind, Provider};

fn bad(msg: &str) -> Resp {
    Resp::json(400, &json!({"error": msg}))
}

fn body(r: &Req) -> Result<Value, Resp> {
    if r.body.is_empty() {
        return Ok(json!({}));
    }
    r.json().map_err(|e| bad(&format!("invalid JSON: {e}")))
}

fn user_of(v: &Value) -> Result<String, Resp> {
    v.get("user")
        .and_then(Value::as_str)
        .filter(|u| u.contains('@'))
        .map(str::to_ascii_lowercase)
        .ok_or_else(|| bad("\"user\" (an email address) is required"))
}

/// Handles `/_control/...`.
pub async fn handle(app: &Arc<App>, r: Req) -> Resp {
    let what: Vec<&str> = r.segs.iter().skip(1).map(String::as_str).collect();
    let m = r.method.as_str();
    let v = match body(&r) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let res: Result<Value, Resp> = match (m, what.as_slice()) {
        ("GET", ["health"]) => Ok(json!({"ok": true})),
        ("GET", ["faults"]) => Ok(json!({"faults": app.faults().list()})),
        ("POST", ["faults"]) => add_faults(app, v),
        ("DELETE", ["faults"]) => {
            app.faults().clear();
            Ok(json!({"cleared": true}))
        }
        ("GET", ["stats"]) => Ok(stats(app)),
        ("DELETE", ["stats"]) | ("POST", ["stats", "reset"]) => {
            *app.stats() = Default::default();
            app.quota().reset();
            Ok(json!({"reset": true}))
        }
        ("POST", ["token"]) => mint_token(app, &v).map_err(|e| bad(&e)),
        ("POST", ["revoke"]) => user_of(&v).and_then(|u| {
            let code = match v.get("reason").and_then(Value::as_str) {
                None | Some("revoked") => None,
                Some("inactive") => Some(700082),
                Some("mfa") => Some(50076),
                Some("signin_frequency") => Some(70043),
                Some(_) => {
                    return Err(bad(
                        "reason must be revoked, inactive, mfa or signin_frequency",
                    ));
                }
            };
            Ok(json!({"revoked": app.lock().auth.revoke_user(&u, code)}))
        }),
        ("POST", ["populate"]) => match serde_json::from_value::<PopulateSpec>(v) {
            Ok(spec) => populate::populate(app, &spec)
                .map(|ids| json!({"created": ids.len(), "ids": ids}))
                .map_err(|e| bad(&e)),
            Err(e) => Err(bad(&format!("bad populate spec: {e}"))),
        },
        ("POST", ["deliver"]) => deliver(app, &v),
        ("GET", ["mailbox"]) => match r.q("user") {
            Some(u) => Ok(mailbox(app, u, r.q("raw") == Some("1"))),
            None => Err(bad("?user= is required")),
        },
        ("POST", ["expire-delta"]) => user_of(&v).and_then(|u| {
            let mode = match v.get("mode").and_then(Value::as_str) {
                None | Some("410") => ExpiryMode::Gone410,
                Some("400") => ExpiryMode::Bad400,
                Some(_) => return Err(bad("mode must be \"410\" or \"400\"")),
            };
            let mut st = app.lock();
            let mb = st.graph_mailbox(&u);
            mb.expire_tokens();
            mb.expiry_mode = mode;
            Ok(json!({"expired": true}))
        }),
        ("POST", ["expire-history"]) => user_of(&v).map(|u| {
            let mut st = app.lock();
            let mb = st.gmail_mailbox(&u);
            mb.expire_history();
            json!({"historyId": mb.history_id.to_string()})
        }),
        ("POST", ["device"]) => {
            let code = v.get("user_code").and_then(Value::as_str).unwrap_or("");
            let user = v.get("user").and_then(Value::as_str).unwrap_or("");
            let approve = v.get("action").and_then(Value::as_str) != Some("deny");
            crate::oauth_ms::approve_device(app, code, user, approve)
                .map(|_| json!({"ok": true}))
                .map_err(|e| bad(&e))
        }
        ("POST", ["client"]) => register_client(app, &v),
        ("POST", ["clock"]) => {
            let secs = v.get("advance_secs").and_then(Value::as_f64).unwrap_or(0.0);
            app.clock.advance_ms((secs * 1000.0) as i64);
            Ok(json!({"now": iso(app.now_ms())}))
        }
        _ => Err(Resp::json(
            404,
            &json!({"error": "unknown control route", "routes": [
            "GET health", "GET|POST|DELETE faults", "GET|DELETE stats", "POST token", "POST revoke",
            "POST populate", "POST deliver", "GET mailbox?user=", "POST expire-delta",
            "POST expire-history", "POST device", "POST client", "POST clock"]}),
        )),
    };
    match res {
        Ok(v) => Resp::json(200, &v),
        Err(e) => e,
    }
}

fn add_faults(app: &Arc<App>, v: Value) -> Result<Value, Resp> {
    let specs: Vec<FaultSpec> = match v {
        Value::Array(a) => a
            .into_iter()
            .map(serde_json::from_value)
            .collect::<Result<_, _>>()
            .map_err(|e| bad(&format!("bad fault: {e}")))?,
        Value::Object(ref o) if o.contains_key("faults") => {
            serde_json::from_value(v["faults"].clone())
                .map_err(|e| bad(&format!("bad fault: {e}")))?
        }
        other => vec![serde_json::from_value(other).map_err(|e| bad(&format!("bad fault: {e}")))?],
    };
    let mut f = app.faults();
    let ids: Vec<u64> = specs.into_iter().map(|s| f.add(s)).collect();
    Ok(json!({"ids": ids}))
}

fn stats(app: &Arc<App>) -> Value {
    let mut v = app.stats().to_json();
    v["mailboxes"] = app.quota().to_json();
    v
}

/// Mints an access token for `{user, audience, scopes?, lifetime_secs?, client_id?}`.
pub fn mint_token(app: &Arc<App>, v: &Value) -> Result<Value, String> {
    let user = v
        .get("user")
        .and_then(Value::as_str)
        .filter(|u| u.contains('@'))
        .ok_or("\"user\" (an email address) is required")?;
    let aud_s = v.get("audience").and_then(Value::as_str).unwrap_or("graph");
    let aud = Audience::parse(aud_s).ok_or("audience must be graph, outlook or gmail")?;
    let scopes: Vec<String> = match v.get("scopes").and_then(Value::as_array) {
        Some(a) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect(),
        None => match aud {
            Audience::Graph => vec![
                "https://graph.microsoft.com/Mail.ReadWrite".into(),
                "https://graph.microsoft.com/User.Read".into(),
            ],
            Audience::Outlook => vec![
                "https://outlook.office.com/IMAP.AccessAsUser.All".into(),
                "https://outlook.office.com/SMTP.Send".into(),
            ],
            Audience::Google => vec!["https://www.googleapis.com/auth/gmail.modify".into()],
        },
    };
    let scopes: Vec<String> = scopes
        .into_iter()
        .map(|s| {
            if aud == Audience::Graph && !s.contains("://") {
                format!("https://graph.microsoft.com/{s}")
            } else {
                s
            }
        })
        .collect();
    let lifetime = v
        .get("lifetime_secs")
        .and_then(Value::as_i64)
        .unwrap_or(app.opts.token_lifetime.as_secs() as i64);
    let client = v
        .get("client_id")
        .and_then(Value::as_str)
        .unwrap_or("fake-cloud-control");
    let provider = if aud == Audience::Google {
        Provider::Google
    } else {
        Provider::Microsoft
    };
    let now = app.now_ms();
    let mut st = app.lock();
    match provider {
        Provider::Microsoft => {
            st.graph_mailbox(user);
        }
        Provider::Google => {
            st.gmail_mailbox(user);
        }
    }
    let st = &mut *st;
    let rng = &mut st.rng;
    let tok = st.auth.issue_access(
        rng,
        user,
        provider,
        aud,
        scopes,
        now,
        lifetime * 1000,
        client,
    );
    Ok(json!({"access_token": tok, "token_type": "Bearer", "expires_in": lifetime}))
}

fn deliver(app: &Arc<App>, v: &Value) -> Result<Value, Resp> {
    let user = user_of(v)?;
    let raw = match (
        v.get("raw").and_then(Value::as_str),
        v.get("raw_base64").and_then(Value::as_str),
    ) {
        (Some(r), _) => r.as_bytes().to_vec(),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .map_err(|_| bad("raw_base64 is not base64"))?,
        _ => return Err(bad("\"raw\" or \"raw_base64\" is required")),
    };
    let service = v.get("service").and_then(Value::as_str).unwrap_or("o365");
    let folder = v.get("folder").and_then(Value::as_str);
    let now = app.now_ms();
    let received = v.get("received_ms").and_then(Value::as_i64).unwrap_or(now);
    let mut st = app.lock();
    let mut rng = st.rng.clone();
    let id = match service {
        "o365" | "graph" => {
            let mb = st.graph_mailbox(&user);
            let f = folder.unwrap_or("inbox");
            let fid = mb
                .resolve_folder(f)
                .or_else(|| mb.folder_by_path(f))
                .ok_or_else(|| bad("unknown folder"))?;
            mb.insert(&mut rng, &fid, &raw, received, now)
        }
        "gmail" => {
            let window = app.opts.history_window;
            let mb = st.gmail_mailbox(&user);
            let mut labels = Vec::new();
            for l in v
                .get("labels")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_else(|| vec![json!(folder.unwrap_or("INBOX")), json!("UNREAD")])
            {
                if let Some(l) = l.as_str() {
                    labels.push(mb.label_id(l, true).ok_or_else(|| bad("label"))?);
                }
            }
            mb.insert(&mut rng, window, &raw, labels, received)
        }
        _ => return Err(bad("service must be o365 or gmail")),
    };
    st.rng = rng;
    Ok(json!({"id": id}))
}

fn register_client(app: &Arc<App>, v: &Value) -> Result<Value, Resp> {
    let id = v
        .get("client_id")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("client_id is required"))?;
    let provider = v
        .get("provider")
        .and_then(Value::as_str)
        .unwrap_or("microsoft");
    let mut st = app.lock();
    match provider {
        "microsoft" => {
            let kind = match v.get("kind").and_then(Value::as_str).unwrap_or("spa") {
                "spa" => ClientKind::Spa,
                "native" => ClientKind::Native,
                "confidential" => ClientKind::Confidential(
                    v.get("secret")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                ),
                _ => return Err(bad("kind must be spa, native or confidential")),
            };
            st.auth.ms_clients.insert(id.to_string(), kind);
        }
        "google" => {
            let secret = v
                .get("secret")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("secret is required"))?;
            st.auth
                .google_clients
                .insert(id.to_string(), secret.to_string());
        }
        _ => return Err(bad("provider must be microsoft or google")),
    }
    Ok(json!({"ok": true}))
}

/// Full dump of a user's mailboxes (Office365 and/or Gmail).
pub fn mailbox(app: &Arc<App>, user: &str, with_raw: bool) -> Value {
    let user = user.to_ascii_lowercase();
    let st = app.lock();
    let mut out = json!({"user": user});
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    if let Some(mb) = st.graph.get(&user) {
        let path_of = |id: &str| {
            let mut parts = Vec::new();
            let mut cur = mb.folders.get(id);
            while let Some(f) = cur {
                if f.well_known.as_deref() == Some("msgfolderroot") {
                    break;
                }
                parts.push(f.display_name.clone());
                cur = mb.folders.get(&f.parent_id);
            }
            parts.reverse();
            parts.join("/")
        };
        let folders: Vec<Value> = mb.folders.values().map(|f| json!({"id": f.id, "displayName": f.display_name,
            "parentFolderId": f.parent_id, "wellKnownName": f.well_known, "hidden": f.hidden, "path": path_of(&f.id)})).collect();
        let mut msgs: Vec<_> = mb.messages.values().collect();
        msgs.sort_by(|a, b| {
            a.received_ms
                .cmp(&b.received_ms)
                .then(a.imm_id.cmp(&b.imm_id))
        });
        let messages: Vec<Value> = msgs.iter().map(|m| {
            let hs = crate::mime::headers(&m.mime);
            let mut v = json!({"id": m.imm_id, "restId": m.rest_id, "folderId": m.folder_id, "folder": path_of(&m.folder_id),
                "internetMessageId": crate::mime::header(&hs, "message-id"),
                "subject": crate::mime::decode_words(crate::mime::header(&hs, "subject").unwrap_or("")),
                "receivedDateTime": iso(m.received_ms), "isRead": m.is_read, "isDraft": m.is_draft, "flag": m.flag,
                "categories": m.categories, "singleValueExtendedProperties": m.props, "size": m.mime.len()});
            if with_raw {
                v["raw"] = json!(b64(&m.mime));
            }
            v
        }).collect();
        out["o365"] = json!({"seq": mb.seq, "folders": folders, "messages": messages});
    }
    if let Some(mb) = st.gmail.get(&user) {
        let labels: Vec<Value> = mb.labels.iter().map(|l| l.to_json()).collect();
        let mut msgs: Vec<_> = mb.messages.values().collect();
        msgs.sort_by(|a, b| a.internal_ms.cmp(&b.internal_ms).then(a.id.cmp(&b.id)));
        let messages: Vec<Value> = msgs.iter().map(|m| {
            let hs = crate::mime::headers(&m.mime);
            let mut v = json!({"id": m.id, "threadId": m.thread_id, "labelIds": m.labels,
                "internalDate": m.internal_ms.to_string(), "historyId": m.history_id.to_string(),
                "messageId": crate::mime::header(&hs, "message-id"),
                "subject": crate::mime::decode_words(crate::mime::header(&hs, "subject").unwrap_or("")),
                "size": m.mime.len()});
            if with_raw {
                v["raw"] = json!(b64(&m.mime));
            }
            v
        }).collect();
        out["gmail"] = json!({"historyId": mb.history_id.to_string(), "historyFloor": mb.floor.to_string(),
            "labels": labels, "messages": messages});
    }
    out
}
