//! cloud-mdir-sync: mirror Office365 and Gmail mailboxes into local Maildirs
//! and push local changes back.
//!
//! # Layout
//! - [`config`]: runs `cms.cfg` on embedded CPython, validates it into a
//!   [`config::Config`], and routes messages through `direct_message` on a
//!   dedicated Python thread.
//! - [`sync`]: the pure three-way planner ([`sync::plan`]), the executor
//!   ([`sync::engine`]) and the persisted last-synced state.
//! - [`cloud`]: the `CloudMailbox` trait and its backends: Microsoft Graph
//!   ([`cloud::graph`]), Gmail ([`cloud::gmail`]), in-memory for tests.
//! - [`auth`]: OAuth logins (PKCE loopback page, device code), refresh,
//!   encrypted refresh tokens with the key in the keyring.
//! - [`credsrv`] / [`credclient`]: the token broker socket and `cms-oauth`.
//! - [`maildir`]: scan, flag codec, delivery through `tmp/`, watching.
//! - [`store`]: the content-addressed message store, id and inode caches,
//!   atomic state files.
//! - [`daemon`]: wiring and the loop: triggers, per-folder retries, shutdown.
//! - [`shutdown`]: the cancellation-token tree and task tracker a run ends
//!   by.
//! - [`endpoints`]: the services' base URLs (real, or the emulator).
//! - [`error`]: the [`error::Kind`] every error maps to, and what the daemon
//!   does about each.
//! - [`fsutil`]: atomic writes and private directories; [`lock`]: mutexes
//!   that survive a panicking holder; [`lf`]: CRLF → LF.
//! - [`types`]: flags, content hashes and cloud ids shared by all modules.
pub mod auth;
pub mod cloud;
pub mod config;
pub mod credclient;
pub mod credsrv;
pub mod daemon;
pub mod endpoints;
pub mod error;
pub mod fsutil;
pub mod lf;
pub mod lock;
pub mod maildir;
pub mod shutdown;
pub mod store;
pub mod sync;
pub mod types;
