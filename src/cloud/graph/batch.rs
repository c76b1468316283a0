//! Sending many small writes (PATCH flags, POST move) through `POST /$batch`
//! (graph/json-batching): at most 20 parts per batch, each part carrying its
//! own `Prefer` and `Content-Type`; parts answered 429 are paused for and
//! resent together; any other failed part is retried alone through the
//! ordinary request path; 404 is reported as `NotFound`.
//!
//! Concurrency: Graph passes up to four parts of a batch to Outlook at a
//! time, and Outlook allows four requests in flight per mailbox. A batch of
//! `n` parts therefore takes `min(n, 4)` slots of the mailbox throttle and
//! counts as `n` requests in its window, so batches, listings and downloads of
//! all folders together never exceed four in flight. Within one call the
//! batches go out one after another: a second batch could only wait for the
//! same four slots. Twenty parts per batch (the documented maximum) keeps the
//! round trips few; the Python client's three-part batches were a workaround
//! for running several batches at once without a per-mailbox limit.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use super::client::{Account, Call, PREFER_IMMUTABLE, Retrier, error_in};
use super::wire::{BatchPart, BatchPartResponse, BatchRequest, BatchResponse};
use crate::cloud::transport::{Budget, Verdict, parse_retry_after};
use crate::cloud::{CloudError, ErrorKind};

/// Most parts per batch (the documented limit).
pub const BATCH_SIZE: usize = 20;
/// Parts Graph runs at once per batch, and Outlook's per-mailbox limit.
const PARTS_IN_FLIGHT: usize = 4;

/// One write to send.
pub(crate) struct Op {
    /// `PATCH` or `POST`.
    pub method: &'static str,
    /// Path relative to the version root, e.g. `/me/messages/{id}`.
    pub path: String,
    /// JSON body.
    pub body: Option<Value>,
}

fn part_headers(with_body: bool) -> BTreeMap<String, String> {
    let mut h = BTreeMap::new();
    // The outer request's Prefer does not apply to the parts.
    h.insert("Prefer".to_string(), PREFER_IMMUTABLE.to_string());
    if with_body {
        h.insert("Content-Type".to_string(), "application/json".to_string());
    }
    h
}

/// One result slot per op; `None` until it is decided.
type Results = Vec<Option<Result<(), CloudError>>>;

/// The ops of one `run` and what is known of them so far.
struct Batches<'a> {
    account: &'a Account,
    ctx: &'a str,
    ops: &'a [Op],
    results: Results,
}

/// What one round of batches left to do.
#[derive(Default)]
struct Round {
    /// Parts answered 429, to send again together.
    throttled: Vec<usize>,
    /// The longest `Retry-After` among them.
    longest: Option<Duration>,
    /// Parts that failed otherwise, to send alone.
    alone: Vec<usize>,
}

/// What one part of a batch answer says about its op.
enum Part {
    /// Decided: done, or failed for good.
    Done(Result<(), CloudError>),
    /// Answered 429 (with this `Retry-After`): sent again with the others.
    Throttled(Option<Duration>),
    /// Failed otherwise: sent alone.
    Alone,
}

/// Run `ops`; one result per op, in order.
pub(crate) async fn run(account: &Account, ctx: &str, ops: &[Op]) -> Vec<Result<(), CloudError>> {
    let mut b = Batches {
        account,
        ctx,
        ops,
        results: ops.iter().map(|_| None).collect(),
    };
    let mut todo: Vec<usize> = (0..ops.len()).collect();
    let mut alone = Vec::new();
    // Rounds of parts answered 429 are charged to one budget.
    let mut budget = Budget::new(account.policy());
    let mut round = 0;
    while !todo.is_empty() {
        round += 1;
        let mut r = Round::default();
        for chunk in todo.chunks(BATCH_SIZE) {
            b.send_chunk(chunk, &mut r).await;
        }
        alone.append(&mut r.alone);
        if r.throttled.is_empty() {
            break;
        }
        tracing::warn!(
            mailbox = ctx,
            "{} batch parts throttled (Retry-After {:?})",
            r.throttled.len(),
            r.longest
        );
        if let Err(g) = budget.after(Verdict::RateLimited(r.longest), account.throttle()) {
            for i in r.throttled {
                let mut e = CloudError::new(
                    ctx,
                    ErrorKind::Retry,
                    format!(
                        "{}: throttled ({round} batches sent, {})",
                        ops[i].path, g.why
                    ),
                );
                e.retry_after = g.retry_after;
                b.results[i] = Some(Err(e));
            }
            break;
        }
        todo = r.throttled;
    }
    // Parts that failed otherwise go alone, with the full retry policy; the
    // throttle keeps them within the mailbox limit.
    let singles =
        futures_util::future::join_all(alone.iter().map(|&i| single(account, ctx, &ops[i]))).await;
    for (i, r) in alone.into_iter().zip(singles) {
        b.results[i] = Some(r);
    }
    b.results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(CloudError::new(
                    ctx,
                    ErrorKind::Retry,
                    "no answer for a batch part",
                ))
            })
        })
        .collect()
}

