//! cloud-mdir-sync: mirror Office365 and Gmail mailboxes into local Maildirs
//! and push local changes back.
//!
//! # Layout
//! - [`config`]: runs `cms.cfg` on embedded CPython, validates it into a
//!   [`config::Config`], and routes messages through `direct_message` on a
//!   dedicated Python thread.
//! - [`maildir`]: scan, flag codec, delivery through `tmp/`, watching.
//! - [`store`]: the content-addressed message store, id and inode caches,
//!   atomic state files.
//! - [`sync`]: the pure three-way sync planner.
//! - [`types`]: flags, content hashes and cloud ids shared by all modules.
pub mod auth;
pub mod cloud;
pub mod config;
pub mod credclient;
pub mod credsrv;
pub mod daemon;
pub mod fsutil;
pub mod maildir;
pub mod store;
pub mod sync;
pub mod types;
