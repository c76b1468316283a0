//! The per-account Gmail API client: one `reqwest` client, the account's
//! token source and throttle, retries with backoff, the 401 refresh-once
//! rule, Google's error envelope mapped to an [`ErrorKind`], and the
//! multipart batch endpoint. Tokens only ever go into `Authorization`
//! headers (marked sensitive); nothing here logs or reports them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::Method as Http;
use reqwest::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;

use super::throttle::{Limits, Method, Usage};
use super::wire::{self, HistoryId};
use crate::auth::{AccessToken, Audience, AuthError, TokenSource};
use crate::cloud::throttle::Throttle;
use crate::cloud::transport::{
    self, Budget, RetryPolicy, Verdict, parse_retry_after, path_segment, retry_after_header,
};
use crate::cloud::{CloudError, ErrorKind};
use crate::endpoints::Endpoints;

/// The API host. The legacy `www.googleapis.com` serves the REST paths and
/// the documented `batch/gmail/v1` endpoint, as the Python program uses.
pub const HOST: &str = "www.googleapis.com";
/// Path prefix of the REST API for the signed-in user.
pub const API: &str = "/gmail/v1/users/me";
/// Path of the multipart batch endpoint.
pub const BATCH: &str = "/batch/gmail/v1";

/// Client knobs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Pacing (quota units, concurrency, backoff).
    pub limits: Limits,
    /// Attempts per request before a transient failure is reported.
    pub max_attempts: u32,
    /// Attempts per request while Google answers "rate limit exceeded".
    pub max_rate_limited_attempts: u32,
    /// Calls per multipart batch (Google allows 100, advises at most 50).
    pub batch_size: usize,
}

impl Options {
    /// The retry policy of one call.
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            max_rate_limited: self.max_rate_limited_attempts,
            backoff_base: self.limits.backoff_base,
            backoff_max: self.limits.backoff_max,
            max_wait: self.limits.backoff_max,
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            limits: Limits::default(),
            max_attempts: 5,
            max_rate_limited_attempts: 10,
            batch_size: 50,
        }
    }
}

/// A failed API call, before it is attributed to a mailbox.
#[derive(Clone, Debug)]
pub struct ApiError {
    /// What the caller should do about it.
    pub kind: ErrorKind,
    /// HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// Google's `errors[].reason`, when given.
    pub reason: String,
    /// Server-requested (or computed) delay before retrying.
    pub retry_after: Option<Duration>,
    /// What failed (never contains a token).
    pub message: String,
}

impl ApiError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            status: None,
            reason: String::new(),
            retry_after: None,
            message: message.into(),
        }
    }

    /// The error as the sync engine sees it, for `mailbox`.
    pub fn into_cloud(self, mailbox: &str) -> CloudError {
        let mut e = CloudError::new(mailbox, self.kind, self.message);
        e.retry_after = self.retry_after;
        e
    }
}

/// One HTTP answer with its body read completely.
struct Reply {
    /// The token the request carried (to invalidate it if refused).
    token: AccessToken,
    status: u16,
    retry_after: Option<Duration>,
    content_type: String,
    body: Vec<u8>,
}

/// How one attempt failed.
enum Failure {
    /// Worth repeating after a delay.
    Transient(ApiError),
    /// Google's rate limiter refused the call.
    RateLimited(ApiError),
    /// The access token was refused (HTTP 401).
    Unauthorized(AccessToken, ApiError),
    /// Repeating will not help.
    Final(ApiError),
}

/// A request to send (path under [`HOST`], query, optional body).
struct Request<'a> {
    method: Http,
    path: &'a str,
    query: &'a [(&'a str, String)],
    body: Option<(String, Vec<u8>)>,
    units: u32,
}

/// The parts of a batch to send again, and why.
#[derive(Default)]
struct Resend {
    /// Their indexes, in order.
    again: Vec<usize>,
    /// The last transient failure among them.
    last_error: Option<ApiError>,
    /// The rate-limit answer with the longest `Retry-After`.
    rate_limited: Option<ApiError>,
    /// A part was refused for its token.
    unauthorized: bool,
}

