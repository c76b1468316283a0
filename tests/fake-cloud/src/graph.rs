//! Microsoft Graph v1.0 mail: folders (`$filter=displayName eq`, `childFolders`),
//! messages (list with `$select`/`$expand`/`$top`/`$skip`, get, `$value`, PATCH, move,
//! copy, delete, create from MIME), `/me`, `translateExchangeIds`; delta lives in
//! [`crate::graph_delta`], `$batch` in [`crate::graph_batch`].

use std::sync::Arc;

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::errors::{self, graph as gerr, graph_bad, graph_not_found};
use crate::http::{Req, Resp, query_string};
use crate::mime;
use crate::quota::{Denied, Slot, Svc};
use crate::state::{App, iso};
use crate::store_graph::{Folder, GraphMailbox, Message, canon_prop};
use crate::tokens::{AccessToken, Audience, Provider};

/// Message properties Graph returns, in its order; `$select` matches them case-insensitively.
pub const MESSAGE_PROPS: &[&str] = &[
    "createdDateTime",
    "lastModifiedDateTime",
    "changeKey",
    "categories",
    "receivedDateTime",
    "sentDateTime",
    "hasAttachments",
    "internetMessageId",
    "subject",
    "bodyPreview",
    "importance",
    "parentFolderId",
    "conversationId",
    "conversationIndex",
    "isDeliveryReceiptRequested",
    "isReadReceiptRequested",
    "isRead",
    "isDraft",
    "webLink",
    "inferenceClassification",
    "body",
    "sender",
    "from",
    "toRecipients",
    "ccRecipients",
    "bccRecipients",
    "replyTo",
    "flag",
];
const SELECT_ONLY: &[&str] = &[
    "id",
    "uniqueBody",
    "internetMessageHeaders",
    "singleValueExtendedProperties",
    "multiValueExtendedProperties",
    "attachments",
];

/// Delta page size when no `Prefer: odata.maxpagesize` is sent. UNVERIFIED: small on purpose.
pub const DEFAULT_PAGE: usize = 10;

/// Entry point for graph.microsoft.com.
pub async fn handle(app: &Arc<App>, r: Req) -> Resp {
    match r.segs.get(1).map(String::as_str) {
        Some("v1.0") | Some("beta") => {}
        _ => return gerr(400, "BadRequest", "Invalid version."),
    }
    if r.segs.len() == 3 && r.segs[2] == "$batch" {
        if r.method != hyper::Method::POST {
            return gerr(405, "BadRequest", "Batch requests must be POST.");
        }
        return crate::graph_batch::handle(app, r).await;
    }
    call(app, r).await
}

/// Checks the bearer token of a Graph request.
pub fn authenticate(app: &Arc<App>, r: &Req) -> Result<AccessToken, Resp> {
    let Some(b) = r.bearer() else {
        return Err(errors::graph_unauthorized("Access token is empty."));
    };
    let Some(tok) = app.lock().auth.access.get(b).cloned() else {
        return Err(errors::graph_unauthorized(if b.contains('.') {
            "Access token validation failure. Invalid signature."
        } else {
            "IDX14100: JWT is not well formed, there are no dots (.)."
        }));
    };
    if tok.provider != Provider::Microsoft || tok.audience != Audience::Graph {
        return Err(errors::graph_unauthorized(
            "Access token validation failure. Invalid audience.",
        ));
    }
    if tok.expires_ms <= app.now_ms() {
        return Err(errors::graph_unauthorized(
            "Lifetime validation failed, the token is expired.",
        ));
    }
    Ok(tok)
}

