//! The HTTP client the `oauth2` crate sends token-endpoint requests
//! through: our reqwest client with a per-request timeout, plus the `Origin`
//! header Microsoft's single-page-app registrations need.

use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use oauth2::http::HeaderValue;
use oauth2::http::header::ORIGIN;
use oauth2::{AsyncHttpClient, HttpRequest, HttpResponse};

/// How long one token endpoint call may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// An [`AsyncHttpClient`] over a shared `reqwest::Client`. It remembers the
/// status of the last answer, which `oauth2` drops from its errors.
#[derive(Debug)]
pub struct OAuthHttp {
    http: reqwest::Client,
    origin: Option<HeaderValue>,
    last_status: AtomicU16,
}

/// A request that got no HTTP answer (connect, TLS, timeout, cut body).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

impl From<reqwest::Error> for HttpError {
    fn from(e: reqwest::Error) -> Self {
        HttpError(e.without_url().to_string())
    }
}

impl OAuthHttp {
    /// Requests through `http`, with `Origin: origin` when given.
    pub fn new(http: reqwest::Client, origin: Option<HeaderValue>) -> OAuthHttp {
        OAuthHttp {
            http,
            origin,
            last_status: AtomicU16::new(0),
        }
    }

    /// The HTTP status of the last answer, if one came.
    pub fn last_status(&self) -> Option<u16> {
        Some(self.last_status.load(Ordering::Relaxed)).filter(|s| *s != 0)
    }
}

impl<'c> AsyncHttpClient<'c> for OAuthHttp {
    type Error = HttpError;
    type Future = BoxFuture<'c, Result<HttpResponse, HttpError>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let mut req = reqwest::Request::try_from(request)?;
            *req.timeout_mut() = Some(REQUEST_TIMEOUT);
            if let Some(origin) = &self.origin {
                req.headers_mut().insert(ORIGIN, origin.clone());
            }
            let resp = self.http.execute(req).await?;
            let (status, version) = (resp.status(), resp.version());
            self.last_status.store(status.as_u16(), Ordering::Relaxed);
            let headers = resp.headers().clone();
            let mut out = HttpResponse::new(resp.bytes().await?.to_vec());
            *out.status_mut() = status;
            *out.version_mut() = version;
            *out.headers_mut() = headers;
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oauth2::http::{Method, Request, StatusCode};
    use warp::Filter;

    /// A server answering every POST with 418, echoing what it received in
    /// headers and the body.
    async fn echo_server() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let route = warp::post()
            .and(warp::path::full())
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .map(
                |path: warp::path::FullPath,
                 h: warp::http::HeaderMap,
                 body: warp::hyper::body::Bytes| {
                    let get = |k: &str| {
                        h.get(k)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_string()
                    };
                    warp::http::Response::builder()
                        .status(418)
                        .header("x-origin", get("origin"))
                        .header("x-content-type", get("content-type"))
                        .header("x-path", path.as_str())
                        .header("content-type", "application/json")
                        .body(format!("echo:{}", String::from_utf8_lossy(&body)))
                        .unwrap()
                },
            );
        tokio::spawn(warp::serve(route).incoming(listener).run());
        addr
    }

    fn form_post(addr: std::net::SocketAddr) -> HttpRequest {
        Request::builder()
            .method(Method::POST)
            .uri(format!("http://{addr}/t/oauth2/v2.0/token?x=1"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(b"grant_type=refresh_token&a=b".to_vec())
            .unwrap()
    }

    #[tokio::test]
    async fn origin_status_headers_and_body_round_trip() {
        let addr = echo_server().await;
        let origin = HeaderValue::from_static("http://127.0.0.1:8080/");
        let c = OAuthHttp::new(reqwest::Client::new(), Some(origin));
        assert_eq!(c.last_status(), None);
        let resp = c.call(form_post(addr)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::IM_A_TEAPOT);
        assert_eq!(c.last_status(), Some(418));
        let h = resp.headers();
        assert_eq!(h["x-origin"], "http://127.0.0.1:8080/");
        assert_eq!(h["x-content-type"], "application/x-www-form-urlencoded");
        assert_eq!(h["x-path"], "/t/oauth2/v2.0/token");
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(resp.body(), b"echo:grant_type=refresh_token&a=b");
    }

    #[tokio::test]
    async fn no_origin_unless_configured() {
        let addr = echo_server().await;
        let c = OAuthHttp::new(reqwest::Client::new(), None);
        let resp = c.call(form_post(addr)).await.unwrap();
        assert_eq!(resp.headers()["x-origin"], "-");
    }

    #[tokio::test]
    async fn no_answer_is_an_error_without_the_url() {
        // Bind then drop: nothing listens on the port any more.
        let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let c = OAuthHttp::new(reqwest::Client::new(), None);
        let e = c.call(form_post(addr)).await.unwrap_err();
        assert!(!e.to_string().contains("x=1"), "{e}");
        assert_eq!(c.last_status(), None);
    }
}
