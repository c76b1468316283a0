//! The Gmail backend: a label of a Gmail account mirrored through the Gmail
//! API v1. [`Account`] is shared by the labels of one account (HTTP
//! client, tokens, per-user throttle); [`Mailbox`] is one label.
//!
//! # Layout
//! - [`wire`]: serde types of the API's JSON.
//! - [`client`]: requests, retries, token refresh, errors, the batch endpoint.
//! - [`throttle`]: quota units, concurrency and rate-limit backoff per user.
//! - [`mailbox`]: listing (full and by history), download, flags, deletes.

pub mod client;
pub mod mailbox;
pub mod throttle;
pub mod wire;

pub use client::{Account, ApiError, Options};
pub use mailbox::Mailbox;
pub use throttle::{Limits, Usage};