/// One authenticated, quota-checked Graph request (also used for `$batch` parts).
pub async fn call(app: &Arc<App>, r: Req) -> Resp {
    let tok = match authenticate(app, &r) {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    // Quota key: the mailbox. Graph's limit is per app+mailbox; sharing one bucket
    // between apps is the stricter reading.
    let slot = match Slot::take(app, Svc::Graph, &tok.user, 1) {
        Ok(s) => s,
        Err(Denied::Concurrency(ra)) => {
            return errors::graph_throttled(
                "ApplicationThrottled",
                "Application is over its MailboxConcurrency limit.",
                ra,
            );
        }
        Err(Denied::Window(ra)) => {
            return errors::graph_throttled("TooManyRequests", "Please retry again later.", ra);
        }
    };
    if !app.opts.latency.is_zero() {
        tokio::time::sleep(app.opts.latency).await;
    }
    let resp = exec(app, &r, &tok);
    drop(slot);
    resp
}

/// Expands `name('value')` segments into two and drops the host and version.
pub fn api_segments(segs: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for s in segs.iter().skip(2) {
        if let (Some(open), true) = (s.find("('"), s.ends_with("')"))
            && s.len() >= open + 4
        {
            out.push(s[..open].to_string());
            out.push(s[open + 2..s.len() - 2].replace("''", "'"));
        } else {
            out.push(s.clone());
        }
    }
    out
}

/// True when the request asks for immutable ids.
pub fn wants_immutable(r: &Req) -> bool {
    r.headers.get_all("prefer").iter().any(|v| {
        v.to_str()
            .map(|s| {
                s.to_ascii_lowercase()
                    .replace(' ', "")
                    .contains("idtype=\"immutableid\"")
            })
            .unwrap_or(false)
    })
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn exec(app: &Arc<App>, r: &Req, tok: &AccessToken) -> Resp {
    let segs = api_segments(&r.segs);
    let rest: &[String] = match segs.first().map(String::as_str) {
        Some(s) if eq(s, "me") => &segs[1..],
        Some(s) if eq(s, "users") && segs.len() >= 2 => {
            if !eq(&segs[1], &tok.user) {
                return gerr(
                    403,
                    "ErrorAccessDenied",
                    "Access is denied. Check credentials and try again.",
                );
            }
            &segs[2..]
        }
        _ => {
            return gerr(
                400,
                "BadRequest",
                &format!(
                    "Resource not found for the segment '{}'.",
                    segs.first().map(String::as_str).unwrap_or("")
                ),
            );
        }
    };
    let write = r.method != hyper::Method::GET;
    let mail_ok = if write {
        tok.has_any(&["Mail.ReadWrite"])
    } else {
        tok.has_any(&["Mail.ReadWrite", "Mail.Read"])
    };
    if !rest.is_empty() && !mail_ok {
        return gerr(
            403,
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
        );
    }
    let names: Vec<String> = rest.iter().map(|s| s.to_ascii_lowercase()).collect();
    let n: Vec<&str> = names.iter().map(String::as_str).collect();
    let m = r.method.as_str();
    let now = app.now_ms();
    let mut guard = app.lock();
    let st = &mut *guard;
    let user = tok.user.clone();
    st.graph_mailbox(&user);
    let Some(mb) = st.graph.get_mut(&user) else {
        return graph_not_found();
    };
    let rng = &mut st.rng;
    let imm = wants_immutable(r);
    let ctx = Ctx {
        app,
        r,
        user: &user,
        imm,
    };
    match (m, n.as_slice()) {
        ("GET", []) => Resp::json(
            200,
            &json!({
            "@odata.context": format!("{}/graph.microsoft.com/v1.0/$metadata#users/$entity", app.base_url),
            "id": mb.user_id_guid, "userPrincipalName": user, "mail": user,
            "displayName": user.split('@').next().unwrap_or("")}),
        ),
        ("GET", ["mailfolders"]) => {
            let Some(root) = mb.resolve_folder("msgfolderroot") else {
                return graph_not_found();
            };
            list_folders(&ctx, mb, &root)
        }
        ("POST", ["mailfolders"]) => {
            let Some(root) = mb.resolve_folder("msgfolderroot") else {
                return graph_not_found();
            };
            create_folder(&ctx, mb, rng, &root)
        }
        ("GET", ["mailfolders", _]) => match mb.resolve_folder(&rest[1]) {
            Some(f) => Resp::json(200, &folder_json(mb, &mb.folders[&f])),
            None => graph_not_found(),
        },
        ("DELETE", ["mailfolders", _]) => match mb.resolve_folder(&rest[1]) {
            Some(f) => match mb.delete_folder(&f) {
                Ok(()) => Resp::empty(204),
                Err(_) => gerr(
                    400,
                    "ErrorDeleteDistinguishedFolder",
                    "Distinguished folders cannot be deleted.",
                ),
            },
            None => graph_not_found(),
        },
        ("GET", ["mailfolders", _, "childfolders"]) => match mb.resolve_folder(&rest[1]) {
            Some(f) => list_folders(&ctx, mb, &f),
            None => graph_not_found(),
        },
        ("POST", ["mailfolders", _, "childfolders"]) => match mb.resolve_folder(&rest[1]) {
            Some(f) => create_folder(&ctx, mb, rng, &f),
            None => graph_not_found(),
        },
        ("GET", ["mailfolders", _, "messages"]) => match mb.resolve_folder(&rest[1]) {
            Some(f) => {
                let msgs: Vec<&Message> = mb.in_folder(&f);
                list_messages(&ctx, mb, msgs, Some(&f))
            }
            None => graph_not_found(),
        },
        ("POST", ["mailfolders", _, "messages"]) => match mb.resolve_folder(&rest[1]) {
            Some(f) => create_message(&ctx, mb, rng, &f, now),
            None => graph_not_found(),
        },
        ("GET", ["mailfolders", _, "messages", "delta"]) => match mb.resolve_folder(&rest[1]) {
            Some(f) => crate::graph_delta::delta(app, mb, rng, &f, r, imm),
            None => graph_not_found(),
        },
        (_, ["mailfolders", _, "messages", _, ..]) => {
            let Some(f) = mb.resolve_folder(&rest[1]) else {
                return graph_not_found();
            };
            let Some(id) = mb.resolve_msg(&rest[3]) else {
                return graph_not_found();
            };
            if mb.messages.get(&id).is_none_or(|msg| msg.folder_id != f) {
                return graph_not_found();
            }
            if n.len() == 5 && n[4] == "$value" {
                // Observed: the folder-scoped $value form is refused (docs issue #2755).
                return gerr(
                    405,
                    "ErrorInvalidRequest",
                    "The OData request is not supported.",
                );
            }
            message_op(&ctx, mb, rng, &id, &n[4..], now)
        }
        ("GET", ["messages"]) => {
            let hidden: Vec<String> = mb
                .folders
                .values()
                .filter(|f| f.parent_id.is_empty())
                .map(|f| f.id.clone())
                .collect();
            let msgs: Vec<&Message> = mb
                .messages
                .values()
                .filter(|msg| {
                    !hidden.contains(&msg.folder_id)
                        || mb
                            .folders
                            .get(&msg.folder_id)
                            .is_some_and(|f| f.well_known.as_deref() == Some("msgfolderroot"))
                })
                .collect();
            list_messages(&ctx, mb, msgs, None)
        }
        ("POST", ["messages"]) => {
            let Some(f) = mb.resolve_folder("drafts") else {
                return graph_not_found();
            };
            create_message(&ctx, mb, rng, &f, now)
        }
        (_, ["messages", _, ..]) => {
            let Some(id) = mb.resolve_msg(&rest[1]) else {
                return graph_not_found();
            };
            message_op(&ctx, mb, rng, &id, &n[2..], now)
        }
        ("POST", ["translateexchangeids"]) => translate(mb, r),
        _ => gerr(
            400,
            "BadRequest",
            &format!(
                "Resource not found for the segment '{}'.",
                rest.last().map(String::as_str).unwrap_or("")
            ),
        ),
    }
}

/// Per-request context for rendering.
pub struct Ctx<'a> {
    /// The app (for the base URL).
    pub app: &'a Arc<App>,
    /// The request.
    pub r: &'a Req,
    /// Lower-cased user.
    pub user: &'a str,
    /// Immutable ids wanted.
    pub imm: bool,
}

/// `$select` resolved to canonical names (None = full representation).
pub fn parse_select(s: Option<&str>) -> Result<Option<Vec<String>>, Resp> {
    let Some(s) = s else { return Ok(None) };
    let mut out = Vec::new();
    for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let canon = MESSAGE_PROPS
            .iter()
            .chain(SELECT_ONLY)
            .find(|c| c.eq_ignore_ascii_case(p));
        match canon {
            Some(c) => out.push(c.to_string()),
            None => {
                return Err(gerr(
                    400,
                    "RequestBroker--ParseUri",
                    &format!(
                        "Could not find a property named '{p}' on type 'microsoft.graph.message'."
                    ),
                ));
            }
        }
    }
    Ok(Some(out))
}