impl Resend {
    /// Part `i` fails as `f` (`None`: it was missing from the answer).
    fn add(&mut self, i: usize, f: Option<Failure>) {
        self.again.push(i);
        match f {
            None => {
                self.last_error.get_or_insert_with(|| {
                    ApiError::new(ErrorKind::Retry, "batch answer is missing parts")
                });
            }
            Some(Failure::RateLimited(e)) => {
                if self
                    .rate_limited
                    .as_ref()
                    .is_none_or(|r| r.retry_after < e.retry_after)
                {
                    self.rate_limited = Some(e);
                }
            }
            Some(Failure::Unauthorized(_, e)) => {
                self.unauthorized = true;
                self.last_error = Some(e);
            }
            Some(Failure::Transient(e) | Failure::Final(e)) => self.last_error = Some(e),
        }
    }

    /// How the round failed, for the retry budget, and the error to report
    /// if it is spent.
    fn verdict(&self) -> (Verdict, ApiError) {
        let verdict = if self.unauthorized {
            Verdict::Unauthorized
        } else if let Some(e) = &self.rate_limited {
            Verdict::RateLimited(e.retry_after)
        } else {
            Verdict::Transient(None)
        };
        let last = self
            .rate_limited
            .clone()
            .or_else(|| self.last_error.clone())
            .unwrap_or_else(|| ApiError::new(ErrorKind::Retry, "batch parts kept failing"));
        (verdict, last)
    }
}

/// Sort the `parts` of an answer to the batch of `pending` (indexes into
/// `ids`): messages and final failures go to `results`, the rest to send
/// again.
fn sort_parts(
    ids: &[String],
    pending: &[usize],
    parts: Vec<BatchPart>,
    token: &AccessToken,
    results: &mut [Option<Result<wire::Message, ApiError>>],
) -> Resend {
    let mut resend = Resend::default();
    let mut answered = vec![false; ids.len()];
    for part in parts {
        let Some(i) = part_index(&part.content_id).filter(|i| pending.contains(i)) else {
            continue;
        };
        answered[i] = true;
        let reply = Reply {
            token: token.clone(),
            status: part.status,
            retry_after: part.retry_after,
            content_type: "application/json".into(),
            body: part.body,
        };
        let failure = match classify(&reply) {
            None => match serde_json::from_slice::<wire::Message>(&reply.body) {
                Ok(m) if m.id == ids[i] => {
                    results[i] = Some(Ok(m));
                    continue;
                }
                Ok(m) => ApiError::new(
                    ErrorKind::Retry,
                    format!("batch part for {} answered {}", ids[i], m.id),
                ),
                Err(e) => {
                    ApiError::new(ErrorKind::Retry, format!("invalid JSON in batch part: {e}"))
                }
            },
            Some(Failure::Final(e)) => {
                results[i] = Some(Err(e));
                continue;
            }
            Some(f) => {
                resend.add(i, Some(f));
                continue;
            }
        };
        resend.add(i, Some(Failure::Transient(failure)));
    }
    for &i in pending {
        if !answered[i] {
            resend.add(i, None);
        }
    }
    resend.again.sort_unstable();
    resend
}

/// One part of a batch answer.
#[derive(Debug, PartialEq, Eq)]
struct BatchPart {
    content_id: String,
    status: u16,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

/// A Gmail account: the HTTP client, tokens and throttle that every
/// mailbox (label) of the account shares.
pub struct Account {
    user: String,
    http: reqwest::Client,
    endpoints: Endpoints,
    tokens: Arc<dyn TokenSource>,
    throttle: Throttle,
    policy: RetryPolicy,
    opts: Options,
    /// The last profile `historyId` and when it was read, shared by the
    /// account's mailboxes so one poll of several labels costs one request.
    /// (when, sequence number, historyId).
    profile: tokio::sync::Mutex<Option<(tokio::time::Instant, u64, HistoryId)>>,
}

/// How long a profile `historyId` answers the polls of other labels.
const PROFILE_REUSE: Duration = Duration::from_secs(2);

impl Account {
    /// A client for `user` talking to `endpoints` with tokens from `tokens`.
    pub fn new(
        user: &str,
        endpoints: Endpoints,
        tokens: Arc<dyn TokenSource>,
        opts: Options,
    ) -> Result<Arc<Account>, CloudError> {
        let http = transport::client(opts.limits.max_concurrency).map_err(|e| {
            CloudError::new(
                &format!("gmail:{user}"),
                ErrorKind::Fatal,
                format!("cannot build the HTTP client: {e}"),
            )
        })?;
        Ok(Arc::new(Account {
            user: user.to_string(),
            http,
            endpoints,
            tokens,
            throttle: Throttle::new(opts.limits.throttle()),
            policy: opts.policy(),
            opts,
            profile: tokio::sync::Mutex::new(None),
        }))
    }

