//! HTTP to Microsoft Graph for one account: one shared `reqwest::Client`,
//! tokens from the account's [`TokenSource`], the mailbox [`Throttle`], and
//! the retry policy (401 → fresh token once; 429 → pause the mailbox for
//! `Retry-After`; 5xx, resets, timeouts and HTTP 200 carrying an error →
//! jittered backoff; all bounded). Headers are never logged, and error
//! messages never contain a token.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::throttle::ThrottleConfig;
use crate::auth::{AccessToken, Audience, TokenSource};
use crate::cloud::throttle::{Permit, Stats, Throttle};
use crate::cloud::transport::{self, Budget, RetryPolicy, Verdict, retry_after_header};
use crate::cloud::{CloudError, ErrorKind};
use crate::endpoints::Endpoints;

/// The Graph host as the real service names it (mapped by [`Endpoints`]).
const GRAPH_HOST: &str = "graph.microsoft.com";
/// The API version every call uses.
const VERSION: &str = "/v1.0";
/// Sent on every request (and inside every `$batch` part): ids stay the same
/// when a message moves between folders (graph/outlook-immutable-id).
pub const PREFER_IMMUTABLE: &str = "IdType=\"ImmutableId\"";

/// What an account's folders share: the HTTP client, the token source and
/// the mailbox throttle. Cheap to clone.
#[derive(Clone)]
pub struct Account {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    tokens: Arc<dyn TokenSource>,
    throttle: Throttle,
    policy: RetryPolicy,
    endpoints: Endpoints,
    user: String,
}

/// A Graph call failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Graph answered with an error status retrying will not change.
    Api {
        /// HTTP status.
        status: u16,
        /// Graph error code (`ErrorItemNotFound`, `SyncStateNotFound`, ...).
        code: String,
        /// Graph error message.
        message: String,
    },
    /// Retries exhausted, login needed, or a local failure.
    Cloud(CloudError),
}

impl Failure {
    /// The error the daemon sees, for mailbox `ctx`.
    pub(crate) fn into_cloud(self, ctx: &str) -> CloudError {
        match self {
            Failure::Cloud(e) => e,
            Failure::Api {
                status,
                code,
                message,
            } => {
                let kind = match status {
                    404 | 410 => ErrorKind::NotFound,
                    403 if code.eq_ignore_ascii_case("ErrorAccessDenied") => ErrorKind::Auth,
                    408 | 409 | 412 | 423 | 424 => ErrorKind::Retry,
                    _ => ErrorKind::Config,
                };
                CloudError::new(ctx, kind, format!("HTTP {status} {code}: {message}"))
            }
        }
    }
}

/// One request to send (possibly several times).
pub(crate) struct Call<'a> {
    /// HTTP method.
    pub method: Method,
    /// Absolute URL (from [`Account::url`] or a link Graph returned).
    pub url: &'a str,
    /// JSON body.
    pub body: Option<&'a Value>,
    /// Extra `Prefer` preferences, e.g. `odata.maxpagesize=1000`.
    pub prefer: Option<&'a str>,
    /// Mailbox concurrency slots the request occupies on the server.
    pub slots: u32,
    /// Requests it counts as in the mailbox's window (batch parts).
    pub requests: u32,
}

impl<'a> Call<'a> {
    /// A GET of `url` costing one slot.
    pub(crate) fn get(url: &'a str) -> Call<'a> {
        Call {
            method: Method::GET,
            url,
            body: None,
            prefer: None,
            slots: 1,
            requests: 1,
        }
    }
}

/// A successful (2xx) response whose body has not been read, with the
/// throttle slots it holds until dropped.
pub(crate) struct Opened {
    /// The response.
    pub resp: reqwest::Response,
    /// Held while the body is read.
    pub permit: Permit,
}

/// The retry budget of one logical call, charged by [`Account::open`].
pub(crate) struct Retrier<'a> {
    account: &'a Account,
    ctx: &'a str,
    budget: Budget,
}

