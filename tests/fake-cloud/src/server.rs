//! The HTTP server: accept loop, one hyper HTTP/1.1 connection task per socket,
//! host-prefix dispatch, fault injection (including real TCP resets and truncated
//! bodies) and per-route stats.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinSet;

use crate::errors::{self, Service};
use crate::faults::FaultKind;
use crate::http::{Req, Resp};
use crate::state::App;
use crate::stats::route_name;

/// Serves connections until `shutdown` fires; open connections are dropped then.
pub async fn run(app: Arc<App>, listener: TcpListener, mut shutdown: oneshot::Receiver<()>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            acc = listener.accept() => {
                if let Ok((stream, _)) = acc {
                    let _ = stream.set_nodelay(true);
                    conns.spawn(serve_conn(app.clone(), stream));
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.abort_all();
}

async fn serve_conn(app: Arc<App>, stream: TcpStream) {
    // A duplicate of the socket lets a reset fault set SO_LINGER=0 before the
    // connection is dropped, so the peer sees a real RST.
    let (stream, dup) = match stream.into_std() {
        Ok(std_stream) => {
            let dup = std_stream.try_clone().ok();
            match TcpStream::from_std(std_stream) {
                Ok(s) => (s, dup),
                Err(_) => return,
            }
        }
        Err(_) => return,
    };
    let kill = Arc::new(Notify::new());
    let k2 = kill.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let app = app.clone();
        let kill = k2.clone();
        async move { Ok::<_, Infallible>(handle(app, req, kill).await) }
    });
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        _ = conn => {}
        _ = kill.notified() => {
            if let Some(d) = &dup {
                let _ = socket2::SockRef::from(d).set_linger(Some(Duration::ZERO));
            }
        }
    }
    drop(dup);
}

/// Response body that can end in an error after its data (a truncated response).
pub struct OutBody {
    data: Option<Bytes>,
    fail: bool,
}

impl Body for OutBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if let Some(d) = this.data.take()
            && !d.is_empty()
        {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if this.fail {
            this.fail = false;
            return Poll::Ready(Some(Err(std::io::Error::other("truncated by fault"))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        !self.fail && self.data.as_ref().is_none_or(|d| d.is_empty())
    }

    fn size_hint(&self) -> SizeHint {
        if self.fail {
            SizeHint::default()
        } else {
            SizeHint::with_exact(self.data.as_ref().map(|d| d.len() as u64).unwrap_or(0))
        }
    }
}

fn to_hyper(resp: Resp, truncate: bool) -> Response<OutBody> {
    let full_len = resp.body.len();
    let (data, fail) = if truncate {
        (resp.body.slice(0..full_len / 2), true)
    } else {
        (resp.body, false)
    };
    let mut b = Response::builder().status(resp.status);
    for (k, v) in &resp.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    if truncate {
        b = b.header("Content-Length", full_len.to_string());
    }
    b.body(OutBody {
        data: Some(data),
        fail,
    })
    .unwrap_or_else(|_| {
        let mut r = Response::new(OutBody {
            data: None,
            fail: false,
        });
        *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

async fn handle(app: Arc<App>, req: Request<Incoming>, kill: Arc<Notify>) -> Response<OutBody> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let r = Req::new(parts.method, &pq, parts.headers, body);
    if r.segs.first().map(String::as_str) == Some("_control") {
        return to_hyper(crate::control::handle(&app, r).await, false);
    }
    let route = route_name(r.method.as_str(), &r.segs);
    let svc = Service::of_host(r.segs.first().map(String::as_str).unwrap_or(""));
    let decoded = format!("/{}", r.segs.join("/"));
    let fault = app.faults().take(r.method.as_str(), &r.path, &decoded);
    let mut post = None;
    if let Some(f) = fault {
        app.stats().record_fault();
        if let Some(ms) = f.delay_ms {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        match f.kind {
            FaultKind::Reset => {
                app.stats().record(&route, 0, 0);
                kill.notify_one();
                std::future::pending::<()>().await;
            }
            FaultKind::Status | FaultKind::Error200 => {
                let status = f.status.unwrap_or(500);
                let mut resp = match f.body {
                    Some(b) => Resp::json(status, &b),
                    None => errors::injected(svc, status),
                };
                if let Some(ra) = f.retry_after {
                    resp.headers
                        .retain(|(k, _)| !k.eq_ignore_ascii_case("retry-after"));
                    resp = resp.with_header("Retry-After", &ra);
                }
                if f.kind == FaultKind::Error200 {
                    resp.status = 200;
                }
                app.stats().record(&route, resp.status, resp.body.len());
                return to_hyper(resp, false);
            }
            FaultKind::Truncate | FaultKind::BadJson => post = Some(f.kind),
            FaultKind::Delay => {}
        }
    }
    let mut resp = dispatch(&app, r).await;
    if post == Some(FaultKind::BadJson) {
        let mut body = resp.body.to_vec();
        body.truncate(body.len() / 2);
        body.extend_from_slice(b"{\"oops\": <not json>,,");
        resp.status = 200;
        resp.body = Bytes::from(body);
        resp.headers
            .retain(|(k, _)| !k.eq_ignore_ascii_case("content-type"));
        resp.headers
            .push(("Content-Type".into(), "application/json".into()));
    }
    app.stats().record(&route, resp.status, resp.body.len());
    to_hyper(resp, post == Some(FaultKind::Truncate))
}

/// Routes a request by its host prefix.
pub async fn dispatch(app: &Arc<App>, r: Req) -> Resp {
    let host = r.segs.first().cloned().unwrap_or_default();
    match host.as_str() {
        "graph.microsoft.com" => crate::graph::handle(app, r).await,
        "outlook.office.com" => errors::graph(
            404,
            "ResourceNotFound",
            "The Outlook REST API has been decommissioned; use Microsoft Graph.",
        ),
        "login.microsoftonline.com" | "microsoft.com" => crate::oauth_ms::handle(app, r),
        "gmail.googleapis.com" | "www.googleapis.com" => crate::gmail::handle(app, r).await,
        "accounts.google.com" | "oauth2.googleapis.com" | "www.google.com" => {
            crate::oauth_google::handle(app, r)
        }
        _ => Resp::json(
            404,
            &serde_json::json!({"error": format!("no emulated host {host:?}; paths start with /HOST/")}),
        ),
    }
}