/// `$expand` of extended properties: None, or the property ids asked for.
pub fn parse_expand(s: Option<&str>) -> Result<Option<Vec<String>>, Resp> {
    let Some(s) = s else { return Ok(None) };
    let s = s.trim();
    let (name, filter) = match s.find('(') {
        Some(i) if s.ends_with(')') => (&s[..i], Some(&s[i + 1..s.len() - 1])),
        _ => (s, None),
    };
    if !name
        .trim()
        .eq_ignore_ascii_case("singleValueExtendedProperties")
    {
        return Err(gerr(
            400,
            "RequestBroker--ParseUri",
            &format!(
                "Could not find a navigation property named '{}' on type 'microsoft.graph.message'.",
                name.trim()
            ),
        ));
    }
    let Some(filter) = filter else {
        return Err(gerr(
            400,
            "ErrorInvalidUrlQuery",
            "Extended properties must be expanded with a $filter on id.",
        ));
    };
    let filter = filter.trim();
    let Some(expr) = filter
        .strip_prefix("$filter=")
        .or_else(|| filter.strip_prefix("%24filter="))
    else {
        return Err(gerr(
            400,
            "ErrorInvalidUrlQuery",
            "Only $filter is supported inside $expand of extended properties.",
        ));
    };
    // Accepts `id eq '...'` clauses joined with `or`, optionally parenthesised.
    let mut ids = Vec::new();
    let mut rest = expr;
    loop {
        let t = rest.trim_start().trim_start_matches('(').trim_start();
        let Some(after) = t
            .strip_prefix("id eq '")
            .or_else(|| t.strip_prefix("Id eq '"))
        else {
            return Err(gerr(
                400,
                "BadRequest",
                &format!("Invalid filter clause near '{t}'."),
            ));
        };
        let Some(end) = after.find('\'') else {
            return Err(gerr(
                400,
                "BadRequest",
                "Unterminated string literal in filter.",
            ));
        };
        let Some(c) = canon_prop(&after[..end]) else {
            return Err(gerr(
                400,
                "ErrorInvalidProperty",
                &format!("The property id '{}' is not valid.", &after[..end]),
            ));
        };
        ids.push(c);
        let t = after[end + 1..]
            .trim_start()
            .trim_start_matches(')')
            .trim_start();
        if t.is_empty() {
            break;
        }
        let Some(next) = t.strip_prefix("or ").or_else(|| t.strip_prefix("OR ")) else {
            return Err(gerr(
                400,
                "BadRequest",
                &format!("Invalid filter clause near '{t}'."),
            ));
        };
        rest = next;
    }
    Ok(Some(ids))
}

/// The id as the caller wants to see it.
pub fn out_id(m: &Message, imm: bool) -> String {
    if imm {
        m.imm_id.clone()
    } else {
        m.rest_id.clone()
    }
}

