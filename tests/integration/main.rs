//! The one integration-test binary: a module per area, shared helpers in
//! `util`. Where a new test goes:
//!
//! - `util`: helpers for every module — the global log capture
//!   (`log_buffer`, `logged`, `Capture`), `Home` (a temporary HOME, its
//!   `cms.cfg` written and loaded, the binaries run in it), `build_engine`,
//!   `maildir_files`, `lf` (a stored message's content with LF line ends)
//!   and `StoredCursor` (a mailbox cursor as the state database holds it).
//!   A helper two modules need goes here; one module's fixtures stay in it.
//! - `auth`: OAuth against the emulator; fixtures (browser stand-in,
//!   `AuthManager` set-up, the log scan for tokens) in `auth/mod.rs`.
//!   - `auth::login`: PKCE logins, redirect `state`/path/Host checks.
//!   - `auth::page`: the login page and its events, the real-browser run.
//!   - `auth::refresh`: refresh, rotation, 401s, revocation.
//!   - `auth::device_code`: the device code flow.
//!   - `auth::store`: the encrypted token store and the keyring.
//! - `graph`: the Office365 backend against the emulator, library level;
//!   fixtures in `graph/mod.rs`, among them `graph::Cloud` (the emulator
//!   plus a second Graph client), which `local_edits` and `stop` use too.
//!   - `graph::listing`: folder lookup, delta listings, a second client's
//!     changes, cursors and restarts, expired delta, interrupted rounds.
//!   - `graph::download`: message content and broken downloads.
//!   - `graph::writes`: flag writes, deletions, `$batch`.
//!   - `graph::throttle`: throttling, retries, refused tokens, the
//!     per-mailbox limit, tokens kept out of the logs.
//!   - `graph::engine`: the sync engine over Graph.
//! - `gmail`: the Gmail backend against the emulator, library level;
//!   fixtures in `gmail/mod.rs`, the stats reader in `gmail/stats.rs`.
//!   - `gmail::listing`: full listings, missing labels, shared idle polls.
//!   - `gmail::history`: history, cursors and restarts, expired history.
//!   - `gmail::download`: message content and broken answers.
//!   - `gmail::writes`: flag changes and deletes as label changes.
//!   - `gmail::quota`: rate limits, outages and quota use.
//!   - `gmail::tokens`: refused tokens and the log scan.
//!   - `gmail::engine`: the sync engine over a label.
//! - `sync`: the sync engine and the daemon against the in-memory cloud
//!   (initial sync, both directions, deletions, restarts, v0.1 state).
//! - `local_edits`: local edits while the engine or daemon runs against
//!   the emulated Office365 (cycles without listing, the watcher, the
//!   soak); its `world` and `files` are used by `stop` too.
//! - `stop`: a stop asked while the daemon waits on the cloud.
//! - `router`: routing through `cfg.direct_message` (the message API,
//!   failing filters, memoising).
//! - `config`: `cms.cfg` loading through `--check` (the README's examples,
//!   error locations, a failing config touches nothing).
//! - `credsrv`: the token broker and `cms-oauth` (socket mode, output
//!   formats, XOAUTH2 against the emulator's SMTP and IMAP).
//! - `headers`: `HeaderBlock::get` against the Python program's
//!   `get_header` on the corpus in `data/headers/`.

mod auth;
mod config;
mod credsrv;
mod gmail;
mod graph;
mod headers;
mod local_edits;
mod router;
mod stop;
mod sync;
mod util;
