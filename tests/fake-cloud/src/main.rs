//! `cms-fakecloud`: runs the cloud emulator on a loopback port; all logic lives in the
//! `fake_cloud` library, this file only parses arguments.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use fake_cloud::{FakeCloud, Options, PopulateSpec, QuotaMode};

/// Local emulator of Microsoft Graph mail, Gmail and their OAuth servers.
///
/// Every emulated host lives under a path prefix: https://HOST/PATH is served at
/// http://ADDR/HOST/PATH (graph.microsoft.com, login.microsoftonline.com,
/// outlook.office.com, gmail.googleapis.com, www.googleapis.com,
/// oauth2.googleapis.com, accounts.google.com). Test controls live under /_control/
/// (health, faults, stats, token, revoke, populate, deliver, mailbox, expire-delta,
/// expire-history, device, client, clock). The first line on stdout is
/// "listening on http://127.0.0.1:PORT".
#[derive(Parser, Debug)]
#[command(name = "cms-fakecloud", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Service time per mailbox request in ms, spent holding the mailbox's concurrency slot.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Quotas: `real` (Graph 4 concurrent + 10,000/10 min per mailbox; Gmail 15,000
    /// units/min per user), `off`, or `xK` (windows and budgets divided by K).
    #[arg(long, default_value = "real")]
    quota: QuotaMode,
    /// Faults to install at start: items separated by `;`, each `key=value,...` with keys
    /// route (glob with `*`, else substring of the path incl. host prefix), method,
    /// kind (status|reset|truncate|bad_json|delay|error200), status, delay_ms, count, prob,
    /// retry_after. Example: `route=*/messages/delta,kind=status,status=503,count=2`.
    #[arg(long)]
    faults: Option<String>,
    /// Seed for ids, tokens, generated mail and fault probabilities.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Approve authorization requests at once (redirect without the login page).
    #[arg(long)]
    auto_approve: bool,
    /// Access-token lifetime in seconds.
    #[arg(long, default_value_t = 3599)]
    token_lifetime: u64,
    /// Device-flow poll interval in seconds (polling faster gets `slow_down`).
    #[arg(long, default_value_t = 5)]
    device_interval: u64,
    /// Keep refresh tokens valid after they were exchanged (Entra's real behaviour);
    /// by default a rotated refresh token is single-use.
    #[arg(long)]
    rt_reuse: bool,
    /// User that signs in when the authorize request has no login_hint.
    #[arg(long, default_value = "user@example.com")]
    default_user: String,
    /// Fill an Office365 folder at start: USER:FOLDER:N (FOLDER a path like Inbox or
    /// Inbox/Lists, or a well-known name). Repeatable.
    #[arg(long, value_name = "USER:FOLDER:N")]
    populate_o365: Vec<String>,
    /// Fill a Gmail label at start: USER:LABEL:N (INBOX or a user label name). Repeatable.
    #[arg(long, value_name = "USER:LABEL:N")]
    populate_gmail: Vec<String>,
    /// Gmail history records kept per user (older startHistoryIds get 404).
    #[arg(long, default_value_t = 10_000)]
    history_window: usize,
    /// Graph delta tokens kept per mailbox (older ones get 410 SyncStateNotFound).
    #[arg(long, default_value_t = 1_000)]
    delta_token_cache: usize,
    /// Google refresh-token lifetime in days (7 models a consent screen in Testing; 0 = no expiry).
    #[arg(long, default_value_t = 7)]
    google_rt_days: u64,
    /// Run a plain-text SMTP listener that checks AUTH XOAUTH2 tokens (e.g. 127.0.0.1:0).
    #[arg(long)]
    smtp_listen: Option<SocketAddr>,
    /// Run a plain-text IMAP listener that checks AUTHENTICATE XOAUTH2 tokens.
    #[arg(long)]
    imap_listen: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let mut populate = Vec::new();
    for s in &a.populate_o365 {
        populate.push(PopulateSpec::parse_cli("o365", s).map_err(anyhow::Error::msg)?);
    }
    for s in &a.populate_gmail {
        populate.push(PopulateSpec::parse_cli("gmail", s).map_err(anyhow::Error::msg)?);
    }
    let faults = match &a.faults {
        Some(s) => fake_cloud::faults::parse_cli(s).map_err(anyhow::Error::msg)?,
        None => Vec::new(),
    };
    let opts = Options {
        listen: a.listen,
        latency: Duration::from_millis(a.latency_ms),
        quota: a.quota,
        faults,
        seed: a.seed,
        auto_approve: a.auto_approve,
        token_lifetime: Duration::from_secs(a.token_lifetime),
        device_interval: a.device_interval,
        rt_single_use: !a.rt_reuse,
        default_user: a.default_user,
        populate,
        history_window: a.history_window,
        delta_token_cache: a.delta_token_cache,
        smtp_listen: a.smtp_listen,
        imap_listen: a.imap_listen,
        google_rt_lifetime: (a.google_rt_days > 0)
            .then(|| Duration::from_secs(a.google_rt_days * 86_400)),
    };
    let handle = FakeCloud::start(opts).await?;
    println!("listening on {}", handle.base_url());
    let seeded: usize = {
        let st = handle.app().lock();
        st.graph.values().map(|m| m.messages.len()).sum::<usize>()
            + st.gmail.values().map(|m| m.messages.len()).sum::<usize>()
    };
    if let Some(a) = handle.smtp_addr() {
        eprintln!("smtp (XOAUTH2, no TLS) on {a}");
    }
    if let Some(a) = handle.imap_addr() {
        eprintln!("imap (XOAUTH2, no TLS) on {a}");
    }
    if seeded > 0 {
        eprintln!("emulated cloud ready, {seeded} messages seeded");
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tokio::signal::ctrl_c().await?;
    handle.shutdown().await;
    Ok(())
}