fn etag(m: &Message) -> String {
    base64::engine::general_purpose::STANDARD.encode(
        [
            &[9u8, 0, 0, 0, 22, 0, 0, 0][..],
            &m.version.to_be_bytes()[..],
            &m.imm_id.as_bytes()[6..14.min(m.imm_id.len())],
        ]
        .concat(),
    )
}

fn recipients(v: Option<&str>) -> Value {
    Value::Array(
        v.map(mime::addresses)
            .unwrap_or_default()
            .into_iter()
            .map(|a| json!({"emailAddress": {"name": if a.name.is_empty() { a.address.clone() } else { a.name }, "address": a.address}}))
            .collect(),
    )
}

/// Renders a message with `$select` and the extended properties asked for.
pub fn render(
    m: &Message,
    select: Option<&[String]>,
    expand: Option<&[String]>,
    imm: bool,
) -> Value {
    let want = |p: &str| select.is_none_or(|s| s.iter().any(|x| x == p));
    let hs = mime::headers(&m.mime);
    let h = |n: &str| mime::header(&hs, n);
    let mut o = Map::new();
    let ck = etag(m);
    o.insert("@odata.etag".into(), json!(format!("W/\"{ck}\"")));
    o.insert("id".into(), json!(out_id(m, imm)));
    let needs_body =
        want("body") || want("bodyPreview") || want("hasAttachments") || want("uniqueBody");
    let tree = needs_body.then(|| mime::parse(&m.mime));
    let text = tree.as_ref().and_then(mime::first_text).unwrap_or_default();
    for p in MESSAGE_PROPS.iter().chain(SELECT_ONLY) {
        if !want(p) || *p == "id" {
            continue;
        }
        let v = match *p {
            "createdDateTime" => json!(iso(m.created_ms)),
            "lastModifiedDateTime" => json!(iso(m.modified_ms)),
            "changeKey" => json!(ck),
            "categories" => json!(m.categories),
            "receivedDateTime" => json!(iso(m.received_ms)),
            "sentDateTime" => json!(iso(h("date")
                .and_then(mime::parse_date)
                .unwrap_or(m.received_ms))),
            "hasAttachments" => json!(tree.as_ref().is_some_and(mime::has_attachments)),
            "internetMessageId" => json!(h("message-id").unwrap_or("")),
            "subject" => json!(mime::decode_words(h("subject").unwrap_or(""))),
            "bodyPreview" => json!(mime::preview(&text, 255)),
            "importance" => json!(m.importance),
            "parentFolderId" => json!(m.folder_id),
            "conversationId" => json!(format!("AAQkA{}", &m.imm_id[6..30.min(m.imm_id.len())])),
            "conversationIndex" => json!("AQHZ"),
            "isDeliveryReceiptRequested" => json!(false),
            "isReadReceiptRequested" => json!(false),
            "isRead" => json!(m.is_read),
            "isDraft" => json!(m.is_draft),
            "webLink" => json!(format!(
                "https://outlook.office365.com/owa/?ItemID={}&exvsurl=1&viewmodel=ReadMessageItem",
                m.imm_id
            )),
            "inferenceClassification" => json!(m.inference),
            "body" | "uniqueBody" => json!({"contentType": "text", "content": text}),
            "sender" | "from" => recipients(h("from"))
                .as_array()
                .and_then(|a| a.first().cloned())
                .unwrap_or(Value::Null),
            "toRecipients" => recipients(h("to")),
            "ccRecipients" => recipients(h("cc")),
            "bccRecipients" => recipients(h("bcc")),
            "replyTo" => recipients(h("reply-to")),
            "flag" => m.flag.clone(),
            "internetMessageHeaders" => Value::Array(
                hs.iter()
                    .map(|(k, v)| json!({"name": k, "value": v}))
                    .collect(),
            ),
            _ => continue,
        };
        o.insert(p.to_string(), v);
    }
    if let Some(ids) = expand {
        // UNVERIFIED whether no match gives [] or no key; leaving the key out is the
        // stricter choice (a client must cope with its absence).
        let props: Vec<Value> = m
            .props
            .iter()
            .filter(|(k, _)| ids.iter().any(|i| i.eq_ignore_ascii_case(k)))
            .map(|(k, v)| json!({"id": k, "value": v}))
            .collect();
        if !props.is_empty() {
            o.insert("singleValueExtendedProperties".into(), Value::Array(props));
        }
    }
    Value::Object(o)
}

fn folder_json(mb: &GraphMailbox, f: &Folder) -> Value {
    let msgs = mb.in_folder(&f.id);
    json!({"id": f.id, "displayName": f.display_name, "parentFolderId": f.parent_id,
        "childFolderCount": mb.children(&f.id).len(),
        "unreadItemCount": msgs.iter().filter(|m| !m.is_read).count(),
        "totalItemCount": msgs.len(), "sizeInBytes": msgs.iter().map(|m| m.mime.len()).sum::<usize>(),
        "isHidden": f.hidden})
}

fn parse_top(r: &Req, default: usize) -> Result<usize, Resp> {
    match r.qi("$top") {
        None => Ok(default),
        Some(t) => match t.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => Ok(n),
            _ => Err(gerr(
                400,
                "ErrorInvalidUrlQuery",
                "The value of $top must be an integer between 1 and 1000.",
            )),
        },
    }
}