    /// The account's address.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The client knobs.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// Requests and quota units spent so far by every mailbox of the account.
    pub fn usage(&self) -> Usage {
        self.throttle.stats().into()
    }

    /// The mailbox's current `historyId` (`users.getProfile`, 1 unit).
    /// Labels polled together share one request: an answer at most two
    /// seconds old that this caller has not used yet (`seen` holds the
    /// sequence number of the last answer it used) is reused. That is safe
    /// because a listing may start from an older history id (history
    /// replays what came after), and a caller never gets the same answer
    /// twice, so a poll always sees changes made before its previous one.
    pub(crate) async fn history_id(&self, seen: &AtomicU64) -> Result<HistoryId, ApiError> {
        let mut cached = self.profile.lock().await;
        if let Some((at, seq, id)) = *cached
            && at.elapsed() < PROFILE_REUSE
            && seq > seen.load(Ordering::Relaxed)
        {
            seen.store(seq, Ordering::Relaxed);
            return Ok(id);
        }
        let p: wire::Profile = self.get(Method::GetProfile, "/profile", &[]).await?;
        let id = parse_history_id(&p.history_id)?;
        let seq = cached.map_or(1, |c| c.1 + 1);
        *cached = Some((tokio::time::Instant::now(), seq, id));
        seen.store(seq, Ordering::Relaxed);
        Ok(id)
    }

    /// `GET` a JSON document from `API + path`.
    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ApiError> {
        let full = format!("{API}{path}");
        let req = Request {
            method: Http::GET,
            path: &full,
            query,
            body: None,
            units: method.units(),
        };
        self.call(&req, |r| {
            serde_json::from_slice(&r.body).map_err(|e| format!("invalid JSON answer: {e}"))
        })
        .await
    }

    /// `POST` a JSON body to `API + path`, expecting an empty answer (as
    /// `batchModify` gives) or any JSON document (as `modify` gives).
    pub(crate) async fn post(
        &self,
        method: Method,
        path: &str,
        body: &impl serde::Serialize,
        expect_empty: bool,
    ) -> Result<(), ApiError> {
        let full = format!("{API}{path}");
        let bytes = serde_json::to_vec(body)
            .map_err(|e| ApiError::new(ErrorKind::Bug, format!("encoding request: {e}")))?;
        let req = Request {
            method: Http::POST,
            path: &full,
            query: &[],
            body: Some(("application/json".to_string(), bytes)),
            units: method.units(),
        };
        self.call(&req, |r| {
            if expect_empty && !r.body.iter().all(u8::is_ascii_whitespace) {
                return Err(format!(
                    "expected an empty answer, got {} bytes",
                    r.body.len()
                ));
            }
            if !expect_empty {
                serde_json::from_slice::<serde_json::Value>(&r.body)
                    .map_err(|e| format!("invalid JSON answer: {e}"))?;
            }
            Ok(())
        })
        .await
    }

