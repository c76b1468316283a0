//! Quotas per mailbox: Graph allows 4 concurrent requests and 10,000 requests per
//! 10 minutes per app+mailbox; Gmail charges per-method units against a per-user
//! window (15,000 units/min) and limits concurrency. `--quota xK` divides windows and
//! budgets by K; `--quota off` admits everything (slots are still counted for stats).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::options::QuotaMode;
use crate::state::App;

/// Graph (Outlook) concurrent requests per app and mailbox.
pub const GRAPH_CONCURRENCY: u32 = 4;
/// Graph requests per window per app and mailbox.
pub const GRAPH_BUDGET: u64 = 10_000;
/// Graph window length, ms.
pub const GRAPH_WINDOW_MS: i64 = 10 * 60 * 1000;
/// Gmail units per user per minute (the documented per-user limit).
pub const GMAIL_BUDGET: u64 = 15_000;
/// Gmail window, ms.
pub const GMAIL_WINDOW_MS: i64 = 60 * 1000;
/// Gmail concurrent requests per user. UNVERIFIED: Google documents a per-user
/// concurrency limit without a number; 10 is a guess on the strict side.
pub const GMAIL_CONCURRENCY: u32 = 10;

/// Which service a bucket belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Svc {
    /// Graph mailbox bucket.
    Graph,
    /// Gmail user bucket.
    Gmail,
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug)]
pub enum Denied {
    /// Too many requests in flight; retry after the given seconds.
    Concurrency(f64),
    /// The window budget is spent; retry after the given seconds.
    Window(f64),
}

#[derive(Default)]
struct Bucket {
    inflight: u32,
    peak: u32,
    peak_attempted: u32,
    window: VecDeque<(i64, u64)>,
    spent: u64,
    /// Units (Graph: requests) charged since the last stats reset.
    total: u64,
    throttled: u64,
}

/// All quota buckets.
pub struct Quota {
    mode: QuotaMode,
    buckets: HashMap<(Svc, String), Bucket>,
}

/// Units Gmail charges per method (§3.7); unknown methods cost 5.
pub fn gmail_units(method: &str) -> u64 {
    match method {
        "getProfile" | "labels.list" | "labels.get" | "labels.create" | "labels.delete"
        | "labels.patch" => 1,
        "history.list" => 2,
        "messages.list" | "messages.get" | "messages.modify" | "messages.trash"
        | "messages.untrash" | "attachments.get" => 5,
        "messages.delete" => 10,
        "threads.get" | "threads.list" => 10,
        "messages.insert" | "messages.import" => 25,
        "messages.batchModify" | "messages.batchDelete" => 50,
        "messages.send" | "watch" => 100,
        _ => 5,
    }
}

impl Quota {
    /// An empty table.
    pub fn new(mode: QuotaMode) -> Quota {
        Quota {
            mode,
            buckets: HashMap::new(),
        }
    }

    /// Takes a slot and charges `units`, or says why not.
    pub fn admit(&mut self, svc: Svc, key: &str, units: u64, now_ms: i64) -> Result<(), Denied> {
        let k = self.mode.factor() as i64;
        let (conc, budget, window) = match svc {
            Svc::Graph => (GRAPH_CONCURRENCY, GRAPH_BUDGET, GRAPH_WINDOW_MS),
            Svc::Gmail => (GMAIL_CONCURRENCY, GMAIL_BUDGET, GMAIL_WINDOW_MS),
        };
        let budget = (budget / k as u64).max(1);
        let window = (window / k).max(1);
        let off = self.mode == QuotaMode::Off;
        let b = self.buckets.entry((svc, key.to_string())).or_default();
        b.peak_attempted = b.peak_attempted.max(b.inflight + 1);
        while b.window.front().is_some_and(|(t, _)| *t + window <= now_ms) {
            if let Some((_, u)) = b.window.pop_front() {
                b.spent -= u;
            }
        }
        if !off && b.inflight >= conc {
            b.throttled += 1;
            return Err(Denied::Concurrency(1.0 / k as f64));
        }
        if !off && b.spent + units > budget {
            b.throttled += 1;
            let oldest = b.window.front().map(|(t, _)| *t).unwrap_or(now_ms);
            return Err(Denied::Window(
                ((oldest + window - now_ms) as f64 / 1000.0).max(0.001),
            ));
        }
        b.inflight += 1;
        b.peak = b.peak.max(b.inflight);
        b.window.push_back((now_ms, units));
        b.spent += units;
        b.total += units;
        Ok(())
    }

    /// Gives a slot back.
    pub fn release(&mut self, svc: Svc, key: &str) {
        if let Some(b) = self.buckets.get_mut(&(svc, key.to_string())) {
            b.inflight = b.inflight.saturating_sub(1);
        }
    }

    /// Peak concurrency and throttling per mailbox, for `/_control/stats`.
    pub fn to_json(&self) -> Value {
        let mut out = BTreeMap::new();
        for ((svc, key), b) in &self.buckets {
            let name = format!(
                "{} {}",
                match svc {
                    Svc::Graph => "graph",
                    Svc::Gmail => "gmail",
                },
                key
            );
            out.insert(
                name,
                json!({"peak_concurrency": b.peak, "peak_attempted": b.peak_attempted,
                    "in_flight": b.inflight, "window_used": b.spent, "charged": b.total, "throttled": b.throttled}),
            );
        }
        json!(out)
    }

    /// Forgets peaks and windows (stats reset).
    pub fn reset(&mut self) {
        for b in self.buckets.values_mut() {
            b.peak = b.inflight;
            b.peak_attempted = b.inflight;
            b.throttled = 0;
            b.window.clear();
            b.spent = 0;
            b.total = 0;
        }
    }
}

/// A held concurrency slot, given back on drop.
pub struct Slot {
    app: Arc<App>,
    svc: Svc,
    key: String,
}

impl Slot {
    /// Admits a request or returns why it is refused.
    pub fn take(app: &Arc<App>, svc: Svc, key: &str, units: u64) -> Result<Slot, Denied> {
        let now = app.now_ms();
        app.quota().admit(svc, key, units, now)?;
        Ok(Slot {
            app: app.clone(),
            svc,
            key: key.to_string(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.app.quota().release(self.svc, &self.key);
    }
}
