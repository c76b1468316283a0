//! The cloud side of sync: the [`CloudMailbox`] trait every backend (Graph,
//! Gmail, the in-memory test cloud) implements, the [`Endpoints`] they talk
//! to, and the errors that tell the daemon to retry, log in again or stop.

pub mod cursor;
pub mod gmail;
pub mod graph;
pub mod memory;
pub mod transport;

use arcstr::ArcStr;

use crate::error::{HasKind, Kind};
use std::future::Future;
use std::pin::Pin;
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

use crate::config::DeleteAction;
use crate::types::{Flags, StorageKind};

/// Where a download is written (a store temp file in production).
pub type Sink = dyn std::io::Write + Send;

/// A boxed, sendable future (the trait is used as `dyn CloudMailbox`).
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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
    fn list(&self) -> BoxFut<'_, Result<Vec<CloudEntry>, CloudError>>;

    /// Like [`CloudMailbox::list`], but a backend with a change feed may
    /// answer with what changed since the last successful listing call
    /// ([`Listed::Changes`], empty when nothing did: an empty delta, an
    /// unchanged history id), so a poll costs what changed, not a copy of
    /// the folder.
    fn list_changes(&self) -> BoxFut<'_, Result<Listed, CloudError>> {
        Box::pin(async move { self.list().await.map(Listed::Full) })
    }

    /// Stream the message's content, with LF line ends, into `out`. The
    /// backend verifies the transfer was complete (length, framing) and
    /// returns an error otherwise; on error `out` holds a partial copy the
    /// caller throws away.
    fn fetch<'a>(&'a self, id: &'a str, out: &'a mut Sink) -> BoxFut<'a, Result<(), CloudError>>;

    /// What the backend knows about message `id` after fetching it, when a
    /// fetch can teach more than the listing said (Gmail lists new mail
    /// without its date and Message-ID; its raw download carries them).
    /// `None` when the listing's entry is as good as it gets.
    fn fetched_entry(&self, _id: &str) -> Option<CloudEntry> {
        None
    }

    /// Apply flag changes; one result per change, in order.
    fn set_flags(&self, changes: Vec<FlagChange>) -> BoxFut<'_, Vec<Result<(), CloudError>>>;

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
    ) -> BoxFut<'_, Vec<Result<(), CloudError>>>;
}

/// The backends for the config's cloud mailboxes, in config order: one
/// client per account (so all folders of an account share its throttle), one
/// folder per mailbox. `tokens[i]` serves `config.accounts[i]`.
pub fn folders_for(
    config: &crate::config::Config,
    endpoints: &Endpoints,
    tokens: &[std::sync::Arc<dyn crate::auth::TokenSource>],
    quota_scale: u32,
) -> Result<Vec<crate::sync::engine::Folder>, CloudError> {
    use crate::config::CloudKind;
    use std::collections::HashMap;
    use std::sync::Arc;

    let mut graph: HashMap<usize, graph::GraphAccount> = HashMap::new();
    let mut gmail: HashMap<usize, Arc<gmail::GmailAccount>> = HashMap::new();
    let mut out = Vec::with_capacity(config.mailboxes.len());
    for m in &config.mailboxes {
        let acct = &config.accounts[m.account];
        let user = acct.user.clone().unwrap_or_default();
        let source = tokens.get(m.account).cloned().ok_or_else(|| {
            CloudError::new(&m.name, ErrorKind::Bug, "no token source for the account")
        })?;
        let key = format!(
            "{}:{}/{}",
            match m.kind {
                CloudKind::Office365 => "office365",
                CloudKind::Gmail => "gmail",
            },
            user,
            m.name
        );
        let cloud: Arc<dyn CloudMailbox> = match m.kind {
            CloudKind::Office365 => {
                let account = match graph.get(&m.account) {
                    Some(a) => a.clone(),
                    None => {
                        let a = graph::GraphAccount::with_throttle(
                            &user,
                            source,
                            endpoints.clone(),
                            graph::ThrottleConfig::default().scaled(quota_scale),
                        )?;
                        graph.insert(m.account, a.clone());
                        a
                    }
                };
                Arc::new(graph::GraphMailbox::new(account, &m.name, &key))
            }
            CloudKind::Gmail => {
                let account = match gmail.get(&m.account) {
                    Some(a) => a.clone(),
                    None => {
                        let a = gmail::GmailAccount::new(
                            &user,
                            endpoints.clone(),
                            source,
                            gmail::Options {
                                limits: gmail::Limits::default().scaled(quota_scale),
                                ..gmail::Options::default()
                            },
                        )?;
                        gmail.insert(m.account, a.clone());
                        a
                    }
                };
                Arc::new(gmail::GmailMailbox::new(account, &m.name, &key))
            }
        };
        out.push(crate::sync::engine::Folder {
            cloud,
            key,
            delete_action: m.delete_action,
        });
    }
    Ok(out)
}

/// Base URLs of the services. Production uses the real hosts; tests and the
/// demo point every host at the emulator (`CMS_CLOUD_BASE_URL`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    /// `None` for the real services; `Some("http://127.0.0.1:PORT")` sends
    /// `https://HOST/PATH` to `http://127.0.0.1:PORT/HOST/PATH`.
    pub base: Option<String>,
}

impl Endpoints {
    /// The real services.
    pub fn real() -> Endpoints {
        Endpoints { base: None }
    }

    /// Everything through one base URL (the emulator).
    pub fn emulated(base: &str) -> Endpoints {
        Endpoints {
            base: Some(base.trim_end_matches('/').to_string()),
        }
    }

    /// The URL for `path` (starting with `/`) on `host`.
    pub fn url(&self, host: &str, path: &str) -> String {
        match &self.base {
            None => format!("https://{host}{path}"),
            Some(b) => format!("{b}/{host}{path}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls() {
        assert_eq!(
            Endpoints::real().url("graph.microsoft.com", "/v1.0/me"),
            "https://graph.microsoft.com/v1.0/me"
        );
        assert_eq!(
            Endpoints::emulated("http://127.0.0.1:5/").url("graph.microsoft.com", "/v1.0/me"),
            "http://127.0.0.1:5/graph.microsoft.com/v1.0/me"
        );
    }
}
