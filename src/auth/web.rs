//! The loopback login server (warp): the status page at `/`, its
//! server-sent events at `/events`, `/login/N` (on to account N's
//! authorize URL), and the OAuth redirect paths `/oauth2/msal` and
//! `/oauth2/gmail`. Requests whose `Host` is not this loopback address are
//! refused (DNS rebinding), as is any redirect whose `state` or path does
//! not match a pending login.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use warp::Filter;
use warp::http::{Method, Response, StatusCode, header};
use warp::reply::Reply;

use super::manager::{AccountStatus, Inner, LoginState};

type Resp = warp::reply::Response;

/// Serve until the manager shuts down.
pub(crate) async fn serve(inner: Arc<Inner>, listener: tokio::net::TcpListener) {
    let shut = inner.shutdown.clone();
    let me = inner.clone();
    let filter = warp::any()
        .and(warp::method())
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::optional::<String>("host"))
        .then(
            move |method: Method,
                  path: warp::path::FullPath,
                  query: String,
                  host: Option<String>| {
                let me = me.clone();
                async move { handle(me, method, path.as_str().to_string(), query, host).await }
            },
        );
    warp::serve(filter)
        .incoming(listener)
        .graceful(async move { shut.cancelled().await })
        .run()
        .await;
}

async fn handle(
    inner: Arc<Inner>,
    method: Method,
    path: String,
    query: String,
    host: Option<String>,
) -> Resp {
    let port = inner.addr.port();
    let host_ok = host
        .as_deref()
        .is_some_and(|h| h == inner.addr.to_string() || h == format!("localhost:{port}"));
    if !host_ok {
        return text(StatusCode::BAD_REQUEST, "unexpected Host header");
    }
    if method != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here");
    }
    let q: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    match path.as_str() {
        "/" => page(&inner),
        "/events" => events(inner),
        "/state" => json(&state(&inner)),
        "/oauth2/msal" | "/oauth2/gmail" => match inner.complete_redirect(&path, &q).await {
            Ok(next) => redirect(&next),
            Err(msg) => {
                tracing::info!("refused an OAuth redirect to {path}: {msg}");
                text(StatusCode::BAD_REQUEST, &msg)
            }
        },
        p => match p
            .strip_prefix("/login/")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(i) if i < inner.account_count() => login(&inner, i),
            _ => text(StatusCode::NOT_FOUND, "not found"),
        },
    }
}

/// `/login/N`: on to the pending authorize URL, starting a login first
/// when the account needs one.
fn login(inner: &Arc<Inner>, i: usize) -> Resp {
    if inner.pending_url(i).is_none() {
        let s = inner.status(i);
        if matches!(s.state, LoginState::LoginNeeded | LoginState::Failed) {
            inner.restart_login(i);
        }
    }
    match inner.pending_url(i) {
        Some(url) => {
            inner.browser_heading_to(i);
            redirect(&url)
        }
        None => redirect("/"),
    }
}

/// What the page and `/events` show.
#[derive(Serialize)]
struct PageState {
    version: u64,
    accounts: Vec<AccountStatus>,
    next_login: Option<String>,
}

fn state(inner: &Inner) -> PageState {
    PageState {
        version: *inner.changes.borrow(),
        accounts: inner.statuses(),
        next_login: inner.next_login(),
    }
}

fn events(inner: Arc<Inner>) -> Resp {
    let guard = PageGuard::new(inner);
    let changes = guard.0.changes.subscribe();
    let shut = guard.0.shutdown.clone();
    let stream = futures_util::stream::unfold(
        (guard, changes, shut, true),
        |(guard, mut changes, shut, first)| async move {
            if !first {
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return None; },
                    () = shut.cancelled() => return None,
                }
            }
            changes.borrow_and_update();
            let ev = warp::sse::Event::default()
                .json_data(state(&guard.0))
                .unwrap_or_else(|_| warp::sse::Event::default().data("{}"));
            Some((Ok::<_, Infallible>(ev), (guard, changes, shut, false)))
        },
    );
    let keep = warp::sse::keep_alive()
        .interval(Duration::from_secs(10))
        .stream(stream);
    let mut r = warp::sse::reply(keep).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, "no-store".parse().expect("static"));
    r
}

/// Counts a connected page while its event stream lives.
struct PageGuard(Arc<Inner>);