impl<'a> Retrier<'a> {
    /// A fresh budget for a call on behalf of mailbox `ctx`.
    pub(crate) fn new(account: &'a Account, ctx: &'a str) -> Retrier<'a> {
        Retrier {
            account,
            ctx,
            budget: Budget::new(&account.inner.policy),
        }
    }

    /// An attempt failed as `v` (`reason` says how): wait as the policy
    /// says and return `Ok` to try again, or the final error.
    pub(crate) async fn again(&mut self, v: Verdict, reason: &str) -> Result<(), CloudError> {
        match self.budget.after(v, &self.account.inner.throttle) {
            Ok(wait) => {
                if let Verdict::RateLimited(_) = v {
                    tracing::warn!(mailbox = self.ctx, "throttled by Graph ({reason})");
                } else {
                    tracing::debug!(
                        mailbox = self.ctx,
                        "{reason}; retrying in {:.2}s",
                        wait.as_secs_f64()
                    );
                }
                tokio::time::sleep(wait).await;
                Ok(())
            }
            Err(g) => {
                let mut e = CloudError::new(self.ctx, g.kind, format!("{reason} ({})", g.why));
                e.retry_after = g.retry_after;
                Err(e)
            }
        }
    }

    /// A transient failure (see [`Retrier::again`]).
    pub(crate) async fn transient(&mut self, reason: String) -> Result<(), CloudError> {
        self.again(Verdict::Transient(None), &reason).await
    }
}

/// The Graph error in a body, if it is one (`{"error":{...}}`).
pub(crate) fn error_in(v: &Value) -> Option<(String, String)> {
    let e = v.get("error")?;
    let s = |k: &str| {
        e.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    Some((s("code"), s("message")))
}

/// True for a response body that is JSON.
pub(crate) fn is_json(h: &HeaderMap) -> bool {
    h.get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("json"))
}

/// Describe a transport error, with the URL's query left out (links carry
/// long opaque state) and never with headers.
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "response body failed"
    } else {
        "request failed"
    };
    let mut msg = e.to_string();
    if let Some(u) = e.url()
        && u.query().is_some()
    {
        let mut short = u.clone();
        short.set_query(None);
        msg = msg.replace(u.as_str(), short.as_str());
    }
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    format!("{what}: {msg}")
}

impl Account {
    /// An account for `user` with the documented Outlook limits.
    pub fn new(
        user: &str,
        tokens: Arc<dyn TokenSource>,
        endpoints: Endpoints,
    ) -> Result<Account, CloudError> {
        Account::with_throttle(user, tokens, endpoints, ThrottleConfig::default())
    }

    /// An account with a custom throttle policy (tests, benchmarks).
    pub fn with_throttle(
        user: &str,
        tokens: Arc<dyn TokenSource>,
        endpoints: Endpoints,
        config: ThrottleConfig,
    ) -> Result<Account, CloudError> {
        let http = transport::client(config.max_in_flight as usize).map_err(|e| {
            CloudError::new(
                &format!("office365:{user}"),
                ErrorKind::Fatal,
                format!("cannot build the HTTP client: {e}"),
            )
        })?;
        Ok(Account {
            inner: Arc::new(Inner {
                http,
                tokens,
                throttle: Throttle::new(config.limits()),
                policy: config.policy(),
                endpoints,
                user: user.to_string(),
            }),
        })
    }

    /// The account's user.
    pub fn user(&self) -> &str {
        &self.inner.user
    }

    /// Counters of the mailbox throttle.
    pub fn throttle_stats(&self) -> Stats {
        self.inner.throttle.stats()
    }

    /// The absolute URL of an API path such as `/me/mailFolders`.
    pub fn url(&self, path: &str) -> String {
        self.inner
            .endpoints
            .url(GRAPH_HOST, &format!("{VERSION}{path}"))
    }

    /// The version root, recorded with cursors so links from another
    /// endpoint are not reused.
    pub(crate) fn root(&self) -> String {
        self.url("")
    }

    pub(crate) fn throttle(&self) -> &Throttle {
        &self.inner.throttle
    }

    pub(crate) fn policy(&self) -> &RetryPolicy {
        &self.inner.policy
    }

    async fn token(&self, ctx: &str) -> Result<AccessToken, Failure> {
        self.inner.tokens.token(Audience::Graph).await.map_err(|e| {
            Failure::Cloud(CloudError::new(
                ctx,
                transport::token_kind(&e),
                e.to_string(),
            ))
        })
    }

