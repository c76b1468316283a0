//! Shared helpers: a tiny hyper client (one connection per request) and shortcuts
//! for starting the emulator and minting tokens.

use bytes::Bytes;
use fake_cloud::{FakeCloud, Handle, Options};
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// A response as the tests see it.
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    pub fn header(&self, k: &str) -> Option<String> {
        self.headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// Sends one request; Err when the connection fails (reset, truncated body).
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Reply, String> {
    let rest = url.strip_prefix("http://").ok_or("not http")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let stream = tokio::net::TcpStream::connect(hostport)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut b = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?)
        .uri(path)
        .header("Host", hostport);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

pub async fn start(opts: Options) -> Handle {
    FakeCloud::start(opts).await.expect("emulator starts")
}

pub async fn start_default() -> Handle {
    start(Options::default()).await
}

pub fn graph_token(h: &Handle, user: &str) -> String {
    h.mint_token(user, "graph", &[]).expect("token")
}

pub fn gmail_token(h: &Handle, user: &str) -> String {
    h.mint_token(user, "gmail", &[]).expect("token")
}

pub fn url(h: &Handle, path: &str) -> String {
    format!("{}{}", h.base_url(), path)
}

/// GET with a bearer token and extra headers.
pub async fn get(h: &Handle, path: &str, tok: &str, extra: &[(&str, &str)]) -> Reply {
    let auth = format!("Bearer {tok}");
    let mut hs = vec![("Authorization", auth.as_str())];
    hs.extend_from_slice(extra);
    let u = if path.starts_with("http") {
        path.to_string()
    } else {
        url(h, path)
    };
    send("GET", &u, &hs, Vec::new()).await.expect("request")
}

/// Request with a JSON body and a bearer token.
pub async fn json_req(
    h: &Handle,
    method: &str,
    path: &str,
    tok: &str,
    body: &Value,
    extra: &[(&str, &str)],
) -> Reply {
    let auth = format!("Bearer {tok}");
    let mut hs = vec![
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    hs.extend_from_slice(extra);
    send(
        method,
        &url(h, path),
        &hs,
        serde_json::to_vec(body).unwrap(),
    )
    .await
    .expect("request")
}

/// POST to a control route.
pub async fn control(h: &Handle, method: &str, what: &str, body: &Value) -> Reply {
    send(
        method,
        &url(h, &format!("/_control/{what}")),
        &[("Content-Type", "application/json")],
        serde_json::to_vec(body).unwrap(),
    )
    .await
    .expect("control request")
}

/// Form POST (OAuth token endpoints).
pub async fn form(h: &Handle, path: &str, pairs: &[(&str, &str)], extra: &[(&str, &str)]) -> Reply {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    let mut hs = vec![("Content-Type", "application/x-www-form-urlencoded")];
    hs.extend_from_slice(extra);
    send("POST", &url(h, path), &hs, body.into_bytes())
        .await
        .expect("request")
}

pub async fn populate(
    h: &Handle,
    user: &str,
    service: &str,
    folder: &str,
    count: usize,
) -> Vec<String> {
    let r = control(
        h,
        "POST",
        "populate",
        &serde_json::json!({"user": user, "service": service, "folder": folder, "count": count}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// Query value of a URL.
pub fn query_param(u: &str, key: &str) -> Option<String> {
    let q = u.split_once('?')?.1;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

pub const GRAPH: &str = "/graph.microsoft.com/v1.0";
pub const GMAIL: &str = "/gmail.googleapis.com/gmail/v1/users/me";
