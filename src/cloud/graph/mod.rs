//! Office365 through Microsoft Graph v1.0: folders by display name, delta
//! listings with the replied state from MAPI properties, streamed `$value`
//! downloads, flag changes and deletions through `$batch`, and one throttle
//! per mailbox shared by all of an account's folders.
//!
//! # Layout
//! - [`wire`]: the JSON types as Graph sends and takes them.
//! - [`flags`]: our flag bits to and from Graph JSON (pure).
//! - [`throttle`]: Outlook's limits as parameters of the shared throttle.
//! - [`client`]: the account's HTTP client, tokens and retry policy.
//! - `batch`: `$batch` with per-part retries.
//! - [`mailbox`]: the [`crate::cloud::CloudMailbox`] implementation.

mod batch;
pub mod client;
pub mod flags;
pub mod mailbox;
pub mod throttle;
pub mod wire;

pub use crate::cloud::throttle::Stats as ThrottleStats;
pub use client::Account;
pub use mailbox::Mailbox;
pub use throttle::ThrottleConfig;