    /// Send `call` until it gets a 2xx answer (returned unread, with its
    /// slots) or a final failure. Retries are charged to `r`.
    pub(crate) async fn open(
        &self,
        call: &Call<'_>,
        r: &mut Retrier<'_>,
    ) -> Result<Opened, Failure> {
        let ctx = r.ctx;
        let prefer = match call.prefer {
            Some(p) => format!("{PREFER_IMMUTABLE}, {p}"),
            None => PREFER_IMMUTABLE.to_string(),
        };
        loop {
            let token = self.token(ctx).await?;
            let permit = match self.inner.throttle.acquire(call.slots, call.requests).await {
                Ok(p) => p,
                Err(left) => {
                    let mut e = CloudError::new(
                        ctx,
                        ErrorKind::Retry,
                        format!(
                            "mailbox paused by Graph for another {:.0}s",
                            left.as_secs_f64()
                        ),
                    );
                    e.retry_after = Some(left);
                    return Err(Failure::Cloud(e));
                }
            };
            let mut req = self
                .inner
                .http
                .request(call.method.clone(), call.url)
                .bearer_auth(token.secret())
                .header("Prefer", &prefer);
            if let Some(b) = call.body {
                req = req.json(b);
            }
            tracing::trace!(mailbox = ctx, method = %call.method, "graph request");
            let resp = match req.send().await {
                Ok(resp) => resp,
                Err(e) => {
                    drop(permit);
                    r.transient(describe(&e)).await.map_err(Failure::Cloud)?;
                    continue;
                }
            };
            let status = resp.status().as_u16();
            if (200..300).contains(&status) {
                return Ok(Opened { resp, permit });
            }
            let retry_after = retry_after_header(resp.headers());
            // Error bodies are small; read them while still holding the slot.
            let body = resp.bytes().await.unwrap_or_default();
            drop(permit);
            let (code, message) = serde_json::from_slice::<Value>(&body)
                .ok()
                .as_ref()
                .and_then(error_in)
                .unwrap_or_default();
            let Some(v) = classify(status, retry_after) else {
                return Err(Failure::Api {
                    status,
                    code,
                    message,
                });
            };
            if v == Verdict::Unauthorized {
                self.inner.tokens.invalidate(Audience::Graph, &token);
            }
            r.again(v, &format!("HTTP {status} {code}"))
                .await
                .map_err(Failure::Cloud)?;
        }
    }

    /// Send `call` and parse its JSON answer. A body that is not JSON, or an
    /// HTTP 200 whose body is a Graph error, is retried like a 5xx. An empty
    /// body parses as JSON `null`.
    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        call: &Call<'_>,
        r: &mut Retrier<'_>,
    ) -> Result<T, Failure> {
        loop {
            let Opened { resp, permit } = self.open(call, r).await?;
            let status = resp.status().as_u16();
            let body = resp.bytes().await;
            drop(permit);
            let reason = match body {
                Err(e) => describe(&e),
                Ok(b) => {
                    let v = if b.is_empty() {
                        Ok(Value::Null)
                    } else {
                        serde_json::from_slice::<Value>(&b)
                    };
                    match v {
                        Err(e) => format!("HTTP {status} with a body that is not JSON: {e}"),
                        Ok(v) => match error_in(&v) {
                            Some((code, _)) => format!("HTTP {status} carrying error {code}"),
                            None => match serde_json::from_value::<T>(v) {
                                Ok(t) => return Ok(t),
                                Err(e) => format!("unexpected JSON shape: {e}"),
                            },
                        },
                    }
                }
            };
            r.transient(reason).await.map_err(Failure::Cloud)?;
        }
    }
}

/// Graph's classification of an error status: which answers are worth
/// repeating, and how (`None`: final, see [`Failure::into_cloud`]).
fn classify(status: u16, retry_after: Option<Duration>) -> Option<Verdict> {
    match status {
        401 => Some(Verdict::Unauthorized),
        429 => Some(Verdict::RateLimited(retry_after)),
        500 | 502 | 503 | 504 | 509 => Some(Verdict::Transient(retry_after)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_failures_map_to_kinds() {
        let k = |status, code: &str| {
            Failure::Api {
                status,
                code: code.into(),
                message: String::new(),
            }
            .into_cloud("m")
            .kind
        };
        assert_eq!(k(404, "ErrorItemNotFound"), ErrorKind::NotFound);
        assert_eq!(k(400, "BadRequest"), ErrorKind::Config);
        assert_eq!(k(403, "ErrorAccessDenied"), ErrorKind::Auth);
        assert_eq!(k(409, "ErrorIrresolvableConflict"), ErrorKind::Retry);
    }
}
