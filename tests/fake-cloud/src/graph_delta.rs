//! Graph delta on a mail folder, driven by the mailbox change log: the first round
//! lists what is there, later rounds replay the log since the round's sequence
//! number. `$skiptoken` / `$deltatoken` values are opaque keys of server-side state;
//! unknown or expired ones give `410 SyncStateNotFound` (or the 400 form).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::errors::graph as gerr;
use crate::graph::{DEFAULT_PAGE, out_id, parse_expand, parse_select, render};
use crate::http::Req;
use crate::http::Resp;
use crate::state::{App, Rng};
use crate::store_graph::{DeltaEntry, DeltaState, ExpiryMode, GraphMailbox};

fn page_size(r: &Req) -> Option<usize> {
    for v in r.headers.get_all("prefer") {
        let Ok(s) = v.to_str() else { continue };
        for part in s.split(',') {
            let part = part.trim();
            if let Some(n) = part
                .strip_prefix("odata.maxpagesize=")
                .and_then(|n| n.trim().parse::<usize>().ok())
            {
                return Some(n.clamp(1, 1000));
            }
        }
    }
    None
}

fn expired(app: &Arc<App>, mb: &GraphMailbox, folder: &str) -> Resp {
    match mb.expiry_mode {
        ExpiryMode::Gone410 => gerr(
            410,
            "SyncStateNotFound",
            &format!(
                "The sync state generation is not found; generation=0;[highest={}].",
                mb.seq
            ),
        )
        .with_header(
            "Location",
            &format!(
                "{}/graph.microsoft.com/v1.0/me/mailFolders('{folder}')/messages/delta",
                app.base_url
            ),
        ),
        ExpiryMode::Bad400 => gerr(
            400,
            "syncStateNotFound",
            "The delta token is expired and data must be synchronized again.",
        ),
    }
}

/// Entries of an incremental round: the last state per message of changes in `(from, to]`.
fn incremental(mb: &GraphMailbox, folder: &str, from: u64, to: u64) -> Vec<DeltaEntry> {
    let mut last: HashMap<&str, (u64, bool, &str)> = HashMap::new();
    for c in mb
        .changes
        .iter()
        .filter(|c| c.seq > from && c.seq <= to && c.folder_id == folder)
    {
        last.insert(&c.imm_id, (c.seq, c.removed, &c.rest_id));
    }
    let mut rows: Vec<(u64, DeltaEntry)> = last
        .into_iter()
        .map(|(id, (seq, removed, rest))| {
            let present = mb.messages.get(id).is_some_and(|m| m.folder_id == folder);
            let e = if !removed && present {
                DeltaEntry::Item(id.to_string())
            } else {
                DeltaEntry::Removed(id.to_string(), rest.to_string())
            };
            (seq, e)
        })
        .collect();
    rows.sort_by_key(|(s, _)| *s);
    rows.into_iter().map(|(_, e)| e).collect()
}