fn parse_skip(r: &Req) -> Result<usize, Resp> {
    match r.qi("$skip") {
        None => Ok(0),
        Some(t) => t
            .parse::<usize>()
            .map_err(|_| gerr(400, "ErrorInvalidUrlQuery", "Invalid $skip value.")),
    }
}

fn next_link(ctx: &Ctx, skip: usize) -> String {
    let mut q: Vec<(String, String)> = ctx
        .r
        .query
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("$skip"))
        .cloned()
        .collect();
    q.push(("$skip".into(), skip.to_string()));
    format!("{}{}?{}", ctx.app.base_url, ctx.r.path, query_string(&q))
}

fn list_folders(ctx: &Ctx, mb: &GraphMailbox, parent: &str) -> Resp {
    let include_hidden = ctx.r.q("includeHiddenFolders") == Some("true");
    let mut fs: Vec<&Folder> = mb
        .children(parent)
        .into_iter()
        .filter(|f| include_hidden || !f.hidden)
        .collect();
    fs.sort_by(|a, b| a.display_name.cmp(&b.display_name).then(a.id.cmp(&b.id)));
    if let Some(filter) = ctx.r.qi("$filter") {
        let f = filter.trim();
        let lower = f.to_ascii_lowercase();
        let Some(rest) = lower
            .strip_prefix("displayname eq '")
            .map(|_| &f["displayName eq '".len()..])
        else {
            return gerr(
                400,
                "ErrorInvalidUrlQueryFilter",
                "The query filter contains one or more invalid nodes.",
            );
        };
        let Some(name) = rest.strip_suffix('\'') else {
            return gerr(400, "BadRequest", "Unterminated string literal in filter.");
        };
        let name = name.replace("''", "'");
        // UNVERIFIED whether Exchange compares case-insensitively here; exact match
        // is the stricter choice.
        fs.retain(|x| x.display_name == name);
    }
    let top = match parse_top(ctx.r, 10) {
        Ok(t) => t,
        Err(e) => return e,
    };
    let skip = match parse_skip(ctx.r) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let page: Vec<Value> = fs
        .iter()
        .skip(skip)
        .take(top)
        .map(|f| folder_json(mb, f))
        .collect();
    let mut out = json!({
        "@odata.context": format!("{}/graph.microsoft.com/v1.0/$metadata#users('{}')/mailFolders", ctx.app.base_url, ctx.user),
        "value": page});
    if skip + top < fs.len() {
        out["@odata.nextLink"] = json!(next_link(ctx, skip + top));
    }
    Resp::json(200, &out)
}

fn create_folder(
    ctx: &Ctx,
    mb: &mut GraphMailbox,
    rng: &mut crate::state::Rng,
    parent: &str,
) -> Resp {
    let body = match ctx.r.json() {
        Ok(b) => b,
        Err(e) => return graph_bad(&format!("Invalid JSON: {e}")),
    };
    let Some(name) = body
        .get("displayName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    else {
        return gerr(400, "ErrorInvalidRequest", "displayName is required.");
    };
    match mb.create_folder(rng, parent, name) {
        Some(id) => Resp::json(201, &folder_json(mb, &mb.folders[&id])),
        None => gerr(
            409,
            "ErrorFolderExists",
            "A folder with the specified name already exists.",
        ),
    }
}

fn cmp_time(op: &str, a: i64, b: i64) -> Option<bool> {
    Some(match op {
        "ge" => a >= b,
        "gt" => a > b,
        "le" => a <= b,
        "lt" => a < b,
        "eq" => a == b,
        _ => return None,
    })
}

/// Applies a simple `$filter` (`isRead eq`, `receivedDateTime ge|gt|le|lt`, joined by `and`).
pub fn filter_messages<'a>(
    msgs: Vec<&'a Message>,
    filter: &str,
) -> Result<(Vec<&'a Message>, Vec<String>), Resp> {
    let mut msgs = msgs;
    let mut props = Vec::new();
    for clause in filter.split(" and ") {
        let parts: Vec<&str> = clause.split_whitespace().collect();
        if parts.len() != 3 {
            return Err(gerr(
                400,
                "ErrorInvalidUrlQueryFilter",
                "The query filter contains one or more invalid nodes.",
            ));
        }
        let (p, op, v) = (parts[0], parts[1], parts[2]);
        props.push(p.to_ascii_lowercase());
        if p.eq_ignore_ascii_case("isRead") && op == "eq" {
            let want = match v {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(gerr(
                        400,
                        "ErrorInvalidUrlQueryFilter",
                        "isRead wants true or false.",
                    ));
                }
            };
            msgs.retain(|m| m.is_read == want);
        } else if p.eq_ignore_ascii_case("receivedDateTime") {
            let t = chrono::DateTime::parse_from_rfc3339(v.trim_matches('\''))
                .map_err(|_| {
                    gerr(
                        400,
                        "ErrorInvalidUrlQueryFilter",
                        "Invalid DateTimeOffset literal.",
                    )
                })?
                .timestamp_millis();
            if cmp_time(op, 0, 0).is_none() {
                return Err(gerr(
                    400,
                    "ErrorInvalidUrlQueryFilter",
                    "Unsupported operator.",
                ));
            }
            msgs.retain(|m| cmp_time(op, m.received_ms, t).unwrap_or(false));
        } else {
            return Err(gerr(
                400,
                "ErrorInvalidUrlQueryFilter",
                "The query filter contains one or more invalid nodes.",
            ));
        }
    }
    Ok((msgs, props))
}

