//! Shared emulator state: the clock tests can move, the seeded RNG, id generators and
//! the per-user mailboxes of both services behind one `std::sync::Mutex` (handlers
//! never hold it across an `.await`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use base64::Engine;

use crate::faults::Faults;
use crate::options::Options;
use crate::quota::Quota;
use crate::stats::Stats;
use crate::store_gmail::GmailMailbox;
use crate::store_graph::GraphMailbox;
use crate::tokens::AuthState;

/// Everything one emulator instance owns.
pub struct App {
    /// Options it was started with.
    pub opts: Options,
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// Wall clock plus a test-controlled offset.
    pub clock: Clock,
    /// Mailboxes, tokens and the RNG.
    pub state: Mutex<State>,
    /// Quota windows and concurrency slots.
    pub quota: Mutex<Quota>,
    /// Installed faults.
    pub faults: Mutex<Faults>,
    /// Request counters.
    pub stats: Mutex<Stats>,
}

/// Mutable state of all users.
pub struct State {
    /// Seeded RNG for ids and tokens.
    pub rng: Rng,
    /// Office365 mailboxes by lower-cased user.
    pub graph: HashMap<String, GraphMailbox>,
    /// Gmail mailboxes by lower-cased user.
    pub gmail: HashMap<String, GmailMailbox>,
    /// Codes, tokens and client registrations.
    pub auth: AuthState,
}

impl App {
    /// Creates the state for a server reachable at `base_url`.
    pub fn new(opts: Options, base_url: String) -> App {
        let faults = Faults::new(opts.seed ^ 0x5eed_fa17, opts.faults.clone());
        let quota = Quota::new(opts.quota);
        App {
            state: Mutex::new(State {
                rng: Rng::new(opts.seed),
                graph: HashMap::new(),
                gmail: HashMap::new(),
                auth: AuthState::default(),
            }),
            quota: Mutex::new(quota),
            faults: Mutex::new(faults),
            stats: Mutex::new(Stats::default()),
            clock: Clock::default(),
            opts,
            base_url,
        }
    }

    /// Locks the state (a poisoned lock is recovered: tests should keep running).
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks the quota table.
    pub fn quota(&self) -> MutexGuard<'_, Quota> {
        self.quota.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks the fault table.
    pub fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks the stats.
    pub fn stats(&self) -> MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Current time in epoch milliseconds (including the test offset).
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}

impl State {
    /// The Graph mailbox of a user, created with its well-known folders on first use.
    pub fn graph_mailbox(&mut self, user: &str) -> &mut GraphMailbox {
        let key = user.to_ascii_lowercase();
        if !self.graph.contains_key(&key) {
            let mb = GraphMailbox::new(&key, &mut self.rng);
            self.graph.insert(key.clone(), mb);
        }
        self.graph.get_mut(&key).expect("inserted above")
    }

    /// The Gmail mailbox of a user, created with its system labels on first use.
    pub fn gmail_mailbox(&mut self, user: &str) -> &mut GmailMailbox {
        let key = user.to_ascii_lowercase();
        if !self.gmail.contains_key(&key) {
            let mb = GmailMailbox::new(&key, &mut self.rng);
            self.gmail.insert(key.clone(), mb);
        }
        self.gmail.get_mut(&key).expect("inserted above")
    }
}

/// Wall clock with an offset that `/_control/clock` advances.
#[derive(Default)]
pub struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    /// Epoch milliseconds now.
    pub fn now_ms(&self) -> i64 {
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        real + self.offset_ms.load(Ordering::Relaxed)
    }

    /// Moves the clock forward.
    pub fn advance_ms(&self, ms: i64) {
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

/// SplitMix64: small, seedable, good enough for ids and test data.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    /// A random element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// URL-safe random token of `n` bytes of entropy.
    pub fn token(&mut self, n: usize) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.bytes(n))
    }
}

static GUID_COUNTER: AtomicU64 = AtomicU64::new(1);

/// A fresh GUID-shaped string for request/trace ids.
pub fn guid() -> String {
    let mut r = Rng::new(GUID_COUNTER.fetch_add(1, Ordering::Relaxed) ^ 0xA5A5_5A5A);
    let a = r.next_u64();
    let b = r.next_u64();
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// Formats epoch milliseconds as Graph does: UTC, `Z`, no fractional seconds.
pub fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}