    /// `GET API/messages/{id}` for each id through the batch endpoint (at
    /// most `batch_size` ids per call). One result per id, in order; parts
    /// that failed transiently are sent again in a smaller batch.
    pub(crate) async fn batch_get_messages(
        &self,
        ids: &[String],
        query: &str,
    ) -> Vec<Result<wire::Message, ApiError>> {
        let mut results: Vec<Option<Result<wire::Message, ApiError>>> = vec![None; ids.len()];
        let mut pending: Vec<usize> = (0..ids.len()).collect();
        // Rounds of resent parts are charged to one budget.
        let mut budget = Budget::new(&self.policy);
        while !pending.is_empty() {
            let (body, boundary) = batch_body(ids, &pending, query);
            let req = Request {
                method: Http::POST,
                path: BATCH,
                query: &[],
                body: Some((format!("multipart/mixed; boundary={boundary}"), body)),
                units: Method::MessagesGet.units() * pending.len() as u32,
            };
            let answer = self
                .call(&req, |r| Ok((parse_batch_reply(r)?, r.token.clone())))
                .await;
            let (parts, token) = match answer {
                Ok(p) => p,
                Err(e) => {
                    for i in pending {
                        results[i] = Some(Err(e.clone()));
                    }
                    break;
                }
            };
            let resend = sort_parts(ids, &pending, parts, &token, &mut results);
            if resend.again.is_empty() {
                break;
            }
            tracing::debug!(
                user = %self.user,
                retrying = resend.again.len(),
                "gmail batch: parts to send again"
            );
            // Wait as the policy says before sending the rest again.
            let (verdict, last) = resend.verdict();
            if verdict == Verdict::Unauthorized {
                self.tokens.invalidate(Audience::Gmail, &token);
            }
            if let Err(e) = self.again(&mut budget, verdict, last).await {
                for i in resend.again {
                    results[i] = Some(Err(e.clone()));
                }
                break;
            }
            pending = resend.again;
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(ApiError::new(ErrorKind::Retry, "batch part not sent")))
            })
            .collect()
    }

    /// Send `req` until it succeeds and `parse` accepts the answer, retrying
    /// transient failures with backoff, rate limits with the shared pause,
    /// and a refused token once with a fresh one.
    async fn call<T>(
        &self,
        req: &Request<'_>,
        parse: impl Fn(&Reply) -> Result<T, String>,
    ) -> Result<T, ApiError> {
        let mut budget = Budget::new(&self.policy);
        loop {
            let failure = match self.attempt(req).await {
                Ok(reply) => match parse(&reply) {
                    Ok(v) => {
                        self.throttle.succeeded();
                        return Ok(v);
                    }
                    Err(msg) => Failure::Transient(ApiError {
                        status: Some(reply.status),
                        ..ApiError::new(ErrorKind::Retry, msg)
                    }),
                },
                Err(f) => f,
            };
            let (verdict, e) = match failure {
                Failure::Final(e) => return Err(e),
                Failure::Unauthorized(token, e) => {
                    self.tokens.invalidate(Audience::Gmail, &token);
                    (Verdict::Unauthorized, e)
                }
                Failure::RateLimited(e) => (Verdict::RateLimited(e.retry_after), e),
                Failure::Transient(e) => (Verdict::Transient(e.retry_after), e),
            };
            self.again(&mut budget, verdict, e).await?;
        }
    }

    /// An attempt failed as `v` with `e`: wait as the policy says and
    /// return `Ok` to try again, or the final error.
    async fn again(&self, budget: &mut Budget, v: Verdict, e: ApiError) -> Result<(), ApiError> {
        match budget.after(v, &self.throttle) {
            Ok(wait) => {
                tracing::debug!(
                    user = %self.user,
                    error = %e.message,
                    wait_ms = wait.as_millis() as u64,
                    "gmail: {v:?}, retrying"
                );
                tokio::time::sleep(wait).await;
                Ok(())
            }
            Err(g) => Err(ApiError {
                kind: g.kind,
                retry_after: g.retry_after.or(e.retry_after),
                message: format!("{} ({})", e.message, g.why),
                ..e
            }),
        }
    }

    /// One attempt: wait for the throttle, get a token, send, read the
    /// whole answer, classify it.
    async fn attempt(&self, req: &Request<'_>) -> Result<Reply, Failure> {
        let _permit = self.throttle.acquire(1, req.units).await.map_err(|left| {
            Failure::Final(ApiError {
                retry_after: Some(left),
                ..ApiError::new(
                    ErrorKind::Retry,
                    format!("paused by Google for another {:.0}s", left.as_secs_f64()),
                )
            })
        })?;
        let token = self
            .tokens
            .token(Audience::Gmail)
            .await
            .map_err(|e| Failure::Final(token_error(e)))?;
        let url = self.endpoints.url(HOST, req.path);
        let mut rb = self
            .http
            .request(req.method.clone(), &url)
            .bearer_auth(token.secret());
        if !req.query.is_empty() {
            rb = rb.query(req.query);
        }
        if let Some((ct, body)) = &req.body {
            rb = rb.header(CONTENT_TYPE, ct.as_str()).body(body.clone());
        }
        let resp = rb.send().await.map_err(|e| {
            Failure::Transient(ApiError::new(
                ErrorKind::Retry,
                format!("{} {}: {}", req.method, req.path, e.without_url()),
            ))
        })?;
        let status = resp.status().as_u16();
        let retry_after = retry_after_header(resp.headers());
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp.bytes().await.map_err(|e| {
            Failure::Transient(ApiError::new(
                ErrorKind::Retry,
                format!(
                    "{} {}: reading the answer: {}",
                    req.method,
                    req.path,
                    e.without_url()
                ),
            ))
        })?;
        tracing::debug!(
            user = %self.user,
            method = %req.method,
            path = %req.path,
            status,
            bytes = body.len(),
            "gmail request"
        );
        let reply = Reply {
            token,
            status,
            retry_after,
            content_type,
            body: Vec::from(body),
        };
        match classify(&reply) {
            None => Ok(reply),
            Some(f) => Err(f),
        }
    }
}