impl Batches<'_> {
    /// Send the ops of `chunk` as one `$batch`: decided parts go to `results`,
    /// the others to `round`.
    async fn send_chunk(&mut self, chunk: &[usize], round: &mut Round) {
        let (account, ctx, ops) = (self.account, self.ctx, self.ops);
        let fail_all = |results: &mut Results, e: CloudError| {
            for &i in chunk {
                results[i] = Some(Err(e.clone()));
            }
        };
        let results = &mut self.results;
        let req = BatchRequest {
            requests: chunk
                .iter()
                .map(|&i| BatchPart {
                    id: i.to_string(),
                    method: ops[i].method,
                    url: ops[i].path.clone(),
                    headers: part_headers(ops[i].body.is_some()),
                    body: ops[i].body.clone(),
                })
                .collect(),
        };
        let body = match serde_json::to_value(&req) {
            Ok(b) => b,
            Err(e) => {
                let e = CloudError::new(ctx, ErrorKind::Bug, format!("batch encoding: {e}"));
                return fail_all(results, e);
            }
        };
        let url = account.url("/$batch");
        let call = Call {
            method: Method::POST,
            url: &url,
            body: Some(&body),
            prefer: None,
            slots: chunk.len().min(PARTS_IN_FLIGHT) as u32,
            requests: chunk.len() as u32,
        };
        let mut r = Retrier::new(account, ctx);
        let resp = match account.json::<BatchResponse>(&call, &mut r).await {
            Ok(resp) => resp,
            Err(f) => return fail_all(results, f.into_cloud(ctx)),
        };
        let mut seen = HashSet::new();
        for part in resp.responses {
            // Answers come in any order: match them by id.
            let Ok(i) = part.id.parse::<usize>() else {
                continue;
            };
            if chunk.contains(&i) && seen.insert(i) {
                match take_part(account, ctx, &ops[i], part) {
                    Part::Done(r) => results[i] = Some(r),
                    Part::Throttled(ra) => {
                        round.longest = round.longest.max(ra);
                        round.throttled.push(i);
                    }
                    Part::Alone => round.alone.push(i),
                }
            }
        }
        // Parts the answer left out go alone.
        round
            .alone
            .extend(chunk.iter().filter(|i| !seen.contains(i)).copied());
    }
}

/// What `part` of a batch answer says about `op`.
fn take_part(account: &Account, ctx: &str, op: &Op, part: BatchPartResponse) -> Part {
    match part.status {
        200..=299 if part.body.as_ref().and_then(error_in).is_none() => Part::Done(Ok(())),
        429 => {
            let ra = part.header("retry-after").and_then(parse_retry_after);
            // Pause now, so the next batch of this round waits too.
            if let Some(ra) = ra {
                account.throttle().pause(ra);
            }
            Part::Throttled(ra)
        }
        404 => {
            let (code, message) = part
                .error()
                .map(|e| (e.code, e.message))
                .unwrap_or_default();
            Part::Done(Err(CloudError::new(
                ctx,
                ErrorKind::NotFound,
                format!("{}: HTTP 404 {code}: {message}", op.path),
            )))
        }
        status => {
            tracing::debug!(
                mailbox = ctx,
                "batch part answered {status}; retrying it alone"
            );
            Part::Alone
        }
    }
}

/// Send one op on its own.
async fn single(account: &Account, ctx: &str, op: &Op) -> Result<(), CloudError> {
    let url = account.url(&op.path);
    let method = Method::from_bytes(op.method.as_bytes())
        .map_err(|e| CloudError::new(ctx, ErrorKind::Bug, e.to_string()))?;
    let call = Call {
        method,
        url: &url,
        body: op.body.as_ref(),
        prefer: None,
        slots: 1,
        requests: 1,
    };
    let mut r = Retrier::new(account, ctx);
    account
        .json::<Value>(&call, &mut r)
        .await
        .map(|_| ())
        .map_err(|f| {
            let mut e = f.into_cloud(ctx);
            e.message = format!("{}: {}", op.path, e.message);
            e
        })
}