fn list_messages(ctx: &Ctx, mb: &GraphMailbox, msgs: Vec<&Message>, folder: Option<&str>) -> Resp {
    let select = match parse_select(ctx.r.qi("$select")) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let expand = match parse_expand(ctx.r.qi("$expand")) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let top = match parse_top(ctx.r, 10) {
        Ok(t) => t,
        Err(e) => return e,
    };
    let skip = match parse_skip(ctx.r) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let (mut msgs, fprops) = match ctx.r.qi("$filter") {
        Some(f) => match filter_messages(msgs, f) {
            Ok(x) => x,
            Err(e) => return e,
        },
        None => (msgs, Vec::new()),
    };
    let mut asc = false;
    if let Some(ob) = ctx.r.qi("$orderby") {
        let parts: Vec<&str> = ob.split_whitespace().collect();
        if parts.is_empty() || !parts[0].eq_ignore_ascii_case("receivedDateTime") {
            return gerr(
                400,
                "ErrorInvalidUrlQuery",
                "Only receivedDateTime ordering is supported.",
            );
        }
        asc = parts.get(1).is_some_and(|d| d.eq_ignore_ascii_case("asc"));
        if !fprops.is_empty() && fprops[0] != "receiveddatetime" {
            return gerr(
                400,
                "InefficientFilter",
                "The restriction or sort order is too complex for this operation.",
            );
        }
    }
    msgs.sort_by(|a, b| {
        b.received_ms
            .cmp(&a.received_ms)
            .then(b.imm_id.cmp(&a.imm_id))
    });
    if asc {
        msgs.reverse();
    }
    let page: Vec<Value> = msgs
        .iter()
        .skip(skip)
        .take(top)
        .map(|m| render(m, select.as_deref(), expand.as_deref(), ctx.imm))
        .collect();
    let ctxpath = match folder {
        Some(f) => format!("mailFolders('{f}')/messages"),
        None => "messages".into(),
    };
    let mut out = json!({
        "@odata.context": format!("{}/graph.microsoft.com/v1.0/$metadata#users('{}')/{ctxpath}", ctx.app.base_url, ctx.user),
        "value": page});
    if skip + top < msgs.len() {
        out["@odata.nextLink"] = json!(next_link(ctx, skip + top));
    }
    let _ = mb;
    Resp::json(200, &out)
}

fn message_op(
    ctx: &Ctx,
    mb: &mut GraphMailbox,
    rng: &mut crate::state::Rng,
    id: &str,
    tail: &[&str],
    now: i64,
) -> Resp {
    let m = ctx.r.method.as_str();
    match (m, tail) {
        ("GET", []) => {
            let select = match parse_select(ctx.r.qi("$select")) {
                Ok(s) => s,
                Err(e) => return e,
            };
            let expand = match parse_expand(ctx.r.qi("$expand")) {
                Ok(s) => s,
                Err(e) => return e,
            };
            Resp::json(
                200,
                &render(
                    &mb.messages[id],
                    select.as_deref(),
                    expand.as_deref(),
                    ctx.imm,
                ),
            )
        }
        ("GET", ["$value"]) => {
            Resp::bytes(200, "text/plain", mb.messages[id].mime.as_ref().clone())
        }
        ("PATCH", []) => patch(ctx, mb, id, now),
        ("DELETE", []) => {
            let Some(msg) = mb.messages.get(id) else {
                return graph_not_found();
            };
            let del = mb
                .resolve_folder("recoverableitemsdeletions")
                .unwrap_or_default();
            if msg.folder_id == del {
                return gerr(403, "ErrorCannotDeleteObject", "Object cannot be deleted.");
            }
            // Soft delete: the item leaves every visible folder and lands in the
            // hidden Recoverable Items deletions folder (not Deleted Items).
            mb.move_to(rng, id, &del, now);
            Resp::empty(204)
        }
        ("POST", ["permanentdelete"]) => {
            mb.remove(id);
            Resp::empty(204)
        }
        ("POST", [op @ ("move" | "copy")]) => {
            let body = match ctx.r.json() {
                Ok(b) => b,
                Err(e) => return graph_bad(&format!("Invalid JSON: {e}")),
            };
            let Some(dest) = body.get("destinationId").and_then(Value::as_str) else {
                return gerr(400, "ErrorInvalidIdMalformed", "Id is malformed.");
            };
            let Some(dest) = mb.resolve_folder(dest) else {
                return graph_not_found();
            };
            let new_id = if *op == "move" {
                mb.move_to(rng, id, &dest, now);
                id.to_string()
            } else {
                match mb.copy_to(rng, id, &dest, now) {
                    Some(n) => n,
                    None => return graph_not_found(),
                }
            };
            Resp::json(201, &render(&mb.messages[&new_id], None, None, ctx.imm))
        }
        _ => gerr(
            405,
            "ErrorInvalidRequest",
            "The OData request is not supported.",
        ),
    }
}