/// A `historyId` Google sent.
pub(crate) fn parse_history_id(s: &str) -> Result<HistoryId, ApiError> {
    HistoryId::parse(s)
        .ok_or_else(|| ApiError::new(ErrorKind::Retry, format!("invalid historyId {s:?}")))
}

/// `None` for a success; otherwise how the answer failed. An HTTP 200 that
/// carries Google's error envelope is treated as that error.
fn classify(reply: &Reply) -> Option<Failure> {
    let envelope = || serde_json::from_slice::<wire::ErrorEnvelope>(&reply.body).ok();
    let (status, body) = if (200..300).contains(&reply.status) {
        let looks_like_error = reply.body.starts_with(b"{")
            && reply.body.len() < 64 * 1024
            && reply.body.windows(8).any(|w| w == b"\"error\":");
        match looks_like_error.then(envelope).flatten() {
            Some(env) if env.error.code >= 400 => (env.error.code, env.error),
            _ => return None,
        }
    } else {
        (
            reply.status,
            envelope().map(|e| e.error).unwrap_or_default(),
        )
    };
    let reason = body.reason().to_string();
    let message = if body.message.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status} {reason}: {}", body.message)
    };
    let err = |kind| ApiError {
        kind,
        status: Some(status),
        reason: reason.clone(),
        retry_after: reply.retry_after,
        message: message.clone(),
    };
    Some(match status {
        401 => Failure::Unauthorized(reply.token.clone(), err(ErrorKind::Auth)),
        429 => Failure::RateLimited(err(ErrorKind::Retry)),
        403 if matches!(
            reason.as_str(),
            "rateLimitExceeded" | "userRateLimitExceeded"
        ) =>
        {
            Failure::RateLimited(err(ErrorKind::Retry))
        }
        // Out of quota for the day: not worth hammering; tell the daemon.
        403 if matches!(reason.as_str(), "dailyLimitExceeded" | "quotaExceeded") => {
            Failure::Final(ApiError {
                retry_after: Some(reply.retry_after.unwrap_or(Duration::from_secs(3600))),
                ..err(ErrorKind::Retry)
            })
        }
        403 => Failure::Final(err(ErrorKind::Auth)),
        404 => Failure::Final(err(ErrorKind::NotFound)),
        408 | 500..=599 => Failure::Transient(err(ErrorKind::Retry)),
        _ => Failure::Final(err(ErrorKind::Config)),
    })
}

fn token_error(e: AuthError) -> ApiError {
    ApiError::new(transport::token_kind(&e), e.to_string())
}

/// The multipart body asking for `ids[i]` for each `i` in `which`;
/// returns the body and its boundary.
fn batch_body(ids: &[String], which: &[usize], query: &str) -> (Vec<u8>, String) {
    let boundary = format!("cms_batch_{:016x}", fastrand::u64(..));
    let mut body = Vec::new();
    for &i in which {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <item-{i}>\r\n\r\n\
                 GET {API}/messages/{}?{query}\r\n\r\n",
                path_segment(&ids[i])
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (body, boundary)
}

/// The request index of a part from its `Content-ID: <response-item-N>`.
fn part_index(content_id: &str) -> Option<usize> {
    content_id
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .strip_prefix("response-")?
        .strip_prefix("item-")?
        .parse()
        .ok()
}

/// Parse a batch answer; an answer cut short (no closing delimiter, a part
/// shorter than its `Content-Length`) is an error.
fn parse_batch_reply(r: &Reply) -> Result<Vec<BatchPart>, String> {
    let boundary = r
        .content_type
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("boundary="))
        .map(|b| b.trim_matches('"').to_string())
        .next()
        .ok_or_else(|| format!("batch answer is not multipart: {:?}", r.content_type))?;
    parse_multipart(&r.body, &boundary)
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Most headers a part (or its inner answer) may carry.
const MAX_PART_HEADERS: usize = 64;

/// The value of header `name` (ASCII case-insensitive), as text.
fn header<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::trim)
}

