//! Graph JSON batching (`POST /v1.0/$batch`): at most 20 requests, unique ids,
//! `dependsOn` (424 when a dependency failed), each inner request authenticated and
//! quota-checked on its own (inner 429 + `Retry-After`), at most 4 inner requests in
//! flight per batch. The envelope is 200 whatever the inner statuses.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Method};
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;

use crate::errors::{self, graph as gerr};
use crate::faults::FaultKind;
use crate::http::{Req, Resp};
use crate::state::App;
use crate::stats::route_name;

/// Most requests one batch may carry.
pub const MAX_BATCH: usize = 20;
/// Inner requests Graph passes to Outlook at once.
pub const INNER_PARALLEL: usize = 4;

struct Inner {
    id: String,
    req: Req,
    depends: Vec<String>,
}

fn bad(msg: &str) -> Resp {
    gerr(400, "BadRequest", msg)
}

/// Handles one `$batch` request.
pub async fn handle(app: &Arc<App>, r: Req) -> Resp {
    if let Err(resp) = crate::graph::authenticate(app, &r) {
        return resp;
    }
    let body = match r.json() {
        Ok(b) => b,
        Err(_) => return bad("Invalid batch payload format."),
    };
    let Some(reqs) = body.get("requests").and_then(Value::as_array) else {
        return bad("Invalid batch payload format: 'requests' is required.");
    };
    if reqs.is_empty() {
        return bad("Invalid batch payload format: no requests.");
    }
    if reqs.len() > MAX_BATCH {
        return bad(&format!(
            "Number of batch request steps exceeds the maximum of {MAX_BATCH}."
        ));
    }
    let version = r.segs.get(1).cloned().unwrap_or_else(|| "v1.0".into());
    let mut inner: Vec<Inner> = Vec::new();
    for q in reqs {
        let (Some(id), Some(method), Some(url)) = (
            q.get("id").and_then(|v| {
                v.as_str()
                    .map(str::to_string)
                    .or_else(|| v.as_u64().map(|n| n.to_string()))
            }),
            q.get("method").and_then(Value::as_str),
            q.get("url").and_then(Value::as_str),
        ) else {
            return bad("Invalid batch payload format: each request needs id, method and url.");
        };
        if inner.iter().any(|i| i.id.eq_ignore_ascii_case(&id)) {
            return bad(&format!("Batch request contains duplicate id '{id}'."));
        }
        let Ok(method) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
            return bad("Invalid batch payload format: bad method.");
        };
        if url.contains("://") {
            return bad("Batch request URLs must be relative to the version root.");
        }
        let mut headers = HeaderMap::new();
        let mut has_ct = false;
        if let Some(h) = q.get("headers").and_then(Value::as_object) {
            for (k, v) in h {
                let Some(v) = v.as_str() else { continue };
                if let (Ok(n), Ok(hv)) = (
                    HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(v),
                ) {
                    if n == hyper::header::CONTENT_TYPE {
                        has_ct = true;
                    }
                    headers.append(n, hv);
                }
            }
        }
        // Only the outer Authorization applies to parts; other outer headers (Prefer)
        // do not. UNVERIFIED; the stricter reading.
        if let Some(a) = r.headers.get(hyper::header::AUTHORIZATION) {
            headers.insert(hyper::header::AUTHORIZATION, a.clone());
        }
        let body = match q.get("body") {
            None | Some(Value::Null) => Bytes::new(),
            Some(b) => {
                if !has_ct {
                    return bad("Content-Type header must be specified for a request with a body.");
                }
                match b {
                    Value::String(s) => Bytes::from(s.clone().into_bytes()),
                    other => Bytes::from(serde_json::to_vec(other).unwrap_or_default()),
                }
            }
        };
        let depends: Vec<String> = q
            .get("dependsOn")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        for d in &depends {
            if !inner.iter().any(|i| i.id.eq_ignore_ascii_case(d)) {
                return bad(&format!(
                    "dependsOn '{d}' does not name an earlier request."
                ));
            }
        }
        let path = format!(
            "/graph.microsoft.com/{version}/{}",
            url.trim_start_matches('/')
        );
        inner.push(Inner {
            id,
            req: Req::new(method, &path, headers, body),
            depends,
        });
    }
    let sequential = inner.iter().any(|i| !i.depends.is_empty());
    let mut results: Vec<(String, Resp)> = Vec::new();
    if sequential {
        for i in inner {
            let failed = i.depends.iter().any(|d| {
                results
                    .iter()
                    .find(|(id, _)| id.eq_ignore_ascii_case(d))
                    .is_none_or(|(_, resp)| resp.status >= 400)
            });
            let resp = if failed {
                gerr(
                    424,
                    "FailedDependency",
                    "The request failed because a request it depends on failed.",
                )
            } else {
                run_inner(app, i.req).await
            };
            results.push((i.id, resp));
        }
    } else {
        let sem = Arc::new(Semaphore::new(INNER_PARALLEL));
        let mut set = tokio::task::JoinSet::new();
        for i in inner {
            let app = app.clone();
            let sem = sem.clone();
            set.spawn(async move {
                let _permit = sem.acquire_owned().await;
                (i.id, run_inner(&app, i.req).await)
            });
        }
        while let Some(res) = set.join_next().await {
            if let Ok(pair) = res {
                results.push(pair);
            }
        }
        // Responses may come in any order (documented); give them in reverse order
        // of completion so clients that match by position fail here, not in production.
        results.reverse();
    }
    let responses: Vec<Value> = results
        .into_iter()
        .map(|(id, resp)| envelope(&id, resp))
        .collect();
    Resp::json(200, &json!({"responses": responses}))
}

async fn run_inner(app: &Arc<App>, req: Req) -> Resp {
    let route = route_name(req.method.as_str(), &req.segs);
    let decoded = format!("/{}", req.segs.join("/"));
    let fault = app.faults().take(req.method.as_str(), &req.path, &decoded);
    let resp = match fault {
        Some(f) => {
            app.stats().record_fault();
            if let Some(ms) = f.delay_ms {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            match f.kind {
                FaultKind::Status | FaultKind::Error200 => {
                    let mut resp =
                        errors::injected(errors::Service::Graph, f.status.unwrap_or(500));
                    if let Some(ra) = f.retry_after {
                        resp.headers
                            .retain(|(k, _)| !k.eq_ignore_ascii_case("retry-after"));
                        resp = resp.with_header("Retry-After", &ra);
                    }
                    resp
                }
                FaultKind::Delay => crate::graph::call(app, req).await,
                // Resets and truncation have no meaning inside a JSON envelope.
                _ => errors::injected(errors::Service::Graph, 500),
            }
        }
        None => crate::graph::call(app, req).await,
    };
    app.stats().record(
        &format!("{route} (in $batch)"),
        resp.status,
        resp.body.len(),
    );
    resp
}

fn envelope(id: &str, resp: Resp) -> Value {
    let mut headers = Map::new();
    for (k, v) in &resp.headers {
        headers.insert(k.clone(), json!(v));
    }
    let mut out = json!({"id": id, "status": resp.status, "headers": headers});
    if !resp.body.is_empty() {
        let ct = resp
            .header("content-type")
            .unwrap_or("")
            .to_ascii_lowercase();
        out["body"] = if ct.contains("json") {
            resp.body_json()
        } else if ct.starts_with("text/") {
            // text/* bodies go in as strings (OData JSON batch); UNVERIFIED for $value.
            json!(String::from_utf8_lossy(&resp.body))
        } else {
            json!(base64::engine::general_purpose::STANDARD.encode(&resp.body))
        };
    }
    out
}