/// `GET .../mailFolders/{id}/messages/delta`.
pub fn delta(
    app: &Arc<App>,
    mb: &mut GraphMailbox,
    rng: &mut Rng,
    folder: &str,
    r: &Req,
    imm: bool,
) -> Resp {
    let skip = r.qi("$skiptoken");
    let dtok = r.qi("$deltatoken");
    let mut state = match skip.or(dtok) {
        Some(t) => match mb.delta_tokens.get(t) {
            Some(s) if s.folder_id == folder => s.clone(),
            _ => return expired(app, mb, folder),
        },
        None => {
            if let Some(f) = r.qi("$filter") {
                let ok = f
                    .trim_start()
                    .to_ascii_lowercase()
                    .starts_with("receiveddatetime ");
                if !ok {
                    return gerr(
                        400,
                        "ErrorInvalidUrlQueryFilter",
                        "Delta only supports $filter on receivedDateTime ge/gt.",
                    );
                }
            }
            if let Some(o) = r.qi("$orderby")
                && !o.trim().eq_ignore_ascii_case("receivedDateTime desc")
            {
                return gerr(
                    400,
                    "ErrorInvalidUrlQuery",
                    "Delta only supports $orderby=receivedDateTime desc.",
                );
            }
            if r.qi("$search").is_some() {
                return gerr(
                    400,
                    "ErrorInvalidUrlQuery",
                    "$search is not supported with delta.",
                );
            }
            if let Some(ct) = r.q("changeType")
                && !matches!(ct, "created" | "updated" | "deleted")
            {
                return gerr(
                    400,
                    "ErrorInvalidUrlQuery",
                    "changeType must be created, updated or deleted.",
                );
            }
            let top = match r.qi("$top").map(|t| t.parse::<usize>()) {
                None => None,
                Some(Ok(n)) if (1..=1000).contains(&n) => Some(n),
                Some(_) => {
                    return gerr(
                        400,
                        "ErrorInvalidUrlQuery",
                        "The value of $top must be an integer between 1 and 1000.",
                    );
                }
            };
            DeltaState {
                folder_id: folder.to_string(),
                entries: None,
                offset: 0,
                seq: 0,
                select: r.qi("$select").map(str::to_string),
                expand: r.qi("$expand").map(str::to_string),
                change_type: r.q("changeType").map(str::to_string),
                top,
            }
        }
    };
    let select = match parse_select(state.select.as_deref()) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let expand = match parse_expand(state.expand.as_deref()) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let filter = if skip.is_none() && dtok.is_none() {
        r.qi("$filter").map(str::to_string)
    } else {
        None
    };
    if state.entries.is_none() {
        // Start a round: first round lists the folder, later ones replay the log.
        let to = mb.seq;
        let mut entries = if skip.is_none() && dtok.is_none() {
            let mut msgs: Vec<_> = mb.in_folder(folder);
            if let Some(f) = &filter {
                msgs = match crate::graph::filter_messages(msgs, f) {
                    Ok((m, _)) => m,
                    Err(e) => return e,
                };
            }
            msgs.sort_by(|a, b| {
                b.received_ms
                    .cmp(&a.received_ms)
                    .then(b.imm_id.cmp(&a.imm_id))
            });
            let v: Vec<DeltaEntry> = msgs
                .into_iter()
                .map(|m| DeltaEntry::Item(m.imm_id.clone()))
                .collect();
            match state.change_type.as_deref() {
                Some("deleted") | Some("updated") => Vec::new(),
                _ => v,
            }
        } else {
            incremental(mb, folder, state.seq, to)
        };
        let from = state.seq;
        match state.change_type.as_deref() {
            Some("created") if dtok.is_some() => entries.retain(|e| matches!(e, DeltaEntry::Item(id) if mb.messages.get(id).is_some_and(|m| m.entered_seq > from))),
            Some("updated") if dtok.is_some() => entries.retain(|e| matches!(e, DeltaEntry::Item(id) if mb.messages.get(id).is_some_and(|m| m.entered_seq <= from))),
            Some("deleted") => entries.retain(|e| matches!(e, DeltaEntry::Removed(..))),
            _ => {}
        }
        state.entries = Some(Arc::new(entries));
        state.offset = 0;
        state.seq = to;
    }
    let entries = state.entries.clone().unwrap_or_default();
    let n = page_size(r).or(state.top).unwrap_or(DEFAULT_PAGE);
    let end = (state.offset + n).min(entries.len());
    let mut value = Vec::new();
    for e in &entries[state.offset..end] {
        let removed = |imm_id: &str, rest: &str| {
            json!({"@odata.type": "#microsoft.graph.message",
                "id": if imm { imm_id.to_string() } else { rest.to_string() },
                "@removed": {"reason": "deleted"}})
        };
        match e {
            DeltaEntry::Item(id) => match mb.messages.get(id) {
                Some(m) if m.folder_id == folder => {
                    let mut v = render(m, select.as_deref(), expand.as_deref(), imm);
                    if let Value::Object(o) = &mut v {
                        o.insert("@odata.type".into(), json!("#microsoft.graph.message"));
                    }
                    value.push(v);
                }
                Some(m) => value.push(removed(id, &out_id(m, false))),
                None => value.push(removed(id, id)),
            },
            DeltaEntry::Removed(id, rest) => value.push(removed(id, rest)),
        }
    }
    let link_base = format!(
        "{}/graph.microsoft.com/v1.0/me/mailFolders('{folder}')/messages/delta",
        app.base_url
    );
    let cap = app.opts.delta_token_cache;
    let mut out = json!({
        "@odata.context": format!("{}/graph.microsoft.com/v1.0/$metadata#Collection(message)", app.base_url),
        "value": value});
    if end < entries.len() {
        let mut next = state.clone();
        next.offset = end;
        let tok = mb.put_token(rng, next, cap);
        out["@odata.nextLink"] = json!(format!("{link_base}?$skiptoken={tok}"));
    } else {
        let mut next = state.clone();
        next.entries = None;
        next.offset = 0;
        let tok = mb.put_token(rng, next, cap);
        out["@odata.deltaLink"] = json!(format!("{link_base}?$deltatoken={tok}"));
    }
    Resp::json(200, &out)
}