/// One part of a `multipart/mixed` batch answer: the part's own headers
/// (`Content-ID`), then the embedded HTTP answer (status line, headers,
/// body), both read by `httparse`.
fn parse_part(chunk: &[u8]) -> Result<BatchPart, String> {
    let bad = |what: &str, e: Option<httparse::Error>| match e {
        Some(e) => format!("batch part: {what}: {e}"),
        None => format!("batch part: {what} cut short"),
    };
    let mut outer = [httparse::EMPTY_HEADER; MAX_PART_HEADERS];
    let (n, outer) = match httparse::parse_headers(chunk, &mut outer) {
        Ok(httparse::Status::Complete(c)) => c,
        Ok(httparse::Status::Partial) => return Err(bad("part headers", None)),
        Err(e) => return Err(bad("part headers", Some(e))),
    };
    let content_id = header(outer, "content-id").unwrap_or("").to_string();
    let inner = &chunk[n..];
    let mut headers = [httparse::EMPTY_HEADER; MAX_PART_HEADERS];
    let mut answer = httparse::Response::new(&mut headers);
    let n = match answer.parse(inner) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(bad("HTTP answer", None)),
        Err(e) => return Err(bad("HTTP answer", Some(e))),
    };
    let status = answer.code.ok_or("batch part without an HTTP status")?;
    let rest = &inner[n..];
    let body = match header(answer.headers, "content-length").and_then(|v| v.parse().ok()) {
        Some(len) if len <= rest.len() => rest[..len].to_vec(),
        Some(_) => return Err("batch part shorter than its Content-Length".into()),
        None => rest.to_vec(),
    };
    Ok(BatchPart {
        content_id,
        status,
        retry_after: header(answer.headers, "retry-after").and_then(parse_retry_after),
        body,
    })
}