impl PageGuard {
    fn new(inner: Arc<Inner>) -> PageGuard {
        inner.pages.fetch_add(1, Ordering::SeqCst);
        PageGuard(inner)
    }
}

impl Drop for PageGuard {
    fn drop(&mut self) {
        self.0.pages.fetch_sub(1, Ordering::SeqCst);
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn page(inner: &Inner) -> Resp {
    let st = state(inner);
    let mut rows = String::new();
    for a in &st.accounts {
        let (class, what) = match a.state {
            LoginState::LoggedIn => ("ok", "logged in".to_string()),
            LoginState::LoginNeeded => ("need", "login needed".to_string()),
            LoginState::LoggingIn if a.device.is_some() => ("wait", "device login".to_string()),
            LoginState::LoggingIn => ("wait", "waiting for login".to_string()),
            LoginState::Failed => ("bad", "login failed".to_string()),
        };
        let mut cell = format!("<span class=\"{class}\">{what}</span>");
        if let Some(d) = &a.detail {
            cell.push_str(&format!(" <small>{}</small>", esc(d)));
        }
        if let Some(d) = &a.device {
            cell.push_str(&format!(
                "<div class=\"device\">Open <a href=\"{u}\" target=\"_blank\" rel=\"noreferrer\">{u}</a> and enter <code class=\"user-code\">{c}</code></div>",
                u = esc(&d.verification_uri),
                c = esc(&d.user_code)
            ));
        }
        let action = match a.state {
            LoginState::LoggedIn => String::new(),
            LoginState::LoggingIn if a.device.is_some() => String::new(),
            LoginState::LoggingIn => {
                format!(
                    "<a class=\"login\" href=\"{}\">Log in</a>",
                    esc(&a.login_url)
                )
            }
            _ => format!(
                "<a class=\"login\" href=\"{}\">Log in again</a>",
                esc(&a.login_url)
            ),
        };
        rows.push_str(&format!(
            "<tr id=\"account-{i}\" data-state=\"{state}\"><td>{label}</td><td>{cell}</td><td>{action}</td></tr>\n",
            i = a.index,
            state = serde_json::to_value(&a.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            label = esc(&a.label),
        ));
    }
    let body = format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>cloud-mdir-sync logins</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
td {{ padding: .3em 1em .3em 0; vertical-align: top; }}
.ok {{ color: #060; }} .need, .bad {{ color: #a00; }} .wait {{ color: #850; }}
code.user-code {{ font-size: 1.4em; }}
</style></head>
<body>
<h1>cloud-mdir-sync logins</h1>
<table id="accounts">
{rows}</table>
<p id="note">This page updates itself and moves on to any login that is needed; keep it open.</p>
<script>
(function () {{
  var version = {version};
  var es = new EventSource("/events");
  es.onmessage = function (e) {{
    var s = JSON.parse(e.data);
    if (s.next_login) {{ es.close(); window.location.assign(s.next_login); return; }}
    if (s.version !== version) {{ es.close(); window.location.reload(); }}
  }};
}})();
</script>
</body></html>
"#,
        version = st.version,
    );
    let mut r = Response::new(body.into());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        "text/html; charset=utf-8".parse().expect("static"),
    );
    secure_headers(h);
    r
}

fn secure_headers(h: &mut warp::http::HeaderMap) {
    h.insert(header::CACHE_CONTROL, "no-store".parse().expect("static"));
    h.insert("x-frame-options", "DENY".parse().expect("static"));
    h.insert(
        header::REFERRER_POLICY,
        "no-referrer".parse().expect("static"),
    );
}

fn json<T: Serialize>(v: &T) -> Resp {
    let mut r = warp::reply::json(v).into_response();
    secure_headers(r.headers_mut());
    r
}

fn text(status: StatusCode, msg: &str) -> Resp {
    let mut r = Response::new(format!("{msg}\n").into());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().expect("static"),
    );
    secure_headers(h);
    r
}

fn redirect(location: &str) -> Resp {
    let mut r = Response::new(String::new().into());
    *r.status_mut() = StatusCode::FOUND;
    if let Ok(v) = location.parse() {
        r.headers_mut().insert(header::LOCATION, v);
    }
    secure_headers(r.headers_mut());
    r
}
