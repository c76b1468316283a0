//! Emulator options: the knobs the CLI and tests set.

use std::net::SocketAddr;
use std::time::Duration;

use crate::faults::FaultSpec;
use crate::populate::PopulateSpec;

/// How quotas are enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaMode {
    /// The documented limits and windows.
    Real,
    /// No quota checks at all.
    Off,
    /// Windows and per-window budgets divided by K (Retry-After shrinks with them).
    Scaled(u32),
}

impl std::str::FromStr for QuotaMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "real" => Ok(QuotaMode::Real),
            "off" => Ok(QuotaMode::Off),
            _ => s
                .strip_prefix('x')
                .and_then(|k| k.parse::<u32>().ok())
                .filter(|k| *k >= 1)
                .map(QuotaMode::Scaled)
                .ok_or_else(|| format!("bad quota mode {s:?}: want real, off or xK")),
        }
    }
}

impl QuotaMode {
    /// The divisor applied to windows and budgets (1 for real).
    pub fn factor(self) -> u32 {
        match self {
            QuotaMode::Scaled(k) => k,
            _ => 1,
        }
    }
}

/// Everything that configures one emulator instance.
#[derive(Clone, Debug)]
pub struct Options {
    /// Address to bind; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Service time per mailbox request, spent while holding the mailbox's concurrency slot.
    pub latency: Duration,
    /// Quota enforcement.
    pub quota: QuotaMode,
    /// Faults installed at start.
    pub faults: Vec<FaultSpec>,
    /// Seed of every random choice (ids, tokens, generated mail, fault probabilities).
    pub seed: u64,
    /// Approve authorization requests at once instead of showing the login page.
    pub auto_approve: bool,
    /// Lifetime of access tokens.
    pub token_lifetime: Duration,
    /// Device-flow polling interval announced (and enforced with `slow_down`), in seconds.
    pub device_interval: u64,
    /// Refresh tokens become invalid once used (rotation); false keeps old ones valid.
    pub rt_single_use: bool,
    /// User that approves an authorization without `login_hint`.
    pub default_user: String,
    /// Mailboxes to fill at start.
    pub populate: Vec<PopulateSpec>,
    /// Gmail history records kept per user; older `startHistoryId`s get 404.
    pub history_window: usize,
    /// Graph delta/skip tokens kept per mailbox; older ones get `SyncStateNotFound`.
    pub delta_token_cache: usize,
    /// Lifetime of Google refresh tokens (7 days models a consent screen in "Testing").
    pub google_rt_lifetime: Option<Duration>,
    /// Where to run the plain-text XOAUTH2 SMTP listener (none by default).
    pub smtp_listen: Option<SocketAddr>,
    /// Where to run the plain-text XOAUTH2 IMAP listener (none by default).
    pub imap_listen: Option<SocketAddr>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            latency: Duration::ZERO,
            quota: QuotaMode::Real,
            faults: Vec::new(),
            seed: 1,
            auto_approve: false,
            token_lifetime: Duration::from_secs(3599),
            device_interval: 5,
            rt_single_use: true,
            default_user: "user@example.com".to_string(),
            populate: Vec::new(),
            history_window: 10_000,
            delta_token_cache: 1_000,
            google_rt_lifetime: Some(Duration::from_secs(7 * 24 * 3600)),
            smtp_listen: None,
            imap_listen: None,
        }
    }
}