fn parse_multipart(body: &[u8], boundary: &str) -> Result<Vec<BatchPart>, String> {
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    let mut pos = find(body, delim, 0).ok_or("batch answer has no parts")?;
    let mut parts = Vec::new();
    loop {
        let after = pos + delim.len();
        if body[after..].starts_with(b"--") {
            return Ok(parts);
        }
        // The next delimiter starts a line; the line break before it
        // belongs to the delimiter.
        let next = find(body, delim, after).ok_or("batch answer is cut short")?;
        let mut end = next;
        if end >= 2 && &body[end - 2..end] == b"\r\n" {
            end -= 2;
        } else if end >= 1 && body[end - 1] == b'\n' {
            end -= 1;
        }
        let chunk = &body[after..end.max(after)];
        let chunk = chunk
            .strip_prefix(b"\r\n")
            .or_else(|| chunk.strip_prefix(b"\n"))
            .unwrap_or(chunk);
        parts.push(parse_part(chunk)?);
        pos = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            token: AccessToken::new("t"),
            status,
            retry_after: None,
            content_type: "application/json".into(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn kind(f: Option<Failure>) -> &'static str {
        match f {
            None => "ok",
            Some(Failure::Transient(_)) => "transient",
            Some(Failure::RateLimited(_)) => "rate",
            Some(Failure::Unauthorized(..)) => "401",
            Some(Failure::Final(e)) => match e.kind {
                ErrorKind::Retry => "final-retry",
                ErrorKind::Auth => "auth",
                ErrorKind::NotFound => "notfound",
                ErrorKind::Config => "config",
                ErrorKind::Bug => "bug",
                ErrorKind::Fatal => "fatal",
            },
        }
    }

    fn google(code: u16, reason: &str) -> String {
        format!(
            r#"{{"error":{{"code":{code},"message":"m","errors":[{{"reason":"{reason}","domain":"d"}}]}}}}"#
        )
    }

    #[test]
    fn statuses_and_reasons_classify() {
        assert_eq!(kind(classify(&reply(200, "{\"id\":\"a\"}"))), "ok");
        assert_eq!(kind(classify(&reply(204, ""))), "ok");
        assert_eq!(
            kind(classify(&reply(401, &google(401, "authError")))),
            "401"
        );
        assert_eq!(kind(classify(&reply(429, "Too many"))), "rate");
        assert_eq!(
            kind(classify(&reply(403, &google(403, "userRateLimitExceeded")))),
            "rate"
        );
        assert_eq!(
            kind(classify(&reply(403, &google(403, "rateLimitExceeded")))),
            "rate"
        );
        assert_eq!(
            kind(classify(&reply(403, &google(403, "dailyLimitExceeded")))),
            "final-retry"
        );
        assert_eq!(
            kind(classify(&reply(
                403,
                &google(403, "insufficientPermissions")
            ))),
            "auth"
        );
        assert_eq!(
            kind(classify(&reply(404, &google(404, "notFound")))),
            "notfound"
        );
        assert_eq!(kind(classify(&reply(503, "<html>"))), "transient");
        assert_eq!(
            kind(classify(&reply(400, &google(400, "invalidArgument")))),
            "config"
        );
        // An error envelope delivered with HTTP 200.
        assert_eq!(
            kind(classify(&reply(200, &google(503, "backendError")))),
            "transient"
        );
    }

    #[test]
    fn batch_body_and_answer_round_trip() {
        let ids = vec!["aa".to_string(), "bb".to_string(), "c/d".to_string()];
        let (body, boundary) = batch_body(&ids, &[0, 2], "format=minimal");
        let text = String::from_utf8(body).unwrap();
        assert!(text.contains("Content-ID: <item-0>"));
        assert!(text.contains("GET /gmail/v1/users/me/messages/c%2Fd?format=minimal\r\n"));
        assert!(!text.contains("item-1"));
        assert!(text.ends_with(&format!("--{boundary}--\r\n")));

        let answer = "--b\r\nContent-Type: application/http\r\nContent-ID: <response-item-2>\r\n\r\n\
            HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1.5\r\nContent-Length: 2\r\n\r\n{}\r\n\
            --b\r\nContent-Type: application/http\r\nContent-ID: <response-item-0>\r\n\r\n\
            HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"id\":\"aa\"}\r\n--b--\r\n";
        let r = Reply {
            token: AccessToken::new("t"),
            status: 200,
            retry_after: None,
            content_type: "multipart/mixed; boundary=b".into(),
            body: answer.as_bytes().to_vec(),
        };
        let parts = parse_batch_reply(&r).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(part_index(&parts[0].content_id), Some(2));
        assert_eq!(parts[0].status, 429);
        assert_eq!(parts[0].retry_after, Some(Duration::from_millis(1500)));
        assert_eq!(parts[0].body, b"{}");
        assert_eq!(part_index(&parts[1].content_id), Some(0));
        assert_eq!(parts[1].body, b"{\"id\":\"aa\"}");
    }

    #[test]
    fn truncated_batch_answers_are_errors() {
        let full = "--b\r\nContent-ID: <response-item-0>\r\n\r\nHTTP/1.1 200 OK\r\n\
            Content-Length: 11\r\n\r\n{\"id\":\"aa\"}\r\n--b--\r\n";
        for cut in [full.len() / 2, full.len() - 8] {
            let r = Reply {
                token: AccessToken::new("t"),
                status: 200,
                retry_after: None,
                content_type: "multipart/mixed; boundary=\"b\"".into(),
                body: full.as_bytes()[..cut].to_vec(),
            };
            assert!(parse_batch_reply(&r).is_err(), "cut at {cut}");
        }
        let short = "--b\r\nContent-ID: <response-item-0>\r\n\r\nHTTP/1.1 200 OK\r\n\
            Content-Length: 50\r\n\r\n{\"id\":\"aa\"}\r\n--b--\r\n";
        assert!(parse_multipart(short.as_bytes(), "b").is_err());
        let garbled =
            "--b\r\nContent-ID: <response-item-0>\r\n\r\nHTTP/1.1 OK\r\n\r\n{}\r\n--b--\r\n";
        assert!(parse_multipart(garbled.as_bytes(), "b").is_err());
    }

    #[test]
    fn batch_answers_with_bare_lf_and_dated_retry_after_parse() {
        let answer = "--b\nContent-ID: <response-item-1>\n\nHTTP/1.1 503 Unavailable\n\
            Retry-After: Wed, 21 Oct 2015 07:28:00 GMT\n\n{}\n--b--\n";
        let parts = parse_multipart(answer.as_bytes(), "b").unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(part_index(&parts[0].content_id), Some(1));
        assert_eq!(parts[0].status, 503);
        // A date in the past: retry at once.
        assert_eq!(parts[0].retry_after, Some(Duration::ZERO));
        assert_eq!(parts[0].body, b"{}");
    }
}
