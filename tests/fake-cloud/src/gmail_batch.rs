//! Gmail's multipart batch endpoint (`/batch`, `/batch/gmail/v1`): each part is an
//! `application/http` request with a path-only request line; the outer Authorization
//! applies unless a part overrides it; at most 100 parts, each charged as its own call.

use std::sync::Arc;

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Method};

use crate::errors::google_bad;
use crate::http::{Req, Resp};
use crate::mime;
use crate::state::App;
use crate::stats::route_name;

/// Most calls in one batch.
pub const MAX_PARTS: usize = 100;

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        429 => "Too Many Requests",
        _ => "Error",
    }
}

/// Handles one batch request.
pub async fn handle(app: &Arc<App>, r: Req) -> Resp {
    if r.method != Method::POST {
        return google_bad("Batch requests must be POST.");
    }
    let host = r.segs.first().cloned().unwrap_or_default();
    let ct = r.header("content-type").unwrap_or("").to_string();
    let (ty, params) = mime::content_type(Some(&ct));
    if ty != "multipart/mixed" || !params.iter().any(|(k, _)| k == "boundary") {
        return google_bad("Batch requests need Content-Type: multipart/mixed with a boundary.");
    }
    let wrapped = [
        format!("Content-Type: {ct}\r\n\r\n").as_bytes(),
        &r.body[..],
    ]
    .concat();
    let tree = mime::parse(&wrapped);
    if tree.parts.is_empty() {
        return google_bad("Batch request has no parts.");
    }
    if tree.parts.len() > MAX_PARTS {
        return google_bad(&format!("A batch may hold at most {MAX_PARTS} calls."));
    }
    let mut out = Vec::new();
    let boundary = format!("batch_{}", app.lock().rng.token(12));
    for part in &tree.parts {
        let cid = mime::header(&part.headers, "content-id")
            .unwrap_or("")
            .trim()
            .trim_matches(['<', '>'])
            .to_string();
        let text = &part.data;
        let (head, body) = mime::split(text);
        let head = String::from_utf8_lossy(head).to_string();
        let mut lines = head.lines();
        let request_line = lines.next().unwrap_or("").trim().to_string();
        let mut it = request_line.split_whitespace();
        let (Some(m), Some(path)) = (it.next(), it.next()) else {
            out.push((cid, google_bad("Malformed request line in batch part.")));
            continue;
        };
        let Ok(method) = Method::from_bytes(m.as_bytes()) else {
            out.push((cid, google_bad("Bad method in batch part.")));
            continue;
        };
        let mut headers = HeaderMap::new();
        for l in lines {
            if let Some((k, v)) = l.split_once(':')
                && let (Ok(n), Ok(hv)) = (
                    HeaderName::from_bytes(k.trim().as_bytes()),
                    HeaderValue::from_str(v.trim()),
                )
            {
                headers.append(n, hv);
            }
        }
        if !headers.contains_key(hyper::header::AUTHORIZATION)
            && let Some(a) = r.headers.get(hyper::header::AUTHORIZATION)
        {
            headers.insert(hyper::header::AUTHORIZATION, a.clone());
        }
        let path = if let Some(i) = path.find("://") {
            path[i + 3..]
                .find('/')
                .map(|j| &path[i + 3 + j..])
                .unwrap_or("/")
        } else {
            path
        };
        let inner = Req::new(
            method,
            &format!("/{host}{path}"),
            headers,
            Bytes::from(body.to_vec()),
        );
        let route = route_name(inner.method.as_str(), &inner.segs);
        let resp = crate::gmail::call(app, inner).await;
        app.stats()
            .record(&format!("{route} (in batch)"), resp.status, resp.body.len());
        out.push((cid, resp));
    }
    let mut body = Vec::new();
    for (cid, resp) in out {
        body.extend_from_slice(format!("--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <response-{cid}>\r\n\r\n").as_bytes());
        body.extend_from_slice(
            format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status)).as_bytes(),
        );
        for (k, v) in &resp.headers {
            body.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        body.extend_from_slice(format!("Content-Length: {}\r\n\r\n", resp.body.len()).as_bytes());
        body.extend_from_slice(&resp.body);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    Resp::bytes(200, &format!("multipart/mixed; boundary={boundary}"), body)
}
