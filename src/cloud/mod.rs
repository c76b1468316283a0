//! The cloud side of sync: the [`CloudMailbox`] trait every backend (Graph,
//! Gmail, the in-memory test cloud) implements, and the errors that tell the
//! daemon to retry, log in again or stop.

pub mod cursor;
pub mod gmail;
pub mod graph;
#[cfg(any(test, feature = "test-util"))]
pub mod memory;
pub mod throttle;
pub mod transport;

use arcstr::ArcStr;
use futures_util::future::BoxFuture;

use crate::error::{HasKind, Kind};
use std::time::Duration;

pub use cursor::CursorDelta;

/// What a listing call found.
#[derive(Debug, Clone, PartialEq)]
pub enum Listed {
    /// Every message of the folder.
    Full(Vec<CloudEntry>),
    /// What changed since the last successful listing call returned:
    /// messages new or changed (as they are now), and ids gone.
    Changes {
        upsert: Vec<CloudEntry>,
        gone: Vec<String>,
    },
}

impl Listed {
    /// True for changes that change nothing.
    pub fn is_unchanged(&self) -> bool {
        matches!(self, Listed::Changes { upsert, gone } if upsert.is_empty() && gone.is_empty())
    }
}

use crate::types::DeleteAction;
use crate::types::{Flags, StorageKind};

/// Where a download is written (a store temp file in production).
pub type Sink = dyn std::io::Write + Send;

/// One message as the cloud lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudEntry {
    /// The service's id (Graph immutable id, Gmail message id); shared
    /// with the backend's and the engine's indexes.
    pub id: ArcStr,
    /// The Message-ID header, when the listing carries it.
    pub email_id: Option<ArcStr>,
    /// Flags the cloud stores for it (only the mailbox's supported bits).
    pub flags: Flags,
    /// Received time, seconds since the epoch.
    pub received_time: Option<i64>,
    /// Size in bytes, when the listing carries it.
    pub size: Option<u64>,
}

/// A flag change to send: bits to set and bits to clear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlagChange {
    /// The message id.
    pub id: String,
    /// Bits to turn on.
    pub set: Flags,
    /// Bits to turn off.
    pub clear: Flags,
}

/// How a backend classifies a failed cloud call; [`CloudError`]'s
/// [`HasKind`] maps it to the daemon's [`Kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Transient (network, 5xx, 429): retry later, after `retry_after` if given.
    Retry,
    /// The token was refused: refresh or log in again, then retry.
    Auth,
    /// What the call names no longer exists: a message (the next listing
    /// shows it gone), or the configured folder or label itself.
    NotFound,
    /// The request can never succeed as configured (an ambiguous or empty
    /// folder name, a request the service refuses).
    Config,
    /// We built a request we cannot send (our bug).
    Bug,
    /// Nothing will help until a restart (no HTTP client).
    Fatal,
}

/// A failed cloud call.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{mailbox}: {message}")]
pub struct CloudError {
    /// Which mailbox (e.g. `office365:user@example.com/inbox`).
    pub mailbox: String,
    /// What to do about it.
    pub kind: ErrorKind,
    /// Server-requested delay before retrying.
    pub retry_after: Option<Duration>,
    /// Human-readable detail (never contains a token).
    pub message: String,
}

impl HasKind for CloudError {
    fn kind(&self) -> Kind {
        match self.kind {
            ErrorKind::Retry if self.retry_after.is_some() => Kind::RateLimited {
                retry_after: self.retry_after,
            },
            ErrorKind::Retry => Kind::Transient,
            ErrorKind::Auth => Kind::NeedsLogin,
            ErrorKind::NotFound => Kind::NotFound,
            ErrorKind::Config => Kind::Config,
            ErrorKind::Bug => Kind::Bug,
            ErrorKind::Fatal => Kind::Fatal,
        }
    }
}

impl CloudError {
    /// An error of `kind` for `mailbox`.
    pub fn new(mailbox: &str, kind: ErrorKind, message: impl Into<String>) -> CloudError {
        CloudError {
            mailbox: mailbox.to_string(),
            kind,
            retry_after: None,
            message: message.into(),
        }
    }
}

/// A synced cloud folder or label.
pub trait CloudMailbox: Send + Sync {
    /// A name for logs, e.g. `gmail:user@gmail.com/INBOX`.
    fn name(&self) -> &str;

    /// Which id space the message ids belong to.
    fn storage_kind(&self) -> StorageKind;

    /// The flag bits this service can store (Gmail cannot store replied).
    fn supported_flags(&self) -> Flags;

    /// The full current content of the folder. Backends may answer from an
    /// incremental change feed (delta, history) applied to what they listed
    /// before.
    fn list(&self) -> BoxFuture<'_, Result<Vec<CloudEntry>, CloudError>>;

    /// Like [`CloudMailbox::list`], but a backend with a change feed may
    /// answer with what changed since the last successful listing call
    /// ([`Listed::Changes`], empty when nothing did: an empty delta, an
    /// unchanged history id), so a poll costs what changed, not a copy of
    /// the folder.
    fn list_changes(&self) -> BoxFuture<'_, Result<Listed, CloudError>> {
        Box::pin(async move { self.list().await.map(Listed::Full) })
    }

    /// Stream the message's content, with LF line ends, into `out`. The
    /// backend verifies the transfer was complete (length, framing) and
    /// returns an error otherwise; on error `out` holds a partial copy the
    /// caller throws away.
    fn fetch<'a>(&'a self, id: &'a str, out: &'a mut Sink)
    -> BoxFuture<'a, Result<(), CloudError>>;

    /// What the backend knows about message `id` after fetching it, when a
    /// fetch can teach more than the listing said (Gmail lists new mail
    /// without its date and Message-ID; its raw download carries them).
    /// `None` when the listing's entry is as good as it gets.
    fn fetched_entry(&self, _id: &str) -> Option<CloudEntry> {
        None
    }

    /// Apply flag changes; one result per change, in order.
    fn set_flags(&self, changes: Vec<FlagChange>) -> BoxFuture<'_, Vec<Result<(), CloudError>>>;

    /// What changed in the state to persist (delta link or history id plus
    /// one record per listed message, so a restart resumes incrementally)
    /// since the last call; `None` when nothing did or there is nothing
    /// worth saving. The first call after [`CloudMailbox::cursor_unsaved`]
    /// or a full listing holds every record.
    fn cursor_delta(&self) -> Option<CursorDelta> {
        None
    }

    /// The last [`CloudMailbox::cursor_delta`] was not stored: the next one
    /// must hold everything.
    fn cursor_unsaved(&self) {}

    /// The field of the cursor head that held the records when a cursor
    /// was stored whole (v0.1); such a cursor is split into head and
    /// records when the state is opened.
    fn cursor_records_field(&self) -> Option<&'static str> {
        None
    }

    /// Restore a cursor stored in an earlier run: its head and its records;
    /// an unusable one is ignored (the next listing is then full).
    fn load_cursor(&self, _head: serde_json::Value, _records: Vec<String>) {}

    /// Delete (archive or trash) messages; one result per id, in order.
    fn delete(
        &self,
        ids: Vec<String>,
        action: DeleteAction,
    ) -> BoxFuture<'_, Vec<Result<(), CloudError>>>;
}