fn patch(ctx: &Ctx, mb: &mut GraphMailbox, id: &str, now: i64) -> Resp {
    let body = match ctx.r.json() {
        Ok(Value::Object(o)) => o,
        Ok(_) => return gerr(400, "BadRequest", "Empty Payload. JSON content expected."),
        Err(e) => {
            return gerr(
                400,
                "BadRequest",
                &format!("Unable to read JSON request payload: {e}"),
            );
        }
    };
    let Some(msg) = mb.messages.get(id) else {
        return graph_not_found();
    };
    let mut next = msg.clone();
    for (k, v) in &body {
        match k.to_ascii_lowercase().as_str() {
            "@odata.type" => {}
            "isread" => match v.as_bool() {
                Some(b) => next.is_read = b,
                None => {
                    return gerr(
                        400,
                        "BadRequest",
                        "Cannot convert the literal to the expected type 'Edm.Boolean'.",
                    );
                }
            },
            "flag" => {
                let Some(o) = v.as_object() else {
                    return gerr(400, "BadRequest", "flag must be an object.");
                };
                let mut f = next.flag.as_object().cloned().unwrap_or_default();
                for (fk, fv) in o {
                    match fk.as_str() {
                        "flagStatus" => match fv.as_str() {
                            Some("notFlagged" | "flagged" | "complete") => {
                                f.insert(fk.clone(), fv.clone());
                            }
                            _ => {
                                return gerr(
                                    400,
                                    "BadRequest",
                                    "Requested value is not one of notFlagged, complete, flagged.",
                                );
                            }
                        },
                        "startDateTime" | "dueDateTime" | "completedDateTime" => {
                            f.insert(fk.clone(), fv.clone());
                        }
                        other => {
                            return gerr(
                                400,
                                "RequestBodyRead",
                                &format!(
                                    "The property '{other}' does not exist on type 'microsoft.graph.followupFlag'."
                                ),
                            );
                        }
                    }
                }
                if o.contains_key("dueDateTime") && !f.contains_key("startDateTime") {
                    return gerr(
                        400,
                        "ErrorInvalidArgument",
                        "The dueDateTime can't be set without a startDateTime.",
                    );
                }
                if f.get("flagStatus").and_then(Value::as_str) != Some("flagged") {
                    f.remove("startDateTime");
                    f.remove("dueDateTime");
                }
                next.flag = Value::Object(f);
            }
            "categories" => match v.as_array().and_then(|a| {
                a.iter()
                    .map(|x| x.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
            }) {
                Some(c) => next.categories = c,
                None => return gerr(400, "BadRequest", "categories must be an array of strings."),
            },
            "importance" => match v.as_str() {
                Some(s @ ("low" | "normal" | "high")) => next.importance = s.into(),
                _ => {
                    return gerr(
                        400,
                        "BadRequest",
                        "Requested value is not one of low, normal, high.",
                    );
                }
            },
            "inferenceclassification" => match v.as_str() {
                Some(s @ ("focused" | "other")) => next.inference = s.into(),
                _ => {
                    return gerr(
                        400,
                        "BadRequest",
                        "Requested value is not one of focused, other.",
                    );
                }
            },
            "singlevalueextendedproperties" => {
                let Some(arr) = v.as_array() else {
                    return gerr(
                        400,
                        "BadRequest",
                        "singleValueExtendedProperties must be an array.",
                    );
                };
                for p in arr {
                    let (Some(pid), Some(val)) = (
                        p.get("id").and_then(Value::as_str),
                        p.get("value").and_then(Value::as_str),
                    ) else {
                        return gerr(
                            400,
                            "BadRequest",
                            "Each extended property needs a string id and a string value.",
                        );
                    };
                    let Some(c) = canon_prop(pid) else {
                        return gerr(
                            400,
                            "ErrorInvalidProperty",
                            &format!("The property id '{pid}' is not valid."),
                        );
                    };
                    if c == "Integer 0xe17" {
                        // PidTagMessageStatus needs RopSetMessageStatus; over REST it is
                        // read-only (cms comment). Refusing is the stricter choice.
                        return gerr(
                            400,
                            "ErrorInvalidProperty",
                            "The property PidTagMessageStatus (Integer 0xe17) cannot be set.",
                        );
                    }
                    if c.starts_with("Integer ") && val.trim().parse::<i64>().is_err() {
                        return gerr(
                            400,
                            "ErrorInvalidProperty",
                            &format!("The value '{val}' is not a valid Integer."),
                        );
                    }
                    if c.starts_with("SystemTime ")
                        && chrono::DateTime::parse_from_rfc3339(val.trim()).is_err()
                        && chrono::NaiveDateTime::parse_from_str(val.trim(), "%Y-%m-%dT%H:%M:%S%.f")
                            .is_err()
                    {
                        return gerr(
                            400,
                            "ErrorInvalidProperty",
                            &format!("The value '{val}' is not a valid SystemTime."),
                        );
                    }
                    next.props.insert(c, val.to_string());
                }
            }
            "subject" | "body" | "torecipients" | "ccrecipients" | "bccrecipients" | "from"
            | "sender" | "replyto" => {
                if !next.is_draft {
                    return gerr(
                        400,
                        "ErrorInvalidPropertyUpdateSentMessage",
                        &format!(
                            "Update operation is not allowed for property '{k}' on a message that is not a draft."
                        ),
                    );
                }
            }
            other => {
                return gerr(
                    400,
                    "RequestBodyRead",
                    &format!(
                        "The property '{other}' does not exist on type 'microsoft.graph.message'. Make sure to only use property names that are defined by the type or mark the type as open type."
                    ),
                );
            }
        }
    }
    if let Some(m) = mb.messages.get_mut(id) {
        *m = next;
    }
    mb.touch(id, now);
    // 200 with the message; extended properties are not echoed (§1.4).
    Resp::json(200, &render(&mb.messages[id], None, None, ctx.imm))
}

fn create_message(
    ctx: &Ctx,
    mb: &mut GraphMailbox,
    rng: &mut crate::state::Rng,
    folder: &str,
    now: i64,
) -> Resp {
    let ct = ctx
        .r
        .header("content-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    let (raw, draft, props) = if ct.starts_with("text/plain") {
        let clean: Vec<u8> = ctx
            .r
            .body
            .iter()
            .copied()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        match base64::engine::general_purpose::STANDARD.decode(&clean) {
            Ok(raw) if !raw.is_empty() => (raw, true, Vec::new()),
            _ => {
                return gerr(
                    400,
                    "ErrorMimeContentInvalidBase64String",
                    "Invalid base64 string for MIME content.",
                );
            }
        }
    } else if ct.starts_with("application/json") {
        let body = match ctx.r.json() {
            Ok(Value::Object(o)) => o,
            _ => return gerr(400, "BadRequest", "Empty Payload. JSON content expected."),
        };
        let subject = body.get("subject").and_then(Value::as_str).unwrap_or("");
        let text = body
            .get("body")
            .and_then(|b| b.get("content"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let addr = |v: Option<&Value>| -> String {
            v.and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|r| r.pointer("/emailAddress/address").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
        };
        let from = body
            .get("from")
            .and_then(|f| f.pointer("/emailAddress/address"))
            .and_then(Value::as_str)
            .unwrap_or(ctx.user);
        let date = chrono::DateTime::from_timestamp_millis(now)
            .unwrap_or_default()
            .to_rfc2822();
        let raw = format!(
            "From: {from}\r\nTo: {}\r\nSubject: {subject}\r\nDate: {date}\r\nMessage-ID: <{}@fake-cloud.invalid>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n",
            addr(body.get("toRecipients")),
            rng.token(12)
        );
        let mut props = Vec::new();
        let mut draft = true;
        if let Some(arr) = body
            .get("singleValueExtendedProperties")
            .and_then(Value::as_array)
        {
            for p in arr {
                if let (Some(Some(c)), Some(v)) = (
                    p.get("id").and_then(Value::as_str).map(canon_prop),
                    p.get("value").and_then(Value::as_str),
                ) {
                    if c == "Integer 0xe07" {
                        // PidTagMessageFlags without MSGFLAG_UNSENT (8) makes a non-draft.
                        draft = v.parse::<i64>().map(|f| f & 8 != 0).unwrap_or(true);
                    }
                    props.push((c, v.to_string()));
                }
            }
        }
        (raw.into_bytes(), draft, props)
    } else {
        return gerr(
            415,
            "UnsupportedMediaType",
            "Content-Type must be application/json or text/plain (base64 MIME).",
        );
    };
    let id = mb.insert(rng, folder, &raw, now, now);
    if let Some(m) = mb.messages.get_mut(&id) {
        m.is_draft = draft;
        m.is_read = true;
        for (k, v) in props {
            m.props.insert(k, v);
        }
    }
    Resp::json(201, &render(&mb.messages[&id], None, None, ctx.imm))
}

fn translate(mb: &GraphMailbox, r: &Req) -> Resp {
    let body = match r.json() {
        Ok(b) => b,
        Err(e) => return graph_bad(&format!("Invalid JSON: {e}")),
    };
    let Some(ids) = body.get("inputIds").and_then(Value::as_array) else {
        return graph_bad("inputIds is required.");
    };
    if ids.len() > 1000 {
        return graph_bad("At most 1000 ids can be translated at once.");
    }
    let target = body
        .get("targetIdType")
        .and_then(Value::as_str)
        .unwrap_or("");
    let out: Vec<Value> = ids
        .iter()
        .filter_map(Value::as_str)
        .map(|i| {
            let t = mb.resolve_msg(i).and_then(|imm| mb.messages.get(&imm)).map(|m| match target {
                "restImmutableEntryId" => m.imm_id.clone(),
                _ => m.rest_id.clone(),
            });
            match t {
                Some(t) => json!({"sourceId": i, "targetId": t}),
                None => json!({"sourceId": i, "errorDetails": {"code": "ErrorItemNotFound", "message": "The specified object was not found in the store."}}),
            }
        })
        .collect();
    Resp::json(200, &json!({"value": out}))
}
